/* Unit tests: the remote-free list, thread exit, arena adoption, fork repair. */
#include <criterion/criterion.h>
#include <signal.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "remote_lists.h"
#include "tamalloc.h"

static void *free_it(void *p) {
  ta_free(p);
  return NULL;
}

Test(remote, free_from_another_thread_goes_to_owner_list) {
  void *p = ta_malloc(64), *q = ta_malloc(20000);
  ta_arena_t *me = ta_tl_arena;
  pthread_t t;
  pthread_create(&t, NULL, free_it, p);
  pthread_join(t, NULL);
  pthread_create(&t, NULL, free_it, q);
  pthread_join(t, NULL);
  cr_assert_eq(tt_remote_len(me), 2);
  /* Each freer was a new thread, which starts with the first list. */
  cr_assert_eq(tt_remote_list_len(me, 0), 2);
  cr_assert_eq(atomic_load(&me->remote[0]), (ta_block_t *)q, "last pushed first");
  /* The owner's next slow path drains the list. */
  void *big = ta_malloc(100000);
  cr_assert_eq(tt_remote_len(me), 0);
  void *again = ta_malloc(64);
  cr_assert_eq(again, p, "the remotely freed block is back on its run's list");
  ta_free(again);
  ta_free(big);
}

static void *double_free_remote(void *p) {
  ta_free(p);
  ta_free(p);
  return NULL;
}

typedef struct {
  void **blocks;
  size_t n;
} batch_t;

static void *free_batch(void *arg) {
  batch_t *b = arg;
  for (size_t i = 0; i < b->n; i++) ta_free(b->blocks[i]);
  return NULL;
}

/* Where a thread's remote frees land, as it makes them: a medium block onto the next of the
 * owner's lists, a small one into its chain, which goes onto the next list when it holds
 * TA_DEFER_MAX blocks or the thread exits. After a thread starting at list 0 frees n blocks,
 * the medium ones those i with medium(i): small[i] and big[i], how many small and medium
 * blocks list i holds. */
static void expected_lists(size_t n, bool (*medium)(size_t), size_t small[TA_REMOTE_LISTS],
                           size_t big[TA_REMOTE_LISTS]) {
  unsigned next = 0;
  size_t chain = 0;
  for (unsigned i = 0; i < TA_REMOTE_LISTS; i++)
    small[i] = big[i] = 0;
  for (size_t i = 0; i < n; i++) {
    if (medium(i)) {
      big[next++ % TA_REMOTE_LISTS]++;
    } else if (++chain == TA_DEFER_MAX) {
      small[next++ % TA_REMOTE_LISTS] += chain;
      chain = 0;
    }
  }
  if (chain) small[next % TA_REMOTE_LISTS] += chain;
}

static bool every_fifth(size_t i) { return i % 5 == 0; }

/* One thread's remote frees go to the owner's lists in turn, a medium block or a chain of
 * small ones at a time, so that the owner's drain walks them side by side; lists of unequal
 * lengths, small and medium blocks, all come back. */
Test(remote, one_freer_spreads_over_the_lists_and_the_drain_takes_all) {
  enum { N = 2 * TA_DEFER_MAX + 3 * TA_REMOTE_LISTS + 2 };
  void *blocks[N];
  ta_arena_t *me = ta_tl_arena;
  for (size_t i = 0; i < N; i++)
    blocks[i] = ta_malloc(every_fifth(i) ? 12000 : 48);
  me = ta_tl_arena;
  ta_run_t *r = ta_run_of(blocks[1]);
  int32_t used = RUN_USED(r);
  batch_t b = {blocks, N};
  pthread_t t;
  pthread_create(&t, NULL, free_batch, &b);
  pthread_join(t, NULL);
  size_t small_on[TA_REMOTE_LISTS], medium_on[TA_REMOTE_LISTS];
  expected_lists(N, every_fifth, small_on, medium_on);
  unsigned used_lists = 0;
  for (unsigned i = 0; i < TA_REMOTE_LISTS; i++) {
    size_t want = small_on[i] + medium_on[i];
    cr_assert_eq(tt_remote_list_len(me, i), want, "list %u holds %zu, not %zu", i,
                 tt_remote_list_len(me, i), want);
    used_lists += want != 0;
  }
  cr_assert_eq(used_lists, TA_REMOTE_LISTS, "every list took some");
  cr_assert_eq(RUN_USED(r), used, "blocks on the lists count as used");
  uint64_t frees = me->cnt.remote_frees, all = me->cnt.frees;
  ta_remote_collect(me);
  cr_assert_eq(tt_remote_len(me), 0);
  cr_assert_eq(me->cnt.remote_frees - frees, N);
  cr_assert_eq(me->cnt.frees - all, N, "each counted once among the arena's frees");
  for (size_t i = 0; i < N; i++)
    if (!every_fifth(i))
      cr_assert_eq(((ta_block_t *)blocks[i])->key, ta_mark(blocks[i]), "block %zu marked free", i);
  size_t small = 0;
  for (size_t i = 0; i < N; i++)
    small += !every_fifth(i);
  cr_assert_eq(RUN_USED(r), used - (int32_t)small, "every small block is back on its run");
  /* Every block can be had again, and none twice. */
  void *again[N];
  for (size_t i = 0; i < N; i++) {
    again[i] = ta_malloc(every_fifth(i) ? 12000 : 48);
    for (size_t j = 0; j < i; j++) cr_assert_neq(again[i], again[j]);
  }
  for (size_t i = 0; i < N; i++) ta_free(again[i]);
}

static bool every_third(size_t i) { return i % 3 == 0; }

/* The background purger takes the medium blocks off an idle owner's lists and puts the small
 * ones back, each on the list it came from, so that the owner's drain still walks them side
 * by side. */
Test(remote, the_purgers_medium_drain_puts_small_blocks_back_on_their_lists) {
  enum { N = 2 * TA_DEFER_MAX + 2 * TA_REMOTE_LISTS };
  void *blocks[N];
  size_t small[TA_REMOTE_LISTS], medium[TA_REMOTE_LISTS];
  expected_lists(N, every_third, small, medium);
  for (size_t i = 0; i < N; i++)
    blocks[i] = ta_malloc(every_third(i) ? 12000 : 48);
  ta_arena_t *me = ta_tl_arena;
  batch_t b = {blocks, N};
  pthread_t t;
  pthread_create(&t, NULL, free_batch, &b);
  pthread_join(t, NULL);
  cr_assert_gt(atomic_load(&me->remote_medium), 0, "the medium frees raised the hint");
  ta_slow_enter(me);
  ta_remote_collect_medium(me);
  ta_slow_leave(me);
  for (unsigned i = 0; i < TA_REMOTE_LISTS; i++)
    cr_assert_eq(tt_remote_list_len(me, i), small[i],
                 "list %u: %zu small blocks back, %zu expected", i, tt_remote_list_len(me, i),
                 small[i]);
  cr_assert_eq(atomic_load(&me->remote_medium), 0);
  ta_remote_collect(me);
  cr_assert_eq(tt_remote_len(me), 0);
}

Test(remote, double_free_from_another_thread_aborts, .signal = SIGABRT) {
  void *p = ta_malloc(64);
  pthread_t t;
  pthread_create(&t, NULL, double_free_remote, p);
  pthread_join(t, NULL); /* the second free sees a block on a list: it aborts there */
}

/* The drain took the block in and kept its mark: the owner's second free finds it. */
Test(remote, local_free_after_the_drain_took_a_remote_free_in_aborts, .signal = SIGABRT) {
  void *p = ta_malloc(64), *keep = ta_malloc(64);
  (void)keep;
  pthread_t t;
  pthread_create(&t, NULL, free_it, p);
  pthread_join(t, NULL);
  ta_remote_collect(ta_tl_arena);
  cr_assert_eq(tt_remote_len(ta_tl_arena), 0, "taken in");
  ta_free(p);
}

Test(remote, local_free_after_remote_free_aborts, .signal = SIGABRT) {
  void *p = ta_malloc(64);
  pthread_t t;
  pthread_create(&t, NULL, free_it, p);
  pthread_join(t, NULL);
  ta_free(p);
}

/* ------------------------------------------------------------------ remote frees put off */

typedef struct {
  void **blocks;
  size_t n;
  ta_arena_t *owner;
  size_t seen[4];
} chain_probe_t;

static void *free_and_look(void *arg) {
  chain_probe_t *c = arg;
  for (size_t i = 0; i < TA_DEFER_MAX - 1; i++)
    ta_free(c->blocks[i]);
  c->seen[0] = tt_remote_len(c->owner);
  ta_free(c->blocks[TA_DEFER_MAX - 1]);
  c->seen[1] = tt_remote_len(c->owner);
  c->seen[2] = tt_remote_list_len(c->owner, 0);
  for (size_t i = TA_DEFER_MAX; i < c->n; i++)
    ta_free(c->blocks[i]);
  c->seen[3] = tt_remote_len(c->owner);
  return NULL;
}

/* A thread's small remote frees wait in its chain, counted as used, until it holds
 * TA_DEFER_MAX blocks; then it goes onto one of the owner's lists whole. What is left goes at
 * the thread's exit, though it never had an arena (its exit hook was registered for this). */
Test(remote, a_chain_goes_to_its_owner_when_full_and_at_the_freers_exit) {
  enum { N = TA_DEFER_MAX + 5 };
  void *blocks[N];
  for (size_t i = 0; i < N; i++)
    blocks[i] = ta_malloc(48);
  ta_run_t *r = ta_run_of(blocks[0]);
  cr_assert_eq(ta_run_of(blocks[N - 1]), r, "one run holds them all");
  int32_t used = RUN_USED(r);
  chain_probe_t c = {blocks, N, ta_tl_arena, {0}};
  pthread_t t;
  pthread_create(&t, NULL, free_and_look, &c);
  pthread_join(t, NULL);
  cr_assert_eq(c.seen[0], 0, "below the most, the chain waits");
  cr_assert_eq(c.seen[1], TA_DEFER_MAX, "full, it went whole");
  cr_assert_eq(c.seen[2], TA_DEFER_MAX, "onto one list");
  cr_assert_eq(c.seen[3], TA_DEFER_MAX, "the rest waits");
  cr_assert_eq(tt_remote_len(ta_tl_arena), N, "and went at the thread's exit");
  cr_assert_eq(RUN_USED(r), used, "all counted as used until taken in");
  ta_remote_collect(ta_tl_arena);
  cr_assert_eq(tt_remote_len(ta_tl_arena), 0);
  cr_assert_eq(RUN_USED(r), used - N);
  for (size_t i = 0; i < N; i++)
    cr_assert(ta_small_on_free_list(r, blocks[i]), "block %zu back on its run's list", i);
}

typedef struct {
  void *mine, *theirs; /* blocks of this test's arena and of a thread that waits */
  ta_arena_t *owner;
  size_t seen[2];
  pthread_barrier_t *hold;
} two_owners_t;

static void *alloc_and_hold(void *arg) {
  two_owners_t *o = arg;
  o->theirs = ta_malloc(48);
  pthread_barrier_wait(o->hold); /* allocated */
  pthread_barrier_wait(o->hold); /* freed by the other thread: may exit */
  return NULL;
}

static void *free_of_two_owners(void *arg) {
  two_owners_t *o = arg;
  ta_free(o->mine);
  o->seen[0] = tt_remote_len(o->owner);
  ta_free(o->theirs);
  o->seen[1] = tt_remote_len(o->owner);
  return NULL;
}

/* A chain holds the blocks of one owner: a free of another arena's block sends it on. */
Test(remote, a_free_for_another_owner_sends_the_chain_on) {
  pthread_barrier_t hold;
  pthread_barrier_init(&hold, NULL, 2);
  two_owners_t o = {.mine = ta_malloc(48), .owner = ta_tl_arena, .hold = &hold};
  pthread_t holder, freer;
  pthread_create(&holder, NULL, alloc_and_hold, &o);
  pthread_barrier_wait(&hold);
  pthread_create(&freer, NULL, free_of_two_owners, &o);
  pthread_join(freer, NULL);
  pthread_barrier_wait(&hold);
  pthread_join(holder, NULL);
  cr_assert_eq(o.seen[0], 0, "put off");
  cr_assert_eq(o.seen[1], 1, "sent on by the free of the other arena's block");
  pthread_barrier_destroy(&hold);
}

static void *free_then_malloc(void *arg) {
  chain_probe_t *c = arg;
  void *mine = ta_malloc(48); /* an arena first: the claim sends a chain on too */
  for (size_t i = 0; i < c->n; i++)
    ta_free(c->blocks[i]);
  c->seen[0] = tt_remote_len(c->owner);
  c->seen[2] = ta_run_of(mine)->owner->cur[ta_class_lut[200]] == &ta_empty_run;
  void *p = ta_malloc(200); /* a class this arena has no run of yet: its slow path */
  c->seen[1] = tt_remote_len(c->owner);
  ta_free(p);
  ta_free(mine);
  return NULL;
}

/* A thread's slow path of malloc (here the refill of a class without a run) sends its chain on
 * first. */
Test(remote, the_freers_slow_path_sends_its_chain_on) {
  void *blocks[3];
  for (size_t i = 0; i < 3; i++)
    blocks[i] = ta_malloc(64);
  chain_probe_t c = {blocks, 3, ta_tl_arena, {0}};
  pthread_t t;
  pthread_create(&t, NULL, free_then_malloc, &c);
  pthread_join(t, NULL);
  cr_assert_eq(c.seen[0], 0, "put off");
  cr_assert_eq(c.seen[2], 1, "the class of 200 bytes has no run in the freer's arena");
  cr_assert_eq(c.seen[1], 3, "sent on by the slow path");
}

typedef struct {
  void *p;
  pthread_barrier_t *hold;
} held_free_t;

static void *free_and_hold(void *arg) {
  held_free_t *h = arg;
  ta_free(h->p);
  pthread_barrier_wait(h->hold); /* freed: its chain holds the block */
  pthread_barrier_wait(h->hold); /* never reached: the owner's free aborts */
  return NULL;
}

/* The owner's second free of a block that another thread's chain still holds: no list shows
 * it, but its mark and its link (a list's end, or a block of ours) do. */
Test(remote, the_owners_free_of_a_block_in_another_threads_chain_aborts, .signal = SIGABRT) {
  void *p = ta_malloc(64), *keep = ta_malloc(64);
  (void)keep;
  pthread_barrier_t hold;
  pthread_barrier_init(&hold, NULL, 2);
  held_free_t h = {p, &hold};
  pthread_t t;
  pthread_create(&t, NULL, free_and_hold, &h);
  pthread_barrier_wait(&hold);
  cr_assert_eq(tt_remote_len(ta_tl_arena), 0, "still in the other thread's chain");
  ta_free(p);
}

typedef struct {
  void *blocks[TA_DRAIN_EVERY + 5];
  ta_arena_t *arena;
  pthread_barrier_t *hold;
} holder_t;

static void *alloc_hold_exit(void *arg) {
  holder_t *h = arg;
  for (size_t i = 0; i < sizeof h->blocks / sizeof h->blocks[0]; i++)
    h->blocks[i] = ta_malloc(64);
  h->arena = ta_tl_arena;
  pthread_barrier_wait(h->hold); /* allocated: the main thread frees them */
  pthread_barrier_wait(h->hold); /* freed: exits now */
  return NULL;
}

/* A chain begun while its owner had a thread may go after the owner exited: the push then
 * counts every block it brings toward the drain of an arena without a thread
 * (TA_DRAIN_EVERY), not one for the chain. */
Test(remote, a_chain_for_an_owner_gone_since_counts_its_blocks_toward_the_drain) {
  void *mine = ta_malloc(64); /* this thread has an arena of its own */
  pthread_barrier_t hold;
  pthread_barrier_init(&hold, NULL, 2);
  holder_t h = {.hold = &hold};
  pthread_t t;
  pthread_create(&t, NULL, alloc_hold_exit, &h);
  pthread_barrier_wait(&hold);
  enum { N = TA_DRAIN_EVERY + 5 };
  ta_run_t *r = ta_run_of(h.blocks[0]);
  cr_assert_eq(ta_run_of(h.blocks[N - 1]), r, "one run holds them all");
  int32_t used = RUN_USED(r);
  for (size_t i = 0; i < N; i++)
    ta_free(h.blocks[i]); /* the owner lives: into the chain */
  cr_assert_eq(tt_remote_len(h.arena), 0, "put off");
  pthread_barrier_wait(&hold);
  pthread_join(t, NULL);
  cr_assert_eq(atomic_load(&h.arena->state), ARENA_FREE, "its thread has exited");
  ta_remote_flush();
  cr_assert_eq(tt_remote_len(h.arena), 0,
               "the push brought TA_DRAIN_EVERY blocks and more: drained");
  cr_assert_eq(RUN_USED(r), used - N, "every block back on its run");
  cr_assert_eq(atomic_load(&h.arena->state), ARENA_FREE, "and the arena given back");
  pthread_barrier_destroy(&hold);
  ta_free(mine);
}

static void *free_then_trim(void *arg) {
  chain_probe_t *c = arg;
  for (size_t i = 0; i < c->n; i++)
    ta_free(c->blocks[i]);
  c->seen[0] = tt_remote_len(c->owner);
  ta_malloc_trim(0);
  c->seen[1] = tt_remote_len(c->owner);
  return NULL;
}

/* malloc_trim sends the calling thread's chain on, before the owners' purges it makes. */
Test(remote, malloc_trim_sends_the_callers_chain_on) {
  void *blocks[3];
  for (size_t i = 0; i < 3; i++)
    blocks[i] = ta_malloc(64);
  ta_run_t *r = ta_run_of(blocks[0]);
  int32_t used = RUN_USED(r);
  chain_probe_t c = {blocks, 3, ta_tl_arena, {0}};
  pthread_t t;
  pthread_create(&t, NULL, free_then_trim, &c);
  pthread_join(t, NULL);
  cr_assert_eq(c.seen[0], 0, "put off");
  cr_assert_eq(c.seen[1] + (size_t)(used - RUN_USED(r)), 3,
               "sent on by the trim: on the owner's lists, or taken in by its purge");
}

typedef struct {
  holder_t *owner;       /* the thread whose blocks are freed, and then exits */
  pthread_barrier_t *go; /* between the frees and the malloc: the owner exits meanwhile */
  bool free_again;       /* after the malloc, free one of the chain's blocks a second time */
  void *got;
  ta_arena_t *arena;
  size_t seen[2];
  int32_t used; /* the blocks in use of the freed ones' run, just after the malloc */
} claimer_t;

static void *free_wait_alloc(void *arg) {
  claimer_t *c = arg;
  for (size_t i = 0; i < 3; i++)
    ta_free(c->owner->blocks[i]); /* its owner lives: into this thread's chain */
  c->seen[0] = tt_remote_len(c->owner->arena);
  pthread_barrier_wait(c->go); /* freed */
  pthread_barrier_wait(c->go); /* their owner has exited */
  c->got = ta_malloc(64);      /* this thread's first: claims an arena */
  c->arena = ta_tl_arena;
  c->seen[1] = tt_remote_len(c->owner->arena);
  c->used = RUN_USED(ta_run_of(c->owner->blocks[0]));
  if (c->free_again) {
    if (ta_tl_arena != c->owner->arena) _exit(3); /* not the owner's verdict: no abort */
    void **b = c->owner->blocks;
    ta_free(b[1] == c->got ? b[2] : b[1]); /* one the malloc did not hand out again */
  }
  ta_free(c->got);
  return NULL;
}

/* A thread with a chain for an arena whose thread has exited since claims that very arena (here
 * the only free one, the newest on the list): the claim sends the chain on first, and takes in
 * the lists it went to, before the malloc hands a block out. */
static void claim_the_chains_arena(claimer_t *c, int32_t *used_before) {
  pthread_barrier_t hold, go;
  pthread_barrier_init(&hold, NULL, 2);
  pthread_barrier_init(&go, NULL, 2);
  c->owner->hold = &hold;
  c->go = &go;
  pthread_t owner, claimer;
  pthread_create(&owner, NULL, alloc_hold_exit, c->owner);
  pthread_barrier_wait(&hold); /* allocated */
  *used_before = RUN_USED(ta_run_of(c->owner->blocks[0]));
  pthread_create(&claimer, NULL, free_wait_alloc, c);
  pthread_barrier_wait(&go); /* the claimer's chain holds three of them */
  pthread_barrier_wait(&hold);
  pthread_join(owner, NULL);
  cr_assert_eq(atomic_load(&c->owner->arena->state), ARENA_FREE, "its thread has exited");
  pthread_barrier_wait(&go);
  pthread_join(claimer, NULL);
  pthread_barrier_destroy(&hold);
  pthread_barrier_destroy(&go);
}

Test(remote, a_thread_that_claims_the_arena_its_chain_is_for_takes_the_chain_in) {
  void *mine = ta_malloc(64); /* this thread's arena is not free: the other one is */
  holder_t h = {0};
  claimer_t c = {.owner = &h};
  int32_t used;
  claim_the_chains_arena(&c, &used);
  ta_run_t *r = ta_run_of(h.blocks[0]);
  int32_t got_here = ta_run_of(c.got) == r;
  cr_assert_eq(c.seen[0], 0, "put off");
  cr_assert_eq(c.arena, h.arena, "the only free arena: the one its chain was for");
  cr_assert_eq(ta_run_of(c.got)->owner, h.arena, "and allocated there");
  cr_assert_eq(c.seen[1], 0, "the chain was taken in at the claim");
  cr_assert_eq(c.used, used - 3 + got_here, "the three back on their run then, none twice");
  for (size_t i = 0; i < 3; i++)
    cr_assert(ta_small_on_free_list(r, h.blocks[i]) || h.blocks[i] == c.got,
              "block %zu on its run's list", i);
  for (size_t i = 3; i < sizeof h.blocks / sizeof h.blocks[0]; i++)
    ta_free(h.blocks[i]);
  ta_free(mine);
}

/* The same thread, once it owns the arena, frees a block of its chain again: the owner's
 * verdict (the block on its run's list) reports it. */
Test(remote, the_claimers_second_free_of_a_block_its_chain_held_aborts, .signal = SIGABRT) {
  void *mine = ta_malloc(64);
  (void)mine;
  holder_t h = {0};
  claimer_t c = {.owner = &h, .free_again = true};
  int32_t used;
  claim_the_chains_arena(&c, &used);
}

static ta_arena_t *child_counts_for; /* the arena the child's chain is for */

static void child_counts_at_exit(void) {
  /* After the exit hook of the child's one thread, which the fork cut off from its arena. The
   * push of 3 blocks into an arena without a thread drains it only from TA_DRAIN_EVERY on. */
  _exit(tt_remote_len(child_counts_for) == 3 ? 0 : 5);
}

/* A thread forks with a chain put off, inside one of its slow paths (as a signal handler may):
 * in the child, its arena set aside, its exit hook still sends the chain on, to an arena whose
 * thread the child does not have. The child's thread leaves by pthread_exit, which runs its
 * keys' destructors and then, the last thread gone, exit. */
Test(remote, a_fork_childs_chain_goes_on_at_its_threads_exit) {
  pthread_barrier_t hold;
  pthread_barrier_init(&hold, NULL, 2);
  holder_t h = {.hold = &hold};
  pthread_t owner;
  pthread_create(&owner, NULL, alloc_hold_exit, &h);
  pthread_barrier_wait(&hold); /* allocated */
  void *own = ta_malloc(64);   /* this thread's arena, whose slow path the fork cuts */
  ta_arena_t *mine = ta_tl_arena;
  for (size_t i = 0; i < 3; i++)
    ta_free(h.blocks[i]); /* into this thread's chain */
  ta_slow_enter(mine);    /* as if a signal handler forked inside a slow path */
  pid_t pid = fork();
  if (pid == 0) {
    child_counts_for = h.arena;
    int cut_off = ta_tl_arena == &ta_sentinel_arena && tt_remote_len(h.arena) == 0 &&
                  atomic_load(&h.arena->state) == ARENA_FREE;
    if (!cut_off || atexit(child_counts_at_exit) != 0) _exit(4);
    pthread_exit(NULL);
  }
  ta_slow_leave(mine);
  int st;
  waitpid(pid, &st, 0);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child's status %d", st);
  ta_free(own);
  pthread_barrier_wait(&hold);
  pthread_join(owner, NULL);
  pthread_barrier_destroy(&hold);
}

static void *alloc_and_exit(void *arg) {
  void **out = arg;
  out[0] = ta_malloc(128);
  out[1] = ta_tl_arena;
  return NULL;
}

Test(remote, exited_thread_arena_is_adopted) {
  void *out[2];
  pthread_t t;
  pthread_create(&t, NULL, alloc_and_exit, out);
  pthread_join(t, NULL);
  ta_arena_t *dead = out[1];
  cr_assert_eq(atomic_load(&dead->state), ARENA_FREE);
  /* Its block is still valid; freeing it from here is a remote free to the free arena. */
  ta_free(out[0]);
  cr_assert_eq(tt_remote_len(dead), 1);
  /* The next thread adopts the same arena and drains it. */
  void *out2[2];
  pthread_create(&t, NULL, alloc_and_exit, out2);
  pthread_join(t, NULL);
  cr_assert_eq(out2[1], dead, "adopted, not a new arena");
  cr_assert_eq(out2[0], out[0], "and its freed block reused");
  ta_free(out2[0]);
}

typedef struct {
  void *blocks[3 * TA_DRAIN_EVERY];
  size_t size;
  ta_arena_t *arena;
  pthread_barrier_t *together; /* when set: wait there before exiting */
} leftover_t;

static void *leave_blocks(void *arg) {
  leftover_t *l = arg;
  for (size_t i = 0; i < sizeof l->blocks / sizeof l->blocks[0]; i++)
    l->blocks[i] = ta_malloc(l->size);
  l->arena = ta_tl_arena;
  if (l->together) pthread_barrier_wait(l->together);
  return NULL;
}

/* A thread that allocates blocks of `size` and exits, leaving them to us. */
static ta_arena_t *left_by_a_thread(leftover_t *l, size_t size) {
  *l = (leftover_t){.size = size};
  pthread_t t;
  pthread_create(&t, NULL, leave_blocks, l);
  pthread_join(t, NULL);
  cr_assert_eq(atomic_load(&l->arena->state), ARENA_FREE);
  return l->arena;
}

/* Blocks freed into an arena whose thread has exited: every TA_DRAIN_EVERY-th such free takes
 * them in, so that they do not wait for an adoption or the orphan purge, and the arena stays
 * without a thread, adoptable. */
Test(remote, a_freer_takes_in_what_it_freed_into_an_ownerless_arena) {
  void *mine = ta_malloc(64); /* this thread has an arena of its own */
  leftover_t l;
  ta_arena_t *dead = left_by_a_thread(&l, 64);
  cr_assert_neq(dead, ta_tl_arena);
  ta_run_t *r = ta_run_of(l.blocks[0]);
  cr_assert_eq(ta_run_of(l.blocks[2 * TA_DRAIN_EVERY]), r, "one run holds them all");
  int32_t used = RUN_USED(r);
  uint64_t remote = dead->cnt.remote_frees;
  for (size_t i = 0; i < TA_DRAIN_EVERY - 1; i++)
    ta_free(l.blocks[i]);
  cr_assert_eq(tt_remote_len(dead), TA_DRAIN_EVERY - 1, "below the count they wait");
  cr_assert_eq(RUN_USED(r), used, "and count as used");
  ta_free(l.blocks[TA_DRAIN_EVERY - 1]);
  cr_assert_eq(tt_remote_len(dead), 0, "the count's last free took them in");
  cr_assert_eq(RUN_USED(r), used - TA_DRAIN_EVERY, "back on their run");
  cr_assert_eq(dead->cnt.remote_frees - remote, TA_DRAIN_EVERY);
  cr_assert_eq(atomic_load(&dead->state), ARENA_FREE, "given back: still adoptable");
  for (size_t i = 0; i < TA_DRAIN_EVERY; i++)
    cr_assert(ta_small_on_free_list(r, l.blocks[i]), "block %zu on its run's list", i);
  for (size_t i = TA_DRAIN_EVERY; i < 3 * TA_DRAIN_EVERY; i++)
    ta_free(l.blocks[i]);
  cr_assert_eq(tt_remote_len(dead), 0);
  cr_assert_eq(RUN_USED(r), used - 3 * TA_DRAIN_EVERY, "every block back");
  /* The next thread that needs an arena still adopts it. */
  void *out[2];
  pthread_t t;
  pthread_create(&t, NULL, alloc_and_exit, out);
  pthread_join(t, NULL);
  cr_assert_eq(out[1], dead, "adopted, not a new arena");
  ta_free(out[0]);
  ta_free(mine);
}

/* Medium blocks count as small ones do, and are taken in as well. */
Test(remote, medium_blocks_freed_into_an_ownerless_arena_are_taken_in_too) {
  leftover_t l;
  ta_arena_t *dead = left_by_a_thread(&l, 20000);
  cr_assert_eq(ta_map_get((uintptr_t)l.blocks[0]), TA_MAP_MEDIUM);
  for (size_t i = 0; i < TA_DRAIN_EVERY - 1; i++)
    ta_free(l.blocks[i]);
  cr_assert_eq(tt_remote_len(dead), TA_DRAIN_EVERY - 1);
  ta_free(l.blocks[TA_DRAIN_EVERY - 1]);
  cr_assert_eq(tt_remote_len(dead), 0);
  cr_assert_eq(atomic_load(&dead->state), ARENA_FREE);
  for (size_t i = TA_DRAIN_EVERY; i < 3 * TA_DRAIN_EVERY; i++)
    ta_free(l.blocks[i]);
}

/* Two threads alive at once leave blocks of 64 bytes in two arenas, and exit. */
static void two_left_at_once(leftover_t l[2]) {
  pthread_barrier_t both;
  pthread_barrier_init(&both, NULL, 2);
  pthread_t t[2];
  for (int i = 0; i < 2; i++) {
    l[i] = (leftover_t){.size = 64, .together = &both};
    pthread_create(&t[i], NULL, leave_blocks, &l[i]);
  }
  for (int i = 0; i < 2; i++)
    pthread_join(t[i], NULL);
  pthread_barrier_destroy(&both);
  cr_assert_neq(l[0].arena, l[1].arena, "two threads at once, two arenas");
}

/* The count runs over every arena without a thread; its last free takes in the lists of the
 * arena it went to, and no other's. */
Test(remote, the_count_runs_over_every_ownerless_arena) {
  leftover_t l[2];
  two_left_at_once(l);
  leftover_t a = l[0], b = l[1];
  cr_assert_neq(a.arena, b.arena);
  for (size_t i = 0; i < TA_DRAIN_EVERY / 2; i++) {
    ta_free(a.blocks[i]);
    ta_free(b.blocks[i]);
  }
  cr_assert_eq(tt_remote_len(a.arena), TA_DRAIN_EVERY / 2, "the other arena's blocks wait");
  cr_assert_eq(tt_remote_len(b.arena), 0, "the last free's arena was drained");
  for (size_t i = TA_DRAIN_EVERY / 2; i < 3 * TA_DRAIN_EVERY; i++) {
    ta_free(a.blocks[i]);
    ta_free(b.blocks[i]);
  }
}

/* No drain of an arena that has a thread (here a claim of our own stands for an adoption),
 * nor of one whose lock this thread holds: a signal handler's free nested in a taking of
 * that lock beside one's own (a run slot borrowed from it) must not change its lists under
 * the interrupted call. */
Test(remote, no_drain_of_a_claimed_arena_nor_of_one_whose_lock_this_thread_holds) {
  void *mine = ta_malloc(64);
  leftover_t l;
  ta_arena_t *dead = left_by_a_thread(&l, 64);
  cr_assert(ta_arena_try_claim(dead));
  for (size_t i = 0; i < TA_DRAIN_EVERY; i++)
    ta_free(l.blocks[i]);
  cr_assert_eq(tt_remote_len(dead), 0, "claimed: put off in this thread's chain");
  ta_remote_flush();
  cr_assert_eq(tt_remote_len(dead), TA_DRAIN_EVERY, "claimed: its lists are left alone");
  ta_arena_give_back(dead);
  cr_assert(ta_slow_try_enter_beside(dead));
  for (size_t i = TA_DRAIN_EVERY; i < 2 * TA_DRAIN_EVERY; i++)
    ta_free(l.blocks[i]);
  cr_assert_eq(tt_remote_len(dead), 2 * TA_DRAIN_EVERY, "its lock held here: left alone");
  cr_assert_eq(atomic_load(&dead->state), ARENA_FREE);
  ta_slow_leave(dead);
  for (size_t i = 2 * TA_DRAIN_EVERY; i < 3 * TA_DRAIN_EVERY; i++)
    ta_free(l.blocks[i]);
  cr_assert_eq(tt_remote_len(dead), 0, "and taken in once the lock is let go");
  ta_free(mine);
}

/* The lock word is the holder's tag from the compare-and-swap that takes it to the store that
 * lets it go: a signal handler's call cut in anywhere between finds it this thread's, nests
 * (no claim, no drain, no wait for itself), and leaves it held. */
Test(remote, a_lock_this_thread_took_is_its_own_from_the_taking_on, .timeout = 10) {
  leftover_t l;
  ta_arena_t *dead = left_by_a_thread(&l, 64);
  cr_assert(ta_slow_try_enter_beside(dead));
  cr_assert_eq(atomic_load(&dead->slow), (uintptr_t)&ta_tl_tag, "the tag, in the taking itself");
  cr_assert_eq(dead->slow_nest, 0);
  cr_assert(ta_slow_held_by_me(dead));
  cr_assert(!ta_arena_try_claim(dead), "no claim of it");
  ta_slow_enter(dead); /* as a handler's slow path would: no wait */
  cr_assert_eq(dead->slow_nest, 1);
  ta_slow_leave(dead);
  cr_assert_eq(atomic_load(&dead->slow), (uintptr_t)&ta_tl_tag, "the outer taking still holds it");
  ta_slow_leave(dead);
  cr_assert_eq(atomic_load(&dead->slow), 0, "let go by the outer one");
  cr_assert_eq(dead->slow_nest, 0);
  for (size_t i = 0; i < 3 * TA_DRAIN_EVERY; i++)
    ta_free(l.blocks[i]);
  cr_assert_eq(tt_remote_len(dead), 0, "drained once let go");
}

static void *first_call_is_free(void *p) {
  ta_free(p);
  cr_assert_eq(ta_tl_arena, &ta_sentinel_arena, "a free needs no arena");
  return NULL;
}

/* A thread that frees a block of an arena without a thread before it has an arena of its own
 * takes that arena at its first malloc: a thread handed an exited one's blocks then frees and
 * allocates in one arena. */
typedef struct {
  void *frees;             /* the block it frees first */
  void *got;               /* what its malloc then returned */
  ta_arena_t *arena;       /* the arena it had then */
  pthread_barrier_t *hold; /* when set: wait there twice between the free and the malloc */
  pthread_barrier_t *stay; /* when set: wait there twice after the malloc, before exiting */
  void **more;             /* and n_more blocks it frees after the first */
  size_t n_more;
} hinted_t;

static void *free_then_alloc(void *arg) {
  hinted_t *h = arg;
  ta_free(h->frees);
  for (size_t i = 0; i < h->n_more; i++)
    ta_free(h->more[i]);
  cr_assert_eq(ta_tl_arena, &ta_sentinel_arena, "the free took no arena");
  if (h->hold) {
    pthread_barrier_wait(h->hold);
    pthread_barrier_wait(h->hold);
  }
  h->got = ta_malloc(64);
  h->arena = ta_tl_arena;
  if (h->stay) {
    pthread_barrier_wait(h->stay);
    pthread_barrier_wait(h->stay);
  }
  return NULL;
}

/* A thread that runs free_then_alloc on h, waited for. */
static void run_hinted(hinted_t *h) {
  pthread_t n;
  pthread_create(&n, NULL, free_then_alloc, h);
  pthread_join(n, NULL);
}

/* Frees what l still holds from its block `from` on. */
static void free_left(leftover_t *l, size_t from) {
  for (size_t k = from; k < sizeof l->blocks / sizeof l->blocks[0]; k++)
    ta_free(l->blocks[k]);
}

/* Of two arenas left by two_left_at_once, the index of the one the list order does not give a
 * claim (the list is newest first, and a claim takes its first FREE arena). */
static int not_first_in_list(leftover_t l[2]) {
  ta_arena_t *a = ta_arena_first();
  while (a && atomic_load(&a->state) != ARENA_FREE)
    a = a->next_all;
  return a == l[0].arena ? 1 : 0;
}

/* Two threads leave blocks of 64 bytes in two arenas; each of two later threads frees one of
 * one arena's blocks, then allocates. The first free arena on the list (the newest) is at most
 * one of the two: each thread gets the arena it freed into, and there the block it freed. */
Test(remote, a_new_thread_takes_the_arena_it_freed_into) {
  void *mine = ta_malloc(64); /* this thread has an arena: its frees below leave no hint */
  leftover_t l[2];
  two_left_at_once(l);
  for (int i = 0; i < 2; i++) {
    cr_assert_eq(atomic_load(&l[i].arena->state), ARENA_FREE);
    hinted_t h = {.frees = l[i].blocks[0]};
    run_hinted(&h);
    cr_assert_eq(h.arena, l[i].arena, "thread %d: the arena it freed into", i);
    cr_assert_eq(h.got, l[i].blocks[0], "thread %d: and the block it freed", i);
    cr_assert_eq(atomic_load(&l[i].arena->state), ARENA_FREE, "given up at its exit");
    ta_free(h.got);
    free_left(&l[i], 1);
  }
  ta_free(mine);
}

/* The limit: a thread that frees TA_DRAIN_EVERY blocks into arenas without a thread before its
 * first malloc still takes the arena it freed into; one that frees one more claims in list
 * order, as one that freed none. Both free into the arena the list order would not give. */
Test(remote, a_thread_that_frees_a_batch_first_claims_in_list_order) {
  void *mine = ta_malloc(64);
  leftover_t l[2];
  two_left_at_once(l);
  int o = not_first_in_list(l);
  hinted_t at = {.frees = l[o].blocks[0], .more = l[o].blocks + 1, .n_more = TA_DRAIN_EVERY - 1};
  run_hinted(&at);
  cr_assert_eq(at.arena, l[o].arena, "%d frees into it first: its arena", TA_DRAIN_EVERY);
  hinted_t past = {.frees = l[o].blocks[TA_DRAIN_EVERY],
                   .more = l[o].blocks + TA_DRAIN_EVERY + 1,
                   .n_more = TA_DRAIN_EVERY};
  run_hinted(&past);
  cr_assert_neq(past.arena, l[o].arena, "%d frees into it first: not its arena",
                TA_DRAIN_EVERY + 1);
  cr_assert_neq(past.arena, &ta_sentinel_arena);
  ta_free(at.got);
  ta_free(past.got);
  free_left(&l[o], 2 * TA_DRAIN_EVERY + 1);
  free_left(&l[1 - o], 0);
  ta_free(mine);
}

/* The last arena freed into, not the first: a thread that frees into one arena, then into the
 * other, takes the other; in the other order, the first. */
Test(remote, a_new_thread_takes_the_last_arena_it_freed_into) {
  void *mine = ta_malloc(64);
  leftover_t l[2];
  two_left_at_once(l);
  for (int last = 0; last < 2; last++) { /* round `last` frees each arena's block `last` */
    hinted_t h = {.frees = l[1 - last].blocks[last], .more = &l[last].blocks[last], .n_more = 1};
    run_hinted(&h);
    cr_assert_eq(h.arena, l[last].arena, "freed into %d last: took %p", last, (void *)h.arena);
    ta_free(h.got);
  }
  free_left(&l[0], 2);
  free_left(&l[1], 2);
  ta_free(mine);
}

/* The arena it freed into claimed by another thread between its free and its malloc: it claims
 * in list order instead, and the other thread keeps that arena. Both free into the arena the
 * list order would not give; the first to allocate takes it. */
Test(remote, a_wanted_arena_taken_meanwhile_is_passed_over) {
  void *mine = ta_malloc(64);
  leftover_t l[2];
  two_left_at_once(l);
  int o = not_first_in_list(l);
  pthread_barrier_t hold, stay;
  pthread_barrier_init(&hold, NULL, 2);
  pthread_barrier_init(&stay, NULL, 2);
  hinted_t late = {.frees = l[o].blocks[0], .hold = &hold};
  hinted_t first = {.frees = l[o].blocks[1], .stay = &stay};
  pthread_t tl, tf;
  pthread_create(&tl, NULL, free_then_alloc, &late);
  pthread_barrier_wait(&hold); /* `late` has freed into l[o], and waits */
  pthread_create(&tf, NULL, free_then_alloc, &first);
  pthread_barrier_wait(&stay); /* `first` has freed into it too, and allocated */
  cr_assert_eq(first.arena, l[o].arena, "the first to allocate takes the arena it freed into");
  pthread_barrier_wait(&hold); /* `late` allocates while `first` holds it */
  pthread_join(tl, NULL);
  cr_assert_eq(late.arena, l[1 - o].arena, "taken: the first FREE arena on the list instead");
  cr_assert_eq(ta_run_of(late.got)->owner, late.arena);
  pthread_barrier_wait(&stay); /* `first` may exit */
  pthread_join(tf, NULL);
  pthread_barrier_destroy(&hold);
  pthread_barrier_destroy(&stay);
  ta_free(late.got);
  ta_free(first.got);
  free_left(&l[o], 2);
  free_left(&l[1 - o], 0);
  ta_free(mine);
}

Test(remote, thread_whose_first_call_is_free) {
  void *p = ta_malloc(300);
  pthread_t t;
  pthread_create(&t, NULL, first_call_is_free, p);
  pthread_join(t, NULL);
  cr_assert_eq(tt_remote_len(ta_tl_arena), 1);
}

static void count_arena(ta_arena_t *a, void *arg) {
  (void)a;
  (*(size_t *)arg)++;
}

static pthread_key_t late_key;
static void late_destructor(void *v) {
  /* Runs after the allocator's own destructor may have run. */
  void *p = ta_malloc(777);
  ta_free(v);
  ta_free(p);
}
static void *uses_late_key(void *arg) {
  (void)arg;
  ta_free(ta_malloc(10));
  pthread_setspecific(late_key, ta_malloc(55));
  return NULL;
}

Test(remote, malloc_in_late_tls_destructor) {
  pthread_key_create(&late_key, late_destructor);
  for (int i = 0; i < 200; i++) {
    pthread_t t;
    pthread_create(&t, NULL, uses_late_key, NULL);
    pthread_join(t, NULL);
  }
  /* Each borrowed arena was given back: one thread at a time needs at most two arenas. */
  size_t n = 0;
  ta_arena_foreach(count_arena, &n);
  cr_assert_leq(n, 3, "%zu arenas", n);
}

static void *churn(void *arg) {
  (void)arg;
  void *p = ta_malloc(100);
  ta_free(p);
  return NULL;
}

Test(remote, sequential_threads_reuse_one_arena) {
  ta_free(ta_malloc(1));
  for (int i = 0; i < 2000; i++) {
    pthread_t t;
    pthread_create(&t, NULL, churn, NULL);
    pthread_join(t, NULL);
  }
  size_t n = 0;
  ta_arena_foreach(count_arena, &n);
  cr_assert_leq(n, 3, "%zu arenas for one live thread at a time", n);
}

Test(remote, fork_child_gets_working_allocator_and_owned_arena) {
  void *p = ta_malloc(64);
  pid_t pid = fork();
  if (pid == 0) {
    /* The forking thread was not in a slow path: it keeps its arena. */
    int ok = ta_tl_arena != &ta_sentinel_arena;
    ta_free(p);
    for (int i = 0; i < 10000; i++) ta_free(ta_malloc((size_t)i % 5000 + 1));
    _exit(ok ? 0 : 3);
  }
  int st;
  waitpid(pid, &st, 0);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  ta_free(p);
}

Test(remote, fork_child_sets_aside_arena_caught_mid_operation) {
  void *p = ta_malloc(64);
  ta_arena_t *a = ta_tl_arena;
  ta_slow_enter(a); /* as if a signal handler forked inside a slow path */
  pid_t pid = fork();
  if (pid == 0) {
    int aside = atomic_load(&a->state) == ARENA_SUSPENDED && ta_tl_arena == &ta_sentinel_arena;
    void *q = ta_malloc(64); /* a fresh arena: the interrupted call has not ended */
    int fresh = ta_tl_arena != a && q != NULL;
    ta_free(q);
    ta_free(p); /* goes to the set-aside arena's remote list, not reused meanwhile */
    _exit(aside && fresh ? 0 : 4);
  }
  ta_slow_leave(a);
  int st;
  waitpid(pid, &st, 0);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
  ta_free(p);
}
