// Churn workloads: the allocation patterns of long-running servers.
//
//   trimalloc_bench_churn larson     [--threads T] [--ops N] [--slots K]  threads replace random
//   blocks
//                                     of random sizes; every round the arrays move to other
//                                     threads, so blocks are freed by a thread that did not
//                                     allocate them
//   trimalloc_bench_churn prodcons   [--ops N]     one thread allocates, another frees
//   trimalloc_bench_churn falseshare [--threads T] [--ops N]  each thread frees a block it was
//   handed
//                                     (allocated next to the other threads' blocks), then allocates
//                                     small blocks and writes them hard: slow if blocks of
//                                     different threads share a cache line
//   trimalloc_bench_churn mixed      [--ops N] [--slots K]  a long mixed-size churn (16 B..64 KiB,
//                                     log-uniform) with a constant live set: does RSS creep up?
//
// Every workload reports ns per operation and peak RSS, then frees everything and reports RSS after
// the free, after idling and after the explicit release (common.h). Output: JSON lines.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common.h"

using namespace tmbench;

namespace {

struct Options {
  std::string mode;
  unsigned threads = 2;
  size_t ops = 0;    // total operations (mode default when 0)
  size_t slots = 0;  // live blocks (mode default when 0)
  double idle_s = 2.0;
};

[[noreturn]] void usage(const char* msg) {
  fprintf(stderr,
          "trimalloc_bench_churn: %s\n"
          "usage: trimalloc_bench_churn larson|prodcons|falseshare|mixed [--threads T] [--ops N] "
          "[--slots K] [--idle SECONDS]\n",
          msg);
  exit(2);
}

Options parse(int argc, char** argv) {
  if (argc < 2) usage("missing mode");
  Options o;
  o.mode = argv[1];
  parse_numeric_options(argc, argv, 2, usage, [&](const std::string& a, double x) {
    if (a == "--threads")
      o.threads = unsigned(x);
    else if (a == "--ops")
      o.ops = size_t(x);
    else if (a == "--slots")
      o.slots = size_t(x);
    else if (a == "--idle")
      o.idle_s = x;
    else
      return false;
    return true;
  });
  if (o.threads == 0) usage("need --threads >= 1");
  return o;
}

char* alloc_fill(size_t n, unsigned char tag) {
  char* p = static_cast<char*>(malloc(n));
  if (!p) {
    fprintf(stderr, "malloc(%zu) failed\n", n);
    exit(1);
  }
  memset(p, tag, n);
  return p;
}

// Writes the first bytes and one byte per page: every page is used, without timing memset.
char* alloc_touch(size_t n) {
  char* p = static_cast<char*>(malloc(n));
  if (!p) {
    fprintf(stderr, "malloc(%zu) failed\n", n);
    exit(1);
  }
  memset(p, 5, std::min<size_t>(n, 64));
  for (size_t i = 4096; i < n; i += 4096) p[i] = 5;
  p[n - 1] = 5;
  return p;
}

// Sizes of servers' objects: mostly small, some up to `max`, log-uniform.
size_t log_size(Rng& rng, size_t max) {
  double lo = std::log(16.0), hi = std::log(double(max));
  double u = double(rng.next() >> 11) * (1.0 / 9007199254740992.0);
  return size_t(std::exp(lo + (hi - lo) * u));
}

// --- larson
// ---------------------------------------------------------------------------------------
double larson(const Options& o, Result& r) {
  const size_t slots = o.slots ? o.slots : 20000, ops = o.ops ? o.ops : 4'000'000;
  constexpr int kRounds = 8;
  const unsigned T = o.threads;
  std::vector<std::vector<char*>> arrays(T, std::vector<char*>(slots));
  for (unsigned t = 0; t < T; ++t) {
    Rng rng(t + 1);
    for (auto& p : arrays[t]) p = alloc_fill(rng.range(16, 1024), 1);
  }
  emit_event("warm");
  const size_t per_thread_round = ops / (size_t(T) * kRounds);
  const double t0 = now_s();
  for (int round = 0; round < kRounds; ++round) {
    std::vector<std::thread> th;
    for (unsigned t = 0; t < T; ++t)
      th.emplace_back([&, t, round] {
        auto& a = arrays[(t + unsigned(round)) % T];  // arrays change hands every round
        Rng rng(1000 * unsigned(round) + t);
        for (size_t i = 0; i < per_thread_round; ++i) {
          size_t k = rng.next() % slots;
          free(a[k]);
          a[k] = alloc_fill(rng.range(16, 1024), 2);
        }
      });
    for (auto& x : th) x.join();
  }
  const double elapsed = now_s() - t0;
  emit_event("churned");
  r.u64("rss_end", rss_bytes());
  for (auto& a : arrays)
    for (char* p : a) free(p);
  return elapsed * 1e9 / double(per_thread_round * T * kRounds);
}

// --- producer/consumer
// ----------------------------------------------------------------------------
double prodcons(const Options& o, Result& r) {
  const size_t ops = o.ops ? o.ops : 4'000'000;
  auto ring = std::make_unique<SpscRing>();
  std::atomic<bool> done{false};
  emit_event("warm");
  const double t0 = now_s();
  std::thread consumer([&] { free_until_done(*ring, done); });
  Rng rng(7);
  for (size_t i = 0; i < ops; ++i) {
    char* p = alloc_fill(rng.range(16, 512), 3);
    unsigned spins = 0;
    while (!ring->push(p)) backoff(spins);
  }
  done.store(true, std::memory_order_release);
  consumer.join();
  const double elapsed = now_s() - t0;
  emit_event("churned");
  r.u64("rss_end", rss_bytes());
  return elapsed * 1e9 / double(ops);
}

// --- false sharing (Hoard's cache-scratch)
// --------------------------------------------------------
double falseshare(const Options& o, Result& r) {
  const size_t ops = o.ops ? o.ops : 200'000;
  constexpr size_t kSize = 16, kWrites = 100;
  const unsigned T = o.threads;
  std::vector<char*> handed(T);
  for (auto& p : handed) p = alloc_fill(kSize, 0);  // neighbours: likely in one cache line
  emit_event("warm");
  const double t0 = now_s();
  std::vector<std::thread> th;
  for (unsigned t = 0; t < T; ++t)
    th.emplace_back([&, t] {
      free(handed[t]);
      for (size_t i = 0; i < ops / T; ++i) {
        volatile char* p = alloc_fill(kSize, 0);
        for (size_t w = 0; w < kWrites; ++w)
          for (size_t b = 0; b < kSize; ++b) p[b] = char(p[b] + 1);
        free(const_cast<char*>(p));
      }
    });
  for (auto& x : th) x.join();
  const double elapsed = now_s() - t0;
  emit_event("churned");
  r.u64("rss_end", rss_bytes());
  return elapsed * 1e9 / double(ops / T * T);
}

// --- long mixed-size churn
// ------------------------------------------------------------------------
double mixed(const Options& o, Result& r) {
  const size_t slots = o.slots ? o.slots : 50000, ops = o.ops ? o.ops : 4'000'000;
  constexpr size_t kMax = 16 * 1024;
  constexpr int kCheckpoints = 10;
  Rng rng(11);
  std::vector<char*> live(slots);
  std::vector<size_t> size(slots);
  for (size_t k = 0; k < slots; ++k) live[k] = alloc_touch(size[k] = log_size(rng, kMax));
  emit_event("warm");
  const size_t rss_warm = rss_bytes();
  size_t rss_first = 0;
  const double t0 = now_s();
  for (int c = 0; c < kCheckpoints; ++c) {
    for (size_t i = 0; i < ops / kCheckpoints; ++i) {
      size_t k = rng.next() % slots;
      free(live[k]);
      live[k] = alloc_touch(size[k] = log_size(rng, kMax));
    }
    emit_event("checkpoint");
    if (c == 0) rss_first = rss_bytes();
  }
  const double elapsed = now_s() - t0;
  const size_t rss_last = rss_bytes();
  size_t live_bytes = 0;
  for (size_t s : size) live_bytes += s;
  r.u64("rss_warm", rss_warm).u64("rss_first_checkpoint", rss_first).u64("rss_end", rss_last);
  r.u64("live_bytes_end", live_bytes);
  // Creep: growth from the first checkpoint (steady state) to the last.
  r.num("rss_creep", rss_first ? double(rss_last) / double(rss_first) - 1.0 : 0.0);
  for (char* p : live) free(p);
  return elapsed * 1e9 / double(ops / kCheckpoints * kCheckpoints);
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  Result r;
  r.str("workload", o.mode).str("allocator", allocator_name());
  if (o.mode == "larson" || o.mode == "falseshare") r.u64("threads", o.threads);
  emit_event("start");
  r.u64("rss_baseline", rss_bytes());
  double ns_per_op;
  if (o.mode == "larson")
    ns_per_op = larson(o, r);
  else if (o.mode == "prodcons")
    ns_per_op = prodcons(o, r);
  else if (o.mode == "falseshare")
    ns_per_op = falseshare(o, r);
  else if (o.mode == "mixed")
    ns_per_op = mixed(o, r);
  else
    usage(("unknown mode " + o.mode).c_str());
  r.num("ns_per_op", ns_per_op);
  r.u64("rss_peak", peak_rss_bytes());
  release_phases(r, o.idle_s);
  r.print();
  return 0;
}
