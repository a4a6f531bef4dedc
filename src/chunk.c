/*
 * chunk.c — 4 MiB chunks: where they come from, the map that finds them, where they go.
 *
 * A chunk comes from the program break when the break can move: under the break lock we
 * read the break, move it to the next 4 MiB boundary plus one chunk, and record it. The
 * gap below the boundary is never touched, so it costs address space, not memory. When
 * sbrk fails (RLIMIT_DATA, a mapping right above the break, or a build that must not
 * share the break with another allocator) the chunk is mapped instead, over-allocated and
 * trimmed to alignment.
 *
 * The granule map (ta_keys.map) holds one byte per 4 MiB granule of the user address space
 * the kernel hands out (os.c, ta_os_addr_bits: 47 bits on x86-64, 48 on arm64): 32 or 64 MiB
 * of zero-filled address space mapped once by ta_init, of which only the touched pages
 * become resident (one 4 KiB page of the map covers 16 GiB).
 *
 * Where the kernel does not overcommit, a chunk is address space whose pages are committed
 * (charged against the commit limit) as its arena uses them: see "Commit charge" below.
 *
 * Empty chunks stay with their arena for reuse; purge.c gives their pages back later. An
 * arena that needs a chunk and has none of its own takes, before any from the kernel, a
 * resident empty chunk of another arena that does not need it (its thread is gone or
 * blocked, or the arena holds more than its demand): see "Spare chunks" below. A break
 * chunk given back whole (its header too) goes to the process-wide pool below, which any
 * arena takes from before it asks the kernel for more.
 *
 * Also here, as they are what the fast paths read besides the thread's own arena: the secret
 * of the check words and the keys of the free lists (drawn once by ta_init, arena.c), and
 * the empty run every class of a thread without an arena points at. And the shadow arrays
 * of requested sizes a small chunk may carry (statistics: stats.c reads them).
 */
#include "internal.h"

uintptr_t ta_secret;
_Alignas(64) ta_keys_t ta_keys;
_Static_assert(sizeof(ta_keys_t) <= 64, "the fast paths' keys and map: one cache line");
ta_run_t ta_empty_run; /* free == NULL, owner == NULL: never matches a block */

/* Whether chunks may come from the break. The replacement library's ta_init says yes; the
 * ta_ API library's must not, because the process's own malloc moves the break without our
 * lock. A test may have decided before (ta_chunk_use_brk). */
static _Atomic int brk_state; /* 0: not yet decided, 1: use the break, 2: do not */

void ta_map_set(uintptr_t addr, uint8_t kind) {
  atomic_store_explicit(&ta_keys.map[addr >> TA_CHUNK_SHIFT], kind, memory_order_release);
}

size_t ta_page_size = TA_PAGE_MIN;
size_t ta_hugepage_size = (size_t)2 << 20;

/* The page every page-sized step uses: the kernel's, or a larger one a test asked for
 * (page_kb, conf.c: a machine with 4 KiB pages then behaves as one with 16 or 64 KiB pages
 * would). Runs hold whole pages of the largest size, so larger ones are not supported. Set
 * by ta_init before the first chunk; the huge page is the kernel's. */
size_t ta_pages_wanted(void) {
  size_t page = ta_os_page_size();
  if (ta_conf_page_size > page && ta_conf_page_size <= TA_PAGE_MAX) page = ta_conf_page_size;
  return page;
}

void ta_pages_init(void) {
  size_t page = ta_pages_wanted();
  if (page > TA_PAGE_MAX) ta_fatal("init: pages larger than 64 KiB are not supported, size", (void *)page);
  size_t huge = ta_os_hugepage_size();
  TA_STORE(ta_page_size, page);
  TA_STORE(ta_hugepage_size, huge > page ? huge : page);
}

/* With lazy commit (below, "Commit charge") the map is mapped read-only: a kernel that never
 * overcommits would charge all of it (32 MiB at 47 bits) in every process, MAP_NORESERVE or
 * not. Each of its pages, which covers 16 GiB of address space with 4 KiB pages, is made
 * writable before its first entry is set (ta_map_ready): a process makes a few such calls in
 * its life. Bit i of map_open: page i is writable. */
#define MAP_PAGES_MAX (((size_t)1 << (TA_ADDR_BITS_MAX - TA_CHUNK_SHIFT)) / TA_PAGE_MIN)
static bool map_read_only;
static _Atomic uint64_t map_open[MAP_PAGES_MAX / 64];

/* Maps the granule map, once, before any chunk exists (ta_init). Its address is stored before
 * its size is published with a release store: a reader that sees the size (ta_map_granules,
 * acquire) sees the address too; one that sees 0 treats every pointer as not ours. */
bool ta_map_init(void) {
  if (ta_map_granules() != 0) return true;
  size_t granules = (size_t)1 << (ta_os_addr_bits() - TA_CHUNK_SHIFT);
  map_read_only = ta_commit_lazy();
  _Atomic uint8_t *map = ta_os_reserve(granules, !map_read_only);
  if (map == NULL) return false;
  ta_keys.map = map;
  __atomic_store_n(&ta_keys.granules, granules, __ATOMIC_RELEASE);
  return true;
}

bool ta_map_ready(uintptr_t addr) {
  if (!map_read_only) return true;
  size_t page = ta_os_page_size(), i = (addr >> TA_CHUNK_SHIFT) / page;
  uint64_t bit = (uint64_t)1 << (i % 64);
  if (atomic_load_explicit(&map_open[i / 64], memory_order_acquire) & bit) return true;
  /* Two threads may open the same page: both calls succeed alike. */
  if (ta_os_commit((char *)ta_keys.map + i * page, page) != 0) return false;
  atomic_fetch_or_explicit(&map_open[i / 64], bit, memory_order_release);
  return true;
}

static void *chunk_from_brk(bool *ok) {
  *ok = false;
  ta_brk_lock();
  char *cur = ta_os_brk_get();
  void *res = NULL;
  if (cur != (void *)-1 && cur != NULL) {
    char *aligned = (char *)ta_align_up((uintptr_t)cur, TA_CHUNK_SIZE);
    if (ta_os_brk_set(cur, aligned + TA_CHUNK_SIZE) == 0) res = aligned;
  }
  ta_brk_unlock();
  *ok = res != NULL;
  if (res != NULL) ta_os_thp_off(res, TA_CHUNK_SIZE); /* as every mapping (os.c) */
  return res;
}

#define SHADOW_BYTES ((size_t)TA_RUNS_PER_CHUNK * TA_SHADOW_RUN_ENTRIES * sizeof(uint16_t))

uint16_t *ta_shadow_new(void) { return ta_os_mmap(SHADOW_BYTES); }

void ta_shadow_free(uint16_t *s) {
  if (ta_unmap_allowed()) ta_os_munmap(s, SHADOW_BYTES);
  else ta_os_decommit(s, SHADOW_BYTES);
}

/* Turns brk use on or off (unit tests exercise the break path in their own process). */
void ta_chunk_use_brk(bool on) { atomic_store(&brk_state, on ? 1 : 2); }

/* The library's default, at initialisation (ta_init), unless a test decided already. */
void ta_chunk_brk_default(bool on) {
  int undecided = 0;
  atomic_compare_exchange_strong(&brk_state, &undecided, on ? 1 : 2);
}

static void *pool_take(uintptr_t want, bool hold, int *slot);

/* ---- Commit charge
 *
 * Under vm.overcommit_memory=2 the kernel charges every writable private byte mapped
 * against its commit limit when it is mapped, touched or not, and refuses what passes the
 * limit. Each arena takes a chunk for its runs and one for its medium blocks: a thread that
 * allocates one block of each was charged 8 MiB, 1,000 such threads 8 GiB. So when the
 * kernel never overcommits (ta_os_overcommit_never), or the setting lazy_commit says so, a
 * new chunk is a reservation (no access, no charge) of which only what its first use needs
 * is committed (read-write, charged): a small chunk's header and first run slot, a medium
 * chunk's header and its tail (the units that hold its end marker and its top's footer).
 * Its arena commits more, under its lock, before it first writes there: a small chunk up
 * to the end of each run slot it takes (slots are taken lowest first), a medium chunk up to
 * the end of each block it cuts from its top or grows into it (medium.c, top_commit). Each
 * commit at least doubles what the chunk had. A commit the kernel refuses fails that
 * allocation (ENOMEM), as a refused mapping does. What is committed stays so while the
 * chunk is mapped (free pages go back with MADV_DONTNEED, which keeps the charge; the
 * charge goes when the chunk is unmapped): statistics readers, which walk chunks they do
 * not own, rely on that (ta_chunk_holds). Such chunks are mapped, never taken from the
 * break: the break charges every byte it covers, the gap to the next 4 MiB boundary too.
 * Span chunks, which all threads share, are mapped read-write whole.
 * c->commit says what is committed: units from the start, the tail (TA_COMMIT_TAIL);
 * TA_COMMIT_ALL for a chunk committed whole, as every chunk is without lazy commit. */
static _Atomic int lazy_state; /* 0: not yet decided, 1: lazy commit, 2: every chunk whole */

bool ta_commit_lazy(void) { return atomic_load_explicit(&lazy_state, memory_order_relaxed) == 1; }

/* Lazy commit on or off for the chunks mapped from now on (the setting lazy_commit, tests). */
void ta_chunk_lazy_commit(bool on) { atomic_store(&lazy_state, on ? 1 : 2); }

/* At initialisation (ta_init): the setting, else whether the kernel overcommits; unless a
 * test decided already. */
void ta_chunk_commit_default(void) {
  int want = ta_conf_lazy_commit >= 0 ? ta_conf_lazy_commit : ta_os_overcommit_never();
  int undecided = 0;
  atomic_compare_exchange_strong(&lazy_state, &undecided, want ? 1 : 2);
}

/* The record of `units` committed from a chunk's start, and of its tail if `tail`. */
static uint8_t commit_word(unsigned units, bool tail) {
  if (units >= TA_COMMIT_ALL || (tail && units >= ta_commit_tail_unit())) return TA_COMMIT_ALL;
  return (uint8_t)(tail ? units | TA_COMMIT_TAIL : units);
}

/* Commits chunk c from its start up to `end` bytes at least (see above); false when the
 * kernel refuses. Only the chunk's owner, under its lock, commits. */
bool ta_chunk_commit(ta_chunk_t *c, size_t end) {
  unsigned have = c->commit & TA_COMMIT_UNITS, tail = c->commit & TA_COMMIT_TAIL;
  unsigned need = (unsigned)((end + TA_COMMIT_UNIT - 1) >> TA_COMMIT_SHIFT);
  if (need <= have) return true;
  unsigned top = tail ? ta_commit_tail_unit() : TA_COMMIT_ALL;
  unsigned want = have * 2 > need ? have * 2 : need;
  if (want > top) want = top;
  if (need > top) need = top;
  char *from = (char *)c + ((size_t)have << TA_COMMIT_SHIFT);
  if (ta_os_commit(from, (size_t)(want - have) << TA_COMMIT_SHIFT) != 0) {
    /* The doubling may be what passed the limit: what is needed, alone. */
    if (want == need || ta_os_commit(from, (size_t)(need - have) << TA_COMMIT_SHIFT) != 0)
      return false;
    want = need;
  }
  TA_STORE(c->commit, commit_word(want, tail));
  return true;
}

/* Commits the tail of chunk c, of which `have` units from the start are committed. */
static bool commit_tail_units(void *c, unsigned have) {
  unsigned first = ta_commit_tail_unit(), from = have > first ? have : first;
  size_t at = (size_t)from << TA_COMMIT_SHIFT;
  return from >= TA_COMMIT_ALL || ta_os_commit((char *)c + at, TA_CHUNK_SIZE - at) == 0;
}

/* Commits chunk c's tail, which a medium chunk needs; false if the kernel refuses. */
static bool commit_tail(ta_chunk_t *c) {
  unsigned have = c->commit & TA_COMMIT_UNITS;
  if (c->commit & TA_COMMIT_TAIL || have >= TA_COMMIT_ALL) return true;
  if (!commit_tail_units(c, have)) return false;
  TA_STORE(c->commit, commit_word(have, true));
  return true;
}

/* A fresh chunk whose map page could not be opened (ta_map_ready): unmapped, or, from the
 * break, into the pool for a later try (the break cannot come down under other chunks). */
static void fresh_unused(void *c, bool from_brk) {
  if (!from_brk) {
    ta_os_trim(c, TA_CHUNK_SIZE); /* never used */
    return;
  }
  int slot = ta_chunk_pool_reserve();
  if (slot >= 0) ta_chunk_pool_put(slot, c);
}

/* Where a fresh chunk comes from: the pool of returned break chunks (below; *pooled says
 * so), else a reservation when commit is lazy, else the break when it may move, else a
 * mapping. A reservation is committed for its first `first` bytes (rounded up to a unit),
 * and its tail too with `tail`: *commit says what is (TA_COMMIT_ALL: all of it). */
static void *fresh_from(bool *from_brk, bool *pooled, size_t first, bool tail, uint8_t *commit) {
  *commit = TA_COMMIT_ALL;
  void *c = pool_take(0, false, NULL);
  *pooled = c != NULL;
  *from_brk = c != NULL;
  if (c != NULL) return c;
  /* A reservation, for a chunk committed in part; one wanted whole (a span chunk) is mapped
   * read-write at once, below. */
  if (ta_commit_lazy() && first < TA_CHUNK_SIZE) {
    char *r = ta_os_reserve_aligned(TA_CHUNK_SIZE, TA_CHUNK_SIZE);
    if (r == NULL) return NULL;
    unsigned units = (unsigned)((first + TA_COMMIT_UNIT - 1) >> TA_COMMIT_SHIFT);
    if (units == 0) units = 1;
    if (units > TA_COMMIT_ALL) units = TA_COMMIT_ALL;
    if (ta_os_commit(r, (size_t)units << TA_COMMIT_SHIFT) != 0 ||
        (tail && !commit_tail_units(r, units))) {
      ta_os_trim(r, TA_CHUNK_SIZE); /* never used */
      return NULL;
    }
    *commit = commit_word(units, tail); /* not written: a span chunk's header differs */
    return r;
  }
  if (!ta_commit_lazy() &&
      atomic_load_explicit(&brk_state, memory_order_relaxed) == 1) { /* by ta_init */
    bool ok;
    void *p = chunk_from_brk(&ok);
    if (ok) {
      *from_brk = true;
      return p;
    }
  }
  return ta_os_mmap_aligned(TA_CHUNK_SIZE, TA_CHUNK_SIZE);
}

/* A chunk as the kernel gives it (zero-filled: no kind, no shadow; see fresh_from), its
 * granule's page of the map writable; NULL if none can be had. */
void *ta_chunk_fresh(bool *from_brk, bool *pooled, size_t first, bool tail, uint8_t *commit) {
  void *c = fresh_from(from_brk, pooled, first, tail, commit);
  if (c != NULL && !ta_map_ready((uintptr_t)c)) {
    fresh_unused(c, *from_brk);
    return NULL;
  }
  return c;
}

/* Whether a statistics reader is still walking empty chunk c, whose blocks or runs reuse
 * would rewrite under it. Its map entry was cleared when it was released; a reader
 * announces itself in c->readers, then reads the entry again (stats.c): either it sees the
 * entry cleared and leaves the chunk alone, or we see it here. */
static bool chunk_being_read(ta_chunk_t *c) {
#if !defined(TA_TSAN)
  atomic_thread_fence(memory_order_seq_cst); /* see ta_unmap_allowed */
#endif
  return atomic_load_explicit(&c->readers, memory_order_seq_cst) != 0;
}

/* ---- Spare chunks
 *
 * A thread that frees a chunk's worth of blocks leaves its arena an empty chunk, resident,
 * which it keeps for the decay time, and longer while its demand holds it (dirty.c). If
 * the thread then blocks (a pool worker waiting for work) and another thread needs memory,
 * that one took a new chunk from the kernel: 95 MiB freed by one thread and allocated again
 * by another made a peak of 191 MiB. So an arena lists itself below when it gets an empty
 * chunk, and an arena that needs one and has none resident of its own looks at the listed
 * arenas first: it tries their locks (never waits: no cycle of waits), and takes a resident
 * empty chunk from one that does not need it:
 *   - its thread is gone (an ownerless arena) or is not running (blocked, asleep): a thread
 *     that runs again and needs a chunk finds one the same way, or from the kernel;
 *   - or it holds more free resident memory than its demand (the excess the budget would
 *     give back in any case).
 * The chunk counts as free memory of its new arena for the moment before it is used, not
 * as demand: it was not drawn from the kernel. A listed arena found without a resident
 * empty chunk leaves the list; a full list leaves arenas off it (their chunks are then
 * found by nobody, as before). */
#define SPARE_SLOTS 64
static _Atomic(ta_arena_t *) spare[SPARE_SLOTS];
_Atomic uint64_t ta_chunks_taken_over;

/* Lists arena a in the first empty entry of list[0..n): that entry + 1, or 0 if there was
 * none. The lists of arenas that have something to give other arenas (spare chunks here, run
 * slots in small.c): an entry is taken or let go with one compare-exchange, nothing held
 * across fork. */
unsigned ta_arena_list_add(_Atomic(ta_arena_t *) *list, unsigned n, ta_arena_t *a) {
  for (unsigned i = 0; i < n; i++) {
    ta_arena_t *none = NULL;
    /* Release: a reader that finds a (acquire) reads its fields, written when it was made
     * (ThreadSanitizer saw a borrower read a new arena's lock word unordered with its map). */
    if (atomic_load_explicit(&list[i], memory_order_relaxed) == NULL &&
        atomic_compare_exchange_strong_explicit(&list[i], &none, a, memory_order_release,
                                                memory_order_relaxed))
      return i + 1;
  }
  return 0;
}

/* Entry i of a list, if it still names arena a, let go. */
void ta_arena_list_drop(_Atomic(ta_arena_t *) *list, unsigned i, ta_arena_t *a) {
  atomic_compare_exchange_strong_explicit(&list[i], &a, NULL, memory_order_relaxed,
                                          memory_order_relaxed);
}

/* Arena a (its lock held) has a resident empty chunk: listed, if there is room. */
static void spare_list(ta_arena_t *a) {
  if (!a->spare_listed) a->spare_listed = ta_arena_list_add(spare, SPARE_SLOTS, a) != 0;
}

/* A resident empty chunk on o's list that no statistics reader holds, or NULL; its link. */
static ta_chunk_t **resident_empty(ta_arena_t *o) {
  for (ta_chunk_t **pp = &o->empty_chunks; *pp; pp = &(*pp)->next)
    if (!(*pp)->decommitted && !chunk_being_read(*pp)) return pp;
  return NULL;
}

/* Whether arena o can spare a chunk (see above), once its lock is held; `idle` was found
 * before it was taken (reading the thread's state is a system call: not under two locks). */
static bool can_spare(ta_arena_t *o, bool idle) {
  int st = atomic_load_explicit(&o->state, memory_order_acquire);
  if (st == ARENA_FREE) return true;
  if (st != ARENA_CLAIMED) return false; /* a fork child's zombie or suspended arena */
  return idle || o->dirty_bytes >= ta_arena_demand(o, ta_os_now_ms()) + TA_CHUNK_SIZE;
}

/* Before o's lock is taken: whether it may have an empty chunk, and whether its owner is
 * gone or not running. */
static bool may_spare(ta_arena_t *o, bool *idle) {
  if (__atomic_load_n(&o->empty_chunks, __ATOMIC_ACQUIRE) == NULL) return false;
  int st = atomic_load_explicit(&o->state, memory_order_acquire);
  if (st != ARENA_CLAIMED) return *idle = st == ARENA_FREE;
  uint32_t tid = atomic_load_explicit(&o->owner_tid, memory_order_relaxed);
  *idle = tid != 0 && !ta_os_thread_runs(tid);
  return true;
}

/* A resident empty chunk of another listed arena that can spare one, unlinked and uncounted
 * there; NULL if none. Arena a's lock is held. */
static ta_chunk_t *spare_take(ta_arena_t *a) {
  if (!ta_fork_hold()) return NULL; /* a fork is under way: from the kernel, this once */
  ta_chunk_t *got = NULL;
  for (unsigned i = 0; i < SPARE_SLOTS && got == NULL; i++) {
    ta_arena_t *o = atomic_load_explicit(&spare[i], memory_order_acquire);
    bool idle = false;
    if (o == NULL || o == a || ta_slow_held_by_me(o)) continue;
    bool maybe = may_spare(o, &idle);
    if (!ta_slow_try_enter_beside(o)) continue; /* its empty chunks: no light section's */
    ta_chunk_t **pp = o->spare_listed ? resident_empty(o) : NULL;
    ta_chunk_t *c = NULL;
    if (pp == NULL) { /* nothing left to spare: off the list */
      if (o->spare_listed) {
        o->spare_listed = false;
        ta_arena_list_drop(spare, i, o);
      }
    } else if (maybe && can_spare(o, idle)) {
      c = *pp;
      TA_PUBLISH(*pp, c->next); /* the list statistics readers walk */
      ta_dirty_add(o, -(intptr_t)TA_CHUNK_SIZE);
      ta_dirty_hold(o, atomic_load_explicit(&o->demand_seen, memory_order_relaxed));
    }
    ta_slow_leave(o);
    got = c;
  }
  ta_fork_unhold();
  return got;
}

/* ---- the pool of returned break chunks
 *
 * A break chunk in the middle of the heap cannot go back to the kernel whole: the break moves
 * only from the top. Kept on its arena's list, it kept its first page resident, the header
 * that links it (1,024 exited threads left 2,045 of them: 8 MiB), and only its own arena
 * could reuse it. Given back whole, it goes here: its address in a slot, no link in the
 * chunk. Any arena takes one before it grows the heap; when the break comes down to one, it
 * goes back to the kernel. A slot is reserved (HELD) before the chunk is given back, whose
 * header then reads as zero, and filled after; every change of a slot is one compare-exchange
 * or a store by the thread that holds it. So no lock, nothing held across fork, no chunk
 * handed out twice: a chunk a parent's thread was moving is lost to the child (its slot stays
 * held), never corrupt. */
#define POOL_SLOTS 4096 /* 16 GiB of chunks; past that, chunks stay on their arena's list */
#define SLOT_HELD ((uintptr_t)1)
static _Atomic uintptr_t pool[POOL_SLOTS];
/* Chunks in slots: a hint that lets an empty pool cost one load. Exact but after a fork that
 * cut a change short; wrong, it costs scans or leaves a chunk unused, never more. */
static _Atomic uint32_t pool_count;

/* Holds a free slot for a chunk about to be given back; its index, or -1 if the pool is full. */
int ta_chunk_pool_reserve(void) {
  for (size_t i = 0; i < POOL_SLOTS; i++) {
    uintptr_t empty = 0;
    if (atomic_load_explicit(&pool[i], memory_order_relaxed) == 0 &&
        atomic_compare_exchange_strong_explicit(&pool[i], &empty, SLOT_HELD, memory_order_relaxed,
                                                memory_order_relaxed))
      return (int)i;
  }
  return -1;
}

void ta_chunk_pool_unreserve(int slot) { atomic_store_explicit(&pool[slot], 0, memory_order_relaxed); }

/* Puts chunk c (given back whole: its pages read as zero) into the slot held for it. */
void ta_chunk_pool_put(int slot, void *c) {
  atomic_store_explicit(&pool[slot], (uintptr_t)c, memory_order_release);
  atomic_fetch_add_explicit(&pool_count, 1, memory_order_relaxed);
}

static void count_taken(void) {
  uint32_t n = atomic_load_explicit(&pool_count, memory_order_relaxed);
  while (n != 0 && !atomic_compare_exchange_weak_explicit(&pool_count, &n, n - 1,
                                                          memory_order_relaxed, memory_order_relaxed))
    ;
}

/* Takes a chunk from the pool: `want` itself (0: any); NULL if none. With `hold`, its slot
 * stays held (*slot), for the chunk to be put back. */
static void *pool_take(uintptr_t want, bool hold, int *slot) {
  if (atomic_load_explicit(&pool_count, memory_order_relaxed) == 0) return NULL;
  for (size_t i = 0; i < POOL_SLOTS; i++) {
    uintptr_t v = atomic_load_explicit(&pool[i], memory_order_relaxed);
    if (v == 0 || v == SLOT_HELD || (want != 0 && v != want)) continue;
    if (atomic_compare_exchange_strong_explicit(&pool[i], &v, hold ? SLOT_HELD : 0,
                                                memory_order_acquire, memory_order_relaxed)) {
      count_taken();
      if (slot) *slot = (int)i;
      return (void *)v;
    }
  }
  return NULL;
}

/* Moves the break down past the pooled chunks at its top; how many went. */
size_t ta_chunk_pool_trim_brk(void) {
  size_t n = 0;
  while (atomic_load_explicit(&pool_count, memory_order_relaxed) != 0) {
    ta_brk_lock(); /* a look only: ta_brk_shrink_top moves it, under the lock again */
    char *cur = ta_os_brk_get();
    ta_brk_unlock();
    if (cur == (void *)-1 || cur == NULL || ((uintptr_t)cur & TA_CHUNK_MASK) != 0) break;
    ta_chunk_t *top = (ta_chunk_t *)(cur - TA_CHUNK_SIZE);
    int slot;
    if (pool_take((uintptr_t)top, true, &slot) == NULL) break;
    if (!ta_brk_shrink_top(top)) { /* the break moved meanwhile: back into its slot */
      ta_chunk_pool_put(slot, top);
      break;
    }
    ta_chunk_pool_unreserve(slot);
    n++;
  }
  return n;
}

/* A fork child counts the chunks in slots again (no other thread runs yet). */
void ta_chunk_pool_after_fork(void) {
  uint32_t n = 0;
  for (size_t i = 0; i < POOL_SLOTS; i++) {
    uintptr_t v = atomic_load_explicit(&pool[i], memory_order_relaxed);
    n += v != 0 && v != SLOT_HELD;
  }
  atomic_store_explicit(&pool_count, n, memory_order_relaxed);
}

/* Calls fn for each chunk in the pool (statistics, heap map: a racy snapshot). */
void ta_chunk_pool_each(void (*fn)(void *ctx, uintptr_t c), void *ctx) {
  for (size_t i = 0; i < POOL_SLOTS && atomic_load_explicit(&pool_count, memory_order_relaxed); i++) {
    uintptr_t v = atomic_load_explicit(&pool[i], memory_order_relaxed);
    if (v != 0 && v != SLOT_HELD) fn(ctx, v);
  }
}

ta_chunk_t *ta_chunk_alloc(ta_arena_t *a, uint8_t kind) {
  /* A resident one first: one given back is faulted in again. Not one a statistics reader
   * holds (one at most). */
  ta_chunk_t **pp = &a->empty_chunks, **gone = NULL;
  for (; *pp; pp = &(*pp)->next) {
    if (chunk_being_read(*pp)) continue;
    if (!(*pp)->decommitted) break;
    if (gone == NULL) gone = pp;
  }
  if (*pp == NULL && gone != NULL) pp = gone;
  ta_chunk_t *c = *pp;
  bool medium = kind == TA_MAP_MEDIUM;
  /* None resident of its own: one another arena can spare (above), before one given back. */
  ta_chunk_t *taken = c == NULL || c->decommitted ? spare_take(a) : NULL;
  if (taken) c = taken;
  /* What the chunk's first use needs committed (lazy commit, above), before it leaves its
   * list: a chunk taken from another arena, refused, stays with this one. */
  if (c != NULL && !(medium ? commit_tail(c) : ta_chunk_commit(c, 2 * TA_RUN_SIZE))) {
    if (taken) {
      TA_STORE(taken->owner, a);
      ta_chunk_release(a, taken); /* resident and empty: this arena's now */
    }
    return NULL;
  }
  if (taken) atomic_fetch_add_explicit(&ta_chunks_taken_over, 1, memory_order_relaxed);
  bool from_brk, fresh = c == NULL; /* from the kernel, or the pool: as the kernel gave it */
  uint8_t commit = c ? c->commit : TA_COMMIT_ALL;
  uint8_t prev = TA_MAP_NONE; /* what the chunk was before: a small chunk keeps its shadow */
  if (c) {
    if (!taken) TA_PUBLISH(*pp, c->next); /* the list statistics readers walk */
    from_brk = c->from_brk;
    prev = c->kind;
    if (!c->decommitted && !taken) ta_dirty_add(a, -(intptr_t)TA_CHUNK_SIZE);
  } else {
    bool pooled;
    /* As the kernel gave it: it reads as zero, no kind, no shadow. Committed (lazy commit)
     * for its first use: a small chunk's header and first run slot, a medium chunk's first
     * unit and tail. */
    c = ta_chunk_fresh(&from_brk, &pooled, medium ? TA_COMMIT_UNIT : 2 * TA_RUN_SIZE, medium,
                       &commit);
    if (c == NULL) return NULL;
    if (!pooled) TA_ADD(a->cnt.grows, 1);
  }
  if (prev == TA_MAP_SMALL && kind != TA_MAP_SMALL && ta_shadow_get(c) != NULL)
    ta_shadow_free(ta_shadow_get(c)); /* medium blocks will overwrite slot 0's meta block */
  if (prev != TA_MAP_SMALL || kind != TA_MAP_SMALL) ta_shadow_set(c, NULL);
  /* A statistics reader may still be reading this chunk (from the map, or from the list of
   * empty chunks): what it reads is stored. */
  TA_STORE(c->check, (uintptr_t)c ^ ta_secret);
  TA_STORE(c->owner, a);
  TA_PUBLISH(c->next, NULL);
  c->prev = NULL;
  c->kind = kind;
  TA_STORE(c->commit, commit); /* read by statistics readers (ta_chunk_holds) */
  TA_STORE(c->from_brk, from_brk);
  c->not_a_run = NULL;
  c->free_slots = 0; /* shares its word with empty_since */
  /* Its halves' huge pages (small.c) last while it stays resident and small. */
  if (fresh || c->decommitted || prev != TA_MAP_SMALL || kind != TA_MAP_SMALL) c->thp = 0;
  c->dirty_slots = 0;
  /* Kept for the caller (medium.c starts its top as not resident): a reused chunk says
   * whether it was given back, a fresh one has never been touched. Either counts whole in
   * the arena's demand (dirty.c), as an empty chunk counts whole in its dirty bytes. */
  TA_STORE(c->decommitted, fresh ? 1 : c->decommitted);
  if (c->decommitted) ta_dirty_fresh(a, TA_CHUNK_SIZE);
  /* Not in the map yet: the caller publishes the chunk (ta_map_set) once its runs or
   * blocks are set up, so a stray free never meets half-made metadata. */
  return c;
}

/* An empty chunk goes back to its arena's reserve, resident; purge.c gives its pages back
 * once it has stayed empty for the decay time. */
void ta_chunk_release(ta_arena_t *a, ta_chunk_t *c) {
  /* c->kind stays: it says what slot 0 holds (a small chunk's shadow pointer). */
  ta_map_set((uintptr_t)c, TA_MAP_NONE);
  c->empty_since = ta_os_now_ms();
  TA_STORE(c->decommitted, 0); /* all three read by statistics readers */
  TA_PUBLISH(c->next, a->empty_chunks);
  TA_PUBLISH(a->empty_chunks, c);
  ta_purge_note(a, c->empty_since);
  ta_dirty_add(a, (intptr_t)TA_CHUNK_SIZE);
  spare_list(a);
}

/* Moves the break down by one chunk if c is the top of the heap (the kernel's break, not a
 * cached copy: see ta_os_brk_get). */
bool ta_brk_shrink_top(ta_chunk_t *c) {
  bool ok = false;
  ta_brk_lock();
  char *cur = ta_os_brk_get();
  if (cur == (char *)c + TA_CHUNK_SIZE && ta_os_brk_set(cur, c) == 0) ok = true;
  ta_brk_unlock();
  return ok;
}
