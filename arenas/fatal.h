// Fatal misuse reports. A malloc replacement cannot use printf (it may allocate) and must not
// go on after heap corruption, so these format into a stack buffer, write(2) one line to stderr
// and abort(). The line always names the public call and the address, e.g.
//   trimalloc: free(): double free of 0x7f3a5c0040
#pragma once

namespace trimalloc {

[[noreturn]] void fatal(const char* call, const char* problem, const void* address) noexcept;

// Same, without an address (e.g. internal invariants).
[[noreturn]] void fatal_message(const char* message) noexcept;

// Writes "trimalloc: <message>\n" to stderr without allocating; for warnings (bad options).
void warn(const char* message) noexcept;

}  // namespace trimalloc
