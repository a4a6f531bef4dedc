/*
 * huge.c — blocks above 1 MiB, each mapped on its own, and the cache of freed mappings.
 *
 * A huge mapping starts at a 4 MiB boundary with its meta block (ta_huge_t, TA_HUGE_HDR
 * bytes); the data follows at data_off (that size rounded up to the requested alignment). The
 * granule holding the data start is marked TA_MAP_HUGE, so free(p) finds the meta block at p's
 * granule start. Alignments of 4 MiB and more put the data at the start of the granule after the
 * meta block's (TA_MAP_HUGE_AL): the meta block is then one granule below p.
 *
 * Freed mappings are not unmapped at once: a process-wide, lock-free cache keeps up to
 * ta_huge_cache_limit bytes of them, or about as much as is live in huge blocks where that is
 * more (cache_limit), and the next huge request, from any thread, takes the
 * best fit (a larger one without huge pages keeping its excess with the block, within the
 * cache's limit: excess_keep; one with them too where fresh_huge_costly), trims a much
 * larger one, or grows a smaller one with mremap (in place, or its pages moved to a new address).
 * Their pages stay resident, so a program that cycles through multi-megabyte buffers neither maps
 * nor faults them in again, and makes no system call at all once every span has been judged
 * (below). realloc grows a huge block with mremap, in place when it can and otherwise by moving the
 * pages to a new aligned address: never by copying.
 *
 * Huge pages only where they pay. With transparent huge pages a fault fills 2 MiB at once:
 * one fault instead of 512 for a block written through, but 2 MiB committed for one byte
 * written in a block used sparsely. So they are asked for (MADV_HUGEPAGE, on the whole
 * mapping: advice on part of it makes two mappings for the kernel, and mremap works on one)
 * only on memory known to be written through, and once per mapping:
 *   - a freed block is judged: dense if 3/4 of its pages (of its first TA_HUGE_LOOK_MAX)
 *     were written. Without huge pages, written pages are the resident ones (mincore); with
 *     them, a resident page counts only if it is not all zero (the block is free: its
 *     contents are ours to read). A span judged dense gets huge pages then, if it has none,
 *     and is never judged again: the blocks it serves next fault what it does not hold in
 *     2 MiB pages. A span judged sparse is judged again after 1, 3, 7 ... 63 more frees;
 *   - verdicts are kept per class of size (a power of two) and for the process: a fresh
 *     mapping gets huge pages up front when the last verdicts on its class were dense (or,
 *     for a class without any, the last verdict on any). Before the first verdict of all, the
 *     previous fresh block, still in use, is looked at instead (mincore). A dense verdict
 *     moves a class up by one, a sparse one turns it off at once;
 *   - a block with huge pages that comes back with untouched pages loses them (advice and
 *     pages), and the next fresh block of its class goes without, so that its residency
 *     gives a real verdict: a class whose use turns sparse stops getting huge pages after
 *     one or two blocks;
 *   - where the host reclaims the memory the kernel leaves free (a balloon with free page
 *     reporting: ta_os_host_reclaims; huge_fresh overrides: fresh_huge_costly), a fresh
 *     mapping gets none up front but for a realloc's growing block, and a span with huge
 *     pages keeps its excess at a take (advise_fresh, excess_settle: why).
 * So cycling blocks through the cache makes no system call once each span is judged dense.
 * A mapping with huge pages ends at its block's last page where the 2 MiB page holding the
 * block's last byte would otherwise commit much past the block (see span_keep).
 *
 * A span found sparse (at its last look) is reused whole, its pages kept: the stride its
 * blocks wrote is there for the next, larger or smaller. Where the spans found sparse hold too
 * much, a look drops the pages that are new since the span's history (drop_new), and empties
 * the span only if that is not enough. Put in the cache by a free that
 * looked at it, it counts the share of its pages the look found resident (see cache_weight);
 * and the spans found sparse together keep at most half the cache's limit (see sparse_kept).
 * A kernel that uses huge pages everywhere ('always') is told not to on fresh mappings not
 * known to be dense (MADV_NOHUGEPAGE, as every mapping is: os.c, ta_os_thp_off); on one without
 * them ('never'), or with huge_pages:false, nothing is asked for and nothing looked at.
 */
#include <string.h>

#include "internal.h"

/* The cache: TA_HUGE_SLOTS atomic slots shared by all threads. A span is taken by
 * exchanging its slot for NULL, so whoever takes it owns it; the sizes and times beside the
 * slots are hints written before a span is published, checked once it is owned. */
#define TA_HUGE_SLOTS 32
static _Atomic(ta_huge_t *) cache_slot[TA_HUGE_SLOTS];
static _Atomic size_t cache_size_hint[TA_HUGE_SLOTS];
static _Atomic uint64_t cache_time_hint[TA_HUGE_SLOTS];
static _Atomic size_t cache_bytes;
_Atomic uint64_t ta_huge_due; /* earliest time a cached span may be purged; 0: none */

static _Atomic(ta_huge_t *) deferred; /* unmaps put off while statistics are read */
/* What a refused request looks at (ta_huge_make_room), besides the cache:
 * - unmap_epoch: the unmaps of huge spans made, counted after each (a purge's, an eviction's,
 *   a free's), and once for the batch a statistics reader put off, made when it leaves: a
 *   request refused before one and looking after it finds the cache empty, yet room was made;
 * - unmapping: the threads between taking a span out of a slot to unmap it and that unmap
 *   (made, or put off), which a request that finds the slot empty waits for; flight_here is
 *   the calling thread's own share (a signal handler's request does not wait for the unmap it
 *   cut into), raised after the count and lowered before it, so that a handler sees its
 *   thread's unmap at worst as another's, and waits the bound;
 * - deferred_bytes: the spans put off and not unmapped yet, counted up before the push and
 *   down once the epoch has moved for them, so that a look that sees none sees the epoch.
 * A span that a thread took to reuse, and unmaps instead (cache_take: a stale hint, a failed
 * grow), is not counted in flight: counting every take would cost each reuse two locked
 * read-modify-writes more (*Locked operations*, design.md), for a rare case.
 * The counts are signed. A fork child sets unmapping to the forking thread's own share and
 * deferred_bytes to zero (the other threads that had raised them are gone there; the unmaps
 * put off were made: ta_stats_reset_after_fork); had a signal handler's fork cut the thread
 * between a raise and its lowering, it lowers its own below that, which counts as none (and
 * hides as much of a later count in that child: its requests then wait for less).
 * A request waiting for them sleeps on room_word, counted in room_sleepers (room_changed), and
 * in asleep_here, raised before the count and lowered after it: a fork child counts the
 * forking thread's own sleep, never less than it (a sleeper missed is a wake missed; one too
 * many there costs each later unmap of that child a wake call). Not kept per thread: the
 * bytes put off, which a handler that cut into its thread's put-off (between the count and
 * the push) waits the bound for, where they were the only ones. */
static _Atomic uint64_t unmap_epoch;
static _Atomic int unmapping;
static _Atomic intptr_t deferred_bytes;
static _Atomic int room_sleepers;
static _Atomic uint32_t room_word;
/* volatile: read by this thread's signal handlers and its fork child, so kept in step with
 * the counts around them (no instruction more). */
static __thread volatile int flight_here __attribute__((tls_model("initial-exec")));
static __thread volatile int asleep_here __attribute__((tls_model("initial-exec")));

/* The epoch moved, or a count fell: a request asleep in ta_huge_make_room looks again. Each
 * change is a sequentially consistent read-modify-write, as are the sleeper's count of itself
 * and its reads of the word, the epoch and the counts: either the sleeper sees the change, or
 * this sees the sleeper and moves the word before the wake, so that a sleeper between its
 * look and its sleep does not sleep. No system call while nobody sleeps: one load. */
static void room_changed(void) {
  if (atomic_load_explicit(&room_sleepers, memory_order_seq_cst) <= 0) return;
  atomic_fetch_add_explicit(&room_word, 1, memory_order_seq_cst);
  ta_os_futex_wake_all(&room_word);
}

/* The address space of every huge span, live or cached (their sizes summed), changed only
 * beside a system call that maps, cuts, grows, moves or unmaps one: the reuse of a cached
 * span costs nothing more. Signed: in a fork child it may be off (a call cut from its count,
 * a span another thread held, leaked there), by as much as those spans, never wrapped into a
 * huge limit (cache_limit caps what it gives). */
static _Atomic intptr_t huge_bytes;
static void huge_counted(intptr_t delta) {
  atomic_fetch_add_explicit(&huge_bytes, delta, memory_order_relaxed);
}
/* h's size becomes `size` (a cut, a growth, a move: its caller owns it). */
static void span_sized(ta_huge_t *h, size_t size) {
  huge_counted((intptr_t)size - (intptr_t)h->map_size);
  TA_STORE(h->map_size, size);
}

/* The address space of the cached spans: their slots' size hints (the spans are not ours to
 * read). */
static size_t cached_space(void) {
  size_t cached = 0;
  for (unsigned i = 0; i < TA_HUGE_SLOTS; i++)
    if (atomic_load_explicit(&cache_slot[i], memory_order_relaxed) != NULL)
      cached += atomic_load_explicit(&cache_size_hint[i], memory_order_relaxed);
  return cached;
}

/* What the cache may hold when a span of `putting` bytes is put in it: ta_huge_cache_limit
 * (64 MiB), or the address space of the huge blocks live besides that span, where that is more,
 * up to TA_HUGE_CACHE_GROWTH times the setting (512 MiB). A program that cycles through 20
 * buffers of 5-25 MiB (mimalloc-bench's malloc-large, 300 MiB live) found no span to reuse for
 * most of its requests in 64 MiB, and faulted every page of the others in again
 * (docs/design.md, "How much the cache keeps"). Live: every span less the cached ones (their
 * slots' size hints) and the one put, so that neither the cache nor the span on its way in
 * raises the limit: with nothing else live, it is the setting. A limit set (huge_cache_mb) is
 * the limit: ta_huge_cache_grows is false then, as it is in the hardened build, which keeps
 * nothing. Read at each put (cache_put), which also brings the cache down to it. */
#define TA_HUGE_CACHE_GROWTH 8
static size_t excess_held(void);
static size_t cache_limit(size_t putting) {
  size_t set = ta_huge_cache_limit;
  if (!ta_huge_cache_grows || set == 0) return set;
  intptr_t all = atomic_load_explicit(&huge_bytes, memory_order_relaxed) - (intptr_t)putting -
                 (intptr_t)cached_space() - (intptr_t)excess_held();
  size_t live = all > 0 ? (size_t)all : 0;
  if (live > set * TA_HUGE_CACHE_GROWTH) live = set * TA_HUGE_CACHE_GROWTH;
  return live <= set ? set : live;
}

/* ---- the excess a live block keeps ----
 * A span without huge pages that a block needing less takes from the cache keeps the rest of
 * its resident pages (its excess: from the granules the block needs to dirty_end) with the
 * block, where the cache's limit has room for them (excess_keep); a span more than twice too
 * big is cut only past the granule that holds dirty_end. An earlier, larger block wrote those
 * pages and a later one is likely to write them again: dropped at the take, or cut with the
 * tail, they were faulted in anew (`large` without huge pages: 230,900 faults against 120,600
 * so). Spans with huge pages drop theirs, but at a take where fresh huge pages cost more
 * (fresh_huge_costly; excess_settle: why).
 * Each kept excess has an entry: the span | EXCESS_KEPT, the excess's bounds and when it was
 * kept. What entries hold counts, with the cache's bytes, against the cache's limit
 * (kept_excess; cache_put counts it too; two threads racing may pass it by one excess), and
 * goes back a decay time after its pages were last used, the span's free into the cache
 * (ta_huge_excess_purge decommits it, the entry EXCESS_BUSY meanwhile), or is given up when its
 * block is freed or realloc resizes it in place or moves it (excess_release: the entry is found by
 * the span's address, never by a word of the header a stray write could change; the owner waits
 * while a purge holds it). A purge writes the entry and the count alone, never the block's header,
 * which is its owner's: dirty_end then stays where it was, still true (no page at or past it is
 * resident), and the span's next take may count those bytes again for a decay time. */
enum { EXCESS_KEPT = 1, EXCESS_BUSY = 2, EXCESS_STATE = 3 };
/* A span's entry lies in the EXCESS_WAY entries from the one its address hashes to (a free and
 * a realloc look at those alone: a scan of all of them cost the spans workload 9% of its time
 * without huge pages); a span that finds them all taken keeps nothing. */
#define EXCESS_SLOTS 64
#define EXCESS_WAY 4
static _Atomic uintptr_t excess_slot[EXCESS_SLOTS]; /* span | state; 0: free */
/* Written by the entry's holder only (a keeper before EXCESS_KEPT, a purge under EXCESS_BUSY),
 * read by a purge that may race a reuse of the entry: atomics, relaxed. */
static _Atomic size_t excess_from[EXCESS_SLOTS], excess_to[EXCESS_SLOTS];
static _Atomic uint64_t excess_ms[EXCESS_SLOTS];

/* The first of span h's entries (its granule's number, mixed). */
static unsigned excess_home(const ta_huge_t *h) {
  return (unsigned)((((uintptr_t)h >> TA_CHUNK_SHIFT) * 0x9e3779b97f4a7c15ULL) >> 58);
}
_Static_assert(EXCESS_SLOTS == 64, "excess_home gives 6 bits");
/* Signed: a fork child counts its entries again (ta_huge_recount_after_fork), and a keeper cut
 * into by a signal handler's fork just after its reservation leaves it short; never wrapped. */
static _Atomic intptr_t kept_excess;
/* At least as many as the entries taken (raised before a claim, lowered after an entry is
 * given up): a free or realloc that reads 0 has no entry to look for, as its own would be
 * counted (its thread raised the count before taking it, and only its taking's undoing lowers
 * it), so the look costs one load where nothing is kept (every span with huge pages, but
 * where the host reclaims free memory). */
static _Atomic unsigned excess_entries;
/* The keep this thread is making: its entry's value while held (span | EXCESS_BUSY), and the
 * bytes reserved for it, for a fork child made by a signal handler that cut into it. A purge
 * needs no such mark: it runs with signals blocked. */
static __thread volatile uintptr_t keeping_here __attribute__((tls_model("initial-exec")));
static __thread volatile size_t keeping_len __attribute__((tls_model("initial-exec")));

static size_t excess_held(void) {
  intptr_t n = atomic_load_explicit(&kept_excess, memory_order_relaxed);
  return n > 0 ? (size_t)n : 0;
}
intptr_t ta_huge_kept_excess(void) { return atomic_load(&kept_excess); }

/* For a block of `need` bytes that took span h, larger: keeps the excess's pages with the
 * block, if the cache's bytes, what other blocks keep and this excess fit the cache's limit
 * and an entry is free; true if kept. The limit is read as if the excess were being put: the
 * span's size beyond the block does not raise it (nor, in cache_limit, what other blocks
 * keep; it is worked out only past the setting, which it never falls below). `since`: since
 * when the excess's pages have lain unused: when the span was freed into the cache, at a take
 * (so they go back when they would have in the cache), or when it was kept first, at a
 * realloc's keeping again. Not with lazy commit, where a mapping ends at its block's last page
 * (span_keep). */
static bool excess_keep(ta_huge_t *h, size_t need, uint64_t since) {
  size_t set = ta_huge_cache_limit, limit = 0;
  if (set == 0 || ta_commit_lazy()) return false;
  size_t excess = h->dirty_end - need;
  intptr_t held = atomic_load_explicit(&kept_excess, memory_order_relaxed);
  do {
    size_t others = held > 0 ? (size_t)held : 0;
    size_t want = others + atomic_load_explicit(&cache_bytes, memory_order_relaxed);
    if (excess > set || want > set - excess) {
      if (limit == 0) limit = cache_limit(h->map_size - need);
      if (excess > limit || want > limit - excess) return false;
    }
  } while (!atomic_compare_exchange_weak_explicit(&kept_excess, &held, held + (intptr_t)excess,
                                                  memory_order_relaxed, memory_order_relaxed));
  /* A signal handler's keep nested in this one puts the outer one's marks back. */
  uintptr_t outer_here = keeping_here;
  size_t outer_len = keeping_len;
  keeping_len = excess;
  keeping_here = (uintptr_t)h | EXCESS_BUSY;
  atomic_fetch_add_explicit(&excess_entries, 1, memory_order_relaxed);
  for (unsigned k = 0, home = excess_home(h); k < EXCESS_WAY; k++) {
    unsigned i = (home + k) % EXCESS_SLOTS;
    uintptr_t free_entry = 0;
    if (atomic_load_explicit(&excess_slot[i], memory_order_relaxed) != 0 ||
        !atomic_compare_exchange_strong_explicit(&excess_slot[i], &free_entry, keeping_here,
                                                 memory_order_relaxed, memory_order_relaxed))
      continue;
    atomic_store_explicit(&excess_from[i], need, memory_order_relaxed);
    atomic_store_explicit(&excess_to[i], h->dirty_end, memory_order_relaxed);
    atomic_store_explicit(&excess_ms[i], since, memory_order_relaxed);
    atomic_store_explicit(&excess_slot[i], (uintptr_t)h | EXCESS_KEPT, memory_order_release);
    keeping_here = outer_here;
    keeping_len = outer_len;
    ta_purge_note_global(&ta_huge_due, since + ta_decay_ms);
    return true;
  }
  keeping_here = outer_here;
  keeping_len = outer_len;
  atomic_fetch_sub_explicit(&excess_entries, 1, memory_order_relaxed);
  atomic_fetch_sub_explicit(&kept_excess, (intptr_t)excess, memory_order_relaxed);
  return false;
}

/* The entry of span h, or -1; its value in *v. */
static int excess_find(const ta_huge_t *h, uintptr_t *v) {
  for (unsigned k = 0, home = excess_home(h); k < EXCESS_WAY; k++) {
    unsigned i = (home + k) % EXCESS_SLOTS;
    *v = atomic_load_explicit(&excess_slot[i], memory_order_acquire);
    if ((*v & ~(uintptr_t)EXCESS_STATE) == (uintptr_t)h) return (int)i;
  }
  return -1;
}

/* Span h's block gives its excess up (it is freed, or realloc resizes or moves it): by the
 * block's owner, before anything of the span changes; waits while a purge decommits it (a
 * purge runs with signals blocked, so the wait is never for this thread's own: it yields, then
 * sleeps a millisecond at a time, so that a purger of lower priority on its CPU can finish).
 * True if the excess was still kept: its pages are resident, counted no more; *since then says
 * when it was kept. (A fork between the entry's release and the count's leaves the child's
 * count high by it until its recount.) */
static bool excess_release(const ta_huge_t *h, uint64_t *since) {
  if (atomic_load_explicit(&excess_entries, memory_order_relaxed) == 0) return false;
  for (unsigned waits = 0;; waits++) {
    uintptr_t v;
    int i = excess_find(h, &v);
    if (i < 0) return false; /* none, or a purge gave it back */
    if (v & EXCESS_KEPT) {
      size_t len = atomic_load_explicit(&excess_to[i], memory_order_relaxed) -
                   atomic_load_explicit(&excess_from[i], memory_order_relaxed);
      uint64_t ms = atomic_load_explicit(&excess_ms[i], memory_order_relaxed);
      if (atomic_compare_exchange_strong_explicit(&excess_slot[i], &v, 0, memory_order_relaxed,
                                                  memory_order_relaxed)) {
        atomic_fetch_sub_explicit(&kept_excess, (intptr_t)len, memory_order_relaxed);
        atomic_fetch_sub_explicit(&excess_entries, 1, memory_order_relaxed);
        *since = ms;
        return true;
      }
      continue; /* a purge took it just now */
    }
    static _Atomic uint32_t never; /* a purge is decommitting it */
    if (waits < 64)
      ta_os_yield();
    else
      ta_os_futex_wait(&never, 0, 1);
  }
}

/* Tests: whether span h keeps an excess; its entry held as a purge holds it (hold), or let go. */
bool ta_huge_excess_kept(const ta_huge_t *h) {
  uintptr_t v;
  return excess_find(h, &v) >= 0;
}
void ta_huge_excess_hold(const ta_huge_t *h, bool hold) {
  uintptr_t v;
  int i = excess_find(h, &v);
  if (i >= 0) atomic_store(&excess_slot[i], (uintptr_t)h | (hold ? EXCESS_BUSY : EXCESS_KEPT));
}

/* The purge's part (ta_huge_purge; tests call it alone): decommits every excess kept at least
 * decay_ms before `now` (every one if `all`); returns the bytes, and lowers *next (if not 0)
 * to the next one's due time. Signals are blocked while an entry is held: a handler's free
 * of that block would wait for the holder it interrupted, and a handler's fork would leave
 * the entry to a child that cannot tell it was its own thread's. */
size_t ta_huge_excess_purge(uint64_t now, bool all, uint64_t *next) {
  size_t freed = 0;
  if (atomic_load_explicit(&excess_entries, memory_order_relaxed) == 0) return 0;
  for (unsigned i = 0; i < EXCESS_SLOTS; i++) {
    uintptr_t v = atomic_load_explicit(&excess_slot[i], memory_order_relaxed);
    if (!(v & EXCESS_KEPT)) continue;
    uint64_t due = atomic_load_explicit(&excess_ms[i], memory_order_relaxed) + ta_decay_ms;
    if (!all && now < due) {
      if (*next == 0 || due < *next) *next = due; /* ta_huge_purge's */
      continue;
    }
    sigset_t old;
    ta_os_signals_block(&old);
    uintptr_t busy = (v & ~(uintptr_t)EXCESS_STATE) | EXCESS_BUSY;
    if (atomic_compare_exchange_strong_explicit(&excess_slot[i], &v, busy, memory_order_acquire,
                                                memory_order_relaxed)) {
      /* Given up and kept again between the two reads? Then its time is read again. */
      due = atomic_load_explicit(&excess_ms[i], memory_order_relaxed) + ta_decay_ms;
      if (!all && now < due) {
        atomic_store_explicit(&excess_slot[i], v, memory_order_release); /* not yet */
        if (*next == 0 || due < *next) *next = due;
      } else {
        size_t from = atomic_load_explicit(&excess_from[i], memory_order_relaxed);
        size_t to = atomic_load_explicit(&excess_to[i], memory_order_relaxed);
        char *span = (char *)(v & ~(uintptr_t)EXCESS_STATE);
        if (ta_os_decommit(span + from, to - from) == 0) freed += to - from;
        atomic_fetch_sub_explicit(&kept_excess, (intptr_t)(to - from), memory_order_relaxed);
        atomic_store_explicit(&excess_slot[i], 0, memory_order_release);
        atomic_fetch_sub_explicit(&excess_entries, 1, memory_order_relaxed);
      }
    }
    ta_os_signals_restore(&old);
  }
  return freed;
}

/* ---- huge pages only where they pay (see the top of the file) ---- */
#define TA_HUGE_LOOK_MAX ((size_t)8 << 20) /* a block is looked at over this much at most */
#define TA_HUGE_CLASSES 26 /* spans of 2^22 .. 2^47 bytes: one class per power of two */
#define TA_HUGE_SCORE_MAX 4
/* Per class, > 0 when its recent verdicts were dense; and the latest verdict on any class,
 * for classes without one (relaxed: a lost update costs nothing). */
static _Atomic int8_t class_score[TA_HUGE_CLASSES];
static _Atomic int8_t last_verdict;
/* Per class: an advised block came back with untouched pages (or pages written with zeros
 * only, which look the same): the next fresh mapping of the class goes without advice, so
 * that its residency gives a real verdict. */
static _Atomic uint8_t class_doubt[TA_HUGE_CLASSES];
/* The last fresh mapping made with no verdict on anything yet, to look at when the next one
 * is made: its address | the pages to look at. */
static _Atomic uintptr_t unjudged;

/* The mode that applies: the kernel's, unless huge pages are switched off. */
static int thp_mode(void) { return ta_huge_pages ? ta_os_thp_mode() : TA_THP_NEVER; }

static unsigned class_of(size_t bytes) {
  unsigned k = 63u - (unsigned)__builtin_clzll(bytes | 1);
  if (k < TA_CHUNK_SHIFT) return 0;
  k -= TA_CHUNK_SHIFT;
  return k < TA_HUGE_CLASSES ? k : TA_HUGE_CLASSES - 1;
}

static void note_verdict(unsigned cls, bool dense) {
  int s = atomic_load_explicit(&class_score[cls], memory_order_relaxed);
  if (dense) s = s < TA_HUGE_SCORE_MAX ? s + 1 : s;
  else s = s > 0 ? -1 : (s > -TA_HUGE_SCORE_MAX ? s - 1 : s);
  atomic_store_explicit(&class_score[cls], (int8_t)s, memory_order_relaxed);
  atomic_store_explicit(&last_verdict, (int8_t)(dense ? 1 : -1), memory_order_relaxed);
}

/* mincore's answer read eight pages at a time: a page is resident where bit 0 of its byte is
 * set (the kernel keeps the other bits for later use; they are ignored). A look reads thousands
 * of pages of which a few dozen are resident: one byte at a time, the scans of the sparse
 * workload of bench/ ran more instructions than the workload itself. */
#define VEC_ONES 0x0101010101010101ull
static uint64_t vec_word(const unsigned char *vec, size_t i) {
  uint64_t w;
  memcpy(&w, vec + i, sizeof w);
  return w & VEC_ONES;
}
/* The first page at or after i and below n that vec says is resident; n if none. */
static size_t vec_next(const unsigned char *vec, size_t i, size_t n) {
  for (; i + 8 <= n; i += 8) {
    uint64_t w = vec_word(vec, i);
    if (w == 0) continue;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return i + (size_t)__builtin_clzll(w) / 8;
#else
    return i + (size_t)__builtin_ctzll(w) / 8;
#endif
  }
  for (; i < n; i++)
    if (vec[i] & 1) return i;
  return n;
}
/* How many of the pages [i, n) vec says are resident. */
static size_t vec_count(const unsigned char *vec, size_t i, size_t n) {
  size_t c = 0;
  for (; i + 8 <= n; i += 8)
    c += (size_t)((vec_word(vec, i) * VEC_ONES) >> 56); /* the sum of its 8 bytes, each 0 or 1 */
  for (; i < n; i++)
    c += vec[i] & 1;
  return c;
}

/* Is [p, p + len) (page aligned, len <= TA_HUGE_LOOK_MAX) mostly written? 1 if so, 0 if
 * not, -1 if the kernel cannot say. Resident pages are written ones, unless the range has
 * huge pages (`read`, for a freed block only): a page then counts if some word of it is not
 * zero. The scan of a page stops at its first nonzero word; with `read`, the whole scan stops
 * as soon as the answer is known. Without it (share64 not NULL), one call looks at
 * [p, p + all) (all >= len, at most TA_HUGE_SHARE_MAX), and for an answer of 0 *share64 says
 * how many 64ths of those pages were resident, rounded up. */
#define TA_HUGE_SHARE_MAX ((size_t)32 << 20)
#define TA_HUGE_VEC (TA_HUGE_SHARE_MAX / TA_PAGE_MIN) /* mincore's answer: a byte a page */
static int mostly_written(const char *p, size_t len, size_t all, bool read, unsigned *share64,
                          unsigned char vec[TA_HUGE_VEC]) {
  size_t page = ta_os_page_size();
  if (read || share64 == NULL || all < len) all = len; /* the scans below read [0, all) */
  size_t pages = len / page, all_pages = all / page;
  size_t unwritten_max = pages / 4, unwritten = 0, resident = 0;
  if (ta_os_mincore(p, all, vec) != 0) return -1;
  if (!read) { /* written pages are the resident ones: counted, not looked at */
    size_t head = vec_count(vec, 0, pages);
    resident = head + vec_count(vec, pages, all_pages);
    unwritten = pages - head;
  }
  for (size_t i = 0; read && i < all_pages; i++) { /* all == len here */
    bool written = vec[i] & 1;
    if (written) {
      const uint64_t *w = (const uint64_t *)(p + i * page);
      size_t j = 0;
      while (j < page / 8 && w[j] == 0) j++;
      written = j < page / 8;
    }
    resident += written;
    if (!written && ++unwritten > unwritten_max) return 0; /* the answer is known */
  }
  if (unwritten <= unwritten_max) return 1;
  if (share64) *share64 = (unsigned)((resident * 64 + all_pages - 1) / all_pages);
  return 0;
}

/* Before the first verdict of the process: the previous fresh block, if it is still there,
 * is looked at now (it may still be being written: it then looks sparse, the cautious
 * answer). */
static void look_at_previous_fresh(void) {
  uintptr_t w = atomic_exchange_explicit(&unjudged, 0, memory_order_relaxed);
  if (w == 0) return;
  const char *p = (const char *)(w & ~(uintptr_t)TA_CHUNK_MASK);
  size_t len = (w & TA_CHUNK_MASK) * ta_page_size;
  unsigned char vec[TA_HUGE_VEC];
  int v = mostly_written(p, len, len, false, NULL, vec);
  if (v >= 0) atomic_store_explicit(&last_verdict, (int8_t)(v ? 1 : -1), memory_order_relaxed);
}

/* Whether a huge page faulted in fresh costs more than its 512 small pages: where the host
 * reclaims the memory the kernel leaves free (ta_os_host_reclaims), unless huge_fresh says.
 * Then a fresh mapping gets none up front but for a realloc's growing block (advise_fresh), and
 * a span with them keeps its excess at a take (excess_settle). */
static bool fresh_huge_costly(void) {
  return ta_huge_fresh == 0 || (ta_huge_fresh < 0 && ta_os_host_reclaims());
}

/* Huge pages for the whole span of `size` bytes (asked for where the kernel gives them
 * everywhere too: every mapping is made told to have none, os.c). True if the span has them.
 * Never where a huge page is larger than the stretch a verdict looks at (512 MiB with 64 KiB
 * pages): one byte written would commit more than was ever judged dense. */
static bool advise(ta_huge_t *h, size_t size) {
  if (ta_hugepage_size > TA_HUGE_LOOK_MAX) return false;
  return ta_os_hugepage(h, size, true) == 0;
}

/* Where the pages a block may touch end: with huge pages, at the end of the 2 MiB page that
 * holds its last byte. */
static size_t touch_end(const ta_huge_t *h, size_t end) {
  if (!(h->thp & HUGE_ADVISED)) return end;
  end = ta_align_up(end, ta_hugepage_size);
  return end < h->map_size ? end : h->map_size;
}

/* Whether huge pages would commit too much of what an aligned block leaves untouched before
 * its data: its first 2 MiB page holds the meta block, then data_off - TA_HUGE_HDR of padding
 * (all of the page with an alignment of 2 MiB or more, a whole granule's worth above it). Where
 * that is more than an eighth of the block, it gets none (posix_memalign of 2 MiB for 4 MiB
 * blocks written through held 1.4 times their bytes). */
static bool padded(size_t data_off, size_t request) {
  size_t pad = data_off < ta_hugepage_size ? data_off : ta_hugepage_size;
  return pad > request / 8;
}

/* A fresh mapping of `size` bytes for a block that ends at `end`: huge pages up front if
 * blocks of its size are written through, told not to have them if the kernel would give
 * them anyway. Called before anything is written in the mapping: a page touched before the
 * advice would keep its 2 MiB on small pages. Sets h->thp.
 * Where fresh huge pages cost more than small ones (fresh_huge_costly: the host reclaims the
 * memory the kernel leaves free, or huge_fresh:false), none up front but for a realloc's
 * growing block (`grows`): a huge page is taken from the free blocks of 2 MiB and more, which
 * that kernel reports to the host, and faulting one in again cost several times what 512 small
 * faults cost (these come mostly from smaller free blocks, never reported). Such a block is
 * judged at its free as any, and advised then if dense: the pages it holds stay small (unless
 * the kernel's collapsing thread gathers them), those its span's later blocks fault in come
 * huge. A growing vector keeps them up front: `realloc` took 0.27-0.66 s with them, 0.50-0.73
 * s without, run after another process's frees (why its huge pages come cheaper than `large`'s
 * was not measured). */
static void advise_fresh(ta_huge_t *h, size_t size, size_t end, bool pad, bool grows) {
  uint8_t thp = 0;
  int mode = thp_mode();
  if (mode != TA_THP_NEVER) {
    unsigned cls = class_of(size);
    int score = atomic_load_explicit(&class_score[cls], memory_order_relaxed);
    if (score == 0) {
      if (atomic_load_explicit(&last_verdict, memory_order_relaxed) == 0)
        look_at_previous_fresh();
      score = atomic_load_explicit(&last_verdict, memory_order_relaxed);
    }
    if (score > 0 && atomic_load_explicit(&class_doubt[cls], memory_order_relaxed) &&
        atomic_exchange_explicit(&class_doubt[cls], 0, memory_order_relaxed))
      score = -1; /* this one tells */
    if (score > 0 && !pad && (grows || !fresh_huge_costly()) && advise(h, size)) {
      thp = HUGE_ADVISED;
    } else { /* with `always`, the mapping came told to have none (os.c) */
      if (score == 0) {
        size_t len = end < TA_HUGE_LOOK_MAX ? end : TA_HUGE_LOOK_MAX;
        atomic_store_explicit(&unjudged, (uintptr_t)h | (len / ta_page_size),
                              memory_order_relaxed);
      }
    }
  }
  h->thp = thp; /* the first write to the mapping */
  h->hist = 0;
  h->sparse_seen = 0;
  h->look_in = 0;
  h->resident64 = 64;
}

/* Whether the span's last look found it sparse (and it has no huge pages): its residency
 * is then known, roughly, from that look. */
static bool found_sparse(const ta_huge_t *h) {
  return h->sparse_seen > 0 && !(h->thp & (HUGE_ADVISED | HUGE_JUDGED));
}

/* What the spans found sparse hold, as their last looks found it: each counts the share of
 * its pages then resident, times its size. A span found sparse is not emptied when a smaller
 * block reuses it (cache_take), so that the pages its blocks wrote at a stride are there for
 * the next; but its blocks may each write elsewhere (a stamp at their end), and the pages
 * pile up. Beyond half the cache's limit, a span found holding more than a stride's share is
 * emptied at its look. Every change of what a span counts (its verdict, its share, its size,
 * its unmapping) is made between kept_note(h, -1) and kept_note(h, +1). Signed: a fork child
 * may lose a thread's update in flight; the figure only gates emptying. */
static _Atomic intptr_t sparse_kept;
static size_t kept_of(const ta_huge_t *h) {
  return found_sparse(h) ? h->map_size / 64 * h->resident64 : 0;
}
static void kept_note(const ta_huge_t *h, intptr_t sign) {
  size_t n = kept_of(h);
  if (n) atomic_fetch_add_explicit(&sparse_kept, sign * (intptr_t)n, memory_order_relaxed);
}
/* Whether the spans found sparse would hold more than half the cache's limit with `more`
 * bytes. (Half: the spans workload of bench/ keeps about 40 MiB of its pages so, and finds
 * them again; a quarter already costs it faults.) The limit as set, not as the program's
 * huge spans raise it (cache_limit): their address space is no measure of the pages a
 * sparse program writes. */
static bool kept_over(size_t more) {
  intptr_t k = atomic_load_explicit(&sparse_kept, memory_order_relaxed);
  return (size_t)(k > 0 ? k : 0) + more > ta_huge_cache_limit / 2;
}
#define TA_HUGE_STRIDE64 2 /* a share of 2/64 or less is a block's stride: nothing to empty */

/* How much of a span of `size` bytes a block whose pages end at `end` (its guard page
 * included) keeps mapped.
 * - With huge pages, the first touch of a 2 MiB page that holds nothing commits all of it:
 *   past the block's end, for the one that holds the block's last byte (a block of 2.1 MiB
 *   written through held 4 MiB, one of 4 MiB 6). Where that would commit more than an
 *   eighth of the block, the mapping ends at the block's last page instead: the kernel gives
 *   a huge page only where the whole of it is mapped. That 2 MiB page then faults in small
 *   pages, so a block that spills into it by little keeps it (large's blocks of 5-25 MiB: 9%
 *   more time when every one was cut). The page is cut whenever nothing past the block's end
 *   in it may be resident (dirty_end), its part below the end holding small pages or not:
 *   the kernel's collapsing (khugepaged) fills a page that holds any. A page that holds pages
 *   past the end already (an earlier, larger block wrote them) is kept: nothing is committed
 *   anew, and the cut would make the next larger block fault them in again.
 * - With lazy commit the kernel charges the whole mapping, touched or not: it ends at the
 *   block's last page (a 1 MiB block was charged 4 MiB). */
static size_t span_keep(const ta_huge_t *h, size_t end, size_t size) {
  if (end >= size) return size;
  if (ta_commit_lazy()) return end;
  if (!(h->thp & HUGE_ADVISED)) return size;
  size_t r = ta_align_up(end, ta_hugepage_size);
  return r <= size && h->dirty_end <= end && r - end > end / 8 ? end : size;
}

/* The residency histories of spans found sparse (drop_new): which of a span's pages, in the
 * kernel's pages from its start, were resident at its last look that took pages, or at its
 * first. A bit a page, as many as a look's answer holds: 8,192, 32 MiB with 4 KiB pages,
 * the whole of a look at a block whose data starts in the span's first page (a look at an
 * aligned block, further in, that reaches past the history empties the span as before).
 * Kept in a process-wide table of HIST_RECORDS records, not in the meta block: there the
 * kilobyte pushed the data that far into the mapping, and a request ending within it below a
 * multiple of 4 MiB took one more granule (spans took 1.05 times as long). The meta block
 * holds the record's number (hist, 0 for none), the record its span's address (hist_owner):
 * a number that does not lead back to the span (a header overwritten) is no history. Only the
 * span's owner, the one thread that holds it (its free, its reuse, its unmap), reads or
 * writes its record; records are taken with a compare-and-swap of their owner. A span that
 * finds every record taken has no history: emptied as before. A record is released when its
 * span is unmapped or loses its history, and follows a span that moves (the meta block moves
 * with it). 256 records: the sparse workload of bench/ keeps up to 160 spans (128 live, 32
 * cached); 1,032 bytes each, address space until used (the lowest free is taken). */
#define HIST_RECORDS 256
#define HIST_WORDS (TA_HUGE_VEC / 64)
typedef struct {
  uint32_t pages; /* pages covered from the span's start: 0, none */
  uint64_t bits[HIST_WORDS];
} hist_t;
static hist_t hist_tab[HIST_RECORDS];
static _Atomic(const ta_huge_t *) hist_owner[HIST_RECORDS]; /* NULL: free */
_Static_assert(HIST_RECORDS < UINT16_MAX, "a record's number fits the meta block's field");

/* The record of span h, or NULL. */
static hist_t *hist_of(const ta_huge_t *h) {
  unsigned i = h->hist;
  if (i == 0 || i > HIST_RECORDS ||
      atomic_load_explicit(&hist_owner[i - 1], memory_order_acquire) != h)
    return NULL;
  return &hist_tab[i - 1];
}
/* The record of span h, a free one taken for it if it has none; NULL if none is free. */
static hist_t *hist_take(ta_huge_t *h) {
  hist_t *r = hist_of(h);
  for (unsigned i = 0; r == NULL && i < HIST_RECORDS; i++) { /* the lowest free: few pages */
    const ta_huge_t *none = NULL;
    if (atomic_load_explicit(&hist_owner[i], memory_order_relaxed) == NULL &&
        atomic_compare_exchange_strong_explicit(&hist_owner[i], &none, h, memory_order_acquire,
                                                memory_order_relaxed)) {
      h->hist = (uint16_t)(i + 1);
      r = &hist_tab[i];
      r->pages = 0;
      memset(r->bits, 0, sizeof r->bits); /* no bit of its last span's (note_history writes
                                             from the look's first page on) */
    }
  }
  return r;
}
/* Span h has no history from now on (unmapped, or what it holds no longer known page by
 * page). */
static void hist_drop(ta_huge_t *h) {
  hist_t *r = hist_of(h);
  h->hist = 0;
  if (r == NULL) return;
  r->pages = 0;
  atomic_store_explicit(&hist_owner[r - hist_tab], NULL, memory_order_release);
}
/* Span `from` moved to `to` with its pages and meta block: its history follows it. */
static void hist_move(const ta_huge_t *from, const ta_huge_t *to) {
  unsigned i = to->hist;
  const ta_huge_t *was = from;
  if (i != 0 && i <= HIST_RECORDS)
    atomic_compare_exchange_strong_explicit(&hist_owner[i - 1], &was, to, memory_order_release,
                                            memory_order_relaxed);
}
/* The history forgets the pages from byte `end` of the span on (decommitted or unmapped). */
static void hist_cut(const ta_huge_t *h, size_t end) {
  hist_t *r = hist_of(h);
  size_t pages = end / ta_os_page_size();
  if (r != NULL && r->pages > pages) r->pages = (uint32_t)pages;
}
/* For tests: the pages span h's history covers (0: none), the records taken. */
size_t ta_huge_hist_pages(const ta_huge_t *h) {
  const hist_t *r = hist_of(h);
  return r ? r->pages : 0;
}
unsigned ta_huge_hist_taken(void) {
  unsigned n = 0;
  for (unsigned i = 0; i < HIST_RECORDS; i++)
    n += atomic_load_explicit(&hist_owner[i], memory_order_relaxed) != NULL;
  return n;
}

/* Cuts the span, which the caller owns, down to its first `keep` bytes (page aligned, at
 * most its size): one munmap of the tail. A tail with no page resident (past dirty_end) is
 * not counted as memory given back. The caller seals the header again. */
static void span_cut(ta_huge_t *h, size_t keep) {
  if (keep >= h->map_size) return;
  if (h->dirty_end <= keep)
    ta_os_trim((char *)h + keep, h->map_size - keep); /* untouched */
  else if (ta_os_munmap((char *)h + keep, h->map_size - keep) != 0)
    return;
  kept_note(h, -1);
  span_sized(h, keep);
  hist_cut(h, keep);
  kept_note(h, +1);
  if (h->dirty_end > keep) h->dirty_end = keep;
}

/* The first page at or after offset o and below stop (both on the kernel's pages) that may be
 * resident, vec being mincore's answer from offset `from` on: o itself before `from`. */
static size_t resident_at(const unsigned char *vec, size_t from, size_t o, size_t stop) {
  size_t kpage = ta_os_page_size();
  if (o < from || o >= stop) return o;
  return from + vec_next(vec, (o - from) / kpage, (stop - from) / kpage) * kpage;
}

/* Empties the span, which the caller owns, of its pages but one in each stretch that one
 * page table maps (ta_os_hugepage_size(): 2 MiB with 4 KiB pages): the first page of it that
 * vec says is resident. vec is mincore's answer for [from, from + all), in the kernel's pages;
 * a page before `from` counts as resident.
 * What lies past from + all (a span larger than the look's 32 MiB) goes in one call. The kernel
 * (CONFIG_PT_RECLAIM) frees the page table of a stretch that one decommit empties whole, and the
 * next write faults in a new one; where page tables are shadowed (a virtual machine without nested
 * paging) freeing one costs every translation of the process: after such a decommit a read of 4,000
 * pages elsewhere took 23 times as long, and the sparse workload of bench/, whose spans this
 * empties, took 1.8 times as long as it does keeping a page a table. So no call covers a stretch
 * whole, and one page of each (1/512 of what was held) stays, which any reclaimer of empty tables
 * respects; a stretch with no other resident page costs no call. The header's page is the first
 * stretch's. On success dirty_end ends past the last page kept and the share is 1/64; a call that
 * fails leaves both as they were, still true of what is resident. */
static void empty_but_tables(ta_huge_t *h, const unsigned char *vec, size_t from, size_t all) {
  size_t kpage = ta_os_page_size(), table = ta_os_hugepage_size();
  size_t seen = from + all; /* vec[i] is of the page at from + i * kpage */
  size_t end = h->dirty_end < seen ? h->dirty_end : seen;
  if (h->dirty_end > seen && ta_os_decommit((char *)h + seen, h->dirty_end - seen) != 0) return;
  size_t last_kept = ta_page_size; /* the header's page */
  for (size_t r = 0, stop; r < end; r = stop) {
    stop = ta_align_up((uintptr_t)h + r + 1, table) - (uintptr_t)h; /* where its table ends */
    if (stop > end) stop = end;
    size_t keep = r == 0 ? ta_page_size : SIZE_MAX; /* the offset past the page kept */
    size_t zap = SIZE_MAX;                          /* the first resident page past it */
    for (size_t o = resident_at(vec, from, r ? r : ta_page_size, stop); o < stop;
         o = resident_at(vec, from, o + kpage, stop)) {
      if (keep == SIZE_MAX) {
        keep = o + kpage;
      } else {
        zap = o;
        break;
      }
    }
    if (keep != SIZE_MAX) last_kept = keep;
    if (zap == SIZE_MAX) continue; /* nothing past the page kept */
    if (ta_os_decommit((char *)h + zap, stop - zap) != 0) return;
  }
  h->dirty_end = ta_align_up(last_kept, ta_page_size);
  h->resident64 = 1;
}

/* The pages of a look at [from, from + all) a history covers: *first the first, in the
 * kernel's pages from the span's start. */
static size_t hist_count(size_t from, size_t all, size_t *first) {
  size_t kpage = ta_os_page_size(), cover = (size_t)HIST_WORDS * 64;
  *first = from / kpage;
  size_t n = all / kpage;
  return *first + n <= cover ? n : cover > *first ? cover - *first : 0;
}
static bool hist_has(const hist_t *r, size_t pg) {
  return pg < r->pages && (r->bits[pg / 64] >> (pg % 64) & 1);
}

/* Records vec, the look's answer for [from, from + all), as the span's history (the pages a
 * drop took at the look included). Not without the batch: drop_new would never read it. */
static void note_history(ta_huge_t *h, const unsigned char *vec, size_t from, size_t all) {
  hist_t *r = ta_huge_batch ? hist_take(h) : NULL;
  if (r == NULL) return; /* every record is taken: no history, emptied as before */
  size_t first, n = hist_count(from, all, &first);
  for (size_t w = first / 64; w < (first + n + 63) / 64; w++)
    r->bits[w] = 0;
  for (size_t i = vec_next(vec, 0, n); i < n; i = vec_next(vec, i + 1, n))
    r->bits[(first + i) / 64] |= (uint64_t)1 << ((first + i) % 64);
  r->pages = (uint32_t)(first + n);
}

/* Over the share the spans found sparse may hold (kept_over), a span used to be emptied of all
 * its pages but one a page table (empty_but_tables), and the next blocks faulted in again what
 * they write each time. A program that reuses big buffers sparsely writes the same pages in
 * every block (its head, a stride, the places it fills) and a few that move with each block's
 * size (its end): those pile up, one or two a block, when a span serves blocks of many sizes.
 * So first the pages resident now (vec, for [from, from + all)) but not at the span's last look
 * go, in one call per TA_OS_BATCH_MAX ranges, and the others stay: the sparse workload of
 * bench/ faulted 1.66 times per block that way, 1.19 with this (mimalloc, which gives nothing
 * back, 1.07), and ran in 0.83 of the time.
 * With `go` false nothing is dropped: the share the drop would leave is only counted, so that
 * a span the drop would leave over its share is emptied instead, not both. 1 if the pages went
 * (or none had to, or, without `go`, they could): *share64 is then the share left. 0 if
 * nothing was dropped: without a history, where the look saw past what the history covers, or
 * where the kernel drops no batch (the ranges one by one would cost more calls than the
 * emptying saves): the caller empties the span instead. -1 if a batch failed after some pages
 * may have gone (its ranges one by one failed too for some: an mlocked range, say): which
 * are resident is not known page by page, so nothing is emptied (a page kept for a stretch
 * could be one that went); the span is left as it is, counted at the look's share (no less
 * than it holds), until its next look. */
static int drop_new(ta_huge_t *h, const unsigned char *vec, size_t from, size_t all, bool go,
                    unsigned *share64) {
  size_t kpage = ta_os_page_size(), first, n = hist_count(from, all, &first);
  const hist_t *hr = ta_huge_batch ? hist_of(h) : NULL;
  if (hr == NULL || hr->pages == 0 || n != all / kpage) return 0;
  size_t table = ta_os_hugepage_size() / kpage; /* pages a page table maps */
  if (table == 0) table = ((size_t)2 << 20) / kpage;
  size_t base = (uintptr_t)h / kpage; /* tables map aligned stretches of the address space */
  size_t kept = 0;
  ta_os_range_t r[TA_OS_BATCH_MAX];
  int k = 0, sent = 0; /* sent: batches dropped */
  for (size_t a = first; a < first + n;) {
    size_t b = ((base + a) / table + 1) * table - base; /* [a, b): a table's stretch, or part */
    if (b > first + n) b = first + n;
    /* Never a stretch emptied whole: its table would go too ("An emptied span keeps its page
     * tables"). One with no page to keep keeps its first resident one. */
    bool held = a == first && first > 0 && (base % table) + first < table; /* the header's page,
                                          resident, not looked at, in this stretch */
    /* Resident pages only: vec_next(vec, i, n) is the first at or after page first + i. */
    for (size_t i = vec_next(vec, a - first, b - first); i < b - first && !held;
         i = vec_next(vec, i + 1, b - first))
      held = hist_has(hr, first + i) || (first + i) * kpage < ta_page_size;
    for (size_t i = vec_next(vec, a - first, b - first); i < b - first;
         i = vec_next(vec, i + 1, b - first)) {
      size_t pg = first + i;
      if (hist_has(hr, pg) || pg * kpage < ta_page_size || !held) { /* the header's page stays */
        held = true;
        kept++;
        continue;
      }
      if (!go) continue;
      char *at = (char *)h + pg * kpage;
      if (k > 0 && (char *)r[k - 1].p + r[k - 1].size == at) {
        r[k - 1].size += kpage;
        continue;
      }
      if (k == TA_OS_BATCH_MAX) {
        int got = ta_os_decommit_batch(r, k);
        if (got != 0) return got < 0 && sent == 0 ? 0 : -1;
        sent++;
        k = 0;
      }
      r[k].p = at;
      r[k].size = kpage;
      k++;
    }
    a = b;
  }
  int got = k > 0 ? ta_os_decommit_batch(r, k) : 0;
  if (got != 0) return got < 0 && sent == 0 ? 0 : -1;
  unsigned share = (unsigned)((kept * 64 + n - 1) / n);
  *share64 = share ? share : 1;
  return 1;
}

static void look(ta_huge_t *h);
/* On its way out of the program's hands: was the block's memory written through? Huge
 * pages for the span if so (once per mapping), a later look if not. No system call for a
 * span judged dense before, nor for a sparse one until its next look is due. */
static void judge(ta_huge_t *h) {
  if ((h->thp & HUGE_JUDGED) || thp_mode() == TA_THP_NEVER) return;
  if (atomic_load_explicit(&unjudged, memory_order_relaxed) >> TA_CHUNK_SHIFT ==
      (uintptr_t)h >> TA_CHUNK_SHIFT)
    atomic_store_explicit(&unjudged, 0, memory_order_relaxed); /* judged here instead */
  if (h->look_in > 0) {
    h->look_in--;
    return;
  }
  kept_note(h, -1);
  look(h);
  kept_note(h, +1);
}

static void look(ta_huge_t *h) {
  size_t from = h->data_off & ~(ta_page_size - 1);
  size_t end = ta_align_up(h->data_off + h->requested, ta_page_size);
  size_t len = end - from < TA_HUGE_LOOK_MAX ? end - from : TA_HUGE_LOOK_MAX;
  /* The share resident is looked at over every page that may hold one (up to dirty_end: the
   * span's excess, kept when a smaller block reused it, too), 32 MiB at most. */
  size_t all = h->dirty_end > from + len ? h->dirty_end - from : len;
  if (all > TA_HUGE_SHARE_MAX) all = TA_HUGE_SHARE_MAX;
  bool advised = h->thp & HUGE_ADVISED;
  unsigned share = 64;
  unsigned char vec[TA_HUGE_VEC]; /* which pages of [from, from + all) are resident */
  int written = mostly_written((char *)h + from, len, all, advised, &share, vec);
  bool dense = written > 0;
  unsigned cls = class_of(ta_align_up(end, TA_CHUNK_SIZE));
  if (dense) {
    note_verdict(cls, true);
    if (!advised && padded(h->data_off, h->requested))
      h->thp |= HUGE_PADDED;
    else if (!advised && advise(h, h->map_size))
      h->thp |= HUGE_ADVISED;
    h->thp |= HUGE_JUDGED;
    hist_drop(h); /* not looked at again, unless a padded block sends it back: afresh */
    return;
  }
  if (!advised) {
    note_verdict(cls, false);
    h->thp |= HUGE_LOOKED;
    /* If the spans found sparse hold too much with it, the pages new since its last look go
     * (drop_new, where the look saw all it holds), then, if they still do, all but one a page
     * table. Not when it is not to be kept (no cache, or over-aligned): it is unmapped next. */
    bool kept = ta_huge_cache_limit > 0 && h->data_off != TA_CHUNK_SIZE;
    bool seen = written >= 0 && h->dirty_end <= from + all; /* all it holds, page by page */
    bool over = kept && share > TA_HUGE_STRIDE64 && kept_over(h->map_size / 64 * share) &&
                h->dirty_end > ta_page_size;
    bool took = over; /* this look takes pages: its answer becomes the history */
    unsigned left = 64; /* the share the drop would leave: enough, or the span is emptied */
    if (over && seen && drop_new(h, vec, from, all, false, &left) > 0 &&
        !(left > TA_HUGE_STRIDE64 && kept_over(h->map_size / 64 * left)) &&
        drop_new(h, vec, from, all, true, &share) != 0)
      over = false; /* dropped; or a batch failed part way: left until the next look */
    h->resident64 = (uint8_t)share;
    if (over) empty_but_tables(h, vec, from, written < 0 ? 0 : all); /* no answer: one call */
    /* The history is what was resident at the last look that took pages (what went included:
     * written again, it stays), or at the first look: what piles up between such looks goes
     * at the next. */
    const hist_t *hr = hist_of(h);
    if (!seen || !kept)
      hist_drop(h); /* what it holds is not known page by page */
    else if (took || hr == NULL || hr->pages == 0)
      note_history(h, vec, from, all);
  } else {
    /* Advised up front and found with untouched pages: no more huge pages for it, and the
     * ones it holds go (the block is free: its contents do not matter; the header's page
     * stays). Whether its class is used sparsely, the next fresh block of it will tell. */
    atomic_store_explicit(&class_doubt[cls], 1, memory_order_relaxed);
    ta_os_hugepage(h, h->map_size, false);
    hist_drop(h);
    if (h->dirty_end > ta_page_size &&
        ta_os_decommit((char *)h + ta_page_size, h->dirty_end - ta_page_size) == 0)
      h->dirty_end = ta_page_size;
    h->thp = HUGE_LOOKED;
    h->resident64 = 1;
  }
  if (h->sparse_seen < 6) h->sparse_seen++;
  h->look_in = (uint8_t)((1u << h->sparse_seen) - 1);
}

/* Unmaps h now, or, while a statistics reader is active, when the last one leaves. */
static void huge_unmap(ta_huge_t *h) {
  kept_note(h, -1);
  huge_counted(-(intptr_t)h->map_size);
  hist_drop(h);
  uintptr_t data = (uintptr_t)h + h->data_off;
  ta_map_set(data, TA_MAP_NONE);
  atomic_store_explicit(&h->state, 0, memory_order_relaxed);
  if (!ta_unmap_allowed()) {
    /* A statistics reader may be looking at this header: unmap when it is done. */
    atomic_fetch_add_explicit(&deferred_bytes, (intptr_t)h->map_size, memory_order_relaxed);
    ta_huge_t *head = atomic_load_explicit(&deferred, memory_order_relaxed);
    do {
      h->next = head;
    } while (!atomic_compare_exchange_weak_explicit(&deferred, &head, h, memory_order_release,
                                                    memory_order_relaxed));
    /* The last reader may have left between our look and our push: then nobody would. */
    if (ta_unmap_allowed()) ta_huge_unmap_deferred();
    return;
  }
  TA_STORE(h->check, 0);
  if (ta_os_munmap(h, h->map_size) != 0) {
    /* Cannot give it back: drop the pages at least (commit charge a refused request may
     * lack); the mapping stays ours forever. */
    ta_os_decommit(h, h->map_size);
  }
  atomic_fetch_add_explicit(&unmap_epoch, 1, memory_order_seq_cst);
  room_changed();
}

/* The unmaps put off while statistics were read: by the last reader on its way out, by an
 * unmap that finds the last one left meanwhile, and in a fork child. */
void ta_huge_unmap_deferred(void) {
  ta_huge_t *h = atomic_exchange_explicit(&deferred, NULL, memory_order_acquire);
  size_t bytes = 0;
  while (h != NULL) {
    ta_huge_t *next = h->next;
    size_t size = h->map_size;
    TA_STORE(h->check, 0);
    if (ta_os_munmap(h, size) != 0) ta_os_decommit(h, size);
    bytes += size;
    h = next;
  }
  if (bytes == 0) return;
  atomic_fetch_add_explicit(&unmap_epoch, 1, memory_order_seq_cst);
  atomic_fetch_sub_explicit(&deferred_bytes, (intptr_t)bytes, memory_order_seq_cst);
  room_changed();
}

/* What a cached span counts against the cache's limit: the memory it holds resident, as far
 * as it is known without a system call. A span whose last look found it sparse counts the
 * share of the pages then resident, and an eighth of its size at least: it is looked at
 * again only after up to 63 more frees, and may have been written more since (beyond that,
 * the decay gives it back). Any other counts its whole size. Read from fields that do not
 * change while the span is in the cache, so that its put and its take count the same. */
static size_t cache_weight(const ta_huge_t *h) {
  if (!found_sparse(h) || !(h->thp & HUGE_LOOKED)) return h->map_size;
  /* What the look saw (its share of [from, from + all)), and every page past it that may
   * be resident (up to dirty_end); an eighth of the span at least. */
  size_t from = h->data_off & ~(ta_page_size - 1);
  size_t end = h->dirty_end > from ? h->dirty_end : from;
  size_t all = end - from < TA_HUGE_SHARE_MAX ? end - from : TA_HUGE_SHARE_MAX;
  size_t w = from + all / 64 * h->resident64 + (end - from - all);
  size_t least = h->map_size / 8;
  w = w > least ? w : least;
  return w < h->map_size ? w : h->map_size;
}

/* Takes the span of slot i if it is still `h`; the caller then owns it. */
static bool slot_take(unsigned i, ta_huge_t *h) {
  /* A release too: a refused request that finds the slot empty sees the count of unmaps in
   * flight raised before it (slot_unmap, ta_huge_make_room). */
  if (!atomic_compare_exchange_strong_explicit(&cache_slot[i], &h, NULL, memory_order_acq_rel,
                                               memory_order_relaxed))
    return false;
  atomic_fetch_sub_explicit(&cache_bytes, cache_weight(h), memory_order_relaxed);
  return true;
}

/* Tests: 1 holds the next span taken out of its slot to be unmapped there, in flight; the
 * value reads 2 while it is held, until the test sets 0. */
_Atomic unsigned ta_huge_hold_unmap;
static void hold_for_tests(void) {
  unsigned one = 1;
  if (TA_LIKELY(atomic_load_explicit(&ta_huge_hold_unmap, memory_order_relaxed) != 1) ||
      !atomic_compare_exchange_strong(&ta_huge_hold_unmap, &one, 2))
    return;
  while (atomic_load(&ta_huge_hold_unmap) != 0)
    ta_os_yield();
}

/* Takes span h out of slot i and unmaps it (now, or once statistics are read: huge_unmap):
 * its size, or 0 if another thread took it first. Counted in flight from before the take to
 * after the unmap, so that a refused request that finds the slot empty waits for the unmap
 * (ta_huge_make_room). */
static size_t slot_unmap(unsigned i, ta_huge_t *h) {
  atomic_fetch_add_explicit(&unmapping, 1, memory_order_seq_cst);
  flight_here++;
  size_t size = 0;
  if (slot_take(i, h)) {
    hold_for_tests();
    size = h->map_size;
    huge_unmap(h);
  }
  flight_here--;
  atomic_fetch_sub_explicit(&unmapping, 1, memory_order_seq_cst);
  room_changed();
  return size;
}

/* Index of the cached span to take: the best fit for `need`, else (need == 0) the largest. */
static int slot_pick(size_t need, ta_huge_t **out) {
  int best = -1;
  size_t best_size = 0;
  for (unsigned i = 0; i < TA_HUGE_SLOTS; i++) {
    ta_huge_t *h = atomic_load_explicit(&cache_slot[i], memory_order_relaxed);
    if (h == NULL) continue;
    size_t s = atomic_load_explicit(&cache_size_hint[i], memory_order_relaxed);
    bool better = need ? (s >= need && (best < 0 || s < best_size)) : (best < 0 || s > best_size);
    if (better) {
      best = (int)i;
      best_size = s;
      *out = h;
    }
  }
  return best;
}

/* Counts `size` more bytes (a span's weight) in the tally if that keeps it within the
 * limit, unmapping the largest cached spans while it would not. False when no room can be made
 * (what is counted then belongs to puts in flight). The bytes are counted before the span is
 * published, so a thread that takes it subtracts what was added already: the tally never wraps, and
 * it never passes the limit it is given, even for a moment (a put reads cache_limit once). */
static bool cache_reserve(size_t size, size_t limit) {
  size_t cur = atomic_load_explicit(&cache_bytes, memory_order_relaxed);
  for (;;) {
    if (cur <= limit - size) {
      if (atomic_compare_exchange_weak_explicit(&cache_bytes, &cur, cur + size,
                                                memory_order_relaxed, memory_order_relaxed))
        return true;
      continue;
    }
    ta_huge_t *v = NULL;
    int i = slot_pick(0, &v);
    if (i < 0) return false;
    slot_unmap((unsigned)i, v);
    cur = atomic_load_explicit(&cache_bytes, memory_order_relaxed);
  }
}

static bool cache_put(ta_huge_t *h) {
  /* Read what we need of h now: once it is in a slot, another thread may own it. */
  size_t size = h->map_size, weight = cache_weight(h);
  uint64_t freed = h->freed_ms;
  size_t limit = cache_limit(size), kept = excess_held();
  limit = kept < limit ? limit - kept : 0; /* what blocks keep counts against it too */
  if (weight > limit) {
    cache_reserve(0, limit); /* not kept; the cache down to the limit, which may have fallen */
    return false;
  }
  if (!cache_reserve(weight, limit)) return false;
  for (unsigned i = 0; i < TA_HUGE_SLOTS; i++) {
    if (atomic_load_explicit(&cache_slot[i], memory_order_relaxed) != NULL) continue;
    atomic_store_explicit(&cache_size_hint[i], size, memory_order_relaxed);
    atomic_store_explicit(&cache_time_hint[i], freed, memory_order_relaxed);
    ta_huge_t *expected = NULL;
    if (atomic_compare_exchange_strong_explicit(&cache_slot[i], &expected, h,
                                                memory_order_release, memory_order_relaxed))
      return true;
  }
  /* Every slot is taken: give back what was counted. */
  atomic_fetch_sub_explicit(&cache_bytes, weight, memory_order_relaxed);
  return false;
}

/* Grows a span the caller took from the cache to `need` bytes, keeping its pages: in place
 * where the kernel can, else moved (page tables, not bytes) to a new address. Returns the
 * span, or NULL: then *kept says whether h is still there, unchanged, or was lost. */
static ta_huge_t *span_grow(ta_huge_t *h, size_t need, bool *kept) {
  *kept = true;
  uintptr_t data = (uintptr_t)h + h->data_off;
  /* It may move: its granule leaves the map first, as for an unmap (statistics readers). */
  ta_map_set(data, TA_MAP_NONE);
  if (!ta_unmap_allowed()) {
    ta_map_set(data, TA_MAP_HUGE);
    return NULL;
  }
  ta_huge_t *g = ta_os_mremap_move(h, h->map_size, need);
  if (g == NULL) {
    ta_map_set(data, TA_MAP_HUGE);
    return NULL;
  }
  kept_note(g, -1); /* its header moved with it: what it counted at its old size */
  hist_move(h, g);
  if ((uintptr_t)g & TA_CHUNK_MASK) {
    /* The kernel's address is not on a granule: move once more, onto one. */
    void *dst = ta_os_mmap_aligned(need, TA_CHUNK_SIZE);
    ta_huge_t *a = dst ? ta_os_mremap(g, need, need, dst) : NULL;
    if (a == NULL) {
      if (dst) ta_os_munmap(dst, need);
      hist_drop(g);
      huge_counted(-(intptr_t)g->map_size); /* lost: counted at its old size */
      ta_os_munmap(g, need);
      *kept = false;
      return NULL;
    }
    hist_move(g, a);
    g = a;
  }
  if (!ta_map_ready((uintptr_t)g + g->data_off)) { /* its map page refused: the span goes */
    hist_drop(g);
    huge_counted(-(intptr_t)g->map_size);
    ta_os_munmap(g, need);
    *kept = false;
    return NULL;
  }
  span_sized(g, need);
  kept_note(g, +1);
  return g;
}

/* Span h, larger than the `need` bytes of the block that took it (or was resized in it), holds
 * no more than it may past the block: its excess kept (excess_keep) where it has no huge pages
 * and the limit has room, a span more than twice too big then cut past the granule that holds
 * dirty_end (address space nothing wrote, which would raise the cache's limit while the block
 * lives); else a span far too big cut to the block, a somewhat larger one's pages dropped.
 * A span with huge pages keeps its excess so only at a take (`take`: from the cache, not a
 * realloc's resize) where fresh huge pages cost more (fresh_huge_costly): the huge pages a
 * later block faulted in again there came from memory the host had taken back, each several
 * times the cost of its 512 small pages (`large` with the keep took 0.68 of its time without
 * it; design.md, "Huge pages up front only where the host leaves free memory alone"). Elsewhere a
 * span with huge pages drops its excess: what a take drops comes back fast, and kept, the faults
 * that remained were slower (design.md, "How much the cache keeps"). */
TA_INLINE void excess_settle(ta_huge_t *h, size_t need, uint64_t since, bool take) {
  if (h->dirty_end > need && (!(h->thp & HUGE_ADVISED) || (take && fresh_huge_costly())) &&
      excess_keep(h, need, since)) {
    if (h->map_size > 2 * need) span_cut(h, ta_align_up(h->dirty_end, TA_CHUNK_SIZE));
  } else if (h->map_size > 2 * need) {
    span_cut(h, need); /* far too big: give the tail back rather than hold it resident */
  } else if (h->dirty_end > need) {
    /* Somewhat too big, and the excess may hold pages: keep the address space (the block
     * may grow into it), drop the pages, so that the block holds no more memory than it
     * asked for. Once: the excess then holds none until a block reaches into it. */
    if (ta_os_decommit((char *)h + need, h->dirty_end - need) == 0) {
      h->dirty_end = need;
      hist_cut(h, need);
    }
  }
}

/* A cached span with at least `least` bytes (the block's pages) for a block that would map
 * `need` (whole granules), owned by the caller, or NULL. A span with huge pages may end at its
 * last block's last page (span_keep): one of the same size fits again as it is. */
static ta_huge_t *cache_take(size_t least, size_t need) {
  /* Empty (a span is counted before it is published): no slot to look at. */
  if (atomic_load_explicit(&cache_bytes, memory_order_relaxed) == 0) return NULL;
  for (int attempt = 0; attempt < 4; attempt++) {
    ta_huge_t *h = NULL;
    int i = slot_pick(least, &h);
    if (i < 0) break;
    if (!slot_take((unsigned)i, h)) continue; /* someone was quicker: look again */
    if (h->map_size < least) {                /* the hint was stale */
      if (!cache_put(h)) huge_unmap(h);
      continue;
    }
    if (h->dirty_end > h->map_size) h->dirty_end = h->map_size; /* never beyond the span */
    if (found_sparse(h)) {
      /* Found sparse: kept whole, address space and pages. Its blocks wrote a few pages of
       * it, at a stride or at their ends; the next block, larger or smaller, finds those it
       * writes again. What such spans hold is bounded at their looks (sparse_kept). */
    } else {
      excess_settle(h, need, h->freed_ms, true); /* its pages unused since the span's free */
    }
    return h;
  }
  /* Nothing big enough: the largest grows into the request, keeping its resident pages, if
   * it is at least half of it (a smaller one is left for requests it fits). */
  ta_huge_t *h = NULL;
  int i = slot_pick(0, &h);
  if (i < 0 || atomic_load_explicit(&cache_size_hint[i], memory_order_relaxed) < least / 2 ||
      !slot_take((unsigned)i, h))
    return NULL;
  if (h->map_size >= least) return h;
  bool kept;
  ta_huge_t *g = span_grow(h, span_keep(h, least, need), &kept);
  if (g == NULL && kept && !cache_put(h)) huge_unmap(h);
  return g;
}

/* Unmaps the cached spans freed at least decay_ms before `now` (all of them if `all`): their
 * bytes, unmapped now or, while a statistics reader is active, when the last one leaves. */
size_t ta_huge_purge(uint64_t now, bool all) {
  size_t freed = 0;
  uint64_t next = 0;
  atomic_exchange_explicit(&ta_huge_due, 0, memory_order_seq_cst); /* RMW: see ta_purge_orphans */
  for (unsigned i = 0; i < TA_HUGE_SLOTS; i++) {
    ta_huge_t *h = atomic_load_explicit(&cache_slot[i], memory_order_relaxed);
    if (h == NULL) continue;
    uint64_t t = atomic_load_explicit(&cache_time_hint[i], memory_order_relaxed);
    if (!all && now < t + ta_decay_ms) {
      if (next == 0 || t + ta_decay_ms < next) next = t + ta_decay_ms;
      continue;
    }
    freed += slot_unmap(i, h);
  }
  freed += ta_huge_excess_purge(now, all, &next);
  if (next) ta_purge_note_global(&ta_huge_due, next);
  return freed;
}

size_t ta_huge_cached_bytes(void) { return atomic_load(&cache_bytes); }
size_t ta_huge_mapped(void) {
  intptr_t n = atomic_load(&huge_bytes);
  return n > 0 ? (size_t)n : 0;
}
size_t ta_huge_cache_room(void) { return cache_limit(0); }

/* The weights of the spans in the slots, counted one by one (for tests: the tally must agree
 * with it whenever no thread is between a slot and the tally; and the fork child). */
size_t ta_huge_cache_sum(void) {
  size_t bytes = 0;
  for (unsigned i = 0; i < TA_HUGE_SLOTS; i++) {
    ta_huge_t *h = atomic_load(&cache_slot[i]);
    if (h != NULL) bytes += cache_weight(h);
  }
  return bytes;
}

/* Fork child: a thread that was between a slot and the tally is gone; count again. */
void ta_huge_recount_after_fork(void) {
  atomic_store(&cache_bytes, ta_huge_cache_sum());
  /* An entry held by a thread the child lacks (a purge, a keep) is given up, its pages as they
   * are: the block's owner, if it is the child's thread, would wait for it for ever. The
   * forking thread's own keep, cut into by its signal handler, goes on once the handler
   * returns: its entry stays held, and what it reserved is counted. */
  intptr_t kept = 0;
  unsigned entries = 0;
  uintptr_t mine = keeping_here;
  bool mine_seen = false;
  for (unsigned i = 0; i < EXCESS_SLOTS; i++) {
    uintptr_t v = atomic_load(&excess_slot[i]);
    size_t len = atomic_load(&excess_to[i]) - atomic_load(&excess_from[i]);
    if (mine && (v & ~(uintptr_t)EXCESS_STATE) == (mine & ~(uintptr_t)EXCESS_STATE)) {
      mine_seen = true;
      kept += (intptr_t)(v & EXCESS_KEPT ? len : keeping_len);
      entries++;
    } else if (v & EXCESS_BUSY) {
      atomic_store(&excess_slot[i], 0);
    } else if (v & EXCESS_KEPT) {
      kept += (intptr_t)len;
      entries++;
    }
  }
  if (mine && !mine_seen) { /* its entry not taken yet: counted, as its thread counted it */
    kept += (intptr_t)keeping_len;
    entries++;
  }
  atomic_store(&kept_excess, kept);
  atomic_store(&excess_entries, entries);
  /* What other threads were unmapping, or had counted put off and not pushed, is leaked in
   * the child and not waited for; the forking thread's own unmap in flight is (a signal
   * handler's fork), and its own sleep counted (the unmaps put off were made:
   * ta_stats_reset_after_fork). */
  atomic_store(&unmapping, flight_here);
  atomic_store(&deferred_bytes, 0);
  atomic_store(&room_sleepers, asleep_here);
}

/* The spans in the slots (for tests), counted from the slots, not kept beside them: each put
 * and take would pay a locked read-modify-write more for it (see ta_huge_free). */
size_t ta_huge_cached_count(void) {
  size_t n = 0;
  for (unsigned i = 0; i < TA_HUGE_SLOTS; i++)
    n += atomic_load_explicit(&cache_slot[i], memory_order_relaxed) != NULL;
  return n;
}

/* The kernel refused a mapping of `need` bytes: could unmapping the cached spans make room?
 * Only if what is short is at most what the cache holds. A request the kernel refuses
 * whatever is mapped (a size beyond its overcommit heuristic, a limit far below it; a
 * program probing with malloc(2^46)) must not cost the cache: if the request less the
 * cached bytes is refused as well, unmapping them cannot help, unless the kernel refuses
 * every mapping (the count of mappings at its limit), which unmapping does cure. */
static bool purge_may_help(size_t need) {
  intptr_t later = atomic_load_explicit(&deferred_bytes, memory_order_relaxed);
  size_t cached = cached_space() + (later > 0 ? (size_t)later : 0);
  if (cached == 0) return false;
  if (need <= cached) return true;
  void *p = ta_os_mmap(need - cached);
  if (p != NULL) {
    ta_os_trim(p, need - cached);
    return true;
  }
  p = ta_os_mmap(ta_page_size);
  if (p == NULL) return true;
  ta_os_trim(p, ta_page_size);
  return false;
}

uint64_t ta_huge_epoch(void) { return atomic_load_explicit(&unmap_epoch, memory_order_acquire); }

/* A fresh span of `need` bytes for a block aligned to `align` (a granule or more): its data
 * at `align`, its meta block in the granule just below; NULL if the kernel refuses. */
static ta_huge_t *map_over_aligned(size_t need, size_t align) {
  char *m = ta_os_mmap(need + align);
  if (m == NULL) return NULL;
  char *data = (char *)ta_align_up((uintptr_t)m + TA_CHUNK_SIZE, align);
  char *start = data - TA_CHUNK_SIZE;
  char *stop = m + need + align;
  if (start > m) ta_os_trim(m, (size_t)(start - m));
  if (stop > start + need) ta_os_trim(start + need, (size_t)(stop - (start + need)));
  return (ta_huge_t *)start;
}

/* How long a refused request waits for unmaps in flight or put off by a statistics reader:
 * 100 ms (tests change it); and the futex waits it made (tests). */
_Atomic unsigned ta_huge_room_wait_ms = 100;
static _Atomic uint64_t room_sleeps;
uint64_t ta_huge_room_sleeps(void) { return atomic_load(&room_sleeps); }

/* A mapping of `need` bytes was refused (a huge span here; a chunk or an arena: alloc.c,
 * alloc_from) after `epoch` was read: whether it is worth asking again. The cached spans are
 * unmapped where that may make room (spans put off by a statistics reader count as cached);
 * or another thread's unmaps since `epoch` made some (threads refused at once under a hard
 * limit: the first to look empties the cache, and the others, finding it empty, would fail
 * with room to be had). Unmaps in flight in other threads, and, where unmapping may help,
 * the ones a statistics reader put off until it leaves, are waited for, up to 100 ms,
 * asleep (a futex wait, woken at each unmap made and each end: room_changed): a reader writing a
 * heap map into a pipe may be held up by its consumer, or be this very thread, interrupted by a
 * signal handler (then the request fails after the wait). The callers hold no lock of the
 * allocator's. */
bool ta_huge_make_room(size_t need, uint64_t epoch) {
  bool help = purge_may_help(need);
  if (help) ta_huge_purge(0, true);
  /* Pairs with slot_take's release: a slot found empty (cached_space) by another thread's
   * unmap in flight shows the count raised before it. */
  atomic_thread_fence(memory_order_acquire);
  uint64_t until = 0;
  bool judged = help; /* whether `help` saw the unmaps put off */
  asleep_here++;
  atomic_fetch_add_explicit(&room_sleepers, 1, memory_order_seq_cst); /* before any look */
  for (;;) {
    uint32_t word = atomic_load_explicit(&room_word, memory_order_seq_cst); /* first */
    if (atomic_load_explicit(&unmap_epoch, memory_order_seq_cst) != epoch) break;
    bool flight = atomic_load_explicit(&unmapping, memory_order_seq_cst) - flight_here > 0;
    bool later = atomic_load_explicit(&deferred_bytes, memory_order_seq_cst) > 0;
    if (!flight && later && !judged) {
      /* Unmaps that were in flight when the slots were found empty, put off since: judged
       * as cached bytes now, once. */
      judged = true;
      help = purge_may_help(need);
    }
    if (!flight && !(help && later)) break;
    uint64_t now = ta_os_now_ms();
    if (until == 0) until = now + atomic_load_explicit(&ta_huge_room_wait_ms, memory_order_relaxed);
    if (now >= until) break;
    atomic_fetch_add_explicit(&room_sleeps, 1, memory_order_relaxed);
    ta_os_futex_wait(&room_word, word, until - now); /* woken by room_changed */
  }
  atomic_fetch_sub_explicit(&room_sleepers, 1, memory_order_relaxed);
  asleep_here--;
  return ta_huge_epoch() != epoch;
}

void *ta_huge_alloc(ta_arena_t *a, size_t size, size_t align, bool zero, bool grows) {
  bool beyond = align >= TA_CHUNK_SIZE;
  /* Hardened: 64 bytes of canary between the meta block and the data, and a guard page
   * after the data's last page (see ta_huge_secure_arm). */
  size_t hdr = ta_secure ? TA_HUGE_HDR + TA_HUGE_CANARY : TA_HUGE_HDR;
  size_t guard = ta_secure ? ta_page_size : 0;
  size_t data_off = beyond ? TA_CHUNK_SIZE : ta_align_up(hdr, align); /* align: a power of two */
  if (size > TA_MAX_REQUEST - data_off - guard) return NULL;
  /* Whole granules: the next mapping then lands aligned by itself (see ta_os_mmap_aligned);
   * the slack is address space, never touched unless the block grows into it. */
  size_t need = ta_align_up(data_off + size + guard, beyond ? ta_page_size : TA_CHUNK_SIZE);
  size_t end = ta_align_up(data_off + size, ta_page_size); /* what the block may touch */
  ta_huge_t *h = NULL;
  bool fresh = true;

  if (!beyond) {
    h = cache_take(end + guard, need); /* the caller let what was due go back first */
    if (h) fresh = false;
  }
  if (h == NULL) {
    if (beyond && need > SIZE_MAX - align) return NULL;
    /* Refused (the mapping, or its page of the granule map under lazy commit: address space
     * or commit charge short), it is asked for once more if the cache's unmaps made room. */
    uint64_t epoch = ta_huge_epoch();
    for (bool again = false;; again = true) {
      h = beyond ? map_over_aligned(need, align) : ta_os_mmap_aligned(need, TA_CHUNK_SIZE);
      size_t short_of = beyond ? need + align : need;
      if (h != NULL) {
        if (ta_map_ready((uintptr_t)h + data_off)) break;
        ta_os_trim(h, need); /* never used */
        h = NULL;
        short_of = ta_page_size;
      }
      if (again || !ta_huge_make_room(short_of, epoch)) return NULL;
    }
  }
  bool pad = padded(data_off, size);
  if (fresh) {
    advise_fresh(h, need, end, pad, grows);
    h->map_size = need; /* a cached span keeps its own size (>= end + guard) */
    huge_counted((intptr_t)need);
  }
  if ((h->thp & HUGE_ADVISED) && pad && ta_os_hugepage(h, h->map_size, false) == 0) {
    /* A span with huge pages, for a block whose padding they would commit: none from now on
     * (what it holds stays: nothing new is committed), and it is judged afresh at its free.
     * (Should the kernel refuse, the span keeps them, and all that goes with them.) Neither
     * before nor after is it found sparse: it counts nothing in sparse_kept. */
    h->thp = 0;
    hist_drop(h);
    h->sparse_seen = 0;
    h->look_in = 0;
  } else if ((h->thp & HUGE_PADDED) && !pad) {
    /* Found dense while it served a padded block: judged again, advised then. */
    kept_note(h, -1);
    h->thp &= (uint8_t) ~(HUGE_PADDED | HUGE_JUDGED);
    hist_drop(h);
    kept_note(h, +1);
  }
  /* A realloc keeps room to grow (ta_huge_realloc); the header is sealed below. */
  if (!grows) span_cut(h, span_keep(h, end + guard, h->map_size));
  if (h->dirty_end < touch_end(h, end)) h->dirty_end = touch_end(h, end);
  /* A cached span is in the map: statistics readers read these words (TA_STORE). */
  TA_STORE(h->data_off, data_off);
  TA_STORE(h->requested, size);
  ta_huge_seal(h);
  h->next = NULL;
  h->thp &= (uint8_t)~HUGE_LOOKED; /* in use again: its next free looks, or it counts whole */
  atomic_store_explicit(&h->state, HUGE_LIVE, memory_order_relaxed);
  char *data = (char *)h + data_off;
  ta_map_set((uintptr_t)data, beyond ? TA_MAP_HUGE_AL : TA_MAP_HUGE);
  if (a != NULL) {
    TA_ADD(a->cnt.grows, fresh);
    TA_ADD(a->cnt.first_uses, fresh);
  }
  if (zero && !fresh) memset(data, 0, size);
  if (ta_secure && !ta_huge_secure_arm(h, true)) {
    ta_huge_free(h);
    if (a != NULL) TA_ADD(a->cnt.frees, 1); /* counted as a malloc too: mallocs - frees is live */
    return NULL;
  }
  return data;
}

/* Hardened build: the 64 bytes before the data hold canaries (a write below the data is
 * seen when the block is freed), and the page after the data's last page is made
 * inaccessible (a write past the end faults). arm: set both up; otherwise check the canaries
 * and open the guard page again, before the span is unmapped or cached. False when the
 * guard page cannot be set up (arm) or a canary was overwritten. */
bool ta_huge_secure_arm(ta_huge_t *h, bool arm) {
  uint64_t *c = (uint64_t *)((char *)h + h->data_off) - TA_HUGE_CANARY / 8;
  char *guard = (char *)h + ta_align_up(h->data_off + h->requested, ta_page_size);
  bool ok = true;
  for (unsigned i = 0; i < TA_HUGE_CANARY / 8; i++) {
    if (arm) c[i] = ta_canary(&c[i]);
    else ok &= c[i] == ta_canary(&c[i]);
  }
  if (ta_os_protect(guard, ta_page_size, !arm) != 0 && arm) return false;
  return ok;
}

ta_huge_t *ta_huge_hdr_checked(void *p, uint8_t kind, const char *op) {
  uintptr_t u = (uintptr_t)p;
  ta_huge_t *h;
  if (kind == TA_MAP_HUGE_AL) {
    if (u & TA_CHUNK_MASK) ta_fatal(op, p);
    h = (ta_huge_t *)(u - TA_CHUNK_SIZE);
  } else {
    h = (ta_huge_t *)(u & ~(uintptr_t)TA_CHUNK_MASK);
  }
  if (!ta_huge_check_ok(h) || (char *)h + h->data_off != (char *)p) ta_fatal(op, p);
  return h;
}

void ta_huge_free(ta_huge_t *h) {
  /* dirty_end sits in the header's last word, just before the data: a write before the
   * block that changed it could make a later decommit reach past the mapping. */
  if (h->dirty_end > h->map_size || (h->dirty_end & (ta_page_size - 1)))
    ta_fatal("free(): corrupted header before pointer", (char *)h + h->data_off);
  /* Each locked read-modify-write of a cycle waits for the program's earlier stores to reach
   * the cache: this one lets only one of two racing frees of the block go on; the cache's put
   * and take make two more each (the tally's, the slot's). No count is kept beside them. */
  uint16_t live = HUGE_LIVE;
  if (!atomic_compare_exchange_strong(&h->state, &live, HUGE_CACHED))
    ta_fatal("free(): double free of pointer", (char *)h + h->data_off);
  uint64_t since;
  (void)excess_release(h, &since); /* its pages go with the span, cached or unmapped whole */
  judge(h); /* the free is counted by the caller, in its arena (alloc.c) */
  if (h->data_off == TA_CHUNK_SIZE) { /* over-aligned: not reusable as it is */
    huge_unmap(h);
    return;
  }
  uint64_t due = (h->freed_ms = ta_os_now_ms()) + ta_decay_ms;
  if (!cache_put(h)) {
    huge_unmap(h);
    return;
  }
  /* h is published: another thread may take it, or unmap it, from here on. */
  ta_purge_note_global(&ta_huge_due, due);
}

/* A realloc that could neither grow the block in place nor move it gave its excess up first:
 * kept again (or dropped), the block as it was. NULL: the caller copies. */
static void *realloc_refused(ta_huge_t *h, bool kept, uint64_t since) {
  if (kept) {
    excess_settle(h, ta_align_up(h->data_off + h->requested, TA_CHUNK_SIZE), since, false);
    ta_huge_seal(h); /* a cut changed the span's size */
  }
  return NULL;
}

/* Resizes in place or moves the pages with mremap; NULL when neither works (the caller
 * then copies). The block stays valid on failure. */
void *ta_huge_realloc(ta_huge_t *h, size_t size) {
  if (h->data_off == TA_CHUNK_SIZE || size > TA_MAX_REQUEST - h->data_off) return NULL;
  uint64_t since = 0;
  bool kept = excess_release(h, &since);
  size_t need = ta_align_up(h->data_off + size, TA_CHUNK_SIZE);
  char *old_data = (char *)h + h->data_off;
  size_t end = ta_align_up(h->data_off + size, ta_page_size); /* what the block may touch */
  if (end <= h->map_size) {
    if (h->dirty_end < touch_end(h, end)) h->dirty_end = touch_end(h, end);
    if (kept) /* what it kept past the new size: kept again (since then), or not */
      excess_settle(h, need, since, false);
    else if (need < h->map_size / 2)
      span_cut(h, need);
    TA_STORE(h->requested, size); /* sealed with the span's size as it is now */
    ta_huge_seal(h);
    return old_data;
  }
  /* Whole granules, even where span_keep would cut a new block's mapping: a block that
   * grows is likely to grow into them (cut, the 2 MiB page it grows into next faults in
   * small pages: the realloc workload took 4.6 times the faults). */
  if (ta_os_mremap(h, h->map_size, need, NULL) != NULL) {
    kept_note(h, -1);
    span_sized(h, need);
    kept_note(h, +1);
    TA_STORE(h->requested, size);
    ta_huge_seal(h);
    if (h->dirty_end < touch_end(h, end)) h->dirty_end = touch_end(h, end);
    return old_data;
  }
  /* Move: reserve an aligned range, then let the kernel move the pages onto it. Grow
   * geometrically so that a block grown step by step moves O(log n) times. */
  size_t target = ta_align_up(need + need / 2, TA_CHUNK_SIZE);
  char *dst = ta_os_mmap_aligned(target, TA_CHUNK_SIZE);
  if (dst == NULL) {
    target = need;
    dst = ta_os_mmap_aligned(target, TA_CHUNK_SIZE);
    if (dst == NULL) return realloc_refused(h, kept, since);
  }
  size_t old_size = h->map_size;
  if (!ta_map_ready((uintptr_t)dst + h->data_off)) { /* its map page refused: copy instead */
    ta_os_trim(dst, target);                         /* never used */
    return realloc_refused(h, kept, since);
  }
  ta_map_set((uintptr_t)old_data, TA_MAP_NONE);
  if (!ta_unmap_allowed()) { /* a statistics reader may be reading the header: copy instead */
    ta_map_set((uintptr_t)old_data, TA_MAP_HUGE);
    ta_os_munmap(dst, target);
    return realloc_refused(h, kept, since);
  }
  ta_huge_t *n = ta_os_mremap(h, old_size, target, dst);
  if (n == NULL) {
    ta_map_set((uintptr_t)old_data, TA_MAP_HUGE);
    ta_os_munmap(dst, target);
    return realloc_refused(h, kept, since);
  }
  kept_note(n, -1); /* its header moved with it */
  hist_move(h, n);
  span_sized(n, target);
  kept_note(n, +1);
  TA_STORE(n->requested, size);
  ta_huge_seal(n);
  if (n->dirty_end < touch_end(n, end)) n->dirty_end = touch_end(n, end);
  char *data = (char *)n + n->data_off;
  ta_map_set((uintptr_t)data, TA_MAP_HUGE);
  return data;
}
