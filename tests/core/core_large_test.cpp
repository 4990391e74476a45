// Address space of freed large blocks goes back to the kernel (issue 7): the extent hooks map
// regions, and once jemalloc has given every piece of a region back (after a purge) the region
// is unmapped and its arena-map bits cleared, while regions that still hold a live block stay
// untouched. Through the engine's tm_* API, so that these run in the sanitizer builds too (the
// hooks run inside jemalloc in every build).
#include <gtest/gtest.h>
#include <trimalloc/trimalloc.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "large.h"
#include "test_support.h"

namespace {

using tmtest::vm_bytes;

void stamp(void* p, std::size_t n, unsigned char v) {
  auto* b = static_cast<unsigned char*>(p);
  for (std::size_t off = 0; off < n; off += 65536)
    b[off] = v;  // not every page: VmSize is what counts
  b[n - 1] = v;
}
bool stamped(const void* p, std::size_t n, unsigned char v) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (std::size_t off = 0; off < n; off += 65536)
    if (b[off] != v) return false;
  return b[n - 1] == v;
}
// After realloc from n to m bytes: the stamps of the first min(n, m) bytes are still there.
bool kept(const void* p, std::size_t n, std::size_t m, unsigned char v) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (std::size_t off = 0; off < n && off < m; off += 65536)
    if (b[off] != v) return false;
  return m < n || b[n - 1] == v;
}

constexpr std::size_t kMiB = std::size_t{1} << 20;

TEST(LargeRegions, FreedBlocksGiveTheirAddressSpaceBackAtTrim) {
  tm_trim(TM_TRIM_FULL);
  std::size_t before = vm_bytes();
  std::size_t hooks_before = trimalloc::large_mapped_bytes();
  // 256 MiB in sizes that share regions (256 KiB: several per region) and that do not (3 MiB).
  std::vector<std::pair<void*, std::size_t>> blocks;
  for (int i = 0; i < 512; ++i) blocks.emplace_back(nullptr, 256 * 1024);
  for (int i = 0; i < 43; ++i) blocks.emplace_back(nullptr, 3 * kMiB);
  for (auto& [p, n] : blocks) {
    p = tm_malloc(n);
    ASSERT_NE(p, nullptr);
    stamp(p, n, 7);
    ASSERT_TRUE(trimalloc::large_owns(p));
  }
  std::size_t grown = vm_bytes() - before;
  std::size_t hooks_grown = trimalloc::large_mapped_bytes() - hooks_before;
  ASSERT_GE(hooks_grown, 250 * kMiB);
  for (auto& [p, n] : blocks) tm_free(p);
  tm_trim(TM_TRIM_FULL);
  // What the hooks still have mapped is exact. VmSize must say the same in the plain build; the
  // sanitizers' runtimes map memory of their own meanwhile (TSan: a thread stack's 8 MiB when
  // the decay thread starts, its own background thread's, and in about half the runs 6 MiB more).
  std::size_t hooks_kept = trimalloc::large_mapped_bytes() - hooks_before;
  EXPECT_LE(hooks_kept, hooks_grown / 20)
      << "of " << hooks_grown / kMiB << " MiB the hooks mapped for the blocks, "
      << hooks_kept / kMiB << " MiB still mapped after free + trim";
  if (!tmtest::kSanitized) {
    std::size_t after = vm_bytes();
    std::size_t kept = after > before ? after - before : 0;
    EXPECT_LE(kept, grown / 20) << "of " << grown / kMiB << " MiB mapped for the blocks, "
                                << kept / kMiB << " MiB still mapped after free + trim";
  }
  // free() routing: none of those addresses is in a large slot any more.
  std::size_t routed = 0;
  for (auto& [p, n] : blocks)
    routed += trimalloc::large_owns(p) + trimalloc::large_owns(static_cast<char*>(p) + n - 1);
  EXPECT_EQ(routed, 0u);
}

// A region that still holds a live block is left alone (its block intact, still routed as
// large), while every other region goes.
TEST(LargeRegions, ARegionWithALiveBlockStaysTheOthersGo) {
  tm_trim(TM_TRIM_FULL);
  std::size_t before = vm_bytes();
  std::size_t hooks_before = trimalloc::large_mapped_bytes();
  std::vector<void*> blocks;
  constexpr std::size_t kSize = 3 * kMiB;
  for (int i = 0; i < 40; ++i) {
    void* p = tm_malloc(kSize);
    ASSERT_NE(p, nullptr);
    stamp(p, kSize, static_cast<unsigned char>(i + 1));
    blocks.push_back(p);
  }
  std::size_t grown = vm_bytes() - before;
  ASSERT_GE(grown, 100 * kMiB) << "the blocks did not need new address space";
  for (int i = 0; i < 40; ++i)
    if (i != 17) tm_free(blocks[i]);
  tm_trim(TM_TRIM_FULL);
  ASSERT_TRUE(trimalloc::large_owns(blocks[17]));
  EXPECT_TRUE(stamped(blocks[17], kSize, 18));
  // The survivor keeps its own region: at most 16 MiB (regions for big blocks grow with the
  // heap, to an eighth of it, capped). What the hooks still have mapped is exact; jemalloc's
  // metadata (its base allocator maps 2 MiB blocks through the hooks and keeps them) may add
  // one block. VmSize says about the same in the plain build (the sanitizers map shadow of their
  // own), with 2 MiB more room since arena 0 maps through the hooks: jemalloc's global tables
  // for the new address ranges live there, in regions of whole MiBs (40 runs of each build
  // beside each other: the hooks kept 8-10 MiB, VmSize grew by 8.3-17.8 MiB; the hooks kept
  // 8 MiB and VmSize grew by 8.3-14.6 MiB before).
  std::size_t hooks_kept = trimalloc::large_mapped_bytes() - hooks_before;
  EXPECT_LE(hooks_kept, 18 * kMiB) << hooks_kept / kMiB << " MiB still mapped by the hooks";
  std::size_t after = vm_bytes();
  if (!tmtest::kSanitized) {
    EXPECT_LE(after, before + 20 * kMiB)
        << "of " << grown / kMiB << " MiB mapped for 40 blocks of 3 MiB, "
        << (after - before) / kMiB << " MiB still mapped with one block live";
  }
  // The survivor still works as a block: realloc within it, then free.
  void* q = tm_realloc(blocks[17], kSize + 4096);
  ASSERT_NE(q, nullptr);
  EXPECT_TRUE(stamped(q, kSize, 18));
  tm_free(q);
}

// Threads allocate, check, resize and free large blocks of many sizes while another thread
// keeps purging: pieces go back into holes and whole regions are unmapped under the allocating
// threads' feet, in both arenas (realloc to 1 MiB or more moves blocks to the growth arena, or
// grows them in place there). Every block keeps its contents, and calloc'd ones start zeroed.
TEST(LargeRegions, ChurnWhileAnotherThreadPurgesKeepsEveryBlock) {
  constexpr int kThreads = 3;
  const int rounds = tmtest::kSanitized ? 2000 : 20000;
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0}, big_reallocs{0};
  std::thread purger([&] {
    while (!stop.load()) {
      tm_trim(TM_TRIM_FULL);
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      std::mt19937_64 rng(1234 + t);
      std::vector<std::pair<void*, std::size_t>> live;
      for (int r = 0; r < rounds; ++r) {
        if (live.size() < 24 && (rng() & 1)) {
          // 513 B .. 6 MiB, skewed to the small end: slabs, small and big extents.
          std::size_t n = 513 + (rng() % (std::size_t{1} << (10 + rng() % 13)));
          // calloc: the hooks tell jemalloc that holes read as zero, so it does not clear them.
          bool zeroed = rng() % 4 == 0;
          void* p = zeroed ? tm_calloc(1, n) : tm_malloc(n);
          if (!p || !trimalloc::large_owns(p) || (zeroed && !stamped(p, n, 0))) {
            ++bad;
            continue;
          }
          auto v = static_cast<unsigned char>(rng() | 1);
          stamp(p, n, v);
          live.emplace_back(p, n | (std::size_t{v} << 56));
        } else if (!live.empty() && rng() % 3 == 0) {
          // Grow by an eighth to a half (into the growth arena from 1 MiB), or shrink to a third.
          std::size_t i = rng() % live.size();
          auto [p, tagged] = live[i];
          std::size_t n = tagged & ((std::size_t{1} << 56) - 1);
          auto v = static_cast<unsigned char>(tagged >> 56);
          std::size_t m = rng() % 4 ? n + n / (2 + rng() % 7) : n / 3 + 513;
          if (m > 48 * kMiB) m = n / 3 + 513;
          void* q = tm_realloc(p, m);
          big_reallocs += m >= kMiB;
          if (!q || !trimalloc::large_owns(q) || !kept(q, n, m, v)) {
            ++bad;
            if (!q) continue;
          }
          auto w = static_cast<unsigned char>(rng() | 1);
          stamp(q, m, w);
          live[i] = {q, m | (std::size_t{w} << 56)};
        } else if (!live.empty()) {
          std::size_t i = rng() % live.size();
          auto [p, tagged] = live[i];
          std::size_t n = tagged & ((std::size_t{1} << 56) - 1);
          if (!stamped(p, n, static_cast<unsigned char>(tagged >> 56))) ++bad;
          tm_free(p);
          live[i] = live.back();
          live.pop_back();
        }
      }
      for (auto [p, tagged] : live) {
        std::size_t n = tagged & ((std::size_t{1} << 56) - 1);
        if (!stamped(p, n, static_cast<unsigned char>(tagged >> 56))) ++bad;
        tm_free(p);
      }
    });
  }
  for (auto& t : ts) t.join();
  stop = true;
  purger.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(big_reallocs.load(), rounds / 20) << "the growth arena was hardly used";
}

}  // namespace

// The growth arena is made by the first realloc to 1 MiB or more, not at start: its jemalloc
// metadata (2 MiB of writable mapping, counted against RLIMIT_DATA) is wasted in programs that
// never grow a block so far. ctest runs each test in a process of its own, where no realloc has
// made it yet; run with the rest of the binary, an earlier test may have.
TEST(LargeRegions, TheGrowthArenaIsMadeByTheFirstReallocThatNeedsIt) {
  void* p = tm_malloc(100000);  // the large allocator is set up
  ASSERT_NE(p, nullptr);
  const unsigned before = trimalloc::large_arena_indices().count;
  if (::testing::UnitTest::GetInstance()->test_to_run_count() == 1) {
    EXPECT_EQ(before, 2u) << "a process that has grown no block to 1 MiB has the growth arena";
  }
  void* q = tm_realloc(p, std::size_t{512} << 10);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(trimalloc::large_arena_indices().count, before) << "a realloc below 1 MiB made it";
  void* r = tm_realloc(q, std::size_t{2} << 20);
  ASSERT_NE(r, nullptr);
  const trimalloc::LargeArenas after = trimalloc::large_arena_indices();
  EXPECT_EQ(after.count, 3u) << "realloc to 2 MiB did not make the growth arena";
  if (before == 2) {
    EXPECT_NE(after.index[2], 0u);
    EXPECT_NE(after.index[2], after.index[1]) << "the growth arena is not the main arena";
  }
  tm_free(r);
}

// jemalloc reads MALLOC_CONF (and /etc/malloc.conf) after trimalloc's own settings, so a user's
// settings for a jemalloc-linked program would reconfigure the embedded copy (retain:true kept
// every freed region's address space mapped). The settings trimalloc depends on are read once
// more, last. jemalloc reads its settings when the library is loaded, so the check runs in a
// fresh process started with MALLOC_CONF set: a "threadsafe" death test re-executes this
// binary, and exits 0 only if every setting is trimalloc's.
namespace {
[[noreturn]] void check_jemalloc_settings_and_exit() {
  tm_free(tm_malloc(100000));  // the large allocator started
  int wrong = 0;
  auto expect = [&](const char* name, auto value, auto want) {
    std::size_t len = sizeof value;
    if (trimalloc::large_mallctl(name, &value, &len, nullptr, 0) != 0 || value != want) {
      std::fprintf(stderr, "%s is not trimalloc's\n", name);
      ++wrong;
    }
  };
  expect("opt.retain", true, false);
  expect("opt.background_thread", true, false);
  expect("opt.narenas", 0u, 1u);
  expect("opt.oversize_threshold", std::size_t{1}, std::size_t{0});
  expect("opt.muzzy_decay_ms", ssize_t{1}, ssize_t{0});
  const char* percpu = nullptr;
  std::size_t len = sizeof percpu;
  if (trimalloc::large_mallctl("opt.percpu_arena", &percpu, &len, nullptr, 0) != 0 ||
      std::strcmp(percpu, "disabled") != 0) {
    std::fprintf(stderr, "opt.percpu_arena is not trimalloc's\n");
    ++wrong;
  }
  std::_Exit(wrong == 0 ? 0 : 1);
}
}  // namespace

TEST(LargeAllocatorDeathTest, MallocConfCannotOverrideWhatTrimallocDependsOn) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  setenv("MALLOC_CONF",
         "retain:true,narenas:8,background_thread:true,oversize_threshold:1048576,"
         "percpu_arena:percpu,muzzy_decay_ms:5000",
         1);
  EXPECT_EXIT(check_jemalloc_settings_and_exit(), ::testing::ExitedWithCode(0), "");
  unsetenv("MALLOC_CONF");
}

// jemalloc's cache-oblivious padding is off (allocator/large.cpp, je_opt_cache_oblivious): a
// block of 16 KiB or more starts on a page and takes only its own pages. With the padding, each
// started at a random cache line of an extra page (one in 64 on a page boundary), and 2000
// fully written 16 KiB blocks had 1.26 times their bytes resident.
TEST(LargeRegions, BlocksOfSixteenKiBOrMoreHaveNoPaddingPage) {
  bool oblivious = true;
  std::size_t len = sizeof oblivious;
  tm_free(tm_malloc(100000));  // the large allocator started
  ASSERT_EQ(trimalloc::large_mallctl("opt.cache_oblivious", &oblivious, &len, nullptr, 0), 0);
  EXPECT_FALSE(oblivious);
  constexpr std::size_t kSize = 16384, kCount = 2000;
  std::vector<void*> blocks;
  blocks.reserve(kCount);
  const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  std::size_t off_page = 0;
  const std::size_t before = tmtest::rss_bytes();
  for (std::size_t i = 0; i < kCount; ++i) {
    void* p = tm_malloc(kSize);
    ASSERT_NE(p, nullptr);
    off_page += (tmtest::addr(p) & (page - 1)) != 0;
    std::memset(p, 1, kSize);
    blocks.push_back(p);
  }
  const double ratio =
      static_cast<double>(tmtest::rss_bytes() - before) / static_cast<double>(kSize * kCount);
  EXPECT_EQ(off_page, 0u) << "blocks not starting on a page";
  // 1.0 plus page tables; padded, 1.26. Not in the sanitizer builds, whose shadow memory for
  // the written bytes is resident too (TSan: 5x).
  if (!tmtest::kSanitized) {
    EXPECT_LT(ratio, 1.2) << "resident bytes per byte of the blocks";
  }
  for (void* p : blocks) tm_free(p);
}

// A block realloc grows to 1 MiB or more gets a region twice its size, so growing it by an
// eighth at a time (a Python list's rule) moves it about once per doubling: from 1 MiB to
// 64 MiB, 36 steps and 6 doublings; it moves at 5 of them. Without the room it moved at 20.
TEST(LargeRegions, ABufferGrownByReallocMovesAboutOncePerDoubling) {
  std::size_t n = std::size_t{1} << 20;
  auto* p = static_cast<unsigned char*>(tm_malloc(n));
  ASSERT_NE(p, nullptr);
  for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<unsigned char>(i * 13 + 1);
  int steps = 0, moves = 0;
  while (n < (std::size_t{64} << 20)) {
    std::size_t m = n + n / 8;
    auto* q = static_cast<unsigned char*>(tm_realloc(p, m));
    ASSERT_NE(q, nullptr);
    moves += q != p;
    std::memset(q + n, 0xA5, m - n);
    p = q;
    n = m;
    ++steps;
  }
  for (std::size_t i = 0; i < (std::size_t{1} << 20); ++i)
    ASSERT_EQ(p[i], static_cast<unsigned char>(i * 13 + 1)) << "byte " << i;
  for (std::size_t i = std::size_t{1} << 20; i < n; i += 4093) ASSERT_EQ(p[i], 0xA5) << i;
  EXPECT_LE(moves, 10) << "moved at " << moves << " of " << steps << " steps";
  // Shrinking stays in place and keeps the data.
  auto* s = static_cast<unsigned char*>(tm_realloc(p, std::size_t{3} << 20));
  EXPECT_EQ(s, p);
  EXPECT_EQ(s[12345], static_cast<unsigned char>(12345 * 13 + 1));
  tm_free(s);
}
