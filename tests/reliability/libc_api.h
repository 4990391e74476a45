// The malloc family for the reliability tests: tests/core's adaptor (calls through pointers the
// compiler cannot see through, so it can neither elide nor fold them), plus trim().
#pragma once
#include "override_api.h"  // tests/core

namespace reltest {

struct LibcApi : tmtest::LibcApi {
  static void trim() { opaque (&::malloc_trim)(0); }
};

}  // namespace reltest
