// C++ operator new/delete, every standard form. new follows [new.delete.single]: on failure call
// the installed new_handler and retry, throw std::bad_alloc when there is none; the nothrow
// forms return nullptr instead. Sized and aligned deletes pass their size on, so a size that
// does not match the allocation is caught (see free_sized_impl).
//
// The failure paths need the C++ runtime (the handler, a way to throw, a catch for the nothrow
// forms). They look it up when memory has run out, in whichever runtime the program has loaded
// (libstdc++ or libc++: whoever calls operator new has one), instead of linking libstdc++:
// linked, it was mapped into every C program under LD_PRELOAD for nothing, 0.9 MiB of RSS in
// python3. Nothing here may therefore throw, catch or use a function-local static itself.
#include <dlfcn.h>

#include <cstddef>
#include <new>

#include "alloc.h"
#include "fatal.h"

using namespace trimalloc;

#define TM_EXPORT __attribute__((visibility("default")))

namespace {
void* allocate(std::size_t size, std::size_t alignment) noexcept {
  return alignment <= 16 ? malloc_impl(size) : alloc_aligned(size, alignment, false);
}

// A function of the program's C++ runtime, by mangled name (libstdc++'s, else libc++'s).
template <typename Fn>
Fn runtime_function(void* scope, const char* name, const char* other = nullptr) noexcept {
  void* f = dlsym(scope, name);
  if (f == nullptr && other != nullptr) f = dlsym(scope, other);
  return reinterpret_cast<Fn>(f);
}

std::new_handler installed_handler() noexcept {
  auto get = runtime_function<std::new_handler (*)()>(RTLD_DEFAULT, "_ZSt15get_new_handlerv");
  return get ? get() : nullptr;
}

[[noreturn]] void throw_bad_alloc() {
  auto raise = runtime_function<void (*)()>(RTLD_DEFAULT, "_ZSt17__throw_bad_allocv",
                                            "_ZNSt3__117__throw_bad_allocEv");
  if (raise != nullptr) raise();
  fatal_message(
      "operator new: out of memory, and no C++ runtime is loaded to throw std::bad_alloc");
}

// The throwing forms, after a failed allocation: the handler may free memory (retry), throw,
// or be absent (throw std::bad_alloc).
__attribute__((noinline)) void* new_failed(std::size_t size, std::size_t alignment) {
  for (;;) {
    std::new_handler handler = installed_handler();
    if (handler == nullptr) throw_bad_alloc();
    handler();
    if (void* p = allocate(size, alignment)) return p;
  }
}

// The nothrow forms: as above, but a handler that throws makes them return nullptr. Catching is
// the runtime's part: its own nothrow operator new calls the throwing ::operator new (ours, which
// runs the loop above) inside a try block. alignment 0: a form without align_val_t.
__attribute__((noinline)) void* new_nothrow_failed(std::size_t size,
                                                   std::size_t alignment) noexcept {
  if (installed_handler() == nullptr) return nullptr;  // nothing can throw: no runtime call
  const std::nothrow_t nothrow{};
  if (alignment == 0) {
    using Fn = void* (*)(std::size_t, const std::nothrow_t&) noexcept;
    if (auto f = runtime_function<Fn>(RTLD_NEXT, "_ZnwmRKSt9nothrow_t")) return f(size, nothrow);
  } else {
    using Fn = void* (*)(std::size_t, std::align_val_t, const std::nothrow_t&) noexcept;
    if (auto f = runtime_function<Fn>(RTLD_NEXT, "_ZnwmSt11align_val_tRKSt9nothrow_t"))
      return f(size, static_cast<std::align_val_t>(alignment), nothrow);
  }
  // No runtime form to catch for us (a runtime linked statically into the program): the handler
  // runs uncaught, so one that throws ends the program (this function is noexcept).
  for (std::new_handler handler; (handler = installed_handler()) != nullptr;) {
    handler();
    if (void* p = allocate(size, alignment)) return p;
  }
  return nullptr;
}

inline void* new_impl(std::size_t size, std::size_t alignment) {
  void* p = allocate(size, alignment);
  return __builtin_expect(p != nullptr, 1) ? p : new_failed(size, alignment);
}
inline void* new_nothrow(std::size_t size, std::size_t alignment) noexcept {
  void* p = allocate(size, alignment);
  return __builtin_expect(p != nullptr, 1) ? p : new_nothrow_failed(size, alignment);
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
