// Platform layer: the only place that talks to the kernel about memory.
//
// Everything above this file sees four operations: reserve an aligned, zero-filled, committed
// region; release it; purge pages (give them back while keeping the address range, so that the
// next touch reads zeros); and the page size. A test hook makes reserve() fail on demand so
// out-of-memory paths can be exercised without exhausting the machine.
#pragma once
#include <pthread.h>

#include <cstddef>
#include <cstdint>

namespace trimalloc::os {

// Returns `size` bytes aligned to `alignment` (a power of two >= the page size), or nullptr
// with errno = ENOMEM. The memory reads as zero. Never calls malloc. `injectable`: whether the
// test hook below applies (false only for jemalloc's own bookkeeping: see allocator/large.cpp).
void* reserve_aligned(std::size_t size, std::size_t alignment, bool injectable = true) noexcept;

// The same for a table that is written sparsely, mapped read-only and with MAP_NORESERVE: its
// size neither has to fit in RAM plus swap under the kernel's heuristic overcommit (a block's
// memory must: reserve_aligned) nor counts against RLIMIT_DATA. Reads see zeros; make_writable()
// opens the pages about to be written.
void* reserve_sparse(std::size_t size, std::size_t alignment) noexcept;
// The same as reserve_aligned, but inaccessible until make_writable() opens part of it: closed,
// it neither counts against RLIMIT_DATA nor is charged against the commit limit
// (vm.overcommit_memory = 2), and a stray access faults as on unmapped memory. For arenas, whose
// pool slots are opened as they are first handed out. `injectable` as for reserve_aligned.
void* reserve_closed(std::size_t size, std::size_t alignment, bool injectable = true) noexcept;
// Makes the page-aligned range [p, p + size) of a reserve_sparse or reserve_closed mapping
// writable; false with errno = ENOMEM if the kernel refused (RLIMIT_DATA, the commit limit, or
// too many mappings).
bool make_writable(void* p, std::size_t size) noexcept;

// Whether a mapping of `bytes` could ever succeed in this process, whatever it first gave back:
// false if it is more than the address-space limit (RLIMIT_AS), or, under the kernel's default
// heuristic overcommit (vm.overcommit_memory = 0), more than the machine's RAM plus swap, which
// the kernel refuses for any single mapping. System calls and a /proc read: failure paths only.
bool could_ever_map(std::size_t bytes) noexcept;

// Unmaps a region returned by reserve_aligned (or a page-aligned part of one).
void release(void* p, std::size_t size) noexcept;

// Drops the physical pages of [p, p+size) (both page-aligned); the range stays mapped and reads
// as zero afterwards. Returns false if the kernel refused.
bool purge(void* p, std::size_t size) noexcept;

// purge() for many ranges at once (sorted or not; page-aligned). Where the kernel has it
// (process_madvise on the process itself, Linux 6.14+ for MADV_DONTNEED and PIDFD_SELF), one
// system call drops up to 512 ranges and flushes the TLB once for all of them, instead of
// interrupting every other running thread of the process once per range; elsewhere it is one
// madvise per range.
struct Range {
  std::uintptr_t start, end;
};
void purge_ranges(const Range* ranges, std::size_t count) noexcept;
// Test hook: purge_ranges goes range by range (as on a kernel without process_madvise).
void disable_batched_purge() noexcept;

std::size_t page_size() noexcept;

// Bytes currently reserved through this layer (for statistics).
std::size_t reserved_bytes() noexcept;

// Test hook: the next `count` calls to reserve_aligned fail with ENOMEM (count < 0: all fail
// until reset with 0).
void inject_reserve_failures(long count) noexcept;

// While one exists, the calling thread does not act on a cancellation request. malloc is not a
// cancellation point (glibc's never is), but its failure paths read /proc (open, read) and wait
// for other threads' purges (nanosleep), which are: a thread with a cancellation pending would
// be cancelled inside malloc, its heap left mid-call. Failure paths only: two calls that take
// no lock.
class NoCancellation {
 public:
  NoCancellation() noexcept { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old_); }
  ~NoCancellation() { pthread_setcancelstate(old_, nullptr); }
  NoCancellation(const NoCancellation&) = delete;
  NoCancellation& operator=(const NoCancellation&) = delete;

 private:
  int old_;
};

}  // namespace trimalloc::os
