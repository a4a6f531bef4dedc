/*
 * cxx.h — what alloc.c offers cxx.cc, C++'s operator new and operator delete, beyond the
 * public ta_ functions. C++ cannot read internal.h (C11 atomics); these are plain C entry
 * points, hidden in the libraries.
 */
#ifndef TA_CXX_H
#define TA_CXX_H

#include <stddef.h>
#ifndef __cplusplus
#include <stdbool.h>
#endif

#ifdef __cplusplus
extern "C" {
/* error.c: the one-line abort message. */
__attribute__((visibility("hidden"), noreturn)) void ta_fatal(const char *what, const void *p) noexcept;
#define TA_CXX_NOEXCEPT noexcept
#else
#define TA_CXX_NOEXCEPT
#endif

/* ta_malloc, ta_aligned_alloc and ta_free under hidden names (aliases in alloc.c), so that
 * the operators call them directly rather than through the GOT; declared noexcept to C++: C
 * functions never throw, and a noexcept operator calling a function that may would keep a
 * path to std::terminate. */
__attribute__((visibility("hidden"))) void *ta_cxx_malloc(size_t size) TA_CXX_NOEXCEPT;
__attribute__((visibility("hidden"))) void *ta_cxx_aligned_alloc(size_t alignment,
                                                                 size_t size) TA_CXX_NOEXCEPT;
__attribute__((visibility("hidden"))) void ta_cxx_free(void *ptr) TA_CXX_NOEXCEPT;

/* Sized operator delete: free_sized's checks, reported as "operator delete(): ...". */
__attribute__((visibility("hidden"))) void ta_delete_sized(void *p, size_t size) TA_CXX_NOEXCEPT;
/* Aligned operator delete: p must be aligned to `align` (a power of two); with `sized`, the
 * size is checked as free_aligned_sized checks it. */
__attribute__((visibility("hidden"))) void ta_delete_aligned(void *p, size_t size, size_t align,
                                                             bool sized) TA_CXX_NOEXCEPT;

#ifdef __cplusplus
}
#endif

#endif /* TA_CXX_H */
