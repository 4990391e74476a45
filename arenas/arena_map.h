// Which 1 MiB slots of the address space are trimalloc's.
//
// free(p) must decide, for any p, "small block, large (jemalloc) block, or not ours" without
// reading memory p might not own. Small arenas are regions of 1..8 MiB (pool.h) aligned to their
// size, and the regions trimalloc hands to its jemalloc arena are 1 MiB-aligned and sized in
// whole MiB, so one bit per 1 MiB slot answers each question: a flat bitmap for the 47-bit user
// address space is 16 MiB of address space, reserved once with MAP_NORESERVE; only the pages
// covering slots in use are ever touched (4 KiB of bitmap covers 32 GiB of heap). Lookups are one
// load and one bit test.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "config.h"

namespace trimalloc {

inline constexpr unsigned kSlotShift = 20;  // 1 MiB
inline constexpr std::size_t kSlotSize = std::size_t{1} << kSlotShift;
inline constexpr unsigned kAddressBits = 47;
inline constexpr std::size_t kSlotCount = std::size_t{1} << (kAddressBits - kSlotShift);

enum class SlotKind { kSmall = 0, kLarge = 1 };

class ArenaMap {
 public:
  // Reserves the bitmaps; false if the kernel refused (then nothing is ever "ours").
  bool init() noexcept;

  bool contains(SlotKind kind, const void* p) const noexcept {
    std::uintptr_t slot = reinterpret_cast<std::uintptr_t>(p) >> kSlotShift;
    // One compare rejects addresses past the user address space and, since limit_ is 0 until
    // both bitmaps exist, every address before init(): nothing can be ours then.
    if (slot >= limit_.load(std::memory_order_acquire)) return false;
    const std::atomic<std::uint64_t>* bits = bits_[static_cast<int>(kind)];
    return (bits[slot >> 6].load(std::memory_order_relaxed) >> (slot & 63)) & 1;
  }
  // Calls fn(slot address) for every slot of `kind` lying wholly inside [lo, hi), reading the
  // bitmap a word (64 slots) at a time: a mapping of terabytes (a sanitizer's shadow, a
  // runtime's reservation) costs a few hundred thousand word reads, not a lookup per slot.
  template <typename Fn>
  void for_each_slot(SlotKind kind, std::uintptr_t lo, std::uintptr_t hi, Fn&& fn) const noexcept {
    std::uintptr_t end = hi >> kSlotShift;  // slots [first, end) end at or before hi
    std::uintptr_t limit = limit_.load(std::memory_order_acquire);
    if (end > limit) end = limit;
    const std::atomic<std::uint64_t>* bits = bits_[static_cast<int>(kind)];
    for (std::uintptr_t slot = (lo + kSlotSize - 1) >> kSlotShift; slot < end;) {
      std::uint64_t word = bits[slot >> 6].load(std::memory_order_relaxed) >> (slot & 63);
      if (word == 0) {
        slot = (slot | 63) + 1;
        continue;
      }
      slot += static_cast<unsigned>(__builtin_ctzll(word));
      if (slot >= end) break;
      fn(slot << kSlotShift);
      ++slot;
    }
  }
  // Marks or clears every slot of [p, p + size); p is slot-aligned.
  void set(SlotKind kind, const void* p, std::size_t size, bool on) noexcept;

 private:
  std::atomic<std::uint64_t>* bits_[2] = {nullptr, nullptr};
  std::atomic<std::uintptr_t> limit_{0};  // kSlotCount once both bitmaps are mapped
};

extern TM_INTERNAL ArenaMap g_arena_map;

}  // namespace trimalloc
