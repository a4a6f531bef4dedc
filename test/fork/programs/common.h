/*
 * Shared by the standalone fork programs. They use the standard allocation functions,
 * so that with LD_PRELOAD they exercise the replacement library, and report by exit
 * status: 0 all good, 1 a check failed, 2 a watchdog fired, 3 not running preloaded.
 */
#ifndef TAMALLOC_FORK_COMMON_H
#define TAMALLOC_FORK_COMMON_H

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KIB ((size_t)1024)
#define MIB (1024 * KIB)

static inline double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* With TAMALLOC_EXPECT_PRELOAD=<name> set, exits with 3 unless a mapping of this
 * process contains <name> (the replacement library really is loaded). */
static inline void require_preload(void)
{
    const char *want = getenv("TAMALLOC_EXPECT_PRELOAD");
    if (!want || !*want)
        return;
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        exit(3);
    char line[1024];
    int found = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, want))
            found = 1;
    fclose(f);
    if (!found) {
        fprintf(stderr, "%s is not mapped in this process\n", want);
        exit(3);
    }
}

static inline uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

struct rng {
    uint64_t s;
};

static inline uint64_t rnd(struct rng *r)
{
    r->s += 0x9E3779B97F4A7C15ull;
    return mix64(r->s);
}

/* Log-uniform size in [1, max]. */
static inline size_t rnd_size(struct rng *r, size_t max)
{
    unsigned bits = 63u - (unsigned)__builtin_clzll(max);
    unsigned b = (unsigned)(rnd(r) % (bits + 1));
    size_t lo = (size_t)1 << b, hi = (lo << 1) - 1;
    if (hi > max)
        hi = max;
    return lo + (size_t)(rnd(r) % (hi - lo + 1));
}

static inline void fill(unsigned char *p, size_t n, uint64_t seed)
{
    uint64_t w = mix64(seed);
    for (size_t i = 0; i < n; i++) {
        if ((i & 7) == 0)
            w = mix64(seed ^ (i >> 3));
        p[i] = (unsigned char)(w >> ((i & 7) * 8));
    }
}

static inline int check(const unsigned char *p, size_t n, uint64_t seed)
{
    uint64_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if ((i & 7) == 0)
            w = mix64(seed ^ (i >> 3));
        if (p[i] != (unsigned char)(w >> ((i & 7) * 8)))
            return 0;
    }
    return 1;
}

/* Waits for a child at most `seconds`; kills it on time-out. Returns its wait status or
 * -1 on time-out. Async-signal-safe apart from the clock. */
static inline int wait_child(pid_t pid, double seconds)
{
    double end = now_seconds() + seconds;
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r < 0 && errno != EINTR)
            return -2;
        if (now_seconds() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        struct timespec ts = {0, 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* Writes a message with write(2) only (usable in children and signal handlers). */
static inline void say(const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(2, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static inline void say_status(const char *what, int status)
{
    char buf[160];
    if (status == -1)
        snprintf(buf, sizeof buf, "%s: the child hung (killed after the time limit)\n", what);
    else if (WIFSIGNALED(status))
        snprintf(buf, sizeof buf, "%s: the child was killed by signal %d (%s)\n", what,
                 WTERMSIG(status), WTERMSIG(status) == SIGALRM ? "its watchdog: it hung"
                                                               : strsignal(WTERMSIG(status)));
    else
        snprintf(buf, sizeof buf, "%s: the child exited with %d\n", what, WEXITSTATUS(status));
    say(buf);
}

static inline int child_ok(int status)
{
    return status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

#endif
