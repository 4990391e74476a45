// gc::WeakRef<T>: a reference that does not keep its referent alive.
//
// Copies of one WeakRef share a heap-allocated record (like a CPython weakref object shared by
// its holders); the referent's heap keeps, per object, a list of the records pointing at it and
// clears them when the object dies. A record's callback runs once, after the record is cleared,
// and only if some WeakRef still holds the record at that moment: a weak reference that died
// first (or that belongs to garbage and was reported by its owner's trace()) never calls back.
#pragma once
#include <cstdint>
#include <functional>

#include "trimalloc/gc/tracer.hpp"

namespace trimalloc::gc {

using WeakCallback = std::function<void()>;

namespace detail {

struct WeakRecord {
  Object* referent;  // null once cleared
  void* typed;       // the referent as the creating WeakRef's T*, for lock()
  WeakRecord* prev;  // neighbours in the referent's list
  WeakRecord* next;
  std::uint32_t holders;  // WeakRef copies, plus one per pending callback invocation
  bool held_by_garbage;   // scratch during a collection
  WeakCallback callback;
};

WeakRecord* weak_attach(Object* referent, void* typed, WeakCallback callback);
void weak_release(WeakRecord* record) noexcept;

}  // namespace detail

template <class T>
class WeakRef {
 public:
  WeakRef() noexcept = default;
  WeakRef(std::nullptr_t) noexcept {}
  // `callback` runs when the referent dies, with this weak reference already cleared.
  template <class U>
  requires std::is_convertible_v<U*, T*> WeakRef(const Ref<U>& ref, WeakCallback callback = {}) {
    if (ref) {
      T* typed = ref.get();
      record_ = detail::weak_attach(detail::as_object(typed),
                                    const_cast<void*>(static_cast<const void*>(typed)),
                                    std::move(callback));
    }
  }
  WeakRef(const WeakRef& other) noexcept : record_(other.record_) {
    if (record_) ++record_->holders;
  }
  WeakRef(WeakRef&& other) noexcept : record_(std::exchange(other.record_, nullptr)) {}
  WeakRef& operator=(WeakRef other) noexcept {
    std::swap(record_, other.record_);
    return *this;
  }
  template <class U>
  requires std::is_convertible_v<U*, T*> WeakRef& operator=(const Ref<U>& ref) {
    return *this = WeakRef(ref);
  }
  ~WeakRef() { reset(); }

  void reset() noexcept {
    if (record_) detail::weak_release(std::exchange(record_, nullptr));
  }

  Ref<T> lock() const noexcept {
    if (!record_ || !record_->referent) return nullptr;
    return Ref<T>(static_cast<T*>(record_->typed));
  }
  bool expired() const noexcept { return !record_ || !record_->referent; }

 private:
  friend class Tracer;
  detail::WeakRecord* record_ = nullptr;
};

template <class T>
void Tracer::operator()(WeakRef<T>& weak) {
  if (weak.record_ && weak_visit_) weak_visit_(*this, weak.record_);
}

}  // namespace trimalloc::gc
