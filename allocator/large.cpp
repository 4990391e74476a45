// Large blocks (> 512 B): two dedicated arenas of the embedded jemalloc, whose extent hooks own
// the address space (see large.h for the embedding).
//
// Address space goes back to the kernel, region by region. The alloc hook maps *regions*
// (1 MiB-aligned, whole MiB, marked in the arena map so free() can route) and hands jemalloc
// pieces of them; a table of regions (below) records, for each, which bytes jemalloc does not
// hold. When jemalloc gives back the last piece of a region, the region is wholly free, so no
// live block can be in it: its arena-map bits are cleared and it is unmapped. jemalloc gives
// pieces back through the dalloc hook when it purges them: after dirty_decay_ms (its decay,
// run by our decay thread), at once for free extents of 8 MiB or more (the arena's oversize
// threshold, set in large_init, raised for a while when big blocks come back: see "big blocks
// that come back") and for every free extent of the growth arena (below), and for all of them
// on arena.<i>.purge (tm_trim, and a mapping that failed: see below).
//
// Two arenas of ours share the hooks (and jemalloc's own arena 0: see large_init). Blocks that
// realloc moves or grows to 1 MiB or more live in the *growth arena*, which purges a freed
// extent at once. A buffer grown by realloc (a Python list's pointer array, a bytearray, a
// string builder) leaves an old copy behind at each step, and each copy is smaller than every
// later request, so nothing reuses it: with jemalloc's 1 s decay, growing a buffer by 1/8 at a
// time to 69 MiB left 451 MiB over the start. Purging each copy costs an madvise next to a
// memcpy of at least 1 MiB, and the new, bigger block faults its pages in whatever happens to
// the old one. Blocks malloc'ed at their size stay in the main arena, where a program that frees
// and allocates a buffer of the same size reuses the pages. Each growth-arena block also gets a
// region of its own, twice its size (alloc_region), so that most steps grow it in place: 5 copies
// from 1 to 64 MiB instead of 20.
//
// What jemalloc 5.3 does, and why the hooks are shaped this way (src/extent.c, src/pac.c):
// - With custom hooks the dalloc hook is called whatever `retain` says (ehooks_dalloc_will_fail
//   only consults opt_retain for the default hooks); when it refuses, jemalloc purges the
//   extent and files it as "retained", from where it is only ever reused, never offered again.
// - retain:true (the default) grows the arena by mapping ever larger regions
//   (extent_grow_retained) and files the unused rest as retained at once. A region is then
//   never all dirty at the same time, so it is never offered whole and nothing is unmapped:
//   the previous design (dalloc always refusing) kept all address space for good.
// - retain:false (set below) asks the alloc hook for exactly what each extent needs (a slab of
//   a few pages, or a block's whole pages). That alone, with one mapping per request
//   as the previous hooks did, cost a whole MiB per slab: 7.0 GiB of address space for 20000
//   blocks of 1000 B, 2000 of 20000 B and 64 of 1 MiB (121 MiB asked), against 136 MiB with
//   retain:true (docs/reliability.md). So the hooks do that sub-allocation themselves: a
//   region grows with the heap (1 to 16 MiB), and its remainder is a hole for later requests.
// - Refusing a piece that is not a whole region (the first idea) does not work either: the
//   refused piece becomes retained, and a region partly retained is never again offered
//   whole, since jemalloc only merges extents in the same state. So the dalloc hook *accepts*
//   every piece: it purges it and keeps it as a hole (zero-filled, so the alloc hook reports
//   *zero = true), and unmaps the region when the last piece comes back. It refuses only when
//   the piece is unknown or no hole entry is left (the piece is then jemalloc's retained).
// - The merge hook refuses to merge extents of two regions (an extent spanning two could never
//   be a whole region's last piece); split is allowed. Growth in place (alloc with new_addr)
//   is served only from a hole in the same region.
// - Slabs and small blocks (<= 64 KiB, often long-lived or held in some thread's tcache) get
//   regions of their own: mixed into big blocks' regions, a few of them would keep every
//   region mapped after the big blocks were freed.
// - jemalloc purges an arena in one thread at a time and a second caller returns at once,
//   before anything is unmapped; trimalloc's own purges take turns on a lock so that a purge
//   that returns has finished. jemalloc's own decay, run on allocation ticks in any thread,
//   does not take that lock, so a purge that must not be skipped checks what is left dirty
//   and goes again. A small arena or a large block that cannot be mapped purges the arena
//   (unmapping free regions) and tries once more (g_on_out_of_memory), which is what
//   lets a program under a low RLIMIT_AS go on after freeing large blocks. The same retry
//   unmaps the empty small arenas kept for reuse, so freed small blocks count too.
// Failure paths are unchanged: when mmap fails the alloc hook returns NULL, jemalloc returns
// NULL and the caller gets ENOMEM. Hooks never call malloc: the region table is mapped once.
#include "large.h"

#include <pthread.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <utility>

#include "arena.h"
#include "arena_map.h"
#include "config.h"
#include "decay.h"
#include "fatal.h"
#include "large_registry.h"
#include "lock.h"
#include "os.h"
#include "quarantine.h"
#include "sampling.h"
#include "trim.h"

// The renamed jemalloc API (same ABI as <jemalloc/jemalloc.h>, which cannot be included here:
// it declares malloc() and friends under their plain names). noexcept, as jemalloc's header
// says (JEMALLOC_NOTHROW): C code never throws, and a noexcept caller can then tail-call them.
extern "C" {
void* tm_je_malloc(std::size_t size) noexcept;
void tm_je_free(void* p) noexcept;
void* tm_je_mallocx(std::size_t size, int flags) noexcept;
void* tm_je_rallocx(void* p, std::size_t size, int flags) noexcept;
std::size_t tm_je_xallocx(void* p, std::size_t size, std::size_t extra, int flags) noexcept;
std::size_t tm_je_sallocx(const void* p, int flags) noexcept;
void tm_je_dallocx(void* p, int flags) noexcept;
void tm_je_sdallocx(void* p, std::size_t size, int flags) noexcept;
int tm_je_mallctl(const char* name, void* oldp, std::size_t* oldlenp, void* newp,
                  std::size_t newlen) noexcept;

// jemalloc reads its compiled-in options from this weak symbol; ours overrides it.
// No background threads: trimalloc runs its own decay thread and must stay fork-safe.
extern const char* tm_je_malloc_conf;
// narenas:1: all our blocks come from the dedicated arenas, so jemalloc must not create an auto
// arena per CPU for each new thread (an arena it fails to create under memory exhaustion would
// crash the thread's first allocation: the tcache would be associated with a null arena).
// retain:false: see the top of this file.
// oversize_threshold:0: no separate "huge" arena (jemalloc creates it with the default extent
// hooks); every block, whatever its size, comes from one of ours. Its other meaning, "purge a
// free extent this big at once", is set per arena in large_init.
// thp:never: jemalloc's own metadata (its base blocks, the radix tree's leaves), which it maps
// itself, opts out of transparent huge pages as every trimalloc mapping does (os.cpp,
// no_huge_pages): with the kernel set to "always" they held 6 MiB of huge pages at start.
const char* tm_je_malloc_conf =
    "background_thread:false,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:1,retain:false,"
    "oversize_threshold:0,thp:never";
// jemalloc also reads MALLOC_CONF and /etc/malloc.conf, after the string above, so settings a
// user made for a jemalloc-linked program would reconfigure the embedded copy: retain:true kept
// the address space of every freed region mapped, narenas and percpu_arena make the automatic
// arenas the comment above rules out, hpa gives arena 0 (which had jemalloc's default hooks
// until large_init) mappings outside the arena map. jemalloc reads this string last of all, so
// the settings trimalloc's design depends on are its own whatever the environment says; any
// other setting there (tcache sizes, say) still applies.
extern const char* tm_je_malloc_conf_2_conf_harder;
const char* tm_je_malloc_conf_2_conf_harder =
    "background_thread:false,muzzy_decay_ms:0,narenas:1,retain:false,oversize_threshold:0,"
    "percpu_arena:disabled,hpa:false";

// No cache-oblivious padding: jemalloc 5.3 adds a page to every block of 16 KiB or more and
// starts the block at a random cache line of that page, so that big arrays do not all begin on
// the same cache sets. The block then spans one page more than its size: a fully written 16 KiB
// block had 20 KiB resident (1.26x the bytes, 1.13x at 32 KiB, 1.07x at 64 KiB; glibc 1.00),
// and a block of exactly 1 MiB needed two MiB-regions' worth of address space near a limit.
// glibc, mimalloc and tcmalloc do not pad either; Redis builds its jemalloc without it for the
// same reason. jemalloc reads this once, when it initialises (sz_boot: the pad, and whether
// blocks are offset); the archive's definition is weak (embed_jemalloc.cmake), so this one,
// with its value from the start of the process, is the one jemalloc sees.
extern bool je_opt_cache_oblivious;
bool je_opt_cache_oblivious = false;

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
constexpr int kZero = 0x40;            // MALLOCX_ZERO
constexpr int kNoThreadCache = 0x100;  // MALLOCX_TCACHE_NONE
constexpr int lg_align(std::size_t a) {
  return __builtin_ctzll(a);
}  // MALLOCX_LG_ALIGN
constexpr int arena_flag(unsigned a) {
  return static_cast<int>((a + 1) << 20);
}  // MALLOCX_ARENA

std::atomic<int> g_state{0};  // 0 not ready (or failed: retried), 1 initialising, 2 ready

// Each thread that allocates a large block is bound to trimalloc's main arena (mallctl
// "thread.arena"), so plain tm_je_malloc/tm_je_free - jemalloc's fast paths, about a third of
// mallocx/dallocx's instructions - allocate there: the arena a thread is bound to is where its
// tcache refills and where its requests above the tcache go. mallocx with the arena flag stays
// for aligned and zeroed requests, and for a thread whose binding failed. The flag is
// tl_thread.bound_to_large_arena, in the engine's thread-local block beside the sampling
// countdown, so a large allocation loads the TLS offset once for both.
int g_arena_flags = 0;
unsigned g_arena_index = 0;
// The growth arena (top of this file): realloc's target for sizes of kGrowthMin or more. It is
// made by the first realloc that needs it (make_growth_arena), not at start: its jemalloc
// metadata block (2 MiB of address space, counted against a data-segment limit) would be
// wasted in the many programs that never grow a block that far. Until then its index is
// kNoArena, which no arena has.
constexpr unsigned kNoArena = UINT_MAX;
std::atomic<int> g_growth_state{0};  // 0 not made, 1 being made, 2 made
std::atomic<int> g_growth_flags{0};
std::atomic<unsigned> g_growth_index{kNoArena};
constexpr std::size_t kGrowthMin = std::size_t{1} << 20;
// --- arena 0's spare: jemalloc's own memory, there even at a memory limit ---
//
// jemalloc makes a thread's cache at the thread's first call into it that is not a free (a
// free sets up a minimal state, without one) and takes the cache's arrays, 32 KiB, from arena
// 0. If that allocation fails, jemalloc carries on with the cache half made, reports nothing,
// and crashes the thread at its next cache flush or arena change (tcache_stats_merge,
// tcache_bin_flush_*). Threads that started while a memory limit was reached crashed so
// (docs/reliability.md, "A thread's first large block at the limit"). Having memory to give is
// not enough: jemalloc must also register the extent in its radix tree, which needs a leaf
// (4 MiB, from its own metadata, mapped with its default mmap, never through our hooks) for
// every GiB of address space it has never held an extent in. At a limit the kernel refuses that
// mapping as well, and a fresh mapping at a limit lands wherever the kernel finds room, often
// in a GiB new to jemalloc.
//
// So arena 0 takes its memory from a spare region first: a MiB-aligned region (closed but for
// its first kSpareOpen bytes), made while memory is available, at start and at a thread start
// once less than kSpareLow of it is left, and registered with jemalloc at once ("anchored":
// make_spare asks arena 0 for a block that only the spare can serve), so that jemalloc has the
// leaf for its GiB before anything depends on it. A spare that has been replaced is an
// ordinary region: its pieces come back as holes and it is unmapped once empty. The current
// spare is never unmapped. It costs address space and data-segment room, never RSS unless used.
// Room for eight threads' caches (32 KiB of arrays each) at the limit at any time: the
// program's threads, and trimalloc's decay thread, which starts when the heap grows.
constexpr std::size_t kCacheArrays = std::size_t{32} << 10;
constexpr std::size_t kSpareOpen = 16 * kCacheArrays;
constexpr std::size_t kSpareLow = 8 * kCacheArrays;
std::uintptr_t g_spare = 0;  // base of the current spare region (0: none), under g_regions_lock
std::atomic<bool> g_spare_wanted{true};
// A large block of the size class a cache's arrays take (28 KiB, jemalloc's defaults): freed,
// the piece it leaves fits one.
constexpr std::size_t kAnchorSize = std::size_t{28} << 10;

// A free extent of the main arena this big is purged at once: jemalloc's own default for its
// "huge" arena, which trimalloc does not use. It is the starting value: see "Big blocks that
// come back" below for when it rises.
constexpr std::size_t kPurgeAtOnce = std::size_t{8} << 20;
// purge_until_clean: purges this far apart, for another thread's decay to finish, for at most
// this long (on paths that either return ENOMEM otherwise or were asked to give everything
// back; other threads that keep freeing large blocks could keep it busy for good).
constexpr long kReleasePauseNs = 100 * 1000;
constexpr long kReleaseBudgetNs = 10 * 1000 * 1000;
std::atomic<std::size_t> g_mapped{0};
// What the hooks had mapped once both arenas existed: jemalloc's metadata for them (a 2 MiB
// base block each), which no purge can give back.
// Atomic: the decay thread's start check (heap_is_big) may read it while large_init runs.
std::atomic<std::size_t> g_mapped_at_init{0};

// --- regions: the mappings the extent hooks made, and what of each jemalloc holds ---
//
// A region is one mmap (1 MiB-aligned, whole MiB). jemalloc holds some pieces of it as extents;
// the rest is free: holes the alloc hook can hand out again, plus "lost" bytes (a remainder
// for which no hole entry was left) that only count. When jemalloc gives the last piece back,
// free == span: no live block can be in the region, so its arena-map bits are cleared and it
// is unmapped. The table lives in memory mapped once (the hooks run inside jemalloc, under its
// locks, and must never call malloc) and everything below runs under g_regions_lock, a leaf
// lock: nothing is called under it but mmap/munmap/madvise and the arena map.
struct Region {
  std::uintptr_t base;
  std::size_t span;
  std::size_t free;     // bytes not held by jemalloc (holes + lost)
  std::uint32_t holes;  // first hole, address order; kNoHole if none
  bool small;           // serves extents of at most kSmallExtent bytes only
  bool growth;          // holds one block of the growth arena and room for it to grow into
  bool spare;           // arena 0's current spare: its holes are arena 0's, it stays mapped
};
struct Hole {
  std::uintptr_t start, end;
  std::uint32_t next;
};
constexpr std::uint32_t kNoHole = UINT32_MAX;
// 65536 regions of at least 1 MiB, 65536 holes: 3.5 MiB of address space reserved once,
// read-only, and made writable as the tables grow, kTableStep at a time (a few KiB for
// ordinary heaps): written or not, a writable private mapping counts in full against a
// data-segment limit (RLIMIT_DATA) and the commit limit of strict overcommit.
constexpr std::size_t kMaxRegions = std::size_t{1} << 16;
constexpr std::size_t kMaxHoles = std::size_t{1} << 16;
constexpr std::size_t kTableStep = std::size_t{16} << 10;
// Regions grow with the heap: an eighth of what is mapped, at least 1 MiB, at most 4 MiB for
// small extents and 16 MiB for big ones. The remainder of a region is a hole for the next
// requests, so slabs share regions, and sizes just over a MiB multiple (jemalloc's 1.25 MiB
// class) are packed instead of each wasting most of a MiB. Bounded, because one live
// block keeps its whole region mapped; growing, so that a big heap has fewer regions to scan.
constexpr std::size_t kMinRegion = std::size_t{1} << 20;
constexpr std::size_t kMaxSmallRegion = std::size_t{4} << 20;
constexpr std::size_t kMaxBigRegion = std::size_t{16} << 20;
// Slabs and blocks up to jemalloc's thread-cache limit (32 KiB) are often long-lived or held in
// some thread's cache: mixed into the tails of regions holding big blocks, a handful of them
// would keep every such region mapped after the big blocks are gone. So extents up to this size
// are carved from regions of their own, and big ones from the others.
constexpr std::size_t kSmallExtent = std::size_t{64} << 10;

SpinLock g_regions_lock;
Region* g_regions = nullptr;  // sorted by base
std::size_t g_region_count = 0;
Hole* g_holes = nullptr;
std::uint32_t g_hole_bump = 0;             // entries ever used
std::uint32_t g_hole_free_list = kNoHole;  // entries given back
// Bytes at the start of each table that are writable. Both tables grow at their end only: the
// regions are kept sorted within [0, g_region_count), holes are reused before the bump grows.
std::size_t g_regions_open = 0;
std::size_t g_holes_open = 0;
static_assert(kMaxRegions * sizeof(Region) % kTableStep == 0 &&
                  kMaxHoles * sizeof(Hole) % kTableStep == 0,
              "each table is whole steps, so the holes table starts on a step");

bool tables_ready() noexcept {
  if (g_regions) return true;
  constexpr std::size_t kBytes = kMaxRegions * sizeof(Region) + kMaxHoles * sizeof(Hole);
  void* p = os::reserve_sparse(kBytes, kTableStep);
  if (!p) return false;
  g_holes = reinterpret_cast<Hole*>(static_cast<char*>(p) + kMaxRegions * sizeof(Region));
  g_regions = static_cast<Region*>(p);
  return true;
}

// Makes the first `entries` entries of a table writable; false if the kernel refused.
template <class Entry>
bool open_entries(Entry* table, std::size_t& open, std::size_t entries) noexcept {
  const std::size_t need = entries * sizeof(Entry);
  if (need <= open) return true;
  const std::size_t to = (need + kTableStep - 1) & ~(kTableStep - 1);
  if (!os::make_writable(reinterpret_cast<char*>(table) + open, to - open)) return false;
  open = to;
  return true;
}

std::uint32_t hole_new(std::uintptr_t start, std::uintptr_t end, std::uint32_t next) noexcept {
  std::uint32_t i = g_hole_free_list;
  if (i != kNoHole)
    g_hole_free_list = g_holes[i].next;
  else if (g_hole_bump < kMaxHoles && open_entries(g_holes, g_holes_open, g_hole_bump + 1))
    i = g_hole_bump++;
  else
    return kNoHole;
  g_holes[i] = {start, end, next};
  return i;
}
void hole_delete(std::uint32_t i) noexcept {
  g_holes[i].next = g_hole_free_list;
  g_hole_free_list = i;
}

// Index of the region containing address a, or -1.
long region_of(std::uintptr_t a) noexcept {
  std::size_t lo = 0, hi = g_region_count;  // first region with base > a
  while (lo < hi) {
    std::size_t mid = (lo + hi) / 2;
    if (g_regions[mid].base <= a)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo == 0) return -1;
  const Region& r = g_regions[lo - 1];
  return a - r.base < r.span ? static_cast<long>(lo - 1) : -1;
}

// Hands [start, start + size) of hole h (reached from *link) to jemalloc. False if that would
// need a new hole entry and none is left.
bool carve(Region& r, std::uint32_t* link, std::uintptr_t start, std::size_t size) noexcept {
  Hole& h = g_holes[*link];
  std::uintptr_t end = start + size;
  if (start == h.start && end == h.end) {
    std::uint32_t i = *link;
    *link = h.next;
    hole_delete(i);
  } else if (start == h.start) {
    h.start = end;
  } else if (end == h.end) {
    h.end = start;
  } else {
    std::uint32_t tail = hole_new(end, h.end, h.next);
    if (tail == kNoHole) return false;
    h.end = start;
    h.next = tail;
  }
  r.free -= size;
  return true;
}

// Takes [start, start + size) back into region r as a hole (merged with its neighbours). False
// if a new entry was needed and none is left.
bool give_back(Region& r, std::uintptr_t start, std::size_t size) noexcept {
  std::uintptr_t end = start + size;
  std::uint32_t* link = &r.holes;
  Hole* prev = nullptr;
  while (*link != kNoHole && g_holes[*link].start < start) {
    prev = &g_holes[*link];
    link = &prev->next;
  }
  std::uint32_t next = *link;
  bool joins_next = next != kNoHole && g_holes[next].start == end;
  if (prev && prev->end == start) {
    if (joins_next) {
      prev->end = g_holes[next].end;
      prev->next = g_holes[next].next;
      hole_delete(next);
    } else {
      prev->end = end;
    }
  } else if (joins_next) {
    g_holes[next].start = start;
  } else {
    std::uint32_t i = hole_new(start, end, next);
    if (i == kNoHole) return false;
    *link = i;
  }
  r.free += size;
  return true;
}

// Region r is wholly free: forget it and unmap it. The arena-map bits go first, under the lock,
// so no other thread can map a new region at this address and have its bits cleared.
void unmap_region(long index) noexcept {
  Region r = g_regions[index];
  for (std::uint32_t h = r.holes; h != kNoHole;) {
    std::uint32_t next = g_holes[h].next;
    hole_delete(h);
    h = next;
  }
  std::memmove(&g_regions[index], &g_regions[index + 1],
               (g_region_count - static_cast<std::size_t>(index) - 1) * sizeof(Region));
  --g_region_count;
  void* base = reinterpret_cast<void*>(r.base);
  g_arena_map.clear(base, r.span);
  os::release(base, r.span);
  g_mapped.fetch_sub(r.span, std::memory_order_relaxed);
}

// First fit in address order over every hole (lower addresses first keeps the heap compact,
// which is what lets whole regions empty out).
// First fit among region r's holes, in address order; nullptr if none fits.
void* carve_first_fit(Region& r, std::size_t size, std::size_t alignment) noexcept {
  for (std::uint32_t* link = &r.holes; *link != kNoHole; link = &g_holes[*link].next) {
    const Hole& h = g_holes[*link];
    std::uintptr_t start = (h.start + alignment - 1) & ~(alignment - 1);
    if (start < h.start || start > h.end || h.end - start < size) continue;
    if (carve(r, link, start, size)) return reinterpret_cast<void*>(start);
  }
  return nullptr;
}

void* alloc_from_holes(std::size_t size, std::size_t alignment) noexcept {
  bool small = size <= kSmallExtent;
  for (std::size_t i = 0; i < g_region_count; ++i) {
    Region& r = g_regions[i];
    if (r.free < size || r.small != small || r.growth || r.spare) continue;
    if (void* p = carve_first_fit(r, size, alignment)) return p;
  }
  return nullptr;
}

void* alloc_at(std::uintptr_t at, std::size_t size) noexcept {
  long i = region_of(at);
  // At a region's base: that would extend an extent of the region below into this one.
  if (i < 0 || g_regions[i].base == at) return nullptr;
  Region& r = g_regions[i];
  for (std::uint32_t* link = &r.holes; *link != kNoHole; link = &g_holes[*link].next) {
    const Hole& h = g_holes[*link];
    if (h.start > at) break;
    if (h.end > at && h.end - at >= size)
      return carve(r, link, at, size) ? reinterpret_cast<void*>(at) : nullptr;
  }
  return nullptr;
}

// Enters the mapping [p, p + span) in the table and the arena map, wholly free (one hole, or
// lost if no hole entry is left). Under g_regions_lock. On failure it is unmapped, nullptr.
Region* add_region(void* p, std::size_t span, bool small) noexcept {
  auto base = reinterpret_cast<std::uintptr_t>(p);
  if (g_region_count == kMaxRegions ||
      !open_entries(g_regions, g_regions_open, g_region_count + 1) ||
      !g_arena_map.set(SlotKind::kLarge, p, span)) {
    os::release(p, span);
    errno = ENOMEM;
    return nullptr;
  }
  std::size_t at = g_region_count;
  while (at > 0 && g_regions[at - 1].base > base) --at;
  std::memmove(&g_regions[at + 1], &g_regions[at], (g_region_count - at) * sizeof(Region));
  ++g_region_count;
  Region& r = g_regions[at];
  r = {base, span, span, hole_new(base, base + span, kNoHole), small, false, false};
  g_mapped.fetch_add(span, std::memory_order_relaxed);
  return &r;
}

// A new region for a request no hole could serve. nullptr if the kernel or the table refused.
// A growth region is twice the request: the block realloc put there can grow in place into
// the rest (jemalloc asks for the bytes after it, alloc_at below), so a buffer growing by an
// eighth at a time is copied about once per doubling instead of at every step. The rest is a
// hole nothing else takes, never touched, so it costs address space only; the region is
// unmapped when the block moves on or is freed.
// `jemalloc_own`: for arena 0 (see large_init), which holds jemalloc's own bookkeeping (its
// base allocator's metadata, threads' cache arrays) and, rarely, blocks of exiting threads: a
// region of just the MiBs asked for, as jemalloc's default hooks mapped no more, and one the
// out-of-memory test hook leaves alone.
void* alloc_region(std::size_t size, std::size_t alignment, bool growth = false,
                   bool jemalloc_own = false) noexcept {
  std::size_t need = (size + kSlotSize - 1) & ~(kSlotSize - 1);
  if (need < size) return nullptr;
  std::size_t cap = size <= kSmallExtent ? kMaxSmallRegion : kMaxBigRegion;
  std::size_t grow = (g_mapped.load(std::memory_order_relaxed) / 8) & ~(kSlotSize - 1);
  grow = grow < kMinRegion ? kMinRegion : grow > cap ? cap : grow;
  if (growth) grow = 2 * need > need ? 2 * need : need;
  if (jemalloc_own) grow = need;
  const bool injectable = !jemalloc_own;
  std::size_t span = need < grow ? grow : need;
  alignment = alignment > kSlotSize ? alignment : kSlotSize;
  void* p = os::reserve_aligned(span, alignment, injectable);
  if (p == nullptr && span > need) {  // short of address space: only what was asked for
    span = need;
    p = os::reserve_aligned(span, alignment, injectable);
  }
  if (p == nullptr) return nullptr;
  LockGuard guard(g_regions_lock);
  Region* r = add_region(p, span, size <= kSmallExtent);
  if (r == nullptr) return nullptr;
  r->growth = growth;
  if (r->holes == kNoHole)
    r->free -= size;  // no entry was left for the hole: the rest is lost
  else
    carve(*r, &r->holes, r->base, size);  // at the hole's start: needs no new entry
  return p;
}

// --- big blocks that come back: the main arena's purge-at-once threshold ---
//
// A free extent of kPurgeAtOnce or more is purged at once, so that `del` of a big structure
// gives its memory back without waiting for decay. But a program that frees a big buffer and
// asks for one of the same size again (a 10 MiB request buffer, the collector's scratch arrays
// at a million objects) then pays a page fault for every page at every round: 7.8 ms per round
// for 16 MiB against glibc's 0.03 (bench/micro BM_big_buffer, docs/bench.md). glibc avoids it by
// raising its mmap threshold to the size of each mmapped chunk freed, for good. Here the
// evidence is narrower and the raise temporary:
//   - the dalloc hook notes when the main arena last gave back an extent of kPurgeAtOnce or
//     more, and its size;
//   - when the alloc hook is asked for a new extent at least as big as the threshold, no
//     bigger than that one, within decay_ms of it, the memory would have been kept had the
//     block been below the threshold: the threshold is raised to twice the request (at most
//     max_cached, at least kPurgeAtOnce), so that the next free leaves the extent dirty, for
//     reuse, and decay returns it if nothing reuses it within decay_ms;
//   - the decay thread, which stays awake (every decay_ms/4) while the threshold is raised,
//     puts kPurgeAtOnce back once no raise has been asked for in kOversizeHoldDecays decay
//     times. A program that keeps reusing its buffer (no mapping, so no new evidence) then pays
//     one round of faults per hold, and a later one-off free is purged at once again.
// Only with a decay thread and decay_ms > 0: without the thread nothing would return a kept
// block in an idle program (the raise starts it if the heap has not yet), and decay_ms 0 or -1
// mean "at once" and "never". The hooks run inside jemalloc, under its locks: they only note;
// the threshold is changed by mallctl outside it, on the next allocation slow path
// (g_maintenance_requested, decay.cpp's on_maintenance) or in the decay thread.
constexpr long long kOversizeHoldDecays = 10;
std::atomic<std::size_t> g_oversize{kPurgeAtOnce};   // the main arena's threshold now
std::atomic<std::size_t> g_oversize_wanted{0};       // a raise the alloc hook asked for
std::atomic<std::uint64_t> g_big_return_ms{0};       // the last big extent given back: when,
std::atomic<std::size_t> g_big_return_size{0};       // and how big
std::atomic<std::uint64_t> g_oversize_raised_ms{0};  // the last time a raise was asked for

bool set_oversize(std::size_t threshold) noexcept {
  char name[64];
  std::snprintf(name, sizeof name, "arena.%u.oversize_threshold", g_arena_index);
  if (tm_je_mallctl(name, nullptr, nullptr, &threshold, sizeof threshold) != 0) return false;
  g_oversize.store(threshold, std::memory_order_relaxed);
  return true;
}

// From hook_dalloc: the main arena gave back `size` bytes at once.
void note_big_return(std::size_t size) noexcept {
  g_big_return_size.store(size, std::memory_order_relaxed);
  g_big_return_ms.store(now_ms(), std::memory_order_relaxed);
}

// From hook_alloc: the main arena needs a new extent of `size` bytes, at least the threshold.
void note_big_request(std::size_t size) noexcept {
  const long long decay = g_options.decay_ms.load(std::memory_order_relaxed);
  if (decay <= 0 || !g_options.background_thread.load(std::memory_order_relaxed)) return;
  const std::uint64_t now = now_ms();
  if (now - g_big_return_ms.load(std::memory_order_relaxed) > static_cast<std::uint64_t>(decay) ||
      g_big_return_size.load(std::memory_order_relaxed) < size)
    return;
  const std::size_t cap = std::max<std::size_t>(
      kPurgeAtOnce, static_cast<std::size_t>(g_options.max_cached.load(std::memory_order_relaxed)));
  const std::size_t wanted = std::min(2 * size, cap);
  if (wanted <= g_oversize.load(std::memory_order_relaxed)) return;
  g_oversize_raised_ms.store(now, std::memory_order_relaxed);
  g_oversize_wanted.store(wanted, std::memory_order_relaxed);
  g_maintenance_requested.store(true, std::memory_order_relaxed);
}

// From hook_alloc, under g_regions_lock: `size` bytes of the spare for arena 0, or nullptr.
// Asks for a new spare (at the next thread start) when this one runs low.
void* alloc_from_spare(std::size_t size, std::size_t alignment) noexcept {
  const long i = g_spare != 0 ? region_of(g_spare) : -1;
  if (i < 0) return nullptr;
  Region& r = g_regions[i];
  void* p = carve_first_fit(r, size, alignment);
  // The closed part counts as free (lost) bytes, never handed out.
  if (r.free - (r.span - kSpareOpen) < kSpareLow)
    g_spare_wanted.store(true, std::memory_order_relaxed);
  return p;
}

// Maps a new spare for arena 0 if one is wanted, and has jemalloc register an extent in it.
// Called where no lock is held and the thread may call into jemalloc: at start and after a
// thread is bound to the main arena (a thread start, when its cache may have just taken from
// the spare).
void make_spare() noexcept {
  if (!g_spare_wanted.load(std::memory_order_relaxed) ||
      !g_spare_wanted.exchange(false, std::memory_order_relaxed))
    return;
  // Not subject to the failure injection, like the rest of arena 0's memory (see large_init).
  void* p = os::reserve_closed(kSlotSize, kSlotSize, false);
  if (p != nullptr && !os::make_writable(p, kSpareOpen)) {
    os::release(p, kSlotSize);
    p = nullptr;
  }
  const auto base = reinterpret_cast<std::uintptr_t>(p);
  {
    LockGuard guard(g_regions_lock);
    Region* r = p != nullptr ? add_region(p, kSlotSize, true) : nullptr;
    if (r == nullptr) {
      g_spare_wanted.store(true, std::memory_order_relaxed);  // at the next thread start
      return;
    }
    r->spare = true;
    if (r->holes != kNoHole) g_holes[r->holes].end = base + kSpareOpen;
    const long old = g_spare != 0 ? region_of(g_spare) : -1;
    g_spare = base;
    if (old >= 0) {  // an ordinary region from now on, unmapped if nothing of it is held
      g_regions[old].spare = false;
      if (g_regions[old].free == g_regions[old].span) unmap_region(old);
    }
  }
  // The anchor: a block aligned to a MiB, which none of arena 0's cached extents can serve
  // (short of one over a MiB), so jemalloc asks hook_alloc, which serves arena 0 from the spare
  // first, at its MiB-aligned base. Freed at once: its extent stays in arena 0's cache, and the
  // radix-tree leaf stays for good. A few tries in case arena 0 did have such an extent cached.
  constexpr int kAnchorFlags = arena_flag(0) | lg_align(kSlotSize) | kNoThreadCache;
  void* tried[4];
  int n = 0;
  while (n < 4) {
    void* q = tm_je_mallocx(kAnchorSize, kAnchorFlags);
    if (q == nullptr) break;
    tried[n++] = q;
    if (reinterpret_cast<std::uintptr_t>(q) - base < kSpareOpen) break;
  }
  for (int k = 0; k < n; ++k) tm_je_dallocx(tried[k], kNoThreadCache);
}

// A piece of a region jemalloc held, or was about to be given, comes back: unmapped with its
// region if it was the region's last piece (unless the region is arena 0's spare), otherwise
// purged and kept as a hole. false if it is no region's, or no hole entry was left (it then
// stays counted as held).
bool take_back(void* addr, std::size_t size) noexcept {
  auto a = reinterpret_cast<std::uintptr_t>(addr);
  {
    LockGuard guard(g_regions_lock);
    long i = region_of(a);
    if (i < 0 || a + size > g_regions[i].base + g_regions[i].span) return false;
    if (g_regions[i].free + size == g_regions[i].span && !g_regions[i].spare) {
      unmap_region(i);
      return true;
    }
  }
  // Purged before it becomes a hole, so that whoever takes the hole next gets zeros (and its
  // data is not purged under it). Nobody else can reach the piece meanwhile.
  if (!os::purge(addr, size)) return false;
  LockGuard guard(g_regions_lock);
  long i = region_of(a);    // the table may have moved while unlocked
  if (i < 0) return false;  // cannot happen: the region holds this piece
  if (g_regions[i].free + size == g_regions[i].span && !g_regions[i].spare) {
    unmap_region(i);
    return true;
  }
  return give_back(g_regions[i], a, size);
}

// --- jemalloc's radix tree: a leaf for each GiB it holds extents in ---
//
// jemalloc registers every extent the hooks give it in its radix tree, whose leaves cover a GiB
// of address space each and are mapped the first time an extent lands in their GiB, from
// jemalloc's own metadata (a 6 MiB block, aligned to 2 MiB) with its default mmap, never
// through these hooks. At a memory limit that mapping can fail where the extent's own did not.
// jemalloc then fails the request, as it should, but drops the extent it could not register
// without handing it back (extent_alloc_wrapper), so its region could never be unmapped: 16
// MiB stayed mapped after everything was freed, in about 1 run of 60 of
// trimalloc_bench_large_footprint under RLIMIT_AS (docs/reliability.md). So the alloc hook
// hands out memory in a GiB none of its pieces has been in only once a mapping of the leaf
// block's size (with its alignment slack) has just succeeded; otherwise it takes the piece
// back and fails the request itself. A GiB is marked once the check has passed there, so the
// check runs once per GiB in the normal course (and again at each request while it fails).
constexpr unsigned kGiBShift = 30;
constexpr std::size_t kTrackedGiBs = std::size_t{1} << (kAddressBits - kGiBShift);
constexpr std::size_t kLeafMapping = std::size_t{8} << 20;
std::atomic<std::uint64_t> g_gib_seen[kTrackedGiBs / 64];  // a bit per GiB of the user space

bool gib_seen(std::uintptr_t a) noexcept {
  const std::size_t g = a >> kGiBShift;
  return g < kTrackedGiBs &&
         ((g_gib_seen[g / 64].load(std::memory_order_relaxed) >> (g % 64)) & 1) != 0;
}
void mark_gib_seen(std::uintptr_t a) noexcept {
  const std::size_t g = a >> kGiBShift;
  if (g < kTrackedGiBs)
    g_gib_seen[g / 64].fetch_or(std::uint64_t{1} << (g % 64), std::memory_order_relaxed);
}
// Whether jemalloc can be expected to register an extent at [p, p + size).
bool registrable(void* p, std::size_t size) noexcept {
  const auto first = reinterpret_cast<std::uintptr_t>(p), last = first + size - 1;
  if (gib_seen(first) && gib_seen(last)) return true;
  void* probe = os::reserve_aligned(kLeafMapping, os::page_size(), false);
  if (probe == nullptr) return false;
  os::release(probe, kLeafMapping);
  mark_gib_seen(first);
  mark_gib_seen(last);
  return true;
}

// --- extent hooks: jemalloc's address space for trimalloc's arenas ---
void* hook_alloc(extent_hooks_t*, void* new_addr, std::size_t size, std::size_t alignment,
                 bool* zero, bool* commit, unsigned arena_index) {
  if (new_addr == nullptr && arena_index == g_arena_index &&
      size >= g_oversize.load(std::memory_order_relaxed))
    note_big_request(size);
  void* p = nullptr;
  bool loose = false;         // a mapping of its own, outside any region (arena 0 only)
  if (new_addr != nullptr) {  // growing an extent in place
    LockGuard guard(g_regions_lock);
    p = alloc_at(reinterpret_cast<std::uintptr_t>(new_addr), size);
  } else {
    // The growth arena's blocks get a region each (with the room to grow); when the address
    // space or the table runs short, a hole or a plain region will do.
    if (arena_index == g_growth_index.load(std::memory_order_relaxed) && size > kSmallExtent &&
        (p = alloc_region(size, alignment, true)) != nullptr) {
      decay_note_heap_growth();
    } else {
      LockGuard guard(g_regions_lock);
      if (arena_index == 0) p = alloc_from_spare(size, alignment);  // see make_spare
      if (p == nullptr) p = alloc_from_holes(size, alignment);
    }
    if (p == nullptr) {
      p = alloc_region(size, alignment, false, arena_index == 0);
      if (p == nullptr && arena_index == 0) {
        // Short of address space for a whole MiB: just the bytes asked for, outside the arena
        // map, as jemalloc's default hooks would map them. A thread's jemalloc cache arrays come
        // from arena 0, and jemalloc crashes a thread whose arrays it could not get (at its next
        // cache flush or arena change). Not a region: dalloc refuses it (jemalloc keeps it).
        p = os::reserve_aligned(size, std::max(alignment, os::page_size()), false);
        loose = p != nullptr;
      } else if (p != nullptr) {
        decay_note_heap_growth();  // only sets a flag: we are inside jemalloc, holding its locks
      }
    }
  }
  if (p == nullptr) return nullptr;
  if (!registrable(p, size)) {  // see "jemalloc's radix tree" above
    if (loose)
      os::release(p, size);
    else
      take_back(p, size);
    return nullptr;
  }
  *zero = true;  // fresh mappings, and holes were purged when they came back
  *commit = true;
  return p;
}

// jemalloc gives an extent back (after decay or purge, or at once for the oversize ones).
// false = taken: it is unmapped with its region if it was the region's last piece, otherwise
// purged and kept as a hole. true = refused: jemalloc keeps it as retained address space.
bool hook_dalloc(extent_hooks_t*, void* addr, std::size_t size, bool, unsigned arena_index) {
  if (arena_index == g_arena_index && size >= kPurgeAtOnce) note_big_return(size);
  return !take_back(addr, size);
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
// Never across regions: an extent spanning two could never be given back as whole regions.
// Region bases are MiB-aligned, so most merges need no look-up.
bool hook_merge(extent_hooks_t*, void*, std::size_t, void* addr_b, std::size_t, bool, unsigned) {
  auto b = reinterpret_cast<std::uintptr_t>(addr_b);
  if (b & (kSlotSize - 1)) return false;
  LockGuard guard(g_regions_lock);
  long i = region_of(b);
  return i < 0 || g_regions[i].base == b;
}
extent_hooks_t g_hooks = {hook_alloc, hook_dalloc,       hook_destroy, nullptr,   nullptr,
                          nullptr,    hook_purge_forced, hook_split,   hook_merge};

// The region lock is taken inside jemalloc's hooks, under jemalloc's mutexes, so at fork() it
// must be taken after them. Prepare handlers run in reverse order of registration, so this one
// is registered before jemalloc initialises (and registers its own): from a constructor that
// runs before jemalloc's (default priority), or from large_init before its first call into
// jemalloc, if a large block is asked for before this library's constructors have run (the C++
// runtime's start-up allocations can be).
void regions_prefork() {
  g_regions_lock.lock();
}
void regions_postfork_parent() {
  g_regions_lock.unlock();
}
void regions_postfork_child() {
  g_regions_lock.reset_after_fork();
}
std::atomic<bool> g_region_handlers{false};
__attribute__((constructor(102))) void register_region_fork_handlers() {
  if (!g_region_handlers.exchange(true))
    pthread_atfork(regions_prefork, regions_postfork_parent, regions_postfork_child);
}

// jemalloc runs one purge of an arena at a time, and a second caller returns at once, before
// the first has unmapped anything. trimalloc's own purges (decay thread, tm_trim, a failed
// mapping) take turns on this lock, so a thread that just ran out of address space and purged
// knows every region freed so far is unmapped when its purge returns. It is held while calling
// into jemalloc, so at fork() it is taken before jemalloc's mutexes (see large_init).
SpinLock g_purge_lock;
void purge_prefork() {
  g_purge_lock.lock();
}
void purge_postfork_parent() {
  g_purge_lock.unlock();
}
void purge_postfork_child() {
  g_purge_lock.reset_after_fork();
  // The thread that was making the growth arena is not in the child: let the child make one.
  int making = 1;
  g_growth_state.compare_exchange_strong(making, 0, std::memory_order_relaxed);
  // The child has no decay thread (it starts one lazily, if its heap grows), so nothing would
  // give back a big block the parent's raised threshold let it keep: back to purging at once.
  // jemalloc's own child handler, registered before this one, has run.
  g_oversize_wanted.store(0, std::memory_order_relaxed);
  if (g_oversize.load(std::memory_order_relaxed) != kPurgeAtOnce) set_oversize(kPurgeAtOnce);
}

void arena_decay(bool all) noexcept {
  LockGuard guard(g_purge_lock);
  for (unsigned index : large_arena_indices()) {
    char name[64];
    std::snprintf(name, sizeof name, all ? "arena.%u.purge" : "arena.%u.decay", index);
    tm_je_mallctl(name, nullptr, nullptr, nullptr, 0);
  }
}

// An arena of ours, with the region hooks; false when jemalloc could not create it.
bool create_arena(unsigned* index, std::size_t purge_at_once) noexcept {
  std::size_t len = sizeof(*index);
  extent_hooks_t* hooks = &g_hooks;
  if (tm_je_mallctl("arenas.create", index, &len, &hooks, sizeof(hooks)) != 0) return false;
  char name[64];
  std::snprintf(name, sizeof name, "arena.%u.oversize_threshold", *index);
  return tm_je_mallctl(name, nullptr, nullptr, &purge_at_once, sizeof(purge_at_once)) == 0;
}

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
  register_region_fork_handlers();
  // Arena 0, jemalloc's automatic arena, maps through our hooks too. trimalloc never sends a
  // block there, but jemalloc does: when a thread's jemalloc state has been torn down (its
  // thread-specific-data destructor ran) and a destructor that runs after it (another library's
  // pthread key) allocates, jemalloc serves that thread from arena 0 whatever arena it was bound
  // to or names (jemalloc.c, imalloc_body: reentrancy forces arena 0). With jemalloc's default
  // hooks such a block lay outside the arena map, and free() aborted on it as a foreign pointer.
  // Each thread's jemalloc cache takes its arrays from arena 0 as well, when the thread first
  // calls into jemalloc; if that fails, jemalloc crashes the thread's next cache flush (which
  // the out-of-memory path runs, or its next arena change). So the test hook that fails
  // trimalloc's mappings (os::inject_reserve_failures) spares arena 0's, as it spared them under
  // jemalloc's default hooks; arena 0 is served from a spare mapped ahead (make_spare), and
  // when that runs out under a real shortage, from a mapping of just the bytes it asked for
  // (hook_alloc), as those hooks made.
  extent_hooks_t* hooks = &g_hooks;
  // A retry after a failure creates the arena again; one left from the failed attempt stays
  // unused (its 2 MiB metadata block mapped, of which jemalloc counts about 0.1 MiB resident).
  unsigned index = 0;
  if (!g_arena_map.init() || !tables_ready() ||
      tm_je_mallctl("arena.0.extent_hooks", nullptr, nullptr, &hooks, sizeof(hooks)) != 0 ||
      !create_arena(&index, kPurgeAtOnce)) {
    g_state.store(0, std::memory_order_release);
    errno = ENOMEM;
    return false;
  }
  g_arena_index = index;
  g_arena_flags = arena_flag(index);
  make_spare();
  g_mapped_at_init.store(g_mapped.load(std::memory_order_relaxed), std::memory_order_relaxed);
  g_on_out_of_memory = large_release_address_space;
  // jemalloc registered its fork handlers when it initialised (by now): prepare handlers run
  // in reverse order, so this one takes the purge lock before jemalloc takes its mutexes (the
  // purge lock's holder takes jemalloc's mutexes, then the region lock).
  pthread_atfork(purge_prefork, purge_postfork_parent, purge_postfork_child);
  g_state.store(2, std::memory_order_release);
  return true;
}

namespace {
bool bind_thread_to_arena() noexcept {
  unsigned index = g_arena_index;
  if (tm_je_mallctl("thread.arena", nullptr, nullptr, &index, sizeof(index)) != 0) return false;
  tl_thread.bound_to_large_arena = true;
  make_spare();  // if the cache jemalloc has just made left the spare low
  return true;
}

[[gnu::always_inline]] inline void* large_alloc_once(std::size_t size, std::size_t alignment,
                                                     bool zero) noexcept {
  // Every thread is bound at its first large request, whatever its kind: that is its first
  // call into jemalloc, which makes its cache, and make_spare runs after it.
  const bool bound = tl_thread.bound_to_large_arena || bind_thread_to_arena();
  if (alignment <= 16 && !zero && bound) return tm_je_malloc(size);
  int flags = g_arena_flags | (zero ? kZero : 0) | (alignment > 16 ? lg_align(alignment) : 0);
  return tm_je_mallocx(size, flags);
}
}  // namespace

namespace {
// After a failed allocation of `size`: gives address space back and says whether to try once
// more, unless no mapping could ever serve the request (more than RLIMIT_AS, or than RAM plus
// swap under heuristic overcommit). Such a request fails at once: giving back would only take
// every other thread's kept pools and, hardened, empty their quarantines, for nothing, and an
// attacker who controls a size could flush the quarantines at will.
bool large_retry_worthwhile(std::size_t size) noexcept {
  return os::could_ever_map(size) && large_release_address_space();
}

// The hardened build's registry of large blocks (large_registry.h) needs a bigger table now and
// then; at a limit that mapping is given the same second chance as the block's own.
[[maybe_unused]] bool registered(void* p) noexcept {
  return registry_add(p) || (large_release_address_space() && registry_add(p));
}

// The allocation after large_alloc's checks, with its retry and error reporting.
[[gnu::always_inline]] inline void* large_alloc_checked(std::size_t size, std::size_t alignment,
                                                        bool zero) noexcept {
  void* p = large_alloc_once(size, alignment, zero);
  // Free blocks jemalloc has not purged yet hold address space; with a low RLIMIT_AS that can
  // be what stands between this request and a new region.
  if (p == nullptr && large_retry_worthwhile(size)) p = large_alloc_once(size, alignment, zero);
  if (p == nullptr) {
    errno = ENOMEM;
    return nullptr;
  }
  if constexpr (kSecure) {
    if (!registered(p)) {
      tm_je_dallocx(p, 0);
      errno = ENOMEM;
      return nullptr;
    }
  }
  return p;
}

[[gnu::noinline]] void* large_alloc_sampled(std::size_t size, std::size_t alignment,
                                            bool zero) noexcept {
  void* p = large_alloc_checked(size, alignment, zero);
  sample_record_large(p, size);
  return p;
}
}  // namespace

void* large_alloc(std::size_t size, std::size_t alignment, bool zero) noexcept {
  // jemalloc's own limit is PTRDIFF_MAX; check first so errno is always ours to set.
  if (size > static_cast<std::size_t>(PTRDIFF_MAX) || !ready()) {
    errno = ENOMEM;
    return nullptr;
  }
  if (__builtin_expect(g_maintenance_requested.load(std::memory_order_relaxed), 0) &&
      g_on_maintenance)
    g_on_maintenance();
  // The sampling countdown runs before the allocation, so that the request's size does not have
  // to be kept across the call into jemalloc for it (that cost the fast path a saved register).
  if (sample_due(size)) return large_alloc_sampled(size, alignment, zero);
  return large_alloc_checked(size, alignment, zero);
}

namespace {
// large_malloc's failure path: what large_alloc_checked does after a first attempt failed.
[[gnu::noinline]] void* large_malloc_retry(std::size_t size) noexcept {
  void* p = large_retry_worthwhile(size) ? large_alloc_once(size, 0, false) : nullptr;
  if (p == nullptr) errno = ENOMEM;
  return p;
}
}  // namespace

void* large_malloc(std::size_t size) noexcept {
  // A thread is bound to the arena only once jemalloc is ready, so the bound flag stands for
  // ready() too: malloc's common case is these checks and one call into jemalloc.
  if (kSecure || !tl_thread.bound_to_large_arena || size > static_cast<std::size_t>(PTRDIFF_MAX) ||
      g_maintenance_requested.load(std::memory_order_relaxed))
    return large_alloc(size, 0, false);
  if (sample_due(size)) return large_alloc_sampled(size, 0, false);
  void* p = tm_je_malloc(size);
  if (__builtin_expect(p != nullptr, 1)) return p;
  return large_malloc_retry(size);
}

namespace {
// The growth arena's flags, made first if no realloc has needed it yet. While another thread is
// making it, or if jemalloc could not, the main arena's: the block then only lacks room to
// grow in place. No lock is held across jemalloc's calls, so fork() cannot leave one taken;
// a child forked while the arena was being made makes its own (purge_postfork_child).
[[gnu::noinline]] int make_growth_arena() noexcept {
  int state = 0;
  if (!g_growth_state.compare_exchange_strong(state, 1, std::memory_order_acq_rel))
    return state == 2 ? g_growth_flags.load(std::memory_order_acquire) : g_arena_flags;
  unsigned index = 0;
  if (!create_arena(&index, os::page_size())) {
    g_growth_state.store(0, std::memory_order_release);
    return g_arena_flags;
  }
  const int flags = arena_flag(index);
  g_growth_index.store(index, std::memory_order_relaxed);
  g_growth_flags.store(flags, std::memory_order_release);
  g_growth_state.store(2, std::memory_order_release);
  decay_apply_to_large();  // the decay time the other arenas have, now that it is listed
  return flags;
}
inline int growth_flags() noexcept {
  const int flags = g_growth_flags.load(std::memory_order_acquire);
  return flags != 0 ? flags : make_growth_arena();
}

// The hardened realloc's new block in the growth arena, registered like large_alloc's.
[[maybe_unused]] void* growth_alloc_registered(std::size_t size) noexcept {  // kSecure only
  const int flags = growth_flags();
  void* p = tm_je_mallocx(size, flags);
  if (p == nullptr && large_retry_worthwhile(size)) p = tm_je_mallocx(size, flags);
  if (p != nullptr && !registered(p)) {
    tm_je_dallocx(p, 0);
    p = nullptr;
  }
  if (p == nullptr) errno = ENOMEM;
  return p;
}
}  // namespace

void* large_realloc(void* p, std::size_t size) noexcept {
  if (size > static_cast<std::size_t>(PTRDIFF_MAX)) {
    errno = ENOMEM;
    return nullptr;
  }
  if (!tl_thread.bound_to_large_arena) bind_thread_to_arena();  // as in large_alloc_once
  if constexpr (kSecure) {
    // Hardened: in place (xallocx never moves the block, so the registry has nothing to
    // record), else allocate, copy, free, so that a registry without room fails the call
    // cleanly (rallocx could move the block first). The old block goes through quarantine,
    // which lets blocks over 256 KiB go at once (growth-arena ones are then purged at once).
    if (tm_je_xallocx(p, size, 0, 0) >= size) return p;
    std::size_t old = tm_je_sallocx(p, 0);
    void* q = size >= kGrowthMin ? growth_alloc_registered(size) : large_alloc(size, 0, false);
    if (q == nullptr) return nullptr;
    std::memcpy(q, p, old < size ? old : size);
    quarantine_free(p, "realloc");
    return q;
  }
  sample_forget(p);
  // A block jemalloc cannot resize in place is allocated anew in the arena named here, copied
  // and freed where it lived.
  void* q = tm_je_rallocx(p, size, size >= kGrowthMin ? growth_flags() : g_arena_flags);
  if (q == nullptr) {
    errno = ENOMEM;
    return nullptr;
  }
  // The moved or grown block is a new allocation for the sampler (its site: realloc's caller);
  // without this, memory grown by realloc (a Python list, a vector-like buffer) is never seen.
  sample_large(q, size);
  if (q != p) decay_note_freed();  // the old extent is jemalloc's dirty memory now
  return q;
}

namespace {
[[gnu::noinline]] void large_free_with_samples_live(void* p) noexcept {
  sample_forget(p);
  tm_je_free(p);
}
}  // namespace

// Every way a large block is freed (free, the sized frees, the quarantine letting one go, a
// realloc that moved it) ends with decay_note_freed(): the pages jemalloc now holds dirty
// are decay's work, and a decay thread asleep with nothing to do would otherwise not hear of
// them until some other free woke it.
void large_free(void* p) noexcept {
  // A sample must go with its block, or snapshots would count freed blocks as live until the
  // address happens to be sampled again. No sample live: one relaxed load.
  if constexpr (kSamplingHooks) {
    if (__builtin_expect(g_sampled_live.load(std::memory_order_relaxed) != 0, 0)) {
      large_free_with_samples_live(p);
      return decay_note_freed();
    }
  }
  tm_je_free(p);
  decay_note_freed();
}

void large_free_sized(void* p, std::size_t size, std::size_t alignment) noexcept {
  sample_forget(p);
  // Size 0 was allocated as 1 (jemalloc has no size-0 class; see alloc_aligned): free it as
  // such, or jemalloc would file the block under the wrong size class.
  tm_je_sdallocx(p, size == 0 ? 1 : size, alignment > 16 ? lg_align(alignment) : 0);
  decay_note_freed();
}

std::size_t large_usable_size(const void* p) noexcept {
  return tm_je_sallocx(p, 0);
}

int large_mallctl(const char* name, void* oldp, std::size_t* oldlenp, void* newp,
                  std::size_t newlen) noexcept {
  if (!ready()) return EAGAIN;
  return tm_je_mallctl(name, oldp, oldlenp, newp, newlen);
}

LargeArenas large_arena_indices() noexcept {
  if (g_growth_state.load(std::memory_order_acquire) != 2) return {{0, g_arena_index, 0}, 2};
  return {{0, g_arena_index, g_growth_index.load(std::memory_order_relaxed)}, 3};
}
std::size_t large_mapped_bytes() noexcept {
  return g_mapped.load(std::memory_order_relaxed);
}
std::size_t large_mapped_since_init() noexcept {
  std::size_t now = g_mapped.load(std::memory_order_relaxed);
  std::size_t at_init = g_mapped_at_init.load(std::memory_order_relaxed);
  return now > at_init ? now - at_init : 0;
}

namespace {
// A statistic of every arena (large_arena_indices), summed, after jemalloc refreshed its figures
// ("epoch").
std::size_t arenas_stat(const char* stat) noexcept {
  std::uint64_t epoch = 1;
  std::size_t len = sizeof epoch;
  tm_je_mallctl("epoch", &epoch, &len, &epoch, len);
  std::size_t total = 0;
  for (unsigned index : large_arena_indices()) {
    char name[64];
    std::snprintf(name, sizeof name, "stats.arenas.%u.%s", index, stat);
    std::size_t value = 0;
    len = sizeof value;
    if (tm_je_mallctl(name, &value, &len, nullptr, 0) == 0) total += value;
  }
  return total;
}

// Purges every arena until nothing is left dirty, or for kReleaseBudgetNs.
// jemalloc lets one thread purge an arena at a time, and a purge asked for while another runs
// returns at once having done nothing. Our own purges take turns on g_purge_lock, but jemalloc
// also decays on its allocation ticks, in any thread, outside that lock, and such a decay
// purges only what its curve says is due: a purge-all that met one left the rest dirty, and
// the regions holding it mapped (Hostile.OutOfAddressSpaceWhileOtherThreadsDecay failed 6 runs
// in 10 with one purge on the out-of-memory path). Bounded: other threads may dirty pages as
// fast as this purges them.
void purge_until_clean() noexcept {
  auto now_ns = [] {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<long long>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  };
  const long long deadline = now_ns() + kReleaseBudgetNs;
  os::NoCancellation no_cancellation;  // nanosleep() is a cancellation point
  for (;;) {
    arena_decay(true);
    if (large_dirty_bytes() == 0 || now_ns() >= deadline) return;
    const timespec pause{0, kReleasePauseNs};
    nanosleep(&pause, nullptr);
  }
}
}  // namespace

std::size_t large_dirty_bytes() noexcept {
  if (g_state.load(std::memory_order_acquire) != 2) return 0;
  return arenas_stat("pdirty") * 4096;  // jemalloc counts pages, of 4 KiB on this build
}

bool large_release_address_space() noexcept {
  // Small-block memory holds address space too: empty arenas cached for reuse, and arenas that
  // only empty pools keep mapped (the one pool per class each heap keeps for its next malloc,
  // this thread's or another's, and those of exited threads). Under a tight RLIMIT_AS that space is
  // needed now, not after the decay time: an 8 MiB arena pinned by one empty pool made a 256 KiB
  // malloc fail. trim_small_for_address_space() hands those pools back, this thread's and, by
  // visits, other live threads', and unmaps the arenas that empties. From the small path
  // (g_on_out_of_memory) this runs inside the heap's slow path, at a point that holds no pool and
  // no lock, so the heap's lists may change under it, and visiting other heaps cannot deadlock (a
  // heap that is in the allocator is skipped, and the visit lock is only tried).
  trim_small_for_address_space();
  if (g_state.load(std::memory_order_acquire) != 2) return false;
  tm_je_mallctl("thread.tcache.flush", nullptr, nullptr, nullptr, 0);
  purge_until_clean();
  // Always worth the retry: when several threads run out together, the purge that unmaps the
  // regions may be another thread's, done between our failure and this call.
  return true;
}

bool large_oversize_wanted() noexcept {
  return g_oversize_wanted.load(std::memory_order_relaxed) != 0;
}

void large_oversize_apply(bool keep) noexcept {
  const std::size_t wanted = g_oversize_wanted.exchange(0, std::memory_order_relaxed);
  if (keep && wanted > g_oversize.load(std::memory_order_relaxed) && ready()) set_oversize(wanted);
}

bool large_oversize_expire(bool at_once) noexcept {
  if (g_oversize.load(std::memory_order_relaxed) == kPurgeAtOnce || !ready()) return false;
  const long long decay = g_options.decay_ms.load(std::memory_order_relaxed);
  const std::uint64_t since = now_ms() - g_oversize_raised_ms.load(std::memory_order_relaxed);
  if (!at_once && decay > 0 && since <= static_cast<std::uint64_t>(decay * kOversizeHoldDecays))
    return true;
  g_oversize_wanted.store(0, std::memory_order_relaxed);
  return !set_oversize(kPurgeAtOnce);
}

void large_decay_step() noexcept {
  if (ready()) arena_decay(false);
}

std::size_t large_purge() noexcept {
  if (!ready()) return 0;
  std::size_t before = arenas_stat("resident");
  tm_je_mallctl("thread.tcache.flush", nullptr, nullptr, nullptr, 0);
  purge_until_clean();
  std::size_t after = arenas_stat("resident");
  return before > after ? before - after : 0;
}

}  // namespace trimalloc
