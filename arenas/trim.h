// Giving small-object memory back to the OS: the policy over pools, heaps and arenas.
//
// Where free memory hides, from cheapest to dearest to reach:
//   1. free pools already back in their arena, pages still resident ("dirty")  -> purge;
//   2. arenas with no pool in use                                                -> munmap;
//   3. pools that became empty while a heap kept them (one per class is kept)   -> to arena;
//   4. free pages inside pools that still hold live blocks                      -> page release
//      (pool_release_free_pages: make the page dormant, then madvise it);
//   5. the same in pools of abandoned heaps (exited threads)     -> under the abandoned lock;
//   6. the same in pools of OTHER live threads                   -> only by visiting (visit.h).
// Levels of trim_small(): kFast = 1,2,3 (own heap) and 5 without pages; kFull = all but 6;
// kAll = everything. The decay pass does 1,2 for memory idle longer than the decay time and
// 4,5,6 for heaps idle that long, so a program that frees and then sleeps shrinks by itself.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "config.h"

namespace trimalloc {

class ThreadHeap;

enum class TrimLevel { kFast = 0, kFull = 1, kAll = 2 };

// Bytes given back to the OS by this call.
std::size_t trim_small(TrimLevel level) noexcept;

// The out-of-memory retry's trim (g_on_out_of_memory, and large blocks' retry): kFast, plus
// level 3 of every other live heap (the empty pools it keeps, one per class, by visiting it; no
// page scans), so that an arena only another thread's kept pools hold is unmapped too. A heap
// busy in the allocator is skipped. The visits wait for the visit lock for at most a few
// milliseconds: its holder may be this very thread (an allocating fork prepare handler runs
// while it is held), and an out-of-memory path must not hang. Bytes given back.
std::size_t trim_small_for_address_space() noexcept;

// The decay pass visits an idle heap only if at least this much could come back from it in
// free blocks of its pools, or (hardened build) if its quarantine holds anything.
inline constexpr std::size_t kVisitWorthBytes = 64 * 1024;

struct DecayResult {
  std::size_t released = 0;    // bytes given back
  std::size_t dirty_left = 0;  // free pool bytes still resident in arenas
  bool work_left = false;      // something will become old enough later: keep ticking
};
// One pass of the decay thread: returns memory idle for at least decay_ms.
DecayResult decay_small(std::uint64_t decay_ms) noexcept;

// Resident bytes of free pools in arenas (the "cache" TRIMALLOC_MAX_CACHED bounds).
std::size_t dirty_small_bytes() noexcept;

// True if some other live heap's quarantine holds a block: work for the decay pass once that
// heap is idle (always false in the default build, which has no quarantine).
bool quarantine_worth_a_visit() noexcept;

// Hooks the allocator layer installs (the engine does not depend on it):
// g_on_dirty_pool runs, outside any allocator lock, when a pool goes back to its arena dirty
// (enforce the cache cap, wake the decay thread). It must not create threads: glibc frees
// TLS blocks while holding its stack-cache lock, which pthread_create takes.
// g_on_maintenance runs at the top of an allocation slow path whenever g_maintenance_requested
// is set: a safe point to start the decay thread (glibc never mallocs under that lock).
// g_on_heap_growth runs, under the arena lock, each time the pools in use reach a multiple of
// kGrowthStepPools (2 MiB): it may only set flags.
// g_on_out_of_memory runs, outside any allocator lock, when a new arena could not be mapped:
// it gives back address space held elsewhere (free large blocks, and the empty pools of this
// thread's heap and of other live heaps: the caller must hold no pool and no allocator lock)
// and returns true if the arena is worth trying once more.
// g_keep_empty_arenas runs, under the arena lock, when an arena with resident pages empties:
// true if something will give it back later (the decay thread runs, or decay is off, so the
// program asked to keep memory), so it may stay mapped for reuse. Otherwise (no hook, or no
// thread: a heap too small to be worth one) it is unmapped at once, as before there was a
// cache. It may only read flags.
// g_on_visited_heap runs as the owner of each heap the out-of-memory trim and TM_TRIM_ALL visit,
// and each idle heap the decay pass visits with a quarantine worth it (quarantined_bytes), before
// its pools are trimmed: the hardened build empties the heap's quarantine there. Blocks
// it frees into that heap's pools arrive as remote frees, which trim_own() collects.
extern void (*g_on_dirty_pool)() noexcept;
extern void (*g_on_visited_heap)(ThreadHeap* heap) noexcept;
extern bool (*g_on_out_of_memory)() noexcept;
extern bool (*g_keep_empty_arenas)() noexcept;
extern TM_INTERNAL void (*g_on_maintenance)() noexcept;
extern void (*g_on_heap_growth)() noexcept;
extern TM_INTERNAL std::atomic<bool> g_maintenance_requested;

}  // namespace trimalloc
