// Timing shared by gc_bench.cpp and boehm_bench.cpp, so both sides measure the same way.
#pragma once
#include <time.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <vector>

namespace gcbench {

// Process CPU time in seconds, not wall time: the figures stay comparable on a shared, loaded
// machine, and Boehm's parallel marker threads are counted too.
inline double cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Runs `run` (which returns the seconds it measured) `reps` times; the median, per object.
inline double median_ns(int reps, std::size_t n, const std::function<double()>& run) {
  std::vector<double> samples;
  for (int r = 0; r < reps; ++r) samples.push_back(run() * 1e9 / static_cast<double>(n));
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

// One line for bench/gc/run: "<who> <scenario> <N> <ns per object>".
inline void report(const char* who, const char* scenario, std::size_t n, double ns) {
  std::printf("%s %s %zu %.2f\n", who, scenario, n, ns);
  std::fflush(stdout);
}

}  // namespace gcbench
