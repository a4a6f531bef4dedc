/* Unit tests: run slots lent between arenas (small.c, docs/design.md "Run slots lent between
 * arenas"). A thread that needs a run takes a resident slot another arena has left free
 * before it faults in one of its own, and a thread with no chunk of its own with room takes
 * a slot never used from another arena's chunk instead of a chunk of its own. The run is its
 * owner's in every way (its frees, its remote frees, its checks, its statistics); emptied, its
 * slot goes back to the chunk's keeper, or waits for the keeper's lock. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "tamalloc.h"

/* Nothing becomes due by time while a test runs. */
static void settings(void) { ta_decay_ms = 600000; }

static ta_arena_t *keeper; /* the main thread's arena */
static ta_run_t *retired;  /* a run of the keeper's that emptied */

/* The main thread fills a run of 64-byte blocks and the start of the next, then frees the
 * first run's blocks: the run retires, its slot free and resident in the keeper's chunk. */
static void keeper_retires_a_run(void) {
  settings();
  enum { PER_RUN = TA_RUN_SIZE / 64 };
  static void *b[PER_RUN + 1];
  for (int i = 0; i < PER_RUN + 1; i++)
    cr_assert_not_null(b[i] = ta_malloc(64));
  keeper = ta_tl_arena;
  retired = ta_run_of(b[0]);
  cr_assert_neq(ta_run_of(b[PER_RUN]), retired, "the last block opened the next run");
  for (int i = 0; i < PER_RUN; i++)
    ta_free(b[i]);
  cr_assert_eq(retired->state, RUN_UNUSED);
  ta_chunk_t *c = ta_chunk_of(retired);
  uint64_t bit = (uint64_t)1 << retired->slot;
  cr_assert(c->free_slots & bit);
  cr_assert(c->dirty_slots & bit, "free and resident");
  cr_assert_eq(atomic_load(&keeper->slots_warm), 1);
}

static void *run_in_thread(void *(*fn)(void *), void *arg) {
  pthread_t t;
  void *out;
  cr_assert_eq(pthread_create(&t, NULL, fn, arg), 0);
  cr_assert_eq(pthread_join(t, &out), 0);
  return out;
}

/* Starts fn(arg) on a thread that moves in step with this one through `step` (two parties). */
static pthread_t start_in_step(pthread_barrier_t *step, void *(*fn)(void *), void *arg) {
  pthread_barrier_init(step, NULL, 2);
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, fn, arg), 0);
  return t;
}

static bool owns_a_chunk(const ta_arena_t *a) {
  return a->small_avail != NULL || a->small_full != NULL || a->empty_chunks != NULL;
}

struct borrower {
  void *block;
  ta_arena_t *arena;
  bool had_chunk;
};

static void *borrow_one(void *arg) {
  struct borrower *b = arg;
  b->block = ta_malloc(64);
  b->arena = ta_tl_arena;
  b->had_chunk = owns_a_chunk(ta_tl_arena);
  return NULL;
}

/* A thread with a chunk of its own, with room: the keeper's lock held while it takes its first
 * run makes it map one. Its next run is of another class. */
struct own_chunk {
  pthread_barrier_t step;
  void *first, *second;
  ta_arena_t *arena;
};

static void *first_run_then_second(void *arg) {
  struct own_chunk *o = arg;
  pthread_barrier_wait(&o->step); /* the main thread holds its arena's lock */
  o->first = ta_malloc(1024);
  o->arena = ta_tl_arena;
  pthread_barrier_wait(&o->step); /* and lets it go */
  pthread_barrier_wait(&o->step);
  o->second = ta_malloc(64); /* another class: another run */
  return NULL;
}

static void own_chunk_then_second_run(struct own_chunk *o, ta_arena_t *lender) {
  pthread_t t = start_in_step(&o->step, first_run_then_second, o);
  ta_slow_enter(lender);
  pthread_barrier_wait(&o->step);
  pthread_barrier_wait(&o->step);
  ta_slow_leave(lender);
  cr_assert_eq(ta_chunk_of(o->first)->owner, o->arena, "the lender was busy: a chunk of its own");
  pthread_barrier_wait(&o->step);
  cr_assert_eq(pthread_join(t, NULL), 0);
}

Test(lend, a_resident_slot_another_arena_emptied_is_taken_before_a_new_one) {
  keeper_retires_a_run();
  size_t keeper_dirty = keeper->dirty_bytes;
  struct own_chunk o;
  own_chunk_then_second_run(&o, keeper);
  cr_assert_eq(ta_run_of(o.second), retired,
               "the keeper's emptied slot, resident, before a slot of its own chunk");
  cr_assert_eq(ta_run_of(o.second)->owner, o.arena, "owned by the thread that took it");
  cr_assert_eq(atomic_load(&keeper->slots_warm), 0);
  cr_assert_eq(keeper->dirty_bytes, keeper_dirty - TA_RUN_SIZE,
               "no longer the keeper's free memory");
  cr_assert_not(ta_chunk_of(retired)->free_slots & ((uint64_t)1 << retired->slot));
}

Test(lend, a_thread_with_no_chunk_takes_a_slot_never_used_from_another_arena) {
  settings();
  void *mine = ta_malloc(64);
  cr_assert_not_null(mine);
  ta_chunk_t *c = ta_chunk_of(mine);
  cr_assert_eq(atomic_load(&ta_tl_arena->slots_warm), 0, "nothing resident to lend");
  uint32_t free_before = atomic_load(&ta_tl_arena->slots_free);
  struct borrower b = {0};
  run_in_thread(borrow_one, &b);
  cr_assert_not_null(b.block);
  cr_assert_eq(ta_chunk_of(b.block), c, "a slot of the first thread's chunk");
  cr_assert_neq(ta_run_of(b.block), ta_run_of(mine));
  cr_assert_eq(ta_run_of(b.block)->owner, b.arena);
  cr_assert_not(b.had_chunk, "no chunk of its own: no 4 MiB of address space for one block");
  cr_assert_eq(atomic_load(&ta_tl_arena->slots_free), free_before - 1);
}

/* Two threads whose runs alternate in one chunk (the second has none of its own): no run's
 * meta block shares a 128-byte pair of cache lines with another thread's run, nor with the
 * chunk header. Cores fetch lines in such pairs; meta blocks side by side made every malloc
 * and free of one thread take the line of the other's (internal.h, ta_run_pair_t). */
enum { TURNS = 6 };
struct turns {
  pthread_barrier_t step;
  ta_run_t *runs[TURNS];
};

static void *take_runs_in_turns(void *arg) {
  struct turns *t = arg;
  for (int i = 0; i < TURNS; i++) {
    pthread_barrier_wait(&t->step); /* the main thread took its run of this class */
    void *p = ta_malloc(16 * (size_t)(i + 1));
    cr_assert_not_null(p);
    t->runs[i] = ta_run_of(p);
    pthread_barrier_wait(&t->step);
  }
  return NULL;
}

Test(lend, runs_of_two_threads_side_by_side_share_no_pair_of_cache_lines) {
  settings();
  struct turns t;
  ta_run_t *mine[TURNS];
  pthread_t th = start_in_step(&t.step, take_runs_in_turns, &t);
  for (int i = 0; i < TURNS; i++) {
    void *p = ta_malloc(16 * (size_t)(i + 1));
    cr_assert_not_null(p);
    mine[i] = ta_run_of(p);
    pthread_barrier_wait(&t.step);
    pthread_barrier_wait(&t.step);
  }
  cr_assert_eq(pthread_join(th, NULL), 0);
  ta_chunk_t *c = ta_chunk_of(mine[0]);
  unsigned used = 0;
  for (int i = 0; i < TURNS; i++) {
    cr_assert_eq(ta_chunk_of(t.runs[i]), c, "the second thread borrows in the first's chunk");
    cr_assert_eq(ta_chunk_of(mine[i]), c);
    cr_assert_neq(t.runs[i]->owner, mine[i]->owner);
    used |= 1u << mine[i]->slot | 1u << t.runs[i]->slot;
  }
  cr_assert_eq(used, ((1u << (2 * TURNS)) - 1) << 1, "slots 1..12, taken in turns");
  uintptr_t header = (uintptr_t)c >> 7;
  for (int i = 0; i < TURNS; i++) {
    uintptr_t a = (uintptr_t)mine[i] >> 7;
    cr_assert_neq(a, header, "slot %u beside the header", mine[i]->slot);
    cr_assert_neq((uintptr_t)t.runs[i] >> 7, header, "slot %u beside the header", t.runs[i]->slot);
    for (int j = 0; j < TURNS; j++)
      cr_assert_neq(a, (uintptr_t)t.runs[j] >> 7, "slots %u and %u: one pair of lines",
                    mine[i]->slot, t.runs[j]->slot);
  }
}

/* A thread that owns a chunk with room takes its own slots before the unused slots of another
 * arena's: only an arena without room of its own borrows those. */
Test(lend, an_arena_with_room_of_its_own_uses_it_before_another_s_unused_slots) {
  settings();
  void *mine = ta_malloc(64);
  cr_assert_not_null(mine);
  struct own_chunk o;
  own_chunk_then_second_run(&o, ta_tl_arena);
  cr_assert_eq(ta_chunk_of(o.second), ta_chunk_of(o.first), "its own room first");
  cr_assert_eq(atomic_load(&ta_tl_arena->slots_free), TA_RUNS_PER_CHUNK - 2, "nothing lent");
}

/* The owner's frees, another thread's frees and the checks of a lent run are its owner's: a
 * block of it freed twice by another thread is caught when its owner takes the frees in. */
struct lent_run {
  pthread_barrier_t step;
  void *blocks[2];
  ta_arena_t *arena;
};

static void *borrow_and_wait(void *arg) {
  struct lent_run *l = arg;
  l->blocks[0] = ta_malloc(64);
  l->blocks[1] = ta_malloc(64);
  l->arena = ta_tl_arena;
  pthread_barrier_wait(&l->step); /* the main thread frees blocks[1], twice */
  pthread_barrier_wait(&l->step);
  ta_remote_collect(ta_tl_arena); /* the owner's verdict: a double free */
  return NULL;
}

Test(lend, a_lent_run_s_remote_frees_go_to_its_owner_and_a_double_free_is_caught,
     .signal = SIGABRT) {
  keeper_retires_a_run();
  static struct lent_run l;
  pthread_t t = start_in_step(&l.step, borrow_and_wait, &l);
  pthread_barrier_wait(&l.step);
  cr_assert_eq(ta_run_of(l.blocks[0]), retired);
  ta_free(l.blocks[1]); /* the keeper's thread, not the owner: a remote free */
  ta_remote_flush();    /* put off in this thread's chain until now */
  cr_assert(ta_remote_waiting(l.arena, memory_order_relaxed), "on the owner's remote list");
  cr_assert_not(ta_remote_waiting(keeper, memory_order_relaxed), "not the keeper's");
  ta_free(l.blocks[1]); /* again: handed to the owner, which confirms */
  pthread_barrier_wait(&l.step);
  pthread_join(t, NULL); /* the owner aborts the process first */
}

/* Emptied, a lent run goes back to an ownerless keeper, whose orphan purge is told: the
 * slot's pages go back a decay time on, with no call of the keeper's (it has no thread). */
struct gone_keeper {
  pthread_barrier_t step;
  ta_arena_t *arena;
  void *block;
};

static void *keep_a_chunk_then_exit(void *arg) {
  struct gone_keeper *g = arg;
  g->block = ta_malloc(64); /* its chunk; the block stays */
  g->arena = ta_tl_arena;
  pthread_barrier_wait(&g->step); /* the main thread borrows a slot of it */
  pthread_barrier_wait(&g->step);
  return NULL;
}

/* This thread borrows a slot of a chunk another thread keeps, then that thread exits: its
 * arena is ownerless. The block returned lies in the slot. */
static void *borrow_from_a_keeper_that_exits(struct gone_keeper *g) {
  pthread_t t = start_in_step(&g->step, keep_a_chunk_then_exit, g);
  pthread_barrier_wait(&g->step);
  cr_assert_not_null(g->block);
  void *p = ta_malloc(64); /* no chunk of its own: a slot of the other thread's chunk */
  cr_assert_eq(ta_chunk_of(p)->owner, g->arena);
  pthread_barrier_wait(&g->step);
  cr_assert_eq(pthread_join(t, NULL), 0);
  cr_assert_eq(atomic_load(&g->arena->state), ARENA_FREE);
  return p;
}

Test(lend, a_slot_given_back_to_an_ownerless_keeper_goes_back_with_the_orphan_purge) {
  settings();
  static struct gone_keeper g;
  void *p = borrow_from_a_keeper_that_exits(&g);
  ta_free(p);
  atomic_store(&ta_orphan_due, 0);
  ta_small_retire_idle(ta_tl_arena,
                       true); /* the run retires: its slot back to the ownerless keeper */
  cr_assert_null(ta_tl_arena->lent_back);
  cr_assert_eq(g.arena->dirty_bytes, TA_RUN_SIZE, "resident, the keeper's");
  uint64_t due = atomic_load(&ta_orphan_due);
  cr_assert(due != 0 && due <= ta_os_now_ms() + ta_decay_ms, "the orphan purge is told");
  ta_purge_orphans(due, false);
  cr_assert_eq(g.arena->dirty_bytes, 0, "given back");
}

/* Emptied, a lent run goes back to its keeper: at once, or when the keeper's lock is busy,
 * at the owner's next purge; with the keeper still busy, a purge that gives everything back
 * gives the slot's pages back and leaves the slot waiting. */
struct waiter {
  pthread_barrier_t step;
  ta_arena_t *arena;
  ta_run_t *run;
  size_t dirty_waiting;
  size_t resident_after_trim;
  bool waited, back_after_trim;
  uint64_t retry_due;
};

static void *borrow_empty_and_purge(void *arg) {
  struct waiter *w = arg;
  void *p = ta_malloc(64);
  w->arena = ta_tl_arena;
  w->run = ta_run_of(p);
  memset(p, 1, 64);
  ta_free(p);
  pthread_barrier_wait(&w->step); /* the main thread takes the keeper's lock */
  pthread_barrier_wait(&w->step);
  ta_small_retire_idle(ta_tl_arena, true); /* the run is emptied and retired */
  w->waited = ta_tl_arena->lent_back == w->run;
  w->dirty_waiting = ta_tl_arena->dirty_bytes;
  ta_arena_purge(ta_tl_arena, ta_os_now_ms(), TA_PURGE_ALL, 0, true); /* keeper still busy */
  w->back_after_trim = ta_tl_arena->lent_back == NULL;
  w->retry_due = atomic_load(&ta_tl_arena->purge_due);
  w->resident_after_trim = ta_os_resident(ta_run_base(w->run), TA_RUN_SIZE);
  pthread_barrier_wait(&w->step); /* the main thread looks, then lets the lock go */
  pthread_barrier_wait(&w->step);
  ta_arena_purge(ta_tl_arena, ta_os_now_ms(), TA_PURGE_AGED, ta_decay_ms, false);
  return NULL;
}

Test(lend, an_emptied_lent_run_waits_for_its_busy_keeper_then_goes_back) {
  keeper_retires_a_run();
  struct waiter w = {0};
  pthread_t t = start_in_step(&w.step, borrow_empty_and_purge, &w);
  pthread_barrier_wait(&w.step);
  cr_assert_eq(w.run, retired);
  ta_slow_enter(keeper);
  pthread_barrier_wait(&w.step);
  pthread_barrier_wait(&w.step);
  cr_assert(w.waited, "the keeper's lock was busy: the run waits with its owner");
  cr_assert_eq(w.dirty_waiting, TA_RUN_SIZE, "counted in the owner's free memory");
  cr_assert_not(w.back_after_trim, "still waiting");
  cr_assert_eq(w.resident_after_trim, 0, "but its pages went back");
  cr_assert_neq(w.retry_due, 0, "and its owner's purge comes back to try again");
  cr_assert_eq(w.arena->dirty_bytes, 0);
  ta_chunk_t *c = ta_chunk_of(retired);
  uint64_t bit = (uint64_t)1 << retired->slot;
  cr_assert_not(c->free_slots & bit);
  ta_slow_leave(keeper);
  pthread_barrier_wait(&w.step);
  cr_assert_eq(pthread_join(t, NULL), 0);
  cr_assert_null(w.arena->lent_back, "given back at the owner's purge");
  cr_assert(c->free_slots & bit, "free in its keeper's chunk again");
  cr_assert_not(c->dirty_slots & bit, "and known not to be resident");
  cr_assert_eq(retired->owner, NULL);
}

/* An arena's statistics count the runs it owns, wherever their slots are; the keeper's count
 * its chunk and its free slots. */
static void *borrow_and_stay(void *arg) {
  struct borrower *b = arg;
  b->block = ta_malloc(64);
  b->arena = ta_tl_arena;
  return NULL;
}

Test(lend, a_lent_run_counts_in_its_owner_s_statistics) {
  keeper_retires_a_run();
  struct ta_stats before = {.version = TA_STATS_VERSION, .size = sizeof before};
  cr_assert_eq(ta_stats_get(&before, (int)keeper->id), 0);
  struct borrower b = {0};
  run_in_thread(borrow_and_stay, &b);
  struct ta_stats k = {.version = TA_STATS_VERSION, .size = sizeof k};
  struct ta_stats o = {.version = TA_STATS_VERSION, .size = sizeof o};
  cr_assert_eq(ta_stats_get(&k, (int)keeper->id), 0);
  cr_assert_eq(ta_stats_get(&o, (int)b.arena->id), 0);
  unsigned cls = ta_size_class(64);
  cr_assert_eq(o.classes[cls].live_blocks, 1, "the borrower's block");
  cr_assert_eq(o.classes[cls].runs, 1);
  cr_assert_eq(o.heap_bytes, TA_RUN_SIZE, "it keeps no chunk: its heap is the slot it took");
  cr_assert_geq(o.heap_bytes, o.classes[cls].usable_bytes + o.free_bytes);
  cr_assert_eq(k.classes[cls].live_blocks, before.classes[cls].live_blocks);
  cr_assert_eq(k.classes[cls].runs, before.classes[cls].runs);
  cr_assert_eq(k.heap_bytes, before.heap_bytes - TA_RUN_SIZE, "the keeper's chunk less the slot");
  cr_assert_eq(k.free_bytes + TA_RUN_SIZE, before.free_bytes, "the slot is no longer free");
  struct ta_stats all = {.version = TA_STATS_VERSION, .size = sizeof all};
  cr_assert_eq(ta_stats_get(&all, -1), 0);
  cr_assert_eq(all.heap_bytes, k.heap_bytes + o.heap_bytes, "each byte counted once");
  ta_free(b.block);
}

/* The same while an orphan purge holds the keeper (claimed, about to let it go): the slot
 * comes back in that window, and letting the keeper go tells the orphan purge. */
Test(lend, a_slot_given_back_while_an_orphan_purge_holds_its_keeper_is_not_forgotten) {
  settings();
  static struct gone_keeper g;
  void *p = borrow_from_a_keeper_that_exits(&g);
  ta_free(p);
  cr_assert(ta_arena_try_claim(g.arena), "held, as an orphan purge holds it");
  atomic_store(&ta_orphan_due, 0);
  ta_small_retire_idle(ta_tl_arena, true); /* back to the claimed keeper */
  cr_assert_eq(g.arena->dirty_bytes, TA_RUN_SIZE);
  cr_assert_eq(atomic_load(&ta_orphan_due), 0, "claimed: nobody told yet");
  ta_arena_give_back(g.arena); /* the orphan purge lets it go */
  cr_assert_neq(atomic_load(&ta_orphan_due), 0, "told when it goes");
}

/* A thread that exits with a lent run, whose keeper is busy when the orphan purge retires the
 * run: the run waits, its pages go back, and the orphan purge comes back for it. */
static void *borrow_free_and_exit(void *arg) {
  void *p = ta_malloc(64);
  *(ta_arena_t **)arg = ta_tl_arena;
  ta_free(p); /* its run stays, active and empty */
  return NULL;
}

Test(lend, an_exited_thread_s_waiting_run_goes_back_with_a_later_orphan_purge) {
  settings();
  void *mine = ta_malloc(64);
  cr_assert_not_null(mine);
  ta_arena_t *borrower = NULL;
  run_in_thread(borrow_free_and_exit, &borrower);
  ta_run_t *r = borrower->cur[ta_size_class(64)];
  cr_assert_eq(ta_chunk_of(r), ta_chunk_of(mine), "a slot of this thread's chunk");
  ta_slow_enter(ta_tl_arena); /* the keeper busy */
  ta_purge_orphans(ta_os_now_ms() + ta_decay_ms, false);
  ta_slow_leave(ta_tl_arena);
  cr_assert_eq(borrower->lent_back, r, "waits");
  cr_assert_eq(ta_os_resident(ta_run_base(r), TA_RUN_SIZE), 0, "its pages went back");
  uint64_t due = atomic_load(&ta_orphan_due);
  cr_assert_neq(due, 0, "the orphan purge comes back");
  ta_purge_orphans(due, false);
  cr_assert_null(borrower->lent_back);
  cr_assert(ta_chunk_of(r)->free_slots & ((uint64_t)1 << r->slot), "free in its keeper's chunk");
}

/* Many threads borrowing, giving back and purging at once (a run for ThreadSanitizer as much
 * as for the checks): keepers that fill and empty runs of their own classes, borrowers of
 * other classes that purge their arenas at every round, a statistics reader. Once all have
 * stopped, every slot is in exactly one place: free in its keeper's masks with no owner, a
 * run with an owner, or an emptied run waiting on one arena's list; and the counts the
 * borrowers read agree with the masks. */
static _Atomic bool stop;

static void fill_and_empty(size_t size) {
  enum { N = 1100 }; /* more than a run of 64-byte blocks: runs retire */
  static __thread void *b[N];
  for (int i = 0; i < N; i++)
    b[i] = ta_malloc(size);
  for (int i = 0; i < N; i++)
    ta_free(b[i]);
}

static void *churn_keeper(void *arg) {
  (void)arg;
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    fill_and_empty(64);
    fill_and_empty(128);
  }
  return NULL;
}

static void *churn_borrower(void *arg) {
  size_t size = (size_t)(uintptr_t)arg;
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    fill_and_empty(size);
    ta_arena_purge(ta_tl_arena, ta_os_now_ms(), TA_PURGE_AGED, 0, false);
  }
  return NULL;
}

static void *read_statistics(void *arg) {
  (void)arg;
  while (!atomic_load_explicit(&stop, memory_order_relaxed))
    for (ta_arena_t *a = ta_arena_first(); a; a = a->next_all) {
      struct ta_stats s = {.version = TA_STATS_VERSION, .size = sizeof s};
      ta_stats_get(&s, (int)a->id);
    }
  return NULL;
}

static bool waits_to_go_back(const ta_run_t *r) {
  unsigned n = 0;
  for (ta_arena_t *a = ta_arena_first(); a; a = a->next_all)
    for (const ta_run_t *w = a->lent_back; w; w = w->next)
      n += w == r;
  cr_assert_leq(n, 1, "a run on two lists");
  return n == 1;
}

static void check_slots(void) {
  size_t dirty = 0;
  for (ta_arena_t *a = ta_arena_first(); a; a = a->next_all) {
    unsigned free = 0, warm = 0;
    for (int full = 0; full < 2; full++)
      for (ta_chunk_t *c = full ? a->small_full : a->small_avail; c; c = c->next) {
        cr_assert_eq(c->owner, a);
        cr_assert_eq(c->dirty_slots & ~c->free_slots, 0, "resident free slots are free");
        free += (unsigned)__builtin_popcountll(c->free_slots);
        warm += (unsigned)__builtin_popcountll(c->dirty_slots);
        for (unsigned i = 1; i < TA_RUNS_PER_CHUNK; i++) {
          ta_run_t *r = ta_chunk_run(c, i);
          if (c->free_slots & ((uint64_t)1 << i)) {
            cr_assert_null(r->owner, "a free slot has no owner");
            cr_assert_not(waits_to_go_back(r), "a free slot waits to go back");
          } else if (r->owner == NULL) {
            cr_assert(waits_to_go_back(r), "slot %u out of use and on no list", i);
          }
        }
      }
    cr_assert_eq(atomic_load(&a->slots_free), free, "arena %u: free slots", a->id);
    cr_assert_eq(atomic_load(&a->slots_warm), warm, "arena %u: resident free slots", a->id);
    dirty += a->dirty_bytes;
  }
  cr_assert_eq(atomic_load(&ta_dirty_total.v), dirty, "the book agrees with the arenas");
  uint32_t warm_all = 0; /* (no fork here: no arena is a zombie) */
  for (ta_arena_t *a = ta_arena_first(); a; a = a->next_all)
    warm_all += atomic_load(&a->slots_warm);
  cr_assert_eq(ta_small_warm_total(), warm_all, "the borrowers' hint agrees with the arenas");
}

Test(lend, slots_lent_and_given_back_by_many_threads_stay_in_one_place_each) {
  ta_decay_ms = 1;
  ta_dirty_max = 64 << 10; /* over the budget often: keepers marked by borrowers' give-backs */
  pthread_t k[2], b[3], r;
  for (int i = 0; i < 2; i++)
    cr_assert_eq(pthread_create(&k[i], NULL, churn_keeper, NULL), 0);
  for (int i = 0; i < 3; i++)
    cr_assert_eq(pthread_create(&b[i], NULL, churn_borrower, (void *)(uintptr_t)(48 + 16 * i)), 0);
  cr_assert_eq(pthread_create(&r, NULL, read_statistics, NULL), 0);
  struct timespec t = {0, 700 * 1000 * 1000};
  nanosleep(&t, NULL);
  atomic_store(&stop, true);
  for (int i = 0; i < 2; i++)
    pthread_join(k[i], NULL);
  for (int i = 0; i < 3; i++)
    pthread_join(b[i], NULL);
  pthread_join(r, NULL);
  check_slots();
}

/* A fork child: an arena the fork caught inside the allocator (its lock held by a thread that
 * does not exist there) is a zombie and never lends again; the count of resident free slots
 * borrowers look for leaves its slots out. */
struct holds_its_lock {
  pthread_barrier_t step;
  ta_arena_t *arena;
};

static void *retire_a_run_then_hold_the_lock(void *arg) {
  struct holds_its_lock *h = arg;
  pthread_barrier_wait(&h->step); /* the main thread holds its arena's lock: a chunk of our own */
  enum { PER_RUN = TA_RUN_SIZE / 64 };
  static void *b[PER_RUN + 1];
  for (int i = 0; i < PER_RUN + 1; i++)
    b[i] = ta_malloc(64);
  h->arena = ta_tl_arena;
  pthread_barrier_wait(&h->step);
  for (int i = 0; i < PER_RUN; i++)
    ta_free(b[i]);
  ta_slow_enter(h->arena); /* as if the fork came while it rearranged its lists */
  pthread_barrier_wait(&h->step);
  pthread_barrier_wait(&h->step); /* the fork is done */
  ta_slow_leave(h->arena);
  return NULL;
}

Test(lend, in_a_fork_child_a_zombie_s_resident_slots_are_not_counted_as_lendable) {
  keeper_retires_a_run(); /* one resident free slot of the main thread's */
  struct holds_its_lock h;
  pthread_t t = start_in_step(&h.step, retire_a_run_then_hold_the_lock, &h);
  ta_slow_enter(keeper);
  pthread_barrier_wait(&h.step);
  pthread_barrier_wait(&h.step);
  ta_slow_leave(keeper);
  pthread_barrier_wait(&h.step);
  cr_assert_neq(h.arena, keeper);
  cr_assert(owns_a_chunk(h.arena), "the thread's run was of a chunk of its own");
  cr_assert_eq(atomic_load(&h.arena->slots_warm), 1, "its emptied run's slot, resident");
  cr_assert_eq(ta_small_warm_total(), 2);
  pid_t pid = fork();
  if (pid == 0) {
    alarm(30);
    if (atomic_load(&h.arena->state) != ARENA_ZOMBIE) _exit(10);
    if (ta_small_warm_total() != 1) _exit(11); /* the main thread's alone */
    /* A call the fork interrupted, going on here, changes the zombie's counts: nor the
     * process-wide count nor the lists of lenders change with them. */
    uint8_t listed = h.arena->lender_at[1];
    ta_small_slots_note(h.arena, 1, 1);
    if (ta_small_warm_total() != 1) _exit(12);
    if (h.arena->lender_at[1] != listed) _exit(13);
    ta_small_slots_note(h.arena, -2, -2);
    if (ta_small_warm_total() != 1) _exit(14);
    /* The main thread's next run, of another class, takes its own resident slot. */
    void *p = ta_malloc(32);
    if (ta_run_of(p) != retired) _exit(15);
    if (ta_small_warm_total() != 0) _exit(16);
    _exit(0);
  }
  int st;
  cr_assert_eq(waitpid(pid, &st, 0), pid);
  pthread_barrier_wait(&h.step);
  cr_assert_eq(pthread_join(t, NULL), 0);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: %d",
            WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

/* The count of resident free slots never wraps below zero: a fork from a signal handler may
 * cut an arena's note between its own count and this one, and the child, which sums this one
 * again from the arenas', then has the note's change applied twice. */
Test(lend, the_count_of_resident_free_slots_never_falls_below_zero) {
  keeper_retires_a_run();
  cr_assert_eq(ta_small_warm_total(), 1);
  ta_small_after_fork(0);  /* as a child whose sum already had the slot taken */
  void *p = ta_malloc(32); /* takes the resident slot: a note of -1 */
  cr_assert_eq(ta_run_of(p), retired);
  cr_assert_eq(atomic_load(&keeper->slots_warm), 0);
  cr_assert_eq(ta_small_warm_total(), 0, "not %u", ta_small_warm_total());
}
