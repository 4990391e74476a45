// Weak references: per-object record lists, clearing and callbacks.
//
// A record is owned jointly by its WeakRef copies and by whoever is about to run its callback
// (`holders` counts both); it is unlinked from its referent's list when cleared or when the last
// holder lets go. Callbacks are copied out of the record before they run, since a callback may
// destroy the very WeakRef (and so the record) it belongs to, as WeakValueMap's callbacks do.
#include <cstdio>
#include <exception>

#include "heap.hpp"

namespace trimalloc::gc::detail {

namespace {

void unlink(Heap& heap, WeakRecord* record) noexcept {
  if (record->prev) {
    record->prev->next = record->next;
  } else {
    auto it = heap.weak_lists.find(record->referent);
    if (record->next) {
      it->second = record->next;
    } else {
      heap.weak_lists.erase(it);
      heap.word(record->referent) &= ~kHasWeakRefs;
    }
  }
  if (record->next) record->next->prev = record->prev;
  record->prev = record->next = nullptr;
  record->referent = nullptr;
}

}  // namespace

WeakRecord* weak_attach(Object* referent, void* typed, WeakCallback callback) {
  auto* record = new WeakRecord{nullptr, typed, nullptr, nullptr, 1, false, std::move(callback)};
  Heap& heap = current_heap();
  // An object under construction or destruction is untracked: it has no slot to flag and, for
  // weak purposes, is not alive yet or any more, so the reference starts out cleared.
  std::uintptr_t* word = heap.find_word(referent);
  if (!word) {
    if (Access::slot(referent) != kUntracked) (void)heap.word(referent);  // wrong thread: abort
    return record;
  }
  record->referent = referent;
  WeakRecord*& head = heap.weak_lists[referent];
  record->next = head;
  if (head) head->prev = record;
  head = record;
  *word |= kHasWeakRefs;
  return record;
}

void weak_release(WeakRecord* record) noexcept {
  if (--record->holders != 0) return;
  if (record->referent) unlink(current_heap(), record);
  delete record;
}

// Calls the callbacks of `records` (each carries one extra hold, dropped here). A record whose
// WeakRefs are all gone is skipped: Python does not call back for a dead weak reference.
void run_weak_callbacks(const std::vector<WeakRecord*>& records) noexcept {
  for (WeakRecord* record : records) {
    if (record->holders > 1 && record->callback && !record->held_by_garbage) {
      WeakCallback callback = record->callback;
      try {
        callback();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "gc: exception ignored in weak reference callback: %s\n", e.what());
      } catch (...) {
        std::fprintf(stderr, "gc: exception ignored in weak reference callback\n");
      }
    }
    weak_release(record);
  }
}

// Clears the records of `o` (all of them, or only those with callbacks) and returns the ones
// with callbacks, each with an extra hold, for run_weak_callbacks().
std::vector<WeakRecord*> take_weakrefs(Heap& heap, Object* o, bool callbacks_only) {
  std::vector<WeakRecord*> with_callbacks;
  auto it = heap.weak_lists.find(o);
  if (it == heap.weak_lists.end()) return with_callbacks;
  WeakRecord* record = it->second;
  while (record) {
    WeakRecord* next = record->next;
    if (!callbacks_only || record->callback) {
      if (record->callback) {
        ++record->holders;
        record->held_by_garbage = false;
        with_callbacks.push_back(record);
      }
      unlink(heap, record);
    }
    record = next;
  }
  return with_callbacks;
}

void clear_weakrefs(Heap& heap, Object* o) noexcept {
  run_weak_callbacks(take_weakrefs(heap, o, false));
}

}  // namespace trimalloc::gc::detail
