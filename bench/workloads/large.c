/*
 * large - large blocks: replace random blocks of 5 to 25 MiB with at most 20 live at
 * once, writing every page of each new block. Measures how the allocator obtains,
 * caches and returns big mappings (mmap, munmap, page faults, zeroing).
 */
#include "wl.h"

enum { LIVE = 20, PAGE = 4096 };
#define MIB ((size_t)1 << 20)

int main(int argc, char **argv)
{
    wl_args a = wl_parse(argc, argv, "large blocks of 5-25 MiB, up to 20 live");
    wl_rng r = wl_rng_make(a.seed, 6);
    uint64_t ops = wl_count(a.scale, 320, 20);
    unsigned char *p[LIVE] = {0};
    size_t size[LIVE] = {0};
    uint64_t tag[LIVE] = {0};
    uint64_t sum = 0;
    int bad = 0;

    for (uint64_t i = 0; i < ops; i++) {
        uint32_t k = wl_below(&r, LIVE);
        if (p[k]) {
            /* Check one word on a few pages and the stamps at both ends. */
            for (size_t off = PAGE; off + 8 < size[k]; off += 64 * PAGE)
                if (p[k][off] != (unsigned char)(tag[k] + off / PAGE))
                    bad = 1;
            sum += wl_check(p[k], size[k], tag[k], &bad);
            free(p[k]);
        }
        size[k] = wl_range(&r, 5 * MIB, 25 * MIB);
        p[k] = malloc(size[k]);
        if (!p[k]) {
            fprintf(stderr, "large: out of memory\n");
            return 4;
        }
        tag[k] = wl_next(&r);
        for (size_t off = PAGE; off + 8 < size[k]; off += PAGE)
            p[k][off] = (unsigned char)(tag[k] + off / PAGE);
        wl_stamp(p[k], size[k], tag[k]);
    }
    for (int k = 0; k < LIVE; k++)
        if (p[k]) {
            sum += wl_check(p[k], size[k], tag[k], &bad);
            free(p[k]);
        }
    return wl_report(sum, bad);
}
