// The size-class map for small blocks.
//
// 32 classes, one every 16 bytes from 16 to 512: class c holds blocks of (c + 1) * 16 bytes.
// Every block size is a multiple of 16 and pools start on a 16 KiB boundary, so every block is
// 16-byte aligned; more generally a class whose size is a multiple of 2^k hands out 2^k-aligned
// blocks, which is how aligned requests up to 512 bytes are served from pools.
#pragma once
#include <cstddef>
#include <cstdint>

namespace trimalloc {

inline constexpr std::size_t kSmallMax = 512;
inline constexpr std::size_t kClassGranule = 16;
inline constexpr unsigned kClassCount = kSmallMax / kClassGranule;  // 32

// Requires size <= kSmallMax. Size 0 gets the smallest class (malloc(0) returns a unique block).
inline constexpr unsigned size_class_of(std::size_t size) noexcept {
  return size == 0 ? 0u : static_cast<unsigned>((size - 1) >> 4);
}
inline constexpr std::size_t class_block_size(unsigned cls) noexcept {
  return (static_cast<std::size_t>(cls) + 1) * kClassGranule;
}

// The small class that serves `size` bytes at `alignment` (a power of two), or kClassCount when
// the request must go to the large allocator.
inline constexpr unsigned aligned_class_of(std::size_t size, std::size_t alignment) noexcept {
  if (alignment <= kClassGranule) return size <= kSmallMax ? size_class_of(size) : kClassCount;
  if (alignment > kSmallMax || size > kSmallMax) return kClassCount;
  std::size_t rounded = size == 0 ? alignment : (size + alignment - 1) & ~(alignment - 1);
  return rounded <= kSmallMax ? size_class_of(rounded) : kClassCount;
}

static_assert(kClassCount == 32);
static_assert(class_block_size(size_class_of(512)) == 512);
static_assert(class_block_size(size_class_of(17)) == 32);
static_assert(aligned_class_of(20, 64) == size_class_of(64));
static_assert(aligned_class_of(200, 256) == size_class_of(256));
static_assert(aligned_class_of(300, 512) == size_class_of(512));
static_assert(aligned_class_of(8, 1024) == kClassCount);

}  // namespace trimalloc
