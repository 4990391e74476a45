// The engine's tm_* API as an adaptor for the operation language of model.h (difftest, fuzz_ops)
// and for the injection scenarios (inject_test).
// Each user adds trim() at the level it wants.
#pragma once
#include <trimalloc/trimalloc.h>

#include <cstddef>

namespace reltest {

struct TmApi {
  static void* malloc(std::size_t n) { return tm_malloc(n); }
  static void* calloc(std::size_t c, std::size_t n) { return tm_calloc(c, n); }
  static void* realloc(void* p, std::size_t n) { return tm_realloc(p, n); }
  static void* reallocarray(void* p, std::size_t c, std::size_t n) {
    return tm_reallocarray(p, c, n);
  }
  static void free(void* p) { tm_free(p); }
  static void free_sized(void* p, std::size_t n) { tm_free_sized(p, n); }
  static void free_aligned_sized(void* p, std::size_t a, std::size_t n) {
    tm_free_aligned_sized(p, a, n);
  }
  static void* aligned_alloc(std::size_t a, std::size_t n) { return tm_aligned_alloc(a, n); }
  static int posix_memalign(void** out, std::size_t a, std::size_t n) {
    return tm_posix_memalign(out, a, n);
  }
  static void* memalign(std::size_t a, std::size_t n) { return tm_memalign(a, n); }
  static void* valloc(std::size_t n) { return tm_valloc(n); }
  static void* pvalloc(std::size_t n) { return tm_pvalloc(n); }
  static std::size_t usable(const void* p) { return tm_usable_size(p); }
};

}  // namespace reltest
