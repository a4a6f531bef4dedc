/* Unit tests: the OS layer and how the allocator survives its failures (injected). */
#include <criterion/criterion.h>
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"
#include "tamalloc.h"

#define MiB ((size_t)1 << 20)

Test(os, mmap_failure_gives_enomem_and_recovers) {
  void *warm = ta_malloc(16); /* the arena exists */
  ta_os_fail(TA_OS_MMAP, 0, 1000);
  errno = 0;
  cr_assert_null(ta_malloc(3 * MiB));
  cr_assert_eq(errno, ENOMEM);
  ta_os_fail(0, 0, 0);
  void *p = ta_malloc(3 * MiB);
  cr_assert_not_null(p, "works again once the kernel does");
  ta_free(p);
  ta_free(warm);
}

Test(os, first_arena_needs_a_mapping) {
  ta_os_fail(TA_OS_MMAP, 0, 1000);
  errno = 0;
  cr_assert_null(ta_malloc(16), "no arena can be made");
  cr_assert_eq(errno, ENOMEM);
  ta_os_fail(0, 0, 0);
  void *p = ta_malloc(16);
  cr_assert_not_null(p);
  ta_free(p);
}

Test(os, chunk_failure_in_small_and_medium_paths) {
  void *warm = ta_malloc(16);
  ta_os_fail(TA_OS_MMAP, 0, 1000);
  /* A class never used before needs a new run; a full chunk's worth forces a new chunk. */
  enum { MAXB = 600 }; /* a chunk holds 63 runs of 8 blocks of 8 KiB */
  static void *blocks[MAXB];
  size_t got = 0;
  for (int i = 0; i < MAXB; i++) {
    blocks[i] = ta_malloc(8192);
    if (blocks[i]) got++;
  }
  cr_assert_lt(got, MAXB, "the chunk runs out and no new one can be mapped");
  cr_assert_gt(got, 400, "but the chunk's own runs serve");
  errno = 0;
  void *m = NULL;
  for (int i = 0; i < 8 && (m = ta_malloc(900000)) != NULL; i++) {
  }
  cr_assert_null(m);
  cr_assert_eq(errno, ENOMEM);
  ta_os_fail(0, 0, 0);
  for (int i = 0; i < MAXB; i++) ta_free(blocks[i]);
  ta_free(warm);
}

Test(os, failed_realloc_leaves_block_intact) {
  unsigned char *p = ta_malloc(2 * MiB);
  memset(p, 0x5a, 2 * MiB);
  ta_os_fail(TA_OS_MMAP | TA_OS_MREMAP, 0, 1000);
  errno = 0;
  cr_assert_null(ta_realloc(p, 64 * MiB));
  cr_assert_eq(errno, ENOMEM);
  ta_os_fail(0, 0, 0);
  for (size_t i = 0; i < 2 * MiB; i += 997) cr_assert_eq(p[i], 0x5a);
  ta_free(p);
}

Test(os, mremap_failure_falls_back_to_copy) {
  unsigned char *p = ta_malloc(2 * MiB);
  memset(p, 0x33, 2 * MiB);
  ta_os_fail(TA_OS_MREMAP, 0, 1000);
  unsigned char *q = ta_realloc(p, 16 * MiB);
  ta_os_fail(0, 0, 0);
  cr_assert_not_null(q);
  for (size_t i = 0; i < 2 * MiB; i += 991) cr_assert_eq(q[i], 0x33);
  ta_free(q);
}

Test(os, munmap_failure_keeps_going) {
  ta_os_fail(TA_OS_MUNMAP, 0, 1000);
  for (int i = 0; i < 20; i++) {
    void *p = ta_memalign(8 * MiB, 64); /* never cached: always unmapped on free */
    cr_assert_not_null(p);
    ta_free(p);
  }
  ta_os_fail(0, 0, 0);
}

Test(os, brk_chunks_and_fallback_to_mmap) {
  ta_chunk_use_brk(true);
  void *p = ta_malloc(16);
  ta_chunk_t *c = ta_chunk_of(p);
  cr_assert(c->from_brk, "first chunk from the break");
  cr_assert_leq((char *)c + TA_CHUNK_SIZE, (char *)sbrk(0));
  /* The break cannot move any more: chunks come from mmap instead. */
  ta_os_fail(TA_OS_SBRK, 1, 1000); /* sbrk(0) succeeds, the move fails */
  void *m = ta_malloc(200000);
  ta_os_fail(0, 0, 0);
  cr_assert_not_null(m);
  cr_assert_not(ta_chunk_of(m)->from_brk, "medium chunk came from mmap");
  ta_free(m);
  ta_free(p);
  ta_chunk_use_brk(false);
}

Test(os, skip_then_fail_counts) {
  ta_os_fail(TA_OS_MADVISE, 2, 1);
  char *p = ta_os_mmap(3 * 4096);
  cr_assert_not_null(p);
  cr_assert_eq(ta_os_decommit(p, 4096), 0);
  cr_assert_eq(ta_os_decommit(p, 4096), 0);
  cr_assert_eq(ta_os_decommit(p, 4096), -1);
  cr_assert_eq(ta_os_decommit(p, 4096), 0, "only one failure was asked for");
  cr_assert_eq(ta_os_munmap(p, 3 * 4096), 0);
}

Test(os, errno_preserved_by_free_of_huge) {
  void *p = ta_malloc(30 * MiB);
  errno = 1234;
  ta_free(p);
  ta_malloc_trim(0);
  cr_assert_eq(errno, 1234);
}

Test(os, random_is_nonzero) { cr_assert_neq(ta_os_random(), 0); }

/* ---- a failed huge mapping and the cache of freed spans ------------------------------ */

/* Four spans of two granules in the cache. */
static size_t fill_huge_cache(void) {
  void *p[4];
  for (int i = 0; i < 4; i++) p[i] = ta_malloc(6 * MiB);
  for (int i = 0; i < 4; i++) ta_free(p[i]);
  cr_assert_eq(ta_huge_cached_count(), 4);
  return ta_huge_cached_bytes();
}

static bool overcommit_always(void) {
  FILE *f = fopen("/proc/sys/vm/overcommit_memory", "r");
  int mode = 0;
  if (f) {
    if (fscanf(f, "%d", &mode) != 1) mode = 0;
    fclose(f);
  }
  return mode == 1;
}

Test(os, refused_probe_of_an_impossible_size_leaves_the_cache) {
  size_t cached = fill_huge_cache();
  errno = 0;
  void *p = ta_malloc((size_t)1 << 46); /* 64 TiB: the kernel refuses it (unless overcommit is 1) */
  if (!overcommit_always()) {
    cr_assert_null(p);
    cr_assert_eq(errno, ENOMEM);
  }
  ta_free(p);
  cr_assert_eq(ta_huge_cached_bytes(), cached, "the cache was emptied for nothing");
  cr_assert_eq(ta_huge_cached_count(), 4);
}

Test(os, mapping_failure_that_unmapping_the_cache_can_cure_purges_it) {
  fill_huge_cache();
  /* The kernel refuses the request once, as it would if the address space were short by
   * less than the cache holds: the rest of the request can be mapped, so the cache goes. */
  ta_os_fail(TA_OS_MMAP, 0, 1);
  void *p = ta_malloc(100 * MiB);
  ta_os_fail(0, 0, 0);
  cr_assert_not_null(p, "the cache was given back and the mapping tried again");
  cr_assert_eq(ta_huge_cached_bytes(), 0);
  ta_free(p);
}

Test(os, mapping_failure_too_large_for_the_cache_to_cure_keeps_it) {
  size_t cached = fill_huge_cache();
  /* Refused, and what would be left to map after unmapping the cache is refused too:
   * unmapping the cache could not help. */
  ta_os_fail(TA_OS_MMAP, 0, 2);
  errno = 0;
  void *p = ta_malloc(100 * MiB);
  ta_os_fail(0, 0, 0);
  cr_assert_null(p);
  cr_assert_eq(errno, ENOMEM);
  cr_assert_eq(ta_huge_cached_bytes(), cached);
}

Test(os, mapping_failure_of_every_size_purges_the_cache) {
  fill_huge_cache();
  /* Not even a page can be mapped (the count of mappings is at its limit, say): unmapping
   * the cached spans is what can help. */
  ta_os_fail(TA_OS_MMAP, 0, 3);
  void *p = ta_malloc(100 * MiB);
  ta_os_fail(0, 0, 0);
  cr_assert_not_null(p);
  cr_assert_eq(ta_huge_cached_bytes(), 0);
  ta_free(p);
}

/* A block aligned to a granule or more never comes from the cache, but its mapping, refused
 * once, unmaps the cache and is asked for again, as any huge block's. */
Test(os, refused_over_aligned_mapping_purges_the_cache) {
  fill_huge_cache();
  ta_os_fail(TA_OS_MMAP, 0, 1);
  errno = 0;
  void *p = ta_aligned_alloc(8 * MiB, 100 * MiB);
  ta_os_fail(0, 0, 0);
  cr_assert_not_null(p, "the cache was given back and the mapping tried again");
  cr_assert_eq((uintptr_t)p % (8 * MiB), 0);
  cr_assert_eq(ta_huge_cached_count(), 0);
  memset(p, 1, 4096);
  memset((char *)p + 100 * MiB - 4096, 1, 4096);
  ta_free(p);
}

/* A chunk for small or medium blocks that the kernel refuses once, its mapping (`lazy` false)
 * or its commit (true): the cached spans are unmapped and the chunk asked for again, so the
 * request succeeds. */
static void refused_chunk_purges_the_cache(bool lazy, size_t size) {
  ta_chunk_lazy_commit(lazy);
  fill_huge_cache();
  ta_os_fail(lazy ? TA_OS_COMMIT : TA_OS_MMAP, 0, 1);
  errno = 0;
  void *p = ta_malloc(size);
  ta_os_fail(0, 0, 0);
  cr_assert_not_null(p, "a %zu-byte request failed with %zu bytes of spans cached", size,
                     ta_huge_cached_bytes());
  cr_assert_eq(errno, 0);
  cr_assert_eq(ta_huge_cached_bytes(), 0);
  cr_assert_eq(ta_huge_cached_count(), 0);
  memset(p, 1, size);
  ta_free(p);
}

Test(os, refused_chunk_mapping_for_a_small_block_purges_the_cache) {
  refused_chunk_purges_the_cache(false, 16);
}
Test(os, refused_chunk_mapping_for_a_medium_block_purges_the_cache) {
  refused_chunk_purges_the_cache(false, 200000);
}
Test(os, refused_chunk_commit_for_a_small_block_purges_the_cache) {
  refused_chunk_purges_the_cache(true, 16);
}
Test(os, refused_chunk_commit_for_a_medium_block_purges_the_cache) {
  refused_chunk_purges_the_cache(true, 200000);
}

/* A new thread whose arena the kernel refuses to map: the cached spans go, and its first
 * request is made once more. */
static void *first_malloc_of_a_thread(void *arg) {
  (void)arg;
  ta_os_fail(TA_OS_MMAP, 0, 1);
  void *p = ta_malloc(16);
  ta_os_fail(0, 0, 0);
  return p;
}

Test(os, refused_arena_of_a_new_thread_purges_the_cache) {
  ta_chunk_lazy_commit(false);
  ta_free(ta_malloc(16)); /* this thread's arena and chunk: the new thread's is the one refused */
  fill_huge_cache();
  pthread_t t;
  void *p = NULL;
  cr_assert_eq(pthread_create(&t, NULL, first_malloc_of_a_thread, NULL), 0);
  pthread_join(t, &p);
  cr_assert_not_null(p, "the new thread's first malloc failed with spans cached");
  cr_assert_eq(ta_huge_cached_count(), 0);
  ta_free(p);
}

/* Threads refused at once under a hard limit: the first to look unmaps the cache, and the
 * next finds it empty. The purge since its refusal (the epoch it read before its call) still
 * tells it to ask again; with nothing cached and no purge since, there is no reason to. */
Test(os, a_purge_between_a_refusal_and_its_look_still_asks_again) {
  fill_huge_cache();
  uint64_t epoch = ta_huge_epoch(); /* read before the call the kernel refuses */
  cr_assert_gt(ta_huge_purge(0, true), 0, "another thread's look unmaps the cache");
  cr_assert_eq(ta_huge_cached_count(), 0);
  cr_assert(ta_huge_make_room(TA_CHUNK_SIZE, epoch), "room was made since the refusal");
  cr_assert_not(ta_huge_make_room(TA_CHUNK_SIZE, ta_huge_epoch()),
                "nothing cached, and no purge since the refusal");
}

Test(os, a_purge_that_unmaps_nothing_leaves_the_epoch) {
  uint64_t epoch = ta_huge_epoch();
  cr_assert_eq(ta_huge_purge(0, true), 0);
  cr_assert_eq(ta_huge_epoch(), epoch);
  fill_huge_cache();
  cr_assert_eq(ta_huge_epoch(), epoch, "caching a span is no purge");
  cr_assert_gt(ta_huge_purge(0, true), 0);
  cr_assert_eq(ta_huge_epoch(), epoch + 4, "one count a span unmapped");
}

/* A statistics reader puts the purge's unmaps off until it leaves (nothing may be unmapped
 * under it): a refused request asks again only once they are made, waiting for the reader a
 * bounded time. As the reader's own leaving does: the count down, the put-off unmaps made. */
static _Atomic bool waiter_done;
static void reader_leaves(void) {
  if (atomic_fetch_sub(&ta_stats_readers, 1) == 1) ta_huge_unmap_deferred();
}
/* Returns once the request has gone to sleep since `sleeps` was read, or has given up
 * (`waiter_done`). */
static void until_asleep(uint64_t sleeps) {
  while (ta_huge_room_sleeps() == sleeps && !atomic_load(&waiter_done))
    sched_yield();
}
/* Leaves once the request is seen waiting. */
static void *reader_leaves_later(void *arg) {
  until_asleep(*(uint64_t *)arg);
  reader_leaves();
  return NULL;
}

Test(os, a_purge_a_reader_puts_off_asks_again_once_its_unmaps_are_made) {
  fill_huge_cache();
  uint64_t epoch = ta_huge_epoch(); /* read before the call the kernel refuses */
  uint64_t unmaps = ta_os_calls(TA_OS_MUNMAP);
  atomic_fetch_add(&ta_stats_readers, 1);
  /* Another thread's look emptied the cache, its unmaps put off: they count as cached. */
  cr_assert_gt(ta_huge_purge(0, true), 0);
  cr_assert_eq(ta_huge_epoch(), epoch, "nothing unmapped yet");
  ta_huge_room_wait_ms = 60000; /* whatever the machine's load, the reader leaves first */
  uint64_t sleeps = ta_huge_room_sleeps();
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, reader_leaves_later, &sleeps), 0);
  bool again = ta_huge_make_room(TA_CHUNK_SIZE, epoch);
  atomic_store(&waiter_done, true);
  cr_assert(again, "the reader left, and the spans went");
  cr_assert_geq(ta_os_calls(TA_OS_MUNMAP), unmaps + 4,
                "asked again before the put-off unmaps were made");
  pthread_join(t, NULL);
}

Test(os, a_reader_that_stays_fails_the_look_after_a_bounded_wait) {
  fill_huge_cache();
  uint64_t epoch = ta_huge_epoch();
  uint64_t unmaps = ta_os_calls(TA_OS_MUNMAP);
  atomic_fetch_add(&ta_stats_readers, 1); /* this thread's own: it cannot leave while waited for */
  ta_huge_room_wait_ms = 20;
  uint64_t sleeps = ta_huge_room_sleeps();
  cr_assert_not(ta_huge_make_room(TA_CHUNK_SIZE, epoch), "nothing was unmapped yet");
  cr_assert_gt(ta_huge_room_sleeps(), sleeps, "the put-off unmaps were waited for");
  cr_assert_eq(ta_huge_cached_count(), 0, "the cache was emptied, its unmaps put off");
  cr_assert_eq(ta_os_calls(TA_OS_MUNMAP), unmaps);
  reader_leaves();
  cr_assert_geq(ta_os_calls(TA_OS_MUNMAP), unmaps + 4);
  cr_assert(ta_huge_make_room(TA_CHUNK_SIZE, epoch), "the unmaps made on leaving count");
}

/* malloc is no cancellation point: a thread with a cancellation pending that waits for put-off
 * unmaps comes back from the wait (and is cancelled at its next cancellation point). */
static void *wait_with_cancel_pending(void *arg) {
  pthread_cancel(pthread_self()); /* deferred: pending until a cancellation point */
  ta_huge_make_room(TA_CHUNK_SIZE, ta_huge_epoch());
  atomic_store((_Atomic bool *)arg, true);
  pthread_testcancel();
  return NULL;
}

Test(os, the_wait_for_put_off_unmaps_is_no_cancellation_point) {
  fill_huge_cache();
  atomic_fetch_add(&ta_stats_readers, 1); /* stays while the thread waits */
  cr_assert_gt(ta_huge_purge(0, true), 0);
  ta_huge_room_wait_ms = 20;
  uint64_t sleeps = ta_huge_room_sleeps();
  _Atomic bool back = false;
  pthread_t t;
  void *res = NULL;
  cr_assert_eq(pthread_create(&t, NULL, wait_with_cancel_pending, &back), 0);
  pthread_join(t, &res);
  reader_leaves();
  cr_assert_gt(ta_huge_room_sleeps(), sleeps, "the thread waited");
  cr_assert(atomic_load(&back), "the thread was cancelled inside the wait");
  cr_assert_eq(res, PTHREAD_CANCELED);
}

/* Another thread's purge has taken a span out of its slot and not unmapped it yet (the hook
 * holds it there): a request refused now finds the cache empty and the count of unmaps not
 * moved. It sleeps until that unmap is made, is woken by it, and asks again. */
static _Atomic bool purge_done;
static void *purge_in_another_thread(void *arg) {
  (void)arg;
  ta_huge_purge(0, true);
  atomic_store(&purge_done, true);
  return NULL;
}
/* Lets the held unmap go once the request is seen asleep, or has given up (`done`). */
static void *release_once_asleep(void *arg) {
  until_asleep(*(uint64_t *)arg);
  atomic_store(&ta_huge_hold_unmap, 0);
  return NULL;
}
/* Four spans cached, and a purge in another thread that holds the first it takes in flight. */
static pthread_t purge_holding_one_unmap(void) {
  fill_huge_cache();
  atomic_store(&ta_huge_hold_unmap, 1);
  pthread_t purger;
  cr_assert_eq(pthread_create(&purger, NULL, purge_in_another_thread, NULL), 0);
  while (atomic_load(&ta_huge_hold_unmap) != 2 && !atomic_load(&purge_done))
    sched_yield();
  cr_assert_eq(atomic_load(&ta_huge_hold_unmap), 2, "the purger took a span and holds it");
  return purger;
}

Test(os, a_request_waits_for_another_threads_unmap_in_flight, .timeout = 120) {
  pthread_t purger = purge_holding_one_unmap(), releaser;
  ta_huge_purge(0, true); /* the spans still in their slots, unmapped here */
  cr_assert_eq(ta_huge_cached_count(), 0);
  uint64_t epoch = ta_huge_epoch(); /* read before the call the kernel refuses */
  uint64_t unmaps = ta_os_calls(TA_OS_MUNMAP);
  ta_huge_room_wait_ms = 60000; /* whatever the machine's load, the unmap is let go first */
  uint64_t sleeps = ta_huge_room_sleeps();
  cr_assert_eq(pthread_create(&releaser, NULL, release_once_asleep, &sleeps), 0);
  uint64_t start = ta_os_now_ms();
  bool again = ta_huge_make_room(TA_CHUNK_SIZE, epoch);
  uint64_t took = ta_os_now_ms() - start;
  atomic_store(&waiter_done, true);
  pthread_join(releaser, NULL);
  pthread_join(purger, NULL);
  cr_assert(again, "the span in flight was unmapped: room was made");
  cr_assert_gt(ta_os_calls(TA_OS_MUNMAP), unmaps, "asked again before the unmap was made");
  cr_assert_gt(ta_huge_room_sleeps(), sleeps, "the unmap in flight was waited for");
  /* Woken by the unmap, not by the bound's end. */
  cr_assert_lt(took, 30000, "the request slept %llu ms", (unsigned long long)took);
}

/* An unmap made outside any count in flight (the free of a block aligned to 8 MiB, never
 * cached) moves the count of unmaps: it wakes a request asleep for another thread's unmap,
 * which is still held. */
static void *free_once_asleep(void *arg) {
  void **job = arg; /* the block, and the sleeps before the request */
  until_asleep((uint64_t)(uintptr_t)job[1]);
  ta_free(job[0]);
  return NULL;
}

Test(os, an_unmap_made_elsewhere_wakes_a_sleeping_request, .timeout = 120) {
  void *q = ta_aligned_alloc(8 * MiB, 8 * MiB);
  cr_assert_not_null(q);
  pthread_t purger = purge_holding_one_unmap(), freer;
  ta_huge_purge(0, true);
  uint64_t epoch = ta_huge_epoch();
  ta_huge_room_wait_ms = 60000;
  void *job[2] = {q, (void *)(uintptr_t)ta_huge_room_sleeps()};
  cr_assert_eq(pthread_create(&freer, NULL, free_once_asleep, job), 0);
  uint64_t start = ta_os_now_ms();
  bool again = ta_huge_make_room(TA_CHUNK_SIZE, epoch);
  uint64_t took = ta_os_now_ms() - start;
  unsigned held = atomic_load(&ta_huge_hold_unmap);
  atomic_store(&waiter_done, true);
  atomic_store(&ta_huge_hold_unmap, 0);
  pthread_join(freer, NULL);
  pthread_join(purger, NULL);
  cr_assert(again, "the free unmapped its block: room was made");
  cr_assert_eq(held, 2, "woken by the free's unmap, while the held one was still held");
  cr_assert_lt(took, 30000, "the request slept %llu ms", (unsigned long long)took);
}

/* A signal handler's request, in a thread whose own unmap it cut into, does not wait for
 * that unmap: it could not end before the handler returns. */
static _Atomic uint64_t handler_sleeps = UINT64_MAX;
static void refused_in_handler(int sig) {
  (void)sig;
  uint64_t before = ta_huge_room_sleeps();
  ta_huge_make_room(TA_CHUNK_SIZE, ta_huge_epoch());
  atomic_store(&handler_sleeps, ta_huge_room_sleeps() - before);
}

/* The signal goes once the purger holds its unmap (the word reads 2): the handler's own look
 * then neither purges (nothing is cached) nor takes the hold, which would stop its thread. */
Test(os, a_handler_does_not_wait_for_the_unmap_it_cut_into, .timeout = 120) {
  struct sigaction sa = {.sa_handler = refused_in_handler};
  sigemptyset(&sa.sa_mask);
  cr_assert_eq(sigaction(SIGUSR1, &sa, NULL), 0);
  pthread_t purger = purge_holding_one_unmap();
  ta_huge_purge(0, true); /* nothing else cached, nothing else in flight */
  ta_huge_room_wait_ms = 60000;
  cr_assert_eq(pthread_kill(purger, SIGUSR1), 0);
  while (atomic_load(&handler_sleeps) == UINT64_MAX)
    sched_yield();
  atomic_store(&ta_huge_hold_unmap, 0);
  pthread_join(purger, NULL);
  cr_assert_eq(atomic_load(&handler_sleeps), 0, "the handler waited for its own thread's unmap");
}

/* A request refused whatever is unmapped (a probe of 64 TiB) does not wait for the unmaps a
 * reader put off: they could not make room. */
Test(os, a_hopeless_probe_does_not_wait_for_put_off_unmaps) {
  fill_huge_cache();
  atomic_fetch_add(&ta_stats_readers, 1);
  cr_assert_gt(ta_huge_purge(0, true), 0);
  cr_assert_eq(ta_huge_cached_count(), 0, "put off, not unmapped");
  uint64_t sleeps = ta_huge_room_sleeps();
  void *p = ta_malloc((size_t)1 << 46);
  uint64_t took = ta_huge_room_sleeps() - sleeps;
  reader_leaves();
  if (overcommit_always()) {
    ta_free(p);
    return;
  }
  cr_assert_null(p);
  cr_assert_eq(took, 0, "the probe waited %llu sleeps for unmaps that could not help",
               (unsigned long long)took);
}

/* With nothing cached, a refused chunk fails its request as before: NULL and ENOMEM. */
Test(os, refused_chunk_with_nothing_cached_fails_with_enomem) {
  ta_chunk_lazy_commit(false);
  ta_free(ta_malloc(6 * MiB));
  ta_huge_purge(0, true);
  cr_assert_eq(ta_huge_cached_count(), 0);
  ta_os_fail(TA_OS_MMAP, 0, 1000);
  errno = 0;
  void *p = ta_malloc(16);
  ta_os_fail(0, 0, 0);
  cr_assert_null(p);
  cr_assert_eq(errno, ENOMEM);
  p = ta_malloc(16);
  cr_assert_not_null(p, "the next request, the kernel willing, succeeds");
  ta_free(p);
}

/* The granule map covers the address space the kernel hands out: where the main thread's
 * stack lies (AT_EXECFN's string), 47 bits at least; every block of every kind is in it. */
Test(os, granule_map_covers_the_address_space) {
  cr_assert_eq(ta_map_granules(), 0, "nothing is mapped before the first call");
  cr_assert_eq(ta_map_get((uintptr_t)&errno), TA_MAP_NONE);
  void *p[3] = {ta_malloc(16), ta_malloc(100000), ta_malloc(3 * MiB)};
  unsigned bits = ta_os_addr_bits();
  cr_assert_geq(bits, TA_ADDR_BITS_MIN);
  cr_assert_leq(bits, TA_ADDR_BITS_MAX);
  uintptr_t stack = (uintptr_t)getauxval(AT_EXECFN);
  cr_assert_eq(stack >> bits, 0, "the stack's top lies below 2^%u", bits);
  cr_assert_eq(ta_map_granules(), (size_t)1 << (bits - TA_CHUNK_SHIFT));
  static const uint8_t kinds[3] = {TA_MAP_SMALL, TA_MAP_MEDIUM, TA_MAP_HUGE};
  for (int i = 0; i < 3; i++) {
    cr_assert_not_null(p[i]);
    cr_assert_eq((uintptr_t)p[i] >> bits, 0);
    cr_assert_eq(ta_map_get((uintptr_t)p[i]), kinds[i]);
    ta_free(p[i]);
  }
  /* Beyond the map: not ours, and no read past its end. */
  cr_assert_eq(ta_map_get((uintptr_t)1 << bits), TA_MAP_NONE);
  cr_assert_eq(ta_map_get(UINTPTR_MAX), TA_MAP_NONE);
}

/* The map is mapped by the first call; when it cannot be, that call fails as running out of
 * memory does, and the next one succeeds. */
Test(os, granule_map_failure_is_enomem_and_recovers) {
  ta_os_fail(TA_OS_MMAP, 0, 1);
  errno = 0;
  cr_assert_null(ta_malloc(16));
  cr_assert_eq(errno, ENOMEM);
  cr_assert_eq(ta_map_granules(), 0);
  void *p = ta_malloc(16);
  cr_assert_not_null(p);
  cr_assert_neq(ta_map_granules(), 0);
  ta_free(p);
}

/* Pages are the kernel's, read at start-up: AT_PAGESZ, and sysfs's transparent huge page;
 * the allocator's are the kernel's too unless page_kb asked for larger ones. */
Test(os, page_sizes_are_the_kernels) {
  void *p = ta_malloc(16);
  size_t asked = ta_conf_page_size > (size_t)getauxval(AT_PAGESZ) ? ta_conf_page_size : 0;
  cr_assert_eq(ta_page_size, asked ? asked : (size_t)getauxval(AT_PAGESZ));
  cr_assert_eq(ta_os_page_size(), (size_t)getauxval(AT_PAGESZ));
  cr_assert(ta_hugepage_size > ta_page_size && ta_is_pow2(ta_hugepage_size));
  FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", "r");
  size_t sys = 0;
  if (f != NULL) {
    if (fscanf(f, "%zu", &sys) != 1) sys = 0;
    fclose(f);
  }
  if (sys != 0) cr_assert_eq(ta_hugepage_size, sys);
  ta_run_t *r = ta_run_of(p);
  cr_assert_eq(r->limit, (uint32_t)(ta_page_size / r->bsize * r->bsize), "a run carves a page");
  ta_free(p);
}

/* A test may ask for larger pages (page_kb, before the first call): every page-sized step
 * uses them. Checked here on runs (a page carved at a time) and huge blocks (a page's
 * rounding, the page given back by the kernel in whole pages of that size). */
Test(os, a_larger_page_is_used_throughout) {
  ta_conf_apply("page_kb:64");
  void *p = ta_malloc(16);
  cr_assert_eq(ta_page_size, 64 << 10);
  ta_run_t *r = ta_run_of(p);
  cr_assert_eq(r->limit, (uint32_t)((64 << 10) / r->bsize * r->bsize), "a run carves 64 KiB");
  size_t n;
  cr_assert_eq(ta_mallctl("arenas.page", &n, &(size_t){sizeof n}, NULL, 0), 0);
  cr_assert_eq(n, 64 << 10);
  void *v = ta_valloc(100);
  cr_assert_eq((uintptr_t)v % (64 << 10), 0, "valloc aligns to the page");
  char *h = ta_malloc(3 * MiB + 1);
  cr_assert_eq(ta_malloc_usable_size(h) + TA_HUGE_HDR,
               ta_align_up(TA_HUGE_HDR + 3 * MiB + 1, 64 << 10));
  ta_free(h);
  ta_free(v);
  ta_free(p);
}

/* The CPU is a rank among the CPUs the process may run on, whatever ids they have, even when
 * the first thread to ask is pinned to its last CPU (the rank of the highest id is the count
 * less one: the ranks come from the process's mask, not that thread's), and errno comes back
 * as it was. */
static void *cpu_of_pinned(void *arg) {
  unsigned *out = arg;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return NULL;
  int last = -1;
  for (int i = 0; i < CPU_SETSIZE; i++)
    if (CPU_ISSET(i, &set)) last = i;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(last, &one);
  if (pthread_setaffinity_np(pthread_self(), sizeof one, &one) != 0) return NULL;
  for (int i = 0; i < 64; i++) out[0] = ta_os_cpu(); /* past any per-thread cache */
  out[1] = 1;
  return NULL;
}

/* A thread moved to another CPU is seen there: at its next call where glibc registered a
 * restartable-sequence area (the CPU id is read from it each time, and only the rank of the id
 * read last is kept), within 16 calls without one. out: the ranks seen on the first CPU, the
 * last, the first again; out[3] 1 once it could be pinned each time; out[4] whether the
 * restartable-sequence area may be read. */
extern const unsigned int __rseq_size __attribute__((weak));
static bool pin_to(int cpu) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  return pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0;
}
static void *cpu_of_moving(void *arg) {
  unsigned *out = arg;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return NULL;
  int first = -1, last = -1;
  for (int i = 0; i < CPU_SETSIZE; i++)
    if (CPU_ISSET(i, &set)) {
      if (first < 0) first = i;
      last = i;
    }
  bool rseq = out[4] && &__rseq_size != NULL && __rseq_size != 0 && sched_getcpu() >= 0;
  int calls = rseq ? 1 : 17, at[3] = {first, last, first};
  for (int k = 0; k < 3; k++) {
    if (!pin_to(at[k])) return NULL;
    for (int i = 0; i < calls; i++)
      out[k] = ta_os_cpu();
  }
  out[3] = 1;
  return NULL;
}

Test(os, a_thread_that_moves_is_seen_on_its_new_cpu) {
  ta_os_cpu_force(-1);
  unsigned n = ta_os_ncpu();
  if (n < 2) cr_skip_test("one CPU");
  for (int rseq = 1; rseq >= 0; rseq--) { /* and as without the area (sched_getcpu's path) */
    ta_os_cpu_rseq(rseq);
    unsigned out[5] = {9, 9, 9, 0, (unsigned)rseq};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, cpu_of_moving, out), 0);
    pthread_join(t, NULL);
    cr_assert_eq(out[3], 1, "the thread could not be pinned");
    cr_assert_eq(out[0], 0, "on the first CPU (rseq %d)", rseq);
    cr_assert_eq(out[1], n - 1, "moved to the last (rseq %d)", rseq);
    cr_assert_eq(out[2], 0, "and back (rseq %d)", rseq);
  }
  ta_os_cpu_rseq(true);
}

Test(os, the_cpu_is_a_rank_among_the_processs_cpus) {
  ta_os_cpu_force(-1);
  unsigned out[2] = {0, 0};
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, cpu_of_pinned, out), 0); /* the first to ask */
  pthread_join(t, NULL);
  unsigned n = ta_os_ncpu();
  cpu_set_t all;
  CPU_ZERO(&all);
  cr_assert_eq(sched_getaffinity(0, sizeof all, &all), 0);
  cr_assert_eq(n, (unsigned)CPU_COUNT(&all), "the process's CPUs, not the pinned thread's");
  cr_assert_eq(out[1], 1, "the thread could not be pinned");
  cr_assert_eq(out[0], n - 1, "pinned to its last CPU, a thread has the last rank");
  errno = 4321;
  for (int i = 0; i < 64; i++) cr_assert_lt(ta_os_cpu(), n);
  cr_assert_eq(errno, 4321, "errno kept");
}

/* The break lock (os.c): mutual exclusion under contention, and a waiter that sleeps in the
 * kernel (a futex) while the holder keeps it, rather than going round the scheduler. */
static long brk_counted;
static void *brk_lock_loop(void *arg) {
  (void)arg;
  for (int i = 0; i < 20000; i++) {
    ta_brk_lock();
    long v = brk_counted;              /* a plain read and write: lost updates if two were inside */
    if ((i & 255) == 0) sched_yield(); /* the holder goes off the CPU now and then */
    brk_counted = v + 1;
    ta_brk_unlock();
  }
  return NULL;
}

Test(os, the_break_lock_lets_one_thread_in_at_a_time, .timeout = 60) {
  pthread_t t[4];
  brk_counted = 0;
  for (int i = 0; i < 4; i++)
    cr_assert_eq(pthread_create(&t[i], NULL, brk_lock_loop, NULL), 0);
  for (int i = 0; i < 4; i++)
    pthread_join(t[i], NULL);
  cr_assert_eq(brk_counted, 4 * 20000);
}

static _Atomic uint32_t brk_waiter_tid;
static _Atomic int brk_waiter_in;
static void *brk_waiter(void *arg) {
  (void)arg;
  atomic_store(&brk_waiter_tid, ta_os_gettid());
  ta_brk_lock();
  atomic_store(&brk_waiter_in, 1);
  ta_brk_unlock();
  return NULL;
}
/* The system call thread tid is blocked in (the first field of /proc/self/task/TID/syscall),
 * or -1 while it runs. */
static long blocked_in(uint32_t tid) {
  char path[64], text[128] = {0};
  snprintf(path, sizeof path, "/proc/self/task/%u/syscall", tid);
  FILE *f = fopen(path, "r");
  if (f == NULL) return -2;
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  if (n == 0 || strncmp(text, "running", 7) == 0) return -1;
  return strtol(text, NULL, 10);
}

/* The number /proc reports for a thread asleep in a futex: a thread made to sleep in one by
 * hand tells it (an emulator such as qemu-user reports its host's numbers). */
static _Atomic uint32_t futex_word, futex_sleeper_tid;
static void *futex_sleeper(void *arg) {
  (void)arg;
  atomic_store(&futex_sleeper_tid, ta_os_gettid());
  while (atomic_load(&futex_word) == 0)
    syscall(SYS_futex, (uint32_t *)&futex_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
  return NULL;
}
/* Polls, 5 s at most, until the thread is blocked in a system call; its number, or -1 (never),
 * or -2 (no such file here). */
static long blocked_in_within(uint32_t tid, long want) {
  long in = -1;
  for (int i = 0; i < 5000; i++) {
    in = blocked_in(tid);
    if (in == -2 || (in >= 0 && (want < 0 || in == want))) return in;
    usleep(1000);
  }
  return in;
}
static long futex_number(void) {
  atomic_store(&futex_word, 0);
  atomic_store(&futex_sleeper_tid, 0);
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, futex_sleeper, NULL), 0);
  while (atomic_load(&futex_sleeper_tid) == 0)
    sched_yield();
  long n = blocked_in_within(atomic_load(&futex_sleeper_tid), -1);
  atomic_store(&futex_word, 1);
  syscall(SYS_futex, (uint32_t *)&futex_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
  pthread_join(t, NULL);
  return n;
}

Test(os, a_thread_waiting_for_the_break_lock_sleeps_until_it_is_let_go, .timeout = 60) {
  long futex = futex_number();
  if (futex < 0) cr_skip_test("no /proc/self/task/TID/syscall here (%ld)", futex);
  atomic_store(&brk_waiter_tid, 0);
  atomic_store(&brk_waiter_in, 0);
  ta_brk_lock();
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, brk_waiter, NULL), 0);
  while (atomic_load(&brk_waiter_tid) == 0)
    sched_yield();
  long in = blocked_in_within(atomic_load(&brk_waiter_tid), futex);
  cr_assert_eq(atomic_load(&brk_waiter_in), 0, "not in while the lock is held");
  cr_assert_eq(in, futex, "the waiter sleeps on a futex (blocked in system call %ld, not %ld)", in,
               futex);
  ta_brk_unlock();
  pthread_join(t, NULL);
  cr_assert_eq(atomic_load(&brk_waiter_in), 1, "woken, it took the lock");
}

/* The pages that hold a range, though it starts inside one: mincore itself refuses an address
 * that is not page-aligned, which an answer of 0 would hide. */
Test(os, resident_counts_the_pages_of_a_range_that_starts_inside_one) {
  size_t kpage = ta_os_page_size();
  char *m = ta_os_mmap(4 * kpage);
  cr_assert_not_null(m);
  m[kpage + 100] = 1; /* the second page only */
  cr_assert_eq(ta_os_resident(m + kpage + 64, 100), kpage);
  cr_assert_eq(ta_os_resident(m + 64, kpage), kpage, "two pages, the second one written");
  cr_assert_eq(ta_os_resident(m + 2 * kpage + 1, kpage), 0);
  ta_os_munmap(m, 4 * kpage);
}
