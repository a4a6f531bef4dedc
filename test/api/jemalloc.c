/*
 * jemalloc's non-standard API through the ta_ names (docs/jemalloc-api.md): mallocx and its
 * flags, rallocx, xallocx, sallocx, dallocx, sdallocx, nallocx; mallctl and its MIB forms
 * with jemalloc's error rules; malloc_stats_print. The replacement library exports the same
 * functions under jemalloc's names: test/preload/jemalloc_api.c runs a program linked with
 * libjemalloc on it, and test/preload/redis.c Debian's redis-server.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tamalloc.h"
#include "tatest.h"

#define MiB ((size_t)1 << 20)

static const size_t sizes[] = {0,     1,      15,      16,       17,       100,      128,
                               1000,  4096,   8192,    8193,     10000,    65536,    100000,
                               500000, MiB - 100, MiB,  MiB + 1, 3 * MiB, 9 * MiB + 123};
static const size_t aligns[] = {0, 1, 8, 16, 32, 64, 256, 4096, 65536, MiB, 4 * MiB, 8 * MiB};
#define N(a) (sizeof(a) / sizeof((a)[0]))

static int align_flag(size_t a) { return a ? TA_MALLOCX_ALIGN(a) : 0; }

static bool aligned_to(const void *p, size_t a) { return a == 0 || ((uintptr_t)p & (a - 1)) == 0; }

/* ------------------------------------------------------------------ allocation */

Test(jemalloc, mallocx_sizes_alignments_and_flags, .timeout = 120)
{
    for (size_t i = 0; i < N(sizes); i++) {
        for (size_t j = 0; j < N(aligns); j++) {
            size_t n = sizes[i], a = aligns[j];
            int flags = align_flag(a) | (j % 3 == 1 ? TA_MALLOCX_TCACHE_NONE : 0) |
                        (j % 3 == 2 ? TA_MALLOCX_ARENA(2) : 0);
            void *p = ta_mallocx(n, flags);
            cr_assert_not_null(p, "mallocx(%zu, align %zu)", n, a);
            cr_assert(aligned_to(p, a), "mallocx(%zu, align %zu) = %p", n, a, p);
            size_t u = ta_sallocx(p, 0);
            cr_assert_geq(u, n ? n : 1, "sallocx of mallocx(%zu, align %zu)", n, a);
            cr_assert_eq(u, ta_malloc_usable_size(p));
            tt_fill(p, u, n + a);
            cr_assert_eq(tt_check(p, u, n + a), SIZE_MAX);
            ta_dallocx(p, flags);
        }
    }
}

Test(jemalloc, mallocx_zero_zeroes, .timeout = 120)
{
    for (size_t i = 0; i < N(sizes); i++) {
        size_t n = sizes[i] ? sizes[i] : 1;
        /* Dirty memory of that size first, so that reuse would show. */
        void *d = ta_malloc(n);
        memset(d, 0xee, n);
        ta_free(d);
        for (size_t j = 0; j < 4; j++) {
            size_t a = aligns[j * 2];
            void *p = ta_mallocx(n, TA_MALLOCX_ZERO | align_flag(a));
            cr_assert_not_null(p);
            cr_assert_eq(tt_check_zero(p, ta_sallocx(p, 0)), SIZE_MAX,
                         "mallocx(%zu, ZERO, align %zu) is not zeroed", n, a);
            memset(p, 0xee, n);
            ta_free(p);
        }
    }
}

Test(jemalloc, impossible_requests_fail, .timeout = 60)
{
    errno = 0;
    cr_assert_null(ta_mallocx(tt_opaque(SIZE_MAX), 0));
    cr_assert_eq(errno, ENOMEM);
    cr_assert_null(ta_mallocx(tt_opaque(PTRDIFF_MAX), TA_MALLOCX_ZERO));
    cr_assert_null(ta_mallocx(16, TA_MALLOCX_LG_ALIGN(63)));
    cr_assert_eq(ta_nallocx(tt_opaque(SIZE_MAX), 0), 0);
    cr_assert_eq(ta_nallocx(16, TA_MALLOCX_LG_ALIGN(63)), 0);
    void *p = ta_mallocx(100, 0);
    memset(p, 7, 100);
    cr_assert_null(ta_rallocx(p, tt_opaque(SIZE_MAX), 0));
    cr_assert_eq(tt_check_byte(p, 100, 7), SIZE_MAX, "a failed rallocx changed the block");
    ta_dallocx(p, 0);
}

Test(jemalloc, size_zero_is_unique, .timeout = 60)
{
    void *a = ta_mallocx(0, 0), *b = ta_mallocx(0, 0), *c = ta_mallocx(0, TA_MALLOCX_ALIGN(64));
    cr_assert(a && b && c && a != b && b != c && a != c);
    void *d = ta_rallocx(a, 0, 0);
    cr_assert_not_null(d, "rallocx(p, 0) freed the block");
    ta_dallocx(d, 0);
    ta_dallocx(b, 0);
    ta_sdallocx(c, 0, TA_MALLOCX_ALIGN(64));
}

/* nallocx says what mallocx gives: exactly for small and huge blocks; a medium block may
 * keep up to 32 bytes more (a remainder too small to split off). (One from the arena's cache
 * of freed blocks may hold more; this sweep's sizes only grow, so none is taken here.) */
Test(jemalloc, nallocx_predicts_sallocx, .timeout = 120)
{
    for (size_t n = 1; n < 3 * MiB; n += n < 9000 ? 1 : n < 70000 ? 61 : 4093) {
        for (size_t j = 0; j < 7; j++) {
            size_t a = aligns[j];
            int flags = align_flag(a);
            size_t predicted = ta_nallocx(n, flags);
            void *p = ta_mallocx(n, flags);
            cr_assert_not_null(p);
            size_t u = ta_sallocx(p, 0);
            cr_assert(u >= predicted && u <= predicted + 32 &&
                          (u == predicted || (n > 8000 && n <= MiB)),
                      "nallocx(%zu, align %zu) = %zu, sallocx of mallocx = %zu", n, a, predicted, u);
            ta_sdallocx(p, n, flags);
        }
    }
    cr_assert_eq(ta_nallocx(0, 0), ta_nallocx(1, 0));
}

Test(jemalloc, rallocx_keeps_contents_alignment_and_zeroes, .timeout = 120)
{
    static const size_t path[] = {10, 100, 5000, 9000, 40000, 2 * MiB, 6 * MiB, 300, 20000, 7};
    for (size_t j = 0; j < N(aligns); j++) {
        size_t a = aligns[j];
        int flags = align_flag(a);
        size_t n = 1;
        unsigned char *p = ta_mallocx(n, flags);
        cr_assert_not_null(p);
        p[0] = 0x5a;
        for (size_t k = 0; k < N(path); k++) {
            size_t m = path[k];
            size_t old = ta_sallocx(p, 0);
            tt_fill(p, n, m);
            unsigned char *q = ta_rallocx(p, m, flags | TA_MALLOCX_ZERO);
            cr_assert_not_null(q, "rallocx(%zu -> %zu, align %zu)", n, m, a);
            cr_assert(aligned_to(q, a), "rallocx(%zu, align %zu) = %p", m, a, (void *)q);
            size_t keep = n < m ? n : m;
            cr_assert_eq(tt_check(q, keep, m), SIZE_MAX, "rallocx(%zu -> %zu) lost contents", n, m);
            size_t now = ta_sallocx(q, 0);
            cr_assert_geq(now, m);
            if (now > old)
                cr_assert_eq(tt_check_zero(q + old, now - old), SIZE_MAX,
                             "rallocx(%zu -> %zu, ZERO) left bytes beyond the old size", n, m);
            p = q;
            n = m;
        }
        ta_sdallocx(p, n, flags);
    }
}

Test(jemalloc, xallocx_resizes_in_place_or_says_it_cannot, .timeout = 60)
{
    /* Small: the class is the size. */
    void *s = ta_mallocx(100, 0);
    size_t su = ta_sallocx(s, 0);
    cr_assert_eq(ta_xallocx(s, 50, 0, 0), su);
    cr_assert_eq(ta_xallocx(s, 5000, 0, 0), su, "a small block grew in place");
    ta_dallocx(s, 0);

    /* Medium (under the smallest span), owned by this thread, with free space after it:
     * grows, then shrinks. */
    char *m = ta_mallocx(9000, 0);
    tt_fill(m, 9000, 3);
    size_t grown = ta_xallocx(m, 12000, 3000, TA_MALLOCX_ZERO);
    cr_assert_geq(grown, 12000, "the medium block did not grow in place");
    cr_assert_eq(ta_sallocx(m, 0), grown);
    cr_assert_eq(tt_check(m, 9000, 3), SIZE_MAX);
    cr_assert_eq(tt_check_zero(m + 9000 + 32, grown - 9000 - 32), SIZE_MAX,
                 "xallocx(ZERO) left the new bytes");
    size_t shrunk = ta_xallocx(m, 10000, 0, 0);
    cr_assert(shrunk >= 10000 && shrunk < grown, "shrinking in place gave %zu", shrunk);
    cr_assert_eq(tt_check(m, 9000, 3), SIZE_MAX);
    ta_sdallocx(m, 10000, 0);

    /* Huge: kept as it is. */
    void *h = ta_mallocx(3 * MiB, 0);
    size_t hu = ta_sallocx(h, 0);
    cr_assert_eq(ta_xallocx(h, 5 * MiB, 0, 0), hu);
    ta_sdallocx(h, 3 * MiB, 0);

    /* A span (whole pages; with 64 KiB pages spans start at 256 KiB, and the hardened build
     * has none: a medium block's usable size is then the request): shrinks in place to fewer
     * pages, never grows. */
    if (ta_nallocx(200000, 0) == 200000)
        return;
    char *sp = ta_mallocx(200000, 0);
    size_t spu = ta_sallocx(sp, 0);
    cr_assert_eq(spu % 4096, 0, "a span is whole pages: %zu", spu);
    tt_fill(sp, 200000, 4);
    cr_assert_eq(ta_xallocx(sp, 250000, 0, 0), spu, "a span grew in place");
    size_t cut = ta_xallocx(sp, 100000, 0, 0);
    cr_assert(cut >= 100000 && cut < spu, "a span shrunk in place to %zu of %zu", cut, spu);
    cr_assert_eq(ta_sallocx(sp, 0), cut);
    cr_assert_eq(tt_check(sp, 100000, 4), SIZE_MAX);
    ta_sdallocx(sp, 100000, 0);
}

Test(jemalloc, sdallocx_accepts_any_size_from_request_to_usable, .timeout = 60)
{
    for (size_t i = 0; i < N(sizes); i++) {
        size_t n = sizes[i];
        for (size_t j = 0; j < 5; j++) {
            size_t a = aligns[j * 2];
            void *p = ta_mallocx(n, align_flag(a));
            ta_sdallocx(p, n, align_flag(a));
            p = ta_mallocx(n, align_flag(a));
            ta_sdallocx(p, ta_sallocx(p, 0), align_flag(a));
            p = ta_mallocx(n, align_flag(a));
            ta_sdallocx(p, ta_nallocx(n, align_flag(a)), 0);
        }
    }
}

/* A wrong size or alignment given to sdallocx aborts with one line naming sdallocx and the
 * pointer. */
struct aborted {
    int status;
    char text[512];
};

static void run_child(void (*fn)(char *ptr, size_t n), struct aborted *out, char *ptr, size_t n)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        tt_no_core();
        dup2(fds[1], 2);
        close(fds[0]);
        fn(ptr, n);
        _exit(0);
    }
    close(fds[1]);
    size_t len = 0;
    ssize_t k;
    while (len < sizeof out->text - 1 &&
           (k = read(fds[0], out->text + len, sizeof out->text - 1 - len)) > 0)
        len += (size_t)k;
    out->text[len] = 0;
    tt_strip_emulator_lines(out->text, len);
    close(fds[0]);
    out->status = tt_wait_timeout(pid, 30);
}

static void sdallocx_wrong_size(char *ptr, size_t n) { ta_sdallocx(ptr, n, 0); }
static void sdallocx_wrong_align(char *ptr, size_t n) { ta_sdallocx(ptr, n, TA_MALLOCX_ALIGN(4096)); }

static void expect_abort(void (*fn)(char *, size_t), char *p, size_t n, const char *message)
{
    struct aborted r;
    run_child(fn, &r, p, n);
    char ptr[64], expected[256];
    tt_format_ptr(p, ptr, sizeof ptr);
    snprintf(expected, sizeof expected, "tamalloc: %s %s\n", message, ptr);
    cr_assert(r.status != -1 && WIFSIGNALED(r.status) && WTERMSIG(r.status) == SIGABRT,
              "%s: not aborted (stderr \"%s\")", message, r.text);
    cr_assert_str_eq(r.text, expected);
}

Test(jemalloc, sdallocx_of_a_wrong_size_or_alignment_aborts, .timeout = 60)
{
    char *small = ta_mallocx(100, 0);
    expect_abort(sdallocx_wrong_size, small, 5000, "sdallocx(): invalid size for pointer");
    char *huge = ta_mallocx(5 * MiB, 0);
    expect_abort(sdallocx_wrong_size, huge, 2 * MiB, "sdallocx(): invalid size for pointer");
    char *medium = ta_mallocx(12000, 0);
    char *odd = ((uintptr_t)medium & 4095) ? medium : ta_mallocx(12000, 0);
    expect_abort(sdallocx_wrong_align, odd, 12000, "sdallocx(): invalid alignment for pointer");
    char *span = ta_mallocx(200000, 0); /* a span; a medium block in the hardened build */
    expect_abort(sdallocx_wrong_size, span, 90000, "sdallocx(): invalid size for pointer");
}

/* ------------------------------------------------------------------ mallctl */

static size_t stat(const char *name)
{
    size_t v = 0, len = sizeof v;
    cr_assert_eq(ta_mallctl(name, &v, &len, NULL, 0), 0, "mallctl(\"%s\")", name);
    cr_assert_eq(len, sizeof v);
    return v;
}

static uint64_t refresh(void)
{
    uint64_t e = 1;
    size_t len = sizeof e;
    cr_assert_eq(ta_mallctl("epoch", &e, &len, &e, sizeof e), 0);
    return e;
}

Test(jemalloc, statistics_follow_the_epoch, .timeout = 60)
{
    uint64_t e0 = refresh();
    uint64_t e1 = refresh();
    cr_assert_eq(e1, e0 + 1, "epoch %llu then %llu", (unsigned long long)e0,
                 (unsigned long long)e1);
    size_t a0 = stat("stats.allocated");
    void *big[8];
    for (int i = 0; i < 8; i++) {
        big[i] = ta_mallocx(4 * MiB, 0);
        memset(big[i], 1, 4 * MiB);
    }
    cr_assert_eq(stat("stats.allocated"), a0, "the figure changed without a new epoch");
    refresh();
    size_t a1 = stat("stats.allocated"), active = stat("stats.active");
    size_t resident = stat("stats.resident"), mapped = stat("stats.mapped");
    cr_assert_geq(a1, a0 + 32 * MiB, "stats.allocated %zu then %zu after 32 MiB", a0, a1);
    cr_assert_geq(active, a1);
    cr_assert_eq(active % tt_page_size(), 0);
    cr_assert_geq(resident, 32 * MiB);
    cr_assert_geq(mapped, active);
    (void)stat("stats.metadata");
    (void)stat("stats.retained");
    cr_assert_eq(stat("stats.metadata_thp"), 0);
    for (int i = 0; i < 8; i++)
        ta_sdallocx(big[i], 4 * MiB, 0);
    refresh();
    cr_assert_leq(stat("stats.allocated"), a1 - 32 * MiB);
}

Test(jemalloc, purge_gives_memory_back, .timeout = 60)
{
    void *blocks[512];
    for (int i = 0; i < 512; i++) {
        blocks[i] = ta_mallocx(60000, 0); /* medium: 30 MiB in all */
        memset(blocks[i], 1, 60000);
    }
    for (int i = 0; i < 512; i++)
        ta_dallocx(blocks[i], 0);
    refresh();
    size_t before = stat("stats.resident");
    unsigned n;
    size_t len = sizeof n;
    cr_assert_eq(ta_mallctl("arenas.narenas", &n, &len, NULL, 0), 0);
    cr_assert_geq(n, 1);
    char name[64];
    snprintf(name, sizeof name, "arena.%u.purge", n); /* every arena: jemalloc's older form */
    cr_assert_eq(ta_mallctl(name, NULL, NULL, NULL, 0), 0);
    refresh();
    size_t after = stat("stats.resident");
    cr_assert_leq(after + 16 * MiB, before, "stats.resident %zu before purging, %zu after", before,
                  after);
    cr_assert_eq(ta_mallctl("arena.4096.purge", NULL, NULL, NULL, 0), 0);
    cr_assert_eq(ta_mallctl("arena.0.decay", NULL, NULL, NULL, 0), 0);
    cr_assert_eq(ta_mallctl("arena.4096.decay", NULL, NULL, NULL, 0), 0);
    snprintf(name, sizeof name, "arena.%u.purge", n + 1);
    if (n + 1 != TA_MALLCTL_ARENAS_ALL)
        cr_assert_eq(ta_mallctl(name, NULL, NULL, NULL, 0), ENOENT, "%s", name);
}

Test(jemalloc, mallctl_error_rules, .timeout = 60)
{
    static const char *const unknown[] = {
        "", "nonexistent", "stats", "stats.", ".stats.allocated", "stats.allocated.x",
        "stats.arenas.0.pactive", "thread.allocated", "arena", "arena.x.purge",
        "arena..purge", "arena.0", "arena.0.reset", "arenas.bin.56.size",
        "arenas.bin.99999999999999999999999.size", "opt.nonexistent", "a.b.c.d.e.f.g.h.i",
    };
    for (size_t i = 0; i < N(unknown); i++)
        cr_assert_eq(ta_mallctl(unknown[i], NULL, NULL, NULL, 0), ENOENT, "\"%s\"", unknown[i]);

    /* A read with the wrong length copies what fits and says how much. */
    refresh();
    size_t full = stat("stats.allocated");
    uint32_t small = 0;
    size_t len = sizeof small;
    cr_assert_eq(ta_mallctl("stats.allocated", &small, &len, NULL, 0), EINVAL);
    cr_assert_eq(len, sizeof small);
    cr_assert_eq(small, (uint32_t)full);
    char big[16];
    len = sizeof big;
    cr_assert_eq(ta_mallctl("stats.allocated", big, &len, NULL, 0), EINVAL);
    cr_assert_eq(len, sizeof(size_t));
    /* Nothing to read: fine. */
    cr_assert_eq(ta_mallctl("stats.allocated", NULL, NULL, NULL, 0), 0);
    /* Writes: read-only names, wrong lengths, actions. */
    size_t v = 1;
    len = sizeof v;
    cr_assert_eq(ta_mallctl("stats.allocated", &v, &len, &v, sizeof v), EPERM);
    cr_assert_eq(ta_mallctl("arenas.page", NULL, NULL, &v, sizeof v), EPERM);
    uint64_t e = 1;
    cr_assert_eq(ta_mallctl("epoch", NULL, NULL, &e, 4), EINVAL);
    cr_assert_eq(ta_mallctl("arena.0.purge", &v, &len, NULL, 0), EPERM);
    cr_assert_eq(ta_mallctl("thread.tcache.flush", NULL, NULL, &v, sizeof v), EPERM);
    cr_assert_eq(ta_mallctl("thread.tcache.flush", NULL, NULL, NULL, 0), 0);
}

Test(jemalloc, settings_and_constants, .timeout = 60)
{
    const char *s = NULL;
    size_t len = sizeof s;
    cr_assert_eq(ta_mallctl("version", &s, &len, NULL, 0), 0);
    cr_assert(s != NULL && strstr(s, "tamalloc") != NULL, "version \"%s\"", s ? s : "(null)");
    /* The kernel's page, or the larger one TAMALLOC_CONF's page_kb asks for. */
    size_t page = stat("arenas.page");
    cr_assert(page >= (size_t)sysconf(_SC_PAGESIZE) && page <= 65536 && (page & (page - 1)) == 0,
              "arenas.page %zu", page);
    const char *conf = getenv("TAMALLOC_CONF");
    if (conf == NULL || strstr(conf, "page_kb") == NULL)
        cr_assert_eq(page, (size_t)sysconf(_SC_PAGESIZE));
    cr_assert_eq(stat("arenas.quantum"), 16);
    ssize_t d = 0;
    len = sizeof d;
    cr_assert_eq(ta_mallctl("opt.dirty_decay_ms", &d, &len, NULL, 0), 0);
    cr_assert_eq(d, 200);
    cr_assert_eq(ta_mallctl("arenas.dirty_decay_ms", &d, &len, NULL, 0), 0);
    cr_assert_eq(d, 200);
    cr_assert_eq(ta_mallctl("opt.muzzy_decay_ms", &d, &len, NULL, 0), 0);
    cr_assert_eq(d, 0);
    bool b = true;
    len = sizeof b;
    cr_assert_eq(ta_mallctl("opt.tcache", &b, &len, NULL, 0), 0);
    cr_assert_eq(b, false);
    cr_assert_eq(ta_mallctl("config.stats", &b, &len, NULL, 0), 0);
    cr_assert_eq(b, true);
    cr_assert_eq(ta_mallctl("opt.prof", &b, &len, NULL, 0), 0);
    cr_assert_eq(b, false);
    cr_assert_eq(ta_mallctl("opt.dss", &s, &(size_t){sizeof s}, NULL, 0), 0);
    cr_assert_str_eq(s, "disabled", "the ta_ API library never uses the break");
    unsigned n1 = 0, n2 = 0;
    len = sizeof n1;
    cr_assert_eq(ta_mallctl("opt.narenas", &n1, &len, NULL, 0), 0);
    cr_assert_eq(ta_mallctl("arenas.narenas", &n2, &len, NULL, 0), 0);
    cr_assert_eq(n1, n2);

    /* background_thread: off in the ta_ API library; a write sets it, opt.* keeps the start. */
    b = true;
    len = sizeof b;
    cr_assert_eq(ta_mallctl("background_thread", &b, &len, NULL, 0), 0);
    cr_assert_eq(b, false);
    bool on = true, old = true;
    cr_assert_eq(ta_mallctl("background_thread", &old, &len, &on, sizeof on), 0);
    cr_assert_eq(old, false);
    cr_assert_eq(ta_mallctl("background_thread", &b, &len, NULL, 0), 0);
    cr_assert_eq(b, true);
    cr_assert_eq(ta_mallctl("opt.background_thread", &b, &len, NULL, 0), 0);
    cr_assert_eq(b, false);
    on = false;
    cr_assert_eq(ta_mallctl("background_thread", NULL, NULL, &on, sizeof on), 0);
    cr_assert_eq(ta_mallctl("background_thread", NULL, NULL, &on, 4), EINVAL);
    size_t m = 4;
    cr_assert_eq(ta_mallctl("max_background_threads", NULL, NULL, &m, sizeof m), 0);
    cr_assert_eq(stat("max_background_threads"), 1);
}

/* The MIB forms: a MIB from a name, the numbered component changed in place. */
Test(jemalloc, mib_forms, .timeout = 60)
{
    unsigned nbins = 0;
    size_t len = sizeof nbins;
    cr_assert_eq(ta_mallctl("arenas.nbins", &nbins, &len, NULL, 0), 0);
    cr_assert_gt(nbins, 30);
    size_t mib[8], miblen = 8;
    cr_assert_eq(ta_mallctlnametomib("arenas.bin.0.size", mib, &miblen), 0);
    cr_assert_eq(miblen, 4);
    cr_assert_eq(mib[2], 0);
    size_t prev = 0;
    for (unsigned i = 0; i < nbins; i++) {
        mib[2] = i;
        size_t size = 0;
        len = sizeof size;
        cr_assert_eq(ta_mallctlbymib(mib, miblen, &size, &len, NULL, 0), 0, "bin %u", i);
        cr_assert_gt(size, prev);
        cr_assert_eq(ta_nallocx(size, 0), size, "bin %u: size %zu is not a size class", i, size);
        prev = size;
    }
    mib[2] = nbins;
    cr_assert_eq(ta_mallctlbymib(mib, miblen, &prev, &len, NULL, 0), ENOENT);
    /* Partial: the first components only; an inner node is no value. */
    miblen = 2;
    cr_assert_eq(ta_mallctlnametomib("arenas.bin.0.size", mib, &miblen), 0);
    cr_assert_eq(miblen, 2);
    cr_assert_eq(ta_mallctlbymib(mib, miblen, &prev, &len, NULL, 0), ENOENT);
    miblen = 8;
    cr_assert_eq(ta_mallctlnametomib("arenas.bin.999.size", mib, &miblen), ENOENT);
    /* The epoch by MIB. */
    miblen = 8;
    cr_assert_eq(ta_mallctlnametomib("epoch", mib, &miblen), 0);
    cr_assert_eq(miblen, 1);
    uint64_t e = 0, e2 = 0;
    len = sizeof e;
    cr_assert_eq(ta_mallctlbymib(mib, miblen, &e, &len, &e, sizeof e), 0);
    cr_assert_eq(ta_mallctlbymib(mib, miblen, &e2, &len, NULL, 0), 0);
    cr_assert_eq(e, e2);
}

/* ------------------------------------------------------------------ malloc_stats_print */

struct collected {
    char text[1 << 16];
    size_t len;
    int calls;
};

static void collect(void *opaque, const char *s)
{
    struct collected *c = opaque;
    size_t n = strlen(s);
    if (c->len + n < sizeof c->text) {
        memcpy(c->text + c->len, s, n + 1);
        c->len += n;
    }
    c->calls++;
    void *p = ta_malloc(64); /* the callback may allocate */
    ta_free(p);
}

Test(jemalloc, malloc_stats_print_writes_the_report, .timeout = 60)
{
    static struct collected c;
    void *keep = ta_mallocx(1000, 0);
    ta_malloc_stats_print(collect, &c, NULL);
    cr_assert_gt(c.calls, 0);
    cr_assert(strstr(c.text, "tamalloc statistics (whole process)") != NULL, "%s", c.text);
    memset(&c, 0, sizeof c);
    ta_malloc_stats_print(collect, &c, "Jmdablxe");
    cr_assert(c.text[0] == '{' && strstr(c.text, "\"usable_bytes\":") != NULL, "%s", c.text);
    ta_free(keep);
}
