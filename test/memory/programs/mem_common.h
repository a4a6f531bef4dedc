/* Shared by the memory-return programs: resident set and break from /proc, no allocator. */
#ifndef MEM_COMMON_H
#define MEM_COMMON_H
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MiB ((size_t)1 << 20)

static inline size_t rss_bytes(void) {
  char buf[128];
  int fd = open("/proc/self/statm", O_RDONLY);
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  buf[n > 0 ? n : 0] = 0;
  unsigned long size = 0, res = 0;
  sscanf(buf, "%lu %lu", &size, &res);
  return res * (size_t)sysconf(_SC_PAGESIZE);
}

static inline unsigned rnd(unsigned *s) {
  *s = *s * 1103515245u + 12345u;
  return *s >> 8;
}

/* Fails the program with a message naming the figure. */
#define EXPECT(cond, ...)                                                                  \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      fprintf(stderr, "FAILED: " __VA_ARGS__);                                             \
      fputc('\n', stderr);                                                                 \
      exit(1);                                                                             \
    }                                                                                      \
  } while (0)
#endif
