// Metadata memory: the allocator's own bookkeeping (thread heaps) must never come from malloc,
// which would recurse. meta_alloc() carves fixed chunks from mmap'd 1 MiB regions; callers keep
// their own free lists (heaps are recycled, never freed), so there is no meta_free().
#pragma once
#include <cstddef>

namespace trimalloc {
// Zeroed, 64-byte aligned; nullptr when the OS refuses.
void* meta_alloc(std::size_t size) noexcept;
std::size_t meta_bytes() noexcept;  // bytes handed out so far
}  // namespace trimalloc
