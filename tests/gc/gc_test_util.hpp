// Shared fixture and object types for the gc tests.
#pragma once
#include <gtest/gtest.h>
#include <trimalloc/gc.hpp>

#include <string>
#include <vector>

namespace gc = trimalloc::gc;

namespace gctest {

// Counts live instances so that a test can see exactly what was freed.
inline int live_nodes = 0;
inline int finalized_nodes = 0;

struct Node : gc::Object {
  gc::Ref<Node> next;
  gc::Ref<Node> prev;
  std::vector<gc::Ref<Node>> children;
  gc::WeakRef<Node> parent;
  int value = 0;

  Node() { ++live_nodes; }
  explicit Node(int v) : value(v) { ++live_nodes; }
  ~Node() override { --live_nodes; }
  void trace(gc::Tracer& t) override {
    t(next);
    t(prev);
    t(children);
  }
};

// Same, with a PEP 442 finalizer.
struct Finalized : Node {
  void finalize() override { ++finalized_nodes; }
};

// Python 2 semantics: a cycle through this type is uncollectable.
struct Legacy : Node {
  static constexpr bool legacy_finalizer = true;
  void finalize() override { ++finalized_nodes; }
};

// Every test starts from an empty heap with automatic collection off and default settings, so
// counts are exact; tests that need automatic collection turn it on.
class GcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gc::set_debug(0);
    gc::unfreeze();
    gc::garbage().clear();
    gc::collect();
    gc::disable();
    gc::set_threshold(700, 10, 10);
    ASSERT_EQ(gc::get_objects().size(), 0u) << "a previous test leaked tracked objects";
    live_nodes = 0;
    finalized_nodes = 0;
  }
  void TearDown() override {
    gc::set_debug(0);
    gc::unfreeze();
    gc::garbage().clear();
    gc::collect();
    gc::enable();
  }
};

}  // namespace gctest
