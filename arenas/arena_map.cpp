#include "arena_map.h"

#include "os.h"

namespace trimalloc {

ArenaMap g_arena_map;

bool ArenaMap::init() noexcept {
  constexpr std::size_t kBytes = kSlotCount / 8;
  for (auto& bits : bits_) {
    if (bits) continue;
    void* p = os::reserve_aligned(kBytes, os::page_size());
    if (!p) return false;
    bits = static_cast<std::atomic<std::uint64_t>*>(p);
  }
  limit_.store(kSlotCount, std::memory_order_release);  // publishes bits_
  return true;
}

void ArenaMap::set(SlotKind kind, const void* p, std::size_t size, bool on) noexcept {
  std::atomic<std::uint64_t>* bits = bits_[static_cast<int>(kind)];
  std::uintptr_t first = reinterpret_cast<std::uintptr_t>(p) >> kSlotShift;
  std::uintptr_t last = (reinterpret_cast<std::uintptr_t>(p) + size - 1) >> kSlotShift;
  for (std::uintptr_t slot = first; slot <= last; ++slot) {
    std::uint64_t mask = std::uint64_t{1} << (slot & 63);
    if (on)
      bits[slot >> 6].fetch_or(mask, std::memory_order_release);
    else
      bits[slot >> 6].fetch_and(~mask, std::memory_order_release);
  }
}

}  // namespace trimalloc
