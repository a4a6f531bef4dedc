/* The heap map (ta_heap_map) as text, for tests that look for its records. The text lives in
 * a static buffer, overwritten by the next call. */
#ifndef TA_TEST_HEAP_MAP_TEXT_H
#define TA_TEST_HEAP_MAP_TEXT_H
#include <criterion/criterion.h>
#include <stdlib.h>
#include <unistd.h>

#include "tamalloc.h"

static const char *heap_map_text(void) {
  char path[] = "/tmp/tamalloc-map-XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  unlink(path);
  cr_assert_eq(ta_heap_map(fd), 0);
  static char text[1 << 22];
  ssize_t n = pread(fd, text, sizeof text - 1, 0);
  close(fd);
  cr_assert_gt(n, 0);
  text[n] = 0;
  return text;
}
#endif
