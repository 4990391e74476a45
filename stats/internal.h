// Internals shared by the stats/ sources (not installed).
#pragma once
#include <cstdarg>
#include <cstddef>
#include <cstdio>

#include "trimalloc/stats.h"

namespace trimalloc::stats {

// A sink for text that never allocates: either a caller's FILE* or a caller's buffer, where it
// counts the bytes the full text needs even past `cap` (snprintf's contract).
class Writer {
 public:
  explicit Writer(FILE* f) noexcept : file_(f) {}
  Writer(char* buf, std::size_t cap) noexcept : buf_(buf), cap_(cap) {
    if (cap_) buf_[0] = '\0';
  }
  void printf(const char* fmt, ...) noexcept __attribute__((format(printf, 2, 3)));
  std::size_t length() const noexcept { return len_; }

 private:
  FILE* file_ = nullptr;
  char* buf_ = nullptr;
  std::size_t cap_ = 0;
  std::size_t len_ = 0;
};

void write_text(Writer& w, const tm_stats& s) noexcept;
void write_json(Writer& w, const tm_stats& s) noexcept;

// Kernel figures (bytes); false if neither smaps_rollup nor statm could be read.
struct KernelRss {
  std::size_t rss = 0, anon = 0, file = 0;
};
bool read_kernel_rss(KernelRss* out) noexcept;

// Profiler figures for tm_stats (profile.cpp).
std::size_t profiler_meta_bytes() noexcept;
std::size_t profiler_live_samples() noexcept;
// Estimated rounding (block size - requested) of the live small blocks, from the samples;
// known is false while sampling is off.
struct RoundingEstimate {
  bool known = false;
  std::size_t samples = 0;
  double bytes = 0, variance = 0;
};
RoundingEstimate profiler_small_rounding() noexcept;

// Reports a bad TRIMALLOC_* value once per variable on stderr.
void report_bad_env(const char* name, const char* value, const char* expected) noexcept;

}  // namespace trimalloc::stats
