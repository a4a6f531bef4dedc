/*
 * span.c — blocks over 8 KiB to 256 KiB as whole pages, in a heap the whole process shares.
 *
 * (64 pages at most, within 1 MiB; from span_min_kb, past 8 KiB, at least 2 pages.)
 *
 * A span is a run of pages holding one block. Span chunks (4 MiB, aligned, TA_MAP_SPAN in
 * the granule map) begin with a table of one 16-byte entry per page (ta_spage_t); the entry
 * of a span's first page says how many pages it has and whether it is live or free, and, free,
 * when it became free and which span follows it in its bin. Blocks have no header: the data
 * starts on the span's first page, and a pointer that is not the first page of a live span
 * is refused.
 *
 * No arena owns a span. A free from any thread puts it into the process-wide bin of its page
 * count (a lock-free stack), from which any thread's next request of that many pages takes
 * it. So memory freed by one thread is reused by another instead of waiting in the freer's
 * heap; with 256 threads on 2 CPUs the busy phase of the pool workload peaked at 1.8 times
 * its live bytes with spans, against 3.0 with these sizes in each thread's medium heap.
 *
 * Bins come in sets: DIRTY spans were freed and are resident, CLEAN spans are not (given
 * back after the decay time, or fresh from the kernel). Each group of CPUs (here()) has a
 * dirty set of its own, so that a span freed on a CPU is taken again there, its lines still in
 * that CPU's cache; the clean set is one. A request is rounded to
 * its size class (8 per doubling) and that to pages, and takes, in order: a dirty span of
 * that page count from its CPU's set, then from another's, a clean one, a larger clean span
 * cut to size (the rest goes back to its bin, and is never less than the smallest span, which
 * no request could take), fresh pages from the current chunk. Spans never merge: a free span
 * is reused whole or cut; clean spans cost address space, not memory.
 *
 * A bin's head is the address of its first span with a tag in bits the address never uses
 * (the 12 below a page, those above the user address space: 24 to 29), bumped by every change: a pop that read
 * a head and its successor fails its compare-exchange if the head was taken and put back in
 * between (ABA). The links are in the chunk's table, which is never given back or unmapped,
 * so a pop may read a stale link but never faults.
 *
 * Purging (ta_span_purge) takes a bin's whole stack with one exchange, gives back the pages
 * of the spans free for the decay time and moves them to the clean bin, and puts the others
 * back: no lock, no wait for any thread. A fork child keeps what the bins held; a span a
 * thread of the parent was carrying between two bins is lost to the child, never corrupt.
 *
 * Calls down only: chunk.c for fresh chunks, os.c, dirty.c's due times.
 */
#include "internal.h"

#define STATE_SHIFT 16
#define PAGES_MASK ((uint32_t)0xffff)
enum { S_NONE = 0, S_LIVE = TA_SPAN_LIVE, S_DIRTY = TA_SPAN_DIRTY, S_CLEAN = TA_SPAN_CLEAN };
/* Sets of bins: the dirty ones of each CPU group, then the one clean set (see "Bins"). */
#define SHARDS 8
#define CLEAN SHARDS
#define SETS (SHARDS + 1)
_Static_assert((SHARDS & (SHARDS - 1)) == 0, "a power of two");

#define BINS (TA_SPAN_MAX_PAGES + 1)
#define HINT_WORDS ((BINS + 63) / 64)
#define TAG_LOW ((uintptr_t)0xfff)

/* A bin fills 128 bytes, the two lines the adjacent-line prefetcher fetches together: every
 * span malloc and free compare-exchanges a head and adds to its pending count, and bins of
 * neighbouring page counts serve different threads at once. */
typedef struct {
  _Alignas(2 * TA_LINE) _Atomic uintptr_t head;
  _Atomic int32_t pending; /* DIRTY: pages freed (+) or taken (-) not yet in ta_span_dirty */
} bin_t;
_Static_assert(sizeof(bin_t) == 2 * TA_LINE, "a bin alone in its 128 bytes");

/* A dirty bin's pages go into the count of free resident spans (dirty.c's ta_span_dirty) 16
 * at a time: one read-modify-write of the bin's own cache line, which its push or pop has
 * just written, instead of one of a line every CPU writes (that shared counter took 8% of
 * the wall time of 16 threads replacing blocks of up to 32 KiB). The count is off by at most
 * 15 pages a bin and set; only bins of under 16 pages keep a remainder: under 1 MiB a set with
 * 4 KiB pages, times the sets in use, between two purges, each of which moves every bin's
 * batch into the count. */
#define PENDING_BATCH 16

static bin_t bins[SETS][BINS];
/* Bins that may hold a span (set on a push), 128 bytes a set (the two lines the adjacent-line
 * prefetcher fetches together; the bits use the first): a set's bits change as its bins
 * empty and fill, on its own CPUs, and no other set's writes take its line away. */
static _Alignas(2 * TA_LINE) _Atomic uint64_t hint[SETS][2 * TA_LINE / sizeof(uint64_t)];
_Static_assert(HINT_WORDS <= TA_LINE / sizeof(uint64_t), "a set's hint bits in one line");
/* The current chunk | its first page not yet handed out: compare-exchanged at every cut of
 * pages never handed out, by any thread, so alone in its 128 bytes (it shared a line with
 * ta_span_max and ta_span_due, which every span malloc or free reads). */
static struct { _Alignas(2 * TA_LINE) _Atomic uintptr_t v; } bump;
_Static_assert(sizeof(bump) == 2 * TA_LINE, "nothing else is placed beside bump");

_Atomic size_t ta_span_chunks; /* span chunks taken from the kernel (not the pool) */
_Atomic uint64_t ta_span_due;  /* earliest time a dirty span may be given back; 0: none */
/* Read by every span-sized request (ta_span_serves), written at init and when threads come:
 * both initialised, so that both lie in .data, among words as rarely written, not beside the
 * due time or the chunk count. ta_span_max's first value is never used: ta_span_min says no
 * span serves until ta_span_init has set both. */
size_t ta_span_min = SIZE_MAX; /* the smallest span serving now; none before ta_span_arenas */
size_t ta_span_max = TA_MEDIUM_MAX;
static size_t span_min_set = SIZE_MAX; /* the smallest span the settings ask for */
/* Spans serve requests once the process has had this many threads with arenas at once. A
 * class's spans serve only that class, so the free spans a process holds are the sum of
 * each class's peak; a thread's medium heap merges what it frees, but holds its own peak
 * alone. With few threads the medium heap holds less (pool workload, peak resident over live
 * bytes: 2.5 against 7.2 with one thread, 2.9 against 4.4 with 4, about even at 8), with many
 * far less (3.2 against 4.3 at 32, 1.9 against 3.0 at 256). */
uint32_t ta_span_threads = TA_FEW_ARENAS;
static unsigned page_shift = 12;
/* A bin head's tag: the 12 bits below a page and those above the user address space
 * (ta_os_addr_bits: 47 on x86-64, up to 52 on arm64): 29 to 24 bits. */
static unsigned addr_bits = 47;
static uintptr_t addr_mask = (((uintptr_t)1 << 47) - 1) & ~TAG_LOW;
static size_t min_pages = 3; /* the smallest span's pages: no free span is cut below it */


static inline size_t span_pages(size_t size);

/* The smallest span: the setting, past the small sizes (8 KiB is a run's block), at least 2
 * pages (a 64 KiB page would otherwise make a 9 KiB block cost 64); none when the setting is 0
 * or the build is hardened (whose medium blocks carry headers and guards a span has not). No
 * free span is cut below the pages of the smallest request: a piece of fewer pages would
 * never be taken again (spans never merge). */
void ta_span_init(void) {
  size_t min = (size_t)ta_conf_span_min_kb << 10;
  if (min <= TA_SMALL_MAX) min = TA_SMALL_MAX + 1;
  if (min < 2 * ta_page_size) min = 2 * ta_page_size;
  size_t max = TA_SPAN_MAX_PAGES * ta_page_size;
  if (max > TA_MEDIUM_MAX) max = TA_MEDIUM_MAX;
  if (ta_conf_span_min_kb == 0 || ta_secure || min > max) min = SIZE_MAX;
  TA_STORE(span_min_set, min);
  TA_STORE(ta_span_max, max);
  TA_STORE(page_shift, (unsigned)__builtin_ctzl(ta_page_size));
  if (min != SIZE_MAX) TA_STORE(min_pages, span_pages(min));
  unsigned bits = ta_os_addr_bits();
  TA_STORE(addr_bits, bits);
  TA_STORE(addr_mask, (((uintptr_t)1 << bits) - 1) & ~TAG_LOW);
  ta_span_arenas(atomic_load_explicit(&ta_arena_count, memory_order_relaxed));
}

/* The process has had `count` arenas at once (arena.c, at each new arena): from
 * ta_span_threads on, spans serve (ta_span_min, which ta_span_serves reads: one load and
 * compare on a medium request before, as with spans off). */
void ta_span_arenas(uint32_t count) {
  if (count >= ta_span_threads && TA_LOAD(ta_span_min) != TA_LOAD(span_min_set))
    TA_STORE(ta_span_min, TA_LOAD(span_min_set));
}

static unsigned header_pages(void) {
  size_t bytes = offsetof(ta_span_chunk_t, page) + (TA_CHUNK_SIZE >> page_shift) * sizeof(ta_spage_t);
  return (unsigned)(ta_align_up(bytes, ta_page_size) >> page_shift);
}

static inline ta_span_chunk_t *chunk_of(const void *p) {
  return (ta_span_chunk_t *)((uintptr_t)p & ~TA_CHUNK_MASK);
}
static inline ta_spage_t *entry_of(const void *p) {
  return &chunk_of(p)->page[((uintptr_t)p & TA_CHUNK_MASK) >> page_shift];
}
static inline uint32_t info(unsigned state, size_t pages) {
  return (uint32_t)state << STATE_SHIFT | (uint32_t)pages;
}
static inline size_t pages_of(size_t size) {
  return (size + ta_page_size - 1) >> page_shift;
}
/* A request's span: its size class (8 per doubling), rounded up to a page. Spans of one class
 * serve each other's requests: with a span for every page count, blocks of random sizes left
 * free spans no request fitted (a single-threaded pool held 15 times its live bytes). */
static inline size_t span_pages(size_t size) { return pages_of(ta_class_size[ta_size_class(size)]); }

/* ---------------------------------------------------------------- the bins */

/* The tag's two parts count as one number (wrapping at 2^(76 - bits)): with the address bits
 * between them set, the carry out of the low part runs through them into the high part. */
static inline uintptr_t head_make(uintptr_t addr, uintptr_t old) {
  return addr | (((old | addr_mask) + 1) & ~addr_mask);
}
static inline void *head_addr(uintptr_t h) { return (void *)(h & addr_mask); }
uintptr_t ta_span_head_next(uintptr_t addr, uintptr_t old) { return head_make(addr, old); }

/* Hint bits: a push sets its bin's after the push, a taker that found the bin empty clears
 * it and then looks at the bin again. All four accesses are sequentially consistent, so that
 * one of the two sees the other (on arm64 too): a bin never holds spans with its bit clear. */
static void hint_set(unsigned set, size_t n) {
  uint64_t bit = (uint64_t)1 << (n & 63);
  if (!(atomic_load_explicit(&hint[set][n >> 6], memory_order_seq_cst) & bit))
    atomic_fetch_or_explicit(&hint[set][n >> 6], bit, memory_order_seq_cst);
}

/* Bin n of `set` was found empty: its bit is cleared, then the bin looked at again, in case a
 * push came in between (its hint_set may have come before the clear). The first, relaxed look
 * at the bit only skips a clear: a bit left set costs a look, never a span. */
static void hint_clear(unsigned set, size_t n) {
  uint64_t bit = (uint64_t)1 << (n & 63);
  if (!(atomic_load_explicit(&hint[set][n >> 6], memory_order_relaxed) & bit)) return;
  atomic_fetch_and_explicit(&hint[set][n >> 6], ~bit, memory_order_seq_cst);
  if (head_addr(atomic_load_explicit(&bins[set][n].head, memory_order_seq_cst)) != NULL)
    hint_set(set, n);
}

/* Pushes the chain first..last (linked through their entries) onto bin n of `set`. */
static void push_chain(unsigned set, size_t n, void *first, void *last) {
  _Atomic uintptr_t *head = &bins[set][n].head;
  uintptr_t h = atomic_load_explicit(head, memory_order_relaxed);
  do {
    atomic_store_explicit(&entry_of(last)->next, (uintptr_t)head_addr(h), memory_order_relaxed);
  } while (!atomic_compare_exchange_weak_explicit(head, &h, head_make((uintptr_t)first, h),
                                                  memory_order_seq_cst, memory_order_relaxed));
  hint_set(set, n);
}

static void *pop(unsigned set, size_t n) {
  _Atomic uintptr_t *head = &bins[set][n].head;
  uintptr_t h = atomic_load_explicit(head, memory_order_acquire);
  for (;;) {
    void *p = head_addr(h);
    if (p == NULL) return NULL;
    /* p may be taken and reused meanwhile: its link may be stale, the tag then differs. */
    uintptr_t next = atomic_load_explicit(&entry_of(p)->next, memory_order_relaxed);
    if (atomic_compare_exchange_weak_explicit(head, &h, head_make(next, h), memory_order_acquire,
                                              memory_order_acquire))
      return p;
  }
}

/* Takes the whole stack of a bin. */
static void *take_all(unsigned set, size_t n) {
  _Atomic uintptr_t *head = &bins[set][n].head;
  uintptr_t h = atomic_load_explicit(head, memory_order_acquire);
  while (head_addr(h) != NULL &&
         !atomic_compare_exchange_weak_explicit(head, &h, head_make(0, h), memory_order_acquire,
                                                memory_order_acquire))
    ;
  return head_addr(h);
}

/* Free resident pages counted in the spans' budget (dirty.c); fewer when pages < 0 (a purge, a
 * batch of takes): multiplied, as a negative count must not be shifted. */
static void add_pages(intptr_t pages) { ta_dirty_add_spans(pages * ((intptr_t)1 << page_shift)); }

static void count_dirty(unsigned set, size_t bin, intptr_t pages) {
  _Atomic int32_t *pending = &bins[set][bin].pending;
  int32_t now = atomic_fetch_add_explicit(pending, (int32_t)pages, memory_order_relaxed) + (int32_t)pages;
  /* Whoever moves the batch takes it out of the bin first: the bins' pending pages and the
   * count add up to the true figure, but for a moment. */
  if ((now >= PENDING_BATCH || now <= -PENDING_BATCH) &&
      atomic_compare_exchange_strong_explicit(pending, &now, 0, memory_order_relaxed,
                                              memory_order_relaxed))
    add_pages(now);
}

/* Frees span p of n pages (its entry already says so) into its bin. */
static void put(unsigned set, void *p, size_t n) {
  push_chain(set, n, p, p);
  if (set != CLEAN) count_dirty(set, n, (intptr_t)n);
}

/* ---------------------------------------------------------------- fresh pages */

/* Hands out pages [at, units) of chunk c as clean spans (never touched: not resident), none
 * smaller than the smallest span (a tail below it is never handed out). */
static void give_rest(ta_span_chunk_t *c, size_t at) {
  size_t units = TA_CHUNK_SIZE >> page_shift;
  size_t max_pages = TA_LOAD(ta_span_max) >> page_shift;
  while (units - at >= min_pages) {
    size_t left = units - at, n = left < max_pages ? left : max_pages;
    /* The last piece a span too, when the one before can give it pages. */
    if (left - n != 0 && left - n < min_pages && left - min_pages >= min_pages) n = left - min_pages;
    void *p = (char *)c + (at << page_shift);
    atomic_store_explicit(&c->page[at].info, info(S_CLEAN, n), memory_order_relaxed);
    TA_STORE(c->page[at].word, 0);
    put(CLEAN, p, n);
    at += n;
  }
}

static ta_span_chunk_t *chunk_new(void) {
  bool from_brk, pooled;
  uint8_t commit; /* shared by every thread: mapped read-write whole (chunk.c, "Commit charge") */
  ta_span_chunk_t *c =
      (ta_span_chunk_t *)ta_chunk_fresh(&from_brk, &pooled, TA_CHUNK_SIZE, false, &commit);
  if (c == NULL) return NULL;
  /* Where transparent huge pages are always on, the chunk came told to have none (os.c,
   * ta_os_thp_off): clean spans stay out of memory. */
  /* Fresh from the kernel, or given back whole: the table reads zero (no span starts). */
  c->check = (uintptr_t)c ^ ta_secret;
  c->from_brk = from_brk;
  c->first = header_pages();
  if (!pooled) atomic_fetch_add_explicit(&ta_span_chunks, 1, memory_order_relaxed);
  ta_map_set((uintptr_t)c, TA_MAP_SPAN);
  return c;
}

/* n pages never handed out, from the current chunk or a new one. */
static void *carve(size_t n) {
  size_t units = TA_CHUNK_SIZE >> page_shift;
  uintptr_t b = atomic_load_explicit(&bump.v, memory_order_acquire);
  for (;;) {
    ta_span_chunk_t *c = (ta_span_chunk_t *)(b & ~TA_CHUNK_MASK);
    size_t at = b & TA_CHUNK_MASK;
    if (c != NULL && at + n <= units) {
      if (atomic_compare_exchange_weak_explicit(&bump.v, &b, b + n, memory_order_acquire,
                                                memory_order_acquire))
        return (char *)c + (at << page_shift);
      continue;
    }
    ta_span_chunk_t *fresh = chunk_new(); /* outside any lock: a system call */
    if (fresh == NULL) return NULL;
    size_t first = fresh->first;
    if (atomic_compare_exchange_strong_explicit(&bump.v, &b, (uintptr_t)fresh | (first + n),
                                                memory_order_acq_rel, memory_order_acquire)) {
      if (c != NULL) give_rest(c, at); /* the old chunk's tail: nobody can take it now */
    } else {
      give_rest(fresh, first + n); /* another thread installed its chunk first */
    }
    return (char *)fresh + (first << page_shift);
  }
}

/* ---------------------------------------------------------------- allocation */

static int first_set(unsigned set, size_t from) {
  for (size_t w = from >> 6; w < HINT_WORDS; w++) {
    uint64_t bits = atomic_load_explicit(&hint[set][w], memory_order_relaxed);
    if (w == from >> 6) bits &= ~(uint64_t)0 << (from & 63);
    if (bits) return (int)(w * 64 + (size_t)__builtin_ctzll(bits));
  }
  return -1;
}

/* A span of more than n pages from a bin of `set`, cut to n (the rest goes back: at least the
 * smallest span, as no request could take less). Only clean spans are cut: cutting resident
 * spans into pieces no class asks for kept them resident and unused. */
static void *take_larger(unsigned set, size_t n, bool *zeroed) {
  for (int m = first_set(set, n + min_pages); m > 0; m = first_set(set, (size_t)m + 1)) {
    void *p = pop(set, (size_t)m);
    if (p == NULL) {
      hint_clear(set, (size_t)m);
      continue;
    }
    if (set != CLEAN) count_dirty(set, (size_t)m, -(intptr_t)m);
    void *rest = (char *)p + (n << page_shift);
    ta_spage_t *e = entry_of(p), *r = entry_of(rest);
    /* p's entry first: a statistics walk never sees two spans over the same pages. */
    atomic_store_explicit(&e->info, info(S_LIVE, n), memory_order_relaxed);
    uint32_t stamp = TA_LOAD(e->word);
    TA_STORE(r->word, stamp);
    atomic_store_explicit(&r->info, info(set != CLEAN ? S_DIRTY : S_CLEAN, (size_t)m - n),
                          memory_order_relaxed);
    put(set, rest, (size_t)m - n);
    if (set != CLEAN) /* a purge may have passed its bin already: its due time, again */
      ta_purge_note_global(&ta_span_due, ta_os_now_ms() + ta_decay_ms);
    *zeroed = set == CLEAN;
    return p;
  }
  return NULL;
}

size_t ta_span_usable_for(size_t size) { return span_pages(size) << page_shift; }

/* The dirty set of the CPU the thread runs on: its rank among the process's CPUs, with up to
 * SHARDS of them; beyond, CPUs of neighbouring ranks share a set (mostly a socket's, as CPUs
 * are usually numbered; the two threads of a core, numbered apart, may not). */
static unsigned here(void) {
  unsigned n = ta_os_ncpu(), r = ta_os_cpu();
  return (n <= SHARDS ? r : r * SHARDS / n) & (SHARDS - 1);
}

/* A dirty span of n pages: from the set `at`, else from another CPU group's whose hint says
 * it may hold one (most sets are never used where there are few CPUs). */
static void *pop_dirty(unsigned at, size_t n) {
  uint64_t bit = (uint64_t)1 << (n & 63);
  for (unsigned i = 0; i < SHARDS; i++) {
    unsigned set = (at + i) & (SHARDS - 1);
    if (i != 0 && !(atomic_load_explicit(&hint[set][n >> 6], memory_order_relaxed) & bit)) continue;
    void *p = pop(set, n);
    if (p != NULL) {
      count_dirty(set, n, -(intptr_t)n);
      return p;
    }
    hint_clear(set, n); /* or every miss would look at every set that ever held the class */
  }
  return NULL;
}

void *ta_span_alloc(size_t size, bool *zeroed) {
  size_t n = span_pages(size);
  unsigned at = here();
  void *p = pop_dirty(at, n);
  *zeroed = false;
  if (p == NULL) {
    if ((p = pop(CLEAN, n)) != NULL) {
      *zeroed = true;
    } else if ((p = take_larger(CLEAN, n, zeroed)) == NULL) {
      p = carve(n);
      if (p != NULL) *zeroed = true;
      /* No new chunk (ENOMEM): a resident span of a larger class, cut, rather than fail. */
      for (unsigned i = 0; p == NULL && i < SHARDS; i++)
        p = take_larger((at + i) & (SHARDS - 1), n, zeroed);
      if (p == NULL) return NULL;
    }
  }
  ta_spage_t *e = entry_of(p);
  TA_STORE(e->word, 0); /* live: the requested size, for the statistics */
  atomic_store_explicit(&e->info, info(S_LIVE, n), memory_order_relaxed);
  return p;
}

/* ---------------------------------------------------------------- checks and free */

/* The entry of live span p, or NULL if p is not the start of one (0 in *state), or the
 * state it is in. */
static ta_spage_t *entry_checked(const void *p, unsigned *state) {
  ta_span_chunk_t *c = chunk_of(p);
  uintptr_t off = (uintptr_t)p & TA_CHUNK_MASK;
  *state = S_NONE;
  if (TA_LOAD(c->check) != ((uintptr_t)c ^ ta_secret) || (off & (ta_page_size - 1)) != 0 ||
      (off >> page_shift) < c->first)
    return NULL;
  ta_spage_t *e = &c->page[off >> page_shift];
  *state = atomic_load_explicit(&e->info, memory_order_relaxed) >> STATE_SHIFT;
  return e;
}

size_t ta_span_usable(const void *p, const char *op) {
  unsigned state;
  ta_spage_t *e = entry_checked(p, &state);
  if (e == NULL || state != S_LIVE) ta_fatal(op, (void *)p);
  return (size_t)(atomic_load_explicit(&e->info, memory_order_relaxed) & PAGES_MASK) << page_shift;
}

void ta_span_free(void *p) {
  unsigned state;
  ta_spage_t *e = entry_checked(p, &state);
  if (e == NULL || state == S_NONE) ta_fatal("free(): invalid pointer", p);
  uint32_t v = atomic_load_explicit(&e->info, memory_order_relaxed);
  /* The exchange decides between two frees of one block racing in two threads. */
  if ((v >> STATE_SHIFT) != S_LIVE ||
      !atomic_compare_exchange_strong_explicit(&e->info, &v, info(S_DIRTY, v & PAGES_MASK),
                                               memory_order_relaxed, memory_order_relaxed))
    ta_fatal("free(): double free of pointer", p);
  uint64_t now = ta_os_now_ms();
  TA_STORE(e->word, (uint32_t)now);
  put(here(), p, v & PAGES_MASK);
  /* After the push (seq_cst), as a purge takes the bins after clearing the due time: one of
   * the two sees the other. */
  if (atomic_load_explicit(&ta_span_due, memory_order_seq_cst) == 0)
    ta_purge_note_global(&ta_span_due, now + ta_decay_ms);
}

/* Live span p keeps its first `size` bytes' pages; the rest becomes a free span, when it is at
 * least the smallest span (else p keeps it). */
void ta_span_shrink(void *p, size_t size) {
  ta_spage_t *e = entry_of(p);
  size_t n = atomic_load_explicit(&e->info, memory_order_relaxed) & PAGES_MASK, keep = span_pages(size);
  if (keep + min_pages > n) return;
  void *rest = (char *)p + (keep << page_shift);
  ta_spage_t *r = entry_of(rest);
  uint64_t now = ta_os_now_ms();
  atomic_store_explicit(&e->info, info(S_LIVE, keep), memory_order_relaxed); /* p's first */
  TA_STORE(r->word, (uint32_t)now);
  atomic_store_explicit(&r->info, info(S_DIRTY, n - keep), memory_order_relaxed);
  put(here(), rest, n - keep);
  if (atomic_load_explicit(&ta_span_due, memory_order_seq_cst) == 0)
    ta_purge_note_global(&ta_span_due, now + ta_decay_ms);
}

/* Whether a span of `usable` bytes may be what a shrink to `size` left (ta_span_shrink keeps a
 * span whole when the rest would be under the smallest span). */
bool ta_span_kept_for(size_t usable, size_t size) {
  if (size < TA_LOAD(ta_span_min) || size > usable) return false;
  return (usable >> page_shift) < span_pages(size) + min_pages;
}

void ta_span_set_requested(void *p, size_t requested) { TA_STORE(entry_of(p)->word, (uint32_t)requested); }

/* ---------------------------------------------------------------- purging */

/* Gives back the pages of the dirty spans free for at least `age` ms (all of them if 0: the
 * decay time when due, less when over the budget, 0 for malloc_trim) and moves them to the
 * clean bins. A bin is taken whole with one exchange and what stays is put back at once,
 * before any system call, so allocation misses it for a few loads only. Returns the bytes
 * given back. */
size_t ta_span_purge(uint64_t now, uint64_t age) {
  size_t freed = 0;
  uint64_t next = 0;
  uint64_t horizon = age > ta_decay_ms ? age : ta_decay_ms; /* when what stays comes due */
  atomic_exchange_explicit(&ta_span_due, 0, memory_order_seq_cst);
  /* Against a free that pushed and then found a due time (seq_cst on both sides): a full
   * fence between the exchange and the loads of the bins. Every bin is looked at, not only
   * those whose hint is set: a bin may hold spans while a taker clears and rechecks it. */
  atomic_thread_fence(memory_order_seq_cst);
  for (unsigned k = 0; k < SHARDS * BINS; k++) { /* every dirty set's bins */
    unsigned set = k / BINS;
    size_t n = k % BINS;
    if (n == 0) continue;
    /* The bin's batch goes into the count now, and what this purge gives back goes there
     * directly (below), so that the budget's check after a purge reads the true figure. */
    _Atomic int32_t *pending = &bins[set][n].pending;
    int32_t pend = atomic_load_explicit(pending, memory_order_relaxed);
    if (pend != 0 && (pend = atomic_exchange_explicit(pending, 0, memory_order_relaxed)) != 0)
      add_pages(pend);
    if (head_addr(atomic_load_explicit(&bins[set][n].head, memory_order_relaxed)) == NULL) continue;
    void *p = take_all(set, n);
    if (p == NULL) continue;
    void *keep = NULL, *keep_last = NULL, *gone = NULL;
    size_t bytes = (size_t)n << page_shift, count = 0;
    /* The clock once per bin, after the take: a span freed after it is never older than 0
     * (its stamp may still pass a clock read before; the difference is then negative). */
    uint32_t t = (uint32_t)ta_os_now_ms();
    while (p != NULL) {
      ta_spage_t *e = entry_of(p);
      void *following = (void *)atomic_load_explicit(&e->next, memory_order_relaxed);
      int32_t d = (int32_t)(t - TA_LOAD(e->word));
      uint64_t span_age = d > 0 ? (uint64_t)d : 0;
      if (span_age >= age) {
        atomic_store_explicit(&e->next, (uintptr_t)gone, memory_order_relaxed);
        gone = p;
      } else { /* kept in order: the warmest first */
        atomic_store_explicit(&e->next, 0, memory_order_relaxed);
        if (keep_last) atomic_store_explicit(&entry_of(keep_last)->next, (uintptr_t)p, memory_order_relaxed);
        else keep = p;
        keep_last = p;
        uint64_t due = now + (horizon > span_age ? horizon - span_age : 0);
        if (next == 0 || due < next) next = due;
      }
      p = following;
    }
    if (keep) push_chain(set, (size_t)n, keep, keep_last);
    /* Then the system calls, on spans no other thread can reach. */
    void *clean = NULL, *clean_last = NULL;
    for (p = gone; p != NULL;) {
      ta_spage_t *e = entry_of(p);
      void *following = (void *)atomic_load_explicit(&e->next, memory_order_relaxed);
      bool ok = ta_os_decommit(p, bytes) == 0;
      atomic_store_explicit(&e->info, info(ok ? S_CLEAN : S_DIRTY, (size_t)n), memory_order_relaxed);
      if (ok) {
        count++;
        atomic_store_explicit(&e->next, (uintptr_t)clean, memory_order_relaxed);
        if (clean == NULL) clean_last = p;
        clean = p;
      } else {
        push_chain(set, (size_t)n, p, p); /* the kernel refused: resident, counted still */
        next = next == 0 || now + horizon < next ? now + horizon : next;
      }
      p = following;
    }
    if (count) {
      add_pages(-(intptr_t)(count * n));
      freed += count * bytes;
      push_chain(CLEAN, (size_t)n, clean, clean_last);
    }
  }
  /* Not again for an eighth of the decay time: each purge takes and puts back every bin, and
   * with spans freed all the time the oldest one kept is due within milliseconds. */
  if (next && next < now + ta_decay_ms / 8) next = now + ta_decay_ms / 8;
  if (next) ta_purge_note_global(&ta_span_due, next);
  return freed;
}

/* Fork child: a bin the parent's purger had taken is lost to the child; the count of free
 * resident spans is made again from what the bins hold, and their due time noted. */
void ta_span_after_fork(void) {
  size_t bytes = 0;
  for (unsigned set = 0; set < SETS; set++)
    for (size_t n = 1; n <= TA_SPAN_MAX_PAGES; n++) {
      void *p = head_addr(atomic_load(&bins[set][n].head));
      if (p != NULL) hint_set(set, n); /* a parent's thread may have been before setting it */
      for (; set != CLEAN && p; p = (void *)atomic_load_explicit(&entry_of(p)->next, memory_order_relaxed))
        bytes += n << page_shift;
      atomic_store(&bins[set][n].pending, 0);
    }
  atomic_store(&ta_span_dirty.v, bytes);
  atomic_store(&ta_span_due, bytes ? ta_os_now_ms() + ta_decay_ms : 0);
}

/* ---------------------------------------------------------------- walking (statistics) */

void ta_span_walk(void (*fn)(const void *p, size_t bytes, unsigned state, uint32_t word, void *arg),
                  ta_span_chunk_t *c, void *arg) {
  size_t units = TA_CHUNK_SIZE >> page_shift;
  for (size_t i = c->first; i < units;) {
    uint32_t v = atomic_load_explicit(&c->page[i].info, memory_order_relaxed);
    size_t n = v & PAGES_MASK;
    unsigned st = v >> STATE_SHIFT;
    if (st == S_NONE || n == 0 || i + n > units) {
      i++; /* not handed out yet, or changing under us */
      continue;
    }
    fn((char *)c + (i << page_shift), n << page_shift, st, TA_LOAD(c->page[i].word), arg);
    i += n;
  }
}
