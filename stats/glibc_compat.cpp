// glibc's introspection calls with trimalloc's figures: mallinfo2, mallinfo, malloc_stats,
// malloc_info. Compiled only into the override build of libtrimalloc.so (TRIMALLOC_OVERRIDE=ON),
// like the malloc shims: a program linking the tm_*-only engine keeps glibc's versions.
//
// Field mapping (glibc's meaning -> ours):
//   arena    non-mmapped space       -> small arenas mapped + jemalloc active
//   ordblks  free chunks             -> free small blocks in pools in use
//   smblks   fastbin chunks          -> 0
//   hblks    mmapped regions         -> small arenas mapped
//   hblkhd   bytes in mmapped regions-> every byte trimalloc has mapped
//   usmblks  (unused)                -> peak allocated seen by a stats call (a lower bound)
//   fsmblks  fastbin bytes           -> 0
//   uordblks bytes in use            -> allocated (small at block size + jemalloc allocated)
//   fordblks free bytes              -> resident but free: small free + slack + empty pools +
//                                       jemalloc slack + dirty
//   keepcost releasable top          -> what a trim could give back now: empty pools + jemalloc
//   dirty
#include <malloc.h>

#include <cerrno>
#include <climits>
#include <cstdio>

#include "internal.h"

#define TM_EXPORT extern "C" __attribute__((visibility("default")))

namespace {
struct mallinfo2 info_from_stats() {
  tm_stats s;
  tm_stats_get(&s);
  const tm_ledger& l = s.ledger;
  struct mallinfo2 m = {};
  m.arena = s.arena_mapped + s.large_active;
  m.ordblks = 0;
  for (const tm_class_stats& c : s.classes) m.ordblks += c.blocks_free;
  m.hblks = s.arenas;
  m.hblkhd = s.mapped;
  m.usmblks = s.peak_allocated_seen;
  m.uordblks = s.allocated;
  m.fordblks =
      l.small_free + l.small_pool_slack + l.small_empty_pools + l.large_slack + l.large_dirty;
  m.keepcost = l.small_empty_pools + l.large_dirty;
  return m;
}
int clamp(size_t v) {
  return v > INT_MAX ? INT_MAX : static_cast<int>(v);
}
}  // namespace

TM_EXPORT struct mallinfo2 mallinfo2(void) noexcept {
  return info_from_stats();
}

TM_EXPORT struct mallinfo mallinfo(void) noexcept {
  struct mallinfo2 m = info_from_stats();
  struct mallinfo r = {};
  r.arena = clamp(m.arena);
  r.ordblks = clamp(m.ordblks);
  r.smblks = clamp(m.smblks);
  r.hblks = clamp(m.hblks);
  r.hblkhd = clamp(m.hblkhd);
  r.usmblks = clamp(m.usmblks);
  r.fsmblks = clamp(m.fsmblks);
  r.uordblks = clamp(m.uordblks);
  r.fordblks = clamp(m.fordblks);
  r.keepcost = clamp(m.keepcost);
  return r;
}

// glibc's alias of mallinfo (see __libc_malloc in allocator/override_malloc.cpp).
extern "C" __attribute__((visibility("default"), alias("mallinfo"))) struct mallinfo
__libc_mallinfo(void) noexcept;

// glibc prints to stderr.
TM_EXPORT void malloc_stats(void) noexcept {
  tm_stats_print(stderr, "text");
}

// glibc's XML shape (<malloc version="1"> with <heap>, <sizes>, <total>, <system>), with one
// <heap> for the small pools and one for jemalloc. options must be 0 (EINVAL otherwise).
TM_EXPORT int malloc_info(int options, FILE* fp) noexcept {
  if (options != 0 || fp == nullptr) {
    errno = EINVAL;
    return -1;
  }
  tm_stats s;
  tm_stats_get(&s);
  const tm_ledger& l = s.ledger;
  std::fprintf(fp, "<malloc version=\"1\">\n<heap nr=\"0\" name=\"trimalloc-small\">\n<sizes>\n");
  std::size_t free_blocks = 0, free_bytes = 0;
  for (const tm_class_stats& c : s.classes) {
    if (c.blocks_free == 0) continue;
    std::fprintf(fp, "  <size from=\"%zu\" to=\"%zu\" total=\"%zu\" count=\"%zu\"/>\n",
                 c.block_size, c.block_size, c.blocks_free * c.block_size, c.blocks_free);
    free_blocks += c.blocks_free;
    free_bytes += c.blocks_free * c.block_size;
  }
  std::fprintf(fp, "</sizes>\n<total type=\"fast\" count=\"0\" size=\"0\"/>\n");
  std::fprintf(fp, "<total type=\"rest\" count=\"%zu\" size=\"%zu\"/>\n", free_blocks, free_bytes);
  std::fprintf(fp, "<system type=\"current\" size=\"%zu\"/>\n<system type=\"max\" size=\"%zu\"/>\n",
               s.arena_mapped, s.arena_mapped);
  std::fprintf(fp,
               "<aspace type=\"total\" size=\"%zu\"/>\n<aspace type=\"mprotect\" size=\"%zu\"/>\n",
               s.arena_mapped, s.arena_mapped);
  std::fprintf(fp, "</heap>\n<heap nr=\"1\" name=\"jemalloc-large\">\n<sizes>\n</sizes>\n");
  std::fprintf(fp, "<total type=\"rest\" count=\"0\" size=\"%zu\"/>\n",
               l.large_slack + l.large_dirty);
  std::fprintf(fp, "<system type=\"current\" size=\"%zu\"/>\n<system type=\"max\" size=\"%zu\"/>\n",
               s.large_mapped, s.large_mapped);
  std::fprintf(fp, "</heap>\n");
  std::fprintf(fp, "<total type=\"fast\" count=\"0\" size=\"0\"/>\n");
  std::fprintf(fp, "<total type=\"rest\" count=\"%zu\" size=\"%zu\"/>\n", free_blocks,
               free_bytes + l.large_slack + l.large_dirty);
  std::fprintf(fp, "<total type=\"mmap\" count=\"%zu\" size=\"%zu\"/>\n", s.arenas, s.mapped);
  std::fprintf(fp, "<system type=\"current\" size=\"%zu\"/>\n<system type=\"max\" size=\"%zu\"/>\n",
               s.mapped, s.mapped);
  std::fprintf(fp,
               "<aspace type=\"total\" size=\"%zu\"/>\n<aspace type=\"mprotect\" size=\"%zu\"/>\n",
               s.mapped, s.mapped);
  std::fprintf(fp, "</malloc>\n");
  return 0;
}
