// gc::Tracer: what trace() reports references to. The collector runs trace() in several passes
// (subtract internal references, propagate reachability, find the weak references garbage holds,
// and finally break cycles); the Tracer carries the pass, so trace() is written once.
#pragma once
#include <ranges>
#include <type_traits>
#include <vector>

#include "trimalloc/gc/ref.hpp"

namespace trimalloc::gc {

namespace detail {
struct WeakRecord;
struct TracerAccess;
template <class T>
struct is_traceable_ref : std::false_type {};
template <class T>
struct is_traceable_ref<Ref<T>> : std::true_type {};
template <class T>
struct is_traceable_ref<WeakRef<T>> : std::true_type {};
}  // namespace detail

class Tracer {
 public:
  Tracer(const Tracer&) = delete;
  Tracer& operator=(const Tracer&) = delete;

  template <class T>
  void operator()(Ref<T>& ref) {
    if (!ref) return;
    // When breaking a cycle the Ref is moved out rather than reset in place, so that no
    // destructor runs while the user's trace() is still iterating its own members.
    if (taken_) {
      taken_->push_back(Ref<Object>(std::move(ref)));
      return;
    }
    visit_(*this, detail::as_object(ref.get()));
  }

  // Reporting WeakRef members is optional. It tells the collector which weak references are
  // themselves part of the garbage, whose callbacks must then not run (CPython's rule).
  template <class T>
  void operator()(WeakRef<T>& weak);

  // Any range of Refs or WeakRefs: t(children) for a std::vector<Ref<Node>> and the like.
  template <std::ranges::range R>
  requires detail::is_traceable_ref<std::remove_cvref_t<std::ranges::range_value_t<R>>>::value void
  operator()(R& range) {
    for (auto& ref : range) (*this)(ref);
  }

 private:
  friend struct detail::TracerAccess;
  using VisitFn = void (*)(Tracer&, Object*);
  using WeakVisitFn = void (*)(Tracer&, detail::WeakRecord*);

  Tracer(VisitFn visit, WeakVisitFn weak_visit, void* context,
         std::vector<Ref<Object>>* taken) noexcept
      : visit_(visit), weak_visit_(weak_visit), context_(context), taken_(taken) {}

  VisitFn visit_;
  WeakVisitFn weak_visit_;
  void* context_;
  std::vector<Ref<Object>>* taken_;  // non-null only in the pass that breaks cycles
};

}  // namespace trimalloc::gc
