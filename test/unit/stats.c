/* Unit tests: statistics on constructed heaps with known answers. Each test runs in its own
 * process, so the heap holds exactly what the test made. */
#include <criterion/criterion.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "support/fd_text.h"
#include "support/heap_map_text.h"
#include "support/page_in_force.h"
#include "tamalloc.h"

#define MiB ((size_t)1 << 20)

static struct ta_stats get(int arena) {
  struct ta_stats s;
  memset(&s, 0xff, sizeof s);
  s.version = TA_STATS_VERSION;
  s.size = sizeof s;
  cr_assert_eq(ta_stats_get(&s, arena), 0);
  return s;
}

Test(stats, version_and_size_are_checked) {
  struct ta_stats s = {.version = TA_STATS_VERSION + 1, .size = sizeof s};
  cr_assert_eq(ta_stats_get(&s, -1), EINVAL);
  s.version = TA_STATS_VERSION;
  s.size = 12;
  cr_assert_eq(ta_stats_get(&s, -1), EINVAL);
  s.size = sizeof s;
  cr_assert_eq(ta_stats_get(&s, 9999), ERANGE);
  cr_assert_eq(ta_stats_get(NULL, -1), EINVAL);
}

Test(stats, internal_fragmentation_of_small_blocks) {
  ta_stats_enable(1);
  void *p[100];
  for (int i = 0; i < 100; i++) p[i] = ta_malloc(20); /* class 32: 12 bytes wasted each */
  struct ta_stats s = get(-1);
  cr_assert(s.requested_tracked);
  cr_assert_eq(s.classes[2].live_blocks, 100);
  cr_assert_eq(s.classes[2].usable_bytes, 3200);
  cr_assert_eq(s.classes[2].requested_bytes, 2000);
  cr_assert_eq(s.usable_bytes, 3200);
  cr_assert_eq(s.requested_bytes, 2000);
  cr_assert_float_eq(s.internal_fragmentation_pct, 37.5, 1e-9);
  for (int i = 0; i < 100; i += 2) ta_free(p[i]);
  s = get(-1);
  cr_assert_eq(s.classes[2].live_blocks, 50);
  cr_assert_eq(s.requested_bytes, 1000, "freed blocks' requests leave the sum");
  cr_assert_eq(s.usable_bytes, 1600);
  /* Reused blocks record their new request. */
  for (int i = 0; i < 100; i += 2) p[i] = ta_malloc(32);
  s = get(-1);
  cr_assert_eq(s.requested_bytes, 1000 + 50 * 32);
  cr_assert_float_eq(s.internal_fragmentation_pct, 100.0 * 600 / 3200, 1e-9);
}

/* malloc(0) is a request of one byte (its block is the 16-byte class's) and is recorded so:
 * no call takes the fast path while statistics are on, where a malloc(0) served from its
 * class's list would leave the shadow with the last request made there (here the 16 bytes of
 * the blocks freed before). */
Test(stats, a_request_of_zero_bytes_is_recorded_as_one) {
  ta_stats_enable(1);
  enum { N = 64 };
  void *p[N];
  for (int i = 0; i < N; i++)
    cr_assert_not_null(p[i] = ta_malloc(16));
  cr_assert_eq(get(-1).classes[1].requested_bytes, 16 * N);
  for (int i = 0; i < N; i++)
    ta_free(p[i]);
  for (int i = 0; i < N; i++)
    cr_assert_not_null(p[i] = ta_malloc(0));
  struct ta_stats s = get(-1);
  cr_assert_eq(s.classes[1].live_blocks, N);
  cr_assert_eq(s.classes[1].requested_bytes, N, "each malloc(0) a request of one byte");
  for (int i = 0; i < N; i++)
    ta_free(p[i]);
}

/* An emptied small chunk whose pages went back while a statistics reader kept it mapped
 * keeps its first page: the header and, beside it, the pointer to its shadow array. Reused,
 * it records the new requests there, and its runs' meta blocks past the first page (slots
 * 32 and up with 4 KiB pages, which went back with the rest) are set up anew. */
Test(stats, a_chunk_given_back_in_place_keeps_its_shadow_for_its_next_runs) {
  ta_stats_enable(1);
  void *first = ta_malloc(40);
  ta_run_t *r = ta_run_of(first);
  size_t n = 40 * (size_t)ta_run_cap(r); /* 40 runs of its class: slots 1..40 of one chunk */
  void **b = calloc(n, sizeof *b);
  cr_assert_not_null(b);
  b[0] = first;
  for (size_t i = 1; i < n; i++)
    cr_assert_not_null(b[i] = ta_malloc(40));
  ta_chunk_t *c = ta_chunk_of(first);
  cr_assert_eq(ta_chunk_of(b[n - 1]), c);
  cr_assert_eq(ta_run_of(b[n - 1])->slot, 40);
  uint16_t *sh = ta_shadow_get(c);
  cr_assert_not_null(sh);
  for (size_t i = 0; i < n; i++)
    ta_free(b[i]);
  ta_arena_t *a = ta_tl_arena;
  ta_small_retire_idle(a, true);
  cr_assert_eq(ta_map_get((uintptr_t)c), TA_MAP_NONE, "empty");
  ta_dirty_forget_demand(a);
  atomic_fetch_add(&ta_stats_readers, 1); /* as while statistics are read: no unmapping */
  ta_arena_purge(a, ta_os_now_ms() + 10 * ta_decay_ms + 1000, TA_PURGE_AGED, ta_decay_ms, true);
  atomic_fetch_sub(&ta_stats_readers, 1);
  cr_assert(c->decommitted, "given back, kept");
  cr_assert_eq(ta_shadow_get(c), sh, "the shadow pointer stays with the header");
  for (size_t i = 0; i < n; i++)
    cr_assert_not_null(b[i] = ta_malloc(33));
  cr_assert_eq(ta_chunk_of(b[0]), c, "reused");
  cr_assert_eq(ta_chunk_of(b[n - 1]), c);
  for (unsigned k = 1; k <= 40; k++) {
    ta_run_t *rk = ta_chunk_run(c, k);
    cr_assert_eq(rk->owner, a, "slot %u", k);
    cr_assert_eq(rk->slot, k);
    cr_assert_eq(rk->bsize, r->bsize);
  }
  struct ta_stats s = get(-1);
  cr_assert_eq(s.requested_bytes, 33 * n, "every request recorded in the shadow");
  cr_assert_eq(s.usable_bytes, r->bsize * n);
  for (size_t i = 0; i < n; i++)
    ta_free(b[i]);
  free(b);
}

Test(stats, requested_sizes_of_medium_huge_and_realloc) {
  ta_stats_enable(1);
  /* 10,032 bytes with its header, cut to the largest size of its bin, 10,224 bytes (a block
   * the cache may keep: medium.c, cache_fit): 10,208 usable. */
  void *m = ta_malloc(10001);
  void *h = ta_malloc(3 * MiB + 100);
  size_t hu = ta_align_up(TA_HUGE_HDR + 3 * MiB + 100, ta_page_size) - TA_HUGE_HDR;
  struct ta_stats s = get(-1);
  cr_assert_eq(s.usable_bytes, 10208 + hu);
  cr_assert_eq(s.requested_bytes, 10001 + 3 * MiB + 100);
  cr_assert_eq(s.huge_blocks, 1);
  cr_assert_eq(s.classes[0].usable_bytes, hu);
  m = ta_realloc(m, 9000); /* shrinks in place */
  s = get(-1);
  cr_assert_eq(s.requested_bytes, 9000 + 3 * MiB + 100);
  ta_free(h);
  ta_free(m);
  s = get(-1);
  cr_assert_eq(s.usable_bytes, 0);
  cr_assert_eq(s.requested_bytes, 0);
  cr_assert_eq(s.blocks, 0);
  cr_assert_eq(s.huge_cached_bytes, 4 * MiB, "the huge span waits in the cache");
}

Test(stats, external_fragmentation_of_a_known_free_list) {
  /* One medium chunk: four blocks of 500000 bytes, then the first and third freed. */
  void *x[4];
  for (int i = 0; i < 4; i++) x[i] = ta_malloc(500000);
  ta_free(x[0]);
  ta_free(x[2]);
  struct ta_stats s = get(-1);
  unsigned long long rest = TA_CHUNK_SIZE - 64 - 16 - 4 * 500016ull - 16; /* usable of the tail */
  cr_assert_eq(s.largest_free_block, rest);
  cr_assert_eq(s.free_bytes, 2 * 500000ull + rest);
  cr_assert_float_eq(s.external_fragmentation_pct,
                     100.0 * (1.0 - (double)rest / (double)(2 * 500000ull + rest)), 1e-9);
  cr_assert_eq(s.heap_bytes, TA_CHUNK_SIZE);
  cr_assert_eq(s.blocks, 2);
  cr_assert_eq(s.free_blocks, 3);
  /* Freeing the second merges three free blocks into one: no fragmentation left. */
  ta_free(x[1]);
  s = get(-1);
  cr_assert_eq(s.free_blocks, 2);
  cr_assert_eq(s.free_bytes, 3 * 500016ull - 16 + rest);
  cr_assert_eq(s.largest_free_block, rest, "the tail is still the largest");
  ta_free(x[3]);
  s = get(-1);
  cr_assert_eq(s.free_blocks, 1);
  cr_assert_float_eq(s.external_fragmentation_pct, 0.0, 1e-9);
}

Test(stats, stranded_bytes_in_partly_used_runs) {
  /* One run of 1 KiB blocks (64 per run): keep 1 block live of 64. */
  void *p[64];
  for (int i = 0; i < 64; i++) p[i] = ta_malloc(1024);
  for (int i = 1; i < 64; i++) ta_free(p[i]);
  struct ta_stats s = get(-1);
  cr_assert_eq(s.classes[32].runs, 1);
  cr_assert_eq(s.classes[32].live_blocks, 1);
  cr_assert_eq(s.classes[32].stranded_bytes, 63 * 1024);
  cr_assert_eq(s.stranded_bytes, 63 * 1024);
  cr_assert_float_eq(s.stranded_pct, 100.0 * 63 * 1024 / (double)TA_CHUNK_SIZE, 1e-9);
  ta_free(p[0]);
}

Test(stats, counters_after_a_known_sequence) {
  void *p[10];
  for (int i = 0; i < 10; i++) p[i] = ta_malloc(100);
  for (int i = 0; i < 3; i++) ta_free(p[i]);
  void *c1 = ta_calloc(4, 8), *c2 = ta_calloc(1, 50);
  void *r = ta_realloc(p[3], 300); /* another class: moves */
  struct ta_stats s = get(-1);
  cr_assert_eq(s.mallocs, 10 + 2 + 1);
  cr_assert_eq(s.callocs, 2);
  cr_assert_eq(s.reallocs, 1);
  cr_assert_eq(s.frees, 3 + 1);
  cr_assert_eq(s.blocks, s.mallocs - s.frees, "live blocks = mallocs - frees");
  cr_assert_eq(s.grows, 1, "one small chunk");
  void *m = ta_malloc(100000); /* first medium chunk: one more grow, one split (past 64 KiB:
                                  its free merges at once, no cache) */
  s = get(-1);
  cr_assert_eq(s.grows, 2);
  cr_assert_eq(s.splits, 1);
  cr_assert_eq(s.merges, 0);
  ta_free(m); /* merges with the rest of the chunk */
  s = get(-1);
  cr_assert_eq(s.merges, 1);
  cr_assert_eq(s.arenas_live, 1);
  cr_assert_geq(s.mapped_bytes, 2 * TA_CHUNK_SIZE);
  ta_free(c1);
  ta_free(c2);
  ta_free(r);
}

static void *remote_free(void *p) {
  ta_free(p);
  return NULL;
}

Test(stats, remote_frees_and_arenas) {
  void *p = ta_malloc(64);
  pthread_t t;
  pthread_create(&t, NULL, remote_free, p);
  pthread_join(t, NULL);
  ta_free(ta_malloc(200000)); /* the owner drains on its next slow path */
  struct ta_stats s = get(-1);
  cr_assert_eq(s.remote_frees, 1);
  cr_assert_eq(s.blocks, 0);
  struct ta_stats a0 = get((int)ta_tl_arena->id);
  cr_assert_eq(a0.arena, (int)ta_tl_arena->id);
  cr_assert_eq(a0.mallocs, s.mallocs);
}

Test(stats, reuses_count_blocks_handed_out_again) {
  needs_4k_pages();          /* a larger page threads several blocks, counted as handed out new */
  void *p = ta_malloc(4096); /* a page of 4 KiB blocks is threaded: one block */
  ta_free(p);
  for (int i = 0; i < 5; i++) ta_free(ta_malloc(4096));
  struct ta_stats s = get(-1);
  cr_assert_eq(s.mallocs, 6);
  cr_assert_eq(s.reuses, 5);
}

Test(stats, resident_and_returned_bytes) {
  char *p = ta_malloc(8 * MiB);
  memset(p, 1, 8 * MiB);
  struct ta_stats s = get(-1);
  cr_assert_geq(s.resident_bytes, 8 * MiB);
  ta_free(p);
  cr_assert_eq(ta_malloc_trim(0), 1);
  s = get(-1);
  cr_assert_lt(s.resident_bytes, 1 * MiB);
  cr_assert_geq(s.returned_bytes, 8 * MiB);
}

Test(stats, json_report_parses_back_with_the_same_figures) {
  ta_stats_enable(1);
  void *p[50];
  for (int i = 0; i < 50; i++) p[i] = ta_malloc(40);
  void *m = ta_malloc(30000);
  char *json = captured(ta_stats_print, 1);
  struct ta_stats s = get(-1);
  char path[] = "/tmp/tamalloc-json-XXXXXX";
  int fd = mkstemp(path);
  cr_assert_eq(write(fd, json, strlen(json)), (ssize_t)strlen(json));
  close(fd);
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "python3 -c 'import json,sys; d=json.load(open(sys.argv[1]));"
           "keys=[\"requested_bytes\",\"usable_bytes\",\"heap_bytes\",\"internal_fragmentation_pct\","
           "\"external_fragmentation_pct\",\"mallocs\",\"frees\",\"reuses\",\"grows\",\"shrinks\","
           "\"splits\",\"merges\"];"
           "missing=[k for k in keys if k not in d];"
           "assert not missing, missing;"
           "assert d[\"requested_bytes\"]==%llu and d[\"usable_bytes\"]==%llu, d;"
           "assert d[\"mallocs\"]==%llu and d[\"blocks\"]==%llu;"
           "assert abs(d[\"internal_fragmentation_pct\"]-%.4f)<1e-3;"
           "assert isinstance(d[\"classes\"], list) and isinstance(d[\"arenas\"], list)' %s",
           s.requested_bytes, s.usable_bytes, s.mallocs, s.blocks, s.internal_fragmentation_pct,
           path);
  int rc = system(cmd);
  unlink(path);
  cr_assert_eq(rc, 0, "JSON did not parse back with the same figures:\n%s", json);
  free(json);
  ta_free(m);
  for (int i = 0; i < 50; i++) ta_free(p[i]);
}

Test(stats, text_report_and_heap_map_name_what_is_there) {
  void *p = ta_malloc(100), *m = ta_malloc(50000), *h = ta_malloc(5 * MiB);
  char *text = captured(ta_stats_print, 0);
  cr_assert(strstr(text, "internal fragmentation") && strstr(text, "external fragmentation"));
  cr_assert(strstr(text, "arena 0 (live)"));
  const char *map = heap_map_text();
  cr_assert(strstr(map, "# tamalloc heap map 1"));
  cr_assert(strstr(map, " small mmap ") || strstr(map, " small brk "));
  cr_assert(strstr(map, " medium "));
  cr_assert(strstr(map, "huge ") && strstr(map, " live "));
  char run_line[128];
  ta_run_t *r = ta_run_of(p);
  snprintf(run_line, sizeof run_line, "run 0x%lx 65536 112 1 ", (unsigned long)ta_run_base(r));
  cr_assert(strstr(map, run_line), "%s not in\n%s", run_line, map);
  free(text);
  ta_free(p);
  ta_free(m);
  ta_free(h);
}

/* A report is written whole by a thread with a cancellation pending (glibc's malloc_stats
 * disables cancellation while it prints); the cancellation acts afterwards. */
struct cancel_report {
  int fd;
  _Atomic int go, returned;
};

static void *report_then_test_cancel(void *arg) {
  struct cancel_report *c = arg;
  while (!atomic_load(&c->go)) /* no cancellation point before the report */
    ;
  ta_stats_print(c->fd, 0);
  atomic_store(&c->returned, 1);
  pthread_testcancel();
  return NULL;
}

Test(stats, report_written_with_a_cancel_pending) {
  void *p = ta_malloc(100);
  int fds[2];
  cr_assert_eq(pipe(fds), 0);
  struct cancel_report c = {.fd = fds[1]};
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, report_then_test_cancel, &c), 0);
  cr_assert_eq(pthread_cancel(t), 0);
  atomic_store(&c.go, 1);
  void *result;
  cr_assert_eq(pthread_join(t, &result), 0);
  close(fds[1]);
  static char text[65536];
  size_t len = 0;
  ssize_t n;
  while (len < sizeof text - 1 && (n = read(fds[0], text + len, sizeof text - 1 - len)) > 0)
    len += (size_t)n;
  text[len] = 0;
  close(fds[0]);
  cr_assert(atomic_load(&c.returned), "the thread was cancelled inside ta_stats_print");
  cr_assert_eq(result, PTHREAD_CANCELED, "the pending cancellation was lost");
  cr_assert(strstr(text, "tamalloc statistics") && strstr(text, "arena 0 (live)"),
            "the report is missing or cut short: \"%s\"", text);
  ta_free(p);
}

/* glibc's mallinfo and mallinfo2, as the replacement library exports them. */
struct mallinfo ta_mallinfo(void);
struct mallinfo2 ta_mallinfo2(void);

Test(stats, mallinfo_is_mallinfo2_in_ints) {
  void *p = ta_malloc(100), *m = ta_malloc(50000), *h = ta_malloc(5 * MiB);
  struct mallinfo2 m2 = ta_mallinfo2();
  struct mallinfo m1 = ta_mallinfo();
  cr_assert(m2.uordblks >= 100 + 50000 + 5 * MiB && m2.hblks == 1 && m2.hblkhd >= 5 * MiB);
  cr_assert_eq(m1.arena, (int)m2.arena);
  cr_assert_eq(m1.ordblks, (int)m2.ordblks);
  cr_assert_eq(m1.hblks, (int)m2.hblks);
  cr_assert_eq(m1.hblkhd, (int)m2.hblkhd);
  cr_assert_eq(m1.uordblks, (int)m2.uordblks);
  cr_assert_eq(m1.fordblks, (int)m2.fordblks);
  cr_assert_eq(m1.keepcost, (int)m2.keepcost);
  ta_free(p);
  ta_free(m);
  ta_free(h);
}

/* The owner's drain of blocks other threads freed: a reader meanwhile derives mallocs from
 * the frees counted and the blocks it finds in use, and never reads fewer mallocs than were
 * made (arena.c counts each pass's blocks before it pushes them). */
enum { DRAINED = 100000 };
static _Atomic int drain_done;
static void *free_all(void *arg) {
  void **p = arg;
  for (int i = 0; i < DRAINED; i++)
    ta_free(p[i]);
  return NULL;
}
static void *lowest_mallocs(void *arg) {
  _Atomic unsigned long long *low = arg;
  while (!atomic_load(&drain_done)) {
    struct ta_stats s;
    memset(&s, 0, sizeof s);
    s.version = TA_STATS_VERSION;
    s.size = sizeof s;
    if (ta_stats_get(&s, -1) == 0 && s.mallocs < atomic_load(low)) atomic_store(low, s.mallocs);
  }
  return NULL;
}
Test(stats, a_drain_of_remote_frees_never_reads_mallocs_low) {
  void **p = ta_malloc(DRAINED * sizeof *p);
  for (int i = 0; i < DRAINED; i++)
    p[i] = ta_malloc(64);
  pthread_t t;
  pthread_create(&t, NULL, free_all, p);
  pthread_join(t, NULL);
  unsigned long long made = get(-1).mallocs;
  _Atomic unsigned long long low = ~0ull;
  cr_assert_geq(made, DRAINED + 1);
  pthread_create(&t, NULL, lowest_mallocs, &low);
  while (low == ~0ull)
    sched_yield(); /* the reader is under way */
  ta_remote_collect(ta_tl_arena);
  atomic_store(&drain_done, 1);
  pthread_join(t, NULL);
  unsigned long long lowest = atomic_load(&low);
  cr_assert_geq(lowest, made, "mallocs read %llu during the drain, %llu before", lowest, made);
  cr_assert_eq(get(-1).mallocs, made);
  ta_free(p);
}
