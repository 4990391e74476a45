#include "decay.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include <atomic>
#include <cstdint>
#include <cstdio>

#include "alloc.h"
#if TRIMALLOC_VALGRIND
#include <valgrind/valgrind.h>
#endif
#include "arena.h"
#include "heap.h"
#include "large.h"
#include "options.h"
#include "quarantine.h"
#include "trim.h"
#include "visit.h"

namespace trimalloc {
std::atomic<bool> g_decay_started{false};
std::atomic<bool> g_decay_sleeping{false};
namespace {
std::atomic<bool> g_constructed{false};  // pthread_create is safe only after start-up
std::atomic<std::uint32_t> g_wake_seq{0};
std::atomic<std::size_t> g_released{0};
std::atomic<std::uint64_t> g_last_inline_ms{0};
std::atomic<std::uint64_t> g_last_thread_exit_ms{0};
std::atomic<bool> g_in_fork_child{false};
// Held from pthread_create until the new thread runs its own code, and by the fork prepare
// handler: a fork never happens while the decay thread is half-born. Its start-up (glibc's
// pthread_getattr_np, a sanitizer's thread registration) allocates through whatever malloc
// the program has, and not every malloc locks itself across fork (GCC 12's ASan does not): a
// child forked in that window would inherit that malloc's lock held, and hang on first use.
pthread_mutex_t g_start_lock = PTHREAD_MUTEX_INITIALIZER;
std::atomic<std::uint32_t> g_thread_running{0};  // 1 once decay_main has begun
// A heap smaller than this never gets a decay thread (what it could return is not worth one).
constexpr std::size_t kHeapWorthAThread = 8 << 20;

void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t value, long timeout_ms) {
  timespec ts{timeout_ms / 1000, (timeout_ms % 1000) * 1000000};
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT_PRIVATE, value,
          timeout_ms < 0 ? nullptr : &ts, nullptr, 0);
}
void wake() {
  g_wake_seq.fetch_add(1, std::memory_order_release);
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&g_wake_seq), FUTEX_WAKE_PRIVATE, 1, nullptr,
          nullptr, 0);
}

// jemalloc's side: let its decay curve purge our arenas; bytes it purged.
std::size_t large_decay() {
  std::size_t before = large_dirty_bytes();
  if (before == 0) return 0;
  large_decay_step();
  std::size_t after = large_dirty_bytes();
  return before > after ? before - after : 0;
}

// One decay pass; true if something is left that will need another pass later.
bool decay_pass() {
  long long decay = g_options.decay_ms.load(std::memory_order_relaxed);
  // A raised purge-at-once threshold is work too: the thread must be awake to put it back.
  const bool raised = large_oversize_expire(false);
  if (decay < 0) return false;
  DecayResult r = decay_small(static_cast<std::uint64_t>(decay));
  std::size_t large = large_decay();
  g_released.fetch_add(r.released + large, std::memory_order_relaxed);
  return r.work_left || large_dirty_bytes() != 0 || raised;
}

// Live threads of the process: /proc/self/task entries whose state is not zombie or dead. (The
// stat "num_threads" field would count a main thread that called pthread_exit: it stays a
// zombie until the whole process ends.) 0 if unknown. This thread holds no allocator lock
// here, so opendir() may allocate.
long live_thread_count() {
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return 0;
  long live = 0;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    char path[300], buf[512];
    std::snprintf(path, sizeof path, "/proc/self/task/%s/stat", e->d_name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;  // exited meanwhile
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) continue;
    buf[n] = 0;
    const char* p = std::strrchr(buf, ')');  // the name may hold spaces and parentheses
    if (p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X') ++live;
  }
  closedir(dir);
  return live;
}

// The decay thread must never be what keeps a process alive: when every other thread has
// exited (main called pthread_exit, or a fork child's thread finished), end the process the
// way glibc does when its last thread exits.
void exit_if_last_thread() {
  if (live_thread_count() == 1) exit(0);
}

void* decay_main(void*) {
  // Named before the starter is let go: whoever looks for the thread by name (tests, ps -L,
  // /proc/<pid>/task/*/comm) right after the start must find it.
  pthread_setname_np(pthread_self(), "trimalloc-decay");
  g_thread_running.store(1, std::memory_order_release);
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&g_thread_running), FUTEX_WAKE_PRIVATE, 1,
          nullptr, nullptr, 0);
  for (;;) {
    std::uint32_t seq = g_wake_seq.load(std::memory_order_acquire);
#if TRIMALLOC_VALGRIND
    vg_quiet_begin();  // visits walk other threads' free lists (valgrind.cpp)
#endif
    bool more = decay_pass();
#if TRIMALLOC_VALGRIND
    vg_quiet_end();
#endif
    long long decay = g_options.decay_ms.load(std::memory_order_relaxed);
    // A thread exited lately: it still counts until its last destructor has run, so look again
    // shortly for a while.
    bool exits_pending = now_ms() - g_last_thread_exit_ms.load(std::memory_order_relaxed) < 2000;
    if (exits_pending) {
      exit_if_last_thread();
      // Hardened: what opendir() took and gave back waits in this thread's quarantine. No pass
      // empties the decay thread's own, and it never exits: let the blocks go now.
      if constexpr (kSecure) quarantine_flush();
    }
    if (exits_pending && !more) {
      futex_wait(&g_wake_seq, seq, 50);
    } else if (more) {
      long tick = decay > 40 ? static_cast<long>(decay / 4) : 10;
      futex_wait(&g_wake_seq, seq, tick);
    } else {
      // Nothing left to return: sleep until a free produces something (no periodic wake-ups
      // in an idle process).
      g_decay_sleeping.store(true, std::memory_order_seq_cst);
      // A free that ran after the pass but before the store above saw no sleeper and woke
      // nobody: look again, by the pass's own measure (it found both at zero), now that a free
      // would see one. The free path has no fence between its stores and its load of
      // g_decay_sleeping, so the membarrier puts one on every CPU running a thread of ours
      // (as for visits, heap.h): a free whose load came before it has its stores visible to
      // the look below, and one whose load comes after it sees the sleeper and wakes it.
      // (Without membarrier, visits_supported() false, a free whose stores are still in flight,
      // a few nanoseconds, can go unseen until the next free.)
      asymmetric_fence_heavy();
      // Only while decay is on: with decay_ms = -1 dirty memory stays, and the look would spin.
      bool freed_meanwhile = decay >= 0 && (dirty_small_bytes() != 0 || large_dirty_bytes() != 0 ||
                                            quarantine_worth_a_visit());
      if (!freed_meanwhile && g_wake_seq.load(std::memory_order_seq_cst) == seq)
        futex_wait(&g_wake_seq, seq, -1);
      g_decay_sleeping.store(false, std::memory_order_relaxed);
    }
  }
  return nullptr;
}

void start_thread() {
  if (!g_constructed.load(std::memory_order_acquire)) return;
#if defined(__SANITIZE_THREAD__)
  // TSan cannot start threads in the child of a multi-threaded fork (it dies instead).
  if (g_in_fork_child.load(std::memory_order_relaxed)) return;
#endif
#if TRIMALLOC_VALGRIND
  // Under valgrind a detached thread alive at exit is a leak report of its own (glibc's DTV for
  // its TLS is "possibly lost"), and returning memory early is not what valgrind runs are for.
  if (RUNNING_ON_VALGRIND) return;
#endif
  if (g_decay_started.exchange(true, std::memory_order_acq_rel)) return;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  // The thread must never take the program's signals.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t tid;
  pthread_mutex_lock(&g_start_lock);
  g_thread_running.store(0, std::memory_order_relaxed);
  int rc = pthread_create(&tid, &attr, decay_main, nullptr);
  if (rc == 0)
    while (g_thread_running.load(std::memory_order_acquire) == 0)
      futex_wait(&g_thread_running, 0, -1);
  pthread_mutex_unlock(&g_start_lock);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  pthread_attr_destroy(&attr);
  if (rc != 0) g_decay_started.store(false, std::memory_order_release);  // try again next time
}

// The thread is worth having once the heap is big enough that returning memory matters. It is
// started on an allocation slow path (never from free(): glibc frees TLS blocks while holding
// the stack-cache lock that pthread_create takes), and sleeps until a free gives it work.
// Small pools count by what they hold (in use, or free and maybe resident), not by the arenas'
// mappings: one block maps an 8 MiB arena.
bool heap_is_big() {
  return g_arenas.held_bytes() + large_mapped_since_init() >= kHeapWorthAThread;
}

// Runs at a malloc slow path when a start was requested (see trim.h for why not in free).
void on_maintenance() noexcept {
  g_maintenance_requested.store(false, std::memory_order_relaxed);
  if (large_oversize_wanted()) {
    // A big block kept for reuse must come back if nothing reuses it, also in a program that
    // then goes idle: only with a decay thread. A heap that shrinks back to nothing at each
    // free would otherwise never be "big" when this runs.
    if (g_options.decay_ms.load(std::memory_order_relaxed) > 0 &&
        g_options.background_thread.load(std::memory_order_relaxed))
      start_thread();
    large_oversize_apply(g_decay_started.load(std::memory_order_acquire));
  }
  if (g_options.decay_ms.load(std::memory_order_relaxed) < 0) return;
  if (g_options.background_thread.load(std::memory_order_relaxed)) {
    if (!g_decay_started.load(std::memory_order_relaxed) && heap_is_big()) start_thread();
    return;
  }
  // No thread allowed: decay from here, at most every decay/4 ms.
  std::uint64_t now = now_ms();
  long long decay = g_options.decay_ms.load(std::memory_order_relaxed);
  std::uint64_t last = g_last_inline_ms.load(std::memory_order_relaxed);
  if (now - last < static_cast<std::uint64_t>(decay / 4)) {
    g_maintenance_requested.store(true, std::memory_order_relaxed);
    return;
  }
  g_last_inline_ms.store(now, std::memory_order_relaxed);
  if (decay_pass()) g_maintenance_requested.store(true, std::memory_order_relaxed);
}

void on_dirty_pool() noexcept {
  decay_note_dirty_pool();
}

void on_thread_exit() noexcept {
  if (!g_decay_started.load(std::memory_order_relaxed)) return;
  g_last_thread_exit_ms.store(now_ms(), std::memory_order_relaxed);
  wake();
}

void before_fork() {
  pthread_mutex_lock(&g_start_lock);
  visit_lock();
}
void after_fork_parent() {
  visit_unlock();
  pthread_mutex_unlock(&g_start_lock);
}
void after_fork_child() {
  visit_reset_after_fork();
  pthread_mutex_init(&g_start_lock, nullptr);
  // The decay thread did not survive fork().
  g_decay_started.store(false, std::memory_order_relaxed);
  g_decay_sleeping.store(false, std::memory_order_relaxed);
  // Not from the request the parent may have left pending: most children exec or exit soon. The
  // child gets a decay thread if its own heap grows (a new arena or jemalloc region asks), like
  // any process - pre-fork servers' workers need one.
  g_maintenance_requested.store(false, std::memory_order_relaxed);
  g_in_fork_child.store(true, std::memory_order_relaxed);
}

// g_keep_empty_arenas: the thread will return them after the decay time; with decay off the
// program asked to keep free memory. With neither (a heap never big enough for a thread, or
// TRIMALLOC_BACKGROUND_THREAD=0) nothing would, so they go at once.
bool keep_empty_arenas() noexcept {
  return g_decay_started.load(std::memory_order_relaxed) ||
         g_options.decay_ms.load(std::memory_order_relaxed) < 0;
}
}  // namespace

void decay_init() noexcept {
  g_on_dirty_pool = on_dirty_pool;
  g_on_heap_growth = decay_note_heap_growth;
  g_keep_empty_arenas = keep_empty_arenas;
  g_after_thread_exit = on_thread_exit;
  g_on_maintenance = on_maintenance;
  decay_apply_to_large();
  pthread_atfork(before_fork, after_fork_parent, after_fork_child);
  g_constructed.store(true, std::memory_order_release);
}

// From free paths: wake the thread if it sleeps. (Starting it is left to allocation paths.)
void decay_request() noexcept {
  if (g_decay_sleeping.load(std::memory_order_relaxed))
    wake();
  else if (!g_decay_started.load(std::memory_order_relaxed) &&
           !g_options.background_thread.load(std::memory_order_relaxed))
    g_maintenance_requested.store(true, std::memory_order_relaxed);  // inline decay
}

void decay_apply_to_large() noexcept {
  // jemalloc decays our arenas on the same clock. Its -1 also means "never", and then it
  // purges no free extent at once either, whatever the arena's oversize threshold says.
  if (!large_init()) return;
  ssize_t ms = static_cast<ssize_t>(g_options.decay_ms.load(std::memory_order_relaxed));
  // A block kept for reuse past the threshold relies on decay to come back: not with 0 or -1.
  if (ms <= 0) large_oversize_expire(true);
  for (unsigned index : large_arena_indices()) {
    char name[64];
    std::snprintf(name, sizeof name, "arena.%u.dirty_decay_ms", index);
    large_mallctl(name, nullptr, nullptr, &ms, sizeof ms);
  }
}

void decay_note_heap_growth() noexcept {
  if (!g_decay_started.load(std::memory_order_relaxed))
    g_maintenance_requested.store(true, std::memory_order_relaxed);
}

void decay_note_dirty_pool() noexcept {
  long long decay = g_options.decay_ms.load(std::memory_order_relaxed);
  std::size_t cap = static_cast<std::size_t>(g_options.max_cached.load(std::memory_order_relaxed));
  // Over the cap, purge down to half of it, so that the next few pools freed do not each
  // trigger another purge.
  if (decay == 0 || dirty_small_bytes() > cap)
    g_released.fetch_add(g_arenas.purge(UINT64_MAX, decay == 0 ? 0 : cap / 2));
  else if (decay > 0)
    decay_request();
}

bool decay_thread_running() noexcept {
  return g_decay_started.load(std::memory_order_acquire);
}
std::size_t decay_released_bytes() noexcept {
  return g_released.load(std::memory_order_relaxed);
}

}  // namespace trimalloc
