// The hardened build's quarantine: a freed block is held, per thread, for the next 256 frees
// (or 1 MiB, whichever comes first) before it can be reused, so a use after free is less likely
// to reach a block that already belongs to someone else. While held, a small block is zeroed and
// marked (a second free is a double free; a write shows at its next allocation) and a large block
// is "quarantined" in the registry.
#pragma once

namespace trimalloc {

class ThreadHeap;

// free() in the hardened build: checks `p` (aborts naming `call` on misuse), takes it into this
// thread's quarantine and frees for real whatever leaves the quarantine to make room.
void quarantine_free(void* p, const char* call) noexcept;
// Frees everything this thread holds (trim, a malloc that found no memory).
void quarantine_flush() noexcept;
// The same at thread exit (g_before_thread_exit): the heap also forgets the quarantine.
void quarantine_flush_at_thread_exit() noexcept;
// As the visitor of `heap` (g_on_visited_heap, arenas/trim.h): frees everything its thread's
// quarantine holds. The owner changes its quarantine only inside enter()/leave(), so a visit
// never meets it half changed.
void quarantine_empty_visited(ThreadHeap* heap) noexcept;

}  // namespace trimalloc
