/* Free memory goes back by itself: small, medium and huge blocks freed, a pause longer than
 * the decay, one more allocation, and the resident set is back near its start, without
 * malloc_trim.
 *   mem_decay          (run with a large dirty_max_kb) memory is kept for the decay time,
 *                      so that a program that frees and allocates again pays no fault, and
 *                      as long as the program drew as much from the kernel lately (two
 *                      demand windows of 4 decay times at most, 1.6 s by default);
 *   mem_decay budget   (default settings) beyond what it drew lately, an arena keeps at
 *                      most its budget: the blocks were allocated long before they are
 *                      freed, and what is freed beyond the budget goes back at once (the
 *                      huge cache, 64 MiB, stays). */
#include "mem_common.h"

int main(int argc, char **argv) {
  int budget = argc > 1 && strcmp(argv[1], "budget") == 0;
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
  if (budget) usleep(1800 * 1000); /* two demand windows: drawn long ago */
  for (int i = 0; i < N; i++) free(p[i]);
  free(big);
  size_t right_after = rss_bytes();
  /* The default decay is 200 ms; drawn just now, the memory stays two demand windows. */
  usleep((budget ? 400 : 1800) * 1000);
  char *volatile q = malloc(300000);
  q[0] = 1;
  free(q);
  size_t later = rss_bytes();
  printf("start %zu MiB, full %zu MiB, right after free %zu MiB, after the decay %zu MiB\n",
         start / MiB, full / MiB, right_after / MiB, later / MiB);
  EXPECT(full >= start + 150 * MiB, "did not allocate");
  if (budget)
    EXPECT(right_after <= start + 80 * MiB, "%zu MiB kept beyond the budget",
           (right_after - start) / MiB);
  else
    EXPECT(right_after >= start + 60 * MiB, "memory was given back at once, not after a delay");
  EXPECT(later <= start + 16 * MiB, "%zu MiB still held after the decay", (later - start) / MiB);
  return 0;
}
