/* Helpers shared by the tamalloc tests; see tatest.h. */
#include "tatest.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <tamalloc.h>

size_t tt_opaque(size_t v)
{
    volatile size_t x = v;
    return x;
}

void *tt_opaque_ptr(void *p)
{
    void *volatile x = p;
    return x;
}

/* ---- patterns ---------------------------------------------------------------------- */

static inline uint64_t splitmix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

uint64_t tt_mix(uint64_t a, uint64_t b)
{
    return splitmix(splitmix(a) ^ (b * 0xD6E8FEB86659FD93ull + 0x632BE59BD9B4E019ull));
}

/* Word i of the pattern: cheap, different for every (seed, i), never all zero bytes. */
static inline uint64_t pattern_word(uint64_t seed, size_t i)
{
    uint64_t x = seed ^ ((uint64_t)i * 0x9E3779B97F4A7C15ull);
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 32;
    return x | 0x0101010101010101ull;
}

uint8_t tt_pattern_byte(uint64_t seed, size_t offset)
{
    return (uint8_t)(pattern_word(seed, offset >> 3) >> ((offset & 7) * 8));
}

void tt_fill_range(void *block, size_t from, size_t n, uint64_t seed)
{
    uint8_t *p = block;
    size_t o = from, end = from + n;
    while (o < end && (o & 7)) {
        p[o] = tt_pattern_byte(seed, o);
        o++;
    }
    for (; o + 8 <= end; o += 8) {
        uint64_t w = pattern_word(seed, o >> 3);
        memcpy(p + o, &w, 8);
    }
    for (; o < end; o++)
        p[o] = tt_pattern_byte(seed, o);
}

size_t tt_check_range(const void *block, size_t from, size_t n, uint64_t seed)
{
    const uint8_t *p = block;
    size_t o = from, end = from + n;
    while (o < end && (o & 7)) {
        if (p[o] != tt_pattern_byte(seed, o))
            return o;
        o++;
    }
    for (; o + 8 <= end; o += 8) {
        uint64_t w = pattern_word(seed, o >> 3);
        if (memcmp(p + o, &w, 8) != 0)
            break;
    }
    for (; o < end; o++)
        if (p[o] != tt_pattern_byte(seed, o))
            return o;
    return SIZE_MAX;
}

size_t tt_check_byte(const void *block, size_t n, uint8_t c)
{
    const uint8_t *p = block;
    size_t o = 0;
    uint64_t w;
    memset(&w, c, sizeof w);
    for (; o + 8 <= n; o += 8) {
        if (memcmp(p + o, &w, 8) != 0)
            break;
    }
    for (; o < n; o++)
        if (p[o] != c)
            return o;
    return SIZE_MAX;
}

size_t tt_check_zero(const void *p, size_t n)
{
    return tt_check_byte(p, n, 0);
}

/* ---- random numbers ---------------------------------------------------------------- */

void tt_rng_seed(tt_rng *r, uint64_t seed)
{
    r->s = splitmix(seed ^ 0x5DEECE66Dull);
}

uint64_t tt_rand(tt_rng *r)
{
    r->s += 0x9E3779B97F4A7C15ull;
    uint64_t x = r->s;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

size_t tt_rand_between(tt_rng *r, size_t lo, size_t hi)
{
    if (hi <= lo)
        return lo;
    return lo + (size_t)(tt_rand(r) % (uint64_t)(hi - lo + 1));
}

/* ---- size tables ------------------------------------------------------------------- */

#define MAX_TABLE 512
static size_t small_sizes[MAX_TABLE], medium_sizes[MAX_TABLE], huge_sizes[MAX_TABLE];
static size_t n_small, n_medium, n_huge;
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void add_size(size_t *t, size_t *n, size_t lo, size_t hi, size_t s)
{
    if (s < lo || s > hi || *n >= MAX_TABLE)
        return;
    for (size_t i = 0; i < *n; i++)
        if (t[i] == s)
            return;
    t[(*n)++] = s;
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

static void build_tables(void)
{
    const size_t s_lo = 1, s_hi = TT_SMALL_MAX;
    for (size_t s = 1; s <= 160; s++)
        add_size(small_sizes, &n_small, s_lo, s_hi, s);
    for (size_t p = 128; p <= TT_SMALL_MAX; p *= 2) {
        /* Powers of two and the quarter steps between them, each with its neighbours. */
        for (size_t q = 4; q < 8; q++) {
            size_t b = p * q / 4;
            add_size(small_sizes, &n_small, s_lo, s_hi, b - 1);
            add_size(small_sizes, &n_small, s_lo, s_hi, b);
            add_size(small_sizes, &n_small, s_lo, s_hi, b + 1);
        }
    }
    for (size_t s = 167; s <= TT_SMALL_MAX; s += 97)
        add_size(small_sizes, &n_small, s_lo, s_hi, s);
    add_size(small_sizes, &n_small, s_lo, s_hi, TT_SMALL_MAX);
    qsort(small_sizes, n_small, sizeof(size_t), cmp_size);

    const size_t m_lo = TT_SMALL_MAX + 1, m_hi = TT_MEDIUM_MAX;
    for (size_t p = 8 * TT_KIB; p <= TT_MEDIUM_MAX; p *= 2) {
        for (size_t q = 4; q < 8; q += 2) {
            size_t b = p * q / 4;
            add_size(medium_sizes, &n_medium, m_lo, m_hi, b - 1);
            add_size(medium_sizes, &n_medium, m_lo, m_hi, b);
            add_size(medium_sizes, &n_medium, m_lo, m_hi, b + 1);
        }
    }
    static const size_t odd_medium[] = {8200,   9000,   10000,  20000,  40000,  70000,
                                        100000, 200000, 300000, 500000, 600000, 900000,
                                        TT_MEDIUM_MAX - 4097, TT_MEDIUM_MAX - 4096,
                                        TT_MEDIUM_MAX - 16};
    for (size_t i = 0; i < sizeof odd_medium / sizeof *odd_medium; i++)
        add_size(medium_sizes, &n_medium, m_lo, m_hi, odd_medium[i]);
    qsort(medium_sizes, n_medium, sizeof(size_t), cmp_size);

    const size_t h_lo = TT_MEDIUM_MAX + 1, h_hi = TT_SANITIZER ? 16 * TT_MIB + 1 : 40 * TT_MIB;
    static const size_t some_huge[] = {
        TT_MIB + 1,      TT_MIB + 4096,    TT_MIB + 65536,  3 * TT_MIB / 2,
        2 * TT_MIB - 1,  2 * TT_MIB,       2 * TT_MIB + 1,  3 * TT_MIB + 5,
        4 * TT_MIB,      5 * TT_MIB + 123, 8 * TT_MIB - 1,  8 * TT_MIB,
        8 * TT_MIB + 1,  12 * TT_MIB,      16 * TT_MIB + 1, 24 * TT_MIB + 7,
        40 * TT_MIB};
    for (size_t i = 0; i < sizeof some_huge / sizeof *some_huge; i++)
        add_size(huge_sizes, &n_huge, h_lo, h_hi, some_huge[i]);
    qsort(huge_sizes, n_huge, sizeof(size_t), cmp_size);
}

const char *tt_range_name(enum tt_range r)
{
    switch (r) {
    case TT_RANGE_SMALL: return "small";
    case TT_RANGE_MEDIUM: return "medium";
    case TT_RANGE_HUGE: return "huge";
    default: return "?";
    }
}

size_t tt_range_sizes(enum tt_range r, const size_t **out)
{
    pthread_once(&tables_once, build_tables);
    switch (r) {
    case TT_RANGE_SMALL: *out = small_sizes; return n_small;
    case TT_RANGE_MEDIUM: *out = medium_sizes; return n_medium;
    default: *out = huge_sizes; return n_huge;
    }
}

/* Log-uniform in [lo, hi]. */
static size_t log_uniform(tt_rng *g, size_t lo, size_t hi)
{
    int bits_lo = 63 - __builtin_clzll(lo), bits_hi = 63 - __builtin_clzll(hi);
    int b = (int)tt_rand_between(g, (size_t)bits_lo, (size_t)bits_hi);
    size_t a = (size_t)1 << b, z = ((size_t)1 << (b + 1)) - 1;
    if (a < lo)
        a = lo;
    if (z > hi)
        z = hi;
    return tt_rand_between(g, a, z);
}

size_t tt_range_random(enum tt_range r, tt_rng *g)
{
    switch (r) {
    case TT_RANGE_SMALL: return log_uniform(g, 1, TT_SMALL_MAX);
    case TT_RANGE_MEDIUM: return log_uniform(g, TT_SMALL_MAX + 1, TT_MEDIUM_MAX);
    default: return log_uniform(g, TT_MEDIUM_MAX + 1, 8 * TT_MIB);
    }
}

size_t tt_range_typical(enum tt_range r)
{
    switch (r) {
    case TT_RANGE_SMALL: return 100;
    case TT_RANGE_MEDIUM: return 100000;
    default: return 3 * TT_MIB + 100;
    }
}

/* ---- entry points ------------------------------------------------------------------ */

const char *tt_entry_name(enum tt_entry e)
{
    static const char *const names[] = {"malloc",        "calloc",  "realloc",
                                        "reallocarray",  "posix_memalign",
                                        "aligned_alloc", "memalign", "valloc", "pvalloc"};
    return (unsigned)e < TT_ENTRY_COUNT ? names[e] : "?";
}

bool tt_entry_takes_alignment(enum tt_entry e)
{
    return e == TT_POSIX_MEMALIGN || e == TT_ALIGNED_ALLOC || e == TT_MEMALIGN;
}

void *tt_alloc(enum tt_entry e, size_t size, size_t align)
{
    switch (e) {
    case TT_MALLOC: return ta_malloc(size);
    case TT_CALLOC: return ta_calloc(1, size);
    case TT_REALLOC: return ta_realloc(NULL, size);
    case TT_REALLOCARRAY: return ta_reallocarray(NULL, size, 1);
    case TT_POSIX_MEMALIGN: {
        void *p = NULL;
        int rc = ta_posix_memalign(&p, align, size);
        if (rc != 0) {
            errno = rc;
            return NULL;
        }
        return p;
    }
    case TT_ALIGNED_ALLOC: return ta_aligned_alloc(align, size);
    case TT_MEMALIGN: return ta_memalign(align, size);
    case TT_VALLOC: return ta_valloc(size);
    case TT_PVALLOC: return ta_pvalloc(size);
    default: errno = EINVAL; return NULL;
    }
}

static size_t round_pow2(size_t a)
{
    size_t r = 1;
    while (r < a)
        r <<= 1;
    return r;
}

size_t tt_required_alignment(enum tt_entry e, size_t align)
{
    switch (e) {
    case TT_POSIX_MEMALIGN:
    case TT_ALIGNED_ALLOC:
    case TT_MEMALIGN: {
        size_t a = round_pow2(align);
        return a < 16 ? 16 : a;
    }
    case TT_VALLOC:
    case TT_PVALLOC: return tt_page_size();
    default: return 16;
    }
}

size_t tt_required_usable(enum tt_entry e, size_t size)
{
    if (e == TT_PVALLOC) {
        size_t pg = tt_page_size();
        return (size + pg - 1) / pg * pg;
    }
    return size;
}

/* ---- process ----------------------------------------------------------------------- */

size_t tt_page_size(void)
{
    static size_t pg;
    size_t v = __atomic_load_n(&pg, __ATOMIC_RELAXED);
    if (!v) {
        /* The allocator's page: the kernel's, or a larger one TAMALLOC_CONF's page_kb asks
         * for (the api tier is run so as well). */
        size_t len = sizeof v;
        if (ta_mallctl("arenas.page", &v, &len, NULL, 0) != 0 || v == 0)
            v = (size_t)sysconf(_SC_PAGESIZE);
        __atomic_store_n(&pg, v, __ATOMIC_RELAXED);
    }
    return v;
}

long tt_rss_kib(void)
{
    return tt_status_kib("VmRSS:");
}

long tt_status_kib(const char *field)
{
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    const char *l = strstr(buf, field);
    return l ? strtol(l + strlen(field), NULL, 10) : -1;
}

double tt_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double tt_env_seconds(const char *name, double def)
{
    const char *v = getenv(name);
    if (v && *v) {
        double d = strtod(v, NULL);
        if (d > 0)
            return d;
    }
    return def;
}

size_t tt_strip_emulator_lines(char *text, size_t len)
{
    static const char mark[] = "qemu: uncaught target signal ";
    char *line = text;
    while (line < text + len) {
        char *nl = memchr(line, '\n', (size_t)(text + len - line));
        char *next = nl ? nl + 1 : text + len;
        if ((size_t)(next - line) >= sizeof mark - 1 && memcmp(line, mark, sizeof mark - 1) == 0) {
            memmove(line, next, (size_t)(text + len - next) + 1);
            len -= (size_t)(next - line);
        } else {
            line = next;
        }
    }
    return len;
}

void tt_no_core(void)
{
    struct rlimit rl = {0, 0};
    setrlimit(RLIMIT_CORE, &rl);
}

void tt_format_ptr(const void *p, char *buf, size_t n)
{
    snprintf(buf, n, "%p", p);
}

int tt_wait_timeout(pid_t pid, double timeout)
{
    double end = tt_now() + timeout;
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r < 0 && errno != EINTR)
            return -1;
        if (tt_now() > end) {
            kill(pid, SIGKILL);
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
            return -1;
        }
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

const char *tt_describe_status(int status, char *buf, size_t n)
{
    if (status == -1)
        snprintf(buf, n, "timed out (killed)");
    else if (WIFEXITED(status))
        snprintf(buf, n, "exited with %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, n, "killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, n, "status 0x%x", status);
    return buf;
}

/* ---- files ------------------------------------------------------------------------- */

char *tt_make_tempdir(const char *tag)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    size_t n = strlen(base) + strlen(tag) + 32;
    char *path = malloc(n);
    if (!path)
        return NULL;
    snprintf(path, n, "%s/tamalloc-%s-XXXXXX", base, tag);
    if (!mkdtemp(path)) {
        free(path);
        return NULL;
    }
    return path;
}

static int remove_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void tt_remove_tree(const char *path)
{
    if (path)
        nftw(path, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

int tt_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(data, 1, len, f);
    int rc = fclose(f);
    return (w == len && rc == 0) ? 0 : -1;
}

void tt_first_difference(const char *a, const char *b, char *buf, size_t n)
{
    size_t line = 1, i = 0;
    const char *la = a, *lb = b;
    while (a[i] && a[i] == b[i]) {
        if (a[i] == '\n') {
            line++;
            la = a + i + 1;
            lb = b + i + 1;
        }
        i++;
    }
    if (!a[i] && !b[i]) {
        snprintf(buf, n, "no difference");
        return;
    }
    int ea = (int)strcspn(la, "\n"), eb = (int)strcspn(lb, "\n");
    if (ea > 120)
        ea = 120;
    if (eb > 120)
        eb = 120;
    snprintf(buf, n, "line %zu: \"%.*s\" vs \"%.*s\"", line, ea, la, eb, lb);
}
