// tm_stats_get: one pass over the small arenas (under the arena lock, reading pool headers the way
// the arena code itself does), jemalloc's counters through mallctl, and the kernel's RSS.
//
// Residency is measured, not assumed: each arena that has a pool in use is passed to mincore(),
// so "resident" in the small-object lines is what the kernel has, page by page. Within a pool in
// use, live blocks are `used * block_size` and free blocks are the carved (non-dormant) blocks
// that are not used; whatever else of the pool is resident is slack (the pool's tail, or pages
// that are dormant but still resident because a reused pool starts fully dormant).
// Nothing here allocates: the walk writes into the caller's struct, /proc is read with read(2)
// into a stack buffer.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "arena.h"
#include "decay.h"
#include "heap.h"
#include "internal.h"
#include "large.h"
#include "meta.h"
#include "os.h"

namespace trimalloc::stats {
namespace {

constexpr std::size_t kPagesPerArena = kArenaSize / kPageSize;  // 2048
static_assert(kSlotSize <= kArenaSize, "one vector serves arenas and large slots");

std::atomic<std::size_t> g_peak_class[kClassCount];
std::atomic<std::size_t> g_peak_allocated{0};

void raise_peak(std::atomic<std::size_t>& peak, std::size_t value) {
  std::size_t seen = peak.load(std::memory_order_relaxed);
  while (value > seen && !peak.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
  }
}

std::size_t count_resident(const unsigned char* vec, std::size_t first, std::size_t n) {
  std::size_t pages = 0;
  for (std::size_t i = first; i < first + n; ++i) pages += vec[i] & 1;
  return pages * kPageSize;
}

// Per-arena accounting, done while the arena lock is held.
struct Walk {
  tm_stats* s;
  Arena* arena = nullptr;
  unsigned char vec[kPagesPerArena];
  bool have_vec = false;
  std::size_t visited_arenas = 0;
  std::size_t visited_dirty_free = 0;

  void begin_arena(Arena* a) {
    arena = a;
    ++visited_arenas;
    have_vec = mincore(reinterpret_cast<void*>(arena_base(a)), kArenaSize, vec) == 0;
    visited_dirty_free +=
        static_cast<std::size_t>(__builtin_popcountll(a->dirty_pools & a->free_pools));
    if (!have_vec) {  // cannot happen for a mapped arena; count conservatively
      s->meta_arena_headers += kPoolSize;
      s->arena_resident += kPoolSize;
      return;
    }
    std::size_t header = count_resident(vec, 0, kPagesPerPool);
    s->meta_arena_headers += header;
    s->arena_resident += header;
    std::uint64_t free_slots = a->free_pools & kAllPoolSlots;
    while (free_slots) {
      unsigned i = static_cast<unsigned>(__builtin_ctzll(free_slots));
      free_slots &= free_slots - 1;
      std::size_t r = count_resident(vec, std::size_t{i} * kPagesPerPool, kPagesPerPool);
      s->ledger.small_empty_pools += r;
      s->arena_resident += r;
    }
  }

  void pool(Pool* p) {
    Arena* a = arena_of(p);
    if (a != arena) begin_arena(a);
    std::size_t resident =
        have_vec ? count_resident(vec, std::size_t{p->index} * kPagesPerPool, kPagesPerPool)
                 : kPoolSize;
    s->arena_resident += resident;
    // A pool is marked in use a moment before pool_init() runs (outside the lock): skip the
    // header until it describes a class.
    std::uint32_t size = p->block_size;
    std::uint16_t capacity = p->capacity;
    unsigned cls = p->size_class;
    if (size == 0 || capacity == 0 || cls >= kClassCount || class_block_size(cls) != size) {
      s->ledger.small_pool_slack += resident;
      return;
    }
    PageMask dormant = p->dormant.load(std::memory_order_relaxed);
    std::size_t used = pool_used(p);
    std::size_t carved = pool_carved_blocks(size, capacity, dormant);
    if (used > carved) used = carved;  // a racing read; never report more than can exist
    tm_class_stats& c = s->classes[cls];
    c.pools += 1;
    c.blocks_live += used;
    c.blocks_free += carved - used;
    std::size_t live = used * size, free = (carved - used) * size;
    s->ledger.small_live += live;
    s->ledger.small_free += free;
    if (resident > live + free) s->ledger.small_pool_slack += resident - live - free;
    for (unsigned page = 0; page < kPagesPerPool; ++page)
      if (((dormant >> page) & 1) && have_vec && !(vec[p->index * kPagesPerPool + page] & 1))
        ++s->pages_released;
  }
};

std::size_t large_resident_measured();

std::size_t je_size(const char* name) {
  std::size_t value = 0, len = sizeof(value);
  if (large_mallctl(name, &value, &len, nullptr, 0) != 0) return 0;
  return value;
}
std::uint64_t je_u64(const char* name) {
  std::uint64_t value = 0;
  std::size_t len = sizeof(value);
  if (large_mallctl(name, &value, &len, nullptr, 0) != 0) return 0;
  return value;
}

void read_large(tm_stats* s) {
  std::uint64_t epoch = 1;
  std::size_t len = sizeof(epoch);
  large_mallctl("epoch", &epoch, &len, &epoch, len);  // refreshes jemalloc's cached counters
  s->large_allocated = je_size("stats.allocated");
  s->large_active = je_size("stats.active");
  s->large_resident = je_size("stats.resident");
  s->large_retained = je_size("stats.retained");
  s->large_mapped = je_size("stats.mapped");
  s->large_metadata = je_size("stats.metadata");
  s->large_resident_measured = large_resident_measured();
  s->large_dirty = s->large_nmalloc = s->large_ndalloc = 0;
  for (unsigned i : large_arena_indices()) {
    char name[96];
    std::snprintf(name, sizeof name, "stats.arenas.%u.pdirty", i);
    s->large_dirty += je_size(name) * kPageSize;
    std::snprintf(name, sizeof name, "stats.arenas.%u.small.nmalloc", i);
    s->large_nmalloc += je_u64(name);
    std::snprintf(name, sizeof name, "stats.arenas.%u.large.nmalloc", i);
    s->large_nmalloc += je_u64(name);
    std::snprintf(name, sizeof name, "stats.arenas.%u.small.ndalloc", i);
    s->large_ndalloc += je_u64(name);
    std::snprintf(name, sizeof name, "stats.arenas.%u.large.ndalloc", i);
    s->large_ndalloc += je_u64(name);
  }
}

// Parses "Key:   1234 kB" lines of a /proc file held in buf.
bool find_kb(const char* buf, const char* key, std::size_t* out) {
  std::size_t klen = std::strlen(key);
  for (const char* line = buf; line && *line;
       line = std::strchr(line, '\n') ? std::strchr(line, '\n') + 1 : nullptr) {
    if (std::strncmp(line, key, klen) == 0 && line[klen] == ':') {
      const char* p = line + klen + 1;
      while (*p == ' ' || *p == '\t') ++p;
      std::size_t v = 0;
      while (*p >= '0' && *p <= '9') v = v * 10 + static_cast<std::size_t>(*p++ - '0');
      *out = v * 1024;
      return true;
    }
  }
  return false;
}

std::size_t read_file(const char* path, char* buf, std::size_t cap) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  std::size_t n = 0;
  while (n + 1 < cap) {
    ssize_t r = read(fd, buf + n, cap - 1 - n);
    if (r <= 0) break;
    n += static_cast<std::size_t>(r);
  }
  close(fd);
  buf[n] = '\0';
  return n;
}

// Resident bytes of the address space trimalloc gave jemalloc (1 MiB slots marked kLarge in the
// arena map). The mappings come from /proc/self/maps, so only slots inside real mappings are
// looked at; each slot of ours is passed to mincore().
std::size_t large_resident_measured() {
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  std::size_t resident = 0;
  char buf[8192];
  std::size_t have = 0;
  unsigned char vec[kPagesPerArena];
  for (;;) {
    ssize_t r = read(fd, buf + have, sizeof buf - have);
    if (r <= 0) break;
    have += static_cast<std::size_t>(r);
    std::size_t start = 0;
    for (std::size_t i = 0; i < have; ++i) {
      if (buf[i] != '\n') continue;
      unsigned long lo = 0, hi = 0;
      buf[i] = '\0';
      if (std::sscanf(buf + start, "%lx-%lx", &lo, &hi) == 2) {
        g_arena_map.for_each_slot(SlotKind::kLarge, lo, hi, [&](std::uintptr_t slot) {
          if (mincore(reinterpret_cast<void*>(slot), kSlotSize, vec) == 0)
            resident += count_resident(vec, 0, kSlotSize / kPageSize);
        });
      }
      start = i + 1;
    }
    std::memmove(buf, buf + start, have - start);
    have -= start;
    if (have == sizeof buf) have = 0;  // an absurdly long line: drop it
  }
  close(fd);
  return resident;
}

}  // namespace

bool read_kernel_rss(KernelRss* out) noexcept {
  int saved = errno;
  char buf[4096];
  bool ok = false;
  if (read_file("/proc/self/smaps_rollup", buf, sizeof buf) > 0) {
    std::size_t rss = 0, anon = 0;
    if (find_kb(buf, "Rss", &rss) && find_kb(buf, "Anonymous", &anon)) {
      out->rss = rss;
      out->anon = anon;
      out->file = rss > anon ? rss - anon : 0;
      ok = true;
    }
  }
  if (!ok && read_file("/proc/self/statm", buf, sizeof buf) > 0) {
    unsigned long size = 0, resident = 0, shared = 0;
    if (std::sscanf(buf, "%lu %lu %lu", &size, &resident, &shared) == 3) {
      std::size_t page = os::page_size();
      out->rss = resident * page;
      out->file = shared * page;
      out->anon = out->rss > out->file ? out->rss - out->file : 0;
      ok = true;
    }
  }
  errno = saved;
  return ok;
}

}  // namespace trimalloc::stats

using namespace trimalloc;
using namespace trimalloc::stats;

extern "C" TM_API int tm_stats_get(struct tm_stats* out) {
  if (out == nullptr) return -1;
  int saved = errno;
  std::memset(out, 0, sizeof *out);
  tm_stats& s = *out;
  for (unsigned c = 0; c < kClassCount; ++c) s.classes[c].block_size = class_block_size(c);

  // --- small arenas ---
  ArenaCounts counts = g_arenas.counts();
  Walk walk;
  walk.s = &s;
  g_arenas.for_each_pool_in_use([&walk](Pool* p) { walk.pool(p); });
  s.arenas = counts.arenas;
  s.arenas_released = counts.arenas_released;
  s.arena_mapped = counts.arenas * kArenaSize;
  s.pools_in_use = counts.pools_in_use;
  s.pools_free_dirty = counts.pools_free_dirty;
  s.pools_free_clean = counts.pools_free_clean;
  // Arenas with no pool in use are not reachable from the pool walk; their header slot and
  // dirty free pools are counted as resident (an upper bound: dirty pages may have been swapped).
  if (counts.arenas > walk.visited_arenas) {
    std::size_t idle = counts.arenas - walk.visited_arenas;
    std::size_t dirty = counts.pools_free_dirty > walk.visited_dirty_free
                            ? counts.pools_free_dirty - walk.visited_dirty_free
                            : 0;
    s.meta_arena_headers += idle * kPoolSize;
    s.ledger.small_empty_pools += dirty * kPoolSize;
    s.arena_resident += (idle + dirty) * kPoolSize;
  }
  s.empty_pools_resident = s.ledger.small_empty_pools;
  s.trims = trim_calls();
  s.trim_bytes_released = trim_released_bytes();

  // --- jemalloc ---
  read_large(&s);

  // --- own metadata ---
  s.meta_heaps = meta_bytes();
  s.meta_profiler = profiler_meta_bytes();

  // --- kernel ---
  KernelRss k;
  read_kernel_rss(&k);
  s.rss = k.rss;
  s.rss_anon = k.anon;
  s.rss_file = k.file;

  // --- ledger ---
  tm_ledger& l = s.ledger;
  // jemalloc's pages in trimalloc's slots are measured with mincore. What jemalloc counts as
  // active or dirty but the kernel never backed is pages of live blocks the program has not
  // touched yet (calloc'd or not yet written): they come off the live line. jemalloc's metadata
  // mostly lives outside those slots; its own resident estimate bounds it.
  l.large_slack = s.large_active > s.large_allocated ? s.large_active - s.large_allocated : 0;
  l.large_dirty = s.large_dirty;
  std::size_t claimed = s.large_active + s.large_dirty;
  std::size_t untouched =
      claimed > s.large_resident_measured ? claimed - s.large_resident_measured : 0;
  l.large_live = s.large_allocated > untouched ? s.large_allocated - untouched : 0;
  std::size_t je_meta = s.large_resident > claimed ? s.large_resident - claimed : 0;
  if (je_meta > s.large_metadata) je_meta = s.large_metadata;
  // jemalloc counts its metadata as resident whether or not it was ever touched: each 2 MiB
  // leaf of its radix tree (one per GiB of address space its extents span) counts whole. No
  // more of it can be resident than the anonymous RSS the measured lines leave unexplained.
  const std::size_t measured = l.small_live + l.small_free + l.small_pool_slack +
                               l.small_empty_pools + l.large_live + l.large_slack + l.large_dirty +
                               s.meta_arena_headers + s.meta_heaps + s.meta_profiler;
  const std::size_t unexplained = k.anon > measured ? k.anon - measured : 0;
  if (je_meta > unexplained) je_meta = unexplained;
  l.metadata = s.meta_arena_headers + s.meta_heaps + je_meta + s.meta_profiler;
  l.ours = l.small_live + l.small_free + l.small_pool_slack + l.small_empty_pools + l.large_live +
           l.large_slack + l.large_dirty + l.metadata;
  l.rss_kernel = k.rss;
  l.not_ours_file = k.file;
  l.not_ours_anon = k.anon > l.ours ? k.anon - l.ours : 0;
  l.overcount = l.ours > k.anon ? l.ours - k.anon : 0;
  l.total = l.ours + l.not_ours_file + l.not_ours_anon;
  RoundingEstimate rounding = profiler_small_rounding();
  if (rounding.known) {
    // The estimate may overshoot by its error; small_live is exact, so clamp to it.
    double est = rounding.bytes < static_cast<double>(l.small_live)
                     ? rounding.bytes
                     : static_cast<double>(l.small_live);
    l.small_requested_known = 1;
    l.small_rounding = static_cast<std::size_t>(est + 0.5);
    l.small_live_requested = l.small_live - l.small_rounding;
    l.small_rounding_stderr = static_cast<std::size_t>(std::sqrt(rounding.variance) + 0.5);
    l.small_requested_samples = rounding.samples;
  }

  // --- totals ---
  s.allocated = l.small_live + s.large_allocated;
  s.resident_ours = l.ours;
  s.mapped = os::reserved_bytes();
  // Peaks (docs/stats.md, "Peaks"). The fast paths keep no counters, so the true peak of a
  // class's live blocks is bracketed: what stats calls have seen from below, the exact peak of
  // the class's pools times blocks per pool from above (every live block is in a pool in use).
  // The peaks are read after the walk and never fall, so seen <= bound holds for every call.
  std::size_t pools_now[kClassCount], pools_peak[kClassCount];
  g_arenas.class_pools(pools_now, pools_peak);
  for (unsigned c = 0; c < kClassCount; ++c) {
    tm_class_stats& k = s.classes[c];
    raise_peak(g_peak_class[c], k.blocks_live);
    k.peak_blocks_seen = g_peak_class[c].load(std::memory_order_relaxed);
    k.peak_pools = pools_peak[c];
    k.peak_blocks_bound = pools_peak[c] * (kPoolSize / class_block_size(c));
  }
  raise_peak(g_peak_allocated, s.allocated);
  s.peak_allocated_seen = g_peak_allocated.load(std::memory_order_relaxed);

  s.profile_rate = tm_profile_rate();
  s.profile_samples_live = profiler_live_samples();
  errno = saved;
  return 0;
}
