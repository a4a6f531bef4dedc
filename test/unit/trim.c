/* Unit tests: malloc_trim(0) gives back every free page, medium holes of any size included. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "tamalloc.h"
#include "tatest.h"

/* Free medium blocks of `size` between live ones (so they cannot merge), all written. */
enum { N = 64 };
typedef struct {
  size_t size;
  char *keep[N], *hole[N];
  int not_medium;         /* holes that were not medium blocks: the test thread asserts none */
  _Atomic int made, done; /* the thread's holes are made; the test is done with them */
} holes_t;

static void make_holes(holes_t *h) {
  /* Classes of 1 KiB and more cold, as in a program (the unit tier gives every class runs at
   * once), however many of a class are live: holes under 8 KiB are then the medium heap's
   * ("Small classes from the medium heap") */
  ta_run_threshold = 1000;
  ta_cold_live_max = SIZE_MAX;
  for (int i = 0; i < N; i++) {
    h->hole[i] = ta_malloc(h->size);
    h->keep[i] = ta_malloc(h->size);
    h->not_medium += ta_map_get((uintptr_t)h->hole[i]) != TA_MAP_MEDIUM;
    memset(h->hole[i], 7, h->size);
    memset(h->keep[i], 7, h->size);
  }
  for (int i = 0; i < N; i++) ta_free(h->hole[i]);
}

/* The pages wholly inside the holes, and how many of them are resident: strictly inside, past
 * the four words a free block keeps at its start (its links, its time and its resident bytes:
 * medium.c) and before its footer. */
static size_t inner_pages(const holes_t *h, size_t *resident) {
  size_t pages = 0;
  *resident = 0;
  for (int i = 0; i < N; i++) {
    uintptr_t lo =
        ta_align_up((uintptr_t)(ta_medium_res((ta_mhdr_t *)h->hole[i] - 1) + 1), ta_page_size);
    uintptr_t hi =
        ((uintptr_t)h->hole[i] + h->size - sizeof(size_t)) & ~(uintptr_t)(ta_page_size - 1);
    if (hi <= lo) continue;
    pages += (hi - lo) / ta_page_size;
    *resident += ta_os_resident((void *)lo, hi - lo) / ta_page_size;
  }
  return pages;
}

/* Before the trim: the holes are medium blocks, and every page inside them is resident (they
 * were written, and nothing before the trim gives such pages back), so that the trim is what
 * the test sees give them back. */
static void assert_holes_resident(const holes_t *h) {
  cr_assert_eq(h->not_medium, 0, "%d of %d holes of %zu bytes are not medium blocks", h->not_medium,
               N, h->size);
  size_t resident, pages = inner_pages(h, &resident);
  cr_assert_eq(resident, pages, "only %zu of %zu pages of %zu-byte holes resident before the trim",
               resident, pages, h->size);
}

/* malloc_trim(0), after which no page wholly inside a hole is resident. False, with nothing
 * asserted of the trim, where no page of the size in force lies wholly inside a hole. */
static bool trim_gives_holes_back(const holes_t *h) {
  assert_holes_resident(h);
  ta_malloc_trim(0);
  size_t resident, pages = inner_pages(h, &resident);
  if (pages == 0) return false;
  cr_assert_eq(resident, 0, "%zu of %zu pages of %zu-byte holes still resident", resident, pages,
               h->size);
  return true;
}

static void skip_without_pages(bool had_pages) {
  if (!had_pages) cr_skip_test("no page of %zu KiB lies wholly inside a hole", ta_page_size >> 10);
}

static void holes_go_back(size_t size) {
  static holes_t h;
  h.size = size;
  make_holes(&h);
  bool had_pages = trim_gives_holes_back(&h);
  for (int i = 0; i < N; i++) ta_free(h.keep[i]);
  skip_without_pages(had_pages);
}

/* 6 KiB: a cold class's blocks (make_holes); about half of the holes hold a whole 4 KiB
 * page, which the trim gives back too (none at larger pages). */
Test(trim, medium_holes_of_6_kib_go_back) { holes_go_back(6 << 10); }
Test(trim, medium_holes_of_12_kib_go_back) { holes_go_back(12 << 10); }
Test(trim, medium_holes_of_20_kib_go_back) { holes_go_back(20 << 10); }
Test(trim, medium_holes_of_100_kib_go_back) { holes_go_back(100 << 10); }

/* A thread that makes holes in its own arena and then waits, alive, for the test to end. */
static void *hole_maker(void *arg) {
  holes_t *h = arg;
  make_holes(h);
  atomic_store(&h->made, 1);
  while (!atomic_load(&h->done)) usleep(1000);
  for (int i = 0; i < N; i++) ta_free(h->keep[i]);
  return NULL;
}

/* malloc_trim(0) in one thread gives back the holes in the arena of another live thread,
 * which makes no call meanwhile (nothing is due by the time: the decay is long). */
static void holes_of_another_thread_go_back(size_t size) {
  ta_decay_ms = 600000;
  static holes_t h;
  h.size = size;
  ta_free(ta_malloc(16)); /* this thread has an arena of its own, as a program's main does */
  pthread_t t;
  pthread_create(&t, NULL, hole_maker, &h);
  while (!atomic_load(&h.made)) usleep(1000);
  bool had_pages = trim_gives_holes_back(&h);
  atomic_store(&h.done, 1);
  pthread_join(t, NULL); /* before a skip: the thread is done with its holes */
  skip_without_pages(had_pages);
}

Test(trim, another_live_threads_holes_of_6_kib_go_back) {
  holes_of_another_thread_go_back(6 << 10);
}
Test(trim, another_live_threads_holes_of_12_kib_go_back) {
  holes_of_another_thread_go_back(12 << 10);
}
Test(trim, another_live_threads_holes_of_100_kib_go_back) {
  holes_of_another_thread_go_back(100 << 10);
}

/* malloc_trim(0) over and over in one thread while two others allocate, write, check and free
 * blocks of every kind their arenas serve (runs, cold classes, medium blocks with holes
 * between them, realloc in place and moved), and hand some to each other to free: trim takes
 * each busy arena's lock and gives back its holes, cache, empty chunks and run slots under the
 * owner's feet. Nothing may be lost or overwritten: every block keeps its pattern to its free,
 * and a block handed out twice would fail its check. */
enum { LIVE = 256 };
typedef struct {
  unsigned id;
  _Atomic(char *) *mailbox; /* blocks the other thread is to free */
  _Atomic int *stop;
} churner_t;

static size_t churn_size(tt_rng *r) {
  switch (tt_rand(r) % 4) {
  case 0:
    return tt_rand_between(r, 16, 512); /* runs */
  case 1:
    return tt_rand_between(r, 1024, 8192); /* runs (the unit tier: no class starts cold) */
  case 2:
    return tt_rand_between(r, 9000, 64000); /* medium, the cache's sizes */
  default:
    return tt_rand_between(r, 64000, 300000); /* medium, holes the trim gives back */
  }
}

static void *churner(void *arg) {
  churner_t *c = arg;
  tt_rng r;
  tt_rng_seed(&r, 77 + c->id);
  char *block[LIVE] = {0};
  size_t size[LIVE] = {0};
  uint64_t seed[LIVE] = {0};
  while (!atomic_load(c->stop)) {
    unsigned k = (unsigned)(tt_rand(&r) % LIVE);
    if (block[k] != NULL) {
      cr_assert_eq(tt_check(block[k], size[k], seed[k]), SIZE_MAX, "thread %u, block %p of %zu",
                   c->id, (void *)block[k], size[k]);
      if (tt_rand(&r) % 8 == 0) { /* grown or shrunk: in place or moved, the pattern kept */
        size_t to = churn_size(&r), keep = to < size[k] ? to : size[k];
        char *p = ta_realloc(block[k], to);
        cr_assert_not_null(p);
        cr_assert_eq(tt_check(p, keep, seed[k]), SIZE_MAX);
        tt_fill_range(p, keep, to - keep, seed[k]);
        block[k] = p;
        size[k] = to;
        continue;
      }
      /* one in four to the other thread, which frees it (a remote free); it frees ours */
      char *mine = tt_rand(&r) % 4 == 0 ? atomic_exchange(&c->mailbox[c->id], block[k]) : block[k];
      if (mine) ta_free(mine);
      block[k] = NULL;
    }
    char *theirs = atomic_exchange(&c->mailbox[1 - c->id], NULL);
    if (theirs) ta_free(theirs);
    size[k] = churn_size(&r);
    seed[k] = tt_rand(&r);
    block[k] = ta_malloc(size[k]);
    cr_assert_not_null(block[k]);
    tt_fill(block[k], size[k], seed[k]);
  }
  for (unsigned k = 0; k < LIVE; k++)
    if (block[k]) {
      cr_assert_eq(tt_check(block[k], size[k], seed[k]), SIZE_MAX);
      ta_free(block[k]);
    }
  return NULL;
}

Test(trim, trimming_busy_threads_arenas_loses_nothing, .timeout = 120) {
  ta_free(ta_malloc(16)); /* this thread's own arena, as a program's main thread has */
  static _Atomic(char *) mailbox[2];
  static _Atomic int stop;
  churner_t c[2] = {{0, mailbox, &stop}, {1, mailbox, &stop}};
  pthread_t t[2];
  for (int i = 0; i < 2; i++)
    cr_assert_eq(pthread_create(&t[i], NULL, churner, &c[i]), 0);
  unsigned trims = 0;
  for (double end = tt_now() + 2.0; tt_now() < end; trims++)
    ta_malloc_trim(0);
  atomic_store(&stop, 1);
  for (int i = 0; i < 2; i++)
    pthread_join(t[i], NULL);
  for (int i = 0; i < 2; i++) {
    char *p = atomic_exchange(&mailbox[i], NULL);
    if (p) ta_free(p);
  }
  cr_assert_gt(trims, 10, "%u trims", trims);
}
