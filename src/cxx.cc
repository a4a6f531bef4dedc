/*
 * cxx.cc — C++'s replaceable operator new and operator delete, on tamalloc.
 *
 * All twenty: new and new[], each plain, nothrow, aligned (std::align_val_t) and aligned
 * nothrow; delete and delete[], each plain, nothrow, sized, aligned, aligned nothrow and
 * sized aligned. Standard semantics: new of size 0 returns a unique pointer; when memory
 * runs out, new calls the installed new-handler and tries again for as long as there is
 * one, then throws std::bad_alloc; the nothrow forms return nullptr instead and let no
 * exception out; an alignment that is not a power of two fails as memory running out does,
 * without the handler. The sized deletes check the size as free_sized does and the aligned
 * ones the alignment as free_aligned_sized does (an invalid one aborts with the one-line
 * message naming "operator delete()"); the plain ones are free.
 *
 * Only the failure path needs a C++ runtime (the new-handler, std::bad_alloc). This file is
 * compiled two ways:
 *
 *   - TA_CXX_LOOKUP, for the shared libraries: libtamalloc.so is preloaded into C programs
 *     too, so it must not depend on libstdc++. Compiled without exceptions or RTTI, it
 *     names no C++ library symbol: when an allocation fails it finds the program's own
 *     runtime by name — std::get_new_handler and std::__throw_bad_alloc (libstdc++ and
 *     libc++ both export these names) through the global scope, or in a libstdc++.so.6 or
 *     libc++.so.1 loaded with RTLD_LOCAL (a C++ module of a C program). The exception
 *     unwinds through these frames by their unwind tables. A nothrow form whose handler
 *     may throw hands the retry to the runtime's own nothrow operator, which calls the
 *     throwing operator here and catches.
 *   - otherwise, for libtamalloc.a: plain C++ (std::get_new_handler, throw, catch). Only a
 *     C++ program pulls this object out of the archive, and its link brings the runtime.
 */
#include <cstddef>
#include <new>

#include "cxx.h"

#ifdef TA_CXX_LOOKUP
#include <dlfcn.h>
#endif

#define TA_LIKELY(x) __builtin_expect(!!(x), 1)

namespace {

bool is_pow2(std::size_t a) { return a != 0 && (a & (a - 1)) == 0; }

/* One try: align 0 for the unaligned forms. */
void *try_alloc(std::size_t n, std::size_t align) noexcept {
  return align == 0 ? ta_cxx_malloc(n) : ta_cxx_aligned_alloc(align, n);
}

#ifdef TA_CXX_LOOKUP

/* A symbol of the C++ runtime this process runs, if any. `any_scope`: the global scope may
 * answer (names this library does not define); otherwise only the runtime libraries
 * themselves (an operator: the global scope would give this library's own, or another
 * allocator's). */
void *runtime_symbol(const char *name, bool any_scope) noexcept {
  if (any_scope) {
    if (void *f = dlsym(RTLD_DEFAULT, name)) return f;
  }
  static const char *const libraries[] = {"libstdc++.so.6", "libc++.so.1"};
  for (const char *lib : libraries) {
    void *h = dlopen(lib, RTLD_LAZY | RTLD_NOLOAD); /* only if already loaded */
    if (h == nullptr) continue;
    void *f = dlsym(h, name);
    dlclose(h);
    if (f != nullptr) return f;
  }
  return nullptr;
}

std::new_handler current_handler() noexcept {
  using getter = std::new_handler (*)() noexcept;
  void *f = runtime_symbol("_ZSt15get_new_handlerv", true); /* std::get_new_handler() */
  return f ? reinterpret_cast<getter>(f)() : nullptr;
}

[[noreturn]] void throw_bad_alloc(std::size_t n) {
  using thrower = void (*)();
  void *f = runtime_symbol("_ZSt17__throw_bad_allocv", true); /* std::__throw_bad_alloc() */
  if (f != nullptr) reinterpret_cast<thrower>(f)();
  /* Not reached with a runtime: someone called operator new without one. */
  ta_fatal("operator new(): out of memory, and no C++ runtime to throw std::bad_alloc; size",
           reinterpret_cast<const void *>(n));
}

#else

std::new_handler current_handler() noexcept { return std::get_new_handler(); }

[[noreturn]] void throw_bad_alloc(std::size_t) { throw std::bad_alloc(); }

#endif

/* After a failed try: the standard's loop. */
void *alloc_failed(std::size_t n, std::size_t align) {
  for (;;) {
    std::new_handler h = current_handler();
    if (h == nullptr) throw_bad_alloc(n);
    h();
    if (void *p = try_alloc(n, align)) return p;
  }
}

/* The nothrow forms after a failed try: the throwing form's result, nullptr for an
 * exception. `runtime_form`: the mangled name of the runtime's own nothrow operator. */
void *nothrow_failed(std::size_t n, std::size_t align, const char *runtime_form) noexcept {
  /* No handler: the throwing form would throw at once. */
  if (current_handler() == nullptr) return nullptr;
#ifdef TA_CXX_LOOKUP
  /* The handler may throw, and nothing here can catch: the runtime's nothrow operator calls
   * the throwing one (this library's: it comes first in the global scope) and catches. */
  void *f = runtime_symbol(runtime_form, false);
  if (f == nullptr) return nullptr;
  std::nothrow_t tag;
  if (align == 0) {
    using form = void *(*)(std::size_t, const std::nothrow_t &) noexcept;
    return reinterpret_cast<form>(f)(n, tag);
  }
  using form = void *(*)(std::size_t, std::align_val_t, const std::nothrow_t &) noexcept;
  return reinterpret_cast<form>(f)(n, static_cast<std::align_val_t>(align), tag);
#else
  (void)runtime_form;
  try {
    return alloc_failed(n, align);
  } catch (...) {
    return nullptr;
  }
#endif
}

void *new_aligned(std::size_t n, std::size_t align) {
  if (!is_pow2(align)) throw_bad_alloc(n);
  void *p = ta_cxx_aligned_alloc(align, n);
  if (TA_LIKELY(p != nullptr)) return p;
  return alloc_failed(n, align);
}

void *new_aligned_nothrow(std::size_t n, std::size_t align, const char *runtime_form) noexcept {
  if (!is_pow2(align)) return nullptr;
  void *p = ta_cxx_aligned_alloc(align, n);
  if (TA_LIKELY(p != nullptr)) return p;
  return nothrow_failed(n, align, runtime_form);
}

} // namespace

#define TA_OPERATOR __attribute__((visibility("default")))

/* ------------------------------------------------------------------ new */

TA_OPERATOR void *operator new(std::size_t n) {
  void *p = ta_cxx_malloc(n);
  if (TA_LIKELY(p != nullptr)) return p;
  return alloc_failed(n, 0);
}

TA_OPERATOR void *operator new[](std::size_t n) {
  void *p = ta_cxx_malloc(n);
  if (TA_LIKELY(p != nullptr)) return p;
  return alloc_failed(n, 0);
}

TA_OPERATOR void *operator new(std::size_t n, const std::nothrow_t &) noexcept {
  void *p = ta_cxx_malloc(n);
  if (TA_LIKELY(p != nullptr)) return p;
  return nothrow_failed(n, 0, "_ZnwmRKSt9nothrow_t");
}

TA_OPERATOR void *operator new[](std::size_t n, const std::nothrow_t &) noexcept {
  void *p = ta_cxx_malloc(n);
  if (TA_LIKELY(p != nullptr)) return p;
  return nothrow_failed(n, 0, "_ZnamRKSt9nothrow_t");
}

TA_OPERATOR void *operator new(std::size_t n, std::align_val_t al) {
  return new_aligned(n, static_cast<std::size_t>(al));
}

TA_OPERATOR void *operator new[](std::size_t n, std::align_val_t al) {
  return new_aligned(n, static_cast<std::size_t>(al));
}

TA_OPERATOR void *operator new(std::size_t n, std::align_val_t al, const std::nothrow_t &) noexcept {
  return new_aligned_nothrow(n, static_cast<std::size_t>(al), "_ZnwmSt11align_val_tRKSt9nothrow_t");
}

TA_OPERATOR void *operator new[](std::size_t n, std::align_val_t al,
                                 const std::nothrow_t &) noexcept {
  return new_aligned_nothrow(n, static_cast<std::size_t>(al), "_ZnamSt11align_val_tRKSt9nothrow_t");
}

/* ------------------------------------------------------------------ delete */

TA_OPERATOR void operator delete(void *p) noexcept { ta_cxx_free(p); }
TA_OPERATOR void operator delete[](void *p) noexcept { ta_cxx_free(p); }
TA_OPERATOR void operator delete(void *p, const std::nothrow_t &) noexcept { ta_cxx_free(p); }
TA_OPERATOR void operator delete[](void *p, const std::nothrow_t &) noexcept { ta_cxx_free(p); }

TA_OPERATOR void operator delete(void *p, std::size_t n) noexcept { ta_delete_sized(p, n); }
TA_OPERATOR void operator delete[](void *p, std::size_t n) noexcept { ta_delete_sized(p, n); }

TA_OPERATOR void operator delete(void *p, std::align_val_t al) noexcept {
  ta_delete_aligned(p, 0, static_cast<std::size_t>(al), false);
}
TA_OPERATOR void operator delete[](void *p, std::align_val_t al) noexcept {
  ta_delete_aligned(p, 0, static_cast<std::size_t>(al), false);
}
TA_OPERATOR void operator delete(void *p, std::align_val_t al, const std::nothrow_t &) noexcept {
  ta_delete_aligned(p, 0, static_cast<std::size_t>(al), false);
}
TA_OPERATOR void operator delete[](void *p, std::align_val_t al, const std::nothrow_t &) noexcept {
  ta_delete_aligned(p, 0, static_cast<std::size_t>(al), false);
}

TA_OPERATOR void operator delete(void *p, std::size_t n, std::align_val_t al) noexcept {
  ta_delete_aligned(p, n, static_cast<std::size_t>(al), true);
}
TA_OPERATOR void operator delete[](void *p, std::size_t n, std::align_val_t al) noexcept {
  ta_delete_aligned(p, n, static_cast<std::size_t>(al), true);
}
