/* What a function that writes to a file descriptor wrote (ta_stats_print, ta_heap_map...),
 * as text in a buffer of its own, which the caller frees. */
#ifndef TA_TEST_FD_TEXT_H
#define TA_TEST_FD_TEXT_H
#include <criterion/criterion.h>
#include <stdlib.h>
#include <unistd.h>

/* A file of no name to write the text to. */
static inline int text_file(void) {
  char path[] = "/tmp/tamalloc-text-XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  unlink(path);
  return fd;
}

/* Everything written to text_file()'s fd, which it closes. */
static inline char *file_text(int fd) {
  off_t n = lseek(fd, 0, SEEK_END);
  char *buf = calloc(1, (size_t)n + 1);
  cr_assert_not_null(buf);
  cr_assert_eq(pread(fd, buf, (size_t)n, 0), n);
  close(fd);
  return buf;
}

static inline char *captured(int (*fn)(int fd, int arg), int arg) {
  int fd = text_file();
  cr_assert_eq(fn(fd, arg), 0);
  return file_text(fd);
}
#endif
