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

/* ---- spare chunks: an arena without a resident empty chunk takes one another arena does not
 * need (chunk.c, "Spare chunks") before it asks the kernel. */

enum { SPARE_BLOCKS = 12, SPARE_BLOCK = 1000 << 10 }; /* four to a chunk: three chunks */

typedef struct {
  ta_chunk_t *chunks[SPARE_BLOCKS];
  ta_arena_t *arena;
  _Atomic int freed, go, spin;
} spare_t;
static pthread_mutex_t spare_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t spare_cv = PTHREAD_COND_INITIALIZER;

/* Allocates and frees a few chunks' worth of medium blocks, then waits: blocked, or running
 * (spinning) when asked to. */
static void *free_then_wait(void *arg) {
  spare_t *s = arg;
  void *b[SPARE_BLOCKS];
  for (int i = 0; i < SPARE_BLOCKS; i++) {
    b[i] = ta_malloc(SPARE_BLOCK);
    memset(b[i], 1, SPARE_BLOCK);
    s->chunks[i] = ta_chunk_of(b[i]);
  }
  for (int i = 0; i < SPARE_BLOCKS; i++) ta_free(b[i]);
  s->arena = ta_tl_arena;
  atomic_store(&s->freed, 1);
  if (atomic_load(&s->spin)) {
    while (!atomic_load(&s->go)) {
    }
    return NULL;
  }
  pthread_mutex_lock(&spare_mu);
  while (!atomic_load(&s->go)) pthread_cond_wait(&spare_cv, &spare_mu);
  pthread_mutex_unlock(&spare_mu);
  return NULL;
}

static void spare_go(spare_t *s) {
  pthread_mutex_lock(&spare_mu);
  atomic_store(&s->go, 1);
  pthread_cond_broadcast(&spare_cv);
  pthread_mutex_unlock(&spare_mu);
}

static bool one_of(const spare_t *s, ta_chunk_t *c) {
  for (int i = 0; i < SPARE_BLOCKS; i++)
    if (s->chunks[i] == c) return true;
  return false;
}

/* A blocked thread's empty chunks serve another thread's new blocks, kept resident, and no
 * chunk comes from the kernel for them. */
Test(pool, a_blocked_threads_empty_chunks_serve_another_thread) {
  main_arena();
  static spare_t s;
  pthread_t t;
  pthread_create(&t, NULL, free_then_wait, &s);
  while (!atomic_load(&s.freed)) usleep(1000);
  /* Until it is blocked (it may still be on its way to the wait on a loaded machine). */
  while (ta_os_thread_runs(atomic_load(&s.arena->owner_tid))) usleep(1000);
  size_t before = s.arena->dirty_bytes;
  cr_assert_geq(before, 2 * TA_CHUNK_SIZE, "the thread kept its empty chunks: %zu", before);
  uint64_t taken = atomic_load(&ta_chunks_taken_over);
  void *b[SPARE_BLOCKS];
  int reused = 0;
  for (int i = 0; i < SPARE_BLOCKS; i++) {
    b[i] = ta_malloc(SPARE_BLOCK);
    memset(b[i], 2, SPARE_BLOCK);
    reused += one_of(&s, ta_chunk_of(b[i]));
  }
  cr_assert_geq(atomic_load(&ta_chunks_taken_over) - taken, 2);
  cr_assert_geq(reused, 8, "%d of %d blocks in the other thread's chunks", reused, SPARE_BLOCKS);
  ta_chunk_t *fresh[SPARE_BLOCKS];
  int nfresh = 0;
  for (int i = 0; i < SPARE_BLOCKS; i++) {
    ta_chunk_t *c = ta_chunk_of(b[i]);
    bool seen = one_of(&s, c);
    for (int k = 0; k < nfresh && !seen; k++) seen = fresh[k] == c;
    if (!seen) fresh[nfresh++] = c;
  }
  cr_assert_leq(nfresh, 1, "%d chunks new to this test", nfresh);
  ta_slow_enter(s.arena);
  cr_assert_lt(s.arena->dirty_bytes, before, "counted out of the arena that gave them");
  ta_slow_leave(s.arena);
  for (int i = 0; i < SPARE_BLOCKS; i++) ta_free(b[i]);
  spare_go(&s);
  pthread_join(t, NULL);
}

/* A thread that runs keeps what it drew lately: its chunks are not taken. */
Test(pool, a_running_threads_empty_chunks_stay_with_it) {
  main_arena();
  static spare_t s;
  atomic_store(&s.spin, 1);
  pthread_t t;
  pthread_create(&t, NULL, free_then_wait, &s);
  while (!atomic_load(&s.freed)) usleep(1000);
  uint64_t taken = atomic_load(&ta_chunks_taken_over);
  void *b[SPARE_BLOCKS];
  int reused = 0;
  for (int i = 0; i < SPARE_BLOCKS; i++) {
    b[i] = ta_malloc(SPARE_BLOCK);
    reused += one_of(&s, ta_chunk_of(b[i]));
  }
  spare_go(&s);
  pthread_join(t, NULL);
  cr_assert_eq(atomic_load(&ta_chunks_taken_over) - taken, 0);
  cr_assert_eq(reused, 0, "%d blocks in the running thread's chunks", reused);
  for (int i = 0; i < SPARE_BLOCKS; i++) ta_free(b[i]);
}
