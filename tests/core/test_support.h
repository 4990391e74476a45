// Shared helpers for trimalloc's GoogleTest suites: byte patterns, overlap checks, RSS, waiting
// for a child process with a deadline, and the API adaptor for the tm_* engine API.
//
// The typed suites (alloc_suite.h, thread_suite.h) are written against an "API" type A with static
// functions malloc/calloc/realloc/reallocarray/free/free_sized/free_aligned_sized/aligned_alloc/
// posix_memalign/memalign/valloc/pvalloc/usable, plus `free_re`, a regex for the function name
// that appears in the abort message of a bad free. core_tests instantiates them with TmApi (the
// engine, no malloc override; runs under ASan/TSan), override_tests with LibcApi (malloc itself).
#pragma once

#include <trimalloc/trimalloc.h>

#include <gtest/gtest.h>

#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace tmtest {

#if defined(TRIMALLOC_TEST_SANITIZED) && TRIMALLOC_TEST_SANITIZED
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif

inline std::uintptr_t addr(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p);
}

// Usable size the pools must report for a request of n <= TM_SMALL_MAX bytes.
inline std::size_t small_class(std::size_t n) {
  return n == 0 ? 16 : (n + 15) & ~std::size_t{15};
}

inline std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

// Byte i of the pattern for `seed`: differs between seeds in every byte position, so that two
// blocks that overlap, or a block handed out twice, show up as a mismatch.
inline unsigned char pattern_byte(std::uint64_t seed, std::size_t i) {
  return static_cast<unsigned char>((seed >> ((i & 7) * 8)) + (i >> 3) * 0x9d);
}

inline void fill(void* p, std::size_t n, std::uint64_t seed) {
  seed = mix(seed) | 1;
  auto* b = static_cast<unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i) b[i] = pattern_byte(seed, i);
}

// Index of the first byte that differs from the pattern, or -1 if all n bytes match.
inline long first_bad(const void* p, std::size_t n, std::uint64_t seed) {
  seed = mix(seed) | 1;
  auto* b = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i)
    if (b[i] != pattern_byte(seed, i)) return static_cast<long>(i);
  return -1;
}

inline bool all_zero(const void* p, std::size_t n) {
  auto* b = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i)
    if (b[i] != 0) return false;
  return true;
}

struct Span {
  void* p;
  std::size_t n;
};

// First pair of spans that overlap, as a message; empty if none do.
inline std::string find_overlap(std::vector<Span> spans) {
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return addr(a.p) < addr(b.p); });
  for (std::size_t i = 1; i < spans.size(); ++i) {
    if (addr(spans[i - 1].p) + spans[i - 1].n > addr(spans[i].p)) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "block %p (+%zu) overlaps block %p (+%zu)", spans[i - 1].p,
                    spans[i - 1].n, spans[i].p, spans[i].n);
      return buf;
    }
  }
  return {};
}

// Anonymous resident memory of this process in bytes: resident minus file-backed resident pages
// (/proc/self/statm fields 2 and 3), so that code pages faulted in for the first time do not count.
inline std::size_t rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long size = 0, resident = 0, shared = 0;
  int got = std::fscanf(f, "%lu %lu %lu", &size, &resident, &shared);
  std::fclose(f);
  if (got != 3 || shared > resident) return 0;
  return (resident - shared) * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

// VmSize: the address space the process has mapped (/proc/self/statm field 1), in bytes.
inline std::size_t vm_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  unsigned long size = 0;
  if (f) {
    if (std::fscanf(f, "%lu", &size) != 1) size = 0;
    std::fclose(f);
  }
  return size * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

// RLIMIT_AS = what the process has mapped now + headroom (for a forked child: the limit is per
// process).
inline bool limit_address_space(std::size_t headroom) {
  rlimit rl{};
  if (getrlimit(RLIMIT_AS, &rl) != 0) return false;
  rl.rlim_cur = vm_bytes() + headroom;
  return setrlimit(RLIMIT_AS, &rl) == 0;
}

// The process's mappings with their VmFlags (/proc/self/smaps): " rd wr mr mw me nr nh" and so
// on, each flag with a space before it. has_flag(m, "nh") asks for one.
struct Mapping {
  std::uintptr_t start = 0, end = 0;
  std::string flags;
  bool has_flag(const char* flag) const {
    return (flags + " ").find(std::string(" ") + flag + " ") != std::string::npos;
  }
};
inline std::vector<Mapping> mappings() {
  std::vector<Mapping> maps;
  std::FILE* f = std::fopen("/proc/self/smaps", "r");
  if (f == nullptr) return maps;
  char line[512];
  while (std::fgets(line, sizeof line, f)) {
    unsigned long start = 0, end = 0;
    // A mapping's first line starts "start-end "; its fields ("AnonHugePages:") do not parse.
    if (std::sscanf(line, "%lx-%lx ", &start, &end) == 2) {
      maps.push_back({start, end, ""});
    } else if (!maps.empty() && std::strncmp(line, "VmFlags:", 8) == 0) {
      maps.back().flags = line + 8;
      while (!maps.back().flags.empty() &&
             (maps.back().flags.back() == '\n' || maps.back().flags.back() == ' '))
        maps.back().flags.pop_back();
    }
  }
  std::fclose(f);
  return maps;
}
// The mapping that holds p (the kernel may have merged it with a neighbour of the same kind).
inline const Mapping* mapping_of(const std::vector<Mapping>& maps, const void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  for (const Mapping& m : maps)
    if (m.start <= a && a < m.end) return &m;
  return nullptr;
}

// VmData: the private writable mappings that RLIMIT_DATA limits, in bytes (0 if unknown).
inline std::size_t data_bytes() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return 0;
  char line[256];
  unsigned long kb = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "VmData: %lu kB", &kb) == 1) break;
  std::fclose(f);
  return std::size_t{kb} << 10;
}

// RLIMIT_DATA (ulimit -d) = the process's data now + headroom.
inline bool limit_data_segment(std::size_t headroom) {
  rlimit rl{};
  const std::size_t data = data_bytes();
  if (data == 0 || getrlimit(RLIMIT_DATA, &rl) != 0) return false;
  rl.rlim_cur = data + headroom;
  return setrlimit(RLIMIT_DATA, &rl) == 0;
}

// Waits for `pid` for at most `seconds`; a child still running then is killed (a deadlock in the
// allocator after fork must fail the test, not hang it). Returns the wait status, or -1 on timeout.
// A hung child is the one failure that leaves no trace of its own, so print every thread's
// stack (when gdb is installed) before it is killed: that is what a deadlock report needs.
inline void dump_stacks(pid_t pid) {
  if (std::system("command -v gdb >/dev/null 2>&1") != 0) return;
  char cmd[160];
  std::snprintf(
      cmd, sizeof cmd,
      "timeout -s KILL 60 gdb -p %d -batch -nx -ex 'thread apply all bt' 1>&2 2>/dev/null",
      static_cast<int>(pid));
  std::fprintf(stderr, "child %d timed out; its threads:\n", static_cast<int>(pid));
  if (std::system(cmd) != 0) std::fprintf(stderr, "(gdb could not attach)\n");
}

inline int wait_with_deadline(pid_t pid, double seconds) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  for (;;) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno != EINTR) return -2;
    if (std::chrono::steady_clock::now() > deadline) {
      dump_stacks(pid);
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

inline std::string describe_status(int status) {
  if (status == -1) return "child timed out (deadlock?) and was killed";
  if (status == -2) return "waitpid failed";
  char buf[80];
  if (WIFEXITED(status))
    std::snprintf(buf, sizeof buf, "child exited with status %d", WEXITSTATUS(status));
  else if (WIFSIGNALED(status))
    std::snprintf(buf, sizeof buf, "child killed by signal %d", WTERMSIG(status));
  else
    std::snprintf(buf, sizeof buf, "child wait status 0x%x", status);
  return buf;
}

// The engine's prefixed API. Calls go through volatile function pointers so that the compiler
// cannot fold or drop them (it knows the semantics of some allocation functions).
struct TmApi {
  static constexpr const char* free_re = "(tm_)?free";
  static constexpr const char* free_sized_re = "(tm_)?free_sized";

  template <class F>
  static F* opaque(F* f) {
    F* volatile v = f;
    return v;
  }
  static void* malloc(std::size_t n) { return opaque(&tm_malloc)(n); }
  static void* calloc(std::size_t c, std::size_t n) { return opaque(&tm_calloc)(c, n); }
  static void* realloc(void* p, std::size_t n) { return opaque(&tm_realloc)(p, n); }
  static void* reallocarray(void* p, std::size_t c, std::size_t n) {
    return opaque(&tm_reallocarray)(p, c, n);
  }
  static void free(void* p) { opaque (&tm_free)(p); }
  static void free_sized(void* p, std::size_t n) { opaque (&tm_free_sized)(p, n); }
  static void free_aligned_sized(void* p, std::size_t a, std::size_t n) {
    opaque (&tm_free_aligned_sized)(p, a, n);
  }
  static void* aligned_alloc(std::size_t a, std::size_t n) {
    return opaque(&tm_aligned_alloc)(a, n);
  }
  static int posix_memalign(void** out, std::size_t a, std::size_t n) {
    return opaque(&tm_posix_memalign)(out, a, n);
  }
  static void* memalign(std::size_t a, std::size_t n) { return opaque(&tm_memalign)(a, n); }
  static void* valloc(std::size_t n) { return opaque(&tm_valloc)(n); }
  static void* pvalloc(std::size_t n) { return opaque(&tm_pvalloc)(n); }
  static std::size_t usable(const void* p) { return opaque(&tm_usable_size)(p); }
  // A block of a heap that is not trimalloc's (glibc's, or the sanitizer's, in the engine build).
  static void* foreign_malloc(std::size_t n) { return opaque(&std::malloc)(n); }
  static void foreign_free(void* p) { opaque (&std::free)(p); }
};

}  // namespace tmtest
