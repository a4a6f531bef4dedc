/* Big blocks used sparsely hold only the pages the program touched: 16 threads each keep 4
 * blocks of 1 to 12 MiB, written in their first 8 KiB and one byte every 256 KiB, first as
 * they are made, then replaced 40 times over. The resident set may grow by at most three
 * times the bytes of the touched pages, plus 8 MiB, at both points and at its peak. */
#include <pthread.h>
#include <stdint.h>

#include "mem_common.h"

enum { THREADS = 16, LIVE = 4, ROUNDS = 40, HEAD = 8192, STRIDE = 256 * 1024 };

static pthread_barrier_t barrier;
static size_t touched[THREADS], touched_peak[THREADS];

static size_t pages_touched(size_t n) { return HEAD + (n - 1) / STRIDE * 4096; }

static void use(char *p, size_t n) {
  memset(p, 7, HEAD);
  for (size_t i = STRIDE; i < n; i += STRIDE) p[i] = 7;
}

static void *work(void *arg) {
  int t = (int)(intptr_t)arg;
  unsigned s = 77u + (unsigned)t;
  char *p[LIVE];
  size_t n[LIVE];
  for (int k = 0; k < LIVE; k++) {
    n[k] = MiB + rnd(&s) % (11 * MiB);
    p[k] = malloc(n[k]);
    use(p[k], n[k]);
    touched[t] += pages_touched(n[k]);
  }
  touched_peak[t] = touched[t];
  pthread_barrier_wait(&barrier); /* the main thread measures */
  pthread_barrier_wait(&barrier);
  for (int r = 0; r < ROUNDS; r++) {
    int k = (int)(rnd(&s) % LIVE);
    free(p[k]);
    touched[t] -= pages_touched(n[k]);
    n[k] = MiB + rnd(&s) % (11 * MiB);
    p[k] = malloc(n[k]);
    use(p[k], n[k]);
    touched[t] += pages_touched(n[k]);
    if (touched[t] > touched_peak[t]) touched_peak[t] = touched[t];
  }
  pthread_barrier_wait(&barrier);
  pthread_barrier_wait(&barrier);
  for (int k = 0; k < LIVE; k++) free(p[k]);
  return NULL;
}

static size_t vmhwm_bytes(void) {
  char buf[4096];
  int fd = open("/proc/self/status", O_RDONLY);
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  buf[n > 0 ? n : 0] = 0;
  const char *l = strstr(buf, "VmHWM:");
  return l ? (size_t)strtoul(l + 6, NULL, 10) * 1024 : 0;
}

static size_t sum(const size_t *v) {
  size_t s = 0;
  for (int t = 0; t < THREADS; t++) s += v[t];
  return s;
}

int main(void) {
  pthread_barrier_init(&barrier, NULL, THREADS + 1);
  pthread_t th[THREADS];
  size_t start = rss_bytes();
  for (int t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, work, (void *)(intptr_t)t);
  pthread_barrier_wait(&barrier);
  size_t made = rss_bytes(), touched_made = sum(touched);
  pthread_barrier_wait(&barrier);
  pthread_barrier_wait(&barrier);
  size_t replaced = rss_bytes(), touched_replaced = sum(touched), peak = vmhwm_bytes();
  size_t touched_max = 0;
  for (int t = 0; t < THREADS; t++) touched_max += touched_peak[t];
  pthread_barrier_wait(&barrier);
  for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
  printf("start %zu KiB; made: rss +%zu KiB for %zu KiB touched; replaced: rss +%zu KiB for %zu "
         "KiB touched; peak +%zu KiB for at most %zu KiB touched\n",
         start / 1024, (made - start) / 1024, touched_made / 1024, (replaced - start) / 1024,
         touched_replaced / 1024, (peak - start) / 1024, touched_max / 1024);
  EXPECT(made - start <= 3 * touched_made + 8 * MiB, "blocks as made hold untouched memory");
  EXPECT(replaced - start <= 3 * touched_replaced + 8 * MiB,
         "blocks replaced from the cache hold untouched memory");
  EXPECT(peak - start <= 3 * touched_max + 8 * MiB, "the peak held untouched memory");
  return 0;
}
