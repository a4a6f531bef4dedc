/* A program that frees a batch and allocates as much again in other sizes, over and over:
 * the memory it frees beyond the budget is what it is about to fault in again. An arena
 * keeps as much free memory as it drew from the kernel lately, so after the first cycles
 * the batches are served from what stayed resident: a later cycle takes under an eighth of
 * the first cycle's page faults. (Given back beyond the budget, each cycle faulted in
 * 12,000 to 15,000 pages again.) Prints the faults of each cycle. */
#include <sys/resource.h>

#include "mem_common.h"

#define BATCH (64 * MiB)
#define CYCLES 10

static long faults(void) {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

int main(void) {
  static char *p[BATCH / 64];
  unsigned s = 1;
  long per[CYCLES];
  for (int c = 0; c < CYCLES; c++) {
    long before = faults();
    size_t n = 0, total = 0;
    while (total < BATCH) { /* small blocks, then medium ones, in turn */
      size_t z = c % 2 == 0 ? 64 + rnd(&s) % 192 : (20 << 10) + rnd(&s) % (40 << 10);
      p[n] = malloc(z);
      memset(p[n], c, z);
      total += z;
      n++;
    }
    for (size_t i = 0; i < n; i++) free(p[i]);
    per[c] = faults() - before;
  }
  printf("page faults per cycle:");
  for (int c = 0; c < CYCLES; c++) printf(" %ld", per[c]);
  printf("\n");
  /* The median of the later cycles: a machine slow enough to let the demand fall between
   * two cycles makes one of them fault its batch in again, not every one. */
  long later[CYCLES - 2];
  for (int c = 2; c < CYCLES; c++) {
    int i = c - 2;
    for (; i > 0 && later[i - 1] > per[c]; i--) later[i] = later[i - 1];
    later[i] = per[c];
  }
  long median = later[(CYCLES - 2) / 2];
  EXPECT(per[0] > (long)(BATCH / 2 / 4096), "the first cycle did not fault its batch in");
  EXPECT(median < per[0] / 8, "cycles 3 to %d: median %ld page faults a cycle", CYCLES, median);
  return 0;
}
