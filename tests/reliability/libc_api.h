// The malloc family called through pointers the compiler cannot see through, so that it can
// neither elide nor fold the calls the reliability tests make (shared by the override tests).
#pragma once
#include <malloc.h>
#include <stdlib.h>

#include <cstddef>

// C23's sized frees: exported by libtrimalloc, not yet declared by glibc 2.36's headers.
extern "C" {
void free_sized(void* p, size_t size);
void free_aligned_sized(void* p, size_t alignment, size_t size);
}

namespace reltest {

template <class F>
F* opaque(F* f) {
  F* volatile v = f;
  return v;
}

struct LibcApi {
  static void* malloc(std::size_t n) { return opaque(&::malloc)(n); }
  static void* calloc(std::size_t c, std::size_t n) { return opaque(&::calloc)(c, n); }
  static void* realloc(void* p, std::size_t n) { return opaque(&::realloc)(p, n); }
  static void* reallocarray(void* p, std::size_t c, std::size_t n) {
    return opaque(&::reallocarray)(p, c, n);
  }
  static void free(void* p) { opaque (&::free)(p); }
  static void free_sized(void* p, std::size_t n) { opaque (&::free_sized)(p, n); }
  static void free_aligned_sized(void* p, std::size_t a, std::size_t n) {
    opaque (&::free_aligned_sized)(p, a, n);
  }
  static void* aligned_alloc(std::size_t a, std::size_t n) {
    return opaque(&::aligned_alloc)(a, n);
  }
  static int posix_memalign(void** out, std::size_t a, std::size_t n) {
    return opaque(&::posix_memalign)(out, a, n);
  }
  static void* memalign(std::size_t a, std::size_t n) { return opaque(&::memalign)(a, n); }
  static void* valloc(std::size_t n) { return opaque(&::valloc)(n); }
  static void* pvalloc(std::size_t n) { return opaque(&::pvalloc)(n); }
  static std::size_t usable(const void* p) {
    return opaque(&::malloc_usable_size)(const_cast<void*>(p));
  }
  static void trim() { opaque (&::malloc_trim)(0); }
};

}  // namespace reltest
