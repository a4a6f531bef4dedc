/* Unit tests: runs of small blocks — carving, FULL/PARTIAL transitions, retirement,
 * the chunk map, and the invariants written in internal.h. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "tamalloc.h"

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
  cr_assert_leq(r->limit / r->bsize, r->cap);
  for (const ta_block_t *b = r->free; b; b = ta_block_next(b))
    cr_assert_eq(b->key, ta_mark(b), "free block %p unmarked", (void *)b);
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
  cr_assert_eq(r->limit, TA_PAGE_SIZE, "one page threaded, not the whole run");
  ta_free(p);
}

Test(runs, full_run_leaves_lists_and_comes_back_as_partial) {
  size_t bs = 4096;
  void *first = ta_malloc(bs);
  ta_run_t *r = ta_run_of(first);
  size_t cap = r->cap;
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
  /* A live block whose second word happens to hold its mark is freed normally. */
  ta_block_t *b = ta_malloc(32);
  b->key = ta_mark(b);
  ta_free(b);
  void *c = ta_malloc(32);
  cr_assert_eq(c, b);
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

Test(runs, pointer_past_carved_blocks_aborts, .signal = SIGABRT) {
  char *p = ta_malloc(128);
  ta_run_t *r = ta_run_of(p);
  ta_free(ta_run_base(r) + r->limit); /* a block boundary never handed out */
}

Test(runs, block_carved_but_never_handed_out_aborts, .signal = SIGABRT) {
  char *p = ta_malloc(128);
  ta_free(p + 128); /* on the list, marked: freeing it would put it there twice */
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
