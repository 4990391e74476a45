// Per-thread heaps: tracking, untracking, the count-reached-zero path and the trashcan.
#include "heap.hpp"

#include <trimalloc/trimalloc.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>

namespace trimalloc::gc::detail {

// ---- slot table ----

SlotTable::~SlotTable() {
  for (std::uintptr_t* chunk : chunks_) tm_free(chunk);
}

void SlotTable::grow() {
  if (size_ >= kDetached) fatal("more than 2^31 objects tracked by one thread's heap", nullptr);
  void* chunk = tm_malloc(kChunkSlots * sizeof(std::uintptr_t));
  if (!chunk) throw std::bad_alloc();
  chunks_.push_back(static_cast<std::uintptr_t*>(chunk));
}

void SlotTable::truncate(std::uint32_t new_size) noexcept {
  size_ = new_size;
  // Keep one spare chunk so that a heap oscillating around a chunk boundary does not allocate
  // and free a chunk on every make()/release().
  std::size_t needed = (std::size_t{size_} + kChunkSlots - 1) / kChunkSlots + 1;
  while (chunks_.size() > needed) {
    tm_free(chunks_.back());
    chunks_.pop_back();
  }
}

// ---- the heap of this thread ----

namespace {

thread_local Heap* tls_heap = nullptr;

// Thread exit: a last full collection frees the thread's cycles. A heap that still has objects
// afterwards (held by globals, by garbage(), or handed to another thread against the rules)
// is left in place, so that a later release of those objects still finds valid bookkeeping.
struct HeapOwner {
  ~HeapOwner() {
    Heap* heap = tls_heap;
    if (!heap) return;
    if (!heap->collecting) collect(2);
    if (heap->table.size() == 0 && heap->garbage.empty() && heap->deferred_destroy.empty()) {
      tls_heap = nullptr;
      delete heap;
    } else if (heap->debug & DEBUG_UNCOLLECTABLE) {
      std::fprintf(stderr, "gc: %u objects still alive at thread exit\n", heap->table.size());
    }
  }
};

}  // namespace

Heap& current_heap() {
  if (Heap* heap = tls_heap) [[likely]]
    return *heap;
  static thread_local HeapOwner owner;  // constructed here once: registers the thread-exit hook
  (void)owner;
  tls_heap = new Heap();
  return *tls_heap;
}

[[noreturn]] void fatal(const char* message, const Object* o) noexcept {
  if (o) {
    std::fprintf(stderr, "trimalloc gc: %s: object %p\n", message, static_cast<const void*>(o));
  } else {
    std::fprintf(stderr, "trimalloc gc: %s\n", message);
  }
  std::abort();
}

std::uintptr_t* Heap::find_word(const Object* o) noexcept {
  std::uint32_t slot = Access::slot(o);
  if (slot == kUntracked) return nullptr;
  if (slot & kDetached) {
    std::uint32_t i = slot & ~kDetached;
    if (i < unreachable.size() && object_of(unreachable[i]) == o) return &unreachable[i];
    return nullptr;
  }
  if (slot < table.size() && object_of(table[slot]) == o) return &table[slot];
  return nullptr;
}

std::uintptr_t& Heap::word(const Object* o) noexcept {
  std::uintptr_t* w = find_word(o);
  if (!w) fatal("object used on a thread whose heap does not own it (gc heaps are per thread)", o);
  return *w;
}

void check_owner(const Object* o) noexcept {
  // Objects under construction or destruction are untracked; nothing to check against.
  if (Access::slot(o) != kUntracked) (void)current_heap().word(o);
}

void Heap::track(Object* o, std::uintptr_t flags) {
  Access::slot(o) = table.push_back(word_of(o, flags));
  ++count[0];
}

// Removes `o` from the table without disturbing the segment order: the hole moves to the end of
// its segment (the segment's last object fills it), then on through each younger segment, so
// removal costs at most four moves and no segment is ever scanned.
void Heap::untrack(Object* o) noexcept {
  std::uint32_t slot = Access::slot(o);
  Access::slot(o) = kUntracked;
  if (count[0] > 0) --count[0];
  if (slot & kDetached) {
    unreachable[slot & ~kDetached] = kGoneEntry;  // the running collection skips it from now on
    return;
  }
  std::uint32_t hole = slot;
  for (int segment = segment_of(slot); segment <= kGen0; ++segment) {
    std::uint32_t last = segment_end(segment) - 1;
    if (last != hole) {
      std::uintptr_t moved = table[last];
      table[hole] = moved;
      Access::slot(object_of(moved)) = hole;
    }
    hole = last;
    if (segment < kGen0) --begin[segment + 1];
  }
  table.truncate(table.size() - 1);
}

void Heap::reattach(Object* o, std::uintptr_t word, int segment) {
  std::uint32_t index = table.push_back(word);
  Access::slot(o) = index;
  move_to_segment(index, segment);
}

// Moves the object at `index` to an older (or the same) segment by swapping it with the first
// object of its segment and moving the boundary past it, one segment at a time.
void Heap::move_to_segment(std::uint32_t index, int segment) noexcept {
  for (int s = segment_of(index); s > segment; --s) {
    std::uint32_t first = begin[s];
    if (first != index) {
      std::uintptr_t a = table[index], b = table[first];
      table[index] = b;
      table[first] = a;
      Access::slot(object_of(b)) = index;
      Access::slot(object_of(a)) = first;
      index = first;
    }
    ++begin[s];
  }
}

// The trashcan (CPython's Py_TRASHCAN_BEGIN): releasing the head of a long chain destroys the
// next node from inside the first destructor, and so on, one stack frame group per node. Past
// kTrashcanDepth nested destructions, objects are queued instead, and the outermost destroy()
// drains the queue, so the stack depth stays bounded for chains of any length.
void Heap::destroy(Object* o) noexcept {
  if (destroy_depth >= kTrashcanDepth) {
    deferred_destroy.push_back(o);
    return;
  }
  begin_destroy_pass();
  Access::destroy(o);
  end_destroy_pass();
}

void Heap::end_destroy_pass() noexcept {
  if (destroy_depth == 1) {
    while (!deferred_destroy.empty()) {
      Object* next = deferred_destroy.back();
      deferred_destroy.pop_back();
      Access::destroy(next);
    }
  }
  --destroy_depth;
}

void run_finalizer(Object* o) noexcept {
  try {
    Access::finalize(o);
  } catch (const std::exception& e) {
    print_object_line("exception ignored in finalize() of", o);
    std::fprintf(stderr, "gc:   %s\n", e.what());
  } catch (...) {
    print_object_line("exception ignored in finalize() of", o);
  }
}

// The count reached zero (CPython's subtype_dealloc order): finalize once, unless that
// resurrected the object; clear weak references and run their callbacks; untrack; destroy.
// While user code runs the count is held at one, so a Ref made from `this` and dropped again
// cannot start a second release.
void release(Object* o) noexcept {
  // Untracked means under construction (make() holds a reference, so not that) or already being
  // destroyed: a destructor that made and dropped a Ref to its own object. Nothing to do.
  if (Access::slot(o) == kUntracked) return;
  Heap& heap = current_heap();
  std::uintptr_t flags = heap.word(o);
  if ((flags & (kHasFinalizer | kFinalized)) == kHasFinalizer) {
    heap.word(o) |= kFinalized;
    Access::refcount(o) = 1;
    run_finalizer(o);
    if (--Access::refcount(o) != 0) return;  // resurrected
    flags = heap.word(o);
  }
  if (flags & kHasWeakRefs) {
    Access::refcount(o) = 1;
    clear_weakrefs(heap, o);
    if (--Access::refcount(o) != 0) return;
  }
  heap.untrack(o);
  heap.destroy(o);
}

// ---- make() support ----

void* allocate_block(std::size_t size, std::size_t alignment) {
  Heap& heap = current_heap();
  void* block = alignment <= 16 ? tm_malloc(size) : tm_aligned_alloc(alignment, size);
  if (!block) throw std::bad_alloc();
  ++heap.constructing;
  return block;
}

void abandon_block(void* block, std::size_t size, std::size_t alignment) noexcept {
  --current_heap().constructing;
  free_block(block, size, alignment);
}

void track_new(Object* o, std::uintptr_t type_flags) noexcept {
  Heap& heap = current_heap();
  --heap.constructing;
  heap.track(o, type_flags);
  // Only the outermost make() may collect: every tracked object is then fully constructed, and
  // objects still being built are untracked, so their Refs count as held from outside.
  if (heap.constructing == 0 && heap.count[0] > heap.threshold[0] && heap.threshold[0] != 0 &&
      heap.enabled && !heap.collecting) {
    collect_generations(heap);
  }
}

}  // namespace trimalloc::gc::detail
