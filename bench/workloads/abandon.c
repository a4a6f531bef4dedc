/*
 * abandon - threads that exit while still owning live blocks: each generation of
 * threads allocates, frees half of its blocks itself and exits with the rest still
 * live; the next generation frees those leftovers. Measures how the allocator adopts
 * or returns the heaps of dead threads, in time and in peak memory.
 */
#include "wl.h"

enum { GENERATIONS = 40 };

typedef struct {
    void **p;
    uint32_t *size;
    uint64_t *tag;
    uint64_t count;
} leftovers;

typedef struct {
    wl_result res;
    leftovers *inherit;  /* blocks a dead thread left behind, freed by this one */
    leftovers *leave;    /* blocks this thread leaves behind */
    uint64_t blocks;
    uint64_t seed;
} job;

static size_t pick_size(wl_rng *r)
{
    uint32_t u = wl_below(r, 16);
    if (u < 10) return wl_range(r, 8, 96);
    if (u < 15) return wl_range(r, 97, 1024);
    return wl_range(r, 1025, 8192);
}

static void *worker(void *v)
{
    job *j = v;
    wl_result res = {0, 0}; /* into the job at the end (wl.h, wl_result) */
    wl_rng r = wl_rng_make(j->seed, 8);
    leftovers *in = j->inherit, *out = j->leave;

    /* Free half of the inheritance first, then allocate, then the other half. */
    uint64_t half = in->count / 2;
    for (uint64_t i = 0; i < half; i++) {
        res.sum += wl_check(in->p[i], in->size[i], in->tag[i], &res.bad);
        free(in->p[i]);
    }
    void **mine = malloc(j->blocks * sizeof *mine);
    uint32_t *msize = malloc(j->blocks * sizeof *msize);
    uint64_t *mtag = malloc(j->blocks * sizeof *mtag);
    if (!mine || !msize || !mtag) {
        fprintf(stderr, "abandon: out of memory\n");
        exit(4);
    }
    for (uint64_t i = 0; i < j->blocks; i++) {
        msize[i] = (uint32_t)pick_size(&r);
        mine[i] = malloc(msize[i]);
        if (!mine[i]) {
            fprintf(stderr, "abandon: out of memory\n");
            exit(4);
        }
        mtag[i] = wl_next(&r);
        wl_stamp(mine[i], msize[i], mtag[i]);
    }
    for (uint64_t i = half; i < in->count; i++) {
        res.sum += wl_check(in->p[i], in->size[i], in->tag[i], &res.bad);
        free(in->p[i]);
    }
    in->count = 0;

    /* Keep every other block for the next generation, free the rest here. The count stays
     * in a local: the leftovers' headers lie side by side (wl.h, wl_result). */
    uint64_t kept = 0;
    for (uint64_t i = 0; i < j->blocks; i++) {
        if (i % 2 == 0) {
            out->p[kept] = mine[i];
            out->size[kept] = msize[i];
            out->tag[kept] = mtag[i];
            kept++;
        } else {
            res.sum += wl_check(mine[i], msize[i], mtag[i], &res.bad);
            free(mine[i]);
        }
    }
    out->count = kept;
    free(mine);
    free(msize);
    free(mtag);
    j->res = res;
    return NULL;
}

static leftovers *leftovers_new(uint64_t cap)
{
    leftovers *l = calloc(1, sizeof *l);
    if (!l)
        exit(4);
    l->p = malloc(cap * sizeof *l->p);
    l->size = malloc(cap * sizeof *l->size);
    l->tag = malloc(cap * sizeof *l->tag);
    if (!l->p || !l->size || !l->tag)
        exit(4);
    return l;
}

int main(int argc, char **argv)
{
    wl_args a = wl_parse(argc, argv, "threads exit leaving live blocks for others to free");
    int T = a.threads;
    uint64_t total = wl_count(a.scale, 6e6, 1000);
    uint64_t blocks = total / ((uint64_t)T * GENERATIONS);
    if (blocks < 2)
        blocks = 2;

    /* Two banks of leftovers, swapped each generation; thread i inherits from i+1. */
    leftovers **bank[2];
    for (int b = 0; b < 2; b++) {
        bank[b] = calloc((size_t)T, sizeof *bank[b]);
        if (!bank[b])
            return 4;
        for (int i = 0; i < T; i++)
            bank[b][i] = leftovers_new(blocks / 2 + 1);
    }
    job *jobs = calloc((size_t)T, sizeof *jobs);
    if (!jobs)
        return 4;

    uint64_t sum = 0;
    int bad = 0;
    for (int g = 0; g < GENERATIONS; g++) {
        leftovers **from = bank[g % 2], **to = bank[(g + 1) % 2];
        for (int i = 0; i < T; i++)
            jobs[i] = (job){ {0, 0}, from[(i + 1) % T], to[i], blocks,
                             a.seed * 1000003 + (uint64_t)g * 131 + (uint64_t)i };
        wl_result r = wl_run(jobs, sizeof *jobs, T, worker);
        sum += r.sum;
        bad |= r.bad;
    }
    /* The last generation's leftovers are freed by the main thread. */
    leftovers **last = bank[GENERATIONS % 2];
    for (int i = 0; i < T; i++) {
        leftovers *l = last[i];
        for (uint64_t k = 0; k < l->count; k++) {
            sum += wl_check(l->p[k], l->size[k], l->tag[k], &bad);
            free(l->p[k]);
        }
    }
    for (int b = 0; b < 2; b++) {
        for (int i = 0; i < T; i++) {
            free(bank[b][i]->p);
            free(bank[b][i]->size);
            free(bank[b][i]->tag);
            free(bank[b][i]);
        }
        free(bank[b]);
    }
    free(jobs);
    return wl_report(sum, bad);
}
