/*
 * fork through the ta_ API, in the test process itself: the child's allocator works
 * (with blocks inherited from the parent and from threads that do not exist in the
 * child), fork while threads allocate never deadlocks, forks nest, a thread other than
 * the main one may fork, and a signal handler may fork while the main code is inside the
 * allocator.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tamalloc.h>

#include "tatest.h"

struct block {
    unsigned char *p;
    size_t size;
    uint64_t seed;
};

static bool make(struct block *b, enum tt_entry e, size_t size, uint64_t seed)
{
    b->p = tt_alloc(e, size, 128);
    if (!b->p)
        return false;
    b->size = size;
    b->seed = seed;
    tt_fill(b->p, size, seed);
    return true;
}

static bool intact(const struct block *b)
{
    return tt_check(b->p, b->size, b->seed) == SIZE_MAX;
}

/* Heavy use of the allocator in a child; returns 0 when all went well. */
static int child_exercise(int rounds, uint64_t seed)
{
    tt_rng g;
    tt_rng_seed(&g, seed);
    enum { SLOTS = 128 };
    struct block slot[SLOTS];
    memset(slot, 0, sizeof slot);
    for (int i = 0; i < rounds; i++) {
        int k = (int)(tt_rand(&g) % SLOTS);
        if (slot[k].p) {
            if (!intact(&slot[k]))
                return 1;
            ta_free(slot[k].p);
            slot[k].p = NULL;
        } else {
            enum tt_range r = i % 200 == 0 ? TT_RANGE_HUGE : i % 10 == 0 ? TT_RANGE_MEDIUM
                                                                         : TT_RANGE_SMALL;
            if (!make(&slot[k], (enum tt_entry)(i % TT_ENTRY_COUNT), tt_range_random(r, &g),
                      (uint64_t)i))
                return 2;
        }
    }
    for (int k = 0; k < SLOTS; k++)
        ta_free(slot[k].p);
    return 0;
}

static void expect_clean_exit(pid_t pid, double timeout, const char *what)
{
    int st = tt_wait_timeout(pid, timeout);
    char how[128];
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "%s: the child %s (1: corrupted block, 2: failed allocation, SIGALRM or "
              "time-out: hung)",
              what, tt_describe_status(st, how, sizeof how));
}

/* ---- inherited blocks -------------------------------------------------------------- */

Test(fork, child_frees_inherited_blocks, .timeout = 120)
{
    enum { N = 300 };
    static struct block blocks[N];
    tt_rng g;
    tt_rng_seed(&g, 1);
    for (int i = 0; i < N; i++) {
        enum tt_range r = i % 30 == 0 ? TT_RANGE_HUGE : i % 4 == 0 ? TT_RANGE_MEDIUM
                                                                   : TT_RANGE_SMALL;
        cr_assert(make(&blocks[i], (enum tt_entry)(i % TT_ENTRY_COUNT), tt_range_random(r, &g),
                       (uint64_t)i));
    }
    for (int round = 0; round < 10; round++) {
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
            alarm(30);
            for (int i = 0; i < N; i++)
                if (!intact(&blocks[i]))
                    _exit(1);
            /* Reallocate some, free the rest, then work. */
            for (int i = 0; i < N; i++) {
                if (i % 3 == 0) {
                    unsigned char *q = ta_realloc(blocks[i].p, blocks[i].size * 2 + 1);
                    if (!q || tt_check(q, blocks[i].size, blocks[i].seed) != SIZE_MAX)
                        _exit(1);
                    ta_free(q);
                } else {
                    ta_free(blocks[i].p);
                }
            }
            _exit(child_exercise(20000, (uint64_t)round));
        }
        expect_clean_exit(pid, 60, "child freeing inherited blocks");
        for (int i = 0; i < N; i++)
            cr_assert(intact(&blocks[i]), "the parent's block %d changed after fork", i);
    }
    for (int i = 0; i < N; i++)
        ta_free(blocks[i].p);
}

/* Blocks allocated by threads that are alive in the parent but absent in the child. */
struct holder {
    struct block blocks[64];
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int ready, release;
};

static void *hold_blocks(void *arg)
{
    struct holder *h = arg;
    tt_rng g;
    tt_rng_seed(&g, (uint64_t)(uintptr_t)h);
    for (int i = 0; i < 64; i++) {
        enum tt_range r = i % 16 == 0 ? TT_RANGE_HUGE : i % 4 == 0 ? TT_RANGE_MEDIUM
                                                                   : TT_RANGE_SMALL;
        make(&h->blocks[i], (enum tt_entry)(i % TT_ENTRY_COUNT), tt_range_random(r, &g),
             (uint64_t)i + 5);
    }
    pthread_mutex_lock(&h->lock);
    h->ready = 1;
    pthread_cond_broadcast(&h->cond);
    while (!h->release)
        pthread_cond_wait(&h->cond, &h->lock);
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

Test(fork, child_frees_blocks_of_absent_threads, .timeout = 120)
{
    enum { T = 4 };
    static struct holder h[T];
    pthread_t ids[T];
    for (int t = 0; t < T; t++) {
        memset(&h[t], 0, sizeof h[t]);
        pthread_mutex_init(&h[t].lock, NULL);
        pthread_cond_init(&h[t].cond, NULL);
        cr_assert_eq(pthread_create(&ids[t], NULL, hold_blocks, &h[t]), 0);
    }
    for (int t = 0; t < T; t++) {
        pthread_mutex_lock(&h[t].lock);
        while (!h[t].ready)
            pthread_cond_wait(&h[t].cond, &h[t].lock);
        pthread_mutex_unlock(&h[t].lock);
        for (int i = 0; i < 64; i++)
            cr_assert_not_null(h[t].blocks[i].p);
    }
    for (int round = 0; round < 5; round++) {
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
            alarm(30);
            for (int t = 0; t < T; t++)
                for (int i = 0; i < 64; i++) {
                    if (!intact(&h[t].blocks[i]))
                        _exit(1);
                    ta_free(h[t].blocks[i].p);
                }
            _exit(child_exercise(20000, (uint64_t)round + 100));
        }
        expect_clean_exit(pid, 60, "child freeing blocks of threads it does not have");
    }
    for (int t = 0; t < T; t++) {
        pthread_mutex_lock(&h[t].lock);
        h[t].release = 1;
        pthread_cond_broadcast(&h[t].cond);
        pthread_mutex_unlock(&h[t].lock);
        pthread_join(ids[t], NULL);
        for (int i = 0; i < 64; i++) {
            cr_assert(intact(&h[t].blocks[i]));
            ta_free(h[t].blocks[i].p);
        }
    }
}

/* ---- fork while threads allocate --------------------------------------------------- */

static atomic_int stop_workers;
static _Atomic(void *) exchange[32];

static void *busy_worker(void *arg)
{
    tt_rng g;
    tt_rng_seed(&g, (uint64_t)(uintptr_t)arg);
    void *mine[32] = {0};
    while (!atomic_load(&stop_workers)) {
        int k = (int)(tt_rand(&g) % 32);
        uint64_t op = tt_rand(&g) % 10;
        if (!mine[k]) {
            enum tt_range r = op == 0 ? TT_RANGE_HUGE : op < 3 ? TT_RANGE_MEDIUM : TT_RANGE_SMALL;
            size_t n = r == TT_RANGE_HUGE ? 2 * TT_MIB : tt_range_random(r, &g);
            mine[k] = tt_alloc((enum tt_entry)(tt_rand(&g) % TT_ENTRY_COUNT), n, 64);
            if (mine[k])
                memset(mine[k], 0x42, n < 256 ? n : 256);
        } else if (op < 3) {
            mine[k] = atomic_exchange(&exchange[tt_rand(&g) % 32], mine[k]);
        } else if (op < 5) {
            void *q = ta_realloc(mine[k], tt_range_random(TT_RANGE_SMALL, &g) * 3);
            if (q)
                mine[k] = q;
        } else {
            ta_free(mine[k]);
            mine[k] = NULL;
        }
    }
    for (int k = 0; k < 32; k++)
        ta_free(mine[k]);
    return NULL;
}

static void start_workers(pthread_t *ids, int n)
{
    atomic_store(&stop_workers, 0);
    for (int i = 0; i < n; i++)
        cr_assert_eq(pthread_create(&ids[i], NULL, busy_worker, (void *)(uintptr_t)(i + 1)), 0);
}

static void stop_all(pthread_t *ids, int n)
{
    atomic_store(&stop_workers, 1);
    for (int i = 0; i < n; i++)
        pthread_join(ids[i], NULL);
    for (int i = 0; i < 32; i++)
        ta_free(atomic_exchange(&exchange[i], NULL));
}

Test(fork, fork_while_threads_allocate, .timeout = 120)
{
    pthread_t ids[4];
    start_workers(ids, 4);
    double end = tt_now() + tt_env_seconds("TAMALLOC_STRESS_SECONDS", 2.0);
    int forks = 0;
    while (tt_now() < end || forks < 20) {
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
            alarm(20);
            /* The blocks being exchanged at the moment of the fork are valid here. */
            for (int i = 0; i < 32; i += 2)
                ta_free(atomic_exchange(&exchange[i], NULL));
            _exit(child_exercise(2000, (uint64_t)forks));
        }
        expect_clean_exit(pid, 30, "child forked while threads allocate");
        forks++;
    }
    stop_all(ids, 4);
    cr_log_info("%d forks", forks);
}

static void *forking_thread(void *arg)
{
    int *result = arg;
    for (int i = 0; i < 30; i++) {
        void *p = ta_malloc(1000);
        pid_t pid = fork();
        if (pid == 0) {
            alarm(20);
            ta_free(p);
            _exit(child_exercise(3000, (uint64_t)i));
        }
        ta_free(p);
        int st = tt_wait_timeout(pid, 30);
        if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            __atomic_store_n(result, st == -1 ? -1 : st, __ATOMIC_RELEASE);
            return NULL;
        }
    }
    __atomic_store_n(result, 0, __ATOMIC_RELEASE);
    return NULL;
}

Test(fork, fork_from_a_second_thread, .timeout = 120)
{
    pthread_t ids[3];
    start_workers(ids, 3);
    int result = 1;
    pthread_t f;
    cr_assert_eq(pthread_create(&f, NULL, forking_thread, &result), 0);
    /* The main thread keeps allocating meanwhile. */
    while (__atomic_load_n(&result, __ATOMIC_ACQUIRE) == 1) {
        void *p = ta_malloc(300);
        ta_free(p);
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    pthread_join(f, NULL);
    stop_all(ids, 3);
    char how[128];
    cr_assert_eq(result, 0, "a child forked by a second thread %s",
                 tt_describe_status(result, how, sizeof how));
}

/* Children fork grandchildren, and so on. */
static int nest(int depth)
{
    void *keep = ta_malloc(5000);
    if (!keep)
        return 2;
    tt_fill(keep, 5000, (uint64_t)depth);
    if (child_exercise(3000, (uint64_t)depth) != 0)
        return 1;
    if (depth == 0)
        return 0;
    pid_t pid = fork();
    if (pid == 0) {
        alarm(30);
        if (tt_check(keep, 5000, (uint64_t)depth) != SIZE_MAX)
            _exit(1);
        ta_free(keep);
        _exit(nest(depth - 1));
    }
    int st = tt_wait_timeout(pid, 60);
    ta_free(keep);
    return (st != -1 && WIFEXITED(st)) ? WEXITSTATUS(st) : 3;
}

Test(fork, nested_forks, .timeout = 120)
{
    pthread_t ids[2];
    start_workers(ids, 2);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        alarm(60);
        _exit(nest(6));
    }
    expect_clean_exit(pid, 90, "nested forks");
    stop_all(ids, 2);
}

/* ---- fork from a signal handler while the main code is in the allocator ----------- */

static volatile sig_atomic_t handler_forks, handler_failures;
static volatile long main_calls, calls_at_fork;

/* Forks once the main code has made some allocator calls since the last fork, so that
 * forks land at arbitrary points of it. */
static void fork_in_handler(int sig)
{
    (void)sig;
    if (handler_failures || handler_forks >= 300 || main_calls - calls_at_fork < 200)
        return;
    calls_at_fork = main_calls;
    int saved = errno;
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGALRM, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        struct itimerval off = {{0, 0}, {0, 0}};
        setitimer(ITIMER_REAL, &off, NULL);
        alarm(10);
        for (int i = 0; i < 200; i++) {
            void *p = ta_malloc((size_t)i * 331 + 1);
            void *q = ta_calloc(1, (size_t)i * 1021 + 1);
            if (!p || !q)
                _exit(2);
            ta_free(p);
            ta_free(q);
        }
        _exit(0);
    }
    if (pid > 0) {
        int st;
        pid_t r;
        do
            r = waitpid(pid, &st, 0);
        while (r < 0 && errno == EINTR);
        if (r != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            handler_failures++;
        handler_forks++;
    }
    errno = saved;
}

Test(fork, fork_in_signal_handler_interrupting_malloc, .timeout = 120)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fork_in_handler;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 700}, {0, 700}};
    setitimer(ITIMER_REAL, &it, NULL);
    tt_rng g;
    tt_rng_seed(&g, 3);
    void *slot[64] = {0};
    double end = tt_now() + 4;
    while (handler_forks < 300 && !handler_failures && tt_now() < end) {
        main_calls++;
        int k = (int)(tt_rand(&g) % 64);
        if (slot[k]) {
            ta_free(slot[k]);
            slot[k] = NULL;
        } else {
            slot[k] = tt_alloc((enum tt_entry)(tt_rand(&g) % TT_ENTRY_COUNT),
                               tt_rand(&g) % 50 == 0 ? 2 * TT_MIB : tt_rand(&g) % 70000 + 1, 64);
        }
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    for (int k = 0; k < 64; k++)
        ta_free(slot[k]);
    cr_assert_eq(handler_failures, 0, "%d of %d children forked in a signal handler failed",
                 (int)handler_failures, (int)handler_forks);
    cr_assert(handler_forks >= 10, "only %d forks happened", (int)handler_forks);
}
