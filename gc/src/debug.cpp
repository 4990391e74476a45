// Introspection and leak hunting: object descriptions, get_objects/get_referrers/get_referents,
// why_alive() and the trace validator. None of this is on a hot path; clarity over speed.
#include <cxxabi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "heap.hpp"

namespace trimalloc::gc::detail {

namespace {

const std::string& demangled_name(const std::type_info& type) {
  static std::mutex mutex;
  static std::unordered_map<const std::type_info*, std::string> names;
  std::lock_guard<std::mutex> lock(mutex);
  auto [it, inserted] = names.try_emplace(&type);
  if (inserted) {
    int status = 0;
    char* name = abi::__cxa_demangle(type.name(), nullptr, nullptr, &status);
    it->second = status == 0 && name ? name : type.name();
    std::free(name);
  }
  return it->second;
}

// The targets trace() reports, as Object pointers, in order.
std::vector<Object*> referents_of(const Object& object) {
  Targets targets;
  Tracer tracer = TracerAccess::visitor();
  auto [first, last] = targets.visit(const_cast<Object*>(&object), tracer);
  return std::vector<Object*>(first, last);
}

// For every table position, the count minus the references from tracked objects: what is
// held from outside the heap (a root when above zero).
std::vector<std::int64_t> external_counts(Heap& heap) {
  const std::uint32_t n = heap.table.size();
  std::vector<std::int64_t> external(n);
  for (std::uint32_t i = 0; i < n; ++i) external[i] = Access::refcount(object_of(heap.table[i]));
  for (std::uint32_t i = 0; i < n; ++i) {
    for (Object* target : referents_of(*object_of(heap.table[i]))) {
      std::uint32_t j = Access::slot(target);
      if (j < n) --external[j];
    }
  }
  return external;
}

std::vector<Ref<Object>> refs_of(const std::vector<Object*>& objects) {
  std::vector<Ref<Object>> refs;
  refs.reserve(objects.size());
  for (Object* o : objects) refs.emplace_back(o);
  return refs;
}

}  // namespace

void print_object_line(const char* what, const Object* o) noexcept {
  std::fprintf(stderr, "gc: %s %s\n", what, describe(*o).c_str());
}

void print_validation() noexcept {
  for (const TraceProblem& problem : validate_trace()) {
    std::fprintf(stderr, "gc: %s\n", problem.message.c_str());
  }
}

}  // namespace trimalloc::gc::detail

namespace trimalloc::gc {

using detail::Access;
using detail::current_heap;
using detail::Heap;
using detail::object_of;

std::string describe(const Object& object) {
  char address[32];
  std::snprintf(address, sizeof address, "%p", static_cast<const void*>(&object));
  return "<" + detail::demangled_name(*Access::type(&object).type) + " " + address + ">";
}

std::vector<Ref<Object>> get_objects(int generation) {
  if (generation < -1 || generation > 2) {
    throw std::invalid_argument("gc::get_objects: generation must be -1, 0, 1 or 2");
  }
  Heap& heap = current_heap();
  std::uint32_t first = heap.begin[detail::kGen2];
  std::uint32_t last = heap.table.size();
  if (generation >= 0) {
    int segment = detail::segment_of_generation(generation);
    first = heap.begin[segment];
    last = heap.segment_end(segment);
  }
  std::vector<Object*> objects;
  for (std::uint32_t i = first; i < last; ++i) objects.push_back(object_of(heap.table[i]));
  return detail::refs_of(objects);
}

std::vector<Ref<Object>> get_referrers(const Object& object) {
  Heap& heap = current_heap();
  std::vector<Object*> referrers;
  for (std::uint32_t i = heap.begin[detail::kGen2]; i < heap.table.size(); ++i) {
    Object* candidate = object_of(heap.table[i]);
    auto targets = detail::referents_of(*candidate);
    if (std::find(targets.begin(), targets.end(), &object) != targets.end()) {
      referrers.push_back(candidate);
    }
  }
  return detail::refs_of(referrers);
}

std::vector<Ref<Object>> get_referents(const Object& object) {
  return detail::refs_of(detail::referents_of(object));
}

bool is_tracked(const Object& object) {
  return current_heap().find_word(&object) != nullptr;
}

bool is_finalized(const Object& object) {
  std::uintptr_t* word = current_heap().find_word(&object);
  return word && (*word & detail::kFinalized);
}

std::size_t refcount(const Object& object) {
  return Access::refcount(&object);
}

// Breadth-first from every root (an object held from outside), recording who reached whom, so
// the chain returned is a shortest one.
std::vector<Ref<Object>> why_alive(const Object& object) {
  Heap& heap = current_heap();
  const std::uint32_t n = heap.table.size();
  const std::uint32_t target = Access::slot(&object);
  if (target >= n || object_of(heap.table[target]) != &object) return {};
  std::vector<std::int64_t> external = detail::external_counts(heap);
  constexpr std::uint32_t kUnseen = 0xffffffffu;
  std::vector<std::uint32_t> reached_from(n, kUnseen);
  std::vector<std::uint32_t> queue;
  for (std::uint32_t i = 0; i < n; ++i) {
    if (external[i] > 0) {
      reached_from[i] = i;
      queue.push_back(i);
    }
  }
  for (std::size_t head = 0; head < queue.size() && reached_from[target] == kUnseen; ++head) {
    std::uint32_t from = queue[head];
    for (Object* next : detail::referents_of(*object_of(heap.table[from]))) {
      std::uint32_t j = Access::slot(next);
      if (j < n && reached_from[j] == kUnseen) {
        reached_from[j] = from;
        queue.push_back(j);
      }
    }
  }
  if (reached_from[target] == kUnseen) return {};
  std::vector<Object*> chain{const_cast<Object*>(&object)};
  for (std::uint32_t i = target; reached_from[i] != i; i = reached_from[i]) {
    chain.push_back(object_of(heap.table[reached_from[i]]));
  }
  return detail::refs_of(chain);
}

std::vector<TraceProblem> validate_trace() {
  Heap& heap = current_heap();
  const std::uint32_t n = heap.table.size();
  // A Ref<T> stores a T*, which is the Object subobject's address or the block's start for the
  // usual single-inheritance types; accept either as "points at object j".
  std::unordered_map<std::uintptr_t, std::uint32_t> index_of;
  for (std::uint32_t i = 0; i < n; ++i) {
    Object* o = object_of(heap.table[i]);
    index_of[reinterpret_cast<std::uintptr_t>(o)] = i;
    index_of[reinterpret_cast<std::uintptr_t>(Access::block(o))] = i;
  }
  std::vector<std::int64_t> unexplained = detail::external_counts(heap);

  std::vector<TraceProblem> problems;
  for (std::uint32_t i = 0; i < n; ++i) {
    Object* holder = object_of(heap.table[i]);
    std::vector<Object*> reported = detail::referents_of(*holder);
    const auto* block = static_cast<const unsigned char*>(Access::block(holder));
    const std::size_t size = Access::type(holder).block_size;
    const std::size_t header =
        static_cast<std::size_t>(reinterpret_cast<const unsigned char*>(holder) - block);
    for (std::size_t offset = 0; offset + sizeof(std::uintptr_t) <= size;
         offset += sizeof(std::uintptr_t)) {
      if (offset >= header && offset < header + sizeof(Object)) continue;  // vptr, count, slot
      std::uintptr_t word;
      std::memcpy(&word, block + offset, sizeof word);
      auto hit = index_of.find(word);
      if (hit == index_of.end()) continue;
      Object* target = object_of(heap.table[hit->second]);
      auto listed = std::find(reported.begin(), reported.end(), target);
      if (listed != reported.end()) {
        reported.erase(listed);  // accounted for by trace(); each report explains one word
        continue;
      }
      // An unreported pointer to an object whose count trace() fully explains is a raw
      // (uncounted) pointer, not a forgotten Ref.
      if (unexplained[hit->second] <= 0) continue;
      TraceProblem problem;
      problem.holder = Ref<Object>(holder);
      problem.offset = offset;
      problem.target = Ref<Object>(target);
      problem.message = "trace() of " + describe(*holder) +
                        " does not report the reference at offset " + std::to_string(offset) +
                        " to " + describe(*target);
      problems.push_back(std::move(problem));
    }
  }
  return problems;
}

}  // namespace trimalloc::gc
