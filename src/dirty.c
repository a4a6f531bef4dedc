/*
 * dirty.c — the book of free memory still resident ("dirty"): how much each arena and all
 * of them hold, when it is due to go back to the kernel, and what the purger thread is told.
 *
 * The layers that free memory (chunk.c, small.c, medium.c, huge.c, arena.c) write here and
 * never purge: the purgers above (purge.c, background.c) read the book and act. Written:
 *   - ta_dirty_add: bytes of empty chunks and retired run slots an arena keeps resident,
 *     counted per arena and for all of them (ta_dirty_total);
 *   - ta_purge_note: something of an arena became free at a time, so the arena is due for
 *     purging decay_ms later (arena.purge_due), and so are the owned arenas taken together
 *     (ta_arenas_due); ta_note_orphan_work: ownerless arenas have work (ta_orphan_due);
 *     ta_purge_note_global: any such due time (huge.c's cache too: ta_huge_due);
 *   - how many arenas were ever made (ta_arena_count, counted by arena.c), among which
 *     medium.c shares the budget for the tops of its chunks;
 *   - ta_dirty_fresh: pages an arena takes that are not resident, and ta_dirty_drawdown: the
 *     most of its free medium memory it takes at once; its demand: as much free memory it
 *     may keep past the decay and the budget (ta_arena_demand);
 *   - over the budget (ta_dirty_max), the arena that went over it is marked
 *     (arena.over_budget): whoever holds the arena, above, gives its oldest excess back once
 *     the lower layers have returned (ta_purge_if_over: alloc.c, purge.c), but for a free's
 *     drain of an arena without a thread, which makes the orphan purge due at once for it
 *     (any thread's next check for due purges: purge.c, ta_purge_orphans). While the purger
 *     thread runs, it is told instead, as it can reach the idle arenas, whose memory is older.
 *
 * The purger thread (background.c) sleeps on this book: a due time noted sooner than it
 * would wake wakes it (ta_bg_wake, against ta_bg_wakes_at), and so does going over the budget while
 * it runs (ta_bg_over_budget). Waking it is a futex wake (os.c): a lower layer rings, and the
 * thread, above, does the work. The thread says here whether it runs (ta_bg_state); a due
 * time noted where none was, with it stopped, asks for it (ta_bg_request, in
 * ta_purge_note_global, whichever layer notes); it is started from above, at the next safe
 * point (alloc.c: the way in or out of an allocation's slow path, never a free), and a
 * thread that comes to own an arena starts it when a due time was left behind.
 */
#include "internal.h"

ta_alone_count_t ta_dirty_total;       /* Σ arena.dirty_bytes */
ta_alone_count_t ta_dirty_held;        /* Σ arena.held */
ta_alone_count_t ta_span_dirty;        /* free spans still resident (span.c): no arena's */
_Atomic uint64_t ta_span_excess_after; /* no purge of the spans' excess before (ms) */
_Atomic uint32_t ta_arena_count; /* arenas ever made: as many as threads were ever alive at once */
_Atomic uint64_t ta_orphan_due;
_Atomic uint64_t ta_arenas_due; /* earliest due time of arenas with an owner (background.c) */

/* The purger thread's side (background.c reads and writes these). */
_Atomic int ta_bg_state;     /* BG_NONE, BG_STARTING, BG_RUNNING */
_Atomic uint32_t ta_bg_seq;  /* futex word: bumped by every wake */
/* While it sleeps: the time it wakes by itself (UINT64_MAX: none, only when rung); 0 awake. */
_Atomic uint64_t ta_bg_wakes_at;
_Atomic int ta_bg_over;      /* 1: over the budget, return the oldest excess */
/* A note from none asked for the thread: read by every malloc past the small sizes
 * (alloc_big), so alone in its 128 bytes, away from the words above, written by every note,
 * ring and sleep. */
ta_alone_flag_t ta_bg_wanted;

/* Started or running: STARTING means the thread was created and is about to run. */
bool ta_bg_running(void) { return atomic_load(&ta_bg_state) != BG_NONE; }

/* Work is due at `t`: wake the thread if it sleeps past that (without a due time, or until
 * a later one: a far due time, such as an arena's demand sets, must not hide a near one), by
 * more than TA_BG_SLACK_MS: one that wakes by itself a moment later is left to (with
 * decay_ms:0 every note is due at once, and rang a thread asleep until a visit 8 ms on, for a
 * round each: thousands of rounds a second for a producer and a consumer of medium blocks). */
#define TA_BG_SLACK_MS 8
void ta_bg_wake(uint64_t t) {
  if (t + TA_BG_SLACK_MS >= atomic_load_explicit(&ta_bg_wakes_at, memory_order_seq_cst)) return;
  atomic_fetch_add_explicit(&ta_bg_seq, 1, memory_order_seq_cst);
  ta_os_futex_wake(&ta_bg_seq);
}

/* Over the budget: hand the work to the thread (one wake per episode). */
void ta_bg_over_budget(void) {
  if (atomic_load_explicit(&ta_bg_over, memory_order_relaxed) ||
      atomic_exchange_explicit(&ta_bg_over, 1, memory_order_seq_cst))
    return;
  atomic_fetch_add_explicit(&ta_bg_seq, 1, memory_order_seq_cst);
  ta_os_futex_wake(&ta_bg_seq);
}

/* ---- fork ----
 * A thread that holds the slow-path lock of an arena not its own (the purger purging it,
 * another thread taking a spare chunk from it: chunk.c; a free taking in what waits on an
 * arena without a thread: arena.c, drain_ownerless), or owns what it took off a shared
 * list (the purger's huge-cache and spans passes; each arena of any thread's orphan pass,
 * purge.c), would leave a fork child an arena
 * it cannot trust (a zombie, arena.c: the forking thread's own among them, with every block it
 * holds) or memory nobody owns. So such a step runs between ta_fork_hold and ta_fork_unhold,
 * and fork's prepare handler announces the fork, then waits for the steps in flight to end;
 * a step that sees the fork announced does not start, until the parent handler. Both sides
 * write their word, then read the other's (sequentially consistent): either the step sees the
 * fork or the fork sees the step. No lock is held across fork. The steps allocate nothing
 * and take no lock of glibc's, so the wait ends; it is bounded all the same (a fork from a
 * signal handler that interrupted the break lock's holder would otherwise wait for a purge
 * that waits for that lock): past it, the child copes as it always could. */
static _Atomic int fork_announced, fork_steps;
#define TA_FORK_WAIT_MS 100

bool ta_fork_hold(void) {
  atomic_fetch_add(&fork_steps, 1);
  if (atomic_load(&fork_announced) == 0) return true;
  atomic_fetch_sub(&fork_steps, 1);
  return false;
}
void ta_fork_unhold(void) { atomic_fetch_sub(&fork_steps, 1); }
bool ta_fork_pending(void) { return atomic_load_explicit(&fork_announced, memory_order_relaxed); }

/* The process that forks: a child, until its handler resets the announcement, has another
 * pid (ta_fork_child_unreset). */
static _Atomic uint32_t fork_parent_pid;

void ta_fork_prepare(void) {
  atomic_store(&fork_parent_pid, ta_os_getpid());
  atomic_fetch_add(&fork_announced, 1);
  if (atomic_load(&fork_steps) == 0) return;
  uint64_t until = ta_os_now_ms() + TA_FORK_WAIT_MS;
  while (atomic_load(&fork_steps) && ta_os_now_ms() < until) ta_os_yield();
}
void ta_fork_parent(void) { atomic_fetch_sub(&fork_announced, 1); }
bool ta_fork_child_unreset(void) {
  return atomic_load_explicit(&fork_announced, memory_order_relaxed) &&
         ta_os_getpid() != atomic_load_explicit(&fork_parent_pid, memory_order_relaxed);
}
/* The child's only thread is the forking one: the other threads' steps and forks are not. */
void ta_fork_reset_after_fork(void) {
  atomic_store(&fork_announced, 0);
  atomic_store(&fork_steps, 0);
}

/* Work is due at t in *v. A running purger is rung for it (ta_bg_wake); a stopped one, when
 * nothing was due there, is asked for (ta_bg_request), once the process has had two arenas:
 * the next safe point starts it (alloc.c: an allocation of any thread, a thread's taking of
 * an arena, a thread's exit; never a free). Every layer notes here, so a due time noted while
 * the purger is stopped either was left behind (a thread that comes to own an arena starts it
 * for that, alloc.c) or is noted from none, here, and asks for it. The count's load is
 * seq_cst, after the exchange: against a new owner's fence, then its look at the due times
 * (arm64 too). */
void ta_purge_note_global(_Atomic uint64_t *v, uint64_t t) {
  uint64_t cur = atomic_load_explicit(v, memory_order_relaxed);
  while (cur == 0 || t < cur) {
    if (atomic_compare_exchange_weak_explicit(v, &cur, t, memory_order_seq_cst,
                                              memory_order_relaxed)) {
      ta_bg_wake(t); /* sooner than anything was due, or than the thread wakes */
      if (cur == 0 && atomic_load_explicit(&ta_arena_count, memory_order_seq_cst) > 1 &&
          !ta_bg_running())
        ta_bg_request();
      return;
    }
  }
}

/* Something of arena a became free at `since`. Also noted process-wide, for the background
 * thread, which purges idle arenas whose owners make no slow call (a note from none asks
 * for that thread when it is stopped: ta_purge_note_global). */
void ta_purge_note(ta_arena_t *a, uint64_t since) {
  uint64_t due = since + ta_decay_ms;
  /* The owner's light section (a block into the cache) may note while a run slot's keeper
   * notes under the lock (internal.h): the earlier time wins either way. */
  uint64_t cur = atomic_load_explicit(&a->purge_due, memory_order_relaxed);
  while ((cur == 0 || due < cur) &&
         !atomic_compare_exchange_weak_explicit(&a->purge_due, &cur, due, memory_order_relaxed,
                                                memory_order_relaxed)) {
  }
  ta_purge_note_global(&ta_arenas_due, due);
}

void ta_note_orphan_work(void) { ta_purge_note_global(&ta_orphan_due, ta_os_now_ms() + ta_decay_ms); }

/* The age at which an owner's own purge gives its free memory back. Ages are wall time, but
 * a thread that shares its CPU with many others runs a slice now and then: with 256 threads
 * on 2 CPUs each waits hundreds of milliseconds for its turn, and what it freed in its last
 * slice looks a decay time old when it comes back to use it again, so it went back and was
 * faulted in again at every turn (half the page faults of the 256-thread pool workload). So
 * the owner counts in about its own time: the wall time divided by the threads waiting for
 * each CPU (read from the kernel at most once a second; no more than this process has
 * arenas per CPU, and at most 8, counted). Blocked threads
 * wait for no CPU: in a server whose threads mostly wait for work, the factor stays near 1,
 * and the background thread purges the arenas of blocked threads by the wall time
 * (background.c). */
_Atomic uint32_t ta_owner_scale_force; /* tests: the factor itself, when not 0 */

uint64_t ta_owner_decay(void) {
  static _Atomic uint32_t per_cpu = 1;
  uint32_t forced = atomic_load_explicit(&ta_owner_scale_force, memory_order_relaxed);
  if (forced != 0) return ta_decay_ms * forced;
  static _Atomic uint64_t read_ms;
  uint64_t now = ta_os_now_ms(), last = atomic_load_explicit(&read_ms, memory_order_relaxed);
  if (now - last >= 1000 &&
      atomic_compare_exchange_strong_explicit(&read_ms, &last, now, memory_order_relaxed,
                                              memory_order_relaxed)) {
    unsigned cpus = ta_os_ncpu(), n = ta_os_runnable() / cpus;
    /* Only as far as this process has threads of its own to wait behind. */
    unsigned own = atomic_load_explicit(&ta_arena_count, memory_order_relaxed) / cpus;
    if (n > own) n = own;
    atomic_store_explicit(&per_cpu, n < 1 ? 1 : n > 8 ? 8 : n, memory_order_relaxed);
  }
  return ta_decay_ms * atomic_load_explicit(&per_cpu, memory_order_relaxed);
}

/* One arena's share of half the budget of free memory, within [64 KiB, hi]: few threads keep
 * enough not to fault again on each cycle, many threads keep little each, since another thread
 * can reuse those pages only through the kernel. */
static size_t share_within(size_t hi) {
  uint32_t n = atomic_load_explicit(&ta_arena_count, memory_order_relaxed);
  size_t share = ta_dirty_max / 2 / (n ? n : 1), lo = (size_t)64 << 10;
  return share < lo ? lo : share > hi ? hi : share;
}

/* What its large free medium blocks may keep resident past a purge: at most 1 MiB. */
size_t ta_arena_share(void) { return share_within((size_t)1 << 20); }

/* The allowance of each medium chunk's top (medium.c), the other half: the same share, but a
 * whole chunk while the process has had one arena. A single thread's top is its own: no other
 * thread could have reused its pages. With at most 1 MiB, one thread replacing blocks of
 * 256 KiB to 1 MiB (the spans workload) trimmed its tops 1,364 times in 0.1 s and took 3 times
 * the page faults; its tops now go by their age alone. With a chunk for up to 4 arenas, the
 * abandon workload (threads exiting with live blocks, 2 at a time) peaked 10% higher. */
size_t ta_top_allowance(void) {
  if (atomic_load_explicit(&ta_arena_count, memory_order_relaxed) <= 1)
    return share_within(TA_CHUNK_SIZE); /* (half of dirty_max_kb: a chunk, by default) */
  return ta_arena_share();
}

/* Arena a's demand window: a new one begins if the current one is over. Returns the time. */
static uint64_t demand_window_now(ta_arena_t *a) {
  uint64_t now = ta_os_now_ms(), w = ta_demand_window();
  uint64_t start = atomic_load_explicit(&a->demand_ms, memory_order_relaxed);
  if (now - start >= w) {
    size_t cur = atomic_load_explicit(&a->demand, memory_order_relaxed);
    atomic_store_explicit(&a->demand_prev, now - start < 2 * w ? cur : 0, memory_order_relaxed);
    atomic_store_explicit(&a->demand_ms, now, memory_order_relaxed);
    atomic_store_explicit(&a->demand, 0, memory_order_relaxed);
    atomic_store_explicit(&a->demand_top, 0, memory_order_relaxed);
    a->hole_rise = 0;
  }
  return now;
}

static void demand_add(ta_arena_t *a, size_t bytes, uint64_t now) {
  size_t cur = atomic_load_explicit(&a->demand, memory_order_relaxed);
  atomic_store_explicit(&a->demand, cur + bytes, memory_order_relaxed);
  ta_dirty_hold(a, ta_arena_demand(a, now));
}

/* Arena a takes `bytes` of pages that are not resident: a chunk from the kernel, the pool
 * or given back whole (chunk.c), a run slot given back on its own (small.c), a medium block
 * whose pages were given back (medium.c). Counted in windows of ta_demand_window(). */
void ta_dirty_fresh(ta_arena_t *a, size_t bytes) { demand_add(a, bytes, demand_window_now(a)); }

/* Arena a takes `taken` bytes of its large free medium blocks' resident pages (medium.c).
 * What it takes in a window less what it frees into its medium heap meanwhile (hole_rise,
 * never below 0: ta_dirty_hole_freed) is resident memory it needed at once, which a purge
 * would have made it fault in: the most it reaches in the window (demand_top) counts in the
 * window's demand. The same bytes taken and freed again and again count once; blocks taken
 * and kept count in the window that took them. */
void ta_dirty_drawdown(ta_arena_t *a, size_t taken) {
  uint64_t now = demand_window_now(a); /* a new window begins from 0 */
  a->hole_rise += taken;
  size_t top = atomic_load_explicit(&a->demand_top, memory_order_relaxed);
  if (a->hole_rise <= top) return;
  atomic_store_explicit(&a->demand_top, a->hole_rise, memory_order_relaxed);
  demand_add(a, a->hole_rise - top, now);
}

/* The pages arena a drew from the kernel over the last one to two windows, and the free
 * medium memory it took at once: as much free memory it may keep resident past the decay and
 * outside the budget (purge.c), since it is drawing that much anyway. A program that frees half its
 * blocks and allocates as much again in other sizes gave back, with the decay and the budget alone,
 * the memory it was about to fault in again (the frag workload: 205,000 page faults against
 * jemalloc's 157,000, which keeps its free memory for 10 s). `now` may be older than the window's
 * start (a purger's reading): that is no time at all. */
size_t ta_arena_demand(const ta_arena_t *a, uint64_t now) {
  uint64_t start = atomic_load_explicit(&a->demand_ms, memory_order_relaxed);
  uint64_t d = now > start ? now - start : 0, w = ta_demand_window();
  size_t cur = atomic_load_explicit(&a->demand, memory_order_relaxed);
  size_t prev = atomic_load_explicit(&a->demand_prev, memory_order_relaxed);
  size_t demand = d < w ? (cur > prev ? cur : prev) : d < 2 * w ? cur : 0;
  size_t most = ta_dirty_max * 8; /* an arena keeps at most eight budgets for it */
  return demand < most ? demand : most;
}

/* When arena a's demand falls next, unless it draws more meanwhile (ms). */
uint64_t ta_demand_until(const ta_arena_t *a, uint64_t now) {
  uint64_t start = atomic_load_explicit(&a->demand_ms, memory_order_relaxed);
  uint64_t d = now > start ? now - start : 0, w = ta_demand_window();
  if (d < w && atomic_load_explicit(&a->demand_prev, memory_order_relaxed) >
                   atomic_load_explicit(&a->demand, memory_order_relaxed))
    return start + w;
  return d < 2 * w ? start + 2 * w : now;
}

/* Arena a's demand is `demand`: the part of its empty chunks and run slots that it covers is
 * held, outside the budget, so that an arena drawing pages keeps what it holds without
 * making the others give theirs back. Under the arena's lock. */
void ta_dirty_hold(ta_arena_t *a, size_t demand) {
  atomic_store_explicit(&a->demand_seen, demand, memory_order_relaxed);
  size_t h = a->dirty_bytes < demand ? a->dirty_bytes : demand;
  if (atomic_load_explicit(&a->held, memory_order_relaxed) == h) return;
  size_t old = atomic_exchange_explicit(&a->held, h, memory_order_relaxed);
  atomic_fetch_add_explicit(&ta_dirty_held.v, h - old, memory_order_relaxed);
}

/* Arena a took all arenas over the budget: the background thread gives the oldest excess
 * back when it runs, else the arena's holder (ta_purge_if_over). */
static void went_over(ta_arena_t *a) {
  if (ta_bg_running()) ta_bg_over_budget();
  else
    atomic_store_explicit(&a->over_budget, true, memory_order_relaxed);
}

/* Arena a has a new owner, or none (the exit hook, or a claim: neither holds its lock).
 * `keep`: its demand may stay (a new owner's claim; a thread's exit while the purger thread
 * runs, which gives back what nobody adopts a decay time after the exit, demand or not:
 * without it, what the demand held would wait for another thread's call). While the process
 * has had fewer than TA_FEW_ARENAS threads at once, it then stays: the next thread to adopt
 * the arena is likely to draw as much (threads that come and go: the abandon workload at 2
 * threads took 182,000-199,000 page faults, 36,000 so, and half the time). With more, what exited
 * threads hold is memory the running ones cannot use (abandon at 64 threads peaked 9%
 * higher, no faster). Else the demand is forgotten: the arena has drawn nothing yet, and
 * what its old demand held back past the budget is excess now, for its holder to give back
 * (ta_purge_if_over). */
void ta_dirty_owner_change(ta_arena_t *a, bool keep) {
  if (!keep || atomic_load_explicit(&ta_arena_count, memory_order_relaxed) >= TA_FEW_ARENAS)
    ta_dirty_forget_demand(a);
}

/* The demand forgotten: arena a has drawn nothing, and what its demand held back past the
 * budget is excess now. */
void ta_dirty_forget_demand(ta_arena_t *a) {
  atomic_store_explicit(&a->demand, 0, memory_order_relaxed);
  atomic_store_explicit(&a->demand_prev, 0, memory_order_relaxed);
  atomic_store_explicit(&a->demand_top, 0, memory_order_relaxed);
  atomic_store_explicit(&a->demand_ms, 0, memory_order_relaxed); /* the next count begins anew */
  atomic_store_explicit(&a->demand_seen, 0, memory_order_relaxed);
  size_t old = atomic_exchange_explicit(&a->held, 0, memory_order_relaxed);
  atomic_fetch_sub_explicit(&ta_dirty_held.v, old, memory_order_relaxed);
  if (old > 0 && ta_over_budget()) went_over(a);
}

/* All arenas are over the budget, and arena a holds more than its demand. */
bool ta_arena_over_budget(const ta_arena_t *a, uint64_t now) {
  return ta_over_budget() && a->dirty_bytes > ta_arena_demand(a, now);
}

/* Beyond the budget: what all arenas hold past their demands (the two sums are read apart:
 * a moment's skew is harmless). */
bool ta_over_budget(void) {
  size_t total = atomic_load_explicit(&ta_dirty_total.v, memory_order_relaxed);
  size_t held = atomic_load_explicit(&ta_dirty_held.v, memory_order_relaxed);
  return total > held && total - held > ta_dirty_max;
}

/* Free spans (span.c) belong to no arena and have a budget of their own, dirty_max_kb as
 * well: counted together with the arenas', arenas idle over the budget made every span's
 * free give back every free span, which no purge of spans could bring within it; with half
 * of it, the 64-thread pool workload took 50% more page faults. */
/* Signed: a purge counts what it gives back at once, while the free of a span it took may
 * not have added its batch yet, so the count can be below zero for a moment (span.c). */
static bool spans_over(size_t total) { return (intptr_t)total > (intptr_t)ta_dirty_max; }

bool ta_spans_over_budget(void) {
  return spans_over(atomic_load_explicit(&ta_span_dirty.v, memory_order_relaxed));
}

/* Counts free-but-resident spans. Beyond their budget, with the purger thread running, it is
 * told; without it, the thread that freed gives the oldest back once the free has returned
 * to the API layer (ta_purge_spans_excess). */
void ta_dirty_add_spans(intptr_t bytes) {
  size_t total = atomic_fetch_add_explicit(&ta_span_dirty.v, (size_t)bytes, memory_order_relaxed) +
                 (size_t)bytes;
  if (bytes > 0 && spans_over(total) && ta_bg_running() &&
      ta_os_now_ms() >= atomic_load_explicit(&ta_span_excess_after, memory_order_relaxed))
    ta_bg_over_budget();
}

/* Counts free-but-resident memory of an arena. Beyond the budget of all arenas together,
 * the oldest excess goes back: the background thread's job when it runs (it can reach idle
 * arenas, whose memory is the oldest), else this arena's own, given back by its holder as
 * soon as the lower layers have returned (ta_purge_if_over). Not while the arena is being
 * purged: the purge counts again at its end. */
void ta_dirty_add(ta_arena_t *a, intptr_t bytes) {
  a->dirty_bytes += (size_t)bytes;
  atomic_fetch_add_explicit(&ta_dirty_total.v, (size_t)bytes, memory_order_relaxed);
  size_t demand = bytes > 0 ? ta_arena_demand(a, ta_os_now_ms())
                            : atomic_load_explicit(&a->demand_seen, memory_order_relaxed);
  ta_dirty_hold(a, demand);
  if (bytes > 0 && !a->purging && a->dirty_bytes > demand && ta_over_budget()) went_over(a);
}


