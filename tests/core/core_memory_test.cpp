// Engine (tm_*) instantiation of the process-memory suite: lazy pools, RLIMIT_AS (not in sanitizer
// builds).
#include "memory_suite.h"

namespace tmtest {
INSTANTIATE_TYPED_TEST_SUITE_P(TmMemory, ProcessMemory, TmApi);
}  // namespace tmtest
