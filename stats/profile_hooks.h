// The allocation-sampling hooks the allocator calls (see docs/stats.md, "Allocation-site
// sampling", for the patch that wires them and its measured cost). Defined in stats/profile.cpp.
//
// tl_thread.sample_countdown: bytes this thread may still allocate before the next sample. It
// starts at 0, so a thread's first allocation calls in and learns whether sampling is on; while it
// is off the countdown is re-armed with a large value (a re-check every 16 MiB allocated), so the
// fast path pays one thread-local subtraction and a never-taken branch.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "sampling.h"

namespace trimalloc {

// The countdown and the live-sample count belong to the allocator (allocator/sampling.h); the
// functions below are registered in its g_sampler table by stats/profile.cpp.

// Small allocation of class `cls` whose countdown went below zero: returns the block to hand out.
// A sampled block is served by the large allocator, so its free is seen on the large path.
void* prof_sample_small(unsigned cls, std::size_t size) noexcept;
// A large allocation `p` of `size` bytes whose countdown went below zero.
void prof_sample_large(void* p, std::size_t size) noexcept;
// A large block is being freed or moved: drop its sample if it has one.
void prof_forget(const void* p) noexcept;
// True if `p` is a sampled block (free_sized of a small size served by the large allocator).
bool prof_is_sampled(const void* p) noexcept;

}  // namespace trimalloc
