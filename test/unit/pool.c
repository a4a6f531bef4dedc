/* Unit tests: the process-wide pool of break chunks given back whole (chunk.c). An empty break
 * chunk below the top of the heap goes back header and all, and the next chunk any arena needs
 * is that one, not more break; once the break comes down to it, it goes back to the kernel. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "support/heap_map_text.h"
#include "tamalloc.h"

enum { MEDIUM = 200000 };

/* A thread's medium block: a chunk of the thread's own arena. The thread frees it and exits,
 * so that chunk is empty and ownerless. */
static void *take_chunk(void *arg) {
  void *block = ta_malloc(MEDIUM);
  cr_assert_not_null(block);
  memset(block, 1, MEDIUM);
  *(ta_chunk_t **)arg = ta_chunk_of(block);
  ta_free(block);
  return NULL;
}

/* The main thread's arena first, so that the threads' ownerless arenas are not its; and no
 * purge but malloc_trim's (a slow test must not see the empty chunk go before it looks). */
static void *main_arena(void) {
  ta_decay_ms = 600000;
  void *p = ta_malloc(16);
  cr_assert_not_null(p);
  return p;
}

static ta_chunk_t *in_thread(void) {
  ta_chunk_t *c = NULL;
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, take_chunk, &c), 0);
  cr_assert_eq(pthread_join(t, NULL), 0);
  return c;
}

static bool map_says(const char *line) { return strstr(heap_map_text(), line) != NULL; }

Test(pool, a_break_chunk_below_the_top_goes_back_whole_and_is_reused_by_another_arena) {
  ta_chunk_use_brk(true);
  void *small = main_arena();
  ta_chunk_t *first = in_thread(); /* empty, its arena ownerless */
  cr_assert(first->from_brk);
  void *mine = ta_malloc(MEDIUM); /* a chunk above it: the first is not the top */
  ta_chunk_t *above = ta_chunk_of(mine);
  cr_assert_gt((uintptr_t)above, (uintptr_t)first);
  ta_malloc_trim(0);
  cr_assert_eq(ta_os_resident(first, TA_CHUNK_SIZE), 0, "its header page went back too");
  char want[96];
  snprintf(want, sizeof want, "pooled 0x%lx %u\n", (unsigned long)(uintptr_t)first,
           (unsigned)TA_CHUNK_SIZE);
  cr_assert(map_says(want), "no \"%s\" in the map", want);

  /* The main thread's arena needs another medium chunk: the pooled one, and the break does not
   * move. */
  void *brk_before = sbrk(0);
  enum { BIG = 900000, N = 8 };
  char *big[N];
  ta_chunk_t *next = above;
  int i = 0;
  for (; i < N && next == above; i++) {
    big[i] = ta_malloc(BIG);
    cr_assert_not_null(big[i]);
    memset(big[i], 2, BIG);
    next = ta_chunk_of(big[i]);
  }
  cr_assert_eq(next, first, "took %p, the pool held %p", (void *)next, (void *)first);
  cr_assert_eq(sbrk(0), brk_before);
  cr_assert_not(map_says(want), "taken from the pool, it is no longer listed as pooled");
  while (i > 0) ta_free(big[--i]);
  ta_free(mine);
  ta_free(small);
  ta_chunk_use_brk(false);
}

Test(pool, the_break_comes_down_past_pooled_chunks) {
  ta_chunk_use_brk(true);
  void *small = main_arena();
  ta_chunk_t *first = in_thread();
  void *mine = ta_malloc(MEDIUM);
  ta_chunk_t *above = ta_chunk_of(mine);
  ta_malloc_trim(0); /* the first into the pool */
  cr_assert_eq(ta_os_resident(first, TA_CHUNK_SIZE), 0);
  ta_free(mine);
  /* The process's other malloc (the test framework's, the thread's start) may have moved the
   * break between or above our chunks: then there is nothing to see here. */
  if (sbrk(0) != (char *)above + TA_CHUNK_SIZE || (char *)first + TA_CHUNK_SIZE != (char *)above)
    cr_skip_test("the break moved between or above our chunks");
  ta_malloc_trim(0);
  cr_assert_eq(sbrk(0), (void *)first, "the break came down past the pooled chunk");
  ta_free(small);
  ta_chunk_use_brk(false);
}
