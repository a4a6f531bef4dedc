/*
 * Built against an installed tamalloc's ta_ API library (pkg-config tamalloc-api, or
 * tamalloc::api): ta_malloc is tamalloc's, malloc stays the system's. Exits 0 when so;
 * test/install/run.sh runs it.
 */
#include "mallocs.h"

int main(void) {
  unsigned long long start = mallocs("api");
  char *volatile q = malloc(1000);
  unsigned long long mid = mallocs("api");
  char *volatile p = ta_malloc(1000);
  unsigned long long end = mallocs("api");
  if (p == NULL || q == NULL) {
    fprintf(stderr, "api: an allocation failed\n");
    return 1;
  }
  memset(p, 0x5a, 1000);
  memset(q, 0xa5, 1000);
  if (mid != start) {
    fprintf(stderr, "api: malloc went to tamalloc, which this library must not replace\n");
    return 1;
  }
  if (end != mid + 1) {
    fprintf(stderr, "api: ta_malloc was not counted (%llu, then %llu)\n", mid, end);
    return 1;
  }
  ta_free(p);
  free(q);
  printf("api: ta_malloc is tamalloc's, malloc the system's\n");
  return 0;
}
