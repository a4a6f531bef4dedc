/*
 * Unit tests: injected failures at every kind of system call the allocator makes.
 *
 * For each operation (sbrk, mmap, munmap, madvise, mremap), with chunks from the program
 * break and without, and for every skip 0..SKIPS: the next call of that operation after
 * `skip` successes fails (once, or from then on), while a fixed mixed workload runs through
 * every entry point. Every call either succeeds (aligned, usable size enough, contents
 * kept) or fails with NULL and ENOMEM; blocks allocated before keep their bytes; once all
 * is freed and trimmed the mapped bytes are back near where they started. The same
 * workload also runs in a child process under RLIMIT_DATA and RLIMIT_AS limits.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "tamalloc.h"
#include "tatest.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define SKIPS 24
#define MAXB 64

typedef struct {
  unsigned char *p;
  size_t size;
  uint64_t seed;
} blk_t;

typedef struct {
  blk_t b[MAXB];
  int n;
  unsigned failures; /* calls that gave NULL / ENOMEM */
} set_t;

/* Pattern kept over the first and last 4 KiB of a block (all of it when smaller). */
static void put(unsigned char *p, size_t n, uint64_t seed) {
  size_t head = n < 8 * KiB ? n : 4 * KiB;
  tt_fill_range(p, 0, head, seed);
  if (head < n) tt_fill_range(p, n - 4 * KiB, 4 * KiB, seed);
}

static void check(const blk_t *b, const char *when) {
  size_t n = b->size, head = n < 8 * KiB ? n : 4 * KiB;
  size_t bad = tt_check_range(b->p, 0, head, b->seed);
  if (bad == SIZE_MAX && head < n) bad = tt_check_range(b->p, n - 4 * KiB, 4 * KiB, b->seed);
  cr_assert_eq(bad, SIZE_MAX, "%s: block %p of %zu bytes: byte %zu changed", when, b->p, n, bad);
}

/* A result: NULL with ENOMEM, or a block with the alignment and the usable size. */
static void take(set_t *s, void *p, int err, size_t size, size_t align, const char *what) {
  if (p == NULL) {
    cr_assert_eq(err, ENOMEM, "%s(%zu) failed with errno %d", what, size, err);
    s->failures++;
    return;
  }
  if (align < 16) align = 16;
  cr_assert_eq((uintptr_t)p & (align - 1), 0, "%s(%zu) = %p: not aligned to %zu", what, size, p,
               align);
  cr_assert_geq(ta_malloc_usable_size(p), size, "%s(%zu): usable size too small", what, size);
  cr_assert_lt(s->n, MAXB);
  blk_t *b = &s->b[s->n++];
  b->p = p;
  b->size = size;
  b->seed = tt_mix((uint64_t)(uintptr_t)p, size);
  put(b->p, size, b->seed);
}

static void drop(set_t *s, int i, int how) {
  check(&s->b[i], "before free");
  errno = 777;
  if (how == 1) ta_free_sized(s->b[i].p, s->b[i].size);
  else ta_free(s->b[i].p);
  cr_assert_eq(errno, 777, "free changed errno");
  s->b[i] = s->b[--s->n];
}

/* realloc of block i to size: moved or not, the prefix stays; a failure leaves it whole. */
static void grow(set_t *s, int i, size_t size, bool array) {
  blk_t *b = &s->b[i];
  check(b, "before realloc");
  errno = 0;
  void *q = array ? ta_reallocarray(b->p, 2, size / 2) : ta_realloc(b->p, size);
  if (array) size = 2 * (size / 2);
  if (q == NULL) {
    cr_assert_eq(errno, ENOMEM, "realloc(%zu) failed with errno %d", size, errno);
    s->failures++;
    check(b, "after a failed realloc");
    return;
  }
  cr_assert_geq(ta_malloc_usable_size(q), size);
  size_t keep = b->size < size ? b->size : size;
  size_t head = b->size < 8 * KiB ? b->size : 4 * KiB;
  if (head > keep) head = keep;
  cr_assert_eq(tt_check_range(q, 0, head, b->seed), SIZE_MAX, "realloc lost the prefix");
  b->p = q;
  b->size = size;
  b->seed = tt_mix(b->seed, size);
  put(b->p, size, b->seed);
}

/* The workload: every entry point, small, medium and huge sizes, growth and shrinking. */
static void workload(set_t *s) {
  static const size_t sizes[] = {24, 200, 3000, 8192, 20000, 200000, 900000,
                                 2 * MiB, 5 * MiB + 123, 12 * MiB};
  int err;
  for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    size_t n = sizes[i];
    errno = 0;
    void *p = ta_malloc(n);
    err = errno;
    take(s, p, err, n, 16, "malloc");
    errno = 0;
    p = ta_calloc(3, n / 3 + 1);
    err = errno;
    if (p) cr_assert_eq(tt_check_zero(p, 3 * (n / 3 + 1) < 64 * KiB ? 3 * (n / 3 + 1) : 64 * KiB),
                        SIZE_MAX, "calloc not zeroed");
    take(s, p, err, 3 * (n / 3 + 1), 16, "calloc");
    size_t al = (size_t)64 << (i % 12); /* 64 .. 128 KiB */
    errno = 0;
    p = ta_aligned_alloc(al, n);
    err = errno;
    take(s, p, err, n, al, "aligned_alloc");
    errno = 0;
    p = ta_memalign(al * 3, n / 2 + 1); /* rounded up to a power of two */
    err = errno;
    take(s, p, err, n / 2 + 1, al * 4, "memalign");
    void *q = (void *)(uintptr_t)0x1230;
    errno = 0;
    int r = ta_posix_memalign(&q, i & 1 ? 4 * MiB : 256, n);
    if (r != 0) {
      cr_assert_eq(r, ENOMEM);
      cr_assert_eq(errno, ENOMEM);
      cr_assert_eq(q, (void *)(uintptr_t)0x1230, "posix_memalign changed *p on failure");
      q = NULL;
    }
    take(s, q, ENOMEM, n, i & 1 ? 4 * MiB : 256, "posix_memalign");
    errno = 0;
    p = i & 1 ? ta_valloc(n) : ta_pvalloc(n);
    err = errno;
    take(s, p, err, n, 4096, i & 1 ? "valloc" : "pvalloc");
    if (s->n > 0) grow(s, (int)(i * 7 % (unsigned)s->n), sizes[(i + 3) % 10], i & 1);
    if (s->n > 0) grow(s, (int)(i * 5 % (unsigned)s->n), sizes[(i + 8) % 10] + 77, false);
    if (s->n > 2) drop(s, (int)(i * 3 % (unsigned)s->n), (int)(i & 1));
    if (i % 4 == 3) {
      int t = ta_malloc_trim(0);
      cr_assert(t == 0 || t == 1);
    }
  }
}

static void free_set(set_t *s) {
  while (s->n > 0) drop(s, s->n - 1, 0);
}

static size_t mapped(void) { return atomic_load(&ta_os_mapped_bytes.v); }

/* Blocks made before any failure: they must come out of every run intact. */
static set_t before;

static size_t start_state(bool brk) {
  ta_chunk_use_brk(brk);
  memset(&before, 0, sizeof before);
  static const size_t sizes[] = {40, 5000, 70000, 3 * MiB};
  for (int i = 0; i < 4; i++) take(&before, ta_malloc(sizes[i]), 0, sizes[i], 16, "malloc");
  cr_assert_eq(before.failures, 0);
  /* Once through, so that lazily made structures exist before the baseline. */
  static set_t warm;
  workload(&warm);
  free_set(&warm);
  ta_malloc_trim(0);
  return mapped();
}

static void run_faults(unsigned op, bool brk) {
  size_t base = start_state(brk);
  unsigned total_failures = 0;
  static const unsigned counts[] = {1, 1000000};
  for (unsigned c = 0; c < 2; c++) {
    for (unsigned skip = 0; skip <= SKIPS; skip++) {
      static set_t s;
      memset(&s, 0, sizeof s);
      if (op & TA_OS_MUNMAP) base = mapped(); /* what earlier rounds left stays */
      ta_os_fail(op, skip, counts[c]);
      workload(&s);
      ta_os_fail(0, 0, 0);
      total_failures += s.failures;
      for (int i = 0; i < before.n; i++) check(&before.b[i], "a block made before");
      for (int i = 0; i < s.n; i++) check(&s.b[i], "after the failures");
      free_set(&s);
      /* Everything the workload holds is freed; the allocator still works. */
      void *p = ta_malloc(100);
      cr_assert_not_null(p, "malloc fails once the system calls work again");
      ta_free(p);
      ta_malloc_trim(0);
      /* A failed munmap leaves its mapping: with munmap failing, what may stay is bounded
       * by what this round of the workload mapped, not more. */
      size_t slack = op & TA_OS_MUNMAP ? 160 * MiB : 16 * MiB;
      cr_assert_leq(mapped(), base + slack,
                    "op 0x%x skip %u count %u: %zu bytes mapped after freeing all and trimming,"
                    " %zu before",
                    op, skip, counts[c], mapped(), base);
      if (!(op & TA_OS_MUNMAP)) base = base < mapped() ? base : mapped();
    }
  }
  free_set(&before);
  /* Only a refused mapping makes an allocation fail: a break that cannot move gives way to
   * mmap, a failed munmap or madvise keeps the memory, a failed mremap copies. */
  if (op & TA_OS_MMAP)
    cr_assert_gt(total_failures, 0, "no allocation ever failed with mmap failing");
  else
    cr_assert_eq(total_failures, 0, "%u allocations failed with only op 0x%x failing",
                 total_failures, op);
}

Test(faults, sbrk_with_brk) { run_faults(TA_OS_SBRK, true); }
Test(faults, sbrk_without_brk) { run_faults(TA_OS_SBRK, false); }
Test(faults, mmap_with_brk) { run_faults(TA_OS_MMAP, true); }
Test(faults, mmap_without_brk) { run_faults(TA_OS_MMAP, false); }
Test(faults, munmap_with_brk) { run_faults(TA_OS_MUNMAP, true); }
Test(faults, munmap_without_brk) { run_faults(TA_OS_MUNMAP, false); }
Test(faults, madvise_with_brk) { run_faults(TA_OS_MADVISE, true); }
Test(faults, madvise_without_brk) { run_faults(TA_OS_MADVISE, false); }
Test(faults, mremap_with_brk) { run_faults(TA_OS_MREMAP, true); }
Test(faults, mremap_without_brk) { run_faults(TA_OS_MREMAP, false); }
Test(faults, everything_at_once) { run_faults(TA_OS_SBRK | TA_OS_MMAP | TA_OS_MUNMAP |
                                              TA_OS_MADVISE | TA_OS_MREMAP, true); }

/* ---- resource limits, in a child process --------------------------------------------- */

#if !TT_SANITIZER
/* A figure of /proc/self/status in bytes ("VmData:", "VmSize:"). */
static size_t status_bytes(const char *key) { return (size_t)tt_status_kib(key) * KiB; }

/* In a child: the limit set 24 MiB above what the process uses now, then the workload
 * over and over. Exits 0 when every failure was graceful and some happened. */
static void run_limited(int resource, const char *key, bool brk) {
  fflush(NULL);
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    ta_chunk_use_brk(brk);
    set_t keep = {0};
    take(&keep, ta_malloc(3000), 0, 3000, 16, "malloc");
    take(&keep, ta_malloc(300000), 0, 300000, 16, "malloc");
    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max = status_bytes(key) + 24 * MiB;
    if (setrlimit(resource, &rl) != 0) _exit(3);
    static set_t s;
    unsigned failures = 0;
    for (int round = 0; round < 6; round++) {
      memset(&s, 0, sizeof s);
      workload(&s);
      failures += s.failures;
      for (int i = 0; i < keep.n; i++) check(&keep.b[i], "a block made before the limit");
      free_set(&s);
      ta_malloc_trim(0);
    }
    free_set(&keep);
    _exit(failures > 0 ? 0 : 4);
  }
  int status = tt_wait_timeout(pid, 120);
  char buf[128];
  cr_assert(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
            "the child under the limit: %s (exit 3: setrlimit failed, 4: nothing ever failed)",
            tt_describe_status(status, buf, sizeof buf));
}

/* The kernel itself refusing a chunk: in a child, freed huge blocks fill the cache, then the
 * address space is limited to 1 MiB above what the process maps. The request's chunk (its
 * first of the kind: `size` 16 for small blocks, 200000 for medium ones) can only be had once
 * the cached spans are unmapped. */
static void refused_under_rlimit_as(size_t size) {
  fflush(NULL);
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    ta_chunk_use_brk(false);
    void *h[4];
    for (int i = 0; i < 4; i++)
      h[i] = ta_malloc(6 * MiB);
    for (int i = 0; i < 4; i++)
      ta_free(h[i]);
    if (ta_huge_cached_count() != 4) _exit(3);
    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max = status_bytes("VmSize:") + MiB;
    if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(3);
    char *p = ta_malloc(size);
    if (p == NULL) _exit(4);
    if (ta_huge_cached_count() != 0) _exit(5);
    memset(p, 1, size);
    ta_free(p);
    _exit(0);
  }
  int status = tt_wait_timeout(pid, 60);
  char buf[128];
  cr_assert(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
            "the child under the limit, %zu bytes: %s (exit 3: set-up failed, 4: the request"
            " failed, 5: the cache kept)",
            size, tt_describe_status(status, buf, sizeof buf));
}

Test(faults, rlimit_as_refusing_a_small_chunk_unmaps_the_cached_huge_spans) {
  refused_under_rlimit_as(16);
}
Test(faults, rlimit_as_refusing_a_medium_chunk_unmaps_the_cached_huge_spans) {
  refused_under_rlimit_as(200000);
}

Test(faults, rlimit_data_with_brk) { run_limited(RLIMIT_DATA, "VmData:", true); }
Test(faults, rlimit_data_without_brk) { run_limited(RLIMIT_DATA, "VmData:", false); }
Test(faults, rlimit_as_with_brk) { run_limited(RLIMIT_AS, "VmSize:", true); }
Test(faults, rlimit_as_without_brk) { run_limited(RLIMIT_AS, "VmSize:", false); }
#endif
