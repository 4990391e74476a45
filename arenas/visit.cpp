#include "visit.h"

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>

#include "heap.h"
#include "lock.h"

namespace trimalloc {
namespace {
std::atomic<bool> g_supported{false};
SpinLock g_visit_lock;

[[maybe_unused]] long membarrier(int cmd) {  // not called in TSan builds
  return syscall(__NR_membarrier, cmd, 0, 0);
}
}  // namespace

void visits_init() noexcept {
#if defined(__SANITIZE_THREAD__)
  g_supported.store(true, std::memory_order_release);  // enter() uses seq_cst operations
#else
  long cmds = membarrier(MEMBARRIER_CMD_QUERY);
  if (cmds > 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
      membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0)
    g_supported.store(true, std::memory_order_release);
#endif
}

bool visits_supported() noexcept {
  return g_supported.load(std::memory_order_acquire);
}

void asymmetric_fence_heavy() noexcept {
#if !defined(__SANITIZE_THREAD__)
  membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
#endif
}

bool ThreadHeap::begin_visit() noexcept {
#if defined(__SANITIZE_THREAD__)
  visited_.store(1, std::memory_order_seq_cst);
  if (busy_.load(std::memory_order_seq_cst) == 0) return true;
#else
  visited_.store(1, std::memory_order_relaxed);
  asymmetric_fence_heavy();
  if (busy_.load(std::memory_order_acquire) == 0) {
    std::atomic_thread_fence(std::memory_order_acquire);
    return true;
  }
#endif
  visited_.store(0, std::memory_order_release);
  return false;
}

void visit_lock() noexcept {
  g_visit_lock.lock();
}
bool visit_try_lock() noexcept {
  return g_visit_lock.try_lock();
}
void visit_unlock() noexcept {
  g_visit_lock.unlock();
}
void visit_reset_after_fork() noexcept {
  g_visit_lock.reset_after_fork();
}

}  // namespace trimalloc
