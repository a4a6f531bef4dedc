/*
 * probe - a short health check of whatever allocator is preloaded, run once per
 * allocator before the suite spends time on it. Reports which shared object each
 * allocation function resolves to (so a column really measures the library it names)
 * and exercises the basic contracts: sizes from 1 byte to 64 MiB, calloc zeroing,
 * realloc keeping contents, alignment, malloc_usable_size, and blocks freed by a thread
 * other than the one that allocated them.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int bad;

/* A failed check prints one "problem" line and makes the probe fail. */
#define CHECK(cond, ...)                                         \
    do {                                                         \
        if (!(cond)) {                                           \
            printf("problem ");                                  \
            printf(__VA_ARGS__);                                 \
            printf("\n");                                        \
            bad = 1;                                             \
        }                                                        \
    } while (0)

static void where(const char *name, void *fn)
{
    Dl_info info;
    if (fn && dladdr(fn, &info) && info.dli_fname)
        printf("symbol %s %s\n", name, info.dli_fname);
    else
        printf("symbol %s ?\n", name);
}

enum { HANDOFF = 4096 };
static void *handoff[HANDOFF];

static void *remote_free(void *arg)
{
    (void)arg;
    for (int i = 0; i < HANDOFF; i++) {
        unsigned char *p = handoff[i];
        CHECK(p[0] == (unsigned char)i, "block %d changed before its remote free", i);
        free(p);
    }
    return NULL;
}

int main(void)
{
    where("malloc", (void *)malloc);
    where("free", (void *)free);
    where("calloc", (void *)calloc);
    where("realloc", (void *)realloc);
    where("posix_memalign", (void *)posix_memalign);
    where("aligned_alloc", (void *)aligned_alloc);
    where("malloc_usable_size", (void *)malloc_usable_size);
    fflush(stdout);

    for (size_t n = 2; n <= ((size_t)64 << 20); n = n * 3 / 2 + 1) {
        unsigned char *p = malloc(n);
        CHECK(p != NULL, "malloc(%zu) returned NULL", n);
        if (!p)
            break;
        p[0] = 0x5a;
        p[n - 1] = 0xa5;
        CHECK(malloc_usable_size(p) >= n, "malloc_usable_size below the request of %zu", n);
        unsigned char *q = realloc(p, n * 2);
        CHECK(q != NULL && q[0] == 0x5a && q[n - 1] == 0xa5, "realloc(%zu to %zu) lost contents", n, n * 2);
        free(q ? q : p);
    }
    for (size_t n = 1; n <= 1 << 20; n *= 4) {
        unsigned char *p = calloc(n, 3);
        CHECK(p != NULL, "calloc(%zu, 3) returned NULL", n);
        for (size_t i = 0; p && i < n * 3; i += 61)
            if (p[i]) {
                CHECK(0, "calloc(%zu, 3) memory not zero", n);
                break;
            }
        free(p);
    }
    for (size_t al = 16; al <= 65536; al *= 4) {
        void *p = NULL;
        CHECK(posix_memalign(&p, al, 100) == 0 && ((uintptr_t)p % al) == 0,
              "posix_memalign(%zu, 100) gave %p", al, p);
        free(p);
        p = aligned_alloc(al, al * 2);
        CHECK(p != NULL && ((uintptr_t)p % al) == 0, "aligned_alloc(%zu, %zu) gave %p", al, al * 2, p);
        free(p);
    }
    for (int i = 0; i < HANDOFF; i++) {
        unsigned char *p = malloc(16 + (size_t)(i % 200));
        CHECK(p != NULL, "malloc(%d) returned NULL", 16 + i % 200);
        if (!p)
            return 3;
        p[0] = (unsigned char)i;
        handoff[i] = p;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, remote_free, NULL) != 0 || pthread_join(t, NULL) != 0)
        CHECK(0, "could not run a second thread");
    free(NULL);
    printf("verify %s\n", bad ? "FAILED" : "ok");
    return bad ? 3 : 0;
}
