// mmap failure injection through the engine's tm_* API (trimalloc::engine; also runs in the
// ASan+UBSan and TSan builds). See inject_support.h for what is checked.
#include <trimalloc/trimalloc.h>

#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <thread>
#include <vector>

#include "config.h"
#include "inject_support.h"
#include "tm_api.h"

namespace {

struct TmApi : reltest::TmApi {
  static void trim() { tm_trim(TM_TRIM_ALL); }
};

TEST(Inject, EveryEntryPointFailsWithEnomemKeepsBlocksAndRecovers) {
  reltest::Log log;
  reltest::injection_scenario<TmApi>(log, std::size_t{1} << 21);
  EXPECT_EQ(log.count(), 0) << log.text();
}

TEST(Inject, AfterTrimEveryEntryPointFailsAtOnce) {
  // With the caches given back, the first call of each case already needs mmap.
  tm_trim(TM_TRIM_ALL);
  reltest::Log log;
  reltest::injection_scenario<TmApi>(log, std::size_t{1} << 21);
  EXPECT_EQ(log.count(), 0) << log.text();
}

TEST(Inject, RandomFailuresDuringARandomWorkload) {
  std::size_t total = 0;
  for (std::uint64_t seed = 1; seed <= 8; ++seed) {
    reltest::Log log;
    std::size_t failures = 0;
    reltest::random_injection<TmApi>(log, seed, 20000, &failures);
    EXPECT_EQ(log.count(), 0) << "seed " << seed << ":\n" << log.text();
    total += failures;
  }
  // The test only means something if injected failures reached the callers.
  EXPECT_GT(total, 0u);
  RecordProperty("failed_calls", static_cast<int>(total));
  std::printf("calls that failed with ENOMEM: %zu\n", total);
}

// glibc's malloc is never a cancellation point. Ours has cancellation points on its failure
// paths (reading /proc for the overcommit policy, sleeping while another thread purges): a
// thread with a cancellation request pending was cancelled inside tm_malloc instead of getting
// NULL. Here the request is pending before the failing calls, and the thread must reach its
// own pthread_testcancel() with their results.
struct CancelProbe {
  std::atomic<bool> cancel_sent{false};
  bool large_returned = false, large_null = false, small_returned = false, small_null = false;
  int large_errno = 0, small_errno = 0;
};

void* cancel_probe_thread(void* arg) {
  auto* probe = static_cast<CancelProbe*>(arg);
  pthread_setcanceltype(PTHREAD_CANCEL_DEFERRED, nullptr);
  std::vector<void*> small;
  small.reserve(1 << 20);
  while (!probe->cancel_sent.load()) {
  }
  trimalloc::os::inject_reserve_failures(-1);
  errno = 0;
  void* p = tm_malloc(std::size_t{32} << 20);  // a new region: refused
  probe->large_errno = errno;
  probe->large_null = p == nullptr;
  probe->large_returned = true;
  tm_free(p);
  for (int i = 0; i < (1 << 20); ++i) {  // 256 MiB of 256-byte blocks at most: a new arena
    errno = 0;
    void* q = tm_malloc(256);
    if (q == nullptr) {
      probe->small_errno = errno;
      probe->small_null = true;
      break;
    }
    small.push_back(q);
  }
  probe->small_returned = true;
  trimalloc::os::inject_reserve_failures(0);
  for (void* q : small) tm_free(q);
  pthread_testcancel();
  return nullptr;
}

TEST(Inject, AFailedAllocationIsNotACancellationPoint) {
  tm_free(tm_malloc(100000));  // set up the large allocator first (see first_large.cpp)
  CancelProbe probe;
  pthread_t t;
  ASSERT_EQ(pthread_create(&t, nullptr, cancel_probe_thread, &probe), 0);
  ASSERT_EQ(pthread_cancel(t), 0);
  probe.cancel_sent = true;
  void* result = nullptr;
  ASSERT_EQ(pthread_join(t, &result), 0);
  trimalloc::os::inject_reserve_failures(0);
  EXPECT_EQ(result, PTHREAD_CANCELED) << "the thread ran to its end";
  EXPECT_TRUE(probe.large_returned) << "cancelled inside tm_malloc (large)";
  EXPECT_TRUE(probe.large_null);
  EXPECT_EQ(probe.large_errno, ENOMEM);
  EXPECT_TRUE(probe.small_returned) << "cancelled inside tm_malloc (small)";
  EXPECT_TRUE(probe.small_null);
  EXPECT_EQ(probe.small_errno, ENOMEM);
}

TEST(Inject, CountedFailuresRunOutAndAllocationResumes) {
  // inject(n): the next n reserves fail, then the allocator goes on by itself: at most n calls
  // fail, and allocation resumes without any reset. Small blocks: a new 1 MiB arena is one
  // reserve, tried once more after purging the large arena (which may have freed address
  // space), and in the hardened build that pair again after flushing the quarantine: a call
  // fails after 2 (hardened: 4) refused reserves in a row, so inject(1..6) fails at least
  // 9 (hardened: 3) calls. (Large blocks: the extent hook falls back to a smaller region when
  // a bigger one cannot be mapped, so a single failure may be absorbed.)
  tm_free(tm_malloc(100000));  // set up the large allocator first (see first_large.cpp)
  long total_failed = 0;
  for (long n = 1; n <= 6; ++n) {
    std::vector<void*> held;
    held.reserve(40000);
    trimalloc::os::inject_reserve_failures(n);
    long failed = 0, after_last_failure = 0;
    for (int i = 0; i < 40000; ++i) {  // ~10 MiB of 256-byte blocks: several new arenas
      errno = 0;
      void* p = tm_malloc(256);
      if (!p) {
        ++failed;
        after_last_failure = 0;
        EXPECT_EQ(errno, ENOMEM);
        continue;
      }
      ++after_last_failure;
      static_cast<char*>(p)[0] = 1;
      held.push_back(p);
    }
    for (int i = 0; i < 8; ++i) {  // and large blocks
      errno = 0;
      void* p = tm_malloc(std::size_t{32} << 20);
      if (!p) {
        ++failed;
        EXPECT_EQ(errno, ENOMEM);
      } else {
        held.push_back(p);
      }
    }
    trimalloc::os::inject_reserve_failures(0);
    EXPECT_LE(failed, n) << "inject(" << n << ") made more calls fail than reserves were refused";
    EXPECT_GT(after_last_failure, 1000)
        << "inject(" << n << "): allocation did not resume by itself";
    total_failed += failed;
    for (void* p : held) tm_free(p);
    tm_trim(TM_TRIM_ALL);
  }
  EXPECT_GE(total_failed, trimalloc::kSecure ? 3 : 9)
      << "injected failures did not reach the callers";
}

}  // namespace
