// Relaxed atomic loads that the fast paths only compare.
//
// GCC and clang never fold an atomic load into the instruction that uses it: `visited_.load(
// relaxed) != 0` becomes a load into a register, a test and a branch, where a plain field gives
// one compare with a memory operand (which the CPU fuses with the branch). The fast paths make
// such checks on every call (visitor present, pool owner, free's block bound), so on x86-64
// these helpers issue the compare themselves: the same single relaxed read (an aligned load is
// atomic on x86, and a relaxed load needs no fence), one instruction fewer each. `volatile`
// keeps each one a fresh read in program order with the handshake's other asm (heap.h).
// TSan builds and other targets use the atomic load, which TSan can model.
#pragma once
#include <atomic>
#include <cstdint>

namespace trimalloc {

#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
inline bool relaxed_nonzero(const std::atomic<std::uint8_t>& a) noexcept {
  bool nonzero;
  asm volatile("cmpb $0, %1" : "=@ccne"(nonzero) : "m"(a));
  return nonzero;
}
template <typename E>
inline bool relaxed_equals(const std::atomic<E>& a, E value) noexcept {
  static_assert(sizeof(E) == 1, "one-byte values (PoolState, arena map tags)");
  bool equal;
  asm volatile("cmpb %2, %1" : "=@cce"(equal) : "m"(a), "iq"(static_cast<std::uint8_t>(value)));
  return equal;
}
template <typename T>
inline bool relaxed_equals(const std::atomic<T*>& a, T* value) noexcept {
  bool equal;
  asm volatile("cmpq %2, %1" : "=@cce"(equal) : "m"(a), "r"(value));
  return equal;
}
// value < a, unsigned.
inline bool relaxed_below(std::uint32_t value, const std::atomic<std::uint32_t>& a) noexcept {
  bool below;
  asm volatile("cmpl %2, %1" : "=@ccb"(below) : "r"(value), "m"(a));
  return below;
}
#else
inline bool relaxed_below(std::uint32_t value, const std::atomic<std::uint32_t>& a) noexcept {
  return value < a.load(std::memory_order_relaxed);
}
inline bool relaxed_nonzero(const std::atomic<std::uint8_t>& a) noexcept {
  return a.load(std::memory_order_relaxed) != 0;
}
template <typename E>
inline bool relaxed_equals(const std::atomic<E>& a, E value) noexcept {
  return a.load(std::memory_order_relaxed) == value;
}
template <typename T>
inline bool relaxed_equals(const std::atomic<T*>& a, T* value) noexcept {
  return a.load(std::memory_order_relaxed) == value;
}
#endif

}  // namespace trimalloc
