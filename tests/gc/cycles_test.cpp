// Reference counting and cycle collection: the documents' scenarios.
#include <memory>

#include "gc_test_util.hpp"

using namespace gctest;

namespace {

using CyclesTest = GcTest;

// The example from the issue and docs/gc.md, as written there.
namespace issue_example {
struct Node : gc::Object {
  gc::Ref<Node> next;  // strong, counted reference
  std::vector<gc::Ref<Node>> children;
  gc::WeakRef<Node> parent;             // weak: does not keep the parent alive
  void trace(gc::Tracer& t) override {  // visit every strong Ref this object owns
    t(next);
    for (auto& c : children) t(c);
  }
  void finalize() override {}  // optional, like __del__ (PEP 442): at most once per object
};
}  // namespace issue_example

TEST_F(CyclesTest, TheIssuesExample) {
  using issue_example::Node;
  gc::Ref<Node> a = gc::make<Node>();  // allocated from trimalloc pools, tracked, refcount 1
  EXPECT_EQ(gc::refcount(a), 1u);
  EXPECT_TRUE(gc::is_tracked(a));
  a->next = a;                    // a self-cycle
  a = nullptr;                    // the count never reaches 0 ...
  std::size_t n = gc::collect();  // ... the collector finds it: n == 1
  EXPECT_EQ(n, 1u);
  EXPECT_TRUE(gc::get_objects().empty());
}

TEST_F(CyclesTest, CountingFreesAcyclicObjectsAtOnce) {
  gc::Ref<Node> a = gc::make<Node>(1);
  a->next = gc::make<Node>(2);
  EXPECT_EQ(live_nodes, 2);
  EXPECT_EQ(gc::refcount(a), 1u);
  a = nullptr;
  EXPECT_EQ(live_nodes, 0);
  EXPECT_EQ(gc::collect(), 0u);
}

TEST_F(CyclesTest, SelfCycleIsFoundByCollect) {
  gc::Ref<Node> a = gc::make<Node>();
  a->next = a;
  EXPECT_EQ(gc::refcount(a), 2u);
  a = nullptr;
  EXPECT_EQ(live_nodes, 1);      // the count never reaches zero ...
  EXPECT_EQ(gc::collect(), 1u);  // ... the collector finds it
  EXPECT_EQ(live_nodes, 0);
  EXPECT_TRUE(gc::get_objects().empty());
}

TEST_F(CyclesTest, TwoObjectCycleWithoutFinalizers) {
  {
    gc::Ref<Node> a = gc::make<Node>(), b = gc::make<Node>();
    a->next = b;
    b->next = a;
  }
  EXPECT_EQ(live_nodes, 2);
  EXPECT_EQ(gc::collect(), 2u);
  EXPECT_EQ(live_nodes, 0);
}

TEST_F(CyclesTest, TwoObjectCycleWithFinalizersRunsEachOnce) {
  {
    gc::Ref<Node> a = gc::make<Finalized>(), b = gc::make<Finalized>();
    a->next = b;
    b->next = a;
  }
  EXPECT_EQ(gc::collect(), 2u);
  EXPECT_EQ(finalized_nodes, 2);
  EXPECT_EQ(live_nodes, 0);
  EXPECT_TRUE(gc::garbage().empty());  // PEP 442: finalizers no longer block collection
  EXPECT_EQ(gc::collect(), 0u);
  EXPECT_EQ(finalized_nodes, 2);
}

TEST_F(CyclesTest, LiveCycleHeldFromOutsideSurvives) {
  gc::Ref<Node> a = gc::make<Node>(), b = gc::make<Node>();
  a->next = b;
  b->next = a;
  b = nullptr;
  EXPECT_EQ(gc::collect(), 0u);
  EXPECT_EQ(live_nodes, 2);
  EXPECT_EQ(a->next->next, a);
  a->next = nullptr;  // breaking the cycle by hand frees both by counting
  EXPECT_EQ(live_nodes, 1);
}

TEST_F(CyclesTest, LegacyFinalizerCycleGoesToGarbage) {
  const gc::GenerationStats before = gc::get_stats()[2];
  {
    gc::Ref<Node> a = gc::make<Legacy>(), b = gc::make<Legacy>();
    a->next = b;
    b->next = a;
  }
  EXPECT_EQ(gc::collect(), 2u);  // found unreachable, but not freed
  EXPECT_EQ(live_nodes, 2);
  EXPECT_EQ(finalized_nodes, 0);  // Python 2 never ran __del__ for a cycle
  ASSERT_EQ(gc::garbage().size(), 2u);
  EXPECT_EQ(gc::get_stats()[2].uncollectable - before.uncollectable, 2u);
  EXPECT_EQ(gc::get_stats()[2].collected - before.collected, 0u);
  EXPECT_EQ(gc::get_stats()[2].collections - before.collections, 1u);

  // The documents' remedy: break the cycle by hand, then empty gc.garbage.
  gc::ref_cast<Node>(gc::garbage()[0])->next = nullptr;
  gc::garbage().clear();
  EXPECT_EQ(live_nodes, 0);
  EXPECT_EQ(finalized_nodes, 2);  // counting ran each legacy finalizer once
}

TEST_F(CyclesTest, LegacyObjectMakesItsWholeCycleUncollectable) {
  {
    gc::Ref<Node> a = gc::make<Legacy>(), b = gc::make<Node>(), c = gc::make<Node>();
    a->next = b;
    b->next = a;
    b->children.push_back(c);  // reachable from the legacy cycle: kept with it
  }
  EXPECT_EQ(gc::collect(), 3u);
  EXPECT_EQ(gc::garbage().size(), 3u);
  EXPECT_EQ(live_nodes, 3);
  for (auto& o : gc::garbage()) gc::ref_cast<Node>(o)->next = nullptr;
  gc::garbage().clear();
  EXPECT_EQ(live_nodes, 0);
}

TEST_F(CyclesTest, LegacyObjectHangingOffACollectableCycleIsFreed) {
  {
    gc::Ref<Node> a = gc::make<Node>(), b = gc::make<Node>();
    a->next = b;
    b->next = a;
    a->children.push_back(gc::make<Legacy>());  // not in a cycle itself
  }
  EXPECT_EQ(gc::collect(), 2u);
  EXPECT_TRUE(gc::garbage().empty());
  EXPECT_EQ(live_nodes, 0);
  EXPECT_EQ(finalized_nodes, 1);
}

TEST_F(CyclesTest, ParentChildrenTreeWithStrongBackReferences) {
  struct TreeNode : Node {
    gc::Ref<TreeNode> up;
    void trace(gc::Tracer& t) override {
      Node::trace(t);
      t(up);
    }
  };
  {
    gc::Ref<TreeNode> root = gc::make<TreeNode>();
    for (int i = 0; i < 5; ++i) {
      auto child = gc::make<TreeNode>();
      child->up = root;
      for (int j = 0; j < 3; ++j) {
        auto grandchild = gc::make<TreeNode>();
        grandchild->up = child;
        child->children.push_back(grandchild);
      }
      root->children.push_back(child);
    }
    EXPECT_EQ(gc::collect(), 0u);  // all alive through root
  }
  EXPECT_EQ(live_nodes, 21);
  EXPECT_EQ(gc::collect(), 21u);
  EXPECT_EQ(live_nodes, 0);
}

TEST_F(CyclesTest, ParentChildrenTreeWithWeakBackReferencesNeedsNoCollector) {
  {
    gc::Ref<Node> root = gc::make<Node>();
    for (int i = 0; i < 5; ++i) {
      auto child = gc::make<Node>();
      child->parent = root;
      root->children.push_back(child);
    }
    EXPECT_EQ(root->children[0]->parent.lock(), root);
  }
  EXPECT_EQ(live_nodes, 0);
  EXPECT_EQ(gc::collect(), 0u);
}

struct Resurrector : Node {
  static inline gc::Ref<Node> saved;
  static inline int finalize_calls = 0;
  void finalize() override {
    ++finalize_calls;
    saved = gc::Ref<Node>(this);
  }
};

TEST_F(CyclesTest, ResurrectionInFinalizeKeepsObjectAndNeverFinalizesTwice) {
  Resurrector::finalize_calls = 0;
  {
    gc::Ref<Node> a = gc::make<Resurrector>(), b = gc::make<Node>();
    a->next = b;
    b->next = a;
  }
  EXPECT_EQ(gc::collect(), 0u);  // resurrected objects are not counted as collected
  EXPECT_EQ(Resurrector::finalize_calls, 1);
  ASSERT_TRUE(Resurrector::saved);
  EXPECT_EQ(live_nodes, 2);  // b is reachable from the resurrected a, so it stays too
  EXPECT_TRUE(gc::is_finalized(Resurrector::saved));
  EXPECT_EQ(Resurrector::saved->next->next, Resurrector::saved);
  EXPECT_TRUE(gc::is_tracked(Resurrector::saved));

  Resurrector::saved = nullptr;  // garbage again
  EXPECT_EQ(gc::collect(), 2u);
  EXPECT_EQ(Resurrector::finalize_calls, 1);  // PEP 442: once per object
  EXPECT_EQ(live_nodes, 0);
}

TEST_F(CyclesTest, ResurrectionWhenCountReachesZero) {
  Resurrector::finalize_calls = 0;
  gc::make<Resurrector>();  // dropped at once
  EXPECT_EQ(Resurrector::finalize_calls, 1);
  ASSERT_TRUE(Resurrector::saved);
  EXPECT_EQ(gc::refcount(Resurrector::saved), 1u);
  Resurrector::saved = nullptr;
  EXPECT_EQ(Resurrector::finalize_calls, 1);
  EXPECT_EQ(live_nodes, 0);
}

struct Checker : Node {
  static inline int saw_null_next = 0;
  ~Checker() override { saw_null_next += next == nullptr; }
};

TEST_F(CyclesTest, DestructorsRunWithCycleMembersAlreadyCleared) {
  Checker::saw_null_next = 0;
  {
    gc::Ref<Node> a = gc::make<Checker>(), b = gc::make<Checker>();
    a->next = b;
    b->next = a;
  }
  EXPECT_EQ(gc::collect(), 2u);
  EXPECT_EQ(Checker::saw_null_next, 2);
}

struct DropsNextInFinalize : Node {
  void finalize() override { next = nullptr; }
};

TEST_F(CyclesTest, FinalizerDroppingTheLastReferenceToOtherGarbage) {
  {
    gc::Ref<Node> a = gc::make<DropsNextInFinalize>(), b = gc::make<Node>();
    a->next = b;  // b's only reference: a finalizer removes it mid-collection
    b->next = a;
  }
  EXPECT_EQ(gc::collect(), 2u);
  EXPECT_EQ(live_nodes, 0);
}

struct RawPeer : Node {
  Node* peer = nullptr;  // uncounted
  ~RawPeer() override {
    // Touching another object of the same garbage from a destructor: a brief Ref to it must
    // not free it a second time.
    if (peer) gc::Ref<Node> brief(peer);
  }
};

TEST_F(CyclesTest, DestructorBrieflyReferencingOtherGarbageDoesNotFreeItTwice) {
  {
    gc::Ref<RawPeer> a = gc::make<RawPeer>(), b = gc::make<RawPeer>();
    a->next = b;
    b->next = a;
    a->peer = b.get();  // a is destroyed first (table order), while b is still there
  }
  EXPECT_EQ(gc::collect(), 2u);
  EXPECT_EQ(live_nodes, 0);
  EXPECT_TRUE(gc::get_objects().empty());
}

// A count above 2^31 - 1 is more than the collector's 32-bit arithmetic holds: the object is a
// root, whatever the edges into it. Set by hand here, as a test cannot hold 2^31 Refs.
TEST_F(CyclesTest, CountAboveTwoToTheThirtyOneKeepsACycleAlive) {
  Node* raw = nullptr;
  {
    gc::Ref<Node> a = gc::make<Node>(), b = gc::make<Node>();
    a->next = b;
    b->next = a;
    raw = a.get();
  }
  std::uint32_t& count = gc::detail::Access::refcount(raw);
  const std::uint32_t real = count;
  count = real + 0x90000000u;  // as if over 2^31 more Refs held it
  EXPECT_EQ(gc::collect(), 0u);
  EXPECT_EQ(live_nodes, 2);
  count = real;
  EXPECT_EQ(gc::collect(), 2u);
  EXPECT_EQ(live_nodes, 0);
}

TEST_F(CyclesTest, YoungCollectionPromotesSurvivorsAndLeavesOldCyclesAlone) {
  gc::Ref<Node> keep = gc::make<Node>();
  gc::collect(0);  // keep moves to generation 1
  EXPECT_EQ(gc::get_objects(1).size(), 1u);
  {
    gc::Ref<Node> a = gc::make<Node>();
    a->next = a;
    keep->next = a;
  }
  EXPECT_EQ(gc::collect(0), 0u);  // a is referenced from the older generation
  keep->next = nullptr;           // a: now an unreachable self-cycle, in generation 1
  EXPECT_EQ(gc::get_objects(1).size(), 2u);
  EXPECT_EQ(gc::collect(0), 0u);  // generation 0 does not include it
  EXPECT_EQ(gc::collect(1), 1u);
  EXPECT_EQ(gc::collect(2), 0u);
  EXPECT_EQ(gc::get_objects(2).size(), 1u);  // keep survived twice
}

TEST_F(CyclesTest, TenMillionNodeChainIsReleasedWithoutDeepRecursion) {
  constexpr int kNodes = 10'000'000;
  {
    gc::Ref<Node> head = gc::make<Node>();
    Node* tail = head.get();
    for (int i = 1; i < kNodes; ++i) {
      tail->next = gc::make<Node>();
      tail = tail->next.get();
    }
    EXPECT_EQ(live_nodes, kNodes);
  }  // counting frees all of it from one destructor: the trashcan keeps the stack flat
  EXPECT_EQ(live_nodes, 0);
  EXPECT_TRUE(gc::get_objects().empty());
}

TEST_F(CyclesTest, LongCyclicChainIsCollectedWithoutDeepRecursion) {
  constexpr int kNodes = 2'000'000;
  {
    gc::Ref<Node> head = gc::make<Node>();
    Node* tail = head.get();
    for (int i = 1; i < kNodes; ++i) {
      tail->next = gc::make<Node>();
      tail->next->prev = gc::Ref<Node>(tail);
      tail = tail->next.get();
    }
  }
  EXPECT_EQ(live_nodes, kNodes);
  EXPECT_EQ(gc::collect(), static_cast<std::size_t>(kNodes));
  EXPECT_EQ(live_nodes, 0);
}

// A garbage cycle whose member holds a long chain through a Ref its trace() does not report:
// the collection's free pass destroys the member, whose destructor releases the whole chain.
// The trashcan must bound the recursion inside the pass too, and nothing may be left behind.
namespace {
struct ChainHolder : gc::Object {
  gc::Ref<ChainHolder> self;
  gc::Ref<Node> chain;  // deliberately not traced: counting alone frees it
  void trace(gc::Tracer& t) override { t(self); }
};
}  // namespace

TEST_F(CyclesTest, ChainReleasedByAGarbageDestructorDoesNotRecurseDeeply) {
  constexpr int kNodes = 2'000'000;
  {
    gc::Ref<ChainHolder> holder = gc::make<ChainHolder>();
    holder->self = holder;
    holder->chain = gc::make<Node>();
    Node* tail = holder->chain.get();
    for (int i = 1; i < kNodes; ++i) {
      tail->next = gc::make<Node>();
      tail = tail->next.get();
    }
  }
  EXPECT_EQ(live_nodes, kNodes);
  EXPECT_EQ(gc::collect(), 1u);  // the holder; the chain was never garbage, only released
  EXPECT_EQ(live_nodes, 0);
  EXPECT_TRUE(gc::get_objects().empty());
}

// The free pass frees the blocks of garbage in batches (tm_free_batch): small blocks of many
// pools and classes, and blocks above the pools' largest class, which come from the large
// allocator. Every destructor runs once, and the memory is reused afterwards.
namespace {
struct BigNode : Node {
  char payload[3000];
};
struct MidNode : Node {
  char payload[200];
};
}  // namespace

TEST_F(CyclesTest, GarbageOfSmallAndLargeBlocksIsFreedInBatches) {
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 2000; ++i) {
      gc::Ref<Node> a = i % 3 == 0   ? gc::Ref<Node>(gc::make<BigNode>())
                        : i % 3 == 1 ? gc::Ref<Node>(gc::make<MidNode>())
                                     : gc::make<Node>();
      gc::Ref<Node> b = gc::make<Node>();
      a->next = b;
      b->next = a;
    }
    EXPECT_EQ(live_nodes, 4000);
    EXPECT_EQ(gc::collect(), 4000u);
    EXPECT_EQ(live_nodes, 0);
    EXPECT_TRUE(gc::get_objects().empty());
  }
}

// A collection that starts inside deeply nested destructions: its free pass runs past the
// trashcan's depth, so it queues the garbage instead of destroying it, and the outermost
// destruction frees it. Each node of a chain released by counting makes a garbage cycle and
// collects it from its destructor, at every depth from 1 to past the trashcan's limit.
namespace {
struct CollectingNode : Node {
  ~CollectingNode() override {
    gc::Ref<Node> a = gc::make<Node>(), b = gc::make<Node>();
    a->next = b;
    b->next = a;
    a = nullptr;
    b = nullptr;
    collected += gc::collect();
  }
  static inline std::size_t collected = 0;
};
}  // namespace

TEST_F(CyclesTest, CollectionInsideDeeplyNestedDestructionFreesItsGarbage) {
  constexpr int kNodes = 120;  // beyond the trashcan's 50 nested destructions
  CollectingNode::collected = 0;
  {
    gc::Ref<Node> head = gc::make<CollectingNode>();
    Node* tail = head.get();
    for (int i = 1; i < kNodes; ++i) {
      tail->next = gc::make<CollectingNode>();
      tail = tail->next.get();
    }
  }
  EXPECT_EQ(CollectingNode::collected, 2u * kNodes);
  EXPECT_EQ(live_nodes, 0);
  EXPECT_TRUE(gc::get_objects().empty());
}

TEST_F(CyclesTest, DebugSaveAllKeepsUnreachableInGarbage) {
  gc::set_debug(gc::DEBUG_SAVEALL);
  {
    gc::Ref<Node> a = gc::make<Node>(), b = gc::make<Node>();
    a->next = b;
    b->next = a;
  }
  EXPECT_EQ(gc::collect(), 2u);
  EXPECT_EQ(gc::garbage().size(), 2u);
  EXPECT_EQ(live_nodes, 2);
  gc::set_debug(0);
  gc::garbage().clear();
  EXPECT_EQ(gc::collect(), 2u);
  EXPECT_EQ(live_nodes, 0);
}

TEST_F(CyclesTest, ConstructorExceptionFreesTheBlock) {
  struct Throws : Node {
    Throws() { throw std::runtime_error("no"); }
  };
  EXPECT_THROW(gc::make<Throws>(), std::runtime_error);
  EXPECT_EQ(live_nodes, 0);
  EXPECT_TRUE(gc::get_objects().empty());
  // The heap still knows it is not inside make(): automatic collection still happens.
  gc::enable();
  gc::set_threshold(5);
  const std::size_t before = gc::get_stats()[0].collections;
  std::vector<gc::Ref<Node>> keep;
  for (int i = 0; i < 6; ++i) keep.push_back(gc::make<Node>());
  EXPECT_EQ(gc::get_stats()[0].collections, before + 1);
}

struct alignas(64) CacheLineNode : Node {
  char pad[8];
};

TEST_F(CyclesTest, OverAlignedTypesAreAllocatedAlignedAndCollected) {
  {
    gc::Ref<CacheLineNode> a = gc::make<CacheLineNode>(), b = gc::make<CacheLineNode>();
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a.get()) % 64, 0u);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.get()) % 64, 0u);
    a->next = b;
    b->next = a;
  }
  EXPECT_EQ(gc::collect(), 2u);
  EXPECT_EQ(live_nodes, 0);
}

TEST_F(CyclesTest, RefBasics) {
  gc::Ref<Finalized> f = gc::make<Finalized>();
  gc::Ref<Node> n = f;  // upcast
  EXPECT_EQ(n, f);
  EXPECT_EQ(gc::refcount(f), 2u);
  EXPECT_EQ(gc::ref_cast<Finalized>(n), f);
  EXPECT_EQ(gc::ref_cast<Legacy>(n), nullptr);
  gc::Ref<Node> moved = std::move(n);
  EXPECT_FALSE(n);
  EXPECT_EQ(gc::refcount(f), 2u);
  moved.reset();
  EXPECT_EQ(gc::refcount(f), 1u);
  EXPECT_EQ(f->value, 0);
  EXPECT_EQ((*f).value, 0);
  EXPECT_TRUE(gc::is_tracked(f));
  EXPECT_FALSE(gc::is_finalized(f));
}

}  // namespace
