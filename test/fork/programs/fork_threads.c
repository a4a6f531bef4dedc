/*
 * fork while other threads allocate never deadlocks.
 *
 * `workers` threads allocate, reallocate and free blocks of every size range without
 * pause (also handing blocks to each other through a shared slot array), while
 * `forkers` threads (the main thread among them) fork as fast as they can. Every child
 * allocates and frees in every size range, then _exit(0)s. A child that does not finish
 * within its time limit, or a parent stuck in fork, fails the run.
 *
 * usage: fork_threads [workers] [forkers] [seconds]
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>

#include "common.h"

#define SHARED 64

static _Atomic(unsigned char *) shared[SHARED];
static atomic_int stop, failed;
static atomic_long forks_done;
static double deadline;

static void *worker(void *arg)
{
    struct rng g = {(uint64_t)(intptr_t)arg * 7919 + 1};
    unsigned char *mine[64] = {0};
    while (!atomic_load(&stop)) {
        int k = (int)(rnd(&g) % 64);
        uint64_t op = rnd(&g) % 16;
        if (mine[k] == NULL) {
            size_t n = rnd_size(&g, op == 0 ? 4 * MIB : op < 4 ? 300000 : 2000);
            void *p = NULL;
            switch (op % 4) {
            case 0: p = malloc(n); break;
            case 1: p = calloc(1, n); break;
            case 2: p = aligned_alloc(64, n); break;
            default:
                if (posix_memalign(&p, 4096, n) != 0)
                    p = NULL;
            }
            if (!p) {
                atomic_store(&failed, 1);
                break;
            }
            memset(p, 0x6b, n < 128 ? n : 128);
            mine[k] = p;
        } else if (op < 3) {
            unsigned char *q = realloc(mine[k], rnd_size(&g, 600000));
            if (!q) {
                atomic_store(&failed, 1);
                break;
            }
            mine[k] = q;
        } else if (op < 6) {
            /* Swap with the shared array: blocks are freed by other threads. */
            mine[k] = atomic_exchange(&shared[rnd(&g) % SHARED], mine[k]);
        } else {
            free(mine[k]);
            mine[k] = NULL;
        }
    }
    for (int k = 0; k < 64; k++)
        free(mine[k]);
    return NULL;
}

static int fork_once(struct rng *g)
{
    pid_t pid = fork();
    if (pid < 0) {
        say("fork failed\n");
        return 0;
    }
    if (pid == 0) {
        alarm(10);
        static const size_t sizes[] = {1, 24, 100, 1000, 8000, 20000, 300000, 900000,
                                       2 * MIB, 5 * MIB};
        for (int r = 0; r < 4; r++)
            for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
                unsigned char *p = malloc(sizes[i]);
                unsigned char *q = calloc(1, sizes[i]);
                void *a = memalign(256, sizes[i]);
                if (!p || !q || !a)
                    _exit(1);
                memset(p, 1, sizes[i]);
                if (q[sizes[i] - 1] != 0)
                    _exit(1);
                p = realloc(p, sizes[i] * 2);
                if (!p)
                    _exit(1);
                free(p);
                free(q);
                free(a);
            }
        /* Blocks the workers were handing around when the fork happened. */
        for (int i = 0; i < SHARED; i += 3)
            free(atomic_exchange(&shared[i], NULL));
        _exit(0);
    }
    (void)g;
    int st = wait_child(pid, 20);
    if (!child_ok(st)) {
        say_status("fork_threads", st);
        return 0;
    }
    atomic_fetch_add(&forks_done, 1);
    return 1;
}

enum { MIN_FORKS = 10 };

static void *forker(void *arg)
{
    struct rng g = {(uint64_t)(intptr_t)arg};
    /* At least MIN_FORKS, however slow a loaded machine makes them: the time is never the
     * point, a hang is (the alarm catches that). */
    while ((now_seconds() < deadline || atomic_load(&forks_done) < MIN_FORKS) &&
           !atomic_load(&failed))
        if (!fork_once(&g))
            atomic_store(&failed, 1);
    return NULL;
}

int main(int argc, char **argv)
{
    require_preload();
    int workers = argc > 1 ? atoi(argv[1]) : 4;
    int forkers = argc > 2 ? atoi(argv[2]) : 1;
    double seconds = argc > 3 ? atof(argv[3]) : 3.0;
    alarm((unsigned)(seconds + 60)); /* watchdog: a deadlocked parent dies of SIGALRM */
    deadline = now_seconds() + seconds;
    pthread_t w[64], f[16];
    for (int i = 0; i < workers && i < 64; i++)
        if (pthread_create(&w[i], NULL, worker, (void *)(intptr_t)i) != 0)
            return 1;
    for (int i = 1; i < forkers && i < 16; i++)
        if (pthread_create(&f[i], NULL, forker, (void *)(intptr_t)(i + 100)) != 0)
            return 1;
    forker((void *)(intptr_t)100);
    for (int i = 1; i < forkers && i < 16; i++)
        pthread_join(f[i], NULL);
    atomic_store(&stop, 1);
    for (int i = 0; i < workers && i < 64; i++)
        pthread_join(w[i], NULL);
    for (int i = 0; i < SHARED; i++)
        free(atomic_exchange(&shared[i], NULL));
    if (atomic_load(&failed)) {
        say("fork_threads: failed\n");
        return 1;
    }
    if (atomic_load(&forks_done) < MIN_FORKS) {
        fprintf(stderr, "fork_threads: only %ld forks\n", atomic_load(&forks_done));
        return 1;
    }
    printf("fork_threads: %ld forks ok\n", atomic_load(&forks_done));
    return 0;
}
