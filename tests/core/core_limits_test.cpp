// Engine (tm_*) instantiation of the out-of-address-space suite (not in sanitizer builds).
#include "limit_suite.h"

namespace tmtest {
INSTANTIATE_TYPED_TEST_SUITE_P(TmLimit, MemoryLimit, TmApi);
}  // namespace tmtest
