// trimalloc::gc side of bench/gc/run: builds the graphs and times gc::collect().
//
//   gc_bench N REPS [ONLY]   prints one line per measurement:  cpp <scenario> <N> <ns per object>
//                            (ONLY: run just the scenarios whose name contains it, for perf)
//
// Scenarios (the same in gc_bench.py and boehm_bench.cpp):
//   cycles_garbage   N/2 two-node cycles, unreferenced: collect() finds and frees N objects
//   list_garbage     a doubly linked list of N nodes, unreferenced
//   cycles_live      the N/2 cycles, each held from outside: a full collection frees nothing
//   list_live        the list, its head held from outside
//   build_auto_on    build the live list with automatic collection on (per object)
//   build_auto_off   the same with it off
//   build_auto_young_only  the same with only generation 0 and 1 collections (threshold 2 out
//                    of reach): with build_auto_scanned_young, what a young scan costs
//   build_auto_scanned_full, build_auto_scanned_young
//                    (not times) objects the automatic collections examined while the list was
//                    built, per object built: by full collections, and by generation 0 and 1
//                    ones. Times the cost of one scan gives the least the build can cost.
//   free_in_order    (not the collector) tm_free_sized of N blocks of a Node's size, in the
//                    order they were allocated: what freeing garbage costs the allocator alone
//   walk_*           the scan-order experiment: read the header of N objects through a table
//                    in allocation order, a shuffled table, a linked list in allocation order,
//                    a shuffled linked list (what the table buys over CPython's list)
// Every figure is the median of REPS runs. The bookkeeping bytes are computed from the layout.
#include <trimalloc/trimalloc.h>
#include <trimalloc/gc.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "timing.h"

namespace gc = trimalloc::gc;

namespace {

struct Node : gc::Object {
  gc::Ref<Node> next, prev;
  void trace(gc::Tracer& t) override {
    t(next);
    t(prev);
  }
};

double seconds_since(double start) {
  return gcbench::cpu_seconds() - start;
}

gc::Ref<Node> build_list(std::size_t n) {
  gc::Ref<Node> head = gc::make<Node>();
  Node* tail = head.get();
  for (std::size_t i = 1; i < n; ++i) {
    tail->next = gc::make<Node>();
    tail->next->prev = gc::Ref<Node>(tail);
    tail = tail->next.get();
  }
  return head;
}

std::vector<gc::Ref<Node>> build_cycles(std::size_t n) {
  std::vector<gc::Ref<Node>> holders;
  holders.reserve(n / 2);
  for (std::size_t i = 0; i < n / 2; ++i) {
    gc::Ref<Node> a = gc::make<Node>(), b = gc::make<Node>();
    a->next = b;
    b->next = a;
    holders.push_back(std::move(a));
  }
  return holders;
}

// Times `measure` (seconds) REPS times after `setup`, returns the median in ns per object.
// The scan-order experiment, outside the collector: what reading one word of each of N objects
// costs through an array of pointers (the slot table) versus a linked list through the objects
// (CPython's PyGC_Head), each in allocation order and shuffled (a heap after much churn).
struct Listed {
  Listed* next;
  std::uint64_t count;
  char body[16];
};

void walk_experiment(std::size_t n, int reps) {
  std::vector<Listed*> objects(n);
  for (auto& o : objects) {
    o = static_cast<Listed*>(tm_malloc(sizeof(Listed)));
    o->count = 1;
  }
  std::vector<Listed*> shuffled = objects;
  std::shuffle(shuffled.begin(), shuffled.end(), std::mt19937_64(42));
  auto link = [](std::vector<Listed*>& order) {
    for (std::size_t i = 0; i + 1 < order.size(); ++i) order[i]->next = order[i + 1];
    order.back()->next = nullptr;
    return order.front();
  };
  volatile std::uint64_t sink = 0;
  auto walk_table = [&](const std::vector<Listed*>& order) {
    return gcbench::median_ns(reps, n, [&] {
      double start = gcbench::cpu_seconds();
      std::uint64_t sum = 0;
      for (Listed* o : order) sum += o->count;
      sink = sink + sum;
      return seconds_since(start);
    });
  };
  auto walk_list = [&](Listed* head) {
    return gcbench::median_ns(reps, n, [&] {
      double start = gcbench::cpu_seconds();
      std::uint64_t sum = 0;
      for (Listed* o = head; o; o = o->next) sum += o->count;
      sink = sink + sum;
      return seconds_since(start);
    });
  };
  gcbench::report("cpp", "walk_table_alloc_order", n, walk_table(objects));
  gcbench::report("cpp", "walk_table_shuffled", n, walk_table(shuffled));
  gcbench::report("cpp", "walk_list_alloc_order", n, walk_list(link(objects)));
  gcbench::report("cpp", "walk_list_shuffled", n, walk_list(link(shuffled)));
  for (Listed* o : objects) tm_free(o);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s N [REPS]\n", argv[0]);
    return 2;
  }
  const std::size_t n = std::strtoull(argv[1], nullptr, 10);
  const int reps = argc > 2 ? std::atoi(argv[2]) : 3;
  const char* only = argc > 3 ? argv[3] : "";
  auto want = [&](const char* scenario) { return std::strstr(scenario, only) != nullptr; };
  gc::disable();  // building is not what is measured, except in build_auto_*

  if (want("cycles_garbage")) {
    gcbench::report("cpp", "cycles_garbage", n, gcbench::median_ns(reps, n, [&] {
                      build_cycles(n);  // holders dropped at once: N objects in garbage cycles
                      double start = gcbench::cpu_seconds();
                      std::size_t found = gc::collect();
                      double s = seconds_since(start);
                      if (found != n / 2 * 2) std::abort();
                      return s;
                    }));
  }
  if (want("list_garbage")) {
    gcbench::report("cpp", "list_garbage", n, gcbench::median_ns(reps, n, [&] {
                      build_list(n);
                      double start = gcbench::cpu_seconds();
                      std::size_t found = gc::collect();
                      double s = seconds_since(start);
                      if (found != n) std::abort();
                      return s;
                    }));
  }
  if (want("cycles_live")) {
    auto holders = build_cycles(n);
    gc::collect();  // settle everything into the oldest generation first, as in Python
    gcbench::report("cpp", "cycles_live", n, gcbench::median_ns(reps, n, [&] {
                      double start = gcbench::cpu_seconds();
                      std::size_t found = gc::collect();
                      double s = seconds_since(start);
                      if (found != 0) std::abort();
                      return s;
                    }));
    holders.clear();
    gc::collect();
  }
  if (want("list_live")) {
    auto head = build_list(n);
    gc::collect();
    gcbench::report("cpp", "list_live", n, gcbench::median_ns(reps, n, [&] {
                      double start = gcbench::cpu_seconds();
                      std::size_t found = gc::collect();
                      double s = seconds_since(start);
                      if (found != 0) std::abort();
                      return s;
                    }));
    head = nullptr;
    gc::collect();
  }
  if (want("build_auto_scanned")) {
    // An untimed build that counts, at the start of each automatic collection, the objects it
    // will examine: generation g and every younger one.
    std::size_t full = 0, young = 0;
    gc::CallbackId id = gc::add_callback([&](gc::Phase phase, const gc::CollectionInfo& info) {
      if (phase != gc::Phase::start) return;
      std::size_t examined = 0;
      for (int g = 0; g <= info.generation; ++g) examined += gc::get_objects(g).size();
      (info.generation == 2 ? full : young) += examined;
    });
    gc::enable();
    gc::Ref<Node> head = build_list(n);
    gc::disable();
    gc::remove_callback(id);
    head = nullptr;
    gc::collect();
    gcbench::report("cpp", "build_auto_scanned_full", n, static_cast<double>(full) / n);
    gcbench::report("cpp", "build_auto_scanned_young", n, static_cast<double>(young) / n);
  }
  // young_only: automatic collection on, but threshold 2 out of reach, so only the generation 0
  // and 1 collections run: their cost per object they examine, for the build's cost model.
  for (const char* mode : {"build_auto_on", "build_auto_off", "build_auto_young_only"}) {
    if (!want(mode)) continue;
    const bool off = std::strcmp(mode, "build_auto_off") == 0;
    const bool young_only = std::strcmp(mode, "build_auto_young_only") == 0;
    gcbench::report("cpp", mode, n, gcbench::median_ns(reps, n, [&] {
                      if (!off) gc::enable();
                      if (young_only) gc::set_threshold(700, 10, SIZE_MAX);
                      double start = gcbench::cpu_seconds();
                      gc::Ref<Node> head = build_list(n);
                      double s = seconds_since(start);
                      gc::disable();
                      gc::set_threshold(700, 10, 10);
                      head = nullptr;
                      gc::collect();  // the list's neighbour pairs are cycles: not timed
                      return s;
                    }));
  }
  if (want("free_in_order")) {
    constexpr std::size_t kBlock = sizeof(Node);
    std::vector<void*> blocks(n);
    gcbench::report("cpp", "free_in_order", n, gcbench::median_ns(reps, n, [&] {
                      for (auto& b : blocks) b = tm_malloc(kBlock);
                      double start = gcbench::cpu_seconds();
                      for (void* b : blocks) tm_free_sized(b, kBlock);
                      return seconds_since(start);
                    }));
  }
  if (want("walk_")) walk_experiment(n, reps);
  // Header (count + slot index) beyond the vtable pointer, plus one slot word in the table.
  std::printf("cpp bookkeeping_bytes %zu %zu\n", n,
              sizeof(gc::Object) - sizeof(void*) + sizeof(std::uintptr_t));
  return 0;
}
