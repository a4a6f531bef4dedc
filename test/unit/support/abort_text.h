/* What fn(arg) wrote to standard error in a child process that it must make abort (SIGABRT),
 * as text in a buffer of its own, which the caller frees: for a test of what a report says,
 * or one that may be skipped before (Criterion's .signal takes a skipped test for one that
 * failed to abort). The child inherits what the parent set up. */
#ifndef TA_TEST_ABORT_TEXT_H
#define TA_TEST_ABORT_TEXT_H
#include <criterion/criterion.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fd_text.h"
#include "tatest.h"

static inline char *abort_text(void *(*fn)(void *), void *arg) {
  int fd = text_file();
  pid_t pid = fork();
  cr_assert_geq(pid, 0, "fork");
  if (pid == 0) {
    if (dup2(fd, 2) < 0) _exit(3);
    alarm(30);    /* a hang is a failure (SIGALRM), not a stuck run */
    tt_no_core(); /* the abort it expects leaves no core file */
    fn(arg);
    _exit(0);
  }
  int st = tt_wait_timeout(pid, 60); /* killed past that, should alarm not end it */
  cr_assert(st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT,
            "the child did not abort (status 0x%x)", st);
  return file_text(fd);
}
#endif
