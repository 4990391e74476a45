// Automatic return of idle memory (issue 3), in a process of its own: the decay thread must not
// exist while the heap is small, must appear once the heap has grown (started from an
// allocation path, never from free), and must give back freed memory - free pools, free pages
// of an idle thread's pools, jemalloc's dirty pages - within a few decay periods, with no trim
// call at all, even though the program never allocates again after freeing.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <trimalloc/stats.h>
#include <trimalloc/trimalloc.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "resident.h"
#include "test_support.h"  // tests/core

using namespace trimtest;

namespace {
// The decay thread's /proc/self/task/<tid> directory, or "" if there is no such thread.
std::string decay_thread_dir() {
  DIR* d = opendir("/proc/self/task");
  std::string found;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::string dir = std::string("/proc/self/task/") + e->d_name;
    std::ifstream comm(dir + "/comm");
    std::string name;
    std::getline(comm, name);
    if (name == "trimalloc-decay") found = dir;
  }
  closedir(d);
  return found;
}

// Times the decay thread has gone to sleep and woken since it started (voluntary context
// switches: each futex wait, timed or not, is one); -1 if there is no such thread. Reads with
// open/read into the stack after the first call: an ifstream's buffer is a large block, and its
// free would wake the very thread being watched.
long decay_thread_wakeups() {
  static char path[128];
  if (path[0] == 0) {
    std::string dir = decay_thread_dir();
    if (dir.empty()) return -1;
    std::snprintf(path, sizeof path, "%s/status", dir.c_str());
  }
  char buf[4096];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  const char* line = std::strstr(buf, "\nvoluntary_ctxt_switches:");
  return line ? std::strtol(line + 26, nullptr, 10) : -1;
}

bool decay_thread_exists() {
  return !decay_thread_dir().empty();
}

// CPU time (user + system, in clock ticks) the decay thread has used; -1 if there is none.
long decay_thread_cpu_ticks() {
  std::string dir = decay_thread_dir();
  if (dir.empty()) return -1;
  std::ifstream stat(dir + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  std::istringstream rest(text.substr(text.rfind(')') + 2));  // fields from 3 (state) on
  std::string field;
  long utime = 0, stime = 0;
  for (int f = 3; f <= 15 && rest >> field; ++f) {
    if (f == 14) utime = std::stol(field);
    if (f == 15) stime = std::stol(field);
  }
  return utime + stime;
}

// Polls until fewer than `limit` of `pages` are resident or `seconds` pass; returns the count.
std::size_t wait_resident_below(const std::set<std::uintptr_t>& pages, std::size_t limit,
                                double seconds) {
  auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  std::size_t n;
  while ((n = resident_pages(pages)) > limit && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  return n;
}
}  // namespace

// Without a decay thread nothing would ever return an empty arena kept for reuse, so it is
// unmapped at once (beside one kept empty arena, whose pages are purged), as before empty
// arenas were cached. Free pools of an arena still in use (the one GoogleTest's own objects
// live in) are returned by decay run from the malloc slow path instead, once the decay time
// has passed. First in this file, so that no thread exists yet even when all tests share one
// process.
TEST(Decay, WithoutAThreadEmptiedArenasGoBackAtOnce) {
  ASSERT_FALSE(decay_thread_exists()) << "another test started the thread first";
  ASSERT_EQ(tm_option_set("background_thread", 0), 0);
  ASSERT_EQ(tm_option_set("decay_ms", 300), 0);
  // No small block is allocated from here to the end of the test: reserved vectors (large
  // blocks) hold the bookkeeping. A small one taken after the frees would reuse one of the freed
  // pools, with its pages still resident; one taken before could keep an arena in use.
  std::vector<void*> blocks(100000);
  std::vector<std::uintptr_t> emptied, shared;
  emptied.reserve(blocks.size());
  shared.reserve(blocks.size());
  for (auto& p : blocks) {  // 25 MiB of 256-byte blocks
    p = tm_malloc(256);
    std::memset(p, 7, 256);
  }
  // The arena the first block went to already held other objects: it stays in use. So does,
  // in the hardened build, the one whose blocks were freed last (its quarantine holds them).
  const std::uintptr_t first_arena = arena_start(blocks.front());
#if defined(TRIMALLOC_SECURE)
  const std::uintptr_t last_arena = arena_start(blocks.back());
#else
  const std::uintptr_t last_arena = first_arena;
#endif
  for (void* p : blocks) tm_free(p);
  for (void* p : blocks) {
    const std::uintptr_t a = arena_start(p);
    (a == first_arena || a == last_arena ? shared : emptied).push_back(page_of(p));
  }
  for (auto* v : {&emptied, &shared}) {
    std::sort(v->begin(), v->end());
    v->erase(std::unique(v->begin(), v->end()), v->end());
  }
  ASSERT_GT(emptied.size(), shared.size());
  const std::size_t left = resident_pages(emptied);
  EXPECT_LE(left, emptied.size() / 10) << "of " << emptied.size() << " freed pages, at once";

  // After the decay time, an allocation slow path runs the decay pass that returns the shared
  // arena's free pools: a large allocation (a small one could take one of those pools back).
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  tm_free(tm_malloc(64 << 10));
  EXPECT_LE(resident_pages(shared), shared.size() / 10)
      << "of " << shared.size() << " freed pages in the arena still in use, after the decay time";
  // The heap is small again: allowing the thread does not start it.
  ASSERT_EQ(tm_option_set("background_thread", 1), 0);
  EXPECT_FALSE(decay_thread_exists());
}

TEST(Decay, StartsLazilyAndReturnsIdleMemoryWithoutACall) {
  ASSERT_EQ(tm_option_set("decay_ms", 300), 0);
  // A small heap, some of it freed: no thread.
  {
    std::vector<void*> small;
    for (int i = 0; i < 20000; ++i) small.push_back(tm_malloc(100));
    for (void* p : small) tm_free(p);
  }
  EXPECT_FALSE(decay_thread_exists()) << "started for a heap of a few hundred KiB";
  std::vector<void*> blocks;
  for (int i = 0; i < 300000; ++i) {
    void* p = tm_malloc(64);
    fill(p, 64);
    blocks.push_back(p);
  }
  EXPECT_TRUE(decay_thread_exists()) << "a 19 MiB heap should have its decay thread";

  // Free all but one block in 256 (three pages in four hold no survivor).
  std::set<std::uintptr_t> free_pages, live_pages;
  std::vector<void*> keep;
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    if (i % 256 == 0) {
      keep.push_back(blocks[i]);
      live_pages.insert(page_of(blocks[i]));
    } else {
      free_pages.insert(page_of(blocks[i]));
    }
  }
  for (auto pg : live_pages) free_pages.erase(pg);
  for (std::size_t i = 0; i < blocks.size(); ++i)
    if (i % 256) tm_free(blocks[i]);
  // And some large blocks, freed: jemalloc's dirty pages must go too.
  std::set<std::uintptr_t> large_pages;
  std::vector<void*> large;
  for (int i = 0; i < 32; ++i) {
    void* p = tm_malloc(512 * 1024);
    std::memset(p, 1, 512 * 1024);
    for (std::size_t off = 0; off < 512 * 1024; off += 4096)
      large_pages.insert(page_of(static_cast<char*>(p) + off));
    large.push_back(p);
  }
  for (void* p : large) tm_free(p);
  // No allocation from here on: the sleeping thread is woken by the frees alone.

  auto t0 = std::chrono::steady_clock::now();
  std::size_t left = wait_resident_below(free_pages, free_pages.size() / 20, 5.0);
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(decay_thread_exists());
  EXPECT_LE(left, free_pages.size() / 20)
      << "small free pages still resident after " << took << " s";
  EXPECT_LE(wait_resident_below(large_pages, large_pages.size() / 20, 5.0),
            large_pages.size() / 20);
  EXPECT_LT(took, 3.0);
  for (void* p : keep) {
    ASSERT_TRUE(check(p, 64));
    tm_free(p);
  }
}

// A thread that frees most of its blocks and then keeps allocating is never idle for the decay
// time, so the decay thread does not visit it; it gives the free pages back itself, on its own
// allocation slow paths, once it has held them for a decay time. (Before this, nothing returned
// them: with 128 KiB pools, one block kept in 64 leaves hardly any pool empty.)
TEST(Decay, ABusyThreadGivesBackPagesItFreedWithoutACall) {
  ASSERT_EQ(tm_option_set("decay_ms", 200), 0);
  std::size_t left = 0, total = 0;
  double took = 0;
  bool intact = true;
  std::thread([&] {
    constexpr std::size_t kCount = 400000, kKeep = 64;  // 51 MiB of 128-byte blocks
    std::vector<void*> blocks(kCount);
    std::vector<std::uintptr_t> live, freed;  // reserved: no small block after the frees
    live.reserve(kCount);
    freed.reserve(kCount);
    for (auto& p : blocks) {
      p = tm_malloc(128);
      fill(p, 128);
    }
    for (std::size_t i = 0; i < kCount; ++i)
      (i % kKeep ? freed : live).push_back(page_of(blocks[i]));
    std::sort(live.begin(), live.end());
    std::sort(freed.begin(), freed.end());
    freed.erase(std::unique(freed.begin(), freed.end()), freed.end());
    freed.erase(std::remove_if(freed.begin(), freed.end(),
                               [&](std::uintptr_t pg) {
                                 return std::binary_search(live.begin(), live.end(), pg);
                               }),
                freed.end());
    for (std::size_t i = 0; i < kCount; ++i)
      if (i % kKeep) tm_free(blocks[i]);
    total = freed.size();
    // Busy: replace random blocks of a working set (16..255 bytes) with no pause. Frees land all
    // over the pools, so each class's current pool runs dry now and then and the slow path runs
    // (a heap whose slow path had not run for the decay time would be visited instead).
    std::vector<void*> work(20000, nullptr);
    std::uint64_t x = 88172645463325252ull;
    auto t0 = std::chrono::steady_clock::now();
    do {
      for (int k = 0; k < 100000; ++k) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        void*& slot = work[x % work.size()];
        tm_free(slot);
        slot = tm_malloc(16 + (x >> 32) % 240);
      }
      left = resident_pages(freed);
      took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    } while (left > total / 10 && took < 10.0);
    for (void* p : work) tm_free(p);
    for (std::size_t i = 0; i < kCount; i += kKeep) {
      intact = intact && check(blocks[i], 128);
      tm_free(blocks[i]);
    }
  }).join();
  ASSERT_GT(total, 5000u);
  EXPECT_LE(left, total / 10) << "of " << total << " freed pages, still resident after " << took
                              << " s of allocation";
  EXPECT_TRUE(intact) << "a survivor's data changed";
}

// A heap freed whole leaves empty arenas: they are cached like any free pool, and decay
// unmaps them once they have been idle for decay_ms, with no call.
TEST(Decay, UnmapsEmptiedArenasOnceTheyHaveBeenIdle) {
  ASSERT_EQ(tm_option_set("decay_ms", 300), 0);
  std::vector<void*> blocks;
  std::set<std::uintptr_t> pages;
  for (int i = 0; i < 100000; ++i) {  // 25 MiB of 256-byte blocks
    void* p = tm_malloc(256);
    std::memset(p, 7, 256);
    pages.insert(page_of(p));
    blocks.push_back(p);
  }
  for (void* p : blocks) tm_free(p);
  auto t0 = std::chrono::steady_clock::now();
  std::size_t left = wait_resident_below(pages, pages.size() / 50, 5.0);
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LE(left, pages.size() / 50) << "of " << pages.size() << " pages, after " << took << " s";
  EXPECT_LT(took, 3.0);
}

// Decay turned off while the thread runs: freed memory stays, and the thread, woken by the
// frees, goes back to sleep rather than looking at the kept memory again and again.
TEST(Decay, OffMeansOff) {
  ASSERT_EQ(tm_option_set("decay_ms", 300), 0);
  std::set<std::uintptr_t> free_pages;
  std::vector<void*> blocks, keep;
  for (int i = 0; i < 200000; ++i) blocks.push_back(tm_malloc(96));
  ASSERT_TRUE(decay_thread_exists()) << "a 19 MiB heap should have its decay thread";
  ASSERT_EQ(tm_option_set("decay_ms", -1), 0);
  for (auto* p : blocks) std::memset(p, 3, 96);
  std::set<std::uintptr_t> live;
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    if (i % 512 == 0) {
      keep.push_back(blocks[i]);
      live.insert(page_of(blocks[i]));
      live.insert(page_of(static_cast<char*>(blocks[i]) + 95));
    } else {
      free_pages.insert(page_of(blocks[i]));
      free_pages.insert(page_of(static_cast<char*>(blocks[i]) + 95));
    }
  }
  for (auto pg : live) free_pages.erase(pg);
  for (std::size_t i = 0; i < blocks.size(); ++i)
    if (i % 512) tm_free(blocks[i]);
  std::size_t before = resident_pages(free_pages);
  long cpu_before = decay_thread_cpu_ticks();
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  EXPECT_GT(resident_pages(free_pages), before * 9 / 10) << "released with decay_ms = -1";
  ASSERT_GE(cpu_before, 0);
  EXPECT_LE(decay_thread_cpu_ticks() - cpu_before, sysconf(_SC_CLK_TCK) / 10)
      << "the decay thread kept running for 1.2 s with decay off";
  for (void* p : keep) tm_free(p);
}

namespace {
// Makes the heap worth a decay thread (12 MiB of live small blocks, so that the large blocks
// need no allocation after their frees to go back), then seven 1 MiB blocks (each an extent of
// 1 MiB and a page: even merged, their free extents stay under the 8 MiB that jemalloc purges
// at once, so it is the decay that returns them). Runs `before_frees`, frees each block with
// `free_one`, and expects the blocks' first and last pages unmapped within 5 s (checked with
// mincore, which fails on unmapped memory, not with VmSize, which the decay thread's own
// start-up mappings can move by several MiB).
template <typename BeforeFrees, typename FreeOne>
void expect_large_blocks_unmapped(BeforeFrees before_frees, FreeOne free_one) {
  ASSERT_EQ(tm_option_set("decay_ms", 300), 0);
  std::vector<void*> small;
  small.reserve(50000);
  for (int i = 0; i < 50000; ++i) small.push_back(tm_malloc(256));
  std::vector<void*> blocks;
  blocks.reserve(7);
  for (int i = 0; i < 7; ++i) {
    void* p = tm_malloc(1 << 20);
    ASSERT_NE(p, nullptr);
    std::memset(p, 1, 1 << 20);
    blocks.push_back(p);
  }
  auto mapped = [&] {
    std::size_t n = 0;
    for (void* p : blocks) {
      unsigned char v[2];
      for (std::size_t off : {std::size_t{0}, (std::size_t{1} << 20) - 4096})
        n += mincore(reinterpret_cast<void*>(page_of(static_cast<char*>(p) + off)), 4096, v) == 0;
    }
    return n;
  };
  ASSERT_EQ(mapped(), 2 * blocks.size());
  before_frees();
  for (void* p : blocks) free_one(p);
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  std::size_t left;
  while ((left = mapped()) > 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(left, 0u) << "of the freed blocks' first and last pages, " << left
                      << " still mapped 5 s after the frees";
  for (void* p : small) tm_free(p);
}
}  // namespace

// Freed large blocks give back their address space too, not only their pages: once jemalloc's
// decay hands the dirty extents back, every region left wholly free is unmapped.
TEST(Decay, ReturnsTheAddressSpaceOfFreedLargeBlocksWithoutACall) {
  expect_large_blocks_unmapped([] {}, [](void* p) { tm_free(p); });
}

// The same through the sized free (C++'s sized delete, free_sized): every way a large block is
// freed must wake a decay thread that sleeps with nothing to do, or its pages wait for some
// other free to wake it. Here nothing else comes: the thread is seen asleep before the frees.
TEST(Decay, LargeBlocksFreedBySizeAlsoGoBackWithoutACall) {
  auto wait_until_asleep = [] {
    // Asleep with no timeout: no wake-up for 600 ms (a timed sleep is at most decay/4 = 75 ms).
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      long before = decay_thread_wakeups();
      std::this_thread::sleep_for(std::chrono::milliseconds(600));
      long wakeups = decay_thread_wakeups();
      if (before >= 0 && wakeups == before) return;
      ASSERT_LT(std::chrono::steady_clock::now(), until)
          << "the decay thread never went to sleep (wake-ups: " << wakeups << ")";
    }
  };
  expect_large_blocks_unmapped(wait_until_asleep, [](void* p) { tm_free_sized(p, 1 << 20); });
}

// A thread that keeps allocating (so it is never visited) but frees nothing has nothing to give
// back: its pools' uncarved pages are not free memory. The decay thread must sleep, not wake
// every decay/4 to look at it.
TEST(Decay, SleepsBesideABusyThreadWithNothingToGiveBack) {
  ASSERT_EQ(tm_option_set("decay_ms", 300), 0);
  std::vector<void*> live;
  live.reserve(200000);
  for (int i = 0; i < 50000; ++i) live.push_back(tm_malloc(256));  // worth a decay thread
  // The first call finds the thread's /proc directory, with allocations and frees: made here,
  // so that this thread frees nothing from the settling on. (Hardened build: what it frees waits
  // in this thread's quarantine, which is worth a visit once the thread is idle, so a busy
  // thread with a quarantine to empty keeps the decay thread ticking.)
  ASSERT_GE(decay_thread_wakeups(), 0) << "no decay thread";
  // Let it settle (the vector's own growth left dirty large pages for it to return, and in the
  // hardened build it empties this thread's quarantine, this thread being idle meanwhile).
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  long before = decay_thread_wakeups();
  ASSERT_GE(before, 0) << "no decay thread";
  // 1.5 s of steady growth: a new page of 256-byte blocks (a slow path) every 16 blocks.
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  while (std::chrono::steady_clock::now() < end && live.size() < live.capacity()) {
    for (int i = 0; i < 16; ++i) live.push_back(tm_malloc(256));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  long wakeups = decay_thread_wakeups() - before;
  // A timed sleep every 75 ms would be 20 wake-ups; a couple are allowed for passes that were
  // already under way.
  EXPECT_LE(wakeups, 3) << "the decay thread woke " << wakeups
                        << " times in 1.5 s with nothing to return";
  for (void* p : live) tm_free(p);
}

namespace {
// Sets decay_ms for one test and puts the previous value back.
struct DecayFor {
  long long saved = 0;
  explicit DecayFor(long long ms) {
    tm_option_get("decay_ms", &saved);
    EXPECT_EQ(tm_option_set("decay_ms", ms), 0);
  }
  ~DecayFor() { tm_option_set("decay_ms", saved); }
};

void insert_pages(std::set<std::uintptr_t>& pages, const void* p, std::size_t n) {
  for (std::size_t off = 0; off < n; off += 4096)
    pages.insert(page_of(static_cast<const char*>(p) + off));
}

// Grows a buffer by realloc, an eighth at a time (a Python list's pointer array grows so),
// from 1 MiB to over `limit`, writing the new part at each step. Returns the buffer and its
// size; `old` gets the pages of every copy realloc left behind.
std::pair<char*, std::size_t> grow_by_realloc(std::size_t limit, std::set<std::uintptr_t>& old) {
  std::size_t n = std::size_t{1} << 20;
  auto* p = static_cast<char*>(tm_malloc(n));
  for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<char>(i * 7 + 3);
  while (n < limit) {
    std::size_t m = n + n / 8;
    auto* q = static_cast<char*>(tm_realloc(p, m));
    if (q == nullptr) return {nullptr, 0};
    if (q != p) insert_pages(old, p, n);
    std::memset(q + n, 5, m - n);
    p = q;
    n = m;
  }
  return {p, n};
}
}  // namespace

// Each copy a growing buffer leaves behind is smaller than every later request, so nothing
// reuses it: realloc's blocks of 1 MiB or more are purged as soon as they are freed or moved,
// instead of decaying (455 MiB resident for a 69 MiB buffer when they decayed).
TEST(Decay, ABufferGrownByReallocLeavesNoOldCopiesResident) {
  DecayFor decay(60000);  // far beyond the test: whatever goes back here goes back at once
  std::set<std::uintptr_t> old;
  auto [p, n] = grow_by_realloc(std::size_t{48} << 20, old);
  ASSERT_NE(p, nullptr);
  for (std::size_t i = 0; i < (std::size_t{1} << 20); ++i)
    ASSERT_EQ(p[i], static_cast<char>(i * 7 + 3)) << "byte " << i << " lost in the moves";
  for (std::size_t off = 0; off < n; off += 4096) old.erase(page_of(p + off));
  std::size_t resident = resident_pages(old);
  // The buffer starts as a plain malloc of 1 MiB in the main arena, and may grow in place there
  // before its first move: those copies decay (2 MiB here), every later one went at once.
  EXPECT_LE(resident, std::size_t{768}) << "of " << old.size() << " pages of old copies";
  std::set<std::uintptr_t> last;
  insert_pages(last, p, n);
  tm_free(p);
  EXPECT_EQ(resident_pages(last), 0u) << "of the grown buffer's " << last.size() << " pages";
}

// With decay off ("never return on your own") the old copies stay until a trim.
TEST(Decay, OffKeepsOldCopiesOfAGrownBufferUntilATrim) {
  DecayFor decay(-1);
  std::set<std::uintptr_t> old;
  auto [p, n] = grow_by_realloc(std::size_t{24} << 20, old);
  ASSERT_NE(p, nullptr);
  for (std::size_t off = 0; off < n; off += 4096) old.erase(page_of(p + off));
  std::size_t resident = resident_pages(old);
  EXPECT_GT(resident, old.size() / 2) << "released with decay_ms = -1";
  tm_free(p);
  tm_trim(TM_TRIM_FULL);
  EXPECT_LT(resident_pages(old), old.size() / 100) << "a full trim left them";
}

// Blocks malloc'ed at their size keep their pages for the next block of that size, up to the
// 8 MiB from which jemalloc purges a free extent at once.
TEST(Decay, AFreedBlockIsKeptForReuseUnder8MiBAndPurgedAtOnceFrom8MiB) {
  DecayFor decay(60000);
  for (std::size_t mib : {2, 16}) {
    std::size_t n = mib << 20;
    void* p = tm_malloc(n);
    ASSERT_NE(p, nullptr);
    std::memset(p, 1, n);
    std::set<std::uintptr_t> pages;
    insert_pages(pages, p, n);
    tm_free(p);
    std::size_t resident = resident_pages(pages);
    if (mib < 8)
      EXPECT_EQ(resident, pages.size()) << mib << " MiB: purged although it could be reused";
    else
      EXPECT_EQ(resident, 0u) << mib << " MiB: kept resident after its free";
  }
}

namespace {
constexpr std::size_t kBig = std::size_t{16} << 20;  // above the 8 MiB purge-at-once threshold

long thread_minor_faults() {
  rusage usage;
  getrusage(RUSAGE_THREAD, &usage);
  return usage.ru_minflt;
}

std::vector<std::uintptr_t> pages_of(const void* p, std::size_t n) {
  std::vector<std::uintptr_t> pages;
  pages.reserve(n / 4096 + 1);
  for (std::size_t off = 0; off < n; off += 4096)
    pages.push_back(page_of(static_cast<const char*>(p) + off));
  return pages;
}

// One round of a program that reuses a big buffer: malloc, write every page, free. Returns the
// minor page faults of the round, and the freed block's pages in `pages`.
long big_round(std::vector<std::uintptr_t>& pages) {
  long before = thread_minor_faults();
  auto* p = static_cast<char*>(tm_malloc(kBig));
  EXPECT_NE(p, nullptr);
  if (p == nullptr) return -1;
  for (std::size_t off = 0; off < kBig; off += 4096) p[off] = 1;
  pages = pages_of(p, kBig);
  tm_free(p);
  return thread_minor_faults() - before;
}
}  // namespace

// A big block freed and asked for again within the decay time is kept for reuse instead of being
// purged at once and faulted in again at every round (5 ms per 10 MiB round before). Kept means
// kept for decay: once the program stops asking, the block goes back without a call.
TEST(Decay, ABigBlockFreedAndAskedForAgainIsKeptForReuse) {
  // Long enough that decay does not take the kept block back between two rounds of a slow
  // (sanitizer) build.
  DecayFor decay(2000);
  std::vector<std::uintptr_t> pages, previous;
  [[maybe_unused]] const long pages_per_block = static_cast<long>(kBig / 4096);
  // Rounds 0-2 map afresh: the first free is purged at once, the second round is the evidence,
  // and the raise takes effect at the third round's allocation. From then on each block is
  // still resident after its free, and the next round gets the same pages, without faults.
  for (int round = 0; round < 8; ++round) {
    previous = pages;
    const long faults = big_round(pages);
    if (round < 4) continue;
    EXPECT_EQ(pages.front(), previous.front()) << "round " << round << " got other pages";
    EXPECT_EQ(resident_pages(pages), pages.size()) << "round " << round << ": purged";
#if !defined(__SANITIZE_THREAD__)  // TSan faults in shadow pages of its own now and then
    EXPECT_LT(faults, pages_per_block / 8)
        << "round " << round << " faulted its block in again (of " << pages_per_block << " pages)";
#else
    (void)faults;
#endif
  }
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  std::size_t left;
  while ((left = resident_pages(pages)) > 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(left, 0u) << "of the kept block's " << pages.size()
                      << " pages, still resident 10 s after its free (decay: 2 s)";
}

// The raise is temporary: once the program has stopped asking for big blocks again for ten
// decay times, a one-off free of a big block is purged at once again.
TEST(Decay, ABigBlockIsPurgedAtOnceAgainOnceItsReuseStops) {
  DecayFor decay(100);
  std::vector<std::uintptr_t> pages;
  for (int round = 0; round < 6; ++round) big_round(pages);
  ASSERT_GT(resident_pages(pages), pages.size() / 2) << "the threshold was never raised";
  std::this_thread::sleep_for(std::chrono::milliseconds(2000));  // hold: 10 x 100 ms
  big_round(pages);
  EXPECT_EQ(resident_pages(pages), 0u)
      << "of " << pages.size() << " pages of a one-off free after the hold";
}

// Without a decay thread nothing would give a kept block back in a program that goes idle, so
// big blocks are purged at once at every round.
TEST(Decay, WithoutAThreadBigBlocksArePurgedAtOnceAtEveryRound) {
  ASSERT_EQ(tm_option_set("background_thread", 0), 0);
  DecayFor decay(300);
  std::vector<std::uintptr_t> pages;
  for (int round = 0; round < 6; ++round) {
    big_round(pages);
    EXPECT_EQ(resident_pages(pages), 0u) << "round " << round << ": kept with no thread";
  }
  ASSERT_EQ(tm_option_set("background_thread", 1), 0);
}

// A fork child has no decay thread: a threshold the parent raised must not let the child keep a
// big freed block that nothing would give back.
TEST(Decay, AForkChildPurgesBigBlocksAtOnceWhateverTheParentRaised) {
  DecayFor decay(2000);
  std::vector<std::uintptr_t> pages;
  for (int round = 0; round < 6; ++round) big_round(pages);
  ASSERT_EQ(resident_pages(pages), pages.size()) << "the parent's threshold was never raised";
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::vector<std::uintptr_t> child_pages;
    big_round(child_pages);
    _exit(resident_pages(child_pages) == 0 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the child kept a freed 16 MiB block resident";
}

namespace {
// A thread frees `small_count` blocks of 448 bytes and `large_count` of 200 KiB, then sits idle
// (on a condition variable, outside the allocator) while the decay thread, asleep beforehand,
// must take them back with no call: within 5 s the small blocks stop counting as live and the
// large blocks' pages leave memory.
void idle_thread_frees_then_waits(std::size_t small_count, std::size_t large_count) {
  DecayFor decay(200);
  std::vector<void*> base;  // a heap worth a decay thread, live throughout
  base.reserve(200000);
  for (int i = 0; i < 200000; ++i) base.push_back(tm_malloc(64));
  ASSERT_TRUE(decay_thread_exists());
  // Asleep with no timeout (no wake-up in 400 ms, with ticks every 50 ms when awake): the idle
  // thread's frees below are what must wake it. (This thread's own quarantine, hardened build,
  // is emptied by the decay thread once this thread has been idle for the decay time.)
  long wakeups = decay_thread_wakeups();
  for (int tries = 0; tries < 12; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    const long now = decay_thread_wakeups();
    if (now == wakeups) break;
    wakeups = now;
  }
  ASSERT_EQ(decay_thread_wakeups(), wakeups) << "the decay thread never went to sleep";
  auto live_of_448 = [] {
    tm_stats st;
    EXPECT_EQ(tm_stats_get(&st), 0);
    return st.classes[448 / 16 - 1].blocks_live;
  };
  const std::size_t live_before = live_of_448();
  constexpr std::size_t kLargeSize = 200 * 1024;
  std::vector<void*> small(small_count), large(large_count);
  std::mutex m;
  std::condition_variable cv;
  bool freed = false, done = false;
  std::thread owner([&] {
    for (auto& p : small) p = tm_malloc(448);
    for (auto& p : large) {
      p = tm_malloc(kLargeSize);
      std::memset(p, 3, kLargeSize);
    }
    for (void* p : small) tm_free(p);
    for (void* p : large) tm_free(p);
    {
      std::lock_guard<std::mutex> g(m);
      freed = true;
    }
    cv.notify_all();
    std::unique_lock<std::mutex> lk(m);
    cv.wait(lk, [&] { return done; });  // idle from here on
  });
  {
    std::unique_lock<std::mutex> lk(m);
    cv.wait(lk, [&] { return freed; });
  }
  std::set<std::uintptr_t> large_pages;
  for (void* p : large) insert_pages(large_pages, p, kLargeSize);
  if constexpr (trimalloc::kSecure) {
    EXPECT_GE(live_of_448(), live_before + small_count) << "the blocks were not quarantined";
    EXPECT_EQ(resident_pages(large_pages), large_pages.size()) << "the large blocks are not held";
  }
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (live_of_448() != live_before && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(live_of_448(), live_before) << "the idle thread's freed blocks still count as live";
  EXPECT_LE(wait_resident_below(large_pages, large_pages.size() / 20, 5.0), large_pages.size() / 20)
      << "of " << large_pages.size() << " pages of freed large blocks";
  {
    std::lock_guard<std::mutex> g(m);
    done = true;
  }
  cv.notify_all();
  owner.join();
  for (void* p : base) tm_free(p);
}
}  // namespace

// A thread that frees its blocks and then sits idle must not keep them. In the hardened build
// every one of those blocks waits in the thread's quarantine (256 blocks, 1 MiB), where nothing
// but a trim or the thread's exit reached them before the sixteenth session: the decay pass
// empties an idle heap's quarantine. In the default build the blocks are free at once and the
// same checks hold by ordinary decay. 200 small blocks (87.5 KiB) and 4 large ones of 200 KiB.
TEST(Decay, GivesBackTheBlocksAnIdleThreadFreed) {
  idle_thread_frees_then_waits(200, 4);
}

// The same with a quarantine far below kVisitWorthBytes: 20 blocks of 448 bytes (8.75 KiB), each
// of which keeps a page resident. Until the twenty-second session the decay pass visited an idle
// heap for its quarantine only from 64 KiB, so these stayed until a trim or the thread's exit.
TEST(Decay, GivesBackTheFewBlocksAnIdleThreadFreed) {
  idle_thread_frees_then_waits(20, 0);
}
