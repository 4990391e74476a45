// Thread lifecycle: engine start-up, heap creation and recycling, thread exit, fork.
//
// Start-up must work when the first malloc comes from the dynamic loader, from dlsym, or from
// a thread being created, i.e. before constructors run and with no libc function known to be
// safe. engine_init() therefore only mmaps (the arena map) and calls pthread_key_create, which
// does not allocate; the fork handlers are registered from a constructor, once malloc works.
// Heaps come from meta_alloc() and are recycled when their thread exits, so a program that
// creates a million short threads reuses a handful of heaps.
#include <pthread.h>

#include <new>

#include <atomic>

#include "arena.h"
#include "heap.h"
#include "lock.h"
#include "meta.h"

namespace trimalloc {

__thread ThreadLocals tl_thread
    __attribute__((tls_model("initial-exec"))) = {&g_empty_heap, 0, false};
void (*g_before_thread_exit)() noexcept = nullptr;
void (*g_after_thread_exit)() noexcept = nullptr;
__thread bool tl_thread_exiting __attribute__((tls_model("initial-exec"))) = false;

namespace {
std::atomic<int> g_init_state{0};  // 0 = not started, 1 = running, 2 = done, 3 = failed
pthread_key_t g_exit_key;

SpinLock g_registry_lock;
std::atomic<ThreadHeap*> g_registry{nullptr};
ThreadHeap* g_recycled = nullptr;  // under g_registry_lock

void on_thread_exit(void* value) {
  auto* heap = static_cast<ThreadHeap*>(value);
  if (heap == nullptr || heap == &g_empty_heap) return;
  if (g_before_thread_exit) g_before_thread_exit();  // e.g. empty the hardened quarantine
  tl_thread_exiting = true;
  heap = tl_thread.heap;  // the hook may have freed, but never creates a heap: still this one
  // Later frees from this thread (other TLS destructors, glibc freeing the DTV) take the remote
  // path: its pools are ownerless once abandoned.
  tl_thread.heap = &g_empty_heap;
  heap->enter();  // a visitor may be working on this heap: let it finish
  heap->abandon(false);
  heap->leave();
  heap->live.store(false, std::memory_order_release);
  {
    LockGuard guard(g_registry_lock);
    heap->free_next = g_recycled;
    g_recycled = heap;
  }
  if (g_after_thread_exit) g_after_thread_exit();
}

// --- fork: hold every allocator lock across fork(), so the child sees consistent lists ---
void before_fork() {
  // Lock order everywhere: visit -> registry -> abandoned -> arenas. (The visit lock itself is
  // taken by the allocator layer's fork handler, registered after this one, so it runs first.)
  g_registry_lock.lock();
  abandoned_lock().lock();
  g_arenas.lock().lock();
}
void after_fork_parent() {
  g_arenas.lock().unlock();
  abandoned_lock().unlock();
  g_registry_lock.unlock();
}
void after_fork_child() {
  g_arenas.lock().reset_after_fork();
  abandoned_lock().reset_after_fork();
  g_registry_lock.reset_after_fork();
  // Only this thread exists now. Other heaps are left untouched and marked dead (see heap.h);
  // they are not recycled, since their pools still name them as owner.
  for (ThreadHeap* h = g_registry.load(std::memory_order_relaxed); h; h = h->registry_next)
    if (h != tl_thread.heap) h->live.store(false, std::memory_order_relaxed);
}

// Priority 101: before the allocator layer's constructor, so these handlers are registered first
// and their prepare step runs last (pthread_atfork runs prepares in reverse order), keeping the
// lock order visit -> registry -> abandoned -> arenas.
__attribute__((constructor(101))) void register_fork_handlers() {
  engine_init();
  pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}
}  // namespace

bool engine_init() noexcept {
  int state = g_init_state.load(std::memory_order_acquire);
  if (state == 2) return true;
  if (state == 3) return false;
  int expected = 0;
  if (g_init_state.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
    bool ok = g_arena_map.init() && pthread_key_create(&g_exit_key, on_thread_exit) == 0;
    g_init_state.store(ok ? 2 : 3, std::memory_order_release);
    return ok;
  }
  // Another thread is initialising; it does not allocate, so this wait is short.
  while ((state = g_init_state.load(std::memory_order_acquire)) == 1) sched_yield();
  return state == 2;
}

ThreadHeap* registry_head() noexcept {
  return g_registry.load(std::memory_order_acquire);
}

ThreadHeap* heap_for_this_thread() noexcept {
  if (tl_thread.heap != &g_empty_heap) return tl_thread.heap;
  if (!engine_init()) return nullptr;
  ThreadHeap* heap = nullptr;
  {
    LockGuard guard(g_registry_lock);
    if (g_recycled) {
      heap = g_recycled;
      g_recycled = heap->free_next;
    }
  }
  if (heap == nullptr) {
    void* mem = meta_alloc(sizeof(ThreadHeap));
    if (mem == nullptr) return nullptr;
    heap = new (mem) ThreadHeap();
    LockGuard guard(g_registry_lock);
    heap->registry_next = g_registry.load(std::memory_order_relaxed);
    g_registry.store(heap, std::memory_order_release);
  }
  heap->reset();
  heap->live.store(true, std::memory_order_release);
  // TLS first: pthread_setspecific may itself call calloc (keys >= 32), which must find the heap.
  tl_thread.heap = heap;
  pthread_setspecific(g_exit_key, heap);
  return heap;
}

}  // namespace trimalloc
