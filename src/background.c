/*
 * background.c — a thread that gives memory back while the program does not call the
 * allocator.
 *
 * Without it, purging runs on the slow paths of threads that allocate: the arenas of
 * exited threads and the spans in the huge cache stay resident until some thread happens
 * to take a slow path after their decay time. This thread does that work on time:
 *   - it is started lazily, once the process has had two arenas (two threads that
 *     allocated) and something is waiting to be purged: a single-threaded program never
 *     has one, and keeps glibc's single-thread shortcuts;
 *   - it is started at a point where this thread holds no lock of ours and no arena is
 *     half changed, never from inside a slow path: the thread-exit destructor; a thread's
 *     taking of an arena, with something due (a due time it left behind when it stopped);
 *     and, once a due time noted where none was asked for it (ta_bg_request, from
 *     ta_purge_note_global), the next allocation's way in or out of its slow path (alloc.c,
 *     bg_safe_point). Never from a free: glibc frees a joined thread's TLS while holding the
 *     lock pthread_create takes. A due time a free notes thus waits for some thread's next
 *     allocation, taking of an arena or exit;
 *   - it sleeps on a futex until the earliest due time, and with nothing pending until a
 *     thread notes work due sooner than it would wake (ta_bg_wake, dirty.c), or
 *     until a round for the budget that left an arena to its owner's lock comes again;
 *   - it purges what has waited for the decay time: arenas without an owner (claimed one
 *     at a time, as any thread's orphan purge does), the huge cache, and the arenas of
 *     live threads that are idle: it only tries their slow-path lock, never waits for it,
 *     and touches only what that lock guards (empty chunks, retired run slots, free medium
 *     blocks and the cache of freed ones), never the runs' lists the owner's fast paths
 *     use. It takes in the medium blocks other threads freed into such an arena (an idle
 *     owner never would) and puts the small ones back on the list. It allocates nothing;
 *   - beyond the budget of free resident memory (ta_dirty_max), it returns the oldest
 *     excess across all arenas, so that one thread's idle memory never makes a busy thread
 *     give back, and fault in again, what it has just freed;
 *   - it leaves when no other thread owns an arena, or only one does and what exited
 *     threads left is purged (leave_with), after waiting, two decay times at most, for the
 *     free spans to age (span.c: no thread owns them): it never keeps a process alive, nor
 *     multithreaded for long, on its own; a later thread exit starts it again;
 *   - a fork child has no such thread: its state is reset and it starts again lazily. fork's
 *     prepare handler waits (a bounded time) for the thread to let go of the lock it may
 *     hold, and the thread takes none until the fork is done, so that no arena is left
 *     half purged in the child (see "fork" below);
 *   - TAMALLOC_CONF=background_thread:false turns it off. It is on by default in the
 *     replacement library and off in the ta_ API library (tests drive purges themselves).
 *
 * Calls down only: purge.c and huge.c for the work, os.c for the thread and the futex. What
 * is due, and the futex word the lower layers ring, are in dirty.c's book.
 */
#include "internal.h"

#ifndef TA_MAIL_BACKLOG
#define TA_MAIL_BACKLOG 32 /* medium blocks waiting on a busy owner's list: take them */
#endif

/* The thread's state, its futex word, when it wakes by itself (ta_bg_wakes_at) and whether
 * it is over the budget are in dirty.c's book, where the lower layers wake it. */
static _Atomic uint64_t bg_rounds;  /* purge rounds done (tests and statistics) */
static _Atomic uint64_t bg_starts;  /* threads started (tests: counted by the starter) */

static uint64_t earlier(uint64_t a, uint64_t b) { return a == 0 ? b : b == 0 ? a : a < b ? a : b; }

/* fork: the thread holds an arena's slow-path lock while it purges that arena, and owns
 * what it has taken off shared lists (an ownerless arena it claimed, cached huge spans, free
 * spans) while it works on them. A fork that caught it there would leave the child an arena
 * whose lists it cannot trust (a zombie, arena.c: the forking thread's own arena among them,
 * with every block it holds), or memory nobody owns. So each such step runs between
 * ta_fork_hold and ta_fork_unhold (dirty.c), which fork's prepare handler waits for. */

/* The earliest due time of work the thread may do, or 0. */
static uint64_t next_due(void) {
  return earlier(earlier(earlier(atomic_load_explicit(&ta_orphan_due, memory_order_seq_cst),
                                 atomic_load_explicit(&ta_huge_due, memory_order_seq_cst)),
                         atomic_load_explicit(&ta_arenas_due, memory_order_seq_cst)),
                 atomic_load_explicit(&ta_span_due, memory_order_seq_cst));
}

/* Purges, in every arena with an owner, what became free at least `age` ms ago; an arena
 * whose owner is in a slow path is left to the owner (it purges there itself) and looked
 * at again a little later. For the budget (not periodic), it stops as soon as all arenas are
 * within it: the arenas after that keep what they hold; and it says whether it left an
 * arena for its owner's lock (the caller looks again shortly: see bg_main). */
static bool purge_owned(uint64_t now, uint64_t age, bool periodic) {
  bool busy = false;
  for (ta_arena_t *a = ta_arena_first(); a; a = a->next_all) {
    if (!periodic && !ta_over_budget()) return busy;
    if (atomic_load_explicit(&a->state, memory_order_acquire) != ARENA_CLAIMED) continue;
    uint64_t due = atomic_load_explicit(&a->purge_due, memory_order_relaxed);
    /* Medium blocks other threads freed into it: an owner that has gone idle would never
     * take them in (see ta_remote_collect_medium). seq_cst: after this round's exchange of
     * the due time, against a free's increment then its load of it (alloc.c,
     * free_medium_remote): either this sees the block, or that free sees no visit due. */
    bool mail = atomic_load_explicit(&a->remote_medium, memory_order_seq_cst) > 0;
    bool purge = due != 0 && (!periodic || now >= due);
    if (!purge && !mail) {
      if (due != 0) ta_purge_note_global(&ta_arenas_due, due);
      continue;
    }
    /* An owner that runs, or waits for a CPU, will use its memory in its own time: its
     * arena goes by the owner's age (ta_owner_decay); the memory of one blocked in the
     * kernel goes back by the wall time. Read before taking the lock, which the owner may
     * want meanwhile. The budget's purges take the oldest excess from every arena, past
     * what a running owner's demand holds. */
    uint64_t own_age = age;
    bool idle = true; /* (a blocked owner's demand holds nothing back: see ta_arena_purge) */
    if (purge && (periodic || ta_arena_demand(a, now) > 0)) {
      uint32_t tid = atomic_load_explicit(&a->owner_tid, memory_order_relaxed);
      idle = tid == 0 || !ta_os_thread_runs(tid);
      if (!idle && periodic) own_age = ta_owner_decay();
    }
    if (!ta_fork_hold()) { /* a fork is under way: after it */
      ta_purge_note_global(&ta_arenas_due, now + 1);
      busy = busy || purge;
      continue;
    }
    if (!ta_slow_try_enter(a)) {
      ta_fork_unhold();
      ta_purge_note_global(&ta_arenas_due, now + ta_decay_ms / 4 + 1);
      busy = busy || purge;
      continue;
    }
    /* Still owned now that we hold it (its owner may have given it up meanwhile: then an
     * orphan purge will see to it). */
    if (atomic_load_explicit(&a->state, memory_order_acquire) == ARENA_CLAIMED) {
      /* From an owner that has not taken its list in since the last visit, or that lets
       * many wait: a busy owner keeping up does it itself, and should not wait here for its
       * lock. */
      if (mail && (a->collects == a->collects_seen ||
                   atomic_load_explicit(&a->remote_medium, memory_order_relaxed) >= TA_MAIL_BACKLOG))
        ta_remote_collect_medium(a);
      else if (mail)
        ta_purge_note_global(&ta_arenas_due, ta_mail_due(now));
      a->collects_seen = a->collects;
      if (purge) ta_arena_purge(a, now, TA_PURGE_AGED, own_age, idle); /* its next due time */
      else if (due != 0) ta_purge_note_global(&ta_arenas_due, due);
    }
    ta_slow_leave(a);
    ta_fork_unhold();
  }
  return busy;
}

/* Over the budget: what has no owner goes first, then the oldest memory of every arena:
 * what became free half a decay time ago, then an eighth, then the rest. True when it is
 * still over and an arena was left because its owner held its lock. */
static bool purge_over_budget(uint64_t now) {
  if (!ta_fork_hold()) return true; /* a fork is under way: again after it */
  ta_purge_orphans(now, true);
  ta_purge_spans_excess(now); /* spans have their own budget */
  ta_fork_unhold();
  bool busy = false;
  for (unsigned i = 0; i < TA_EXCESS_STEPS && ta_over_budget(); i++)
    busy = purge_owned(now, ta_excess_age(i), false); /* the last pass's arenas */
  return busy && ta_over_budget();
}

/* Arenas that live threads own now, as far as can be known (an owner without an exit hook,
 * pthread_key_create having failed, is not counted, since it may have exited long ago), up
 * to 2: all that leave_with and bg_main tell apart (none, one, several). With threads
 * running, the walk stops there instead of reading every arena the process ever made. */
static unsigned owned_arenas(void) {
  unsigned n = 0;
  for (ta_arena_t *a = ta_arena_first(); a && n < 2; a = a->next_all)
    n += atomic_load_explicit(&a->state, memory_order_relaxed) == ARENA_CLAIMED &&
         ta_arena_owner_hooked(a);
  return n;
}

/* The thread stays only while the process has several threads of its own: with none left
 * it must not keep the process alive (a main thread that called pthread_exit waits for the
 * last thread), and with one left it must not keep the process multithreaded (unshare,
 * glibc's single-thread shortcuts) once what exited threads left is purged; that thread's
 * own slow paths purge its memory. A later thread exit starts it again. */
static bool leave_with(unsigned owned) {
  return owned == 0 ||
         (owned == 1 && atomic_load_explicit(&ta_orphan_due, memory_order_seq_cst) == 0 &&
          !atomic_load_explicit(&ta_bg_over, memory_order_relaxed));
}

static void *bg_main(void *arg) {
  (void)arg;
  ta_os_thread_name("tamalloc-purge");
  /* The thread itself says it runs, and that it has left: the starter only moves the state
   * from NONE to STARTING, so RUNNING always means a thread exists. */
  atomic_store_explicit(&ta_bg_state, BG_RUNNING, memory_order_release);
  uint64_t linger_end = 0; /* while leaving: how long it may wait for free spans to age */
  /* Over the budget with an arena left to its owner's lock: when the budget's round comes
   * again (0: not pending), and how long the wait after it will be. */
  uint64_t over_again = 0;
  uint32_t over_wait_ms = 1;
  for (;;) {
    unsigned owned = owned_arenas();
    /* (Not with a round for the budget to come again: the owner does not give its excess
     * back itself while this thread runs, dirty.c.) */
    if (leave_with(owned) && (owned == 0 || over_again == 0)) {
      /* Free spans and cached huge spans belong to no thread: what the last thread or
       * exited ones freed last is not a decay time old yet. With a thread left, give back
       * what is, and wait for the rest to age, for two decay times at most; what is left
       * then waits for that thread's slow paths (a thread that makes only small allocations
       * takes none: the huge spans 800 MiB of blocks left cached, 64 MiB, stayed). With none
       * left, the process must not wait for us. */
      uint64_t now = ta_os_now_ms();
      if (linger_end == 0) linger_end = now + 2 * ta_decay_ms;
      if (owned > 0 && ta_fork_hold()) {
        ta_span_purge(now, ta_decay_ms);
        ta_huge_purge(now, false);
        ta_fork_unhold();
      }
      uint64_t sdue = earlier(atomic_load_explicit(&ta_span_due, memory_order_seq_cst),
                              atomic_load_explicit(&ta_huge_due, memory_order_seq_cst));
      if (owned > 0 && sdue != 0 && sdue <= linger_end) {
        uint32_t seq = atomic_load_explicit(&ta_bg_seq, memory_order_seq_cst);
        if (sdue > now) ta_os_futex_wait(&ta_bg_seq, seq, sdue - now);
        continue;
      }
      atomic_store_explicit(&ta_bg_wakes_at, 0, memory_order_relaxed);
      atomic_store_explicit(&ta_bg_state, BG_NONE, memory_order_seq_cst);
      /* A thread that exited (or went over the budget), or came to own an arena (alloc.c,
       * arena_get_slow: its fence pairs with this one), between our look and that store saw
       * us running and started nobody: look again, and stay if there is work. If someone
       * started a new thread meanwhile, the state is no longer NONE: that one does it. */
      atomic_thread_fence(memory_order_seq_cst);
      int none = BG_NONE;
      if (next_due() != 0 && !leave_with(owned_arenas()) &&
          atomic_compare_exchange_strong(&ta_bg_state, &none, BG_RUNNING))
        continue;
      return NULL;
    }
    linger_end = 0;
    if (ta_fork_pending()) { /* every step would be skipped: wait for the fork */
      uint32_t seq = atomic_load_explicit(&ta_bg_seq, memory_order_seq_cst);
      ta_os_futex_wait(&ta_bg_seq, seq, 1);
      continue;
    }
    /* Read before anything is looked at: a ring from here on cuts the sleep below short. */
    uint32_t seq = atomic_load_explicit(&ta_bg_seq, memory_order_seq_cst);
    uint64_t now = ta_os_now_ms(), due = next_due();
    bool over = atomic_exchange_explicit(&ta_bg_over, 0, memory_order_acquire);
    if (over || (over_again != 0 && now >= over_again)) {
      /* Still over afterwards, with an arena left to its owner's lock (or to a fork): the
       * frees that rang may all have been made under that lock, and none rings again. The
       * round comes again in 1 ms, then 2, 4 ... 64 while that lasts; the periodic work
       * goes on meanwhile. */
      over_again = 0;
      if (purge_over_budget(now)) {
        over_again = ta_os_now_ms() + over_wait_ms; /* after the round, however long */
        if (over_wait_ms < 64) over_wait_ms *= 2;
      } else {
        over_wait_ms = 1;
      }
      atomic_fetch_add_explicit(&bg_rounds, 1, memory_order_relaxed);
      continue;
    }
    if (over_again != 0 && (due == 0 || over_again < due)) due = over_again;
    if (due != 0 && now >= due) {
      uint64_t odue = atomic_load_explicit(&ta_orphan_due, memory_order_relaxed);
      uint64_t hdue = atomic_load_explicit(&ta_huge_due, memory_order_relaxed);
      uint64_t adue = atomic_load_explicit(&ta_arenas_due, memory_order_relaxed);
      uint64_t sdue = atomic_load_explicit(&ta_span_due, memory_order_relaxed);
      if (!ta_fork_hold()) continue; /* a fork is under way */
      if (odue && now >= odue) ta_purge_orphans(now, false);
      if (hdue && now >= hdue) ta_huge_purge(now, false);
      if (sdue && now >= sdue) ta_span_purge(now, ta_owner_decay());
      ta_fork_unhold();
      if (adue && now >= adue) {
        atomic_exchange_explicit(&ta_arenas_due, 0, memory_order_seq_cst);
        purge_owned(now, ta_decay_ms, true);
      }
      atomic_fetch_add_explicit(&bg_rounds, 1, memory_order_relaxed);
      continue;
    }
    /* Announce the sleep and its end, then look once more: a thread that notes work due
     * sooner after this sees ta_bg_wakes_at and rings; one that noted it before is seen
     * here. (A far due time, an arena's demand, must not hide a nearer one noted meanwhile:
     * a medium block freed into an idle owner's arena waits for this thread.) */
    uint64_t wake = due ? due : UINT64_MAX, again;
    atomic_store_explicit(&ta_bg_wakes_at, wake, memory_order_seq_cst);
    if ((again = next_due()) == 0 || again >= wake)
      ta_os_futex_wait(&ta_bg_seq, seq, due ? due - now : 0);
    atomic_store_explicit(&ta_bg_wakes_at, 0, memory_order_relaxed);
  }
  return NULL;
}

/* At a safe point: start the thread if there is work and it is not running yet. by_default:
 * the library runs it unless background_thread says otherwise (the API layer, alloc.c,
 * which is compiled into each library, says which: ta_library_t). */
void ta_bg_maybe_start(bool by_default) {
  /* Not in a fork child before its handler reset the state (a library's own child handler,
   * run before this library's, that allocates: the parent's arenas still look owned there,
   * and a purger started then would be forgotten by the reset); the reset clears the request
   * too. In the parent, a fork under way changes nothing here: a purger started meanwhile
   * waits for the fork's end before any step (bg_main, ta_fork_hold). */
  if (ta_fork_child_unreset()) return;
  /* Cleared only when set (its line stays shared among the readers), and seq_cst before the
   * looks below (internal.h, ta_bg_request). */
  if (atomic_load_explicit(&ta_bg_wanted.v, memory_order_relaxed))
    atomic_exchange_explicit(&ta_bg_wanted.v, 0, memory_order_seq_cst);
  if (ta_bg_setting < 0 ? !by_default : ta_bg_setting == 0) return;
  if (atomic_load_explicit(&ta_bg_state, memory_order_seq_cst) != BG_NONE) return;
  if (next_due() == 0 || leave_with(owned_arenas())) return; /* nothing, or no one, to do it for */
  int expected = BG_NONE;
  if (!atomic_compare_exchange_strong(&ta_bg_state, &expected, BG_STARTING)) return;
  if (ta_os_thread_start(bg_main) == 0)
    atomic_fetch_add_explicit(&bg_starts, 1, memory_order_relaxed);
  else
    atomic_store(&ta_bg_state, BG_NONE); /* failed: for the next thread exit to try again */
}

bool ta_bg_due(void) { return next_due() != 0; }

/* Fork child: the thread did not survive the fork. */
void ta_bg_reset_after_fork(void) {
  atomic_store(&ta_bg_state, BG_NONE);
  atomic_store(&ta_bg_wanted.v, 0); /* the parent's request: the child asks anew */
  atomic_store(&ta_bg_wakes_at, 0);
  atomic_store(&ta_bg_over, 0);
}

uint64_t ta_bg_rounds(void) { return atomic_load(&bg_rounds); }
uint64_t ta_bg_starts(void) { return atomic_load(&bg_starts); }
void ta_bg_enable(bool on) { ta_bg_setting = on; }
