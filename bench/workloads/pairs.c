/*
 * pairs - the cost of one malloc+free pair of a given size while other blocks of that
 * size stay live. Run under callgrind with COUNT and 2*COUNT pairs: the difference of
 * the two instruction counts divided by COUNT is the cost of one pair, with start-up
 * and the set-up of the live blocks cancelled out.
 *
 *     pairs SIZE COUNT [LIVE]      (LIVE defaults to 256)
 */
#include "wl.h"

/* Kept out of line so that callgrind can count just this function (--toggle-collect). */
__attribute__((noinline)) uint64_t pairs_loop(size_t size, uint64_t count);

__attribute__((noinline)) uint64_t pairs_loop(size_t size, uint64_t count)
{
    /* As little as possible around the two calls: one store so the block is used. */
    for (uint64_t i = 0; i < count; i++) {
        volatile unsigned char *p = malloc(size);
        if (!p)
            abort();
        p[0] = 1;
        free((void *)p);
    }
    return count;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s SIZE COUNT [LIVE]\n", argv[0]);
        return 2;
    }
    size_t size = strtoul(argv[1], NULL, 10);
    uint64_t count = strtoull(argv[2], NULL, 10);
    size_t live = argc == 4 ? strtoul(argv[3], NULL, 10) : 256;
    if (size == 0 || count == 0)
        return 2;

    void **keep = malloc((live ? live : 1) * sizeof *keep);
    if (!keep)
        return 4;
    for (size_t i = 0; i < live; i++) {
        keep[i] = malloc(size);
        if (!keep[i])
            return 4;
        memset(keep[i], (int)i, size);
    }
    /* Warm the path once so that lazy initialisation is not in either count. */
    uint64_t sum = pairs_loop(size, 64);
    sum += pairs_loop(size, count);
    int bad = 0;
    for (size_t i = 0; i < live; i++) {
        if (((unsigned char *)keep[i])[size - 1] != (unsigned char)i)
            bad = 1;
        free(keep[i]);
    }
    free(keep);
    if (sum != count + 64)
        bad = 1;
    return wl_report(sum, bad);
}
