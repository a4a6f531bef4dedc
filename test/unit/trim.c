/* Unit tests: malloc_trim(0) gives back every free page, medium holes of any size included. */
#include <criterion/criterion.h>
#include <string.h>

#include "internal.h"
#include "tamalloc.h"

/* Free medium blocks of `size` between live ones (so they cannot merge), all written: after
 * malloc_trim(0) no page wholly inside a hole is resident. */
static void holes_go_back(size_t size) {
  enum { N = 64 };
  char *keep[N], *hole[N];
  for (int i = 0; i < N; i++) {
    hole[i] = ta_malloc(size);
    keep[i] = ta_malloc(size);
    memset(hole[i], 7, size);
    memset(keep[i], 7, size);
  }
  for (int i = 0; i < N; i++) ta_free(hole[i]);
  ta_malloc_trim(0);
  size_t resident = 0, pages = 0;
  for (int i = 0; i < N; i++) {
    /* the pages strictly inside the hole, past its links and before its footer */
    uintptr_t lo = ta_align_up((uintptr_t)hole[i] + 2 * sizeof(void *), ta_page_size);
    uintptr_t hi = ((uintptr_t)hole[i] + size - sizeof(size_t)) & ~(uintptr_t)(ta_page_size - 1);
    if (hi <= lo) continue;
    pages += (hi - lo) / ta_page_size;
    resident += ta_os_resident((void *)lo, hi - lo) / ta_page_size;
  }
  cr_assert_gt(pages, 0);
  cr_assert_eq(resident, 0, "%zu of %zu pages of %zu-byte holes still resident", resident, pages,
               size);
  for (int i = 0; i < N; i++) ta_free(keep[i]);
}

Test(trim, medium_holes_of_12_kib_go_back) { holes_go_back(12 << 10); }
Test(trim, medium_holes_of_20_kib_go_back) { holes_go_back(20 << 10); }
Test(trim, medium_holes_of_100_kib_go_back) { holes_go_back(100 << 10); }
