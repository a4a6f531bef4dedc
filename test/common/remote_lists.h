/*
 * remote_lists.h - the blocks waiting on an arena's lists of remote frees, counted, for the
 * tests of remote frees (unit and hardened builds): read while no thread pushes, as those
 * tests arrange.
 */
#ifndef TATEST_REMOTE_LISTS_H
#define TATEST_REMOTE_LISTS_H

#include <stdatomic.h>
#include <stddef.h>

#include "internal.h"

/* The blocks on list i of arena a. */
static inline size_t tt_remote_list_len(ta_arena_t *a, unsigned i) {
  size_t n = 0;
  for (ta_block_t *b = atomic_load(&a->remote[i]); b; b = ta_block_next(b)) n++;
  return n;
}

/* The blocks on all of a's lists. */
static inline size_t tt_remote_len(ta_arena_t *a) {
  size_t n = 0;
  for (unsigned i = 0; i < TA_REMOTE_LISTS; i++) n += tt_remote_list_len(a, i);
  return n;
}

#endif
