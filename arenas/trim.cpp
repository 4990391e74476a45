#include "trim.h"

#include <sched.h>

#include "arena.h"
#include "heap.h"
#include "visit.h"

namespace trimalloc {

void (*g_on_dirty_pool)() noexcept = nullptr;
void (*g_on_maintenance)() noexcept = nullptr;
void (*g_on_heap_growth)() noexcept = nullptr;
bool (*g_on_out_of_memory)() noexcept = nullptr;
bool (*g_keep_empty_arenas)() noexcept = nullptr;
void (*g_on_visited_heap)(ThreadHeap*) noexcept = nullptr;
std::atomic<bool> g_maintenance_requested{false};

namespace {
// How long the out-of-memory retry waits for the visit lock (a decay pass holds it briefly).
constexpr std::uint64_t kOutOfMemoryVisitWaitMs = 5;

std::size_t trim_own_heap(bool release_pages) noexcept {
  ThreadHeap* heap = tl_thread.heap;
  if (heap == &g_empty_heap) return 0;
  heap->enter();
  std::size_t released = heap->trim_own(release_pages);
  heap->leave();
  return released;
}

// Visits every other live heap (the caller holds the visit lock) and trims it as its owner:
// the hardened build's hook first (its quarantine), then its kept empty pools and, if
// release_pages, the free pages of its other pools. Bytes released.
std::size_t trim_other_heaps_locked(bool release_pages) noexcept {
  std::size_t released = 0;
  ThreadHeap* self = tl_thread.heap;
  for_each_heap([&](ThreadHeap* h) {
    if (h == self) return;
    visit_heap(h, [&](ThreadHeap* v) {
      if (g_on_visited_heap) g_on_visited_heap(v);
      released += v->trim_own(release_pages);
    });
  });
  return released;
}

std::size_t trim_other_heaps() noexcept {
  visit_lock();
  std::size_t released = trim_other_heaps_locked(true);
  visit_unlock();
  return released;
}

// Level 3 of the other live heaps, for trim_small_for_address_space().
std::size_t give_back_kept_pools_of_other_heaps() noexcept {
  if (!visits_supported()) return 0;
  // A try-lock with a deadline instead of visit_lock(): see trim.h.
  const std::uint64_t deadline = now_ms() + kOutOfMemoryVisitWaitMs;
  while (!visit_try_lock()) {
    if (now_ms() > deadline) return 0;
    sched_yield();
  }
  // No page scans: what the pools held is released by the caller's purge of empty arenas.
  std::size_t released = trim_other_heaps_locked(false);
  visit_unlock();
  return released;
}
}  // namespace

std::size_t trim_small_for_address_space() noexcept {
  std::size_t released = trim_own_heap(false);
  released += trim_abandoned(false);
  released += give_back_kept_pools_of_other_heaps();
  released += g_arenas.purge(UINT64_MAX, 0);
  return released;
}

std::size_t trim_small(TrimLevel level) noexcept {
  bool pages = level != TrimLevel::kFast;
  std::size_t released = trim_own_heap(pages);
  released += trim_abandoned(pages);
  if (level == TrimLevel::kAll) released += trim_other_heaps();
  released += g_arenas.purge(UINT64_MAX, 0);
  return released;
}

std::size_t dirty_small_bytes() noexcept {
  return g_arenas.dirty_pools() * kPoolSize;
}

bool quarantine_worth_a_visit() noexcept {
  bool worth = false;
  ThreadHeap* const self = tl_thread.heap;  // not emptied by a pass of ours (decay_small)
  for_each_heap([&](ThreadHeap* h) {
    worth = worth || (h != self && h->live.load(std::memory_order_acquire) &&
                      h->quarantined_bytes.load(std::memory_order_relaxed) != 0);
  });
  return worth;
}

DecayResult decay_small(std::uint64_t decay_ms) noexcept {
  DecayResult r;
  std::uint64_t now = now_ms();
  std::uint64_t cutoff = now > decay_ms ? now - decay_ms : 0;

  r.released += trim_abandoned(true);

  // Which heaps hold enough free blocks to be worth a visit: one pass over pool headers under
  // the arena lock (racy reads of `used` and `dormant`, good enough for a heuristic). Only
  // carved blocks count: a pool's uncarved pages hold nothing resident, and counting them made
  // every heap with a partly carved pool per class (up to 124 KiB each) look worth a visit, so
  // a busy thread kept the decay thread ticking and was asked to shrink for nothing.
  for_each_heap([](ThreadHeap* h) { h->scan_free_bytes = 0; });
  g_arenas.for_each_pool_in_use([](Pool* p) {
    ThreadHeap* owner = p->owner.load(std::memory_order_relaxed);
    if (owner == nullptr) return;
    std::size_t carved =
        pool_carved_blocks(p->block_size, p->capacity, p->dormant.load(std::memory_order_relaxed));
    std::size_t used = pool_used(p);
    if (carved > used) owner->scan_free_bytes += (carved - used) * p->block_size;
  });
  if (visits_supported()) {
    ThreadHeap* const self = tl_thread.heap;
    visit_lock();
    for_each_heap([&](ThreadHeap* h) {
      if (!h->live.load(std::memory_order_acquire)) return;
      // Hardened build: blocks the quarantine holds come back too once it is emptied. A busy
      // heap's quarantine turns over by itself; an idle one's would stay until a trim or the
      // thread's exit (up to 1 MiB of zeroed, resident blocks per thread). Any quarantine is
      // worth a visit, not only one of kVisitWorthBytes: each of its blocks can keep a page and
      // a pool resident (256 blocks of 16 bytes, 4 KiB, can pin 256 pages), and one visit
      // empties it, so visiting for it is never fruitless twice. Not this thread's own: the
      // hook cannot empty it (below), so counting it would only keep us ticking.
      const std::size_t quarantined =
          h == self ? 0 : h->quarantined_bytes.load(std::memory_order_relaxed);
      const bool worth = quarantined != 0 || h->scan_free_bytes >= kVisitWorthBytes;
      if (h->last_slow_ms.load(std::memory_order_relaxed) > cutoff) {
        // Busy recently, so not visited. If it has held many free bytes for a whole decay
        // time, it gives their pages back itself, on its next slow paths.
        const std::uint64_t since = h->busy_free_since_ms.load(std::memory_order_relaxed);
        if (h->scan_free_bytes < kShrinkWorthBytes) {
          h->busy_free_since_ms.store(0, std::memory_order_relaxed);
        } else if (since == 0) {
          h->busy_free_since_ms.store(now, std::memory_order_relaxed);
        } else if (since <= cutoff) {
          h->shrink_requested.store(true, std::memory_order_relaxed);
          h->busy_free_since_ms.store(0, std::memory_order_relaxed);
        }
        if (worth) r.work_left = true;  // look again
        return;
      }
      h->busy_free_since_ms.store(0, std::memory_order_relaxed);
      if (!worth) return;
      // Nothing new since the last visit found what it could: do not visit again. (A quarantine
      // is new: the last visit emptied it.)
      if (quarantined == 0 && h->scan_free_bytes < h->free_bytes_at_visit + kVisitWorthBytes &&
          h->free_bytes_at_visit != 0)
        return;
      if (!visit_heap(h, [&](ThreadHeap* v) {
            // Never this thread's own (quarantined is 0 for it): the hook frees through the
            // heap, which would wait for its own visit to end (an inline pass,
            // TRIMALLOC_BACKGROUND_THREAD=0, visits its own heap).
            if (quarantined != 0 && g_on_visited_heap) g_on_visited_heap(v);
            r.released += v->trim_own(true);
          })) {
        r.work_left = true;
        return;
      }
      h->free_bytes_at_visit = h->scan_free_bytes;
    });
    visit_unlock();
  }

  r.released += g_arenas.purge(cutoff, 0);
  r.dirty_left = dirty_small_bytes();
  if (r.dirty_left) r.work_left = true;
  return r;
}

}  // namespace trimalloc
