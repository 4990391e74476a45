// Explicit release calls: tm_trim (levels, see trimalloc.h), glibc's malloc_trim and mallopt.
#include <malloc.h>
#include <pthread.h>

#include <atomic>
#include <cerrno>

#include "alloc.h"
#include "config.h"
#include "decay.h"
#include "heap.h"
#include "large.h"
#include "large_registry.h"
#include "options.h"
#include "quarantine.h"
#include "trim.h"
#include "trimalloc/trimalloc.h"
#include "visit.h"

using namespace trimalloc;

namespace trimalloc {
namespace {
std::atomic<std::size_t> g_trim_calls{0};
std::atomic<std::size_t> g_trim_released{0};
}  // namespace
std::size_t trim_calls() noexcept {
  return g_trim_calls.load(std::memory_order_relaxed);
}
std::size_t trim_released_bytes() noexcept {
  return g_trim_released.load(std::memory_order_relaxed) + decay_released_bytes();
}
}  // namespace trimalloc

extern "C" size_t tm_trim(int level) {
  if (level < TM_TRIM_FAST || level > TM_TRIM_ALL) {
    errno = EINVAL;
    return 0;
  }
  if constexpr (kSecure) quarantine_flush();  // held blocks are free memory too
#if TRIMALLOC_VALGRIND
  vg_flush();        // blocks whose reuse is delayed are free memory too
  vg_quiet_begin();  // trim walks free lists (valgrind.cpp)
#endif
  size_t released = trim_small(static_cast<TrimLevel>(level));
  if (level != TM_TRIM_FAST) released += large_purge();
#if TRIMALLOC_VALGRIND
  vg_quiet_end();
#endif
  g_trim_calls.fetch_add(1, std::memory_order_relaxed);
  g_trim_released.fetch_add(released, std::memory_order_relaxed);
  return released;
}

#ifdef TRIMALLOC_OVERRIDE_MALLOC
// glibc: release free memory to the OS; 1 if any was released. `pad` (bytes to keep at the
// top of the main heap) has no equivalent here and is accepted as glibc accepts it.
extern "C" __attribute__((visibility("default"))) int malloc_trim(size_t) noexcept {
  return tm_trim(TM_TRIM_ALL) > 0 ? 1 : 0;
}

// glibc's options: M_TRIM_THRESHOLD maps to the cache cap (free memory kept before it is
// returned); the others tune glibc's own arenas/mmap policy, have no meaning here and are
// accepted harmlessly, as glibc does for options it does not know. 1 = success.
extern "C" __attribute__((visibility("default"))) int mallopt(int param, int value) noexcept {
  if (param == M_TRIM_THRESHOLD) {
    if (value < 0) return 0;
    tm_option_set("max_cached", value);
  }
  return 1;
}
// glibc's alias (see __libc_malloc in override_malloc.cpp).
extern "C" __attribute__((visibility("default"), alias("mallopt"))) int __libc_mallopt(
    int param, int value) noexcept;
#endif
