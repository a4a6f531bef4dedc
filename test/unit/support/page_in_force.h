/* The page size the allocator will work with, known before it starts (a suite's .init must
 * not allocate: some tests set things up before their first allocation): the kernel's, or
 * the larger one TAMALLOC_CONF's page_kb sets (conf.c's rule). For suites written in terms
 * of 4 KiB pages, which skip where pages are larger. */
#ifndef TA_TEST_PAGE_IN_FORCE_H
#define TA_TEST_PAGE_IN_FORCE_H
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static inline size_t page_in_force(void) {
  size_t kernel = (size_t)sysconf(_SC_PAGESIZE), set = 0;
  const char *conf = getenv("TAMALLOC_CONF"), *k = conf ? strstr(conf, "page_kb:") : NULL;
  if (k != NULL) set = (size_t)strtoul(k + strlen("page_kb:"), NULL, 10) << 10;
  return set > kernel ? set : kernel;
}

/* Skips the test where pages are larger than `most` bytes: its sizes and counts assume
 * pages of that size at most (needs_4k_pages: of 4 KiB). */
static inline void needs_pages_up_to(size_t most) {
  size_t page = page_in_force();
  if (page > most)
    cr_skip_test("pages of %zu KiB: this test's sizes assume pages of %zu KiB at most", page >> 10,
                 most >> 10);
}
static inline void needs_4k_pages(void) { needs_pages_up_to(4096); }
#endif
