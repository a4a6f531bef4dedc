/* Unit tests: runs of small blocks — carving, FULL/PARTIAL transitions, retirement, the
 * free pages of runs in use given back by their owner (ta_small_shrink),
 * the chunk map, and the invariants written in internal.h. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sys/mman.h>
#include <sys/wait.h>

#include "internal.h"
#include "support/abort_text.h"
#include "support/fd_text.h"
#include "support/page_in_force.h"
#include "tamalloc.h"
#include "vmflags.h"

static size_t list_len(const ta_block_t *b) {
  size_t n = 0;
  for (; b; b = ta_block_next(b)) n++;
  return n;
}

/* used + |free| == carved blocks (single thread: nothing on the remote list); every block on
 * the list, carved or freed, holds its mark. */
static void check_run(const ta_run_t *r) {
  int32_t used = RUN_USED(r);
  cr_assert_eq((size_t)used + list_len(r->free), r->limit / r->bsize,
               "run invariant: used %d free %zu carved %u", used, list_len(r->free),
               r->limit / r->bsize);
  cr_assert_leq(r->limit / r->bsize, ta_run_cap(r));
  cr_assert_eq(r->accept, ta_run_accept(r->bsize, r->recip, r->limit), "accept stored with limit");
  for (const ta_block_t *b = r->free; b; b = ta_block_next(b))
    cr_assert_eq(b->key, ta_mark(b), "free block %p unmarked", (void *)b);
}

/* Where block p of run r comes in the order r's lists hand blocks out: its first page from the
 * colour (ta_run_colour) on, then from the page's start, then the other pages in address
 * order. */
static size_t handout_rank(const ta_run_t *r, const void *p) {
  size_t k = (size_t)((const char *)p - ta_run_base(r)) / r->bsize, n = ta_run_page_blocks(r);
  size_t c = ta_run_colour(r);
  return c != 0 && k < n ? (k + n - c) % n : k;
}

Test(runs, first_block_makes_an_arena_and_a_run) {
  void *p = ta_malloc(24);
  cr_assert_not_null(p);
  cr_assert_neq(ta_tl_arena, &ta_sentinel_arena);
  cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_SMALL);
  ta_run_t *r = ta_run_of(p);
  cr_assert_eq(r->owner, ta_tl_arena);
  cr_assert_eq(r->bsize, 32);
  cr_assert_eq(ta_tl_arena->cur[2], r);
  cr_assert_eq(r->used, RUN_ACTIVE_BIAS + 1, "the active run's count carries the bias");
  cr_assert_eq((uintptr_t)p % 16, 0);
  check_run(r);
  ta_free(p);
  check_run(r);
}

Test(runs, blocks_are_carved_a_page_at_a_time) {
  void *p = ta_malloc(64);
  ta_run_t *r = ta_run_of(p);
  cr_assert_eq(r->limit, ta_page_size, "one page threaded, not the whole run");
  ta_free(p);
}

Test(runs, full_run_leaves_lists_and_comes_back_as_partial) {
  size_t bs = 4096;
  void *first = ta_malloc(bs);
  ta_run_t *r = ta_run_of(first);
  size_t cap = ta_run_cap(r);
  void **blocks = calloc(cap, sizeof *blocks);
  blocks[0] = first;
  for (size_t i = 1; i < cap; i++) {
    blocks[i] = ta_malloc(bs);
    cr_assert_eq(ta_run_of(blocks[i]), r, "the active run fills first");
  }
  /* The next allocation finds the run exhausted: it becomes FULL, a new run is active. */
  void *extra = ta_malloc(bs);
  cr_assert_neq(ta_run_of(extra), r);
  cr_assert_eq(r->state, RUN_FULL);
  cr_assert(r->used & RUN_FULL_BIT);
  /* One free makes it PARTIAL, on the class's list. */
  ta_free(blocks[3]);
  cr_assert_eq(r->state, RUN_PARTIAL);
  cr_assert_eq(ta_tl_arena->partial[ta_size_class(bs)], r);
  cr_assert_eq(r->used, (int32_t)cap - 1);
  check_run(r);
  /* Freeing the rest retires it: the slot goes back to its chunk. */
  for (size_t i = 0; i < cap; i++)
    if (i != 3) ta_free(blocks[i]);
  cr_assert_null(r->owner);
  cr_assert_eq(r->state, RUN_UNUSED);
  ta_free(extra);
  free(blocks);
}

/* The class's PARTIAL list, newest first; its tail is the oldest. */
static void check_partial_list(unsigned cls) {
  ta_run_t *last = NULL;
  for (ta_run_t *r = ta_tl_arena->partial[cls]; r; r = r->next) {
    cr_assert_eq(r->prev, last);
    cr_assert_eq(r->state, RUN_PARTIAL);
    last = r;
  }
  cr_assert_eq(ta_tl_arena->partial_tail[cls], last, "the tail is the last run of the list");
}

/* Fills `n` runs of 4 KiB blocks (16 a run), then starts one more, which is current. */
static void fill_runs(void *blocks[][16], size_t n, void **extra) {
  for (size_t k = 0; k < n; k++)
    for (size_t i = 0; i < 16; i++) {
      blocks[k][i] = ta_malloc(4096);
      cr_assert_eq(ta_run_of(blocks[k][i]), ta_run_of(blocks[k][0]));
    }
  *extra = ta_malloc(4096);
  for (size_t k = 0; k < n; k++) cr_assert_eq(ta_run_of(blocks[k][0])->state, RUN_FULL);
}

/* The owner's small slow paths that need no new memory run in its light section (the lock's
 * compare-and-swap waited for every store the program had made: 7% of bench/run's `random`):
 * a FULL run's first free puts it on its class's list, and a refill makes it current. The
 * first refill, under the lock, allows the sections. */
Test(runs, a_full_runs_first_free_and_the_refill_that_takes_it_take_no_lock) {
  void *blocks[1][16], *extra;
  fill_runs(blocks, 1, &extra); /* started: the barrier registered or not */
  if (!ta_light_ok) cr_skip_test("no light sections here (no membarrier, or a TSan build)");
  ta_arena_t *me = ta_tl_arena;
  cr_assert(atomic_load(&me->light_on), "allowed by a refill under the lock");
  ta_run_t *r = ta_run_of(blocks[0][0]), *cur = ta_run_of(extra);
  unsigned cls = ta_size_class(4096);
  uint32_t steps = me->light_small;
  ta_free(blocks[0][5]);
  cr_assert_eq(me->light_small, steps + 1, "the first free made no lock's way");
  cr_assert_eq(r->state, RUN_PARTIAL);
  cr_assert_eq(r->used, 15, "no longer FULL");
  cr_assert_eq(me->partial[cls], r);
  check_partial_list(cls);
  cr_assert_eq(atomic_load(&me->light), 0, "out of the section");
  /* The current run used up: the refill takes the PARTIAL one, its free block first. */
  void *more[16];
  size_t n = 0;
  while (n < 16 && me->cur[cls] == cur)
    more[n++] = ta_malloc(4096);
  cr_assert_eq(me->cur[cls], r, "the partial run is current");
  cr_assert_eq(more[n - 1], blocks[0][5], "its free block handed out");
  cr_assert_eq(r->state, RUN_ACTIVE);
  cr_assert_eq(RUN_USED(r), 16);
  cr_assert_eq(cur->state, RUN_FULL);
  cr_assert(cur->used & RUN_FULL_BIT);
  cr_assert_null(me->partial[cls]);
  cr_assert_eq(me->light_small, steps + 2, "the refill made no lock's way");
  cr_assert_eq(atomic_load(&me->light), 0);
  for (size_t i = 0; i < 16; i++)
    if (i != 5) ta_free(blocks[0][i]);
  for (size_t i = 0; i < n; i++)
    ta_free(more[i]);
  ta_free(extra);
}

/* Blocks that die in random order make many runs PARTIAL with one free block each; the run
 * malloc moves to is then the oldest one, which has had more frees, not the newest. */
Test(runs, malloc_moves_to_the_oldest_partial_run_when_the_newest_has_few_free_blocks) {
  static void *blocks[3][16];
  void *extra, *more[16];
  unsigned cls = ta_size_class(4096);
  fill_runs(blocks, 3, &extra);
  ta_run_t *oldest = ta_run_of(blocks[0][0]), *newest = ta_run_of(blocks[2][0]);
  for (size_t i = 0; i < 10; i++) ta_free(blocks[0][i]); /* 10 free, PARTIAL first */
  ta_free(blocks[1][0]);                                  /* 1 free */
  ta_free(blocks[2][0]);                                  /* 1 free, PARTIAL last */
  check_partial_list(cls);
  cr_assert_eq(ta_tl_arena->partial[cls], newest);
  cr_assert_eq(ta_tl_arena->partial_tail[cls], oldest);
  /* The current run has 15 blocks left; the 16th malloc needs another run. */
  for (size_t i = 0; i < 15; i++) more[i] = ta_malloc(4096);
  more[15] = ta_malloc(4096);
  cr_assert_eq(ta_run_of(more[15]), oldest, "the oldest, with 10 free blocks, not the newest");
  cr_assert_eq(ta_tl_arena->cur[cls], oldest);
  cr_assert_eq(newest->state, RUN_PARTIAL);
  check_partial_list(cls);
  check_run(oldest);
  for (size_t i = 0; i < 16; i++) ta_free(more[i]);
  for (size_t i = 10; i < 16; i++) ta_free(blocks[0][i]);
  for (size_t i = 1; i < 16; i++) ta_free(blocks[1][i]), ta_free(blocks[2][i]);
  ta_free(extra);
  check_partial_list(cls);
}

/* A newest PARTIAL run with a quarter of its blocks free is taken: its blocks were freed last
 * and are the likeliest to be in the cache. */
Test(runs, malloc_moves_to_the_newest_partial_run_when_it_has_enough_free_blocks) {
  static void *blocks[2][16];
  void *extra, *more[16];
  unsigned cls = ta_size_class(4096);
  fill_runs(blocks, 2, &extra);
  ta_run_t *oldest = ta_run_of(blocks[0][0]), *newest = ta_run_of(blocks[1][0]);
  for (size_t i = 0; i < 10; i++) ta_free(blocks[0][i]);
  for (size_t i = 0; i < 4; i++) ta_free(blocks[1][i]); /* 4 of 16: a quarter */
  cr_assert_eq(ta_tl_arena->partial_tail[cls], oldest);
  for (size_t i = 0; i < 16; i++) more[i] = ta_malloc(4096);
  cr_assert_eq(ta_run_of(more[15]), newest);
  check_partial_list(cls);
  /* Retiring runs keeps the list and its tail right. */
  for (size_t i = 0; i < 16; i++) ta_free(more[i]);
  for (size_t i = 10; i < 16; i++) ta_free(blocks[0][i]);
  cr_assert_null(oldest->owner, "retired");
  check_partial_list(cls);
  for (size_t i = 4; i < 16; i++) ta_free(blocks[1][i]);
  ta_free(extra);
  check_partial_list(cls);
}

/* A run of `size`-byte blocks filled, then `nfree` of its blocks freed in scrambled order (a
 * stride prime to the run's count); the next run is current, filled through. Returns the run,
 * now PARTIAL; its blocks, in the order malloc gave them, in `all`, the order they were freed
 * in `freed` (indexes of `all`). */
enum { MOST = TA_RUN_SIZE / 16 };
static void *all[MOST], *next_run[MOST];
static size_t freed[MOST];
static ta_run_t *scramble_a_run(size_t size, size_t nfree) {
  size_t cap = TA_RUN_SIZE / size;
  for (size_t i = 0; i < cap; i++)
    cr_assert_not_null(all[i] = ta_malloc(size));
  ta_run_t *r = ta_run_of(all[0]);
  cr_assert_eq(ta_run_cap(r), cap);
  for (size_t i = 0; i < cap; i++)
    cr_assert_eq(ta_run_of(all[i]), r);
  cr_assert_eq(handout_rank(r, all[cap - 1]), cap - 1, "the run's blocks in the hand-out order");
  next_run[0] = ta_malloc(size);
  cr_assert_eq(r->state, RUN_FULL);
  for (size_t n = 0, k = 0; n < nfree; n++, k = (k + 389) % cap) {
    freed[n] = k;
    ta_free(all[k]);
  }
  cr_assert_eq(r->state, RUN_PARTIAL);
  /* The current run's other blocks, so that the next malloc leaves it. */
  for (size_t i = 1; i < cap; i++)
    next_run[i] = ta_malloc(size);
  cr_assert_eq(ta_run_of(next_run[cap - 1]), ta_run_of(next_run[0]));
  return r;
}

/* A PARTIAL run that becomes active with three quarters of its blocks or more free hands them
 * out in address order, not in the order they were freed, each still marked free until it is
 * handed out. */
static void hands_out_in_address_order(size_t size) {
  size_t nfree = TA_RUN_SIZE / size * 3 / 4;
  ta_run_t *r = scramble_a_run(size, nfree);
  size_t last = 0;
  for (size_t n = 0; n < nfree; n++) {
    char *p = ta_malloc(size);
    cr_assert_eq(ta_run_of(p), r, "block %zu from the PARTIAL run", n);
    size_t rank = handout_rank(r, p);
    if (n > 0)
      cr_assert_gt(rank, last, "block %zu: %p (rank %zu) after rank %zu", n, (void *)p, rank, last);
    last = rank;
    if (n == 0) check_run(r); /* the rest, rethreaded: every one on the list, marked */
  }
  cr_assert_eq(r->free, NULL, "every freed block, once");
  check_run(r);
}
Test(runs, a_run_mostly_free_hands_its_blocks_out_in_address_order) {
  hands_out_in_address_order(64);
}
Test(runs, a_run_of_the_smallest_class_mostly_free_hands_its_blocks_out_in_address_order) {
  hands_out_in_address_order(16); /* 4,096 blocks: every word of the walk's bitmap */
}

/* One with fewer free keeps the order they were freed in: the list is not walked (a walk is a
 * cache miss a block). */
Test(runs, a_run_with_fewer_free_hands_its_blocks_out_last_freed_first) {
  size_t nfree = TA_RUN_SIZE / 64 * 3 / 4 - 1;
  ta_run_t *r = scramble_a_run(64, nfree);
  for (size_t n = nfree; n-- > 0;)
    cr_assert_eq(ta_malloc(64), all[freed[n]]);
  cr_assert_eq(r->free, NULL);
  check_run(r);
}

/* The walk checks every link: one overwritten after free is reported, never followed; nor is
 * one forged to point at a live block, which the rewrite would write a link into. */
Test(runs, a_free_list_overwritten_after_free_aborts_the_reordering, .signal = SIGABRT) {
  size_t nfree = TA_RUN_SIZE / 64 * 3 / 4;
  scramble_a_run(64, nfree);
  ((ta_block_t *)all[freed[nfree / 2]])->link = ta_link_enc((ta_block_t *)(uintptr_t)0x1000);
  void *p = ta_malloc(64); /* the run becomes active */
  cr_assert_fail("the reordering followed a forged link: %p", p);
}
Test(runs, a_free_link_forged_to_a_live_block_aborts_the_reordering, .signal = SIGABRT) {
  size_t nfree = TA_RUN_SIZE / 64 * 3 / 4;
  scramble_a_run(64, nfree);
  ta_block_t *live = all[(freed[nfree - 1] + 389) % (TA_RUN_SIZE / 64)]; /* never freed */
  memset(live, 0, 64);
  ((ta_block_t *)all[freed[nfree / 2]])->link = ta_link_enc(live);
  void *p = ta_malloc(64);
  cr_assert_fail("the reordering took a live block for a free one: %p", p);
}

/* The reordering reads the marks of the run's blocks in address order when it can tell from
 * them alone. A live block whose data equals its mark makes one marked block too many: the
 * list decides, and the live block stays the program's. */
Test(runs, a_live_block_holding_its_mark_is_not_taken_for_a_free_one) {
  size_t nfree = TA_RUN_SIZE / 64 * 3 / 4;
  ta_run_t *r = scramble_a_run(64, nfree);
  ta_block_t *live = all[(freed[nfree - 1] + 389) % (TA_RUN_SIZE / 64)]; /* never freed */
  live->key = ta_mark(live);
  live->link = ta_link_enc(live); /* a list of its own beside the run's: its links hold */
  size_t last = 0;
  for (size_t n = 0; n < nfree; n++) {
    char *p = ta_malloc(64);
    cr_assert_eq(ta_run_of(p), r, "block %zu from the PARTIAL run", n);
    cr_assert_neq(p, (char *)live, "the live block handed out again as block %zu", n);
    size_t rank = handout_rank(r, p);
    if (n > 0)
      cr_assert_gt(rank, last, "block %zu: %p (rank %zu) after rank %zu", n, (void *)p, rank, last);
    last = rank;
  }
  cr_assert_eq(r->free, NULL, "every freed block, once, and nothing else");
  cr_assert_eq(live->key, ta_mark(live), "the live block's data untouched");
}

/* As many marked blocks as free ones, but not the same: a live block holds its mark and a free
 * block lost its own to a write after free. The links give it away, and the walk reports. */
Test(runs, a_free_mark_overwritten_beside_a_live_block_holding_its_mark_aborts_the_reordering,
     .signal = SIGABRT) {
  size_t nfree = TA_RUN_SIZE / 64 * 3 / 4;
  scramble_a_run(64, nfree);
  ta_block_t *live = all[(freed[nfree - 1] + 389) % (TA_RUN_SIZE / 64)]; /* never freed */
  live->key = ta_mark(live);
  ((ta_block_t *)all[freed[nfree / 2]])->key = 0; /* a write after free */
  void *p = ta_malloc(64);
  cr_assert_fail("the reordering took a live block for a free one: %p", p);
}

/* A free block's link zeroed by a write after free cuts the list in two, where a walk would
 * end and lose the blocks behind it: the marks tell, and the cut is reported. */
Test(runs, a_link_zeroed_after_free_aborts_the_reordering, .signal = SIGABRT) {
  size_t nfree = TA_RUN_SIZE / 64 * 3 / 4;
  scramble_a_run(64, nfree);
  ((ta_block_t *)all[freed[nfree / 2]])->link = 0;
  void *p = ta_malloc(64);
  cr_assert_fail("the reordering lost the blocks behind a zeroed link: %p", p);
}

/* A list whose head a forged (keyed) link names again is a cycle: the walk reports it. */
Test(runs, a_link_forged_back_to_the_head_aborts_the_reordering, .signal = SIGABRT) {
  size_t nfree = TA_RUN_SIZE / 64 * 3 / 4;
  scramble_a_run(64, nfree);
  ((ta_block_t *)all[freed[nfree - 2]])->link = ta_link_enc(all[freed[nfree - 1]]);
  void *p = ta_malloc(64);
  cr_assert_fail("the reordering took a cycle for a list: %p", p);
}

/* And one whose forged link names a block of the list again, behind the head. */
Test(runs, a_link_forged_back_into_the_list_aborts_the_reordering, .signal = SIGABRT) {
  size_t nfree = TA_RUN_SIZE / 64 * 3 / 4;
  scramble_a_run(64, nfree);
  ((ta_block_t *)all[freed[1]])->link = ta_link_enc(all[freed[nfree - 3]]);
  void *p = ta_malloc(64);
  cr_assert_fail("the reordering took a cycle for a list: %p", p);
}

/* A block of a rethreaded run freed twice is still caught. */
Test(runs, a_double_free_of_a_block_of_a_rethreaded_run_aborts, .signal = SIGABRT) {
  size_t nfree = TA_RUN_SIZE / 64 * 3 / 4;
  ta_run_t *r = scramble_a_run(64, nfree);
  void *p = ta_malloc(64); /* the lowest free block; the run is rethreaded */
  cr_assert_eq(ta_run_of(p), r);
  void *q = all[freed[nfree - 1]]; /* freed, and still on the list */
  cr_assert_neq(q, p);
  ta_free(q);
  cr_assert_fail("the second free of %p went unnoticed", q);
}

Test(runs, freed_block_is_reused_first) {
  void *a = ta_malloc(100), *b = ta_malloc(100);
  ta_free(a);
  void *c = ta_malloc(100);
  cr_assert_eq(c, a, "LIFO reuse of the run's free list");
  ta_free(b);
  ta_free(c);
}

Test(runs, key_word_marks_free_blocks_and_malloc_clears_it) {
  ta_block_t *b = ta_malloc(16);
  ta_free(b);
  cr_assert_eq(b->key, ta_mark(b));
  ta_block_t *c = ta_malloc(16);
  cr_assert_eq(c, b);
  cr_assert_eq(c->key, 0);
  ta_free(c);
}

Test(runs, user_data_equal_to_the_key_is_not_a_double_free) {
  /* A live block whose second word happens to hold its mark, and whose first is no link a
   * list could hold (it decodes to no block of ours), is not reported: it is kept in use, as
   * it may be a block another thread's chain of remote frees holds, whose link a write after
   * free changed (with a list's end or a block of ours for its link, it would be reported, as
   * a block such a chain holds is: remote.c). */
  ta_block_t *b = ta_malloc(32);
  b->link = 0x5eed;
  b->key = ta_mark(b);
  ta_run_t *r = ta_run_of(b);
  int32_t used = RUN_USED(r);
  ta_free(b);
  cr_assert_eq(RUN_USED(r), used, "kept in use");
  cr_assert_not(ta_small_on_free_list(r, b), "and not on its run's list");
  void *c = ta_malloc(32);
  cr_assert_neq(c, b, "so never handed out twice");
  ta_free(c);
}

/* The mark alone does not make a block free for realloc and malloc_usable_size: the owner
 * finds it on no list; another thread also wants a link word a list could hold, and this
 * one (program data) decodes to no block of ours. */
static void *usable_and_realloc(void *arg) {
  ta_block_t *b = arg;
  cr_assert_eq(ta_malloc_usable_size(b), 32);
  cr_assert_eq(ta_realloc(b, 24), b, "realloc in place");
  cr_assert_eq(b->key, ta_mark(b), "realloc in place keeps the contents");
  return NULL;
}

Test(runs, user_data_equal_to_the_mark_is_not_a_freed_block) {
  ta_block_t *b = ta_malloc(32);
  ta_block_t *neighbours[8];
  for (int i = 0; i < 8; i++) neighbours[i] = ta_malloc(32);
  for (int i = 0; i < 8; i += 2) ta_free(neighbours[i]); /* a free list to look through */
  b->link = 0x5eed;
  b->key = ta_mark(b);
  usable_and_realloc(b); /* the owner */
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, usable_and_realloc, b), 0);
  cr_assert_eq(pthread_join(t, NULL), 0);
  b->key = 0;
  ta_free(b);
  for (int i = 1; i < 8; i += 2) ta_free(neighbours[i]);
}

Test(runs, interior_pointer_aborts, .signal = SIGABRT) {
  char *p = ta_malloc(48);
  ta_free(p + 16);
}

static void *free_it(void *p) {
  ta_free(p);
  return NULL;
}

/* fn(arg) aborts with a report that holds `what`, and the pointer p unless it is NULL. */
static void aborts_saying(void *(*fn)(void *), void *arg, const char *what, const void *p) {
  char want[160];
  snprintf(want, sizeof want, p ? "%s %p\n" : "%s", what, p);
  char *text = abort_text(fn, arg);
  cr_assert_not_null(strstr(text, want), "the report: %s (not: %s)", text, want);
  free(text);
}

/* Skips a test of a run's shrink where a run is one page (64 KiB): it gives nothing back
 * until it is empty. Known before the allocator starts (page_in_force.h). */
static void needs_runs_that_shrink(void) { needs_pages_up_to(TA_RUN_SIZE / 2); }

/* A block boundary never handed out, in run r: above its limit, or where a block would
 * start past the blocks that fit (a run carved whole at once: pages of 64 KiB). */
static void *past_the_carved_blocks(ta_run_t *r) {
  uint32_t at = r->limit < TA_RUN_SIZE ? r->limit : ta_run_cap(r) * r->bsize;
  cr_assert_lt(at, (uint32_t)TA_RUN_SIZE, "a boundary inside the run");
  return ta_run_base(r) + at;
}

Test(runs, pointer_past_carved_blocks_aborts, .signal = SIGABRT) {
  char *p = ta_malloc(48);
  ta_free(past_the_carved_blocks(ta_run_of(p)));
}

/* A power of two, whose quotient of recip is exact but for the + 1 (ta_run_recip), in a child
 * process. A run of them carved whole (pages of 64 KiB) has no boundary past its blocks: the
 * one above its limit is the next slot's, which this test is not about. */
Test(runs, pointer_past_carved_blocks_aborts_power_of_two) {
  char *p = ta_malloc(128);
  ta_run_t *r = ta_run_of(p);
  if (r->limit == TA_RUN_SIZE) cr_skip_test("the run was carved whole (pages of 64 KiB)");
  aborts_saying(free_it, ta_run_base(r) + r->limit, "free(): invalid pointer",
                ta_run_base(r) + r->limit);
}

/* Another thread's free checks the same (ta_small_valid): no block's start, and a start past
 * the carved blocks. */
static void free_from_another_thread(void *p) {
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, free_it, p), 0);
  pthread_join(t, NULL);
}
Test(runs, interior_pointer_freed_by_another_thread_aborts, .signal = SIGABRT) {
  char *p = ta_malloc(48);
  free_from_another_thread(p + 16);
}
Test(runs, pointer_past_carved_blocks_freed_by_another_thread_aborts, .signal = SIGABRT) {
  char *p = ta_malloc(48);
  free_from_another_thread(past_the_carved_blocks(ta_run_of(p)));
}

/* The one compare of free and ta_small_valid, (uint32_t)(off * recip) < accept, against the
 * division it replaces, for every offset of a run of every class with runs (mid ones too), with
 * none, one, some and all of its blocks threaded; and the index every offset gives (ta_run_index).
 */
Test(runs, block_start_test_matches_division) {
  for (unsigned cls = 1; cls <= TA_NUM_RUN; cls++) {
    uint32_t bs = (uint32_t)ta_class_size[cls], recip = ta_run_recip(bs);
    uint32_t cap = TA_RUN_SIZE / bs;
    ta_run_t r = {.bsize = bs, .recip = recip};
    cr_assert_eq(ta_run_cap(&r), cap, "class %u (%u bytes): capacity", cls, bs);
    uint32_t ns[] = {0, 1, 2, cap / 3, cap / 2, cap - 1, cap};
    for (unsigned i = 0; i < sizeof ns / sizeof ns[0]; i++) {
      uint32_t n = ns[i], accept = ta_run_accept(bs, recip, n * bs);
      for (uint32_t off = 0; off < TA_RUN_SIZE; off++) {
        bool start = off % bs == 0 && off / bs < n;
        if (((uint32_t)(off * recip) < accept) != start)
          cr_assert_fail("class %u (%u bytes), %u threaded: offset %u taken for %s", cls, bs, n,
                         off, start ? "no block's start" : "a block's start");
        if (i == 0 && ta_run_index(&r, off) != off / bs)
          cr_assert_fail("class %u (%u bytes): offset %u gives index %u", cls, bs, off,
                         ta_run_index(&r, off));
      }
    }
    /* the limit of a run of a power of two carved whole, which the scan turns into an index */
    cr_assert_eq(ta_run_index(&r, TA_RUN_SIZE), TA_RUN_SIZE / bs, "class %u: index of 2^16", cls);
  }
}

Test(runs, block_carved_but_never_handed_out_aborts, .signal = SIGABRT) {
  char *p = ta_malloc(128);
  cr_assert_not_null(ta_run_of(p)->free, "the page's other blocks are on the list");
  ta_free(ta_run_of(p)->free); /* on the list, marked: freeing it would put it there twice */
}

Test(runs, pointer_into_unused_run_slot_aborts, .signal = SIGABRT) {
  char *p = ta_malloc(128);
  ta_chunk_t *c = ta_chunk_of(p);
  ta_free((char *)c + 63 * TA_RUN_SIZE); /* last slot of the chunk: not in use */
}

Test(runs, chunk_header_check_word) {
  void *p = ta_malloc(8);
  ta_chunk_t *c = ta_chunk_of(p);
  cr_assert_eq(c->check, (uintptr_t)c ^ ta_secret);
  cr_assert_eq(c->kind, TA_MAP_SMALL);
  cr_assert_eq(c->owner, ta_tl_arena);
  cr_assert_eq(c->free_slots & 1, 0, "slot 0 is the header");
  ta_free(p);
}

Test(runs, many_classes_share_a_chunk) {
  void *p[TA_NUM_SMALL];
  for (unsigned c = 1; c <= TA_NUM_SMALL; c++) p[c - 1] = ta_malloc(ta_class_size[c]);
  for (unsigned c = 1; c <= TA_NUM_SMALL; c++) {
    ta_run_t *r = ta_run_of(p[c - 1]);
    cr_assert_eq(r->cls, c);
    cr_assert_eq(ta_malloc_usable_size(p[c - 1]), ta_class_size[c]);
    check_run(r);
  }
  for (unsigned c = 1; c <= TA_NUM_SMALL; c++) ta_free(p[c - 1]);
}

/* ---- mid classes: runs of 9 to 16 KiB blocks while threads are few ------------------- */

/* The unit tier serves them from the medium heap (support/runs_first.c): these tests turn
 * their runs on, as a process starts. */
static void mid_on(void) {
  ta_free(ta_malloc(1)); /* initialised: the page size known */
  if (ta_page_size > TA_PAGE_MIN) cr_skip_test("no mid class takes runs with pages over 4 KiB");
  ta_run_limit = TA_MID_MAX;
}

/* With pages of more than 4 KiB a mid block is a page or less, and the release could give
 * back nothing of it: runs serve no mid class (ta_run_limit_init). */
Test(mid, runs_serve_mid_classes_only_with_4_KiB_pages) {
  ta_free(ta_malloc(1));
  ta_run_limit = TA_MID_MAX;
  ta_run_limit_init();
  cr_assert_eq(ta_run_limit, ta_page_size > TA_PAGE_MIN ? TA_SMALL_MAX : TA_MID_MAX);
}

enum { MID_CAP = TA_RUN_SIZE / TA_MID_MAX }; /* blocks of the last mid class a run holds: 4 */

/* A run of the last mid class filled: its blocks into b[0..MID_CAP), the run returned. */
static ta_run_t *mid_fill(void **b) {
  for (int i = 0; i < MID_CAP; i++)
    b[i] = ta_malloc(TA_MID_MAX);
  ta_run_t *r = ta_run_of(b[0]);
  for (int i = 1; i < MID_CAP; i++)
    cr_assert_eq(ta_run_of(b[i]), r, "one run holds them");
  return r;
}

Test(mid, every_mid_class_comes_from_a_run_of_its_own, .init = mid_on) {
  cr_assert_eq(ta_class_size[TA_NUM_RUN], TA_MID_MAX);
  void *p[TA_NUM_RUN + 1];
  for (unsigned c = TA_NUM_SMALL + 1; c <= TA_NUM_RUN; c++) {
    size_t n = ta_class_size[c - 1] + 1; /* the smallest request of the class */
    p[c] = ta_malloc(n);
    cr_assert_not_null(p[c]);
    cr_assert_eq(ta_map_get((uintptr_t)p[c]), TA_MAP_SMALL, "class %u: a run's block", c);
    ta_run_t *r = ta_run_of(p[c]);
    cr_assert_eq(r->cls, c);
    cr_assert_eq(r->bsize, ta_class_size[c]);
    cr_assert_eq(r->owner, ta_tl_arena);
    cr_assert_eq(ta_tl_arena->cur[c], r);
    cr_assert(ta_small_valid(r, p[c]));
    cr_assert_eq(ta_malloc_usable_size(p[c]), ta_class_size[c]);
    cr_assert_eq(ta_nallocx(n, 0), ta_class_size[c], "class %u: nallocx says what malloc gives", c);
    cr_assert_eq(ta_run_cap(r), TA_RUN_SIZE / ta_class_size[c]);
    memset(p[c], 0x5a, ta_class_size[c]);
    check_run(r);
  }
  for (unsigned c = TA_NUM_SMALL + 1; c <= TA_NUM_RUN; c++)
    ta_free(p[c]);
  /* a request just past them is the medium heap's */
  void *m = ta_malloc(TA_MID_MAX + 1);
  cr_assert_eq(ta_map_get((uintptr_t)m), TA_MAP_MEDIUM);
  ta_free(m);
}

/* The misuse tests run at every page size: where mid classes take no runs (ta_run_limit_init),
 * the medium heap aborts as well. */
static void mid_asked(void) { ta_run_limit = TA_MID_MAX; }
Test(mid, a_double_free_aborts_as_a_runs_does, .init = mid_asked, .signal = SIGABRT) {
  char *p = ta_malloc(15000);
  char *q = ta_malloc(15000);
  ta_free(p);
  ta_free(q);
  ta_free(p);
}

Test(mid, an_interior_pointer_aborts, .init = mid_asked, .signal = SIGABRT) {
  char *p = ta_malloc(12000);
  ta_free(p + 4096);
}

/* Emptied, a mid run stays on its class's list (its slot kept), a later malloc makes it
 * current again without a new run, and the owner's purge (ta_small_shrink) retires it. */
Test(mid, an_emptied_run_stays_listed_until_the_owners_purge, .init = mid_on) {
  unsigned c = TA_NUM_RUN;
  void *x[MID_CAP], *y[MID_CAP];
  ta_run_t *r = mid_fill(x);
  ta_arena_t *a = ta_tl_arena;
  void *z = ta_malloc(TA_MID_MAX); /* r is full: a second run becomes current */
  ta_run_t *r2 = ta_run_of(z);
  cr_assert_neq(r2, r);
  cr_assert_eq(r->state, RUN_FULL);
  for (int i = 0; i < MID_CAP; i++)
    ta_free(x[i]); /* FULL -> PARTIAL, then empty: kept */
  cr_assert_eq(r->state, RUN_PARTIAL);
  cr_assert_eq(r->used, 0);
  cr_assert_eq(r->owner, a, "the slot is kept");
  cr_assert_eq(a->partial[c], r);
  check_run(r);
  y[0] = z;
  for (int i = 1; i < MID_CAP; i++)
    y[i] = ta_malloc(TA_MID_MAX); /* the rest of r2 */
  for (int i = 1; i < MID_CAP; i++)
    cr_assert_eq(ta_run_of(y[i]), r2);
  void *v = ta_malloc(TA_MID_MAX); /* r2 full: r, kept, is current again */
  cr_assert_eq(ta_run_of(v), r);
  cr_assert_eq(a->cur[c], r);
  cr_assert_eq(r->state, RUN_ACTIVE);
  ta_free(v);
  for (int i = 0; i < MID_CAP; i++)
    ta_free(y[i]); /* r2 emptied: kept on the list */
  cr_assert_eq(r2->state, RUN_PARTIAL);
  cr_assert_eq(r2->owner, a);
  (void)ta_small_shrink(a);
  cr_assert_eq(r2->owner, NULL, "the purge retires the empty run it kept");
  cr_assert_eq(r2->state, RUN_UNUSED);
  cr_assert_null(a->partial[c]);
  cr_assert_eq(a->cur[c], r, "the current run stays");
  ta_small_retire_idle(a, true);
  cr_assert_eq(r->owner, NULL, "a full purge retires the current one, empty");
}

static void *trim_from_elsewhere(void *v) {
  (void)v;
  ta_malloc_trim(0);
  return NULL;
}
/* malloc_trim called by another thread, this one waiting. */
static void trim_from_another_thread(void) {
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, trim_from_elsewhere, NULL), 0);
  cr_assert_eq(pthread_join(t, NULL), 0);
}
/* The run mid class c keeps empty on a's list, or NULL. */
static ta_run_t *kept_run(const ta_arena_t *a, unsigned c) {
  return a->mid_kept[c - TA_NUM_SMALL - 1];
}
/* ta_free of p, the last block in use of run r, stopped where a preemption may stop it: pushed
 * and counted (alloc.c), the slow path that the count at zero calls for not reached yet. */
static void free_stopped_at_the_count(ta_run_t *r, void *p) {
  ta_block_t *b = p;
  b->link = ta_link_enc(r->free);
  b->key = ta_mark(b);
  r->free = b;
  cr_assert(ta_dec_le_zero(&r->used), "the count reaches zero: the slow path is due");
}

/* Another thread's malloc_trim retires the empty run a class keeps on its list (the owner may
 * never purge again: it is idle), but not the owner's current run, which its fast path pops
 * without the lock. */
Test(mid, another_threads_trim_retires_the_empty_run_a_class_keeps, .init = mid_on) {
  unsigned c = TA_NUM_RUN;
  void *x[MID_CAP];
  ta_run_t *r = mid_fill(x);
  ta_arena_t *a = ta_tl_arena;
  void *z = ta_malloc(TA_MID_MAX); /* r full: a second run current */
  ta_run_t *r2 = ta_run_of(z);
  for (int i = 0; i < MID_CAP; i++)
    ta_free(x[i]); /* r emptied: kept */
  cr_assert_eq(r->owner, a);
  cr_assert_eq(a->partial[c], r);
  cr_assert_eq(kept_run(a, c), r, "r is the class's kept run");
  ta_free(z); /* r2, current, empty too */
  cr_assert_eq(a->cur[c], r2);
  trim_from_another_thread();
  cr_assert_null(r->owner, "the kept run retired by another thread's trim");
  cr_assert_eq(r->state, RUN_UNUSED);
  cr_assert_null(a->partial[c]);
  cr_assert_null(kept_run(a, c), "none kept once it retired");
  cr_assert_eq(a->cur[c], r2, "the current run stays: the owner pops it without the lock");
  cr_assert_eq(r2->owner, a);
  void *v = ta_malloc(TA_MID_MAX); /* the owner goes on from its current run */
  cr_assert_eq(ta_run_of(v), r2);
  ta_free(v);
  ta_small_retire_idle(a, true); /* the owner's full purge retires its current run, empty */
  cr_assert_null(r2->owner);
}

/* A run found empty on its class's list by another thread's trim is retired only if it is the
 * one its class keeps: the owner's free of its last block may be between the count and the
 * slow path, which decides (here the owner is stopped there by hand, as a preemption would). */
Test(mid, another_threads_trim_leaves_a_run_the_owner_is_emptying, .init = mid_on) {
  unsigned c = TA_NUM_RUN;
  void *x[MID_CAP];
  ta_run_t *r = mid_fill(x);
  ta_arena_t *a = ta_tl_arena;
  void *z = ta_malloc(TA_MID_MAX); /* r full: a second run current */
  for (int i = 0; i + 1 < MID_CAP; i++)
    ta_free(x[i]); /* r PARTIAL, one block in use */
  cr_assert_null(kept_run(a, c));
  free_stopped_at_the_count(r, x[MID_CAP - 1]);
  trim_from_another_thread();
  cr_assert_eq(r->owner, a, "not the kept run: the trim leaves it");
  cr_assert_eq(r->state, RUN_PARTIAL);
  ta_small_free_slow(a, r); /* the owner goes on: the class keeps it */
  cr_assert_eq(kept_run(a, c), r);
  trim_from_another_thread();
  cr_assert_null(r->owner, "kept, it goes at the next trim");
  cr_assert_null(kept_run(a, c));
  ta_free(z);
}

/* The same stop, and a purge of the owner's own nested in it (a signal handler's malloc may
 * run one): the run is not the kept one, so the purge leaves it on its list, and the owner's
 * slow path then keeps it, named, rather than naming a run retired under it. */
Test(mid, a_nested_purge_leaves_a_run_the_owner_is_emptying, .init = mid_on) {
  unsigned c = TA_NUM_RUN;
  void *x[MID_CAP];
  ta_run_t *r = mid_fill(x);
  ta_arena_t *a = ta_tl_arena;
  void *z = ta_malloc(TA_MID_MAX);
  for (int i = 0; i + 1 < MID_CAP; i++)
    ta_free(x[i]);
  free_stopped_at_the_count(r, x[MID_CAP - 1]);
  (void)ta_small_shrink(a); /* the handler's purge */
  cr_assert_eq(r->owner, a, "not the kept run: the purge leaves it");
  cr_assert_eq(r->state, RUN_PARTIAL);
  ta_small_free_slow(a, r);
  cr_assert_eq(kept_run(a, c), r, "kept and named");
  cr_assert_eq(a->partial[c], r);
  check_run(r);
  (void)ta_small_shrink(a); /* now it goes, named */
  cr_assert_null(r->owner);
  cr_assert_null(kept_run(a, c));
  ta_free(z);
}

/* One empty run a class: a second that empties while the first is kept retires at once. */
Test(mid, a_class_keeps_one_empty_run, .init = mid_on) {
  void *x[MID_CAP], *y[MID_CAP];
  ta_run_t *r = mid_fill(x), *r2 = mid_fill(y);
  void *z = ta_malloc(TA_MID_MAX); /* a third run current: r and r2 full */
  ta_arena_t *a = ta_tl_arena;
  cr_assert(ta_run_of(z) != r && ta_run_of(z) != r2);
  for (int i = 0; i < MID_CAP; i++)
    ta_free(x[i]);
  cr_assert_eq(r->owner, a, "the first kept");
  cr_assert_eq(kept_run(a, TA_NUM_RUN), r);
  for (int i = 0; i < MID_CAP; i++)
    ta_free(y[i]);
  cr_assert_eq(r2->owner, NULL, "the second retired");
  cr_assert_eq(r->owner, a);
  cr_assert_eq(kept_run(a, TA_NUM_RUN), r, "the first still kept");
  cr_assert_eq(a->partial[TA_NUM_RUN], r);
  (void)ta_small_shrink(a);
  cr_assert_eq(r->owner, NULL);
  cr_assert_null(kept_run(a, TA_NUM_RUN), "none kept once it retired");
  ta_free(z);
}

/* From TA_FEW_ARENAS threads at once, mid requests leave runs (spans or the medium heap serve
 * them), and a mid run that empties then retires at once. What the runs hold stays theirs. */
Test(mid, from_few_arenas_on_mid_requests_leave_runs, .init = mid_on) {
  void *x[MID_CAP];
  ta_run_t *r = mid_fill(x);
  void *z = ta_malloc(TA_MID_MAX); /* r full, no longer current */
  cr_assert_neq(ta_run_of(z), r);
  ta_run_limit_arenas(TA_FEW_ARENAS - 1);
  cr_assert_eq(ta_run_limit, TA_MID_MAX, "fewer arenas: unchanged");
  ta_run_limit_arenas(TA_FEW_ARENAS);
  cr_assert_eq(ta_run_limit, TA_SMALL_MAX);
  void *m = ta_malloc(12000);
  cr_assert_eq(ta_map_get((uintptr_t)m), TA_MAP_MEDIUM);
  cr_assert_eq(ta_nallocx(12000, 0), ta_malloc_usable_size(m));
  cr_assert_eq(ta_malloc_usable_size(x[0]), TA_MID_MAX, "a mid run's block as it was");
  for (int i = 0; i < MID_CAP; i++)
    ta_free(x[i]);
  cr_assert_eq(r->owner, NULL, "emptied, the run retires");
  ta_free(z);
  ta_free(m);
}

/* A block that grows past 8 KiB, from a run or from the medium heap, goes to the medium heap
 * (where its owner's next realloc grows it in place), not to a mid class's run, which would
 * copy it at every class. A mid block kept down to half its size stays. */
Test(mid, a_growing_realloc_goes_to_the_medium_heap, .init = mid_on) {
  char *p = ta_malloc(4000);
  memset(p, 7, 4000);
  p = ta_realloc(p, 10000);
  cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_MEDIUM);
  cr_assert_eq(p[3999], 7);
  char *q = ta_malloc(10000);
  cr_assert_eq(ta_map_get((uintptr_t)q), TA_MAP_SMALL);
  memset(q, 9, 10000);
  char *q2 = ta_realloc(q, 14000);
  cr_assert_eq(ta_map_get((uintptr_t)q2), TA_MAP_MEDIUM);
  cr_assert_eq(q2[9999], 9);
  char *s = ta_malloc(15000);
  cr_assert_eq(ta_realloc(s, 9000), s, "down to half: in place");
  ta_free(p);
  ta_free(q2);
  ta_free(s);
}

/* An alignment above 16 takes the first class whose size is a multiple of it, a mid one too;
 * its sized and aligned free is accepted before and after mid requests leave runs. */
Test(mid, an_aligned_request_takes_a_mid_class_that_keeps_the_alignment, .init = mid_on) {
  void *p = ta_aligned_alloc(16384, 100);
  cr_assert_eq((uintptr_t)p % 16384, 0);
  cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_SMALL);
  cr_assert_eq(ta_run_of(p)->bsize, 16384);
  cr_assert_eq(ta_nallocx(100, TA_MALLOCX_ALIGN(16384)), 16384);
  void *q = ta_aligned_alloc(4096, 9000);
  cr_assert_eq((uintptr_t)q % 4096, 0);
  cr_assert_eq(ta_run_of(q)->bsize, 12288, "9216, 10240 and 11264 are not multiples of 4 KiB");
  ta_free_aligned_sized(p, 16384, 100);
  ta_run_limit_arenas(TA_FEW_ARENAS);
  ta_free_aligned_sized(q, 4096, 9000);
}

/* With statistics on, a mid run's blocks count in their class's row: live ones at the class's
 * size with their request, free ones threaded on the run. */
static void mid_on_with_statistics(void) {
  ta_stats_enable(1); /* before the first chunk: each records its blocks' requests */
  mid_on();
}
Test(mid, statistics_count_a_mid_runs_blocks_in_their_class, .init = mid_on_with_statistics) {
  unsigned c = ta_size_class(12000);
  void *p = ta_malloc(12000), *q = ta_malloc(12000);
  cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_SMALL);
  ta_free(q);
  struct ta_stats s;
  memset(&s, 0, sizeof s);
  s.version = TA_STATS_VERSION;
  s.size = sizeof s;
  cr_assert_eq(ta_stats_get(&s, -1), 0);
  cr_assert_eq(s.classes[c].live_blocks, 1);
  cr_assert_eq(s.classes[c].usable_bytes, ta_class_size[c]);
  cr_assert_eq(s.classes[c].requested_bytes, 12000);
  cr_assert_geq(s.classes[c].free_blocks, 1, "q, on the run's list");
  ta_free(p);
}

/* Pages of [p, p + n) resident. */
static size_t mid_resident(const void *p, size_t n) {
  uintptr_t from = (uintptr_t)p & ~(uintptr_t)(ta_page_size - 1);
  size_t pages = (ta_align_up((uintptr_t)p + n, ta_page_size) - from) / ta_page_size, in = 0;
  unsigned char vec[64];
  cr_assert_leq(pages, sizeof vec);
  cr_assert_eq(mincore((void *)from, pages * ta_page_size, vec), 0);
  for (size_t i = 0; i < pages; i++)
    in += vec[i] & 1;
  return in;
}

struct release_job {
  ta_arena_t *a;
  size_t freed;
};
/* Another thread's purge of the arena after the decay, as the background purger's. */
static void *release_from_elsewhere(void *v) {
  struct release_job *j = v;
  uint64_t later = j->a->mid_since + ta_decay_ms + 1;
  ta_slow_enter(j->a);
  j->freed = ta_arena_purge(j->a, later, TA_PURGE_AGED, ta_decay_ms, true);
  ta_slow_leave(j->a);
  return NULL;
}

/* The free blocks of mid runs give their pages back after the decay, by another thread's
 * purge too (an idle owner's, which cannot shrink its runs): each block past the page that
 * holds its link and mark, the blocks staying on their lists; blocks in use keep theirs. A
 * block taken again reads as written by whoever takes it. */
Test(mid, free_blocks_give_their_pages_back_after_the_decay, .init = mid_on) {
  void *x[MID_CAP];
  ta_run_t *r = mid_fill(x);
  size_t pages = ta_align_up(TA_MID_MAX, ta_page_size) / ta_page_size; /* a block's */
  ta_arena_t *a = ta_tl_arena;
  void *z = ta_malloc(TA_MID_MAX); /* r full, no longer current */
  for (int i = 0; i < MID_CAP; i++)
    memset(x[i], 0x33, TA_MID_MAX);
  memset(z, 0x44, TA_MID_MAX);
  a->mid_since = 0; /* as after a release that found nothing */
  ta_free(x[1]); /* FULL -> PARTIAL: the clock starts */
  ta_free(x[2]);
  cr_assert_neq(a->mid_since, 0, "a mid run's free on the slow path starts the clock");
  cr_assert_eq(mid_resident(x[1], TA_MID_MAX), pages);
  uint64_t due = atomic_load(&a->purge_due);
  cr_assert(due != 0 && due <= a->mid_since + ta_decay_ms, "the purge is noted");
  /* Before the decay: nothing. */
  ta_slow_enter(a);
  ta_arena_purge(a, a->mid_since, TA_PURGE_AGED, ta_decay_ms, true);
  ta_slow_leave(a);
  cr_assert_eq(mid_resident(x[1], TA_MID_MAX), pages);
  pthread_t t;
  struct release_job j = {a, 0};
  cr_assert_eq(pthread_create(&t, NULL, release_from_elsewhere, &j), 0);
  cr_assert_eq(pthread_join(t, NULL), 0);
  /* the pages past the first of a block that starts on a page (none with pages of 16 KiB or
   * more: the block's one page holds its link) */
  size_t per_block = TA_MID_MAX > ta_page_size ? TA_MID_MAX / ta_page_size - 1 : 0;
  for (int i = 1; i <= 2; i++) {
    cr_assert_eq(mid_resident(x[i], TA_MID_MAX), pages - per_block,
                 "block %d: its first page alone stays", i);
    cr_assert_eq(((ta_block_t *)x[i])->key, ta_mark(x[i]), "still marked free");
  }
  cr_assert_eq(j.freed, 2 * per_block * ta_page_size, "x[1] and x[2], nothing else free");
  cr_assert_neq(a->mid_since, 0, "pages went back: the next release is due a decay later");
  for (int i = 1; i <= 2; i++)
    cr_assert_eq(((uintptr_t *)x[i])[2], ta_mid_released(x[i]), "block %d noted released", i);
  /* Again: those blocks are not given back twice, and a release that finds nothing stops. */
  ta_slow_enter(a);
  cr_assert_eq(ta_small_mid_release(a, a->mid_since + ta_decay_ms), 0);
  ta_slow_leave(a);
  cr_assert_eq(a->mid_since, 0, "nothing went back: the owner's next slow path rearms it");
  check_run(r);
  for (int i = 0; i < MID_CAP; i += 3)
    for (size_t k = 0; k < TA_MID_MAX; k += 512)
      cr_assert_eq(((unsigned char *)x[i])[k], 0x33, "block %d in use kept its bytes", i);
  cr_assert_eq(((unsigned char *)z)[TA_MID_MAX - 1], 0x44);
  /* Taken again, a released block works as any. */
  ta_free(z);
  void *w = ta_malloc(TA_MID_MAX);
  cr_assert(w == x[1] || w == x[2] || w == z);
  cr_assert_eq(((uintptr_t *)w)[2], 0, "handed out, no longer noted released");
  memset(w, 0x55, TA_MID_MAX);
  cr_assert_eq(((unsigned char *)w)[TA_MID_MAX - 1], 0x55);
  ta_free(w);
  ta_free(x[0]);
  ta_free(x[3]);
}

struct lock_job {
  ta_arena_t *a;
  _Atomic int held;
  uint64_t let_go_us;
};
static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
/* Another thread holds the arena's lock for 100 ms, as a purger releasing mid blocks would. */
static void *hold_the_lock(void *v) {
  struct lock_job *j = v;
  ta_slow_enter(j->a);
  atomic_store(&j->held, 1);
  struct timespec ts = {0, 100 * 1000 * 1000};
  nanosleep(&ts, NULL);
  j->let_go_us = now_us();
  ta_slow_leave(j->a);
  return NULL;
}

/* A mid malloc takes no block while another thread holds the arena's lock (which may be
 * giving back free blocks' pages: ta_small_mid_release): it waits for the lock, though its
 * run has blocks, where a small malloc pops at once. */
Test(mid, a_mid_malloc_waits_while_another_thread_holds_the_lock, .init = mid_on) {
  void *p = ta_malloc(TA_MID_MAX);
  ta_free(ta_malloc(TA_MID_MAX)); /* the run current, with free blocks; light sections on */
  void *s = ta_malloc(64);
  ta_arena_t *a = ta_tl_arena;
  /* where the process has them at all (not under ThreadSanitizer, nor without the barrier):
   * then the pop below would go through one */
  if (atomic_load(&ta_light_ok)) cr_assert(atomic_load(&a->light_on), "a refill allowed them");
  struct lock_job j = {a, 0, 0};
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, hold_the_lock, &j), 0);
  while (!atomic_load(&j.held))
    sched_yield();
  void *s2 = ta_malloc(64); /* a small block's pop takes no lock */
  cr_assert_not_null(s2);
  void *q = ta_malloc(TA_MID_MAX);
  uint64_t got = now_us();
  cr_assert_eq(pthread_join(t, NULL), 0);
  cr_assert_geq(got, j.let_go_us, "the mid malloc returned before the lock was let go");
  cr_assert_eq(ta_run_of(q), ta_run_of(p));
  ta_free(q);
  ta_free(p);
  ta_free(s);
  ta_free(s2);
}

/* ---- the free pages of runs in use (ta_small_shrink) ---------------------------------- */

static void *blocks[TA_RUN_SIZE / 16]; /* a run's blocks, by index */

static unsigned char pattern(size_t k, size_t i) { return (unsigned char)(k * 7 + i + 1); }

static void write_block(size_t k, size_t size) {
  for (size_t i = 0; i < size; i++) ((unsigned char *)blocks[k])[i] = pattern(k, i);
}

static void check_block(size_t k, size_t size) {
  for (size_t i = 0; i < size; i++)
    cr_assert_eq(((unsigned char *)blocks[k])[i], pattern(k, i), "block %zu byte %zu", k, i);
}

static size_t run_index(const ta_run_t *r, const void *p) {
  return (size_t)((const char *)p - ta_run_base(r)) / r->bsize;
}

static size_t run_resident(const ta_run_t *r) { return ta_os_resident(ta_run_base(r), TA_RUN_SIZE); }

/* Fills the active run of the class of `size` with blocks (blocks[] by index, every byte
 * written; the first run of the class in this test's process): the run's every page is
 * resident. */
static ta_run_t *fill_run(size_t size) {
  void *first = ta_malloc(size);
  ta_run_t *r = ta_run_of(first);
  blocks[run_index(r, first)] = first;
  for (uint32_t i = 1; i < ta_run_cap(r); i++) {
    void *p = ta_malloc(size);
    cr_assert_eq(ta_run_of(p), r, "the active run fills first");
    blocks[run_index(r, p)] = p;
  }
  for (uint32_t k = 0; k < ta_run_cap(r); k++)
    write_block(k, size);
  cr_assert_eq(r->limit, ta_run_cap(r) * r->bsize);
  cr_assert_geq(run_resident(r), (size_t)ta_run_cap(r) * r->bsize / ta_page_size * ta_page_size);
  return r;
}

/* Allocates blocks[k] again for every k from `from` (the run takes them back by carving)
 * and checks every byte of the whole run. */
static void refill_and_check(ta_run_t *r, size_t size, uint32_t from) {
  for (uint32_t i = from; i < ta_run_cap(r); i++) {
    void *p = ta_malloc(size);
    cr_assert_eq(ta_run_of(p), r, "the shrunk run serves its class again");
    size_t k = run_index(r, p);
    cr_assert((char *)p == ta_run_base(r) + k * r->bsize, "a block boundary");
    cr_assert(k >= from && k < ta_run_cap(r), "block %zu was in use", k);
    cr_assert_lt((uintptr_t)p - (uintptr_t)ta_run_base(r), r->limit);
    blocks[k] = p;
    write_block(k, size);
  }
  check_run(r);
  cr_assert_eq(r->limit, ta_run_cap(r) * r->bsize);
  for (uint32_t k = 0; k < ta_run_cap(r); k++)
    check_block(k, size);
  for (uint32_t k = 0; k < ta_run_cap(r); k++)
    ta_free(blocks[k]);
}

/* All blocks but the lowest freed: malloc_trim gives back every page but the first. With
 * `partial`, the run is PARTIAL (it was FULL) and ends with an empty list, so the next malloc
 * takes it up and carves; else it is the active run. The blocks dropped from the page kept
 * hold no link or mark any more. */
static void trim_keeps_the_lowest(size_t size, bool partial) {
  ta_run_t *r = fill_run(size);
  needs_runs_that_shrink();
  void *extra = partial ? ta_malloc(size) : NULL; /* finds the run exhausted: FULL */
  for (uint32_t k = 1; k < ta_run_cap(r); k++)
    ta_free(blocks[k]);
  cr_assert_eq(r->state, partial ? RUN_PARTIAL : RUN_ACTIVE);
  ta_free(extra); /* its run is active and empty: trim retires it */
  ta_malloc_trim(0);
  cr_assert_eq(r->owner, ta_tl_arena);
  cr_assert_eq(r->limit, r->bsize, "only the block in use stays threaded");
  cr_assert_null(r->free);
  check_run(r);
  cr_assert_leq(run_resident(r), 2 * ta_page_size, "%zu bytes resident", run_resident(r));
  check_block(0, size);
  for (uint32_t k = 1; k < ta_run_cap(r) && (size_t)k * r->bsize < ta_page_size; k++) {
    const ta_block_t *b = blocks[k];
    cr_assert(b->link == 0 && b->key == 0, "block %u keeps a link or a mark", k);
  }
  refill_and_check(r, size, 1);
}

Test(runs, trim_gives_back_the_free_pages_of_the_active_run) { trim_keeps_the_lowest(64, false); }
Test(runs, trim_gives_back_the_free_pages_of_a_partial_run) { trim_keeps_the_lowest(64, true); }
Test(runs, trim_gives_back_pages_of_blocks_across_page_ends) { trim_keeps_the_lowest(48, false); }
Test(runs, trim_gives_back_pages_of_blocks_over_a_page) { trim_keeps_the_lowest(5120, true); }

Test(runs, nothing_goes_back_above_the_highest_block_in_use) {
  ta_run_t *r = fill_run(64);
  for (uint32_t k = 0; k + 1 < ta_run_cap(r); k++)
    ta_free(blocks[k]);
  uint32_t limit = r->limit;
  ta_malloc_trim(0);
  cr_assert_eq(r->limit, limit);
  cr_assert_eq(list_len(r->free), ta_run_cap(r) - 1);
  check_run(r);
  cr_assert_eq(run_resident(r), TA_RUN_SIZE);
  check_block(ta_run_cap(r) - 1, 64);
  ta_free(blocks[ta_run_cap(r) - 1]);
}

/* Cache colour: a new run hands its first page out from the block its slot's colour names,
 * on to the page's end, then from its start, then the other pages in address order; and runs
 * in different slots start on different lines of the page, which without the colour they
 * would all share (docs/design.md, "Cache colour"). */
Test(runs, each_slot_hands_its_first_page_out_from_a_line_of_its_own) {
  enum { RUNS = 63 }; /* a chunk's every slot, blocks of 48 bytes: two start in some lines */
  size_t line[RUNS];
  for (size_t n = 0; n < RUNS; n++) { /* each run filled: the next malloc takes a new slot */
    void *first = ta_malloc(48);
    ta_run_t *r = ta_run_of(first);
    uint32_t cap = ta_run_cap(r), page = ta_run_page_blocks(r);
    cr_assert_eq(r->limit, page * r->bsize, "a fresh run, its first page threaded");
    size_t off = (size_t)((char *)first - ta_run_base(r));
    cr_assert_lt(off, ta_page_size, "run %zu starts in its first page", n);
    line[n] = off / 64;
    for (size_t m = 0; m < n; m++)
      cr_assert_neq(line[m], line[n], "runs %zu and %zu start on line %zu (slot %u)", m, n, line[n],
                    (unsigned)r->slot);
    /* The first page whole, from the colour on and around; then the rest ascending. */
    size_t c = run_index(r, first);
    for (uint32_t j = 1; j < cap; j++) {
      void *p = ta_malloc(48);
      cr_assert_eq(ta_run_of(p), r, "block %u from the active run", j);
      size_t want = j < page ? (c + j) % page : j;
      cr_assert_eq(run_index(r, p), want, "block %u: index %zu, not %zu", j, run_index(r, p), want);
    }
    check_run(r);
  }
}

/* A shrink whose highest block in use lies in the first page, above the colour: the list
 * threaded again hands out the colour's blocks up to it, then the page's first ones, and the
 * next carve goes on from the limit. */
Test(runs, a_shrink_within_the_first_page_keeps_its_colour_order) {
  ta_run_t *r = fill_run(64);
  needs_runs_that_shrink();
  uint32_t c = ta_run_colour(r), page = ta_run_page_blocks(r);
  cr_assert_gt(c, 1, "slot %u's colour: block %u", (unsigned)r->slot, c);
  uint32_t hi = c + 3 < page ? c + 3 : page - 1; /* the highest in use, above the colour */
  for (uint32_t k = ta_run_cap(r); k-- > 1;)
    if (k != hi) ta_free(blocks[k]);
  cr_assert_gt(ta_small_shrink(ta_tl_arena), 0);
  cr_assert_eq(r->limit, (hi + 1) * r->bsize);
  check_run(r);
  cr_assert_eq(list_len(r->free), hi - 1);
  const ta_block_t *b = r->free;
  for (uint32_t i = c; i < hi; i++, b = ta_block_next(b))
    cr_assert_eq(run_index(r, b), i, "from the colour up");
  for (uint32_t i = 1; i < c; i++, b = ta_block_next(b))
    cr_assert_eq(run_index(r, b), i, "then from the page's start");
  cr_assert_null(b);
  for (uint32_t i = 1; i < hi; i++) {
    void *p = ta_malloc(64);
    cr_assert_eq(ta_run_of(p), r);
    blocks[run_index(r, p)] = p;
  }
  void *q = ta_malloc(64);
  cr_assert_eq(run_index(r, q), hi + 1, "the next carve from the limit");
  blocks[hi + 1] = q;
  check_run(r);
}

/* Blocks in use at 0 and in the middle: the pages above the middle one go, and the free
 * blocks below it are threaded again in address order. */
Test(runs, the_list_below_the_highest_block_in_use_is_threaded_in_address_order) {
  ta_run_t *r = fill_run(64);
  needs_runs_that_shrink();
  uint32_t mid = ta_run_cap(r) / 2;
  for (uint32_t k = ta_run_cap(r); k-- > 1;)
    if (k != mid) ta_free(blocks[k]);
  cr_assert_gt(ta_small_shrink(ta_tl_arena), 0);
  cr_assert_eq(r->limit, (mid + 1) * r->bsize);
  check_run(r);
  cr_assert_eq(list_len(r->free), mid - 1);
  /* Every free block below mid once, in the order the lists hand blocks out: by rank. */
  size_t k = 1, last = 0;
  for (ta_block_t *b = r->free; b; b = ta_block_next(b), k++) {
    size_t i = run_index(r, b), rank = handout_rank(r, b);
    cr_assert(i >= 1 && i < mid, "free block %zu: index %zu", k, i);
    if (k > 1) cr_assert_gt(rank, last, "free block %zu (index %zu) in the hand-out order", k, i);
    last = rank;
    cr_assert_eq(b->key, ta_mark(b), "still marked free");
  }
  cr_assert_leq(run_resident(r), (size_t)(mid + 1) * r->bsize + ta_page_size);
  check_block(0, 64);
  check_block(mid, 64);
  for (k = 1; k < mid; k++) {
    void *p = ta_malloc(64);
    size_t i = run_index(r, p), rank = handout_rank(r, p);
    cr_assert(i >= 1 && i < mid, "low addresses first: malloc %zu gave index %zu", k, i);
    if (k > 1) cr_assert_gt(rank, last, "malloc %zu (index %zu) in the hand-out order", k, i);
    last = rank;
  }
  for (k = 1; k < mid; k++) write_block(k, 64);
  refill_and_check(r, 64, mid + 1);
}

static void *free_all_but_the_first(void *arg) {
  const ta_run_t *r = arg;
  for (uint32_t k = 1; k < ta_run_cap(r); k++)
    ta_free(blocks[k]);
  return NULL;
}

/* Blocks another thread freed wait on the owner's remote list: taken in, then given back. The
 * owner's purge takes them in (ta_small_shrink leaves that to its caller, purge.c). */
Test(runs, remote_frees_are_taken_in_before_the_run_shrinks) {
  ta_run_t *r = fill_run(64);
  needs_runs_that_shrink();
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, free_all_but_the_first, r), 0);
  cr_assert_eq(pthread_join(t, NULL), 0);
  cr_assert(ta_remote_waiting(ta_tl_arena, memory_order_relaxed));
  cr_assert_eq(RUN_USED(r), (int32_t)ta_run_cap(r), "blocks on the remote list count as used");
  cr_assert_geq(ta_arena_purge(ta_tl_arena, ta_os_now_ms(), false, ta_decay_ms, true),
                TA_RUN_SIZE - ta_page_size);
  cr_assert(!ta_remote_waiting(ta_tl_arena, memory_order_relaxed));
  cr_assert_eq(r->limit, r->bsize);
  check_run(r);
  cr_assert_leq(run_resident(r), 2 * ta_page_size);
  check_block(0, 64);
  refill_and_check(r, 64, 1);
}

/* The pages stay when the kernel refuses: the list and the limit are still cut, and no
 * dropped block keeps a link or a mark. */
Test(runs, a_refused_decommit_leaves_no_link_or_mark_above_the_limit) {
  ta_run_t *r = fill_run(64);
  needs_runs_that_shrink();
  for (uint32_t k = 1; k < ta_run_cap(r); k++)
    ta_free(blocks[k]);
  ta_os_fail(TA_OS_MADVISE, 0, 1);
  cr_assert_eq(ta_small_shrink(ta_tl_arena), 0);
  cr_assert_eq(r->limit, r->bsize);
  check_run(r);
  for (uint32_t k = 1; k < ta_run_cap(r); k++) {
    const ta_block_t *b = blocks[k];
    cr_assert(b->link == 0 && b->key == 0, "block %u keeps a link or a mark", k);
  }
  refill_and_check(r, 64, 1);
}

/* The walk checks every entry of the list it rethreads. */
static void *trim_here(void *unused) {
  (void)unused;
  ta_malloc_trim(0);
  return NULL;
}
Test(runs, a_free_list_overwritten_after_free_aborts_the_shrink) {
  ta_run_t *r = fill_run(64);
  needs_runs_that_shrink();
  for (uint32_t k = 1; k < ta_run_cap(r); k++)
    ta_free(blocks[k]);
  ((ta_block_t *)blocks[ta_run_cap(r) / 2])->link ^= 0x40; /* a write after free */
  aborts_saying(trim_here, NULL, "malloc(): corrupted free list, next block", NULL);
}

/* The shrink reads the free blocks from their marks as the reordering does: a live top block
 * holding its mark (and a link to itself, a list of its own) is one marked block too many,
 * and keeps its page. */
Test(runs, a_live_top_block_holding_its_mark_keeps_its_page_through_a_shrink) {
  ta_run_t *r = fill_run(64);
  needs_runs_that_shrink();
  for (uint32_t k = 0; k + 1 < ta_run_cap(r); k++)
    ta_free(blocks[k]);
  ta_block_t *top = blocks[ta_run_cap(r) - 1];
  top->key = ta_mark(top);
  top->link = ta_link_enc(top);
  uint32_t limit = r->limit;
  ta_malloc_trim(0);
  cr_assert_eq(r->limit, limit, "nothing given back above a block in use");
  cr_assert_eq(list_len(r->free), ta_run_cap(r) - 1);
  cr_assert_eq(run_resident(r), TA_RUN_SIZE);
  for (size_t i = sizeof(ta_block_t); i < 64; i++)
    cr_assert_eq(((unsigned char *)top)[i], pattern(ta_run_cap(r) - 1, i), "byte %zu", i);
  top->key = 0;
  top->link = 0;
  ta_free(top);
}

/* And a link zeroed after free is reported there too. */
Test(runs, a_link_zeroed_after_free_aborts_the_shrink) {
  ta_run_t *r = fill_run(64);
  needs_runs_that_shrink();
  for (uint32_t k = 1; k < ta_run_cap(r); k++)
    ta_free(blocks[k]);
  ((ta_block_t *)blocks[ta_run_cap(r) / 2])->link = 0;
  aborts_saying(trim_here, NULL, "malloc(): corrupted free list, next block", NULL);
}

/* A block of a page or more may be the program's to protect (mprotect): the shrink reads no
 * block of such a class that is not on its list, the top one (its first test) or any other
 * (the scan of the marks). */
Test(runs, a_shrink_reads_no_page_sized_block_in_use) {
  ta_run_t *r = fill_run(4096);
  if (ta_page_size != 4096) cr_skip_test("blocks of 4 KiB are no pages here");
  uint32_t mid = ta_run_cap(r) / 2, top = ta_run_cap(r) - 1;
  for (uint32_t k = 0; k < ta_run_cap(r); k++)
    if (k != mid && k != top) ta_free(blocks[k]);
  cr_assert_eq(mprotect(blocks[mid], 4096, PROT_NONE), 0);
  cr_assert_eq(mprotect(blocks[top], 4096, PROT_NONE), 0);
  ta_malloc_trim(0);
  cr_assert_eq(r->limit, ta_run_cap(r) * r->bsize, "nothing given back above a block in use");
  cr_assert_eq(mprotect(blocks[mid], 4096, PROT_READ | PROT_WRITE), 0);
  cr_assert_eq(mprotect(blocks[top], 4096, PROT_READ | PROT_WRITE), 0);
  check_block(mid, 4096);
  check_block(top, 4096);
  ta_free(blocks[mid]);
  ta_free(blocks[top]);
}

/* A block another thread freed is marked and counted in use until the owner takes it in: a
 * shrink that runs before (the owner's purge takes them in first; this calls the shrink
 * alone) finds one marked block too many, and walks: nothing is reported, nothing above it
 * goes back. */
static void *free_the_top_block(void *arg) {
  const ta_run_t *r = arg;
  ta_free(blocks[ta_run_cap(r) - 1]);
  return NULL;
}
Test(runs, a_block_waiting_on_the_remote_list_is_not_taken_for_a_cut_in_the_list) {
  ta_run_t *r = fill_run(64);
  for (uint32_t k = 1; k + 1 < ta_run_cap(r); k++)
    ta_free(blocks[k]);
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, free_the_top_block, r), 0);
  cr_assert_eq(pthread_join(t, NULL), 0);
  cr_assert(ta_remote_waiting(ta_tl_arena, memory_order_relaxed));
  uint32_t limit = r->limit;
  cr_assert_eq(ta_small_shrink(ta_tl_arena), 0);
  cr_assert_eq(r->limit, limit);
  cr_assert_eq(list_len(r->free), ta_run_cap(r) - 2);
  ta_malloc_trim(0); /* takes it in, then gives back all above block 0 */
  cr_assert(!ta_remote_waiting(ta_tl_arena, memory_order_relaxed));
  if (ta_page_size * 2 <= TA_RUN_SIZE) cr_assert_eq(r->limit, r->bsize);
  check_block(0, 64);
  ta_free(blocks[0]);
}

static void shrink_to_the_first_block(ta_run_t *r) {
  for (uint32_t k = 1; k < ta_run_cap(r); k++)
    ta_free(blocks[k]);
  ta_malloc_trim(0);
  cr_assert_eq(r->limit, r->bsize);
}

/* Above the new limit a block is no block of the run: a second free of it is invalid. */
Test(runs, double_free_above_the_lowered_limit_aborts) {
  ta_run_t *r = fill_run(64);
  needs_runs_that_shrink();
  shrink_to_the_first_block(r);
  void *top = blocks[ta_run_cap(r) - 1];
  aborts_saying(free_it, top, "free(): invalid pointer", top);
}

static void *free_from_another_thread_then_slow_path(void *p) {
  free_from_another_thread(p);
  ta_free(ta_malloc(100000)); /* the owner's slow path, should the free have been queued */
  return NULL;
}
Test(runs, double_free_above_the_lowered_limit_from_another_thread_aborts) {
  ta_run_t *r = fill_run(64);
  needs_runs_that_shrink();
  shrink_to_the_first_block(r);
  /* block 2 is in the page kept: its mark is wiped */
  aborts_saying(free_from_another_thread_then_slow_path, blocks[2], "free(): invalid pointer",
                blocks[2]);
}

static void nap_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* All blocks of a run but the lowest freed, and a purge due after the decay time (a large
 * free medium block): shrinking rides on a purge that is due anyway. The nap is longer than
 * two demand windows: an arena still drawing pages keeps the free ones of its runs (see
 * runs_keep_their_pages_while_the_arena_draws_and_shrink_after). */
static ta_run_t *run_to_shrink_when_due(void) {
  ta_decay_ms = 20;
  ta_run_t *r = fill_run(64);
  for (uint32_t k = 1; k < ta_run_cap(r); k++)
    ta_free(blocks[k]);
  ta_free(ta_malloc(100 << 10)); /* past 64 KiB: into the heap, not the cache */
  cr_assert_neq(atomic_load(&ta_tl_arena->purge_due), 0, "a purge is due");
  nap_ms((long)(2 * ta_demand_window()) + 30);
  return r;
}

Test(runs, the_owners_purge_after_the_decay_gives_back_free_pages) {
  needs_runs_that_shrink();
  ta_run_t *r = run_to_shrink_when_due();
  cr_assert_eq(r->limit, ta_run_cap(r) * r->bsize, "not before the purge");
  ta_free(ta_malloc(20000)); /* a slow path: the purge is due */
  cr_assert_eq(r->limit, r->bsize);
  check_run(r);
  cr_assert_leq(run_resident(r), 2 * ta_page_size);
  check_block(0, 64);
  refill_and_check(r, 64, 1);
}

/* While the arena is drawing pages from the kernel (its demand), its runs keep their free
 * pages; the purge comes back when the demand falls, and shrinks them then. */
Test(runs, runs_keep_their_pages_while_the_arena_draws_and_shrink_after) {
  ta_decay_ms = 20;
  ta_run_t *r = fill_run(64);
  needs_runs_that_shrink();
  for (uint32_t k = 1; k < ta_run_cap(r); k++)
    ta_free(blocks[k]);
  ta_free(ta_malloc(100 << 10));
  nap_ms((long)ta_decay_ms + 30);
  ta_arena_t *a = ta_tl_arena;
  a->demand_ms = ta_os_now_ms(); /* what it drew, it drew just now (a slow CI) */
  uint64_t now = ta_os_now_ms();
  cr_assert_gt(ta_arena_demand(a, now), 0, "the run's chunk");
  ta_free(ta_malloc(20000)); /* a slow path: the purge is due */
  cr_assert_eq(r->limit, ta_run_cap(r) * r->bsize, "its free pages stay");
  cr_assert(a->shrink_wait);
  uint64_t until = ta_demand_until(a, ta_os_now_ms());
  uint64_t due = atomic_load(&a->owner_due);
  cr_assert(due > ta_os_now_ms() && due <= until,
            "the owner comes back when the demand falls (%lu, %lu)", (unsigned long)due,
            (unsigned long)until);
  ta_arena_purge(a, until, false, ta_decay_ms, false); /* then */
  cr_assert_eq(r->limit, r->bsize, "shrunk once the demand fell");
  check_run(r);
}

/* The background purger's call: it holds the arena's lock, not its fast paths. */
static void *purge_as_the_background_thread(void *arg) {
  ta_arena_t *a = arg;
  cr_assert(ta_slow_try_enter(a));
  ta_arena_purge(a, ta_os_now_ms(), false, ta_decay_ms, true);
  ta_slow_leave(a);
  return NULL;
}

Test(runs, another_threads_purge_leaves_the_runs_lists_alone) {
  ta_run_t *r = run_to_shrink_when_due();
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, purge_as_the_background_thread, ta_tl_arena), 0);
  cr_assert_eq(pthread_join(t, NULL), 0);
  cr_assert_eq(atomic_load(&ta_tl_arena->purge_due), 0, "the purge ran");
  cr_assert_eq(r->limit, ta_run_cap(r) * r->bsize);
  cr_assert_eq(list_len(r->free), ta_run_cap(r) - 1);
  cr_assert_eq(run_resident(r), TA_RUN_SIZE);
  check_run(r);
}

/* Statistics over a shrunk run: its live block and free blocks, and the requested sizes of
 * the blocks carved again. */
Test(runs, statistics_follow_a_shrunk_run) {
  ta_stats_enable(1);
  ta_run_t *r = fill_run(40); /* 48-byte blocks */
  needs_runs_that_shrink();
  shrink_to_the_first_block(r);
  unsigned cls = r->cls;
  struct ta_stats s = {.version = TA_STATS_VERSION, .size = sizeof s};
  cr_assert_eq(ta_stats_get(&s, -1), 0);
  cr_assert_eq(s.classes[cls].live_blocks, 1);
  cr_assert_eq(s.classes[cls].free_blocks, 0, "no block threaded but the one in use");
  cr_assert_eq(s.classes[cls].requested_bytes, 40);
  for (uint32_t i = 1; i < ta_run_cap(r); i++)
    blocks[i] = ta_malloc(44);
  cr_assert_eq(ta_stats_get(&s, -1), 0);
  cr_assert_eq(s.classes[cls].live_blocks, ta_run_cap(r));
  cr_assert_eq(s.classes[cls].requested_bytes, 40 + (ta_run_cap(r) - 1) * 44);
  for (uint32_t k = 0; k < ta_run_cap(r); k++)
    ta_free(blocks[k]);
}

/* ---- huge pages for dense halves of small chunks (small.c, half_collapse_maybe) ---- */

/* Allocates `n` blocks of `size` bytes into out[from..from+n), each written through. */
static void alloc_blocks(void **out, size_t from, size_t n, size_t size) {
  for (size_t i = from; i < from + n; i++) {
    out[i] = ta_malloc(size);
    cr_assert_not_null(out[i]);
    memset(out[i], 0x5a, size);
  }
}

static void free_blocks(void **b, size_t from, size_t n) {
  for (size_t i = from; i < from + n; i++) {
    unsigned char *p = b[i];
    cr_assert(p[0] == 0x5a && p[ta_malloc_usable_size(p) - 1] == 0x5a, "block %zu intact", i);
    ta_free(p);
  }
}

/* The kernel's mode as `madvise`, collapses counted and answered `result` without the kernel
 * (what follows is then the same whatever this machine's kernel would do); skipped where a
 * huge page is not half a chunk, or pages are not 4 KiB (the figures below count them). */
static void huge_halves(int result) {
  cr_assert_neq(ta_page(), 0); /* started: the page sizes are the kernel's */
  if (ta_page_size != 4096 || ta_hugepage_size != TA_CHUNK_SIZE / 2)
    cr_skip_test("4 KiB pages and 2 MiB huge pages");
  ta_os_thp_mode_force(TA_THP_MADVISE);
  ta_os_collapse_fake(result);
  ta_huge_halves = 1; /* huge_halves:true */
}

/* 512-byte blocks (a class under 1 KiB: runs from its first block), 8 to a page, 128 to a
 * run; the arena's first chunk fills its slots from 1 up. */
#define A_SIZE 512
#define A_CAP 128
#define LOWER TA_THP_TRIED(0)
#define UPPER TA_THP_TRIED(1)

/* The bar, pinned to a page: the lower half's slots all in use, and its runs threaded to
 * all of it but one slot (the header's slot counts whole). */
Test(runs, a_half_becomes_one_huge_page_once_threaded_to_the_bar) {
  huge_halves(0);
  void **a = calloc(64 * A_CAP, sizeof *a), **b = calloc(256, sizeof *b);
  alloc_blocks(a, 0, 29 * A_CAP, A_SIZE); /* slots 1..29, threaded through */
  ta_chunk_t *c = ta_chunk_of(a[0]);
  cr_assert_eq(ta_run_of(a[29 * A_CAP - 1])->slot, 29);
  alloc_blocks(b, 0, 14 * 16, 256); /* slot 30: 14 of its 16 pages */
  cr_assert_eq(ta_run_of(b[0])->slot, 30);
  uint64_t before = ta_os_calls(TA_OS_COLLAPSE);
  /* Slot 31 taken, a page threaded: 64 + 29 * 64 + 56 + 4 = 1980 KiB, under the bar. */
  alloc_blocks(a, 29 * A_CAP, 1, A_SIZE);
  cr_assert_eq(ta_run_of(a[29 * A_CAP])->slot, 31);
  cr_assert_eq(c->free_slots & 0xfffffffeu, 0, "every slot of the lower half in use");
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before, "one page short of the bar");
  cr_assert_eq(c->thp, 0);
  /* Its second page: 1984 KiB, the bar. */
  alloc_blocks(a, 29 * A_CAP + 1, 8, A_SIZE);
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before + 1, "the lower half, at the bar");
  void *p;
  size_t n;
  ta_os_collapse_last(&p, &n);
  cr_assert(p == (void *)c && n == TA_CHUNK_SIZE / 2, "the lower half: %p %zu", p, n);
  cr_assert_eq(c->thp, LOWER);
  cr_assert_eq(ta_collapse_pending, 0, "made in the same call");
  /* More pages of the same half: not asked again. */
  alloc_blocks(a, 29 * A_CAP + 9, A_CAP - 9, A_SIZE);
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before + 1);
  /* The upper half, slots 32..63, threaded through: asked for it too. */
  alloc_blocks(a, 30 * A_CAP, 32 * A_CAP, A_SIZE);
  cr_assert_eq(ta_chunk_of(a[62 * A_CAP - 1]), c);
  cr_assert_eq(c->free_slots, 0, "the chunk is full");
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before + 2, "and the upper half");
  ta_os_collapse_last(&p, &n);
  cr_assert(p == (char *)c + TA_CHUNK_SIZE / 2 && n == TA_CHUNK_SIZE / 2);
  cr_assert_eq(c->thp, LOWER | UPPER);
  free_blocks(a, 0, 62 * A_CAP);
  free_blocks(b, 0, 14 * 16);
  free(a);
  free(b);
}

Test(runs, a_half_in_use_but_not_threaded_through_is_left_alone) {
  huge_halves(0);
  /* A run in each of the 31 classes under 1 KiB, one block each: slots 1..31 in use, a
   * page threaded in each. */
  void *one[32];
  for (unsigned k = 1; k <= 31; k++)
    alloc_blocks(one, k, 1, ta_class_size[k]);
  ta_chunk_t *c = ta_chunk_of(one[1]);
  cr_assert_eq(c->free_slots & 0xfffffffeu, 0, "every slot of the lower half in use");
  uint64_t before = ta_os_calls(TA_OS_COLLAPSE);
  /* One of them threaded to its end: the half is still far from dense. */
  void **b = calloc(A_CAP, sizeof *b);
  size_t cap = ta_run_cap(ta_run_of(one[31]));
  alloc_blocks(b, 0, cap - 1, ta_class_size[31]);
  cr_assert_eq(ta_run_of(one[31])->limit, cap * ta_run_of(one[31])->bsize, "threaded through");
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before);
  cr_assert_eq(c->thp, 0);
  free_blocks(b, 0, cap - 1);
  free_blocks(one, 1, 31);
  free(b);
}

/* Blocks over a page: threading one touches the page of its start only (its link and mark),
 * so a half of 8 KiB blocks threaded through has touched half its pages. */
Test(runs, a_half_of_blocks_over_a_page_counts_the_pages_their_starts_touched) {
  huge_halves(0);
  ta_run_threshold = 0; /* runs from the first block, for classes of 1 KiB and more too */
  uint64_t before = ta_os_calls(TA_OS_COLLAPSE);
  void **b = calloc(31 * 8, sizeof *b);
  for (size_t i = 0; i < 31 * 8; i++) {
    b[i] = ta_malloc(8192);
    cr_assert_not_null(b[i]);
    memset(b[i], 0x5a, 16); /* a buffer written a little */
  }
  ta_chunk_t *c = ta_chunk_of(b[0]);
  cr_assert_eq(ta_run_of(b[31 * 8 - 1])->slot, 31);
  cr_assert_eq(c->free_slots & 0xfffffffeu, 0, "every slot of the lower half in use");
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before, "1 MiB of 2 touched");
  for (size_t i = 0; i < 31 * 8; i++)
    ta_free(b[i]);
  free(b);
}

/* Fills the lower half of a fresh arena's first chunk densely (slots 1..31). */
static void **fill_lower_half(void) {
  void **b = calloc(64 * A_CAP, sizeof *b);
  alloc_blocks(b, 0, 31 * A_CAP, A_SIZE);
  cr_assert_eq(ta_run_of(b[31 * A_CAP - 1])->slot, 31);
  return b;
}

/* A dense lower half is not asked to be a huge page (`why`). */
static void assert_no_collapse(const char *why) {
  uint64_t before = ta_os_calls(TA_OS_COLLAPSE);
  void **b = fill_lower_half();
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before, "%s", why);
  free_blocks(b, 0, 31 * A_CAP);
  free(b);
}

Test(runs, no_collapse_without_huge_pages) {
  huge_halves(0);
  ta_os_thp_mode_force(TA_THP_NEVER);
  assert_no_collapse("the kernel gives none");
}

/* Where the kernel gives huge pages to everything (`always`), a chunk is told to have none
 * (it would commit 2 MiB at its first block); a dense half is made one all the same, allowed
 * them for the call and told not to have them again after it. */
Test(runs, with_huge_pages_always_on_chunks_refuse_them_but_dense_halves) {
  ta_os_thp_mode_force(TA_THP_ALWAYS); /* before the allocator starts: its map too */
  huge_halves(0);
  ta_os_thp_mode_force(TA_THP_ALWAYS);
  uint64_t collapses = ta_os_calls(TA_OS_COLLAPSE), advices = ta_os_calls(TA_OS_MADVISE);
  void **b = fill_lower_half();
  ta_chunk_t *c = ta_chunk_of(b[0]);
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), collapses + 1, "the dense half, made one");
  cr_assert_eq(ta_os_calls(TA_OS_MADVISE), advices + 2, "allowed, refused again");
  cr_assert(has_flag(c, "nh"), "the chunk refuses them, the half again (%s)", vm_flags(c));
  char *m = ta_malloc(300 * 1024); /* a medium chunk, fresh */
  cr_assert_eq(ta_map_get((uintptr_t)m), TA_MAP_MEDIUM);
  cr_assert(has_flag(m, "nh"), "a fresh chunk refuses huge pages (%s)", vm_flags(m));
  cr_assert(has_flag(ta_keys.map, "nh"), "so does the granule map");
  ta_free(m);
  free_blocks(b, 0, 31 * A_CAP);
  free(b);
}

Test(runs, no_collapse_with_the_setting_off) {
  huge_halves(0);
  ta_huge_pages = false; /* huge_pages:false */
  assert_no_collapse("huge_pages:false");
}

/* Dense halves are made huge pages only when asked, or where the kernel gives huge pages to
 * everything: not by default under `madvise`; asked for, the next carve of a dense half
 * makes it one. */
Test(runs, no_collapse_by_default_under_madvise) {
  int start = ta_huge_halves;
  cr_assert_eq(start, -1, "unset as the library starts: the kernel's mode decides");
  huge_halves(0); /* `madvise` */
  ta_huge_halves = start;
  cr_assert(ta_huge_pages);
  uint64_t before = ta_os_calls(TA_OS_COLLAPSE);
  void **b = calloc(64 * A_CAP, sizeof *b);
  alloc_blocks(b, 0, 31 * A_CAP - 8, A_SIZE); /* slots 1..31, all but slot 31's last page */
  ta_chunk_t *c = ta_chunk_of(b[0]);
  cr_assert_eq(ta_run_of(b[31 * A_CAP - 9])->slot, 31);
  cr_assert_eq(c->free_slots & 0xfffffffeu, 0, "every slot of the lower half in use");
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before, "dense, but huge_halves is unset");
  cr_assert_eq(c->thp, 0);
  ta_huge_halves = 1;                         /* huge_halves:true */
  alloc_blocks(b, 31 * A_CAP - 8, 8, A_SIZE); /* slot 31's last page: a carve */
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before + 1, "asked for: the dense half, made one");
  cr_assert_eq(c->thp, LOWER);
  free_blocks(b, 0, 31 * A_CAP);
  free(b);
}

Test(runs, under_always_dense_halves_are_collapsed_by_default) {
  int start = ta_huge_halves;
  ta_os_thp_mode_force(TA_THP_ALWAYS); /* before the allocator starts: its map too */
  huge_halves(0);
  ta_os_thp_mode_force(TA_THP_ALWAYS);
  ta_huge_halves = start;
  cr_assert_eq(start, -1);
  uint64_t before = ta_os_calls(TA_OS_COLLAPSE);
  void **b = fill_lower_half();
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before + 1, "huge_halves unset, mode `always`");
  ta_huge_halves = 0;                              /* huge_halves:false: not even there */
  alloc_blocks(b, 31 * A_CAP, 32 * A_CAP, A_SIZE); /* the upper half, threaded through */
  cr_assert_eq(ta_chunk_of(b[62 * A_CAP - 1]), ta_chunk_of(b[0]));
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before + 1, "huge_halves:false");
  free_blocks(b, 0, 63 * A_CAP);
  free(b);
}

/* Whether the kernel makes a dense 2 MiB of a fresh mapping one huge page now. */
static bool kernel_collapses(void) {
  char *probe = ta_os_mmap_aligned(TA_CHUNK_SIZE, TA_CHUNK_SIZE);
  cr_assert_not_null(probe);
  memset(probe, 1, TA_CHUNK_SIZE / 2);
  (void)ta_os_hugepage(probe, TA_CHUNK_SIZE / 2, true);
  bool can = ta_os_collapse(probe, TA_CHUNK_SIZE / 2) == 0;
  ta_os_munmap(probe, TA_CHUNK_SIZE);
  return can;
}

/* Real collapses while another thread frees blocks of the halves and trims: every block kept
 * keeps its bytes, and none is handed out twice (the kernel copies the pages; the halves'
 * marks, the pending collapse and the purges are the allocator's). */
enum { DENSE_N = 62 * A_CAP };
struct dense_job {
  void *b[DENSE_N];
  _Atomic size_t made; /* b[0..made) published */
  unsigned char tag;
};

static void *dense_fill(void *arg) {
  struct dense_job *j = arg;
  for (size_t i = 0; i < DENSE_N; i++) {
    unsigned char *p = ta_malloc(A_SIZE);
    if (p == NULL) return (void *)1;
    memset(p, j->tag, A_SIZE);
    j->b[i] = p;
    atomic_store_explicit(&j->made, i + 1, memory_order_release);
  }
  return NULL;
}

static void *dense_free_thirds(void *arg) {
  struct dense_job *jobs = arg;
  size_t next[2] = {0, 0}, frees = 0;
  while (next[0] < DENSE_N || next[1] < DENSE_N) {
    for (int k = 0; k < 2; k++) {
      size_t made = atomic_load_explicit(&jobs[k].made, memory_order_acquire);
      for (; next[k] < made; next[k]++)
        if (next[k] % 3 == 0) {
          ta_free(jobs[k].b[next[k]]);
          if (++frees % 512 == 0) ta_malloc_trim(0);
        }
    }
  }
  return NULL;
}

Test(runs, real_collapses_beside_remote_frees_and_trims_keep_every_block, .timeout = 60) {
  huge_halves(-1); /* the kernel's answer */
  if (!kernel_collapses()) cr_skip_test("the kernel collapses no range here");
  uint64_t before = ta_os_calls(TA_OS_COLLAPSE);
  struct dense_job *jobs = calloc(2, sizeof *jobs);
  cr_assert_not_null(jobs);
  jobs[0].tag = 0xa1;
  jobs[1].tag = 0xb2;
  pthread_t t[3];
  cr_assert_eq(pthread_create(&t[0], NULL, dense_fill, &jobs[0]), 0);
  cr_assert_eq(pthread_create(&t[1], NULL, dense_fill, &jobs[1]), 0);
  cr_assert_eq(pthread_create(&t[2], NULL, dense_free_thirds, jobs), 0);
  for (int k = 0; k < 3; k++) {
    void *ret;
    cr_assert_eq(pthread_join(t[k], &ret), 0);
    cr_assert_null(ret, "thread %d: out of memory", k);
  }
  cr_assert_geq(ta_os_calls(TA_OS_COLLAPSE), before + 1, "dense halves were collapsed");
  for (int k = 0; k < 2; k++)
    for (size_t i = 0; i < DENSE_N; i++) {
      if (i % 3 == 0) continue;
      const unsigned char *p = jobs[k].b[i];
      for (size_t x = 0; x < A_SIZE; x++)
        cr_assert_eq(p[x], jobs[k].tag, "thread %d's block %zu, byte %zu", k, i, x);
    }
  /* None handed out twice: a new block of the class overlaps no block kept. */
  void *extra[256];
  for (size_t e = 0; e < 256; e++) {
    extra[e] = ta_malloc(A_SIZE);
    cr_assert_not_null(extra[e]);
    memset(extra[e], 0, A_SIZE);
  }
  for (int k = 0; k < 2; k++)
    for (size_t i = 1; i < DENSE_N; i += 3) {
      cr_assert_eq(((unsigned char *)jobs[k].b[i])[0], jobs[k].tag, "block %zu untouched", i);
      ta_free(jobs[k].b[i]);
      if (i + 1 < DENSE_N) ta_free(jobs[k].b[i + 1]);
    }
  for (size_t e = 0; e < 256; e++)
    ta_free(extra[e]);
  free(jobs);
}

/* The same with the kernel's collapse (Linux 6.1): a chunk told to have no huge pages could
 * not be collapsed (EINVAL), so the half is allowed them for the call. The half is one huge
 * page after it, and refuses them again. Skipped where the kernel cannot collapse a range
 * (too old, or no huge page to be had now). */
Test(runs, with_huge_pages_always_the_kernel_collapses_a_dense_half) {
  ta_os_thp_mode_force(TA_THP_ALWAYS);
  huge_halves(-1); /* the kernel's answer */
  ta_os_thp_mode_force(TA_THP_ALWAYS);
  if (!kernel_collapses()) cr_skip_test("the kernel collapses no range here");
  uint64_t collapses = ta_os_calls(TA_OS_COLLAPSE);
  void **b = fill_lower_half();
  ta_chunk_t *c = ta_chunk_of(b[0]);
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), collapses + 1);
  long kb = vm_field_kb(c, "AnonHugePages:");
  if (kb == 0 && !kernel_collapses()) cr_skip_test("no huge page to be had now");
  cr_assert_eq(kb, 2048, "the half is one huge page");
  cr_assert(has_flag(c, "nh"), "and refuses them again (%s)", vm_flags(c));
  free_blocks(b, 0, 31 * A_CAP);
  free(b);
}

/* A run of the half retiring leaves the huge page whole: not asked again. Pages of the half
 * going back split it (here a trim): asked again once the half is dense again. */
Test(runs, a_half_is_asked_again_only_after_pages_of_it_went_back) {
  huge_halves(0);
  void **b = fill_lower_half();
  ta_chunk_t *c = ta_chunk_of(b[0]);
  uint64_t before = ta_os_calls(TA_OS_COLLAPSE);
  cr_assert_eq(c->thp, LOWER);
  free_blocks(b, 0, A_CAP); /* slot 1's run retires */
  cr_assert(c->free_slots & 2);
  alloc_blocks(b, 0, A_CAP, A_SIZE); /* slot 1 again, still resident */
  cr_assert_eq(ta_run_of(b[0])->slot, 1);
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before, "the huge page was never split");
  free_blocks(b, 0, A_CAP);
  ta_malloc_trim(0); /* its pages go back: the huge page is split */
  cr_assert_eq(c->thp, 0);
  alloc_blocks(b, 0, A_CAP, A_SIZE);
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before + 1, "dense again");
  cr_assert_eq(c->thp, LOWER);
  free_blocks(b, 0, 31 * A_CAP);
  free(b);
}

/* The decay purge gives a retired slot of a half made one huge page back like any other: the
 * huge page is split, and the half may be asked again once dense again. */
Test(runs, a_purged_slot_of_a_huge_half_splits_it) {
  huge_halves(0);
  void **b = fill_lower_half();
  ta_arena_t *a = ta_tl_arena;
  ta_chunk_t *c = ta_chunk_of(b[0]);
  cr_assert_eq(c->thp, LOWER);
  free_blocks(b, 0, A_CAP); /* slot 1's run retires */
  cr_assert(c->dirty_slots & 2);
  cr_assert_eq(c->thp, LOWER, "a retire alone leaves the huge page whole");
  ta_dirty_forget_demand(a); /* nothing held back for the demand */
  ta_arena_purge(a, ta_os_now_ms() + 10 * ta_decay_ms + 1000, TA_PURGE_AGED, ta_decay_ms, false);
  cr_assert_eq(c->dirty_slots & 2, 0, "given back");
  cr_assert_eq(c->thp, 0, "split");
  free_blocks(b, A_CAP, 30 * A_CAP);
  free(b);
}

/* The owner's shrink of a run's free pages splits its half too. */
Test(runs, a_run_shrunk_in_a_huge_half_splits_it) {
  huge_halves(0);
  void **b = fill_lower_half();
  ta_chunk_t *c = ta_chunk_of(b[0]);
  ta_run_t *r = ta_run_of(b[0]);
  cr_assert_eq(c->thp, LOWER);
  free_blocks(b, 1, A_CAP - 1); /* slot 1's run keeps its first block */
  cr_assert_gt(ta_small_shrink(ta_tl_arena), 0);
  cr_assert_lt(r->limit, A_CAP * r->bsize);
  cr_assert_eq(c->thp, 0, "split");
  free_blocks(b, 0, 1);
  free_blocks(b, A_CAP, 30 * A_CAP);
  free(b);
}

/* Slots given back across the middle of a chunk split both halves. */
Test(runs, pages_going_back_across_the_middle_split_both_halves) {
  ta_chunk_t *c = calloc(1, sizeof *c);
  c->thp = LOWER | UPPER;
  ta_chunk_thp_lost(c, 31, 2);
  cr_assert_eq(c->thp, 0);
  c->thp = LOWER | UPPER;
  ta_chunk_thp_lost(c, 30, 2);
  cr_assert_eq(c->thp, UPPER);
  c->thp = LOWER | UPPER;
  ta_chunk_thp_lost(c, 32, 32);
  cr_assert_eq(c->thp, LOWER);
  free(c);
}

Test(runs, a_refused_collapse_is_not_asked_again_and_loses_nothing) {
  huge_halves(EAGAIN); /* none to be had now */
  void **b = fill_lower_half();
  ta_chunk_t *c = ta_chunk_of(b[0]);
  cr_assert_eq(c->thp, LOWER, "asked");
  uint64_t before = ta_os_calls(TA_OS_COLLAPSE);
  /* A run of the half threaded through again after a retire: not asked again. */
  free_blocks(b, 0, A_CAP);
  alloc_blocks(b, 0, A_CAP, A_SIZE);
  cr_assert_eq(ta_run_of(b[0])->slot, 1);
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before);
  /* The upper half is asked all the same: a refusal for now is not for good. */
  alloc_blocks(b, 31 * A_CAP, 32 * A_CAP, A_SIZE);
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before + 1);
  free_blocks(b, 0, 63 * A_CAP);
  free(b);
}

/* The report says what huge_halves did: the halves made huge pages and those refused (a
 * user cannot tell otherwise), in the text once any was asked, in the JSON always. */
Test(runs, the_report_counts_halves_collapsed_and_refused) {
  huge_halves(0);
  char *text = captured(ta_stats_print, 0), *json = captured(ta_stats_print, 1);
  cr_assert_null(strstr(text, "halves of small chunks"), "none asked yet: no line\n%s", text);
  cr_assert(strstr(json, "\"halves_collapsed\":0,\"halves_refused\":0,"), "%s", json);
  free(text);
  free(json);
  void **b = fill_lower_half(); /* the lower half, made one */
  ta_os_collapse_fake(EAGAIN);  /* none to be had for the upper */
  alloc_blocks(b, 31 * A_CAP, 32 * A_CAP, A_SIZE);
  cr_assert_eq(ta_chunk_of(b[0])->thp, LOWER | UPPER, "both halves asked");
  text = captured(ta_stats_print, 0);
  json = captured(ta_stats_print, 1);
  cr_assert(strstr(text, "huge pages: halves of small chunks collapsed 1, refused 1; "), "%s",
            text);
  cr_assert(strstr(json, "\"halves_collapsed\":1,\"halves_refused\":1,\"collapse_us\":"), "%s",
            json);
  free(text);
  free(json);
  free_blocks(b, 0, 63 * A_CAP);
  free(b);
}

/* Under `always` the half is first allowed huge pages (the chunk refuses them): that advice
 * refused, the half is left as it is, and the report counts a refusal, with no collapse. */
Test(runs, under_always_a_refused_advice_counts_as_a_refusal) {
  ta_os_thp_mode_force(TA_THP_ALWAYS); /* before the allocator starts: its map too */
  huge_halves(0);
  ta_os_thp_mode_force(TA_THP_ALWAYS);
  void **b = calloc(64 * A_CAP, sizeof *b);
  alloc_blocks(b, 0, 30 * A_CAP, A_SIZE); /* slots 1..30 threaded through, slot 31 free */
  uint64_t collapses = ta_os_calls(TA_OS_COLLAPSE);
  ta_os_fail(TA_OS_MADVISE, 0, 1);
  alloc_blocks(b, 30 * A_CAP, 1, A_SIZE); /* slot 31's first carve: the half is dense */
  ta_os_fail(0, 0, 0);
  cr_assert_eq(ta_run_of(b[30 * A_CAP])->slot, 31);
  alloc_blocks(b, 30 * A_CAP + 1, A_CAP - 1, A_SIZE);
  cr_assert_eq(ta_chunk_of(b[0])->thp, LOWER, "asked");
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), collapses, "no collapse without the advice");
  cr_assert_eq(atomic_load(&ta_collapse_refused), 1);
  cr_assert_eq(atomic_load(&ta_collapse_made), 0);
  char *json = captured(ta_stats_print, 1);
  cr_assert(strstr(json, "\"halves_collapsed\":0,\"halves_refused\":1,"), "%s", json);
  free(json);
  free_blocks(b, 0, 31 * A_CAP);
  free(b);
}

/* A kernel without the advice, or a process not allowed huge pages, refuses for good: nothing
 * is asked again. */
Test(runs, a_refusal_for_good_turns_collapses_off) {
  huge_halves(EINVAL);
  void **b = fill_lower_half();
  uint64_t before = ta_os_calls(TA_OS_COLLAPSE);
  alloc_blocks(b, 31 * A_CAP, 32 * A_CAP, A_SIZE); /* the upper half, dense */
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before, "not asked");
  cr_assert_eq(ta_chunk_of(b[0])->thp, LOWER);
  free_blocks(b, 0, 63 * A_CAP);
  free(b);
}

/* The budget: 20 ms ahead of 1% of the time since the first collapse. */
Test(runs, past_the_collapse_budget_a_dense_half_waits) {
  huge_halves(0);
  ta_collapse_first_us = (uint64_t)1 << 62; /* the pace stays 0 */
  ta_collapse_spent_us = 20000;             /* all of the 20 ms spent */
  uint64_t before = ta_os_calls(TA_OS_COLLAPSE);
  void **b = fill_lower_half();
  ta_chunk_t *c = ta_chunk_of(b[0]);
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before, "no call");
  cr_assert_eq(c->thp, 0, "looked at again at the next carve");
  ta_collapse_spent_us = 19999; /* a microsecond left */
  free_blocks(b, 0, A_CAP);     /* slot 1 retires, and is taken again: a carve in the half */
  alloc_blocks(b, 0, 8, A_SIZE);
  cr_assert_eq(ta_run_of(b[0])->slot, 1);
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before + 1, "asked once there is budget");
  cr_assert_eq(c->thp, LOWER);
  free_blocks(b, 0, 8);
  free_blocks(b, A_CAP, 30 * A_CAP);
  free(b);
}

/* Saved credit is capped: after 10 s with nothing spent, spending starts 20 ms short of the
 * pace, not 10 s * 1% = 100 ms short. */
Test(runs, the_collapse_budget_saves_20_ms_at_most) {
  huge_halves(0);
  ta_collapse_first_us = ta_os_now_us() - 10000000; /* 10 s ago: a pace of 100 ms */
  ta_collapse_spent_us = 0;
  void **b = fill_lower_half();
  cr_assert_eq(ta_chunk_of(b[0])->thp, LOWER);
  cr_assert_geq(ta_collapse_spent_us, 80000, "raised to the pace less 20 ms");
  free_blocks(b, 0, 31 * A_CAP);
  free(b);
}

Test(runs, a_half_with_a_free_slot_is_not_collapsed) {
  huge_halves(0);
  void **a = calloc(31 * A_CAP, sizeof *a), **b = calloc(256, sizeof *b);
  alloc_blocks(a, 0, 29 * A_CAP, A_SIZE); /* slots 1..29, threaded through */
  ta_chunk_t *c = ta_chunk_of(a[0]);
  alloc_blocks(b, 0, 1, 256);             /* slot 30: a page */
  alloc_blocks(a, 29 * A_CAP, 1, A_SIZE); /* slot 31: a page */
  cr_assert_eq(ta_run_of(b[0])->slot, 30);
  cr_assert_eq(ta_run_of(a[29 * A_CAP])->slot, 31);
  cr_assert_eq(c->thp, 0, "full, not dense");
  free_blocks(a, 0, A_CAP); /* slot 1's run retires */
  cr_assert(c->free_slots & 2, "slot 1 is free");
  uint64_t before = ta_os_calls(TA_OS_COLLAPSE);
  /* Slot 30's run threaded through: with slot 1's, the pages threaded would reach the bar. */
  alloc_blocks(b, 1, 255, 256);
  cr_assert_eq(ta_run_of(b[255])->slot, 30);
  cr_assert_eq(ta_os_calls(TA_OS_COLLAPSE), before, "a slot of the half holds nothing");
  cr_assert_eq(c->thp, 0);
  free_blocks(a, A_CAP, 28 * A_CAP + 1);
  free_blocks(b, 0, 256);
  free(a);
  free(b);
}

/* An empty chunk reused while resident keeps its halves' bits (the huge pages are still
 * there); reused for medium blocks, or after its pages went back, it starts without. */
static ta_chunk_t *empty_resident_chunk_with_a_huge_half(void) {
  void **b = fill_lower_half();
  alloc_blocks(b, 31 * A_CAP, 1, 256); /* slot 32 */
  ta_chunk_t *c = ta_chunk_of(b[0]);
  cr_assert_eq(c->thp, LOWER);
  alloc_blocks(b, 31 * A_CAP + 1, 1, A_SIZE);
  free_blocks(b, 0, 31 * A_CAP + 2); /* every run retires but the current ones */
  ta_small_retire_idle(ta_tl_arena, true); /* the current runs too */
  cr_assert_eq(ta_map_get((uintptr_t)c), TA_MAP_NONE, "empty");
  cr_assert_eq(c->decommitted, 0, "kept resident");
  cr_assert_eq(c->thp, LOWER);
  free(b);
  return c;
}

Test(runs, a_resident_chunk_reused_for_runs_keeps_its_huge_halves) {
  huge_halves(0);
  ta_chunk_t *c = empty_resident_chunk_with_a_huge_half();
  void *p = ta_malloc(A_SIZE);
  cr_assert_eq(ta_chunk_of(p), c, "reused");
  cr_assert_eq(c->thp, LOWER, "still one huge page");
  ta_free(p);
}

Test(runs, a_resident_chunk_reused_for_medium_blocks_has_no_huge_halves) {
  huge_halves(0);
  ta_chunk_t *c = empty_resident_chunk_with_a_huge_half();
  void *p = ta_malloc(20000);
  cr_assert_eq(ta_chunk_of(p), c, "reused");
  cr_assert_eq(c->thp, 0);
  ta_free(p);
}

Test(runs, a_chunk_whose_pages_went_back_has_no_huge_halves) {
  huge_halves(0);
  ta_chunk_t *c = empty_resident_chunk_with_a_huge_half();
  ta_arena_t *a = ta_tl_arena;
  ta_dirty_forget_demand(a);
  atomic_fetch_add(&ta_stats_readers, 1); /* as while statistics are read: no unmapping */
  ta_arena_purge(a, ta_os_now_ms() + 10 * ta_decay_ms + 1000, TA_PURGE_AGED, ta_decay_ms, true);
  atomic_fetch_sub(&ta_stats_readers, 1);
  cr_assert(c->decommitted, "given back, kept");
  void *p = ta_malloc(A_SIZE);
  cr_assert_eq(ta_chunk_of(p), c, "reused");
  cr_assert_eq(c->thp, 0);
  ta_free(p);
}
