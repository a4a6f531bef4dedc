/* Unit tests: huge blocks — own mappings, the cache of freed spans, mremap growth. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "tamalloc.h"
#include "tatest.h"
#include "vmflags.h"

#define MiB ((size_t)1 << 20)

/* The tests below check the advice as it is where the host leaves the memory the kernel keeps
 * free alone, whatever this machine's host does; those of a host that reclaims it (free page
 * reporting: no huge pages up front) say so. */
static void host_leaves_free_memory(void) { ta_os_host_reclaims_force(0); }
TestSuite(huge, .init = host_leaves_free_memory);

Test(huge, mapped_on_its_own_with_meta_block_at_granule_start) {
  char *p = ta_malloc(3 * MiB);
  cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_HUGE);
  ta_huge_t *h = ta_huge_hdr_checked(p, TA_MAP_HUGE, "test");
  cr_assert_eq((uintptr_t)h % TA_CHUNK_SIZE, 0);
  cr_assert_eq((char *)h + h->data_off, p);
  cr_assert_eq(ta_malloc_usable_size(p),
               ta_align_up(TA_HUGE_HDR + 3 * MiB, ta_page_size) - TA_HUGE_HDR,
               "usable ends at the page that holds the request's end");
  memset(p, 1, ta_malloc_usable_size(p));
  char *odd = ta_malloc(3 * MiB + 4033);
  cr_assert_eq(ta_malloc_usable_size(odd),
               ta_align_up(TA_HUGE_HDR + 3 * MiB + 4033, ta_page_size) - TA_HUGE_HDR);
  ta_free(odd);
  ta_free(p);
}

static void write_all(char *p, size_t n);
static long minor_faults(void);
static char *wall_after(const ta_huge_t *h);

Test(huge, freed_span_is_cached_and_reused) {
  char *p = ta_malloc(6 * MiB);
  ta_huge_t *h = ta_huge_hdr_checked(p, TA_MAP_HUGE, "test");
  write_all(p, 6 * MiB); /* a span written through counts its whole size in the cache */
  ta_free(p);
  cr_assert_eq(ta_huge_cached_count(), 1, "kept, not unmapped");
  cr_assert_eq(ta_huge_cached_bytes(), h->map_size);
  cr_assert_eq(atomic_load(&h->state), HUGE_CACHED);
  size_t span = h->map_size;
  char *q = ta_malloc(5 * MiB);
  cr_assert_eq(q, p, "best fit reuses the cached span");
  cr_assert_eq(h->map_size, span, "the span keeps its size: nothing is forgotten");
  cr_assert_eq(ta_malloc_usable_size(q),
               ta_align_up(TA_HUGE_HDR + 5 * MiB, ta_page_size) - TA_HUGE_HDR,
               "usable: the request rounded to a page, not the span");
  cr_assert_eq(ta_huge_cached_count(), 0);
  ta_free(q);
}

/* A block of n bytes written through (not found sparse: a sparse span is kept whole, below)
 * and freed into the cache, its span with huge pages (advice taken even where the kernel's
 * mode is `never`): returns its address. Skips the test where the kernel takes no advice. */
static char *cached_span_with_huge_pages(size_t n) {
  if (ta_os_thp_mode() == TA_THP_NEVER) ta_os_thp_mode_force(TA_THP_MADVISE);
  char *p = ta_malloc(n);
  write_all(p, n);
  ta_free(p);
  if (!(ta_huge_hdr_checked(p, TA_MAP_HUGE, "test")->thp & HUGE_ADVISED))
    cr_skip_test("the kernel took no advice: no huge pages");
  return p;
}

/* With huge pages: a span without them keeps its excess where the cache has room (below). */
Test(huge, much_larger_cached_span_is_trimmed) {
  char *p = cached_span_with_huge_pages(40 * MiB);
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
  cr_assert_leq(ta_huge_cached_bytes(), ta_huge_cache_room());
  cr_assert_gt(ta_huge_cached_count(), 0);
  cr_assert_eq(ta_malloc_trim(0), 1);
  cr_assert_eq(ta_huge_cached_count(), 0);
  cr_assert_eq(ta_huge_cached_bytes(), 0);
}

/* A program with more live in huge blocks than the setting keeps as many bytes of freed spans
 * as it has live (address space), up to 8 times the setting. Blocks of 8 MiB less a page
 * take 8 MiB each, written through so that each weighs its size. */
enum { LIVE_SPANS = 24 };
static void alloc_written(char **p, int n) {
  for (int i = 0; i < n; i++) {
    p[i] = ta_malloc(8 * MiB - 4096);
    cr_assert_not_null(p[i]);
    write_all(p[i], 8 * MiB - 4096);
  }
}

Test(huge, the_cache_keeps_as_much_as_is_live_in_huge_blocks_past_the_setting) {
  cr_assert_eq(ta_huge_cache_limit, 64 * MiB);
  char *p[LIVE_SPANS];
  alloc_written(p, LIVE_SPANS);
  cr_assert_eq(ta_huge_mapped(), LIVE_SPANS * 8 * MiB);
  cr_assert_eq(ta_huge_cache_room(), LIVE_SPANS * 8 * MiB, "as much as is live");
  ta_huge_cache_limit = 16 * MiB;
  cr_assert_eq(ta_huge_cache_room(), 128 * MiB, "8 times the setting at most");
  ta_huge_cache_limit = 64 * MiB;
  for (int i = 0; i < LIVE_SPANS / 2; i++)
    ta_free(p[i]);
  cr_assert_eq(ta_huge_cached_count(), LIVE_SPANS / 2, "every span freed kept, not 8 of them");
  cr_assert_eq(ta_huge_cached_bytes(), LIVE_SPANS / 2 * 8 * MiB);
  cr_assert_eq(ta_huge_mapped(), LIVE_SPANS * 8 * MiB, "nothing unmapped");
  /* The other half freed: the cache shrinks with what is live, to the setting once none is. */
  for (int i = LIVE_SPANS / 2; i < LIVE_SPANS; i++)
    ta_free(p[i]);
  cr_assert_eq(ta_huge_cached_bytes(), ta_huge_mapped(), "no huge block live");
  cr_assert_leq(ta_huge_cached_bytes(), ta_huge_cache_room());
  cr_assert_leq(ta_huge_cached_bytes(), 64 * MiB, "%zu MiB kept with nothing live",
                ta_huge_cached_bytes() / MiB);
  cr_assert_eq(ta_huge_cache_sum(), ta_huge_cached_bytes());
  ta_malloc_trim(0);
  cr_assert_eq(ta_huge_cached_bytes(), 0);
  cr_assert_eq(ta_huge_mapped(), 0);
}

/* huge_cache_mb set: that is the limit, however much is live; 0 keeps nothing. */
Test(huge, a_cache_size_set_is_the_limit_however_much_is_live) {
  ta_conf_apply("huge_cache_mb:32");
  cr_assert_eq(ta_huge_cache_limit, 32 * MiB);
  char *p[LIVE_SPANS];
  alloc_written(p, LIVE_SPANS);
  cr_assert_eq(ta_huge_cache_room(), 32 * MiB);
  for (int i = 0; i < LIVE_SPANS / 2; i++)
    ta_free(p[i]);
  cr_assert_eq(ta_huge_cached_bytes(), 32 * MiB, "4 spans of 8 MiB, not 12");
  ta_conf_apply("huge_cache_mb:0");
  for (int i = LIVE_SPANS / 2; i < LIVE_SPANS; i++)
    ta_free(p[i]);
  cr_assert_eq(ta_huge_cache_room(), 0);
  cr_assert_eq(ta_huge_cached_bytes(), 0, "none added, and the first free emptied it");
  cr_assert_eq(ta_huge_mapped(), 0);
}

/* Neither the cache nor the span on its way in raise the limit, and a put brings the cache
 * down to a limit that has fallen: a span cached while another was live goes once that one is
 * freed and nothing is live. */
Test(huge, the_cache_falls_back_to_the_setting_once_nothing_is_live) {
  ta_huge_cache_limit = 16 * MiB;
  char *a = ta_malloc(24 * MiB - 4096), *b = ta_malloc(24 * MiB - 4096);
  write_all(a, 24 * MiB - 4096);
  write_all(b, 24 * MiB - 4096);
  cr_assert_eq(ta_huge_mapped(), 48 * MiB);
  ta_free(a);
  cr_assert_eq(ta_huge_cached_bytes(), 24 * MiB, "b is live: a kept");
  ta_free(b);
  cr_assert_eq(ta_huge_cached_bytes(), 0, "nothing live: neither kept over the 16 MiB set");
  cr_assert_eq(ta_huge_mapped(), 0);
}

Test(huge, a_cache_limit_of_0_keeps_nothing_however_much_is_live) {
  ta_huge_cache_limit = 0; /* no cache, whatever ta_huge_cache_grows says */
  char *p[LIVE_SPANS];
  alloc_written(p, LIVE_SPANS);
  cr_assert_eq(ta_huge_cache_room(), 0);
  for (int i = 0; i < LIVE_SPANS; i++)
    ta_free(p[i]);
  cr_assert_eq(ta_huge_cached_count(), 0);
  cr_assert_eq(ta_huge_mapped(), 0);
}

/* The count of the spans' address space follows every change of a span's size: a fresh
 * mapping, a cut of a far larger cached span, a growth into a request, realloc in place and
 * moved, a free into the cache and an unmap. */
Test(huge, the_count_of_huge_address_space_follows_every_change) {
  char *a = cached_span_with_huge_pages(40 * MiB); /* cut when reused for far less */
  cr_assert_eq(ta_huge_mapped(), ta_huge_hdr_checked(a, TA_MAP_HUGE, "test")->map_size);
  char *b = ta_malloc(6 * MiB); /* the cached span, cut */
  cr_assert_eq(b, a);
  ta_huge_t *h = ta_huge_hdr_checked(b, TA_MAP_HUGE, "test");
  cr_assert_eq(ta_huge_mapped(), h->map_size);
  char *c = ta_malloc(3 * MiB);
  size_t both = h->map_size + ta_huge_hdr_checked(c, TA_MAP_HUGE, "test")->map_size;
  cr_assert_eq(ta_huge_mapped(), both);
  size_t c_size = ta_huge_hdr_checked(c, TA_MAP_HUGE, "test")->map_size;
  b = ta_realloc(b, 20 * MiB); /* grows in place, where the kernel can */
  h = ta_huge_hdr_checked(b, TA_MAP_HUGE, "test");
  cr_assert_eq(ta_huge_mapped(), h->map_size + c_size, "%zu MiB counted, %zu + %zu mapped",
               ta_huge_mapped() / MiB, h->map_size / MiB, c_size / MiB);
  char *wall = wall_after(h); /* nothing can grow in place past it: moved */
  char *moved = ta_realloc(b, 40 * MiB); /* more than a move above would have made room for */
  cr_assert_neq(moved, b, "moved");
  if (wall != MAP_FAILED) munmap(wall, 4096);
  b = moved;
  h = ta_huge_hdr_checked(b, TA_MAP_HUGE, "test");
  cr_assert_eq(ta_huge_mapped(), h->map_size + c_size, "%zu MiB counted, %zu + %zu mapped",
               ta_huge_mapped() / MiB, h->map_size / MiB, c_size / MiB);
  ta_free(c);
  ta_malloc_trim(0); /* c's span unmapped */
  cr_assert_eq(ta_huge_mapped(), h->map_size);
  write_all(b, 30 * MiB);
  ta_free(b);
  char *d = ta_malloc(50 * MiB); /* nothing big enough: the largest grows into it */
  cr_assert_eq(ta_huge_mapped(), ta_huge_hdr_checked(d, TA_MAP_HUGE, "test")->map_size);
  ta_free(d);
  ta_malloc_trim(0);
  cr_assert_eq(ta_huge_cached_bytes(), 0);
  cr_assert_eq(ta_huge_mapped(), 0, "%zu bytes still counted", ta_huge_mapped());
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

/* ---- the cache's tally under concurrent puts and takes ------------------------------ */

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

Test(huge, tally_never_wraps_or_passes_the_limit_under_concurrent_puts_and_takes) {
  ta_huge_cache_limit = 6 * TA_CHUNK_SIZE; /* room for a few spans only: puts evict */
  ta_huge_cache_grows = false;             /* as huge_cache_mb sets it: the tally's bound */
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
  size_t sum = ta_huge_cache_sum();
  cr_assert_eq(ta_huge_cached_bytes(), sum, "tally %zu, spans in the slots %zu",
               ta_huge_cached_bytes(), sum);
}

/* ---- huge pages only where they pay; no system call in steady state ------------------ */

#define ALL_OS_CALLS                                                                               \
  (TA_OS_SBRK | TA_OS_MMAP | TA_OS_MUNMAP | TA_OS_MADVISE | TA_OS_MREMAP | TA_OS_MINCORE |         \
   TA_OS_COMMIT | TA_OS_COLLAPSE)

static void write_all(char *p, size_t n) {
  for (size_t i = 0; i < n; i += 4096) p[i] = (char)(i >> 12 | 1);
  p[n - 1] = 1;
}
static void write_sparse(char *p, size_t n) {
  memset(p, 7, 8192);
  for (size_t i = 256 * 1024; i < n; i += 256 * 1024) p[i] = 7;
}

Test(huge, cycling_same_size_blocks_makes_no_system_call_after_warm_up) {
  ta_decay_ms = 600000; /* nothing becomes due for purging while the test runs */
  enum { LIVE = 3 };
  size_t n = 12 * MiB;
  char *p[LIVE] = {0};
  for (int round = 0; round < 4; round++) /* warm-up: map, write, judge */
    for (int k = 0; k < LIVE; k++) {
      ta_free(p[k]);
      p[k] = ta_malloc(n);
      write_all(p[k], n);
    }
  uint64_t before = ta_os_calls(ALL_OS_CALLS);
  for (int round = 0; round < 50; round++)
    for (int k = 0; k < LIVE; k++) {
      ta_free(p[k]);
      p[k] = ta_malloc(n);
      write_all(p[k], n);
    }
  uint64_t made = ta_os_calls(ALL_OS_CALLS) - before;
  cr_assert_eq(made, 0, "%llu system calls for 150 frees and mallocs of cached spans",
               (unsigned long long)made);
  for (int k = 0; k < LIVE; k++) ta_free(p[k]);
}

Test(huge, fresh_mapping_without_history_gets_no_huge_pages) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return; /* nothing to ask for on this kernel */
  char *p = ta_malloc(12 * MiB);
  write_sparse(p, 12 * MiB);
  cr_assert_not(has_flag(p, "hg"), "a block nobody knows the use of: no huge pages (%s)",
                vm_flags(p));
  ta_free(p);
}

Test(huge, written_through_span_gets_huge_pages_once_when_freed) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  ta_decay_ms = 600000;
  size_t n = 12 * MiB;
  char *p = ta_malloc(n);
  write_all(p, n);
  ta_free(p);
  cr_assert(has_flag(p, "hg"), "dense span advised on its way into the cache (%s)", vm_flags(p));
  uint64_t before = ta_os_calls(TA_OS_MADVISE | TA_OS_MINCORE);
  for (int i = 0; i < 20; i++) {
    char *q = ta_malloc(n);
    cr_assert_eq(q, p);
    write_all(q, n);
    ta_free(q);
  }
  cr_assert_eq(ta_os_calls(TA_OS_MADVISE | TA_OS_MINCORE), before, "advised once per mapping");
}

Test(huge, sparsely_used_span_gets_no_huge_pages) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  size_t n = 12 * MiB;
  char *p = ta_malloc(n);
  write_sparse(p, n);
  ta_free(p);
  cr_assert_not(has_flag(p, "hg"), "%s", vm_flags(p));
  char *q = ta_malloc(n); /* the same span: still a fault per page touched */
  cr_assert_eq(q, p);
  cr_assert_not(has_flag(q, "hg"), "%s", vm_flags(q));
  ta_free(q);
}

/* A block of 4 MiB and five of our pages (1,029 of the kernel's with 4 KiB pages: not a
 * multiple of 8, so the last ones lie past mincore's answer read eight pages at a time), written
 * in every page but a quarter of them and `more` (the header's page written by us), is freed:
 * was it found dense (huge pages asked for)? Its span served a larger block first, which wrote
 * the 7 pages past its end alone: they stay resident, past the pages the verdict counts but
 * within the look (which reaches the span's dirty_end, for the share), so that a count that ran
 * past the block's last page would be seen too. */
static bool dense_with_unwritten(size_t more) {
  ta_decay_ms = 600000;
  ta_free(ta_malloc(1)); /* initialised: the page size set */
  size_t kpage = ta_os_page_size(), end = 4 * MiB + 5 * ta_page_size, pages = end / kpage;
  size_t unwritten = pages / 4 + more;
  char *big = ta_malloc(end + 8 * kpage - TA_HUGE_HDR);
  for (size_t i = 0; i < 7; i++)
    big[end + i * kpage - TA_HUGE_HDR] = 1;
  ta_free(big); /* the span's first look: sparse, looked at again at its second free from now */
  char *p = NULL;
  for (int round = 0; round < 2; round++) {
    p = ta_malloc(end - TA_HUGE_HDR - 100);
    cr_assert_eq(p, big, "the span found sparse serves the smaller block whole");
    ta_huge_t *h = ta_huge_hdr_checked(p, TA_MAP_HUGE, "test");
    cr_assert_eq(ta_align_up(h->data_off + h->requested, ta_page_size), end);
    for (size_t i = 1; i < pages; i++) /* pages [16, 16 + unwritten) stay untouched */
      if (i < 16 || i >= 16 + unwritten) p[i * kpage - TA_HUGE_HDR] = 1;
    ta_free(p);
  }
  cr_assert_eq(ta_huge_cached_count(), 1);
  cr_assert_geq(ta_os_resident(p - TA_HUGE_HDR + end, 7 * kpage), 7 * kpage,
                "the pages past the block's end are still there");
  cr_log_info("%zu of %zu pages unwritten", unwritten, pages);
  return has_flag(p, "hg");
}

/* Dense is "at most a quarter of the pages unwritten", counted over every page of the look. */
Test(huge, a_block_unwritten_in_a_quarter_of_its_pages_is_found_dense) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  cr_assert(dense_with_unwritten(0));
}
Test(huge, a_block_unwritten_in_one_page_more_than_a_quarter_is_found_sparse) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  cr_assert_not(dense_with_unwritten(1));
}

Test(huge, sparse_blocks_hold_only_the_pages_they_touch) {
  /* 16 blocks of 1 to 12 MiB, each written in its first 8 KiB and a byte every 256 KiB. */
  char *p[16];
  size_t touched = 0;
  size_t start = ((size_t)tt_rss_kib() * 1024);
  for (int i = 0; i < 16; i++) {
    size_t n = MiB + (size_t)i * 11 * MiB / 15 + 4096 * (size_t)i;
    p[i] = ta_malloc(n);
    write_sparse(p[i], n);
    touched += 8192 + (n - 1) / (256 * 1024) * 4096;
  }
  size_t grown = ((size_t)tt_rss_kib() * 1024) - start;
  cr_assert_leq(grown, 3 * touched + 8 * MiB, "resident set grew %zu KiB for %zu KiB touched",
                grown / 1024, touched / 1024);
  for (int i = 0; i < 16; i++) ta_free(p[i]);
}

/* Spans found sparse: see huge.c, "sparse_kept". Their verdicts need a kernel with huge
 * pages; without them nothing is looked at and every span is treated as written through. */
static size_t span_resident(const char *data, size_t n) {
  return ta_os_resident(data - TA_HUGE_HDR, n + TA_HUGE_HDR);
}

Test(huge, span_found_sparse_counts_its_resident_share_in_the_cache) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  ta_decay_ms = 600000;
  char *p = ta_malloc(12 * MiB); /* a span of 16 MiB */
  ta_huge_t *h = ta_huge_hdr_checked(p, TA_MAP_HUGE, "test");
  write_sparse(p, 12 * MiB);
  ta_free(p);
  cr_assert_eq(ta_huge_cached_count(), 1);
  cr_assert_eq(ta_huge_cached_bytes(), h->map_size / 8,
               "49 of 3,072 pages resident: an eighth of the span, the least it counts (%zu KiB)",
               ta_huge_cached_bytes() / 1024);
  cr_assert_eq(ta_huge_cache_sum(), ta_huge_cached_bytes());
  char *q = ta_malloc(12 * MiB);
  cr_assert_eq(q, p);
  cr_assert_eq(ta_huge_cached_bytes(), 0, "taken out at the weight it was put in at");
  write_all(q, 12 * MiB);
  ta_free(q); /* not looked at so soon after the first look: nothing known, its whole size */
  cr_assert_eq(ta_huge_cached_bytes(), h->map_size, "written through since its look");
  q = ta_malloc(12 * MiB);
  cr_assert_eq(q, p);
  ta_free(q); /* looked at: written through, its whole size */
  cr_assert_eq(ta_huge_cached_bytes(), h->map_size);
}

Test(huge, span_found_sparse_is_reused_whole_with_its_pages) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  ta_decay_ms = 600000;
  char *p = ta_malloc(12 * MiB); /* a span of 16 MiB */
  ta_huge_t *h = ta_huge_hdr_checked(p, TA_MAP_HUGE, "test");
  size_t span = h->map_size;
  write_sparse(p, 12 * MiB);
  ta_free(p); /* looked at: sparse */
  uint64_t before = ta_os_calls(ALL_OS_CALLS);
  char *q = ta_malloc(3 * MiB); /* needs 4 MiB: a quarter of the span */
  uint64_t made = ta_os_calls(ALL_OS_CALLS) - before;
  cr_assert_eq(q, p);
  cr_assert_eq(h->map_size, span, "not cut down to the request");
  cr_assert_geq(ta_os_resident((char *)h + 8 * MiB, 4 * MiB), 16 * 4096,
                "the stride beyond the request stays resident");
  write_sparse(q, 3 * MiB);
  before = ta_os_calls(ALL_OS_CALLS); /* the look above was a system call of the test's */
  ta_free(q); /* not looked at again so soon */
  long faults = minor_faults();
  char *r = ta_malloc(12 * MiB);
  cr_assert_eq(r, p);
  write_sparse(r, 12 * MiB);
  faults = minor_faults() - faults;
  made += ta_os_calls(ALL_OS_CALLS) - before;
  cr_assert_eq(made, 0, "reused twice with no system call");
  cr_assert_leq(faults, 2, "the larger block finds its stride resident: %ld faults", faults);
  ta_free(r);
}

Test(huge, spans_found_sparse_keep_at_most_half_the_cache_limit) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  ta_decay_ms = 600000;
  ta_huge_cache_limit = 24 * MiB; /* spans found sparse may keep 12 MiB */
  enum { SPANS = 10 };
  char *p[SPANS];
  for (int i = 0; i < SPANS; i++) {
    p[i] = ta_malloc(12 * MiB); /* spans of 16 MiB */
    for (size_t o = 0; o < 12 * MiB; o += 8 * 4096) p[i][o] = 1; /* an eighth of its pages */
  }
  /* Each is found sparse when freed, keeping 8/64 of 16 MiB: 2 MiB by the estimate (1.5 MiB
   * in fact). Six fit in 12 MiB; the others are emptied. All stay in the cache, which counts
   * each at 2 MiB. */
  for (int i = 0; i < SPANS; i++) ta_free(p[i]);
  cr_assert_eq(ta_huge_cached_count(), SPANS);
  size_t total = 0;
  int emptied = 0;
  for (int i = 0; i < SPANS; i++) {
    size_t r = span_resident(p[i], 12 * MiB);
    total += r;
    emptied += r <= 8 * 4096; /* a page in each 2 MiB a page table maps, at most (below) */
  }
  cr_assert_geq(emptied, 3, "%d of %d spans emptied", emptied, SPANS);
  cr_assert_leq(total, 12 * MiB, "spans found sparse hold %zu KiB", total / 1024);
}

/* Emptied, a span keeps the first resident page of each stretch that one page table maps, so
 * that the kernel does not free the tables (see huge.c, empty_but_tables). Residency is in the
 * kernel's pages, whatever page the allocator uses (page_kb). */
static void check_emptied_span_keeps_one_page_a_table(void) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  size_t kpage = ta_os_page_size(), table = ta_os_hugepage_size(), n = 12 * MiB;
  if (table > 2 * MiB) return; /* a span of 16 MiB spans several tables with 4 KiB pages only */
  ta_decay_ms = 600000;
  ta_huge_cache_limit = 8 * MiB; /* spans found sparse may keep 4 MiB */
  char *p = ta_malloc(n);        /* a span of 16 MiB */
  ta_huge_t *h = ta_huge_hdr_checked(p, TA_MAP_HUGE, "test");
  /* The header's page, and every other page from the second stretch's third page on: about
   * 7 MiB kept by the look's estimate, over the 4 allowed. */
  p[0] = 1;
  for (size_t o = table + 2 * kpage; o + TA_HUGE_HDR < n; o += 2 * kpage)
    p[o - TA_HUGE_HDR] = 1;
  long pte = tt_status_kib("VmPTE:");
  ta_free(p);
  cr_assert_eq(ta_huge_cached_count(), 1, "kept in the cache");
  cr_assert_eq(ta_huge_cache_sum(), ta_huge_cached_bytes());
  cr_assert_eq(h->resident64, 1);
  for (size_t r = 0; r < h->map_size; r += table) {
    size_t held = ta_os_resident((char *)h + r, table);
    size_t kept = r == 0 ? 0 : r == table ? r + 2 * kpage : r < n ? r : SIZE_MAX; /* 1st written */
    if (kept == SIZE_MAX) {
      cr_assert_eq(held, 0, "the stretch at %zu MiB was never written", r / MiB);
      continue;
    }
    cr_assert_eq(held, kpage, "the stretch at %zu MiB holds %zu KiB", r / MiB, held / 1024);
    cr_assert_eq(ta_os_resident((char *)h + kept, kpage), kpage,
                 "the stretch at %zu MiB keeps its first resident page", r / MiB);
  }
  cr_assert_geq(tt_status_kib("VmPTE:"), pte, "no page table freed (%ld KiB, were %ld)",
                tt_status_kib("VmPTE:"), pte);
  cr_assert_eq(h->dirty_end, (n - 1) / table * table + ta_page_size,
               "resident up to the last page kept: %zu", h->dirty_end);
}

Test(huge, an_emptied_span_keeps_one_page_a_page_table) {
  check_emptied_span_keeps_one_page_a_table();
}

Test(huge, an_emptied_span_keeps_one_page_a_page_table_with_larger_pages) {
  ta_conf_apply("page_kb:16");
  check_emptied_span_keeps_one_page_a_table();
}

static long minor_faults(void) {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

/* Whether the kernel drops ranges in a batch (ta_os_decommit_batch), asked on a mapping of
 * the test's own. */
static bool batch_works(void) {
  size_t kpage = ta_os_page_size();
  char *m = ta_os_mmap(4 * kpage);
  cr_assert_not_null(m);
  m[0] = m[2 * kpage] = 1;
  ta_os_range_t r[2] = {{m, kpage}, {m + 2 * kpage, kpage}};
  bool ok = ta_os_decommit_batch(r, 2) == 0;
  if (ok) cr_assert_eq(ta_os_resident(m, 4 * kpage), 0, "the batch dropped both pages");
  ta_os_munmap(m, 4 * kpage);
  return ok;
}

/* A span found sparse, reused by blocks of many sizes that each write every other page and
 * their own last 24 pages, with the spans found sparse allowed just what its first look found:
 * at each later look the pages new since the last one that took pages (the ends of the blocks
 * between) go, the rest stays (no fault to have it again), and the span is not emptied whole.
 * (Both fail if the history is ignored, or if every such look empties the span.)
 * Without the history the span would be emptied of every page but one a page table, the
 * stride with them; without the emptying either, the ends would stay. */
static void check_new_pages_go_and_the_stride_stays(void) {
  if (ta_os_thp_mode() == TA_THP_NEVER) cr_skip_test("no huge pages: nothing is looked at");
  if (!batch_works()) cr_skip_test("the kernel drops no batch of ranges");
  size_t kpage = ta_os_page_size(), stride = 2 * kpage, tail = 24 * kpage, step = 33 * kpage;
  ta_decay_ms = 600000;
  ta_huge_cache_limit = 64 * MiB;
  char *first = NULL;
  ta_huge_t *h = NULL;
  size_t pattern = 0;
  for (int i = 0; i < 7; i++) {
    size_t n = 6 * MiB - (size_t)i * step; /* in the same span of 8 MiB: best fit */
    char *p = ta_malloc(n);
    cr_assert_not_null(p);
    if (i == 0) {
      first = p;
      h = ta_huge_hdr_checked(p, TA_MAP_HUGE, "test");
    }
    cr_assert_eq(p, first, "block %d reuses the span", i);
    /* Blocks 3 and 6 follow looks that took pages (after blocks 2 and 6 would, as after 1):
     * the stride is resident still, no fault to have it again. (Resident pages, not faults
     * counted: a sanitizer's shadow memory faults too.) */
    if (i == 3 || i == 6)
      for (size_t o = 0; o < n; o += stride)
        cr_assert_eq(ta_os_resident((char *)((uintptr_t)(p + o) & ~(kpage - 1)), kpage), kpage,
                     "the stride's page at %zu KiB was still there for block %d", o / 1024, i);
    for (size_t o = 0; o < n; o += stride)
      p[o] = 1;
    for (size_t o = n - tail; o < n; o += kpage)
      p[o] = 2;
    p[n - 1] = 2;
    ta_free(p); /* looks at blocks 0, 2 and 6 (after 1, then 3 more frees) */
    if (i == 0) {
      cr_assert(ta_huge_hist_pages(h) > 0, "the first look keeps a history");
      pattern = ta_os_resident(h, h->map_size);
      /* Room for what it holds now, and for it unlooked, whole (cache_weight). */
      ta_huge_cache_limit = 2 * (h->map_size / 64 * h->resident64);
      cr_assert_geq(ta_huge_cache_limit, h->map_size);
    }
  }
  size_t now = ta_os_resident(h, h->map_size);
  cr_assert_leq(now, pattern, "the ends of blocks 1 to 6 went: %zu KiB resident, %zu at first",
                now / 1024, pattern / 1024);
  cr_assert_gt(now, pattern / 2, "the stride stayed: %zu KiB resident", now / 1024);
}

/* The drop tests below: laid out for 2 MiB page tables, on a kernel that drops batches. */
static void drop_layout(void) {
  if (ta_os_thp_mode() == TA_THP_NEVER) cr_skip_test("no huge pages: nothing is looked at");
  if (!batch_works()) cr_skip_test("the kernel drops no batch of ranges");
  if (ta_os_hugepage_size() != 2 * MiB) cr_skip_test("the layout below is for 2 MiB tables");
  ta_decay_ms = 600000;
  ta_huge_cache_limit = 64 * MiB;
}

/* The new pages a look drops never empty a stretch one page table maps: its first resident
 * page stays, and so does the table (which a kernel with CONFIG_PT_RECLAIM frees with the last
 * page a call drops, see "An emptied span keeps its page tables" in docs/design.md). */
enum { DROP_WORKS, BATCH_REFUSED, RANGE_LOCKED };
static void check_drop_keeps_a_page_a_table(int how) {
  drop_layout();
  size_t kpage = ta_os_page_size(), n = 12 * MiB - 8192;
  char *p = ta_malloc(n); /* a span of 12 MiB */
  ta_huge_t *h = ta_huge_hdr_checked(p, TA_MAP_HUGE, "test");
  char *base = (char *)h + 2048; /* each page is written 2 KiB in: data, past the header */
  /* Its pattern: every page of 0-3, 6-8 and 10-12 MiB. Under 3/4 of what a look judges (the
   * first 8 MiB), with 8-10 written too: sparse at every look. */
  for (size_t o = 0; o < 3 * MiB; o += kpage)
    base[o] = 1;
  for (size_t o = 6 * MiB; o < 8 * MiB; o += kpage)
    base[o] = 1;
  for (size_t o = 10 * MiB; o + 2048 < n; o += kpage)
    base[o] = 1;
  ta_free(p); /* the first look: a history */
  cr_assert(ta_huge_hist_pages(h) > 0);
  ta_huge_cache_limit = 2 * (h->map_size / 64 * (h->resident64 + 1u)); /* the pattern fits */
  cr_assert_geq(ta_huge_cache_limit, h->map_size, "room for it in the cache, unlooked");
  cr_assert_eq(ta_malloc(n), p);
  for (size_t o = 8 * MiB; o < 10 * MiB; o += kpage)
    base[o] = 2; /* a whole stretch, new */
  ta_free(p);    /* no look (the next after one more free) */
  cr_assert_eq(ta_malloc(n), p);
  long pte = tt_status_kib("VmPTE:");
  char *locked = (char *)h + 9 * MiB;
  if (how == BATCH_REFUSED) ta_os_fail(TA_OS_MADVISE, 0, 1);
  if (how == RANGE_LOCKED && mlock(locked, kpage) != 0) cr_skip_test("mlock refused");
  if (how == RANGE_LOCKED && tt_status_kib("VmLck:") * 1024 < (long)kpage) {
    munlock(locked, kpage); /* a sanitizer's runtime makes mlock do nothing */
    cr_skip_test("mlock locked nothing");
  }
  ta_free(p); /* a look over the share: the stretch's pages go, but its first */
  size_t held = ta_os_resident((char *)h + 8 * MiB, 2 * MiB);
  if (how == DROP_WORKS) {
    cr_assert_eq(held, kpage, "the stretch keeps one page: %zu KiB", held / 1024);
    cr_assert_eq(ta_os_resident((char *)h, 3 * MiB), 3 * MiB, "the pattern stays");
  } else if (how == BATCH_REFUSED) { /* emptied instead: it holds what its share of 1/64 says */
    cr_assert_eq(held, kpage, "the stretch keeps one page: %zu KiB", held / 1024);
    cr_assert_eq(h->resident64, 1);
    /* the first stretch keeps the allocator's first page, all of it written (page_kb) */
    cr_assert_eq(ta_os_resident(h, h->map_size), ta_page_size + 4 * kpage,
                 "a page a stretch (4-6 MiB: none): %zu KiB",
                 ta_os_resident(h, h->map_size) / 1024);
  } else { /* a range the kernel would not drop: left as the look found it, not emptied */
    munlock(locked, kpage);
    cr_assert_gt(h->resident64, 1, "counted at the look's share");
    cr_assert_eq(ta_os_resident(locked, kpage), kpage);
    cr_assert_eq(ta_os_resident((char *)h, 3 * MiB), 3 * MiB, "the pattern stays");
  }
  cr_assert_geq(tt_status_kib("VmPTE:"), pte, "no page table freed (%ld KiB, were %ld)",
                tt_status_kib("VmPTE:"), pte);
}

Test(huge, a_look_that_drops_new_pages_keeps_a_page_a_table) {
  check_drop_keeps_a_page_a_table(DROP_WORKS);
}

/* A batch the kernel refuses (nothing dropped) leaves the span to be emptied as without a
 * history. */
Test(huge, a_look_whose_batch_is_refused_empties_the_span_to_a_page_a_table) {
  check_drop_keeps_a_page_a_table(BATCH_REFUSED);
}

/* A batch that fails with a range the kernel will not drop (mlocked), one by one too: which
 * pages went is not known, so the span is not emptied (a page kept for a stretch could be one
 * that went, and the stretch would lose its table): left as the look found it. */
Test(huge, a_look_whose_drop_fails_part_way_leaves_the_span_as_it_was) {
  check_drop_keeps_a_page_a_table(RANGE_LOCKED);
}

/* A look where dropping the new pages would still leave the span over its share empties it
 * instead, without dropping them first: one call a stretch, each keeping the first page it
 * held at the look. (Dropping first, the emptying kept a page the drop had taken and dropped
 * the rest: the stretches went empty, and their page tables with them.) */
Test(huge, a_span_the_drop_would_leave_over_its_share_is_emptied_keeping_a_page_a_table) {
  drop_layout();
  size_t kpage = ta_os_page_size(), table = ta_os_hugepage_size(), n = 12 * MiB - 8192;
  char *p = ta_malloc(n); /* a span of 12 MiB: 6 stretches */
  ta_huge_t *h = ta_huge_hdr_checked(p, TA_MAP_HUGE, "test");
  char *base = p - TA_HUGE_HDR;                /* base[o]: the byte at offset o of the span */
  for (size_t s = 0; s < 12 * MiB; s += table) /* the pattern: each stretch's upper half */
    for (size_t o = s + table / 2; o < s + table && o < n; o += kpage)
      base[o] = 1;
  ta_free(p); /* the first look: the history, a share of about 1/2 */
  cr_assert(ta_huge_hist_pages(h) > 0);
  long pte = 0;
  uint64_t before = 0;
  for (int i = 0; i < 2; i++) { /* a look at the second free */
    cr_assert_eq(ta_malloc(n), p);
    for (size_t s = 0; s < 12 * MiB; s += table) /* new: the first 256 KiB of each stretch */
      for (size_t o = s ? s : ta_page_size; o < s + table / 8; o += kpage)
        base[o] = 2;
    if (i == 1) {
      ta_huge_cache_limit = 8 * MiB; /* may keep 4 MiB: over even with the pattern alone */
      pte = tt_status_kib("VmPTE:");
      before = ta_os_calls(TA_OS_MADVISE);
    }
    ta_free(p);
  }
  cr_assert_eq(ta_huge_cached_count(), 1, "kept in the cache");
  cr_assert_eq(h->resident64, 1, "emptied");
  cr_assert_eq(ta_os_calls(TA_OS_MADVISE) - before, 6, "one call a stretch, no drop first");
  for (size_t s = 0; s < 12 * MiB; s += table) {
    size_t held = ta_os_resident((char *)h + s, table);
    cr_assert_eq(held, kpage, "the stretch at %zu MiB holds %zu KiB", s / MiB, held / 1024);
    cr_assert_eq(ta_os_resident((char *)h + s, kpage), kpage,
                 "the stretch at %zu MiB keeps its first page (the header's, in the first)",
                 s / MiB);
  }
  cr_assert_geq(tt_status_kib("VmPTE:"), pte, "no page table freed (%ld KiB, were %ld)",
                tt_status_kib("VmPTE:"), pte);
}

/* An aligned block's data starts pages into its span (TA_HUGE_HDR rounded up to 64 KiB): the
 * header's page, not looked at, keeps the first stretch's table, so a drop takes every new page
 * of that stretch. */
Test(huge, a_drop_in_an_aligned_block_s_first_stretch_keeps_only_the_header_s_page) {
  drop_layout();
  size_t kpage = ta_os_page_size(), table = ta_os_hugepage_size(), align = 64 * 1024;
  size_t n = 12 * MiB - 2 * align;
  char *p = ta_memalign(align, n); /* a span of 12 MiB, its data 64 KiB in */
  ta_huge_t *h = ta_huge_hdr_checked(p, TA_MAP_HUGE, "test");
  cr_assert_eq((uintptr_t)p - (uintptr_t)h, align);
  char *base = (char *)h; /* base[o]: the byte at offset o of the span, o >= align */
  /* The pattern: every page of 2-3, 4-5, 6-8 and 10-12 MiB; nothing in the first stretch. */
  for (size_t o = 2 * MiB; o < 5 * MiB; o += kpage)
    if (o < 3 * MiB || o >= 4 * MiB) base[o] = 1;
  for (size_t o = 6 * MiB; o < 8 * MiB; o += kpage)
    base[o] = 1;
  for (size_t o = 10 * MiB; o < align + n; o += kpage)
    base[o] = 1;
  ta_free(p); /* the first look: a history */
  cr_assert(ta_huge_hist_pages(h) > 0);
  ta_huge_cache_limit = 2 * (h->map_size / 64 * (h->resident64 + 1u)); /* the pattern fits */
  cr_assert_geq(ta_huge_cache_limit, h->map_size, "room for it in the cache, unlooked");
  for (int i = 0; i < 2; i++) { /* a look at the second free */
    cr_assert_eq(ta_memalign(align, n), p);
    for (size_t o = align; o < MiB; o += kpage)
      base[o] = 2; /* new: the first stretch, up to 1 MiB */
    ta_free(p);
  }
  cr_assert_eq(ta_huge_cached_count(), 1, "kept in the cache");
  cr_assert_gt(h->resident64, 1, "not emptied: the drop was enough");
  size_t held = ta_os_resident(h, table);
  cr_assert_eq(held, kpage, "the first stretch keeps only the header's page: %zu KiB", held / 1024);
  cr_assert_eq(ta_os_resident((char *)h + 2 * MiB, MiB), MiB, "the pattern stays");
  cr_assert_eq(ta_os_resident((char *)h + 6 * MiB, 2 * MiB), 2 * MiB, "the pattern stays");
}

Test(huge, a_sparse_span_drops_the_pages_new_since_its_last_look) {
  check_new_pages_go_and_the_stride_stays();
}

Test(huge, a_sparse_span_drops_the_pages_new_since_its_last_look_with_larger_pages) {
  ta_conf_apply("page_kb:16");
  check_new_pages_go_and_the_stride_stays();
}

/* The histories are kept apart from the spans (huge.c, hist_t): a span's record goes with it
 * when it is unmapped, and follows it when realloc moves it. */
static ta_huge_t *span_with_history(char **p) {
  if (ta_os_thp_mode() == TA_THP_NEVER) cr_skip_test("no huge pages: nothing is looked at");
  ta_decay_ms = 600000;
  *p = ta_malloc(6 * MiB);
  ta_huge_t *h = ta_huge_hdr_checked(*p, TA_MAP_HUGE, "test");
  write_sparse(*p, 6 * MiB);
  ta_free(*p); /* the first look: a history */
  cr_assert_gt(ta_huge_hist_pages(h), 0);
  cr_assert_eq(ta_huge_hist_taken(), 1);
  return h;
}

Test(huge, a_span_s_history_is_released_when_the_span_is_unmapped) {
  char *p;
  (void)span_with_history(&p);
  ta_huge_purge(ta_os_now_ms(), true);
  cr_assert_eq(ta_huge_cached_count(), 0, "unmapped");
  cr_assert_eq(ta_huge_hist_taken(), 0, "its record released");
}

/* The meta block's record number leads to a history only if the record is the span's. */
Test(huge, a_record_number_that_is_not_the_span_s_is_no_history) {
  if (ta_os_thp_mode() == TA_THP_NEVER) cr_skip_test("no huge pages: nothing is looked at");
  ta_decay_ms = 600000;
  char *a = ta_malloc(6 * MiB), *b = ta_malloc(6 * MiB);
  ta_huge_t *ha = ta_huge_hdr_checked(a, TA_MAP_HUGE, "test");
  ta_huge_t *hb = ta_huge_hdr_checked(b, TA_MAP_HUGE, "test");
  write_sparse(a, 6 * MiB);
  write_sparse(b, 6 * MiB);
  ta_free(a);
  ta_free(b);
  size_t pages = ta_huge_hist_pages(ha);
  cr_assert_gt(pages, 0);
  cr_assert_gt(ta_huge_hist_pages(hb), 0);
  cr_assert_eq(ta_huge_hist_taken(), 2);
  uint16_t own = ha->hist;
  ha->hist = hb->hist; /* overwritten with the other's number */
  cr_assert_eq(ta_huge_hist_pages(ha), 0, "another span's record is no history of this one");
  ha->hist = UINT16_MAX; /* and one past the table */
  cr_assert_eq(ta_huge_hist_pages(ha), 0);
  ha->hist = own;
  cr_assert_eq(ta_huge_hist_pages(ha), pages);
}

/* A mapping just past span h, ours if none is there yet (then returned, to be unmapped): the
 * span cannot grow in place. */
static char *wall_after(const ta_huge_t *h) {
  char *wall = mmap((char *)h + h->map_size, 4096, PROT_NONE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  cr_assert(wall == (char *)h + h->map_size || (wall == MAP_FAILED && errno == EEXIST));
  return wall;
}

/* Block q's span is span h moved, with h's history of `pages` pages, the same record. */
static void moved_with_history(const ta_huge_t *h, char *q, size_t pages, char *wall) {
  cr_assert_not_null(q);
  ta_huge_t *g = ta_huge_hdr_checked(q, TA_MAP_HUGE, "test");
  cr_assert_neq(g, h, "moved");
  cr_assert_eq(ta_huge_hist_pages(g), pages, "the history moved with it");
  cr_assert_eq(ta_huge_hist_taken(), 1, "the same record");
  if (wall != MAP_FAILED) munmap(wall, 4096);
  ta_free(q);
}

Test(huge, a_span_s_history_follows_it_when_a_larger_block_moves_it) {
  char *p;
  ta_huge_t *h = span_with_history(&p); /* cached: 8 MiB */
  size_t pages = ta_huge_hist_pages(h);
  char *wall = wall_after(h);
  char *q = ta_malloc(12 * MiB); /* needs 16 MiB: the span, half of it, grows (span_grow) */
  cr_assert_eq(ta_huge_cached_count(), 0, "the span was taken and grown");
  moved_with_history(h, q, pages, wall);
}

Test(huge, a_span_s_history_follows_it_when_realloc_moves_it) {
  char *p;
  ta_huge_t *h = span_with_history(&p);
  size_t pages = ta_huge_hist_pages(h);
  cr_assert_eq(ta_malloc(6 * MiB), p, "the span serves again, its history with it");
  char *wall = wall_after(h);
  char *q = ta_realloc(p, 20 * MiB);
  moved_with_history(h, q, pages, wall);
}

/* A span larger than what a look sees (32 MiB from the block's first page): what lies past it
 * is decommitted whole, and the span weighs what it holds in the cache. */
Test(huge, an_emptied_span_larger_than_a_look_holds_nothing_past_it) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  size_t kpage = ta_os_page_size(), n = 40 * MiB;
  ta_decay_ms = 600000;
  ta_huge_cache_limit = 32 * MiB; /* spans found sparse may keep 16 MiB */
  char *p = ta_malloc(n);         /* a span of 44 MiB */
  ta_huge_t *h = ta_huge_hdr_checked(p, TA_MAP_HUGE, "test");
  for (size_t o = 0; o < n; o += 2 * kpage)
    p[o] = 1; /* half its pages: sparse, 22 MiB */
  ta_free(p);
  cr_assert_eq(ta_huge_cached_count(), 1, "kept in the cache");
  cr_assert_eq(ta_os_resident((char *)h + 32 * MiB, h->map_size - 32 * MiB), 0,
               "nothing resident past the look");
  /* a kernel's page in each of the 16 stretches, the first's being the header's page */
  cr_assert_leq(ta_os_resident(h, 32 * MiB), 15 * kpage + ta_page_size, "a page in each stretch");
  cr_assert_leq(h->dirty_end, 32 * MiB);
  cr_assert_leq(ta_huge_cached_bytes(), h->map_size / 8 + 32 * MiB / 64,
                "weighs what it holds: %zu KiB", ta_huge_cached_bytes() / 1024);
}

/* A span with huge pages drops its excess at the take (see excess_settle in huge.c: why). */
Test(huge, excess_of_a_larger_span_with_huge_pages_is_decommitted_once) {
  ta_decay_ms = 600000;
  char *p = cached_span_with_huge_pages(20 * MiB); /* a span of 24 MiB */
  /* mincore needs a page-aligned address: the excess is read from the header's */
  ta_huge_t *h = ta_huge_hdr_checked(p, TA_MAP_HUGE, "test");
  char *q = ta_malloc(12 * MiB); /* needs 16: the span serves, 8 MiB of it are excess */
  cr_assert_eq(q, p);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(0), "not kept");
  cr_assert_eq(ta_os_resident((char *)h + 16 * MiB, 8 * MiB), 0, "excess dropped");
  cr_assert_eq(ta_os_resident(h, 12 * MiB), 12 * MiB, "not the block's own pages");
  ta_free(q);
  uint64_t before = ta_os_calls(ALL_OS_CALLS);
  for (int i = 0; i < 10; i++) {
    char *r = ta_malloc(12 * MiB);
    cr_assert_eq(r, p);
    write_all(r, 12 * MiB);
    ta_free(r);
  }
  cr_assert_eq(ta_os_calls(ALL_OS_CALLS) - before, 0, "the excess holds no pages any more: "
               "nothing to drop again");
}

/* A span of 24 MiB without huge pages, its first 23 written by the block freed into the
 * cache: returns that block's address. */
static char *cached_span_without_huge_pages(uint64_t decay_ms) {
  if (ta_commit_lazy()) cr_skip_test("lazy commit: a mapping ends at its block, nothing kept");
  ta_os_thp_mode_force(TA_THP_NEVER);
  ta_decay_ms = decay_ms;
  char *p = ta_malloc(23 * MiB);
  write_all(p, 23 * MiB);
  ta_free(p);
  return p;
}

/* The excess a block q of 12 MiB (16 MiB of granules) keeps of the span it took: up to what
 * the span's earlier block wrote. */
static size_t excess_of(void *q) {
  return ta_huge_hdr_checked(q, TA_MAP_HUGE, "test")->dirty_end - 16 * MiB;
}

/* A span without huge pages keeps its excess with a smaller block, pages and address space:
 * no system call at the take, and the excess counts until the block is freed. */
Test(huge, a_larger_span_without_huge_pages_keeps_its_excess_with_the_block) {
  char *p = cached_span_without_huge_pages(600000);
  atomic_store(&ta_huge_due, 0); /* the cache's own, as if a purge had found nothing due */
  uint64_t before = ta_os_calls(ALL_OS_CALLS);
  char *q = ta_malloc(12 * MiB); /* needs 16: the 7 MiB written past them are its excess */
  cr_assert_eq(q, p);
  cr_assert_eq(ta_os_calls(ALL_OS_CALLS) - before, 0, "nothing dropped");
  ta_huge_t *h = ta_huge_hdr_checked(q, TA_MAP_HUGE, "test");
  size_t excess = excess_of(q);
  cr_assert_geq(excess, 7 * MiB);
  /* resident: to the block's last page, of the kernel's size; dirty_end: of ours */
  cr_assert_geq(ta_os_resident((char *)h + 16 * MiB, 8 * MiB), excess - ta_page_size + 4096,
                "the excess's pages kept");
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(excess), "and counted");
  cr_assert_neq(atomic_load(&ta_huge_due), 0, "its purge due");
  ta_free(q);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(0), "given up with the block");
  cr_assert_eq(ta_huge_cached_count(), 1, "whose span is cached whole");
  cr_assert_eq(h->map_size, 24 * MiB);
}

/* One more than twice too big is kept whole too, where it was cut: a later, larger block
 * finds the pages and the address space. */
Test(huge, a_span_far_too_big_without_huge_pages_is_kept_whole) {
  char *p = cached_span_without_huge_pages(600000);
  uint64_t before = ta_os_calls(ALL_OS_CALLS);
  char *q = ta_malloc(5 * MiB); /* needs 8: the 15 MiB written past them are its excess */
  cr_assert_eq(q, p);
  cr_assert_eq(ta_os_calls(ALL_OS_CALLS) - before, 0, "nothing cut, nothing dropped");
  ta_huge_t *h = ta_huge_hdr_checked(q, TA_MAP_HUGE, "test");
  cr_assert_eq(h->map_size, 24 * MiB, "not cut");
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(h->dirty_end - 8 * MiB));
  cr_assert_geq(ta_os_resident((char *)h + 8 * MiB, 16 * MiB),
                h->dirty_end - 8 * MiB - ta_page_size + 4096);
  before = ta_os_calls(ALL_OS_CALLS); /* mincore: the test's own */
  ta_free(q);
  long faults = minor_faults();
  char *r = ta_malloc(20 * MiB);
  cr_assert_eq(r, p);
  write_all(r, 20 * MiB);
  cr_assert_lt(minor_faults() - faults, 64, "its pages were there");
  cr_assert_eq(ta_os_calls(ALL_OS_CALLS) - before, 0, "no system call on the way");
  ta_free(r);
}

/* Where the cache's limit has no room for it (here lowered after the span was cached), the
 * excess is dropped at the take as before, once. */
Test(huge, an_excess_the_limit_has_no_room_for_is_decommitted) {
  char *p = cached_span_without_huge_pages(600000);
  ta_huge_cache_grows = false;
  ta_huge_cache_limit = 4 * MiB;
  char *q = ta_malloc(12 * MiB);
  cr_assert_eq(q, p);
  ta_huge_t *h = ta_huge_hdr_checked(q, TA_MAP_HUGE, "test");
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(0));
  cr_assert_eq(ta_os_resident((char *)h + 16 * MiB, 8 * MiB), 0, "excess dropped");
  cr_assert_eq(ta_os_resident(h, 12 * MiB), 12 * MiB, "not the block's own pages");
  ta_free(q);
}

/* What blocks keep counts against the limit at a put too: a span that fits the limit, but
 * not the limit less the excess kept, is not cached. */
Test(huge, a_kept_excess_leaves_the_cache_less_room) {
  char *p = cached_span_without_huge_pages(600000);
  ta_huge_cache_grows = false;
  ta_huge_cache_limit = 32 * MiB;
  char *q = ta_malloc(12 * MiB); /* takes it, and keeps 7 MiB of excess */
  cr_assert_eq(q, p);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(excess_of(q)));
  char *r = ta_malloc(26 * MiB); /* a span of 28 MiB */
  write_all(r, 26 * MiB);
  ta_free(r);
  cr_assert_eq(ta_huge_cached_count(), 0, "28 MiB fit 32, not 32 less the 7 kept");
  ta_free(q);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(0));
  cr_assert_eq(ta_huge_cached_count(), 1, "the first span, once its block is freed");
}

/* realloc in place of a block that keeps an excess: what lies past its new size is kept again
 * (or dropped), never left resident uncounted, and keeps its time: a purge a decay time after
 * the take finds it. */
Test(huge, a_realloc_in_place_keeps_again_what_lies_past_the_new_size) {
  char *p = cached_span_without_huge_pages(600000);
  char *q = ta_malloc(12 * MiB);
  uint64_t taken = ta_os_now_ms();
  cr_assert_eq(q, p);
  ta_huge_t *h = ta_huge_hdr_checked(q, TA_MAP_HUGE, "test");
  size_t end = h->dirty_end;
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(end - 16 * MiB));
  usleep(30 * 1000);
  char *r = ta_realloc(q, 17 * MiB); /* in place: needs 20 MiB of the 24 */
  cr_assert_eq(r, q);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(end - 20 * MiB), "the rest kept again");
  r = ta_realloc(r, 2 * MiB); /* in place, needs 4 MiB: far less than the span */
  cr_assert_eq(r, q);
  cr_assert_eq(h->map_size, 24 * MiB, "its pages kept, and the span with them");
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(end - 4 * MiB));
  cr_assert_eq(ta_huge_purge(taken + 600000, false), end - 4 * MiB,
               "due a decay time after the take, not after the reallocs");
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)0);
  cr_assert_eq(ta_os_resident((char *)h + 4 * MiB, 20 * MiB), 0, "nothing past the block");
  ta_free(r);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)0, "not given up twice");
  cr_assert_eq(ta_huge_cached_count(), 1);
}

/* Where the limit has no room for it then, it is dropped, or cut with the span's tail: the
 * block's header sealed with the span's new size (the free checks it). */
Test(huge, a_realloc_in_place_whose_excess_the_limit_refuses_cuts_the_span) {
  char *p = cached_span_without_huge_pages(600000);
  char *q = ta_malloc(12 * MiB);
  cr_assert_eq(q, p);
  cr_assert_gt(ta_huge_kept_excess(), 0);
  ta_huge_cache_grows = false;
  ta_huge_cache_limit = 0;
  char *r = ta_realloc(q, 2 * MiB); /* needs 4 MiB */
  cr_assert_eq(r, q);
  ta_huge_t *h = ta_huge_hdr_checked(r, TA_MAP_HUGE, "test");
  cr_assert_eq(h->map_size, 4 * MiB, "cut");
  cr_assert(ta_huge_check_ok(h), "sealed");
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)0);
  cr_assert_eq(ta_huge_mapped(), 4 * MiB);
  ta_free(r);
}

/* A realloc that can neither grow the block in place nor move it leaves the block as it was,
 * its excess kept again. */
Test(huge, a_realloc_refused_keeps_the_excess_again) {
  char *p = cached_span_without_huge_pages(600000);
  char *q = ta_malloc(12 * MiB);
  cr_assert_eq(q, p);
  intptr_t kept = ta_huge_kept_excess();
  cr_assert_gt(kept, 0);
  ta_huge_t *h = ta_huge_hdr_checked(q, TA_MAP_HUGE, "test");
  char *wall = wall_after(h); /* nothing grows in place past it (or something is there) */
  if (wall == MAP_FAILED && errno != EEXIST) cr_skip_test("no wall");
  ta_os_fail(TA_OS_MMAP, 0, 8); /* no move, and no new block to copy into */
  char *r = ta_realloc(q, 40 * MiB);
  ta_os_fail(0, 0, 0);
  if (wall != MAP_FAILED) munmap(wall, 4096);
  cr_assert_null(r);
  cr_assert_eq(errno, ENOMEM);
  cr_assert_eq(ta_huge_kept_excess(), kept, "kept again");
  cr_assert(ta_huge_check_ok(h));
  ta_free(q);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)0);
}

/* The free of a block waits while a purge holds its entry: the span's pages are the owner's
 * to reuse only once the decommit is made. */
static _Atomic int freed_it;
static void *free_it(void *q) {
  ta_free(q);
  atomic_store(&freed_it, 1);
  return NULL;
}

Test(huge, a_free_waits_for_the_purge_that_holds_its_excess) {
  char *p = cached_span_without_huge_pages(600000);
  char *q = ta_malloc(12 * MiB);
  cr_assert_eq(q, p);
  ta_huge_t *h = ta_huge_hdr_checked(q, TA_MAP_HUGE, "test");
  ta_huge_excess_hold(h, true);
  pthread_t t;
  pthread_create(&t, NULL, free_it, q);
  usleep(50 * 1000);
  cr_assert_eq(atomic_load(&freed_it), 0, "waiting");
  ta_huge_excess_hold(h, false); /* the purge done, as if it had left it */
  pthread_join(t, NULL);
  cr_assert_eq(atomic_load(&freed_it), 1);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)0);
  cr_assert_eq(ta_huge_cached_count(), 1);
}

/* A span far too big keeps what its earlier block may have written and gives back the address
 * space past it; the limit it is kept against is not raised by its own size. */
Test(huge, a_span_far_too_big_is_cut_past_what_it_keeps) {
  if (ta_commit_lazy()) cr_skip_test("lazy commit: a mapping ends at its block, nothing kept");
  ta_os_thp_mode_force(TA_THP_NEVER);
  ta_decay_ms = 600000;
  char *p = ta_malloc(40 * MiB); /* a span of 44 MiB */
  write_all(p, 40 * MiB);
  ta_free(p);
  size_t limit = ta_huge_cache_limit;
  ta_huge_cache_limit = 0; /* no room: the excess of the next is dropped */
  ta_huge_cache_grows = false;
  char *q = ta_malloc(21 * MiB); /* needs 24: its excess dropped, 24 MiB written */
  cr_assert_eq(q, p);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)0);
  ta_huge_cache_limit = limit;
  ta_huge_cache_grows = true;
  ta_free(q);
  char *r = ta_malloc(5 * MiB); /* needs 8: 16 MiB kept, the 20 past them cut */
  cr_assert_eq(r, p);
  ta_huge_t *h = ta_huge_hdr_checked(r, TA_MAP_HUGE, "test");
  cr_assert_eq(h->map_size, 24 * MiB);
  cr_assert_eq(ta_huge_mapped(), 24 * MiB);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(16 * MiB));
  ta_free(r);
  ta_malloc_trim(0);
  /* Far more than the cache's limit of 64 MiB, which the span's own size would raise were it
   * counted live: refused, and the span cut to the block. */
  char *big = ta_malloc(200 * MiB);
  write_all(big, 200 * MiB);
  ta_huge_cache_limit = 256 * MiB; /* room to cache it */
  ta_huge_cache_grows = false;
  ta_free(big);
  cr_assert_eq(ta_huge_cached_count(), 1);
  ta_huge_cache_limit = limit;
  ta_huge_cache_grows = true;
  char *s = ta_malloc(2 * MiB);
  cr_assert_eq(s, big);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)0, "200 MiB kept against a limit of 64");
  cr_assert_eq(ta_huge_hdr_checked(s, TA_MAP_HUGE, "test")->map_size, 4 * MiB);
  ta_free(s);
}

/* A decay time after it was kept, the purge gives the excess back, and nothing else of the
 * block; the block's free then gives up nothing more. Before that, the purge leaves it. */
Test(huge, the_purge_gives_back_an_excess_kept_a_decay_time) {
  char *p = cached_span_without_huge_pages(100000);
  char *q = ta_malloc(12 * MiB);
  cr_assert_eq(q, p);
  ta_huge_t *h = ta_huge_hdr_checked(q, TA_MAP_HUGE, "test");
  uint64_t now = ta_os_now_ms();
  cr_assert_eq(ta_huge_purge(now, false), 0, "not due yet");
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(excess_of(q)));
  cr_assert_geq(ta_os_resident((char *)h + 16 * MiB, 8 * MiB), excess_of(q) - ta_page_size + 4096);
  uint64_t due = atomic_load(&ta_huge_due);
  cr_assert(due > now && due <= now + 100000, "due a decay time after the take");
  size_t excess = excess_of(q);
  cr_assert_eq(ta_huge_purge(now + 100000, false), excess, "given back once due");
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(0));
  cr_assert_eq(ta_os_resident((char *)h + 16 * MiB, 8 * MiB), 0, "its pages gone");
  cr_assert_eq(ta_os_resident(h, 12 * MiB), 12 * MiB, "not the block's");
  ta_free(q);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(0));
  cr_assert_eq(ta_huge_cached_count(), 1);
  char *r = ta_malloc(12 * MiB); /* kept again: a count that was not given up twice */
  cr_assert_eq(r, p);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(excess),
               "its excess's bounds as before: what may be resident");
  ta_free(r);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(0));
}

/* A fork child counts its entries again, and gives up one a purge held (its thread is not in
 * the child): the block's free there neither waits for it nor gives it up twice. */
Test(huge, a_fork_child_gives_up_an_excess_a_purge_held) {
  char *p = cached_span_without_huge_pages(600000);
  char *q = ta_malloc(12 * MiB);
  cr_assert_eq(q, p);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(excess_of(q)));
  ta_huge_t *h = ta_huge_hdr_checked(q, TA_MAP_HUGE, "test");
  ta_huge_excess_hold(h, true); /* a purge at it, in another thread */
  pid_t pid = fork();
  if (pid == 0) {
    alarm(10); /* a free that waits for the purge would wait for ever */
    ta_huge_recount_after_fork();
    int bad = ta_huge_kept_excess() != 0;
    ta_free(q);
    bad |= (ta_huge_kept_excess() != 0) << 1;
    bad |= (ta_huge_cached_count() != 1) << 2;
    _exit(bad);
  }
  int status;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: %d", status);
  ta_huge_excess_hold(h, false);
  ta_free(q);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(0));
}

/* Frees and reallocs that give an excess up race purges that give it back: each is given up
 * once, by one of them, and the owner waits while a purge holds it. */
static _Atomic int racing;
static void *purge_all_the_time(void *arg) {
  (void)arg;
  uint64_t next = 0;
  while (atomic_load(&racing))
    ta_huge_excess_purge(0, true, &next); /* the cache left be */
  return NULL;
}

Test(huge, owners_and_purges_give_an_excess_up_once) {
  char *p = cached_span_without_huge_pages(600000);
  atomic_store(&racing, 1);
  pthread_t t;
  pthread_create(&t, NULL, purge_all_the_time, NULL);
  int kept = 0, lost = 0;
  for (int i = 0; i < 200; i++) {
    char *q = ta_malloc(12 * MiB); /* the span, and its excess kept */
    cr_assert_eq(q, p);
    kept += ta_huge_excess_kept(ta_huge_hdr_checked(q, TA_MAP_HUGE, "test"));
    if (i & 1) {
      char *r = ta_realloc(q, 13 * MiB); /* in place */
      cr_assert_eq(r, q);
    }
    ta_free(q);
    /* The whole span again: a purge still at the excess would drop what this block writes. */
    char *w = ta_malloc(23 * MiB);
    cr_assert_eq(w, p);
    for (size_t o = 16 * MiB; o < 23 * MiB; o += 4096)
      w[o] = (char)(o >> 12 | 1);
    for (size_t o = 16 * MiB; o < 23 * MiB; o += 4096)
      lost += w[o] != (char)(o >> 12 | 1);
    ta_free(w);
  }
  atomic_store(&racing, 0);
  pthread_join(t, NULL);
  cr_assert_eq(lost, 0, "%d pages lost", lost);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(0), "every excess given up once");
  cr_assert_gt(kept, 20, "kept %d times in 200", kept);
  cr_assert_eq(ta_huge_cached_bytes(), ta_huge_cache_sum());
}

/* Blocks without huge pages made, resized and freed at random under limits that change, with
 * purges between: every byte a block was given stays its own, every header checks, and what
 * blocks keep comes back to nothing. */
static size_t stamp_stride = 256 * 1024; /* what stamp writes: 4096 for blocks written through */
static void stamp(unsigned char *p, size_t n, unsigned char tag) {
  for (size_t o = 0; o < n; o += stamp_stride)
    p[o] = (unsigned char)(tag + (o >> 18));
  p[n - 1] = tag;
}
/* The stamp's bytes below `upto` (of a block of n bytes stamped so) are there. */
static int stamped_below(const unsigned char *p, size_t n, size_t upto, unsigned char tag) {
  for (size_t o = 0; o < upto && o < n - 1; o += stamp_stride)
    if (p[o] != (unsigned char)(tag + (o >> 18))) return 0;
  return upto < n || p[n - 1] == tag;
}
static int stamped(const unsigned char *p, size_t n, unsigned char tag) {
  return stamped_below(p, n, n, tag);
}

static void resized_at_random(int rounds, int *advised, int *advised_kept);
Test(huge, blocks_without_huge_pages_resized_at_random_keep_their_bytes, .timeout = 60) {
  ta_os_thp_mode_force(TA_THP_NEVER);
  resized_at_random(3000, NULL, NULL);
}

/* The same with huge pages where the host reclaims free memory: blocks written through, their
 * spans advised at their frees, keeping their excess at the takes. */
Test(huge, blocks_with_huge_pages_where_the_host_reclaims_resized_at_random, .timeout = 90) {
  if (ta_commit_lazy()) cr_skip_test("lazy commit: a mapping ends at its block, nothing kept");
  if (ta_os_thp_mode() == TA_THP_NEVER) ta_os_thp_mode_force(TA_THP_MADVISE);
  ta_os_host_reclaims_force(1);
  stamp_stride = 4096;
  int advised = 0, advised_kept = 0;
  resized_at_random(TT_SANITIZER ? 150 : 600, &advised, &advised_kept);
  if (advised == 0) cr_skip_test("the kernel took no advice: no huge pages");
  cr_assert_gt(advised_kept, 0,
               "of %d mallocs that took a span with huge pages, none kept an excess", advised);
}

/* Rounds of malloc, realloc and free of 8 blocks of 1 to 25 MiB at random, with limits and
 * purges between; *advised and *advised_kept (if given) count the mallocs that took a span with
 * huge pages, and those of them that kept an excess. */
static void resized_at_random(int rounds, int *advised, int *advised_kept) {
  ta_decay_ms = 600000;
  enum { N = 8 };
  unsigned char *b[N] = {0};
  size_t n[N] = {0};
  unsigned char tag[N] = {0};
  tt_rng x;
  tt_rng_seed(&x, 0x9e3779b97f4a7c15ULL);
  for (int i = 0; i < rounds; i++) {
    unsigned k = (unsigned)(tt_rand(&x) % N);
    size_t size = (size_t)(tt_rand(&x) % (24 * MiB)) + MiB + 1;
    uint64_t r = tt_rand(&x) % 16;
    if (r == 0) { /* the limit changes: 0, 16 or 64 MiB, growing with what is live or not */
      static const size_t limits[] = {0, 16 * MiB, 64 * MiB};
      ta_huge_cache_limit = limits[tt_rand(&x) % 3];
      ta_huge_cache_grows = tt_rand(&x) & 1;
    } else if (r == 1) {
      ta_huge_purge(ta_os_now_ms() + (tt_rand(&x) & 1 ? 600000 : 0), tt_rand(&x) & 1);
    } else if (b[k] == NULL) {
      intptr_t kept_before = ta_huge_kept_excess();
      b[k] = ta_malloc(size);
      cr_assert_not_null(b[k]);
      if (advised &&
          (ta_huge_hdr_checked(b[k], ta_map_get((uintptr_t)b[k]), "test")->thp & HUGE_ADVISED)) {
        ++*advised;
        if (ta_huge_kept_excess() > kept_before) ++*advised_kept;
      }
      n[k] = size;
      tag[k] = (unsigned char)tt_rand(&x);
      stamp(b[k], n[k], tag[k]);
    } else if (r < 9) {
      cr_assert(stamped(b[k], n[k], tag[k]), "block %u's bytes, round %d", k, i);
      unsigned char *q = ta_realloc(b[k], size);
      cr_assert_not_null(q);
      cr_assert(stamped_below(q, n[k], size, tag[k]), "resized or moved: its bytes, round %d", i);
      b[k] = q;
      n[k] = size;
      tag[k] = (unsigned char)tt_rand(&x);
      stamp(b[k], n[k], tag[k]);
    } else {
      cr_assert(stamped(b[k], n[k], tag[k]), "block %u's bytes, round %d", k, i);
      ta_free(b[k]);
      b[k] = NULL;
    }
  }
  for (unsigned k = 0; k < N; k++)
    if (b[k]) {
      cr_assert(stamped(b[k], n[k], tag[k]));
      ta_free(b[k]);
    }
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)0, "what blocks kept, given up");
  cr_assert_eq(ta_huge_cached_bytes(), ta_huge_cache_sum());
  ta_malloc_trim(0);
  cr_assert_eq(ta_huge_mapped(), 0);
}

Test(huge, cached_span_grows_into_a_larger_request_with_its_pages) {
  size_t n = 10 * MiB; /* a span of 12 MiB */
  char *p = ta_malloc(n);
  write_all(p, n);
  ta_free(p);
  size_t mapped = atomic_load(&ta_os_mapped_bytes.v);
  char *q = ta_malloc(15 * MiB); /* needs 16 MiB: more than the span, less than twice */
  size_t now = atomic_load(&ta_os_mapped_bytes.v);
  cr_assert_eq(ta_huge_cached_count(), 0, "the span was taken and grown");
  cr_assert_eq(now, mapped + 4 * MiB, "only the growth is new: %zu KiB more mapped",
               (now - mapped) / 1024);
  cr_assert_geq(ta_os_resident(q - TA_HUGE_HDR, n), n - 64 * 1024, "its pages came along");
  cr_assert_eq(ta_map_get((uintptr_t)q), TA_MAP_HUGE);
  ta_free(q);
}

Test(huge, no_advice_and_no_look_when_the_kernel_has_no_huge_pages) {
  ta_os_thp_mode_force(TA_THP_NEVER);
  uint64_t before = ta_os_calls(TA_OS_MADVISE | TA_OS_MINCORE);
  for (int i = 0; i < 4; i++) {
    char *p = ta_malloc(12 * MiB);
    write_all(p, 12 * MiB);
    ta_free(p);
  }
  cr_assert_eq(ta_os_calls(TA_OS_MADVISE | TA_OS_MINCORE), before);
}

Test(huge, kernel_that_always_uses_huge_pages_is_told_not_to_on_a_fresh_block) {
  ta_os_thp_mode_force(TA_THP_ALWAYS);
  char *p = ta_malloc(12 * MiB);
  write_sparse(p, 12 * MiB);
  cr_assert(has_flag(p, "nh"), "a fresh block is not known to be dense (%s)", vm_flags(p));
  ta_free(p);
}

Test(huge, sparse_use_after_dense_history_soon_stops_huge_pages) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  ta_huge_cache_limit = 0; /* every block a fresh mapping, every free judged */
  size_t n = 12 * MiB;
  for (int i = 0; i < 8; i++) {
    char *p = ta_malloc(n);
    write_all(p, n);
    ta_free(p);
  }
  int dense_advised = 0;
  for (int i = 0; i < 16; i++) {
    char *p = ta_malloc(n);
    dense_advised += has_flag(p, "hg");
    write_all(p, n);
    ta_free(p);
  }
  cr_assert_eq(dense_advised, 16, "blocks of this size are written through: huge pages up "
               "front, but %d of 16 had them", dense_advised);
  int advised = 0;
  for (int i = 0; i < 40; i++) {
    char *q = ta_malloc(n);
    write_sparse(q, n);
    advised += has_flag(q, "hg");
    ta_free(q);
  }
  /* The first is found with untouched pages when freed; the next goes without huge pages
   * and its residency tells: the class is used sparsely now. */
  cr_assert_leq(advised, 2, "%d of 40 sparse blocks had huge pages", advised);
}

Test(huge, first_verdict_comes_from_the_previous_fresh_block) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  char *a = ta_malloc(20 * MiB); /* nothing known yet: small pages */
  cr_assert_not(has_flag(a, "hg"));
  write_all(a, 20 * MiB);
  char *b = ta_malloc(6 * MiB); /* a looks written through: huge pages for the next */
  cr_assert(has_flag(b, "hg"), "%s", vm_flags(b));
  ta_free(a);
  ta_free(b);
}

Test(huge, previous_fresh_block_used_sparsely_keeps_the_next_on_small_pages) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  char *a = ta_malloc(20 * MiB);
  write_sparse(a, 20 * MiB);
  char *b = ta_malloc(6 * MiB);
  cr_assert_not(has_flag(b, "hg"), "%s", vm_flags(b));
  ta_free(a);
  ta_free(b);
}

Test(huge, block_with_huge_pages_grows_by_remapping) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  size_t n = 6 * MiB;
  unsigned char *p = ta_malloc(n);
  write_all((char *)p, n);
  ta_free(p);
  p = ta_malloc(n); /* the same span, now with huge pages */
  cr_assert(has_flag(p, "hg"));
  for (size_t i = 0; i < n; i += 4096) p[i] = (unsigned char)(i >> 12);
  uint64_t remaps = ta_os_calls(TA_OS_MREMAP);
  unsigned char *q = ta_realloc(p, 40 * MiB);
  cr_assert_not_null(q);
  cr_assert_gt(ta_os_calls(TA_OS_MREMAP), remaps, "grown by the kernel, not copied");
  for (size_t i = 0; i < n; i += 4096) cr_assert_eq(q[i], (unsigned char)(i >> 12));
  ta_free(q);
}

static long thp_fallbacks(void) {
  FILE *f = fopen("/proc/vmstat", "r");
  char key[64];
  long v, n = 0;
  while (f && fscanf(f, "%63s %ld", key, &v) == 2)
    if (strcmp(key, "thp_fault_fallback") == 0) n = v;
  if (f) fclose(f);
  return n;
}

Test(huge, fresh_block_with_huge_pages_faults_in_2_mib_steps_from_its_first_byte) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  size_t n = 14 * MiB;
  char *a = ta_malloc(n); /* written through: the next fresh blocks get huge pages */
  write_all(a, n);
  char *b = ta_malloc(n);
  cr_assert(has_flag(b, "hg"));
  long fallbacks = thp_fallbacks(), before = minor_faults();
  write_all(b, n);
  long faults = minor_faults() - before;
  /* (Not under a sanitizer: its shadow memory faults beside the block's pages.) */
  if (thp_fallbacks() == fallbacks && !TT_SANITIZER) /* the kernel had huge pages to give */
    cr_assert_leq(faults, 32, "%ld faults for %zu MiB: the advice came after a page was "
                  "touched, or not at all", faults, n / MiB);
  ta_free(a);
  ta_free(b);
}

/* The kernel's mapping that holds p: its end, as /proc/self/maps says. */
static uintptr_t mapping_end(const void *p) {
  FILE *f = fopen("/proc/self/maps", "r");
  cr_assert_not_null(f);
  char line[512];
  uintptr_t end = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && (uintptr_t)p >= lo && (uintptr_t)p < hi) {
      end = hi;
      break;
    }
  }
  fclose(f);
  return end;
}

/* A block with huge pages whose last byte is in a 2 MiB page that holds nothing yet, and
 * that it fills by less than it would commit past its end (more than an eighth of the
 * block): its mapping ends at its last page, so that the kernel gives that 2 MiB page no huge
 * page (with the whole granule mapped, a block of 2.1 MiB written through held 4 MiB).
 * Fresh, and reused by a larger block. */
Test(huge, block_with_huge_pages_commits_nothing_past_its_last_page) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  ta_decay_ms = 600000;
  size_t n = 2 * MiB + 100 * 1024;
  char *a = ta_malloc(n); /* written through: fresh blocks of its class get huge pages */
  write_all(a, n);
  ta_free(a);
  ta_huge_t *h = ta_huge_hdr_checked(a, TA_MAP_HUGE, "test");
  cr_assert(h->thp & HUGE_ADVISED, "judged dense at its free");
  /* The cached span, advised at its free: cut too (the kernel's collapsing would fill its
   * last 2 MiB page, which holds small pages below the block's end). */
  char *b = ta_malloc(n);
  cr_assert_eq(b, a);
  cr_assert_eq(mapping_end(b), (uintptr_t)h + ta_align_up(TA_HUGE_HDR + n, ta_page_size));
  char *c = ta_malloc(n); /* fresh */
  ta_huge_t *hc = ta_huge_hdr_checked(c, TA_MAP_HUGE, "test");
  cr_assert(hc->thp & HUGE_ADVISED, "a fresh block of a dense class gets huge pages");
  uintptr_t last = (uintptr_t)hc + ta_align_up(TA_HUGE_HDR + n, ta_page_size);
  cr_assert_eq(hc->map_size, last - (uintptr_t)hc, "mapped to its last page: %zu", hc->map_size);
  cr_assert_eq(mapping_end(c), last, "the kernel's mapping ends at the block's last page");
  write_all(c, n);
  ta_free(b);
  ta_free(c);

  /* A span whose last block ended lower, taken by a larger block that ends in a 2 MiB page
   * nothing touched. */
  size_t lo = 9 * MiB, hi = 10 * MiB + 100 * 1024; /* both in a 12 MiB span */
  char *d = ta_malloc(lo);
  write_all(d, lo);
  ta_free(d);
  char *e = ta_malloc(hi);
  cr_assert_eq(e, d, "best fit");
  cr_assert_eq(mapping_end(e),
               (uintptr_t)e - TA_HUGE_HDR + ta_align_up(TA_HUGE_HDR + hi, ta_page_size));
  /* Grown by realloc: whole granules again, which a growing block is likely to fill. */
  write_all(e, hi);
  char *f = ta_realloc(e, 14 * MiB + 100 * 1024);
  cr_assert_not_null(f);
  size_t grown = ta_huge_hdr_checked(f, TA_MAP_HUGE, "test")->map_size;
  cr_assert(grown >= 16 * MiB && grown % TA_CHUNK_SIZE == 0, "%zu", grown);
  ta_free(f);
}

/* Blocks of n bytes known to be dense: one written through and freed (judged at its free),
 * then what is free given back, so that the next block of n bytes is a fresh mapping, with
 * huge pages where the kernel has them. */
static void dense_class(size_t n) {
  char *a = ta_malloc(n);
  write_all(a, n);
  ta_free(a);
  ta_malloc_trim(0);
}

/* A block that spills into its last 2 MiB page by little keeps the whole page mapped (the
 * huge page commits less than an eighth of the block past its end): whole granules. */
Test(huge, block_that_spills_by_little_keeps_its_granules) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  size_t n = 15 * MiB; /* ends a page into [14, 16) MiB: 1 MiB less a page past it */
  dense_class(n);
  char *b = ta_malloc(n);
  ta_huge_t *hb = ta_huge_hdr_checked(b, TA_MAP_HUGE, "test");
  cr_assert(hb->thp & HUGE_ADVISED);
  cr_assert_eq(hb->map_size, 16 * MiB);
  ta_free(b);
}

/* A block that fills its last 2 MiB page keeps its granules: nothing there can be committed
 * past the block, and the room is kept for growth. */
Test(huge, block_that_fills_its_last_2_mib_page_keeps_the_granule) {
  size_t n = 6 * MiB - TA_HUGE_HDR; /* ends exactly at 6 MiB, in a span of 8 */
  dense_class(n);
  char *b = ta_malloc(n); /* fresh, with huge pages where the kernel has them */
  ta_huge_t *h = ta_huge_hdr_checked(b, TA_MAP_HUGE, "test");
  if (ta_os_thp_mode() != TA_THP_NEVER) cr_assert(h->thp & HUGE_ADVISED);
  cr_assert_eq(h->map_size, 8 * MiB);
  ta_free(b);
}

/* Without huge pages a span keeps whole granules, reused by a smaller block too. */
Test(huge, span_without_huge_pages_keeps_whole_granules) {
  ta_os_thp_mode_force(TA_THP_NEVER);
  ta_decay_ms = 600000;
  size_t n = 2 * MiB + 100 * 1024;
  char *a = ta_malloc(n);
  write_all(a, n);
  ta_huge_t *h = ta_huge_hdr_checked(a, TA_MAP_HUGE, "test");
  cr_assert_eq(h->map_size, 4 * MiB);
  ta_free(a);
  cr_assert_eq(h->map_size, 4 * MiB);
  char *b = ta_malloc(n - 64 * 1024);
  cr_assert_eq(b, a);
  cr_assert_eq(h->map_size, 4 * MiB);
  ta_free(b);
}

/* With lazy commit the kernel charges a mapping whole, touched or not: a huge block's ends at
 * its last page (fresh, and a cached span taken by a larger block grows to its last page). */
Test(huge, with_lazy_commit_a_mapping_ends_at_the_block_s_last_page) {
  ta_chunk_lazy_commit(true);
  ta_decay_ms = 600000;
  size_t n = MiB + 100 * 1024;
  char *a = ta_malloc(n);
  ta_huge_t *h = ta_huge_hdr_checked(a, TA_MAP_HUGE, "test");
  uintptr_t last = (uintptr_t)h + ta_align_up(TA_HUGE_HDR + n, ta_page_size);
  cr_assert_eq(h->map_size, last - (uintptr_t)h, "%zu bytes mapped", h->map_size);
  cr_assert_eq(mapping_end(a), last);
  write_all(a, n);
  ta_free(a);
  char *b = ta_malloc(n + 200 * 1024); /* the span, grown */
  ta_huge_t *hb = ta_huge_hdr_checked(b, TA_MAP_HUGE, "test");
  cr_assert_eq(hb->map_size, ta_align_up(TA_HUGE_HDR + n + 200 * 1024, ta_page_size));
  cr_assert_eq(mapping_end(b), (uintptr_t)hb + hb->map_size);
  ta_free(b);
}

/* A block that a realloc moves from the medium heap keeps whole granules to grow into, as a
 * realloc that grows a huge block does; a malloc of the same size is cut. */
Test(huge, block_a_realloc_grows_into_keeps_room_to_grow) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  size_t n = 2 * MiB + 100 * 1024;
  dense_class(n);
  char *m = ta_malloc(600 * 1024);
  memset(m, 3, 600 * 1024);
  char *b = ta_realloc(m, n);
  ta_huge_t *hb = ta_huge_hdr_checked(b, TA_MAP_HUGE, "test");
  cr_assert(hb->thp & HUGE_ADVISED);
  cr_assert_eq(hb->map_size, 4 * MiB, "room to grow: %zu", hb->map_size);
  cr_assert_eq(b[600 * 1024 - 1], 3);
  char *c = ta_malloc(n);
  ta_huge_t *hc = ta_huge_hdr_checked(c, TA_MAP_HUGE, "test");
  cr_assert_eq(hc->map_size, ta_align_up(TA_HUGE_HDR + n, ta_page_size));
  ta_free(b);
  ta_free(c);
}

/* An aligned block whose padding before its data (the first 2 MiB page holds the meta block
 * and the padding) is more than an eighth of it gets no huge pages: fresh, or taken from a
 * span that had them. posix_memalign of 2 MiB for blocks of 4 MiB written through held 1.4
 * times their bytes. */
Test(huge, aligned_block_whose_padding_huge_pages_would_commit_gets_none) {
  if (ta_os_thp_mode() == TA_THP_NEVER) return;
  ta_decay_ms = 600000;
  size_t n = 4 * MiB;
  dense_class(n);
  void *b = NULL;
  cr_assert_eq(ta_posix_memalign(&b, 2 * MiB, n), 0);
  cr_assert_eq((uintptr_t)b % (2 * MiB), 0);
  ta_huge_t *hb = ta_huge_hdr_checked(b, TA_MAP_HUGE, "test");
  cr_assert_not(hb->thp & HUGE_ADVISED, "2 MiB of padding: no huge pages");
  cr_assert_not(has_flag(b, "hg"), "(%s)", vm_flags(b));
  write_all(b, n);
  size_t resident = ta_os_resident(hb, hb->map_size);
  cr_assert_leq(resident, n + 64 * 1024, "%zu KiB resident for %zu KiB", resident >> 10, n >> 10);
  ta_free(b); /* found dense, not advised: its padding */
  cr_assert_not(hb->thp & HUGE_ADVISED);
  cr_assert(hb->thp & HUGE_PADDED);
  /* An unpadded block takes the span (8 MiB, best fit for 6 MiB less the meta block): judged
   * again at its free, and advised then. */
  size_t m = 6 * MiB - TA_HUGE_HDR;
  char *c = ta_malloc(m);
  cr_assert_eq(c, (char *)hb + TA_HUGE_HDR, "the span, taken");
  write_all(c, m);
  ta_free(c);
  cr_assert(hb->thp & HUGE_ADVISED, "dense, unpadded: advised at its free");
  cr_assert(has_flag(c, "hg"), "(%s)", vm_flags(c));
  /* And a padded block taking it, advised, has the advice taken back. */
  void *d = NULL;
  cr_assert_eq(ta_posix_memalign(&d, 2 * MiB, n), 0);
  cr_assert_eq(d, (char *)hb + 2 * MiB, "the cached span, taken");
  cr_assert_not(hb->thp & HUGE_ADVISED);
  cr_assert_not(has_flag(d, "hg"), "(%s)", vm_flags(d));
  ta_free(d);
}

/* Where the host reclaims the memory the kernel leaves free, a huge page faulted in fresh costs
 * several times its 512 small pages: a fresh block goes without huge pages up front, even of a
 * class known to be dense, and gets them at its free, judged dense; a realloc's growing block,
 * whose pages the process recycles, gets them up front as anywhere. */
Test(huge, where_the_host_reclaims_free_memory_a_fresh_block_waits_for_its_verdict) {
  if (ta_os_thp_mode() == TA_THP_NEVER) cr_skip_test("the kernel has no huge pages");
  ta_os_host_reclaims_force(1);
  ta_decay_ms = 600000;
  size_t n = 14 * MiB;
  dense_class(n);
  char *b = ta_malloc(n);
  ta_huge_t *hb = ta_huge_hdr_checked(b, TA_MAP_HUGE, "test");
  cr_assert_not(hb->thp & HUGE_ADVISED, "fresh: no huge pages up front");
  cr_assert_not(has_flag(b, "hg"), "(%s)", vm_flags(b));
  char *c = ta_malloc(512 * 1024); /* a medium block, grown by realloc into a fresh mapping */
  memset(c, 7, 512 * 1024);
  c = ta_realloc(c, n);
  cr_assert_not_null(c);
  cr_assert_eq(ta_map_get((uintptr_t)c), TA_MAP_HUGE);
  cr_assert(ta_huge_hdr_checked(c, TA_MAP_HUGE, "test")->thp & HUGE_ADVISED,
            "a realloc's growth: huge pages up front");
  cr_assert(has_flag(c, "hg"), "(%s)", vm_flags(c));
  cr_assert_eq(c[512 * 1024 - 1], 7);
  write_all(b, n);
  ta_free(b);
  cr_assert(hb->thp & HUGE_ADVISED, "found dense at its free: advised then");
  cr_assert(has_flag(b, "hg"), "(%s)", vm_flags(b));
  ta_free(c);
}

/* There a span with huge pages that a smaller block takes keeps its excess with the block, as a
 * span without them does (above): dropped, it faulted in again from memory the host had taken. */
Test(huge, where_the_host_reclaims_free_memory_a_span_with_huge_pages_keeps_its_excess) {
  if (ta_commit_lazy()) cr_skip_test("lazy commit: a mapping ends at its block, nothing kept");
  ta_os_host_reclaims_force(1);
  ta_decay_ms = 600000;
  char *p = cached_span_with_huge_pages(20 * MiB); /* a span of 24 MiB */
  ta_huge_t *h = ta_huge_hdr_checked(p, TA_MAP_HUGE, "test");
  size_t written = h->dirty_end; /* the block's pages, its last page's end */
  cr_assert_gt(written, 16 * MiB);
  char *q = ta_malloc(12 * MiB); /* needs 16: the span serves, the rest of it is excess */
  cr_assert_eq(q, p);
  cr_assert_eq(ta_huge_kept_excess(), (intptr_t)(written - 16 * MiB), "kept with the block");
  cr_assert_eq(ta_os_resident((char *)h + 16 * MiB, 4 * MiB), 4 * MiB, "not dropped");
  ta_free(q);
  cr_assert_eq(ta_huge_kept_excess(), 0, "given up at the free, with the span");
}

/* huge_fresh decides where it is set: true, huge pages up front even where the host reclaims
 * free memory; false, none up front even where it does not. */
Test(huge, huge_fresh_overrides_the_host) {
  if (ta_os_thp_mode() == TA_THP_NEVER) cr_skip_test("the kernel has no huge pages");
  if (ta_commit_lazy()) cr_skip_test("lazy commit: a mapping ends at its block, nothing kept");
  ta_decay_ms = 600000;
  size_t n = 14 * MiB;
  dense_class(n);
  ta_os_host_reclaims_force(1);
  ta_huge_fresh = 1;
  char *a = ta_malloc(n);
  cr_assert(ta_huge_hdr_checked(a, TA_MAP_HUGE, "test")->thp & HUGE_ADVISED, "set: up front");
  ta_os_host_reclaims_force(0);
  ta_huge_fresh = 0;
  char *b = ta_malloc(n);
  cr_assert_not(ta_huge_hdr_checked(b, TA_MAP_HUGE, "test")->thp & HUGE_ADVISED, "off: none");
  ta_free(a);
  ta_free(b);
  /* And the excess of a span with huge pages that a smaller block takes: kept with it off,
   * dropped with it on, whatever the host. */
  for (int on = 0; on < 2; on++) {
    ta_malloc_trim(0);
    ta_huge_fresh = -1;
    ta_os_host_reclaims_force(on); /* the opposite of what the setting says */
    char *p = cached_span_with_huge_pages(20 * MiB);
    ta_huge_fresh = on;
    char *q = ta_malloc(12 * MiB);
    cr_assert_eq(q, p);
    if (on)
      cr_assert_eq(ta_huge_kept_excess(), 0, "huge_fresh:true: dropped");
    else
      cr_assert_gt(ta_huge_kept_excess(), 0, "huge_fresh:false: kept");
    ta_free(q);
  }
}

/* The reading of a balloon driver's directory, on one made here: many entries (more than one
 * read of the directory's entries), names too long to be a device's, an entry without
 * features, a device without reporting, files not named virtio*; then a device with it. */
static void fixture_file(const char *dir, const char *name, const char *features) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  cr_assert_eq(mkdir(path, 0700), 0, "%s", path);
  if (!features) return;
  snprintf(path, sizeof path, "%s/%s/features", dir, name);
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  fputs(features, f);
  fclose(f);
}
/* The bytes of the directory's listing before the entry `name` (as getdents64 lays it out). */
static size_t listed_before(const char *dir, const char *name) {
  DIR *d = opendir(dir);
  cr_assert_not_null(d);
  size_t at = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL && strcmp(e->d_name, name) != 0;)
    at += (19 + strlen(e->d_name) + 1 + 7) & ~(size_t)7;
  closedir(d);
  return at;
}
Test(huge, balloon_reports_reads_the_features_of_each_device) {
  char dir[] = "/tmp/tamalloc-balloon-XXXXXX";
  cr_assert_not_null(mkdtemp(dir));
  char name[128];
  for (int i = 0; i < 40; i++) { /* about 3 KiB of entries */
    snprintf(name, sizeof name, "virtio%02d-a-name-long-enough-to-fill-a-read-of-entries-xxxxx", i);
    fixture_file(dir, name, "0110000000000000");
  }
  memset(name, 'z', sizeof name);
  memcpy(name, "virtio", 6);
  name[70] = 0;
  fixture_file(dir, name, "0000011111"); /* a name of 70: skipped */
  fixture_file(dir, "virtio_x", NULL);
  fixture_file(dir, "virtio1", "0110000000000000"); /* no reporting */
  fixture_file(dir, "balloon", "1111111111111111"); /* not a device */
  fixture_file(dir, "virtio2", "01100");            /* too short to say */
  cr_assert_eq(ta_os_balloon_reports(dir), 0);
  fixture_file(dir, "virtio3", "0110010000000000");
  /* More fillers until the device lies past the first kilobyte of the listing, where the
   * directory's order allows (each entry takes 8-aligned 20 bytes and its name). */
  for (int more = 40; listed_before(dir, "virtio3") < 1100 && more < 240; more += 10)
    for (int i = more; i < more + 10; i++) {
      snprintf(name, sizeof name, "virtio%03d-a-name-long-enough-to-fill-a-read-of-entries-x", i);
      fixture_file(dir, name, "0110000000000000");
    }
  cr_assert_eq(ta_os_balloon_reports(dir), 1);
  char missing[600];
  snprintf(missing, sizeof missing, "%s/none", dir);
  cr_assert_eq(ta_os_balloon_reports(missing), 0, "no driver: no");
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  cr_assert_eq(system(cmd), 0);
}

/* What the library reads of this machine, against the same files read with the C library. */
Test(huge, host_reclaims_as_the_balloon_says) {
  static const char dir[] = "/sys/bus/virtio/drivers/virtio_balloon";
  bool expect = false;
  DIR *d = opendir(dir);
  for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
    if (strncmp(e->d_name, "virtio", 6) != 0) continue;
    char path[512], bits[160] = "";
    snprintf(path, sizeof path, "%s/%s/features", dir, e->d_name);
    FILE *f = fopen(path, "r");
    if (f && fgets(bits, sizeof bits, f) && strlen(bits) > 5 && bits[5] == '1') expect = true;
    if (f) fclose(f);
  }
  if (d) closedir(d);
  ta_os_host_reclaims_force(-1); /* read the machine's */
  cr_assert_eq(ta_os_host_reclaims(), expect);
  ta_os_host_reclaims_force(!expect);
  cr_assert_eq(ta_os_host_reclaims(), !expect, "the tests' setting holds");
}
