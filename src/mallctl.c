/*
 * mallctl.c — jemalloc's mallctl, mallctlnametomib, mallctlbymib and malloc_stats_print,
 * as far as they map onto tamalloc (docs/jemalloc-api.md has the table).
 *
 * Names form a tree, as jemalloc's do: each component of "arena.0.purge" leads from a node
 * to a named child, or, at a numbered node (arena.<i>, arenas.bin.<i>), to the child that
 * takes a number. A MIB holds one integer per component: the index of the named child, or
 * the number itself, so that a program may change the number and ask again. mallctl
 * translates the name and asks by MIB.
 *
 * Reads and writes follow jemalloc's rules: nothing is read when oldp or oldlenp is NULL; a
 * *oldlenp of the wrong size copies what fits, says how much, and fails with EINVAL; a newlen
 * of the wrong size is EINVAL; a write to a read-only name, or any read or write of an action
 * (arena.<i>.purge), is EPERM; a name tamalloc does not answer is ENOENT.
 *
 * The stats.* figures are a snapshot taken when "epoch" is written (and at the first read),
 * as jemalloc refreshes its own: they come from ta_stats_get, one walk of the heap.
 *
 * Calls: the public ta_ API (statistics, trim) and the settings of conf.c and background.c;
 * reads what differs between the libraries (ta_library, alloc.c). So it is in the top layer
 * with alloc.c (docs/design.md, "Layers"), compiled with it into each library: beside it in
 * the ta_ API library, included with it by override.c in the replacement libraries, whose
 * standard names (mallctl, ...) call it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

#include "internal.h"
#include "tamalloc.h"


#define TA_VERSION_STRING "tamalloc 0.1.0 (jemalloc 5.3.0 API)"

/* ------------------------------------------------------------------ reading and writing */

struct req {
  const size_t *mib;
  size_t miblen;
  void *oldp;
  size_t *oldlenp;
  void *newp;
  size_t newlen;
};

static int read_value(struct req *r, const void *v, size_t n) {
  if (r->oldp == NULL || r->oldlenp == NULL) return 0;
  if (*r->oldlenp != n) {
    size_t k = *r->oldlenp < n ? *r->oldlenp : n;
    memcpy(r->oldp, v, k);
    *r->oldlenp = k;
    return EINVAL;
  }
  memcpy(r->oldp, v, n);
  return 0;
}

static bool writes(const struct req *r) { return r->newp != NULL || r->newlen != 0; }

/* A read-only name whose value is `expr` of type `type`. */
#define RO(fn, type, expr)                                                                 \
  static int fn(struct req *r) {                                                           \
    if (writes(r)) return EPERM;                                                           \
    type v = (expr);                                                                       \
    return read_value(r, &v, sizeof v);                                                    \
  }

/* An action: no value to read or write. */
static int no_value(const struct req *r) {
  return r->oldp != NULL || r->oldlenp != NULL || writes(r) ? EPERM : 0;
}

/* ------------------------------------------------------------------ statistics */

/* The figures of the last refresh; each word is stored and loaded on its own (a refresh
 * racing with another gives a mix of two snapshots, each of them a walk's). */
static struct {
  _Atomic uint64_t epoch;
  _Atomic bool taken;
  _Atomic size_t allocated, active, metadata, resident, mapped, retained;
} snap = {.epoch = 1};

static size_t minus(unsigned long long a, unsigned long long b) { return a > b ? (size_t)(a - b) : 0; }

static void refresh(void) {
  struct ta_stats s;
  s.version = TA_STATS_VERSION;
  s.size = sizeof s;
  if (ta_stats_get(&s, -1) != 0) return;
  /* jemalloc's figures in tamalloc's terms (docs/jemalloc-api.md, "Statistics"). */
  atomic_store_explicit(&snap.allocated, s.usable_bytes, memory_order_relaxed);
  unsigned long long carved_free = 0; /* free small blocks threaded onto runs' lists */
  for (unsigned c = 1; c <= TA_NUM_SMALL; c++)
    carved_free += s.classes[c].free_blocks * s.classes[c].block_size;
  atomic_store_explicit(&snap.active, ta_align_up(s.usable_bytes + carved_free, ta_page_size),
                        memory_order_relaxed);
  atomic_store_explicit(&snap.metadata, minus(s.heap_bytes, s.usable_bytes + s.free_bytes),
                        memory_order_relaxed);
  atomic_store_explicit(&snap.resident, s.resident_bytes, memory_order_relaxed);
  atomic_store_explicit(&snap.mapped, s.heap_bytes, memory_order_relaxed);
  atomic_store_explicit(&snap.retained, minus(s.mapped_bytes, s.heap_bytes), memory_order_relaxed);
  atomic_store_explicit(&snap.taken, true, memory_order_release);
}

static size_t figure(_Atomic size_t *f) {
  if (!atomic_load_explicit(&snap.taken, memory_order_acquire)) refresh();
  return atomic_load_explicit(f, memory_order_relaxed);
}

static int ctl_epoch(struct req *r) {
  if (r->newp != NULL) {
    if (r->newlen != sizeof(uint64_t)) return EINVAL;
    refresh();
    atomic_fetch_add_explicit(&snap.epoch, 1, memory_order_relaxed);
  } else if (r->newlen != 0) {
    return EINVAL;
  }
  uint64_t e = atomic_load_explicit(&snap.epoch, memory_order_relaxed);
  return read_value(r, &e, sizeof e);
}

RO(stats_allocated, size_t, figure(&snap.allocated))
RO(stats_active, size_t, figure(&snap.active))
RO(stats_metadata, size_t, figure(&snap.metadata))
RO(stats_metadata_thp, size_t, 0)
RO(stats_resident, size_t, figure(&snap.resident))
RO(stats_mapped, size_t, figure(&snap.mapped))
RO(stats_retained, size_t, figure(&snap.retained))

/* ------------------------------------------------------------------ actions */

static unsigned narenas(void) {
  return atomic_load_explicit(&ta_arena_count, memory_order_relaxed);
}

/* arena.<i>: an arena made so far, or every arena (MALLCTL_ARENAS_ALL, or <i> equal to the
 * number of arenas, jemalloc's older form, which redis uses). */
static bool arena_index_ok(size_t i) { return i <= narenas() || i == TA_MALLCTL_ARENAS_ALL; }

/* Purging gives back what malloc_trim(0) gives back, whichever arena is named: the calling
 * thread's arena, the arenas of exited threads and the huge cache. Another live thread's
 * arena is its own to purge (at its next slow path, or by the background thread). decay
 * does the same: it gives back at least what the decay time would. */
static int arena_purge(struct req *r) {
  int e = no_value(r);
  if (e) return e;
  (void)ta_malloc_trim(0);
  return 0;
}

static int thread_tcache_flush(struct req *r) { return no_value(r); }

/* ------------------------------------------------------------------ settings */

static int bg_effective(void) {
  return ta_bg_setting < 0 ? ta_library->background : ta_bg_setting;
}
static int bg_at_start = -2; /* the setting before the first write through mallctl */

/* background_thread: tamalloc's background purger. A write sets whether it may start (as
 * TAMALLOC_CONF background_thread does); a running purger is not stopped, it leaves on its
 * own when there is nothing left for it to do. */
static int ctl_background_thread(struct req *r) {
  bool old = bg_effective();
  if (r->newp != NULL || r->newlen != 0) {
    if (r->newp == NULL || r->newlen != sizeof(bool)) return EINVAL;
    if (bg_at_start == -2) bg_at_start = bg_effective();
    ta_bg_enable(*(const bool *)r->newp);
  }
  return read_value(r, &old, sizeof old);
}

/* max_background_threads: tamalloc has at most one; a write is accepted and changes nothing. */
static int ctl_max_background_threads(struct req *r) {
  if (r->newp != NULL || r->newlen != 0) {
    if (r->newp == NULL || r->newlen != sizeof(size_t)) return EINVAL;
  }
  size_t one = 1;
  return read_value(r, &one, sizeof one);
}

RO(opt_background_thread, bool, bg_at_start == -2 ? bg_effective() : bg_at_start)
RO(opt_decay_ms, ssize_t, (ssize_t)ta_decay_ms)
RO(opt_zero_ms, ssize_t, 0)
RO(opt_narenas, unsigned, narenas())
RO(opt_dss, const char *, ta_library->brk ? "primary" : "disabled")
RO(opt_stats_print, bool, ta_conf_stats_print)
RO(opt_false, bool, false)
RO(opt_junk, const char *, "false")
RO(opt_percpu_arena, const char *, "disabled")
RO(opt_one, size_t, 1)
RO(opt_size_zero, size_t, 0)
RO(config_true, bool, true)
RO(config_false, bool, false)
RO(config_malloc_conf, const char *, "")
RO(ctl_version, const char *, TA_VERSION_STRING)

RO(arenas_narenas, unsigned, narenas())
RO(arenas_page, size_t, ta_page())
RO(arenas_quantum, size_t, TA_ALIGNMENT)

/* arenas.bin.<i>: the small size classes, i from 0; a class's runs are 64 KiB. The
 * hardened build serves nothing from the 16-byte class, and a block's usable size is its
 * class less the canary. */
#define FIRST_BIN_CLASS (ta_secure ? 2u : 1u)
#define NBINS (TA_NUM_SMALL + 1 - FIRST_BIN_CLASS)
static bool bin_index_ok(size_t i) { return i < NBINS; }
static uint64_t bin_class_size(size_t i) { return ta_class_size[i + FIRST_BIN_CLASS]; }
RO(bin_size, size_t, bin_class_size(r->mib[2]) - (ta_secure ? TA_CANARY_SIZE : 0))
RO(bin_nregs, uint32_t, (uint32_t)(TA_RUN_SIZE / bin_class_size(r->mib[2])))
RO(bin_slab_size, size_t, TA_RUN_SIZE)
RO(arenas_nbins, unsigned, NBINS)

/* ------------------------------------------------------------------ the tree */

typedef int ctl_fn(struct req *r);
struct node {
  const char *name;          /* NULL: the numbered child of its parent */
  ctl_fn *fn;                /* a name that can be read, written or done */
  const struct node *kids;   /* an inner node */
  size_t nkids;
  bool (*index_ok)(size_t i); /* a numbered child: the numbers it takes */
};
#define LEAF(n, f) {n, f, NULL, 0, NULL}
#define INNER(n, k) {n, NULL, k, sizeof k / sizeof k[0], NULL}
#define NUMBERED(k, ok) {NULL, NULL, k, sizeof k / sizeof k[0], ok}

static const struct node config_kids[] = {
    LEAF("cache_oblivious", config_false), LEAF("debug", config_false),
    LEAF("fill", config_false),            LEAF("lazy_lock", config_false),
    LEAF("malloc_conf", config_malloc_conf), LEAF("prof", config_false),
    LEAF("prof_libgcc", config_false),     LEAF("prof_libunwind", config_false),
    LEAF("stats", config_true),            LEAF("utrace", config_false),
    LEAF("xmalloc", config_false),
};
static const struct node opt_kids[] = {
    LEAF("abort", opt_false),
    LEAF("abort_conf", opt_false),
    LEAF("background_thread", opt_background_thread),
    LEAF("dirty_decay_ms", opt_decay_ms),
    LEAF("dss", opt_dss),
    LEAF("junk", opt_junk),
    LEAF("max_background_threads", opt_one),
    LEAF("muzzy_decay_ms", opt_zero_ms),
    LEAF("narenas", opt_narenas),
    LEAF("percpu_arena", opt_percpu_arena),
    LEAF("prof", opt_false),
    LEAF("retain", opt_false),
    LEAF("stats_print", opt_stats_print),
    LEAF("tcache", opt_false),
    LEAF("tcache_max", opt_size_zero),
    LEAF("utrace", opt_false),
    LEAF("xmalloc", opt_false),
    LEAF("zero", opt_false),
};
static const struct node tcache_kids[] = {LEAF("flush", thread_tcache_flush)};
static const struct node thread_kids[] = {INNER("tcache", tcache_kids)};
static const struct node arena_i_kids[] = {LEAF("decay", arena_purge), LEAF("purge", arena_purge)};
static const struct node arena_kids[] = {NUMBERED(arena_i_kids, arena_index_ok)};
static const struct node bin_i_kids[] = {LEAF("nregs", bin_nregs), LEAF("size", bin_size),
                                         LEAF("slab_size", bin_slab_size)};
static const struct node bin_kids[] = {NUMBERED(bin_i_kids, bin_index_ok)};
static const struct node arenas_kids[] = {
    INNER("bin", bin_kids),
    LEAF("dirty_decay_ms", opt_decay_ms),
    LEAF("muzzy_decay_ms", opt_zero_ms),
    LEAF("narenas", arenas_narenas),
    LEAF("nbins", arenas_nbins),
    LEAF("page", arenas_page),
    LEAF("quantum", arenas_quantum),
    LEAF("tcache_max", opt_size_zero),
};
static const struct node stats_kids[] = {
    LEAF("active", stats_active),       LEAF("allocated", stats_allocated),
    LEAF("mapped", stats_mapped),       LEAF("metadata", stats_metadata),
    LEAF("metadata_thp", stats_metadata_thp), LEAF("resident", stats_resident),
    LEAF("retained", stats_retained),
};
static const struct node root_kids[] = {
    INNER("arena", arena_kids),
    INNER("arenas", arenas_kids),
    LEAF("background_thread", ctl_background_thread),
    INNER("config", config_kids),
    LEAF("epoch", ctl_epoch),
    LEAF("max_background_threads", ctl_max_background_threads),
    INNER("opt", opt_kids),
    INNER("stats", stats_kids),
    INNER("thread", thread_kids),
    LEAF("version", ctl_version),
};
static const struct node root = INNER(NULL, root_kids);

#define MIB_MAX 8

/* The MIB of `name`, at most *len components (all of them must be known); *len becomes the
 * number written. The node reached, or NULL (ENOENT). */
static const struct node *lookup_name(const char *name, size_t *mib, size_t *len) {
  const struct node *n = &root;
  size_t depth = 0;
  const char *c = name;
  while (depth < *len) {
    size_t k = strcspn(c, ".");
    if (k == 0 || n->kids == NULL) return NULL;
    const struct node *next = NULL;
    if (n->kids[0].name == NULL) { /* a number */
      size_t v = 0;
      for (size_t i = 0; i < k; i++) {
        if (c[i] < '0' || c[i] > '9' || v > (SIZE_MAX - 9) / 10) return NULL;
        v = v * 10 + (size_t)(c[i] - '0');
      }
      if (!n->kids[0].index_ok(v)) return NULL;
      mib[depth] = v;
      next = &n->kids[0];
    } else {
      for (size_t i = 0; i < n->nkids; i++)
        if (strncmp(n->kids[i].name, c, k) == 0 && n->kids[i].name[k] == 0) {
          mib[depth] = i;
          next = &n->kids[i];
          break;
        }
      if (next == NULL) return NULL;
    }
    n = next;
    depth++;
    if (c[k] == 0) break;
    c += k + 1;
  }
  *len = depth;
  return n;
}

/* The node a MIB leads to, or NULL. */
static const struct node *lookup_mib(const size_t *mib, size_t len) {
  const struct node *n = &root;
  for (size_t d = 0; d < len; d++) {
    if (n->kids == NULL) return NULL;
    if (n->kids[0].name == NULL) {
      if (!n->kids[0].index_ok(mib[d])) return NULL;
      n = &n->kids[0];
    } else {
      if (mib[d] >= n->nkids) return NULL;
      n = &n->kids[mib[d]];
    }
  }
  return n;
}

int ta_mallctlnametomib(const char *name, size_t *mibp, size_t *miblenp) {
  if (name == NULL || mibp == NULL || miblenp == NULL) return EINVAL;
  size_t len = *miblenp;
  if (lookup_name(name, mibp, &len) == NULL) return ENOENT;
  *miblenp = len;
  return 0;
}

int ta_mallctlbymib(const size_t *mib, size_t miblen, void *oldp, size_t *oldlenp, void *newp,
                    size_t newlen) {
  if (mib == NULL) return ENOENT;
  const struct node *n = lookup_mib(mib, miblen);
  if (n == NULL || n->fn == NULL) return ENOENT;
  struct req r = {mib, miblen, oldp, oldlenp, newp, newlen};
  return n->fn(&r);
}

int ta_mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen) {
  if (name == NULL) return ENOENT;
  size_t components = 1;
  for (const char *c = name; *c; c++) components += *c == '.';
  if (components > MIB_MAX) return ENOENT; /* deeper than the tree */
  size_t mib[MIB_MAX], len = components;
  const struct node *n = lookup_name(name, mib, &len);
  if (n == NULL || n->fn == NULL) return ENOENT;
  struct req r = {mib, len, oldp, oldlenp, newp, newlen};
  return n->fn(&r);
}

/* ------------------------------------------------------------------ malloc_stats_print */

/* tamalloc's report (ta_stats_print: text, or JSON with 'J' in opts; jemalloc's other
 * letters leave out parts of its own report and are ignored) through write_cb, or on stderr.
 * The report is written to a memory file first and handed to the callback afterwards, so
 * the callback may allocate. Without a memory file, the totals alone, one line. */
void ta_malloc_stats_print(void (*write_cb)(void *, const char *), void *cbopaque,
                           const char *opts) {
  int format = opts != NULL && strchr(opts, 'J') != NULL ? 1 : 0;
  if (write_cb == NULL) {
    (void)ta_stats_print(STDERR_FILENO, format);
    return;
  }
  int saved = errno, cancel;
  pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
  char buf[4097];
  int fd = memfd_create("tamalloc-stats", MFD_CLOEXEC);
  if (fd >= 0 && ta_stats_print(fd, format) == 0 && lseek(fd, 0, SEEK_SET) == 0) {
    for (;;) {
      ssize_t k = read(fd, buf, sizeof buf - 1);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) break;
      buf[k] = 0;
      write_cb(cbopaque, buf);
    }
  } else {
    struct ta_stats s;
    s.version = TA_STATS_VERSION;
    s.size = sizeof s;
    if (ta_stats_get(&s, -1) == 0) {
      snprintf(buf, sizeof buf,
               format ? "{\"usable_bytes\":%llu,\"heap_bytes\":%llu,\"free_bytes\":%llu,"
                        "\"resident_bytes\":%llu,\"mapped_bytes\":%llu}\n"
                      : "tamalloc statistics: usable %llu B, heap %llu B, free %llu B, "
                        "resident %llu B, mapped %llu B\n",
               s.usable_bytes, s.heap_bytes, s.free_bytes, s.resident_bytes, s.mapped_bytes);
      write_cb(cbopaque, buf);
    }
  }
  if (fd >= 0) close(fd);
  pthread_setcancelstate(cancel, NULL);
  errno = saved;
}
