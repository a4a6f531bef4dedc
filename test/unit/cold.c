/* Unit tests: small classes of 1 KiB and more served from the medium heap until the arena
 * uses them often (run_threshold; alloc.c, class_has_runs) — where their blocks come from,
 * when a class gets runs, the size such a block reports (its class's, spare or not), its
 * alignment, realloc, frees from other threads, double frees and the statistics.
 *
 * The unit tier runs with run_threshold 0 (support/runs_first.c): each test here sets it. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>

#include "internal.h"
#include "tamalloc.h"

#define CLS_2K 40 /* ta_class_size[40] == 2048 */

/* Through an integer, as the block's pointer bounds only its data for the compiler. */
static __attribute__((noinline)) ta_mhdr_t *hdr(void *p) {
  return (ta_mhdr_t *)((uintptr_t)p - sizeof(ta_mhdr_t));
}
static bool has_runs(unsigned cls) {
  return (ta_tl_arena->run_classes[cls / 64] >> (cls % 64)) & 1;
}

Test(cold, the_constants_name_the_classes_they_mean) {
  cr_assert_eq(ta_class_size[TA_COLD_CLASS_MIN], 1024);
  cr_assert_eq(ta_class_size[CLS_2K], 2048);
}

Test(cold, a_class_starts_in_the_medium_heap_and_gets_runs_when_used_often) {
  ta_run_threshold = 16; /* the 16 below fall within one second of the count */
  void *p[16];
  for (int i = 0; i < 15; i++) {
    p[i] = ta_malloc(2000);
    cr_assert_eq(ta_map_get((uintptr_t)p[i]), TA_MAP_MEDIUM, "block %d", i);
    cr_assert_eq(ta_malloc_usable_size(p[i]), 2048, "a block of the class reports its size");
    cr_assert_eq((uintptr_t)p[i] % 64, 0, "on a cache line, as a run's block would be");
    memset(p[i], 0xab, ta_malloc_usable_size(p[i]));
  }
  cr_assert_not(has_runs(CLS_2K));
  cr_assert_eq(ta_tl_arena->cur[CLS_2K], &ta_empty_run, "no run was taken");
  p[15] = ta_malloc(2048); /* the 16th within a second */
  cr_assert(has_runs(CLS_2K));
  cr_assert_eq(ta_map_get((uintptr_t)p[15]), TA_MAP_SMALL);
  cr_assert_eq(ta_run_of(p[15])->bsize, 2048);
  void *q = ta_malloc(2040); /* from then on, runs: the fast path */
  cr_assert_eq(ta_map_get((uintptr_t)q), TA_MAP_SMALL);
  for (int i = 0; i < 16; i++) ta_free(p[i]);
  ta_free(q);
  cr_assert(has_runs(CLS_2K), "a class keeps its runs");
}

static void *free_it(void *p);
static unsigned live_cold(unsigned cls) {
  return atomic_load_explicit(&ta_tl_arena->cold_live[cls], memory_order_relaxed);
}

/* However slowly it allocates them: 32 blocks of 2 KiB are a run's worth (64 KiB), and a
 * class with that many live in the medium heap would fill a run. */
Test(cold, a_class_gets_runs_once_the_arena_holds_a_runs_worth_of_its_blocks) {
  ta_run_threshold = 1000;
  void *p[33];
  for (int i = 0; i < 32; i++) {
    p[i] = ta_malloc(2000);
    cr_assert_eq(ta_map_get((uintptr_t)p[i]), TA_MAP_MEDIUM, "block %d", i);
    cr_assert_eq(live_cold(CLS_2K), (unsigned)i + 1);
  }
  cr_assert_not(has_runs(CLS_2K));
  p[32] = ta_malloc(2048);
  cr_assert(has_runs(CLS_2K), "32 live blocks of 2 KiB: the 33rd takes a run");
  cr_assert_eq(ta_map_get((uintptr_t)p[32]), TA_MAP_SMALL);
  cr_assert_eq(live_cold(CLS_2K), 32, "the run's block is not counted");
  for (int i = 0; i < 33; i++)
    ta_free(p[i]);
  cr_assert_eq(live_cold(CLS_2K), 0, "every free of a class's medium block counts");
  cr_assert(has_runs(CLS_2K), "a class keeps its runs");
}

/* What counts is what is live: a thread that allocates and frees a class's blocks one at a
 * time, fewer than run_threshold a second, keeps them in the medium heap. */
Test(cold, blocks_freed_do_not_count) {
  ta_run_threshold = 1000;
  unsigned cls = ta_size_class(8000); /* 8 KiB: 8 blocks are a run's worth */
  void *keep[7];
  for (int i = 0; i < 7; i++)
    keep[i] = ta_malloc(8000);
  for (int i = 0; i < 100; i++) {
    void *p = ta_malloc(8000);
    cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_MEDIUM, "round %d", i);
    cr_assert_eq(live_cold(cls), 8);
    ta_free(p);
    cr_assert_eq(live_cold(cls), 7);
  }
  cr_assert_not(has_runs(cls));
  for (int i = 0; i < 7; i++)
    ta_free(keep[i]);
  cr_assert_eq(live_cold(cls), 0);
}

/* Another thread's free counts when the owner takes it in; a realloc that makes the block
 * a medium block like any (grown in place) counts as its free. */
Test(cold, frees_from_other_threads_and_growth_in_place_count) {
  ta_run_threshold = 1000;
  unsigned cls = ta_size_class(4000);
  void *p = ta_malloc(4000), *q = ta_malloc(4000);
  void *last = ta_malloc(4000); /* q's hole does not join the top */
  cr_assert_eq(live_cold(cls), 3);
  pthread_t t;
  pthread_create(&t, NULL, free_it, q);
  pthread_join(t, NULL);
  cr_assert_eq(live_cold(cls), 3, "on the remote list, not taken in yet");
  void *big = ta_malloc(50000); /* a medium slow path takes the remote frees in */
  cr_assert_eq(live_cold(cls), 2);
  cr_assert_eq(ta_realloc(p, 4096 + 2000), p, "grown in place into q's hole");
  cr_assert_eq(ta_mh_load(hdr(p)) & TA_M_CLASS, 0);
  cr_assert_eq(live_cold(cls), 1);
  ta_free(p);
  cr_assert_eq(live_cold(cls), 1, "a medium block like any counts nothing");
  ta_free(last);
  cr_assert_eq(live_cold(cls), 0);
  ta_free(big);
}

/* The other writers of the count, which hold the arena's lock as the owner does: another
 * thread's purge of this arena takes its remote frees in (the purger thread's way, and
 * malloc_trim's), and xallocx shrinks a block in place into a medium block like any. */
struct purge_job {
  void *free_me;
  ta_arena_t *owner;
};
static void *free_and_purge(void *v) {
  struct purge_job *j = v;
  ta_free(j->free_me);
  ta_purge_owned_now(j->owner, ta_os_now_ms());
  return NULL;
}

Test(cold, another_threads_purge_and_xallocx_count) {
  ta_run_threshold = 1000;
  unsigned cls = ta_size_class(8000);
  void *p = ta_malloc(8000), *q = ta_malloc(8000), *last = ta_malloc(8000);
  cr_assert_eq(live_cold(cls), 3);
  struct purge_job j = {q, ta_tl_arena};
  pthread_t t;
  pthread_create(&t, NULL, free_and_purge, &j);
  pthread_join(t, NULL);
  cr_assert_eq(live_cold(cls), 2, "taken in by the other thread's purge");
  cr_assert_eq(ta_mh_load(hdr(q)) & TA_M_INUSE, 0);
  cr_assert_lt(ta_xallocx(p, 5000, 0, 0), 8192, "shrunk in place");
  cr_assert_eq(ta_mh_load(hdr(p)) & TA_M_CLASS, 0);
  cr_assert_eq(live_cold(cls), 1);
  ta_free(p);
  ta_free(last);
  cr_assert_eq(live_cold(cls), 0);
}

/* A thread that exits holding blocks of a class leaves them counted in its arena: the thread
 * that takes the arena next holds them. */
static ta_arena_t *left_arena;
static void *leave_blocks(void *v) {
  void **p = v;
  for (int i = 0; i < 3; i++)
    p[i] = ta_malloc(5000);
  left_arena = ta_tl_arena;
  return NULL;
}
static void *take_over(void *v) {
  void **p = v;
  unsigned cls = ta_size_class(5000);
  ta_free(ta_malloc(64)); /* takes an arena: the one the exited thread left */
  cr_assert_eq(ta_tl_arena, left_arena);
  cr_assert_eq(live_cold(cls), 3);
  for (int i = 0; i < 3; i++)
    ta_free(p[i]);
  cr_assert_eq(live_cold(cls), 0);
  return NULL;
}

Test(cold, an_adopted_arena_keeps_its_count) {
  ta_run_threshold = 1000;
  void *p[3];
  pthread_t t;
  pthread_create(&t, NULL, leave_blocks, p);
  pthread_join(t, NULL);
  pthread_create(&t, NULL, take_over, p);
  pthread_join(t, NULL);
}

/* An array of per-thread records (64 threads' 32-byte records: 2 KiB) shares no more lines
 * than it would in a run: it starts on a line, wherever the medium blocks before it ended. */
Test(cold, every_cold_class_block_starts_on_a_cache_line) {
  ta_run_threshold = 1000; /* all from the medium heap */
  void *p[2 * (TA_NUM_SMALL + 1)], *m[2 * (TA_NUM_SMALL + 1)];
  unsigned n = 0;
  for (unsigned c = TA_COLD_CLASS_MIN; c <= TA_NUM_SMALL; c++) {
    for (int k = 0; k < 2; k++) {
      void *q = ta_malloc(ta_class_size[c] - (size_t)k * 15);
      cr_assert_eq(ta_map_get((uintptr_t)q), TA_MAP_MEDIUM, "class %u", c);
      cr_assert_eq((uintptr_t)q % 64, 0, "class %u (%zu B): %p", c, ta_class_size[c], q);
      cr_assert_eq(ta_malloc_usable_size(q), ta_class_size[c]);
      memset(q, 0x5a, ta_class_size[c]);
      /* A plain medium block after it, ending 16, 32, 48 or 64 bytes past a line. */
      m[n] = ta_malloc(9000 + 16 * (size_t)((c + (unsigned)k) % 4));
      p[n++] = q;
    }
  }
  for (unsigned i = 0; i < n; i++) {
    ta_free(p[i]);
    ta_free(m[i]);
  }
}

/* A hole of just the class's need that is off a line is not taken: once aligned it would
 * be too small. */
Test(cold, a_hole_of_the_right_size_off_a_line_is_left_alone) {
  ta_run_threshold = 1000;
  ta_mcache_max = 0; /* x's block goes back to the heap's bins, where the request looks */
  void *a = ta_malloc(9000);
  char *x = ta_malloc(8240); /* a block of 8256 bytes: what class 8192 needs */
  void *guard = ta_malloc(9000);
  cr_assert_eq(ta_mh_load(hdr(x)) & TA_M_SIZE_MASK, 8256);
  cr_assert_neq((uintptr_t)x % 64, 0, "the hole must be off a line for this test: %p", x);
  ta_free(x);
  char *p = ta_malloc(8192);
  cr_assert_eq((uintptr_t)p % 64, 0);
  cr_assert(p < x || p >= x + 8240, "not cut from the hole: %p in %p", p, x);
  memset(p, 1, 8192);
  ta_free(p);
  ta_free(a);
  ta_free(guard);
}

/* A hole on a line 16 bytes larger than the class needs: the block cut from it keeps the 16
 * bytes (too few to stand alone) with its spare, and still reports the class's size. */
Test(cold, a_tail_too_small_to_split_off_goes_to_the_spare) {
  ta_run_threshold = 1000;
  ta_mcache_max = 0; /* x's block goes back to the heap, where the class's request cuts it */
  void *c0 = ta_malloc(1024); /* a cold block, on a line, 1088 bytes: x starts on a line */
  char *x = ta_malloc(8256);  /* a block of 8272 bytes */
  void *guard = ta_malloc(9000);
  cr_assert_eq((uintptr_t)x % 64, 0, "%p", x);
  cr_assert_eq(ta_mh_load(hdr(x)) & TA_M_SIZE_MASK, 8272);
  ta_free(x);
  void *p = ta_malloc(8192); /* needs 8256; 16 left over */
  cr_assert_eq(p, x, "the hole fits");
  cr_assert_eq(ta_mh_load(hdr(p)) >> TA_M_SPARE_SHIFT, 64);
  cr_assert_eq(ta_malloc_usable_size(p), 8192);
  ta_free_sized(p, 8192);
  ta_free(c0);
  ta_free(guard);
}

Test(cold, classes_under_1k_take_runs_from_the_first_block) {
  ta_run_threshold = 1000;
  for (size_t n = 1; n <= 960; n += 7) { /* 960: the class below 1024 */
    void *p = ta_malloc(n);
    cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_SMALL, "malloc(%zu)", n);
    ta_free(p);
  }
  void *p = ta_malloc(1009); /* class 1024 */
  cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_MEDIUM);
  ta_free(p);
}

Test(cold, threshold_zero_or_one_means_runs_from_the_first_block) {
  for (uint32_t t = 0; t <= 1; t++) {
    ta_run_threshold = t;
    void *p = ta_malloc(3000 + t * 1000);
    cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_SMALL, "threshold %u", t);
    ta_free(p);
  }
}

Test(cold, the_count_starts_again_every_second) {
  ta_run_threshold = 8;
  for (int i = 0; i < 7; i++) ta_free(ta_malloc(5000));
  cr_assert_eq(ta_tl_arena->cold_allocs[ta_size_class(5000)], 7);
  ta_tl_arena->cold_since -= 1001; /* as if a second had passed since the count began */
  void *p = ta_malloc(5000);
  cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_MEDIUM, "the 8th, but the first of a new second");
  cr_assert_eq(ta_tl_arena->cold_allocs[ta_size_class(5000)], 1);
  cr_assert_not(has_runs(ta_size_class(5000)));
  ta_free(p);
}

/* A class's block spans whole cache lines, header included, so that the next one starts on a
 * line too: what it holds beyond the class's size is its spare, and it still reports the
 * class's size. */
Test(cold, a_block_with_a_spare_reports_its_class_size) {
  ta_run_threshold = 1000;
  void *p = ta_malloc(8192); /* class 8192 from the medium heap: 8192 + 16 in lines, 8256 */
  cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_MEDIUM);
  cr_assert_eq((uintptr_t)p % 64, 0);
  cr_assert_eq(ta_mh_load(hdr(p)) & TA_M_SIZE_MASK, 8256);
  cr_assert_eq(ta_mh_load(hdr(p)) >> TA_M_SPARE_SHIFT, 48);
  cr_assert_eq(ta_malloc_usable_size(p), 8192);
  cr_assert_eq(ta_sallocx(p, 0), ta_nallocx(8192, 0));
  memset(p, 1, 8192);
  /* Grown in place, it is a medium block like any: it reports all it holds. */
  cr_assert_eq(ta_realloc(p, 8200), p);
  cr_assert_eq(ta_mh_load(hdr(p)) >> TA_M_SPARE_SHIFT, 0);
  cr_assert_eq(ta_mh_load(hdr(p)) & TA_M_CLASS, 0, "no class's block any more");
  cr_assert_eq(ta_malloc_usable_size(p), 8240);
  ta_free_sized(p, 8200);
}

/* The spare and the class flag are in the check word: a header whose spare was rewritten
 * is reported, never taken for a smaller block; nor is a medium block whose flag was set
 * taken for a class's block (whose sized frees are checked by a run's rule). */
Test(cold, a_forged_spare_is_caught_by_the_check_word, .signal = SIGABRT) {
  ta_run_threshold = 1000;
  void *p = ta_malloc(2000);
  ta_mhdr_t *h = hdr(p);
  cr_assert_eq(ta_mh_load(h) & TA_M_CLASS, TA_M_CLASS);
  ta_mh_store(h, ta_mh_load(h) | ((size_t)200 << TA_M_SPARE_SHIFT));
  (void)ta_malloc_usable_size(p);
}

Test(cold, a_forged_class_flag_is_caught_by_the_check_word, .signal = SIGABRT) {
  void *p = ta_malloc(20000);
  ta_mhdr_t *h = hdr(p);
  cr_assert_eq(ta_mh_load(h) & TA_M_CLASS, 0);
  ta_mh_store(h, ta_mh_load(h) | TA_M_CLASS);
  ta_free_sized(p, 20000);
}

/* Nothing of the medium heap's lists reaches the program: the bin links are cleared. */
Test(cold, a_block_taken_from_a_bin_holds_no_address) {
  ta_run_threshold = 1000;
  void *b[5];
  for (int i = 0; i < 5; i++) b[i] = ta_malloc(2000);
  ta_free(b[1]);
  ta_free(b[3]); /* two holes in one bin, linked to each other */
  uintptr_t *p = ta_malloc(2000);
  cr_assert(p == (void *)b[1] || p == (void *)b[3]);
  cr_assert_eq(p[0], 0);
  cr_assert_eq(p[1], 0);
  for (int i = 0; i < 5; i++)
    if (i != 1 && i != 3) ta_free(b[i]);
  ta_free(p);
}

/* ... nor does a merge leave the swallowed block's links inside the merged one. */
Test(cold, a_merge_leaves_no_address_inside_the_block) {
  ta_run_threshold = 1000;
  void *x = ta_malloc(2000), *guard = ta_malloc(2000);
  char *a = ta_malloc(2000), *b = ta_malloc(2000), *c = ta_malloc(2000);
  cr_assert_eq(b, a + 2112, "2048 + 16 in whole lines");
  ta_free(x);
  ta_free(b); /* a hole linked to x's in their bin */
  uintptr_t l[2];
  memcpy(l, b, sizeof l);
  cr_assert(l[0] != 0 || l[1] != 0, "b is linked to x");
  ta_free(a); /* merges with it */
  char *m = ta_malloc(4000); /* class 4096 (4160 bytes): the merged hole, 4224 bytes */
  cr_assert_eq(m, a);
  uintptr_t w[2];
  memcpy(w, b, sizeof w); /* where b's links were */
  cr_assert_eq(w[0], 0);
  cr_assert_eq(w[1], 0);
  ta_free(m);
  ta_free(c);
  ta_free(guard);
}

Test(cold, aligned_requests_get_their_alignment) {
  ta_run_threshold = 1000;
  for (size_t align = 32; align <= 4096; align *= 2) {
    void *p = ta_aligned_alloc(align, 1024 + 1);
    cr_assert_not_null(p);
    cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_MEDIUM, "align %zu", align);
    cr_assert_eq((uintptr_t)p % align, 0, "align %zu", align);
    size_t u = ta_malloc_usable_size(p);
    cr_assert_eq(u, ta_nallocx(1025, TA_MALLOCX_ALIGN(align)), "align %zu", align);
    ta_free_aligned_sized(p, align, 1025);
  }
}

Test(cold, calloc_zeroes_a_reused_medium_block) {
  ta_run_threshold = 1000;
  ta_mcache_max = 0; /* a's block goes back to the heap, to be cut (the cache's: mcache suite) */
  void *a = ta_malloc(20000);
  memset(a, 0x5a, 20000);
  void *guard = ta_malloc(20000);
  ta_free(a);
  unsigned char *z = ta_calloc(1, 3000);
  cr_assert_eq(ta_map_get((uintptr_t)z), TA_MAP_MEDIUM);
  for (size_t i = 0; i < 3000; i++) cr_assert_eq(z[i], 0, "byte %zu", i);
  ta_free(z);
  ta_free(guard);
}

static void *free_it(void *p) {
  ta_free(p);
  return NULL;
}

Test(cold, another_threads_free_goes_to_the_owner) {
  ta_run_threshold = 1000;
  void *p = ta_malloc(4000);
  void *guard = ta_malloc(4000); /* p's hole does not join the top */
  cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_MEDIUM);
  memset(p, 7, 4000);
  pthread_t t;
  pthread_create(&t, NULL, free_it, p);
  pthread_join(t, NULL);
  cr_assert_eq(ta_mh_load(hdr(p)) & TA_M_INUSE, TA_M_INUSE, "still on the remote list");
  void *q = ta_malloc(50000); /* a medium slow path takes the remote frees in */
  cr_assert_neq(q, p);
  cr_assert_eq(ta_mh_load(hdr(p)) & TA_M_INUSE, 0, "taken in and freed");
  ta_free(q);
  ta_free(guard);
}

Test(cold, double_free_aborts, .signal = SIGABRT) {
  ta_run_threshold = 1000;
  void *keep = ta_malloc(3000);
  void *p = ta_malloc(3000);
  void *guard = ta_malloc(3000);
  cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_MEDIUM);
  ta_free(p);
  ta_free(p);
  (void)keep;
  (void)guard;
}

/* With statistics on: a block with a spare counts in its class's row at its class's size,
 * and recording its request leaves its checked bits alone (it frees cleanly). */
Test(cold, statistics_count_the_block_in_its_class) {
  ta_run_threshold = 1000;
  ta_stats_enable(1);
  void *p = ta_malloc(8000); /* class 8192: 8256 bytes, a spare of 48 */
  cr_assert_eq(ta_mh_load(hdr(p)) >> TA_M_SPARE_SHIFT, 48);
  void *q[10];
  for (int i = 0; i < 10; i++) q[i] = ta_malloc(2000);
  struct ta_stats s;
  memset(&s, 0, sizeof s);
  s.version = TA_STATS_VERSION;
  s.size = sizeof s;
  cr_assert_eq(ta_stats_get(&s, -1), 0);
  cr_assert_eq(s.classes[CLS_2K].live_blocks, 10);
  cr_assert_eq(s.classes[CLS_2K].usable_bytes, 10 * 2048);
  cr_assert_eq(s.classes[CLS_2K].requested_bytes, 10 * 2000);
  cr_assert_eq(s.classes[TA_NUM_SMALL].live_blocks, 1);
  cr_assert_eq(s.classes[TA_NUM_SMALL].usable_bytes, 8192);
  cr_assert_eq(s.classes[TA_NUM_SMALL].requested_bytes, 8000);
  /* A free hole of a class's size is a medium block, not a free block of the class's runs. */
  uint64_t medium_free = s.classes[TA_NUM_SMALL + 1].free_blocks;
  ta_free(q[3]);
  q[3] = NULL;
  cr_assert_eq(ta_stats_get(&s, -1), 0);
  cr_assert_eq(s.classes[CLS_2K].free_blocks, 0);
  cr_assert_eq(s.classes[CLS_2K].live_blocks, 9);
  cr_assert_eq(s.classes[TA_NUM_SMALL + 1].free_blocks, medium_free + 1);
  for (int i = 0; i < 10; i++) ta_free(q[i]);
  ta_free(p);
}

/* realloc keeps a class's block in place down to half its size: still the class's block. */
Test(cold, realloc_in_place_keeps_the_class) {
  ta_run_threshold = 1000;
  void *p = ta_malloc(2000);
  cr_assert_eq(ta_realloc(p, 1500), p);
  cr_assert_eq(ta_mh_load(hdr(p)) & TA_M_CLASS, TA_M_CLASS);
  cr_assert_eq(ta_malloc_usable_size(p), 2048);
  ta_free(p);
}

/* Sized frees check a class's block from the medium heap as a run's: a size beyond its class,
 * or, aligned, one of a smaller class, is reported. */
Test(cold, free_sized_beyond_the_class_aborts, .signal = SIGABRT) {
  ta_run_threshold = 1000;
  void *p = ta_malloc(2000);
  cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_MEDIUM);
  ta_free_sized(p, 2049);
}

Test(cold, free_aligned_sized_of_a_smaller_class_aborts, .signal = SIGABRT) {
  ta_run_threshold = 1000;
  void *p = ta_aligned_alloc(1024, 3000); /* class 3072 */
  cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_MEDIUM);
  ta_free_aligned_sized(p, 1024, 3000); /* the right size passes */
  p = ta_aligned_alloc(1024, 3000);
  ta_free_aligned_sized(p, 1024, 2000); /* class 2048: not this block's */
}

/* A run's rule: any size up to the class's passes free_sized (memalign and realloc serve
 * smaller requests from it), where a medium block's rule (within 79 bytes, or down to half)
 * would abort. */
Test(cold, sized_frees_with_the_request_or_the_usable_size_pass) {
  ta_run_threshold = 1000;
  void *s = ta_malloc(2000);
  ta_free_sized(s, 100);
  for (size_t n = 961; n <= 8192; n += 97) {
    void *p = ta_malloc(n);
    cr_assert_eq(ta_map_get((uintptr_t)p), TA_MAP_MEDIUM, "malloc(%zu)", n);
    ta_free_sized(p, n);
    p = ta_malloc(n);
    ta_sdallocx(p, ta_sallocx(p, 0), 0);
  }
}

/* A medium block shrunk in place to a small size serves no class: the medium rule holds
 * (down to half its size), not a run's. */
Test(cold, a_shrunk_medium_block_keeps_the_medium_rule, .signal = SIGABRT) {
  ta_run_threshold = 1000;
  void *p = ta_malloc(20000);
  void *guard = ta_malloc(20000);
  p = ta_realloc(p, 5000);
  cr_assert_eq(ta_mh_load(hdr(p)) & TA_M_CLASS, 0);
  (void)guard;
  ta_free_sized(p, 100);
}
