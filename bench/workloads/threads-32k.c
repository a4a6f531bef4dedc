/*
 * threads-32k - many threads at once, each replacing random blocks of 8 bytes to
 * 32 KiB (log-uniform sizes) in its own slot array: per-thread caches, arena choice
 * and the medium size classes under contention (the glibc thread test pattern).
 */
#include "wl.h"

enum { SLOTS = 256 };

typedef struct {
    wl_result res;
    uint64_t ops;
    uint64_t seed;
} job;

/* Log-uniform from 8 bytes to 32 KiB: as many 8-16 byte blocks as 16-32 KiB ones. */
static size_t pick_size(wl_rng *r)
{
    unsigned shift = 3 + wl_below(r, 12);            /* 8 .. 16384 */
    size_t lo = (size_t)1 << shift;
    return wl_range(r, lo, lo * 2);
}

static void *worker(void *v)
{
    job *j = v;
    wl_result res = {0, 0}; /* into the job at the end (wl.h, wl_result) */
    wl_rng r = wl_rng_make(j->seed, 5);
    void *p[SLOTS] = {0};
    size_t size[SLOTS] = {0};
    uint64_t tag[SLOTS] = {0};
    for (uint64_t i = 0; i < j->ops; i++) {
        uint32_t k = wl_below(&r, SLOTS);
        if (p[k]) {
            res.sum += wl_check(p[k], size[k], tag[k], &res.bad);
            free(p[k]);
        }
        size[k] = pick_size(&r);
        p[k] = malloc(size[k]);
        if (!p[k]) {
            fprintf(stderr, "threads-32k: out of memory\n");
            exit(4);
        }
        /* Use the first bytes like a real object header, and stamp both ends. */
        memset(p[k], (int)(i & 0xff), size[k] < 256 ? size[k] : 256);
        tag[k] = wl_next(&r);
        wl_stamp(p[k], size[k], tag[k]);
    }
    for (int k = 0; k < SLOTS; k++)
        if (p[k]) {
            res.sum += wl_check(p[k], size[k], tag[k], &res.bad);
            free(p[k]);
        }
    j->res = res;
    return NULL;
}

int main(int argc, char **argv)
{
    wl_args a = wl_parse(argc, argv, "many threads, sizes up to 32 KiB");
    int T = a.threads;
    uint64_t total = wl_count(a.scale, 24e6, 1000);
    job *jobs = calloc((size_t)T, sizeof *jobs);
    if (!jobs)
        return 4;
    for (int i = 0; i < T; i++) {
        jobs[i].ops = total / (uint64_t)T;
        jobs[i].seed = a.seed * 7 + (uint64_t)i;
    }
    wl_result all = wl_run(jobs, sizeof *jobs, T, worker);
    free(jobs);
    return wl_report(all.sum, all.bad);
}
