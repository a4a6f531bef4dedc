/*
 * huge.c — blocks above 1 MiB, each mapped on its own, and the cache of freed mappings.
 *
 * A huge mapping starts at a 4 MiB boundary with its meta block (ta_huge_t); the data
 * follows at data_off (64 bytes, or the requested alignment). The granule holding the data
 * start is marked TA_MAP_HUGE, so free(p) finds the meta block at p's granule start.
 * Alignments of 4 MiB and more put the data at the start of the granule after the meta
 * block's (TA_MAP_HUGE_AL): the meta block is then one granule below p.
 *
 * Freed mappings are not unmapped at once: the freeing thread's arena keeps a few of them
 * (TA_HUGE_CACHE_COUNT, TA_HUGE_CACHE_BYTES) and the next huge request takes the best fit,
 * trims a much larger one, or grows a smaller one in place with mremap. Their pages stay
 * resident, so a program that cycles through multi-megabyte buffers neither maps nor
 * faults them in again. realloc grows a huge block with mremap, in place when it can and
 * otherwise by moving the pages to a new aligned address: never by copying.
 */
#include <string.h>

#include "internal.h"

#define TA_HUGE_CACHE_COUNT 8
#define TA_HUGE_CACHE_BYTES ((size_t)128 << 20)

static void huge_unmap(ta_huge_t *h) {
  uintptr_t data = (uintptr_t)h + h->data_off;
  ta_map_set(data, TA_MAP_NONE);
  atomic_store_explicit(&h->state, 0, memory_order_relaxed);
  h->check = 0;
  if (ta_os_munmap(h, h->map_size) != 0) {
    /* Cannot give it back: drop the pages at least; the mapping stays ours forever. */
    ta_os_decommit(h, h->map_size);
  }
}

static void cache_remove(ta_arena_t *a, ta_huge_t *h) {
  for (ta_huge_t **pp = &a->huge_cache; *pp; pp = &(*pp)->next) {
    if (*pp == h) {
      *pp = h->next;
      a->huge_cached_bytes -= h->map_size;
      a->huge_cached_count--;
      return;
    }
  }
}

/* Unmaps cached mappings until at most keep_bytes stay cached; returns the bytes freed. */
static size_t huge_trim_cache(ta_arena_t *a, size_t keep_bytes) {
  size_t freed = 0;
  while (a->huge_cache && a->huge_cached_bytes > keep_bytes) {
    /* Drop the largest first: it holds the most memory. */
    ta_huge_t *big = a->huge_cache;
    for (ta_huge_t *h = a->huge_cache; h; h = h->next)
      if (h->map_size > big->map_size) big = h;
    cache_remove(a, big);
    freed += big->map_size;
    huge_unmap(big);
  }
  return freed;
}

/* A cached mapping of at least `need` bytes (from `data_off` on), or NULL. */
static ta_huge_t *cache_take(ta_arena_t *a, size_t need) {
  ta_huge_t *best = NULL, *largest = NULL;
  for (ta_huge_t *h = a->huge_cache; h; h = h->next) {
    if (h->map_size >= need && (best == NULL || h->map_size < best->map_size)) best = h;
    if (largest == NULL || h->map_size > largest->map_size) largest = h;
  }
  if (best) {
    cache_remove(a, best);
    if (best->map_size > 2 * need) {
      /* Far too big: give the tail back rather than hold it resident. */
      if (ta_os_munmap((char *)best + need, best->map_size - need) == 0) best->map_size = need;
    }
    return best;
  }
  if (largest) {
    /* Grow the largest in place: its pages stay, only the rest is new. */
    if (ta_os_mremap(largest, largest->map_size, need, NULL) != NULL) {
      cache_remove(a, largest);
      largest->map_size = need;
      return largest;
    }
  }
  return NULL;
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

  if (a != NULL && !beyond) {
    ta_slow_enter(a);
    ta_maybe_purge(a);
    h = cache_take(a, need);
    ta_slow_leave(a);
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
      if (start > m) ta_os_munmap(m, (size_t)(start - m));
      if (end > start + need) ta_os_munmap(start + need, (size_t)(end - (start + need)));
      h = (ta_huge_t *)start;
    } else {
      h = ta_os_mmap_aligned(need, TA_CHUNK_SIZE);
      if (h == NULL && a != NULL) {
        ta_slow_enter(a);
        huge_trim_cache(a, 0); /* address space may be what is short */
        ta_slow_leave(a);
        h = ta_os_mmap_aligned(need, TA_CHUNK_SIZE);
      }
      if (h == NULL) return NULL;
    }
  }
  h->check = (uintptr_t)h ^ ta_secret;
  if (fresh) h->map_size = need; /* a cached span keeps its own size (>= need) */
  h->data_off = data_off;
  h->requested = size;
  h->next = NULL;
  atomic_store_explicit(&h->state, HUGE_LIVE, memory_order_relaxed);
  char *data = (char *)h + data_off;
  ta_map_set((uintptr_t)data, beyond ? TA_MAP_HUGE_AL : TA_MAP_HUGE);
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
  ta_arena_t *a = ta_tl_arena;
  bool al = h->data_off == TA_CHUNK_SIZE;
  if (a == &ta_sentinel_arena || al || h->map_size > TA_HUGE_CACHE_BYTES) {
    huge_unmap(h);
    return;
  }
  ta_slow_enter(a);
  h->freed_ms = ta_os_now_ms();
  ta_purge_note(a, h->freed_ms);
  h->next = a->huge_cache;
  a->huge_cache = h;
  a->huge_cached_bytes += h->map_size;
  a->huge_cached_count++;
  if (a->huge_cached_count > TA_HUGE_CACHE_COUNT || a->huge_cached_bytes > TA_HUGE_CACHE_BYTES) {
    /* Over budget: drop the oldest (the tail of the list). */
    while (a->huge_cached_count > TA_HUGE_CACHE_COUNT ||
           a->huge_cached_bytes > TA_HUGE_CACHE_BYTES) {
      ta_huge_t *last = a->huge_cache;
      while (last->next) last = last->next;
      cache_remove(a, last);
      huge_unmap(last);
    }
  }
  ta_slow_leave(a);
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
