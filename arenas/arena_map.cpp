#include "arena_map.h"

#include "os.h"

namespace trimalloc {

ArenaMap g_arena_map;

bool ArenaMap::init() noexcept {
  if (kinds_ == nullptr) {
    void* p = os::reserve_sparse(kSlotCount, os::page_size());
    if (!p) return false;
    kinds_ = static_cast<std::atomic<std::uint8_t>*>(p);
  }
  limit_.store(kSlotCount, std::memory_order_release);  // publishes kinds_
  return true;
}

void ArenaMap::set(SlotKind kind, const void* p, std::size_t size, bool on) noexcept {
  std::uintptr_t first = reinterpret_cast<std::uintptr_t>(p) >> kSlotShift;
  std::uintptr_t last = (reinterpret_cast<std::uintptr_t>(p) + size - 1) >> kSlotShift;
  for (std::uintptr_t slot = first; slot <= last; ++slot)
    kinds_[slot].store(on ? tag(kind) : 0, std::memory_order_release);
}

}  // namespace trimalloc
