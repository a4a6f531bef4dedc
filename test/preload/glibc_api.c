/*
 * glibc's malloc interfaces called by name from programs (programs/) run with the
 * replacement library preloaded: the report of malloc_stats, the figures of mallinfo.
 * Each program also runs with the system allocator, which checks the program itself.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tatest.h"

static void library_exists(void)
{
    cr_assert_eq(access(TATEST_LIBRARY, R_OK), 0, "the library %s does not exist: %s",
                 TATEST_LIBRARY, strerror(errno));
}

/* Runs a program, preloaded or not; asserts that it exited with status 0. */
static void run(struct tt_run *r, const char *path, bool preload)
{
    char *argv[] = {(char *)path, NULL};
    char *env[] = {"LD_PRELOAD=" TATEST_LIBRARY, NULL};
    cr_assert_eq(tt_run(r, argv, preload ? env : NULL, NULL, NULL, 60), 0, "cannot start %s",
                 path);
    char how[128];
    cr_assert(tt_run_ok(r), "%s%s %s\nstdout: %s\nstderr: %s", path,
              preload ? " (preloaded)" : "", tt_describe_status(r->status, how, sizeof how),
              r->out, r->err);
}

/* glibc disables cancellation while malloc_stats prints: a thread with a cancel pending
 * gets the whole report, then is cancelled at its next cancellation point. */
Test(glibc_api, malloc_stats_prints_with_a_cancel_pending, .timeout = 120)
{
    library_exists();
    static const char expected[] = "malloc_stats returned; thread cancelled\n";
    struct tt_run r;
    run(&r, TATEST_STATS_CANCEL, false);
    cr_assert_str_eq(r.out, expected, "without the library: %s", r.out);
    tt_run_release(&r);

    run(&r, TATEST_STATS_CANCEL, true);
    cr_assert_str_eq(r.out, expected, "with the library preloaded: %s(stderr: \"%s\")", r.out,
                     r.err);
    cr_assert(strstr(r.err, "tamalloc statistics") != NULL,
              "the report is missing from stderr: \"%s\"", r.err);
    cr_assert(strstr(r.err, "arena 0") != NULL, "the report was cut short: \"%s\"", r.err);
    tt_run_release(&r);
}

/* mallinfo, glibc's older interface, reports what the library holds: the figures of
 * mallinfo2 converted to int as glibc converts them, nonzero after allocating. */
Test(glibc_api, mallinfo_agrees_with_mallinfo2, .timeout = 120)
{
    library_exists();
    static const char expected[] = "mallinfo agrees with mallinfo2\n";
    struct tt_run r;
    run(&r, TATEST_MALLINFO, false);
    cr_assert_str_eq(r.out, expected, "without the library: %s", r.out);
    tt_run_release(&r);

    run(&r, TATEST_MALLINFO, true);
    cr_assert_str_eq(r.out, expected, "with the library preloaded: %s", r.out);
    tt_run_release(&r);
}
