/* Unit tests: the background purger (background.c), driven through the ta_ API library,
 * where it is off unless a test turns it on. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "tamalloc.h"
#include "tatest.h"

enum { BLOCKS = 512 };

static void *alloc_and_exit(void *arg) {
  void **out = arg;
  for (int i = 0; i < BLOCKS; i++) out[i] = ta_malloc(i % 16 ? 200 : 20000);
  return NULL;
}

static void nap_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Waits until the other thread of a test has reached step n. */
static void wait_for_step(_Atomic int *step, int n) {
  while (atomic_load(step) != n)
    nap_ms(5);
}

static void count_pending(ta_arena_t *a, void *arg) {
  if (atomic_load(&a->state) != ARENA_FREE) return;
  /* dirty_bytes is written under the arena's lock (an orphan purge): read it under the lock,
   * or count the arena pending while someone holds it. */
  if (!ta_slow_try_enter(a)) {
    ++*(int *)arg;
    return;
  }
  bool pending = ta_remote_waiting(a, memory_order_relaxed) || a->dirty_bytes;
  ta_slow_leave(a);
  if (pending) ++*(int *)arg;
}

/* Whether, within ms, every ownerless arena has been drained and purged. */
static bool orphans_settle_within(long ms) {
  for (long waited = 0; waited <= ms; waited += 20) {
    int pending = 0;
    ta_arena_foreach(count_pending, &pending);
    if (pending == 0 && atomic_load(&ta_orphan_due) == 0) return true;
    nap_ms(20);
  }
  return false;
}

/* Whether, within ms, the purger has finished a round more than `than`: it counts a round
 * once the round is over, a moment after its work can be seen. */
static bool rounds_pass_within(uint64_t than, long ms) {
  for (long waited = 0; waited <= ms; waited += 5) {
    if (ta_bg_rounds() > than) return true;
    nap_ms(5);
  }
  return false;
}

/* Whether, within ms, the purger has stopped (one thread left, nothing of exited ones to do). */
static bool purger_stops_within(long ms) {
  for (long waited = 0; waited <= ms; waited += 20) {
    if (!ta_bg_running()) return true;
    nap_ms(20);
  }
  return false;
}

/* Whether, within ms, the huge cache has emptied (the purger gave its spans back). */
static bool huge_cache_empties_within(long ms) {
  for (long waited = 0; waited <= ms; waited += 10) {
    if (ta_huge_cached_count() == 0) return true;
    nap_ms(10);
  }
  return false;
}

/* This thread has an arena of its own, as a program's main thread does: the purger runs for
 * a process with threads, never for no thread at all. */
static void have_an_arena(void) {
  static void *mine;
  if (mine == NULL) mine = ta_malloc(16);
}

/* A thread exits leaving blocks that this thread then frees into its ownerless arena. */
static void exit_and_free_remotely(void) {
  have_an_arena();
  static void *blocks[BLOCKS];
  pthread_t t;
  pthread_create(&t, NULL, alloc_and_exit, blocks);
  pthread_join(t, NULL);
  for (int i = 0; i < BLOCKS; i++) ta_free(blocks[i]);
}

/* Nothing due anywhere (what a stopped purger left behind is not these tests': a thread's
 * taking of an arena would start it for that). */
static void nothing_due(void) {
  atomic_store(&ta_arenas_due, 0);
  atomic_store(&ta_span_due, 0);
  atomic_store(&ta_huge_due, 0);
  atomic_store(&ta_orphan_due, 0);
}

/* Nothing due, and the purger not asked for: the next safe point starts nothing. */
static void nothing_due_nor_asked(void) {
  nothing_due();
  atomic_store(&ta_bg_wanted.v, 0);
}

/* Whether a purger was started during step(), the purger not running before. */
static bool starts_purger(void (*step)(void)) {
  uint64_t starts = ta_bg_starts();
  step();
  return ta_bg_starts() > starts;
}

/* Runs exit_and_free_remotely, the purger not running, and tells whether it was started
 * during the call (by the exit, or by the exiting thread's allocations; starts_purger): not
 * whether it still runs. With this thread left alone it leaves once what the exited one left is
 * purged, which on a loaded machine can come before this thread runs again (with a decay time of 50
 * ms, it did); a free never starts it, so frees made after that leave their work waiting. Tests
 * that need it afterwards keep a second thread (keeper_start). */
static bool exit_starts_purger(void) { return starts_purger(exit_and_free_remotely); }

static void *free_memory_and_exit(void *arg) {
  (void)arg;
  ta_free(ta_malloc(100000));
  return NULL;
}

/* A thread exits leaving nothing for this one to free (this one has an arena, as in
 * exit_and_free_remotely): tells whether a purger was started during the call (the exit gives
 * its arena up, which notes work for the purger). With one thread left it stops once that
 * arena, and what the thread freed, is purged, and no free of this thread's leaves work
 * behind it. */
static void exit_leaving_free_memory(void) {
  have_an_arena();
  pthread_t t;
  pthread_create(&t, NULL, free_memory_and_exit, NULL);
  pthread_join(t, NULL);
}
static bool exit_leaving_free_memory_starts_purger(void) {
  return starts_purger(exit_leaving_free_memory);
}

/* Takes an arena, says so (step 1), and waits for step 2. */
static void *take_an_arena_and_wait(void *arg) {
  ta_free(ta_malloc(16));
  atomic_store((_Atomic int *)arg, 1);
  wait_for_step(arg, 2);
  return NULL;
}

/* A second thread that owns an arena and waits, for tests that need the purger to stay: it
 * never leaves while two threads own arenas, however late this one runs. */
static _Atomic int keeper_step;
static pthread_t keeper;

static void keeper_start(void) {
  atomic_store(&keeper_step, 0);
  cr_assert_eq(pthread_create(&keeper, NULL, take_an_arena_and_wait, (void *)&keeper_step), 0,
               "the keeper thread");
  wait_for_step(&keeper_step, 1);
}

static void keeper_stop(void) {
  atomic_store(&keeper_step, 2);
  pthread_join(keeper, NULL);
}

Test(background, exited_threads_memory_is_purged_with_no_caller, .timeout = 30) {
  ta_bg_enable(true);
  keeper_start(); /* the purger stays: the frees below may come after the arena's purge */
  cr_assert_not(ta_bg_running(), "not before a thread exits with work left");
  cr_assert(exit_starts_purger(), "no purger started at the exit");
  cr_assert(orphans_settle_within(10000), "the ownerless arena was not purged in 10 s");
  cr_assert(rounds_pass_within(0, 2000), "the purge was not done by the purger's rounds");
  /* Once everything is purged it sleeps (no more rounds), and it wakes for new work. */
  uint64_t rounds = ta_bg_rounds();
  bool quiet = false;
  for (int i = 0; i < 30 && !quiet; i++) {
    nap_ms(300);
    uint64_t now_rounds = ta_bg_rounds();
    quiet = now_rounds == rounds;
    rounds = now_rounds;
  }
  cr_assert(quiet, "still purging after 9 s with nothing to purge");
  cr_assert(ta_bg_running(), "with two threads owning arenas it left instead of sleeping");
  uint64_t starts = ta_bg_starts();
  exit_and_free_remotely();
  cr_assert(orphans_settle_within(10000), "new work after a sleep was not taken");
  cr_assert(rounds_pass_within(rounds, 2000), "no round after the new work");
  cr_assert_eq(ta_bg_starts(), starts, "the new work started another purger: none slept");
  keeper_stop();
}

/* The purger's kernel thread id, found by its name, or 0. */
static uint32_t purger_tid(void) {
  uint32_t tid = 0;
  DIR *d = opendir("/proc/self/task");
  struct dirent *e;
  while (tid == 0 && (e = readdir(d))) {
    char path[300], name[32] = "";
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    FILE *f = fopen(path, "r");
    if (f == NULL) continue;
    if (fgets(name, sizeof name, f) && strncmp(name, "tamalloc-purge", 14) == 0)
      tid = (uint32_t)atoi(e->d_name);
    fclose(f);
  }
  closedir(d);
  return tid;
}

static void count_owned_by(ta_arena_t *a, void *arg) {
  uint32_t *tid_and_count = arg;
  tid_and_count[1] += atomic_load(&a->owner_tid) == tid_and_count[0];
}

/* It allocates nothing: it never takes an arena, whatever it purges (ownerless arenas, idle
 * ones, the huge cache). */
Test(background, the_purger_allocates_nothing, .timeout = 30) {
  ta_bg_enable(true);
  ta_decay_ms = 20;
  keeper_start(); /* a second thread, for whose sake the purger stays */
  exit_and_free_remotely();
  uint32_t tid_and_count[2] = {0, 0};
  for (int waited = 0; waited < 2000 && tid_and_count[0] == 0; waited += 10) {
    tid_and_count[0] = purger_tid(); /* once it has named itself */
    if (tid_and_count[0] == 0) nap_ms(10);
  }
  cr_assert_neq(tid_and_count[0], 0, "the purger runs, by its name");
  for (int i = 0; i < 3; i++) {
    exit_and_free_remotely();
    void *big = ta_malloc(6 << 20);
    memset(big, 1, 6 << 20);
    ta_free(big); /* into the huge cache, which it purges */
    cr_assert(orphans_settle_within(10000));
  }
  huge_cache_empties_within(2000);
  cr_assert_eq(ta_huge_cached_count(), 0, "it purged the huge cache");
  ta_arena_foreach(count_owned_by, tid_and_count);
  cr_assert_eq(tid_and_count[1], 0, "the purger (thread %u) owns an arena", tid_and_count[0]);
  keeper_stop();
}

/* A thread makes huge blocks and exits; the thread left frees them (into the process-wide
 * cache) after the exited thread's arena is due, and then makes no allocator call: the
 * purger, before it leaves (one thread left), waits for the cached spans to age and gives
 * them back. */
static void *huge_then_exit(void *arg) {
  void **p = arg;
  for (int i = 0; i < 4; i++) {
    p[i] = ta_malloc((size_t)(3 + i) << 20);
    memset(p[i], 1, (size_t)(3 + i) << 20);
  }
  ta_free(ta_malloc(100000)); /* its arena has something to purge once it is gone */
  return NULL;
}

Test(background, huge_spans_freed_by_the_last_thread_go_back_with_no_caller, .timeout = 60) {
  ta_bg_enable(true);
  /* The purger leaves once the exited thread's arena is purged, a decay time after the exit,
   * unless spans are due by then (it waits two decay times at most for those): the frees
   * below must come within a decay time of the exit, and before it the purger must be there.
   * A thread held off the CPU longer than that may find the purger gone before its frees,
   * which then wait for a caller (a free never starts it:
   * a_free_never_starts_the_purger_the_next_allocation_does): that is not the case this test
   * is about, so the spans are given back by hand and the case is made again. */
  ta_decay_ms = 1000;
  ta_free(ta_malloc(16)); /* this thread's arena: the one left */
  static void *p[4];
  for (int attempt = 0; attempt < 3; attempt++) {
    pthread_t t;
    uint64_t starts = ta_bg_starts(), t0 = ta_os_now_ms();
    pthread_create(&t, NULL, huge_then_exit, p);
    pthread_join(t, NULL);
    cr_assert_gt(ta_bg_starts(), starts, "no purger started");
    nap_ms(20);
    /* The exited thread's arena is due no earlier than t0 + decay (less a tick of the clock):
     * the purger may not have left before. */
    bool gone = !ta_bg_running();
    cr_assert(!gone || ta_os_now_ms() + 2 >= t0 + ta_decay_ms,
              "the purger left before the exited thread's arena was due");
    for (int i = 0; i < 4; i++)
      ta_free(p[i]); /* due after the exited thread's arena */
    bool in_time = ta_os_now_ms() + 2 < t0 + ta_decay_ms;
    cr_assert_eq(ta_huge_cached_count(), 4);
    if (!in_time) { /* the purger may have left before the frees: make the case again */
      cr_assert(purger_stops_within(5000), "the purger stayed 5 s with one thread left");
      ta_huge_purge(ta_os_now_ms(), true);
      cr_assert_eq(ta_huge_cached_count(), 0);
      continue;
    }
    huge_cache_empties_within(10000);
    cr_assert_eq(ta_huge_cached_count(), 0, "%zu spans still cached after 10 s",
                 ta_huge_cached_count());
    return;
  }
  cr_assert_fail("this thread's frees came a decay time after the exit, three times in a row");
}

Test(background, off_by_default_in_the_api_library, .timeout = 30) {
  exit_and_free_remotely();
  cr_assert_not(ta_bg_running());
  cr_assert_not(orphans_settle_within(600), "something purged without a caller");
}

Test(background, a_thread_that_cannot_start_changes_nothing, .timeout = 30) {
  ta_bg_enable(true);
  /* Every start fails: with only the first, the next safe point (the malloc below) starts
   * the purger, which then races the slow path for the ownerless arena (a slot it gives
   * back whose keeper's lock the other holds waits a decay time: purge.c). */
  ta_os_fail(TA_OS_THREAD, 0, UINT_MAX);
  exit_and_free_remotely();
  cr_assert_not(ta_bg_running());
  nap_ms(ta_decay_ms + 50);
  ta_free(ta_malloc(100000)); /* a slow path does the work instead */
  cr_assert_not(ta_bg_running());
  cr_assert(orphans_settle_within(100));
  ta_os_fail(0, 0, 0);
}

Test(background, a_fork_child_starts_its_own, .timeout = 30) {
  /* ThreadSanitizer cannot start threads in the child of a multithreaded process. */
  if (TT_SANITIZER) cr_skip_test("threads in a fork child under ThreadSanitizer");
  ta_bg_enable(true);
  cr_assert(exit_starts_purger());
  pid_t pid = fork();
  if (pid == 0) {
    if (ta_bg_running()) _exit(2); /* the parent's thread does not exist here */
    /* The keeper may take the parent's exited thread's arena, whose purge its slow path may
     * note: none is started for that, and nothing is left due or asked for. */
    ta_bg_enable(false);
    keeper_start();
    ta_bg_enable(true);
    nothing_due_nor_asked();
    if (!exit_starts_purger()) _exit(3);
    _exit(orphans_settle_within(10000) ? 0 : 4);
  }
  int st;
  waitpid(pid, &st, 0);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
}

/* The purger works on this thread's arena (its memory becomes due every few milliseconds)
 * while this thread forks, over and over: fork's prepare handler waits for the purger to let
 * go of the arena, so in every child the arena is still this thread's, whole. (Without the
 * wait, about one child in twenty found it half purged and had to give it up as a zombie,
 * with every block it held.) */
static void *idle_owner(void *arg) {
  ta_free(ta_malloc(16));
  while (!atomic_load((_Atomic int *)arg)) nap_ms(20);
  return NULL;
}

/* Under ThreadSanitizer a fork copies the tables of its shadow memory too: 300 forks took 27 s
 * alone and over 60 beside other tests on a virtual machine; 100 check the same thing there. */
#if defined(TA_TSAN)
enum { FORKS = 100 };
#else
enum { FORKS = 300 };
#endif
Test(background, fork_waits_for_the_purger_to_let_go_of_the_forking_threads_arena, .timeout = 120) {
  ta_bg_enable(true);
  ta_decay_ms = 2;
  static _Atomic int stop;
  pthread_t t[4];
  for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, idle_owner, (void *)&stop);
  nap_ms(50);
  int lost = 0, forks = FORKS;
  unsigned s = 1;
  for (int f = 0; f < forks; f++) {
    /* 32 blocks of 20-220 KB, written through: 4 MB a fork to fault in and purge (128 took
     * over a minute under ThreadSanitizer on a virtual machine with slow page faults; 32
     * still catch a prepare handler that does not wait, every run). */
    enum { N = 32 };
    char *p[N];
    for (int i = 0; i < N; i++) {
      s = s * 1103515245u + 12345u;
      size_t z = 20000 + (s >> 12) % 200000;
      p[i] = ta_malloc(z);
      memset(p[i], 1, z);
    }
    for (int i = 0; i < N; i++) ta_free(p[i]);
    nap_ms((s >> 8) % 4);
    ta_arena_t *mine = ta_tl_arena;
    pid_t pid = fork();
    if (pid == 0) _exit(atomic_load(&mine->state) == ARENA_CLAIMED && ta_tl_arena == mine ? 0 : 1);
    int st;
    waitpid(pid, &st, 0);
    cr_assert(WIFEXITED(st), "child status %d", st);
    lost += WEXITSTATUS(st) != 0;
  }
  atomic_store(&stop, 1);
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  cr_assert_gt(ta_bg_rounds(), 100, "the purger was at work: %llu rounds",
               (unsigned long long)ta_bg_rounds());
  cr_assert_eq(lost, 0, "in %d of %d children the forking thread lost its arena", lost, forks);
}

/* ---- the budget ---------------------------------------------------------------------- */

/* Threads that each free a few chunks' worth of medium blocks, drawn long ago, and then
 * wait: together they go over the budget, and the purger gives back the oldest excess, arena
 * by arena, until all are within it, not everything every arena holds. */
enum { KEEPERS = 8, KEEP_BLOCKS = 12 };
static _Atomic int keepers_go;
static _Atomic size_t keeper_dirty[KEEPERS];
static pthread_barrier_t keepers_filled;

/* Medium blocks of 1000 KiB, written through: resident. */
static void fill_blocks(void *b[KEEP_BLOCKS]) {
  for (int i = 0; i < KEEP_BLOCKS; i++) {
    b[i] = ta_malloc(1000 << 10);
    memset(b[i], 1, 1000 << 10);
  }
}

/* The process's free and resident bytes once within the budget, or after ms. */
static size_t dirty_within_budget(long ms) {
  size_t now = atomic_load(&ta_dirty_total.v);
  for (long waited = 0; waited < ms && now > ta_dirty_max; waited += 5) {
    nap_ms(5);
    now = atomic_load(&ta_dirty_total.v);
  }
  return now;
}

static void *fill_free_and_wait(void *arg) {
  int k = (int)(intptr_t)arg;
  void *b[KEEP_BLOCKS];
  fill_blocks(b);
  /* All fill before any frees: none takes another's empty chunks (chunk.c, spare chunks);
   * and the purger runs before any frees. */
  pthread_barrier_wait(&keepers_filled);
  pthread_barrier_wait(&keepers_filled);
  ta_tl_arena->demand_ms -= 2 * ta_demand_window(); /* drawn long ago: it holds nothing back */
  for (int i = 0; i < KEEP_BLOCKS; i++) ta_free(b[i]);
  ta_slow_enter(ta_tl_arena); /* the purger may be purging it */
  atomic_store(&keeper_dirty[k], ta_tl_arena->dirty_bytes + 1);
  ta_slow_leave(ta_tl_arena);
  while (!atomic_load(&keepers_go)) nap_ms(5);
  return NULL;
}

Test(background, over_the_budget_only_the_excess_goes, .timeout = 30) {
  ta_bg_enable(true);
  ta_decay_ms = 600000; /* nothing goes by its age while the test runs */
  ta_dirty_max = (size_t)24 << 20;
  ta_free(ta_malloc(200000)); /* memory due some day: the purger has work to wait for */
  pthread_t t[KEEPERS];
  size_t most = 0;
  pthread_barrier_init(&keepers_filled, NULL, KEEPERS + 1);
  for (int k = 0; k < KEEPERS; k++)
    pthread_create(&t[k], NULL, fill_free_and_wait, (void *)(intptr_t)k);
  pthread_barrier_wait(&keepers_filled);
  ta_bg_maybe_start(true);
  cr_assert(ta_bg_running());
  pthread_barrier_wait(&keepers_filled); /* now they free */
  for (int k = 0; k < KEEPERS; k++) {
    while (atomic_load(&keeper_dirty[k]) == 0) nap_ms(1);
    size_t d = atomic_load(&keeper_dirty[k]) - 1;
    most = d > most ? d : most;
  }
  uint64_t total = 0;
  for (int k = 0; k < KEEPERS; k++) total += atomic_load(&keeper_dirty[k]) - 1;
  cr_assert_gt(total, ta_dirty_max + most, "the threads freed %zu bytes: over the budget",
               (size_t)total);
  /* 10 s: under ThreadSanitizer beside other tests, 2 s were twice too short (the cause is
   * not known: the message says how many rounds the purger made). */
  uint64_t rounds = ta_bg_rounds();
  size_t now = dirty_within_budget(10000);
  cr_assert_leq(now, ta_dirty_max, "%zu bytes free and resident; the purger %s, %llu rounds", now,
                ta_bg_running() ? "runs" : "has left",
                (unsigned long long)(ta_bg_rounds() - rounds));
  cr_assert_gt(now + most, ta_dirty_max, "%zu bytes left of %zu: more than the excess went",
               now, (size_t)total);
  atomic_store(&keepers_go, 1);
  for (int k = 0; k < KEEPERS; k++) pthread_join(t[k], NULL);
}

/* An owner that holds its lock when the purger comes for the budget, and frees nothing more
 * after: the purger looks at its arena again within milliseconds. Before, nothing rang it
 * again, and the excess stayed until it was a decay time old (here 600 s). */
static _Atomic size_t holder_over; /* the free bytes counted once its frees are done, + 1 */
static _Atomic int holder_released;
static pthread_barrier_t holder_filled;
static void *free_while_holding(void *arg) {
  (void)arg;
  void *b[KEEP_BLOCKS];
  fill_blocks(b);
  pthread_barrier_wait(&holder_filled); /* the purger starts */
  pthread_barrier_wait(&holder_filled);
  ta_tl_arena->demand_ms -= 2 * ta_demand_window(); /* drawn long ago: it holds nothing back */
  ta_slow_enter(ta_tl_arena); /* the frees below nest in it */
  for (int i = 0; i < KEEP_BLOCKS; i++)
    ta_free(b[i]);
  atomic_store(&holder_over, atomic_load(&ta_dirty_total.v) + 1);
  /* The purger, rung by the frees, finds the lock held. Two rounds from now every round
   * the frees rang has ended: what purges after the release is the budget's retry. */
  uint64_t rounds = ta_bg_rounds();
  for (int waited = 0; waited < 5000 && ta_bg_rounds() < rounds + 2; waited++)
    nap_ms(1);
  ta_slow_leave(ta_tl_arena);
  atomic_store(&holder_released, 1);
  while (!atomic_load(&keepers_go))
    nap_ms(5);
  return NULL;
}

Test(background, over_the_budget_an_owner_holding_its_lock_is_looked_at_again_soon, .timeout = 30) {
  ta_bg_enable(true);
  ta_decay_ms = 600000; /* nothing goes by its age, nor by a periodic visit, meanwhile */
  ta_dirty_max = (size_t)4 << 20;
  ta_free(ta_malloc(200000)); /* memory due some day: the purger has work to wait for */
  pthread_t t;
  pthread_barrier_init(&holder_filled, NULL, 2);
  pthread_create(&t, NULL, free_while_holding, NULL);
  pthread_barrier_wait(&holder_filled);
  ta_bg_maybe_start(true);
  cr_assert(ta_bg_running());
  pthread_barrier_wait(&holder_filled); /* now it frees, holding its lock */
  while (atomic_load(&holder_over) == 0)
    nap_ms(1);
  size_t first = atomic_load(&holder_over) - 1;
  cr_assert_gt(first, ta_dirty_max, "the frees went over the budget: %zu bytes", first);
  while (!atomic_load(&holder_released))
    nap_ms(1);
  size_t now = dirty_within_budget(3000);
  cr_assert_leq(now, ta_dirty_max, "%zu bytes free and resident, of %zu", now, first);
  atomic_store(&keepers_go, 1);
  pthread_join(t, NULL);
  pthread_barrier_destroy(&holder_filled);
}

/* ---- purging arenas whose owners are alive ------------------------------------------ */

static _Atomic int churning;

/* Allocates and frees blocks of every kind, checking each block's bytes, so that runs
 * retire, chunks empty and medium blocks merge while the purger works on the arena. */
static void *churn(void *arg) {
  unsigned s = (unsigned)(uintptr_t)arg;
  enum { N = 256 };
  unsigned char *p[N] = {0};
  size_t z[N] = {0};
  while (atomic_load(&churning)) {
    for (int i = 0; i < N; i++) {
      s = s * 1103515245u + 12345u;
      if (p[i]) {
        for (size_t k = 0; k < z[i]; k += 61)
          if (p[i][k] != (unsigned char)(i + k)) abort();
        ta_free(p[i]);
        p[i] = NULL;
      }
      if ((s >> 8) % 3) continue;
      z[i] = (s >> 12) % 7 == 0 ? 4096 + (s >> 4) % 60000 : 16 + (s >> 4) % 2000;
      p[i] = ta_malloc(z[i]);
      for (size_t k = 0; k < z[i]; k += 61) p[i][k] = (unsigned char)(i + k);
    }
  }
  for (int i = 0; i < N; i++) ta_free(p[i]);
  return NULL;
}

Test(background, purges_live_arenas_while_their_owners_work, .timeout = 60) {
  ta_bg_enable(true);
  ta_decay_ms = 2; /* purge all the time (set before the purger exists, as settings are) */
  atomic_store(&ta_owner_scale_force, 1); /* owners that run are purged by the wall time too */
  exit_and_free_remotely(); /* starts the thread (it may leave again at once: one owner) */
  uint64_t rounds = ta_bg_rounds();
  atomic_store(&churning, 1);
  pthread_t t[3];
  for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, churn, (void *)(uintptr_t)(i + 1));
  nap_ms(1500);
  atomic_store(&churning, 0);
  for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
  cr_assert_gt(ta_bg_rounds(), rounds, "the purger never ran beside three owners");
}

static void *hold_free_memory_and_wait(void *arg) {
  void *p[400];
  for (int i = 0; i < 400; i++) p[i] = ta_malloc(i % 8 ? 1000 : 30000);
  for (int i = 0; i < 400; i++) ta_free(p[i]);
  atomic_store((_Atomic(ta_arena_t *) *)arg, ta_tl_arena);
  while (atomic_load(&churning)) nap_ms(10); /* alive and idle */
  return NULL;
}

Test(background, idle_owned_arena_is_purged, .timeout = 30) {
  ta_bg_enable(true);
  keeper_start();
  exit_and_free_remotely();
  cr_assert(ta_bg_running());
  atomic_store(&churning, 1);
  _Atomic(ta_arena_t *) held = NULL;
  pthread_t t;
  pthread_create(&t, NULL, hold_free_memory_and_wait, &held);
  while (atomic_load(&held) == NULL) nap_ms(5);
  ta_arena_t *a = atomic_load(&held);
  cr_assert_neq(atomic_load(&a->purge_due), 0, "the thread left free memory to purge");
  bool purged = false; /* nothing left pending: all it held free went back */
  for (int i = 0; i < 500 && !purged; i++) {
    nap_ms(20);
    purged = atomic_load(&a->purge_due) == 0;
  }
  atomic_store(&churning, 0);
  pthread_join(t, NULL);
  keeper_stop();
  cr_assert(purged, "an idle thread's free memory was not purged in 10 s");
}

/* A thread allocates medium and small blocks, hands them to this thread, and goes idle for
 * good (alive, blocked): the frees land on its remote list, which it never takes in. The
 * purger takes in the medium ones, whose memory then merges and goes back, and leaves the
 * small ones on the list for the owner (their runs' lists are its fast paths' alone). */
enum { MAILED = 64, MAIL_SIZE = 60000 };
static void *mail[MAILED + 1];
static _Atomic int small_mail_ok;

static void *allocate_hand_over_and_wait(void *arg) {
  (void)arg;
  for (int i = 0; i < MAILED; i++) {
    mail[i] = ta_malloc(i % 2 ? MAIL_SIZE : 100);
    memset(mail[i], 0x33, i % 2 ? MAIL_SIZE : 100);
  }
  atomic_store((_Atomic(ta_arena_t *) *)&mail[MAILED], ta_tl_arena);
  while (atomic_load(&churning)) nap_ms(10); /* alive and idle */
  /* Back at work: each small block was put back on the list once, and comes in now. */
  ta_arena_t *a = ta_tl_arena;
  ta_remote_collect(a);
  int ok = 1;
  for (int i = 0; i < MAILED; i += 2) {
    ta_run_t *r = ta_run_of(mail[i]);
    ok &= r->owner == a && ta_small_on_free_list(r, mail[i]);
  }
  atomic_store(&small_mail_ok, ok);
  return NULL;
}

static void count_in_use(const ta_mhdr_t *h, size_t word, void *arg) {
  (void)h;
  if (ta_medium_live(word)) ++*(size_t *)arg;
}

/* Starts the thread above, lets `before_frees` set the scene once it is idle, frees what it
 * handed over, and sees the medium blocks taken in, merged and given back, and the small
 * ones left on the list for the owner. */
static void mail_is_taken_in(void (*before_frees)(void)) {
  atomic_store(&churning, 1);
  pthread_t t;
  pthread_create(&t, NULL, allocate_hand_over_and_wait, NULL);
  while (atomic_load((_Atomic(ta_arena_t *) *)&mail[MAILED]) == NULL) nap_ms(5);
  if (before_frees) before_frees();
  ta_chunk_t *c = ta_chunk_of(mail[1]);
  size_t before = ta_os_resident(c, TA_CHUNK_SIZE), in_use = 0;
  for (int i = 0; i < MAILED; i++) ta_free(mail[i]);
  ta_medium_walk(c, count_in_use, &in_use);
  cr_assert_geq(in_use, MAILED / 2, "the medium frees wait for the owner");
  for (int i = 0; i < 500 && in_use > 0; i++) {
    nap_ms(20);
    in_use = 0;
    ta_medium_walk(c, count_in_use, &in_use);
  }
  ta_arena_t *owner = atomic_load((_Atomic(ta_arena_t *) *)&mail[MAILED]);
  uint64_t now = ta_os_now_ms(), adue = atomic_load(&ta_arenas_due);
  cr_assert_eq(in_use, 0,
               "the idle owner's medium remote frees were not taken in within 10 s: %zu in use, "
               "%lld counted waiting, lists %s, purger %s after %llu rounds, owned arenas due "
               "in %lld ms, state %d, collects %llu (seen %llu)",
               in_use, (long long)atomic_load(&owner->remote_medium),
               ta_remote_waiting(owner, memory_order_relaxed) ? "not empty" : "empty",
               ta_bg_running() ? "running" : "not running", (unsigned long long)ta_bg_rounds(),
               adue ? (long long)adue - (long long)now : -1LL, (int)atomic_load(&owner->state),
               (unsigned long long)owner->collects, (unsigned long long)owner->collects_seen);
  /* The medium blocks merged into free space, which goes back after the decay. */
  size_t after = before;
  for (int i = 0; i < 500 && after > before / 4; i++) {
    nap_ms(20);
    after = ta_os_resident(c, TA_CHUNK_SIZE);
  }
  cr_assert_leq(after, before / 4, "%zu of %zu resident bytes still there", after, before);
  atomic_store(&churning, 0);
  pthread_join(t, NULL);
  cr_assert(atomic_load(&small_mail_ok), "a small block was lost or moved off the list");
}

Test(background, idle_owners_remote_medium_frees_are_taken_in, .timeout = 30) {
  ta_bg_enable(true);
  ta_decay_ms = 50;
  keeper_start();
  exit_and_free_remotely();
  cr_assert(ta_bg_running());
  mail_is_taken_in(NULL);
  keeper_stop();
}

/* A due time of owned arenas ten minutes away: an arena's demand may hold its memory that
 * long (purge.c), and the purger may leave one behind when it stops. */
static void far_due(void) { ta_purge_note_global(&ta_arenas_due, ta_os_now_ms() + 600000); }

/* The purger stopped (one thread left) with a due time of owned arenas left behind: a thread
 * that then takes an arena starts it again (alloc.c, arena_get_slow), and the medium blocks
 * freed into that thread's arena once it is idle are taken in within the decay, not at the
 * far due time. */
Test(background, mail_starts_a_purger_that_left_a_due_time_behind, .timeout = 40) {
  ta_bg_enable(true);
  ta_decay_ms = 50;
  cr_assert(exit_leaving_free_memory_starts_purger());
  cr_assert(purger_stops_within(10000),
            "with one thread left and the exited one's arena purged, it did not stop");
  far_due();
  mail_is_taken_in(NULL);
}

/* The purger asleep until a far due time: the first medium block of a batch freed into an
 * idle owner's arena wakes it for a visit within the decay. */
static void purger_asleep_until_far_due(void) {
  bool asleep = false;
  for (int i = 0; i < 500 && !asleep; i++) {
    far_due(); /* again after each visit that took the due times in */
    if (!ta_bg_running()) ta_bg_maybe_start(true); /* it may have stopped before the owner came */
    nap_ms(10);
    uint64_t wakes_at = atomic_load(&ta_bg_wakes_at);
    asleep = wakes_at != UINT64_MAX && wakes_at > ta_os_now_ms() + 500000;
  }
  cr_assert(asleep, "the purger did not go to sleep until the far due time");
}

Test(background, mail_wakes_a_purger_asleep_until_a_far_due_time, .timeout = 40) {
  ta_bg_enable(true);
  ta_decay_ms = 50;
  exit_and_free_remotely();
  mail_is_taken_in(purger_asleep_until_far_due);
}

/* A request for the purger waits through frees, whatever they are: glibc frees a joined
 * thread's TLS while it holds the lock that pthread_create takes, so a free must never start
 * a thread. The next allocation starts it. Here: two owners (one idle, holding blocks this
 * thread frees), the purger not running, a note from none; then a span, a huge block, and the idle
 * owner's small and medium blocks are freed. */
Test(background, a_free_never_starts_the_purger_the_next_allocation_does, .timeout = 40) {
  ta_conf_span_min_kb = 128; /* the idle owner's blocks of MAIL_SIZE stay medium ones */
  ta_span_threads = 0;       /* spans from the first thread on */
  ta_bg_enable(true);
  ta_decay_ms = 50;
  /* One thread so far: nothing starts the purger, nor asks for it. */
  ta_free(ta_malloc(16)); /* initialised: ta_span_min is set */
  char *span = ta_malloc(ta_span_min), *huge = ta_malloc((size_t)8 << 20);
  cr_assert_eq(ta_map_get((uintptr_t)span), TA_MAP_SPAN, "a span");
  memset(span, 1, ta_span_min);
  memset(huge, 1, (size_t)8 << 20);
  /* This thread's own: two runs of a class its frees empty (free_small_slow), and medium
   * blocks for its cache (the first starts its clock). */
  enum { OWN_SMALL = 2 * TA_RUN_SIZE / 512, OWN_MEDIUM = 4 };
  static void *own_small[OWN_SMALL], *own_medium[OWN_MEDIUM];
  for (int i = 0; i < OWN_SMALL; i++)
    own_small[i] = ta_malloc(512);
  for (int i = 0; i < OWN_MEDIUM; i++)
    own_medium[i] = ta_malloc(20000);
  cr_assert_eq(ta_map_get((uintptr_t)own_medium[0]), TA_MAP_MEDIUM, "a medium block");
  cr_assert_not(atomic_load(&ta_bg_wanted.v), "one arena: nothing asks for the purger");
  nothing_due();
  atomic_store(&churning, 1);
  pthread_t t;
  pthread_create(&t, NULL, allocate_hand_over_and_wait, NULL);
  while (atomic_load((_Atomic(ta_arena_t *) *)&mail[MAILED]) == NULL)
    nap_ms(5);
  cr_assert_not(ta_bg_running(), "nothing was due: the second owner's arena started nothing");
  cr_assert_eq(ta_map_get((uintptr_t)mail[1]), TA_MAP_MEDIUM, "the owner's blocks: medium");
  ta_purge_note_global(&ta_arenas_due, ta_os_now_ms() + 600000);
  cr_assert(atomic_load(&ta_bg_wanted.v), "a due time noted from none asks for the purger");
  ta_free(span);
  ta_free(huge);
  for (int i = 0; i < MAILED; i++)
    ta_free(mail[i]);
  for (int i = 0; i < OWN_SMALL; i++)
    ta_free(own_small[i]);
  for (int i = 0; i < OWN_MEDIUM; i++)
    ta_free(own_medium[i]);
  cr_assert_not(ta_bg_running(), "a free started the purger");
  cr_assert(atomic_load(&ta_bg_wanted.v), "the request was dropped by a free");
  void *m = ta_malloc(20000);
  cr_assert(ta_bg_running(), "the next allocation did not start the purger");
  ta_free(m);
  atomic_store(&churning, 0);
  pthread_join(t, NULL);
  cr_assert(atomic_load(&small_mail_ok), "a small block was lost or moved off the list");
}

/* An allocation that notes a due time from none, with the purger stopped and two owners,
 * starts it on its way out: the allocating thread may go idle for good right after, and the
 * other thread only free. Here the second thread takes its arena with nothing due (no start),
 * frees this thread's small blocks remotely and waits; this thread's next allocation takes
 * them in, which empties their runs (a due time where none was), and goes idle: the runs'
 * pages go back with no further call. */
enum { REMOTE_BLOCKS = 4096, REMOTE_SIZE = 256 };
static void *remote_blocks[REMOTE_BLOCKS];
static void *claim_free_and_wait(void *arg) {
  _Atomic int *step = arg;
  ta_free(ta_malloc(16));
  atomic_store(step, 1);
  wait_for_step(step, 2);
  for (int i = 0; i < REMOTE_BLOCKS; i++)
    ta_free(remote_blocks[i]);
  atomic_store(step, 3);
  wait_for_step(step, 4);
  return NULL;
}

static size_t runs_resident(void) {
  size_t sum = 0;
  uintptr_t last = 0;
  for (int i = 0; i < REMOTE_BLOCKS; i++) {
    uintptr_t run = (uintptr_t)remote_blocks[i] & ~(TA_RUN_SIZE - 1);
    if (run == last) continue;
    sum += ta_os_resident((void *)run, TA_RUN_SIZE);
    last = run;
  }
  return sum;
}

Test(background, an_allocation_that_notes_from_none_starts_the_purger_on_its_way_out,
     .timeout = 40) {
  ta_bg_enable(true);
  ta_decay_ms = 50;
  for (int i = 0; i < REMOTE_BLOCKS; i++) {
    remote_blocks[i] = ta_malloc(REMOTE_SIZE);
    memset(remote_blocks[i], 0x44, REMOTE_SIZE);
  }
  static _Atomic int step;
  pthread_t t;
  pthread_create(&t, NULL, claim_free_and_wait, (void *)&step);
  wait_for_step(&step, 1);
  cr_assert_not(ta_bg_running(), "nothing was due: the second owner's arena started nothing");
  atomic_store(&step, 2);
  wait_for_step(&step, 3);
  cr_assert_not(ta_bg_running(), "remote frees of small blocks note nothing");
  cr_assert_not(atomic_load(&ta_bg_wanted.v), "nothing asked for the purger yet");
  size_t before = runs_resident();
  void *q = ta_malloc(48); /* a class not used yet: its slow path takes the frees in */
  cr_assert_neq(atomic_load(&ta_arenas_due), 0, "taking the frees in noted the emptied runs");
  cr_assert(ta_bg_running(), "the allocation that noted from none did not start the purger");
  size_t after = before;
  for (int i = 0; i < 250 && after > before / 4; i++) {
    nap_ms(20);
    after = runs_resident();
  }
  atomic_store(&step, 4);
  pthread_join(t, NULL);
  ta_free(q);
  cr_assert_leq(after, before / 4, "%zu of the emptied runs' %zu resident bytes still there", after,
                before);
}

/* A realloc that moves a block frees the old one after its allocation: what that free notes
 * from none starts the purger before the realloc returns. Here a span grows into the medium
 * heap (a span never grows in place), and its free notes the spans' due time. */
Test(background, a_moving_realloc_starts_the_purger_its_free_asked_for, .timeout = 40) {
  ta_conf_span_min_kb = 16;
  ta_span_threads = 0; /* spans from the first thread on */
  ta_bg_enable(true);
  ta_decay_ms = 50;
  ta_free(ta_malloc(16)); /* initialised: ta_span_min is set */
  char *p = ta_malloc(ta_span_min);
  cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_SPAN, "a span");
  memset(p, 7, ta_span_min);
  static _Atomic int step;
  pthread_t t;
  pthread_create(&t, NULL, take_an_arena_and_wait, (void *)&step);
  wait_for_step(&step, 1);
  nothing_due_nor_asked();
  cr_assert_not(ta_bg_running(), "nothing was due: the second owner's arena started nothing");
  uint64_t rounds = ta_bg_rounds();
  p = ta_realloc(p, ta_span_min + 1);
  cr_assert(ta_bg_running(), "the realloc returned without starting the purger");
  cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_MEDIUM, "the span moved to the medium heap");
  /* (The purger may have given the span back already, and cleared the due time.) */
  cr_assert(atomic_load(&ta_span_due) != 0 || rounds_pass_within(rounds, 10000),
            "the old span's free noted no due time");
  atomic_store(&step, 2);
  pthread_join(t, NULL);
  ta_free(p);
}

/* Two owners (this thread and one waiting), the purger stopped, nothing due and nothing
 * asked for; spans from the first thread on, of 4 pages and more. */
static void two_owners_nothing_due(pthread_t *t, _Atomic int *step) {
  ta_conf_span_min_kb = 16;
  ta_span_threads = 0;
  ta_bg_enable(true);
  ta_decay_ms = 50;
  ta_free(ta_malloc(16)); /* initialised: ta_span_min is set */
  nothing_due();          /* so that the second thread's claim starts nothing */
  pthread_create(t, NULL, take_an_arena_and_wait, (void *)step);
  wait_for_step(step, 1);
  cr_assert_not(ta_bg_running(), "nothing was due: the claim started the purger");
  nothing_due_nor_asked();
}

/* A round of chores on the way to a span or a cached medium block takes in what another
 * thread freed into this one's arena (alloc.c, chores_sometimes), which here empties runs and
 * notes a due time from none: the malloc starts the purger before it returns. */
static void chores_note_from_none_then(size_t size, unsigned kind) {
  ta_span_threads = 0;
  ta_bg_enable(true);
  ta_decay_ms = 50;
  ta_free(ta_malloc(16));            /* initialised: ta_span_min is set */
  if (size == 0) size = ta_span_min; /* the smallest span, whatever the page size */
  for (int i = 0; i < REMOTE_BLOCKS; i++)
    remote_blocks[i] = ta_malloc(REMOTE_SIZE);
  void *cached = NULL;
  if (kind == TA_MAP_MEDIUM) { /* into the cache, last (its clock noted: cleared below) */
    cached = ta_malloc(size);
    ta_free(cached);
  }
  nothing_due(); /* so that the second thread's claim starts nothing */
  static _Atomic int step;
  pthread_t t;
  pthread_create(&t, NULL, claim_free_and_wait, (void *)&step);
  wait_for_step(&step, 1);
  atomic_store(&step, 2);
  wait_for_step(&step, 3);
  cr_assert_not(ta_bg_running(), "nothing was due: the claim and the remote frees started it");
  nothing_due_nor_asked();
  ta_tl_arena->chores_skip = 0; /* this call's round is out */
  if (kind == TA_MAP_MEDIUM)
    cr_assert_neq(TA_LOAD(ta_tl_arena->mcache_bytes), 0, "the block left the cache");
  uint64_t rounds = ta_bg_rounds();
  void *p = ta_malloc(size);
  cr_assert_eq(ta_map_get((uintptr_t)p), kind, "not the kind of block the test is about");
  if (kind == TA_MAP_MEDIUM) cr_assert_eq(p, cached, "the malloc did not take the cached block");
  /* (The purger may have purged the emptied runs already, and cleared the due time.) */
  cr_assert(atomic_load(&ta_arenas_due) != 0 || rounds_pass_within(rounds, 10000),
            "the round took nothing in");
  cr_assert(ta_bg_running(), "the malloc returned without starting the purger");
  atomic_store(&step, 4);
  pthread_join(t, NULL);
  ta_free(p);
}

Test(background, a_spans_round_of_chores_that_notes_starts_the_purger, .timeout = 40) {
  ta_conf_span_min_kb = 16;
  chores_note_from_none_then(0, TA_MAP_SPAN);
}

Test(background, a_cached_blocks_round_of_chores_that_notes_starts_the_purger, .timeout = 40) {
  ta_conf_span_min_kb = 128; /* 20000 bytes: a medium block, from the cache */
  chores_note_from_none_then(20000, TA_MAP_MEDIUM);
}

/* A block shrunk in place frees its end, which notes a due time from none: realloc and
 * xallocx start the purger before they return. A span's last pages note the spans' due time;
 * a medium block's tail, freed into the arena, the arenas'. */
enum shrink { SPAN_BY_REALLOC, SPAN_BY_XALLOCX, MEDIUM_BY_XALLOCX };
static void a_shrink_in_place_starts_the_purger(enum shrink how) {
  static _Atomic int step;
  atomic_store(&step, 0);
  pthread_t t;
  two_owners_nothing_due(&t, &step);
  size_t n = 8 * ta_span_min < ta_span_max ? 8 * ta_span_min : ta_span_max, to = ta_span_min;
  uint8_t kind = TA_MAP_SPAN;
  _Atomic uint64_t *due = &ta_span_due;
  if (how == MEDIUM_BY_XALLOCX) {
    TA_STORE(ta_span_min, SIZE_MAX); /* no spans now (no thread claims an arena again here) */
    n = TA_MEDIUM_MAX / 2, to = n / 4, kind = TA_MAP_MEDIUM, due = &ta_arenas_due;
  }
  char *p = ta_malloc(n);
  cr_assert_eq(ta_map_get((uintptr_t)p), kind, "a block of kind %u", kind);
  memset(p, 9, n);
  cr_assert_not(ta_bg_running(), "the block's malloc started the purger");
  nothing_due();
  uint64_t rounds = ta_bg_rounds();
  if (how == SPAN_BY_REALLOC)
    cr_assert_eq(ta_realloc(p, to), p, "realloc moved the block");
  else
    cr_assert_lt(ta_xallocx(p, to, 0, 0), n, "xallocx did not shrink the block");
  cr_assert(ta_bg_running(), "the shrink returned without starting the purger");
  cr_assert(atomic_load(due) != 0 || rounds_pass_within(rounds, 10000),
            "the shrink's freed end noted no due time");
  atomic_store(&step, 2);
  pthread_join(t, NULL);
  ta_free(p);
}

Test(background, a_realloc_that_shrinks_a_span_in_place_starts_the_purger, .timeout = 40) {
  a_shrink_in_place_starts_the_purger(SPAN_BY_REALLOC);
}

Test(background, an_xallocx_that_shrinks_a_span_starts_the_purger, .timeout = 40) {
  a_shrink_in_place_starts_the_purger(SPAN_BY_XALLOCX);
}

Test(background, an_xallocx_that_shrinks_a_medium_block_starts_the_purger, .timeout = 40) {
  a_shrink_in_place_starts_the_purger(MEDIUM_BY_XALLOCX);
}

/* A fork child does not inherit the parent's request for the purger: it asks anew. */
Test(background, a_fork_child_clears_the_parents_request, .timeout = 30) {
  ta_bg_enable(false); /* nothing starts it: the request stays in the parent */
  exit_and_free_remotely();
  nothing_due();
  ta_purge_note_global(&ta_arenas_due, ta_os_now_ms() + 600000);
  cr_assert(atomic_load(&ta_bg_wanted.v), "a due time noted from none asks for the purger");
  pid_t pid = fork();
  if (pid == 0) _exit(atomic_load(&ta_bg_wanted.v) ? 1 : 0);
  int st;
  waitpid(pid, &st, 0);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child kept the request (status %d)", st);
}

/* The purger stopped (one thread left), and a span freed then leaves a due time behind (one
 * thread: no purger is started for spans): a thread that comes to own an arena starts it
 * again, and the span's pages go back with no call of the program's. */
Test(background, a_thread_taking_an_arena_starts_a_purger_that_left_a_due_time_behind,
     .timeout = 40) {
  ta_conf_span_min_kb = 16;
  ta_span_threads = 0; /* spans from the first thread on */
  ta_bg_enable(true);
  ta_decay_ms = 50;
  cr_assert(exit_leaving_free_memory_starts_purger());
  cr_assert(purger_stops_within(10000),
            "with one thread left and the exited one's arena purged, it did not stop");
  size_t n = 16 * ta_span_min < ta_span_max ? 16 * ta_span_min : ta_span_max;
  char *s = ta_malloc(n);
  cr_assert_eq(ta_map_get((uintptr_t)s), TA_MAP_SPAN, "a span");
  memset(s, 0x5a, n);
  ta_free(s);
  cr_assert_neq(atomic_load(&ta_span_due), 0, "the span's free noted its due time");
  cr_assert_not(ta_bg_running(), "one thread: no purger for spans");
  /* The note from none asked for it; this thread's next allocation, with one owner, starts
   * nothing and clears the request (so that the claim, not the request, is what starts it). */
  ta_bg_maybe_start(true);
  cr_assert_not(atomic_load(&ta_bg_wanted.v),
                "a request is pending: the claim is not what starts it");
  static _Atomic int step;
  pthread_t t;
  pthread_create(&t, NULL, take_an_arena_and_wait, (void *)&step);
  wait_for_step(&step, 1);
  cr_assert(ta_bg_running(), "the second thread's arena did not start the purger");
  size_t resident = n;
  for (int i = 0; i < 250 && resident > n / 4; i++) {
    nap_ms(20);
    resident = ta_os_resident(s, n);
  }
  atomic_store(&step, 2);
  pthread_join(t, NULL);
  cr_assert_leq(resident, n / 4, "%zu of the free span's %zu bytes still resident", resident, n);
}

/* A block pushed after the remote lists were taken, and counted before the taker's
 * subtraction, keeps the count above none; its free saw blocks waiting and noted no visit, so
 * the taker notes it. Forced here: a block of this thread's is freed remotely (a visit is
 * noted), the purger's exchange clears the visit, the racing free's count comes, and the
 * purger's take finds one block of the two counted. */
static void *free_it(void *p) {
  ta_free(p);
  return NULL;
}

Test(background, a_take_that_leaves_blocks_counted_notes_a_visit, .timeout = 30) {
  ta_decay_ms = 50;
  void *keep = ta_malloc(20000), *p = ta_malloc(20000);
  ta_arena_t *a = ta_tl_arena;
  pthread_t t;
  pthread_create(&t, NULL, free_it, p);
  pthread_join(t, NULL);
  cr_assert_eq(atomic_load(&a->remote_medium), 1, "the remote free was counted");
  cr_assert_neq(atomic_load(&ta_arenas_due), 0, "the first of a batch noted a visit");
  atomic_store(&ta_arenas_due, 0);        /* the purger's round took the due time */
  atomic_fetch_add(&a->remote_medium, 1); /* a free counts, and will push after the take */
  ta_slow_enter(a);
  /* (Free memory older than the block's is there: its free into the heap notes nothing.) */
  a->medium_dirty_since = ta_os_now_ms() - 1;
  ta_remote_collect_medium(a);
  ta_slow_leave(a);
  cr_assert_eq(atomic_load(&a->remote_medium), 1, "one block is still counted");
  uint64_t due = atomic_load(&ta_arenas_due);
  cr_assert_neq(due, 0, "the take left a block counted and noted no visit");
  cr_assert_leq(due, ta_os_now_ms() + 50, "not within the decay time: in %lld ms",
                (long long)due - (long long)ta_os_now_ms());
  atomic_fetch_sub(&a->remote_medium, 1);
  ta_free(keep);
}

/* ---- fork while an arena's lock is held ---------------------------------------------- */

static _Atomic int worker_go;

static void *alloc_then_wait(void *arg) {
  void **out = arg;
  out[0] = ta_malloc(20000);
  ta_free(out[0]);
  atomic_store((_Atomic(ta_arena_t *) *)&out[1], ta_tl_arena);
  while (!atomic_load(&worker_go)) nap_ms(1);
  return NULL;
}

/* The purger holds an arena's lock, its owner exits meanwhile (the arena turns FREE under
 * the lock), and the process forks: in the child the lock would never be released, so the
 * arena must be a zombie there, never claimed (an orphan purge would wait for ever). */
Test(background, arena_given_up_under_the_purgers_lock_is_a_zombie_in_a_fork_child,
     .timeout = 30) {
  void *slots[2] = {NULL, NULL};
  pthread_t t;
  pthread_create(&t, NULL, alloc_then_wait, slots);
  while (atomic_load((_Atomic(ta_arena_t *) *)&slots[1]) == NULL) nap_ms(1);
  ta_arena_t *a = atomic_load((_Atomic(ta_arena_t *) *)&slots[1]);
  cr_assert(ta_slow_try_enter(a), "this thread stands for the purger");
  atomic_store(&worker_go, 1);
  pthread_join(t, NULL);
  cr_assert_eq(atomic_load(&a->state), ARENA_FREE, "given up while the lock was held");
  pid_t pid = fork();
  if (pid == 0) {
    alarm(10);
    if (atomic_load(&a->state) != ARENA_ZOMBIE) _exit(2);
    ta_purge_orphans(ta_os_now_ms(), true); /* must not wait for the lock */
    void *p = ta_malloc(30000);               /* nor must a new arena's claim */
    ta_free(p);
    _exit(0);
  }
  ta_slow_leave(a);
  int st;
  waitpid(pid, &st, 0);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
}

/* The purger holds an owner's remote list (taken with an exchange, to take the medium
 * blocks off) when the owner frees, a second time, a block that is on it: the owner's
 * verdict waits for the list to come back, finds the block freed, and reports it — rather
 * than seeing an empty list and putting the block on its run's list a second time. */
static _Atomic int second_free_go;
static void *free_twice_after_go(void *arg) {
  void **slots = arg;
  slots[0] = ta_malloc(48);
  atomic_store((_Atomic(ta_arena_t *) *)&slots[1], ta_tl_arena);
  while (!atomic_load(&second_free_go)) nap_ms(1);
  ta_free(slots[0]); /* the second free: must abort */
  atomic_store((_Atomic int *)&slots[2], 1);
  return NULL;
}

Test(background, double_free_while_the_purger_holds_the_remote_list_aborts,
     .signal = SIGABRT, .timeout = 30) {
  static void *slots[3];
  pthread_t t;
  pthread_create(&t, NULL, free_twice_after_go, slots);
  while (atomic_load((_Atomic(ta_arena_t *) *)&slots[1]) == NULL) nap_ms(1);
  ta_arena_t *owner = slots[1];
  ta_free(slots[0]); /* first free, remote: into this thread's chain, */
  ta_remote_flush(); /* then onto the owner's list */
  cr_assert(ta_slow_try_enter(owner), "this thread stands for the purger");
  ta_block_t *held[TA_REMOTE_LISTS], *found = NULL;
  for (unsigned i = 0; i < TA_REMOTE_LISTS; i++)
    if ((held[i] = atomic_exchange(&owner->remote[i], NULL)) != NULL) found = held[i];
  cr_assert_eq((void *)found, slots[0]);
  atomic_store(&second_free_go, 1);
  nap_ms(200); /* the owner is in its verdict now, waiting for the lock */
  cr_assert_eq(atomic_load((_Atomic int *)&slots[2]), 0, "the second free did not wait");
  for (unsigned i = 0; i < TA_REMOTE_LISTS; i++) /* as the purger puts the small blocks back */
    atomic_store(&owner->remote[i], held[i]);
  ta_slow_leave(owner);
  pthread_join(t, NULL); /* the owner aborts the process before this returns */
}

/* ---- running owners purge in their own time ------------------------------------------ */

static _Atomic int spin_state;        /* 1: spin, 2: block, 0: leave */
static _Atomic(char *) spin_hole;     /* the hole the thread left */

/* Leaves a free hole of 100 KiB between two blocks in use, then spins (runs, without a
 * call to the allocator) or blocks (sleeps) as told. */
static void *hole_then_spin_or_block(void *arg) {
  (void)arg;
  char *a = ta_malloc(100 << 10), *b = ta_malloc(100 << 10), *c = ta_malloc(20000);
  memset(b, 1, 100 << 10);
  ta_free(b);
  atomic_store(&spin_hole, b);
  int s;
  while ((s = atomic_load(&spin_state)) != 0)
    if (s == 2) nap_ms(5);
  ta_free(a);
  ta_free(c);
  return NULL;
}

static bool hole_given_back(const char *p) {
  const ta_mhdr_t *h = (const ta_mhdr_t *)((uintptr_t)p - sizeof(ta_mhdr_t));
  return (ta_mh_peek(h) & TA_M_DECOMMITTED) != 0;
}

static char *start_hole_thread(pthread_t *t, int state) {
  atomic_store(&spin_hole, NULL);
  atomic_store(&spin_state, state);
  pthread_create(t, NULL, hole_then_spin_or_block, NULL);
  char *hole;
  while ((hole = atomic_load(&spin_hole)) == NULL) nap_ms(1);
  return hole;
}

Test(background, a_thread_that_runs_and_one_that_sleeps_are_told_apart) {
  cr_assert(ta_os_thread_runs(ta_os_gettid()), "this thread runs");
  cr_assert_geq(ta_os_runnable(), 1, "at least this thread runs");
  pthread_t t;
  char *hole = start_hole_thread(&t, 2);
  ta_arena_t *a = ta_chunk_of(hole)->owner;
  bool asleep = false;
  for (int i = 0; i < 200 && !asleep; i++) {
    nap_ms(5);
    asleep = !ta_os_thread_runs(atomic_load(&a->owner_tid));
  }
  atomic_store(&spin_state, 0);
  pthread_join(t, NULL);
  cr_assert(asleep, "a thread that sleeps was never seen blocked");
  cr_assert_not(ta_os_thread_runs(0x3fffffff), "no such thread: not running");
}

/* The background thread gives a running owner's free memory back by the owner's own age
 * (here forced to 40 decay times), and a blocked owner's by the wall time. */
Test(background, a_running_owners_memory_goes_by_its_own_time, .timeout = 30) {
  if (ta_os_ncpu() < 2) cr_skip_test("a spinning thread and the purger need two CPUs");
  ta_bg_enable(true);
  ta_decay_ms = 50;
  atomic_store(&ta_owner_scale_force, 40);
  keeper_start();
  exit_and_free_remotely();
  cr_assert(ta_bg_running());
  pthread_t t;
  char *hole = start_hole_thread(&t, 1);
  uint64_t rounds = ta_bg_rounds();
  bool ran = rounds_pass_within(rounds, 5000);
  /* Past two demand windows: what the owner drew holds nothing back any more (dirty.c). */
  nap_ms(2 * (long)ta_demand_window() + 6 * (long)ta_decay_ms);
  bool kept = !hole_given_back(hole);
  atomic_store(&spin_state, 2); /* now blocked: its memory goes back by the wall time */
  bool gone = false;
  for (int i = 0; i < 500 && !gone; i++) {
    nap_ms(10);
    gone = hole_given_back(hole);
  }
  atomic_store(&spin_state, 0);
  pthread_join(t, NULL);
  keeper_stop();
  cr_assert(ran, "the purger made no round");
  cr_assert(kept, "the running owner's hole went back before its own time");
  cr_assert(gone, "the blocked owner's hole did not go back in 5 s");
}
