/*
 * jemalloc_stub - stands in for libjemalloc.so.2 when redis-server runs on another
 * allocator.
 *
 * Debian links redis-server against the system jemalloc. Besides malloc and friends
 * it calls three jemalloc-only functions: mallctl (statistics, the background purge
 * thread, MEMORY PURGE), nallocx (to skip a realloc when the size class would not
 * change) and malloc_stats_print (MEMORY MALLOC-STATS). When another allocator is
 * preloaded, malloc and friends bind to it, but loading the real libjemalloc would
 * still start and initialise a second, idle allocator in the process. This stub
 * provides the three functions as "not available" instead, which is how redis
 * behaves when built without jemalloc: statistics read as zero and every shrink goes
 * through realloc. A preloaded library that exports these names itself (tcmalloc has
 * nallocx, for instance; tamalloc has all three) still takes precedence over the stub,
 * which then only keeps the set of loaded objects the same in every column.
 */
#include <errno.h>
#include <stddef.h>

#define EXPORT __attribute__((visibility("default")))

EXPORT int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen);
EXPORT size_t nallocx(size_t size, int flags);
EXPORT void malloc_stats_print(void (*write_cb)(void *, const char *), void *opaque, const char *opts);

int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen)
{
    (void)name; (void)oldp; (void)oldlenp; (void)newp; (void)newlen;
    return ENOENT;
}

size_t nallocx(size_t size, int flags)
{
    (void)size; (void)flags;
    return 0;
}

void malloc_stats_print(void (*write_cb)(void *, const char *), void *opaque, const char *opts)
{
    (void)opts;
    if (write_cb)
        write_cb(opaque, "allocator statistics are not available (jemalloc stub)\n");
}
