/*
 * small.c — runs of small blocks (16 B .. 8 KiB): the slow paths behind the inline fast
 * paths of alloc.c.
 *
 * A run is a 64 KiB slot of a small chunk holding blocks of one size class. Its meta block
 * (ta_run_t, in the chunk header) keeps the free list, the count of blocks in use, and how
 * many blocks have been threaded so far: blocks are threaded a page at a time, so a run
 * that is never filled never becomes resident beyond what it handed out.
 *
 * Per class the arena has one ACTIVE run (arena.cur[cls], where malloc pops) and a list of
 * PARTIAL runs. A run whose free list empties becomes FULL and sits in no list; the first
 * free into it makes it PARTIAL again; a PARTIAL run whose last block comes back is
 * retired, its slot returned to the chunk, and a chunk with no run left goes back to the
 * arena's reserve of empty chunks.
 *
 * A run still in use gives back the whole free pages above its highest block in use when
 * its owner purges (ta_small_shrink): its list is threaded again with the blocks below, and
 * `limit` falls, so that the next carve threads those pages again.
 *
 * A half of a chunk whose runs have threaded nearly all of it is made one transparent huge
 * page (half_collapse_maybe): dense memory, one TLB entry instead of 512.
 *
 * A block layer (docs/design.md, "Layers"): what other threads freed is taken in, and what
 * is due goes back, by the callers above (alloc.c, purge.c) before they call in here;
 * retiring a run only records the memory it leaves free and since when (ta_dirty_add,
 * ta_purge_note).
 */
#include <errno.h>

#include "internal.h"

/* A run joins its class's PARTIAL list at the head (newest first); the tail is the oldest
 * (see ta_small_alloc_slow for which one becomes current). */
static void partial_push(ta_arena_t *a, ta_run_t *r) {
  ta_run_t *h = a->partial[r->cls];
  r->prev = NULL;
  r->next = h;
  if (h) h->prev = r;
  else a->partial_tail[r->cls] = r;
  a->partial[r->cls] = r;
  r->state = RUN_PARTIAL;
}

static void partial_remove(ta_arena_t *a, ta_run_t *r) {
  if (r->prev) r->prev->next = r->next;
  else a->partial[r->cls] = r->next;
  if (r->next) r->next->prev = r->prev;
  else a->partial_tail[r->cls] = r->prev;
  r->next = r->prev = NULL;
}

/* Chunk lists: small_avail holds chunks with a free run slot, small_full the others. A
 * statistics reader that walked an arena's empty chunks may still follow a chunk's next after
 * the chunk came back into use: next is published for it. */
static void chunk_list_push(ta_chunk_t **head, ta_chunk_t *c) {
  c->prev = NULL;
  TA_PUBLISH(c->next, *head);
  if (*head) (*head)->prev = c;
  *head = c;
}

static void chunk_list_remove(ta_chunk_t **head, ta_chunk_t *c) {
  if (c->prev) TA_PUBLISH(c->prev->next, c->next);
  else *head = c->next;
  if (c->next) c->next->prev = c->prev;
  TA_PUBLISH(c->next, NULL);
  c->prev = NULL;
}

#define ALL_SLOTS (~(uint64_t)1) /* slot 0 holds the chunk header */

static ta_chunk_t *small_chunk_new(ta_arena_t *a) {
  ta_chunk_t *c = ta_chunk_alloc(a, TA_MAP_SMALL);
  if (c == NULL) return NULL;
  uint16_t *shadow = ta_shadow_get(c); /* kept across reuse of the chunk */
  c->free_slots = ALL_SLOTS;
  for (unsigned i = 1; i < TA_RUNS_PER_CHUNK; i++) { /* runs[0] is the header */
    ta_run_t *r = &c->runs[i];
    r->free = NULL;
    /* A statistics reader may be reading this reused chunk's runs: what it reads is stored. */
    TA_STORE(r->owner, NULL);
    TA_STORE(r->used, 0);
    TA_STORE(r->limit, 0);
    TA_STORE(r->cap, 0);
    TA_STORE(r->bsize, 0);
    r->recip = 0;
    r->state = RUN_UNUSED;
    r->slot = (uint16_t)i;
    r->next = r->prev = NULL;
    r->empty_since = 0; /* not given back on its own (the chunk's demand is counted whole) */
  }
  if (shadow == NULL && ta_stats_on) shadow = ta_shadow_new();
  ta_shadow_set(c, shadow);
  ta_map_set((uintptr_t)c, TA_MAP_SMALL);
  chunk_list_push(&a->small_avail, c);
  return c;
}

static ta_run_t *run_new(ta_arena_t *a, unsigned cls) {
  /* Prefer a slot whose pages are still resident, in any chunk with room (an arena has
   * few): a cold slot is faulted in page by page, while the warm one goes back later. */
  ta_chunk_t *c = a->small_avail;
  for (ta_chunk_t *w = c; w; w = w->next)
    if (w->free_slots & w->dirty_slots) {
      c = w;
      break;
    }
  if (c == NULL && (c = small_chunk_new(a)) == NULL) return NULL;
  uint64_t warm = c->free_slots & c->dirty_slots;
  unsigned slot = (unsigned)__builtin_ctzll(warm ? warm : c->free_slots);
  /* With lazy commit, the slot's pages may not be committed yet (chunk.c): a refusal is
   * the allocation's (ENOMEM). */
  size_t slot_end = (size_t)(slot + 1) << TA_RUN_SHIFT;
  if (!ta_chunk_commit(c, slot_end)) return NULL;
  c->free_slots &= ~((uint64_t)1 << slot);
  c->dirty_slots &= ~((uint64_t)1 << slot);
  if (warm) ta_dirty_add(a, -(intptr_t)TA_RUN_SIZE);
  else if (c->runs[slot].empty_since == TA_SLOT_GIVEN_BACK) ta_dirty_fresh(a, TA_RUN_SIZE);
  if (c->free_slots == 0) {
    chunk_list_remove(&a->small_avail, c);
    chunk_list_push(&a->small_full, c);
  }
  ta_run_t *r = &c->runs[slot];
  uint32_t bs = (uint32_t)ta_class_size[cls];
  r->free = NULL;
  TA_STORE(r->used, RUN_ACTIVE_BIAS); /* read by statistics readers, as are the others stored */
  TA_STORE(r->bsize, bs);
  r->recip = (uint32_t)((((uint64_t)1 << 32) + bs - 1) / bs);
  TA_STORE(r->limit, 0);
  TA_STORE(r->cap, (uint32_t)(TA_RUN_SIZE / bs));
  TA_STORE(r->cls, (uint8_t)cls);
  r->state = RUN_ACTIVE;
  r->next = r->prev = NULL;
  r->empty_since = 0;
  /* Last, and published: a racing invalid free must not see a half-made run as ours. */
  __atomic_store_n(&r->owner, a, __ATOMIC_RELEASE);
  return r;
}

/* Clears the link and mark of the blocks of r that start in [from, to) (block offsets). */
static void blocks_wipe(const ta_run_t *r, uint32_t from, uint32_t to) {
  char *base = ta_run_base(r);
  for (uint32_t off = from; off < to; off += r->bsize) {
    ta_block_t *b = (ta_block_t *)(base + off);
    b->link = 0;
    b->key = 0;
  }
}

/* The slot is about to serve any class: wipe the link and mark of every block carved, so
 * that no later block of another size, whose bytes overlap them, can read a key back or
 * hold a mark that fits its own address. Every carved block is free here (used is 0). */
static void run_wipe(const ta_run_t *r) { blocks_wipe(r, 0, r->limit); }

static void run_retire(ta_arena_t *a, ta_run_t *r) {
  ta_chunk_t *c = ta_chunk_of(r);
  run_wipe(r);
  TA_STORE(r->owner, NULL);
  r->state = RUN_UNUSED;
  r->free = NULL;
  if (c->free_slots == 0) {
    chunk_list_remove(&a->small_full, c);
    chunk_list_push(&a->small_avail, c);
  }
  c->free_slots |= (uint64_t)1 << r->slot;
  if (c->free_slots == ALL_SLOTS) {
    ta_dirty_add(a, -((intptr_t)__builtin_popcountll(c->dirty_slots) << TA_RUN_SHIFT));
    c->dirty_slots = 0; /* the whole chunk is purged as one */
    chunk_list_remove(&a->small_avail, c);
    ta_chunk_release(a, c);
    return;
  }
  c->dirty_slots |= (uint64_t)1 << r->slot;
  r->empty_since = ta_os_now_ms();
  ta_purge_note(a, r->empty_since);
  ta_dirty_add(a, (intptr_t)TA_RUN_SIZE);
}

static uint32_t gcd(uint32_t a, uint32_t b) {
  while (b) {
    uint32_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

/* Hardened build: a per-thread xorshift generator, seeded on first use from the kernel's
 * generator, independent of every key: its outputs can be observed (they choose which
 * block malloc returns) and it is linear, so a seed derived from a key would give the key
 * away. Not a secret source: it only makes layouts vary. */
static __thread uint64_t secure_rng __attribute__((tls_model("initial-exec")));
uint64_t ta_secure_random(void) {
  uint64_t x = secure_rng;
  if (TA_UNLIKELY(x == 0)) x = ta_os_random_fresh() | 1;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  secure_rng = x;
  return x * 0x2545f4914f6cdd1dull;
}

/* Threads up to a page of never-used blocks onto the free list (at least one block), each
 * marked free as a freed block is: every block on a free list holds its mark, which is how
 * a purge tells that a run's top page is free without walking its list (run_shrink). */
static bool run_can_carve(const ta_run_t *r) { return r->limit + r->bsize <= r->cap * r->bsize; }

/* Huge pages only where they pay (docs/design.md, "Huge pages for dense halves of small
 * chunks"). A transparent huge page maps 2 MiB of blocks with one TLB entry instead of 512,
 * but a fault in a range advised for them fills all 2 MiB, touched or not. So nothing is
 * advised ahead: a half of a small chunk (2 MiB, aligned) is made one huge page, its pages
 * copied into it (ta_os_collapse), once it is dense: every run slot of it in use, and the
 * pages its runs touched by threading blocks (every page threaded, for blocks of a page or
 * less; the page of each block's start, for larger ones) all of it but one slot's worth (the
 * header's slot counts whole). Looked at as a run of a full half threads blocks (the only
 * moments the figure grows); asked at most once until pages of the half go back
 * (ta_chunk_thp_lost). The call waits for the slow-path lock to be let go (ta_small_collapse):
 * it may take milliseconds. Only where the kernel gives huge pages (on advice, or `always`:
 * there every chunk is told to have none, os.c), of half a chunk, with `huge_pages` on, and
 * within the budget below. */

/* What collapses may cost the process: 1% of the time since the first, never more than 40 ms
 * ahead of that pace (20 ms at start, and 20 ms of credit saved at most). A collapse takes
 * 0.5–1 ms where the kernel has a huge page at hand, 4–6 ms on a virtual machine whose host
 * backs a fresh 2 MiB page by page, more under memory pressure (the kernel reclaims and
 * compacts for it): a heap made dense at speed (bench/'s `frag`, 171 halves in a second)
 * spent 0.9 s of its 1 s there. A half found dense beyond it is looked at again at its next
 * carve. Process-wide and relaxed: threads checking at once may all pass, by a call each. */
#define TA_COLLAPSE_FREE_US 20000
#define TA_COLLAPSE_SHARE 100
_Atomic uint64_t ta_collapse_spent_us, ta_collapse_first_us;
static _Atomic bool collapse_off; /* the kernel refused for good (no such advice, not allowed) */

static bool collapse_budget_left(void) {
  uint64_t now = ta_os_now_us();
  uint64_t first = atomic_load_explicit(&ta_collapse_first_us, memory_order_relaxed);
  if (first == 0 &&
      atomic_compare_exchange_strong_explicit(&ta_collapse_first_us, &first, now,
                                              memory_order_relaxed, memory_order_relaxed))
    first = now;
  uint64_t pace = (now > first ? now - first : 0) / TA_COLLAPSE_SHARE;
  uint64_t spent = atomic_load_explicit(&ta_collapse_spent_us, memory_order_relaxed);
  if (spent + TA_COLLAPSE_FREE_US < pace) { /* credit saved beyond the cap is lost */
    atomic_compare_exchange_strong_explicit(&ta_collapse_spent_us, &spent,
                                            pace - TA_COLLAPSE_FREE_US, memory_order_relaxed,
                                            memory_order_relaxed);
    spent = pace - TA_COLLAPSE_FREE_US;
  }
  return spent < pace + TA_COLLAPSE_FREE_US;
}

/* The half found dense, to be made one huge page once the lock is let go: the chunk's
 * address | the half. Per thread, not per arena: a fork by another thread meanwhile leaves
 * nothing behind in the child's arenas. */
__thread uintptr_t ta_collapse_pending __attribute__((tls_model("initial-exec")));

static void half_collapse_maybe(ta_chunk_t *c, unsigned slot) {
  unsigned half = slot / TA_HALF_SLOTS;
  uint64_t mask = (((uint64_t)1 << TA_HALF_SLOTS) - 1) << (half * TA_HALF_SLOTS);
  if ((c->thp & TA_THP_TRIED(half)) || (c->free_slots & mask) || !ta_huge_pages ||
      ta_hugepage_size != TA_CHUNK_SIZE / 2 || ta_os_thp_mode() == TA_THP_NEVER ||
      atomic_load_explicit(&collapse_off, memory_order_relaxed))
    return;
  size_t touched = 0;
  for (unsigned i = half * TA_HALF_SLOTS; i < (half + 1) * TA_HALF_SLOTS; i++) {
    const ta_run_t *r = &c->runs[i];
    touched += i == 0                    ? TA_RUN_SIZE
               : r->bsize > ta_page_size ? (size_t)(r->limit / r->bsize) * ta_page_size
                                         : ta_align_up(r->limit, ta_page_size);
  }
  if (touched < TA_CHUNK_SIZE / 2 - TA_RUN_SIZE || !collapse_budget_left()) return;
  c->thp |= (uint8_t)TA_THP_TRIED(half); /* once: a refusal is not asked again */
  ta_collapse_pending = (uintptr_t)c | half;
}

/* The half half_collapse_maybe found dense, made one huge page: by the owner, its slow-path
 * lock let go, in the same slow path. The chunk stays the arena's meanwhile, and the half
 * full: only the owner retires runs, so no slot of it can be given back by a purge. */
void ta_small_collapse(void) {
  uintptr_t p = ta_collapse_pending;
  ta_collapse_pending = 0;
  uint64_t t0 = ta_os_now_us();
  char *half = (char *)(p & ~(uintptr_t)TA_CHUNK_MASK) + (p & 1) * (TA_CHUNK_SIZE / 2);
  /* With `always`, the chunk was told to have no huge pages (os.c, ta_os_thp_off), which the
   * collapse respects: the half is let have them for the call, and told not to again, so
   * that its pages, once given back, fault in small ones as any chunk's. */
  bool always = ta_os_thp_mode() == TA_THP_ALWAYS;
  /* Refused (the kernel's count of mappings at its limit, say): not this time, and the
   * collapse is not taken for impossible, as its EINVAL would make it. */
  if (always && ta_os_hugepage(half, TA_CHUNK_SIZE / 2, true) != 0) return;
  int r = ta_os_collapse(half, TA_CHUNK_SIZE / 2);
  if (always) (void)ta_os_hugepage(half, TA_CHUNK_SIZE / 2, false);
  atomic_fetch_add_explicit(&ta_collapse_spent_us, ta_os_now_us() - t0, memory_order_relaxed);
  if (r == EINVAL || r == EPERM || r == ENOSYS)
    atomic_store_explicit(&collapse_off, true, memory_order_relaxed);
}

static void run_carve(ta_run_t *r) {
  uint32_t left = r->cap - r->limit / r->bsize;
  uint32_t n = (uint32_t)(ta_page_size / r->bsize);
  if (n == 0) n = 1;
  if (n > left) n = left;
  char *base = ta_run_base(r) + r->limit;
  ta_block_t *head = r->free;
  if (ta_secure) {
    /* Hardened: every block gets its canary, and the page's blocks go onto the list in an
     * order drawn at random: a random start and a random stride prime to n visit each
     * block once, so the next address malloc returns cannot be told from the last one. */
    uint64_t x = ta_secure_random();
    uint32_t start = (uint32_t)(x % n), stride = 1;
    if (n > 2) {
      stride = 1 + (uint32_t)((x >> 32) % (n - 1));
      while (gcd(stride, n) != 1) stride++;
    }
    for (uint32_t i = 0, k = start; i < n; i++, k = (k + stride) % n) {
      ta_block_t *b = (ta_block_t *)(base + (size_t)k * r->bsize);
      *ta_canary_at(b, r->bsize) = ta_canary(b);
      b->link = ta_link_enc(head);
      b->key = ta_mark(b);
      head = b;
    }
  } else {
    for (uint32_t i = n; i-- > 0;) {
      ta_block_t *b = (ta_block_t *)(base + (size_t)i * r->bsize);
      b->link = ta_link_enc(head);
      b->key = ta_mark(b);
      head = b;
    }
  }
  r->free = head;
  /* Other threads read limit to validate their frees into this run. */
  __atomic_store_n(&r->limit, r->limit + n * r->bsize, __ATOMIC_RELAXED);
  TA_ADD(r->owner->cnt.first_uses, n);
  half_collapse_maybe(ta_chunk_of(r), r->slot);
}

/* The fast path turned away a head outside the run's chunk: fine if it is NULL (the list
 * is empty); anything else is a link overwritten after free. */
static void check_head(const ta_run_t *r) {
  if (r->free != NULL && !(ta_same_chunk(r->free, r) && ta_small_valid(r, r->free)))
    ta_fatal("malloc(): corrupted free list, next block", r->free);
}

/* Which PARTIAL run becomes current: the newest, whose blocks were freed last and are the
 * likeliest to be in the cache, unless it has only a few free blocks; then the oldest, when
 * it has more, as it has had the longest time to collect frees. The first free into a FULL
 * run makes it PARTIAL with one free block: when frees land all over a class's runs (blocks
 * that die in random order), the newest had one or two, and malloc left the fast path for
 * another run on 27% of its calls (bench/run's `random` workload: 1,100,000 of 4,000,000;
 * now 151,000, and the allocator's instructions per malloc+free fell from 127 to 71,
 * callgrind). What counts is a run's free blocks on its list: threaded blocks not in use
 * (PARTIAL: used is the plain count); room above `limit` is not counted, as in a run that
 * gave pages back it would be faulted in again. */
enum { PICK_FEW = 8 };
static uint32_t run_free_blocks(const ta_run_t *r) {
  return ta_run_index(r, r->limit) - (uint32_t)r->used; /* threaded, less those in use */
}
static ta_run_t *partial_pick(ta_arena_t *a, ta_run_t *newest, unsigned cls) {
  uint32_t free_new = run_free_blocks(newest);
  if (free_new >= PICK_FEW || free_new * 4 >= newest->cap) return newest;
  ta_run_t *oldest = a->partial_tail[cls];
  return run_free_blocks(oldest) > free_new ? oldest : newest;
}

/* grow: may take a new run; without it, NULL when no run of the arena has a block left (the
 * caller then lets what is due go back first). The caller took the remote frees in. */
void *ta_small_alloc_slow(ta_arena_t *a, unsigned cls, bool grow) {
  ta_slow_enter(a);
  check_head(a->cur[cls]);
  ta_run_t *r = a->cur[cls];
  if (r != &ta_empty_run) {
    if (r->free == NULL && run_can_carve(r)) run_carve(r);
    if (r->free) goto pop;
    r->state = RUN_FULL;
    TA_STORE(r->used, (r->used - RUN_ACTIVE_BIAS) | RUN_FULL_BIT);
    a->cur[cls] = &ta_empty_run;
  }
  r = a->partial[cls];
  if (r) {
    r = partial_pick(a, r, cls);
    check_head(r);
    partial_remove(a, r);
    r->state = RUN_ACTIVE;
    TA_ADD(r->used, RUN_ACTIVE_BIAS);
  } else {
    r = grow ? run_new(a, cls) : NULL;
    if (r == NULL) {
      ta_slow_leave(a);
      return NULL;
    }
  }
  a->cur[cls] = r;
  if (r->free == NULL) run_carve(r);
pop:;
  ta_block_t *b = ta_run_pop(r); /* the list is not empty here */
  ta_slow_leave(a);
  return b;
}

/* After a free made the run's list non-empty again or emptied the run. */
void ta_small_free_slow(ta_arena_t *a, ta_run_t *r) {
  ta_slow_enter(a);
  if (r->used & RUN_FULL_BIT) {
    TA_STORE(r->used, r->used & ~RUN_FULL_BIT);
    partial_push(a, r);
  }
  if (r->used == 0 && r->state == RUN_PARTIAL) {
    partial_remove(a, r);
    run_retire(a, r);
  }
  ta_slow_leave(a);
}

void ta_small_free_local(ta_arena_t *a, ta_run_t *r, ta_block_t *b) {
  b->link = ta_link_enc(r->free);
  b->key = ta_mark(b);
  r->free = b;
  if (ta_dec_le_zero(&r->used)) ta_small_free_slow(a, r);
}

/* The block's key word says "free": find out whether it really is (it might be user data
 * that happens to match), then free it. Runs only on the owner's thread. */
/* Whether p is on its run's free list (the owner's view; a bounded walk). */
bool ta_small_on_free_list(const ta_run_t *r, const void *p) {
  uint32_t n = 0;
  for (const ta_block_t *f = r->free; f && n <= r->cap; f = ta_block_next(f), n++) {
    if (f == p) return true;
    if (!ta_same_chunk(f, r)) ta_fatal("free(): corrupted free list, next block", f);
  }
  return false;
}

/* The block's mark says "free": find out whether it really is (the program may have
 * written those bytes), then free it. Runs only on the owner's thread. */
void ta_small_free_suspect(ta_arena_t *a, ta_run_t *r, ta_block_t *b) {
  if (ta_small_freed(a, r, b)) ta_fatal("free(): double free of pointer", b);
  ta_small_free_local(a, r, b);
}

/* The owner's verdict on its block p, whose mark says "free": on its run's free list, or
 * freed by another thread, which taking in the remote frees shows: the caller took them in
 * just before. That may even have retired the run or given its chunk back, so the map is
 * read first. */
bool ta_small_freed(ta_arena_t *a, ta_run_t *r, const void *p) {
  /* Under the lock: the background purger may hold the remote list (the block perhaps on
   * it) while it takes the medium blocks off; the lock waits for it to put it back. The
   * caller took it before it took the remote frees in, for the same reason. */
  ta_slow_enter(a);
  bool freed = ta_map_get((uintptr_t)p) != TA_MAP_SMALL || r->owner != a ||
               ta_small_on_free_list(r, p);
  ta_slow_leave(a);
  return freed;
}

/* Retires the active runs that hold no block (a full purge: malloc_trim, an ownerless
 * arena), so that their chunks can empty and go back. */
void ta_small_retire_idle(ta_arena_t *a) {
  ta_slow_enter(a);
  for (unsigned cls = 1; cls <= TA_NUM_SMALL; cls++) {
    ta_run_t *r = a->cur[cls];
    if (r == &ta_empty_run || RUN_USED(r) != 0) continue;
    a->cur[cls] = &ta_empty_run;
    TA_STORE(r->used, 0);
    run_retire(a, r);
  }
  ta_slow_leave(a);
}

/* ------------------------------------------------------------------ free pages of runs in use */

/* A run keeps the pages it has threaded until it empties, however few blocks it still holds:
 * its free blocks are on its owner's list, which the fast paths use without a lock. So only
 * the owner gives such pages back (ta_small_shrink, from its purge): the whole pages above
 * the run's highest block in use leave the free list, `limit` falls to just above that
 * block, and a later carve threads them again (as zero pages from the kernel). */

#define RUN_MAX_BLOCKS (TA_RUN_SIZE / TA_ALIGNMENT)

static bool bit_get(const uint64_t *bits, uint32_t k) { return (bits[k / 64] >> (k % 64)) & 1; }

/* Sets the bit of every block on r's free list. Each entry must be a block of this run below
 * its limit, and none may come twice (which bounds the walk by the run's blocks): anything
 * else is a link overwritten after free. */
static void run_free_bits(const ta_run_t *r, uint64_t *bits) {
  char *base = ta_run_base(r);
  for (ta_block_t *b = r->free; b; b = ta_block_next(b)) {
    if (ta_run_of(b) != r || !ta_small_valid(r, b))
      ta_fatal("malloc(): corrupted free list, next block", b);
    uint32_t k = (uint32_t)((char *)b - base) / r->bsize;
    if (bit_get(bits, k)) ta_fatal("malloc(): corrupted free list, next block", b);
    bits[k / 64] |= (uint64_t)1 << (k % 64);
  }
}

/* Threads r's free list again with its free blocks below index `keep`: in address order, so
 * that malloc favours the low end and the next shrink finds more; the hardened build keeps
 * the list's own order, which its random reuse order made. */
static void run_rethread(ta_run_t *r, const uint64_t *bits, uint32_t keep) {
  char *base = ta_run_base(r);
  ta_block_t *head = NULL;
  if (ta_secure) {
    ta_block_t *last = NULL;
    for (ta_block_t *b = r->free, *next; b; b = next) {
      next = ta_block_next(b); /* before b's link is rewritten */
      if ((uint32_t)((char *)b - base) >= keep * r->bsize) continue;
      if (last) last->link = ta_link_enc(b);
      else head = b;
      last = b;
    }
    if (last) last->link = ta_link_enc(NULL);
  } else {
    for (uint32_t k = keep; k-- > 0;) {
      if (!bit_get(bits, k)) continue;
      ta_block_t *b = (ta_block_t *)(base + (size_t)k * r->bsize);
      b->link = ta_link_enc(head);
      head = b;
    }
  }
  r->free = head;
}

/* The mark word of a block that may be in use: the program, or a thread freeing the block,
 * may be writing it as it is read, with plain stores nothing on our side can order. Any
 * value will do (the walk decides, never this word), so ThreadSanitizer is told not to watch
 * this one load, as it is not told to watch ta_mh_peek's. */
#if defined(__SANITIZE_THREAD__)
__attribute__((no_sanitize_thread, noinline))
#endif
static uintptr_t mark_peek(const ta_block_t *b) {
  return __atomic_load_n(&b->key, __ATOMIC_RELAXED);
}

/* Whether every block reaching into r's top threaded page is marked free. Every block on a
 * free list is, so without that no page can go back: a purge that finds the top block in
 * use reads one word, where the walk would read the whole list — every purge, for as long
 * as the block lives. A marked block may still be on the remote list or in a quarantine:
 * the walk decides, never the marks. */
static bool top_page_marked(const ta_run_t *r) {
  const char *base = ta_run_base(r);
  uint32_t top = (uint32_t)ta_align_up(r->limit, ta_page_size) - (uint32_t)ta_page_size;
  for (uint32_t k = r->limit / r->bsize; k-- > 0 && (k + 1) * r->bsize > top;) {
    const ta_block_t *b = (const ta_block_t *)(base + (size_t)k * r->bsize);
    if (mark_peek(b) != ta_mark(b)) return false;
  }
  return true;
}

/* Gives back the whole pages of run r above its highest block in use; returns the bytes
 * given back. Blocks on the remote list, in suspect slots or in a quarantine are on no
 * free list: they count as in use, and stay below the new limit. */
static size_t run_shrink(ta_run_t *r) {
  uint32_t bs = r->bsize, limit = r->limit;
  if (limit - (uint32_t)RUN_USED(r) * bs < ta_page_size || !top_page_marked(r)) return 0;
  uint64_t bits[RUN_MAX_BLOCKS / 64] = {0};
  run_free_bits(r, bits);
  uint32_t keep = limit / bs;
  while (keep > 0 && bit_get(bits, keep - 1)) keep--;
  uintptr_t base = (uintptr_t)ta_run_base(r);
  uintptr_t from = ta_align_up(base + (size_t)keep * bs, ta_page_size);
  uintptr_t to = ta_align_up(base + limit, ta_page_size);
  if (from >= to) return 0;
  run_rethread(r, bits, keep);
  /* Other threads read limit to validate their frees: every block at or above the new
   * limit is free, so no correct free names one. */
  __atomic_store_n(&r->limit, keep * bs, __ATOMIC_RELAXED);
  /* The blocks dropped from the page kept below `from` keep their link and mark. A carve
   * of this class would rewrite the link and find the block's own mark, but the run may
   * retire first, and run_wipe stops at limit: a block of another class overlapping them
   * could read a key back or look free. So they go now; the pages given back read zero. */
  blocks_wipe(r, keep * bs, (uint32_t)(from - base));
  if (ta_os_decommit((void *)from, to - from) != 0) {
    blocks_wipe(r, keep * bs, limit); /* the pages stay: nothing of the blocks may */
    return 0;
  }
  ta_chunk_thp_lost(ta_chunk_of(r), r->slot, 1);
  return to - from;
}

/* The owner's purge of the free pages of its runs in use: the ACTIVE and PARTIAL ones (a
 * FULL run has no free block). What other threads freed is taken in first, by the caller
 * (purge.c), so that their blocks are found free. Only for the arena's owner (or the thread
 * that claimed an ownerless arena): its fast paths use these lists without the lock, so the
 * background purger, which holds only the lock, must not call it. */
size_t ta_small_shrink(ta_arena_t *a) {
  size_t freed = 0;
  ta_slow_enter(a);
  for (unsigned cls = 1; cls <= TA_NUM_SMALL; cls++) {
    if (a->cur[cls] != &ta_empty_run) freed += run_shrink(a->cur[cls]);
    for (ta_run_t *r = a->partial[cls]; r; r = r->next) freed += run_shrink(r);
  }
  ta_slow_leave(a);
  return freed;
}
