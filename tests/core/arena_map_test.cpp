// The arena map (arenas/arena_map.h) as a window: the map a process gets when it starts under
// an address-space limit below kFullMapMinLimit. Every lookup outside the window must say "not
// ours" without reading outside the table, and set() must refuse memory it could not answer for,
// so that the caller gives that memory back instead of handing out blocks free() would reject.
// These maps are the test's own (the process's map is the full one, checked last).
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

#include "arena_map.h"
#include "test_support.h"

using namespace trimalloc;

namespace {
constexpr std::uintptr_t kMiB = std::uintptr_t{1} << 20;

const void* at(std::uintptr_t a) {
  return reinterpret_cast<const void*>(a);
}

// One window map for the suite: each holds 512 KiB of address space for good.
ArenaMap& window() {
  static ArenaMap* map = [] {
    static ArenaMap m;
    return m.init_window() ? &m : nullptr;
  }();
  if (map == nullptr) ADD_FAILURE() << "the window's table could not be reserved";
  return *map;
}
}  // namespace

TEST(ArenaMapWindow, CoversTheSpanAroundItsTableAndNoMore) {
  ArenaMap& m = window();
  const std::uintptr_t base = m.window_base();
  const std::size_t slots = m.window_slots();
  EXPECT_EQ(base % kMiB, 0u);
  EXPECT_GT(slots, 0u);
  EXPECT_LE(slots, 2 * kWindowSpan / kMiB);
  EXPECT_LE(base + slots * kMiB, std::uintptr_t{1} << kAddressBits);
  EXPECT_TRUE(base == 0 || slots == 2 * kWindowSpan / kMiB ||
              base + slots * kMiB == std::uintptr_t{1} << kAddressBits);
  // The premise of the window: the process's next mappings land near the table, inside it.
  void* p = mmap(nullptr, 4 * kMiB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  EXPECT_TRUE(a >= base + kMiB && a + 4 * kMiB <= base + slots * kMiB) << std::hex << a;
  munmap(p, 4 * kMiB);
}

TEST(ArenaMapWindow, AnswersInsideAndRefusesOutside) {
  ArenaMap& m = window();
  const std::uintptr_t base = m.window_base();
  const std::uintptr_t top = base + m.window_slots() * kMiB;
  const std::uintptr_t mid = base + (m.window_slots() / 2) * kMiB;

  // Inside: the first slot, one in the middle (2 MiB), the last one.
  ASSERT_TRUE(m.set(SlotKind::kSmall, at(base), kMiB));
  ASSERT_TRUE(m.set(SlotKind::kLarge, at(mid), 2 * kMiB));
  ASSERT_TRUE(m.set(SlotKind::kSmall, at(top - kMiB), kMiB));
  EXPECT_TRUE(m.contains(SlotKind::kSmall, at(base)));
  EXPECT_TRUE(m.contains(SlotKind::kSmall, at(base + kMiB - 16)));
  EXPECT_FALSE(m.contains(SlotKind::kLarge, at(base + 64)));
  EXPECT_TRUE(m.contains(SlotKind::kLarge, at(mid + kMiB + 4096)));
  EXPECT_FALSE(m.contains(SlotKind::kLarge, at(mid + 2 * kMiB)));
  EXPECT_FALSE(m.contains(SlotKind::kLarge, at(mid - 16)));
  EXPECT_TRUE(m.contains(SlotKind::kSmall, at(top - 16)));

  // Outside: nothing is ours, whatever the table's neighbours hold, and nothing can be made so.
  for (std::uintptr_t a :
       {std::uintptr_t{0}, std::uintptr_t{16}, base - 16, base - kMiB, top, top + 5 * kMiB,
        std::uintptr_t{1} << kAddressBits, ~std::uintptr_t{0} - 15}) {
    if (a >= base && a < top) continue;  // base 0: there is nothing below
    EXPECT_FALSE(m.contains(SlotKind::kSmall, at(a))) << std::hex << a;
    EXPECT_FALSE(m.contains(SlotKind::kLarge, at(a))) << std::hex << a;
  }
  if (base >= kMiB) {
    EXPECT_FALSE(m.set(SlotKind::kSmall, at(base - kMiB), kMiB));
    EXPECT_FALSE(m.set(SlotKind::kSmall, at(base - kMiB), 2 * kMiB));  // straddles the bottom
  }
  EXPECT_FALSE(m.set(SlotKind::kLarge, at(top), kMiB));
  EXPECT_FALSE(m.set(SlotKind::kLarge, at(top - kMiB), 2 * kMiB));  // straddles the top
  EXPECT_FALSE(m.contains(SlotKind::kLarge, at(top - kMiB)));       // left as it was

  // for_each_slot reports the addresses, not the table's indexes, and clamps to the window.
  std::vector<std::uintptr_t> small, large;
  m.for_each_slot(SlotKind::kSmall, 0, ~std::uintptr_t{0},
                  [&](std::uintptr_t s) { small.push_back(s); });
  m.for_each_slot(SlotKind::kLarge, mid - 8 * kMiB, mid + 2 * kMiB,
                  [&](std::uintptr_t s) { large.push_back(s); });
  EXPECT_EQ(small, (std::vector<std::uintptr_t>{base, top - kMiB}));
  EXPECT_EQ(large, (std::vector<std::uintptr_t>{mid, mid + kMiB}));

  m.clear(at(base), kMiB);
  m.clear(at(mid), 2 * kMiB);
  m.clear(at(top - kMiB), kMiB);
  EXPECT_FALSE(m.contains(SlotKind::kSmall, at(base)));
  EXPECT_FALSE(m.contains(SlotKind::kLarge, at(mid)));
  EXPECT_FALSE(m.contains(SlotKind::kSmall, at(top - 16)));
}

TEST(ArenaMapWindow, ABlankMapOwnsNothing) {
  ArenaMap blank;  // never initialised: count 0
  EXPECT_EQ(blank.window_slots(), 0u);
  EXPECT_FALSE(blank.contains(SlotKind::kSmall, at(0)));
  EXPECT_FALSE(blank.contains(SlotKind::kSmall, &blank));
  EXPECT_FALSE(blank.set(SlotKind::kSmall, at(64 * kMiB), kMiB));
}

// Without an address-space limit the process's own map is the full one: every address of the
// 47-bit user space can be answered for, wherever the kernel places a mapping.
TEST(ArenaMapWindow, TheProcessMapIsFullWithoutALimit) {
  rlimit limit;
  ASSERT_EQ(getrlimit(RLIMIT_AS, &limit), 0);
  if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < kFullMapMinLimit)
    GTEST_SKIP() << "this process runs under RLIMIT_AS " << limit.rlim_cur;
  EXPECT_EQ(g_arena_map.window_base(), 0u);
  EXPECT_EQ(g_arena_map.window_slots(), kSlotCount);
}

#if !TRIMALLOC_TEST_SANITIZED  // the sanitizers' shadow memory rules out a low RLIMIT_AS
// A map made under an address-space limit below kFullMapMinLimit is a window: whether the full
// map's 128 MiB would not fit at all (64 MiB of headroom: the process could not start) or would
// take an eighth of what is left (1 GiB), and the window is as wide as designed.
static void expect_window_under_limit(std::size_t headroom) {
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (!tmtest::limit_address_space(headroom)) _exit(11);
    static ArenaMap full;  // as the process map would be made without the window
    if (full.init() && full.window_slots() == kSlotCount) _exit(12);  // 128 MiB fit?
    if (full.window_slots() != 2 * kWindowSpan / kMiB &&
        full.window_base() + full.window_slots() * kMiB != std::uintptr_t{1} << kAddressBits)
      _exit(13);
    void* p = mmap(nullptr, kMiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) _exit(14);
    if (!full.set(SlotKind::kSmall, at(reinterpret_cast<std::uintptr_t>(p) & ~(kMiB - 1)), kMiB))
      _exit(15);  // a mapping made under the limit lies in the window
    _exit(full.contains(SlotKind::kSmall, p) ? 0 : 16);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "11 setup, 12 the full map, 13 the width, 14-16 a mapping";
}

TEST(ArenaMapWindow, AMapMadeUnderALowAddressSpaceLimitIsAWindow) {
  expect_window_under_limit(64 * kMiB);
  expect_window_under_limit(1024 * kMiB);
}
#endif
