// Every mapping of the heap opts out of transparent huge pages (arenas/os.cpp, no_huge_pages;
// jemalloc's own metadata through thp:never in allocator/large.cpp). Under the kernel's "always"
// setting, khugepaged would otherwise fill a released 2 MiB range back in as soon as one 4 KiB
// page of it is live, behind the allocator's back. The kernel marks an opted-out mapping with
// the "nh" flag in /proc/self/smaps whatever the system setting is, so this is checked on any
// kernel with transparent huge pages, not only one set to "always".
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

#include "large.h"
#include "test_support.h"

namespace {
bool kernel_has_huge_pages() {
  return access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) == 0;
}
}  // namespace

TEST(HugePages, EveryBlockLiesInAMappingThatOptsOut) {
  if (!kernel_has_huge_pages()) GTEST_SKIP() << "this kernel has no transparent huge pages";
  std::vector<void*> blocks;
  for (std::size_t size : {16u, 64u, 512u, 600u, 5000u, 100000u, 3u << 20, 20u << 20})
    for (int i = 0; i < 50; ++i) blocks.push_back(tm_malloc(size));
  blocks.push_back(tm_calloc(1, 40u << 20));
  blocks.push_back(tm_aligned_alloc(1u << 21, 1u << 21));
  void* grown = tm_malloc(1000);
  grown = tm_realloc(grown, 6u << 20);  // the growth arena's regions
  blocks.push_back(grown);
  const std::vector<tmtest::Mapping> maps = tmtest::mappings();
  std::size_t checked = 0;
  for (void* p : blocks) {
    ASSERT_NE(p, nullptr);
    const tmtest::Mapping* m = tmtest::mapping_of(maps, p);
    ASSERT_NE(m, nullptr) << p << " is in no mapping";
    EXPECT_TRUE(m->has_flag("nh")) << "the mapping " << std::hex << m->start << "-" << m->end
                                   << " of block " << p << " can take huge pages";
    ++checked;
  }
  EXPECT_EQ(checked, blocks.size());
  for (void* p : blocks) tm_free(p);
}

// jemalloc maps its own metadata (base blocks, radix-tree leaves) with MAP_NORESERVE and its
// default hooks; with thp:never it opts those out too. Every private NORESERVE mapping of this
// process is trimalloc's or jemalloc's (the test binary makes none), except the sanitizers'
// shadow memory.
TEST(HugePages, JemallocsOwnMetadataOptsOut) {
  if (!kernel_has_huge_pages()) GTEST_SKIP() << "this kernel has no transparent huge pages";
  tm_free(tm_malloc(100000));  // the large allocator started
  const char* thp = nullptr;
  std::size_t len = sizeof thp;
  ASSERT_EQ(trimalloc::large_mallctl("opt.thp", &thp, &len, nullptr, 0), 0);
  ASSERT_NE(thp, nullptr);
  EXPECT_STREQ(thp, "never");
  if (tmtest::kSanitized) return;
  std::size_t noreserve = 0;
  for (const tmtest::Mapping& m : tmtest::mappings()) {
    if (!m.has_flag("nr")) continue;
    ++noreserve;
    EXPECT_TRUE(m.has_flag("nh")) << "the MAP_NORESERVE mapping " << std::hex << m.start << "-"
                                  << m.end << " can take huge pages";
  }
  EXPECT_GE(noreserve, 2u) << "jemalloc's base blocks and trimalloc's tables were not found";
}
