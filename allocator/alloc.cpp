// Composition: the tm_* API routes each request to the small-object engine (arenas/) or to
// the large allocator (large.cpp), and enforces malloc's error contract in one place:
// impossible sizes and overflows give NULL with errno = ENOMEM, bad alignments EINVAL, and
// pointers that are neither a small block nor jemalloc's abort naming the public call.
// The malloc/new override (override_*.cpp) are thin shims over these functions.
#include "alloc.h"

#include <pthread.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "heap.h"
#include "large.h"
#include "large_registry.h"
#include "options.h"
#include "quarantine.h"
#include "sampling.h"
#include "trim.h"
#include "trimalloc/trimalloc.h"
#include "visit.h"

namespace trimalloc {

[[noreturn]] void report_foreign(const char* call, const void* p) noexcept {
  fatal(call, "invalid pointer (not allocated by trimalloc)", p);
}

void free_not_small(void* p, const char* call) noexcept {
  if (!large_owns(p)) report_foreign(call, p);
  large_free(p);
}

void check_large(const void* p, const char* call) noexcept {
  if constexpr (kSecure) {
    if (registry_state(p) != LargeState::kLive)
      fatal(call, "invalid pointer or double free of large block", p);
  } else {
    (void)p, (void)call;
  }
}

namespace {
// calloc after the overflow check. Internal linkage, so that tm_calloc inlines it (as it did
// before raw_calloc existed).
inline void* calloc_total(std::size_t total) noexcept {
  if (total <= kSmallMax) {
    unsigned cls = size_class_of(total);
    void* p = small_alloc_sampled(cls, total);
    if (p) std::memset(p, 0, class_block_size(cls));  // the whole block, as glibc does
    return p;
  }
  return large_alloc(total, 0, true);
}
}  // namespace

#if TRIMALLOC_VALGRIND
void* raw_calloc(std::size_t total) noexcept {
  return calloc_total(total);
}
#endif

void* raw_alloc_aligned(std::size_t size, std::size_t alignment, bool zero) noexcept {
  unsigned cls = aligned_class_of(size, alignment);
  if (cls < kClassCount) {
    // A sampled block comes from the large allocator aligned to its block size's lowest set bit,
    // which aligned_class_of made a multiple of `alignment`.
    void* p = small_alloc_sampled(cls, size);
    if (p && zero) std::memset(p, 0, class_block_size(cls));
    return p;
  }
  return large_alloc(size == 0 ? 1 : size, alignment, zero);
}

void* raw_realloc(void* p, std::size_t size, const char* call) noexcept {
  if (p == nullptr) return raw_malloc(size);
  std::size_t old_size;
  if (small_owns(p)) {
    old_size = small_usable_size(p, call);
    // Same class: in place, growing within the block or shrinking.
    if (size <= kSmallMax && class_block_size(size_class_of(size)) == old_size) return p;
  } else {
    if (!large_owns(p)) report_foreign(call, p);
    check_large(p, call);
    if (size > kSmallMax) return large_realloc(p, size);
    old_size = large_usable_size(p);
  }
  void* q = raw_malloc(size);
  if (q == nullptr) return nullptr;  // errno set; the old block is untouched (C says so)
  std::memcpy(q, p, old_size < size ? old_size : size);
  raw_free(p, call);
  return q;
}

std::size_t raw_usable_size(const void* p, const char* call) noexcept {
  if (p == nullptr) return 0;
  if (small_owns(p)) return small_usable_size(p, call);
  if (!large_owns(p)) report_foreign(call, p);
  check_large(p, call);
  return large_usable_size(p);
}

void free_sized_not_small(void* p, std::size_t size, std::size_t alignment,
                          const char* call) noexcept {
  if (kSecure && small_owns(p)) {
    Pool* pool = checked_pool(p, call);
    if (sized_block_size(size, alignment) != pool->block_size) report_wrong_size(call, p);
    return quarantine_free(p, call);
  }
  if (p == nullptr) return;
  if (!large_owns(p)) report_foreign(call, p);
  // A small size for a large block is a mismatch, unless the sampler served a small request
  // from the large allocator.
  if (size <= kSmallMax && alignment <= kSmallMax && !sample_is_sampled(p))
    fatal(call, "size does not match the allocation of", p);
  if constexpr (kSecure) return quarantine_free(p, call);
  large_free_sized(p, size, alignment);
}

void free_batch(void* const* blocks, std::size_t n, const char* call) noexcept {
#if TRIMALLOC_VALGRIND
  // Memcheck's layer keeps its own record of every block: one vg_free each.
  for (std::size_t i = 0; i < n; ++i) vg_free(blocks[i], call);
#else
  std::size_t i = 0;
  while (i < n) {
    // The hardened build's frees all go through the quarantine, one by one.
    if constexpr (!kSecure) i = small_free_run(blocks, i, n, call);
    if (i == n) break;
    raw_free(blocks[i++], call);  // large, another thread's pool, null, or to be reported
  }
#endif
}

void* malloc_zero() noexcept {
  return raw_malloc(1);
}

bool valid_alignment(std::size_t alignment) noexcept {
  return alignment != 0 && (alignment & (alignment - 1)) == 0;
}

}  // namespace trimalloc

using namespace trimalloc;

// Start-up of the allocator layer. It lives here, beside tm_malloc, because a program linking
// the static engine pulls in only the object files it references: a constructor in any other
// file could silently be left out.
namespace {
__attribute__((constructor(200))) void allocator_start() {
  if constexpr (kSecure) {
    g_before_thread_exit = quarantine_flush_at_thread_exit;
    g_on_visited_heap = quarantine_empty_visited;
    // Fork: hold the registry shards too (lock order: visit -> registry -> engine locks).
    pthread_atfork(registry_lock_all, registry_unlock_all, registry_reset_after_fork);
  }
  options_init();
  visits_init();
  decay_init();
#if TRIMALLOC_VALGRIND
  vg_init();
#endif
}
}  // namespace

extern "C" {

void* tm_malloc(size_t size) {
  return malloc_impl(size);
}

void tm_free(void* p) {
  free_impl(p, "free");
}

void* tm_calloc(size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return nullptr;
  }
#if TRIMALLOC_VALGRIND
  return vg_alloc(total, 0, true);
#else
  return calloc_total(total);
#endif
}

void* tm_realloc(void* p, size_t size) {
  return realloc_impl(p, size, "realloc");
}

void* tm_reallocarray(void* p, size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return nullptr;
  }
  return realloc_impl(p, total, "reallocarray");
}

void tm_free_sized(void* p, size_t size) {
  free_sized_impl(p, size, 0, "free_sized");
}

void tm_free_aligned_sized(void* p, size_t alignment, size_t size) {
  free_sized_impl(p, size, alignment, "free_aligned_sized");
}

void tm_free_batch(void* const* blocks, size_t n) {
  free_batch(blocks, n, "free_batch");
}

void* tm_aligned_alloc(size_t alignment, size_t size) {
  if (!valid_alignment(alignment)) {
    errno = EINVAL;
    return nullptr;
  }
  return alloc_aligned(size, alignment, false);
}

int tm_posix_memalign(void** out, size_t alignment, size_t size) {
  if (!valid_alignment(alignment) || alignment % sizeof(void*) != 0) return EINVAL;
  int saved = errno;
  void* p = alloc_aligned(size, alignment, false);
  if (p == nullptr) {
    errno = saved;  // POSIX: the error is the return value; errno is left alone
    return ENOMEM;
  }
  *out = p;
  return 0;
}

void* tm_memalign(size_t alignment, size_t size) {
  // glibc rounds a non-power-of-two alignment up instead of failing; do the same.
  if (alignment != 0 && !valid_alignment(alignment)) {
    if (alignment > (SIZE_MAX >> 1) + 1) {
      errno = EINVAL;
      return nullptr;
    }
    alignment = std::size_t{1} << (64 - __builtin_clzll(alignment));
  }
  return alloc_aligned(size, alignment ? alignment : 1, false);
}

void* tm_valloc(size_t size) {
  return alloc_aligned(size, os_page(), false);
}

void* tm_pvalloc(size_t size) {
  size_t page = os_page();
  size_t rounded = (size + page - 1) & ~(page - 1);
  if (rounded < size) {
    errno = ENOMEM;
    return nullptr;
  }
  return alloc_aligned(rounded ? rounded : page, page, false);
}

size_t tm_usable_size(const void* p) {
  return usable_size_impl(p, "malloc_usable_size");
}

int tm_owns(const void* p) {
  if (small_owns(p)) {
    Pool* pool = pool_of(p);
    return is_block_start(pool, reinterpret_cast<std::uintptr_t>(p) & (kPoolSize - 1));
  }
  if (p == nullptr || !g_arena_map.contains(SlotKind::kLarge, p)) return 0;
  if constexpr (kSecure) return registry_state(p) == LargeState::kLive;
  return 1;
}

const char* tm_version(void) {
  return "trimalloc 0.1.0";
}

}  // extern "C"
