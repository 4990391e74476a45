// gc::Ref<T>: the strong, counted, intrusive pointer. Every Ref that lives inside a collected
// object must be reported by that object's trace(); Refs anywhere else (stack, globals, plain
// containers) are what the collector sees as "held from outside" and are never scanned for.
#pragma once
#include <compare>
#include <cstddef>
#include <functional>
#include <type_traits>
#include <utility>

#include "trimalloc/gc/object.hpp"

namespace trimalloc::gc {

template <class T>
class Ref {
 public:
  using element_type = T;

  constexpr Ref() noexcept = default;
  constexpr Ref(std::nullptr_t) noexcept {}
  // Adds a reference to an object that is already owned elsewhere, e.g. Ref<Node>(this).
  explicit Ref(T* p) noexcept : ptr_(p) {
    if (ptr_) detail::incref(detail::as_object(ptr_));
  }
  Ref(const Ref& other) noexcept : Ref(other.ptr_) {}
  Ref(Ref&& other) noexcept : ptr_(std::exchange(other.ptr_, nullptr)) {}
  template <class U>
  requires std::is_convertible_v<U*, T*> Ref(const Ref<U>& other)
  noexcept : Ref(static_cast<T*>(other.get())) {}
  template <class U>
  requires std::is_convertible_v<U*, T*> Ref(Ref<U>&& other)
  noexcept : ptr_(std::exchange(other.ptr_, nullptr)) {}

  ~Ref() {
    if (ptr_) detail::decref(detail::as_object(ptr_));
  }

  // Copy-and-swap: the old referent is released last, after *this already holds the new one,
  // because releasing can run finalizers and destructors that look at *this.
  Ref& operator=(const Ref& other) noexcept {
    Ref(other).swap(*this);
    return *this;
  }
  Ref& operator=(Ref&& other) noexcept {
    Ref(std::move(other)).swap(*this);
    return *this;
  }
  template <class U>
  requires std::is_convertible_v<U*, T*> Ref& operator=(const Ref<U>& other) noexcept {
    Ref(other).swap(*this);
    return *this;
  }
  template <class U>
  requires std::is_convertible_v<U*, T*> Ref& operator=(Ref<U>&& other) noexcept {
    Ref(std::move(other)).swap(*this);
    return *this;
  }
  Ref& operator=(std::nullptr_t) noexcept {
    reset();
    return *this;
  }

  void reset() noexcept { Ref().swap(*this); }
  void swap(Ref& other) noexcept { std::swap(ptr_, other.ptr_); }

  T* get() const noexcept { return ptr_; }
  T& operator*() const noexcept { return *ptr_; }
  T* operator->() const noexcept { return ptr_; }
  explicit operator bool() const noexcept { return ptr_ != nullptr; }

  template <class U>
  bool operator==(const Ref<U>& other) const noexcept {
    return ptr_ == other.get();
  }
  bool operator==(std::nullptr_t) const noexcept { return ptr_ == nullptr; }
  template <class U>
  std::strong_ordering operator<=>(const Ref<U>& other) const noexcept {
    return std::compare_three_way()(static_cast<const void*>(ptr_),
                                    static_cast<const void*>(other.get()));
  }

 private:
  template <class>
  friend class Ref;
  friend struct detail::Access;
  struct Adopt {};
  // Takes over the reference make<T>() created; no count change.
  Ref(Adopt, T* p) noexcept : ptr_(p) {}
  template <class U, class... Args>
  friend Ref<U> make(Args&&... args);

  T* ptr_ = nullptr;
};

// dynamic_cast for Refs: null when `r` is null or does not point at a U.
template <class U, class T>
Ref<U> ref_cast(const Ref<T>& r) noexcept {
  return Ref<U>(dynamic_cast<U*>(r.get()));
}

template <class T>
void swap(Ref<T>& a, Ref<T>& b) noexcept {
  a.swap(b);
}

}  // namespace trimalloc::gc

template <class T>
struct std::hash<trimalloc::gc::Ref<T>> {
  std::size_t operator()(const trimalloc::gc::Ref<T>& r) const noexcept {
    return std::hash<const void*>()(r.get());
  }
};
