/* Unit tests: spans (span.c) — requests of span_min_kb (16 KiB here) to 256 KiB as whole pages from bins the
 * whole process shares: which requests they serve, their sizes, reuse by any thread, cuts and
 * realloc, misuse, the decay, the budget, malloc_trim, statistics, and many threads at once.
 *
 * The unit tier runs without spans (support/runs_first.c): each test here turns them on
 * before its first allocation. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "support/heap_map_text.h"
#include "support/page_in_force.h"
#include "tamalloc.h"

#define KIB ((size_t)1024)

static void spans_on(void) {
  ta_conf_span_min_kb = 16;
  ta_span_threads = 0; /* spans from the first thread on */
  ta_bg_setting = 0; /* the tests purge themselves */
  ta_os_cpu_force(0); /* one set of dirty bins, whatever CPU the test runs on */
}

/* Makes the thread believe it runs on a CPU of dirty set s (span.c's here()). */
static void force_set(unsigned s) {
  unsigned n = ta_os_ncpu();
  ta_os_cpu_force((int)(n <= 8 ? s : (s * n + 7) / 8));
}

static void nap_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Pages of [p, p + n) in memory. */
static size_t resident_pages(void *p, size_t n) {
  size_t pages = n / ta_os_page_size(), count = 0; /* mincore answers in the kernel's pages */
  unsigned char vec[1024];
  cr_assert_leq(pages, sizeof vec);
  cr_assert_eq(mincore(p, n, vec), 0);
  for (size_t i = 0; i < pages; i++) count += vec[i] & 1;
  return count;
}

TestSuite(span, .init = spans_on);

Test(span, requests_of_16k_to_256k_are_whole_pages) {
  needs_4k_pages();
  void *below = ta_malloc(16 * KIB - 1);
  cr_assert_eq(ta_map_get((uintptr_t)below), TA_MAP_MEDIUM, "under 16 KiB: the medium heap");
  cr_assert_eq(ta_span_max, 256 * KIB);
  for (size_t n = 16 * KIB; n <= 256 * KIB; n = n * 5 / 4 + 1) {
    char *p = ta_malloc(n);
    cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_SPAN, "malloc(%zu)", n);
    cr_assert_eq((uintptr_t)p % 4096, 0, "a span starts on a page");
    size_t u = ta_malloc_usable_size(p);
    size_t want = (ta_class_size[ta_size_class(n)] + 4095) / 4096 * 4096; /* its class, in pages */
    cr_assert_eq(u, want, "malloc(%zu): usable %zu", n, u);
    cr_assert_eq(ta_nallocx(n, 0), u, "nallocx says what malloc gives");
    memset(p, 0x5a, u);
    ta_free(p);
  }
  void *top = ta_malloc(256 * KIB);
  cr_assert_eq(ta_map_get((uintptr_t)top), TA_MAP_SPAN);
  void *huge = ta_malloc(256 * KIB + 1);
  cr_assert_eq(ta_map_get((uintptr_t)huge), TA_MAP_MEDIUM, "above 256 KiB: the medium heap");
  /* Aligned beyond a page: the medium heap, which cuts to any alignment. */
  void *al = ta_aligned_alloc(8192, 20000);
  cr_assert_eq(ta_map_get((uintptr_t)al), TA_MAP_MEDIUM);
  cr_assert_eq((uintptr_t)al % 8192, 0);
  void *pa = ta_aligned_alloc(4096, 20000);
  cr_assert_eq(ta_map_get((uintptr_t)pa), TA_MAP_SPAN);
  ta_free(below);
  ta_free(top);
  ta_free(huge);
  ta_free(al);
  ta_free(pa);
}

static pthread_barrier_t all_in;
static void *take_an_arena(void *arg) {
  (void)arg;
  ta_free(ta_malloc(16));
  pthread_barrier_wait(&all_in); /* all alive at once */
  return NULL;
}

Test(span, spans_serve_once_the_process_has_had_8_threads) {
  needs_4k_pages();
  ta_span_threads = TA_FEW_ARENAS;
  void *before = ta_malloc(40000);
  cr_assert_eq(ta_map_get((uintptr_t)before), TA_MAP_MEDIUM, "one thread: the medium heap");
  enum { T = TA_FEW_ARENAS - 1 };
  pthread_t t[T];
  pthread_barrier_init(&all_in, NULL, T);
  for (int i = 0; i < T; i++) cr_assert_eq(pthread_create(&t[i], NULL, take_an_arena, NULL), 0);
  for (int i = 0; i < T; i++) pthread_join(t[i], NULL);
  void *after = ta_malloc(40000); /* this thread and T others had arenas at once */
  cr_assert_eq(ta_map_get((uintptr_t)after), TA_MAP_SPAN, "TA_FEW_ARENAS threads: spans");
  cr_assert_eq(ta_nallocx(40000, 0), 40960);
  ta_free(before);
  ta_free(after);
}

static void *alloc_and_free(void *arg) {
  void *p = ta_malloc((size_t)(uintptr_t)arg);
  memset(p, 1, (size_t)(uintptr_t)arg);
  ta_free(p);
  return p;
}

Test(span, a_span_freed_by_one_thread_is_reused_by_another) {
  pthread_t t;
  void *freed;
  cr_assert_eq(pthread_create(&t, NULL, alloc_and_free, (void *)(uintptr_t)40000), 0);
  pthread_join(t, &freed);
  void *p = ta_malloc(40000);
  cr_assert_eq(p, freed, "the other thread's span (%p) was not reused: %p", freed, p);
  ta_free(p);
}

Test(span, a_free_span_serves_its_class_and_a_clean_one_is_cut) {
  needs_4k_pages();
  char *big = ta_malloc(32 * KIB); /* 8 pages */
  ta_free(big);
  char *d = ta_malloc(16 * KIB);
  cr_assert_neq(d, big, "a resident free span is not cut");
  char *again = ta_malloc(30 * KIB); /* the class of 32 KiB */
  cr_assert_eq(again, big, "a free span serves any request of its class");
  ta_free(again);
  ta_malloc_trim(0); /* its pages go back: a clean span */
  char *c = ta_malloc(20 * KIB); /* 5 pages: a rest of 3 would be less than a span */
  cr_assert_neq(c, big, "an 8-page span was cut for 5 pages");
  char *a = ta_malloc(16 * KIB); /* 4 pages: cut */
  cr_assert_eq(a, big);
  char *b = ta_malloc(16 * KIB); /* the rest, exactly */
  cr_assert_eq(b, big + 16 * KIB);
  ta_free(a);
  ta_free(b);
  ta_free(c);
  ta_free(d);
}

Test(span, realloc_shrinks_in_place_and_frees_the_rest) {
  needs_4k_pages();
  char *p = ta_malloc(100000); /* its class, 104 KiB: 26 pages */
  for (size_t i = 0; i < 100000; i++) p[i] = (char)i;
  cr_assert_eq(ta_malloc_usable_size(p), 106496);
  cr_assert_eq(ta_realloc(p, 95000), p); /* 96 KiB: 2 pages to free, less than a span */
  cr_assert_eq(ta_malloc_usable_size(p), 106496, "kept whole");
  char *q = ta_realloc(p, 40000); /* 10 pages */
  cr_assert_eq(q, p);
  cr_assert_eq(ta_malloc_usable_size(q), 40960);
  for (size_t i = 0; i < 40000; i++) cr_assert_eq(q[i], (char)i);
  char *rest = ta_malloc(16 * 4096);
  cr_assert_eq(rest, p + 40960, "the 16 pages cut off are a free span");
  /* Growing moves (a span never grows in place), with the data, to the medium heap where
   * it can grow in place next time. */
  char *g = ta_realloc(q, 60000);
  cr_assert_neq(g, q);
  cr_assert_eq(ta_map_get((uintptr_t)g), TA_MAP_MEDIUM);
  for (size_t i = 0; i < 40000; i++) cr_assert_eq(g[i], (char)i);
  ta_free(g);
  /* Under the smallest span, down to half: kept, and a sized free of that size passes. */
  char *s = ta_malloc(16 * KIB);
  cr_assert_eq(ta_realloc(s, 9000), s);
  ta_free_sized(s, 9000);
  ta_free(rest);
}

Test(span, calloc_of_a_reused_span_is_zeroed) {
  char *p = ta_malloc(64 * KIB);
  memset(p, 0xee, 64 * KIB);
  ta_free(p);
  char *z = ta_calloc(1, 64 * KIB);
  cr_assert_eq(z, p, "the freed span, still resident");
  for (size_t i = 0; i < 64 * KIB; i++) cr_assert_eq(z[i], 0, "byte %zu", i);
  ta_free(z);
}

Test(span, double_free_aborts, .signal = SIGABRT) {
  void *p = ta_malloc(20000);
  ta_free(p);
  ta_free(p);
}

Test(span, double_free_after_the_pages_went_back_aborts, .signal = SIGABRT) {
  void *p = ta_malloc(20000);
  ta_free(p);
  ta_malloc_trim(0);
  ta_free(p);
}

Test(span, free_inside_a_span_aborts, .signal = SIGABRT) {
  char *p = ta_malloc(64 * KIB);
  ta_free(p + 4096);
}

Test(span, free_off_a_page_boundary_aborts, .signal = SIGABRT) {
  char *p = ta_malloc(64 * KIB);
  ta_free(p + 16);
}

Test(span, usable_size_of_a_freed_span_aborts, .signal = SIGABRT) {
  void *p = ta_malloc(64 * KIB);
  ta_free(p);
  (void)ta_malloc_usable_size(p);
}

Test(span, free_sized_with_under_half_the_size_aborts, .signal = SIGABRT) {
  void *p = ta_malloc(64 * KIB);
  ta_free_sized(p, 32 * KIB - 1);
}

Test(span, free_sized_accepts_the_request_to_the_usable_size) {
  void *p = ta_malloc(60000);
  ta_free_sized(p, 60000);
  p = ta_malloc(60000);
  ta_free_sized(p, ta_malloc_usable_size(p));
  p = ta_malloc(60000);
  ta_free_sized(p, 57345); /* the smallest request of 15 pages */
}

Test(span, pages_go_back_after_the_decay_and_the_span_is_reused_clean) {
  needs_4k_pages();
  ta_decay_ms = 300;
  enum { N = 32 };
  char *p[N];
  for (int i = 0; i < N; i++) {
    p[i] = ta_malloc(64 * KIB);
    memset(p[i], 7, 64 * KIB);
  }
  for (int i = 0; i < N; i++) ta_free(p[i]);
  cr_assert_eq(atomic_load(&ta_span_dirty.v), (size_t)N * 64 * KIB);
  cr_assert_neq(atomic_load(&ta_span_due), 0, "a due time was noted");
  cr_assert_eq(ta_span_purge(ta_os_now_ms(), ta_decay_ms), 0, "nothing is due yet");
  cr_assert_eq(resident_pages(p[0], 64 * KIB), 16);
  nap_ms(320);
  cr_assert_eq(ta_span_purge(ta_os_now_ms(), ta_decay_ms), (size_t)N * 64 * KIB);
  cr_assert_eq(atomic_load(&ta_span_dirty.v), 0);
  cr_assert_eq(atomic_load(&ta_span_due), 0, "nothing is left to purge");
  for (int i = 0; i < N; i++) cr_assert_eq(resident_pages(p[i], 64 * KIB), 0, "span %d", i);
  char *q = ta_malloc(64 * KIB);
  cr_assert_eq(q, p[N - 1], "a span given back is reused");
  for (size_t i = 0; i < 64 * KIB; i += 512) cr_assert_eq(q[i], 0, "zero-filled again");
  ta_free(q);
}

/* A freed span of 128 KiB, written through, due for its purge (decay 20 ms, 30 ms ago). */
static char *a_due_span(void) {
  ta_decay_ms = 20;
  char *p = ta_malloc(128 * KIB);
  memset(p, 7, 128 * KIB);
  ta_free(p);
  nap_ms(30);
  return p;
}

Test(span, a_slow_path_purges_what_is_due) {
  char *p = a_due_span();
  ta_free(ta_malloc(9000)); /* a medium request: its slow path gives back what is due */
  cr_assert_eq(atomic_load(&ta_span_dirty.v), 0);
  cr_assert_eq(resident_pages(p, 128 * KIB), 0);
}

/* A span handed out does the chores once every TA_CHORES_EVERY spans (alloc.c,
 * chores_sometimes): what is due goes back within that many. */
Test(span, span_requests_give_back_what_is_due_within_a_round_of_chores) {
  needs_4k_pages();
  char *p = a_due_span(); /* its malloc did this round's chores */
  char *q[TA_CHORES_EVERY];
  int n = 0;
  while (atomic_load(&ta_span_dirty.v) != 0 && n < TA_CHORES_EVERY)
    q[n++] = ta_malloc(32 * KIB); /* kept: no other span is freed */
  cr_assert_eq(atomic_load(&ta_span_dirty.v), 0, "not given back after %d span requests", n);
  cr_assert_gt(n, 1, "not at the first: p's malloc did the round's chores");
  cr_assert_eq(resident_pages(p, 128 * KIB), 0);
  while (n > 0)
    ta_free(q[--n]);
}

Test(span, malloc_trim_gives_every_free_span_back_at_once) {
  char *p = ta_malloc(256 * KIB);
  cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_SPAN);
  memset(p, 7, 256 * KIB);
  ta_free(p);
  cr_assert_eq(resident_pages(p, 256 * KIB), 64);
  cr_assert_eq(ta_malloc_trim(0), 1);
  cr_assert_eq(resident_pages(p, 256 * KIB), 0);
  cr_assert_eq(atomic_load(&ta_span_dirty.v), 0);
}

/* A freed span waits in the bins of the CPU group its freer ran on: a thread takes from its
 * own CPU's bins first, then from another's, before a clean span or new pages. */
Test(span, a_thread_takes_its_own_cpus_spans_first_then_another_cpus) {
  needs_4k_pages();
  char *p = ta_malloc(64 * KIB), *q = ta_malloc(64 * KIB);
  memset(p, 7, 64 * KIB);
  memset(q, 9, 64 * KIB);
  size_t chunks = atomic_load(&ta_span_chunks);
  force_set(2);
  ta_free(q);
  force_set(1);
  ta_free(p); /* the last freed: one stack for all would hand it out first */
  cr_assert_eq(atomic_load(&ta_span_dirty.v), 2 * 64 * KIB);
  force_set(2);
  char *a = ta_malloc(64 * KIB);
  cr_assert_eq(a, q, "CPU 2 takes the span it freed, not CPU 1's");
  char *b = ta_malloc(64 * KIB);
  cr_assert_eq(b, p, "then CPU 1's, before new pages");
  cr_assert_eq(b[100], 7, "resident as it was left");
  cr_assert_eq(atomic_load(&ta_span_dirty.v), 0);
  cr_assert_eq(atomic_load(&ta_span_chunks), chunks, "no new chunk");
  ta_free(a);
  force_set(6);
  ta_free(b);
  /* A purge and malloc_trim see every CPU's bins. */
  cr_assert_eq(ta_malloc_trim(0), 1);
  cr_assert_eq(resident_pages(a, 64 * KIB), 0);
  cr_assert_eq(resident_pages(b, 64 * KIB), 0);
  cr_assert_eq(atomic_load(&ta_span_dirty.v), 0);
  ta_os_cpu_force(-1);
}

/* A bin's pages go into the count 16 at a time; a purge moves what a bin holds back into it,
 * so that the check of the budget after a purge reads the true figure. */
Test(span, a_purge_counts_what_small_bins_hold_back) {
  needs_4k_pages();
  char *p = ta_malloc(16 * KIB); /* 4 pages: under a batch */
  memset(p, 7, 16 * KIB);
  size_t before = atomic_load(&ta_span_dirty.v);
  ta_free(p);
  cr_assert_eq(atomic_load(&ta_span_dirty.v), before, "4 pages wait in their bin's batch");
  cr_assert_eq(ta_span_purge(ta_os_now_ms(), 1000000), 0, "nothing is due");
  cr_assert_eq(atomic_load(&ta_span_dirty.v), before + 16 * KIB, "the purge counted them");
  cr_assert_eq(ta_malloc(16 * KIB), p);
  cr_assert_eq(ta_span_purge(ta_os_now_ms(), 1000000), 0);
  cr_assert_eq(atomic_load(&ta_span_dirty.v), before, "taken again: out of the count");
  ta_free(p);
}

/* Free spans have a budget of their own, dirty_max_kb; beyond it, what was freed half, an
 * eighth, a 32nd of a decay time ago goes back at once — never what was freed just now. */
Test(span, beyond_their_budget_the_oldest_spans_go_back_at_once) {
  needs_4k_pages();
  ta_dirty_max = 1 << 20;
  ta_decay_ms = 3200; /* the steps: 1600, 400 and 100 ms (room for a slow sanitized build) */
  enum { N = 32 };
  char *old[N], *young[N];
  for (int i = 0; i < N; i++) {
    old[i] = ta_malloc(64 * KIB);
    young[i] = ta_malloc(64 * KIB);
    memset(old[i], 7, 64 * KIB);
    memset(young[i], 7, 64 * KIB);
  }
  for (int i = 0; i < N; i++) ta_free(old[i]); /* 2 MiB, all just freed: they stay */
  cr_assert_eq(atomic_load(&ta_span_dirty.v), (size_t)N * 64 * KIB);
  nap_ms(450);
  for (int i = 0; i < N; i++) ta_free(young[i]);
  size_t gone = 0, kept = 0;
  for (int i = 0; i < N; i++) {
    gone += resident_pages(old[i], 64 * KIB) == 0;
    kept += resident_pages(young[i], 64 * KIB) == 16;
  }
  cr_assert_eq(gone, N, "%zu of the spans freed 450 ms before went back", gone);
  cr_assert_eq(kept, N, "%zu of the spans just freed stayed", kept);
  cr_assert_eq(atomic_load(&ta_span_dirty.v), (size_t)N * 64 * KIB);
}

/* Over the budget with only spans younger than a 32nd of the decay, frees do not walk the
 * bins again until that much time has passed. */
Test(span, young_spans_over_the_budget_are_not_looked_at_again_and_again) {
  needs_4k_pages();
  ta_dirty_max = 1 << 20;
  ta_decay_ms = 3200; /* a 32nd: 100 ms */
  enum { N = 32 };
  char *p[N];
  for (int i = 0; i < N; i++) {
    p[i] = ta_malloc(64 * KIB);
    memset(p[i], 5, 64 * KIB);
  }
  uint64_t before = ta_os_now_ms();
  for (int i = 0; i < N; i++) ta_free(p[i]);
  ta_purge_spans_excess(ta_os_now_ms());
  cr_assert(ta_spans_over_budget(), "2 MiB of spans just freed stay");
  uint64_t after = atomic_load(&ta_span_excess_after);
  cr_assert_geq(after, before + 100, "no purge of the excess before %llu", (unsigned long long)after);
  for (int i = 0; i < N; i++) cr_assert_eq(resident_pages(p[i], 64 * KIB), 16, "span %d went back", i);
}

/* Idle arenas over their budget do not make a span's free give spans back. */
Test(span, arenas_over_their_budget_leave_spans_alone) {
  needs_4k_pages();
  ta_dirty_max = 1 << 20;
  atomic_fetch_add(&ta_dirty_total.v, (size_t)64 << 20); /* as if arenas held 64 MiB */
  char *p = ta_malloc(64 * KIB);
  memset(p, 7, 64 * KIB);
  uint64_t calls = ta_os_calls(TA_OS_MADVISE);
  for (int i = 0; i < 1000; i++) {
    ta_free(p);
    p = ta_malloc(64 * KIB);
    cr_assert_eq(resident_pages(p, 64 * KIB), 16, "round %d: the span went back", i);
  }
  cr_assert_eq(ta_os_calls(TA_OS_MADVISE), calls, "no span was given back");
  atomic_fetch_sub(&ta_dirty_total.v, (size_t)64 << 20);
  ta_free(p);
}

/* A purge whose clock was read before a span's free does not take that span for an old one. */
Test(span, a_span_freed_after_the_purge_read_its_clock_is_young) {
  needs_4k_pages();
  uint64_t before = ta_os_now_ms();
  void *p = ta_malloc(20000);
  memset(p, 1, 20000);
  nap_ms(20);
  ta_free(p);
  cr_assert_eq(ta_span_purge(before, 200), 0);
  cr_assert_eq(resident_pages(p, 20480), 5);
}

/* No chunk to be had: a free resident span of a larger class is cut rather than fail. */
Test(span, without_new_chunks_a_larger_free_span_serves) {
  needs_4k_pages();
  enum { N = 15 }; /* 3.75 MiB: the first chunk, nearly */
  void *big[N];
  for (int i = 0; i < N; i++) big[i] = ta_malloc(256 * KIB);
  for (int i = 0; i < N; i++) ta_free(big[i]);
  ta_os_fail(TA_OS_MMAP | TA_OS_SBRK, 0, 1000);
  void *small[32];
  for (int i = 0; i < 32; i++) {
    small[i] = ta_malloc(20000);
    cr_assert_not_null(small[i], "malloc %d failed with %zu bytes of free spans", i,
                       (size_t)atomic_load(&ta_span_dirty.v));
  }
  ta_os_fail(0, 0, 0);
  for (int i = 0; i < 32; i++) ta_free(small[i]);
}

Test(span, statistics_count_live_and_free_spans) {
  needs_4k_pages();
  cr_assert_eq(ta_stats_enable(1), 0);
  char *live = ta_malloc(50000); /* 13 pages: 53248 */
  char *gone = ta_malloc(70000); /* 18 pages: 73728 */
  ta_free(gone);
  struct ta_stats s = {.version = TA_STATS_VERSION, .size = sizeof s};
  cr_assert_eq(ta_stats_get(&s, -1), 0);
  unsigned c = ta_size_class(53248);
  cr_assert_eq(s.classes[c].live_blocks, 1);
  cr_assert_eq(s.classes[c].usable_bytes, 53248);
  cr_assert_eq(s.classes[c].requested_bytes, 50000, "the request, recorded");
  unsigned b = ta_bin_of(73728);
  cr_assert_geq(s.classes[b].free_bytes, 73728, "the free span counts as free");
  cr_assert_geq(s.heap_bytes, TA_CHUNK_SIZE, "the span chunk is held");
  /* And the heap map names both. */
  const char *text = heap_map_text();
  char want[128];
  snprintf(want, sizeof want, "span 0x%lx 53248 live 50000\n", (unsigned long)(uintptr_t)live);
  cr_assert(strstr(text, want), "no \"%s\" in the map", want);
  snprintf(want, sizeof want, "span 0x%lx 73728 free 0\n", (unsigned long)(uintptr_t)gone);
  cr_assert(strstr(text, want), "no \"%s\" in the map", want);
  cr_assert(strstr(text, " spans mmap 0 ") || strstr(text, " spans brk 0 "), "no span chunk line");
  ta_free(live);
}

/* Many threads take and free spans of many sizes, and hand a third of them to the next
 * thread to free: every span's words name it and its owner, so a span handed out twice, or
 * one whose pages went back while live, is seen. */
enum { WORKERS = 4, ROUNDS = 20000, SLOTS = 32 };
static _Atomic(uint64_t *) mailbox[WORKERS];

static void stamp(uint64_t *p, size_t n, uint64_t tag) {
  for (size_t i = 0; i < n / 8 - 1; i += 512) p[i] = tag ^ i;
  p[n / 8 - 1] = tag;
}
static void check(uint64_t *p, size_t n, uint64_t tag) {
  for (size_t i = 0; i < n / 8 - 1; i += 512)
    cr_assert_eq(p[i], tag ^ i, "span %p damaged at word %zu", (void *)p, i);
  cr_assert_eq(p[n / 8 - 1], tag, "span %p damaged at its end", (void *)p);
}

static void *churn(void *arg) {
  unsigned me = (unsigned)(uintptr_t)arg;
  uint64_t x = 0x9e3779b97f4a7c15ULL * (me + 1);
  uint64_t *slot[SLOTS] = {0};
  size_t size[SLOTS] = {0};
  for (int r = 0; r < ROUNDS; r++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    unsigned k = (unsigned)(x % SLOTS);
    if (slot[k]) {
      check(slot[k], size[k], (uint64_t)(uintptr_t)slot[k] ^ size[k]);
      if (x % 3 == 0) {
        /* To the next thread, through its mailbox (linked through the first word). */
        _Atomic(uint64_t *) *box = &mailbox[(me + 1) % WORKERS];
        uint64_t *head = atomic_load(box);
        do slot[k][0] = (uint64_t)(uintptr_t)head;
        while (!atomic_compare_exchange_weak(box, &head, slot[k]));
      } else {
        ta_free(slot[k]);
      }
      slot[k] = NULL;
    } else {
      size[k] = 16 * KIB + (size_t)(x >> 20) % (300 * KIB); /* spans, and some above */
      slot[k] = ta_malloc(size[k]);
      cr_assert_not_null(slot[k]);
      size[k] = size[k] / 8 * 8;
      stamp(slot[k], size[k], (uint64_t)(uintptr_t)slot[k] ^ size[k]);
    }
    if (r % 64 == 0) {
      for (uint64_t *p = atomic_exchange(&mailbox[me], NULL); p;) {
        uint64_t *next = (uint64_t *)(uintptr_t)p[0];
        ta_free(p);
        p = next;
      }
    }
    if (r % 4096 == 0) ta_span_purge(ta_os_now_ms(), r % 8192 ? ta_decay_ms : 0);
  }
  for (unsigned k = 0; k < SLOTS; k++) ta_free(slot[k]);
  return NULL;
}

/* Live spans, counted in the heap map (every span chunk, through the granule map). */
static size_t live_spans(void) {
  char path[] = "/tmp/tamalloc-span-live-XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  unlink(path);
  cr_assert_eq(ta_heap_map(fd), 0);
  FILE *f = fdopen(fd, "r");
  rewind(f);
  char line[256];
  size_t live = 0;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "span ", 5) == 0 && strstr(line, " live ")) live++;
  fclose(f);
  return live;
}

Test(span, many_threads_share_the_bins_without_handing_a_span_out_twice, .timeout = 120) {
  ta_os_cpu_force(-1); /* each thread the sets of the CPUs it runs on */
  ta_decay_ms = 1;
  pthread_t t[WORKERS];
  for (unsigned i = 0; i < WORKERS; i++)
    cr_assert_eq(pthread_create(&t[i], NULL, churn, (void *)(uintptr_t)i), 0);
  for (unsigned i = 0; i < WORKERS; i++) pthread_join(t[i], NULL);
  for (unsigned i = 0; i < WORKERS; i++)
    for (uint64_t *p = atomic_exchange(&mailbox[i], NULL); p;) {
      uint64_t *next = (uint64_t *)(uintptr_t)p[0];
      ta_free(p);
      p = next;
    }
  size_t live = live_spans();
  cr_assert_eq(live, 0, "every span was freed: %zu live", live);
}

Test(span, a_fork_child_takes_and_frees_spans) {
  void *keep = ta_malloc(30000);
  ta_free(ta_malloc(50000));
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    void *a = ta_malloc(50000); /* from the parent's bins */
    void *b = ta_malloc(200000);
    memset(a, 1, 50000);
    memset(b, 1, 200000);
    ta_free(a);
    ta_free(b);
    ta_free(keep);
    _exit(0);
  }
  int status;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ta_free(keep);
}

Test(span, no_new_chunk_gives_null_and_enomem_and_loses_nothing) {
  ta_free(ta_malloc(16)); /* the map and the arena exist: the next mappings are span chunks' */
  char *keep = ta_malloc(20000);
  memset(keep, 3, 20000);
  ta_os_fail(TA_OS_MMAP | TA_OS_SBRK, 0, 1000);
  void *p[24];
  int got = 0;
  errno = 0;
  while (got < 24 && (p[got] = ta_malloc(256 * KIB)) != NULL) got++;
  cr_assert_lt(got, 24, "6 MiB of spans from a 4 MiB chunk and no new one");
  cr_assert_eq(errno, ENOMEM);
  ta_os_fail(0, 0, 0);
  void *t = ta_malloc(256 * KIB);
  cr_assert_not_null(t, "a span once chunks can be had again");
  for (size_t i = 0; i < 20000; i++) cr_assert_eq(keep[i], 3);
  for (int i = 0; i < got; i++) ta_free(p[i]);
  ta_free(t);
  ta_free(keep);
}

Test(span, the_setting_chooses_the_smallest_span) {
  needs_4k_pages();
  ta_conf_apply("span_min_kb:32");
  void *a = ta_malloc(30000);
  void *b = ta_malloc(32768);
  cr_assert_eq(ta_map_get((uintptr_t)a), TA_MAP_MEDIUM);
  cr_assert_eq(ta_map_get((uintptr_t)b), TA_MAP_SPAN);
  ta_free(a);
  ta_free(b);
}

Test(span, the_default_starts_past_8_kib) {
  needs_4k_pages();
  ta_conf_apply("span_min_kb:8");
  void *small = ta_malloc(8192);
  cr_assert_neq(ta_map_get((uintptr_t)small), TA_MAP_SPAN, "8 KiB is a small class");
  for (size_t n = 8193; n < 16 * KIB; n += 1024) {
    char *p = ta_malloc(n);
    cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_SPAN, "malloc(%zu)", n);
    size_t want = (ta_class_size[ta_size_class(n)] + 4095) / 4096 * 4096;
    cr_assert_eq(ta_malloc_usable_size(p), want, "malloc(%zu)", n);
    cr_assert_geq(want, 3 * 4096, "over 8 KiB: at least 3 pages");
    memset(p, 1, n);
    ta_free(p);
  }
  ta_free(small);
}

/* A shrink that would free fewer pages than the smallest span keeps the span whole: a sized
 * free of the size it was shrunk to is right, however far under half the usable size. */
Test(span, a_span_kept_whole_by_a_shrink_takes_the_shrunk_size) {
  needs_4k_pages();
  ta_conf_apply("span_min_kb:8");
  char *p = ta_malloc(20000); /* 5 pages */
  cr_assert_eq(ta_malloc_usable_size(p), 20480);
  char *q = ta_realloc(p, 8193); /* 3 pages; the 2 left would be no span */
  cr_assert_eq(q, p, "kept in place");
  cr_assert_eq(ta_malloc_usable_size(q), 20480, "kept whole");
  ta_free_sized(q, 8193);
  p = ta_malloc(20000);
  cr_assert_eq(ta_xallocx(p, 8193, 0, 0), 20480, "xallocx keeps it whole too");
  ta_sdallocx(p, 8193, 0);
}

/* No span of 2 pages, which no request takes (8 KiB is a small block, 8 KiB + 1 takes 3
 * pages), ever appears: not from a shrink, nor a cut, nor a chunk's tail. */
Test(span, no_span_smaller_than_the_smallest_request) {
  needs_4k_pages();
  ta_conf_apply("span_min_kb:8");
  enum { N = 400 };
  static char *p[N];
  unsigned seed = 12345;
  for (int round = 0; round < 4; round++) {
    for (int i = 0; i < N; i++) {
      seed = seed * 1103515245u + 12345u;
      size_t n = 8193 + (seed >> 8) % (64 * KIB);
      p[i] = ta_malloc(n);
      cr_assert_not_null(p[i]);
      if (i % 3 == 0) p[i] = ta_realloc(p[i], 8192 + (seed >> 20) % 2); /* 8 KiB, or one more */
      if (i % 5 == 0) (void)ta_xallocx(p[i], 8193, 0, 0);
    }
    for (int i = 0; i < N; i += 2) ta_free(p[i]);
    ta_malloc_trim(0); /* dirty spans go clean, and clean ones are cut */
    for (int i = 0; i < N; i += 2) p[i] = ta_malloc(8193 + (size_t)i * 97);
    for (int i = 0; i < N; i++) ta_free(p[i]);
  }
  const char *text = heap_map_text();
  size_t spans = 0;
  for (const char *line = strstr(text, "\nspan "); line; line = strstr(line + 1, "\nspan ")) {
    unsigned long addr, size;
    cr_assert_eq(sscanf(line + 6, "%lx %lu", &addr, &size), 2);
    cr_assert_geq(size, 3 * 4096, "a span of %lu bytes at 0x%lx", size, addr);
    spans++;
  }
  cr_assert_gt(spans, 0, "the map lists spans");
}

Test(span, span_min_kb_0_turns_spans_off) {
  ta_conf_apply("span_min_kb:0");
  void *a = ta_malloc(100000);
  cr_assert_eq(ta_map_get((uintptr_t)a), TA_MAP_MEDIUM);
  ta_free(a);
}

/* A bin head's tag is one number in two parts, the 12 bits below a page and the bits above
 * the address space: each change adds one, the carry out of the low part goes into the high
 * part, the whole wraps to 0, and the address comes out as given whatever the old head held. */
Test(span, a_bin_heads_tag_counts_across_its_two_parts) {
  ta_free(ta_malloc(1)); /* started: the address bits known */
  unsigned bits = ta_os_addr_bits();
  uintptr_t addr_mask = (((uintptr_t)1 << bits) - 1) & ~(uintptr_t)0xfff;
  uintptr_t a = (uintptr_t)0x7f1234567000 & addr_mask, b = (uintptr_t)0x55aa00001000 & addr_mask;
  uintptr_t h = ta_span_head_next(a, 0);
  cr_assert_eq(h, a | 1, "the first change");
  h = ta_span_head_next(b, h);
  cr_assert_eq(h, b | 2, "another address, the tag on");
  uintptr_t full_low = a | 0xfff;
  cr_assert_eq(ta_span_head_next(b, full_low), b | ((uintptr_t)1 << bits),
               "the low part's carry goes into the high part");
  uintptr_t high = (uintptr_t)5 << bits;
  cr_assert_eq(ta_span_head_next(a, b | high | 0xfff), a | ((uintptr_t)6 << bits),
               "and adds to what it holds");
  cr_assert_eq(ta_span_head_next(b, high | 7), b | high | 8);
  cr_assert_eq(ta_span_head_next(a, ~addr_mask), a, "all ones wraps to 0");
  cr_assert_eq(ta_span_head_next(0, UINTPTR_MAX), 0, "an empty bin's head");
}
