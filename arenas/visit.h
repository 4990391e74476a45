// Visits: acting as another thread's heap owner while that thread is outside the allocator.
//
// The owner half of the handshake is ThreadHeap::enter()/leave() (heap.h). The visitor half
// needs a store-load fence executed on the OWNER's CPU; membarrier(2) with
// MEMBARRIER_CMD_PRIVATE_EXPEDITED provides exactly that (IPIs to the CPUs currently running
// this process's threads), so the owner's fast path needs no fence at all. Registration happens
// once at start-up; without it (old kernel, seccomp) visits_supported() is false and memory
// held by idle threads is returned at their next slow path or exit instead.
#pragma once
#include <cstddef>

namespace trimalloc {

class ThreadHeap;

void visits_init() noexcept;  // registers with membarrier; call once, early
bool visits_supported() noexcept;
// The process-wide store-load fence on every running thread (no-op under TSan).
void asymmetric_fence_heavy() noexcept;

// Runs fn(heap) as the heap's owner if the heap is live and its owner is outside the allocator;
// returns false (fn not run) otherwise. One visitor at a time (visit lock, also held over fork).
template <typename Fn>
bool visit_heap(ThreadHeap* heap, Fn&& fn) noexcept;

void visit_lock() noexcept;
bool visit_try_lock() noexcept;
void visit_unlock() noexcept;
void visit_reset_after_fork() noexcept;

}  // namespace trimalloc

#include "heap.h"

namespace trimalloc {
template <typename Fn>
bool visit_heap(ThreadHeap* heap, Fn&& fn) noexcept {
  if (!visits_supported() || !heap->live.load(std::memory_order_acquire)) return false;
  if (!heap->begin_visit()) return false;
  fn(heap);
  heap->end_visit();
  return true;
}
}  // namespace trimalloc
