// Boehm GC side of bench/gc/run: the same graphs, timed around GC_gcollect(), as a tracing peer.
//
//   gc_bench_boehm N REPS     prints:  boehm <scenario> <N> <ns per object>
//
// Boehm finds garbage by marking from roots (stacks, data segments, registered roots) and needs
// no counts and no trace functions. Its sweep is lazy: GC_gcollect() marks and queues free
// blocks, much of the freeing happens in later allocations. The "garbage" figures therefore
// measure marking the live set plus whatever sweeping GC_gcollect() does eagerly.
#include <gc.h>

#include <cstdio>
#include <cstdlib>

#include "timing.h"

namespace {

struct Node {
  Node* next;
  Node* prev;
};

Node* new_node() {
  return static_cast<Node*>(GC_MALLOC(sizeof(Node)));
}

Node* build_list(std::size_t n) {
  Node* head = new_node();
  Node* tail = head;
  for (std::size_t i = 1; i < n; ++i) {
    Node* node = new_node();
    tail->next = node;
    node->prev = tail;
    tail = node;
  }
  return head;
}

// The holders live in a GC-allocated array, so that Boehm sees them (as Python's list).
Node** build_cycles(std::size_t n) {
  auto** holders = static_cast<Node**>(GC_MALLOC((n / 2 + 1) * sizeof(Node*)));
  for (std::size_t i = 0; i < n / 2; ++i) {
    Node* a = new_node();
    Node* b = new_node();
    a->next = b;
    b->next = a;
    holders[i] = a;
  }
  return holders;
}

double timed_collect() {
  double start = gcbench::cpu_seconds();
  GC_gcollect();
  return gcbench::cpu_seconds() - start;
}

// Roots the optimizer cannot drop: Boehm scans the data segment.
Node* volatile live_list = nullptr;
Node** volatile live_cycles = nullptr;

__attribute__((noinline)) void make_cycle_garbage(std::size_t n) {
  (void)build_cycles(n);
}
__attribute__((noinline)) void make_list_garbage(std::size_t n) {
  (void)build_list(n);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s N [REPS]\n", argv[0]);
    return 2;
  }
  const std::size_t n = std::strtoull(argv[1], nullptr, 10);
  const int reps = argc > 2 ? std::atoi(argv[2]) : 3;
  GC_INIT();
  GC_disable();  // no collections while building, as for the others
  auto garbage_run = [&](void (*make)(std::size_t)) {
    make(n);
    GC_enable();
    double s = timed_collect();
    GC_disable();
    return s;
  };
  gcbench::report("boehm", "cycles_garbage", n,
                  gcbench::median_ns(reps, n, [&] { return garbage_run(make_cycle_garbage); }));
  gcbench::report("boehm", "list_garbage", n,
                  gcbench::median_ns(reps, n, [&] { return garbage_run(make_list_garbage); }));

  GC_enable();
  live_cycles = build_cycles(n);
  GC_gcollect();
  gcbench::report("boehm", "cycles_live", n, gcbench::median_ns(reps, n, timed_collect));
  live_cycles = nullptr;
  live_list = build_list(n);
  GC_gcollect();
  gcbench::report("boehm", "list_live", n, gcbench::median_ns(reps, n, timed_collect));
  live_list = nullptr;
  GC_gcollect();
  return 0;
}
