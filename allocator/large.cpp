#include "large.h"

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "arena_map.h"
#include "config.h"
#include "decay.h"
#include "fatal.h"
#include "large_registry.h"
#include "os.h"
#include "quarantine.h"
#include "sampling.h"
#include "trim.h"

// The renamed jemalloc API (same ABI as <jemalloc/jemalloc.h>, which cannot be included here:
// it declares malloc() and friends under their plain names).
extern "C" {
void* tm_je_mallocx(std::size_t size, int flags);
void* tm_je_rallocx(void* p, std::size_t size, int flags);
std::size_t tm_je_sallocx(const void* p, int flags);
void tm_je_dallocx(void* p, int flags);
void tm_je_sdallocx(void* p, std::size_t size, int flags);
int tm_je_mallctl(const char* name, void* oldp, std::size_t* oldlenp, void* newp,
                  std::size_t newlen);

// jemalloc reads its compiled-in options from this weak symbol; ours overrides it.
// No background threads: trimalloc runs its own decay thread and must stay fork-safe.
extern const char* tm_je_malloc_conf;
// narenas:1: all our blocks come from the dedicated arena, so jemalloc must not create an auto
// arena per CPU for each new thread (an arena it fails to create under memory exhaustion would
// crash the thread's first allocation: the tcache would be associated with a null arena).
const char* tm_je_malloc_conf =
    "background_thread:false,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:1";

struct extent_hooks_s;
typedef struct extent_hooks_s extent_hooks_t;
struct extent_hooks_s {
  void* (*alloc)(extent_hooks_t*, void*, std::size_t, std::size_t, bool*, bool*, unsigned);
  bool (*dalloc)(extent_hooks_t*, void*, std::size_t, bool, unsigned);
  void (*destroy)(extent_hooks_t*, void*, std::size_t, bool, unsigned);
  bool (*commit)(extent_hooks_t*, void*, std::size_t, std::size_t, std::size_t, unsigned);
  bool (*decommit)(extent_hooks_t*, void*, std::size_t, std::size_t, std::size_t, unsigned);
  bool (*purge_lazy)(extent_hooks_t*, void*, std::size_t, std::size_t, std::size_t, unsigned);
  bool (*purge_forced)(extent_hooks_t*, void*, std::size_t, std::size_t, std::size_t, unsigned);
  bool (*split)(extent_hooks_t*, void*, std::size_t, std::size_t, std::size_t, bool, unsigned);
  bool (*merge)(extent_hooks_t*, void*, std::size_t, void*, std::size_t, bool, unsigned);
};
}

namespace trimalloc {
namespace {
constexpr int kZero = 0x40;  // MALLOCX_ZERO
constexpr int lg_align(std::size_t a) {
  return __builtin_ctzll(a);
}  // MALLOCX_LG_ALIGN
constexpr int arena_flag(unsigned a) {
  return static_cast<int>((a + 1) << 20);
}  // MALLOCX_ARENA

std::atomic<int> g_state{0};  // 0 not ready (or failed: retried), 1 initialising, 2 ready
int g_arena_flags = 0;
unsigned g_arena_index = 0;
std::atomic<std::size_t> g_mapped{0};

// --- extent hooks: jemalloc's address space for trimalloc's arena ---
void* hook_alloc(extent_hooks_t*, void* new_addr, std::size_t size, std::size_t alignment,
                 bool* zero, bool* commit, unsigned) {
  if (new_addr != nullptr) return nullptr;  // growing in place at a fixed address: decline
  std::size_t span = (size + kSlotSize - 1) & ~(kSlotSize - 1);
  if (span < size) return nullptr;
  void* p = os::reserve_aligned(span, alignment > kSlotSize ? alignment : kSlotSize);
  if (p == nullptr) return nullptr;
  g_arena_map.set(SlotKind::kLarge, p, span, true);
  g_mapped.fetch_add(span, std::memory_order_relaxed);
  decay_note_heap_growth();  // only sets a flag: we are inside jemalloc, holding its locks
  *zero = true;
  *commit = true;
  return p;
}
// Regions are rounded up to whole MiB and may have been split or merged since, so an extent is
// never a whole mapping we could unmap: decline, and jemalloc keeps it as retained address
// space (its default on 64-bit Linux anyway). Physical memory goes back through purge_forced.
bool hook_dalloc(extent_hooks_t*, void*, std::size_t, bool, unsigned) {
  return true;
}
void hook_destroy(extent_hooks_t*, void* addr, std::size_t size, bool, unsigned) {
  os::purge(addr, size);
}
bool hook_purge_forced(extent_hooks_t*, void* addr, std::size_t, std::size_t offset,
                       std::size_t length, unsigned) {
  return !os::purge(static_cast<char*>(addr) + offset, length);
}
bool hook_split(extent_hooks_t*, void*, std::size_t, std::size_t, std::size_t, bool, unsigned) {
  return false;
}
bool hook_merge(extent_hooks_t*, void*, std::size_t, void*, std::size_t, bool, unsigned) {
  return false;
}
extent_hooks_t g_hooks = {hook_alloc, hook_dalloc,       hook_destroy, nullptr,   nullptr,
                          nullptr,    hook_purge_forced, hook_split,   hook_merge};

inline bool ready() noexcept {
  return g_state.load(std::memory_order_acquire) == 2 || large_init();
}
}  // namespace

bool large_init() noexcept {
  if (g_state.load(std::memory_order_acquire) == 2) return true;
  int expected = 0;
  if (!g_state.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
    while ((expected = g_state.load(std::memory_order_acquire)) == 1) sched_yield();
    return expected == 2;
  }
  // Every failure here is lack of memory (the map's or jemalloc's arena's): leave the state at
  // 0 so that a later call tries again, rather than fall back to an arena trimalloc cannot
  // vouch for.
  unsigned index = 0;
  std::size_t len = sizeof(index);
  extent_hooks_t* hooks = &g_hooks;
  if (!g_arena_map.init() ||
      tm_je_mallctl("arenas.create", &index, &len, &hooks, sizeof(hooks)) != 0) {
    g_state.store(0, std::memory_order_release);
    errno = ENOMEM;
    return false;
  }
  g_arena_index = index;
  g_arena_flags = arena_flag(index);
  g_state.store(2, std::memory_order_release);
  return true;
}

void* large_alloc(std::size_t size, std::size_t alignment, bool zero) noexcept {
  // jemalloc's own limit is PTRDIFF_MAX; check first so errno is always ours to set.
  if (size > static_cast<std::size_t>(PTRDIFF_MAX) || !ready()) {
    errno = ENOMEM;
    return nullptr;
  }
  if (__builtin_expect(g_maintenance_requested.load(std::memory_order_relaxed), 0) &&
      g_on_maintenance)
    g_on_maintenance();
  int flags = g_arena_flags | (zero ? kZero : 0) | (alignment > 16 ? lg_align(alignment) : 0);
  void* p = tm_je_mallocx(size, flags);
  if (p == nullptr) {
    errno = ENOMEM;
    return nullptr;
  }
  if constexpr (kSecure) {
    if (!registry_add(p)) {
      tm_je_dallocx(p, 0);
      errno = ENOMEM;
      return nullptr;
    }
  }
  sample_large(p, size);
  return p;
}

void* large_realloc(void* p, std::size_t size) noexcept {
  if (size > static_cast<std::size_t>(PTRDIFF_MAX)) {
    errno = ENOMEM;
    return nullptr;
  }
  if constexpr (kSecure) {
    // Hardened: allocate, copy, free, so that a registry without room fails the call cleanly
    // (rallocx could move the block first). The old block goes through quarantine.
    std::size_t old = tm_je_sallocx(p, 0);
    void* q = large_alloc(size, 0, false);
    if (q == nullptr) return nullptr;
    std::memcpy(q, p, old < size ? old : size);
    quarantine_free(p, "realloc");
    return q;
  }
  sample_forget(p);
  void* q = tm_je_rallocx(p, size, g_arena_flags);
  if (q == nullptr) {
    errno = ENOMEM;
    return nullptr;
  }
  // The moved or grown block is a new allocation for the sampler (its site: realloc's caller);
  // without this, memory grown by realloc (a Python list, a vector-like buffer) is never seen.
  sample_large(q, size);
  return q;
}

void large_free(void* p) noexcept {
  // A sample must go with its block, or snapshots would count freed blocks as live until the
  // address happens to be sampled again. No sample live: one relaxed load.
  sample_forget(p);
  tm_je_dallocx(p, 0);
}

void large_free_sized(void* p, std::size_t size, std::size_t alignment) noexcept {
  sample_forget(p);
  // Size 0 was allocated as 1 (jemalloc has no size-0 class; see alloc_aligned): free it as
  // such, or jemalloc would file the block under the wrong size class.
  tm_je_sdallocx(p, size == 0 ? 1 : size, alignment > 16 ? lg_align(alignment) : 0);
}

std::size_t large_usable_size(const void* p) noexcept {
  return tm_je_sallocx(p, 0);
}

bool large_owns(const void* p) noexcept {
  // Every large block lives in memory the extent hooks mapped (before init there is none).
  return g_arena_map.contains(SlotKind::kLarge, p);
}

int large_mallctl(const char* name, void* oldp, std::size_t* oldlenp, void* newp,
                  std::size_t newlen) noexcept {
  if (!ready()) return EAGAIN;
  return tm_je_mallctl(name, oldp, oldlenp, newp, newlen);
}

unsigned large_arena_index() noexcept {
  return g_arena_index;
}
std::size_t large_mapped_bytes() noexcept {
  return g_mapped.load(std::memory_order_relaxed);
}

std::size_t large_purge() noexcept {
  if (!ready()) return 0;
  auto resident = [] {
    std::uint64_t epoch = 1;
    std::size_t len = sizeof(epoch);
    tm_je_mallctl("epoch", &epoch, &len, &epoch, len);
    char name[64];
    std::snprintf(name, sizeof name, "stats.arenas.%u.resident", g_arena_index);
    std::size_t value = 0;
    len = sizeof(value);
    if (tm_je_mallctl(name, &value, &len, nullptr, 0) != 0) return std::size_t{0};
    return value;
  };
  std::size_t before = resident();
  tm_je_mallctl("thread.tcache.flush", nullptr, nullptr, nullptr, 0);
  char name[64];
  std::snprintf(name, sizeof name, "arena.%u.purge", g_arena_index);
  tm_je_mallctl(name, nullptr, nullptr, nullptr, 0);
  std::size_t after = resident();
  return before > after ? before - after : 0;
}

}  // namespace trimalloc
