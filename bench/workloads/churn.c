/*
 * churn - one thread allocating and freeing small objects with a skewed size mix and
 * short, medium and long lifetimes (the pattern of symbolic and numeric programs such
 * as factoring or logic minimisation: mostly 8-64 byte objects, a few large ones,
 * some strings grown with realloc).
 */
#include "wl.h"

typedef struct {
    void *p;
    size_t size;
    uint64_t tag;
} obj;

/* Size mix in per-mille: most objects are tiny, a long thin tail reaches 16 KiB. */
static size_t pick_size(wl_rng *r)
{
    uint32_t u = wl_below(r, 1000);
    if (u < 60) return wl_range(r, 1, 8);
    if (u < 400) return wl_range(r, 9, 24);
    if (u < 650) return wl_range(r, 25, 48);
    if (u < 800) return wl_range(r, 49, 96);
    if (u < 900) return wl_range(r, 97, 256);
    if (u < 970) return wl_range(r, 257, 1024);
    if (u < 995) return wl_range(r, 1025, 4096);
    return wl_range(r, 4097, 16384);
}

static uint64_t sum;
static int bad;
static uint64_t seq;
static uint64_t seed;

static void make(obj *o, wl_rng *r)
{
    o->size = pick_size(r);
    o->tag = wl_mix(++seq ^ seed);
    o->p = malloc(o->size);
    if (!o->p) {
        fprintf(stderr, "churn: out of memory\n");
        exit(4);
    }
    wl_stamp(o->p, o->size, o->tag);
}

static void drop(obj *o)
{
    if (!o->p)
        return;
    sum += wl_check(o->p, o->size, o->tag, &bad);
    free(o->p);
    o->p = NULL;
}

int main(int argc, char **argv)
{
    wl_args a = wl_parse(argc, argv, "single-thread churn of small objects");
    enum { STACK = 64, MEDIUM = 4096, LONG = 32768 };
    static obj stack[STACK], medium[MEDIUM], longl[LONG];
    int depth = 0;
    seed = a.seed;
    wl_rng r = wl_rng_make(a.seed, 1);

    for (int i = 0; i < LONG; i++)
        make(&longl[i], &r);

    uint64_t ops = wl_count(a.scale, 24e6, 1000);
    for (uint64_t i = 0; i < ops; i++) {
        uint32_t u = wl_below(&r, 100);
        if (u < 50) {
            /* Temporaries: a stack that breathes between empty and 24 deep. */
            int want = (int)wl_below(&r, 24);
            while (depth > want)
                drop(&stack[--depth]);
            if (depth < STACK)
                make(&stack[depth++], &r);
        } else if (u < 88) {
            obj *o = &medium[wl_below(&r, MEDIUM)];
            drop(o);
            make(o, &r);
        } else if (u < 91) {
            /* A growing string or number: realloc keeps the old bytes. */
            obj *o = &medium[wl_below(&r, MEDIUM)];
            if (!o->p || o->size >= 16384) {
                drop(o);
                make(o, &r);
                continue;
            }
            size_t grown = o->size + o->size / 2 + 8;
            void *q = realloc(o->p, grown);
            if (!q) {
                fprintf(stderr, "churn: out of memory\n");
                exit(4);
            }
            sum += wl_check(q, o->size, o->tag, &bad);
            o->p = q;
            o->size = grown;
            o->tag = wl_mix(++seq ^ seed);
            wl_stamp(q, o->size, o->tag);
        } else {
            obj *o = &longl[wl_below(&r, LONG)];
            drop(o);
            make(o, &r);
        }
    }

    while (depth > 0)
        drop(&stack[--depth]);
    for (int i = 0; i < MEDIUM; i++)
        drop(&medium[i]);
    for (int i = 0; i < LONG; i++)
        drop(&longl[i]);
    return wl_report(sum, bad);
}
