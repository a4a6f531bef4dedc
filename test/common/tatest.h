/*
 * Helpers shared by the tamalloc test programs: byte patterns, size tables, a table of
 * the allocation entry points, process measurements and a child-process runner.
 *
 * The helpers themselves allocate only with the system allocator (or not at all); the
 * blocks under test come from the ta_ API.
 */
#ifndef TATEST_H
#define TATEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define TT_KIB ((size_t)1024)
#define TT_MIB (1024 * TT_KIB)

/* The size ranges of the allocator: small classes, medium blocks, huge mappings. */
#define TT_SMALL_MAX (8 * TT_KIB)
#define TT_MEDIUM_MAX (1 * TT_MIB)

/* Sanitizer builds, and tests run by an emulator (the cross build's, under qemu-user), run
 * slower and hold memory that is not the allocator's (shadow memory; the emulator's own
 * per-thread state and code cache): tests that count resident memory or make tens of
 * thousands of threads scale down and leave those counts out. */
#if defined(TATEST_SANITIZER) || defined(TATEST_EMULATED)
#define TT_SANITIZER 1
#else
#define TT_SANITIZER 0
#endif

/* Linked to the hardened library (libtamalloc_api_secure.a): small blocks keep their last
 * 8 bytes for a canary, so a request takes the class of its size + 8. */
#ifdef TATEST_SECURE
#define TT_SECURE 1
#else
#define TT_SECURE 0
#endif

/* Hides a value from the optimiser (no folding, no warnings on impossible sizes). */
size_t tt_opaque(size_t v);
void *tt_opaque_ptr(void *p);

/* ---- patterns ---------------------------------------------------------------------- */

uint64_t tt_mix(uint64_t a, uint64_t b);
/* The byte at `offset` of a block whose pattern is `seed`. */
uint8_t tt_pattern_byte(uint64_t seed, size_t offset);
/* Writes bytes [from, from + n) of the pattern `seed` into block `p`. */
void tt_fill_range(void *p, size_t from, size_t n, uint64_t seed);
/* Checks bytes [from, from + n); returns the offset of the first wrong byte or SIZE_MAX. */
size_t tt_check_range(const void *p, size_t from, size_t n, uint64_t seed);
static inline void tt_fill(void *p, size_t n, uint64_t seed) { tt_fill_range(p, 0, n, seed); }
static inline size_t tt_check(const void *p, size_t n, uint64_t seed)
{
    return tt_check_range(p, 0, n, seed);
}
/* Returns the offset of the first non-zero byte or SIZE_MAX. */
size_t tt_check_zero(const void *p, size_t n);
/* Returns the offset of the first byte different from `c` or SIZE_MAX. */
size_t tt_check_byte(const void *p, size_t n, uint8_t c);

/* ---- random numbers ---------------------------------------------------------------- */

typedef struct {
    uint64_t s;
} tt_rng;
void tt_rng_seed(tt_rng *r, uint64_t seed);
uint64_t tt_rand(tt_rng *r);
/* Uniform in [lo, hi]. */
size_t tt_rand_between(tt_rng *r, size_t lo, size_t hi);

/* ---- size tables ------------------------------------------------------------------- */

enum tt_range { TT_RANGE_SMALL, TT_RANGE_MEDIUM, TT_RANGE_HUGE, TT_RANGE_COUNT };
const char *tt_range_name(enum tt_range r);
/* A table of interesting sizes of range `r` (boundaries, their neighbours, odd sizes).
 * Returns the number of entries; *out points to static storage. */
size_t tt_range_sizes(enum tt_range r, const size_t **out);
/* One size of range r chosen by the generator. */
size_t tt_range_random(enum tt_range r, tt_rng *g);
/* A typical size of range r. */
size_t tt_range_typical(enum tt_range r);

/* ---- entry points ------------------------------------------------------------------ */

enum tt_entry {
    TT_MALLOC,
    TT_CALLOC,
    TT_REALLOC,
    TT_REALLOCARRAY,
    TT_POSIX_MEMALIGN,
    TT_ALIGNED_ALLOC,
    TT_MEMALIGN,
    TT_VALLOC,
    TT_PVALLOC,
    TT_ENTRY_COUNT
};
const char *tt_entry_name(enum tt_entry e);
bool tt_entry_takes_alignment(enum tt_entry e);
/* Allocates `size` bytes through entry point e (alignment used by the aligned ones).
 * On failure returns NULL with errno set (posix_memalign's result is copied to errno). */
void *tt_alloc(enum tt_entry e, size_t size, size_t align);
/* The alignment a block from tt_alloc(e, size, align) must have. */
size_t tt_required_alignment(enum tt_entry e, size_t align);
/* The usable size a block from tt_alloc(e, size, align) must at least have. */
size_t tt_required_usable(enum tt_entry e, size_t size);

/* ---- process ----------------------------------------------------------------------- */

/* The allocator's page size (mallctl's arenas.page): the kernel's unless a test asks for more. */
size_t tt_page_size(void);
/* VmRSS of this process in KiB, or -1. */
long tt_rss_kib(void);
/* A figure in KiB from /proc/self/status, by its field ("VmPTE:"); -1 if absent. */
long tt_status_kib(const char *field);
/* Monotonic seconds. */
double tt_now(void);
/* Seconds from the environment variable `name` if set and positive, else `def`. */
double tt_env_seconds(const char *name, double def);
/* Removes from text (len bytes, NUL-terminated) the line an emulator adds to stderr when the
 * program it runs dies of a signal ("qemu: uncaught target signal 6 (Aborted) - core
 * dumped"), so that tests read what the allocator wrote. Returns the new length. */
size_t tt_strip_emulator_lines(char *text, size_t len);
/* Disables core files for this process (tests that abort on purpose). */
void tt_no_core(void);
/* Formats a pointer exactly like printf's %p. */
void tt_format_ptr(const void *p, char *buf, size_t n);

/* Waits for `pid` at most `timeout` seconds; kills it (SIGKILL) on timeout.
 * Returns the wait status, or -1 on timeout. */
int tt_wait_timeout(pid_t pid, double timeout);
/* "exited with 3", "killed by signal 6 (Aborted)", "timed out", ... */
const char *tt_describe_status(int status, char *buf, size_t n);

/* Runs argv (searched in PATH) in `cwd` (or the current directory), with stdin from
 * `stdin_path` (or /dev/null), the current environment minus LD_PRELOAD plus `env`
 * (a NULL-terminated list of NAME=VALUE, may be NULL), in its own process group,
 * capturing stdout and stderr. After `timeout` seconds the whole group is killed. */
struct tt_run {
    int status;     /* wait status; -1 when timed out */
    bool timed_out;
    char *out;      /* NUL-terminated, system malloc */
    size_t out_len;
    char *err;
    size_t err_len;
    double seconds;
};
int tt_run(struct tt_run *r, char *const argv[], char *const env[], const char *cwd,
           const char *stdin_path, double timeout);
void tt_run_release(struct tt_run *r);
/* True when the run exited normally with status 0. */
bool tt_run_ok(const struct tt_run *r);

/* Creates a fresh temporary directory; returns a system-malloc'd path. */
char *tt_make_tempdir(const char *tag);
/* Removes a directory tree (best effort). */
void tt_remove_tree(const char *path);
/* Writes `len` bytes to `path`; returns 0 on success. */
int tt_write_file(const char *path, const void *data, size_t len);
/* Describes the first difference of two texts ("line 12: 'a' vs 'b'"). */
void tt_first_difference(const char *a, const char *b, char *buf, size_t n);

#endif /* TATEST_H */
