// Shared helpers for trimalloc's benchmark programs.
//
// The programs call plain malloc/free, so the allocator under test is whichever one the dynamic
// linker resolves `malloc` to (LD_PRELOAD, or glibc). They find out at run time which one that is,
// and reach each allocator's own "give memory back" call through dlsym, so one binary serves every
// allocator and reports clearly when a symbol (e.g. trimalloc's tm_trim) is not there.
//
// Output protocol, read by bench/compare: one JSON object per line on stdout,
//   {"event":"<name>","t":<CLOCK_MONOTONIC seconds>,"rss":<bytes>}   phase moments (plotted)
//   {"result":{...}}                                                  the figures of the run
#pragma once

#include <dlfcn.h>
#include <malloc.h>
#include <sys/mman.h>
#include <trimalloc/stats.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

namespace tmbench {

inline double now_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

// Resident set size of this process in bytes (from /proc/self/statm; no allocation).
inline size_t rss_bytes() {
  FILE* f = fopen("/proc/self/statm", "re");
  if (!f) return 0;
  unsigned long size = 0, resident = 0;
  int n = fscanf(f, "%lu %lu", &size, &resident);
  fclose(f);
  return n == 2 ? size_t(resident) * size_t(sysconf(_SC_PAGESIZE)) : 0;
}

// Which allocator serves this process's malloc: the library that defines the `malloc` the dynamic
// linker resolves first ("trimalloc", "jemalloc", "mimalloc", "tcmalloc", "glibc" or the file
// name).
inline std::string allocator_name() {
  void* sym = dlsym(RTLD_DEFAULT, "malloc");
  Dl_info info{};
  if (!sym || !dladdr(sym, &info) || !info.dli_fname) return "unknown";
  std::string file = info.dli_fname;
  for (const char* name : {"trimalloc", "jemalloc", "mimalloc", "tcmalloc"})
    if (file.find(name) != std::string::npos) return name;
  if (file.find("libc.so") != std::string::npos) return "glibc";
  return file;
}

// Calls the allocator's own explicit release and returns what it called (or why it called nothing):
// tm_trim(2) for trimalloc, malloc_trim(0) for glibc, thread.tcache.flush + arena.<all>.purge for
// jemalloc, mi_collect(true) for mimalloc, MallocExtension_ReleaseFreeMemory() for tcmalloc.
inline std::string explicit_release() {
  const std::string who = allocator_name();
  if (who == "trimalloc") {
    using trim_fn = size_t (*)(int);
    if (auto fn = reinterpret_cast<trim_fn>(dlsym(RTLD_DEFAULT, "tm_trim"))) {
      size_t released = fn(2);
      return "tm_trim(2) released " + std::to_string(released) + " bytes";
    }
    return "none: this libtrimalloc does not export tm_trim";
  }
  if (who == "mimalloc") {
    using fn_t = void (*)(bool);
    if (auto fn = reinterpret_cast<fn_t>(dlsym(RTLD_DEFAULT, "mi_collect"))) {
      fn(true);
      return "mi_collect(true)";
    }
    return "none: mi_collect not found";
  }
  if (who == "tcmalloc") {
    using fn_t = void (*)();
    if (auto fn =
            reinterpret_cast<fn_t>(dlsym(RTLD_DEFAULT, "MallocExtension_ReleaseFreeMemory"))) {
      fn();
      return "MallocExtension_ReleaseFreeMemory()";
    }
    return "none: MallocExtension_ReleaseFreeMemory not found";
  }
  if (who == "jemalloc") {
    using fn_t = int (*)(const char*, void*, size_t*, void*, size_t);
    if (auto fn = reinterpret_cast<fn_t>(dlsym(RTLD_DEFAULT, "mallctl"))) {
      fn("thread.tcache.flush", nullptr, nullptr, nullptr, 0);
      int rc = fn("arena.4096.purge", nullptr, nullptr, nullptr, 0);  // 4096 = MALLCTL_ARENAS_ALL
      return rc == 0 ? "mallctl(thread.tcache.flush, arena.<all>.purge)"
                     : "mallctl(arena.<all>.purge) failed: " + std::to_string(rc);
    }
    return "none: mallctl not found";
  }
  if (who == "glibc") {
    int r = malloc_trim(0);
    return "malloc_trim(0) returned " + std::to_string(r);
  }
  return "none: unknown allocator";
}

inline void emit_event(const char* name) {
  printf("{\"event\":\"%s\",\"t\":%.6f,\"rss\":%zu}\n", name, now_s(), rss_bytes());
  fflush(stdout);
}

// Sleeps `seconds` without calling malloc, so an allocator's own background return is what shows.
inline void idle(double seconds) {
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

// Peak RSS of the process so far, in bytes (the kernel's high-water mark, VmHWM).
inline size_t peak_rss_bytes() {
  FILE* f = fopen("/proc/self/status", "re");
  if (!f) return 0;
  char line[256];
  size_t kb = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmHWM: %zu kB", &kb) == 1) break;
  fclose(f);
  return kb * 1024;
}

// Minimal JSON object writer for the {"result":{...}} line.
class Result {
 public:
  Result() { out_ = "{\"result\":{"; }
  Result& num(const char* key, double v) {
    char buf[64];
    snprintf(buf, sizeof buf, "%.6g", v);
    return raw(key, buf);
  }
  Result& u64(const char* key, uint64_t v) { return raw(key, std::to_string(v)); }
  Result& str(const char* key, const std::string& v) {
    std::string q = "\"";
    for (char c : v) {
      if (c == '"' || c == '\\') q += '\\';
      q += c;
    }
    return raw(key, q + "\"");
  }
  void print() {
    out_ += "}}\n";
    fputs(out_.c_str(), stdout);
    fflush(stdout);
  }

 private:
  Result& raw(const char* key, const std::string& v) {
    if (out_.back() != '{') out_ += ',';
    out_ += '"';
    out_ += key;
    out_ += "\":";
    out_ += v;
    return *this;
  }
  std::string out_;
};

// Under trimalloc, its RSS ledger (stats/, docs/stats.md) at moment `when`: the bytes of the
// kernel's RSS that trimalloc's own lines explain (`ours`), the program's anonymous memory the
// ledger leaves over (stacks, the benchmark's arrays: `not_ours_anon`), file pages, and the
// kernel's figure. Found with dlsym, so the same binary runs under every allocator.
inline void record_ledger(Result& r, const std::string& when) {
  if (allocator_name() != "trimalloc") return;
  using get_fn = int (*)(tm_stats*);
  auto get = reinterpret_cast<get_fn>(dlsym(RTLD_DEFAULT, "tm_stats_get"));
  tm_stats s;
  if (get == nullptr || get(&s) != 0) return;
  const std::string k = "ledger_" + when + "_";
  r.u64((k + "ours").c_str(), s.ledger.ours)
      .u64((k + "not_ours_anon").c_str(), s.ledger.not_ours_anon)
      .u64((k + "not_ours_file").c_str(), s.ledger.not_ours_file)
      .u64((k + "overcount").c_str(), s.ledger.overcount)
      .u64((k + "total").c_str(), s.ledger.total)
      .u64((k + "rss_kernel").c_str(), s.ledger.rss_kernel);
}

// The tail every RSS workload shares once it has freed its blocks: RSS right after the free, after
// `idle_s` seconds with no allocator call (automatic return), then after the explicit release.
inline void release_phases(Result& r, double idle_s) {
  emit_event("freed");
  r.u64("rss_after_free", rss_bytes());
  idle(idle_s);
  emit_event("idle");
  r.u64("rss_after_idle", rss_bytes());
  double t0 = now_s();
  std::string how = explicit_release();
  double t1 = now_s();
  emit_event("release");
  r.u64("rss_after_release", rss_bytes());
  record_ledger(r, "release");
  r.str("release_call", how);
  r.num("release_s", t1 - t0);
}

// An array for the benchmark's own bookkeeping (pointers, sizes), taken from mmap rather than
// malloc and touched at once, so it is part of the baseline RSS and never of the allocator's heap.
template <class T>
T* scratch_array(size_t n) {
  void* p =
      mmap(nullptr, n * sizeof(T), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  memset(p, 0, n * sizeof(T));
  return static_cast<T*>(p);
}

// Single-producer single-consumer ring of pointers; the consumer frees what the producer allocated.
// Each side keeps a private copy of the other side's index and rereads the shared one only when the
// ring looks full (or empty), so the ring costs little next to the malloc and free it carries.
class SpscRing {
 public:
  static constexpr size_t kCap = 1024;
  bool push(void* p) {  // producer only
    if (p_head_ - p_tail_seen_ == kCap) {
      p_tail_seen_ = tail_.load(std::memory_order_acquire);
      if (p_head_ - p_tail_seen_ == kCap) return false;
    }
    slots_[p_head_ % kCap] = p;
    head_.store(++p_head_, std::memory_order_release);
    return true;
  }
  void* pop() {  // consumer only
    if (c_tail_ == c_head_seen_) {
      c_head_seen_ = head_.load(std::memory_order_acquire);
      if (c_tail_ == c_head_seen_) return nullptr;
    }
    void* p = slots_[c_tail_ % kCap];
    tail_.store(++c_tail_, std::memory_order_release);
    return p;
  }

 private:
  alignas(64) std::atomic<size_t> head_{0};
  alignas(64) std::atomic<size_t> tail_{0};
  alignas(64) size_t p_head_ = 0, p_tail_seen_ = 0;
  alignas(64) size_t c_tail_ = 0, c_head_seen_ = 0;
  alignas(64) void* slots_[kCap];
};

// Spin briefly, then yield: the machine may have fewer free cores than threads.
inline void backoff(unsigned& spins) {
  if (++spins < 64) {
    __builtin_ia32_pause();
  } else {
    spins = 0;
    std::this_thread::yield();
  }
}

// The consumer of the producer/consumer workloads: frees whatever arrives until `done` is set,
// then drains the ring (every push happened before `done`).
inline void free_until_done(SpscRing& ring, const std::atomic<bool>& done) {
  unsigned spins = 0;
  for (;;) {
    if (void* p = ring.pop()) {
      free(p);
      continue;
    }
    if (done.load(std::memory_order_acquire)) {
      while (void* p = ring.pop()) free(p);
      return;
    }
    backoff(spins);
  }
}

// Options of the form `--name <non-negative number>` from argv[first] on; set(name, value) returns
// false for an unknown name. Anything malformed goes to usage(), which does not return.
template <typename Set>
void parse_numeric_options(int argc, char** argv, int first, void (*usage)(const char*),
                           Set&& set) {
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) usage(("missing value after " + a).c_str());
    const char* v = argv[++i];
    char* end = nullptr;
    double x = strtod(v, &end);
    if (*end || x < 0) usage(("bad value for " + a + ": " + v).c_str());
    if (!set(a, x)) usage(("unknown option " + a).c_str());
  }
}

// Deterministic, allocation-free PRNG (xorshift64*), so every allocator sees the same sequence.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  // Uniform in [lo, hi].
  size_t range(size_t lo, size_t hi) { return lo + size_t(next() % (hi - lo + 1)); }
};

}  // namespace tmbench
