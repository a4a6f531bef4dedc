/*
 * calloc returns zeroes, also from memory that was dirtied and freed (by this thread or
 * another, whole or as the tail of a shrunk block); free preserves errno.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <tamalloc.h>

#include "tatest.h"

/* ---- zeroes from reused memory ----------------------------------------------------- */

ParameterizedTestParameters(calloc, zero_after_reuse)
{
    static size_t params[] = {1,           8,          16,          24,        40,
                              64,          100,        128,         200,       256,
                              500,         1024,       2000,        4096,      5000,
                              8192,        8193,       12000,       16384,     50000,
                              65536,       100000,     262144,      500000,    TT_MIB - 17,
                              TT_MIB,      TT_MIB + 1, 2 * TT_MIB,  5 * TT_MIB + 3,
                              12 * TT_MIB};
    return cr_make_param_array(size_t, params, sizeof params / sizeof *params);
}

/* Dirty a block, free it, calloc the same size many times: always zero. */
ParameterizedTest(size_t *size, calloc, zero_after_reuse, .timeout = 60)
{
    size_t n = *size;
    int rounds = n > TT_MIB ? 12 : n > 8192 ? 60 : 300;
    for (int i = 0; i < rounds; i++) {
        unsigned char *d = ta_malloc(n);
        cr_assert_not_null(d);
        memset(d, 0xa5, ta_malloc_usable_size(d));
        ta_free(d);
        unsigned char *z;
        switch (i % 4) {
        case 0: z = ta_calloc(1, n); break;
        case 1: z = ta_calloc(n, 1); break;
        case 2: z = n % 8 == 0 ? ta_calloc(n / 8, 8) : ta_calloc(1, n); break;
        default: z = ta_calloc(1, n); break;
        }
        cr_assert_not_null(z, "calloc(%zu) returned NULL", n);
        size_t bad = tt_check_zero(z, n);
        cr_assert_eq(bad, SIZE_MAX, "round %d: calloc(%zu) = %p has a non-zero byte at %zu "
                     "(0x%02x)", i, n, (void *)z, bad, bad == SIZE_MAX ? 0 : z[bad]);
        memset(z, 0x5a, ta_malloc_usable_size(z));
        ta_free(z);
    }
}

/* Many dirty blocks of a size freed at once, then as many calloc'd. */
ParameterizedTestParameters(calloc, zero_after_mass_free)
{
    static size_t params[] = {16, 48, 96, 256, 1000, 4000, 8192, 20000, 70000, 300000,
                              TT_MIB + 5000};
    return cr_make_param_array(size_t, params, sizeof params / sizeof *params);
}

ParameterizedTest(size_t *size, calloc, zero_after_mass_free, .timeout = 60)
{
    size_t n = *size;
    int count = n >= TT_MIB ? 8 : n >= 65536 ? 40 : 500;
    unsigned char *blocks[500];
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < count; i++) {
            blocks[i] = ta_malloc(n);
            cr_assert_not_null(blocks[i]);
            memset(blocks[i], 0xff, ta_malloc_usable_size(blocks[i]));
        }
        for (int i = 0; i < count; i++)
            ta_free(blocks[i]);
        for (int i = 0; i < count; i++) {
            blocks[i] = ta_calloc(1, n);
            cr_assert_not_null(blocks[i]);
            size_t bad = tt_check_zero(blocks[i], n);
            cr_assert_eq(bad, SIZE_MAX, "calloc(1, %zu) #%d: byte %zu is not zero", n, i, bad);
        }
        for (int i = 0; i < count; i++) {
            memset(blocks[i], 0xee, n);
            ta_free(blocks[i]);
        }
    }
}

/* Mixed sizes: dirty memory of one size is recycled for calloc of another. */
Test(calloc, zero_across_sizes, .timeout = 60)
{
    tt_rng g;
    tt_rng_seed(&g, 11);
    for (int i = 0; i < 20000; i++) {
        enum tt_range r = i % 200 == 0 ? TT_RANGE_HUGE : i % 10 == 0 ? TT_RANGE_MEDIUM
                                                                     : TT_RANGE_SMALL;
        size_t a = tt_range_random(r, &g), b = tt_range_random(r, &g);
        unsigned char *d = ta_malloc(a);
        cr_assert_not_null(d);
        memset(d, 0x99, a);
        unsigned char *d2 = ta_realloc(d, b);
        cr_assert_not_null(d2);
        memset(d2, 0x98, b);
        ta_free(d2);
        unsigned char *z = ta_calloc(1, b);
        cr_assert_not_null(z);
        size_t bad = tt_check_zero(z, b);
        cr_assert_eq(bad, SIZE_MAX, "calloc(1, %zu) after dirtying: byte %zu not zero", b,
                     bad);
        ta_free(z);
    }
}

/* The tail left behind by shrinking a block, dirty, later served by calloc. */
ParameterizedTestParameters(calloc, zero_from_shrunk_tail)
{
    static size_t params[] = {4096, 8192, 16384, 65536, 200000, 600000, 2 * TT_MIB,
                              6 * TT_MIB};
    return cr_make_param_array(size_t, params, sizeof params / sizeof *params);
}

ParameterizedTest(size_t *size, calloc, zero_from_shrunk_tail, .timeout = 60)
{
    size_t big = *size;
    for (int i = 0; i < 20; i++) {
        unsigned char *p = ta_malloc(big);
        cr_assert_not_null(p);
        memset(p, 0xdd, ta_malloc_usable_size(p));
        size_t small = big / 4 + (size_t)i * 16;
        unsigned char *q = ta_realloc(p, small);
        cr_assert_not_null(q);
        /* Pieces of the old tail are likely to be handed out now. */
        unsigned char *z[8];
        for (int k = 0; k < 8; k++) {
            size_t n = big / 16 + (size_t)k * 8;
            z[k] = ta_calloc(1, n);
            cr_assert_not_null(z[k]);
            size_t bad = tt_check_zero(z[k], n);
            cr_assert_eq(bad, SIZE_MAX,
                         "calloc(1, %zu) after shrinking %zu -> %zu: byte %zu not zero", n,
                         big, small, bad);
        }
        size_t zl = big - small;
        unsigned char *zz = ta_calloc(zl, 1);
        cr_assert_not_null(zz);
        cr_assert_eq(tt_check_zero(zz, zl), SIZE_MAX);
        for (int k = 0; k < 8; k++)
            ta_free(z[k]);
        ta_free(zz);
        ta_free(q);
    }
}

/* Blocks dirtied and freed by another thread come back zeroed through calloc. */
struct dirty_job {
    unsigned char **blocks;
    int count;
};

static void *free_dirty(void *arg)
{
    struct dirty_job *j = arg;
    for (int i = 0; i < j->count; i++) {
        memset(j->blocks[i], 0xbb, ta_malloc_usable_size(j->blocks[i]));
        ta_free(j->blocks[i]);
    }
    return NULL;
}

Test(calloc, zero_after_cross_thread_free, .timeout = 60)
{
    enum { N = 2000 };
    static unsigned char *blocks[N];
    static const size_t sizes[] = {32, 200, 3000, 9000, 150000, 2 * TT_MIB};
    for (int round = 0; round < 6; round++) {
        size_t n = sizes[round];
        int count = n > TT_MIB ? 10 : n > 100000 ? 50 : N;
        for (int i = 0; i < count; i++) {
            blocks[i] = ta_malloc(n);
            cr_assert_not_null(blocks[i]);
        }
        struct dirty_job j = {blocks, count};
        pthread_t t;
        cr_assert_eq(pthread_create(&t, NULL, free_dirty, &j), 0);
        pthread_join(t, NULL);
        for (int i = 0; i < count; i++) {
            blocks[i] = ta_calloc(n, 1);
            cr_assert_not_null(blocks[i]);
            size_t bad = tt_check_zero(blocks[i], n);
            cr_assert_eq(bad, SIZE_MAX, "calloc(%zu, 1) #%d: byte %zu not zero", n, i, bad);
        }
        for (int i = 0; i < count; i++)
            ta_free(blocks[i]);
    }
}

/* calloc of the very same size class over and over, as in the rule: dirty, free, calloc. */
Test(calloc, same_size_many_times)
{
    for (size_t n = 1; n <= 2048; n = n * 3 / 2 + 1) {
        for (int i = 0; i < 200; i++) {
            unsigned char *d = ta_malloc(n);
            cr_assert_not_null(d);
            memset(d, 0xc7, n);
            ta_free(d);
            unsigned char *z = ta_calloc(1, n);
            cr_assert_not_null(z);
            cr_assert_eq(tt_check_zero(z, n), SIZE_MAX, "calloc(1, %zu) round %d not zero", n,
                         i);
            z[n - 1] = 1;
            ta_free(z);
        }
    }
}

/* ---- free preserves errno ---------------------------------------------------------- */

ParameterizedTestParameters(free_preserves_errno, each_range)
{
    static enum tt_range params[] = {TT_RANGE_SMALL, TT_RANGE_MEDIUM, TT_RANGE_HUGE};
    return cr_make_param_array(enum tt_range, params, 3);
}

ParameterizedTest(enum tt_range *r, free_preserves_errno, each_range, .timeout = 60)
{
    const size_t *sizes;
    size_t n = tt_range_sizes(*r, &sizes);
    static const int values[] = {0, ENOMEM, EINVAL, EAGAIN, 12345, -1};
    /* Lots of blocks freed in a row: some frees give whole runs or mappings back. */
    enum { BATCH = 64 };
    void *batch[BATCH];
    for (size_t i = 0; i < n; i++) {
        for (int k = 0; k < BATCH; k++) {
            batch[k] = k % 8 == 0 ? ta_memalign(4096, sizes[i]) : ta_malloc(sizes[i]);
            cr_assert_not_null(batch[k]);
            memset(batch[k], 1, sizes[i]);
            if (*r == TT_RANGE_HUGE && k == 1)
                break;
        }
        for (int k = 0; k < BATCH; k++) {
            if (*r == TT_RANGE_HUGE && k == 2)
                break;
            int v = values[(size_t)k % (sizeof values / sizeof *values)];
            errno = v;
            ta_free(batch[k]);
            cr_assert_eq(errno, v, "free of a %zu-byte block changed errno from %d to %d",
                         sizes[i], v, errno);
        }
    }
}

struct errno_job {
    void **blocks;
    int count;
    int failures;
};

static void *free_with_errno(void *arg)
{
    struct errno_job *j = arg;
    for (int i = 0; i < j->count; i++) {
        errno = 9000 + i;
        ta_free(j->blocks[i]);
        if (errno != 9000 + i)
            j->failures++;
    }
    return NULL;
}

Test(free_preserves_errno, cross_thread, .timeout = 60)
{
    enum { N = 3000 };
    static void *blocks[N];
    tt_rng g;
    tt_rng_seed(&g, 5);
    for (int i = 0; i < N; i++) {
        enum tt_range r = i % 300 == 0 ? TT_RANGE_HUGE : i % 7 == 0 ? TT_RANGE_MEDIUM
                                                                    : TT_RANGE_SMALL;
        blocks[i] = ta_malloc(tt_range_random(r, &g));
        cr_assert_not_null(blocks[i]);
    }
    struct errno_job j = {blocks, N, 0};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, free_with_errno, &j), 0);
    pthread_join(t, NULL);
    cr_assert_eq(j.failures, 0, "%d cross-thread frees changed errno", j.failures);
}

Test(free_preserves_errno, sized_variants)
{
    for (int i = 0; i < 500; i++) {
        size_t n = (size_t)i * 997 % 300000 + 1;
        void *p = ta_malloc(n);
        cr_assert_not_null(p);
        errno = ERANGE;
        ta_free_sized(p, n);
        cr_assert_eq(errno, ERANGE, "free_sized(%zu) changed errno to %d", n, errno);
        p = ta_aligned_alloc(256, n);
        cr_assert_not_null(p);
        errno = EDOM;
        ta_free_aligned_sized(p, 256, n);
        cr_assert_eq(errno, EDOM, "free_aligned_sized(256, %zu) changed errno to %d", n, errno);
    }
}
