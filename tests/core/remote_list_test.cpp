// A pool's remote list carries its length in the list word (arenas/pool.h, Pool::remote), so
// that the owner can take the list as its free list without walking it. These tests check the
// count and the blocks the owner gets back, with the free list empty (the list is taken as it is)
// and not empty (the list is walked to its tail and put in front).
#include <gtest/gtest.h>

#include <set>
#include <thread>
#include <vector>

#include "heap.h"
#include "pool.h"

using namespace trimalloc;

namespace {

constexpr std::size_t kClass = 3;  // 64-byte blocks

// Blocks of one pool: allocates until `count` of them share the first block's pool, and frees
// the others (another test may have left this thread's current pool of the class in any state).
// Gives up after a few pools' worth of blocks, so that a count no pool can hold fails the test
// instead of allocating forever.
std::vector<void*> blocks_of_one_pool(std::size_t count, Pool** pool_out) {
  std::vector<void*> same, other;
  Pool* pool = nullptr;
  const std::size_t attempts = 4 * (kPoolSize / class_block_size(kClass));
  for (std::size_t i = 0; i < attempts && same.size() < count; ++i) {
    void* p = small_alloc(kClass);
    if (p == nullptr) break;
    if (pool == nullptr) pool = pool_of(p);
    (pool_of(p) == pool ? same : other).push_back(p);
  }
  for (void* p : other) small_free(p, "free");
  *pool_out = pool;
  return same;
}

std::set<const void*> free_list_of(const Pool* pool) {
  std::set<const void*> listed;
  for (const Block* b = pool->free; b != nullptr; b = decode_link(pool, b)) listed.insert(b);
  return listed;
}

void free_from_another_thread(const std::vector<void*>& blocks, std::size_t from, std::size_t to) {
  std::thread([&] {
    for (std::size_t i = from; i < to; ++i) small_free(blocks[i], "free");
  }).join();
}

}  // namespace

TEST(RemoteList, TheOwnerTakesEveryBlockAndTheCountWithAndWithoutAFreeList) {
  // In a thread of its own, so that the pool and its lists are this test's alone.
  std::thread([] {
    // Within one pool of the smallest geometry (16 KiB pools hold 256 blocks of 64 bytes).
    constexpr std::size_t kBlocks = 200, kFirst = 80;
    static_assert(kBlocks <= (std::size_t{16} << 10) / 64, "fits a 16 KiB pool");
    Pool* pool = nullptr;
    std::vector<void*> blocks = blocks_of_one_pool(kBlocks, &pool);
    ASSERT_EQ(blocks.size(), kBlocks);

    // Empty free list: the remote list becomes it as it is.
    Block* kept = pool->free;  // owner-only field; set aside and put back below
    pool->free = nullptr;
    const std::uint32_t used_before = pool_used(pool);
    free_from_another_thread(blocks, 0, kFirst);
    EXPECT_EQ(remote_count(pool->remote.load()), kFirst);
    EXPECT_EQ(pool_collect_remote(pool), kFirst);
    EXPECT_EQ(pool_used(pool), used_before - kFirst);
    EXPECT_EQ(remote_head(pool->remote.load()), nullptr);
    EXPECT_EQ(remote_count(pool->remote.load()), 0u);
    std::set<const void*> expected(blocks.begin(), blocks.begin() + kFirst);
    EXPECT_EQ(free_list_of(pool), expected);

    // A free list already there: the remote list goes in front of it.
    free_from_another_thread(blocks, kFirst, kBlocks);
    EXPECT_EQ(remote_count(pool->remote.load()), kBlocks - kFirst);
    EXPECT_EQ(pool_collect_remote(pool), kBlocks - kFirst);
    EXPECT_EQ(pool_used(pool), used_before - kBlocks);
    expected.insert(blocks.begin() + kFirst, blocks.end());
    EXPECT_EQ(free_list_of(pool), expected);

    // Put the set-aside list back behind the collected blocks.
    Block* tail = pool->free;
    while (decode_link(pool, tail) != nullptr) tail = decode_link(pool, tail);
    tail->link = encode_link(pool, kept);
  }).join();
}
