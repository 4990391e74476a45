// The operation language and the model shared by the randomised differential tester
// (difftest.cpp) and the libFuzzer harness (fuzz_ops.cpp).
//
// A Tester owns a table of slots; an operation names a slot and a request (size, alignment,
// seed). Allocation ops into an occupied slot first free what is there, so any sequence of ops
// is valid: the random generator and the fuzzer's byte decoder cannot produce misuse. The model
// of a live block is its request, its usable size, how it may be freed, and the seed of the
// pattern its usable bytes hold. Every touch of a block verifies the pattern; checks:
//   - allocation: non-NULL, aligned (16, or the requested alignment, or a page for valloc),
//     usable_size >= request, calloc's bytes are zero, the block overlaps no other live block
//     of any thread (a process-wide interval set), the usable size stays the same while live;
//   - realloc: the prefix min(old, new) still holds the old pattern;
//   - free / verify / hand-off to another thread: the pattern is intact;
//   - impossible sizes: NULL with errno ENOMEM.
// A check that fails calls the failure hook (print and exit(1) in difftest, abort in the fuzzer).
#pragma once

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>

namespace rel {

[[noreturn]] void failure(const char* what);  // defined by each program

inline void failf(const char* fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
inline void failf(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  failure(buf);
}

inline std::uint64_t mix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Word i of the pattern of `seed` is mix64(seed ^ i * K): every word differs between seeds and
// between positions, so overlapping blocks, stale data and shifted copies all show.
inline std::uint64_t pattern_word(std::uint64_t seed, std::size_t i) {
  return mix64(seed ^ (i * 0xd6e8feb86659fd93ULL));
}

inline void fill(void* p, std::size_t n, std::uint64_t seed) {
  auto* b = static_cast<unsigned char*>(p);
  std::size_t words = n / 8;
  for (std::size_t i = 0; i < words; ++i) {
    std::uint64_t w = pattern_word(seed, i);
    std::memcpy(b + i * 8, &w, 8);
  }
  if (n % 8) {
    std::uint64_t w = pattern_word(seed, words);
    std::memcpy(b + words * 8, &w, n % 8);
  }
}

// Offset of the first byte of [p, p+n) that differs from the pattern, or -1.
inline long first_bad(const void* p, std::size_t n, std::uint64_t seed) {
  auto* b = static_cast<const unsigned char*>(p);
  std::size_t words = n / 8;
  for (std::size_t i = 0; i < words; ++i) {
    std::uint64_t w = pattern_word(seed, i), got;
    std::memcpy(&got, b + i * 8, 8);
    if (got != w) {
      for (std::size_t k = 0; k < 8; ++k)
        if (reinterpret_cast<unsigned char*>(&got)[k] != reinterpret_cast<unsigned char*>(&w)[k])
          return static_cast<long>(i * 8 + k);
    }
  }
  if (n % 8) {
    std::uint64_t w = pattern_word(seed, words);
    auto* wb = reinterpret_cast<const unsigned char*>(&w);
    for (std::size_t k = 0; k < n % 8; ++k)
      if (b[words * 8 + k] != wb[k]) return static_cast<long>(words * 8 + k);
  }
  return -1;
}

inline long first_nonzero(const void* p, std::size_t n) {
  auto* b = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i)
    if (b[i]) return static_cast<long>(i);
  return -1;
}

// Every live block of every thread, as [begin, end) of its usable bytes.
class Intervals {
 public:
  void insert(const void* p, std::size_t n, const char* op) {
    auto b = reinterpret_cast<std::uintptr_t>(p), e = b + (n ? n : 1);
    std::lock_guard<std::mutex> g(m_);
    auto next = map_.lower_bound(b);
    if (next != map_.end() && next->first < e)
      failf("%s returned %p (+%zu) overlapping live block %p..%p", op, p, n,
            reinterpret_cast<void*>(next->first), reinterpret_cast<void*>(next->second));
    if (next != map_.begin()) {
      auto prev = std::prev(next);
      if (prev->second > b)
        failf("%s returned %p (+%zu) overlapping live block %p..%p", op, p, n,
              reinterpret_cast<void*>(prev->first), reinterpret_cast<void*>(prev->second));
    }
    map_.emplace(b, e);
  }
  void erase(const void* p) {
    std::lock_guard<std::mutex> g(m_);
    if (map_.erase(reinterpret_cast<std::uintptr_t>(p)) != 1)
      failf("model: %p is not a live block (tester bug)", p);
  }
  std::size_t size() {
    std::lock_guard<std::mutex> g(m_);
    return map_.size();
  }

 private:
  std::mutex m_;
  std::map<std::uintptr_t, std::uintptr_t> map_;
};

enum Code : std::uint8_t {
  kMalloc,
  kCalloc,
  kRealloc,
  kReallocarray,
  kAlignedAlloc,
  kPosixMemalign,
  kMemalign,
  kValloc,
  kFree,
  kFreeSized,
  kVerify,
  kHandoff,
  kHuge,
  kTrim,
  kCodeCount
};
inline const char* code_name(unsigned c) {
  static const char* const names[] = {
      "malloc",         "calloc",   "realloc", "reallocarray", "aligned_alloc",
      "posix_memalign", "memalign", "valloc",  "free",         "free_sized",
      "verify",         "handoff",  "huge",    "trim"};
  return c < kCodeCount ? names[c] : "?";
}

struct Op {
  std::uint8_t code;
  std::uint16_t slot;
  std::size_t size;
  std::size_t align;   // power of two, 8..65536
  std::uint64_t seed;  // pattern seed; also picks the mailbox and the huge size
};

// Request sizes: mostly small blocks (the pools), some jemalloc sizes, rarely up to 4 MiB.
inline std::size_t size_from(std::uint32_t r) {
  unsigned bucket = r & 31;
  r >>= 5;
  if (bucket < 20) return r % 601;                  // 0..600: every pool class and the border
  if (bucket < 27) return 513 + r % (16384 - 513);  // jemalloc small classes
  if (bucket < 31) return 16384 + r % (262144 - 16384);
  return 262144 + r % ((4u << 20) - 262144);
}
inline std::size_t align_from(std::uint32_t r) {
  return std::size_t{8} << (r % 14);
}  // 8..64 KiB

enum FreeHow : std::uint8_t { kPlainFree, kSized, kAlignedSized };

struct Rec {
  void* p = nullptr;
  std::size_t n = 0;       // requested size
  std::size_t usable = 0;  // usable size when allocated (filled with the pattern)
  std::size_t align = 0;   // requested alignment (aligned_alloc), for free_aligned_sized
  std::uint64_t seed = 0;
  std::uint8_t how = kPlainFree;
  std::uint8_t code = 0;  // the op that made it
};

// Shared between the threads of one run.
struct World {
  static constexpr unsigned kMailboxes = 64;
  Intervals live;
  std::atomic<Rec*> mailbox[kMailboxes] = {};
  std::atomic<std::uint64_t> ops{0};
};

// API: static functions malloc calloc realloc reallocarray free free_sized free_aligned_sized
// aligned_alloc posix_memalign memalign valloc usable trim.
template <class API>
class Tester {
 public:
  static constexpr unsigned kSlots = 256;

  Tester(World& w, unsigned thread) : w_(w), thread_(thread) {}
  ~Tester() { release_all(); }

  void apply(const Op& op) {
    op_ = op;
    ++count_;
    Rec& r = slots_[op.slot % kSlots];
    switch (op.code) {
      case kMalloc:
      case kCalloc:
      case kAlignedAlloc:
      case kPosixMemalign:
      case kMemalign:
      case kValloc:
        if (r.p) release(r, false);
        allocate(r, op);
        break;
      case kRealloc:
      case kReallocarray:
        reallocate(r, op);
        break;
      case kFree:
        if (r.p) release(r, false);
        break;
      case kFreeSized:
        if (r.p) release(r, true);
        break;
      case kVerify:
        if (r.p) verify(r, "verify");
        break;
      case kHandoff:
        handoff(r, op.seed % World::kMailboxes);
        break;
      case kHuge:
        huge(op.seed);
        break;
      case kTrim:
        API::trim();
        break;
      default:
        break;
    }
    w_.ops.fetch_add(1, std::memory_order_relaxed);
  }

  void release_all() {
    for (auto& r : slots_)
      if (r.p) release(r, false);
  }

  // For the self-tests: a live block of this tester, or null.
  Rec* some_live(std::uint64_t pick) {
    for (unsigned k = 0; k < kSlots; ++k) {
      Rec& r = slots_[(pick + k) % kSlots];
      if (r.p && r.usable >= 16) return &r;
    }
    return nullptr;
  }
  bool corrupt_calloc_next = false;  // self-test: pretend calloc returned a dirty block

  // Drains the mailboxes (after every thread has stopped): verify and free what is left.
  static void drain(World& w) {
    Tester t(w, 999);
    for (auto& m : w.mailbox) {
      Rec* got = m.exchange(nullptr);
      if (!got) continue;
      t.slots_[0] = *got;
      delete got;
      t.verify(t.slots_[0], "drain");
      t.release(t.slots_[0], false);
    }
  }

 private:
  void where(char* buf, std::size_t n) const {
    std::snprintf(buf, n, "thread %u op #%llu (%s slot %u size %zu align %zu)", thread_,
                  static_cast<unsigned long long>(count_), code_name(op_.code), op_.slot % kSlots,
                  op_.size, op_.align);
  }

  void verify(const Rec& r, const char* why) {
    long bad = first_bad(r.p, r.usable, r.seed);
    if (bad >= 0) {
      char w[160];
      where(w, sizeof w);
      failf(
          "pattern mismatch in live block %p (made by %s, size %zu, usable %zu) at offset %ld, "
          "found on %s; %s",
          r.p, code_name(r.code), r.n, r.usable, bad, why, w);
    }
    std::size_t u = API::usable(r.p);
    if (u != r.usable) {
      char w[160];
      where(w, sizeof w);
      failf("usable size of live block %p changed from %zu to %zu; %s", r.p, r.usable, u, w);
    }
  }

  void check_new(Rec& r, void* p, std::size_t n, std::size_t align, const char* op) {
    char w[160];
    if (p == nullptr) {
      where(w, sizeof w);
      failf("%s(%zu) returned NULL (errno %d); %s", op, n, errno, w);
    }
    auto a = reinterpret_cast<std::uintptr_t>(p);
    if (a % align) {
      where(w, sizeof w);
      failf("%s(%zu) returned %p, not aligned to %zu; %s", op, n, p, align, w);
    }
    std::size_t u = API::usable(p);
    if (u < n) {
      where(w, sizeof w);
      failf("%s(%zu) returned %p with usable size %zu; %s", op, n, p, u, w);
    }
    w_.live.insert(p, u, op);
    r.p = p;
    r.n = n;
    r.usable = u;
  }

  void allocate(Rec& r, const Op& op) {
    std::size_t n = op.size, align = 16;
    void* p = nullptr;
    r.align = 0;
    r.how = kSized;
    switch (op.code) {
      case kMalloc:
        p = API::malloc(n);
        break;
      case kCalloc: {
        std::size_t count = 1 + op.seed % 7, each = n / count;
        n = count * each;
        p = API::calloc(count, each);
        if (p && corrupt_calloc_next) {
          corrupt_calloc_next = false;
          if (n) static_cast<unsigned char*>(p)[n / 2] = 0xa5;
        }
        if (p) {
          long nz = first_nonzero(p, n);
          if (nz >= 0) {
            char w[160];
            where(w, sizeof w);
            failf("calloc(%zu, %zu) returned %p with a non-zero byte at offset %ld; %s", count,
                  each, p, nz, w);
          }
        }
        break;
      }
      case kAlignedAlloc:
        align = op.align;
        p = API::aligned_alloc(align, n);
        r.align = align;
        r.how = kAlignedSized;
        break;
      case kPosixMemalign: {
        align = op.align;  // >= 8 = sizeof(void*)
        void* out = nullptr;
        int rc = API::posix_memalign(&out, align, n);
        if (rc != 0) {
          char w[160];
          where(w, sizeof w);
          failf("posix_memalign(%zu, %zu) = %d; %s", align, n, rc, w);
        }
        p = out;
        r.how = kPlainFree;
        break;
      }
      case kMemalign:
        align = op.align;
        p = API::memalign(align, n);
        r.how = kPlainFree;
        break;
      case kValloc:
        align = 4096;
        p = API::valloc(n);
        r.how = kPlainFree;
        break;
    }
    if (align < 16) align = 16;
    check_new(r, p, n, align, code_name(op.code));
    r.code = op.code;
    r.seed = op.seed | 1;
    fill(r.p, r.usable, r.seed);
  }

  void reallocate(Rec& r, const Op& op) {
    if (op.size == 0 && r.p != nullptr) {
      // realloc(p, 0) and reallocarray(p, 0, n) free p and return NULL, errno unchanged (glibc's
      // answer, and trimalloc's).
      verify(r, "realloc (before)");
      w_.live.erase(r.p);
      errno = 0;
      void* p = op.code == kRealloc ? API::realloc(r.p, 0) : API::reallocarray(r.p, 0, 16);
      if (p != nullptr || errno != 0) {
        char w[160];
        where(w, sizeof w);
        failf("%s(%p, 0) returned %p (errno %d), not NULL with errno unchanged; %s",
              code_name(op.code), r.p, p, errno, w);
      }
      r = Rec{};
      return;
    }
    std::size_t n = op.size ? op.size : 1;  // realloc(NULL, 0) is malloc(0): asked as 1
    if (r.p == nullptr) {
      void* p = op.code == kRealloc ? API::realloc(nullptr, n) : API::reallocarray(nullptr, 1, n);
      check_new(r, p, n, 16, code_name(op.code));
    } else {
      verify(r, "realloc (before)");
      Rec old = r;
      w_.live.erase(old.p);  // from here on the old block may be reused by another thread
      void* p;
      if (op.code == kRealloc) {
        p = API::realloc(old.p, n);
      } else {
        std::size_t count = 1 + op.seed % 5, each = n / count ? n / count : 1;
        n = count * each;
        p = API::reallocarray(old.p, count, each);
      }
      check_new(r, p, n, 16, code_name(op.code));
      std::size_t keep = old.n < n ? old.n : n;
      long bad = first_bad(p, keep, old.seed);
      if (bad >= 0) {
        char w[160];
        where(w, sizeof w);
        failf("%s(%p, %zu) -> %p lost the data of the old block (size %zu) at offset %ld; %s",
              code_name(op.code), old.p, n, p, old.n, bad, w);
      }
    }
    r.code = op.code;
    r.align = 0;
    r.how = kSized;
    r.seed = op.seed | 1;
    fill(r.p, r.usable, r.seed);
  }

  void release(Rec& r, bool sized) {
    verify(r, "free");
    w_.live.erase(r.p);
    if (sized && r.how == kSized)
      API::free_sized(r.p, r.n);
    else if (sized && r.how == kAlignedSized)
      API::free_aligned_sized(r.p, r.align, r.n);
    else
      API::free(r.p);
    r = Rec{};
  }

  // Swap this slot with a mailbox: the block goes to whichever thread looks there next.
  void handoff(Rec& r, unsigned box) {
    Rec* mine = nullptr;
    if (r.p) {
      verify(r, "handoff (send)");
      mine = new Rec(r);
    }
    Rec* got = w_.mailbox[box].exchange(mine);
    r = Rec{};
    if (got) {
      r = *got;
      delete got;
      verify(r, "handoff (receive)");
    }
  }

  void huge(std::uint64_t pick) {
    static const std::size_t sizes[] = {
        SIZE_MAX, SIZE_MAX - 4095, static_cast<std::size_t>(PTRDIFF_MAX),
        static_cast<std::size_t>(PTRDIFF_MAX) + 1, std::size_t{1} << 48};
    std::size_t n = sizes[pick % 5];
    errno = 0;
    void* p = nullptr;
    const char* name = "malloc";
    switch ((pick >> 8) % 4) {
      case 0:
        p = API::malloc(n);
        break;
      case 1:
        name = "calloc";
        p = API::calloc(1, n);
        break;
      case 2:
        name = "aligned_alloc";
        p = API::aligned_alloc(64, n);
        break;
      case 3:
        name = "realloc(NULL)";
        p = API::realloc(nullptr, n);
        break;
    }
    if (p != nullptr || errno != ENOMEM) {
      char w[160];
      where(w, sizeof w);
      failf("%s(%zu) = %p, errno %d: expected NULL with ENOMEM; %s", name, n, p, errno, w);
    }
  }

  World& w_;
  unsigned thread_;
  std::uint64_t count_ = 0;
  Op op_{};
  Rec slots_[kSlots];
};

}  // namespace rel
