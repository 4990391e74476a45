// Which 1 MiB slots of the address space are trimalloc's, and whose.
//
// free(p) must decide, for any p, "small block, large (jemalloc) block, or not ours" without
// reading memory p might not own. Small arenas are regions of 1..8 MiB (pool.h) aligned to their
// size, and the regions trimalloc hands to its jemalloc arena are 1 MiB-aligned and sized in
// whole MiB, so one byte per 1 MiB slot (0, or the SlotKind + 1 of its owner) answers each
// question: a flat byte map for the 47-bit user address space is 128 MiB of address space,
// reserved once with MAP_NORESERVE; only the pages covering slots in use are ever touched (one
// 4 KiB page of the map covers 4 GiB of heap). A lookup is one compare against the map's limit
// and one compare of a byte in memory: free()'s ownership check is three instructions shorter
// than with a bitmap (a load, a shift and a bit test), for 96 MiB more of untouched address space.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "config.h"
#include "relaxed.h"

namespace trimalloc {

inline constexpr unsigned kSlotShift = 20;  // 1 MiB
inline constexpr std::size_t kSlotSize = std::size_t{1} << kSlotShift;
inline constexpr unsigned kAddressBits = 47;
inline constexpr std::size_t kSlotCount = std::size_t{1} << (kAddressBits - kSlotShift);

enum class SlotKind : std::uint8_t { kSmall = 0, kLarge = 1 };

class ArenaMap {
 public:
  // Reserves the map; false if the kernel refused (then nothing is ever "ours").
  bool init() noexcept;

  bool contains(SlotKind kind, const void* p) const noexcept {
    std::uintptr_t slot = reinterpret_cast<std::uintptr_t>(p) >> kSlotShift;
    // One compare rejects addresses past the user address space and, since limit_ is 0 until
    // the map exists, every address before init(): nothing can be ours then.
    if (!below_limit(slot)) return false;
    return relaxed_equals(kinds_[slot], tag(kind));
  }
  // Calls fn(slot address) for every slot of `kind` lying wholly inside [lo, hi), reading the
  // map eight slots at a time: a mapping of terabytes (a runtime's reservation) costs a few
  // hundred thousand word reads, not a lookup per slot.
  template <typename Fn>
  void for_each_slot(SlotKind kind, std::uintptr_t lo, std::uintptr_t hi, Fn&& fn) const noexcept {
    std::uintptr_t end = hi >> kSlotShift;  // slots [first, end) end at or before hi
    std::uintptr_t limit = limit_.load(std::memory_order_acquire);
    if (end > limit) end = limit;
    const std::uint8_t want = tag(kind);
    for (std::uintptr_t slot = (lo + kSlotSize - 1) >> kSlotShift; slot < end;) {
#if !defined(__SANITIZE_THREAD__)
      // Eight slots in one relaxed load. (TSan would take this load and set()'s byte stores
      // for a race, since it models atomics of one size: its builds read byte by byte.)
      if ((slot & 7) == 0 && slot + 8 <= end) {
        const auto* word = reinterpret_cast<const std::uint64_t*>(&kinds_[slot]);
        if (__atomic_load_n(word, __ATOMIC_RELAXED) == 0) {
          slot += 8;
          continue;
        }
      }
#endif
      if (kinds_[slot].load(std::memory_order_relaxed) == want) fn(slot << kSlotShift);
      ++slot;
    }
  }
  // Marks every slot of [p, p + size) as `kind`'s; p is slot-aligned. False (nothing marked)
  // when the map's page for a slot could not be made writable: the caller cannot register the
  // memory and must give it back.
  [[nodiscard]] bool set(SlotKind kind, const void* p, std::size_t size) noexcept;
  // Marks those slots as nobody's again (their pages are writable: set() opened them).
  void clear(const void* p, std::size_t size) noexcept;

 private:
  static std::uint8_t tag(SlotKind kind) noexcept {
    return static_cast<std::uint8_t>(kind) + 1;
  }
  // slot < limit_, as one compare with limit_ in memory. limit_ is an acquire load: it
  // publishes kinds_ (init() stores it last), so the asm clobbers memory to keep the compiler
  // from reading kinds_ before it; x86 orders the loads themselves.
  bool below_limit(std::uintptr_t slot) const noexcept {
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
    bool below;
    asm volatile("cmpq %2, %1" : "=@ccb"(below) : "r"(slot), "m"(limit_) : "memory");
    return below;
#else
    return slot < limit_.load(std::memory_order_acquire);
#endif
  }

  // Opens the map's pages holding slots [first, last] for writing (see init()).
  bool make_writable(std::uintptr_t first, std::uintptr_t last) noexcept;

  std::atomic<std::uint8_t>* kinds_ = nullptr;
  std::atomic<std::uintptr_t> limit_{0};  // kSlotCount once the map is mapped
  // One bit per 4 KiB of the map: already writable. (With bigger pages, one bit per page.)
  static constexpr std::size_t kMapChunks = kSlotCount / 4096;
  std::atomic<std::uint64_t> writable_[kMapChunks / 64] = {};
};

extern TM_INTERNAL ArenaMap g_arena_map;

}  // namespace trimalloc
