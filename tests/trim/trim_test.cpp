// tm_trim levels (issue 3): each level releases what it promises, no more reach than promised,
// data survives, allocation after a trim works, trim is idempotent, and trimming races safely
// with allocation and remote frees in other threads. Automatic decay is off in this binary
// (decay_tests covers it) so that every release observed here is the trim's own doing.
#include <gtest/gtest.h>
#include <trimalloc/stats.h>
#include <trimalloc/trimalloc.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "resident.h"

using namespace trimtest;

namespace {
struct NoDecay : ::testing::Environment {
  void SetUp() override { ASSERT_EQ(tm_option_set("decay_ms", -1), 0); }
};
const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new NoDecay);

// Allocates `count` blocks of `size` and frees all but every `keep_every`-th (0 = free all).
// Returns survivors; `pages` gets the pages of freed blocks that hold no survivor.
std::vector<void*> sparse_heap(std::size_t count, std::size_t size, std::size_t keep_every,
                               std::set<std::uintptr_t>* free_pages) {
  std::vector<void*> all(count), keep;
  for (auto& p : all) {
    p = tm_malloc(size);
    fill(p, size);
  }
  std::set<std::uintptr_t> live_pages;
  for (std::size_t i = 0; i < count; ++i)
    if (keep_every && i % keep_every == 0) {
      keep.push_back(all[i]);
      // A block may straddle two pages; both hold a live byte.
      live_pages.insert(page_of(all[i]));
      live_pages.insert(page_of(static_cast<char*>(all[i]) + size - 1));
    }
  for (std::size_t i = 0; i < count; ++i)
    if (!(keep_every && i % keep_every == 0)) {
      free_pages->insert(page_of(all[i]));
      free_pages->insert(page_of(static_cast<char*>(all[i]) + size - 1));
    }
  for (auto pg : live_pages) free_pages->erase(pg);
  for (std::size_t i = 0; i < count; ++i)
    if (!(keep_every && i % keep_every == 0)) tm_free(all[i]);
  return keep;
}
}  // namespace

TEST(Trim, InvalidLevelIsEinval) {
  errno = 0;
  EXPECT_EQ(tm_trim(3), 0u);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(tm_trim(-1), 0u);
  EXPECT_EQ(errno, EINVAL);
}

TEST(Trim, FastReturnsFullyFreedMemory) {
  std::set<std::uintptr_t> pages;
  sparse_heap(200000, 64, 0, &pages);  // ~12 MiB, all freed
  tm_trim(TM_TRIM_FAST);
  std::size_t resident = resident_pages(pages);
  // Only one pool may stay: the class's pool that GoogleTest's own objects share (FAST does
  // not scan the pages of a pool in use).
  EXPECT_LE(resident, trimalloc::kPagesPerPool) << "of " << pages.size() << " pages";
}

TEST(Trim, FullReleasesFreePagesOfPartlyUsedPoolsFastDoesNot) {
  std::set<std::uintptr_t> free_pages;
  // 64-byte blocks: 64 per page; keeping one in 256 leaves 3 of every 4 pages without a survivor.
  auto keep = sparse_heap(256 * 1024, 64, 256, &free_pages);
  ASSERT_GT(free_pages.size(), 2000u);
  std::size_t before = resident_pages(free_pages);
  tm_trim(TM_TRIM_FAST);
  std::size_t after_fast = resident_pages(free_pages);
  EXPECT_GT(after_fast, before * 9 / 10) << "FAST must not scan pages of partly used pools";
  size_t released = tm_trim(TM_TRIM_FULL);
  std::size_t after_full = resident_pages(free_pages);
  EXPECT_LE(after_full, free_pages.size() / 20) << "FULL must release >= 95% of the free pages";
  EXPECT_GE(released, (before - after_full) * 4096 * 9 / 10);
  for (void* p : keep) {
    EXPECT_TRUE(check(p, 64));
    tm_free(p);
  }
}

// A block freed, then given back with its page by a trim (the page is dormant: on no list, its
// memory zero), then freed again: the second free is caught as a double free, not pushed onto
// the free list (where the page's revival would hand the block out twice).
TEST(TrimDeathTest, DoubleFreeOfABlockWhosePageWasReleased) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        // 448-byte blocks: about 9 to a 4 KiB page.
        std::vector<char*> blocks;
        for (int i = 0; i < 400; ++i) blocks.push_back(static_cast<char*>(tm_malloc(448)));
        char* keep = blocks[0];
        auto pool = [](const void* p) { return pool_start(p); };
        auto page = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) >> 12; };
        // A block of keep's pool that starts on a page keep does not touch.
        char* victim = nullptr;
        for (char* b : blocks)
          if (pool(b) == pool(keep) && page(b) != page(keep) && page(b) != page(keep + 447) &&
              page(b) == page(b + 447))
            victim = b;
        if (victim == nullptr) std::abort();  // the layout assumption failed: no death message
        for (char* b : blocks)
          if (b != keep) tm_free(b);
        tm_trim(TM_TRIM_FULL);
        tm_free(victim);
      },
      "trimalloc: free\\(\\): double free of 0x[0-9a-f]+");
}

// Blocks of a pool that a trim left with released pages below them (holes: the pool's lowest
// dormant page is not its tail) fail free()'s one-compare check, which stops at the lowest
// dormant page; the slow path must free them like any live block, by free() and by the sized
// free, and a second free of one must still be a double free.
namespace {
// 448-byte blocks: about 9 to a 4 KiB page. Keeps block 0 of a pool and every block that starts
// in the upper half of its pages; frees the rest and trims, so the pages between (1 up to the
// middle) are released under the keepers.
std::vector<char*> keepers_above_a_hole() {
  std::vector<char*> blocks;
  for (int i = 0; i < 600; ++i) blocks.push_back(static_cast<char*>(tm_malloc(448)));
  const std::uintptr_t pool = pool_start(blocks[0]);
  auto page_in_pool = [&](const char* b) {
    return (reinterpret_cast<std::uintptr_t>(b) - pool) >> 12;
  };
  std::vector<char*> high;
  for (char* b : blocks) {
    bool same_pool = pool_start(b) == pool;
    if (b == blocks[0] || (same_pool && page_in_pool(b) >= trimalloc::kPagesPerPool / 2)) {
      if (b != blocks[0]) high.push_back(b);
      fill(b, 448);
    } else {
      tm_free(b);
    }
  }
  tm_trim(TM_TRIM_FULL);
  high.push_back(blocks[0]);  // last: freed last, by the caller
  return high;
}

std::size_t live_blocks_of_448() {
  tm_stats st;
  EXPECT_EQ(tm_stats_get(&st), 0);
  return st.classes[448 / 16 - 1].blocks_live;
}
}  // namespace

TEST(Trim, LiveBlocksAboveAReleasedPageAreFreedNormally) {
  std::vector<char*> keep = keepers_above_a_hole();
  ASSERT_GE(keep.size(), 8u);
  const std::uintptr_t pool = pool_start(keep.back());
  const std::size_t live_before = live_blocks_of_448();
  for (std::size_t i = 0; i + 1 < keep.size(); ++i) {
    ASSERT_TRUE(check(keep[i], 448));
    if (i % 2) {
      tm_free_sized(keep[i], 448);
    } else {
      tm_free(keep[i]);
    }
  }
  tm_trim(TM_TRIM_FAST);  // the hardened build's quarantine lets its blocks go
  EXPECT_EQ(live_blocks_of_448(), live_before - (keep.size() - 1));
  if constexpr (!trimalloc::kSecure) {
    // They are free blocks of their pool again: allocation hands every one of them back (the
    // free list comes before carving the released pages; the hardened build's order is random).
    std::vector<char*> again;
    std::size_t found = 0;
    for (std::size_t n = 0; n < 4 * keep.size() && found + 1 < keep.size(); ++n) {
      char* p = static_cast<char*>(tm_malloc(448));
      ASSERT_NE(p, nullptr);
      again.push_back(p);
      if (pool_start(p) == pool && std::find(keep.begin(), keep.end() - 1, p) != keep.end() - 1)
        ++found;
    }
    EXPECT_EQ(found + 1, keep.size()) << "freed blocks above the hole did not come back";
    for (char* p : again) tm_free(p);
  }
  tm_free(keep.back());
}

TEST(TrimDeathTest, DoubleFreeOfALiveBlockAboveAReleasedPage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        std::vector<char*> keep = keepers_above_a_hole();
        if (keep.size() < 2) std::abort();  // the layout assumption failed: no death message
        tm_free(keep[0]);
        tm_free(keep[0]);
      },
      "trimalloc: free\\(\\): double free of 0x[0-9a-f]+");
}

TEST(Trim, IsIdempotentAndDataSurvives) {
  std::set<std::uintptr_t> free_pages;
  auto keep = sparse_heap(100000, 48, 97, &free_pages);
  tm_trim(TM_TRIM_FULL);
  EXPECT_EQ(tm_trim(TM_TRIM_FULL), 0u) << "a second trim with nothing freed in between";
  for (void* p : keep) ASSERT_TRUE(check(p, 48));
  // Allocation after a trim revives released pages: the blocks are usable and distinct.
  std::vector<void*> again;
  for (int i = 0; i < 100000; ++i) {
    void* p = tm_malloc(48);
    ASSERT_NE(p, nullptr);
    fill(p, 48);
    again.push_back(p);
  }
  for (void* p : again) ASSERT_TRUE(check(p, 48));
  for (void* p : keep) ASSERT_TRUE(check(p, 48));
  for (void* p : again) tm_free(p);
  for (void* p : keep) tm_free(p);
}

TEST(Trim, LargeBlocksFullPurgesJemallocDirtyPages) {
  std::vector<void*> blocks;
  std::set<std::uintptr_t> pages;
  for (int i = 0; i < 64; ++i) {
    void* p = tm_malloc(256 * 1024);
    std::memset(p, 1, 256 * 1024);
    for (std::size_t off = 0; off < 256 * 1024; off += 4096)
      pages.insert(page_of(static_cast<char*>(p) + off));
    blocks.push_back(p);
  }
  for (void* p : blocks) tm_free(p);
  tm_trim(TM_TRIM_FULL);
  EXPECT_LE(resident_pages(pages), pages.size() / 20);
}

TEST(Trim, AllReachesAnIdleThreadFullDoesNot) {
  std::set<std::uintptr_t> free_pages;
  std::vector<void*> keep;
  std::mutex m;
  std::condition_variable cv;
  bool built = false, done = false;
  std::thread owner([&] {
    keep = sparse_heap(256 * 1024, 64, 256, &free_pages);
    {
      std::lock_guard<std::mutex> g(m);
      built = true;
    }
    cv.notify_all();
    std::unique_lock<std::mutex> lk(m);
    cv.wait(lk, [&] { return done; });  // idle, holding its heap: it never calls malloc again
  });
  {
    std::unique_lock<std::mutex> lk(m);
    cv.wait(lk, [&] { return built; });
  }
  std::size_t before = resident_pages(free_pages);
  tm_trim(TM_TRIM_FULL);
  EXPECT_GT(resident_pages(free_pages), before * 9 / 10) << "FULL only covers the calling thread";
  tm_trim(TM_TRIM_ALL);
  EXPECT_LE(resident_pages(free_pages), free_pages.size() / 20) << "ALL visits idle threads";
  {
    std::lock_guard<std::mutex> g(m);
    done = true;
  }
  cv.notify_all();
  owner.join();
  for (void* p : keep) {
    ASSERT_TRUE(check(p, 64));
    tm_free(p);
  }
}

// The hardened build holds each thread's last freed blocks in a per-thread quarantine, which only
// that thread used to empty: an idle thread kept up to 1 MiB of freed memory for good.
// TM_TRIM_ALL (and the out-of-memory retry) empties it while visiting the idle thread. In the
// default build the blocks are free at once and the counts must agree just the same.
TEST(Trim, AllGivesBackAnIdleThreadsQuarantinedBlocks) {
  constexpr std::size_t kBlocks = 100;  // well inside the quarantine (256 blocks, 1 MiB)
  tm_trim(TM_TRIM_FAST);                // this thread's own quarantine out of the counts
  const std::size_t live_before = live_blocks_of_448();
  std::mutex m;
  std::condition_variable cv;
  bool freed = false, done = false;
  std::thread owner([&] {
    std::vector<void*> blocks(kBlocks);
    for (auto& p : blocks) p = tm_malloc(448);
    for (void* p : blocks) tm_free(p);
    blocks = std::vector<void*>();  // its buffer is not a 448-byte block; freed before the wait
    {
      std::lock_guard<std::mutex> g(m);
      freed = true;
    }
    cv.notify_all();
    std::unique_lock<std::mutex> lk(m);
    cv.wait(lk, [&] { return done; });  // idle, holding its heap and its quarantine
  });
  {
    std::unique_lock<std::mutex> lk(m);
    cv.wait(lk, [&] { return freed; });
  }
  if constexpr (trimalloc::kSecure) {
    EXPECT_GE(live_blocks_of_448(), live_before + kBlocks) << "the blocks were not quarantined";
  }
  tm_trim(TM_TRIM_ALL);
  EXPECT_EQ(live_blocks_of_448(), live_before)
      << "the idle thread's freed blocks still count as live";
  {
    std::lock_guard<std::mutex> g(m);
    done = true;
  }
  cv.notify_all();
  owner.join();
}

// TRIMALLOC_MAX_CACHED ("max_cached"): free pools kept resident for reuse never exceed the cap,
// even with automatic decay off. Pools emptied inside arenas that stay in use (one live block
// each) are the cache; with a large cap they stay resident, which shows the cap is what limits.
namespace {
std::size_t resident_empty_pools_after_churn() {
  constexpr std::size_t kSize = 256, kCount = 80000;  // about 20 MiB, 20 arenas
  std::vector<void*> blocks(kCount);
  for (auto& p : blocks) {
    p = tm_malloc(kSize);
    std::memset(p, 1, kSize);
  }
  std::vector<void*> keep;
  std::set<std::uintptr_t> arenas;
  for (void* p : blocks) {
    if (arenas.insert(reinterpret_cast<std::uintptr_t>(p) >> 20).second)
      keep.push_back(p);
    else
      tm_free(p);
  }
  tm_stats s;
  tm_stats_get(&s);
  for (void* p : keep) tm_free(p);
  tm_trim(TM_TRIM_FULL);
  return s.empty_pools_resident;
}
}  // namespace

TEST(Trim, MaxCachedCapsTheFreeMemoryKeptForReuse) {
  constexpr long long kCap = 2 << 20;
  ASSERT_EQ(tm_option_set("max_cached", 64ll << 20), 0);
  std::size_t uncapped = resident_empty_pools_after_churn();
  ASSERT_EQ(tm_option_set("max_cached", kCap), 0);
  std::size_t capped = resident_empty_pools_after_churn();
  ASSERT_EQ(tm_option_set("max_cached", 64ll << 20), 0);
  EXPECT_GT(uncapped, std::size_t{kCap} * 4) << "the control kept too little to show the cap";
  EXPECT_LE(capped, std::size_t{kCap}) << "free pools resident beyond max_cached";
}

// A batch freed whole (every arena it used now empty) is cached like any free pool, up to the
// cap: the next batch reuses those pages instead of faulting them in again, and only a trim (or
// decay, decay_test) gives the arenas back.
namespace {
std::vector<void*> batch(std::size_t count, std::size_t size) {
  std::vector<void*> blocks(count);
  for (auto& p : blocks) {
    p = tm_malloc(size);
    std::memset(p, 5, size);
  }
  return blocks;
}
std::set<std::uintptr_t> pages_of(const std::vector<void*>& blocks) {
  std::set<std::uintptr_t> pages;
  for (void* p : blocks) pages.insert(page_of(p));
  return pages;
}
std::size_t arenas_mapped() {
  tm_stats s;
  tm_stats_get(&s);
  return s.arenas;
}
}  // namespace

TEST(Trim, AnEmptiedBatchIsReusedWithoutFaultsUntilTrimmed) {
  constexpr std::size_t kSize = 256, kCount = 96 * 1024;  // 24 MiB: under the 64 MiB cap
  ASSERT_EQ(tm_option_set("max_cached", 64ll << 20), 0);
  tm_trim(TM_TRIM_FAST);
  const std::size_t arenas_before = arenas_mapped();
  std::vector<void*> first = batch(kCount, kSize);
  const std::set<std::uintptr_t> first_pages = pages_of(first);
  for (void* p : first) tm_free(p);
  const std::size_t arenas_cached = arenas_mapped();
  // At least the arenas the batch filled alone (the first may be shared).
  constexpr std::size_t kFilled = kCount * kSize / trimalloc::kArenaSize - 1;
  EXPECT_GE(arenas_cached, arenas_before + kFilled) << "empty arenas were unmapped at once";
  const std::size_t kept = resident_pages(first_pages);
  EXPECT_GE(kept, first_pages.size() * 9 / 10)
      << "only " << kept << " of " << first_pages.size() << " freed pages stayed resident";

  // The next batch lands on those resident pages: no page fault.
  std::vector<void*> second = batch(kCount, kSize);
  std::size_t reused = 0;
  for (std::uintptr_t pg : pages_of(second)) reused += first_pages.count(pg);
  EXPECT_GE(reused, first_pages.size() * 9 / 10) << "the second batch went elsewhere";
  for (void* p : second) tm_free(p);

  // One arena may stay: the one holding first_pages' nodes (and, in the hardened build, the
  // few blocks its quarantine still holds).
  tm_trim(TM_TRIM_FAST);
  EXPECT_LE(arenas_mapped(), arenas_before + 1) << "tm_trim left the empty arenas mapped";
  EXPECT_LE(resident_pages(first_pages), first_pages.size() / 20);
}

// A free pool reused while its pages are still resident (dirty) starts with those pages carved:
// they are free blocks of the new class, counted as such, and a full trim returns them. Left
// dormant they would stay resident, counted nowhere and returned by nothing.
TEST(Trim, AReusedPoolsResidentPagesAreFreeBlocksAFullTrimReturns) {
  constexpr std::size_t kOld = 256, kPerPool = trimalloc::kPoolSize / kOld;
  constexpr unsigned kNewClass = 2;  // 48-byte blocks
  // Two pools' worth, all freed: at thread exit both go back dirty. (Only addresses are kept;
  // the sets are built afterwards, so that their nodes do not live in a pool of that thread.)
  std::vector<void*> blocks;
  std::thread([&] {
    blocks = batch(2 * kPerPool, kOld);
    for (void* p : blocks) tm_free(p);
  }).join();
  std::set<std::uintptr_t> old_pools, old_pages;
  for (void* p : blocks) {
    old_pools.insert(pool_start(p));
    old_pages.insert(page_of(p));
  }
  ASSERT_EQ(old_pools.size(), 2u);
  std::thread([&] {
    tm_stats before;
    tm_stats_get(&before);
    void* p = tm_malloc(40);
    ASSERT_TRUE(old_pools.count(pool_start(p))) << "the new pool is not one of the dirty ones";
    tm_stats after;
    tm_stats_get(&after);
    const tm_class_stats& b = before.classes[kNewClass];
    const tm_class_stats& a = after.classes[kNewClass];
    ASSERT_EQ(a.block_size, 48u);
    // The whole pool was resident: all of it is carved, one block live.
    EXPECT_EQ(a.blocks_free - b.blocks_free, trimalloc::kPoolSize / 48 - 1);
    tm_trim(TM_TRIM_FULL);
    // What the live block covers stays: one page, or two for one of the few 48-byte blocks
    // that straddle a page boundary (the hardened build hands out a random block first).
    const std::size_t live_pages = page_of(static_cast<char*>(p) + 47) != page_of(p) ? 2 : 1;
    EXPECT_LE(resident_pages(old_pages), live_pages) << "of " << old_pages.size() << " pages";
    tm_free(p);
  }).join();
}

// Crossing the cap purges down to half of it, not everything: what was freed last stays
// cached for the next allocations.
TEST(Trim, OverTheCapKeepsHalfOfIt) {
  constexpr long long kCap = 8 << 20;
  ASSERT_EQ(tm_option_set("max_cached", kCap), 0);
  tm_trim(TM_TRIM_FAST);
  std::vector<void*> blocks = batch(96 * 1024, 256);  // 24 MiB
  // Free 9 MiB: the cap is crossed once, near the end. Purging everything then would leave
  // about 1 MiB cached; purging down to half the cap leaves about 5.
  const std::size_t crossing = (9 << 20) / 256;
  for (std::size_t i = 0; i < crossing; ++i) tm_free(blocks[i]);
  tm_stats s;
  tm_stats_get(&s);
  for (std::size_t i = crossing; i < blocks.size(); ++i) tm_free(blocks[i]);
  ASSERT_EQ(tm_option_set("max_cached", 64ll << 20), 0);
  tm_trim(TM_TRIM_FAST);
  EXPECT_LE(s.empty_pools_resident, std::size_t{kCap});
  EXPECT_GE(s.empty_pools_resident, std::size_t{kCap} / 4) << "the cap purged everything";
}

TEST(Trim, ExitedThreadsPoolsAreReleased) {
  std::set<std::uintptr_t> free_pages;
  std::vector<void*> keep;
  std::thread([&] { keep = sparse_heap(256 * 1024, 80, 300, &free_pages); }).join();
  tm_trim(TM_TRIM_FULL);
  EXPECT_LE(resident_pages(free_pages), free_pages.size() / 20);
  for (void* p : keep) {
    ASSERT_TRUE(check(p, 80));
    tm_free(p);
  }
}

// Threads allocate, write patterns, hand blocks to each other to verify and free, while the
// main thread trims at every level in a loop. Any byte lost or any block handed out twice shows
// up as a pattern mismatch.
TEST(Trim, RacesWithAllocationAndRemoteFrees) {
  constexpr int kThreads = 4;
  std::atomic<bool> stop{false};
  std::atomic<long> bad{0}, verified{0};
  struct Mailbox {
    std::mutex m;
    std::vector<std::pair<void*, std::size_t>> items;
  } boxes[kThreads];
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t)
    workers.emplace_back([&, t] {
      unsigned seed = 12345u + t;
      std::vector<std::pair<void*, std::size_t>> mine;
      while (!stop.load(std::memory_order_relaxed)) {
        for (int i = 0; i < 256; ++i) {
          seed = seed * 1103515245u + 12345u;
          std::size_t n = 1 + (seed >> 8) % 700;
          void* p = tm_malloc(n);
          fill(p, n);
          mine.emplace_back(p, n);
        }
        // Keep a third, send a third to a neighbour, free a third here.
        std::vector<std::pair<void*, std::size_t>> send;
        for (std::size_t i = 0; i < mine.size();) {
          if (i % 3 == 0) {
            send.push_back(mine[i]);
            mine[i] = mine.back();
            mine.pop_back();
          } else if (i % 3 == 1) {
            if (!check(mine[i].first, mine[i].second)) ++bad;
            tm_free(mine[i].first);
            mine[i] = mine.back();
            mine.pop_back();
          } else {
            ++i;
          }
        }
        {
          std::lock_guard<std::mutex> g(boxes[(t + 1) % kThreads].m);
          auto& dst = boxes[(t + 1) % kThreads].items;
          dst.insert(dst.end(), send.begin(), send.end());
        }
        std::vector<std::pair<void*, std::size_t>> got;
        {
          std::lock_guard<std::mutex> g(boxes[t].m);
          got.swap(boxes[t].items);
        }
        for (auto& [p, n] : got) {
          if (!check(p, n)) ++bad;
          tm_free(p);
          ++verified;
        }
        if (mine.size() > 20000) {
          for (auto& [p, n] : mine) {
            if (!check(p, n)) ++bad;
            tm_free(p);
          }
          mine.clear();
        }
      }
      for (auto& [p, n] : mine) {
        if (!check(p, n)) ++bad;
        tm_free(p);
      }
    });
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  int trims = 0;
  while (std::chrono::steady_clock::now() < until) {
    tm_trim(trims % 3);
    ++trims;
  }
  stop = true;
  for (auto& w : workers) w.join();
  for (auto& b : boxes)
    for (auto& [p, n] : b.items) {
      if (!check(p, n)) ++bad;
      tm_free(p);
    }
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(verified.load(), 1000);
  EXPECT_GT(trims, 10);
}

TEST(Options, SetAndGetValidateNamesAndRanges) {
  long long v = 0;
  EXPECT_EQ(tm_option_get("decay_ms", &v), 0);
  EXPECT_EQ(v, -1);
  EXPECT_EQ(tm_option_set("decay_ms", -2), EINVAL);
  EXPECT_EQ(tm_option_set("no_such_option", 1), EINVAL);
  EXPECT_EQ(tm_option_get("no_such_option", &v), EINVAL);
  EXPECT_EQ(tm_option_set("background_thread", 2), EINVAL);
  EXPECT_EQ(tm_option_set("max_cached", 1 << 20), 0);
  EXPECT_EQ(tm_option_get("max_cached", &v), 0);
  EXPECT_EQ(v, 1 << 20);
  EXPECT_EQ(tm_option_set("max_cached", 64ll << 20), 0);
}
