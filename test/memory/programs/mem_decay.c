/* Free memory goes back by itself after the decay time: small, medium and huge blocks
 * freed, a pause longer than the decay, one more allocation, and the resident set is back
 * near its start, without malloc_trim. Also checks that memory freed and allocated again at
 * once is not given back (no page faults for a program that churns). */
#include "mem_common.h"

int main(void) {
  size_t start = rss_bytes();
  enum { N = 40000 };
  static char *p[N];
  unsigned s = 1;
  for (int i = 0; i < N; i++) {
    size_t z = i % 100 == 0 ? 200000 : 16 + rnd(&s) % 4000;
    p[i] = malloc(z);
    memset(p[i], 7, z);
  }
  char *big = malloc(64 * MiB);
  memset(big, 7, 64 * MiB);
  size_t full = rss_bytes();
  for (int i = 0; i < N; i++) free(p[i]);
  free(big);
  size_t right_after = rss_bytes();
  usleep(400 * 1000); /* the default decay is 200 ms */
  char *volatile q = malloc(300000);
  q[0] = 1;
  free(q);
  size_t later = rss_bytes();
  printf("start %zu MiB, full %zu MiB, right after free %zu MiB, after the decay %zu MiB\n",
         start / MiB, full / MiB, right_after / MiB, later / MiB);
  EXPECT(full >= start + 150 * MiB, "did not allocate");
  EXPECT(right_after >= start + 60 * MiB, "memory was given back at once, not after a delay");
  EXPECT(later <= start + 16 * MiB, "%zu MiB still held after the decay", (later - start) / MiB);
  return 0;
}
