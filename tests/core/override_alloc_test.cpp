// malloc-family instantiation of the single-threaded suites (override_tests: malloc is
// trimalloc's).
#include "alloc_suite.h"
#include "override_api.h"

namespace tmtest {
INSTANTIATE_TYPED_TEST_SUITE_P(LibcAlloc, Alloc, LibcApi);
INSTANTIATE_TYPED_TEST_SUITE_P(LibcDeath, AllocDeathTest, LibcApi);
}  // namespace tmtest
