/*
 * medium.c — blocks of 8 KiB .. 1 MiB, each with its own meta block, in medium chunks; and
 * blocks of small classes of 1 KiB and more whose arena has no runs for them yet (alloc.c).
 *
 * Layout of a medium chunk:
 *   [chunk header 64 B][block][block]...[block][end marker: 16 B, INUSE, size 0]
 * Every block starts with a 16-byte meta block {size | flags, check}; data follows, 16-byte
 * aligned. A free block also keeps its size in its last word (the footer), so the block
 * after it can find it, and links itself into a bin with data words 0 and 1.
 *
 * Bins are the size classes of sizeclass.c: a free block of size s sits in the bin of the
 * largest class <= s, so every block in bin ta_size_class(n) or above fits n. A bitmap of
 * non-empty bins finds the first fit in a few instructions. Allocation splits the block
 * when the rest is worth keeping; free merges with free neighbours at once, so no two
 * free blocks are ever adjacent.
 *
 * All of this runs on the owning thread; other threads' frees arrive through the arena's
 * remote list (alloc.c) and are merged here when the owner drains it (arena.c), which the
 * callers above do before they allocate, as they let what is due go back (purge.c).
 */
#include "internal.h"

#define M_SIZE(h) ((h)->size_flags & TA_M_SIZE_MASK)
#define M_NEXT(h) ((ta_mhdr_t *)((char *)(h) + M_SIZE(h)))
#define M_LINK(h) ((ta_mhdr_t **)((h) + 1)) /* [0] next, [1] prev in the bin */
#define M_FOOTER(h, s) (*(size_t *)((char *)(h) + (s) - sizeof(size_t)))

/* The top of a chunk (its free block that ends at the end marker) sits in a bin of its own,
 * above every class a block can have: it is cut only when no other free block fits, so
 * that the blocks in use stay low in the chunk and the top stays whole, where it can be
 * trimmed (wilderness preservation). Were it binned by its size, a top smaller than a hole
 * below it would be cut first, and the blocks in use would creep up through the whole
 * chunk, each pass touching every page of it. A free block is the top or not for as long
 * as it is free. */
#define TOP_BIN (TA_NUM_BINS - 1)
_Static_assert(TA_CHUNK_SIZE < (size_t)7 << 20, "no block reaches the top bin's class");

/* Whether a block of s bytes at h ends at its chunk's end marker. */
static bool ends_chunk(const ta_mhdr_t *h, size_t s) {
  return (uintptr_t)h + s == (uintptr_t)ta_chunk_of(h) + TA_MEDIUM_END;
}

static bool is_top(const ta_mhdr_t *h) { return ends_chunk(h, M_SIZE(h)); }

static unsigned bin_for(const ta_mhdr_t *h, size_t s) {
  return ends_chunk(h, s) ? TOP_BIN : ta_bin_of(s);
}

static void bin_insert(ta_arena_t *a, ta_mhdr_t *h) {
  size_t s = M_SIZE(h);
  unsigned b = bin_for(h, s);
  ta_mhdr_t *first = a->bins[b];
  M_LINK(h)[0] = first;
  M_LINK(h)[1] = NULL;
  if (first) M_LINK(first)[1] = h;
  a->bins[b] = h;
  a->bin_map[b >> 6] |= (uint64_t)1 << (b & 63);
  M_FOOTER(h, s) = s;
}

static TA_COLD void corrupted(const char *what, const void *p) { ta_fatal(what, p); }

/* Unlinks a free block after checking it and both its neighbours in the bin: each must
 * point back at it. Links live in freed memory; a forged one is reported, never followed
 * into a write. */
static void bin_remove(ta_arena_t *a, ta_mhdr_t *h) {
  ta_mhdr_t *next = M_LINK(h)[0], *prev = M_LINK(h)[1];
  unsigned b = bin_for(h, M_SIZE(h));
  if (!ta_medium_check_ok(h) || (h->size_flags & TA_M_INUSE) ||
      M_FOOTER(h, M_SIZE(h)) != M_SIZE(h) || (next && M_LINK(next)[1] != h) ||
      (prev ? M_LINK(prev)[0] != h : a->bins[b] != h))
    corrupted("malloc(): corrupted free block", h + 1);
  if (prev) M_LINK(prev)[0] = next;
  else {
    a->bins[b] = next;
    if (next == NULL) a->bin_map[b >> 6] &= ~((uint64_t)1 << (b & 63));
  }
  if (next) M_LINK(next)[1] = prev;
}

/* The bytes free block h gives up in front for its data to lie on `align`: none, or a free
 * block of its own (TA_MIN_MBLOCK at least). None for TA_ALIGNMENT: every block is on it. */
static size_t aligned_front(const ta_mhdr_t *h, size_t align) {
  uintptr_t data = ta_align_up((uintptr_t)(h + 1), align);
  while (data - sizeof(ta_mhdr_t) != (uintptr_t)h &&
         data - sizeof(ta_mhdr_t) - (uintptr_t)h < TA_MIN_MBLOCK)
    data += align;
  return data - sizeof(ta_mhdr_t) - (uintptr_t)h;
}

/* The free block that holds `need` bytes with its data on `align`: the first that does among
 * the first few blocks of each bin, from the bin below need's class (it holds blocks up to one
 * class smaller, a few of which may fit exactly) up, then the tops. Unaligned, the first block
 * of any bin from need's class up fits. Aligned, a block fits just so when it lies on `align`
 * already, as a freed block of a small class does on its cache line. */
static ta_mhdr_t *bin_first_fit(ta_arena_t *a, size_t need, size_t align) {
  unsigned b = ta_size_class(need) - 1;
  for (unsigned w = b >> 6; w < TA_BIN_WORDS; w++) {
    uint64_t bits = a->bin_map[w];
    if (w == b >> 6) bits &= ~(uint64_t)0 << (b & 63);
    if (w == TOP_BIN >> 6) bits &= ~((uint64_t)1 << (TOP_BIN & 63));
    for (; bits; bits &= bits - 1) {
      unsigned looked = 0;
      for (ta_mhdr_t *h = a->bins[w * 64 + (unsigned)__builtin_ctzll(bits)]; h && looked < 4;
           h = M_LINK(h)[0], looked++)
        if (M_SIZE(h) >= aligned_front(h, align) + need) return h;
    }
  }
  for (ta_mhdr_t *h = a->bins[TOP_BIN]; h; h = M_LINK(h)[0]) /* one per chunk */
    if (M_SIZE(h) >= aligned_front(h, align) + need) return h;
  return NULL;
}

/* A meta block swallowed by a merge: nothing may take it for a block again (a second
 * free of its pointer must fail the check word, not find a stale INUSE bit). */
static void forget_hdr(ta_mhdr_t *h) {
  h->check = 0;
  ta_mh_store(h, 0);
}

/* A free block swallowed by its neighbour: its header goes, and its bin links, so that no
 * address of ours is left for a block cut from the merged one to hand out. */
static void forget_merged(ta_mhdr_t *h) {
  forget_hdr(h);
  M_LINK(h)[0] = M_LINK(h)[1] = NULL;
}

static bool medium_chunk_new(ta_arena_t *a) {
  ta_chunk_t *c = ta_chunk_alloc(a, TA_MAP_MEDIUM);
  if (c == NULL) return false;
  /* With lazy commit (chunk.c), its first unit and its tail are committed: the top's
   * header and words, and the top's footer and the end marker. */
  ta_mhdr_t *h = (ta_mhdr_t *)((char *)c + TA_MEDIUM_HDR);
  ta_mhdr_t *end = (ta_mhdr_t *)((char *)c + TA_MEDIUM_END);
  ta_mh_set(h, (size_t)((char *)end - (char *)h));
  ta_mh_set(end, TA_M_INUSE | TA_M_PREV_FREE);
  *ta_medium_stamp(h) = ta_os_now_ms();
  *ta_medium_res(h) = (size_t)((char *)end - (char *)h);
  /* The whole chunk is one free block, the top: resident only where it was touched. */
  c->touched = c->decommitted ? (uintptr_t)(ta_medium_res(h) + 1) : (uintptr_t)end;
  /* Hardened: a write running off the chunk's last block faults (without the guard if the
   * kernel refuses). */
  if (ta_secure) (void)ta_os_protect((char *)c + TA_CHUNK_SIZE - TA_MEDIUM_GUARD, TA_MEDIUM_GUARD, false);
  bin_insert(a, h);
  ta_map_set((uintptr_t)c, TA_MAP_MEDIUM);
  c->prev = NULL;
  TA_PUBLISH(c->next, a->medium_chunks); /* see chunk_list_push (small.c) */
  if (a->medium_chunks) a->medium_chunks->prev = c;
  a->medium_chunks = c;
  return true;
}

static void medium_chunk_free(ta_arena_t *a, ta_chunk_t *c) {
  /* The end marker lies where a small chunk keeps blocks: leave no check word there. */
  forget_hdr((ta_mhdr_t *)((char *)c + TA_MEDIUM_END));
  /* The chunk may next serve small blocks: its guard page opens again. */
  if (ta_secure) (void)ta_os_protect((char *)c + TA_CHUNK_SIZE - TA_MEDIUM_GUARD, TA_MEDIUM_GUARD, true);
  if (c->prev) TA_PUBLISH(c->prev->next, c->next);
  else a->medium_chunks = c->next;
  if (c->next) c->next->prev = c->prev;
  ta_chunk_release(a, c);
}

/* What a free block knows of its past: when its bytes became free, how many of them may be
 * resident, and whether its inner pages were given back (TA_M_DECOMMITTED or 0). */
typedef struct {
  uint64_t since;
  size_t resident;
  size_t gone;
} mage_t;

/* How many bytes of free block h may be resident: none once given back; a large block's own
 * count; and a top only as far as it was touched. */
static size_t resident_max(const ta_mhdr_t *h) {
  if (h->size_flags & TA_M_DECOMMITTED) return 0;
  size_t s = M_SIZE(h), r = s;
  if (s >= TA_MEDIUM_PURGE_MIN && *ta_medium_res((ta_mhdr_t *)h) < s) r = *ta_medium_res((ta_mhdr_t *)h);
  const ta_chunk_t *c = ta_chunk_of(h);
  if (ends_chunk(h, s)) {
    uintptr_t t = c->touched > (uintptr_t)h ? c->touched - (uintptr_t)h : 0;
    if (t < r) r = t;
  }
  return r;
}

/* Free block h's past (a block too small to keep its time: free since `now`). */
static mage_t age_of(const ta_mhdr_t *h, uint64_t now) {
  mage_t g = {now, resident_max(h), h->size_flags & TA_M_DECOMMITTED};
  if (M_SIZE(h) >= TA_MEDIUM_PURGE_MIN) g.since = *ta_medium_stamp((ta_mhdr_t *)h);
  return g;
}

/* Blocks merged into one: the age of their resident bytes, averaged by size, so that a large
 * hole that a small fresh block joins stays (mostly) old, and a fresh block that joins a
 * given-back hole counts as fresh. */
typedef struct {
  uint64_t now, weight, weighted;
} mix_t;

static void mix_add(mix_t *m, mage_t g) {
  m->weight += g.resident;
  m->weighted += (uint64_t)g.resident * (m->now > g.since ? m->now - g.since : 0);
}

static mage_t mix_age(const mix_t *m) {
  /* weighted is 0 when every part is fresh (or given back): no division then */
  mage_t g = {m->weighted ? m->now - m->weighted / m->weight : m->now, m->weight, 0};
  return g;
}

/* Makes [h, h + s) a free block: header, bin, footer, and the PREV_FREE bit after it; a
 * large one also its past (the decay purge's). Pages freed now make the arena due for a
 * purge (a block cut from a free one was counted when that one was freed). */
static void make_free(ta_arena_t *a, ta_mhdr_t *h, size_t s, mage_t g, bool fresh) {
  ta_mh_set(h, s | g.gone);
  bin_insert(a, h);
  if (s >= TA_MEDIUM_PURGE_MIN) {
    *ta_medium_stamp(h) = g.since;
    *ta_medium_res(h) = g.resident < s ? g.resident : s;
    if (fresh && (a->medium_dirty_since == 0 || g.since < a->medium_dirty_since)) {
      a->medium_dirty_since = g.since;
      ta_purge_note(a, g.since);
    }
  }
  ta_mhdr_t *n = (ta_mhdr_t *)((char *)h + s);
  ta_mh_store(n, n->size_flags | TA_M_PREV_FREE); /* n may be live, read by its freer */
}

/* The top of a chunk is its free block that ends at the end marker: what is left of the
 * chunk's never-used space, grown again by what merges into it from below. Allocation
 * takes it last (it sits in a bin of its own), so its pages above the last block handed out
 * serve only a later peak: a thread whose medium blocks rise and fall would keep its
 * highest peak resident for the decay time, and with many threads those peaks add up,
 * though they do not come at once. So, as the break of a heap is trimmed, a top whose
 * touched part exceeds its allowance gives back all but the first quarter of it, at once:
 * one madvise for at least three quarters of the allowance, faulted in since the last.
 * The allowance is the arena's share of half the dirty budget (ta_top_allowance, dirty.c).
 * c->touched bounds what may be resident above the top's start. */

/* What a block's successor writes past the block's end: its header, and its links, time and
 * count if it is free (the top's, after a cut). */
#define TOP_WORDS (sizeof(ta_mhdr_t) + 4 * sizeof(uint64_t))

/* A block was handed out or grown up to `end`, with its successor's words there. */
static void top_touch(ta_chunk_t *c, const void *end) {
  uintptr_t e = (uintptr_t)end + TOP_WORDS;
  if (e > c->touched) c->touched = e;
}

/* Whether a block of up to `size` bytes cut from free block h would reach pages of the top
 * never touched (or given back by a trim): the heap's footprint would grow. */
static bool top_grows(const ta_mhdr_t *h, size_t size) {
  return is_top(h) && (uintptr_t)h + size + TOP_WORDS > ta_chunk_of(h)->touched;
}

/* Before a block of up to `size` bytes is cut at h from the top, or grown from h into it:
 * the pages it and the top's new header and words will take are committed (lazy commit,
 * chunk.c: a chunk's pages are committed from its start, each time at least twice as far).
 * False if the kernel refuses. */
static bool top_commit(const ta_mhdr_t *h, size_t size) {
  ta_chunk_t *c = ta_chunk_of(h);
  size_t end = (size_t)((uintptr_t)h - (uintptr_t)c) + size + TOP_WORDS;
  if (end > TA_CHUNK_SIZE) end = TA_CHUNK_SIZE;
  return ta_chunk_commit(c, end);
}

/* The free block top ends at the end marker: trim it. */
static void top_trim(ta_chunk_t *c, ta_mhdr_t *top, uint64_t now_ms) {
  uintptr_t allow = ta_top_allowance(), keep = allow / 4, base = (uintptr_t)c;
  uintptr_t start = (uintptr_t)(ta_medium_res(top) + 1);
  /* If pages the last trim gave back are touched again within a decay time, the top is in
   * use up to there (a thread cycles a block larger than the allowance): from then on it
   * keeps twice as much, up to four allowances (and half the chunk), so that such a thread
   * pays a few trims, not one a cycle. A top that falls step by step, its pages never
   * touched again, is trimmed at each step; after a decay time without trims it starts
   * again from a quarter of the allowance. That decay time is the owner's own
   * (ta_owner_decay, dirty.c): a thread that waits for a CPU between its slices saw the
   * wall time pass between two of its cycles, and its top forgot what it had learnt at
   * every turn (1,077 MiB trimmed and faulted in again in 5,131 calls with 256 threads on
   * 2 CPUs; the owner's time took the 1,024-thread pool's page faults down by 12%). */
  uint32_t now = (uint32_t)now_ms, since = now - c->trim_ms;
  bool recent = c->trim_ms != 0 && (since < ta_decay_ms || since < ta_owner_decay());
  if (!recent) c->trim_keep = 0;
  if ((uintptr_t)c->trim_keep * ta_page_size > keep) keep = (uintptr_t)c->trim_keep * ta_page_size;
  /* Over: touched beyond what the top keeps by three quarters of the allowance. */
#define TOP_OVER(keep_) (c->touched >= ta_align_up(start + (keep_), ta_page_size) + allow / 4 * 3)
  if (!TOP_OVER(keep)) return;
  if (recent && c->touched > base + (uintptr_t)c->trim_lo * ta_page_size) {
    uintptr_t cap = allow * 4 < TA_CHUNK_SIZE / 2 ? allow * 4 : TA_CHUNK_SIZE / 2;
    keep = keep * 2 < cap ? keep * 2 : cap;
    c->trim_keep = (uint16_t)(keep / ta_page_size);
  }
  bool over = TOP_OVER(keep);
#undef TOP_OVER
  if (!over) return;
  uintptr_t lo = ta_align_up(start + keep, ta_page_size);
  /* The last page holds the top's footer and the end marker: it stays. */
  uintptr_t last = (base + TA_MEDIUM_END - sizeof(size_t)) & ~(uintptr_t)(ta_page_size - 1);
  uintptr_t hi = ta_align_up(c->touched, ta_page_size);
  if (hi > last) hi = last;
  if (hi > lo && ta_os_decommit((void *)lo, hi - lo) != 0) return;
  c->touched = lo;
  c->trim_ms = now ? now : 1;
  c->trim_lo = (uint16_t)((lo - base) / ta_page_size);
}

/* Gives back the pages of free block h that hold neither its header and the words after
 * it (links, time, count) nor its footer; its DECOMMITTED bit says so until it merges or is
 * handed out (what is cut from it keeps the bit). Returns the bytes given back. */
size_t ta_medium_decommit(ta_mhdr_t *h) {
  size_t s = M_SIZE(h);
  uintptr_t lo = ta_align_up((uintptr_t)(ta_medium_res(h) + 1), ta_page_size);
  uintptr_t hi = ((uintptr_t)h + s - sizeof(size_t)) & ~(uintptr_t)(ta_page_size - 1);
  ta_chunk_t *c = ta_chunk_of(h);
  bool top = (uintptr_t)h + s == (uintptr_t)c + TA_MEDIUM_END;
  if (top && hi > ta_align_up(c->touched, ta_page_size)) /* nothing past touched is resident */
    hi = ta_align_up(c->touched, ta_page_size);
  /* A block without a whole inner page (large pages) keeps its pages, and says so. */
  if (hi <= lo) {
    if (top) ta_mh_store(h, h->size_flags | TA_M_DECOMMITTED);
    return 0;
  }
  if (ta_os_decommit((void *)lo, hi - lo) != 0) return 0;
  ta_mh_store(h, h->size_flags | TA_M_DECOMMITTED);
  if (top && c->touched > lo) c->touched = lo;
  return hi - lo;
}

/* The bit length of a free block's age (now - since): the buckets in which the purge below
 * finds its oldest blocks, each twice as old as the one before. */
#define AGE_BUCKETS 40
static unsigned age_bucket(uint64_t now, uint64_t since) {
  uint64_t d = now > since ? now - since : 0;
  unsigned b = d ? 64 - (unsigned)__builtin_clzll(d) : 0;
  return b < AGE_BUCKETS ? b : AGE_BUCKETS - 1;
}

/* The decay purge's part here, under the arena's lock (the owner's or the background
 * thread's): gives back the inner pages of the free blocks of 16 KiB or more free for `age`
 * ms; while those that stay may hold more than `share` bytes, of those free for half and an
 * eighth of it, then of all. A top (whose trims keep it within its allowance, top_trim)
 * goes only by its age and does not count against the share. With `all` (malloc_trim, an
 * ownerless arena), every free block that holds a whole page goes.
 * `hold` is what the arena's demand leaves these blocks, tops included (purge.c): while they
 * hold no more, none goes; past it, only the excess goes, the oldest first by the bit
 * length of their ages (those of older lengths, then of the length where the excess is
 * reached, in bin order, as far as it is, by whole blocks, none of more than twice what is
 * left of it). *held: blocks were kept for the hold and none stays only until it is due (the
 * caller looks again when the demand falls, not at their time). *oldest: the time of the
 * oldest block that waits for its time, else of the oldest that stays resident (0: none).
 * Returns the bytes given back. */
size_t ta_medium_purge(ta_arena_t *a, uint64_t now, bool all, uint64_t age, size_t share,
                       size_t hold, bool *held, uint64_t *oldest) {
  /* With `all`, from the bin of a page's size: a block of less than two pages may hold a
   * whole one too, as it lies (a hole of 100 KiB, with pages of 64 KiB). */
  unsigned first = all ? ta_size_class(ta_page_size) : ta_size_class(TA_MEDIUM_PURGE_MIN);
  size_t freed = 0;
  unsigned cut = 0;  /* with a hold: blocks of ages of a shorter length stay */
  size_t excess = 0; /* and of that length, those past this many bytes */
  const bool limited = !all && hold; /* only the excess past the hold goes */
  if (limited) {
    size_t resident = 0, by_age[AGE_BUCKETS] = {0};
    *oldest = 0;
    for (unsigned b = first; b < TA_NUM_BINS; b++)
      for (ta_mhdr_t *h = a->bins[b]; h; h = M_LINK(h)[0]) {
        if ((h->size_flags & TA_M_DECOMMITTED) || M_SIZE(h) < TA_MEDIUM_PURGE_MIN) continue;
        uint64_t since = *ta_medium_stamp(h);
        size_t r = resident_max(h);
        resident += r;
        by_age[age_bucket(now, since)] += r;
        if (*oldest == 0 || since < *oldest) *oldest = since;
      }
    if (resident <= hold) {
      *held = true;
      return 0;
    }
    excess = resident - hold;
    for (cut = AGE_BUCKETS - 1; cut > 0 && by_age[cut] < excess; cut--)
      excess -= by_age[cut];
  }
  size_t held_bytes = 0; /* kept for the hold */
  uint64_t waiting = 0;  /* the oldest block past the hold that stays only until it is due */
  const uint64_t ages[] = {age, age / 2, age / 8, 0};
  for (unsigned i = 0; i < sizeof ages / sizeof ages[0]; i++) {
    size_t kept = 0;
    *oldest = 0;
    held_bytes = 0;
    waiting = 0;
    for (unsigned b = first; b < TA_NUM_BINS; b++)
      for (ta_mhdr_t *h = a->bins[b]; h; h = M_LINK(h)[0]) {
        if (h->size_flags & TA_M_DECOMMITTED) continue;
        if (!all) {
          if (M_SIZE(h) < TA_MEDIUM_PURGE_MIN) continue; /* a small top: no time of its own */
          uint64_t since = *ta_medium_stamp(h);
          size_t r = resident_max(h);
          unsigned k = limited ? age_bucket(now, since) : 0;
          /* The demand keeps it: younger than the cut's length; or of that length, once its
           * part of the excess has gone, or so large that it would give back more than
           * twice what is left of that part. */
          if (limited && (k < cut || (k == cut && (excess == 0 || r / 2 > excess)))) {
            held_bytes += r;
            if (*oldest == 0 || since < *oldest) *oldest = since;
            continue;
          }
          if (now < since + (b == TOP_BIN ? age : ages[i])) {
            if (b != TOP_BIN) kept += r;
            if (waiting == 0 || since < waiting) waiting = since;
            if (*oldest == 0 || since < *oldest) *oldest = since;
            continue;
          }
          if (limited && k == cut) excess = excess > r ? excess - r : 0;
        }
        freed += ta_medium_decommit(h);
      }
    if (all || kept <= share) break;
  }
  /* Blocks that wait for their time are looked at then, those held with them too: a block
   * held may be older than one that waits (of the cut's length), and looked at by its own
   * time, it would be due at once, at every slow path until the other comes due. */
  if (waiting)
    *oldest = waiting;
  else if (held_bytes)
    *held = true;
  return freed;
}

/* Gives the tail of in-use block h beyond `keep` bytes back, merging it with a free next;
 * g: the tail's past (a shrink: just freed, all resident; a block cut from a free one: that
 * one's). */
static void split_tail(ta_arena_t *a, ta_mhdr_t *h, size_t keep, mage_t g, bool fresh) {
  size_t s = M_SIZE(h);
  if (s - keep < TA_MIN_MBLOCK) return;
  ta_mhdr_t *t = (ta_mhdr_t *)((char *)h + keep);
  size_t ts = s - keep;
  ta_mhdr_t *n = M_NEXT(h);
  if (!(n->size_flags & TA_M_INUSE)) {
    mix_t m = {g.since, 0, 0}; /* fresh: `since` is now */
    mix_add(&m, g);
    mix_add(&m, age_of(n, m.now));
    g = mix_age(&m);
    bin_remove(a, n);
    ts += M_SIZE(n);
    forget_merged(n);
  }
  /* A block cut shorter is no class's block (the allocation flags it after the split). */
  ta_mh_set(h, keep | (h->size_flags & (TA_M_FLAGS & ~TA_M_CLASS)));
  TA_ADD(a->cnt.splits, 1);
  if (g.resident > ts) g.resident = ts;
  make_free(a, t, ts, g, fresh);
}

/* The arena takes `taken` bytes of a free block whose past was `past`. Its demand (dirty.c)
 * counts what the decay purge took from it, faulted in again now, and the most of its large
 * free blocks' resident bytes it takes at once in a window (ta_dirty_drawdown). Counting only
 * the first, a demand that kept the holes an arena cycled through lapsed two windows later,
 * since nothing was faulted in meanwhile, and the next purge gave them all back:
 * redis-server's LRANGE test gave back about 15 MiB of reply buffers' holes and faulted them
 * in again at once, a 40 ms stall, every second or two. */
static void demand_note(ta_arena_t *a, size_t taken, mage_t past) {
  size_t gone = taken > past.resident ? taken - past.resident : 0;
  if (gone >= ta_page_size) ta_dirty_fresh(a, gone);
  /* (a block under 16 KiB keeps no time: since 0) */
  if (past.since && taken > gone) ta_dirty_drawdown(a, taken - gone);
}

static bool cache_release_one(ta_arena_t *a, size_t most);
static size_t cache_fit(size_t need, size_t align, bool exact);

/* A small class's block (TA_M_CLASS, size word w) comes (d = 1) or goes (d = -1): the count of
 * its class's blocks live in the arena's medium heap, which class_has_runs (alloc.c) reads.
 * Under the lock, so exact; saturating all the same: it only decides when a class gets runs,
 * and a count gone wrong should make that early or late, not wrap. */
static void class_live_note(ta_arena_t *a, size_t w, int d) {
  _Atomic uint16_t *n = &a->cold_live[ta_size_class(ta_medium_usable_of(w))];
  uint16_t v = atomic_load_explicit(n, memory_order_relaxed);
  if (d > 0 ? v != UINT16_MAX : v != 0)
    atomic_store_explicit(n, (uint16_t)(v + d), memory_order_relaxed);
}

void *ta_medium_alloc(ta_arena_t *a, size_t size, size_t align, bool exact) {
  /* A small class's block (exact) spans whole cache lines, header included, so that the next
   * one carved after it on a line starts on a line too, with no gap cut in front of it. */
  size_t need = ta_medium_block_for(size, align, exact);
  /* The most an aligned block may take of a free one: more than a chunk holds, no block can. */
  size_t most = align > TA_ALIGNMENT ? need + align + TA_MIN_MBLOCK : need;
  if (most > TA_MEDIUM_END - TA_MEDIUM_HDR - sizeof(ta_mhdr_t)) return NULL;

  ta_slow_enter(a);
  /* The cache was looked at first (ta_medium_cache_alloc), for a request it may serve. */
  ta_mhdr_t *h = bin_first_fit(a, need, align);
  if ((h == NULL || top_grows(h, most)) && a->mcache_bytes) {
    /* The cached blocks, merged into the heap, may hold what no bin does: they go back to
     * it before the heap takes pages it never touched, from its top or a new chunk (or the
     * request fails): the heap does not grow around what the cache holds. One cached block
     * that holds the request alone goes back first, the rest only if none does: a whole
     * flush sends every cached block through the heap and the next requests of those bins
     * through it again. */
    if (!cache_release_one(a, most)) ta_medium_cache_flush(a);
    h = bin_first_fit(a, need, align);
  }
  if (h == NULL) {
    if (!medium_chunk_new(a)) {
      ta_slow_leave(a);
      return NULL;
    }
    TA_ADD(a->cnt.first_uses, 1);
    h = bin_first_fit(a, need, align);
  }
  mage_t past = age_of(h, 0); /* its tail's (a tail under 16 KiB keeps no time) */
  bool top = is_top(h);
  if (top && !top_commit(h, most)) { /* lazy commit refused (chunk.c): ENOMEM */
    ta_slow_leave(a);
    return NULL;
  }
  bin_remove(a, h);
  size_t s = M_SIZE(h);
  size_t prev_flag = h->size_flags & TA_M_PREV_FREE; /* always 0: neighbours are merged */

  if (align > TA_ALIGNMENT) {
    size_t front = aligned_front(h, align);
    uintptr_t data = (uintptr_t)h + front + sizeof(ta_mhdr_t);
    if (front) {
      /* The front becomes a free block of its own; its successor is the aligned block. */
      TA_ADD(a->cnt.splits, 1);
      ta_mh_set(h, front | prev_flag | past.gone); /* its time and count stay where they were */
      bin_insert(a, h);
      h = (ta_mhdr_t *)(data - sizeof(ta_mhdr_t));
      s -= front;
      prev_flag = TA_M_PREV_FREE;
    }
  }
  ta_mh_set(h, s | prev_flag | TA_M_INUSE);
  ta_mh_store(M_NEXT(h), M_NEXT(h)->size_flags & ~TA_M_PREV_FREE);
  split_tail(a, h, need, past, false);
  if (exact) { /* one store: a statistics reader never sees the class without its spare */
    ta_mh_set(h, h->size_flags | TA_M_CLASS |
                     ((M_SIZE(h) - sizeof(ta_mhdr_t) - size) << TA_M_SPARE_SHIFT));
    class_live_note(a, h->size_flags, 1);
  }
  top_touch(ta_chunk_of(h), M_NEXT(h));
  ta_mh_wipe(h);                        /* no address of ours reaches the program */
  if (!top) demand_note(a, need, past); /* (a top's untouched pages are its chunk's: chunk.c) */
  ta_slow_leave(a);
  return h + 1;
}

void ta_medium_free_local(ta_arena_t *a, ta_mhdr_t *h) {
  size_t s = M_SIZE(h), freed = s;
  if (h->size_flags & TA_M_CLASS) class_live_note(a, h->size_flags, -1);
  ta_dirty_hole_freed(a, freed); /* (demand_note) */
  /* The free neighbours' pasts, taken before they merge; since 0 is "now" (a block under
   * 16 KiB keeps no time, age_of). They are mixed, and the clock read, only for a merged
   * block that keeps a time of its own or is a top (make_free, top_trim): most frees of
   * small and mid-sized blocks need neither. */
  mage_t near[2];
  unsigned nn = 0;
  ta_mh_wipe(h); /* a remote free's mark and link would outlive the merge */
  ta_mhdr_t *n = ta_mh_next_checked(h);
  if (!(n->size_flags & TA_M_INUSE)) {
    near[nn++] = age_of(n, 0);
    bin_remove(a, n);
    s += M_SIZE(n);
    forget_merged(n);
    TA_ADD(a->cnt.merges, 1);
  }
  if (h->size_flags & TA_M_PREV_FREE) {
    ta_mhdr_t *p = ta_mh_prev_checked(h);
    size_t ps = M_SIZE(p);
    near[nn++] = age_of(p, 0);
    bin_remove(a, p);
    forget_hdr(h);
    h = p;
    s += ps;
    TA_ADD(a->cnt.merges, 1);
  }
  ta_chunk_t *c = ta_chunk_of(h);
  bool top = (char *)h + s == (char *)c + TA_MEDIUM_END;
  if ((char *)h == (char *)c + TA_MEDIUM_HDR && top &&
      (a->medium_chunks != c || c->next != NULL)) {
    /* The whole chunk is free and the arena has another: let the chunk go. */
    forget_hdr(h);
    medium_chunk_free(a, c);
    return;
  }
  mage_t g = {0, s, 0}; /* a block under 16 KiB: make_free keeps no past */
  uint64_t now = 0;
  if (s >= TA_MEDIUM_PURGE_MIN || top) {
    now = ta_os_now_ms();
    mix_t m = {now, 0, 0}; /* the merged block's past (mix_t) */
    mix_add(&m, (mage_t){now, freed, 0});
    for (unsigned i = 0; i < nn; i++) {
      if (near[i].since == 0) near[i].since = now;
      mix_add(&m, near[i]);
    }
    g = mix_age(&m);
  }
  make_free(a, h, s, g, true);
  if (top) top_trim(c, h, now);
}

/* The cache. A thread that replaces medium blocks pays, per block, a split, a merge or two,
 * four bin updates and the decay bookkeeping of the merged block: about 600 instructions a
 * malloc and free, against a dozen for a small block. Most of that work undoes itself: the
 * block merged at the free is cut again at the next request of a like size. So a request of
 * 8 to 64 KiB gets a block of the largest size of its bin (cache_fit), and the owner's free
 * of such a block puts it, whole, in one of the arena's slots for its bin (eight a bin, 1 MiB
 * in all); ta_medium_cache_alloc takes the newest block of the request's bin back as it is,
 * or of the bin above when its own has none: every one fits, so the first looked at is taken.
 * A cached block keeps INUSE, so no neighbour merges with it, and carries TA_M_CACHED, so
 * that a second free of it is a double free and statistics count it free. It holds no link:
 * the slots are the arena's, and a block taken off its slot is handed out only once its
 * header has been checked, so an overflow into a cached block's header is reported, never
 * signed anew.
 *
 * What the cache costs: a block holds up to a bin's width more than its request (the top of
 * its bin), up to two from the bin above; a cached block keeps its neighbours from
 * merging with it (a realloc growing into it takes it out first). Up to 1 MiB per arena stays
 * out of the heap until the arena's purge (purge.c) flushes the cache into it, due a decay
 * time after the first put since the last flush, or until the heap would grow for a request
 * (ta_medium_alloc: one block that holds it goes back, else all of them). */
#define MC_LAST (TA_MCACHE_FIRST + TA_MCACHE_CLASSES - 1)
uint32_t ta_mcache_max = TA_MCACHE_BYTES;

/* The process has had `count` arenas at once (arena.c, at each new arena): from
 * TA_FEW_ARENAS on, each cache holds a quarter as much (spans serve most of its sizes
 * then, and each thread's cache is memory no other thread can use). */
void ta_medium_arenas(uint32_t count) {
  if (count >= TA_FEW_ARENAS && TA_LOAD(ta_mcache_max) > TA_MCACHE_BYTES / 4)
    TA_STORE(ta_mcache_max, TA_MCACHE_BYTES / 4);
}

/* The largest size of bin b, the one size the cache keeps of it; 0 for a bin it has no
 * slots for. */
static size_t cache_bin_top(unsigned b) {
  return b >= TA_MCACHE_FIRST && b <= MC_LAST ? ta_class_size[b + 1] - TA_ALIGNMENT : 0;
}

/* The cached bins by KiB, for the two questions the cache's paths ask of a size, each in a
 * load instead of ta_bin_of's dozen instructions: the classes from 8 to 64 KiB start on whole
 * KiB (1 KiB apart up to 16, 2 up to 32, 4 up to 64), so a size's bin is that of its whole
 * KiB. ta_mcache_bin[k]: the cache's index of the bin that holds k KiB (8 <= k < 64);
 * ta_mcache_ends[k]: 1 + the index of the bin that ends at k KiB (its top, the one size the
 * cache keeps of it, is k KiB less 16 bytes), else 0. test/unit/medium.c checks both
 * against ta_bin_of and cache_bin_top at every size. */
#define MC_BIN(k) ((k) < 8 ? 0 : (k) < 16 ? (k)-8 : (k) < 32 ? 8 + ((k)-16) / 2 : 16 + ((k)-32) / 4)
#define MC_ENDS(k)                                                                                 \
  ((k) > 8 && ((k) <= 16 || ((k) <= 32 && (k) % 2 == 0) || ((k) <= 64 && (k) % 4 == 0))            \
       ? MC_BIN((k)-1) + 1                                                                         \
       : 0)
#define MC_ROW(f, k) f(k), f(k + 1), f(k + 2), f(k + 3), f(k + 4), f(k + 5), f(k + 6), f(k + 7)
#define MC_TABLE(f)                                                                                \
  MC_ROW(f, 0), MC_ROW(f, 8), MC_ROW(f, 16), MC_ROW(f, 24), MC_ROW(f, 32), MC_ROW(f, 40),          \
      MC_ROW(f, 48), MC_ROW(f, 56), f(64)
const uint8_t ta_mcache_bin[65] = {MC_TABLE(MC_BIN)};
const uint8_t ta_mcache_ends[65] = {MC_TABLE(MC_ENDS)};
_Static_assert(TA_MCACHE_END == (size_t)64 << 10 && TA_MCACHE_CLASSES == 24,
               "the tables above describe the bins of 8 to 64 KiB");

/* The cache was empty of blocks since its last flush: that flush comes due a decay time from
 * now. */
void ta_medium_cache_clock(ta_arena_t *a) {
  a->mcache_since = ta_os_now_ms();
  ta_purge_note(a, a->mcache_since);
}

bool ta_medium_cache_put(ta_arena_t *a, ta_mhdr_t *h) {
  size_t w = ta_mh_load(h);
  unsigned i = ta_mcache_room(a, w);
  if (i == TA_MCACHE_CLASSES) return false;
  ta_mcache_file_checked(a, h, w, i);
  if (a->mcache_since == 0) ta_medium_cache_clock(a); /* last: nothing else kept across it */
  return true;
}

/* The size to cut for a request of `need` bytes (header included): a request the cache may
 * serve gets the largest size of its bin, so that its block, once cached, fits every later
 * request of that bin and the cache takes the first block it looks at. Less than a bin's
 * width more than asked for (an eighth of the bin's smallest size: 1 KiB from 8 KiB, 2 KiB
 * from 16, 4 KiB from 32), which the block's usable size, nallocx and the statistics'
 * internal fragmentation report. Every block of 8 to 64 KiB pays it, cached or not. */
static size_t cache_fit(size_t need, size_t align, bool exact) {
  /* never cached (ta_medium_cache_put), or no cache at all */
  if (exact || align > TA_ALIGNMENT || ta_secure) return need;
  size_t top = cache_bin_top(ta_bin_of(need));
  return top != 0 && top <= TA_LOAD(ta_mcache_max) ? top : need;
}

size_t ta_medium_block_for(size_t size, size_t align, bool exact) {
  size_t need = ta_align_up(size + sizeof(ta_mhdr_t), exact ? TA_LINE : TA_ALIGNMENT);
  return cache_fit(need < TA_MIN_MBLOCK ? TA_MIN_MBLOCK : need, align, exact);
}

/* Slot k of bin i's, out of the cache (the newest takes its place). */
static ta_mhdr_t *cache_take(ta_arena_t *a, unsigned i, unsigned k) {
  ta_mhdr_t *h = a->mcache[i][k];
  a->mcache[i][k] = a->mcache[i][--a->mcache_n[i]];
  return ta_mcache_checkout(a, h);
}

/* Whether bin i's newest cached block holds n bytes (false with none). */
static bool cache_newest_holds(const ta_arena_t *a, unsigned i, size_t n) {
  return a->mcache_n[i] && M_SIZE(a->mcache[i][a->mcache_n[i] - 1u]) >= n;
}

/* `need` is a cached bin's: its callers asked ta_medium_cache_may_serve, which leaves a block
 * size from TA_MCACHE_MIN up to TA_MCACHE_END less one granule. */
_Static_assert(TA_SMALL_MAX + sizeof(ta_mhdr_t) >= TA_MCACHE_MIN && TA_MCACHE_MIN == 8 << 10,
               "a request the cache may serve needs a block of a bin the tables hold");
#define MC_MOST_NEED                                                                               \
  ((TA_MCACHE_MOST_REQUEST + sizeof(ta_mhdr_t) + TA_ALIGNMENT - 1) & ~(size_t)(TA_ALIGNMENT - 1))
_Static_assert((MC_MOST_NEED >> 10) <= 63 && MC_BIN(MC_MOST_NEED >> 10) < TA_MCACHE_CLASSES,
               "the largest request the cache may serve, header added and rounded up, indexes "
               "the tables below 64 KiB and a bin the cache has");
/* A block of the request's bin that the owner freed, handed out whole: for a request of
 * alignment 16 that is not a small class's (its header would need the class and spare). */
void *ta_medium_cache_alloc(ta_arena_t *a, size_t size) {
  /* Only the owner, the caller, puts blocks there: found empty without the lock, it is. */
  if (TA_LOAD(a->mcache_bytes) == 0) return NULL;
  size_t need = ta_align_up(size + sizeof(ta_mhdr_t), TA_ALIGNMENT);
  bool light = ta_light_enter(a); /* else the lock (internal.h, "Light sections") */
  if (!light) ta_slow_enter(a);
  ta_mhdr_t *h = a->mcache_bytes ? ta_mcache_get(a, need) : NULL;
  if (light)
    ta_light_leave(a);
  else
    ta_slow_leave(a);
  return h != NULL ? h + 1 : NULL;
}

/* Cached block h (its flag says so), out of the cache and into the heap. */
static void cache_evict(ta_arena_t *a, ta_mhdr_t *h) {
  unsigned i = ta_bin_of(M_SIZE(h)) - TA_MCACHE_FIRST;
  for (unsigned k = 0; i < TA_MCACHE_CLASSES && k < a->mcache_n[i]; k++)
    if (a->mcache[i][k] == h) {
      ta_medium_free_local(a, cache_take(a, i, k));
      return;
    }
  corrupted("realloc(): corrupted cached block", h + 1); /* signed as cached, in no slot */
}

/* The heap would grow for a block of `most` bytes: the newest cached block of the smallest
 * bin that holds it goes back to the heap (merged with its free neighbours), alone. False if
 * no cached block is that large. */
static bool cache_release_one(ta_arena_t *a, size_t most) {
  unsigned b = ta_bin_of(most);
  for (unsigned i = b > TA_MCACHE_FIRST ? b - TA_MCACHE_FIRST : 0; i < TA_MCACHE_CLASSES; i++)
    if (cache_newest_holds(a, i, most)) {
      ta_medium_free_local(a, ta_mcache_take_newest(a, i));
      return true;
    }
  return false;
}

void ta_medium_cache_flush(ta_arena_t *a) {
  for (unsigned i = 0; i < TA_MCACHE_CLASSES; i++)
    while (a->mcache_n[i])
      ta_medium_free_local(a, ta_mcache_take_newest(a, i));
  a->mcache_since = 0;
}

/* Lets go of the chunks that hold no block at all, the arena's last one included (a full
 * purge: malloc_trim, an ownerless arena), so that their pages can go back whole. */
void ta_medium_release_empty(ta_arena_t *a) {
  ta_slow_enter(a);
  for (ta_chunk_t *c = a->medium_chunks, *next; c; c = next) {
    next = c->next;
    ta_mhdr_t *h = (ta_mhdr_t *)((char *)c + TA_MEDIUM_HDR);
    if ((h->size_flags & TA_M_INUSE) || (char *)h + M_SIZE(h) != (char *)c + TA_MEDIUM_END)
      continue;
    bin_remove(a, h);
    forget_hdr(h);
    medium_chunk_free(a, c);
  }
  ta_slow_leave(a);
}

/* The owner's verdict on its block p, whose mark says "free": a block another thread freed
 * keeps INUSE while it waits on the remote list, so the caller takes the remote frees in
 * first, under the lock (see ta_small_freed); then look again (it may have merged away, its
 * chunk gone). */
bool ta_medium_freed(ta_arena_t *a, const void *p) {
  ta_slow_enter(a); /* the purger may hold the remote list: wait for it (see ta_small_freed) */
  const ta_mhdr_t *h = (const ta_mhdr_t *)p - 1;
  bool freed = ta_map_get((uintptr_t)p) != TA_MAP_MEDIUM || !ta_medium_check_ok(h) ||
               !ta_medium_live(ta_mh_load(h));
  ta_slow_leave(a);
  return freed;
}

ta_mhdr_t *ta_medium_hdr_checked(void *p, const char *op) { return ta_medium_hdr_at(p, op); }

/* In-place resize by the owner: shrink by splitting, grow into a free successor (or a cached
 * one, taken out of the cache). */
bool ta_medium_resize(ta_arena_t *a, ta_mhdr_t *h, size_t size) {
  size_t need = ta_align_up(size + sizeof(ta_mhdr_t), TA_ALIGNMENT);
  if (need < TA_MIN_MBLOCK) need = TA_MIN_MBLOCK;
  /* What a new block for `size` would be: a block resized to it may be cached when freed.
   * It is what a shrink keeps, and what a growth takes where there is room. */
  size_t want = ta_medium_block_for(size, TA_ALIGNMENT, false);
  bool ok = true;
  ta_slow_enter(a);
  /* Under the lock: a trim of this arena from another thread (malloc_trim) may be setting
   * the PREV_FREE bit of this very header meanwhile (make_free of the block before it). */
  size_t s = M_SIZE(h), was = h->size_flags;
  if (need <= s) {
    size_t keep = want <= s ? want : need;
    if (s - keep >= TA_MIN_MBLOCK) {
      ta_dirty_hole_freed(a, s - keep);
      split_tail(a, h, keep, (mage_t){ta_os_now_ms(), s - keep, 0}, true);
    }
  } else {
    ta_mhdr_t *n = M_NEXT(h);
    /* A cached successor is free memory too: when it, with a free block after it, makes
     * room enough, it goes back to the heap, merged with that block, for this one to grow
     * into (a vector grown by realloc would otherwise be moved whenever the block after it
     * waits in the cache). Its header is checked first: the flag and the size are signed. */
    if ((n->size_flags & TA_M_CACHED) && ta_medium_check_ok(n)) {
      ta_mhdr_t *after = M_NEXT(n);
      size_t room = s + M_SIZE(n) + (after->size_flags & TA_M_INUSE ? 0 : M_SIZE(after));
      if (room >= need) cache_evict(a, n); /* n is still M_NEXT(h), free now */
    }
    size_t keep = s + M_SIZE(n) >= want ? want : need;
    if (!(n->size_flags & TA_M_INUSE) && s + M_SIZE(n) >= need &&
        (!is_top(n) || top_commit(h, keep))) {
      mage_t past = age_of(n, 0); /* what is left of n keeps its past */
      bool top = is_top(n);
      bin_remove(a, n);
      size_t total = s + M_SIZE(n);
      forget_merged(n);
      ta_mh_set(h, total | (h->size_flags & (TA_M_FLAGS & ~TA_M_CLASS)));
      ta_mh_store(M_NEXT(h), M_NEXT(h)->size_flags & ~TA_M_PREV_FREE);
      split_tail(a, h, keep, past, false);
      top_touch(ta_chunk_of(h), M_NEXT(h));
      if (!top) demand_note(a, keep - s, past);
    } else {
      ok = false;
    }
  }
  /* Resized, it is a medium block like any: it reports all it holds (a shrink too small to
   * split leaves the header as it was until here). */
  if (ok && (h->size_flags & TA_M_CLASS))
    ta_mh_set(h, h->size_flags & ~(TA_M_CLASS | (~(size_t)0 << TA_M_SPARE_SHIFT)));
  if (ok && (was & TA_M_CLASS)) class_live_note(a, was, -1); /* (split_tail may have cleared it) */
  ta_slow_leave(a);
  return ok;
}

/* A walker of another thread's chunk follows block sizes while the owner splits and merges
 * blocks and the program writes into its own: a size read just before a merge leads to a
 * word that may by then be a free block's link or the program's data. A size that makes no
 * sense ends the walk, but the load itself meets the program's plain store, which nothing
 * on our side can order: a peek (internal.h, TA_PEEK); the stores to size words, and
 * everything else a reader reads, stay watched. */
TA_PEEK_FN size_t ta_mh_peek(const ta_mhdr_t *h) { return TA_PEEK(h->size_flags); }

/* Walks a medium chunk's blocks in address order (statistics, the heap map, tests), giving
 * fn each block's size word as the walk read it. Other threads' chunks change under a
 * statistics reader: a size that does not make sense ends the walk rather than leading it
 * astray, and the visitor judges the block by the very word that led the walk there (a
 * second read could find it merged away or written by the program). Returns the blocks
 * visited. */
size_t ta_medium_walk(const ta_chunk_t *c, void (*fn)(const ta_mhdr_t *h, size_t word, void *arg),
                      void *arg) {
  size_t n = 0;
  const char *end = (const char *)c + TA_MEDIUM_END;
  const ta_mhdr_t *h = (const ta_mhdr_t *)((const char *)c + TA_MEDIUM_HDR);
  while ((const char *)h < end) {
    /* A stale size may lead a racing walk anywhere: never into pages not committed. */
    size_t off = (size_t)((const char *)h - (const char *)c);
    if (!ta_chunk_holds(c, off, off + sizeof(ta_mhdr_t))) break;
    size_t word = ta_mh_peek(h), sz = word & TA_M_SIZE_MASK;
    if (sz < TA_MIN_MBLOCK || (const char *)h + sz > end) break;
    if (fn) fn(h, word, arg);
    n++;
    h = (const ta_mhdr_t *)((const char *)h + sz);
  }
  return n;
}
