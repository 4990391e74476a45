// Micro benchmarks of the malloc family (Google Benchmark). They call plain malloc/free, so the
// allocator measured is the one LD_PRELOAD (or nothing: glibc) puts first; bench/compare runs this
// binary under every allocator. Each benchmark sets the counter "ops_per_iter" = the number of
// malloc+free pairs one iteration does, so ns per pair = real_time / ops_per_iter.
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

#include "common.h"

namespace {

// TMBENCH_ITERATIONS=N runs every benchmark for exactly N iterations instead of for a time, so
// that counting instructions (bench/compare-stats-cost) compares equal amounts of work. Read at
// registration (static initialisation), where the environment is already in place.
void fixed_iterations(benchmark::internal::Benchmark* b) {
  if (const char* n = std::getenv("TMBENCH_ITERATIONS"))
    if (long long v = std::atoll(n); v > 0) b->Iterations(v);
}

void touch(void* p) {
  static_cast<volatile char*>(p)[0] = 1;  // the block is really written, as a program would
}

// malloc+free of one size, back to back.
void BM_pair(benchmark::State& state) {
  const size_t size = size_t(state.range(0));
  for (auto _ : state) {
    void* p = malloc(size);
    benchmark::DoNotOptimize(p);
    touch(p);
    free(p);
    benchmark::ClobberMemory();
  }
  state.counters["ops_per_iter"] = 1;
}
BENCHMARK(BM_pair)->Arg(16)->Arg(64)->Arg(256)->Arg(512)->Arg(1024)->Arg(4096)->Apply(
    fixed_iterations);

// A big buffer allocated, written page by page and freed, over and over (a request buffer, a
// collector's scratch arrays): what an allocator that hands the pages back at each free pays
// in page faults at each round. ns per round.
void BM_big_buffer(benchmark::State& state) {
  const size_t size = size_t(state.range(0));
  for (auto _ : state) {
    auto* p = static_cast<volatile char*>(malloc(size));
    benchmark::DoNotOptimize(p);
    for (size_t off = 0; off < size; off += 4096) p[off] = 1;
    free(const_cast<char*>(p));
    benchmark::ClobberMemory();
  }
  state.counters["ops_per_iter"] = 1;
}
BENCHMARK(BM_big_buffer)->Arg(4 << 20)->Arg(16 << 20)->Apply(fixed_iterations);

// Small blocks of mixed sizes (16..512) with 64 live at a time: each iteration frees the oldest
// and allocates a new one, so blocks are not simply handed back and forth at the top of one list.
void BM_pair_mixed(benchmark::State& state) {
  constexpr size_t kLive = 64, kSizes = 4096;
  std::vector<size_t> sizes(kSizes);
  tmbench::Rng rng(42);
  for (auto& s : sizes) s = rng.range(16, 512);
  void* live[kLive];
  for (size_t i = 0; i < kLive; ++i) live[i] = malloc(sizes[i]);
  size_t i = 0;
  for (auto _ : state) {
    free(live[i % kLive]);
    void* p = malloc(sizes[i % kSizes]);
    benchmark::DoNotOptimize(p);
    touch(p);
    live[i % kLive] = p;
    ++i;
    benchmark::ClobberMemory();
  }
  for (void* p : live) free(p);
  state.counters["ops_per_iter"] = 1;
}
BENCHMARK(BM_pair_mixed)->Apply(fixed_iterations);

// Allocate 1M blocks, then free them all (in allocation order).
void BM_batch(benchmark::State& state) {
  const size_t size = size_t(state.range(0));
  constexpr size_t kCount = 1 << 20;
  std::vector<void*> blocks(kCount);
  for (auto _ : state) {
    for (size_t i = 0; i < kCount; ++i) {
      void* p = malloc(size);
      touch(p);
      blocks[i] = p;
    }
    benchmark::DoNotOptimize(blocks.data());
    benchmark::ClobberMemory();
    for (size_t i = 0; i < kCount; ++i) free(blocks[i]);
    benchmark::ClobberMemory();
  }
  state.counters["ops_per_iter"] = double(kCount);
}
BENCHMARK(BM_batch)
    ->Arg(16)
    ->Arg(64)
    ->Arg(256)
    ->Arg(512)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Apply(fixed_iterations);

// Two threads: this one allocates blocks one at a time, the other frees them (every free is
// remote).
void BM_prodcons(benchmark::State& state) {
  const size_t size = size_t(state.range(0));
  auto ring = std::make_unique<tmbench::SpscRing>();
  std::atomic<bool> done{false};
  std::thread consumer([&] { tmbench::free_until_done(*ring, done); });
  for (auto _ : state) {
    void* p = malloc(size);
    touch(p);
    unsigned spins = 0;
    while (!ring->push(p)) tmbench::backoff(spins);
  }
  done.store(true, std::memory_order_release);
  consumer.join();
  state.counters["ops_per_iter"] = 1;
}
BENCHMARK(BM_prodcons)->Arg(64)->Arg(512)->UseRealTime()->Apply(fixed_iterations);

// Cross-thread free in batches: this thread fills a batch of 1024 blocks and hands the whole batch
// to the other thread, which frees it while this one fills the next (4 batches in flight).
void BM_crossthread_free(benchmark::State& state) {
  const size_t size = size_t(state.range(0));
  constexpr size_t kBatch = 1024, kSlots = 4;
  std::vector<std::vector<void*>> batches(kSlots, std::vector<void*>(kBatch));
  std::atomic<int> full[kSlots] = {};
  std::atomic<bool> done{false};
  std::thread freer([&] {
    unsigned spins = 0;
    for (size_t slot = 0;; slot = (slot + 1) % kSlots) {
      while (!full[slot].load(std::memory_order_acquire)) {
        if (done.load(std::memory_order_acquire) && !full[slot].load(std::memory_order_acquire))
          return;
        tmbench::backoff(spins);
      }
      for (void* p : batches[slot]) free(p);
      full[slot].store(0, std::memory_order_release);
    }
  });
  size_t slot = 0;
  for (auto _ : state) {
    unsigned spins = 0;
    while (full[slot].load(std::memory_order_acquire)) tmbench::backoff(spins);
    for (size_t i = 0; i < kBatch; ++i) {
      void* p = malloc(size);
      touch(p);
      batches[slot][i] = p;
    }
    full[slot].store(1, std::memory_order_release);
    slot = (slot + 1) % kSlots;
  }
  // The freer visits slots in order, so it drains every full slot before it sees `done` on an
  // empty one.
  done.store(true, std::memory_order_release);
  freer.join();
  state.counters["ops_per_iter"] = double(kBatch);
}
BENCHMARK(BM_crossthread_free)->Arg(64)->Arg(512)->UseRealTime()->Apply(fixed_iterations);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("allocator", tmbench::allocator_name());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
