// Re-entry into a thread's heap (arenas/heap.h, enter_outermost): the fast paths enter by storing
// busy_ = 1 and leave by storing 0, which is right only if a call that finds the heap already
// entered (a slow path that calls malloc, or a signal handler that allocates) counts up and back
// down instead. A timer signal aimed at this thread interrupts a loop of 16-byte allocations and
// frees; its handler allocates and frees 512-byte blocks and checks that it left the heap's entry
// count as it found it. Handlers that landed inside the heap are counted, so the test cannot pass
// without exercising the nested way.
// POSIX does not make malloc async-signal-safe, and trimalloc does not either: a handler that
// takes blocks of the class the interrupted call is popping from can get the same block. So the
// handler here uses another class, whose pool is warmed before the timer starts (no slow path
// runs in the handler), and the hardened build, whose frees all pass through the thread's
// quarantine, is left out.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <trimalloc/trimalloc.h>
#include <atomic>
#include <chrono>
#include <cstring>

#include "heap.h"

using namespace trimalloc;

namespace {

// busy_ as depth() reports it: entries of this thread, 0 outside the heap.
std::uint32_t entries() {
  return tl_thread.heap->depth() + 1;
}

volatile sig_atomic_t g_handled = 0;
volatile sig_atomic_t g_inside = 0;  // handlers that found the heap entered
volatile sig_atomic_t g_bad = 0;     // 1: count changed, 2: lost data, 3: allocation failed

void on_timer(int) {
  const std::uint32_t before = entries();
  if (before != 0) g_inside = g_inside + 1;
  constexpr std::size_t kSize = 512;
  auto* p = static_cast<unsigned char*>(tm_malloc(kSize));
  if (p == nullptr) {
    g_bad = 3;
    return;
  }
  std::memset(p, 0xA5, kSize);
  if (p[kSize - 1] != 0xA5) g_bad = 2;
  tm_free(p);
  if (entries() != before) g_bad = 1;
  g_handled = g_handled + 1;
}

TEST(Reentry, AHandlerThatAllocatesInsideTheHeapLeavesItsEntryCountAsItFoundIt) {
#if defined(__SANITIZE_THREAD__)
  // TSan holds asynchronous signals back until the thread is outside instrumented code, so the
  // handler never lands inside the heap there.
  GTEST_SKIP() << "TSan delivers signals only at points outside the allocator";
#endif
  if (kSecure) GTEST_SKIP() << "the hardened build's quarantine is not re-entrant";
  // This thread's heap and both classes' pools exist before the timer starts; `warm` keeps
  // the 512-byte pool in use, so the handler's free never empties it.
  void* warm = tm_malloc(512);
  ASSERT_NE(warm, nullptr);
  tm_free(tm_malloc(16));
  EXPECT_EQ(entries(), 0u);

  struct sigaction sa {};
  sa.sa_handler = on_timer;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  struct sigaction old {};
  ASSERT_EQ(sigaction(SIGRTMIN, &sa, &old), 0);

  sigevent sev{};
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = SIGRTMIN;
  sev._sigev_un._tid = static_cast<pid_t>(syscall(SYS_gettid));
  timer_t timer;
  ASSERT_EQ(timer_create(CLOCK_MONOTONIC, &sev, &timer), 0);
  itimerspec every{};
  every.it_interval.tv_nsec = 20000;  // 20 us
  every.it_value.tv_nsec = 20000;
  ASSERT_EQ(timer_settime(timer, 0, &every, nullptr), 0);

  // Until enough handlers have landed inside the heap, or 20 s.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  std::size_t pairs = 0;
  bool lost = false;
  while (g_inside < 200 && !g_bad && std::chrono::steady_clock::now() < deadline) {
    for (int i = 0; i < 1000; ++i) {
      const std::size_t size = 16;
      auto* p = static_cast<unsigned char*>(tm_malloc(size));
      if (p == nullptr) {
        lost = true;
        break;
      }
      p[0] = static_cast<unsigned char>(i);
      p[size - 1] = static_cast<unsigned char>(~i);
      if (p[0] != static_cast<unsigned char>(i) || p[size - 1] != static_cast<unsigned char>(~i))
        lost = true;
      tm_free(p);
      ++pairs;
    }
    if (lost) break;
  }
  timer_delete(timer);
  sigaction(SIGRTMIN, &old, nullptr);
  tm_free(warm);

  EXPECT_FALSE(lost);
  EXPECT_EQ(g_bad, 0) << "1: a handler changed the heap's entry count, 2: lost data, 3: NULL";
  EXPECT_GE(g_inside, 200) << "handlers " << g_handled << ", pairs " << pairs;
  EXPECT_EQ(entries(), 0u);
}

}  // namespace
