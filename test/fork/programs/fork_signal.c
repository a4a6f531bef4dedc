/*
 * fork from a signal handler that interrupted malloc, in a single-threaded program.
 *
 * An interval timer fires SIGALRM at a high rate while the main code loops over malloc,
 * calloc, realloc, memalign and free of varied sizes; the handler forks. The child
 * allocates and frees, then _exit(0)s; the handler waits for it. Whatever allocator
 * state the interrupted main code was in, neither the parent nor the child may hang.
 *
 * The run lasts `seconds`, or longer (up to 40 s more) until it has forked MIN_FORKS times:
 * where forks are slow (a loaded virtual machine copies page tables slowly) the time alone
 * may not give enough of them, which is a slow machine, not a failure.
 *
 * Watchdogs: a POSIX timer sends SIGUSR1 to the parent after the time limit (its
 * handler reports and exits 2); each child runs under alarm() with SIGALRM reset to the
 * default action, so a stuck child dies of SIGALRM and the parent reports it.
 *
 * The handler forks only once the main code has made `spacing` allocator calls since the
 * previous fork, so the main code keeps running between forks and each fork lands at an
 * arbitrary point of it; the signals in between interrupt it without forking.
 *
 * usage: fork_signal [interval_us] [forks] [seconds] [spacing]
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <sys/time.h>

#include "common.h"

static volatile sig_atomic_t forks_done, failed, in_handler;
static volatile sig_atomic_t fork_errors;
enum { MIN_FORKS = 10 }; /* fewer, and the run tested too little */
static int max_forks;
static volatile long calls, calls_at_last_fork;
static long spacing;

static void child_body(void)
{
    /* Back to a normal signal state: SIGALRM kills us if we hang. */
    signal(SIGALRM, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    alarm(10);
    static const size_t sizes[] = {1, 16, 100, 700, 4000, 9000, 60000, 400000, 3 * MIB};
    for (int r = 0; r < 3; r++)
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            unsigned char *p = malloc(sizes[i]);
            unsigned char *q = calloc(sizes[i], 1);
            void *a = memalign(64, sizes[i]);
            if (!p || !q || !a)
                _exit(1);
            p[sizes[i] - 1] = 2;
            p[0] = 1;
            if (q[0] != 0 || q[sizes[i] - 1] != 0)
                _exit(1);
            p = realloc(p, sizes[i] + 5000);
            if (!p || p[0] != 1)
                _exit(1);
            free(a);
            free(q);
            free(p);
        }
    _exit(0);
}

static void on_alarm(int sig)
{
    (void)sig;
    if (forks_done >= max_forks || failed || calls - calls_at_last_fork < spacing)
        return;
    calls_at_last_fork = calls;
    int saved = errno;
    pid_t pid = fork();
    if (pid == 0)
        child_body();
    if (pid < 0) {
        fork_errors++;
        errno = saved;
        return;
    }
    int status;
    pid_t r;
    do
        r = waitpid(pid, &status, 0);
    while (r < 0 && errno == EINTR);
    if (r != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        if (r == pid && WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
            say("fork_signal: a child hung (killed by its alarm)\n");
        else
            say("fork_signal: a child failed\n");
        failed = 1;
    }
    forks_done++;
    errno = saved;
}

static void on_watchdog(int sig)
{
    (void)sig;
    say("fork_signal: watchdog: the parent hung (in fork, or in malloc after fork)\n");
    _exit(2);
}

int main(int argc, char **argv)
{
    require_preload();
    long interval_us = argc > 1 ? atol(argv[1]) : 500;
    max_forks = argc > 2 ? atoi(argv[2]) : 400;
    double seconds = argc > 3 ? atof(argv[3]) : 4.0;
    spacing = argc > 4 ? atol(argv[4]) : 1000;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_watchdog;
    sigaction(SIGUSR1, &sa, NULL);
    timer_t watchdog;
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGUSR1;
    if (timer_create(CLOCK_MONOTONIC, &sev, &watchdog) != 0) {
        perror("timer_create");
        return 1;
    }
    struct itimerspec wd = {{0, 0}, {(time_t)seconds + 60, 0}};
    timer_settime(watchdog, 0, &wd, NULL);

    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, interval_us}, {0, interval_us}};
    setitimer(ITIMER_REAL, &it, NULL);

    /* The main code lives inside malloc as much as possible. */
    struct rng g = {1};
    enum { SLOTS = 128 };
    unsigned char *slot[SLOTS] = {0};
    double end = now_seconds() + seconds, last = end + 40;
    long ops = 0;
    for (;;) {
        double t = now_seconds();
        if (forks_done >= max_forks || failed || t >= last || (t >= end && forks_done >= MIN_FORKS))
            break;
        for (int i = 0; i < 256; i++, ops++, calls++) {
            int k = (int)(rnd(&g) % SLOTS);
            if (slot[k]) {
                if (ops % 5 == 0) {
                    unsigned char *q = realloc(slot[k], rnd_size(&g, 300000));
                    if (!q) {
                        say("fork_signal: realloc failed\n");
                        return 1;
                    }
                    slot[k] = q;
                } else {
                    free(slot[k]);
                    slot[k] = NULL;
                }
            } else {
                size_t n = rnd_size(&g, ops % 97 == 0 ? 4 * MIB : 100000);
                switch (ops % 4) {
                case 0: slot[k] = malloc(n); break;
                case 1: slot[k] = calloc(1, n); break;
                case 2: slot[k] = memalign(128, n); break;
                default: slot[k] = realloc(NULL, n); break;
                }
                if (!slot[k]) {
                    say("fork_signal: allocation failed\n");
                    return 1;
                }
                slot[k][0] = 1;
            }
        }
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    for (int k = 0; k < SLOTS; k++)
        free(slot[k]);
    if (failed)
        return 1;
    printf("fork_signal: %d forks, %ld allocator calls, %d fork errors\n", (int)forks_done, ops,
           (int)fork_errors);
    if (forks_done < MIN_FORKS)
        say("fork_signal: fewer forks than the least the test needs\n");
    return forks_done >= MIN_FORKS ? 0 : 1;
}
