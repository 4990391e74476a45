// trimalloc::gc — reference counting plus CPython's generational cycle collector, for C++.
//
//   #include <trimalloc/gc.hpp>
//   namespace gc = trimalloc::gc;
//   struct Node : gc::Object {
//     gc::Ref<Node> next;
//     void trace(gc::Tracer& t) override { t(next); }
//   };
//   gc::Ref<Node> a = gc::make<Node>();
//   a->next = a;              // a self-cycle: the count never reaches zero ...
//   a = nullptr;
//   gc::collect();            // ... the collector finds it and frees it: returns 1
//
// Every function below acts on the calling thread's heap: objects belong to the thread that made
// them and must only be referenced, released and collected there. See docs/gc.md.
#pragma once
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

#include <trimalloc/trimalloc.h>
#include <vector>

#include "trimalloc/gc/object.hpp"
#include "trimalloc/gc/ref.hpp"
#include "trimalloc/gc/tracer.hpp"
#include "trimalloc/gc/weak_maps.hpp"
#include "trimalloc/gc/weakref.hpp"

namespace trimalloc::gc {

// ---- debug flags (values as in Python's gc module) ----
inline constexpr int DEBUG_STATS = 1;          // per-collection summary on stderr
inline constexpr int DEBUG_COLLECTABLE = 2;    // "gc: collectable <Type 0x...>" per object found
inline constexpr int DEBUG_UNCOLLECTABLE = 4;  // "gc: uncollectable <Type 0x...>" (legacy cycles)
inline constexpr int DEBUG_SAVEALL = 32;       // unreachable objects go to garbage(), not freed
inline constexpr int DEBUG_LEAK = DEBUG_COLLECTABLE | DEBUG_UNCOLLECTABLE | DEBUG_SAVEALL;
// trimalloc's own: run validate_trace() before every collection and print what it finds.
inline constexpr int DEBUG_VALIDATE = 64;

namespace detail {

inline constexpr std::uintptr_t kFinalized = 1;     // finalize() has run (PEP 442)
inline constexpr std::uintptr_t kHasFinalizer = 2;  // the type overrides finalize()
inline constexpr std::uintptr_t kLegacy = 4;        // legacy_finalizer: cycles go to garbage()
inline constexpr std::uintptr_t kHasWeakRefs = 8;   // the heap's weak table lists this object
inline constexpr std::uintptr_t kFlagMask = 15;

// make<T>()'s wrapper: the one concrete class per T, which knows T's size and how to free it.
template <class T>
class Block final : public T {
 public:
  template <class... Args>
  explicit Block(Args&&... args) : T(std::forward<Args>(args)...) {}

 private:
  const TypeInfo& gc_hook_type() const noexcept override {
    static constexpr TypeInfo type{&typeid(T), sizeof(Block)};
    return type;
  }
  const void* gc_hook_block() const noexcept override { return static_cast<const Block*>(this); }
  void gc_hook_destroy() noexcept override;
  void* gc_hook_destruct() noexcept override {
    void* block = static_cast<Block*>(this);
    this->~Block();
    return block;
  }
};

void* allocate_block(std::size_t size, std::size_t alignment);
// Inline, so that each type's destroy hook makes one call, the allocator's sized free.
inline void free_block(void* block, std::size_t size, std::size_t alignment) noexcept {
  if (alignment <= 16) {
    tm_free_sized(block, size);
  } else {
    tm_free_aligned_sized(block, alignment, size);
  }
}
void abandon_block(void* block, std::size_t size, std::size_t alignment) noexcept;
void track_new(Object* o, std::uintptr_t type_flags) noexcept;

template <class T>
void Block<T>::gc_hook_destroy() noexcept {
  void* block = static_cast<Block*>(this);
  this->~Block();
  free_block(block, sizeof(Block), alignof(Block));
}

template <class T>
constexpr std::uintptr_t type_flags() {
  std::uintptr_t flags = 0;
  // &T::finalize names Object::finalize exactly when no class between Object and T overrides it.
  if constexpr (!std::is_same_v<decltype(&T::finalize), void (Object::*)()>) flags |= kHasFinalizer;
  if constexpr (requires { T::legacy_finalizer; }) {
    if (T::legacy_finalizer) flags |= kLegacy;
  }
  return flags;
}

}  // namespace detail

// Allocates T from trimalloc's pools, constructs it with `args`, tracks it and returns the only
// reference. An automatic collection may run here, after T is fully built and tracked, and only
// when this is the outermost make() (never from inside another object's constructor).
template <class T, class... Args>
Ref<T> make(Args&&... args) {
  static_assert(std::is_base_of_v<Object, T>, "gc::make<T>: T must derive from gc::Object");
  static_assert(!std::is_final_v<T>, "gc::make<T>: T must not be final");
  using B = detail::Block<T>;
  void* memory = detail::allocate_block(sizeof(B), alignof(B));
  B* object;
  try {
    object = ::new (memory) B(std::forward<Args>(args)...);
  } catch (...) {
    detail::abandon_block(memory, sizeof(B), alignof(B));
    throw;
  }
  T* typed = object;
  Ref<T> ref(typename Ref<T>::Adopt{}, typed);
  detail::track_new(detail::as_object(typed), detail::type_flags<T>());
  return ref;
}

// ---- the gc module ----

// Collects generation `generation` (0, 1 or 2) and every younger one; returns the number of
// unreachable objects found (freed plus uncollectable). Returns 0 if a collection is already
// running on this thread (a finalizer calling collect()). Throws std::invalid_argument otherwise.
std::size_t collect(int generation = 2);
void enable();
void disable();
bool is_enabled();
// A threshold0 of 0 turns automatic collection off, as in Python.
void set_threshold(std::size_t threshold0, std::size_t threshold1 = 10,
                   std::size_t threshold2 = 10);
std::array<std::size_t, 3> get_threshold();
std::array<std::size_t, 3> get_count();

struct GenerationStats {
  std::size_t collections = 0;
  std::size_t collected = 0;
  std::size_t uncollectable = 0;
};
std::array<GenerationStats, 3> get_stats();

void set_debug(int flags);
int get_debug();

// Uncollectable objects (and, with DEBUG_SAVEALL, every unreachable one). The list holds strong
// references; clearing it after breaking the cycles by hand frees them.
std::vector<Ref<Object>>& garbage();

enum class Phase { start, stop };
struct CollectionInfo {
  int generation = 0;
  std::size_t collected = 0;      // set for Phase::stop
  std::size_t uncollectable = 0;  // set for Phase::stop
  std::chrono::nanoseconds duration{0};
};
using Callback = std::function<void(Phase, const CollectionInfo&)>;
using CallbackId = std::uint64_t;
CallbackId add_callback(Callback callback);
bool remove_callback(CallbackId id);

// Tracked objects of one generation, or of all three for -1 (frozen objects are not listed).
std::vector<Ref<Object>> get_objects(int generation = -1);
// Tracked objects whose trace() reports a reference to `object` (one entry per such object).
std::vector<Ref<Object>> get_referrers(const Object& object);
// The objects `object`'s trace() reports, in order, with repeats.
std::vector<Ref<Object>> get_referents(const Object& object);
bool is_tracked(const Object& object);
bool is_finalized(const Object& object);
// The object's reference count (unlike sys.getrefcount, no temporary is added by the call).
std::size_t refcount(const Object& object);

void freeze();
void unfreeze();
std::size_t get_freeze_count();

// "Why is this alive?": a chain [object, a referrer of it, a referrer of that, ..., root] where
// root is held from outside the heap (a Ref on the stack, in a global or in a plain container).
// Empty when nothing outside holds it: the next full collection would free it.
std::vector<Ref<Object>> why_alive(const Object& object);

// Finds Ref fields that trace() does not report. Scans every tracked object's own block for
// words that point at a tracked object which trace() did not report as many times, and whose
// count is not fully explained by the references trace() does report. Slow (it reads the
// whole heap); meant for tests and for DEBUG_VALIDATE. Raw pointers to gc objects stored in gc
// objects can be reported as false positives; Refs inside separately allocated containers
// (a std::vector's buffer) are not seen.
struct TraceProblem {
  Ref<Object> holder;      // the object whose trace() misses a reference
  std::size_t offset = 0;  // byte offset of the unreported word in the holder's block
  Ref<Object> target;      // what the word points at
  std::string message;     // "trace() of <Holder 0x...> misses the reference at offset 24 ..."
};
std::vector<TraceProblem> validate_trace();

// "<Node 0x55d0c8a4e2c0>": the demangled dynamic type and the address, as debug output prints.
std::string describe(const Object& object);

template <class T>
std::size_t refcount(const Ref<T>& ref) {
  return refcount(*ref);
}
template <class T>
bool is_tracked(const Ref<T>& ref) {
  return ref && is_tracked(*ref);
}
template <class T>
bool is_finalized(const Ref<T>& ref) {
  return is_finalized(*ref);
}
template <class T>
std::vector<Ref<Object>> get_referrers(const Ref<T>& ref) {
  return get_referrers(*ref);
}
template <class T>
std::vector<Ref<Object>> get_referents(const Ref<T>& ref) {
  return get_referents(*ref);
}
template <class T>
std::vector<Ref<Object>> why_alive(const Ref<T>& ref) {
  return why_alive(*ref);
}

}  // namespace trimalloc::gc
