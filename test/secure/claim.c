/*
 * The hardened build's claim of an arena by a thread whose first call is a free: the free
 * takes an arena for its quarantine (alloc.c, secure_free). With something due and the
 * purger stopped, the claim asks for it, as a due time noted from none does, but does not
 * start it: a free is never a safe point (glibc frees a joined thread's TLS while it holds
 * the lock pthread_create takes). The thread's next allocation starts it.
 *
 * Built with the allocator's internals in view (src/internal.h), unlike misuse.c.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>

#include <tamalloc.h>

#include "internal.h"
#include "tatest.h"

static void *block; /* the main thread's: the other thread's first call frees it */
static _Atomic int running_after_free = -1, wanted_after_free = -1, running_after_malloc = -1;

static void *first_call_is_a_free(void *arg) {
  (void)arg;
  ta_free(block); /* takes an arena for the quarantine */
  atomic_store(&running_after_free, ta_bg_running());
  atomic_store(&wanted_after_free, atomic_load(&ta_bg_wanted.v) != 0);
  void *p = ta_malloc(64); /* every malloc of this build leaves the fast path: a safe point */
  atomic_store(&running_after_malloc, ta_bg_running());
  ta_free(p);
  return NULL;
}

Test(claim, a_first_free_asks_for_the_purger_and_the_next_malloc_starts_it, .timeout = 30) {
  ta_bg_enable(true); /* off by default in the API library */
  block = ta_malloc(64);
  cr_assert_not_null(block);
  /* Something due, asked for by nobody, no purger: what a purger that left behind a due time
   * leaves (its own stop clears the request). */
  ta_purge_note_global(&ta_arenas_due, ta_os_now_ms() + 600000);
  atomic_store(&ta_bg_wanted.v, 0);
  cr_assert_not(ta_bg_running(), "the purger runs already");
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, first_call_is_a_free, NULL), 0);
  pthread_join(t, NULL);
  cr_assert_eq(atomic_load(&running_after_free), 0,
               "the free's claim of an arena started the purger inside the free");
  cr_assert_eq(atomic_load(&wanted_after_free), 1,
               "the claim, with something due, did not ask for the purger");
  cr_assert_eq(atomic_load(&running_after_malloc), 1,
               "the thread's next allocation did not start the purger");
}
