/* The page size the allocator will work with, known before it starts (a suite's .init must
 * not allocate: some tests set things up before their first allocation): ta_pages_wanted,
 * the rule ta_pages_init follows, over the settings read when the library was loaded. For
 * tests written in terms of smaller pages, which skip where pages are larger. */
#ifndef TA_TEST_PAGE_IN_FORCE_H
#define TA_TEST_PAGE_IN_FORCE_H
#include <criterion/criterion.h>

#include "internal.h"

/* Skips the test where pages are larger than `most` bytes: its sizes and counts assume
 * pages of that size at most (needs_4k_pages: of 4 KiB). */
static inline void needs_pages_up_to(size_t most) {
  size_t page = ta_pages_wanted();
  if (page > most)
    cr_skip_test("pages of %zu KiB: this test's sizes assume pages of %zu KiB at most", page >> 10,
                 most >> 10);
}
static inline void needs_4k_pages(void) { needs_pages_up_to(4096); }
#endif
