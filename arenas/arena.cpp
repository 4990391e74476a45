#include "arena.h"

#include <time.h>

#include <cerrno>

#include "os.h"
#include "trim.h"

namespace trimalloc {

ArenaSet g_arenas;
std::atomic<long long> g_fullest_placement{1};

std::uint64_t now_ms() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000 +
         static_cast<std::uint64_t>(ts.tv_nsec) / 1000000;
}

void ArenaSet::bucket_insert(Arena* a) noexcept {
  const unsigned kind = a->dirty_pools != 0;
  Arena*& head = buckets_[kind][a->nfree];
  a->prev = nullptr;
  a->next = head;
  if (head) head->prev = a;
  head = a;
  nonempty_[kind] |= std::uint64_t{1} << a->nfree;
}

void ArenaSet::bucket_remove(Arena* a) noexcept {
  const unsigned kind = a->dirty_pools != 0;
  if (a->prev)
    a->prev->next = a->next;
  else
    buckets_[kind][a->nfree] = a->next;
  if (a->next) a->next->prev = a->prev;
  if (buckets_[kind][a->nfree] == nullptr) nonempty_[kind] &= ~(std::uint64_t{1} << a->nfree);
}

// What is opened of slot 0, which holds the pool headers in its first pages and nothing after
// them: all of it, so that headers and open pools are one mapping (a closed gap between them
// would split every arena in two for the kernel); in the hardened build all but its last
// page, a guard against underflows off pool 1.
constexpr std::size_t kHeaderBytes = kSecure ? kPoolSize - kPageSize : kPoolSize;
static_assert(kPoolsPerArena * kPoolHeaderSize <= kPoolSize - kPageSize,
              "the headers end before slot 0's last page");
// Pool slots are opened this many at a time: one mprotect per MiB a heap grows by, not one per
// pool, and never more than a MiB of writable memory the heap has not asked for.
constexpr unsigned kOpenStepPools =
    kPoolSize >= (std::size_t{1} << 20) ? 1 : (std::size_t{1} << 20) / kPoolSize;
// Slots that can ever be opened: the hardened build's last slot is a guard.
constexpr unsigned kOpenableSlots = kSecure ? kPoolsPerArena - 1 : kPoolsPerArena;

bool ArenaSet::open_through(Arena* a, unsigned i) noexcept {
  char* base = reinterpret_cast<char*>(arena_base(a));
  auto open = [&](unsigned end) {
    return os::make_writable(base + std::size_t{a->opened} * kPoolSize,
                             std::size_t{end - a->opened} * kPoolSize);
  };
  unsigned end = a->opened + kOpenStepPools;
  if (end < i + 1) end = i + 1;
  if (end > kOpenableSlots) end = kOpenableSlots;
  // Near a limit a whole step may be refused where the one pool needed is not.
  if (!open(end) && (end == i + 1 || !open(end = i + 1))) return false;
  a->opened = end;
  return true;
}

Arena* ArenaSet::create_arena() noexcept {
  void* mem = os::reserve_closed(kArenaSize, kArenaSize);
  if (!mem) return nullptr;
  // Fresh mmap memory is zero: every pool header reads as kFree with capacity 0. Only the
  // headers and the first pools are opened; the rest of the arena stays closed until used. In
  // the hardened build that leaves the guards closed for good: the last page of slot 0 and the
  // whole last slot (the next arena's headers follow it in memory).
  Arena* a = arena_of(mem);
  if (!os::make_writable(mem, kHeaderBytes)) {  // errno = ENOMEM
    os::release(mem, kArenaSize);
    return nullptr;
  }
  a->free_pools = kAllPoolSlots;
  a->dirty_pools = 0;
  a->nfree = kPoolSlotsPerArena;
  a->opened = 1;
  for (unsigned i = 1; i < kPoolsPerArena; ++i)
    pool_header(a, i)->index = static_cast<std::uint8_t>(i);
  if (!open_through(a, 1) || !g_arena_map.set(SlotKind::kSmall, mem, kArenaSize)) {
    os::release(mem, kArenaSize);
    return nullptr;
  }
  ++arena_count_;
  return a;
}

Pool* ArenaSet::acquire_pool(unsigned cls, ThreadHeap* owner, PageMask* resident) noexcept {
  Pool* pool;
  {
    LockGuard guard(lock_);
    // Arenas with a dirty free pool first (reuse pages still resident rather than fault in
    // new ones while the old wait for decay), then the rest.
    const unsigned kind = (nonempty_[1] & ~std::uint64_t{1}) != 0;
    std::uint64_t usable = nonempty_[kind] & ~std::uint64_t{1};
    Arena* a;
    if (usable) {
      // Buckets are indexed by free pools: the lowest non-empty one holds the fullest arenas.
      a = buckets_[kind][g_fullest_placement.load(std::memory_order_relaxed)
                             ? __builtin_ctzll(usable)
                             : 63 - __builtin_clzll(usable)];
      bucket_remove(a);
    } else {
      a = create_arena();
      if (!a) {
        errno = ENOMEM;
        return nullptr;
      }
    }
    std::uint64_t dirty = a->dirty_pools & a->free_pools;
    unsigned i = static_cast<unsigned>(__builtin_ctzll(dirty ? dirty : a->free_pools));
    // Never the case for a new arena (its first step is open): nothing to undo but the bucket.
    if (i >= a->opened && !open_through(a, i)) {
      bucket_insert(a);
      errno = ENOMEM;
      return nullptr;
    }
    if (dirty) dirty_count_.fetch_sub(1, std::memory_order_relaxed);
    a->free_pools &= ~(std::uint64_t{1} << i);
    a->dirty_pools &= ~(std::uint64_t{1} << i);
    --a->nfree;
    bucket_insert(a);
    pool = pool_header(a, i);
    // A dirty pool's `dormant` is still what it was when the pool went free: its other pages
    // were carved then, and nothing has purged them since (a purge takes the whole pool).
    *resident = dirty ? kAllPagesDormant & ~pool->dormant.load(std::memory_order_relaxed) : 0;
    // Under the lock: statistics and the decay scan read headers of in-use pools holding it.
    pool_init(pool, cls, owner);
    // Every 2 MiB of pools in use: the heap has grown (the decay thread's start is decided on
    // held_bytes(); an arena's mapping is 8 MiB whatever it holds, too coarse a signal).
    std::size_t in_use = in_use_count_.load(std::memory_order_relaxed) + 1;
    in_use_count_.store(in_use, std::memory_order_relaxed);
    if (in_use % kGrowthStepPools == 0 && g_on_heap_growth) g_on_heap_growth();
    if (++class_pools_[cls] > class_pools_peak_[cls]) class_pools_peak_[cls] = class_pools_[cls];
  }
  return pool;
}

void ArenaSet::release_pool(Pool* pool, bool idle) noexcept {
  Arena* a = arena_of(pool);
  // Pages the pool never carved, or already purged, are not resident: only a pool that had a
  // page carved is dirty.
  bool dirty = pool->dormant.load(std::memory_order_relaxed) != kAllPagesDormant;
  std::uint64_t bit = std::uint64_t{1} << pool->index;
  std::uint64_t now = idle ? 0 : now_ms();
  {
    LockGuard guard(lock_);
    // Under the lock, like pool_init: statistics and the decay scan read in-use headers.
    // A released pool reads as invalid to free(): is_block_start() fails with bound 0.
    --class_pools_[pool->size_class];
    in_use_count_.store(in_use_count_.load(std::memory_order_relaxed) - 1,
                        std::memory_order_relaxed);
    pool->capacity = 0;
    pool->block_size = 0;
    pool->start_bound = 0;
    pool->live_bound.store(0, std::memory_order_relaxed);
    pool->start_magic = 0;
    pool->free = nullptr;
    pool->owner.store(nullptr, std::memory_order_relaxed);
    set_state(pool, PoolState::kFree);
    pool->freed_at_ms = now;
    if (release_pool_locked(a, bit, dirty, now)) return;
  }
  if (dirty && g_on_dirty_pool) g_on_dirty_pool();
}

bool ArenaSet::release_pool_locked(Arena* a, std::uint64_t bit, bool dirty,
                                   std::uint64_t now) noexcept {
  bucket_remove(a);
  a->free_pools |= bit;
  if (dirty) {
    a->dirty_pools |= bit;
    dirty_count_.fetch_add(1, std::memory_order_relaxed);
  }
  ++a->nfree;
  if (a->nfree == kPoolSlotsPerArena) {
    a->emptied_ms = now;
    // An empty arena with nothing resident but its headers is not worth keeping beside another
    // empty one. One with dirty pools waits for decay (or the cap) like any dirty pool, if
    // anything will ever give it back (trim.h, g_keep_empty_arenas).
    const bool keep = a->dirty_pools != 0 && g_keep_empty_arenas && g_keep_empty_arenas();
    if (!keep && ((nonempty_[0] | nonempty_[1]) >> kPoolSlotsPerArena)) {
      unmap_empty_locked(a);
      return true;
    }
    // Nothing will give it back later, and it is the only empty arena: the mapping stays (a
    // program hovering at an arena boundary would otherwise map and unmap one each time), its
    // pages go now. An arena is 8 MiB; keeping its pages would keep up to that much resident.
    if (!keep) {
      PurgeBatch batch;  // flushed before the lock is dropped, like every purge
      purge_pools_locked(a, UINT64_MAX, 0, batch);
    }
  }
  bucket_insert(a);
  return false;
}

std::size_t ArenaSet::purge_pools_locked(Arena* a, std::uint64_t cutoff_ms, std::size_t keep_pools,
                                         PurgeBatch& batch) noexcept {
  std::size_t released = 0;
  std::uint64_t dirty = a->dirty_pools & a->free_pools;
  while (dirty && dirty_count_.load(std::memory_order_relaxed) > keep_pools) {
    unsigned i = static_cast<unsigned>(__builtin_ctzll(dirty));
    dirty &= dirty - 1;
    Pool* pool = pool_header(a, i);
    if (pool->freed_at_ms > cutoff_ms) continue;
    batch.add(pool_data(pool), kPoolSize);
    a->dirty_pools &= ~(std::uint64_t{1} << i);
    dirty_count_.fetch_sub(1, std::memory_order_relaxed);
    released += kPoolSize;
  }
  return released;
}

// `a` is empty and on no bucket.
void ArenaSet::unmap_empty_locked(Arena* a) noexcept {
  g_arena_map.clear(reinterpret_cast<void*>(arena_base(a)), kArenaSize);
  dirty_count_.fetch_sub(static_cast<std::size_t>(__builtin_popcountll(a->dirty_pools)),
                         std::memory_order_relaxed);
  os::release(reinterpret_cast<void*>(arena_base(a)), kArenaSize);
  --arena_count_;
  ++released_count_;
}

std::size_t ArenaSet::purge(std::uint64_t cutoff_ms, std::size_t keep_bytes) noexcept {
  std::size_t released = 0;
  LockGuard guard(lock_);
  const std::size_t keep_pools = keep_bytes / kPoolSize;
  auto done = [&] { return dirty_count_.load(std::memory_order_relaxed) <= keep_pools; };
  // Empty arenas first: unmapping returns the metadata slot too. A clean one (no dirty pool)
  // is unmapped whenever it qualifies; the cap (keep_bytes) only limits dirty pools, and one
  // whose unmapping would purge below keep_bytes is left to the pool-by-pool pass (an arena is
  // 63 pools: unmapping it whole would purge up to 8 MiB more than the cap asks).
  auto fits = [&](const Arena* a) {
    std::size_t pools = static_cast<std::size_t>(__builtin_popcountll(a->dirty_pools));
    return dirty_count_.load(std::memory_order_relaxed) >= keep_pools + pools;
  };
  for (Arena* head : {buckets_[0][kPoolSlotsPerArena], buckets_[1][kPoolSlotsPerArena]}) {
    for (Arena* a = head; a != nullptr;) {
      Arena* next = a->next;
      if (a->emptied_ms <= cutoff_ms && (a->dirty_pools == 0 || fits(a))) {
        released += static_cast<std::size_t>(__builtin_popcountll(a->dirty_pools)) * kPoolSize;
        bucket_remove(a);
        unmap_empty_locked(a);
      }
      a = next;
    }
  }
  // Flushed before the guard is dropped: a pool purged here is free, and only this lock
  // hands it out again.
  PurgeBatch batch;
  // Emptiest arenas first: allocation takes pools from the fullest ones, so theirs are the
  // dirty pools reused soonest. Only the dirty buckets hold dirty pools; an arena left with none
  // moves to the clean buckets (it was taken off its list first, so the walk goes on at `next`).
  for (unsigned b = kPoolSlotsPerArena + 1; b-- > 0 && !done();) {
    for (Arena* a = buckets_[1][b]; a != nullptr && !done();) {
      Arena* next = a->next;
      bucket_remove(a);
      released += purge_pools_locked(a, cutoff_ms, keep_pools, batch);
      bucket_insert(a);
      a = next;
    }
  }
  return released;
}

void ArenaSet::class_pools(std::size_t now[kClassCount], std::size_t peak[kClassCount]) noexcept {
  LockGuard guard(lock_);
  for (unsigned c = 0; c < kClassCount; ++c) {
    now[c] = class_pools_[c];
    peak[c] = class_pools_peak_[c];
  }
}

ArenaCounts ArenaSet::counts() noexcept {
  ArenaCounts c;
  LockGuard guard(lock_);
  for (const auto& kind : buckets_) {
    for (Arena* head : kind) {
      for (Arena* a = head; a != nullptr; a = a->next) {
        ++c.arenas;
        std::size_t dirty =
            static_cast<std::size_t>(__builtin_popcountll(a->dirty_pools & a->free_pools));
        c.pools_in_use += kPoolSlotsPerArena - a->nfree;
        c.pools_free_dirty += dirty;
        c.pools_free_clean += a->nfree - dirty;
      }
    }
  }
  c.arenas_released = released_count_;
  return c;
}

}  // namespace trimalloc
