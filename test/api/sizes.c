/*
 * Sizes from 0 bytes to tens of MiB through every entry point: non-NULL results,
 * alignment, usable size, every usable byte writable, blocks never overlapping.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <tamalloc.h>

#include "tatest.h"

#define KEEP 8 /* blocks kept alive at once, checked against each other */

struct live {
    unsigned char *p;
    size_t usable;
    uint64_t seed;
};

static void check_and_free(struct live *b, const char *what, size_t size)
{
    if (!b->p)
        return;
    size_t bad = tt_check(b->p, b->usable, b->seed);
    cr_assert(bad == SIZE_MAX,
              "%s: a block of usable size %zu (neighbour of a %zu-byte request) changed at "
              "offset %zu: overlapping blocks?",
              what, b->usable, size, bad);
    ta_free(b->p);
    b->p = NULL;
}

/* Allocates every size of table `r` through entry point `e`, with alignment `align` for
 * the aligned entry points, and checks each block. */
static void exercise(enum tt_entry e, enum tt_range r, size_t align)
{
    const size_t *sizes;
    size_t n = tt_range_sizes(r, &sizes);
    struct live keep[KEEP] = {{0}};
    const char *name = tt_entry_name(e);
    size_t need_align = tt_required_alignment(e, align);
    for (size_t i = 0; i < n; i++) {
        size_t size = sizes[i];
        errno = 0;
        unsigned char *p = tt_alloc(e, size, align);
        cr_assert_not_null(p, "%s(%zu) (alignment %zu) returned NULL, errno %d", name, size,
                           align, errno);
        cr_assert((uintptr_t)p % need_align == 0,
                  "%s(%zu) (alignment %zu) returned %p, not %zu-byte aligned", name, size,
                  align, (void *)p, need_align);
        size_t usable = ta_malloc_usable_size(p);
        size_t need = tt_required_usable(e, size);
        cr_assert(usable >= need, "%s(%zu): usable size %zu is less than %zu", name, size,
                  usable, need);
        if (e == TT_CALLOC) {
            size_t bad = tt_check_zero(p, size);
            cr_assert(bad == SIZE_MAX, "calloc(1, %zu): byte %zu is not zero", size, bad);
        }
        struct live *slot = &keep[i % KEEP];
        check_and_free(slot, name, size);
        slot->p = p;
        slot->usable = usable;
        slot->seed = tt_mix(e * 1000003u + r, i);
        tt_fill(p, usable, slot->seed);
    }
    for (size_t i = 0; i < KEEP; i++)
        check_and_free(&keep[i], name, 0);
}

struct entry_range {
    enum tt_entry entry;
    enum tt_range range;
    size_t align;
};

ParameterizedTestParameters(sizes, every_entry_every_range)
{
    static struct entry_range params[TT_ENTRY_COUNT * TT_RANGE_COUNT];
    size_t n = 0;
    for (int e = 0; e < TT_ENTRY_COUNT; e++)
        for (int r = 0; r < TT_RANGE_COUNT; r++) {
            size_t align = 0;
            if (e == TT_POSIX_MEMALIGN)
                align = 64;
            else if (e == TT_ALIGNED_ALLOC)
                align = 256;
            else if (e == TT_MEMALIGN)
                align = 4096;
            params[n++] = (struct entry_range){(enum tt_entry)e, (enum tt_range)r, align};
        }
    return cr_make_param_array(struct entry_range, params, n);
}

ParameterizedTest(struct entry_range *p, sizes, every_entry_every_range, .timeout = 120)
{
    exercise(p->entry, p->range, p->align);
}

/* The aligned entry points with the smallest alignments they accept. */
ParameterizedTestParameters(sizes, aligned_entries_small_alignment)
{
    static struct entry_range params[] = {
        {TT_POSIX_MEMALIGN, TT_RANGE_SMALL, sizeof(void *)},
        {TT_POSIX_MEMALIGN, TT_RANGE_MEDIUM, sizeof(void *)},
        {TT_POSIX_MEMALIGN, TT_RANGE_HUGE, 16},
        {TT_ALIGNED_ALLOC, TT_RANGE_SMALL, 1},
        {TT_ALIGNED_ALLOC, TT_RANGE_MEDIUM, 2},
        {TT_ALIGNED_ALLOC, TT_RANGE_HUGE, 8},
        {TT_MEMALIGN, TT_RANGE_SMALL, 1},
        {TT_MEMALIGN, TT_RANGE_MEDIUM, 16},
        {TT_MEMALIGN, TT_RANGE_HUGE, 32},
    };
    return cr_make_param_array(struct entry_range, params, sizeof params / sizeof *params);
}

ParameterizedTest(struct entry_range *p, sizes, aligned_entries_small_alignment,
                  .timeout = 120)
{
    exercise(p->entry, p->range, p->align);
}

/* ---- size 0 ------------------------------------------------------------------------ */

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
    return x < y ? -1 : x > y;
}

static void assert_distinct(void **ptrs, size_t n, const char *what)
{
    void **copy = malloc(n * sizeof *copy);
    cr_assert_not_null(copy);
    memcpy(copy, ptrs, n * sizeof *copy);
    qsort(copy, n, sizeof *copy, cmp_ptr);
    for (size_t i = 1; i < n; i++)
        cr_assert(copy[i] != copy[i - 1], "%s returned the same block %p twice", what,
                  copy[i]);
    free(copy);
}

ParameterizedTestParameters(sizes, zero_bytes_distinct_blocks)
{
    static struct entry_range params[TT_ENTRY_COUNT];
    for (int e = 0; e < TT_ENTRY_COUNT; e++)
        params[e] = (struct entry_range){(enum tt_entry)e, TT_RANGE_SMALL,
                                         e == TT_MEMALIGN ? 128 : 64};
    return cr_make_param_array(struct entry_range, params, TT_ENTRY_COUNT);
}

ParameterizedTest(struct entry_range *p, sizes, zero_bytes_distinct_blocks)
{
    enum { N = 200 };
    void *blocks[N];
    size_t need_align = tt_required_alignment(p->entry, p->align);
    for (int i = 0; i < N; i++) {
        errno = 0;
        blocks[i] = tt_alloc(p->entry, 0, p->align);
        cr_assert_not_null(blocks[i], "%s(0) returned NULL (errno %d)",
                           tt_entry_name(p->entry), errno);
        cr_assert((uintptr_t)blocks[i] % need_align == 0, "%s(0) returned %p, not %zu-aligned",
                  tt_entry_name(p->entry), blocks[i], need_align);
        size_t u = ta_malloc_usable_size(blocks[i]);
        memset(blocks[i], 0x5a, u);
    }
    assert_distinct(blocks, N, tt_entry_name(p->entry));
    for (int i = 0; i < N; i++)
        ta_free(blocks[i]);
}

Test(sizes, malloc_zero_distinct_and_freeable)
{
    void *a = ta_malloc(0), *b = ta_malloc(0);
    cr_assert_not_null(a);
    cr_assert_not_null(b);
    cr_assert(a != b, "malloc(0) returned %p twice", a);
    ta_free(a);
    ta_free(b);
}

Test(sizes, calloc_zero_counts)
{
    void *blocks[] = {ta_calloc(0, 0), ta_calloc(0, 0), ta_calloc(0, 1), ta_calloc(1, 0),
                      ta_calloc(0, 4096), ta_calloc(TT_MIB, 0), ta_calloc(0, tt_opaque(SIZE_MAX)),
                      ta_calloc(tt_opaque(SIZE_MAX), 0)};
    size_t n = sizeof blocks / sizeof *blocks;
    for (size_t i = 0; i < n; i++)
        cr_assert_not_null(blocks[i], "calloc with a zero count or size #%zu returned NULL", i);
    assert_distinct(blocks, n, "calloc(0, ...)");
    for (size_t i = 0; i < n; i++)
        ta_free(blocks[i]);
}

Test(sizes, realloc_and_reallocarray_of_null_zero)
{
    void *a = ta_realloc(NULL, 0);
    void *b = ta_reallocarray(NULL, 0, 0);
    void *c = ta_reallocarray(NULL, 0, 16);
    cr_assert_not_null(a, "realloc(NULL, 0) must behave as malloc(0)");
    cr_assert_not_null(b, "reallocarray(NULL, 0, 0) must behave as malloc(0)");
    cr_assert_not_null(c, "reallocarray(NULL, 0, 16) must behave as malloc(0)");
    cr_assert(a != b && b != c && a != c);
    ta_free(a);
    ta_free(b);
    ta_free(c);
}

/* ---- NULL -------------------------------------------------------------------------- */

Test(sizes, free_null_does_nothing)
{
    errno = 1234;
    ta_free(NULL);
    ta_free_sized(NULL, 0);
    ta_free_sized(NULL, 100);
    ta_free_aligned_sized(NULL, 64, 0);
    ta_free_aligned_sized(NULL, 4096, 100);
    cr_assert_eq(errno, 1234, "free(NULL) changed errno to %d", errno);
    void *p = ta_malloc(10);
    cr_assert_not_null(p);
    ta_free(NULL);
    ta_free(p);
}

Test(sizes, free_null_first_call)
{
    /* The very first call into the allocator is free(NULL). */
    ta_free(NULL);
    void *p = ta_malloc(1);
    cr_assert_not_null(p);
    ta_free(p);
}

Test(sizes, usable_size_of_null_is_zero)
{
    cr_assert_eq(ta_malloc_usable_size(NULL), 0);
    void *p = ta_malloc(32);
    ta_free(p);
    cr_assert_eq(ta_malloc_usable_size(NULL), 0);
}

Test(sizes, usable_size_first_call_null)
{
    cr_assert_eq(ta_malloc_usable_size(NULL), 0);
}

/* ---- alignment and usable size ----------------------------------------------------- */

Test(sizes, every_small_block_16_aligned)
{
    enum { N = 20000 };
    void **ptrs = malloc(N * sizeof *ptrs);
    cr_assert_not_null(ptrs);
    tt_rng g;
    tt_rng_seed(&g, 7);
    for (int i = 0; i < N; i++) {
        size_t size = tt_rand_between(&g, 0, 300);
        ptrs[i] = ta_malloc(size);
        cr_assert_not_null(ptrs[i]);
        cr_assert((uintptr_t)ptrs[i] % 16 == 0, "malloc(%zu) returned %p, not 16-aligned",
                  size, ptrs[i]);
        if (i % 3 == 0) {
            ta_free(ptrs[i]);
            ptrs[i] = NULL;
        }
    }
    for (int i = 0; i < N; i++)
        ta_free(ptrs[i]);
    free(ptrs);
}

/* Many live blocks of one size: each filled over its whole usable size, then checked:
 * no two blocks (or their usable tails) overlap. */
struct many_param {
    size_t size;
    int count;
};

ParameterizedTestParameters(sizes, many_blocks_one_size_no_overlap)
{
    static struct many_param params[] = {
        {1, 5000},       {8, 5000},       {16, 5000},         {24, 4000},
        {48, 4000},      {100, 3000},     {128, 3000},        {250, 2000},
        {512, 2000},     {1000, 1000},    {2048, 800},        {3000, 600},
        {4096, 500},     {6000, 300},     {8192, 300},        {8193, 200},
        {20000, 150},    {65536, 80},     {200000, 40},       {TT_MIB - 100, 12},
        {TT_MIB + 1, 8}, {3 * TT_MIB, 6}, {17 * TT_MIB + 3, 2},
    };
    return cr_make_param_array(struct many_param, params, sizeof params / sizeof *params);
}

ParameterizedTest(struct many_param *p, sizes, many_blocks_one_size_no_overlap,
                  .timeout = 120)
{
    unsigned char **ptrs = malloc((size_t)p->count * sizeof *ptrs);
    size_t *usable = malloc((size_t)p->count * sizeof *usable);
    cr_assert(ptrs && usable);
    for (int i = 0; i < p->count; i++) {
        ptrs[i] = ta_malloc(p->size);
        cr_assert_not_null(ptrs[i], "malloc(%zu) #%d returned NULL", p->size, i);
        usable[i] = ta_malloc_usable_size(ptrs[i]);
        cr_assert(usable[i] >= p->size);
        tt_fill(ptrs[i], usable[i], tt_mix(p->size, (uint64_t)i));
    }
    for (int i = 0; i < p->count; i++) {
        size_t bad = tt_check(ptrs[i], usable[i], tt_mix(p->size, (uint64_t)i));
        cr_assert(bad == SIZE_MAX,
                  "malloc(%zu) block #%d (%p, usable %zu) was overwritten at offset %zu",
                  p->size, i, (void *)ptrs[i], usable[i], bad);
    }
    /* Free every other block, refill the holes, check again. */
    for (int i = 0; i < p->count; i += 2)
        ta_free(ptrs[i]);
    for (int i = 0; i < p->count; i += 2) {
        ptrs[i] = ta_malloc(p->size);
        cr_assert_not_null(ptrs[i]);
        usable[i] = ta_malloc_usable_size(ptrs[i]);
        tt_fill(ptrs[i], usable[i], tt_mix(p->size + 1, (uint64_t)i));
    }
    for (int i = 0; i < p->count; i++) {
        uint64_t seed = tt_mix(p->size + (i % 2 == 0), (uint64_t)i);
        size_t bad = tt_check(ptrs[i], usable[i], seed);
        cr_assert(bad == SIZE_MAX, "malloc(%zu) block #%d was overwritten at offset %zu",
                  p->size, i, bad);
        ta_free(ptrs[i]);
    }
    free(ptrs);
    free(usable);
}

/* Usable size is stable over the life of a block and all of it survives a free of the
 * neighbours. */
Test(sizes, usable_size_stable)
{
    tt_rng g;
    tt_rng_seed(&g, 99);
    for (int i = 0; i < 3000; i++) {
        enum tt_range r = i % 50 == 0 ? TT_RANGE_HUGE : i % 5 == 0 ? TT_RANGE_MEDIUM
                                                                   : TT_RANGE_SMALL;
        size_t size = tt_range_random(r, &g);
        void *p = ta_malloc(size);
        cr_assert_not_null(p);
        size_t u1 = ta_malloc_usable_size(p);
        void *q = ta_malloc(size);
        ta_free(q);
        size_t u2 = ta_malloc_usable_size(p);
        cr_assert_eq(u1, u2, "usable size of a %zu-byte block changed from %zu to %zu", size,
                     u1, u2);
        ta_free(p);
    }
}

/* ---- free_sized and free_aligned_sized --------------------------------------------- */

ParameterizedTestParameters(sizes, free_sized_each_range)
{
    static enum tt_range params[] = {TT_RANGE_SMALL, TT_RANGE_MEDIUM, TT_RANGE_HUGE};
    return cr_make_param_array(enum tt_range, params, 3);
}

ParameterizedTest(enum tt_range *r, sizes, free_sized_each_range, .timeout = 60)
{
    const size_t *sizes;
    size_t n = tt_range_sizes(*r, &sizes);
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < n; i++) {
            void *p = round == 1 ? ta_calloc(1, sizes[i]) : ta_malloc(sizes[i]);
            cr_assert_not_null(p);
            memset(p, 0x33, sizes[i]);
            errno = 4321;
            ta_free_sized(p, sizes[i]);
            cr_assert_eq(errno, 4321, "free_sized(%zu) changed errno", sizes[i]);
        }
    }
    void *p = ta_malloc(tt_range_typical(*r));
    cr_assert_not_null(p);
    ta_free(p);
}

ParameterizedTestParameters(sizes, free_aligned_sized_each_range)
{
    static enum tt_range params[] = {TT_RANGE_SMALL, TT_RANGE_MEDIUM, TT_RANGE_HUGE};
    return cr_make_param_array(enum tt_range, params, 3);
}

ParameterizedTest(enum tt_range *r, sizes, free_aligned_sized_each_range, .timeout = 60)
{
    static const size_t aligns[] = {1, 8, 16, 32, 64, 256, 4096, 65536};
    const size_t *sizes;
    size_t n = tt_range_sizes(*r, &sizes);
    for (size_t i = 0; i < n; i++) {
        size_t a = aligns[i % (sizeof aligns / sizeof *aligns)];
        void *p = ta_aligned_alloc(a, sizes[i]);
        cr_assert_not_null(p, "aligned_alloc(%zu, %zu) returned NULL", a, sizes[i]);
        cr_assert((uintptr_t)p % a == 0);
        memset(p, 0x44, sizes[i]);
        errno = 4321;
        ta_free_aligned_sized(p, a, sizes[i]);
        cr_assert_eq(errno, 4321, "free_aligned_sized changed errno");
    }
}

/* Every size C23 allows passes the size check: what was asked of malloc, calloc, realloc
 * (growing, shrinking, in place by the owner or by another thread) and aligned_alloc, 0
 * included. */
struct resize {
    void *p;
    size_t size;
};

static void *resize_in_thread(void *arg)
{
    struct resize *r = arg;
    r->p = ta_realloc(r->p, r->size);
    return NULL;
}

Test(sizes, free_sized_accepts_every_requested_size, .timeout = 60)
{
    static const size_t firsts[] = {1, 16, 17, 100, 1000, 8192, 8193, 50000, 600000,
                                    TT_MIB + 1, 3 * TT_MIB};
    for (size_t i = 0; i < sizeof firsts / sizeof *firsts; i++) {
        size_t n = firsts[i];
        size_t seconds[] = {n / 2 + 1, n - n / 8, n, n + 1, 2 * n};
        for (size_t j = 0; j < sizeof seconds / sizeof *seconds; j++) {
            void *p = ta_malloc(n);
            cr_assert_not_null(p);
            memset(p, 1, n);
            void *q = ta_realloc(p, seconds[j]);
            cr_assert_not_null(q);
            ta_free_sized(q, seconds[j]);

            /* Another thread's realloc keeps the block in place when it can. */
            struct resize r = {ta_malloc(n), seconds[j]};
            cr_assert_not_null(r.p);
            pthread_t t;
            cr_assert_eq(pthread_create(&t, NULL, resize_in_thread, &r), 0);
            cr_assert_eq(pthread_join(t, NULL), 0);
            cr_assert_not_null(r.p);
            ta_free_sized(r.p, seconds[j]);
        }
    }
    ta_free_sized(ta_malloc(0), 0);
    ta_free_sized(ta_calloc(0, 8), 0);
    ta_free_sized(ta_calloc(3, 33), 99);
}

Test(sizes, free_aligned_sized_accepts_every_requested_size, .timeout = 120)
{
    unsigned top = TT_SANITIZER ? 21 : 23; /* alignments up to 2 or 8 MiB */
    for (unsigned shift = 0; shift <= top; shift++) {
        size_t a = (size_t)1 << shift;
        size_t sizes[] = {0, 1, a / 2 + 1, a - 1, a, a + 1, 3 * a + 5, 5000, 70000, 1500000};
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            void *p = ta_aligned_alloc(a, sizes[i]);
            cr_assert_not_null(p, "aligned_alloc(%zu, %zu)", a, sizes[i]);
            ta_free_aligned_sized(p, a, sizes[i]);
            p = ta_memalign(a, sizes[i]);
            cr_assert_not_null(p, "memalign(%zu, %zu)", a, sizes[i]);
            ta_free_aligned_sized(p, a, sizes[i]);
        }
    }
}

/* ---- malloc_trim ------------------------------------------------------------------- */

Test(sizes, malloc_trim_contract, .timeout = 60)
{
    enum { N = 300 };
    void *ptrs[N];
    for (int i = 0; i < N; i++) {
        size_t size = i % 3 == 0 ? 200000 : i % 3 == 1 ? 5000 : 2 * TT_MIB;
        ptrs[i] = ta_malloc(size);
        cr_assert_not_null(ptrs[i]);
        memset(ptrs[i], 0x77, size);
    }
    void *keep = ta_malloc(100);
    tt_fill(keep, 100, 5);
    for (int i = 0; i < N; i++)
        ta_free(ptrs[i]);
    int rc = ta_malloc_trim(0);
    cr_assert(rc == 0 || rc == 1, "malloc_trim returned %d", rc);
    rc = ta_malloc_trim(TT_MIB);
    cr_assert(rc == 0 || rc == 1, "malloc_trim returned %d", rc);
    cr_assert_eq(tt_check(keep, 100, 5), SIZE_MAX, "malloc_trim changed a live block");
    /* Everything still works afterwards. */
    for (int i = 0; i < N; i++) {
        size_t size = i % 3 == 0 ? 200000 : i % 3 == 1 ? 5000 : 2 * TT_MIB;
        ptrs[i] = ta_malloc(size);
        cr_assert_not_null(ptrs[i]);
        tt_fill(ptrs[i], size, (uint64_t)i);
    }
    for (int i = 0; i < N; i++) {
        size_t size = i % 3 == 0 ? 200000 : i % 3 == 1 ? 5000 : 2 * TT_MIB;
        cr_assert_eq(tt_check(ptrs[i], size, (uint64_t)i), SIZE_MAX);
        ta_free(ptrs[i]);
    }
    ta_free(keep);
}

Test(sizes, malloc_trim_first_call)
{
    int rc = ta_malloc_trim(0);
    cr_assert(rc == 0 || rc == 1, "malloc_trim returned %d", rc);
    void *p = ta_malloc(10);
    cr_assert_not_null(p);
    ta_free(p);
}
