// gc::Object, the base of every collected object, and the header it carries.
//
// The header is 8 bytes after the vtable pointer: a 32-bit reference count and the 32-bit index
// of the object's slot in its heap's slot table (see gc/src/heap.hpp). The slot word holds the
// object pointer and four flag bits, so an object costs 16 bytes of bookkeeping in all: 8 here
// and 8 in the table. The vtable pointer is the price of a virtual trace(); CPython pays the same
// in ob_type on top of its 16-byte GC header and 8-byte count.
//
// Objects are alignas(16) so the low four bits of every Object* are free for the slot flags, and
// so that the Object subobject of a multiply-inheriting type is 16-aligned as well.
#pragma once
#include <cstddef>
#include <cstdint>
#include <typeinfo>

namespace trimalloc::gc {

class Tracer;
template <class T>
class Ref;
template <class T>
class WeakRef;

namespace detail {
struct Access;
template <class T>
class Block;

// What the collector needs to know about a concrete type; one per type, made by make<T>().
struct TypeInfo {
  const std::type_info* type;
  std::size_t block_size;  // bytes make<T>() allocated: the range the trace validator scans
};

inline constexpr std::uint32_t kUntracked = 0xffffffffu;
// Object::slot_ of an object the running collection has detached from the table (and holds a
// reference to): the low bits index Heap::unreachable instead. Keeps tables below 2^31 slots.
inline constexpr std::uint32_t kDetached = 0x80000000u;
}  // namespace detail

// Derive from Object, report every strong Ref member in trace(), and create instances with
// gc::make<T>(...). Object has private pure virtual hooks that only make<T>()'s wrapper
// implements, so `Node n;` or `new Node` does not compile: an object whose count reached zero
// must be a block the collector allocated, never a stack variable or a new-expression.
class alignas(16) Object {
 public:
  Object() noexcept = default;
  Object(const Object&) = delete;
  Object& operator=(const Object&) = delete;
  virtual ~Object() = default;

  // Report every strong Ref (and optionally every WeakRef) this object owns, each exactly once:
  //   void trace(gc::Tracer& t) override { t(next); t(children); }
  // The collector calls trace() to find internal references and, when it frees a cycle, to
  // reset the very Refs reported here. trace() must not create or drop references itself.
  virtual void trace(Tracer&) {}

  // Called at most once per object (PEP 442), before its memory is reclaimed, whether the object
  // dies by its count reaching zero or as part of an unreachable cycle. It may resurrect the
  // object by storing a Ref to it somewhere; it is still never called a second time.
  // A type that declares `static constexpr bool legacy_finalizer = true;` gets Python 2's rule
  // instead: a cycle containing it is not collected but appended to gc::garbage().
  virtual void finalize() {}

 private:
  friend struct detail::Access;
  template <class T>
  friend class detail::Block;

  virtual const detail::TypeInfo& gc_hook_type() const noexcept = 0;
  virtual const void* gc_hook_block() const noexcept = 0;
  virtual void gc_hook_destroy() noexcept = 0;
  // Runs the destructor and returns the block, still allocated: the collector frees the blocks
  // of a cycle's objects in batches (tm_free_batch).
  virtual void* gc_hook_destruct() noexcept = 0;

  std::uint32_t refcount_ = 1;  // make<T>() owns the first reference and hands it to its Ref
  std::uint32_t slot_ = detail::kUntracked;
};

static_assert(sizeof(Object) == 16, "Object header must stay vptr + 8 bytes");

namespace detail {

// The library's single door into Object's private parts, so that user types cannot reach them.
struct Access {
  static std::uint32_t& refcount(Object* o) noexcept { return o->refcount_; }
  static std::uint32_t refcount(const Object* o) noexcept { return o->refcount_; }
  static std::uint32_t& slot(Object* o) noexcept { return o->slot_; }
  static std::uint32_t slot(const Object* o) noexcept { return o->slot_; }
  static const TypeInfo& type(const Object* o) noexcept { return o->gc_hook_type(); }
  static const void* block(const Object* o) noexcept { return o->gc_hook_block(); }
  static void destroy(Object* o) noexcept { o->gc_hook_destroy(); }
  static void* destruct(Object* o) noexcept { return o->gc_hook_destruct(); }
  static void finalize(Object* o) { o->finalize(); }
  static void trace(Object* o, Tracer& t) { o->trace(t); }
  template <class T>
  static T*& pointer(Ref<T>& ref) noexcept {
    return ref.ptr_;
  }
};

// Out of line: the count reached zero. Finalizes, clears weak references, untracks and destroys
// (or defers destruction through the trashcan when it is already deep in a chain of frees).
void release(Object* o) noexcept;
// Aborts when `o` belongs to another thread's heap (heaps are per thread, like Oilpan's). Called
// on every count change in builds without NDEBUG, and by release() in every build.
void check_owner(const Object* o) noexcept;

template <class T>
Object* as_object(T* p) noexcept {
  return const_cast<Object*>(static_cast<const Object*>(p));
}

inline void incref(Object* o) noexcept {
#ifndef NDEBUG
  check_owner(o);
#endif
  ++Access::refcount(o);
}

inline void decref(Object* o) noexcept {
#ifndef NDEBUG
  check_owner(o);
#endif
  if (--Access::refcount(o) == 0) release(o);
}

}  // namespace detail
}  // namespace trimalloc::gc
