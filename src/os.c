/*
 * os.c — the allocator's whole contract with the kernel: the program break, anonymous
 * mappings, giving pages back, time and randomness. Nothing else includes <sys/mman.h>.
 *
 * Contract:
 *   ta_os_brk_get()         the kernel's break ((void *)-1 on failure); ta_os_brk_set(from, to)
 *                           moves it, 0 on success. Callers hold the break lock (ta_brk_lock),
 *                           which guards the break and nothing else.
 *   ta_os_mmap(n)           n bytes, page aligned, zeroed, read-write; NULL on failure.
 *                           Never above 2^ta_os_addr_bits(), what the granule map covers.
 *   ta_os_addr_bits()       the width of the user address space the kernel hands out when
 *                           not asked for more: where the main thread's stack starts.
 *   ta_os_reserve(n)        zeroed memory for the allocator's tables, charged as touched.
 *   ta_os_page_size()       the kernel's page (AT_PAGESZ); ta_os_hugepage_size() its
 *                           transparent huge page (sysfs), both read once without allocating.
 *   ta_os_mmap_aligned(n,a) the same, aligned to a (a power of two >= page size).
 *   ta_os_munmap/decommit   0 on success. decommit drops the pages (they read back as zero).
 *   ta_os_decommit_batch(r,n)  decommit of n ranges in one call (process_madvise on the
 *                           process itself): 0 all dropped; -1 where the kernel cannot batch
 *                           (never asked again): nothing dropped; 1 where the call failed and
 *                           the ranges one by one did too for some: those may be resident.
 *   ta_os_reserve_aligned(n,a)  address space only: no access, nothing charged against the
 *                           commit limit, until ta_os_commit(p,n) makes part of it read-write
 *                           (charged then, until it is unmapped).
 *   ta_os_overcommit_never() whether the kernel refuses to overcommit (vm.overcommit_memory
 *                           is 2): every writable private byte mapped counts then (read once).
 *   ta_os_mremap(p,o,n,f)   resizes a mapping in place (f == NULL) or moves it to the fixed
 *                           address f; NULL on failure. ta_os_mremap_move lets the kernel
 *                           choose: in place if it can, elsewhere if not.
 *   ta_os_hugepage(p,n,on)  transparent huge pages wanted (on) or not on a range: a hint.
 *   ta_os_thp_off(p,n)      none on a range where the kernel would give them unasked; every
 *                           mapping made here is told so.
 *   ta_os_collapse(p,n)     the range made transparent huge pages now (MADV_COLLAPSE).
 *   ta_os_now_us()          the monotonic clock in microseconds (timing a call).
 *   ta_os_thp_mode()        the kernel's transparent-huge-page mode (read once).
 *   ta_os_key_create(k,d)   the thread-exit hook (a pthread key); 0 or an errno.
 *   ta_os_thread_gone(tid)  true when the kernel no longer knows thread tid of this process
 *                           (it has exited); false when it lives or when in doubt.
 *   ta_os_thread_start(fn)  a detached thread, every signal blocked (the purger).
 *   ta_os_signals_block(o)  every signal blocked for this thread, the mask before in *o;
 *                           ta_os_signals_restore(o) sets it again.
 *   ta_os_futex_wait/wake   sleep on a word with a time limit, through the system call (no
 *                           cancellation point: malloc must not be one); wake one sleeper,
 *                           or (wake_all) every one.
 *   ta_os_cpu()             the CPU the thread runs on, as a rank among those the process may
 *                           run on (below ta_os_ncpu()); a hint, 0 when unknown.
 *   ta_os_barrier_register() whether the kernel will make every thread of the process pass a
 *                           memory barrier on request (membarrier); ta_os_barrier() asks it.
 *   ta_os_host_reclaims()   whether the host takes back what the kernel leaves free (a balloon
 *                           with free page reporting); read once.
 * None of these allocate, print or take any lock but the break lock. errno is preserved.
 *
 * Also here, as every layer above waits on them: the break lock, and the wait of an
 * arena's slow-path lock (ta_slow_wait; the lock itself is inline, internal.h).
 *
 * Test hooks: ta_os_fail(mask, skip, count) makes the next `count` calls of the operations
 * in mask fail after `skip` more successes (used by test/unit to inject ENOMEM);
 * ta_os_calls(mask) counts the system calls made for the operations in mask (relaxed
 * increments, so that tests can assert how many a path makes); ta_os_thp_mode_force sets
 * the mode the allocator believes in; ta_os_cpu_force(rank) the CPU it believes it runs on
 * (-1: the real one again); ta_os_collapse_fake(r) makes collapses return r (0: done) without
 * the kernel, noting the range (ta_os_collapse_last), and -1 makes them real again;
 * ta_os_interrupt_claim(sig) raises sig in the next thread to claim an arena, right after its
 * claim (arena.c, ta_arena_get_slow), as a signal arriving there would.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#if defined(TA_TSAN)
#include <sanitizer/tsan_interface.h>
/* ThreadSanitizer does not see mremap take the pages away from the range it moves them
 * from: what threads did there would look, to it, unordered with what a thread does once
 * the kernel hands the range out again (mmap, or mremap growing a mapping into it). The
 * kernel orders the two; these annotations say so. */
static char range_handover;
#define HANDOVER_RELEASE() __tsan_release(&range_handover)
#define HANDOVER_ACQUIRE() __tsan_acquire(&range_handover)
#else
#define HANDOVER_RELEASE() ((void)0)
#define HANDOVER_ACQUIRE() ((void)0)
#endif

ta_alone_count_t ta_os_mapped_bytes;
ta_alone_count_t ta_os_returned_bytes;
_Atomic int ta_stats_readers;

static void count_mapped(intptr_t delta) {
  atomic_fetch_add_explicit(&ta_os_mapped_bytes.v, (size_t)delta, memory_order_relaxed);
}
static void count_returned(size_t n) {
  atomic_fetch_add_explicit(&ta_os_returned_bytes.v, n, memory_order_relaxed);
}

/* System calls made, per operation (bit i of the TA_OS_* mask counts in calls[i]). */
static _Atomic uint64_t calls[11]; /* up to TA_OS_BARRIER (bit 10) */

static void count_call(unsigned op) {
  atomic_fetch_add_explicit(&calls[__builtin_ctz(op)], 1, memory_order_relaxed);
}

uint64_t ta_os_calls(unsigned mask) {
  uint64_t n = 0;
  for (unsigned i = 0; i < sizeof calls / sizeof calls[0]; i++)
    if (mask & (1u << i)) n += atomic_load_explicit(&calls[i], memory_order_relaxed);
  return n;
}

static _Atomic unsigned fail_mask;
static _Atomic unsigned fail_skip;
static _Atomic unsigned fail_count;

void ta_os_fail(unsigned mask, unsigned skip, unsigned count) {
  atomic_store(&fail_skip, skip);
  atomic_store(&fail_count, count);
  atomic_store(&fail_mask, count ? mask : 0);
}

/* True when a test asked this operation to fail now. One relaxed load when no test runs. */
static bool should_fail(unsigned op) {
  if (TA_LIKELY((atomic_load_explicit(&fail_mask, memory_order_relaxed) & op) == 0)) return false;
  unsigned skip = atomic_load(&fail_skip);
  while (skip > 0) {
    if (atomic_compare_exchange_weak(&fail_skip, &skip, skip - 1)) return false;
  }
  unsigned n = atomic_load(&fail_count);
  while (n > 0) {
    if (atomic_compare_exchange_weak(&fail_count, &n, n - 1)) {
      if (n == 1) atomic_store(&fail_mask, 0);
      return true;
    }
  }
  return false;
}

/* The kernel's break, read with the system call itself: glibc's sbrk(0) answers from a
 * copy that a fork can leave stale (a fork between another thread's brk system call and
 * its update of that copy gives the child the new break and the old copy). */
void *ta_os_brk_get(void) {
  if (should_fail(TA_OS_SBRK)) return (void *)-1;
  count_call(TA_OS_SBRK);
  return (void *)syscall(SYS_brk, 0);
}

/* Moves the break to `to` with glibc's brk(), which keeps glibc's copy in step for any
 * other user of sbrk. 0 on success. */
int ta_os_brk_set(void *from, void *to) {
  if (should_fail(TA_OS_SBRK)) return -1;
  count_call(TA_OS_SBRK);
  int saved = errno;
  int r = brk(to);
  errno = saved;
  if (r == 0) {
    intptr_t delta = (char *)to - (char *)from;
    count_mapped(delta);
    if (delta < 0) count_returned((size_t)-delta);
  }
  return r;
}

/* Where the kernel gives transparent huge pages to every mapping (`always`), the first touch
 * of any 2 MiB of one fills all of it: a thread's first small block committed 2 MiB of its
 * chunk, its medium chunk 4 (its header's and its end marker's), the granule map 2 MiB for
 * each place written in it (200 threads with a block of 64 B, 2 KiB and 300 KB each: 6,156
 * KiB a thread, glibc 307). So every mapping made here, and each chunk the break gives
 * (ta_os_thp_off), is told not to have them, one call a mapping; what is dense asks for
 * them itself (huge blocks, dense halves of small chunks: small.c, `huge_halves`, by default
 * under `always`). Nothing where the kernel gives
 * them on advice only, or never. */
void ta_os_thp_off(void *p, size_t size) {
#ifdef MADV_NOHUGEPAGE
  /* Not counted with the other advice, nor made to fail by the tests' hooks: it comes with
   * every mapping under `always` alone, where the tests' counts of calls would differ. */
  if (ta_os_thp_mode() != TA_THP_ALWAYS) return;
  int saved = errno;
  (void)madvise(p, size, MADV_NOHUGEPAGE);
  errno = saved;
#else
  (void)p;
  (void)size;
#endif
}

/* n bytes mapped with protection `prot` (read-write, or none: a reservation). */
static void *map_raw(size_t size, int prot) {
  if (should_fail(TA_OS_MMAP)) return NULL;
  count_call(TA_OS_MMAP);
  int saved = errno;
  void *p = mmap(NULL, size, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  errno = saved;
  if (p == MAP_FAILED) return NULL;
  if ((uintptr_t)p + size > ((uintptr_t)1 << ta_os_addr_bits())) {
    /* Beyond what the granule map covers (the kernel goes there only when a program asks
     * with an address hint, for 5-level paging or arm64's 52 bits): not usable. */
    count_call(TA_OS_MUNMAP);
    munmap(p, size);
    errno = saved;
    return NULL;
  }
  count_mapped((intptr_t)size);
  HANDOVER_ACQUIRE();
  return p;
}

/* The same, told to have no huge pages where the kernel would give them to it unasked. */
static void *map_prot(size_t size, int prot) {
  void *p = map_raw(size, prot);
  if (p != NULL) ta_os_thp_off(p, size);
  return p;
}

void *ta_os_mmap(size_t size) { return map_prot(size, PROT_READ | PROT_WRITE); }

/* The kernel hands out addresses above its default window (2^47 on x86-64, 2^48 on arm64,
 * less with fewer translation levels) only to a program that asks with a hint beyond it, and
 * puts the main thread's stack at the top of that window. So the width is the bit length of
 * an address in that stack: AT_EXECFN's string lies there (getauxval does not allocate), and
 * does wherever this runs first. Clamped to [TA_ADDR_BITS_MIN, TA_ADDR_BITS_MAX]: the floor
 * leaves room should a loader or an emulator put that stack lower than its mappings. */
static _Atomic unsigned addr_bits;

unsigned ta_os_addr_bits(void) {
  unsigned bits = atomic_load_explicit(&addr_bits, memory_order_relaxed);
  if (TA_LIKELY(bits != 0)) return bits;
  int saved = errno;
  uintptr_t top = (uintptr_t)getauxval(AT_EXECFN);
  if (top == 0) top = (uintptr_t)getauxval(AT_RANDOM);
  if (top == 0) top = (uintptr_t)&bits;
  errno = saved;
  bits = 64u - (unsigned)__builtin_clzll((unsigned long long)top | 1);
  if (bits < TA_ADDR_BITS_MIN) bits = TA_ADDR_BITS_MIN;
  if (bits > TA_ADDR_BITS_MAX) bits = TA_ADDR_BITS_MAX;
  atomic_store_explicit(&addr_bits, bits, memory_order_relaxed);
  return bits;
}

/* The kernel's page: AT_PAGESZ from the auxiliary vector (getauxval does not allocate). */
static _Atomic size_t page_size;

size_t ta_os_page_size(void) {
  size_t p = atomic_load_explicit(&page_size, memory_order_relaxed);
  if (TA_LIKELY(p != 0)) return p;
  int saved = errno;
  p = (size_t)getauxval(AT_PAGESZ);
  errno = saved;
  if (p < TA_PAGE_MIN || !ta_is_pow2(p)) p = TA_PAGE_MIN;
  atomic_store_explicit(&page_size, p, memory_order_relaxed);
  return p;
}

/* Reads up to n - 1 bytes of a small kernel file into buf (terminated); the length, or -1.
 * Raw system calls: the library's open and read are cancellation points (and may be
 * wrapped by another preloaded library), and these reads happen in malloc: at start-up and
 * on slow paths. errno is left as it was. */
static long read_kernel_file(const char *path, char *buf, size_t n) {
  int saved = errno;
  long fd = syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
  long got = -1;
  if (fd >= 0) {
    got = syscall(SYS_read, (int)fd, buf, n - 1);
    syscall(SYS_close, (int)fd);
  }
  errno = saved;
  if (got < 0) return -1;
  buf[got] = 0;
  return got;
}

/* The transparent huge page: /sys/kernel/mm/transparent_hugepage/hpage_pmd_size, read with
 * plain system calls into a buffer on the stack. Without it, what one page of page table
 * maps: a page of 8-byte entries, each mapping a page (2 MiB for 4 KiB pages, 32 MiB for 16
 * KiB, 512 MiB for 64 KiB). */
static _Atomic size_t hugepage_size;

size_t ta_os_hugepage_size(void) {
  size_t h = atomic_load_explicit(&hugepage_size, memory_order_relaxed);
  if (TA_LIKELY(h != 0)) return h;
  size_t page = ta_os_page_size();
  char buf[32];
  long n = read_kernel_file("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", buf, sizeof buf);
  for (long i = 0; i < n && buf[i] >= '0' && buf[i] <= '9' && h < ((size_t)1 << 40); i++)
    h = h * 10 + (size_t)(buf[i] - '0');
  if (h <= page || !ta_is_pow2(h)) h = page / 8 * page;
  atomic_store_explicit(&hugepage_size, h, memory_order_relaxed);
  return h;
}

/* Memory for the allocator's own tables (the granule map): touched pages only are charged
 * (MAP_NORESERVE, which a kernel that never overcommits ignores: there a table mapped
 * read-only, whose pages the caller makes writable with ta_os_commit as it needs them, is
 * charged for those alone), and it is not counted among the mapped bytes, which are the
 * heap's. */
void *ta_os_reserve(size_t size, bool writable) {
  if (should_fail(TA_OS_MMAP)) return NULL;
  count_call(TA_OS_MMAP);
  int saved = errno;
  void *p = mmap(NULL, size, writable ? PROT_READ | PROT_WRITE : PROT_READ,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  errno = saved;
  if (p == MAP_FAILED) return NULL;
  ta_os_thp_off(p, size);
  return p;
}

/* Unmaps part of a mapping just made (alignment trimming): not memory given back. */
void ta_os_trim(void *p, size_t size) {
  if (size == 0) return;
  count_call(TA_OS_MUNMAP);
  int saved = errno;
  munmap(p, size);
  errno = saved;
  count_mapped(-(intptr_t)size);
}
#define trim ta_os_trim

/* Which pages of [p, p + size) are in memory: vec[i] & 1 for page i, in the kernel's pages
 * (ta_os_page_size). 0 on success. */
int ta_os_mincore(const void *p, size_t size, unsigned char *vec) {
  count_call(TA_OS_MINCORE);
  int saved = errno;
  int r = mincore((void *)p, size, vec);
  errno = saved;
  return r;
}

/* Bytes in memory of the pages that hold [p, p + size), page by page, without allocating (0
 * if unknown). mincore refuses an address that is not page-aligned: the range starts at the
 * page that holds p, so that a block's pointer is answered, not refused as 0. */
size_t ta_os_resident(const void *p, size_t size) {
  unsigned char vec[1024];
  size_t total = 0, page = ta_os_page_size(); /* mincore's unit: the kernel's page */
  size_t lead = (uintptr_t)p & (page - 1);
  const char *c = (const char *)p - lead;
  size += lead;
  int saved = errno;
  while (size > 0) {
    size_t part = size < sizeof vec * page ? size : sizeof vec * page;
    size_t pages = (part + page - 1) / page;
    count_call(TA_OS_MINCORE);
    if (mincore((void *)c, part, vec) == 0)
      for (size_t i = 0; i < pages; i++) total += (vec[i] & 1) ? page : 0;
    c += part;
    size -= part;
  }
  errno = saved;
  return total;
}

static void *map_aligned(size_t size, size_t align, int prot) {
  if (align <= ta_os_page_size()) return map_prot(size, prot);
  if (size > SIZE_MAX - align) return NULL;
  /* The kernel places mappings top-down, next to the previous one: when sizes are
   * multiples of the alignment, the plain call is usually aligned already (one syscall). */
  char *p = map_raw(size, prot);
  if (p == NULL) return NULL;
  if (((uintptr_t)p & (align - 1)) == 0) {
    ta_os_thp_off(p, size);
    return p;
  }
  int saved = errno;
  trim(p, size);
  p = map_raw(size + align, prot);
  if (p == NULL) return NULL;
  uintptr_t start = (uintptr_t)p;
  uintptr_t aligned = ta_align_up(start, align);
  size_t lead = aligned - start;
  trim(p, lead);
  trim((char *)aligned + size, align - lead);
  errno = saved;
  ta_os_thp_off((void *)aligned, size);
  return (void *)aligned;
}

void *ta_os_mmap_aligned(size_t size, size_t align) {
  return map_aligned(size, align, PROT_READ | PROT_WRITE);
}

/* Address space alone: no page may be touched, and none counts against the commit limit
 * (a mapping that is not writable is not charged), until ta_os_commit. */
void *ta_os_reserve_aligned(size_t size, size_t align) {
  return map_aligned(size, align, PROT_NONE);
}

/* Part of a reservation made usable: read-write, charged against the commit limit (which
 * may refuse: ENOMEM under vm.overcommit_memory=2). 0 on success. */
int ta_os_commit(void *p, size_t size) {
  if (should_fail(TA_OS_COMMIT)) return -1;
  count_call(TA_OS_COMMIT);
  int saved = errno;
  int r = mprotect(p, size, PROT_READ | PROT_WRITE);
  errno = saved;
  return r;
}

/* Whether the kernel refuses to overcommit: /proc/sys/vm/overcommit_memory reads 2. Then
 * every writable private mapping is charged in full when it is made, touched or not, and a
 * process that maps more than the commit limit allows is refused memory it never uses.
 * Read once, with plain system calls (no allocation). */
static _Atomic int overcommit_never; /* 0: not read yet, 1: it overcommits, 2: it never does */

bool ta_os_overcommit_never(void) {
  int v = atomic_load_explicit(&overcommit_never, memory_order_relaxed);
  if (TA_LIKELY(v != 0)) return v == 2;
  char buf[16];
  long n = read_kernel_file("/proc/sys/vm/overcommit_memory", buf, sizeof buf);
  v = n > 0 && buf[0] == '2' ? 2 : 1;
  atomic_store_explicit(&overcommit_never, v, memory_order_relaxed);
  return v == 2;
}

int ta_os_munmap(void *p, size_t size) {
  if (should_fail(TA_OS_MUNMAP)) return -1;
  count_call(TA_OS_MUNMAP);
  int saved = errno;
  int r = munmap(p, size);
  errno = saved;
  if (r == 0) {
    count_mapped(-(intptr_t)size);
    count_returned(size);
  }
  return r;
}

int ta_os_decommit(void *p, size_t size) {
  if (should_fail(TA_OS_MADVISE)) return -1;
  count_call(TA_OS_MADVISE);
  int saved = errno;
  int r = madvise(p, size, MADV_DONTNEED);
  errno = saved;
  if (r == 0) count_returned(size);
  return r;
}

/* process_madvise(2) with any advice on the calling process came with Linux 6.13, the
 * sentinel that names the calling thread (so its process's memory) without a descriptor with
 * 6.15: either missing, or a filter that refuses the call with an error (installed before or
 * after the first batch), answers with ENOSYS, EBADF or EPERM (EINVAL too, on the first
 * batch: later it may be an mlocked range), and no batch is tried again. (A filter that kills
 * the process instead does so: the setting huge_batch:false keeps the call from being made.)
 * A batch that fails otherwise, or drops only part, is dropped range by range. */
#ifndef PIDFD_SELF_THREAD
#define PIDFD_SELF_THREAD -10000 /* the calling thread: its process's memory is ours */
#endif
static _Atomic int batch_state; /* 0 not tried, 1 works, -1 refused */

int ta_os_decommit_batch(const ta_os_range_t *r, int n) {
  if (n <= 0) return 0;
  if (should_fail(TA_OS_MADVISE)) return -1;
#ifdef SYS_process_madvise
  if (n > TA_OS_BATCH_MAX || atomic_load_explicit(&batch_state, memory_order_relaxed) < 0)
    return -1;
  struct iovec v[TA_OS_BATCH_MAX];
  size_t total = 0;
  for (int i = 0; i < n; i++) {
    v[i].iov_base = r[i].p;
    v[i].iov_len = r[i].size;
    total += r[i].size;
  }
  count_call(TA_OS_MADVISE);
  int saved = errno;
  long done = syscall(SYS_process_madvise, PIDFD_SELF_THREAD, v, (size_t)n, MADV_DONTNEED, 0u);
  if (done < 0 &&
      (errno == ENOSYS || errno == EBADF || errno == EPERM ||
       (errno == EINVAL && atomic_load_explicit(&batch_state, memory_order_relaxed) == 0))) {
    atomic_store_explicit(&batch_state, -1, memory_order_relaxed); /* not here: never again */
    errno = saved;
    return -1;
  }
  if (done == (long)total) {
    atomic_store_explicit(&batch_state, 1, memory_order_relaxed);
    count_returned(total);
    errno = saved;
    return 0;
  }
  int ret = 0; /* failed (ENOMEM copying the ranges, say), or dropped only part: one by one */
  for (int i = 0; i < n; i++) {
    count_call(TA_OS_MADVISE);
    if (madvise(r[i].p, r[i].size, MADV_DONTNEED) == 0)
      count_returned(r[i].size);
    else
      ret = 1;
  }
  errno = saved;
  return ret;
#else
  (void)r;
  return -1;
#endif
}

int ta_os_protect(void *p, size_t size, bool access) {
  int saved = errno;
  int r = mprotect(p, size, access ? PROT_READ | PROT_WRITE : PROT_NONE);
  errno = saved;
  return r;
}

void *ta_os_mremap(void *p, size_t old, size_t size, void *fixed) {
  if (should_fail(TA_OS_MREMAP)) return NULL;
  count_call(TA_OS_MREMAP);
  int saved = errno;
  HANDOVER_RELEASE(); /* before: the range it may leave is someone else's at once */
  void *r = fixed ? mremap(p, old, size, MREMAP_MAYMOVE | MREMAP_FIXED, fixed)
                  : mremap(p, old, size, 0);
  errno = saved;
  if (r == MAP_FAILED) return NULL;
  /* A move onto `fixed` replaces a mapping of `size` the caller made there. */
  count_mapped((intptr_t)size - (intptr_t)old - (fixed ? (intptr_t)size : 0));
  HANDOVER_ACQUIRE();
  return r;
}

/* Resizes a mapping where the kernel can: in place, or moved to an address it chooses (its
 * alignment is the caller's to check). NULL on failure, the mapping unchanged. */
void *ta_os_mremap_move(void *p, size_t old, size_t size) {
  if (should_fail(TA_OS_MREMAP)) return NULL;
  count_call(TA_OS_MREMAP);
  int saved = errno;
  HANDOVER_RELEASE();
  void *r = mremap(p, old, size, MREMAP_MAYMOVE);
  errno = saved;
  if (r == MAP_FAILED) return NULL;
  count_mapped((intptr_t)size - (intptr_t)old);
  HANDOVER_ACQUIRE();
  return r;
}

/* Transparent huge pages (ta_os_hugepage_size: 2 MiB on x86-64) wanted, or not, on a range: with them a fault
 * fills 2 MiB at once, so they are for memory that is written through. A hint: failure
 * changes nothing but the page size. 0 on success. The advice covers whole mappings only:
 * advising part of one would split it in two, and mremap works on one. */
int ta_os_hugepage(void *p, size_t size, bool on) {
#if defined(MADV_HUGEPAGE) && defined(MADV_NOHUGEPAGE)
  if (should_fail(TA_OS_MADVISE)) return -1;
  count_call(TA_OS_MADVISE);
  int saved = errno;
  int r = madvise(p, size, on ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  errno = saved;
  return r;
#else
  (void)p;
  (void)size;
  (void)on;
  return -1;
#endif
}

/* Makes the range's pages one transparent huge page each now, copying what is there into
 * them (MADV_COLLAPSE, Linux 6.1): for memory known to be dense already, where advice would
 * act only on pages not yet touched. The kernel fills the pages never touched with zeros.
 * 0 on success, else the errno (EINVAL: no such advice, or huge pages disabled for the
 * process; EAGAIN, ENOMEM: none to be had now). A hint: a failure changes nothing. */
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
static _Atomic int collapse_fake = -1;
static void *_Atomic collapse_last_p;
static _Atomic size_t collapse_last_size;
void ta_os_collapse_fake(int result) { atomic_store(&collapse_fake, result); }
void ta_os_collapse_last(void **p, size_t *size) {
  *p = atomic_load(&collapse_last_p);
  *size = atomic_load(&collapse_last_size);
}

int ta_os_collapse(void *p, size_t size) {
  if (should_fail(TA_OS_COLLAPSE)) return EAGAIN;
  count_call(TA_OS_COLLAPSE);
  int fake = atomic_load_explicit(&collapse_fake, memory_order_relaxed);
  if (fake >= 0) {
    atomic_store(&collapse_last_p, p);
    atomic_store(&collapse_last_size, size);
    return fake;
  }
  int saved = errno;
  int r = madvise(p, size, MADV_COLLAPSE) == 0 ? 0 : errno;
  errno = saved;
  return r;
}

int ta_os_key_create(pthread_key_t *key, void (*destructor)(void *)) {
  if (should_fail(TA_OS_KEY)) return EAGAIN;
  return pthread_key_create(key, destructor);
}

uint32_t ta_os_gettid(void) { return (uint32_t)syscall(SYS_gettid); }
uint32_t ta_os_getpid(void) { return (uint32_t)syscall(SYS_getpid); }

/* Signal 0 checks that the thread exists without sending anything. Only ESRCH means gone:
 * a thread that is still exiting, or a denied call, counts as alive. A new thread of this
 * process that was given the same id also counts as alive, so the answer errs on the safe
 * side; a thread of another process never matches (tgkill names our thread group). */
bool ta_os_thread_gone(uint32_t tid) {
  int saved = errno;
  bool gone = syscall(SYS_tgkill, (pid_t)ta_os_getpid(), (pid_t)tid, 0) == -1 && errno == ESRCH;
  errno = saved;
  return gone;
}

/* The kernel's transparent-huge-page mode, from the bracketed word of
 * /sys/kernel/mm/transparent_hugepage/enabled ("always [madvise] never"), read once. Read
 * with plain system calls: nothing here allocates. Unknown (no such file): never. */
static _Atomic int thp_mode = -1;

int ta_os_thp_mode(void) {
  int m = atomic_load_explicit(&thp_mode, memory_order_relaxed);
  if (TA_LIKELY(m >= 0)) return m;
  m = TA_THP_NEVER;
  char buf[128];
  if (read_kernel_file("/sys/kernel/mm/transparent_hugepage/enabled", buf, sizeof buf) > 0)
    for (char *c = buf; *c; c++) {
      if (*c != '[') continue;
      if (c[1] == 'a') m = TA_THP_ALWAYS;
      else if (c[1] == 'm') m = TA_THP_MADVISE;
      break;
    }
  atomic_store_explicit(&thp_mode, m, memory_order_relaxed);
  return m;
}

void ta_os_thp_mode_force(int mode) { atomic_store(&thp_mode, mode); }

/* Whether the host takes back the memory this kernel leaves free: a virtio memory balloon that
 * took up free page reporting (feature bit 5 of its device, VIRTIO_BALLOON_F_REPORTING). The
 * kernel then reports free blocks of 2 MiB and more to the host, which drops their pages, and
 * the next fault in such a block is the host's too. A huge page is taken from those blocks;
 * small pages mostly from smaller free blocks, never reported (design.md, "Huge pages up
 * front only where the host leaves free memory alone").
 * Read with plain system calls on the caller's stack, the first time a huge block asks: the
 * balloon driver's directory (getdents64), then each bound device's features. No such driver,
 * or one a sandbox refuses: no, for good; a directory that could not be opened or listed for
 * want of a descriptor or memory: no, asked again next time. Not on the initialisation path. */
static _Atomic int host_reclaims = -1;

#define BALLOON_DIR "/sys/bus/virtio/drivers/virtio_balloon"
#define BALLOON_DIR_MAX 128
/* A call refused for want of descriptors or memory, or cut by a signal: it may pass later. */
static bool for_now(int e) {
  return e == EMFILE || e == ENFILE || e == ENOMEM || e == EINTR || e == EAGAIN;
}
/* Whether a device in dir (the balloon driver's, or a test's) has bit 5 of its features set:
 * an entry named virtio* (names of 64 characters and more are skipped) with a file `features`
 * of '0' and '1', the features the driver took up. 1 if one has, 0 if none has, there is no
 * such directory or it is refused, -1 if not known (the directory's opening or listing refused
 * for now: for_now; a name longer than BALLOON_DIR_MAX). */
int ta_os_balloon_reports(const char *dir) {
  size_t dn = strnlen(dir, BALLOON_DIR_MAX + 1);
  if (dn > BALLOON_DIR_MAX) return -1;
  int saved = errno;
  long fd = syscall(SYS_openat, AT_FDCWD, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  /* Refused for now: not known, asked again. Anything else (no such directory, a sandbox's
   * refusal): no, for good. */
  int yes = fd < 0 && for_now(errno) ? -1 : 0;
  if (fd >= 0) {
    char ents[1024] __attribute__((aligned(8)));
    long n = 0;
    while (yes == 0 && (n = syscall(SYS_getdents64, (int)fd, ents, sizeof ents)) > 0) {
      for (long off = 0; off < n && yes == 0;) {
        const char *name = ents + off + 19; /* d_ino 8, d_off 8, d_reclen 2, d_type 1 */
        unsigned short reclen;
        memcpy(&reclen, ents + off + 16, sizeof reclen);
        if (reclen == 0) break;
        off += reclen;
        size_t len = strnlen(name, 64);
        if (len >= 64 || strncmp(name, "virtio", 6) != 0) continue;
        char path[BALLOON_DIR_MAX + 1 + 64 + sizeof "/features"], bits[160];
        memcpy(path, dir, dn);
        path[dn] = '/';
        memcpy(path + dn + 1, name, len);
        memcpy(path + dn + 1 + len, "/features", sizeof "/features");
        yes = read_kernel_file(path, bits, sizeof bits) > 5 && bits[5] == '1';
      }
    }
    if (yes == 0 && n < 0 && for_now(errno)) yes = -1; /* the listing cut short: not known */
    syscall(SYS_close, (int)fd);
  }
  errno = saved;
  return yes;
}

bool ta_os_host_reclaims(void) {
  int r = atomic_load_explicit(&host_reclaims, memory_order_relaxed);
  if (TA_LIKELY(r >= 0)) return r;
  r = ta_os_balloon_reports(BALLOON_DIR);
  if (r < 0) return false; /* not known: asked again next time */
  atomic_store_explicit(&host_reclaims, r, memory_order_relaxed);
  return r;
}

void ta_os_host_reclaims_force(int yes) { atomic_store(&host_reclaims, yes); }

/* The CPUs the process may run on: the main thread's affinity mask (its id is the process's),
 * or this thread's if that cannot be read, in up to 8,192 CPUs, on the caller's stack. Its
 * size in bytes, 0 on failure. errno is kept. */
#define CPU_MASK_BYTES 1024
static size_t affinity(unsigned long *mask) {
  int saved = errno;
  long got = syscall(SYS_sched_getaffinity, (pid_t)ta_os_getpid(), CPU_MASK_BYTES, mask);
  if (got <= 0) got = syscall(SYS_sched_getaffinity, 0, CPU_MASK_BYTES, mask);
  errno = saved;
  return got > 0 ? (size_t)got : 0;
}
#define MASK_BIT(mask, i) (((mask)[(i) / (8 * sizeof(long))] >> ((i) % (8 * sizeof(long)))) & 1)

/* CPUs this process may run on (1 if that cannot be read), read once and kept. */
unsigned ta_os_ncpu(void) {
  static _Atomic unsigned cached;
  unsigned n = atomic_load_explicit(&cached, memory_order_relaxed);
  if (n != 0) return n;
  unsigned long mask[CPU_MASK_BYTES / sizeof(long)] = {0};
  size_t bytes = affinity(mask);
  for (size_t i = 0; i < 8 * bytes; i++) n += (unsigned)MASK_BIT(mask, i);
  if (n == 0) n = 1;
  atomic_store_explicit(&cached, n, memory_order_relaxed);
  return n;
}

/* Threads of the whole system running or waiting for a CPU now (the fourth field of
 * /proc/loadavg, "running/all"); 0 when it cannot be read. */
unsigned ta_os_runnable(void) {
  char buf[128];
  if (read_kernel_file("/proc/loadavg", buf, sizeof buf) <= 0) return 0;
  const char *p = buf;
  for (int field = 0; field < 3 && *p; p++)
    if (*p == ' ') field++;
  unsigned n = 0;
  for (; *p >= '0' && *p <= '9'; p++) n = n * 10 + (unsigned)(*p - '0');
  return *p == '/' ? n : 0;
}

/* Whether thread tid of this process is running or waiting for a CPU (its state in
 * /proc/self/task/TID/stat is R), as opposed to blocked in the kernel (or stopped). False
 * when it cannot be told: without /proc, idle threads' memory still goes back by the wall
 * time. */
bool ta_os_thread_runs(uint32_t tid) {
  char path[48] = "/proc/self/task/", *p = path + 16, digits[12];
  int n = 0;
  do digits[n++] = (char)('0' + tid % 10); while ((tid /= 10) != 0);
  while (n > 0) *p++ = digits[--n];
  memcpy(p, "/stat", 6);
  char buf[256];
  if (read_kernel_file(path, buf, sizeof buf) <= 0) return false;
  const char *end = strrchr(buf, ')'); /* the name may hold spaces and parentheses */
  return end != NULL && end[1] == ' ' && end[2] == 'R';
}

/* The CPU the thread runs on, as its rank among the CPUs the process may run on (0 ..
 * ta_os_ncpu() - 1, ranked once from the mask ta_os_ncpu counts), so that CPUs numbered close
 * together get close ranks whatever ids a cpuset leaves; a CPU the mask did not have, or of
 * an id past the table, its id modulo the count. A hint: the thread may move at once.
 * Where glibc registered the thread's restartable-sequence area, the id is read from it (a
 * load); without one (older C libraries, a kernel or emulator without rseq; arm64 has no vDSO
 * getcpu either) sched_getcpu may be a system call, and the CPU is read again only every 16
 * calls. errno is kept; a failure makes it 0 from then on. */
extern const unsigned int __rseq_size __attribute__((weak)); /* glibc 2.35+: 0 if none */
extern const ptrdiff_t __rseq_offset __attribute__((weak));  /* from the thread pointer */
#define CPU_IDS 1024
static _Atomic uint16_t cpu_rank[CPU_IDS]; /* rank + 1; 0: not in the mask */
static _Atomic int cpu_ranked;             /* 0 not yet, 1 ranked, 2 no mask */
static _Atomic bool cpu_unknown;
static _Atomic int cpu_forced = -1; /* a test's CPU (its rank), or -1 */
static __thread uint32_t tl_cpu __attribute__((tls_model("initial-exec")));
static __thread uint8_t tl_cpu_uses __attribute__((tls_model("initial-exec")));
/* The CPU id last read from the restartable-sequence area, plus one, in the high half; its
 * rank in the low half; 0: none yet. */
static __thread uint64_t tl_cpu_kept __attribute__((tls_model("initial-exec")));

void ta_os_cpu_force(int cpu) { atomic_store(&cpu_forced, cpu); }

/* A signal number, not a function: a writable pointer that malloc calls would be a gift to
 * one who can write memory. */
_Atomic int ta_os_claim_signal;
void ta_os_interrupt_claim(int sig) { atomic_store(&ta_os_claim_signal, sig); }
void ta_os_claim_interrupted(void) {
  int sig = atomic_exchange(&ta_os_claim_signal, 0); /* once: the handler's own claim raises none */
  if (sig) raise(sig);
}

static void rank_cpus(void) {
  unsigned long mask[CPU_MASK_BYTES / sizeof(long)] = {0};
  size_t bytes = affinity(mask);
  unsigned rank = 0;
  for (unsigned id = 0; id < CPU_IDS && id < 8 * bytes; id++)
    if (MASK_BIT(mask, id)) atomic_store_explicit(&cpu_rank[id], (uint16_t)++rank, memory_order_relaxed);
  atomic_store_explicit(&cpu_ranked, bytes ? 1 : 2, memory_order_release);
}

/* The rank of CPU id (>= 0), as ta_os_cpu says. */
static unsigned rank_of(int id) {
  unsigned n = ta_os_ncpu();
  if (atomic_load_explicit(&cpu_ranked, memory_order_acquire) == 0) rank_cpus();
  unsigned r =
      (unsigned)id < CPU_IDS ? atomic_load_explicit(&cpu_rank[id], memory_order_relaxed) : 0;
  return r != 0 && r <= n ? r - 1 : (unsigned)id % n;
}

/* The CPU id in the thread's restartable-sequence area, which the kernel rewrites whenever the
 * thread moves (the cpu_id field, 4 bytes in; glibc says where the area is); negative where
 * there is none (no registration, a compiler without the thread-pointer builtin, or a test
 * that turned it off). Older compilers lack the builtin (clang before 14 fails on it on
 * x86-64, GCC before 11 has none there): they take sched_getcpu's path. */
#if (defined(__x86_64__) || defined(__aarch64__)) &&                                               \
    ((defined(__clang__) && __clang_major__ >= 14) || (!defined(__clang__) && __GNUC__ >= 11))
#define TA_RSEQ_READ 1
#else
#define TA_RSEQ_READ 0
#endif
#define RSEQ_UNKNOWN INTPTR_MIN /* rseq_id_at not looked for yet */
#define RSEQ_NONE (INTPTR_MIN + 1)
static _Atomic intptr_t rseq_id_at = RSEQ_UNKNOWN; /* the field from the thread pointer */
void ta_os_cpu_rseq(bool on) { atomic_store(&rseq_id_at, on ? RSEQ_UNKNOWN : RSEQ_NONE); }
static int32_t rseq_cpu_id(void) {
#if TA_RSEQ_READ
  intptr_t at = atomic_load_explicit(&rseq_id_at, memory_order_relaxed);
  if (TA_UNLIKELY(at == RSEQ_UNKNOWN)) {
    at = &__rseq_size != NULL && &__rseq_offset != NULL && __rseq_size != 0
             ? (intptr_t)__rseq_offset + 4
             : RSEQ_NONE;
    atomic_store_explicit(&rseq_id_at, at, memory_order_relaxed);
  }
  if (at == RSEQ_NONE) return -1;
  const _Atomic int32_t *id = (const _Atomic int32_t *)((char *)__builtin_thread_pointer() + at);
  return atomic_load_explicit(id, memory_order_relaxed);
#else
  return -1;
#endif
}

/* Read from the area itself, the id costs a load past the thread pointer, and the rank of the
 * id the thread read last is kept with it, in one word written by one store (a signal
 * handler's call between two stores could leave a rank beside another CPU's id). */
unsigned ta_os_cpu(void) {
  int f = atomic_load_explicit(&cpu_forced, memory_order_relaxed);
  if (TA_UNLIKELY(f >= 0)) return (unsigned)f;
  int32_t now = rseq_cpu_id();
  if (TA_LIKELY(now >= 0)) {
    uint64_t kept = tl_cpu_kept;
    if ((uint32_t)(kept >> 32) == (uint32_t)now + 1) return (uint32_t)kept;
    unsigned rank = rank_of(now);
    tl_cpu_kept = ((uint64_t)((uint32_t)now + 1) << 32) | rank;
    return rank;
  }
  if (tl_cpu_uses-- != 0) return tl_cpu;
  tl_cpu_uses = 15;
  unsigned rank = 0;
  if (!atomic_load_explicit(&cpu_unknown, memory_order_relaxed)) {
    int saved = errno, id = sched_getcpu();
    errno = saved;
    if (id < 0)
      atomic_store_explicit(&cpu_unknown, true, memory_order_relaxed);
    else
      rank = rank_of(id);
  }
  tl_cpu = rank;
  return rank;
}

uint64_t ta_os_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The fine clock, in microseconds: what a system call took. */
uint64_t ta_os_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* 64 random bits without allocating: the kernel's AT_RANDOM bytes, mixed with addresses
 * and the clock (so a forked child still differs from nothing it can guess cheaply). */
uintptr_t ta_os_random(void) {
  uint64_t x = 0x9e3779b97f4a7c15ULL;
  const unsigned char *r = (const unsigned char *)getauxval(AT_RANDOM);
  if (r) {
    for (int i = 0; i < 16; i++) x = (x ^ r[i]) * 0x100000001b3ULL;
  }
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  x ^= (uint64_t)ts.tv_nsec + ((uint64_t)(uintptr_t)&x << 7);
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 29;
  return (uintptr_t)(x | 1u); /* never zero */
}

/* ------------------------------------------------------------------ threads */
int ta_os_thread_start(void *(*fn)(void *)) {
  if (should_fail(TA_OS_THREAD)) return -1;
  int saved = errno;
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) != 0) return -1;
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  /* A stack size of its own: without one, pthread_create takes the lock of the default thread
   * attributes, which glibc holds around its calloc in pthread_getattr_default_np (a start
   * from that malloc would wait for itself). */
  pthread_attr_setstacksize(&attr, (size_t)256 << 10);
  /* Not the policy and priority of whichever thread starts it (a real-time thread may). */
  struct sched_param sp = {0};
  pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED);
  pthread_attr_setschedpolicy(&attr, SCHED_OTHER);
  pthread_attr_setschedparam(&attr, &sp);
  sigset_t old;
  ta_os_signals_block(&old); /* the new thread inherits: no signal for it */
  pthread_t t;
  int r = pthread_create(&t, &attr, fn, NULL);
  ta_os_signals_restore(&old);
  pthread_attr_destroy(&attr);
  errno = saved;
  return r == 0 ? 0 : -1;
}

void ta_os_thread_name(const char *name) {
  int saved = errno;
  prctl(PR_SET_NAME, name, 0, 0, 0);
  errno = saved;
}

void ta_os_futex_wait(_Atomic uint32_t *word, uint32_t val, uint64_t timeout_ms) {
  int saved = errno;
  struct timespec ts = {(time_t)(timeout_ms / 1000), (long)(timeout_ms % 1000) * 1000000L};
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, val, timeout_ms ? &ts : NULL, NULL, 0);
  errno = saved;
}

static void futex_wake(_Atomic uint32_t *word, int count) {
  int saved = errno;
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
  errno = saved;
}
void ta_os_futex_wake(_Atomic uint32_t *word) { futex_wake(word, 1); }
void ta_os_futex_wake_all(_Atomic uint32_t *word) { futex_wake(word, INT32_MAX); }

/* 64 bits from the kernel's generator (getrandom, which does not allocate), independent of
 * what ta_os_random drew; ta_os_random's mix if the call is refused. */
uintptr_t ta_os_random_fresh(void) {
  uint64_t x;
  int saved = errno;
  long n = syscall(SYS_getrandom, &x, sizeof x, 1 /* GRND_NONBLOCK */);
  errno = saved;
  if (n != (long)sizeof x) x = ta_os_random() * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)&x;
  return (uintptr_t)x;
}

/* ------------------------------------------------------------------ the break lock */
/* The break lock: held only around sbrk and the reads of the break beside it, never across
 * anything that could need malloc. Yet the kernel's brk takes the process's address-space
 * lock for writing, and waits there for its readers (mmap, munmap, madvise, page faults that
 * fall back to it): a holder may sleep in the kernel while the waiters spin. So a waiter
 * spins a little, then sleeps on a futex (0 free, 1 held, 2 held and maybe with sleepers,
 * which the letting go wakes, one at a time). A spin lock that yielded instead made each
 * waiter go round the scheduler's queue again and again: 734 to 5,477 yields in runs of
 * `threads-32k -t 64` on 2 CPUs (perf stat), all of them the break lock's where sampled with
 * their call stacks, and that workload took 0.92-0.94 of its time with the futex
 * (docs/design.md); with threads of a real-time priority a yield never lets a holder of a
 * lower one run at all. */
static _Atomic uint32_t brk_lock_word;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __asm__ volatile("pause" ::: "memory");
#elif defined(__aarch64__)
  __asm__ volatile("yield" ::: "memory");
#else
  atomic_signal_fence(memory_order_seq_cst);
#endif
}

enum { BRK_SPINS = 64 };

void ta_brk_lock(void) {
  for (unsigned spins = 0; spins < BRK_SPINS; spins++) {
    uint32_t free_ = 0;
    if (atomic_load_explicit(&brk_lock_word, memory_order_relaxed) == 0 &&
        atomic_compare_exchange_weak_explicit(&brk_lock_word, &free_, 1, memory_order_acquire,
                                              memory_order_relaxed))
      return;
    cpu_relax();
  }
  /* Taken as 2 from here on, whatever the holder took it as: its letting go wakes a sleeper,
   * maybe one that has none behind it (one futex call too many, not a sleeper left behind). */
  while (atomic_exchange_explicit(&brk_lock_word, 2, memory_order_acquire) != 0)
    ta_os_futex_wait(&brk_lock_word, 2, 0);
}

void ta_os_yield(void) { sched_yield(); }

void ta_os_signals_block(sigset_t *old) {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, old);
}
void ta_os_signals_restore(const sigset_t *old) { pthread_sigmask(SIG_SETMASK, old, NULL); }

void ta_brk_unlock(void) {
  if (atomic_exchange_explicit(&brk_lock_word, 0, memory_order_release) == 2)
    ta_os_futex_wake(&brk_lock_word);
}

/* In a fork child only the forking thread exists; a holder that vanished cannot release. */
void ta_brk_reset_after_fork(void) { atomic_store(&brk_lock_word, 0); }

/* ------------------------------------------------------------------ the slow-path lock */
/* Each arena's lock of its slow paths (ta_slow_enter, internal.h): a thread holds it when the
 * lock word is its own tag's address (a long's: even, the low bit free for a mark); the owner waits
 * for the purger, which holds it for one purge at most. */
__thread long ta_tl_tag __attribute__((tls_model("initial-exec")));

void ta_slow_wait(ta_arena_t *a) {
  for (unsigned spins = 0;; spins++) {
    /* Another thread's light section that did not end while a taking waited for it
     * (ta_light_sync): its end first, the lock free meanwhile, rather than a barrier a try.
     * Not the caller's own: a signal handler's call cut into it, which must take the lock. */
    while (atomic_load_explicit(&a->light, memory_order_relaxed) != 0 &&
           atomic_load_explicit(&a->light_owner, memory_order_relaxed) != &ta_tl_tag)
      sched_yield();
    if (ta_slow_try_enter(a)) return;
    if (spins > 64)
      sched_yield();
    else
      cpu_relax();
  }
}

/* ------------------------------------------------------------------ light sections */
/* The other side of ta_light_enter (internal.h): the lock of an arena not the caller's is
 * held; after the barrier the owner's mark is seen if it went in, and the owner, which goes
 * in only while the lock is free, leaves without waiting on anything, in a few hundred
 * instructions, unless the kernel stops it there (a signal handler's call that waits for
 * this lock, a debugger, preemption). */
_Atomic bool ta_light_ok;
enum { LIGHT_SPINS = 64, LIGHT_YIELDS = 64, BARRIER_TRIES = 4 };

bool ta_os_barrier_register(void) {
#if defined(SYS_membarrier)
  if (should_fail(TA_OS_BARRIER)) return false;
  int saved = errno;
  long cmds = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  bool ok = cmds > 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
            syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
  errno = saved;
  return ok;
#else
  return false;
#endif
}

int ta_os_barrier(void) {
#if defined(SYS_membarrier)
  if (should_fail(TA_OS_BARRIER)) return -1;
  count_call(TA_OS_BARRIER);
  int saved = errno;
  int r = (int)syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
  errno = saved;
  return r;
#else
  return -1;
#endif
}

/* False: the owner is still inside after a while; the caller lets go of the lock. */
bool ta_light_sync(ta_arena_t *a) {
  /* Registered before any arena allowed light sections (ta_init). The kernel may still fail
   * it, short of memory for a moment, or for good under a filter of system calls installed
   * since: then light sections stop in every arena (ta_light_ok, read as they start), and
   * the owner's mark is looked for a millisecond later, when any store made before this
   * taking has left its CPU's store buffer: sound in practice, not by the memory model
   * (docs/design.md says so). Seen clear then, with the lock held, the arena forbids them
   * too: none is inside, and an owner that read the permission before sees it gone once
   * in (ta_light_enter reads it again). */
  bool barrier = false;
  for (unsigned i = 0;
       i < BARRIER_TRIES && !barrier && atomic_load_explicit(&ta_light_ok, memory_order_relaxed);
       i++) {
    barrier = ta_os_barrier() == 0;
    if (!barrier) sched_yield();
  }
  if (!barrier) {
    atomic_store_explicit(&ta_light_ok, false, memory_order_relaxed);
    for (uint64_t until = ta_os_now_us() + 1000; ta_os_now_us() < until;)
      sched_yield();
  }
  for (unsigned spins = 0; atomic_load_explicit(&a->light, memory_order_acquire) != 0; spins++) {
    if (spins >= LIGHT_SPINS + LIGHT_YIELDS) return false;
    if (spins >= LIGHT_SPINS)
      sched_yield();
    else
      cpu_relax();
  }
  if (!barrier) ta_light_forbid(a);
  return true;
}
