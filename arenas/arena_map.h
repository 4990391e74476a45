// Which 1 MiB slots of the address space are trimalloc's, and whose.
//
// free(p) must decide, for any p, "small block, large (jemalloc) block, or not ours" without
// reading memory p might not own. Small arenas are regions of 1..8 MiB (pool.h) aligned to their
// size, and the regions trimalloc hands to its jemalloc arena are 1 MiB-aligned and sized in
// whole MiB, so one byte per 1 MiB slot (0, or the SlotKind + 1 of its owner) answers each
// question. The map covers a window [base_, base_ + count_ MiB) of the address space:
//  - normally all of it: a flat byte map for the 47-bit user address space is 128 MiB of address
//    space, reserved once with MAP_NORESERVE; only the pages covering slots in use are ever
//    touched (one 4 KiB page of the map covers 4 GiB of heap);
//  - under an address-space limit (RLIMIT_AS, `ulimit -v`) below kFullMapMinLimit those 128 MiB
//    would count against the limit and leave a program nothing (python3 could not start under
//    `ulimit -v 170000`), so the map covers kWindowSpan on either side of itself instead (512 KiB
//    of table). Under such a limit every mapping the process makes lies within a few times the
//    limit of the others (mmap fills the nearest gap), far inside the window; a mapping that
//    falls outside it anyway cannot be registered (set() fails) and is given back: the request
//    that wanted it fails with ENOMEM, nothing is mis-owned.
// A lookup subtracts base_, shifts, compares with count_ and compares one byte in memory: the
// unsigned compare rejects addresses below the window, above it, and (count_ being 0 before init)
// everything before the map exists. A byte map answers in fewer instructions than a bitmap (a
// load, a shift and a bit test) or a radix tree (a dependent load).
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "config.h"
#include "lock.h"
#include "relaxed.h"

namespace trimalloc {

inline constexpr unsigned kSlotShift = 20;  // 1 MiB
inline constexpr std::size_t kSlotSize = std::size_t{1} << kSlotShift;
inline constexpr unsigned kAddressBits = 47;
inline constexpr std::size_t kSlotCount = std::size_t{1} << (kAddressBits - kSlotShift);
// Below this RLIMIT_AS the map is a window (above: 128 MiB is under 1% of the limit).
inline constexpr std::size_t kFullMapMinLimit = std::size_t{16} << 30;
// The window reaches this far below and above the table's own address.
inline constexpr std::size_t kWindowSpan = std::size_t{256} << 30;

enum class SlotKind : std::uint8_t { kSmall = 0, kLarge = 1 };

class alignas(64) ArenaMap {
 public:
  // Reserves the map: all of the address space, or a window under a low RLIMIT_AS or when the
  // kernel refused the full map; false if it refused the window too (then nothing is "ours").
  bool init() noexcept;
  // Reserves a window whatever the limit (init's fallback; tests call it on their own maps).
  bool init_window() noexcept;
  // The covered range [window_base(), window_base() + window_slots() MiB); 0 slots before init.
  std::uintptr_t window_base() const noexcept { return base_; }
  std::size_t window_slots() const noexcept { return count_.load(std::memory_order_acquire); }

  bool contains(SlotKind kind, const void* p) const noexcept {
    // Wraps to a huge index below the window. base_ is written before count_ is published; a
    // reader that sees the new count_ with an old base_ (0) gets an index that is either
    // rejected or inside the table (kinds_ is read after count_): it never reads outside it.
    std::uintptr_t index = (reinterpret_cast<std::uintptr_t>(p) - base_) >> kSlotShift;
    if (!below_count(index)) return false;
    return relaxed_equals(kinds_[index], tag(kind));
  }
  // Calls fn(slot address) for every slot of `kind` lying wholly inside [lo, hi), reading the
  // map eight slots at a time: a mapping of terabytes (a runtime's reservation) costs a few
  // hundred thousand word reads, not a lookup per slot.
  template <typename Fn>
  void for_each_slot(SlotKind kind, std::uintptr_t lo, std::uintptr_t hi, Fn&& fn) const noexcept {
    const std::uintptr_t count = count_.load(std::memory_order_acquire);
    if (count == 0 || hi <= base_) return;
    if (lo < base_) lo = base_;
    // Indexes [first, end) of slots that end at or before hi.
    std::uintptr_t end = (hi - base_) >> kSlotShift;
    if (end > count) end = count;
    const std::uint8_t want = tag(kind);
    for (std::uintptr_t slot = (lo - base_ + kSlotSize - 1) >> kSlotShift; slot < end;) {
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
      if (kinds_[slot].load(std::memory_order_relaxed) == want) fn(base_ + (slot << kSlotShift));
      ++slot;
    }
  }
  // Marks every slot of [p, p + size) as `kind`'s; p is slot-aligned. False (nothing marked)
  // when the range is not wholly inside the window or the map's page for a slot could not be
  // made writable: the caller cannot register the memory and must give it back.
  [[nodiscard]] bool set(SlotKind kind, const void* p, std::size_t size) noexcept;
  // Marks those slots as nobody's again (their pages are writable: set() opened them).
  void clear(const void* p, std::size_t size) noexcept;

 private:
  static std::uint8_t tag(SlotKind kind) noexcept {
    return static_cast<std::uint8_t>(kind) + 1;
  }
  // index < count_, as one compare with count_ in memory. count_ is an acquire load: it
  // publishes kinds_ (init() stores it last), so the asm clobbers memory to keep the compiler
  // from reading kinds_ before it; x86 orders the loads themselves.
  bool below_count(std::uintptr_t index) const noexcept {
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
    bool below;
    asm volatile("cmpq %2, %1" : "=@ccb"(below) : "r"(index), "m"(count_) : "memory");
    return below;
#else
    return index < count_.load(std::memory_order_acquire);
#endif
  }

  bool window_locked() noexcept;  // init_window() under init_lock_
  // Opens the map's pages holding indexes [first, last] for writing (see init()).
  bool make_writable(std::uintptr_t first, std::uintptr_t last) noexcept;

  // The three words every lookup reads, on one cache line (the class is 64-byte aligned).
  std::atomic<std::uint8_t>* kinds_ = nullptr;  // kinds_[i] is the slot at base_ + i MiB
  std::uintptr_t base_ = 0;                     // slot-aligned; 0 for the full map
  std::atomic<std::uintptr_t> count_{0};        // slots in the window once the map is mapped
  // engine_init and large_init each make sure the map exists, possibly at once in two threads.
  SpinLock init_lock_;
  // One bit per 4 KiB of the map: already writable. (With bigger pages, one bit per page.)
  static constexpr std::size_t kMapChunks = kSlotCount / 4096;
  std::atomic<std::uint64_t> writable_[kMapChunks / 64] = {};
};

extern TM_INTERNAL ArenaMap g_arena_map;

}  // namespace trimalloc
