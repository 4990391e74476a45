// Arenas: 8 MiB regions that pools are cut from, and the global set that hands pools out.
//
// Placement follows CPython's usable_arenas rule: a new pool comes from the arena with the
// FEWEST free pools that still has one, so allocation concentrates in already-busy arenas and
// nearly empty arenas get the chance to drain completely and go back to the OS. Arenas sit in
// buckets by their number of free pools and a 64-bit mask of non-empty buckets finds the
// fullest usable one with a single count-trailing-zeros.
//
// Dirty before clean. A dirty free pool (freed, its pages still resident until decay or a
// trim) is reused before any clean one: taking a clean pool would fault in new pages while the
// dirty ones stay resident beside them, so a program that frees a batch and allocates the next
// would see its RSS double until the decay time. Arenas with a dirty free pool therefore have
// buckets of their own, searched first (fullest first among them); within an arena, too, a
// dirty pool goes first. With 8 MiB arenas this matters: the arena a program's long-lived
// objects share can hold megabytes of clean pools.
//
// Opened as used. An arena is reserved closed (PROT_NONE) and its pool slots are made writable
// only when first handed out, a step of pools at a time: a closed page neither counts against
// a data-segment limit (RLIMIT_DATA) nor is charged to the commit limit under strict overcommit
// (vm.overcommit_memory = 2), so a process that uses 100 KiB of small blocks is charged for a
// MiB of them, not for 8 (glibc's non-main heaps do the same with their 64 MiB reservations).
// New pools are the lowest free slot of their arena unless a dirty one is reused, so the open
// part is a prefix of the arena: two mappings per arena at most, one once it is all open.
//
// All of this runs under one lock, but only on a heap's slow path (once per pool: 256..8192
// allocations), never on malloc's or free's fast path.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "config.h"
#include "lock.h"
#include "pool.h"

namespace trimalloc {

// Overlays the first cache line of pool header 0. That header's second line (block_size,
// start_bound, start_magic...) must stay zero so that no pointer into the metadata slot passes
// is_block_start(); nothing else reads header 0 as a pool.
struct Arena {
  Arena* next;
  Arena* prev;
  std::uint64_t free_pools;   // bit i: slot i is not in use (bits 1..63 only)
  std::uint64_t dirty_pools;  // subset of free_pools whose pages may be resident
  std::uint32_t nfree;        // popcount(free_pools)
  // Slots [0, opened) are read-write, the rest of the mapping is closed (PROT_NONE), where
  // slot 0 counts as open once its header pages are. Pool slots open in order, a step at a
  // time, as they are first handed out (ArenaSet::open_through); none ever closes again.
  std::uint32_t opened;
  // When its last pool in use went back (valid while nfree == kPoolSlotsPerArena). An empty
  // arena with resident pages is free memory like any dirty pool: it decays, it is not unmapped
  // the moment it empties (a program that frees a batch and allocates the next would fault
  // every page in again).
  std::uint64_t emptied_ms;
};
static_assert(kArenaHeaderOffset == 0 && sizeof(Arena) <= 64 && alignof(Pool) == 64,
              "the arena header must fit pool header 0's first cache line, before the fields "
              "is_block_start() reads");

// Pool slots: 1..63, or 1..62 in the hardened build (slot 63 is a guard).
inline constexpr std::uint64_t kAllPoolSlots =
    kSecure ? (~std::uint64_t{1} & ~(std::uint64_t{1} << 63)) : ~std::uint64_t{1};
inline constexpr unsigned kPoolSlotsPerArena = kSecure ? kPoolsPerArena - 2 : kPoolsPerArena - 1;

inline Arena* arena_of(const void* p) noexcept {
  return reinterpret_cast<Arena*>(arena_base_of(p) + kArenaHeaderOffset);
}
inline std::uintptr_t arena_base(const Arena* a) noexcept {
  return reinterpret_cast<std::uintptr_t>(a) - kArenaHeaderOffset;
}
inline Pool* pool_header(const Arena* a, unsigned i) noexcept {
  return reinterpret_cast<Pool*>(arena_base(a) + i * kPoolHeaderSize);
}

// Placement policy (TRIMALLOC_PLACEMENT): 1 (default) takes new pools from the fullest arena and
// blocks from the fullest pool of a class, so that nearly empty arenas and pools drain and can be
// given back; 0 takes the emptiest arena and the first pool that has a block, and exists only so
// that the benchmarks can measure what the policy gains.
extern std::atomic<long long> g_fullest_placement;
// How many candidate pools an allocation slow path compares (heap.cpp).
inline constexpr unsigned kPlacementScan = 8;
// A busy thread's heap asked to shrink (ThreadHeap::shrink_step) releases the free pages of
// this many pools per allocation slow path, once it has held this many free bytes for a
// decay time.
inline constexpr unsigned kShrinkPoolsPerStep = 8;
inline constexpr std::size_t kShrinkWorthBytes = std::size_t{1} << 20;
// Pools in use between two g_on_heap_growth calls (trim.h): 2 MiB.
inline constexpr std::size_t kGrowthStepPools = (std::size_t{2} << 20) / kPoolSize;

struct ArenaCounts {
  std::size_t arenas = 0;  // mapped arenas
  std::size_t pools_in_use = 0;
  std::size_t pools_free_dirty = 0;
  std::size_t pools_free_clean = 0;
  std::size_t arenas_released = 0;  // total munmapped so far
};

class ArenaSet {
 public:
  // A pool initialised for class `cls` and owned by `owner`, or nullptr (errno = ENOMEM). Its
  // pages start dormant; `*resident` gets those that may still be resident from its last use
  // (a dirty pool), which the caller should carve at once (pool_revive_pages), outside the
  // lock: left dormant they would stay resident, counted nowhere and released by nothing.
  Pool* acquire_pool(unsigned cls, ThreadHeap* owner, PageMask* resident) noexcept;
  // Gives an empty pool (used == 0, on no list) back to its arena.
  // `idle`: the pool has sat unused for a decay time already (trim_own: a trim, or a decay
  // visit to a heap idle that long), so the purge that follows may take it at once instead of
  // a decay time from now.
  void release_pool(Pool* pool, bool idle = false) noexcept;
  // Gives back free memory that went free at or before `cutoff_ms`: unmaps such empty arenas,
  // then purges such dirty pools, stopping once at most `keep_bytes` of dirty pools are left
  // (empty arenas go first: they return their headers too, and allocation reuses pools of
  // partly used arenas before it touches an empty one). Returns bytes given back. (Decay, trim
  // and the TRIMALLOC_MAX_CACHED cap use this.)
  std::size_t purge(std::uint64_t cutoff_ms, std::size_t keep_bytes) noexcept;
  ArenaCounts counts() noexcept;
  // Pools of each size class in use now, and the most there have been at once since start-up.
  // Exact: both change only in acquire_pool/release_pool, under the lock (statistics: a true
  // upper bound of each class's peak of live blocks, at no cost to malloc or free).
  void class_pools(std::size_t now[kClassCount], std::size_t peak[kClassCount]) noexcept;
  // Calls fn(pool) for every in-use pool, under the lock (statistics). fn must not allocate.
  template <typename Fn>
  void for_each_pool_in_use(Fn&& fn) noexcept;

  SpinLock& lock() noexcept { return lock_; }
  // Free pools whose pages may be resident (maintained under the lock, read without it).
  std::size_t dirty_pools() const noexcept { return dirty_count_.load(std::memory_order_relaxed); }
  // Bytes of pools in use or free but maybe resident (read without the lock): what the small
  // heap holds. Not the arenas' mapped bytes, which are 8 MiB of address space for one block.
  std::size_t held_bytes() const noexcept {
    return (in_use_count_.load(std::memory_order_relaxed) +
            dirty_count_.load(std::memory_order_relaxed)) *
           kPoolSize;
  }

 private:
  Arena* create_arena() noexcept;
  // Opens the slots from a->opened through slot i (a->opened <= i); false if the kernel
  // refused (errno = ENOMEM), the arena unchanged.
  static bool open_through(Arena* a, unsigned i) noexcept;
  // True if the arena was unmapped as a result.
  bool release_pool_locked(Arena* a, std::uint64_t bit, bool dirty, std::uint64_t now) noexcept;
  void unmap_empty_locked(Arena* a) noexcept;
  // Purges `a`'s dirty free pools that went free at or before cutoff_ms, while more than
  // keep_pools dirty pools are left; bytes. `a` must be off its bucket list (dirty_pools
  // changes).
  std::size_t purge_pools_locked(Arena* a, std::uint64_t cutoff_ms, std::size_t keep_pools,
                                 PurgeBatch& batch) noexcept;
  void bucket_insert(Arena* a) noexcept;
  void bucket_remove(Arena* a) noexcept;

  SpinLock lock_;
  // Arenas by [has a dirty free pool][nfree]; bucket nfree = 0 holds arenas with no free pool.
  // An arena's list is chosen by its state when inserted, so dirty_pools changes only while
  // the arena is off its list.
  Arena* buckets_[2][kPoolsPerArena] = {};
  std::uint64_t nonempty_[2] = {};  // bit n of [k]: buckets_[k][n] != nullptr
  std::size_t arena_count_ = 0;
  std::size_t released_count_ = 0;
  std::atomic<std::size_t> dirty_count_{0};
  std::atomic<std::size_t> in_use_count_{0};  // pools in use (written under the lock)
  std::uint32_t class_pools_[kClassCount] = {};
  std::uint32_t class_pools_peak_[kClassCount] = {};
};

extern ArenaSet g_arenas;

std::uint64_t now_ms() noexcept;  // CLOCK_MONOTONIC_COARSE, for decay stamps

template <typename Fn>
void ArenaSet::for_each_pool_in_use(Fn&& fn) noexcept {
  LockGuard guard(lock_);
  for (const auto& kind : buckets_) {
    for (Arena* head : kind) {
      for (Arena* a = head; a != nullptr; a = a->next) {
        std::uint64_t in_use = kAllPoolSlots & ~a->free_pools;
        while (in_use) {
          unsigned i = static_cast<unsigned>(__builtin_ctzll(in_use));
          in_use &= in_use - 1;
          fn(pool_header(a, i));
        }
      }
    }
  }
}

}  // namespace trimalloc
