// Build-time configuration of the engine.
//
// TRIMALLOC_SECURE (CMake option, off by default) builds the hardened allocator: guard pages
// around arena metadata and between arenas, randomised block order in fresh pools, zero-on-free
// with a write-after-free check at the next allocation, a per-thread quarantine that delays
// reuse, and an exact registry of large blocks (interior pointers and double frees of large
// blocks are caught too). It is a separate build, not a run-time switch, so that the default
// build's fast paths carry none of it.
#pragma once

namespace trimalloc {
#if defined(TRIMALLOC_SECURE) && TRIMALLOC_SECURE
inline constexpr bool kSecure = true;
#else
inline constexpr bool kSecure = false;
#endif
}  // namespace trimalloc
