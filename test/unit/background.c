/* Unit tests: the background purger (background.c), driven through the ta_ API library,
 * where it is off unless a test turns it on. */
#include <criterion/criterion.h>
#include <pthread.h>
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

static void count_pending(ta_arena_t *a, void *arg) {
  if (atomic_load(&a->state) == ARENA_FREE && (atomic_load(&a->remote) || a->dirty_bytes))
    ++*(int *)arg;
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

/* A thread exits leaving blocks that this thread then frees into its ownerless arena. */
static void exit_and_free_remotely(void) {
  static void *blocks[BLOCKS];
  pthread_t t;
  pthread_create(&t, NULL, alloc_and_exit, blocks);
  pthread_join(t, NULL);
  for (int i = 0; i < BLOCKS; i++) ta_free(blocks[i]);
}

Test(background, exited_threads_memory_is_purged_with_no_caller, .timeout = 30) {
  ta_bg_enable(true);
  cr_assert_not(ta_bg_running(), "not before a thread exits with work left");
  exit_and_free_remotely();
  cr_assert(ta_bg_running(), "the exiting thread started it");
  cr_assert(orphans_settle_within(3000), "the ownerless arena was not purged in 3 s");
  cr_assert_gt(ta_bg_rounds(), 0);
  /* It sleeps when idle and wakes for new work. */
  uint64_t rounds = ta_bg_rounds();
  nap_ms(300);
  cr_assert_eq(ta_bg_rounds(), rounds, "no rounds without work");
  exit_and_free_remotely();
  cr_assert(orphans_settle_within(3000), "new work after a sleep was not taken");
  cr_assert_gt(ta_bg_rounds(), rounds);
}

Test(background, off_by_default_in_the_api_library, .timeout = 30) {
  exit_and_free_remotely();
  cr_assert_not(ta_bg_running());
  cr_assert_not(orphans_settle_within(600), "something purged without a caller");
}

Test(background, a_thread_that_cannot_start_changes_nothing, .timeout = 30) {
  ta_bg_enable(true);
  ta_os_fail(TA_OS_THREAD, 0, 1);
  exit_and_free_remotely();
  cr_assert_not(ta_bg_running());
  nap_ms(ta_decay_ms + 50);
  ta_free(ta_malloc(100000)); /* a slow path does the work instead */
  cr_assert(orphans_settle_within(100));
}

Test(background, a_fork_child_starts_its_own, .timeout = 30) {
  /* ThreadSanitizer cannot start threads in the child of a multithreaded process. */
  if (TT_SANITIZER) cr_skip_test("threads in a fork child under ThreadSanitizer");
  ta_bg_enable(true);
  exit_and_free_remotely();
  cr_assert(ta_bg_running());
  pid_t pid = fork();
  if (pid == 0) {
    if (ta_bg_running()) _exit(2); /* the parent's thread does not exist here */
    exit_and_free_remotely();
    if (!ta_bg_running()) _exit(3);
    _exit(orphans_settle_within(3000) ? 0 : 4);
  }
  int st;
  waitpid(pid, &st, 0);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
}
