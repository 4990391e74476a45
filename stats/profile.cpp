// Allocation-site sampling and snapshots (tracemalloc for any program).
//
// Sampling is a Poisson process on allocated bytes with mean `rate`: each thread counts down an
// exponentially distributed number of bytes, and the allocation that crosses zero is sampled.
// An allocation of s bytes is therefore sampled with probability p(s) = 1 - exp(-s / rate), and
// each sample carries the weights 1/p (allocations) and s/p (bytes), which makes the per-site sums
// unbiased estimates of the live count and bytes (Horvitz-Thompson). docs/stats.md gives the error.
//
// A sampled small block is served by the large allocator (jemalloc), so its free arrives on the
// large path, where the check for "is this a sample" costs nothing when no sample is live. Call
// stacks come from libunwind's unw_backtrace, loaded with dlopen when sampling is first turned on;
// it reads .eh_frame, so no frame pointers are needed. While a thread records a sample it sets a
// guard, so an allocation made by the unwinder itself is served without sampling.
//
// Tables (samples by address, distinct stacks, the snapshot) live in mmap'd memory, never in
// memory from malloc.
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "heap.h"
#include "internal.h"
#include "large.h"
#include "lock.h"
#include "profile_hooks.h"
#include "trimalloc/trimalloc.h"

namespace trimalloc {

namespace {

constexpr std::int64_t kRecheckBytes = std::int64_t{16} << 20;
constexpr unsigned kMaxDepth = 48;
constexpr std::size_t kSampleSlots = std::size_t{1} << 17;  // open addressing, load <= 1/2
constexpr std::size_t kStackSlots = std::size_t{1} << 14;

struct Sample {
  std::uintptr_t ptr;  // 0 = empty slot
  std::uint32_t stack;
  std::uint32_t block;  // block size a small request would have had; 0 for a large one
  std::uint64_t size;   // requested bytes
  double inv_p;         // 1 / probability of having been sampled
};
struct Stack {
  std::uint64_t hash;  // 0 = empty slot
  std::uint32_t depth;
  std::uint32_t unused;
  std::uintptr_t pc[kMaxDepth];
};
struct SiteTotal {
  std::uint32_t stack;
  std::uint32_t samples;
  double count;
  double bytes;
};

std::atomic<std::size_t> g_rate{0};
std::atomic<unsigned> g_generation{1};
SpinLock g_lock;  // the tables below
Sample* g_samples = nullptr;
Stack* g_stacks = nullptr;
std::size_t g_stack_count = 0;
std::size_t g_dropped = 0;
SiteTotal* g_snapshot = nullptr;  // kStackSlots entries
std::size_t g_snapshot_sites = 0;
bool g_snapshot_taken = false;
double* g_agg = nullptr;  // scratch for take(): count, bytes, samples per stack slot
SpinLock g_setup_lock;

using BacktraceFn = int (*)(void**, int);
std::atomic<BacktraceFn> g_backtrace{nullptr};

__thread unsigned tl_generation __attribute__((tls_model("initial-exec"))) = 0;
__thread bool tl_in_prof __attribute__((tls_model("initial-exec"))) = false;
__thread std::uint64_t tl_rng __attribute__((tls_model("initial-exec"))) = 0;

void* map_zeroed(std::size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

double uniform01() {
  if (tl_rng == 0) {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    tl_rng = (reinterpret_cast<std::uintptr_t>(&tl_rng) * 0x9e3779b97f4a7c15u) ^
             static_cast<std::uint64_t>(ts.tv_nsec) ^
             (static_cast<std::uint64_t>(ts.tv_sec) << 32) ^ 1;
  }
  tl_rng ^= tl_rng << 13;
  tl_rng ^= tl_rng >> 7;
  tl_rng ^= tl_rng << 17;
  return (static_cast<double>(tl_rng >> 11) + 0.5) * (1.0 / 9007199254740992.0);  // (0, 1)
}

std::int64_t draw_interval(std::size_t rate) {
  double v = -std::log(uniform01()) * static_cast<double>(rate);
  if (v > 4.0e18) v = 4.0e18;
  return static_cast<std::int64_t>(v) + 1;
}

std::uint64_t hash_ptr(std::uintptr_t p) {
  std::uint64_t h = p * 0x9e3779b97f4a7c15u;
  return h ^ (h >> 29);
}

// --- tables (g_lock held) ---

std::uint32_t intern_stack(const std::uintptr_t* pc, unsigned depth) {
  std::uint64_t h = 0xcbf29ce484222325u ^ depth;
  for (unsigned i = 0; i < depth; ++i) h = (h ^ pc[i]) * 0x100000001b3u;
  if (h == 0) h = 1;
  for (std::size_t i = h & (kStackSlots - 1), probes = 0; probes < kStackSlots;
       i = (i + 1) & (kStackSlots - 1), ++probes) {
    Stack& s = g_stacks[i];
    if (s.hash == 0) {
      if (g_stack_count >= kStackSlots * 3 / 4) return UINT32_MAX;
      s.hash = h;
      s.depth = depth;
      std::memcpy(s.pc, pc, depth * sizeof *pc);
      ++g_stack_count;
      return static_cast<std::uint32_t>(i);
    }
    if (s.hash == h && s.depth == depth && std::memcmp(s.pc, pc, depth * sizeof *pc) == 0)
      return static_cast<std::uint32_t>(i);
  }
  return UINT32_MAX;
}

bool insert_sample(const Sample& sample) {
  std::size_t live = g_sampled_live.load(std::memory_order_relaxed);
  if (live >= kSampleSlots / 2) return false;
  for (std::size_t i = hash_ptr(sample.ptr) & (kSampleSlots - 1);;
       i = (i + 1) & (kSampleSlots - 1)) {
    if (g_samples[i].ptr == 0 || g_samples[i].ptr == sample.ptr) {
      if (g_samples[i].ptr == 0) g_sampled_live.store(live + 1, std::memory_order_relaxed);
      g_samples[i] = sample;
      return true;
    }
  }
}

std::size_t find_sample(std::uintptr_t p) {
  for (std::size_t i = hash_ptr(p) & (kSampleSlots - 1);; i = (i + 1) & (kSampleSlots - 1)) {
    if (g_samples[i].ptr == p) return i;
    if (g_samples[i].ptr == 0) return SIZE_MAX;
  }
}

void erase_sample(std::size_t i) {
  // Backward-shift deletion keeps every probe sequence unbroken without tombstones.
  std::size_t hole = i;
  for (std::size_t j = (i + 1) & (kSampleSlots - 1); g_samples[j].ptr != 0;
       j = (j + 1) & (kSampleSlots - 1)) {
    std::size_t home = hash_ptr(g_samples[j].ptr) & (kSampleSlots - 1);
    // Move j into the hole if its home is not cyclically within (hole, j].
    bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
    if (!stays) {
      g_samples[hole] = g_samples[j];
      hole = j;
    }
  }
  g_samples[hole] = Sample{};
  g_sampled_live.fetch_sub(1, std::memory_order_relaxed);
}

bool ensure_tables() {
  LockGuard guard(g_setup_lock);
  if (g_samples) return true;
  auto* samples = static_cast<Sample*>(map_zeroed(kSampleSlots * sizeof(Sample)));
  auto* stacks = static_cast<Stack*>(map_zeroed(kStackSlots * sizeof(Stack)));
  auto* snapshot = static_cast<SiteTotal*>(map_zeroed(kStackSlots * sizeof(SiteTotal)));
  auto* agg = static_cast<double*>(map_zeroed(kStackSlots * 3 * sizeof(double)));
  if (!samples || !stacks || !snapshot || !agg) return false;
  g_stacks = stacks;
  g_snapshot = snapshot;
  g_agg = agg;
  LockGuard tables(g_lock);
  g_samples = samples;
  return true;
}

bool load_unwinder() {
  if (g_backtrace.load(std::memory_order_acquire)) return true;
  void* lib = dlopen("libunwind.so.8", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    std::fprintf(
        stderr,
        "trimalloc: allocation sampling needs libunwind.so.8 (apt-get install libunwind8): %s\n",
        dlerror());
    return false;
  }
  auto fn = reinterpret_cast<BacktraceFn>(dlsym(lib, "unw_backtrace"));
  if (fn == nullptr) {
    std::fprintf(stderr, "trimalloc: libunwind.so.8 has no unw_backtrace\n");
    return false;
  }
  g_backtrace.store(fn, std::memory_order_release);
  return true;
}

// Records `p` (size bytes requested, `block` bytes if it is a small request, sampled at `rate`)
// with the current call stack.
void record(void* p, std::size_t size, std::size_t block, std::size_t rate) {
  std::uintptr_t pc[kMaxDepth + 2];
  int depth = 0;
  if (BacktraceFn bt = g_backtrace.load(std::memory_order_acquire))
    depth = bt(reinterpret_cast<void**>(pc), static_cast<int>(kMaxDepth + 2));
  // Frame 0 is this function; frame 1 the hook that called it.
  unsigned skip = depth > 2 ? 2 : static_cast<unsigned>(depth);
  double p_sampled = -std::expm1(-static_cast<double>(size) / static_cast<double>(rate));
  Sample s{reinterpret_cast<std::uintptr_t>(p), 0, static_cast<std::uint32_t>(block), size,
           p_sampled > 0 ? 1.0 / p_sampled : 1.0};
  LockGuard guard(g_lock);
  if (g_samples == nullptr) return;
  s.stack = intern_stack(pc + skip, static_cast<unsigned>(depth) - skip);
  if (s.stack == UINT32_MAX || !insert_sample(s)) ++g_dropped;
}

// The countdown crossed zero. Returns true if this allocation is to be sampled at *rate_out.
bool should_sample(std::size_t* rate_out) {
  std::size_t rate = g_rate.load(std::memory_order_relaxed);
  unsigned gen = g_generation.load(std::memory_order_relaxed);
  if (rate == 0 || tl_in_prof) {
    if (rate == 0)
      tl_thread.sample_countdown = kRecheckBytes;
    else
      tl_thread.sample_countdown = draw_interval(rate);
    return false;
  }
  if (tl_generation != gen) {  // sampling (re)started since this thread last looked: arm only
    tl_generation = gen;
    tl_thread.sample_countdown = draw_interval(rate);
    return false;
  }
  // Several sample points may fall inside one allocation; it is sampled once either way.
  while (tl_thread.sample_countdown < 0) tl_thread.sample_countdown += draw_interval(rate);
  *rate_out = rate;
  return true;
}

inline std::size_t natural_alignment(std::size_t size) {
  std::size_t a = size & (~size + 1);  // lowest set bit: the alignment pools give this class
  return a > kSmallMax ? kSmallMax : a;
}

}  // namespace

void* prof_sample_small(unsigned cls, std::size_t size) noexcept {
  std::size_t rate;
  if (!should_sample(&rate)) return tl_thread.heap->alloc(cls);
  // Served from the large allocator with the class's size and alignment (realloc and
  // malloc_usable_size see the same block as unsampled); recorded with the requested size, the
  // bytes the countdown counted, so the weights stay unbiased.
  std::size_t block = class_block_size(cls);
  tl_in_prof = true;
  void* p = large_alloc(block, natural_alignment(block), false);
  if (p != nullptr) record(p, size, block, rate);
  tl_in_prof = false;
  return p != nullptr ? p : tl_thread.heap->alloc(cls);
}

void prof_sample_large(void* p, std::size_t size) noexcept {
  std::size_t rate;
  if (p == nullptr || !should_sample(&rate)) return;
  tl_in_prof = true;
  record(p, size, 0, rate);
  tl_in_prof = false;
}

void prof_forget(const void* p) noexcept {
  if (g_sampled_live.load(std::memory_order_relaxed) == 0) return;
  LockGuard guard(g_lock);
  if (g_samples == nullptr) return;
  std::size_t i = find_sample(reinterpret_cast<std::uintptr_t>(p));
  if (i != SIZE_MAX) erase_sample(i);
}

bool prof_is_sampled(const void* p) noexcept {
  if (g_sampled_live.load(std::memory_order_relaxed) == 0) return false;
  LockGuard guard(g_lock);
  return g_samples != nullptr && find_sample(reinterpret_cast<std::uintptr_t>(p)) != SIZE_MAX;
}

namespace stats {

std::size_t profiler_meta_bytes() noexcept {
  if (g_samples == nullptr) return 0;
  // Touched table memory, roughly: pages reached by the entries in use (upper bound: whole tables
  // once they fill). Sample slots are spread by hashing, so their table is counted whole.
  LockGuard guard(g_lock);
  std::size_t samples =
      g_sampled_live.load(std::memory_order_relaxed) ? kSampleSlots * sizeof(Sample) : 0;
  std::size_t stacks = g_stack_count ? kStackSlots * sizeof(Stack) : 0;
  std::size_t snapshot =
      g_snapshot_taken ? kStackSlots * (sizeof(SiteTotal) + 3 * sizeof(double)) : 0;
  return samples + stacks + snapshot;
}

std::size_t profiler_live_samples() noexcept {
  return g_sampled_live.load(std::memory_order_relaxed);
}

// The rounding of the live small blocks that were NOT sampled (the sampled ones are jemalloc's
// blocks and not in small_live). A live small request i, rounded up by r_i bytes and sampled with
// probability p_i, contributes I_i * r_i * (1/p_i - 1), where I_i says whether it was sampled.
// The error against the true sum of (1 - I_i) * r_i is sum r_i * (I_i / p_i - 1): the
// Horvitz-Thompson error, zero on average, with variance sum r_i^2 (1 - p_i) / p_i, estimated
// without bias by summing I_i * r_i^2 * (1 - p_i) / p_i^2 over the samples.
RoundingEstimate profiler_small_rounding() noexcept {
  RoundingEstimate e;
  if (g_rate.load(std::memory_order_relaxed) == 0) return e;
  e.known = true;
  if (g_sampled_live.load(std::memory_order_relaxed) == 0) return e;
  LockGuard guard(g_lock);
  if (g_samples == nullptr) return e;
  for (std::size_t i = 0; i < kSampleSlots; ++i) {
    const Sample& s = g_samples[i];
    if (s.ptr == 0 || s.block == 0) continue;
    ++e.samples;
    double r = static_cast<double>(s.block) - static_cast<double>(s.size);
    double q = 1.0 - 1.0 / s.inv_p;  // 1 - p
    e.bytes += r * (s.inv_p - 1.0);
    e.variance += r * r * q * s.inv_p * s.inv_p;
  }
  return e;
}

namespace {

// The allocator calls the sampler through g_sampler (allocator/sampling.h), so that it does not
// depend on stats/; register before any TRIMALLOC_PROFILE handling.
__attribute__((constructor(150))) void register_sampler() {
  g_sampler = {prof_sample_small, prof_sample_large, prof_forget, prof_is_sampled};
}

// TRIMALLOC_PROFILE=<bytes>[k|m|g]: sampling from start-up.
__attribute__((constructor(201))) void read_profile_env() {
  const char* v = std::getenv("TRIMALLOC_PROFILE");
  if (v == nullptr || *v == '\0') return;
  char* end = nullptr;
  errno = 0;
  unsigned long long n = std::strtoull(v, &end, 10);
  unsigned long long mult = 1;
  if (end && (*end == 'k' || *end == 'K'))
    mult = 1ull << 10, ++end;
  else if (end && (*end == 'm' || *end == 'M'))
    mult = 1ull << 20, ++end;
  else if (end && (*end == 'g' || *end == 'G'))
    mult = 1ull << 30, ++end;
  if (errno != 0 || end == v || *end != '\0' || v[0] == '-' || n > (1ull << 40) / mult) {
    report_bad_env("TRIMALLOC_PROFILE", v, "a byte count such as 524288 or 512k (0 = off)");
    return;
  }
  tm_profile_set_rate(static_cast<std::size_t>(n * mult));
}

}  // namespace
}  // namespace stats
}  // namespace trimalloc

using namespace trimalloc;

extern "C" TM_API size_t tm_profile_rate(void) {
  return g_rate.load(std::memory_order_relaxed);
}

extern "C" TM_API size_t tm_profile_set_rate(size_t rate) {
  if (rate != 0 && (!load_unwinder() || !ensure_tables()))
    return g_rate.load(std::memory_order_relaxed);
  std::size_t old = g_rate.exchange(rate, std::memory_order_relaxed);
  g_generation.fetch_add(1, std::memory_order_relaxed);
  tl_thread.sample_countdown = 0;  // this thread re-arms at its next allocation
  if (rate != 0) {
    // Is the allocator calling the hooks? The countdown moves if it is.
    static std::atomic<bool> warned{false};
    std::int64_t before = tl_thread.sample_countdown = kRecheckBytes;
    tm_free(tm_malloc(16));
    if (tl_thread.sample_countdown == before && !warned.exchange(true))
      std::fprintf(stderr,
                   "trimalloc: allocation sampling is not wired into this build's allocation "
                   "path; no samples will be taken (see docs/stats.md)\n");
    tl_thread.sample_countdown = 0;
  }
  return old;
}

extern "C" TM_API long tm_snapshot_take(void) {
  if (!ensure_tables()) {
    errno = ENOMEM;
    return -1;
  }
  LockGuard guard(g_lock);
  double* count = g_agg;
  double* bytes = g_agg + kStackSlots;
  double* samples = g_agg + 2 * kStackSlots;
  std::memset(g_agg, 0, kStackSlots * 3 * sizeof(double));
  for (std::size_t i = 0; i < kSampleSlots; ++i) {
    const Sample& s = g_samples[i];
    if (s.ptr == 0) continue;
    count[s.stack] += s.inv_p;
    bytes[s.stack] += s.inv_p * static_cast<double>(s.size);
    samples[s.stack] += 1;
  }
  std::size_t n = 0;
  for (std::size_t i = 0; i < kStackSlots; ++i)
    if (samples[i] > 0)
      g_snapshot[n++] = SiteTotal{static_cast<std::uint32_t>(i),
                                  static_cast<std::uint32_t>(samples[i]), count[i], bytes[i]};
  g_snapshot_sites = n;
  g_snapshot_taken = true;
  return static_cast<long>(n);
}

extern "C" TM_API int tm_snapshot_write(const char* path) {
  if (path == nullptr) {
    std::fprintf(stderr, "trimalloc: tm_snapshot_write: NULL path\n");
    errno = EINVAL;
    return -1;
  }
  if (!g_snapshot_taken && tm_snapshot_take() < 0) return -1;
  FILE* f = std::fopen(path, "w");
  if (f == nullptr) {
    int err = errno;
    std::fprintf(stderr, "trimalloc: tm_snapshot_write: cannot write '%s': %s\n", path,
                 std::strerror(err));
    errno = err;
    return -1;
  }
  std::fprintf(f, "# trimalloc-snapshot 1\nrate %zu\npid %ld\n", tm_profile_rate(),
               static_cast<long>(getpid()));
  // Executable mappings, so the tool can turn addresses into file offsets.
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    char buf[8192], line[4096];
    std::size_t len = 0;
    for (;;) {
      ssize_t r = read(fd, buf, sizeof buf);
      if (r <= 0) break;
      for (ssize_t i = 0; i < r; ++i) {
        char c = buf[i];
        if (c != '\n') {
          if (len + 1 < sizeof line) line[len++] = c;
          continue;
        }
        line[len] = '\0';
        unsigned long start, end, offset;
        char perms[8];
        int path_at = 0;
        if (std::sscanf(line, "%lx-%lx %7s %lx %*s %*s %n", &start, &end, perms, &offset,
                        &path_at) == 4 &&
            perms[2] == 'x' && path_at > 0 && line[path_at] == '/')
          std::fprintf(f, "map %lx %lx %lx %s\n", start, end, offset, line + path_at);
        len = 0;
      }
    }
    close(fd);
  }
  // Copy out under the lock into the file's buffer would allocate under the lock (stdio grows its
  // buffer through malloc): copy each site's frames to the stack first.
  std::size_t sites;
  {
    LockGuard guard(g_lock);
    sites = g_snapshot_sites;
  }
  std::size_t dropped = g_dropped;
  std::fprintf(f, "dropped %zu\n", dropped);
  for (std::size_t i = 0; i < sites; ++i) {
    SiteTotal t;
    Stack st;
    {
      LockGuard guard(g_lock);
      if (i >= g_snapshot_sites) break;
      t = g_snapshot[i];
      st.depth = g_stacks[t.stack].depth;
      std::memcpy(st.pc, g_stacks[t.stack].pc, st.depth * sizeof st.pc[0]);
    }
    std::fprintf(f, "site %.0f %.1f %u", t.bytes, t.count, t.samples);
    for (unsigned d = 0; d < st.depth; ++d)
      std::fprintf(f, " %lx", static_cast<unsigned long>(st.pc[d]));
    std::fputc('\n', f);
  }
  if (std::fclose(f) != 0) {
    int err = errno;
    std::fprintf(stderr, "trimalloc: tm_snapshot_write: error writing '%s': %s\n", path,
                 std::strerror(err));
    errno = err;
    return -1;
  }
  return 0;
}
