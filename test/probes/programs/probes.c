/*
 * Misuse probes: each case does one thing a correct program never does and reports what
 * happened when the allocator let it through. Run with an allocator preloaded:
 *
 *     probes list          the names of the cases, one a line
 *     probes <case>        runs one case
 *
 * Before the misuse a case prints `pointer 0x…` (the pointers an allocator that detects it
 * may name). Then, if the process is still alive:
 *
 *     undetected           the misuse went through                       exit 0
 *     safe                 a write after free, and malloc handed out     exit 0
 *                          only legitimate blocks
 *     FAIL <why>           malloc handed out a forged address, or a      exit 3
 *                          block that is still live
 *     unsupported          the allocator lacks the entry point           exit 4
 *
 * An allocator that detects the misuse ends the process (tamalloc: SIGABRT after one line
 * on stderr naming the pointer); the fork cases end the parent the way the child ended.
 * Uses only the standard names, so any malloc can be preloaded under it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define KIB ((size_t)1024)
#define MIB (1024 * KIB)

/* One size of each kind of block of the allocator: small (no header), mid (a run's block past
 * 8 KiB, in a process with few threads: no header either), medium (boundary tags), span (whole
 * pages, described in its chunk's table), huge (a mapping of its own). */
#define SMALL 48
#define MID (12 * KIB)
#define MEDIUM (48 * KIB)
#define SPAN (64 * KIB)
#define HUGE (4 * MIB)

/* Calls through volatile pointers, so that the compiler sees no misuse to fold away. */
static void *(*volatile do_malloc)(size_t) = malloc;
static void (*volatile do_free)(void *) = free;
static void *(*volatile do_realloc)(void *, size_t) = realloc;
static size_t (*volatile do_usable)(void *) = malloc_usable_size;

/* What a forged link points at: an address the program (the attacker) chose. */
static _Alignas(4096) char target[64 * KIB];
static char global_object[64];

static void say(const char *s)
{
    ssize_t w = write(STDOUT_FILENO, s, strlen(s));
    (void)w;
}

static void announce(void *a, void *b)
{
    char line[96];
    if (b)
        snprintf(line, sizeof line, "pointer %p %p\n", a, b);
    else
        snprintf(line, sizeof line, "pointer %p\n", a);
    say(line);
}

/* Spans serve blocks of SPAN's size once the process has had 8 threads with arenas at once. */
static pthread_barrier_t all_in;
static void *take_an_arena(void *arg)
{
    (void)arg;
    free(do_malloc(16));
    pthread_barrier_wait(&all_in);
    return NULL;
}
static size_t span_size(void)
{
    enum { T = 8 };
    pthread_t t[T];
    pthread_barrier_init(&all_in, NULL, T);
    for (int i = 0; i < T; i++)
        pthread_create(&t[i], NULL, take_an_arena, NULL);
    for (int i = 0; i < T; i++)
        pthread_join(t[i], NULL);
    return SPAN;
}

static int undetected(void)
{
    say("undetected\n");
    return 0;
}

static void *must_malloc(size_t n)
{
    void *p = do_malloc(n);
    if (!p) {
        say("error: malloc failed\n");
        exit(5);
    }
    memset(p, 0x5a, n);
    return p;
}

/* ---- double free ------------------------------------------------------------------- */

static int double_free(size_t n)
{
    void *p = must_malloc(n);
    announce(p, NULL);
    do_free(p);
    do_free(p);
    return undetected();
}
static int double_free_small(void) { return double_free(SMALL); }
static int double_free_medium(void) { return double_free(MEDIUM); }
static int double_free_mid(void) { return double_free(MID); }
static int double_free_span(void) { return double_free(span_size()); }
static int double_free_huge(void) { return double_free(HUGE); }

/* Other blocks come and go between the two frees (none of the freed block's class). */
static int double_free_small_delayed(void)
{
    void *p = must_malloc(SMALL);
    announce(p, NULL);
    do_free(p);
    void *keep[64];
    for (int i = 0; i < 64; i++)
        keep[i] = must_malloc(200 + 16 * (i % 4));
    for (int i = 0; i < 64; i++)
        do_free(keep[i]);
    do_free(p);
    return undetected();
}

/* Both frees by a thread that does not own the block. */
static void *free_twice(void *p)
{
    do_free(p);
    do_free(p);
    return NULL;
}

static int double_free_small_remote(void)
{
    void *p = must_malloc(SMALL);
    announce(p, NULL);
    pthread_t t;
    pthread_create(&t, NULL, free_twice, p);
    pthread_join(t, NULL);
    return undetected();
}

/* ---- invalid free ------------------------------------------------------------------ */

static int invalid_free_stack(void)
{
    char buf[64];
    void *volatile p = buf + 16;
    announce(p, NULL);
    do_free(p);
    return undetected();
}

static int invalid_free_global(void)
{
    void *volatile p = global_object + 16;
    announce(p, NULL);
    do_free(p);
    return undetected();
}

static int invalid_free_mmap(void)
{
    char *m = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return 5;
    void *p = m + 16;
    announce(p, NULL);
    do_free(p);
    return undetected();
}

/* A block of the C library's own malloc (mapped: big enough not to move the break), freed
 * through the preloaded free. With glibc itself preloaded nothing is misused. */
static int invalid_free_foreign_malloc(void)
{
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    void *(*libc_malloc)(size_t) = libc ? (void *(*)(size_t))dlsym(libc, "malloc") : NULL;
    if (!libc_malloc)
        return 5;
    void *p = libc_malloc(MIB);
    if (!p)
        return 5;
    announce(p, NULL);
    do_free(p);
    return undetected();
}

/* An address inside the allocator's own memory that was never handed out: far into the
 * run of a class nothing else uses. */
static int invalid_free_never_allocated(void)
{
    char *q = must_malloc(240);
    void *p = q + 240 * 40;
    announce(p, NULL);
    do_free(p);
    return undetected();
}

/* ---- interior and unaligned frees -------------------------------------------------- */

static int offset_free(size_t n, size_t off)
{
    char *q = must_malloc(n);
    void *p = q + off;
    announce(p, NULL);
    do_free(p);
    return undetected();
}
static int interior_free_small(void) { return offset_free(SMALL, 32); }
static int interior_free_medium(void) { return offset_free(MEDIUM, 4096); }
static int interior_free_mid(void) { return offset_free(MID, 4096); }
static int interior_free_span(void) { return offset_free(span_size(), 4096); }
static int interior_free_huge(void) { return offset_free(HUGE, 4096); }
static int unaligned_free_small(void) { return offset_free(SMALL, 1); }
static int unaligned_free_medium(void) { return offset_free(MEDIUM, 8); }
static int unaligned_free_span(void) { return offset_free(span_size(), 8); }
static int unaligned_free_huge(void) { return offset_free(HUGE, 8); }

/* ---- blocks of an exited thread ---------------------------------------------------- */

static void *alloc_and_free(void *arg)
{
    void *p = must_malloc((size_t)(uintptr_t)arg);
    do_free(p);
    return p;
}

/* A thread allocates and frees a block and exits; the main thread frees it again, into
 * an arena that no thread owns. */
static int exited_thread(size_t n)
{
    pthread_t t;
    void *p;
    pthread_create(&t, NULL, alloc_and_free, (void *)(uintptr_t)n);
    pthread_join(t, &p);
    announce(p, NULL);
    do_free(p);
    return undetected();
}
static int exited_thread_double_free_small(void) { return exited_thread(SMALL); }
static int exited_thread_double_free_medium(void) { return exited_thread(MEDIUM); }
static int exited_thread_double_free_span(void) { return exited_thread(span_size()); }
static int exited_thread_double_free_huge(void) { return exited_thread(HUGE); }

/* ---- fork: the child frees a block of the parent twice ----------------------------- */

static int fork_double_free(size_t n)
{
    void *p = must_malloc(n);
    announce(p, NULL);
    pid_t pid = fork();
    if (pid < 0)
        return 5;
    if (pid == 0) {
        do_free(p);
        do_free(p);
        _exit(undetected());
    }
    int status;
    if (waitpid(pid, &status, 0) != pid)
        return 5;
    if (WIFSIGNALED(status)) {
        signal(WTERMSIG(status), SIG_DFL);
        raise(WTERMSIG(status));
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 5;
}
static int fork_double_free_small(void) { return fork_double_free(SMALL); }
static int fork_double_free_medium(void) { return fork_double_free(MEDIUM); }
static int fork_double_free_span(void) { return fork_double_free(span_size()); }
static int fork_double_free_huge(void) { return fork_double_free(HUGE); }

/* ---- writes after free: malloc must never return an address the program chose -------- */

static int in_target(const void *p)
{
    return (const char *)p >= target && (const char *)p < target + sizeof target;
}

static void fill_with(void *p, size_t n, uintptr_t v)
{
    uintptr_t *w = p;
    for (size_t i = 0; i < n / sizeof *w; i++)
        w[i] = v;
}

/* Two blocks freed, the last one's every word overwritten with an address in `target`
 * (wherever an allocator keeps its link), then two mallocs of the same size. */
static int write_after_free(size_t n, size_t written)
{
    void *a = must_malloc(n);
    void *b = must_malloc(n);
    announce(b, NULL);
    do_free(a);
    do_free(b);
    fill_with(b, written, (uintptr_t)(target + 1024));
    void *x = do_malloc(n);
    void *y = do_malloc(n);
    if (in_target(x) || in_target(y)) {
        char line[96];
        snprintf(line, sizeof line, "FAIL malloc returned the forged address %p\n",
                 in_target(x) ? x : y);
        say(line);
        return 3;
    }
    say("safe\n");
    return 0;
}
static int write_after_free_small(void) { return write_after_free(SMALL, SMALL); }
static int write_after_free_medium(void) { return write_after_free(MEDIUM, MEDIUM); }
static int write_after_free_span(void) { return write_after_free(span_size(), SPAN); }
static int write_after_free_huge(void) { return write_after_free(HUGE, 64 * KIB); }

/* The link of a freed block pointed at a live block of the same class (an address the
 * program knows): malloc must not hand that block out a second time. */
static int write_after_free_small_live(void)
{
    void *blocks[8];
    for (int i = 0; i < 8; i++)
        blocks[i] = must_malloc(SMALL);
    void *live = blocks[5];
    announce(blocks[3], NULL);
    do_free(blocks[3]);
    fill_with(blocks[3], SMALL, (uintptr_t)live);
    void *x = do_malloc(SMALL);
    void *y = do_malloc(SMALL);
    if (x == live || y == live) {
        char line[96];
        snprintf(line, sizeof line, "FAIL malloc returned the live block %p\n", live);
        say(line);
        return 3;
    }
    say("safe\n");
    return 0;
}

/* ---- overflows and underflows into neighbouring memory ----------------------------- */

/* One byte past the usable end of a block whose neighbour is free (a fresh class: the
 * next block in address order is the next one handed out), then mallocs and frees. */
static int overflow_1_byte_small_free_neighbour(void)
{
    char *a = must_malloc(176);
    announce(a, NULL);
    a[do_usable(a)] ^= 0x40;
    void *x = do_malloc(176);
    void *y = do_malloc(176);
    void *z = do_malloc(176);
    do_free(a);
    do_free(x);
    do_free(y);
    do_free(z);
    return undetected();
}

/* One byte past the usable end of a block whose neighbour is live. */
static int overflow_1_byte_small_live_neighbour(void)
{
    char *a = must_malloc(SMALL);
    char *b = must_malloc(SMALL);
    announce(a, b);
    a[do_usable(a)] ^= 0x40;
    do_free(b);
    do_free(a);
    return undetected();
}

/* The same past a mid block whose neighbour is live. */
static int overflow_1_byte_mid_live_neighbour(void) {
  char *a = must_malloc(MID);
  char *b = must_malloc(MID);
  announce(a, b);
  a[do_usable(a)] ^= 0x40;
  do_free(b);
  do_free(a);
  return undetected();
}

/* One byte past the usable end of a medium block, into what follows it (the next
 * block's header in allocators with boundary tags). */
static int overflow_1_byte_medium(void)
{
    char *a = must_malloc(MEDIUM);
    char *b = must_malloc(MEDIUM);
    announce(a, b);
    a[do_usable(a)] ^= 0x40;
    do_free(b);
    do_free(a);
    return undetected();
}

/* The same past a span: the next span's first byte (spans have no header). */
static int overflow_1_byte_span(void)
{
    char *a = must_malloc(span_size());
    char *b = must_malloc(SPAN);
    announce(a, b);
    a[do_usable(a)] ^= 0x40;
    do_free(b);
    do_free(a);
    return undetected();
}

/* 16 bytes before a block: its own header where it has one. */
static int underflow(size_t n)
{
    char *keep = must_malloc(n);
    char *p = must_malloc(n);
    announce(p, NULL);
    memset(p - 16, 0x41, 16);
    do_free(p);
    do_free(keep);
    return undetected();
}
static int underflow_16_byte_small(void) { return underflow(SMALL); }
static int underflow_16_byte_medium(void) { return underflow(MEDIUM); }
static int underflow_16_byte_span(void) { return underflow(span_size()); }
static int underflow_16_byte_huge(void) { return underflow(HUGE); }

/* 16 bytes before a block of 16 bytes whose predecessor is free: they are its whole
 * content, where allocators keep links. Then mallocs. */
static int underflow_16_byte_small_free_neighbour(void)
{
    char *a = must_malloc(16);
    char *b = must_malloc(16);
    announce(a, b);
    do_free(a);
    memset(b - 16, 0x41, 16);
    void *x = do_malloc(16);
    void *y = do_malloc(16);
    void *z = do_malloc(16);
    do_free(x);
    do_free(y);
    do_free(z);
    do_free(b);
    return undetected();
}

/* ---- realloc and malloc_usable_size of freed blocks -------------------------------- */

static int realloc_freed(size_t n)
{
    void *p = must_malloc(n);
    announce(p, NULL);
    do_free(p);
    void *q = do_realloc(p, n + n / 2);
    (void)q;
    return undetected();
}
static int realloc_freed_small(void) { return realloc_freed(SMALL); }
static int realloc_freed_medium(void) { return realloc_freed(MEDIUM); }
static int realloc_freed_span(void) { return realloc_freed(span_size()); }
static int realloc_freed_huge(void) { return realloc_freed(HUGE); }

static int usable_size_freed(size_t n)
{
    void *p = must_malloc(n);
    announce(p, NULL);
    do_free(p);
    size_t u = do_usable(p);
    (void)u;
    return undetected();
}
static int usable_size_freed_small(void) { return usable_size_freed(SMALL); }
static int usable_size_freed_medium(void) { return usable_size_freed(MEDIUM); }
static int usable_size_freed_span(void) { return usable_size_freed(span_size()); }
static int usable_size_freed_huge(void) { return usable_size_freed(HUGE); }

/* ---- free_sized with a size the block was not allocated with ----------------------- */

static int free_sized_wrong(size_t n, size_t claimed)
{
    void (*fs)(void *, size_t) = (void (*)(void *, size_t))dlsym(RTLD_DEFAULT, "free_sized");
    if (!fs) {
        say("unsupported\n");
        return 4;
    }
    void *p = must_malloc(n);
    announce(p, NULL);
    fs(p, claimed);
    return undetected();
}
static int free_sized_small(void) { return free_sized_wrong(SMALL, 4096); }
static int free_sized_medium(void) { return free_sized_wrong(MEDIUM, MEDIUM / 4); }
static int free_sized_span(void) { return free_sized_wrong(span_size(), SPAN / 4); }
static int free_sized_huge(void) { return free_sized_wrong(HUGE, HUGE / 4); }

/* ---- the table --------------------------------------------------------------------- */

#define CASE(f) {#f, f}
static const struct {
    const char *name;
    int (*run)(void);
} cases[] = {
    CASE(double_free_small),
    CASE(double_free_medium),
    CASE(double_free_mid),
    CASE(double_free_span),
    CASE(double_free_huge),
    CASE(double_free_small_delayed),
    CASE(double_free_small_remote),
    CASE(invalid_free_stack),
    CASE(invalid_free_global),
    CASE(invalid_free_mmap),
    CASE(invalid_free_foreign_malloc),
    CASE(invalid_free_never_allocated),
    CASE(interior_free_small),
    CASE(interior_free_medium),
    CASE(interior_free_mid),
    CASE(interior_free_span),
    CASE(interior_free_huge),
    CASE(unaligned_free_small),
    CASE(unaligned_free_medium),
    CASE(unaligned_free_span),
    CASE(unaligned_free_huge),
    CASE(exited_thread_double_free_small),
    CASE(exited_thread_double_free_medium),
    CASE(exited_thread_double_free_span),
    CASE(exited_thread_double_free_huge),
    CASE(fork_double_free_small),
    CASE(fork_double_free_medium),
    CASE(fork_double_free_span),
    CASE(fork_double_free_huge),
    CASE(write_after_free_small),
    CASE(write_after_free_medium),
    CASE(write_after_free_span),
    CASE(write_after_free_huge),
    CASE(write_after_free_small_live),
    CASE(overflow_1_byte_small_free_neighbour),
    CASE(overflow_1_byte_small_live_neighbour),
    CASE(overflow_1_byte_mid_live_neighbour),
    CASE(overflow_1_byte_medium),
    CASE(overflow_1_byte_span),
    CASE(underflow_16_byte_small),
    CASE(underflow_16_byte_small_free_neighbour),
    CASE(underflow_16_byte_medium),
    CASE(underflow_16_byte_span),
    CASE(underflow_16_byte_huge),
    CASE(realloc_freed_small),
    CASE(realloc_freed_medium),
    CASE(realloc_freed_span),
    CASE(realloc_freed_huge),
    CASE(usable_size_freed_small),
    CASE(usable_size_freed_medium),
    CASE(usable_size_freed_span),
    CASE(usable_size_freed_huge),
    CASE(free_sized_small),
    CASE(free_sized_medium),
    CASE(free_sized_span),
    CASE(free_sized_huge),
};

int main(int argc, char **argv)
{
    /* Detected misuse ends in abort(): no core files. */
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none);
    setvbuf(stdout, NULL, _IONBF, 0);

    size_t n = sizeof cases / sizeof cases[0];
    if (argc == 2 && strcmp(argv[1], "list") == 0) {
        for (size_t i = 0; i < n; i++)
            printf("%s\n", cases[i].name);
        return 0;
    }
    if (argc == 2)
        for (size_t i = 0; i < n; i++)
            if (strcmp(argv[1], cases[i].name) == 0)
                return cases[i].run();
    fprintf(stderr, "usage: %s list | <case>\n", argv[0]);
    return 2;
}
