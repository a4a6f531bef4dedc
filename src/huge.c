/*
 * huge.c — blocks above 1 MiB, each mapped on its own, and the cache of freed mappings.
 *
 * A huge mapping starts at a 4 MiB boundary with its meta block (ta_huge_t); the data
 * follows at data_off (64 bytes, or the requested alignment). The granule holding the data
 * start is marked TA_MAP_HUGE, so free(p) finds the meta block at p's granule start.
 * Alignments of 4 MiB and more put the data at the start of the granule after the meta
 * block's (TA_MAP_HUGE_AL): the meta block is then one granule below p.
 *
 * Freed mappings are not unmapped at once: a process-wide, lock-free cache keeps up to
 * ta_huge_cache_limit bytes of them, and the next huge request, from any thread, takes the
 * best fit, trims a much larger one, or grows a smaller one in place with mremap. Their pages stay
 * resident, so a program that cycles through multi-megabyte buffers neither maps nor
 * faults them in again. realloc grows a huge block with mremap, in place when it can and
 * otherwise by moving the pages to a new aligned address: never by copying.
 */
#include <string.h>

#include "internal.h"

/* The cache: TA_HUGE_SLOTS atomic slots shared by all threads. A span is taken by
 * exchanging its slot for NULL, so whoever takes it owns it; the sizes and times beside the
 * slots are hints written before a span is published, checked once it is owned. */
#define TA_HUGE_SLOTS 32
size_t ta_huge_cache_limit = (size_t)64 << 20; /* bytes kept resident at most */
bool ta_huge_pages = true; /* ask for transparent huge pages on huge spans */
static _Atomic(ta_huge_t *) cache_slot[TA_HUGE_SLOTS];
static _Atomic size_t cache_size_hint[TA_HUGE_SLOTS];
static _Atomic uint64_t cache_time_hint[TA_HUGE_SLOTS];
static _Atomic size_t cache_bytes;
static _Atomic size_t cache_count;
_Atomic uint64_t ta_huge_due; /* earliest time a cached span may be purged; 0: none */

_Atomic size_t ta_huge_live_count; /* for statistics: huge blocks handed out, not freed */
static _Atomic(ta_huge_t *) deferred; /* unmaps put off while statistics are read */

static void huge_unmap(ta_huge_t *h) {
  uintptr_t data = (uintptr_t)h + h->data_off;
  ta_map_set(data, TA_MAP_NONE);
  atomic_store_explicit(&h->state, 0, memory_order_relaxed);
  if (!ta_unmap_allowed()) {
    /* A statistics reader may be looking at this header: unmap when it is done. */
    ta_huge_t *head = atomic_load_explicit(&deferred, memory_order_relaxed);
    do {
      h->next = head;
    } while (!atomic_compare_exchange_weak_explicit(&deferred, &head, h, memory_order_release,
                                                    memory_order_relaxed));
    /* The last reader may have left between our look and our push: then nobody would. */
    if (ta_unmap_allowed()) ta_huge_unmap_deferred();
    return;
  }
  h->check = 0;
  if (ta_os_munmap(h, h->map_size) != 0) {
    /* Cannot give it back: drop the pages at least; the mapping stays ours forever. */
    ta_os_decommit(h, h->map_size);
  }
}

/* Called by the last statistics reader on its way out. */
void ta_huge_unmap_deferred(void) {
  ta_huge_t *h = atomic_exchange_explicit(&deferred, NULL, memory_order_acquire);
  while (h) {
    ta_huge_t *next = h->next;
    h->check = 0;
    if (ta_os_munmap(h, h->map_size) != 0) ta_os_decommit(h, h->map_size);
    h = next;
  }
}

/* Takes the span of slot i if it is still `h`; the caller then owns it. */
static bool slot_take(unsigned i, ta_huge_t *h) {
  if (!atomic_compare_exchange_strong_explicit(&cache_slot[i], &h, NULL, memory_order_acquire,
                                               memory_order_relaxed))
    return false;
  atomic_fetch_sub_explicit(&cache_bytes, h->map_size, memory_order_relaxed);
  atomic_fetch_sub_explicit(&cache_count, 1, memory_order_relaxed);
  return true;
}

/* Index of the cached span to take: the best fit for `need`, else (need == 0) the largest. */
static int slot_pick(size_t need, ta_huge_t **out) {
  int best = -1;
  size_t best_size = 0;
  for (unsigned i = 0; i < TA_HUGE_SLOTS; i++) {
    ta_huge_t *h = atomic_load_explicit(&cache_slot[i], memory_order_relaxed);
    if (h == NULL) continue;
    size_t s = atomic_load_explicit(&cache_size_hint[i], memory_order_relaxed);
    bool better = need ? (s >= need && (best < 0 || s < best_size)) : (best < 0 || s > best_size);
    if (better) {
      best = (int)i;
      best_size = s;
      *out = h;
    }
  }
  return best;
}

/* Counts `size` more bytes in the tallies if that keeps them within the limit, unmapping the
 * largest cached spans while it would not. False when no room can be made (what is counted
 * then belongs to puts in flight). The bytes are counted before the span is published, so a
 * thread that takes it subtracts what was added already: the tally never wraps, and it
 * never passes the limit, even for a moment. */
static bool cache_reserve(size_t size) {
  size_t cur = atomic_load_explicit(&cache_bytes, memory_order_relaxed);
  for (;;) {
    if (cur <= ta_huge_cache_limit - size) {
      if (atomic_compare_exchange_weak_explicit(&cache_bytes, &cur, cur + size,
                                                memory_order_relaxed, memory_order_relaxed))
        return true;
      continue;
    }
    ta_huge_t *v = NULL;
    int i = slot_pick(0, &v);
    if (i < 0) return false;
    if (slot_take((unsigned)i, v)) huge_unmap(v);
    cur = atomic_load_explicit(&cache_bytes, memory_order_relaxed);
  }
}

static bool cache_put(ta_huge_t *h) {
  /* Read what we need of h now: once it is in a slot, another thread may own it. */
  size_t size = h->map_size;
  uint64_t freed = h->freed_ms;
  if (size > ta_huge_cache_limit || !cache_reserve(size)) return false;
  atomic_fetch_add_explicit(&cache_count, 1, memory_order_relaxed);
  for (unsigned i = 0; i < TA_HUGE_SLOTS; i++) {
    if (atomic_load_explicit(&cache_slot[i], memory_order_relaxed) != NULL) continue;
    atomic_store_explicit(&cache_size_hint[i], size, memory_order_relaxed);
    atomic_store_explicit(&cache_time_hint[i], freed, memory_order_relaxed);
    ta_huge_t *expected = NULL;
    if (atomic_compare_exchange_strong_explicit(&cache_slot[i], &expected, h,
                                                memory_order_release, memory_order_relaxed))
      return true;
  }
  /* Every slot is taken: give back what was counted. */
  atomic_fetch_sub_explicit(&cache_count, 1, memory_order_relaxed);
  atomic_fetch_sub_explicit(&cache_bytes, size, memory_order_relaxed);
  return false;
}

/* A cached span with at least `need` bytes, owned by the caller, or NULL. */
static ta_huge_t *cache_take(size_t need) {
  for (int attempt = 0; attempt < 4; attempt++) {
    ta_huge_t *h = NULL;
    int i = slot_pick(need, &h);
    if (i < 0) break;
    if (!slot_take((unsigned)i, h)) continue; /* someone was quicker: look again */
    if (h->map_size < need) { /* the hint was stale */
      if (!cache_put(h)) huge_unmap(h);
      continue;
    }
    if (h->map_size > 2 * need) {
      /* Far too big: give the tail back rather than hold it resident. */
      if (ta_os_munmap((char *)h + need, h->map_size - need) == 0) h->map_size = need;
    } else if (h->map_size - need >= TA_CHUNK_SIZE) {
      /* Somewhat too big: keep the address space (the block may grow into it), drop the
       * pages, so that the block holds no more memory than it asked for. */
      ta_os_decommit((char *)h + need, h->map_size - need);
    }
    return h;
  }
  /* Nothing big enough: grow the largest in place, keeping its resident pages. */
  ta_huge_t *h = NULL;
  int i = slot_pick(0, &h);
  if (i >= 0 && slot_take((unsigned)i, h)) {
    if (ta_huge_pages && h->map_size < need) ta_os_hugepage(h, h->map_size, true); /* one mapping */
    if (h->map_size < need && ta_os_mremap(h, h->map_size, need, NULL) != NULL) {
      h->map_size = need;
      return h;
    }
    if (h->map_size >= need) return h;
    if (!cache_put(h)) huge_unmap(h);
  }
  return NULL;
}

/* Unmaps the cached spans freed at least decay_ms before `now` (all of them if `all`). */
size_t ta_huge_purge(uint64_t now, bool all) {
  size_t freed = 0;
  uint64_t next = 0;
  atomic_store_explicit(&ta_huge_due, 0, memory_order_relaxed);
  for (unsigned i = 0; i < TA_HUGE_SLOTS; i++) {
    ta_huge_t *h = atomic_load_explicit(&cache_slot[i], memory_order_relaxed);
    if (h == NULL) continue;
    uint64_t t = atomic_load_explicit(&cache_time_hint[i], memory_order_relaxed);
    if (!all && now < t + ta_decay_ms) {
      if (next == 0 || t + ta_decay_ms < next) next = t + ta_decay_ms;
      continue;
    }
    if (!slot_take(i, h)) continue;
    freed += h->map_size;
    huge_unmap(h);
  }
  if (next) ta_purge_note_global(&ta_huge_due, next);
  return freed;
}

size_t ta_huge_cached_bytes(void) { return atomic_load(&cache_bytes); }

/* The bytes of the spans in the slots, counted one by one (for tests: the tallies must
 * agree with it whenever no thread is between a slot and the tallies). */
size_t ta_huge_cache_sum(size_t *count) {
  size_t bytes = 0, n = 0;
  for (unsigned i = 0; i < TA_HUGE_SLOTS; i++) {
    ta_huge_t *h = atomic_load(&cache_slot[i]);
    if (h == NULL) continue;
    bytes += h->map_size;
    n++;
  }
  if (count) *count = n;
  return bytes;
}

/* Fork child: a thread that was between a slot and the tallies is gone; count again. */
void ta_huge_recount_after_fork(void) {
  size_t count = 0, bytes = ta_huge_cache_sum(&count);
  atomic_store(&cache_bytes, bytes);
  atomic_store(&cache_count, count);
}
size_t ta_huge_cached_count(void) { return atomic_load(&cache_count); }

/* The kernel refused a mapping of `need` bytes: could unmapping the cached spans make room?
 * Only if what is short is at most what the cache holds. A request the kernel refuses
 * whatever is mapped (a size beyond its overcommit heuristic, a limit far below it; a
 * program probing with malloc(2^46)) must not cost the cache: if the request less the
 * cached bytes is refused as well, unmapping them cannot help, unless the kernel refuses
 * every mapping (the count of mappings at its limit), which unmapping does cure. */
static bool purge_may_help(size_t need) {
  size_t cached = ta_huge_cached_bytes();
  if (cached == 0) return false;
  if (need <= cached) return true;
  void *p = ta_os_mmap(need - cached);
  if (p != NULL) {
    ta_os_trim(p, need - cached);
    return true;
  }
  p = ta_os_mmap(TA_PAGE_SIZE);
  if (p == NULL) return true;
  ta_os_trim(p, TA_PAGE_SIZE);
  return false;
}

void *ta_huge_alloc(ta_arena_t *a, size_t size, size_t align, bool zero) {
  bool beyond = align >= TA_CHUNK_SIZE;
  size_t data_off = beyond ? TA_CHUNK_SIZE : (align > TA_HUGE_HDR ? align : TA_HUGE_HDR);
  if (size > TA_MAX_REQUEST - data_off) return NULL;
  /* Whole granules: the next mapping then lands aligned by itself (see ta_os_mmap_aligned);
   * the slack is address space, never touched unless the block grows into it. */
  size_t need = ta_align_up(data_off + size, beyond ? TA_PAGE_SIZE : TA_CHUNK_SIZE);
  ta_huge_t *h = NULL;
  bool fresh = true;

  if (!beyond) {
    if (a != NULL) ta_maybe_purge(a);
    h = cache_take(need);
    if (h) fresh = false;
  }
  if (h == NULL) {
    if (beyond) {
      /* Data aligned to `align`, meta block in the granule just below it. */
      if (need > SIZE_MAX - align) return NULL;
      char *m = ta_os_mmap(need + align);
      if (m == NULL) return NULL;
      char *data = (char *)ta_align_up((uintptr_t)m + TA_CHUNK_SIZE, align);
      char *start = data - TA_CHUNK_SIZE;
      char *end = m + need + align;
      if (start > m) ta_os_trim(m, (size_t)(start - m));
      if (end > start + need) ta_os_trim(start + need, (size_t)(end - (start + need)));
      h = (ta_huge_t *)start;
    } else {
      h = ta_os_mmap_aligned(need, TA_CHUNK_SIZE);
      if (h == NULL && purge_may_help(need) && ta_huge_purge(0, true) > 0)
        h = ta_os_mmap_aligned(need, TA_CHUNK_SIZE);
      if (h == NULL) return NULL;
    }
  }
  if (ta_huge_pages && !beyond) {
    /* Huge pages only where the request covers them whole: no block holds more than a
     * few KiB beyond what it asked for. */
    uintptr_t end = ((uintptr_t)h + data_off + size) & ~(uintptr_t)(TA_HUGEPAGE_SIZE - 1);
    if (end > (uintptr_t)h) ta_os_hugepage(h, end - (uintptr_t)h, true);
  }
  h->check = (uintptr_t)h ^ ta_secret;
  if (fresh) h->map_size = need; /* a cached span keeps its own size (>= need) */
  h->data_off = data_off;
  h->requested = size;
  h->next = NULL;
  atomic_store_explicit(&h->state, HUGE_LIVE, memory_order_relaxed);
  char *data = (char *)h + data_off;
  ta_map_set((uintptr_t)data, beyond ? TA_MAP_HUGE_AL : TA_MAP_HUGE);
  atomic_fetch_add_explicit(&ta_huge_live_count, 1, memory_order_relaxed);
  if (a != NULL) {
    a->cnt.grows += fresh;
    a->cnt.first_uses += fresh;
  }
  if (zero && !fresh) memset(data, 0, size);
  return data;
}

ta_huge_t *ta_huge_hdr_checked(void *p, uint8_t kind, const char *op) {
  uintptr_t u = (uintptr_t)p;
  ta_huge_t *h;
  if (kind == TA_MAP_HUGE_AL) {
    if (u & TA_CHUNK_MASK) ta_fatal(op, p);
    h = (ta_huge_t *)(u - TA_CHUNK_SIZE);
  } else {
    h = (ta_huge_t *)(u & ~(uintptr_t)TA_CHUNK_MASK);
  }
  if (h->check != ((uintptr_t)h ^ ta_secret) || (char *)h + h->data_off != (char *)p)
    ta_fatal(op, p);
  return h;
}

void ta_huge_free(ta_huge_t *h) {
  uint32_t live = HUGE_LIVE;
  if (!atomic_compare_exchange_strong(&h->state, &live, HUGE_CACHED))
    ta_fatal("free(): double free of pointer", (char *)h + h->data_off);
  atomic_fetch_sub_explicit(&ta_huge_live_count, 1, memory_order_relaxed);
  ta_arena_t *me = ta_tl_arena;
  if (me != &ta_sentinel_arena) me->cnt.frees++;
  else atomic_fetch_add_explicit(&ta_orphan_frees, 1, memory_order_relaxed);
  if (h->data_off == TA_CHUNK_SIZE) { /* over-aligned: not reusable as it is */
    huge_unmap(h);
    return;
  }
  uint64_t due = (h->freed_ms = ta_os_now_ms()) + ta_decay_ms;
  if (!cache_put(h)) {
    huge_unmap(h);
    return;
  }
  /* h is published: another thread may take it, or unmap it, from here on. */
  ta_purge_note_global(&ta_huge_due, due);
}

/* Resizes in place or moves the pages with mremap; NULL when neither works (the caller
 * then copies). The block stays valid on failure. */
void *ta_huge_realloc(ta_huge_t *h, size_t size) {
  if (h->data_off == TA_CHUNK_SIZE || size > TA_MAX_REQUEST - h->data_off) return NULL;
  size_t need = ta_align_up(h->data_off + size, TA_CHUNK_SIZE);
  char *old_data = (char *)h + h->data_off;
  if (need <= h->map_size) {
    if (need < h->map_size / 2 && ta_os_munmap((char *)h + need, h->map_size - need) == 0)
      h->map_size = need;
    h->requested = size;
    return old_data;
  }
  /* Huge pages were asked for on part of the span, which splits it into two mappings,
   * and mremap works on one: ask for the whole span, which makes it one again. */
  if (ta_huge_pages) ta_os_hugepage(h, h->map_size, true);
  if (ta_os_mremap(h, h->map_size, need, NULL) != NULL) {
    h->map_size = need;
    h->requested = size;
    return old_data;
  }
  /* Move: reserve an aligned range, then let the kernel move the pages onto it. Grow
   * geometrically so that a block grown step by step moves O(log n) times. */
  size_t target = ta_align_up(need + need / 2, TA_CHUNK_SIZE);
  char *dst = ta_os_mmap_aligned(target, TA_CHUNK_SIZE);
  if (dst == NULL) {
    target = need;
    dst = ta_os_mmap_aligned(target, TA_CHUNK_SIZE);
    if (dst == NULL) return NULL;
  }
  size_t old_size = h->map_size;
  ta_map_set((uintptr_t)old_data, TA_MAP_NONE);
  if (!ta_unmap_allowed()) { /* a statistics reader may be reading the header: copy instead */
    ta_map_set((uintptr_t)old_data, TA_MAP_HUGE);
    ta_os_munmap(dst, target);
    return NULL;
  }
  ta_huge_t *n = ta_os_mremap(h, old_size, target, dst);
  if (n == NULL) {
    ta_map_set((uintptr_t)old_data, TA_MAP_HUGE);
    ta_os_munmap(dst, target);
    return NULL;
  }
  n->check = (uintptr_t)n ^ ta_secret;
  n->map_size = target;
  n->requested = size;
  char *data = (char *)n + n->data_off;
  ta_map_set((uintptr_t)data, TA_MAP_HUGE);
  return data;
}
