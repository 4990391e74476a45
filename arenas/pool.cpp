#include "pool.h"

#include <cstring>

#include "config.h"
#include "fatal.h"
#include "heap.h"
#include "os.h"
#include "random.h"

namespace trimalloc {

void report_corrupt_free_list(const Pool*, const Block* block) noexcept {
  fatal("malloc", "free list corrupted (write after free?) at block", block);
}

void check_list_end(const Pool* pool, const Block* block, std::uintptr_t next) noexcept {
  if (next != 0) report_corrupt_free_list(pool, block);
}

void pool_init(Pool* pool, unsigned cls, ThreadHeap* owner) noexcept {
  std::uint32_t size = static_cast<std::uint32_t>(class_block_size(cls));
  pool->free = nullptr;
  pool->data_number = pool_data(pool) >> kPoolShift;
  set_block_geometry(pool, size);
  pool->used.store(0, std::memory_order_relaxed);
  pool->size_class = static_cast<std::uint8_t>(cls);
  // Invariant D from the start: nothing is carved, whether the pages are fresh or reused.
  set_dormant(pool, kAllPagesDormant);
  pool->key = random_word() | 1;
  pool->list_key = pool->key;
  pool->mark = free_mark_of_key(pool->key);
  pool->next = pool->prev = nullptr;
  pool->remote.store(0, std::memory_order_relaxed);
  pool->notify_next.store(nullptr, std::memory_order_relaxed);
  pool->queued.store(false, std::memory_order_relaxed);
  set_state(pool, PoolState::kAvail);
  pool->owner.store(owner, std::memory_order_release);
}

namespace {
// First and last page a block overlaps.
inline unsigned first_page(std::uintptr_t start) {
  return static_cast<unsigned>(start >> kPageShift);
}
inline unsigned last_page(std::uintptr_t start, std::uint32_t size) {
  return static_cast<unsigned>((start + size - 1) >> kPageShift);
}
// A block is at most 512 bytes, so it overlaps one page or two neighbouring ones.
inline PageMask pages_mask(unsigned first, unsigned last) {
  static_assert(kSmallMax <= kPageSize, "a block overlaps at most two pages");
  return (PageMask{1} << first) | (PageMask{1} << last);
}

// Carves dormant page `page` into the free list.
void revive(Pool* pool, unsigned page) noexcept {
  PageMask dormant = pool->dormant.load(std::memory_order_relaxed) & ~(PageMask{1} << page);
  set_dormant(pool, dormant);

  // Push, highest address first, every block that overlaps this page and no other dormant page,
  // so the list hands blocks out in address order (better locality, and low pages fill first).
  const std::uint32_t size = pool->block_size;
  const std::uintptr_t base = pool_data(pool);
  std::uintptr_t page_start = std::uintptr_t{page} << kPageShift;
  long first = static_cast<long>(page_start / size);
  long last = static_cast<long>((page_start + kPageSize - 1) / size);
  if (last >= pool->capacity) last = pool->capacity - 1;
  Block* head = pool->free;
  if constexpr (kSecure) {
    // Hardened: hand the page's blocks out in random order, and zero them so the
    // write-after-free check at allocation has a known state to compare against.
    std::uint16_t order[kPageSize / kClassGranule + 1];
    unsigned n = 0;
    for (long j = first; j <= last; ++j) {
      std::uintptr_t start = static_cast<std::uintptr_t>(j) * size;
      if (!(pages_mask(first_page(start), last_page(start, size)) & dormant))
        order[n++] = static_cast<std::uint16_t>(j);
    }
    std::uint64_t x = random_word() | 1;
    for (unsigned i = n; i > 1; --i) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;  // xorshift64
      unsigned k = static_cast<unsigned>(x % i);
      std::uint16_t t = order[i - 1];
      order[i - 1] = order[k];
      order[k] = t;
    }
    for (unsigned i = 0; i < n; ++i) {
      Block* b = reinterpret_cast<Block*>(base + std::uintptr_t{order[i]} * size);
      std::memset(b, 0, size);
      b->link = encode_link(pool, head);
      b->mark = free_mark(pool);
      head = b;
    }
    pool->free = head;
    return;
  }
  // Only the first and the last block can reach into a neighbouring page, so only they are
  // checked against `dormant` (invariant D); the blocks between are pushed in a plain loop.
  // The key and the mark are read once (see link_key()).
  const std::uintptr_t key = link_key(pool);
  const std::uintptr_t mark = free_mark(pool);
  auto push = [&](std::uintptr_t start) {
    Block* b = reinterpret_cast<Block*>(base + start);
    b->link = encode_link_with(key, head);
    b->mark = mark;
    head = b;
  };
  auto pushable = [&](long j) {
    std::uintptr_t start = static_cast<std::uintptr_t>(j) * size;
    return !(pages_mask(first_page(start), last_page(start, size)) & dormant);
  };
  // first <= last: every page holds the start of a block (blocks are at most 512 bytes, and
  // the pool's tail past its last block is shorter than one).
  if (pushable(last)) push(static_cast<std::uintptr_t>(last) * size);
  for (long j = last - 1; j > first; --j) push(static_cast<std::uintptr_t>(j) * size);
  if (first < last && pushable(first)) push(static_cast<std::uintptr_t>(first) * size);
  pool->free = head;
}
}  // namespace

bool pool_revive_page(Pool* pool) noexcept {
  PageMask dormant = pool->dormant.load(std::memory_order_relaxed);
  if (dormant == 0) return false;
  revive(pool, static_cast<unsigned>(__builtin_ctz(dormant)));
  return true;
}

void pool_revive_pages(Pool* pool, PageMask pages) noexcept {
  pages &= pool->dormant.load(std::memory_order_relaxed);
  // Highest first: each page's blocks go on top, so the list ends up in address order.
  while (pages) {
    unsigned page = 31 - static_cast<unsigned>(__builtin_clz(pages));
    pages &= ~(PageMask{1} << page);
    revive(pool, page);
  }
}

void secure_scrub(const Pool* pool, Block* b) noexcept {
  std::memset(reinterpret_cast<char*>(b) + sizeof(Block), 0, pool->block_size - sizeof(Block));
}

void secure_check_untouched(const Pool* pool, const Block* b, const char* call) noexcept {
  const auto* words = reinterpret_cast<const std::uint64_t*>(b);
  for (std::size_t i = sizeof(Block) / 8; i < pool->block_size / 8; ++i)
    if (words[i] != 0) fatal(call, "write after free detected in block", b);
}

std::size_t pool_collect_remote(Pool* pool) noexcept {
  if (remote_head(pool->remote.load(std::memory_order_relaxed)) == nullptr) return 0;
  // Keep kNotifying (a notification may be in flight); drop the list and kWantNotify.
  const std::uintptr_t taken = pool->remote.fetch_and(kNotifying, std::memory_order_acquire);
  Block* first = remote_head(taken);
  if (first == nullptr) return 0;
  const std::uint32_t n = remote_count(taken);
  if (pool->free == nullptr) {
    // The usual case (a refill found the free list empty): the list becomes the free list as it
    // is. Its links use the free list's encoding, and each is checked when popped.
    pool->free = first;
  } else {
    Block* tail = first;
    for (Block* next; (next = decode_link(pool, tail)) != nullptr;) tail = next;
    tail->link = encode_link(pool, pool->free);
    pool->free = first;
  }
  pool->used.store(pool->used.load(std::memory_order_relaxed) - n, std::memory_order_relaxed);
  return n;
}

void pool_push_remote(Pool* pool, Block* block) noexcept {
  std::uintptr_t head = pool->remote.load(std::memory_order_relaxed);
  std::uintptr_t desired;
  do {
    block->link = encode_remote_link(pool, remote_head(head));
    // One more block, the flags as they were ...
    desired = reinterpret_cast<std::uintptr_t>(block) | ((head & ~kRemoteHeadMask) + kRemoteOne);
    // ... except that the notification is taken if it is wanted and nobody else delivers one.
    if ((head & kRemoteFlags) == kWantNotify) desired ^= kWantNotify | kNotifying;
  } while (!pool->remote.compare_exchange_weak(head, desired, std::memory_order_release,
                                               std::memory_order_relaxed));
  if ((head & kRemoteFlags) != kWantNotify) return;

  // We own the notification: the owner parked this pool as full and wants to hear about it.
  ThreadHeap* owner = pool->owner.load(std::memory_order_acquire);
  if (owner != nullptr && !pool->queued.exchange(true, std::memory_order_acq_rel)) {
    owner->push_notified(pool);
  }
  pool->remote.fetch_and(~kNotifying, std::memory_order_release);
}

void pool_cancel_notify(Pool* pool, bool single_threaded) noexcept {
  std::uintptr_t v = pool->remote.load(std::memory_order_acquire);
  for (;;) {
    if ((v & kNotifying) && !single_threaded) {
      __builtin_ia32_pause();
      v = pool->remote.load(std::memory_order_acquire);
      continue;
    }
    if (pool->remote.compare_exchange_weak(v, v & ~kRemoteFlags, std::memory_order_acq_rel,
                                           std::memory_order_acquire))
      return;
  }
}

// By runs of carved pages: blocks that lie wholly inside a run [a, b] start at or after a's
// first byte and end at or before b's last, and a block crossing into a dormant page belongs to
// no run.
std::size_t pool_carved_blocks(std::size_t size, std::size_t capacity, PageMask dormant) noexcept {
  if (dormant == 0) return capacity;
  const std::size_t end = capacity * size;
  std::size_t n = 0;
  for (unsigned page = 0; page < kPagesPerPool;) {
    if ((dormant >> page) & 1) {
      ++page;
      continue;
    }
    unsigned last = page;
    while (last + 1 < kPagesPerPool && !((dormant >> (last + 1)) & 1)) ++last;
    std::size_t lo = std::size_t{page} << kPageShift;
    std::size_t hi = std::size_t{last + 1} << kPageShift;
    if (hi > end) hi = end;
    std::size_t first_block = (lo + size - 1) / size, past_last = hi / size;
    if (past_last > first_block) n += past_last - first_block;
    page = last + 1;
  }
  return n;
}

bool pool_block_is_free(const Pool* pool, const Block* block) noexcept {
  for (const Block* b = pool->free; b != nullptr; b = decode_link(pool, b))
    if (b == block) return true;
  for (const Block* b = remote_head(pool->remote.load(std::memory_order_acquire)); b != nullptr;
       b = decode_link(pool, b))
    if (b == block) return true;
  return false;
}

void PurgeBatch::add(std::uintptr_t start, std::size_t bytes) noexcept {
  if (count_ > 0 && ranges_[count_ - 1].end == start) {
    ranges_[count_ - 1].end += bytes;
    return;
  }
  if (count_ == kRanges) flush();
  ranges_[count_++] = {start, start + bytes};
}

void PurgeBatch::flush() noexcept {
  // Insertion sort (ranges arrive mostly in order already), then merge neighbours in place.
  for (unsigned i = 1; i < count_; ++i) {
    os::Range r = ranges_[i];
    unsigned j = i;
    for (; j > 0 && ranges_[j - 1].start > r.start; --j) ranges_[j] = ranges_[j - 1];
    ranges_[j] = r;
  }
  unsigned merged = 0;
  for (unsigned i = 0; i < count_; ++i) {
    if (merged > 0 && ranges_[merged - 1].end == ranges_[i].start)
      ranges_[merged - 1].end = ranges_[i].end;
    else
      ranges_[merged++] = ranges_[i];
  }
  os::purge_ranges(ranges_, merged);
  count_ = 0;
}

std::size_t pool_release_free_pages(Pool* pool, PurgeBatch& batch) noexcept {
  const std::uint32_t size = pool->block_size;
  const std::uint16_t capacity = pool->capacity;
  const std::uintptr_t base = pool_data(pool);
  PageMask dormant = pool->dormant.load(std::memory_order_relaxed);
  if (dormant == kAllPagesDormant) return 0;

  // Which blocks are free: listed, or already dormant (they overlap a dormant page).
  std::uint64_t is_free[kPoolSize / kClassGranule / 64] = {};
  for (const Block* b = pool->free; b != nullptr; b = decode_link(pool, b)) {
    std::size_t j = (reinterpret_cast<std::uintptr_t>(b) - base) / size;
    is_free[j >> 6] |= std::uint64_t{1} << (j & 63);
  }
  // A page can go when every block overlapping it is free.
  PageMask releasable = 0;
  for (unsigned page = 0; page < kPagesPerPool; ++page) {
    if (dormant & (PageMask{1} << page)) continue;
    std::uintptr_t page_start = std::uintptr_t{page} << kPageShift;
    std::size_t first = page_start / size;
    std::size_t last = (page_start + kPageSize - 1) / size;
    if (last >= capacity) last = capacity - 1;
    bool all_free = true;
    for (std::size_t j = first; j <= last && all_free; ++j) {
      bool listed = (is_free[j >> 6] >> (j & 63)) & 1;
      std::uintptr_t start = j * size;
      bool asleep = pages_mask(first_page(start), last_page(start, size)) & dormant;
      all_free = listed || asleep;
    }
    // The tail of a pool past its last block belongs to the last page; a page holding no block
    // start at all (first > last) is free by definition.
    if (all_free) releasable |= PageMask{1} << page;
  }
  if (releasable == 0) return 0;

  // Invariant D: unlink every listed block that touches a page about to become dormant, then
  // purge. Rebuilding in address order keeps allocation low-address-first.
  dormant |= releasable;
  Block* head = nullptr;
  for (std::size_t j = capacity; j-- > 0;) {
    if (!((is_free[j >> 6] >> (j & 63)) & 1)) continue;
    std::uintptr_t start = j * size;
    if (pages_mask(first_page(start), last_page(start, size)) & dormant) continue;
    Block* b = reinterpret_cast<Block*>(base + start);
    b->link = encode_link(pool, head);
    head = b;
  }
  pool->free = head;
  set_dormant(pool, dormant);

  std::size_t purged = 0;
  for (unsigned page = 0; page < kPagesPerPool; ++page) {
    if (!(releasable & (PageMask{1} << page))) continue;
    // Coalesce runs of adjacent pages into one madvise.
    unsigned end = page;
    while (end + 1 < kPagesPerPool && (releasable & (PageMask{1} << (end + 1)))) ++end;
    std::size_t bytes = std::size_t{end - page + 1} << kPageShift;
    std::uintptr_t start = base + (std::uintptr_t{page} << kPageShift);
    batch.add(start, bytes);
    purged += bytes;
    page = end;
  }
  return purged;
}

}  // namespace trimalloc
