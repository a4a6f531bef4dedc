/*
 * The runner of the ThreadSanitizer-build stand-in of Criterion (see criterion/criterion.h).
 *
 * Each test, and each parameter of a parameterized test, runs in a forked process. A test
 * passes when that process exits with the expected status (0 unless .exit_code says
 * otherwise) or dies of the expected .signal, within .timeout seconds. Output follows
 * Criterion's conventions, ending with its synthesis line.
 *
 * Options: --jobs N / -jN (tests run at once), --filter GLOB ("suite/name"),
 * --timeout SECONDS (default limit), --verbose; Criterion's other options are ignored.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "criterion/criterion.h"
#include "criterion/redirect.h"

/* ThreadSanitizer's defaults for these tests: a child of fork has only the thread that
 * forked, but ThreadSanitizer still counts its parent's threads and would report those that
 * had finished, unjoined, as leaked when the child exits (exit status 66). The runtime finds
 * this function through the dynamic symbol table, so it must be exported: the build hides
 * every symbol by default. TSAN_OPTIONS from the environment still override it. */
const char *__tsan_default_options(void) __attribute__((visibility("default"), used));
const char *__tsan_default_options(void)
{
    return "report_thread_leaks=0";
}

static struct tts_test *registered;
static struct tts_suite *suites;
static volatile int expectations_failed;

void tts_register(struct tts_test *t)
{
    t->next = registered;
    registered = t;
}

void tts_register_suite(struct tts_suite *s)
{
    s->next = suites;
    suites = s;
}

/* The test's options, completed by those of its TestSuite. */
static struct tts_options options_of(const struct tts_test *t)
{
    struct tts_options o = t->options;
    for (struct tts_suite *s = suites; s; s = s->next) {
        if (strcmp(s->name, t->suite) != 0)
            continue;
        if (!o.init)
            o.init = s->options.init;
        if (!o.fini)
            o.fini = s->options.fini;
        if (o.timeout <= 0)
            o.timeout = s->options.timeout;
        if (!o.signal)
            o.signal = s->options.signal;
        if (!o.exit_code)
            o.exit_code = s->options.exit_code;
        o.disabled = o.disabled || s->options.disabled;
    }
    return o;
}

void tts_fail(bool fatal, const char *file, int line, const char *expr, const char *fmt, ...)
{
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *base = strrchr(file, '/');
    fprintf(stderr, "[----] %s:%d: Assertion Failed\n[----]   %s\n", base ? base + 1 : file, line,
            msg[0] ? msg : expr);
    fflush(stderr);
    if (fatal)
        _exit(1);
    expectations_failed = 1;
}

void tts_log(const char *level, const char *fmt, ...)
{
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s%s\n", level, msg);
    fflush(stderr);
}

void cr_redirect_stderr(void)
{
    int fd = open("/dev/null", O_WRONLY);
    if (fd >= 0) {
        dup2(fd, 2);
        close(fd);
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct job {
    struct tts_test *test;
    size_t index; /* parameter index */
    pid_t pid;
    double started, deadline;
};

static int passed, failed, crashed, verbose;

static void finish(struct job *j, int status, int timed_out)
{
    struct tts_options opts = options_of(j->test);
    const struct tts_options *o = &opts;
    double secs = now() - j->started;
    char name[256];
    snprintf(name, sizeof name, "%s::%s", j->test->suite, j->test->name);
    if (timed_out) {
        printf("[FAIL] %s: Timed out. (%.2fs)\n", name, secs);
        failed++;
    } else if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        if (o->signal && sig == o->signal) {
            passed++;
            if (verbose)
                printf("[PASS] %s: (%.2fs)\n", name, secs);
        } else {
            printf("[FAIL] %s: CRASH! (signal %d, %s)\n", name, sig, strsignal(sig));
            crashed++;
        }
    } else {
        int code = WEXITSTATUS(status);
        if (o->signal) {
            printf("[FAIL] %s: expected signal %d, exited with %d (%.2fs)\n", name, o->signal, code,
                   secs);
            failed++;
        } else if (code == o->exit_code) {
            passed++;
            if (verbose)
                printf("[PASS] %s: (%.2fs)\n", name, secs);
        } else {
            printf("[FAIL] %s: exited with %d (%.2fs)\n", name, code, secs);
            failed++;
        }
    }
    fflush(stdout);
}

static pid_t start(struct job *j, double default_timeout)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        struct tts_test *t = j->test;
        struct tts_options o = options_of(t);
        if (o.init)
            o.init();
        if (t->run) {
            t->run();
        } else {
            struct tts_params p = t->params();
            t->run_param((char *)p.data + j->index * p.size);
        }
        if (o.fini)
            o.fini();
        exit(expectations_failed ? 1 : 0);
    }
    j->pid = pid;
    j->started = now();
    struct tts_options o = options_of(j->test);
    double limit = o.timeout > 0 ? o.timeout : default_timeout;
    j->deadline = j->started + limit;
    if (verbose) {
        printf("[RUN ] %s::%s\n", j->test->suite, j->test->name);
        fflush(stdout);
    }
    return pid;
}

static int by_name(const void *a, const void *b)
{
    const struct tts_test *x = *(struct tts_test *const *)a, *y = *(struct tts_test *const *)b;
    int c = strcmp(x->suite, y->suite);
    return c ? c : strcmp(x->name, y->name);
}

int main(int argc, char **argv)
{
    int jobs = 1;
    double default_timeout = 1800;
    const char *filter = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--jobs") == 0 && i + 1 < argc)
            jobs = atoi(argv[++i]);
        else if (strncmp(argv[i], "-j", 2) == 0 && argv[i][2])
            jobs = atoi(argv[i] + 2);
        else if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc)
            filter = argv[++i];
        else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc)
            default_timeout = atof(argv[++i]);
        else if (strncmp(argv[i], "--verbose", 9) == 0)
            verbose = 1;
    }
    if (jobs < 1)
        jobs = 1;

    size_t n = 0;
    for (struct tts_test *t = registered; t; t = t->next)
        n++;
    struct tts_test **tests = calloc(n ? n : 1, sizeof *tests);
    n = 0;
    for (struct tts_test *t = registered; t; t = t->next)
        tests[n++] = t;
    qsort(tests, n, sizeof *tests, by_name);

    /* Every (test, parameter) pair to run. */
    size_t total = 0, cap = 64;
    struct job *queue = malloc(cap * sizeof *queue);
    for (size_t i = 0; i < n; i++) {
        struct tts_test *t = tests[i];
        char full[256];
        snprintf(full, sizeof full, "%s/%s", t->suite, t->name);
        if (options_of(t).disabled || (filter && fnmatch(filter, full, 0) != 0))
            continue;
        size_t count = t->params ? t->params().length : 1;
        for (size_t k = 0; k < count; k++) {
            if (total == cap) {
                cap *= 2;
                queue = realloc(queue, cap * sizeof *queue);
            }
            queue[total++] = (struct job){t, k, 0, 0, 0};
        }
    }
    printf("[====] Running %zu tests (sanitizer build runner)\n", total);
    fflush(stdout);

    struct job *running = calloc((size_t)jobs, sizeof *running);
    size_t next = 0;
    int active = 0;
    while (next < total || active > 0) {
        while (active < jobs && next < total) {
            for (int s = 0; s < jobs; s++)
                if (running[s].pid == 0) {
                    running[s] = queue[next++];
                    if (start(&running[s], default_timeout) < 0) {
                        perror("fork");
                        return 2;
                    }
                    active++;
                    break;
                }
        }
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid > 0) {
            for (int s = 0; s < jobs; s++)
                if (running[s].pid == pid) {
                    finish(&running[s], status, 0);
                    running[s].pid = 0;
                    active--;
                }
            continue;
        }
        double t = now();
        for (int s = 0; s < jobs; s++)
            if (running[s].pid > 0 && t > running[s].deadline) {
                kill(running[s].pid, SIGKILL);
                waitpid(running[s].pid, &status, 0);
                finish(&running[s], status, 1);
                running[s].pid = 0;
                active--;
            }
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    /* As in Criterion, crashed tests count among the failing ones too. */
    printf("[====] Synthesis: Tested: %zu | Passing: %d | Failing: %d | Crashing: %d\n", total,
           passed, failed + crashed, crashed);
    fflush(stdout);
    free(running);
    free(queue);
    free(tests);
    return (failed || crashed) ? 1 : 0;
}
