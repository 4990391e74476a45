#include "arena_map.h"

#include "os.h"

namespace trimalloc {

ArenaMap g_arena_map;

// The map is mapped read-only (os::reserve_sparse): untouched pages read as zero and the 128 MiB
// do not count against RLIMIT_DATA. set() makes a page writable the first time a slot on it is
// marked; a page covers 4 GiB of address space, so a heap opens a few. Invariant: a slot's page
// is writable before its byte is written, and stays so (clearing a slot needs no mprotect).
bool ArenaMap::init() noexcept {
  if (kinds_ == nullptr) {
    void* p = os::reserve_sparse(kSlotCount, os::page_size());
    if (!p) return false;
    kinds_ = static_cast<std::atomic<std::uint8_t>*>(p);
  }
  limit_.store(kSlotCount, std::memory_order_release);  // publishes kinds_
  return true;
}

bool ArenaMap::make_writable(std::uintptr_t first, std::uintptr_t last) noexcept {
  const std::size_t page = os::page_size();
  const std::size_t chunk_bytes = page > 4096 ? page : 4096;
  for (std::uintptr_t chunk = first / 4096; chunk <= last / 4096; ++chunk) {
    const std::uint64_t bit = std::uint64_t{1} << (chunk % 64);
    if (writable_[chunk / 64].load(std::memory_order_acquire) & bit) continue;
    // Two threads may open the same page at once: mprotect is idempotent.
    auto* start = reinterpret_cast<char*>(kinds_) + (chunk * 4096 / chunk_bytes) * chunk_bytes;
    if (!os::make_writable(start, chunk_bytes)) return false;
    writable_[chunk / 64].fetch_or(bit, std::memory_order_release);
  }
  return true;
}

bool ArenaMap::set(SlotKind kind, const void* p, std::size_t size) noexcept {
  std::uintptr_t first = reinterpret_cast<std::uintptr_t>(p) >> kSlotShift;
  std::uintptr_t last = (reinterpret_cast<std::uintptr_t>(p) + size - 1) >> kSlotShift;
  if (!make_writable(first, last)) return false;
  for (std::uintptr_t slot = first; slot <= last; ++slot)
    kinds_[slot].store(tag(kind), std::memory_order_release);
  return true;
}

void ArenaMap::clear(const void* p, std::size_t size) noexcept {
  std::uintptr_t first = reinterpret_cast<std::uintptr_t>(p) >> kSlotShift;
  std::uintptr_t last = (reinterpret_cast<std::uintptr_t>(p) + size - 1) >> kSlotShift;
  for (std::uintptr_t slot = first; slot <= last; ++slot)
    kinds_[slot].store(0, std::memory_order_release);
}

}  // namespace trimalloc
