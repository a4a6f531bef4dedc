/* The figure of the issue: threads allocate about 800 MiB in sizes from 16 bytes to 8 MiB and
 * exit; half is freed from the main thread, half from new threads. After an idle second and a
 * little more allocation, of small blocks only (the fast path: no slow path does the work),
 * the resident set must be back within 24 MiB of its start; after malloc_trim(0), within
 * 8 MiB. Prints the figures. */
#include <malloc.h>
#include <pthread.h>

#include "mem_common.h"

#define THREADS 4
#define PER_THREAD (200 * MiB)

static void **blocks[THREADS];
static size_t counts[THREADS];

static size_t pick(unsigned *s) {
  unsigned r = rnd(s) % 1000;
  if (r < 700) return 16 + rnd(s) % 512;
  if (r < 950) return 512 + rnd(s) % (64 << 10);
  if (r < 995) return (64 << 10) + rnd(s) % MiB;
  return MiB + rnd(s) % (7 * MiB);
}

static void *allocate(void *arg) {
  long t = (long)arg;
  unsigned s = (unsigned)t * 7919u + 1;
  size_t total = 0, n = 0, cap = 1 << 16;
  void **v = malloc(cap * sizeof *v);
  while (total < PER_THREAD) {
    size_t z = pick(&s);
    if (n == cap) v = realloc(v, (cap *= 2) * sizeof *v);
    char *p = malloc(z);
    memset(p, 1, z);
    v[n++] = p;
    total += z;
  }
  blocks[t] = v;
  counts[t] = n;
  return NULL;
}

static void *free_second_half(void *arg) {
  long t = (long)arg;
  for (size_t i = counts[t] / 2; i < counts[t]; i++) free(blocks[t][i]);
  return NULL;
}

int main(void) {
  size_t start = rss_bytes();
  pthread_t th[THREADS];
  for (long t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, allocate, (void *)t);
  for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
  size_t peak = rss_bytes();
  for (int t = 0; t < THREADS; t++)
    for (size_t i = 0; i < counts[t] / 2; i++) free(blocks[t][i]);
  for (long t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, free_second_half, (void *)t);
  for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
  for (int t = 0; t < THREADS; t++) free(blocks[t]);
  size_t freed = rss_bytes();
  sleep(1);
  for (int i = 0; i < 100; i++) {
    char *volatile p = malloc((size_t)16 << (i % 4)); /* 16 to 128 bytes */
    p[0] = 1;
    free(p);
  }
  size_t idle = rss_bytes();
  malloc_trim(0);
  size_t trimmed = rss_bytes();
  printf("start %zu MiB, peak %zu MiB, all freed %zu MiB, idle second + a little allocation "
         "%zu MiB (+%zd), after malloc_trim %zu MiB (+%zd)\n",
         start / MiB, peak / MiB, freed / MiB, idle / MiB, (ssize_t)(idle - start) / (ssize_t)MiB,
         trimmed / MiB, (ssize_t)(trimmed - start) / (ssize_t)MiB);
  EXPECT(peak > start + 700 * MiB, "the program did not allocate what it meant to");
  EXPECT(idle <= start + 24 * MiB, "idle: %zu MiB above the start", (idle - start) / MiB);
  EXPECT(trimmed <= start + 8 * MiB, "trim: %zu MiB above the start", (trimmed - start) / MiB);
  return 0;
}
