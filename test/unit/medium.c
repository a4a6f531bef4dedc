/* Unit tests: medium blocks — boundary tags, split on reuse, merge with neighbours, bins. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "support/abort_text.h"
#include "support/heap_map_text.h"
#include "support/page_in_force.h"
#include "tamalloc.h"

struct walk {
  size_t blocks, free_blocks, free_bytes, bytes;
  int adjacent_free;
  int last_free;
};

static void visit(const ta_mhdr_t *h, size_t word, void *arg) {
  struct walk *w = arg;
  cr_assert_eq(word, h->size_flags, "the walk's word is the block's");
  size_t s = h->size_flags & TA_M_SIZE_MASK;
  int is_free = !(h->size_flags & TA_M_INUSE);
  w->blocks++;
  w->bytes += s;
  if (is_free) {
    w->free_blocks++;
    w->free_bytes += s;
    if (w->last_free) w->adjacent_free = 1;
    cr_assert_eq(*(const size_t *)((const char *)h + s - sizeof(size_t)), s, "footer");
  }
  cr_assert_eq(!!(h->size_flags & TA_M_PREV_FREE), w->last_free, "PREV_FREE mirrors neighbour");
  cr_assert(ta_medium_check_ok(h));
  w->last_free = is_free;
}

static struct walk walk_chunk(const void *p) {
  struct walk w = {0};
  ta_medium_walk(ta_chunk_of(p), visit, &w);
  cr_assert_eq(w.adjacent_free, 0, "no two free blocks are adjacent");
  cr_assert_eq(w.bytes, TA_CHUNK_SIZE - TA_MEDIUM_HDR - sizeof(ta_mhdr_t), "blocks tile the chunk");
  return w;
}

/* These tests are about the heap: blocks freed here merge at once. The cache in front of it
 * has a suite of its own (mcache, below). */
static void heap_alone(void) { ta_mcache_max = 0; }
TestSuite(medium, .init = heap_alone);

Test(medium, blocks_are_medium_aligned_and_tiled) {
  char *a = ta_malloc(10000), *b = ta_malloc(20000), *c = ta_malloc(30000);
  cr_assert_eq(ta_map_get((uintptr_t)a), TA_MAP_MEDIUM);
  cr_assert_eq((uintptr_t)a % 16, 0);
  cr_assert_eq(b, a + ta_align_up(10000 + 16, 16), "split on reuse: b follows a");
  cr_assert_geq(ta_malloc_usable_size(c), 30000);
  struct walk w = walk_chunk(a);
  cr_assert_eq(w.free_blocks, 1);
  ta_free(a);
  ta_free(b);
  ta_free(c);
}

Test(medium, free_merges_with_both_neighbours) {
  char *a = ta_malloc(10000), *b = ta_malloc(10000), *c = ta_malloc(10000), *d = ta_malloc(10000);
  struct walk w0 = walk_chunk(a);
  ta_free(a);
  ta_free(c);
  struct walk w1 = walk_chunk(a);
  cr_assert_eq(w1.free_blocks, w0.free_blocks + 2);
  ta_free(b); /* a, b, c merge into one */
  struct walk w2 = walk_chunk(a);
  cr_assert_eq(w2.free_blocks, w0.free_blocks + 1);
  /* A request of about three blocks now fits where a was. */
  char *e = ta_malloc(30000);
  cr_assert_eq(e, a, "merged space reused");
  ta_free(e);
  ta_free(d);
}

Test(medium, in_place_growth_and_shrink) {
  char *a = ta_malloc(20000);
  memset(a, 7, 20000);
  char *b = ta_realloc(a, 60000); /* next is the free remainder: grows in place */
  cr_assert_eq(b, a);
  for (int i = 0; i < 20000; i++) cr_assert_eq(b[i], 7);
  char *c = ta_realloc(b, 12000);
  cr_assert_eq(c, a, "shrinks in place");
  cr_assert_geq(ta_malloc_usable_size(c), 12000);
  cr_assert_lt(ta_malloc_usable_size(c), 13000);
  walk_chunk(c);
  ta_free(c);
}

Test(medium, aligned_blocks_split_front) {
  for (size_t al = 32; al <= 65536; al *= 2) {
    void *p = ta_memalign(al, 9000);
    cr_assert_not_null(p);
    cr_assert_eq((uintptr_t)p % al, 0, "alignment %zu", al);
    walk_chunk(p);
    ta_free(p);
  }
}

Test(medium, double_free_aborts, .signal = SIGABRT) {
  void *p = ta_malloc(50000);
  ta_free(p);
  ta_free(p);
}

Test(medium, forged_header_aborts, .signal = SIGABRT) {
  char *p = ta_malloc(50000);
  ta_free(p + 4096); /* inside the block: no valid meta block there */
}

Test(medium, empty_chunk_goes_back_when_another_exists) {
  /* Fill beyond one chunk, free everything: chunks beyond the first are released. */
  void *p[12];
  for (int i = 0; i < 12; i++) p[i] = ta_malloc(900 * 1024);
  ta_chunk_t *first = ta_chunk_of(p[0]), *last = ta_chunk_of(p[11]);
  cr_assert_neq(first, last);
  for (int i = 11; i >= 0; i--) ta_free(p[i]);
  size_t n = 0;
  for (ta_chunk_t *c = ta_tl_arena->medium_chunks; c; c = c->next) n++;
  cr_assert_eq(n, 1, "one medium chunk kept, %zu found", n);
}

static void *free_in_thread(void *p) {
  ta_free(p);
  return NULL;
}

/* The first free comes from another thread and is still on the owner's list; the owner's
 * second free drains it, which merges the block with its free neighbours. The second free
 * must still be caught, not run on the swallowed meta block. */
Test(medium, double_free_after_remote_free_and_merge_aborts, .signal = SIGABRT) {
  char *a = ta_malloc(100000), *m = ta_malloc(100000), *n = ta_malloc(100000);
  char *keep = ta_malloc(100000);
  ta_free(a);
  ta_free(n);
  pthread_t t;
  pthread_create(&t, NULL, free_in_thread, m);
  pthread_join(t, NULL);
  ta_free(m);
  (void)keep;
}

Test(medium, merged_meta_blocks_are_forgotten) {
  char *a = ta_malloc(20000), *b = ta_malloc(20000), *keep = ta_malloc(20000);
  ta_mhdr_t *hb = (ta_mhdr_t *)((uintptr_t)b - sizeof(ta_mhdr_t)); /* its meta block */
  ta_free(b);
  ta_free(a); /* b's meta block is swallowed into a's */
  cr_assert_eq(hb->check, 0);
  cr_assert_eq(hb->size_flags, 0, "no stale INUSE bit left for a second free to find");
  ta_free(keep);
}

/* The top of a chunk (its free block at the end marker) gives back what it holds beyond its
 * allowance as soon as blocks merge into it, without waiting for the decay: a thread whose
 * medium blocks rose to 3 MiB and fell keeps at most the allowance of that peak. */
static void *rise_and_fall(void *arg) {
  (void)arg;
  enum { N = 30, SIZE = 100 << 10 };
  char *base = ta_malloc(SIZE); /* the lowest block stays: the chunk stays */
  char *p[N];
  for (int i = 0; i < N; i++) {
    p[i] = ta_malloc(SIZE);
    memset(p[i], 9, SIZE);
  }
  ta_chunk_t *c = ta_chunk_of(base);
  size_t before = ta_os_resident(c, TA_CHUNK_SIZE);
  for (int i = N; i-- > 0;) ta_free(p[i]); /* from the top down: each merges into the top */
  size_t after = ta_os_resident(c, TA_CHUNK_SIZE);
  cr_assert_geq(before, (size_t)N * SIZE, "the blocks were written");
  /* the header page, the kept block, the allowance (64 KiB with no dirty budget), the
   * last page, and a page of rounding on each side */
  size_t bound = SIZE + (64 << 10) + 5 * ta_page_size;
  cr_assert_leq(after, bound, "%zu bytes of the chunk still resident (bound %zu)", after, bound);
  /* A block carved again from the trimmed top is whole. */
  char *q = ta_malloc(900 << 10);
  cr_assert_eq(ta_chunk_of(q), c, "reuses the trimmed top");
  memset(q, 3, 900 << 10);
  for (size_t k = 0; k < (900 << 10); k += 4096) cr_assert_eq(q[k], 3);
  ta_free(q);
  ta_free(base);
  return NULL;
}

Test(medium, top_gives_back_beyond_its_allowance_at_once) {
  ta_decay_ms = 600000; /* nothing is purged on time here */
  ta_dirty_max = 0;     /* the smallest allowance */
  pthread_t t;
  pthread_create(&t, NULL, rise_and_fall, NULL);
  pthread_join(t, NULL);
}

/* A single thread's top is its own: with one arena and the default budget, a top that falls
 * keeps its pages (they go by their age); once the process has a second arena, it is trimmed. */
static size_t fall_keeps(void) {
  enum { N = 30, SIZE = 100 << 10 };
  char *base = ta_malloc(SIZE), *p[N];
  for (int i = 0; i < N; i++) {
    p[i] = ta_malloc(SIZE);
    memset(p[i], 9, SIZE);
  }
  ta_chunk_t *c = ta_chunk_of(base);
  for (int i = N; i-- > 0;) ta_free(p[i]);
  size_t after = ta_os_resident(c, TA_CHUNK_SIZE);
  ta_free(base);
  return after;
}

static void *one_block(void *arg) {
  ta_free(ta_malloc(16));
  return arg;
}

Test(medium, a_single_threads_top_goes_by_its_age_alone) {
  ta_decay_ms = 600000;
  ta_dirty_max = (size_t)32 << 20; /* the default */
  size_t alone = fall_keeps();
  cr_assert_geq(alone, (size_t)30 * (100 << 10), "one arena: %zu bytes resident", alone);
  pthread_t t;
  pthread_create(&t, NULL, one_block, NULL);
  pthread_join(t, NULL); /* a second arena, ever */
  size_t shared = fall_keeps();
  cr_assert_leq(shared, (size_t)2 << 20, "two arenas: %zu bytes resident", shared);
}

/* A top that stays within its allowance is left alone: no system call on every free. */
static void *small_rises(void *arg) {
  char *base = ta_malloc(100 << 10);
  for (int round = 0; round < 100; round++) {
    char *p = ta_malloc(40 << 10);
    memset(p, 1, 40 << 10);
    ta_free(p);
  }
  *(uint64_t *)arg = ta_os_calls(TA_OS_MADVISE);
  ta_free(base);
  return NULL;
}

Test(medium, top_within_its_allowance_makes_no_call) {
  ta_decay_ms = 600000;
  ta_dirty_max = 0;
  uint64_t before = ta_os_calls(TA_OS_MADVISE), after = 0;
  pthread_t t;
  pthread_create(&t, NULL, small_rises, &after);
  pthread_join(t, NULL);
  cr_assert_leq(after - before, 2, "%llu madvise calls for 100 cycles within the allowance",
                (unsigned long long)(after - before));
}

/* malloc_trim lets go of a medium chunk that holds no block, even the arena's last: what
 * exited threads leave behind must not keep a chunk each. */
static void *last_chunk_goes(void *arg) {
  char *p = ta_malloc(200 << 10);
  memset(p, 4, 200 << 10);
  ta_chunk_t *c = ta_chunk_of(p);
  ta_free(p);
  cr_assert_eq(ta_map_get((uintptr_t)c), TA_MAP_MEDIUM, "the arena's only medium chunk stays");
  ta_malloc_trim(0);
  *(int *)arg = ta_map_get((uintptr_t)c) == TA_MAP_NONE;
  /* and the next medium block is served as before */
  p = ta_malloc(300 << 10);
  memset(p, 5, 300 << 10);
  ta_free(p);
  return NULL;
}

Test(medium, trim_lets_go_of_the_last_empty_chunk) {
  int gone = 0;
  pthread_t t;
  pthread_create(&t, NULL, last_chunk_goes, &gone);
  pthread_join(t, NULL);
  cr_assert(gone, "the empty medium chunk is still the arena's after malloc_trim");
}

/* A thread that cycles a block larger than the allowance gets its top's pages back soon
 * after each trim: the top learns to keep them, so the cycle settles to no system call
 * (not a madvise and 64 page faults a cycle). */
static void *cycles_above_the_allowance(void *arg) {
  char *base = ta_malloc(100 << 10);
  uint64_t before = ta_os_calls(TA_OS_MADVISE);
  for (int round = 0; round < 300; round++) {
    char *p = ta_malloc(256 << 10);
    memset(p, round, 256 << 10);
    ta_free(p);
  }
  *(uint64_t *)arg = ta_os_calls(TA_OS_MADVISE) - before;
  ta_free(base);
  return NULL;
}

Test(medium, top_that_comes_back_at_once_stops_being_trimmed) {
  needs_pages_up_to(16 << 10); /* the allowance of 64 KiB is one page of 64 KiB */
  ta_decay_ms = 600000; /* every trim is "recent" */
  ta_dirty_max = 0;     /* the smallest allowance: 64 KiB */
  uint64_t calls = 0;
  pthread_t t;
  pthread_create(&t, NULL, cycles_above_the_allowance, &calls);
  pthread_join(t, NULL);
  cr_assert_leq(calls, 8, "%llu madvise calls for 300 cycles of a 256 KiB block",
                (unsigned long long)calls);
}

static void nap_ms(long ms);

/* A top's back-off lasts for its owner's decay time, not the wall's: a thread that waits
 * for a CPU between its cycles keeps what its top learnt. Returns the madvise calls of a few
 * cycles made after a pause longer than the wall's decay time. */
static uint64_t cycles_after_a_pause(uint32_t owner_factor) {
  ta_decay_ms = 50;
  ta_dirty_max = 0; /* the smallest allowance: 64 KiB */
  atomic_store(&ta_owner_scale_force, owner_factor);
  char *base = ta_malloc(100 << 10);
  for (int round = 0; round < 40; round++) { /* the top learns to keep 256 KiB */
    char *p = ta_malloc(256 << 10);
    memset(p, round, 256 << 10);
    ta_free(p);
  }
  nap_ms(150); /* three wall decay times; well within 100 of them */
  uint64_t before = ta_os_calls(TA_OS_MADVISE);
  for (int round = 0; round < 4; round++) {
    char *p = ta_malloc(256 << 10);
    memset(p, round, 256 << 10);
    ta_free(p);
  }
  uint64_t calls = ta_os_calls(TA_OS_MADVISE) - before;
  ta_free(base);
  return calls;
}

Test(medium, a_tops_back_off_lasts_for_its_owners_decay_time) {
  needs_pages_up_to(16 << 10); /* the allowance of 64 KiB is one page of 64 KiB */
  uint64_t calls = cycles_after_a_pause(100);
  cr_assert_eq(calls, 0, "%llu madvise calls: the top forgot its back-off",
               (unsigned long long)calls);
}

Test(medium, a_tops_back_off_ends_after_the_decay_time) {
  uint64_t calls = cycles_after_a_pause(1);
  cr_assert_geq(calls, 1, "the top kept its back-off past the decay time");
}

/* ---- free blocks' ages, the purge's share, the top cut last ------------------------- */

static void nap_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* The meta block of medium block p (through an integer: the compiler knows p's size). */
static ta_mhdr_t *hdr_of(const void *p) { return (ta_mhdr_t *)((uintptr_t)p - sizeof(ta_mhdr_t)); }

static bool given_back(const void *p) { return (hdr_of(p)->size_flags & TA_M_DECOMMITTED) != 0; }

/* Two holes of 100 KiB with blocks in use around them, one freed a decay time before the
 * purge and one just before it; *old_out, *fresh_out: their addresses. */
static void two_holes(char **old_out, char **fresh_out) {
  char *old = ta_malloc(100 << 10), *g1 = ta_malloc(10000);
  char *fresh = ta_malloc(100 << 10), *g2 = ta_malloc(10000);
  cr_assert(ta_chunk_of(old) == ta_chunk_of(g2), "one chunk");
  memset(old, 1, 100 << 10);
  memset(fresh, 2, 100 << 10);
  ta_free(old);
  nap_ms((long)ta_decay_ms + 40);
  ta_free(fresh);
  uint64_t now = ta_os_now_ms();
  cr_assert_leq(now - *ta_medium_stamp(hdr_of(fresh)), 500, "the fresh hole's time");
  cr_assert_geq(now - *ta_medium_stamp(hdr_of(old)), ta_decay_ms, "the old hole's time");
  (void)g1;
  *old_out = old;
  *fresh_out = fresh;
}

Test(medium, the_purge_gives_back_old_holes_and_keeps_fresh_ones) {
  needs_pages_up_to(16 << 10); /* a hole of 100 KiB holds one page of 64 KiB at most */
  ta_decay_ms = 1000; /* the fresh hole must not come due, even on a slow machine */
  ta_dirty_max = (size_t)64 << 20; /* a share of 1 MiB: the fresh hole fits */
  char *old, *fresh;
  two_holes(&old, &fresh);
  /* mincore needs a page-aligned address: each hole is read from the page that holds its start */
  char *old_page = (char *)((uintptr_t)old & ~(uintptr_t)(ta_page_size - 1));
  char *fresh_page = (char *)((uintptr_t)fresh & ~(uintptr_t)(ta_page_size - 1));
  size_t resident_before = ta_os_resident(fresh_page, 100 << 10);
  cr_assert_geq(resident_before, (size_t)(96 << 10), "the fresh hole was written");
  cr_assert_gt(ta_arena_purge(ta_tl_arena, ta_os_now_ms(), false, ta_decay_ms, true), 0);
  cr_assert(given_back(old), "the hole free for the decay time went back");
  cr_assert_leq(ta_os_resident(old_page, 100 << 10), 2 * ta_page_size);
  cr_assert_not(given_back(fresh), "the hole freed just now stays");
  cr_assert_eq(ta_os_resident(fresh_page, 100 << 10), resident_before);
  cr_assert_neq(ta_tl_arena->medium_dirty_since, 0, "the fresh hole is pending");
  cr_assert_neq(atomic_load(&ta_tl_arena->purge_due), 0, "a purge is due for it");
}

Test(medium, past_its_share_the_purge_gives_back_fresh_holes_too) {
  needs_pages_up_to(16 << 10); /* a hole of 100 KiB holds one page of 64 KiB at most */
  ta_decay_ms = 1000;
  ta_dirty_max = 0; /* the smallest share: 64 KiB, less than the fresh hole */
  char *old, *fresh;
  two_holes(&old, &fresh);
  ta_arena_purge(ta_tl_arena, ta_os_now_ms(), false, ta_decay_ms, true);
  cr_assert(given_back(old));
  cr_assert(given_back(fresh), "over the share, the younger hole went back too");
}

/* A block freed next to a hole free for long: the merged hole's time is the age of its
 * bytes, averaged by size, so that a small fresh neighbour does not keep a large old hole
 * resident. */
Test(medium, a_small_block_joining_an_old_hole_leaves_it_old) {
  ta_decay_ms = 1000;
  char *hole = ta_malloc(300 << 10), *small = ta_malloc(10000), *guard = ta_malloc(10000);
  memset(hole, 1, 300 << 10);
  ta_free(hole);
  uint64_t t0 = *ta_medium_stamp(hdr_of(hole));
  nap_ms(200);
  ta_free(small);
  uint64_t now = ta_os_now_ms(), age = now - *ta_medium_stamp(hdr_of(hole));
  /* 300 KiB aged ~200 ms and 10 KiB aged 0: about 97% of the hole's own age. */
  cr_assert_geq(age * 100, (now - t0) * 90, "merged age %llu ms", (unsigned long long)age);
  cr_assert_leq(age, now - t0, "merged age %llu ms", (unsigned long long)age);
  ta_free(guard);
}

/* The top is cut only when no hole fits: a request that a large hole below the top can
 * serve is cut from the hole, though the top is the smaller of the two. */
Test(medium, a_hole_serves_before_the_top) {
  enum { BIG = 900 << 10 };
  char *a = ta_malloc(BIG), *g1 = ta_malloc(10000), *b = ta_malloc(BIG), *g2 = ta_malloc(10000);
  char *c = ta_malloc(BIG), *g3 = ta_malloc(10000), *d = ta_malloc(BIG);
  cr_assert(ta_chunk_of(a) == ta_chunk_of(d), "one chunk");
  struct walk w = walk_chunk(a);
  cr_assert_eq(w.free_blocks, 1, "the top alone is free");
  cr_assert_lt(w.free_bytes, (size_t)BIG, "the top is smaller than the hole to come");
  ta_free(a);
  char *p = ta_malloc(100 << 10);
  cr_assert_eq(p, a, "cut from the front of the hole, not from the top");
  ta_free(p);
  ta_free(b);
  ta_free(c);
  ta_free(d);
  ta_free(g1);
  ta_free(g2);
  ta_free(g3);
}

/* The top keeps its own allowance (its trims): a large touched top does not count against
 * the holes' share, so a fresh hole stays though the top is larger than the share. */
Test(medium, the_top_does_not_count_against_the_holes_share) {
  ta_decay_ms = 1000;
  ta_dirty_max = (size_t)8 << 20; /* one arena: a share of 1 MiB, a top allowance of a chunk */
  char *big = ta_malloc(900 << 10), *hole = ta_malloc(100 << 10), *guard = ta_malloc(10000);
  memset(big, 1, 900 << 10);
  memset(hole, 2, 100 << 10);
  char *tall = ta_malloc(1000 << 10); /* touches the top, then gives it back to it */
  memset(tall, 3, 1000 << 10);
  ta_free(tall);
  ta_mhdr_t *top = hdr_of(tall);
  cr_assert_not(top->size_flags & TA_M_INUSE, "merged into the top");
  ta_free(hole);
  uint64_t oldest = 0;
  bool held = false;
  ta_slow_enter(ta_tl_arena);
  size_t freed = ta_medium_purge(ta_tl_arena, ta_os_now_ms(), false, ta_decay_ms, 1 << 20, 0,
                                 &held, &oldest);
  ta_slow_leave(ta_tl_arena);
  cr_assert_eq(freed, 0, "nothing is due: %zu bytes given back", freed);
  cr_assert_not(given_back(hole), "the fresh hole stays");
  cr_assert_neq(oldest, 0);
  ta_free(big);
  ta_free(guard);
}

/* Large holes free for the decay time stay while they, the top included, hold no more than
 * what the arena's demand leaves them (purge.c); past it they go (the oldest excess, below). */
static size_t purge_holding(size_t hold, bool *held) {
  uint64_t oldest = 0;
  *held = false;
  ta_slow_enter(ta_tl_arena);
  size_t freed = ta_medium_purge(ta_tl_arena, ta_os_now_ms() + ta_decay_ms, false, ta_decay_ms,
                                 0, hold, held, &oldest);
  ta_slow_leave(ta_tl_arena);
  if (*held) cr_assert_neq(oldest, 0, "held: looked at again");
  return freed;
}

Test(medium, large_holes_stay_while_the_demand_covers_them) {
  ta_decay_ms = 50;
  char *hole = ta_malloc(300 << 10), *guard = ta_malloc(10000);
  memset(hole, 1, 300 << 10);
  ta_free(hole);
  bool held;
  cr_assert_eq(purge_holding(TA_CHUNK_SIZE, &held), 0);
  cr_assert(held);
  cr_assert_not(given_back(hole), "within the demand: it stays");
  cr_assert_gt(purge_holding(64 << 10, &held), 0);
  cr_assert(given_back(hole), "past the demand: it goes (the oldest excess, all of it here)");
  ta_free(guard);
}

/* Three holes of 300 KiB, each between blocks in use, with the given ages (ms before `now`)
 * written into their times. */
static void aged_holes(char *h[3], const uint64_t ages[3], uint64_t now) {
  for (int i = 0; i < 3; i++) {
    h[i] = ta_malloc(300 << 10);
    memset(h[i], 1, 300 << 10);
    void *guard = ta_malloc(10000); /* in use: the holes stay apart */
    cr_assert_not_null(guard);
  }
  for (int i = 0; i < 3; i++) {
    ta_free(h[i]);
    *ta_medium_stamp(hdr_of(h[i])) = now - ages[i];
  }
}

/* A purge at `now` of what is due by the decay time, with a share of `share` bytes. */
static size_t purge_shared(uint64_t now, size_t share, size_t hold, bool *held) {
  uint64_t oldest = 0;
  *held = false;
  ta_slow_enter(ta_tl_arena);
  size_t freed = ta_medium_purge(ta_tl_arena, now, false, ta_decay_ms, share, hold, held, &oldest);
  ta_slow_leave(ta_tl_arena);
  return freed;
}

static size_t purge_at(uint64_t now, size_t hold, bool *held) {
  return purge_shared(now, 0, hold, held);
}

/* Past the demand, only the excess goes, the oldest first: a purge that gave back every due
 * hole made an arena cycling through them fault them all in again at once. */
Test(medium, past_the_demand_only_the_oldest_excess_goes) {
  ta_decay_ms = 50;
  uint64_t now = ta_os_now_ms() + 10000;
  char *h[3];
  aged_holes(h, (const uint64_t[3]){100, 3000, 1000}, now); /* all due, ages of 3 lengths */
  bool held;
  /* 900 KiB resident, 350 KiB held: 550 KiB go, the two oldest holes (3 s, then 1 s). */
  cr_assert_gt(purge_at(now, 350 << 10, &held), 500 << 10);
  cr_assert(given_back(h[1]), "the oldest hole goes");
  cr_assert(given_back(h[2]), "the next oldest goes for the rest of the excess");
  cr_assert_not(given_back(h[0]), "the youngest stays: the demand holds it");
  cr_assert(held, "what stays is held: looked at again when the demand falls");
}

/* A hole past the hold that is not due yet stays until it is: the purge does not report
 * what it kept as held, which would have it looked at only when the demand falls. */
Test(medium, an_excess_hole_not_yet_due_is_not_reported_held) {
  ta_decay_ms = 2000;
  uint64_t now = ta_os_now_ms() + 10000;
  char *h[3];
  aged_holes(h, (const uint64_t[3]){100, 3000, 1500}, now);
  bool held;
  /* a share of 1 MiB: the hole not due is not given back for the share either */
  cr_assert_gt(purge_shared(now, 1 << 20, 350 << 10, &held), 250 << 10);
  cr_assert(given_back(h[1]), "the oldest, due, goes");
  cr_assert_not(given_back(h[2]), "past the hold but not due: it stays for now");
  cr_assert_not(given_back(h[0]));
  cr_assert_not(held, "looked at again when it comes due, not when the demand falls");
}

/* Holes of one age length: as many go as the excess needs, the rest stay. */
Test(medium, of_holes_of_one_age_only_the_excess_goes) {
  ta_decay_ms = 50;
  uint64_t now = ta_os_now_ms() + 10000;
  char *h[3];
  aged_holes(h, (const uint64_t[3]){1100, 1200, 1300}, now);
  bool held;
  size_t freed = purge_at(now, 700 << 10, &held); /* an excess of 200 KiB: one hole */
  cr_assert_gt(freed, 200 << 10);
  cr_assert_lt(freed, 300 << 10);
  int gone = given_back(h[0]) + given_back(h[1]) + given_back(h[2]);
  cr_assert_eq(gone, 1, "one hole of the three goes, not %d", gone);
  cr_assert(held);
}

/* A hole of one age length more than twice the excess left stays: giving back much more
 * than the excess is the burst the excess rule avoids. */
Test(medium, a_hole_more_than_twice_the_excess_stays) {
  ta_decay_ms = 50;
  uint64_t now = ta_os_now_ms() + 10000;
  char *h[3];
  aged_holes(h, (const uint64_t[3]){1100, 1200, 1300}, now);
  bool held;
  cr_assert_eq(purge_at(now, 800 << 10, &held), 0, "an excess of 100 KiB: no hole of 300");
  cr_assert_not(given_back(h[0]) || given_back(h[1]) || given_back(h[2]));
  cr_assert(held, "all three kept for the demand");
}

/* The demand counts the most of its large holes' resident bytes the arena took at once (less
 * what it freed into the heap meanwhile): memory it needed, which a purge would have made it
 * fault in. A hole of 300 KiB, and a window begun with nothing counted. */
static char *resident_hole(char **guard) {
  ta_decay_ms = 1000; /* one window for the whole test */
  char *hole = ta_malloc(300 << 10);
  *guard = ta_malloc(10000);
  memset(hole, 1, 300 << 10);
  ta_free(hole);
  ta_arena_t *a = ta_tl_arena;
  a->hole_rise = 0;
  atomic_store(&a->demand_ms, ta_os_now_ms());
  atomic_store(&a->demand, 0);
  atomic_store(&a->demand_prev, 0);
  atomic_store(&a->demand_top, 0);
  return hole;
}

static size_t demand_now(void) { return ta_arena_demand(ta_tl_arena, ta_os_now_ms()); }

Test(medium, what_is_taken_of_a_resident_hole_counts_as_demand) {
  char *guard, *hole = resident_hole(&guard);
  char *p = ta_malloc(40 << 10);
  cr_assert_eq(p, hole, "cut from the front of the hole");
  size_t d = demand_now();
  cr_assert_geq(d, (size_t)40 << 10, "demand %zu", d);
  cr_assert_lt(d, (size_t)44 << 10, "demand %zu: the block taken, no more", d);
  ta_free(p);
  ta_free(guard);
}

/* The same bytes taken and freed again and again count once: a block freed into an old hole
 * leaves it old, and each cut would otherwise count again (a demand that never lapses). */
Test(medium, the_same_bytes_taken_again_and_again_count_once) {
  char *guard, *hole = resident_hole(&guard);
  for (int i = 0; i < 100; i++) {
    char *p = ta_malloc(100 << 10);
    cr_assert_eq(p, hole);
    ta_free(p);
  }
  size_t d = demand_now();
  cr_assert_geq(d, (size_t)100 << 10, "demand %zu", d);
  cr_assert_lt(d, (size_t)104 << 10, "demand %zu: 100 cuts of 100 KiB counted as more", d);
  ta_free(guard);
}

/* Taken at once, blocks add up; freed and taken again, no more than the most at once. */
Test(medium, the_most_taken_at_once_counts) {
  char *guard, *hole = resident_hole(&guard);
  char *p[3];
  for (int i = 0; i < 3; i++)
    p[i] = ta_malloc(60 << 10);
  cr_assert_eq(p[0], hole);
  size_t d = demand_now();
  cr_assert_geq(d, (size_t)180 << 10, "demand %zu", d);
  cr_assert_lt(d, (size_t)186 << 10, "demand %zu", d);
  for (int i = 0; i < 3; i++)
    ta_free(p[i]);
  char *q = ta_malloc(60 << 10);
  cr_assert_eq(demand_now(), d, "less than the most at once: no more demand");
  ta_free(q);
  ta_free(guard);
}

/* A new window counts from nothing: what the arena takes then counts again, so that a demand
 * lasts while the arena keeps taking as much. */
Test(medium, a_new_window_counts_what_is_taken_in_it) {
  char *guard, *hole = resident_hole(&guard);
  char *p = ta_malloc(100 << 10);
  cr_assert_eq(p, hole);
  ta_free(p);
  atomic_fetch_sub(&ta_tl_arena->demand_ms, 3 * ta_demand_window()); /* long ago */
  cr_assert_eq(demand_now(), 0, "two windows after it was counted, the demand lapsed");
  p = ta_malloc(100 << 10);
  size_t d = demand_now();
  cr_assert_geq(d, (size_t)100 << 10, "taken again in a new window: demand %zu", d);
  cr_assert_lt(d, (size_t)104 << 10, "demand %zu", d);
  ta_free(p);
  ta_free(guard);
}

/* Blocks taken and kept count in the window that took them, not again in every window
 * after: a demand for memory in use would never lapse. */
Test(medium, blocks_taken_and_kept_count_in_their_window_only) {
  char *guard, *hole = resident_hole(&guard);
  char *kept = ta_malloc(200 << 10);
  cr_assert_eq(kept, hole);
  cr_assert_geq(demand_now(), (size_t)200 << 10);
  atomic_fetch_sub(&ta_tl_arena->demand_ms, 3 * ta_demand_window()); /* long ago */
  char *p = ta_malloc(20 << 10);
  size_t d = demand_now();
  cr_assert_geq(d, (size_t)20 << 10, "demand %zu", d);
  cr_assert_lt(d, (size_t)24 << 10, "demand %zu: the block kept counted again", d);
  ta_free(p);
  ta_free(kept);
  ta_free(guard);
}

/* A forgotten demand (an arena that changed owner) counts anew from its next take. */
Test(medium, a_forgotten_demand_counts_anew) {
  char *guard, *hole = resident_hole(&guard);
  char *kept = ta_malloc(200 << 10);
  cr_assert_eq(kept, hole);
  ta_dirty_forget_demand(ta_tl_arena);
  cr_assert_eq(demand_now(), 0);
  char *p = ta_malloc(20 << 10);
  size_t d = demand_now();
  cr_assert_geq(d, (size_t)20 << 10, "demand %zu", d);
  cr_assert_lt(d, (size_t)24 << 10, "demand %zu: the old owner's take counted again", d);
  ta_free(p);
  ta_free(kept);
  ta_free(guard);
}

/* A hole held for the demand may be older than a smaller one past it that waits for its
 * time, both of the cut's age length: the purge is looked at again when the one that waits
 * comes due (*oldest), not by the older one's time, which is past: the purge would run again
 * at every slow path until then. */
Test(medium, a_purge_with_a_block_waiting_comes_back_by_its_time) {
  ta_decay_ms = 200;
  uint64_t now = ta_os_now_ms() + 10000;
  char *a = ta_malloc(300 << 10), *g1 = ta_malloc(10000);
  char *b = ta_malloc(40 << 10), *g2 = ta_malloc(10000);
  char *c = ta_malloc(300 << 10), *g3 = ta_malloc(10000);
  memset(a, 1, 300 << 10);
  memset(b, 1, 40 << 10);
  memset(c, 1, 300 << 10);
  ta_free(a);
  ta_free(b);
  ta_free(c);
  *ta_medium_stamp(hdr_of(a)) = now - 250; /* due, kept: more than twice the excess */
  *ta_medium_stamp(hdr_of(b)) = now - 150; /* of the same length, past the hold, not due */
  *ta_medium_stamp(hdr_of(c)) = now - 20;  /* young: held */
  uint64_t oldest = 0;
  bool held = false;
  ta_slow_enter(ta_tl_arena);
  size_t freed =
      ta_medium_purge(ta_tl_arena, now, false, ta_decay_ms, 1 << 20, 600 << 10, &held, &oldest);
  ta_slow_leave(ta_tl_arena);
  cr_assert_eq(freed, 0, "nothing of the three is given back: %zu", freed);
  cr_assert_not(given_back(a) || given_back(b) || given_back(c));
  cr_assert_not(held);
  cr_assert_eq(oldest, now - 150, "looked at again by the waiting block's time, not %lld",
               (long long)(oldest - now));
  ta_free(g1);
  ta_free(g2);
  ta_free(g3);
}

/* A block cut from a hole whose pages went back leaves a rest that knows it: the next purge
 * makes no system call for it. */
Test(medium, what_is_cut_from_a_given_back_hole_stays_given_back) {
  ta_decay_ms = 50;
  char *hole = ta_malloc(300 << 10), *guard = ta_malloc(10000);
  memset(hole, 1, 300 << 10);
  ta_free(hole);
  nap_ms(100);
  ta_arena_purge(ta_tl_arena, ta_os_now_ms(), false, ta_decay_ms, true);
  cr_assert(given_back(hole));
  char *p = ta_malloc(40 << 10);
  cr_assert_eq(p, hole, "cut from the front of the hole");
  char *rest = (char *)((uintptr_t)p + ta_align_up((40 << 10) + sizeof(ta_mhdr_t), 16));
  cr_assert(given_back(rest), "the rest keeps the bit");
  nap_ms(100);
  uint64_t calls = ta_os_calls(TA_OS_MADVISE);
  ta_arena_purge(ta_tl_arena, ta_os_now_ms(), false, ta_decay_ms, true);
  cr_assert_eq(ta_os_calls(TA_OS_MADVISE), calls, "no madvise for the rest again");
  ta_free(p);
  ta_free(guard);
}

/* ---- the cache of freed medium blocks (medium.c, "The cache") ---- */

static size_t block_size(const void *p) { return hdr_of(p)->size_flags & TA_M_SIZE_MASK; }
static bool cached(const void *p) { return (hdr_of(p)->size_flags & TA_M_CACHED) != 0; }
/* A medium block past 64 KiB: never cached, it keeps the blocks around it from merging. */
static void *guard(void) { return ta_malloc(100000); }

/* n blocks of size, size + step, ..., each followed by a guard. */
static void guarded(char **p, char **g, int n, size_t size, size_t step) {
  for (int i = 0; i < n; i++) {
    p[i] = ta_malloc(size + (size_t)i * step);
    g[i] = guard();
  }
}

struct cache_walk {
  size_t cached_seen, cached_in_slots;
};

static void visit_cached(const ta_mhdr_t *h, size_t word, void *arg) {
  struct cache_walk *cw = arg;
  if (!(word & TA_M_CACHED)) return;
  cw->cached_seen++;
  ta_arena_t *a = ta_tl_arena;
  unsigned i = ta_bin_of(word & TA_M_SIZE_MASK) - TA_MCACHE_FIRST;
  for (unsigned k = 0; k < a->mcache_n[i]; k++) cw->cached_in_slots += a->mcache[i][k] == h;
}

/* The cache's invariants (docs/design.md, Medium blocks): each slot holds a block that is
 * INUSE and CACHED, of its bin, checked; the bytes are their sum, within the bound; and every
 * CACHED block of the chunk of p is in exactly one slot. */
static void check_cache(const void *p) {
  ta_arena_t *a = ta_tl_arena;
  size_t bytes = 0, slots = 0;
  for (unsigned i = 0; i < TA_MCACHE_CLASSES; i++) {
    cr_assert_leq(a->mcache_n[i], TA_MCACHE_SLOTS);
    for (unsigned k = 0; k < a->mcache_n[i]; k++) {
      const ta_mhdr_t *h = a->mcache[i][k];
      size_t w = h->size_flags;
      cr_assert_eq(w & (TA_M_INUSE | TA_M_CACHED), TA_M_INUSE | TA_M_CACHED);
      cr_assert(ta_medium_check_ok(h));
      cr_assert_eq(ta_bin_of(w & TA_M_SIZE_MASK), TA_MCACHE_FIRST + i, "in its bin's slots");
      cr_assert_eq(w & TA_M_SIZE_MASK, ta_class_size[TA_MCACHE_FIRST + i + 1] - 16,
                   "of its bin's largest size");
      bytes += w & TA_M_SIZE_MASK;
      slots++;
    }
  }
  cr_assert_eq(a->mcache_bytes, bytes);
  cr_assert_leq(bytes, TA_MCACHE_BYTES);
  struct cache_walk cw = {0};
  ta_medium_walk(ta_chunk_of(p), visit_cached, &cw);
  cr_assert_eq(cw.cached_seen, cw.cached_in_slots, "every cached block in one slot");
  cr_assert_leq(cw.cached_seen, slots);
}

Test(mcache, a_freed_block_serves_the_next_request_of_its_bin_whole) {
  char *a = ta_malloc(20000), *keep = ta_malloc(20000);
  ta_arena_t *me = ta_tl_arena;
  uint64_t splits = me->cnt.splits, merges = me->cnt.merges;
  ta_free(a);
  cr_assert(cached(a));
  cr_assert(hdr_of(a)->size_flags & TA_M_INUSE, "no neighbour merges with it");
  cr_assert(ta_medium_check_ok(hdr_of(a)), "the flag is in the check word");
  cr_assert_eq(me->mcache_bytes, block_size(a));
  check_cache(a);
  char *b = ta_malloc(19000); /* the same bin: a's block fits */
  cr_assert_eq(b, a);
  cr_assert(!cached(b));
  cr_assert(ta_medium_check_ok(hdr_of(b)));
  cr_assert_eq(me->mcache_bytes, 0);
  cr_assert_eq(me->cnt.splits, splits, "nothing cut");
  cr_assert_eq(me->cnt.merges, merges, "nothing merged");
  cr_assert_geq(ta_malloc_usable_size(b), 19000);
  check_cache(b);
  ta_free(b);
  ta_free(keep);
}

Test(mcache, calloc_zeroes_a_cached_block) {
  char *a = ta_malloc(20000), *keep = ta_malloc(20000);
  memset(a, 0x5a, 20000);
  ta_free(a);
  cr_assert(cached(a));
  unsigned char *z = ta_calloc(1, 20000);
  cr_assert_eq((char *)z, a, "the cached block");
  for (size_t i = 0; i < 20000; i++) cr_assert_eq(z[i], 0, "byte %zu", i);
  ta_free(z);
  ta_free(keep);
}

/* A block is cut to the largest size of its bin when the cache may keep it (medium.c,
 * cache_fit): any later request of the bin fits it, the largest as well as the smallest. */
Test(mcache, a_block_cut_for_a_bin_fits_every_request_of_that_bin) {
  char *a = ta_malloc(18500), *keep = ta_malloc(18500); /* 18,516 bytes: the bin of 18 KiB */
  unsigned bin = ta_bin_of(18500 + sizeof(ta_mhdr_t));
  cr_assert_eq(block_size(a), ta_class_size[bin + 1] - 16, "cut to its bin's largest size");
  ta_free(a);
  cr_assert(cached(a));
  size_t largest = ta_class_size[bin + 1] - 16 - sizeof(ta_mhdr_t); /* still the same bin */
  char *b = ta_malloc(largest);
  cr_assert_eq(b, a, "the cached block, whole");
  cr_assert_geq(ta_malloc_usable_size(b), largest);
  memset(b, 7, largest);
  check_cache(b);
  ta_free(b);
  ta_free(keep);
}

/* An aligned block is cut to its request: it would not fit every request of its bin, so its
 * free gives it to the heap, and a request of its bin never gets less than it asked for. */
Test(mcache, a_block_not_of_its_bins_largest_size_goes_to_the_heap) {
  char *a = ta_aligned_alloc(256, 18500), *g = guard();
  cr_assert_lt(block_size(a), ta_class_size[ta_bin_of(block_size(a)) + 1] - 16);
  ta_free(a);
  cr_assert_not(cached(a));
  cr_assert_eq(ta_tl_arena->mcache_bytes, 0);
  size_t largest = ta_class_size[ta_bin_of(18500 + sizeof(ta_mhdr_t)) + 1] - 32;
  char *b = ta_malloc(largest);
  cr_assert_geq(ta_malloc_usable_size(b), largest);
  check_cache(b);
  ta_free(b);
  ta_free(g);
}

Test(mcache, a_request_takes_a_block_of_the_bin_above_when_its_own_has_none) {
  char *big = ta_malloc(21500), *g = guard(); /* 21,516 bytes: the bin of 20 KiB */
  ta_free(big);
  cr_assert(cached(big));
  uint64_t splits = ta_tl_arena->cnt.splits;
  char *p = ta_malloc(19000); /* the bin of 18 KiB, empty */
  cr_assert_eq(p, big);
  cr_assert_eq(ta_tl_arena->cnt.splits, splits, "handed out whole, from the cache");
  cr_assert_eq(ta_tl_arena->mcache_bytes, 0);
  check_cache(p);
  ta_free(p);
  ta_free(g);
}

/* A request the heap can serve only from pages it never touched, while the cache holds a
 * block that holds the request: that block goes back to the heap and serves it, and the
 * other cached blocks stay cached (a whole flush would send them through the heap too). */
Test(mcache, before_the_heap_grows_one_cached_block_that_fits_goes_back_alone) {
  char *x = ta_malloc(50000), *g1 = guard(), *y = ta_malloc(9000), *g2 = guard();
  ta_free(x);
  ta_free(y);
  cr_assert(cached(x) && cached(y));
  ta_arena_t *me = ta_tl_arena;
  uint64_t merges = me->cnt.merges;
  /* The bin of 32 KiB: neither its own nor the bin above holds a block for it, and the heap
   * holds none but its top, which would grow. */
  char *p = ta_malloc(36000);
  cr_assert_eq(p, x, "cut from x's block");
  cr_assert(cached(y), "the rest of the cache stays");
  cr_assert_eq(me->mcache_bytes, block_size(y));
  cr_assert_eq(me->cnt.merges, merges, "x's neighbours are live: nothing merged");
  check_cache(p);
  ta_free(p);
  ta_free(g1);
  ta_free(g2);
}

/* The largest size of the bin of n bytes' request (cache_fit). */
static size_t bin_top(size_t n) { return ta_class_size[ta_bin_of(n + sizeof(ta_mhdr_t)) + 1] - 16; }

/* A realloc in place keeps or takes the size a new block for its request would have, so the
 * block stays one the cache takes: to the same size, grown, shrunk. */
Test(mcache, a_realloc_in_place_resizes_to_the_size_the_cache_takes) {
  char *a = ta_malloc(8193); /* the top follows: room to grow in place */
  cr_assert_eq(block_size(a), bin_top(8193));
  char *b = ta_realloc(a, 8193);
  cr_assert_eq(b, a);
  cr_assert_eq(block_size(b), bin_top(8193), "not cut to the request");
  char *c = ta_realloc(b, 20000);
  cr_assert_eq(c, a, "grown in place");
  cr_assert_eq(block_size(c), bin_top(20000));
  char *d = ta_realloc(c, 9000);
  cr_assert_eq(d, a, "shrunk in place");
  cr_assert_eq(block_size(d), bin_top(9000));
  char *g = guard();
  ta_free(d);
  cr_assert(cached(d));
  check_cache(g);
  ta_free(g);
}

/* The heap would grow and two cached blocks hold the request: the one of the smaller bin goes
 * back, the larger stays. */
Test(mcache, before_the_heap_grows_the_smallest_cached_block_that_fits_goes_back) {
  char *x = ta_malloc(50000), *g1 = guard(), *z = ta_malloc(60000), *g2 = guard();
  ta_free(z);
  ta_free(x);
  cr_assert(cached(x) && cached(z));
  char *p = ta_malloc(36000);
  cr_assert_eq(p, x);
  cr_assert(cached(z));
  check_cache(p);
  ta_free(p);
  ta_free(g1);
  ta_free(g2);
}

/* The heap would grow and no cached block holds the request alone: the whole cache goes back
 * to the heap first. */
Test(mcache, before_the_heap_grows_the_cache_is_flushed_when_no_block_holds_the_request) {
  char *y = ta_malloc(9000), *g1 = guard(), *w = ta_malloc(10000), *g2 = guard();
  ta_free(y);
  ta_free(w);
  cr_assert(cached(y) && cached(w));
  char *p = ta_malloc(36000);
  cr_assert_not(cached(y) || cached(w), "both back in the heap");
  cr_assert_eq(ta_tl_arena->mcache_bytes, 0);
  check_cache(p);
  ta_free(p);
  ta_free(g1);
  ta_free(g2);
}

Test(mcache, only_blocks_of_8_to_64_kib_and_at_most_its_slots_a_bin) {
  enum { N = 12 };
  char *p[N], *g[N];
  guarded(p, g, N, 40000, 0);
  char *past = ta_malloc(66000), *g0 = guard();
  ta_free(past);
  cr_assert(!cached(past), "past 64 KiB: the heap");
  int n = 0;
  for (int i = 0; i < N; i++) {
    ta_free(p[i]);
    n += cached(p[i]);
  }
  cr_assert_eq(n, TA_MCACHE_SLOTS);
  cr_assert_eq(ta_tl_arena->mcache_bytes, TA_MCACHE_SLOTS * block_size(p[0]));
  check_cache(p[0]);
  char *first = ta_malloc(8200), *g9 = guard(); /* 8 KiB and a little: medium, cached */
  ta_free(first);
  cr_assert(cached(first));
  for (int i = 0; i < N; i++) ta_free(g[i]);
  ta_free(g0);
  ta_free(g9);
}

Test(mcache, the_bytes_cached_stay_within_the_bound) {
  enum { N = 40 };
  char *p[N], *g[N];
  guarded(p, g, N, 9000, 1400); /* 9 KiB .. 64 KiB, across the bins */
  for (int i = 0; i < N; i++) {
    ta_free(p[i]);
    cr_assert_leq(ta_tl_arena->mcache_bytes, TA_MCACHE_BYTES);
  }
  cr_assert_gt(ta_tl_arena->mcache_bytes, TA_MCACHE_BYTES / 2, "the cache was used");
  for (int i = 0; i < N; i++) check_cache(g[i]);
  for (int i = 0; i < N; i++) ta_free(g[i]);
}

/* A freed block of 20,000 bytes in the cache, a live one after it (never freed: the tests
 * that use this end in an abort). */
static char *a_cached_block(void) {
  char *a = ta_malloc(20000), *live = ta_malloc(20000);
  (void)live;
  ta_free(a);
  cr_assert(cached(a));
  return a;
}

Test(mcache, a_second_free_of_a_cached_block_aborts, .signal = SIGABRT) {
  char *a = a_cached_block();
  ta_free(a);
}

Test(mcache, another_threads_free_of_a_cached_block_aborts, .signal = SIGABRT) {
  char *a = a_cached_block();
  pthread_t t;
  pthread_create(&t, NULL, free_in_thread, a);
  pthread_join(t, NULL);
}

/* The put checks the headers beside the block as the heap's free does: an overflow out of the
 * block into the header after it, or an underflow into the free block before it (its footer,
 * the word before the block's header), is reported by the put itself, which names the block. */
static void *put_it(void *p) {
  ta_medium_cache_put(ta_tl_arena, hdr_of(p)); /* the put alone: the heap's free checks too */
  return NULL;
}
static void *free_it(void *p) {
  ta_free(p); /* free's own way to the cache (alloc.c, free_medium) */
  return NULL;
}
static void the_call_reports(void *(*call)(void *), char *p, const char *what) {
  char want[128];
  snprintf(want, sizeof want, "%s %p\n", what, (void *)p);
  char *text = abort_text(call, p);
  cr_assert_not_null(strstr(text, want), "the report: %s (not: %s)", text, want);
  free(text);
}
static void the_put_reports(char *p, const char *what) { the_call_reports(put_it, p, what); }
Test(mcache, an_overflow_into_the_next_header_is_reported_by_the_free_that_would_cache) {
  char *p = ta_malloc(20000), *q = ta_malloc(20000);
  ta_free(ta_malloc(20000));           /* the cache takes a block of that bin */
  p[ta_malloc_usable_size(p)] ^= 0x20; /* the low byte of q's size */
  the_put_reports(p, "free(): corrupted heap after pointer");
  (void)q;
}
/* p's PREV_FREE set, the footer of the free block before it 256 bytes off. */
static char *after_a_bad_footer(void) {
  char *a = ta_malloc(20000), *p = ta_malloc(20000), *keep = ta_malloc(20000);
  (void)keep; /* never freed (a precaution: p's neighbour after is a live block) */
  uint32_t max = ta_mcache_max;
  ta_mcache_max = 0; /* a goes to the heap: free, with p's PREV_FREE set */
  ta_free(a);
  ta_mcache_max = max;
  cr_assert(hdr_of(p)->size_flags & TA_M_PREV_FREE);
  ((size_t *)hdr_of(p))[-1] ^= 0x100; /* a's footer: its size */
  return p;
}
Test(mcache, an_underflow_into_the_free_block_before_is_reported_by_the_free_that_would_cache) {
  the_put_reports(after_a_bad_footer(), "free(): corrupted heap before pointer");
}
/* The same from free's own way to the cache, in the owner's light section (allowed from
 * the first block the cache took under the lock), which checks the free block before a
 * block with PREV_FREE inline. */
Test(mcache, an_underflow_into_the_free_block_before_is_reported_by_free_on_its_way_to_the_cache) {
  ta_free(ta_malloc(20000)); /* cached under the lock: light sections allowed from now */
  /* Read once the allocator has started (it registers the barrier then); never set in a
   * ThreadSanitizer build. */
  if (!ta_light_ok) cr_skip_test("no light sections here (no membarrier, or a TSan build)");
  cr_assert(atomic_load(&ta_tl_arena->light_on), "the cache's first block allowed none");
  the_call_reports(free_it, after_a_bad_footer(), "free(): corrupted heap before pointer");
}

/* Another thread's free that checked the block while it was live and pushed it after the
 * owner had cached it: taking it in is a double free, not a second copy in a bin. */
Test(mcache, a_remote_free_that_raced_the_cache_is_a_double_free, .signal = SIGABRT) {
  char *a = a_cached_block();
  ta_block_t *b = (ta_block_t *)a;
  b->key = ta_mark(b); /* what the racing free wrote */
  ta_remote_push(ta_tl_arena, b);
  ta_remote_collect(ta_tl_arena);
}

Test(mcache, realloc_of_a_cached_block_aborts, .signal = SIGABRT) {
  char *a = a_cached_block();
  char *b = ta_realloc(a, 30000);
  (void)b;
}

/* An overflow of a live block into the header of the cached block after it is reported when
 * that block would leave the cache, not signed anew and handed out. */
Test(mcache, an_overflow_into_a_cached_blocks_header_is_reported, .signal = SIGABRT) {
  char *p = ta_malloc(20000), *q = ta_malloc(20000), *keep = ta_malloc(20000);
  ta_free(q);
  cr_assert(cached(q));
  p[ta_malloc_usable_size(p)] ^= 0x20; /* the low byte of q's size: 32 bytes off either way */
  char *r = ta_malloc(19000);          /* q's bin, and q fits */
  cr_log_error("the overflow went unseen (%p)", r);
  (void)keep;
}

Test(mcache, statistics_and_the_heap_map_count_a_cached_block_free) {
  char *a = ta_malloc(30000), *keep = ta_malloc(30000);
  struct ta_stats s0;
  memset(&s0, 0, sizeof s0);
  s0.version = TA_STATS_VERSION;
  s0.size = sizeof s0;
  cr_assert_eq(ta_stats_get(&s0, -1), 0);
  ta_free(a);
  cr_assert(cached(a));
  struct ta_stats s1 = s0;
  cr_assert_eq(ta_stats_get(&s1, -1), 0);
  cr_assert_eq(s1.blocks, s0.blocks - 1, "not live");
  cr_assert_eq(s1.free_bytes, s0.free_bytes + block_size(a) - sizeof(ta_mhdr_t), "free");
  const char *map = heap_map_text();
  char rec[64];
  snprintf(rec, sizeof rec, "block 0x%lx %zu cached\n", (unsigned long)hdr_of(a), block_size(a));
  cr_assert_not_null(strstr(map, rec), "the heap map says cached: %s", rec);
  ta_free(keep);
}

/* malloc takes a cached block without alloc_from's frame (alloc.c, alloc_big), after the same
 * tests: with statistics on, the request is recorded; where spans serve the size, a span
 * comes first; a purger thread asked for is started (the request taken) first. */
Test(mcache, a_cache_hit_records_the_request_while_statistics_are_on) {
  cr_assert_eq(ta_stats_enable(1), 0);
  char *a = ta_malloc(20000), *keep = guard();
  ta_free(a);
  cr_assert(cached(a));
  char *b = ta_malloc(19000);
  cr_assert_eq(b, a, "the cached block, whole");
  struct ta_stats s = {.version = TA_STATS_VERSION, .size = sizeof s};
  cr_assert_eq(ta_stats_get(&s, -1), 0);
  cr_assert(s.requested_tracked);
  cr_assert_eq(s.requested_bytes, 100000 + 19000, "the guard's request and the new one");
  ta_free(b);
  ta_free(keep);
}

/* The cache's tables by KiB answer as the class tables do, at every size a block may have:
 * the bin a request falls in, and whether a block is its bin's largest size (the one the
 * cache keeps), and of which bin. */
Test(mcache, the_tables_by_kib_agree_with_the_classes_at_every_size) {
  cr_assert_eq(TA_MCACHE_MIN, ta_class_size[TA_MCACHE_FIRST]);
  for (size_t need = TA_MCACHE_MIN; need < TA_MCACHE_END; need += TA_ALIGNMENT)
    cr_assert_eq(ta_mcache_bin[need >> 10] + TA_MCACHE_FIRST, ta_bin_of(need), "need %zu", need);
  unsigned tops = 0;
  for (size_t s = TA_ALIGNMENT; s <= 2 * TA_MCACHE_END; s += TA_ALIGNMENT) {
    unsigned b = ta_bin_of(s), i = ta_mcache_top_index(s);
    bool top = b >= TA_MCACHE_FIRST && b < TA_MCACHE_FIRST + TA_MCACHE_CLASSES &&
               s == ta_class_size[b + 1] - TA_ALIGNMENT;
    cr_assert_eq(i, top ? b - TA_MCACHE_FIRST : TA_MCACHE_CLASSES, "size %zu", s);
    tops += top;
  }
  cr_assert_eq(tops, TA_MCACHE_CLASSES, "every cached bin has its top");
}

/* The sizes malloc looks for in the cache (ta_medium_cache_may_serve) are those it can serve:
 * the largest request a block of the last cached bin holds is served from the cache, and the
 * next size up never is (its block would be of no cached bin). */
Test(mcache, the_largest_request_of_the_last_cached_bin_is_served_from_the_cache) {
  cr_assert_eq(TA_MCACHE_END, ta_class_size[TA_MCACHE_FIRST + TA_MCACHE_CLASSES],
               "the constant is where the last cached bin ends");
  size_t largest = TA_MCACHE_END - TA_ALIGNMENT - sizeof(ta_mhdr_t);
  cr_assert(ta_medium_cache_may_serve(largest));
  cr_assert_not(ta_medium_cache_may_serve(largest + 1));
  cr_assert_not(ta_medium_cache_may_serve(TA_SMALL_MAX));
  cr_assert(ta_medium_cache_may_serve(TA_SMALL_MAX + 1));
  char *a = ta_malloc(largest), *keep = guard(), *b = ta_malloc(largest + 1), *keep2 = guard();
  cr_assert_eq(ta_bin_of(block_size(a)), TA_MCACHE_FIRST + TA_MCACHE_CLASSES - 1, "last bin");
  ta_free(a);
  ta_free(b);
  cr_assert(cached(a));
  cr_assert_not(cached(b), "of no cached bin: into the heap");
  char *c = ta_malloc(largest + 1);
  cr_assert_eq(c, b, "from the heap's free block");
  cr_assert(cached(a));
  char *d = ta_malloc(largest);
  cr_assert_eq(d, a, "the cached block, whole");
  ta_free(d);
  ta_free(c);
  ta_free(keep);
  ta_free(keep2);
}

/* A thread's first malloc has no arena yet: the cache it looked at was the sentinel's, and the
 * arena it then adopts may hold cached blocks, which alloc_from still looks for. */
struct adopt_job {
  char *cached, *heap_free, *got;
};
static void *cache_then_exit(void *arg) {
  struct adopt_job *j = arg;
  j->heap_free = ta_malloc(100000); /* past the cache's sizes: a free block of the heap */
  j->cached = ta_malloc(20000);
  (void)guard(); /* left live: keeps the two from merging into the top */
  ta_free(j->cached);
  ta_free(j->heap_free);
  return NULL;
}
static void *first_malloc(void *arg) {
  struct adopt_job *j = arg;
  j->got = ta_malloc(20000);
  return NULL;
}
Test(mcache, a_threads_first_malloc_takes_from_the_cache_of_the_arena_it_adopts) {
  ta_bg_enable(false); /* nothing flushes the cache of the arena left behind */
  struct adopt_job j = {0};
  pthread_t t;
  pthread_create(&t, NULL, cache_then_exit, &j);
  pthread_join(t, NULL);
  cr_assert(cached(j.cached));
  pthread_create(&t, NULL, first_malloc, &j);
  pthread_join(t, NULL);
  cr_assert_eq(j.got, j.cached, "the cached block, not one cut from the heap's free block");
}

Test(mcache, where_spans_serve_the_size_a_span_comes_before_the_cache) {
  char *a = ta_malloc(20000), *keep = guard();
  ta_free(a);
  cr_assert(cached(a));
  size_t min = ta_span_min;
  TA_STORE(ta_span_min, (size_t)16 << 10); /* as ta_span_arenas sets it with 8 threads */
  char *b = ta_malloc(20000);
  TA_STORE(ta_span_min, min);
  cr_assert_eq(ta_map_get((uintptr_t)b), TA_MAP_SPAN, "a span, as alloc_from gives");
  cr_assert(cached(a), "the cached block stays");
  ta_free(b);
  ta_free(keep);
}

Test(mcache, a_cache_hit_takes_the_request_for_the_purger_thread) {
  ta_bg_enable(false); /* taken, not started: the test makes no thread */
  char *a = ta_malloc(20000), *keep = guard();
  ta_free(a);
  cr_assert(cached(a));
  ta_bg_request();
  char *b = ta_malloc(20000);
  cr_assert_eq(atomic_load(&ta_bg_wanted.v), 0, "the request reached ta_bg_maybe_start");
  cr_assert_eq(b, a, "then the cached block");
  ta_free(b);
  ta_free(keep);
}

Test(mcache, the_purge_flushes_the_cache_a_decay_time_after_its_first_block) {
  ta_decay_ms = 1000;
  char *a = ta_malloc(20000), *b = ta_malloc(20000), *keep = ta_malloc(20000);
  ta_arena_t *me = ta_tl_arena;
  ta_free(a);
  uint64_t since = me->mcache_since;
  cr_assert_neq(since, 0);
  cr_assert_leq(atomic_load(&me->purge_due), since + ta_decay_ms, "the flush is due");
  ta_free(b);
  cr_assert_eq(me->mcache_since, since, "the first block's time");
  ta_arena_purge(me, since + ta_decay_ms - 1, false, ta_decay_ms, true);
  cr_assert(cached(a) && cached(b), "not yet");
  cr_assert_eq(atomic_load(&me->purge_due), since + ta_decay_ms, "still due then");
  ta_arena_purge(me, since + ta_decay_ms, false, ta_decay_ms, true);
  cr_assert_eq(me->mcache_bytes, 0);
  cr_assert_eq(me->mcache_since, 0, "the next put notes its own time");
  check_cache(keep);
  /* In the heap now: a and b merged with the rest of the chunk below keep. */
  cr_assert_eq(hdr_of(b)->size_flags, 0, "b's meta block swallowed");
  cr_assert_eq(hdr_of(a)->size_flags & TA_M_INUSE, 0, "a free block");
  walk_chunk(keep); /* and the heap's invariants hold */
  ta_free(keep);
}

/* free's rarer puts, made in its light section once the arena allows them (alloc.c,
 * free_medium: tail calls of their own): a block after a free one, its footer checked, and the first block
 * after a flush, which starts the flush clock; the section is left and the lock free after
 * each. */
Test(mcache, a_free_caches_a_block_after_a_free_one_and_starts_the_clock_after_a_flush) {
  ta_decay_ms = 1000;
  char *a = ta_malloc(20000), *p = ta_malloc(20000), *x = ta_malloc(20000);
  char *q = ta_malloc(20000), *keep = guard();
  ta_arena_t *me = ta_tl_arena;
  uint32_t max = ta_mcache_max;
  ta_mcache_max = 0; /* a goes to the heap: free, with p's PREV_FREE set */
  ta_free(a);
  ta_mcache_max = max;
  ta_free(ta_malloc(40000)); /* a put under the lock: light sections allowed from now on */
  if (!ta_light_ok) cr_skip_test("no light sections here (no membarrier, or a TSan build)");
  cr_assert(atomic_load(&me->light_on), "allowed");
  ta_arena_purge(me, ta_os_now_ms(), TA_PURGE_ALL, 0, true); /* the cache flushed */
  cr_assert_eq(me->mcache_bytes, 0);
  cr_assert_eq(me->mcache_since, 0, "no clock while it holds nothing");
  cr_assert(hdr_of(p)->size_flags & TA_M_PREV_FREE, "a free block before p");
  ta_free(p);
  cr_assert(cached(p), "a block after a free one is cached too");
  cr_assert_neq(me->mcache_since, 0, "the first put after the flush started the clock");
  cr_assert_leq(atomic_load(&me->purge_due), me->mcache_since + ta_decay_ms, "the flush is due");
  cr_assert_eq(atomic_load(&me->light), 0, "out of the section");
  cr_assert_eq(atomic_load(&me->slow), 0, "the lock free");
  ta_arena_purge(me, ta_os_now_ms(), TA_PURGE_ALL, 0, true);
  cr_assert_eq(me->mcache_since, 0);
  cr_assert_eq(hdr_of(q)->size_flags & TA_M_PREV_FREE, 0, "x, before q, is live");
  ta_free(q);
  cr_assert(cached(q));
  cr_assert_neq(me->mcache_since, 0, "started by the put's own path too");
  cr_assert_eq(atomic_load(&me->light), 0);
  cr_assert_eq(atomic_load(&me->slow), 0);
  check_cache(keep);
  walk_chunk(keep);
  ta_free(x);
  ta_free(keep);
}

/* A hit whose round of chores is due (alloc.c, alloc_cached_chores) takes its block first,
 * whole, then does the round: the flush it makes takes the other cached blocks, not that one.
 * Were the round first, the flush would merge the block with the free one before it. */
Test(mcache, a_hit_whose_round_is_due_takes_its_block_then_does_the_chores) {
  ta_decay_ms = 50;
  char *x = ta_malloc(20000), *a = ta_malloc(20000), *g = guard();
  char *c = ta_malloc(40000), *keep = guard();
  ta_arena_t *me = ta_tl_arena;
  uint32_t max = ta_mcache_max;
  ta_mcache_max = 0; /* x goes to the heap: a free block before a */
  ta_free(x);
  ta_mcache_max = max;
  ta_free(a);
  ta_free(c);
  cr_assert(cached(a) && cached(c));
  cr_assert(hdr_of(a)->size_flags & TA_M_PREV_FREE);
  nap_ms(300);         /* the flush is due */
  me->chores_skip = 0; /* this request counts the round out */
  uint64_t merges = me->cnt.merges;
  char *b = ta_malloc(20000);
  cr_assert_eq(b, a, "the cached block, whole");
  cr_assert_eq(me->cnt.merges, merges, "a not flushed first: no merge with x");
  cr_assert(!cached(c), "the round flushed what stayed cached");
  cr_assert_eq(me->mcache_bytes, 0);
  cr_assert_eq(me->chores_skip, TA_CHORES_EVERY - 1, "and a new round began");
  walk_chunk(keep);
  ta_free(b);
  ta_free(g);
  ta_free(keep);
}

Test(mcache, trim_empties_the_cache) {
  char *a = ta_malloc(20000), *keep = ta_malloc(20000);
  ta_free(a);
  cr_assert(cached(a));
  ta_malloc_trim(0);
  cr_assert_eq(ta_tl_arena->mcache_bytes, 0);
  cr_assert(!cached(a));
  cr_assert_eq(hdr_of(a)->size_flags & TA_M_INUSE, 0);
  ta_free(keep);
}

/* Another thread's free that checked the block while it was live and pushed it after the owner
 * had cached it and taken in its remote frees: the request that would hand it out again finds
 * the free mark and reports it. */
Test(mcache, a_cached_block_marked_by_a_racing_free_is_not_handed_out, .signal = SIGABRT) {
  char *a = a_cached_block();
  ((ta_block_t *)a)->key = ta_mark(a); /* what the racing free wrote */
  char *b = ta_malloc(20000);
  cr_log_error("handed out a block another thread freed (%p)", b);
}

Test(mcache, a_purge_for_the_budget_leaves_the_cache) {
  char *a = ta_malloc(20000), *keep = ta_malloc(20000);
  ta_free(a);
  ta_arena_t *me = ta_tl_arena;
  ta_arena_purge(me, me->mcache_since + 1, false, 0, true); /* ta_purge_excess's last age */
  cr_assert(cached(a), "the budget does not count it: flushing it gives nothing back");
  ta_arena_purge(me, me->mcache_since + 1, TA_PURGE_ALL, 0, true);
  cr_assert(!cached(a), "a full purge flushes it");
  ta_free(keep);
}

/* A request that no bin can serve takes the cached blocks back into the heap, merged, before
 * it maps a new chunk. */
Test(mcache, a_request_the_heap_cannot_serve_flushes_the_cache_first) {
  char *b[4];
  for (int i = 0; i < 4; i++) b[i] = ta_malloc(40000);
  char *g = guard();
  cr_assert_eq(walk_chunk(g).free_blocks, 1, "the top alone");
  char *rest[8];
  int nrest = 0;
  for (struct walk w; (w = walk_chunk(g)).free_blocks > 0;) { /* the whole top, in medium blocks */
    cr_assert_lt(nrest, 8);
    size_t take = w.free_bytes - sizeof(ta_mhdr_t);
    rest[nrest] = ta_malloc(take > 900000 ? 900000 : take);
    cr_assert_eq(ta_chunk_of(rest[nrest]), ta_chunk_of(g));
    nrest++;
  }
  for (int i = 0; i < 4; i++) ta_free(b[i]);
  cr_assert(cached(b[0]) && cached(b[3]));
  char *p = ta_malloc(150000); /* past the cache's sizes; fits the four merged */
  cr_assert_eq(p, b[0], "served from the flushed blocks, not from a new chunk");
  cr_assert_eq(ta_tl_arena->mcache_bytes, 0);
  ta_free(p);
  ta_free(g);
  for (int i = 0; i < nrest; i++) ta_free(rest[i]);
}

/* A request the cache serves does the slow path's chores once every TA_CHORES_EVERY such
 * requests (alloc.c, chores_sometimes): what is due goes back within that many, though none of
 * them takes new memory. */
Test(mcache, cache_hits_give_back_what_is_due_within_a_round_of_chores) {
  ta_decay_ms = 50;
  char *a = ta_malloc(20000), *c = ta_malloc(40000), *keep = guard();
  ta_arena_t *me = ta_tl_arena;
  ta_free(a);
  /* the mallocs above missed the cache: each did the chores, and a round begins */
  ta_free(c);                /* cached, in a bin of its own */
  cr_assert(cached(a) && cached(c));
  nap_ms(300); /* the flush is due: past the owner's decay time, many times over */
  int hits = 0;
  while (me->mcache_n[ta_bin_of(block_size(c)) - TA_MCACHE_FIRST] != 0 && hits < TA_CHORES_EVERY) {
    char *b = ta_malloc(20000);
    cr_assert_eq(b, a, "the cached block, whole");
    ta_free(b);
    hits++;
  }
  cr_assert_eq(me->mcache_n[ta_bin_of(block_size(a)) - TA_MCACHE_FIRST], 1, "a is cached again");
  cr_assert(!cached(c), "c not back in the heap after %d cache hits", hits);
  cr_assert_gt(hits, 1, "not at the first: the round's chores were done");
  check_cache(keep);
  walk_chunk(keep);
  ta_free(keep);
}

/* ... and takes in what other threads freed into the arena. */
Test(mcache, cache_hits_take_in_other_threads_frees_within_a_round_of_chores) {
  char *a = ta_malloc(20000), *r = ta_malloc(30000), *keep = guard();
  ta_arena_t *me = ta_tl_arena;
  ta_free(a);
  /* the mallocs above missed the cache: each did the chores, and a round begins */
  pthread_t t;
  pthread_create(&t, NULL, free_in_thread, r);
  pthread_join(t, NULL);
  cr_assert(ta_remote_waiting(me, memory_order_relaxed), "r waits on the owner's list");
  uint64_t taken = me->cnt.remote_frees;
  int hits = 0;
  while (me->cnt.remote_frees == taken && hits < TA_CHORES_EVERY) {
    char *b = ta_malloc(20000);
    cr_assert_eq(b, a, "the cached block, whole");
    ta_free(b);
    hits++;
  }
  cr_assert_eq(me->cnt.remote_frees, taken + 1, "r not taken in after %d cache hits", hits);
  cr_assert_gt(hits, 1, "not at the first: the round's chores were done");
  cr_assert(!ta_remote_waiting(me, memory_order_relaxed));
  cr_assert_eq(hdr_of(r)->size_flags & TA_M_INUSE, 0, "r is a free block of the heap");
  walk_chunk(keep);
  ta_free(keep);
}

/* The huge cache, which no purger thread gives back here, is looked at on every such request:
 * the next call may be a long way off. Exited threads' arenas wait for the round (where
 * threads come and go one is due most of the time; the purger thread does them on time). */
Test(mcache, a_cache_hit_gives_back_the_huge_cache_when_due) {
  ta_decay_ms = 20;
  char *a = ta_malloc(20000), *keep = guard();
  ta_free(a);
  /* the mallocs above missed the cache: each did the chores, and a round begins */
  char *h = ta_malloc((size_t)6 << 20);
  memset(h, 1, (size_t)6 << 20);
  ta_free(h);
  cr_assert_eq(ta_huge_cached_count(), 1);
  nap_ms(150);
  char *b = ta_malloc(20000); /* the first hit of the round */
  cr_assert_eq(b, a, "the cached block");
  cr_assert_eq(ta_huge_cached_count(), 0, "the huge span was not given back by the hit");
  ta_free(b);
  ta_free(keep);
}

static void *small_blocks_and_exit(void *arg) {
  void **out = arg;
  for (int i = 0; i < 8; i++)
    out[i] = ta_malloc(64);
  return NULL;
}

Test(mcache, cache_hits_take_in_what_was_freed_into_an_exited_threads_arena_within_a_round) {
  ta_decay_ms = 20;
  char *a = ta_malloc(20000), *keep = guard();
  ta_free(a);
  /* the mallocs above missed the cache: each did the chores, and a round begins */
  void *blocks[8];
  pthread_t t;
  pthread_create(&t, NULL, small_blocks_and_exit, blocks);
  pthread_join(t, NULL);
  ta_arena_t *orphan = ta_run_of(blocks[0])->owner;
  ta_free(blocks[0]); /* onto the list of an arena nobody owns */
  cr_assert(ta_remote_waiting(orphan, memory_order_relaxed));
  cr_assert_neq(atomic_load(&ta_orphan_due), 0, "an orphan purge is due");
  nap_ms(150);
  int hits = 0;
  while (ta_remote_waiting(orphan, memory_order_relaxed) && hits < TA_CHORES_EVERY) {
    char *b = ta_malloc(20000);
    cr_assert_eq(b, a, "the cached block");
    ta_free(b);
    hits++;
  }
  cr_assert(!ta_remote_waiting(orphan, memory_order_relaxed), "not taken in after %d cache hits",
            hits);
  cr_assert_gt(hits, 1, "not at the first hit: the arenas of exited threads wait for the round");
  for (int i = 1; i < 8; i++)
    ta_free(blocks[i]);
  ta_free(keep);
}

/* Once the process has had 8 threads at once, spans serve most of the cache's sizes and each
 * thread's cache is memory no other can use: it holds a quarter as much. */
static pthread_barrier_t all_in;

static void *hold_an_arena(void *arg) {
  (void)arg;
  void *p = ta_malloc(64);
  pthread_barrier_wait(&all_in);
  ta_free(p);
  return NULL;
}

Test(mcache, from_8_arenas_on_the_cache_holds_a_quarter) {
  ta_free(ta_malloc(64)); /* this thread's arena */
  pthread_t t[TA_FEW_ARENAS - 1];
  pthread_barrier_init(&all_in, NULL, TA_FEW_ARENAS);
  for (int i = 0; i < TA_FEW_ARENAS - 1; i++)
    pthread_create(&t[i], NULL, hold_an_arena, NULL);
  pthread_barrier_wait(&all_in); /* 8 arenas at once */
  for (int i = 0; i < TA_FEW_ARENAS - 1; i++)
    pthread_join(t[i], NULL);
  cr_assert_geq(atomic_load(&ta_arena_count), TA_FEW_ARENAS);
  enum { N = 40 };
  char *p[N], *g[N];
  guarded(p, g, N, 9000, 1400); /* 9 KiB .. 64 KiB, across the bins */
  for (int i = 0; i < N; i++) {
    ta_free(p[i]);
    cr_assert_leq(ta_tl_arena->mcache_bytes, TA_MCACHE_BYTES / 4);
  }
  cr_assert_gt(ta_tl_arena->mcache_bytes, TA_MCACHE_BYTES / 8, "the cache was used");
  for (int i = 0; i < N; i++)
    check_cache(g[i]);
  for (int i = 0; i < N; i++)
    ta_free(g[i]);
}

/* A request the cache cannot serve that would take pages the heap never touched, from its
 * top, takes the cached blocks back into the heap first: the cache never adds to the
 * heap's peak. Within pages the top touched before, the cache stays. */
Test(mcache, a_request_that_grows_the_heap_flushes_the_cache_first) {
  char *a = ta_malloc(20000), *g = guard();
  ta_free(a);
  cr_assert(cached(a));
  char *p = ta_malloc(30000); /* another bin, and only the top's fresh pages fit it */
  cr_assert(!cached(a), "the cache was kept while the heap grew");
  cr_assert_eq(ta_tl_arena->mcache_bytes, 0);
  walk_chunk(g);
  ta_free(p);
  ta_free(g);
}

Test(mcache, a_request_within_pages_the_top_touched_keeps_the_cache) {
  char *a = ta_malloc(20000), *g = guard(), *y = ta_malloc(90000); /* past the cache's sizes */
  ta_free(y); /* into the top, whose pages it touched */
  ta_free(a);
  cr_assert(cached(a));
  char *p = ta_malloc(30000); /* from the top, within what y touched */
  cr_assert(cached(a), "the cache was flushed though the heap did not grow");
  check_cache(g);
  ta_free(p);
  ta_free(g);
}

/* A vector grown by realloc grows in place into a successor that waits in the cache. */
Test(mcache, realloc_grows_in_place_into_a_cached_successor) {
  char *a = ta_malloc(20000), *b = ta_malloc(20000), *keep = guard();
  memset(a, 7, 20000);
  ta_free(b);
  cr_assert(cached(b));
  char *g = ta_realloc(a, 36000);
  cr_assert_eq(g, a, "grown in place");
  cr_assert_eq(ta_tl_arena->mcache_bytes, 0, "b left the cache");
  for (size_t i = 0; i < 20000; i++) cr_assert_eq(g[i], 7);
  check_cache(g);
  walk_chunk(g);
  ta_free(g);
  ta_free(keep);
}

/* ... with the free block after it too; and not when the two would not make room enough. */
Test(mcache, realloc_grows_into_a_cached_successor_and_the_free_block_after_it) {
  char *a = ta_malloc(20000), *b = ta_malloc(20000), *c = ta_malloc(100000), *keep = guard();
  ta_free(c); /* past 64 KiB: into the heap */
  ta_free(b);
  cr_assert(cached(b));
  char *g = ta_realloc(a, 130000);
  cr_assert_eq(g, a, "grown in place over b and c");
  cr_assert_eq(hdr_of(b)->size_flags, 0, "b's meta block swallowed");
  cr_assert_eq(ta_tl_arena->mcache_bytes, 0);
  walk_chunk(g);
  ta_free(g);
  ta_free(keep);
}

Test(mcache, a_cached_successor_that_makes_no_room_stays_cached) {
  char *a = ta_malloc(20000), *b = ta_malloc(20000), *keep = guard();
  ta_free(guard()); /* the top has touched pages for the move below: the heap does not grow */
  ta_free(b);
  cr_assert(cached(b));
  cr_assert_eq(ta_xallocx(a, 60000, 0, 0), ta_malloc_usable_size(a), "xallocx: not in place");
  cr_assert(cached(b), "left in the cache");
  char *g = ta_realloc(a, 60000);
  cr_assert_neq(g, a, "moved");
  cr_assert(cached(b));
  check_cache(g);
  ta_free(g);
  ta_free(keep);
}

/* ---- light sections: the owner's cache puts and takes without the lock's CAS -------- */

static _Atomic int lock_taken;

static _Atomic int lock_was_synced = -1;

/* Takes the lock, and says whether it waited out a light section (the word's low bit); a
 * taking nested in it (a signal handler's) finds the word its own with that bit set. */
static void *take_the_lock(void *arg) {
  ta_arena_t *a = arg;
  ta_slow_enter(a);
  atomic_store(&lock_was_synced, (atomic_load(&a->slow) & TA_SLOW_SYNCED) != 0);
  bool nested = ta_slow_try_enter_beside(a) && a->slow_nest == 1;
  ta_slow_leave(a);
  if (!nested || atomic_load(&a->slow) == 0) atomic_store(&lock_was_synced, -1);
  atomic_store(&lock_taken, 1);
  ta_slow_leave(a);
  return NULL;
}

/* A thread sanitizer build never runs light sections (it cannot see the barrier): it has only
 * the test of the lock taken instead, at the end. */
#if !defined(TA_TSAN)
static _Atomic int lock_let_go;

/* A block into the cache under the lock: the arena allows light sections from then on. */
static ta_arena_t *light_arena(void) {
  atomic_store(&lock_taken, 0);
  atomic_store(&lock_let_go, 0);
  ta_free(ta_malloc(20000));
  ta_arena_t *me = ta_tl_arena;
  cr_assert(ta_light_ok, "the kernel makes every thread pass a barrier (membarrier)");
  cr_assert(atomic_load(&me->light_on), "allowed by a put under the lock");
  return me;
}

/* It waits for the section to end, not holding the lock meanwhile: a signal handler's call
 * on the owner's thread, which waits for the lock, would otherwise never let the section end. */
Test(light, another_thread_that_takes_the_lock_waits_for_the_owner_to_leave) {
  ta_arena_t *me = light_arena();
  uint64_t barriers = ta_os_calls(TA_OS_BARRIER);
  cr_assert(ta_light_enter(me));
  pthread_t t;
  pthread_create(&t, NULL, take_the_lock, me);
  nap_ms(100);
  cr_assert_eq(atomic_load(&lock_taken), 0, "it waits for the light section to end");
  cr_assert_geq(ta_os_calls(TA_OS_BARRIER), barriers + 1, "after a barrier");
  cr_assert(ta_slow_held_by_me(me), "a fork would find the owner inside");
  cr_assert(ta_slow_try_enter(me), "the lock is free meanwhile");
  cr_assert_eq(me->slow_nest, 0, "taken once");
  ta_slow_leave(me);
  uint64_t before_end = ta_os_calls(TA_OS_BARRIER);
  ta_light_leave(me);
  pthread_join(t, NULL);
  cr_assert_eq(atomic_load(&lock_taken), 1);
  cr_assert_eq(atomic_load(&lock_was_synced), 1, "held, marked as having waited, and nestable");
  cr_assert_eq(ta_os_calls(TA_OS_BARRIER), before_end + 1, "one barrier once it has ended");
  cr_assert_eq(atomic_load(&me->light), 0);
}

static _Atomic int try_result = -1;

static void *try_the_lock(void *arg) {
  ta_arena_t *a = arg;
  bool got = ta_slow_try_enter(a);
  atomic_store(&try_result, got);
  if (got) ta_slow_leave(a);
  return NULL;
}

/* The purger only tries: an owner that stays inside makes the lock busy for it. */
Test(light, a_try_gives_up_on_an_owner_that_stays_inside_and_lets_the_lock_go) {
  ta_arena_t *me = light_arena();
  cr_assert(ta_light_enter(me));
  pthread_t t;
  pthread_create(&t, NULL, try_the_lock, me);
  pthread_join(t, NULL);
  cr_assert_eq(atomic_load(&try_result), 0, "busy");
  cr_assert_eq(atomic_load(&me->slow), 0, "let go");
  ta_light_leave(me);
  pthread_create(&t, NULL, try_the_lock, me);
  pthread_join(t, NULL);
  cr_assert_eq(atomic_load(&try_result), 1, "had once the section ended");
}

static void *hold_beside(void *arg) {
  ta_arena_t *a = arg;
  if (!ta_slow_try_enter_beside(a)) return NULL; /* the test waits, and times out */
  atomic_store(&lock_taken, 1);
  while (!atomic_load(&lock_let_go))
    sched_yield();
  ta_slow_leave(a);
  return NULL;
}

/* A run slot's lender takes the lock without waiting: the owner inside is then not the
 * holder, and a fork would make the arena a zombie, not set it aside for the owner. */
Test(light, the_lock_taken_beside_a_light_section_is_not_the_owners) {
  ta_arena_t *me = light_arena();
  uint64_t barriers = ta_os_calls(TA_OS_BARRIER);
  cr_assert(ta_light_enter(me));
  cr_assert(ta_slow_held_by_me(me));
  pthread_t t;
  pthread_create(&t, NULL, hold_beside, me);
  while (!atomic_load(&lock_taken))
    sched_yield();
  cr_assert(ta_slow_held(me));
  cr_assert(!ta_slow_held_by_me(me), "another thread holds the lock");
  cr_assert_eq(ta_os_calls(TA_OS_BARRIER), barriers, "no barrier beside");
  atomic_store(&lock_let_go, 1);
  pthread_join(t, NULL);
  ta_light_leave(me);
}

static _Atomic int allowed_while_had;

static void *hold_beside_50_ms(void *arg) {
  ta_arena_t *a = arg;
  if (!ta_slow_try_enter_beside(a)) return NULL;
  atomic_store(&lock_taken, 1);
  nap_ms(50);
  atomic_store(&lock_let_go, 1);
  ta_slow_leave(a);
  return NULL;
}

/* A signal handler's call cuts into the owner's light section and needs the lock another
 * thread holds: it takes it once that thread lets go, though its own section has not ended. */
Test(light, the_owners_own_call_inside_its_section_takes_the_lock_once_free, .timeout = 10) {
  ta_arena_t *me = light_arena();
  cr_assert(ta_light_enter(me));
  pthread_t t;
  pthread_create(&t, NULL, hold_beside_50_ms, me);
  while (!atomic_load(&lock_taken))
    sched_yield();
  ta_slow_enter(me); /* as the handler's free would, the section cut into */
  cr_assert_eq(atomic_load(&lock_let_go), 1);
  cr_assert_eq(me->slow_nest, 0, "taken once");
  ta_slow_leave(me);
  ta_light_leave(me);
  pthread_join(t, NULL);
}

/* The kernel refuses the barrier after start: light sections stop everywhere, the taker
 * goes on once the owner's mark is clear, and the arena forbids them. */
Test(light, a_barrier_refused_later_stops_light_sections) {
  ta_arena_t *me = light_arena();
  char *p = ta_malloc(20000), *keep = guard();
  ta_os_fail(TA_OS_BARRIER, 0, 1000);
  pthread_t t;
  pthread_create(&t, NULL, take_the_lock, me);
  pthread_join(t, NULL);
  ta_os_fail(TA_OS_BARRIER, 0, 0);
  cr_assert_eq(atomic_load(&lock_taken), 1, "taken");
  cr_assert(!atomic_load(&ta_light_ok), "stopped for every arena");
  cr_assert(!atomic_load(&me->light_on), "and forbidden in this one");
  cr_assert(!ta_light_enter(me));
  ta_free(p);
  cr_assert(cached(p), "the cache works under the lock");
  cr_assert_eq(ta_malloc(20000), p);
  check_cache(keep);
  ta_free(p);
  ta_free(keep);
}

static void *cache_and_exit(void *arg) {
  ta_arena_t **out = arg;
  ta_free(ta_malloc(20000));
  *out = ta_tl_arena;
  atomic_store(&allowed_while_had, atomic_load(&(*out)->light_on));
  return NULL;
}

/* The thread that had the arena gives it up: none runs a light section of it any more, and
 * those who take its lock do not wait (the orphan purge, the next thread to claim it). */
Test(light, an_arena_given_up_allows_none_until_its_next_thread_allows_its_own) {
  ta_free(ta_malloc(64));
  ta_arena_t *a = NULL;
  pthread_t t;
  pthread_create(&t, NULL, cache_and_exit, &a);
  pthread_join(t, NULL);
  cr_assert_neq(a, ta_tl_arena);
  cr_assert(atomic_load(&allowed_while_had));
  cr_assert(!atomic_load(&a->light_on), "forbidden when its thread left");
  uint64_t barriers = ta_os_calls(TA_OS_BARRIER);
  ta_slow_enter(a);
  ta_slow_leave(a);
  cr_assert_eq(ta_os_calls(TA_OS_BARRIER), barriers, "its lock taken without a barrier");
  ta_arena_t *b = NULL;
  atomic_store(&allowed_while_had, 0);
  pthread_create(&t, NULL, cache_and_exit, &b);
  pthread_join(t, NULL);
  cr_assert_eq(b, a, "the next thread claimed it");
  cr_assert(atomic_load(&allowed_while_had), "and allowed its own");
}

static void *hold_the_lock(void *arg) {
  ta_arena_t *a = arg;
  ta_slow_enter(a);
  atomic_store(&lock_taken, 1);
  nap_ms(100);
  atomic_store(&lock_let_go, 1);
  ta_slow_leave(a);
  return NULL;
}

Test(light, the_owner_takes_the_lock_while_another_thread_holds_it) {
  ta_arena_t *me = light_arena();
  char *p = ta_malloc(20000), *keep = guard();
  pthread_t t;
  pthread_create(&t, NULL, hold_the_lock, me);
  while (!atomic_load(&lock_taken))
    sched_yield();
  cr_assert(!ta_light_enter(me), "no light section while the lock is held");
  cr_assert_eq(atomic_load(&me->light), 0, "and no mark left");
  ta_free(p); /* into the cache, under the lock: it waits */
  cr_assert_eq(atomic_load(&lock_let_go), 1, "the free waited for the lock");
  pthread_join(t, NULL);
  cr_assert(cached(p));
  check_cache(keep);
  ta_free(keep);
}

static _Atomic int light_stop;
static _Atomic unsigned long light_flushes;

/* Another thread's purges of the owner's arena, each flushing its cache (as the background
 * purger's visit does once the flush is due). */
static void *flush_again_and_again(void *arg) {
  ta_arena_t *a = arg;
  while (!atomic_load(&light_stop)) {
    ta_purge_owned_now(a, ta_os_now_ms() + 3600 * 1000);
    atomic_fetch_add(&light_flushes, 1);
  }
  return NULL;
}

Test(light, the_cache_stays_whole_while_another_thread_flushes_it) {
  ta_arena_t *me = light_arena();
  char *keep = guard(), *live[8] = {0};
  cr_assert(ta_light_enter(me), "the owner's steps are light sections");
  ta_light_leave(me);
  pthread_t t;
  pthread_create(&t, NULL, flush_again_and_again, me);
  uint64_t barriers = ta_os_calls(TA_OS_BARRIER);
  for (unsigned i = 0; i < 400000 || atomic_load(&light_flushes) < 200; i++) {
    unsigned k = i % 8;
    if (live[k] != NULL) {
      cr_assert_eq(((unsigned char *)live[k])[100], (unsigned char)k, "the block kept its data");
      ta_free(live[k]);
    }
    live[k] = ta_malloc(9000 + (i * 2654435761u) % 40000); /* cached sizes of 8 bins */
    memset(live[k] + 64, (int)k, 64);
  }
  atomic_store(&light_stop, 1);
  pthread_join(t, NULL);
  cr_assert_geq(ta_os_calls(TA_OS_BARRIER) - barriers, 200, "a barrier for each purge");
  check_cache(keep);
  walk_chunk(keep);
  for (unsigned k = 0; k < 8; k++)
    ta_free(live[k]);
  ta_free(keep);
}

static _Atomic int light_inside, light_go;

static void *wait_in_a_light_section(void *arg) {
  ta_arena_t **out = arg;
  ta_free(ta_malloc(20000)); /* allows them (light_arena) */
  ta_arena_t *a = *out = ta_tl_arena;
  atomic_store(&light_inside, ta_light_enter(a) ? 1 : 2);
  while (!atomic_load(&light_go))
    sched_yield();
  ta_light_leave(a);
  return NULL;
}

/* The child has no thread inside the section to end it: the arena is never used there. */
Test(light, a_fork_child_never_uses_an_arena_caught_in_a_light_section) {
  ta_free(ta_malloc(64));
  ta_arena_t *a = NULL;
  pthread_t t;
  pthread_create(&t, NULL, wait_in_a_light_section, &a);
  while (!atomic_load(&light_inside))
    sched_yield();
  cr_assert_eq(atomic_load(&light_inside), 1, "the thread is inside");
  pid_t pid = fork();
  if (pid == 0) _exit(atomic_load(&a->state) == ARENA_ZOMBIE ? 0 : 4);
  atomic_store(&light_go, 1);
  pthread_join(t, NULL);
  int st;
  waitpid(pid, &st, 0);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
}
#endif

Test(light, without_the_kernels_barrier_the_owner_always_takes_the_lock) {
  ta_free(ta_malloc(64)); /* started: the barrier registered or not */
  ta_os_fail(TA_OS_BARRIER, 0, 1);
  cr_assert(!ta_os_barrier_register(), "registering fails when made to");
  ta_light_ok = false; /* as a start where it failed */
  ta_light_forbid(ta_tl_arena); /* the first small block's refill allowed them */
  char *p = ta_malloc(20000), *keep = guard();
  ta_free(p);
  ta_arena_t *me = ta_tl_arena;
  cr_assert(cached(p));
  cr_assert(!atomic_load(&me->light_on), "not allowed");
  cr_assert(!ta_light_enter(me));
  uint64_t barriers = ta_os_calls(TA_OS_BARRIER);
  pthread_t t;
  pthread_create(&t, NULL, take_the_lock, me);
  pthread_join(t, NULL);
  cr_assert_eq(ta_os_calls(TA_OS_BARRIER), barriers, "no barrier asked for");
  cr_assert_eq(atomic_load(&lock_was_synced), 0, "nor marked as waited for, yet nestable");
  cr_assert_eq(ta_malloc(20000), p, "the cache serves as before");
  check_cache(keep);
  ta_free(p);
  ta_free(keep);
}
