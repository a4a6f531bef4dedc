/*
 * realloc and reallocarray: NULL means malloc, size 0 frees, the usable size keeps the
 * block in place, contents survive growing and shrinking within and across the small,
 * medium and huge ranges, neighbours are never touched.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

#include <tamalloc.h>

#include "tatest.h"

/* ---- NULL and 0 -------------------------------------------------------------------- */

ParameterizedTestParameters(realloc, null_is_malloc)
{
    static enum tt_range params[] = {TT_RANGE_SMALL, TT_RANGE_MEDIUM, TT_RANGE_HUGE};
    return cr_make_param_array(enum tt_range, params, 3);
}

ParameterizedTest(enum tt_range *r, realloc, null_is_malloc, .timeout = 60)
{
    const size_t *sizes;
    size_t n = tt_range_sizes(*r, &sizes);
    for (size_t i = 0; i < n; i++) {
        unsigned char *p = ta_realloc(NULL, sizes[i]);
        cr_assert_not_null(p, "realloc(NULL, %zu) returned NULL", sizes[i]);
        cr_assert_eq((uintptr_t)p % 16, 0);
        size_t u = ta_malloc_usable_size(p);
        cr_assert(u >= sizes[i], "realloc(NULL, %zu): usable size %zu", sizes[i], u);
        tt_fill(p, u, i);
        cr_assert_eq(tt_check(p, u, i), SIZE_MAX);
        ta_free(p);
        p = ta_reallocarray(NULL, 1, sizes[i]);
        cr_assert_not_null(p, "reallocarray(NULL, 1, %zu) returned NULL", sizes[i]);
        cr_assert(ta_malloc_usable_size(p) >= sizes[i]);
        ta_free(p);
    }
}

ParameterizedTestParameters(realloc, zero_frees)
{
    static enum tt_range params[] = {TT_RANGE_SMALL, TT_RANGE_MEDIUM, TT_RANGE_HUGE};
    return cr_make_param_array(enum tt_range, params, 3);
}

/* realloc(p, 0) returns NULL and frees p: done many times, memory does not grow. */
ParameterizedTest(enum tt_range *r, realloc, zero_frees, .timeout = 90)
{
    size_t size = *r == TT_RANGE_SMALL ? 1000 : *r == TT_RANGE_MEDIUM ? 60000 : 2 * TT_MIB;
    int rounds = *r == TT_RANGE_SMALL ? 100000 : *r == TT_RANGE_MEDIUM ? 5000 : 300;
    long before = -1;
    for (int i = 0; i < rounds; i++) {
        if (i == rounds / 10)
            before = tt_rss_kib();
        unsigned char *p = ta_malloc(size);
        cr_assert_not_null(p);
        memset(p, 0x5c, size);
        errno = 0;
        void *q = ta_realloc(p, 0);
        cr_assert_null(q, "realloc(%p, 0) returned %p, not NULL", (void *)p, q);
        if (i % 2) {
            p = ta_malloc(size);
            cr_assert_not_null(p);
            memset(p, 0x5d, size);
            q = ta_reallocarray(p, 0, 5);
            cr_assert_null(q, "reallocarray(%p, 0, 5) returned %p, not NULL", (void *)p, q);
        }
    }
    long after = tt_rss_kib();
    /* Leaking would cost 100 MB (small), 300 MB (medium) or 600 MB (huge). */
    cr_assert(after - before < 32 * 1024,
              "RSS grew by %ld KiB over %d realloc(p, 0) of %zu bytes: blocks not freed?",
              after - before, rounds, size);
}

/* After realloc(p, 0) the block is free: freeing it again is a double free. */
Test(realloc, zero_then_free_is_double_free, .signal = SIGABRT, .init = tt_no_core)
{
    void *p = ta_malloc(48);
    cr_assert_not_null(p);
    void *other = ta_malloc(48);
    cr_assert_null(ta_realloc(p, 0));
    ta_free(tt_opaque_ptr(p));
    ta_free(other);
}

/* ---- realloc to the usable size stays in place ------------------------------------- */

struct entry_in_range {
    enum tt_entry e;
    enum tt_range r;
};

ParameterizedTestParameters(realloc, to_usable_size_returns_same)
{
    static struct entry_in_range params[TT_ENTRY_COUNT * TT_RANGE_COUNT];
    size_t k = 0;
    for (int e = 0; e < TT_ENTRY_COUNT; e++)
        for (int r = 0; r < TT_RANGE_COUNT; r++)
            params[k++] = (struct entry_in_range){(enum tt_entry)e, (enum tt_range)r};
    return cr_make_param_array(struct entry_in_range, params, k);
}

ParameterizedTest(struct entry_in_range *p, realloc, to_usable_size_returns_same,
                  .timeout = 60)
{
    const size_t *sizes;
    size_t n = tt_range_sizes(p->r, &sizes);
    for (size_t i = 0; i < n; i++) {
        unsigned char *b = tt_alloc(p->e, sizes[i], 64);
        cr_assert_not_null(b);
        size_t u = ta_malloc_usable_size(b);
        tt_fill(b, u, i);
        unsigned char *c = ta_realloc(b, u);
        cr_assert_eq(c, b, "%s(%zu) = %p, usable %zu: realloc to the usable size moved it to %p",
                     tt_entry_name(p->e), sizes[i], (void *)b, u, (void *)c);
        cr_assert_eq(ta_malloc_usable_size(c), u);
        cr_assert_eq(tt_check(c, u, i), SIZE_MAX);
        /* And again through reallocarray. */
        c = ta_reallocarray(b, 1, u);
        cr_assert_eq(c, b, "reallocarray to the usable size %zu moved %p to %p", u, (void *)b,
                     (void *)c);
        ta_free(c);
    }
}

/* ---- contents across sizes --------------------------------------------------------- */

struct range_pair {
    enum tt_range from, to;
};

ParameterizedTestParameters(realloc, preserves_contents)
{
    static struct range_pair params[TT_RANGE_COUNT * TT_RANGE_COUNT];
    size_t k = 0;
    for (int a = 0; a < TT_RANGE_COUNT; a++)
        for (int b = 0; b < TT_RANGE_COUNT; b++)
            params[k++] = (struct range_pair){(enum tt_range)a, (enum tt_range)b};
    return cr_make_param_array(struct range_pair, params, k);
}

/* Blocks of range `from` reallocated to sizes of range `to`, with live neighbours. */
ParameterizedTest(struct range_pair *p, realloc, preserves_contents, .timeout = 120)
{
    tt_rng g;
    tt_rng_seed(&g, (uint64_t)p->from * 10 + p->to);
    int rounds = (p->from == TT_RANGE_HUGE || p->to == TT_RANGE_HUGE) ? 150 : 2000;
    for (int i = 0; i < rounds; i++) {
        size_t a = tt_range_random(p->from, &g), b = tt_range_random(p->to, &g);
        uint64_t seed = tt_mix((uint64_t)i, a), nseed = tt_mix(seed, 1);
        unsigned char *before = ta_malloc(a);
        unsigned char *x = ta_malloc(a);
        unsigned char *after = ta_malloc(a);
        cr_assert(before && x && after);
        size_t ua = ta_malloc_usable_size(x);
        tt_fill(x, ua, seed);
        tt_fill(before, a, nseed);
        tt_fill(after, a, nseed + 1);
        unsigned char *y = ta_realloc(x, b);
        cr_assert_not_null(y, "realloc(%zu -> %zu) returned NULL", a, b);
        size_t keep = ua < b ? ua : b;
        size_t bad = tt_check(y, keep, seed);
        cr_assert_eq(bad, SIZE_MAX,
                     "realloc(%p of %zu (usable %zu) -> %zu) = %p lost byte %zu", (void *)x, a,
                     ua, b, (void *)y, bad);
        size_t ub = ta_malloc_usable_size(y);
        cr_assert(ub >= b, "realloc to %zu: usable size %zu", b, ub);
        tt_fill(y, ub, seed + 7);
        cr_assert_eq(tt_check(before, a, nseed), SIZE_MAX,
                     "realloc(%zu -> %zu) overwrote the block before it", a, b);
        cr_assert_eq(tt_check(after, a, nseed + 1), SIZE_MAX,
                     "realloc(%zu -> %zu) overwrote the block after it", a, b);
        cr_assert_eq(tt_check(y, ub, seed + 7), SIZE_MAX);
        ta_free(before);
        ta_free(after);
        ta_free(y);
    }
}

/* One block walking up and down a ladder of sizes through all three ranges. */
Test(realloc, ladder_up_and_down, .timeout = 120)
{
    static const size_t ladder[] = {1,      2,      5,           15,          16,
                                    17,     31,     64,          100,         255,
                                    1000,   4096,   8191,        8192,        8193,
                                    20000,  65537,  300000,      TT_MIB - 1,  TT_MIB,
                                    TT_MIB + 1, 3 * TT_MIB, 9 * TT_MIB + 3, 33 * TT_MIB};
    size_t n = sizeof ladder / sizeof *ladder;
    for (int round = 0; round < 3; round++) {
        unsigned char *p = NULL;
        size_t cur = 0;
        uint64_t seed = 1000 + (uint64_t)round;
        /* Up, then down, then up in big jumps. */
        for (size_t step = 0; step < 3 * n; step++) {
            size_t target;
            if (step < n)
                target = ladder[step];
            else if (step < 2 * n)
                target = ladder[2 * n - 1 - step];
            else
                target = ladder[(step * 7) % n];
            if (TT_SANITIZER && target > 16 * TT_MIB)
                target = 16 * TT_MIB;
            unsigned char *q = ta_realloc(p, target);
            cr_assert_not_null(q, "realloc(%zu -> %zu) returned NULL", cur, target);
            size_t keep = cur < target ? cur : target;
            size_t bad = tt_check(q, keep, seed);
            cr_assert_eq(bad, SIZE_MAX, "realloc(%zu -> %zu) lost byte %zu", cur, target, bad);
            if (target > cur)
                tt_fill_range(q, cur, target - cur, seed);
            p = q;
            cur = target;
        }
        ta_free(p);
    }
}

/* A random walk of sizes, in small steps (in-place growth and shrinking) and big jumps. */
Test(realloc, random_walk, .timeout = 120)
{
    tt_rng g;
    tt_rng_seed(&g, 4242);
    unsigned char *blocks[4] = {0};
    size_t sizes[4] = {0};
    for (int i = 0; i < 6000; i++) {
        int k = i % 4;
        size_t cur = sizes[k], next;
        uint64_t roll = tt_rand(&g) % 100;
        if (roll < 40)
            next = cur + tt_rand_between(&g, 0, 64);
        else if (roll < 70)
            next = cur > 64 ? cur - tt_rand_between(&g, 0, 64) : cur + 1;
        else if (roll < 85)
            next = tt_range_random(TT_RANGE_SMALL, &g);
        else if (roll < 97)
            next = tt_range_random(TT_RANGE_MEDIUM, &g);
        else
            next = tt_range_random(TT_RANGE_HUGE, &g);
        if (next == 0)
            next = 1;
        unsigned char *q = ta_realloc(blocks[k], next);
        cr_assert_not_null(q);
        size_t keep = cur < next ? cur : next;
        size_t bad = tt_check(q, keep, (uint64_t)k);
        cr_assert_eq(bad, SIZE_MAX, "step %d: realloc(%zu -> %zu) lost byte %zu", i, cur, next,
                     bad);
        if (next > cur)
            tt_fill_range(q, cur, next - cur, (uint64_t)k);
        blocks[k] = q;
        sizes[k] = next;
        for (int j = 0; j < 4; j++)
            if (j != k && blocks[j])
                cr_assert_eq(tt_check(blocks[j], sizes[j], (uint64_t)j), SIZE_MAX,
                             "step %d: realloc of block %d overwrote block %d", i, k, j);
    }
    for (int k = 0; k < 4; k++)
        ta_free(blocks[k]);
}

/* Blocks from the aligned entry points can be reallocated like any other. */
ParameterizedTestParameters(realloc, aligned_blocks)
{
    static enum tt_entry params[] = {TT_POSIX_MEMALIGN, TT_ALIGNED_ALLOC, TT_MEMALIGN,
                                     TT_VALLOC, TT_PVALLOC, TT_CALLOC};
    return cr_make_param_array(enum tt_entry, params, sizeof params / sizeof *params);
}

ParameterizedTest(enum tt_entry *e, realloc, aligned_blocks, .timeout = 60)
{
    static const size_t aligns[] = {32, 64, 4096, 65536, 2 * TT_MIB};
    static const size_t sizes[] = {1, 100, 5000, 100000, 3 * TT_MIB};
    for (size_t a = 0; a < sizeof aligns / sizeof *aligns; a++)
        for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
            for (size_t t = 0; t < sizeof sizes / sizeof *sizes; t++) {
                unsigned char *p = tt_alloc(*e, sizes[s], aligns[a]);
                cr_assert_not_null(p);
                size_t u = ta_malloc_usable_size(p);
                tt_fill(p, u, s * 31 + t);
                size_t target = sizes[t] + 3;
                unsigned char *q = ta_realloc(p, target);
                cr_assert_not_null(q);
                size_t keep = u < target ? u : target;
                size_t bad = tt_check(q, keep, s * 31 + t);
                cr_assert_eq(bad, SIZE_MAX,
                             "%s(align %zu, %zu) reallocated to %zu lost byte %zu",
                             tt_entry_name(*e), aligns[a], sizes[s], target, bad);
                cr_assert_eq((uintptr_t)q % 16, 0);
                ta_free(q);
            }
}

/* reallocarray with products that fit behaves as realloc. */
Test(realloc, reallocarray_products)
{
    unsigned char *p = ta_reallocarray(NULL, 10, 10);
    cr_assert_not_null(p);
    tt_fill(p, 100, 9);
    static const size_t shapes[][2] = {{100, 100},   {3, 7},       {1000, 1000},
                                       {16, 65536},  {4096, 1024}, {2, 50},
                                       {65536, 1},   {7, 3}};
    size_t cur = 100;
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        size_t n = shapes[i][0] * shapes[i][1];
        unsigned char *q = ta_reallocarray(p, shapes[i][0], shapes[i][1]);
        cr_assert_not_null(q, "reallocarray(p, %zu, %zu) returned NULL", shapes[i][0],
                           shapes[i][1]);
        size_t keep = cur < n ? cur : n;
        cr_assert_eq(tt_check(q, keep, 9), SIZE_MAX, "reallocarray(p, %zu, %zu) lost data",
                     shapes[i][0], shapes[i][1]);
        if (n > cur)
            tt_fill_range(q, cur, n - cur, 9);
        cur = n;
        p = q;
    }
    ta_free(p);
}

/* Growing in place must not leave stale data visible to a later calloc either. */
Test(realloc, shrink_then_grow_keeps_prefix, .timeout = 60)
{
    for (int i = 0; i < 200; i++) {
        size_t big = 1000 + (size_t)i * 5000;
        unsigned char *p = ta_malloc(big);
        cr_assert_not_null(p);
        tt_fill(p, big, (uint64_t)i);
        size_t small = big / 3 + 1;
        unsigned char *q = ta_realloc(p, small);
        cr_assert_not_null(q);
        cr_assert_eq(tt_check(q, small, (uint64_t)i), SIZE_MAX);
        unsigned char *r = ta_realloc(q, big * 2);
        cr_assert_not_null(r);
        cr_assert_eq(tt_check(r, small, (uint64_t)i), SIZE_MAX,
                     "shrink %zu -> %zu then grow to %zu lost data", big, small, big * 2);
        ta_free(r);
    }
}

/* An over-aligned block is a medium one however small: realloc to its usable size, or a
 * little below, keeps it where it is (found by the fuzzer). */
Test(realloc, over_aligned_small_medium_block_stays_at_its_usable_size)
{
    for (size_t align = 16 * TT_KIB; align <= 128 * TT_KIB; align *= 2) {
        void *p = ta_memalign(align, 200);
        cr_assert_not_null(p);
        size_t usable = ta_malloc_usable_size(p);
        cr_assert_eq(ta_realloc(p, usable), p, "alignment %zu, usable %zu", align, usable);
        cr_assert_eq(ta_realloc(p, usable - 8), p, "alignment %zu", align);
        ta_free(p);
    }
}
