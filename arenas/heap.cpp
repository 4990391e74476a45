#include "heap.h"

#include <sched.h>

#include <cerrno>

#include "arena.h"
#include "lock.h"
#include "trim.h"

namespace trimalloc {

Pool g_empty_pool{};
constinit ThreadHeap g_empty_heap{};

namespace {
// Abandoned pools per class; adopters and trim take them under one lock (slow path only).
SpinLock g_abandoned_lock;
ClassList g_abandoned[kClassCount];

// Doubly linked pool lists: a heap's per-class lists and the abandoned lists. The head is
// written through atomic_ref because adopt_abandoned() peeks at an abandoned list's head without
// its lock; for a heap's own lists that is an ordinary store.
void push_front(ClassList& list, Pool* pool) noexcept {
  pool->prev = nullptr;
  pool->next = list.head;
  if (list.head)
    list.head->prev = pool;
  else
    list.tail = pool;
  std::atomic_ref<Pool*>(list.head).store(pool, std::memory_order_relaxed);
}
void unlink(ClassList& list, Pool* pool) noexcept {
  if (pool->prev)
    pool->prev->next = pool->next;
  else
    std::atomic_ref<Pool*>(list.head).store(pool->next, std::memory_order_relaxed);
  if (pool->next)
    pool->next->prev = pool->prev;
  else
    list.tail = pool->prev;
  pool->next = pool->prev = nullptr;
}
void abandoned_push(Pool* pool) {
  push_front(g_abandoned[pool->size_class], pool);
}
void abandoned_remove(Pool* pool) {
  unlink(g_abandoned[pool->size_class], pool);
}
}  // namespace

SpinLock& abandoned_lock() noexcept {
  return g_abandoned_lock;
}

void report_bad_small_free(const char* call, const void* p) noexcept {
  fatal(call, "invalid pointer (not the start of a trimalloc block)", p);
}

void report_wrong_size(const char* call, const void* p) noexcept {
  fatal(call, "size does not match the allocation of", p);
}

void small_free_rejected(Pool* pool, Block* b, const char* call, std::size_t sized_block) noexcept {
  std::uintptr_t offset = reinterpret_cast<std::uintptr_t>(b) & (kPoolSize - 1);
  if (!is_block_start(pool, offset)) report_bad_small_free(call, b);
  // A block start on a dormant page: freed and given back.
  if (block_is_dormant(pool, offset)) fatal(call, "double free of", b);
  // A live block above a page released in the middle of the pool.
  if (sized_block != 0)
    small_free_block<true>(pool, b, call, sized_block);
  else
    small_free_block<false>(pool, b, call, 0);
}

void small_free_suspect(Pool* pool, Block* b, const char* call) noexcept {
  std::uintptr_t offset = reinterpret_cast<std::uintptr_t>(b) & (kPoolSize - 1);
  if ((pool->dormant.load(std::memory_order_relaxed) >> (offset >> kPageShift)) & 1)
    fatal(call, "double free of", b);
  // The owner can confirm by walking its lists; another thread cannot read them safely and
  // trusts the 64-bit mark (a live block has mark 0 unless the program wrote this exact value).
  ThreadHeap* heap = tl_thread.heap;
  if (pool->owner.load(std::memory_order_relaxed) != heap) fatal(call, "double free of", b);
  heap->enter();
  if (pool->owner.load(std::memory_order_relaxed) != heap || pool_block_is_free(pool, b))
    fatal(call, "double free of", b);
  b->mark = free_mark(pool);  // hardened: zeroed in quarantine_free already (see small_free_block)
  heap->free_local(pool, b);
}

// A nested entry never waits for a visitor (its depth is not 0: no visitor can be in), so the
// after-visit path, which re-checks ownership, is the counted way for it.
void small_free_nested(Pool* pool, Block* b, const char* call) noexcept {
  tl_thread.heap->enter_fast();
  small_free_after_visit(pool, b, call);
}

void small_free_after_visit(Pool* pool, Block* b, const char* call) noexcept {
  ThreadHeap* heap = tl_thread.heap;
  if (heap->depth() == 0) heap->wait_for_visitor();
  // The visit may have handed the pool on (released it if it had been emptied, which cannot
  // happen while `b` is live, or abandoned it): re-check ownership before acting as owner.
  if (pool->owner.load(std::memory_order_relaxed) != heap) {
    heap->leave();
    (void)call;
    pool_push_remote(pool, b);  // small_free has marked the block free
    return;
  }
  heap->free_local(pool, b);
}

std::size_t small_free_run(void* const* blocks, std::size_t i, std::size_t n,
                           const char* call) noexcept {
  ThreadHeap* heap = tl_thread.heap;
  // The pool of the previous block: a block in the same pool (the common case for blocks
  // allocated in sequence) is known to be small and this heap's, so the arena-map lookup and
  // the owner check are made once per pool, not per block. Only the slow path of a free can
  // hand the pool on (release it to its arena), and visitors stay out while we are entered.
  std::uintptr_t run_pool = 1;  // no pool index: 1 is never a block's pool number
  Pool* pool = nullptr;
  // The run's blocks are pushed onto a copy of the pool's free list held here, and the list
  // and the used count are written back once per run (publish): per block, no load of the
  // list head and no read-modify-write of `used` that the next block's would wait for. Every
  // check is still made per block, and anything that looks at the pool's lists (the slow
  // paths, another pool's run, the caller's free) comes after a publish.
  Block* head = nullptr;
  std::uint32_t pending = 0;  // blocks on `head` not yet counted in pool->used
  // The run's pool's constants, read once per run: stores through a Block* could alias the
  // header, so the compiler would otherwise read them again for every block. None changes
  // while the run lasts: the owner (this thread, entered, so no visitor acts for it) is the
  // only writer, and every path that could change one (a slow path) ends the run.
  std::uint32_t start_magic = 0, live_bound = 0;
  std::uintptr_t mark = 0, list_key = 0;
  auto publish = [&]() noexcept {
    if (pending == 0) return;
    heap->free_run_in_batch(pool, head, pending);  // may hand the pool on
    pending = 0;
    run_pool = 1;
  };
  heap->enter();
  for (; i < n; ++i) {
    void* p = blocks[i];
    const std::uintptr_t address = reinterpret_cast<std::uintptr_t>(p);
    if ((address >> kPoolShift) != run_pool) {
      publish();
      if (!small_owns(p)) break;  // large, foreign or null: the caller's ordinary free
      pool = pool_of(p);
      if (!relaxed_equals(pool->owner, heap)) break;  // a remote free
      run_pool = address >> kPoolShift;
      head = pool->free;
      start_magic = pool->start_magic;
      live_bound = pool->live_bound.load(std::memory_order_relaxed);
      mark = free_mark(pool);
      list_key = link_key(pool);
    }
    Block* b = static_cast<Block*>(p);
    const std::uintptr_t offset = address & (kPoolSize - 1);
    if constexpr (kChecks) {
      if (__builtin_expect(!block_start_below(offset, start_magic, live_bound), 0)) {
        // Aborts, or frees a live block above a released page; nested inside our entry (as
        // for small_free_suspect below). Its slow path may have handed the pool on.
        publish();
        small_free_rejected(pool, b, call, 0);
        run_pool = 1;
        continue;
      }
      if (__builtin_expect(b->mark == mark, 0)) {
        // Confirms the double free (walking the published list: a block this run freed
        // already is on it) and aborts, or frees a block that merely held this word. Nested
        // inside our entry, so it never waits for a visitor, and it leaves only its own.
        publish();
        small_free_suspect(pool, b, call);
        run_pool = 1;
        continue;
      }
      b->mark = mark;
      // GCC otherwise merges this store and the link's below into one 16-byte store, built
      // from two general registers with three more instructions than the two stores.
      asm("" : "+r"(b));
    }
    b->link = encode_link_with(list_key, head);
    head = b;
    ++pending;
  }
  publish();
  heap->leave();
  return i;
}

void ThreadHeap::wait_for_visitor() noexcept {
  // Step out (busy = 0) so the visitor can finish, then step in again exactly as enter() does.
  do {
    busy_.store(0, std::memory_order_release);
    while (visited_.load(std::memory_order_acquire) != 0) sched_yield();
#if defined(__SANITIZE_THREAD__)
    busy_.store(1, std::memory_order_seq_cst);
  } while (visited_.load(std::memory_order_seq_cst) != 0);
#else
    busy_.store(1, std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);
  } while (visited_.load(std::memory_order_relaxed) != 0);
#endif
#if !defined(__SANITIZE_THREAD__)
  // See what the visitor wrote (TSan builds: the seq_cst loads above already order it, and TSan
  // does not model fences).
  std::atomic_thread_fence(std::memory_order_acquire);
#endif
}

// --- lists ---

void ThreadHeap::list_push_front(ClassList& list, Pool* pool) noexcept {
  push_front(list, pool);
}
void ThreadHeap::list_remove(ClassList& list, Pool* pool) noexcept {
  unlink(list, pool);
}

void ThreadHeap::make_current(unsigned cls, Pool* pool) noexcept {
  if (avail_[cls].head != pool) {
    list_remove(avail_[cls], pool);
    list_push_front(avail_[cls], pool);
  }
  current_[cls] = pool;
}

void* ThreadHeap::pop_from(Pool* pool) noexcept {
  Block* b = pool->free;
  if constexpr (kSecure) secure_check_untouched(pool, b);
  pool->free = decode_link(pool, b);
  pool->used.store(pool->used.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  b->mark = 0;
  return b;
}

void ThreadHeap::reset() noexcept {
  shrink_requested.store(false, std::memory_order_relaxed);
  busy_free_since_ms.store(0, std::memory_order_relaxed);
  shrink_class_ = shrink_done_ = 0;
  for (unsigned c = 0; c < kClassCount; ++c) {
    current_[c] = &g_empty_pool;
    avail_[c] = ClassList{};
    full_[c] = ClassList{};
  }
  notified_.store(nullptr, std::memory_order_relaxed);
  quarantine = nullptr;
  quarantined_bytes.store(0, std::memory_order_relaxed);
}

// --- full pools and notifications ---

void ThreadHeap::push_notified(Pool* pool) noexcept {
  Pool* head = notified_.load(std::memory_order_relaxed);
  do {
    pool->notify_next.store(head, std::memory_order_relaxed);
  } while (!notified_.compare_exchange_weak(head, pool, std::memory_order_release,
                                            std::memory_order_relaxed));
}

void ThreadHeap::drain_notified() noexcept {
  if (notified_.load(std::memory_order_relaxed) == nullptr) return;
  Pool* p = notified_.exchange(nullptr, std::memory_order_acquire);
  while (p) {
    // Read the link before clearing `queued`: once cleared, a freer may push p again.
    Pool* next = p->notify_next.load(std::memory_order_relaxed);
    p->queued.store(false, std::memory_order_release);
    if (p->owner.load(std::memory_order_relaxed) == this &&
        p->state.load(std::memory_order_relaxed) == PoolState::kFull) {
      unsigned cls = p->size_class;
      list_remove(full_[cls], p);
      set_state(p, PoolState::kAvail);
      // Behind current: it is the next candidate once current runs dry.
      if (avail_[cls].head) {
        Pool* h = avail_[cls].head;
        p->prev = h;
        p->next = h->next;
        if (h->next)
          h->next->prev = p;
        else
          avail_[cls].tail = p;
        h->next = p;
      } else {
        list_push_front(avail_[cls], p);
      }
    }
    p = next;
  }
}

bool ThreadHeap::park_full(Pool* pool) noexcept {
  unsigned cls = pool->size_class;
  std::uintptr_t old = pool->remote.fetch_or(kWantNotify, std::memory_order_acq_rel);
  if (remote_head(old) != nullptr) {
    // Remote frees arrived meanwhile: take them instead of parking (this also drops the flag).
    pool_collect_remote(pool);
    return false;
  }
  list_remove(avail_[cls], pool);
  set_state(pool, PoolState::kFull);
  list_push_front(full_[cls], pool);
  return true;
}

// --- allocation slow path ---

void* ThreadHeap::alloc_slow_and_leave(unsigned cls) noexcept {
  void* p = alloc_slow(cls);
  leave();
  return p;
}

void* ThreadHeap::pop_last_and_leave(Pool* pool, Block* b, std::uintptr_t next) noexcept {
  check_list_end(pool, b, next);
  pool->free = nullptr;
  used_increment(pool);
  b->mark = 0;
  leave();
  return b;
}

void* ThreadHeap::alloc_nested(unsigned cls) noexcept {
  enter_fast();
  return alloc_after_visit(cls);  // depth() is not 0: it does not wait
}

void* ThreadHeap::alloc_after_visit(unsigned cls) noexcept {
  if (depth() == 0) wait_for_visitor();
  Pool* pool = current_[cls];
  void* p = pool->free ? pop_from(pool) : alloc_slow(cls);
  leave();
  return p;
}

void* ThreadHeap::alloc_slow(unsigned cls) noexcept {
  if (this == &g_empty_heap) {
    // The shared empty heap's busy count means nothing (many threads pass through it).
    ThreadHeap* heap = heap_for_this_thread();
    if (!heap) {
      errno = ENOMEM;
      return nullptr;
    }
    return heap->alloc(cls);
  }
  last_slow_ms.store(now_ms(), std::memory_order_relaxed);
  if (__builtin_expect(g_maintenance_requested.load(std::memory_order_relaxed), 0) &&
      g_on_maintenance)
    g_on_maintenance();
  drain_notified();
  if (__builtin_expect(shrink_requested.load(std::memory_order_relaxed), 0)) shrink_step();

  // 1. The current pool: blocks other threads gave back.
  Pool* pool = current_[cls];
  if (pool != &g_empty_pool && pool_collect_remote(pool)) return pop_from(pool);
  current_[cls] = &g_empty_pool;

  // 2. The fullest available pool that has a free block (placement: allocating from the
  // fullest pool lets the emptier ones drain and go back to their arenas). Pools with nothing
  // to give are parked as full; one with only uncarved pages is remembered for step 3. The scan
  // looks at kPlacementScan candidates at most, so a heap with thousands of partly used pools
  // stays O(1) per refill (parked pools leave the list, so skipping them costs nothing twice).
  // Candidates are compared without collecting their remote lists - each collection is an atomic
  // exchange on a line other threads write - so blocks freed remotely and not yet collected
  // count as used; only the chosen pool's list is taken.
  const bool fullest = g_fullest_placement.load(std::memory_order_relaxed) != 0;
  Pool* best = nullptr;
  Pool* carvable = nullptr;
  unsigned looked = 0;
  for (Pool* q = avail_[cls].head; q != nullptr && looked < kPlacementScan;) {
    Pool* next = q->next;
    if (q->free || remote_head(q->remote.load(std::memory_order_relaxed)) != nullptr) {
      ++looked;
      if (best == nullptr || pool_used(q) > pool_used(best)) best = q;
      if (!fullest) break;  // first fit in list order (TRIMALLOC_PLACEMENT=0, for comparison)
    } else if (q->dormant.load(std::memory_order_relaxed) != 0) {
      ++looked;
      if (carvable == nullptr || pool_used(q) > pool_used(carvable)) carvable = q;
    } else if (!park_full(q)) {
      continue;  // remote frees raced in: look at q again
    }
    q = next;
  }
  if (best != nullptr) pool_collect_remote(best);
  // 3. No free block anywhere: carve a page, in the fullest pool that still has one.
  if (best == nullptr && carvable != nullptr && pool_revive_page(carvable)) best = carvable;
  if (best != nullptr) {
    make_current(cls, best);
    return pop_from(best);
  }

  // 4. A pool some exited thread left behind, then 5. a fresh pool from the arenas.
  PageMask resident = 0;
  Pool* fresh = adopt_abandoned(cls, this);
  if (fresh == nullptr) fresh = g_arenas.acquire_pool(cls, this, &resident);
  // The hook may hand this heap's empty pools back (trim_small_for_address_space), and visit
  // other heaps: nothing here holds a pool or a lock.
  if (fresh == nullptr && g_on_out_of_memory && g_on_out_of_memory())
    fresh = g_arenas.acquire_pool(cls, this, &resident);
  if (fresh == nullptr) {
    errno = ENOMEM;
    return nullptr;
  }
  list_push_front(avail_[cls], fresh);
  pool_collect_remote(fresh);
  pool_revive_pages(fresh, resident);
  if (fresh->free == nullptr && !pool_revive_page(fresh)) {
    // An adopted pool with every block live: park it and try again.
    park_full(fresh);
    return alloc_slow(cls);
  }
  current_[cls] = fresh;
  return pop_from(fresh);
}

// --- free slow path: a pool became empty, or a full pool got a block back ---

void ThreadHeap::free_slow_and_leave(Pool* pool) noexcept {
  free_slow(pool);
  leave();
}

void ThreadHeap::free_slow(Pool* pool) noexcept {
  unsigned cls = pool->size_class;
  if (pool->state.load(std::memory_order_relaxed) == PoolState::kFull) {
    list_remove(full_[cls], pool);
    pool->remote.fetch_and(~kWantNotify, std::memory_order_relaxed);
    set_state(pool, PoolState::kAvail);
    list_push_front(avail_[cls], pool);
    if (current_[cls] == &g_empty_pool) current_[cls] = pool;
  }
  if (pool_used(pool) != 0) return;
  // Keep the class's last available pool: a malloc/free loop must not cycle the arena lock.
  if (avail_[cls].head == pool && pool->next == nullptr) return;
  list_remove(avail_[cls], pool);
  if (current_[cls] == pool) current_[cls] = avail_[cls].head ? avail_[cls].head : &g_empty_pool;
  release_to_arena(pool);
}

void ThreadHeap::release_to_arena(Pool* pool) noexcept {
  // A notification may still be in flight, or sit on our notified stack: wait for the first,
  // drain the second, or the pool's next owner would splice its stack into ours.
  pool_cancel_notify(pool, false);
  if (pool->queued.load(std::memory_order_acquire)) drain_notified();
  g_arenas.release_pool(pool);
}

void ThreadHeap::unpark_all() noexcept {
  for (unsigned c = 0; c < kClassCount; ++c) {
    while (Pool* p = full_[c].head) {
      list_remove(full_[c], p);
      pool_cancel_notify(p, false);
      set_state(p, PoolState::kAvail);
      list_push_front(avail_[c], p);
    }
  }
  drain_notified();  // every pool is kAvail now, so this only clears `queued` flags
}

// --- thread exit ---

void ThreadHeap::abandon(bool single_threaded) noexcept {
  // First silence every pool (no notification can start or be in flight afterwards), then
  // forget the notified stack, then hand the pools on.
  for (unsigned c = 0; c < kClassCount; ++c) {
    for (ClassList* list : {&avail_[c], &full_[c]})
      for (Pool* p = list->head; p != nullptr; p = p->next) pool_cancel_notify(p, single_threaded);
  }
  for (Pool* p = notified_.exchange(nullptr, std::memory_order_acquire); p;) {
    Pool* next = p->notify_next.load(std::memory_order_relaxed);
    p->queued.store(false, std::memory_order_release);
    p = next;
  }
  for (unsigned c = 0; c < kClassCount; ++c) {
    for (ClassList* list : {&avail_[c], &full_[c]}) {
      for (Pool* p = list->head; p != nullptr;) {
        Pool* next = p->next;
        p->next = p->prev = nullptr;
        pool_collect_remote(p);
        if (pool_used(p) == 0)
          g_arenas.release_pool(p);
        else
          add_abandoned(p);
        p = next;
      }
    }
  }
  reset();
}

void add_abandoned(Pool* pool) noexcept {
  set_state(pool, PoolState::kAbandoned);
  pool->owner.store(nullptr, std::memory_order_release);
  LockGuard guard(g_abandoned_lock);
  abandoned_push(pool);
}

Pool* adopt_abandoned(unsigned cls, ThreadHeap* heap) noexcept {
  // A peek without the lock (most slow paths find nothing there); the lock decides.
  if (std::atomic_ref<Pool*>(g_abandoned[cls].head).load(std::memory_order_relaxed) == nullptr)
    return nullptr;
  LockGuard guard(g_abandoned_lock);
  Pool* pool = g_abandoned[cls].head;
  if (pool == nullptr) return nullptr;
  abandoned_remove(pool);
  set_state(pool, PoolState::kAvail);
  pool->owner.store(heap, std::memory_order_release);
  return pool;
}

std::size_t trim_abandoned(bool release_pages) noexcept {
  std::size_t released = 0;
  LockGuard guard(g_abandoned_lock);
  PurgeBatch batch;  // flushed before the lock is dropped (declared after the guard)
  for (ClassList& list : g_abandoned) {
    for (Pool* p = list.head; p != nullptr;) {
      Pool* next = p->next;
      // Ownerless pools are only touched under this lock, so the lock holder acts as owner.
      pool_collect_remote(p);
      if (pool_used(p) == 0) {
        abandoned_remove(p);
        g_arenas.release_pool(p);  // its pages are purged by the arena pass that follows
      } else if (release_pages) {
        released += pool_release_free_pages(p, batch);
      }
      p = next;
    }
  }
  return released;
}

std::size_t ThreadHeap::trim_own(bool release_pages) noexcept {
  // Parked pools are looked at too (trim is rare); the next slow path re-parks what is full.
  unpark_all();
  std::size_t released = 0;
  PurgeBatch batch;  // flushed on return, while the caller still acts as owner
  for (unsigned c = 0; c < kClassCount; ++c) {
    for (Pool* p = avail_[c].head; p != nullptr;) {
      Pool* next = p->next;
      pool_collect_remote(p);
      if (pool_used(p) == 0) {
        list_remove(avail_[c], p);
        g_arenas.release_pool(p, true);  // no notification is possible after unpark_all()
      } else if (release_pages) {
        released += pool_release_free_pages(p, batch);
      }
      p = next;
    }
    // No current pool: the next allocation's slow path picks one by the placement policy.
    current_[c] = &g_empty_pool;
  }
  return released;
}

std::size_t ThreadHeap::shrink_step() noexcept {
  std::size_t released = 0;
  unsigned budget = kShrinkPoolsPerStep;
  PurgeBatch batch;  // flushed on return, while this thread is still the pools' owner
  while (budget > 0 && shrink_class_ < kClassCount) {
    // Pools are found by their position in the list: the list may have changed since the last
    // step (a skipped or repeated pool costs nothing but a little time).
    Pool* p = avail_[shrink_class_].head;
    for (unsigned i = 0; p != nullptr && i < shrink_done_; ++i) p = p->next;
    for (; p != nullptr && budget > 0; p = p->next, --budget, ++shrink_done_) {
      pool_collect_remote(p);
      released += pool_release_free_pages(p, batch);
    }
    if (p == nullptr) {
      ++shrink_class_;
      shrink_done_ = 0;
    }
  }
  if (shrink_class_ == kClassCount) {
    shrink_class_ = 0;
    shrink_requested.store(false, std::memory_order_relaxed);
  }
  return released;
}

}  // namespace trimalloc
