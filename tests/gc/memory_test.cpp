// The documents' experiment: build a big cyclic structure, `del` it, gc.collect(), and watch
// the process's resident memory fall back. Here the last step is tm_trim(), which hands the
// now empty pools back to the OS.
#include <trimalloc/trimalloc.h>

#include <unistd.h>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "gc_test_util.hpp"

using namespace gctest;

namespace {

std::size_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t total_pages = 0, resident_pages = 0;
  statm >> total_pages >> resident_pages;
  return resident_pages * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

// ~450 bytes: served by the small pools, like most interpreter objects.
struct Blob : gc::Object {
  gc::Ref<Blob> next, prev;
  char payload[400];
  explicit Blob(int seed) { std::memset(payload, seed, sizeof payload); }
  void trace(gc::Tracer& t) override {
    t(next);
    t(prev);
  }
};

using MemoryTest = GcTest;

TEST_F(MemoryTest, CyclicStructureOfHundredsOfMegabytesComesBackAfterCollectAndTrim) {
  constexpr int kBlobs = 600'000;  // ~270 MB of blocks
  tm_trim(TM_TRIM_ALL);
  const std::size_t before = resident_bytes();
  {
    gc::Ref<Blob> head = gc::make<Blob>(0);
    Blob* tail = head.get();
    for (int i = 1; i < kBlobs; ++i) {
      tail->next = gc::make<Blob>(i);
      tail->next->prev = gc::Ref<Blob>(tail);
      tail = tail->next.get();
    }
    tail->next = head;  // a ring: counting alone frees nothing
  }
  const std::size_t peak = resident_bytes();
  ASSERT_GT(peak, before + std::size_t{200} * 1024 * 1024) << "structure did not take the memory";

  EXPECT_EQ(gc::collect(), static_cast<std::size_t>(kBlobs));
  tm_trim(TM_TRIM_ALL);
  const std::size_t after = resident_bytes();
  std::printf("resident: before %zu MB, peak %zu MB, after collect+trim %zu MB\n", before >> 20,
              peak >> 20, after >> 20);
  // "Near where it started": within 10% of what the structure took.
  EXPECT_LT(after, before + (peak - before) / 10);
}

}  // namespace
