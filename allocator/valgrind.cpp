// Valgrind support (CMake -DTRIMALLOC_VALGRIND=ON; this file is compiled only then, and the
// default build's entry points do not mention it, see alloc.h).
//
// Valgrind replaces malloc only in libc's soname, so a program that links libtrimalloc.so (or
// the static engine) runs trimalloc's own allocator under memcheck. Without help memcheck sees
// pools and jemalloc extents as plain mmap'd memory: every byte defined and addressable, no
// blocks, no leaks. This layer tells it what the blocks are, with client requests that cost a
// few instructions when the program is not running under valgrind:
//
// - Every block is announced with VALGRIND_MALLOCLIKE_BLOCK at the public entry point (so the
//   allocation stack starts in the program, not deep in the engine) and retired with
//   VALGRIND_FREELIKE_BLOCK before the engine sees the free (after it, another thread could be
//   handed the same address while memcheck still thought it live). A realloc that stays in its
//   block uses VALGRIND_RESIZEINPLACE_BLOCK.
// - Redzones: each request is served from a larger engine block and everything around the
//   requested bytes is made NOACCESS, so an overrun of up to 16 bytes past any block (small or
//   large, whatever its size class, whether the next block is live or was never handed out) is
//   an invalid access. Small blocks (the program's pointer is the engine's): at least 16 bytes
//   of slack after the request, whose last word holds the requested size. Large blocks: the
//   program's pointer is `offset` (16, or the alignment) bytes into jemalloc's block, and the
//   16 bytes before it hold {offset, requested size}; at least 16 bytes of slack follow. The
//   offset is not only an underrun redzone: jemalloc's metadata (extent records, tcache stacks)
//   holds the address of every block it handed out, and memcheck's leak check scans that
//   metadata, so a leaked large block whose start was jemalloc's would always be "still
//   reachable" - never "definitely lost".
//   malloc_usable_size() returns the requested size: memcheck only allows the requested bytes.
// - Delayed reuse: the engine hands a freed block out again at once (often to the very next
//   malloc of its class, stdio's buffer for instance), and from then on a use after free is an
//   access to a live block that memcheck cannot tell from a correct one. Like memcheck's own
//   malloc (--freelist-vol), freed blocks wait in a FIFO of kQuarantineSlots blocks (at most
//   kQuarantineBytes, blocks over kQuarantineMaxBlock skip it) before the engine gets them. A
//   block waiting there has its stored size replaced by kQuarantined, so a second free of it is
//   reported at once. Lock-free (one atomic exchange per free), so fork cannot leave it locked.
// - The allocator's own accesses to freed blocks (free-list links and marks live in the first 16
//   bytes of a free small block, which memcheck now considers NOACCESS) happen only inside the
//   engine. Rather than bracket each of those accesses in arenas/ with MAKE_MEM_DEFINED /
//   NOACCESS pairs (a dozen sites on the fast paths, the pool carving, the remote lists, trim and
//   the visitors), each entry point turns memcheck's error reporting off for this thread while
//   it runs the engine (VALGRIND_DISABLE_ERROR_REPORTING nests). Memcheck treats a load from a
//   NOACCESS byte as defined and never changes shadow state on an invalid store, so the engine
//   computes exactly what it computes natively, and freed blocks stay NOACCESS for the program
//   (a use after free of any byte, links included, is reported). Threads that only ever run
//   allocator code (the decay thread) and the thread-exit clean-up run with reporting off.
// - MALLOCLIKE rather than VALGRIND_CREATE_MEMPOOL: a mempool needs an anchor per pool that
//   arenas/ would have to create, move between heaps and destroy as pools change class and
//   owner; memcheck reports leaks and invalid accesses of MALLOCLIKE blocks the same way.
#include <valgrind/memcheck.h>
#include <valgrind/valgrind.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "alloc.h"
#include "fatal.h"
#include "heap.h"
#include "large.h"
#include "os.h"

#if !TRIMALLOC_VALGRIND
#error "valgrind.cpp is built only with TRIMALLOC_VALGRIND=1"
#endif

namespace trimalloc {
namespace {
constexpr std::size_t kPad = 16;  // slack after every block
constexpr std::size_t kHeader = 16;
constexpr std::size_t kQuarantined = ~std::size_t{0};  // stored size of a block in the FIFO
constexpr unsigned kQuarantineSlots = 4096;
constexpr std::size_t kQuarantineBytes = std::size_t{32} << 20;
constexpr std::size_t kQuarantineMaxBlock = std::size_t{1} << 20;

std::atomic<void*> g_quarantine[kQuarantineSlots];
std::atomic<std::size_t> g_quarantine_next{0};
std::atomic<std::size_t> g_quarantine_bytes{0};

// RAII: memcheck errors off for this thread while the engine touches freed blocks.
struct Quiet {
  Quiet() noexcept { VALGRIND_DISABLE_ERROR_REPORTING; }
  ~Quiet() { VALGRIND_ENABLE_ERROR_REPORTING; }
  Quiet(const Quiet&) = delete;
  Quiet& operator=(const Quiet&) = delete;
};

// trimalloc's abort for misuse found here, with reporting back on (one Quiet deep): memcheck
// warns about a thread that exits with it off.
[[noreturn]] void die(const char* call, const char* problem, const void* q) noexcept {
  VALGRIND_ENABLE_ERROR_REPORTING;
  fatal(call, problem, q);
}

struct Header {  // just before a large block's program pointer
  std::size_t offset;
  std::size_t request;
};

// The engine's view of a program pointer. All of it runs under Quiet (headers and stored sizes
// are NOACCESS to the program).
struct Located {
  void* base;           // what the engine allocated (== q for small blocks)
  std::size_t usable;   // engine usable size of base
  std::size_t request;  // the program's size
  std::size_t offset;   // q - base
};

// Program pointer of a large block: {offset, request} in the 16 bytes before it. A pointer that
// is not one (foreign, interior) is handed to the engine unchanged, which reports it as it
// would without valgrind.
void* base_of(const void* q) noexcept {
  if (small_owns(q)) return const_cast<void*>(q);
  auto* c = static_cast<const char*>(q);
  if (!large_owns(q) || !large_owns(c - kHeader)) return const_cast<void*>(q);
  Header h;
  std::memcpy(&h, c - kHeader, sizeof h);
  bool plausible = h.offset >= kHeader && (h.offset & (h.offset - 1)) == 0 &&
                   (reinterpret_cast<std::uintptr_t>(q) & (h.offset - 1)) == 0 &&
                   large_owns(c - h.offset);
  return plausible ? const_cast<char*>(c - h.offset) : const_cast<void*>(q);
}

// Under Quiet. Aborts like the engine for a pointer that is not a block, and for a block that
// waits in the FIFO (freed already).
Located locate(const void* q, const char* call) noexcept {
  Located b;
  b.base = base_of(q);
  b.usable = raw_usable_size(b.base, call);  // aborts for what is not a block
  b.offset = static_cast<std::size_t>(static_cast<const char*>(q) - static_cast<char*>(b.base));
  if (b.offset == 0) {
    std::memcpy(&b.request, static_cast<const char*>(q) + b.usable - sizeof b.request,
                sizeof b.request);
  } else {
    Header h;
    std::memcpy(&h, static_cast<const char*>(q) - kHeader, sizeof h);
    b.request = h.request;
  }
  if (b.request == kQuarantined) die(call, "double free of", q);  // the engine's words
  return b;
}

void store_request(void* q, const Located& b) noexcept {
  if (b.offset == 0) {
    std::memcpy(static_cast<char*>(q) + b.usable - sizeof b.request, &b.request, sizeof b.request);
  } else {
    Header h{b.offset, b.request};
    std::memcpy(static_cast<char*>(q) - kHeader, &h, sizeof h);
  }
}

// Everything of the engine block but the request is NOACCESS.
void fence(void* q, const Located& b) noexcept {
  char* base = static_cast<char*>(b.base);
  VALGRIND_MAKE_MEM_NOACCESS(base, b.offset);
  VALGRIND_MAKE_MEM_NOACCESS(static_cast<char*>(q) + b.request, b.usable - b.offset - b.request);
}

void (*g_previous_after_exit)() noexcept = nullptr;
void quiet_thread() noexcept {
  VALGRIND_DISABLE_ERROR_REPORTING;
}
void thread_exit_done() noexcept {
  if (g_previous_after_exit) g_previous_after_exit();
  VALGRIND_ENABLE_ERROR_REPORTING;  // destructors that run after ours are the program's again
}
}  // namespace

void* vg_alloc(std::size_t size, std::size_t alignment, bool zero) noexcept {
  if (size > static_cast<std::size_t>(PTRDIFF_MAX) / 2) {  // the padding must not wrap
    errno = ENOMEM;
    return nullptr;
  }
  if (alignment == 0) alignment = 1;
  // The engine serves a small block exactly when the padded request has a class, so which
  // layout a block gets is known before the call. raw_alloc_aligned, not raw_malloc: the
  // heap profiler's sampling would serve some small requests from jemalloc without the header.
  std::size_t padded = size + kPad;
  bool small = aligned_class_of(padded, alignment) < kClassCount;
  std::size_t offset = small ? 0 : (alignment > kHeader ? alignment : kHeader);
  Located b;
  void* q;
  {
    Quiet quiet;
    b.base = raw_alloc_aligned(padded + offset, alignment, zero);
    if (b.base == nullptr && g_quarantine_bytes.load(std::memory_order_relaxed) != 0) {
      vg_flush();  // blocks waiting for reuse are free memory: use them before failing
      b.base = raw_alloc_aligned(padded + offset, alignment, zero);
    }
    if (b.base == nullptr) return nullptr;  // errno set by the engine
    b.usable = raw_usable_size(b.base, "malloc");
    b.offset = offset;
    b.request = size;
    q = static_cast<char*>(b.base) + offset;
    store_request(q, b);
  }
  VALGRIND_MALLOCLIKE_BLOCK(q, size, 0, zero);
  fence(q, b);
  return q;
}

namespace {
// Under Quiet: the engine frees a block that leaves the FIFO (its checks were made on entry).
void release(void* q) noexcept {
  void* base = base_of(q);
  g_quarantine_bytes.fetch_sub(raw_usable_size(base, "free"), std::memory_order_relaxed);
  raw_free(base, "free");
}

// Under Quiet, after FREELIKE and locate(): into the FIFO, or to the engine if too big.
void retire(void* q, Located& b, const char* call) noexcept {
  if (b.usable > kQuarantineMaxBlock ||
      g_quarantine_bytes.load(std::memory_order_relaxed) + b.usable > kQuarantineBytes)
    return raw_free(b.base, call);
  b.request = kQuarantined;
  store_request(q, b);
  g_quarantine_bytes.fetch_add(b.usable, std::memory_order_relaxed);
  std::size_t slot = g_quarantine_next.fetch_add(1, std::memory_order_relaxed) % kQuarantineSlots;
  if (void* out = g_quarantine[slot].exchange(q, std::memory_order_acq_rel)) release(out);
}
}  // namespace

void vg_free(void* q, const char* call) noexcept {
  if (q == nullptr) return;
  VALGRIND_FREELIKE_BLOCK(q, 0);  // reports "Invalid free()" itself for a bad pointer
  Quiet quiet;
  Located b = locate(q, call);  // aborts with trimalloc's message on misuse, as without valgrind
  retire(q, b, call);
}

void vg_free_sized(void* q, std::size_t size, std::size_t alignment, const char* call) noexcept {
  if (q == nullptr) return;
  VALGRIND_FREELIKE_BLOCK(q, 0);
  Quiet quiet;
  Located b = locate(q, call);
  // The engine's check (raw_free_sized in alloc.h), on the sizes the engine saw; the block then
  // leaves the FIFO through an unsized free.
  if (b.offset == 0) {
    unsigned cls =
        size <= kSmallMax ? aligned_class_of(size + kPad, alignment ? alignment : 1) : kClassCount;
    if (cls >= kClassCount || class_block_size(cls) != b.usable)
      die(call, "size does not match the allocation of", q);
  } else if (size + kPad + b.offset <= kSmallMax && alignment <= kSmallMax) {
    die(call, "size does not match the allocation of", q);
  }
  retire(q, b, call);
}

// Frees every block in the FIFO (tm_trim: they are free memory).
void vg_flush() noexcept {
  Quiet quiet;
  for (auto& slot : g_quarantine)
    if (void* q = slot.exchange(nullptr, std::memory_order_acq_rel)) release(q);
}

std::size_t vg_usable_size(const void* q, const char* call) noexcept {
  if (q == nullptr) return 0;
  Quiet quiet;
  return locate(q, call).request;
}

void* vg_realloc(void* q, std::size_t size, const char* call) noexcept {
  if (q == nullptr) return vg_alloc(size, 0, false);
  if (size > static_cast<std::size_t>(PTRDIFF_MAX) / 2) {
    errno = ENOMEM;
    return nullptr;
  }
  Located b;
  std::size_t old_size;
  bool in_place;
  {
    Quiet quiet;
    b = locate(q, call);
    old_size = b.request;
    std::size_t need = b.offset + size + kPad;
    // Stay in the block when the engine would: small blocks within their class; large blocks
    // when the new size still fits and does not leave more than half of it unused. (jemalloc's
    // own rallocx is not used: it copies the whole old usable size, redzones included.)
    in_place = b.offset == 0
                   ? need <= kSmallMax && class_block_size(size_class_of(need)) == b.usable
                   : need > kSmallMax && need <= b.usable && need > b.usable / 2;
    if (in_place) {
      b.request = size;
      store_request(q, b);
    }
  }
  if (in_place) {
    VALGRIND_RESIZEINPLACE_BLOCK(q, old_size, size, 0);
    fence(q, b);
    return q;
  }
  void* n = vg_alloc(size, 0, false);
  if (n == nullptr) return nullptr;  // the old block is untouched
  std::memcpy(n, q, old_size < size ? old_size : size);
  vg_free(q, call);
  return n;
}

// Called once at start-up (alloc.cpp), after decay_init() installed its thread-exit hook.
void vg_init() noexcept {
  // Valgrind 3.19 does not know process_madvise (syscall 440): it would warn at the first trim
  // and fail it; purge range by range with madvise instead, which it models.
  if (RUNNING_ON_VALGRIND) os::disable_batched_purge();
  // An exiting thread's clean-up collects remote frees and walks its pools' free lists.
  g_before_thread_exit = quiet_thread;
  g_previous_after_exit = g_after_thread_exit;
  g_after_thread_exit = thread_exit_done;
}
void vg_quiet_begin() noexcept {
  VALGRIND_DISABLE_ERROR_REPORTING;
}
void vg_quiet_end() noexcept {
  VALGRIND_ENABLE_ERROR_REPORTING;
}

}  // namespace trimalloc
