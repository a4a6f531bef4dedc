/*
 * Real programs with the replacement library preloaded: each runs twice, once with the
 * system allocator and once with LD_PRELOAD, and both runs must succeed and print the
 * same thing. The workloads live in workloads/; the library's path comes from the build.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tatest.h"

#define WORKLOADS TATEST_PRELOAD_DIR "/workloads"
#define RUN_LIMIT 240.0

static char *const preload_env[] = {"LD_PRELOAD=" TATEST_LIBRARY, NULL};

/* A missing library (a failed build) is reported as such, not as a program failure. */
static void library_exists(void)
{
    cr_assert_eq(access(TATEST_LIBRARY, R_OK), 0, "the library %s does not exist: %s",
                 TATEST_LIBRARY, strerror(errno));
}

/* Environment shared by both runs (deterministic output), plus LD_PRELOAD when asked. */
static char **environment(bool preload, const char *tmpdir)
{
    static char tmp[512];
    snprintf(tmp, sizeof tmp, "TMPDIR=%s", tmpdir ? tmpdir : "/tmp");
    static char *env[8];
    int k = 0;
    env[k++] = "LC_ALL=C";
    env[k++] = "PYTHONMALLOC=malloc";
    env[k++] = "PYTHONHASHSEED=0";
    env[k++] = "PERL_HASH_SEED=0";
    env[k++] = tmp;
    if (preload)
        env[k++] = preload_env[0];
    env[k] = NULL;
    return env;
}

static void show_failure(const char *what, const struct tt_run *r)
{
    char how[128];
    const char *err = r->err_len > 2000 ? r->err + r->err_len - 2000 : r->err;
    cr_assert_fail("%s %s after %.1f s\nstderr: %s", what,
                   tt_describe_status(r->status, how, sizeof how), r->seconds, err);
}

/* Runs argv in `cwd_*` once without and once with the library; asserts equal stdout. */
static void compare_runs(char *const argv[], const char *cwd_sys, const char *cwd_ta,
                         const char *stdin_path, const char *label)
{
    library_exists();
    struct tt_run sys, ta;
    cr_assert_eq(tt_run(&sys, argv, environment(false, cwd_sys), cwd_sys, stdin_path,
                        RUN_LIMIT),
                 0, "cannot start %s", argv[0]);
    if (!tt_run_ok(&sys))
        show_failure("without the library (the test itself is broken):", &sys);
    cr_assert_eq(tt_run(&ta, argv, environment(true, cwd_ta), cwd_ta, stdin_path, RUN_LIMIT), 0,
                 "cannot start %s", argv[0]);
    if (!tt_run_ok(&ta)) {
        char what[256];
        snprintf(what, sizeof what, "%s with the library preloaded", label);
        show_failure(what, &ta);
    }
    cr_assert(sys.out_len > 0, "%s printed nothing", label);
    if (sys.out_len != ta.out_len || memcmp(sys.out, ta.out, sys.out_len) != 0) {
        char diff[512];
        tt_first_difference(sys.out, ta.out, diff, sizeof diff);
        cr_assert_fail("%s: the output differs with the library preloaded (%zu vs %zu bytes); "
                       "first difference, system vs preloaded: %s",
                       label, sys.out_len, ta.out_len, diff);
    }
    cr_log_info("%s: %.2f s without, %.2f s with the library", label, sys.seconds, ta.seconds);
    tt_run_release(&sys);
    tt_run_release(&ta);
}

/* Two fresh directories for the two runs, removed afterwards. */
struct dirs {
    char *sys, *ta;
};

static char *made[4]; /* removed after the test even when an assertion ends it early */

static void remove_made(void)
{
    for (int i = 0; i < 4; i++) {
        tt_remove_tree(made[i]);
        free(made[i]);
        made[i] = NULL;
    }
}

static struct dirs make_dirs(const char *tag)
{
    struct dirs d = {tt_make_tempdir(tag), tt_make_tempdir(tag)};
    cr_assert(d.sys && d.ta, "cannot create temporary directories");
    made[0] = strdup(d.sys);
    made[1] = strdup(d.ta);
    return d;
}

static void remove_dirs(struct dirs *d)
{
    free(d->sys);
    free(d->ta);
    remove_made();
}

/* ---- the library is really in use -------------------------------------------------- */

static void expect_mapped(char *const argv[], const char *label)
{
    library_exists();
    struct tt_run r;
    cr_assert_eq(tt_run(&r, argv, preload_env, NULL, NULL, 60), 0);
    if (!tt_run_ok(&r))
        show_failure(label, &r);
    cr_assert(strstr(r.out, "libtamalloc") != NULL,
              "%s: libtamalloc is not in the process's maps with LD_PRELOAD=%s", label,
              TATEST_LIBRARY);
    tt_run_release(&r);
}

Test(preload, library_mapped_in_cat, .timeout = 60)
{
    char *argv[] = {"cat", "/proc/self/maps", NULL};
    expect_mapped(argv, "cat");
}

Test(preload, library_mapped_in_python, .timeout = 60)
{
    char *argv[] = {"/usr/bin/python3", "-c",
                    "import sys; sys.stdout.write(open('/proc/self/maps').read())", NULL};
    expect_mapped(argv, "python3");
}

Test(preload, library_mapped_in_perl, .timeout = 60)
{
    char *argv[] = {"perl", "-e", "open(my $f, '<', '/proc/self/maps') or die; print <$f>;",
                    NULL};
    expect_mapped(argv, "perl");
}

/* The dynamic linker binds malloc and free, in the program and in the C library, to the
 * preloaded library. */
static void expect_bound(char *const argv[], const char *label)
{
    library_exists();
    char *env[] = {"LD_PRELOAD=" TATEST_LIBRARY, "LD_DEBUG=bindings", NULL};
    struct tt_run r;
    cr_assert_eq(tt_run(&r, argv, env, NULL, NULL, 60), 0);
    if (!tt_run_ok(&r))
        show_failure(label, &r);
    static const char *const symbols[] = {"`malloc'", "`free'", "`calloc'", "`realloc'"};
    for (size_t i = 0; i < sizeof symbols / sizeof *symbols; i++) {
        bool found = false;
        for (char *line = r.err; line && *line && !found;) {
            char *end = strchr(line, '\n');
            size_t len = end ? (size_t)(end - line) : strlen(line);
            char *sym = memmem(line, len, symbols[i], strlen(symbols[i]));
            char *lib = memmem(line, len, "libtamalloc", 11);
            found = sym && lib && lib < sym;
            line = end ? end + 1 : NULL;
        }
        cr_assert(found, "%s: no binding of %s to libtamalloc in the dynamic linker's trace",
                  label, symbols[i]);
    }
    tt_run_release(&r);
}

Test(preload, malloc_bound_to_library_in_cat, .timeout = 60)
{
    char *argv[] = {"cat", "/dev/null", NULL};
    expect_bound(argv, "cat");
}

Test(preload, malloc_bound_to_library_in_python, .timeout = 60)
{
    char *argv[] = {"/usr/bin/python3", "-c", "pass", NULL};
    expect_bound(argv, "python3");
}

/* ---- programs ---------------------------------------------------------------------- */

Test(preload, python_workload, .timeout = 600, .fini = remove_made)
{
    struct dirs d = make_dirs("python");
    char *argv[] = {"/usr/bin/python3", WORKLOADS "/workload.py", NULL};
    compare_runs(argv, d.sys, d.ta, NULL, "python3 workload.py");
    remove_dirs(&d);
}

Test(preload, python_json_and_threads_stdin, .timeout = 600, .fini = remove_made)
{
    /* The same workload fed through stdin (another reading path). */
    struct dirs d = make_dirs("python");
    char *argv[] = {"/usr/bin/python3", "-", NULL};
    compare_runs(argv, d.sys, d.ta, WORKLOADS "/workload.py", "python3 - < workload.py");
    remove_dirs(&d);
}

Test(preload, sqlite3_file_database, .timeout = 600, .fini = remove_made)
{
    struct dirs d = make_dirs("sqlite");
    char *argv[] = {"sqlite3", "-batch", "test.db", NULL};
    compare_runs(argv, d.sys, d.ta, WORKLOADS "/workload.sql", "sqlite3 test.db");
    remove_dirs(&d);
}

Test(preload, sqlite3_memory_database, .timeout = 600, .fini = remove_made)
{
    struct dirs d = make_dirs("sqlite");
    char *argv[] = {"sqlite3", "-batch", ":memory:", NULL};
    compare_runs(argv, d.sys, d.ta, WORKLOADS "/workload.sql", "sqlite3 :memory:");
    remove_dirs(&d);
}

Test(preload, perl_hashes, .timeout = 600, .fini = remove_made)
{
    struct dirs d = make_dirs("perl");
    char *argv[] = {"perl", WORKLOADS "/workload.pl", NULL};
    compare_runs(argv, d.sys, d.ta, NULL, "perl workload.pl");
    remove_dirs(&d);
}

Test(preload, git_repository, .timeout = 600, .fini = remove_made)
{
    struct dirs d = make_dirs("git");
    char *argv[] = {"sh", WORKLOADS "/git_workload.sh", NULL};
    compare_runs(argv, d.sys, d.ta, NULL, "git workload");
    remove_dirs(&d);
}

/* gcc compiles the same file with each allocator; the two programs print the same. */
Test(preload, gcc_compiles_program, .timeout = 600, .fini = remove_made)
{
    library_exists();
    struct dirs d = make_dirs("gcc");
    char *cc[] = {"gcc", "-O2", "-g", "-Wall", "-o", "program", WORKLOADS "/program.c", NULL};
    struct tt_run r;
    cr_assert_eq(tt_run(&r, cc, environment(false, d.sys), d.sys, NULL, RUN_LIMIT), 0);
    if (!tt_run_ok(&r))
        show_failure("gcc without the library", &r);
    tt_run_release(&r);
    cr_assert_eq(tt_run(&r, cc, environment(true, d.ta), d.ta, NULL, RUN_LIMIT), 0);
    if (!tt_run_ok(&r))
        show_failure("gcc with the library preloaded", &r);
    cr_assert(r.err_len == 0, "gcc with the library preloaded printed: %s", r.err);
    tt_run_release(&r);
    char *run[] = {"./program", NULL};
    compare_runs(run, d.sys, d.ta, NULL, "the compiled program");
    remove_dirs(&d);
}

/* ---- sort on 200k lines ------------------------------------------------------------ */

static char *sort_data(const char *dir)
{
    size_t n = strlen(dir) + 16;
    char *path = malloc(n);
    snprintf(path, n, "%s/data.txt", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        fprintf(f, "%llu w%05llu %.*s\n", (unsigned long long)(x % 1000000007ull),
                (unsigned long long)(x >> 40) % 50000, (int)(x % 40), "abcdefghijklmnopqrstuvwxyz0123456789ABCD");
    }
    fclose(f);
    return path;
}

struct sort_case {
    char args[4][32];
};

ParameterizedTestParameters(preload, sort_200k_lines)
{
    static struct sort_case params[] = {
        {{"-n"}},
        {{"-R", "--random-source=RANDOM"}},
        {{"-t", " ", "-k2,2", "-k1,1n"}},
        {{"-n", "-S", "1M", "--parallel=2"}},
        {{"-u", "-k2,2"}},
    };
    return cr_make_param_array(struct sort_case, params, sizeof params / sizeof *params);
}

ParameterizedTest(struct sort_case *c, preload, sort_200k_lines, .timeout = 600, .fini = remove_made)
{
    struct dirs d = make_dirs("sort");
    /* The same data in both directories; sort's temporary files go there too. */
    char *a = sort_data(d.sys), *b = sort_data(d.ta);
    char *argv[8] = {"sort"};
    int k = 1;
    static char random_source[600];
    for (int i = 0; i < 4 && c->args[i][0]; i++) {
        if (strcmp(c->args[i], "--random-source=RANDOM") == 0) {
            /* A fixed random source makes -R deterministic. */
            snprintf(random_source, sizeof random_source, "--random-source=%s",
                     WORKLOADS "/workload.sql");
            argv[k++] = random_source;
        } else {
            argv[k++] = c->args[i];
        }
    }
    argv[k++] = "data.txt";
    argv[k] = NULL;
    char label[256];
    snprintf(label, sizeof label, "sort %s %s %s %s", c->args[0], c->args[1], c->args[2],
             c->args[3]);
    compare_runs(argv, d.sys, d.ta, NULL, label);
    free(a);
    free(b);
    remove_dirs(&d);
}
