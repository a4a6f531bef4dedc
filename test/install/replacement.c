/*
 * Built against an installed tamalloc's replacement library (pkg-config tamalloc, or
 * tamalloc::tamalloc, tamalloc::static, tamalloc::secure): malloc must be tamalloc's.
 * Exits 0 when tamalloc counted the malloc below; test/install/run.sh runs it.
 */
#include "mallocs.h"

int main(void) {
  unsigned long long before = mallocs("replacement");
  char *volatile p = malloc(1000);
  unsigned long long after = mallocs("replacement");
  if (p == NULL) {
    fprintf(stderr, "replacement: malloc failed\n");
    return 1;
  }
  memset(p, 0x5a, 1000);
  if (after != before + 1) {
    fprintf(stderr, "replacement: malloc is not tamalloc's (%llu allocations counted, then %llu)\n",
            before, after);
    return 1;
  }
  if (ta_malloc_usable_size(p) < 1000) {
    fprintf(stderr, "replacement: usable size %zu below 1000\n", ta_malloc_usable_size(p));
    return 1;
  }
  free(p);
  printf("replacement: malloc is tamalloc %d.%d.%d's\n", TAMALLOC_VERSION_MAJOR,
         TAMALLOC_VERSION_MINOR, TAMALLOC_VERSION_PATCH);
  return 0;
}
