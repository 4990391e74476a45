// The malloc family under its standard names. Compiled only into the override build of
// libtrimalloc.so (CMake TRIMALLOC_OVERRIDE=ON); each shim is the tm_* function's body, inlined,
// with the standard name for messages.
#include <cerrno>
#include <cstddef>

#include "alloc.h"
#include "trimalloc/trimalloc.h"

using namespace trimalloc;

#define TM_EXPORT extern "C" __attribute__((visibility("default")))

TM_EXPORT void* malloc(size_t size) noexcept {
  return malloc_impl(size);
}
TM_EXPORT void free(void* p) noexcept {
  free_impl(p, "free");
}
TM_EXPORT void* calloc(size_t count, size_t size) noexcept {
  return tm_calloc(count, size);
}
TM_EXPORT void* realloc(void* p, size_t size) noexcept {
  return realloc_impl(p, size, "realloc");
}
TM_EXPORT void* reallocarray(void* p, size_t count, size_t size) noexcept {
  return tm_reallocarray(p, count, size);
}
TM_EXPORT int posix_memalign(void** out, size_t alignment, size_t size) noexcept {
  return tm_posix_memalign(out, alignment, size);
}
TM_EXPORT void* aligned_alloc(size_t alignment, size_t size) noexcept {
  return tm_aligned_alloc(alignment, size);
}
TM_EXPORT void* memalign(size_t alignment, size_t size) noexcept {
  return tm_memalign(alignment, size);
}
TM_EXPORT void* valloc(size_t size) noexcept {
  return tm_valloc(size);
}
TM_EXPORT void* pvalloc(size_t size) noexcept {
  return tm_pvalloc(size);
}
TM_EXPORT size_t malloc_usable_size(void* p) noexcept {
  return usable_size_impl(p, "malloc_usable_size");
}
TM_EXPORT void free_sized(void* p, size_t size) noexcept {
  free_sized_impl(p, size, 0, "free_sized");
}
TM_EXPORT void free_aligned_sized(void* p, size_t alignment, size_t size) noexcept {
  free_sized_impl(p, size, alignment, "free_aligned_sized");
}
// Obsolete, still called by old code.
TM_EXPORT void cfree(void* p) noexcept {
  free_impl(p, "cfree");
}

// glibc also exports its allocator under __libc_* names, aliases of the standard ones. A
// program (or a library such as a leak checker's shim) that calls one of them directly would
// otherwise get glibc's heap, and the block would later reach free() here as a foreign pointer
// (an abort), or one of ours would reach glibc's free (heap corruption). As in glibc they are
// aliases: the same code, and messages name the standard call. mimalloc and tcmalloc define
// the same names.
#if defined(__clang__)
#define TM_ALIAS(name) extern "C" __attribute__((visibility("default"), alias(#name)))
#else  // GCC: and the target's attributes (malloc, alloc_size, leaf from glibc's declarations)
#define TM_ALIAS(name) extern "C" __attribute__((visibility("default"), alias(#name), copy(name)))
#endif
TM_ALIAS(malloc) void* __libc_malloc(size_t size) noexcept;
TM_ALIAS(free) void __libc_free(void* p) noexcept;
TM_ALIAS(calloc) void* __libc_calloc(size_t count, size_t size) noexcept;
TM_ALIAS(realloc) void* __libc_realloc(void* p, size_t size) noexcept;
TM_ALIAS(memalign) void* __libc_memalign(size_t alignment, size_t size) noexcept;
TM_ALIAS(valloc) void* __libc_valloc(size_t size) noexcept;
TM_ALIAS(pvalloc) void* __libc_pvalloc(size_t size) noexcept;
