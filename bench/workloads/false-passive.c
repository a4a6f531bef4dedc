/*
 * false-passive - passive false sharing: the main thread allocates one small object per
 * thread, all likely within one cache line, and hands them out. Each thread frees its
 * object and then repeatedly allocates, writes and frees small objects. An allocator
 * that gives a freed block back to the thread that freed it, instead of its owner,
 * spreads one cache line over several cores (the cache-scratch pattern).
 */
#include "wl.h"

enum { OBJ = 8, WRITES = 64 };

typedef struct {
    wl_result res;
    void *start;         /* the object from the main thread, freed first */
    uint64_t pairs;
    uint64_t id;
} job;

static void *worker(void *v)
{
    job *j = v;
    wl_result res = {0, 0}; /* into the job at the end (wl.h, wl_result) */
    free(j->start);
    for (uint64_t i = 0; i < j->pairs; i++) {
        volatile unsigned char *p = malloc(OBJ);
        if (!p) {
            fprintf(stderr, "false-passive: out of memory\n");
            exit(4);
        }
        wl_hammer(p, OBJ, WRITES, i, j->id, &res);
        free((void *)p);
    }
    j->res = res;
    return NULL;
}

int main(int argc, char **argv)
{
    wl_args a = wl_parse(argc, argv, "passive false sharing: objects handed from one thread to others");
    int T = a.threads;
    uint64_t total = wl_count(a.scale, 20e6, 1000);
    job *jobs = calloc((size_t)T, sizeof *jobs);
    if (!jobs)
        return 4;
    /* Allocate the hand-outs back to back so they share cache lines. */
    for (int i = 0; i < T; i++) {
        jobs[i].start = malloc(OBJ);
        if (!jobs[i].start)
            return 4;
        memset(jobs[i].start, i, OBJ);
    }
    for (int i = 0; i < T; i++) {
        jobs[i].pairs = total / (uint64_t)T;
        jobs[i].id = (uint64_t)i;
    }
    wl_result all = wl_run(jobs, sizeof *jobs, T, worker);
    free(jobs);
    return wl_report(all.sum, all.bad);
}
