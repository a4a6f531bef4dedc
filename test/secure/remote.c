/*
 * The hardened build's remote frees: a block of another thread's arena leaves the freeing
 * thread's quarantine straight onto one of its owner's remote lists. The default build puts
 * such frees off into a chain per thread (arena.c, ta_remote_defer); this build does not, so
 * that a block leaves its freer's hands when the quarantine lets it go, never later.
 *
 * Built with the allocator's internals in view (src/internal.h), unlike misuse.c.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>

#include <tamalloc.h>

#include "internal.h"
#include "remote_lists.h"
#include "tatest.h"

typedef struct {
  void *theirs;      /* a block of the main thread's arena */
  ta_arena_t *owner; /* that arena */
  size_t seen[2];
} evict_probe_t;

static void *free_then_evict(void *arg) {
  evict_probe_t *e = arg;
  void *mine[TA_QUARANTINE];
  for (size_t i = 0; i < TA_QUARANTINE; i++)
    mine[i] = ta_malloc(64);
  ta_free(e->theirs); /* into this thread's quarantine */
  e->seen[0] = tt_remote_len(e->owner);
  for (size_t i = 0; i < TA_QUARANTINE; i++)
    ta_free(mine[i]); /* the quarantine is full at the last: the oldest, theirs, leaves it */
  e->seen[1] = tt_remote_len(e->owner);
  return NULL;
}

Test(remote, a_block_leaving_the_quarantine_goes_to_its_owner_at_once) {
  evict_probe_t e = {.theirs = ta_malloc(48), .owner = ta_tl_arena};
  cr_assert_not_null(e.theirs);
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, free_then_evict, &e), 0);
  pthread_join(t, NULL);
  cr_assert_eq(e.seen[0], 0, "held in the freer's quarantine");
  cr_assert_eq(e.seen[1], 1, "on the owner's list once evicted, the freer still running");
  ta_remote_collect(ta_tl_arena);
  cr_assert_eq(tt_remote_len(ta_tl_arena), 0);
}
