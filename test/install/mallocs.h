/*
 * What the install check's programs share: how many mallocs the tamalloc they were built
 * against has counted, read through the installed header. `who` names the program in the
 * message of a failure.
 */
#ifndef TAMALLOC_INSTALL_CHECK_MALLOCS_H
#define TAMALLOC_INSTALL_CHECK_MALLOCS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tamalloc.h>

static unsigned long long mallocs(const char *who) {
  static struct ta_stats s;
  memset(&s, 0, sizeof s);
  s.version = TA_STATS_VERSION;
  s.size = sizeof s;
  if (ta_stats_get(&s, -1) != 0) {
    fprintf(stderr, "%s: ta_stats_get failed\n", who);
    exit(1);
  }
  return s.mallocs;
}

#endif
