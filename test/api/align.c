/*
 * Alignment: posix_memalign and aligned_alloc reject bad alignments (EINVAL), memalign
 * rounds them up to a power of two, every power of two up to 64 MiB works through every
 * aligned entry point, valloc and pvalloc give page-aligned blocks.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include <tamalloc.h>

#include "tatest.h"

#define SENTINEL ((void *)(uintptr_t)0xa11a11a0)

/* ---- posix_memalign: EINVAL -------------------------------------------------------- */

ParameterizedTestParameters(align, posix_memalign_rejects)
{
    static size_t params[] = {0,
                              1,
                              2,
                              4,
                              3,
                              5,
                              6,
                              7,
                              9,
                              12,
                              24,
                              48,
                              96,
                              100,
                              1000,
                              4095,
                              4097,
                              65535,
                              3 * TT_MIB,
                              (64 * TT_MIB) + 16,
                              SIZE_MAX,
                              SIZE_MAX / 2,
                              (SIZE_MAX / 2 + 1) | 8};
    return cr_make_param_array(size_t, params, sizeof params / sizeof *params);
}

ParameterizedTest(size_t *alignment, align, posix_memalign_rejects)
{
    static const size_t sizes[] = {0, 1, 8, 100, 5000, 100000, 2 * TT_MIB};
    size_t a = tt_opaque(*alignment);
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        void *out = SENTINEL;
        int rc = ta_posix_memalign(&out, a, sizes[i]);
        cr_assert_eq(rc, EINVAL, "posix_memalign(alignment %#zx, size %zu) returned %d, not EINVAL",
                     a, sizes[i], rc);
        cr_assert_eq(out, SENTINEL, "posix_memalign(alignment %#zx) failed but changed *p to %p",
                     a, out);
    }
}

/* The alignment is checked before the size: EINVAL also with an impossible size. */
Test(align, posix_memalign_bad_alignment_and_impossible_size)
{
    static const size_t aligns[] = {0, 3, 4, 24, 4097};
    for (size_t i = 0; i < sizeof aligns / sizeof *aligns; i++) {
        void *out = SENTINEL;
        int rc = ta_posix_memalign(&out, tt_opaque(aligns[i]), tt_opaque(SIZE_MAX));
        cr_assert_eq(rc, EINVAL, "posix_memalign(%zu, SIZE_MAX) returned %d, not EINVAL",
                     aligns[i], rc);
        cr_assert_eq(out, SENTINEL);
    }
}

Test(align, posix_memalign_does_not_touch_errno_on_success)
{
    void *out = NULL;
    errno = 777;
    int rc = ta_posix_memalign(&out, 64, 100);
    cr_assert_eq(rc, 0);
    cr_assert_not_null(out);
    cr_assert_eq((uintptr_t)out % 64, 0);
    cr_assert_eq(errno, 777, "a successful posix_memalign changed errno to %d", errno);
    ta_free(out);
}

/* As glibc's: a failed posix_memalign returns ENOMEM and leaves errno ENOMEM as well (glibc's
 * own tests check errno after it). */
Test(align, posix_memalign_enomem_sets_errno)
{
    static const size_t cases[][2] = {{64, SIZE_MAX},
                                      {16, PTRDIFF_MAX},
                                      {4096, (size_t)1 << 62},
                                      {(size_t)1 << 63, 1},
                                      {(size_t)1 << 62, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        void *out = SENTINEL;
        errno = EEXIST;
        int rc = ta_posix_memalign(&out, tt_opaque(cases[i][0]), tt_opaque(cases[i][1]));
        int err = errno;
        cr_assert_eq(rc, ENOMEM, "posix_memalign(%#zx, %#zx) returned %d, not ENOMEM",
                     cases[i][0], cases[i][1], rc);
        cr_assert_eq(err, ENOMEM, "posix_memalign(%#zx, %#zx) failed with ENOMEM but left errno %d",
                     cases[i][0], cases[i][1], err);
        cr_assert_eq(out, SENTINEL);
    }
}

/* EINVAL, on the other hand, is only returned: errno keeps its value, as with glibc. */
Test(align, posix_memalign_einval_leaves_errno)
{
    static const size_t aligns[] = {0, 3, 24, SIZE_MAX / 2, SIZE_MAX};
    for (size_t i = 0; i < sizeof aligns / sizeof *aligns; i++) {
        void *out = SENTINEL;
        errno = EEXIST;
        int rc = ta_posix_memalign(&out, tt_opaque(aligns[i]), 100);
        cr_assert_eq(rc, EINVAL);
        cr_assert_eq(errno, EEXIST, "posix_memalign(%#zx, 100) changed errno to %d", aligns[i],
                     errno);
    }
}

/* ---- aligned_alloc: EINVAL --------------------------------------------------------- */

ParameterizedTestParameters(align, aligned_alloc_rejects)
{
    static size_t params[] = {0,    3,    5,        6,           7,        12,
                              24,   48,   96,       100,         1000,     4095,
                              4097, 65535, 3 * TT_MIB, 64 * TT_MIB + 16, SIZE_MAX, SIZE_MAX / 2,
                              (SIZE_MAX / 2 + 1) | 1};
    return cr_make_param_array(size_t, params, sizeof params / sizeof *params);
}

ParameterizedTest(size_t *alignment, align, aligned_alloc_rejects)
{
    static const size_t sizes[] = {0, 1, 8, 100, 5000, 100000, 2 * TT_MIB};
    size_t a = tt_opaque(*alignment);
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        errno = 0;
        void *p = ta_aligned_alloc(a, sizes[i]);
        int err = errno;
        cr_assert_null(p, "aligned_alloc(%#zx, %zu) returned %p instead of NULL", a, sizes[i],
                       p);
        cr_assert_eq(err, EINVAL, "aligned_alloc(%#zx, %zu) set errno %d, not EINVAL", a,
                     sizes[i], err);
    }
}

/* Sizes that are not multiples of the alignment are fine (C17). */
Test(align, aligned_alloc_size_not_multiple)
{
    static const size_t cases[][2] = {{64, 1},      {64, 100},      {256, 257},
                                      {4096, 10},   {4096, 5000},   {65536, 65537},
                                      {TT_MIB, 17}, {2 * TT_MIB, 3 * TT_MIB + 1}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        unsigned char *p = ta_aligned_alloc(cases[i][0], cases[i][1]);
        cr_assert_not_null(p, "aligned_alloc(%zu, %zu) returned NULL", cases[i][0],
                           cases[i][1]);
        cr_assert_eq((uintptr_t)p % cases[i][0], 0);
        cr_assert(ta_malloc_usable_size(p) >= cases[i][1]);
        memset(p, 0xee, cases[i][1]);
        ta_free(p);
    }
}

/* ---- memalign: rounding up --------------------------------------------------------- */

struct rounding {
    size_t asked, expected;
};

ParameterizedTestParameters(align, memalign_rounds_up)
{
    static struct rounding params[] = {
        {0, 16},         {1, 16},          {3, 16},           {5, 16},
        {17, 32},        {24, 32},         {33, 64},          {48, 64},
        {65, 128},       {100, 128},       {129, 256},        {1000, 1024},
        {3000, 4096},    {4095, 4096},     {4097, 8192},      {12288, 16384},
        {65537, 131072}, {TT_MIB + 1, 2 * TT_MIB}, {3 * TT_MIB, 4 * TT_MIB},
        {(32 * TT_MIB) + 4096, 64 * TT_MIB},
    };
    return cr_make_param_array(struct rounding, params, sizeof params / sizeof *params);
}

ParameterizedTest(struct rounding *r, align, memalign_rounds_up, .timeout = 60)
{
    static const size_t sizes[] = {0, 1, 15, 64, 1000, 8192, 100000, 3 * TT_MIB};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        errno = 0;
        unsigned char *p = ta_memalign(tt_opaque(r->asked), sizes[i]);
        cr_assert_not_null(p, "memalign(%zu, %zu) returned NULL (errno %d)", r->asked,
                           sizes[i], errno);
        cr_assert_eq((uintptr_t)p % r->expected, 0,
                     "memalign(%zu, %zu) returned %p, not %zu-byte aligned", r->asked,
                     sizes[i], (void *)p, r->expected);
        size_t u = ta_malloc_usable_size(p);
        cr_assert(u >= sizes[i], "memalign(%zu, %zu): usable size %zu", r->asked, sizes[i], u);
        tt_fill(p, u, sizes[i]);
        cr_assert_eq(tt_check(p, u, sizes[i]), SIZE_MAX);
        ta_free(p);
    }
}

/* glibc's memalign rounds an alignment up to a power of two only when there is one: above
 * SIZE_MAX / 2 + 1 it fails with EINVAL, whatever the size. */
Test(align, memalign_beyond_the_largest_power_of_two_is_einval)
{
    static const size_t aligns[] = {((size_t)1 << 63) + 1, ((size_t)1 << 63) + 16,
                                    (size_t)3 << 62, SIZE_MAX - 4095, SIZE_MAX};
    static const size_t sizes[] = {0, 1, 100, 4096, 3 * TT_MIB, SIZE_MAX};
    for (size_t i = 0; i < sizeof aligns / sizeof *aligns; i++)
        for (size_t j = 0; j < sizeof sizes / sizeof *sizes; j++) {
            errno = 0;
            void *p = ta_memalign(tt_opaque(aligns[i]), tt_opaque(sizes[j]));
            int err = errno;
            cr_assert_null(p, "memalign(%#zx, %#zx) returned %p", aligns[i], sizes[j], p);
            cr_assert_eq(err, EINVAL, "memalign(%#zx, %#zx) set errno %d, not EINVAL", aligns[i],
                         sizes[j], err);
        }
}

/* Up to SIZE_MAX / 2 + 1 the alignment is rounded up, and 2^63 cannot be met: ENOMEM. */
Test(align, memalign_rounded_to_2_63_is_enomem)
{
    static const size_t aligns[] = {((size_t)1 << 62) + 1, ((size_t)1 << 63) - 1,
                                    (size_t)1 << 63};
    static const size_t sizes[] = {0, 1, 4096, SIZE_MAX};
    for (size_t i = 0; i < sizeof aligns / sizeof *aligns; i++)
        for (size_t j = 0; j < sizeof sizes / sizeof *sizes; j++) {
            errno = 0;
            void *p = ta_memalign(tt_opaque(aligns[i]), tt_opaque(sizes[j]));
            int err = errno;
            cr_assert_null(p, "memalign(%#zx, %#zx) returned %p", aligns[i], sizes[j], p);
            cr_assert_eq(err, ENOMEM, "memalign(%#zx, %#zx) set errno %d, not ENOMEM", aligns[i],
                         sizes[j], err);
        }
}

/* ---- every power of two up to 64 MiB ----------------------------------------------- */

struct pow2 {
    enum tt_entry entry;
    unsigned shift;
};

ParameterizedTestParameters(align, every_power_of_two)
{
    static struct pow2 params[3 * 27];
    size_t k = 0;
    for (unsigned s = 0; s <= 26; s++) {
        if (((size_t)1 << s) >= sizeof(void *))
            params[k++] = (struct pow2){TT_POSIX_MEMALIGN, s};
        params[k++] = (struct pow2){TT_ALIGNED_ALLOC, s};
        params[k++] = (struct pow2){TT_MEMALIGN, s};
    }
    return cr_make_param_array(struct pow2, params, k);
}

ParameterizedTest(struct pow2 *p, align, every_power_of_two, .timeout = 120)
{
    size_t a = (size_t)1 << p->shift;
    size_t need = a < 16 ? 16 : a;
    size_t sizes[] = {0, 1, 7, 16, 100, a / 2 + 1, a - 1, a, a + 1, 3 * a + 5,
                      5000, 70000, 1500000};
    size_t max_size = TT_SANITIZER ? 8 * TT_MIB : 3 * 64 * TT_MIB;
    enum { KEEP = 3 };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        if (sizes[i] > max_size)
            continue;
        unsigned char *blocks[KEEP];
        size_t usable[KEEP];
        for (int k = 0; k < KEEP; k++) {
            errno = 0;
            blocks[k] = tt_alloc(p->entry, sizes[i], a);
            cr_assert_not_null(blocks[k], "%s(alignment %zu, size %zu) returned NULL (errno %d)",
                               tt_entry_name(p->entry), a, sizes[i], errno);
            cr_assert_eq((uintptr_t)blocks[k] % need, 0,
                         "%s(alignment %zu, size %zu) returned %p",
                         tt_entry_name(p->entry), a, sizes[i], (void *)blocks[k]);
            usable[k] = ta_malloc_usable_size(blocks[k]);
            cr_assert(usable[k] >= sizes[i], "%s(alignment %zu, size %zu): usable size %zu",
                      tt_entry_name(p->entry), a, sizes[i], usable[k]);
            /* Touching all of a 64 MiB block three times is slow; the head and the tail
             * are what alignment arithmetic gets wrong. */
            if (usable[k] <= 4 * TT_MIB) {
                tt_fill(blocks[k], usable[k], tt_mix(i, (uint64_t)k));
            } else {
                tt_fill_range(blocks[k], 0, TT_MIB, tt_mix(i, (uint64_t)k));
                tt_fill_range(blocks[k], usable[k] - TT_MIB, TT_MIB, tt_mix(i, (uint64_t)k));
            }
        }
        for (int k = 0; k < KEEP; k++) {
            size_t bad;
            if (usable[k] <= 4 * TT_MIB) {
                bad = tt_check(blocks[k], usable[k], tt_mix(i, (uint64_t)k));
            } else {
                bad = tt_check_range(blocks[k], 0, TT_MIB, tt_mix(i, (uint64_t)k));
                if (bad == SIZE_MAX)
                    bad = tt_check_range(blocks[k], usable[k] - TT_MIB, TT_MIB,
                                         tt_mix(i, (uint64_t)k));
            }
            cr_assert_eq(bad, SIZE_MAX,
                         "%s(alignment %zu, size %zu): block %d overwritten at offset %zu",
                         tt_entry_name(p->entry), a, sizes[i], k, bad);
        }
        for (int k = 0; k < KEEP; k++)
            ta_free(blocks[k]);
    }
}

/* Many small blocks with a large alignment at once: all aligned, none overlapping. */
ParameterizedTestParameters(align, many_aligned_small_blocks)
{
    static size_t params[] = {32, 64, 128, 512, 4096, 16384};
    return cr_make_param_array(size_t, params, sizeof params / sizeof *params);
}

ParameterizedTest(size_t *alignment, align, many_aligned_small_blocks, .timeout = 60)
{
    enum { N = 600 };
    unsigned char *blocks[N];
    size_t a = *alignment;
    for (int i = 0; i < N; i++) {
        size_t size = 1 + (size_t)(i * 37) % 200;
        blocks[i] = ta_memalign(a, size);
        cr_assert_not_null(blocks[i]);
        cr_assert_eq((uintptr_t)blocks[i] % a, 0, "memalign(%zu, %zu) returned %p", a, size,
                     (void *)blocks[i]);
        tt_fill(blocks[i], size, (uint64_t)i);
        if (i % 4 == 3) {
            cr_assert_eq(tt_check(blocks[i - 2], 1 + (size_t)((i - 2) * 37) % 200,
                                  (uint64_t)(i - 2)),
                         SIZE_MAX);
            ta_free(blocks[i - 2]);
            blocks[i - 2] = NULL;
        }
    }
    for (int i = 0; i < N; i++) {
        if (!blocks[i])
            continue;
        size_t size = 1 + (size_t)(i * 37) % 200;
        cr_assert_eq(tt_check(blocks[i], size, (uint64_t)i), SIZE_MAX,
                     "aligned block %d overwritten", i);
        ta_free(blocks[i]);
    }
}

/* ---- valloc and pvalloc ------------------------------------------------------------ */

struct entry_in_range {
    enum tt_entry e;
    enum tt_range r;
};

ParameterizedTestParameters(align, valloc_pvalloc)
{
    static struct entry_in_range params[] = {
        {TT_VALLOC, TT_RANGE_SMALL},  {TT_VALLOC, TT_RANGE_MEDIUM},  {TT_VALLOC, TT_RANGE_HUGE},
        {TT_PVALLOC, TT_RANGE_SMALL}, {TT_PVALLOC, TT_RANGE_MEDIUM}, {TT_PVALLOC, TT_RANGE_HUGE},
    };
    return cr_make_param_array(struct entry_in_range, params, sizeof params / sizeof *params);
}

ParameterizedTest(struct entry_in_range *p, align, valloc_pvalloc, .timeout = 60)
{
    size_t pg = tt_page_size();
    const size_t *sizes;
    size_t n = tt_range_sizes(p->r, &sizes);
    for (size_t i = 0; i < n; i++) {
        unsigned char *b = tt_alloc(p->e, sizes[i], 0);
        cr_assert_not_null(b, "%s(%zu) returned NULL", tt_entry_name(p->e), sizes[i]);
        cr_assert_eq((uintptr_t)b % pg, 0, "%s(%zu) returned %p, not page aligned",
                     tt_entry_name(p->e), sizes[i], (void *)b);
        size_t u = ta_malloc_usable_size(b);
        size_t need = p->e == TT_PVALLOC ? (sizes[i] + pg - 1) / pg * pg : sizes[i];
        cr_assert(u >= need, "%s(%zu): usable size %zu, expected at least %zu",
                  tt_entry_name(p->e), sizes[i], u, need);
        memset(b, 0xc3, u);
        ta_free(b);
    }
}

Test(align, pvalloc_zero_and_one)
{
    size_t pg = tt_page_size();
    unsigned char *a = ta_pvalloc(0), *b = ta_pvalloc(1), *c = ta_valloc(0);
    cr_assert_not_null(a);
    cr_assert_not_null(b);
    cr_assert_not_null(c);
    cr_assert_eq((uintptr_t)a % pg, 0);
    cr_assert_eq((uintptr_t)b % pg, 0);
    cr_assert_eq((uintptr_t)c % pg, 0);
    cr_assert(ta_malloc_usable_size(b) >= pg, "pvalloc(1) must give a whole page, got %zu",
              ta_malloc_usable_size(b));
    memset(b, 1, pg);
    cr_assert(a != b && b != c && a != c);
    ta_free(a);
    ta_free(b);
    ta_free(c);
}

/* An aligned block keeps its alignment-related neighbours intact when freed, and the
 * memory is reused by ordinary blocks afterwards. */
Test(align, aligned_then_plain_reuse, .timeout = 60)
{
    for (int round = 0; round < 50; round++) {
        size_t a = (size_t)64 << (round % 12);
        unsigned char *x = ta_memalign(a, 100 + (size_t)round);
        unsigned char *y = ta_malloc(100 + (size_t)round);
        cr_assert(x && y);
        tt_fill(y, 100 + (size_t)round, 1);
        ta_free(x);
        unsigned char *z = ta_malloc(a);
        cr_assert_not_null(z);
        memset(z, 0xff, a);
        cr_assert_eq(tt_check(y, 100 + (size_t)round, 1), SIZE_MAX);
        ta_free(z);
        ta_free(y);
    }
}
