// gc::Tracer: what trace() reports references to. The collector runs trace() in several passes
// (subtract internal references, propagate reachability, find the weak references garbage holds,
// and finally break cycles); the Tracer carries the pass, so trace() is written once.
#pragma once
#include <climits>
#include <cstdint>
#include <ranges>
#include <type_traits>
#include <vector>

#include "trimalloc/gc/ref.hpp"

namespace trimalloc::gc {

namespace detail {
// Collector scratch values at or below this are marks (reachable, uncollectable); anything above
// is a not yet marked object's remaining count, which may be transiently negative.
inline constexpr std::int32_t kLastMark = INT32_MIN + 1;
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
    T* pointer = ref.get();
    if (!pointer) return;
    Object* target = detail::as_object(pointer);
    // The two passes that run over every object of a collection are inline and small, so that
    // an edge costs a compare and a decrement rather than a call.
    if (mode_ == Mode::kSubtract) {
      std::uint32_t i = detail::Access::slot(target) - base_;
      if (i < n_) --refs_[i];  // else: outside the objects being collected
    } else if (mode_ == Mode::kMark) {
      std::uint32_t i = detail::Access::slot(target) - base_;
      if (i < n_ && refs_[i] > detail::kLastMark) mark(i, target);
    } else if (mode_ == Mode::kClear) {
      // Breaking a cycle. An edge to another object of the garbage (detached) is dropped at
      // once; that object is freed later, when its count is zero and its own Refs are cleared.
      // Any other reference passes to the visitor, which releases it only after trace()
      // returns, so that no destructor runs inside the user's trace().
      detail::Access::pointer(ref) = nullptr;
      std::uint32_t slot = detail::Access::slot(target);
      if ((slot & detail::kDetached) && slot != detail::kUntracked) {
        --detail::Access::refcount(target);
      } else {
        visit_(*this, target);
      }
    } else {
      visit_(*this, target);
    }
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
  enum class Mode : std::uint8_t { kVisit, kSubtract, kMark, kClear };
  void mark(std::uint32_t i, Object* target) {
    refs_[i] = mark_;
    worklist_->push_back(target);
  }
  using VisitFn = void (*)(Tracer&, Object*);
  using WeakVisitFn = void (*)(Tracer&, detail::WeakRecord*);

  Tracer(Mode mode, std::int32_t mark, std::uint32_t base, std::uint32_t n, std::int32_t* refs,
         std::vector<Object*>* worklist, VisitFn visit, WeakVisitFn weak_visit,
         void* context) noexcept
      : mode_(mode),
        mark_(mark),
        base_(base),
        n_(n),
        refs_(refs),
        worklist_(worklist),
        visit_(visit),
        weak_visit_(weak_visit),
        context_(context) {}

  Mode mode_;
  std::int32_t mark_;
  std::uint32_t base_;  // kSubtract/kMark: edges into slots [base_, base_ + n_) count
  std::uint32_t n_;
  std::int32_t* refs_;
  std::vector<Object*>* worklist_;
  VisitFn visit_;  // kVisit and kClear
  WeakVisitFn weak_visit_;
  void* context_;
};

}  // namespace trimalloc::gc
