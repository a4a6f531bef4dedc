/*
 * internal.h — every type, constant and cross-file prototype of tamalloc.
 *
 * Memory is carved into CHUNKs of 4 MiB, aligned to their size, that come from the program
 * break (sbrk) or, when the break cannot move, from mmap. A byte map with one entry per
 * 4 MiB granule of the address space (ta_keys.map) says what each granule is, so free(p)
 * finds p's metadata from the address alone, and a pointer we never handed out is caught
 * before anything is written.
 *
 *   SMALL chunk : a header, then 63 RUNs of 64 KiB. A run holds blocks of one size class
 *                 (16 B .. 8 KiB); its meta block (ta_run_t) lives in the chunk header, so a
 *                 small block has no header of its own.
 *   MEDIUM chunk: a header, then blocks that each carry a 16-byte meta block (size, flags,
 *                 check word). Free blocks are linked in segregated free lists (bins), split
 *                 on reuse and merged with free neighbours (boundary tags).
 *   HUGE mapping: one block mapped on its own, with its meta block at the start of the
 *                 mapping. Freed mappings wait in a process-wide cache for reuse.
 *
 * Each chunk belongs to one arena; each thread owns one arena (ta_arena_t), reached
 * through an initial-exec TLS pointer. Only the owner touches an arena's lists. A free
 * from another thread pushes the block onto one of the owner's atomic `remote` lists with
 * one CAS (a small block in a chain of that thread's frees for the owner: arena.c); the owner
 * drains those lists in its slow paths.
 *
 * Invariants (checked by the tests in test/unit):
 *   run:    RUN_USED(r) + |run.free| == limit / bsize <= ta_run_cap(r) (2^16 / bsize);
 *           RUN_USED counts the blocks on owner.remote[] and in other threads' chains of
 *           remote frees put off (freed by other threads, not yet taken in)
 *   run:    state == RUN_FULL <=> RUN_FULL_BIT set in used <=> in no list (and free was NULL
 *           when it was set; remote frees may refill it before the owner notices)
 *   run:    state == RUN_ACTIVE <=> RUN_ACTIVE_BIAS added to used <=> it is owner.cur[cls]
 *   run:    state == RUN_PARTIAL <=> run is on owner.partial[cls]; a PARTIAL run holds a
 *           block in use, but a mid class's, kept empty until the owner's purge (small.c,
 *           run_keeps_empty)
 *   run:    owner == NULL <=> the run slot is free in its chunk, or its emptied run waits to
 *           go back to the chunk's keeper (small.c, lent_back), or a fork's zombie keeper
 *           will never take it back; owner != the chunk's owner: the slot is lent
 *   run:    no block at or above limit is handed out or on a list; only the owner lowers
 *           limit (ta_small_shrink), and never below a block that is not on its free list
 *   block:  a block on a free list, a remote list or a chain has word[1] == ta_mark(b);
 *           malloc clears it, a run that retires wipes every mark and link it held, and a
 *           run that shrinks those of the blocks it drops from the page it keeps
 *   medium: INUSE clear <=> the block is on exactly one bin list; no two adjacent free
 *           blocks; PREV_FREE of a block == !INUSE of its predecessor
 *   map:    ta_map_at(g) != 0 => granule g is mapped and its header check word is valid
 */
#ifndef TA_INTERNAL_H
#define TA_INTERNAL_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TA_HIDDEN __attribute__((visibility("hidden")))
#define TA_LIKELY(x) __builtin_expect(!!(x), 1)
#define TA_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define TA_NOINLINE __attribute__((noinline))
#define TA_COLD __attribute__((cold, noinline))
#define TA_INLINE static inline __attribute__((always_inline))

/* The hardened build (libtamalloc-secure.so, libtamalloc_api_secure.a) is these sources
 * compiled with TA_SECURE=1. Every difference is a test of this constant, so the code of
 * both builds is compiled (and warned about) in each, and the default build's optimiser
 * removes the hardened code entirely: its fast paths are not touched. */
#ifndef TA_SECURE
#define TA_SECURE 0
#endif
static const bool ta_secure = TA_SECURE;
/* Hardened build: free blocks wait in a per-arena quarantine of this many entries and this
 * many bytes before they are really freed. */
#define TA_QUARANTINE 64
#define TA_QUARANTINE_BYTES ((size_t)1 << 20)

/* ThreadSanitizer's build: gcc says so with __SANITIZE_THREAD__, clang before 22 only
 * through __has_feature. Every test for that build is a test of TA_TSAN. */
#if defined(__SANITIZE_THREAD__)
#define TA_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TA_TSAN 1
#endif
#endif

/* Words statistics readers (stats.c) read while their owner changes them — run meta blocks,
 * chunk headers, medium size words, huge meta blocks, counters: the owner, their only writer,
 * stores them with TA_STORE wherever a reader can see them and reads them plainly; readers
 * load them with TA_LOAD. Relaxed atomics: plain moves on x86-64. */
#define TA_STORE(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)
#define TA_LOAD(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)
/* Chunk links readers follow (an arena's empty chunks, a chunk's next): release and
 * acquire, so that a reader that reaches a chunk finds it set up. Plain moves too. */
#define TA_PUBLISH(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELEASE)
#define TA_FOLLOW(field) __atomic_load_n(&(field), __ATOMIC_ACQUIRE)
/* A word the program, or another thread, may be writing with plain stores nothing on our
 * side can order, read by a reader for which any value will do (TA_PEEK_FN marks the one
 * function that reads it: mark_peek, link_peek, ta_mh_peek). ThreadSanitizer is told not to
 * watch that one load: clang still watches an atomic load in a function it is told not to
 * watch, so its build reads the word with a volatile load there. */
#if defined(TA_TSAN)
#define TA_PEEK_FN __attribute__((no_sanitize_thread, noinline))
#define TA_PEEK(field) (*(const volatile __typeof__(field) *)&(field))
#else
#define TA_PEEK_FN
#define TA_PEEK(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)
#endif
/* The owner's increment of such a word: a load and a store, not a locked add. */
#define TA_ADD(field, n) TA_STORE(field, (field) + (n))
/* The same on the fast paths of malloc and free, which keep their one add to memory, as
 * ta_dec_le_zero keeps its one subtract: C has no unlocked atomic add, and the load and store
 * would cost two more instructions there. ThreadSanitizer builds use TA_ADD, so that they
 * check every other access to the word. */
#if defined(TA_TSAN)
#define TA_ADD_FAST(field, n) TA_ADD(field, n)
#else
#define TA_ADD_FAST(field, n) ((void)((field) += (n)))
#endif

/* ------------------------------------------------------------------ geometry */
#define TA_CHUNK_SHIFT 22
#define TA_CHUNK_SIZE ((size_t)1 << TA_CHUNK_SHIFT) /* 4 MiB */
#define TA_CHUNK_MASK (TA_CHUNK_SIZE - 1)
#define TA_RUN_SHIFT 16
#define TA_RUN_SIZE ((size_t)1 << TA_RUN_SHIFT) /* 64 KiB */
#define TA_RUNS_PER_CHUNK (TA_CHUNK_SIZE / TA_RUN_SIZE) /* 64; slot 0 is the header */
/* Pages are the kernel's, read at initialisation (ta_page_size, chunk.c): 4 KiB on x86-64,
 * 4, 16 or 64 KiB on arm64. Arrays indexed by page are sized for the smallest and runs hold
 * one of the largest. */
#define TA_PAGE_MIN ((size_t)4 << 10)
#define TA_PAGE_MAX ((size_t)64 << 10)
_Static_assert(TA_RUN_SIZE >= TA_PAGE_MAX, "a run is a whole number of pages");
/* The granule map covers the user address space the kernel hands out without being asked
 * for more (os.c, ta_os_addr_bits): 47 bits on x86-64, 48 on arm64, fewer on some arm64
 * kernels. It is sized for at least the first and at most the second of these. */
#define TA_ADDR_BITS_MIN 47
#define TA_ADDR_BITS_MAX 52
#define TA_ALIGNMENT 16 /* every block */

/* Size classes: 16..128 step 16, then 8 classes per doubling (at most 12.5% waste). */
#define TA_SMALL_MAX ((size_t)8192)
#define TA_NUM_SMALL 56 /* classes 1..56; class 0 is unused */
/* The mid classes, 57..64 (9 to 16 KiB): runs serve them too while the process has had fewer
 * than TA_FEW_ARENAS threads at once (ta_run_limit, small.c; docs/design.md, "Mid classes").
 * Their runs hold 4 to 7 blocks. Not in the hardened build, whose arena keeps its quarantine
 * in the first page in their place. */
#define TA_MID_MAX ((size_t)16384)
#define TA_NUM_RUN (TA_SECURE ? TA_NUM_SMALL : 64) /* classes that may have runs */
#define TA_NUM_MID 8 /* the mid classes, 57..64 (none has runs in the hardened build) */
/* The first class (1 KiB) whose blocks come from the medium heap until it is used often
 * (alloc.c, class_has_runs): below it, a page of a run holds 4 blocks or more, and blocks
 * keep the checks of runs from the first. */
#define TA_COLD_CLASS_MIN 32
#define TA_LINE ((size_t)64) /* a cache line: where a cold class's block starts (alloc.c) */
/* A process-wide count that threads all over the process write (its value is .v): alone in
 * its 128 bytes, the two lines the adjacent-line prefetcher fetches together, so that its
 * writes do not take away from other cores the line of the read-mostly words the linker
 * would put beside it (false sharing). At 16 threads on two cores, the spans' count, written
 * at every other span malloc or free, sat beside the purger's state word that each span free
 * reads: that load and the count's add took a tenth of threads-32k's time. */
typedef struct {
  _Alignas(2 * TA_LINE) _Atomic size_t v;
} ta_alone_count_t;
_Static_assert(sizeof(ta_alone_count_t) == 2 * TA_LINE && _Alignof(ta_alone_count_t) == 2 * TA_LINE,
               "a count alone fills its 128 bytes: nothing else is placed there");
/* A flag that threads all over the process read often and write rarely, alone for the same
 * reason: words written often beside it would take its line away from every reader. */
typedef struct {
  _Alignas(2 * TA_LINE) _Atomic int v;
} ta_alone_flag_t;
_Static_assert(sizeof(ta_alone_flag_t) == 2 * TA_LINE && _Alignof(ta_alone_flag_t) == 2 * TA_LINE,
               "a flag alone fills its 128 bytes");
#define TA_MEDIUM_MAX ((size_t)1 << 20) /* larger requests are mapped on their own */
#define TA_NUM_BINS 136 /* medium free-list bins, indexed by size class */
#define TA_BIN_WORDS ((TA_NUM_BINS + 63) / 64)
/* Sizes beyond this are impossible (PTRDIFF_MAX less room for rounding). */
#define TA_MAX_REQUEST ((size_t)PTRDIFF_MAX - 2 * TA_CHUNK_SIZE)

/* The page every page-sized step uses: carving runs, giving pages back, trims, guard pages,
 * huge spans (the kernel's, or a larger one a test asked for: chunk.c, ta_pages_init); and
 * the transparent huge page. Set once by ta_init, before the first chunk; until then the
 * smallest page and 2 MiB. */
TA_HIDDEN extern size_t ta_page_size;
TA_HIDDEN extern size_t ta_hugepage_size;

/* ------------------------------------------------------------------ map kinds */
enum {
  TA_MAP_NONE = 0,
  TA_MAP_SMALL = 1,   /* small chunk: header at granule start */
  TA_MAP_MEDIUM = 2,  /* medium chunk: header at granule start */
  TA_MAP_HUGE = 3,    /* huge block whose data starts in this granule, header at its start */
  TA_MAP_HUGE_AL = 4, /* huge block with data at this granule start, header one granule down */
  TA_MAP_SPAN = 5,    /* span chunk (span.c): header at granule start */
};

/* ------------------------------------------------------------------ blocks */
/* A free block (small, or medium on its way to its owner): word 0 links it into a list,
 * encoded (ta_link_enc); word 1 holds its mark, ta_mark(b). Neither is stored plainly:
 *   - the link is the next block's address times an odd secret, so a link overwritten
 *     after free (in whole or in part) decodes to a random address, which malloc rejects
 *     (it must lie in the run's own chunk) instead of returning it;
 *   - the mark is keyed by the block's own address, so bytes a program copies from one
 *     block into another never make the second look free, and the key cannot be read
 *     back: every mark is cleared where its memory is handed out or changes size class.
 * A matching mark is never decided on alone: the owner confirms on its lists; another
 * thread also asks for a link word that decodes to a list's end or a block of ours, and
 * otherwise hands the pointer to the owner as a suspect. */
typedef struct ta_block {
  uintptr_t link;
  uintptr_t key;
} ta_block_t;

TA_HIDDEN extern uintptr_t ta_secret; /* random, nonzero once the allocator is initialised */
/* What both fast paths read besides the thread's arena, in one cache line: the free-list keys,
 * drawn with the secret, and the granule map, mapped by ta_init (chunk.c, ta_map_init). */
typedef struct ta_keys {
  uintptr_t mark;   /* ta_mark(b) == b ^ mark */
  uintptr_t link;   /* odd: a link is stored as address * link */
  uintptr_t unlink; /* link's inverse modulo 2^64: address == stored * unlink */
  _Atomic uint8_t *map; /* one byte per 4 MiB granule: TA_MAP_* (ta_map_get) */
  size_t granules;      /* entries of map: 0 until it is mapped, then set once (release) */
} ta_keys_t;
TA_HIDDEN extern ta_keys_t ta_keys;
TA_INLINE uintptr_t ta_mark(const void *b) { return (uintptr_t)b ^ ta_keys.mark; }
TA_INLINE uintptr_t ta_link_enc(const ta_block_t *next) { return (uintptr_t)next * ta_keys.link; }
TA_INLINE ta_block_t *ta_link_dec(uintptr_t w) { return (ta_block_t *)(w * ta_keys.unlink); }
TA_INLINE ta_block_t *ta_block_next(const ta_block_t *b) { return ta_link_dec(b->link); }
/* Whether b lies in the same 4 MiB chunk as the run meta block r (false for NULL). */
TA_INLINE bool ta_same_chunk(const void *b, const void *r) {
  return (((uintptr_t)b ^ (uintptr_t)r) >> 22) == 0;
}

/* ------------------------------------------------------------------ runs */
enum { RUN_UNUSED = 0, RUN_ACTIVE, RUN_PARTIAL, RUN_FULL };
/* run.used carries the state too, so that free needs one test, `--used <= 0`:
 *   FULL:   the sign bit is set (the test fires: the run must go back on a list);
 *   ACTIVE: RUN_ACTIVE_BIAS is added (the test never fires for the run malloc uses);
 *   PARTIAL: the plain count (the test fires when the last block comes back). */
#define RUN_FULL_BIT INT32_MIN
#define RUN_ACTIVE_BIAS (1 << 30)
#define RUN_USED(r) ((r)->used & ~(RUN_FULL_BIT | RUN_ACTIVE_BIAS))

struct ta_arena;
typedef struct ta_run {
  ta_block_t *free;       /* owner's free list; malloc pops, owner's free pushes */
  struct ta_arena *owner; /* NULL while the slot is unused */
  int32_t used;           /* blocks handed out and not yet freed here, | RUN_FULL_BIT */
  uint32_t bsize;         /* block size of the class */
  uint32_t recip;         /* floor(2^32 / bsize) + 1: offset -> index without a divide */
  uint32_t limit;         /* bytes of the run threaded: blocks are carved lazily, and the
                           * owner lowers it when it gives free pages back (ta_small_shrink) */
  uint32_t accept;        /* (uint32_t)(off * recip) < accept: a block threaded (below) */
  uint8_t cls;            /* size class */
  uint8_t state;          /* RUN_* */
  uint16_t slot;          /* index in the chunk */
  struct ta_run *next, *prev; /* owner.partial[cls] list */
  uint64_t empty_since;   /* time the run became empty (for delayed purging) */
} ta_run_t;
_Static_assert(sizeof(ta_run_t) == 64, "run meta block: one cache line");
/* floor(off / bsize) for any offset within the run: off * recip is off * 2^32 / bsize plus at
 * most off < 2^16, less than 2^32 / bsize (>= 2^18: blocks of 16 KiB at most), so the index
 * is never carried over.
 *
 * The low half of that product tells a block's start, with e = bsize * recip - 2^32, in
 * (0, bsize]: off = k * bsize leaves k * e (< 2^16, below recip); any other off leaves at
 * least recip (j * recip for j in 1..bsize-1, plus k * e, never past 2^32). So a start below
 * the n blocks threaded leaves less than n * e (at most 2^16: below recip), and nothing else
 * does: `accept`.
 * (Hence the + 1 for every size: a power of two's exact quotient would leave e = 0, every
 * start the same 0, and the n blocks could not be told from the others.) */
TA_INLINE uint32_t ta_run_index(const ta_run_t *r, uint32_t off) {
  return (uint32_t)(((uint64_t)off * r->recip) >> 32);
}
TA_INLINE uint32_t ta_run_recip(uint32_t bsize) {
  return (uint32_t)(((uint64_t)1 << 32) / bsize + 1);
}
/* What r's `accept` is once the blocks below byte `limit` are threaded. */
TA_INLINE uint32_t ta_run_accept(uint32_t bsize, uint32_t recip, uint32_t limit) {
  return (limit / bsize) * (uint32_t)((uint64_t)bsize * recip - ((uint64_t)1 << 32));
}
/* Blocks that fit in run r: 2^16 / bsize (0 for an unused slot, whose recip is 0). */
TA_INLINE uint32_t ta_run_cap(const ta_run_t *r) {
  return (uint32_t)(((uint64_t)TA_RUN_SIZE * TA_LOAD(r->recip)) >> 32);
}

/* ------------------------------------------------------------------ chunks */

/* A run's meta block and the line beside it, in one aligned 128-byte pair of cache lines:
 * x86-64 cores fetch such pairs together (adjacent-line prefetch), and cores with 128-byte
 * lines (some arm64 ones) hold them as one line. With 64-byte meta blocks side by side, two
 * arenas' runs in neighbouring slots of one chunk (a slot lent, small.c) took each other's
 * line from under every malloc and free: the same work in two threads of one process took
 * 14% more CPU time than in two processes (4% with the blocks apart). Nothing beside a meta block
 * is written on a fast path; beside the header lies the shadow pointer, read by every malloc while
 * statistics are on. */
#define TA_RUN_META_SHIFT 7
typedef struct {
  ta_run_t run;
  uint8_t beside[56]; /* slot 0's, the header's: the shadow pointer (below) */
  /* A run's: it was its arena's current run of its class when a fork child took the arena
   * over from a thread the child does not have, so a pop the fork cut in two may have left a
   * block of it off the list with its free mark (small.c's scan). Cleared when the slot is
   * made a run again. */
  bool fork_cut;
  uint8_t spare[7];
} ta_run_pair_t;
_Static_assert(sizeof(ta_run_pair_t) == (size_t)1 << TA_RUN_META_SHIFT, "run meta stride");
/* The pair of run r (never the sentinel ta_empty_run, which is no chunk's). */
TA_INLINE ta_run_pair_t *ta_run_pair(const ta_run_t *r) { return (ta_run_pair_t *)(uintptr_t)r; }

/* The chunk header is slot 0's run meta block: slot i's is at chunk + 128 * i, so free finds
 * a block's run with a shift and two masks. The header keeps NULL where a run keeps its
 * owner, so a pointer into slot 0 never passes free's owner test. */
typedef struct ta_chunk {
  union {
    struct {
      uint64_t check;        /* (address ^ ta_secret): a chunk of ours, not a stray pointer */
      void *not_a_run;       /* always NULL: runs[0].owner */
      struct ta_arena *owner;
      struct ta_chunk *next; /* owner's list of chunks of this kind */
      struct ta_chunk *prev;
      union {
        uint64_t free_slots; /* small, in use: bit i set <=> run slot i is free (bit 0 never) */
        uint64_t empty_since; /* empty chunk: when it became empty (ms) */
        struct {                /* medium, in use, its top (medium.c, top_trim): */
          uint32_t trim_ms;     /* the last trim (ms, low 32 bits; 0: none yet) */
          uint16_t trim_keep;   /* pages it keeps, since trimmed pages came back soon */
          uint16_t trim_lo;     /* page where the last trim began */
        };
      };
      union {
    uint64_t dirty_slots; /* small: free run slots whose pages are still resident */
    uintptr_t touched;    /* medium: no page from here up may be resident but the last */
  };
      uint8_t kind;          /* TA_MAP_SMALL or TA_MAP_MEDIUM (kept while empty: what it was) */
      uint8_t from_brk;      /* came from the program break */
      uint8_t decommitted;   /* empty chunk: no page past the first is resident. Left set
                            in a chunk fresh from the kernel, for its user to read once;
                            meaningless in a chunk in use */
      uint8_t commit;        /* what is committed (chunk.c, "Commit charge"): 64 KiB units from
                                the start, TA_COMMIT_TAIL the tail; TA_COMMIT_ALL: all of it */
      uint8_t thp;           /* small: TA_THP_TRIED(h) of its halves (small.c), cleared when
                                pages of the half go back */
      _Atomic uint16_t readers; /* statistics readers walking it (threads inside a walk of
                                   it at once, far below 65,536): not reused meanwhile */
    };
    ta_run_pair_t runs[TA_RUNS_PER_CHUNK]; /* small chunks: runs[1..63]; runs[0] is this header */
  };
} ta_chunk_t;
_Static_assert(offsetof(ta_chunk_t, runs) == 0 && offsetof(ta_chunk_t, not_a_run) ==
               offsetof(ta_run_t, owner), "slot 0's owner is NULL");
_Static_assert(offsetof(ta_chunk_t, readers) + sizeof(uint16_t) <= sizeof(ta_run_t),
               "header fits slot 0's meta");
/* A small chunk's halves and transparent huge pages (small.c, half_collapse_maybe): bit h set,
 * half h (0: run slots 0..31, 1: 32..63) was found dense and asked to be one huge page. Read
 * and written under the arena's slow-path lock. */
#define TA_THP_TRIED(h) (1u << (h))
#define TA_HALF_SLOTS (TA_RUNS_PER_CHUNK / 2) /* the run slots of half a chunk */
/* Run slots [first, first + n) of small chunk c give their pages back: a huge page over
 * either half they touch is split, and the half may be asked again once dense again. */
TA_INLINE void ta_chunk_thp_lost(ta_chunk_t *c, unsigned first, unsigned n) {
  for (unsigned h = first / TA_HALF_SLOTS; h <= (first + n - 1) / TA_HALF_SLOTS && h < 2; h++)
    c->thp &= (uint8_t)~TA_THP_TRIED(h);
}
/* Slot s's run meta block. */
TA_INLINE ta_run_t *ta_chunk_run(ta_chunk_t *c, unsigned s) { return &c->runs[s].run; }
/* A small chunk's shadow array pointer (statistics) lies beside the header. */
#define TA_SHADOW_OFFSET offsetof(ta_run_pair_t, beside)
_Static_assert(TA_SHADOW_OFFSET + sizeof(uint16_t *) <= offsetof(ta_run_pair_t, fork_cut),
               "shadow beside");
#define TA_MEDIUM_HDR 64 /* medium chunk: data starts here; runs[] is not used */
/* A medium chunk's end marker: its last 16 bytes, or, in the hardened build, the last 16
 * before its last page, which is a guard page (inaccessible while the chunk is medium). */
#define TA_MEDIUM_GUARD (ta_secure ? ta_page_size : 0)
#define TA_MEDIUM_END (TA_CHUNK_SIZE - TA_MEDIUM_GUARD - sizeof(ta_mhdr_t))

/* ------------------------------------------------------------------ medium blocks */
#define TA_M_INUSE ((size_t)1)
#define TA_M_PREV_FREE ((size_t)2)
#define TA_M_DECOMMITTED ((size_t)4) /* free block whose inner pages were given back */
#define TA_M_CLASS ((size_t)8) /* live block serving a small class (alloc.c): reports its size */
#define TA_M_FLAGS ((size_t)15)
#define TA_M_SIZE_MASK ((size_t)0xfffffff0)
/* Bits 32..54 of a live block's size word: usable - requested (statistics, not in the check
 * word); bits 56..63: its spare, the bytes a TA_M_CLASS block holds beyond the class's size it
 * reports (the rounding to whole cache lines, 48 bytes, and a tail too small to split off, up
 * to 32 more), in the check word like TA_M_CLASS. */
#define TA_M_WASTE_SHIFT 32
#define TA_M_WASTE_MASK ((size_t)0x7fffff)
#define TA_M_SPARE_SHIFT 56
/* Bit 55: a block its owner freed that waits in the arena's cache of medium blocks (medium.c,
 * "The cache"). INUSE stays set, so that no neighbour merges with it; to every reader but the
 * cache it is free (a second free of it is a double free; statistics count it free). In the
 * check word. */
#define TA_M_CACHED ((size_t)1 << 55)
_Static_assert(sizeof(size_t) == 8, "a medium size word holds the waste and the spare");
_Static_assert(TA_CHUNK_SIZE <= TA_M_WASTE_MASK, "a block's waste fits its bits");
typedef struct ta_mhdr {
  size_t size_flags; /* whole block size incl. this header, multiple of 16, plus flags */
  uintptr_t check;   /* (address ^ ta_secret) */
} ta_mhdr_t;
#define TA_MIN_MBLOCK ((size_t)48) /* header + two links + footer */
_Static_assert(TA_LINE - 16 + TA_MIN_MBLOCK - 16 < 256, "a class block's spare fits its byte");
/* A free medium block of TA_MEDIUM_PURGE_MIN bytes or more keeps, after its two links, the
 * time (ms) at which its bytes became free (their age averaged by size: medium.c) and how
 * many of them may be resident: the decay purge gives back the blocks free for the decay
 * time, not the ones the owner is cycling through, and counts what stays. */
#define TA_MEDIUM_PURGE_MIN ((size_t)16 << 10)
/* Once the process has had this many arenas at once (ta_arena_count: as many threads were
 * alive together), spans serve (span_min_kb to span_max: ta_span_threads, span.c, which tests
 * may set apart) and each medium cache holds a quarter (ta_medium_arenas, medium.c): each
 * thread's cache is then memory no other can use, and spans serve most of its sizes (with
 * span_min_kb:0 too, where no span serves: the first reason holds alone). One threshold for
 * both: the switch to memory every thread shares. */
#define TA_FEW_ARENAS 8
/* The cache of freed medium blocks (medium.c): the bins of blocks of 8 KiB to 64 KiB, eight
 * blocks each, 1 MiB in all (why not less: docs/design.md, "The cache of freed medium
 * blocks"). */
#define TA_MCACHE_FIRST TA_NUM_SMALL /* the bin of 8 KiB */
#define TA_MCACHE_CLASSES 24
#define TA_MCACHE_SLOTS 8
#define TA_MCACHE_BYTES ((uint32_t)1024 << 10)
/* Where the last cached bin ends (ta_class_size[TA_MCACHE_FIRST + TA_MCACHE_CLASSES], which a
 * test checks): no block of a cached bin is this large. */
#define TA_MCACHE_END ((size_t)64 << 10)
#define TA_MCACHE_MIN ((size_t)8 << 10) /* where the first cached bin starts */
/* The cache's bins by KiB (medium.c): the index of the bin holding k KiB, and 1 + the index
 * of the bin ending at k KiB (0: none). */
TA_HIDDEN extern const uint8_t ta_mcache_bin[65], ta_mcache_ends[65];
/* The cache's index of the bin whose top (its largest size, the one size the cache keeps) is
 * s bytes; TA_MCACHE_CLASSES if s is no cached bin's top. */
TA_INLINE unsigned ta_mcache_top_index(size_t s) {
  size_t t = s + TA_ALIGNMENT; /* the start of the next bin: whole KiB */
  if ((t & 1023) != 0 || t > TA_MCACHE_END) return TA_MCACHE_CLASSES;
  unsigned v = ta_mcache_ends[t >> 10];
  return v != 0 ? v - 1u : TA_MCACHE_CLASSES;
}
#define TA_CHORES_EVERY 16 /* slow paths that reuse held memory, per round of chores (alloc.c) */
TA_INLINE uint64_t *ta_medium_stamp(ta_mhdr_t *h) { return (uint64_t *)(h + 1) + 2; }
TA_INLINE uint64_t *ta_medium_res(ta_mhdr_t *h) { return (uint64_t *)(h + 1) + 3; }
/* A live block's size word can be read by a thread freeing it while its owner flips the
 * PREV_FREE bit because a neighbour changed: both sides use relaxed atomics for that word
 * (plain moves on x86-64). The owner's other accesses are its own. */
TA_INLINE size_t ta_mh_load(const ta_mhdr_t *h) {
  return __atomic_load_n(&h->size_flags, __ATOMIC_RELAXED);
}
TA_INLINE void ta_mh_store(ta_mhdr_t *h, size_t v) {
  __atomic_store_n(&h->size_flags, v, __ATOMIC_RELAXED);
}
/* The same load by a walker of chunks it does not own (see ta_medium_walk). */
TA_HIDDEN size_t ta_mh_peek(const ta_mhdr_t *h);

/* ------------------------------------------------------------------ huge blocks */
/* The meta block before a huge block's data: 64 bytes, its last word the residency hint
 * dirty_end. (The residency history of a span found sparse is kept apart: hist, huge.c.) */
#define TA_HUGE_HDR 64
typedef struct ta_huge {
  uintptr_t check;      /* (address ^ ta_secret) */
  size_t map_size;      /* bytes mapped, starting at this header */
  size_t data_off;      /* data = (char *)this + data_off */
  size_t requested;     /* last requested size */
  _Atomic uint16_t state; /* HUGE_LIVE or HUGE_CACHED */
  uint16_t hist;          /* found sparse: its residency history's record + 1, or 0 (huge.c) */
  uint8_t thp;          /* HUGE_ADVISED | HUGE_JUDGED (huge.c: huge pages only where they pay) */
  uint8_t sparse_seen;  /* times it was found sparse (up to 6) */
  uint8_t look_in;      /* frees to wait before looking at its residency again (< 64) */
  uint8_t resident64;   /* found sparse: 64ths of the pages looked at that were resident */
  struct ta_huge *next; /* the list of unmaps put off for statistics readers */
  uint64_t freed_ms;    /* when it entered the cache */
  size_t dirty_end; /* no page at or beyond this offset is resident; the word before the data */
} ta_huge_t;
_Static_assert(sizeof(ta_huge_t) == TA_HUGE_HDR, "huge meta block fits before the data");
_Static_assert(offsetof(ta_huge_t, dirty_end) == TA_HUGE_HDR - sizeof(size_t),
               "a write just before the data lands in the residency hint, which free checks");
enum { HUGE_LIVE = 1, HUGE_CACHED = 2 };
/* A huge meta block's check word covers its address and the fields free and malloc act on:
 * the mapping's size, the data offset and the request (forging map_size made free unmap
 * memory that was not the block's). Mixed by a secret odd multiplier, so that no field can
 * be changed and the check fixed up by a known difference. Every writer of those fields
 * seals the header again (ta_huge_seal). */
TA_INLINE uintptr_t ta_huge_check(const ta_huge_t *h) {
  uintptr_t mix = (uintptr_t)__atomic_load_n(&h->map_size, __ATOMIC_RELAXED) ^
                  ((uintptr_t)__atomic_load_n(&h->requested, __ATOMIC_RELAXED) *
                   0x9e3779b97f4a7c15ULL) ^
                  ((uintptr_t)__atomic_load_n(&h->data_off, __ATOMIC_RELAXED) << 17);
  return (uintptr_t)h ^ ta_secret ^ (mix * ta_keys.link);
}
TA_INLINE void ta_huge_seal(ta_huge_t *h) {
  __atomic_store_n(&h->check, ta_huge_check(h), __ATOMIC_RELAXED);
}
TA_INLINE bool ta_huge_check_ok(const ta_huge_t *h) {
  return __atomic_load_n(&h->check, __ATOMIC_RELAXED) == ta_huge_check(h);
}
enum {
  HUGE_ADVISED = 1, /* MADV_HUGEPAGE is on the whole mapping */
  HUGE_JUDGED = 2,  /* found dense once: its residency is not looked at again */
  HUGE_LOOKED = 4,  /* looked at on its last free: resident64 is of now (huge.c) */
  HUGE_PADDED = 8   /* found dense, kept without advice for its block's padding (huge.c) */
};

/* ------------------------------------------------------------------ arenas */
#define TA_SUSPECTS 4 /* suspected double frees an arena holds for its owner to confirm */
#define TA_REMOTE_LISTS 7 /* lists of remote frees per arena: with state and suspected, a line */
/* Every this many frees a thread makes into arenas without a thread, it takes in what waits
 * on the last one's lists (arena.c, drain_ownerless). */
#define TA_DRAIN_EVERY 16
/* FREE: no owner, adoptable. CLAIMED: owned by a thread. ZOMBIE: in a fork child, its owner
 * (absent there) was inside a slow path: never used again. SUSPENDED: in a fork child, the
 * forking thread's own arena, caught inside one of its calls (fork from a signal handler):
 * that thread takes it back once the call has ended. */
enum { ARENA_FREE = 0, ARENA_CLAIMED = 1, ARENA_ZOMBIE = 2, ARENA_SUSPENDED = 3 };

/* Per-arena event counters: plain increments by the owner, summed when read. */
typedef struct ta_counters {
  /* mallocs are not counted: they are frees + live blocks, and the walk counts live blocks */
  uint64_t frees;        /* frees taken in by this arena (its own and drained remote ones) */
  uint64_t remote_frees; /* of those, freed by another thread */
  uint64_t callocs, reallocs;
  uint64_t first_uses;   /* blocks handed out for the first time (small: threaded onto a list) */
  uint64_t grows;        /* chunks and huge mappings taken from the kernel */
  uint64_t shrinks;      /* chunks given back (unmapped, or the break moved down) */
  uint64_t splits, merges; /* medium blocks */
  uint64_t adopted;      /* times a thread took this arena over from an exited one */
  uint64_t drained;      /* remote frees the background purger took in (under the lock) */
} ta_counters_t;

typedef struct ta_arena {
  /* --- fast path: read on every malloc --- */
  ta_run_t *cur[TA_NUM_RUN + 1]; /* current run per class; never NULL */
  ta_counters_t cnt;

  /* --- owner-only slow-path state --- */
  ta_run_t *partial[TA_NUM_RUN + 1];      /* runs with free blocks (or, shrunk, room to thread
                                           * them again), not current */
  ta_run_t *partial_tail[TA_NUM_RUN + 1]; /* the oldest of each list (see small.c) */
  ta_chunk_t *small_avail;  /* small chunks with a free run slot */
  ta_chunk_t *small_full;   /* small chunks without one */
  ta_chunk_t *medium_chunks;
  ta_chunk_t *empty_chunks; /* whole chunks kept for reuse */
  uint64_t bin_map[TA_BIN_WORDS];
  ta_mhdr_t *bins[TA_NUM_BINS];
  /* The slow-path lock: held around every multi-step change of the arena's lists, by its
   * owner (or the thread that claimed an ownerless arena), or by the background purger,
   * which only ever tries it. Fast paths never take it: they touch the runs' lists, which
   * the purger leaves alone. A fork child reads it to tell whether its snapshot of the
   * arena is consistent. */
  /* 0 while free, else the holder's ta_tl_tag address, with TA_SLOW_SYNCED once the holder
   * has waited for the owner's light section: taken and marked in one store, so a signal
   * handler's call on the holder's thread never finds the lock taken by nobody it knows. */
  _Atomic uintptr_t slow;
  int slow_nest; /* the holder's takings beyond its first: 0 while free */
  /* The owner's light sections (ta_light_enter, below): its depth of them, which only the
   * owner writes; whether they are allowed, and the ta_tl_tag of the thread allowed to run
   * them, both set under the lock. */
  _Atomic int light;
  _Atomic bool light_on;
  const void *_Atomic light_owner;
  uint32_t light_small; /* steps of the small slow paths made in one (small.c; tests) */
  bool purging;         /* inside ta_arena_purge (no re-entry from what it releases) */
  /* Its frees went over the budget: ta_purge_if_over (dirty.c). Set by another thread too,
   * one that gives a lent run slot back under this arena's lock (small.c), or that takes in
   * what was freed into it while it has no thread (arena.c, drain_ownerless). */
  _Atomic bool over_budget;
  bool shrink_wait;     /* its runs keep their free pages for its demand (purge.c) */
  bool spare_listed;    /* in chunk.c's list of arenas with empty chunks others may take */
  uint8_t lender_at[2]; /* its entry + 1 in small.c's lists of arenas with run slots to lend
                           (0: not listed): [0] any free slot, [1] a resident one */
  uint32_t id;
  _Atomic uint32_t owner_tid;   /* the owner's kernel thread id (0: none known) */
  _Atomic uint64_t purge_due;  /* earliest time something of this arena may be purged; 0: none */
  _Atomic uint64_t owner_due;  /* the same in its owner's time (ta_owner_decay): its next purge */
  uint64_t medium_dirty_since; /* a large medium free block may hold resident pages since */
  size_t hole_rise; /* bytes taken of large free medium blocks in this demand window, less
                     * bytes freed into the medium heap since, never below 0 (dirty.c) */
  _Atomic uint64_t released_ms; /* when the arena was last given up (read by orphan purges) */
  _Atomic uint64_t owner_tag;   /* owner without exit hook: its thread id, for takeover (arena.c) */
  size_t dirty_bytes;          /* empty chunks and retired run slots still resident */
  /* Free run slots of its small chunks, and of them those still resident: written under the
   * lock, read by other arenas before they try it (small.c, "Slots lent between arenas"). */
  _Atomic uint32_t slots_free, slots_warm;
  /* Runs of slots another arena keeps, emptied, waiting for that keeper's lock to go back
   * (linked by next; resident and counted in dirty_bytes, or given back: empty_since is
   * TA_SLOT_GIVEN_BACK). Under the lock. */
  struct ta_run *lent_back;
  /* A borrower gave a slot back while this arena was claimed: whoever makes it FREE tells the
   * orphan purge (arena.c, ta_arena_give_back; seq_cst against the borrower's read of the
   * state, as a remote free's push is). */
  _Atomic bool slot_came_back;
  /* Its demand (dirty.c, ta_dirty_fresh): bytes of pages it took that were not resident, and
   * the most of its free medium memory it took at once (ta_dirty_drawdown; demand_top: that
   * most, so far in the window), in
   * the window that began at demand_ms and in the one before; held: the part of dirty_bytes
   * that demand covers, counted in ta_dirty_held. Written under the slow-path lock (the exit
   * hook and a new owner's claim too, without it), read by the purger: relaxed atomics. */
  _Atomic uint64_t demand_ms;
  _Atomic size_t demand, demand_prev, demand_top;
  _Atomic size_t demand_seen;   /* ta_arena_demand at its last reading */
  _Atomic size_t held;
  /* Which classes (small and mid) take their blocks from runs: the others come from the medium heap
   * until the arena allocates ta_run_threshold of them within a second, or holds a run's
   * worth of them there (alloc.c). */
  uint64_t run_classes[2];     /* bit c % 64 of word c / 64: class c has runs */
  uint64_t cold_since;         /* when the counts below began (ms) */
  /* The first time a mid run (small.c, run_keeps_empty) held free blocks since the last
   * release of their pages (ta_small_mid_release; 0: none since): the owner's, under the lock
   * or in a light section. */
  uint64_t mid_since;
  /* [c - 57]: the empty run mid class c keeps on its list, or NULL (small.c,
   * run_keeps_empty); set and cleared by the owner, under the lock or in a light section. */
  struct ta_run *mid_kept[TA_NUM_MID];
  uint16_t cold_allocs[TA_NUM_RUN + 1]; /* blocks of each class served from the medium heap */
  /* Blocks of each class live in the medium heap (TA_M_CLASS), whichever thread holds them.
   * Not the owner's alone: changed by any thread that holds the slow-path lock (medium.c,
   * class_live_note: the owner, the purger or another thread's trim taking in remote frees,
   * an adopter); read by the owner without it. */
  _Atomic uint16_t cold_live[TA_NUM_RUN + 1];
  /* Slow paths that handed out memory already held (a cached medium block, a span) before
   * the next one does the chores (alloc.c, chores_sometimes). */
  uint8_t chores_skip;

  /* --- shared with other threads --- */
  /* Blocks freed by other threads (links encoded), on TA_REMOTE_LISTS lists that a freer
   * takes in turn: the owner walks them side by side (see arena.c). One cache line with
   * the two words every freer and the owner's check read next to them. */
  _Alignas(64) _Atomic(ta_block_t *) remote[TA_REMOTE_LISTS];
  _Atomic int state;                         /* ARENA_*; read by remote freers */
  _Atomic uint32_t suspected;                /* nonzero: look at suspects[] */
  _Atomic int64_t remote_medium; /* about how many of remote's blocks are medium (a hint for
                                    the background purger: see ta_remote_collect_medium) */
  uint32_t collects;      /* the owner's drains of remote (under the lock) */
  uint32_t collects_seen; /* collects at the purger's last visit with medium mail waiting */
  struct ta_arena *next_all;                 /* global list, push-only */
  /* Frees by other threads of blocks whose mark says "already free": the owner confirms
   * each (it alone can read its lists) and either frees the block or reports the double
   * free. The freeing thread never aborts on the mark alone. */
  _Atomic(void *) suspects[TA_SUSPECTS];

  /* --- hardened build only (one unused entry otherwise): owner-only --- */
  /* Blocks freed by this arena's owner, zeroed, waiting to be really freed, oldest first
   * at q_head; their usable bytes in q_bytes (alloc.c). */
  void *quarantine[TA_SECURE ? TA_QUARANTINE : 1];
  uint32_t q_head, q_count;
  size_t q_bytes;

  /* --- last: the page after the first, touched by threads that free medium blocks only ---
   * Medium blocks its owner freed, kept whole for the next request of their class (medium.c,
   * "The cache"); under the slow-path lock, like the bins. */
  _Alignas(64) uint32_t mcache_bytes; /* the cached blocks' sizes, at most ta_mcache_max */
  uint8_t mcache_n[TA_MCACHE_CLASSES];
  uint64_t mcache_since; /* the first put since the cache was last flushed (ms; 0: none) */
  ta_mhdr_t *mcache[TA_MCACHE_CLASSES][TA_MCACHE_SLOTS];
} ta_arena_t;
/* An arena is mapped in whole pages: all but its cache fit in the first (4 KiB), so that a
 * thread that never frees a medium block keeps one page of it resident, not two. */
_Static_assert(offsetof(ta_arena_t, mcache_bytes) <= 4096, "an arena but its cache: one page");
_Static_assert(offsetof(ta_arena_t, suspected) + sizeof(uint32_t) -
                       offsetof(ta_arena_t, remote) <= 64,
               "the remote lists, state and suspected share a cache line");

/* The placeholder every thread starts with: all its runs are empty, so the first malloc
 * takes the slow path, which gives the thread a real arena. */
TA_HIDDEN extern ta_arena_t ta_sentinel_arena;
TA_HIDDEN extern ta_run_t ta_empty_run;
extern __thread ta_arena_t *ta_tl_arena __attribute__((tls_model("initial-exec")));

/* ------------------------------------------------------------------ helpers */
TA_INLINE size_t ta_align_up(size_t n, size_t a) { return (n + a - 1) & ~(a - 1); }
TA_INLINE bool ta_is_pow2(size_t a) { return a != 0 && (a & (a - 1)) == 0; }

#define TA_LUT_ENTRIES 8193 /* class of every small size, indexed by the size itself */
TA_HIDDEN extern const uint8_t ta_class_lut[TA_LUT_ENTRIES];
TA_HIDDEN extern const uint64_t ta_class_size[TA_NUM_BINS + 1];

/* Smallest class whose size is >= size (size >= 1). */
TA_INLINE unsigned ta_size_class(size_t size) {
  if (size <= TA_SMALL_MAX) return ta_class_lut[size];
  unsigned k = 63u - (unsigned)__builtin_clzll(size - 1); /* size in (2^k, 2^(k+1)] */
  return 8u + (k - 7u) * 8u + (unsigned)((size - 1) >> (k - 3)) - 8u + 1u;
}

/* Bin of a free medium block of s bytes: the largest class <= s, so that every block in
 * bin ta_size_class(n) or above holds n. */
TA_INLINE unsigned ta_bin_of(size_t s) {
  unsigned c = ta_size_class(s);
  return ta_class_size[c] > s ? c - 1 : c;
}

/* ------------------------------------------------------------------ os.c */
/* The only file that talks to the kernel. Each call can be made to fail by a test hook. */
enum {
  TA_OS_SBRK = 1,
  TA_OS_MMAP = 2,
  TA_OS_MUNMAP = 4,
  TA_OS_MADVISE = 8,
  TA_OS_MREMAP = 16,
  TA_OS_KEY = 32,
  TA_OS_THREAD = 64,
  TA_OS_MINCORE = 128,  /* counted only: never made to fail */
  TA_OS_COMMIT = 256,   /* lazy commit: mprotect */
  TA_OS_COLLAPSE = 512, /* a range made huge pages now (MADV_COLLAPSE) */
  TA_OS_BARRIER = 1024  /* membarrier: registering or asking for a barrier */
};
_Static_assert(TA_OS_BARRIER == 1 << 10, "os.c counts calls of bits 0..10");
enum { TA_THP_NEVER = 0, TA_THP_MADVISE = 1, TA_THP_ALWAYS = 2 };
TA_HIDDEN void *ta_os_brk_get(void);             /* the kernel's break; (void *)-1 on failure */
TA_HIDDEN int ta_os_brk_set(void *from, void *to); /* 0 on success */
TA_HIDDEN void *ta_os_mmap(size_t size);         /* NULL on failure; zeroed, read-write */
/* Bits of the user address space the kernel hands out unasked (TA_ADDR_BITS_MIN..MAX); no
 * mapping of ta_os_mmap lies above. Read once. */
TA_HIDDEN unsigned ta_os_addr_bits(void);
/* Zeroed memory for the allocator's own tables, not counted as mapped; NULL on failure.
 * Writable: charged as it is touched (MAP_NORESERVE), where the kernel overcommits; else
 * read-only, uncharged, for ta_os_commit to open page by page. */
TA_HIDDEN void *ta_os_reserve(size_t size, bool writable);
/* The kernel's page size (getauxval(AT_PAGESZ)), and its transparent huge page's (sysfs's
 * hpage_pmd_size; what a page table page maps if the kernel does not say). Read once. */
TA_HIDDEN size_t ta_os_page_size(void);
TA_HIDDEN size_t ta_os_hugepage_size(void);
TA_HIDDEN void *ta_os_mmap_aligned(size_t size, size_t align); /* NULL on failure */
/* Lazy commit (chunk.c): address space with no access and no charge, parts of it made
 * read-write (charged); 0 on success. Whether the kernel never overcommits
 * (vm.overcommit_memory = 2), read once. */
TA_HIDDEN void *ta_os_reserve_aligned(size_t size, size_t align); /* NULL on failure */
TA_HIDDEN int ta_os_commit(void *p, size_t size);
TA_HIDDEN bool ta_os_overcommit_never(void);
TA_HIDDEN int ta_os_munmap(void *p, size_t size);
TA_HIDDEN void ta_os_trim(void *p, size_t size); /* part of a fresh mapping, never used */
TA_HIDDEN size_t ta_os_resident(const void *p, size_t size); /* bytes in memory (mincore) */
TA_HIDDEN int ta_os_mincore(const void *p, size_t size, unsigned char *vec);
TA_HIDDEN int ta_os_decommit(void *p, size_t size); /* MADV_DONTNEED */
typedef struct {
  void *p;
  size_t size;
} ta_os_range_t;
#define TA_OS_BATCH_MAX 64
TA_HIDDEN int ta_os_decommit_batch(const ta_os_range_t *r, int n); /* 0, -1 none, 1 some */
TA_HIDDEN int ta_os_protect(void *p, size_t size, bool access); /* guard pages: mprotect */
TA_HIDDEN void *ta_os_mremap(void *p, size_t old, size_t size, void *fixed); /* NULL on failure */
TA_HIDDEN void *ta_os_mremap_move(void *p, size_t old, size_t size); /* in place or moved */
TA_HIDDEN int ta_os_hugepage(void *p, size_t size, bool on); /* MADV_(NO)HUGEPAGE hint */
/* No transparent huge pages on a range where the kernel would give them unasked (`always`). */
TA_HIDDEN void ta_os_thp_off(void *p, size_t size);
TA_HIDDEN int ta_os_collapse(void *p, size_t size); /* MADV_COLLAPSE: huge pages now; 0 or errno */
TA_HIDDEN int ta_os_thp_mode(void); /* TA_THP_*: the kernel's setting, read once */
/* Whether the host reclaims the memory the kernel leaves free (free page reporting), read once. */
TA_HIDDEN bool ta_os_host_reclaims(void);
TA_HIDDEN uint64_t ta_os_now_ms(void);
TA_HIDDEN uint64_t ta_os_now_us(void); /* CLOCK_MONOTONIC, for timing a call */
TA_HIDDEN unsigned ta_os_ncpu(void);
/* The CPU running the thread, as its rank among those the process may run on (below
 * ta_os_ncpu(), unless a test forces another): a hint, 0 if unknown. */
TA_HIDDEN unsigned ta_os_cpu(void);
TA_HIDDEN void ta_os_cpu_rseq(bool on); /* tests: false reads the CPU as without rseq */
TA_HIDDEN bool ta_os_thread_runs(uint32_t tid);
TA_HIDDEN unsigned ta_os_runnable(void);
/* A detached thread with every signal blocked and a small stack; 0 on success. */
TA_HIDDEN int ta_os_thread_start(void *(*fn)(void *));
TA_HIDDEN void ta_os_thread_name(const char *name);
/* Sleeps while *word == val, at most timeout_ms (0: no limit; a signal may cut it short);
 * wakes one sleeper, or every one. No cancellation point. */
TA_HIDDEN void ta_os_futex_wait(_Atomic uint32_t *word, uint32_t val, uint64_t timeout_ms);
TA_HIDDEN void ta_os_futex_wake(_Atomic uint32_t *word);
TA_HIDDEN void ta_os_futex_wake_all(_Atomic uint32_t *word);
TA_HIDDEN void ta_os_yield(void); /* sched_yield */
/* Every signal blocked for this thread, the mask before in *old; and that mask again. */
TA_HIDDEN void ta_os_signals_block(sigset_t *old);
TA_HIDDEN void ta_os_signals_restore(const sigset_t *old);
/* The process's threads made to pass a memory barrier each (membarrier, private expedited):
 * ta_os_barrier_register once, true when the kernel will; then ta_os_barrier, 0 on success. */
TA_HIDDEN bool ta_os_barrier_register(void);
TA_HIDDEN int ta_os_barrier(void);
/* Threads: the exit hook (pthread_key_create: 0 or an errno), the kernel's ids, and whether
 * a thread of this process has exited (the kernel no longer knows its id). */
TA_HIDDEN int ta_os_key_create(pthread_key_t *key, void (*destructor)(void *));
TA_HIDDEN uint32_t ta_os_gettid(void);
TA_HIDDEN uint32_t ta_os_getpid(void);
TA_HIDDEN bool ta_os_thread_gone(uint32_t tid);
TA_HIDDEN uintptr_t ta_os_random(void);
TA_HIDDEN uintptr_t ta_os_random_fresh(void);
TA_HIDDEN extern ta_alone_count_t ta_os_mapped_bytes;   /* mapped or taken from the break, now */
TA_HIDDEN extern ta_alone_count_t ta_os_returned_bytes; /* given back since start */
/* Readers of statistics walk memory other threads own. While one is active, nothing may be
 * unmapped under it: callers check ta_unmap_allowed() after clearing the map entry. */
TA_HIDDEN extern _Atomic int ta_stats_readers;
TA_INLINE bool ta_unmap_allowed(void) {
  /* Pairs with the reader's seq_cst increment: either the reader sees the cleared map
   * entry, or we see the reader. The store before must not pass the load: a full fence
   * (ThreadSanitizer models no fences; its build relies on the seq_cst load alone). */
#if !defined(TA_TSAN)
  atomic_thread_fence(memory_order_seq_cst);
#endif
  return atomic_load_explicit(&ta_stats_readers, memory_order_seq_cst) == 0;
}
/* Test hooks: fail the next `count` calls of the operations in `mask` after `skip` successes;
 * system calls made so far for the operations in `mask`; the THP mode to believe in. */
void ta_os_fail(unsigned mask, unsigned skip, unsigned count);
uint64_t ta_os_calls(unsigned mask);
void ta_os_thp_mode_force(int mode);
void ta_os_host_reclaims_force(int yes);          /* 1, 0; -1: read the machine's again */
int ta_os_balloon_reports(const char *dir);       /* its directory read: 1, 0, -1 unknown */
void ta_os_collapse_fake(int result);             /* collapses counted, return result (-1: real) */
void ta_os_collapse_last(void **p, size_t *size); /* the last faked collapse's range */
void ta_os_cpu_force(int cpu); /* -1: the real CPU again */
/* Raises sig once, in the next thread to claim an arena, right after the claim (0: none). */
void ta_os_interrupt_claim(int sig);
TA_HIDDEN extern _Atomic int ta_os_claim_signal;
TA_HIDDEN void ta_os_claim_interrupted(void);
TA_HIDDEN void ta_brk_lock(void);
TA_HIDDEN void ta_brk_unlock(void);
TA_HIDDEN void ta_brk_reset_after_fork(void);

/* ------------------------------------------------------------------ error.c */
__attribute__((noreturn)) TA_COLD TA_HIDDEN void ta_fatal(const char *what, const void *p);

/* ------------------------------------------------------------------ conf.c */
/* The settings (TAMALLOC_CONF), plain variables read by the modules they concern. */
TA_HIDDEN void ta_conf_init(void);
void ta_conf_apply(const char *settings); /* for tests */
/* Free memory goes back to the kernel decay_ms after it became free (see purge.c). */
TA_HIDDEN extern uint64_t ta_decay_ms;
TA_HIDDEN extern uint32_t ta_run_threshold; /* run_threshold (alloc.c) */
TA_HIDDEN extern size_t ta_cold_live_max;   /* a cold class's live bytes that give it runs */
/* The largest request runs serve: TA_MID_MAX (the mid classes too) until the process has had
 * TA_FEW_ARENAS threads at once, TA_SMALL_MAX from then on and in the hardened build (small.c,
 * ta_run_limit_arenas; tests set it). */
TA_HIDDEN extern size_t ta_run_limit;
TA_HIDDEN void ta_run_limit_init(void);
TA_HIDDEN void ta_run_limit_arenas(uint32_t count);
TA_HIDDEN extern uint32_t ta_conf_span_min_kb; /* span_min_kb (span.c): 0, no spans */
TA_HIDDEN extern size_t ta_dirty_max; /* all arenas: beyond it, free memory goes back at once */
TA_HIDDEN extern size_t ta_huge_cache_limit; /* bytes of freed huge spans kept resident */
TA_HIDDEN extern bool ta_huge_cache_grows;   /* huge_cache_mb unset: more if more is live */
TA_HIDDEN extern bool ta_huge_pages;         /* huge_pages: THP where memory is dense */
TA_HIDDEN extern int ta_huge_fresh;          /* huge_fresh: -1 unset (the host decides), 0, 1 */
TA_HIDDEN extern bool ta_huge_batch;         /* huge_batch: drop_new's batched decommit */
TA_HIDDEN extern int ta_huge_halves;         /* huge_halves: -1 the kernel's mode, 0 off, 1 on */
TA_HIDDEN extern int ta_bg_setting;   /* background_thread: -1 default, 0 off, 1 on */
TA_HIDDEN extern int ta_conf_lazy_commit; /* lazy_commit: -1 the kernel's mode, 0 off, 1 on */
TA_HIDDEN extern bool ta_stats_on;    /* requested sizes are tracked */
TA_HIDDEN extern size_t ta_fast_limit;     /* TA_SMALL_MAX + 1, or 0 while statistics are on */
TA_HIDDEN extern bool ta_stats_from_start; /* on before the first block: requested sizes exact */
TA_HIDDEN int ta_stats_switch(int on, bool from_start); /* sets the three above */
TA_HIDDEN extern bool ta_conf_stats_print;
TA_HIDDEN extern int ta_conf_stats_format;
TA_HIDDEN extern int ta_conf_report_fd; /* stats_print's copy of stderr, or -1 */
TA_HIDDEN extern const char *ta_conf_stats_log;
TA_HIDDEN extern size_t ta_conf_stats_log_len;
TA_HIDDEN extern uint64_t ta_conf_stats_interval_ms;
TA_HIDDEN extern size_t ta_conf_page_size; /* page_kb (tests): a page larger than the kernel's */

/* ------------------------------------------------------------------ dirty.c */
/* The book of free resident memory, written by the layers that free memory, read by the
 * purgers above (see dirty.c). */
TA_HIDDEN extern ta_alone_count_t ta_dirty_total; /* Σ arena.dirty_bytes */
TA_HIDDEN extern ta_alone_count_t ta_dirty_held;  /* Σ arena.held: outside the budget */
TA_HIDDEN extern ta_alone_count_t ta_span_dirty;  /* free resident spans (span.c) */
TA_HIDDEN void ta_dirty_add_spans(intptr_t bytes);
TA_HIDDEN bool ta_spans_over_budget(void);
TA_HIDDEN extern _Atomic uint64_t ta_span_excess_after;
TA_HIDDEN void ta_span_after_fork(void);
/* Arenas ever made (arena.c counts them): as many as threads were ever alive at once, among
 * whom the budget is shared (medium.c's allowance for a chunk's top). */
TA_HIDDEN extern _Atomic uint32_t ta_arena_count;
TA_HIDDEN void ta_dirty_add(ta_arena_t *a, intptr_t bytes);
TA_HIDDEN bool ta_over_budget(void);
TA_HIDDEN void ta_purge_note(ta_arena_t *a, uint64_t since);
TA_HIDDEN uint64_t ta_owner_decay(void);
/* An arena's demand: pages it faulted in lately, and the most free memory it took at once
 * (dirty.c). ta_dirty_fresh, ta_dirty_drawdown and ta_dirty_hold under the arena's
 * slow-path lock; the rest reads relaxed atomics, or (owner_change) is the exit hook's or a
 * new owner's. */
TA_HIDDEN void ta_dirty_fresh(ta_arena_t *a, size_t bytes);
TA_HIDDEN void ta_dirty_drawdown(ta_arena_t *a, size_t taken);
TA_INLINE void ta_dirty_hole_freed(ta_arena_t *a, size_t bytes) {
  a->hole_rise = a->hole_rise > bytes ? a->hole_rise - bytes : 0;
}
TA_HIDDEN size_t ta_arena_demand(const ta_arena_t *a, uint64_t now);
TA_HIDDEN void ta_dirty_owner_change(ta_arena_t *a, bool keep);
TA_HIDDEN void ta_dirty_forget_demand(ta_arena_t *a);
TA_HIDDEN bool ta_arena_over_budget(const ta_arena_t *a, uint64_t now);
TA_HIDDEN void ta_dirty_hold(ta_arena_t *a, size_t demand);
TA_HIDDEN uint64_t ta_demand_until(const ta_arena_t *a, uint64_t now);
/* Four decay times, at most 2 s: beyond that the decay itself keeps the memory longer. */
TA_INLINE uint64_t ta_demand_window(void) {
  return 4 * ta_decay_ms < 2000 ? 4 * ta_decay_ms : 2000;
}
#define TA_SLOT_GIVEN_BACK UINT64_MAX /* run.empty_since of a retired slot decommitted (purge.c) */
TA_HIDDEN size_t ta_arena_share(void);    /* dirty.c: the holes' share */
TA_HIDDEN size_t ta_top_allowance(void); /* dirty.c: each medium top's allowance */
TA_HIDDEN extern _Atomic uint32_t ta_owner_scale_force; /* tests */
/* Notes work due at t in *due, if sooner than what is there: a running purger thread is
 * rung for it, a stopped one asked for when nothing was due (ta_bg_wanted). */
TA_HIDDEN void ta_purge_note_global(_Atomic uint64_t *due, uint64_t t);
/* When the purger visits owned arenas for medium blocks freed into them (their remote lists):
 * within the decay time, but no sooner than TA_MAIL_MIN_MS, so that with decay_ms:0 a
 * producer's frees do not ring it for a round each. */
#define TA_MAIL_MIN_MS 8
TA_INLINE uint64_t ta_mail_due(uint64_t now) {
  return now + (ta_decay_ms > TA_MAIL_MIN_MS ? ta_decay_ms : TA_MAIL_MIN_MS);
}
/* fork (dirty.c): a thread that holds another thread's arena lock, or owns what it took off a
 * shared list, does so between ta_fork_hold (false: a fork is under way, do not start) and
 * ta_fork_unhold; fork's prepare handler waits for those in flight, a bounded time. */
TA_HIDDEN bool ta_fork_hold(void);
TA_HIDDEN void ta_fork_unhold(void);
TA_HIDDEN bool ta_fork_pending(void);
TA_HIDDEN bool ta_fork_child_unreset(void); /* a fork child before its handler ran */
TA_HIDDEN void ta_fork_prepare(void);
TA_HIDDEN void ta_fork_parent(void);
TA_HIDDEN void ta_fork_reset_after_fork(void);
TA_HIDDEN void ta_note_orphan_work(void);
TA_HIDDEN extern _Atomic uint64_t ta_orphan_due; /* earliest due time of ownerless arenas */
TA_HIDDEN extern _Atomic uint64_t ta_arenas_due; /* earliest due time of owned arenas */
/* What the purger thread (background.c) is told, and says. */
enum { BG_NONE = 0, BG_STARTING = 1, BG_RUNNING = 2 };
TA_HIDDEN extern _Atomic int ta_bg_state, ta_bg_over;
TA_HIDDEN extern _Atomic uint64_t ta_bg_wakes_at; /* 0 awake; else when it wakes by itself */
TA_HIDDEN extern _Atomic uint32_t ta_bg_seq;
/* A note from none asked for the thread (ta_purge_note_global). Set and cleared
 * sequentially consistent: a request is never lost between a safe point's clearing, then its
 * look at the due times, and a note's setting of a due time, then its look at the request (a
 * store buffer would hold the clear while the note saw the request still set). Only a note
 * from none sets it, and only a safe point that finds it set clears it. */
TA_HIDDEN extern ta_alone_flag_t ta_bg_wanted;
TA_INLINE void ta_bg_request(void) {
  if (atomic_load_explicit(&ta_bg_wanted.v, memory_order_seq_cst) == 0)
    atomic_store_explicit(&ta_bg_wanted.v, 1, memory_order_seq_cst);
}
TA_HIDDEN void ta_bg_over_budget(void);
TA_HIDDEN void ta_bg_wake(uint64_t t); /* work due at t: rings a thread asleep past it */
bool ta_bg_running(void); /* whether the purger thread runs */

/* ------------------------------------------------------------------ chunk.c */
TA_HIDDEN ta_chunk_t *ta_chunk_alloc(ta_arena_t *a, uint8_t kind);
TA_HIDDEN void *ta_chunk_fresh(bool *from_brk, bool *pooled, size_t first, bool tail,
                               uint8_t *commit);
/* Lazy commit (chunk.c, "Commit charge"): a chunk's pages are committed in 64 KiB units from
 * its start, and its tail (the units from ta_commit_tail_unit(), which hold a medium chunk's
 * end marker and its top's footer) on its own; TA_COMMIT_ALL units is the whole chunk. */
#define TA_COMMIT_SHIFT 16
#define TA_COMMIT_UNIT ((size_t)1 << TA_COMMIT_SHIFT)
#define TA_COMMIT_ALL ((unsigned)(TA_CHUNK_SIZE >> TA_COMMIT_SHIFT))
#define TA_COMMIT_UNITS 0x7fu
#define TA_COMMIT_TAIL 0x80u
_Static_assert(TA_COMMIT_ALL <= TA_COMMIT_UNITS, "a chunk's units fit c->commit");
TA_INLINE unsigned ta_commit_tail_unit(void) {
  return (unsigned)((TA_MEDIUM_END - sizeof(size_t)) >> TA_COMMIT_SHIFT);
}
/* Whether bytes [from, to) of chunk c are committed, for a reader that does not own it (a
 * statistics walk, a check of a pointer that may be wild): what is committed stays so while
 * the chunk is mapped, so a stale answer is only too cautious. */
TA_INLINE bool ta_chunk_holds(const ta_chunk_t *c, size_t from, size_t to) {
  unsigned k = TA_LOAD(c->commit);
  if (to <= (size_t)(k & TA_COMMIT_UNITS) << TA_COMMIT_SHIFT) return true;
  return (k & TA_COMMIT_TAIL) && from >= (size_t)ta_commit_tail_unit() << TA_COMMIT_SHIFT;
}
/* The owner's: chunk c committed from its start up to `end` bytes at least (a load and a
 * compare when it is already); false if the kernel refuses. */
TA_HIDDEN bool ta_chunk_commit(ta_chunk_t *c, size_t end);
TA_HIDDEN void ta_chunk_commit_default(void);
/* Whether mappings are charged as they are made, not as they are touched, so that what is
 * mapped writable should follow use (lazy commit: chunk.c, "Commit charge"; huge.c). */
TA_HIDDEN bool ta_commit_lazy(void);
TA_HIDDEN void ta_chunk_release(ta_arena_t *a, ta_chunk_t *c);
/* Lists of arenas with something to give others (chunk.c): add a, in the first empty entry of
 * list[0..n) (its index + 1; 0: full); drop entry i if it still names a. */
TA_HIDDEN unsigned ta_arena_list_add(_Atomic(ta_arena_t *) *list, unsigned n, ta_arena_t *a);
TA_HIDDEN void ta_arena_list_drop(_Atomic(ta_arena_t *) *list, unsigned i, ta_arena_t *a);
TA_HIDDEN extern _Atomic uint64_t ta_chunks_taken_over; /* from other arenas (tests, stats) */
TA_HIDDEN void ta_map_set(uintptr_t addr, uint8_t kind);
TA_HIDDEN bool ta_map_init(void); /* ta_init: maps the granule map; false if it cannot */
/* Before the first entry for a new chunk or huge block at addr is set: the map's page for it
 * is writable (lazy commit maps the map read-only); false if the kernel refuses. */
TA_HIDDEN bool ta_map_ready(uintptr_t addr);
TA_HIDDEN void ta_pages_init(void); /* ta_init: ta_page_size and ta_hugepage_size */
/* The page ta_pages_init will choose (the kernel's, or page_kb's larger one), known before
 * the allocator starts once the settings are read (at load): for tests. */
TA_HIDDEN size_t ta_pages_wanted(void);
TA_HIDDEN bool ta_brk_shrink_top(ta_chunk_t *c);
/* The process-wide pool of break chunks given back whole (chunk.c). */
TA_HIDDEN int ta_chunk_pool_reserve(void); /* a slot's index, or -1: full */
TA_HIDDEN void ta_chunk_pool_unreserve(int slot);
TA_HIDDEN void ta_chunk_pool_put(int slot, void *c);
TA_HIDDEN size_t ta_chunk_pool_trim_brk(void);
TA_HIDDEN void ta_chunk_pool_after_fork(void);
TA_HIDDEN void ta_chunk_pool_each(void (*fn)(void *ctx, uintptr_t c), void *ctx);
/* Statistics' arrays of requested sizes, one per small chunk while statistics are on (stats.c
 * reads them): made and dropped here, as the chunk is. */
TA_HIDDEN uint16_t *ta_shadow_new(void);
TA_HIDDEN void ta_shadow_free(uint16_t *s);
/* Small chunks keep a pointer to their shadow array (usable - requested per block) beside
 * the header, in slot 0, which is never a run. */
TA_INLINE uint16_t *ta_shadow_get(const ta_chunk_t *c) {
  uint16_t *s;
  __builtin_memcpy(&s, (const char *)c + TA_SHADOW_OFFSET, sizeof s);
  return s;
}
TA_INLINE void ta_shadow_set(ta_chunk_t *c, uint16_t *s) {
  __builtin_memcpy((char *)c + TA_SHADOW_OFFSET, &s, sizeof s);
}
#define TA_SHADOW_RUN_ENTRIES 4096 /* 64 KiB / 16 B: the most blocks a run holds */
/* Granules the map covers; 0 before initialisation. An acquire, paired with ta_map_init's
 * release: a thread that sees the count sees the map's address. */
TA_INLINE size_t ta_map_granules(void) {
  return __atomic_load_n(&ta_keys.granules, __ATOMIC_ACQUIRE);
}
/* The fast paths' lookup: ta_map_covers(g), then ta_map_at(g) for granule g. The same
 * acquire, in two halves: x86-64 keeps loads in order, so there a plain load of the count is
 * an acquire once the compiler may not move the map's address above it (the signal fence, in
 * ta_map_at, after free's compare, into which the load then folds as the constant it replaced
 * did). ThreadSanitizer builds, which check every access, use the atomic load. */
#if defined(__x86_64__) && !defined(TA_TSAN)
#define TA_MAP_TSO 1
#else
#define TA_MAP_TSO 0
#endif
TA_INLINE bool ta_map_covers(uintptr_t g) {
  return g < (TA_MAP_TSO ? ta_keys.granules : ta_map_granules());
}
/* What granule g holds, once ta_map_covers(g) said yes. */
TA_INLINE uint8_t ta_map_at(uintptr_t g) {
  if (TA_MAP_TSO) atomic_signal_fence(memory_order_acquire);
  return atomic_load_explicit(&ta_keys.map[g], memory_order_relaxed);
}
/* Whether granule g holds small runs, once ta_map_covers(g) said yes: free's and the sized
 * frees' one use of the byte, a compare. Under TA_MAP_TSO a plain load, as the count's is (a
 * byte's load is atomic there, and the fence keeps it below the count's), which GCC folds
 * into the compare (`cmpb $1, (map, g)`: one instruction fewer); it never folds an atomic
 * load, even a relaxed one. Only here: a switch on a byte read plainly could be compiled to
 * two loads, and a store between them would send it past its jump table. A live block's byte
 * was written before the block was handed out; for any other pointer either value of a byte
 * being written is one the callers handle. */
TA_INLINE bool ta_map_small_at(uintptr_t g) {
  if (!TA_MAP_TSO) return ta_map_at(g) == TA_MAP_SMALL;
  atomic_signal_fence(memory_order_acquire);
  return ((const uint8_t *)ta_keys.map)[g] == TA_MAP_SMALL;
}
TA_INLINE uint8_t ta_map_get(uintptr_t addr) {
  uintptr_t g = addr >> TA_CHUNK_SHIFT;
  if (TA_UNLIKELY(!ta_map_covers(g))) return TA_MAP_NONE;
  return ta_map_at(g);
}
/* Whether block b's link word is one a free block can hold: it decodes to the end of a list,
 * or to a block of ours (in a small or medium chunk, 16-byte aligned). The verdict on a block
 * whose mark says "free" where no list shows it: another thread's (it cannot read the owner's
 * lists: alloc.c, free_to_owner), and the owner's on a block another thread holds in its chain
 * of remote frees put off (small.c, ta_small_marked_free). */
TA_INLINE bool ta_link_plausible(const void *b) {
  const ta_block_t *next = ta_block_next((const ta_block_t *)b);
  if (next == NULL) return true;
  uint8_t kind = ta_map_get((uintptr_t)next);
  return ((uintptr_t)next & (TA_ALIGNMENT - 1)) == 0 &&
         (kind == TA_MAP_SMALL || kind == TA_MAP_MEDIUM);
}
TA_INLINE ta_chunk_t *ta_chunk_of(const void *p) {
  return (ta_chunk_t *)((uintptr_t)p & ~(uintptr_t)TA_CHUNK_MASK);
}
/* Where the meta block of address u's run lies from its chunk's start: run meta blocks are
 * 128 bytes apart from the chunk's start, slot i's at chunk + 128 i. */
TA_INLINE uintptr_t ta_run_meta_off(uintptr_t u) {
  return (u >> (TA_RUN_SHIFT - TA_RUN_META_SHIFT)) & ((TA_RUNS_PER_CHUNK - 1) << TA_RUN_META_SHIFT);
}
/* ta_run_of((void *)u) for free's fast path, which has u's granule g (it must be
 * u >> TA_CHUNK_SHIFT) in a register already: the chunk's base is g shifted back, one
 * instruction where GCC, seeing that it equals u's mask, copies u and masks it (two). The
 * empty asm, which only says g may have changed in its register, hides that; it costs no
 * instruction with any compiler. */
TA_INLINE ta_run_t *ta_run_in(uintptr_t g, uintptr_t u) {
  __asm__("" : "+r"(g));
  return (ta_run_t *)((g << TA_CHUNK_SHIFT) | ta_run_meta_off(u));
}
TA_INLINE ta_run_t *ta_run_of(const void *p) {
  return (ta_run_t *)((uintptr_t)ta_chunk_of(p) | ta_run_meta_off((uintptr_t)p));
}

/* --used, true when it drops to 0 or below: on x86-64 one `subl $1, mem; jle`, which GCC
 * does not produce from the C below. */
TA_INLINE bool ta_dec_le_zero(int32_t *used) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 &&           \
    !defined(TA_TSAN) && !defined(__SANITIZE_ADDRESS__)
  __asm__ goto("subl $1, %0\n\tjle %l[reached]" : "+m"(*used) : : "cc" : reached);
  return false;
reached:
  return true;
#else
  int32_t left = *used - 1;
  TA_STORE(*used, left); /* statistics readers load it */
  return left <= 0;
#endif
}
TA_INLINE char *ta_run_base(const ta_run_t *r) {
  return (char *)((uintptr_t)r & ~(uintptr_t)TA_CHUNK_MASK) + ((size_t)r->slot << TA_RUN_SHIFT);
}

/* Cache colour. Every run starts on a 64 KiB boundary, and a class's list hands out its
 * lowest blocks first, so without a colour each thread's hot blocks of every class would sit
 * at the same offsets of 64 KiB: the period of an 8-way L2 of 512 KiB (1,024 sets of 64-byte
 * lines), and a multiple of every L1's. They would contend for a few sets while the others
 * idle. So the lists hand out a run's first page from its colour, on to the page's end, then
 * from its start; the other pages from their start, in address order. The colour is the
 * slot's line of the page, slot x 17 modulo the page's lines (17 is odd, so the 63 slots take
 * 63 different lines of a page of 64 lines or more), scaled to the page's blocks and rounded
 * up: for blocks of 64 bytes or less the first block that starts on that line (63 slots, 63
 * lines), for larger ones each block of the page as often as the next. run_carve threads the
 * first page so, and run_rethread keeps the order; the blocks themselves, `limit` and `accept`
 * are as without (small.c; docs/design.md, "Cache colour"). A class with fewer than two blocks
 * a page has none (0), as has the hardened build, which threads each page in an order it
 * draws. */
TA_INLINE uint32_t ta_run_page_blocks(const ta_run_t *r) {
  return (uint32_t)(((uint64_t)ta_page_size * r->recip) >> 32); /* ta_run_cap's way */
}
TA_INLINE uint32_t ta_run_colour(const ta_run_t *r) {
  uint32_t n = ta_run_page_blocks(r), lines = (uint32_t)(ta_page_size / 64);
  if (ta_secure || n < 2) return 0;
  uint32_t line = r->slot * 17u % lines, k = (line * n + lines - 1) / lines;
  return k < n ? k : 0; /* past the page's last block: the first */
}

/* Pops a block off a run's free list, or NULL: the heart of every small allocation. The
 * head must lie in the run's chunk: one test turns away both the empty list (NULL) and a
 * link forged after free; the slow path tells them apart. */
TA_INLINE ta_block_t *ta_run_pop(ta_run_t *r) {
  ta_block_t *b = r->free;
  if (TA_LIKELY(ta_same_chunk(b, r))) {
    ta_block_t *next = ta_block_next(b);
    r->free = next;
    /* The head first, then the block cleared, in that order (no instruction: the compiler's
     * alone): a fork that stops the thread between them leaves a leaked block with its mark,
     * never an unmarked one on the list (docs/design.md, "fork"). */
    atomic_signal_fence(memory_order_seq_cst);
    /* The next pop reads next's link word, which the program has long left (freed blocks
     * go cold): fetched now, that miss overlaps the program's work instead of stalling the
     * next malloc. A prefetch never faults, whatever the link decoded to. */
    __builtin_prefetch(next);
    b->link = 0; /* the encoded link would let the program work out the key */
    b->key = 0;  /* no longer "free" */
    TA_ADD_FAST(r->used, 1);
    return b;
  }
  return NULL;
}

/* Hardened build: the last 8 bytes of every carved small block hold a canary keyed by a
 * secret and the block's address; the usable size is 8 bytes less than the class. */
#define TA_CANARY_SIZE 8
TA_INLINE uint64_t ta_canary(const void *b) {
  return ((uintptr_t)b ^ ta_keys.mark ^ ta_secret) * 0x9e3779b97f4a7c15ull;
}
TA_INLINE uint64_t *ta_canary_at(void *b, uint32_t bsize) {
  return (uint64_t *)((char *)b + bsize - TA_CANARY_SIZE);
}

/* Hardened build: a cheap per-thread generator (xorshift), seeded from the secret. */
TA_HIDDEN uint64_t ta_secure_random(void);

/* ------------------------------------------------------------------ small.c */
TA_HIDDEN void ta_small_collapse(void); /* the dense half this thread found, made a huge page */
extern __thread uintptr_t ta_collapse_pending __attribute__((tls_model("initial-exec")));
TA_HIDDEN extern _Atomic uint64_t ta_collapse_spent_us, ta_collapse_first_us; /* the budget */
/* For the report: halves collapsed, refused, and the calls' time */
TA_HIDDEN extern _Atomic uint64_t ta_collapse_made, ta_collapse_refused, ta_collapse_call_us;
TA_HIDDEN void *ta_small_alloc_slow(ta_arena_t *a, unsigned cls, bool grow);
TA_HIDDEN void ta_small_free_slow(ta_arena_t *a, ta_run_t *r);
TA_HIDDEN void ta_small_free_local(ta_arena_t *a, ta_run_t *r, ta_block_t *b);
/* The owner puts block b, marked already, on its run r's list: the push free's fast path
 * (alloc.c) writes out in place, after its checks. */
TA_INLINE void ta_run_push(ta_arena_t *a, ta_run_t *r, ta_block_t *b) {
  b->link = ta_link_enc(r->free);
  atomic_signal_fence(memory_order_seq_cst); /* the link before the head: as ta_run_pop */
  r->free = b;
  if (ta_dec_le_zero(&r->used)) ta_small_free_slow(a, r);
}
/* Whether p is a block r handed out or threaded: in r's own slot (another slot of the chunk
 * may never have been committed, lazy commit), on a block boundary below limit. Inline: a
 * remote free checks it at the free and again when the owner takes the block in. */
TA_INLINE bool ta_small_valid(const ta_run_t *r, const void *p) {
  if (r->owner == NULL || ta_run_of(p) != r) return false;
  uint32_t off = (uint32_t)((uintptr_t)p & (TA_RUN_SIZE - 1));
  return (uint32_t)(off * TA_LOAD(r->recip)) < TA_LOAD(r->accept); /* ta_run_index */
}
TA_HIDDEN bool ta_small_on_free_list(const ta_run_t *r, const void *p);
TA_HIDDEN bool ta_small_marked_free(const ta_run_t *r, const void *p);
TA_HIDDEN bool ta_small_freed(ta_arena_t *a, ta_run_t *r, const void *p);
TA_HIDDEN void ta_small_retire_idle(ta_arena_t *a, bool owner);
/* Gives the emptied runs of slots other arenas keep back to their keepers, those whose lock
 * can be had now; of the others, those freed at `cut` or before give their pages back to the
 * kernel (returned: their bytes). *waiting: the bytes still resident; *oldest: the time the
 * next try is due a decay time after (the oldest resident one's, `now` for one given back;
 * 0: none waits). Under a's lock (purge.c). */
TA_HIDDEN size_t ta_small_lent_return(ta_arena_t *a, uint64_t now, uint64_t cut, size_t *waiting,
                                      uint64_t *oldest);
/* A fork child: the lists of lenders lose the arenas the fork left without a thread, and the
 * count of resident free slots any arena may take is `warm`, what the arenas that keep a
 * thread or may get one hold (arena.c adds it up: the zombies' slots are never lent). */
TA_HIDDEN void ta_small_after_fork(uint32_t warm);
/* Resident free slots that borrowers may look for (tests). */
TA_HIDDEN uint32_t ta_small_warm_total(void);
/* Free run slots of small chunk c left resident, n of them (+n) or no longer (-n): the
 * arena's counts that borrowers read (purge.c, after it gives slots back). */
TA_HIDDEN void ta_small_slots_note(ta_arena_t *a, int free, int warm);
TA_HIDDEN void ta_medium_release_empty(ta_arena_t *a);
/* The owner's alone (it rewrites runs' free lists): the whole free pages of its runs in use
 * go back; returns the bytes given back. */
TA_HIDDEN size_t ta_small_shrink(ta_arena_t *a);
/* The pages of the free blocks of a's mid runs past their first words (each block stays on
 * its list): returned, the bytes. Under a's lock, by any thread: the owner takes a mid block
 * off a list only in a light section or under the lock (alloc.c, mid_pop), and its frees push
 * onto the lists without it, which the walk allows for. */
TA_HIDDEN size_t ta_small_mid_release(ta_arena_t *a, uint64_t now);
/* The third word of a free mid block whose pages past its first went back (small.c); a mid
 * block handed out again has it cleared (alloc.c). */
TA_INLINE uintptr_t ta_mid_released(const void *b) { return ~ta_mark(b); }

/* ------------------------------------------------------------------ medium.c */
/* exact: the block reports `size` usable bytes, not what it holds (a small class's block). */
TA_HIDDEN void *ta_medium_alloc(ta_arena_t *a, size_t size, size_t align, bool exact);
/* The size of the block, header included, that ta_medium_alloc cuts for such a request when
 * the free block it is cut from leaves a rest that can stand alone. */
TA_HIDDEN size_t ta_medium_block_for(size_t size, size_t align, bool exact);
/* A block of `size` (alignment 16, not a small class's, one the cache may serve: below) from
 * the arena's cache of freed medium blocks, or NULL; in a light section, or under the lock. */
TA_HIDDEN void *ta_medium_cache_alloc(ta_arena_t *a, size_t size);
/* Whether a request of `size` (alignment 16) is one the cache may serve: past the small
 * classes, and its block (header included, rounded up to 16) below the last cached bin's end.
 * The callers test it before ta_medium_cache_alloc, which does not. */
#define TA_MCACHE_MOST_REQUEST (TA_MCACHE_END - TA_ALIGNMENT - sizeof(ta_mhdr_t))
TA_INLINE bool ta_medium_cache_may_serve(size_t size) {
  return size > TA_SMALL_MAX && size <= TA_MCACHE_MOST_REQUEST;
}
TA_HIDDEN void ta_medium_free_local(ta_arena_t *a, ta_mhdr_t *h);
/* The arena's cache of medium blocks its owner freed (medium.c, "The cache"); under the
 * arena's lock (ta_medium_cache_alloc takes from it). put: whether h went into the cache (else
 * the caller frees it); flush: every cached block freed into the heap. */
TA_HIDDEN extern uint32_t ta_mcache_max; /* its bytes per arena: TA_MCACHE_BYTES (tests: 0, none) */
TA_HIDDEN void ta_medium_arenas(uint32_t count); /* a quarter of it from TA_FEW_ARENAS on */
TA_HIDDEN bool ta_medium_cache_put(ta_arena_t *a, ta_mhdr_t *h);
/* The first put since the cache's last flush (it held nothing): the flush comes due a decay
 * time from now. */
TA_HIDDEN void ta_medium_cache_clock(ta_arena_t *a);
TA_HIDDEN void ta_medium_cache_flush(ta_arena_t *a);
/* A live block's size word says "in use" (not free, not cached). */
TA_INLINE bool ta_medium_live(size_t w) { return (w & (TA_M_INUSE | TA_M_CACHED)) == TA_M_INUSE; }
TA_HIDDEN ta_mhdr_t *ta_medium_hdr_checked(void *p, const char *op);
TA_HIDDEN bool ta_medium_freed(ta_arena_t *a, const void *p);
TA_HIDDEN size_t ta_medium_decommit(ta_mhdr_t *h);
/* The decay purge's medium part (purge.c holds the lock): see medium.c. */
TA_HIDDEN size_t ta_medium_purge(ta_arena_t *a, uint64_t now, bool all, uint64_t age, size_t share,
                                 size_t hold, bool *held, uint64_t *oldest);
TA_HIDDEN bool ta_medium_resize(ta_arena_t *a, ta_mhdr_t *h, size_t size);
/* A meta block's check word covers its address, its size, INUSE, and a small class's flag
 * and spare (TA_M_CLASS, TA_M_SPARE_SHIFT), and the cache's flag (TA_M_CACHED): a byte written past
 * the end of the block before it (an overflow into this header) is seen. PREV_FREE is left
 * out, since the owner flips it while another thread may be checking a live block. The size
 * enters multiplied by a secret odd key: with a plain XOR, one who overwrites the whole
 * header could change the size and fix the check word up by the same known difference. */
#define TA_M_CHECKED \
  (TA_M_SIZE_MASK | TA_M_INUSE | TA_M_CLASS | TA_M_CACHED | (~(size_t)0 << TA_M_SPARE_SHIFT))
TA_INLINE uintptr_t ta_medium_check(const ta_mhdr_t *h, size_t size_flags) {
  return (uintptr_t)h ^ ta_secret ^ ((size_flags & TA_M_CHECKED) * ta_keys.link);
}
TA_INLINE bool ta_medium_check_ok(const ta_mhdr_t *h) {
  return h->check == ta_medium_check(h, ta_mh_load(h));
}
/* The header of medium block p, checked: p on a block boundary where a block may start, in
 * pages committed (a wild pointer into pages not committed yet is refused before its header
 * is read: reading there would fault), with a valid check word; else `op` names p and the
 * process aborts. Inline for free's path; ta_medium_hdr_checked for the others. */
TA_INLINE ta_mhdr_t *ta_medium_hdr_at(void *p, const char *op) {
  uintptr_t u = (uintptr_t)p;
  ta_chunk_t *c = ta_chunk_of(p);
  size_t off = u - (uintptr_t)c;
  if ((u & (TA_ALIGNMENT - 1)) != 0 || off < TA_MEDIUM_HDR + sizeof(ta_mhdr_t) ||
      off >= TA_MEDIUM_END || !ta_chunk_holds(c, off - sizeof(ta_mhdr_t), off))
    ta_fatal(op, p);
  ta_mhdr_t *h = (ta_mhdr_t *)p - 1;
  if (!ta_medium_check_ok(h)) ta_fatal(op, p);
  return h;
}
/* The usable size of a live block whose size word is w: its size less the header and its
 * spare (see TA_M_SPARE_SHIFT; one larger than the block, which the check word makes
 * unlikely, counts as none). */
TA_INLINE size_t ta_medium_usable_of(size_t w) {
  size_t usable = (w & TA_M_SIZE_MASK) - sizeof(ta_mhdr_t), spare = w >> TA_M_SPARE_SHIFT;
  return spare < usable ? usable - spare : usable;
}
TA_INLINE size_t ta_medium_usable(const ta_mhdr_t *h) { return ta_medium_usable_of(ta_mh_load(h)); }

/* The cache's steps that malloc's and free's paths make inline (alloc.c, alloc_cached and
 * free_medium, in the owner's light section) and medium.c makes under the lock: see "The
 * cache" in medium.c. A meta block's words: its size word and the check word signing it. */
TA_INLINE void ta_mh_set(ta_mhdr_t *h, size_t size_flags) {
  ta_mh_store(h, size_flags); /* statistics readers walk the chunk by these words */
  h->check = ta_medium_check(h, size_flags);
}
/* Clears block h's first two data words, which a free block's links, a remote free's mark and
 * encoded link, or a free list's link may have held: no address or key of ours may reach the
 * program in a block handed out, nor outlive a merge inside a larger free block. */
TA_INLINE void ta_mh_wipe(ta_mhdr_t *h) {
  ((ta_block_t *)(h + 1))->link = 0;
  ((ta_block_t *)(h + 1))->key = 0;
}
/* The block after h, checked: an overflow out of h into its header is reported here. */
TA_INLINE ta_mhdr_t *ta_mh_next_checked(ta_mhdr_t *h) {
  ta_mhdr_t *n = (ta_mhdr_t *)((char *)h + (h->size_flags & TA_M_SIZE_MASK));
  if (TA_UNLIKELY(!ta_medium_check_ok(n))) ta_fatal("free(): corrupted heap after pointer", h + 1);
  return n;
}
/* The free block before h (h's PREV_FREE is set), checked through h's footer word: a
 * footer or header overwritten by the program is reported here, before a merge or a filing
 * that would trust it. */
TA_INLINE ta_mhdr_t *ta_mh_prev_checked(ta_mhdr_t *h) {
  size_t ps = *((size_t *)h - 1);
  ta_mhdr_t *p = (ta_mhdr_t *)((char *)h - ps);
  uintptr_t first = (uintptr_t)ta_chunk_of(h) + TA_MEDIUM_HDR;
  if (TA_UNLIKELY(ps < TA_MIN_MBLOCK || (ps & (TA_ALIGNMENT - 1)) || (uintptr_t)h - first < ps ||
                  !ta_medium_check_ok(p) || (p->size_flags & TA_M_INUSE) ||
                  (p->size_flags & TA_M_SIZE_MASK) != ps))
    ta_fatal("free(): corrupted heap before pointer", h + 1);
  return p;
}
/* The index of the cache's bin that takes live block h of the owner (size word w), or
 * TA_MCACHE_CLASSES when the cache refuses it: only a block of its bin's largest size
 * (ta_medium_block_for cuts it so), which fits every request of its bin; not a small class's,
 * nor in the hardened build (every free there really frees); a bin's slots and the cache's
 * bytes bounded. */
TA_INLINE unsigned ta_mcache_room(const ta_arena_t *a, size_t w) {
  size_t s = w & TA_M_SIZE_MASK;
  if (ta_secure || (w & TA_M_CLASS)) return TA_MCACHE_CLASSES;
  unsigned i = ta_mcache_top_index(s);
  if (i == TA_MCACHE_CLASSES || a->mcache_n[i] == TA_MCACHE_SLOTS ||
      a->mcache_bytes + s > TA_LOAD(ta_mcache_max))
    return TA_MCACHE_CLASSES;
  return i;
}
/* h (size word w, read in the section or under the lock) filed in the newest slot of bin i,
 * which has room: signed cached, its first two words wiped (a remote free's mark and link,
 * handed out again, would give keys away). The caller checked the next block's header first,
 * and the free block's before it where PREV_FREE is set (ta_mh_prev_checked: free_medium and
 * ta_medium_cache_put both do): a signal handler's call nested after the filing could
 * take the block and merge it with the free one before it, whose footer would then be
 * stale. */
TA_INLINE void ta_mcache_file(ta_arena_t *a, ta_mhdr_t *h, size_t w, unsigned i) {
  ta_mh_wipe(h);
  ta_mh_set(h, (w & ~(TA_M_WASTE_MASK << TA_M_WASTE_SHIFT)) | TA_M_CACHED);
  a->mcache[i][a->mcache_n[i]++] = h;
  TA_STORE(a->mcache_bytes, a->mcache_bytes + (uint32_t)(w & TA_M_SIZE_MASK)); /* read unlocked */
}
/* The owner's put of h (size word w) into bin i, which has room: the neighbours' headers
 * checked as a free checks them (an overflow is reported now), the next one's and, where
 * PREV_FREE is set, the free one's before it, both before the filing (above). free_medium's
 * way and ta_medium_cache_put's. */
TA_INLINE void ta_mcache_file_checked(ta_arena_t *a, ta_mhdr_t *h, size_t w, unsigned i) {
  (void)ta_mh_next_checked(h);
  if (w & TA_M_PREV_FREE) (void)ta_mh_prev_checked(h);
  ta_mcache_file(a, h, w, i);
}
/* Cached block h, just taken off its slot: a live block again, once its header is found whole
 * (signed, so its size is the one the put filed it by). */
TA_INLINE ta_mhdr_t *ta_mcache_checkout(ta_arena_t *a, ta_mhdr_t *h) {
  size_t w = ta_mh_load(h);
  if ((w & (TA_M_INUSE | TA_M_CACHED)) != (TA_M_INUSE | TA_M_CACHED) ||
      h->check != ta_medium_check(h, w))
    ta_fatal("malloc(): corrupted cached block", h + 1);
  /* The put cleared its first two words. A free mark there is another thread's free of it
   * that checked it while it was live and pushed it onto the remote list after the owner had
   * cached it: a double free, which must not leave the block both handed out and on the
   * list. Anything else there is the program's, written after its free. */
  ta_block_t *b = (ta_block_t *)(h + 1);
  if (b->key == ta_mark(b)) ta_fatal("free(): double free of pointer", b);
  TA_STORE(a->mcache_bytes, a->mcache_bytes - (uint32_t)(w & TA_M_SIZE_MASK));
  ta_mh_set(h, w & ~TA_M_CACHED);
  return h;
}
/* Bin i's newest cached block, out of the cache (there is one). */
TA_INLINE ta_mhdr_t *ta_mcache_take_newest(ta_arena_t *a, unsigned i) {
  return ta_mcache_checkout(a, a->mcache[i][--a->mcache_n[i]]);
}
/* The block for a request of `need` bytes (header included, rounded to 16; one the cache may
 * serve): the newest of its bin, else of the bin above, out of the cache; NULL if both are
 * empty. Every cached block fits every request of its bin (ta_mcache_room), so its size is
 * not read here (the checkout checks its header): the newest, whose lines are the likeliest
 * to be in the processor's cache still. */
TA_INLINE ta_mhdr_t *ta_mcache_get(ta_arena_t *a, size_t need) {
  unsigned i = ta_mcache_bin[need >> 10];
  if (!a->mcache_n[i] && (++i == TA_MCACHE_CLASSES || !a->mcache_n[i])) return NULL;
  return ta_mcache_take_newest(a, i);
}

/* ------------------------------------------------------------------ huge.c */
/* grows: for a realloc that grows a block, which keeps whole granules to grow into. */
TA_HIDDEN void *ta_huge_alloc(ta_arena_t *a, size_t size, size_t align, bool zero, bool grows);
TA_HIDDEN void ta_huge_free(ta_huge_t *h); /* the caller counts the free in its arena */
TA_HIDDEN ta_huge_t *ta_huge_hdr_checked(void *p, uint8_t kind, const char *op);
TA_HIDDEN void *ta_huge_realloc(ta_huge_t *h, size_t size);
#define TA_HUGE_CANARY 64 /* hardened build: canary bytes before a huge block's data */
TA_HIDDEN bool ta_huge_secure_arm(ta_huge_t *h, bool arm);
/* The request rounded to a page: the span's granule rounding beyond it is address space
 * kept for growth, not memory the block holds. */
TA_INLINE size_t ta_huge_usable(const ta_huge_t *h) {
  return ta_align_up(h->data_off + h->requested, ta_page_size) - h->data_off;
}
TA_HIDDEN extern _Atomic uint64_t ta_huge_due;
TA_HIDDEN void ta_huge_unmap_deferred(void);
TA_HIDDEN void ta_huge_recount_after_fork(void);
TA_HIDDEN size_t ta_huge_purge(uint64_t now, bool all);
/* What live blocks keep of larger spans (huge.c, excess_keep); signed, for tests. */
TA_HIDDEN intptr_t ta_huge_kept_excess(void);
TA_HIDDEN size_t ta_huge_excess_purge(uint64_t now, bool all, uint64_t *next); /* its part */
TA_HIDDEN bool ta_huge_excess_kept(const ta_huge_t *h);                        /* tests */
TA_HIDDEN void ta_huge_excess_hold(const ta_huge_t *h, bool hold); /* tests: a purge's hold */
/* After a refused mapping: unmaps the cache, or sees unmaps since `epoch` (ta_huge_epoch, read
 * before the refused call); whether to ask again. May sleep up to 100 ms for unmaps in flight
 * or put off by a statistics reader: called without any lock of the allocator's. */
TA_HIDDEN bool ta_huge_make_room(size_t need, uint64_t epoch);
TA_HIDDEN uint64_t ta_huge_epoch(void);
TA_HIDDEN extern _Atomic unsigned ta_huge_room_wait_ms; /* the wait's bound: 100 ms (tests) */
uint64_t ta_huge_room_sleeps(void);                     /* the wait's futex waits (tests) */
TA_HIDDEN extern _Atomic unsigned ta_huge_hold_unmap;   /* tests: 1 holds the next unmap (huge.c) */
size_t ta_huge_cached_bytes(void); /* for tests and statistics */
size_t ta_huge_cached_count(void);
size_t ta_huge_cache_sum(void); /* the slots' weights counted one by one (tests) */
size_t ta_huge_mapped(void);    /* address space of huge spans, live and cached (tests) */
size_t ta_huge_cache_room(void);               /* what the cache may hold now (tests) */
size_t ta_huge_hist_pages(const ta_huge_t *h); /* its residency history's reach (tests) */
unsigned ta_huge_hist_taken(void);             /* records of the histories taken (tests) */

/* ------------------------------------------------------------------ span.c */
/* Blocks over 8 KiB to 256 KiB as whole pages in process-wide span chunks (span.c): at most
 * 64 pages (and 1 MiB: with 16 KiB pages up to 1 MiB, with 64 KiB pages 256 KiB to 1 MiB). */
#define TA_SPAN_MAX_PAGES 64
typedef struct {
  _Atomic uint32_t info;  /* a span's first page: its pages | state << 16; else 0 */
  uint32_t word;          /* free: when it became free (ms, low 32 bits); live: the request */
  _Atomic uintptr_t next; /* free: the next span in its bin */
} ta_spage_t;
typedef struct ta_span_chunk {
  uintptr_t check; /* address ^ ta_secret; the granule map finds every span chunk */
  uint32_t first;  /* the first page after this table */
  uint8_t from_brk;
  uint8_t pad[64 - sizeof(uintptr_t) - sizeof(uint32_t) - 1];
  ta_spage_t page[TA_CHUNK_SIZE / TA_PAGE_MIN]; /* one per page (the first chunk_size/page) */
} ta_span_chunk_t;
TA_HIDDEN extern size_t ta_span_min, ta_span_max;
TA_HIDDEN extern uint32_t ta_span_threads; /* threads at once before spans serve (tests: 0) */
TA_HIDDEN extern _Atomic size_t ta_span_chunks; /* span chunks taken from the kernel */
TA_HIDDEN extern _Atomic uint64_t ta_span_due;
TA_HIDDEN void ta_span_init(void);
TA_HIDDEN void ta_span_arenas(uint32_t count);
/* Whether a span serves the request: ta_span_min is SIZE_MAX until the process has had
 * ta_span_threads arenas at once, and with spans off. A thread's first malloc asks before
 * it has an arena, while the first thread's initialisation may be writing the limits and the
 * page size: atomic loads (an alignment up to the smallest page needs no look at the page
 * size, so a constant one costs none). */
TA_INLINE bool ta_span_serves(size_t size, size_t align) {
  return size >= TA_LOAD(ta_span_min) && size <= TA_LOAD(ta_span_max) &&
         (align <= TA_PAGE_MIN || align <= TA_LOAD(ta_page_size));
}
TA_HIDDEN size_t ta_span_usable_for(size_t size);
TA_HIDDEN void *ta_span_alloc(size_t size, bool *zeroed);
TA_HIDDEN size_t ta_span_usable(const void *p, const char *op);
TA_HIDDEN void ta_span_free(void *p);
TA_HIDDEN void ta_span_shrink(void *p, size_t size);
TA_HIDDEN bool ta_span_kept_for(size_t usable, size_t size); /* a shrink may leave it so */
TA_HIDDEN void ta_span_set_requested(void *p, size_t requested);
TA_HIDDEN size_t ta_span_purge(uint64_t now, uint64_t age);
/* A bin head holding addr after head `old`: its tag one more (tests). */
TA_HIDDEN uintptr_t ta_span_head_next(uintptr_t addr, uintptr_t old);
TA_HIDDEN void ta_span_walk(void (*fn)(const void *p, size_t bytes, unsigned state, uint32_t word,
                                       void *arg),
                            ta_span_chunk_t *c, void *arg);
enum { TA_SPAN_LIVE = 1, TA_SPAN_DIRTY = 2, TA_SPAN_CLEAN = 3 };

/* ------------------------------------------------------------------ arena.c */
/* What differs between the libraries: the API layer (alloc.c), compiled into each of them,
 * passes it down. The replacement library takes chunks from the program break and runs the
 * purger thread unless told not to; the ta_ API library does neither. The hooks the system
 * calls are the API layer's too (they reach every layer): arena.c registers them. */
typedef struct ta_library {
  bool brk;                         /* chunks may come from the program break (chunk.c) */
  bool background;                  /* the purger thread runs by default (background.c) */
  void (*thread_exit)(void *arena); /* the exit hook of a thread that has an arena */
  void (*fork_prepare)(void);       /* pthread_atfork's handlers */
  void (*fork_parent)(void);
  void (*fork_child)(void);
} ta_library_t;
TA_HIDDEN extern const ta_library_t *const ta_library; /* alloc.c: its library's */
/* alloc.c: ta_page_size once the allocator has started (it starts it); 0 if it cannot. */
TA_HIDDEN size_t ta_page(void);
/* Gives the thread a real arena, or NULL. *borrowed: only for this call (thread has exited). */
TA_HIDDEN ta_arena_t *ta_arena_get_slow(const ta_library_t *lib, bool *borrowed);
/* This thread frees into arena a, which has no thread: without an arena of its own, and after
 * few such frees, its next claim tries a first (arena.c). */
TA_HIDDEN void ta_arena_want(ta_arena_t *a, unsigned n); /* n: blocks freed into a */
TA_HIDDEN void ta_atfork_register(const ta_library_t *lib);
TA_HIDDEN unsigned ta_arena_thread_exit(ta_arena_t *a, ta_arena_t *give_up[2]); /* exit hook */
TA_HIDDEN void ta_arena_fork_child(void);            /* from the child handler */
TA_HIDDEN bool ta_arena_try_claim(ta_arena_t *a);
TA_HIDDEN ta_arena_t *ta_arena_first(void);
TA_HIDDEN void ta_arena_release(ta_arena_t *a);
TA_HIDDEN void ta_arena_give_back(ta_arena_t *a);
TA_HIDDEN bool ta_arena_owner_hooked(const ta_arena_t *a);
TA_HIDDEN void ta_remote_push(ta_arena_t *owner, ta_block_t *b);
/* A small block freed by another thread, for its owner: put off into this thread's chain
 * (arena.c, "remote frees put off"), which goes onto the owner's lists whole. */
#define TA_DEFER_MAX 32 /* blocks a chain holds at most */
TA_HIDDEN void ta_remote_defer(ta_arena_t *owner, ta_block_t *b, uintptr_t mark);
/* This thread's chain, if it has one, onto its owner's lists now. */
TA_HIDDEN void ta_remote_flush(void);
TA_HIDDEN void ta_remote_suspect(ta_arena_t *owner, void *p);
TA_HIDDEN void ta_remote_collect_slow(ta_arena_t *a);
TA_HIDDEN unsigned ta_remote_take_all(ta_arena_t *a, ta_block_t *lists[TA_REMOTE_LISTS]);
/* An entry of a remote list, checked before anything is read from it: its kind (SMALL or
 * MEDIUM) if it is a block of a's, else TA_MAP_NONE. */
TA_HIDDEN uint8_t ta_remote_entry(ta_arena_t *a, ta_block_t *b);
TA_HIDDEN void ta_remote_collect_medium(ta_arena_t *a);
/* Whether blocks other threads freed wait on any of a's remote lists (`mo`: the order the
 * caller needs for each load). */
TA_INLINE bool ta_remote_waiting(ta_arena_t *a, memory_order mo) {
  uintptr_t any = 0;
  for (unsigned i = 0; i < TA_REMOTE_LISTS; i++)
    any |= (uintptr_t)atomic_load_explicit(&a->remote[i], mo);
  return any != 0;
}
/* The owner takes in what other threads left for it: the blocks they freed, and the frees
 * they suspected of being double frees. Loads of one cache line when there is none: every
 * list is read, as the push itself (a CAS) is what publishes a remote free — the verdicts on
 * a block whose mark says "free" (alloc.c) depend on seeing every push that has happened
 * (and, for a block a thread's chain still holds, pushed later, on its link: small.c,
 * ta_small_marked_free). */
TA_INLINE void ta_remote_collect(ta_arena_t *a) {
  if (ta_remote_waiting(a, memory_order_relaxed) ||
      atomic_load_explicit(&a->suspected, memory_order_relaxed) != 0)
    ta_remote_collect_slow(a);
}
TA_HIDDEN bool ta_init(const ta_library_t *lib); /* false: no memory for the map */
TA_HIDDEN extern _Atomic int ta_init_claimed; /* 1 while a thread initialises */
TA_HIDDEN extern bool ta_initialized;

/* The slow-path lock (see ta_arena_t.slow; its tag and wait are in os.c, as small.c and
 * medium.c take it). A thread knows it holds the lock when the
 * lock word is its own tag (ta_slow_mine), and then only counts. The owner waits for a purger,
 * which holds the lock for one purge and waits for nothing but the end of the owner's light section
 * (below), a bounded while, after which it lets go: no cycle of waits can form. The acquire keeps
 * the list changes after the lock word's store, the release keeps them before its clearing, so a
 * fork child that sees the word clear sees whole changes. */
extern __thread long ta_tl_tag __attribute__((tls_model("initial-exec")));
enum { TA_SLOW_SYNCED = 1 }; /* the low bit of the lock word; the tag, a long, is even */
TA_HIDDEN void ta_slow_wait(ta_arena_t *a);
TA_HIDDEN bool ta_light_sync(ta_arena_t *a);
/* Whether this thread holds a's lock: the word is its tag from the compare-and-swap that
 * takes it to the store that lets it go, with no step between where a signal handler's call
 * could find it held by nobody (and wait for itself forever), nor nested state to set. */
TA_INLINE bool ta_slow_mine(const ta_arena_t *a) {
  return (atomic_load_explicit(&a->slow, memory_order_relaxed) & ~(uintptr_t)TA_SLOW_SYNCED) ==
         (uintptr_t)&ta_tl_tag;
}
/* The lock alone, without waiting for the owner to leave a light section (below): for a
 * change of what no light section touches (a run slot lent or given back, an empty chunk
 * taken: small.c, chunk.c). A nested taking only counts: slow_nest is 0 whenever the lock
 * is free or taken once, so a handler's taking nested anywhere in the outer one's (even
 * between its compare-and-swap and its return, or in its leave before the store) adds one
 * and takes it off again. */
TA_INLINE bool ta_slow_try_enter_beside(ta_arena_t *a) {
  if (ta_slow_mine(a)) {
    a->slow_nest++;
    return true;
  }
  uintptr_t free_ = 0;
  return atomic_compare_exchange_strong_explicit(&a->slow, &free_, (uintptr_t)&ta_tl_tag,
                                                 memory_order_acquire, memory_order_relaxed);
}
TA_INLINE void ta_slow_leave(ta_arena_t *a);
TA_INLINE bool ta_slow_try_enter(ta_arena_t *a) {
  if (!ta_slow_try_enter_beside(a)) return false;
  /* Another thread than the one allowed light sections: it may be inside one. One that does
   * not leave it soon (a signal handler of its may be waiting for this very lock) makes the
   * lock busy: the caller tries again later or waits (ta_slow_wait). Nested in a taking
   * beside, the wait is made with the lock still held: only a signal handler's call does
   * that (malloc_trim from a handler), and the owner's section ends all the same. */
  if (TA_UNLIKELY(atomic_load_explicit(&a->light_on, memory_order_acquire)) &&
      !(atomic_load_explicit(&a->slow, memory_order_relaxed) & TA_SLOW_SYNCED) &&
      atomic_load_explicit(&a->light_owner, memory_order_relaxed) != &ta_tl_tag) {
    if (!ta_light_sync(a)) {
      ta_slow_leave(a);
      return false;
    }
    atomic_store_explicit(&a->slow, (uintptr_t)&ta_tl_tag | TA_SLOW_SYNCED, memory_order_relaxed);
  }
  return true;
}
TA_INLINE void ta_slow_enter(ta_arena_t *a) {
  if (TA_UNLIKELY(!ta_slow_try_enter(a))) ta_slow_wait(a);
}
TA_INLINE void ta_slow_leave(ta_arena_t *a) {
  if (a->slow_nest > 0) {
    a->slow_nest--;
    return;
  }
  atomic_store_explicit(&a->slow, 0, memory_order_release);
}
/* Held, or its owner inside a light section: what a fork child asks of its snapshot. */
TA_INLINE bool ta_slow_held(const ta_arena_t *a) {
  return atomic_load_explicit(&a->slow, memory_order_relaxed) != 0 ||
         atomic_load_explicit(&a->light, memory_order_relaxed) != 0;
}
/* Held by this very thread: a fork from a signal handler interrupted one of its calls (a
 * light section counts only with the lock free: else another thread holds it). */
TA_INLINE bool ta_slow_held_by_me(const ta_arena_t *a) {
  if (atomic_load_explicit(&a->slow, memory_order_relaxed) != 0) return ta_slow_mine(a);
  return atomic_load_explicit(&a->light, memory_order_relaxed) != 0 &&
         atomic_load_explicit(&a->light_owner, memory_order_relaxed) == &ta_tl_tag;
}

/* Light sections. The owner's free of a medium block into its cache, and its malloc from it,
 * are a few loads and stores: the lock's compare-and-swap cost more than the rest, as it
 * waits for every store the program made before the call to reach the cache (threads-32k: 9%
 * of its time at the two). So the owner marks itself inside with a plain store instead, and
 * goes in if the lock is free; another thread that takes the lock for what a section touches
 * (ta_slow_try_enter; not ta_slow_try_enter_beside) makes every thread of the process pass a
 * memory barrier (membarrier), after which it sees the mark if the owner went in, and waits
 * for the owner to leave (ta_light_sync, os.c). Either
 * the owner sees the lock taken, or the taker sees the mark: the barrier orders the owner's
 * store before its load of the lock word, which it would otherwise not. Never from a
 * thread sanitizer build (it cannot see the barrier) nor without the kernel's barrier
 * (ta_light_ok); an arena allows them (light_on) only under the lock, so that every taker
 * of the lock after that knows to wait. A light section takes no lock and waits for
 * nothing; the taker waits a bounded while, then lets the lock go (a signal handler's call
 * cut into the section may want it), so no cycle of waits forms. The depth lets such a call
 * nest in one. False: the caller takes the lock instead. */
TA_HIDDEN extern _Atomic bool ta_light_ok;
TA_INLINE bool ta_light_enter(ta_arena_t *a) {
#if defined(TA_TSAN)
  (void)a;
  return false;
#else
  if (!atomic_load_explicit(&a->light_on, memory_order_relaxed) ||
      atomic_load_explicit(&a->light_owner, memory_order_relaxed) != &ta_tl_tag ||
      !atomic_load_explicit(&ta_light_ok, memory_order_relaxed))
    return false;
  int d = atomic_load_explicit(&a->light, memory_order_relaxed);
  atomic_store_explicit(&a->light, d + 1, memory_order_relaxed);
  atomic_signal_fence(memory_order_seq_cst); /* the store before the load: see above */
  /* Free, and still allowed: a taker that found the barrier refused may have forbidden them
   * since the first look (ta_light_sync). */
  if (TA_LIKELY(atomic_load_explicit(&a->slow, memory_order_acquire) == 0 &&
                atomic_load_explicit(&a->light_on, memory_order_relaxed)))
    return true;
  atomic_store_explicit(&a->light, d, memory_order_release);
  return false;
#endif
}
TA_INLINE void ta_light_leave(ta_arena_t *a) {
  atomic_store_explicit(&a->light, atomic_load_explicit(&a->light, memory_order_relaxed) - 1,
                        memory_order_release);
}
/* Under the lock, by the thread that has the arena: its light sections may start. */
TA_INLINE void ta_light_allow(ta_arena_t *a) {
  if (!atomic_load_explicit(&ta_light_ok, memory_order_relaxed)) return;
  if (atomic_load_explicit(&a->light_on, memory_order_relaxed) &&
      atomic_load_explicit(&a->light_owner, memory_order_relaxed) == &ta_tl_tag)
    return;
  atomic_store_explicit(&a->light_owner, &ta_tl_tag, memory_order_relaxed);
  atomic_store_explicit(&a->light_on, true, memory_order_relaxed);
}
/* No light section of the arena from now on: by the thread that gives it up, which runs no
 * more, or that claims it, when none can run. The threads that take its lock need not wait
 * then. A release: one that sees it (acquire, ta_slow_try_enter) sees the last section's
 * changes. The lock is not needed: one that still sees them allowed waits for nothing. */
TA_INLINE void ta_light_forbid(ta_arena_t *a) {
  if (atomic_load_explicit(&a->light_on, memory_order_relaxed))
    atomic_store_explicit(&a->light_on, false, memory_order_release);
}

/* ------------------------------------------------------------------ purge.c */
/* Blocks freed into zombie arenas (never reused: see purge.c) and their usable bytes. */
TA_HIDDEN extern _Atomic uint64_t ta_zombie_frees, ta_zombie_bytes;
TA_HIDDEN void ta_maybe_purge(ta_arena_t *a);
/* How much ta_arena_purge gives back: what became free `age` ms ago (AGED); everything, now,
 * the free pages of runs in use included (ALL: the caller owns the arena's fast-path state too:
 * malloc_trim on its own arena, an ownerless arena); everything the slow-path lock guards,
 * now (LOCKED: malloc_trim on an arena another thread owns). */
enum { TA_PURGE_AGED = 0, TA_PURGE_ALL = 1, TA_PURGE_LOCKED = 2 };
TA_HIDDEN size_t ta_arena_purge(ta_arena_t *a, uint64_t now, unsigned mode, uint64_t age,
                                bool idle);
/* malloc_trim on an arena a live thread other than the caller owns (see TA_PURGE_LOCKED). */
TA_HIDDEN size_t ta_purge_owned_now(ta_arena_t *a, uint64_t now);
TA_HIDDEN void ta_purge_excess(ta_arena_t *a, uint64_t now);
TA_HIDDEN void ta_purge_spans_excess(uint64_t now);
/* An arena whose frees took all arenas over the budget while the purger thread was not
 * running (ta_dirty_add marks it) gives its own oldest excess back: whoever holds it calls
 * this once the lower layers have returned (alloc.c, ta_purge_orphans). */
TA_INLINE void ta_purge_if_over(ta_arena_t *a) {
  if (TA_UNLIKELY(atomic_load_explicit(&a->over_budget, memory_order_relaxed)) &&
      atomic_exchange_explicit(&a->over_budget, false, memory_order_relaxed)) {
    ta_purge_excess(a, ta_os_now_ms());
  }
}
/* Over the budget, the oldest excess goes first: what became free half a decay time ago,
 * then an eighth, then the rest (one arena's in ta_purge_excess, all arenas' in the
 * background thread). */
#define TA_EXCESS_STEPS 3
TA_INLINE uint64_t ta_excess_age(unsigned step) {
  return step == 0 ? ta_decay_ms / 2 : step == 1 ? ta_decay_ms / 8 : 0;
}
TA_HIDDEN size_t ta_purge_orphans(uint64_t now, bool all);

/* ------------------------------------------------------------------ background.c */
TA_HIDDEN void ta_bg_maybe_start(bool by_default); /* at a safe point (background.c says which) */
TA_HIDDEN bool ta_bg_due(void);                    /* whether the purger has anything due */
TA_HIDDEN void ta_bg_reset_after_fork(void);

uint64_t ta_bg_rounds(void);
/* Purger threads started, counted by the thread that started one before it goes on: a
 * thread that exits and starts it has counted it by the time pthread_join returns. */
uint64_t ta_bg_starts(void);
void ta_bg_enable(bool on);

/* ------------------------------------------------------------------ stats.c */
TA_HIDDEN extern _Atomic uint64_t ta_orphan_frees;
TA_HIDDEN void ta_stats_record(void *p, size_t requested);
TA_HIDDEN void ta_stats_log_tick(void); /* stats_log: a line when the interval has passed */
TA_HIDDEN void ta_stats_reset_after_fork(void);

/* ------------------------------------------------------------------ for tests and statistics */
void ta_chunk_use_brk(bool on); /* chunk.c: allow or forbid the program break */
void ta_chunk_lazy_commit(bool on);           /* chunk.c: lazy commit on or off for new chunks */
TA_HIDDEN void ta_chunk_brk_default(bool on); /* the library's choice, unless a test made one */
size_t ta_medium_walk(const ta_chunk_t *c, void (*fn)(const ta_mhdr_t *h, size_t word, void *arg),
                                void *arg);
void ta_arena_foreach(void (*fn)(ta_arena_t *a, void *arg), void *arg);

#endif /* TA_INTERNAL_H */
