/*
 * Statistics read while other threads allocate and free.
 *
 * Worker threads allocate and free small, medium and huge blocks, write into them, and
 * pass some to each other (remote frees); meanwhile another thread reads the statistics
 * of the whole process and of each arena, and writes the heap map, in a loop. The reader
 * walks run meta blocks, medium chunks, huge meta blocks and counters that their owners
 * are changing: it must never crash (a run being set up has block size 0), its figures
 * must stay coherent, and under ThreadSanitizer nothing may be reported.
 *
 * Bounded in time: TAMALLOC_STRESS_SECONDS (default 2, 1 under sanitizers).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <tamalloc.h>

#include "tatest.h"

#define WORKERS 3
#define SLOTS 256
#define SHARED 64

static _Atomic bool stop;
static _Atomic(void *) shared[SHARED]; /* blocks passed between workers */
static _Atomic long reads;
static char problem[256];
static _Atomic int problems;

static void report(const char *what, unsigned long long a, unsigned long long b)
{
    if (atomic_fetch_add(&problems, 1) == 0)
        snprintf(problem, sizeof problem, "%s (%llu, %llu)", what, a, b);
}

static size_t pick_size(tt_rng *g)
{
    uint64_t r = tt_rand(g) % 100;
    if (r < 70)
        return tt_rand_between(g, 1, TT_SMALL_MAX);
    if (r < 97)
        return tt_rand_between(g, TT_SMALL_MAX + 1, TT_MEDIUM_MAX);
    return tt_rand_between(g, TT_MEDIUM_MAX + 1, 3 * TT_MIB);
}

static void *worker(void *arg)
{
    tt_rng g;
    tt_rng_seed(&g, (uintptr_t)arg);
    unsigned char *mine[SLOTS] = {0};
    while (!atomic_load(&stop)) {
        int k = (int)(tt_rand(&g) % SLOTS);
        if (mine[k] == NULL) {
            size_t n = pick_size(&g);
            mine[k] = tt_rand(&g) % 8 == 0 ? ta_memalign(64, n) : ta_malloc(n);
            if (mine[k] == NULL) {
                report("allocation failed", n, (unsigned long long)errno);
                break;
            }
            /* The program writes into its blocks, first and last bytes included. */
            memset(mine[k], 0x5a, n < 256 ? n : 256);
            mine[k][n - 1] = 0xa5;
        } else if (tt_rand(&g) % 4 == 0) {
            /* Hand it to whichever worker takes that slot next; free what was there. */
            ta_free(atomic_exchange(&shared[tt_rand(&g) % SHARED], mine[k]));
            mine[k] = NULL;
        } else {
            ta_free(mine[k]);
            mine[k] = NULL;
        }
    }
    for (int k = 0; k < SLOTS; k++)
        ta_free(mine[k]);
    return NULL;
}

/* What every read must satisfy, however the heap changes under it. */
static void check(const struct ta_stats *s)
{
    /* A size word cleared by a merge between two reads of it once made a free block's
     * usable size wrap: a "largest free block" of nearly 2^64 bytes, and an external
     * fragmentation of minus trillions of percent. */
    if (s->largest_free_block > s->free_bytes)
        report("the largest free block is larger than all free bytes", s->largest_free_block,
               s->free_bytes);
    if (s->external_fragmentation_pct < 0.0 || s->external_fragmentation_pct > 100.0)
        report("external fragmentation out of [0, 100] %", 0, 0);
    if (s->usable_bytes > s->heap_bytes + s->mapped_bytes)
        report("more usable bytes than heap and mappings", s->usable_bytes, s->heap_bytes);
    for (unsigned c = 1; c < TA_STATS_CLASSES; c++) {
        const struct ta_class_stats *cs = &s->classes[c];
        if (cs->block_size && cs->block_size <= TT_SMALL_MAX &&
            cs->usable_bytes != cs->live_blocks * cs->block_size)
            report("a small class's usable bytes are not its live blocks times its size",
                   cs->usable_bytes, cs->live_blocks * cs->block_size);
    }
}

static void *reader(void *arg)
{
    int devnull = *(int *)arg;
    while (!atomic_load(&stop)) {
        struct ta_stats s = {.version = TA_STATS_VERSION, .size = sizeof s};
        int rc = ta_stats_get(&s, -1);
        if (rc != 0)
            report("ta_stats_get(-1) failed", (unsigned long long)rc, 0);
        check(&s);
        for (int a = 0; a < WORKERS + 2; a++) {
            struct ta_stats as = {.version = TA_STATS_VERSION, .size = sizeof as};
            if (ta_stats_get(&as, a) == 0)
                check(&as);
        }
        if (ta_heap_map(devnull) != 0)
            report("ta_heap_map failed", 0, 0);
        atomic_fetch_add(&reads, 1);
    }
    return NULL;
}

Test(stats_readers, walk_while_threads_allocate_and_free, .timeout = 120)
{
    int devnull = open("/dev/null", O_WRONLY);
    cr_assert(devnull >= 0);
    pthread_t w[WORKERS], r;
    for (uintptr_t i = 0; i < WORKERS; i++)
        cr_assert_eq(pthread_create(&w[i], NULL, worker, (void *)(i + 1)), 0);
    cr_assert_eq(pthread_create(&r, NULL, reader, &devnull), 0);
    double end = tt_now() + tt_env_seconds("TAMALLOC_STRESS_SECONDS", TT_SANITIZER ? 1.0 : 2.0);
    while (tt_now() < end && atomic_load(&problems) == 0)
        usleep(10000);
    atomic_store(&stop, true);
    for (int i = 0; i < WORKERS; i++)
        pthread_join(w[i], NULL);
    pthread_join(r, NULL);
    for (int i = 0; i < SHARED; i++)
        ta_free(atomic_exchange(&shared[i], NULL));
    close(devnull);
    cr_assert_eq(atomic_load(&problems), 0, "%d incoherent reads; first: %s",
                 atomic_load(&problems), problem);
    cr_assert(atomic_load(&reads) > 0, "the reader never finished a read");

    /* Nothing is left once the exited workers' arenas have taken in what was freed into
     * them: a quiet heap reads exactly. */
    ta_malloc_trim(0);
    struct ta_stats s = {.version = TA_STATS_VERSION, .size = sizeof s};
    cr_assert_eq(ta_stats_get(&s, -1), 0);
    cr_assert_eq(s.blocks, 0, "%llu blocks still live after every block was freed", s.blocks);
    cr_assert_eq(s.usable_bytes, 0);
    cr_log_info("%ld reads", atomic_load(&reads));
}
