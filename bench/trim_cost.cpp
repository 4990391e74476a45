// The cost of giving memory back (issue 3, "Measured" item 4): how long tm_trim takes on a heap of
// about 1 GiB of small blocks with half of them freed (scattered), and what happens to the
// throughput of other threads allocating while it runs. Linked with libtrimalloc; run:
//   build/bench/trimalloc_bench_trim_cost [heap MiB=1024] [worker threads=1] [keep 1 in N=2]
// N = 2 frees every other block (no page empties: the trim's pure scanning cost); N = 64 leaves
// most pages without a survivor (the cost of actually releasing them).
#include <trimalloc/trimalloc.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

long rss_mib() {
  long pages = 0, rss = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f && std::fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
  if (f) std::fclose(f);
  return rss * 4096 / (1 << 20);
}

// Workers: malloc/free pairs of mixed small sizes (each keeps 256 blocks live); ops counted.
struct Workers {
  std::atomic<bool> stop{false};
  std::vector<std::atomic<long>> ops;
  std::vector<std::thread> threads;
  explicit Workers(int n) : ops(n) {
    for (int t = 0; t < n; ++t)
      threads.emplace_back([this, t] {
        void* live[256] = {};
        unsigned i = 0, seed = 7u + t;
        while (!stop.load(std::memory_order_relaxed)) {
          seed = seed * 1103515245u + 12345u;
          std::size_t n = 16 + (seed >> 8) % 240;
          tm_free(live[i & 255]);
          live[i & 255] = tm_malloc(n);
          std::memset(live[i & 255], 1, 8);
          ++i;
          if ((i & 1023) == 0) ops[t].fetch_add(1024, std::memory_order_relaxed);
        }
        for (void* p : live) tm_free(p);
      });
  }
  long total() const {
    long s = 0;
    for (auto& o : ops) s += o.load(std::memory_order_relaxed);
    return s;
  }
  ~Workers() {
    stop = true;
    for (auto& t : threads) t.join();
  }
};

// Ops per second of the workers over `seconds`, or while `busy` runs.
template <typename Fn>
double throughput_during(Workers& w, Fn&& busy, double* took) {
  long before = w.total();
  auto t0 = Clock::now();
  busy();
  *took = seconds_since(t0);
  if (*took < 0.05) {  // too short to count ops in batches of 1024: widen the window
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return (w.total() - before) / seconds_since(t0);
}
}  // namespace

int main(int argc, char** argv) {
  std::size_t heap_mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 1024;
  int workers = argc > 2 ? std::atoi(argv[2]) : 1;
  std::size_t keep = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 2;
  if (keep < 2) keep = 2;
  tm_option_set("decay_ms", -1);  // only the explicit calls release memory here
  std::size_t target = heap_mib << 20, used = 0;
  std::vector<void*> blocks;
  blocks.reserve(target / 64);
  unsigned seed = 1;
  while (used < target) {
    seed = seed * 1103515245u + 12345u;
    std::size_t n = 16 + (seed >> 8) % 240;
    void* p = tm_malloc(n);
    std::memset(p, 2, n);
    blocks.push_back(p);
    used += tm_usable_size(p);
  }
  for (std::size_t i = 0; i < blocks.size(); ++i)
    if (i % keep) tm_free(blocks[i]);  // survivors scattered: one in `keep`
  long rss_before = rss_mib();

  Workers w(workers);
  double idle_took;
  double base = throughput_during(
      w, [] { std::this_thread::sleep_for(std::chrono::seconds(1)); }, &idle_took);
  std::printf("heap %zu MiB in %zu blocks, 1 in %zu kept (scattered); %d worker thread(s)\n",
              heap_mib, blocks.size(), keep, workers);
  std::printf("workers alone: %.1f M ops/s\n", base / 1e6);
  const char* names[] = {"TM_TRIM_FAST", "TM_TRIM_FULL", "TM_TRIM_ALL"};
  for (int level = 0; level <= 2; ++level) {
    long rss0 = rss_mib();
    std::size_t released = 0;
    double took;
    double during = throughput_during(
        w, [&] { released = tm_trim(level); }, &took);
    std::printf(
        "%-13s %8.1f ms  released %6zu MiB  RSS %ld -> %ld MiB  workers %.1f M ops/s (%.0f%%)\n",
        names[level], took * 1e3, released >> 20, rss0, rss_mib(), during / 1e6,
        100.0 * during / base);
  }
  std::printf("RSS before trims %ld MiB, after %ld MiB\n", rss_before, rss_mib());
  for (std::size_t i = 0; i < blocks.size(); i += keep) tm_free(blocks[i]);
  return 0;
}
