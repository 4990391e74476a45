// Randomised differential tester: long random sequences of allocation calls across threads,
// checked against a model of what every live block must contain (see model.h).
//
//   difftest [--seed N] [--ops N] [--threads N] [--seconds S] [--self-test corrupt|overlap|calloc]
//
// --ops is per thread; --seconds stops earlier (0 = no time limit). Each thread draws its ops
// from its own generator seeded with (seed, thread), so a one-thread run is reproducible from
// its seed; with several threads the interleaving of hand-offs varies between runs.
// Built twice: difftest (the engine through tm_*, also under ASan/TSan) and difftest_libc
// (malloc & co., linked with libtrimalloc.so, override build only).
// --self-test plants a fault the tester must find (a byte flipped in a live block, a block
// registered on top of another, a dirty calloc block): the run must then FAIL.
// --without free_sized,aligned_alloc,... never generates those operations (to narrow a failure).
// Exit status: 0 = every check passed, 1 = a check failed, 2 = bad usage.
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "model.h"

#ifdef DIFFTEST_LIBC
#include <malloc.h>
#include <stdlib.h>
extern "C" {
void free_sized(void* p, size_t size);
void free_aligned_sized(void* p, size_t alignment, size_t size);
}
struct Api {
  static constexpr const char* name = "malloc (libtrimalloc.so override)";
  static void* malloc(std::size_t n) { return ::malloc(n); }
  static void* calloc(std::size_t c, std::size_t n) { return ::calloc(c, n); }
  static void* realloc(void* p, std::size_t n) { return ::realloc(p, n); }
  static void* reallocarray(void* p, std::size_t c, std::size_t n) {
    return ::reallocarray(p, c, n);
  }
  static void free(void* p) { ::free(p); }
  static void free_sized(void* p, std::size_t n) { ::free_sized(p, n); }
  static void free_aligned_sized(void* p, std::size_t a, std::size_t n) {
    ::free_aligned_sized(p, a, n);
  }
  static void* aligned_alloc(std::size_t a, std::size_t n) { return ::aligned_alloc(a, n); }
  static int posix_memalign(void** out, std::size_t a, std::size_t n) {
    return ::posix_memalign(out, a, n);
  }
  static void* memalign(std::size_t a, std::size_t n) { return ::memalign(a, n); }
  static void* valloc(std::size_t n) { return ::valloc(n); }
  static std::size_t usable(const void* p) { return ::malloc_usable_size(const_cast<void*>(p)); }
  static void trim() { ::malloc_trim(0); }
};
#else
#include "tm_api.h"
struct Api : reltest::TmApi {
  static constexpr const char* name = "tm_* (engine)";
  static void trim() { tm_trim(TM_TRIM_ALL); }
};
#endif

namespace {
unsigned long long g_seed = 1;
}

void rel::failure(const char* what) {
  std::fprintf(stderr, "difftest: FAIL (seed %llu, %s): %s\n", g_seed, Api::name, what);
  std::fflush(stderr);
  _exit(1);
}

namespace {

struct Options {
  unsigned long long seed = 1;
  unsigned long long ops = 200000;
  unsigned threads = 4;
  double seconds = 0;
  std::string self_test;
  std::string without;  // diagnostic: comma-separated op names never generated
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(
      stderr,
      "difftest: %s\nusage: difftest [--seed N] [--ops N-per-thread] [--threads N] [--seconds S] "
      "[--self-test corrupt|overlap|calloc] [--without op,op,...]\n",
      msg);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    char* end = nullptr;
    if (a == "--seed") {
      o.seed = std::strtoull(value(), &end, 0);
    } else if (a == "--ops") {
      o.ops = std::strtoull(value(), &end, 0);
    } else if (a == "--threads") {
      o.threads = static_cast<unsigned>(std::strtoul(value(), &end, 0));
      if (o.threads == 0 || o.threads > 256) usage("--threads must be 1..256");
    } else if (a == "--seconds") {
      o.seconds = std::strtod(value(), &end);
    } else if (a == "--without") {
      o.without = std::string(",") + value() + ",";
      continue;
    } else if (a == "--self-test") {
      o.self_test = value();
      if (o.self_test != "corrupt" && o.self_test != "overlap" && o.self_test != "calloc")
        usage("--self-test must be corrupt, overlap or calloc");
      continue;
    } else {
      usage(("unknown argument " + a).c_str());
    }
    if (end == nullptr || *end != '\0') usage(("bad number for " + a).c_str());
  }
  return o;
}

// Weights of the operations, out of the total.
struct Weight {
  rel::Code code;
  unsigned w;
};
constexpr Weight kWeights[] = {
    {rel::kMalloc, 200},      {rel::kCalloc, 60},       {rel::kRealloc, 120},
    {rel::kReallocarray, 30}, {rel::kAlignedAlloc, 50}, {rel::kPosixMemalign, 40},
    {rel::kMemalign, 30},     {rel::kValloc, 8},        {rel::kFree, 180},
    {rel::kFreeSized, 80},    {rel::kVerify, 80},       {rel::kHandoff, 80},
    {rel::kHuge, 4},          {rel::kTrim, 1},
};

std::string g_without;
bool excluded(rel::Code c) {
  return g_without.find(std::string(",") + rel::code_name(c) + ",") != std::string::npos;
}

rel::Op next_op(std::mt19937_64& rng) {
  static const unsigned total = [] {
    unsigned t = 0;
    for (auto& w : kWeights) t += excluded(w.code) ? 0 : w.w;
    return t;
  }();
  std::uint64_t r = rng();
  unsigned pick = static_cast<unsigned>(r % total);
  rel::Op op{};
  for (auto& w : kWeights) {
    if (excluded(w.code)) continue;
    if (pick < w.w) {
      op.code = w.code;
      break;
    }
    pick -= w.w;
  }
  std::uint64_t r2 = rng();
  op.slot = static_cast<std::uint16_t>(r2 & 0xff);
  op.size = rel::size_from(static_cast<std::uint32_t>(r2 >> 8));
  op.align = rel::align_from(static_cast<std::uint32_t>(r2 >> 40));
  op.seed = rng();
  return op;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  g_seed = o.seed;
  g_without = o.without;
  std::printf("difftest: %s, seed %llu, %u threads, %llu ops per thread, %g s limit%s%s\n",
              Api::name, o.seed, o.threads, o.ops, o.seconds,
              o.self_test.empty() ? "" : ", self-test ", o.self_test.c_str());
  std::fflush(stdout);
  rel::World world;
  auto start = std::chrono::steady_clock::now();
  auto deadline = start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double>(o.seconds > 0 ? o.seconds : 1e9));
  std::atomic<bool> planted{false};
  auto body = [&](unsigned t) {
    std::mt19937_64 rng(rel::mix64(o.seed * 1000003 + t));
    rel::Tester<Api> tester(world, t);
    const unsigned long long plant_at = o.ops / 4 + 100;
    for (unsigned long long i = 0; i < o.ops; ++i) {
      if ((i & 255) == 0 && std::chrono::steady_clock::now() > deadline) break;
      tester.apply(next_op(rng));
      if (t == 0 && i == plant_at && !o.self_test.empty()) {
        if (o.self_test == "calloc") {
          tester.corrupt_calloc_next = true;
          tester.apply(rel::Op{rel::kCalloc, 7, 200, 16, 12345});
        } else if (rel::Rec* r = tester.some_live(i)) {
          auto* b = static_cast<unsigned char*>(r->p);
          if (o.self_test == "corrupt") {
            b[r->usable / 2] ^= 0x40;  // as a stray write by the allocator would
          } else {
            world.live.insert(b + r->usable / 2, 16,
                              "malloc (self-test: a block inside a live block)");
          }
        }
        planted = true;
      }
    }
    tester.release_all();
  };
  std::vector<std::thread> ts;
  for (unsigned t = 1; t < o.threads; ++t) ts.emplace_back(body, t);
  body(0);
  for (auto& t : ts) t.join();
  rel::Tester<Api>::drain(world);
  if (world.live.size() != 0)
    rel::failf("model: %zu blocks still live after every thread freed its own", world.live.size());
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!o.self_test.empty()) {
    std::printf("difftest: self-test %s: the planted fault was %s\n", o.self_test.c_str(),
                planted ? "NOT detected" : "never planted (run too short)");
    return 1;
  }
  std::printf("difftest: OK, %llu ops in %.1f s\n",
              static_cast<unsigned long long>(world.ops.load()), secs);
  return 0;
}
