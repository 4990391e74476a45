// Run-time options: TRIMALLOC_* environment variables, read once at start-up, and
// tm_option_set()/tm_option_get() at run time. A malformed value is reported on stderr once,
// naming the variable and the accepted range, and the default is kept: never silently ignored.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "config.h"

namespace trimalloc {

struct Options {
  // Free memory unused this long (ms) goes back to the OS by itself; 0 = at once; -1 = never.
  std::atomic<long long> decay_ms{1000};
  // Cap on free-but-resident memory kept for reuse (bytes); beyond it, purge at once down to
  // half of it.
  std::atomic<long long> max_cached{64ll << 20};
  // Allow the background decay thread (otherwise decay runs only inside allocator calls).
  std::atomic<long long> background_thread{1};
};

extern TM_INTERNAL Options g_options;

// Reads the environment (idempotent, allocation-free). Called from the library constructor.
void options_init() noexcept;

// Parses "123", "64K", "1M", "2G" (powers of 1024); false on anything else or overflow.
bool parse_size(const char* text, long long* out) noexcept;
bool parse_integer(const char* text, long long* out) noexcept;

}  // namespace trimalloc
