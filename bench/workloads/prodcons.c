/*
 * prodcons - producer/consumer: half of the threads allocate blocks and hand them over
 * in batches, the other half receive and free them. Every free is a remote free, and
 * memory flows one way between threads (the xmalloc pattern).
 *
 * -m 1: blocks of 12 to 20 KB instead of 8 B to 1 KiB (past most allocators' small
 * classes), a tenth as many. It also reports `helper_switches` and `helper_switches_per_s`:
 * the voluntary context switches of the threads the program did not start (an allocator's
 * own, such as a background purger, ended ones included), over the run and per second of it:
 * the process's, less its own threads' (each taken at its end). With
 * TAMALLOC_CONF=decay_ms:0, every free of such a block makes memory due at once: how often
 * that wakes the purger.
 */
#include "wl.h"
#include <sched.h>
#include <time.h>
#include <stdatomic.h>

enum { BATCH = 64, RING = 32 };

typedef struct {
    uint32_t count;
    uint32_t size[BATCH];
    uint64_t tag[BATCH];
    void *p[BATCH];
} batch;

/* One inbox per consumer: a small ring protected by a mutex, filled by any producer. */
typedef struct {
    pthread_mutex_t lock;
    batch *ring[RING];
    unsigned head, tail;
    char pad[64];
} inbox;

static inbox *boxes;
static int nprod, ncons;
static uint64_t per_producer;
static uint64_t seed;
static int mix;
static atomic_int producers_left;

static size_t pick_size(wl_rng *r)
{
    if (mix == 1)
        return wl_range(r, 12000, 20000);
    uint32_t u = wl_below(r, 10);
    if (u < 6) return wl_range(r, 8, 64);
    if (u < 9) return wl_range(r, 65, 256);
    return wl_range(r, 257, 1024);
}

static int box_put(inbox *b, batch *x)
{
    int ok = 0;
    pthread_mutex_lock(&b->lock);
    if (b->tail - b->head < RING) {
        b->ring[b->tail++ % RING] = x;
        ok = 1;
    }
    pthread_mutex_unlock(&b->lock);
    return ok;
}

static batch *box_get(inbox *b)
{
    batch *x = NULL;
    pthread_mutex_lock(&b->lock);
    if (b->head != b->tail)
        x = b->ring[b->head++ % RING];
    pthread_mutex_unlock(&b->lock);
    return x;
}

static batch *fill(wl_rng *r, uint64_t *left)
{
    batch *x = malloc(sizeof *x);
    if (!x) {
        fprintf(stderr, "prodcons: out of memory\n");
        exit(4);
    }
    x->count = *left < BATCH ? (uint32_t)*left : BATCH;
    *left -= x->count;
    for (uint32_t i = 0; i < x->count; i++) {
        size_t n = pick_size(r);
        x->p[i] = malloc(n);
        if (!x->p[i]) {
            fprintf(stderr, "prodcons: out of memory\n");
            exit(4);
        }
        x->size[i] = (uint32_t)n;
        x->tag[i] = wl_next(r);
        wl_stamp(x->p[i], n, x->tag[i]);
    }
    return x;
}

static uint64_t drain(batch *x, int *bad)
{
    uint64_t s = 0;
    for (uint32_t i = 0; i < x->count; i++) {
        s += wl_check(x->p[i], x->size[i], x->tag[i], bad);
        free(x->p[i]);
    }
    free(x);
    return s;
}

typedef struct {
    int id;
    uint64_t sum;
    int bad;
    unsigned long long switches; /* its own voluntary context switches, at its end */
} role;

static void *producer(void *v)
{
    role *me = v;
    wl_rng r = wl_rng_make(seed, 100 + (uint64_t)me->id);
    uint64_t left = per_producer;
    unsigned k = (unsigned)me->id;
    while (left > 0) {
        batch *x = fill(&r, &left);
        /* Spread batches over the consumers; wait (politely) while they are all full. */
        for (;;) {
            if (box_put(&boxes[k++ % (unsigned)ncons], x))
                break;
            if (k % (unsigned)ncons == 0)
                sched_yield();
        }
    }
    atomic_fetch_sub(&producers_left, 1);
    me->switches = wl_thread_switches();
    return NULL;
}

static void *consumer(void *v)
{
    role *me = v;
    inbox *mine = &boxes[me->id];
    uint64_t sum = 0; /* into the role at the end (wl.h, wl_result) */
    int bad = 0;
    for (;;) {
        batch *x = box_get(mine);
        if (x) {
            sum += drain(x, &bad);
            continue;
        }
        if (atomic_load(&producers_left) == 0) {
            /* Producers are done: take what is left, then stop. */
            while ((x = box_get(mine)) != NULL)
                sum += drain(x, &bad);
            me->sum = sum;
            me->bad = bad;
            me->switches = wl_thread_switches();
            return NULL;
        }
        sched_yield();
    }
}

int main(int argc, char **argv)
{
    wl_args a = wl_parse(argc, argv, "producer threads allocate, consumer threads free");
    mix = a.mix;
    uint64_t total = wl_count(a.scale, mix == 1 ? 3.6e6 : 36e6, 1000);
    seed = a.seed;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t sum = 0;
    int bad = 0;

    if (a.threads == 1) {
        /* One thread plays both parts: the same blocks, but every free is local. */
        nprod = 1;
        per_producer = total;
        wl_rng r = wl_rng_make(seed, 100);
        uint64_t left = total;
        batch *pending[RING];
        while (left > 0) {
            int n = 0;
            while (n < RING && left > 0)
                pending[n++] = fill(&r, &left);
            for (int i = 0; i < n; i++)
                sum += drain(pending[i], &bad);
        }
        return wl_report(sum, bad);
    }

    nprod = a.threads / 2;
    ncons = a.threads - nprod;
    per_producer = total / (uint64_t)nprod;
    atomic_store(&producers_left, nprod);
    boxes = calloc((size_t)ncons, sizeof *boxes);
    role *roles = calloc((size_t)a.threads, sizeof *roles);
    pthread_t *tids = calloc((size_t)a.threads, sizeof *tids);
    if (!boxes || !roles || !tids)
        return 4;
    for (int i = 0; i < ncons; i++)
        pthread_mutex_init(&boxes[i].lock, NULL);
    for (int i = 0; i < ncons; i++) {
        roles[i].id = i;
        wl_spawn(&tids[i], consumer, &roles[i]);
    }
    for (int i = 0; i < nprod; i++) {
        roles[ncons + i].id = i;
        wl_spawn(&tids[ncons + i], producer, &roles[ncons + i]);
    }
    unsigned long long own = 0; /* the program's threads' switches */
    for (int i = 0; i < a.threads; i++) {
        wl_join(tids[i]);
        sum += roles[i].sum;
        bad |= roles[i].bad;
        own += roles[i].switches;
    }
    free(boxes);
    free(roles);
    free(tids);
    if (mix == 1) {
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        own += wl_thread_switches();
        unsigned long long all = wl_process_switches(), n = all > own ? all - own : 0;
        wl_figure("helper_switches", n);
        wl_figure("helper_switches_per_s", s > 0 ? (unsigned long long)((double)n / s) : 0);
    }
    return wl_report(sum, bad);
}
