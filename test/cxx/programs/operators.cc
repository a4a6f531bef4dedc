/*
 * operators — C++'s operator new and operator delete on tamalloc, one case per run:
 *
 *   operators <case>
 *
 * Built twice: tatest_operators runs with libtamalloc.so preloaded, tatest_operators_static
 * is linked with libtamalloc.a. Each case prints what it saw and exits 0, or prints what
 * went wrong and exits 1; the misuse cases print the pointer, then end in tamalloc's abort.
 * cxx/cxx.c runs them and checks the output.
 */
#include <dlfcn.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <map>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "tamalloc.h"

namespace {

int failures = 0;

#define CHECK(cond, ...)                                                                   \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                               \
      printf(__VA_ARGS__);                                                                 \
      printf("\n");                                                                        \
      failures++;                                                                          \
    }                                                                                      \
  } while (0)

/* tamalloc's statistics, found by name: the preloaded library exports them, the static
 * build is linked with -rdynamic. */
using stats_get_fn = int (*)(struct ta_stats *, int);
stats_get_fn stats_get() {
  return reinterpret_cast<stats_get_fn>(dlsym(RTLD_DEFAULT, "ta_stats_get"));
}

unsigned long long live_blocks() {
  static struct ta_stats s;
  s.version = TA_STATS_VERSION;
  s.size = sizeof s;
  stats_get_fn f = stats_get();
  if (f == nullptr || f(&s, -1) != 0) return 0;
  return s.blocks;
}

/* The object that defines `addr`. */
const char *defined_in(void *addr) {
  Dl_info info;
  if (addr == nullptr || dladdr(addr, &info) == 0 || info.dli_fname == nullptr) return "?";
  return info.dli_fname;
}

/* The twenty replaceable operators, by their mangled names. */
const char *const operator_names[] = {
    "_Znwm", "_Znam", "_ZnwmRKSt9nothrow_t", "_ZnamRKSt9nothrow_t", "_ZnwmSt11align_val_t",
    "_ZnamSt11align_val_t", "_ZnwmSt11align_val_tRKSt9nothrow_t",
    "_ZnamSt11align_val_tRKSt9nothrow_t", "_ZdlPv", "_ZdaPv", "_ZdlPvRKSt9nothrow_t",
    "_ZdaPvRKSt9nothrow_t", "_ZdlPvm", "_ZdaPvm", "_ZdlPvSt11align_val_t",
    "_ZdaPvSt11align_val_t", "_ZdlPvSt11align_val_tRKSt9nothrow_t",
    "_ZdaPvSt11align_val_tRKSt9nothrow_t", "_ZdlPvmSt11align_val_t", "_ZdaPvmSt11align_val_t",
};

/* Every operator the program calls resolves to the object that defines ta_malloc (the
 * preloaded library, or the program itself when linked with libtamalloc.a), and blocks
 * made by new are tamalloc's: its statistics count them. */
int case_source() {
  const char *home = defined_in(dlsym(RTLD_DEFAULT, "ta_malloc"));
  CHECK(strcmp(home, "?") != 0, "ta_malloc is not in the process");
  for (const char *name : operator_names) {
    const char *where = defined_in(dlsym(RTLD_DEFAULT, name));
    CHECK(strcmp(where, home) == 0, "%s comes from %s, not %s", name, where, home);
  }
  /* What the compiler calls: the address of ::operator new as the program sees it. */
  void *(*volatile plain)(std::size_t) = &::operator new;
  CHECK(strcmp(defined_in(reinterpret_cast<void *>(plain)), home) == 0,
        "::operator new is %s", defined_in(reinterpret_cast<void *>(plain)));

  unsigned long long before = live_blocks();
  std::vector<int *> v;
  for (int i = 0; i < 1000; i++) v.push_back(new int(i));
  unsigned long long during = live_blocks();
  CHECK(during >= before + 1000, "tamalloc counts %llu live blocks, then %llu after 1000 new",
        before, during);
  CHECK(malloc_usable_size(v[0]) >= sizeof(int), "malloc_usable_size of a new'd int");
  for (int *p : v) delete p;
  printf("operators come from tamalloc\n");
  return failures != 0;
}

bool aligned_to(const void *p, std::size_t a) { return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0; }

void fill(void *p, std::size_t n) { memset(p, 0xa5, n); }

/* Every form, paired with its delete, over small, medium and huge sizes. */
int case_every() {
  static const std::size_t sizes[] = {0, 1, 24, 100, 4000, 8192, 20000, 300000, 3 << 20};
  static const std::size_t aligns[] = {1, 16, 64, 4096, 1 << 16, 4 << 20};
  for (std::size_t n : sizes) {
    void *p = ::operator new(n);
    fill(p, n);
    CHECK(malloc_usable_size(p) >= n, "usable size of new(%zu)", n);
    ::operator delete(p, n);
    p = ::operator new[](n);
    fill(p, n);
    ::operator delete[](p, n);
    p = ::operator new(n);
    ::operator delete(p);
    p = ::operator new[](n);
    ::operator delete[](p);
    p = ::operator new(n, std::nothrow);
    CHECK(p != nullptr, "new(%zu, nothrow)", n);
    ::operator delete(p, std::nothrow);
    p = ::operator new[](n, std::nothrow);
    CHECK(p != nullptr, "new[](%zu, nothrow)", n);
    ::operator delete[](p, std::nothrow);
    for (std::size_t a : aligns) {
      std::align_val_t al{a};
      p = ::operator new(n, al);
      CHECK(aligned_to(p, a), "new(%zu, align %zu) = %p", n, a, p);
      fill(p, n);
      ::operator delete(p, n, al);
      p = ::operator new[](n, al);
      CHECK(aligned_to(p, a), "new[](%zu, align %zu) = %p", n, a, p);
      ::operator delete[](p, n, al);
      p = ::operator new(n, al);
      ::operator delete(p, al);
      p = ::operator new[](n, al);
      ::operator delete[](p, al);
      p = ::operator new(n, al, std::nothrow);
      CHECK(p != nullptr && aligned_to(p, a), "new(%zu, align %zu, nothrow) = %p", n, a, p);
      ::operator delete(p, al, std::nothrow);
      p = ::operator new[](n, al, std::nothrow);
      CHECK(p != nullptr && aligned_to(p, a), "new[](%zu, align %zu, nothrow) = %p", n, a, p);
      ::operator delete[](p, al, std::nothrow);
    }
  }
  /* Size 0: a unique pointer each time. */
  void *a = ::operator new(0), *b = ::operator new(0);
  void *c = ::operator new[](0), *d = ::operator new(0, std::align_val_t{64});
  CHECK(a && b && c && d && a != b && a != c && b != c && c != d, "new(0) is not unique");
  ::operator delete(a, std::size_t{0});
  ::operator delete(b);
  ::operator delete[](c, std::size_t{0});
  ::operator delete(d, std::size_t{0}, std::align_val_t{64});
  /* An over-aligned type goes through the aligned forms. */
  struct alignas(256) wide {
    char bytes[300];
  };
  std::unique_ptr<wide> w(new wide);
  CHECK(aligned_to(w.get(), 256), "new wide = %p", static_cast<void *>(w.get()));
  std::unique_ptr<wide[]> ws(new wide[5]);
  CHECK(aligned_to(ws.get(), 256), "new wide[5] = %p", static_cast<void *>(ws.get()));
  printf("every form allocates and frees\n");
  return failures != 0;
}

/* The standard library's containers: their sized deletes pass tamalloc's checks. */
int case_containers() {
  std::map<std::string, std::vector<std::string>> m;
  for (int i = 0; i < 20000; i++) {
    std::string key = "key-" + std::to_string(i % 997);
    m[key].push_back(std::string(static_cast<std::size_t>(i % 300), 'x') + std::to_string(i));
    if (i % 7 == 0) m[key].shrink_to_fit();
    if (i % 11 == 0) m.erase("key-" + std::to_string((i * 31) % 997));
  }
  std::size_t total = 0;
  for (auto &kv : m)
    for (auto &s : kv.second) total += s.size();
  std::vector<std::unique_ptr<std::string>> owned;
  for (int i = 0; i < 5000; i++) owned.emplace_back(new std::string(static_cast<std::size_t>(i), 'y'));
  owned.clear();
  printf("containers: %zu keys, %zu bytes\n", m.size(), total);
  return 0;
}

int handler_calls;
int handler_limit;
void counting_handler() {
  if (++handler_calls >= handler_limit) std::set_new_handler(nullptr);
}
void throwing_handler() {
  handler_calls++;
  throw std::bad_alloc();
}

const std::size_t impossible = SIZE_MAX / 2;

/* new of an impossible size: the handler is called until it uninstalls itself, then
 * std::bad_alloc. Each throwing form. */
int case_bad_alloc() {
  struct form {
    const char *name;
    void *(*call)();
  } forms[] = {
      {"new", [] { return ::operator new(impossible); }},
      {"new[]", [] { return ::operator new[](impossible); }},
      {"new aligned", [] { return ::operator new(impossible, std::align_val_t{64}); }},
      {"new[] aligned", [] { return ::operator new[](impossible, std::align_val_t{4096}); }},
  };
  for (const form &f : forms) {
    handler_calls = 0;
    handler_limit = 3;
    std::set_new_handler(counting_handler);
    bool thrown = false;
    try {
      void *p = f.call();
      printf("%s returned %p\n", f.name, p);
    } catch (const std::bad_alloc &) {
      thrown = true;
    }
    printf("%s: %s after %d handler calls\n", f.name, thrown ? "bad_alloc" : "no exception",
           handler_calls);
  }
  /* No handler: at once. */
  std::set_new_handler(nullptr);
  try {
    (void)::operator new(impossible);
    printf("new without a handler: no exception\n");
  } catch (const std::bad_alloc &) {
    printf("new without a handler: bad_alloc\n");
  }
  /* An alignment that is not a power of two: bad_alloc, the handler not called. */
  handler_calls = 0;
  handler_limit = 100;
  std::set_new_handler(counting_handler);
  try {
    (void)::operator new(64, std::align_val_t{48});
    printf("new align 48: no exception\n");
  } catch (const std::bad_alloc &) {
    printf("new align 48: bad_alloc after %d handler calls\n", handler_calls);
  }
  std::set_new_handler(nullptr);
  return 0;
}

/* The nothrow forms: nullptr, with or without a handler, whether or not it throws. */
int case_nothrow() {
  struct form {
    const char *name;
    void *(*call)();
  } forms[] = {
      {"new nothrow", [] { return ::operator new(impossible, std::nothrow); }},
      {"new[] nothrow", [] { return ::operator new[](impossible, std::nothrow); }},
      {"new aligned nothrow",
       [] { return ::operator new(impossible, std::align_val_t{64}, std::nothrow); }},
      {"new[] aligned nothrow",
       [] { return ::operator new[](impossible, std::align_val_t{64}, std::nothrow); }},
  };
  for (const form &f : forms) {
    std::set_new_handler(nullptr);
    void *p = f.call();
    printf("%s: %s;", f.name, p ? "a pointer" : "nullptr");
    handler_calls = 0;
    handler_limit = 2;
    std::set_new_handler(counting_handler);
    p = f.call();
    printf(" counting handler: %s after %d calls;", p ? "a pointer" : "nullptr", handler_calls);
    handler_calls = 0;
    std::set_new_handler(throwing_handler);
    p = f.call();
    printf(" throwing handler: %s after %d calls\n", p ? "a pointer" : "nullptr", handler_calls);
    std::set_new_handler(nullptr);
  }
  void *p = ::operator new(64, std::align_val_t{48}, std::nothrow);
  printf("new align 48 nothrow: %s\n", p ? "a pointer" : "nullptr");
  return 0;
}

/* A handler that frees a reserve lets the retry succeed: the address space is limited so
 * that a large block fails until the reserve goes. */
void *reserve;
void release_reserve() {
  handler_calls++;
  ::operator delete(reserve);
  reserve = nullptr;
  std::set_new_handler(nullptr);
}

int case_retry() {
  const std::size_t big = std::size_t{256} << 20;
  unsigned long pages = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == nullptr || fscanf(f, "%lu", &pages) != 1) return printf("cannot read statm\n"), 1;
  fclose(f);
  struct rlimit rl;
  getrlimit(RLIMIT_AS, &rl);
  rl.rlim_cur = pages * 4096 + big + big / 2;
  if (setrlimit(RLIMIT_AS, &rl) != 0) return printf("cannot set RLIMIT_AS\n"), 1;
  reserve = ::operator new(big);
  handler_calls = 0;
  std::set_new_handler(release_reserve);
  void *p = ::operator new(big);
  memset(p, 1, 4096);
  printf("retry: %s after %d handler calls\n", p ? "a pointer" : "nullptr", handler_calls);
  ::operator delete(p, big);
  return 0;
}

/* Misuse: each ends in tamalloc's abort; the pointer is printed first. */
int case_sized_wrong() {
  void *p = ::operator new(100);
  printf("%p\n", p);
  fflush(stdout);
  ::operator delete(p, 5000);
  printf("not aborted\n");
  return 1;
}

int case_aligned_wrong() {
  char *p = static_cast<char *>(::operator new(1000));
  if (aligned_to(p, 4096)) p = static_cast<char *>(::operator new(1000));
  printf("%p\n", static_cast<void *>(p));
  fflush(stdout);
  ::operator delete(p, std::align_val_t{4096});
  printf("not aborted\n");
  return 1;
}

int case_sized_aligned_wrong() {
  void *p = ::operator new(100, std::align_val_t{64});
  printf("%p\n", p);
  fflush(stdout);
  ::operator delete(p, 100000, std::align_val_t{64});
  printf("not aborted\n");
  return 1;
}

int case_double_delete() {
  int *volatile p = new int(5); /* volatile: the compiler's use-after-free warning */
  printf("%p\n", static_cast<void *>(p));
  fflush(stdout);
  delete p;
  ::operator delete(p, sizeof(int));
  printf("not aborted\n");
  return 1;
}

} // namespace

int main(int argc, char **argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc != 2) {
    fprintf(stderr, "usage: %s case\n", argv[0]);
    return 2;
  }
  std::string c = argv[1];
  if (c == "source") return case_source();
  if (c == "every") return case_every();
  if (c == "containers") return case_containers();
  if (c == "bad_alloc") return case_bad_alloc();
  if (c == "nothrow") return case_nothrow();
  if (c == "retry") return case_retry();
  if (c == "sized_wrong") return case_sized_wrong();
  if (c == "aligned_wrong") return case_aligned_wrong();
  if (c == "sized_aligned_wrong") return case_sized_aligned_wrong();
  if (c == "double_delete") return case_double_delete();
  fprintf(stderr, "unknown case %s\n", argv[1]);
  return 2;
}
