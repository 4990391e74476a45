// gc::Tracer: what trace() reports references to. The collector runs trace() in several passes
// (subtract internal references, propagate reachability, find the weak references garbage holds,
// and finally break cycles); the Tracer carries the pass, so trace() is written once.
#pragma once
#include <climits>
#include <cstddef>
#include <cstdint>
#include <ranges>
#include <type_traits>

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
    // Every pass is inline and makes no call: an edge costs a few compares and stores, and a
    // trace() like `t(next); t(prev);` needs no stack frame. The passes that hand targets on
    // append them to a buffer the collector reads once trace() has returned.
    if (mode_ == Mode::kSubtract) {
      std::uint32_t i = detail::Access::slot(target) - base_;
      if (i < n_) {  // else: outside the objects being collected
        --refs_[i];
        // The edge is kept, so that marking reachability need not call trace() again. A full
        // buffer only counts it: the collector grows the buffer and records this object again.
        if (edge_out_ != edge_end_) {
          *edge_out_++ = i;
        } else {
          ++lost_;
        }
      }
    } else if (mode_ == Mode::kClear) {
      // Breaking a cycle. An edge to another object of the garbage (detached) is dropped at
      // once; that object is freed later, when its count is zero and its own Refs are cleared.
      // So is, while the collector detaches and clears in one pass, an edge into the scan:
      // garbage not detached yet, or a survivor, whose count cannot reach zero here (what
      // keeps it alive holds a count the garbage's references do not include).
      // Any other reference is taken into the buffer, and released by the collector only
      // after trace() returns, so that no destructor runs inside the user's trace(). With the
      // buffer full, the Ref is left as it is and counted: the collector makes room and calls
      // trace() again, which reports only the Refs still set.
      // The slots dropped are one range, [base_, base_ + n_), as for kSubtract: the detached
      // slots [kDetached, kUntracked) alone, or those and the scan's, which runs to the end
      // of the table, below 2^31 = kDetached (see TracerAccess::clearer).
      const std::uint32_t slot = detail::Access::slot(target);
      if (slot - base_ < n_) {
        detail::Access::pointer(ref) = nullptr;
        --detail::Access::refcount(target);
      } else if (target_out_ != target_end_) {
        detail::Access::pointer(ref) = nullptr;
        *target_out_++ = target;
      } else {
        ++lost_;
      }
    } else if (target_out_ != target_end_) {  // kVisit; a full buffer: called again with room
      *target_out_++ = target;
    } else {
      ++lost_;
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
  enum class Mode : std::uint8_t { kSubtract, kClear, kVisit };
  using WeakVisitFn = void (*)(Tracer&, detail::WeakRecord*);

  Tracer(Mode mode, WeakVisitFn weak_visit, std::uint32_t base = 0, std::uint32_t n = 0) noexcept
      : mode_(mode), base_(base), n_(n), weak_visit_(weak_visit) {}
  Tracer(std::int32_t* refs, std::uint32_t base, std::uint32_t n, std::uint32_t* edge_out,
         std::uint32_t* edge_end) noexcept
      : mode_(Mode::kSubtract),
        base_(base),
        n_(n),
        refs_(refs),
        edge_out_(edge_out),
        edge_end_(edge_end) {}

  Mode mode_;
  // kSubtract: each edge into slots [base_, base_ + n_) decrements refs_[slot - base_] and
  // its index is appended at edge_out_ while edge_out_ != edge_end_; past that it is only
  // counted in lost_. kClear: edges into slots [base_, base_ + n_) are dropped at once. kClear
  // and kVisit: the targets handed on are appended at target_out_ while it is not
  // target_end_, and counted in lost_ past that.
  std::uint32_t base_ = 0;
  std::uint32_t n_ = 0;
  std::int32_t* refs_ = nullptr;
  std::uint32_t* edge_out_ = nullptr;
  std::uint32_t* edge_end_ = nullptr;
  Object** target_out_ = nullptr;
  Object** target_end_ = nullptr;
  std::size_t lost_ = 0;
  WeakVisitFn weak_visit_ = nullptr;
};

}  // namespace trimalloc::gc
