/*
 * libFuzzer harness of the ta_ API.
 *
 * Each input is a program: a sequence of operations decoded from the bytes, run against
 * the allocator and checked against a model of what must hold:
 *   - every entry point (malloc, calloc, realloc, reallocarray, free, free_sized,
 *     free_aligned_sized, aligned_alloc, memalign, posix_memalign, valloc, pvalloc,
 *     malloc_usable_size, malloc_trim), with sizes that are small, medium, huge, on the
 *     class boundaries, impossible (SIZE_MAX, PTRDIFF_MAX, overflowing products) or legal
 *     but beyond any machine, and alignments that are powers of two, zero, not powers of
 *     two or beyond the address space;
 *   - every live block holds the pattern of its id (written at allocation, checked before
 *     it is freed or reallocated and whenever the program asks), calloc's blocks read
 *     zero, usable size >= requested, the alignment, realloc keeps the prefix, a failed
 *     realloc leaves the block whole, errno on failure (ENOMEM or EINVAL as docs/design.md
 *     "API rules" says), free preserves errno;
 *   - system calls made to fail (ta_os_fail) at points the input chooses: allocations may
 *     then fail, but only with NULL and ENOMEM, and live blocks keep their bytes;
 *   - after everything is freed and ta_malloc_trim(0), the mapped bytes come back near
 *     where they were.
 * The harness itself allocates nothing: the model is static, so the sanitizer's malloc is
 * never involved. Live blocks and bytes are capped so that one input stays small.
 *
 * Environment: TAFUZZ_BRK=1 lets the allocator take chunks from the program break (as the
 * replacement library does); otherwise chunks are mapped (as the ta_ API library does).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "tamalloc.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define PAGE ((size_t)4096)

/* docs/design.md: impossible sizes are those above PTRDIFF_MAX less 8 MiB. */
#define MAX_REQUEST ((size_t)PTRDIFF_MAX - 8 * MiB)

#define MAX_LIVE 128
#define MAX_LIVE_BYTES (48 * MiB)
#define MAX_REAL_SIZE (8 * MiB)          /* largest block the harness writes to */
#define FULL_PATTERN_MAX (16 * KiB)      /* larger blocks get the pattern on three regions */
#define REGION (4 * KiB)

/* ---- failure report --------------------------------------------------------------- */

static unsigned long long op_index;

__attribute__((noreturn, format(printf, 1, 2))) static void fail(const char *fmt, ...);

#include <stdarg.h>
static void fail(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fprintf(stderr, "fuzz_api: operation %llu: %s\n", op_index, buf);
  abort();
}

/* TAFUZZ_TRACE=1: every call made is printed, for turning a failing input into a program. */
static bool tracing;
/* TAFUZZ_STRICT=1: known issues (test/README.md) fail the run too (there are none now). */
static bool strict;
#define TRACE(...)                                                                       \
  do {                                                                                   \
    if (tracing) fprintf(stderr, __VA_ARGS__);                                           \
  } while (0)

#define CHECK(cond, ...)                                                                 \
  do {                                                                                   \
    if (!(cond)) fail(__VA_ARGS__);                                                      \
  } while (0)

/* ---- input ------------------------------------------------------------------------ */

typedef struct {
  const uint8_t *p;
  size_t n;
} input_t;

static bool more(const input_t *in) { return in->n > 0; }

static uint8_t u8(input_t *in) {
  if (in->n == 0) return 0;
  in->n--;
  return *in->p++;
}
static uint16_t u16(input_t *in) { return (uint16_t)(u8(in) | (u8(in) << 8)); }
static uint32_t u32(input_t *in) { return (uint32_t)u16(in) | ((uint32_t)u16(in) << 16); }

/* ---- patterns --------------------------------------------------------------------- */

static inline uint8_t pattern(uint64_t id, size_t off) {
  uint64_t x = (id * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)(off >> 8) * 0xc2b2ae3d27d4eb4fULL);
  return (uint8_t)((x >> 56) ^ off);
}

/* The regions of a block of n bytes that carry its pattern: all of it when small, else
 * its first, middle and last 4 KiB. Returns the count; from[i], len[i]. */
static int regions(size_t n, size_t from[3], size_t len[3]) {
  if (n <= FULL_PATTERN_MAX) {
    from[0] = 0;
    len[0] = n;
    return 1;
  }
  from[0] = 0;
  len[0] = REGION;
  from[1] = (n / 2) & ~(size_t)15;
  len[1] = REGION;
  from[2] = n - REGION;
  len[2] = REGION;
  return 3;
}

static void fill(void *p, size_t n, uint64_t id) {
  size_t from[3], len[3];
  int k = regions(n, from, len);
  unsigned char *c = p;
  for (int r = 0; r < k; r++)
    for (size_t i = from[r]; i < from[r] + len[r]; i++) c[i] = pattern(id, i);
}

/* Checks the pattern of a block of n bytes, only below `limit` (a realloc's prefix). */
static void verify(const void *p, size_t n, uint64_t id, size_t limit, const char *what) {
  size_t from[3], len[3];
  int k = regions(n, from, len);
  const unsigned char *c = p;
  for (int r = 0; r < k; r++)
    for (size_t i = from[r]; i < from[r] + len[r] && i < limit; i++)
      CHECK(c[i] == pattern(id, i), "%s: block %p (%zu bytes, id %llu) byte %zu is 0x%02x, not 0x%02x",
            what, p, n, (unsigned long long)id, i, c[i], pattern(id, i));
}

static void verify_zero(const void *p, size_t n, const char *what) {
  const unsigned char *c = p;
  size_t whole = n <= 64 * KiB ? n : 0;
  for (size_t i = 0; i < whole; i++)
    CHECK(c[i] == 0, "%s: calloc block %p (%zu bytes) byte %zu is 0x%02x", what, p, n, i, c[i]);
  if (whole == 0) {
    size_t from[3], len[3];
    int k = regions(n, from, len);
    for (int r = 0; r < k; r++)
      for (size_t i = from[r]; i < from[r] + len[r]; i++)
        CHECK(c[i] == 0, "%s: calloc block %p (%zu bytes) byte %zu is 0x%02x", what, p, n, i, c[i]);
  }
}

/* ---- the model -------------------------------------------------------------------- */

enum how { H_MALLOC, H_CALLOC, H_REALLOC, H_ALIGNED_ALLOC, H_MEMALIGN, H_POSIX_MEMALIGN,
           H_VALLOC, H_PVALLOC };

typedef struct {
  unsigned char *p;
  size_t size;   /* requested (what free_sized must accept) */
  size_t align;  /* the alignment asked of aligned_alloc */
  uint64_t id;
  enum how how;
} block_t;

static block_t live[MAX_LIVE];
static size_t nlive, live_bytes;
static uint64_t next_id = 1;
static bool faults_armed;
static bool munmap_failed;    /* this input made munmap fail: what it held may stay mapped */     /* ta_os_fail is making calls fail: allocations may too */

static size_t budget(size_t size, size_t align) {
  return size + (align > MiB ? align : 0);
}

/* Whether a request of this size (and alignment) is one the harness may make for real. */
static bool affordable(size_t size, size_t align) {
  if (size > MAX_REAL_SIZE || align > 64 * MiB) return false;
  return nlive < MAX_LIVE && live_bytes + budget(size, align) <= MAX_LIVE_BYTES;
}

static void add_block(void *p, size_t size, size_t align, enum how how, bool zeroed) {
  block_t *b = &live[nlive++];
  b->p = p;
  b->size = size;
  b->align = align;
  b->id = next_id++;
  b->how = how;
  live_bytes += budget(size, 0);
  if (zeroed) verify_zero(p, size, "calloc");
  fill(p, size, b->id);
}

static void drop_block(size_t i) {
  live_bytes -= budget(live[i].size, 0);
  live[i] = live[--nlive];
}

static void verify_block(const block_t *b, const char *what) {
  verify(b->p, b->size, b->id, SIZE_MAX, what);
}

static void verify_all(const char *what) {
  for (size_t i = 0; i < nlive; i++) verify_block(&live[i], what);
}

/* ---- decoding sizes and alignments ------------------------------------------------- */

enum size_kind { S_REAL, S_IMPOSSIBLE, S_HUGE_LEGAL };

static const size_t boundary_sizes[] = {
    0,           1,           15,          16,          17,          63,
    64,          65,          127,         128,         129,         1000,
    4095,        4096,        4097,        8191,        8192,        8193,
    12288,       32 * KiB,    64 * KiB,    128 * KiB,   256 * KiB,   256 * KiB + 1,
    MiB - 80,    MiB - 16,    MiB - 1,     MiB,         MiB + 1,     2 * MiB - 64,
    2 * MiB,     2 * MiB + 1, 4 * MiB - 64, 4 * MiB,    4 * MiB + 1, 8 * MiB,
};

static const size_t impossible_sizes[] = {
    SIZE_MAX,          SIZE_MAX - 1,          SIZE_MAX - 4095,       (size_t)PTRDIFF_MAX + 1,
    (size_t)PTRDIFF_MAX, MAX_REQUEST + 1,     MAX_REQUEST + 4096,    SIZE_MAX / 2 + 1,
};

/* Legal by the rules, beyond the machine (24 GiB, no overcommit of that much): NULL with
 * ENOMEM, or a block the harness does not touch. */
static const size_t huge_legal_sizes[] = {
    MAX_REQUEST, MAX_REQUEST - 4096, (size_t)1 << 46, (size_t)1 << 40, (size_t)1 << 36,
};

static size_t decode_size(input_t *in, enum size_kind *kind) {
  uint8_t k = u8(in);
  *kind = S_REAL;
  switch (k % 16) {
  case 0: case 1: case 2: case 3: case 4: case 5:
    return u16(in) % (8 * KiB + 1);
  case 6: case 7: case 8:
    return 8 * KiB + 1 + u32(in) % (MiB - 8 * KiB);
  case 9:
    return MiB + 1 + u32(in) % (7 * MiB);
  case 10: case 11:
    return boundary_sizes[u8(in) % (sizeof boundary_sizes / sizeof boundary_sizes[0])];
  case 12:
    *kind = S_IMPOSSIBLE;
    return impossible_sizes[u8(in) % (sizeof impossible_sizes / sizeof impossible_sizes[0])];
  case 13:
    *kind = S_HUGE_LEGAL;
    return huge_legal_sizes[u8(in) % (sizeof huge_legal_sizes / sizeof huge_legal_sizes[0])];
  default:
    return u8(in) % 257;
  }
}

static const size_t odd_alignments[] = {
    0, 3, 5, 12, 24, 48, 100, 4097, 65535, 3 * MiB,
    SIZE_MAX / 2 + 1, SIZE_MAX / 2 + 2, SIZE_MAX, (size_t)1 << 62, (size_t)PTRDIFF_MAX,
    (size_t)1 << 47, (size_t)1 << 50,
};

static size_t decode_align(input_t *in) {
  uint8_t k = u8(in);
  switch (k % 8) {
  case 0: case 1: case 2: case 3: case 4:
    return (size_t)1 << (u8(in) % 17); /* 1 .. 64 KiB */
  case 5:
    return (size_t)1 << (17 + u8(in) % 10); /* 128 KiB .. 64 MiB */
  case 6:
    return u16(in);
  default:
    return odd_alignments[u8(in) % (sizeof odd_alignments / sizeof odd_alignments[0])];
  }
}

static bool is_pow2(size_t a) { return a != 0 && (a & (a - 1)) == 0; }

static size_t round_pow2(size_t a) {
  size_t r = 1;
  while (r < a) r <<= 1;
  return r;
}

/* ---- checking one result ----------------------------------------------------------- */

/* The outcome of an allocation whose size (and alignment) are legal: success, or - only
 * with failures injected, or for sizes beyond the machine - NULL with ENOMEM. */
static void check_failure_allowed(enum size_kind kind, int err, const char *what, size_t size) {
  CHECK(faults_armed || kind == S_HUGE_LEGAL,
        "%s(%zu) failed (errno %d) with no failure injected", what, size, err);
  CHECK(err == ENOMEM, "%s(%zu) failed with errno %d, not ENOMEM", what, size, err);
}

/* A new block: alignment, usable size; returns false when the harness must not touch it
 * (a legal size beyond the machine that the kernel granted): it is freed at once. */
static bool check_new(void *p, size_t size, size_t align, size_t min_usable, enum size_kind kind,
                      const char *what) {
  if (align < 16) align = 16;
  CHECK(((uintptr_t)p & (align - 1)) == 0, "%s(%zu): %p is not aligned to %zu", what, size, p,
        align);
  size_t usable = ta_malloc_usable_size(p);
  CHECK(usable >= min_usable, "%s(%zu): usable size %zu below %zu", what, size, usable,
        min_usable);
  if (kind == S_HUGE_LEGAL || size > MAX_REAL_SIZE) {
    int saved = errno;
    ta_free(p);
    CHECK(errno == saved, "free changed errno");
    return false;
  }
  return true;
}

/* ---- operations ------------------------------------------------------------------- */

static size_t pick(input_t *in) { return nlive ? u8(in) % nlive : 0; }

static void op_malloc(input_t *in) {
  enum size_kind kind;
  size_t size = decode_size(in, &kind);
  if (kind == S_REAL && !affordable(size, 0)) return;
  errno = 0;
  void *p = ta_malloc(size);
  int err = errno;
  TRACE("%p = malloc(%zu)\n", p, size);
  if (kind == S_IMPOSSIBLE) {
    CHECK(p == NULL && err == ENOMEM, "malloc(%zu): %p errno %d, not NULL/ENOMEM", size, p, err);
    return;
  }
  if (p == NULL) return check_failure_allowed(kind, err, "malloc", size);
  if (check_new(p, size, 16, size, kind, "malloc")) add_block(p, size, 0, H_MALLOC, false);
}

static void op_calloc(input_t *in) {
  size_t count, each;
  enum size_kind kind = S_REAL;
  uint8_t k = u8(in);
  if (k % 8 == 0) {
    static const size_t pairs[][2] = {
        {SIZE_MAX / 2 + 1, 2}, {(size_t)1 << 32, (size_t)1 << 32}, {SIZE_MAX, SIZE_MAX},
        {3, SIZE_MAX / 3 + 1}, {SIZE_MAX, 2}, {65537, (size_t)1 << 48}, {0, SIZE_MAX},
        {SIZE_MAX, 0}, {(size_t)PTRDIFF_MAX, 1}, {1, MAX_REQUEST + 1}, {2, MAX_REQUEST / 2 + 1},
    };
    const size_t *pr = pairs[u8(in) % (sizeof pairs / sizeof pairs[0])];
    count = pr[0];
    each = pr[1];
  } else {
    size_t total = decode_size(in, &kind);
    count = 1 + u8(in) % 16;
    each = total / count;
  }
  size_t total;
  bool overflow = __builtin_mul_overflow(count, each, &total);
  if (overflow || total > MAX_REQUEST) kind = S_IMPOSSIBLE;
  else if (total > MAX_REAL_SIZE) kind = S_HUGE_LEGAL;
  if (kind == S_REAL && !affordable(total, 0)) return;
  errno = 0;
  void *p = ta_calloc(count, each);
  int err = errno;
  TRACE("%p = calloc(%zu, %zu)\n", p, count, each);
  if (kind == S_IMPOSSIBLE) {
    CHECK(p == NULL && err == ENOMEM, "calloc(%zu, %zu): %p errno %d, not NULL/ENOMEM", count,
          each, p, err);
    return;
  }
  if (p == NULL) return check_failure_allowed(kind, err, "calloc", total);
  if (check_new(p, total, 16, total, kind, "calloc")) add_block(p, total, 0, H_CALLOC, true);
}

/* realloc(p, size) or reallocarray(p, count, each) of a live block (or NULL). */
static void op_realloc(input_t *in, bool array) {
  bool null = nlive == 0 || u8(in) % 16 == 0;
  size_t i = null ? 0 : pick(in);
  block_t *b = null ? NULL : &live[i];
  enum size_kind kind;
  size_t count = 1, each, size;
  bool overflow = false;
  if (array && u8(in) % 6 == 0) {
    static const size_t pairs[][2] = {
        {SIZE_MAX / 2 + 1, 2}, {(size_t)1 << 33, (size_t)1 << 33}, {SIZE_MAX, 3}, {0, 17}, {9, 0}};
    const size_t *pr = pairs[u8(in) % (sizeof pairs / sizeof pairs[0])];
    count = pr[0];
    each = pr[1];
    overflow = __builtin_mul_overflow(count, each, &size);
    kind = overflow ? S_IMPOSSIBLE : S_REAL;
  } else {
    size = decode_size(in, &kind);
    if (array) {
      count = 1 + u8(in) % 8;
      each = size / count;
      size = count * each;
    } else {
      each = size;
    }
  }
  if (kind == S_REAL && size > (b ? b->size : 0) &&
      !affordable(size - (b ? b->size : 0), 0))
    return;
  if (b) verify_block(b, "before realloc");
  uint64_t old_id = b ? b->id : 0;
  size_t old_size = b ? b->size : 0;
  void *old = b ? b->p : NULL;
  const char *what = array ? "reallocarray" : "realloc";
  errno = 0;
  void *p = array ? ta_reallocarray(old, count, each) : ta_realloc(old, size);
  int err = errno;
  TRACE("%p = %s(%p, %zu x %zu)\n", p, what, old, count, each);
  if (kind == S_IMPOSSIBLE) {
    CHECK(p == NULL && err == ENOMEM, "%s(%p, %zu x %zu): %p errno %d, not NULL/ENOMEM", what, old,
          count, each, p, err);
    if (b) verify_block(b, "after a refused realloc");
    return;
  }
  if (old != NULL && size == 0) {
    /* realloc(p, 0) frees p and returns NULL. */
    CHECK(p == NULL, "%s(%p, 0) returned %p, not NULL", what, old, p);
    drop_block(i);
    return;
  }
  if (p == NULL) {
    check_failure_allowed(kind, err, what, size);
    if (b) verify_block(b, "after a failed realloc");
    return;
  }
  if (b) {
    /* The prefix survives, wherever the block now is. */
    verify(p, old_size, old_id, size, "realloc prefix");
    drop_block(i);
  }
  if (check_new(p, size, 16, size, kind, what)) add_block(p, size, 0, H_REALLOC, false);
}

/* realloc to the usable size returns the same block. */
static void op_realloc_usable(input_t *in) {
  if (nlive == 0) return;
  block_t *b = &live[pick(in)];
  size_t usable = ta_malloc_usable_size(b->p);
  CHECK(usable >= b->size, "usable size %zu of %p below its %zu", usable, b->p, b->size);
  if (usable > MAX_REAL_SIZE || !affordable(usable - b->size, 0)) return;
  void *p = ta_realloc(b->p, usable);
  TRACE("%p = realloc(%p, %zu) (its usable size)\n", p, b->p, usable);
  CHECK(p == b->p, "realloc(%p, its usable size %zu) returned %p", b->p, usable, p);
  verify_block(b, "realloc to the usable size");
  live_bytes += usable - b->size;
  b->size = usable;
  b->how = H_REALLOC;
  fill(b->p, b->size, b->id);
}

static void op_free(input_t *in, int style) {
  if (nlive == 0) {
    errno = 4321;
    ta_free(NULL);
    CHECK(errno == 4321, "free(NULL) changed errno");
    return;
  }
  size_t i = pick(in);
  block_t *b = &live[i];
  verify_block(b, "before free");
  errno = 4321;
  if (style == 1 && (b->how == H_MALLOC || b->how == H_CALLOC || b->how == H_REALLOC)) {
    TRACE("free_sized(%p, %zu)\n", b->p, b->size);
    ta_free_sized(b->p, b->size);
  } else if (style == 2 && b->how == H_ALIGNED_ALLOC) {
    TRACE("free_aligned_sized(%p, %zu, %zu)\n", b->p, b->align, b->size);
    ta_free_aligned_sized(b->p, b->align, b->size);
  } else {
    TRACE("free(%p)\n", b->p);
    ta_free(b->p);
  }
  CHECK(errno == 4321, "free changed errno to %d", errno);
  drop_block(i);
}

enum aligned_entry { A_ALIGNED_ALLOC, A_MEMALIGN, A_POSIX_MEMALIGN, A_VALLOC, A_PVALLOC };

static void op_aligned(input_t *in, enum aligned_entry e) {
  static const char *names[] = {"aligned_alloc", "memalign", "posix_memalign", "valloc",
                                "pvalloc"};
  const char *what = names[e];
  size_t align = (e == A_VALLOC || e == A_PVALLOC) ? PAGE : decode_align(in);
  enum size_kind kind;
  size_t size = decode_size(in, &kind);
  /* What the rules say of this call. */
  bool einval = false;
  size_t eff = align; /* the alignment the block must have */
  switch (e) {
  case A_ALIGNED_ALLOC: einval = !is_pow2(align); break;
  case A_MEMALIGN:
    einval = align > SIZE_MAX / 2 + 1;
    if (!einval) eff = round_pow2(align);
    break;
  case A_POSIX_MEMALIGN: einval = !is_pow2(align) || align < sizeof(void *); break;
  default: break;
  }
  size_t min_usable = size;
  if (e == A_PVALLOC && size <= MAX_REQUEST) min_usable = (size ? (size + PAGE - 1) & ~(PAGE - 1) : PAGE);
  if (!einval && kind != S_IMPOSSIBLE && eff > MAX_REQUEST / 2) kind = S_IMPOSSIBLE;
  if (!einval && kind == S_REAL && eff > 64 * MiB) kind = S_HUGE_LEGAL;
  if (!einval && kind == S_REAL && !affordable(min_usable, eff)) return;
  errno = 0;
  void *p = NULL;
  int err, ret = 0;
  void *const untouched = (void *)(uintptr_t)0x5a5a5a50;
  switch (e) {
  case A_ALIGNED_ALLOC: p = ta_aligned_alloc(align, size); break;
  case A_MEMALIGN: p = ta_memalign(align, size); break;
  case A_POSIX_MEMALIGN:
    errno = 777;
    p = untouched;
    ret = ta_posix_memalign(&p, align, size);
    if (ret != 0) {
      CHECK(p == untouched, "posix_memalign(%zu, %zu) failed (%d) but changed *p", align, size, ret);
      if (ret == EINVAL)
        CHECK(errno == 777, "posix_memalign(%zu, %zu): EINVAL changed errno to %d", align, size,
              errno);
      else
        CHECK(errno == ENOMEM, "posix_memalign(%zu, %zu): %d left errno %d", align, size, ret,
              errno);
      errno = ret; /* what the checks below read */
      p = NULL;
    } else {
      CHECK(p != untouched, "posix_memalign returned 0 without a block");
    }
    break;
  case A_VALLOC: p = ta_valloc(size); break;
  case A_PVALLOC: p = ta_pvalloc(size); break;
  }
  err = errno;
  TRACE("%p = %s(%zu, %zu)\n", p, what, align, size);
  if (einval) {
    CHECK(p == NULL && err == EINVAL, "%s(%zu, %zu): %p errno %d, not NULL/EINVAL", what, align,
          size, p, err);
    return;
  }
  if (kind == S_IMPOSSIBLE) {
    CHECK(p == NULL && err == ENOMEM, "%s(%zu, %zu): %p errno %d, not NULL/ENOMEM", what, align,
          size, p, err);
    return;
  }
  if (p == NULL) return check_failure_allowed(kind, err, what, size);
  if (!check_new(p, size, eff, min_usable, kind, what)) return;
  static const enum how hows[] = {H_ALIGNED_ALLOC, H_MEMALIGN, H_POSIX_MEMALIGN, H_VALLOC,
                                  H_PVALLOC};
  add_block(p, size, align, hows[e], false);
}

static void op_usable(input_t *in) {
  if (nlive == 0) {
    CHECK(ta_malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) is not 0");
    return;
  }
  block_t *b = &live[pick(in)];
  size_t u = ta_malloc_usable_size(b->p);
  CHECK(u >= b->size, "malloc_usable_size(%p) = %zu below %zu", b->p, u, b->size);
  CHECK(ta_malloc_usable_size(b->p) == u, "malloc_usable_size(%p) changed between calls", b->p);
  /* The whole usable size is the program's: write its tail and keep the pattern. */
  if (u > b->size && u - b->size <= 64 * KiB) memset(b->p + b->size, 0xa5, u - b->size);
}

static void op_trim(input_t *in) {
  errno = 999;
  int r = ta_malloc_trim(u8(in));
  TRACE("%d = malloc_trim()\n", r);
  CHECK(r == 0 || r == 1, "malloc_trim returned %d", r);
  CHECK(errno == 999, "malloc_trim changed errno to %d", errno);
  verify_all("after malloc_trim");
}

static void op_fault(input_t *in) {
  static const unsigned ops[] = {TA_OS_SBRK, TA_OS_MMAP, TA_OS_MUNMAP, TA_OS_MADVISE,
                                 TA_OS_MREMAP, TA_OS_KEY, TA_OS_THREAD};
  uint8_t m = u8(in);
  unsigned mask = 0;
  for (unsigned k = 0; k < 7; k++)
    if (m & (1u << k)) mask |= ops[k];
  if (mask == 0) mask = TA_OS_MMAP;
  unsigned skip = u8(in) % 16;
  uint8_t c = u8(in);
  unsigned count = c >= 240 ? 100000 : 1 + c % 8;
  ta_os_fail(mask, skip, count);
  if (mask & TA_OS_MUNMAP) munmap_failed = true;
  TRACE("ta_os_fail(0x%x, %u, %u)\n", mask, skip, count);
  faults_armed = true;
}

static void op_unfault(void) {
  ta_os_fail(0, 0, 0);
  TRACE("ta_os_fail(0, 0, 0)\n");
  faults_armed = false;
  verify_all("after injected failures");
}

static void op_rewrite(input_t *in) {
  if (nlive == 0) return;
  block_t *b = &live[pick(in)];
  verify_block(b, "before rewrite");
  b->id = next_id++;
  fill(b->p, b->size, b->id);
}

/* ---- the driver ------------------------------------------------------------------- */

static size_t mapped_floor; /* the least mapped figure seen with nothing live */

static void free_everything(void) {
  ta_os_fail(0, 0, 0);
  faults_armed = false;
  while (nlive > 0) {
    block_t *b = &live[nlive - 1];
    verify_block(b, "at the end");
    TRACE("free(%p)\n", b->p);
    ta_free(b->p);
    drop_block(nlive - 1);
  }
  live_bytes = 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  const char *brk = getenv("TAFUZZ_BRK");
  ta_chunk_use_brk(brk != NULL && brk[0] == '1');
  const char *tr = getenv("TAFUZZ_TRACE");
  tracing = tr != NULL && tr[0] == '1';
  const char *st = getenv("TAFUZZ_STRICT");
  strict = st != NULL && st[0] == '1';
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  input_t in = {data, size};
  op_index = 0;
  TRACE("-- input of %zu bytes\n", size);
  unsigned ops_left = 512; /* bounds one input's work */
  while (more(&in) && ops_left-- > 0) {
    op_index++;
    uint8_t op = u8(&in);
    switch (op % 24) {
    case 0: case 1: case 2: op_malloc(&in); break;
    case 3: op_calloc(&in); break;
    case 4: case 5: op_realloc(&in, false); break;
    case 6: op_realloc(&in, true); break;
    case 7: case 8: op_free(&in, 0); break;
    case 9: op_free(&in, 1); break;
    case 10: op_free(&in, 2); break;
    case 11: op_aligned(&in, A_ALIGNED_ALLOC); break;
    case 12: op_aligned(&in, A_MEMALIGN); break;
    case 13: op_aligned(&in, A_POSIX_MEMALIGN); break;
    case 14: op_aligned(&in, A_VALLOC); break;
    case 15: op_aligned(&in, A_PVALLOC); break;
    case 16: op_usable(&in); break;
    case 17: op_trim(&in); break;
    case 18: op_fault(&in); break;
    case 19: op_unfault(); break;
    case 20: verify_all("check"); break;
    case 21: op_rewrite(&in); break;
    case 22: op_realloc_usable(&in); break;
    default: op_malloc(&in); break;
    }
  }
  free_everything();
  ta_malloc_trim(0);
  /* Nothing live, everything trimmed: what stays mapped is the arena and a bounded reserve,
   * never what the input allocated. */
  size_t mapped = atomic_load(&ta_os_mapped_bytes.v);
  if (munmap_failed) {
    /* A mapping whose munmap failed stays; the comparison starts again from here. */
    munmap_failed = false;
    mapped_floor = mapped;
    return 0;
  }
  if (mapped_floor == 0 || mapped < mapped_floor) mapped_floor = mapped;
  CHECK(mapped <= mapped_floor + 32 * MiB,
        "%zu bytes mapped with nothing live after malloc_trim(0), %zu at best before", mapped,
        mapped_floor);
  return 0;
}
