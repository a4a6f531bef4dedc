/*
 * purge.c — memory going back to the kernel, a short while after it became free.
 *
 * What becomes free is stamped with the time (milliseconds, CLOCK_MONOTONIC_COARSE) and
 * stays resident for ta_decay_ms (200 ms by default), so a program that frees and
 * allocates again at once pays no system call and no page fault. After that:
 *   - an empty chunk from mmap is unmapped; one from the break moves the break back down
 *     when it is the top of the heap, and is otherwise decommitted (MADV_DONTNEED) and
 *     kept for reuse;
 *   - the pages of a retired run slot (64 KiB) are decommitted;
 *   - free medium blocks of 32 KiB and more have their inner pages decommitted;
 *   - cached huge spans are unmapped (huge.c: the cache is process-wide).
 * MADV_DONTNEED rather than MADV_FREE: resident memory falls at once, which is what users
 * measure (see docs/design.md).
 *
 * Besides the time, a budget: when all arenas together hold more than ta_dirty_max
 * (32 MiB) of empty chunks and retired run slots, the arena that adds more gives its own
 * back at once. Without it, each of many short-lived threads' arenas would keep its free
 * memory resident for the decay time; with it, one busy thread keeps enough to reuse.
 *
 * There is no background thread: the owner checks in its slow paths whether something is
 * due (ta_maybe_purge: two loads when nothing is pending, one clock read otherwise).
 * Arenas whose thread has exited have no owner to do this: any thread that finds
 * ta_orphan_due passed claims such arenas one by one, drains what other threads freed
 * into them, purges everything, and gives them back. malloc_trim does all of it at once.
 */
#include "internal.h"

uint64_t ta_decay_ms = 200;
size_t ta_dirty_max = (size_t)32 << 20;
static _Atomic size_t dirty_total; /* Σ arena.dirty_bytes */
_Atomic uint64_t ta_orphan_due;

#define TA_MEDIUM_PURGE_MIN ((size_t)32 << 10)

void ta_purge_note_global(_Atomic uint64_t *v, uint64_t t) {
  uint64_t cur = atomic_load_explicit(v, memory_order_relaxed);
  while ((cur == 0 || t < cur) &&
         !atomic_compare_exchange_weak_explicit(v, &cur, t, memory_order_relaxed,
                                                memory_order_relaxed)) {
  }
}

void ta_purge_note(ta_arena_t *a, uint64_t since) {
  uint64_t due = since + ta_decay_ms;
  if (a->purge_due == 0 || due < a->purge_due) a->purge_due = due;
}

void ta_note_orphan_work(void) { ta_purge_note_global(&ta_orphan_due, ta_os_now_ms() + ta_decay_ms); }

/* Counts free-but-resident memory of an arena. When all arenas together hold more than the
 * budget, the arena that adds gives its own back now. */
void ta_dirty_add(ta_arena_t *a, intptr_t bytes) {
  a->dirty_bytes += (size_t)bytes;
  size_t total = atomic_fetch_add_explicit(&dirty_total, (size_t)bytes, memory_order_relaxed) +
                 (size_t)bytes;
  if (bytes > 0 && total > ta_dirty_max && !a->purging)
    ta_arena_purge(a, ta_os_now_ms(), false, true);
}

void ta_maybe_purge(ta_arena_t *a) {
  if (TA_UNLIKELY(ta_conf_stats_log != NULL)) ta_stats_log_tick();
  uint64_t due = a->purge_due;
  uint64_t odue = atomic_load_explicit(&ta_orphan_due, memory_order_relaxed);
  uint64_t hdue = atomic_load_explicit(&ta_huge_due, memory_order_relaxed);
  if (TA_LIKELY(due == 0 && odue == 0 && hdue == 0)) return;
  uint64_t now = ta_os_now_ms();
  if (due && now >= due) ta_arena_purge(a, now, false, false);
  if (odue && now >= odue) ta_purge_orphans(now, false);
  if (hdue && now >= hdue) ta_huge_purge(now, false);
}

/* The pages of a free medium block that hold neither its links nor its footer. */
static size_t medium_decommit(ta_mhdr_t *h) {
  size_t s = h->size_flags & TA_M_SIZE_MASK;
  uintptr_t lo = ta_align_up((uintptr_t)h + sizeof(ta_mhdr_t) + 2 * sizeof(void *), TA_PAGE_SIZE);
  uintptr_t hi = ((uintptr_t)h + s - sizeof(size_t)) & ~(uintptr_t)(TA_PAGE_SIZE - 1);
  ta_mh_store(h, h->size_flags | TA_M_DECOMMITTED);
  if (hi <= lo || ta_os_decommit((void *)lo, hi - lo) != 0) return 0;
  return hi - lo;
}

/* all: everything, now (trim, ownerless arena); over: the dirty chunks and run slots now,
 * the rest when due; else what is due. */
size_t ta_arena_purge(ta_arena_t *a, uint64_t now, bool all, bool over) {
  size_t freed = 0;
  uint64_t next = 0;
  a->purging = true;
#define PENDING(since)                                                                     \
  do {                                                                                     \
    uint64_t d_ = (since) + ta_decay_ms;                                                   \
    if (next == 0 || d_ < next) next = d_;                                                 \
  } while (0)
#define DUE(since) (all || over || now >= (since) + ta_decay_ms)

  ta_slow_enter(a);
  if (all) ta_small_retire_idle(a);

  /* Empty chunks. A break chunk can only go when it is the top of the heap, so repeat
   * while the break moves down. */
  for (bool moved = true; moved;) {
    moved = false;
    for (ta_chunk_t **pp = &a->empty_chunks; *pp;) {
      ta_chunk_t *c = *pp;
      if (!DUE(c->empty_since)) {
        if (!c->decommitted) PENDING(c->empty_since);
        pp = &c->next;
        continue;
      }
      /* Unlink first, then look for statistics readers (which walk this list): a reader
       * that came before the unlink is seen and the chunk stays; one that comes after
       * cannot reach it. */
      ta_chunk_t *next_c = c->next;
      bool from_brk = c->from_brk, resident = !c->decommitted;
      TA_PUBLISH(*pp, next_c);
      bool may_unmap = ta_unmap_allowed();
      if (may_unmap && c->kind == TA_MAP_SMALL && ta_shadow_get(c) != NULL) {
        ta_shadow_free(ta_shadow_get(c));
        ta_shadow_set(c, NULL);
      }
      if (may_unmap &&
          (from_brk ? ta_brk_shrink_top(c) : ta_os_munmap(c, TA_CHUNK_SIZE) == 0)) {
        TA_ADD(a->cnt.shrinks, 1);
        if (resident) freed += TA_CHUNK_SIZE;
        moved = moved || from_brk;
        continue;
      }
      TA_PUBLISH(*pp, c); /* stays: decommitted, kept for reuse */
      /* The first two pages stay: the run meta blocks and the shadow pointer. */
      if (!c->decommitted && ta_os_decommit((char *)c + 2 * TA_PAGE_SIZE,
                                            TA_CHUNK_SIZE - 2 * TA_PAGE_SIZE) == 0) {
        TA_STORE(c->decommitted, 1);
        freed += TA_CHUNK_SIZE - 2 * TA_PAGE_SIZE;
      }
      pp = &c->next;
    }
  }

  /* Retired run slots of chunks still in use; neighbouring slots in one call. */
  for (ta_chunk_t *c = a->small_avail; c; c = c->next) {
    uint64_t due_slots = 0;
    for (uint64_t d = c->dirty_slots; d; d &= d - 1) {
      unsigned slot = (unsigned)__builtin_ctzll(d);
      if (DUE(c->runs[slot].empty_since)) due_slots |= (uint64_t)1 << slot;
      else PENDING(c->runs[slot].empty_since);
    }
    c->dirty_slots &= ~due_slots;
    while (due_slots) {
      unsigned first = (unsigned)__builtin_ctzll(due_slots); /* >= 1: slot 0 is the header */
      uint64_t rest = ~(due_slots >> first);
      unsigned n = rest ? (unsigned)__builtin_ctzll(rest) : 64 - first;
      if (ta_os_decommit((char *)c + ((size_t)first << TA_RUN_SHIFT),
                         (size_t)n << TA_RUN_SHIFT) == 0)
        freed += (size_t)n << TA_RUN_SHIFT;
      due_slots &= ~((((uint64_t)1 << n) - 1) << first);
    }
  }

  /* What stays resident of empty chunks and run slots, counted again from the lists. */
  size_t dirty = 0;
  for (ta_chunk_t *c = a->empty_chunks; c; c = c->next)
    if (!c->decommitted) dirty += TA_CHUNK_SIZE;
  for (ta_chunk_t *c = a->small_avail; c; c = c->next)
    dirty += (size_t)__builtin_popcountll(c->dirty_slots) << TA_RUN_SHIFT;
  atomic_fetch_add_explicit(&dirty_total, dirty - a->dirty_bytes, memory_order_relaxed);
  a->dirty_bytes = dirty;

  /* Large free medium blocks. */
  if (a->medium_dirty_since) {
    if (all || now >= a->medium_dirty_since + ta_decay_ms) {
      for (unsigned b = ta_size_class(TA_MEDIUM_PURGE_MIN); b < TA_NUM_BINS; b++)
        for (ta_mhdr_t *h = a->bins[b]; h; h = ((ta_mhdr_t **)(h + 1))[0])
          if (!(h->size_flags & TA_M_DECOMMITTED)) freed += medium_decommit(h);
      a->medium_dirty_since = 0;
    } else {
      PENDING(a->medium_dirty_since);
    }
  }

#undef PENDING
#undef DUE
  a->purge_due = next;
  a->purging = false;
  ta_slow_leave(a);
  return freed;
}

size_t ta_purge_orphans(uint64_t now, bool all) {
  atomic_store_explicit(&ta_orphan_due, 0, memory_order_relaxed);
  size_t freed = 0;
  for (ta_arena_t *a = ta_arena_first(); a; a = a->next_all) {
    /* Acquire: released_ms was written before the release store of FREE. */
    if (atomic_load_explicit(&a->state, memory_order_acquire) != ARENA_FREE) continue;
    if (!all && now < a->released_ms + ta_decay_ms) {
      ta_purge_note_global(&ta_orphan_due, a->released_ms + ta_decay_ms);
      continue;
    }
    if (!ta_arena_try_claim(a)) continue;
    if (atomic_load_explicit(&a->remote, memory_order_relaxed)) {
      ta_slow_enter(a);
      ta_remote_drain(a);
      ta_slow_leave(a);
    }
    freed += ta_arena_purge(a, now, true, false);
    atomic_store_explicit(&a->state, ARENA_FREE, memory_order_release);
  }
  return freed;
}
