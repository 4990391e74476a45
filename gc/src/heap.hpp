// The per-thread heap: the slot table that tracks every object, the generation boundaries, the
// weak reference lists and the collector's settings. Internal to trimalloc_gc.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <new>
#include <unordered_map>
#include <utility>
#include <vector>

#include "trimalloc/gc.hpp"

namespace trimalloc::gc::detail {

inline Object* object_of(std::uintptr_t word) noexcept {
  return reinterpret_cast<Object*>(word & ~kFlagMask);
}
inline std::uintptr_t word_of(Object* o, std::uintptr_t flags) noexcept {
  return reinterpret_cast<std::uintptr_t>(o) | flags;
}

// The entry of Heap::unreachable of an object freed while the collection runs (a destructor
// dropped an unreported reference to it): no object, and every flag set, so that a pass over
// the list tests one thing, whether any flag is set, before its common case.
inline constexpr std::uintptr_t kGoneEntry = kFlagMask;

// A vector of slot words in fixed 32 KiB chunks: growing never copies (a 10-million object heap
// would otherwise copy 80 MB at each doubling) and never leaves more than one unused chunk
// behind when the heap shrinks, so the memory of a collected structure really comes back.
class SlotTable {
 public:
  static constexpr std::uint32_t kChunkBits = 12;
  static constexpr std::uint32_t kChunkSlots = 1u << kChunkBits;

  SlotTable() = default;
  SlotTable(const SlotTable&) = delete;
  SlotTable& operator=(const SlotTable&) = delete;
  ~SlotTable();

  std::uint32_t size() const noexcept { return size_; }
  std::uintptr_t& operator[](std::uint32_t i) noexcept {
    return chunks_[i >> kChunkBits][i & (kChunkSlots - 1)];
  }
  // The slots from i to the end of i's chunk, which are contiguous: `len` of them.
  std::uintptr_t* run(std::uint32_t i, std::uint32_t& len) noexcept {
    len = kChunkSlots - (i & (kChunkSlots - 1));
    return &(*this)[i];
  }
  std::uint32_t push_back(std::uintptr_t word) {
    if (size_ == chunks_.size() * kChunkSlots) grow();
    (*this)[size_] = word;
    return size_++;
  }
  void truncate(std::uint32_t new_size) noexcept;

 private:
  void grow();
  std::vector<std::uintptr_t*> chunks_;
  std::uint32_t size_ = 0;
};

// Collector scratch of a trivial type. Unlike std::vector, growing does not zero the new
// elements, so capacity that no collection writes to is never touched (nor paged in).
template <class T>
class ScratchArray {
 public:
  T* data() noexcept { return data_.get(); }
  std::size_t size() const noexcept { return size_; }
  // At least n elements, contents not kept.
  void reserve_fresh(std::size_t n) {
    if (n <= size_) return;
    data_.reset();
    size_ = 0;
    data_.reset(new T[n]);
    size_ = n;
  }
  // At least n elements, the first `keep` kept.
  void grow(std::size_t n, std::size_t keep) {
    if (n <= size_) return;
    std::unique_ptr<T[]> bigger(new T[n]);
    std::copy(data(), data() + keep, bigger.get());
    data_ = std::move(bigger);
    size_ = n;
  }
  void release() noexcept {
    data_.reset();
    size_ = 0;
  }

 private:
  std::unique_ptr<T[]> data_;
  std::size_t size_ = 0;
};

// The detached list (Heap::unreachable): slot words, like a std::vector whose growth does not
// zero-fill, so that the partition pass writes each entry once, through a pointer. It can also
// borrow storage (see borrow), so that a collection need not allocate, and fault in, a list of
// its own.
class WordList {
 public:
  std::uint32_t size() const noexcept { return size_; }
  // Of its own storage.
  std::size_t capacity() const noexcept { return words_.size(); }
  std::uintptr_t* data() noexcept { return data_; }
  std::uintptr_t& operator[](std::uint32_t i) noexcept { return data_[i]; }
  std::uintptr_t* begin() noexcept { return data(); }
  std::uintptr_t* end() noexcept { return data() + size_; }
  // Room for n entries, to be written through data(), then counted with set_size().
  std::uintptr_t* reserve_fresh(std::size_t n) {
    size_ = 0;
    words_.reserve_fresh(n);
    data_ = words_.data();
    return data_;
  }
  // The same in `storage`, room for n words that stays allocated and otherwise unused until
  // end_borrow().
  std::uintptr_t* borrow(void* storage, std::size_t n) noexcept {
    size_ = 0;
    borrowed_ = true;
    data_ = ::new (storage) std::uintptr_t[n];
    return data_;
  }
  bool borrowed() const noexcept { return borrowed_; }
  // Empty, on its own storage again.
  void end_borrow() noexcept {
    size_ = 0;
    borrowed_ = false;
    data_ = words_.data();
  }
  void set_size(std::uint32_t n) noexcept { size_ = n; }
  void truncate(std::uint32_t n) noexcept { size_ = n; }
  // Its own storage.
  void release() noexcept {
    words_.release();
    if (!borrowed_) {
      data_ = nullptr;
      size_ = 0;
    }
  }

 private:
  ScratchArray<std::uintptr_t> words_;
  std::uintptr_t* data_ = nullptr;
  std::uint32_t size_ = 0;
  bool borrowed_ = false;
};

// The table is cut into four segments, oldest first, so that "generation k and every younger
// one" is always one contiguous suffix of the table:
//   [0, begin[1])          permanent generation (freeze())
//   [begin[1], begin[2])   generation 2
//   [begin[2], begin[3])   generation 1
//   [begin[3], size)       generation 0, where make() appends
enum Segment : int { kPermanent = 0, kGen2 = 1, kGen1 = 2, kGen0 = 3 };
inline int segment_of_generation(int generation) noexcept {
  return kGen0 - generation;
}

struct Heap {
  SlotTable table;
  std::array<std::uint32_t, 4> begin{0, 0, 0, 0};

  // Objects a running collection found unreachable (slot words, flags included), detached from
  // the table so that user code run by the collection cannot move them around.
  WordList unreachable;

  bool enabled = true;
  bool collecting = false;
  int debug = 0;
  std::array<std::size_t, 3> threshold{700, 10, 10};
  std::array<std::size_t, 3> count{0, 0, 0};
  std::array<GenerationStats, 3> stats{};
  std::size_t long_lived_total = 0;
  std::size_t long_lived_pending = 0;
  std::vector<Ref<Object>> garbage;
  std::vector<std::pair<CallbackId, Callback>> callbacks;
  CallbackId next_callback_id = 1;

  // Heads of the per-object weak record lists; only objects flagged kHasWeakRefs are here.
  std::unordered_map<const Object*, WeakRecord*> weak_lists;

  // Trashcan: destruction nested deeper than this is queued and run by the outermost release.
  static constexpr std::uint32_t kTrashcanDepth = 50;
  std::uint32_t destroy_depth = 0;
  std::vector<Object*> deferred_destroy;

  std::uint32_t constructing = 0;  // make() calls in progress on this thread

  // Collector scratch, reused between collections (see collector.cpp).
  ScratchArray<std::int32_t> gc_refs;
  std::vector<Object*> worklist;
  // The edges inside the objects being collected, recorded by the subtract pass: object i's
  // edges are edges[edge_start[i], edge_start[i + 1]), as indexes into the scan.
  ScratchArray<std::uint32_t> edge_start;
  ScratchArray<std::uint32_t> edges;
  ScratchArray<std::uint32_t> index_stack;
  // More edges than this in one scan are not recorded; marking then calls trace() again.
  std::size_t edge_limit = UINT32_MAX;

  std::uint32_t segment_end(int segment) const noexcept {
    return segment == kGen0 ? table.size() : begin[segment + 1];
  }
  int segment_of(std::uint32_t index) const noexcept {
    return index >= begin[kGen0]   ? kGen0
           : index >= begin[kGen1] ? kGen1
           : index >= begin[kGen2] ? kGen2
                                   : kPermanent;
  }

  // The slot word of `o` (in the table, or in `unreachable` while detached), or null if `o` is
  // not tracked by this heap.
  std::uintptr_t* find_word(const Object* o) noexcept;
  // Same, but `o` must be tracked here: aborts naming the object otherwise (wrong thread).
  std::uintptr_t& word(const Object* o) noexcept;

  void track(Object* o, std::uintptr_t flags);
  void untrack(Object* o) noexcept;
  // Puts a detached object back into the table, in `segment`.
  void reattach(Object* o, std::uintptr_t word, int segment);
  void move_to_segment(std::uint32_t index, int segment) noexcept;
  void destroy(Object* o) noexcept;
  // A pass that destroys many objects opens one trashcan frame around all of them
  // (begin_destroy_pass), destroys each itself (Access::destruct, or, when the pass runs inside
  // deeply nested destructions, deferred_destroy: destroy_depth > kTrashcanDepth inside the
  // frame, one level deep as destroy() would be), and closes it (end_destroy_pass, which runs
  // what nested destructions queued once the outermost frame closes). The same bound on
  // nesting as destroy() per object, without its bookkeeping per object.
  void begin_destroy_pass() noexcept { ++destroy_depth; }
  void end_destroy_pass() noexcept;
};

Heap& current_heap();

// Runs user code the way CPython's unraisable hook does: an exception is reported, not thrown.
void run_finalizer(Object* o) noexcept;

// Clears every weak reference to `o` and runs their callbacks (the count-reached-zero path).
void clear_weakrefs(Heap& heap, Object* o) noexcept;
// The two halves of that, for the collector, which decides in between whose callbacks may run.
std::vector<WeakRecord*> take_weakrefs(Heap& heap, Object* o, bool callbacks_only);
void run_weak_callbacks(const std::vector<WeakRecord*>& records) noexcept;

// Collector entry points (collector.cpp).
void collect_generations(Heap& heap) noexcept;
// For tests: caps the recorded edges of one scan (0: never record, mark by calling trace()).
// Returns the previous cap.
std::size_t set_edge_limit(std::size_t limit) noexcept;

// Debug output (debug.cpp).
void print_object_line(const char* what, const Object* o) noexcept;
void print_validation() noexcept;

struct TracerAccess {
  using Mode = Tracer::Mode;
  // Reports every Ref's target into a Targets buffer (see Targets::visit), and calls
  // `weak_visit` (if any) for every reported WeakRef.
  static Tracer visitor(Tracer::WeakVisitFn weak_visit = nullptr) noexcept {
    return Tracer(Mode::kVisit, weak_visit);
  }
  // refs[slot - base] -= 1 for every edge into [base, base + n); the edge's index is appended
  // to [out, end) while there is room (see edge_out, lost).
  static Tracer subtracter(std::int32_t* refs, std::uint32_t base, std::uint32_t n,
                           std::uint32_t* out, std::uint32_t* end) noexcept {
    return Tracer(refs, base, n, out, end);
  }
  static void set_edge_buffer(Tracer& t, std::uint32_t* out, std::uint32_t* end) noexcept {
    t.edge_out_ = out;
    t.edge_end_ = end;
    t.lost_ = 0;
  }
  static std::uint32_t* edge_out(const Tracer& t) noexcept { return t.edge_out_; }
  // Edges (kSubtract) or targets (kVisit, kClear) that found the buffer full.
  static std::size_t lost(const Tracer& t) noexcept { return t.lost_; }
  // Nulls every reported Ref. References to detached objects, and with a scan's `base`, to the
  // objects of the scan [base, end of the table), are dropped at once; the others are taken
  // into a Targets buffer (see Targets::clear and Tracer::operator()). Nothing tracked has a
  // slot between the end of the table and kDetached, so that is one range of slots.
  static Tracer clearer(std::uint32_t base = kDetached) noexcept {
    return Tracer(Mode::kClear, nullptr, base, kUntracked - base);
  }
  static void set_target_buffer(Tracer& t, Object** out, Object** end) noexcept {
    t.target_out_ = out;
    t.target_end_ = end;
    t.lost_ = 0;
  }
  static Object** target_out(const Tracer& t) noexcept { return t.target_out_; }
};

// The targets a kVisit or kClear Tracer hands on. Tracer::operator() appends them to this
// buffer rather than calling out, so that a trace() such as `t(next); t(prev);` makes no call
// and needs no stack frame. A trace() that reports more than the room left is called again
// with more room: a visitor's starts over; a clearer's goes on, since the Refs it took are
// null by then and it reports only those still set.
class Targets {
 public:
  Object** begin() noexcept { return buffer_.data(); }
  Object** end() noexcept { return buffer_.data() + used_; }
  bool empty() const noexcept { return used_ == 0; }
  void drop() noexcept { used_ = 0; }

  // Calls o's trace() with `t` (kVisit) and returns the targets it reported, in order, until
  // the next call.
  std::pair<Object**, Object**> visit(Object* o, Tracer& t) {
    used_ = 0;
    arm(t, 0);
    Access::trace(o, t);
    while (TracerAccess::lost(t) != 0) {  // starts over with room for all of them
      arm(t, TracerAccess::target_out(t) - buffer_.data() + TracerAccess::lost(t));
      Access::trace(o, t);
    }
    used_ = TracerAccess::target_out(t) - buffer_.data();
    return {begin(), end()};
  }
  // Points `t` at the room after the targets already held, at least `room` entries.
  void arm(Tracer& t, std::size_t room) {
    if (buffer_.size() - used_ < std::max<std::size_t>(room, kMinRoom)) {
      buffer_.resize(std::max(2 * buffer_.size(), used_ + std::max(room, kMinRoom)));
    }
    TracerAccess::set_target_buffer(t, buffer_.data() + used_, buffer_.data() + buffer_.size());
  }
  // After calls of trace() with `t` armed here: holds what they took, calling trace() on `o`
  // again until it has taken all of its references (the last call lost some).
  void settle(Object* o, Tracer& t) {
    for (;;) {
      hold(t);
      const std::size_t lost = TracerAccess::lost(t);
      if (lost == 0) return;
      arm(t, lost);
      Access::trace(o, t);
    }
  }
  // Holds what the calls of trace() with `t` armed here took (none lost any).
  void hold(const Tracer& t) noexcept { used_ = TracerAccess::target_out(t) - buffer_.data(); }
  // Calls o's trace() with `t` (kClear) and holds the references it took after those already
  // held.
  void clear(Object* o, Tracer& t) {
    arm(t, 0);
    Access::trace(o, t);
    settle(o, t);
  }

 private:
  static constexpr std::size_t kMinRoom = 64;
  std::vector<Object*> buffer_;  // its size is the room
  std::size_t used_ = 0;
};

[[noreturn]] void fatal(const char* message, const Object* o) noexcept;

}  // namespace trimalloc::gc::detail
