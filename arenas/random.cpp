#include "random.h"

#include <sys/random.h>
#include <x86intrin.h>

#include <atomic>

namespace trimalloc {
namespace {
std::atomic<std::uint64_t> g_random_state{0};
}  // namespace

std::uintptr_t random_word() noexcept {
  std::uint64_t s = g_random_state.load(std::memory_order_relaxed);
  if (s == 0) {
    std::uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != sizeof seed)
      seed = __rdtsc() ^ reinterpret_cast<std::uintptr_t>(&seed);
    std::uint64_t expected = 0;
    g_random_state.compare_exchange_strong(expected, seed | 1, std::memory_order_relaxed);
  }
  // splitmix64 over a shared counter: distinct outputs per call, no lock.
  std::uint64_t z = g_random_state.fetch_add(0x9e3779b97f4a7c15u, std::memory_order_relaxed);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return static_cast<std::uintptr_t>(z ^ (z >> 31));
}

}  // namespace trimalloc
