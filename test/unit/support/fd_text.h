/* What a function that writes to a file descriptor wrote (ta_stats_print, ta_heap_map...),
 * as text in a buffer of its own, which the caller frees. */
#ifndef TA_TEST_FD_TEXT_H
#define TA_TEST_FD_TEXT_H
#include <criterion/criterion.h>
#include <stdlib.h>
#include <unistd.h>

static char *captured(int (*fn)(int fd, int arg), int arg) {
  char path[] = "/tmp/tamalloc-text-XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  unlink(path);
  cr_assert_eq(fn(fd, arg), 0);
  off_t n = lseek(fd, 0, SEEK_END);
  char *buf = calloc(1, (size_t)n + 1);
  cr_assert_not_null(buf);
  cr_assert_eq(pread(fd, buf, (size_t)n, 0), n);
  close(fd);
  return buf;
}
#endif
