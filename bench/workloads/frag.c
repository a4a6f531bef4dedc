/*
 * frag - fragmentation: fill memory to a fixed live volume, free a random half,
 * refill with blocks of a different size mix, and repeat across size mixes. Reports
 * peak live bytes next to the peak resident set; their quotient is the fragmentation
 * measure used by Johnstone and Wilson (memory used at the peak over memory requested).
 */
#include "wl.h"
#include <sys/mman.h>

#define MIB ((size_t)1 << 20)
static const size_t LIVE = 128 * MIB;

/* Each block carries its own header: size and a check word derived from it. */
typedef struct {
    uint32_t size;
    uint32_t check;
} head;

static size_t pick_size(wl_rng *r, int phase)
{
    switch (phase % 8) {
    case 0: return wl_range(r, 16, 64);
    case 1: return wl_range(r, 64, 256);
    case 2: return wl_range(r, 1024, 4096);
    case 3: return wl_below(r, 10) ? wl_range(r, 16, 32) : wl_range(r, 4096, 16384);
    case 4: return wl_range(r, 32 * 1024, 48 * 1024);
    case 5: return wl_range(r, 256, 1024);
    case 6: return wl_range(r, 100 * 1024, 1024 * 1024);
    default: return wl_range(r, 24, 40);
    }
}

static inline uint32_t check_of(uint32_t size, uint64_t seed)
{
    return (uint32_t)wl_mix(size ^ (seed << 32));
}

int main(int argc, char **argv)
{
    wl_args a = wl_parse(argc, argv, "fill, free a random half, refill with other sizes");
    wl_rng r = wl_rng_make(a.seed, 9);
    int phases = (int)wl_count(a.scale, 16, 4);
    long base_kib = wl_vmhwm_kib();

    /* Bookkeeping outside the allocator so that it does not mix with the heap. */
    size_t cap = LIVE / 16 + 16;
    void **blk = mmap(NULL, cap * sizeof *blk, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (blk == MAP_FAILED)
        return 4;
    size_t n = 0, most = 0, live = 0, peak = 0;
    uint64_t sum = 0;
    int bad = 0;

    for (int phase = 0; phase < phases; phase++) {
        /* Free a random half (all but the first phase). */
        size_t kept = 0;
        for (size_t i = 0; i < n; i++) {
            head h;
            memcpy(&h, blk[i], sizeof h);
            if (wl_below(&r, 2)) {
                blk[kept++] = blk[i];
                continue;
            }
            if (h.check != check_of(h.size, a.seed) ||
                ((unsigned char *)blk[i])[h.size - 1] != (unsigned char)h.size)
                bad = 1;
            sum += wl_mix(h.size);
            live -= h.size;
            free(blk[i]);
        }
        n = kept;
        /* Refill to the live volume with this phase's sizes. */
        while (live < LIVE && n < cap) {
            size_t s = pick_size(&r, phase);
            unsigned char *p = malloc(s);
            if (!p) {
                fprintf(stderr, "frag: out of memory\n");
                return 4;
            }
            memset(p, (int)(phase + 1), s);
            head h = { (uint32_t)s, check_of((uint32_t)s, a.seed) };
            memcpy(p, &h, sizeof h);
            p[s - 1] = (unsigned char)s;
            blk[n++] = p;
            live += s;
        }
        if (live > peak)
            peak = live;
        if (n > most)
            most = n;
    }
    for (size_t i = 0; i < n; i++) {
        head h;
        memcpy(&h, blk[i], sizeof h);
        if (h.check != check_of(h.size, a.seed))
            bad = 1;
        sum += wl_mix(h.size);
        free(blk[i]);
    }
    wl_figure("peak_live_kib", peak / 1024);
    wl_figure("bookkeeping_kib", (most * sizeof *blk + 4095) / 4096 * 4);
    wl_figure("baseline_kib", base_kib < 0 ? 0 : (unsigned long long)base_kib);
    return wl_report(sum, bad);
}
