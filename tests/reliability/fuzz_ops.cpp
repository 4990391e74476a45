// libFuzzer harness over the differential tester's operation language (model.h), against the
// engine's tm_* API. Each input is a sequence of 6-byte operations:
//   byte 0: operation (model.h Code), byte 1: slot (16 slots, so ops meet the same blocks),
//   bytes 2-4: size (model.h size_from), byte 5: alignment (8 << (b % 14)).
// A model check that fails aborts, which libFuzzer reports as a crash with the input saved.
// Built only with clang and -DTRIMALLOC_FUZZ=ON (see tests/reliability/CMakeLists.txt and
// docs/reliability.md).
#include <trimalloc/trimalloc.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "model.h"
#include "tm_api.h"

void rel::failure(const char* what) {
  std::fprintf(stderr, "fuzz_ops: model check failed: %s\n", what);
  std::abort();
}

namespace {
struct TmApi : reltest::TmApi {
  static void trim() { tm_trim(TM_TRIM_FULL); }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  rel::World world;
  {
    rel::Tester<TmApi> tester(world, 0);
    std::uint64_t h = 0x1234;
    for (std::size_t i = 0; i + 6 <= size && i < 6 * 4096; i += 6) {
      const std::uint8_t* b = data + i;
      rel::Op op{};
      op.code = static_cast<std::uint8_t>(b[0] % rel::kCodeCount);
      op.slot = static_cast<std::uint16_t>(b[1] % 16);
      op.size = rel::size_from(static_cast<std::uint32_t>(b[2] | b[3] << 8 | b[4] << 16));
      op.align = rel::align_from(b[5]);
      h = rel::mix64(h ^ i);
      op.seed = h;
      tester.apply(op);
    }
    tester.release_all();
  }
  rel::Tester<TmApi>::drain(world);
  if (world.live.size() != 0) rel::failf("%zu blocks left in the model", world.live.size());
  return 0;
}
