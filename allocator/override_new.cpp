// C++ operator new/delete, every standard form. new follows [new.delete.single]: on failure call
// the installed new_handler and retry, throw std::bad_alloc when there is none; the nothrow
// forms return nullptr instead. Sized and aligned deletes pass their size on, so a size that
// does not match the allocation is caught (see free_sized_impl).
#include <cstddef>
#include <new>

#include "alloc.h"

using namespace trimalloc;

#define TM_EXPORT __attribute__((visibility("default")))

namespace {
void* allocate(std::size_t size, std::size_t alignment) noexcept {
  return alignment <= 16 ? malloc_impl(size) : alloc_aligned(size, alignment, false);
}

__attribute__((noinline)) void* new_failed(std::size_t size, std::size_t alignment, bool nothrow) {
  for (;;) {
    std::new_handler handler = std::get_new_handler();
    if (handler == nullptr) {
      if (nothrow) return nullptr;
      throw std::bad_alloc();
    }
    if (nothrow) {
      try {
        handler();
      } catch (...) {
        return nullptr;
      }
    } else {
      handler();
    }
    if (void* p = allocate(size, alignment)) return p;
  }
}

inline void* new_impl(std::size_t size, std::size_t alignment) {
  void* p = allocate(size, alignment);
  return __builtin_expect(p != nullptr, 1) ? p : new_failed(size, alignment, false);
}
inline void* new_nothrow(std::size_t size, std::size_t alignment) noexcept {
  void* p = allocate(size, alignment);
  return __builtin_expect(p != nullptr, 1) ? p : new_failed(size, alignment, true);
}
constexpr std::size_t al(std::align_val_t a) {
  return static_cast<std::size_t>(a);
}
}  // namespace

TM_EXPORT void* operator new(std::size_t n) {
  return new_impl(n, 0);
}
TM_EXPORT void* operator new[](std::size_t n) {
  return new_impl(n, 0);
}
TM_EXPORT void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return new_nothrow(n, 0);
}
TM_EXPORT void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return new_nothrow(n, 0);
}
TM_EXPORT void* operator new(std::size_t n, std::align_val_t a) {
  return new_impl(n, al(a));
}
TM_EXPORT void* operator new[](std::size_t n, std::align_val_t a) {
  return new_impl(n, al(a));
}
TM_EXPORT void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return new_nothrow(n, al(a));
}
TM_EXPORT void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return new_nothrow(n, al(a));
}

TM_EXPORT void operator delete(void* p) noexcept {
  free_impl(p, "operator delete");
}
TM_EXPORT void operator delete[](void* p) noexcept {
  free_impl(p, "operator delete[]");
}
TM_EXPORT void operator delete(void* p, const std::nothrow_t&) noexcept {
  free_impl(p, "operator delete");
}
TM_EXPORT void operator delete[](void* p, const std::nothrow_t&) noexcept {
  free_impl(p, "operator delete[]");
}
TM_EXPORT void operator delete(void* p, std::size_t n) noexcept {
  free_sized_impl(p, n, 0, "operator delete");
}
TM_EXPORT void operator delete[](void* p, std::size_t n) noexcept {
  free_sized_impl(p, n, 0, "operator delete[]");
}
TM_EXPORT void operator delete(void* p, std::align_val_t) noexcept {
  free_impl(p, "operator delete");
}
TM_EXPORT void operator delete[](void* p, std::align_val_t) noexcept {
  free_impl(p, "operator delete[]");
}
TM_EXPORT void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  free_impl(p, "operator delete");
}
TM_EXPORT void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  free_impl(p, "operator delete[]");
}
TM_EXPORT void operator delete(void* p, std::size_t n, std::align_val_t a) noexcept {
  free_sized_impl(p, n, al(a), "operator delete");
}
TM_EXPORT void operator delete[](void* p, std::size_t n, std::align_val_t a) noexcept {
  free_sized_impl(p, n, al(a), "operator delete[]");
}
