// Allocation-site sampling, the allocator's side. The sampler itself (stack capture, tables,
// snapshots) lives in stats/profile.cpp and registers its functions in g_sampler; the allocator
// only keeps a per-thread byte countdown, so it never depends on stats/.
//
// tl_thread.sample_countdown: bytes this thread may still allocate before the next sample. It
// starts at 0, so a thread's first allocation asks the sampler whether sampling is on; while it is
// off the sampler re-arms the countdown with a large value. The fast path pays one thread-local
// subtraction and a branch that is not taken.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "heap.h"

namespace trimalloc {

struct SamplerHooks {
  void* (*sample_small)(unsigned cls, std::size_t size) noexcept;  // serve a sampled small request
  void (*sample_large)(void* p, std::size_t size) noexcept;
  void (*forget)(const void* p) noexcept;  // a sampled block is freed or moved
  bool (*is_sampled)(const void* p) noexcept;
};

extern TM_INTERNAL SamplerHooks g_sampler;
// The countdown is tl_thread.sample_countdown, in the engine's thread-local block (heap.h).
extern TM_INTERNAL std::atomic<std::size_t>
    g_sampled_live;  // live sampled blocks (0: frees skip the lookup)

// Countdown ran out on a small request of `size` bytes (class `cls`): the sampler serves it (or,
// with no sampler, re-arm). Size first: malloc's fast path then has both arguments in the
// registers the call wants (size stays in the first, the class is computed in the second), so
// the sampling hook costs its subtraction and branch and no register copies.
void* sample_small_slow(std::size_t size, std::size_t cls) noexcept;

// -DTRIMALLOC_SAMPLING=OFF (TRIMALLOC_NO_SAMPLING) compiles the hooks out of malloc and free,
// for an A/B of what they cost (bench/compare-stats-cost); tm_profile_set_rate then says that
// sampling is not wired into the build.
#if defined(TRIMALLOC_NO_SAMPLING)
inline constexpr bool kSamplingHooks = false;
#else
inline constexpr bool kSamplingHooks = true;
#endif

inline bool sample_due(std::size_t bytes) noexcept {
  if constexpr (!kSamplingHooks) return false;
  return __builtin_expect((tl_thread.sample_countdown -= static_cast<std::int64_t>(bytes)) < 0, 0);
}
// The countdown ran out on a large allocation that gave `p`. A failed one (p null) did not
// allocate, so its bytes are given back to the countdown: otherwise a request near PTRDIFF_MAX
// would leave the countdown so negative that the next one overflows it.
inline void sample_record_large(void* p, std::size_t size) noexcept {
  if (p == nullptr) {
    tl_thread.sample_countdown += static_cast<std::int64_t>(size);
    return;
  }
  if (g_sampler.sample_large)
    g_sampler.sample_large(p, size);
  else
    tl_thread.sample_countdown = std::int64_t{1} << 40;
}
inline void sample_large(void* p, std::size_t size) noexcept {
  if constexpr (!kSamplingHooks) return;
  if (sample_due(size)) sample_record_large(p, size);
}
inline void sample_forget(const void* p) noexcept {
  if constexpr (!kSamplingHooks) return;
  if (__builtin_expect(g_sampled_live.load(std::memory_order_relaxed) != 0, 0) && g_sampler.forget)
    g_sampler.forget(p);
}
inline bool sample_is_sampled(const void* p) noexcept {
  if constexpr (!kSamplingHooks) return false;
  return g_sampled_live.load(std::memory_order_relaxed) != 0 && g_sampler.is_sampled &&
         g_sampler.is_sampled(p);
}

}  // namespace trimalloc
