/* The commit charge of this process: what the kernel counts against its commit limit, which
 * it enforces under vm.overcommit_memory=2. Used by the unit tests and by the memory programs
 * (which link nothing of the tests), hence a header. */
#ifndef TATEST_CHARGED_H
#define TATEST_CHARGED_H
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Bytes of [lo, lo + n) in mappings the kernel charges (VmFlags "ac", VM_ACCOUNT, in
 * /proc/self/smaps); n == 0: of the whole process. SIZE_MAX if smaps cannot be read. */
static inline size_t charged_bytes(uintptr_t lo, size_t n) {
  FILE *f = fopen("/proc/self/smaps", "r");
  if (f == NULL) return SIZE_MAX;
  char line[512];
  uintptr_t start = 0, end = 0, hi = n ? lo + n : UINTPTR_MAX;
  size_t total = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long a, b;
    char perm;
    if (sscanf(line, "%lx-%lx %c", &a, &b, &perm) == 3) {
      start = a;
      end = b;
    } else if (strncmp(line, "VmFlags:", 8) == 0 && strstr(line, " ac") != NULL) {
      uintptr_t s = start > lo ? start : lo, e = end < hi ? end : hi;
      if (e > s) total += e - s;
    }
  }
  fclose(f);
  return total;
}
#endif
