/*
 * fork against the C library's stdio locks (glibc bug 19431).
 *
 * Readers read long lines with getline from their own FILE (getline holds the FILE's
 * lock while it grows its buffer with realloc), one thread calls fflush(NULL) in a loop
 * (it takes the list lock, then each FILE's lock), and forkers fork (the C library takes
 * the list lock in fork, after running the atfork handlers). An allocator that takes its
 * own locks in an atfork handler deadlocks here: forker holds the allocator and waits for
 * the list lock, fflush holds the list lock and waits for a reader's FILE, the reader
 * holds its FILE and waits for the allocator.
 *
 * usage: fork_stdio [readers] [forkers] [seconds]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>

#include "common.h"

static char data_path[256];
static atomic_int stop, failed;
static atomic_long lines_read, forks_done, flushes;
static double deadline;

/* Readers and the flusher stop on their own at the deadline: the C library's locks are
 * not fair, and a busy reader can starve fflush (and through it fork) for a long time
 * without any deadlock; a real deadlock does not resolve when they stop. */
static int keep_going(void)
{
    return !atomic_load(&stop) && now_seconds() < deadline;
}

/* A short pause outside the locks, so that lock waiters get their turn. */
static void pause_briefly(void)
{
    struct timespec ts = {0, 20 * 1000};
    nanosleep(&ts, NULL);
}

static void *reader(void *arg)
{
    FILE *f = arg;
    while (keep_going()) {
        /* A fresh buffer each line: getline must allocate and grow it under the lock. */
        char *line = NULL;
        size_t cap = 0;
        ssize_t n = getline(&line, &cap, f);
        if (n < 0) {
            rewind(f);
        } else {
            if (line[0] != 'L' || line[n - 1] != '\n') {
                say("fork_stdio: a line came back corrupted\n");
                atomic_store(&failed, 1);
            }
            atomic_fetch_add(&lines_read, 1);
        }
        free(line);
        pause_briefly();
    }
    fclose(f);
    return NULL;
}

static void *flusher(void *arg)
{
    (void)arg;
    while (keep_going()) {
        fflush(NULL);
        atomic_fetch_add(&flushes, 1);
        pause_briefly();
    }
    return NULL;
}

static void *forker(void *arg)
{
    (void)arg;
    while (now_seconds() < deadline && !atomic_load(&failed)) {
        pid_t pid = fork();
        if (pid < 0) {
            atomic_store(&failed, 1);
            break;
        }
        if (pid == 0) {
            alarm(10);
            /* The child may use malloc and stdio. */
            void *p = malloc(100), *q = malloc(200000);
            char *s = NULL;
            if (!p || !q || asprintf(&s, "child %d", (int)getpid()) < 0)
                _exit(1);
            free(s);
            free(p);
            free(q);
            _exit(0);
        }
        int st = wait_child(pid, 20);
        if (!child_ok(st)) {
            say_status("fork_stdio", st);
            atomic_store(&failed, 1);
            break;
        }
        atomic_fetch_add(&forks_done, 1);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    require_preload();
    int readers = argc > 1 ? atoi(argv[1]) : 3;
    int forkers = argc > 2 ? atoi(argv[2]) : 2;
    double seconds = argc > 3 ? atof(argv[3]) : 3.0;
    alarm((unsigned)(seconds + 60)); /* watchdog: a deadlock ends in SIGALRM */

    /* A file of long lines (1 KiB .. 128 KiB). */
    const char *tmp = getenv("TMPDIR");
    snprintf(data_path, sizeof data_path, "%s/tamalloc-stdio-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemp(data_path);
    if (fd < 0) {
        perror("mkstemp");
        return 1;
    }
    FILE *out = fdopen(fd, "w");
    struct rng g = {5};
    for (int i = 0; i < 64; i++) {
        size_t len = KIB + (size_t)(rnd(&g) % (127 * KIB));
        fputc('L', out);
        for (size_t k = 1; k < len; k++)
            fputc('a' + (int)(k % 26), out);
        fputc('\n', out);
    }
    fclose(out);

    /* Every reader has its own FILE; the file itself is gone once they are open. */
    FILE *in[16];
    if (readers > 16)
        readers = 16;
    for (int i = 0; i < readers; i++) {
        in[i] = fopen(data_path, "r");
        if (!in[i]) {
            perror("fopen");
            unlink(data_path);
            return 1;
        }
    }
    unlink(data_path);

    deadline = now_seconds() + seconds;
    pthread_t r[16], fl, fk[16];
    for (int i = 0; i < readers; i++)
        pthread_create(&r[i], NULL, reader, in[i]);
    pthread_create(&fl, NULL, flusher, NULL);
    for (int i = 1; i < forkers && i < 16; i++)
        pthread_create(&fk[i], NULL, forker, NULL);
    forker(NULL);
    for (int i = 1; i < forkers && i < 16; i++)
        pthread_join(fk[i], NULL);
    atomic_store(&stop, 1);
    for (int i = 0; i < readers; i++)
        pthread_join(r[i], NULL);
    pthread_join(fl, NULL);
    if (atomic_load(&failed))
        return 1;
    printf("fork_stdio: %ld forks, %ld lines, %ld flushes\n", atomic_load(&forks_done),
           atomic_load(&lines_read), atomic_load(&flushes));
    return atomic_load(&forks_done) > 0 && atomic_load(&lines_read) > 0 ? 0 : 1;
}
