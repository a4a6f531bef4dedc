/*
 * Programs built against jemalloc run on tamalloc preloaded, with no stand-in library: the
 * real libjemalloc.so.2 they name satisfies the dynamic loader, and every jemalloc name they
 * call binds to libtamalloc.so (which comes first).
 *
 *   - programs/jemalloc_api.c, linked with -ljemalloc: each name it calls, and what jemalloc
 *     documents of it, alone and preloaded;
 *   - Debian's redis-server (package redis-server; ci/test installs it): the loader binds
 *     every allocator name to tamalloc; INFO MEMORY and MEMORY STATS report tamalloc's
 *     figures, consistent with redis's own count and the process's resident set; MEMORY
 *     MALLOC-STATS prints tamalloc's report; MEMORY PURGE gives back the memory of deleted
 *     keys (run with a long decay and a large budget, so that nothing goes back before it).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tatest.h"

#define MiB (1024.0 * 1024.0)

static void library_exists(void)
{
    cr_assert_eq(access(TATEST_LIBRARY, R_OK), 0, "the library %s does not exist: %s",
                 TATEST_LIBRARY, strerror(errno));
}

static void show_run(const char *what, const struct tt_run *r)
{
    char how[128];
    cr_assert(tt_run_ok(r), "%s %s\nstdout: %s\nstderr: %.3000s", what,
              tt_describe_status(r->status, how, sizeof how), r->out, r->err);
}

/* ------------------------------------------------------------------ a program linked with jemalloc */

Test(jemalloc_api, a_program_linked_with_jemalloc_runs_on_tamalloc, .timeout = 120)
{
    if (TATEST_JEMALLOC_PROGRAM[0] == 0)
        cr_skip_test("jemalloc's headers (libjemalloc-dev) were not found at configuration");
    library_exists();
    char *argv[] = {TATEST_JEMALLOC_PROGRAM, NULL};
    struct tt_run r;
    cr_assert_eq(tt_run(&r, argv, NULL, NULL, NULL, 60), 0);
    show_run("alone (with jemalloc; the program itself is broken):", &r);
    cr_assert(strstr(r.out, "served by libjemalloc.so.2\n") != NULL, "alone: %s", r.out);
    tt_run_release(&r);

    char *env[] = {"LD_PRELOAD=" TATEST_LIBRARY, NULL};
    cr_assert_eq(tt_run(&r, argv, env, NULL, NULL, 60), 0);
    show_run("with libtamalloc.so preloaded:", &r);
    cr_assert(strstr(r.out, "served by libtamalloc.so") != NULL &&
                  strstr(r.out, "version tamalloc") != NULL &&
                  strstr(r.out, "report: tamalloc statistics") != NULL &&
                  strstr(r.out, "\nok\n") != NULL,
              "preloaded: %s", r.out);
    tt_run_release(&r);
}

/* ------------------------------------------------------------------ redis-server */

static bool on_path(const char *prog)
{
    char *argv[] = {"sh", "-c", NULL, NULL};
    char cmd[256];
    snprintf(cmd, sizeof cmd, "command -v %s", prog);
    argv[2] = cmd;
    struct tt_run r;
    if (tt_run(&r, argv, NULL, NULL, NULL, 10) != 0)
        return false;
    bool ok = tt_run_ok(&r);
    tt_run_release(&r);
    return ok;
}

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(s, (struct sockaddr *)&a, &len) != 0)
        return -1;
    int port = ntohs(a.sin_port);
    close(s);
    return port;
}

struct server {
    pid_t pid;
    char port[16];
    char *dir;
};

/* redis-cli (not preloaded) against the server; the caller releases r. */
static void cli(const struct server *s, struct tt_run *r, const char *const *args)
{
    char *argv[16] = {"redis-cli", "-h", "127.0.0.1", "-p", (char *)s->port};
    int k = 5;
    for (int i = 0; args[i] && k < 15; i++)
        argv[k++] = (char *)args[i];
    argv[k] = NULL;
    cr_assert_eq(tt_run(r, argv, NULL, NULL, NULL, 120), 0);
    show_run("redis-cli", r);
}

/* A field "name:value" of INFO's output. */
static double info_field(const char *info, const char *name)
{
    char key[128];
    snprintf(key, sizeof key, "\n%s:", name);
    const char *at = strstr(info, key);
    cr_assert(at != NULL, "INFO has no %s:\n%s", name, info);
    return strtod(at + strlen(key), NULL);
}

struct memory {
    double used, rss, allocated, active, resident;
};

static struct memory info_memory(const struct server *s)
{
    struct tt_run r;
    cli(s, &r, (const char *[]){"INFO", "MEMORY", NULL});
    struct memory m = {
        .used = info_field(r.out, "used_memory"),
        .rss = info_field(r.out, "used_memory_rss"),
        .allocated = info_field(r.out, "allocator_allocated"),
        .active = info_field(r.out, "allocator_active"),
        .resident = info_field(r.out, "allocator_resident"),
    };
    tt_run_release(&r);
    return m;
}

static double vm_rss(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    double kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %lf", &kib) == 1)
            break;
    fclose(f);
    return kib * 1024.0;
}

static struct server start_redis(void)
{
    struct server s = {.dir = tt_make_tempdir("redis")};
    int port = free_port();
    cr_assert_gt(port, 0);
    snprintf(s.port, sizeof s.port, "%d", port);
    char log[512];
    snprintf(log, sizeof log, "%s/server.log", s.dir);
    fflush(NULL);
    s.pid = fork();
    cr_assert_geq(s.pid, 0);
    if (s.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed test leaves no server behind */
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        setenv("LD_PRELOAD", TATEST_LIBRARY, 1);
        /* Nothing goes back on its own: what MEMORY PURGE returns can be seen. */
        setenv("TAMALLOC_CONF", "decay_ms:600000,dirty_max_kb:4194304,background_thread:false", 1);
        unsetenv("LD_LIBRARY_PATH");
        execlp("redis-server", "redis-server", "--port", s.port, "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--daemonize", "no", "--databases", "1",
               "--dir", s.dir, "--logfile", log, (char *)NULL);
        _exit(127);
    }
    double deadline = tt_now() + 30;
    for (;;) {
        char *argv[] = {"redis-cli", "-h", "127.0.0.1", "-p", s.port, "PING", NULL};
        struct tt_run r;
        cr_assert_eq(tt_run(&r, argv, NULL, NULL, NULL, 10), 0);
        bool up = tt_run_ok(&r) && strcmp(r.out, "PONG\n") == 0;
        tt_run_release(&r);
        if (up)
            break;
        int st;
        cr_assert_eq(waitpid(s.pid, &st, WNOHANG), 0, "redis-server exited at start");
        cr_assert_lt(tt_now(), deadline, "redis-server did not answer PING");
        usleep(50000);
    }
    return s;
}

static bool mapped(pid_t pid, const char *needle)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    char line[1024];
    bool found = false;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

/* The dynamic loader's own account (LD_DEBUG=bindings, everything bound at start): every
 * allocator name any object of redis-server looks up binds to libtamalloc.so, and nothing
 * binds to libjemalloc.so.2 but jemalloc's own internal names. */
Test(redis, every_allocator_name_binds_to_tamalloc, .timeout = 120)
{
    if (!on_path("redis-server"))
        cr_skip_test("redis-server is not installed (ci/test installs it)");
    library_exists();
    char *argv[] = {"redis-server", "--version", NULL};
    char *env[] = {"LD_PRELOAD=" TATEST_LIBRARY, "LD_DEBUG=bindings", "LD_BIND_NOW=1",
                   "LD_LIBRARY_PATH=", NULL};
    struct tt_run r;
    cr_assert_eq(tt_run(&r, argv, env, NULL, NULL, 60), 0);
    show_run("redis-server --version", &r);
    static const char *const names[] = {
        "malloc", "free", "calloc", "realloc", "malloc_usable_size", "posix_memalign",
        "aligned_alloc", "memalign", "valloc", "mallocx", "rallocx", "xallocx", "sallocx",
        "dallocx", "sdallocx", "nallocx", "mallctl", "mallctlnametomib", "mallctlbymib",
        "malloc_stats_print", "_Znwm", "_Znam", "_ZdlPv", "_ZdaPv", "_ZdlPvm", "_ZdaPvm",
    };
    bool redis_mallctl = false, redis_nallocx = false, redis_stats = false;
    int checked = 0;
    for (char *line = strtok(r.err, "\n"); line; line = strtok(NULL, "\n")) {
        char from[512], to[512], sym[256];
        const char *b = strstr(line, "binding file ");
        if (!b || sscanf(b, "binding file %511s [%*d] to %511s [%*d]: normal symbol `%255[^']'",
                         from, to, sym) != 3)
            continue;
        bool from_jemalloc = strstr(from, "libjemalloc") != NULL;
        if (!from_jemalloc)
            cr_expect(strstr(to, "libjemalloc") == NULL, "%s binds %s to jemalloc", from, sym);
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (strcmp(sym, names[i]) == 0) {
                cr_expect(strstr(to, "libtamalloc") != NULL, "%s binds %s to %s", from, sym, to);
                checked++;
            }
        if (strstr(from, "redis-server")) {
            redis_mallctl |= strcmp(sym, "mallctl") == 0 && strstr(to, "libtamalloc");
            redis_nallocx |= strcmp(sym, "nallocx") == 0 && strstr(to, "libtamalloc");
            redis_stats |= strcmp(sym, "malloc_stats_print") == 0 && strstr(to, "libtamalloc");
        }
    }
    cr_assert_gt(checked, 5, "the loader reported no allocator binding");
    cr_assert(redis_mallctl && redis_nallocx && redis_stats,
              "redis-server's jemalloc names: mallctl %d, nallocx %d, malloc_stats_print %d",
              redis_mallctl, redis_nallocx, redis_stats);
    tt_run_release(&r);
}

Test(redis, memory_reports_and_purge_on_tamalloc, .timeout = 300)
{
    if (!on_path("redis-server") || !on_path("redis-cli"))
        cr_skip_test("redis-server is not installed (ci/test installs it)");
    library_exists();
    struct server s = start_redis();
    cr_assert(mapped(s.pid, "libtamalloc"), "libtamalloc.so is not mapped in redis-server");

    /* Before: the allocator figures are tamalloc's (a stand-in reports 0). */
    struct memory m0 = info_memory(&s);
    cr_assert_gt(m0.allocated, 0, "allocator_allocated is 0: mallctl is not answered");

    /* Fill: 100,000 strings of 400-600 bytes and 10 of 3 MB, about 85 MB. */
    struct tt_run r;
    cli(&s, &r, (const char *[]){"EVAL",
                                 "for i = 1, 100000 do redis.call('SET', 'k:' .. i, "
                                 "string.rep('v', 400 + i % 200)) end "
                                 "for i = 1, 10 do redis.call('SET', 'big:' .. i, "
                                 "string.rep('b', 3000000)) end return 1",
                                 "0", NULL});
    cr_assert_str_eq(r.out, "1\n", "the fill script: %s %s", r.out, r.err);
    tt_run_release(&r);
    usleep(400000); /* redis refreshes the allocator's figures every 100 ms */
    struct memory m1 = info_memory(&s);
    double rss1 = vm_rss(s.pid);
    cr_assert_gt(m1.used, 70 * MiB, "used_memory %.0f after the fill", m1.used);
    cr_assert(m1.allocated >= m1.used && m1.allocated <= m1.used * 1.25 + 16 * MiB,
              "allocator_allocated %.0f against redis's own used_memory %.0f", m1.allocated,
              m1.used);
    cr_assert(m1.active >= m1.allocated && m1.active <= m1.allocated * 1.25 + 16 * MiB,
              "allocator_active %.0f, allocator_allocated %.0f", m1.active, m1.allocated);
    cr_assert(m1.resident >= m1.used * 0.9 && m1.resident <= rss1,
              "allocator_resident %.0f, used_memory %.0f, the process's resident set %.0f",
              m1.resident, m1.used, rss1);

    cli(&s, &r, (const char *[]){"MEMORY", "STATS", NULL});
    cr_assert(strstr(r.out, "allocator.allocated\n") != NULL, "MEMORY STATS: %.2000s", r.out);
    double stats_allocated = strtod(strstr(r.out, "allocator.allocated\n") + 20, NULL);
    cr_assert(stats_allocated >= m1.used, "MEMORY STATS allocator.allocated %.0f", stats_allocated);
    tt_run_release(&r);
    cli(&s, &r, (const char *[]){"MEMORY", "MALLOC-STATS", NULL});
    cr_assert(strncmp(r.out, "tamalloc statistics (whole process)", 35) == 0,
              "MEMORY MALLOC-STATS: %.500s", r.out);
    tt_run_release(&r);

    /* Delete everything; the memory stays (long decay) until MEMORY PURGE. */
    cli(&s, &r, (const char *[]){"EVAL",
                                 "for i = 1, 100000 do redis.call('DEL', 'k:' .. i) end "
                                 "for i = 1, 10 do redis.call('DEL', 'big:' .. i) end return 1",
                                 "0", NULL});
    tt_run_release(&r);
    usleep(400000);
    double rss2 = vm_rss(s.pid);
    struct memory m2 = info_memory(&s);
    cr_assert_lt(m2.allocated, m0.allocated + 8 * MiB, "allocator_allocated %.0f after deleting",
                 m2.allocated);
    cr_assert_gt(rss2, rss1 - 30 * MiB,
                 "the memory went back before MEMORY PURGE (%.0f MB, then %.0f MB)", rss1 / MiB,
                 rss2 / MiB);
    cli(&s, &r, (const char *[]){"MEMORY", "PURGE", NULL});
    cr_assert_str_eq(r.out, "OK\n", "MEMORY PURGE: %s", r.out);
    tt_run_release(&r);
    double rss3 = vm_rss(s.pid);
    cr_assert_lt(rss3, rss2 - 60 * MiB, "MEMORY PURGE gave back too little: %.0f MB, then %.0f MB",
                 rss2 / MiB, rss3 / MiB);
    usleep(400000);
    struct memory m3 = info_memory(&s);
    cr_assert_lt(m3.resident, m2.resident - 60 * MiB,
                 "allocator_resident %.0f before MEMORY PURGE, %.0f after", m2.resident,
                 m3.resident);

    cr_log_info("redis on tamalloc: used_memory %.1f MB, allocator_allocated %.1f MB, "
                "allocator_resident %.1f MB, RSS %.1f MB after the fill; RSS %.1f MB after "
                "deleting, %.1f MB after MEMORY PURGE",
                m1.used / MiB, m1.allocated / MiB, m1.resident / MiB, rss1 / MiB, rss2 / MiB,
                rss3 / MiB);

    /* A clean shutdown. */
    cli(&s, &r, (const char *[]){"SHUTDOWN", "NOSAVE", NULL});
    tt_run_release(&r);
    int st = tt_wait_timeout(s.pid, 30);
    char how[128];
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "redis-server %s",
              tt_describe_status(st, how, sizeof how));
    tt_remove_tree(s.dir);
    free(s.dir);
}
