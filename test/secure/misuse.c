/*
 * The hardened build (libtamalloc_api_secure.a): every kind of misuse it must catch, for
 * small, medium and huge blocks, each expected to end the process — SIGABRT after one line
 * naming the pointer, or SIGSEGV where a guard page or an unmapped block is hit — and the
 * properties behind them (freed blocks zeroed, reuse order random, usable sizes).
 *
 * Overflows write at the usable size (malloc_usable_size), the first byte the program may
 * not touch; underflows write the 16 bytes below the block.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <tamalloc.h>

#include "tatest.h"

#define SMALL 40        /* served from 48-byte blocks: 40 usable, 8 of canary */
#define MEDIUM 20000
#define HUGE (3 * TT_MIB)

/* Frees enough other blocks to push everything freed before out of the quarantine (at most
 * 64 blocks or 1 MiB). */
static void flush_quarantine(void)
{
    void *p[100];
    for (int i = 0; i < 100; i++)
        p[i] = ta_malloc(16);
    for (int i = 0; i < 100; i++)
        ta_free(p[i]);
}

/* A writer the compiler cannot see through: the tests write where C says they may not. */
/* Writes v at p + off, or ~v where the byte already holds v (a canary byte does, one time in
 * 256): the write must change the byte for the misuse to be there at all. */
static void poke(void *p, ptrdiff_t off, unsigned char v)
{
    volatile unsigned char *b = tt_opaque_ptr(p);
    b[off] = b[off] == v ? (unsigned char)~v : v;
}

static void poke_range(void *p, ptrdiff_t off, size_t n, unsigned char v)
{
    for (size_t i = 0; i < n; i++)
        poke(p, off + (ptrdiff_t)i, v);
}

/* A small block that is not the first of its run (a write below it reaches the block below). */
static void *small_not_first(size_t size)
{
    for (;;) {
        void *p = ta_malloc(size);
        cr_assert_not_null(p);
        if (((uintptr_t)p & 0xffff) >= 64)
            return p;
    }
}

/* ---- small blocks ----------------------------------------------------------------- */

Test(secure_small, usable_size_leaves_room_for_the_canary)
{
    void *p = ta_malloc(SMALL);
    cr_assert_eq(ta_malloc_usable_size(p), 40);
    void *q = ta_malloc(1);
    cr_assert_eq(ta_malloc_usable_size(q), 24, "the 16-byte class is not used");
    /* Writing every usable byte is allowed and stays silent. */
    memset(p, 0xff, ta_malloc_usable_size(p));
    memset(q, 0xff, ta_malloc_usable_size(q));
    ta_free(p);
    ta_free(q);
    flush_quarantine();
}

Test(secure_small, overflow_of_one_byte, .signal = SIGABRT)
{
    void *p = ta_malloc(SMALL);
    poke(p, (ptrdiff_t)ta_malloc_usable_size(p), 0);
    ta_free(p);
}

Test(secure_small, overflow_seen_by_realloc, .signal = SIGABRT)
{
    void *p = ta_malloc(SMALL);
    poke(p, (ptrdiff_t)ta_malloc_usable_size(p) + 7, 1);
    (void)!ta_realloc(p, 1000);
}

Test(secure_small, underflow_of_16_bytes, .signal = SIGABRT)
{
    void *p = small_not_first(SMALL);
    poke_range(p, -16, 16, 0x5a);
    ta_free(p);
}

Test(secure_small, write_after_free, .signal = SIGABRT)
{
    unsigned char *p = ta_malloc(SMALL);
    ta_free(p);
    poke(p, 20, 1);
    flush_quarantine();
}

/* Seen at the very next malloc, not when the block leaves the quarantine. */
Test(secure_small, write_after_free_seen_by_the_next_malloc, .signal = SIGABRT)
{
    unsigned char *p = ta_malloc(SMALL);
    ta_free(p);
    poke(p, 20, 1);
    (void)!ta_malloc(SMALL);
}

Test(secure_medium, write_after_free_seen_by_the_next_malloc, .signal = SIGABRT)
{
    unsigned char *p = ta_malloc(20000);
    ta_free(p);
    poke(p, 100, 1);
    (void)!ta_malloc(64);
}

Test(secure_small, write_after_free_in_the_first_word, .signal = SIGABRT)
{
    unsigned char *p = ta_malloc(SMALL);
    ta_free(p);
    poke(p, 0, 1);
    flush_quarantine();
}

Test(secure_small, double_free, .signal = SIGABRT)
{
    void *p = ta_malloc(SMALL);
    ta_free(p);
    ta_free(p);
}

Test(secure_small, double_free_after_the_quarantine, .signal = SIGABRT)
{
    void *p = ta_malloc(SMALL);
    ta_free(p);
    flush_quarantine();
    ta_free(p);
}

Test(secure_small, interior_pointer, .signal = SIGABRT)
{
    char *p = ta_malloc(SMALL);
    ta_free(p + 16);
}

Test(secure_small, unaligned_pointer, .signal = SIGABRT)
{
    char *p = ta_malloc(SMALL);
    ta_free(p + 1);
}

Test(secure_small, freed_blocks_are_zeroed)
{
    unsigned char *p = ta_malloc(200);
    size_t n = ta_malloc_usable_size(p);
    memset(p, 0xa5, n);
    ta_free(p);
    /* Still in the quarantine, so still ours to read: all but the two words that say "free". */
    volatile unsigned char *v = tt_opaque_ptr(p);
    for (size_t i = 16; i < n; i++)
        cr_assert_eq(v[i], 0, "byte %zu of a freed block is %#x", i, v[i]);
    flush_quarantine();
}

static void *reuse_order(void *arg)
{
    size_t *ascending = arg;
    enum { N = 200 };
    char *p[N];
    for (int i = 0; i < N; i++)
        p[i] = ta_malloc(100);
    for (int i = 1; i < N; i++)
        if (p[i] == p[i - 1] + 112)
            (*ascending)++;
    for (int i = 0; i < N; i++)
        ta_free(p[i]);
    return NULL;
}

Test(secure_small, reuse_order_is_random)
{
    /* A new thread: a fresh arena, runs carved for it. Blocks of 112 handed out one after
     * the other would follow each other in memory nearly always without the shuffle. */
    size_t ascending = 0;
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, reuse_order, &ascending), 0);
    pthread_join(t, NULL);
    cr_assert_lt(ascending, 100, "%zu of 199 neighbours in address order", ascending);
}

/* ---- free pages of a run in use (malloc_trim) ------------------------------------- */

#define RUN_BYTES ((uintptr_t)65536)
#define RUN_BLOCKS (RUN_BYTES / 48) /* SMALL blocks: 48 bytes */

static char *run_block[RUN_BLOCKS]; /* by index in the run */
static uintptr_t run_base;

/* The first run of the SMALL class, filled: its blocks come in random order, but all of them
 * before any other run's. Every usable byte written. */
static void fill_one_run(void)
{
    for (size_t i = 0; i < RUN_BLOCKS; i++) {
        char *p = ta_malloc(SMALL);
        if (i == 0)
            run_base = (uintptr_t)p & ~(RUN_BYTES - 1);
        cr_assert_eq((uintptr_t)p & ~(RUN_BYTES - 1), run_base, "the first run fills first");
        size_t k = ((uintptr_t)p - run_base) / 48;
        cr_assert_null(run_block[k]);
        run_block[k] = p;
        tt_fill(p, SMALL, k);
    }
}

/* Frees every block but those flagged in keep[], in an order drawn at random, then trims. */
static void free_all_but(const bool *keep)
{
    size_t order[RUN_BLOCKS];
    for (size_t i = 0; i < RUN_BLOCKS; i++)
        order[i] = i;
    tt_rng g;
    tt_rng_seed(&g, 42);
    for (size_t i = RUN_BLOCKS - 1; i > 0; i--) {
        size_t j = tt_rand_between(&g, 0, i), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (size_t i = 0; i < RUN_BLOCKS; i++)
        if (!keep[order[i]])
            ta_free(run_block[order[i]]);
    ta_malloc_trim(0);
}

static size_t run_resident_pages(void)
{
    unsigned char vec[RUN_BYTES / 4096];
    cr_assert_eq(mincore((void *)run_base, RUN_BYTES, vec), 0);
    size_t n = 0;
    for (size_t i = 0; i < sizeof vec; i++)
        n += vec[i] & 1;
    return n;
}

Test(secure_small, trim_gives_back_the_free_pages_of_a_run_in_use)
{
    static bool keep[RUN_BLOCKS] = {[0] = true};
    fill_one_run();
    cr_assert_eq(run_resident_pages(), RUN_BYTES / 4096);
    free_all_but(keep);
    cr_assert_leq(run_resident_pages(), 2, "the pages above the block in use went back");
    cr_assert_eq(tt_check(run_block[0], SMALL, 0), SIZE_MAX, "the block in use is intact");
    /* The run serves its class again: carved anew, each block once, canaries and all. */
    for (size_t i = 1; i < RUN_BLOCKS; i++) {
        char *p = ta_malloc(SMALL);
        cr_assert_eq((uintptr_t)p & ~(RUN_BYTES - 1), run_base);
        size_t k = ((uintptr_t)p - run_base) / 48;
        cr_assert(k > 0 && (uintptr_t)p == run_base + k * 48);
        run_block[k] = p;
        tt_fill(p, SMALL, k);
    }
    for (size_t k = 0; k < RUN_BLOCKS; k++) {
        cr_assert_eq(tt_check(run_block[k], SMALL, k), SIZE_MAX, "block %zu", k);
        ta_free(run_block[k]);
    }
    flush_quarantine();
}

Test(secure_small, double_free_above_a_trimmed_run_limit, .signal = SIGABRT)
{
    static bool keep[RUN_BLOCKS] = {[0] = true};
    fill_one_run();
    free_all_but(keep);
    ta_free(run_block[RUN_BLOCKS - 1]);
}

/* The free blocks left below the block in use keep their random order. */
Test(secure_small, reuse_order_stays_random_after_a_trim)
{
    static bool keep[RUN_BLOCKS] = {[0] = true, [RUN_BLOCKS / 2] = true};
    fill_one_run();
    free_all_but(keep);
    size_t ascending = 0, n = RUN_BLOCKS / 2 - 1;
    char *prev = ta_malloc(SMALL);
    for (size_t i = 1; i < n; i++) {
        char *p = ta_malloc(SMALL);
        cr_assert_lt((uintptr_t)p, run_base + RUN_BLOCKS / 2 * 48, "below the block in use");
        ascending += p == prev + 48;
        prev = p;
    }
    cr_assert_lt(ascending, n / 4, "%zu of %zu neighbours in address order", ascending, n);
}

/* ---- medium blocks ---------------------------------------------------------------- */

Test(secure_medium, overflow_of_one_byte, .signal = SIGABRT)
{
    void *p = ta_malloc(MEDIUM);
    void *q = ta_malloc(MEDIUM); /* a live neighbour: the overflow reaches its header */
    (void)q;
    poke(p, (ptrdiff_t)ta_malloc_usable_size(p), 0x5a);
    ta_free(p);
}

Test(secure_medium, underflow_of_16_bytes, .signal = SIGABRT)
{
    void *p = ta_malloc(MEDIUM);
    poke_range(p, -16, 16, 0x5a);
    ta_free(p);
}

Test(secure_medium, write_after_free, .signal = SIGABRT)
{
    unsigned char *p = ta_malloc(MEDIUM);
    ta_free(p);
    poke(p, MEDIUM - 1, 1);
    flush_quarantine();
}

Test(secure_medium, double_free, .signal = SIGABRT)
{
    void *p = ta_malloc(MEDIUM);
    ta_free(p);
    ta_free(p);
}

Test(secure_medium, double_free_after_the_quarantine, .signal = SIGABRT)
{
    void *p = ta_malloc(MEDIUM);
    ta_free(p);
    flush_quarantine();
    ta_free(p);
}

Test(secure_medium, interior_pointer, .signal = SIGABRT)
{
    char *p = ta_malloc(MEDIUM);
    ta_free(p + 4096);
}

Test(secure_medium, unaligned_pointer, .signal = SIGABRT)
{
    char *p = ta_malloc(MEDIUM);
    ta_free(p + 8);
}

Test(secure_medium, overflow_off_the_chunk_end_faults, .signal = SIGSEGV)
{
    /* A medium chunk (4 MiB, aligned) ends with a guard page: an overflow that runs off
     * the chunk's last block, past its end marker, faults there. */
    char *p = ta_malloc(MEDIUM);
    uintptr_t chunk_end = ((uintptr_t)p | (4 * TT_MIB - 1)) + 1;
    poke(p, (ptrdiff_t)(chunk_end - 4096 - 16 - (uintptr_t)p) - 1, 1); /* the last block's last byte */
    poke(p, (ptrdiff_t)(chunk_end - 4096 - (uintptr_t)p), 1);
}

/* ---- huge blocks ------------------------------------------------------------------ */

Test(secure_huge, overflow_hits_the_guard_page, .signal = SIGSEGV)
{
    void *p = ta_malloc(HUGE + 100);
    size_t n = ta_malloc_usable_size(p);
    poke(p, (ptrdiff_t)n - 1, 1); /* the last usable byte is fine */
    poke(p, (ptrdiff_t)n, 1);
}

Test(secure_huge, underflow_of_16_bytes, .signal = SIGABRT)
{
    void *p = ta_malloc(HUGE);
    poke_range(p, -16, 16, 0x5a);
    ta_free(p);
}

Test(secure_huge, aligned_underflow_of_16_bytes, .signal = SIGABRT)
{
    void *p = ta_aligned_alloc(4096, HUGE);
    poke_range(p, -16, 16, 0x5a);
    ta_free(p);
}

Test(secure_huge, write_after_free_faults, .signal = SIGSEGV)
{
    unsigned char *p = ta_malloc(HUGE);
    ta_free(p);
    poke(p, 100, 1);
}

Test(secure_huge, double_free, .signal = SIGABRT)
{
    void *p = ta_malloc(HUGE);
    ta_free(p);
    ta_free(p);
}

Test(secure_huge, interior_pointer, .signal = SIGABRT)
{
    char *p = ta_malloc(HUGE);
    ta_free(p + 4096);
}

Test(secure_huge, realloc_in_place_moves_the_guard, .signal = SIGSEGV)
{
    char *p = ta_malloc(HUGE);
    char *q = ta_realloc(p, HUGE - 8192);
    cr_assert_eq(q, p);
    size_t n = ta_malloc_usable_size(q);
    cr_assert(n >= HUGE - 8192 && n < HUGE - 4096, "usable %zu", n);
    poke(q, (ptrdiff_t)n - 1, 1);
    poke(q, (ptrdiff_t)n, 1);
}

/* ---- owners that exited or forked ------------------------------------------------- */

static void *alloc_and_exit(void *arg)
{
    size_t size = *(size_t *)arg;
    return ta_malloc(size);
}

static void *block_of_exited_thread(size_t size)
{
    pthread_t t;
    void *p;
    cr_assert_eq(pthread_create(&t, NULL, alloc_and_exit, &size), 0);
    cr_assert_eq(pthread_join(t, &p), 0);
    cr_assert_not_null(p);
    return p;
}

Test(secure_owner, double_free_of_small_block_of_exited_thread, .signal = SIGABRT)
{
    void *p = block_of_exited_thread(SMALL);
    ta_free(p);
    flush_quarantine();
    ta_free(p);
}

Test(secure_owner, double_free_of_medium_block_of_exited_thread, .signal = SIGABRT)
{
    void *p = block_of_exited_thread(MEDIUM);
    ta_free(p);
    ta_free(p);
}

Test(secure_owner, write_after_free_of_block_of_exited_thread, .signal = SIGABRT)
{
    unsigned char *p = block_of_exited_thread(SMALL);
    ta_free(p);
    poke(p, 30, 1);
    flush_quarantine();
}

Test(secure_owner, overflow_of_block_of_exited_thread, .signal = SIGABRT)
{
    unsigned char *p = block_of_exited_thread(SMALL);
    poke(p, (ptrdiff_t)ta_malloc_usable_size(p), 1);
    ta_free(p);
}

/* A block of a thread still running in the parent: in a fork child that thread does not
 * exist, and its arena has no owner. */
static pthread_mutex_t hold = PTHREAD_MUTEX_INITIALIZER;
static void *alloc_and_wait(void *arg)
{
    void **out = arg;
    *out = ta_malloc(SMALL);
    pthread_mutex_lock(&hold);
    pthread_mutex_unlock(&hold);
    return NULL;
}

enum fork_misuse { F_DOUBLE, F_WRITE_AFTER_FREE, F_OVERFLOW, F_MEDIUM_DOUBLE };

static int in_fork_child(enum fork_misuse m)
{
    void *volatile p = NULL;
    pthread_t t;
    pthread_mutex_lock(&hold);
    cr_assert_eq(pthread_create(&t, NULL, alloc_and_wait, (void *)&p), 0);
    while (p == NULL)
        usleep(1000);
    void *medium = ta_malloc(MEDIUM);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        tt_no_core();
        int devnull = open("/dev/null", 1);
        dup2(devnull, 2);
        alarm(20);
        switch (m) {
        case F_DOUBLE:
            ta_free(p);
            ta_free(p);
            break;
        case F_WRITE_AFTER_FREE:
            ta_free(p);
            poke(p, 24, 1);
            flush_quarantine();
            break;
        case F_OVERFLOW:
            poke(p, (ptrdiff_t)ta_malloc_usable_size(p), 1);
            ta_free(p);
            break;
        case F_MEDIUM_DOUBLE:
            ta_free(medium);
            ta_free(medium);
            break;
        }
        _exit(0);
    }
    int status = tt_wait_timeout(pid, 30);
    pthread_mutex_unlock(&hold);
    pthread_join(t, NULL);
    return status;
}

Test(secure_owner, misuse_in_fork_child_of_parent_threads_block)
{
    enum fork_misuse all[] = {F_DOUBLE, F_WRITE_AFTER_FREE, F_OVERFLOW, F_MEDIUM_DOUBLE};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        int status = in_fork_child(all[i]);
        cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT,
                  "misuse %zu in the fork child: status %#x, not SIGABRT", i, status);
    }
}

/* ---- the messages ----------------------------------------------------------------- */

struct said {
    char text[512];
    int status;
};

static void run_child(void (*fn)(void *), void *arg, struct said *s)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        tt_no_core();
        close(fds[0]);
        dup2(fds[1], 2);
        close(fds[1]);
        alarm(20);
        fn(arg);
        _exit(0);
    }
    close(fds[1]);
    size_t len = 0;
    ssize_t n;
    while (len < sizeof s->text - 1 && (n = read(fds[0], s->text + len, sizeof s->text - 1 - len)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        len += (size_t)n;
    }
    s->text[len] = 0;
    tt_strip_emulator_lines(s->text, len);
    close(fds[0]);
    s->status = tt_wait_timeout(pid, 30);
}

static void overflow_small(void *p)
{
    poke(p, (ptrdiff_t)ta_malloc_usable_size(p), 0);
    ta_free(p);
}

static void write_after_free_small(void *p)
{
    ta_free(p);
    poke(p, 17, 1);
    flush_quarantine();
}

Test(secure_messages, one_line_naming_the_pointer)
{
    struct {
        void (*fn)(void *);
        const char *what;
    } cases[] = {
        {overflow_small, "tamalloc: free(): canary overwritten after pointer "},
        {write_after_free_small, "tamalloc: malloc(): write after free at pointer "},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        void *p = ta_malloc(SMALL);
        char want[256];
        char ptr[64];
        tt_format_ptr(p, ptr, sizeof ptr);
        snprintf(want, sizeof want, "%s%s\n", cases[i].what, ptr);
        struct said s;
        run_child(cases[i].fn, p, &s);
        cr_assert(WIFSIGNALED(s.status) && WTERMSIG(s.status) == SIGABRT, "status %#x", s.status);
        cr_assert_str_eq(s.text, want);
    }
}

/* A thread's quarantine is checked and emptied when the thread exits, not left behind. */
static void *free_then_write_then_exit(void *arg)
{
    (void)arg;
    unsigned char *p = ta_malloc(SMALL);
    ta_free(p);
    unsigned char *q = ta_malloc(SMALL); /* the newest entry checked now is p: intact */
    ta_free(q);
    poke(p, 20, 1); /* p is no longer the newest: only the exit's check can see it */
    return NULL;
}

Test(secure_owner, quarantine_checked_at_thread_exit, .signal = SIGABRT)
{
    pthread_t t;
    pthread_create(&t, NULL, free_then_write_then_exit, NULL);
    pthread_join(t, NULL);
}
