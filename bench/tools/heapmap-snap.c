/*
 * heapmap-snap.c — builds a varied heap, then writes tamalloc's heap map to stdout.
 *
 * Not linked with tamalloc: run it with the library preloaded, and it finds ta_heap_map
 * through the dynamic linker.
 *
 *   cc -O2 -pthread -o heapmap-snap bench/tools/heapmap-snap.c -ldl -lm
 *   LD_PRELOAD=build/libtamalloc.so ./heapmap-snap [SEED] > heap.map
 *   bench/tools/heapmap heap.map -o heap.svg
 *
 * (bench/tools/heapmap --demo OUT.svg does all three.)
 *
 * The heap it leaves behind: small blocks of many size classes, medium blocks from 8 KiB
 * to 1 MiB, a few huge blocks (some only partly touched, one freed), a random half of the
 * small and medium blocks freed again, one batch of 1000-byte blocks freed entirely so
 * whole runs and a chunk go empty, and a second thread's arena left behind when that
 * thread exits.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*heap_map_fn)(int fd);

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* xorshift64*: enough randomness for picking sizes, the same heap for the same seed. */
static uint64_t rnd(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545f4914f6cdd1dull;
}

/* A size between lo and hi, spread evenly over the logarithm (as many 16..32 B as 4..8 KiB). */
static size_t log_uniform(size_t lo, size_t hi) {
  double u = (double)(rnd() >> 11) / 9007199254740992.0; /* [0, 1) */
  double l = (double)lo, h = (double)hi;
  double x = l * exp(u * log(h / l));
  size_t s = (size_t)x;
  return s < lo ? lo : s > hi ? hi : s;
}

static void *take(size_t n) {
  void *p = malloc(n);
  if (p == NULL) {
    fprintf(stderr, "heapmap-snap: malloc(%zu) failed\n", n);
    exit(1);
  }
  memset(p, 0xa5, n); /* touch every page, so resident bytes mean something */
  return p;
}

/* Frees each pointer of v with probability one half. */
static void free_half(void **v, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (v[i] && (rnd() & 1)) {
      free(v[i]);
      v[i] = NULL;
    }
}

#define N_OTHER 3000
static void *other[N_OTHER];

/* Runs in a thread of its own: its blocks come from a second arena, which is left
 * ownerless when the thread ends. */
static void *other_thread(void *arg) {
  (void)arg;
  for (size_t i = 0; i < N_OTHER; i++) other[i] = take(log_uniform(24, 600));
  return NULL;
}

int main(int argc, char **argv) {
  if (argc > 1) rng_state ^= strtoull(argv[1], NULL, 0) * 0x9e3779b97f4a7c15ull;
  if (rng_state == 0) rng_state = 1;

  heap_map_fn heap_map = (heap_map_fn)dlsym(RTLD_DEFAULT, "ta_heap_map");
  if (heap_map == NULL) {
    fprintf(stderr, "heapmap-snap: ta_heap_map not found; run with "
                    "LD_PRELOAD=path/to/libtamalloc.so\n");
    return 2;
  }

  pthread_t th;
  if (pthread_create(&th, NULL, other_thread, NULL) == 0) pthread_join(th, NULL);

  /* Small blocks: mostly tiny, some up to the largest small class (8 KiB). */
  enum { N_SMALL = 40000, N_MEDIUM = 90, N_BATCH = 9000, N_HUGE = 4 };
  static void *small[N_SMALL], *medium[N_MEDIUM], *batch[N_BATCH], *huge[N_HUGE];
  for (size_t i = 0; i < N_SMALL; i++) {
    unsigned pick = (unsigned)(rnd() % 100);
    size_t n = pick < 70 ? log_uniform(8, 256) : pick < 92 ? log_uniform(257, 2048)
                                                           : log_uniform(2049, 8192);
    small[i] = take(n);
    /* One batch of 1000-byte blocks in between (more than two chunks), all freed below:
     * whole runs and at least one whole chunk go empty. */
    if (i == N_SMALL / 2)
      for (size_t k = 0; k < N_BATCH; k++) batch[k] = take(1000);
  }

  /* Medium blocks: 8 KiB .. 1 MiB. */
  for (size_t i = 0; i < N_MEDIUM; i++) medium[i] = take(log_uniform(8300, 1u << 20));

  /* Huge blocks: mapped on their own; two are touched only in part. */
  static const size_t huge_size[N_HUGE] = {1536u << 10, 3u << 20, 6u << 20, 10u << 20};
  for (size_t i = 0; i < N_HUGE; i++) {
    huge[i] = malloc(huge_size[i]);
    if (huge[i] == NULL) return 1;
    memset(huge[i], 1, i % 2 ? huge_size[i] / 3 : huge_size[i]);
  }

  /* Fragmentation: a random half goes, the batch goes entirely, one huge block goes. */
  free_half(small, N_SMALL);
  free_half(medium, N_MEDIUM);
  free_half(other, N_OTHER); /* frees from another thread than the owner's */
  for (size_t k = 0; k < N_BATCH; k++) free(batch[k]);
  free(huge[1]);
  huge[1] = NULL;

  int err = heap_map(1);
  if (err != 0) {
    fprintf(stderr, "heapmap-snap: ta_heap_map: error %d\n", err);
    return 1;
  }
  return 0;
}
