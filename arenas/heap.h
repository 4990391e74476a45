// ThreadHeap: the per-thread owner of pools, and the small-block fast paths.
//
// Every thread allocates from its own heap, found through one initial-exec TLS load; nothing on
// the fast paths takes a lock or issues an atomic read-modify-write:
//   malloc: pool = current[class]; pop pool->free.
//   free:   pool = header_of(p) (arithmetic); if pool->owner is this thread's heap, push on
//           pool->free; otherwise one CAS onto pool->remote (see pool.h).
// A thread that has not allocated yet points at g_empty_heap, whose current pools are a shared
// empty sentinel, so its first malloc falls into the slow path, which creates the real heap.
//
// Per class the heap keeps `current` (head of the available list), the available list (pools
// that have, or may have, blocks to give) and the full list (parked pools; see pool.h for how a
// remote free brings one back). A pool whose last block is freed goes back to the arena unless
// it is the class's only available pool (then it is kept, so that a malloc/free loop around an
// empty heap does not hit the arena lock every time).
//
// Visiting. A heap's pools are owner-only, but an idle thread (a Python program that did
// `del big_list` and sleeps) must still give memory back. A visitor (the decay thread, or
// tm_trim(TM_TRIM_ALL) on another thread) may act as the owner while the owner is outside the
// allocator. Owner: busy += 1, compiler barrier, read `visited` (no fence; busy counts nested
// entries, see enter_fast; the fast paths, which enter only when busy is 0, store 1 and 0 instead
// of counting, see enter_outermost).
// Visitor: visited = 1, membarrier(PRIVATE_EXPEDITED) - which puts a full fence into every running
// thread of the process - then read `busy`. Either the visitor sees busy != 0 and backs off, or the
// owner's next read of `visited` sees 1 and it waits until the visit is over. Where membarrier is
// unavailable visits are simply not made (see visit.h); TSan builds use seq_cst operations instead,
// which TSan can model.
//
// When a thread exits its pools are abandoned: empty ones go to their arenas, the others onto
// a global per-class list with owner = null, where the next heap needing that class adopts them
// (remote frees keep arriving meanwhile). After fork() the child keeps only the forking
// thread's heap; other threads' pools are left as they were (no thread will touch them again,
// and their state may be mid-update), which leaks at most what those threads held.
#pragma once
#include <atomic>
#include <cstddef>

#include "arena_map.h"
#include "config.h"
#include "fatal.h"
#include "lock.h"
#include "pool.h"
#include "relaxed.h"
#include "size_class.h"

namespace trimalloc {

struct ClassList {
  Pool* head = nullptr;
  Pool* tail = nullptr;
};

class ThreadHeap {
 public:
  constexpr ThreadHeap() noexcept;

  // Fast path for class `cls`; nullptr with errno = ENOMEM when memory is exhausted. Both
  // cold paths are tail calls that leave() themselves, so the hot path needs no stack frame.
  void* alloc(std::size_t cls) noexcept {  // size_t: indexes current_ without a zero-extension
    if (__builtin_expect(!enter_outermost(), 0)) return alloc_nested(cls);
    if (__builtin_expect(visitor_present(), 0)) return alloc_after_visit(cls);
    Pool* pool = current_[cls];
    Block* b = pool->free;
    if (__builtin_expect(b == nullptr, 0)) return alloc_slow_and_leave(cls);
    if constexpr (kSecure) secure_check_untouched(pool, b);
    Block* next = reinterpret_cast<Block*>(b->link);
    if constexpr (kChecks) {
      // decode_link() with its out-of-pool case (the list's end, or a corrupt link) as a tail
      // call, so that the hot path keeps no register across a call and needs no stack frame.
      std::uintptr_t decoded = b->link ^ pool->list_key;
      if (__builtin_expect(!link_in_pool(pool, decoded), 0))
        return pop_last_and_leave(pool, b, decoded);
      next = reinterpret_cast<Block*>(decoded);
    }
    pool->free = next;
    used_increment(pool);
    if constexpr (kChecks) b->mark = 0;
    leave_outermost();
    return b;
  }

  // Owner side of the visit handshake (see the top of this file). `busy_` is a depth: the
  // allocator can re-enter itself (pthread_create starting the decay thread from inside malloc
  // calls malloc), and only the outermost entry may wait for a visitor - an inner one waiting
  // would let the visitor in while the outer call is half done.
  // enter_fast() announces the entry; the caller must then check visited_ (enter() does both).
  // Only the owner writes busy_ (visitors read it), so on x86-64 entering and leaving are one
  // unlocked increment and decrement of it in memory: no depth has to be kept in a register and
  // handed to the slow paths, which read it back with depth(). The asm's memory clobber is the
  // compiler barrier the handshake needs (the visitor's membarrier orders the CPU side); stores
  // are released on x86 anyway. TSan builds use the atomics, which TSan understands.
  void enter_fast() noexcept {
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
    asm volatile("incl %0" : "+m"(busy_word()) : : "memory");
#elif defined(__SANITIZE_THREAD__)
    busy_.store(busy_.load(std::memory_order_relaxed) + 1, std::memory_order_seq_cst);
#else
    busy_.store(busy_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);
#endif
  }
  // The fast paths' entry: busy_ = 1 and true if no call of this thread is inside the heap;
  // false, with nothing changed, if one is (the allocator re-entered from one of its slow paths,
  // or from a signal handler), and the caller then takes the counted way (enter_fast/leave).
  // Stores of constants rather than an increment and a decrement in memory: each of those reads
  // the word the previous one wrote, so a malloc+free pair made a chain of four such
  // read-modify-writes; the stores took 3-5% off the pair's time (docs/bench.md, "Twenty-first
  // session"). The test's load only feeds a predicted branch, so it starts no chain.
  // Invariant: between enter_outermost() and leave_outermost() busy_ is 1 again whenever this
  // call runs (a nested call counts up and back down), so storing 0 is the decrement.
  bool enter_outermost() noexcept {
    if (__builtin_expect(busy_.load(std::memory_order_relaxed) != 0, 0)) return false;
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
    asm volatile("movl $1, %0" : "=m"(busy_word()) : : "memory");
#else
    enter_fast();
#endif
    return true;
  }
  // The exit of a call that entered with enter_outermost(). busy_ is 1 here (see the invariant
  // above), so storing 0 does what leave() would; the slow paths such a call tail-calls still
  // leave() with the decrement.
  void leave_outermost() noexcept {
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
    asm volatile("movl $0, %0" : "=m"(busy_word()) : : "memory");
#else
    leave();
#endif
  }
  // Entries of this thread below the current one (0: the outermost), between enter and leave.
  std::uint32_t depth() const noexcept {
    return busy_.load(std::memory_order_relaxed) - 1;
  }
  bool visitor_present() const noexcept {
#if defined(__SANITIZE_THREAD__)
    return visited_.load(std::memory_order_seq_cst) != 0;
#else
    return relaxed_nonzero(visited_);
#endif
  }
  void enter() noexcept {
    enter_fast();
    if (__builtin_expect(visitor_present(), 0) && depth() == 0) wait_for_visitor();
  }
  void wait_for_visitor() noexcept;  // outermost entry found visited_ set
  void leave() noexcept {
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
    asm volatile("decl %0" : "+m"(busy_word()) : : "memory");
#else
    busy_.store(busy_.load(std::memory_order_relaxed) - 1, std::memory_order_release);
#endif
  }
  // Visitor side: true if the caller may now act as this heap's owner, until end_visit().
  bool begin_visit() noexcept;
  void end_visit() noexcept {
    visited_.store(0, std::memory_order_release);
  }

  // Pushes a block this heap owns onto its pool's free list; true if the pool now needs
  // free_slow(): it was parked full, or it is empty and not the class's sole available pool.
  // The sole available pool stays, empty (see free_slow): a malloc/free loop around an empty
  // heap lands on that test at every free, so it is decided without a call. (The whole `used`
  // word is 0 only if the pool is empty and not parked.)
  [[gnu::always_inline]] bool push_local(Pool* pool, Block* b) noexcept {
    b->link = encode_link(pool, pool->free);
    pool->free = b;
    if (__builtin_expect(!used_decrement_is_empty_or_parked(pool), 1)) return false;
    return !is_sole_empty_pool(pool);
  }
  // After a free left `pool` empty or parked: true if it is empty, not parked, and its class's
  // only available pool, which stays as it is (free_slow has nothing to do for it).
  [[gnu::always_inline]] bool is_sole_empty_pool(const Pool* pool) const noexcept {
    return pool->used.load(std::memory_order_relaxed) == 0 && pool->next == nullptr &&
           avail_[pool->size_class].head == pool;
  }

  // Free of a block this heap owns, inside enter_fast()/visitor check; leaves. The caller has
  // already written the free mark into `b` (small_free does it while the mark is in a register).
  void free_local(Pool* pool, Block* b) noexcept {
    if (__builtin_expect(push_local(pool, b), 0)) return free_slow_and_leave(pool);
    leave();
  }
  // free_local() after enter_outermost(): the same, leaving with leave_outermost().
  void free_local_outermost(Pool* pool, Block* b) noexcept {
    if (__builtin_expect(push_local(pool, b), 0)) return free_slow_and_leave(pool);
    leave_outermost();
  }

  // small_free_run()'s publication of a run: `count` blocks of `pool`, each marked free and
  // linked in front of the pool's free list, the last of them `head`. Counts them freed with
  // one subtraction and, if the pool is now empty or was parked, runs free_slow() as
  // push_local() would have for the run's last block. The heap stays entered, so that a batch
  // of frees enters and leaves once.
  void free_run_in_batch(Pool* pool, Block* head, std::uint32_t count) noexcept {
    pool->free = head;
    if (__builtin_expect(!used_subtract_is_empty_or_parked(pool, count), 1)) return;
    if (!is_sole_empty_pool(pool)) free_slow(pool);
  }

  // Called by a remote freer that owns a pool's notification (pool.cpp).
  void push_notified(Pool* pool) noexcept;

  // Slow-path work other modules need.
  void* alloc_slow(unsigned cls) noexcept;
  void* alloc_slow_and_leave(unsigned cls) noexcept;
  void* alloc_after_visit(unsigned cls) noexcept;
  void* alloc_nested(unsigned cls) noexcept;  // alloc() found busy_ != 0
  // alloc() of `b` whose decoded link leaves the pool: the last block, or a corrupt link.
  void* pop_last_and_leave(Pool* pool, Block* b, std::uintptr_t next) noexcept;
  void free_slow(Pool* pool) noexcept;
  void free_slow_and_leave(Pool* pool) noexcept;
  void abandon(bool single_threaded) noexcept;  // thread exit / fork child
  void reset() noexcept;                        // fresh state for a new or recycled heap
  // Owner only: returns this heap's empty pools to their arenas (the arena purge that follows
  // gives their pages back) and, if release_pages, purges free pages of the others (bytes).
  std::size_t trim_own(bool release_pages) noexcept;
  // Owner only, from the allocation slow path while shrink_requested is set: gives back the free
  // pages of the next few pools (kShrinkPoolsPerStep), so a thread that never idles long enough
  // to be visited still returns memory it freed, in slices that never hold it up for long.
  // Clears the request after a pass over every class. Bytes released.
  std::size_t shrink_step() noexcept;

  template <typename Fn>
  void for_each_pool(Fn&& fn) noexcept {
    for (unsigned c = 0; c < kClassCount; ++c) {
      for (Pool* p = avail_[c].head; p; p = p->next) fn(p);
      for (Pool* p = full_[c].head; p; p = p->next) fn(p);
    }
  }

  // Owner-written, visitor-read: when the heap last took a slow path, and the free bytes the
  // decay thread saw in its pools at its last visit (to skip fruitless visits).
  std::atomic<std::uint64_t> last_slow_ms{0};
  std::size_t free_bytes_at_visit = 0;
  std::size_t scan_free_bytes = 0;  // decay thread's scratch
  // A busy heap (a slow path within the decay time, so never visited) that has held at least
  // kShrinkWorthBytes of free blocks since busy_free_since_ms, for a whole decay time, is asked
  // to give their pages back itself (shrink_step). Set by the decay thread, cleared by the owner.
  std::atomic<bool> shrink_requested{false};
  // Decay thread's (reset() clears it too, hence atomic), 0 = below the threshold.
  std::atomic<std::uint64_t> busy_free_since_ms{0};

  // Registry (thread.cpp): every heap ever created, for statistics and trim.
  ThreadHeap* registry_next = nullptr;
  ThreadHeap* free_next = nullptr;  // on the recycled-heaps list
  std::atomic<bool> live{false};
  // The hardened build's quarantine of this heap's thread (allocator/quarantine.cpp; opaque
  // here), set and cleared by its owner inside enter()/leave(), so that a visitor may empty it
  // (g_on_visited_heap, trim.h). Null in the default build and before the thread's first free.
  void* quarantine = nullptr;
  // The bytes that quarantine holds, published by the owner (inside enter()/leave()) so that the
  // decay pass can tell an idle heap whose quarantine is worth emptying (trim.cpp); a visitor
  // that empties it stores 0.
  std::atomic<std::size_t> quarantined_bytes{0};

 private:
  void drain_notified() noexcept;
  void release_to_arena(Pool* pool) noexcept;
  void unpark_all() noexcept;
  bool park_full(Pool* pool) noexcept;
  void list_push_front(ClassList& list, Pool* pool) noexcept;
  void list_remove(ClassList& list, Pool* pool) noexcept;
  void make_current(unsigned cls, Pool* pool) noexcept;
  void* pop_from(Pool* pool) noexcept;

  unsigned shrink_class_ = 0;  // where shrink_step() goes on: class, and pools of it done
  unsigned shrink_done_ = 0;
  Pool* current_[kClassCount];
  ClassList avail_[kClassCount];
  ClassList full_[kClassCount];
  std::atomic<Pool*> notified_{nullptr};
  std::atomic<std::uint32_t> busy_{0};
  // busy_'s storage for the owner's unlocked increment and decrement (see enter_fast()).
  std::uint32_t& busy_word() noexcept {
    static_assert(sizeof(busy_) == sizeof(std::uint32_t), "busy_ is a plain 32-bit word");
    return *reinterpret_cast<std::uint32_t*>(&busy_);
  }
  std::atomic<std::uint8_t> visited_{0};
};

// The sentinel pool every current_[] starts on: no free blocks, so the fast path falls through.
extern Pool g_empty_pool;
extern ThreadHeap g_empty_heap;

constexpr ThreadHeap::ThreadHeap() noexcept : current_{} {
  for (auto& p : current_) p = &g_empty_pool;
}

// Thread-local state of the fast paths, in one block so that malloc loads the TLS offset once
// (a shared library's initial-exec TLS variable costs a GOT load per variable):
//   heap              this thread's heap; &g_empty_heap until the first allocation (and again
//                     after thread exit);
//   sample_countdown  the allocator layer's sampling countdown (allocator/sampling.h), bytes
//                     this thread may still allocate before the next sample;
//   bound_to_large_arena  the allocator layer's: this thread is bound to trimalloc's jemalloc
//                     arena (allocator/large.cpp), read by every large allocation beside the
//                     countdown.
struct ThreadLocals {
  ThreadHeap* heap;
  std::int64_t sample_countdown;
  bool bound_to_large_arena;
};
extern __thread ThreadLocals tl_thread __attribute__((tls_model("initial-exec")));

// --- thread.cpp ---
// Runs in an exiting thread before its heap is abandoned (set by the allocator layer).
extern void (*g_before_thread_exit)() noexcept;
// Runs at the very end of an exiting thread's clean-up (the decay thread checks whether it is
// the last thread left).
extern void (*g_after_thread_exit)() noexcept;
// Set once this thread's exit clean-up has run (later frees come from glibc's own teardown).
extern __thread bool tl_thread_exiting __attribute__((tls_model("initial-exec")));
bool engine_init() noexcept;                  // idempotent; false if the OS refused memory
ThreadHeap* heap_for_this_thread() noexcept;  // creates the heap on first use; null on ENOMEM
template <typename Fn>
void for_each_heap(Fn&& fn) noexcept;  // every registered heap, live or not
ThreadHeap* registry_head() noexcept;

// Abandoned pools (heap.cpp).
Pool* adopt_abandoned(unsigned cls, ThreadHeap* heap) noexcept;
void add_abandoned(Pool* pool) noexcept;
// Collects remote frees of abandoned pools, returns empty ones to their arenas and (if
// release_pages) purges free pages of the rest; bytes released.
std::size_t trim_abandoned(bool release_pages) noexcept;
SpinLock& abandoned_lock() noexcept;

// --- the engine's entry points for allocator/ ---
inline bool small_owns(const void* p) noexcept {
  return g_arena_map.contains(SlotKind::kSmall, p);
}

inline void* small_alloc(std::size_t cls) noexcept {
  return tl_thread.heap->alloc(cls);
}

[[noreturn]] void report_bad_small_free(const char* call, const void* p) noexcept;
[[noreturn]] void report_wrong_size(const char* call, const void* p) noexcept;

// The block size a sized free of (size, alignment) implies for a small block: what
// class_block_size(aligned_class_of(size, alignment)) gives, without the table. Classes are
// every multiple of 16, so it is the size rounded up to max(alignment, 16) (that rounding, for
// size 0); above kSmallMax it matches no pool's block size.
inline std::size_t sized_block_size(std::size_t size, std::size_t alignment) noexcept {
  const std::size_t a = alignment > kClassGranule ? alignment : kClassGranule;
  return size == 0 ? a : (size + a - 1) & ~(a - 1);
}
void small_free_suspect(Pool* pool, Block* b, const char* call) noexcept;
// free()'s check failed: aborts for a pointer that does not start a block and for a block on a
// dormant page; frees a live block above a released page (sized_block 0: an unsized call).
void small_free_rejected(Pool* pool, Block* b, const char* call, std::size_t sized_block) noexcept;
void small_free_after_visit(Pool* pool, Block* b, const char* call) noexcept;
// small_free_block() found the heap already entered by this thread (enter_outermost() false).
void small_free_nested(Pool* pool, Block* b, const char* call) noexcept;

// The pool of a small pointer after checking it starts a live-or-free block; aborts otherwise.
inline Pool* checked_pool(const void* p, const char* call) noexcept {
  Pool* pool = pool_of(p);
  std::uintptr_t offset = reinterpret_cast<std::uintptr_t>(p) & (kPoolSize - 1);
  if (__builtin_expect(!is_block_start(pool, offset), 0)) report_bad_small_free(call, p);
  return pool;
}

// The rest of free() once `b` is known to start a block that is not dormant: the sized calls'
// size check, the double-free mark, then the owner's push or a remote one.
template <bool kSized>
[[gnu::always_inline]] inline void small_free_block(Pool* pool, Block* b, const char* call,
                                                    std::size_t sized_block) noexcept {
  // Line 1, which the start check has just read: one more compare for the sized calls.
  if constexpr (kSized) {
    if (__builtin_expect(sized_block != pool->block_size, 0)) report_wrong_size(call, b);
  }
  if constexpr (kChecks) {
    // A free mark means "already free", unless the program wrote this exact word: confirm.
    std::uintptr_t mark = free_mark(pool);
    if (__builtin_expect(b->mark == mark, 0)) return small_free_suspect(pool, b, call);
    // Hardened: no zeroing here. Every small free of that build comes from the quarantine's
    // release(), and quarantine_free() zeroed the body when the block came in; a write into it
    // since is caught by the next allocation's check, which zeroing again would wipe out.
    b->mark = mark;  // every way on frees the block: mark it now, while the mark is at hand
  }
  ThreadHeap* heap = tl_thread.heap;
  if (__builtin_expect(!relaxed_equals(pool->owner, heap), 0)) return pool_push_remote(pool, b);
  if (__builtin_expect(!heap->enter_outermost(), 0)) return small_free_nested(pool, b, call);
  // A visitor may be at work, or may have moved the pool while we were deciding: go slow.
  if (__builtin_expect(heap->visitor_present(), 0)) return small_free_after_visit(pool, b, call);
  heap->free_local_outermost(pool, b);
}

// free() of a pointer known to be in a small arena. `call` names the public function.
// kSized: the sized frees (free_sized, sized operator delete) pass the block size the caller's
// size implies (sized_block_size()), and a block of another size aborts. Two functions rather
// than a run-time flag, so that plain free() does not test it.
template <bool kSized>
[[gnu::always_inline]] inline void small_free_impl(void* p, const char* call,
                                                   std::size_t sized_block) noexcept {
  Pool* pool = pool_of(p);
  Block* b = static_cast<Block*>(p);
  std::uintptr_t offset = reinterpret_cast<std::uintptr_t>(p) & (kPoolSize - 1);
  if constexpr (kChecks) {
    // Not a block start, a block on a dormant page (invariant D: already free), or a live block
    // above a released page, in one compare; small_free_rejected() tells which.
    if (__builtin_expect(!is_block_start_below_dormant(pool, offset), 0))
      return small_free_rejected(pool, b, call, kSized ? sized_block : 0);
  }
  small_free_block<kSized>(pool, b, call, sized_block);
}
// Always inlined, like small_free_impl: the shims' fast paths are these, and with enough shims
// in one file GCC's unit-growth limit would otherwise leave a call to an out-of-line copy.
[[gnu::always_inline]] inline void small_free(void* p, const char* call) noexcept {
  small_free_impl<false>(p, call, 0);
}
[[gnu::always_inline]] inline void small_free_sized(void* p, const char* call,
                                                    std::size_t sized_block) noexcept {
  small_free_impl<true>(p, call, sized_block);
}

// tm_free_batch's engine part: frees blocks[i], blocks[i + 1], ... as small_free() would, while
// they are small blocks of pools this thread's heap owns, entering the heap once for all of
// them. Returns the index of the first block it did not free (n when it freed them all); the
// caller frees that one the ordinary way (a large block, another thread's pool, a foreign
// pointer) and calls again. The checks and messages are small_free()'s.
std::size_t small_free_run(void* const* blocks, std::size_t i, std::size_t n,
                           const char* call) noexcept;

inline std::size_t small_usable_size(const void* p, const char* call) noexcept {
  return checked_pool(p, call)->block_size;
}

template <typename Fn>
void for_each_heap(Fn&& fn) noexcept {
  for (ThreadHeap* h = registry_head(); h != nullptr; h = h->registry_next) fn(h);
}

}  // namespace trimalloc
