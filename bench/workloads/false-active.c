/*
 * false-active - active false sharing: every thread repeatedly allocates a small
 * object, writes it many times and frees it. An allocator that hands neighbouring
 * bytes of one cache line to different threads makes the cores fight over the line
 * (the cache-thrash pattern).
 */
#include "wl.h"

enum { OBJ = 8, WRITES = 64 };

typedef struct {
    wl_result res;
    uint64_t pairs;
    uint64_t id;
} job;

static void *worker(void *v)
{
    job *j = v;
    wl_result res = {0, 0}; /* into the job at the end (wl.h, wl_result) */
    for (uint64_t i = 0; i < j->pairs; i++) {
        volatile unsigned char *p = malloc(OBJ);
        if (!p) {
            fprintf(stderr, "false-active: out of memory\n");
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
    wl_args a = wl_parse(argc, argv, "active false sharing: threads allocate, write and free small objects");
    int T = a.threads;
    uint64_t total = wl_count(a.scale, 20e6, 1000);
    job *jobs = calloc((size_t)T, sizeof *jobs);
    if (!jobs)
        return 4;
    for (int i = 0; i < T; i++) {
        jobs[i].pairs = total / (uint64_t)T;
        jobs[i].id = (uint64_t)i;
    }
    wl_result all = wl_run(jobs, sizeof *jobs, T, worker);
    free(jobs);
    return wl_report(all.sum, all.bad);
}
