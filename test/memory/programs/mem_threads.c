/* Memory of arenas whose threads have exited goes back: 64 threads each allocate 8 MiB in
 * small and medium blocks, free it and exit; then a pause and a little allocation. Then
 * 20000 threads created and joined one after another leave the resident set where it was. */
#include <pthread.h>
#include <stdint.h>

#include "mem_common.h"

static void *work(void *arg) {
  (void)arg;
  enum { N = 2000 };
  char *p[N];
  for (int i = 0; i < N; i++) {
    size_t z = i % 10 ? 1000 : 30000;
    p[i] = malloc(z);
    memset(p[i], 3, z);
  }
  for (int i = 0; i < N; i++) free(p[i]);
  return NULL;
}

static void *tiny(void *arg) {
  free(malloc((size_t)(uintptr_t)arg));
  return NULL;
}

int main(void) {
  size_t start = rss_bytes();
  for (int round = 0; round < 8; round++) {
    pthread_t t[8];
    for (int i = 0; i < 8; i++) pthread_create(&t[i], NULL, work, NULL);
    for (int i = 0; i < 8; i++) pthread_join(t[i], NULL);
  }
  usleep(400 * 1000);
  char *volatile q = malloc(100000);
  q[0] = 1;
  free(q);
  size_t after = rss_bytes();
  for (int i = 0; i < 1000; i++) {
    pthread_t t;
    pthread_create(&t, NULL, tiny, (void *)(uintptr_t)(i % 3000 + 1));
    pthread_join(t, NULL);
  }
  size_t warm = rss_bytes();
  for (int i = 0; i < 20000; i++) {
    pthread_t t;
    pthread_create(&t, NULL, tiny, (void *)(uintptr_t)(i % 3000 + 1));
    pthread_join(t, NULL);
  }
  size_t churned = rss_bytes();
  printf("start %zu KiB, after 64 threads exited %zu KiB, after 1000 more %zu KiB, after 20000 "
         "more %zu KiB\n",
         start / 1024, after / 1024, warm / 1024, churned / 1024);
  EXPECT(after <= start + 16 * MiB, "exited threads' memory held: %zu MiB", (after - start) / MiB);
  EXPECT(churned <= warm + 2 * MiB, "thread churn grew the resident set by %zu KiB",
         (churned - warm) / 1024);
  return 0;
}
