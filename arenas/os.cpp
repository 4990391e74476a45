#include "os.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

namespace trimalloc::os {
namespace {
std::atomic<std::size_t> g_reserved{0};
std::atomic<long> g_failures{0};

bool injected_failure() noexcept {
  long n = g_failures.load(std::memory_order_relaxed);
  while (n != 0) {
    if (n < 0) return true;
    if (g_failures.compare_exchange_weak(n, n - 1, std::memory_order_relaxed)) return true;
  }
  return false;
}
}  // namespace

std::size_t page_size() noexcept {
  static const std::size_t size = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return size;
}

void* reserve_aligned(std::size_t size, std::size_t alignment) noexcept {
  if (injected_failure()) {
    errno = ENOMEM;
    return nullptr;
  }
  // Over-map by `alignment` and cut both ends off: one mmap, two munmaps, no retry loop, and no
  // hint address that could collide with another mapping.
  std::size_t span = size + alignment;
  if (span < size) {
    errno = ENOMEM;
    return nullptr;
  }
  int saved = errno;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) {
    errno = ENOMEM;
    return nullptr;
  }
  errno = saved;
  auto base = reinterpret_cast<std::uintptr_t>(raw);
  std::uintptr_t aligned = (base + alignment - 1) & ~(alignment - 1);
  if (aligned > base) munmap(raw, aligned - base);
  std::uintptr_t end = aligned + size;
  if (base + span > end) munmap(reinterpret_cast<void*>(end), base + span - end);
  g_reserved.fetch_add(size, std::memory_order_relaxed);
  return reinterpret_cast<void*>(aligned);
}

void release(void* p, std::size_t size) noexcept {
  int saved = errno;
  munmap(p, size);
  errno = saved;
  g_reserved.fetch_sub(size, std::memory_order_relaxed);
}

bool purge(void* p, std::size_t size) noexcept {
  int saved = errno;
  bool ok = madvise(p, size, MADV_DONTNEED) == 0;
  errno = saved;
  return ok;
}

std::size_t reserved_bytes() noexcept {
  return g_reserved.load(std::memory_order_relaxed);
}

void inject_reserve_failures(long count) noexcept {
  g_failures.store(count, std::memory_order_relaxed);
}

}  // namespace trimalloc::os
