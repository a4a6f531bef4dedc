/*
 * Multithreaded stress through the ta_ API, every byte verified.
 *
 * Worker threads allocate blocks of random sizes (1 byte .. several MiB) through every
 * entry point, fill them with a pattern derived from (thread, block id), reallocate them,
 * free them, and pass many of them to other threads, which check the pattern before
 * freeing or adopting them. Variants: waves of threads created and joined with blocks
 * outliving their threads, a ring where every block visits every thread, one entry
 * point at a time, and fork while the workers allocate (the child checks and frees
 * blocks, then allocates on its own).
 *
 * Each test is bounded in time: TAMALLOC_STRESS_SECONDS (default 2, 1 under sanitizers).
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tamalloc.h>

#include "tatest.h"

#define MAX_THREADS 16
#define MAX_LIVE 1024
#define MAILBOX_CAP 512

static double stress_seconds(void)
{
    return tt_env_seconds("TAMALLOC_STRESS_SECONDS", TT_SANITIZER ? 1.0 : 2.0);
}

/* ---- blocks ------------------------------------------------------------------------ */

struct block {
    unsigned char *p;
    size_t size;  /* bytes that carry the pattern */
    size_t align; /* alignment it was allocated with (0: default) */
    uint64_t seed;
    uint8_t entry;
};

static _Atomic long failures;
static char failure_text[512];
static pthread_mutex_t failure_lock = PTHREAD_MUTEX_INITIALIZER;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    if (atomic_fetch_add(&failures, 1) == 0) {
        va_list ap;
        va_start(ap, fmt);
        pthread_mutex_lock(&failure_lock);
        vsnprintf(failure_text, sizeof failure_text, fmt, ap);
        pthread_mutex_unlock(&failure_lock);
        va_end(ap);
    }
}

static void assert_no_failures(void)
{
    long n = atomic_load(&failures);
    pthread_mutex_lock(&failure_lock);
    cr_assert_eq(n, 0, "%ld failures; first: %s", n, failure_text);
    pthread_mutex_unlock(&failure_lock);
}

static size_t random_size(tt_rng *g)
{
    uint64_t r = tt_rand(g) % 1000;
    size_t cap = TT_SANITIZER ? 2 * TT_MIB : 12 * TT_MIB;
    if (r < 650)
        return tt_rand_between(g, 1, 256);
    if (r < 900)
        return tt_rand_between(g, 257, TT_SMALL_MAX);
    if (r < 985)
        return tt_range_random(TT_RANGE_MEDIUM, g);
    if (r < 998)
        return tt_rand_between(g, TT_MEDIUM_MAX + 1, cap < 4 * TT_MIB ? cap : 4 * TT_MIB);
    return tt_rand_between(g, 4 * TT_MIB, cap);
}

static bool verify(const struct block *b, const char *when)
{
    size_t bad = tt_check(b->p, b->size, b->seed);
    if (bad != SIZE_MAX) {
        fail("%s: block %p (%s, %zu bytes, alignment %zu) has a wrong byte at offset %zu: "
             "0x%02x instead of 0x%02x",
             when, (void *)b->p, tt_entry_name((enum tt_entry)b->entry), b->size, b->align,
             bad, b->p[bad], tt_pattern_byte(b->seed, bad));
        return false;
    }
    return true;
}

/* Allocates a block through entry point e and fills it. */
static bool make_block(struct block *b, enum tt_entry e, size_t size, uint64_t seed, tt_rng *g)
{
    static const size_t aligns[] = {8, 16, 32, 64, 128, 256, 1024, 4096, 8192, 65536};
    size_t align = 0;
    if (tt_entry_takes_alignment(e)) {
        align = aligns[tt_rand(g) % (sizeof aligns / sizeof *aligns)];
        if (tt_rand(g) % 50 == 0)
            align = TT_MIB << (tt_rand(g) % 3);
    }
    unsigned char *p;
    if (e == TT_CALLOC && size % 4 == 0 && tt_rand(g) % 2)
        p = ta_calloc(size / 4, 4);
    else if (e == TT_REALLOCARRAY && size % 8 == 0)
        p = ta_reallocarray(NULL, 8, size / 8);
    else
        p = tt_alloc(e, size, align);
    if (!p) {
        fail("%s(%zu, alignment %zu) returned NULL (errno %d)", tt_entry_name(e), size, align,
             errno);
        return false;
    }
    size_t need = tt_required_alignment(e, align);
    if ((uintptr_t)p % need) {
        fail("%s(%zu, alignment %zu) returned %p", tt_entry_name(e), size, align, (void *)p);
        return false;
    }
    size_t usable = ta_malloc_usable_size(p);
    if (usable < tt_required_usable(e, size)) {
        fail("%s(%zu): usable size %zu", tt_entry_name(e), size, usable);
        return false;
    }
    if (e == TT_CALLOC) {
        size_t bad = tt_check_zero(p, size);
        if (bad != SIZE_MAX) {
            fail("calloc(%zu) = %p: byte %zu is 0x%02x, not zero", size, (void *)p, bad, p[bad]);
            return false;
        }
    }
    *b = (struct block){p, size, align, seed, (uint8_t)e};
    tt_fill(p, size, seed);
    /* The tail beyond the request is writable too. */
    if (usable > size)
        memset(p + size, 0xfe, usable - size < 64 ? usable - size : 64);
    return true;
}

static void release_block(struct block *b, tt_rng *g)
{
    uint64_t how = tt_rand(g) % 8;
    if (how == 0 && !tt_entry_takes_alignment((enum tt_entry)b->entry) &&
        b->entry != TT_VALLOC && b->entry != TT_PVALLOC)
        ta_free_sized(b->p, b->size);
    else if (how == 1 && (b->entry == TT_ALIGNED_ALLOC || b->entry == TT_POSIX_MEMALIGN))
        ta_free_aligned_sized(b->p, b->align, b->size);
    else
        ta_free(b->p);
    b->p = NULL;
}

/* Reallocates b to a new size: the prefix must survive. */
static bool resize_block(struct block *b, tt_rng *g)
{
    size_t n;
    uint64_t r = tt_rand(g) % 4;
    if (r == 0)
        n = b->size + tt_rand_between(g, 0, 100);
    else if (r == 1)
        n = b->size / 2 + 1;
    else
        n = random_size(g);
    unsigned char *q;
    if (tt_rand(g) % 4 == 0 && n % 16 == 0)
        q = ta_reallocarray(b->p, n / 16, 16);
    else
        q = ta_realloc(b->p, n);
    if (!q) {
        fail("realloc(%p, %zu -> %zu) returned NULL", (void *)b->p, b->size, n);
        return false;
    }
    if ((uintptr_t)q % 16) {
        fail("realloc returned %p, not 16-aligned", (void *)q);
        return false;
    }
    size_t keep = b->size < n ? b->size : n;
    b->p = q;
    size_t old = b->size;
    b->size = keep;
    if (!verify(b, "after realloc"))
        return false;
    if (ta_malloc_usable_size(q) < n) {
        fail("realloc(%zu -> %zu): usable size %zu", old, n, ta_malloc_usable_size(q));
        return false;
    }
    tt_fill_range(q, keep, n - keep, b->seed);
    b->size = n;
    b->entry = TT_REALLOC;
    b->align = 0;
    return true;
}

/* ---- mailboxes: blocks travelling between threads ------------------------------------ */

struct mailbox {
    pthread_mutex_t lock;
    struct block items[MAILBOX_CAP];
    int count;
};

static struct mailbox mailboxes[MAX_THREADS];

static void mailboxes_init(void)
{
    for (int i = 0; i < MAX_THREADS; i++) {
        pthread_mutex_init(&mailboxes[i].lock, NULL);
        mailboxes[i].count = 0;
    }
}

static bool post(int to, const struct block *b)
{
    struct mailbox *m = &mailboxes[to];
    pthread_mutex_lock(&m->lock);
    bool ok = m->count < MAILBOX_CAP;
    if (ok)
        m->items[m->count++] = *b;
    pthread_mutex_unlock(&m->lock);
    return ok;
}

/* Takes up to `max` blocks out of mailbox `me`. */
static int collect(int me, struct block *out, int max)
{
    struct mailbox *m = &mailboxes[me];
    if (pthread_mutex_trylock(&m->lock) != 0)
        return 0;
    int n = m->count < max ? m->count : max;
    for (int i = 0; i < n; i++)
        out[i] = m->items[--m->count];
    pthread_mutex_unlock(&m->lock);
    return n;
}

static void drain_mailboxes(int nthreads)
{
    tt_rng g;
    tt_rng_seed(&g, 1);
    for (int t = 0; t < nthreads; t++) {
        struct mailbox *m = &mailboxes[t];
        pthread_mutex_lock(&m->lock);
        while (m->count > 0) {
            struct block b = m->items[--m->count];
            verify(&b, "left in a mailbox");
            release_block(&b, &g);
        }
        pthread_mutex_unlock(&m->lock);
    }
}

/* ---- the worker ---------------------------------------------------------------------- */

struct worker_config {
    int nthreads;
    double deadline;
    int only_entry; /* -1: all entry points */
    size_t live_bytes_cap;
    bool ring;       /* pass blocks only to the next thread */
    atomic_int *stop; /* if set, the workers run until it is non-zero, not until the deadline */
};

/* Tests that need a number of operations whatever the load ask for it here: the workers then
 * go on past the deadline until they made ops_wanted operations together. Each test runs in a
 * process of its own: these start at 0. */
static _Atomic long ops_made, ops_wanted;

static bool keep_working(const struct worker_config *cfg)
{
    if (atomic_load(&failures) != 0)
        return false;
    if (atomic_load(&ops_made) < atomic_load(&ops_wanted))
        return true;
    return cfg->stop ? atomic_load(cfg->stop) == 0 : tt_now() < cfg->deadline;
}

struct worker {
    int id;
    uint64_t wave;
    const struct worker_config *cfg;
    struct block live[MAX_LIVE];
    int nlive;
    size_t live_bytes;
    long ops;
    pthread_t thread;
    /* Blocks the worker leaves behind when it exits (waves). */
    struct block *leave;
    int nleave, leave_cap;
};

static void adopt(struct worker *w, struct block *b, tt_rng *g)
{
    if (!verify(b, "received from another thread")) {
        b->p = NULL;
        return;
    }
    uint64_t r = tt_rand(g) % 4;
    if (r < 2 || w->nlive >= MAX_LIVE) {
        release_block(b, g);
        return;
    }
    if (r == 2 && !resize_block(b, g))
        return;
    w->live[w->nlive++] = *b;
    w->live_bytes += b->size;
}

static void worker_step(struct worker *w, tt_rng *g)
{
    const struct worker_config *cfg = w->cfg;
    uint64_t op = tt_rand(g) % 100;
    bool full = w->nlive >= MAX_LIVE || w->live_bytes > cfg->live_bytes_cap;
    if (w->nlive == 0 || (op < 45 && !full)) {
        enum tt_entry e = cfg->only_entry >= 0 ? (enum tt_entry)cfg->only_entry
                                               : (enum tt_entry)(tt_rand(g) % TT_ENTRY_COUNT);
        struct block b;
        size_t size = random_size(g);
        uint64_t seed = tt_mix(tt_mix((uint64_t)w->id, w->wave), (uint64_t)w->ops);
        if (!make_block(&b, e, size, seed, g))
            return;
        w->live[w->nlive++] = b;
        w->live_bytes += b.size;
        return;
    }
    int k = (int)(tt_rand(g) % (uint64_t)w->nlive);
    struct block *b = &w->live[k];
    if (op < 70 || full) {
        if (verify(b, "before free"))
            release_block(b, g);
        w->live_bytes -= b->size;
        w->live[k] = w->live[--w->nlive];
    } else if (op < 85) {
        size_t before = b->size;
        if (!verify(b, "before realloc") || !resize_block(b, g)) {
            w->live_bytes -= before;
            w->live[k] = w->live[--w->nlive];
            return;
        }
        w->live_bytes = w->live_bytes - before + b->size;
    } else if (cfg->nthreads > 1) {
        int to = cfg->ring ? (w->id + 1) % cfg->nthreads
                           : (int)((w->id + 1 + tt_rand(g) % (uint64_t)(cfg->nthreads - 1)) %
                                   (uint64_t)cfg->nthreads);
        if (post(to, b)) {
            w->live_bytes -= b->size;
            w->live[k] = w->live[--w->nlive];
        }
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    tt_rng g;
    tt_rng_seed(&g, tt_mix((uint64_t)w->id + 1, w->wave));
    struct block inbox[32];
    while (keep_working(w->cfg)) {
        atomic_fetch_add(&ops_made, 64);
        for (int i = 0; i < 64; i++) {
            worker_step(w, &g);
            w->ops++;
        }
        int n = collect(w->id, inbox, 32);
        for (int i = 0; i < n; i++)
            adopt(w, &inbox[i], &g);
    }
    /* Leave some blocks to whoever comes next; free the rest. */
    while (w->nlive > 0) {
        struct block *b = &w->live[--w->nlive];
        if (w->leave && w->nleave < w->leave_cap && tt_rand(&g) % 2 == 0) {
            w->leave[w->nleave++] = *b;
            continue;
        }
        if (verify(b, "at thread end"))
            release_block(b, &g);
    }
    return NULL;
}

static struct worker workers[MAX_THREADS];

static void run_workers(struct worker_config *cfg, uint64_t wave, struct block **leave,
                        int *nleave, int leave_cap)
{
    atomic_store(&ops_made, 0);
    for (int i = 0; i < cfg->nthreads; i++) {
        struct worker *w = &workers[i];
        memset(w, 0, sizeof *w);
        w->id = i;
        w->wave = wave;
        w->cfg = cfg;
        if (leave) {
            w->leave = leave[i];
            w->nleave = nleave[i];
            w->leave_cap = leave_cap;
        }
    }
    for (int i = 0; i < cfg->nthreads; i++) {
        int rc = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
        cr_assert_eq(rc, 0, "pthread_create: %s", strerror(rc));
    }
    for (int i = 0; i < cfg->nthreads; i++) {
        pthread_join(workers[i].thread, NULL);
        if (leave)
            nleave[i] = workers[i].nleave;
    }
}

static long total_ops(int n)
{
    long ops = 0;
    for (int i = 0; i < n; i++)
        ops += workers[i].ops;
    return ops;
}

/* ---- tests --------------------------------------------------------------------------- */

Test(stress, all_entry_points_cross_thread, .timeout = 120)
{
    atomic_store(&ops_wanted, 1001); /* however loaded the machine is */
    mailboxes_init();
    struct worker_config cfg = {4, tt_now() + stress_seconds(), -1,
                                TT_SANITIZER ? 16 * TT_MIB : 64 * TT_MIB, false, NULL};
    run_workers(&cfg, 0, NULL, NULL, 0);
    drain_mailboxes(cfg.nthreads);
    assert_no_failures();
    cr_log_info("%ld operations", total_ops(cfg.nthreads));
    cr_assert(total_ops(cfg.nthreads) > 1000, "too few operations: %ld",
              total_ops(cfg.nthreads));
}

Test(stress, many_threads_oversubscribed, .timeout = 120)
{
    mailboxes_init();
    struct worker_config cfg = {MAX_THREADS, tt_now() + stress_seconds(), -1,
                                TT_SANITIZER ? 4 * TT_MIB : 16 * TT_MIB, false, NULL};
    run_workers(&cfg, 0, NULL, NULL, 0);
    drain_mailboxes(cfg.nthreads);
    assert_no_failures();
}

Test(stress, ring_every_block_visits_every_thread, .timeout = 120)
{
    mailboxes_init();
    struct worker_config cfg = {6, tt_now() + stress_seconds(), -1,
                                TT_SANITIZER ? 8 * TT_MIB : 32 * TT_MIB, true, NULL};
    run_workers(&cfg, 0, NULL, NULL, 0);
    drain_mailboxes(cfg.nthreads);
    assert_no_failures();
}

/* Waves of threads, each wave adopting the blocks the previous one left behind. */
Test(stress, waves_of_threads, .timeout = 180)
{
    enum { WAVES = 24, PER_WAVE = 6, LEAVE = 64 };
    static struct block left[PER_WAVE][LEAVE];
    struct block *leave[PER_WAVE];
    int nleave[PER_WAVE] = {0};
    for (int i = 0; i < PER_WAVE; i++)
        leave[i] = left[i];
    double slice = stress_seconds() / WAVES;
    tt_rng g;
    tt_rng_seed(&g, 17);
    for (int wave = 0; wave < WAVES && atomic_load(&failures) == 0; wave++) {
        mailboxes_init();
        /* The new wave receives the previous wave's blocks in its mailboxes. */
        for (int i = 0; i < PER_WAVE; i++) {
            int j = 0;
            for (; j < nleave[i]; j++) {
                if (!post((i + wave) % PER_WAVE, &left[i][j]))
                    break;
            }
            for (; j < nleave[i]; j++)
                if (verify(&left[i][j], "left by a previous wave"))
                    release_block(&left[i][j], &g);
            nleave[i] = 0;
        }
        struct worker_config cfg = {PER_WAVE, tt_now() + slice, -1,
                                    TT_SANITIZER ? 4 * TT_MIB : 24 * TT_MIB, false, NULL};
        run_workers(&cfg, (uint64_t)wave + 1, leave, nleave, LEAVE);
        drain_mailboxes(PER_WAVE);
    }
    for (int i = 0; i < PER_WAVE; i++)
        for (int j = 0; j < nleave[i]; j++)
            if (verify(&left[i][j], "left by the last wave"))
                release_block(&left[i][j], &g);
    assert_no_failures();
}

/* One entry point at a time (cross-thread frees and reallocs still mixed in). */
ParameterizedTestParameters(stress, single_entry_point)
{
    static int params[TT_ENTRY_COUNT];
    for (int i = 0; i < TT_ENTRY_COUNT; i++)
        params[i] = i;
    return cr_make_param_array(int, params, TT_ENTRY_COUNT);
}

ParameterizedTest(int *entry, stress, single_entry_point, .timeout = 120)
{
    mailboxes_init();
    struct worker_config cfg = {3, tt_now() + stress_seconds() / 4, *entry,
                                TT_SANITIZER ? 8 * TT_MIB : 32 * TT_MIB, false, NULL};
    run_workers(&cfg, (uint64_t)*entry, NULL, NULL, 0);
    drain_mailboxes(cfg.nthreads);
    assert_no_failures();
}

/* Only small blocks, at a high rate: the fast paths and remote lists under contention. */
static void *small_churn(void *arg)
{
    uintptr_t id = (uintptr_t)arg;
    tt_rng g;
    tt_rng_seed(&g, id);
    enum { SLOTS = 256 };
    struct block mine[SLOTS] = {{0}};
    double end = tt_now() + stress_seconds() / 2;
    long n = 0;
    while (tt_now() < end && atomic_load(&failures) == 0) {
        for (int i = 0; i < 256; i++, n++) {
            int k = (int)(tt_rand(&g) % SLOTS);
            if (mine[k].p) {
                verify(&mine[k], "small churn");
                if (tt_rand(&g) % 3 == 0 && post((int)((id + 1) % 4), &mine[k]))
                    mine[k].p = NULL;
                else
                    release_block(&mine[k], &g);
            } else {
                size_t size = tt_rand_between(&g, 1, 512);
                make_block(&mine[k], (enum tt_entry)(n % 2 ? TT_MALLOC : TT_CALLOC), size,
                           tt_mix(id, (uint64_t)n), &g);
            }
        }
        struct block in[64];
        int got = collect((int)id, in, 64);
        for (int i = 0; i < got; i++) {
            verify(&in[i], "small churn, received");
            release_block(&in[i], &g);
        }
    }
    for (int k = 0; k < SLOTS; k++)
        if (mine[k].p && verify(&mine[k], "small churn, end"))
            release_block(&mine[k], &g);
    return NULL;
}

Test(stress, small_blocks_high_rate, .timeout = 120)
{
    mailboxes_init();
    pthread_t t[4];
    for (uintptr_t i = 0; i < 4; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, small_churn, (void *)i), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    drain_mailboxes(4);
    assert_no_failures();
}

/* ---- fork while the workers allocate ------------------------------------------------- */

/* In the child: check the parent's private blocks, free half of them, then allocate and
 * free on its own through every entry point. Exits 0 when everything was right. */
static void child_work(struct block *own, int n)
{
    tt_rng g;
    tt_rng_seed(&g, (uint64_t)getpid());
    int bad = 0;
    for (int i = 0; i < n; i++) {
        if (tt_check(own[i].p, own[i].size, own[i].seed) != SIZE_MAX)
            bad++;
        if (i % 2 == 0)
            release_block(&own[i], &g);
    }
    struct block mine[64] = {{0}};
    for (int i = 0; i < 3000; i++) {
        int k = (int)(tt_rand(&g) % 64);
        if (mine[k].p) {
            if (tt_check(mine[k].p, mine[k].size, mine[k].seed) != SIZE_MAX)
                bad++;
            release_block(&mine[k], &g);
        } else if (!make_block(&mine[k], (enum tt_entry)(i % TT_ENTRY_COUNT), random_size(&g),
                               (uint64_t)i, &g)) {
            bad++;
        }
    }
    for (int k = 0; k < 64; k++)
        if (mine[k].p)
            release_block(&mine[k], &g);
    for (int i = 1; i < n; i += 2)
        release_block(&own[i], &g);
    _exit(bad ? 1 : 0);
}

Test(stress, fork_while_allocating, .timeout = 180)
{
    mailboxes_init();
    double seconds = stress_seconds();
    /* The workers run until the last fork is done, however slow a loaded machine makes the
     * forks: every fork happens while they allocate, and none after they exited. */
    static atomic_int stop;
    atomic_store(&stop, 0);
    struct worker_config cfg = {3, tt_now() + seconds, -1,
                                TT_SANITIZER ? 8 * TT_MIB : 32 * TT_MIB, false, &stop};
    for (int i = 0; i < cfg.nthreads; i++) {
        struct worker *w = &workers[i];
        memset(w, 0, sizeof *w);
        w->id = i;
        w->cfg = &cfg;
        cr_assert_eq(pthread_create(&w->thread, NULL, worker_main, w), 0);
    }
    /* The main thread keeps its own blocks (some received from the workers). */
    enum { OWN = 48 };
    struct block own[OWN];
    tt_rng g;
    tt_rng_seed(&g, 99);
    int forks = 0, nown = 0;
    while ((tt_now() < cfg.deadline || forks < 2) && atomic_load(&failures) == 0) {
        /* Refresh the private blocks: some go to the workers, the others are freed. */
        for (int i = 0; i < nown; i++) {
            verify(&own[i], "main's block before fork");
            if (tt_rand(&g) % 3 != 0 || !post((int)(tt_rand(&g) % 3), &own[i]))
                release_block(&own[i], &g);
        }
        nown = 0;
        while (nown < OWN &&
               make_block(&own[nown], (enum tt_entry)(tt_rand(&g) % TT_ENTRY_COUNT),
                          random_size(&g), tt_mix(777, (uint64_t)nown + (uint64_t)forks * OWN),
                          &g))
            nown++;
        if (nown < OWN)
            break;
        fflush(NULL);
        pid_t pid = fork();
        cr_assert(pid >= 0, "fork failed: %s", strerror(errno));
        if (pid == 0) {
            alarm(30);
            child_work(own, nown);
        }
        int st = tt_wait_timeout(pid, 30);
        char how[96];
        if (atomic_load(&failures) != 0)
            break; /* a worker's failure, reported below, comes first */
        cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "fork #%d: the child %s (1: it found corrupted blocks or a failed "
                  "allocation; 66: a sanitizer report; SIGALRM or a time-out: it hung)",
                  forks, tt_describe_status(st, how, sizeof how));
        forks++;
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < cfg.nthreads; i++)
        pthread_join(workers[i].thread, NULL);
    for (int i = 0; i < nown; i++)
        if (verify(&own[i], "main's block at the end"))
            release_block(&own[i], &g);
    drain_mailboxes(cfg.nthreads);
    assert_no_failures();
    cr_log_info("%d forks", forks);
    cr_assert(forks >= 2, "only %d forks", forks);
}

/* ---- fork after the workers exited, before anyone joined them ------------------------ */

enum { LEAVERS = 3, LEFT = 64 };
static struct block left_behind[LEAVERS * LEFT];
static atomic_int leaver_tid[LEAVERS];

/* Allocates blocks that outlive the thread, records its kernel thread id, and exits. */
static void *leave_blocks(void *arg)
{
    int id = (int)(uintptr_t)arg;
    tt_rng g;
    tt_rng_seed(&g, 4242 + (uint64_t)id);
    for (int i = 0; i < LEFT; i++)
        if (!make_block(&left_behind[id * LEFT + i], (enum tt_entry)(tt_rand(&g) % TT_ENTRY_COUNT),
                        random_size(&g), tt_mix(31, (uint64_t)(id * LEFT + i)), &g))
            break;
    atomic_store(&leaver_tid[id], (int)syscall(SYS_gettid));
    return NULL;
}

/* True once the kernel no longer knows the thread: it has run all of its exit. */
static bool thread_gone(int tid)
{
    return syscall(SYS_tgkill, getpid(), tid, 0) == -1 && errno == ESRCH;
}

/* A child forked while threads that allocated have exited but are not joined yet: it frees
 * what they left and allocates on its own. Its exit status is the allocator's verdict alone
 * (sanitizer runtimes count the parent's unjoined threads as leaked in the child, and must
 * not turn that into a failure: see the test runner's sanitizer options). */
Test(stress, fork_after_workers_exited, .timeout = 120)
{
    pthread_t t[LEAVERS];
    for (int i = 0; i < LEAVERS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, leave_blocks, (void *)(uintptr_t)i), 0);
    for (int i = 0; i < LEAVERS; i++) {
        while (atomic_load(&leaver_tid[i]) == 0 || !thread_gone(atomic_load(&leaver_tid[i]))) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    assert_no_failures();
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork failed: %s", strerror(errno));
    if (pid == 0) {
        alarm(60);
        child_work(left_behind, LEAVERS * LEFT); /* checks, frees, allocates; _exit */
    }
    int st = tt_wait_timeout(pid, 90);
    char how[96];
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "the child %s (1: it found corrupted blocks or a failed allocation; 66: a "
              "sanitizer report; SIGALRM or a time-out: it hung)",
              tt_describe_status(st, how, sizeof how));
    for (int i = 0; i < LEAVERS; i++)
        pthread_join(t[i], NULL);
    tt_rng g;
    tt_rng_seed(&g, 5);
    for (int i = 0; i < LEAVERS * LEFT; i++)
        if (verify(&left_behind[i], "left by an exited thread"))
            release_block(&left_behind[i], &g);
    assert_no_failures();
}
