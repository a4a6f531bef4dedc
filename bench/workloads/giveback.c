/*
 * giveback - memory that goes back by itself. Four threads allocate about 800 MiB in all,
 * in sizes from 16 B to 8 MiB (70% under 512 B, 25% up to 64 KiB, 4.5% up to 1 MiB, the rest
 * larger), writing every block, and exit. The main thread frees half of the blocks; four new
 * threads free the rest and exit. Then the process idles for a second, making only small
 * allocations (16 to 128 B, a hundred every 10 ms): no slow path of the allocator's need run.
 * The resident set it keeps then is what the allocator gives back on its own.
 *
 *     rss_start   VmRSS at the start (KiB)
 *     rss_freed   VmRSS once everything is freed and the threads are gone
 *     rss_idle    VmRSS after the idle second
 */
#include "wl.h"
#include <time.h>

enum { THREADS = 4 };
#define MIB ((size_t)1 << 20)

static void **blocks[THREADS];
static size_t counts[THREADS], per_thread;
static uint64_t seed;

static size_t pick(wl_rng *r)
{
    uint32_t k = wl_below(r, 1000);
    if (k < 700)
        return wl_range(r, 16, 511);
    if (k < 950)
        return wl_range(r, 512, 64 * 1024);
    if (k < 995)
        return wl_range(r, 64 * 1024, MIB);
    return wl_range(r, MIB, 8 * MIB);
}

static void *allocate(void *arg)
{
    long t = (long)arg;
    wl_rng r = wl_rng_make(seed, (uint64_t)t + 1);
    size_t total = 0, n = 0, cap = 1 << 16;
    void **v = malloc(cap * sizeof *v);
    if (!v)
        exit(4);
    while (total < per_thread) {
        size_t z = pick(&r);
        if (n == cap) {
            v = realloc(v, (cap *= 2) * sizeof *v);
            if (!v)
                exit(4);
        }
        unsigned char *p = malloc(z);
        if (!p) {
            fprintf(stderr, "giveback: out of memory\n");
            exit(4);
        }
        memset(p, (int)(n & 0xff), z);
        v[n++] = p;
        total += z;
    }
    blocks[t] = v;
    counts[t] = n;
    return NULL;
}

static void *free_second_half(void *arg)
{
    long t = (long)arg;
    for (size_t i = counts[t] / 2; i < counts[t]; i++)
        free(blocks[t][i]);
    return NULL;
}

int main(int argc, char **argv)
{
    wl_args a = wl_parse(argc, argv, "800 MiB freed, then an idle second of small allocations");
    seed = a.seed;
    per_thread = (size_t)wl_count(a.scale, 200.0 * (double)MIB, 4 * MIB);
    long rss_start = wl_vmrss_kib();
    pthread_t th[THREADS];
    for (long t = 0; t < THREADS; t++)
        wl_spawn(&th[t], allocate, (void *)t);
    for (int t = 0; t < THREADS; t++)
        wl_join(th[t]);
    uint64_t sum = 0;
    int bad = 0;
    for (int t = 0; t < THREADS; t++)
        for (size_t i = 0; i < counts[t]; i++) {
            unsigned char *p = blocks[t][i];
            if (p[0] != (unsigned char)(i & 0xff))
                bad = 1;
            sum += p[0];
        }
    for (int t = 0; t < THREADS; t++)
        for (size_t i = 0; i < counts[t] / 2; i++)
            free(blocks[t][i]);
    for (long t = 0; t < THREADS; t++)
        wl_spawn(&th[t], free_second_half, (void *)t);
    for (int t = 0; t < THREADS; t++)
        wl_join(th[t]);
    for (int t = 0; t < THREADS; t++)
        free(blocks[t]);
    long rss_freed = wl_vmrss_kib();
    struct timespec step = {0, 10 * 1000 * 1000};
    for (int s = 0; s < 100; s++) {
        for (int i = 0; i < 100; i++) {
            unsigned char *volatile p = malloc((size_t)16 << (i % 4));
            p[0] = (unsigned char)i;
            sum += p[0];
            free((void *)p);
        }
        nanosleep(&step, NULL);
    }
    long rss_idle = wl_vmrss_kib();
    wl_figure("rss_start", (unsigned long long)(rss_start > 0 ? rss_start : 0));
    wl_figure("rss_freed", (unsigned long long)(rss_freed > 0 ? rss_freed : 0));
    wl_figure("rss_idle", (unsigned long long)(rss_idle > 0 ? rss_idle : 0));
    return wl_report(sum, bad);
}
