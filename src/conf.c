/*
 * conf.c — settings from the environment, and the report at exit.
 *
 *   TAMALLOC_CONF="key:value,key:value"
 *
 *   stats:BOOL          track requested sizes (internal fragmentation; see stats.c)
 *   stats_print:BOOL    print the statistics report to stderr at exit (turns stats on)
 *   stats_format:FMT    text (default) or json
 *   decay_ms:N          how long free memory stays resident before it goes back (0..600000)
 *   dirty_max_kb:N      free chunks and run slots all arenas keep resident at most (0..4194304)
 *   run_threshold:N     blocks of a small class an arena allocates within a second before
 *                       the class gets runs of its own (0..65535; below, its blocks come
 *                       from the arena's medium heap, until it holds a run's worth of
 *                       them, 64 KiB, whatever N; 0 or 1: runs from the first block)
 *   span_min_kb:N       once the process has had 8 threads at once, requests from N KiB to
 *                       64 pages (256 KiB) are spans of whole pages in a heap all threads
 *                       share (span.c; 8..32, default 8, at least 2 pages; 0: none, the
 *                       thread's medium heap serves them)
 *   huge_cache_mb:N     resident bytes of freed huge spans kept for reuse (0..1048576);
 *                       unset, 64 or what is live in huge blocks (up to 8 times), the more
 *   huge_pages:BOOL     transparent huge pages for memory written through: huge blocks
 *                       (huge.c), and the halves huge_halves allows (small.c)
 *   huge_batch:BOOL     drop the pages a sparse huge span gathered in one call for many ranges
 *                       (process_madvise; default true: docs/design.md, "Over that share")
 *   huge_fresh:BOOL     with huge_pages, huge pages up front on a fresh huge block of a size
 *                       known to be written through, and a span with them drops the excess a
 *                       smaller block leaves (unset: true, but false where the host reclaims
 *                       the memory the kernel leaves free; huge.c, fresh_huge_costly)
 *   huge_halves:BOOL    with huge_pages, each 2 MiB half of a small chunk made one huge
 *                       page once dense (small.c; unset: only where the kernel's mode is
 *                       `always`; docs/design.md says why)
 *   background_thread:BOOL  a thread returns free memory on time once threads have exited
 *                       (default true in the replacement library; see background.c)
 *   lazy_commit:BOOL    chunks commit their pages as they are used, not whole when mapped
 *                       (default: when the kernel never overcommits; see chunk.c)
 *   stats_log:PATH      append one JSON line of totals to PATH every stats_interval_ms
 *                       (turns stats on; the line is written from a slow path)
 *   stats_interval_ms:N sampling interval of stats_log (1..3600000, default 100)
 *
 * For tests, not a user setting:
 *   page_kb:N           work as if pages were N KiB (8, 16, 32 or 64; at least the kernel's),
 *                       so that a machine with 4 KiB pages behaves as one with larger pages
 *
 * BOOL is true/false/1/0/yes/no/on/off. The variable is read once, on the first slow path,
 * by walking environ: no getenv, no allocation. An unknown key or a bad value prints one
 * line to stderr and is ignored; nothing else changes. So is huge_halves:true together with
 * huge_pages:false, which would do nothing.
 *
 * Bottom layer (docs/design.md, "Layers"): every setting is a plain variable defined here,
 * which the modules it concerns read; parsing one calls no other file. The statistics
 * switch is one of them (ta_stats_switch: ta_stats_on and the fast path's limit);
 * stats.c prints the report at exit.
 */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

extern char **environ;

/* ------------------------------------------------------------------ the settings */
uint64_t ta_decay_ms = 200;                  /* decay_ms (purge.c, huge.c, background.c) */
size_t ta_dirty_max = (size_t)32 << 20;      /* dirty_max_kb (dirty.c) */
uint32_t ta_run_threshold = 256;             /* run_threshold (alloc.c) */
uint32_t ta_conf_span_min_kb = 8;            /* span_min_kb (span.c, ta_span_init) */
/* huge_cache_mb (huge.c). The hardened build keeps no freed span: a write after free faults.
 * Unset, the cache may hold more, as much as the program has live in huge blocks (huge.c,
 * cache_limit); set, it is the limit. */
size_t ta_huge_cache_limit = TA_SECURE ? 0 : (size_t)64 << 20;
bool ta_huge_cache_grows = !TA_SECURE;
bool ta_huge_pages = true;                   /* huge_pages (huge.c, small.c) */
bool ta_huge_batch = true;                   /* huge_batch (huge.c) */
int ta_huge_halves = -1;                     /* huge_halves: -1 unset, 0 off, 1 on (small.c) */
int ta_huge_fresh = -1;                      /* huge_fresh: -1 unset, 0 off, 1 on (huge.c) */
int ta_bg_setting = -1;                      /* background_thread: -1 unset, 0 off, 1 on */
int ta_conf_lazy_commit = -1;                /* lazy_commit: -1 unset, 0 off, 1 on (chunk.c) */
bool ta_stats_on;                            /* stats (ta_stats_switch) */
size_t ta_fast_limit = TA_SMALL_MAX + 1;
bool ta_stats_from_start;
bool ta_conf_stats_print;
int ta_conf_stats_format; /* 0 text, 1 json */
/* The report's own copy of stderr: programs that close stderr in their exit handlers
 * (coreutils do) still get their report. */
int ta_conf_report_fd = -1;
const char *ta_conf_stats_log;       /* points into environ: never copied */
size_t ta_conf_stats_log_len;
uint64_t ta_conf_stats_interval_ms = 100;
size_t ta_conf_page_size; /* page_kb (chunk.c, ta_pages_init); 0: the kernel's */
static _Atomic int conf_state;

/* Statistics on or off: ta_stats_enable (stats.c) and the settings below. from_start: no
 * block has been handed out yet, so that the requested sizes will be exact. */
int ta_stats_switch(int on, bool from_start) {
  int was = ta_stats_on;
  if (on && !ta_stats_on && from_start) ta_stats_from_start = true;
  ta_stats_on = on != 0;
  ta_fast_limit = on ? 0 : TA_SMALL_MAX + 1;
  return was;
}

/* ------------------------------------------------------------------ parsing */

static void warn(const char *what, const char *s, size_t n) {
  char line[256];
  size_t len = 0;
  const char *head = "tamalloc: TAMALLOC_CONF: ";
  for (const char *p = head; *p && len < 200; p++) line[len++] = *p;
  for (const char *p = what; *p && len < 200; p++) line[len++] = *p;
  line[len++] = ' ';
  line[len++] = '\'';
  for (size_t i = 0; i < n && len < 240; i++) line[len++] = s[i];
  const char *tail = "' ignored\n";
  for (const char *p = tail; *p && len < sizeof line; p++) line[len++] = *p;
  ssize_t w = write(STDERR_FILENO, line, len);
  (void)w;
}

static bool eq(const char *s, size_t n, const char *word) {
  return strlen(word) == n && memcmp(s, word, n) == 0;
}

static int parse_bool(const char *v, size_t n) {
  if (eq(v, n, "true") || eq(v, n, "1") || eq(v, n, "yes") || eq(v, n, "on")) return 1;
  if (eq(v, n, "false") || eq(v, n, "0") || eq(v, n, "no") || eq(v, n, "off")) return 0;
  return -1;
}

static bool parse_uint(const char *v, size_t n, uint64_t max, uint64_t *out) {
  if (n == 0 || n > 12) return false;
  uint64_t x = 0;
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9') return false;
    x = x * 10 + (uint64_t)(v[i] - '0');
  }
  if (x > max) return false;
  *out = x;
  return true;
}

/* The last entry that turned huge_halves on in the string being read, and the value it
 * turned it on from: huge_halves needs huge_pages, which may come after it (together_checked). */
static const char *halves_on;
static size_t halves_on_len;
static int halves_off;

/* One "key:value" entry. */
static void apply(const char *e, size_t n) {
  const char *colon = memchr(e, ':', n);
  if (colon == NULL) {
    warn("entry without a value", e, n);
    return;
  }
  size_t kn = (size_t)(colon - e), vn = n - kn - 1;
  const char *v = colon + 1;
  int b;
  uint64_t x;
  if (eq(e, kn, "stats") || eq(e, kn, "stats_print") || eq(e, kn, "huge_pages") ||
      eq(e, kn, "huge_halves") || eq(e, kn, "background_thread") || eq(e, kn, "lazy_commit") ||
      eq(e, kn, "huge_batch") || eq(e, kn, "huge_fresh")) {
    if ((b = parse_bool(v, vn)) < 0) {
      warn("bad value", e, n);
      return;
    }
    if (eq(e, kn, "stats")) ta_stats_switch(b, true);
    else if (eq(e, kn, "stats_print")) {
      ta_conf_stats_print = b;
      if (b) {
        ta_stats_switch(1, true);
        if (ta_conf_report_fd < 0) ta_conf_report_fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 100);
      }
    } else if (eq(e, kn, "background_thread")) {
      ta_bg_setting = b;
    } else if (eq(e, kn, "lazy_commit")) {
      ta_conf_lazy_commit = b;
    } else if (eq(e, kn, "huge_batch")) {
      ta_huge_batch = b;
    } else if (eq(e, kn, "huge_fresh")) {
      ta_huge_fresh = b;
    } else if (eq(e, kn, "huge_halves")) {
      if (b) {
        if (ta_huge_halves <= 0) halves_off = ta_huge_halves; /* the value it turned on from */
        halves_on = e;
        halves_on_len = n;
      }
      ta_huge_halves = b;
    } else {
      ta_huge_pages = b;
    }
  } else if (eq(e, kn, "stats_format")) {
    if (eq(v, vn, "text")) ta_conf_stats_format = 0;
    else if (eq(v, vn, "json")) ta_conf_stats_format = 1;
    else warn("bad value", e, n);
  } else if (eq(e, kn, "decay_ms")) {
    if (parse_uint(v, vn, 600000, &x)) ta_decay_ms = x;
    else warn("bad value", e, n);
  } else if (eq(e, kn, "stats_log")) {
    if (vn == 0 || vn >= 1024) {
      warn("bad value", e, n);
      return;
    }
    ta_conf_stats_log = v;
    ta_conf_stats_log_len = vn;
    ta_stats_switch(1, true);
  } else if (eq(e, kn, "stats_interval_ms")) {
    if (parse_uint(v, vn, 3600000, &x) && x > 0) ta_conf_stats_interval_ms = x;
    else warn("bad value", e, n);
  } else if (eq(e, kn, "dirty_max_kb")) {
    if (parse_uint(v, vn, 4u << 20, &x)) ta_dirty_max = (size_t)x << 10;
    else warn("bad value", e, n);
  } else if (eq(e, kn, "run_threshold")) {
    if (parse_uint(v, vn, 65535, &x)) ta_run_threshold = (uint32_t)x;
    else warn("bad value", e, n);
  } else if (eq(e, kn, "span_min_kb")) {
    /* At most 32: from 33 KiB (9 pages of 4 KiB) some page count under twice the smallest
     * span is no class's, and a free span of it could be neither taken nor cut (span.c). */
    if (parse_uint(v, vn, 32, &x) && (x == 0 || x >= 8)) ta_conf_span_min_kb = (uint32_t)x;
    else warn("bad value", e, n);
  } else if (eq(e, kn, "huge_cache_mb")) {
    if (parse_uint(v, vn, 1u << 20, &x)) {
      ta_huge_cache_limit = (size_t)x << 20;
      ta_huge_cache_grows = false;
    } else {
      warn("bad value", e, n);
    }
  } else if (eq(e, kn, "page_kb")) {
    if (parse_uint(v, vn, 64, &x) && x >= 8 && ta_is_pow2((size_t)x)) ta_conf_page_size = (size_t)x << 10;
    else warn("bad value", e, n);
  } else {
    warn("unknown key", e, n);
  }
}

/* After a whole string: an entry that another makes void is one warning, and is ignored.
 * huge_halves:true with huge_pages:false (in the same string, in either order, or from
 * before) would make no collapse: huge_halves gets back the value it had before that entry. */
static void together_checked(void) {
  if (halves_on && ta_huge_halves > 0 && !ta_huge_pages) {
    warn("with huge_pages:false,", halves_on, halves_on_len);
    ta_huge_halves = halves_off;
  }
  halves_on = NULL;
}

/* A whole string of entries, separated by commas. */
static void apply_all(const char *s) {
  while (*s) {
    const char *end = strchr(s, ',');
    size_t n = end ? (size_t)(end - s) : strlen(s);
    if (n > 0) apply(s, n);
    s += n;
    if (*s == ',') s++;
  }
  together_checked();
}

void ta_conf_init(void) {
  int expected = 0;
  if (!atomic_compare_exchange_strong(&conf_state, &expected, 1)) return;
  static const char name[] = "TAMALLOC_CONF=";
  for (char **env = environ; env && *env; env++) {
    if (strncmp(*env, name, sizeof name - 1) != 0) continue;
    apply_all(*env + sizeof name - 1);
    break;
  }
  atomic_store(&conf_state, 2);
}

/* For tests: parse a setting string as if it came from the environment (statistics
 * switched on count as on from the start, as the environment's are: it is read before the
 * first arena exists). */
void ta_conf_apply(const char *settings);
void ta_conf_apply(const char *settings) { apply_all(settings); }

/* Settings are read at load time too, so that a bad one is reported even by a program
 * that never allocates; ta_conf_init runs once, whichever comes first. */
__attribute__((constructor)) static void conf_at_load(void) { ta_conf_init(); }
