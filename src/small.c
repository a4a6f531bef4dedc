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
 * page (half_collapse_maybe), when `huge_halves` asks for it (unset: only where the
 * kernel's mode is `always`): dense memory, one TLB entry instead of 512.
 *
 * A block layer (docs/design.md, "Layers"): what other threads freed is taken in, and what
 * is due goes back, by the callers above (alloc.c, purge.c) before they call in here;
 * retiring a run only records the memory it leaves free and since when (ta_dirty_add,
 * ta_purge_note).
 */
#include <errno.h>
#include <string.h>

#include "internal.h"

static void mid_clock(ta_arena_t *a);
/* A slow path of class cls: for a mid class, the release's clock started if it is not. */
static void mid_note(ta_arena_t *a, unsigned cls) {
  if (cls > TA_NUM_SMALL && a->mid_since == 0) mid_clock(a);
}

/* The place of mid class cls's kept run in arena.mid_kept. */
static ta_run_t **mid_slot(ta_arena_t *a, unsigned cls) {
  return &a->mid_kept[cls - TA_NUM_SMALL - 1];
}
/* Run r leaves its class's list (current again, or retired): if it was the empty run its mid
 * class kept there (run_keeps_empty), the class keeps none now. */
static void mid_unkeep(ta_arena_t *a, const ta_run_t *r) {
  if (r->cls > TA_NUM_SMALL && *mid_slot(a, r->cls) == r) *mid_slot(a, r->cls) = NULL;
}

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
    ta_run_t *r = ta_chunk_run(c, i);
    r->free = NULL;
    /* A statistics reader may be reading this reused chunk's runs: what it reads is stored. */
    TA_STORE(r->owner, NULL);
    TA_STORE(r->used, 0);
    TA_STORE(r->limit, 0);
    TA_STORE(r->accept, 0);
    TA_STORE(r->bsize, 0);
    TA_STORE(r->recip, 0);
    r->state = RUN_UNUSED;
    r->slot = (uint16_t)i;
    r->next = r->prev = NULL;
    r->empty_since = 0; /* not given back on its own (the chunk's demand is counted whole) */
  }
  if (shadow == NULL && ta_stats_on) shadow = ta_shadow_new();
  ta_shadow_set(c, shadow);
  ta_map_set((uintptr_t)c, TA_MAP_SMALL);
  chunk_list_push(&a->small_avail, c);
  ta_small_slots_note(a, TA_RUNS_PER_CHUNK - 1, 0);
  return c;
}

/* ------------------------------------------------------------------ slots lent between arenas
 *
 * A small chunk's keeper is its arena (c->owner): its lists hold the chunk, and it alone
 * changes the chunk's slot masks, under its lock. A run's owner (r->owner) is the arena that
 * allocates from it, frees into it and takes other threads' frees of it in, as for any run;
 * it may be another arena than the keeper, which lent it the free slot. So a thread that
 * needs a run takes a slot another arena has left free before it faults in a slot of its own
 * or maps a chunk: a resident one (a run some thread emptied: producers whose blocks other
 * threads free retire runs by the hundred, and each kept them for its own next turns), or,
 * for an arena with no small chunk of its own at all, one not resident (a thousand threads
 * with a few small blocks each share chunks, not a chunk each). docs/design.md, "Run slots
 * lent between arenas".
 *
 * Taking and giving back go through the keeper's lock, only ever tried while the taker holds
 * its own (never waited for: no cycle of waits), and as a step fork waits for (dirty.c). An
 * emptied run whose keeper's lock is busy waits on its owner's lent_back list, resident and
 * counted in the owner's free memory (or, due while the keeper stays busy, its pages given
 * back), and goes back at the owner's next purge, which comes due again while one waits; its
 * owner takes it again first when it needs a run. */
#define LENDER_SLOTS 64
/* [0]: arenas with a free slot; [1]: with a resident one. An arena lists and unlists itself as
 * its counts change, under its lock (its entry + 1 in lender_at); a full list leaves it off. */
static _Atomic(ta_arena_t *) lenders[2][LENDER_SLOTS];
/* Resident free slots of every arena: none, and no arena looks at the others' (a hint:
 * updated with each arena's count, never a reason to read a list without its lock). */
static _Atomic uint32_t warm_total;

_Static_assert(LENDER_SLOTS < 256, "an entry + 1 fits lender_at");

static void lender_set(ta_arena_t *a, unsigned list, bool has) {
  unsigned at = a->lender_at[list];
  /* (Not where it was: a fork child cleared the entry of an arena a signal handler's fork
   * caught between the two stores.) */
  if (has && at != 0 && atomic_load_explicit(&lenders[list][at - 1], memory_order_relaxed) != a)
    at = 0;
  if (has && at == 0) {
    a->lender_at[list] = (uint8_t)ta_arena_list_add(lenders[list], LENDER_SLOTS, a);
  } else if (!has && at != 0) {
    ta_arena_list_drop(lenders[list], at - 1, a);
    a->lender_at[list] = 0;
  }
}

/* warm_total += n, never below zero: a fork child sums it again from the arenas' counts
 * (ta_small_after_fork), and a note a signal handler's fork cut off between its arena's store
 * and this add is then applied twice when the interrupted call goes on. A hint off by a slot
 * costs a search at most; wrapped, it would cost one at every new run. */
static void warm_total_add(int n) {
  if (n >= 0) {
    atomic_fetch_add_explicit(&warm_total, (uint32_t)n, memory_order_relaxed);
    return;
  }
  uint32_t v = atomic_load_explicit(&warm_total, memory_order_relaxed), less = (uint32_t)-n;
  while (!atomic_compare_exchange_weak_explicit(&warm_total, &v, v > less ? v - less : 0,
                                                memory_order_relaxed, memory_order_relaxed)) {
  }
}

void ta_small_slots_note(ta_arena_t *a, int free, int warm) {
  uint32_t f = atomic_load_explicit(&a->slots_free, memory_order_relaxed) + (uint32_t)free;
  uint32_t w = atomic_load_explicit(&a->slots_warm, memory_order_relaxed) + (uint32_t)warm;
  atomic_store_explicit(&a->slots_free, f, memory_order_relaxed);
  atomic_store_explicit(&a->slots_warm, w, memory_order_relaxed);
  /* A zombie (a fork child's arena whose lock a thread of the parent held) never lends again:
   * the child left its slots out of warm_total and its entries off the lists. Only a call a
   * signal handler's fork interrupted, going on in the child, notes one here. */
  if (atomic_load_explicit(&a->state, memory_order_relaxed) == ARENA_ZOMBIE) return;
  if (warm != 0) warm_total_add(warm);
  lender_set(a, 0, f > 0);
  lender_set(a, 1, w > 0);
}

void ta_small_after_fork(uint32_t warm) {
  atomic_store_explicit(&warm_total, warm, memory_order_relaxed);
  for (unsigned list = 0; list < 2; list++)
    for (unsigned i = 0; i < LENDER_SLOTS; i++) {
      ta_arena_t *k = atomic_load_explicit(&lenders[list][i], memory_order_acquire);
      if (k == NULL) continue;
      /* SUSPENDED: the forking thread's own, back once its interrupted call ends. */
      if (atomic_load_explicit(&k->state, memory_order_relaxed) != ARENA_ZOMBIE) continue;
      /* Left without its thread: never lends again (nor counts in warm_total). */
      atomic_store_explicit(&lenders[list][i], NULL, memory_order_relaxed);
      k->lender_at[list] = 0;
    }
}

uint32_t ta_small_warm_total(void) {
  return atomic_load_explicit(&warm_total, memory_order_relaxed);
}

/* A free slot of keeper k's chunks (k's lock held): a resident one of any chunk with room (an
 * arena has few), else, with `cold`, the lowest of the first. 0 if none (slot 0 is the
 * header's). */
static unsigned slot_find(ta_arena_t *k, bool cold, ta_chunk_t **chunk) {
  for (ta_chunk_t *w = k->small_avail; w; w = w->next)
    if (w->free_slots & w->dirty_slots) {
      *chunk = w;
      return (unsigned)__builtin_ctzll(w->free_slots & w->dirty_slots);
    }
  ta_chunk_t *c = k->small_avail;
  if (!cold || c == NULL) return 0;
  *chunk = c;
  return (unsigned)__builtin_ctzll(c->free_slots);
}

/* Takes free slot `slot` of keeper k's chunk c for arena a (k's lock held; a may be k): out
 * of the masks and k's counts, committed (lazy commit: a refusal is the allocation's,
 * ENOMEM), counted in a's demand if its pages went back (a slot never used was counted
 * whole with its chunk, in its keeper's). */
static bool slot_take(ta_arena_t *k, ta_chunk_t *c, unsigned slot, ta_arena_t *a) {
  size_t slot_end = (size_t)(slot + 1) << TA_RUN_SHIFT;
  if (!ta_chunk_commit(c, slot_end)) return false;
  uint64_t bit = (uint64_t)1 << slot;
  bool warm = (c->dirty_slots & bit) != 0;
  c->free_slots &= ~bit;
  c->dirty_slots &= ~bit;
  ta_small_slots_note(k, -1, warm ? -1 : 0);
  if (warm)
    ta_dirty_add(k, -(intptr_t)TA_RUN_SIZE);
  else if (ta_chunk_run(c, slot)->empty_since == TA_SLOT_GIVEN_BACK)
    ta_dirty_fresh(a, TA_RUN_SIZE);
  if (c->free_slots == 0) {
    chunk_list_remove(&k->small_avail, c);
    chunk_list_push(&k->small_full, c);
  }
  return true;
}

/* A free slot another arena keeps, taken for arena a (a's lock held): resident, or with
 * `cold`, any. The chunk, and its slot in *slot; NULL if none could be had. */
static ta_chunk_t *slot_borrow(ta_arena_t *a, bool cold, unsigned *slot) {
  if (!cold && atomic_load_explicit(&warm_total, memory_order_relaxed) == 0) return NULL;
  if (!ta_fork_hold()) return NULL; /* a fork is under way: not another arena's lock */
  ta_chunk_t *got = NULL;
  for (unsigned i = 0; i < LENDER_SLOTS && got == NULL; i++) {
    ta_arena_t *k = atomic_load_explicit(&lenders[!cold][i], memory_order_acquire);
    if (k == NULL || k == a || ta_slow_held_by_me(k)) continue;
    int st = atomic_load_explicit(&k->state, memory_order_acquire);
    if (st != ARENA_FREE && st != ARENA_CLAIMED) continue; /* a fork child's leftovers */
    if (atomic_load_explicit(cold ? &k->slots_free : &k->slots_warm, memory_order_relaxed) == 0)
      continue;
    if (!ta_slow_try_enter_beside(k)) continue; /* its run slots: no light section's */
    ta_chunk_t *c = NULL;
    unsigned s = slot_find(k, cold, &c);
    if (s != 0 && slot_take(k, c, s, a)) {
      got = c;
      *slot = s;
    }
    ta_slow_leave(k);
  }
  ta_fork_unhold();
  return got;
}

/* The run's blocks below byte `limit` are threaded, the others are not: other threads read
 * `accept` to validate their frees into it (ta_small_valid), its owner's free too. */
static void run_set_limit(ta_run_t *r, uint32_t limit) {
  __atomic_store_n(&r->limit, limit, __ATOMIC_RELAXED);
  __atomic_store_n(&r->accept, ta_run_accept(r->bsize, r->recip, limit), __ATOMIC_RELAXED);
}

/* Slot `slot` of chunk c, set up as a run of class cls for arena a. */
static ta_run_t *run_init(ta_arena_t *a, ta_chunk_t *c, unsigned slot, unsigned cls) {
  ta_run_t *r = ta_chunk_run(c, slot);
  uint32_t bs = (uint32_t)ta_class_size[cls];
  r->free = NULL;
  TA_STORE(r->used, RUN_ACTIVE_BIAS); /* read by statistics readers, as are the others stored */
  TA_STORE(r->bsize, bs);
  TA_STORE(r->recip, ta_run_recip(bs));
  TA_STORE(r->limit, 0);
  TA_STORE(r->accept, 0);
  TA_STORE(r->cls, (uint8_t)cls);
  r->state = RUN_ACTIVE;
  r->next = r->prev = NULL;
  r->empty_since = 0;
  ta_run_pair(r)->fork_cut = false;
  /* Last, and published: a racing invalid free must not see a half-made run as ours. */
  __atomic_store_n(&r->owner, a, __ATOMIC_RELEASE);
  return r;
}

/* A new run for class cls, from the cheapest free slot: an emptied run of a slot another
 * arena keeps that waits to go back (resident, no lock), a resident slot of its own, a
 * resident one another arena lends, a slot of its own not resident, its own empty chunk, a
 * slot never used that another arena lends (with no chunk of its own with room), a new
 * chunk. */
static ta_run_t *run_new(ta_arena_t *a, unsigned cls) {
  ta_run_t *back = a->lent_back;
  if (back != NULL) {
    a->lent_back = back->next;
    if (back->empty_since == TA_SLOT_GIVEN_BACK)
      ta_dirty_fresh(a, TA_RUN_SIZE);
    else
      ta_dirty_add(a, -(intptr_t)TA_RUN_SIZE);
    return run_init(a, ta_chunk_of(back), back->slot, cls);
  }
  ta_chunk_t *c = NULL;
  unsigned slot = slot_find(a, false, &c);
  if (slot == 0 && (c = slot_borrow(a, false, &slot)) != NULL) return run_init(a, c, slot, cls);
  if (slot == 0) slot = slot_find(a, true, &c);
  if (slot == 0 && a->empty_chunks == NULL && a->small_full == NULL &&
      (c = slot_borrow(a, true, &slot)) != NULL)
    return run_init(a, c, slot, cls);
  if (slot == 0) {
    if ((c = small_chunk_new(a)) == NULL) return NULL;
    slot = 1;
  }
  if (!slot_take(a, c, slot, a)) return NULL;
  return run_init(a, c, slot, cls);
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

/* Free slot r, emptied, back into its keeper k's masks (k's lock held): resident, freed at
 * r->empty_since, unless its pages went back (TA_SLOT_GIVEN_BACK). A chunk with no run left
 * goes back to k's reserve of empty chunks. */
static void slot_give_back(ta_arena_t *k, ta_run_t *r) {
  ta_chunk_t *c = ta_chunk_of(r);
  if (c->free_slots == 0) {
    chunk_list_remove(&k->small_full, c);
    chunk_list_push(&k->small_avail, c);
  }
  c->free_slots |= (uint64_t)1 << r->slot;
  if (c->free_slots == ALL_SLOTS) {
    int warm = __builtin_popcountll(c->dirty_slots);
    ta_small_slots_note(k, -(int)(TA_RUNS_PER_CHUNK - 2), -warm);
    ta_dirty_add(k, -((intptr_t)warm << TA_RUN_SHIFT));
    c->dirty_slots = 0; /* the whole chunk is purged as one */
    chunk_list_remove(&k->small_avail, c);
    ta_chunk_release(k, c);
    return;
  }
  if (r->empty_since == TA_SLOT_GIVEN_BACK) {
    ta_small_slots_note(k, 1, 0);
    return;
  }
  c->dirty_slots |= (uint64_t)1 << r->slot;
  ta_small_slots_note(k, 1, 1);
  ta_purge_note(k, r->empty_since);
  ta_dirty_add(k, (intptr_t)TA_RUN_SIZE);
}

/* Whether arena a's emptied run r of a slot keeper k keeps went back to k: k's lock could be
 * had (tried: a's is held). A fork child's arena left without its thread (ZOMBIE) keeps its
 * chunks for good: the slot's pages go back and the slot stays out of use. */
static bool lent_give_back(ta_run_t *r) {
  ta_arena_t *k = TA_LOAD(ta_chunk_of(r)->owner); /* stays the keeper while a slot is out */
  int st = atomic_load_explicit(&k->state, memory_order_acquire);
  if (st == ARENA_ZOMBIE) {
    if (r->empty_since != TA_SLOT_GIVEN_BACK) (void)ta_os_decommit(ta_run_base(r), TA_RUN_SIZE);
    return true;
  }
  if (ta_slow_held_by_me(k) || !ta_fork_hold()) return false;
  bool ok = ta_slow_try_enter_beside(k); /* its run slots: no light section's */
  if (ok) {
    slot_give_back(k, r);
    ta_slow_leave(k);
    /* An ownerless keeper's free memory goes back with the orphan purge: told, as a remote
     * free into it tells it. Claimed, perhaps by an orphan purge about to let it go: the flag
     * first, then the state (ta_arena_give_back stores the state, then takes the flag). */
    atomic_store_explicit(&k->slot_came_back, true, memory_order_seq_cst);
    if (atomic_load_explicit(&k->state, memory_order_seq_cst) != ARENA_CLAIMED)
      ta_note_orphan_work();
  }
  ta_fork_unhold();
  return ok;
}

size_t ta_small_lent_return(ta_arena_t *a, uint64_t now, uint64_t cut, size_t *waiting,
                            uint64_t *oldest) {
  size_t freed = 0;
  *waiting = 0;
  *oldest = 0;
  ta_slow_enter(a);
  for (ta_run_t **pp = &a->lent_back; *pp;) {
    ta_run_t *r = *pp, *next = r->next;
    bool resident = r->empty_since != TA_SLOT_GIVEN_BACK;
    /* Off the list first: once back, the slot is its keeper's, and may be anyone's run. */
    *pp = next;
    r->next = NULL;
    if (lent_give_back(r)) {
      if (resident) ta_dirty_add(a, -(intptr_t)TA_RUN_SIZE);
      continue;
    }
    r->next = next;
    *pp = r;
    pp = &r->next;
    /* Its keeper busy: what is due goes back to the kernel from here, the slot still waits;
     * the next try comes a decay time on (or its own decay time, resident). */
    if (resident && r->empty_since <= cut && ta_os_decommit(ta_run_base(r), TA_RUN_SIZE) == 0) {
      r->empty_since = TA_SLOT_GIVEN_BACK;
      ta_dirty_add(a, -(intptr_t)TA_RUN_SIZE);
      freed += TA_RUN_SIZE;
      resident = false;
    }
    /* Not due yet: at its own decay time; else (its pages gone, or refused) a decay time on,
     * and 10 ms at least (decay_ms may be 0: a purge would come due at every call). */
    uint64_t retry = now + (ta_decay_ms < 10 ? 10 - ta_decay_ms : 0);
    uint64_t since = resident && r->empty_since > cut ? r->empty_since : retry;
    if (resident) *waiting += TA_RUN_SIZE;
    if (*oldest == 0 || since < *oldest) *oldest = since;
  }
  ta_slow_leave(a);
  return freed;
}

static void run_retire(ta_arena_t *a, ta_run_t *r) {
  run_wipe(r);
  TA_STORE(r->owner, NULL);
  r->state = RUN_UNUSED;
  r->free = NULL;
  r->empty_since = ta_os_now_ms();
  ta_arena_t *k = TA_LOAD(ta_chunk_of(r)->owner);
  if (k == a) {
    slot_give_back(a, r);
    return;
  }
  /* Lent by another arena: back to it now if its lock can be had, else it waits here. */
  if (lent_give_back(r)) return;
  r->next = a->lent_back;
  a->lent_back = r;
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
static bool run_can_carve(const ta_run_t *r) {
  return r->limit + r->bsize <= ta_run_cap(r) * r->bsize;
}

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
 * it may take milliseconds. Only where asked (`huge_halves`; unset, only where the kernel
 * gives huge pages to everything, `always`: on a virtual machine a collapsed half made the
 * program's own loads slower long after the call, design.md), where the kernel gives huge
 * pages (on advice, or `always`: there every chunk is told to have none, os.c), of half a
 * chunk, with `huge_pages` on, and within the budget below. */
static bool halves_wanted(void) {
  return ta_huge_halves > 0 || (ta_huge_halves < 0 && ta_os_thp_mode() == TA_THP_ALWAYS);
}

/* What the calls may take of the process's time: 1% of the time since the first, never more
 * than 40 ms ahead of that pace (20 ms at start, and 20 ms of credit saved at most). A call
 * takes 0.4–1 ms where the kernel has a huge page at hand, 4–6 ms on a virtual machine whose
 * host backs a fresh 2 MiB page by page, more under memory pressure (the kernel reclaims and
 * compacts for it): a heap made dense at speed (bench/'s `frag`, 171 halves in a second)
 * spent 0.9 s of its 1 s in them. The budget bounds the calls only, not what a collapsed half
 * costs the program's loads after it (design.md). A half found dense beyond it is looked at
 * again at its next carve. Process-wide and relaxed: threads checking at once may all pass,
 * by a call each. */
#define TA_COLLAPSE_FREE_US 20000
#define TA_COLLAPSE_SHARE 100
_Atomic uint64_t ta_collapse_spent_us, ta_collapse_first_us;
/* For the statistics report: halves the kernel made one huge page, those it refused, and the
 * time the calls took (spent_us above is that time raised to the pace's floor). */
_Atomic uint64_t ta_collapse_made, ta_collapse_refused, ta_collapse_call_us;
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
  if (!ta_huge_pages || !halves_wanted() || (c->thp & TA_THP_TRIED(half)) ||
      (c->free_slots & mask) || ta_hugepage_size != TA_CHUNK_SIZE / 2 ||
      ta_os_thp_mode() == TA_THP_NEVER || atomic_load_explicit(&collapse_off, memory_order_relaxed))
    return;
  size_t touched = 0;
  for (unsigned i = half * TA_HALF_SLOTS; i < (half + 1) * TA_HALF_SLOTS; i++) {
    const ta_run_t *r = ta_chunk_run(c, i);
    /* A slot lent to another arena is that arena's run: read as it changes. */
    uint32_t bs = TA_LOAD(r->bsize), limit = __atomic_load_n(&r->limit, __ATOMIC_RELAXED);
    touched += i == 0                                 ? TA_RUN_SIZE
               : bs == 0 || TA_LOAD(r->owner) == NULL ? 0 /* an emptied run waiting to go back */
               : bs > ta_page_size                    ? (size_t)(limit / bs) * ta_page_size
                                                      : ta_align_up(limit, ta_page_size);
  }
  if (touched < TA_CHUNK_SIZE / 2 - TA_RUN_SIZE || !collapse_budget_left()) return;
  c->thp |= (uint8_t)TA_THP_TRIED(half); /* once: a refusal is not asked again */
  ta_collapse_pending = (uintptr_t)c | half;
}

/* The half half_collapse_maybe found dense, made one huge page: by the keeper, its slow-path
 * lock let go, in the same slow path. The chunk stays the arena's meanwhile (a chunk with a
 * run in use never leaves its keeper). A slot of the half may empty and be given back by a
 * purge as the call runs (a lent run's owner, emptying it, hands it back under the keeper's
 * lock): the kernel's collapse keeps every page's contents, and a page given back meanwhile
 * reads zero as any page given back, so nothing of the blocks changes. */
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
  if (always && ta_os_hugepage(half, TA_CHUNK_SIZE / 2, true) != 0) {
    atomic_fetch_add_explicit(&ta_collapse_refused, 1, memory_order_relaxed);
    return;
  }
  int r = ta_os_collapse(half, TA_CHUNK_SIZE / 2);
  if (always) (void)ta_os_hugepage(half, TA_CHUNK_SIZE / 2, false);
  uint64_t took = ta_os_now_us() - t0;
  atomic_fetch_add_explicit(&ta_collapse_spent_us, took, memory_order_relaxed);
  atomic_fetch_add_explicit(&ta_collapse_call_us, took, memory_order_relaxed);
  atomic_fetch_add_explicit(r == 0 ? &ta_collapse_made : &ta_collapse_refused, 1,
                            memory_order_relaxed);
  if (r == EINVAL || r == EPERM || r == ENOSYS)
    atomic_store_explicit(&collapse_off, true, memory_order_relaxed);
}

/* The blocks of r numbered from to to (exclusive), counted from base, pushed onto list head
 * highest first, each with its mark: the list hands them out in address order. The new head. */
static ta_block_t *thread_down(const ta_run_t *r, char *base, uint32_t from, uint32_t to,
                               ta_block_t *head) {
  size_t bs = r->bsize;
  for (char *p = base + (size_t)to * bs, *end = base + (size_t)from * bs; p != end;) {
    p -= bs;
    ta_block_t *b = (ta_block_t *)p;
    b->link = ta_link_enc(head);
    b->key = ta_mark(b);
    head = b;
  }
  return head;
}

static void run_carve(ta_run_t *r) {
  uint32_t left = ta_run_cap(r) - r->limit / r->bsize;
  uint32_t n = ta_run_page_blocks(r);
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
    /* The first page from its colour on (ta_run_colour; n is its blocks then), then from
     * its start; any other in address order. Pushed last to first: below the colour, then
     * from it up. */
    uint32_t c = r->limit == 0 ? ta_run_colour(r) : 0;
    head = thread_down(r, base, 0, c, head);
    head = thread_down(r, base, c, n, head);
  }
  r->free = head;
  run_set_limit(r, r->limit + n * r->bsize);
  TA_ADD(r->owner->cnt.first_uses, n);
  /* The keeper's call: its lock guards the chunk's masks (a lent slot's owner does not hold
   * it), and a half of several arenas' runs is dense as much for it. */
  ta_chunk_t *c = ta_chunk_of(r);
  if (TA_LOAD(c->owner) == r->owner) half_collapse_maybe(c, r->slot);
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
 * (RUN_USED, in any state; blocks on remote lists count as in use); room above `limit` is
 * not counted, as in a run that gave pages back it would be faulted in again. */
enum { PICK_FEW = 8 };
static uint32_t run_free_blocks(const ta_run_t *r) {
  return ta_run_index(r, r->limit) - (uint32_t)RUN_USED(r); /* threaded, less those in use */
}
static ta_run_t *partial_pick(ta_arena_t *a, ta_run_t *newest, unsigned cls) {
  uint32_t free_new = run_free_blocks(newest);
  if (free_new >= PICK_FEW || free_new * 4 >= ta_run_cap(newest)) return newest;
  ta_run_t *oldest = a->partial_tail[cls];
  return run_free_blocks(oldest) > free_new ? oldest : newest;
}

static void run_order_maybe(ta_run_t *r);

/* A run's moves between the states, each made by the owner under the lock or in a light
 * section (ta_small_alloc_slow, ta_small_free_slow). ACTIVE -> FULL: the current run with no
 * block left; the caller makes another current. */
static void run_to_full(ta_run_t *r) {
  r->state = RUN_FULL;
  TA_STORE(r->used, (r->used - RUN_ACTIVE_BIAS) | RUN_FULL_BIT);
}
/* PARTIAL -> ACTIVE: off its class's list; the caller makes it current. */
static void run_to_active(ta_arena_t *a, ta_run_t *r) {
  mid_unkeep(a, r);
  partial_remove(a, r);
  r->state = RUN_ACTIVE;
  TA_ADD(r->used, RUN_ACTIVE_BIAS);
}
/* FULL -> PARTIAL: its first free. */
static void run_to_partial(ta_arena_t *a, ta_run_t *r) {
  TA_STORE(r->used, r->used & ~RUN_FULL_BIT);
  partial_push(a, r);
}

/* The refill's common case in the owner's light section (internal.h, ta_light_enter), which
 * the first refill under the lock allows: the current run has no block left and nothing to
 * carve, and a PARTIAL run with a list takes its place; NULL where the lock is needed (a carve,
 * which may touch the chunk's huge-page marks, a new run: run slots, which lenders change
 * beside the section). The lock's compare-and-swap waited for every store the program had made
 * before the call to reach the cache: in bench/run's `random`, whose frees write cold blocks,
 * the instructions after it in this function and ta_small_free_slow held 7% of the samples
 * (perf, cpu-clock); it now runs in 0.94 of its time (interleaved medians of 11). */
static ta_block_t *refill_light(ta_arena_t *a, unsigned cls) {
  mid_note(a, cls);
  ta_run_t *r = a->cur[cls];
  check_head(r);
  if (r != &ta_empty_run && (r->free != NULL || run_can_carve(r))) return NULL;
  ta_run_t *p = a->partial[cls];
  if (p == NULL) return NULL;
  p = partial_pick(a, p, cls);
  /* A run mostly free is threaded again first (run_order_maybe): a walk of up to thousands
   * of blocks, too long for a section that lock takers wait out. Not a mid class's: its run
   * holds 7 blocks at most, and their order buys nothing there. */
  if (p->free == NULL || (cls <= TA_NUM_SMALL && run_free_blocks(p) * 4 >= ta_run_cap(p) * 3))
    return NULL;
  check_head(p);
  if (r != &ta_empty_run) run_to_full(r);
  run_to_active(a, p);
  a->cur[cls] = p;
  a->light_small++;
  return ta_run_pop(p);
}

/* grow: may take a new run; without it, NULL when no run of the arena has a block left (the
 * caller then lets what is due go back first). The caller took the remote frees in. The common
 * case first in a light section (refill_light), then the rest under the lock, which allows
 * light sections from then on. */
void *ta_small_alloc_slow(ta_arena_t *a, unsigned cls, bool grow) {
  if (!ta_secure && ta_light_enter(a)) {
    ta_block_t *b = refill_light(a, cls);
    ta_light_leave(a);
    if (b != NULL) return b;
  }
  ta_slow_enter(a);
  if (!ta_secure) ta_light_allow(a);
  mid_note(a, cls);
  check_head(a->cur[cls]);
  ta_run_t *r = a->cur[cls];
  if (r != &ta_empty_run) {
    if (r->free == NULL && run_can_carve(r)) run_carve(r);
    if (r->free) goto pop;
    run_to_full(r);
    a->cur[cls] = &ta_empty_run;
  }
  r = a->partial[cls];
  if (r) {
    r = partial_pick(a, r, cls);
    check_head(r);
    run_to_active(a, r);
    run_order_maybe(r); /* (RUN_USED leaves the bias out) */
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

size_t ta_run_limit = ta_secure ? TA_SMALL_MAX : TA_MID_MAX;
/* The process has had `count` arenas at once (arena.c, at each new arena): from
 * TA_FEW_ARENAS on, the mid classes take no new runs. A thread's runs are its own, and a
 * class's run holds a page or more of the thread's memory however few of its blocks the thread
 * keeps; with many threads, spans (one free pool for all threads) serve those sizes instead
 * (docs/design.md, "Mid classes"). Runs taken before keep serving the frees of their blocks,
 * and retire as they empty. */
/* At initialisation, the page size known: no mid class takes runs with pages of more than 4 KiB.
 * A mid block (at most 16 KiB) would then be a page or less, and the pages of its free blocks
 * could not go back without the one that holds its link (ta_small_mid_release): an idle
 * thread would keep them all. */
void ta_run_limit_init(void) {
  if (ta_page_size > TA_PAGE_MIN) TA_STORE(ta_run_limit, TA_SMALL_MAX);
}

void ta_run_limit_arenas(uint32_t count) {
  if (count >= TA_FEW_ARENAS && TA_LOAD(ta_run_limit) > TA_SMALL_MAX)
    TA_STORE(ta_run_limit, TA_SMALL_MAX);
}

/* A mid run's first free block since the arena's last release of them (ta_small_mid_release):
 * the release comes due a decay time from now, as the medium cache's flush does. */
static void mid_clock(ta_arena_t *a) {
  a->mid_since = ta_os_now_ms();
  ta_purge_note(a, a->mid_since);
}

/* Retires k, the empty run its mid class keeps on its list (arena.mid_kept): unnamed, off the
 * list, its slot given back. The owner's shrink and any full purge's (ta_small_retire_idle). */
static void mid_retire_kept(ta_arena_t *a, ta_run_t *k) {
  mid_unkeep(a, k);
  partial_remove(a, k);
  run_retire(a, k);
}

/* Whether run r of arena a stays on its class's list when it empties: a mid class's (9 to
 * 16 KiB), while runs serve those classes, and one a class (arena.mid_kept). Its run holds 4
 * to 7 blocks, so a thread that keeps a few of them live empties one and needs another every
 * few calls: retired and taken again each time (the slot given back, taken, carved), a mid
 * block's malloc and free cost about as much as the medium cache's (threads-32k: a refill on
 * 42% of the mid mallocs). Kept, the refill makes it current again in a light section. One, as
 * the pages of a run kept empty by a thread that then idles stay (but those past each block's
 * first: ta_small_mid_release). It retires at the owner's next purge after the decay
 * (ta_small_shrink), or a full purge's (ta_small_retire_idle), its slot going back then. */
static bool run_keeps_empty(ta_arena_t *a, const ta_run_t *r) {
  if (r->cls <= TA_NUM_SMALL) return false;
  ta_run_t *k = *mid_slot(a, r->cls);
  /* Named already: a signal handler's calls, nested in the owner's free of r's last block
   * (between its count and this slow path), took r and emptied it again. */
  return k == r || (k == NULL && TA_LOAD(ta_run_limit) > TA_SMALL_MAX);
}

/* After a free made the run's list non-empty again or emptied the run. A FULL run's first
 * free joins its class's list, and a run that keeps its slot empty (run_keeps_empty) stays
 * there, in the owner's light section (as a refill takes it, refill_light: lists and states no
 * lender of run slots touches); emptying any other run gives its slot back, under the lock. */
void ta_small_free_slow(ta_arena_t *a, ta_run_t *r) {
  /* A run retired under this free by calls nested in it (a signal handler's; no purge
   * retires a run its class does not name, ta_small_shrink): nothing is left to do. */
  if (TA_UNLIKELY(r->state == RUN_UNUSED)) return;
  if (!ta_secure && ta_light_enter(a)) {
    bool keep = (r->used & ~RUN_FULL_BIT) == 0 && run_keeps_empty(a, r);
    if (keep) *mid_slot(a, r->cls) = r;
    if ((r->used & ~RUN_FULL_BIT) != 0 || keep) {
      if (r->used & RUN_FULL_BIT) run_to_partial(a, r);
      mid_note(a, r->cls);
      a->light_small++;
      ta_light_leave(a);
      return;
    }
    ta_light_leave(a);
  }
  ta_slow_enter(a);
  bool keep = (r->used & ~RUN_FULL_BIT) == 0 && run_keeps_empty(a, r);
  if (keep) *mid_slot(a, r->cls) = r;
  mid_note(a, r->cls);
  if (r->used & RUN_FULL_BIT) run_to_partial(a, r);
  if (r->used == 0 && r->state == RUN_PARTIAL && !keep) {
    partial_remove(a, r);
    run_retire(a, r);
  }
  ta_slow_leave(a);
}

void ta_small_free_local(ta_arena_t *a, ta_run_t *r, ta_block_t *b) {
  b->key = ta_mark(b);
  ta_run_push(a, r, b);
}

/* Whether p is on its run's free list (the owner's view; a bounded walk). */
bool ta_small_on_free_list(const ta_run_t *r, const void *p) {
  uint32_t n = 0, cap = ta_run_cap(r);
  for (const ta_block_t *f = r->free; f && n <= cap; f = ta_block_next(f), n++) {
    if (f == p) return true;
    if (!ta_same_chunk(f, r)) ta_fatal("free(): corrupted free list, next block", f);
  }
  return false;
}

/* Whether the owner's block p, whose mark says "free", is free: on its run's list, or held in
 * another thread's chain of remote frees put off (arena.c), on no list but with a link that
 * decodes to a list's end or a block of ours (another thread's rule, alloc.c, free_to_owner).
 * The owner's verdicts (ta_small_freed) and the confirmation of a suspect (arena.c) share it. */
bool ta_small_marked_free(const ta_run_t *r, const void *p) {
  return ta_small_on_free_list(r, p) || ta_link_plausible(p);
}

/* The owner's verdict on its block p, whose mark says "free" (ta_small_marked_free): freed by
 * another thread, taking in the remote frees shows it on the run's list (the caller took them
 * in just before). That may even have retired the run or given its chunk back, so the map is
 * read first. */
bool ta_small_freed(ta_arena_t *a, ta_run_t *r, const void *p) {
  /* Under the lock: the background purger may hold the remote list (the block perhaps on
   * it) while it takes the medium blocks off; the lock waits for it to put it back. The
   * caller took it before it took the remote frees in, for the same reason. */
  ta_slow_enter(a);
  bool freed =
      ta_map_get((uintptr_t)p) != TA_MAP_SMALL || r->owner != a || ta_small_marked_free(r, p);
  ta_slow_leave(a);
  return freed;
}

/* Retires the empty runs mid classes keep on their lists (run_keeps_empty) and, for the
 * thread that owns a (`owner`), the active runs that hold no block, on a full purge
 * (malloc_trim, an ownerless arena), so that their chunks can empty and go back. Another
 * thread's trim holds a's lock, which keeps the owner's light sections out, where the owner
 * makes a run its class's kept one or takes it off the list: the kept runs are its to retire,
 * by name (arena.mid_kept). Not any other run found empty: the owner's free may be between its
 * count and its slow path, which decides the run's fate. Nor the active runs, which the owner's
 * fast path pops without the lock. */
void ta_small_retire_idle(ta_arena_t *a, bool owner) {
  ta_slow_enter(a);
  for (unsigned cls = TA_NUM_SMALL + 1; cls <= TA_NUM_RUN; cls++) {
    ta_run_t *k = *mid_slot(a, cls);
    if (k == NULL || k->owner != a || k->cls != cls || k->state != RUN_PARTIAL ||
        TA_LOAD(k->used) != 0)
      continue;
    mid_retire_kept(a, k);
  }
  for (unsigned cls = 1; owner && cls <= TA_NUM_RUN; cls++) {
    ta_run_t *r = a->cur[cls];
    if (r != &ta_empty_run && RUN_USED(r) == 0) {
      a->cur[cls] = &ta_empty_run;
      TA_STORE(r->used, 0);
      run_retire(a, r);
    }
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
static void bit_set(uint64_t *bits, uint32_t k) { bits[k / 64] |= (uint64_t)1 << (k % 64); }

/* Block k of run r, and the index of r's block b. */
static const ta_block_t *block_at(const ta_run_t *r, uint32_t k) {
  return (const ta_block_t *)(ta_run_base(r) + (size_t)k * r->bsize);
}
static uint32_t block_index(const ta_run_t *r, const void *b) {
  return ta_run_index(r, (uint32_t)((uintptr_t)b & (TA_RUN_SIZE - 1)));
}

/* The mark word of a block that may be in use: the program, or a thread freeing the block,
 * may be writing it as it is read, with plain stores nothing on our side can order. Any
 * value will do (a mark decides nothing alone: the walk, or the scan's count and links, do):
 * a peek (internal.h, TA_PEEK). */
TA_PEEK_FN static uintptr_t mark_peek(const ta_block_t *b) { return TA_PEEK(b->key); }

/* The link word of a block the scan found marked, read as mark_peek reads its mark: the mark
 * may be the program's data, or the block may have just been freed by another thread, whose
 * push onto a remote list rewrites the link until its compare-and-swap succeeds. Any value
 * will do: such a block is one marked block too many, and the scan gives way. */
TA_PEEK_FN static ta_block_t *link_peek(const ta_block_t *b) {
  return ta_link_dec(TA_PEEK(b->link));
}

/* The head of r's free list read by a thread that holds the arena's lock but not its fast
 * paths: the owner's free pushes onto the list without the lock, a plain store. Any value
 * will do: what it names is checked block by block (run_release). */
TA_PEEK_FN static ta_block_t *head_peek(const ta_run_t *r) { return TA_PEEK(r->free); }

/* The free mid blocks' pages (ta_small_mid_release). A block's third word says its pages went
 * back (ta_mid_released, internal.h; cleared when it is handed out again, alloc.c), so that a
 * release makes no call for it again, nor counts its bytes twice. */
TA_PEEK_FN static uintptr_t word2_peek(const ta_block_t *b) {
  return TA_PEEK(((const uintptr_t *)b)[2]);
}

/* The pages of free mid block b of run r past its first words (its link, mark and the word
 * above, and with them the page that holds them): they go back to the kernel, the block staying
 * on the list, and a later malloc that takes it faults them in again. */
static size_t block_release(const ta_run_t *r, ta_block_t *b) {
  if (word2_peek(b) == ta_mid_released(b)) return 0;
  uintptr_t from = ta_align_up((uintptr_t)b + 3 * sizeof(uintptr_t), ta_page_size);
  uintptr_t to = ((uintptr_t)b + r->bsize) & ~(uintptr_t)(ta_page_size - 1);
  if (from >= to || ta_os_decommit((void *)from, to - from) != 0) return 0;
  ((uintptr_t *)b)[2] = ta_mid_released(b);
  return to - from;
}

/* The free blocks of one mid run, from its list's head as the owner left it: each a block
 * start of the run below its limit with its mark, else the walk stops (a block written after
 * its free, or a push caught half made: the owner pushes without the lock). */
static size_t run_release(ta_run_t *r) {
  size_t freed = 0;
  uint32_t cap = ta_run_cap(r);
  ta_block_t *b = head_peek(r);
  for (uint32_t n = 0; b != NULL && n < cap; n++) {
    if (!ta_same_chunk(b, r) || !ta_small_valid(r, b) || mark_peek(b) != ta_mark(b)) break;
    freed += block_release(r, b);
    b = link_peek(b);
  }
  /* As run_shrink: the chunk's huge-page marks are its keeper's. */
  ta_chunk_t *c = ta_chunk_of(r);
  if (freed != 0 && TA_LOAD(c->owner) == r->owner) ta_chunk_thp_lost(c, r->slot, 1);
  return freed;
}

size_t ta_small_mid_release(ta_arena_t *a, uint64_t now) {
  size_t freed = 0;
  for (unsigned cls = TA_NUM_SMALL + 1; cls <= TA_NUM_RUN; cls++) {
    if (a->cur[cls] != &ta_empty_run) freed += run_release(a->cur[cls]);
    for (ta_run_t *r = a->partial[cls]; r != NULL; r = r->next)
      freed += run_release(r);
  }
  /* Frees into a run that neither fills nor empties start no clock: while releases find
   * blocks to give back, the next comes a decay time later; one that finds none waits for the
   * owner's next slow path of a mid class. */
  a->mid_since = 0;
  if (freed != 0) {
    a->mid_since = now;
    ta_purge_note(a, now);
  }
  return freed;
}

/* The walk: sets the bit of every block on r's free list. Each entry must be a block of this
 * run below its limit that holds its free mark, and none may come twice (which bounds the
 * walk by the run's blocks): anything else is a link overwritten after free. (The mark is
 * checked so that a forged link to a live block is reported, not rethreaded: the rewrite
 * would store a link into the program's data.) */
static void run_free_bits_walk(const ta_run_t *r, uint64_t *bits) {
  for (ta_block_t *b = r->free; b; b = ta_block_next(b)) {
    if (ta_run_of(b) != r || !ta_small_valid(r, b) || b->key != ta_mark(b))
      ta_fatal("malloc(): corrupted free list, next block", b);
    uint32_t k = block_index(r, b);
    if (bit_get(bits, k)) ta_fatal("malloc(): corrupted free list, next block", b);
    bit_set(bits, k);
  }
}

/* The scan: the same bits from every threaded block's mark, read in address order. The walk
 * follows the list in the order its blocks were freed, a dependent load each, and after a
 * wave of frees each is a cache miss the next cannot overlap: in bench/run's `frag` workload
 * the walk took 11% of the samples, 94% of them on that load (the scan: 1.3%). A sequential
 * read of the run is what the hardware prefetches best. A mark proves nothing on its own
 * (the program may hold those bytes, a block on the remote list has its mark too), so the
 * scan stands only where it finds what the walk would (given a right `used`: a double free
 * the owner missed can make it one too low, and then marked blocks in a cycle of their own,
 * beside the list, would pass):
 *   - the marked blocks are exactly as many as the run has free (threaded less used, and
 *     used counts the blocks on remote lists), so no live block is among them, since every
 *     block on the list has its mark;
 *   - each marked block's link is an end or another marked block of this run, no two name
 *     the same block, and the head is a marked block that none names.
 * Anything else, and the walk decides, with its report. Those hold, but more than the head
 * is named by no link: the list was cut in two by a link zeroed after free (the walk would
 * end at the cut, and lose the blocks behind it), reported naming the first block it lost,
 * except in a run that was current in an arena a fork child took over from a thread it does
 * not have (`fork_cut`, beside the run): there a pop the fork stopped between its two stores
 * left the block it took off the list still marked and not counted in use, linking to the
 * end if it was the last, which has the same shape; the walk decides, and that block stays
 * out of the list, leaked, until the run is emptied (the flag goes with the slot's next run;
 * a real cut in such a run goes unreported till then, see design.md, "fork").
 * The marks of blocks the program may hold as whole pages (mprotect) are not read: classes
 * of a page or more, whose runs have few blocks, are walked; so is a run with fewer than half
 * of its blocks free (a shrink of a run in use), where the walk reads less. Returns whether
 * the bits are set. */
static bool run_free_bits_scan(const ta_run_t *r, uint64_t *bits) {
  uint32_t n = ta_run_index(r, r->limit), want = run_free_blocks(r), found = 0;
  if (r->bsize >= ta_page_size || want > n || want * 2 < n) return false;
  for (uint32_t k = 0; k < n; k++) {
    const ta_block_t *b = block_at(r, k);
    uint64_t m = mark_peek(b) == ta_mark(b);
    bits[k / 64] |= m << (k % 64);
    found += (uint32_t)m;
  }
  if (found != want || r->free == NULL || !ta_small_valid(r, r->free)) return false;
  uint64_t named[RUN_MAX_BLOCKS / 64] = {0};
  uint32_t names = 0;
  for (uint32_t w = 0; w < (n + 63) / 64; w++) {
    for (uint64_t m = bits[w]; m != 0; m &= m - 1) {
      const ta_block_t *next = link_peek(block_at(r, w * 64 + (uint32_t)__builtin_ctzll(m)));
      if (next == NULL) continue;
      if (!ta_small_valid(r, next)) return false;
      uint32_t j = block_index(r, next);
      if (!bit_get(bits, j) || bit_get(named, j)) return false;
      bit_set(named, j);
      names++;
    }
  }
  uint32_t h = block_index(r, r->free);
  if (!bit_get(bits, h) || bit_get(named, h)) return false;
  if (names + 1 == found) return true;
  if (ta_run_pair(r)->fork_cut) return false;
  for (uint32_t w = 0; w < (n + 63) / 64; w++) { /* another block no link names: the cut */
    uint64_t m = bits[w] & ~named[w];
    if (w == h / 64) m &= ~((uint64_t)1 << (h % 64));
    if (m != 0)
      ta_fatal("malloc(): corrupted free list, next block",
               block_at(r, w * 64 + (uint32_t)__builtin_ctzll(m)));
  }
  return false; /* not reached: names < found - 1 leaves a second unnamed block */
}

/* Sets the bit of every block on r's free list (bits: zero, RUN_MAX_BLOCKS of them): by the
 * scan when it can tell, else by the walk. Not the scan in the hardened build: a block of the
 * run in its quarantine is marked and on no list, and the scan would give way. */
static void run_free_bits(const ta_run_t *r, uint64_t *bits) {
  if (!ta_secure && run_free_bits_scan(r, bits)) return;
  memset(bits, 0, RUN_MAX_BLOCKS / 8);
  run_free_bits_walk(r, bits);
}

/* The blocks of r whose bits are set in [lo, hi) pushed onto list head, the highest first (their
 * links alone: their marks are there). The new head. */
static ta_block_t *push_bits_down(const ta_run_t *r, const uint64_t *bits, uint32_t lo, uint32_t hi,
                                  ta_block_t *head) {
  char *base = ta_run_base(r);
  for (uint32_t w = (hi + 63) / 64; lo < hi && w-- > lo / 64;) {
    uint64_t m = bits[w];
    if (w == hi / 64) m &= ((uint64_t)1 << (hi % 64)) - 1; /* hi % 64 != 0 here */
    if (w == lo / 64) m &= ~(uint64_t)0 << (lo % 64);
    while (m != 0) {
      unsigned top = 63 - (unsigned)__builtin_clzll(m);
      m &= ~((uint64_t)1 << top);
      ta_block_t *b = (ta_block_t *)(base + ((size_t)w * 64 + top) * r->bsize);
      b->link = ta_link_enc(head);
      head = b;
    }
  }
  return head;
}

/* Threads r's free list again with its free blocks below index `keep`: in address order (the
 * first page from its colour, ta_run_colour), so that malloc favours the low end and the next
 * shrink finds more; the hardened build keeps
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
    /* The first page from its colour on (ta_run_colour), then from its start, then the
     * other blocks in address order: pushed last to first. */
    uint32_t c = ta_run_colour(r), first = c != 0 ? ta_run_page_blocks(r) : 0;
    if (first > keep) first = keep;
    if (c > keep) c = keep;
    head = push_bits_down(r, bits, first, keep, NULL);
    head = push_bits_down(r, bits, 0, c, head);
    head = push_bits_down(r, bits, c, first, head);
  }
  r->free = head;
}

/* A PARTIAL run that becomes active with three quarters of its blocks or more free is
 * threaded again in address order (its first page from its colour, ta_run_colour): its list is in
 * the order its blocks were freed, so after a wave of frees malloc would hand out addresses in no
 * order, and a program then walks what it allocated together all over the run (python: 1.03-1.3
 * times jemalloc's time, whose slabs hand addresses out in order, at fewer instructions and as many
 * simulated cache misses). The free blocks are found by a scan of the run's marks, or a walk of its
 * list (run_free_bits), and the run stays active until malloc has taken every one of them, so a run
 * is read again only after as many pops. Counted against the run's capacity, not what is threaded:
 * a run a shrink cut below three quarters does not qualify, but the shrink left its list in address
 * order. The hardened build keeps its random order. docs/design.md, "Small blocks: runs", "Address
 * order". */
static void run_order_maybe(ta_run_t *r) {
  if (ta_secure || run_free_blocks(r) * 4 < ta_run_cap(r) * 3) return;
  uint64_t bits[RUN_MAX_BLOCKS / 64] = {0};
  run_free_bits(r, bits);
  run_rethread(r, bits, ta_run_index(r, r->limit)); /* every block threaded */
}

/* Whether every block reaching into r's top threaded page is marked free. Every block on a
 * free list is, so without that no page can go back: a purge that finds the top block in
 * use reads one word, where the walk would read the whole list — every purge, for as long
 * as the block lives. A marked block may still be on the remote list or in a quarantine:
 * the walk or the scan's count and links decide, never a mark alone. Blocks of a page or
 * more are not read: a program may protect one (mprotect), and their runs have 16 blocks
 * at most, a short walk. */
static bool top_page_marked(const ta_run_t *r) {
  if (r->bsize >= ta_page_size) return true; /* the program's to protect: the walk decides */
  uint32_t top = (uint32_t)ta_align_up(r->limit, ta_page_size) - (uint32_t)ta_page_size;
  for (uint32_t k = r->limit / r->bsize; k-- > 0 && (k + 1) * r->bsize > top;) {
    const ta_block_t *b = block_at(r, k);
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
  /* Every block at or above the new limit is free, so no correct free names one. */
  run_set_limit(r, keep * bs);
  /* The blocks dropped from the page kept below `from` keep their link and mark. A carve
   * of this class would rewrite the link and find the block's own mark, but the run may
   * retire first, and run_wipe stops at limit: a block of another class overlapping them
   * could read a key back or look free. So they go now; the pages given back read zero. */
  blocks_wipe(r, keep * bs, (uint32_t)(from - base));
  if (ta_os_decommit((void *)from, to - from) != 0) {
    blocks_wipe(r, keep * bs, limit); /* the pages stay: nothing of the blocks may */
    return 0;
  }
  /* The chunk's huge-page marks are its keeper's (under its lock): a lent slot's owner
   * leaves them, and the keeper asks again only once pages of its own go back. */
  ta_chunk_t *c = ta_chunk_of(r);
  if (TA_LOAD(c->owner) == r->owner) ta_chunk_thp_lost(c, r->slot, 1);
  return to - from;
}

/* The owner's purge of the free pages of its runs in use: the ACTIVE and PARTIAL ones (a
 * FULL run has no free block); the empty runs mid classes keep retire. What other threads freed is
 * taken in first, by the caller (purge.c), so that their blocks are found free. Only for the
 * arena's owner (or the thread that claimed an ownerless arena): its fast paths use these lists
 * without the lock, so the background purger, which holds only the lock, must not call it. */
size_t ta_small_shrink(ta_arena_t *a) {
  size_t freed = 0;
  ta_slow_enter(a);
  for (unsigned cls = 1; cls <= TA_NUM_RUN; cls++) {
    if (a->cur[cls] != &ta_empty_run) freed += run_shrink(a->cur[cls]);
    for (ta_run_t *r = a->partial[cls], *next; r; r = next) {
      next = r->next;
      /* The empty run a mid class keeps (run_keeps_empty) retires now: its slot goes back,
       * its pages after the decay as any retired slot's. Not another run found empty: this
       * may be a signal handler's purge nested in the owner's free of that run's last block,
       * between its count and the slow path that decides (ta_small_free_slow); it shrinks as
       * any other. */
      if (r->used == 0 && cls > TA_NUM_SMALL && r == *mid_slot(a, cls)) {
        mid_retire_kept(a, r);
        continue;
      }
      freed += run_shrink(r);
    }
  }
  ta_slow_leave(a);
  return freed;
}
