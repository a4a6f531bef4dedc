/*
 * sparse - big buffers used sparsely: threads replace random blocks of 1 to 12 MiB and
 * touch each new block only in its first 8 KiB and one byte every 256 KiB, as programs do
 * that reserve a large buffer and fill a little of it. 128 blocks are live at once, shared
 * out among the threads. Measures whether the allocator commits memory the program never
 * touched (huge pages on sparse blocks, caches of freed mappings): compare the peak RSS
 * with the touched_peak_kib figure, the most bytes of pages touched in live blocks.
 */
#include "wl.h"

#include <stdatomic.h>

enum { LIVE = 128, PAGE = 4096, HEAD = 8192, STRIDE = 256 * 1024 };
#define MIB ((size_t)1 << 20)

typedef struct {
    wl_result res;
    uint64_t ops;
    uint64_t seed;
    int slots;
} job;

static _Atomic uint64_t touched_now, touched_peak;

/* Bytes of the pages a block of `size` touches: its head, one page per stride, and the one
 * or two pages of the end stamp. */
static uint64_t touched_bytes(size_t size)
{
    size_t pages = HEAD / PAGE, last = 0;
    for (size_t off = STRIDE; off + 8 < size; off += STRIDE) {
        pages++;
        last = off / PAGE;
    }
    for (size_t pg = (size - 8) / PAGE; pg <= (size - 1) / PAGE; pg++)
        if (pg >= HEAD / PAGE && pg != last)
            pages++;
    return (uint64_t)pages * PAGE;
}

static void note_touched(int64_t delta)
{
    uint64_t now = atomic_fetch_add_explicit(&touched_now, (uint64_t)delta,
                                             memory_order_relaxed) + (uint64_t)delta;
    uint64_t peak = atomic_load_explicit(&touched_peak, memory_order_relaxed);
    while (now > peak &&
           !atomic_compare_exchange_weak_explicit(&touched_peak, &peak, now,
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

static void *worker(void *v)
{
    job *j = v;
    wl_result res = {0, 0}; /* into the job at the end (wl.h, wl_result) */
    wl_rng r = wl_rng_make(j->seed, 13);
    unsigned char **p = calloc((size_t)j->slots, sizeof *p);
    size_t *size = calloc((size_t)j->slots, sizeof *size);
    uint64_t *tag = calloc((size_t)j->slots, sizeof *tag);
    if (!p || !size || !tag) {
        fprintf(stderr, "sparse: out of memory\n");
        exit(4);
    }
    for (uint64_t i = 0; i < j->ops; i++) {
        uint32_t k = wl_below(&r, (uint32_t)j->slots);
        if (p[k]) {
            for (size_t off = STRIDE; off + 8 < size[k]; off += STRIDE)
                if (p[k][off] != (unsigned char)(tag[k] + off / STRIDE))
                    res.bad = 1;
            if (p[k][HEAD - 1] != (unsigned char)tag[k])
                res.bad = 1;
            res.sum += wl_check(p[k], size[k], tag[k], &res.bad);
            free(p[k]);
            note_touched(-(int64_t)touched_bytes(size[k]));
        }
        size[k] = wl_range(&r, 1 * MIB, 12 * MIB);
        p[k] = malloc(size[k]);
        if (!p[k]) {
            fprintf(stderr, "sparse: out of memory\n");
            exit(4);
        }
        tag[k] = wl_next(&r);
        memset(p[k], (int)(tag[k] & 0xff), HEAD);
        for (size_t off = STRIDE; off + 8 < size[k]; off += STRIDE)
            p[k][off] = (unsigned char)(tag[k] + off / STRIDE);
        wl_stamp(p[k], size[k], tag[k]);
        note_touched((int64_t)touched_bytes(size[k]));
    }
    for (int k = 0; k < j->slots; k++)
        if (p[k]) {
            res.sum += wl_check(p[k], size[k], tag[k], &res.bad);
            free(p[k]);
        }
    free(p);
    free(size);
    free(tag);
    j->res = res;
    return NULL;
}

int main(int argc, char **argv)
{
    wl_args a = wl_parse(argc, argv, "big blocks of 1-12 MiB touched sparsely, 128 live");
    int T = a.threads;
    uint64_t total = wl_count(a.scale, 40000, 400);
    job *jobs = calloc((size_t)T, sizeof *jobs);
    if (!jobs)
        return 4;
    for (int i = 0; i < T; i++) {
        jobs[i].ops = total / (uint64_t)T;
        jobs[i].seed = a.seed * 11 + (uint64_t)i;
        jobs[i].slots = LIVE / T > 0 ? LIVE / T : 1;
    }
    wl_result all = wl_run(jobs, sizeof *jobs, T, worker);
    free(jobs);
    wl_figure("touched_peak_kib", atomic_load(&touched_peak) / 1024);
    return wl_report(all.sum, all.bad);
}
