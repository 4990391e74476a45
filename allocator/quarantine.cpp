#include "quarantine.h"

#include <cerrno>
#include <cstddef>

#include "alloc.h"
#include "decay.h"
#include "large_registry.h"
#include "trim.h"

namespace trimalloc {
namespace {
constexpr unsigned kSlots = 256;
constexpr std::size_t kMaxBytes = 1 << 20;

struct Quarantine {
  void* slot[kSlots];
  std::size_t size[kSlots];
  unsigned next;
  std::size_t bytes;
};
__thread Quarantine tl_quarantine __attribute__((tls_model("initial-exec")));

// Frees a block that leaves quarantine (its checks were made when it came in). A small block was
// zeroed when it came in, link included, and stays so: anything written into it since is a use
// after free. The link and mark words are checked here, because the free list overwrites them;
// the body is left as it is and checked by the block's next allocation (ThreadHeap::alloc), so
// each freed block is zeroed once and scanned once.
void release(void* p, const char* call) {
  if (small_owns(p)) {
    Pool* pool = pool_of(p);
    auto* b = static_cast<Block*>(p);
    if (b->link != 0 || b->mark != quarantine_mark(pool))
      fatal(call, "write after free detected in block", p);
    small_free(p, call);
  } else {
    registry_transition(p, LargeState::kQuarantined, LargeState::kAbsent);
    large_free(p);
  }
}
}  // namespace

void quarantine_free(void* p, const char* call) noexcept {
  std::size_t size;
  if (small_owns(p)) {
    Pool* pool = checked_pool(p, call);
    auto* b = static_cast<Block*>(p);
    std::uintptr_t offset = reinterpret_cast<std::uintptr_t>(p) & (kPoolSize - 1);
    if (b->mark == free_mark(pool) || b->mark == quarantine_mark(pool) ||
        ((pool->dormant.load(std::memory_order_relaxed) >> (offset >> kPageShift)) & 1))
      fatal(call, "double free of", p);
    secure_scrub(pool, b);
    b->link = 0;
    b->mark = quarantine_mark(pool);
    size = pool->block_size;
  } else {
    if (!registry_transition(p, LargeState::kLive, LargeState::kQuarantined))
      fatal(call, "invalid pointer or double free of large block", p);
    size = large_usable_size(p);
  }
  // Only a thread with a heap is told when it exits (and empties its quarantine then); a thread
  // that is exiting already (glibc frees its TLS blocks after our exit hook) must not get one.
  if (tl_thread_exiting || (tl_thread.heap == &g_empty_heap && heap_for_this_thread() == nullptr))
    return release(p, call);
  if (size > kMaxBytes / 4) return release(p, call);  // would push out everything else
  // The ring is changed inside the heap's enter()/leave(), where no visitor can be emptying it
  // (see quarantine_empty_visited); what leaves it is freed after, the ordinary way.
  ThreadHeap* heap = tl_thread.heap;
  Quarantine& q = tl_quarantine;
  heap->enter();
  heap->quarantine = &q;
  const std::size_t held_before = q.bytes;
  void* out = q.slot[q.next];
  if (out != nullptr) q.bytes -= q.size[q.next];
  q.slot[q.next] = p;
  q.size[q.next] = size;
  q.bytes += size;
  q.next = (q.next + 1) % kSlots;
  // Over budget: let the oldest go early.
  while (q.bytes > kMaxBytes && out == nullptr) {
    unsigned i = q.next;
    for (unsigned n = 0; n < kSlots && q.slot[i] == nullptr; ++n) i = (i + 1) % kSlots;
    out = q.slot[i];
    q.bytes -= q.size[i];
    q.slot[i] = nullptr;
  }
  const std::size_t held = q.bytes;  // read before leave(): a visitor may empty q after it
  heap->quarantined_bytes.store(held, std::memory_order_relaxed);
  heap->leave();
  // The first block since the quarantine was last emptied makes it worth a visit, should this
  // thread now go idle: the decay thread must be awake to see that. Only then: it does not go to
  // sleep while any other thread's quarantine holds a block (quarantine_worth_a_visit), so later
  // frees need not tell it.
  if (held_before == 0) decay_note_freed();
  if (out != nullptr) release(out, call);
}

void* malloc_after_quarantine(std::size_t size) noexcept {
  quarantine_flush();
  void* p = size <= kSmallMax ? small_alloc(size_class_of(size)) : large_alloc(size, 0, false);
  if (p == nullptr) errno = ENOMEM;
  return p;
}

namespace {
// Takes every block out of `q` into `out`; how many.
unsigned take_all(Quarantine& q, void** out) noexcept {
  unsigned n = 0;
  for (unsigned i = 0; i < kSlots; ++i) {
    if (q.slot[i] == nullptr) continue;
    out[n++] = q.slot[i];
    q.slot[i] = nullptr;
  }
  q.bytes = 0;
  return n;
}

// Emptied inside enter()/leave() when the thread has a heap, as quarantine_free changes it; the
// blocks are freed after. At thread exit the heap also forgets the quarantine, whose TLS block
// is about to go, before a visitor could reach it (the thread's later frees bypass it).
void flush(bool thread_exit) noexcept {
  void* blocks[kSlots];
  ThreadHeap* heap = tl_thread.heap;
  const bool entered = heap != &g_empty_heap;
  if (entered) heap->enter();
  const unsigned n = take_all(tl_quarantine, blocks);
  if (entered) heap->quarantined_bytes.store(0, std::memory_order_relaxed);
  if (entered && thread_exit) heap->quarantine = nullptr;
  if (entered) heap->leave();
  for (unsigned i = 0; i < n; ++i) release(blocks[i], "free");
}
}  // namespace

void quarantine_flush() noexcept {
  flush(false);
}

void quarantine_flush_at_thread_exit() noexcept {
  flush(true);
}

void quarantine_empty_visited(ThreadHeap* heap) noexcept {
  auto* q = static_cast<Quarantine*>(heap->quarantine);
  if (q == nullptr) return;
  void* blocks[kSlots];
  const unsigned n = take_all(*q, blocks);
  heap->quarantined_bytes.store(0, std::memory_order_relaxed);
  // This thread, the visitor, frees them: a small block of the visited heap's pools arrives
  // there as a remote free, which the trim that follows collects.
  for (unsigned i = 0; i < n; ++i) release(blocks[i], "free");
}

}  // namespace trimalloc
