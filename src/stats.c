/*
 * stats.c — what the allocator holds and how well it uses it.
 *
 * Counters (ta_counters_t) are plain per-arena increments, summed here. Everything else is
 * measured by walking the heap: every chunk and huge block is found through the granule map
 * (mincore tells which pages of the map were ever touched, so the scan reads a few pages,
 * not 32 MiB), every run's meta block and every medium block is read, and the free lists
 * are walked for the requested sizes. While a walk runs, ta_stats_readers is non-zero and
 * nothing is unmapped under it (huge spans are unmapped when the last reader leaves), so a
 * read never faults even while other threads free. A read is exact when no other thread
 * allocates or frees meanwhile; otherwise it is a consistent-enough snapshot.
 *
 * Requested sizes, only while statistics are on: a small chunk has a shadow array with
 * usable - requested for each block (2 bytes per block), a medium block keeps it in the
 * high bits of its size word, a huge block in its meta block. The waste of the live blocks
 * of a run is the waste recorded for every block it handed out minus that of the blocks
 * on its free list, so free needs to record nothing. The arrays are made and dropped with
 * their chunks (chunk.c); the switch is a setting (conf.c, ta_stats_switch).
 *
 * An observer (docs/design.md, "Layers"): it reads what the layers below hold and calls
 * nothing above. The statistics log's line is written from alloc.c's slow paths, the report
 * at exit from this file's destructor.
 *
 * Formulas (docs/statistics.md):
 *   internal fragmentation = 100 * (usable - requested) / usable, over live blocks
 *   external fragmentation = 100 * (1 - largest free block / free bytes)
 *   stranded               = 100 * free bytes in runs that hold live blocks / heap bytes
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "tamalloc.h"

_Atomic uint64_t ta_orphan_frees; /* huge frees by threads without an arena */

/* The switch is a setting (conf.c); on before the first arena, the requested sizes are exact. */
int ta_stats_enable(int on) { return ta_stats_switch(on, ta_arena_first() == NULL); }

void ta_stats_record(void *p, size_t requested) {
  uint8_t kind = ta_map_get((uintptr_t)p);
  if (kind == TA_MAP_SMALL) {
    uint16_t *sh = ta_shadow_get(ta_chunk_of(p));
    if (sh == NULL) return;
    ta_run_t *r = ta_run_of(p);
    uint32_t off = (uint32_t)((uintptr_t)p & (TA_RUN_SIZE - 1));
    sh[(size_t)r->slot * TA_SHADOW_RUN_ENTRIES + ta_run_index(r, off)] = (uint16_t)(r->bsize - requested);
  } else if (kind == TA_MAP_MEDIUM) {
    /* Under the owner's lock (the caller owns the block): the background purger may be
     * freeing the block below into the arena, which sets PREV_FREE in this very word. */
    ta_arena_t *owner = ta_chunk_of(p)->owner;
    ta_mhdr_t *h = (ta_mhdr_t *)p - 1;
    size_t waste = ta_medium_usable(h) - requested;
    ta_slow_enter(owner);
    ta_mh_store(h, (h->size_flags & ~(TA_M_WASTE_MASK << TA_M_WASTE_SHIFT)) |
                       ((waste & TA_M_WASTE_MASK) << TA_M_WASTE_SHIFT));
    ta_slow_leave(owner);
  } else if (kind == TA_MAP_SPAN) {
    ta_span_set_requested(p, requested); /* the caller holds the live span */
  } else if (kind == TA_MAP_HUGE || kind == TA_MAP_HUGE_AL) {
    ta_huge_t *h = kind == TA_MAP_HUGE ? (ta_huge_t *)ta_chunk_of(p)
                                       : (ta_huge_t *)((uintptr_t)p - TA_CHUNK_SIZE);
    TA_STORE(h->requested, requested);
    ta_huge_seal(h);
  }
}

/* ------------------------------------------------------------------ the walk */

struct walk {
  struct ta_stats *s;
  ta_arena_t *only; /* NULL: every arena */
  bool tracked;
};

static void take_largest(struct ta_stats *s, unsigned long long n) {
  if (n > s->largest_free_block) s->largest_free_block = n;
}

#define resident ta_os_resident

/* bs and limit as read once by the caller (bs != 0). */
static bool block_of_run(const ta_run_t *r, uint64_t bs, uint64_t limit, const ta_block_t *b,
                         uint32_t *idx) {
  uintptr_t base = (uintptr_t)ta_run_base(r), u = (uintptr_t)b;
  if (u < base || u >= base + limit || (u - base) % bs) return false;
  *idx = (uint32_t)((u - base) / bs);
  return true;
}

/* An arena's own figures (w->only) count the runs it owns wherever they are, and the chunks
 * it keeps, with their free slots: a slot lent to another arena is that arena's run (small.c,
 * "Slots lent between arenas"), in its heap and resident bytes, not its keeper's.
 * `keeper`: w->only keeps c (or every arena is counted). */
static size_t walk_small(struct walk *w, ta_chunk_t *c, bool keeper) {
  struct ta_stats *s = w->s;
  uint16_t *sh = w->tracked ? ta_shadow_get(c) : NULL;
  size_t free_slots = 0, lent = 0, lent_resident = 0;
  for (unsigned i = 1; i < TA_RUNS_PER_CHUNK; i++) {
    ta_run_t *r = ta_chunk_run(c, i);
    /* The owner may be setting the run up or tearing it down as we read (a reused chunk's
     * runs read block size 0 for a while): each word is read once, and a run whose class
     * and block size disagree counts as a free slot. */
    unsigned cls = TA_LOAD(r->cls);
    uint64_t bs = TA_LOAD(r->bsize);
    ta_arena_t *owner = TA_LOAD(r->owner);
    if (owner == NULL || cls == 0 || cls > TA_NUM_RUN || bs != ta_class_size[cls]) {
      if (!keeper) continue;
      s->free_bytes += TA_RUN_SIZE;
      free_slots++;
      take_largest(s, free_slots * TA_RUN_SIZE);
      continue;
    }
    free_slots = 0;
    if (w->only && owner != w->only) { /* lent to another arena */
      lent++;
      lent_resident += resident(ta_run_base(r), TA_RUN_SIZE);
      continue;
    }
    if (!keeper) { /* a slot lent to w->only */
      s->heap_bytes += TA_RUN_SIZE;
      s->resident_bytes += resident(ta_run_base(r), TA_RUN_SIZE);
    }
    struct ta_class_stats *cs = &s->classes[cls];
    uint64_t cap = ta_run_cap(r), limit = TA_LOAD(r->limit), carved = limit / bs;
    uint64_t used = (uint32_t)(TA_LOAD(r->used) & ~(RUN_FULL_BIT | RUN_ACTIVE_BIAS));
    if (carved > cap) carved = cap;
    if (used > carved) used = carved;
    cs->runs++;
    cs->live_blocks += used;
    cs->usable_bytes += used * bs;
    cs->free_blocks += carved - used;
    cs->free_bytes += (cap - used) * bs;
    if (used > 0) cs->stranded_bytes += (cap - used) * bs;
    if (cap > used) take_largest(s, bs);
    uint64_t waste = 0;
    if (sh) {
      const uint16_t *row = sh + (size_t)i * TA_SHADOW_RUN_ENTRIES;
      for (uint64_t k = 0; k < carved; k++) waste += row[k];
      uint64_t n = 0;
      for (ta_block_t *b = r->free; b && n < carved; b = ta_block_next(b), n++) {
        uint32_t idx;
        if (!block_of_run(r, bs, limit, b, &idx)) break; /* changing: keep what we have */
        waste -= row[idx];
      }
      if (waste > used * bs) waste = used * bs;
    }
    cs->requested_bytes += used * bs - waste;
  }
  if (keeper) s->heap_bytes += TA_CHUNK_SIZE - lent * TA_RUN_SIZE;
  return lent_resident; /* for the keeper's resident bytes (visit_granule) */
}

static void visit_medium(const ta_mhdr_t *h, size_t word, void *arg) {
  struct walk *w = arg;
  struct ta_stats *s = w->s;
  (void)h; /* the walk's own read of its word, whose size it checked: one size, one INUSE bit */
  size_t sz = word & TA_M_SIZE_MASK, usable = sz - sizeof(ta_mhdr_t);
  if (ta_medium_live(word)) {
    usable = ta_medium_usable_of(word);
    /* A small class's row counts blocks of its size: a medium block of 8 KiB or less that
     * serves no class (shrunk in place, over-aligned, or caught by this walk half made)
     * counts in the first medium row. */
    unsigned c = ta_size_class(usable);
    if (c <= TA_NUM_SMALL && !(word & TA_M_CLASS)) c = TA_NUM_SMALL + 1;
    struct ta_class_stats *cs = &s->classes[c];
    size_t waste = w->tracked ? (size_t)(word >> TA_M_WASTE_SHIFT) & TA_M_WASTE_MASK : 0;
    if (waste > usable) waste = usable;
    cs->live_blocks++;
    cs->usable_bytes += usable;
    cs->requested_bytes += usable - waste;
  } else {
    unsigned b = ta_bin_of(sz); /* a small class's row counts its free blocks on runs */
    if (b <= TA_NUM_SMALL) b = TA_NUM_SMALL + 1;
    s->classes[b].free_blocks++;
    s->classes[b].free_bytes += usable;
    take_largest(s, usable);
  }
}

static void walk_medium(struct walk *w, ta_chunk_t *c) {
  ta_medium_walk(c, visit_medium, w);
  w->s->heap_bytes += TA_CHUNK_SIZE;
}

/* The words of a huge meta block change under a reader when the span is taken from the
 * cache or resized: each is read once. */
static void walk_huge(struct walk *w, ta_huge_t *h) {
  struct ta_stats *s = w->s;
  if (!ta_huge_check_ok(h)) return;
  size_t off = TA_LOAD(h->data_off), requested = TA_LOAD(h->requested);
  size_t map_size = TA_LOAD(h->map_size);
  size_t usable = ta_align_up(off + requested, ta_page_size) - off; /* ta_huge_usable */
  uint32_t st = atomic_load_explicit(&h->state, memory_order_relaxed);
  if (st == HUGE_LIVE) {
    struct ta_class_stats *cs = &s->classes[0];
    cs->live_blocks++;
    cs->usable_bytes += usable;
    cs->requested_bytes += w->tracked ? (requested < usable ? requested : usable) : usable;
  } else if (st == HUGE_CACHED) {
    size_t span = map_size - TA_HUGE_HDR;
    s->huge_cached_bytes += map_size;
    s->classes[0].free_blocks++;
    s->classes[0].free_bytes += span;
    s->free_bytes += span;
    take_largest(s, span);
  }
  s->heap_bytes += map_size;
  s->resident_bytes += resident(h, map_size);
}

/* Spans (span.c): a live one counts in the row of its size's class, a free one (resident or
 * given back) in its bin's row, as a medium block would. */
static void visit_span(const void *p, size_t bytes, unsigned state, uint32_t word, void *arg) {
  struct walk *w = arg;
  struct ta_stats *s = w->s;
  (void)p;
  if (state == TA_SPAN_LIVE) {
    struct ta_class_stats *cs = &s->classes[ta_size_class(bytes)];
    size_t requested = w->tracked && word != 0 && word <= bytes ? word : bytes;
    cs->live_blocks++;
    cs->usable_bytes += bytes;
    cs->requested_bytes += requested;
  } else {
    struct ta_class_stats *cs = &s->classes[ta_bin_of(bytes)];
    cs->free_blocks++;
    cs->free_bytes += bytes;
    take_largest(s, bytes);
  }
}

/* Calls fn on every granule whose map entry is set, reading only touched map pages. */
static void scan_map(void (*fn)(uintptr_t base, uint8_t kind, void *arg), void *arg) {
  size_t granules = ta_map_granules(); /* 0 before initialisation: nothing to scan */
  const size_t page = ta_os_page_size(); /* mincore's unit */
  const size_t map_pages = (granules + page - 1) / page;
  unsigned char vec[2048];
  uintptr_t map = (uintptr_t)ta_keys.map; /* page aligned (mmap) */
  for (size_t first = 0; first < map_pages; first += sizeof vec) {
    size_t n = map_pages - first < sizeof vec ? map_pages - first : sizeof vec;
    bool known = ta_os_mincore((void *)(map + first * page), n * page, vec) == 0;
    for (size_t pg = 0; pg < n; pg++) {
      if (known && !(vec[pg] & 1)) continue;
      size_t g0 = (first + pg) * page;
      for (size_t g = g0; g < g0 + page && g < granules; g++) {
        uint8_t k = atomic_load_explicit(&ta_keys.map[g], memory_order_acquire);
        if (k) fn((uintptr_t)g << TA_CHUNK_SHIFT, k, arg);
      }
    }
  }
}

/* A chunk the walk reads block by block must not be released and reused as something else
 * meanwhile (its runs or blocks rewritten under the reader): the reader announces itself in
 * the chunk, then reads its map entry again; the owner does not reuse a chunk with readers
 * (ta_chunk_alloc). False when the chunk is no longer what the map said. */
static bool chunk_enter(ta_chunk_t *c, uintptr_t base, uint8_t kind) {
  atomic_fetch_add_explicit(&c->readers, 1, memory_order_seq_cst);
  if (atomic_load_explicit(&ta_keys.map[base >> TA_CHUNK_SHIFT], memory_order_seq_cst) == kind &&
      TA_LOAD(c->check) == (base ^ ta_secret))
    return true;
  atomic_fetch_sub_explicit(&c->readers, 1, memory_order_release);
  return false;
}
static void chunk_leave(ta_chunk_t *c) {
  atomic_fetch_sub_explicit(&c->readers, 1, memory_order_release);
}

static void visit_granule(uintptr_t base, uint8_t kind, void *arg) {
  struct walk *w = arg;
  if (kind == TA_MAP_SMALL || kind == TA_MAP_MEDIUM) {
    ta_chunk_t *c = (ta_chunk_t *)base;
    if (TA_LOAD(c->check) != (base ^ ta_secret)) return;
    bool keeper = w->only == NULL || TA_LOAD(c->owner) == w->only;
    if (!keeper && kind == TA_MAP_MEDIUM) return;
    if (!chunk_enter(c, base, kind)) return;
    size_t lent_resident = 0;
    if (kind == TA_MAP_SMALL)
      lent_resident = walk_small(w, c, keeper);
    else walk_medium(w, c);
    chunk_leave(c);
    if (keeper) { /* read after the lent slots': it may have changed meanwhile */
      size_t here = resident(c, TA_CHUNK_SIZE);
      w->s->resident_bytes += here > lent_resident ? here - lent_resident : 0;
    }
  } else if (kind == TA_MAP_SPAN) {
    /* Shared by every thread: counted in the process's figures, not an arena's. */
    if (w->only != NULL) return;
    ta_span_walk(visit_span, (ta_span_chunk_t *)base, w);
    w->s->heap_bytes += TA_CHUNK_SIZE;
    w->s->resident_bytes += resident((void *)base, TA_CHUNK_SIZE);
  } else if (w->only == NULL) {
    walk_huge(w, (ta_huge_t *)(kind == TA_MAP_HUGE ? base : base - TA_CHUNK_SIZE));
  }
}

static void add_counters(struct ta_stats *s, const ta_counters_t *c) {
  s->frees += TA_LOAD(c->frees) + TA_LOAD(c->drained);
  s->remote_frees += TA_LOAD(c->remote_frees);
  s->callocs += TA_LOAD(c->callocs);
  s->reallocs += TA_LOAD(c->reallocs);
  s->reuses += TA_LOAD(c->first_uses); /* turned into reuses at the end */
  s->grows += TA_LOAD(c->grows);
  s->shrinks += TA_LOAD(c->shrinks);
  s->splits += TA_LOAD(c->splits);
  s->merges += TA_LOAD(c->merges);
  s->arenas_adopted += TA_LOAD(c->adopted);
}

static void reader_enter(void) {
  atomic_fetch_add_explicit(&ta_stats_readers, 1, memory_order_seq_cst);
}
static void reader_leave(void) {
  if (atomic_fetch_sub_explicit(&ta_stats_readers, 1, memory_order_seq_cst) == 1)
    ta_huge_unmap_deferred();
}

int ta_stats_get(struct ta_stats *out, int arena) {
  if (out == NULL || out->version != TA_STATS_VERSION || out->size != sizeof *out) return EINVAL;
  ta_arena_t *only = NULL;
  if (arena >= 0) {
    for (ta_arena_t *a = ta_arena_first(); a; a = a->next_all)
      if ((int)a->id == arena) only = a;
    if (only == NULL) return ERANGE;
  }
  int saved = errno;
  memset((char *)out + 2 * sizeof(unsigned), 0, sizeof *out - 2 * sizeof(unsigned));
  out->arena = arena < 0 ? -1 : arena;
  struct walk w = {out, only, ta_stats_on && ta_stats_from_start};
  out->requested_tracked = w.tracked;
  reader_enter();
  scan_map(visit_granule, &w);
  uint64_t first_uses;
  for (ta_arena_t *a = ta_arena_first(); a; a = a->next_all) {
    int st = atomic_load_explicit(&a->state, memory_order_relaxed);
    if (only == NULL) {
      if (st == ARENA_CLAIMED) out->arenas_live++;
      else out->arenas_abandoned++;
    }
    if (only && a != only) continue;
    add_counters(out, &a->cnt);
    /* Empty chunks: free memory still held (unless its pages went back already). */
    size_t n = 0;
    for (ta_chunk_t *c = TA_FOLLOW(a->empty_chunks); c && n < 1u << 20; c = TA_FOLLOW(c->next), n++) {
      if (((uintptr_t)c & TA_CHUNK_MASK) != 0) break;
      if (TA_LOAD(c->decommitted)) continue;
      out->heap_bytes += TA_CHUNK_SIZE;
      out->free_bytes += TA_CHUNK_SIZE;
      take_largest(out, TA_CHUNK_SIZE);
      out->resident_bytes += resident(c, TA_CHUNK_SIZE);
    }
  }
  reader_leave();
  if (only == NULL) {
    out->frees += atomic_load(&ta_orphan_frees);
    out->grows += atomic_load(&ta_span_chunks); /* no arena's: the process's figure only */
  }

  for (unsigned c = 0; c < TA_STATS_CLASSES; c++) {
    struct ta_class_stats *cs = &out->classes[c];
    cs->block_size = c == 0 || c > TA_NUM_BINS ? 0 : ta_class_size[c];
    out->blocks += cs->live_blocks;
    out->usable_bytes += cs->usable_bytes;
    out->requested_bytes += cs->requested_bytes;
    out->stranded_bytes += cs->stranded_bytes;
    if (c > 0) out->free_bytes += cs->free_bytes; /* huge free bytes were added directly */
    out->free_blocks += cs->free_blocks;
  }
  out->huge_blocks = out->classes[0].live_blocks;
  /* Every block ever handed out is either freed (counted) or live (walked). */
  out->mallocs = out->frees + out->blocks;
  first_uses = out->reuses;
  out->reuses = out->mallocs > first_uses ? out->mallocs - first_uses : 0;
  out->mapped_bytes = atomic_load(&ta_os_mapped_bytes.v);
  out->returned_bytes = atomic_load(&ta_os_returned_bytes.v);
  if (out->usable_bytes)
    out->internal_fragmentation_pct =
        100.0 * (double)(out->usable_bytes - out->requested_bytes) / (double)out->usable_bytes;
  if (out->free_bytes)
    out->external_fragmentation_pct =
        100.0 * (1.0 - (double)out->largest_free_block / (double)out->free_bytes);
  if (out->heap_bytes)
    out->stranded_pct = 100.0 * (double)out->stranded_bytes / (double)out->heap_bytes;
  errno = saved;
  return 0;
}

/* ------------------------------------------------------------------ writing reports */

/* A buffer on the stack flushed with write(2): reports never allocate. */
struct out {
  int fd;
  size_t n;
  int err;
  char buf[4096];
};

static void flush(struct out *o) {
  size_t done = 0;
  while (done < o->n) {
    ssize_t w = write(o->fd, o->buf + done, o->n - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      o->err = errno;
      break;
    }
    done += (size_t)w;
  }
  o->n = 0;
}

__attribute__((format(printf, 2, 3))) static void put(struct out *o, const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof line) n = sizeof line - 1;
  if (o->n + (size_t)n > sizeof o->buf) flush(o);
  memcpy(o->buf + o->n, line, (size_t)n);
  o->n += (size_t)n;
}

#define FIELDS(X)                                                                          \
  X(mallocs) X(frees) X(callocs) X(reallocs) X(reuses) X(grows) X(shrinks) X(splits)       \
  X(merges) X(blocks) X(free_blocks) X(requested_bytes) X(usable_bytes) X(heap_bytes)      \
  X(free_bytes) X(largest_free_block) X(stranded_bytes) X(mapped_bytes) X(resident_bytes)  \
  X(returned_bytes) X(remote_frees) X(arenas_live) X(arenas_abandoned) X(arenas_adopted)   \
  X(huge_blocks) X(huge_cached_bytes)

static double class_internal_pct(const struct ta_class_stats *cs) {
  if (cs->usable_bytes == 0) return 0.0;
  return 100.0 * (double)(cs->usable_bytes - cs->requested_bytes) / (double)cs->usable_bytes;
}

static bool class_active(const struct ta_class_stats *cs) {
  return cs->live_blocks || cs->free_blocks || cs->runs || cs->free_bytes;
}

static void print_json(struct out *o, const struct ta_stats *s) {
  put(o, "{\"version\":%u,\"requested_tracked\":%s", TA_STATS_VERSION,
      s->requested_tracked ? "true" : "false");
#define J(f) put(o, ",\"" #f "\":%llu", s->f);
  FIELDS(J)
#undef J
  put(o, ",\"internal_fragmentation_pct\":%.4f,\"external_fragmentation_pct\":%.4f"
         ",\"stranded_pct\":%.4f",
      s->internal_fragmentation_pct, s->external_fragmentation_pct, s->stranded_pct);
  put(o, ",\"halves_collapsed\":%llu,\"halves_refused\":%llu,\"collapse_us\":%llu",
      (unsigned long long)atomic_load(&ta_collapse_made),
      (unsigned long long)atomic_load(&ta_collapse_refused),
      (unsigned long long)atomic_load(&ta_collapse_call_us));
  put(o, ",\"classes\":[");
  bool first = true;
  for (unsigned c = 0; c < TA_STATS_CLASSES; c++) {
    const struct ta_class_stats *cs = &s->classes[c];
    if (!class_active(cs)) continue;
    double frag = class_internal_pct(cs);
    put(o,
        "%s{\"class\":%u,\"block_size\":%llu,\"live_blocks\":%llu,\"usable_bytes\":%llu,"
        "\"requested_bytes\":%llu,\"internal_fragmentation_pct\":%.4f,\"free_blocks\":%llu,"
        "\"free_bytes\":%llu,\"stranded_bytes\":%llu,\"runs\":%llu}",
        first ? "" : ",", c, cs->block_size, cs->live_blocks, cs->usable_bytes,
        cs->requested_bytes, frag, cs->free_blocks, cs->free_bytes, cs->stranded_bytes, cs->runs);
    first = false;
  }
  put(o, "]");
}

static const char *state_name(int st) {
  switch (st) {
  case ARENA_CLAIMED: return "live";
  case ARENA_FREE: return "abandoned";
  case ARENA_SUSPENDED: return "suspended"; /* a fork child's, until its thread takes it back */
  default: return "zombie";
  }
}

static void print_text(struct out *o, const struct ta_stats *s, const char *title) {
  put(o, "%s\n", title);
  put(o, "  requested %llu B, usable %llu B, heap %llu B; internal fragmentation %.2f%%%s\n",
      s->requested_bytes, s->usable_bytes, s->heap_bytes, s->internal_fragmentation_pct,
      s->requested_tracked ? "" : " (requested sizes not tracked: statistics were off)");
  put(o, "  free %llu B, largest free block %llu B: external fragmentation %.2f%%; "
         "stranded in partly used runs %llu B (%.2f%% of the heap)\n",
      s->free_bytes, s->largest_free_block, s->external_fragmentation_pct, s->stranded_bytes,
      s->stranded_pct);
  put(o, "  blocks %llu, free blocks %llu; mallocs %llu, frees %llu, callocs %llu, reallocs %llu,"
         " reuses %llu\n",
      s->blocks, s->free_blocks, s->mallocs, s->frees, s->callocs, s->reallocs, s->reuses);
  put(o, "  grows %llu, shrinks %llu, splits %llu, merges %llu; remote frees %llu\n", s->grows,
      s->shrinks, s->splits, s->merges, s->remote_frees);
  put(o, "  mapped %llu B, resident %llu B, returned %llu B; huge blocks %llu, cached %llu B\n",
      s->mapped_bytes, s->resident_bytes, s->returned_bytes, s->huge_blocks, s->huge_cached_bytes);
}

/* Reports are written with write(2), a cancellation point: a thread with a cancel pending
 * would be cancelled in the middle of one (or, from a slow path, inside malloc). As glibc's
 * malloc_stats does, cancellation waits until the report is written. */
static int cancel_hold(void) {
  int old = PTHREAD_CANCEL_ENABLE;
  pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
  return old;
}
static void cancel_release(int old) { pthread_setcancelstate(old, NULL); }

static int print_report(int fd, int format) {
  struct ta_stats *s, storage;
  s = &storage;
  s->version = TA_STATS_VERSION;
  s->size = sizeof *s;
  int r = ta_stats_get(s, -1);
  if (r) return r;
  int saved = errno;
  struct out o = {.fd = fd};
  if (format == 1) {
    print_json(&o, s);
    put(&o, ",\"arenas\":[");
    bool first = true;
    for (ta_arena_t *a = ta_arena_first(); a; a = a->next_all) {
      struct ta_stats as = {.version = TA_STATS_VERSION, .size = sizeof as};
      if (ta_stats_get(&as, (int)a->id) != 0) continue;
      int st = atomic_load(&a->state);
      put(&o, "%s{\"arena\":%u,\"state\":\"%s\",\"mallocs\":%llu,\"frees\":%llu,"
              "\"usable_bytes\":%llu,\"requested_bytes\":%llu,\"heap_bytes\":%llu,"
              "\"internal_fragmentation_pct\":%.4f,\"external_fragmentation_pct\":%.4f,"
              "\"stranded_pct\":%.4f}",
          first ? "" : ",", a->id,
          state_name(st), as.mallocs,
          as.frees, as.usable_bytes, as.requested_bytes, as.heap_bytes,
          as.internal_fragmentation_pct, as.external_fragmentation_pct, as.stranded_pct);
      first = false;
    }
    put(&o, "]}\n");
  } else {
    print_text(&o, s, "tamalloc statistics (whole process)");
    /* Whether huge_halves did anything: said only once a half was asked for. */
    uint64_t made = atomic_load(&ta_collapse_made), refused = atomic_load(&ta_collapse_refused);
    if (made + refused)
      put(&o,
          "  huge pages: halves of small chunks collapsed %llu, refused %llu; %llu us in the "
          "calls\n",
          (unsigned long long)made, (unsigned long long)refused,
          (unsigned long long)atomic_load(&ta_collapse_call_us));
    uint64_t zn = atomic_load(&ta_zombie_frees);
    if (zn)
      put(&o, "  freed into zombie arenas, never reused: %llu blocks, %llu B\n",
          (unsigned long long)zn, (unsigned long long)atomic_load(&ta_zombie_bytes));
    put(&o, "  %-10s %10s %14s %14s %8s %10s %14s %14s\n", "class", "live", "usable B",
        "requested B", "int.frag", "free blks", "free B", "stranded B");
    for (unsigned c = 0; c < TA_STATS_CLASSES; c++) {
      const struct ta_class_stats *cs = &s->classes[c];
      if (!class_active(cs)) continue;
      double frag = class_internal_pct(cs);
      char name[24];
      if (c == 0) snprintf(name, sizeof name, "huge");
      else snprintf(name, sizeof name, "%llu", cs->block_size);
      put(&o, "  %-10s %10llu %14llu %14llu %7.2f%% %10llu %14llu %14llu\n", name, cs->live_blocks,
          cs->usable_bytes, cs->requested_bytes, frag, cs->free_blocks, cs->free_bytes,
          cs->stranded_bytes);
    }
    for (ta_arena_t *a = ta_arena_first(); a; a = a->next_all) {
      struct ta_stats as = {.version = TA_STATS_VERSION, .size = sizeof as};
      if (ta_stats_get(&as, (int)a->id) != 0) continue;
      char title[64];
      int st = atomic_load(&a->state);
      snprintf(title, sizeof title, "arena %u (%s)", a->id,
               state_name(st));
      print_text(&o, &as, title);
    }
  }
  flush(&o);
  errno = saved;
  return o.err;
}

int ta_stats_print(int fd, int format) {
  int cancel = cancel_hold();
  int r = print_report(fd, format);
  cancel_release(cancel);
  return r;
}

/* stats_print:true (conf.c): the report at exit, on the settings' own copy of stderr. */
__attribute__((destructor)) static void report_at_exit(void) {
  if (ta_conf_stats_print)
    ta_stats_print(ta_conf_report_fd >= 0 ? ta_conf_report_fd : STDERR_FILENO,
                   ta_conf_stats_format);
}

/* ------------------------------------------------------------------ glibc's interfaces */

void ta_malloc_stats(void);
void ta_malloc_stats(void) { ta_stats_print(STDERR_FILENO, 0); }

struct mallinfo2 ta_mallinfo2(void);
struct mallinfo2 ta_mallinfo2(void) {
  struct ta_stats s = {.version = TA_STATS_VERSION, .size = sizeof s};
  struct mallinfo2 m;
  memset(&m, 0, sizeof m);
  if (ta_stats_get(&s, -1) != 0) return m;
  m.arena = s.heap_bytes - s.huge_cached_bytes - (s.classes[0].usable_bytes);
  m.ordblks = s.free_blocks;
  m.hblks = s.huge_blocks;
  m.hblkhd = s.classes[0].usable_bytes;
  m.uordblks = s.usable_bytes;
  m.fordblks = s.free_bytes;
  m.keepcost = s.largest_free_block;
  return m;
}

/* glibc's older interface: mallinfo2's figures, each converted to int as glibc 2.36 converts
 * them (modulo 2^32, not clamped: a figure of 2 GiB or more wraps, as it does with glibc). */
struct mallinfo ta_mallinfo(void);
struct mallinfo ta_mallinfo(void) {
  struct mallinfo2 m2 = ta_mallinfo2();
  struct mallinfo m;
#define TRUNCATE(f) m.f = (int)(unsigned)m2.f
  TRUNCATE(arena);
  TRUNCATE(ordblks);
  TRUNCATE(smblks);
  TRUNCATE(hblks);
  TRUNCATE(hblkhd);
  TRUNCATE(usmblks);
  TRUNCATE(fsmblks);
  TRUNCATE(uordblks);
  TRUNCATE(fordblks);
  TRUNCATE(keepcost);
#undef TRUNCATE
  return m;
}

int ta_malloc_info(int options, FILE *fp);
int ta_malloc_info(int options, FILE *fp) {
  if (options != 0 || fp == NULL) {
    errno = EINVAL;
    return -1;
  }
  struct ta_stats s = {.version = TA_STATS_VERSION, .size = sizeof s};
  if (ta_stats_get(&s, -1) != 0) return -1;
  fprintf(fp, "<malloc version=\"tamalloc-1\">\n");
  for (unsigned c = 0; c < TA_STATS_CLASSES; c++) {
    const struct ta_class_stats *cs = &s.classes[c];
    if (!cs->live_blocks && !cs->free_blocks) continue;
    fprintf(fp,
            "<size class=\"%u\" block=\"%llu\" live=\"%llu\" usable=\"%llu\" requested=\"%llu\""
            " free=\"%llu\" free_bytes=\"%llu\"/>\n",
            c, cs->block_size, cs->live_blocks, cs->usable_bytes, cs->requested_bytes,
            cs->free_blocks, cs->free_bytes);
  }
  fprintf(fp, "<total type=\"heap\" size=\"%llu\"/>\n", s.heap_bytes);
  fprintf(fp, "<total type=\"usable\" size=\"%llu\"/>\n", s.usable_bytes);
  fprintf(fp, "<total type=\"free\" count=\"%llu\" size=\"%llu\"/>\n", s.free_blocks,
          s.free_bytes);
  fprintf(fp, "<total type=\"mapped\" size=\"%llu\"/>\n", s.mapped_bytes);
  fprintf(fp, "<total type=\"resident\" size=\"%llu\"/>\n", s.resident_bytes);
  fprintf(fp, "<fragmentation internal=\"%.4f\" external=\"%.4f\" stranded=\"%.4f\"/>\n",
          s.internal_fragmentation_pct, s.external_fragmentation_pct, s.stranded_pct);
  fprintf(fp, "</malloc>\n");
  return 0;
}

/* ------------------------------------------------------------------ the heap map */

static void map_block(const ta_mhdr_t *h, size_t word, void *arg) {
  put(arg, "block 0x%lx %zu %s\n", (unsigned long)h, (size_t)(word & TA_M_SIZE_MASK),
      ta_medium_live(word) ? "used" : (word & TA_M_CACHED) ? "cached" : "free");
}

static void map_span(const void *p, size_t bytes, unsigned state, uint32_t word, void *arg) {
  static const char *const name[] = {"?", "live", "free", "returned"};
  put(arg, "span 0x%lx %zu %s %u\n", (unsigned long)(uintptr_t)p, bytes, name[state & 3],
      state == TA_SPAN_LIVE ? word : 0);
}

static void map_granule(uintptr_t base, uint8_t kind, void *arg) {
  struct out *o = arg;
  if (kind == TA_MAP_SPAN) {
    ta_span_chunk_t *c = (ta_span_chunk_t *)base;
    put(o, "chunk 0x%lx %u spans %s 0 %zu\n", (unsigned long)base, (unsigned)TA_CHUNK_SIZE,
        TA_LOAD(c->from_brk) ? "brk" : "mmap", resident(c, TA_CHUNK_SIZE));
    ta_span_walk(map_span, c, o);
    return;
  }
  if (kind == TA_MAP_SMALL || kind == TA_MAP_MEDIUM) {
    ta_chunk_t *c = (ta_chunk_t *)base;
    if (TA_LOAD(c->check) != (base ^ ta_secret) || !chunk_enter(c, base, kind)) return;
    ta_arena_t *owner = TA_LOAD(c->owner);
    put(o, "chunk 0x%lx %u %s %s %u %zu\n", (unsigned long)base, (unsigned)TA_CHUNK_SIZE,
        kind == TA_MAP_SMALL ? "small" : "medium", TA_LOAD(c->from_brk) ? "brk" : "mmap",
        owner ? owner->id : 0, resident(c, TA_CHUNK_SIZE));
    if (kind == TA_MAP_SMALL) {
      for (unsigned i = 1; i < TA_RUNS_PER_CHUNK; i++) {
        ta_run_t *r = ta_chunk_run(c, i);
        uintptr_t rb = base + ((uintptr_t)i << TA_RUN_SHIFT);
        uint32_t bs = TA_LOAD(r->bsize); /* once: the divisor (see walk_small) */
        ta_arena_t *run_owner = TA_LOAD(r->owner);
        if (run_owner == NULL || bs == 0) {
          put(o, "slot 0x%lx %u free\n", (unsigned long)rb, (unsigned)TA_RUN_SIZE);
          continue;
        }
        /* Its owner: the chunk's arena, or another one the slot is lent to (small.c). */
        put(o, "run 0x%lx %u %u %u %u %u %u\n", (unsigned long)rb, (unsigned)TA_RUN_SIZE, bs,
            (unsigned)(TA_LOAD(r->used) & ~(RUN_FULL_BIT | RUN_ACTIVE_BIAS)),
            TA_LOAD(r->limit) / bs, ta_run_cap(r), run_owner->id);
      }
    } else {
      ta_medium_walk(c, map_block, o);
    }
    chunk_leave(c);
  } else {
    ta_huge_t *h = (ta_huge_t *)(kind == TA_MAP_HUGE ? base : base - TA_CHUNK_SIZE);
    if (!ta_huge_check_ok(h)) return;
    uint32_t st = atomic_load(&h->state);
    size_t map_size = TA_LOAD(h->map_size);
    put(o, "huge 0x%lx %zu %s %zu %zu\n", (unsigned long)h, map_size,
        st == HUGE_LIVE ? "live" : "cached", TA_LOAD(h->requested), resident(h, map_size));
  }
}

/* A break chunk given back whole, in the process-wide pool (chunk.c): no arena's. */
static void map_pooled(void *ctx, uintptr_t c) {
  put((struct out *)ctx, "pooled 0x%lx %u\n", (unsigned long)c, (unsigned)TA_CHUNK_SIZE);
}

int ta_heap_map(int fd) {
  int cancel = cancel_hold();
  int saved = errno;
  struct out o = {.fd = fd};
  put(&o, "# tamalloc heap map 1\n");
  void *brk_now = ta_os_brk_get();
  put(&o, "break 0x%lx\n", (unsigned long)(uintptr_t)brk_now);
  reader_enter();
  scan_map(map_granule, &o);
  ta_chunk_pool_each(map_pooled, &o);
  for (ta_arena_t *a = ta_arena_first(); a; a = a->next_all) {
    int st = atomic_load(&a->state);
    put(&o, "arena %u %s\n", a->id,
        state_name(st));
    size_t n = 0;
    for (ta_chunk_t *c = TA_FOLLOW(a->empty_chunks); c && n < 1u << 20; c = TA_FOLLOW(c->next), n++) {
      if (((uintptr_t)c & TA_CHUNK_MASK) != 0) break;
      put(&o, "empty 0x%lx %u %s %u %s\n", (unsigned long)c, (unsigned)TA_CHUNK_SIZE,
          TA_LOAD(c->from_brk) ? "brk" : "mmap", a->id,
          TA_LOAD(c->decommitted) ? "returned" : "resident");
    }
  }
  reader_leave();
  flush(&o);
  errno = saved;
  cancel_release(cancel);
  return o.err;
}

/* ------------------------------------------------------------------ the statistics log */

static _Atomic int log_fd = -1;
static _Atomic uint64_t log_next_ms;
static uint64_t log_start_ms;
static _Atomic int log_busy;

static size_t process_rss(void) {
  char buf[256];
  int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char *p = buf;
  while (*p && *p != ' ') p++; /* skip the size field */
  size_t pages = 0;
  while (*p == ' ') p++;
  while (*p >= '0' && *p <= '9') pages = pages * 10 + (size_t)(*p++ - '0');
  return pages * ta_os_page_size(); /* statm counts the kernel's pages */
}

/* From slow paths: one line of totals when the interval has passed. */
void ta_stats_log_tick(void) {
  uint64_t next = atomic_load_explicit(&log_next_ms, memory_order_relaxed);
  uint64_t now = ta_os_now_ms();
  if (now < next || atomic_exchange(&log_busy, 1)) return;
  int cancel = cancel_hold(); /* malloc is no cancellation point */
  if (atomic_load(&log_fd) < 0) {
    char path[1024];
    memcpy(path, ta_conf_stats_log, ta_conf_stats_log_len);
    path[ta_conf_stats_log_len] = 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
      ta_conf_stats_log = NULL; /* cannot log: stop trying */
      atomic_store(&log_busy, 0);
      cancel_release(cancel);
      return;
    }
    atomic_store(&log_fd, fd);
    log_start_ms = now;
  }
  struct ta_stats st = {.version = TA_STATS_VERSION, .size = sizeof st};
  if (ta_stats_get(&st, -1) == 0) {
    struct out o = {.fd = atomic_load(&log_fd)};
    put(&o,
        "{\"pid\":%d,\"t_ms\":%llu,\"rss_bytes\":%zu,\"resident_bytes\":%llu,\"heap_bytes\":%llu,"
        "\"usable_bytes\":%llu,\"requested_bytes\":%llu,\"free_bytes\":%llu,"
        "\"internal_fragmentation_pct\":%.4f,\"external_fragmentation_pct\":%.4f,"
        "\"stranded_pct\":%.4f,\"mallocs\":%llu,\"frees\":%llu}\n",
        (int)getpid(), (unsigned long long)(now - log_start_ms), process_rss(), st.resident_bytes, st.heap_bytes,
        st.usable_bytes, st.requested_bytes, st.free_bytes, st.internal_fragmentation_pct,
        st.external_fragmentation_pct, st.stranded_pct, st.mallocs, st.frees);
    flush(&o);
  }
  /* The next sample is due an interval after this one ended: however long a walk of a
   * large heap takes, the program gets at least the interval to itself. */
  atomic_store_explicit(&log_next_ms, ta_os_now_ms() + ta_conf_stats_interval_ms,
                        memory_order_relaxed);
  atomic_store(&log_busy, 0);
  cancel_release(cancel);
}

/* In a fork child only the forking thread exists: a reader or a log writer that was
 * running in another thread never finishes there. */
void ta_stats_reset_after_fork(void) {
  atomic_store(&ta_stats_readers, 0);
  atomic_store(&log_busy, 0);
  ta_huge_unmap_deferred();
  ta_huge_recount_after_fork();
}
