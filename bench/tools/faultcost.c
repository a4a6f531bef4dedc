/*
 * faultcost - what a page fault costs on this machine, and whether calls that give memory
 * back make the faults after them dearer. It faults pages in one at a time, visiting 128 page
 * tables in turn (one page in each, then the next page in each), so that every fault writes
 * into a page table that already exists; every 32 faults it makes one call of the kind under
 * test on another mapping, and reports the faults' cost without the calls' own time.
 *
 * On a machine whose page tables the hypervisor shadows, a call that makes the kernel flush
 * the whole TLB (on x86-64 Linux, one that zaps pages spanning more than 33 pages; a batch of
 * ranges; an mremap that moves a resident page) can make each later fault in an older page
 * table pay for the shadow's update. Where page tables are not shadowed (bare metal, nested
 * paging) no such difference is expected; it has been measured only on a shadowing host.
 * Every page table the calls touch keeps a page, so that none is freed (that is not measured
 * here). Needs 4 KiB pages.
 * docs/design.md ("What a fault costs after a decommit") says what the allocator makes of it.
 *
 * usage: faultcost [ROUNDS]   (median of ROUNDS runs of each kind, 5 by default)
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096ul
#define TABLE (2ul << 20) /* what one page table maps with 4 KiB pages */
#define TABLES 128
#define PASSES 48
#define EVERY 32
#define SPREAD 4 /* page tables the zapping calls reach into */

#ifndef PIDFD_SELF_THREAD
#define PIDFD_SELF_THREAD -10000
#endif

enum kind { NONE, BATCH, WIDE, SPLIT, ONE_PAGE, MOVE, MOVE_EMPTY, UNMAP, MINCORE, KINDS };
static const char *const names[KINDS] = {
    [NONE] = "no call",
    [BATCH] = "process_madvise, 4 ranges in 4 tables",
    [WIDE] = "madvise over 4 tables, 4 pages resident",
    [SPLIT] = "the same 4 pages, one madvise each",
    [ONE_PAGE] = "madvise of one page",
    [MOVE] = "mremap moving a resident page",
    [MOVE_EMPTY] = "mremap moving no page",
    [UNMAP] = "mmap, write a page, munmap",
    [MINCORE] = "mincore over 4 tables",
};

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/* size bytes on a page table's boundary (so that each TABLE of them is one page table's), in
 * 4 KiB pages whatever the kernel's huge-page mode; free with munmap(p, size). */
static char *map(size_t size)
{
    char *m = mmap(NULL, size + TABLE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        perror("faultcost: mmap");
        exit(1);
    }
    char *p = (char *)(((uintptr_t)m + TABLE - 1) & ~(uintptr_t)(TABLE - 1));
    if (p > m)
        munmap(m, (size_t)(p - m));
    munmap(p + size, (size_t)(m + TABLE - p));
    madvise(p, size, MADV_NOHUGEPAGE);
    return p;
}

/* A fresh mapping of one page table's worth in 4 KiB pages, or NULL. */
static char *one_table(void)
{
    char *m = mmap(NULL, TABLE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    madvise(m, TABLE, MADV_NOHUGEPAGE);
    return m;
}

/* The page in `other` that the zapping calls use in table t: one per table, written first. */
static char *spot(char *other, int t) { return other + (size_t)t * TABLE + 8 * PAGE; }

static int call(enum kind k, char *other)
{
    switch (k) {
    case NONE:
        return 0;
    case BATCH: {
#ifdef SYS_process_madvise
        struct iovec v[SPREAD];
        for (int t = 0; t < SPREAD; t++) {
            *spot(other, t) = 1;
            v[t].iov_base = spot(other, t);
            v[t].iov_len = PAGE;
        }
        return syscall(SYS_process_madvise, PIDFD_SELF_THREAD, v, (size_t)SPREAD, MADV_DONTNEED,
                       0u) == (long)(SPREAD * PAGE) ? 0 : -1;
#else
        return -1; /* no process_madvise in these headers: reported as failed */
#endif
    }
    case WIDE:
        for (int t = 0; t < SPREAD; t++)
            *spot(other, t) = 1;
        return madvise(spot(other, 0), (size_t)(SPREAD - 1) * TABLE + PAGE, MADV_DONTNEED);
    case SPLIT:
        for (int t = 0; t < SPREAD; t++) {
            *spot(other, t) = 1;
            if (madvise(spot(other, t), PAGE, MADV_DONTNEED) != 0)
                return -1;
        }
        return 0;
    case ONE_PAGE:
        *spot(other, 0) = 1;
        return madvise(spot(other, 0), PAGE, MADV_DONTNEED);
    case MOVE:
    case MOVE_EMPTY: {
        char *m = one_table();
        if (m == NULL)
            return -1;
        if (k == MOVE)
            m[0] = 1;
        /* A neighbour in the way, so that growing moves it rather than extending it. */
        char *wall = mmap(m + TABLE, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        char *g = mremap(m, TABLE, 2 * TABLE, MREMAP_MAYMOVE);
        if (wall != MAP_FAILED)
            munmap(wall, PAGE);
        if (g == MAP_FAILED) {
            munmap(m, TABLE);
            return -1;
        }
        int moved = g != m;
        return munmap(g, 2 * TABLE) == 0 && moved ? 0 : -1;
    }
    case UNMAP: {
        char *m = one_table();
        if (m == NULL)
            return -1;
        m[0] = 1;
        return munmap(m, TABLE);
    }
    case MINCORE: {
        static unsigned char vec[SPREAD * (TABLE / PAGE)];
        return mincore(other, (size_t)SPREAD * TABLE, vec);
    }
    default:
        return -1;
    }
}

/* Nanoseconds a fault, the calls' own time left out; negative if a call failed. */
static double run(enum kind k)
{
    char *p = map((size_t)TABLES * TABLE);
    char *other = map((size_t)SPREAD * TABLE);
    for (int t = 0; t < TABLES; t++) /* every page table exists before the count starts */
        p[(size_t)t * TABLE] = 1;
    for (int t = 0; t < SPREAD; t++) /* and keeps a page: no call empties one whole */
        other[(size_t)t * TABLE] = 1;
    long faults = 0;
    int failed = 0;
    double calls = 0, start = now_ns();
    for (int pass = 1; pass <= PASSES; pass++)
        for (int t = 0; t < TABLES; t++) {
            p[(size_t)t * TABLE + (size_t)pass * PAGE] = 1;
            if (++faults % EVERY == 0) {
                double c = now_ns();
                failed |= call(k, other) != 0;
                calls += now_ns() - c;
            }
        }
    double spent = now_ns() - start - calls;
    munmap(p, (size_t)TABLES * TABLE);
    munmap(other, (size_t)SPREAD * TABLE);
    return failed ? -1 : spent / (double)faults;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 5;
    if (rounds < 1 || rounds > 99) {
        fprintf(stderr, "usage: faultcost [ROUNDS 1-99]\n");
        return 2;
    }
    if (sysconf(_SC_PAGESIZE) != (long)PAGE) {
        fprintf(stderr, "faultcost: needs 4 KiB pages (this kernel's are %ld bytes)\n",
                sysconf(_SC_PAGESIZE));
        return 2;
    }
    double t[KINDS][99];
    for (int r = 0; r < rounds; r++) /* the kinds interleaved, so that noise falls on all */
        for (int k = 0; k < KINDS; k++)
            t[k][r] = run((enum kind)k);
    printf("ns per fault, median of %d (a call every %d faults, its own time left out)\n",
           rounds, EVERY);
    for (int k = 0; k < KINDS; k++) {
        qsort(t[k], (size_t)rounds, sizeof t[k][0], cmp);
        if (t[k][0] < 0)
            printf("%8s  %s\n", "failed", names[k]);
        else
            printf("%8.0f  %s\n", t[k][rounds / 2], names[k]);
    }
    return 0;
}
