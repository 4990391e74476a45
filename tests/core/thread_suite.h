// Multi-threaded behaviour, written once for any API adaptor A (see test_support.h):
// cross-thread hand-off with byte-for-byte checks, remote frees that must be reclaimed, thread
// churn with an RSS bound, and fork() from a multi-threaded process.
// Include in exactly one translation unit per test binary, then
//   INSTANTIATE_TYPED_TEST_SUITE_P(Name, Threads, Api);
#pragma once

#include "test_support.h"

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#define TMTEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TMTEST_TSAN 1
#endif
#endif

namespace tmtest {

#ifdef TMTEST_TSAN
inline constexpr bool kTsan = true;
#else
inline constexpr bool kTsan = false;
#endif

// Records the first failure seen by any worker thread (gtest assertions are for the main thread).
class Failures {
 public:
  void add(const std::string& what) {
    if (count_.fetch_add(1) == 0) {
      std::lock_guard<std::mutex> g(m_);
      first_ = what;
    }
  }
  long count() const { return count_.load(); }
  std::string first() {
    std::lock_guard<std::mutex> g(m_);
    return first_;
  }

 private:
  std::atomic<long> count_{0};
  std::mutex m_;
  std::string first_;
};

struct Block {
  void* p;
  std::size_t n;
  std::uint64_t seed;
  std::size_t align;  // 0: from malloc
};

template <class A>
void* alloc_block(std::mt19937_64& rng, Block& b) {
  unsigned r = rng() % 100;
  b.align = 0;
  if (r < 70)
    b.n = 1 + rng() % 512;
  else if (r < 88)
    b.n = 513 + rng() % 3584;
  else if (r < 92)
    b.n = 4097 + rng() % 61440;
  else {
    b.align = std::size_t{16} << (rng() % 9);  // 16..4096
    b.n = 1 + rng() % 1024;
  }
  b.p = b.align ? A::aligned_alloc(b.align, b.n) : A::malloc(b.n);
  return b.p;
}

// Checks and frees a block with one of the free functions, or moves it with realloc first.
template <class A>
void check_and_release(Block& b, std::mt19937_64& rng, Failures& fails, const char* where) {
  long bad = first_bad(b.p, b.n, b.seed);
  if (bad >= 0) {
    char buf[200];
    std::snprintf(buf, sizeof buf, "%s: block %p of %zu bytes (align %zu) corrupt at byte %ld",
                  where, b.p, b.n, b.align, bad);
    fails.add(buf);
  }
  if (b.align && b.align > 16 && addr(b.p) % b.align != 0)
    fails.add(std::string(where) + ": misaligned block");
  switch (rng() % 4) {
    case 0:
      if (b.align)
        A::free_aligned_sized(b.p, b.align, b.n);
      else
        A::free_sized(b.p, b.n);
      break;
    case 1: {
      if (b.align) {
        A::free(b.p);
        break;
      }
      std::size_t m = 1 + rng() % 2048;
      void* q = A::realloc(b.p, m);
      if (!q) {
        fails.add(std::string(where) + ": realloc returned NULL");
        A::free(b.p);
        break;
      }
      if (first_bad(q, std::min(m, b.n), b.seed) >= 0)
        fails.add(std::string(where) + ": realloc lost data");
      A::free(q);
      break;
    }
    default:
      A::free(b.p);
  }
}

template <class A>
class Threads : public ::testing::Test {};
TYPED_TEST_SUITE_P(Threads);

// Several threads allocate blocks of mixed sizes and alignments, write a pattern into every byte
// and send them to other threads, which check every byte and free them (free, free_sized,
// free_aligned_sized or realloc+free).
TYPED_TEST_P(Threads, CrossThreadHandOffStress) {
  using A = TypeParam;
  constexpr int kThreads = 4;
  const long per_thread = kSanitized ? 6000 : 40000;
  struct Inbox {
    std::mutex m;
    std::vector<Block> q;
  };
  Inbox inbox[kThreads];
  std::atomic<long> consumed{0};
  Failures fails;
  auto worker = [&](int me) {
    std::mt19937_64 rng(me * 7777 + 1);
    std::vector<Block> out, in, mine;
    long produced = 0;
    while (consumed.load() < per_thread * kThreads) {
      if (produced < per_thread) {
        for (int k = 0; k < 64 && produced < per_thread; ++k, ++produced) {
          Block b;
          if (!alloc_block<A>(rng, b)) {
            fails.add("allocation failed");
            continue;
          }
          b.seed = (std::uint64_t(me) << 40) | produced;
          fill(b.p, b.n, b.seed);
          if (rng() % 8 == 0)
            mine.push_back(b);  // some stay with their owner for a while
          else
            out.push_back(b);
        }
        for (auto& b : out) {
          int to = (me + 1 + rng() % (kThreads - 1)) % kThreads;
          std::lock_guard<std::mutex> g(inbox[to].m);
          inbox[to].q.push_back(b);
        }
        out.clear();
        if (mine.size() > 256) {
          for (auto& b : mine) check_and_release<A>(b, rng, fails, "owner");
          consumed += static_cast<long>(mine.size());
          mine.clear();
        }
      } else if (!mine.empty()) {
        for (auto& b : mine) check_and_release<A>(b, rng, fails, "owner");
        consumed += static_cast<long>(mine.size());
        mine.clear();
      }
      {
        std::lock_guard<std::mutex> g(inbox[me].m);
        in.swap(inbox[me].q);
      }
      for (auto& b : in) check_and_release<A>(b, rng, fails, "receiver");
      consumed += static_cast<long>(in.size());
      in.clear();
      if (produced >= per_thread) std::this_thread::yield();
    }
  };
  std::vector<std::thread> ts;
  for (int i = 0; i < kThreads; ++i) ts.emplace_back(worker, i);
  for (auto& t : ts) t.join();
  EXPECT_EQ(fails.count(), 0) << fails.first();
  EXPECT_EQ(consumed.load(), per_thread * kThreads);
}

// One thread allocates, another frees (every free is remote). If remote frees were never reclaimed
// the process would grow by the whole traffic (64+ MiB); with reclamation it stays flat.
TYPED_TEST_P(Threads, RemoteFreesAreReclaimed) {
  using A = TypeParam;
  const long total = kSanitized ? 200000 : 1000000;
  constexpr std::size_t kRing = 4096;
  std::vector<std::atomic<void*>> ring(kRing);
  for (auto& s : ring) s.store(nullptr);
  Failures fails;
  std::atomic<std::size_t> rss_after_warmup{0};
  auto size_of = [](long i) -> std::size_t { return (i % 5 == 0) ? 256 : 64; };
  std::thread consumer([&] {
    for (long i = 0; i < total; ++i) {
      void* p;
      while ((p = ring[i % kRing].exchange(nullptr, std::memory_order_acquire)) == nullptr)
        std::this_thread::yield();
      std::size_t n = size_of(i);
      if (first_bad(p, n, i) >= 0) fails.add("remote block corrupt at #" + std::to_string(i));
      if (i & 1)
        A::free_sized(p, n);
      else
        A::free(p);
    }
  });
  for (long i = 0; i < total; ++i) {
    if (i == total / 10) rss_after_warmup = rss_bytes();
    std::size_t n = size_of(i);
    void* p = A::malloc(n);
    if (!p) {
      fails.add("malloc failed");
      break;
    }
    fill(p, n, i);
    while (ring[i % kRing].load(std::memory_order_relaxed) != nullptr) std::this_thread::yield();
    ring[i % kRing].store(p, std::memory_order_release);
  }
  consumer.join();
  EXPECT_EQ(fails.count(), 0) << fails.first();
  std::size_t now = rss_bytes(), base = rss_after_warmup.load();
  std::size_t growth = now > base ? now - base : 0;
  EXPECT_LT(growth, std::size_t{16} << 20)
      << "RSS grew by " << (growth >> 20) << " MiB over " << total
      << " remote frees: remotely freed blocks are not reused";
}

// The first allocator call of a thread is a free of a block from another thread; a thread exits
// with live blocks that the main thread frees; the memory is used again afterwards.
TYPED_TEST_P(Threads, FreeAcrossThreadsAndAfterThreadExit) {
  using A = TypeParam;
  std::vector<Block> v;
  for (int i = 0; i < 3000; ++i) {
    Block b{nullptr, static_cast<std::size_t>(1 + (i * 37) % 700), static_cast<std::uint64_t>(i),
            0};
    b.p = A::malloc(b.n);
    ASSERT_NE(b.p, nullptr);
    fill(b.p, b.n, b.seed);
    v.push_back(b);
  }
  Failures fails;
  std::thread([&] {
    for (auto& b : v) {
      if (first_bad(b.p, b.n, b.seed) >= 0) fails.add("block from main corrupt");
      A::free(b.p);
    }
  }).join();
  EXPECT_EQ(fails.count(), 0) << fails.first();
  v.clear();
  // A thread allocates and exits; main checks and frees its blocks.
  for (int round = 0; round < 4; ++round) {
    std::thread([&] {
      for (int i = 0; i < 3000; ++i) {
        Block b{nullptr, static_cast<std::size_t>(1 + (i * 53) % 900),
                static_cast<std::uint64_t>(i + 100000), 0};
        b.p = A::malloc(b.n);
        if (!b.p) {
          fails.add("malloc failed in thread");
          return;
        }
        fill(b.p, b.n, b.seed);
        v.push_back(b);
      }
    }).join();
    ASSERT_EQ(fails.count(), 0) << fails.first();
    for (auto& b : v) {
      ASSERT_EQ(first_bad(b.p, b.n, b.seed), -1) << "block of an exited thread corrupt";
      A::free(b.p);
    }
    v.clear();
  }
  // Main allocates the same classes again: all fine, nothing overlapping.
  std::vector<Span> spans;
  for (int i = 0; i < 6000; ++i) {
    Block b{nullptr, static_cast<std::size_t>(1 + (i * 37) % 700),
            static_cast<std::uint64_t>(i + 500000), 0};
    b.p = A::malloc(b.n);
    ASSERT_NE(b.p, nullptr);
    fill(b.p, b.n, b.seed);
    v.push_back(b);
    spans.push_back({b.p, b.n});
  }
  EXPECT_EQ(find_overlap(spans), "");
  for (auto& b : v) {
    EXPECT_EQ(first_bad(b.p, b.n, b.seed), -1);
    A::free(b.p);
  }
}

// What a thread-specific-data destructor that runs late in a thread's exit allocates. jemalloc
// tears a thread's own state down in its key's destructor; a key created after it (as here:
// trimalloc, and so jemalloc, started long before) has its destructor run after that, and
// jemalloc then serves the thread from its automatic arena 0, whatever trimalloc bound it to.
// Such blocks were outside trimalloc's arena map: not owned, and free() aborted on them as
// foreign pointers. Each destructor re-arms the key twice, for glibc's later rounds.
namespace late_destructor {
inline std::atomic<int> g_rounds{0};
inline std::atomic<int> g_not_owned{0};
inline std::atomic<int> g_failed{0};
inline pthread_key_t g_key;
template <class A>
void run(void* first) {
  A::free(first);
  std::vector<void*> live;
  for (std::size_t n : {24, 200, 600, 1024, 5000, 40000, 300000, 3 << 20}) {
    for (void* p :
         {A::malloc(n), A::calloc(1, n), A::aligned_alloc(64, n), A::realloc(nullptr, n)}) {
      if (!p) {
        ++g_failed;
        continue;
      }
      if (!tm_owns(p)) {
        ++g_not_owned;  // left alone: freeing it is what aborted
        continue;
      }
      std::memset(p, 0x5a, n);
      live.push_back(p);
    }
    void* grown = A::realloc(A::malloc(n), 2 * n);
    if (grown && tm_owns(grown))
      live.push_back(grown);
    else
      ++g_not_owned;
  }
  for (void* p : live) A::free(p);
  if (++g_rounds % 3 != 0) pthread_setspecific(g_key, A::malloc(48));
}
}  // namespace late_destructor

TYPED_TEST_P(Threads, AllocationInALateThreadDestructorIsTrimallocs) {
  using A = TypeParam;
  namespace ld = late_destructor;
  ld::g_rounds = 0;
  ld::g_not_owned = 0;
  ld::g_failed = 0;
  A::free(A::malloc(100000));  // the large allocator (jemalloc) starts before the key exists
  ASSERT_EQ(pthread_key_create(&ld::g_key, [](void* p) { ld::run<A>(p); }), 0);
  for (int t = 0; t < 4; ++t) {
    std::thread([] {
      A::free(A::malloc(5000));  // this thread's jemalloc state exists, bound to our arena
      pthread_setspecific(ld::g_key, A::malloc(48));
    }).join();
  }
  pthread_key_delete(ld::g_key);
  EXPECT_EQ(ld::g_rounds.load(), 12) << "each thread's destructor ran in three rounds";
  EXPECT_EQ(ld::g_failed.load(), 0) << "allocations in a late destructor failed";
  EXPECT_EQ(ld::g_not_owned.load(), 0)
      << "blocks allocated in a late destructor are not trimalloc's";
}

// Thousands of short-lived threads (a few at a time), each allocating in every small class and a
// few large blocks, freeing most, freeing some left by earlier threads, and leaving a few for the
// main thread. Pools of exited threads must be handed back: RSS must not grow with the number of
// threads.
TYPED_TEST_P(Threads, ThreadChurnKeepsRssBounded) {
  using A = TypeParam;
  const int kTotal = kSanitized ? 600 : 3000;
  constexpr int kConcurrent = 8;
  std::mutex m;
  std::deque<Block> leftovers;
  Failures fails;
  std::atomic<std::uint64_t> next_seed{1};
  auto body = [&] {
    std::vector<Block> mine;
    for (int k = 0; k < 80; ++k) {
      Block b{nullptr, 0, next_seed++, 0};
      b.n = k < 64 ? 16 * (1 + k % 32) - (k % 7) : (k % 2 ? 2000 : 70000);
      b.p = A::malloc(b.n);
      if (!b.p) {
        fails.add("malloc failed in short-lived thread");
        return;
      }
      fill(b.p, b.n, b.seed);
      mine.push_back(b);
    }
    std::vector<Block> theirs;
    {
      std::lock_guard<std::mutex> g(m);
      for (int k = 0; k < 4 && !leftovers.empty(); ++k) {
        theirs.push_back(leftovers.front());
        leftovers.pop_front();
      }
      for (std::size_t k = 0; k < mine.size(); k += 10)
        leftovers.push_back(mine[k]);  // 8 left behind
    }
    for (std::size_t k = 0; k < mine.size(); ++k) {
      if (k % 10 == 0) continue;
      if (first_bad(mine[k].p, mine[k].n, mine[k].seed) >= 0) fails.add("own block corrupt");
      A::free(mine[k].p);
    }
    for (auto& b : theirs) {
      if (first_bad(b.p, b.n, b.seed) >= 0) fails.add("block of an exited thread corrupt");
      A::free(b.p);
    }
  };
  std::size_t rss_base = 0;
  for (int started = 0; started < kTotal; started += kConcurrent) {
    std::thread ts[kConcurrent];
    for (auto& t : ts) t = std::thread(body);
    for (auto& t : ts) t.join();
    // The main thread frees half of what is left over.
    std::lock_guard<std::mutex> g(m);
    for (std::size_t k = leftovers.size() / 2; k > 0; --k) {
      Block b = leftovers.back();
      leftovers.pop_back();
      if (first_bad(b.p, b.n, b.seed) >= 0) fails.add("leftover block corrupt");
      A::free(b.p);
    }
    if (started == 200) rss_base = rss_bytes();
  }
  for (auto& b : leftovers) {
    EXPECT_EQ(first_bad(b.p, b.n, b.seed), -1);
    A::free(b.p);
  }
  EXPECT_EQ(fails.count(), 0) << fails.first();
  std::size_t now = rss_bytes();
  std::size_t growth = now > rss_base ? now - rss_base : 0;
  // Stranded pools would cost 32+ pages per thread (hundreds of MiB here).
  EXPECT_LT(growth, std::size_t{32} << 20)
      << "RSS grew by " << (growth >> 20) << " MiB over " << kTotal - 200 << " short-lived threads";
}

// fork() while other threads are allocating and freeing: every child must be able to allocate and
// free (small, large, aligned, blocks from before the fork), and exit 0 without deadlocking.
TYPED_TEST_P(Threads, ForkWhileOtherThreadsAllocate) {
  using A = TypeParam;
  std::atomic<bool> stop{false};
  std::atomic<long> work{0};
  std::atomic<int> running{0};
  std::vector<std::thread> ts;
  for (int i = 0; i < 3; ++i) {
    ts.emplace_back([&, i] {
      // Forks wait for every thread to be past its start-up: a sanitizer's thread registration
      // allocates from the sanitizer's own malloc, which GCC 12's runtimes do not lock across
      // fork (a child forked in that window hangs in the sanitizer, not in trimalloc).
      running.fetch_add(1);
      std::mt19937_64 rng(i);
      std::vector<Block> ring(64, Block{nullptr, 0, 0, 0});
      std::size_t k = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        Block& b = ring[k++ % ring.size()];
        if (b.p) A::free(b.p);
        if (!alloc_block<A>(rng, b)) continue;
        std::memset(b.p, 0x5c, b.n);
        ++work;
      }
      for (auto& b : ring)
        if (b.p) A::free(b.p);
    });
  }
  // Blocks the main thread owns across the fork; each child checks and frees them.
  std::vector<Block> before;
  for (int i = 0; i < 200; ++i) {
    Block b{nullptr, static_cast<std::size_t>(1 + i * 13 % 1500), static_cast<std::uint64_t>(i), 0};
    b.p = A::malloc(b.n);
    ASSERT_NE(b.p, nullptr);
    fill(b.p, b.n, b.seed);
    before.push_back(b);
  }
  while (work.load() < 1000 || running.load() < 3) std::this_thread::yield();
  const int kForks = kSanitized ? 8 : 25;
  for (int f = 0; f < kForks; ++f) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int rc = 0;
      for (auto& b : before) {
        if (first_bad(b.p, b.n, b.seed) >= 0) rc = 2;
        A::free(b.p);
      }
      std::vector<Block> mine;
      for (int i = 0; i < 3000; ++i) {
        Block b{nullptr, static_cast<std::size_t>(1 + (i * 29) % 5000),
                static_cast<std::uint64_t>(i + 7), 0};
        b.p = (i % 10 == 9) ? A::aligned_alloc(256, b.n) : A::malloc(b.n);
        if (!b.p) _exit(3);
        fill(b.p, b.n, b.seed);
        mine.push_back(b);
        if (i % 3 == 0) {
          Block& o = mine[mine.size() / 2];
          if (first_bad(o.p, o.n, o.seed) >= 0) rc = 4;
          A::free(o.p);
          o = mine.back();
          mine.pop_back();
        }
      }
      for (auto& b : mine) {
        if (first_bad(b.p, b.n, b.seed) >= 0) rc = 5;
        A::free(b.p);
      }
      if (!kTsan) {
        // A thread of the child allocates too (the parent's threads do not exist here).
        std::atomic<int> trc{0};
        std::thread t([&] {
          for (int i = 0; i < 1000; ++i) {
            void* p = A::malloc(1 + i % 600);
            if (!p) {
              trc = 6;
              return;
            }
            std::memset(p, 1, 1 + i % 600);
            A::free(p);
          }
        });
        t.join();
        if (trc) rc = trc;
      }
      _exit(rc);
    }
    int status = wait_with_deadline(pid, 30);
    EXPECT_TRUE(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "fork #" << f << ": " << describe_status(status);
  }
  stop = true;
  for (auto& t : ts) t.join();
  for (auto& b : before) {
    EXPECT_EQ(first_bad(b.p, b.n, b.seed), -1);
    A::free(b.p);
  }
}

REGISTER_TYPED_TEST_SUITE_P(Threads, CrossThreadHandOffStress, RemoteFreesAreReclaimed,
                            FreeAcrossThreadsAndAfterThreadExit,
                            AllocationInALateThreadDestructorIsTrimallocs,
                            ThreadChurnKeepsRssBounded, ForkWhileOtherThreadsAllocate);

}  // namespace tmtest
