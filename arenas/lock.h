// A small test-and-test-and-set lock for the allocator's slow paths.
//
// pthread mutexes would do, but this lock is a single byte that can live inside mmap'd metadata
// with no initialisation call, and it never allocates. Holders keep it for short, bounded work
// (moving a pool between lists, carving an arena), so spinning briefly and then yielding is right.
#pragma once
#include <sched.h>

#include <atomic>

namespace trimalloc {

class SpinLock {
 public:
  void lock() noexcept {
    for (int spins = 0;; ++spins) {
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
      while (locked_.load(std::memory_order_relaxed)) {
        if (spins < 64) {
          __builtin_ia32_pause();
          ++spins;
        } else {
          sched_yield();
        }
      }
    }
  }
  bool try_lock() noexcept { return !locked_.exchange(true, std::memory_order_acquire); }
  void unlock() noexcept { locked_.store(false, std::memory_order_release); }
  // After fork() the child has one thread; a lock held by a vanished thread is simply reset.
  void reset_after_fork() noexcept { locked_.store(false, std::memory_order_relaxed); }

 private:
  std::atomic<bool> locked_{false};
};

class LockGuard {
 public:
  explicit LockGuard(SpinLock& l) noexcept : l_(l) { l_.lock(); }
  ~LockGuard() { l_.unlock(); }
  LockGuard(const LockGuard&) = delete;
  LockGuard& operator=(const LockGuard&) = delete;

 private:
  SpinLock& l_;
};

}  // namespace trimalloc
