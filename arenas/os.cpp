#include "os.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

namespace trimalloc::os {
namespace {
std::atomic<std::size_t> g_reserved{0};
std::atomic<long> g_failures{0};

bool injected_failure() noexcept {
  long n = g_failures.load(std::memory_order_relaxed);
  while (n != 0) {
    if (n < 0) return true;
    if (g_failures.compare_exchange_weak(n, n - 1, std::memory_order_relaxed)) return true;
  }
  return false;
}
}  // namespace

std::size_t page_size() noexcept {
  // Not a function-local static: its initialisation guard is the C++ runtime's, and
  // libtrimalloc.so does not link the C++ runtime (see allocator/override_new.cpp).
  static std::atomic<std::size_t> size{0};
  std::size_t s = size.load(std::memory_order_relaxed);
  if (s == 0) {
    s = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    size.store(s, std::memory_order_relaxed);
  }
  return s;
}

namespace {
// With transparent huge pages set to "always" (the default of RHEL and some other distributions)
// the kernel backs a touched 2 MiB range of any anonymous mapping with a huge page, and its
// khugepaged thread later collapses any 2 MiB range in which a single 4 KiB page is still
// present (max_ptes_none 511) into a whole resident huge page. That undoes every release of
// free pages among live blocks, behind the allocator's back: trimalloc still counts the pages
// as released and never drops them again. In one run of `trimalloc_bench_rss frag99` with
// khugepaged scanning every 100 ms, RSS after tm_trim was 289 MiB instead of 53. So every
// mapping trimalloc makes opts out of huge pages, as all of them do under the "madvise"
// setting; a program that wants them for a big block can still madvise(MADV_HUGEPAGE) it.
// (EINVAL: a kernel without transparent huge pages, where there is nothing to opt out of.)
void no_huge_pages(void* p, std::size_t size) noexcept {
  const int saved = errno;
  madvise(p, size, MADV_NOHUGEPAGE);
  errno = saved;
}

// The slack of an over-mapped reservation (8 MiB for an 8 MiB arena) is address space for a
// moment only, but under an address-space limit that moment decides: python3 could not make
// its first arena under `ulimit -v 44000` with 36 MiB mapped. So when the over-mapping is
// refused, map just `size`: the kernel places it at the top of the highest gap that fits, so
// the aligned address at or below it is usually free too, and the mapping is made again there
// (MAP_FIXED_NOREPLACE: never over another mapping; a kernel older than 4.17 takes it as a
// hint, so the address is checked). nullptr if that does not work either.
void* map_aligned_exactly(std::size_t size, std::size_t alignment, int extra_flags,
                          int prot) noexcept {
  const int flags = MAP_PRIVATE | MAP_ANONYMOUS | extra_flags;
  void* first = mmap(nullptr, size, prot, flags, -1, 0);
  if (first == MAP_FAILED) return nullptr;
  const auto at = reinterpret_cast<std::uintptr_t>(first);
  if ((at & (alignment - 1)) == 0) return first;
  munmap(first, size);
  // An alignment beyond the address itself (a request aligned to 2^46, say) has no aligned
  // address below it: 0 is never one to ask for (TSan's mmap interceptor reports it as a bug).
  if ((at & ~(alignment - 1)) == 0) return nullptr;
  void* want = reinterpret_cast<void*>(at & ~(alignment - 1));
  void* again = mmap(want, size, prot, flags | MAP_FIXED_NOREPLACE, -1, 0);
  if (again == want) return again;
  if (again != MAP_FAILED) munmap(again, size);
  return nullptr;
}

void* map_aligned(std::size_t size, std::size_t alignment, int extra_flags, bool injectable = true,
                  int prot = PROT_READ | PROT_WRITE) noexcept {
  if (injectable && injected_failure()) {
    errno = ENOMEM;
    return nullptr;
  }
  // Over-map by `alignment` and cut both ends off: one mmap, two munmaps, no retry loop, and no
  // hint address that could collide with another mapping.
  std::size_t span = size + alignment;
  if (span < size) {
    errno = ENOMEM;
    return nullptr;
  }
  int saved = errno;
  void* raw = mmap(nullptr, span, prot, MAP_PRIVATE | MAP_ANONYMOUS | extra_flags, -1, 0);
  if (raw == MAP_FAILED) {
    raw = map_aligned_exactly(size, alignment, extra_flags, prot);
    if (raw == nullptr) {
      errno = ENOMEM;
      return nullptr;
    }
    errno = saved;
    no_huge_pages(raw, size);
    g_reserved.fetch_add(size, std::memory_order_relaxed);
    return raw;
  }
  errno = saved;
  auto base = reinterpret_cast<std::uintptr_t>(raw);
  std::uintptr_t aligned = (base + alignment - 1) & ~(alignment - 1);
  if (aligned > base) munmap(raw, aligned - base);
  std::uintptr_t end = aligned + size;
  if (base + span > end) munmap(reinterpret_cast<void*>(end), base + span - end);
  no_huge_pages(reinterpret_cast<void*>(aligned), size);
  g_reserved.fetch_add(size, std::memory_order_relaxed);
  return reinterpret_cast<void*>(aligned);
}
}  // namespace

// No MAP_NORESERVE: under the default heuristic overcommit it would skip the kernel's one check,
// that a single mapping is not larger than RAM plus swap, and a request no machine here could
// back (Python's bytearray(2**46)) would succeed, then get the process killed by the OOM killer
// as it is filled, where glibc's malloc returns NULL (MemoryError). Without it the kernel's
// policy decides, as for glibc, in all three overcommit modes.
void* reserve_aligned(std::size_t size, std::size_t alignment, bool injectable) noexcept {
  return map_aligned(size, alignment, 0, injectable);
}

// A table that spans the address space (the arena map's 128 MiB) but is written only where
// arenas lie: with MAP_NORESERVE it need not fit in the RAM a small machine has, and read-only
// it does not count against RLIMIT_DATA (the kernel counts private writable mappings), which a
// process limited to less than 128 MiB of data would otherwise exceed before its first block.
void* reserve_sparse(std::size_t size, std::size_t alignment) noexcept {
  return map_aligned(size, alignment, MAP_NORESERVE, true, PROT_READ);
}

// No MAP_NORESERVE, for the reason above: the kernel charges the pages when they are opened.
void* reserve_closed(std::size_t size, std::size_t alignment, bool injectable) noexcept {
  return map_aligned(size, alignment, 0, injectable, PROT_NONE);
}

bool make_writable(void* p, std::size_t size) noexcept {
  int saved = errno;
  if (mprotect(p, size, PROT_READ | PROT_WRITE) != 0) {
    errno = ENOMEM;
    return false;
  }
  errno = saved;
  return true;
}

namespace {
// vm.overcommit_memory: 0 (heuristic), 1 (always), 2 (never); -1 if unknown (no /proc).
int overcommit_mode() noexcept {
  int fd = open("/proc/sys/vm/overcommit_memory", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char c = 0;
  const ssize_t n = read(fd, &c, 1);
  close(fd);
  return n == 1 && c >= '0' && c <= '2' ? c - '0' : -1;
}
}  // namespace

bool could_ever_map(std::size_t bytes) noexcept {
  NoCancellation no_cancellation;  // open() and read() below are cancellation points
  const int saved = errno;
  bool possible = true;
  rlimit limit;
  if (getrlimit(RLIMIT_AS, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY &&
      bytes > limit.rlim_cur)
    possible = false;
  struct sysinfo info;
  if (possible && overcommit_mode() == 0 && sysinfo(&info) == 0) {
    const unsigned __int128 total =
        (static_cast<unsigned __int128>(info.totalram) + info.totalswap) * info.mem_unit;
    if (bytes > total) possible = false;
  }
  errno = saved;
  return possible;
}

void release(void* p, std::size_t size) noexcept {
  int saved = errno;
  munmap(p, size);
  errno = saved;
  g_reserved.fetch_sub(size, std::memory_order_relaxed);
}

bool purge(void* p, std::size_t size) noexcept {
  int saved = errno;
  bool ok = madvise(p, size, MADV_DONTNEED) == 0;
  errno = saved;
  return ok;
}

namespace {
// -1 unknown, 0 unsupported (ENOSYS, EINVAL, EBADF: old kernel or filter), 1 works.
std::atomic<int> g_process_madvise{-1};
constexpr int kPidfdSelfProcess = -10001;  // PIDFD_SELF_PROCESS, <linux/pidfd.h> (6.14)
constexpr std::size_t kIovBatch = 512;     // below IOV_MAX (1024)

void purge_each(const Range* ranges, std::size_t count) noexcept {
  for (std::size_t i = 0; i < count; ++i)
    madvise(reinterpret_cast<void*>(ranges[i].start), ranges[i].end - ranges[i].start,
            MADV_DONTNEED);
}
}  // namespace

void purge_ranges(const Range* ranges, std::size_t count) noexcept {
  int saved = errno;
  while (count > 0) {
    std::size_t n = count < kIovBatch ? count : kIovBatch;
    bool done = false;
    if (g_process_madvise.load(std::memory_order_relaxed) != 0) {
      iovec iov[kIovBatch];
      std::size_t bytes = 0;
      for (std::size_t i = 0; i < n; ++i) {
        iov[i].iov_base = reinterpret_cast<void*>(ranges[i].start);
        iov[i].iov_len = ranges[i].end - ranges[i].start;
        bytes += iov[i].iov_len;
      }
      long r = syscall(SYS_process_madvise, kPidfdSelfProcess, iov, n, MADV_DONTNEED, 0u);
      done = r >= 0 && static_cast<std::size_t>(r) == bytes;
      // A kernel without it says so at the first call; from then on, madvise range by range.
      if (r < 0 && g_process_madvise.load(std::memory_order_relaxed) == -1)
        g_process_madvise.store(0, std::memory_order_relaxed);
      else if (done)
        g_process_madvise.store(1, std::memory_order_relaxed);
    }
    // Not supported, or stopped part-way: madvise every range (again: dropping a dropped page
    // is harmless).
    if (!done) purge_each(ranges, n);
    ranges += n;
    count -= n;
  }
  errno = saved;
}

void disable_batched_purge() noexcept {
  g_process_madvise.store(0, std::memory_order_relaxed);
}

std::size_t reserved_bytes() noexcept {
  return g_reserved.load(std::memory_order_relaxed);
}

void inject_reserve_failures(long count) noexcept {
  g_failures.store(count, std::memory_order_relaxed);
}

}  // namespace trimalloc::os
