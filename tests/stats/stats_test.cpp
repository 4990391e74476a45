// stats/ through the tm_* engine (no malloc override): the test's own allocations (GoogleTest,
// vectors) go to glibc, so every trimalloc figure below moves only by what the test does.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "pool.h"  // the pool geometry the exact counts follow from
#include "trimalloc/stats.h"
#include "trimalloc/trimalloc.h"

namespace {

tm_stats get() {
  tm_stats s;
  EXPECT_EQ(tm_stats_get(&s), 0);
  return s;
}

// A sequence whose effect on the pools is known exactly. Class 20 (336-byte blocks, 12 of them
// on a pool's first 4 KiB page) is used by no other test here.
#if !defined(TRIMALLOC_SECURE)
// Exact counters: the hardened build's quarantine delays frees on purpose, so these two tests
// apply to the default build (the hardened build runs the rest of this file).
TEST(Stats, CountersMatchAKnownSequence) {
  std::thread([] {
    constexpr unsigned kClass = 20;
    constexpr std::size_t kPerPool = trimalloc::kPoolSize / 336;
    constexpr std::size_t kFirstPage = trimalloc::kPageSize / 336;  // 12
    constexpr std::size_t kCount = 2 * kPerPool + 4;
    tm_stats before = get();
    ASSERT_EQ(before.classes[kClass].block_size, 336u);
    std::vector<void*> blocks;
    for (std::size_t i = 0; i < kCount; ++i) blocks.push_back(tm_malloc(330));
    tm_stats after = get();
    const tm_class_stats& b = before.classes[kClass];
    const tm_class_stats& a = after.classes[kClass];
    EXPECT_EQ(a.blocks_live - b.blocks_live, kCount);
    EXPECT_EQ(a.pools - b.pools, 3u);  // two full pools and 4 blocks
    // The third pool carved one page: kFirstPage blocks, 4 of them live.
    EXPECT_EQ(a.blocks_free - b.blocks_free, kFirstPage - 4);
    EXPECT_GE(a.peak_blocks_seen, a.blocks_live);
    EXPECT_GE(a.peak_pools, a.pools);
    EXPECT_GE(a.peak_blocks_bound, a.pools * kPerPool);
    EXPECT_EQ(after.ledger.small_live - before.ledger.small_live, kCount * 336u);

    // Free the first pool's blocks and 2 of the second: the first pool goes back to its arena.
    for (std::size_t i = 0; i < kPerPool + 2; ++i) tm_free(blocks[i]);
    tm_stats later = get();
    const tm_class_stats& l = later.classes[kClass];
    EXPECT_EQ(l.blocks_live - b.blocks_live, kCount - kPerPool - 2);
    EXPECT_EQ(l.pools - b.pools, 2u);
    EXPECT_EQ(l.blocks_free - b.blocks_free, kFirstPage - 4 + 2);
    EXPECT_EQ(l.peak_blocks_seen, a.peak_blocks_seen);  // the peaks stay
    EXPECT_EQ(l.peak_pools, a.peak_pools);
    EXPECT_EQ(l.peak_blocks_bound, a.peak_blocks_bound);
    for (std::size_t i = kPerPool + 2; i < kCount; ++i) tm_free(blocks[i]);
    EXPECT_EQ(get().classes[kClass].blocks_live, b.blocks_live);
  }).join();
}

// A peak that no stats call saw: the lower bound (peak_blocks_seen) misses it, the upper bound
// (pools at their peak times blocks per pool) holds it.
TEST(Stats, PeakBoundsBracketAPeakNoCallSaw) {
  constexpr unsigned kClass = 27;  // 448-byte blocks
  constexpr std::size_t kPerPool = trimalloc::kPoolSize / 448, kPools = 10;
  constexpr std::size_t kBlocks = kPerPool * kPools;
  tm_stats before = get();
  const tm_class_stats& b = before.classes[kClass];
  ASSERT_EQ(b.block_size, 448u);
  std::thread([] {
    std::vector<void*> blocks;
    for (std::size_t i = 0; i < kBlocks; ++i) blocks.push_back(tm_malloc(440));
    for (void* p : blocks) tm_free(p);
  }).join();
  tm_stats after = get();
  const tm_class_stats& a = after.classes[kClass];
  EXPECT_EQ(a.blocks_live, b.blocks_live);
  EXPECT_GE(a.peak_blocks_bound, b.blocks_live + kBlocks);
  EXPECT_GE(a.peak_blocks_bound, a.peak_blocks_seen);
  EXPECT_EQ(a.peak_blocks_bound, a.peak_pools * kPerPool);
  // Exact figures when this is the class's first use in the process (ctest runs each test in a
  // process of its own; a run of the whole binary may have used the class before).
  if (b.peak_pools == 0) {
    EXPECT_EQ(a.peak_pools, kPools);
    EXPECT_EQ(a.peak_blocks_bound, kBlocks);
    EXPECT_EQ(a.peak_blocks_seen, 0u);
  }
}

TEST(Stats, LargeBlocksAreCountedByJemalloc) {
  tm_stats before = get();
  std::vector<void*> blocks;
  for (int i = 0; i < 64; ++i) blocks.push_back(tm_malloc(64 << 10));
  tm_stats after = get();
  EXPECT_EQ(after.large_allocated - before.large_allocated, 64u * (64u << 10));
  EXPECT_EQ(after.large_nmalloc - before.large_nmalloc, 64u);
  EXPECT_EQ(after.allocated - before.allocated, 64u * (64u << 10));
  for (void* p : blocks) tm_free(p);
  tm_stats freed = get();
  EXPECT_EQ(freed.large_allocated, before.large_allocated);
  EXPECT_EQ(freed.large_ndalloc - before.large_ndalloc, 64u);
}
#endif  // !TRIMALLOC_SECURE

#if !defined(__SANITIZE_THREAD__)
// (Not under TSan: its shadow memory is part of the kernel's RSS, so no ledger of the heap can
// add up to it.)
// The ledger: what trimalloc says it holds must explain the growth of the kernel's RSS within 5%,
// and the lines must add up to the kernel's RSS.
void expect_ledger_explains(const tm_stats& before, const tm_stats& after, const char* what) {
  double rss_growth = double(after.rss) - double(before.rss);
  double ours_growth = double(after.ledger.ours) - double(before.ledger.ours);
  SCOPED_TRACE(what);
  ASSERT_GT(rss_growth, 16.0 * (1 << 20)) << "the heap should have grown the RSS";
  EXPECT_NEAR(ours_growth, rss_growth, 0.05 * rss_growth);
  EXPECT_NEAR(double(after.ledger.total), double(after.ledger.rss_kernel),
              0.05 * double(after.ledger.rss_kernel));
  EXPECT_LE(double(after.ledger.overcount), 0.05 * double(after.ledger.rss_kernel));
}

TEST(Stats, LedgerAddsUpOnSeveralHeaps) {
  constexpr size_t kCount = 400000;
  std::vector<void*> blocks(kCount, nullptr);  // glibc memory, touched before the first reading
  std::mt19937 rng(7);

  // 1. Small blocks of one size.
  tm_stats s0 = get();
  for (auto& p : blocks) std::memset(p = tm_malloc(100), 1, 100);
  tm_stats s1 = get();
  expect_ledger_explains(s0, s1, "400k x 100 B");
  EXPECT_EQ(s1.classes[6].blocks_live - s0.classes[6].blocks_live, kCount);

  // 2. 99% freed, survivors scattered: the free blocks stay resident and are counted as such.
  for (size_t i = 0; i < kCount; ++i)
    if (i % 100 != 0) tm_free(blocks[i]), blocks[i] = nullptr;
  tm_stats s2 = get();
  expect_ledger_explains(s0, s2, "99% freed");
  EXPECT_GT(s2.ledger.small_free, s2.ledger.small_live * 10);
  for (auto& p : blocks) tm_free(p), p = nullptr;

  // 3. Mixed small sizes.
  tm_stats s3 = get();
  for (auto& p : blocks) {
    size_t n = 16 + rng() % 497;
    std::memset(p = tm_malloc(n), 2, n);
  }
  expect_ledger_explains(s3, get(), "mixed 16..512 B");
  for (auto& p : blocks) tm_free(p), p = nullptr;

  // 4. Large blocks (jemalloc).
  tm_stats s4 = get();
  for (size_t i = 0; i < 400; ++i) std::memset(blocks[i] = tm_malloc(200 << 10), 3, 200 << 10);
  expect_ledger_explains(s4, get(), "400 x 200 KiB");
  for (auto& p : blocks) tm_free(p), p = nullptr;
}

#endif  // !__SANITIZE_THREAD__

#if defined(TM_TEST_SAMPLING)
// The split of small_live into requested bytes and rounding is estimated from the samples. Two
// sizes with known rounding (100 B in 112-byte blocks, 200 B in 208-byte ones): the estimate
// must fall within 5 of its own standard errors of the truth, and that error must be small enough
// for the figure to mean something (the expected error here is under 2%).
TEST(Stats, RoundingInsideSizeClassesIsEstimatedFromSamples) {
  tm_stats off = get();
  EXPECT_EQ(off.ledger.small_requested_known, 0);
  EXPECT_EQ(off.ledger.small_rounding, 0u);

  ASSERT_EQ(tm_profile_set_rate(1024), 0u);
  ASSERT_EQ(tm_profile_rate(), 1024u) << "sampling could not be turned on (libunwind8 missing?)";
  tm_stats s0 = get();
  constexpr size_t kEach = 20000;
  std::vector<void*> blocks;
  for (size_t i = 0; i < kEach; ++i) {
    blocks.push_back(tm_malloc(100));
    blocks.push_back(tm_malloc(200));
  }
  tm_stats s1 = get();
  // Sampled blocks are served elsewhere: the pools hold exactly the unsampled ones.
  double unsampled100 = double(s1.classes[6].blocks_live - s0.classes[6].blocks_live);
  double unsampled200 = double(s1.classes[12].blocks_live - s0.classes[12].blocks_live);
  ASSERT_EQ(s1.classes[6].block_size, 112u);
  ASSERT_EQ(s1.classes[12].block_size, 208u);
  EXPECT_LT(unsampled100, double(kEach));
  double truth = unsampled100 * 12 + unsampled200 * 8;
  const tm_ledger& l = s1.ledger;
  ASSERT_EQ(l.small_requested_known, 1);
  EXPECT_GT(l.small_requested_samples, 1000u);
  EXPECT_GT(l.small_rounding_stderr, 0u);
  EXPECT_LT(double(l.small_rounding_stderr), 0.05 * truth);
  EXPECT_NEAR(double(l.small_rounding), truth, 5.0 * double(l.small_rounding_stderr))
      << "s.e. " << l.small_rounding_stderr << " from " << l.small_requested_samples << " samples";
  EXPECT_EQ(l.small_live_requested + l.small_rounding, l.small_live);

  // JSON carries the figures while sampling is on, and null once it is off.
  std::vector<char> json(tm_stats_json(nullptr, 0) + 4096);
  tm_stats_json(json.data(), json.size());
  EXPECT_EQ(std::string(json.data()).find("\"small_live_requested\":null"), std::string::npos);
  EXPECT_EQ(tm_profile_set_rate(0), 1024u);
  for (void* p : blocks) tm_free(p);
  tm_stats_json(json.data(), json.size());
  EXPECT_NE(std::string(json.data()).find("\"small_live_requested\":null"), std::string::npos);
  EXPECT_EQ(get().ledger.small_requested_known, 0);
}
#endif

TEST(Stats, JsonFollowsSnprintfContract) {
  size_t need = tm_stats_json(nullptr, 0);
  ASSERT_GT(need, 100u);
  std::vector<char> small(16, 'x');
  EXPECT_GE(tm_stats_json(small.data(), small.size()), need - 64);  // figures may move a little
  EXPECT_EQ(small[15], '\0');
  EXPECT_EQ(std::strcmp(small.data(), "{\"version\":2,\"a"), 0);
  std::vector<char> big(need + 4096);
  size_t got = tm_stats_json(big.data(), big.size());
  ASSERT_LT(got, big.size());
  EXPECT_EQ(std::strlen(big.data()), got);
  EXPECT_EQ(big[got - 1], '}');
}

TEST(Stats, UnknownFormatIsAnErrorNamingIt) {
  testing::internal::CaptureStderr();
  EXPECT_EQ(tm_stats_print(stdout, "yaml"), -1);
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("'yaml'"), std::string::npos) << err;
  EXPECT_EQ(tm_stats_print(nullptr, "text"), -1);
  char path[] = "/tmp/tm_stats_text_XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  FILE* f = fdopen(fd, "w+");
  EXPECT_EQ(tm_stats_print(f, "text"), 0);
  rewind(f);
  char line[256] = {};
  std::string all;
  while (fgets(line, sizeof line, f)) all += line;
  fclose(f);
  unlink(path);
  EXPECT_NE(all.find("RSS ledger"), std::string::npos);
  EXPECT_NE(all.find("kernel RSS"), std::string::npos);
}

// Several threads read statistics while others allocate and free, across threads too.
TEST(Stats, SafeToCallFromSeveralThreads) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  std::atomic<size_t> reads{0};
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&, t] {
      std::vector<void*> mine;
      std::mt19937 rng(t);
      while (!stop.load()) {
        if (mine.size() < 5000)
          mine.push_back(tm_malloc(rng() % 2000));
        else {
          for (void* p : mine) tm_free(p);
          mine.clear();
        }
      }
      for (void* p : mine) tm_free(p);
    });
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&] {
      char buf[1 << 14];
      while (!stop.load()) {
        tm_stats s;
        tm_stats_get(&s);
        EXPECT_LT(tm_stats_json(buf, sizeof buf), sizeof buf);
        ++reads;
      }
    });
  // Run until both readers have made a number of reads while the writers churn (slow under
  // sanitizers: each read walks every arena), not for a fixed time. Under TSan on a busy
  // 2-core machine a read took over 10 s: the wait is capped so that the readers' last calls
  // still finish well inside the test's timeout.
  for (int waited_ms = 0; reads.load() < 4 && waited_ms < 20000; waited_ms += 10) usleep(10000);
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_GE(reads.load(), 2u);  // reads completed while the writers churned
}

}  // namespace
