// RSS workloads: how much memory each allocator gives back, and when.
//
//   trimalloc_bench_rss docs   [--count N] [--idle S]   the documents' experiment: N small blocks,
//                                                        free all, idle, explicit release
//   trimalloc_bench_rss frag99 [--count N] [--idle S]   free 99% with scattered survivors; computes
//   the
//                                                        theoretical maximum releasable bytes
//   trimalloc_bench_rss frag90 [--count N]              free 90%, allocate the same volume again:
//                                                        how much does RSS grow (are holes reused)?
//   trimalloc_bench_rss grow   [--mib M]   [--idle S]   one buffer grown by realloc an eighth at
//                                                        a time (a Python list's rule) from 1 MiB
//                                                        to over M MiB (64): how many of the copies
//                                                        realloc leaves behind stay resident?
//   trimalloc_bench_rss busy   [--count N] [--idle S]   free 99% with scattered survivors, then
//                                                        keep allocating (a 20000-block working
//                                                        set of 16..255 B, replaced at random)
//                                                        for S seconds, never idle: does RSS fall?
//   trimalloc_bench_rss aging  [--count N] [--idle S]   6 rounds of: free a random half of the
//                                                        live blocks, allocate N/4 new ones (other
//                                                        sizes); then idle and release. Where new
//                                                        blocks go decides how many pools stay
//                                                        partly used: RSS over live-page bytes.
//
// Block sizes are uniform in [--min, --max] (default 16..256 for docs, 16..512 for frag*), drawn
// from a fixed seed so every allocator sees the same sequence. Output: JSON lines (see common.h).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common.h"

using namespace tmbench;

namespace {

struct Options {
  std::string mode;
  size_t count = 2'000'000;
  size_t min_size = 16, max_size = 0;
  double idle_s = 2.0;
  uint64_t seed = 1;
  size_t grow_mib = 64;
};

[[noreturn]] void usage(const char* msg) {
  fprintf(stderr,
          "trimalloc_bench_rss: %s\n"
          "usage: trimalloc_bench_rss docs|frag99|busy|frag90|aging|grow [--count N] [--min BYTES] "
          "[--max BYTES] [--idle SECONDS] [--seed N] [--mib M]\n",
          msg);
  exit(2);
}

Options parse(int argc, char** argv) {
  if (argc < 2) usage("missing mode");
  Options o;
  o.mode = argv[1];
  parse_numeric_options(argc, argv, 2, usage, [&](const std::string& a, double x) {
    if (a == "--count")
      o.count = size_t(x);
    else if (a == "--min")
      o.min_size = size_t(x);
    else if (a == "--max")
      o.max_size = size_t(x);
    else if (a == "--idle")
      o.idle_s = x;
    else if (a == "--seed")
      o.seed = uint64_t(x);
    else if (a == "--mib")
      o.grow_mib = size_t(x);
    else
      return false;
    return true;
  });
  if (o.mode != "docs" && o.mode != "frag99" && o.mode != "busy" && o.mode != "frag90" &&
      o.mode != "aging" && o.mode != "grow")
    usage(("unknown mode " + o.mode).c_str());
  if (o.mode == "grow" && o.grow_mib < 2) usage("need --mib >= 2");
  if (o.max_size == 0) o.max_size = o.mode == "docs" ? 256 : 512;
  if (o.count == 0 || o.min_size == 0 || o.min_size > o.max_size)
    usage("need count > 0 and 0 < min <= max");
  return o;
}

struct Heap {
  void** ptr;
  uint32_t* size;
  size_t count;
  size_t bytes = 0;
};

// Fills the heap with count blocks; the bookkeeping arrays were mapped (and counted) before.
void allocate_all(Heap& h, const Options& o, Rng& rng) {
  for (size_t i = 0; i < h.count; ++i) {
    size_t n = rng.range(o.min_size, o.max_size);
    char* p = static_cast<char*>(malloc(n));
    if (!p) {
      fprintf(stderr, "malloc(%zu) failed\n", n);
      exit(1);
    }
    memset(p, int(i), n);  // a program writes what it allocates: every page is really used
    h.ptr[i] = p;
    h.size[i] = uint32_t(n);
    h.bytes += n;
  }
}

// Bytes of the OS pages that hold at least one byte of a live block.
size_t live_page_bytes(const Heap& h) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  size_t n = 0;
  for (size_t i = 0; i < h.count; ++i)
    if (h.ptr[i]) n += 2;  // a block of <= a page spans at most 2 pages
  uintptr_t* pages = scratch_array<uintptr_t>(n + 1);
  size_t k = 0;
  for (size_t i = 0; i < h.count; ++i) {
    if (!h.ptr[i]) continue;
    uintptr_t a = uintptr_t(h.ptr[i]) / page, b = (uintptr_t(h.ptr[i]) + h.size[i] - 1) / page;
    for (uintptr_t pg = a; pg <= b && k < n; ++pg) pages[k++] = pg;
  }
  std::sort(pages, pages + k);
  size_t unique = size_t(std::unique(pages, pages + k) - pages);
  munmap(pages, (n + 1) * sizeof(uintptr_t));
  return unique * page;
}

void check_survivors(const Heap& h) {
  for (size_t i = 0; i < h.count; ++i) {
    if (!h.ptr[i]) continue;
    const unsigned char* p = static_cast<const unsigned char*>(h.ptr[i]);
    if (p[0] != (unsigned char)i || p[h.size[i] - 1] != (unsigned char)i) {
      fprintf(stderr, "survivor %zu corrupted\n", i);
      exit(1);
    }
  }
}

void free_all(Heap& h) {
  for (size_t i = 0; i < h.count; ++i) {
    free(h.ptr[i]);
    h.ptr[i] = nullptr;
  }
}

// Frees each block with probability (1 - keep); survivors are scattered over the whole heap.
size_t free_random(Heap& h, Rng& rng, double keep, size_t* freed_bytes) {
  size_t freed = 0, bytes = 0;
  const uint64_t threshold = uint64_t(keep * 1e6);
  for (size_t i = 0; i < h.count; ++i) {
    if (rng.next() % 1000000 < threshold) continue;
    bytes += h.size[i];
    free(h.ptr[i]);
    h.ptr[i] = nullptr;
    ++freed;
  }
  *freed_bytes = bytes;
  return freed;
}

// grow: each step allocates a bigger block, copies and frees the old one (or grows in place).
// Every copy left behind is smaller than every later request, so only giving it back keeps RSS
// near the buffer's size; the peak is the highest RSS seen after a step.
int run_grow(const Options& o, Result& r) {
  emit_event("start");
  const size_t baseline = rss_bytes();
  const double t0 = now_s();
  size_t n = size_t{1} << 20, peak = 0, steps = 0, moves = 0;
  auto* p = static_cast<char*>(malloc(n));
  if (p) memset(p, 1, n);
  while (p && n < (o.grow_mib << 20)) {
    size_t m = n + n / 8;
    auto* q = static_cast<char*>(realloc(p, m));
    if (!q) break;
    moves += q != p;  // a copy, unless the allocator moved the pages (glibc's mremap)
    ++steps;
    memset(q + n, 2, m - n);
    p = q;
    n = m;
    peak = std::max(peak, rss_bytes());
  }
  if (!p || n < (o.grow_mib << 20)) {
    fprintf(stderr, "realloc to %zu bytes failed\n", n + n / 8);
    return 1;
  }
  const double t1 = now_s();
  emit_event("grown");
  record_ledger(r, "peak");
  r.u64("rss_baseline", baseline).u64("rss_peak", peak).u64("bytes_requested", n);
  r.num("alloc_s", t1 - t0).u64("steps", steps).u64("moves", moves);
  if (p[0] != 1 || p[(size_t{1} << 20) - 1] != 1 || p[n - 1] != 2) {
    fprintf(stderr, "buffer corrupted by realloc\n");
    return 1;
  }
  const double t2 = now_s();
  free(p);
  r.num("free_s", now_s() - t2);
  release_phases(r, o.idle_s);
  r.u64("rss_hwm", peak_rss_bytes());
  r.print();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  Rng rng(o.seed);
  Result r;
  r.str("workload", o.mode).str("allocator", allocator_name());
  if (o.mode == "grow") return run_grow(o, r.u64("mib", o.grow_mib));
  r.u64("count", o.count);
  // The bookkeeping arrays come first, so the baseline already contains them.
  Heap h{scratch_array<void*>(o.count), scratch_array<uint32_t>(o.count), o.count};
  emit_event("start");
  const size_t baseline = rss_bytes();
  const double t0 = now_s();
  allocate_all(h, o, rng);
  const double t1 = now_s();
  emit_event("allocated");
  const size_t peak = rss_bytes();
  record_ledger(r, "peak");
  r.u64("rss_baseline", baseline).u64("rss_peak", peak).u64("bytes_requested", h.bytes);
  r.num("alloc_s", t1 - t0);

  if (o.mode == "docs") {
    const double t2 = now_s();
    free_all(h);
    r.num("free_s", now_s() - t2);
    release_phases(r, o.idle_s);
  } else if (o.mode == "frag99") {
    size_t freed_bytes = 0;
    const double t2 = now_s();
    free_random(h, rng, 0.01, &freed_bytes);
    r.num("free_s", now_s() - t2);
    const size_t live_pages = live_page_bytes(h);
    const size_t heap = peak > baseline ? peak - baseline : 0;
    r.u64("freed_bytes", freed_bytes).u64("live_page_bytes", live_pages);
    r.u64("theoretical_max_release", heap > live_pages ? heap - live_pages : 0);
    release_phases(r, o.idle_s);
    check_survivors(h);
    free_all(h);
  } else if (o.mode == "busy") {
    size_t freed_bytes = 0;
    free_random(h, rng, 0.01, &freed_bytes);
    const size_t live_pages = live_page_bytes(h);
    const size_t heap = peak > baseline ? peak - baseline : 0;
    r.u64("freed_bytes", freed_bytes).u64("live_page_bytes", live_pages);
    r.u64("theoretical_max_release", heap > live_pages ? heap - live_pages : 0);
    r.u64("rss_after_free", rss_bytes());
    emit_event("freed");
    // The working set's own array is mapped (scratch_array), not malloc'ed.
    constexpr size_t kSlots = 20000;
    void** work = scratch_array<void*>(kSlots);
    const double t2 = now_s();
    uint64_t ops = 0;
    for (double next = 1.0; now_s() - t2 < o.idle_s;) {
      for (int k = 0; k < 10000; ++k, ++ops) {
        const uint64_t x = rng.next();
        void*& slot = work[x % kSlots];
        free(slot);
        slot = malloc(16 + (x >> 32) % 240);
        static_cast<char*>(slot)[0] = 1;
      }
      if (now_s() - t2 >= next) {
        emit_event("busy");
        next += 1.0;
      }
    }
    const size_t after = rss_bytes();
    r.u64("rss_after_busy", after).num("busy_s", now_s() - t2).u64("busy_ops", ops);
    r.num("released_frac_of_max_while_busy", heap > live_pages && peak > after
                                                 ? double(peak - after) / double(heap - live_pages)
                                                 : 0.0);
    for (size_t i = 0; i < kSlots; ++i) free(work[i]);
    check_survivors(h);
    free_all(h);
  } else if (o.mode == "aging") {
    const double t2 = now_s();
    size_t freed_bytes = 0;
    for (int round = 0; round < 6; ++round) {
      free_random(h, rng, 0.5, &freed_bytes);
      // N/4 new blocks into free slots, spread over the index range like the survivors.
      size_t to_place = h.count / 4;
      for (size_t i = 0; i < h.count && to_place > 0; ++i) {
        if (h.ptr[i] || rng.next() % 2) continue;
        size_t n = rng.range(o.min_size, o.max_size);
        char* p = static_cast<char*>(malloc(n));
        memset(p, int(i), n);
        h.ptr[i] = p;
        h.size[i] = uint32_t(n);
        --to_place;
      }
      emit_event("round");
    }
    r.num("churn_s", now_s() - t2);
    size_t live = 0;
    for (size_t i = 0; i < h.count; ++i)
      if (h.ptr[i]) live += h.size[i];
    const size_t live_pages = live_page_bytes(h);
    r.u64("live_bytes", live)
        .u64("live_page_bytes", live_pages)
        .u64("rss_after_churn", rss_bytes());
    release_phases(r, o.idle_s);
    check_survivors(h);
    free_all(h);
  } else {  // frag90
    size_t freed_bytes = 0;
    const double t2 = now_s();
    const size_t freed = free_random(h, rng, 0.10, &freed_bytes);
    emit_event("freed");
    // Allocate the same number of blocks and the same volume again, into the freed slots.
    size_t k = 0, again = 0;
    for (size_t i = 0; i < h.count && k < freed; ++i) {
      if (h.ptr[i]) continue;
      size_t n = h.size[i];  // same sizes as the freed blocks: the same volume
      char* p = static_cast<char*>(malloc(n));
      memset(p, int(i), n);
      h.ptr[i] = p;
      again += n;
      ++k;
    }
    r.num("free_realloc_s", now_s() - t2);
    emit_event("reallocated");
    const size_t after = rss_bytes();
    r.u64("freed_bytes", freed_bytes)
        .u64("reallocated_bytes", again)
        .u64("rss_after_realloc", after);
    check_survivors(h);
    free_all(h);
    emit_event("end");
  }
  r.u64("rss_hwm", peak_rss_bytes());
  r.print();
  return 0;
}
