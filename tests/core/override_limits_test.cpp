// malloc-family instantiation of the out-of-address-space suite (override_tests).
#include "limit_suite.h"
#include "override_api.h"

namespace tmtest {
INSTANTIATE_TYPED_TEST_SUITE_P(LibcLimit, MemoryLimit, LibcApi);
}  // namespace tmtest
