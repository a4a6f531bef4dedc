/* Running a program with a time limit and capturing its output; see tatest.h. */
#include "tatest.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

struct buffer {
    char *data;
    size_t len, cap;
};

static int buffer_append(struct buffer *b, const char *src, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, src, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

static size_t name_length(const char *assignment)
{
    const char *eq = strchr(assignment, '=');
    return eq ? (size_t)(eq - assignment) : strlen(assignment);
}

/* The environment of the child: ours without LD_PRELOAD and without the names in `env`,
 * followed by `env`. */
static char **child_environment(char *const env[])
{
    size_t n = 0, m = 0;
    while (environ[n])
        n++;
    while (env && env[m])
        m++;
    char **out = calloc(n + m + 1, sizeof(char *));
    if (!out)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = name_length(environ[i]);
        bool drop = (len == 10 && strncmp(environ[i], "LD_PRELOAD", 10) == 0);
        for (size_t j = 0; j < m && !drop; j++)
            drop = name_length(env[j]) == len && strncmp(env[j], environ[i], len) == 0;
        if (!drop)
            out[k++] = environ[i];
    }
    for (size_t j = 0; j < m; j++)
        out[k++] = env[j];
    out[k] = NULL;
    return out;
}

int tt_run(struct tt_run *r, char *const argv[], char *const env[], const char *cwd,
           const char *stdin_path, double timeout)
{
    memset(r, 0, sizeof *r);
    int out_pipe[2], err_pipe[2];
    char **envp = child_environment(env);
    if (!envp)
        return -1;
    if (pipe2(out_pipe, O_CLOEXEC) != 0) {
        free(envp);
        return -1;
    }
    if (pipe2(err_pipe, O_CLOEXEC) != 0) {
        close(out_pipe[0]);
        close(out_pipe[1]);
        free(envp);
        return -1;
    }
    double start = tt_now();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        free(envp);
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        /* Criterion may have changed the signal mask or dispositions: start clean. */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        for (int s = 1; s < NSIG; s++)
            if (s != SIGKILL && s != SIGSTOP)
                signal(s, SIG_DFL);
        if (cwd && chdir(cwd) != 0)
            _exit(126);
        int in = open(stdin_path ? stdin_path : "/dev/null", O_RDONLY);
        if (in < 0)
            _exit(126);
        dup2(in, 0);
        dup2(out_pipe[1], 1);
        dup2(err_pipe[1], 2);
        execvpe(argv[0], argv, envp);
        dprintf(2, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    free(envp);
    close(out_pipe[1]);
    close(err_pipe[1]);

    struct buffer out = {0}, err = {0};
    buffer_append(&out, "", 0);
    buffer_append(&err, "", 0);
    struct pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
    int open_fds = 2;
    double deadline = start + timeout;
    while (open_fds > 0) {
        double left = deadline - tt_now();
        if (left <= 0) {
            r->timed_out = true;
            break;
        }
        int rc = poll(fds, 2, (int)(left * 1000) + 1);
        if (rc < 0 && errno != EINTR)
            break;
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char chunk[65536];
            ssize_t n = read(fds[i].fd, chunk, sizeof chunk);
            if (n > 0) {
                buffer_append(i == 0 ? &out : &err, chunk, (size_t)n);
            } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
            }
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0)
            close(fds[i].fd);

    int status = 0;
    if (r->timed_out) {
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        r->status = -1;
    } else {
        /* Output closed: the child is exiting (or a grandchild kept the pipes). */
        status = tt_wait_timeout(pid, deadline - tt_now() > 1 ? deadline - tt_now() : 1);
        if (status == -1)
            r->timed_out = true;
        r->status = status;
        kill(-pid, SIGKILL); /* leftovers of the group, if any */
    }
    r->out = out.data;
    r->out_len = out.len;
    r->err = err.data;
    r->err_len = err.len;
    r->seconds = tt_now() - start;
    return 0;
}

void tt_run_release(struct tt_run *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

bool tt_run_ok(const struct tt_run *r)
{
    return !r->timed_out && r->status != -1 && WIFEXITED(r->status) &&
           WEXITSTATUS(r->status) == 0;
}
