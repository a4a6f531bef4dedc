/*
 * override.c — the replacement: alloc.c compiled with the standard names as aliases.
 *
 * The whole family is replaced together (a family only half replaced sends blocks to the
 * system allocator's heap): malloc, free, calloc, realloc, reallocarray, posix_memalign,
 * aligned_alloc, memalign, valloc, pvalloc, malloc_usable_size, C23's free_sized and
 * free_aligned_sized, malloc_trim, glibc's malloc_stats, mallinfo2, mallinfo and malloc_info, and
 * glibc's __libc_* entry points that some programs call directly. Aliases cost nothing: malloc *is* ta_malloc.
 * Also jemalloc's non-standard API (mallocx, ..., mallctl, malloc_stats_print) and, from
 * cxx.cc, C++'s operator new and operator delete.
 *
 * mallctl.c is compiled here too, as it is beside alloc.c in the ta_ API library: it calls
 * the public API and reads what differs between the libraries, and the standard names
 * below call it, so the top layer is one object (docs/design.md, "Layers").
 */
#define TA_OVERRIDE 1
#include "alloc.c"
#include "mallctl.c"

#include <malloc.h>
#include <stdio.h>

/* In stats.c, which is shared with the ta_ API library. */
void ta_malloc_stats(void);
struct mallinfo2 ta_mallinfo2(void);
struct mallinfo ta_mallinfo(void);
int ta_malloc_info(int options, FILE *fp);

#pragma GCC diagnostic ignored "-Wmissing-attributes" /* the aliases need not repeat them */
#define TA_ALIAS(target) __attribute__((alias(#target), visibility("default"), used))

void *malloc(size_t size) TA_ALIAS(ta_malloc);
void *calloc(size_t count, size_t size) TA_ALIAS(ta_calloc);
void *realloc(void *p, size_t size) TA_ALIAS(ta_realloc);
void *reallocarray(void *p, size_t count, size_t size) TA_ALIAS(ta_reallocarray);
void free(void *p) TA_ALIAS(ta_free);
void free_sized(void *p, size_t size) TA_ALIAS(ta_free_sized);
void free_aligned_sized(void *p, size_t align, size_t size) TA_ALIAS(ta_free_aligned_sized);
void cfree(void *p) TA_ALIAS(ta_free);
int posix_memalign(void **out, size_t align, size_t size) TA_ALIAS(ta_posix_memalign);
void *aligned_alloc(size_t align, size_t size) TA_ALIAS(ta_aligned_alloc);
void *memalign(size_t align, size_t size) TA_ALIAS(ta_memalign);
void *valloc(size_t size) TA_ALIAS(ta_valloc);
void *pvalloc(size_t size) TA_ALIAS(ta_pvalloc);
size_t malloc_usable_size(void *p) TA_ALIAS(ta_malloc_usable_size);
int malloc_trim(size_t pad) TA_ALIAS(ta_malloc_trim);

/* Reporting functions live in stats.c (another translation unit): forwarded, not aliased. */
#define TA_EXPORT __attribute__((visibility("default")))
TA_EXPORT void malloc_stats(void) { ta_malloc_stats(); }
TA_EXPORT struct mallinfo2 mallinfo2(void) { return ta_mallinfo2(); }
TA_EXPORT struct mallinfo mallinfo(void) { return ta_mallinfo(); }
TA_EXPORT int malloc_info(int options, FILE *fp) { return ta_malloc_info(options, fp); }

/* jemalloc's non-standard API under its own names (docs/jemalloc-api.md), so that a program
 * built against jemalloc (Debian's redis-server) runs on tamalloc preloaded: every name it
 * calls binds here, before the libjemalloc.so.2 it was linked with. The allocation functions
 * are in alloc.c (aliases); mallctl and malloc_stats_print in mallctl.c (forwarded). */
void *mallocx(size_t size, int flags) TA_ALIAS(ta_mallocx);
void *rallocx(void *p, size_t size, int flags) TA_ALIAS(ta_rallocx);
size_t xallocx(void *p, size_t size, size_t extra, int flags) TA_ALIAS(ta_xallocx);
size_t sallocx(const void *p, int flags) TA_ALIAS(ta_sallocx);
void dallocx(void *p, int flags) TA_ALIAS(ta_dallocx);
void sdallocx(void *p, size_t size, int flags) TA_ALIAS(ta_sdallocx);
size_t nallocx(size_t size, int flags) TA_ALIAS(ta_nallocx);
int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen);
int mallctlnametomib(const char *name, size_t *mibp, size_t *miblenp);
int mallctlbymib(const size_t *mib, size_t miblen, void *oldp, size_t *oldlenp, void *newp,
                 size_t newlen);
void malloc_stats_print(void (*write_cb)(void *, const char *), void *cbopaque, const char *opts);
TA_EXPORT int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen) {
  return ta_mallctl(name, oldp, oldlenp, newp, newlen);
}
TA_EXPORT int mallctlnametomib(const char *name, size_t *mibp, size_t *miblenp) {
  return ta_mallctlnametomib(name, mibp, miblenp);
}
TA_EXPORT int mallctlbymib(const size_t *mib, size_t miblen, void *oldp, size_t *oldlenp,
                           void *newp, size_t newlen) {
  return ta_mallctlbymib(mib, miblen, oldp, oldlenp, newp, newlen);
}
/* jemalloc's malloc_message: where malloc_stats_print writes when given no callback (stderr
 * while it is NULL). A program may set it. */
TA_EXPORT void (*malloc_message)(void *cbopaque, const char *s);
TA_EXPORT void malloc_stats_print(void (*write_cb)(void *, const char *), void *cbopaque,
                                  const char *opts) {
  ta_malloc_stats_print(write_cb ? write_cb : malloc_message, cbopaque, opts);
}

void *__libc_malloc(size_t size) TA_ALIAS(ta_malloc);
void *__libc_calloc(size_t count, size_t size) TA_ALIAS(ta_calloc);
void *__libc_realloc(void *p, size_t size) TA_ALIAS(ta_realloc);
void __libc_free(void *p) TA_ALIAS(ta_free);
void *__libc_memalign(size_t align, size_t size) TA_ALIAS(ta_memalign);
void *__libc_valloc(size_t size) TA_ALIAS(ta_valloc);
void *__libc_pvalloc(size_t size) TA_ALIAS(ta_pvalloc);
int __posix_memalign(void **out, size_t align, size_t size) TA_ALIAS(ta_posix_memalign);
