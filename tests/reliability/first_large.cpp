// The first large allocation of a process happens while every mmap fails. It may fail with
// ENOMEM, but it must not leave the large allocator degraded for the rest of the process: once
// mmap works again, large blocks must be trimalloc's (tm_owns; the arena map free() checks) and
// injected failures must reach them again. A program of its own: it needs a process in which
// nothing has allocated a large block yet. Exit 0 = as specified, 1 = degraded.
#include <trimalloc/trimalloc.h>

#include <cerrno>
#include <cstdio>

#include "os.h"

int main() {
  using trimalloc::os::inject_reserve_failures;
  int bad = 0;
  inject_reserve_failures(-1);
  errno = 0;
  void* p = tm_malloc(100000);
  int err = errno;
  inject_reserve_failures(0);
  std::printf("first tm_malloc(100000) while mmap fails: %p, errno %d, tm_owns %d\n", p, err,
              p ? tm_owns(p) : -1);
  if (p == nullptr && err != ENOMEM) bad = 1;
  if (p != nullptr && !tm_owns(p)) {
    std::printf("FAIL: that block is not trimalloc's\n");
    bad = 1;
  }
  tm_free(p);
  void* q = tm_malloc(100000);
  std::printf("then, with mmap working: %p, tm_owns %d\n", q, q ? tm_owns(q) : -1);
  if (q == nullptr || !tm_owns(q)) {
    std::printf(
        "FAIL: large blocks no longer come from trimalloc's arena (free() cannot check them)\n");
    bad = 1;
  }
  tm_free(q);
  inject_reserve_failures(-1);
  errno = 0;
  void* r = tm_malloc(std::size_t{64} << 20);
  err = errno;
  inject_reserve_failures(0);
  std::printf("fresh 64 MiB while mmap fails: %p, errno %d\n", r, err);
  if (r != nullptr || err != ENOMEM) {
    std::printf("FAIL: injected mmap failures no longer reach large blocks\n");
    bad = 1;
  }
  tm_free(r);
  std::printf("%s\n", bad ? "first_large: FAIL" : "first_large: OK");
  return bad;
}
