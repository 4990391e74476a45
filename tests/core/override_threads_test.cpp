// malloc-family instantiation of the multi-threaded suite (override_tests).
#include "override_api.h"
#include "thread_suite.h"

namespace tmtest {
INSTANTIATE_TYPED_TEST_SUITE_P(LibcThreads, Threads, LibcApi);
}  // namespace tmtest
