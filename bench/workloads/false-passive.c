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
    void *start;         /* the object from the main thread, freed first */
    uint64_t pairs;
    uint64_t id;
    uint64_t sum;
    int bad;
} job;

static void *worker(void *v)
{
    job *j = v;
    free(j->start);
    for (uint64_t i = 0; i < j->pairs; i++) {
        volatile unsigned char *p = malloc(OBJ);
        if (!p) {
            fprintf(stderr, "false-passive: out of memory\n");
            exit(4);
        }
        unsigned char shadow[OBJ];
        for (int b = 0; b < OBJ; b++)
            p[b] = shadow[b] = (unsigned char)(i + (uint64_t)b);
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
    wl_args a = wl_parse(argc, argv, "passive false sharing: objects handed from one thread to others");
    int T = a.threads;
    uint64_t total = wl_count(a.scale, 20e6, 1000);
    job *jobs = calloc((size_t)T, sizeof *jobs);
    pthread_t *tids = calloc((size_t)T, sizeof *tids);
    if (!jobs || !tids)
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
