#include "sampling.h"

#include "heap.h"

namespace trimalloc {

SamplerHooks g_sampler = {nullptr, nullptr, nullptr, nullptr};
std::atomic<std::size_t> g_sampled_live{0};

void* sample_small_slow(std::size_t size, std::size_t cls) noexcept {
  if (g_sampler.sample_small) return g_sampler.sample_small(static_cast<unsigned>(cls), size);
  // No sampler registered yet (allocation before constructors ran): look again later.
  tl_thread.sample_countdown = std::int64_t{16} << 20;
  return small_alloc(cls);
}

}  // namespace trimalloc
