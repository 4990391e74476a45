// malloc-family instantiation of the process-memory suite: lazy pools, RLIMIT_AS (override_tests).
#include "memory_suite.h"
#include "override_api.h"

namespace tmtest {
INSTANTIATE_TYPED_TEST_SUITE_P(LibcMemory, ProcessMemory, LibcApi);
}  // namespace tmtest
