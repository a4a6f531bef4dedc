/*
 * server - a server simulation: each thread replaces random blocks in its own slot
 * array; after every round the threads exit and the arrays pass to newly created
 * threads, rotated by one, so most frees are of blocks another (now gone) thread
 * allocated. Stresses remote frees and thread creation and exit (the Larson and
 * Krishnan pattern).
 */
#include "wl.h"

enum { SLOTS = 1024, ROUNDS = 24 };

typedef struct {
    void *p[SLOTS];
    uint32_t size[SLOTS];
    uint64_t tag[SLOTS];
} slots;

typedef struct {
    wl_result res;
    slots *arr;
    uint64_t seed;
    uint64_t ops;
} job;

/* Sizes 16..1024 bytes, three quarters of them at most 128. */
static size_t pick_size(wl_rng *r)
{
    return wl_below(r, 4) ? wl_range(r, 16, 128) : wl_range(r, 129, 1024);
}

static void *worker(void *v)
{
    job *j = v;
    wl_result res = {0, 0}; /* into the job at the end (wl.h, wl_result) */
    wl_rng r = wl_rng_make(j->seed, 3);
    slots *s = j->arr;
    for (uint64_t i = 0; i < j->ops; i++) {
        uint32_t k = wl_below(&r, SLOTS);
        if (s->p[k]) {
            res.sum += wl_check(s->p[k], s->size[k], s->tag[k], &res.bad);
            free(s->p[k]);
        }
        size_t n = pick_size(&r);
        void *p = malloc(n);
        if (!p) {
            fprintf(stderr, "server: out of memory\n");
            exit(4);
        }
        uint64_t tag = wl_next(&r);
        wl_stamp(p, n, tag);
        s->p[k] = p;
        s->size[k] = (uint32_t)n;
        s->tag[k] = tag;
    }
    j->res = res;
    return NULL;
}

int main(int argc, char **argv)
{
    wl_args a = wl_parse(argc, argv, "slot replacement with remote frees and thread churn");
    int T = a.threads;
    uint64_t total = wl_count(a.scale, 64e6, 1000);
    uint64_t per = total / ((uint64_t)T * ROUNDS);
    if (per < 1)
        per = 1;

    slots **arrs = calloc((size_t)T, sizeof *arrs);
    job *jobs = calloc((size_t)T, sizeof *jobs);
    if (!arrs || !jobs)
        return 4;
    for (int i = 0; i < T; i++) {
        arrs[i] = calloc(1, sizeof(slots));
        if (!arrs[i])
            return 4;
    }

    uint64_t sum = 0;
    int bad = 0;
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < T; i++)
            jobs[i] = (job){ {0, 0}, arrs[(i + round) % T],
                             a.seed * 1000003 + (uint64_t)round * 4099 + (uint64_t)i, per };
        wl_result r = wl_run(jobs, sizeof *jobs, T, worker);
        sum += r.sum;
        bad |= r.bad;
    }

    /* The main thread frees what the last round left: remote frees once more. */
    for (int i = 0; i < T; i++) {
        slots *s = arrs[i];
        for (int k = 0; k < SLOTS; k++)
            if (s->p[k]) {
                sum += wl_check(s->p[k], s->size[k], s->tag[k], &bad);
                free(s->p[k]);
            }
        free(s);
    }
    free(arrs);
    free(jobs);
    return wl_report(sum, bad);
}
