/*
 * pool - a server's thread pool at scale. N threads serve requests; each request
 * allocates a few blocks of 16 B to 64 KiB (log-uniform; 1% of them 64 to 256 KiB),
 * hands a quarter of them to another thread's mailbox to be freed there, frees the rest
 * itself and keeps its response in a small FIFO cache of recent responses (32 to 64 per
 * thread). Then the pool goes quiet: every thread stays alive, blocked, for 1.5 s; then
 * the threads free their caches and exit, and the main thread waits another 1.5 s.
 *
 * The program measures its own resident set at each stage, from /proc/self/status read
 * into a stack buffer, so that measuring never calls the allocator:
 *
 *     rss_start   VmRSS at the very start
 *     live_peak   peak of the bytes requested and not yet freed, counted by the program
 *     rss_peak    VmHWM at the end: the peak resident set of the whole run
 *     rss_idle    VmRSS at the end of the idle pause, all threads alive
 *     rss_exit    VmRSS 1.5 s after the last thread was joined
 *     busy_s      wall time of the busy phase, from the start barrier to the last drain
 *
 * Sizes are in KiB. rss_peak / live_peak is the cost of serving, rss_idle / live_peak
 * what the allocator keeps for a quiet pool, rss_exit - rss_start what it keeps once the
 * threads are gone. The program's own bookkeeping (thread states, mailboxes and the
 * thread stacks) lives in memory mapped directly, outside the allocator, and the stacks
 * are unmapped before rss_exit is read.
 */
#include "wl.h"
#include <sched.h>
#include <sys/mman.h>
#include <time.h>

enum {
    CACHE_MIN = 32,
    CACHE_MAX = 64,
    TEMP_MIN = 2,           /* blocks per request besides the response */
    TEMP_MAX = 8,
    STACK = 256 * 1024,     /* per worker, with a guard page below it */
    GUARD = 4096,
    PAGE = 4096,
    MAILBOX = 64,           /* blocks waiting in one thread's mailbox, at most */
};
#define PAUSE_NS 1500000000L

/*
 * A block is [tag][~tag or mailbox link][...one byte per page...][last byte]. Its size
 * is a function of its tag, so a thread that receives a block knows its size, and the
 * low 16 bits of a tag check the upper 48 before the size is trusted.
 */
static uint64_t make_tag(wl_rng *r)
{
    uint64_t x = wl_next(r) >> 16;
    return (x << 16) | (wl_mix(x) & 0xffff);
}

static int tag_valid(uint64_t tag)
{
    return (wl_mix(tag >> 16) & 0xffff) == (tag & 0xffff);
}

/* Log-uniform by octave: 16 B .. 64 KiB, and 1 in 100 from 64 KiB to 256 KiB. */
static size_t size_of(uint64_t tag)
{
    uint64_t h = wl_mix(tag ^ 0x6a09e667f3bcc909ULL);
    uint64_t g = wl_mix(h);
    unsigned shift = (h % 100 == 0) ? 16 + (unsigned)((h >> 32) & 1)
                                    : 4 + (unsigned)((h >> 32) % 12);
    size_t lo = (size_t)1 << shift;
    return lo + (size_t)(g % lo);
}

static void fill(unsigned char *b, size_t size, uint64_t tag)
{
    uint64_t inv = ~tag;
    memcpy(b, &tag, 8);
    memcpy(b + 8, &inv, 8);
    for (size_t off = PAGE, k = 1; off < size - 1; off += PAGE, k++)
        b[off] = (unsigned char)(tag >> 16) ^ (unsigned char)k;
    if (size > 16)
        b[size - 1] = (unsigned char)(tag >> 40) ^ (unsigned char)size;
}

/* Checks a block; returns its size (0 when the tag itself is damaged). */
static size_t inspect(const unsigned char *b, int linked, uint64_t *sum, int *bad)
{
    uint64_t tag, second;
    memcpy(&tag, b, 8);
    if (!tag_valid(tag)) {
        *bad = 1;
        return 0;
    }
    size_t size = size_of(tag);
    memcpy(&second, b + 8, 8);
    if (!linked && second != ~tag)
        *bad = 1;
    for (size_t off = PAGE, k = 1; off < size - 1; off += PAGE, k++)
        if (b[off] != ((unsigned char)(tag >> 16) ^ (unsigned char)k))
            *bad = 1;
    if (size > 16 && b[size - 1] != ((unsigned char)(tag >> 40) ^ (unsigned char)size))
        *bad = 1;
    *sum += wl_mix(tag ^ size);
    return size;
}

/* ---- live bytes ---------------------------------------------------------------------- */

static uint64_t live_bytes, live_peak;

static void note_alloc(size_t n)
{
    uint64_t now = __atomic_add_fetch(&live_bytes, n, __ATOMIC_RELAXED);
    uint64_t peak = __atomic_load_n(&live_peak, __ATOMIC_RELAXED);
    while (now > peak &&
           !__atomic_compare_exchange_n(&live_peak, &peak, now, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

static void note_free(size_t n)
{
    __atomic_sub_fetch(&live_bytes, n, __ATOMIC_RELAXED);
}

/* ---- workers ------------------------------------------------------------------------- */

typedef struct {
    pthread_mutex_t mu;     /* guards the mailbox */
    pthread_cond_t cv;      /* mail arrived, or every thread has finished its requests */
    void *mailbox;          /* blocks to free, linked through their second word */
    int waiting;            /* how many, under mu */
    int asleep;             /* the owner waits on cv, under mu */
    /* The owner's alone from here, on lines of their own: the lines above are other
     * threads' to write too (wl.h, wl_result). */
    _Alignas(64) uint64_t requests;
    uint64_t seed;
    uint64_t sum;
    uint64_t handed;        /* blocks this thread gave to another one */
    int bad;
    int index;
    int cache_cap, cache_len, cache_next;
    void *cache[CACHE_MAX];
} __attribute__((aligned(64))) worker;

static worker *workers;
static int nworkers;
static pthread_barrier_t start_line, all_drained;
static int finished;        /* threads done with their requests */
static pthread_mutex_t phase_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t phase_cv = PTHREAD_COND_INITIALIZER;
static int leaving;

static void *get(size_t size, uint64_t tag)
{
    unsigned char *p = malloc(size);
    if (!p) {
        fprintf(stderr, "pool: out of memory\n");
        exit(4);
    }
    fill(p, size, tag);
    note_alloc(size);
    return p;
}

static void put(worker *w, void *p, int linked)
{
    size_t size = inspect(p, linked, &w->sum, &w->bad);
    note_free(size);
    free(p);
}

static int try_post(worker *to, void *p)
{
    pthread_mutex_lock(&to->mu);
    int room = to->waiting < MAILBOX;
    if (room) {
        memcpy((char *)p + 8, &to->mailbox, sizeof(void *));
        __atomic_store_n(&to->mailbox, p, __ATOMIC_RELEASE);
        to->waiting++;
        if (to->asleep)
            pthread_cond_signal(&to->cv);
    }
    pthread_mutex_unlock(&to->mu);
    return room;
}

static void drain(worker *w)
{
    if (!__atomic_load_n(&w->mailbox, __ATOMIC_ACQUIRE))
        return;
    pthread_mutex_lock(&w->mu);
    void *p = w->mailbox;
    __atomic_store_n(&w->mailbox, NULL, __ATOMIC_RELAXED);
    w->waiting = 0;
    pthread_mutex_unlock(&w->mu);
    while (p) {
        void *next;
        memcpy(&next, (char *)p + 8, sizeof next);
        put(w, p, 1);
        p = next;
    }
}

static void serve(worker *w, wl_rng *r)
{
    void *mine[TEMP_MAX];
    int kept = 0;
    int n = TEMP_MIN + (int)wl_below(r, TEMP_MAX - TEMP_MIN + 1);
    for (int k = 0; k < n; k++) {
        uint64_t tag = make_tag(r);
        void *p = get(size_of(tag), tag);
        if (wl_below(r, 4) == 0) {
            /* With one thread the block goes to its own mailbox: freed later, still. */
            int to = nworkers > 1 ? (w->index + 1 + (int)wl_below(r, (uint32_t)nworkers - 1)) % nworkers
                                  : w->index;
            /* A full mailbox holds the sender back: it frees what it has received
             * meanwhile and lets the other threads run, so mailboxes stay bounded
             * and no two threads can wait for each other for ever. */
            while (!try_post(&workers[to], p)) {
                drain(w);
                sched_yield();
            }
            w->handed++;
        } else {
            mine[kept++] = p;
        }
    }
    uint64_t tag = make_tag(r);
    void *response = get(size_of(tag), tag);
    for (int k = 0; k < kept; k++)
        put(w, mine[k], 0);
    if (w->cache_len == w->cache_cap)
        put(w, w->cache[w->cache_next], 0);
    else
        w->cache_len++;
    w->cache[w->cache_next] = response;
    w->cache_next = (w->cache_next + 1) % w->cache_cap;
}

static void *run(void *v)
{
    worker *w = v;
    wl_rng r = wl_rng_make(w->seed, 11);
    pthread_barrier_wait(&start_line);
    for (uint64_t i = 0; i < w->requests; i++) {
        drain(w);
        serve(w, &r);
    }

    /* Keep emptying the mailbox until nobody can send any more. */
    if (__atomic_add_fetch(&finished, 1, __ATOMIC_ACQ_REL) == nworkers)
        for (int i = 0; i < nworkers; i++) {
            pthread_mutex_lock(&workers[i].mu);
            pthread_cond_signal(&workers[i].cv);
            pthread_mutex_unlock(&workers[i].mu);
        }
    for (;;) {
        drain(w);
        pthread_mutex_lock(&w->mu);
        while (!w->mailbox && __atomic_load_n(&finished, __ATOMIC_ACQUIRE) < nworkers) {
            w->asleep = 1;
            pthread_cond_wait(&w->cv, &w->mu);
            w->asleep = 0;
        }
        int done = !w->mailbox;
        pthread_mutex_unlock(&w->mu);
        if (done)
            break;
    }
    pthread_barrier_wait(&all_drained);

    /* Idle: alive, blocked, holding the cache. */
    pthread_mutex_lock(&phase_mu);
    while (!leaving)
        pthread_cond_wait(&phase_cv, &phase_mu);
    pthread_mutex_unlock(&phase_mu);

    for (int k = 0; k < w->cache_len; k++)
        put(w, w->cache[k], 0);
    w->cache_len = 0;
    return NULL;
}

/* ---- measuring without allocating ----------------------------------------------------- */

static long status_field(const char *text, const char *key)
{
    const char *line = strstr(text, key);
    return line ? strtol(line + strlen(key), NULL, 10) : -1;
}

/* VmRSS and VmHWM in KiB, read into a buffer on the stack. */
static void read_rss(long *rss, long *hwm)
{
    char buf[8192];
    ssize_t len = 0, n;
    *rss = *hwm = -1;
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    while (len < (ssize_t)sizeof(buf) - 1 &&
           (n = read(fd, buf + len, sizeof(buf) - 1 - (size_t)len)) > 0)
        len += n;
    close(fd);
    buf[len] = '\0';
    *rss = status_field(buf, "\nVmRSS:");
    *hwm = status_field(buf, "\nVmHWM:");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void pause_quietly(void)
{
    struct timespec ts = { PAUSE_NS / 1000000000L, PAUSE_NS % 1000000000L };
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR)
        ;
}

static void *map(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "pool: mmap of %zu bytes failed\n", bytes);
        exit(4);
    }
    return p;
}

static void figure(const char *key, long value)
{
    wl_figure(key, value < 0 ? 0 : (unsigned long long)value);
}

int main(int argc, char **argv)
{
    long rss_start, rss_idle, rss_exit, rss_peak, unused;
    read_rss(&rss_start, &unused);

    wl_args a = wl_parse(argc, argv, "a pool of threads serving requests, then idle, then gone");
    int T = a.threads;
    uint64_t total = wl_count(a.scale, 240000, 2000);
    nworkers = T;

    /* Bookkeeping outside the allocator: thread states, thread ids and stacks. */
    size_t states_bytes = (size_t)T * sizeof(worker) + (size_t)T * sizeof(pthread_t);
    workers = map(states_bytes);
    pthread_t *tids = (pthread_t *)(workers + T);
    size_t slot = STACK + GUARD;
    unsigned char *stacks = map((size_t)T * slot);

    wl_rng setup = wl_rng_make(a.seed, 7);
    for (int i = 0; i < T; i++) {
        worker *w = &workers[i];
        pthread_mutex_init(&w->mu, NULL);
        pthread_cond_init(&w->cv, NULL);
        w->index = i;
        w->requests = total / (uint64_t)T + ((uint64_t)i < total % (uint64_t)T);
        w->seed = a.seed * 1000003 + (uint64_t)i;
        w->cache_cap = CACHE_MIN + (int)wl_below(&setup, CACHE_MAX - CACHE_MIN + 1);
    }
    pthread_barrier_init(&start_line, NULL, (unsigned)T + 1);
    pthread_barrier_init(&all_drained, NULL, (unsigned)T + 1);

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    for (int i = 0; i < T; i++) {
        unsigned char *base = stacks + (size_t)i * slot;
        if (mprotect(base, GUARD, PROT_NONE) != 0 ||
            pthread_attr_setstack(&attr, base + GUARD, STACK) != 0) {
            fprintf(stderr, "pool: cannot set up a thread stack\n");
            return 4;
        }
        int rc = pthread_create(&tids[i], &attr, run, &workers[i]);
        if (rc != 0) {
            fprintf(stderr, "pthread_create: %s\n", strerror(rc));
            return 4;
        }
    }
    pthread_attr_destroy(&attr);

    /* 1. Busy. */
    pthread_barrier_wait(&start_line);
    double t0 = now_s();
    pthread_barrier_wait(&all_drained);
    double busy = now_s() - t0;

    /* 2. Idle: every thread alive and blocked. */
    pause_quietly();
    read_rss(&rss_idle, &unused);

    /* 3. Exit: the threads free their caches and end; nothing here calls the allocator. */
    pthread_mutex_lock(&phase_mu);
    leaving = 1;
    pthread_cond_broadcast(&phase_cv);
    pthread_mutex_unlock(&phase_mu);
    uint64_t sum = total, handed = 0;
    int bad = 0;
    for (int i = 0; i < T; i++) {
        wl_join(tids[i]);
        sum += workers[i].sum;
        handed += workers[i].handed;
        bad |= workers[i].bad;
        if (workers[i].mailbox)
            bad = 1;
    }
    munmap(stacks, (size_t)T * slot);
    munmap(workers, states_bytes);
    pause_quietly();
    read_rss(&rss_exit, &rss_peak);

    if (__atomic_load_n(&live_bytes, __ATOMIC_RELAXED) != 0)
        bad = 1;
    sum += wl_mix(handed);

    figure("requests", (long)total);
    figure("handed", (long)handed);
    figure("live_peak", (long)(live_peak / 1024));
    figure("rss_start", rss_start);
    figure("rss_peak", rss_peak);
    figure("rss_idle", rss_idle);
    figure("rss_exit", rss_exit);
    static char line[64];
    snprintf(line, sizeof line, "busy_s %.3f\n", busy);
    wl_put(line);
    return wl_report(sum, bad);
}
