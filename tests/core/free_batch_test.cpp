// tm_free_batch: n frees in one call, with tm_free's semantics and checks (the collector of
// trimalloc::gc frees the blocks of garbage cycles with it). Engine build (tm_* only), so these
// also run under ASan+UBSan and TSan.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "pool.h"
#include "trimalloc/stats.h"
#include "trimalloc/trimalloc.h"

namespace {

std::size_t live_blocks(unsigned cls) {
  tm_stats s;
  EXPECT_EQ(tm_stats_get(&s), 0);
  return s.classes[cls].blocks_live;
}

void batch(const std::vector<void*>& blocks) {
  void (*volatile free_batch)(void* const*, size_t) = &tm_free_batch;
  free_batch(blocks.data(), blocks.size());
}

// "trimalloc: free_batch(): <what> 0x<address>"
std::string re(const char* what) {
  return std::string("trimalloc: free_batch\\(\\): ") + what + "[^\n]* 0x[0-9a-f]+";
}

// Blocks of several classes (more than a pool of one of them, so the batch crosses pools and
// empties some of them), large blocks, an over-aligned one and nulls, in an order that
// alternates between pools. All freed by one call; the classes' live counts return to where
// they were, and the memory is usable again.
TEST(FreeBatch, FreesSmallLargeAlignedAndNullInAnyOrder) {
  std::thread([] {
    constexpr unsigned kClassA = 2;   // 48-byte blocks
    constexpr unsigned kClassB = 18;  // 304-byte blocks
    const std::size_t per_pool_a = trimalloc::kPoolSize / 48;
    const std::size_t before_a = live_blocks(kClassA), before_b = live_blocks(kClassB);
    std::vector<void*> blocks;
    for (std::size_t i = 0; i < 2 * per_pool_a + 100; ++i) blocks.push_back(tm_malloc(40));
    for (int i = 0; i < 1000; ++i) blocks.push_back(tm_malloc(300));
    for (std::size_t size : {600u, 5000u, 100000u, 3000000u}) blocks.push_back(tm_malloc(size));
    blocks.push_back(tm_aligned_alloc(64, 100));
    blocks.push_back(tm_aligned_alloc(4096, 20000));
    for (void* p : blocks) ASSERT_NE(p, nullptr);
    for (void* p : blocks) *static_cast<char*>(p) = 1;
    blocks.insert(blocks.begin() + 7, nullptr);
    blocks.push_back(nullptr);
#if !defined(TRIMALLOC_SECURE) && !TRIMALLOC_VALGRIND  // the valgrind layer pads every block
    EXPECT_EQ(live_blocks(kClassA), before_a + 2 * per_pool_a + 100);
#endif
    std::shuffle(blocks.begin(), blocks.end(), std::mt19937(7));
    batch(blocks);
#if !defined(TRIMALLOC_SECURE) && !TRIMALLOC_VALGRIND
    // (The hardened build's quarantine delays frees on purpose.)
    EXPECT_EQ(live_blocks(kClassA), before_a);
    EXPECT_EQ(live_blocks(kClassB), before_b);
#else
    (void)before_a, (void)before_b;
#endif
    batch({});  // n == 0
    std::vector<void*> again;
    for (std::size_t i = 0; i < 2 * per_pool_a + 100; ++i) again.push_back(tm_malloc(40));
    for (void* p : again) ASSERT_NE(p, nullptr);
    batch(again);
  }).join();
}

// Blocks of another thread's pools (remote frees), mixed with the caller's own. The owner keeps
// running and allocating; the blocks it gets back are writable and the counts settle.
TEST(FreeBatch, FreesBlocksOfAnotherThread) {
  std::vector<void*> theirs;
  std::atomic<int> step{0};
  std::thread owner([&] {
    for (int i = 0; i < 5000; ++i) theirs.push_back(tm_malloc(64));
    step = 1;
    while (step != 2) std::this_thread::yield();
    std::vector<void*> more;
    for (int i = 0; i < 5000; ++i) {
      void* p = tm_malloc(64);
      ASSERT_NE(p, nullptr);
      *static_cast<std::uint64_t*>(p) = i;
      more.push_back(p);
    }
    batch(more);
  });
  while (step != 1) std::this_thread::yield();
  std::vector<void*> mixed;
  for (std::size_t i = 0; i < theirs.size(); ++i) {
    mixed.push_back(theirs[i]);
    if (i % 3 == 0) mixed.push_back(tm_malloc(64));
  }
  batch(mixed);
  step = 2;
  owner.join();
}

using FreeBatchDeathTest = ::testing::Test;

TEST(FreeBatchDeathTest, DoubleFreeWithinOneBatch) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        std::vector<void*> blocks;
        for (int i = 0; i < 10; ++i) blocks.push_back(tm_malloc(48));
        blocks.push_back(blocks[3]);
        batch(blocks);
      },
      re("double free of"));
  // Right after the first free of the block, while it heads its pool's free list.
  EXPECT_DEATH(
      {
        void* keep = tm_malloc(48);
        void* p = tm_malloc(48);
        batch({p, p});
        tm_free(keep);
      },
      re("double free of"));
}

TEST(FreeBatchDeathTest, DoubleFreeAcrossCalls) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        void* keep = tm_malloc(96);
        void* p = tm_malloc(96);
        tm_free(p);
        batch({keep, p});
      },
      re("double free of"));
  EXPECT_DEATH(
      {
        void* keep = tm_malloc(96);
        void* p = tm_malloc(96);
        batch({p});
        tm_free(p);
        tm_free(keep);
      },
      "trimalloc: (tm_)?free\\(\\): double free of[^\n]* 0x[0-9a-f]+");
}

// Blocks of another thread: the mark written by the first free is seen by the second.
TEST(FreeBatchDeathTest, DoubleFreeOfAnotherThreadsBlock) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        void* keep = nullptr;
        void* p = nullptr;
        std::thread([&] {
          keep = tm_malloc(64);
          p = tm_malloc(64);
        }).join();
        batch({p, keep, p});
      },
      re("double free of"));
}

TEST(FreeBatchDeathTest, ForeignAndInteriorPointers) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        char* p = static_cast<char*>(tm_malloc(64));
        void* q = tm_malloc(64);
        batch({q, p + 16});
      },
      re("invalid pointer"));
  EXPECT_DEATH(
      {
        int on_stack = 0;
        void* q = tm_malloc(64);
        batch({q, &on_stack});
      },
      re("invalid pointer"));
}

}  // namespace
