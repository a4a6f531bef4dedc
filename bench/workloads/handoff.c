/*
 * handoff - memory one thread frees, another uses: a thread allocates about 96 MiB of
 * blocks (100 KB each by default scale), writes them, frees them all and blocks, alive;
 * then a second thread allocates and writes as much. An allocator that keeps each thread's
 * free memory for that thread alone takes the second 96 MiB from the kernel while the
 * first still sits resident: peak RSS against the 96 MiB live at any moment.
 *
 *     live_kib    the most bytes live at once (KiB)
 *     rss_freed   VmRSS when the first thread has freed everything and blocked (KiB)
 */
#include "wl.h"

static size_t nblocks, block;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int freed, done;

/* Allocates, writes, checks and frees the blocks, tagged with `tag`. */
static void fill(uint64_t tag, wl_result *res)
{
    unsigned char **p = calloc(nblocks, sizeof *p);
    if (!p)
        exit(4);
    for (size_t i = 0; i < nblocks; i++) {
        p[i] = malloc(block);
        if (!p[i]) {
            fprintf(stderr, "handoff: out of memory\n");
            exit(4);
        }
        memset(p[i], (int)(tag + i) & 0xff, block);
        wl_stamp(p[i], block, tag + i);
    }
    for (size_t i = 0; i < nblocks; i++) {
        res->sum += wl_check(p[i], block, tag + i, &res->bad);
        if (p[i][block / 2] != (unsigned char)((tag + i) & 0xff))
            res->bad = 1;
        free(p[i]);
    }
    free(p);
}

static void *first(void *arg)
{
    fill(1, arg);
    pthread_mutex_lock(&mu);
    freed = 1;
    pthread_cond_broadcast(&cv);
    while (!done) /* blocked, alive, calling nothing */
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void *second(void *arg)
{
    fill(2, arg);
    return NULL;
}

int main(int argc, char **argv)
{
    wl_args a = wl_parse(argc, argv, "one thread frees 96 MiB and blocks; another allocates as much");
    block = 100000;
    nblocks = (size_t)wl_count(a.scale, 1000, 16);
    wl_result r1 = {0, 0}, r2 = {0, 0};
    pthread_t t1, t2;
    wl_spawn(&t1, first, &r1);
    pthread_mutex_lock(&mu);
    while (!freed)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    long rss_freed = wl_vmrss_kib();
    wl_spawn(&t2, second, &r2);
    wl_join(t2);
    pthread_mutex_lock(&mu);
    done = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    wl_join(t1);
    wl_figure("live_kib", (unsigned long long)(nblocks * block / 1024));
    wl_figure("rss_freed", (unsigned long long)(rss_freed > 0 ? rss_freed : 0));
    return wl_report(r1.sum + r2.sum, r1.bad | r2.bad);
}
