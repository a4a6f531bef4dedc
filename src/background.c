/*
 * background.c — a thread that gives memory back while the program does not call the
 * allocator.
 *
 * Without it, purging runs on the slow paths of threads that allocate: the arenas of
 * exited threads and the spans in the huge cache stay resident until some thread happens
 * to take a slow path after their decay time. This thread does that work on time:
 *   - it is started lazily, by a thread that exits (so the process has had at least two
 *     threads) and leaves something to purge: a single-threaded program never has one, and
 *     keeps glibc's single-thread shortcuts;
 *   - it is started from the thread-exit destructor only, where no arena is half changed
 *     and no allocator or libc lock is held, never from inside malloc or free;
 *   - it sleeps on a futex until the earliest due time, and with nothing pending until a
 *     thread notes new work (ta_bg_wake, called when a due time goes from none to some);
 *   - it touches only memory that no thread owns: arenas without an owner (claimed one at
 *     a time, as any thread's orphan purge does) and the huge cache. It allocates nothing;
 *   - a fork child has no such thread: its state is reset and it starts again lazily;
 *   - TAMALLOC_CONF=background_thread:false turns it off. It is on by default in the
 *     replacement library and off in the ta_ API library (tests drive purges themselves).
 *
 * Calls down only: purge.c and huge.c for the work, os.c for the thread and the futex.
 */
#include "internal.h"

TA_HIDDEN extern const bool ta_bg_default; /* alloc.c: true in the replacement library */
int ta_bg_setting = -1;                     /* background_thread: -1 unset, 0 off, 1 on */

enum { BG_NONE = 0, BG_STARTING = 1, BG_RUNNING = 2, BG_FAILED = 3 };
static _Atomic int bg_state;
static _Atomic uint32_t bg_seq;     /* futex word: bumped by every wake */
static _Atomic int bg_sleeping;     /* 1 while waiting without a due time */
static _Atomic uint64_t bg_rounds;  /* purge rounds done (tests and statistics) */

/* The earliest due time of work the thread may do, or 0. */
static uint64_t next_due(void) {
  uint64_t o = atomic_load_explicit(&ta_orphan_due, memory_order_seq_cst);
  uint64_t h = atomic_load_explicit(&ta_huge_due, memory_order_seq_cst);
  if (o == 0) return h;
  if (h == 0) return o;
  return o < h ? o : h;
}

static void *bg_main(void *arg) {
  (void)arg;
  for (;;) {
    uint64_t now = ta_os_now_ms(), due = next_due();
    if (due != 0 && now >= due) {
      uint64_t odue = atomic_load_explicit(&ta_orphan_due, memory_order_relaxed);
      uint64_t hdue = atomic_load_explicit(&ta_huge_due, memory_order_relaxed);
      if (odue && now >= odue) ta_purge_orphans(now, false);
      if (hdue && now >= hdue) ta_huge_purge(now, false);
      atomic_fetch_add_explicit(&bg_rounds, 1, memory_order_relaxed);
      continue;
    }
    uint32_t seq = atomic_load_explicit(&bg_seq, memory_order_seq_cst);
    if (due == 0) {
      /* Announce the sleep, then look once more: a thread that notes work after this
       * sees bg_sleeping and wakes us; one that noted it before is seen here. */
      atomic_store_explicit(&bg_sleeping, 1, memory_order_seq_cst);
      if (next_due() == 0) ta_os_futex_wait(&bg_seq, seq, 0);
      atomic_store_explicit(&bg_sleeping, 0, memory_order_relaxed);
    } else {
      ta_os_futex_wait(&bg_seq, seq, due - now);
    }
  }
  return NULL;
}

/* At thread exit: start the thread if there is work and it is not running yet. */
void ta_bg_maybe_start(void) {
  if (atomic_load_explicit(&bg_state, memory_order_relaxed) != BG_NONE) return;
  if (ta_bg_setting < 0 ? !ta_bg_default : ta_bg_setting == 0) return;
  if (next_due() == 0) return;
  int expected = BG_NONE;
  if (!atomic_compare_exchange_strong(&bg_state, &expected, BG_STARTING)) return;
  atomic_store(&bg_state, ta_os_thread_start(bg_main) == 0 ? BG_RUNNING : BG_FAILED);
}

/* A due time went from none to some: wake the thread if it sleeps without one. */
void ta_bg_wake(void) {
  if (atomic_load_explicit(&bg_sleeping, memory_order_seq_cst) == 0) return;
  atomic_fetch_add_explicit(&bg_seq, 1, memory_order_seq_cst);
  ta_os_futex_wake(&bg_seq);
}

/* Fork child: the thread did not survive the fork. */
void ta_bg_reset_after_fork(void) {
  atomic_store(&bg_state, BG_NONE);
  atomic_store(&bg_sleeping, 0);
}

bool ta_bg_running(void) { return atomic_load(&bg_state) == BG_RUNNING; }
uint64_t ta_bg_rounds(void) { return atomic_load(&bg_rounds); }
void ta_bg_enable(bool on) { ta_bg_setting = on; }
