/*
 * A program's own pthread_atfork child handler may allocate, whatever another thread was
 * doing inside the allocator when the fork came: the allocator's repair of the child runs
 * first.
 *
 * main registers its child handler before anything else, before its first allocation. A
 * worker thread grows and shrinks the heap without pause (about 48 MiB of blocks of 1 MB
 * each round, all freed again, so that chunks keep coming from the program break and going
 * back to it): it is often inside a slow path, holding the break lock. It also keeps small
 * blocks published in a shared array. The main thread stops the worker with a signal whose
 * handler waits until told to go on, wherever the worker was, forks, and lets it go.
 *
 * In the child, the program's handler arms a watchdog, allocates enough (24 MB in blocks of
 * 1 MB) to need new chunks from the break, frees the published blocks of the worker (a
 * thread that does not exist in the child), and frees everything. Run before the repair,
 * it would spin forever on the break lock of the stopped worker, or work on its arena.
 *
 * About one fork in forty finds the worker holding the break lock, so the default number of
 * forks makes a run that never meets it practically impossible.
 *
 * usage: fork_atfork [forks]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>

#include "common.h"

enum { PUBLISHED = 64, BIG = 1000000, ROUND_BIG = 48, HANDLER_BIG = 24 };

static _Atomic(unsigned char *) published[PUBLISHED];
static atomic_int stop_worker, stopped, go_on, worker_failed;
static atomic_long rounds;

/* The worker stops here, wherever the signal found it, until main has forked. */
static void on_stop(int sig)
{
    (void)sig;
    int saved = errno;
    atomic_store(&stopped, 1);
    while (!atomic_load(&go_on)) {
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
    atomic_store(&go_on, 0);
    atomic_store(&stopped, 0);
    errno = saved;
}

static void *worker(void *arg)
{
    (void)arg;
    struct rng g = {17};
    unsigned char *big[ROUND_BIG];
    while (!atomic_load(&stop_worker)) {
        for (int i = 0; i < ROUND_BIG; i++) { /* not touched: time goes to the slow paths */
            big[i] = malloc(BIG - rnd(&g) % 4096);
            if (!big[i]) {
                atomic_store(&worker_failed, 1);
                return NULL;
            }
        }
        for (int i = 0; i < PUBLISHED / 4; i++) {
            size_t n = rnd_size(&g, 3000);
            unsigned char *p = malloc(n);
            if (!p) {
                atomic_store(&worker_failed, 1);
                return NULL;
            }
            memset(p, 0x5a, n);
            free(atomic_exchange(&published[rnd(&g) % PUBLISHED], p));
        }
        for (int i = 0; i < ROUND_BIG; i++)
            free(big[i]);
        atomic_fetch_add(&rounds, 1);
    }
    return NULL;
}

/* The program's child handler: allocation right after the fork, before the child's main
 * code runs. Exit status 4: an allocation failed or a block was wrong. */
static void program_child_handler(void)
{
    alarm(10); /* a hang here dies of SIGALRM */
    unsigned char *big[HANDLER_BIG];
    for (int i = 0; i < HANDLER_BIG; i++) {
        big[i] = malloc(BIG);
        if (!big[i])
            _exit(4);
        memset(big[i], i, 4096);
        big[i][BIG - 1] = (unsigned char)i;
    }
    for (int i = 0; i < PUBLISHED; i++) {
        unsigned char *p = atomic_exchange(&published[i], NULL);
        if (p && p[0] != 0x5a)
            _exit(4);
        free(p); /* a block of the worker, whose thread the child does not have */
    }
    for (int i = 0; i < HANDLER_BIG; i++) {
        if (big[i][100] != (unsigned char)i || big[i][BIG - 1] != (unsigned char)i)
            _exit(4);
        free(big[i]);
    }
    for (int i = 0; i < 1000; i++)
        free(malloc((size_t)i * 37 + 1));
}

int main(int argc, char **argv)
{
    /* First thing: before the program's first allocation. */
    if (pthread_atfork(NULL, NULL, program_child_handler) != 0)
        return 1;
    require_preload();
    int max_forks = argc > 1 ? atoi(argv[1]) : 600;
    alarm(300); /* watchdog: a deadlocked parent dies of SIGALRM */

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigaction(SIGUSR1, &sa, NULL);
    pthread_t w;
    if (pthread_create(&w, NULL, worker, NULL) != 0)
        return 1;
    while (atomic_load(&rounds) == 0 && !atomic_load(&worker_failed)) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }

    int forks = 0, failures = 0;
    struct rng g = {3};
    while (forks < max_forks && !failures && !atomic_load(&worker_failed)) {
        /* Let the worker run a little, at a different point each time. */
        struct timespec ts = {0, (long)(rnd(&g) % 2000000)};
        nanosleep(&ts, NULL);
        pthread_kill(w, SIGUSR1);
        while (!atomic_load(&stopped))
            ;
        /* The worker is stopped: nothing of this thread may allocate until it goes on (it
         * may hold the break lock). fork itself does not allocate. */
        pid_t pid = fork();
        if (pid == 0)
            _exit(0); /* the child handlers have run */
        atomic_store(&go_on, 1);
        while (atomic_load(&stopped))
            ;
        if (pid < 0) {
            say("fork_atfork: fork failed\n");
            failures++;
            break;
        }
        int st = wait_child(pid, 30);
        if (!child_ok(st)) {
            say_status("fork_atfork", st);
            fprintf(stderr, "fork_atfork: fork #%d failed\n", forks + 1);
            failures++;
        }
        forks++;
    }
    atomic_store(&stop_worker, 1);
    pthread_join(w, NULL);
    for (int i = 0; i < PUBLISHED; i++)
        free(atomic_exchange(&published[i], NULL));
    if (atomic_load(&worker_failed)) {
        say("fork_atfork: an allocation of the worker failed\n");
        return 1;
    }
    if (failures)
        return 1;
    printf("fork_atfork: %d forks, %ld worker rounds\n", forks, atomic_load(&rounds));
    return 0;
}
