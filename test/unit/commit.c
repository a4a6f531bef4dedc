/* Unit tests: lazy commit (chunk.c, "Commit charge"). Where the kernel never overcommits
 * (vm.overcommit_memory=2), a chunk is charged against the commit limit only as far as its
 * arena has used it; these tests turn it on (ta_chunk_lazy_commit) and read the charge the
 * kernel keeps for each mapping (VmFlags "ac" in /proc/self/smaps). */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "charged.h"
#include "internal.h"
#include "tamalloc.h"
#include "tatest.h"

#define KiB ((size_t)1 << 10)
enum { MEDIUM = 300000, SMALL = 64, COLD = 2048 };

static size_t charged(const void *chunk) { return charged_bytes((uintptr_t)chunk, TA_CHUNK_SIZE); }

struct one_of_each {
  void *small, *cold, *medium;
};

/* A new thread's arena: one block of a run, one of a cold class (its medium heap) and one
 * medium block, written through and kept (the thread exits; its arena keeps them). */
static void *one_of_each(void *arg) {
  struct one_of_each *o = arg;
  o->small = ta_malloc(SMALL);
  o->cold = ta_malloc(COLD);
  o->medium = ta_malloc(MEDIUM);
  cr_assert(o->small && o->cold && o->medium);
  memset(o->small, 1, SMALL);
  memset(o->cold, 2, COLD);
  memset(o->medium, 3, MEDIUM);
  return NULL;
}

static struct one_of_each in_new_thread(void) {
  struct one_of_each o = {0};
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, one_of_each, &o), 0);
  cr_assert_eq(pthread_join(t, NULL), 0);
  return o;
}

Test(commit, a_thread_with_a_block_of_each_kind_is_charged_for_what_it_uses) {
  ta_chunk_lazy_commit(true);
  ta_run_threshold = 256; /* the default: a 2 KiB class starts cold (this tier starts at 0) */
  struct one_of_each o = in_new_thread();
  ta_chunk_t *runs = ta_chunk_of(o.small), *heap = ta_chunk_of(o.medium);
  cr_assert_neq(runs, heap);
  cr_assert_eq(ta_chunk_of(o.cold), heap, "a cold class's block comes from the medium heap");
  /* The small chunk: its header's unit and its first run slot's. */
  cr_assert_eq(charged(runs), 2 * TA_COMMIT_UNIT, "small chunk: %zu KiB charged",
               charged(runs) / KiB);
  /* The medium chunk: its start up to the end of the medium block (5 units), and its last. */
  size_t used = (size_t)((char *)o.medium + MEDIUM - (char *)heap);
  size_t units = (used + TA_COMMIT_UNIT - 1) / TA_COMMIT_UNIT;
  cr_assert_eq(charged(heap), (units + 1) * TA_COMMIT_UNIT,
               "medium chunk: %zu KiB charged for %zu used", charged(heap) / KiB, used / KiB);
  cr_assert(charged(heap) + charged(runs) <= 512 * KiB);
  ta_free(o.small);
  ta_free(o.cold);
  ta_free(o.medium);
  ta_chunk_lazy_commit(false);
}

/* The counterpart, which says the measure sees the charge: without lazy commit, both chunks
 * are charged whole. */
Test(commit, without_lazy_commit_each_chunk_is_charged_whole) {
  ta_chunk_lazy_commit(false);
  struct one_of_each o = in_new_thread();
  cr_assert_eq(charged(ta_chunk_of(o.small)), TA_CHUNK_SIZE);
  cr_assert_eq(charged(ta_chunk_of(o.medium)), TA_CHUNK_SIZE);
  ta_free(o.small);
  ta_free(o.cold);
  ta_free(o.medium);
}

/* Every run slot of a chunk taken in turn: each is usable, the chunk ends up committed whole,
 * and it took a few calls (each at least doubles what the chunk had), not one a slot. */
Test(commit, a_small_chunk_commits_as_its_slots_are_taken) {
  ta_chunk_lazy_commit(true);
  enum { N = 70000 }; /* 64-byte blocks: 1,024 a run, 63 runs a chunk, and some */
  static char *b[N];
  uint64_t calls = ta_os_calls(TA_OS_COMMIT);
  for (int i = 0; i < N; i++) {
    b[i] = ta_malloc(SMALL);
    cr_assert_not_null(b[i]);
    memset(b[i], (int)(i & 0xff), SMALL);
  }
  ta_chunk_t *first = ta_chunk_of(b[0]), *last = ta_chunk_of(b[N - 1]);
  cr_assert_neq(first, last);
  cr_assert_eq(charged(first), TA_CHUNK_SIZE);
  size_t in_last = (size_t)((char *)b[N - 1] + SMALL - (char *)last);
  cr_assert_leq(charged(last), 2 * ta_align_up(in_last, TA_COMMIT_UNIT), "%zu KiB charged for %zu",
                charged(last) / KiB, in_last / KiB);
  uint64_t made = ta_os_calls(TA_OS_COMMIT) - calls;
  cr_assert_leq(made, 2 * 7, "%llu commits for two chunks", (unsigned long long)made);
  for (int i = 0; i < N; i++) {
    cr_assert_eq(tt_check_byte(b[i], SMALL, (uint8_t)(i & 0xff)), SIZE_MAX);
    ta_free(b[i]);
  }
  ta_chunk_lazy_commit(false);
}

/* Medium blocks cut from the top one after another: each usable, the charge under twice what
 * the blocks take, and a few calls. */
Test(commit, a_medium_chunk_commits_as_its_top_is_cut) {
  ta_chunk_lazy_commit(true);
  enum { N = 12, SIZE = 100000 };
  char *b[N];
  uint64_t calls = ta_os_calls(TA_OS_COMMIT);
  for (int i = 0; i < N; i++) {
    b[i] = ta_malloc(SIZE);
    cr_assert_not_null(b[i]);
    memset(b[i], i + 1, SIZE);
    ta_chunk_t *c = ta_chunk_of(b[i]);
    cr_assert_eq(c, ta_chunk_of(b[0]));
    size_t used = (size_t)(b[i] + SIZE - (char *)c);
    cr_assert_leq(charged(c), 2 * used + 2 * TA_COMMIT_UNIT, "block %d: %zu KiB charged for %zu", i,
                  charged(c) / KiB, used / KiB);
  }
  uint64_t made = ta_os_calls(TA_OS_COMMIT) - calls;
  cr_assert_leq(made, 8, "%llu commits (7 for the chunk, one for the granule map's page)",
                (unsigned long long)made);
  for (int i = 0; i < N; i++) {
    cr_assert_eq(tt_check_byte(b[i], SIZE, (uint8_t)(i + 1)), SIZE_MAX);
    ta_free(b[i]);
  }
  ta_chunk_lazy_commit(false);
}

/* realloc that grows a block into the top commits what it grows into. */
Test(commit, a_block_grown_into_the_top_is_committed) {
  ta_chunk_lazy_commit(true);
  char *p = ta_malloc(20000);
  cr_assert_not_null(p);
  memset(p, 7, 20000);
  ta_chunk_t *c = ta_chunk_of(p);
  for (size_t size = 40000; size <= 1000000; size += 40000) {
    char *q = ta_realloc(p, size);
    cr_assert_not_null(q);
    cr_assert_eq(q, p, "grown in place at %zu", size);
    memset(q + size - 40000, 7, 40000);
  }
  cr_assert_eq(tt_check_byte(p, 1000000, 7), SIZE_MAX);
  cr_assert_geq(charged(c), 1000000);
  ta_free(p);
  ta_chunk_lazy_commit(false);
}

/* The kernel refuses a commit (the commit limit): that allocation fails with ENOMEM, nothing
 * else changes, and the next one, allowed, succeeds. */
static void *refused(void *arg) {
  (void)arg;
  char *small = ta_malloc(SMALL); /* run slot 1, committed with the chunk */
  char *medium = ta_malloc(100000);
  cr_assert(small && medium);
  memset(small, 5, SMALL);
  memset(medium, 6, 100000);
  ta_chunk_t *runs = ta_chunk_of(small), *heap = ta_chunk_of(medium);
  size_t runs_charged = charged(runs), heap_charged = charged(heap);
  uint64_t calls = ta_os_calls(TA_OS_COMMIT);

  /* A new class's run takes slot 2, which is not committed: 2 units to 4 refused, then 2 to
   * 3 refused. */
  ta_os_fail(TA_OS_COMMIT, 0, 2);
  errno = 0;
  cr_assert_null(ta_malloc(48));
  cr_assert_eq(errno, ENOMEM);
  cr_assert_eq(ta_os_calls(TA_OS_COMMIT), calls, "refused calls are not made");
  /* The top beyond what is committed: the doubling is what is needed, refused once. */
  ta_os_fail(TA_OS_COMMIT, 0, 1);
  errno = 0;
  cr_assert_null(ta_malloc(400000));
  cr_assert_eq(errno, ENOMEM);
  ta_os_fail(0, 0, 0);
  cr_assert_eq(charged(runs), runs_charged);
  cr_assert_eq(charged(heap), heap_charged);

  /* Allowed again: the same requests succeed, from the same chunks. */
  char *again = ta_malloc(48), *big = ta_malloc(400000);
  cr_assert(again && big);
  cr_assert_eq(ta_chunk_of(again), runs);
  cr_assert_eq(ta_chunk_of(big), heap);
  memset(again, 8, 48);
  memset(big, 9, 400000);
  /* The doubling refused, what is needed alone allowed: the allocation succeeds. */
  ta_os_fail(TA_OS_COMMIT, 0, 1);
  char *more = ta_malloc(300000);
  ta_os_fail(0, 0, 0);
  cr_assert_not_null(more);
  cr_assert_eq(ta_chunk_of(more), heap);
  memset(more, 10, 300000);
  size_t used = (size_t)(more + 300000 - (char *)heap);
  cr_assert_leq(charged(heap), ta_align_up(used + 64, TA_COMMIT_UNIT) + TA_COMMIT_UNIT,
                "what is needed alone, and the tail: %zu KiB for %zu", charged(heap) / KiB,
                used / KiB);
  cr_assert_eq(tt_check_byte(small, SMALL, 5), SIZE_MAX);
  cr_assert_eq(tt_check_byte(medium, 100000, 6), SIZE_MAX);
  cr_assert_eq(tt_check_byte(big, 400000, 9), SIZE_MAX);
  ta_free(small);
  ta_free(medium);
  ta_free(again);
  ta_free(big);
  ta_free(more);
  return NULL;
}

Test(commit, a_refused_commit_fails_that_allocation_alone) {
  ta_chunk_lazy_commit(true);
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, refused, NULL), 0);
  cr_assert_eq(pthread_join(t, NULL), 0);
  ta_chunk_lazy_commit(false);
}

/* A new chunk whose commits are refused: its first units, its tail, or its page of the
 * granule map (the process's first chunk opens that page). The allocation fails with ENOMEM,
 * no mapping is left behind, and the next one succeeds. */
/* In the child's thread: what went wrong, or NULL. (Criterion's asserts cannot report from a
 * thread of a forked child: the child would hang.) */
static void *fresh_refused(void *arg) {
  unsigned skip = *(unsigned *)arg;
  uint64_t mapped = atomic_load(&ta_os_mapped_bytes.v);
  ta_os_fail(TA_OS_COMMIT, skip, 1);
  errno = 0;
  void *p = ta_malloc(100000);
  int err = errno;
  ta_os_fail(0, 0, 0);
  if (p != NULL) return "the allocation succeeded";
  if (err != ENOMEM) return "errno is not ENOMEM";
  if (atomic_load(&ta_os_mapped_bytes.v) > mapped + 2 * ta_page_size)
    return "something stays mapped";
  p = ta_malloc(100000);
  if (p == NULL) return "the next allocation failed";
  memset(p, 1, 100000);
  ta_free(p);
  return NULL;
}

Test(commit, a_new_chunk_whose_commit_is_refused_fails_that_allocation) {
  ta_chunk_lazy_commit(true);
  /* In a new process: the first chunk commits its first unit, its tail, then opens its page
   * of the map. */
  for (unsigned skip = 0; skip < 3; skip++) {
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
      pthread_t t;
      void *why = NULL;
      if (pthread_create(&t, NULL, fresh_refused, &skip) != 0) _exit(2);
      pthread_join(t, &why);
      if (why != NULL) fprintf(stderr, "commit %u refused: %s\n", skip, (const char *)why);
      _exit(why != NULL);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "commit %u refused: status %d", skip, st);
  }
  ta_chunk_lazy_commit(false);
}

/* free() of a wild pointer into the part of a medium chunk not committed yet is reported,
 * as any invalid pointer is (one line, abort), not a fault: its header is not read. */
Test(commit, a_wild_pointer_into_pages_not_committed_is_reported, .signal = SIGABRT) {
  ta_chunk_lazy_commit(true);
  char *p = ta_malloc(20000);
  cr_assert_not_null(p);
  ta_chunk_t *c = ta_chunk_of(p);
  cr_assert_lt(charged(c), TA_CHUNK_SIZE / 2);
  ta_free((char *)c + TA_CHUNK_SIZE / 2 + 64);
}

/* A walk of the medium heap (statistics, the heap map) that meets a size word pointing into
 * pages not committed yet (a stale read, or a header the program overwrote) stops there
 * instead of faulting. */
Test(commit, a_walk_never_reads_pages_not_committed) {
  ta_chunk_lazy_commit(true);
  char *p = ta_malloc(20000), *q = ta_malloc(20000);
  cr_assert(p && q);
  ta_chunk_t *c = ta_chunk_of(p);
  cr_assert_eq(ta_medium_walk(c, NULL, NULL), 3, "two blocks and the top");
  ta_mhdr_t *h = (ta_mhdr_t *)tt_opaque_ptr(p) - 1; /* its header */
  size_t was = h->size_flags;
  h->size_flags = ((size_t)2 << 20) | TA_M_INUSE; /* into the middle of the chunk */
  cr_assert_eq(ta_medium_walk(c, NULL, NULL), 1, "the forged block, then nothing");
  h->size_flags = was;
  ta_free(p);
  ta_free(q);
  ta_chunk_lazy_commit(false);
}

/* An empty small chunk taken for medium blocks commits its tail (the end marker's units)
 * before the medium heap writes there, and keeps what it had committed. Here the chunk is
 * kept on its list, not unmapped, because a statistics reader is (said to be) walking. */
Test(commit, a_small_chunk_reused_for_medium_blocks_commits_its_tail) {
  ta_chunk_lazy_commit(true);
  ta_decay_ms = 600000; /* no purge but malloc_trim's */
  char *p = ta_malloc(SMALL);
  cr_assert_not_null(p);
  ta_chunk_t *c = ta_chunk_of(p);
  cr_assert_eq(charged(c), 2 * TA_COMMIT_UNIT, "a small chunk: its header and first slot");
  ta_free(p);
  atomic_fetch_add(&ta_stats_readers, 1);
  ta_malloc_trim(0); /* the empty run retires, the empty chunk stays on the list */
  atomic_fetch_sub(&ta_stats_readers, 1);
  char *q = ta_malloc(MEDIUM);
  cr_assert_not_null(q);
  cr_assert_eq(ta_chunk_of(q), c, "the kept chunk serves the medium heap");
  memset(q, 4, MEDIUM);
  size_t used = (size_t)(q + MEDIUM - (char *)c);
  cr_assert_eq(charged(c), (ta_align_up(used + 64, TA_COMMIT_UNIT) + TA_COMMIT_UNIT),
               "%zu KiB charged for %zu used and the tail", charged(c) / KiB, used / KiB);
  cr_assert_eq(ta_medium_walk(c, NULL, NULL), 2, "the block and the top, up to the end marker");
  ta_free(q);
  ta_chunk_lazy_commit(false);
}

/* Checks of pointers read from freed memory (a free list's link, a remote list's entry)
 * reject one that lies in another run's slot or in a medium chunk's pages not committed,
 * before anything is read from it: with lazy commit those pages may fault. */
Test(commit, list_entries_in_pages_not_committed_are_rejected) {
  ta_chunk_lazy_commit(true);
  char *s = ta_malloc(SMALL), *m = ta_malloc(20000);
  cr_assert(s && m);
  ta_run_t *r = ta_run_of(s);
  cr_assert(ta_small_valid(r, s));
  /* The same offset in a slot no run has taken (not committed) is not a block of r. */
  char *other = s + 40 * TA_RUN_SIZE;
  cr_assert_eq(ta_chunk_of(other), ta_chunk_of(s));
  cr_assert_not(ta_small_valid(r, other));
  ta_chunk_t *c = ta_chunk_of(m);
  ta_block_t *wild = (ta_block_t *)((char *)c + TA_CHUNK_SIZE / 2 + 64);
  cr_assert_eq(ta_remote_entry(ta_chunk_run(ta_chunk_of(s), r->slot)->owner, wild), TA_MAP_NONE);
  ta_free(s);
  ta_free(m);
  ta_chunk_lazy_commit(false);
}
