/*
 * launch - run one measured process and report what it cost.
 *
 *     launch [-t SECONDS] [-p PRELOAD] [-o FILE] -- PROGRAM [ARGS...]
 *
 * Forks, puts the child in its own process group, sets LD_PRELOAD in the child only
 * (so this launcher never runs on the allocator under test and stays small), execs the
 * program and waits for it with wait4. On the time limit the whole process group is
 * killed. The report (to FILE, or stderr) is a list of "key value" lines:
 *
 *     wall_s, user_s, sys_s      elapsed and CPU time of the child and its descendants
 *     maxrss_kib                 ru_maxrss of the child: the largest resident set of the
 *                                child or any descendant it waited for. Across exec it
 *                                also carries the resident set of the forked copy of this
 *                                launcher, reported as launcher_rss_kib so that it can be
 *                                ruled out (it is about a megabyte).
 *     exit / signal              how the child ended
 *     timed_out                  1 when the time limit killed it
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t expired, interrupted;

static void on_alarm(int sig) { (void)sig; expired = 1; }
static void on_stop(int sig) { (void)sig; interrupted = 1; }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Current resident set of this process: what a forked child starts with. */
static long vmrss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kib;
}

static double tv(struct timeval t) { return (double)t.tv_sec + (double)t.tv_usec * 1e-6; }

static void usage(void)
{
    fprintf(stderr, "usage: launch [-t SECONDS] [-p PRELOAD] [-o FILE] -- PROGRAM [ARGS...]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    double limit = 0;
    const char *preload = NULL, *out = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "+t:p:o:")) != -1) {
        switch (opt) {
        case 't': limit = strtod(optarg, NULL); break;
        case 'p': preload = optarg; break;
        case 'o': out = optarg; break;
        default: usage();
        }
    }
    if (optind >= argc)
        usage();

    long own_rss = vmrss_kib();

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;              /* no SA_RESTART: wait4 returns EINTR */
    sigaction(SIGALRM, &sa, NULL);
    sa.sa_handler = on_stop;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    double t0 = now();
    pid_t pid = fork();
    if (pid < 0) {
        perror("launch: fork");
        return 125;
    }
    if (pid == 0) {
        setpgid(0, 0);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        if (preload && *preload)
            setenv("LD_PRELOAD", preload, 1);
        execvp(argv[optind], argv + optind);
        fprintf(stderr, "launch: cannot run %s: %s\n", argv[optind], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);               /* both sides, whichever runs first */

    if (limit > 0) {
        struct itimerval it;
        memset(&it, 0, sizeof it);
        it.it_value.tv_sec = (time_t)limit;
        it.it_value.tv_usec = (suseconds_t)((limit - (double)(time_t)limit) * 1e6);
        if (it.it_value.tv_sec == 0 && it.it_value.tv_usec == 0)
            it.it_value.tv_usec = 1;
        setitimer(ITIMER_REAL, &it, NULL);
    }

    int status = 0, killed = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    for (;;) {
        pid_t r = wait4(pid, &status, 0, &ru);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR) {
            perror("launch: wait4");
            return 125;
        }
        if ((expired || interrupted) && !killed) {
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            killed = 1;
        }
    }
    double wall = now() - t0;
    /* Anything the program left running in its group goes too. */
    kill(-pid, SIGKILL);

    FILE *f = out ? fopen(out, "w") : stderr;
    if (!f) {
        perror("launch: report");
        return 125;
    }
    fprintf(f, "wall_s %.6f\nuser_s %.6f\nsys_s %.6f\nmaxrss_kib %ld\nlauncher_rss_kib %ld\n",
            wall, tv(ru.ru_utime), tv(ru.ru_stime), ru.ru_maxrss, own_rss);
    if (WIFEXITED(status))
        fprintf(f, "exit %d\n", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        fprintf(f, "signal %d\n", WTERMSIG(status));
    fprintf(f, "timed_out %d\ninterrupted %d\n", expired && killed ? 1 : 0, interrupted ? 1 : 0);
    if (f != stderr)
        fclose(f);
    if (interrupted)
        return 130;
    return 0;
}
