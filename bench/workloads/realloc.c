/*
 * realloc - buffers grown with realloc to tens of MiB: vectors that grow by half
 * again and string builders that append a few bytes at a time, several at once so
 * that growing in place is not free. Checks that the old contents survive each move.
 */
#include "wl.h"

enum { BUFS = 6 };
#define MIB ((size_t)1 << 20)

typedef struct {
    unsigned char *p;
    size_t len;       /* bytes written */
    size_t limit;     /* drop and restart beyond this */
    int builder;      /* 1: append small pieces, 0: grow geometrically */
    uint64_t gen;
} buf;

/* One byte value per 4 KiB page of a buffer, so filling is a memset per page. */
static inline unsigned char pattern(uint64_t gen, size_t off)
{
    return (unsigned char)(gen * 131 + (off >> 12) * 7);
}

static void fill(unsigned char *p, uint64_t gen, size_t from, size_t to)
{
    while (from < to) {
        size_t end = (from | 4095) + 1;
        if (end > to)
            end = to;
        memset(p + from, pattern(gen, from), end - from);
        from = end;
    }
}

static void restart(buf *b, wl_rng *r, uint64_t gen)
{
    b->p = NULL;
    b->len = 0;
    b->builder = wl_below(r, 3) == 0;
    b->limit = b->builder ? wl_range(r, 1 * MIB, 4 * MIB) : wl_range(r, 16 * MIB, 48 * MIB);
    b->gen = gen;
}

/* Spot checks over the whole buffer, including the last bytes before the growth. */
static uint64_t probe(const buf *b, int *bad)
{
    uint64_t s = 0;
    size_t step = b->len / 13 + 1;
    for (size_t off = 0; off < b->len; off += step) {
        if (b->p[off] != pattern(b->gen, off))
            *bad = 1;
        s += b->p[off];
    }
    if (b->len && b->p[b->len - 1] != pattern(b->gen, b->len - 1))
        *bad = 1;
    return s;
}

int main(int argc, char **argv)
{
    wl_args a = wl_parse(argc, argv, "realloc growth to tens of MiB");
    wl_rng r = wl_rng_make(a.seed, 7);
    uint64_t lifetimes = wl_count(a.scale, 70, 8);
    buf b[BUFS];
    uint64_t gen = 0, sum = 0;
    int bad = 0;
    for (int i = 0; i < BUFS; i++)
        restart(&b[i], &r, gen++);

    for (uint64_t done = 0; done < lifetimes;) {
        buf *x = &b[wl_below(&r, BUFS)];
        size_t grow = x->builder ? wl_range(&r, 1, 512)
                                 : (x->len < 4096 ? 4096 : x->len / 2 + wl_range(&r, 0, 4096));
        size_t want = x->len + grow;
        unsigned char *q = realloc(x->p, want);
        if (!q) {
            fprintf(stderr, "realloc: out of memory\n");
            return 4;
        }
        x->p = q;
        if (!x->builder || wl_below(&r, 64) == 0)
            sum += probe(x, &bad);
        fill(x->p, x->gen, x->len, want);
        x->len = want;
        if (x->len >= x->limit) {
            sum += probe(x, &bad) + x->len;
            free(x->p);
            restart(x, &r, gen++);
            done++;
        }
    }
    for (int i = 0; i < BUFS; i++) {
        sum += probe(&b[i], &bad);
        free(b[i].p);
    }
    return wl_report(sum, bad);
}
