/* The background purger never keeps a process alive or multithreaded on its own.
 *
 *   mem_lonely          threads come and go; a second after the last one exits the process
 *                       has one thread again (the purger left once its work was done)
 *   mem_lonely pexit    the main thread calls pthread_exit while a worker still runs: the
 *                       process must end when the worker does, with status 0
 *   mem_lonely spans    16 threads run at once (so blocks over 8 KiB to 256 KiB are spans, which no
 *                       thread owns) and exit; the main thread then frees a span every 300 ms:
 *                       the purger leaves and is not started again by those frees
 *   mem_lonely single   no thread at all: 300 MiB of blocks of every kind allocated and
 *                       freed, three times, with pauses longer than the decay time between
 *                       (memory due for purging each time): the process never has a second
 *                       thread, and what it freed goes back from its own slow paths once
 *                       no demand holds it */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <time.h>

#include "mem_common.h"

static void nap_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void *worker(void *arg) {
  char *p = malloc(100000);
  memset(p, 1, 100000);
  free(p);
  if (arg) nap_ms(200);
  return NULL;
}

static int tasks(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/task");
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

static pthread_barrier_t all_in;
static void *together(void *arg) {
  (void)arg;
  char *p = malloc(100000);
  memset(p, 1, 100000);
  pthread_barrier_wait(&all_in);
  free(p);
  return NULL;
}

static int spans(void) {
  enum { T = 16 };
  pthread_t t[T];
  pthread_barrier_init(&all_in, NULL, T);
  for (int i = 0; i < T; i++) pthread_create(&t[i], NULL, together, NULL);
  for (int i = 0; i < T; i++) pthread_join(t[i], NULL);
  int n = 0, later = 0;
  for (int waited = 0; waited < 3000; waited += 300) { /* longer than the decay, 200 ms */
    char *p = malloc(64 * 1024);
    memset(p, 2, 64 * 1024);
    free(p);
    nap_ms(20);
    n = tasks();
    if (waited >= 1500) later = n > later ? n : later; /* the purger's time to leave is over */
    nap_ms(280);
  }
  printf("threads while the last one frees spans, after 1.5 s: at most %d\n", later);
  EXPECT(later == 1, "%d threads: the purger was started again for spans", later);
  return 0;
}

static int single(void) {
  enum { N = 3000 };
  static char *p[N];
  size_t start = rss_bytes();
  unsigned s = 7;
  int most = 1;
  for (int round = 0; round < 3; round++) {
    for (int i = 0; i < N; i++) {
      unsigned r = rnd(&s) % 100;
      size_t z = r < 60   ? 16 + rnd(&s) % 2000
                 : r < 95 ? 8192 + rnd(&s) % 200000
                          : MiB + rnd(&s) % (4 * MiB);
      p[i] = malloc(z);
      memset(p[i], 1, z);
    }
    for (int i = 0; i < N; i++) free(p[i]);
    for (int waited = 0; waited < 500; waited += 50) { /* past the decay time, 200 ms */
      nap_ms(50);
      int n = tasks();
      most = n > most ? n : most;
    }
    free(malloc(300000)); /* a slow path: what is due goes back there */
  }
  /* What the thread drew lately it keeps for two demand windows (4 decay times each): then a
   * slow path gives it back. */
  nap_ms(2000);
  free(malloc(300000));
  size_t end = rss_bytes();
  printf("single thread: at most %d task(s); %zu MiB resident at the start, %zu at the end\n",
         most, start / MiB, end / MiB);
  EXPECT(most == 1, "a single-threaded program had %d threads", most);
  EXPECT(end <= start + 16 * MiB, "%zu MiB above the start", (end - start) / MiB);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "spans") == 0) return spans();
  if (argc > 1 && strcmp(argv[1], "single") == 0) return single();
  char *mine = malloc(64); /* the main thread has an arena of its own */
  mine[0] = 1;
  pthread_t t;
  for (int i = 0; i < 8; i++) {
    pthread_create(&t, NULL, worker, NULL);
    pthread_join(t, NULL);
  }
  if (argc > 1 && strcmp(argv[1], "pexit") == 0) {
    pthread_create(&t, NULL, worker, (void *)1);
    pthread_detach(t);
    pthread_exit(NULL); /* the process ends when the worker does */
  }
  int n = 0;
  for (int waited = 0; waited < 3000 && (n = tasks()) > 1; waited += 50) nap_ms(50);
  printf("threads a while after the last worker exited: %d\n", n);
  EXPECT(n == 1, "%d threads: the purger stayed", n);
  free(mine);
  return 0;
}
