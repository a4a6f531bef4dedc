/*
 * wl.h - small helpers shared by the workload programs.
 *
 * Every workload calls only the plain C allocation functions, so any allocator can be
 * put underneath with LD_PRELOAD. This header gives them a common command line
 * (-t threads, -n scale, -s seed, -m size mix), a deterministic random generator, block stamps that
 * detect corruption, and the closing report the driver parses:
 *
 *     checksum <16 hex digits>     depends only on the parameters, never on the allocator
 *     verify ok|FAILED             the program's own integrity checks
 *     vmhwm_kib <n>                peak resident set, read from /proc just before exit
 *     <key> <value>                optional extra figures
 *
 * The report is written with write(2) from static buffers so that reading VmHWM does not
 * itself allocate.
 */
#ifndef BENCH_WL_H
#define BENCH_WL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* ---- command line ---------------------------------------------------------------- */

typedef struct {
    int threads;      /* -t: worker threads (programs without threads ignore it)      */
    double scale;     /* -n: multiplies the amount of work; 1.0 is the full-run size */
    uint64_t seed;    /* -s: base seed for the random generators                      */
    int mix;          /* -m: which size mix, for programs that have several; 0 the usual */
} wl_args;

static inline void wl_usage(const char *prog, const char *what)
{
    fprintf(stderr, "usage: %s [-t THREADS] [-n SCALE] [-s SEED] [-m MIX]\n  %s\n", prog, what);
    exit(2);
}

static inline wl_args wl_parse(int argc, char **argv, const char *what)
{
    wl_args a = {1, 1.0, 42, 0};
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (i + 1 >= argc || opt[0] != '-' || opt[2] != '\0')
            wl_usage(argv[0], what);
        const char *val = argv[++i];
        char *end = NULL;
        errno = 0;
        switch (opt[1]) {
        case 't': a.threads = (int)strtol(val, &end, 10); break;
        case 'n': a.scale = strtod(val, &end); break;
        case 's': a.seed = strtoull(val, &end, 10); break;
        case 'm': a.mix = (int)strtol(val, &end, 10); break;
        default: wl_usage(argv[0], what);
        }
        if (errno || end == val || *end != '\0')
            wl_usage(argv[0], what);
    }
    if (a.threads < 1 || a.threads > 4096 || !(a.scale > 0.0) || a.scale > 1000.0 ||
        a.mix < 0 || a.mix > 9)
        wl_usage(argv[0], what);
    return a;
}

/* Scale a base count, never below a floor. */
static inline uint64_t wl_count(double scale, double base, uint64_t floor_)
{
    double v = base * scale;
    return v < (double)floor_ ? floor_ : (uint64_t)v;
}

/* ---- random numbers: a 64-bit mixing counter (the SplitMix construction) ---------- */

typedef struct { uint64_t state; } wl_rng;

static inline uint64_t wl_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline wl_rng wl_rng_make(uint64_t seed, uint64_t stream)
{
    wl_rng r = { wl_mix(seed * 0x9e3779b97f4a7c15ULL + stream + 1) };
    return r;
}

static inline uint64_t wl_next(wl_rng *r)
{
    r->state += 0x9e3779b97f4a7c15ULL;
    return wl_mix(r->state);
}

/* Uniform in [0, n). */
static inline uint32_t wl_below(wl_rng *r, uint32_t n)
{
    return (uint32_t)(((wl_next(r) >> 32) * (uint64_t)n) >> 32);
}

/* Uniform in [lo, hi]. */
static inline size_t wl_range(wl_rng *r, size_t lo, size_t hi)
{
    return lo + (size_t)(wl_next(r) % (uint64_t)(hi - lo + 1));
}

/* ---- block stamps ------------------------------------------------------------------ */

/*
 * A stamp writes a tag at the start of a block and its complement at the end (or one
 * byte of it for blocks under 8 bytes). wl_check returns the tag's contribution to a
 * checksum, or sets *bad when the block was overwritten behind the program's back.
 */
static inline void wl_stamp(void *p, size_t size, uint64_t tag)
{
    unsigned char *b = (unsigned char *)p;
    if (size >= 16) {
        uint64_t inv = ~tag;
        memcpy(b, &tag, 8);
        memcpy(b + size - 8, &inv, 8);
    } else if (size >= 8) {
        memcpy(b, &tag, 8);
    } else if (size > 0) {
        b[0] = (unsigned char)tag;
        b[size - 1] = (unsigned char)(tag >> 8) ^ (unsigned char)size;
    }
}

static inline uint64_t wl_check(const void *p, size_t size, uint64_t tag, int *bad)
{
    const unsigned char *b = (const unsigned char *)p;
    if (size >= 8) {
        uint64_t head;
        memcpy(&head, b, 8);
        if (head != tag)
            *bad = 1;
        if (size >= 16) {
            uint64_t tail;
            memcpy(&tail, b + size - 8, 8);
            if (tail != ~tag)
                *bad = 1;
        }
    } else if (size > 0) {
        if (size == 1) {
            /* Both writes land on the same byte; the second one wins. */
            if (b[0] != (unsigned char)((unsigned char)(tag >> 8) ^ 1u))
                *bad = 1;
        } else if (b[0] != (unsigned char)tag ||
                   b[size - 1] != ((unsigned char)(tag >> 8) ^ (unsigned char)size)) {
            *bad = 1;
        }
    }
    return wl_mix(tag ^ size);
}

/* ---- threads ------------------------------------------------------------------------ */

static inline void wl_spawn(pthread_t *t, void *(*fn)(void *), void *arg)
{
    int rc = pthread_create(t, NULL, fn, arg);
    if (rc != 0) {
        fprintf(stderr, "pthread_create: %s\n", strerror(rc));
        exit(4);
    }
}

static inline void wl_join(pthread_t t)
{
    int rc = pthread_join(t, NULL);
    if (rc != 0) {
        fprintf(stderr, "pthread_join: %s\n", strerror(rc));
        exit(4);
    }
}

/* What a worker leaves behind: a checksum of the data it saw and whether any of it was
 * wrong. The job structs of the threaded workloads begin with one, so that wl_run can start,
 * wait for and add up any of them. A worker adds up into a wl_result of its own and stores
 * it into its job when it ends (and so for any count of its own): the jobs lie side by side
 * in one block, so a field each thread wrote in its loop shared a cache line with its
 * neighbour's, at a cost that depended on where the allocator had put that block (server
 * -t 2 took 2.1 to 2.7 times as long as with the counts in locals, under jemalloc,
 * mimalloc and tamalloc). */
typedef struct {
    uint64_t sum;
    int bad;
} wl_result;

/* Runs fn on each of n jobs (each `size` bytes, beginning with a wl_result) in a thread of
 * its own, waits for them all, and returns their checksums added up and their flags. */
static inline wl_result wl_run(void *jobs, size_t size, int n, void *(*fn)(void *))
{
    pthread_t *tids = calloc((size_t)n, sizeof *tids);
    if (!tids) {
        fprintf(stderr, "wl_run: out of memory\n");
        exit(4);
    }
    for (int i = 0; i < n; i++)
        wl_spawn(&tids[i], fn, (char *)jobs + (size_t)i * size);
    wl_result all = {0, 0};
    for (int i = 0; i < n; i++) {
        wl_join(tids[i]);
        const wl_result *r = (const wl_result *)((const char *)jobs + (size_t)i * size);
        all.sum += r->sum;
        all.bad |= r->bad;
    }
    free(tids);
    return all;
}

/* The false-sharing workloads' work on one small object: fills its `obj` bytes and a copy
 * on the stack, writes both `writes` times (the object's cache line must stay with this
 * core), then checks the object against the copy and adds the copy to the checksum. */
static inline void wl_hammer(volatile unsigned char *p, int obj, int writes, uint64_t i,
                             uint64_t id, wl_result *res)
{
    unsigned char shadow[256];
    if (obj > (int)sizeof shadow)
        obj = (int)sizeof shadow;
    for (int b = 0; b < obj; b++)
        p[b] = shadow[b] = (unsigned char)(i + (uint64_t)b);
    for (int w = 0; w < writes; w++) {
        int b = w % obj;
        p[b] = (unsigned char)(p[b] * 3u + (unsigned)w + (unsigned)id);
        shadow[b] = (unsigned char)(shadow[b] * 3u + (unsigned)w + (unsigned)id);
    }
    for (int b = 0; b < obj; b++) {
        if (p[b] != shadow[b])
            res->bad = 1;
        res->sum += shadow[b];
    }
}

/* ---- the closing report -------------------------------------------------------------- */

/* A line of /proc/self/status ("\nVmRSS:", "\nVmHWM:"), in KiB, or -1; read into a buffer on
 * the stack, so that measuring never calls the allocator. */
static inline long wl_status_kib(const char *key)
{
    char buf[8192];
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t len = 0, n;
    while (len < (ssize_t)sizeof(buf) - 1 &&
           (n = read(fd, buf + len, sizeof(buf) - 1 - (size_t)len)) > 0)
        len += n;
    close(fd);
    buf[len < 0 ? 0 : len] = '\0';
    const char *line = strstr(buf, key);
    if (!line)
        return -1;
    return strtol(line + strlen(key), NULL, 10);
}

static inline long wl_vmhwm_kib(void) { return wl_status_kib("\nVmHWM:"); }

/* Voluntary context switches (the times a thread blocked, and was woken): the calling
 * thread's own, and the whole process's, threads that have ended included. A program that
 * takes its own threads' at their ends, and its main thread's, has the rest: what threads it
 * did not start did (an allocator's own, such as a background purger, however many times it
 * came and went). */
static inline unsigned long long wl_thread_switches(void) {
  struct rusage u;
  return getrusage(RUSAGE_THREAD, &u) == 0 ? (unsigned long long)u.ru_nvcsw : 0;
}
static inline unsigned long long wl_process_switches(void) {
  struct rusage u;
  return getrusage(RUSAGE_SELF, &u) == 0 ? (unsigned long long)u.ru_nvcsw : 0;
}
static inline long wl_vmrss_kib(void) { return wl_status_kib("\nVmRSS:"); }

static inline void wl_put(const char *text)
{
    size_t len = strlen(text);
    while (len > 0) {
        ssize_t n = write(1, text, len);
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            return;
        }
        text += n;
        len -= (size_t)n;
    }
}

/* Extra figure, printed before the closing report. */
static inline void wl_figure(const char *key, unsigned long long value)
{
    static char line[128];
    fflush(stdout);
    snprintf(line, sizeof line, "%s %llu\n", key, value);
    wl_put(line);
}

/* Prints the closing report; returns the exit status for main (3 when verification failed). */
static inline int wl_report(uint64_t checksum, int bad)
{
    static char line[256];
    fflush(stdout);
    long hwm = wl_vmhwm_kib();
    snprintf(line, sizeof line, "checksum %016llx\nverify %s\nvmhwm_kib %ld\n",
             (unsigned long long)checksum, bad ? "FAILED" : "ok", hwm);
    wl_put(line);
    return bad ? 3 : 0;
}

#endif
