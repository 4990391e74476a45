// Engine (tm_*) instantiation of the single-threaded suites, plus tm_* specifics.
// Links trimalloc::engine only: no malloc override, so it also runs under ASan/UBSan and TSan.
#include "alloc_suite.h"

#include <cstring>
#include <string>

namespace tmtest {

INSTANTIATE_TYPED_TEST_SUITE_P(TmAlloc, Alloc, TmApi);
INSTANTIATE_TYPED_TEST_SUITE_P(TmDeath, AllocDeathTest, TmApi);

TEST(TmApi, VersionString) {
  const char* v = tm_version();
  ASSERT_NE(v, nullptr);
  std::string want = "trimalloc " + std::to_string(TRIMALLOC_VERSION_MAJOR) + "." +
                     std::to_string(TRIMALLOC_VERSION_MINOR) + "." +
                     std::to_string(TRIMALLOC_VERSION_PATCH);
  EXPECT_EQ(std::string(v), want);
}

// The engine's blocks are its own, not the process heap's: the system allocator does not know them
// and they do not come out of the malloc heap.
TEST(TmApi, EngineDoesNotUseTheSystemHeap) {
  void* sys = std::malloc(48);
  void* tm = tm_malloc(48);
  ASSERT_NE(sys, nullptr);
  ASSERT_NE(tm, nullptr);
  EXPECT_TRUE(tm_owns(tm));
  EXPECT_FALSE(tm_owns(sys));
  tm_free(tm);
  std::free(sys);
}

}  // namespace tmtest
