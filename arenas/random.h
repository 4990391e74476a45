// Cheap unpredictable words for free-list keys (not cryptographic: a per-process secret seeded
// from getrandom(2), stretched with splitmix64). Never allocates.
#pragma once
#include <cstdint>

namespace trimalloc {
std::uintptr_t random_word() noexcept;
}
