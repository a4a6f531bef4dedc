/* Memory goes back with no allocator call: 16 threads each allocate 14 MiB in small and
 * medium blocks (of 12000 bytes, run with span_min_kb:16 so that they are not spans: spans
 * beyond the budget go back at once) and exit, keeping half of them; the main thread frees those
 * (remote frees into arenas without an owner), then only sleeps and watches its resident set.
 *
 *   mem_background          expects the memory back within 3 s
 *   mem_background spans    the same with 20000-byte blocks instead of 12000: spans, which no
 *                           thread owns (16 threads ran at once), and which the main thread
 *                           frees last, as the only thread left
 *   mem_background keeps    expects it kept (run with background_thread:false) */
#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "mem_common.h"

enum { THREADS = 16, BLOCKS = 6000 };
static char *kept[THREADS][BLOCKS];

static size_t big = 12000;

static void *work(void *arg) {
  char **mine = arg;
  for (int i = 0; i < BLOCKS; i++) {
    size_t z = i % 8 ? 1000 : big; /* about 14 MiB per thread (17 with spans) */
    char *p = malloc(z);
    memset(p, 5, z);
    if (i & 1) free(p);
    else mine[i] = p;
  }
  return NULL;
}

static void nap_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
  int keeps = argc > 1 && strcmp(argv[1], "keeps") == 0;
  if (argc > 1 && strcmp(argv[1], "spans") == 0) big = 20000;
  size_t start = rss_bytes();
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, work, kept[i]);
  for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
  size_t peak = rss_bytes();
  for (int i = 0; i < THREADS; i++)
    for (int j = 0; j < BLOCKS; j += 2) free(kept[i][j]);
  /* From here on, no call into the allocator: only the clock, sleep and /proc. */
  size_t now = rss_bytes();
  int waited = 0;
  while (now > start + 24 * MiB && waited < 3000) {
    nap_ms(50);
    waited += 50;
    now = rss_bytes();
  }
  printf("start %zu KiB, peak %zu KiB, %d ms after the last free %zu KiB\n", start / 1024,
         peak / 1024, waited, now / 1024);
  EXPECT(peak > start + 128 * MiB, "the threads did not allocate: peak %zu KiB", peak / 1024);
  if (keeps)
    EXPECT(now > start + 64 * MiB, "memory went back although no thread purges: %zu KiB",
           now / 1024);
  else
    EXPECT(now <= start + 24 * MiB, "memory of exited threads still held: %zu MiB",
           (now - start) / MiB);
  return 0;
}
