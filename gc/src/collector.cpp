// The cycle collector: CPython 3.12's generational collector (Modules/gcmodule.c), for C++.
//
// ---------------------------------------------------------------------------------------------
// Model
//
// Every object made by gc::make<T>() carries a reference count, and most objects die the moment
// their count reaches zero (heap.cpp). What counting cannot free is a cycle: a->next = a keeps
// a's count at one forever. The collector finds such objects without scanning stacks and without
// registered roots, by the argument CPython makes:
//
//   an object's count is the number of Refs pointing at it. If we subtract, for every tracked
//   object in the set being collected, the references *other objects in the set* hold to it
//   (their trace() reports them), what remains is the number of references from outside the
//   set: from the stack, globals, plain containers, or older generations. Objects with a
//   remainder above zero are certainly alive; so is everything they reach. The rest is garbage.
//
// This is exact, not conservative, as long as trace() reports each strong Ref it owns once.
// A Ref that trace() forgets makes its target look held from outside: the collector leaks
// rather than frees a live object (validate_trace() in debug.cpp hunts for such fields).
//
// ---------------------------------------------------------------------------------------------
// Data structures (heap.hpp)
//
// Instead of CPython's doubly linked list through a 16-byte GC header, each heap keeps a table
// of slot words (object pointer | 4 flag bits) and each object stores its slot index next to its
// count: 8 bytes in the object plus 8 in the table. The table is ordered oldest segment first:
//   [ permanent | generation 2 | generation 1 | generation 0 ]
// so "generation k and all younger ones" is a suffix and needs no list merging; promoting the
// survivors of a collection is moving one boundary; make() appends; a dying object's hole is
// filled from the end of its segment and each younger one (Heap::untrack, at most four moves).
// The scans below walk that suffix in table order, which is allocation order: for objects made
// in sequence it is also the order of their blocks in trimalloc's pools, so scanning reads
// memory mostly forward (bench/gc measures table order against a shuffled order).
//
// Scratch per collected object lives beside the table, indexed by table position, not in the
// object, so the header stays 8 bytes: Heap::gc_refs (the count being reduced, 4 bytes), and
// the edges the subtract pass records (Heap::edge_start, 4 bytes, plus Heap::edges, 4 bytes
// per reference between two collected objects). It is kept for the next collection while the
// heap stays that large and released once it has shrunk. Reading those edges instead of
// calling trace() a second time, marking a live list takes about 2 ns per object instead of
// 6-7 (docs/gc.md, "Where the time goes").
//
// Invariants, outside a collection:
//   I1  every tracked object has exactly one slot; table[o->slot_] points at o;
//   I2  an object is tracked from the end of make() until release() untracks it;
//   I3  objects of this heap are referenced only from this thread (debug builds check).
// During a collection, objects found unreachable are detached: their slot_ carries kDetached
// and indexes Heap::unreachable. While the collection runs user code that could drop
// references (weak reference callbacks, finalizers), it holds one reference to each of them,
// so none can be freed under it; an entry of an object freed later becomes kGoneEntry.
//
// ---------------------------------------------------------------------------------------------
// One collection of generation g (collect_generation below), in CPython's order:
//
//   1. update_refs     gc_refs[i] = count of object i, for the suffix [begin(g), size)
//   2. subtract_refs   trace() every object; each reported edge into the suffix decrements,
//                      and is recorded as the index of its target (1 and 2 are one pass)
//   3. reachability    gc_refs > 0 are roots; mark everything they reach over the recorded
//                      edges, in one pass in table order that returns (with an explicit stack,
//                      never recursion) only for edges to objects it already passed; CPython
//                      3.12's move_unreachable. If the edges could not be recorded (memory, or
//                      more than 2^32 of them), marking calls trace() again instead.
//   4. legacy          unreachable objects whose type has a legacy finalizer, and everything
//                      they reach, are uncollectable (Python before 3.4): kept, and later
//                      appended to garbage()
//   5. partition       survivors are compacted in place and the boundary moves, so they now
//                      belong to generation g+1; the unreachable are detached. With no
//                      finalizer, weak reference or legacy type among them, nothing can run
//                      user code before step 10, and this pass clears their Refs as well
//                      (the first half of 10) while each object is in cache: 6-9 do nothing.
//   6. weak refs       weak references with callbacks to unreachable objects are cleared; the
//                      callbacks of those not themselves reported by unreachable objects run
//   7. finalize        finalize() on every unreachable object that has one and has not run it
//                      (PEP 442: a flag in the slot word, so never twice, even if resurrected)
//   8. resurrection    if user code ran in 6 or 7, redo steps 1-3 on the unreachable set with
//                      the collection's own hold discounted; whatever is now held from outside,
//                      and everything it reaches, goes back to the table
//   9. weak refs       every remaining weak reference to the unreachable is cleared, including
//                      ones finalizers created
//  10. clear           trace() each object once more, this time resetting every Ref it reports
//                      (CPython's tp_clear), then free every object whose count is now zero:
//                      destructors run with those members already null, and the blocks go back
//                      to the allocator 256 at a time (tm_free_batch: one entry into the
//                      thread's heap per batch, one ownership check per pool, instead of both
//                      per block). DEBUG_SAVEALL instead moves the unreachable into garbage().
//  11. uncollectable   legacy objects still alive after 10 go to garbage()
//
// Automatic collection follows CPython's thresholds: generation 0 is collected when the count of
// allocations minus deallocations exceeds threshold 0, generation k+1 when generation k has been
// collected more than threshold k+1 times, and a full collection only when the objects that
// entered generation 2 since the last full one exceed 25% of those that survived it, so that
// building a large live structure costs linear, not quadratic, time.
// ---------------------------------------------------------------------------------------------
#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <ctime>
#include <new>
#include <stdexcept>
#include <utility>

#ifdef TRIMALLOC_GC_PHASE_TIMES
#include <sys/resource.h>
#endif

#include <trimalloc/trimalloc.h>

#include "heap.hpp"

namespace trimalloc::gc::detail {

namespace {

// gc_refs marks (see kLastMark); any value above them is an unmarked object's count.
constexpr std::int32_t kReachable = INT32_MIN;
constexpr std::int32_t kUncollectable = INT32_MIN + 1;
static_assert(kUncollectable == kLastMark);
constexpr std::uint32_t kMaxCount = 0x7fffffffu;
// Scratch buffers up to this many entries are always kept between collections.
constexpr std::size_t kKeepScratch = std::size_t{1} << 16;
bool marked(std::int32_t value) {
  return value <= kLastMark;
}

// The objects one pass works on: table positions [base, base + n), or, with base == kDetached,
// Heap::unreachable[0, n). Either way, "slot_ - base < n" tells whether an edge stays inside.
struct Scan {
  Heap* heap;
  std::uint32_t base;
  std::uint32_t n;

  Object* at(std::uint32_t i) const noexcept {
    return object_of(base == kDetached ? heap->unreachable[i] : heap->table[base + i]);
  }
};

// The edge buffer filled up during the run of objects [run_first, run_end) (the subtract pass
// checks once per run): grow it and record again the edges of the object that filled it and of
// every later one of the run (their subtractions are done and stay). Returns false, and the scan
// goes on without recording, if the edges would not fit in 32-bit offsets (edge_limit) or
// memory.
bool grow_edges(const Scan& scan, Tracer& subtracter, std::uint32_t run_first,
                std::uint32_t run_end) {
  Heap& heap = *scan.heap;
  std::uint32_t* const start = heap.edge_start.data();
  const auto full =
      static_cast<std::uint32_t>(TracerAccess::edge_out(subtracter) - heap.edges.data());
  // The objects that started at the end of the full buffer lost all their edges; the one
  // before them (or the run's first) filled it and may have lost some.
  std::uint32_t j = run_first;
  while (j + 1 < run_end && start[j + 1] != full) ++j;
  // Every edge of the scan so far: those recorded, and those the full buffer only counted
  // (since it last had room, which was within this run).
  const std::size_t needed = std::size_t{full} + TracerAccess::lost(subtracter);
  if (needed >= heap.edge_limit) return false;
  const std::size_t size =
      std::min(std::max(2 * heap.edges.size(), needed + needed / 2), heap.edge_limit);
  try {
    heap.edges.grow(size, start[j]);
  } catch (const std::bad_alloc&) {
    return false;
  }
  std::uint32_t* const edges = heap.edges.data();
  std::uint32_t* out = edges + start[j];
  Targets targets;
  Tracer recorder = TracerAccess::visitor();
  for (std::uint32_t k = j; k < run_end; ++k) {
    start[k] = static_cast<std::uint32_t>(out - edges);
    auto [target, last] = targets.visit(scan.at(k), recorder);
    for (; target != last; ++target) {
      std::uint32_t i = Access::slot(*target) - scan.base;
      if (i < scan.n) *out++ = i;
    }
  }
  TracerAccess::set_edge_buffer(subtracter, out,
                                edges + std::min(heap.edges.size(), heap.edge_limit));
  return true;
}

// Steps 1 and 2 in one pass, so each object is read once: gc_refs[i] gets object i's count
// (less kDiscount) added and, through trace(), one subtracted per edge into the scan. Entries
// may dip below zero until the edges into them from later objects have all been counted.
// The same pass records those edges (Heap::edges), so that marking reachability reads a
// compact array instead of calling every object's trace() a second time. Returns whether the
// edges were recorded; `flags` gets the union of the scanned objects' slot flags.
//
// The loop over one run walks four cursors (slot words, gc_refs, edge_start, and the end) and
// keeps them, the flags and the edge buffer's base in the six registers a call preserves, so
// that nothing but the Tracer's own fields is read from memory around each trace().
//
// Each object is read here for the first time in the collection, in table order: allocation
// order, so mostly forward in memory, but jumping from pool to pool and page to page where the
// hardware's prefetchers stop. In a big scan the pass asks for the object kPrefetchAhead entries
// ahead (kPrefetch). bench/gc/ab, 10^6 objects (48 MB, beyond the 32 MiB L3 of the AMD machine
// measured): 7-15% less time, best of 11 runs, for live heaps and garbage; 16 ahead no better
// than none, 64 as good as 32. A small scan, the young collections above all, has its objects
// in cache: there the prefetch's 7 instructions per object could only cost, so it starts at
// kPrefetchFromObjects. (At 10^5 both builds, prefetching or not, timed 4-6% apart from the
// build without the change: code layout, which moves these loops' times by as much.)
constexpr std::ptrdiff_t kPrefetchAhead = 32;
constexpr std::uint32_t kPrefetchFromObjects = std::uint32_t{1} << 18;
template <std::uint32_t kDiscount, bool kPrefetch>
bool subtract_pass(const Scan& scan, std::uintptr_t& flags) {
  Heap& heap = *scan.heap;
  const std::uint32_t n = scan.n;
  heap.gc_refs.reserve_fresh(n);
  std::int32_t* const refs = heap.gc_refs.data();
  std::fill(refs, refs + n, 0);
  heap.edge_start.reserve_fresh(std::size_t{n} + 1);
  // Two edges per object to start with; pages that stay unused are never touched.
  heap.edges.reserve_fresh(std::min(2 * std::size_t{n} + 16, heap.edge_limit));
  std::uint32_t* const start = heap.edge_start.data();
  // Where the edges go; changes only when grow_edges() moves them. Once recording has given
  // up, the buffer is empty from here on: edges are only counted, and `start` is not used.
  std::uint32_t* edge_base = heap.edges.data();
  Tracer subtracter = TracerAccess::subtracter(
      refs, scan.base, n, edge_base, edge_base + std::min(heap.edges.size(), heap.edge_limit));
  bool recording = heap.edge_limit != 0;
  std::uintptr_t all_flags = 0;
  std::uint32_t all_counts = 0;  // the union of the counts added, to find one above kMaxCount
  std::uint32_t i = 0;
  while (i < n) {
    // The table in contiguous runs (its chunks), or the whole detached list.
    std::uint32_t len;
    const std::uintptr_t* words =
        scan.base == kDetached ? heap.unreachable.data() + i : heap.table.run(scan.base + i, len);
    if (scan.base == kDetached || len > n - i) len = n - i;
    std::int32_t* r = refs + i;
    std::uint32_t* st = start + i;
    const std::uint32_t run_first = i;
    i += len;
    for (const std::uintptr_t* end = words + len; words != end; ++words, ++r, ++st) {
      // Not past the run: the table's chunks are separate arrays.
      if (kPrefetch && end - words > kPrefetchAhead)
        __builtin_prefetch(object_of(words[kPrefetchAhead]));
      const std::uintptr_t word = *words;
      all_flags |= word;
      Object* o = object_of(word);
      const std::uint32_t count = Access::refcount(o) - kDiscount;
      all_counts |= count;
      // Modulo 2^32: a count above kMaxCount is set right after the pass.
      *r = static_cast<std::int32_t>(static_cast<std::uint32_t>(*r) + count);
      *st = static_cast<std::uint32_t>(TracerAccess::edge_out(subtracter) - edge_base);
      Access::trace(o, subtracter);
    }
    // A full buffer only counts the edges it has no room for (the subtractions are all made):
    // tested once per run, not once per object.
    if (TracerAccess::lost(subtracter) != 0 && recording) [[unlikely]] {
      recording = grow_edges(scan, subtracter, run_first, i);
      edge_base = heap.edges.data();
      if (!recording) TracerAccess::set_edge_buffer(subtracter, edge_base, edge_base);
    }
  }
  if (all_counts > kMaxCount) [[unlikely]] {
    // Such a count is taken as kMaxCount, which no number of edges in a scan can use up: the
    // object is a root. The pass added it modulo 2^32, and the edges into it subtracted.
    for (std::uint32_t k = 0; k < n; ++k) {
      const std::uint32_t count = Access::refcount(scan.at(k)) - kDiscount;
      if (count <= kMaxCount) continue;
      refs[k] = static_cast<std::int32_t>(static_cast<std::uint32_t>(refs[k]) - count + kMaxCount);
    }
  }
  flags = all_flags;
  if (!recording) return false;
  start[n] = static_cast<std::uint32_t>(TracerAccess::edge_out(subtracter) - edge_base);
  return true;
}
template <std::uint32_t kDiscount>
bool subtract_internal_refs(const Scan& scan, std::uintptr_t& flags) {
  return scan.n >= kPrefetchFromObjects ? subtract_pass<kDiscount, true>(scan, flags)
                                        : subtract_pass<kDiscount, false>(scan, flags);
}

// Marking by calling trace(), for when the edges were not recorded (see grow_edges).
// Everything reachable from Heap::worklist gets `mark`. Returns how many objects it visited.
// `targets` is the caller's, so that a pass over many roots allocates its buffer once.
std::uint32_t propagate_traced(const Scan& scan, std::int32_t mark, Targets& targets) {
  Heap& heap = *scan.heap;
  std::int32_t* refs = heap.gc_refs.data();
  Tracer marker = TracerAccess::visitor();
  std::uint32_t visited = 0;
  while (!heap.worklist.empty()) {
    Object* o = heap.worklist.back();
    heap.worklist.pop_back();
    auto [target, last] = targets.visit(o, marker);
    for (; target != last; ++target) {
      std::uint32_t i = Access::slot(*target) - scan.base;
      if (i < scan.n && !marked(refs[i])) {
        refs[i] = mark;
        heap.worklist.push_back(*target);
      }
    }
    ++visited;
  }
  return visited;
}

// The same over the recorded edges, from the `top` indexes on Heap::index_stack. An object
// reached at or after `scan_from` is only marked, not pushed: the caller's scan will meet it.
// Each object is pushed at most once, so the stack never needs more than n entries.
std::uint32_t propagate_edges(Heap& heap, std::uint32_t top, std::int32_t mark,
                              std::uint32_t scan_from) {
  std::int32_t* refs = heap.gc_refs.data();
  const std::uint32_t* start = heap.edge_start.data();
  const std::uint32_t* edges = heap.edges.data();
  std::uint32_t* stack = heap.index_stack.data();
  std::uint32_t visited = 0;
  while (top != 0) {
    std::uint32_t j = stack[--top];
    ++visited;
    for (std::uint32_t e = start[j], end = start[j + 1]; e != end; ++e) {
      std::uint32_t target = edges[e];
      if (marked(refs[target])) continue;
      refs[target] = mark;
      if (target < scan_from) stack[top++] = target;
    }
  }
  return visited;
}

// Whether any of refs[0, 8) is a root (> 0) or marked reachable (kReachable), the entries
// mark_reachable_from_outside() acts on: as unsigned, exactly those with r - 1 below 2^31. One
// test of the sign of the eight values' AND, which the compiler does in two vector registers.
bool any_to_visit(const std::int32_t* refs) noexcept {
  std::uint32_t all = ~0u;
  for (int k = 0; k < 8; ++k) all &= static_cast<std::uint32_t>(refs[k]) - 1u;
  return (all >> 31) == 0;
}
static_assert(kReachable == INT32_MIN, "any_to_visit() relies on kReachable - 1 being INT32_MAX");

// Step 3: objects with references from outside are roots; what they reach is reachable.
// Returns the number of reachable objects. A trace() that reports more references than an
// object holds leaves a negative count: such an object has no outside references, but it is
// still marked if something reachable refers to it.
//
// With recorded edges this is CPython 3.12's move_unreachable, on indexes: one pass in table
// (allocation) order handles each root, and each object a root or an earlier object reached,
// as the pass meets it; an edge forward in the table only marks its target, and only an edge
// back to an object the pass already left behind as tentatively unreachable needs the stack.
// A list built in order, or pairs of objects, are marked in a single forward sweep.
std::uint32_t mark_reachable_from_outside(const Scan& scan, bool edges_recorded) {
  Heap& heap = *scan.heap;
  std::int32_t* refs = heap.gc_refs.data();
  const std::uint32_t n = scan.n;
  // Every object held from outside: nothing to propagate (a cheap check that usually stops at
  // the first object that is not).
  if (std::all_of(refs, refs + n, [](std::int32_t r) { return r > 0; })) {
    std::fill(refs, refs + n, kReachable);
    return n;
  }
  std::uint32_t reached = 0;
  if (!edges_recorded) {
    heap.worklist.clear();
    Targets targets;
    for (std::uint32_t i = 0; i < n; ++i) {
      if (refs[i] > 0) {
        refs[i] = kReachable;
        heap.worklist.push_back(scan.at(i));
        reached += propagate_traced(scan, kReachable, targets);
      }
    }
    return reached;
  }
  heap.index_stack.reserve_fresh(n);
  const std::uint32_t* start = heap.edge_start.data();
  const std::uint32_t* edges = heap.edges.data();
  std::uint32_t* stack = heap.index_stack.data();
  for (std::uint32_t i = 0; i < n; ++i) {
    // Past eight tentatively unreachable entries at once (a scan of garbage is nearly all
    // such): none of them has anything to do until an object the pass handles marks it, and
    // the pass handles none of these eight.
    if ((i & 7) == 0 && n - i >= 8 && !any_to_visit(refs + i)) {
      i += 7;
      continue;
    }
    std::int32_t r = refs[i];
    if (r <= 0 && r != kReachable) continue;  // tentatively unreachable
    refs[i] = kReachable;
    ++reached;
    std::uint32_t top = 0;
    for (std::uint32_t e = start[i], end = start[i + 1]; e != end; ++e) {
      std::uint32_t target = edges[e];
      if (marked(refs[target])) continue;
      refs[target] = kReachable;
      if (target < i) stack[top++] = target;
    }
    if (top != 0) reached += propagate_edges(heap, top, kReachable, i);
  }
  return reached;
}

void note_weak_held_by_garbage(Tracer&, WeakRecord* record) {
  record->held_by_garbage = true;
}

// Steps 6 and 9. Returns whether any callback was due (user code may have run).
bool handle_weakrefs(Heap& heap, bool callbacks_only) {
  std::vector<WeakRecord*> due;
  for (std::uint32_t i = 0; i < heap.unreachable.size(); ++i) {
    const std::uintptr_t word = heap.unreachable[i];
    if (!(word & kHasWeakRefs)) continue;
    std::vector<WeakRecord*> taken = take_weakrefs(heap, object_of(word), callbacks_only);
    due.insert(due.end(), taken.begin(), taken.end());
  }
  if (due.empty()) return false;
  // A weak reference that is a member of an unreachable object is garbage itself; its callback
  // would run on behalf of an object that is about to vanish (CPython skips those too). We know
  // it is one when the unreachable object's trace() reports it.
  Targets ignored;
  Tracer tracer = TracerAccess::visitor(note_weak_held_by_garbage);
  for (std::uint32_t i = 0; i < heap.unreachable.size(); ++i) {
    ignored.visit(object_of(heap.unreachable[i]), tracer);
  }
  run_weak_callbacks(due);
  return true;
}

// Step 8: objects a finalizer or callback made reachable again go back to the table.
void handle_resurrected(Heap& heap, int survivor_segment) {
  Scan scan{&heap, kDetached, static_cast<std::uint32_t>(heap.unreachable.size())};
  std::uintptr_t flags;
  const bool edges = subtract_internal_refs<1>(scan, flags);  // 1: the collection's own hold
  mark_reachable_from_outside(scan, edges);
  std::uint32_t kept = 0;
  for (std::uint32_t i = 0; i < scan.n; ++i) {
    std::uintptr_t word = heap.unreachable[i];
    Object* o = object_of(word);
    if (heap.gc_refs.data()[i] == kReachable) {
      heap.reattach(o, word, survivor_segment);
      --Access::refcount(o);  // cannot reach zero: something outside holds it or its referrer
    } else {
      heap.unreachable[kept] = word;
      Access::slot(o) = kDetached | kept;
      ++kept;
    }
  }
  heap.unreachable.truncate(kept);
}

// What free_garbage does with the detached entry `word`: true if the object is to be destroyed
// (its slot is marked untracked already), false if it was skipped, released or put back.
inline bool take_for_destruction(Heap& heap, std::uintptr_t word, int survivor_segment) {
  Object* o = object_of(word);
  if (word & kFlagMask) [[unlikely]] {
    if (word == kGoneEntry) return false;
    // A destructor made a weak reference to it, or it has a finalizer to run (if it ran
    // one, it is freed below like the others).
    if (Access::refcount(o) == 0 &&
        ((word & kHasWeakRefs) || (word & (kHasFinalizer | kFinalized)) == kHasFinalizer)) {
      release(o);
      return false;
    }
  }
  if (Access::refcount(o) != 0) [[unlikely]] {
    heap.reattach(o, word, survivor_segment);
    return false;
  }
  // Heap::untrack() for a detached object, less marking its entry, which nothing reads
  // again: this pass has passed it, and find_word() stops at the untracked slot. The
  // allocation count goes down once for all of them, in free_garbage.
  Access::slot(o) = kUntracked;
  return true;
}

// The second half of step 10: free every garbage object whose count is now zero (its Refs
// are cleared), so destructors run with those members already null. Whatever is still
// referenced (by a Ref that trace() does not report) survives like any live object.
// Destructors may free garbage early through such unreported Refs: untrack() then replaces its
// entry with kGoneEntry, which this pass skips. Nothing adds entries or moves the list meanwhile
// (no collection starts inside this one), so its address and size are read once.
//
// The blocks of destroyed garbage are freed together with tm_free_batch: the allocator then
// enters the thread's heap once per batch and checks ownership once per pool instead of once
// per block (docs/gc.md, "Where the time goes"). Freeing a block a little later changes nothing
// a destructor can see: the object is gone either way. The batch and its count are locals the
// destructors cannot see, so the count stays in a register across their calls.
void free_garbage(Heap& heap, int survivor_segment) {
  heap.begin_destroy_pass();
  const std::uint32_t n = heap.unreachable.size();
  const std::uintptr_t* const words = heap.unreachable.data();
  constexpr std::size_t kBatch = 256;
  void* blocks[kBatch];
  std::size_t in_batch = 0;
  std::size_t freed = 0;
  // A destructor that destroys more objects opens and closes its own frames, so the depth is
  // the same before each object of the pass: one test decides for all of them whether they
  // are queued (see Heap::begin_destroy_pass) instead of destroyed here.
  if (heap.destroy_depth > Heap::kTrashcanDepth) [[unlikely]] {
    for (std::uint32_t i = 0; i < n; ++i) {
      const std::uintptr_t word = words[i];  // re-read: destructors may free or flag it
      if (!take_for_destruction(heap, word, survivor_segment)) continue;
      heap.deferred_destroy.push_back(object_of(word));
      ++freed;
    }
  } else {
    std::size_t i = 0;
    while (i < n) {
      // At most as many objects as the batch has room for: the loop's one test per object
      // also stops it at a full batch.
      const std::size_t stop = i + std::min(n - i, kBatch - in_batch);
      for (; i < stop; ++i) {
        const std::uintptr_t word = words[i];  // re-read: destructors may free or flag it
        if (!take_for_destruction(heap, word, survivor_segment)) [[unlikely]]
          continue;
        blocks[in_batch++] = Access::destruct(object_of(word));
      }
      if (in_batch == kBatch) {
        tm_free_batch(blocks, kBatch);
        freed += kBatch;
        in_batch = 0;
      }
    }
  }
  tm_free_batch(blocks, in_batch);
  freed += in_batch;
  heap.count[0] -= std::min(heap.count[0], freed);
  heap.end_destroy_pass();
  if (heap.unreachable.borrowed()) heap.unreachable.end_borrow();
  heap.unreachable.truncate(0);
  if (heap.unreachable.capacity() > kKeepScratch &&
      heap.unreachable.capacity() > 2 * std::size_t{heap.table.size()}) {
    heap.unreachable.release();
  }
}

// Step 10 after user code may have run (or for DEBUG_SAVEALL): reset every Ref the detached
// garbage's trace() reports, then free_garbage(). A reference to an object outside the garbage
// is released right after that object's trace() returns.
void delete_garbage(Heap& heap, int survivor_segment) {
  if (heap.debug & DEBUG_SAVEALL) {
    for (std::uint32_t i = 0; i < heap.unreachable.size(); ++i) {
      const std::uintptr_t word = heap.unreachable[i];
      Object* o = object_of(word);
      heap.reattach(o, word, survivor_segment);
      heap.garbage.push_back(Ref<Object>(o));
    }
    heap.unreachable.truncate(0);
    return;
  }
  Targets outside;
  Tracer clearer = TracerAccess::clearer();
  for (std::uint32_t i = 0; i < heap.unreachable.size(); ++i) {
    if (heap.unreachable[i] == kGoneEntry) continue;
    outside.clear(object_of(heap.unreachable[i]), clearer);
    if (outside.empty()) continue;
    for (Object* o : outside) decref(o);  // may run destructors: user code
    outside.drop();
  }
  free_garbage(heap, survivor_segment);
}

// Step 5's pass (see collect_generation): survivors are compacted towards the scan's start,
// written back behind the read position, never ahead of it; the unreachable are appended to
// `detached`. With kClear, each of them also has its Refs cleared (the clearer), and their
// flags are not collected: clear_now is only chosen when none has a flag that matters.
// A survivor moves exactly when garbage precedes it (n_detached != 0). Only what the loop
// needs is kept in registers across the clearer's calls into trace().
struct Partition {
  std::uint32_t kept;        // the table's new size
  std::uint32_t n_detached;  // entries written to `detached`
  std::uintptr_t flags;      // union of the flags of the detached (without kClear)
};
template <bool kClear>
Partition partition(const Scan& scan, std::uintptr_t* detached, Tracer& clearer, Targets& outside) {
  Heap& heap = *scan.heap;
  const std::int32_t* refs = heap.gc_refs.data();
  std::uint32_t kept = scan.base;
  std::uint32_t n_detached = 0;
  std::uintptr_t flags = 0;
  // As in the subtract pass: a big scan's objects are long out of the cache when this pass
  // writes the slot of garbage (and of survivors that move) and clears its Refs.
  const bool prefetch = scan.n >= kPrefetchFromObjects;
  std::uint32_t i = 0;
  while (i < scan.n) {
    // The table in contiguous runs (its chunks).
    std::uint32_t len;
    const std::uintptr_t* words = heap.table.run(scan.base + i, len);
    if (len > scan.n - i) len = scan.n - i;
    const std::int32_t* r = refs + i;
    const std::uint32_t run_detached = n_detached;
    i += len;
    for (const std::uintptr_t* end = words + len; words != end; ++words, ++r) {
      if (prefetch && end - words > kPrefetchAhead)
        __builtin_prefetch(object_of(words[kPrefetchAhead]), 1);
      const std::uintptr_t word = *words;
      if (!marked(*r)) {
        Object* o = object_of(word);
        Access::slot(o) = kDetached | n_detached;
        detached[n_detached++] = word;
        if constexpr (kClear) {
          Access::trace(o, clearer);
        } else {
          flags |= word;
        }
        continue;
      }
      if (n_detached != 0) {
        heap.table[kept] = word;
        Access::slot(object_of(word)) = kept;
      }
      ++kept;
    }
    if constexpr (kClear) {
      // Once the buffer is full, every trace() leaves its Refs out of the scan as they are
      // (and counts them), until it gets room: the objects of this run are cleared again,
      // which takes only those. Tested once per run, not once per object.
      if (TracerAccess::lost(clearer) != 0) [[unlikely]] {
        outside.hold(clearer);
        for (std::uint32_t k = run_detached; k < n_detached; ++k) {
          outside.clear(object_of(detached[k]), clearer);
        }
      }
    }
  }
  if constexpr (kClear) outside.hold(clearer);
  return {kept, n_detached, flags};
}

// -DTRIMALLOC_GC_PHASE_TIMES=ON (CMake): each collection of at least kPhaseTimesMin objects
// prints the thread CPU time of its phases, in ns per object examined, to stderr. A tool for
// tuning the collector (docs/gc.md quotes it), off in every normal build.
#ifdef TRIMALLOC_GC_PHASE_TIMES
class PhaseTimes {
 public:
  static constexpr std::uint32_t kPhaseTimesMin = 100000;
  void mark() noexcept {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    rusage usage;
    getrusage(RUSAGE_THREAD, &usage);
    if (count_ < kMax) {
      faults_[count_] = usage.ru_minflt + usage.ru_majflt;
      at_[count_++] = static_cast<double>(ts.tv_sec) * 1e9 + ts.tv_nsec;
    }
  }
  void print(int generation, std::uint32_t n) const noexcept {
    if (n < kPhaseTimesMin || count_ != kMax) return;
    auto per = [&](int k) { return (at_[k + 1] - at_[k]) / n; };
    auto faults = [&](int k) { return faults_[k + 1] - faults_[k]; };
    std::fprintf(stderr,
                 "gc phases: generation %d, %u objects: subtract %.2f mark %.2f partition %.2f "
                 "user %.2f free %.2f ns per object; page faults: subtract_faults=%ld "
                 "mark_faults=%ld partition_faults=%ld user_faults=%ld free_faults=%ld\n",
                 generation, n, per(0), per(1), per(2), per(3), per(4), faults(0), faults(1),
                 faults(2), faults(3), faults(4));
  }

 private:
  static constexpr int kMax = 6;
  double at_[kMax] = {};
  long faults_[kMax] = {};
  int count_ = 0;
};
#else
struct PhaseTimes {
  void mark() noexcept {}
  void print(int, std::uint32_t) const noexcept {}
};
#endif

void print_generation_sizes(Heap& heap) {
  std::fprintf(stderr, "gc: objects in each generation: %u %u %u\n",
               heap.segment_end(kGen0) - heap.begin[kGen0],
               heap.segment_end(kGen1) - heap.begin[kGen1],
               heap.segment_end(kGen2) - heap.begin[kGen2]);
  std::fprintf(stderr, "gc: objects in permanent generation: %u\n", heap.begin[kGen2]);
}

// CPython's gc_collect_main. Returns {unreachable freed, uncollectable}.
std::pair<std::size_t, std::size_t> collect_generation(Heap& heap, int generation) {
  auto started = std::chrono::steady_clock::now();
  if (heap.debug & DEBUG_STATS) {
    std::fprintf(stderr, "gc: collecting generation %d...\n", generation);
    print_generation_sizes(heap);
  }
  if (heap.debug & DEBUG_VALIDATE) print_validation();

  if (generation + 1 < 3) ++heap.count[generation + 1];
  for (int i = 0; i <= generation; ++i) heap.count[i] = 0;

  // Steps 1-3 over the suffix that holds generation `generation` and every younger one.
  const std::uint32_t base = heap.begin[segment_of_generation(generation)];
  const Scan scan{&heap, base, heap.table.size() - base};
  PhaseTimes phases;
  phases.mark();
  std::uintptr_t scan_flags;  // union of the flags of every object scanned
  const bool edges = subtract_internal_refs<0>(scan, scan_flags);
  phases.mark();
  const std::uint32_t n_unreachable = scan.n - mark_reachable_from_outside(scan, edges);
  phases.mark();
  std::int32_t* refs = heap.gc_refs.data();

  // Step 4: legacy finalizers make their whole unreachable neighbourhood uncollectable.
  // The union of the flags of the unreachable (legacy or not) decides below whether user code
  // can run before the cycles are broken; when no object of the scan has any of those flags
  // (the common case), neither needs a pass over the unreachable.
  constexpr std::uintptr_t kNeedsCare = kHasWeakRefs | kHasFinalizer | kLegacy;
  std::uintptr_t candidate_flags = 0;
  std::vector<Ref<Object>> uncollectable;
  if (n_unreachable != 0 && (scan_flags & kNeedsCare)) {
    std::uint32_t top = 0;
    heap.worklist.clear();
    if (edges) heap.index_stack.reserve_fresh(scan.n);
    for (std::uint32_t i = 0; i < scan.n; ++i) {
      if (marked(refs[i])) continue;
      const std::uintptr_t word = heap.table[base + i];
      candidate_flags |= word;
      if (!(word & kLegacy)) continue;
      refs[i] = kUncollectable;
      if (edges) {
        heap.index_stack.data()[top++] = i;
      } else {
        heap.worklist.push_back(object_of(heap.table[base + i]));
      }
    }
    if (edges) {
      propagate_edges(heap, top, kUncollectable, scan.n);
    } else {
      Targets targets;
      propagate_traced(scan, kUncollectable, targets);
    }
    // Held here until step 11, in table order; they stay in the table (step 5 keeps them).
    for (std::uint32_t i = 0; i < scan.n; ++i) {
      if (refs[i] == kUncollectable) {
        uncollectable.push_back(Ref<Object>(object_of(heap.table[base + i])));
      }
    }
  }

  // Step 5: compact survivors (a survivor only moves when garbage precedes it) and detach the
  // unreachable. Nothing to do when everything survived, the common case for old generations.
  //
  // When no unreachable object has a finalizer, weak references or a legacy finalizer, no
  // user code can run before the cycles are broken (steps 6-9 have nothing to do), and the
  // same pass also clears each garbage object's Refs (the first half of step 10) while it has
  // the object in cache. References into the scan are dropped at once: to garbage, detached or
  // not yet, as in step 10; to a survivor, which is reachable, so something outside the
  // garbage holds a count on it and its count stays positive. References to objects outside
  // the scan are released once the table is consistent again.
  const bool clear_now = n_unreachable != 0 && !(candidate_flags & kNeedsCare) &&
                         !(heap.debug & (DEBUG_SAVEALL | DEBUG_COLLECTABLE));
  Targets outside;  // references the clearing took to objects outside the scan
  Tracer clearer = TracerAccess::clearer(base);  // the scan runs to the end of the table
  heap.unreachable.truncate(0);
  std::uintptr_t unreachable_flags = 0;  // union of the flags of the unreachable
  std::uint32_t kept = heap.table.size();
  if (n_unreachable != 0) {
    // trace() (the clearer) cannot reach the list: it is written through a pointer and counted
    // once at the end. When nothing but the free pass follows, the list goes into the edge
    // buffer, whose edges were read for the last time by the mark (and the legacy search): no
    // list of its own to allocate, and to fault in when the previous one went back to the
    // system. The buffer holds at least two edges, one list entry, per object (unless the
    // edge limit is small).
    std::uintptr_t* detached = clear_now && heap.edges.size() >= 2 * std::size_t{n_unreachable}
                                   ? heap.unreachable.borrow(heap.edges.data(), n_unreachable)
                                   : heap.unreachable.reserve_fresh(n_unreachable);
    if (clear_now) outside.arm(clearer, 0);
    Partition done = clear_now ? partition<true>(scan, detached, clearer, outside)
                               : partition<false>(scan, detached, clearer, outside);
    kept = done.kept;
    unreachable_flags = done.flags;
    heap.unreachable.set_size(done.n_detached);
    heap.table.truncate(kept);
  }
  const int survivor_segment = generation < 2 ? segment_of_generation(generation + 1) : kGen2;
  for (int s = survivor_segment + 1; s <= kGen0; ++s) heap.begin[s] = kept;
  if (generation == 1) heap.long_lived_pending += kept - base;
  if (generation == 2) {
    heap.long_lived_pending = 0;
    heap.long_lived_total = kept - base;
  }

  phases.mark();
  if (heap.debug & DEBUG_COLLECTABLE) {
    for (std::uint32_t i = 0; i < heap.unreachable.size(); ++i) {
      print_object_line("collectable", object_of(heap.unreachable[i]));
    }
  }

  // Steps 6-8 run user code (weak reference callbacks, finalizers), and only they do until the
  // cycles are broken. Until then only this collection can add flags to the unreachable, so the
  // union taken above says whether they have anything to do. While user code may run, the
  // collection holds a reference to each unreachable object, so that none is freed under it.
  const bool holding = unreachable_flags & (kHasWeakRefs | kHasFinalizer);
  if (holding) {
    for (std::uint32_t i = 0; i < heap.unreachable.size(); ++i) {
      ++Access::refcount(object_of(heap.unreachable[i]));
    }
  }
  bool user_code_ran = (unreachable_flags & kHasWeakRefs) && handle_weakrefs(heap, true);
  if (unreachable_flags & kHasFinalizer) {
    for (std::uint32_t i = 0; i < heap.unreachable.size(); ++i) {
      std::uintptr_t& word = heap.unreachable[i];
      if ((word & (kHasFinalizer | kFinalized)) != kHasFinalizer) continue;
      word |= kFinalized;
      run_finalizer(object_of(word));
      user_code_ran = true;
    }
  }
  if (user_code_ran) handle_resurrected(heap, survivor_segment);

  // Step 9. Once user code has run, a weak reference may have been made to any of them.
  if (user_code_ran || (unreachable_flags & kHasWeakRefs)) handle_weakrefs(heap, false);
  if (holding) {
    // A count may reach zero here (a finalizer dropped the last reference to one of them);
    // delete_garbage frees such an object after clearing its Refs, like any other.
    for (std::uint32_t i = 0; i < heap.unreachable.size(); ++i) {
      --Access::refcount(object_of(heap.unreachable[i]));
    }
  }

  // Step 10.
  phases.mark();
  const std::size_t collected = heap.unreachable.size();
  if (clear_now) {
    for (Object* o : outside) decref(o);  // may run destructors: user code
    free_garbage(heap, survivor_segment);
  } else {
    delete_garbage(heap, survivor_segment);
  }

  // Scratch is kept for the next collection (a fresh 4 MB buffer per million objects would be
  // paid in page faults each time) while the heap is as large; not once it has shrunk. Not
  // before the free pass: the detached list may be in the edge buffer.
  if (heap.gc_refs.size() > kKeepScratch &&
      heap.gc_refs.size() > 2 * std::size_t{heap.table.size()}) {
    heap.gc_refs.release();
    std::vector<Object*>().swap(heap.worklist);
    heap.edge_start.release();
    heap.edges.release();
    heap.index_stack.release();
  }

  phases.mark();
  phases.print(generation, scan.n);

  // Step 11. An uncollectable object whose only referrers were freed in step 10 was not in a
  // cycle after all; dropping our Ref lets counting run its finalizer and free it.
  std::size_t n_uncollectable = 0;
  for (Ref<Object>& o : uncollectable) {
    if (refcount(*o) == 1) continue;
    ++n_uncollectable;
    if (heap.debug & DEBUG_UNCOLLECTABLE) print_object_line("uncollectable", o.get());
    heap.garbage.push_back(o);
  }
  uncollectable.clear();

  GenerationStats& stats = heap.stats[generation];
  ++stats.collections;
  stats.collected += collected;
  stats.uncollectable += n_uncollectable;
  if (heap.debug & DEBUG_STATS) {
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::fprintf(stderr, "gc: done, %zu unreachable, %zu uncollectable, %.4fs elapsed\n",
                 collected + n_uncollectable, n_uncollectable, seconds);
  }
  return {collected, n_uncollectable};
}

void invoke_callbacks(Heap& heap, Phase phase, const CollectionInfo& info) {
  if (heap.callbacks.empty()) return;
  // A copy: a callback may add or remove callbacks.
  auto callbacks = heap.callbacks;
  for (auto& [id, callback] : callbacks) {
    try {
      callback(phase, info);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "gc: exception ignored in gc callback: %s\n", e.what());
    } catch (...) {
      std::fprintf(stderr, "gc: exception ignored in gc callback\n");
    }
  }
}

std::size_t collect_with_callbacks(Heap& heap, int generation) {
  heap.collecting = true;
  auto started = std::chrono::steady_clock::now();
  CollectionInfo info;
  info.generation = generation;
  invoke_callbacks(heap, Phase::start, info);
  auto [collected, uncollectable] = collect_generation(heap, generation);
  info.collected = collected;
  info.uncollectable = uncollectable;
  info.duration = std::chrono::steady_clock::now() - started;
  invoke_callbacks(heap, Phase::stop, info);
  heap.collecting = false;
  return collected + uncollectable;
}

}  // namespace

std::size_t set_edge_limit(std::size_t limit) noexcept {
  return std::exchange(current_heap().edge_limit, limit);
}

void collect_generations(Heap& heap) noexcept {
  for (int generation = 2; generation >= 0; --generation) {
    if (heap.count[generation] <= heap.threshold[generation]) continue;
    // The full-collection damper (CPython issue #4074): see the comment at the top.
    if (generation == 2 && heap.long_lived_pending < heap.long_lived_total / 4) continue;
    collect_with_callbacks(heap, generation);
    break;
  }
}

}  // namespace trimalloc::gc::detail

namespace trimalloc::gc {

using detail::current_heap;
using detail::Heap;

std::size_t collect(int generation) {
  if (generation < 0 || generation > 2) {
    throw std::invalid_argument("gc::collect: generation must be 0, 1 or 2");
  }
  Heap& heap = current_heap();
  if (heap.collecting) return 0;
  return detail::collect_with_callbacks(heap, generation);
}

void enable() {
  current_heap().enabled = true;
}
void disable() {
  current_heap().enabled = false;
}
bool is_enabled() {
  return current_heap().enabled;
}

void set_threshold(std::size_t threshold0, std::size_t threshold1, std::size_t threshold2) {
  current_heap().threshold = {threshold0, threshold1, threshold2};
}
std::array<std::size_t, 3> get_threshold() {
  return current_heap().threshold;
}
std::array<std::size_t, 3> get_count() {
  return current_heap().count;
}
std::array<GenerationStats, 3> get_stats() {
  return current_heap().stats;
}

void set_debug(int flags) {
  current_heap().debug = flags;
}
int get_debug() {
  return current_heap().debug;
}

std::vector<Ref<Object>>& garbage() {
  return current_heap().garbage;
}

CallbackId add_callback(Callback callback) {
  Heap& heap = current_heap();
  CallbackId id = heap.next_callback_id++;
  heap.callbacks.emplace_back(id, std::move(callback));
  return id;
}

bool remove_callback(CallbackId id) {
  auto& callbacks = current_heap().callbacks;
  for (auto it = callbacks.begin(); it != callbacks.end(); ++it) {
    if (it->first == id) {
      callbacks.erase(it);
      return true;
    }
  }
  return false;
}

void freeze() {
  Heap& heap = current_heap();
  for (int s = detail::kGen2; s <= detail::kGen0; ++s) heap.begin[s] = heap.table.size();
  heap.count[0] = 0;
}

void unfreeze() {
  current_heap().begin[detail::kGen2] = 0;
}

std::size_t get_freeze_count() {
  return current_heap().begin[detail::kGen2];
}

}  // namespace trimalloc::gc
