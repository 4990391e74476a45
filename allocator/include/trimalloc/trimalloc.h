/* trimalloc — public C API.
 *
 * Two ways to use trimalloc:
 *  - as the process allocator: LD_PRELOAD=libtrimalloc.so, or link with -ltrimalloc. Every
 *    malloc-family call and every C++ operator new/delete then goes to trimalloc;
 *  - through the tm_* functions below, which work in both builds (with or without the
 *    malloc override, CMake option TRIMALLOC_OVERRIDE) and never touch the system malloc.
 *
 * Blocks of 1..512 bytes come from trimalloc's own pools (16-byte size classes, 16-byte
 * alignment); larger blocks and larger alignments come from an embedded jemalloc.
 * Errors follow malloc's rules: NULL with errno = ENOMEM for an impossible size, EINVAL for a
 * bad alignment. Misuse (double free, a pointer trimalloc never returned) aborts with one line
 * on stderr naming the call and the address.
 */
#ifndef TRIMALLOC_TRIMALLOC_H
#define TRIMALLOC_TRIMALLOC_H

#include <stddef.h>

#if defined(__GNUC__)
#define TM_API __attribute__((visibility("default")))
#else
#define TM_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define TRIMALLOC_VERSION_MAJOR 0
#define TRIMALLOC_VERSION_MINOR 1
#define TRIMALLOC_VERSION_PATCH 0

/* Largest request served by the small-object pools; anything bigger goes to jemalloc. */
#define TM_SMALL_MAX 512

TM_API void* tm_malloc(size_t size);
TM_API void* tm_calloc(size_t count, size_t size);
/* As glibc's: a size of 0 with p non-NULL frees p and returns NULL (errno unchanged). */
TM_API void* tm_realloc(void* p, size_t size);
TM_API void* tm_reallocarray(void* p, size_t count, size_t size);
TM_API void tm_free(void* p);
/* C23 free_sized / free_aligned_sized: `size` must be the size that was requested. */
TM_API void tm_free_sized(void* p, size_t size);
TM_API void tm_free_aligned_sized(void* p, size_t alignment, size_t size);
/* Frees blocks[0], ..., blocks[n - 1], in that order, exactly as n calls of tm_free would (NULL
 * entries are skipped; a foreign pointer or a double free, also of a block twice in one batch,
 * aborts naming "free_batch" and the address). Faster for many small blocks of the calling
 * thread: its heap is entered once, and blocks of one pool are checked against the thread's
 * ownership once. Any block tm_free accepts may be passed: large, aligned, other threads'. */
TM_API void tm_free_batch(void* const* blocks, size_t n);
/* `alignment` must be a power of two; aligned_alloc accepts any size (C17 DR 460). */
TM_API void* tm_aligned_alloc(size_t alignment, size_t size);
/* Returns 0, EINVAL (alignment not a power of two multiple of sizeof(void*)) or ENOMEM. */
TM_API int tm_posix_memalign(void** out, size_t alignment, size_t size);
TM_API void* tm_memalign(size_t alignment, size_t size);
TM_API void* tm_valloc(size_t size);
TM_API void* tm_pvalloc(size_t size);
/* Bytes usable in the block `p` points at (>= the size requested); 0 for NULL. */
TM_API size_t tm_usable_size(const void* p);

/* Non-zero if `p` is trimalloc's: for a small block, `p` must be the start of a block of one of
 * trimalloc's pools; for a large block, `p` must lie in trimalloc's large-block memory (the
 * hardened build, -DTRIMALLOC_SECURE=ON, requires the start of a live large block). Never
 * faults, for any p. */
TM_API int tm_owns(const void* p);

/* --- Giving memory back (see README: "Giving memory back") ---
 * tm_trim returns the number of bytes it gave back to the OS. Levels:
 *   TM_TRIM_FAST  empty pools of the calling thread, abandoned pools of exited threads, free
 *                 pools and empty arenas: cheap, no page scanning;
 *   TM_TRIM_FULL  also every page without a live block inside the calling thread's pools and
 *                 the abandoned ones, and jemalloc's dirty pages (and this thread's jemalloc
 *                 cache) for large blocks;
 *   TM_TRIM_ALL   also the pools of every other live thread, visited while it is outside the
 *                 allocator (it never stops; one busy at that moment is skipped).
 * An unknown level returns 0 with errno = EINVAL. malloc_trim(0) is TM_TRIM_ALL. */
enum { TM_TRIM_FAST = 0, TM_TRIM_FULL = 1, TM_TRIM_ALL = 2 };
TM_API size_t tm_trim(int level);

/* Options (also TRIMALLOC_<NAME> environment variables, see README):
 *   "decay_ms"          free memory idle this long returns to the OS by itself (-1 = never);
 *   "max_cached"        bytes of free, resident memory kept for reuse; beyond it, purge at once
 *                       down to half of it;
 *   "background_thread" 1 = a lazily started thread does the decay, 0 = allocation slow paths.
 * Both return 0, or EINVAL for an unknown name or a value out of range. */
TM_API int tm_option_set(const char* name, long long value);
TM_API int tm_option_get(const char* name, long long* value);

/* Version string, e.g. "trimalloc 0.1.0". */
TM_API const char* tm_version(void);

#ifdef __cplusplus
}
#endif

#endif /* TRIMALLOC_TRIMALLOC_H */
