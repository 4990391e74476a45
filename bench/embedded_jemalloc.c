/* A benchmark peer: jemalloc exactly as trimalloc embeds it (allocator/embed_jemalloc.cmake:
 * Debian's libjemalloc_pic.a with its public symbols renamed tm_je_*), behind a malloc that
 * only calls it, for LD_PRELOAD beside the real allocators (bench/ab-pairs --allocators
 * ...,embedded). trimalloc's pairs of 1 and 4 KiB are jemalloc's pairs plus trimalloc's
 * routing and bookkeeping; Debian's libjemalloc.so.2 beside this library tells how much of the
 * difference is the embedded copy itself (the same code, linked into another library) and how
 * much is trimalloc's (docs/bench.md, "Fifteenth session"). Not for general use: it has no
 * trimalloc logic at all, and jemalloc runs with its compiled-in defaults. */
#include <stddef.h>

#define EXPORT __attribute__((visibility("default")))

void* tm_je_malloc(size_t size);
void* tm_je_calloc(size_t n, size_t size);
void* tm_je_realloc(void* p, size_t size);
void tm_je_free(void* p);
int tm_je_posix_memalign(void** out, size_t alignment, size_t size);
void* tm_je_aligned_alloc(size_t alignment, size_t size);
void* tm_je_memalign(size_t alignment, size_t size);
void* tm_je_valloc(size_t size);
size_t tm_je_malloc_usable_size(void* p);

EXPORT void* malloc(size_t size) {
  return tm_je_malloc(size);
}
EXPORT void* calloc(size_t n, size_t size) {
  return tm_je_calloc(n, size);
}
EXPORT void* realloc(void* p, size_t size) {
  return tm_je_realloc(p, size);
}
EXPORT void free(void* p) {
  tm_je_free(p);
}
EXPORT int posix_memalign(void** out, size_t alignment, size_t size) {
  return tm_je_posix_memalign(out, alignment, size);
}
EXPORT void* aligned_alloc(size_t alignment, size_t size) {
  return tm_je_aligned_alloc(alignment, size);
}
EXPORT void* memalign(size_t alignment, size_t size) {
  return tm_je_memalign(alignment, size);
}
EXPORT void* valloc(size_t size) {
  return tm_je_valloc(size);
}
EXPORT size_t malloc_usable_size(void* p) {
  return tm_je_malloc_usable_size(p);
}
