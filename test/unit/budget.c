/* Unit tests: the budget of free resident memory without the purger thread. A call whose
 * frees take all arenas over dirty_max_kb gives the arena's oldest excess back before it
 * returns, wherever in the call the memory became free: a free (small or medium), the remote
 * frees a slow path takes in, a thread's exit. (The lower layers only mark the arena,
 * dirty.c; its holder gives the excess back: alloc.c, purge.c.) */
#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>

#include "internal.h"
#include "tamalloc.h"

#define BLOCK ((size_t)1000 << 10) /* medium: three to a chunk */
#define BLOCKS 18                  /* six chunks, 24 MiB */

static size_t dirty(void) { return atomic_load(&ta_dirty_total); }

/* Nothing becomes due by time while a test runs; two chunks of free memory at most. */
static void settings(void) {
  ta_decay_ms = 600000;
  ta_dirty_max = (size_t)8 << 20;
  cr_assert_not(ta_bg_running());
}

static void fill(void **b, size_t n, size_t size) {
  for (size_t i = 0; i < n; i++) {
    b[i] = ta_malloc(size);
    cr_assert_not_null(b[i]);
    memset(b[i], 1, size);
  }
}

Test(budget, medium_frees_stay_within_it) {
  settings();
  void *b[BLOCKS];
  fill(b, BLOCKS, BLOCK);
  for (int i = 0; i < BLOCKS; i++) {
    ta_free(b[i]);
    cr_assert_leq(dirty(), ta_dirty_max, "after free %d: %zu bytes free and resident", i, dirty());
  }
}

Test(budget, small_frees_stay_within_it) {
  settings();
  enum { N = 5 * 63 * 8 }; /* five chunks of 8 KiB blocks */
  static void *b[N];
  fill(b, N, 8192);
  for (int i = 0; i < N; i++) {
    ta_free(b[i]);
    cr_assert_leq(dirty(), ta_dirty_max, "after free %d: %zu bytes free and resident", i, dirty());
  }
}

static void *free_all(void *arg) {
  void **b = arg;
  for (int i = 0; i < BLOCKS; i++) ta_free(b[i]);
  return NULL;
}

Test(budget, remote_frees_taken_in_stay_within_it) {
  settings();
  void *b[BLOCKS];
  fill(b, BLOCKS, BLOCK);
  pthread_t t;
  pthread_create(&t, NULL, free_all, b); /* onto this thread's remote list */
  pthread_join(t, NULL);
  cr_assert_leq(dirty(), ta_dirty_max);
  void *p = ta_malloc(BLOCK); /* takes them in */
  cr_assert_leq(dirty(), ta_dirty_max, "%zu bytes free and resident", dirty());
  ta_free(p);
}

struct handover {
  void *b[BLOCKS];
  pthread_barrier_t filled, freed;
};

static void *fill_and_exit(void *arg) {
  struct handover *h = arg;
  fill(h->b, BLOCKS, BLOCK);
  pthread_barrier_wait(&h->filled);
  pthread_barrier_wait(&h->freed); /* the main thread freed them: they wait on our list */
  return NULL;                     /* the exit takes them in, then gives the arena up */
}

Test(budget, a_thread_exit_stays_within_it) {
  settings();
  static struct handover h;
  pthread_barrier_init(&h.filled, NULL, 2);
  pthread_barrier_init(&h.freed, NULL, 2);
  pthread_t t;
  pthread_create(&t, NULL, fill_and_exit, &h);
  pthread_barrier_wait(&h.filled);
  free_all(h.b);
  cr_assert_leq(dirty(), ta_dirty_max);
  pthread_barrier_wait(&h.freed);
  pthread_join(t, NULL);
  cr_assert_leq(dirty(), ta_dirty_max, "%zu bytes free and resident", dirty());
}
