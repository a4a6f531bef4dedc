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

/* The arena a first free takes: the freed block's own, if no thread has it (arena.c,
 * ta_arena_want), even where the list order would give another. Two threads alive at once
 * leave a block each in two arenas; a third thread's first call frees the block of the one that
 * comes second in the list. */
typedef struct {
  void *block;
  ta_arena_t *arena;
  pthread_barrier_t *both;
} left_t;

static void *leave_a_block(void *arg) {
  left_t *l = arg;
  l->block = ta_malloc(64);
  l->arena = ta_tl_arena;
  pthread_barrier_wait(l->both);
  return NULL;
}

static void *first_call_frees(void *arg) {
  left_t *l = arg;
  ta_free(l->block);
  l->arena = ta_tl_arena; /* the arena the free took */
  return NULL;
}

Test(claim, a_first_free_takes_the_arena_of_its_block_if_no_thread_has_it) {
  void *mine = ta_malloc(64); /* this thread has an arena: its frees leave no hint */
  pthread_barrier_t both;
  pthread_barrier_init(&both, NULL, 2);
  left_t l[2] = {{.both = &both}, {.both = &both}};
  pthread_t t[2];
  for (int i = 0; i < 2; i++)
    cr_assert_eq(pthread_create(&t[i], NULL, leave_a_block, &l[i]), 0);
  for (int i = 0; i < 2; i++)
    pthread_join(t[i], NULL);
  pthread_barrier_destroy(&both);
  cr_assert_neq(l[0].arena, l[1].arena, "two threads at once, two arenas");
  ta_arena_t *first_free = ta_arena_first();
  while (first_free && atomic_load(&first_free->state) != ARENA_FREE)
    first_free = first_free->next_all;
  int o = first_free == l[0].arena ? 1 : 0; /* the one the list order does not give */
  ta_arena_t *want = l[o].arena;
  pthread_t n;
  cr_assert_eq(pthread_create(&n, NULL, first_call_frees, &l[o]), 0);
  pthread_join(n, NULL);
  cr_assert_eq(l[o].arena, want, "the free took the arena of the block it freed");
  ta_free(l[1 - o].block);
  ta_free(mine);
}
