/*
 * spans - blocks of 256 KiB to 4 MiB replaced at random, 8 live, each written at both ends
 * and on one page in the middle: the boundary between medium and huge blocks, where an
 * allocator either reuses what was freed or maps, advises and unmaps on every cycle
 * (system calls and page faults per malloc, against none).
 */
#include "wl.h"

enum { LIVE = 8 };
#define KIB ((size_t)1 << 10)

int main(int argc, char **argv)
{
    wl_args a = wl_parse(argc, argv, "random blocks of 256 KiB-4 MiB, 8 live");
    wl_rng r = wl_rng_make(a.seed, 13);
    unsigned char *p[LIVE] = {0};
    size_t size[LIVE] = {0};
    uint64_t tag[LIVE] = {0};
    uint64_t sum = 0;
    int bad = 0;
    uint64_t ops = wl_count(a.scale, 400e3, 100);

    for (uint64_t i = 0; i < ops; i++) {
        uint32_t k = wl_below(&r, LIVE);
        if (p[k]) {
            if (p[k][size[k] / 2] != (unsigned char)tag[k])
                bad = 1;
            sum += wl_check(p[k], size[k], tag[k], &bad);
            free(p[k]);
        }
        size[k] = wl_range(&r, 256 * KIB, 4096 * KIB);
        p[k] = malloc(size[k]);
        if (!p[k]) {
            fprintf(stderr, "spans: out of memory\n");
            return 4;
        }
        tag[k] = wl_next(&r);
        wl_stamp(p[k], size[k], tag[k]);
        p[k][size[k] / 2] = (unsigned char)tag[k];
    }
    for (int k = 0; k < LIVE; k++)
        if (p[k]) {
            sum += wl_check(p[k], size[k], tag[k], &bad);
            free(p[k]);
        }
    return wl_report(sum, bad);
}
