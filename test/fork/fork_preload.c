/*
 * Runs the standalone fork programs (programs/) with the replacement library preloaded,
 * under a time limit, and asserts a clean exit. A hang shows as the program's own
 * watchdog (SIGALRM or exit status 2) or as the time limit here.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tatest.h"

enum program { P_CHILD, P_THREADS, P_STDIO, P_SIGNAL, P_ATFORK };

static const char *program_path(enum program p)
{
    switch (p) {
    case P_CHILD: return TATEST_FORK_CHILD;
    case P_THREADS: return TATEST_FORK_THREADS;
    case P_STDIO: return TATEST_FORK_STDIO;
    case P_ATFORK: return TATEST_FORK_ATFORK;
    default: return TATEST_FORK_SIGNAL;
    }
}

struct variant {
    enum program program;
    char args[4][16];
    double timeout;
};

/* A missing library (a failed build) is reported as such, not as a program failure. */
static void library_exists(void)
{
    cr_assert_eq(access(TATEST_LIBRARY, R_OK), 0, "the library %s does not exist: %s",
                 TATEST_LIBRARY, strerror(errno));
}

static void run_preloaded(const struct variant *v)
{
    library_exists();
    char *argv[6] = {(char *)program_path(v->program), NULL, NULL, NULL, NULL, NULL};
    for (int i = 0; i < 4 && v->args[i][0]; i++)
        argv[i + 1] = (char *)v->args[i];
    char *env[] = {"LD_PRELOAD=" TATEST_LIBRARY, "TAMALLOC_EXPECT_PRELOAD=libtamalloc", NULL};
    struct tt_run r;
    cr_assert_eq(tt_run(&r, argv, env, NULL, NULL, v->timeout), 0, "cannot start %s", argv[0]);
    char how[128];
    tt_describe_status(r.status, how, sizeof how);
    const char *err = r.err_len > 1500 ? r.err + r.err_len - 1500 : r.err;
    cr_assert(tt_run_ok(&r),
              "%s %s %s %s %s with the library preloaded %s after %.1f s (exit 2 or SIGALRM: its "
              "watchdog fired, it hung; 3: the library was not loaded)\nstdout: %s\nstderr: %s",
              argv[0], v->args[0], v->args[1], v->args[2], v->args[3], how, r.seconds, r.out, err);
    cr_log_info("%s", r.out);
    tt_run_release(&r);
}

ParameterizedTestParameters(fork_preloaded, child_has_working_allocator)
{
    static struct variant params[] = {
        {P_CHILD, {"20"}, 150},
    };
    return cr_make_param_array(struct variant, params, sizeof params / sizeof *params);
}

ParameterizedTest(struct variant *v, fork_preloaded, child_has_working_allocator,
                  .timeout = 180)
{
    run_preloaded(v);
}

/* workers, forking threads, seconds */
ParameterizedTestParameters(fork_preloaded, fork_while_threads_allocate)
{
    static struct variant params[] = {
        {P_THREADS, {"4", "1", "3"}, 90},
        {P_THREADS, {"6", "3", "3"}, 90},
        {P_THREADS, {"1", "4", "2"}, 90},
    };
    return cr_make_param_array(struct variant, params, sizeof params / sizeof *params);
}

ParameterizedTest(struct variant *v, fork_preloaded, fork_while_threads_allocate,
                  .timeout = 120)
{
    run_preloaded(v);
}

/* readers, forking threads, seconds */
ParameterizedTestParameters(fork_preloaded, fork_against_stdio_locks)
{
    static struct variant params[] = {
        {P_STDIO, {"3", "2", "3"}, 90},
        {P_STDIO, {"6", "4", "3"}, 90},
    };
    return cr_make_param_array(struct variant, params, sizeof params / sizeof *params);
}

ParameterizedTest(struct variant *v, fork_preloaded, fork_against_stdio_locks, .timeout = 120)
{
    run_preloaded(v);
}

/* timer interval (µs), forks, seconds, allocator calls between forks */
ParameterizedTestParameters(fork_preloaded, fork_in_signal_handler)
{
    static struct variant params[] = {
        {P_SIGNAL, {"500", "400", "4", "1000"}, 90},
        {P_SIGNAL, {"100", "300", "4", "300"}, 90},
        {P_SIGNAL, {"2000", "200", "4", "5000"}, 90},
        {P_SIGNAL, {"50", "500", "4", "0"}, 90},
    };
    return cr_make_param_array(struct variant, params, sizeof params / sizeof *params);
}

ParameterizedTest(struct variant *v, fork_preloaded, fork_in_signal_handler, .timeout = 120)
{
    run_preloaded(v);
}

/* forks: the program's own atfork child handler allocates after a fork that stopped
 * another thread anywhere in the allocator, the break lock included */
ParameterizedTestParameters(fork_preloaded, program_child_handler_allocates)
{
    static struct variant params[] = {
        {P_ATFORK, {"600"}, 240},
    };
    return cr_make_param_array(struct variant, params, sizeof params / sizeof *params);
}

ParameterizedTest(struct variant *v, fork_preloaded, program_child_handler_allocates,
                  .timeout = 270)
{
    run_preloaded(v);
}
