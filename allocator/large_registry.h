// The hardened build's exact registry of large blocks.
//
// jemalloc cannot tell whether a pointer is the start of one of its blocks without risking a
// fault on interior pointers, so the hardened build keeps its own set of large block starts:
// free() and realloc() of an interior pointer, of a block freed already, or of one waiting in
// quarantine are reported instead of corrupting jemalloc. A hash set sharded by address, each
// shard under its own lock, tables from os::reserve_aligned (never malloc), doubled at half load.
#pragma once
#include <cstdint>

namespace trimalloc {

enum class LargeState : std::uint8_t { kAbsent = 0, kLive = 1, kQuarantined = 2 };

bool registry_add(const void* p) noexcept;  // a new large block; false if the OS refused memory
// fork(): hold every shard across it (prepare), release in the parent, reset in the child.
void registry_lock_all() noexcept;
void registry_unlock_all() noexcept;
void registry_reset_after_fork() noexcept;
LargeState registry_state(const void* p) noexcept;
// Moves p from `from` to `to` (kAbsent removes it); false if p was not in state `from`.
bool registry_transition(const void* p, LargeState from, LargeState to) noexcept;

}  // namespace trimalloc
