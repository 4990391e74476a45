// WeakValueMap and WeakKeyMap: Python's WeakValueDictionary and WeakKeyDictionary.
//
// Entries are removed by the weak references' callbacks. A callback can run in the middle of the
// user's loop over the map (any allocation may start a collection), so, as in CPython's
// _IterationGuard, every live iterator counts as an open iteration and removals that arrive
// while one is open are queued and applied when the last iterator goes away. The map's state is
// heap-allocated so that callbacks can point at it even when the map object itself is moved; a
// destroyed map destroys its weak references, and a weak reference that is gone never calls back.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "trimalloc/gc/weakref.hpp"

namespace trimalloc::gc {

namespace detail {

// Shared by both maps: the map proper plus the iteration guard and the queue of removals.
template <class Key, class Entry, class Hash, class KeyEqual, class IsDead>
struct WeakMapState {
  std::unordered_map<Key, Entry, Hash, KeyEqual> entries;
  std::size_t open_iterations = 0;
  std::vector<Key> pending;  // entries whose weak side died while an iteration was open

  void died(const Key& key) {
    if (open_iterations) {
      pending.push_back(key);
      return;
    }
    erase_if_dead(key);
  }
  void erase_if_dead(const Key& key) {
    // A dead entry may have been replaced by a live one since the callback was queued.
    auto it = entries.find(key);
    if (it != entries.end() && IsDead()(it->second)) entries.erase(it);
  }
  void close_iteration() {
    if (--open_iterations != 0) return;
    std::vector<Key> keys;
    keys.swap(pending);
    for (const Key& key : keys) erase_if_dead(key);
  }
  std::size_t live_size() const {
    if (pending.empty()) return entries.size();
    std::size_t n = 0;
    for (const auto& entry : entries) n += !IsDead()(entry.second);
    return n;
  }
};

// An iterator that keeps an iteration open and skips dead entries. Deref yields what
// `Project` makes of an entry; it holds a strong Ref to the weak side while positioned on it,
// so the element cannot die inside the loop body.
template <class State, class Project>
class WeakMapIterator {
  using Inner = decltype(std::declval<State&>().entries.begin());

 public:
  using Held = decltype(Project::current(std::declval<Inner&>()));

  WeakMapIterator() = default;
  WeakMapIterator(State* state, Inner it) : state_(state), it_(it) {
    ++state_->open_iterations;
    settle();
  }
  WeakMapIterator(const WeakMapIterator& other) : state_(other.state_), it_(other.it_) {
    if (state_) ++state_->open_iterations;
    current_ = other.current_;
  }
  WeakMapIterator& operator=(const WeakMapIterator& other) {
    WeakMapIterator copy(other);
    std::swap(state_, copy.state_);
    std::swap(it_, copy.it_);
    std::swap(current_, copy.current_);
    return *this;
  }
  ~WeakMapIterator() {
    current_.reset();
    if (state_) state_->close_iteration();
  }

  auto operator*() const { return Project::deref(it_, current_); }
  WeakMapIterator& operator++() {
    ++it_;
    settle();
    return *this;
  }
  bool operator==(const WeakMapIterator& other) const { return it_ == other.it_; }

 private:
  void settle() {
    for (; it_ != state_->entries.end(); ++it_) {
      current_ = Project::current(it_);
      if (current_) return;
    }
    current_.reset();
  }

  State* state_ = nullptr;
  Inner it_{};
  Held current_;
};

}  // namespace detail

// Maps keys to objects without keeping the objects alive: an entry vanishes when its object dies.
template <class K, class V, class Hash = std::hash<K>, class KeyEqual = std::equal_to<K>>
class WeakValueMap {
  struct IsDead {
    bool operator()(const WeakRef<V>& value) const { return value.expired(); }
  };
  using State = detail::WeakMapState<K, WeakRef<V>, Hash, KeyEqual, IsDead>;
  struct Project {
    template <class It>
    static Ref<V> current(It& it) {
      return it->second.lock();
    }
    template <class It>
    static std::pair<const K&, Ref<V>> deref(const It& it, const Ref<V>& value) {
      return {it->first, value};
    }
  };

 public:
  using iterator = detail::WeakMapIterator<State, Project>;

  void insert_or_assign(const K& key, const Ref<V>& value) {
    if (!value) {
      erase(key);
      return;
    }
    State* state = state_.get();
    state->entries.insert_or_assign(key, WeakRef<V>(value, [state, key] { state->died(key); }));
  }
  Ref<V> get(const K& key) const {
    auto it = state_->entries.find(key);
    return it == state_->entries.end() ? nullptr : it->second.lock();
  }
  Ref<V> find(const K& key) const { return get(key); }
  bool contains(const K& key) const { return get(key) != nullptr; }
  bool erase(const K& key) { return state_->entries.erase(key) != 0; }
  void clear() { state_->entries.clear(); }
  std::size_t size() const { return state_->live_size(); }
  bool empty() const { return size() == 0; }

  // `for (auto [key, value] : map)`: value is a Ref held for the duration of the step.
  iterator begin() { return iterator(state_.get(), state_->entries.begin()); }
  iterator end() { return iterator(state_.get(), state_->entries.end()); }

 private:
  std::unique_ptr<State> state_ = std::make_unique<State>();
};

// Maps objects to values without keeping the objects (the keys) alive, by object identity.
// A value that holds a strong Ref back to its own key keeps that key alive (no ephemerons),
// as in Python.
template <class K, class V>
class WeakKeyMap {
  struct Entry {
    WeakRef<K> key;
    V value;
  };
  struct IsDead {
    bool operator()(const Entry& entry) const { return entry.key.expired(); }
  };
  using State = detail::WeakMapState<const Object*, Entry, std::hash<const Object*>,
                                     std::equal_to<const Object*>, IsDead>;
  struct Project {
    template <class It>
    static Ref<K> current(It& it) {
      return it->second.key.lock();
    }
    template <class It>
    static std::pair<Ref<K>, V&> deref(const It& it, const Ref<K>& key) {
      return {key, it->second.value};
    }
  };

 public:
  using iterator = detail::WeakMapIterator<State, Project>;

  void insert_or_assign(const Ref<K>& key, V value) {
    const Object* address = detail::as_object(key.get());
    auto it = state_->entries.find(address);
    if (it != state_->entries.end()) {
      if (!it->second.key.expired()) {
        it->second.value = std::move(value);
        return;
      }
      // The old key died and its block was reused for `key` before its removal was applied.
      state_->entries.erase(it);
    }
    State* state = state_.get();
    state->entries.emplace(
        address,
        Entry{WeakRef<K>(key, [state, address] { state->died(address); }), std::move(value)});
  }
  V* find(const Ref<K>& key) {
    auto it = state_->entries.find(detail::as_object(key.get()));
    if (it == state_->entries.end() || it->second.key.expired()) return nullptr;
    return &it->second.value;
  }
  // The value, or V{} (a null Ref when V is a Ref) when the key is absent.
  V get(const Ref<K>& key) {
    V* value = find(key);
    return value ? *value : V{};
  }
  bool contains(const Ref<K>& key) { return find(key) != nullptr; }
  bool erase(const Ref<K>& key) { return state_->entries.erase(detail::as_object(key.get())) != 0; }
  void clear() { state_->entries.clear(); }
  std::size_t size() const { return state_->live_size(); }
  bool empty() const { return size() == 0; }

  // `for (auto [key, value] : map)`: key is a Ref held for the step, value a reference.
  iterator begin() { return iterator(state_.get(), state_->entries.begin()); }
  iterator end() { return iterator(state_.get(), state_->entries.end()); }

 private:
  std::unique_ptr<State> state_ = std::make_unique<State>();
};

}  // namespace trimalloc::gc
