/*
 * arena.c — who owns what: arenas, threads, remote frees, thread exit and fork.
 *
 * Every arena ever made is on one push-only list (all_arenas) and never unmapped; its
 * `state` says whether a thread owns it. A thread without an arena points at the sentinel
 * arena, whose runs are all empty, so its first malloc lands in the slow path, which
 * claims a FREE arena with one CAS or maps a new one. No global lock is involved.
 *
 * Thread exit: a pthread key destructor (the API layer's hook, alloc.c, which arena.c
 * registers) drains the arena's remote lists and sets it FREE; the next thread that needs
 * an arena adopts it with its blocks and lists as they are (what other threads freed into it
 * meanwhile taken in every 16 of their frees: drain_ownerless, below).
 * Blocks of the arena still live in other threads keep arriving through `remote`. A
 * thread that allocates after its destructor ran (another library's TLS destructor)
 * borrows an arena for that one call and gives it back at once. When no key can be had
 * (all taken), each new thread tries again; a thread registered without one tags its arena
 * with its kernel thread id, and a thread in need of an arena takes such an arena over once
 * the kernel says its owner has exited.
 *
 * Remote frees: another thread pushes the block onto one of owner.remote's lists with a
 * CAS (a small block within a chain of its frees for that owner: "remote frees put off",
 * below), each freer taking the lists in turn; only the arena's holder takes blocks off (its
 * owner; for an arena without a thread, whoever claimed it: an adoption, the orphan purge, a
 * free's drain, below), a whole list at once with an exchange, so there is no ABA problem. The
 * owner walks the lists side by side: see ta_remote_collect_slow.
 *
 * fork: no allocator lock is held across fork, so fork can never deadlock against glibc's own
 * locks. The prepare handler only waits, a bounded time, for the background purger to let go
 * of the lock it may hold (background.c), so that the forking thread's arena is whole in the
 * child. The child handler (alloc.c's, which repairs
 * every layer and ends here) is registered when the library is loaded, so that it runs
 * before the child handlers of the program. In the child, the break lock is reset and
 * every arena owned by another thread becomes
 * adoptable (and due for purging) — unless its slow-path lock was held (its owner was inside
 * a slow path, or the purger inside a purge), whose half-done list surgery the child must
 * not trust: such an arena becomes a ZOMBIE,
 * never used again (purge.c counts and drops what is freed into it). The forking thread
 * keeps its own arena on the same condition; when a fork from a signal handler interrupted
 * one of its calls, the arena is SUSPENDED instead: that call is on this thread's stack and
 * may yet run to its end in the child, after which the thread takes the arena back.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>

#include "internal.h"

__thread ta_arena_t *ta_tl_arena __attribute__((tls_model("initial-exec"))) = &ta_sentinel_arena;
enum { TL_NEW = 0, TL_OWNER = 1, TL_EXITED = 2 };
static __thread uint8_t tl_state __attribute__((tls_model("initial-exec")));
/* This thread's exit hook is registered (register_thread, or defer_hook for a thread
 * without an arena). */
static __thread bool tl_hooked __attribute__((tls_model("initial-exec")));
/* This thread's arena, set aside by a fork that interrupted one of its calls (fork_child). */
static __thread ta_arena_t *tl_suspended __attribute__((tls_model("initial-exec")));
/* The arena without a thread that this thread last freed into while it had none of its own,
 * if it has freed little (ta_arena_want): the one its next claim tries first (arena_claim). */
static __thread ta_arena_t *tl_wanted __attribute__((tls_model("initial-exec")));
/* How many such frees it made, counted up to TA_DRAIN_EVERY + 1 (ta_arena_want). */
static __thread uint8_t tl_wanted_frees __attribute__((tls_model("initial-exec")));
/* The remote list this thread pushes its next remote free onto (ta_remote_push). */
static __thread uint8_t tl_remote_list __attribute__((tls_model("initial-exec")));

ta_arena_t ta_sentinel_arena = {
    .cur = {[0 ... TA_NUM_RUN] = &ta_empty_run},
    .state = ARENA_ZOMBIE,
};

bool ta_initialized;
static _Atomic(ta_arena_t *) all_arenas;
static pthread_key_t exit_key;
static _Atomic int exit_key_state; /* 0 none, 1 creating, 2 ready, 3 failed (tried again) */
static _Atomic int atfork_state;
static _Atomic bool unhooked; /* some thread was registered without an exit hook */

/* The free-list keys (defined in chunk.c, with the secret): independent of the secret of the
 * check words, so that a check word read past the end of a block tells nothing about them. */
static void draw_keys(void) {
  ta_keys.mark = ta_os_random_fresh();
  uintptr_t k = ta_os_random_fresh() | 1, inv = k; /* Newton: each step doubles the low bits */
  for (int i = 0; i < 5; i++) inv *= 2 - k * inv;
  ta_keys.link = k;
  ta_keys.unlink = inv;
}

/* 1 while a thread initialises (ta_init); that thread's own flag, for the fork child. */
_Atomic int ta_init_claimed;
static __thread bool tl_initialising __attribute__((tls_model("initial-exec")));

/* One thread initialises: it maps the granule map, writes the secret once, and what differs
 * between the libraries (chunks from the break or not: chunk.c), then publishes with a
 * release store; any other thread arriving meanwhile waits the few microseconds that takes
 * (reading the huge page size from sysfs among them). A fork child whose parent had another
 * thread at it when the process forked would wait for ever for a thread it does not have: the
 * child handler lets the claim go (ta_arena_fork_child), and the child starts again. False
 * when the map cannot be mapped (no memory): the next call tries again. */
bool ta_init(const ta_library_t *lib) {
  if (TA_LIKELY(__atomic_load_n(&ta_initialized, __ATOMIC_ACQUIRE))) return true;
  /* malloc's fast path finds the sentinel run's list empty because NULL is not in the
   * sentinel's 4 MiB granule: true unless the library itself lies in the first 4 MiB. */
  if (((uintptr_t)&ta_empty_run >> TA_CHUNK_SHIFT) == 0)
    ta_fatal("init: the library lies below 4 MiB, which is not supported, at", &ta_empty_run);
  for (;;) {
    int expected = 0;
    /* Raised before the claim: a fork from a signal handler between the two finds it up, and
     * the child keeps the claim (a hang at worst, never two starts at once). */
    tl_initialising = true;
    if (atomic_compare_exchange_strong(&ta_init_claimed, &expected, 1)) {
      ta_conf_init();
      ta_chunk_commit_default(); /* after the settings (lazy_commit), before the map */
      if (!ta_map_init()) {
        tl_initialising = false;
        atomic_store(&ta_init_claimed, 0);
        return false;
      }
      ta_pages_init(); /* after the settings: a test may ask for larger pages */
      ta_span_init();  /* its smallest block and page table follow the page */
      ta_run_limit_init(); /* and whether runs serve the mid classes */
      ta_chunk_brk_default(lib->brk);
      ta_secret = ta_os_random();
      draw_keys();
#if !defined(TA_TSAN)
      /* The owners' light sections (internal.h): registered while the process has one
       * thread, as a rule, where registering is cheapest. */
      ta_light_ok = ta_os_barrier_register();
#endif
      __atomic_store_n(&ta_initialized, true, __ATOMIC_RELEASE);
      tl_initialising = false;
      return true;
    }
    tl_initialising = false;
    while (atomic_load(&ta_init_claimed) == 1 && !__atomic_load_n(&ta_initialized, __ATOMIC_ACQUIRE))
      sched_yield();
    if (__atomic_load_n(&ta_initialized, __ATOMIC_ACQUIRE)) return true;
  }
}

static void arena_init(ta_arena_t *a) {
  for (unsigned c = 0; c <= TA_NUM_RUN; c++)
    a->cur[c] = &ta_empty_run;
  /* Everything else starts zeroed (fresh mapping). */
}

/* Arenas of threads without an exit hook are never given back by their thread; they carry
 * their owner's identity in owner_tag instead: bits 0-21 its kernel thread id, 22-43 the
 * process id (pid_max is at most 2^22), 44-63 a count of changes, so that a compare-exchange
 * never takes a new owner that was given a recycled thread id for the old one. Thread id 0:
 * not to be taken over (the owner has an exit hook, or the arena is not claimed). Only the
 * owner sets its id (register_thread); a taker replaces a dead owner's with 0. */
#define TAG_ID_BITS 22
#define TAG_ID_MASK (((uint64_t)1 << TAG_ID_BITS) - 1)

static uint64_t tag_next(uint64_t prev, uint32_t pid, uint32_t tid) {
  if (tid > TAG_ID_MASK || pid > TAG_ID_MASK) pid = tid = 0; /* cannot be told apart: keep */
  return (((prev >> (2 * TAG_ID_BITS)) + 1) << (2 * TAG_ID_BITS)) |
         ((uint64_t)pid << TAG_ID_BITS) | tid;
}

/* tid 0: nobody is to take the arena over; else the owner's thread id in this process. */
static void arena_set_owner(ta_arena_t *a, uint32_t tid) {
  uint64_t t = atomic_load_explicit(&a->owner_tag, memory_order_relaxed);
  atomic_store_explicit(&a->owner_tag, tag_next(t, tid ? ta_os_getpid() : 0, tid),
                        memory_order_release);
}

/* Takes over a claimed arena whose owner had no exit hook and has exited. An owner that is
 * alive, still exiting, or of unknown fate keeps it; so does one that died inside the
 * allocator (its lists cannot be trusted), and one tagged in another process (a fork child
 * whose repair has not run yet). */
static bool arena_take_from_dead(ta_arena_t *a, uint32_t pid) {
  uint64_t tag = atomic_load_explicit(&a->owner_tag, memory_order_acquire);
  uint32_t tid = (uint32_t)(tag & TAG_ID_MASK);
  if (tid == 0 || ((tag >> TAG_ID_BITS) & TAG_ID_MASK) != pid) return false;
  if (atomic_load_explicit(&a->state, memory_order_relaxed) != ARENA_CLAIMED) return false;
  /* The owner's last writes came before its exit, and the system call that sees it gone
   * orders what we read next (the kernel's exit path and the call are full barriers). */
  if (!ta_os_thread_gone(tid)) return false;
  if (ta_slow_held(a)) return false;
  if (!atomic_compare_exchange_strong_explicit(&a->owner_tag, &tag, tag_next(tag, 0, 0),
                                               memory_order_acq_rel, memory_order_relaxed))
    return false;
  ta_light_forbid(a); /* its owner ran its last light section before it died */
  return true;
}

static ta_arena_t *arena_claim(void) {
  /* Our own arena, set aside by a fork that interrupted one of our calls: ours again once
   * that call has ended (then its lists are whole). */
  ta_arena_t *s = tl_suspended;
  if (s != NULL && !ta_slow_held(s)) {
    tl_suspended = NULL;
    atomic_store_explicit(&s->state, ARENA_CLAIMED, memory_order_relaxed);
    return s;
  }
  /* The arena of the last block this thread freed while it had none, if it has freed few and
   * that arena is free: a thread replacing the blocks of one that exited then frees them where
   * it allocates, and its mallocs reuse them at once (ta_arena_want). Any claim without an
   * arena takes the hint, a borrowed one past the thread's exit too: it is only a preference,
   * and the claim's compare-and-swap refuses any arena that is not FREE. */
  ta_arena_t *w = tl_wanted;
  tl_wanted = NULL;
  if (w != NULL && ta_arena_try_claim(w)) {
    TA_ADD(w->cnt.adopted, 1);
    return w;
  }
  for (ta_arena_t *a = atomic_load_explicit(&all_arenas, memory_order_acquire); a;
       a = a->next_all)
    if (ta_arena_try_claim(a)) {
      TA_ADD(a->cnt.adopted, 1);
      return a;
    }
  if (atomic_load_explicit(&unhooked, memory_order_relaxed)) {
    uint32_t pid = ta_os_getpid();
    for (ta_arena_t *a = atomic_load_explicit(&all_arenas, memory_order_acquire); a;
         a = a->next_all)
      if (arena_take_from_dead(a, pid)) {
        TA_ADD(a->cnt.adopted, 1);
        return a;
      }
  }
  ta_arena_t *a = ta_os_mmap(ta_align_up(sizeof(ta_arena_t), ta_page_size));
  if (a == NULL) return NULL;
  arena_init(a);
  a->id = atomic_fetch_add(&ta_arena_count, 1);
  ta_span_arenas(a->id + 1); /* spans serve once the process has had enough threads */
  ta_medium_arenas(a->id + 1); /* and the medium caches shrink */
  ta_run_limit_arenas(a->id + 1); /* and the mid classes leave runs */
  atomic_store_explicit(&a->state, ARENA_CLAIMED, memory_order_relaxed);
  ta_arena_t *head = atomic_load_explicit(&all_arenas, memory_order_relaxed);
  do {
    a->next_all = head;
  } while (!atomic_compare_exchange_weak_explicit(&all_arenas, &head, a, memory_order_release,
                                                  memory_order_relaxed));
  return a;
}

/* Not an arena whose lock this thread holds: a FREE arena's lock is taken beside one's own (a
 * slot borrowed or given back, a spare chunk: small.c, chunk.c) and a signal handler's call
 * nested in that must not change its lists under the interrupted one (a free's drain, an
 * orphan purge). */
bool ta_arena_try_claim(ta_arena_t *a) {
  int expected = ARENA_FREE;
  if (atomic_load_explicit(&a->state, memory_order_relaxed) != ARENA_FREE ||
      ta_slow_held_by_me(a) ||
      !atomic_compare_exchange_strong_explicit(&a->state, &expected, ARENA_CLAIMED,
                                               memory_order_acquire, memory_order_relaxed))
    return false;
  ta_light_forbid(a); /* nobody runs one now; the claimer allows its own (internal.h) */
  return true;
}

/* A push by this thread onto the remote lists of arena a, which has no thread (drain_ownerless:
 * a remote free, mostly; also what a purge without an arena puts back on its owner's lists),
 * or the hardened build's free of a block of such an arena by a thread without one. A thread
 * without an arena of its own tries a first at its next claim, if its pushes into such arenas
 * so far are at most TA_DRAIN_EVERY: a thread handed the blocks of one that exited and
 * replacing them one by one (a pool that replaces its threads, bench/run's server) then frees
 * them where it allocates, and its mallocs reuse them at once, where it would otherwise free
 * them into an arena nobody allocates from while it drew new memory into another. A thread
 * that frees more first claims in list order, as one that frees nothing: sending every such
 * thread to the arena it freed into spread bench/run's abandon over every arena, each keeping
 * what its thread freed (docs/design.md, "Which arena a new thread takes"). A thread that
 * only frees takes no arena (but in the hardened build, whose first free takes one for its
 * quarantine), and a free into an arena that has a thread costs nothing more. */
_Static_assert(TA_DRAIN_EVERY < UINT8_MAX, "the count stops past TA_DRAIN_EVERY");
void ta_arena_want(ta_arena_t *a, unsigned n) {
  if (ta_tl_arena != &ta_sentinel_arena) return;
  tl_wanted_frees =
      (uint8_t)(tl_wanted_frees + n <= TA_DRAIN_EVERY ? tl_wanted_frees + n : TA_DRAIN_EVERY + 1);
  tl_wanted = tl_wanted_frees <= TA_DRAIN_EVERY ? a : NULL;
}

ta_arena_t *ta_arena_first(void) { return atomic_load_explicit(&all_arenas, memory_order_acquire); }

/* Gives the arena up (thread exit, the end of a borrowed call, or a claim a signal handler's
 * call overtook: ta_arena_get_slow): what is free in it goes back to the kernel once it has
 * been ownerless for the decay time (purge.c). The caller took in its remote frees just
 * before, and kept the budget (or noted the orphan purge due), while it was its own. */
void ta_arena_release(ta_arena_t *a) {
  a->released_ms = ta_os_now_ms();
  ta_arena_give_back(a);
  ta_note_orphan_work();
}

/* Makes a claimed arena FREE again. A block freed into it while it was claimed was left for
 * the claimer (the freer saw CLAIMED and told nobody): look once more after the store, so
 * that work is noticed either here or by the freer (seq_cst on both sides: the freer's CAS
 * then its load of the state, our store then our load of the lists). The same for a run slot
 * another arena gave back to it (small.c, lent_give_back: its flag, then its load). */
void ta_arena_give_back(ta_arena_t *a) {
  atomic_store_explicit(&a->state, ARENA_FREE, memory_order_seq_cst);
  if (ta_remote_waiting(a, memory_order_seq_cst) ||
      atomic_load_explicit(&a->suspected, memory_order_seq_cst) != 0 ||
      atomic_exchange_explicit(&a->slot_came_back, false, memory_order_seq_cst))
    ta_note_orphan_work();
}

/* The thread of arena a exits (from the API layer's exit hook, alloc.c): from now on it has
 * no arena. Returns how many arenas it gives up, in give_up[] in the order they are to be
 * released (ta_arena_release, by the hook). */
unsigned ta_arena_thread_exit(ta_arena_t *a, ta_arena_t *give_up[2]) {
  unsigned n = 0;
  if (ta_tl_arena == a) ta_tl_arena = &ta_sentinel_arena;
  tl_state = TL_EXITED;
  /* An arena a fork set aside whose interrupted call has ended goes back too. */
  ta_arena_t *s = tl_suspended;
  if (s != NULL && !ta_slow_held(s)) {
    tl_suspended = NULL;
    give_up[n++] = s;
  }
  /* Only an arena this thread still owns (not one a fork child made a zombie). */
  if (atomic_load_explicit(&a->state, memory_order_relaxed) == ARENA_CLAIMED) give_up[n++] = a;
  return n;
}

/* glibc runs the child handlers of pthread_atfork in the order they were registered (and the
 * prepare handlers in the reverse order: ours last, after the program's, which may allocate),
 * so ours (the API layer's: alloc.c) are registered as early as possible: when the library is
 * loaded (before the program's constructors and main: alloc.c's constructor), or by the
 * first slow path if an earlier constructor allocates. pthread_atfork may allocate (glibc's
 * handler array grows past 48 entries, under glibc's lock): the flag is set before the
 * call, so that the nested malloc, which takes the ordinary path, does not register again. */
void ta_atfork_register(const ta_library_t *lib) {
  int expected = 0;
  if (atomic_load_explicit(&atfork_state, memory_order_relaxed) == 0 &&
      atomic_compare_exchange_strong(&atfork_state, &expected, 1))
    pthread_atfork(lib->fork_prepare, lib->fork_parent, lib->fork_child);
}

/* Registration that may itself call malloc: done once the thread has its arena, so a
 * nested malloc simply takes the fast path. pthread_key_create and pthread_setspecific do
 * not allocate for the first 32 keys in glibc; pthread_atfork may. */
static void register_thread(ta_arena_t *a, const ta_library_t *lib) {
  int st = atomic_load_explicit(&exit_key_state, memory_order_acquire);
  if (st == 0 || st == 3) {
    /* Created once; after a failure (every key taken), each new thread tries again. */
    int expected = st;
    if (atomic_compare_exchange_strong(&exit_key_state, &expected, 1)) {
      st = ta_os_key_create(&exit_key, lib->thread_exit) == 0 ? 2 : 3;
      atomic_store_explicit(&exit_key_state, st, memory_order_release);
    }
  }
  while ((st = atomic_load_explicit(&exit_key_state, memory_order_acquire)) == 1) {
  }
  bool hooked = st == 2 && pthread_setspecific(exit_key, a) == 0;
  tl_hooked = hooked;
  /* Without an exit hook the arena carries its owner's thread id, so that it can be taken
   * over once the owner has exited (arena_claim). */
  if (!hooked) atomic_store_explicit(&unhooked, true, memory_order_relaxed);
  uint32_t tid = ta_os_gettid();
  atomic_store_explicit(&a->owner_tid, tid, memory_order_relaxed);
  arena_set_owner(a, hooked ? 0 : tid);
  ta_atfork_register(lib);
}

/* An arena claimed for a moment and given back, its remote frees taken in. Over the budget
 * without the purger thread (dirty.c, went_over): the orphan purge is due now, and gives
 * this arena's oldest excess back at the next check for due purges in any thread
 * (ta_maybe_purge: a slow path of malloc; ta_purge_orphans). Left for a decay time, the excess
 * would keep every arena over the budget, and the live ones would give back their own memory,
 * freed just now. */
static void orphan_due_if_over(ta_arena_t *a) {
  if (atomic_load_explicit(&a->over_budget, memory_order_relaxed))
    ta_purge_note_global(&ta_orphan_due, ta_os_now_ms());
}

/* A signal handler may run between this thread's look at ta_tl_arena and its store there, and
 * a malloc in it, which sees no arena either, claims one of its own and makes it the thread's.
 * A plain store would then put the claim's arena over the handler's: that one would stay
 * CLAIMED for good with nobody to give it back (its exit hook replaced too), and the small
 * blocks the handler took would pile up on its remote lists when freed. So the store is a
 * compare-exchange against the sentinel, which a handler cannot cut in two: if a handler's
 * call got there first, its arena stays the thread's and the claim's goes back. And a fork in
 * such a handler gives the claim's arena up in the child (ta_arena_fork_child: it is not yet
 * the thread's), where the interrupted call then goes on: an arena the claim finds no longer
 * CLAIMED once it is stored is left as the child made it (FREE, or a zombie if the fork cut its
 * drain), and the thread claims again. A fork after the store keeps it (the child's thread has
 * it). Not covered: another thread of the child that claims the arena given up before the
 * interrupted call goes on (one that a child handler of the program's starts, or the purger
 * thread, started by a malloc in the signal handler), and a borrowed call (past the thread's
 * exit) cut so; the child cannot tell whether the claim's compare-and-swap had been made.
 * Tests: test/unit/lifecycle.c, "a signal handler during a thread's first claim". */
ta_arena_t *ta_arena_get_slow(const ta_library_t *lib, bool *borrowed) {
  *borrowed = false;
  if (TA_UNLIKELY(!ta_init(lib))) return NULL;
  for (;;) {
    ta_arena_t *a = ta_tl_arena;
    if (a != &ta_sentinel_arena) return a;
    /* The thread's chain of remote frees first: its owner may have lost its thread since,
     * and be the arena claimed next, whose lists the collect below then takes in. */
    ta_remote_flush();
    a = arena_claim();
    if (a == NULL) return NULL;
    if (TA_UNLIKELY(atomic_load_explicit(&ta_os_claim_signal, memory_order_relaxed)))
      ta_os_claim_interrupted();    /* tests: a signal arrives here */
    ta_dirty_owner_change(a, true); /* an adopted arena: its last owner's demand, or none */
    ta_remote_collect(a);           /* an adopted arena: what others freed while it had no owner */
    if (tl_state == TL_EXITED) {
      *borrowed = true; /* past this thread's clean-up: use it for one call only */
      return a;
    }
    ta_arena_t *mine = &ta_sentinel_arena;
    if (!__atomic_compare_exchange_n(&ta_tl_arena, &mine, a, false, __ATOMIC_RELAXED,
                                     __ATOMIC_RELAXED)) {
      /* A handler's call gave the thread an arena meanwhile: that one is kept, and this one
       * goes back unless a fork child already gave it up (or the handler's call, there, took
       * it again). */
      if (mine != a && atomic_load_explicit(&a->state, memory_order_relaxed) == ARENA_CLAIMED) {
        ta_light_forbid(a); /* one taken back from tl_suspended may still allow them */
        orphan_due_if_over(a);
        ta_arena_release(a);
      }
      return mine;
    }
    if (atomic_load_explicit(&a->state, memory_order_relaxed) == ARENA_CLAIMED) {
      tl_state = TL_OWNER;
      register_thread(a, lib);
      return a;
    }
    ta_tl_arena = &ta_sentinel_arena; /* a fork child gave it up before the store */
  }
}

/* What is freed into an arena whose thread has exited waits on its remote lists until a thread
 * adopts the arena or the orphan purge claims it, a decay time after the exit (purge.c): until
 * then those blocks count as in use, their runs can neither serve nor retire, and the threads
 * that go on allocate new memory meanwhile. Where threads exit while others still free what they
 * allocated (bench/run's abandon and server), that raised the peak. So every TA_DRAIN_EVERY-th
 * free a thread makes into any arena without a thread claims that arena, as an adoption or the
 * orphan purge does, takes in what is on its lists (this thread's frees and anyone else's), and
 * gives it back: a run emptied so retires (unless it is the arena's current one) and its slot
 * can be lent to an arena that allocates (small.c). It runs no purge inside the free: what
 * passes the budget is marked, for the purger thread or, without one, the orphan purge, made
 * due at once (below), and the rest goes back a decay time on (the
 * push that counted told the orphan purge: notice_if_ownerless). A step taken on an arena not
 * its own: not while a fork is under way (dirty.c, ta_fork_hold). */
static __thread uint8_t tl_drain_count __attribute__((tls_model("initial-exec")));
_Static_assert(TA_DRAIN_EVERY >= 1 && TA_DRAIN_EVERY <= 255, "the count is a byte");

static TA_NOINLINE void drain_ownerless(ta_arena_t *a, unsigned n) {
  ta_arena_want(a, n);
  if (tl_drain_count + n < TA_DRAIN_EVERY) {
    tl_drain_count = (uint8_t)(tl_drain_count + n);
    return;
  }
  tl_drain_count = 0;
  if (!ta_fork_hold()) return;
  if (ta_arena_try_claim(a)) { /* else adopted, or another thread's purge or drain */
    ta_remote_collect(a);
    orphan_due_if_over(a);
    ta_arena_give_back(a);
  }
  ta_fork_unhold();
}

/* An ownerless arena drains when someone notices: the orphan purge (purge.c), and every
 * TA_DRAIN_EVERY-th block pushed into a FREE one (drain_ownerless; n: the blocks this push
 * brought, a chain's whole length: its owner may have lost its thread since it began). The
 * state shares the cache line the caller's CAS just took. */
static void notice_if_ownerless(ta_arena_t *owner, unsigned n) {
  int st = atomic_load_explicit(&owner->state, memory_order_seq_cst);
  if (TA_UNLIKELY(st != ARENA_CLAIMED)) {
    ta_note_orphan_work();
    if (st == ARENA_FREE) drain_ownerless(owner, n);
  }
}

/* Pushes the chain first..last (linked through their encoded links) onto owner's remote list
 * i with one compare-exchange, then tells the orphan purge if the owner is gone. */
static void remote_push_chain(ta_arena_t *owner, unsigned i, ta_block_t *first, ta_block_t *last,
                              unsigned n) {
  _Atomic(ta_block_t *) *list = &owner->remote[i];
  ta_block_t *head = atomic_load_explicit(list, memory_order_relaxed);
  do {
    last->link = ta_link_enc(head);
  } while (!atomic_compare_exchange_weak_explicit(list, &head, first, memory_order_seq_cst,
                                                  memory_order_relaxed));
  notice_if_ownerless(owner, n);
}

/* Takes each non-empty remote list of a whole, with an acquire exchange (an empty one is
 * only read): lists[i] is list i's chain, or NULL. Returns how many were taken. */
unsigned ta_remote_take_all(ta_arena_t *a, ta_block_t *lists[TA_REMOTE_LISTS]) {
  unsigned n = 0;
  for (unsigned i = 0; i < TA_REMOTE_LISTS; i++) {
    lists[i] = NULL;
    if (atomic_load_explicit(&a->remote[i], memory_order_relaxed) != NULL &&
        (lists[i] = atomic_exchange_explicit(&a->remote[i], NULL, memory_order_acquire)))
      n++;
  }
  return n;
}

/* Each thread takes the lists in turn, so that even the frees of a single thread spread
 * evenly over them (see ta_remote_collect_slow for why). */
static unsigned next_list(void) {
  unsigned i = tl_remote_list;
  tl_remote_list = (uint8_t)(i + 1 == TA_REMOTE_LISTS ? 0 : i + 1);
  return i;
}

void ta_remote_push(ta_arena_t *owner, ta_block_t *b) {
  remote_push_chain(owner, next_list(), b, b, 1);
}

/* ------------------------------------------------------------------ remote frees put off */

/* A thread's remote frees of small blocks are gathered, one owner at a time, into a chain of
 * its own (linked as a list is, the first one freed holding the list's end), which goes onto
 * the owner's lists with one compare-and-swap: when it holds TA_DEFER_MAX blocks, when the
 * thread frees a block of another arena, at the thread's next slow path of malloc that takes
 * in remote frees (collect, alloc.c), at its claim of an arena (ta_arena_get_slow), at its exit
 * (the exit hook, alloc.c) and at malloc_trim. One
 * push per block made every freer and the owner's drain take the line of the owner's lists in turn:
 * in a producer-consumer program, the compare-and-swap held three quarters of the push's samples
 * (docs/design.md, "Remote frees put off"). A chain waits for its thread: at most
 * TA_DEFER_MAX - 1 blocks per thread are held back from their owner, counted in use meanwhile,
 * as blocks on a remote list are. Every block of a chain is marked free and holds a link that
 * decodes to a block of ours or to a list's end, so that a second free of it, by any thread,
 * is reported at once (free_to_owner's rule, and the owner's in ta_small_freed). Only to an
 * arena that has a thread (one without is drained by the frees into it: drain_ownerless), in a
 * thread whose exit hook will hand the chain on (a thread without an arena registers it here,
 * with the sentinel for its arena), and not in the hardened build. Like the fast paths, the
 * chain is the thread's own: a signal handler's call cut into another free of the same thread
 * may lose a block to reuse (flush_slow finds no chain twice), not push one twice. */
static __thread ta_arena_t *tl_defer_owner __attribute__((tls_model("initial-exec")));
static __thread ta_block_t *tl_defer_first __attribute__((tls_model("initial-exec")));
static __thread ta_block_t *tl_defer_last __attribute__((tls_model("initial-exec")));
static __thread unsigned tl_defer_n __attribute__((tls_model("initial-exec")));

/* Whether this thread's exit hook will run: registered now for a thread without an arena.
 * glibc's pthread_setspecific allocates for a key past the first 32 (PTHREAD_KEY_2NDLEVEL_SIZE),
 * which a free must not do: past them such a thread pushes each block. */
static bool defer_hook(void) {
  if (tl_hooked) return true;
  if (ta_tl_arena != &ta_sentinel_arena || tl_state != TL_NEW ||
      atomic_load_explicit(&exit_key_state, memory_order_acquire) != 2 || exit_key >= 32)
    return false;
  tl_hooked = pthread_setspecific(exit_key, &ta_sentinel_arena) == 0;
  return tl_hooked;
}

static void flush_slow(void) {
  ta_arena_t *owner = tl_defer_owner;
  unsigned n = tl_defer_n;
  tl_defer_owner = NULL; /* detached before the push */
  tl_defer_n = 0;
  if (owner == NULL) return; /* a signal handler's call sent it on meanwhile */
  remote_push_chain(owner, next_list(), tl_defer_first, tl_defer_last, n);
}

void ta_remote_flush(void) {
  if (tl_defer_owner != NULL) flush_slow();
}

/* The link is written before the mark (`mark`, which free_to_owner computed), and the mark
 * with a release store: another thread that finds the mark (free_to_owner's acquire load)
 * finds the link too, and reports its second free at once, never as a mere suspicion that
 * the owner, finding the block on none of its lists, would settle by freeing it. */
void ta_remote_defer(ta_arena_t *owner, ta_block_t *b, uintptr_t mark) {
  if (TA_LIKELY(owner == tl_defer_owner)) {
    b->link = ta_link_enc(tl_defer_first);
    __atomic_store_n(&b->key, mark, __ATOMIC_RELEASE);
    tl_defer_first = b;
    if (++tl_defer_n >= TA_DEFER_MAX) flush_slow();
    return;
  }
  ta_remote_flush();
  if (ta_secure || tl_state == TL_EXITED ||
      atomic_load_explicit(&owner->state, memory_order_relaxed) != ARENA_CLAIMED || !defer_hook()) {
    b->key = mark;
    return ta_remote_push(owner, b);
  }
  b->link = ta_link_enc(NULL);
  __atomic_store_n(&b->key, mark, __ATOMIC_RELEASE);
  tl_defer_first = tl_defer_last = b;
  tl_defer_n = 1;
  tl_defer_owner = owner;
}

/* A free by another thread of a block whose mark says "already free". Only the owner can
 * tell (it alone reads its lists), so the pointer waits in one of the owner's suspect
 * slots, untouched, until the owner's next slow path confirms it: a double free is then
 * reported, and a block that only held bytes equal to its mark is freed. A program that
 * is correct never writes its block's mark (it cannot read the key), so the slots are
 * almost always empty; should all be taken, the freeing thread waits for the owner. */
void ta_remote_suspect(ta_arena_t *owner, void *p) {
  /* A zombie (fork child) never confirms, and its blocks keep their marks for good: one
   * that looks free there was freed into it before. */
  if (atomic_load_explicit(&owner->state, memory_order_relaxed) == ARENA_ZOMBIE)
    ta_fatal("free(): double free of pointer", p);
  for (unsigned spins = 0;; spins++) {
    for (unsigned i = 0; i < TA_SUSPECTS; i++) {
      void *expected = NULL;
      if (atomic_load_explicit(&owner->suspects[i], memory_order_relaxed) == NULL &&
          atomic_compare_exchange_strong_explicit(&owner->suspects[i], &expected, p,
                                                  memory_order_release, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&owner->suspected, 1, memory_order_seq_cst);
        notice_if_ownerless(owner, 1);
        return;
      }
    }
    /* Every slot is taken: with the owner gone or a fork child's zombie, nobody may
     * confirm soon; a bounded wait, then the verdict of the mark. */
    if (spins > 1000) ta_fatal("free(): double free of pointer", p);
    sched_yield();
  }
}

/* Every block on a remote list was checked by its freer, but the list lives in freed
 * memory: each entry is checked again, through the map first, before anything is read from
 * it. Its kind (SMALL or MEDIUM) if it is a block of a's, else TA_MAP_NONE. */
static inline uint8_t remote_entry(ta_arena_t *a, ta_block_t *b) {
  uint8_t kind = ta_map_get((uintptr_t)b);
  if (kind == TA_MAP_SMALL) {
    ta_run_t *r = ta_run_of(b);
    if (r->owner == a && ta_small_valid(r, b) && b->key == ta_mark(b)) return kind;
  } else if (kind == TA_MAP_MEDIUM && ta_chunk_of(b)->owner == a) {
    ta_mhdr_t *h = (ta_mhdr_t *)b - 1;
    /* Its header and link must lie in the chunk, in pages committed (lazy commit). */
    uintptr_t off = (uintptr_t)b & TA_CHUNK_MASK;
    if (!((uintptr_t)b & (TA_ALIGNMENT - 1)) && off >= TA_MEDIUM_HDR + sizeof(ta_mhdr_t) &&
        off < TA_MEDIUM_END &&
        ta_chunk_holds(ta_chunk_of(b), off - sizeof(ta_mhdr_t), off + sizeof(ta_mhdr_t)) &&
        ta_medium_check_ok(h) && ta_medium_live(ta_mh_load(h)))
      return kind;
  }
  return TA_MAP_NONE;
}
uint8_t ta_remote_entry(ta_arena_t *a, ta_block_t *b) { return remote_entry(a, b); }

static uint8_t remote_check(ta_arena_t *a, ta_block_t *b) {
  uint8_t kind = remote_entry(a, b); /* inline: the drain's loop runs it for every block */
  if (kind == TA_MAP_NONE) ta_fatal("free(): corrupted list of remote frees at", b);
  return kind;
}

/* `medium` blocks counted in remote_medium were taken in. A block pushed after the lists
 * were taken, and counted before this, keeps the count above none: its free saw blocks
 * waiting and noted no visit (alloc.c, free_medium_remote), so the visit is noted here. */
static void mail_taken(ta_arena_t *a, int64_t medium) {
  if (atomic_fetch_sub_explicit(&a->remote_medium, medium, memory_order_seq_cst) > medium)
    ta_purge_note_global(&ta_arenas_due, ta_mail_due(ta_os_now_ms()));
}

/* Takes in one remote free and returns the next on the list (the caller counts it). */
static ta_block_t *remote_take(ta_arena_t *a, ta_block_t *b, int64_t *medium) {
  uint8_t kind = remote_check(a, b);
  ta_block_t *next = ta_block_next(b); /* before the free rewrites the link */
  if (kind == TA_MAP_SMALL) {
    ta_run_push(a, ta_run_of(b), b); /* its mark, checked, stays */
  } else {
    ta_medium_free_local(a, (ta_mhdr_t *)b - 1);
    ++*medium;
  }
  return next;
}

/* The background purger, holding the slow-path lock of an arena whose owner lives (and may
 * be idle for good), when remote_medium says medium blocks wait: takes in the medium blocks
 * other threads freed into it, so that their memory merges and can go back, and puts the
 * small ones back on the list, since their runs' lists are the owner's fast paths' alone.
 * The owner's verdicts on a block whose mark says "free" (ta_small_freed, ta_medium_freed)
 * take the lock, so they wait while the list is held here. The owner's free counter is its own too:
 * these frees are counted apart (drained). */
void ta_remote_collect_medium(ta_arena_t *a) {
  int64_t hint = atomic_load_explicit(&a->remote_medium, memory_order_relaxed);
  /* The small blocks go back as they came, a chain per list, so that the owner's drain
   * still walks them side by side. */
  ta_block_t *lists[TA_REMOTE_LISTS], *small[TA_REMOTE_LISTS] = {NULL};
  ta_block_t *last[TA_REMOTE_LISTS] = {NULL};
  int64_t medium = 0;
  ta_remote_take_all(a, lists);
  for (unsigned i = 0; i < TA_REMOTE_LISTS; i++) {
    for (ta_block_t *b = lists[i]; b;) {
      uint8_t kind = remote_check(a, b);
      ta_block_t *next = ta_block_next(b);
      if (kind == TA_MAP_SMALL) {
        b->link = ta_link_enc(small[i]);
        if (small[i] == NULL) last[i] = b;
        small[i] = b;
      } else {
        TA_ADD(a->cnt.drained, 1);
        TA_ADD(a->cnt.remote_frees, 1);
        ta_medium_free_local(a, (ta_mhdr_t *)b - 1);
        medium++;
      }
      b = next;
    }
  }
  if (medium) mail_taken(a, medium);
  /* None there (another taker did not count, or a free went to a suspect slot): clear the
   * hint, unless a free has raised it meanwhile. */
  else atomic_compare_exchange_strong_explicit(&a->remote_medium, &hint, 0, memory_order_relaxed,
                                               memory_order_relaxed);
  /* Back on their lists; an orphan purge may have given the arena back meanwhile, having
   * seen the lists empty: it is told. */
  for (unsigned i = 0; i < TA_REMOTE_LISTS; i++)
    if (small[i]) remote_push_chain(a, i, small[i], last[i], 1);
}

/* A suspected double free, after the remote lists were drained: a block still in use is
 * freed; one already free (on its run's list, merged, or its memory gone) is reported. */
static void confirm_suspect(ta_arena_t *a, void *p) {
  uint8_t kind = ta_map_get((uintptr_t)p);
  if (kind == TA_MAP_SMALL) {
    ta_run_t *r = ta_run_of(p);
    if (r->owner != a || !ta_small_valid(r, p)) ta_fatal("free(): double free of pointer", p);
    bool marked = ((ta_block_t *)p)->key == ta_mark(p); /* read once p is known a block */
    if (marked ? ta_small_marked_free(r, p) : ta_small_on_free_list(r, p))
      ta_fatal("free(): double free of pointer", p);
    /* Kept in use, as the owner's free keeps it (alloc.c, free_small_suspect). */
    if (marked) return;
    TA_ADD(a->cnt.frees, 1);
    TA_ADD(a->cnt.remote_frees, 1);
    ta_small_free_local(a, r, p);
    return;
  }
  ta_mhdr_t *h = (ta_mhdr_t *)p - 1;
  if (kind != TA_MAP_MEDIUM || ta_chunk_of(p)->owner != a || !ta_medium_check_ok(h) ||
      !ta_medium_live(ta_mh_load(h)))
    ta_fatal("free(): double free of pointer", p);
  TA_ADD(a->cnt.frees, 1);
  TA_ADD(a->cnt.remote_frees, 1);
  ta_medium_free_local(a, h);
}

/* Takes in every remote list. The blocks were last written by the freeing threads, on other
 * CPUs: each is a cache miss, and a list is a chain of them, each load waiting for the one
 * before. With one list, the owner's drain spent 91% of its time waiting on each block's
 * first load (perf, producer/consumer with 64 threads); walked side by side, one block of
 * each list in turn, the lists keep as many misses in flight, and the whole workload took
 * 13-30% less wall time at 2 to 64 threads (bench/run's prodcons). */
void ta_remote_collect_slow(ta_arena_t *a) {
  ta_slow_enter(a);
  ta_block_t *lists[TA_REMOTE_LISTS];
  unsigned n = ta_remote_take_all(a, lists);
  int64_t medium = 0;
  if (n) a->collects++;
  while (n > 0) {
    /* A pass takes one block of each of the n lists left. Counted before they are pushed:
     * a statistics reader, which derives mallocs from frees and the blocks in use, reads
     * them at most n high during a drain, never low. */
    TA_ADD(a->cnt.frees, n);
    TA_ADD(a->cnt.remote_frees, n);
    for (unsigned i = 0; i < TA_REMOTE_LISTS; i++)
      if (lists[i] && (lists[i] = remote_take(a, lists[i], &medium)) == NULL) n--;
  }
  if (medium) mail_taken(a, medium);
  /* Suspects after the drain: a block freed once remotely and once more is on its run's
   * list by now. */
  if (atomic_exchange_explicit(&a->suspected, 0, memory_order_acquire) != 0) {
    for (unsigned i = 0; i < TA_SUSPECTS; i++) {
      void *p = atomic_exchange_explicit(&a->suspects[i], NULL, memory_order_acquire);
      if (p) confirm_suspect(a, p);
    }
  }
  ta_slow_leave(a);
}

/* The arenas in a fork child (the API layer's child handler, alloc.c, calls this once every
 * other layer is repaired). */
void ta_arena_fork_child(void) {
  if (atomic_load(&exit_key_state) == 1) atomic_store(&exit_key_state, 0);
  /* Another thread of the parent was starting the allocator: it does not exist here, and the
   * child starts it again (nothing was published; each step can be done twice). This
   * thread's own start, cut by a fork from a signal handler, is its own to finish. */
  if (!__atomic_load_n(&ta_initialized, __ATOMIC_ACQUIRE) && !tl_initialising)
    atomic_store(&ta_init_claimed, 0);
  ta_arena_t *mine = ta_tl_arena, *aside = tl_suspended;
  uint64_t now = ta_os_now_ms();
  bool orphans = false;
  for (ta_arena_t *a = atomic_load(&all_arenas); a; a = a->next_all) {
    if (a == mine) {
      if (ta_slow_held(a)) {
        /* A signal handler forked inside one of our calls: the arena is set aside until
         * that call ends (arena_claim, thread_exit); meanwhile this thread gets another.
         * One set aside already (its call not ended yet) stays so; this one is given up,
         * and so is one the background purger held (it does not exist here). */
        if (aside == NULL && ta_slow_held_by_me(a)) {
          atomic_store(&a->state, ARENA_SUSPENDED);
          tl_suspended = a;
        } else {
          atomic_store(&a->state, ARENA_ZOMBIE);
        }
        ta_tl_arena = &ta_sentinel_arena;
        tl_state = TL_NEW;
        /* The hook stays, for the thread's chain of remote frees put off (and the arena set
         * aside): the sentinel stands for an arena, as for a thread that never had one. */
        tl_hooked = atomic_load(&exit_key_state) == 2 &&
                    pthread_setspecific(exit_key, &ta_sentinel_arena) == 0;
      } else {
        atomic_store(&a->owner_tid, ta_os_gettid()); /* our thread id in the child */
        if ((atomic_load(&a->owner_tag) & TAG_ID_MASK) != 0) arena_set_owner(a, ta_os_gettid());
      }
      continue;
    }
    if (a == aside) continue; /* still ours: the interrupted call may yet end */
    int st = atomic_load(&a->state);
    if (st == ARENA_FREE && ta_slow_held(a)) {
      /* Its owner gave it up while the purger held it, and the purger does not exist
       * here: the lock would never be released, and the lists may be half changed. */
      atomic_store(&a->state, ARENA_ZOMBIE);
      continue;
    }
    if (st == ARENA_FREE) {
      ta_dirty_forget_demand(a); /* kept for a parent thread: none here */
      ta_light_forbid(a);        /* which ran its last light section in the parent */
    }
    if (st != ARENA_CLAIMED && st != ARENA_SUSPENDED) continue; /* FREE or ZOMBIE already */
    /* Its thread does not exist here. */
    atomic_store(&a->owner_tag, tag_next(atomic_load(&a->owner_tag), 0, 0));
    if (ta_slow_held(a)) {
      atomic_store(&a->state, ARENA_ZOMBIE);
    } else {
      ta_dirty_forget_demand(a);
      ta_light_forbid(a);
      /* One of its thread's pops may have been cut in two: only in a current run. */
      for (unsigned c = 0; c <= TA_NUM_RUN; c++)
        if (a->cur[c] != &ta_empty_run) ta_run_pair(a->cur[c])->fork_cut = true;
      a->released_ms = now;
      atomic_store(&a->state, ARENA_FREE);
    }
    orphans = true;
  }
  /* The lenders of run slots: the resident free slots of the arenas that can still lend them
   * (a zombie keeps its chunks for good). warm_total summed them before the fork, those of
   * the arenas this child has just made zombies included, and with a count that never falls
   * to zero each new run that finds no resident slot of its own would search the list of
   * arenas with resident slots for slots no arena lends. */
  uint32_t warm = 0;
  for (ta_arena_t *a = atomic_load(&all_arenas); a; a = a->next_all)
    if (atomic_load(&a->state) != ARENA_ZOMBIE) warm += atomic_load(&a->slots_warm);
  ta_small_after_fork(warm);
  /* Ownerless arenas are purged after the decay time, and what is freed into zombies is
   * counted (purge.c). */
  if (orphans) ta_note_orphan_work();
}

/* Whether the arena's owner has an exit hook, so that its exit is seen (the background
 * thread counts only such owners: one without a hook may have exited long ago). */
bool ta_arena_owner_hooked(const ta_arena_t *a) {
  return (atomic_load_explicit(&a->owner_tag, memory_order_relaxed) & TAG_ID_MASK) == 0;
}

/* For statistics and tests: calls fn on every arena ever made. */
void ta_arena_foreach(void (*fn)(ta_arena_t *a, void *arg), void *arg) {
  for (ta_arena_t *a = atomic_load_explicit(&all_arenas, memory_order_acquire); a;
       a = a->next_all)
    fn(a, arg);
}
