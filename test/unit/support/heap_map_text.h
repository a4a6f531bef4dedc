/* The heap map (ta_heap_map) as text, for tests that look for its records. The text is kept
 * until the next call, which frees it. */
#ifndef TA_TEST_HEAP_MAP_TEXT_H
#define TA_TEST_HEAP_MAP_TEXT_H
#include <criterion/criterion.h>
#include <stdlib.h>

#include "fd_text.h"
#include "tamalloc.h"

static int heap_map_to(int fd, int unused) {
  (void)unused;
  return ta_heap_map(fd);
}

static const char *heap_map_text(void) {
  static char *text;
  free(text);
  text = captured(heap_map_to, 0);
  cr_assert_neq(text[0], 0);
  return text;
}
#endif
