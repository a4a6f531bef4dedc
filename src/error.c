/*
 * error.c — the one way the allocator reports misuse: a single line on stderr, written
 * with write(2) from a buffer on the stack (no stdio, no allocation), then abort().
 *
 *   tamalloc: free(): double free of pointer 0x7f12a4c00010
 */
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

static size_t put_str(char *buf, size_t at, size_t cap, const char *s) {
  while (*s && at < cap) buf[at++] = *s++;
  return at;
}

static size_t put_hex(char *buf, size_t at, size_t cap, uintptr_t v) {
  char tmp[2 + 2 * sizeof(uintptr_t)];
  size_t n = 0;
  do {
    tmp[n++] = "0123456789abcdef"[v & 15];
    v >>= 4;
  } while (v);
  at = put_str(buf, at, cap, "0x");
  while (n > 0 && at < cap) buf[at++] = tmp[--n];
  return at;
}

void ta_fatal(const char *what, const void *p) {
  char line[256];
  size_t cap = sizeof line - 1, n = 0;
  n = put_str(line, n, cap, "tamalloc: ");
  n = put_str(line, n, cap, what);
  n = put_str(line, n, cap, " ");
  n = put_hex(line, n, cap, (uintptr_t)p);
  line[n++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, n);
  (void)w;
  abort();
}
