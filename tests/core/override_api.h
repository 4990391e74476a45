// API adaptor for the typed suites that calls the malloc family itself: in override_tests these
// names are trimalloc's (the binary links libtrimalloc.so with TRIMALLOC_OVERRIDE=ON).
#pragma once

#include "test_support.h"

#include <dlfcn.h>
#include <malloc.h>
#include <stdlib.h>

extern "C" {
// C23, not declared by glibc 2.36; libtrimalloc.so defines them.
void free_sized(void* p, size_t size);
void free_aligned_sized(void* p, size_t alignment, size_t size);
}

namespace tmtest {

struct LibcApi {
  static constexpr const char* free_re = "free";
  static constexpr const char* free_sized_re = "free_sized";

  template <class F>
  static F* opaque(F* f) {
    F* volatile v = f;
    return v;
  }
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
  // glibc's own malloc and free, looked up in libc.so.6 itself: a heap that is not trimalloc's.
  // (Its __libc_* names are trimalloc's too, as a program that calls them needs.)
  static void* foreign_malloc(std::size_t n) { return libc<void*(std::size_t)>("malloc")(n); }
  static void foreign_free(void* p) { libc<void(void*)>("free")(p); }
  template <class F>
  static F* libc(const char* name) {
    static void* const handle = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    F* f = handle ? reinterpret_cast<F*>(dlsym(handle, name)) : nullptr;
    if (!f) std::abort();
    return f;
  }
};

}  // namespace tmtest
