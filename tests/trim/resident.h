// Helpers for trim tests: which of a set of pages are resident (mincore), and RSS.
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <set>
#include <vector>

#include "pool.h"  // arenas/: the pool and arena geometry

namespace trimtest {

inline std::uintptr_t page_of(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) & ~std::uintptr_t{4095};
}
// The small arena (or, for a large block, the arena-sized span) a block lies in.
inline std::uintptr_t arena_start(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) & ~(trimalloc::kArenaSize - 1);
}
inline std::uintptr_t pool_start(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) & ~(trimalloc::kPoolSize - 1);
}

// Resident pages among `pages` (page addresses, each once); an unmapped page (mincore fails)
// counts as not resident.
template <typename Pages>
std::size_t resident_pages(const Pages& pages) {
  std::size_t n = 0;
  for (std::uintptr_t pg : pages) {
    unsigned char v = 0;
    if (mincore(reinterpret_cast<void*>(pg), 4096, &v) == 0 && (v & 1)) ++n;
  }
  return n;
}

inline long rss_kib() {
  long pages = 0, rss = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return -1;
  if (std::fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = -1;
  std::fclose(f);
  return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

// Fills a block with a pattern derived from its address and size, and checks it.
inline void fill(void* p, std::size_t n) {
  auto* b = static_cast<unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i)
    b[i] = static_cast<unsigned char>((reinterpret_cast<std::uintptr_t>(p) >> 4) + i * 7 + n);
}
inline bool check(const void* p, std::size_t n) {
  auto* b = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i)
    if (b[i] != static_cast<unsigned char>((reinterpret_cast<std::uintptr_t>(p) >> 4) + i * 7 + n))
      return false;
  return true;
}

}  // namespace trimtest
