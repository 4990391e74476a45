// Tests that measure the process's own memory: pages touched by fresh pools (anonymous RSS) and
// running out of address space (RLIMIT_AS). Not built in the sanitizer builds: ASan/TSan reserve
// terabytes of shadow memory (no tight RLIMIT_AS is possible) and touch shadow pages for every
// access (RSS is no longer the allocator's). Include in one translation unit per binary, then
//   INSTANTIATE_TYPED_TEST_SUITE_P(Name, ProcessMemory, Api);
#pragma once

#include "pool.h"  // arenas/: the arena geometry
#include "test_support.h"

#include <sys/mman.h>
#include <sys/resource.h>
#include <trimalloc/stats.h>

#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace tmtest {

template <class A>
class ProcessMemory : public ::testing::Test {};
TYPED_TEST_SUITE_P(ProcessMemory);

// Fresh pools are carved lazily: a new thread that takes one block in each of 31 small classes
// touches about one page per pool, not whole pools.
TYPED_TEST_P(ProcessMemory, FreshPoolsAreTouchedLazily) {
  using A = TypeParam;
  for (std::size_t c = 16; c <= TM_SMALL_MAX; c += 16) A::free(A::malloc(c));  // one-time set-up
  std::size_t before = 0, after = 0;
  std::vector<void*> blocks;
  blocks.reserve(64);
  std::thread([&] {
    blocks.push_back(A::malloc(16));  // the thread's heap exists from here on
    before = rss_bytes();
    for (std::size_t c = 32; c <= TM_SMALL_MAX; c += 16) blocks.push_back(A::malloc(c));
    after = rss_bytes();
  }).join();
  for (void* p : blocks) {
    ASSERT_NE(p, nullptr);
    A::free(p);
  }
  // Lazy: one page per pool plus a little metadata (about 35 pages); eager: 31 whole pools.
  std::size_t growth = after > before ? after - before : 0;
  std::size_t bound = 31 * 2 * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  EXPECT_LT(growth, bound) << "one block in each of 31 small classes made RSS grow by "
                           << (growth >> 10) << " KiB";
}

// Exit codes of the child, for the message in the parent.
inline const char* limit_step(int code) {
  switch (code) {
    case 10:
      return "could not set the limit (RLIMIT_AS or RLIMIT_DATA)";
    case 11:
      return "large malloc never failed under the limit";
    case 12:
      return "large malloc failed without errno ENOMEM";
    case 13:
      return "small malloc never failed under the limit";
    case 14:
      return "small malloc failed without errno ENOMEM";
    case 15:
      return "calloc/aligned_alloc/posix_memalign/realloc under the limit: not NULL+ENOMEM";
    case 16:
      return "a block allocated before the failures lost its data";
    case 17:
      return "failed realloc damaged the block";
    case 18:
      return "allocation still fails after everything was freed";
    case 19:
      return "no allocation succeeded before the limit (test setup)";
    case 20:
      return "address space of freed small blocks did not go to large ones";
    case 21:
      return "set-up: the small blocks did not fill an arena of their own";
    case 22:
      return "an arena that only an empty pool kept mapped did not go to a large block";
    case 23:
      return "set-up: a freed 2 MiB block left no dirty pages to jemalloc";
    case 24:
      return "a request over RLIMIT_AS did not fail with NULL+ENOMEM";
    case 25:
      return "a request over RLIMIT_AS first gave back the memory kept for reuse";
    case 26:
      return "a thread's first large malloc at the limit failed without errno ENOMEM";
    case 27:
      return "a thread could not allocate after the memory was freed";
    case 28:
      return "could not make the next mapping land in an empty GiB (test setup: address layout)";
    case 29:
      return "a large malloc in a GiB jemalloc could not register failed without ENOMEM";
    case 30:
      return "the address space of a block jemalloc could not register stayed mapped";
    case 31:
      return "a large malloc there failed once the limit was lifted";
    default:
      return "unexpected";
  }
}

// Runs `child` in a forked process (RLIMIT_AS is per process) and expects exit code 0.
inline void expect_child_succeeds(int (*child)()) {
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) _exit(child());
  int status = wait_with_deadline(pid, 60);
  ASSERT_TRUE(status >= 0 && WIFEXITED(status)) << describe_status(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << limit_step(WEXITSTATUS(status));
}

// The children's pointer tables: mapped before the limit, and never from the allocator tested.
constexpr std::size_t kMaxBlocks = 1 << 20;
inline void** pointer_table() {
  void* t = mmap(nullptr, kMaxBlocks * sizeof(void*), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  return t == MAP_FAILED ? nullptr : static_cast<void**>(t);
}

// The limit limit_child runs under: the address space (RLIMIT_AS) or the data segment
// (RLIMIT_DATA, which counts only writable private mappings: arenas are opened as used).
enum class Limit { kAddressSpace, kData };

template <class A, Limit kLimit = Limit::kAddressSpace>
int limit_child() {
  constexpr std::size_t kMax = kMaxBlocks;
  void** ptrs = pointer_table();
  if (!ptrs) return 10;
  void* keep = A::malloc(200);  // must survive everything below
  void* keep_large = A::malloc(100000);
  if (!keep || !keep_large) return 19;
  fill(keep, 200, 1);
  fill(keep_large, 100000, 2);
  constexpr std::size_t kHeadroom = std::size_t{96} << 20;
  if (!(kLimit == Limit::kData ? limit_data_segment(kHeadroom) : limit_address_space(kHeadroom)))
    return 10;

  std::size_t n = 0;
  bool failed = false;
  while (n < kMax) {  // 1 MiB blocks until the address space runs out
    errno = 0;
    void* p = A::malloc(std::size_t{1} << 20);
    if (!p) {
      if (errno != ENOMEM) return 12;
      failed = true;
      break;
    }
    static_cast<char*>(p)[0] = 1;
    ptrs[n++] = p;
  }
  if (!failed) return 11;
  if (n == 0) return 19;
  failed = false;
  while (n < kMax) {  // then small blocks, until pools cannot get a new arena
    errno = 0;
    void* p = A::malloc(256);
    if (!p) {
      if (errno != ENOMEM) return 14;
      failed = true;
      break;
    }
    static_cast<char*>(p)[0] = 1;
    ptrs[n++] = p;
  }
  if (!failed) return 13;
  // Everything else fails cleanly too (sizes that need fresh memory).
  errno = 0;
  if (A::calloc(1, std::size_t{64} << 20) != nullptr || errno != ENOMEM) return 15;
  errno = 0;
  if (A::aligned_alloc(4096, std::size_t{64} << 20) != nullptr || errno != ENOMEM) return 15;
  void* out = nullptr;
  if (A::posix_memalign(&out, 64, std::size_t{64} << 20) != ENOMEM) return 15;
  errno = 0;
  if (A::realloc(keep_large, std::size_t{64} << 20) != nullptr || errno != ENOMEM) return 15;
  if (first_bad(keep_large, 100000, 2) >= 0) return 17;
  if (first_bad(keep, 200, 1) >= 0) return 16;
  // Free everything: the allocator works again.
  for (std::size_t i = 0; i < n; ++i) A::free(ptrs[i]);
  for (int i = 0; i < 20; ++i) {
    void* big = A::malloc(std::size_t{1} << 20);
    void* small = A::malloc(256);
    if (!big || !small) return 18;
    std::memset(big, 3, std::size_t{1} << 20);
    std::memset(small, 3, 256);
    A::free(big);
    A::free(small);
  }
  A::free(keep);
  A::free(keep_large);
  return 0;
}

// With RLIMIT_AS just above what the process uses, every allocation entry point must return NULL
// with errno ENOMEM (never crash), leave the blocks it already gave intact, and work again once
// memory is freed. Runs in a forked child (the limit is per process).
TYPED_TEST_P(ProcessMemory, OutOfAddressSpaceGivesEnomemAndRecovers) {
  expect_child_succeeds(limit_child<TypeParam>);
}

// The same under a data-segment limit (ulimit -d). Arenas are reserved closed, so there the
// small blocks fail when a pool slot cannot be opened (mprotect refused), or an arena's headers,
// rather than when an arena cannot be mapped.
TYPED_TEST_P(ProcessMemory, OutOfDataSegmentGivesEnomemAndRecovers) {
  expect_child_succeeds(limit_child<TypeParam, Limit::kData>);
}

// A thread's first large block once the data limit has been reached. jemalloc makes a thread's
// cache at its first call (arrays of 32 KiB from jemalloc's arena 0), and a cache it could not
// get crashed the thread at its next arena change or cache flush (SIGSEGV in
// tcache_arena_reassociate). The call must fail with ENOMEM, or succeed, and the thread must
// allocate again once memory is freed. Threads are made before the limit (their stacks count
// as data): 64 that take a large block first, so that the caches they make use up what arena 0
// had cached, then four that wait and take their first large block at the limit, once every
// hole and every other byte the limit allows has been taken.
template <class A>
int thread_at_the_data_limit_child() {
  constexpr int kEarly = 64, kLate = 4;
  constexpr std::size_t kLarge = 100000;
  void** ptrs = pointer_table();
  if (!ptrs) return 10;
  std::mutex m;
  std::condition_variable cv;
  int phase = 0, arrived = 0, bad = 0;
  auto arrive_and_wait = [&](int until, bool ok) {
    std::unique_lock<std::mutex> lock(m);
    bad += !ok;
    ++arrived;
    cv.notify_all();
    cv.wait(lock, [&] { return phase >= until; });
  };
  // Waits until `arrivals` threads have arrived, then lets them go on to phase `to`.
  auto advance = [&](int arrivals, int to) {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return arrived >= arrivals; });
    phase = to;
    cv.notify_all();
    return bad;
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kEarly; ++t) {
    threads.emplace_back([&] {
      A::free(A::malloc(kLarge));
      arrive_and_wait(3, true);
    });
  }
  for (int t = 0; t < kLate; ++t) {
    threads.emplace_back([&] {
      A::free(A::malloc(16));  // the thread's small heap, before the limit
      arrive_and_wait(1, true);
      errno = 0;
      void* p = A::malloc(kLarge);  // its first large block: jemalloc makes its cache
      const bool failed_cleanly = p == nullptr && errno == ENOMEM;
      if (p) std::memset(p, 1, kLarge);
      A::free(p);
      arrive_and_wait(2, p != nullptr || failed_cleanly);
      void* q = A::malloc(kLarge);
      if (q) std::memset(q, 2, kLarge);
      A::free(q);
      arrive_and_wait(3, q != nullptr);
    });
  }
  advance(kEarly + kLate, 0);  // every thread made, the early ones with a cache
  if (!limit_data_segment(std::size_t{4} << 20)) return 10;
  std::size_t n = 0;
  for (std::size_t size : {std::size_t{1} << 20, std::size_t{64} << 10, std::size_t{16} << 10,
                           std::size_t{4} << 10, std::size_t{1} << 10, std::size_t{256}}) {
    while (n < kMaxBlocks) {
      void* p = A::malloc(size);
      if (!p) break;
      static_cast<char*>(p)[0] = 1;
      ptrs[n++] = p;
    }
  }
  advance(kEarly + kLate, 1);                               // the late threads' first large block
  const int bad_at_limit = advance(kEarly + 2 * kLate, 1);  // ... taken: they wait for phase 2
  for (std::size_t i = 0; i < n; ++i) A::free(ptrs[i]);
  advance(kEarly + 2 * kLate, 2);  // a large block again, after the frees
  advance(kEarly + 3 * kLate, 3);  // and everyone ends
  for (auto& t : threads) t.join();
  if (bad_at_limit != 0) return 26;
  return bad != 0 ? 27 : 0;
}

TYPED_TEST_P(ProcessMemory, AThreadsFirstLargeBlockAtTheDataLimitFailsCleanly) {
  expect_child_succeeds(thread_at_the_data_limit_child<TypeParam>);
}

// Bytes of [base, base + size) that are mapped writable (/proc/self/maps).
inline std::size_t writable_bytes_in(std::uintptr_t base, std::size_t size) {
  std::FILE* f = std::fopen("/proc/self/maps", "r");
  if (f == nullptr) return 0;
  std::size_t total = 0;
  char line[512];
  while (std::fgets(line, sizeof line, f)) {
    unsigned long lo = 0, hi = 0;
    char perms[8] = {};
    if (std::sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3 || perms[1] != 'w') continue;
    const std::uintptr_t from = std::max<std::uintptr_t>(lo, base);
    const std::uintptr_t to = std::min<std::uintptr_t>(hi, base + size);
    if (from < to) total += to - from;
  }
  std::fclose(f);
  return total;
}

// An arena is reserved closed (PROT_NONE) and its pool slots are made writable as they are
// first handed out, a MiB at a time: closed pages count neither against RLIMIT_DATA nor
// against the commit limit of strict overcommit. An arena holding its first pool is writable
// for its header slot and one step of pools, not for its whole size; once every slot has been
// handed out, all of it is, except the hardened build's guards (slot 0's last page, the last
// slot).
TYPED_TEST_P(ProcessMemory, AnArenaIsWritableOnlyWhereItsPoolsHaveBeenHandedOut) {
  using A = TypeParam;
  constexpr std::size_t kArena = trimalloc::kArenaSize, kPool = trimalloc::kPoolSize;
  constexpr std::size_t kMiB = std::size_t{1} << 20, kSize = 448;
  void** ptrs = pointer_table();
  ASSERT_NE(ptrs, nullptr);
  auto arena_of = [](void* p) { return reinterpret_cast<std::uintptr_t>(p) & ~(kArena - 1); };
  auto arenas_ever = [] {
    tm_stats s{};
    return tm_stats_get(&s) == 0 ? s.arenas + s.arenas_released : 0;
  };
  std::size_t ever = arenas_ever();
  std::uintptr_t fresh = 0;
  std::vector<std::uintptr_t> seen;  // arenas blocks of this loop landed in
  std::size_t n = 0;
  // 448-byte blocks until one lands in an arena mapped meanwhile, then until another arena is
  // mapped: a new arena is mapped only when no arena has a free pool, so the first one is then
  // full. (Not "until a block lands elsewhere": the hardened build's quarantine gives blocks
  // back to pools of other arenas meanwhile.)
  bool full = false;
  while (n < kMaxBlocks && !full) {
    void* p = A::malloc(kSize);
    ASSERT_NE(p, nullptr);
    ptrs[n++] = p;
    const std::uintptr_t arena = arena_of(p);
    if (std::find(seen.begin(), seen.end(), arena) != seen.end()) continue;
    seen.push_back(arena);
    const std::size_t now = arenas_ever();
    if (now == ever) continue;  // an arena mapped before the loop
    ever = now;
    if (fresh != 0) {
      full = true;
      break;
    }
    fresh = arena;
    const std::size_t open = writable_bytes_in(fresh, kArena);
    EXPECT_GT(open, kPool) << "the headers' slot and the first pool are writable";
    EXPECT_LE(open, kPool + kMiB) << "an arena holding one pool: " << (open >> 10) << " KiB of its "
                                  << (kArena >> 10) << " KiB writable";
  }
  ASSERT_NE(fresh, 0u) << "no arena was mapped by " << n << " blocks of " << kSize << " bytes";
  ASSERT_TRUE(full) << "the new arena did not fill up";
  const std::size_t guards = trimalloc::kSecure ? kPool + trimalloc::kPageSize : 0;
  EXPECT_EQ(writable_bytes_in(fresh, kArena), kArena - guards) << "a full arena";
  for (std::size_t i = 0; i < n; ++i) A::free(ptrs[i]);
  munmap(ptrs, kMaxBlocks * sizeof(void*));
}

// Freed small blocks leave empty arenas cached for reuse (up to TRIMALLOC_MAX_CACHED, until the
// decay time). Under a tight RLIMIT_AS their address space must still go to large blocks at
// once: a large allocation that cannot be mapped gives the cached arenas back and tries again.
template <class A>
int small_to_large_child() {
  constexpr std::size_t kMax = kMaxBlocks;
  void** ptrs = pointer_table();
  if (!ptrs) return 10;
  void* warm = A::malloc(std::size_t{1} << 20);  // jemalloc set up before the limit
  if (!warm) return 19;
  A::free(warm);
  if (!limit_address_space(std::size_t{64} << 20)) return 10;
  std::size_t n = 0;
  while (n < kMax) {  // small blocks until no arena can be mapped
    void* p = A::malloc(256);
    if (!p) break;
    static_cast<char*>(p)[0] = 1;
    ptrs[n++] = p;
  }
  if (n == 0 || n == kMax) return 19;
  const std::size_t small_mib = (n * 256) >> 20;
  for (std::size_t i = 0; i < n; ++i) A::free(ptrs[i]);
  std::size_t large = 0;
  while (large < kMax) {
    void* p = A::malloc(std::size_t{1} << 20);
    if (!p) break;
    static_cast<char*>(p)[0] = 1;
    ptrs[large++] = p;
  }
  for (std::size_t i = 0; i < large; ++i) A::free(ptrs[i]);
  // Not all of it: jemalloc pads each 1 MiB block by a page and maps whole-MiB regions, so
  // about two thirds of the freed address space fits 1 MiB blocks. Without the retry: none.
  if (large < small_mib / 2) {
    std::fprintf(stderr,
                 "small blocks held %zu MiB; large blocks got %zu MiB after they were freed\n",
                 small_mib, large);
    return 20;
  }
  return 0;
}

TYPED_TEST_P(ProcessMemory, FreedSmallBlocksAddressSpaceGoesToLargeBlocks) {
  expect_child_succeeds(small_to_large_child<TypeParam>);
}

// A heap keeps one empty pool per class for its next malloc. When that pool is all that is
// left in its arena, it keeps the whole arena mapped; under a tight RLIMIT_AS a large block that
// needs the space must get it: the out-of-memory retry hands kept pools back and unmaps the arena
// that empties. (Seen in the hardened decay-race test, 1 run in 20-85: an 8 MiB arena pinned
// this way made a 256 KiB malloc fail; docs/reliability.md, failure 6.)
// The calling thread allocates three arenas' worth of 448-byte blocks into `ptrs` and frees
// those of the newest arena, whose last pool its heap then keeps, empty. The survivors are
// moved to the front of `ptrs` and counted in `kept`. 0, or the child's exit code.
template <class A>
int fill_three_arenas_free_the_newest(void** ptrs, std::size_t& kept) {
  constexpr std::size_t kArena = trimalloc::kArenaSize;
  constexpr std::size_t kSize = 448, kCount = 3 * kArena / kSize;
  static_assert(kCount <= kMaxBlocks);
  auto arena_of = [](void* p) { return reinterpret_cast<std::uintptr_t>(p) & ~(kArena - 1); };
  std::size_t arenas = 0;
  for (std::size_t i = 0; i < kCount; ++i) {
    if (!(ptrs[i] = A::malloc(kSize))) return 19;
    if (i == 0 || arena_of(ptrs[i]) != arena_of(ptrs[i - 1])) ++arenas;
  }
  // Pools come from the fullest arena first, so the last block's arena was mapped by this loop
  // and holds these blocks only (the loop crossed into at least two arenas it mapped).
  if (arenas < 3) return 21;
  const std::uintptr_t last = arena_of(ptrs[kCount - 1]);
  kept = 0;
  for (std::size_t i = 0; i < kCount; ++i) {
    if (arena_of(ptrs[i]) == last)
      A::free(ptrs[i]);  // the last of these empties the pool the heap keeps
    else
      ptrs[kept++] = ptrs[i];
  }
  return 0;
}

template <class A>
int kept_pool_child() {
  constexpr std::size_t kArena = trimalloc::kArenaSize, kMiB = std::size_t{1} << 20;
  void** ptrs = pointer_table();
  if (!ptrs) return 10;
  // jemalloc set up before the limit; kept, so that its region is not what the retry frees.
  void* warm = A::malloc(4096);
  if (!warm) return 19;
  std::size_t kept = 0;
  if (int rc = fill_three_arenas_free_the_newest<A>(ptrs, kept)) return rc;
  // A block whose region (whole MiB, mapped 1 MiB-aligned: its size and 1 MiB more for a
  // moment) needs more than the headroom, and less than the headroom and the arena.
  const std::size_t block = kArena / 2;
  const std::size_t region = (block + 4096 + kMiB - 1) / kMiB * kMiB;
  if (!limit_address_space(region + kMiB / 2)) return 10;
  void* p = A::malloc(block);
  if (!p) return 22;
  std::memset(p, 5, block);
  A::free(p);
  for (std::size_t i = 0; i < kept; ++i) A::free(ptrs[i]);
  A::free(warm);
  return 0;
}

TYPED_TEST_P(ProcessMemory, AnArenaOnlyAnEmptyPoolKeepsGoesToALargeBlock) {
  expect_child_succeeds(kept_pool_child<TypeParam>);
}

// The same when the heap that keeps the pool is another thread's, alive but idle (blocked
// outside the allocator): the retry visits other heaps and takes their kept pools back too.
// Without that, a thread that freed everything it had could still make another thread's large
// malloc fail under RLIMIT_AS, however long it sleeps, since a kept pool goes back only at that
// heap's next slow path or when the decay thread visits it after the decay time.
template <class A>
int other_thread_kept_pool_child() {
  constexpr std::size_t kArena = trimalloc::kArenaSize, kMiB = std::size_t{1} << 20;
  void** ptrs = pointer_table();
  if (!ptrs) return 10;
  void* warm = A::malloc(4096);  // jemalloc set up before the limit, and kept
  if (!warm) return 19;
  std::mutex m;
  std::condition_variable cv;
  int stage = 0;  // 1: the thread has freed its last arena's blocks; 2: it may exit
  std::size_t kept = 0;
  int thread_result = 0;
  std::thread owner([&] {
    thread_result = fill_three_arenas_free_the_newest<A>(ptrs, kept);
    std::unique_lock<std::mutex> lock(m);
    stage = 1;
    cv.notify_all();
    cv.wait(lock, [&] { return stage == 2; });  // idle, outside the allocator, heap alive
  });
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return stage == 1; });
  }
  int result = thread_result;
  void* p = nullptr;
  const std::size_t block = kArena / 2;
  if (result == 0) {
    const std::size_t region = (block + 4096 + kMiB - 1) / kMiB * kMiB;
    if (!limit_address_space(region + kMiB / 2)) result = 10;
  }
  if (result == 0) {
    p = A::malloc(block);
    if (!p) result = 22;
  }
  {
    std::lock_guard<std::mutex> lock(m);
    stage = 2;
  }
  cv.notify_all();
  owner.join();
  if (p) {
    std::memset(p, 5, block);
    A::free(p);
  }
  for (std::size_t i = 0; i < kept; ++i) A::free(ptrs[i]);  // remote frees to the exited heap
  A::free(warm);
  return result;
}

TYPED_TEST_P(ProcessMemory, AnArenaOnlyAnotherThreadsEmptyPoolKeepsGoesToALargeBlock) {
  expect_child_succeeds(other_thread_kept_pool_child<TypeParam>);
}

// A request no mapping could ever serve (more than RLIMIT_AS) fails at once. It must not first
// give back what the process keeps for reuse - jemalloc's dirty pages here, and by the same
// path other threads' kept pools and, hardened, their quarantines - as the retry of a request
// that might fit does: that would disturb every thread for nothing, and in the hardened build
// let whoever controls a size flush the quarantines.
template <class A>
int impossible_request_child() {
  if (tm_option_set("decay_ms", -1) != 0) return 10;  // keep freed pages dirty
  constexpr std::size_t kBig = std::size_t{2} << 20;  // under the purge-at-once size (8 MiB)
  void* big = A::malloc(kBig);
  if (big == nullptr) return 19;
  std::memset(big, 1, kBig);
  A::free(big);
  tm_stats before;
  if (tm_stats_get(&before) != 0 || before.large_dirty < kBig / 2) return 23;
  if (!limit_address_space(std::size_t{64} << 20)) return 10;
  rlimit limit;
  if (getrlimit(RLIMIT_AS, &limit) != 0) return 10;
  errno = 0;
  void* p = A::malloc(static_cast<std::size_t>(limit.rlim_cur) + (std::size_t{1} << 20));
  if (p != nullptr || errno != ENOMEM) return 24;
  tm_stats after;
  if (tm_stats_get(&after) != 0 || after.large_dirty < before.large_dirty) return 25;
  return 0;
}

TYPED_TEST_P(ProcessMemory, ARequestOverTheAddressSpaceLimitFailsWithoutGivingBack) {
  expect_child_succeeds(impossible_request_child<TypeParam>);
}

// Fills the address space from the GiB boundary below the lowest mapping of the mmap area up
// to 64 MiB below the stack with inaccessible mappings (which count against RLIMIT_AS, not
// RLIMIT_DATA, and are never touched), so that the kernel's next mapping lands in a GiB nothing
// has been mapped in. Returns that GiB boundary, or 0 if the layout is not the usual top-down
// one. Reads /proc/self/maps with the allocator under test (fopen): call before any limit.
inline std::uintptr_t push_mappings_below_a_gib_boundary() {
  constexpr std::uintptr_t kGiB = std::uintptr_t{1} << 30;
  struct Range {
    std::uintptr_t lo, hi;
  };
  std::vector<Range> maps;
  maps.reserve(4096);  // no allocation (and so no new mapping) while the list is read
  std::uintptr_t stack_lo = 0, program_hi = 0;
  char exe[512] = {};
  if (readlink("/proc/self/exe", exe, sizeof exe - 1) <= 0) return 0;
  std::FILE* f = std::fopen("/proc/self/maps", "r");
  if (f == nullptr) return 0;
  char line[1024];
  while (std::fgets(line, sizeof line, f)) {
    unsigned long lo = 0, hi = 0;
    char path[512] = {};
    if (std::sscanf(line, "%lx-%lx %*s %*s %*s %*s %511s", &lo, &hi, path) < 2) continue;
    if (std::strcmp(path, "[stack]") == 0) stack_lo = lo;
    if (std::strcmp(path, exe) == 0 || std::strcmp(path, "[heap]") == 0)
      program_hi = std::max<std::uintptr_t>(program_hi, hi);
    maps.push_back({lo, hi});
  }
  std::fclose(f);
  if (stack_lo == 0 || program_hi == 0) return 0;
  const std::uintptr_t top = stack_lo - (std::uintptr_t{64} << 20);
  std::uintptr_t lowest = top;
  for (const Range& m : maps)
    if (m.lo >= program_hi && m.hi <= top) lowest = std::min(lowest, m.lo);
  const std::uintptr_t boundary = lowest & ~(kGiB - 1);
  std::uintptr_t cursor = boundary;
  auto fill = [](std::uintptr_t from, std::uintptr_t to) {
    return to <= from || mmap(reinterpret_cast<void*>(from), to - from, PROT_NONE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1,
                              0) != MAP_FAILED;
  };
  for (const Range& m : maps) {  // /proc/self/maps lists them in address order
    if (m.hi <= cursor || m.lo >= top) continue;
    if (!fill(cursor, m.lo)) return 0;
    cursor = std::max(cursor, m.hi);
  }
  if (cursor < top && !fill(cursor, top)) return 0;
  // The kernel's next choice must now lie below the boundary.
  void* probe = mmap(nullptr, std::size_t{1} << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (probe == MAP_FAILED) return 0;
  munmap(probe, std::size_t{1} << 20);
  return reinterpret_cast<std::uintptr_t>(probe) < boundary ? boundary : 0;
}

// A large block whose address space lies in a GiB where jemalloc has never held an extent:
// jemalloc must first map a leaf of its radix tree (6 MiB, with its own mmap), which a limit
// with room for the block but not for the leaf refuses. jemalloc then drops the extent it
// could not register, without handing it back, so the region under it could never be
// unmapped; trimalloc's alloc hook checks that such a leaf can be mapped before it hands out
// memory in a new GiB (allocator/large.cpp, "jemalloc's radix tree"). The request must fail
// with ENOMEM and leave nothing mapped; once the limit is lifted, it must succeed.
template <class A>
int block_in_an_unregistered_gib_child() {
  constexpr std::size_t kBlock = std::size_t{1} << 20;
  A::free(A::malloc(100000));   // the large allocator started, its first regions mapped
  std::uintptr_t boundary = 0;  // a mapping made meanwhile by another thread: read again
  for (int k = 0; k < 3 && boundary == 0; ++k) boundary = push_mappings_below_a_gib_boundary();
  if (boundary == 0) return 28;
  rlimit unlimited{};
  if (getrlimit(RLIMIT_AS, &unlimited) != 0) return 10;
  if (!limit_address_space(3 * kBlock)) return 10;
  const std::size_t before = vm_bytes();
  errno = 0;
  void* p = A::malloc(kBlock);
  const int error = errno;
  if (p == nullptr) {
    if (error != ENOMEM) return 29;
    if (vm_bytes() > before) return 30;
  } else {
    A::free(p);  // the limit left room for the leaf after all: nothing to check
  }
  if (setrlimit(RLIMIT_AS, &unlimited) != 0) return 10;
  p = A::malloc(kBlock);
  if (p == nullptr) return 31;
  static_cast<char*>(p)[kBlock - 1] = 1;
  A::free(p);
  return 0;
}

TYPED_TEST_P(ProcessMemory, ABlockJemallocCannotRegisterLeavesNothingMapped) {
  expect_child_succeeds(block_in_an_unregistered_gib_child<TypeParam>);
}

REGISTER_TYPED_TEST_SUITE_P(
    ProcessMemory, FreshPoolsAreTouchedLazily, ABlockJemallocCannotRegisterLeavesNothingMapped,
    ARequestOverTheAddressSpaceLimitFailsWithoutGivingBack, OutOfAddressSpaceGivesEnomemAndRecovers,
    OutOfDataSegmentGivesEnomemAndRecovers, AnArenaIsWritableOnlyWhereItsPoolsHaveBeenHandedOut,
    AThreadsFirstLargeBlockAtTheDataLimitFailsCleanly,
    FreedSmallBlocksAddressSpaceGoesToLargeBlocks, AnArenaOnlyAnEmptyPoolKeepsGoesToALargeBlock,
    AnArenaOnlyAnotherThreadsEmptyPoolKeepsGoesToALargeBlock);

}  // namespace tmtest
