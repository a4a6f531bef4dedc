/*
 * purge.c — memory going back to the kernel, a short while after it became free.
 *
 * What becomes free is stamped with the time (milliseconds, CLOCK_MONOTONIC_COARSE) and
 * stays resident for ta_decay_ms (200 ms by default), so a program that frees and
 * allocates again at once pays no system call and no page fault. After that:
 *   - an empty chunk from mmap is unmapped; one from the break moves the break back down
 *     when it is the top of the heap, and is otherwise given back whole (MADV_DONTNEED)
 *     into the process-wide pool any arena takes from (chunk.c);
 *   - the pages of a retired run slot (64 KiB) are decommitted;
 *   - the whole free pages above the highest block in use of runs in use are decommitted,
 *     by the owner only (small.c, ta_small_shrink), when its purge is due anyway;
 *   - free medium blocks of 16 KiB and more free for the decay time (each keeps its time)
 *     have their inner pages decommitted, and younger ones too while those that stay hold
 *     more than the arena's share (with malloc_trim, or for an ownerless arena, every free
 *     block that holds a whole page);
 *   - cached huge spans are unmapped (huge.c: the cache is process-wide).
 * MADV_DONTNEED rather than MADV_FREE: resident memory falls at once, which is what users
 * measure (see docs/design.md). An arena whose owner is drawing pages from the kernel, or
 * taking its free medium memory again, keeps as much free memory as it drew lately, or took
 * at once (its demand, dirty.c), however old: see ta_arena_purge.
 *
 * Besides the time, a budget: when all arenas together hold more than ta_dirty_max
 * (32 MiB) of empty chunks and retired run slots past what their demands hold (dirty.c,
 * ta_dirty_held), the oldest excess goes back at once: the
 * background thread's job across arenas when it runs, else the adding arena's own
 * (ta_purge_excess, by its holder once the free that went over has returned:
 * ta_purge_if_over). Memory just freed is given back last: returning it only to fault it
 * in again is the thrash the budget must not cause. What is free, since when and how much
 * is written in dirty.c's book by the layers below, which never call in here.
 *
 * The owner checks in its slow paths whether something is due (ta_maybe_purge, which alloc.c
 * calls before a medium or huge allocation and before the arena takes a new run, and on
 * every 16th request served from what is held already, a cached medium block or a span: a
 * few loads when nothing is pending, one clock read otherwise); the background thread
 * (background.c) does the same work for arenas whose threads make no slow call.
 * Arenas whose thread has exited have no owner to do this: any thread that finds
 * ta_orphan_due passed claims such arenas one by one, drains what other threads freed
 * into them, purges everything, and gives them back; an arena exited less than a decay time
 * ago gives back only its excess over the budget, if it is marked so (a free's drain,
 * arena.c, makes this pass due at once then). malloc_trim does all of it at once.
 *
 * Zombie arenas (a fork child's arenas whose owner was inside a slow path) can never be
 * drained: freeing into them would touch lists the vanished owner left half-changed. The
 * same pass takes what was freed into them off their remote list, counts it
 * (ta_zombie_frees, ta_zombie_bytes) and leaves it: those blocks are lost to the child, but
 * they are accounted for and the list does not grow without end.
 */
#include "internal.h"

_Atomic uint64_t ta_zombie_frees, ta_zombie_bytes;

/* Gives back arena a's oldest free memory first, until all arenas are within the budget:
 * what became free half a decay time ago, then an eighth, then the rest. Memory just freed
 * is the likeliest to be used again; returning it only to fault it in again is the thrash
 * the budget must not cause. */
void ta_purge_excess(ta_arena_t *a, uint64_t now) {
  ta_slow_enter(a); /* its count and demand are read under the lock */
  ta_dirty_hold(a, ta_arena_demand(a, now)); /* what it holds out of the budget, now */
  for (unsigned i = 0; i < TA_EXCESS_STEPS && ta_arena_over_budget(a, now); i++)
    ta_arena_purge(a, now, TA_PURGE_AGED, ta_excess_age(i), false);
  ta_slow_leave(a);
}

/* The same for the free spans, beyond their own budget (ta_spans_over_budget): what became
 * free half a decay time ago, then an eighth, then a 32nd (1 ms at least) — never what was
 * freed just now, which the next request of its class is the likeliest to take. Still over,
 * with only younger spans, it does not look again for that 32nd: each free would otherwise
 * walk every bin three times for nothing. */
void ta_purge_spans_excess(uint64_t now) {
  if (now < atomic_load_explicit(&ta_span_excess_after, memory_order_relaxed)) return;
  uint64_t last = ta_decay_ms / 32 ? ta_decay_ms / 32 : 1;
  for (unsigned i = 0; i < TA_EXCESS_STEPS && ta_spans_over_budget(); i++)
    ta_span_purge(now, i + 1 < TA_EXCESS_STEPS ? ta_excess_age(i) : last);
  if (ta_spans_over_budget()) atomic_store_explicit(&ta_span_excess_after, now + last, memory_order_relaxed);
}

void ta_maybe_purge(ta_arena_t *a) {
  uint64_t due = atomic_load_explicit(&a->purge_due, memory_order_relaxed);
  uint64_t odue = atomic_load_explicit(&ta_orphan_due, memory_order_relaxed);
  uint64_t hdue = atomic_load_explicit(&ta_huge_due, memory_order_relaxed);
  uint64_t sdue = atomic_load_explicit(&ta_span_due, memory_order_relaxed);
  if (TA_LIKELY(due == 0 && odue == 0 && hdue == 0 && sdue == 0)) return;
  uint64_t now = ta_os_now_ms();
  if (due && now >= due && now >= atomic_load_explicit(&a->owner_due, memory_order_relaxed))
    ta_arena_purge(a, now, TA_PURGE_AGED, ta_owner_decay(), false);
  if (odue && now >= odue) ta_purge_orphans(now, false);
  if (hdue && now >= hdue) ta_huge_purge(now, false);
  if (sdue && now >= sdue) ta_span_purge(now, ta_owner_decay());
}

/* mode (internal.h): ALL, everything, now (trim, ownerless arena: the caller owns the
 * arena's fast-path state too); LOCKED, everything the slow-path lock guards, now (trim of an
 * arena another thread owns); AGED, what became free at least `age` ms ago (the decay time,
 * or less when over the budget). The background thread calls it on arenas it does not own,
 * AGED: only state under the slow-path lock is touched then, as with LOCKED. The owner's own purge
 * after the decay also gives back the free pages of runs in use (without ages of their own: the
 * purge is due anyway). Unless `idle` (its owner is blocked, or gone), the arena keeps what its
 * demand covers (dirty.c). */
size_t ta_arena_purge(ta_arena_t *a, uint64_t now, unsigned mode, uint64_t age, bool idle) {
  bool all = mode != TA_PURGE_AGED; /* everything, now */
  bool mine = mode == TA_PURGE_ALL; /* and what only the arena's own thread may touch */
  uint64_t horizon = age > ta_decay_ms ? age : ta_decay_ms; /* when what stays comes due */
  size_t freed = 0;
  uint64_t next = 0, next_own = 0; /* by the wall time; by the owner's */
#define PENDING(since)                                                                     \
  do {                                                                                     \
    uint64_t d_ = (since) + ta_decay_ms, o_ = (since) + horizon;                           \
    if (next == 0 || d_ < next) next = d_;                                                 \
    if (next_own == 0 || o_ < next_own) next_own = o_;                                     \
  } while (0)
#define DUE(since) (all || now >= (since) + age)
  /* What the arena drew from the kernel lately (its demand, dirty.c) it may keep, however
   * old: of its empty chunks and retired run slots only what they hold past it goes
   * (`give`), oldest chunks first, then slots; what is left of the demand keeps the free
   * pages of its runs, and as much of its large free medium blocks, the youngest (what they
   * hold past it goes, ta_medium_purge). What is held back is looked at again when the
   * demand falls (`until`), not at every slow path. */
  ta_slow_enter(a);
  size_t hold = all || idle ? 0 : ta_arena_demand(a, now);
  uint64_t until = hold ? ta_demand_until(a, now) : now;
  size_t give = !hold ? SIZE_MAX : a->dirty_bytes > hold ? a->dirty_bytes - hold : 0;
#define LATER(since) ((since) + ta_decay_ms >= until ? (since) : until - ta_decay_ms)
  bool was_purging = a->purging; /* under the lock: the purger may purge it too */
  a->purging = true;
  /* The cache of freed medium blocks (medium.c) goes into the heap once the first block put
   * there since the last flush has waited `age`; from there its blocks' pages go back as any
   * free block's. Not for the budget's shorter ages: cached blocks are not counted in it, and
   * flushing them would give nothing back now. */
  if (a->mcache_since) {
    if (a->mcache_bytes == 0) a->mcache_since = 0; /* emptied by requests: the next put notes */
    else if (DUE(a->mcache_since) && (all || age >= ta_decay_ms)) ta_medium_cache_flush(a);
    else PENDING(a->mcache_since);
  }
  /* The free blocks of mid runs (small.c): their pages past the first go back, the blocks
   * staying on their lists, once the first of them has waited the decay time; by any thread
   * that holds the lock, so an idle owner's too. */
  if (a->mid_since) {
    if (DUE(a->mid_since) && (all || age >= ta_decay_ms))
      freed += ta_small_mid_release(a, now);
    else
      PENDING(a->mid_since);
  }
  /* Empty runs: the ones mid classes keep, by any full purge (another thread's trim too:
   * ta_small_retire_idle); the active ones by their owner's alone. */
  if (all) ta_small_retire_idle(a, mine);
  /* The free pages of runs in use, whose lists only the owner may rewrite: with `mine` (the
   * caller owns the arena) or in the owner's own purge after the decay — not the budget's
   * (those pages are not counted in it), nor the background thread's, nor while the demand
   * holds. Before the passes below: taking in remote frees may retire runs and empty chunks. */
  if (mine || (ta_tl_arena == a && mode == TA_PURGE_AGED && age >= ta_decay_ms)) {
    a->shrink_wait = hold > a->dirty_bytes; /* part of the demand is the runs' to keep */
    if (!a->shrink_wait) {
      ta_remote_collect(a); /* their blocks are found free (see ta_small_shrink) */
      freed += ta_small_shrink(a);
    }
  }
  /* Shrinking waits for the demand to fall: the owner's purge comes back then (the runs'
   * pages have no age of their own; a blocked owner's wait for its next slow path). */
  if (a->shrink_wait && !idle) PENDING(LATER(now - ta_decay_ms));
  if (all) ta_medium_release_empty(a);

  /* Of the empty chunks past the demand, the oldest go, whole chunks while `give` holds
   * one: those that became empty at `cut` or before. */
  uint64_t cut = 0;
  if (give != SIZE_MAX && give >= TA_CHUNK_SIZE) {
    uint64_t t[32];
    unsigned n = 0;
    for (ta_chunk_t *c = a->empty_chunks; c; c = c->next) {
      uint64_t e = c->empty_since;
      if (c->decommitted || !DUE(e) || (n == 32 && t[31] <= e)) continue;
      unsigned i = n < 32 ? n++ : 31; /* the 32 oldest, in order */
      for (; i > 0 && t[i - 1] > e; i--) t[i] = t[i - 1];
      t[i] = e;
    }
    size_t k = give / TA_CHUNK_SIZE;
    if (n) cut = t[(k < n ? k : n) - 1];
  }

  /* Empty chunks. A break chunk can only go when it is the top of the heap, so repeat
   * while the break moves down. */
  for (bool moved = true; moved;) {
    moved = false;
    for (ta_chunk_t **pp = &a->empty_chunks; *pp;) {
      ta_chunk_t *c = *pp;
      bool due = DUE(c->empty_since);
      if (!due || (!c->decommitted && give != SIZE_MAX &&
                   (give < TA_CHUNK_SIZE || c->empty_since > cut))) {
        if (!c->decommitted) PENDING(due ? LATER(c->empty_since) : c->empty_since);
        pp = &c->next;
        continue;
      }
      if (!c->decommitted && give != SIZE_MAX) give -= TA_CHUNK_SIZE;
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
        if (from_brk) TA_ADD(a->cnt.shrinks, ta_chunk_pool_trim_brk()); /* pooled ones, now the top */
        moved = moved || from_brk;
        continue;
      }
      /* A break chunk below the top: given back whole, header too, into the process-wide pool
       * (chunk.c), which any arena takes from. (No statistics reader can reach it: unlinked,
       * and none was walking.) What may still be resident: all of it, or, decommitted before,
       * the header's page (kept then, with the shadow pointer beside the header). */
      size_t head_end = ta_align_up(sizeof(ta_run_pair_t), ta_page_size);
      int slot = may_unmap && from_brk ? ta_chunk_pool_reserve() : -1;
      if (slot >= 0) {
        if (ta_os_decommit(c, resident ? TA_CHUNK_SIZE : head_end) == 0) {
          ta_chunk_pool_put(slot, c);
          if (resident) freed += TA_CHUNK_SIZE;
          /* Another purge may have taken the chunk above away before this one was in the pool. */
          TA_ADD(a->cnt.shrinks, ta_chunk_pool_trim_brk());
          continue;
        }
        ta_chunk_pool_unreserve(slot);
      }
      /* The first page stays on the list: the header, which keeps the chunk there, and beside
       * it a small chunk's shadow pointer (a statistics reader kept the chunk from being
       * unmapped). The other run meta blocks may go: a chunk taken again sets them up anew. */
      TA_PUBLISH(*pp, c); /* stays: decommitted, kept for reuse */
      if (!c->decommitted && ta_os_decommit((char *)c + head_end, TA_CHUNK_SIZE - head_end) == 0) {
        TA_STORE(c->decommitted, 1);
        freed += TA_CHUNK_SIZE - head_end;
      }
      pp = &c->next;
    }
  }

  /* Retired run slots of chunks still in use; neighbouring slots in one call. Giving back part
   * of a half that is one huge page splits it (small.c, half_collapse_maybe; ta_chunk_thp_lost). */
  for (ta_chunk_t *c = a->small_avail; c; c = c->next) {
    uint64_t due_slots = 0;
    for (uint64_t d = c->dirty_slots; d; d &= d - 1) {
      unsigned slot = (unsigned)__builtin_ctzll(d);
      uint64_t since = ta_chunk_run(c, slot)->empty_since;
      if (DUE(since) && give >= TA_RUN_SIZE) {
        due_slots |= (uint64_t)1 << slot;
        if (give != SIZE_MAX) give -= TA_RUN_SIZE;
      } else {
        PENDING(DUE(since) ? LATER(since) : since);
      }
    }
    c->dirty_slots &= ~due_slots;
    ta_small_slots_note(a, 0, -__builtin_popcountll(due_slots));
    while (due_slots) {
      unsigned first = (unsigned)__builtin_ctzll(due_slots); /* >= 1: slot 0 is the header */
      uint64_t rest = ~(due_slots >> first);
      unsigned n = rest ? (unsigned)__builtin_ctzll(rest) : 64 - first;
      if (ta_os_decommit((char *)c + ((size_t)first << TA_RUN_SHIFT),
                         (size_t)n << TA_RUN_SHIFT) == 0) {
        freed += (size_t)n << TA_RUN_SHIFT;
        ta_chunk_thp_lost(c, first, n);
        for (unsigned k = first; k < first + n; k++) /* taken again, they are faulted in */
          ta_chunk_run(c, k)->empty_since = TA_SLOT_GIVEN_BACK;
      }
      due_slots &= ~((((uint64_t)1 << n) - 1) << first);
    }
  }

  /* What stays resident of empty chunks and run slots, counted again from the lists; with
   * the emptied runs of slots other arenas lent it, which go back to them now, or wait for
   * their lock (small.c). */
  size_t dirty = 0;
  uint64_t lent_oldest = 0;
  uint64_t lent_cut = all ? UINT64_MAX : now > age ? now - age : 0; /* DUE(t): t <= lent_cut */
  freed += ta_small_lent_return(a, now, lent_cut, &dirty, &lent_oldest);
  if (lent_oldest) PENDING(lent_oldest);
  for (ta_chunk_t *c = a->empty_chunks; c; c = c->next)
    if (!c->decommitted) dirty += TA_CHUNK_SIZE;
  for (ta_chunk_t *c = a->small_avail; c; c = c->next)
    dirty += (size_t)__builtin_popcountll(c->dirty_slots) << TA_RUN_SHIFT;
  atomic_fetch_add_explicit(&ta_dirty_total.v, dirty - a->dirty_bytes, memory_order_relaxed);
  a->dirty_bytes = dirty;
  /* What the demand holds from now on; a trim of another thread's arena (LOCKED) gave back
   * everything but leaves its owner's demand as it was. */
  ta_dirty_hold(a, mode == TA_PURGE_LOCKED ? ta_arena_demand(a, now) : hold);
  size_t hold_medium = hold > dirty ? hold - dirty : 0;

  /* Large free medium blocks free for the decay time (each keeps its time: the ones the
   * owner cycles through stay); with `all` (malloc_trim, an ownerless arena) every free
   * block that holds a whole page. */
  if (a->medium_dirty_since || all) {
    if (all || now >= a->medium_dirty_since + age) {
      uint64_t oldest = 0;
      bool held = false;
      freed += ta_medium_purge(a, now, all, age, ta_arena_share() /* the holes' */,
                               hold_medium, &held, &oldest);
      a->medium_dirty_since = oldest;
      if (oldest) PENDING(held ? LATER(oldest) : oldest);
    } else {
      PENDING(a->medium_dirty_since);
    }
  }

#undef PENDING
#undef DUE
#undef LATER
  atomic_store_explicit(&a->purge_due, next, memory_order_relaxed);
  atomic_store_explicit(&a->owner_due, next_own, memory_order_relaxed);
  /* A purge by its owner's age leaves memory due by the wall time: the background thread
   * looks again a decay time later (is the owner blocked by then?), not at once. */
  if (next) ta_purge_note_global(&ta_arenas_due, next > now ? next : now + (ta_decay_ms ? ta_decay_ms : 1));
  a->purging = was_purging;
  ta_slow_leave(a);
  return freed;
}

size_t ta_purge_owned_now(ta_arena_t *a, uint64_t now) {
  size_t freed = 0;
  /* Not an arena whose lock this thread holds already: a signal handler's trim nested in a
   * borrow or return of that arena's run slot (small.c), which its purge would change under
   * it (as ta_purge_orphans). */
  if (ta_slow_held_by_me(a)) return 0;
  /* Another thread's lock: not while a fork is under way (dirty.c, ta_fork_hold). */
  if (!ta_fork_hold()) return 0;
  ta_slow_enter(a); /* the owner may be in a slow path: a short wait */
  /* Still owned, and not by us, now that we hold it (its owner may have given it up). */
  if (atomic_load_explicit(&a->state, memory_order_acquire) == ARENA_CLAIMED && a != ta_tl_arena) {
    ta_remote_collect_medium(a); /* what others freed into it: an idle owner would not */
    freed = ta_arena_purge(a, now, TA_PURGE_LOCKED, 0, true);
  }
  ta_slow_leave(a);
  ta_fork_unhold();
  return freed;
}

/* Takes the blocks freed into a zombie arena off its remote lists and counts them. Each list
 * is taken whole with an exchange, so each block is counted once; the blocks keep their
 * "free" mark, so a second free of one of them is still caught. Their sizes are read from
 * the run meta block or the medium header, which no one changes any more. */
static void zombie_sweep(ta_arena_t *a) {
  atomic_store_explicit(&a->remote_medium, 0, memory_order_relaxed); /* none wait now */
  uint64_t n = 0, bytes = 0;
  ta_block_t *lists[TA_REMOTE_LISTS];
  ta_remote_take_all(a, lists);
  for (unsigned i = 0; i < TA_REMOTE_LISTS; i++) {
    for (ta_block_t *b = lists[i]; b != NULL; b = ta_block_next(b)) {
      /* The list lives in freed memory: an entry that is not a block of a's ends the walk
       * (checked before anything is read from it). */
      uint8_t kind = ta_remote_entry(a, b);
      if (kind == TA_MAP_SMALL) bytes += ta_run_of(b)->bsize;
      else if (kind == TA_MAP_MEDIUM) bytes += ta_medium_usable((ta_mhdr_t *)b - 1);
      else break;
      n++;
    }
  }
  atomic_fetch_add_explicit(&ta_zombie_frees, n, memory_order_relaxed);
  atomic_fetch_add_explicit(&ta_zombie_bytes, bytes, memory_order_relaxed);
}

size_t ta_purge_orphans(uint64_t now, bool all) {
  /* An exchange, not a store: a due time noted by a thread that just gave an arena up must
   * not be overwritten after our scan has passed that arena (the RMW orders the reset
   * before the loads of the scan). */
  atomic_exchange_explicit(&ta_orphan_due, 0, memory_order_seq_cst);
  size_t freed = 0;
  for (ta_arena_t *a = ta_arena_first(); a; a = a->next_all) {
    /* Acquire: released_ms was written before the release store of FREE. */
    int st = atomic_load_explicit(&a->state, memory_order_acquire);
    if (st == ARENA_ZOMBIE && ta_remote_waiting(a, memory_order_relaxed)) {
      zombie_sweep(a);
      continue;
    }
    if (st != ARENA_FREE) continue;
    bool decayed = all || now >= a->released_ms + ta_decay_ms;
    if (!decayed) {
      ta_purge_note_global(&ta_orphan_due, a->released_ms + ta_decay_ms);
      if (!atomic_load_explicit(&a->over_budget, memory_order_relaxed)) continue;
    }
    /* A step on an arena not the caller's: not while a fork is under way (dirty.c); this
     * pass comes again once it is over. */
    if (!ta_fork_hold()) {
      ta_purge_note_global(&ta_orphan_due, now);
      break;
    }
    if (!decayed) {
      /* Marked over the budget (by a free's drain that took its lists in, arena.c, or a slot
       * given back to it, small.c): its oldest excess goes now, the rest waits for the decay;
       * its lists are left for that pass. Under its lock alone, as the purger thread purges
       * an arena with an owner (no claim: a thread that starts meanwhile adopts it, rather
       * than map an arena of its own, and waits for the lock at most). Not one whose lock this
       * thread holds: a signal handler's call nested in a taking of it beside (small.c). */
      if (!ta_slow_held_by_me(a) && ta_slow_try_enter(a)) {
        ta_purge_if_over(a);
        ta_slow_leave(a);
      }
    } else if (ta_arena_try_claim(a)) {
      ta_remote_collect(a);
      ta_purge_if_over(a);
      freed += ta_arena_purge(a, now, TA_PURGE_ALL, 0, true);
      /* A run of a slot another arena keeps, waiting for that keeper's busy lock: this pass
       * comes back for it (an ownerless arena's own due times wake nobody). */
      ta_slow_enter(a);
      bool waits = a->lent_back != NULL;
      ta_slow_leave(a);
      if (waits) ta_note_orphan_work();
      ta_arena_give_back(a);
    }
    ta_fork_unhold();
  }
  return freed;
}
