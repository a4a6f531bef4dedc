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

#ifdef __cplusplus
}
#endif

#endif /* TAMALLOC_H */
