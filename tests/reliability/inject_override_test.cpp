// mmap failure injection through malloc & co. and every form of operator new. This binary
// compiles allocator/override_malloc.cpp and override_new.cpp over the static engine, so its
// malloc and new are trimalloc's (as with libtrimalloc.so) and the injection hook is reachable.
// gtest and the test's own containers allocate with the same allocator: nothing is asserted
// while failures are injected (see inject_support.h).
#include <malloc.h>
#include <stdlib.h>
#include <trimalloc/trimalloc.h>

#include <new>
#include <thread>
#include <vector>

#include "inject_support.h"
#include "libc_api.h"

extern "C" int tm_owns(const void* p);

namespace {

using reltest::LibcApi;  // its trim() is malloc_trim(0), which is tm_trim(TM_TRIM_ALL) here

TEST(InjectOverride, MallocIsTrimallocInThisBinary) {
  void* p = LibcApi::malloc(100);
  void* q = ::operator new(100);
  EXPECT_TRUE(tm_owns(p));
  EXPECT_TRUE(tm_owns(q));
  LibcApi::free(p);
  ::operator delete(q);
}

TEST(InjectOverride, EveryMallocEntryPointFailsWithEnomemKeepsBlocksAndRecovers) {
  reltest::Log log;
  reltest::injection_scenario<LibcApi>(log, std::size_t{1} << 21);
  EXPECT_EQ(log.count(), 0) << log.text();
}

TEST(InjectOverride, RandomFailuresDuringARandomWorkload) {
  std::size_t total = 0;
  for (std::uint64_t seed = 11; seed <= 14; ++seed) {
    reltest::Log log;
    std::size_t failures = 0;
    reltest::random_injection<LibcApi>(log, seed, 20000, &failures);
    EXPECT_EQ(log.count(), 0) << "seed " << seed << ":\n" << log.text();
    total += failures;
  }
  EXPECT_GT(total, 0u);
}

// Runs `f` (which should throw std::bad_alloc) and records what happened, without allocating.
template <class F>
void expect_bad_alloc(reltest::Log& log, const char* what, F f) {
  try {
    void* p = f();
    log.add("%s returned %p instead of throwing", what, p);
  } catch (const std::bad_alloc&) {
  } catch (...) {
    log.add("%s threw something other than std::bad_alloc", what);
  }
}

std::atomic<int> g_handler_calls{0};
void* g_reserve = nullptr;

void release_reserve() {
  // A classic new_handler: give back an emergency reserve so that the retry can succeed.
  ++g_handler_calls;
  ::free(g_reserve);
  g_reserve = nullptr;
  std::set_new_handler(nullptr);
}

TEST(InjectOverride, OperatorNewThrowsBadAllocNothrowReturnsNullHandlerCanRecover) {
  using trimalloc::os::inject_reserve_failures;
  reltest::InjectionGuard guard;
  reltest::Log log;
  std::vector<int>* survivor = new std::vector<int>(1000, 42);
  std::string* text = new std::string(300, 'x');
  g_reserve = ::malloc(64);  // class 64, for the new_handler below

  inject_reserve_failures(-1);
  // Exhaust every pool class and the jemalloc sizes the news below use.
  reltest::Taken taken;
  std::uint64_t seed = 0;
  for (std::size_t n = 16; n <= 512; n += 16)
    reltest::exhaust<LibcApi>({reltest::Call::kMalloc, n, 0}, 1 << 21, taken, log, seed);
  for (std::size_t n : {4000ul, 1ul << 20, 4ul << 20})
    reltest::exhaust<LibcApi>({reltest::Call::kMalloc, n, 0}, 1 << 21, taken, log, seed);
  for (std::size_t a : {64ul, 256ul, 4096ul})
    reltest::exhaust<LibcApi>({reltest::Call::kAligned, 200, a}, 1 << 21, taken, log, seed);

  expect_bad_alloc(log, "operator new(16)", [] { return ::operator new(16); });
  expect_bad_alloc(log, "operator new[](500)", [] { return ::operator new[](500); });
  expect_bad_alloc(log, "operator new(4000)", [] { return ::operator new(4000); });
  expect_bad_alloc(log, "operator new(200, align 256)",
                   [] { return ::operator new(200, std::align_val_t(256)); });
  expect_bad_alloc(log, "operator new[](200, align 4096)",
                   [] { return ::operator new[](200, std::align_val_t(4096)); });
  expect_bad_alloc(log, "new-expression int[1M]",
                   [] { return static_cast<void*>(new int[1 << 20]); });
  expect_bad_alloc(log, "std::vector<char>(4 MiB)", [] {
    std::vector<char> v(4 << 20);
    return static_cast<void*>(v.empty() ? nullptr : &v);  // any non-throwing outcome is reported
  });
  if (void* p = ::operator new(48, std::nothrow)) log.add("nothrow new(48) returned %p", p);
  if (void* p = ::operator new[](1 << 20, std::nothrow))
    log.add("nothrow new[](1 MiB) returned %p", p);
  if (void* p = ::operator new(200, std::align_val_t(64), std::nothrow))
    log.add("nothrow aligned new returned %p", p);
  if (void* p = ::operator new[](200, std::align_val_t(4096), std::nothrow))
    log.add("nothrow aligned new[] returned %p", p);

  // The new_handler frees a reserve block and uninstalls itself: new(64) then succeeds.
  std::set_new_handler(release_reserve);
  void* rescued = nullptr;
  try {
    rescued = ::operator new(64);
  } catch (...) {
    log.add("new(64) threw although the new_handler freed a 64-byte block");
  }
  if (g_handler_calls.load() != 1)
    log.add("new_handler called %d times, expected 1", g_handler_calls.load());
  std::set_new_handler(nullptr);

  bool survivor_ok = survivor->size() == 1000 && (*survivor)[999] == 42 && (*survivor)[0] == 42;
  inject_reserve_failures(0);

  EXPECT_EQ(log.count(), 0) << log.text();
  EXPECT_NE(rescued, nullptr);
  ::operator delete(rescued);
  EXPECT_TRUE(survivor_ok);
  EXPECT_EQ(*text, std::string(300, 'x'));
  EXPECT_EQ(reltest::verify_all(taken.blocks, log, "taken"), 0u);
  for (std::size_t i = 0; i < taken.blocks.size(); ++i) ::free(taken.blocks[i].p);
  // And new works again.
  auto* v = new std::vector<long>(1 << 20, 7);
  EXPECT_EQ((*v)[12345], 7);
  delete v;
  auto* al = new (std::align_val_t(4096)) char[10000];
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(al) % 4096, 0u);
  ::operator delete[](al, std::align_val_t(4096));
  delete survivor;
  delete text;
}

}  // namespace
