/* Big blocks written through hold their own pages and little more: blocks whose end falls
 * just past a 2 MiB boundary (2 MiB + 100 KiB, 4 MiB, 6 MiB + 8 KiB), each size first
 * written through and freed a few times (its blocks are then known to be dense, and get
 * huge pages), then, what is free given back (malloc_trim), 24 of them live, in fresh
 * mappings, written through. The resident set may grow by the
 * blocks' bytes plus an eighth, plus 8 MiB (a huge page that spills past a block's end is
 * allowed where it commits less than an eighth of it). */
#include <malloc.h>

#include "mem_common.h"

enum { LIVE = 24, WARM = 3 };

static void write_through(char *p, size_t n) {
  for (size_t i = 0; i < n; i += 4096) p[i] = 1;
  p[n - 1] = 1;
}

int main(void) {
  static const size_t sizes[] = {2 * MiB + 100 * 1024, 4 * MiB, 6 * MiB + 8192};
  for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
    size_t n = sizes[s];
    for (int w = 0; w < WARM; w++) {
      char *p = malloc(n);
      EXPECT(p != NULL, "malloc(%zu)", n);
      write_through(p, n);
      free(p);
    }
    malloc_trim(0); /* the cached spans too: the blocks below are fresh mappings */
    size_t start = rss_bytes();
    char *p[LIVE];
    for (int k = 0; k < LIVE; k++) {
      p[k] = malloc(n);
      EXPECT(p[k] != NULL, "malloc(%zu)", n);
      write_through(p[k], n);
    }
    size_t grown = rss_bytes() - start, live = LIVE * n;
    printf("%zu KiB blocks: rss +%zu KiB for %zu KiB live\n", n / 1024, grown / 1024,
           live / 1024);
    EXPECT(grown <= live + live / 8 + 8 * MiB,
           "blocks of %zu KiB written through hold %zu KiB for %zu KiB", n / 1024,
           grown / 1024, live / 1024);
    for (int k = 0; k < LIVE; k++) free(p[k]);
  }
  return 0;
}
