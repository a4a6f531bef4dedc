/*
 * alloc.c — the public API (ta_malloc, ta_free, ...) and its fast paths.
 *
 * Fast path of malloc (every small size, 21 instructions): class from a table, the
 * thread's arena from TLS, the class's current run, pop its free list (and prefetch the
 * block that becomes its head: the next malloc of the class reads it). Anything else —
 * empty list, no arena yet, larger sizes — goes to alloc_big, which takes a block of the
 * thread's medium cache or goes on to alloc_from.
 *
 * Fast path of free (small block owned by this thread, 33 instructions): the map
 * byte of p's granule says "small chunk"; the run follows from p's address; the run's
 * owner is this thread's arena; p is a block boundary below what the run has handed out;
 * its key word does not say "already free"; push it. Any other kind goes through
 * free_not_small: a medium block to free_medium, everything else to free_generic.
 *
 * This file is compiled twice: into libtamalloc_api.a as is, and into the replacement
 * library through override.c, with TA_OVERRIDE defined, which adds the standard names as
 * aliases of these functions. What differs between the two libraries goes down from here
 * (ta_library_t): chunks from the break or not, the purger thread on by default or not.
 *
 * The top layer (docs/design.md, "Layers"): it calls every other, and no other calls it.
 * The allocator's other entry points are here too, since they reach every layer as malloc
 * does: the thread-exit hook, fork's child handler, the constructor that registers it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "cxx.h"
#include "internal.h"
#include "tamalloc.h"

static void thread_exit(void *arena);
static void fork_child(void);
static const ta_library_t library = {
#ifdef TA_OVERRIDE
    .brk = true,
    .background = true,
#else
    .brk = false,
    .background = false, /* the ta_ API's tests drive purging themselves */
#endif
    .thread_exit = thread_exit,
    .fork_prepare = ta_fork_prepare,
    .fork_parent = ta_fork_parent,
    .fork_child = fork_child,
};
const ta_library_t *const ta_library = &library; /* for mallctl.c (opt.dss, background_thread) */

/* Exits of the fast paths, compiled as calls into another file are (no inlining, no
 * cloning, nothing assumed about them), so that moving them here left the fast paths as
 * they were. */
#if defined(__clang__)
#define TA_EXIT_PATH __attribute__((noinline))
#else
#define TA_EXIT_PATH __attribute__((noipa))
#endif

/* ------------------------------------------------------------------ allocation */

/* What the slow paths do before the arena takes more memory, or hands out medium or huge
 * memory: the statistics log's line when its interval has passed (stats.c), and giving back
 * what is due (purge.c). */
static void slow_path_chores(ta_arena_t *a) {
  if (TA_UNLIKELY(ta_conf_stats_log != NULL)) ta_stats_log_tick();
  ta_maybe_purge(a);
}

/* Takes in what other threads freed into arena a (arena.c), which the caller holds; if that
 * took all arenas over the budget of free resident memory, the arena's oldest excess goes
 * back now (purge.c; ta_dirty_add marks it, as lower layers do not purge). */
static void collect_locked(ta_arena_t *a) {
  ta_remote_collect(a);
  ta_purge_if_over(a);
}

/* The same from a slow path that holds no lock, which first sends this thread's remote frees
 * put off to their owners (arena.c; they may be a's): not under a lock, as the push may drain
 * an arena without a thread (drain_ownerless), taking its lock. */
static void collect(ta_arena_t *a) {
  ta_remote_flush();
  collect_locked(a);
}

/* The chores, now; the next round begins (a medium request the cache cannot serve does them
 * too, before the heap is cut). */
static TA_NOINLINE void chores_round(ta_arena_t *a) {
  a->chores_skip = TA_CHORES_EVERY - 1;
  collect(a);
  slow_path_chores(a);
}

/* The chores of a slow path that handed out memory the arena or the spans already held (a
 * cached medium block, a span), on every TA_CHORES_EVERY-th such call: taking in what other
 * threads freed into the arena, and what slow_path_chores does. Nothing grew, and once
 * anything is due the chores read the clock, which cached blocks and free spans make always
 * the case (with the walk of the remote lists, about 130 of the 529 instructions of a cached
 * 16 KiB malloc and free, by callgrind). What is due then waits that many such calls more
 * at most (calls, not time: without the purger thread a program that makes them rarely
 * keeps it that much longer), and the purger thread does it on time where it runs. Two
 * things are seen at once: a free another thread suspects of being a double free (it waits
 * for the owner), and a huge cache that holds anything while no purger thread runs (a
 * single thread's: no other call may come). The arenas of exited threads are not: where
 * threads come and go, one is due most of the time; the purger thread gives them back. */
TA_INLINE bool chores_maybe(ta_arena_t *a, bool *out) {
  *out = a->chores_skip-- == 0; /* this call counted the round out */
  return TA_UNLIKELY(*out || atomic_load_explicit(&a->suspected, memory_order_relaxed) != 0 ||
                     atomic_load_explicit(&ta_huge_due, memory_order_relaxed) != 0);
}
/* The rest of the test, after chores_maybe said yes, which makes a call: a huge cache's due
 * time (the one cause left when the round is not out and no free is suspected) counts only
 * where no purger thread runs. */
static TA_NOINLINE void chores_if_due(ta_arena_t *a, bool out) {
  if (out || atomic_load_explicit(&a->suspected, memory_order_relaxed) != 0 || !ta_bg_running())
    chores_round(a);
}
TA_INLINE void chores_sometimes(ta_arena_t *a) {
  bool out;
  if (chores_maybe(a, &out)) chores_if_due(a, out);
}
_Static_assert(TA_CHORES_EVERY >= 1 && TA_CHORES_EVERY <= 256, "the countdown is a byte");

/* A safe point: the purger thread starts here if a note asked for it (dirty.c,
 * ta_purge_note_global). Only an allocation's way in or out is one (and a thread's taking of
 * an arena in an allocation, and its exit): no lock of ours is held there, no arena is half
 * changed, and glibc 2.36 holds no lock that pthread_create takes around its calls of malloc
 * (but for dlopen's window, docs/design.md, "When it runs"). A free is never one: glibc frees
 * a joined thread's TLS while it holds the lock of its cache of thread stacks, which
 * pthread_create takes (a thread started from that free would wait for itself). So a due time
 * a free notes where none was waits for the next allocation of any thread that leaves the
 * fast path, or a thread's taking of an arena or its exit. (ta_os_thread_start keeps
 * errno.) */
static __thread bool bg_in_free __attribute__((tls_model("initial-exec")));
static TA_NOINLINE TA_COLD void bg_start_wanted(void) {
  if (!bg_in_free) ta_bg_maybe_start(library.background);
}
TA_INLINE void bg_safe_point(void) {
  if (TA_UNLIKELY(atomic_load_explicit(&ta_bg_wanted.v, memory_order_relaxed))) bg_start_wanted();
}

/* The thread's arena: a new one, an adopted one (what others freed into it was taken in:
 * the budget is kept), or, past the thread's exit, one borrowed for this call (*borrowed).
 * A thread that comes to own an arena may make the purger wanted again: it left, with one
 * thread owning an arena, and may have left a due time behind (any of dirty.c's: an owner's
 * demand, free spans aging), which no note will ask for, since the due time is there
 * already. So the claim asks for it when something is due, as a note from none does, and
 * starts it at once through the safe point, but inside the hardened free of a thread whose
 * first call is a free (bg_in_free: a free is no safe point). With it stopped, every due time
 * noted later goes from none to some, which asks for it (ta_purge_note_global). The fence
 * pairs with the purger's after it says it has left (background.c): either this sees it
 * running, or it sees this owner. */
static ta_arena_t *arena_get_slow(bool *borrowed) {
  ta_arena_t *a = ta_arena_get_slow(&library, borrowed);
  if (a == NULL) return NULL;
  ta_purge_if_over(a);
  if (!*borrowed) {
    atomic_thread_fence(memory_order_seq_cst);
    if (!ta_bg_running() && ta_bg_due()) ta_bg_request();
    bg_safe_point(); /* none inside a free (bg_in_free): the request waits */
  }
  return a;
}

/* Gives an arena up (thread exit, the end of a borrowed call), once what others freed into
 * it is taken in, and the budget kept, while it is still this thread's. Its demand may stay
 * past a thread's exit for the next thread, where the purger thread runs to give it back on
 * time (ta_dirty_owner_change); a borrowed call's never does. */
static void arena_release(ta_arena_t *a, bool exiting) {
  ta_light_forbid(a); /* the lock takers below and the orphan purge do not wait then */
  ta_dirty_owner_change(a, exiting && ta_bg_running());
  collect(a);
  ta_arena_release(a);
}

/* Whether class cls takes its blocks from runs in arena a. A run costs its class a page at
 * least in every arena, resident until the run empties, however few blocks the thread keeps:
 * a thread of a 256-thread pool held 1–6 pages in each of the 56 classes for under a block
 * in each on average (docs/design.md, "Small classes from the medium heap"). So a class starts
 * in the arena's medium heap, where blocks of every size share pages, and gets runs once the
 * arena allocates ta_run_threshold blocks of it within a second, or holds a run's worth of
 * them (ta_cold_live_max, TA_RUN_SIZE) live there: a run would be full, and the medium path no
 * cheaper in memory (threads that keep many blocks of a class at a slow rate, as a program's
 * generations of threads that each leave half their blocks to the next). It keeps them from then
 * on. The hardened build, whose small blocks carry canaries, always takes runs. */
size_t ta_cold_live_max = TA_RUN_SIZE; /* tests raise it to keep a class cold */
static bool class_has_runs(ta_arena_t *a, unsigned cls) {
  uint64_t bit = (uint64_t)1 << (cls % 64);
  if (TA_LIKELY(a->run_classes[cls / 64] & bit) || ta_secure || cls < TA_COLD_CLASS_MIN)
    return true;
  uint64_t now = ta_os_now_ms();
  if (now - a->cold_since >= 1000) {
    memset(a->cold_allocs, 0, sizeof a->cold_allocs);
    a->cold_since = now;
  }
  size_t live = atomic_load_explicit(&a->cold_live[cls], memory_order_relaxed);
  if (++a->cold_allocs[cls] < ta_run_threshold && live * ta_class_size[cls] < ta_cold_live_max)
    return false;
  a->run_classes[cls / 64] |= bit;
  return true;
}
_Static_assert(TA_NUM_RUN < 128, "a bit of run_classes per class with runs");

/* The current run of the class has no block left, or the class has no runs: what other
 * threads freed is taken in (it may refill the run); then, for a class with runs, small.c
 * finds a block in the arena's runs (when the arena has to take a new run, what is due goes
 * back first), for one without, the medium heap gives a block that reports the class's size
 * and is aligned to `align` (a multiple of which the class's size is), and to a cache line at
 * least. */
static TA_NOINLINE void *small_alloc_slow(ta_arena_t *a, unsigned cls, size_t align) {
  collect(a);
  if (!class_has_runs(a, cls)) {
    slow_path_chores(a);
    /* On a cache line at least, as a run's block of the class would be (see ta_medium_alloc). */
    return ta_medium_alloc(a, ta_class_size[cls], align < TA_LINE ? TA_LINE : align, true);
  }
  void *b = ta_small_alloc_slow(a, cls, false);
  if (b == NULL) {
    slow_path_chores(a);
    b = ta_small_alloc_slow(a, cls, true);
  }
  if (cls > TA_NUM_SMALL && b != NULL) ((uintptr_t *)b)[2] = 0; /* as mid_pop */
  /* A half of a chunk the carve found dense: made one huge page now, the lock let go. */
  if (TA_UNLIKELY(ta_collapse_pending != 0)) ta_small_collapse();
  return b;
}

/* A mid class's block off its current run, in the owner's light section: a thread holding the
 * lock may be giving back the pages of the free blocks of its lists (small.c,
 * ta_small_mid_release), which a pop must not hand out meanwhile. NULL where no section can be
 * had, or the run has no block left: the slow path pops under the lock. */
TA_INLINE ta_block_t *mid_pop(ta_arena_t *a, unsigned cls) {
  if (TA_UNLIKELY(!ta_light_enter(a))) return NULL;
  ta_block_t *b = ta_run_pop(a->cur[cls]);
  ta_light_leave(a);
  if (b != NULL) ((uintptr_t *)b)[2] = 0; /* ta_mid_released: its pages may come back */
  return b;
}

/* Block of class cls from arena a (real arena), aligned to `align`. */
TA_INLINE void *small_alloc(ta_arena_t *a, unsigned cls, size_t align) {
  ta_block_t *b = !ta_secure && cls > TA_NUM_SMALL ? mid_pop(a, cls) : ta_run_pop(a->cur[cls]);
  return TA_LIKELY(b != NULL) ? b : small_alloc_slow(a, cls, align);
}

/* The class whose runs serve (size >= 1, align), or 0 if none does: the size's class or,
 * for an alignment above 16, the first class whose size is a multiple of the alignment; a mid
 * class (past 8 KiB) only while runs serve them (ta_run_limit), where no span serves the
 * request (a test may have spans serve from the first thread), and not for a block that is
 * to grow (a realloc's: the medium heap grows it in place). */
TA_INLINE unsigned class_upto(size_t size, size_t align, unsigned last) {
  unsigned cls = ta_size_class(size > align ? size : align);
  if (align > TA_ALIGNMENT)
    while (cls <= last && (ta_class_size[cls] & (align - 1)) != 0)
      cls++;
  return cls <= last ? cls : 0;
}
TA_INLINE unsigned small_class_for(size_t size, size_t align, bool grows) {
  size_t want = size > align ? size : align;
  if (want <= TA_SMALL_MAX && align <= TA_ALIGNMENT) return ta_size_class(want);
  bool mid = !grows && want <= TA_LOAD(ta_run_limit) && !ta_span_serves(want, align);
  if (!mid && want > TA_SMALL_MAX) return 0;
  return class_upto(size, align, mid ? TA_NUM_RUN : TA_NUM_SMALL);
}

/* The size a small request takes from its class: the hardened build keeps the last 8 bytes
 * of the block for the canary and serves nothing from the 16-byte class, whose second word
 * (the mark of a free block) would be the canary. */
TA_INLINE size_t small_request(size_t n) {
  if (!ta_secure) return n;
  return n + TA_CANARY_SIZE < 17 ? 17 : n + TA_CANARY_SIZE;
}

/* Hardened build: a small block popped from one of the first two blocks of the active run's
 * list, chosen at random, so that consecutive mallocs do not return predictable neighbours.
 * The block's canary, written when the run was carved, must be intact. */
static void *secure_small_alloc(ta_arena_t *a, unsigned cls) {
  ta_run_t *r = a->cur[cls];
  ta_block_t *b = r->free;
  if (ta_same_chunk(b, r) && (ta_secure_random() & 1)) {
    ta_block_t *n = ta_block_next(b);
    if (ta_same_chunk(n, r) && ta_small_valid(r, n)) {
      b->link = n->link; /* n leaves the list: b now links where n did */
      n->link = 0;
      n->key = 0;
      TA_ADD(r->used, 1);
      b = n;
      goto got;
    }
  }
  b = small_alloc(a, cls, TA_ALIGNMENT); /* always from runs here: the alignment is theirs */
  if (b == NULL) return NULL;
got:
  if (*ta_canary_at(b, ta_run_of(b)->bsize) != ta_canary(b))
    ta_fatal("malloc(): canary overwritten after pointer", b);
  return b;
}

/* Any size, alignment <= 16 or a power of two; zero: the caller needs zeroed memory. */
static void quarantine_check_newest(ta_arena_t *me);

/* grows: a realloc that grows a medium block or a span, and may grow again: no span serves
 * it (it goes to the medium heap, where it can grow again in place), and a huge block keeps
 * whole granules to grow into (huge.c, span_keep). looked: an arena whose medium cache had
 * nothing for this request a moment ago (alloc_cached), or NULL. The request looks at its
 * arena's cache unless it is that one: a thread without an arena looked at the sentinel's,
 * and the arena it gets here may be an adopted one holding cached blocks. */
static TA_NOINLINE void *alloc_from(size_t size, size_t align, bool zero, bool grows,
                                    const ta_arena_t *looked) {
  if (TA_UNLIKELY(size > TA_MAX_REQUEST)) {
    errno = ENOMEM;
    return NULL;
  }
  if (size == 0) size = 1;
  bg_safe_point();
  bool borrowed = false;
  uint64_t epoch = ta_huge_epoch(); /* before anything may be refused (below) */
  ta_arena_t *a = ta_tl_arena;
  if (TA_UNLIKELY(a == &ta_sentinel_arena)) {
    a = arena_get_slow(&borrowed);
    /* No arena could be mapped: the cached huge spans may hold the room (below). */
    if (a == NULL && ta_huge_make_room(ta_page_size, epoch)) a = arena_get_slow(&borrowed);
    if (a == NULL) {
      errno = ENOMEM;
      return NULL;
    }
  }
  if (ta_secure && a->q_count > 0) quarantine_check_newest(a);
  void *p = NULL;
  bool zeroed = false;
  unsigned cls = small_class_for(small_request(size), align, grows);
  for (bool again = false;; again = true) {
    bool huge = false;
    if (cls != 0) {
      p = ta_secure ? secure_small_alloc(a, cls) : small_alloc(a, cls, align);
    } else if (!grows && ta_span_serves(size, align) &&
               (chores_sometimes(a), (p = ta_span_alloc(size, &zeroed)) != NULL)) {
      /* a span; without one (no new chunk could be had), the medium heap may still serve */
    } else if (size <= TA_MEDIUM_MAX && align <= TA_MEDIUM_MAX / 4 &&
               size + align <= TA_MEDIUM_MAX) {
      if (!ta_secure && align <= TA_ALIGNMENT && a != looked && ta_medium_cache_may_serve(size) &&
          (p = ta_medium_cache_alloc(a, size)) != NULL) {
        chores_sometimes(a); /* a block the thread freed, whole (medium.c, "The cache") */
      } else {
        chores_round(a);
        p = ta_medium_alloc(a, size, align, false);
      }
    } else {
      huge = true;
      if (align < TA_CHUNK_SIZE) slow_path_chores(a); /* else never from the cache */
      p = ta_huge_alloc(a, size, align, zero, grows);
      zeroed = true;
    }
    /* No chunk could be had (the kernel refused one: address space or commit charge short):
     * the cache of freed huge spans, up to 512 MiB (huge.c, "How much the cache keeps"), may
     * hold what it lacks. Unmapped, here or by another thread since `epoch`, the request is
     * made once more. A huge request's own mapping does the same where that can help
     * (ta_huge_alloc). */
    if (TA_LIKELY(p != NULL) || huge || again || !ta_huge_make_room(TA_CHUNK_SIZE, epoch)) break;
  }
  if (TA_LIKELY(p != NULL)) {
    TA_ADD(a->cnt.callocs, zero);
    if (ta_stats_on) ta_stats_record(p, size);
  }
  if (borrowed) arena_release(a, false);
  if (TA_UNLIKELY(p == NULL)) {
    errno = ENOMEM;
    return NULL;
  }
  bg_safe_point(); /* what this call noted: the thread may never allocate again */
  if (zero && !zeroed) memset(p, 0, size);
  return p;
}

static TA_NOINLINE void *alloc_generic(size_t size, size_t align, bool zero) {
  return alloc_from(size, align, zero, false, NULL);
}

/* A request the thread's medium cache may serve (alloc_big): its block, and the chores of a
 * hit; a miss goes on to alloc_from, told which arena's cache was looked at, which does a
 * round of them. A cache found empty (the sentinel's always is: a thread without an arena)
 * goes there at once. The way to a cached block makes no call but tail calls, so that it
 * saves no register: the look in the owner's light section inline (internal.h,
 * ta_mcache_get); the countdown to the next round tested first, and a hit whose round is due,
 * and the look under the lock where no light section can be had, in functions of their own
 * (each counted down once, as before: a miss's round starts a new count). */
static TA_NOINLINE void *alloc_cached_locked(ta_arena_t *a, size_t size) {
  void *p = ta_medium_cache_alloc(a, size);
  return p != NULL ? p : alloc_from(size, TA_ALIGNMENT, false, false, a);
}
TA_INLINE void *alloc_cached_look(ta_arena_t *a, size_t size) {
  if (TA_UNLIKELY(!ta_light_enter(a))) return alloc_cached_locked(a, size);
  ta_mhdr_t *h = ta_mcache_get(a, ta_align_up(size + sizeof(ta_mhdr_t), TA_ALIGNMENT));
  ta_light_leave(a);
  return TA_LIKELY(h != NULL) ? h + 1 : alloc_from(size, TA_ALIGNMENT, false, false, a);
}
static TA_NOINLINE void *alloc_cached_chores(size_t size, bool out) {
  ta_arena_t *a = ta_tl_arena;
  void *p = ta_medium_cache_alloc(a, size); /* the look first, as on the way without chores */
  if (p == NULL) return alloc_from(size, TA_ALIGNMENT, false, false, a); /* its own round */
  chores_if_due(a, out);
  bg_safe_point(); /* what the round noted */
  return p;
}
static TA_NOINLINE void *alloc_cached(size_t size) {
  ta_arena_t *a = ta_tl_arena;
  /* Only the owner, this thread, fills it: found empty without the lock, it is. */
  if (TA_LOAD(a->mcache_bytes) == 0) return alloc_from(size, TA_ALIGNMENT, false, false, a);
  bool out;
  if (chores_maybe(a, &out)) return alloc_cached_chores(size, out);
  return alloc_cached_look(a, size);
}

/* A span (span.c) for malloc of a thread that has an arena: the chores of a span handed out
 * and the span, as alloc_from would make them, without its frame and its tests for every other
 * kind of request (from 8 threads on, most requests of 8 to 256 KiB; with the bin tag's single
 * add, span.c, a span's malloc and free went from 483 instructions to 423, callgrind). Without
 * an arena, alloc_from as before; without a span (no new chunk could be had), the medium heap
 * through it. */
static TA_NOINLINE void *alloc_span(size_t size) {
  ta_arena_t *a = ta_tl_arena;
  if (a != &ta_sentinel_arena) {
    chores_sometimes(a);
    bool zeroed;
    void *p = ta_span_alloc(size, &zeroed);
    if (TA_LIKELY(p != NULL)) {
      bg_safe_point(); /* what the round, or the span's cut, noted */
      return p;
    }
    /* No span (no new chunk): the medium heap, without a second try (`grows` skips spans;
     * the size is a medium one, so nothing else changes). */
    return alloc_from(size, TA_ALIGNMENT, false, true, NULL);
  }
  return alloc_from(size, TA_ALIGNMENT, false, false, NULL);
}

static TA_NOINLINE void *malloc_refill(size_t size, unsigned cls);

/* malloc past the small sizes, without alloc_from's frame (six registers saved and restored)
 * for a span, a mid class's block (small_class_for's order: a span first, then runs) or a
 * block of the thread's medium cache (medium.c, "The cache"): the tests alloc_from makes
 * before each (no statistics to record, no purger thread asked for; a size a span serves,
 * else one runs serve, else one the cache may serve), in a function with no frame; the rest
 * goes to alloc_from as it would have. A mid class's block is the fast path's pop from its
 * class's current run (the class computed, not looked up: the table stops at 8 KiB), in a
 * light section (mid_pop). */
static TA_NOINLINE void *alloc_big(size_t size) {
  if (!ta_stats_on && !atomic_load_explicit(&ta_bg_wanted.v, memory_order_relaxed)) {
    if (ta_span_serves(size, TA_ALIGNMENT)) return alloc_span(size);
    if (size <= TA_LOAD(ta_run_limit)) {
      unsigned cls = ta_size_class(size);
      ta_block_t *b = mid_pop(ta_tl_arena, cls);
      if (TA_LIKELY(b != NULL)) return b;
      return malloc_refill(size, cls);
    }
    if (ta_medium_cache_may_serve(size)) return alloc_cached(size);
  }
  return alloc_from(size, TA_ALIGNMENT, false, false, NULL);
}

/* malloc of a small size, or of a mid class's (alloc_big), of class cls, whose class's active
 * run has no block left (or a thread without an arena, whose sentinel's runs are all empty):
 * small_alloc_slow, as alloc_from would reach it for this request, without alloc_big's tests
 * for spans and the medium cache, nor alloc_from's
 * frame and its tests for every other kind of request (statistics are off: ta_malloc came
 * here past ta_fast_limit; a refill that read the limit just before they were switched on
 * records nothing, as a fast-path malloc then does). A refill went from 424 instructions to 353
 * (callgrind, bench/run's `random`, which leaves the fast path on one malloc in 28). Without an
 * arena, alloc_from as before, which takes one. Without a block (the kernel refused a chunk), what
 * alloc_from does for a small class: the cached huge spans unmapped, or another thread's unmaps
 * since `epoch` seen, the request is made once more (ta_huge_make_room); else ENOMEM. */
static TA_NOINLINE void *malloc_refill(size_t size, unsigned cls) {
  ta_arena_t *a = ta_tl_arena;
  if (TA_UNLIKELY(a == &ta_sentinel_arena)) return alloc_generic(size, TA_ALIGNMENT, false);
  bg_safe_point(); /* the same safe points as alloc_from's: on the way in and out */
  uint64_t epoch = ta_huge_epoch(); /* before anything may be refused */
  void *p = small_alloc_slow(a, cls, TA_ALIGNMENT);
  if (TA_LIKELY(p != NULL)) {
    bg_safe_point();
    return p;
  }
  if (!ta_huge_make_room(TA_CHUNK_SIZE, epoch) ||
      (p = small_alloc_slow(a, cls, TA_ALIGNMENT)) == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  bg_safe_point();
  return p;
}

/* ta_fast_limit is 8 KiB + 1 (every small size is below it), or 0 while statistics are on
 * (no size is below it, 0 included: every call then records its requested size on the
 * generic path): the test costs what a constant would.
 *
 * What each instruction of the fast path buys: 21 on x86-64 (GCC 12, the Release build, read
 * from objdump; callgrind agrees), 5 of them for integrity:
 *   2  the size against ta_fast_limit, and the branch to alloc_big
 *   2  the class: the table's address (position-independent code), its byte
 *   2  the arena: the TLS offset from the GOT (initial-exec), the load past %fs
 *   1  the class's active run (arena->cur)
 *   1  the head of its list
 *   4  the head in the run's chunk (copy, xor, shift, branch to malloc_refill): the list's end
 *      and a link forged to point elsewhere both fail it (integrity: 2 more than a test for
 *      the end)
 *   2  the next block: its link, decoded by a multiply (integrity: the multiply)
 *   1  the new head stored
 *   1  the prefetch of the next block (time, not a check: "The fast paths", design.md)
 *   2  a zero register, and the 16-byte store that clears the link and the mark: without
 *      the link's wipe a program could read an encoded link and work out the key, without
 *      the mark's a live block would still read as free (integrity: 2)
 *   1  used++ (the run's count: its retirement, its place on the partial list)
 *   2  the result into %rax, and the return */
void *ta_malloc(size_t size) {
  if (ta_secure) return alloc_generic(size, TA_ALIGNMENT, false);
  if (TA_LIKELY(size < ta_fast_limit)) {
    ta_block_t *b = ta_run_pop(ta_tl_arena->cur[ta_class_lut[size]]);
    if (TA_LIKELY(b != NULL)) return b;
    return malloc_refill(size, ta_class_lut[size]);
  }
  return alloc_big(size);
}

void *ta_calloc(size_t count, size_t size) {
  size_t total;
  if (TA_UNLIKELY(__builtin_mul_overflow(count, size, &total))) {
    errno = ENOMEM;
    return NULL;
  }
  return alloc_generic(total, TA_ALIGNMENT, true);
}

static void *alloc_aligned(size_t align, size_t size) {
  if (align <= TA_ALIGNMENT) return ta_malloc(size);
  if (TA_UNLIKELY(align > TA_MAX_REQUEST / 2 || size > TA_MAX_REQUEST)) {
    errno = ENOMEM;
    return NULL;
  }
  return alloc_generic(size, align, false);
}

void *ta_aligned_alloc(size_t align, size_t size) {
  if (TA_UNLIKELY(!ta_is_pow2(align))) {
    errno = EINVAL;
    return NULL;
  }
  return alloc_aligned(align, size);
}

/* As glibc's: an alignment no power of two reaches (above SIZE_MAX / 2 + 1) is EINVAL; any
 * other is rounded up to a power of two, and one beyond the address space is ENOMEM. */
void *ta_memalign(size_t align, size_t size) {
  if (TA_UNLIKELY(align > SIZE_MAX / 2 + 1)) {
    errno = EINVAL;
    return NULL;
  }
  if (!ta_is_pow2(align)) {
    size_t a = 1;
    while (a < align) a <<= 1; /* stops at 2^63 at the latest */
    align = a;
  }
  return alloc_aligned(align, size);
}

/* As glibc's: EINVAL leaves errno alone; ENOMEM leaves it ENOMEM too (programs check it). */
int ta_posix_memalign(void **out, size_t align, size_t size) {
  if (!ta_is_pow2(align) || align < sizeof(void *)) return EINVAL;
  void *p = alloc_aligned(align, size);
  if (p == NULL) {
    errno = ENOMEM;
    return ENOMEM;
  }
  *out = p;
  return 0;
}

/* The page size, which the first slow path reads (ta_init): valloc, pvalloc and nallocx may
 * come first. 0 when the allocator cannot start (no memory for its map). */
size_t ta_page(void) { return TA_LIKELY(ta_init(ta_library)) ? ta_page_size : 0; }

void *ta_valloc(size_t size) {
  size_t page = ta_page();
  if (page == 0) {
    errno = ENOMEM;
    return NULL;
  }
  return alloc_aligned(page, size);
}

void *ta_pvalloc(size_t size) {
  size_t page = ta_page();
  if (size > TA_MAX_REQUEST || page == 0) {
    errno = ENOMEM;
    return NULL;
  }
  size_t rounded = ta_align_up(size ? size : 1, page);
  return alloc_aligned(page, rounded);
}

/* ------------------------------------------------------------------ free */

/* A block of another arena goes to its owner. A block that looks free — its mark, and a
 * link word that decodes to a list's end or a block of ours: two words, one of them keyed
 * by a secret no correct program can know — was freed before: reported at once, before
 * its owner can hand it out again. A mark without such a link is only a suspicion, for the
 * owner to confirm (it alone can read its lists). */
static bool free_to_owner(ta_arena_t *owner, ta_block_t *b, bool small) {
  uintptr_t mark = ta_mark(b);
  /* Acquire: a mark another thread's chain stored comes with its link (ta_remote_defer). */
  if (TA_UNLIKELY(__atomic_load_n(&b->key, __ATOMIC_ACQUIRE) == mark)) {
    if (ta_link_plausible(b)) ta_fatal("free(): double free of pointer", b);
    ta_remote_suspect(owner, b);
    return false;
  }
  if (small) {
    ta_remote_defer(owner, b, mark); /* with others for the same owner (arena.c) */
    return true;
  }
  b->key = mark;
  ta_remote_push(owner, b);
  return true;
}

static TA_NOINLINE void free_small_remote(ta_run_t *r, ta_block_t *b) {
  if (!ta_small_valid(r, b)) ta_fatal("free(): invalid pointer", b);
  free_to_owner(r->owner, b, true);
}

/* The owner's verdicts on its block p whose mark says "free" (small.c, medium.c), once
 * what other threads freed is taken in: they may have freed it. Under the lock, taken
 * first: the background purger may hold the remote list (see ta_small_freed). */
static TA_EXIT_PATH bool small_freed(ta_arena_t *me, ta_run_t *r, const void *p) {
  ta_slow_enter(me);
  collect_locked(me);
  bool freed = ta_small_freed(me, r, p);
  ta_slow_leave(me);
  return freed;
}
static TA_EXIT_PATH bool medium_freed(ta_arena_t *me, const void *p) {
  ta_slow_enter(me);
  collect_locked(me);
  bool freed = ta_medium_freed(me, p);
  ta_slow_leave(me);
  return freed;
}

/* The owner frees a block whose mark says "free": a double free is reported. Else the block is
 * kept in use, not freed (the free is dropped): it may be one another thread's chain holds,
 * whose link a write after free changed; freed here, it would be on its run's list when the
 * chain brings it back. Or it is data equal to the block's secret mark, which a correct program
 * cannot write: one block is then lost to reuse. */
static TA_EXIT_PATH void free_small_suspect(ta_arena_t *me, ta_run_t *r, ta_block_t *b) {
  if (small_freed(me, r, b)) ta_fatal("free(): double free of pointer", b);
}

/* The free made the run's list non-empty again or emptied the run (small.c); a retired
 * run may take all arenas over the budget. */
static TA_EXIT_PATH void free_small_slow(ta_arena_t *me, ta_run_t *r) {
  ta_small_free_slow(me, r);
  ta_purge_if_over(me);
}

/* Another thread's medium block: to its owner. Should the owner be idle for good, the
 * background purger takes it in: it is told a medium block waits, and its next visit to
 * owned arenas is made due within the decay time (ta_mail_due) by the first block of a batch
 * (the count was none), or when no visit is due. A due time that is there already is not
 * enough: it may be far off (an arena's demand holds its memory). A stopped purger is asked
 * for by a note from none, and started at the next allocation of any thread (a free is no
 * safe point: bg_safe_point). The increment, then the load of the due time, are
 * seq_cst, as the purger's exchange of the due time, then its load of the count
 * (background.c): one of the two sees the other, on arm64 too. */
static TA_NOINLINE void free_medium_remote(ta_arena_t *owner, ta_block_t *b) {
  if (free_to_owner(owner, b, false)) {
    int64_t before = atomic_fetch_add_explicit(&owner->remote_medium, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&owner->state, memory_order_relaxed) != ARENA_CLAIMED) return;
    if (before <= 0 || atomic_load_explicit(&ta_arenas_due, memory_order_seq_cst) == 0)
      ta_purge_note_global(&ta_arenas_due, ta_mail_due(ta_os_now_ms()));
  }
}

/* The owner's free under the lock: a block whose mark says free (maybe another thread's free
 * not taken in yet), a light section refused, or a cache that refused the block in one
 * (`refused`: only the owner fills the cache, so it would refuse again; a foreign flush may
 * have made room since, and the block then goes to the heap, as with a full cache). */
static TA_NOINLINE void free_medium_locked(ta_arena_t *me, ta_mhdr_t *h, bool refused) {
  ta_block_t *b = (ta_block_t *)(h + 1);
  ta_slow_enter(me);
  if (b->key == ta_mark(b) && medium_freed(me, b)) ta_fatal("free(): double free of pointer", b);
  if (!refused && ta_medium_cache_put(me, h)) {
    ta_light_allow(me);
  } else {
    ta_medium_free_local(me, h);
    ta_purge_if_over(me); /* a chunk given back may take all arenas over the budget */
  }
  TA_ADD(me->cnt.frees, 1);
  ta_slow_leave(me);
}

/* free_medium's, once it has filed the first block since the cache's last flush: the clock
 * started in the section (no flush may run between the two), and out. */
static TA_NOINLINE void free_medium_clock(ta_arena_t *me) {
  ta_medium_cache_clock(me);
  ta_light_leave(me);
}

/* Reached from free's entry: the owner's put into its cache in a light section (internal.h)
 * is the path kept short, with no call but tail calls, so that it saves no register; the
 * others are calls of their own. */
static TA_NOINLINE void free_medium(void *p) {
  ta_mhdr_t *h = ta_medium_hdr_at(p, "free(): invalid pointer");
  ta_block_t *b = p;
  ta_arena_t *me = ta_tl_arena, *owner = ta_chunk_of(p)->owner;
  size_t w = ta_mh_load(h);
  /* INUSE is cleared, and CACHED set, by the owner alone, when the block is free: a sure
   * double free. */
  if (TA_UNLIKELY(!ta_medium_live(w))) ta_fatal("free(): double free of pointer", p);
  if (owner != me) return free_medium_remote(owner, b);
  if (TA_UNLIKELY(!ta_light_enter(me))) return free_medium_locked(me, h, false);
  /* Read again inside: before it, a purge under the lock (the purger's, a flush of the cache)
   * may have freed the block before this one and set PREV_FREE, which the filing must keep. */
  w = ta_mh_load(h);
  unsigned i = ta_mcache_room(me, w);
  /* A block whose mark says free (maybe another thread's free not taken in yet: the lock
   * decides), or one the cache refuses (only the owner fills it, so it would refuse again:
   * the lock's way frees it into the heap), out of the section and to the lock. */
  bool marked = b->key == ta_mark(b);
  if (TA_UNLIKELY(marked || i == TA_MCACHE_CLASSES)) {
    ta_light_leave(me);
    return free_medium_locked(me, h, !marked);
  }
  ta_mcache_file_checked(me, h, w, i);
  TA_ADD(me->cnt.frees, 1);
  if (TA_UNLIKELY(me->mcache_since == 0)) return free_medium_clock(me);
  ta_light_leave(me);
}

/* A huge block's or a span's free (huge.c, span.c), counted in the freeing thread's arena,
 * or for a thread without one in the process-wide count of such frees (stats.c). */
static void count_free_ownerless(void) {
  ta_arena_t *me = ta_tl_arena;
  if (me != &ta_sentinel_arena) TA_ADD(me->cnt.frees, 1);
  else atomic_fetch_add_explicit(&ta_orphan_frees, 1, memory_order_relaxed);
}

/* free of a span, a huge block, NULL or a pointer of no kind of ours (ta_free sends small
 * and medium blocks elsewhere). */
static TA_NOINLINE void free_generic(void *p, uint8_t kind) {
  if (p == NULL) return;
  switch (kind) {
  case TA_MAP_SPAN: {
    ta_span_free(p);
    count_free_ownerless();
    /* Its pages go back after the decay whoever calls: the purger, once the process has had
     * threads (asked for when a due time first appears, started at the next safe point: an
     * allocation). Beyond the budget without it, the oldest excess goes back now. */
    if (!ta_bg_running() && TA_UNLIKELY(ta_spans_over_budget()))
      ta_purge_spans_excess(ta_os_now_ms());
    return;
  }
  case TA_MAP_HUGE:
  case TA_MAP_HUGE_AL:
    ta_huge_free(ta_huge_hdr_checked(p, kind, "free(): invalid pointer"));
    count_free_ownerless();
    return;
  default:
    ta_fatal("free(): invalid pointer", p);
  }
}

/* free's way past its small blocks (p in granule g, which the map covers): the granule's
 * kind read again, so that free's own test compares the map's byte in place
 * (ta_map_small_at). */
static TA_NOINLINE void free_not_small(void *p, uintptr_t g) {
  uint8_t kind = ta_map_at(g);
  if (kind == TA_MAP_MEDIUM) return free_medium(p);
  free_generic(p, kind);
}

static TA_COLD void free_invalid(void *p) { ta_fatal("free(): invalid pointer", p); }

static void secure_free(void *p);
/* Hardened build: set while a block leaving the quarantine is really freed. */
static __thread bool secure_releasing __attribute__((tls_model("initial-exec")));

/* Every exit from the fast path is a tail call, so the fast path saves no registers.
 *
 * What each instruction buys: 33 on x86-64 (GCC 12, the Release build, read from objdump;
 * callgrind agrees), 10 of them for integrity:
 *   2  copies of p (the shifts below overwrite their register; x86-64 has no three-operand
 *      shift before BMI2)
 *   1  the granule number (p >> 22)
 *   2  the granule within the map, and the branch: a pointer the map does not cover (past
 *      the user address space, 2^47 on x86-64, or any before the map exists) goes to
 *      free_generic, never to a load through the map
 *   3  the map's address, its byte compared in place with SMALL, the branch (a medium
 *      block, a span, a huge block: free_not_small)
 *   4  the run's meta block: (p >> 9) & 0x1f80, the chunk's base from the granule, or'd
 *   2  the arena: the TLS offset from the GOT, the load past %fs
 *   2  the run's owner against it, and the branch to the remote free
 *   4  the block boundary: the offset in the run, times the run's reciprocal, against the
 *      run's accept, and the branch: an interior pointer or one past the run's limit is
 *      reported, never pushed (integrity: 4)
 *   4  the mark: the key, xor'd with p, compared with the block's second word, and the
 *      branch: a block already free is confirmed by the owner, and reported (integrity: 4;
 *      the one load from the block, which misses where the program left it long ago)
 *   2  the link: the head, encoded by a multiply (integrity: the multiply, so that a write
 *      after free cannot forge one)
 *   3  the stores: the mark (integrity: 1), the link, the new head
 *   1  the arena's count of frees (statistics: mallocs are frees plus live blocks)
 *   2  --used and the branch to the slow path at zero or below (an empty run, a full one)
 *   1  the return
 * A pair in a loop (`bench/workloads/pairs.c`) is these 54 and the loop's 12: 66. Without
 * the 15 for integrity it would be 51, still above the 44 bench/run's targets ask for; at 32
 * bytes, peers that make none of these checks take 46 (rpmalloc 2.0.1) to 79 (jemalloc 5.3,
 * tcmalloc 2.10) in the same loop ("The fast paths", design.md). */
void ta_free(void *p) {
  if (ta_secure && !secure_releasing) return secure_free(p);
  uintptr_t u = (uintptr_t)p;
  uintptr_t g = u >> TA_CHUNK_SHIFT;
  if (TA_UNLIKELY(!ta_map_covers(g))) return free_generic(p, TA_MAP_NONE);
  if (TA_UNLIKELY(!ta_map_small_at(g))) return free_not_small(p, g);
  ta_run_t *r = ta_run_in(g, u);
  ta_arena_t *me = ta_tl_arena;
  ta_block_t *b = p;
  if (TA_UNLIKELY(r->owner != me)) return free_small_remote(r, b);
  uint32_t off = (uint32_t)(u & (TA_RUN_SIZE - 1));
  /* A block's start below the run's limit, in one compare (ta_run_index). */
  if (TA_UNLIKELY((uint32_t)(off * r->recip) >= r->accept)) return free_invalid(p);
  uintptr_t mark = ta_mark(b);
  if (TA_UNLIKELY(b->key == mark)) return free_small_suspect(me, r, b);
  b->link = ta_link_enc(r->free);
  b->key = mark;
  atomic_signal_fence(memory_order_seq_cst); /* the block before the head: as ta_run_pop */
  r->free = b;
  TA_ADD_FAST(me->cnt.frees, 1);
  if (TA_UNLIKELY(ta_dec_le_zero(&r->used))) return free_small_slow(me, r);
}

/* ------------------------------------------------------------------ sizes and realloc */

/* Whether the block's mark word says "free". The word may also be the program's data (in
 * principle: it is keyed by a secret): the owner confirms on its lists, another thread also
 * asks for a link word a list could hold (free_to_owner's rule). */
static inline bool is_free_marked(const void *p) {
  return ((const ta_block_t *)p)->key == ta_mark(p);
}

/* Usable size of a block we handed out; aborts naming `op` if p is not one, or is one already
 * freed. A freed block passes the boundary checks; its mark word tells, and the owner confirms
 * on its lists before aborting; another thread applies free's rule (mark and link). */
static size_t usable_checked(void *p, const char *op) {
  uint8_t kind = ta_map_get((uintptr_t)p);
  switch (kind) {
  case TA_MAP_SMALL: {
    ta_run_t *r = ta_run_of(p);
    if (!ta_small_valid(r, p)) ta_fatal(op, p);
    if (TA_UNLIKELY(is_free_marked(p)) &&
        (ta_secure ||
         (r->owner == ta_tl_arena ? small_freed(ta_tl_arena, r, p) : ta_link_plausible(p))))
      ta_fatal(op, p);
    return r->bsize - (ta_secure ? TA_CANARY_SIZE : 0);
  }
  case TA_MAP_MEDIUM: {
    ta_mhdr_t *h = ta_medium_hdr_checked(p, op);
    if (!ta_medium_live(ta_mh_load(h))) ta_fatal(op, p);
    if (TA_UNLIKELY(is_free_marked(p)) &&
        (ta_secure || (ta_chunk_of(p)->owner == ta_tl_arena ? medium_freed(ta_tl_arena, p)
                                                            : ta_link_plausible(p))))
      ta_fatal(op, p);
    return ta_medium_usable(h);
  }
  case TA_MAP_SPAN:
    return ta_span_usable(p, op);
  case TA_MAP_HUGE:
  case TA_MAP_HUGE_AL: {
    ta_huge_t *h = ta_huge_hdr_checked(p, kind, op);
    if (atomic_load_explicit(&h->state, memory_order_relaxed) != HUGE_LIVE) ta_fatal(op, p);
    return ta_huge_usable(h);
  }
  default:
    ta_fatal(op, p);
  }
}

/* ------------------------------------------------------------------ sized frees */

/* A medium block holds at most this much beyond its request: the request rounded to 16 (15),
 * a tail too small to split off (47), and the smallest block for the tiniest requests; a
 * block of 8 to 64 KiB cut for the cache (medium.c, cache_fit) holds up to a bin's width
 * more (about an eighth), which size_fits' rule of half covers. */
#define MEDIUM_SLACK (TA_MIN_MBLOCK + 2 * TA_ALIGNMENT - 1)

/* Whether `size` can be what was asked for block p, of `usable` bytes: C23 wants the size
 * given to malloc, calloc or realloc (free_sized), or to aligned_alloc with `align`
 * (free_aligned_sized; 0 for free_sized). Where several requests lead to the same block, any
 * of them passes. */
static bool size_fits(const void *p, size_t usable, size_t size, size_t align) {
  size_t n = size ? size : 1; /* a request of 0 is served as 1 */
  if (n > usable) return false;
  unsigned cls; /* the small class the block serves */
  switch (ta_map_get((uintptr_t)p)) {
  case TA_MAP_SMALL:
    cls = ta_run_of(p)->cls;
    break;
  case TA_MAP_MEDIUM:
    /* A small class's block from the medium heap reports its class's size: a run's rule. */
    if (ta_mh_load((const ta_mhdr_t *)p - 1) & TA_M_CLASS) {
      cls = ta_size_class(usable);
      break;
    }
    /* Down to half: another thread's realloc keeps a block in place that far. */
    return usable - n <= MEDIUM_SLACK || n >= usable / 2;
  case TA_MAP_SPAN:
    /* Its request rounded to a page; down to half: realloc keeps a span in place that far
     * (under the smallest span); and any span size a shrink would leave it for, as the pages
     * it would free are fewer than the smallest span's (a 5-page span shrunk to 8 KiB + 1). */
    return usable - n < ta_page_size || n >= usable / 2 || ta_span_kept_for(usable, n);
  default:
    return usable - n < ta_page_size; /* a huge block is its request rounded to a page */
  }
  /* Without the alignment, any smaller size may be right: realloc keeps a block in place for
   * down to half its size (any size up to 64 bytes), memalign takes a bigger class. */
  return align == 0 ||
         class_upto(small_request(n), align, cls > TA_NUM_SMALL ? TA_NUM_RUN : TA_NUM_SMALL) == cls;
}

/* The frees that are told more than the pointer, and the names their messages give. */
enum freer { FREE_SIZED, FREE_ALIGNED_SIZED, OPERATOR_DELETE, SDALLOCX };
static const struct {
  const char *bad_ptr, *bad_align, *bad_size;
} freer_msg[] = {
    [FREE_SIZED] = {"free_sized(): invalid pointer", "free_sized(): invalid alignment for pointer",
                    "free_sized(): invalid size for pointer"},
    [FREE_ALIGNED_SIZED] = {"free_aligned_sized(): invalid pointer",
                            "free_aligned_sized(): invalid alignment for pointer",
                            "free_aligned_sized(): invalid size for pointer"},
    [OPERATOR_DELETE] = {"operator delete(): invalid pointer",
                         "operator delete(): invalid alignment for pointer",
                         "operator delete(): invalid size for pointer"},
    [SDALLOCX] = {"sdallocx(): invalid pointer", "sdallocx(): invalid alignment for pointer",
                  "sdallocx(): invalid size for pointer"},
};
enum { CHECK_ALIGN = 1, CHECK_SIZE = 2, SIZE_ALIGNED = 4 };

/* The sized and aligned frees beyond their fast paths (free_sized, free_aligned_sized, C++'s
 * sized and aligned operator delete, jemalloc's sdallocx): the pointer first (an invalid one
 * is reported as such), then the alignment `align` it must have (CHECK_ALIGN), then the size
 * (CHECK_SIZE; with SIZE_ALIGNED, as the request of an allocation aligned to `align`); then
 * the block is freed as free frees it. */
static TA_NOINLINE void free_checked(void *p, size_t size, size_t align, enum freer who,
                                     unsigned checks) {
  if (p == NULL) return;
  size_t usable = usable_checked(p, freer_msg[who].bad_ptr);
  if ((checks & CHECK_ALIGN) && (!ta_is_pow2(align) || ((uintptr_t)p & (align - 1)) != 0))
    ta_fatal(freer_msg[who].bad_align, p);
  if ((checks & CHECK_SIZE) && !size_fits(p, usable, size, (checks & SIZE_ALIGNED) ? align : 0))
    ta_fatal(freer_msg[who].bad_size, p);
  ta_free(p);
}

/* The fast path of a sized free: a small block whose class holds the size. */
TA_INLINE bool sized_fast(const void *p, size_t size) {
  uintptr_t g = (uintptr_t)p >> TA_CHUNK_SHIFT;
  return !ta_secure && TA_LIKELY(ta_map_covers(g)) && ta_map_small_at(g) &&
         TA_LIKELY(size <= ta_run_of(p)->bsize);
}

void ta_free_sized(void *p, size_t size) {
  if (sized_fast(p, size)) return ta_free(p);
  free_checked(p, size, 0, FREE_SIZED, CHECK_SIZE);
}

void ta_free_aligned_sized(void *p, size_t align, size_t size) {
  free_checked(p, size, align, FREE_ALIGNED_SIZED, CHECK_ALIGN | CHECK_SIZE | SIZE_ALIGNED);
}

/* The calls of cxx.cc, direct within the library (cxx.h). */
void *ta_cxx_malloc(size_t size) TA_MALLOC_ATTR TA_ALLOC_SIZE(1) __attribute__((alias("ta_malloc")));
void *ta_cxx_aligned_alloc(size_t align, size_t size) TA_MALLOC_ATTR TA_ALLOC_ALIGN(1)
    TA_ALLOC_SIZE(2) __attribute__((alias("ta_aligned_alloc")));
void ta_cxx_free(void *p) __attribute__((alias("ta_free")));

/* C++'s sized operator delete (cxx.cc): free_sized's rule, under its own name. */
void ta_delete_sized(void *p, size_t size) {
  if (sized_fast(p, size)) return ta_free(p);
  free_checked(p, size, 0, OPERATOR_DELETE, CHECK_SIZE);
}

/* C++'s aligned operator delete: the alignment, and with `sized` the size as
 * free_aligned_sized checks it. */
void ta_delete_aligned(void *p, size_t size, size_t align, bool sized) {
  free_checked(p, size, align, OPERATOR_DELETE,
               CHECK_ALIGN | (sized ? CHECK_SIZE | SIZE_ALIGNED : 0));
}

size_t ta_malloc_usable_size(void *p) {
  if (p == NULL) return 0;
  return usable_checked(p, "malloc_usable_size(): invalid pointer");
}

void *ta_realloc(void *p, size_t size) {
  if (p == NULL) return ta_malloc(size);
  size_t usable = usable_checked(p, "realloc(): invalid pointer");
  if (ta_secure && ta_map_get((uintptr_t)p) == TA_MAP_SMALL &&
      *ta_canary_at(p, ta_run_of(p)->bsize) != ta_canary(p))
    ta_fatal("realloc(): canary overwritten after pointer", p);
  if (size == 0) {
    ta_free(p);
    return NULL;
  }
  if (TA_UNLIKELY(size > TA_MAX_REQUEST)) {
    errno = ENOMEM;
    return NULL;
  }
  ta_arena_t *me = ta_tl_arena;
  if (me != &ta_sentinel_arena) TA_ADD(me->cnt.reallocs, 1);
  uint8_t kind = ta_map_get((uintptr_t)p);
  void *in_place = NULL;
  if (kind == TA_MAP_SMALL) {
    if (size <= usable && (size >= usable / 2 || usable <= 64)) in_place = p;
  } else if (kind == TA_MAP_MEDIUM) {
    bool owner = ta_chunk_of(p)->owner == me;
    if (owner && size > TA_SMALL_MAX / 2 && size <= TA_MEDIUM_MAX) {
      if (ta_medium_resize(me, (ta_mhdr_t *)p - 1, size)) in_place = p;
    } else if (size <= usable && size >= usable / 2 && (owner || !ta_stats_on)) {
      /* Kept as it is, whatever its size (an over-aligned medium block may hold less than
       * a small one). With statistics on, the size word is the owner's to rewrite. */
      in_place = p;
    }
  } else if (kind == TA_MAP_SPAN) {
    /* Fewer pages: the rest is freed; under the smallest span's size, down to half. */
    if (size <= usable && ta_span_serves(size, TA_ALIGNMENT)) {
      ta_span_shrink(p, size);
      in_place = p;
    } else if (size <= usable && size >= usable / 2) {
      in_place = p;
    }
  } else {
    ta_huge_t *h = ta_huge_hdr_checked(p, kind, "realloc(): invalid pointer");
    if (size <= usable && size >= usable / 2) {
      /* Hardened: the guard page follows the data's last page: open it, move it. */
      if (ta_secure && !ta_huge_secure_arm(h, false))
        ta_fatal("realloc(): canary overwritten before pointer", p);
      TA_STORE(h->requested, size); /* usable follows the request, page-rounded */
      ta_huge_seal(h);
      if (ta_secure) (void)ta_huge_secure_arm(h, true); /* without a guard if mprotect fails */
      in_place = p;
    } else if (size > TA_MEDIUM_MAX && !ta_secure) { /* hardened: moved by a copy */
      in_place = ta_huge_realloc(h, size);
    }
  }
  if (in_place) {
    if (ta_stats_on) ta_stats_record(in_place, size);
    bg_safe_point(); /* what a shrink's freed rest noted */
    return in_place;
  }
  /* A move counts as a malloc and a free too: mallocs - frees stays the live count. A
   * medium block or a span that grows moves to the medium heap, where its owner's next
   * realloc can grow it in place (a span never grows in place: a string builder appending a
   * few bytes at a time would be copied at every page). So does a run's block that grows past
   * the small sizes: in a mid class's run (8 to 16 KiB) it would be copied at every class. A
   * huge block copied as it grows (the hardened build; one mremap could not move) is a growing
   * block too: its new mapping gets huge pages up front where others would not (advise_fresh). */
  bool grows = (kind == TA_MAP_MEDIUM || kind == TA_MAP_SPAN || kind == TA_MAP_HUGE ||
                kind == TA_MAP_HUGE_AL ||
                (kind == TA_MAP_SMALL && size > TA_SMALL_MAX && size <= TA_MID_MAX)) &&
               size > usable;
  void *q = alloc_from(size, TA_ALIGNMENT, false, grows, NULL);
  if (q == NULL) return NULL; /* errno is ENOMEM; p is untouched */
  memcpy(q, p, size < usable ? size : usable);
  ta_free(p);
  bg_safe_point(); /* what the old block's free noted */
  return q;
}

void *ta_reallocarray(void *p, size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  return ta_realloc(p, total);
}

/* ------------------------------------------------------------------ hardened build */

/* A free in the hardened build checks the block whole — its boundary, its mark, its canary
 * and its neighbour's (small), its header and the next one (medium), the canaries before
 * and the guard page after it (huge) — then zeroes it and puts it in the quarantine of the
 * freeing thread's arena: a ring of recently freed blocks that are really freed only when
 * they leave it, oldest first, after a check that nothing was written to them meanwhile.
 * A block in quarantine says "free" in its first two words (a link that decodes to NULL,
 * its mark), so a second free of it is reported at once. */

static bool all_zero(const void *p, size_t n) {
  const uint64_t *w = p;
  uint64_t acc = 0;
  for (size_t i = 0; i < n / 8; i++) acc |= w[i];
  return acc == 0;
}

/* The bytes the quarantine zeroes and checks, beyond the first two words: the usable size
 * (a small block's canary is not part of it). */
static size_t quarantine_usable(void *p) {
  if (ta_map_get((uintptr_t)p) == TA_MAP_SMALL) return ta_run_of(p)->bsize - TA_CANARY_SIZE;
  return ta_medium_usable(ta_medium_hdr_checked(p, "malloc(): write after free at pointer"));
}

static void quarantine_evict(ta_arena_t *me) {
  void *q = me->quarantine[me->q_head];
  me->q_head = (me->q_head + 1) % TA_QUARANTINE;
  me->q_count--;
  size_t usable = quarantine_usable(q);
  me->q_bytes -= usable;
  ta_block_t *b = q;
  if (b->link != 0 || b->key != ta_mark(q) ||
      !all_zero((char *)q + sizeof(ta_block_t), usable - sizeof(ta_block_t)) ||
      (ta_map_get((uintptr_t)q) == TA_MAP_SMALL &&
       *ta_canary_at(q, ta_run_of(q)->bsize) != ta_canary(q)))
    ta_fatal("malloc(): write after free at pointer", q);
  b->key = 0; /* not "free" any more: free takes it as the live block it still is */
  secure_releasing = true;
  ta_free(q);
  secure_releasing = false;
}

/* Every malloc of the hardened build looks at the block freed last, the likeliest to be
 * written through a dangling pointer, before the eviction's full check can: its first two
 * words and up to 256 bytes after them. A write after free is then reported at the next
 * malloc, not 64 frees later. */
static void quarantine_check_newest(ta_arena_t *me) {
  void *q = me->quarantine[(me->q_head + me->q_count - 1) % TA_QUARANTINE];
  size_t usable = quarantine_usable(q);
  size_t look = usable - sizeof(ta_block_t) < 256 ? usable - sizeof(ta_block_t) : 256;
  const ta_block_t *b = q;
  if (b->link != 0 || b->key != ta_mark(q) || !all_zero((const char *)q + sizeof(ta_block_t), look))
    ta_fatal("malloc(): write after free at pointer", q);
}

static void quarantine_flush(ta_arena_t *me) {
  while (me->q_count > 0) quarantine_evict(me);
}

static TA_NOINLINE void secure_free(void *p) {
  if (p == NULL) return;
  uint8_t kind = ta_map_get((uintptr_t)p);
  size_t usable;
  switch (kind) {
  case TA_MAP_SMALL: {
    ta_run_t *r = ta_run_of(p);
    if (!ta_small_valid(r, p)) ta_fatal("free(): invalid pointer", p);
    /* The mark alone: a block freed before, on a list or in a quarantine. */
    if (is_free_marked(p)) ta_fatal("free(): double free of pointer", p);
    uint32_t bs = r->bsize;
    if (*ta_canary_at(p, bs) != ta_canary(p)) ta_fatal("free(): canary overwritten after pointer", p);
    /* The block below: its canary is what a write below this block reaches first. */
    char *below = (char *)p - bs;
    if (((uintptr_t)p & (TA_RUN_SIZE - 1)) >= bs && *ta_canary_at(below, bs) != ta_canary(below))
      ta_fatal("free(): canary overwritten before pointer", p);
    usable = bs - TA_CANARY_SIZE;
    break;
  }
  case TA_MAP_MEDIUM: {
    /* A write below the block reaches its header first: the check word catches it. */
    ta_mhdr_t *h = ta_medium_hdr_checked(p, "free(): invalid pointer");
    if (!ta_medium_live(ta_mh_load(h)) || is_free_marked(p))
      ta_fatal("free(): double free of pointer", p);
    ta_arena_t *owner = ta_chunk_of(p)->owner;
    if (owner == ta_tl_arena) { /* the next header is the owner's to read */
      ta_slow_enter(owner);
      (void)ta_mh_next_checked(h);
      ta_slow_leave(owner);
    }
    usable = ta_medium_usable(h);
    break;
  }
  case TA_MAP_HUGE:
  case TA_MAP_HUGE_AL: {
    ta_huge_t *h = ta_huge_hdr_checked(p, kind, "free(): invalid pointer");
    if (atomic_load_explicit(&h->state, memory_order_relaxed) != HUGE_LIVE)
      ta_fatal("free(): double free of pointer", p);
    if (!ta_huge_secure_arm(h, false)) ta_fatal("free(): canary overwritten before pointer", p);
    ta_huge_free(h); /* unmapped: no span is cached, a write after free faults */
    count_free_ownerless();
    return;
  }
  default:
    ta_fatal("free(): invalid pointer", p);
  }
  ta_arena_t *me = ta_tl_arena;
  bool borrowed = false;
  /* A thread whose first call is a free takes an arena, for its quarantine; one past its
   * exit destructor (a borrowed arena) frees at once. */
  /* (The claim may allocate, pthread_setspecific's array past 32 keys: bg_in_free keeps that
   * allocation's safe point from starting the purger inside this free.) */
  if (me == &ta_sentinel_arena) {
    /* The block's arena first, if it has no thread (arena.c, ta_arena_want). */
    ta_arena_t *owner = kind == TA_MAP_SMALL ? ta_run_of(p)->owner : ta_chunk_of(p)->owner;
    if (atomic_load_explicit(&owner->state, memory_order_relaxed) == ARENA_FREE)
      ta_arena_want(owner, 1);
    bg_in_free = true;
    me = arena_get_slow(&borrowed);
    bg_in_free = false;
  }
  if (me == NULL || borrowed) {
    if (borrowed) arena_release(me, false);
    secure_releasing = true;
    ta_free(p);
    secure_releasing = false;
    return;
  }
  memset((char *)p + sizeof(ta_block_t), 0, usable - sizeof(ta_block_t));
  ta_block_t *b = p;
  b->link = 0; /* decodes to NULL: what a list's last block holds */
  b->key = ta_mark(p);
  while (me->q_count > 0 &&
         (me->q_count == TA_QUARANTINE || me->q_bytes + usable > TA_QUARANTINE_BYTES))
    quarantine_evict(me);
  me->quarantine[(me->q_head + me->q_count) % TA_QUARANTINE] = p;
  me->q_count++;
  me->q_bytes += usable;
}

/* ------------------------------------------------------------------ trim */

/* Gives back at once everything purge.c would give back later: this thread's free memory,
 * that of every arena without an owner, and, in the arenas of other live threads, everything
 * their slow-path locks guard (empty chunks, retired run slots, free medium blocks and the
 * cache of them, the empty runs their mid classes keep; not the free pages of their runs in
 * use, whose lists only their owners may rewrite). Returns 1 if anything went back. */
int ta_malloc_trim(size_t pad) {
  (void)pad;
  int saved = errno;
  uint64_t now = ta_os_now_ms();
  size_t freed = 0;
  ta_arena_t *a = ta_tl_arena;
  if (ta_secure && a != &ta_sentinel_arena) quarantine_flush(a);
  ta_remote_flush();
  if (a != &ta_sentinel_arena) {
    ta_slow_enter(a);
    collect_locked(a);
    freed += ta_arena_purge(a, now, TA_PURGE_ALL, 0, true);
    ta_slow_leave(a);
  }
  for (ta_arena_t *o = ta_arena_first(); o; o = o->next_all)
    if (o != a && atomic_load_explicit(&o->state, memory_order_relaxed) == ARENA_CLAIMED)
      freed += ta_purge_owned_now(o, now);
  freed += ta_purge_orphans(now, true);
  freed += ta_huge_purge(now, true);
  freed += ta_span_purge(now, 0);
  errno = saved;
  return freed > 0;
}

/* ------------------------------------------------------------------ jemalloc's allocation functions */

/* jemalloc's flags (same values as its MALLOCX_* macros, tamalloc.h's TA_MALLOCX_*): the low
 * six bits are log2 of the alignment (0: none), 0x40 asks for zeroed memory; the tcache
 * (bits 8-19) and arena (bits 20-31) fields are accepted and ignored (tamalloc has one arena
 * per thread and no thread cache in front of it to choose). See docs/jemalloc-api.md. */
static size_t flags_align(int flags) {
  unsigned lg = (unsigned)flags & 0x3f;
  return lg ? (size_t)1 << lg : 0;
}
TA_INLINE bool flags_zero(int flags) { return (flags & TA_MALLOCX_ZERO) != 0; }

/* An allocation with an alignment (0 or a power of two) and maybe zeroed. */
static void *alloc_flags(size_t size, size_t align, bool zero) {
  if (align <= TA_ALIGNMENT) {
    if (!zero) return ta_malloc(size);
    align = TA_ALIGNMENT;
  } else if (TA_UNLIKELY(align > TA_MAX_REQUEST / 2)) {
    errno = ENOMEM;
    return NULL;
  }
  return alloc_generic(size, align, zero);
}

/* The usable size alloc_generic gives a request (same dispatch; the medium and huge
 * formulas are medium.c's and huge.c's): nallocx. A medium block may hold up to
 * TA_MIN_MBLOCK - 16 bytes more than this, when what was left of the free block it was cut
 * from was too small to stand alone, and more when it comes from the arena's cache of freed
 * blocks, whole (one of the bin above: medium.c). 0 when no allocation can succeed. */
static size_t usable_for(size_t size, size_t align) {
  if (size > TA_MAX_REQUEST || align > TA_MAX_REQUEST / 2) return 0;
  if (size == 0) size = 1;
  if (align < TA_ALIGNMENT) align = TA_ALIGNMENT;
  unsigned cls = small_class_for(small_request(size), align, false);
  if (cls != 0) return ta_class_size[cls] - (ta_secure ? TA_CANARY_SIZE : 0);
  /* ta_page: the smallest span follows the page, known once the allocator has started. */
  if (size <= TA_MEDIUM_MAX && ta_page() != 0 && ta_span_serves(size, align))
    return ta_span_usable_for(size);
  if (size <= TA_MEDIUM_MAX && align <= TA_MEDIUM_MAX / 4 && size + align <= TA_MEDIUM_MAX)
    return ta_medium_block_for(size, align, false) - sizeof(ta_mhdr_t);
  size_t hdr = ta_secure ? TA_HUGE_HDR + TA_HUGE_CANARY : TA_HUGE_HDR;
  size_t off = align >= TA_CHUNK_SIZE ? TA_CHUNK_SIZE : ta_align_up(hdr, align);
  size_t page = ta_page();
  if (page == 0 || size > TA_MAX_REQUEST - off - (ta_secure ? page : 0)) return 0;
  return ta_align_up(off + size, page) - off;
}

/* MALLOCX_ZERO zeroes the whole block, to its usable size (calloc zeroes what was asked). */
void *ta_mallocx(size_t size, int flags) {
  bool zero = flags_zero(flags);
  void *p = alloc_flags(size, flags_align(flags), zero);
  if (zero && p != NULL) {
    size_t u = usable_checked(p, "mallocx(): invalid pointer");
    if (u > size) memset((char *)p + size, 0, u - size);
  }
  return p;
}

/* realloc with jemalloc's flags. Size 0 is taken as 1 (realloc would free); NULL allocates.
 * With MALLOCX_ZERO the bytes from the old usable size to the new one are zeroed. */
void *ta_rallocx(void *p, size_t size, int flags) {
  if (p == NULL) return ta_mallocx(size, flags);
  if (size == 0) size = 1;
  size_t align = flags_align(flags);
  size_t old = usable_checked(p, "rallocx(): invalid pointer");
  void *q;
  if (align <= TA_ALIGNMENT) {
    q = ta_realloc(p, size);
    if (q == NULL) return NULL;
  } else if (((uintptr_t)p & (align - 1)) == 0 && size <= old && size >= old / 2 &&
             ta_map_get((uintptr_t)p) != TA_MAP_HUGE && !ta_stats_on) {
    /* Aligned already and large enough: kept, as realloc keeps a small or medium block down
     * to half its size (a huge block's size is its request: it moves; statistics on, the
     * recorded request would be stale: it moves too). */
    q = p;
  } else {
    q = alloc_flags(size, align, false);
    if (q == NULL) return NULL;
    memcpy(q, p, size < old ? size : old);
    ta_free(p);
    bg_safe_point(); /* what the old block's free noted */
  }
  if (flags_zero(flags)) {
    size_t now = usable_checked(q, "rallocx(): invalid pointer");
    if (now > old) memset((char *)q + old, 0, now - old);
  }
  return q;
}

/* In place only: a medium block owned by the calling thread grows into a free successor or
 * shrinks (to size + extra, or at least to size), a span shrinks to fewer pages; any other
 * block keeps its size. Returns the usable size, less than size when the block could not
 * grow. */
size_t ta_xallocx(void *p, size_t size, size_t extra, int flags) {
  size_t old = usable_checked(p, "xallocx(): invalid pointer");
  if (size == 0) size = 1;
  size_t want = size + extra < size ? SIZE_MAX : size + extra;
  if (want > TA_MEDIUM_MAX) want = TA_MEDIUM_MAX;
  ta_arena_t *me = ta_tl_arena;
  if (ta_map_get((uintptr_t)p) == TA_MAP_SPAN) {
    /* A span shrinks to fewer pages (any thread: it has no owner); it never grows. */
    if (want >= old || !ta_span_serves(want, TA_ALIGNMENT)) return old;
    ta_span_shrink(p, want);
    bg_safe_point(); /* what the freed rest noted */
    if (ta_stats_on) ta_stats_record(p, want);
    return ta_span_usable(p, "xallocx(): invalid pointer");
  }
  if (ta_map_get((uintptr_t)p) != TA_MAP_MEDIUM || ta_chunk_of(p)->owner != me ||
      want <= TA_SMALL_MAX / 2 || want == old)
    return old;
  ta_mhdr_t *h = (ta_mhdr_t *)p - 1;
  size_t got = 0;
  if (ta_medium_resize(me, h, want)) got = want;
  else if (size < want && size > old && size > TA_SMALL_MAX / 2 && ta_medium_resize(me, h, size))
    got = size;
  if (got == 0) return old;
  bg_safe_point(); /* what a shrink's freed rest noted */
  if (ta_stats_on) ta_stats_record(p, got);
  size_t now = ta_medium_usable(h);
  if (flags_zero(flags) && now > old) memset((char *)p + old, 0, now - old);
  return now;
}

size_t ta_sallocx(const void *p, int flags) {
  (void)flags;
  return usable_checked((void *)p, "sallocx(): invalid pointer");
}

void ta_dallocx(void *p, int flags) {
  (void)flags;
  ta_free(p);
}

/* free_sized's rule for the size (jemalloc allows any size from the request to the usable
 * size), and with MALLOCX_ALIGN the block's alignment. */
void ta_sdallocx(void *p, size_t size, int flags) {
  size_t align = flags_align(flags);
  if (align <= TA_ALIGNMENT) {
    if (sized_fast(p, size)) return ta_free(p);
    return free_checked(p, size, 0, SDALLOCX, CHECK_SIZE);
  }
  free_checked(p, size, align, SDALLOCX, CHECK_SIZE | CHECK_ALIGN);
}

size_t ta_nallocx(size_t size, int flags) { return usable_for(size, flags_align(flags)); }

/* ------------------------------------------------------------------ thread exit and fork */

/* The exit hook of a thread that had an arena, or a chain of remote frees put off (arena.c
 * registers it), which goes to its owner first: the hardened build's
 * quarantine is checked and emptied now, not left until some thread adopts the arena; the
 * thread gives its arenas up; and the purger thread starts if that left work, so that their
 * free memory goes back on time, with no caller needed. */
static void thread_exit(void *arena) {
  ta_arena_t *a = arena, *give_up[2];
  /* The sentinel: a thread that registered the hook for its chain alone (arena.c, defer_hook),
   * or one a fork child left without its arena; a signal handler's call may have given it an
   * arena after that registration. */
  if (a == &ta_sentinel_arena) a = ta_tl_arena;
  ta_remote_flush(); /* a thread without an arena registers the hook for this alone (arena.c) */
  if (ta_secure && a != &ta_sentinel_arena && ta_tl_arena == a) quarantine_flush(a);
  unsigned n = ta_arena_thread_exit(a, give_up);
  for (unsigned i = 0; i < n; i++)
    arena_release(give_up[i], true);
  ta_bg_maybe_start(library.background);
}

/* fork's child handler: the lock of the break, the purger thread (it did not survive the
 * fork), the statistics readers and the log, then the arenas (arena.c says how). */
static void fork_child(void) {
  ta_fork_reset_after_fork();
  ta_brk_reset_after_fork();
  ta_bg_reset_after_fork();
  ta_stats_reset_after_fork(); /* readers, the log, and the huge cache's tally */
  ta_span_after_fork();       /* the free spans' count, should a purge have been cut off */
  ta_chunk_pool_after_fork(); /* the pool's count, should a chunk have been in transit */
  ta_arena_fork_child(); /* and the lenders of run slots: not the arenas left without a thread */
}

/* The child handler is registered when the library is loaded (see ta_atfork_register). */
__attribute__((constructor)) static void atfork_at_load(void) { ta_atfork_register(&library); }
