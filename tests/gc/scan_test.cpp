// The collector's scan machinery: the edges the subtract pass records and the mark pass walks
// in table order (back edges to objects it already passed), the fallback that marks by calling
// trace() when the edges are not recorded, the edge buffer growing inside one object's
// trace(), and the pass that detaches and clears garbage at once.
#include <algorithm>
#include <cstddef>
#include <random>
#include <set>
#include <vector>

#include "gc_test_util.hpp"

namespace trimalloc::gc::detail {
// Defined in gc/src/collector.cpp (test hook): caps the recorded edges of one scan; 0 never
// records. Returns the previous cap.
std::size_t set_edge_limit(std::size_t limit) noexcept;
}  // namespace trimalloc::gc::detail

using namespace gctest;

namespace {

// Records which objects the collector destroyed, by id.
std::set<int>* destroyed = nullptr;

struct Vertex : gc::Object {
  int id;
  std::vector<gc::Ref<Vertex>> out;
  explicit Vertex(int i) : id(i) {}
  ~Vertex() override {
    if (destroyed) destroyed->insert(id);
  }
  void trace(gc::Tracer& t) override { t(out); }
};

// How the collector records edges in a test (the edge limit); restores the default after.
enum class Marking { kRecordedEdges, kTracedOnly, kRecordingGivesUp };

class ScanTest : public GcTest, public ::testing::WithParamInterface<Marking> {
 protected:
  void SetUp() override {
    GcTest::SetUp();
    std::size_t limit = SIZE_MAX;
    if (GetParam() == Marking::kTracedOnly) limit = 0;
    if (GetParam() == Marking::kRecordingGivesUp) limit = 40;  // runs out inside a scan
    previous_limit_ = gc::detail::set_edge_limit(limit);
    destroyed = &destroyed_;
  }
  void TearDown() override {
    destroyed = nullptr;
    gc::detail::set_edge_limit(previous_limit_);
    GcTest::TearDown();
  }
  std::set<int> destroyed_;
  std::size_t previous_limit_ = 0;
};

// Random graphs against a reference: whatever the roots reach survives, exactly, and the rest
// is found and freed. Edges point forward and backward in allocation (table) order, so the
// mark pass meets objects it left behind as tentatively unreachable and must come back.
TEST_P(ScanTest, RandomGraphsLoseExactlyTheUnreachable) {
  std::mt19937 random(12345);
  for (int round = 0; round < 20; ++round) {
    const int n = 50 + static_cast<int>(random() % 400);
    const int edges = static_cast<int>(random() % (3 * n));
    std::vector<gc::Ref<Vertex>> all;
    for (int i = 0; i < n; ++i) all.push_back(gc::make<Vertex>(i));
    std::vector<std::vector<int>> adjacency(n);
    for (int e = 0; e < edges; ++e) {
      int from = static_cast<int>(random() % n), to = static_cast<int>(random() % n);
      all[from]->out.push_back(all[to]);
      adjacency[from].push_back(to);
    }
    if (round % 4 == 0) {  // one hub with many edges: the edge buffer grows inside its trace()
      for (int i = 0; i < n; ++i) {
        all[0]->out.push_back(all[i]);
        adjacency[0].push_back(i);
      }
    }
    std::vector<gc::Ref<Vertex>> roots;
    std::vector<int> stack;
    std::vector<bool> reached(n, false);
    for (int i = 0; i < n; ++i) {
      if (random() % 10 != 0) continue;
      roots.push_back(all[i]);
      if (!reached[i]) stack.push_back(i);
      reached[i] = true;
    }
    while (!stack.empty()) {
      int v = stack.back();
      stack.pop_back();
      for (int w : adjacency[v]) {
        if (!reached[w]) {
          reached[w] = true;
          stack.push_back(w);
        }
      }
    }
    all.clear();  // only the roots hold from outside now (counting frees no cycle members)
    destroyed_.clear();
    const int live_before = static_cast<int>(gc::get_objects().size());
    const std::size_t found = gc::collect();
    std::set<int> expected_dead;
    for (int i = 0; i < n; ++i) {
      if (!reached[i]) expected_dead.insert(i);
    }
    // Objects not in cycles were freed by counting when `all` was cleared; the collector
    // found the rest. Together they are exactly the unreachable.
    EXPECT_EQ(static_cast<int>(found), live_before - static_cast<int>(gc::get_objects().size()))
        << "round " << round;
    std::set<int> dead = destroyed_;
    for (int i = 0; i < n; ++i) {
      if (reached[i]) {
        EXPECT_FALSE(dead.count(i)) << "round " << round << ": freed live " << i;
      }
    }
    int survivors = static_cast<int>(gc::get_objects().size());
    EXPECT_EQ(survivors, n - static_cast<int>(expected_dead.size())) << "round " << round;
    roots.clear();
    gc::collect();
    EXPECT_TRUE(gc::get_objects().empty());
  }
}

// A chain built backwards: each object refers to the one made before it, and only the newest
// is held from outside. In table order every object but the last is first seen with no
// outside references; all of them are reached through back edges.
TEST_P(ScanTest, ChainReachedOnlyThroughBackEdgesSurvives) {
  constexpr int kNodes = 10000;
  gc::Ref<Vertex> newest = gc::make<Vertex>(0);
  for (int i = 1; i < kNodes; ++i) {
    gc::Ref<Vertex> next = gc::make<Vertex>(i);
    next->out.push_back(newest);
    newest = next;
  }
  Vertex* oldest = newest.get();
  while (!oldest->out.empty()) oldest = oldest->out[0].get();
  oldest->out.push_back(newest);  // close the cycle: counting alone can free nothing now
  EXPECT_EQ(gc::collect(), 0u);
  EXPECT_TRUE(destroyed_.empty());
  EXPECT_EQ(gc::get_objects().size(), static_cast<std::size_t>(kNodes));
  newest = nullptr;
  EXPECT_EQ(gc::collect(), static_cast<std::size_t>(kNodes));
  EXPECT_EQ(destroyed_.size(), static_cast<std::size_t>(kNodes));
}

// The edge buffer filling in the middle of a run of the subtract pass (one table chunk): the
// pass notices at the end of the run, grows the buffer and records again the edges of the
// object that filled it and of every later object of the run. Here the edges of those later
// objects are all that keeps the chain alive.
TEST_P(ScanTest, EdgeBufferFillingInsideARunRecordsTheRestOfTheRunAgain) {
  {
    // Garbage of more objects than collector scratch is kept for: the next scan starts with a
    // fresh edge buffer, room for two edges per object.
    std::vector<gc::Ref<Vertex>> many;
    for (int i = 0; i < 70000; ++i) {
      many.push_back(gc::make<Vertex>(-1));
      many.back()->out.push_back(many.back());
    }
  }
  EXPECT_EQ(gc::collect(), 70000u);
  destroyed_.clear();
  constexpr int kNodes = 1000;  // one run: a table chunk holds 4096 slots
  gc::Ref<Vertex> head = gc::make<Vertex>(0);
  Vertex* tail = head.get();
  for (int i = 1; i < kNodes; ++i) {
    tail->out.push_back(gc::make<Vertex>(i));
    tail = tail->out.back().get();
  }
  // Three more edges per object, to itself: 4,000 edges, and the buffer fills about halfway.
  for (Vertex* v = head.get();; v = v->out[0].get()) {
    const bool last = v->out.empty();
    for (int k = 0; k < 3; ++k) v->out.push_back(gc::Ref<Vertex>(v));
    if (last) break;
  }
  EXPECT_EQ(gc::collect(), 0u);
  EXPECT_TRUE(destroyed_.empty());
  head = nullptr;
  EXPECT_EQ(gc::collect(), static_cast<std::size_t>(kNodes));
  EXPECT_EQ(destroyed_.size(), static_cast<std::size_t>(kNodes));
}

// Young garbage holding the last reference to an older object: the pass that clears the
// garbage hands that reference back, and counting frees the old object.
TEST_P(ScanTest, YoungGarbageReleasesTheOldObjectsItHeldLast) {
  gc::Ref<Vertex> old = gc::make<Vertex>(100);
  gc::Ref<Vertex> old_kept = gc::make<Vertex>(101);
  gc::collect();  // both now in generation 2
  {
    gc::Ref<Vertex> a = gc::make<Vertex>(1), b = gc::make<Vertex>(2);
    gc::Ref<Vertex> survivor = gc::make<Vertex>(3);
    a->out.push_back(b);
    b->out.push_back(a);
    b->out.push_back(old);
    b->out.push_back(old_kept);
    b->out.push_back(survivor);  // garbage refers to a survivor of the same scan
    old_kept->out.push_back(survivor);
  }
  old = nullptr;  // now held only by the garbage cycle
  EXPECT_EQ(gc::collect(0), 2u);
  EXPECT_EQ(destroyed_, (std::set<int>{1, 2, 100}));
  ASSERT_EQ(old_kept->out.size(), 1u);
  EXPECT_EQ(gc::refcount(old_kept->out[0]), 1u);  // the survivor, held by old_kept only
  EXPECT_EQ(gc::refcount(old_kept), 1u);
}

// Garbage holding more references to objects outside the scan than the clearing's buffer of
// taken references has room for (Targets, 64 to start with): trace() is called again for the
// rest, and each reference is handed back exactly once, whether the garbage is cleared while
// it is detached (no finalizer) or after finalizers ran (one in the cycle).
// Counts the Refs still set when a destructor runs: the collector must have cleared them all.
int refs_left_at_destruction = 0;
struct CheckedVertex : Vertex {
  using Vertex::Vertex;
  ~CheckedVertex() override {
    for (auto& ref : out) refs_left_at_destruction += ref != nullptr;
  }
};
struct FinalizedVertex : CheckedVertex {
  using CheckedVertex::CheckedVertex;
  void finalize() override {}
};
template <class Second>
void collect_garbage_holding_many_old_objects(std::set<int>& destroyed_ids) {
  std::vector<gc::Ref<Vertex>> old;
  for (int i = 0; i < 500; ++i) old.push_back(gc::make<Vertex>(1000 + i));
  gc::collect();  // all in generation 2
  {
    gc::Ref<Vertex> a = gc::make<CheckedVertex>(1);
    gc::Ref<Vertex> b = gc::make<Second>(2);
    a->out.push_back(b);
    b->out.push_back(a);
    for (int i = 0; i < 500; ++i) a->out.push_back(old[i]);
    for (int i = 0; i < 300; ++i) b->out.push_back(old[i]);
    EXPECT_EQ(gc::get_referents(*a).size(), 501u);  // the visitor's buffer grows as well
  }
  for (int i = 0; i < 500; i += 2) old[i] = nullptr;  // now held only by the garbage
  refs_left_at_destruction = 0;
  EXPECT_EQ(gc::collect(0), 2u);
  EXPECT_EQ(refs_left_at_destruction, 0);
  std::set<int> expected{1, 2};
  for (int i = 0; i < 500; i += 2) expected.insert(1000 + i);
  EXPECT_EQ(destroyed_ids, expected);
  for (int i = 1; i < 500; i += 2) EXPECT_EQ(gc::refcount(old[i]), 1u);
}
TEST_P(ScanTest, GarbageHoldingManyOldObjectsHandsEachReferenceBackOnce) {
  collect_garbage_holding_many_old_objects<CheckedVertex>(destroyed_);
}
TEST_P(ScanTest, GarbageWithAFinalizerHoldingManyOldObjectsHandsEachReferenceBackOnce) {
  collect_garbage_holding_many_old_objects<FinalizedVertex>(destroyed_);
}

// Survivors interleaved with garbage: the survivors move down the table while the garbage
// before them is detached and cleared, and garbage made after them still refers to them.
TEST_P(ScanTest, SurvivorsMovedWhileGarbageIsClearedKeepTheirCounts) {
  std::vector<gc::Ref<Vertex>> kept;
  {
    std::vector<gc::Ref<Vertex>> garbage;
    for (int i = 0; i < 300; ++i) {
      gc::Ref<Vertex> v = gc::make<Vertex>(i);
      if (i % 3 == 1) {
        kept.push_back(v);
      } else {
        garbage.push_back(v);
      }
    }
    for (std::size_t i = 0; i < garbage.size(); ++i) {
      garbage[i]->out.push_back(garbage[(i + 1) % garbage.size()]);  // one big garbage cycle
      garbage[i]->out.push_back(kept[(kept.size() - 1 - i % kept.size())]);
    }
  }
  EXPECT_EQ(gc::collect(), 200u);
  for (auto& v : kept) {
    EXPECT_EQ(v->id % 3, 1);
    EXPECT_EQ(gc::refcount(v), 1u);  // every reference from the garbage was handed back
  }
  EXPECT_EQ(destroyed_.size(), 200u);
  kept.clear();
  EXPECT_EQ(destroyed_.size(), 300u);
}

// A legacy type without a finalize() override, hanging off a garbage cycle and made after it:
// not in a cycle itself, so freed by counting once the cycle's references to it are cleared.
struct LegacyVertex : Vertex {
  static constexpr bool legacy_finalizer = true;
  using Vertex::Vertex;
};

TEST_P(ScanTest, LegacyObjectWithoutFinalizerHangingOffGarbageIsFreed) {
  {
    gc::Ref<Vertex> a = gc::make<Vertex>(1), b = gc::make<Vertex>(2);
    a->out.push_back(b);
    b->out.push_back(a);
    a->out.push_back(gc::make<LegacyVertex>(3));
  }
  EXPECT_EQ(gc::collect(), 2u);
  EXPECT_TRUE(gc::garbage().empty());
  EXPECT_EQ(destroyed_, (std::set<int>{1, 2, 3}));
  EXPECT_TRUE(gc::get_objects().empty());
}

INSTANTIATE_TEST_SUITE_P(Marking, ScanTest,
                         ::testing::Values(Marking::kRecordedEdges, Marking::kTracedOnly,
                                           Marking::kRecordingGivesUp),
                         [](const ::testing::TestParamInfo<Marking>& info) {
                           switch (info.param) {
                             case Marking::kRecordedEdges:
                               return "RecordedEdges";
                             case Marking::kTracedOnly:
                               return "TracedOnly";
                             default:
                               return "RecordingGivesUp";
                           }
                         });

}  // namespace
