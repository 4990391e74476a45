// Internal helpers shared by the tm_* API and the malloc/new override shims.
#pragma once
#include <cstddef>

#include "config.h"
#include "decay.h"
#include "heap.h"
#include "large.h"
#include "os.h"
#include "quarantine.h"
#include "sampling.h"

namespace trimalloc {

[[noreturn]] void report_foreign(const char* call, const void* p) noexcept;
// The raw_* functions are the allocator proper. The names the shims call (malloc_impl,
// alloc_aligned, ...) are, in the default build, these same functions; with TRIMALLOC_VALGRIND
// they are the memcheck layer of valgrind.cpp, which pads each block and calls these.
void* raw_alloc_aligned(std::size_t size, std::size_t alignment, bool zero) noexcept;
void* raw_calloc(std::size_t total) noexcept;  // TRIMALLOC_VALGRIND only
void* raw_realloc(void* p, std::size_t size, const char* call) noexcept;
std::size_t raw_usable_size(const void* p, const char* call) noexcept;
// Hardened build: aborts unless p is a live large block (not freed, not in quarantine, not an
// interior pointer). No-op in the default build.
void check_large(const void* p, const char* call) noexcept;
bool valid_alignment(std::size_t alignment) noexcept;
inline std::size_t os_page() noexcept {
  return os::page_size();
}

void* malloc_after_quarantine(std::size_t size) noexcept;
// malloc(0): out of line, so that inlining it twice does not give malloc a stack frame.
[[gnu::noinline]] void* malloc_zero() noexcept;

// Every small allocation (malloc, calloc, aligned) counts down the sampling countdown: a path
// that skipped it would be missing from snapshots (CPython's bytes objects come from calloc).
// The countdown runs on requested bytes (what the program asked for, as tracemalloc counts), which
// is also one computation fewer than the block size on the fast path.
inline void* small_alloc_sampled(std::size_t cls, std::size_t size) noexcept {
  return sample_due(size) ? sample_small_slow(size, cls) : small_alloc(cls);
}

inline void* raw_malloc(std::size_t size) noexcept {
  void* p;
  // size - 1 wraps for 0, so one unsigned compare admits exactly 1..512; malloc(0) takes the
  // second branch and is served as a 1-byte request.
  if (__builtin_expect(size - 1 < kSmallMax, 1)) {
    p = small_alloc_sampled((size - 1) >> 4, size);
  } else if (size == 0) {
    return malloc_zero();
  } else {
    p = large_malloc(size);
  }
  // Hardened build: memory held in quarantine is free memory; use it before failing.
  if constexpr (kSecure) {
    if (__builtin_expect(p == nullptr, 0)) return malloc_after_quarantine(size);
  }
  return p;
}

// The rest of free() after the small check: a large block, or a foreign pointer. Out of line, so
// that free() itself makes only tail calls and needs no stack frame.
void free_not_small(void* p, const char* call) noexcept;

// free() with the public call's name for messages. Small first: it is the common case and
// null is never in a small arena, so the null check costs nothing there.
[[gnu::always_inline]] inline void raw_free(void* p, const char* call) noexcept {
  if constexpr (kSecure) {
    if (p == nullptr) return;
    if (!small_owns(p) && !large_owns(p)) report_foreign(call, p);
    return quarantine_free(p, call);
  }
  if (__builtin_expect(small_owns(p), 1)) {
    small_free(p, call);
    return;
  }
  if (p == nullptr) return;
  free_not_small(p, call);
}

// The rest of the sized frees after the small check (and all of them in the hardened build,
// whose small frees go through the quarantine). Out of line, like free_not_small.
void free_sized_not_small(void* p, std::size_t size, std::size_t alignment,
                          const char* call) noexcept;

// free_sized(), free_aligned_sized() and sized operator delete: free() plus one compare of the
// block size the caller's size implies with the pool's (small_free_sized).
[[gnu::always_inline]] inline void raw_free_sized(void* p, std::size_t size, std::size_t alignment,
                                                  const char* call) noexcept {
  if (!kSecure && __builtin_expect(small_owns(p), 1)) {
    small_free_sized(p, call, sized_block_size(size, alignment));
    return;
  }
  free_sized_not_small(p, size, alignment, call);
}

// tm_free_batch: free() of each block in order, entering the thread's heap once per run of
// small blocks it owns (small_free_run); everything else, and every block in the hardened and
// valgrind builds, the ordinary way. Messages name `call`.
void free_batch(void* const* blocks, std::size_t n, const char* call) noexcept;

#if TRIMALLOC_VALGRIND
void* vg_alloc(std::size_t size, std::size_t alignment, bool zero) noexcept;
void vg_free(void* p, const char* call) noexcept;
void vg_free_sized(void* p, std::size_t size, std::size_t alignment, const char* call) noexcept;
void* vg_realloc(void* p, std::size_t size, const char* call) noexcept;
std::size_t vg_usable_size(const void* p, const char* call) noexcept;
void vg_init() noexcept;  // thread-exit hooks; after decay_init()
// Memcheck's error reporting off/on for this thread (nests), around engine work on free blocks
// that does not go through the entry points above (tm_trim, the decay thread).
void vg_quiet_begin() noexcept;
void vg_quiet_end() noexcept;
void vg_flush() noexcept;  // frees the blocks whose reuse valgrind.cpp delays

inline void* malloc_impl(std::size_t size) noexcept {
  return vg_alloc(size, 0, false);
}
inline void free_impl(void* p, const char* call) noexcept {
  vg_free(p, call);
}
inline void* alloc_aligned(std::size_t size, std::size_t alignment, bool zero) noexcept {
  return vg_alloc(size, alignment, zero);
}
inline void* realloc_any(void* p, std::size_t size, const char* call) noexcept {
  return vg_realloc(p, size, call);
}
inline std::size_t usable_size_impl(const void* p, const char* call) noexcept {
  return vg_usable_size(p, call);
}
inline void free_sized_impl(void* p, std::size_t size, std::size_t alignment,
                            const char* call) noexcept {
  vg_free_sized(p, size, alignment, call);
}
#else
// Always inlined: with several shims calling them (free, cfree, __libc_free, realloc's size 0;
// the sized frees and sized deletes) GCC otherwise makes free() or free_sized() a jump to one
// out-of-line copy, 2 instructions more per pair.
[[gnu::always_inline]] inline void* malloc_impl(std::size_t size) noexcept {
  return raw_malloc(size);
}
[[gnu::always_inline]] inline void free_impl(void* p, const char* call) noexcept {
  raw_free(p, call);
}
inline void* alloc_aligned(std::size_t size, std::size_t alignment, bool zero) noexcept {
  return raw_alloc_aligned(size, alignment, zero);
}
inline void* realloc_any(void* p, std::size_t size, const char* call) noexcept {
  return raw_realloc(p, size, call);
}
inline std::size_t usable_size_impl(const void* p, const char* call) noexcept {
  return raw_usable_size(p, call);
}
[[gnu::always_inline]] inline void free_sized_impl(void* p, std::size_t size, std::size_t alignment,
                                                   const char* call) noexcept {
  raw_free_sized(p, size, alignment, call);
}
#endif

// realloc(p, 0) frees p and returns NULL, leaving errno alone, as glibc's realloc does (and
// Debian's jemalloc, zero_realloc:free): C leaves the choice to the implementation, and a
// program written against glibc counts on the free. realloc(NULL, 0) is malloc(0), a block.
inline void* realloc_impl(void* p, std::size_t size, const char* call) noexcept {
  if (__builtin_expect(size == 0, 0) && p != nullptr) {
    free_impl(p, call);
    return nullptr;
  }
  return realloc_any(p, size, call);
}

}  // namespace trimalloc
