/* Unit tests: the budget of free resident memory without the purger thread. A call whose
 * frees take all arenas over dirty_max_kb, past what their demands hold (the pages each
 * drew from the kernel lately: the tests at the end), gives the arena's oldest excess back
 * before it returns, wherever in the call the memory became free: a free (small or medium),
 * the remote frees a slow path takes in, a thread's exit. (The lower layers only mark the
 * arena, dirty.c; its holder gives the excess back: alloc.c, purge.c.) Where the purger
 * thread runs, an exit may keep its demand for the next thread (the tests in the middle). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "tamalloc.h"

#define BLOCK ((size_t)1000 << 10) /* medium: four to a chunk */
#define BLOCKS 18                  /* five chunks, 17.6 MiB */

static size_t dirty(void) { return atomic_load(&ta_dirty_total.v); }

/* Nothing becomes due by time while a test runs; two chunks of free memory at most. */
static void settings(void) {
  ta_decay_ms = 600000;
  ta_dirty_max = (size_t)8 << 20;
  cr_assert_not(ta_bg_running());
}

static void fill(void **b, size_t n, size_t size) {
  for (size_t i = 0; i < n; i++) {
    b[i] = ta_malloc(size);
    cr_assert_not_null(b[i]);
    memset(b[i], 1, size);
  }
}

/* An arena keeps as much free memory as it drew from the kernel lately (its demand, see
 * below); these tests are about the budget beyond it: the pages were drawn long ago. */
static void drawn_long_ago(void) {
  ta_tl_arena->demand_ms -= 2 * ta_demand_window();
  ta_dirty_hold(ta_tl_arena, 0); /* as the next purge reads it */
}

Test(budget, medium_frees_stay_within_it) {
  settings();
  void *b[BLOCKS];
  fill(b, BLOCKS, BLOCK);
  drawn_long_ago();
  for (int i = 0; i < BLOCKS; i++) {
    ta_free(b[i]);
    cr_assert_leq(dirty(), ta_dirty_max, "after free %d: %zu bytes free and resident", i, dirty());
  }
}

Test(budget, small_frees_stay_within_it) {
  settings();
  enum { N = 5 * 63 * 8 }; /* five chunks of 8 KiB blocks */
  static void *b[N];
  fill(b, N, 8192);
  drawn_long_ago();
  for (int i = 0; i < N; i++) {
    ta_free(b[i]);
    cr_assert_leq(dirty(), ta_dirty_max, "after free %d: %zu bytes free and resident", i, dirty());
  }
}

static void *free_all(void *arg) {
  void **b = arg;
  for (int i = 0; i < BLOCKS; i++) ta_free(b[i]);
  return NULL;
}

Test(budget, remote_frees_taken_in_stay_within_it) {
  settings();
  void *b[BLOCKS];
  fill(b, BLOCKS, BLOCK);
  drawn_long_ago();
  pthread_t t;
  pthread_create(&t, NULL, free_all, b); /* onto this thread's remote list */
  pthread_join(t, NULL);
  cr_assert_leq(dirty(), ta_dirty_max);
  void *p = ta_malloc(BLOCK); /* takes them in */
  cr_assert_leq(dirty(), ta_dirty_max, "%zu bytes free and resident", dirty());
  ta_free(p);
}

struct handover {
  void *b[BLOCKS];
  pthread_barrier_t filled, freed;
  bool long_ago; /* the thread's pages drawn long ago: no demand left to keep them */
};

static void *fill_and_exit(void *arg) {
  struct handover *h = arg;
  fill(h->b, BLOCKS, BLOCK);
  if (h->long_ago) drawn_long_ago();
  pthread_barrier_wait(&h->filled);
  pthread_barrier_wait(&h->freed); /* the main thread freed them: they wait on our list */
  return NULL;                     /* the exit takes them in, then gives the arena up */
}

/* A thread fills BLOCKS and exits once the main thread freed them (onto its remote list). */
static void handover(struct handover *h, bool long_ago) {
  h->long_ago = long_ago;
  pthread_barrier_init(&h->filled, NULL, 2);
  pthread_barrier_init(&h->freed, NULL, 2);
  pthread_t t;
  pthread_create(&t, NULL, fill_and_exit, h);
  pthread_barrier_wait(&h->filled);
  free_all(h->b);
  cr_assert_leq(dirty(), ta_dirty_max);
  pthread_barrier_wait(&h->freed);
  pthread_join(t, NULL);
}

/* Without the purger thread, an exit keeps no demand: nothing else would give it back on time. */
Test(budget, a_thread_exit_stays_within_it) {
  settings();
  static struct handover h;
  handover(&h, false);
  cr_assert_leq(dirty(), ta_dirty_max, "%zu bytes free and resident", dirty());
}

static void *fill_and_leave(void *arg) {
  fill(arg, BLOCKS, BLOCK);
  drawn_long_ago();
  return NULL;
}

/* Frees into an arena whose thread has exited are taken in by the freer's drain (arena.c,
 * drain_ownerless), here past the budget: the orphan purge is due at once, and any thread's
 * next slow path gives that arena's excess back, rather than it keeping every arena over the
 * budget for a decay time (each live arena would give back its own memory meanwhile). */
Test(budget, what_a_drain_takes_in_past_it_goes_at_the_next_slow_path) {
  settings();
  void *mine = ta_malloc(64); /* this thread has an arena of its own */
  static void *b[BLOCKS];
  pthread_t t;
  pthread_create(&t, NULL, fill_and_leave, b);
  pthread_join(t, NULL);
  ta_arena_t *dead = ta_chunk_of(b[0])->owner;
  cr_assert_eq(atomic_load(&dead->state), ARENA_FREE);
  cr_assert_gt(atomic_load(&ta_orphan_due), ta_os_now_ms(), "its pass due a decay time on");
  for (int i = 0; i < TA_DRAIN_EVERY; i++)
    ta_free(b[i]); /* the last one drains */
  cr_assert_gt(dirty(), ta_dirty_max, "taken in past the budget: %zu bytes", dirty());
  cr_assert(atomic_load(&dead->over_budget), "its excess marked");
  uint64_t due = atomic_load(&ta_orphan_due);
  cr_assert(due != 0 && due <= ta_os_now_ms(), "the orphan purge due now, not a decay time on");
  void *p = ta_malloc(BLOCK); /* a slow path of this thread */
  cr_assert_leq(dirty(), ta_dirty_max, "%zu bytes free and resident", dirty());
  cr_assert_not(atomic_load(&dead->over_budget));
  cr_assert_eq(atomic_load(&dead->state), ARENA_FREE, "given back");
  ta_free(p);
  for (int i = TA_DRAIN_EVERY; i < BLOCKS; i++)
    ta_free(b[i]);
  ta_free(mine);
}

static void *fill_again(void *arg) {
  fill(arg, BLOCKS, BLOCK);
  return NULL;
}

/* Where the purger thread runs, and while the process has had few threads at once (under
 * TA_FEW_ARENAS), an exiting thread's arena keeps what its demand covers (the pages it drew
 * lately), past the budget: the next thread
 * to adopt it uses them without drawing any from the kernel (threads that come and go: the abandon
 * workload at 2 threads took 182,000-199,000 page faults where 36,000 do). Nobody adopting it, the
 * orphan purge gives them back a decay time after the exit. */
static void *alloc_one(void *arg) {
  *(void **)arg = ta_malloc(64);
  return NULL;
}

/* The purger thread running, as in a program with threads: this thread has an arena, as a
 * program's main thread does, and a thread exits leaving work, which starts it. */
static void *purger_mine, *purger_first;
static void start_purger(void) {
  ta_bg_enable(true);
  purger_mine = ta_malloc(64);
  pthread_t t;
  pthread_create(&t, NULL, alloc_one, &purger_first);
  pthread_join(t, NULL);
  ta_free(purger_first);
  cr_assert(ta_bg_running());
}

Test(budget, a_thread_exit_keeps_its_demand_for_the_next_thread) {
  settings();
  start_purger();
  static struct handover h;
  handover(&h, false);
  size_t kept = dirty();
  cr_assert_gt(kept, ta_dirty_max, "%zu bytes kept for the next thread", kept);
  cr_assert_gt(atomic_load(&ta_dirty_held.v), kept - ta_dirty_max, "held for the demand");
  cr_assert_not(ta_over_budget());
  uint64_t due = atomic_load(&ta_orphan_due);
  cr_assert(due != 0 && due <= ta_os_now_ms() + ta_decay_ms, "given back a decay time on");
  uint64_t calls = ta_os_calls(TA_OS_MADVISE | TA_OS_MMAP);
  static void *again[BLOCKS];
  pthread_t t;
  pthread_create(&t, NULL, fill_again, again); /* adopts the arena */
  pthread_join(t, NULL);
  cr_assert_eq(ta_os_calls(TA_OS_MADVISE | TA_OS_MMAP), calls,
               "nothing given back, nothing drawn from the kernel");
  free_all(again); /* into the ownerless arena: its lists, and every 16th takes them in */
  ta_purge_orphans(ta_os_now_ms() + ta_decay_ms, false); /* a decay time after the exit */
  cr_assert_leq(dirty(), ta_dirty_max, "%zu bytes still free and resident", dirty());
}

static pthread_barrier_t all_alive;
static void *alive_at_once(void *arg) {
  ta_free(ta_malloc(64)); /* an arena each */
  pthread_barrier_wait(&all_alive);
  return arg;
}

/* Once the process has had TA_FEW_ARENAS threads at once, an exiting thread's demand is
 * forgotten: what exited threads hold is memory the running ones cannot use, and what is past
 * the budget is excess. */
Test(budget, with_many_threads_an_exit_forgets_its_demand) {
  settings();
  start_purger(); /* else no exit keeps a demand (above) */
  pthread_t t[TA_FEW_ARENAS];
  pthread_barrier_init(&all_alive, NULL, TA_FEW_ARENAS);
  for (int i = 0; i < TA_FEW_ARENAS; i++)
    pthread_create(&t[i], NULL, alive_at_once, NULL);
  for (int i = 0; i < TA_FEW_ARENAS; i++)
    pthread_join(t[i], NULL);
  cr_assert_geq(atomic_load(&ta_arena_count), TA_FEW_ARENAS);
  static struct handover h;
  handover(&h, false);
  /* Nothing of its free memory is held for a demand: past the budget, all of it is excess,
   * which the purger gives back (at once when woken in time, else with the orphan purge).
   * (The run slots the exited threads took from the main thread's chunk went back to it, a
   * live arena, whose own demand may hold them: small.c, "slots lent between arenas".) */
  size_t held = 0;
  for (ta_arena_t *a = ta_arena_first(); a; a = a->next_all)
    if (atomic_load(&a->state) != ARENA_CLAIMED) held += atomic_load(&a->held);
  cr_assert_eq(held, 0, "%zu bytes held by ownerless arenas", held);
}

/* Its demand: an arena that draws pages from the kernel keeps as much free memory as it
 * drew over the last one to two demand windows (4 decay times each), past the budget: a
 * program that frees a batch and allocates as much again in other sizes does not give back
 * what it would fault in again at once. */
Test(budget, an_arena_keeps_what_it_drew_and_draws_no_more) {
  settings();
  void *b[BLOCKS];
  fill(b, BLOCKS, BLOCK);
  size_t drawn = ta_arena_demand(ta_tl_arena, ta_os_now_ms());
  cr_assert_geq(drawn, (size_t)BLOCKS * (BLOCK - ta_page_size), "drawn: %zu", drawn);
  for (int i = 0; i < BLOCKS; i++) ta_free(b[i]);
  size_t kept = dirty();
  cr_assert_gt(kept, ta_dirty_max, "more than the budget stays: %zu bytes", kept);
  fill(b, BLOCKS, BLOCK); /* the same again: from what stayed */
  size_t again = ta_arena_demand(ta_tl_arena, ta_os_now_ms()) - drawn;
  cr_assert_lt(again, drawn / 4, "drew %zu bytes again", again); /* (a top's trim: 2 MiB) */
  for (int i = 0; i < BLOCKS; i++) ta_free(b[i]);
}

/* Two windows later it holds nothing back: the next purge for the budget gives the excess. */
Test(budget, what_it_drew_two_windows_ago_holds_nothing) {
  settings();
  void *b[BLOCKS];
  fill(b, BLOCKS, BLOCK);
  for (int i = 0; i < BLOCKS; i++) ta_free(b[i]);
  cr_assert_gt(dirty(), ta_dirty_max);
  uint64_t later = ta_os_now_ms() + 2 * ta_demand_window();
  cr_assert_eq(ta_arena_demand(ta_tl_arena, later), 0);
  ta_purge_excess(ta_tl_arena, later);
  cr_assert_leq(dirty(), ta_dirty_max, "%zu bytes free and resident", dirty());
}

/* The background thread's purge of an arena whose owner is blocked holds nothing back. */
Test(budget, an_idle_owners_demand_holds_nothing) {
  settings();
  void *b[BLOCKS];
  fill(b, BLOCKS, BLOCK);
  for (int i = 0; i < BLOCKS; i++) ta_free(b[i]);
  ta_decay_ms = 50;
  ta_tl_arena->demand_ms = ta_os_now_ms(); /* drawn just now, however slow the machine */
  size_t before = dirty();
  uint64_t later = ta_os_now_ms() + ta_decay_ms; /* all of it due, the demand still held */
  cr_assert_geq(ta_arena_demand(ta_tl_arena, later), before);
  ta_arena_purge(ta_tl_arena, later, false, ta_decay_ms, false);
  cr_assert_eq(dirty(), before, "the owner's own purge keeps it");
  ta_arena_purge(ta_tl_arena, later, false, ta_decay_ms, true);
  cr_assert_eq(dirty(), 0, "an idle owner's purge does not");
}

/* What an arena holds for its demand is outside the budget: another arena's frees, within
 * the budget by themselves, stay too. */
static void *fill_then_free_long_after(void *arg) {
  size_t *kept = arg;
  void *b[6];
  fill(b, 6, BLOCK);
  drawn_long_ago();
  for (int i = 0; i < 6; i++) ta_free(b[i]);
  *kept = ta_tl_arena->dirty_bytes;
  return NULL;
}

Test(budget, what_one_arena_holds_for_its_demand_costs_the_others_nothing) {
  settings();
  void *b[BLOCKS];
  fill(b, BLOCKS, BLOCK);
  for (int i = 0; i < BLOCKS; i++) ta_free(b[i]);
  cr_assert_gt(dirty(), ta_dirty_max, "held for its demand");
  size_t kept = 0;
  pthread_t t;
  pthread_create(&t, NULL, fill_then_free_long_after, &kept);
  pthread_join(t, NULL);
  cr_assert_geq(kept, (size_t)4 << 20, "the other thread kept %zu bytes", kept);
}

/* Past its demand, an arena's purge gives back the excess alone, in whole chunks within it
 * (the oldest first), and no chunk for less. */
static void excess_goes(size_t hold) {
  settings();
  void *b[BLOCKS];
  fill(b, BLOCKS, BLOCK);
  for (int i = 0; i < BLOCKS; i++) ta_free(b[i]);
  size_t before = ta_tl_arena->dirty_bytes;
  cr_assert_gt(before, hold + TA_CHUNK_SIZE);
  ta_tl_arena->demand_ms = ta_os_now_ms();
  ta_tl_arena->demand = hold; /* as if it had drawn that much */
  ta_tl_arena->demand_prev = 0;
  ta_arena_purge(ta_tl_arena, ta_os_now_ms() + 1, false, 0, false);
  size_t after = ta_tl_arena->dirty_bytes;
  cr_assert_geq(after, hold, "kept %zu of %zu", after, before);
  cr_assert_lt(after, hold + TA_CHUNK_SIZE, "kept %zu of %zu", after, before);
}

Test(budget, past_its_demand_only_the_excess_goes) { excess_goes((size_t)8 << 20); }
Test(budget, no_chunk_goes_for_less_than_a_chunk_of_excess) {
  excess_goes(((size_t)8 << 20) + TA_RUN_SIZE);
}

/* The oldest empty chunks go first. */
Test(budget, past_its_demand_the_oldest_chunks_go) {
  settings();
  void *b[BLOCKS];
  fill(b, BLOCKS, BLOCK);
  for (int i = 0; i < BLOCKS; i++) ta_free(b[i]);
  ta_arena_t *a = ta_tl_arena;
  uint64_t now = ta_os_now_ms(), newest = now - 1, t = newest;
  for (ta_chunk_t *c = a->empty_chunks; c; c = c->next) c->empty_since = t--; /* as released */
  a->demand_ms = now;
  a->demand = (size_t)4 << 20; /* all but one chunk go */
  a->demand_prev = 0;
  ta_arena_purge(a, now, false, 0, false);
  unsigned left = 0;
  for (ta_chunk_t *c = a->empty_chunks; c; c = c->next)
    if (!c->decommitted) {
      left++;
      cr_assert_eq(c->empty_since, newest, "the chunk emptied last stays");
    }
  cr_assert_eq(left, 1);
}
