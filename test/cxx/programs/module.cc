/*
 * A C++ module that a C program loads with dlopen(RTLD_LOCAL), as Python loads a C++
 * extension: its C++ runtime is then outside the global scope. Its operator new is still
 * tamalloc's (the preloaded library comes first), and a failed new must still call the
 * handler and throw std::bad_alloc through the module's own runtime.
 */
#include <stdint.h>
#include <stdio.h>

#include <new>
#include <string>
#include <vector>

namespace {
int calls;
void handler() {
  if (++calls == 2) std::set_new_handler(nullptr);
}
} // namespace

extern "C" __attribute__((visibility("default"))) int module_run(char *out, size_t len) {
  std::vector<std::string> v;
  for (int i = 0; i < 1000; i++) v.push_back(std::string(static_cast<size_t>(i), 'm'));
  std::set_new_handler(handler);
  const char *what = "no exception";
  try {
    (void)::operator new(SIZE_MAX / 2);
  } catch (const std::bad_alloc &) {
    what = "bad_alloc";
  }
  void *p = ::operator new(SIZE_MAX / 2, std::nothrow);
  snprintf(out, len, "module: %s after %d handler calls; nothrow %s", what, calls,
           p ? "a pointer" : "nullptr");
  return 0;
}
