// Printing: the human table, JSON, tm_stats_json, and TRIMALLOC_STATS at exit.
//
// Statistics are gathered first (tm_stats_get takes and drops the allocator's locks) and printed
// afterwards, so a FILE* whose buffer is allocated on first use (through malloc, i.e. through
// trimalloc) cannot deadlock against a lock the printer holds.
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "internal.h"

namespace trimalloc::stats {

void Writer::printf(const char* fmt, ...) noexcept {
  va_list ap;
  va_start(ap, fmt);
  if (file_) {
    int n = std::vfprintf(file_, fmt, ap);
    if (n > 0) len_ += static_cast<std::size_t>(n);
  } else {
    char* dst = len_ < cap_ ? buf_ + len_ : nullptr;
    std::size_t room = len_ < cap_ ? cap_ - len_ : 0;
    int n = std::vsnprintf(dst, room, fmt, ap);
    if (n > 0) len_ += static_cast<std::size_t>(n);
  }
  va_end(ap);
}

namespace {

double mib(std::size_t b) {
  return static_cast<double>(b) / (1024.0 * 1024.0);
}
double pct(std::size_t part, std::size_t whole) {
  return whole ? 100.0 * static_cast<double>(part) / static_cast<double>(whole) : 0.0;
}

struct LedgerLine {
  const char* key;
  const char* label;
  std::size_t tm_ledger::*field;
};
const LedgerLine kLedger[] = {
    {"small_live", "live small blocks (at block size)", &tm_ledger::small_live},
    {"small_free", "free blocks in pools in use", &tm_ledger::small_free},
    {"small_pool_slack", "pool slack (tails, resident dormant pages)",
     &tm_ledger::small_pool_slack},
    {"small_empty_pools", "empty pools kept resident", &tm_ledger::small_empty_pools},
    {"large_live", "large live (jemalloc allocated)", &tm_ledger::large_live},
    {"large_slack", "large slack (active - allocated)", &tm_ledger::large_slack},
    {"large_dirty", "large dirty (freed, resident)", &tm_ledger::large_dirty},
    {"metadata", "metadata (trimalloc + jemalloc)", &tm_ledger::metadata},
    {"not_ours_file", "not ours: files (text, libraries)", &tm_ledger::not_ours_file},
    {"not_ours_anon", "not ours: other anonymous (stacks...)", &tm_ledger::not_ours_anon},
};

// small_live split in two: estimates from the samples, or unknown with sampling off.
void write_requested_split(Writer& w, const tm_ledger& l) noexcept {
  if (l.small_requested_known) {
    w.printf("    %-40s %10.2f %6.1f  estimate, +-%.2f MiB (1 s.e., %zu samples)\n",
             "of which requested by the program", mib(l.small_live_requested),
             pct(l.small_live_requested, l.rss_kernel), mib(l.small_rounding_stderr),
             l.small_requested_samples);
    w.printf("    %-40s %10.2f %6.1f  estimate, +-%.2f MiB\n",
             "of which rounding inside size classes", mib(l.small_rounding),
             pct(l.small_rounding, l.rss_kernel), mib(l.small_rounding_stderr));
  } else {
    w.printf("    %-40s %10s  (estimated only while sampling is on: TRIMALLOC_PROFILE)\n",
             "of which requested / rounding", "unknown");
  }
}

}  // namespace

void write_text(Writer& w, const tm_stats& s) noexcept {
  const tm_ledger& l = s.ledger;
  w.printf("trimalloc statistics\n");
  w.printf(
      "  allocated %.2f MiB (peak seen by stats calls %.2f MiB), trimalloc resident %.2f MiB, "
      "mapped %.2f MiB\n",
      mib(s.allocated), mib(s.peak_allocated_seen), mib(s.resident_ours), mib(s.mapped));
  w.printf("\nsmall blocks (<= 512 bytes)\n");
  // The true peak of live blocks lies between the last two columns (docs/stats.md, "Peaks").
  w.printf("  %5s %6s %10s %12s %12s %10s %10s %12s %12s\n", "class", "size", "pools", "live",
           "free", "live MiB", "peak pools", "peak >=", "peak <=");
  for (unsigned c = 0; c < TM_STATS_CLASSES; ++c) {
    const tm_class_stats& k = s.classes[c];
    if (k.pools == 0 && k.peak_pools == 0) continue;
    w.printf("  %5u %6zu %10zu %12zu %12zu %10.2f %10zu %12zu %12zu\n", c, k.block_size, k.pools,
             k.blocks_live, k.blocks_free, mib(k.blocks_live * k.block_size), k.peak_pools,
             k.peak_blocks_seen, k.peak_blocks_bound);
  }
  w.printf("\narenas: %zu mapped (%.2f MiB), %.2f MiB resident, %zu released so far\n", s.arenas,
           mib(s.arena_mapped), mib(s.arena_resident), s.arenas_released);
  w.printf(
      "  pools: %zu in use, %zu free dirty, %zu free clean; empty pools resident %.2f MiB; "
      "%zu pool pages not resident\n",
      s.pools_in_use, s.pools_free_dirty, s.pools_free_clean, mib(s.empty_pools_resident),
      s.pages_released);
  w.printf("  trims: %zu, bytes released by trim/decay: %zu\n", s.trims, s.trim_bytes_released);
  w.printf(
      "\nlarge blocks (jemalloc): allocated %.2f MiB, active %.2f MiB, resident %.2f MiB, "
      "retained %.2f MiB, mapped %.2f MiB, metadata %.2f MiB, %zu mallocs, %zu frees\n",
      mib(s.large_allocated), mib(s.large_active), mib(s.large_resident), mib(s.large_retained),
      mib(s.large_mapped), mib(s.large_metadata), s.large_nmalloc, s.large_ndalloc);
  w.printf("metadata: thread heaps %.2f MiB, arena headers %.2f MiB, profiler %.2f MiB\n",
           mib(s.meta_heaps), mib(s.meta_arena_headers), mib(s.meta_profiler));
  if (s.profile_rate)
    w.printf("allocation sampling: every %zu bytes on average, %zu samples live\n", s.profile_rate,
             s.profile_samples_live);

  w.printf("\nRSS ledger                                       MiB       %%\n");
  for (const LedgerLine& line : kLedger) {
    w.printf("  %-42s %10.2f %6.1f\n", line.label, mib(l.*line.field),
             pct(l.*line.field, l.rss_kernel));
    if (line.field == &tm_ledger::small_live) write_requested_split(w, l);
  }
  w.printf("  %-42s %10.2f %6.1f\n", "sum", mib(l.total), pct(l.total, l.rss_kernel));
  w.printf("  %-42s %10.2f\n", "kernel RSS", mib(l.rss_kernel));
  if (l.overcount)
    w.printf(
        "  note: trimalloc's lines exceed the kernel's anonymous RSS by %.2f MiB (jemalloc counts "
        "pages it never touched as resident)\n",
        mib(l.overcount));
}

void write_json(Writer& w, const tm_stats& s) noexcept {
  const tm_ledger& l = s.ledger;
  w.printf(
      "{\"version\":2,\"allocated\":%zu,\"peak_allocated_seen\":%zu,\"resident_ours\":%zu,"
      "\"mapped\":%zu,",
      s.allocated, s.peak_allocated_seen, s.resident_ours, s.mapped);
  w.printf("\"classes\":[");
  for (unsigned c = 0; c < TM_STATS_CLASSES; ++c) {
    const tm_class_stats& k = s.classes[c];
    w.printf(
        "%s{\"class\":%u,\"block_size\":%zu,\"pools\":%zu,\"blocks_live\":%zu,\"blocks_free\":%zu,"
        "\"peak_blocks_seen\":%zu,\"peak_pools\":%zu,\"peak_blocks_bound\":%zu}",
        c ? "," : "", c, k.block_size, k.pools, k.blocks_live, k.blocks_free, k.peak_blocks_seen,
        k.peak_pools, k.peak_blocks_bound);
  }
  w.printf(
      "],\"arenas\":{\"count\":%zu,\"released\":%zu,\"mapped\":%zu,\"resident\":%zu,\"pools_in_"
      "use\":%zu,"
      "\"pools_free_dirty\":%zu,\"pools_free_clean\":%zu,\"empty_pools_resident\":%zu,"
      "\"pages_released\":%zu,\"trims\":%zu,\"trim_bytes_released\":%zu},",
      s.arenas, s.arenas_released, s.arena_mapped, s.arena_resident, s.pools_in_use,
      s.pools_free_dirty, s.pools_free_clean, s.empty_pools_resident, s.pages_released, s.trims,
      s.trim_bytes_released);
  w.printf(
      "\"large\":{\"allocated\":%zu,\"active\":%zu,\"resident\":%zu,\"retained\":%zu,\"mapped\":%"
      "zu,"
      "\"metadata\":%zu,\"dirty\":%zu,\"resident_measured\":%zu,\"nmalloc\":%zu,\"ndalloc\":%zu},",
      s.large_allocated, s.large_active, s.large_resident, s.large_retained, s.large_mapped,
      s.large_metadata, s.large_dirty, s.large_resident_measured, s.large_nmalloc, s.large_ndalloc);
  w.printf("\"metadata\":{\"thread_heaps\":%zu,\"arena_headers\":%zu,\"profiler\":%zu},",
           s.meta_heaps, s.meta_arena_headers, s.meta_profiler);
  w.printf("\"kernel\":{\"rss\":%zu,\"rss_anon\":%zu,\"rss_file\":%zu},", s.rss, s.rss_anon,
           s.rss_file);
  w.printf("\"profile\":{\"rate\":%zu,\"samples_live\":%zu},", s.profile_rate,
           s.profile_samples_live);
  w.printf("\"ledger\":{");
  for (const LedgerLine& line : kLedger) w.printf("\"%s\":%zu,", line.key, l.*line.field);
  if (l.small_requested_known)
    w.printf("\"small_live_requested\":%zu,\"small_rounding\":%zu,\"small_rounding_stderr\":%zu,",
             l.small_live_requested, l.small_rounding, l.small_rounding_stderr);
  else
    w.printf(
        "\"small_live_requested\":null,\"small_rounding\":null,\"small_rounding_stderr\":null,");
  w.printf(
      "\"small_requested_samples\":%zu,\"total\":%zu,\"rss_kernel\":%zu,\"ours\":%zu,\"overcount\":"
      "%zu}}",
      l.small_requested_samples, l.total, l.rss_kernel, l.ours, l.overcount);
}

void report_bad_env(const char* name, const char* value, const char* expected) noexcept {
  char line[512];
  int n = std::snprintf(line, sizeof line, "trimalloc: %s='%s' is not %s; ignored\n", name, value,
                        expected);
  if (n > 0) {
    ssize_t unused =
        write(STDERR_FILENO, line, static_cast<std::size_t>(n) < sizeof line ? n : sizeof line - 1);
    (void)unused;
  }
}

namespace {

// TRIMALLOC_STATS, parsed once at load time; printed by a destructor at exit.
enum class AtExit { kOff, kTextStderr, kJsonStderr, kPath };
AtExit g_at_exit = AtExit::kOff;
char g_path[4096];

__attribute__((constructor(200))) void read_stats_env() {
  const char* v = std::getenv("TRIMALLOC_STATS");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "0") == 0) return;
  if (std::strcmp(v, "1") == 0 || std::strcmp(v, "text") == 0) {
    g_at_exit = AtExit::kTextStderr;
  } else if (std::strcmp(v, "json") == 0) {
    g_at_exit = AtExit::kJsonStderr;
  } else if (std::strchr(v, '/') != nullptr && std::strlen(v) < sizeof g_path) {
    std::strcpy(g_path, v);
    g_at_exit = AtExit::kPath;
  } else {
    report_bad_env("TRIMALLOC_STATS", v, "1, text, json or a file path containing '/'");
  }
}

bool ends_with(const char* s, const char* suffix) {
  std::size_t a = std::strlen(s), b = std::strlen(suffix);
  return a >= b && std::strcmp(s + a - b, suffix) == 0;
}

__attribute__((destructor(200))) void print_stats_at_exit() {
  switch (g_at_exit) {
    case AtExit::kOff:
      return;
    case AtExit::kTextStderr:
      tm_stats_print(stderr, "text");
      return;
    case AtExit::kJsonStderr:
      tm_stats_print(stderr, "json");
      std::fputc('\n', stderr);
      return;
    case AtExit::kPath: {
      FILE* f = std::fopen(g_path, "w");
      if (f == nullptr) {
        std::fprintf(stderr, "trimalloc: TRIMALLOC_STATS: cannot write '%s': %s\n", g_path,
                     std::strerror(errno));
        return;
      }
      bool json = ends_with(g_path, ".json");
      tm_stats_print(f, json ? "json" : "text");
      if (json) std::fputc('\n', f);
      std::fclose(f);
      return;
    }
  }
}

}  // namespace
}  // namespace trimalloc::stats

using namespace trimalloc::stats;

extern "C" TM_API int tm_stats_print(FILE* out, const char* format) {
  if (format == nullptr) format = "text";
  bool json = std::strcmp(format, "json") == 0;
  if (!json && std::strcmp(format, "text") != 0) {
    std::fprintf(stderr,
                 "trimalloc: tm_stats_print: unknown format '%s' (expected \"text\" or \"json\")\n",
                 format);
    return -1;
  }
  if (out == nullptr) {
    std::fprintf(stderr, "trimalloc: tm_stats_print: NULL stream\n");
    return -1;
  }
  tm_stats s;
  tm_stats_get(&s);
  Writer w(out);
  if (json)
    write_json(w, s);
  else
    write_text(w, s);
  std::fflush(out);
  return 0;
}

extern "C" TM_API size_t tm_stats_json(char* buf, size_t cap) {
  if (buf == nullptr) cap = 0;
  tm_stats s;
  tm_stats_get(&s);
  Writer w(buf, cap);
  write_json(w, s);
  return w.length();
}
