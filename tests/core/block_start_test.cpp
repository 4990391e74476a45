// is_block_start() (arenas/pool.h) replaces a division by one multiply and one compare on every
// free(); its argument holds for sizes up to 512 and offsets inside a 16 KiB pool. Check it
// exhaustively: for every class and every offset, it must say yes exactly for the starts of the
// pool's blocks, and no for everything in a free pool.
#include <gtest/gtest.h>

#include "heap.h"
#include "pool.h"

using namespace trimalloc;

TEST(BlockStart, AcceptsExactlyTheBlockStartsOfEveryClass) {
  for (unsigned cls = 0; cls < kClassCount; ++cls) {
    const std::uint32_t size = static_cast<std::uint32_t>(class_block_size(cls));
    Pool pool{};
    set_block_geometry(&pool, size);
    ASSERT_EQ(pool.capacity, kPoolSize / size);
    std::size_t accepted = 0;
    for (std::uintptr_t offset = 0; offset < kPoolSize; ++offset) {
      bool start = offset % size == 0 && offset / size < pool.capacity;
      ASSERT_EQ(is_block_start(&pool, offset), start) << "size " << size << " offset " << offset;
      accepted += start;
    }
    EXPECT_EQ(accepted, pool.capacity) << "size " << size;
  }
}

TEST(BlockStart, NothingInAFreePoolIsABlock) {
  Pool pool{};  // what a released pool's header reads as (arena.cpp zeroes these fields)
  for (std::uintptr_t offset = 0; offset < kPoolSize; offset += 16)
    ASSERT_FALSE(is_block_start(&pool, offset)) << offset;
}

// The sized frees compare sized_block_size() (arenas/heap.h) with the pool's block size instead
// of looking the class up: both must name the same block for every size and alignment, and a
// request the pools do not serve must match no pool.
TEST(SizedFree, BlockSizeAgreesWithTheClassMap) {
  for (std::size_t alignment = 0; alignment <= 4096; alignment = alignment ? 2 * alignment : 1) {
    for (std::size_t size = 0; size <= 2 * kSmallMax; ++size) {
      const unsigned cls = aligned_class_of(size, alignment ? alignment : 1);
      const std::size_t block = sized_block_size(size, alignment);
      if (cls < kClassCount) {
        ASSERT_EQ(block, class_block_size(cls)) << size << " at " << alignment;
      } else {
        ASSERT_GT(block, kSmallMax) << size << " at " << alignment;
      }
    }
  }
}
