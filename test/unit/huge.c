/* Unit tests: huge blocks — own mappings, the cache of freed spans, mremap growth. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "tamalloc.h"
#include "tatest.h"

#define MiB ((size_t)1 << 20)

Test(huge, mapped_on_its_own_with_meta_block_at_granule_start) {
  char *p = ta_malloc(3 * MiB);
  cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_HUGE);
  ta_huge_t *h = ta_huge_hdr_checked(p, TA_MAP_HUGE, "test");
  cr_assert_eq((uintptr_t)h % TA_CHUNK_SIZE, 0);
  cr_assert_eq((char *)h + h->data_off, p);
  cr_assert_eq(ta_malloc_usable_size(p), ta_align_up(64 + 3 * MiB, 4096) - 64,
               "usable ends at the page that holds the request's end");
  memset(p, 1, ta_malloc_usable_size(p));
  char *odd = ta_malloc(3 * MiB + 4033);
  cr_assert_eq(ta_malloc_usable_size(odd), 3 * MiB + 8192 - 64);
  ta_free(odd);
  ta_free(p);
}

Test(huge, freed_span_is_cached_and_reused) {
  char *p = ta_malloc(6 * MiB);
  ta_huge_t *h = ta_huge_hdr_checked(p, TA_MAP_HUGE, "test");
  ta_free(p);
  cr_assert_eq(ta_huge_cached_count(), 1, "kept, not unmapped");
  cr_assert_eq(ta_huge_cached_bytes(), h->map_size);
  cr_assert_eq(atomic_load(&h->state), HUGE_CACHED);
  size_t span = h->map_size;
  char *q = ta_malloc(5 * MiB);
  cr_assert_eq(q, p, "best fit reuses the cached span");
  cr_assert_eq(h->map_size, span, "the span keeps its size: nothing is forgotten");
  cr_assert_eq(ta_malloc_usable_size(q), ta_align_up(64 + 5 * MiB, 4096) - 64,
               "usable: the request rounded to a page, not the span");
  cr_assert_eq(ta_huge_cached_count(), 0);
  ta_free(q);
}

Test(huge, much_larger_cached_span_is_trimmed) {
  char *p = ta_malloc(40 * MiB);
  ta_free(p);
  char *q = ta_malloc(2 * MiB);
  cr_assert_eq(q, p);
  ta_huge_t *h = ta_huge_hdr_checked(q, TA_MAP_HUGE, "test");
  cr_assert_leq(h->map_size, TA_CHUNK_SIZE, "tail given back: one granule is left");
  ta_free(q);
}

Test(huge, cache_is_bounded_in_bytes) {
  char *p[40];
  for (int i = 0; i < 40; i++) p[i] = ta_malloc(2 * MiB + (size_t)i * 4096);
  for (int i = 0; i < 40; i++) ta_free(p[i]);
  cr_assert_leq(ta_huge_cached_bytes(), ta_huge_cache_limit);
  cr_assert_gt(ta_huge_cached_count(), 0);
  cr_assert_eq(ta_malloc_trim(0), 1);
  cr_assert_eq(ta_huge_cached_count(), 0);
  cr_assert_eq(ta_huge_cached_bytes(), 0);
}

static void *alloc_big(void *arg) {
  (void)arg;
  return ta_malloc(9 * MiB);
}

Test(huge, span_freed_by_one_thread_serves_another) {
  pthread_t t;
  void *p;
  pthread_create(&t, NULL, alloc_big, NULL);
  pthread_join(t, &p);
  ta_free(p); /* freed here, allocated there */
  pthread_create(&t, NULL, alloc_big, NULL);
  void *q;
  pthread_join(t, &q);
  cr_assert_eq(q, p, "the cache is shared by all threads");
  ta_free(q);
}

Test(huge, cached_spans_go_back_after_the_decay) {
  void *p = ta_malloc(12 * MiB);
  ta_free(p);
  cr_assert_eq(ta_huge_cached_count(), 1);
  usleep((useconds_t)(ta_decay_ms + 50) * 1000);
  ta_free(ta_malloc(2 * MiB)); /* any huge call notices what is due */
  cr_assert_eq(ta_huge_cached_count(), 1, "only the span just freed is left");
  cr_assert_leq(ta_huge_cached_bytes(), 4 * MiB);
}

Test(huge, realloc_grows_without_copying_and_keeps_contents) {
  size_t n = 2 * MiB;
  unsigned char *p = ta_malloc(n);
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 31);
  for (int step = 0; step < 6; step++) {
    size_t m = n * 2;
    unsigned char *q = ta_realloc(p, m);
    cr_assert_not_null(q);
    for (size_t i = 0; i < n; i += 4093) cr_assert_eq(q[i], (unsigned char)(i * 31));
    for (size_t i = n; i < m; i++) q[i] = (unsigned char)(i * 31);
    p = q;
    n = m;
    cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_HUGE);
  }
  ta_free(p);
}

Test(huge, alignment_beyond_a_chunk) {
  for (size_t al = 4 * MiB; al <= 64 * MiB; al *= 2) {
    char *p = ta_memalign(al, 100);
    cr_assert_not_null(p);
    cr_assert_eq((uintptr_t)p % al, 0);
    cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_HUGE_AL);
    p[0] = 1;
    ta_free(p);
    cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_NONE, "unmapped, not cached");
  }
}

Test(huge, double_free_aborts, .signal = SIGABRT) {
  void *p = ta_malloc(2 * MiB);
  ta_free(p);
  ta_free(p);
}

Test(huge, interior_pointer_aborts, .signal = SIGABRT) {
  char *p = ta_malloc(2 * MiB);
  ta_free(p + 4096);
}

Test(huge, realloc_of_a_freed_block_aborts, .signal = SIGABRT) {
  char *p = ta_malloc(3 * MiB);
  ta_free(p); /* cached, still mapped */
  ta_realloc(p, 5 * MiB);
}

Test(huge, usable_size_of_a_freed_block_aborts, .signal = SIGABRT) {
  char *p = ta_malloc(3 * MiB);
  ta_free(p);
  ta_malloc_usable_size(p);
}

Test(huge, growth_after_huge_pages_is_not_a_copy) {
  /* Huge pages are asked for on part of a span, which splits its mapping; growing it must
   * still be done by the kernel (in place or moved), and keep every byte. */
  size_t n = 6 * MiB;
  unsigned char *p = ta_malloc(n);
  for (size_t i = 0; i < n; i += 4096) p[i] = (unsigned char)(i >> 12);
  unsigned char *q = ta_realloc(p, 40 * MiB);
  cr_assert_not_null(q);
  for (size_t i = 0; i < n; i += 4096) cr_assert_eq(q[i], (unsigned char)(i >> 12));
  ta_free(q);
}

/* ---- the cache's tallies under concurrent puts and takes ---------------------------- */

static _Atomic int tally_stop;

static void *cycle_spans(void *arg) {
  unsigned seed = (unsigned)(uintptr_t)arg;
  int rounds = TT_SANITIZER ? 3000 : 30000;
  void *held = NULL;
  for (int i = 0; i < rounds; i++) {
    seed = seed * 1103515245u + 12345u;
    /* Spans of one to three granules, so that puts over the limit evict. */
    size_t size = (size_t)((seed >> 16) % 3) * TA_CHUNK_SIZE + 2 * MiB;
    void *p = ta_malloc(size);
    if (p == NULL) abort(); /* not an assertion: this is not the test's thread */
    if ((seed >> 24) & 1) {
      ta_free(held); /* keep one block across rounds now and then: takes meet puts */
      held = p;
    } else {
      ta_free(p);
    }
  }
  ta_free(held);
  return NULL;
}

static void *sample_tally(void *arg) {
  size_t *worst = arg;
  while (!atomic_load_explicit(&tally_stop, memory_order_relaxed)) {
    size_t b = ta_huge_cached_bytes();
    if (b > *worst) *worst = b;
  }
  return NULL;
}

Test(huge, tallies_never_wrap_or_pass_the_limit_under_concurrent_puts_and_takes) {
  ta_huge_cache_limit = 6 * TA_CHUNK_SIZE; /* room for a few spans only: puts evict */
  enum { T = 6 };
  pthread_t w[T], s;
  size_t worst = 0;
  pthread_create(&s, NULL, sample_tally, &worst);
  for (int i = 0; i < T; i++) pthread_create(&w[i], NULL, cycle_spans, (void *)(uintptr_t)(i + 1));
  for (int i = 0; i < T; i++) pthread_join(w[i], NULL);
  atomic_store(&tally_stop, 1);
  pthread_join(s, NULL);
  cr_assert_leq(worst, ta_huge_cache_limit,
                "the cached-bytes tally reached %zu (limit %zu): it wrapped below zero or "
                "passed the limit",
                worst, ta_huge_cache_limit);
  size_t n = 0, sum = ta_huge_cache_sum(&n);
  cr_assert_eq(ta_huge_cached_bytes(), sum, "tally %zu, spans in the slots %zu",
               ta_huge_cached_bytes(), sum);
  cr_assert_eq(ta_huge_cached_count(), n);
}
