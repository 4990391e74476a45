// Build-time configuration of the engine.
//
// TRIMALLOC_SECURE (CMake option, off by default) builds the hardened allocator: guard pages
// around arena metadata and between arenas, randomised block order in fresh pools, zero-on-free
// with a write-after-free check at the next allocation, a per-thread quarantine that delays
// reuse, and an exact registry of large blocks (interior pointers and double frees of large
// blocks are caught too). It is a separate build, not a run-time switch, so that the default
// build's fast paths carry none of it.
//
// TRIMALLOC_UNCHECKED (CMake option, off) exists only so that the benchmarks can show what the
// default build's misuse checks cost: it drops the start-of-block check on free, the double-free
// mark and the dormant-page check, and stores free-list links unencoded and unchecked. Never
// ship it: a double free in that build corrupts the heap silently.
#pragma once

// On a global the fast paths read. -fvisibility=hidden covers definitions only: a declaration
// without this makes position-independent code fetch the address from the GOT (an extra
// instruction per access) even though the symbol never leaves the library.
#define TM_INTERNAL __attribute__((visibility("hidden")))

namespace trimalloc {
#if defined(TRIMALLOC_UNCHECKED) && TRIMALLOC_UNCHECKED
inline constexpr bool kChecks = false;
#else
inline constexpr bool kChecks = true;
#endif
#if defined(TRIMALLOC_SECURE) && TRIMALLOC_SECURE
inline constexpr bool kSecure = true;
#else
inline constexpr bool kSecure = false;
#endif
}  // namespace trimalloc
