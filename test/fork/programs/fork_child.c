/*
 * The child of a fork always has a working allocator.
 *
 * Before each fork the main thread holds blocks of every size range from every entry
 * point, and two helper threads keep allocating and freeing (and hold blocks of their
 * own, handed to the main thread now and then). The child checks every block it
 * inherited, frees them all (including those of the vanished helpers), allocates and frees
 * heavily, starts threads of its own, forks a grandchild that does the same on a smaller
 * scale, and exits with _exit.
 *
 * usage: fork_child [forks]
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>

#include "common.h"

#define BLOCKS 96
#define HELPER_BLOCKS 64

struct block {
    unsigned char *p;
    size_t size;
    uint64_t seed;
};

static struct block blocks[BLOCKS];
static struct block handed[2][HELPER_BLOCKS]; /* helpers' blocks, stable while handed */
static pthread_mutex_t hand_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int stop;

static unsigned char *allocate(int how, size_t size)
{
    void *p = NULL;
    switch (how % 8) {
    case 0: return malloc(size);
    case 1: return calloc(1, size);
    case 2: return realloc(NULL, size);
    case 3: return posix_memalign(&p, 64, size) == 0 ? p : NULL;
    case 4: return aligned_alloc(256, size);
    case 5: return memalign(4096, size);
    case 6: return valloc(size);
    default: return reallocarray(NULL, 1, size);
    }
}

static void *helper(void *arg)
{
    int id = (int)(intptr_t)arg;
    struct rng g = {(uint64_t)id * 1000 + 1};
    unsigned char *mine[32] = {0};
    size_t sizes[32] = {0};
    while (!atomic_load(&stop)) {
        int k = (int)(rnd(&g) % 32);
        if (mine[k]) {
            if (!check(mine[k], sizes[k], (uint64_t)k))
                say("helper: block corrupted\n"), _exit(1);
            free(mine[k]);
            mine[k] = NULL;
        } else {
            sizes[k] = rnd_size(&g, rnd(&g) % 50 == 0 ? 3 * MIB : 20000);
            mine[k] = allocate((int)rnd(&g), sizes[k]);
            if (!mine[k])
                say("helper: allocation failed\n"), _exit(1);
            fill(mine[k], sizes[k], (uint64_t)k);
        }
        if (rnd(&g) % 256 == 0) {
            /* Refresh the blocks handed to the main thread (the child frees them). */
            pthread_mutex_lock(&hand_lock);
            for (int i = 0; i < HELPER_BLOCKS; i++) {
                struct block *b = &handed[id][i];
                if (b->p)
                    free(b->p);
                b->size = rnd_size(&g, 100000);
                b->seed = rnd(&g);
                b->p = allocate(i, b->size);
                fill(b->p, b->size, b->seed);
            }
            pthread_mutex_unlock(&hand_lock);
        }
    }
    for (int k = 0; k < 32; k++)
        free(mine[k]);
    return NULL;
}

static void *child_thread(void *arg)
{
    struct rng g = {(uint64_t)(intptr_t)arg};
    for (int i = 0; i < 20000; i++) {
        size_t n = rnd_size(&g, 70000);
        unsigned char *p = allocate(i, n);
        if (!p)
            return (void *)1;
        fill(p, n < 64 ? n : 64, 5);
        free(p);
    }
    return NULL;
}

/* Everything a child does; returns the exit status. */
static int child_work(int depth)
{
    struct rng g = {(uint64_t)getpid()};
    /* Inherited blocks: intact, and freeable (the grandchild inherits them freed). */
    for (int i = 0; i < BLOCKS && depth == 0; i++) {
        if (!check(blocks[i].p, blocks[i].size, blocks[i].seed)) {
            say("child: an inherited block is corrupted\n");
            return 1;
        }
    }
    for (int h = 0; h < 2 && depth == 0; h++)
        for (int i = 0; i < HELPER_BLOCKS; i++)
            if (handed[h][i].p && !check(handed[h][i].p, handed[h][i].size, handed[h][i].seed)) {
                say("child: a helper's block is corrupted\n");
                return 1;
            }
    /* Heavy use before freeing the inherited blocks, then free them all. */
    enum { SLOTS = 256 };
    static unsigned char *slot[SLOTS];
    static size_t slot_size[SLOTS];
    int rounds = depth == 0 ? 60000 : 10000;
    for (int i = 0; i < rounds; i++) {
        int k = (int)(rnd(&g) % SLOTS);
        if (slot[k]) {
            if (!check(slot[k], slot_size[k] < 256 ? slot_size[k] : 256, (uint64_t)k)) {
                say("child: own block corrupted\n");
                return 1;
            }
            if (rnd(&g) % 4 == 0) {
                size_t n = rnd_size(&g, rnd(&g) % 100 == 0 ? 6 * MIB : 200000);
                unsigned char *q = realloc(slot[k], n);
                if (!q) {
                    say("child: realloc failed\n");
                    return 1;
                }
                size_t keep = slot_size[k] < n ? slot_size[k] : n;
                if (!check(q, keep < 256 ? keep : 256, (uint64_t)k)) {
                    say("child: realloc lost data\n");
                    return 1;
                }
                slot[k] = q;
                slot_size[k] = n;
                fill(q, n < 256 ? n : 256, (uint64_t)k);
                continue;
            }
            free(slot[k]);
            slot[k] = NULL;
        } else {
            slot_size[k] = rnd_size(&g, rnd(&g) % 100 == 0 ? 6 * MIB : 200000);
            slot[k] = allocate((int)rnd(&g), slot_size[k]);
            if (!slot[k]) {
                say("child: allocation failed\n");
                return 1;
            }
            fill(slot[k], slot_size[k] < 256 ? slot_size[k] : 256, (uint64_t)k);
        }
        if (i == rounds / 2 && depth == 0) {
            for (int b = 0; b < BLOCKS; b++)
                free(blocks[b].p);
            for (int h = 0; h < 2; h++)
                for (int b = 0; b < HELPER_BLOCKS; b++)
                    free(handed[h][b].p);
        }
    }
    for (int k = 0; k < SLOTS; k++) {
        free(slot[k]);
        slot[k] = NULL;
    }
    /* Threads in the child. */
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        if (pthread_create(&t[i], NULL, child_thread, (void *)(intptr_t)(i + 1)) != 0) {
            say("child: pthread_create failed\n");
            return 1;
        }
    for (int i = 0; i < 2; i++) {
        void *r;
        pthread_join(t[i], &r);
        if (r) {
            say("child: allocation failed in a thread\n");
            return 1;
        }
    }
    malloc_trim(0);
    return 0;
}

int main(int argc, char **argv)
{
    require_preload();
    alarm(120);
    int forks = argc > 1 ? atoi(argv[1]) : 20;
    struct rng g = {42};
    pthread_t helpers[2];
    for (int h = 0; h < 2; h++)
        if (pthread_create(&helpers[h], NULL, helper, (void *)(intptr_t)h) != 0)
            return 1;
    for (int f = 0; f < forks; f++) {
        for (int i = 0; i < BLOCKS; i++) {
            free(blocks[i].p);
            size_t max = i % 24 == 0 ? 5 * MIB : i % 4 == 0 ? 500000 : 4000;
            blocks[i].size = rnd_size(&g, max);
            blocks[i].seed = rnd(&g);
            blocks[i].p = allocate(i, blocks[i].size);
            if (!blocks[i].p) {
                say("parent: allocation failed\n");
                return 1;
            }
            fill(blocks[i].p, blocks[i].size, blocks[i].seed);
        }
        pthread_mutex_lock(&hand_lock); /* the helpers' handed blocks are stable */
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            alarm(30);
            int rc = child_work(0);
            if (rc == 0) {
                /* A grandchild, forked from a child that has threads of its own now. */
                pid_t gp = fork();
                if (gp == 0) {
                    alarm(30);
                    _exit(child_work(1));
                }
                int st = wait_child(gp, 40);
                if (!child_ok(st)) {
                    say_status("grandchild", st);
                    rc = 1;
                }
            }
            _exit(rc);
        }
        pthread_mutex_unlock(&hand_lock);
        int st = wait_child(pid, 60);
        if (!child_ok(st)) {
            say_status("child", st);
            atomic_store(&stop, 1);
            return 1;
        }
        /* The parent's blocks are untouched by the child's frees. */
        for (int i = 0; i < BLOCKS; i++)
            if (!check(blocks[i].p, blocks[i].size, blocks[i].seed)) {
                say("parent: block corrupted after fork\n");
                return 1;
            }
    }
    atomic_store(&stop, 1);
    for (int h = 0; h < 2; h++)
        pthread_join(helpers[h], NULL);
    for (int i = 0; i < BLOCKS; i++)
        free(blocks[i].p);
    printf("fork_child: %d forks ok\n", forks);
    return 0;
}
