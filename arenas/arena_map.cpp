#include "arena_map.h"

#include <sys/resource.h>

#include "os.h"

namespace trimalloc {

ArenaMap g_arena_map;

namespace {
// The map must be a window when the address-space limit would feel its 128 MiB.
bool address_space_limited() noexcept {
  rlimit limit;
  return getrlimit(RLIMIT_AS, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY &&
         limit.rlim_cur < kFullMapMinLimit;
}
}  // namespace

// The map is mapped read-only (os::reserve_sparse): untouched pages read as zero and the table
// does not count against RLIMIT_DATA. set() makes a page writable the first time a slot on it is
// marked; a page covers 4 GiB of address space, so a heap opens a few. Invariant: a slot's page
// is writable before its byte is written, and stays so (clearing a slot needs no mprotect).
// The window is centred on the table itself: the table is the mapping made by the process
// just now, so the process's other mappings, and the next ones, lie around it.
bool ArenaMap::init() noexcept {
  // Made once, at start-up; after that no caller takes the lock (so a fork() can never leave it
  // held for a child).
  if (count_.load(std::memory_order_acquire) != 0) return true;
  LockGuard guard(init_lock_);
  if (kinds_ != nullptr) return true;
  void* p = address_space_limited() ? nullptr : os::reserve_sparse(kSlotCount, os::page_size());
  if (!p) return window_locked();  // limited, or the full map refused
  kinds_ = static_cast<std::atomic<std::uint8_t>*>(p);
  count_.store(kSlotCount, std::memory_order_release);  // publishes kinds_ (base_ stays 0)
  return true;
}

bool ArenaMap::init_window() noexcept {
  LockGuard guard(init_lock_);
  return window_locked();
}

bool ArenaMap::window_locked() noexcept {
  if (kinds_ != nullptr) return true;
  std::size_t count = 2 * kWindowSpan >> kSlotShift;
  void* p = os::reserve_sparse(count, os::page_size());
  if (!p) return false;
  const auto centre = reinterpret_cast<std::uintptr_t>(p) & ~(kSlotSize - 1);
  const std::uintptr_t base = centre > kWindowSpan ? centre - kWindowSpan : 0;
  const std::size_t to_top = ((std::uintptr_t{1} << kAddressBits) - base) >> kSlotShift;
  if (count > to_top) count = to_top;
  kinds_ = static_cast<std::atomic<std::uint8_t>*>(p);
  base_ = base;
  count_.store(count, std::memory_order_release);  // publishes kinds_ and base_
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
  const auto start = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t count = count_.load(std::memory_order_acquire);
  if (start < base_ || size == 0 || ((start - base_) >> kSlotShift) >= count ||
      ((start - base_ + size - 1) >> kSlotShift) >= count)
    return false;  // outside the window (or before init)
  std::uintptr_t first = (start - base_) >> kSlotShift;
  std::uintptr_t last = (start - base_ + size - 1) >> kSlotShift;
  if (!make_writable(first, last)) return false;
  for (std::uintptr_t slot = first; slot <= last; ++slot)
    kinds_[slot].store(tag(kind), std::memory_order_release);
  return true;
}

void ArenaMap::clear(const void* p, std::size_t size) noexcept {
  std::uintptr_t first = (reinterpret_cast<std::uintptr_t>(p) - base_) >> kSlotShift;
  std::uintptr_t last = (reinterpret_cast<std::uintptr_t>(p) - base_ + size - 1) >> kSlotShift;
  for (std::uintptr_t slot = first; slot <= last; ++slot)
    kinds_[slot].store(0, std::memory_order_release);
}

}  // namespace trimalloc
