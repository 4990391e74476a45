// The secondary allocator: blocks over 512 bytes (and alignments pools do not give) go to an
// embedded copy of Debian's jemalloc whose public symbols were renamed at build time
// (malloc -> tm_je_malloc, ...; see embed_jemalloc.cmake), so the program only ever sees
// trimalloc's malloc and jemalloc's own internal calls stay inside jemalloc.
//
// trimalloc's large blocks live in a dedicated jemalloc arena whose extent hooks take memory
// from os::reserve_aligned() in whole, 1 MiB-aligned MiB and mark it in the arena map. So
// free() can tell "jemalloc's" from "nobody's" with one byte compare, mmap failure injection covers
// large blocks too, and statistics know exactly what jemalloc has mapped.
#pragma once
#include <array>
#include <cstddef>

#include "arena_map.h"

namespace trimalloc {

bool large_init() noexcept;
// size > 0. nullptr + ENOMEM on failure. alignment: power of two, 0 = default.
void* large_alloc(std::size_t size, std::size_t alignment, bool zero) noexcept;
// large_alloc(size, 0, false), malloc's case, with a shorter common path.
void* large_malloc(std::size_t size) noexcept;
void* large_realloc(void* p, std::size_t size) noexcept;
void large_free(void* p) noexcept;
void large_free_sized(void* p, std::size_t size, std::size_t alignment) noexcept;
std::size_t large_usable_size(const void* p) noexcept;
// Every large block lives in memory the extent hooks mapped (before init there is none).
inline bool large_owns(const void* p) noexcept {
  return g_arena_map.contains(SlotKind::kLarge, p);
}
// Purges every arena's dirty pages, again while some are left (bounded: see purge_until_clean in
// large.cpp), and this thread's jemalloc cache; bytes purged (estimated from jemalloc's resident
// counter before and after).
std::size_t large_purge() noexcept;
// jemalloc's decay step on every arena (what their decay curves say is due), taking turns with the
// other purges.
void large_decay_step() noexcept;
// The main arena's purge-at-once threshold (large.cpp, "big blocks that come back"). wanted:
// the extent hooks asked for a raise; apply: makes it if `keep` (a decay thread runs to give
// kept blocks back) and forgets it otherwise (from allocation slow paths). expire: puts the
// starting 8 MiB back once no raise was asked for in a while, or at once (decay turned off or
// to 0).
bool large_oversize_wanted() noexcept;
void large_oversize_apply(bool keep) noexcept;
bool large_oversize_expire(bool at_once) noexcept;  // true: still raised
// After a failed mapping: flushes this thread's jemalloc cache and purges the arena until
// nothing dirty is left (for at most 10 ms), which unmaps every region left wholly free. True
// (try once more) once the arena exists.
bool large_release_address_space() noexcept;
// Freed pages the arenas keep (jemalloc's pdirty, refreshed through its "epoch"); 0 before init.
std::size_t large_dirty_bytes() noexcept;
// jemalloc's mallctl on the renamed copy, for statistics and options.
int large_mallctl(const char* name, void* oldp, std::size_t* oldlenp, void* newp,
                  std::size_t newlen) noexcept;
// Every jemalloc arena, each mapping through trimalloc's hooks: jemalloc's automatic arena 0
// (see large.cpp, "arena 0"), the main arena and, once a realloc has needed it, the growth
// arena (realloc's blocks of 1 MiB or more, purged when freed).
struct LargeArenas {
  std::array<unsigned, 3> index;
  unsigned count;
  const unsigned* begin() const noexcept { return index.data(); }
  const unsigned* end() const noexcept { return index.data() + count; }
};
LargeArenas large_arena_indices() noexcept;
std::size_t large_mapped_bytes() noexcept;  // bytes the extent hooks have mapped
// The same, less what they had mapped for jemalloc's own metadata when the arenas were created.
std::size_t large_mapped_since_init() noexcept;

}  // namespace trimalloc
