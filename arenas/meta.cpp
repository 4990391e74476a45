#include "meta.h"

#include <atomic>
#include <cstdint>

#include "lock.h"
#include "os.h"

namespace trimalloc {
namespace {
constexpr std::size_t kChunk = std::size_t{1} << 20;
SpinLock g_lock;
std::uintptr_t g_cursor = 0, g_end = 0;
std::atomic<std::size_t> g_used{0};
}  // namespace

void* meta_alloc(std::size_t size) noexcept {
  size = (size + 63) & ~std::size_t{63};
  LockGuard guard(g_lock);
  if (g_end - g_cursor < size) {
    std::size_t chunk = size > kChunk ? (size + kChunk - 1) & ~(kChunk - 1) : kChunk;
    void* p = os::reserve_aligned(chunk, os::page_size());
    if (!p) return nullptr;
    g_cursor = reinterpret_cast<std::uintptr_t>(p);
    g_end = g_cursor + chunk;
  }
  void* p = reinterpret_cast<void*>(g_cursor);
  g_cursor += size;
  g_used.fetch_add(size, std::memory_order_relaxed);
  return p;
}

std::size_t meta_bytes() noexcept {
  return g_used.load(std::memory_order_relaxed);
}

}  // namespace trimalloc
