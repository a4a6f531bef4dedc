/* The kernel's flags of the mapping that holds an address (VmFlags in /proc/self/smaps: "hg"
 * huge pages asked for, "nh" refused, ...), for the unit tests. */
#ifndef TATEST_VMFLAGS_H
#define TATEST_VMFLAGS_H
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The VmFlags of the mapping that holds p ("" if none, or smaps cannot be read). */
static inline const char *vm_flags(const void *p) {
  static char flags[256];
  flags[0] = 0;
  FILE *f = fopen("/proc/self/smaps", "r");
  if (f == NULL) return flags;
  char line[512];
  bool inside = false;
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
      inside = (uintptr_t)p >= lo && (uintptr_t)p < hi;
      continue;
    }
    if (inside && strncmp(line, "VmFlags:", 8) == 0) {
      snprintf(flags, sizeof flags, "%.200s", line + 8);
      break;
    }
  }
  fclose(f);
  return flags;
}

/* A field of the mapping that holds p in /proc/self/smaps, in KiB ("AnonHugePages:", ...);
 * -1 if there is none. */
static inline long vm_field_kb(const void *p, const char *field) {
  FILE *f = fopen("/proc/self/smaps", "r");
  if (f == NULL) return -1;
  char line[512];
  bool inside = false;
  long kb = -1;
  size_t n = strlen(field);
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
      inside = (uintptr_t)p >= lo && (uintptr_t)p < hi;
      continue;
    }
    if (inside && strncmp(line, field, n) == 0) {
      kb = strtol(line + n, NULL, 10);
      break;
    }
  }
  fclose(f);
  return kb;
}

/* Whether the mapping that holds p has the flag (a whole word of VmFlags). */
static inline bool has_flag(const void *p, const char *flag) {
  const char *f = vm_flags(p);
  size_t n = strlen(flag);
  for (const char *c = f; (c = strstr(c, flag)) != NULL; c += n)
    if ((c == f || c[-1] == ' ') && (c[n] == ' ' || c[n] == '\n' || c[n] == 0)) return true;
  return false;
}
#endif
