// Pools: 128 KiB runs of equal-sized blocks, the unit a thread heap owns.
//
// Layout. An arena is an 8 MiB-aligned 8 MiB region cut into 64 slots of 128 KiB. Slot 0 holds
// metadata: 64 Pool headers of 128 bytes, header i describing slot i. Header 0 describes the
// metadata slot itself; its second cache line stays all zero, so a pointer into the metadata
// slot is never taken for a block (is_block_start() reads only that line), and its first line
// holds the Arena header (arena.h). The headers fill the slot's first two pages; the rest of the
// slot is never touched (in the hardened build its last page is a guard), so an arena in use
// keeps 8 KiB of metadata resident. Slots 1..63 are pool data (the hardened build turns slot 63
// into a guard, so an overflow off the end of an arena cannot reach the next arena's headers).
// Keeping headers out of line means (a) a pointer's header is found by arithmetic alone -
// arena = p & ~(8 MiB-1), header = arena + ((p >> 17) & 63) * 128 - (b) every data page of a
// pool can be given back to the kernel, and (c) a stray write past a block cannot reach a header.
//
// Why 128 KiB. A pool with one live block keeps its header resident, so headers are the part of
// a fragmented heap that page-level release can never return: 128 bytes per pool is 0.78% of
// the heap with 16 KiB pools (4.1 MiB left resident of a 530 MiB heap after freeing 99% of its
// blocks, where glibc's malloc_trim leaves 1 MiB), and 0.1% with 128 KiB pools. A bigger pool
// costs no memory up front (pages are carved one at a time, below) and fewer trips to the arena
// lock. 32 pages do not fit a per-page bound array in line 1, so free()'s one compare checks
// "a block start below the lowest dormant page" (live_bound, is_block_start_below_dormant()):
// exact for pools carved from the bottom up, and a slow path for live blocks above a page a
// trim released. CPython's geometry (16 KiB pools in 1 MiB arenas) remains a build option,
// TRIMALLOC_POOL_KIB=16; the sizes in this comment are the default's.
//
// Blocks and their lists. Every block of a pool is, at any moment, in exactly one of four places:
//   live     - handed to the program;
//   free     - on `free`, the owner's singly linked list (link in the block's first word);
//   remote   - on `remote`, pushed by a thread that is not the owner (Treiber stack);
//   dormant  - overlapping a page whose bit is set in `dormant`: on no list at all.
// Invariant D: a dormant page holds no live block and no listed block. Fresh pools start with
// every page dormant, so a pool is carved one page at a time when blocks are needed (never
// touching memory early), and page-level release (trim) is the same operation backwards: make a
// page dormant, then madvise it away. `used` counts live + remote blocks; it is written only by
// the owner, so "used == 0" means every block is free or dormant and the pool can go back to
// its arena.
//
// Links are stored XOR-ed with a per-pool random key and checked when popped (a popped link
// must stay inside the same pool), so a use-after-free write into a free block is caught rather
// than turned into an arbitrary allocation. A freed block's second word holds a mark derived
// from the key; a free that finds the mark already there is checked as a double free.
//
// Ownership. `owner` is the heap allowed to touch the owner-only fields. It changes only from
// the owner itself (abandon: owner -> null) or under the abandoned-list lock (adopt: null ->
// heap), so a thread that reads owner == its own heap can trust it without a fence.
//
// Full-pool notification (mimalloc's delayed free, simplified). A pool with nothing to hand out
// is parked on its heap's full list and stops being looked at. Before parking, the owner sets
// kWantNotify in `remote`; the first remote free that sees it clears it, sets kNotifying, pushes
// the pool on the owner's `notified` stack (once: `queued` guards membership) and clears
// kNotifying. An owner that abandons the pool first waits for kNotifying to clear, so no thread
// ever pushes onto a heap that has gone away.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "arena_map.h"
#include "config.h"
#include "os.h"
#include "relaxed.h"
#include "size_class.h"

namespace trimalloc {

class ThreadHeap;

// TRIMALLOC_POOL_SHIFT (CMake: TRIMALLOC_POOL_KIB) picks the pool size, 16 to 128 KiB; an
// arena is always 64 pools. 17 (128 KiB pools, 8 MiB arenas) is the default.
#ifndef TRIMALLOC_POOL_SHIFT
#define TRIMALLOC_POOL_SHIFT 17
#endif
inline constexpr unsigned kPoolShift = TRIMALLOC_POOL_SHIFT;
static_assert(kPoolShift >= 14 && kPoolShift <= 17,
              "pools of 16..128 KiB: is_block_start()'s proof and PageMask assume at most 2^17");
inline constexpr std::size_t kPoolSize = std::size_t{1} << kPoolShift;  // 128 KiB by default
inline constexpr unsigned kArenaShift = kPoolShift + 6;
inline constexpr std::size_t kArenaSize = std::size_t{1} << kArenaShift;  // 8 MiB by default
static_assert(kArenaSize % kSlotSize == 0, "an arena covers whole slots of the arena map");
inline constexpr unsigned kPoolsPerArena = kArenaSize / kPoolSize;  // 64, slot 0 = metadata
static_assert(kPoolsPerArena == 64, "arena masks (free_pools, dirty_pools) are 64-bit words");
inline constexpr unsigned kPageShift = 12;
inline constexpr std::size_t kPageSize = std::size_t{1} << kPageShift;
inline constexpr unsigned kPagesPerPool = kPoolSize / kPageSize;  // 32 by default
inline constexpr std::size_t kPoolHeaderSize = 128;
// The Arena header is the first cache line of pool header 0 (see Layout).
inline constexpr std::size_t kArenaHeaderOffset = 0;
using PageMask = std::uint32_t;  // one bit per page of a pool (the low kPagesPerPool bits)
static_assert(kPagesPerPool <= 8 * sizeof(PageMask), "PageMask has a bit per page");
inline constexpr PageMask kAllPagesDormant =
    kPagesPerPool == 32 ? ~PageMask{0} : (PageMask{1} << kPagesPerPool) - 1;

// Pool::remote packs three things into one word, so that a remote free stays one CAS:
//   bits 0-1   the notification flags (blocks are 16-aligned, so the head never uses them);
//   bits 4-46  the list's head (small arenas lie below 2^47, see arena_map.h);
//   bits 48-63 how many blocks the list holds (at most a pool's capacity, below 2^16).
// The count lets the owner take the whole list as its free list without walking it: the walk
// is one cache miss per block, on lines the freeing thread has just written, all in a row
// (producer/consumer programs collect a long list at every refill).
inline constexpr std::uintptr_t kWantNotify = 1;
inline constexpr std::uintptr_t kNotifying = 2;
inline constexpr std::uintptr_t kRemoteFlags = kWantNotify | kNotifying;
inline constexpr unsigned kRemoteCountShift = 48;
inline constexpr std::uintptr_t kRemoteOne = std::uintptr_t{1} << kRemoteCountShift;
inline constexpr std::uintptr_t kRemoteHeadMask = (kRemoteOne - 1) & ~kRemoteFlags;
static_assert(kAddressBits <= kRemoteCountShift, "a small block's address fits below the count");

struct Block {
  std::uintptr_t link;  // encoded next block
  std::uintptr_t mark;  // free_mark(pool) while free, 0 while live
};

inline Block* remote_head(std::uintptr_t word) noexcept {
  return reinterpret_cast<Block*>(word & kRemoteHeadMask);
}
inline std::uint32_t remote_count(std::uintptr_t word) noexcept {
  return static_cast<std::uint32_t>(word >> kRemoteCountShift);
}

enum class PoolState : std::uint8_t {
  kFree,       // belongs to its arena, not in use
  kAvail,      // owned by a heap, on its class's available list
  kFull,       // owned by a heap, parked on its full list
  kAbandoned,  // its heap's thread exited; on the global abandoned list of its class
};

struct alignas(64) Pool {
  // --- cache line 0: the owner's, written by every allocation and local free ---
  Block* free;  // owner's free list
  // Live + remote blocks in the low 16 bits (pool_used()); bit 31 (kParkedFull) is set while the
  // pool is parked full (state kFull, set_state()), so that free's one decrement of the word
  // says "now empty" (zero) or "was parked" (negative) with one branch. Owner-written.
  std::atomic<std::uint32_t> used;
  std::uint8_t size_class;
  std::atomic<PoolState> state;
  std::uintptr_t list_key;  // == key: the owner's copy, so that malloc never reads line 1
  Pool* next;               // heap class list / abandoned list / (unused while free)
  Pool* prev;
  std::uint64_t freed_at_ms;  // when it went back to its arena dirty (decay; kFree pools only)
  // pool_data(pool) >> kPoolShift, for link_in_pool(). A number, not the address: memcheck
  // would take the address for a pointer to the pool's first block and never report it lost.
  std::uintptr_t data_number;

  // --- cache line 1: fixed while the pool is in use and read by every free, plus the remote
  // list. A thread freeing into another thread's pool touches only this line, so it does not
  // pull line 0 away from the owner at every allocation (producer/consumer programs).
  alignas(64) std::uint16_t block_size;  // 0 while the pool is kFree
  std::uint16_t capacity;                // blocks in the pool; 0 while kFree
  std::uint32_t start_magic;             // is_block_start(): floor(2^32 / block_size) + 1
  std::uint32_t start_bound;             // is_block_start(): capacity * e; 0 while kFree
  std::atomic<PageMask> dormant;         // bit per 4 KiB page, see invariant D
  std::uint8_t index;                    // slot index in the arena, 1..63
  std::atomic<bool> queued;
  std::atomic<std::uint32_t> live_bound;  // start_bound cut at the lowest dormant page
  std::uintptr_t key;                     // link-encoding secret
  std::uintptr_t mark;                    // free_mark(): derived from key once, read by every free
  std::atomic<ThreadHeap*> owner;
  std::atomic<std::uintptr_t> remote;
  std::atomic<Pool*> notify_next;
};
static_assert(sizeof(Pool) <= kPoolHeaderSize, "pool headers must fit the metadata slot");
static_assert(offsetof(Pool, block_size) == 64,
              "line 1 starts at 64 (the Arena header overlays line 0 of header 0)");

inline std::uintptr_t arena_base_of(const void* p) noexcept {
  return reinterpret_cast<std::uintptr_t>(p) & ~(kArenaSize - 1);
}
inline Pool* pool_of(const void* p) noexcept {
  std::uintptr_t a = reinterpret_cast<std::uintptr_t>(p);
  return reinterpret_cast<Pool*>(arena_base_of(p) +
                                 ((a >> kPoolShift) & (kPoolsPerArena - 1)) * kPoolHeaderSize);
}
inline std::uintptr_t pool_data(const Pool* pool) noexcept {
  return arena_base_of(pool) + std::uintptr_t{pool->index} * kPoolSize;
}

inline std::uintptr_t free_mark_of_key(std::uintptr_t key) noexcept {
  return ~key ^ 0x9e3779b97f4a7c15u;
}
inline std::uintptr_t free_mark(const Pool* pool) noexcept {
  return pool->mark;
}
// The key links are stored under (0 in the unchecked build: links stored plain), for loops
// that read it once: stores through a Block* could alias the header, so the compiler would
// otherwise reload pool->list_key for every block.
inline std::uintptr_t link_key(const Pool* pool) noexcept {
  return kChecks ? pool->list_key : 0;
}
inline std::uintptr_t encode_link_with(std::uintptr_t key, const Block* next) noexcept {
  return reinterpret_cast<std::uintptr_t>(next) ^ key;
}
inline std::uintptr_t encode_link(const Pool* pool, const Block* next) noexcept {
  return encode_link_with(link_key(pool), next);
}
// The same encoding from a thread that is not the owner (reads line 1 only).
inline std::uintptr_t encode_remote_link(const Pool* pool, const Block* next) noexcept {
  if constexpr (!kChecks) return reinterpret_cast<std::uintptr_t>(next);
  return reinterpret_cast<std::uintptr_t>(next) ^ pool->key;
}

inline constexpr std::uint32_t kUsedMask = 0xffff;
inline constexpr std::uint32_t kParkedFull = std::uint32_t{1} << 31;
static_assert(kPoolSize / kClassGranule <= kUsedMask, "a pool's block count fits the low half");
inline std::uint32_t pool_used(const Pool* pool) noexcept {
  return pool->used.load(std::memory_order_relaxed) & kUsedMask;
}
// Every state change goes through here, so kParkedFull follows state == kFull. Owner only (or
// a visitor acting as owner, or the abandoned-list lock holder), like every write of `used`.
inline void set_state(Pool* pool, PoolState state) noexcept {
  std::uint32_t used = pool->used.load(std::memory_order_relaxed);
  used = state == PoolState::kFull ? used | kParkedFull : used & ~kParkedFull;
  pool->used.store(used, std::memory_order_relaxed);
  pool->state.store(state, std::memory_order_relaxed);
}

// `used` is written only by the pool's owner (or a visitor acting as owner, with the owner kept
// out by the handshake); other threads only read it. So on x86-64 the owner's fast paths change
// it with one unlocked read-modify-write in memory, and free takes "now empty, or parked" from
// the flags of the decrement: zero, or the sign bit (kParkedFull; the count is at least 1
// before a free, so the decrement never borrows from it). TSan builds and other architectures
// use the atomic's load and store.
inline std::uint32_t& used_word(Pool* pool) noexcept {
  static_assert(sizeof(pool->used) == sizeof(std::uint32_t), "used is a plain 32-bit word");
  return *reinterpret_cast<std::uint32_t*>(&pool->used);
}
inline void used_increment(Pool* pool) noexcept {
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
  asm volatile("incl %0" : "+m"(used_word(pool)));
#else
  pool->used.store(pool->used.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
#endif
}
// Counts `count` blocks freed (one for free(), a run of one pool for tm_free_batch) and returns
// true if the pool is now empty or is parked full: free's slow path decides which. The count was
// at least `count` before, so the subtraction never borrows from kParkedFull, and "zero or
// negative" means empty or parked. (A constant 1 assembles to one `subl $1`, as short as decl.)
inline bool used_subtract_is_empty_or_parked(Pool* pool, std::uint32_t count) noexcept {
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
  bool slow;
  asm volatile("subl %2, %0" : "+m"(used_word(pool)), "=@ccle"(slow) : "ir"(count));
  return slow;
#else
  std::uint32_t used = pool->used.load(std::memory_order_relaxed) - count;
  pool->used.store(used, std::memory_order_relaxed);
  return used == 0 || (used & kParkedFull) != 0;
#endif
}
inline bool used_decrement_is_empty_or_parked(Pool* pool) noexcept {
  return used_subtract_is_empty_or_parked(pool, 1);
}

// Decodes a popped link; a value that leaves the pool means the free block was overwritten.
[[noreturn]] void report_corrupt_free_list(const Pool* pool, const Block* block) noexcept;
// A decoded link outside the pool: the end of the list (0), or report_corrupt_free_list().
void check_list_end(const Pool* pool, const Block* block, std::uintptr_t next) noexcept;
// Does a decoded link point into the pool? One shift and one compare against line 0: the
// end of the list (0) fails it too and is told apart out of line (check_list_end), so that
// malloc need not keep the key in a register to test for it.
inline bool link_in_pool(const Pool* pool, std::uintptr_t next) noexcept {
  return (next >> kPoolShift) == pool->data_number;
}
inline Block* decode_link(const Pool* pool, const Block* block) noexcept {
  if constexpr (!kChecks) return reinterpret_cast<Block*>(block->link);
  // One subtraction and one compare against line 0 (the key is folded into the xor): cheaper
  // than comparing the high bits of `next` with the block's, which needs copies of both.
  std::uintptr_t next = block->link ^ pool->list_key;
  if (__builtin_expect(!link_in_pool(pool, next), 0)) check_list_end(pool, block, next);
  return reinterpret_cast<Block*>(next);
}

// Does `offset` (from the pool's start) begin one of its blocks? One multiply, one compare, no
// division. With m = floor(2^32 / size) + 1 we have m * size = 2^32 + e, 1 <= e <= size. For
// offset = i * size the 32-bit product offset * m is i * e, below 2^17 (the pool size); for any
// other offset (i * size + r, 0 < r < size) it is i * e + r * m, which lies in [2^32 / size,
// 2^32) - at least 2^23 for sizes up to 512 - because r * m > 2^32 / size and
// (size - 1) * m + 2^17 < 2^32. So "product < capacity * e" holds exactly for the starts of
// blocks 0..capacity-1 (the pool's tail past its last block is rejected too).
// tests/core/block_start_test.cpp checks every size and offset. A free pool has both fields 0,
// so nothing in it is a block.
inline bool is_block_start(const Pool* pool, std::uintptr_t offset) noexcept {
  return static_cast<std::uint32_t>(offset) * pool->start_magic < pool->start_bound;
}
// free()'s check, one compare: `offset` starts a block that lies wholly below the pool's lowest
// dormant page. Pages are carved lowest first, so for a pool that was never trimmed that is
// exactly "a block start on a carved page" (invariant D: a block on a dormant page is free, so
// freeing it is a double free). A pool whose pages were released in the middle (a trim or a
// decay visit of a partly used pool) also rejects live blocks above its lowest hole:
// small_free_rejected() decides those exactly, and carving fills the holes first, which brings
// the bound back up. 0 while the pool is kFree or wholly dormant.
inline bool is_block_start_below_dormant(const Pool* pool, std::uintptr_t offset) noexcept {
  // Read by any freeing thread while the owner carves or releases pages: atomic, relaxed (a
  // free of a live block never depends on a bound change it could race with).
  return relaxed_below(static_cast<std::uint32_t>(offset) * pool->start_magic, pool->live_bound);
}
// The same test with the pool's two fields already read (small_free_run reads them once per
// run of blocks).
inline bool block_start_below(std::uintptr_t offset, std::uint32_t start_magic,
                              std::uint32_t live_bound) noexcept {
  return static_cast<std::uint32_t>(offset) * start_magic < live_bound;
}
// Is any page the block at `offset` overlaps dormant? (A block is at most 512 bytes, so it
// overlaps its first page and maybe the next.)
inline bool block_is_dormant(const Pool* pool, std::uintptr_t offset) noexcept {
  const PageMask dormant = pool->dormant.load(std::memory_order_relaxed);
  const unsigned first = static_cast<unsigned>(offset >> kPageShift);
  const unsigned last = static_cast<unsigned>((offset + pool->block_size - 1) >> kPageShift);
  return ((dormant >> first) | (dormant >> last)) & 1;
}
// Every change of `dormant` goes through here, so live_bound follows it: the blocks that end at
// or before the lowest dormant page's first byte, times e (see is_block_start()).
inline void set_dormant(Pool* pool, PageMask dormant) noexcept {
  pool->dormant.store(dormant, std::memory_order_relaxed);
  const std::uint32_t size = pool->block_size;
  if (dormant == 0 || size == 0) {
    pool->live_bound.store(pool->start_bound, std::memory_order_relaxed);  // 0 for a kFree pool
    return;
  }
  const std::uint64_t e = std::uint64_t{pool->start_magic} * size - (std::uint64_t{1} << 32);
  const std::uintptr_t lowest = static_cast<unsigned>(__builtin_ctz(dormant));
  std::uint32_t below = static_cast<std::uint32_t>((lowest << kPageShift) / size);
  if (below > pool->capacity) below = pool->capacity;
  pool->live_bound.store(static_cast<std::uint32_t>(below * e), std::memory_order_relaxed);
}
// Sets block_size, capacity and the is_block_start() constants for blocks of `size` bytes.
inline void set_block_geometry(Pool* pool, std::uint32_t size) noexcept {
  std::uint64_t magic = (std::uint64_t{1} << 32) / size + 1;
  std::uint64_t e = magic * size - (std::uint64_t{1} << 32);
  pool->block_size = static_cast<std::uint16_t>(size);
  pool->capacity = static_cast<std::uint16_t>(kPoolSize / size);
  pool->start_magic = static_cast<std::uint32_t>(magic);
  pool->start_bound = static_cast<std::uint32_t>(pool->capacity * e);
}

// --- pool.cpp ---
void pool_init(Pool* pool, unsigned cls, ThreadHeap* owner) noexcept;
// Carves the lowest dormant page into the free list. False if no page is dormant.
bool pool_revive_page(Pool* pool) noexcept;
// Carves every page of `pages` that is dormant (a reused pool's pages still resident).
void pool_revive_pages(Pool* pool, PageMask pages) noexcept;
// Moves the remote list onto the free list; returns how many blocks came back.
std::size_t pool_collect_remote(Pool* pool) noexcept;
// Page ranges made dormant (or free pools) not yet given back. A trim releases pages pool by
// pool; one madvise per pool would be one system call - and, with other threads running, one
// TLB shoot-down interrupting each of them - per few pages. Ranges are collected, sorted and
// merged (neighbouring pools of an arena are adjacent in memory), then purged together with
// os::purge_ranges (one process_madvise, one TLB flush, per 512 ranges where the kernel can).
// Invariant: flush() runs before the caller stops acting as the pools' owner (leaves the heap,
// ends the visit, drops the abandoned lock), because only the owner could revive a dormant page,
// and a page revived before its purge would lose the blocks carved into it.
class PurgeBatch {
 public:
  PurgeBatch() = default;
  PurgeBatch(const PurgeBatch&) = delete;
  PurgeBatch& operator=(const PurgeBatch&) = delete;
  ~PurgeBatch() { flush(); }
  void add(std::uintptr_t start, std::size_t bytes) noexcept;
  void flush() noexcept;

 private:
  static constexpr unsigned kRanges = 256;
  os::Range ranges_[kRanges];
  unsigned count_ = 0;
};

// Makes every page that holds no live block dormant and hands it to `batch` to be purged;
// returns bytes released. Owner (or lock holder for abandoned pools) only; remote list must be
// collected first.
std::size_t pool_release_free_pages(Pool* pool, PurgeBatch& batch) noexcept;
// Blocks of `size` bytes, `capacity` to the pool, that overlap no page of `dormant`: the carved
// blocks, of which those not `used` are on a free list. Exact (stats reports it); O(1) for a
// pool with no dormant page, the common case for pools in use.
std::size_t pool_carved_blocks(std::size_t size, std::size_t capacity, PageMask dormant) noexcept;
// True if `block` is on the free or remote list (slow; used to confirm a suspected double free).
bool pool_block_is_free(const Pool* pool, const Block* block) noexcept;
// Clears kWantNotify and waits out an in-flight notification (owner only).
void pool_cancel_notify(Pool* pool, bool single_threaded) noexcept;
// Hardened build only: zero a freed block's body (all but the link and mark words), and check
// at allocation that nobody wrote into it while it was free.
void secure_scrub(const Pool* pool, Block* b) noexcept;
void secure_check_untouched(const Pool* pool, const Block* b, const char* call = "malloc") noexcept;
// The mark of a block held in the hardened build's quarantine (freed, not yet reusable).
inline std::uintptr_t quarantine_mark(const Pool* pool) noexcept {
  return free_mark(pool) ^ 0x5bd1e9955bd1e995u;
}
// Remote free: push `block` on the pool's remote list, notifying the owner if it asked.
void pool_push_remote(Pool* pool, Block* block) noexcept;

}  // namespace trimalloc
