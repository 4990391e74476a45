// Automatic return of idle memory.
//
// A background thread, started lazily once the heap has grown past 8 MiB (a smaller heap has
// nothing worth a thread), sleeps on a futex until a free leaves memory to return, then wakes
// every decay_ms/4, returns
// memory idle longer than decay_ms (trim.h's decay pass, plus jemalloc's own decay for our
// arena), and sleeps without a timeout once nothing is left to return, until the next free
// wakes it. It is fork-safe: fork() holds the visit lock (so no visit is half done) and the
// child starts a new thread lazily, like the parent did. With TRIMALLOC_BACKGROUND_THREAD=0
// the same pass runs from allocation slow paths instead (no thread, less prompt).
#pragma once
#include <atomic>
#include <cstddef>

#include "config.h"
#include "options.h"

namespace trimalloc {

// The thread's state, read by every large free (decay_note_freed).
extern TM_INTERNAL std::atomic<bool> g_decay_started;
extern TM_INTERNAL std::atomic<bool> g_decay_sleeping;  // asleep with no timeout: wake it
void decay_request() noexcept;

void decay_init() noexcept;  // from the library constructor: hooks, atfork
// Gives jemalloc's arenas the decay_ms option (at start-up, and when tm_option_set changes it).
void decay_apply_to_large() noexcept;
// After a free that left memory for decay to return: a large free (jemalloc now holds dirty
// pages), or, in the hardened build, a quarantine grown worth a visit (trim.h). Wakes the
// thread if it sleeps without a timeout, or asks the allocation slow paths to decay when there
// is no thread. Inline, because every large free() calls it and it usually has nothing to do.
inline void decay_note_freed() noexcept {
  if (__builtin_expect(g_decay_sleeping.load(std::memory_order_relaxed), 0) ||
      (!g_decay_started.load(std::memory_order_relaxed) &&
       !g_options.background_thread.load(std::memory_order_relaxed)))
    decay_request();
}
void decay_note_heap_growth() noexcept;  // a new arena or jemalloc region: maybe start it
// Enforces TRIMALLOC_MAX_CACHED and wakes/starts the thread; called when a pool goes dirty.
void decay_note_dirty_pool() noexcept;
bool decay_thread_running() noexcept;
std::size_t decay_released_bytes() noexcept;  // total returned by the decay thread so far
std::size_t trim_calls() noexcept;            // tm_trim/malloc_trim calls so far (trim.cpp)
std::size_t trim_released_bytes() noexcept;   // bytes given back by trim calls and decay

}  // namespace trimalloc
