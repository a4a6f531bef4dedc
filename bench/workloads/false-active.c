/*
 * false-active - active false sharing: every thread repeatedly allocates a small
 * object, writes it many times and frees it. An allocator that hands neighbouring
 * bytes of one cache line to different threads makes the cores fight over the line
 * (the cache-thrash pattern).
 */
#include "wl.h"

enum { OBJ = 8, WRITES = 64 };

typedef struct {
    uint64_t pairs;
    uint64_t id;
    uint64_t sum;
    int bad;
} job;

static void *worker(void *v)
{
    job *j = v;
    for (uint64_t i = 0; i < j->pairs; i++) {
        volatile unsigned char *p = malloc(OBJ);
        if (!p) {
            fprintf(stderr, "false-active: out of memory\n");
            exit(4);
        }
        unsigned char shadow[OBJ];
        for (int b = 0; b < OBJ; b++)
            p[b] = shadow[b] = (unsigned char)(i + (uint64_t)b);
        /* Repeated writes to the object: the cache line must stay with this core. */
        for (int w = 0; w < WRITES; w++) {
            int b = w % OBJ;
            p[b] = (unsigned char)(p[b] * 3u + (unsigned)w + (unsigned)j->id);
            shadow[b] = (unsigned char)(shadow[b] * 3u + (unsigned)w + (unsigned)j->id);
        }
        for (int b = 0; b < OBJ; b++) {
            if (p[b] != shadow[b])
                j->bad = 1;
            j->sum += shadow[b];
        }
        free((void *)p);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    wl_args a = wl_parse(argc, argv, "active false sharing: threads allocate, write and free small objects");
    int T = a.threads;
    uint64_t total = wl_count(a.scale, 20e6, 1000);
    job *jobs = calloc((size_t)T, sizeof *jobs);
    pthread_t *tids = calloc((size_t)T, sizeof *tids);
    if (!jobs || !tids)
        return 4;
    for (int i = 0; i < T; i++) {
        jobs[i].pairs = total / (uint64_t)T;
        jobs[i].id = (uint64_t)i;
        wl_spawn(&tids[i], worker, &jobs[i]);
    }
    uint64_t sum = 0;
    int bad = 0;
    for (int i = 0; i < T; i++) {
        wl_join(tids[i]);
        sum += jobs[i].sum;
        bad |= jobs[i].bad;
    }
    free(jobs);
    free(tids);
    return wl_report(sum, bad);
}
