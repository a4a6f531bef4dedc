/* Unit tests: malloc_trim(0) gives back every free page, medium holes of any size included. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "tamalloc.h"

/* Free medium blocks of `size` between live ones (so they cannot merge), all written. */
enum { N = 64 };
typedef struct {
  size_t size;
  char *keep[N], *hole[N];
  _Atomic int made, done; /* the thread's holes are made; the test is done with them */
} holes_t;

static void make_holes(holes_t *h) {
  for (int i = 0; i < N; i++) {
    h->hole[i] = ta_malloc(h->size);
    h->keep[i] = ta_malloc(h->size);
    memset(h->hole[i], 7, h->size);
    memset(h->keep[i], 7, h->size);
  }
  for (int i = 0; i < N; i++) ta_free(h->hole[i]);
}

/* After malloc_trim(0), no page wholly inside a hole is resident. */
static void assert_holes_gone(const holes_t *h) {
  size_t resident = 0, pages = 0;
  for (int i = 0; i < N; i++) {
    /* the pages strictly inside the hole, past its links and before its footer */
    uintptr_t lo = ta_align_up((uintptr_t)h->hole[i] + 2 * sizeof(void *), ta_page_size);
    uintptr_t hi =
        ((uintptr_t)h->hole[i] + h->size - sizeof(size_t)) & ~(uintptr_t)(ta_page_size - 1);
    if (hi <= lo) continue;
    pages += (hi - lo) / ta_page_size;
    resident += ta_os_resident((void *)lo, hi - lo) / ta_page_size;
  }
  cr_assert_gt(pages, 0);
  cr_assert_eq(resident, 0, "%zu of %zu pages of %zu-byte holes still resident", resident, pages,
               h->size);
}

static void holes_go_back(size_t size) {
  static holes_t h;
  h.size = size;
  make_holes(&h);
  ta_malloc_trim(0);
  assert_holes_gone(&h);
  for (int i = 0; i < N; i++) ta_free(h.keep[i]);
}

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
  ta_malloc_trim(0);
  assert_holes_gone(&h);
  atomic_store(&h.done, 1);
  pthread_join(t, NULL);
}

Test(trim, another_live_threads_holes_of_12_kib_go_back) {
  holes_of_another_thread_go_back(12 << 10);
}
Test(trim, another_live_threads_holes_of_100_kib_go_back) {
  holes_of_another_thread_go_back(100 << 10);
}
