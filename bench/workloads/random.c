/*
 * random - one thread replacing random blocks among 20,000 live ones, sizes uniform in
 * 8 to 1024 bytes: no lifetime pattern and no locality, so every free lands in a run the
 * allocator is not allocating from, and every malloc may read a block freed long ago (the
 * pattern of hash tables and caches whose entries die in random order). Every block is
 * checked at the end and one in 64 before it is freed.
 */
#include "wl.h"

enum { LIVE = 20000 };

typedef struct {
    void *p;
    uint32_t size;
    uint64_t tag;
} obj;

int main(int argc, char **argv)
{
    wl_args a = wl_parse(argc, argv, "random replacement among 20,000 blocks of 8-1024 B");
    wl_rng r = wl_rng_make(a.seed, 12);
    static obj o[LIVE];
    uint64_t sum = 0, seq = 0;
    int bad = 0;

    for (int i = 0; i < LIVE; i++) {
        o[i].size = (uint32_t)wl_range(&r, 8, 1024);
        o[i].tag = wl_mix(++seq ^ a.seed);
        o[i].p = malloc(o[i].size);
        if (!o[i].p) {
            fprintf(stderr, "random: out of memory\n");
            return 4;
        }
        wl_stamp(o[i].p, o[i].size, o[i].tag);
    }
    uint64_t ops = wl_count(a.scale, 40e6, 1000);
    for (uint64_t i = 0; i < ops; i++) {
        obj *x = &o[wl_below(&r, LIVE)];
        /* One block in 64 is checked before it goes: reading each would bring it into the
         * cache for free, which a program dropping an entry it no longer looks at does not. */
        if ((i & 63) == 0)
            sum += wl_check(x->p, x->size, x->tag, &bad);
        free(x->p);
        x->size = (uint32_t)wl_range(&r, 8, 1024);
        x->tag = wl_mix(++seq ^ a.seed);
        x->p = malloc(x->size);
        if (!x->p) {
            fprintf(stderr, "random: out of memory\n");
            return 4;
        }
        wl_stamp(x->p, x->size, x->tag);
    }
    for (int i = 0; i < LIVE; i++) {
        sum += wl_check(o[i].p, o[i].size, o[i].tag, &bad);
        free(o[i].p);
    }
    return wl_report(sum, bad);
}
