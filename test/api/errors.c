/*
 * Impossible requests: every size no process can have (SIZE_MAX, PTRDIFF_MAX + 1, ...),
 * overflowing calloc and reallocarray products, in every entry point and at every
 * alignment, give NULL with errno ENOMEM; posix_memalign returns ENOMEM and leaves its
 * output alone; a failed realloc leaves the old block intact.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include <tamalloc.h>

#include "tatest.h"

#define SENTINEL ((void *)(uintptr_t)0x5e471e1)

/* Sizes no allocation can satisfy: beyond PTRDIFF_MAX, or beyond the address space. */
static const size_t impossible[] = {
    SIZE_MAX,
    SIZE_MAX - 1,
    SIZE_MAX - 7,
    SIZE_MAX - 15,
    SIZE_MAX - 16,
    SIZE_MAX - 4095,
    SIZE_MAX - 4096,
    SIZE_MAX - 65536,
    SIZE_MAX - 64 * TT_MIB,
    SIZE_MAX - 2 * 1024 * TT_MIB,
    (size_t)PTRDIFF_MAX + 1,
    (size_t)PTRDIFF_MAX + 2,
    (size_t)PTRDIFF_MAX + 4096,
    (size_t)PTRDIFF_MAX + TT_MIB,
    (size_t)PTRDIFF_MAX,
    (size_t)PTRDIFF_MAX - 15,
    (size_t)PTRDIFF_MAX - 4095,
    (size_t)PTRDIFF_MAX - 64 * TT_MIB,
    (size_t)1 << 62,
    (size_t)1 << 56,
    (size_t)1 << 48,
    ((size_t)1 << 48) + 1,
};
#define N_IMPOSSIBLE (sizeof impossible / sizeof *impossible)

enum target {
    T_MALLOC,
    T_CALLOC_N_1,
    T_CALLOC_1_N,
    T_REALLOC_NULL,
    T_REALLOC_LIVE,
    T_REALLOCARRAY_NULL_N_1,
    T_REALLOCARRAY_NULL_1_N,
    T_REALLOCARRAY_LIVE,
    T_POSIX_MEMALIGN,
    T_ALIGNED_ALLOC,
    T_MEMALIGN,
    T_VALLOC,
    T_PVALLOC,
};

static const char *target_name(enum target t)
{
    static const char *const names[] = {
        "malloc(n)",          "calloc(n, 1)",           "calloc(1, n)",
        "realloc(NULL, n)",   "realloc(live, n)",       "reallocarray(NULL, n, 1)",
        "reallocarray(NULL, 1, n)", "reallocarray(live, 1, n)", "posix_memalign",
        "aligned_alloc",      "memalign",               "valloc",
        "pvalloc"};
    return names[t];
}

struct impossible_param {
    enum target target;
    size_t align;             /* aligned entry points */
    enum tt_range live_range; /* realloc of a live block */
};

/* A live block whose contents and usable size must survive a failed reallocation. */
struct witness {
    unsigned char *p;
    size_t size, usable;
    uint64_t seed;
};

static void witness_make(struct witness *w, enum tt_range r, uint64_t seed)
{
    w->size = tt_range_typical(r);
    w->p = ta_malloc(w->size);
    cr_assert_not_null(w->p);
    w->usable = ta_malloc_usable_size(w->p);
    w->seed = seed;
    tt_fill(w->p, w->usable, seed);
}

static void witness_check(const struct witness *w, const char *what, size_t n)
{
    size_t bad = tt_check(w->p, w->usable, w->seed);
    cr_assert(bad == SIZE_MAX, "%s with n = %#zx: the old block changed at offset %zu", what,
              n, bad);
    cr_assert_eq(ta_malloc_usable_size(w->p), w->usable,
                 "%s with n = %#zx: the old block's usable size changed", what, n);
}

static void check_impossible(const struct impossible_param *p, size_t n)
{
    const char *name = target_name(p->target);
    struct witness w = {0};
    if (p->target == T_REALLOC_LIVE || p->target == T_REALLOCARRAY_LIVE)
        witness_make(&w, p->live_range, tt_mix(n, p->live_range));

    n = tt_opaque(n);
    void *r = SENTINEL;
    errno = 0;
    switch (p->target) {
    case T_MALLOC: r = ta_malloc(n); break;
    case T_CALLOC_N_1: r = ta_calloc(n, 1); break;
    case T_CALLOC_1_N: r = ta_calloc(1, n); break;
    case T_REALLOC_NULL: r = ta_realloc(NULL, n); break;
    case T_REALLOC_LIVE: r = ta_realloc(w.p, n); break;
    case T_REALLOCARRAY_NULL_N_1: r = ta_reallocarray(NULL, n, 1); break;
    case T_REALLOCARRAY_NULL_1_N: r = ta_reallocarray(NULL, 1, n); break;
    case T_REALLOCARRAY_LIVE: r = ta_reallocarray(w.p, 1, n); break;
    case T_POSIX_MEMALIGN: {
        void *out = SENTINEL;
        int rc = ta_posix_memalign(&out, p->align, n);
        cr_assert_eq(rc, ENOMEM, "posix_memalign(align %zu, %#zx) returned %d, not ENOMEM",
                     p->align, n, rc);
        cr_assert_eq(out, SENTINEL,
                     "posix_memalign(align %zu, %#zx) failed but changed *p to %p", p->align,
                     n, out);
        return;
    }
    case T_ALIGNED_ALLOC: r = ta_aligned_alloc(p->align, n); break;
    case T_MEMALIGN: r = ta_memalign(p->align, n); break;
    case T_VALLOC: r = ta_valloc(n); break;
    case T_PVALLOC: r = ta_pvalloc(n); break;
    }
    int err = errno;
    cr_assert_null(r, "%s (align %zu) with n = %#zx returned %p instead of NULL", name,
                   p->align, n, r);
    cr_assert_eq(err, ENOMEM, "%s (align %zu) with n = %#zx set errno %d (%s), not ENOMEM",
                 name, p->align, n, err, strerror(err));
    if (w.p) {
        witness_check(&w, name, n);
        ta_free(w.p);
    }
}

ParameterizedTestParameters(impossible, every_entry_every_alignment)
{
    static struct impossible_param params[128];
    size_t k = 0;
    static const enum target plain[] = {T_MALLOC,           T_CALLOC_N_1,
                                        T_CALLOC_1_N,       T_REALLOC_NULL,
                                        T_REALLOCARRAY_NULL_N_1, T_REALLOCARRAY_NULL_1_N,
                                        T_VALLOC,           T_PVALLOC};
    for (size_t i = 0; i < sizeof plain / sizeof *plain; i++)
        params[k++] = (struct impossible_param){plain[i], 0, TT_RANGE_SMALL};
    for (int r = 0; r < TT_RANGE_COUNT; r++) {
        params[k++] = (struct impossible_param){T_REALLOC_LIVE, 0, (enum tt_range)r};
        params[k++] = (struct impossible_param){T_REALLOCARRAY_LIVE, 0, (enum tt_range)r};
    }
    static const size_t pm_align[] = {8,    16,    32,        64,        128,
                                      256,  1024,  4096,      8192,      65536,
                                      TT_MIB, 2 * TT_MIB, 4 * TT_MIB, 64 * TT_MIB};
    for (size_t i = 0; i < sizeof pm_align / sizeof *pm_align; i++)
        params[k++] = (struct impossible_param){T_POSIX_MEMALIGN, pm_align[i], TT_RANGE_SMALL};
    static const size_t aa_align[] = {1,    2,     4,      8,          16,         32,
                                      64,   128,   512,    4096,       16384,      65536,
                                      TT_MIB, 2 * TT_MIB, 8 * TT_MIB, 64 * TT_MIB};
    for (size_t i = 0; i < sizeof aa_align / sizeof *aa_align; i++)
        params[k++] = (struct impossible_param){T_ALIGNED_ALLOC, aa_align[i], TT_RANGE_SMALL};
    /* memalign also takes alignments that are not powers of two. */
    static const size_t ma_align[] = {0,    1,    8,      16,         24,         64,
                                      100,  4096, 5000,   65536,      TT_MIB,     3 * TT_MIB,
                                      64 * TT_MIB};
    for (size_t i = 0; i < sizeof ma_align / sizeof *ma_align; i++)
        params[k++] = (struct impossible_param){T_MEMALIGN, ma_align[i], TT_RANGE_SMALL};
    return cr_make_param_array(struct impossible_param, params, k);
}

ParameterizedTest(struct impossible_param *p, impossible, every_entry_every_alignment,
                  .timeout = 60)
{
    for (size_t i = 0; i < N_IMPOSSIBLE; i++)
        check_impossible(p, impossible[i]);
    /* The allocator still works. */
    void *q = ta_malloc(100);
    cr_assert_not_null(q);
    ta_free(q);
}

/* ---- overflowing products ---------------------------------------------------------- */

struct product {
    size_t count, size;
};

static const struct product bad_products[] = {
    {SIZE_MAX, 2},
    {2, SIZE_MAX},
    {SIZE_MAX, SIZE_MAX},
    {(SIZE_MAX >> 1) + 1, 2},           /* wraps to 0 */
    {2, (SIZE_MAX >> 1) + 1},           /* wraps to 0 */
    {(size_t)1 << 32, (size_t)1 << 32}, /* wraps to 0 */
    {(size_t)1 << 40, (size_t)1 << 24}, /* wraps to 0 */
    {((size_t)1 << 32) + 1, ((size_t)1 << 32) - 1}, /* exactly SIZE_MAX */
    {SIZE_MAX / 3 + 1, 3},
    {3, SIZE_MAX / 3 + 1},
    {SIZE_MAX / 65537 + 1, 65537},
    {65537, SIZE_MAX / 65537 + 1},
    {((size_t)1 << 62), 2},             /* PTRDIFF_MAX + 1, no wrap */
    {2, ((size_t)1 << 62)},
    {((size_t)1 << 61) + 1, 4},         /* just past PTRDIFF_MAX */
    {(size_t)PTRDIFF_MAX, 1 + 1},
    {1000, SIZE_MAX / 1000 + 1},
    {SIZE_MAX / 16 + 1, 16},            /* wraps to 0 */
    {(size_t)1 << 33, (size_t)1 << 31}, /* wraps to 0 */
    {4097, (SIZE_MAX / 4097) + 1},
};
#define N_BAD_PRODUCTS (sizeof bad_products / sizeof *bad_products)

enum product_target { P_CALLOC, P_REALLOCARRAY_NULL, P_REALLOCARRAY_SMALL,
                      P_REALLOCARRAY_MEDIUM, P_REALLOCARRAY_HUGE };

ParameterizedTestParameters(impossible, overflowing_products)
{
    static enum product_target params[] = {P_CALLOC, P_REALLOCARRAY_NULL, P_REALLOCARRAY_SMALL,
                                           P_REALLOCARRAY_MEDIUM, P_REALLOCARRAY_HUGE};
    return cr_make_param_array(enum product_target, params, sizeof params / sizeof *params);
}

ParameterizedTest(enum product_target *t, impossible, overflowing_products)
{
    for (size_t i = 0; i < N_BAD_PRODUCTS; i++) {
        size_t count = tt_opaque(bad_products[i].count), size = tt_opaque(bad_products[i].size);
        struct witness w = {0};
        void *r;
        const char *name;
        errno = 0;
        if (*t == P_CALLOC) {
            name = "calloc";
            r = ta_calloc(count, size);
        } else if (*t == P_REALLOCARRAY_NULL) {
            name = "reallocarray(NULL, ...)";
            r = ta_reallocarray(NULL, count, size);
        } else {
            name = "reallocarray(live, ...)";
            witness_make(&w, (enum tt_range)(*t - P_REALLOCARRAY_SMALL), i + 17);
            r = ta_reallocarray(w.p, count, size);
        }
        int err = errno;
        cr_assert_null(r, "%s(%#zx, %#zx) returned %p instead of NULL", name, count, size, r);
        cr_assert_eq(err, ENOMEM, "%s(%#zx, %#zx) set errno %d, not ENOMEM", name, count, size,
                     err);
        if (w.p) {
            witness_check(&w, name, count);
            ta_free(w.p);
        }
    }
}

/* Products that do not overflow must work: the check must not be too strict. */
Test(impossible, products_near_the_limit_that_fit)
{
    static const struct product ok[] = {
        {(size_t)1 << 20, 1}, {1, (size_t)1 << 20}, {65536, 16},  {16, 65536},
        {4096, 4096},         {3, 1000000},         {1000000, 3}, {0x10001, 0xffff},
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        size_t n = ok[i].count * ok[i].size;
        unsigned char *p = ta_calloc(ok[i].count, ok[i].size);
        cr_assert_not_null(p, "calloc(%zu, %zu) returned NULL", ok[i].count, ok[i].size);
        cr_assert_eq(tt_check_zero(p, n), SIZE_MAX);
        unsigned char *q = ta_reallocarray(p, ok[i].size, ok[i].count);
        cr_assert_not_null(q, "reallocarray(p, %zu, %zu) returned NULL", ok[i].size,
                           ok[i].count);
        cr_assert(ta_malloc_usable_size(q) >= n);
        ta_free(q);
    }
}

/* ---- huge alignments --------------------------------------------------------------- */

/* No block can be aligned to 2^62 or 2^63 in a user address space: ENOMEM, no crash. */
Test(impossible, alignment_beyond_the_address_space)
{
    static const size_t aligns[] = {(size_t)1 << 62, (size_t)1 << 63};
    static const size_t sizes[] = {0, 1, 4096, SIZE_MAX};
    for (size_t i = 0; i < 2; i++)
        for (size_t j = 0; j < 4; j++) {
            size_t a = tt_opaque(aligns[i]), n = tt_opaque(sizes[j]);
            void *out = SENTINEL;
            int rc = ta_posix_memalign(&out, a, n);
            cr_assert_eq(rc, ENOMEM, "posix_memalign(%#zx, %#zx) returned %d", a, n, rc);
            cr_assert_eq(out, SENTINEL);
            errno = 0;
            void *r = ta_aligned_alloc(a, n);
            cr_assert_null(r, "aligned_alloc(%#zx, %#zx) returned %p", a, n, r);
            cr_assert_eq(errno, ENOMEM, "aligned_alloc(%#zx, %#zx) errno %d", a, n, errno);
            errno = 0;
            r = ta_memalign(a, n);
            cr_assert_null(r, "memalign(%#zx, %#zx) returned %p", a, n, r);
            cr_assert_eq(errno, ENOMEM, "memalign(%#zx, %#zx) errno %d", a, n, errno);
        }
}

/* ---- failure leaves no trace ------------------------------------------------------- */

/* Thousands of failed requests of every kind must not leak, corrupt or slow down. */
Test(impossible, many_failures_then_normal_use, .timeout = 60)
{
    long before = tt_rss_kib();
    void *live = ta_malloc(1000);
    tt_fill(live, 1000, 3);
    for (int i = 0; i < 20000; i++) {
        size_t n = tt_opaque(impossible[(size_t)i % N_IMPOSSIBLE]);
        void *r;
        switch (i % 7) {
        case 0: r = ta_malloc(n); break;
        case 1: r = ta_calloc(n, 1); break;
        case 2: r = ta_realloc(live, n); break;
        case 3: r = ta_aligned_alloc(64, n); break;
        case 4: r = ta_memalign(4096, n); break;
        case 5: r = ta_valloc(n); break;
        default: {
            void *out = NULL;
            r = ta_posix_memalign(&out, 32, n) == 0 ? out : NULL;
        }
        }
        cr_assert_null(r);
    }
    cr_assert_eq(tt_check(live, 1000, 3), SIZE_MAX);
    ta_free(live);
    long after = tt_rss_kib();
    cr_assert(after - before < 16 * 1024, "RSS grew by %ld KiB over failed requests",
              after - before);
    void *p = ta_malloc(TT_MIB * 3);
    cr_assert_not_null(p);
    memset(p, 1, TT_MIB * 3);
    ta_free(p);
}

/* errno is ENOMEM also when it held something else before. */
Test(impossible, errno_overwritten)
{
    errno = EINVAL;
    cr_assert_null(ta_malloc(tt_opaque(SIZE_MAX)));
    cr_assert_eq(errno, ENOMEM);
    errno = EEXIST;
    cr_assert_null(ta_calloc(tt_opaque(SIZE_MAX), 2));
    cr_assert_eq(errno, ENOMEM);
}
