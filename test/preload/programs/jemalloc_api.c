/*
 * jemalloc_api — a program built against jemalloc (jemalloc/jemalloc.h, -ljemalloc) that
 * uses its non-standard API. Run alone it uses jemalloc; run with libtamalloc.so preloaded
 * every one of these names must bind to tamalloc and behave as jemalloc documents. It checks
 * what holds for both and prints which library served each name, then "ok".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <jemalloc/jemalloc.h>
#include <libgen.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            printf("FAIL line %d: %s: ", __LINE__, #cond);                                     \
            printf(__VA_ARGS__);                                                               \
            printf("\n");                                                                      \
            failures++;                                                                        \
        }                                                                                      \
    } while (0)

/* The file name of the object the program's call to `fn` reaches. */
static const char *served_by(void *fn)
{
    Dl_info info;
    if (dladdr(fn, &info) == 0 || info.dli_fname == NULL)
        return "?";
    return basename((char *)info.dli_fname);
}

static size_t stat(const char *name)
{
    size_t v = 0, len = sizeof v;
    int r = mallctl(name, &v, &len, NULL, 0);
    CHECK(r == 0, "mallctl(%s) = %d", name, r);
    return v;
}

static void refresh(void)
{
    uint64_t e = 1;
    size_t len = sizeof e;
    CHECK(mallctl("epoch", &e, &len, &e, sizeof e) == 0, "epoch");
}

struct text {
    char buf[1 << 16];
    size_t len;
};

static void collect(void *opaque, const char *s)
{
    struct text *t = opaque;
    size_t n = strlen(s);
    if (t->len + n < sizeof t->buf) {
        memcpy(t->buf + t->len, s, n + 1);
        t->len += n;
    }
}

int main(void)
{
    /* Where each name comes from. volatile: the calls below must be real calls. */
    struct {
        const char *name;
        void *fn;
    } names[] = {
        {"malloc", (void *)malloc},
        {"free", (void *)free},
        {"mallocx", (void *)mallocx},
        {"rallocx", (void *)rallocx},
        {"xallocx", (void *)xallocx},
        {"sallocx", (void *)sallocx},
        {"dallocx", (void *)dallocx},
        {"sdallocx", (void *)sdallocx},
        {"nallocx", (void *)nallocx},
        {"mallctl", (void *)mallctl},
        {"mallctlnametomib", (void *)mallctlnametomib},
        {"mallctlbymib", (void *)mallctlbymib},
        {"malloc_stats_print", (void *)malloc_stats_print},
        {"malloc_usable_size", (void *)malloc_usable_size},
    };
    const char *first = served_by(names[0].fn);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *by = served_by(names[i].fn);
        CHECK(strcmp(by, first) == 0, "%s is served by %s, malloc by %s", names[i].name, by, first);
    }
    printf("served by %s\n", first);

    /* The allocation functions. */
    for (size_t n = 1; n < (8u << 20); n = n * 3 + 7) {
        char *p = mallocx(n, MALLOCX_ALIGN(64) | MALLOCX_ZERO);
        CHECK(p != NULL && ((uintptr_t)p & 63) == 0, "mallocx(%zu, align 64)", n);
        size_t u = sallocx(p, 0);
        CHECK(u >= n && u == malloc_usable_size(p), "sallocx %zu for %zu", u, n);
        for (size_t k = 0; k < n; k++)
            if (p[k] != 0) {
                CHECK(0, "mallocx(%zu, ZERO): byte %zu is %d", n, k, p[k]);
                break;
            }
        memset(p, 'a', n);
        char *q = rallocx(p, 2 * n, MALLOCX_ALIGN(64));
        CHECK(q != NULL && ((uintptr_t)q & 63) == 0 && memchr(q, 0, n) == NULL,
              "rallocx(%zu -> %zu)", n, 2 * n);
        size_t now = xallocx(q, n, 0, 0); /* may shrink in place */
        CHECK(now >= n && now == sallocx(q, 0), "xallocx");
        CHECK(nallocx(n, 0) >= n, "nallocx(%zu)", n);
        sdallocx(q, now, MALLOCX_ALIGN(64));
        void *r = mallocx(n, MALLOCX_TCACHE_NONE | MALLOCX_ARENA(0));
        dallocx(r, MALLOCX_TCACHE_NONE);
    }

    /* mallctl: what programs read (redis: epoch, stats.*, arenas.narenas, arena.<i>.purge). */
    refresh();
    size_t a0 = stat("stats.allocated");
    void *big = malloc(64u << 20);
    memset(big, 1, 64u << 20);
    refresh();
    size_t a1 = stat("stats.allocated");
    CHECK(a1 >= a0 + (64u << 20), "stats.allocated %zu then %zu after 64 MiB", a0, a1);
    CHECK(stat("stats.active") >= a1, "stats.active");
    CHECK(stat("stats.resident") >= (64u << 20), "stats.resident");
    CHECK(stat("stats.mapped") >= (64u << 20), "stats.mapped");
    (void)stat("stats.metadata");
    (void)stat("stats.retained");
    free(big);
    unsigned narenas = 0;
    size_t len = sizeof narenas;
    CHECK(mallctl("arenas.narenas", &narenas, &len, NULL, 0) == 0 && narenas >= 1, "narenas");
    char name[64];
    snprintf(name, sizeof name, "arena.%u.purge", narenas);
    CHECK(mallctl(name, NULL, NULL, NULL, 0) == 0, "%s", name);
    CHECK(mallctl("arena." "4096" ".decay", NULL, NULL, NULL, 0) == 0, "arena.4096.decay");
    CHECK(mallctl("thread.tcache.flush", NULL, NULL, NULL, 0) == 0, "thread.tcache.flush");
    CHECK(mallctl("no.such.name", NULL, NULL, NULL, 0) == ENOENT, "unknown name");
    uint32_t small;
    len = sizeof small;
    CHECK(mallctl("stats.allocated", &small, &len, NULL, 0) == EINVAL, "short oldlen");
    bool bg = false;
    len = sizeof bg;
    CHECK(mallctl("opt.background_thread", &bg, &len, NULL, 0) == 0, "opt.background_thread");
    ssize_t decay;
    len = sizeof decay;
    CHECK(mallctl("opt.dirty_decay_ms", &decay, &len, NULL, 0) == 0, "opt.dirty_decay_ms");
    size_t mib[4], miblen = 4, bin_size = 0;
    CHECK(mallctlnametomib("arenas.bin.0.size", mib, &miblen) == 0 && miblen == 4, "nametomib");
    len = sizeof bin_size;
    CHECK(mallctlbymib(mib, miblen, &bin_size, &len, NULL, 0) == 0 && bin_size > 0, "bymib");
    const char *version = NULL;
    len = sizeof version;
    CHECK(mallctl("version", &version, &len, NULL, 0) == 0 && version != NULL, "version");
    printf("version %s\n", version ? version : "?");

    static struct text t;
    malloc_stats_print(collect, &t, NULL);
    CHECK(t.len > 0, "malloc_stats_print wrote nothing");
    printf("report: %.40s\n", t.buf);
    if (failures == 0)
        printf("ok\n");
    return failures != 0;
}
