/*
 * Unit tests: the life of arenas around thread exit and fork.
 *
 *   - without a thread-exit hook (pthread_key_create failed), arenas of exited threads are
 *     still taken over, never those of live threads;
 *   - the fork child's repair runs before the child handlers the program registered;
 *   - arenas the child gives up (their threads do not exist in it) are purged after decay;
 *   - frees into a zombie arena (owner caught inside the allocator by the fork) corrupt
 *     nothing, are counted, and do not pile up;
 *   - the forking thread takes its own arena back once the call the fork interrupted ends;
 *   - a pop the fork cut in two, in an arena the child takes over, is not reported as a
 *     corrupted list; a list cut by a write after free in another run of that arena is;
 *   - a signal handler's malloc or fork between a thread's first claim and its store of the
 *     arena leaves each thread one arena it owns, and none claimed for good.
 *
 * Every test that forks checks the child's exit status; each exit code names one check.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "support/page_in_force.h"
#include "tamalloc.h"
#include "tatest.h"

/* ---- helpers ------------------------------------------------------------------------- */

/* A thread that does some work, then waits until the test lets it go. */
struct holder {
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int ready, release;
  ta_arena_t *arena;
  char *run; /* a run the thread filled and emptied */
};

static void holder_wait(struct holder *h) {
  pthread_mutex_lock(&h->lock);
  h->ready = 1;
  pthread_cond_broadcast(&h->cond);
  while (!h->release) pthread_cond_wait(&h->cond, &h->lock);
  pthread_mutex_unlock(&h->lock);
}

static void holder_start(struct holder *h, void *(*fn)(void *)) {
  memset(h, 0, sizeof *h);
  pthread_mutex_init(&h->lock, NULL);
  pthread_cond_init(&h->cond, NULL);
  cr_assert_eq(pthread_create(&h->thread, NULL, fn, h), 0);
  pthread_mutex_lock(&h->lock);
  while (!h->ready) pthread_cond_wait(&h->cond, &h->lock);
  pthread_mutex_unlock(&h->lock);
}

static void holder_finish(struct holder *h) {
  pthread_mutex_lock(&h->lock);
  h->release = 1;
  pthread_cond_broadcast(&h->cond);
  pthread_mutex_unlock(&h->lock);
  pthread_join(h->thread, NULL);
}

static void expect_child(pid_t pid, const char *what) {
  cr_assert(pid >= 0, "fork failed: %s", strerror(errno));
  int st = tt_wait_timeout(pid, 60);
  char how[128];
  cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: the child %s", what,
            tt_describe_status(st, how, sizeof how));
}

static void count_arena(ta_arena_t *a, void *arg) {
  (void)a;
  (*(size_t *)arg)++;
}

static size_t arena_count(void) {
  size_t n = 0;
  ta_arena_foreach(count_arena, &n);
  return n;
}

/* Allocates, records its arena and the block, exits. */
static void *alloc_and_exit(void *arg) {
  void **out = arg;
  out[0] = ta_malloc(128);
  out[1] = ta_tl_arena;
  return NULL;
}

static ta_arena_t *thread_arena(void **out) {
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, alloc_and_exit, out), 0);
  pthread_join(t, NULL);
  return out[1];
}

/* ---- no thread-exit hook -------------------------------------------------------------- */

Test(lifecycle, arenas_come_back_without_a_thread_exit_hook) {
  ta_os_fail(TA_OS_KEY, 0, 1000000); /* the key can never be created */
  ta_free(ta_malloc(1));
  for (int i = 0; i < 300; i++) {
    void *out[2];
    thread_arena(out);
    ta_free(out[0]);
  }
  ta_os_fail(0, 0, 0);
  size_t n = arena_count();
  cr_assert_leq(n, 3, "%zu arenas for one live thread at a time", n);
}

Test(lifecycle, arena_of_a_thread_gone_without_hook_is_adopted_with_its_blocks) {
  ta_os_fail(TA_OS_KEY, 0, 1000000);
  void *out[2], *out2[2];
  ta_arena_t *dead = thread_arena(out);
  cr_assert_eq(atomic_load(&dead->state), ARENA_CLAIMED, "nobody told it its thread exited");
  ta_free(out[0]); /* a remote free to the arena of a thread that is gone */
  ta_arena_t *next = thread_arena(out2);
  ta_os_fail(0, 0, 0);
  cr_assert_eq(next, dead, "taken over, not a new arena");
  cr_assert_eq(out2[0], out[0], "and the block freed into it reused");
  ta_free(out2[0]);
}

static void *allocate_and_hold(void *arg) {
  struct holder *h = arg;
  ta_free(ta_malloc(64));
  h->arena = ta_tl_arena;
  holder_wait(h);
  ta_free(ta_malloc(64)); /* still its own */
  h->arena = ta_tl_arena;
  return NULL;
}

Test(lifecycle, arena_of_a_live_thread_without_hook_is_never_taken) {
  ta_os_fail(TA_OS_KEY, 0, 1000000);
  struct holder h;
  holder_start(&h, allocate_and_hold);
  ta_arena_t *held = h.arena;
  for (int i = 0; i < 50; i++) {
    void *out[2];
    cr_assert_neq(thread_arena(out), held, "a live thread's arena was handed out");
    ta_free(out[0]);
  }
  holder_finish(&h);
  cr_assert_eq(h.arena, held);
  void *out[2];
  ta_arena_t *after = thread_arena(out);
  ta_free(out[0]);
  ta_os_fail(0, 0, 0);
  size_t n = arena_count();
  cr_assert_leq(n, 3, "%zu arenas (%p after the holder exited)", n, (void *)after);
}

Test(lifecycle, key_creation_is_tried_again_by_the_next_thread) {
  ta_os_fail(TA_OS_KEY, 0, 1); /* only the first attempt fails */
  ta_free(ta_malloc(1));
  void *out[2];
  ta_arena_t *a = thread_arena(out);
  cr_assert_eq(atomic_load(&a->state), ARENA_FREE, "given back by the exit hook");
  ta_free(out[0]);
}

Test(lifecycle, fork_child_takes_over_arenas_of_its_own_exited_threads) {
  ta_os_fail(TA_OS_KEY, 0, 1000000);
  ta_free(ta_malloc(1));
  ta_arena_t *mine = ta_tl_arena;
  pid_t pid = fork();
  if (pid == 0) {
    alarm(30);
    void *out[2], *out2[2];
    ta_arena_t *x = thread_arena(out);
    if (x == mine) _exit(10); /* the forking thread lives on in the child */
    ta_free(out[0]);
    ta_arena_t *y = thread_arena(out2);
    if (y != x) _exit(11); /* x's thread is gone: its arena is taken over */
    if (out2[0] != out[0]) _exit(12);
    if (ta_tl_arena != mine) _exit(13);
    _exit(0);
  }
  expect_child(pid, "threads of a fork child without exit hook");
  ta_os_fail(0, 0, 0);
}

/* A thread of the parent was inside ta_init when the process forked (a worker's first call
 * while the main thread forks, as fork_api's nested_forks did): the child has not that
 * thread, and its handler lets the claim go. Before, the child's first call waited for ever. */
Test(lifecycle, a_fork_child_finishes_the_start_its_parent_had_begun, .timeout = 30) {
  cr_assert(!__atomic_load_n(&ta_initialized, __ATOMIC_ACQUIRE),
            "the allocator has not started in this test process yet");
  atomic_store(&ta_init_claimed, 1); /* as a thread starting the allocator leaves it */
  pid_t pid = fork();
  if (pid == 0) {
    alarm(10);
    char *p = ta_malloc(100);
    if (p == NULL || !__atomic_load_n(&ta_initialized, __ATOMIC_ACQUIRE)) _exit(1);
    memset(p, 1, 100);
    ta_free(p);
    _exit(0);
  }
  atomic_store(&ta_init_claimed, 0);
  expect_child(pid, "a fork child of a process starting the allocator");
}

/* ---- the fork child's repair comes first ---------------------------------------------- */

static ta_arena_t *watched;
static volatile int state_in_child_handler = -1;
static void program_child_handler(void) {
  if (watched) state_in_child_handler = atomic_load(&watched->state);
}

Test(lifecycle, fork_repair_runs_before_the_programs_child_handlers) {
  /* Registered before this process allocates anything: a program's atfork handler. */
  pthread_atfork(NULL, NULL, program_child_handler);
  struct holder h;
  holder_start(&h, allocate_and_hold);
  watched = h.arena;
  pid_t pid = fork();
  if (pid == 0) _exit(state_in_child_handler == ARENA_FREE ? 0 : 10 + state_in_child_handler);
  expect_child(pid, "the program's child handler saw the holder's arena unrepaired "
                    "(11: still CLAIMED)");
  holder_finish(&h);
}

/* ---- arenas given up by the fork child are purged ------------------------------------- */

static void *fill_and_empty_runs(void *arg) {
  struct holder *h = arg;
  enum { N = 64 * 6 }; /* six runs of 1 KiB blocks */
  static void *b[N];
  for (int i = 0; i < N; i++) {
    b[i] = ta_malloc(1024);
    memset(b[i], 1, 1024);
  }
  h->run = ta_run_base(ta_run_of(b[0])); /* full, then retired when its last block is freed */
  for (int i = 0; i < N; i++) ta_free(b[i]);
  h->arena = ta_tl_arena;
  holder_wait(h);
  return NULL;
}

Test(lifecycle, fork_child_purges_arenas_of_threads_it_does_not_have) {
  ta_decay_ms = 50;
  ta_free(ta_malloc(16)); /* the forking thread has an arena: it adopts nothing in the child */
  struct holder h;
  holder_start(&h, fill_and_empty_runs);
  pid_t pid = fork();
  if (pid == 0) {
    alarm(30);
    if (atomic_load(&h.arena->state) != ARENA_FREE) _exit(10);
    if (ta_os_resident(h.run, TA_RUN_SIZE) == 0) _exit(11); /* still resident at the fork */
    /* Slow paths, each of which may find ownerless arenas due for purging. */
    for (int i = 0; i < 400 && ta_os_resident(h.run, TA_RUN_SIZE) != 0; i++) {
      struct timespec ts = {0, 10 * 1000 * 1000};
      nanosleep(&ts, NULL);
      ta_free(ta_malloc(20000 + (size_t)i * 16));
    }
    if (ta_tl_arena == h.arena) _exit(13);
    _exit(ta_os_resident(h.run, TA_RUN_SIZE) == 0 ? 0 : 12);
  }
  expect_child(pid, "the free memory of a thread absent in the child (12: never purged)");
  holder_finish(&h);
}

/* ---- zombies: arenas whose owner the fork caught inside the allocator ------------------ */

enum { ZSMALL = 3000, ZMEDIUM = 40 };
static void *zblocks[ZSMALL + ZMEDIUM];

static void *allocate_then_stop_mid_slow_path(void *arg) {
  struct holder *h = arg;
  for (int i = 0; i < ZSMALL; i++) zblocks[i] = ta_malloc(48);
  for (int i = 0; i < ZMEDIUM; i++) zblocks[ZSMALL + i] = ta_malloc(20000);
  h->arena = ta_tl_arena;
  ta_slow_enter(h->arena); /* as if the fork came while it rearranged its lists */
  holder_wait(h);
  ta_slow_leave(h->arena);
  for (int i = 0; i < ZSMALL + ZMEDIUM; i++) ta_free(zblocks[i]);
  return NULL;
}

Test(lifecycle, frees_into_a_zombie_are_safe_counted_and_do_not_pile_up) {
  tt_no_core();
  struct holder h;
  holder_start(&h, allocate_then_stop_mid_slow_path);
  pid_t pid = fork();
  if (pid == 0) {
    alarm(30);
    ta_arena_t *z = h.arena;
    if (atomic_load(&z->state) != ARENA_ZOMBIE) _exit(10);
    static ta_arena_t before;
    memcpy(&before, z, sizeof before);
    size_t usable = 0;
    for (int i = 0; i < ZSMALL + ZMEDIUM; i++) {
      usable += ta_malloc_usable_size(zblocks[i]);
      ta_free(zblocks[i]);
    }
    /* Nothing of the zombie is touched but its remote list. */
    if (memcmp(&before, z, offsetof(ta_arena_t, remote)) != 0) _exit(11);
    /* Nothing freed into it is handed out again. */
    for (int i = 0; i < 2 * ZSMALL; i++) {
      void *q = ta_malloc(48);
      if (ta_run_of(q)->owner == z) _exit(12);
    }
    for (int i = 0; i < 2 * ZMEDIUM; i++) {
      void *q = ta_malloc(20000);
      if (ta_chunk_of(q)->owner == z) _exit(12);
    }
    /* The remote list is emptied and what it held counted. */
    ta_malloc_trim(0);
    if (ta_remote_waiting(z, memory_order_relaxed)) _exit(13);
    if (atomic_load(&ta_zombie_frees) != ZSMALL + ZMEDIUM) _exit(14);
    if (atomic_load(&ta_zombie_bytes) != usable) _exit(15);
    /* And shown in the text statistics. */
    int fd = memfd_create("stats", 0);
    if (fd < 0 || ta_stats_print(fd, 0) != 0) _exit(18);
    static char report[1 << 20];
    ssize_t len = pread(fd, report, sizeof report - 1, 0);
    char want[128];
    snprintf(want, sizeof want, "freed into zombie arenas, never reused: %d blocks, %zu B",
             ZSMALL + ZMEDIUM, usable);
    if (len <= 0 || strstr(report, want) == NULL) _exit(19);
    if (memcmp(&before, z, offsetof(ta_arena_t, remote)) != 0) _exit(16);
    /* A second free of one of those blocks is still caught. */
    pid_t g = fork();
    if (g == 0) {
      ta_free(zblocks[7]);
      _exit(0);
    }
    int st;
    waitpid(g, &st, 0);
    if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGABRT) _exit(17);
    _exit(0);
  }
  expect_child(pid, "frees into a zombie arena");
  holder_finish(&h);
}

Test(lifecycle, forking_thread_takes_its_arena_back_once_the_interrupted_call_ends) {
  void *p = ta_malloc(64);
  ta_arena_t *a = ta_tl_arena;
  ta_slow_enter(a); /* as if a signal handler forked inside a slow path */
  pid_t pid = fork();
  if (pid == 0) {
    alarm(30);
    int st = atomic_load(&a->state);
    if (ta_tl_arena != &ta_sentinel_arena || st == ARENA_CLAIMED || st == ARENA_FREE) _exit(10);
    ta_free(p); /* meanwhile freed into it */
    ta_slow_leave(a); /* the handler returned, the interrupted call ran to its end */
    void *q = ta_malloc(64);
    if (ta_tl_arena != a || atomic_load(&a->state) != ARENA_CLAIMED) _exit(11);
    if (q != p) _exit(12);
    ta_free(q);
    _exit(0);
  }
  ta_slow_leave(a);
  expect_child(pid, "the forking thread's own arena after the interrupted call");
  ta_free(p);
}

/* A second fork inside a call, in a child whose thread already has an arena set aside: the
 * first stays set aside (its call may still end), the second is given up as a zombie. */
Test(lifecycle, second_interrupted_fork_keeps_the_first_arena_set_aside) {
  void *p = ta_malloc(64);
  ta_arena_t *a = ta_tl_arena;
  ta_slow_enter(a);
  pid_t pid = fork();
  if (pid == 0) {
    alarm(30);
    void *q = ta_malloc(64); /* another arena meanwhile */
    ta_arena_t *b = ta_tl_arena;
    if (b == a) _exit(10);
    ta_slow_enter(b); /* and a fork inside a call again */
    pid_t g = fork();
    if (g == 0) {
      if (atomic_load(&a->state) != ARENA_SUSPENDED) _exit(11);
      if (atomic_load(&b->state) != ARENA_ZOMBIE) _exit(12);
      ta_slow_leave(a); /* the first call ends */
      void *r = ta_malloc(64);
      if (ta_tl_arena != a) _exit(13);
      ta_free(r);
      _exit(0);
    }
    ta_slow_leave(b);
    int st;
    waitpid(g, &st, 0);
    ta_free(q);
    _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 20);
  }
  ta_slow_leave(a);
  expect_child(pid, "a second fork inside a call");
  ta_free(p);
}

/* ---- a fast path the fork cut in two ---------------------------------------------------- */

/* The fork may stop another thread between any two stores of a fast path. Between a pop's
 * store of the list head and its clearing of the block, the block has left the list but
 * keeps its free mark and its link; popping the list's last block, that link is the end.
 * The child adopts the arena, and the block is leaked (nobody holds it), but a scan of the
 * run's marks finds one marked block more than the list holds and nothing naming it: the
 * shape of a list cut in two by a write after free. The child has no such write; it must
 * not abort. (A preloaded fork test hit this once, on the `malloc` of a parent's helper.) */
enum { CUT_MAX = 8192 };
static void *cut_held[CUT_MAX];
static size_t cut_n;
static ta_block_t *cut_block;

static void *pop_cut_by_fork(void *arg) {
  struct holder *h = arg;
  ta_run_t *r = NULL;
  for (cut_n = 0; cut_n < CUT_MAX; cut_n++) {
    cut_held[cut_n] = ta_malloc(48);
    if (r == NULL) r = ta_run_of(cut_held[cut_n]);
    if (ta_run_of(cut_held[cut_n]) != r) break; /* not reached: stops one block short */
    if (r->free != NULL && ta_block_next(r->free) == NULL &&
        ta_run_index(r, r->limit) == ta_run_cap(r)) {
      cut_n++;
      break;
    }
    if (r->free == NULL && ta_run_index(r, r->limit) == ta_run_cap(r)) {
      /* The run's last carve threaded one block, which this malloc took (pages of 16 KiB):
       * given back, it is the list's one block, and the run is still the current one. */
      ta_free(cut_held[cut_n]);
      break;
    }
  }
  cut_block = r->free;
  r->free = NULL; /* the pop's first store: the fork comes before the block is cleared */
  h->arena = ta_tl_arena;
  h->run = (char *)r;
  holder_wait(h);
  r->free = cut_block; /* the parent's thread lives on: its pop never happened */
  for (size_t i = 0; i < cut_n; i++)
    ta_free(cut_held[i]);
  return NULL;
}

Test(lifecycle, fork_child_adopts_an_arena_whose_pop_the_fork_cut_in_two) {
  tt_no_core();
  struct holder h;
  holder_start(&h, pop_cut_by_fork);
  ta_run_t *r = (ta_run_t *)h.run;
  cr_assert(cut_block != NULL && ta_run_of(cut_held[0]) == r && ta_run_of(cut_block) == r,
            "the run's last block is the one cut off");
  cr_assert_eq(cut_n + 1, ta_run_cap(r), "every other block of the run is held");
  pid_t pid = fork();
  if (pid == 0) {
    alarm(30);
    ta_free(ta_malloc(16)); /* this thread has no arena yet: it adopts the one left free */
    if (ta_tl_arena != h.arena) _exit(10);
    for (size_t i = 1; i < cut_n; i++)
      ta_free(cut_held[i]); /* the run's top pages free */
    ta_malloc_trim(0);      /* the shrink finds the free blocks: by the scan, or by the walk */
    /* The run hands out every block but the one still held, each once. */
    static void *got[CUT_MAX];
    size_t n = ta_run_cap(r) - 1;
    for (size_t i = 0; i < n; i++) {
      got[i] = ta_malloc(48);
      if (got[i] == cut_held[0]) _exit(11);
      for (size_t j = 0; j < i; j++)
        if (got[j] == got[i]) _exit(12);
    }
    for (size_t i = 0; i < n; i++)
      ta_free(got[i]);
    ta_free(cut_held[0]);
    _exit(0);
  }
  expect_child(pid, "an arena whose owner's pop the fork cut in two");
  holder_finish(&h);
}

/* Only the runs current at the fork can hold a cut pop, and only they are spared the report:
 * in the arena the child took over, a run of its own whose list a write after free cut (a
 * link zeroed) is reported when its shrink scans it, with the pointer behind the cut. */
Test(lifecycle, a_fork_child_still_reports_a_cut_list_outside_the_runs_the_fork_cut) {
  tt_no_core();
  struct holder h;
  needs_pages_up_to(TA_RUN_SIZE / 2); /* a run of one page does not shrink */
  holder_start(&h, pop_cut_by_fork);
  ta_run_t *cut_run = (ta_run_t *)h.run;
  int err[2];
  cr_assert_eq(pipe(err), 0);
  pid_t pid = fork();
  if (pid == 0) {
    alarm(30);
    dup2(err[1], 2);
    ta_free(ta_malloc(16)); /* adopts the arena left free */
    if (ta_tl_arena != h.arena) _exit(10);
    if (!ta_run_pair(cut_run)->fork_cut) _exit(11); /* current at the fork: spared */
    /* Blocks of 64 bytes until the child holds a whole run of them: one it made. */
    enum { N = 3 * TA_RUN_SIZE / 64 };
    static void *got[N];
    ta_run_t *r = NULL;
    uint32_t held = 0;
    for (size_t i = 0; i < N && r == NULL; i++) {
      got[i] = ta_malloc(64);
      ta_run_t *q = ta_run_of(got[i]);
      held = (i > 0 && q == ta_run_of(got[i - 1])) ? held + 1 : 1;
      if (held == ta_run_cap(q)) r = q;
    }
    if (r == NULL) _exit(12);
    if (ta_run_pair(r)->fork_cut || r->limit != ta_run_cap(r) * r->bsize) _exit(13);
    char *base = ta_run_base(r);
    for (uint32_t k = 1; k < ta_run_cap(r); k++)
      ta_free(base + k * r->bsize); /* all but the lowest block */
    ta_block_t *victim = (ta_block_t *)(base + ta_run_cap(r) / 2 * r->bsize);
    victim->link = 0; /* a write after free: the list ends here */
    ta_malloc_trim(0);
    _exit(14); /* not reached: the shrink's scan reports the cut */
  }
  close(err[1]);
  cr_assert(pid >= 0, "fork failed: %s", strerror(errno));
  char line[512] = {0};
  size_t got = 0;
  for (ssize_t n;
       got + 1 < sizeof line && (n = read(err[0], line + got, sizeof line - 1 - got)) > 0;)
    got += (size_t)n;
  close(err[0]);
  int st = tt_wait_timeout(pid, 60);
  char how[128];
  cr_assert(st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT,
            "the cut went unreported: the child %s", tt_describe_status(st, how, sizeof how));
  cr_assert(strstr(line, "corrupted free list") != NULL, "the report: %s", line);
  holder_finish(&h);
}

/* ---- a signal handler during a thread's first claim ---------------------------------------- */

/* A thread's first allocation claims an arena, then makes it the thread's. A signal handler
 * that runs in between (ta_os_interrupt_claim raises it there) sees a thread without an arena:
 * its malloc claims one of its own, and its fork gives the claimed arena up in the child. Each
 * test runs its first claim in a thread of its own, after the main thread has an arena, so
 * that the claim maps a new arena, the newest on the list when the handler runs. */
static void (*_Atomic in_handler)(void); /* what the handler does */
static ta_arena_t *claimed_then;         /* the newest arena when the handler ran */
static void *handler_block;
static volatile pid_t handler_pid;

static void run_in_handler(int sig) {
  (void)sig;
  claimed_then = ta_arena_first();
  in_handler();
}
static void malloc_there(void) { handler_block = ta_malloc(48); }
static void fork_there(void) { handler_pid = fork(); }
static void fork_and_malloc_there(void) {
  if ((handler_pid = fork()) == 0) handler_block = ta_malloc(48);
}

static void count_claimed(ta_arena_t *a, void *arg) {
  if (atomic_load(&a->state) == ARENA_CLAIMED) (*(size_t *)arg)++;
}
static size_t claimed_count(void) {
  size_t n = 0;
  ta_arena_foreach(count_claimed, &n);
  return n;
}

struct first_claim {
  void *block;
  ta_arena_t *arena;
  size_t claimed; /* arenas CLAIMED right after the first malloc */
};

/* The thread's first malloc with the handler arriving after its claim; in a fork child made
 * by the handler, checks the child's arenas and exits with a code naming what failed. */
static void *first_claim_interrupted(void *arg) {
  struct first_claim *f = arg;
  ta_os_interrupt_claim(SIGUSR1);
  f->block = ta_malloc(48);
  f->arena = ta_tl_arena;
  f->claimed = claimed_count();
  if (handler_pid != 0) return NULL;
  alarm(30);
  ta_arena_t *a = f->arena;
  if (a == &ta_sentinel_arena) _exit(10);
  if (atomic_load(&a->state) != ARENA_CLAIMED) _exit(11); /* a FREE arena used as one's own */
  if (ta_run_of(f->block)->owner != a) _exit(12);
  if (handler_block != NULL && ta_run_of(handler_block)->owner != a) _exit(13);
  if (a != claimed_then) _exit(14); /* the arena the child gave up, claimed again */
  if (f->claimed != 1) _exit(15);   /* the main thread's is given up: it has no thread here */
  /* No thread is started here to see that it gets another arena: a ThreadSanitizer build
   * cannot start threads after a fork of a process that has several. */
  ta_free(f->block);
  if (handler_block) ta_free(handler_block);
  _exit(0);
}

static void first_claim_with(void (*what)(void), struct first_claim *f) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = run_in_handler;
  in_handler = what;
  claimed_then = NULL;
  handler_block = NULL;
  handler_pid = -1;
  cr_assert_eq(sigaction(SIGUSR1, &sa, NULL), 0);
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, first_claim_interrupted, f), 0);
  pthread_join(t, NULL);
  cr_assert_not_null(claimed_then, "the handler did not run");
}

/* The handler's arena is the thread's; the claim's goes back (before, it stayed CLAIMED for
 * good, with the handler's block in it, and the thread's exit gave back only the other). */
Test(lifecycle, a_handlers_malloc_during_a_first_claim_leaves_the_thread_one_arena) {
  ta_free(ta_malloc(1)); /* the main thread's arena */
  size_t before = claimed_count(), arenas = arena_count();
  struct first_claim f;
  first_claim_with(malloc_there, &f);
  cr_assert_not_null(handler_block);
  cr_assert_eq(ta_run_of(handler_block)->owner, f.arena,
               "the handler's block is in the arena the thread went on with");
  cr_assert_eq(ta_run_of(f.block)->owner, f.arena);
  cr_assert_neq(f.arena, claimed_then, "the handler's claim came second, and won");
  cr_assert_eq(f.claimed, before + 1, "%zu arenas claimed for one thread", f.claimed - before);
  cr_assert_eq(claimed_count(), before, "an arena stayed claimed after the thread's exit");
  cr_assert_eq(arena_count(), arenas + 2);
  cr_assert_eq(atomic_load(&claimed_then->state), ARENA_FREE, "kept for the next thread");
  ta_free(handler_block);
  ta_free(f.block);
}

/* The parent's part of a fork in the handler: the child checked its own (first_claim_interrupted).
 */
static void forked_first_claim(void (*what)(void), const char *name) {
  ta_free(ta_malloc(1)); /* the main thread's arena, and the fork handlers registered */
  struct first_claim f;
  first_claim_with(what, &f);
  expect_child(handler_pid, name);
  cr_assert_eq(f.arena, claimed_then);
  cr_assert_eq(ta_run_of(f.block)->owner, f.arena);
  ta_free(f.block);
}

/* A fork in the handler: the child gives the claimed arena up (its thread has none yet), and
 * the call it interrupted claims it again instead of using an arena the child calls FREE. */
Test(lifecycle, a_fork_in_a_handler_during_a_first_claim_leaves_the_child_an_arena_it_owns) {
  forked_first_claim(fork_there, "a fork in a handler during the first claim");
}

/* The same, with a malloc in the child's handler: it claims the arena the child gave up, and
 * the interrupted call finds it the thread's and keeps it (instead of giving it back). */
Test(lifecycle, a_fork_and_malloc_in_a_handler_during_a_first_claim_keep_the_childs_arena) {
  forked_first_claim(fork_and_malloc_there, "a fork and a malloc in a handler there");
}
