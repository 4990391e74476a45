// is_block_start() (arenas/pool.h) replaces a division by one multiply and one compare on every
// free(); its argument holds for sizes up to 512 and offsets inside a 16 KiB pool. Check it
// exhaustively: for every class and every offset, it must say yes exactly for the starts of the
// pool's blocks, and no for everything in a free pool.
#include <gtest/gtest.h>

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
