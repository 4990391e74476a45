/* The floor of the small-pair benchmark: a stand-in allocator that does the least a malloc can
 * do, for LD_PRELOAD beside the real allocators (bench/ab-pairs --allocators ...,floor).
 *
 * Blocks of up to 512 bytes come from one region per 16-byte size class and go back to a
 * thread-local LIFO list of plain pointers: malloc is "pop the class's list, else bump", free
 * is "find the class from the address, push". There is no check of any kind, no statistics, no
 * way to give memory back, and a block freed by another thread simply joins that thread's list.
 * Anything larger, or aligned beyond 16 bytes, is its own mmap with a header. It is correct for
 * the benchmark programs (Google Benchmark's own allocations included), not for general use: it
 * only measures what the loop costs when the allocator does almost nothing (the calls, the
 * benchmark's bookkeeping, the write into the block, one pop and one push), so that a ratio
 * target against another allocator can be judged against it: 45 instructions a pair in
 * BM_pair with the loop's own, where trimalloc runs 72-82 (bench/count-instructions --micro). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#define EXPORT __attribute__((visibility("default")))
enum { kClasses = 32, kGranule = 16, kSmallMax = kClasses * kGranule };
/* Address space per class, reserved, never committed: 32 GiB in all, which valgrind (bench/
 * count-instructions) can still map. */
#define kClassSpan ((uintptr_t)1 << 30)

static uintptr_t region;                 /* kClasses * kClassSpan, reserved on first use */
static _Atomic uintptr_t bump[kClasses]; /* next fresh block of each class (offset) */
/* This thread's free blocks of each class. The lists live in ordinary memory reached through
 * one thread-local pointer, as trimalloc's do: kept in thread-local storage itself, a list head
 * that every malloc and free loads and stores made each pair 1.4x slower here (fs-relative
 * stores and loads forward more slowly on this machine: docs/bench.md, "Tenth session"). */
struct Lists {
  void* head[kClasses];
};
static __thread struct Lists* lists;

struct Large { /* just below a large or over-aligned block */
  void* map;
  size_t map_size;
  size_t usable;
  uintptr_t magic; /* kMagic ^ the block's address: anything else came from glibc itself */
};
#define kMagic ((uintptr_t)0x5f6c6f6f72a110cULL)

static int reserve(void) {
  if (region) return 1;
  void* r = mmap(NULL, kClasses * kClassSpan, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) return 0;
  uintptr_t expected = 0;
  if (!atomic_compare_exchange_strong((_Atomic uintptr_t*)&region, &expected, (uintptr_t)r))
    munmap(r, kClasses * kClassSpan);
  return 1;
}

static void* large_alloc(size_t size, size_t align) {
  if (align < kGranule) align = kGranule;
  if (size > ((size_t)1 << 46)) {
    errno = ENOMEM;
    return NULL;
  }
  size_t map_size = size + align + sizeof(struct Large);
  char* map = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) {
    errno = ENOMEM;
    return NULL;
  }
  uintptr_t p = ((uintptr_t)map + sizeof(struct Large) + align - 1) & ~(uintptr_t)(align - 1);
  struct Large* h = (struct Large*)p - 1;
  h->map = map;
  h->map_size = map_size;
  h->usable = map_size - (p - (uintptr_t)map);
  h->magic = kMagic ^ p;
  return (void*)p;
}

/* glibc's own functions may allocate with glibc's malloc internally and hand the block over. */
extern void __libc_free(void*);
static int is_ours(const void* p) {
  return ((const struct Large*)p - 1)->magic == (kMagic ^ (uintptr_t)p);
}

static int is_small(const void* p) {
  return region && (uintptr_t)p - region < kClasses * kClassSpan;
}

/* Out of line, so that the fast paths below need no stack frame. */
static __attribute__((noinline)) struct Lists* new_lists(void) {
  void* m =
      mmap(NULL, sizeof(struct Lists), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return NULL;
  return lists = m;
}

static __attribute__((noinline)) void* first_block(unsigned c);
static __attribute__((noinline)) void* fresh_block(unsigned c) {
  if (!reserve()) {
    errno = ENOMEM;
    return NULL;
  }
  uintptr_t off = atomic_fetch_add(&bump[c], (c + 1) * kGranule);
  if (off + (c + 1) * kGranule > kClassSpan) {
    errno = ENOMEM;
    return NULL;
  }
  return (void*)(region + c * kClassSpan + off);
}

static void* first_block(unsigned c) {
  if (new_lists() == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  return fresh_block(c);
}

/* Aligned like trimalloc's entry points (allocator/CMakeLists.txt). */
EXPORT __attribute__((aligned(64))) void* malloc(size_t size) {
  if (size - 1 < kSmallMax) { /* 1..512 (size 0 wraps round and goes large) */
    unsigned c = (unsigned)((size - 1) / kGranule);
    struct Lists* l = lists;
    if (__builtin_expect(l == NULL, 0)) return first_block(c);
    void* b = l->head[c];
    if (__builtin_expect(b == NULL, 0)) return fresh_block(c);
    l->head[c] = *(void**)b;
    return b;
  }
  return large_alloc(size, kGranule);
}

EXPORT __attribute__((aligned(64))) void free(void* p) {
  if (p == NULL) return;
  if (__builtin_expect(is_small(p), 1)) {
    unsigned c = (unsigned)(((uintptr_t)p - region) / kClassSpan);
    struct Lists* l = lists;
    if (__builtin_expect(l == NULL, 0) && (l = new_lists()) == NULL) return; /* leaked */
    *(void**)p = l->head[c];
    l->head[c] = p;
    return;
  }
  if (!is_ours(p)) {
    __libc_free(p);
    return;
  }
  struct Large* h = (struct Large*)p - 1;
  munmap(h->map, h->map_size);
}

EXPORT size_t malloc_usable_size(void* p) {
  if (p == NULL) return 0;
  if (is_small(p)) return ((((uintptr_t)p - region) / kClassSpan) + 1) * kGranule;
  if (!is_ours(p)) return 0; /* realloc then copies nothing it cannot vouch for */
  return ((struct Large*)p - 1)->usable;
}

EXPORT void* calloc(size_t n, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(n, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  void* p = malloc(total);
  if (p && is_small(p)) memset(p, 0, total);
  return p;
}

EXPORT void* realloc(void* p, size_t size) {
  if (p == NULL) return malloc(size);
  if (size == 0) {
    free(p);
    return NULL;
  }
  size_t old = malloc_usable_size(p);
  if (size <= old && (old <= kSmallMax) == (size <= kSmallMax)) return p;
  void* q = malloc(size);
  if (q == NULL) return NULL;
  memcpy(q, p, old < size ? old : size);
  free(p);
  return q;
}

EXPORT int posix_memalign(void** out, size_t align, size_t size) {
  if (align < sizeof(void*) || (align & (align - 1))) return EINVAL;
  void* p = align <= kGranule ? malloc(size) : large_alloc(size, align);
  if (p == NULL) return ENOMEM;
  *out = p;
  return 0;
}

EXPORT void* aligned_alloc(size_t align, size_t size) {
  void* p = NULL;
  int e = posix_memalign(&p, align, size);
  if (e) errno = e;
  return p;
}

EXPORT void* memalign(size_t align, size_t size) {
  return aligned_alloc(align, size);
}

EXPORT void* valloc(size_t size) {
  return large_alloc(size, 4096);
}

EXPORT void* pvalloc(size_t size) {
  return large_alloc((size + 4095) & ~(size_t)4095, 4096);
}

EXPORT void* reallocarray(void* p, size_t n, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(n, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  return realloc(p, total);
}
