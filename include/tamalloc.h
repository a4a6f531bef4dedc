/*
 * tamalloc — a thread-safe, multi-arena memory allocator.
 *
 * Every function of the malloc family is exported twice:
 *   - with its usual name (malloc, free, ...) by libtamalloc.so and libtamalloc.a, which
 *     replace the system allocator when preloaded or linked;
 *   - with the prefix ta_ by every build, including libtamalloc_api.a, which does NOT
 *     replace malloc. Tests, sanitizer builds and programs that want both allocators side
 *     by side use the ta_ names.
 *
 * Semantics are glibc's (see docs/design.md, "API rules"): impossible sizes return NULL
 * with errno ENOMEM, free(NULL) does nothing, free preserves errno, an invalid or double
 * free aborts with one line on stderr naming the pointer.
 */
#ifndef TAMALLOC_H
#define TAMALLOC_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TAMALLOC_VERSION_MAJOR 0
#define TAMALLOC_VERSION_MINOR 1
#define TAMALLOC_VERSION_PATCH 0

#if defined(__GNUC__) || defined(__clang__)
#define TA_API __attribute__((visibility("default")))
#define TA_MALLOC_ATTR __attribute__((malloc, warn_unused_result))
#define TA_ALLOC_SIZE(n) __attribute__((alloc_size(n)))
#define TA_ALLOC_SIZE2(n, m) __attribute__((alloc_size(n, m)))
#define TA_ALLOC_ALIGN(n) __attribute__((alloc_align(n)))
#else
#define TA_API
#define TA_MALLOC_ATTR
#define TA_ALLOC_SIZE(n)
#define TA_ALLOC_SIZE2(n, m)
#define TA_ALLOC_ALIGN(n)
#endif

TA_API void *ta_malloc(size_t size) TA_MALLOC_ATTR TA_ALLOC_SIZE(1);
TA_API void *ta_calloc(size_t count, size_t size) TA_MALLOC_ATTR TA_ALLOC_SIZE2(1, 2);
TA_API void *ta_realloc(void *ptr, size_t size) TA_ALLOC_SIZE(2);
TA_API void *ta_reallocarray(void *ptr, size_t count, size_t size) TA_ALLOC_SIZE2(2, 3);
TA_API void ta_free(void *ptr);
TA_API void ta_free_sized(void *ptr, size_t size);
TA_API void ta_free_aligned_sized(void *ptr, size_t alignment, size_t size);
TA_API int ta_posix_memalign(void **out, size_t alignment, size_t size);
TA_API void *ta_aligned_alloc(size_t alignment, size_t size) TA_MALLOC_ATTR
    TA_ALLOC_ALIGN(1) TA_ALLOC_SIZE(2);
TA_API void *ta_memalign(size_t alignment, size_t size) TA_MALLOC_ATTR TA_ALLOC_ALIGN(1)
    TA_ALLOC_SIZE(2);
TA_API void *ta_valloc(size_t size) TA_MALLOC_ATTR TA_ALLOC_SIZE(1);
TA_API void *ta_pvalloc(size_t size) TA_MALLOC_ATTR;
TA_API size_t ta_malloc_usable_size(void *ptr);

/* Returns the allocator to the operating system everything it can; returns 1 if any
 * memory was given back, 0 otherwise (glibc's malloc_trim contract). */
TA_API int ta_malloc_trim(size_t pad);

/* ------------------------------------------------------------------ statistics
 * Every figure is defined in docs/statistics.md. Counters are kept per thread and merged
 * when read; requested sizes are kept only while statistics are on (TAMALLOC_CONF
 * "stats:true" or "stats_print:true", or ta_stats_enable(1) before the first allocation).
 * A read is exact when no other thread allocates or frees during it. */
#define TA_STATS_VERSION 1
#define TA_STATS_CLASSES 138 /* [0]: huge blocks; [1..136]: size classes; [137]: unused */

struct ta_class_stats {
  unsigned long long block_size;      /* the class's size (0 for the huge bucket) */
  unsigned long long live_blocks;     /* handed out and not freed */
  unsigned long long usable_bytes;    /* usable size of the live blocks */
  unsigned long long requested_bytes; /* what was asked for them (statistics on) */
  unsigned long long free_blocks;     /* free blocks of the class, ready for reuse */
  unsigned long long free_bytes;      /* free bytes held for the class (blocks, unused run space) */
  unsigned long long stranded_bytes;  /* free bytes in runs that also hold live blocks */
  unsigned long long runs;            /* runs (small classes) */
};

struct ta_stats {
  unsigned version;          /* in: TA_STATS_VERSION */
  unsigned size;             /* in: sizeof(struct ta_stats) */
  int requested_tracked;     /* out: statistics on, requested figures are exact */
  int arena;                 /* -1: the whole process; else the arena index asked for */
  /* The seed's counters. */
  unsigned long long blocks, free_blocks;
  unsigned long long mallocs, frees, callocs, reallocs, reuses;
  unsigned long long grows, shrinks, splits, merges;
  unsigned long long requested_bytes; /* live blocks: what was asked */
  unsigned long long usable_bytes;    /* live blocks: what was given */
  unsigned long long heap_bytes;      /* memory the allocator holds */
  /* Fragmentation (percent). */
  double internal_fragmentation_pct;  /* 100 * (usable - requested) / usable */
  double external_fragmentation_pct;  /* 100 * (1 - largest free block / free bytes) */
  double stranded_pct;                /* 100 * stranded bytes / heap bytes */
  unsigned long long free_bytes, largest_free_block, stranded_bytes;
  /* What a production allocator adds. */
  unsigned long long mapped_bytes;    /* address space mapped or taken from the break, now */
  unsigned long long resident_bytes;  /* of that, in memory now */
  unsigned long long returned_bytes;  /* given back to the kernel since start */
  unsigned long long remote_frees;    /* frees from a thread that did not own the block */
  unsigned long long arenas_live, arenas_abandoned, arenas_adopted;
  unsigned long long huge_blocks, huge_cached_bytes;
  struct ta_class_stats classes[TA_STATS_CLASSES];
};

/* Fills *out for the whole process (arena < 0) or one arena. Returns 0, or EINVAL when
 * version or size do not match, or ERANGE when there is no such arena. */
TA_API int ta_stats_get(struct ta_stats *out, int arena);
/* Writes the report to fd: format 0 text, 1 JSON (one object). Returns 0 or an errno. */
TA_API int ta_stats_print(int fd, int format);
/* Turns the tracking of requested sizes on or off; returns the previous setting. */
TA_API int ta_stats_enable(int on);
/* Writes the heap's layout to fd, one line per region (see docs/statistics.md). */
TA_API int ta_heap_map(int fd);

/* ------------------------------------------------------------------ jemalloc's API
 * jemalloc's non-standard functions, as far as they map onto tamalloc (docs/jemalloc-api.md
 * has the table). The replacement libraries also export them under jemalloc's own names
 * (mallocx, ..., mallctl, malloc_stats_print), so that a program built against jemalloc runs
 * on tamalloc preloaded; the ta_ names are in every build.
 *
 * Flags have jemalloc's values: an alignment (TA_MALLOCX_ALIGN, TA_MALLOCX_LG_ALIGN) and
 * TA_MALLOCX_ZERO act; the tcache and arena fields are accepted and ignored. Size 0 is
 * taken as 1 (jemalloc leaves it undefined). */
#define TA_MALLOCX_LG_ALIGN(la) ((int)(la))
#define TA_MALLOCX_ALIGN(a) ((int)__builtin_ctzll((unsigned long long)(a))) /* a: a power of two */
#define TA_MALLOCX_ZERO ((int)0x40)
#define TA_MALLOCX_TCACHE(tc) ((int)(((tc) + 2) << 8))
#define TA_MALLOCX_TCACHE_NONE TA_MALLOCX_TCACHE(-1)
#define TA_MALLOCX_ARENA(a) ((int)(((unsigned)(a) + 1) << 20))
#define TA_MALLCTL_ARENAS_ALL 4096 /* arena.<i>.purge and .decay: every arena */

/* mallocx: malloc with flags; NULL (errno ENOMEM) when impossible. */
TA_API void *ta_mallocx(size_t size, int flags) TA_MALLOC_ATTR TA_ALLOC_SIZE(1);
/* rallocx: realloc with flags (the alignment kept or moved to; MALLOCX_ZERO zeroes the bytes
 * beyond the old usable size). NULL leaves ptr as it was. */
TA_API void *ta_rallocx(void *ptr, size_t size, int flags) TA_ALLOC_SIZE(2);
/* xallocx: resizes in place where tamalloc can (a medium block owned by the calling thread)
 * to size + extra or at least size; returns the usable size, below size on failure. */
TA_API size_t ta_xallocx(void *ptr, size_t size, size_t extra, int flags);
/* sallocx: the usable size, as malloc_usable_size. */
TA_API size_t ta_sallocx(const void *ptr, int flags);
/* dallocx: free. sdallocx: free_sized's check of the size (any size from the request to the
 * usable size passes), and of the alignment the flags give. */
TA_API void ta_dallocx(void *ptr, int flags);
TA_API void ta_sdallocx(void *ptr, size_t size, int flags);
/* nallocx: the usable size mallocx(size, flags) would give, without allocating (a medium
 * block may get up to 32 bytes more); 0 when no allocation can succeed. */
TA_API size_t ta_nallocx(size_t size, int flags);
/* mallctl and its MIB forms: jemalloc's names that map onto tamalloc (version, epoch,
 * stats.*, arenas.*, arena.<i>.purge and .decay, thread.tcache.flush, opt.*, config.*,
 * background_thread). 0, or ENOENT for a name it does not answer, EINVAL for a wrong
 * *oldlenp or newlen, EPERM for a write to a read-only name or a read of an action. */
TA_API int ta_mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen);
TA_API int ta_mallctlnametomib(const char *name, size_t *mibp, size_t *miblenp);
TA_API int ta_mallctlbymib(const size_t *mib, size_t miblen, void *oldp, size_t *oldlenp,
                           void *newp, size_t newlen);
/* tamalloc's report (text, or JSON when opts contains 'J') through write_cb, or on stderr
 * when write_cb is NULL. */
TA_API void ta_malloc_stats_print(void (*write_cb)(void *cbopaque, const char *s), void *cbopaque,
                                  const char *opts);

#ifdef __cplusplus
}
#endif

#endif /* TAMALLOC_H */
