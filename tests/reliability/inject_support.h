// mmap failure injection (os::inject_reserve_failures) against an allocation API: shared by
// inject_test.cpp (the engine's tm_* functions, every build including ASan/TSan) and
// inject_override_test.cpp (malloc & operator new compiled from the override sources).
//
// While failures are injected, nothing may allocate behind the test's back except the allocator
// itself: bookkeeping lives in mmap'd arrays and results are asserted after injection stops
// (a failing gtest assertion allocates).
#pragma once

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "config.h"
#include "model.h"
#include "os.h"

namespace reltest {

// A fixed-capacity array in its own mapping (not from any malloc).
template <class T>
class MapArray {
 public:
  explicit MapArray(std::size_t cap) : cap_(cap) {
    void* m = mmap(nullptr, cap * sizeof(T), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    data_ = m == MAP_FAILED ? nullptr : static_cast<T*>(m);
  }
  ~MapArray() {
    if (data_) munmap(data_, cap_ * sizeof(T));
  }
  MapArray(const MapArray&) = delete;
  MapArray& operator=(const MapArray&) = delete;
  bool ok() const { return data_ != nullptr; }
  bool push(const T& v) {
    if (n_ == cap_) return false;
    data_[n_++] = v;
    return true;
  }
  std::size_t size() const { return n_; }
  T& operator[](std::size_t i) { return data_[i]; }
  void clear() { n_ = 0; }

 private:
  T* data_ = nullptr;
  std::size_t cap_ = 0, n_ = 0;
};

struct Blk {
  void* p;
  std::size_t n;
  std::uint64_t seed;
};

// Problems found while injection is on, reported afterwards. No allocation.
class Log {
 public:
  void add(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
    ++count_;
    if (used_ >= sizeof buf_ - 200) return;
    va_list ap;
    va_start(ap, fmt);
    int k = std::vsnprintf(buf_ + used_, sizeof buf_ - used_, fmt, ap);
    va_end(ap);
    if (k > 0)
      used_ += static_cast<std::size_t>(k) < sizeof buf_ - used_ ? k : sizeof buf_ - used_ - 1;
    if (used_ < sizeof buf_ - 1) buf_[used_++] = '\n';
    buf_[used_] = 0;
  }
  int count() const { return count_; }
  std::string text() const { return std::string(buf_, used_); }

 private:
  char buf_[8192] = {};
  std::size_t used_ = 0;
  int count_ = 0;
};

// Resets injection even when an assertion returns early.
struct InjectionGuard {
  ~InjectionGuard() { trimalloc::os::inject_reserve_failures(0); }
};

}  // namespace reltest

namespace reltest {

inline bool aligned_to(const void* p, std::size_t a) {
  return reinterpret_cast<std::uintptr_t>(p) % a == 0;
}

enum class Call {
  kMalloc,
  kCalloc,
  kRealloc0,
  kReallocarray0,
  kAligned,
  kPosix,
  kMemalign,
  kValloc,
  kPvalloc
};
inline const char* call_name(Call c) {
  static const char* const n[] = {
      "malloc",        "calloc",         "realloc(NULL)", "reallocarray(NULL)",
      "aligned_alloc", "posix_memalign", "memalign",      "valloc",
      "pvalloc"};
  return n[static_cast<int>(c)];
}

struct Case {
  Call call;
  std::size_t size;
  std::size_t align;  // 0 = default
};

// One call of `c`; nullptr on failure, with *err = errno (or posix_memalign's result).
// posix_memalign must leave *out alone (or NULL) when it fails.
template <class A>
void* call_once(const Case& c, int* err, Log& log) {
  errno = 0;
  void* p = nullptr;
  switch (c.call) {
    case Call::kMalloc:
      p = A::malloc(c.size);
      break;
    case Call::kCalloc:
      p = A::calloc(1, c.size);
      break;
    case Call::kRealloc0:
      p = A::realloc(nullptr, c.size);
      break;
    case Call::kReallocarray0:
      p = A::reallocarray(nullptr, 1, c.size);
      break;
    case Call::kAligned:
      p = A::aligned_alloc(c.align, c.size);
      break;
    case Call::kPosix: {
      void* out = reinterpret_cast<void*>(0x1230);
      int rc = A::posix_memalign(&out, c.align, c.size);
      if (rc != 0) {
        if (out != reinterpret_cast<void*>(0x1230) && out != nullptr)
          log.add("posix_memalign(%zu, %zu) failed with %d but wrote %p", c.align, c.size, rc, out);
        *err = rc;
        return nullptr;
      }
      p = out;
      break;
    }
    case Call::kMemalign:
      p = A::memalign(c.align, c.size);
      break;
    case Call::kValloc:
      p = A::valloc(c.size);
      break;
    case Call::kPvalloc:
      p = A::pvalloc(c.size);
      break;
  }
  *err = errno;
  return p;
}

// The blocks one case obtained while failures were injected.
struct Taken {
  MapArray<Blk> blocks{std::size_t{1} << 22};
};

// Calls `c` until it fails three times in a row (at most `cap` calls): every result is a valid,
// aligned block or NULL with ENOMEM. (A failed call may be followed by one that succeeds:
// jemalloc can fail while trying to grow its address space and then serve the next call from
// what it already holds. That is allowed; the point is that memory runs out cleanly.)
template <class A>
bool exhaust(const Case& c, std::size_t cap, Taken& taken, Log& log, std::uint64_t& seed) {
  std::size_t need_align = c.align ? c.align : 16;
  if (c.call == Call::kValloc || c.call == Call::kPvalloc) need_align = 4096;
  int in_a_row = 0;
  for (std::size_t i = 0; i < cap; ++i) {
    int err = 0;
    void* p = call_once<A>(c, &err, log);
    if (p == nullptr) {
      if (err != ENOMEM)
        log.add("%s(%zu, align %zu) failed with errno %d, not ENOMEM", call_name(c.call), c.size,
                c.align, err);
      if (++in_a_row == 3) return true;
      continue;
    }
    in_a_row = 0;
    std::size_t u = A::usable(p);
    if (!aligned_to(p, need_align) || u < c.size)
      log.add("%s(%zu, align %zu) gave %p with usable size %zu", call_name(c.call), c.size, c.align,
              p, u);
    if (c.call == Call::kCalloc && rel::first_nonzero(p, c.size) >= 0)
      log.add("calloc(1, %zu) gave %p, not zeroed", c.size, p);
    std::size_t n = c.size < 64 ? c.size : 64;  // enough to see overlaps, cheap for big blocks
    rel::fill(p, n, ++seed);
    if (!taken.blocks.push(Blk{p, n, seed})) {
      A::free(p);
      log.add("test bookkeeping full");
      return false;
    }
  }
  log.add("%s(%zu, align %zu) succeeded %zu times with every mmap failing", call_name(c.call),
          c.size, c.align, cap);
  return false;
}

inline std::size_t verify_all(MapArray<Blk>& blocks, Log& log, const char* what) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    long off = rel::first_bad(blocks[i].p, blocks[i].n, blocks[i].seed);
    if (off >= 0 && bad++ < 5)
      log.add("%s block %p (+%zu) damaged at offset %ld", what, blocks[i].p, blocks[i].n, off);
  }
  return bad;
}

// The cases every entry point goes through: every pool class, jemalloc's small and large
// sizes, and alignments 16..64 KiB.
inline MapArray<Case>* all_cases() {
  auto* v = new MapArray<Case>(4096);
  for (std::size_t n = 0; n <= 512; n += 16) v->push({Call::kMalloc, n == 0 ? 1 : n, 0});
  for (std::size_t n :
       {513ul, 1024ul, 4096ul, 14336ul, 16385ul, 65536ul, 1ul << 20, 8ul << 20, 64ul << 20})
    v->push({Call::kMalloc, n, 0});
  for (std::size_t n : {8ul, 300ul, 5000ul, 1ul << 20}) {
    v->push({Call::kCalloc, n, 0});
    v->push({Call::kRealloc0, n, 0});
    v->push({Call::kReallocarray0, n, 0});
    v->push({Call::kValloc, n, 0});
    v->push({Call::kPvalloc, n, 0});
  }
  for (std::size_t a = 16; a <= 65536; a *= 4)
    for (std::size_t n : {a, 1000ul, 100000ul}) {
      v->push({Call::kAligned, n, a});
      v->push({Call::kPosix, n, a});
      v->push({Call::kMemalign, n, a});
    }
  return v;
}

}  // namespace reltest

namespace reltest {

// Everything in one run, results in `log` (inspect after this returns; injection is off then):
//  1. blocks allocated before (small, large, aligned) keep their data throughout;
//  2. with every mmap failing, every entry point x size x alignment runs until it fails, and
//     fails with ENOMEM, stably; realloc that needs memory fails and keeps the block, realloc
//     inside a class still works; a thread that never allocated before gets ENOMEM too;
//  3. memory freed while mmap fails can be allocated again;
//  4. once injection stops, every case allocates again and the blocks are usable.
template <class A>
void injection_scenario(Log& log, std::size_t cap) {
  using trimalloc::os::inject_reserve_failures;
  InjectionGuard guard;
  std::uint64_t seed = 0;
  MapArray<Blk> keep(64);
  for (std::size_t n : {1ul, 16ul, 100ul, 512ul, 513ul, 4000ul, 20000ul, 300000ul, 3ul << 20}) {
    void* p = A::malloc(n);
    if (!p) {
      log.add("malloc(%zu) failed before injection", n);
      return;
    }
    rel::fill(p, A::usable(p), ++seed);
    keep.push(Blk{p, A::usable(p), seed});
  }
  void* al = A::aligned_alloc(4096, 5000);
  if (!al) {
    log.add("aligned_alloc failed before injection");
    return;
  }
  rel::fill(al, 5000, ++seed);
  keep.push(Blk{al, 5000, seed});
  MapArray<Case>* cases = all_cases();

  // A thread started now, which allocates only once failures are injected.
  std::atomic<int> phase{0};
  Log tlog;
  Taken ttaken;
  std::uint64_t tseed = 1ull << 40;
  std::thread late([&] {
    while (phase.load() == 0) std::this_thread::yield();
    for (Case c :
         {Case{Call::kMalloc, 16, 0}, Case{Call::kMalloc, 300, 0}, Case{Call::kMalloc, 5000, 0},
          Case{Call::kAligned, 200, 64}, Case{Call::kMalloc, 1 << 20, 0}})
      exhaust<A>(c, cap, ttaken, tlog, tseed);
    phase = 2;
    while (phase.load() != 3) std::this_thread::yield();
    for (std::size_t i = 0; i < ttaken.blocks.size(); ++i)
      A::free(ttaken.blocks[i].p);                            // remote frees
    for (std::size_t n : {16ul, 300ul, 5000ul, 1ul << 20}) {  // and it allocates again
      void* p = A::malloc(n);
      if (!p) {
        tlog.add("thread: malloc(%zu) failed after injection stopped", n);
        continue;
      }
      std::memset(p, 0x77, n);
      A::free(p);
    }
  });

  inject_reserve_failures(-1);
  Taken taken;
  for (std::size_t i = 0; i < cases->size(); ++i) exhaust<A>((*cases)[i], cap, taken, log, seed);
  phase = 1;
  while (phase.load() != 2) std::this_thread::yield();

  // realloc that needs fresh memory fails and keeps the block; within a class it stays in place.
  Blk& small = keep[1];  // 16 bytes
  errno = 0;
  if (void* q = A::realloc(small.p, 400); q != nullptr || errno != ENOMEM) {
    log.add("realloc(16-byte block, 400) = %p, errno %d under injection", q, errno);
    if (q) small.p = q;
  }
  Blk& big = keep[7];  // 300000 bytes
  errno = 0;
  if (void* q = A::realloc(big.p, 256ul << 20); q != nullptr || errno != ENOMEM) {
    log.add("realloc(300000-byte block, 256 MiB) = %p, errno %d under injection", q, errno);
    if (q) big.p = q;
  }
  errno = 0;
  if (void* q = A::reallocarray(big.p, 1024, 256 << 10); q != nullptr || errno != ENOMEM) {
    log.add("reallocarray(300000-byte block, 1024, 256 KiB) = %p, errno %d under injection", q,
            errno);
    if (q) big.p = q;
  }
  Blk& hundred = keep[2];  // 100 bytes: class 112
  if (void* q = A::realloc(hundred.p, 110); q != hundred.p)
    log.add("realloc(100-byte block, 110) moved or failed (%p -> %p) under injection", hundred.p,
            q);
  else
    hundred.n = 100;  // bytes 100.. are no longer promised
  if (verify_all(keep, log, "kept") != 0) log.add("blocks allocated before injection were damaged");
  if (verify_all(taken.blocks, log, "taken") != 0)
    log.add("blocks allocated under injection were damaged");

  // Memory freed while mmap still fails is allocated again.
  std::size_t reused = 0, tried = 0;
  for (std::size_t i = 0; i < taken.blocks.size(); i += 2) {
    Blk b = taken.blocks[i];
    std::size_t u = A::usable(b.p);
    A::free(b.p);
    if (u <= 512 || u == 4096 || i % 64 == 0) {
      ++tried;
      void* p = A::malloc(u);
      if (p) {
        ++reused;
        rel::fill(p, b.n, b.seed);
        taken.blocks[i].p = p;
      } else {
        taken.blocks[i].p = nullptr;
      }
    } else {
      taken.blocks[i].p = nullptr;
    }
  }
  if (tried && reused * 10 < tried * 9)
    log.add("only %zu of %zu blocks freed under injection could be allocated again", reused, tried);

  inject_reserve_failures(0);
  phase = 3;
  late.join();
  if (tlog.count())
    log.add("in a thread that started allocating under injection:\n%s", tlog.text().c_str());

  // After injection: every case allocates again.
  for (std::size_t i = 0; i < cases->size(); ++i) {
    Case c = (*cases)[i];
    int err = 0;
    void* p = call_once<A>(c, &err, log);
    if (!p) {
      log.add("%s(%zu, align %zu) still fails (errno %d) after injection stopped",
              call_name(c.call), c.size, c.align, err);
      continue;
    }
    rel::fill(p, c.size, ++seed);
    if (rel::first_bad(p, c.size, seed) >= 0) log.add("fresh block %p did not keep its data", p);
    A::free(p);
  }
  if (verify_all(keep, log, "kept") != 0) log.add("kept blocks damaged after injection");
  std::size_t i_bad = 0;
  for (std::size_t i = 0; i < taken.blocks.size(); ++i) {
    Blk b = taken.blocks[i];
    if (!b.p) continue;
    if (rel::first_bad(b.p, b.n, b.seed) >= 0 && i_bad++ < 5)
      log.add("block %p taken under injection damaged", b.p);
    A::free(b.p);
  }
  for (std::size_t i = 0; i < keep.size(); ++i) A::free(keep[i].p);
  delete cases;
}

// Random workload with failures injected now and then (1..3 reserves at a time, wherever they
// land: pool arenas, heap metadata, jemalloc extents and jemalloc's own metadata). Each call
// gives a valid block or NULL with ENOMEM; live blocks keep their data.
template <class A>
void random_injection(Log& log, std::uint64_t seed0, std::size_t ops, std::size_t* failures_seen) {
  using trimalloc::os::inject_reserve_failures;
  InjectionGuard guard;
  constexpr std::size_t kLive = 2048;
  MapArray<Blk> live(kLive);
  for (std::size_t i = 0; i < kLive; ++i) live.push(Blk{nullptr, 0, 0});
  A::free(A::malloc(100000));  // the large allocator is set up (see FirstLargeAllocation... tests)
  std::uint64_t r = seed0;
  std::size_t fails = 0;
  for (std::size_t i = 0; i < ops; ++i) {
    r = rel::mix64(r);
    // The hardened build retries a failed allocation once after emptying the quarantine
    // (malloc_after_quarantine), which absorbs one injected failure: its bursts are one longer,
    // or so few failures reach the callers that a run can see none (CI, 2026-11-23).
    constexpr long kRetried = trimalloc::kSecure ? 1 : 0;
    if (r % 97 == 0) inject_reserve_failures(static_cast<long>(1 + kRetried + (r >> 8) % 3));
    if (i % 512 == 511) A::trim();  // empty arenas go back, so new ones must be reserved
    Blk& b = live[(r >> 16) % kLive];
    if (b.p) {
      long off = rel::first_bad(b.p, b.n, b.seed);
      if (off >= 0) log.add("op %zu: live block %p (+%zu) damaged at %ld", i, b.p, b.n, off);
      if ((r >> 40) % 3 == 0) {
        errno = 0;
        std::size_t n = rel::size_from(static_cast<std::uint32_t>(r >> 24));
        void* q = A::realloc(b.p, n ? n : 1);
        if (!q) {
          ++fails;
          if (errno != ENOMEM) log.add("op %zu: realloc failed with errno %d", i, errno);
          continue;  // the old block is still live, with its data
        }
        std::size_t keep = b.n < n ? b.n : n;
        if (rel::first_bad(q, keep, b.seed) >= 0) log.add("op %zu: realloc lost data", i);
        b.p = q;
        b.n = n;
        rel::fill(q, n, b.seed);
        continue;
      }
      A::free(b.p);
      b.p = nullptr;
      continue;
    }
    Case c{static_cast<Call>((r >> 24) % 9), rel::size_from(static_cast<std::uint32_t>(r >> 32)),
           rel::align_from(static_cast<std::uint32_t>(r >> 8))};
    if (c.call == Call::kPosix && c.align < sizeof(void*)) c.align = sizeof(void*);
    int err = 0;
    void* p = call_once<A>(c, &err, log);
    if (!p) {
      ++fails;
      if (err != ENOMEM)
        log.add("op %zu: %s(%zu, align %zu) failed with %d", i, call_name(c.call), c.size, c.align,
                err);
      continue;
    }
    if (A::usable(p) < c.size)
      log.add("op %zu: %s(%zu) usable %zu", i, call_name(c.call), c.size, A::usable(p));
    b = Blk{p, c.size, r | 1};
    rel::fill(p, b.n, b.seed);
    if (log.count() > 20) break;
  }
  inject_reserve_failures(0);
  for (std::size_t i = 0; i < kLive; ++i) {
    Blk& b = live[i];
    if (!b.p) continue;
    if (rel::first_bad(b.p, b.n, b.seed) >= 0) log.add("final: block %p damaged", b.p);
    A::free(b.p);
  }
  *failures_seen = fails;
}

}  // namespace reltest
