// The hardened build's registry of large block starts (allocator/large_registry.h), tested as
// a component in every build (it is compiled into all of them). The keys are addresses no
// block has (above 2^46, 16-aligned), so the process's own large blocks are not disturbed.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <random>
#include <set>

#include "large_registry.h"
#include "test_support.h"

using namespace trimalloc;

namespace {
const void* key(std::uint64_t i) {
  return reinterpret_cast<const void*>((std::uintptr_t{1} << 46) + i * 16);
}
}  // namespace

// Against a model: random adds, state changes and removals, every key checked at the end.
// Removal moves later entries of a probe run back into the gap, so this is what shows a key
// made unreachable by a wrong move.
TEST(LargeRegistry, AgreesWithAModelThroughRandomAddsAndRemovals) {
  std::mt19937_64 rng(20261123);
  std::set<std::uint64_t> live, quarantined;
  constexpr std::uint64_t kKeys = 20000;
  for (int op = 0; op < 200000; ++op) {
    const std::uint64_t i = rng() % kKeys;
    const bool is_live = live.count(i) != 0, is_quarantined = quarantined.count(i) != 0;
    switch (rng() % 3) {
      case 0:
        if (!is_live && !is_quarantined) {
          ASSERT_TRUE(registry_add(key(i)));
          live.insert(i);
        }
        break;
      case 1:  // live -> quarantined, or quarantined -> gone
        if (is_live) {
          ASSERT_TRUE(registry_transition(key(i), LargeState::kLive, LargeState::kQuarantined));
          live.erase(i);
          quarantined.insert(i);
        } else if (is_quarantined) {
          ASSERT_TRUE(registry_transition(key(i), LargeState::kQuarantined, LargeState::kAbsent));
          quarantined.erase(i);
        } else {
          ASSERT_FALSE(registry_transition(key(i), LargeState::kLive, LargeState::kAbsent));
        }
        break;
      default:  // live -> gone (a free without quarantine)
        ASSERT_EQ(registry_transition(key(i), LargeState::kLive, LargeState::kAbsent), is_live);
        live.erase(i);
        break;
    }
  }
  for (std::uint64_t i = 0; i < kKeys; ++i) {
    const LargeState want = live.count(i)          ? LargeState::kLive
                            : quarantined.count(i) ? LargeState::kQuarantined
                                                   : LargeState::kAbsent;
    ASSERT_EQ(registry_state(key(i)), want) << "key " << i;
  }
  for (std::uint64_t i : live) registry_transition(key(i), LargeState::kLive, LargeState::kAbsent);
  for (std::uint64_t i : quarantined)
    registry_transition(key(i), LargeState::kQuarantined, LargeState::kAbsent);
}

#if !TRIMALLOC_TEST_SANITIZED  // the sanitizers' shadow memory rules out a low RLIMIT_AS
// Blocks that come and go must not make the tables grow: with tombstones for removed keys
// they filled up and doubled at "half load" while a few blocks were live, and at a memory
// limit the doubling failed, and with it the allocation, though every block had been freed.
TEST(LargeRegistry, BlocksThatComeAndGoNeedNoMoreTable) {
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    constexpr std::uint64_t kBatch = 3000;  // ~47 per shard: the first tables hold 128 each
    for (std::uint64_t i = 0; i < kBatch; ++i)
      if (!registry_add(key(i))) _exit(10);
    for (std::uint64_t i = 0; i < kBatch; ++i)
      registry_transition(key(i), LargeState::kLive, LargeState::kAbsent);
    if (!tmtest::limit_address_space(0)) _exit(11);  // no new mapping from here on
    for (std::uint64_t round = 1; round < 100; ++round) {
      for (std::uint64_t i = 0; i < kBatch; ++i)
        if (!registry_add(key(round * kBatch + i))) _exit(12);
      for (std::uint64_t i = 0; i < kBatch; ++i)
        if (!registry_transition(key(round * kBatch + i), LargeState::kLive, LargeState::kAbsent))
          _exit(13);
    }
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "10-11 setup, 12 an add needed a bigger table, 13 a key lost";
}
#endif
