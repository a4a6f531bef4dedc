/*
 * arena.c — who owns what: arenas, threads, remote frees, thread exit and fork.
 *
 * Every arena ever made is on one push-only list (all_arenas) and never unmapped; its
 * `state` says whether a thread owns it. A thread without an arena points at the sentinel
 * arena, whose runs are all empty, so its first malloc lands in the slow path, which
 * claims a FREE arena with one CAS or maps a new one. No global lock is involved.
 *
 * Thread exit: a pthread key destructor drains the arena's remote list and sets it FREE;
 * the next thread that needs an arena adopts it with its blocks and lists as they are.
 * Blocks of the arena still live in other threads keep arriving through `remote`. A
 * thread that allocates after its destructor ran (another library's TLS destructor)
 * borrows an arena for that one call and gives it back at once.
 *
 * Remote frees: another thread pushes the block onto owner.remote with a CAS; only the
 * owner takes blocks off, all at once with an exchange, so there is no ABA problem.
 *
 * fork: no allocator lock is held across fork (there is no prepare handler), so fork can
 * never deadlock against glibc's own locks. In the child, the break lock is reset and
 * every arena owned by another thread becomes adoptable — unless its owner was inside a
 * slow path (in_slow), whose half-done list surgery the child must not trust: such an
 * arena becomes a ZOMBIE, never used again. The forking thread keeps its own arena on the
 * same condition (a fork from a signal handler may have interrupted it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>

#include "internal.h"

__thread ta_arena_t *ta_tl_arena __attribute__((tls_model("initial-exec"))) = &ta_sentinel_arena;
enum { TL_NEW = 0, TL_OWNER = 1, TL_EXITED = 2 };
static __thread uint8_t tl_state __attribute__((tls_model("initial-exec")));

ta_run_t ta_empty_run; /* free == NULL, owner == NULL: never matches a block */

#define EMPTY4 &ta_empty_run, &ta_empty_run, &ta_empty_run, &ta_empty_run
ta_arena_t ta_sentinel_arena = {
    .cur = {EMPTY4, EMPTY4, EMPTY4, EMPTY4, EMPTY4, EMPTY4, EMPTY4, EMPTY4, EMPTY4, EMPTY4,
            EMPTY4, EMPTY4, EMPTY4, EMPTY4, &ta_empty_run},
    .state = ARENA_ZOMBIE,
};
_Static_assert(TA_NUM_SMALL + 1 == 57, "sentinel initialiser covers every class");

uintptr_t ta_secret;
bool ta_initialized;
static _Atomic(ta_arena_t *) all_arenas;
static _Atomic uint32_t arena_count;
static pthread_key_t exit_key;
static _Atomic int exit_key_state; /* 0 none, 1 creating, 2 ready, 3 failed */
static _Atomic int atfork_state;

static void fork_child(void);

/* One thread initialises: it writes the secret once, then publishes with a release store;
 * any other thread arriving meanwhile waits the few microseconds that takes. */
void ta_init(void) {
  if (TA_LIKELY(__atomic_load_n(&ta_initialized, __ATOMIC_ACQUIRE))) return;
  static _Atomic int claimed;
  int expected = 0;
  if (atomic_compare_exchange_strong(&claimed, &expected, 1)) {
    ta_conf_init();
    ta_secret = ta_os_random();
    __atomic_store_n(&ta_initialized, true, __ATOMIC_RELEASE);
    return;
  }
  while (!__atomic_load_n(&ta_initialized, __ATOMIC_ACQUIRE)) sched_yield();
}

static void arena_init(ta_arena_t *a) {
  for (unsigned c = 0; c <= TA_NUM_SMALL; c++) a->cur[c] = &ta_empty_run;
  /* Everything else starts zeroed (fresh mapping). */
}

static ta_arena_t *arena_claim(void) {
  for (ta_arena_t *a = atomic_load_explicit(&all_arenas, memory_order_acquire); a;
       a = a->next_all)
    if (ta_arena_try_claim(a)) {
      TA_ADD(a->cnt.adopted, 1);
      return a;
    }
  ta_arena_t *a = ta_os_mmap(ta_align_up(sizeof(ta_arena_t), TA_PAGE_SIZE));
  if (a == NULL) return NULL;
  arena_init(a);
  a->id = atomic_fetch_add(&arena_count, 1);
  atomic_store_explicit(&a->state, ARENA_CLAIMED, memory_order_relaxed);
  ta_arena_t *head = atomic_load_explicit(&all_arenas, memory_order_relaxed);
  do {
    a->next_all = head;
  } while (!atomic_compare_exchange_weak_explicit(&all_arenas, &head, a, memory_order_release,
                                                  memory_order_relaxed));
  return a;
}

bool ta_arena_try_claim(ta_arena_t *a) {
  int expected = ARENA_FREE;
  return atomic_load_explicit(&a->state, memory_order_relaxed) == ARENA_FREE &&
         atomic_compare_exchange_strong_explicit(&a->state, &expected, ARENA_CLAIMED,
                                                 memory_order_acquire, memory_order_relaxed);
}

ta_arena_t *ta_arena_first(void) { return atomic_load_explicit(&all_arenas, memory_order_acquire); }

/* Gives the arena up (thread exit, or the end of a borrowed call): what is free in it goes
 * back to the kernel once it has been ownerless for the decay time (purge.c). */
void ta_arena_release(ta_arena_t *a) {
  if (atomic_load_explicit(&a->remote, memory_order_relaxed)) {
    ta_slow_enter(a);
    ta_remote_drain(a);
    ta_slow_leave(a);
  }
  a->released_ms = ta_os_now_ms();
  atomic_store_explicit(&a->state, ARENA_FREE, memory_order_release);
  ta_note_orphan_work();
}

static void thread_exit(void *p) {
  ta_arena_t *a = p;
  if (ta_tl_arena == a) ta_tl_arena = &ta_sentinel_arena;
  tl_state = TL_EXITED;
  /* Only an arena this thread still owns (not one a fork child made a zombie). */
  if (atomic_load_explicit(&a->state, memory_order_relaxed) == ARENA_CLAIMED) ta_arena_release(a);
}

/* Registration that may itself call malloc: done once the thread has its arena, so a
 * nested malloc simply takes the fast path. pthread_key_create and pthread_setspecific do
 * not allocate for the first 32 keys in glibc; pthread_atfork may. */
static void register_thread(ta_arena_t *a) {
  int st = atomic_load_explicit(&exit_key_state, memory_order_acquire);
  if (st == 0) {
    int expected = 0;
    if (atomic_compare_exchange_strong(&exit_key_state, &expected, 1)) {
      st = pthread_key_create(&exit_key, thread_exit) == 0 ? 2 : 3;
      atomic_store_explicit(&exit_key_state, st, memory_order_release);
    }
  }
  while ((st = atomic_load_explicit(&exit_key_state, memory_order_acquire)) == 1) {
  }
  if (st == 2) pthread_setspecific(exit_key, a);
  int expected = 0;
  if (atomic_load_explicit(&atfork_state, memory_order_relaxed) == 0 &&
      atomic_compare_exchange_strong(&atfork_state, &expected, 1))
    pthread_atfork(NULL, NULL, fork_child);
}

ta_arena_t *ta_arena_get_slow(bool *borrowed) {
  ta_init();
  *borrowed = false;
  ta_arena_t *a = ta_tl_arena;
  if (a != &ta_sentinel_arena) return a;
  a = arena_claim();
  if (a == NULL) return NULL;
  if (atomic_load_explicit(&a->remote, memory_order_relaxed)) {
    /* An adopted arena: take in what other threads freed while it had no owner. */
    ta_slow_enter(a);
    ta_remote_drain(a);
    ta_slow_leave(a);
  }
  if (tl_state == TL_EXITED) {
    *borrowed = true; /* past this thread's clean-up: use it for one call only */
    return a;
  }
  ta_tl_arena = a;
  tl_state = TL_OWNER;
  register_thread(a);
  return a;
}

void ta_arena_borrow_done(ta_arena_t *a) { ta_arena_release(a); }

void ta_remote_push(ta_arena_t *owner, ta_block_t *b) {
  ta_block_t *head = atomic_load_explicit(&owner->remote, memory_order_relaxed);
  do {
    b->next = head;
  } while (!atomic_compare_exchange_weak_explicit(&owner->remote, &head, b, memory_order_release,
                                                  memory_order_relaxed));
  /* An ownerless arena drains only when someone notices (purge.c). The state shares the
   * cache line the CAS just took. */
  if (TA_UNLIKELY(atomic_load_explicit(&owner->state, memory_order_relaxed) != ARENA_CLAIMED))
    ta_note_orphan_work();
}

void ta_remote_drain(ta_arena_t *a) {
  ta_block_t *b = atomic_exchange_explicit(&a->remote, NULL, memory_order_acquire);
  while (b) {
    ta_block_t *next = b->next;
    TA_ADD(a->cnt.frees, 1);
    TA_ADD(a->cnt.remote_frees, 1);
    if (ta_map_get((uintptr_t)b) == TA_MAP_SMALL) {
      ta_small_free_local(a, ta_run_of(b), b);
    } else {
      ta_mhdr_t *h = (ta_mhdr_t *)b - 1;
      if (h->check != ((uintptr_t)h ^ ta_secret) || !(h->size_flags & TA_M_INUSE))
        ta_fatal("free(): double free of pointer", b);
      ta_medium_free_local(a, h);
    }
    b = next;
  }
}

static void fork_child(void) {
  ta_brk_reset_after_fork();
  ta_stats_reset_after_fork(); /* readers, the log, and the huge cache's tallies */
  if (atomic_load(&exit_key_state) == 1) atomic_store(&exit_key_state, 0);
  ta_arena_t *mine = ta_tl_arena;
  for (ta_arena_t *a = atomic_load(&all_arenas); a; a = a->next_all) {
    if (a == mine) {
      if (a->in_slow) {
        atomic_store(&a->state, ARENA_ZOMBIE);
        ta_tl_arena = &ta_sentinel_arena;
        tl_state = TL_NEW;
        if (atomic_load(&exit_key_state) == 2) pthread_setspecific(exit_key, NULL);
      }
      continue;
    }
    if (atomic_load(&a->state) == ARENA_CLAIMED)
      atomic_store(&a->state, a->in_slow ? ARENA_ZOMBIE : ARENA_FREE);
  }
}

/* For statistics and tests: calls fn on every arena ever made. */
void ta_arena_foreach(void (*fn)(ta_arena_t *a, void *arg), void *arg) {
  for (ta_arena_t *a = atomic_load_explicit(&all_arenas, memory_order_acquire); a;
       a = a->next_all)
    fn(a, arg);
}
