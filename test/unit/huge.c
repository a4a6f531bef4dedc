/* Unit tests: huge blocks — own mappings, the cache of freed spans, mremap growth. */
#include <criterion/criterion.h>
#include <signal.h>
#include <string.h>

#include "internal.h"
#include "tamalloc.h"

#define MiB ((size_t)1 << 20)

Test(huge, mapped_on_its_own_with_meta_block_at_granule_start) {
  char *p = ta_malloc(3 * MiB);
  cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_HUGE);
  ta_huge_t *h = ta_huge_hdr_checked(p, TA_MAP_HUGE, "test");
  cr_assert_eq((uintptr_t)h % TA_CHUNK_SIZE, 0);
  cr_assert_eq((char *)h + h->data_off, p);
  cr_assert_geq(ta_malloc_usable_size(p), 3 * MiB);
  memset(p, 1, ta_malloc_usable_size(p));
  ta_free(p);
}

Test(huge, freed_span_is_cached_and_reused) {
  char *p = ta_malloc(6 * MiB);
  ta_huge_t *h = ta_huge_hdr_checked(p, TA_MAP_HUGE, "test");
  ta_free(p);
  cr_assert_eq(ta_tl_arena->huge_cache, h, "kept, not unmapped");
  cr_assert_eq(atomic_load(&h->state), HUGE_CACHED);
  size_t span = h->map_size;
  char *q = ta_malloc(5 * MiB);
  cr_assert_eq(q, p, "best fit reuses the cached span");
  cr_assert_eq(h->map_size, span, "the span keeps its size: nothing is forgotten");
  cr_assert_eq(ta_malloc_usable_size(q), span - h->data_off);
  cr_assert_null(ta_tl_arena->huge_cache);
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

Test(huge, cache_is_bounded) {
  char *p[12];
  for (int i = 0; i < 12; i++) p[i] = ta_malloc(2 * MiB + (size_t)i * 4096);
  for (int i = 0; i < 12; i++) ta_free(p[i]);
  cr_assert_leq(ta_tl_arena->huge_cached_count, 8);
  size_t n = 0, bytes = 0;
  for (ta_huge_t *h = ta_tl_arena->huge_cache; h; h = h->next) n++, bytes += h->map_size;
  cr_assert_eq(n, ta_tl_arena->huge_cached_count);
  cr_assert_eq(bytes, ta_tl_arena->huge_cached_bytes);
  cr_assert_eq(ta_malloc_trim(0), 1);
  cr_assert_null(ta_tl_arena->huge_cache);
  cr_assert_eq(ta_tl_arena->huge_cached_bytes, 0);
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
