/*
 * Threads: cross-thread frees of every size range, blocks outliving the thread that
 * allocated them, a thread whose first call is a free, tens of thousands of short-lived
 * threads without memory growth, and thread-local destructors of other code calling
 * malloc and free after the allocator's own per-thread clean-up.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tamalloc.h>

#include "tatest.h"

/* Errors found in threads other than the test's own are collected and asserted later. */
static _Atomic int thread_errors;
static char first_error[256];
static pthread_mutex_t error_lock = PTHREAD_MUTEX_INITIALIZER;

static void thread_fail(const char *fmt, size_t a, size_t b)
{
    if (atomic_fetch_add(&thread_errors, 1) == 0) {
        pthread_mutex_lock(&error_lock);
        snprintf(first_error, sizeof first_error, fmt, a, b);
        pthread_mutex_unlock(&error_lock);
    }
}

static void assert_no_thread_errors(void)
{
    int n = atomic_load(&thread_errors);
    pthread_mutex_lock(&error_lock);
    cr_assert_eq(n, 0, "%d errors in threads; first: %s", n, first_error);
    pthread_mutex_unlock(&error_lock);
}

static pthread_t spawn(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    int rc = pthread_create(&t, NULL, fn, arg);
    cr_assert_eq(rc, 0, "pthread_create: %s", strerror(rc));
    return t;
}

/* ---- cross-thread frees ------------------------------------------------------------ */

struct handoff {
    unsigned char **blocks;
    size_t *sizes;
    int count;
    uint64_t seed;
};

static void *check_and_free_all(void *arg)
{
    struct handoff *h = arg;
    for (int i = 0; i < h->count; i++) {
        if (tt_check(h->blocks[i], h->sizes[i], tt_mix(h->seed, (uint64_t)i)) != SIZE_MAX)
            thread_fail("block %zu of %zu bytes corrupted before its cross-thread free",
                        (size_t)i, h->sizes[i]);
        ta_free(h->blocks[i]);
    }
    return NULL;
}

static void *allocate_all(void *arg)
{
    struct handoff *h = arg;
    tt_rng g;
    tt_rng_seed(&g, h->seed);
    for (int i = 0; i < h->count; i++) {
        h->blocks[i] = tt_alloc((enum tt_entry)(i % TT_ENTRY_COUNT), h->sizes[i], 32);
        if (!h->blocks[i]) {
            thread_fail("allocation %zu of %zu bytes failed", (size_t)i, h->sizes[i]);
            h->count = i;
            break;
        }
        tt_fill(h->blocks[i], h->sizes[i], tt_mix(h->seed, (uint64_t)i));
    }
    return NULL;
}

ParameterizedTestParameters(threads, cross_thread_free)
{
    static enum tt_range params[] = {TT_RANGE_SMALL, TT_RANGE_MEDIUM, TT_RANGE_HUGE};
    return cr_make_param_array(enum tt_range, params, 3);
}

/* Thread A allocates, thread B frees, while A keeps allocating: for each range. */
ParameterizedTest(enum tt_range *r, threads, cross_thread_free, .timeout = 60)
{
    int count = *r == TT_RANGE_SMALL ? 20000 : *r == TT_RANGE_MEDIUM ? 500 : 30;
    int rounds = 6;
    struct handoff h[2];
    tt_rng g;
    tt_rng_seed(&g, 77);
    for (int k = 0; k < 2; k++) {
        h[k].blocks = malloc((size_t)count * sizeof(void *));
        h[k].sizes = malloc((size_t)count * sizeof(size_t));
        cr_assert(h[k].blocks && h[k].sizes);
    }
    /* A pipeline: while one thread checks and frees the blocks of round k, a new thread
     * allocates those of round k + 1. */
    for (int round = 0; round <= rounds; round++) {
        pthread_t freer = 0, maker = 0;
        if (round > 0)
            freer = spawn(check_and_free_all, &h[(round - 1) % 2]);
        if (round < rounds) {
            struct handoff *next = &h[round % 2];
            next->count = count;
            next->seed = (uint64_t)round;
            for (int i = 0; i < count; i++)
                next->sizes[i] = tt_range_random(*r, &g);
            maker = spawn(allocate_all, next);
        }
        if (round < rounds)
            pthread_join(maker, NULL);
        if (round > 0)
            pthread_join(freer, NULL);
    }
    for (int k = 0; k < 2; k++) {
        free(h[k].blocks);
        free(h[k].sizes);
    }
    assert_no_thread_errors();
}

/* Two threads pass blocks back and forth; each frees what the other allocated. */
struct pingpong {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned char *slot[2];
    size_t size[2];
    int rounds;
};

struct pp_arg {
    struct pingpong *pp;
    int me;
};

static void *pingpong_player(void *arg)
{
    struct pp_arg *a = arg;
    struct pingpong *pp = a->pp;
    int me = a->me, other = 1 - me;
    tt_rng g;
    tt_rng_seed(&g, (uint64_t)me + 1);
    for (int i = 0; i < pp->rounds; i++) {
        enum tt_range r = i % 97 == 0 ? TT_RANGE_HUGE : i % 9 == 0 ? TT_RANGE_MEDIUM
                                                                   : TT_RANGE_SMALL;
        size_t n = tt_range_random(r, &g);
        unsigned char *p = ta_malloc(n);
        if (!p) {
            thread_fail("malloc(%zu) failed in round %zu", n, (size_t)i);
            break;
        }
        tt_fill(p, n, tt_mix((uint64_t)me, (uint64_t)i));
        pthread_mutex_lock(&pp->lock);
        while (pp->slot[other] != NULL)
            pthread_cond_wait(&pp->cond, &pp->lock);
        pp->slot[other] = p;
        pp->size[other] = n;
        pthread_cond_broadcast(&pp->cond);
        while (pp->slot[me] == NULL)
            pthread_cond_wait(&pp->cond, &pp->lock);
        unsigned char *q = pp->slot[me];
        size_t qn = pp->size[me];
        pp->slot[me] = NULL;
        pthread_cond_broadcast(&pp->cond);
        pthread_mutex_unlock(&pp->lock);
        if (tt_check(q, qn, tt_mix((uint64_t)other, (uint64_t)i)) != SIZE_MAX)
            thread_fail("ping-pong block of %zu bytes corrupted (round %zu)", qn, (size_t)i);
        ta_free(q);
    }
    return NULL;
}

/* Under ThreadSanitizer the filling of the huge blocks dominates (17 s for 20,000 rounds on
 * an idle machine, over a minute beside other tests), so such builds play fewer rounds. */
Test(threads, ping_pong, .timeout = 180)
{
    struct pingpong pp = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {0}, {0},
                          TT_SANITIZER ? 5000 : 20000};
    struct pp_arg a0 = {&pp, 0}, a1 = {&pp, 1};
    pthread_t t0 = spawn(pingpong_player, &a0), t1 = spawn(pingpong_player, &a1);
    pthread_join(t0, NULL);
    pthread_join(t1, NULL);
    assert_no_thread_errors();
}

/* Many producers, one consumer freeing everything (remote lists under contention). */
struct mpsc {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned char *queue[4096];
    size_t qsize[4096];
    uint64_t qseed[4096];
    int head, tail, producers_left;
};

static void *mpsc_producer(void *arg)
{
    struct mpsc *m = arg;
    static _Atomic uint64_t next_id;
    tt_rng g;
    tt_rng_seed(&g, atomic_fetch_add(&next_id, 1000003));
    for (int i = 0; i < 20000; i++) {
        size_t n = i % 200 == 0 ? tt_range_random(TT_RANGE_MEDIUM, &g)
                                : tt_range_random(TT_RANGE_SMALL, &g) % 600 + 1;
        uint64_t seed = tt_rand(&g);
        unsigned char *p = ta_malloc(n);
        if (!p) {
            thread_fail("malloc(%zu) failed (%zu)", n, 0);
            break;
        }
        tt_fill(p, n, seed);
        pthread_mutex_lock(&m->lock);
        while ((m->tail + 1) % 4096 == m->head)
            pthread_cond_wait(&m->cond, &m->lock);
        m->queue[m->tail] = p;
        m->qsize[m->tail] = n;
        m->qseed[m->tail] = seed;
        m->tail = (m->tail + 1) % 4096;
        pthread_cond_broadcast(&m->cond);
        pthread_mutex_unlock(&m->lock);
    }
    pthread_mutex_lock(&m->lock);
    m->producers_left--;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

static void *mpsc_consumer(void *arg)
{
    struct mpsc *m = arg;
    for (;;) {
        pthread_mutex_lock(&m->lock);
        while (m->head == m->tail && m->producers_left > 0)
            pthread_cond_wait(&m->cond, &m->lock);
        if (m->head == m->tail) {
            pthread_mutex_unlock(&m->lock);
            return NULL;
        }
        unsigned char *p = m->queue[m->head];
        size_t n = m->qsize[m->head];
        uint64_t seed = m->qseed[m->head];
        m->head = (m->head + 1) % 4096;
        pthread_cond_broadcast(&m->cond);
        pthread_mutex_unlock(&m->lock);
        if (tt_check(p, n, seed) != SIZE_MAX)
            thread_fail("block of %zu bytes corrupted in transit (%zu)", n, 0);
        ta_free(p);
    }
}

Test(threads, many_producers_one_consumer, .timeout = 60)
{
    static struct mpsc m;
    memset(&m, 0, sizeof m);
    pthread_mutex_init(&m.lock, NULL);
    pthread_cond_init(&m.cond, NULL);
    m.producers_left = 4;
    pthread_t c = spawn(mpsc_consumer, &m);
    pthread_t p[4];
    for (int i = 0; i < 4; i++)
        p[i] = spawn(mpsc_producer, &m);
    for (int i = 0; i < 4; i++)
        pthread_join(p[i], NULL);
    pthread_join(c, NULL);
    assert_no_thread_errors();
}

/* ---- blocks outliving their thread ------------------------------------------------- */

Test(threads, free_after_owner_exit, .timeout = 180)
{
    enum { THREADS = 40, PER = 300 };
    static struct handoff h[THREADS];
    static unsigned char *blocks[THREADS][PER];
    static size_t sizes[THREADS][PER];
    tt_rng g;
    tt_rng_seed(&g, 3);
    for (int t = 0; t < THREADS; t++) {
        h[t] = (struct handoff){blocks[t], sizes[t], PER, (uint64_t)t};
        for (int i = 0; i < PER; i++) {
            enum tt_range r = i % 100 == 0 ? TT_RANGE_HUGE : i % 10 == 0 ? TT_RANGE_MEDIUM
                                                                         : TT_RANGE_SMALL;
            sizes[t][i] = tt_range_random(r, &g);
        }
    }
    /* Waves of 4 threads that allocate and exit. */
    for (int t = 0; t < THREADS; t += 4) {
        pthread_t ids[4];
        for (int k = 0; k < 4; k++)
            ids[k] = spawn(allocate_all, &h[t + k]);
        for (int k = 0; k < 4; k++)
            pthread_join(ids[k], NULL);
    }
    assert_no_thread_errors();
    /* Main checks and frees (some reallocated first, some freed by a new thread). */
    for (int t = 0; t < THREADS; t++) {
        if (t % 5 == 4) {
            pthread_t x = spawn(check_and_free_all, &h[t]);
            pthread_join(x, NULL);
            continue;
        }
        for (int i = 0; i < PER; i++) {
            uint64_t seed = tt_mix((uint64_t)t, (uint64_t)i);
            size_t bad = tt_check(blocks[t][i], sizes[t][i], seed);
            cr_assert_eq(bad, SIZE_MAX, "block %d of exited thread %d corrupted at %zu", i, t,
                         bad);
            if (i % 3 == 0) {
                unsigned char *q = ta_realloc(blocks[t][i], sizes[t][i] * 2 + 1);
                cr_assert_not_null(q);
                cr_assert_eq(tt_check(q, sizes[t][i], seed), SIZE_MAX);
                blocks[t][i] = q;
            }
            ta_free(blocks[t][i]);
        }
    }
    assert_no_thread_errors();
    /* And the memory is usable again. */
    for (int i = 0; i < 1000; i++) {
        void *p = ta_malloc((size_t)i * 37 + 1);
        cr_assert_not_null(p);
        ta_free(p);
    }
}

/* ---- a thread whose first call is a free ------------------------------------------- */

static void *first_call_free(void *arg)
{
    struct handoff *h = arg;
    /* No allocation before this point in this thread. */
    for (int i = 0; i < h->count; i++)
        ta_free(h->blocks[i]);
    if (h->seed % 2 == 0) {
        /* Then use the allocator normally. */
        for (int i = 0; i < 50; i++) {
            void *p = ta_malloc((size_t)i * 100 + 1);
            if (!p)
                thread_fail("malloc after a first free failed (%zu, %zu)", (size_t)i, 0);
            ta_free(p);
        }
    }
    return NULL;
}

Test(threads, first_call_is_free, .timeout = 60)
{
    enum { THREADS = 600 };
    unsigned char *blocks[4];
    size_t sizes[4];
    for (int t = 0; t < THREADS; t++) {
        static const size_t kinds[] = {24, 3000, 70000, 2 * TT_MIB + 5};
        int n = 1 + t % 4;
        for (int i = 0; i < n; i++) {
            sizes[i] = kinds[(t + i) % 4];
            blocks[i] = ta_malloc(sizes[i]);
            cr_assert_not_null(blocks[i]);
            memset(blocks[i], 0x11, sizes[i]);
        }
        struct handoff h = {blocks, sizes, n, (uint64_t)t};
        pthread_t x = spawn(first_call_free, &h);
        pthread_join(x, NULL);
    }
    assert_no_thread_errors();
    void *p = ta_malloc(100);
    cr_assert_not_null(p);
    ta_free(p);
}

/* A first-call free racing with the owner's own frees and allocations. */
static void *first_call_free_racing(void *arg)
{
    struct handoff *h = arg;
    for (int i = 0; i < h->count; i += 2)
        ta_free(h->blocks[i]);
    return NULL;
}

Test(threads, first_call_free_while_owner_works, .timeout = 60)
{
    enum { N = 4000 };
    static unsigned char *blocks[N];
    static size_t sizes[N];
    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < N; i++) {
            sizes[i] = (size_t)(i % 50) * 16 + 8;
            blocks[i] = ta_malloc(sizes[i]);
            cr_assert_not_null(blocks[i]);
        }
        struct handoff h = {blocks, sizes, N, 0};
        pthread_t x = spawn(first_call_free_racing, &h);
        for (int i = 1; i < N; i += 2)
            ta_free(blocks[i]);
        for (int i = 0; i < 1000; i++) {
            void *p = ta_malloc((size_t)(i % 50) * 16 + 8);
            cr_assert_not_null(p);
            ta_free(p);
        }
        pthread_join(x, NULL);
    }
}

/* ---- many short-lived threads: the resident set does not grow ---------------------- */

static unsigned char *volatile leftover_slot;

static void *short_lived(void *arg)
{
    uintptr_t n = (uintptr_t)arg;
    void *small[8];
    for (int i = 0; i < 8; i++) {
        small[i] = ta_malloc(16 + (size_t)(n + (uintptr_t)i) % 500);
        if (!small[i]) {
            thread_fail("malloc failed in thread %zu (%zu)", (size_t)n, 0);
            return NULL;
        }
        memset(small[i], 1, 16);
    }
    void *medium = ta_malloc(9000 + n % 30000);
    void *aligned = ta_aligned_alloc(256, 1000);
    if (!medium || !aligned)
        thread_fail("allocation failed in thread %zu (%zu)", (size_t)n, 0);
    if (n % 50 == 0) {
        void *huge = ta_malloc(2 * TT_MIB);
        if (!huge)
            thread_fail("huge allocation failed in thread %zu (%zu)", (size_t)n, 0);
        else
            memset(huge, 2, 4096);
        ta_free(huge);
    }
    for (int i = 0; i < 8; i += 2)
        ta_free(small[i]);
    ta_free(medium);
    ta_free(aligned);
    /* Some threads leave a block for main to free after the join. */
    if (n % 7 == 0) {
        unsigned char *keep = ta_malloc(64 + n % 5000);
        if (keep)
            tt_fill(keep, 64, n);
        leftover_slot = keep;
    }
    for (int i = 1; i < 8; i += 2)
        ta_free(small[i]);
    return NULL;
}

static void run_short_lived(uintptr_t from, uintptr_t to)
{
    for (uintptr_t n = from; n < to; n++) {
        pthread_t t;
        int rc = pthread_create(&t, NULL, short_lived, (void *)n);
        cr_assert_eq(rc, 0, "pthread_create #%zu: %s", (size_t)n, strerror(rc));
        pthread_join(t, NULL);
        unsigned char *keep = leftover_slot;
        if (keep) {
            leftover_slot = NULL;
            if (tt_check(keep, 64, n) != SIZE_MAX)
                thread_fail("block left by thread %zu corrupted (%zu)", (size_t)n, 0);
            ta_free(keep);
        }
    }
}

Test(threads, forty_thousand_threads_rss_stable, .timeout = 300)
{
    uintptr_t total = TT_SANITIZER ? 3000 : 40000, warm = 1000;
    run_short_lived(0, warm);
    long before = tt_rss_kib();
    double t0 = tt_now();
    run_short_lived(warm, total);
    long after = tt_rss_kib();
    assert_no_thread_errors();
    cr_log_info("%zu threads in %.1f s; VmRSS %ld -> %ld KiB", (size_t)(total - warm),
                tt_now() - t0, before, after);
    if (!TT_SANITIZER)
        cr_assert(after - before <= 4 * 1024,
                  "VmRSS grew from %ld KiB to %ld KiB (+%ld KiB) over %zu threads", before,
                  after, after - before, (size_t)(total - warm));
}

/* Threads running concurrently, a few at a time, also leave nothing behind. */
Test(threads, concurrent_short_lived_rss_stable, .timeout = 300)
{
    int waves = TT_SANITIZER ? 300 : 4000;
    for (int phase = 0; phase < 2; phase++) {
        long before = tt_rss_kib();
        for (int w = 0; w < (phase == 0 ? 300 : waves); w++) {
            pthread_t ids[4];
            for (int k = 0; k < 4; k++) {
                int rc = pthread_create(&ids[k], NULL, short_lived,
                                        (void *)(uintptr_t)(w * 4 + k + 1));
                cr_assert_eq(rc, 0);
            }
            for (int k = 0; k < 4; k++)
                pthread_join(ids[k], NULL);
            if (leftover_slot) {
                ta_free(leftover_slot);
                leftover_slot = NULL;
            }
        }
        long after = tt_rss_kib();
        if (phase == 1 && !TT_SANITIZER)
            cr_assert(after - before <= 4 * 1024,
                      "VmRSS grew from %ld KiB to %ld KiB over %d waves of 4 threads", before,
                      after, waves);
    }
    assert_no_thread_errors();
}

/* ---- destructors of other code running after the allocator's clean-up -------------- */

static pthread_key_t late_key;
static _Atomic int destructor_runs;
static unsigned char *volatile from_destructor;

struct late_state {
    unsigned char *block;
    size_t size;
    int rounds_left;
};

/* Runs after the allocator's own thread clean-up when the key was created later. */
static void late_destructor(void *value)
{
    struct late_state *s = value;
    atomic_fetch_add(&destructor_runs, 1);
    if (tt_check(s->block, s->size, s->size) != SIZE_MAX)
        thread_fail("block of %zu bytes corrupted before the destructor (%zu)", s->size, 0);
    ta_free(s->block);
    /* Allocate and free all ranges, and leave one block behind. */
    static const size_t sizes[] = {1, 100, 5000, 60000, 3 * TT_MIB};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        void *p = ta_malloc(sizes[i]);
        if (!p) {
            thread_fail("malloc(%zu) in a destructor failed (%zu)", sizes[i], 0);
            continue;
        }
        memset(p, 0x3c, sizes[i] < 8192 ? sizes[i] : 8192);
        ((unsigned char *)p)[sizes[i] - 1] = 0x3c;
        ta_free(p);
    }
    if (s->rounds_left-- > 0) {
        /* Ask to run again: another malloc in the next destructor round. */
        s->size = 333;
        s->block = ta_malloc(s->size);
        if (s->block)
            tt_fill(s->block, s->size, s->size);
        pthread_setspecific(late_key, s);
        return;
    }
    unsigned char *keep = ta_calloc(1, 4000);
    if (keep)
        tt_fill(keep, 4000, 99);
    from_destructor = keep;
    ta_free(s);
}

static void *thread_with_late_key(void *arg)
{
    (void)arg;
    struct late_state *s = ta_malloc(sizeof *s);
    if (!s) {
        thread_fail("malloc failed (%zu, %zu)", 0, 0);
        return NULL;
    }
    s->size = 1000;
    s->block = ta_malloc(s->size);
    tt_fill(s->block, s->size, s->size);
    s->rounds_left = 1;
    pthread_setspecific(late_key, s);
    return NULL;
}

static void run_late_key_threads(int n)
{
    for (int i = 0; i < n; i++) {
        pthread_t t = spawn(thread_with_late_key, NULL);
        pthread_join(t, NULL);
        unsigned char *keep = from_destructor;
        cr_assert_not_null(keep, "thread %d: the destructor left no block", i);
        cr_assert_eq(tt_check(keep, 4000, 99), SIZE_MAX);
        from_destructor = NULL;
        ta_free(keep);
    }
}

Test(threads, key_destructor_after_allocator_cleanup, .timeout = 300)
{
    /* The allocator sets up its own per-thread clean-up on first use: create our key
     * after that, so our destructor runs after the allocator's. */
    void *first = ta_malloc(10);
    ta_free(first);
    cr_assert_eq(pthread_key_create(&late_key, late_destructor), 0);
    int warm = 300, n = TT_SANITIZER ? 1000 : 8000;
    run_late_key_threads(warm);
    long before = tt_rss_kib();
    run_late_key_threads(n);
    long after = tt_rss_kib();
    assert_no_thread_errors();
    cr_assert_eq(atomic_load(&destructor_runs), 2 * (warm + n));
    if (!TT_SANITIZER)
        cr_assert(after - before <= 6 * 1024,
                  "VmRSS grew from %ld KiB to %ld KiB over %d threads whose destructors "
                  "allocate after the allocator's clean-up",
                  before, after, n);
}

/* A __thread object whose destructor (via a pthread key) frees what it points to. */
struct tls_object {
    unsigned char *a, *b;
    size_t na, nb;
};
static __thread struct tls_object tls_obj;
static pthread_key_t tls_key;
static _Atomic int tls_destroyed;

static void tls_object_destructor(void *value)
{
    struct tls_object *o = value;
    if (o != &tls_obj)
        thread_fail("destructor got the wrong object (%zu, %zu)", 0, 0);
    if (tt_check(o->a, o->na, 1) != SIZE_MAX || tt_check(o->b, o->nb, 2) != SIZE_MAX)
        thread_fail("thread-local blocks corrupted (%zu, %zu)", o->na, o->nb);
    ta_free(o->a);
    void *tmp = ta_realloc(o->b, o->nb * 3);
    if (!tmp)
        thread_fail("realloc in a destructor failed (%zu, %zu)", o->nb, 0);
    ta_free(tmp);
    o->a = o->b = NULL;
    atomic_fetch_add(&tls_destroyed, 1);
}

static void *thread_with_tls_object(void *arg)
{
    uintptr_t i = (uintptr_t)arg;
    tls_obj.na = 10 + i % 3000;
    tls_obj.nb = i % 10 == 0 ? 200000 : 48;
    tls_obj.a = ta_malloc(tls_obj.na);
    tls_obj.b = ta_malloc(tls_obj.nb);
    if (!tls_obj.a || !tls_obj.b) {
        thread_fail("malloc failed (%zu, %zu)", tls_obj.na, tls_obj.nb);
        return NULL;
    }
    tt_fill(tls_obj.a, tls_obj.na, 1);
    tt_fill(tls_obj.b, tls_obj.nb, 2);
    pthread_setspecific(tls_key, &tls_obj);
    return NULL;
}

Test(threads, thread_local_object_destructor, .timeout = 120)
{
    void *first = ta_malloc(10);
    ta_free(first);
    cr_assert_eq(pthread_key_create(&tls_key, tls_object_destructor), 0);
    int n = TT_SANITIZER ? 500 : 3000;
    for (int i = 0; i < n; i += 2) {
        pthread_t a = spawn(thread_with_tls_object, (void *)(uintptr_t)i);
        pthread_t b = spawn(thread_with_tls_object, (void *)(uintptr_t)(i + 1));
        pthread_join(a, NULL);
        pthread_join(b, NULL);
    }
    assert_no_thread_errors();
    cr_assert_eq(atomic_load(&tls_destroyed), n);
}

/* C++-style thread_local destructors (registered through glibc's
 * __cxa_thread_atexit_impl) registered before the thread's first allocation run after
 * everything registered later, and may still allocate. */
extern int __cxa_thread_atexit_impl(void (*fn)(void *), void *obj, void *dso);
extern void *__dso_handle;
static _Atomic int cxa_runs;
static unsigned char *volatile cxa_leftover;

static void cxa_destructor(void *obj)
{
    (void)obj;
    void *p = ta_malloc(700);
    void *q = ta_malloc(90000);
    if (!p || !q)
        thread_fail("malloc in a thread_local destructor failed (%zu, %zu)", 0, 0);
    ta_free(p);
    ta_free(q);
    unsigned char *keep = ta_malloc(128);
    if (keep)
        tt_fill(keep, 128, 5);
    cxa_leftover = keep;
    atomic_fetch_add(&cxa_runs, 1);
}

static void *thread_with_cxa_destructor(void *arg)
{
    (void)arg;
    static int token;
    __cxa_thread_atexit_impl(cxa_destructor, &token, &__dso_handle);
    for (int i = 0; i < 20; i++) {
        void *p = ta_malloc((size_t)i * 50 + 1);
        ta_free(p);
    }
    return NULL;
}

Test(threads, thread_local_destructor_registered_first, .timeout = 120)
{
    int n = TT_SANITIZER ? 300 : 2000;
    for (int i = 0; i < n; i++) {
        pthread_t t = spawn(thread_with_cxa_destructor, NULL);
        pthread_join(t, NULL);
        unsigned char *keep = cxa_leftover;
        cr_assert_not_null(keep);
        cr_assert_eq(tt_check(keep, 128, 5), SIZE_MAX);
        cxa_leftover = NULL;
        ta_free(keep);
    }
    assert_no_thread_errors();
    cr_assert_eq(atomic_load(&cxa_runs), n);
}

/* A thread whose only allocator calls happen in a destructor. */
static pthread_key_t only_key;
static unsigned char *volatile only_leftover;

static void only_destructor(void *value)
{
    (void)value;
    unsigned char *p = ta_malloc(5000);
    if (p)
        tt_fill(p, 5000, 8);
    only_leftover = p;
    void *q = ta_malloc(100);
    ta_free(q);
}

static void *thread_allocating_only_at_exit(void *arg)
{
    pthread_setspecific(only_key, arg);
    return NULL;
}

Test(threads, first_allocation_in_destructor, .timeout = 120)
{
    void *first = ta_malloc(10);
    ta_free(first);
    cr_assert_eq(pthread_key_create(&only_key, only_destructor), 0);
    int warm = 200, n = TT_SANITIZER ? 500 : 5000;
    long before = 0;
    for (int i = 0; i < warm + n; i++) {
        if (i == warm)
            before = tt_rss_kib();
        pthread_t t = spawn(thread_allocating_only_at_exit, (void *)1);
        pthread_join(t, NULL);
        unsigned char *keep = only_leftover;
        cr_assert_not_null(keep, "thread %d: no block from its destructor", i);
        cr_assert_eq(tt_check(keep, 5000, 8), SIZE_MAX);
        only_leftover = NULL;
        ta_free(keep);
    }
    long after = tt_rss_kib();
    if (!TT_SANITIZER)
        cr_assert(after - before <= 6 * 1024,
                  "VmRSS grew from %ld KiB to %ld KiB over %d threads allocating only in a "
                  "destructor",
                  before, after, n);
}
