/*
 * C++'s operator new and operator delete from tamalloc (src/cxx.cc). programs/operators.cc
 * runs one case per process, built twice: run with libtamalloc.so preloaded, and linked
 * with libtamalloc.a (and preloaded again with the hardened library, libtamalloc-secure.so,
 * whose operators are the same code). programs/host.c, a C program, loads the C++ module programs/module.cc
 * with RTLD_LOCAL. And the preloaded library itself needs no C++ runtime.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tatest.h"

static void library_exists(const char *lib)
{
    cr_assert_eq(access(lib, R_OK), 0, "the library %s does not exist: %s", lib, strerror(errno));
}

/* Runs argv, with the library preloaded or not; the caller releases r. */
static void run(struct tt_run *r, char *const argv[], const char *preload)
{
    char env_preload[1024];
    snprintf(env_preload, sizeof env_preload, "LD_PRELOAD=%s", preload ? preload : "");
    char *env[] = {env_preload, NULL};
    cr_assert_eq(tt_run(r, argv, preload ? env : NULL, NULL, NULL, 120), 0, "cannot start %s",
                 argv[0]);
}

static void expect_ok(const struct tt_run *r, const char *what)
{
    char how[128];
    cr_assert(tt_run_ok(r), "%s %s\nstdout: %s\nstderr: %s", what,
              tt_describe_status(r->status, how, sizeof how), r->out, r->err);
}

/* The case `name` of the operators program, in both builds; stdout must be `expected`. */
static void run_case(const char *name, const char *expected)
{
    library_exists(TATEST_LIBRARY);
    struct {
        const char *program, *preload, *label;
    } builds[] = {
        {TATEST_OPERATORS, TATEST_LIBRARY, "preloaded"},
        {TATEST_OPERATORS_STATIC, NULL, "linked with libtamalloc.a"},
        {TATEST_OPERATORS, TATEST_SECURE_LIBRARY, "libtamalloc-secure.so preloaded"},
    };
    for (size_t i = 0; i < sizeof builds / sizeof builds[0]; i++) {
        if (builds[i].preload != NULL && builds[i].preload[0] == 0)
            continue; /* no hardened build */
        struct tt_run r;
        char *argv[] = {(char *)builds[i].program, (char *)name, NULL};
        run(&r, argv, builds[i].preload);
        char what[256];
        snprintf(what, sizeof what, "case %s (%s)", name, builds[i].label);
        expect_ok(&r, what);
        cr_assert_str_eq(r.out, expected, "%s printed:\n%s\nexpected:\n%s\nstderr: %s", what,
                         r.out, expected, r.err);
        tt_run_release(&r);
    }
}

/* A misuse case: the program prints the pointer, then tamalloc aborts with one line
 * naming it: "tamalloc: <message> <pointer>". */
static void run_misuse(const char *name, const char *message)
{
    library_exists(TATEST_LIBRARY);
    const char *programs[] = {TATEST_OPERATORS, TATEST_OPERATORS_STATIC};
    for (int i = 0; i < 2; i++) {
        struct tt_run r;
        char *argv[] = {(char *)programs[i], (char *)name, NULL};
        run(&r, argv, i == 0 ? TATEST_LIBRARY : NULL);
        char how[128];
        tt_describe_status(r.status, how, sizeof how);
        cr_assert(!r.timed_out && r.status != -1 && WIFSIGNALED(r.status) &&
                      WTERMSIG(r.status) == SIGABRT,
                  "%s (%s): %s, not aborted\nstdout: %s\nstderr: %s", name,
                  i == 0 ? "preloaded" : "static", how, r.out, r.err);
        char pointer[64] = "";
        sscanf(r.out, "%63s", pointer);
        char expected[256];
        snprintf(expected, sizeof expected, "tamalloc: %s %s\n", message, pointer);
        cr_assert_str_eq(r.err, expected, "%s (%s): stderr is \"%s\", expected \"%s\"", name,
                         i == 0 ? "preloaded" : "static", r.err, expected);
        tt_run_release(&r);
    }
}

Test(cxx, operators_come_from_tamalloc, .timeout = 120)
{
    run_case("source", "operators come from tamalloc\n");
}

Test(cxx, every_form_allocates_and_frees, .timeout = 300)
{
    run_case("every", "every form allocates and frees\n");
}

Test(cxx, standard_containers_pass_the_sized_delete_checks, .timeout = 300)
{
    run_case("containers", "containers: 949 keys, 843953 bytes\n");
}

Test(cxx, new_calls_the_handler_then_throws_bad_alloc, .timeout = 120)
{
    run_case("bad_alloc", "new: bad_alloc after 3 handler calls\n"
                          "new[]: bad_alloc after 3 handler calls\n"
                          "new aligned: bad_alloc after 3 handler calls\n"
                          "new[] aligned: bad_alloc after 3 handler calls\n"
                          "new without a handler: bad_alloc\n"
                          "new align 48: bad_alloc after 0 handler calls\n");
}

Test(cxx, nothrow_returns_nullptr, .timeout = 120)
{
    run_case("nothrow",
             "new nothrow: nullptr; counting handler: nullptr after 2 calls;"
             " throwing handler: nullptr after 1 calls\n"
             "new[] nothrow: nullptr; counting handler: nullptr after 2 calls;"
             " throwing handler: nullptr after 1 calls\n"
             "new aligned nothrow: nullptr; counting handler: nullptr after 2 calls;"
             " throwing handler: nullptr after 1 calls\n"
             "new[] aligned nothrow: nullptr; counting handler: nullptr after 2 calls;"
             " throwing handler: nullptr after 1 calls\n"
             "new align 48 nothrow: nullptr\n");
}

Test(cxx, a_handler_that_frees_memory_lets_new_succeed, .timeout = 120)
{
    run_case("retry", "retry: a pointer after 1 handler calls\n");
}

Test(cxx, sized_delete_of_a_wrong_size_aborts, .timeout = 120)
{
    run_misuse("sized_wrong", "operator delete(): invalid size for pointer");
}

Test(cxx, aligned_delete_of_a_misaligned_pointer_aborts, .timeout = 120)
{
    run_misuse("aligned_wrong", "operator delete(): invalid alignment for pointer");
}

Test(cxx, sized_aligned_delete_of_a_wrong_size_aborts, .timeout = 120)
{
    run_misuse("sized_aligned_wrong", "operator delete(): invalid size for pointer");
}

Test(cxx, double_delete_aborts, .timeout = 120)
{
    run_misuse("double_delete", "free(): double free of pointer");
}

/* A C++ module loaded with RTLD_LOCAL by a C program: its runtime is outside the global
 * scope, and new still calls the handler and throws std::bad_alloc. */
Test(cxx, a_module_loaded_locally_by_a_c_program_gets_bad_alloc, .timeout = 120)
{
    library_exists(TATEST_LIBRARY);
    struct tt_run r;
    char *argv[] = {TATEST_HOST, TATEST_MODULE, NULL};
    run(&r, argv, TATEST_LIBRARY);
    expect_ok(&r, "host with the module");
    cr_assert_str_eq(r.out, "module: bad_alloc after 2 handler calls; nothrow nullptr\n",
                     "the module printed: %s (stderr: %s)", r.out, r.err);
    tt_run_release(&r);
}

/* The preloaded libraries load into C programs: they need libc alone and name no C++
 * runtime symbol (no libstdc++, no __cxa_*, no unwinder). */
Test(cxx, the_preloaded_libraries_need_no_cxx_runtime, .timeout = 120)
{
    const char *libs[] = {TATEST_LIBRARY, TATEST_SECURE_LIBRARY};
    for (int i = 0; i < 2; i++) {
        if (libs[i][0] == 0)
            continue;
        library_exists(libs[i]);
        struct tt_run r;
        char *readelf[] = {"readelf", "-d", (char *)libs[i], NULL};
        run(&r, readelf, NULL);
        expect_ok(&r, "readelf -d");
        for (char *line = r.out; (line = strstr(line, "(NEEDED)")) != NULL; line++) {
            char *end = strchr(line, '\n');
            if (end)
                *end = 0;
            cr_expect(strstr(line, "[libc.so.6]") != NULL, "%s needs more than libc: %s",
                      libs[i], line);
            if (end)
                *end = '\n';
        }
        tt_run_release(&r);

        char *nm[] = {"nm", "-D", "--undefined-only", (char *)libs[i], NULL};
        run(&r, nm, NULL);
        expect_ok(&r, "nm -D");
        /* glibc's own (__cxa_finalize@GLIBC_2.2.5) are versioned by it. */
        for (char *line = strtok(r.out, "\n"); line != NULL; line = strtok(NULL, "\n")) {
            if (strstr(line, "@GLIBC_") != NULL)
                continue;
            cr_expect(strstr(line, " _Z") == NULL && strstr(line, "__cxa") == NULL &&
                          strstr(line, "_Unwind") == NULL && strstr(line, "__gxx") == NULL,
                      "%s refers to a C++ runtime symbol: %s", libs[i], line);
        }
        tt_run_release(&r);
    }
}
