/* The commit charge of many threads (chunk.c, "Commit charge"): 64 threads, each with a
 * small stack, allocate a block of each kind (a run's, a cold class's from the medium heap,
 * a medium block, a huge block of 1 MiB and 100 KiB, its own mapping), write them, and wait while
 * the main thread reads what the kernel charges the process against its commit limit (VmFlags "ac"
 * in /proc/self/smaps: what vm.overcommit_memory=2 enforces).
 *
 *   mem_commit lazy     run with lazy_commit:true: at most 768 KiB charged a thread, its
 *                       stack included (each arena commits a few 64 KiB units of its two
 *                       chunks), besides the huge block's pages (it was charged 4 MiB,
 *                       its whole granule, before its mapping ended at its last page)
 *   mem_commit eager    run with lazy_commit:false: at least 64 x 4 MiB (each arena's medium
 *                       chunk charged whole; their runs share small chunks, whose slots are
 *                       lent between arenas), so that the measure is seen to work */
#define _GNU_SOURCE
#include <pthread.h>

#include "../../common/charged.h"
#include "mem_common.h"

enum { THREADS = 64 };
#define HUGE (MiB + 100 * 1024)
static pthread_barrier_t ready, done;

static void *worker(void *arg) {
  (void)arg;
  static const size_t sizes[] = {64, 2048, 300000, HUGE};
  void *p[4];
  for (int i = 0; i < 4; i++) {
    p[i] = malloc(sizes[i]);
    EXPECT(p[i] != NULL, "malloc(%zu)", sizes[i]);
    memset(p[i], i + 1, sizes[i]);
  }
  pthread_barrier_wait(&ready);
  pthread_barrier_wait(&done);
  for (int i = 0; i < 4; i++)
    free(p[i]);
  return NULL;
}

int main(int argc, char **argv) {
  EXPECT(argc == 2, "usage: mem_commit lazy|eager");
  int lazy = strcmp(argv[1], "lazy") == 0;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 128 << 10);
  pthread_barrier_init(&ready, NULL, THREADS + 1);
  pthread_barrier_init(&done, NULL, THREADS + 1);
  size_t before = charged_bytes(0, 0);
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++)
    EXPECT(pthread_create(&t[i], &attr, worker, NULL) == 0, "pthread_create");
  pthread_barrier_wait(&ready);
  size_t during = charged_bytes(0, 0);
  pthread_barrier_wait(&done);
  for (int i = 0; i < THREADS; i++)
    pthread_join(t[i], NULL);
  EXPECT(before != SIZE_MAX && during != SIZE_MAX, "cannot read /proc/self/smaps");
  size_t grew = during > before ? during - before : 0;
  printf("%d threads with a block of each kind: %zu KiB charged (%zu KiB a thread)\n", THREADS,
         grew >> 10, (grew >> 10) / THREADS);
  /* Lazy: 646 KiB a thread when written (its 128 KiB stack, 2 units of a small chunk, 5
   * and the tail of its medium chunk; fewer of small chunks since the threads' runs share
   * them); 768 leaves room for the process's own growth. */
  if (lazy)
    EXPECT(grew <= (size_t)THREADS * ((768 << 10) + HUGE + 8192),
           "lazy commit: %zu KiB charged a thread", (grew >> 10) / THREADS);
  else
    EXPECT(grew >= (size_t)THREADS * 4 * MiB, "eager: only %zu MiB charged", grew / MiB);
  return 0;
}
