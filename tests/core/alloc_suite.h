// Single-threaded behaviour of every allocation entry point, written once for any API adaptor A
// (see test_support.h) and instantiated by core_tests (tm_*) and override_tests (malloc & co).
// Include in exactly one translation unit per test binary, then
//   INSTANTIATE_TYPED_TEST_SUITE_P(Name, Alloc, Api);
//   INSTANTIATE_TYPED_TEST_SUITE_P(Name, AllocDeathTest, Api);
#pragma once

#include "pool.h"  // arenas/: the arena geometry
#include "test_support.h"

#include <sys/mman.h>
#include <sys/sysinfo.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

namespace tmtest {

inline const std::vector<std::size_t>& huge_sizes() {
  static const std::vector<std::size_t> v = {
      SIZE_MAX,
      SIZE_MAX - 1,
      SIZE_MAX - 15,    // rounding up to a 16-byte class must not wrap to 0
      SIZE_MAX - 4095,  // rounding up to a page must not wrap either
      static_cast<std::size_t>(PTRDIFF_MAX),
      static_cast<std::size_t>(PTRDIFF_MAX) + 1,
      std::size_t{1} << 47,  // the whole user address space of x86-64
  };
  return v;
}

// Power-of-two alignments from `lo` to `hi` inclusive.
inline std::vector<std::size_t> pow2(std::size_t lo, std::size_t hi) {
  std::vector<std::size_t> v;
  for (std::size_t a = lo; a <= hi; a *= 2) v.push_back(a);
  return v;
}

inline std::size_t page_size() {
  return static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

template <class A>
class Alloc : public ::testing::Test {};
TYPED_TEST_SUITE_P(Alloc);

// malloc for every size 0..600, three times over: non-null, 16-byte aligned, exact pool usable size
// up to 512, owned by trimalloc, no two live blocks overlap, and every usable byte keeps its data.
TYPED_TEST_P(Alloc, MallocEverySize0To600) {
  using A = TypeParam;
  struct Blk {
    unsigned char* p;
    std::size_t n, u;
    std::uint64_t seed;
  };
  std::vector<Blk> blocks;
  for (int rep = 0; rep < 3; ++rep) {
    for (std::size_t n = 0; n <= 600; ++n) {
      auto* p = static_cast<unsigned char*>(A::malloc(n));
      ASSERT_NE(p, nullptr) << "malloc(" << n << ")";
      EXPECT_EQ(addr(p) % 16, 0u) << "malloc(" << n << ") = " << static_cast<void*>(p);
      std::size_t u = A::usable(p);
      if (n <= TM_SMALL_MAX)
        EXPECT_EQ(u, small_class(n)) << "usable size of malloc(" << n << ")";
      else
        EXPECT_GE(u, n) << "usable size of malloc(" << n << ")";
      EXPECT_TRUE(tm_owns(p)) << "tm_owns(malloc(" << n << "))";
      std::uint64_t seed = rep * 1000 + n;
      fill(p, u, seed);
      blocks.push_back({p, n, u, seed});
    }
  }
  std::vector<Span> spans;
  for (auto& b : blocks) spans.push_back({b.p, b.u});
  EXPECT_EQ(find_overlap(spans), "");
  for (auto& b : blocks)
    EXPECT_EQ(first_bad(b.p, b.u, b.seed), -1) << "malloc(" << b.n << ") lost data";
  // Free in an interleaved order, re-checking the survivors half way.
  for (std::size_t i = 0; i < blocks.size(); i += 2) A::free(blocks[i].p);
  for (std::size_t i = 1; i < blocks.size(); i += 2)
    EXPECT_EQ(first_bad(blocks[i].p, blocks[i].u, blocks[i].seed), -1)
        << "malloc(" << blocks[i].n << ")";
  for (std::size_t i = 1; i < blocks.size(); i += 2) A::free(blocks[i].p);
}

TYPED_TEST_P(Alloc, BorderSizes) {
  using A = TypeParam;
  const std::size_t sizes[] = {0,   1,   15,  16,   17,   31,   32,     33,
                               511, 512, 513, 1024, 4096, 4097, 1 << 20};
  for (std::size_t n : sizes) {
    void* p = A::malloc(n);
    ASSERT_NE(p, nullptr) << n;
    EXPECT_EQ(addr(p) % 16, 0u) << n;
    if (n <= TM_SMALL_MAX)
      EXPECT_EQ(A::usable(p), small_class(n)) << n;
    else
      EXPECT_GE(A::usable(p), n) << n;
    fill(p, A::usable(p), n);
    EXPECT_EQ(first_bad(p, A::usable(p), n), -1) << n;
    A::free(p);
  }
  EXPECT_EQ(A::usable(nullptr), 0u);
}

// Many blocks of one class: all distinct, none overlapping, data intact after frees in between.
TYPED_TEST_P(Alloc, ManyBlocksOfOneClassDoNotOverlap) {
  using A = TypeParam;
  for (std::size_t n : {16u, 48u, 512u, 600u}) {
    std::vector<void*> v;
    for (int i = 0; i < 3000; ++i) {
      void* p = A::malloc(n);
      ASSERT_NE(p, nullptr);
      fill(p, n, i);
      v.push_back(p);
    }
    for (std::size_t i = 0; i < v.size(); i += 3) {
      A::free(v[i]);
      v[i] = A::malloc(n);  // reuse must not land on a live block
      ASSERT_NE(v[i], nullptr);
      fill(v[i], n, i);
    }
    std::vector<Span> spans;
    for (void* p : v) spans.push_back({p, n});
    EXPECT_EQ(find_overlap(spans), "") << "size " << n;
    for (std::size_t i = 0; i < v.size(); ++i)
      EXPECT_EQ(first_bad(v[i], n, i), -1) << "size " << n << " #" << i;
    for (void* p : v) A::free(p);
  }
}

TYPED_TEST_P(Alloc, FreeNullIsNoOp) {
  using A = TypeParam;
  errno = 1234;
  A::free(nullptr);
  A::free_sized(nullptr, 0);
  A::free_sized(nullptr, 100);
  A::free_aligned_sized(nullptr, 64, 64);
  EXPECT_EQ(errno, 1234);
  void* p = A::malloc(32);  // the allocator still works
  ASSERT_NE(p, nullptr);
  A::free(p);
}

// calloc on memory that was just dirtied and freed must still give zeros, for every size 0..600 and
// for large blocks.
TYPED_TEST_P(Alloc, CallocZeroesReusedMemory) {
  using A = TypeParam;
  for (std::size_t n = 0; n <= 600; ++n) {
    void* d = A::malloc(n);
    ASSERT_NE(d, nullptr);
    std::memset(d, 0xA5, A::usable(d));
    A::free(d);
    void* p = A::calloc(1, n);
    ASSERT_NE(p, nullptr) << "calloc(1, " << n << ")";
    EXPECT_EQ(addr(p) % 16, 0u);
    EXPECT_GE(A::usable(p), n);
    EXPECT_TRUE(all_zero(p, n)) << "calloc(1, " << n << ") not zeroed";
    std::memset(p, 0x5A, n);
    A::free(p);
  }
  const std::pair<std::size_t, std::size_t> shapes[] = {{3, 7},       {7, 73},       {2, 256},
                                                        {2, 257},     {1024, 1024},  {3, 100000},
                                                        {1, 4 << 20}, {SIZE_MAX, 0}, {0, SIZE_MAX}};
  for (auto [c, s] : shapes) {
    std::size_t n = c * s;
    void* d = A::malloc(n);
    ASSERT_NE(d, nullptr);
    std::memset(d, 0xA5, n);
    A::free(d);
    void* p = A::calloc(c, s);
    ASSERT_NE(p, nullptr) << "calloc(" << c << ", " << s << ")";
    EXPECT_TRUE(all_zero(p, n)) << "calloc(" << c << ", " << s << ") not zeroed";
    A::free(p);
  }
}

TYPED_TEST_P(Alloc, ReallocNullIsMalloc) {
  using A = TypeParam;
  for (std::size_t n : {0u, 1u, 16u, 17u, 512u, 513u, 5000u}) {
    void* p = A::realloc(nullptr, n);
    ASSERT_NE(p, nullptr) << n;
    EXPECT_EQ(addr(p) % 16, 0u);
    EXPECT_GE(A::usable(p), n);
    if (n <= TM_SMALL_MAX) {
      EXPECT_EQ(A::usable(p), small_class(n));
    }
    fill(p, n, n);
    EXPECT_EQ(first_bad(p, n, n), -1);
    A::free(p);
    void* q = A::reallocarray(nullptr, n, 1);
    ASSERT_NE(q, nullptr) << n;
    EXPECT_GE(A::usable(q), n);
    A::free(q);
  }
}

// Growing and shrinking within one 16-byte class keeps the block where it is.
TYPED_TEST_P(Alloc, ReallocWithinClassStaysInPlace) {
  using A = TypeParam;
  for (std::size_t c = 16; c <= TM_SMALL_MAX; c += 16) {
    std::size_t lo = c - 15;
    void* p = A::malloc(lo);
    ASSERT_NE(p, nullptr);
    fill(p, lo, c);
    for (std::size_t n = lo + 1; n <= c; ++n) {
      void* q = A::realloc(p, n);
      ASSERT_EQ(q, p) << "realloc from " << n - 1 << " to " << n << " (same class " << c
                      << ") moved the block";
    }
    for (std::size_t n = c; n >= lo; --n) {
      void* q = A::realloc(p, n);
      ASSERT_EQ(q, p) << "shrinking realloc to " << n << " (same class " << c
                      << ") moved the block";
    }
    EXPECT_EQ(first_bad(p, lo, c), -1) << "class " << c;
    void* q = A::reallocarray(p, 1, c);
    EXPECT_EQ(q, p) << "reallocarray within class " << c;
    A::free(q);
  }
}

// Every pair of sizes from the list: data kept up to the smaller size, usable size right for the
// new size (so a block that crosses 512 in either direction really moves to the right allocator).
TYPED_TEST_P(Alloc, ReallocAcrossClassesAndTheBorderKeepsData) {
  using A = TypeParam;
  const std::size_t sizes[] = {1,   15,  16,  17,  100,  255,  256,   257,    496,
                               511, 512, 513, 600, 1000, 4096, 65536, 1 << 20};
  for (std::size_t from : sizes) {
    for (std::size_t to : sizes) {
      void* p = A::malloc(from);
      ASSERT_NE(p, nullptr);
      std::uint64_t seed = from * 7919 + to;
      fill(p, from, seed);
      void* q = A::realloc(p, to);
      ASSERT_NE(q, nullptr) << from << " -> " << to;
      EXPECT_EQ(addr(q) % 16, 0u) << from << " -> " << to;
      EXPECT_EQ(first_bad(q, std::min(from, to), seed), -1)
          << "realloc " << from << " -> " << to << " lost data";
      if (to <= TM_SMALL_MAX)
        EXPECT_EQ(A::usable(q), small_class(to)) << "realloc " << from << " -> " << to;
      else
        EXPECT_GE(A::usable(q), to) << "realloc " << from << " -> " << to;
      EXPECT_TRUE(tm_owns(q));
      fill(q, to, seed + 1);  // the whole new size is writable
      EXPECT_EQ(first_bad(q, to, seed + 1), -1);
      A::free(q);
    }
  }
}

// One block grown a byte at a time from 1 to 600 and shrunk back, checking all data at every step.
// realloc(p, 0) frees p and returns NULL, leaving errno alone, as glibc's realloc does (and
// Debian's jemalloc); C leaves it to the implementation. reallocarray(p, 0, n) is the same.
// realloc(NULL, 0) is malloc(0): a block. (That the block was freed, not leaked, is checked by
// the death test of the same name: a later free of it is a double free.)
TYPED_TEST_P(Alloc, ReallocToZeroFreesAndReturnsNull) {
  using A = TypeParam;
  for (std::size_t start : {1u, 24u, 512u, 700u, 100000u}) {
    void* p = A::malloc(start);
    ASSERT_NE(p, nullptr);
    errno = 0;
    EXPECT_EQ(A::realloc(p, 0), nullptr) << "realloc(malloc(" << start << "), 0)";
    EXPECT_EQ(errno, 0) << "realloc(malloc(" << start << "), 0)";
    p = A::malloc(start);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(A::reallocarray(p, 0, 16), nullptr) << "reallocarray(malloc(" << start << "), 0, 16)";
  }
  void* q = A::realloc(nullptr, 0);
  EXPECT_NE(q, nullptr);
  A::free(q);
}

TYPED_TEST_P(Alloc, ReallocByteByByteGrowAndShrink) {
  using A = TypeParam;
  auto* p = static_cast<unsigned char*>(A::malloc(1));
  ASSERT_NE(p, nullptr);
  std::vector<unsigned char> model;
  auto put = [&](std::size_t i) { return static_cast<unsigned char>(i * 31 + 7); };
  p[0] = put(0);
  model.push_back(p[0]);
  for (std::size_t n = 2; n <= 600; ++n) {
    p = static_cast<unsigned char*>(A::realloc(p, n));
    ASSERT_NE(p, nullptr) << n;
    p[n - 1] = put(n - 1);
    model.push_back(p[n - 1]);
    ASSERT_EQ(std::memcmp(p, model.data(), n), 0) << "grow to " << n;
  }
  for (std::size_t n = 599; n >= 1; --n) {
    p = static_cast<unsigned char*>(A::realloc(p, n));
    ASSERT_NE(p, nullptr) << n;
    ASSERT_EQ(std::memcmp(p, model.data(), n), 0) << "shrink to " << n;
    if (n <= TM_SMALL_MAX) {
      ASSERT_EQ(A::usable(p), small_class(n)) << "shrink to " << n;
    }
  }
  A::free(p);
}

TYPED_TEST_P(Alloc, ReallocarrayOverflowFailsAndKeepsBlock) {
  using A = TypeParam;
  for (std::size_t start : {24u, 700u, 100000u}) {
    void* p = A::malloc(start);
    ASSERT_NE(p, nullptr);
    fill(p, start, start);
    const std::pair<std::size_t, std::size_t> bad[] = {
        {SIZE_MAX, 2},
        {2, SIZE_MAX},
        {std::size_t{1} << 32, std::size_t{1} << 32},
        {SIZE_MAX / 16 + 1, 16},
        {static_cast<std::size_t>(PTRDIFF_MAX) / 2 + 1, 2},
        {1, SIZE_MAX}};
    for (auto [c, s] : bad) {
      errno = 0;
      void* q = A::reallocarray(p, c, s);
      EXPECT_EQ(q, nullptr) << "reallocarray(p, " << c << ", " << s << ")";
      EXPECT_EQ(errno, ENOMEM) << "reallocarray(p, " << c << ", " << s << ")";
      if (q) p = q;
      EXPECT_EQ(first_bad(p, start, start), -1) << "failed reallocarray damaged the block";
    }
    void* q = A::reallocarray(p, 2, start);  // and it still grows normally
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(first_bad(q, start, start), -1);
    A::free(q);
    errno = 0;
    EXPECT_EQ(A::reallocarray(nullptr, SIZE_MAX, 2), nullptr);
    EXPECT_EQ(errno, ENOMEM);
  }
}

TYPED_TEST_P(Alloc, HugeMallocFailsWithEnomem) {
  using A = TypeParam;
  for (std::size_t n : huge_sizes()) {
    errno = 0;
    void* p = A::malloc(n);
    EXPECT_EQ(p, nullptr) << "malloc(" << n << ")";
    EXPECT_EQ(errno, ENOMEM) << "malloc(" << n << ")";
    if (p) A::free(p);
    errno = 0;
    p = A::realloc(nullptr, n);
    EXPECT_EQ(p, nullptr) << "realloc(NULL, " << n << ")";
    EXPECT_EQ(errno, ENOMEM) << "realloc(NULL, " << n << ")";
    if (p) A::free(p);
  }
  void* p = A::malloc(100);  // the allocator still works afterwards
  ASSERT_NE(p, nullptr);
  A::free(p);
}

// vm.overcommit_memory: 0 (heuristic), 1 (always), 2 (never); -1 if unreadable.
inline int overcommit_mode() {
  FILE* f = std::fopen("/proc/sys/vm/overcommit_memory", "r");
  if (f == nullptr) return -1;
  int mode = -1;
  if (std::fscanf(f, "%d", &mode) != 1) mode = -1;
  std::fclose(f);
  return mode;
}

// A request larger than the machine's RAM plus swap follows the kernel's policy, as glibc's
// malloc does: under the default heuristic overcommit (0) and strict accounting (2) no mapping
// can hold it, so every entry point returns NULL with ENOMEM (before, mappings made with
// MAP_NORESERVE skipped the kernel's check: Python's bytearray(2**46) got its block and was
// killed by the OOM killer while filling it). With overcommit always on (1) the kernel grants
// it, to glibc as well: the block comes back, untouched, and is freed.
TYPED_TEST_P(Alloc, MoreThanMemoryPlusSwapFollowsTheKernelsOvercommitPolicy) {
  using A = TypeParam;
  const int mode = overcommit_mode();
  ASSERT_GE(mode, 0) << "cannot read /proc/sys/vm/overcommit_memory";
  struct sysinfo info;
  ASSERT_EQ(sysinfo(&info), 0);
  const std::size_t total =
      (static_cast<std::size_t>(info.totalram) + info.totalswap) * info.mem_unit;
  const std::size_t n = total + (std::size_t{1} << 30);
  errno = 0;
  void* p = A::malloc(n);
  if (mode == 1) {
    EXPECT_NE(p, nullptr) << "overcommit is always on, yet malloc(" << n << ") failed";
    A::free(p);
    return;
  }
  // A block handed out is freed untouched, and the test stops there: filling it (or a calloc
  // that zeroes it) would call the OOM killer.
  auto expect_refused = [&](void* q) {
    if (q != nullptr) A::free(q);
    return q == nullptr && errno == ENOMEM;
  };
  ASSERT_TRUE(expect_refused(p)) << "malloc(" << n << ") with " << total
                                 << " bytes of RAM and swap: " << p;
  errno = 0;
  ASSERT_TRUE(expect_refused(A::aligned_alloc(4096, n))) << "aligned_alloc(4096, " << n << ")";
  errno = 0;
  ASSERT_TRUE(expect_refused(A::calloc(1, n))) << "calloc(1, " << n << ")";
  void* block = A::malloc(100000);
  ASSERT_NE(block, nullptr);
  fill(block, 100000, 5);
  errno = 0;
  p = A::realloc(block, n);
  if (p != nullptr) A::free(p);
  ASSERT_EQ(p, nullptr) << "realloc(block, " << n << ")";
  EXPECT_EQ(errno, ENOMEM);
  EXPECT_EQ(first_bad(block, 100000, 5), -1) << "the failed realloc damaged the block";
  A::free(block);
}

TYPED_TEST_P(Alloc, CallocOverflowAndHugeFailWithEnomem) {
  using A = TypeParam;
  const std::pair<std::size_t, std::size_t> bad[] = {
      {SIZE_MAX, 2},
      {2, SIZE_MAX},
      {SIZE_MAX, SIZE_MAX},
      {std::size_t{1} << 32, std::size_t{1} << 32},
      {SIZE_MAX / 16 + 1, 16},
      {16, SIZE_MAX / 16 + 1},
      {static_cast<std::size_t>(PTRDIFF_MAX) / 2 + 1, 2},
      {1, SIZE_MAX},
      {SIZE_MAX, 1},
      {1, SIZE_MAX - 15},
      {1, static_cast<std::size_t>(PTRDIFF_MAX) + 1}};
  for (auto [c, s] : bad) {
    errno = 0;
    void* p = A::calloc(c, s);
    EXPECT_EQ(p, nullptr) << "calloc(" << c << ", " << s << ")";
    EXPECT_EQ(errno, ENOMEM) << "calloc(" << c << ", " << s << ")";
    if (p) A::free(p);
  }
}

TYPED_TEST_P(Alloc, HugeReallocFailsAndKeepsBlock) {
  using A = TypeParam;
  for (std::size_t start : {24u, 512u, 700u, 100000u}) {
    void* p = A::malloc(start);
    ASSERT_NE(p, nullptr);
    fill(p, start, start);
    for (std::size_t n : huge_sizes()) {
      errno = 0;
      void* q = A::realloc(p, n);
      EXPECT_EQ(q, nullptr) << "realloc(malloc(" << start << "), " << n << ")";
      EXPECT_EQ(errno, ENOMEM) << "realloc(malloc(" << start << "), " << n << ")";
      if (q) p = q;
      ASSERT_EQ(first_bad(p, start, start), -1) << "failed realloc damaged the block";
    }
    EXPECT_TRUE(tm_owns(p));
    A::free(p);
  }
}

TYPED_TEST_P(Alloc, HugeAlignedFailsWithEnomem) {
  using A = TypeParam;
  for (std::size_t a : {std::size_t{16}, std::size_t{64}, std::size_t{512}, std::size_t{4096},
                        std::size_t{1} << 21}) {
    for (std::size_t n : huge_sizes()) {
      errno = 0;
      void* p = A::aligned_alloc(a, n);
      EXPECT_EQ(p, nullptr) << "aligned_alloc(" << a << ", " << n << ")";
      EXPECT_EQ(errno, ENOMEM) << "aligned_alloc(" << a << ", " << n << ")";
      if (p) A::free(p);
      errno = 0;
      p = A::memalign(a, n);
      EXPECT_EQ(p, nullptr) << "memalign(" << a << ", " << n << ")";
      EXPECT_EQ(errno, ENOMEM) << "memalign(" << a << ", " << n << ")";
      if (p) A::free(p);
      void* out = reinterpret_cast<void*>(0x1234);
      int rc = A::posix_memalign(&out, a, n);
      EXPECT_EQ(rc, ENOMEM) << "posix_memalign(" << a << ", " << n << ")";
      EXPECT_TRUE(out == reinterpret_cast<void*>(0x1234) || out == nullptr)
          << "failed posix_memalign wrote " << out;
      if (rc == 0) A::free(out);
    }
  }
  for (std::size_t n : huge_sizes()) {
    errno = 0;
    void* p = A::valloc(n);
    EXPECT_EQ(p, nullptr) << "valloc(" << n << ")";
    EXPECT_EQ(errno, ENOMEM) << "valloc(" << n << ")";
    if (p) A::free(p);
    errno = 0;
    p = A::pvalloc(n);
    EXPECT_EQ(p, nullptr) << "pvalloc(" << n << ")";
    EXPECT_EQ(errno, ENOMEM) << "pvalloc(" << n << ")";
    if (p) A::free(p);
  }
  // A power-of-two alignment larger than any possible block.
  for (std::size_t a : {std::size_t{1} << 62, std::size_t{1} << 63}) {
    errno = 0;
    void* p = A::aligned_alloc(a, 16);
    EXPECT_EQ(p, nullptr) << "aligned_alloc(" << a << ", 16)";
    EXPECT_TRUE(errno == ENOMEM || errno == EINVAL)
        << "aligned_alloc(" << a << ", 16): errno " << errno;
    if (p) A::free(p);
    void* out = nullptr;
    int rc = A::posix_memalign(&out, a, 16);
    EXPECT_TRUE(rc == ENOMEM || rc == EINVAL) << "posix_memalign(" << a << ", 16) = " << rc;
    if (rc == 0) A::free(out);
  }
}

// aligned_alloc, posix_memalign and memalign for alignments 1/8..2 MiB and sizes around the
// alignment and around the 512 border.
TYPED_TEST_P(Alloc, AlignedAllocationsAreAlignedAndUsable) {
  using A = TypeParam;
  struct Blk {
    void* p;
    std::size_t n;
  };
  std::vector<Blk> live;
  std::uint64_t seed = 0;
  auto check = [&](void* p, std::size_t a, std::size_t n, const char* fn) {
    ASSERT_NE(p, nullptr) << fn << "(" << a << ", " << n << ")";
    EXPECT_EQ(addr(p) % a, 0u) << fn << "(" << a << ", " << n << ") = " << p;
    EXPECT_EQ(addr(p) % 16, 0u) << fn << "(" << a << ", " << n << ") = " << p;
    EXPECT_GE(A::usable(p), n) << fn << "(" << a << ", " << n << ")";
    EXPECT_TRUE(tm_owns(p)) << fn << "(" << a << ", " << n << ")";
    fill(p, n, ++seed);
    live.push_back({p, n});
  };
  for (std::size_t a : pow2(1, std::size_t{1} << 21)) {
    std::vector<std::size_t> sizes = {1, 15, 16, 17, 100, 511, 512, 513, 3000, 5000};
    for (std::size_t d : {a - 1, a, a + 1, 2 * a})
      if (d > 0 && d <= (std::size_t{4} << 20)) sizes.push_back(d);
    for (std::size_t n : sizes) {
      check(A::aligned_alloc(a, n), a, n, "aligned_alloc");
      check(A::memalign(a, n), a, n, "memalign");
      if (a >= sizeof(void*)) {
        void* out = nullptr;
        ASSERT_EQ(A::posix_memalign(&out, a, n), 0) << "posix_memalign(" << a << ", " << n << ")";
        check(out, a, n, "posix_memalign");
      }
    }
  }
  std::vector<Span> spans;
  for (auto& b : live) spans.push_back({b.p, b.n});
  EXPECT_EQ(find_overlap(spans), "");
  seed = 0;
  for (auto& b : live)
    EXPECT_EQ(first_bad(b.p, b.n, ++seed), -1) << "aligned block of " << b.n << " lost data";
  for (auto& b : live) A::free(b.p);
}

TYPED_TEST_P(Alloc, AlignedAllocAndFreeAlignedSized) {
  using A = TypeParam;
  for (std::size_t a : pow2(16, 4096)) {
    for (std::size_t n : {a, 2 * a, std::size_t{512}, std::size_t{513}}) {
      void* p = A::aligned_alloc(a, n);
      ASSERT_NE(p, nullptr);
      EXPECT_EQ(addr(p) % a, 0u);
      fill(p, n, a + n);
      EXPECT_EQ(first_bad(p, n, a + n), -1);
      A::free_aligned_sized(p, a, n);
    }
  }
  void* p = A::malloc(64);  // still works
  ASSERT_NE(p, nullptr);
  A::free(p);
}

TYPED_TEST_P(Alloc, BadAlignmentsAreRejectedWithEinval) {
  using A = TypeParam;
  const std::size_t not_pow2[] = {0,   3,   5,    12,          24,       48,
                                  100, 513, 4097, 4096 + 2048, SIZE_MAX, SIZE_MAX / 2};
  for (std::size_t a : not_pow2) {
    errno = 0;
    void* p = A::aligned_alloc(a, 64);
    EXPECT_EQ(p, nullptr) << "aligned_alloc(" << a << ", 64)";
    EXPECT_EQ(errno, EINVAL) << "aligned_alloc(" << a << ", 64)";
    if (p) A::free(p);
  }
  // posix_memalign also rejects powers of two smaller than sizeof(void*).
  const std::size_t bad_posix[] = {0, 1, 2, 4, 3, 12, 24, 48, 100, 513, 4097, SIZE_MAX};
  for (std::size_t a : bad_posix) {
    void* out = reinterpret_cast<void*>(0x1234);
    int rc = A::posix_memalign(&out, a, 64);
    EXPECT_EQ(rc, EINVAL) << "posix_memalign(" << a << ", 64)";
    EXPECT_TRUE(out == reinterpret_cast<void*>(0x1234) || out == nullptr)
        << "posix_memalign(" << a << ") failed but wrote " << out;
    if (rc == 0) A::free(out);
  }
}

TYPED_TEST_P(Alloc, VallocAndPvallocArePageAligned) {
  using A = TypeParam;
  const std::size_t pg = page_size();
  for (std::size_t n :
       {std::size_t{1}, std::size_t{100}, pg - 1, pg, pg + 1, 3 * pg + 5, std::size_t{1} << 20}) {
    void* p = A::valloc(n);
    ASSERT_NE(p, nullptr) << "valloc(" << n << ")";
    EXPECT_EQ(addr(p) % pg, 0u) << "valloc(" << n << ")";
    EXPECT_GE(A::usable(p), n);
    fill(p, n, n);
    void* q = A::pvalloc(n);
    ASSERT_NE(q, nullptr) << "pvalloc(" << n << ")";
    EXPECT_EQ(addr(q) % pg, 0u) << "pvalloc(" << n << ")";
    std::size_t rounded = (n + pg - 1) / pg * pg;
    EXPECT_GE(A::usable(q), rounded) << "pvalloc(" << n << ") must give whole pages";
    fill(q, rounded, n + 1);
    EXPECT_EQ(first_bad(p, n, n), -1);
    EXPECT_EQ(first_bad(q, rounded, n + 1), -1);
    A::free(p);
    A::free(q);
  }
  void* p = A::valloc(0);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(addr(p) % pg, 0u);
  A::free(p);
}

TYPED_TEST_P(Alloc, FreeSizedWithTheRightSize) {
  using A = TypeParam;
  std::vector<std::pair<void*, std::size_t>> v;
  for (std::size_t n = 0; n <= 600; ++n) v.push_back({A::malloc(n), n});
  for (std::size_t n : {1000u, 4096u, 100000u, 1u << 20}) v.push_back({A::malloc(n), n});
  for (auto [p, n] : v) {
    ASSERT_NE(p, nullptr);
    fill(p, n, n);
  }
  for (auto [p, n] : v) {
    EXPECT_EQ(first_bad(p, n, n), -1);
    A::free_sized(p, n);
  }
  // The freed memory is reusable.
  void* p = A::malloc(100);
  ASSERT_NE(p, nullptr);
  fill(p, 100, 1);
  EXPECT_EQ(first_bad(p, 100, 1), -1);
  A::free(p);
}

TYPED_TEST_P(Alloc, OwnsAndUsableSize) {
  using A = TypeParam;
  void* small = A::malloc(40);
  void* large = A::malloc(100000);
  ASSERT_NE(small, nullptr);
  ASSERT_NE(large, nullptr);
  EXPECT_TRUE(tm_owns(small));
  EXPECT_TRUE(tm_owns(large));
  EXPECT_EQ(tm_usable_size(small), 48u);
  EXPECT_GE(tm_usable_size(large), 100000u);
  EXPECT_EQ(tm_usable_size(small), A::usable(small));
  EXPECT_FALSE(tm_owns(static_cast<char*>(small) + 16)) << "interior pointer of a small block";
  EXPECT_FALSE(tm_owns(static_cast<char*>(small) + 1)) << "unaligned interior pointer";
  int local = 0;
  alignas(64) static char global_buf[256];
  EXPECT_FALSE(tm_owns(&local)) << "stack address";
  EXPECT_FALSE(tm_owns(global_buf)) << "static buffer";
  EXPECT_FALSE(tm_owns(nullptr));
  EXPECT_FALSE(tm_owns(reinterpret_cast<void*>(16)));
  EXPECT_FALSE(tm_owns(reinterpret_cast<void*>(UINTPTR_MAX & ~std::uintptr_t{15})));
  // An address that is certainly not mapped: tm_owns must answer without touching it.
  void* page = mmap(nullptr, 1 << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(page, MAP_FAILED);
  EXPECT_FALSE(tm_owns(page));
  EXPECT_FALSE(tm_owns(static_cast<char*>(page) + 4096));
  munmap(page, 1 << 20);
  EXPECT_FALSE(tm_owns(page));
  void* foreign = A::foreign_malloc(64);
  ASSERT_NE(foreign, nullptr);
  EXPECT_FALSE(tm_owns(foreign)) << "a block from another heap";
  A::foreign_free(foreign);
  A::free(small);
  A::free(large);
}

#if defined(TRIMALLOC_SECURE)
// Interior pointers of LARGE blocks are told apart only by the hardened build's large-block
// registry (README: "Misuse detection"); the default build leaves large blocks to jemalloc's own
// checks, so these two tests are built for the hardened build only.
// tm_owns is true only for the start of a block; for large (jemalloc) blocks too.
TYPED_TEST_P(Alloc, OwnsIsFalseForInteriorOfLargeBlock) {
  using A = TypeParam;
  for (std::size_t n : {600u, 5000u, 100000u, 1u << 21}) {
    char* p = static_cast<char*>(A::malloc(n));
    ASSERT_NE(p, nullptr);
    EXPECT_TRUE(tm_owns(p));
    for (std::size_t off : {16u, 64u, 512u, 4096u, 8192u}) {
      if (off < n) {
        EXPECT_FALSE(tm_owns(p + off)) << "tm_owns(malloc(" << n << ") + " << off << ")";
      }
    }
    A::free(p);
  }
}
#endif

#if defined(TRIMALLOC_SECURE)
REGISTER_TYPED_TEST_SUITE_P(Alloc, OwnsIsFalseForInteriorOfLargeBlock, MallocEverySize0To600,
                            BorderSizes, ManyBlocksOfOneClassDoNotOverlap, FreeNullIsNoOp,
                            CallocZeroesReusedMemory, ReallocNullIsMalloc,
                            ReallocWithinClassStaysInPlace,
                            ReallocAcrossClassesAndTheBorderKeepsData,
                            ReallocToZeroFreesAndReturnsNull, ReallocByteByByteGrowAndShrink,
                            ReallocarrayOverflowFailsAndKeepsBlock, HugeMallocFailsWithEnomem,
                            MoreThanMemoryPlusSwapFollowsTheKernelsOvercommitPolicy,
                            CallocOverflowAndHugeFailWithEnomem, HugeReallocFailsAndKeepsBlock,
                            HugeAlignedFailsWithEnomem, AlignedAllocationsAreAlignedAndUsable,
                            AlignedAllocAndFreeAlignedSized, BadAlignmentsAreRejectedWithEinval,
                            VallocAndPvallocArePageAligned, FreeSizedWithTheRightSize,
                            OwnsAndUsableSize);
#else
REGISTER_TYPED_TEST_SUITE_P(
    Alloc, MallocEverySize0To600, BorderSizes, ManyBlocksOfOneClassDoNotOverlap, FreeNullIsNoOp,
    CallocZeroesReusedMemory, ReallocNullIsMalloc, ReallocWithinClassStaysInPlace,
    ReallocAcrossClassesAndTheBorderKeepsData, ReallocToZeroFreesAndReturnsNull,
    ReallocByteByByteGrowAndShrink, ReallocarrayOverflowFailsAndKeepsBlock,
    HugeMallocFailsWithEnomem, MoreThanMemoryPlusSwapFollowsTheKernelsOvercommitPolicy,
    CallocOverflowAndHugeFailWithEnomem, HugeReallocFailsAndKeepsBlock, HugeAlignedFailsWithEnomem,
    AlignedAllocationsAreAlignedAndUsable, AlignedAllocAndFreeAlignedSized,
    BadAlignmentsAreRejectedWithEinval, VallocAndPvallocArePageAligned, FreeSizedWithTheRightSize,
    OwnsAndUsableSize);
#endif

// ---------------------------------------------------------------------------------------------
// Misuse must abort with one line on stderr naming the call and the address.

template <class A>
class AllocDeathTest : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
  // "trimalloc: free(): <what>[ detail] 0x<address>"
  static std::string re(const char* fn, const char* what) {
    return std::string("trimalloc: ") + fn + "\\(\\): " + what + "[^\n]* 0x[0-9a-f]+";
  }
};
TYPED_TEST_SUITE_P(AllocDeathTest);

TYPED_TEST_P(AllocDeathTest, DoubleFreeImmediate) {
  using A = TypeParam;
  const std::string re = this->re(A::free_re, "double free of");
  for (std::size_t n : {1u, 16u, 17u, 100u, 256u, 511u, 512u}) {
    EXPECT_DEATH(
        {
          void* p = A::malloc(n);
          A::free(p);
          A::free(p);
        },
        re)
        << "size " << n;
  }
}

// realloc(p, 0) freed p (Alloc.ReallocToZeroFreesAndReturnsNull): a later free of it is a
// double free.
TYPED_TEST_P(AllocDeathTest, FreeAfterReallocToZeroIsADoubleFree) {
  using A = TypeParam;
  const std::string re = this->re(A::free_re, "double free of");
  for (std::size_t n : {24u, 512u}) {
    EXPECT_DEATH(
        {
          void* p = A::malloc(n);
          if (A::realloc(p, 0) == nullptr) A::free(p);
        },
        re)
        << "size " << n;
  }
}

// The second free comes after other blocks of the same class were freed (the block is no longer
// at the head of its free list).
TYPED_TEST_P(AllocDeathTest, DoubleFreeDelayed) {
  using A = TypeParam;
  EXPECT_DEATH(
      {
        void* others[10];
        for (auto& o : others) o = A::malloc(48);
        void* p = A::malloc(48);
        A::free(p);
        for (auto& o : others) A::free(o);
        A::free(p);
      },
      this->re(A::free_re, "double free of"));
}

// The second free comes from another thread (the remote-free path), or both do.
TYPED_TEST_P(AllocDeathTest, DoubleFreeFromAnotherThread) {
  using A = TypeParam;
  const std::string re = this->re(A::free_re, "double free of");
  EXPECT_DEATH(
      {
        void* keep = A::malloc(64);  // keeps the pool from being emptied
        void* p = A::malloc(64);
        A::free(p);
        std::thread([p] { A::free(p); }).join();
        A::free(keep);
      },
      re)
      << "owner frees, then another thread";
  EXPECT_DEATH(
      {
        void* keep = A::malloc(64);
        void* p = A::malloc(64);
        std::thread([p] { A::free(p); }).join();
        std::thread([p] { A::free(p); }).join();
        A::free(keep);
      },
      re)
      << "two other threads";
}

TYPED_TEST_P(AllocDeathTest, FreeOfInteriorPointer) {
  using A = TypeParam;
  const std::string re = this->re(A::free_re, "invalid pointer");
  EXPECT_DEATH(
      {
        char* p = static_cast<char*>(A::malloc(64));
        A::free(p + 16);
      },
      re);
  EXPECT_DEATH(
      {
        char* p = static_cast<char*>(A::malloc(64));
        A::free(p + 8);
      },
      re);
  EXPECT_DEATH(
      {
        char* p = static_cast<char*>(A::malloc(200));
        A::free(p + 1);
      },
      re);
}

#if defined(TRIMALLOC_SECURE)
// An interior pointer of a large block is not a block jemalloc handed out either (hardened
// build: see OwnsIsFalseForInteriorOfLargeBlock).
TYPED_TEST_P(AllocDeathTest, FreeOfInteriorPointerOfLargeBlock) {
  using A = TypeParam;
  const std::string re = this->re(A::free_re, "invalid pointer");
  for (std::size_t off : {16u, 4096u}) {
    EXPECT_DEATH(
        {
          char* p = static_cast<char*>(A::malloc(100000));
          A::free(p + off);
        },
        re)
        << "malloc(100000) + " << off;
  }
}
#endif

TYPED_TEST_P(AllocDeathTest, FreeOfStackAddress) {
  using A = TypeParam;
  EXPECT_DEATH(
      {
        alignas(16) char local[64];
        std::memset(local, 1, sizeof local);
        A::free(local);
      },
      this->re(A::free_re, "invalid pointer"));
}

TYPED_TEST_P(AllocDeathTest, FreeOfNeverAllocatedPointer) {
  using A = TypeParam;
  const std::string re = this->re(A::free_re, "invalid pointer");
  alignas(64) static char global_buf[256];
  EXPECT_DEATH(A::free(global_buf), re) << "static buffer";
  EXPECT_DEATH(
      {
        void* page =
            mmap(nullptr, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        A::free(static_cast<char*>(page) + 4096);
      },
      re)
      << "mmap'd page";
  EXPECT_DEATH(
      {
        void* page = mmap(nullptr, 1 << 16, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        munmap(page, 1 << 16);
        A::free(page);
      },
      re)
      << "unmapped address";
  EXPECT_DEATH(A::free(A::foreign_malloc(64)), re) << "block of another heap";
  // Inside a small arena but in its metadata slot (the first pool-sized slot: pool headers, with
  // the arena header in the first line): never a block.
  void* block = A::malloc(16);
  auto arena = reinterpret_cast<std::uintptr_t>(block) & ~(trimalloc::kArenaSize - 1);
  for (std::uintptr_t offset :
       {std::size_t{0}, std::size_t{16}, std::size_t{64}, std::size_t{128}, std::size_t{4096},
        std::size_t{8192}, trimalloc::kPoolSize / 2 + 16, trimalloc::kPoolSize - 16})
    EXPECT_DEATH(A::free(reinterpret_cast<void*>(arena + offset)), re)
        << "metadata slot, offset " << offset;
  A::free(block);
}

TYPED_TEST_P(AllocDeathTest, FreeSizedWithSizeOfAnotherClass) {
  using A = TypeParam;
  const std::string re = std::string("trimalloc: ") + A::free_sized_re + "\\(\\): .*0x[0-9a-f]+";
  EXPECT_DEATH(A::free_sized(A::malloc(16), 100), re) << "16 freed as 100";
  EXPECT_DEATH(A::free_sized(A::malloc(100), 16), re) << "100 freed as 16";
  EXPECT_DEATH(A::free_sized(A::malloc(100), 1000), re) << "small block freed with a large size";
}

TYPED_TEST_P(AllocDeathTest, FreeSizedOfLargeBlockWithSmallSize) {
  using A = TypeParam;
  const std::string re = std::string("trimalloc: ") + A::free_sized_re + "\\(\\): .*0x[0-9a-f]+";
  EXPECT_DEATH(A::free_sized(A::malloc(1000), 100), re) << "large block freed with a small size";
}

// A use after free that writes into a free block is caught when the block is handed out again,
// instead of handing out whatever address the write left in its list link.
#if defined(TRIMALLOC_SECURE)
// Hardened: a freed block is zeroed, held in quarantine for the next 256 frees and checked when
// it leaves (the write is caught at that later free), and again at its next allocation.
TYPED_TEST_P(AllocDeathTest, WriteAfterFreeIsCaughtAtTheNextAllocation) {
  using A = TypeParam;
  EXPECT_DEATH(
      {
        std::vector<void*> others;
        for (int i = 0; i < 300; ++i) others.push_back(A::malloc(64));
        auto* p = static_cast<std::uint64_t*>(A::malloc(64));
        A::free(p);
        p[4] = 0x4141414141414141u;  // the body, past the link and mark words
        for (void* o : others) A::free(o);
        for (int i = 0; i < 2000; ++i) A::malloc(64);
      },
      "trimalloc: (tm_)?(malloc|free)\\(\\): write after free detected[^\n]* 0x[0-9a-f]+");
}
#else
// Default: the free list's links are encoded and checked when popped; a write over a free
// block's link decodes to an address outside its pool.
TYPED_TEST_P(AllocDeathTest, WriteAfterFreeIsCaughtAtTheNextAllocation) {
  using A = TypeParam;
  EXPECT_DEATH(
      {
        void* q = A::malloc(64);
        auto* p = static_cast<std::uint64_t*>(A::malloc(64));
        A::free(q);
        A::free(p);  // the head of its pool's free list, linked to q
        p[0] = 0x4141414141414141u;
        A::malloc(64);
      },
      "trimalloc: (tm_)?malloc\\(\\): free list corrupted[^\n]* 0x[0-9a-f]+");
}
#endif

#if defined(TRIMALLOC_SECURE)
REGISTER_TYPED_TEST_SUITE_P(AllocDeathTest, DoubleFreeImmediate,
                            FreeAfterReallocToZeroIsADoubleFree, DoubleFreeDelayed,
                            DoubleFreeFromAnotherThread, FreeOfInteriorPointer,
                            FreeOfInteriorPointerOfLargeBlock, FreeOfStackAddress,
                            FreeOfNeverAllocatedPointer, FreeSizedWithSizeOfAnotherClass,
                            FreeSizedOfLargeBlockWithSmallSize,
                            WriteAfterFreeIsCaughtAtTheNextAllocation);
#else
REGISTER_TYPED_TEST_SUITE_P(AllocDeathTest, DoubleFreeImmediate,
                            FreeAfterReallocToZeroIsADoubleFree, DoubleFreeDelayed,
                            DoubleFreeFromAnotherThread, FreeOfInteriorPointer, FreeOfStackAddress,
                            FreeOfNeverAllocatedPointer, FreeSizedWithSizeOfAnotherClass,
                            FreeSizedOfLargeBlockWithSmallSize,
                            WriteAfterFreeIsCaughtAtTheNextAllocation);
#endif

}  // namespace tmtest
