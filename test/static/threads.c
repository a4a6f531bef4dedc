/*
 * A program linked with -static and libtamalloc.a: the standard names (malloc, free,
 * realloc, calloc, posix_memalign) are tamalloc's, and so are the C library's own
 * allocations (stdio, strdup). Threads allocate through every name, pass blocks to one
 * another to be resized and freed there, and check every byte. No test framework: it prints
 * one synthesis line, as the other test binaries do, and exits non-zero on any failure.
 *
 *     static_threads [SECONDS]      (default 2, or TAMALLOC_STRESS_SECONDS)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tamalloc.h"

#define THREADS 4
#define SLOTS 256 /* blocks passed between threads */

static int checks, failures;
static pthread_mutex_t report_lock = PTHREAD_MUTEX_INITIALIZER;

static void fail(const char *what, const void *p, size_t n) {
  pthread_mutex_lock(&report_lock);
  if (failures++ < 20) fprintf(stderr, "[FAIL] %s (pointer %p, size %zu)\n", what, p, n);
  pthread_mutex_unlock(&report_lock);
}

static void check(int ok, const char *what) {
  pthread_mutex_lock(&report_lock);
  checks++;
  pthread_mutex_unlock(&report_lock);
  if (!ok) fail(what, NULL, 0);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t next(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

/* The bytes of a block follow from its seed, so that any thread can check them. */
static void fill(unsigned char *p, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)((seed + i * 131) >> (i & 7));
}
static size_t first_bad(const unsigned char *p, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != (unsigned char)((seed + i * 131) >> (i & 7))) return i;
  return SIZE_MAX;
}

static size_t any_size(uint64_t *g) {
  uint64_t r = next(g);
  switch (r % 16) {
  case 0: return 0;
  case 1: return (size_t)(r >> 8) % (3u << 20) + (1u << 20);   /* huge */
  case 2: case 3: return (size_t)(r >> 8) % (1u << 20) + 8193; /* medium */
  default: return (size_t)(r >> 8) % 8192 + 1;                 /* small */
  }
}

struct slot {
  unsigned char *p;
  size_t n;
  uint64_t seed;
};
static struct slot slots[SLOTS];
static pthread_mutex_t slot_lock[SLOTS];
static double deadline;

/* Replaces the block in a random slot with a new one; the old one, made by whichever thread,
 * is checked, then resized (and checked again) or freed here. */
static void *worker(void *arg) {
  uint64_t g = 0x9e3779b97f4a7c15ull * ((uintptr_t)arg + 1);
  unsigned long rounds = 0;
  while (now() < deadline || rounds < 2000) {
    rounds++;
    size_t n = any_size(&g);
    uint64_t seed = next(&g);
    unsigned char *p = NULL;
    switch (next(&g) % 4) {
    case 0:
      p = malloc(n);
      break;
    case 1: {
      size_t count = n / 16 + 1;
      p = calloc(count, 16);
      for (size_t i = 0; p && i < count * 16; i += 61)
        if (p[i] != 0) {
          fail("calloc: a byte not zero", p, i);
          break;
        }
      break;
    }
    case 2: {
      size_t align = (size_t)1 << (next(&g) % 17 + 3); /* 8 .. 512 KiB */
      void *q = NULL;
      if (posix_memalign(&q, align, n) != 0) q = NULL;
      if (q && ((uintptr_t)q & (align - 1))) fail("posix_memalign: misaligned", q, align);
      p = q;
      break;
    }
    default:
      p = realloc(NULL, n);
      break;
    }
    if (p == NULL) {
      fail("allocation failed", NULL, n);
      continue;
    }
    if (malloc_usable_size(p) < n) fail("usable size below the request", p, n);
    fill(p, n, seed);
    unsigned k = (unsigned)(next(&g) % SLOTS);
    pthread_mutex_lock(&slot_lock[k]);
    struct slot old = slots[k];
    slots[k] = (struct slot){p, n, seed};
    pthread_mutex_unlock(&slot_lock[k]);
    if (old.p == NULL) continue;
    if (first_bad(old.p, old.n, old.seed) != SIZE_MAX) fail("a block's bytes changed", old.p, old.n);
    if (next(&g) % 3 == 0) {
      size_t m = any_size(&g);
      unsigned char *q = realloc(old.p, m);
      if (q == NULL && m != 0) {
        fail("realloc failed", old.p, m);
        free(old.p);
        continue;
      }
      size_t kept = m < old.n ? m : old.n;
      if (q && first_bad(q, kept, old.seed) != SIZE_MAX) fail("realloc lost bytes", q, kept);
      free(q);
    } else {
      free(old.p);
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  double seconds = 2;
  const char *env = getenv("TAMALLOC_STRESS_SECONDS");
  if (argc > 1) seconds = atof(argv[1]);
  else if (env && atof(env) > 0) seconds = atof(env);

  /* The standard names are tamalloc's: ta_malloc_usable_size would abort on a block of
   * another allocator. So are the C library's own allocations. */
  void *m = malloc(100);
  check(m != NULL && ta_malloc_usable_size(m) >= 100, "malloc is tamalloc's");
  free(m);
  char *dup = strdup("the C library allocates through tamalloc");
  check(dup != NULL && ta_malloc_usable_size(dup) > strlen(dup), "strdup is served by tamalloc");
  free(dup);
  FILE *f = tmpfile();
  check(f != NULL && fprintf(f, "%d", 42) == 2 && fclose(f) == 0, "stdio works");
  errno = 0;
  check(malloc(SIZE_MAX / 2) == NULL && errno == ENOMEM, "an impossible size is ENOMEM");

  for (int i = 0; i < SLOTS; i++) pthread_mutex_init(&slot_lock[i], NULL);
  deadline = now() + seconds;
  pthread_t t[THREADS];
  for (uintptr_t i = 0; i < THREADS; i++)
    check(pthread_create(&t[i], NULL, worker, (void *)i) == 0, "pthread_create");
  for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
  for (int i = 0; i < SLOTS; i++) {
    if (slots[i].p && first_bad(slots[i].p, slots[i].n, slots[i].seed) != SIZE_MAX)
      fail("a block's bytes changed", slots[i].p, slots[i].n);
    free(slots[i].p);
  }
  checks += THREADS;

  int failing = failures > 0;
  printf("[====] Synthesis: Tested: 1 | Passing: %d | Failing: %d | Crashing: 0\n", !failing,
         failing);
  return failing;
}
