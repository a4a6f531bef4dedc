/* The seed's shrinking break: a heap that grew through sbrk moves the break back down when
 * the top of the heap is free. */
#include <malloc.h>
#include <stdint.h>

#include "mem_common.h"

int main(void) {
  enum { N = 200000 };
  static char *p[N];
  char *brk0 = sbrk(0);
  for (int i = 0; i < N; i++) {
    p[i] = malloc(256);
    memset(p[i], 1, 256);
  }
  char *brk1 = sbrk(0);
  for (int i = 0; i < N; i++) free(p[i]);
  malloc_trim(0);
  char *brk2 = sbrk(0);
  printf("break: start %p, grown by %zu MiB, after freeing everything %+zd MiB from the start\n",
         (void *)brk0, (size_t)(brk1 - brk0) / MiB, (ssize_t)(brk2 - brk0) / (ssize_t)MiB);
  EXPECT(brk1 - brk0 >= (intptr_t)(40 * MiB), "the heap did not grow through the break");
  EXPECT(brk2 - brk0 <= (intptr_t)(8 * MiB), "the break did not move back down");
  return 0;
}
