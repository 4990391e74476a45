// Engine (tm_*) instantiation of the multi-threaded suite (runs under TSan in the no-override
// build).
#include "thread_suite.h"

namespace tmtest {
INSTANTIATE_TYPED_TEST_SUITE_P(TmThreads, Threads, TmApi);
}  // namespace tmtest
