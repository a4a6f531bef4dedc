/*
 * Built against an installed tamalloc's ta_ API library (pkg-config tamalloc-api, or
 * tamalloc::api): ta_malloc is tamalloc's, malloc stays the system's. Exits 0 when so;
 * test/install/run.sh runs it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tamalloc.h>

static unsigned long long mallocs(void) {
  static struct ta_stats s;
  memset(&s, 0, sizeof s);
  s.version = TA_STATS_VERSION;
  s.size = sizeof s;
  if (ta_stats_get(&s, -1) != 0) {
    fprintf(stderr, "api: ta_stats_get failed\n");
    exit(1);
  }
  return s.mallocs;
}

int main(void) {
  unsigned long long start = mallocs();
  char *volatile q = malloc(1000);
  unsigned long long mid = mallocs();
  char *volatile p = ta_malloc(1000);
  unsigned long long end = mallocs();
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
