#include "large_registry.h"

#include <cstddef>
#include <cstring>

#include "lock.h"
#include "os.h"

namespace trimalloc {
namespace {
constexpr unsigned kShards = 64;

struct Entry {
  std::uintptr_t key;
  LargeState state;
};

struct alignas(64) Shard {
  SpinLock lock;
  Entry* table = nullptr;
  std::size_t capacity = 0;  // power of two
  std::size_t used = 0;      // entries (no tombstones: removal shifts the probe run back)
};
Shard g_shards[kShards];

inline std::uint64_t mix(std::uintptr_t k) {
  std::uint64_t x = k >> 4;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdu;
  x ^= x >> 33;
  return x;
}
inline Shard& shard_of(std::uintptr_t k) {
  return g_shards[mix(k) & (kShards - 1)];
}
inline std::size_t home(const Shard& s, std::uintptr_t k) {
  return (mix(k) >> 6) & (s.capacity - 1);
}

Entry* find(Shard& s, std::uintptr_t k) {
  if (s.capacity == 0) return nullptr;
  for (std::size_t i = home(s, k);; i = (i + 1) & (s.capacity - 1)) {
    Entry& e = s.table[i];
    if (e.key == k) return &e;
    if (e.key == 0) return nullptr;
  }
}

bool grow(Shard& s) {
  std::size_t capacity = s.capacity ? s.capacity * 2 : 256;
  std::size_t bytes = capacity * sizeof(Entry);
  std::size_t page = os::page_size();
  bytes = (bytes + page - 1) & ~(page - 1);
  auto* table = static_cast<Entry*>(os::reserve_aligned(bytes, page));
  if (table == nullptr) return false;
  std::size_t used = 0;
  for (std::size_t i = 0; i < s.capacity; ++i) {
    const Entry& e = s.table[i];
    if (e.key == 0) continue;
    std::size_t j = (mix(e.key) >> 6) & (capacity - 1);
    while (table[j].key != 0) j = (j + 1) & (capacity - 1);
    table[j] = e;
    ++used;
  }
  if (s.table) {
    std::size_t old = (s.capacity * sizeof(Entry) + page - 1) & ~(page - 1);
    os::release(s.table, old);
  }
  s.table = table;
  s.capacity = capacity;
  s.used = used;
  return true;
}

// Removes the entry at i and moves later entries of its probe run back into the gap, so that
// no probe for them passes an empty slot (Knuth's algorithm R). With tombstones instead, a
// table whose blocks come and go filled up with them, and doubled at "half load" while holding
// a handful of live blocks: under a memory limit the doubling failed and so did the allocation,
// with every block freed (ProcessMemory.AThreadsFirstLargeBlockAtTheDataLimitFailsCleanly,
// hardened build).
void remove_at(Shard& s, std::size_t i) {
  const std::size_t mask = s.capacity - 1;
  for (std::size_t j = (i + 1) & mask; s.table[j].key != 0; j = (j + 1) & mask) {
    // The entry at j may fill the gap at i unless its home lies cyclically in (i, j].
    const std::size_t h = home(s, s.table[j].key);
    const bool stays = i < j ? (h > i && h <= j) : (h > i || h <= j);
    if (stays) continue;
    s.table[i] = s.table[j];
    i = j;
  }
  s.table[i] = Entry{0, LargeState::kAbsent};
  --s.used;
}
}  // namespace

bool registry_add(const void* p) noexcept {
  auto k = reinterpret_cast<std::uintptr_t>(p);
  Shard& s = shard_of(k);
  LockGuard guard(s.lock);
  if ((s.used + 1) * 2 > s.capacity && !grow(s)) return false;
  std::size_t i = home(s, k);
  while (s.table[i].key != 0 && s.table[i].key != k) i = (i + 1) & (s.capacity - 1);
  if (s.table[i].key == 0) ++s.used;
  s.table[i] = Entry{k, LargeState::kLive};
  return true;
}

void registry_lock_all() noexcept {
  for (Shard& s : g_shards) s.lock.lock();
}
void registry_unlock_all() noexcept {
  for (Shard& s : g_shards) s.lock.unlock();
}
void registry_reset_after_fork() noexcept {
  for (Shard& s : g_shards) s.lock.reset_after_fork();
}

LargeState registry_state(const void* p) noexcept {
  auto k = reinterpret_cast<std::uintptr_t>(p);
  Shard& s = shard_of(k);
  LockGuard guard(s.lock);
  Entry* e = find(s, k);
  return e ? e->state : LargeState::kAbsent;
}

bool registry_transition(const void* p, LargeState from, LargeState to) noexcept {
  auto k = reinterpret_cast<std::uintptr_t>(p);
  Shard& s = shard_of(k);
  LockGuard guard(s.lock);
  Entry* e = find(s, k);
  if (e == nullptr || e->state != from) return false;
  if (to == LargeState::kAbsent)
    remove_at(s, static_cast<std::size_t>(e - s.table));
  else
    e->state = to;
  return true;
}

}  // namespace trimalloc
