// Placement (issue 3): an allocation that needs a new pool takes the fullest available pool of its
// class, so that emptier pools drain and go back to their arenas; TRIMALLOC_PLACEMENT=0 (option
// "placement") takes the first pool in list order instead. Each case runs in a fresh thread, so
// that its heap holds only the pools the case makes.
#include <gtest/gtest.h>
#include <trimalloc/trimalloc.h>

#include <cstdint>
#include <map>
#include <thread>
#include <vector>

#include "pool.h"  // arenas/: the pool geometry

namespace {
constexpr std::size_t kSize = 496;  // class 30
constexpr std::size_t kPerPool = trimalloc::kPoolSize / kSize;
std::uintptr_t pool_id(void* p) {
  return reinterpret_cast<std::uintptr_t>(p) >> trimalloc::kPoolShift;
}

// Fills three pools, then leaves one nearly empty (A: 3 live) and one nearly full (B: 3 free),
// freeing B's blocks first so that A ends up first in the heap's list. Returns which pool the
// next allocations come from: 'A', 'B' or '?'.
char next_pool_after_draining(long placement) {
  char answer = '?';
  std::thread t([&] {
    EXPECT_EQ(tm_option_set("placement", placement), 0);
    std::vector<void*> blocks;
    for (std::size_t i = 0; i < 3 * kPerPool; ++i) blocks.push_back(tm_malloc(kSize));
    std::map<std::uintptr_t, std::vector<void*>> by_pool;
    for (void* p : blocks) by_pool[pool_id(p)].push_back(p);
    // The premise: three pools of this class, each full.
    ASSERT_EQ(by_pool.size(), 3u);
    for (auto& [id, v] : by_pool) ASSERT_EQ(v.size(), kPerPool);
    auto it = by_pool.begin();
    std::vector<void*>& a = it->second;
    std::vector<void*>& b = (++it)->second;
    std::uintptr_t a_id = pool_id(a[0]), b_id = pool_id(b[0]);
    for (std::size_t i = 0; i < 3; ++i) tm_free(b[i]);             // B: all but 3 live
    for (std::size_t i = 0; i < kPerPool - 3; ++i) tm_free(a[i]);  // A: 3 live
    // The hardened build's quarantine (and the valgrind build's queue) delays frees; the fast
    // trim hands them to their pools, and releases nothing here (no pool is empty).
    tm_trim(TM_TRIM_FAST);
    std::vector<void*> fresh;
    for (int i = 0; i < 3; ++i) fresh.push_back(tm_malloc(kSize));
    bool all_a = true, all_b = true;
    for (void* p : fresh) {
      all_a = all_a && pool_id(p) == a_id;
      all_b = all_b && pool_id(p) == b_id;
    }
    answer = all_b ? 'B' : all_a ? 'A' : '?';
    // Free everything, so no pool of this class outlives the thread (none is abandoned).
    for (void* p : fresh) tm_free(p);
    for (std::size_t i = 3; i < kPerPool; ++i) tm_free(b[i]);
    for (std::size_t i = kPerPool - 3; i < kPerPool; ++i) tm_free(a[i]);
    for (void* p : (++it)->second) tm_free(p);
  });
  t.join();
  EXPECT_EQ(tm_option_set("placement", 1), 0);
  return answer;
}
}  // namespace

TEST(Placement, BlocksComeFromTheFullestPoolOfTheClass) {
  EXPECT_EQ(next_pool_after_draining(1), 'B');
}

TEST(Placement, PlacementZeroTakesTheFirstPoolInsteadForComparison) {
  EXPECT_EQ(next_pool_after_draining(0), 'A');
}

TEST(Placement, OptionAcceptsOnlyZeroAndOne) {
  long long v = -1;
  ASSERT_EQ(tm_option_get("placement", &v), 0);
  EXPECT_EQ(v, 1);
  EXPECT_EQ(tm_option_set("placement", 2), EINVAL);
  EXPECT_EQ(tm_option_set("placement", -1), EINVAL);
}
