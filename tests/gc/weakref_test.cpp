// Weak references, their callbacks and their order, and the weak maps.
#include <string>

#include "gc_test_util.hpp"

using namespace gctest;

namespace {

using WeakRefTest = GcTest;

TEST_F(WeakRefTest, LockAndExpiry) {
  gc::Ref<Node> a = gc::make<Node>();
  gc::WeakRef<Node> w(a);
  EXPECT_FALSE(w.expired());
  EXPECT_EQ(w.lock(), a);
  EXPECT_EQ(gc::refcount(a), 1u);  // a weak reference does not count
  gc::WeakRef<Node> copy = w;
  a = nullptr;
  EXPECT_TRUE(w.expired());
  EXPECT_TRUE(copy.expired());
  EXPECT_EQ(w.lock(), nullptr);
  EXPECT_EQ(live_nodes, 0);
}

TEST_F(WeakRefTest, CallbackRunsWithReferenceAlreadyCleared) {
  gc::Ref<Node> a = gc::make<Node>();
  int calls = 0;
  bool expired_inside = false;
  gc::WeakRef<Node> w;
  w = gc::WeakRef<Node>(a, [&] {
    ++calls;
    expired_inside = w.expired();
  });
  a = nullptr;
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(expired_inside);
}

TEST_F(WeakRefTest, SeveralCallbacksRunNewestFirstAsInCPython) {
  gc::Ref<Node> a = gc::make<Node>();
  std::string order;
  gc::WeakRef<Node> first(a, [&] { order += "1"; });
  gc::WeakRef<Node> second(a, [&] { order += "2"; });
  gc::WeakRef<Node> third(a, [&] { order += "3"; });
  a = nullptr;
  EXPECT_EQ(order, "321");
}

TEST_F(WeakRefTest, CallbackOfADeadWeakRefDoesNotRun) {
  gc::Ref<Node> a = gc::make<Node>();
  int calls = 0;
  {
    gc::WeakRef<Node> w(a, [&] { ++calls; });
  }
  a = nullptr;
  EXPECT_EQ(calls, 0);
}

TEST_F(WeakRefTest, CycleCollectionOrderCallbacksThenFinalizersThenOtherWeakRefs) {
  static std::vector<std::string> log;
  static gc::WeakRef<Node> plain_to_b;     // no callback: cleared only after finalizers
  static gc::WeakRef<Node> callback_to_b;  // callback: cleared before finalizers
  struct Logger : Node {
    void finalize() override {
      log.push_back("finalize " + std::to_string(value) +
                    (callback_to_b.expired() ? " cb-cleared" : " cb-set") +
                    (plain_to_b.expired() ? " plain-cleared" : " plain-set"));
    }
  };
  log.clear();
  {
    gc::Ref<Node> a = gc::make<Logger>(), b = gc::make<Logger>();
    a->value = 1;
    b->value = 2;
    a->next = b;
    b->next = a;
    plain_to_b = gc::WeakRef<Node>(b);
    callback_to_b = gc::WeakRef<Node>(b, [] {
      log.push_back(std::string("callback") +
                    (callback_to_b.expired() ? " cb-cleared" : " cb-set"));
    });
  }
  EXPECT_EQ(gc::collect(), 2u);
  ASSERT_EQ(log.size(), 3u);
  EXPECT_EQ(log[0], "callback cb-cleared");
  EXPECT_EQ(log[1], "finalize 1 cb-cleared plain-set");
  EXPECT_EQ(log[2], "finalize 2 cb-cleared plain-set");
  EXPECT_TRUE(plain_to_b.expired());
  plain_to_b.reset();
  callback_to_b.reset();
}

TEST_F(WeakRefTest, CallbackOfAWeakRefThatIsItselfGarbageDoesNotRun) {
  static int calls = 0;
  struct Holder : Node {
    gc::WeakRef<Node> watch;
    void trace(gc::Tracer& t) override {
      Node::trace(t);
      t(watch);  // reporting the WeakRef tells the collector it belongs to this object
    }
  };
  calls = 0;
  {
    gc::Ref<Holder> a = gc::make<Holder>();
    gc::Ref<Node> b = gc::make<Node>();
    a->next = b;
    b->next = a;
    a->watch = gc::WeakRef<Node>(b, [] { ++calls; });
  }
  gc::WeakRef<Node> outside;
  EXPECT_EQ(gc::collect(), 2u);
  EXPECT_EQ(calls, 0);
}

TEST_F(WeakRefTest, CallbackOfAReachableWeakRefToGarbageRuns) {
  int calls = 0;
  gc::WeakRef<Node> w;
  {
    gc::Ref<Node> a = gc::make<Node>();
    a->next = a;
    w = gc::WeakRef<Node>(a, [&] { ++calls; });
  }
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(gc::collect(), 1u);
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(w.expired());
}

TEST_F(WeakRefTest, WeakReferenceBreaksTheCycleSoCountingSuffices) {
  // The documents' doubly linked list with prev as weakref.ref.
  {
    gc::Ref<Node> first = gc::make<Node>(), second = gc::make<Node>();
    first->next = second;
    second->parent = first;
  }
  EXPECT_EQ(live_nodes, 0);
}

TEST_F(WeakRefTest, EventManagerWithStrongListenersKeepsThemAlive) {
  struct Listener : Node {
    int events = 0;
  };
  struct EventManager : Node {
    std::vector<gc::Ref<Listener>> listeners;
    void trace(gc::Tracer& t) override { t(listeners); }
    void notify() {
      for (auto& l : listeners) ++l->events;
    }
  };
  gc::Ref<EventManager> manager = gc::make<EventManager>();
  gc::WeakRef<Listener> probe;
  {
    gc::Ref<Listener> listener = gc::make<Listener>();
    listener->next = manager;  // and the listener refers back to the manager: a cycle
    manager->listeners.push_back(listener);
    probe = listener;
  }  // `del listener`
  EXPECT_EQ(gc::collect(), 0u);
  manager->notify();  // still called: the manager holds it, as it should
  ASSERT_FALSE(probe.expired());
  EXPECT_EQ(probe.lock()->events, 1);
  manager = nullptr;
  EXPECT_EQ(gc::collect(), 2u);  // manager and listener, a cycle
  EXPECT_TRUE(probe.expired());
}

TEST_F(WeakRefTest, EventManagerWithWeakListenersLetsThemGo) {
  struct Listener : Node {
    gc::Ref<Node> manager;
    void trace(gc::Tracer& t) override { t(manager); }
  };
  struct EventManager : Node {
    std::vector<gc::WeakRef<Listener>> listeners;
    int delivered = 0;
    void notify() {
      for (auto& weak : listeners) {
        if (auto l = weak.lock()) ++delivered;
      }
    }
  };
  gc::Ref<EventManager> manager = gc::make<EventManager>();
  {
    gc::Ref<Listener> listener = gc::make<Listener>();
    listener->manager = manager;
    manager->listeners.emplace_back(listener);
    manager->notify();
  }
  EXPECT_EQ(live_nodes, 1);  // the listener went at once: nothing strong kept it
  manager->notify();
  EXPECT_EQ(manager->delivered, 1);
  EXPECT_TRUE(manager->listeners[0].expired());
}

TEST_F(WeakRefTest, WeakValueCacheEntriesVanish) {
  gc::WeakValueMap<int, Node> cache;
  gc::Ref<Node> one = gc::make<Node>(1), two = gc::make<Node>(2);
  cache.insert_or_assign(1, one);
  cache.insert_or_assign(2, two);
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.get(1), one);
  one = nullptr;  // `del obj1`
  EXPECT_EQ(cache.get(1), nullptr);
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_FALSE(cache.contains(1));
  // An entry whose object is in a cycle goes when the collector frees the cycle.
  two->next = two;
  two = nullptr;
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_EQ(gc::collect(), 1u);
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_TRUE(cache.empty());
}

TEST_F(WeakRefTest, WeakValueMapIsSafeToIterateWhileCollectionRunsCallbacks) {
  gc::WeakValueMap<int, Node> cache;
  std::vector<gc::Ref<Node>> keep;
  for (int i = 0; i < 100; ++i) {
    gc::Ref<Node> n = gc::make<Node>(i);
    cache.insert_or_assign(i, n);
    if (i % 2 == 0) {
      keep.push_back(n);
    } else {
      n->next = n;  // odd values are garbage cycles
    }
  }
  int visited = 0;
  bool collected = false;
  bool first_was_garbage = false;
  for (auto [key, value] : cache) {
    ASSERT_TRUE(value);
    EXPECT_EQ(value->value, key);
    if (!collected) {
      // The element the loop stands on is held by the iteration, garbage or not.
      collected = true;
      first_was_garbage = key % 2 != 0;
      EXPECT_EQ(gc::collect(), first_was_garbage ? 49u : 50u);
    }
    ++visited;
  }
  EXPECT_EQ(visited, first_was_garbage ? 51 : 50);
  // The removals queued while the loop was open were applied when it ended.
  EXPECT_EQ(cache.size(), first_was_garbage ? 51u : 50u);
  gc::collect();
  EXPECT_EQ(cache.size(), 50u);
  for (auto [key, value] : cache) EXPECT_EQ(key % 2, 0);
}

TEST_F(WeakRefTest, WeakKeyMapEntriesVanishWithTheirKeys) {
  gc::WeakKeyMap<Node, std::string> names;
  gc::Ref<Node> a = gc::make<Node>(), b = gc::make<Node>();
  names.insert_or_assign(a, "a");
  names.insert_or_assign(b, "b");
  ASSERT_NE(names.find(a), nullptr);
  EXPECT_EQ(*names.find(a), "a");
  EXPECT_EQ(names.get(b), "b");
  names.insert_or_assign(a, "A");
  EXPECT_EQ(names.get(a), "A");
  EXPECT_EQ(names.size(), 2u);
  a = nullptr;
  EXPECT_EQ(names.size(), 1u);
  int seen = 0;
  for (auto [key, name] : names) {
    EXPECT_EQ(key, b);
    EXPECT_EQ(name, "b");
    ++seen;
  }
  EXPECT_EQ(seen, 1);
  b->next = b;
  b = nullptr;
  EXPECT_EQ(gc::collect(), 1u);
  EXPECT_TRUE(names.empty());
}

TEST_F(WeakRefTest, WeakRefToObjectUnderConstructionStartsCleared) {
  struct SelfWatcher : Node {
    gc::WeakRef<Node> self;
    SelfWatcher() { self = gc::WeakRef<Node>(gc::Ref<Node>(this)); }
  };
  gc::Ref<SelfWatcher> s = gc::make<SelfWatcher>();
  EXPECT_TRUE(s->self.expired());
  EXPECT_EQ(gc::refcount(s), 1u);
}

}  // namespace
