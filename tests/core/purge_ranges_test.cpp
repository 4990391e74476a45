// os::purge_ranges (arenas/os.h): every listed page is dropped and reads as zero afterwards,
// pages between the ranges keep their contents - with one process_madvise per batch where the
// kernel has it, and range by range where it does not (forced with the test hook).
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vector>

#include "os.h"

using namespace trimalloc;

namespace {
void check_purge(std::size_t pages) {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  char* p = static_cast<char*>(
      mmap(nullptr, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(p, MAP_FAILED);
  for (std::size_t i = 0; i < pages; ++i) p[i * page] = 7;
  // Every other page, listed in reverse order (purge_ranges must not depend on order).
  std::vector<os::Range> ranges;
  for (std::size_t i = pages; i-- > 0;)
    if (i % 2 == 0) {
      auto start = reinterpret_cast<std::uintptr_t>(p + i * page);
      ranges.push_back({start, start + page});
    }
  os::purge_ranges(ranges.data(), ranges.size());
  std::vector<unsigned char> resident(pages);
  ASSERT_EQ(mincore(p, pages * page, resident.data()), 0);
  for (std::size_t i = 0; i < pages; ++i) {
    if (i % 2 == 0) {
      EXPECT_EQ(resident[i] & 1, 0) << "page " << i << " still resident";
      EXPECT_EQ(p[i * page], 0) << "page " << i;
    } else {
      EXPECT_EQ(resident[i] & 1, 1) << "page " << i << " was dropped";
      EXPECT_EQ(p[i * page], 7) << "page " << i;
    }
  }
  munmap(p, pages * page);
}
}  // namespace

// 1500 listed ranges: more than one batch of 512.
TEST(PurgeRanges, DropsExactlyTheListedPages) {
  check_purge(3000);
}

TEST(PurgeRanges, RangeByRangeFallbackDropsTheSamePages) {
  os::disable_batched_purge();
  check_purge(3000);
}
