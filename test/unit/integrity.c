/*
 * Unit tests: heap integrity. A correct program is never stopped as a "double free", and
 * the free-list metadata cannot be read back by the program or steer malloc.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "tamalloc.h"
#include "tatest.h"

struct batch {
  void **v;
  size_t n;
};

static void *free_batch(void *arg) {
  struct batch *b = arg;
  for (size_t i = 0; i < b->n; i++) ta_free(b->v[i]);
  return NULL;
}

/* Frees the blocks from a new thread: every free is a remote one. */
static void free_remotely(void **v, size_t n) {
  struct batch b = {v, n};
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, free_batch, &b), 0);
  pthread_join(t, NULL);
}

/* Fills whole runs (or medium space) of `size`, then frees it all, locally or remotely,
 * so that later blocks of other sizes reuse memory that held free blocks of this one. */
static void churn_size(size_t size, size_t count, bool remote) {
  void **v = malloc(count * sizeof *v);
  for (size_t i = 0; i < count; i++) v[i] = ta_malloc(size);
  if (remote) {
    free_remotely(v, count);
    void *drain = ta_malloc(TA_SMALL_MAX + 1); /* the owner takes in the remote frees */
    ta_free(drain);
  } else {
    for (size_t i = 0; i < count; i++) ta_free(v[i]);
  }
  free(v);
}

static const size_t sizes[] = {16, 32, 48, 64, 80, 96, 128, 160, 192, 256, 320, 512, 1024,
                               2048, 8192, 10000, 20000};
#define NSIZES (sizeof sizes / sizeof sizes[0])

/* The reported case and all like it: a fresh block's uninitialised bytes copied (a struct
 * copy with its padding: legal C) over the head of another live block, which another
 * thread then frees. Memory changes size class in between, every way round. */
Test(integrity, copies_of_fresh_bytes_freed_remotely_are_not_double_frees, .timeout = 300) {
  enum { BATCH = 8192 };
  void **victims = malloc(BATCH * sizeof *victims);
  for (size_t a = 0; a < NSIZES; a++) {
    for (size_t b = 0; b < NSIZES; b++) {
      if (b == a) continue;
      churn_size(sizes[a], 2 * TA_RUN_SIZE / sizes[a] + 4, (a + b) & 1);
      size_t n = TA_RUN_SIZE / sizes[b] + 2;
      char **fresh = malloc(n * sizeof *fresh);
      for (size_t i = 0; i < n; i++) fresh[i] = ta_malloc(sizes[b]);
      size_t nv = 0;
      for (size_t i = 0; i < n; i++) {
        size_t step = sizes[b] > 512 ? 40 : 8; /* every word of small blocks */
        for (size_t off = 0; off + 16 <= sizes[b]; off += step) {
          void *v = ta_malloc(sizes[b]);
          memcpy(v, fresh[i] + off, 16);
          victims[nv++] = v;
          if (nv == BATCH) {
            free_remotely(victims, nv);
            nv = 0;
          }
        }
      }
      free_remotely(victims, nv);
      for (size_t i = 0; i < n; i++) ta_free(fresh[i]);
      free(fresh);
      void *drain = ta_malloc(TA_SMALL_MAX + 1);
      ta_free(drain);
    }
  }
  free(victims);
}

/* No key can be read back: no fresh block, after memory changed class every way round,
 * holds the check-word secret, a mark of any address within it (a free block's word 1 left
 * behind), or a nonzero link in its first word (which would give away the link key). */
Test(integrity, fresh_blocks_never_hold_a_mark_a_link_or_the_secret, .timeout = 120) {
  for (size_t a = 0; a < NSIZES; a++) {
    for (size_t b = 0; b < NSIZES; b++) {
      if (b == a) continue;
      churn_size(sizes[a], 2 * TA_RUN_SIZE / sizes[a] + 4, (a + b) & 1);
      size_t n = TA_RUN_SIZE / sizes[b] + 2;
      uintptr_t **fresh = malloc(n * sizeof *fresh);
      for (size_t i = 0; i < n; i++) {
        uintptr_t *f = fresh[i] = ta_malloc(sizes[b]);
        size_t words = sizes[b] / sizeof(uintptr_t);
        if (sizes[b] <= TA_SMALL_MAX) cr_assert_eq(f[0], 0, "a small block's link was left");
        for (size_t w = 0; w < words; w++) {
          cr_assert_neq(f[w], ta_secret, "block of %zu after %zu: word %zu", sizes[b], sizes[a], w);
          if (w > 0)
            cr_assert_neq(f[w], ta_mark(&f[w - 1]), "block of %zu after %zu: a mark at word %zu",
                          sizes[b], sizes[a], w);
        }
      }
      for (size_t i = 0; i < n; i++) ta_free(fresh[i]);
      free(fresh);
    }
  }
}

/* A suspect waits for its owner, whose slow paths confirm it: a request its cache of medium
 * blocks serves too, in the middle of a round of chores (alloc.c, chores_sometimes). */
Test(integrity, a_medium_cache_hit_confirms_a_suspect_at_once) {
  ta_block_t *medium = ta_malloc(20000);
  char *c = ta_malloc(20000), *guard = ta_malloc(100000);
  ta_free(c);
  /* the mallocs above missed the cache: each did the chores, and a round begins */
  medium->link = 0x5eed;     /* user data: decodes to no block of ours */
  medium->key = ta_mark(medium);
  void *v[1] = {medium};
  free_remotely(v, 1);
  ta_arena_t *me = ta_tl_arena;
  cr_assert_neq(atomic_load(&me->suspected), 0, "handed over as a suspect");
  char *hit = ta_malloc(20000);
  cr_assert_eq(hit, c, "the cached block");
  cr_assert_eq(atomic_load(&me->suspected), 0, "confirmed by that very request");
  const ta_mhdr_t *mh = (const ta_mhdr_t *)((uintptr_t)medium - sizeof(ta_mhdr_t));
  cr_assert_eq(mh->size_flags & TA_M_INUSE, 0, "and freed: it was live");
  ta_free(hit);
  ta_free(guard);
}

/* A block whose own mark the program wrote into it (it cannot know the key, but say it
 * did), beside data that is no link, is a suspect, not a double free: freed by another
 * thread, it is confirmed by the owner. A small one is kept in use, as it may be a block a thread's
 * chain of remote frees holds, whose link a write after free changed (that chain will bring it
 * back: arena.c, "remote frees put off"). */
Test(integrity, remote_free_of_a_block_holding_its_mark_is_confirmed_not_reported) {
  ta_block_t *small = ta_malloc(48);
  int32_t used = RUN_USED(ta_run_of(small));
  ta_block_t *medium = ta_malloc(20000);
  small->link = medium->link = 0x5eed; /* user data: decodes to no block of ours */
  small->key = ta_mark(small);
  medium->key = ta_mark(medium);
  void *v[2] = {small, medium};
  free_remotely(v, 2);
  ta_arena_t *me = ta_tl_arena;
  cr_assert_neq(atomic_load(&me->suspected), 0, "both were handed over as suspects");
  void *drain = ta_malloc(TA_SMALL_MAX + 1); /* the owner confirms: both are live */
  cr_assert_eq(atomic_load(&me->suspected), 0);
  for (unsigned i = 0; i < TA_SUSPECTS; i++) cr_assert_null(atomic_load(&me->suspects[i]));
  cr_assert_eq(RUN_USED(ta_run_of(small)), used, "the small block is kept in use");
  cr_assert_not(ta_small_on_free_list(ta_run_of(small), small));
  ta_free(drain);
}

/* ---- free-list links overwritten after free ------------------------------------------ */

static char target[256] __attribute__((aligned(64)));

static void quiet(void) { tt_no_core(); }

Test(integrity, forged_small_link_aborts_instead_of_returning_the_address, .signal = SIGABRT,
     .init = quiet) {
  void *keep = ta_malloc(64);
  uintptr_t *a = ta_malloc(64), *b = ta_malloc(64);
  ta_free(b);
  ta_free(a); /* list: a, b, ... */
  a[0] = (uintptr_t)target; /* use after free: the link of a */
  void *x = ta_malloc(64);
  cr_assert_eq(x, a);
  void *y = ta_malloc(64);
  cr_assert_neq(y, (void *)target, "malloc returned the attacker's address");
  cr_log_error("the forged link was followed to %p", y);
  (void)keep;
}

Test(integrity, partly_overwritten_small_link_aborts, .signal = SIGABRT, .init = quiet) {
  uint8_t *a = ta_malloc(64), *b = ta_malloc(64);
  ta_free(b);
  ta_free(a);
  a[0] ^= 0x40; /* one byte of the link: the next block would be 64 bytes off */
  cr_assert_eq(ta_malloc(64), (void *)a);
  void *y = ta_malloc(64);
  cr_log_error("the damaged link was followed to %p (b was %p)", y, (void *)b);
}

Test(integrity, forged_remote_link_aborts, .signal = SIGABRT, .init = quiet) {
  uintptr_t *a = ta_malloc(64), *b = ta_malloc(64);
  void *v[2] = {b, a};
  free_remotely(v, 2); /* remote list: a, b */
  a[0] = (uintptr_t)target;
  ta_free(ta_malloc(TA_SMALL_MAX + 1)); /* the owner drains */
  cr_log_error("the forged remote link was followed");
}

Test(integrity, forged_medium_bin_link_aborts, .signal = SIGABRT, .init = quiet) {
  /* Past 64 KiB: freed into the heap's bins, not the cache in front of them. */
  void *m1 = ta_malloc(100000), *g1 = ta_malloc(100000), *m2 = ta_malloc(100000);
  void *g2 = ta_malloc(100000);
  ta_free(m1);
  ta_free(m2); /* one bin: m2, m1 */
  ((void **)m1)[0] = target; /* m1's next link */
  void *x = ta_malloc(100000), *y = ta_malloc(100000);
  cr_log_error("the forged bin link was followed (%p %p %p %p)", x, y, g1, g2);
}

Test(integrity, one_byte_overflow_into_medium_header_is_seen_by_free_of_either_block,
     .signal = SIGABRT, .init = quiet) {
  char *p = ta_malloc(20000), *q = ta_malloc(20000);
  (void)q;
  size_t us = ta_malloc_usable_size(p);
  p[us] ^= 0x20; /* the low byte of the next block's size */
  ta_free(p);
  cr_log_error("the overflow went unseen");
}

Test(integrity, one_byte_overflow_is_seen_when_the_next_block_is_freed, .signal = SIGABRT,
     .init = quiet) {
  char *p = ta_malloc(20000), *q = ta_malloc(20000);
  p[ta_malloc_usable_size(p)] ^= 0x20;
  ta_free(q);
  cr_log_error("the overflow went unseen");
}

/* ---- frees into an arena while an orphan purge holds it ----------------------------- */

static void *alloc_and_exit(void *arg) {
  void **out = arg;
  for (int i = 0; i < 64; i++) out[i] = ta_malloc(32 + (size_t)i * 8);
  return NULL;
}

static _Atomic int purging;

static void *purge_loop(void *arg) {
  (void)arg;
  while (atomic_load(&purging)) ta_purge_orphans(ta_os_now_ms(), true);
  return NULL;
}

static void check_no_stranded(ta_arena_t *a, void *arg) {
  (void)arg;
  if (atomic_load(&a->state) != ARENA_FREE) return;
  if (!ta_remote_waiting(a, memory_order_relaxed) && atomic_load(&a->suspected) == 0) return;
  cr_assert_neq(atomic_load(&ta_orphan_due), 0,
                "arena %u has frees waiting and nobody was told to take them in", a->id);
}

static ta_arena_t *arena_of_exited_thread(void **blocks) {
  pthread_t t;
  pthread_create(&t, NULL, alloc_and_exit, blocks);
  pthread_join(t, NULL);
  return ta_run_of(blocks[0])->owner;
}

/* The race, step by step: an orphan purge has claimed the arena; a block is freed into it
 * (the freer sees CLAIMED and tells nobody); the purge gives the arena back. */
Test(integrity, free_into_an_arena_held_by_an_orphan_purge_is_noted) {
  void *blocks[64];
  ta_arena_t *a = arena_of_exited_thread(blocks);
  ta_purge_orphans(ta_os_now_ms(), true);
  cr_assert_eq(atomic_load(&ta_orphan_due), 0, "nothing pending to begin with");
  cr_assert(ta_arena_try_claim(a), "the purge holds the arena");
  ta_free(blocks[0]);
  ta_remote_flush(); /* put off in this thread's chain (the arena has a thread) until now */
  cr_assert_eq(atomic_load(&ta_orphan_due), 0, "the freer saw an owner");
  ta_arena_give_back(a); /* what the purge does when it is done */
  cr_assert_neq(atomic_load(&ta_orphan_due), 0, "the free is stranded: nobody will take it in");
  ta_purge_orphans(ta_os_now_ms(), true);
  cr_assert(!ta_remote_waiting(a, memory_order_relaxed), "the next orphan purge took it in");
  for (int i = 1; i < 64; i++) ta_free(blocks[i]);
}

/* The same under real races: whatever the interleaving, no free is stranded. */
Test(integrity, frees_racing_an_orphan_purge_are_never_stranded, .timeout = 120) {
  for (int round = 0; round < 100; round++) {
    void *blocks[64];
    pthread_t t;
    pthread_create(&t, NULL, alloc_and_exit, blocks);
    pthread_join(t, NULL); /* its arena is ownerless now */
    atomic_store(&purging, 1);
    pthread_create(&t, NULL, purge_loop, NULL);
    for (int i = 0; i < 64; i++) ta_free(blocks[i]);
    atomic_store(&purging, 0);
    pthread_join(t, NULL);
    ta_arena_foreach(check_no_stranded, NULL);
    ta_purge_orphans(ta_os_now_ms(), true); /* clean slate for the next round */
  }
}

/* A block freed by its owner, then freed again by another thread, is reported at that
 * second free: before the owner can hand it out again (deferring the verdict would let the
 * owner reuse the block and a later confirmation free the new allocation). */
Test(integrity, remote_double_free_of_a_free_block_aborts_at_once, .signal = SIGABRT,
     .init = quiet) {
  void *keep = ta_malloc(64);
  void *b = ta_malloc(64);
  ta_free(b);
  void *v[1] = {b};
  free_remotely(v, 1);
  cr_log_error("the second free was not reported (%p)", keep);
}

Test(integrity, remote_double_free_of_a_medium_block_pending_remotely_aborts_at_once,
     .signal = SIGABRT, .init = quiet) {
  void *b = ta_malloc(20000);
  void *v[2] = {b, b};
  free_remotely(v, 2);
  cr_log_error("the second free was not reported");
}

/* ---- meta blocks overwritten as a whole ---------------------------------------------- */

/* A 16-byte underflow can rewrite a medium header whole, size and check word. With the
 * size XORed into the check, the check could be fixed up by the known difference of two
 * sizes; with the secret multiplier, that difference is unknown. */
Test(integrity, medium_check_cannot_be_fixed_up_by_a_known_difference) {
  char *p = ta_malloc(20000);
  ta_mhdr_t *h = (ta_mhdr_t *)tt_opaque_ptr(p) - 1;
  size_t sf = ta_mh_load(h);
  for (size_t delta = 16; delta < ((size_t)1 << 20); delta <<= 1) {
    size_t forged = sf ^ delta;
    cr_assert_neq(ta_medium_check(h, sf) ^ ta_medium_check(h, forged), delta,
                  "the check word changes by the known difference %zu", delta);
  }
  ta_free(p);
}

/* A huge block whose mapping size is forged: free must not unmap (or cache) memory that is
 * not the block's. */
Test(integrity, forged_huge_mapping_size_is_seen, .signal = SIGABRT, .init = quiet) {
  char *a = ta_malloc(4 << 20);
  ta_huge_t *h = (ta_huge_t *)((uintptr_t)tt_opaque_ptr(a) & ~(uintptr_t)TA_CHUNK_MASK);
  h->map_size = (size_t)128 << 20;
  ta_free(a);
  cr_log_error("the forged mapping size was accepted");
}

Test(integrity, forged_huge_request_is_seen_by_malloc_usable_size, .signal = SIGABRT,
     .init = quiet) {
  char *a = ta_malloc(4 << 20);
  ta_huge_t *h = (ta_huge_t *)((uintptr_t)tt_opaque_ptr(a) & ~(uintptr_t)TA_CHUNK_MASK);
  h->requested = (size_t)64 << 20;
  size_t n = ta_malloc_usable_size(a);
  cr_log_error("usable size %zu accepted", n);
}

/* Every legitimate change of a huge header seals it again: realloc in place, growth,
 * moves, and a span taken from the cache and trimmed. */
Test(integrity, huge_headers_stay_sealed_through_realloc_and_the_cache) {
  char *a = ta_malloc(3 << 20);
  a = ta_realloc(a, (3 << 20) - 100000); /* in place, smaller */
  a = ta_realloc(a, 9 << 20);            /* grows */
  a = ta_realloc(a, 40 << 20);           /* grows, may move */
  cr_assert_eq(ta_malloc_usable_size(a) >= (40 << 20), 1);
  ta_free(a);
  char *b = ta_malloc(5 << 20); /* from the cache, trimmed */
  cr_assert_geq(ta_malloc_usable_size(b), 5 << 20);
  ta_free(b);
}
