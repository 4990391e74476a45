// os::purge_ranges (arenas/os.h): every listed page is dropped and reads as zero afterwards,
// pages between the ranges keep their contents - with one process_madvise per batch where the
// kernel has it, and range by range where it does not (forced with the test hook).
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "os.h"
#include "test_support.h"

using namespace trimalloc;

namespace {
void check_purge(std::size_t pages) {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  char* p = static_cast<char*>(
      mmap(nullptr, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(p, MAP_FAILED);
  for (std::size_t i = 0; i < pages; ++i) p[i * page] = 7;
  // Every other page, listed in reverse order (purge_ranges must not depend on order).
  std::vector<os::Range> ranges;
  for (std::size_t i = pages; i-- > 0;)
    if (i % 2 == 0) {
      auto start = reinterpret_cast<std::uintptr_t>(p + i * page);
      ranges.push_back({start, start + page});
    }
  os::purge_ranges(ranges.data(), ranges.size());
  std::vector<unsigned char> resident(pages);
  ASSERT_EQ(mincore(p, pages * page, resident.data()), 0);
  for (std::size_t i = 0; i < pages; ++i) {
    if (i % 2 == 0) {
      EXPECT_EQ(resident[i] & 1, 0) << "page " << i << " still resident";
      EXPECT_EQ(p[i * page], 0) << "page " << i;
    } else {
      EXPECT_EQ(resident[i] & 1, 1) << "page " << i << " was dropped";
      EXPECT_EQ(p[i * page], 7) << "page " << i;
    }
  }
  munmap(p, pages * page);
}
}  // namespace

// 1500 listed ranges: more than one batch of 512.
TEST(PurgeRanges, DropsExactlyTheListedPages) {
  check_purge(3000);
}

TEST(PurgeRanges, RangeByRangeFallbackDropsTheSamePages) {
  os::disable_batched_purge();
  check_purge(3000);
}

// reserve_aligned (blocks' memory) maps without MAP_NORESERVE, so the kernel's overcommit
// policy applies to it as to glibc's mappings; reserve_sparse (the arena map's table, touched
// only where arenas lie) maps with it. The kernel shows the flag as "nr" in VmFlags.
namespace {
// The VmFlags of the mapping that holds `p`, or "" if none does.
std::string vm_flags_of(const void* p) {
  const std::vector<tmtest::Mapping> maps = tmtest::mappings();
  const tmtest::Mapping* m = tmtest::mapping_of(maps, p);
  return m ? m->flags : "";
}
bool has_flag(const std::string& flags, const char* flag) {
  return tmtest::Mapping{0, 0, flags}.has_flag(flag);
}
}  // namespace

TEST(Platform, BlockMemoryFollowsTheOvercommitPolicySparseTablesDoNot) {
  const std::size_t page = os::page_size();
  void* blocks = os::reserve_aligned(std::size_t{4} << 20, std::size_t{1} << 20);
  void* table = os::reserve_sparse(std::size_t{4} << 20, page);
  ASSERT_NE(blocks, nullptr);
  ASSERT_NE(table, nullptr);
  const std::string block_flags = vm_flags_of(blocks), table_flags = vm_flags_of(table);
  ASSERT_FALSE(block_flags.empty()) << "no mapping holds " << blocks;
  ASSERT_FALSE(table_flags.empty()) << "no mapping holds " << table;
  EXPECT_FALSE(has_flag(block_flags, "nr")) << "reserve_aligned: VmFlags" << block_flags;
  EXPECT_TRUE(has_flag(table_flags, "nr")) << "reserve_sparse: VmFlags" << table_flags;
  os::release(blocks, std::size_t{4} << 20);
  os::release(table, std::size_t{4} << 20);
}

// The arena map's table spans the address space (128 MiB) and used to count in full against
// RLIMIT_DATA, so a process limited to less (ulimit -d 100000) could not allocate at all under
// trimalloc. A sparse table is read-only until make_writable() opens a page of it.
TEST(Platform, SparseTablesCountAgainstTheDataLimitOnlyWhereWritten) {
  const std::size_t page = os::page_size();
  constexpr std::size_t kTable = std::size_t{64} << 20;
  const std::size_t before = tmtest::data_bytes();
  ASSERT_GT(before, 0u) << "no VmData in /proc/self/status";
  auto* table = static_cast<unsigned char*>(os::reserve_sparse(kTable, page));
  ASSERT_NE(table, nullptr);
  const std::size_t reserved = tmtest::data_bytes();
  EXPECT_LT(reserved, before + (std::size_t{1} << 20))
      << "a 64 MiB sparse table added " << ((reserved - before) >> 20) << " MiB of data";
  EXPECT_EQ(table[0] | table[kTable / 2] | table[kTable - 1], 0) << "reads see zeros";
  ASSERT_TRUE(os::make_writable(table + kTable / 2, page));
  table[kTable / 2] = 7;
  EXPECT_EQ(table[kTable / 2], 7);
  EXPECT_LE(tmtest::data_bytes(), reserved + page + (std::size_t{1} << 20)) << "one page opened";
  EXPECT_FALSE(has_flag(vm_flags_of(table), "wr")) << "the rest stays read-only";
  os::release(table, kTable);
}

// An aligned reservation maps size + alignment and trims both ends, but when a limit refuses
// that slack it maps just the size, at the aligned address below where the kernel put it
// (os.cpp, map_aligned_exactly): python3 under `ulimit -v 44000` could not make its first
// 8 MiB arena with 16 MiB to map. Not in the sanitizer builds (no low RLIMIT_AS there).
TEST(Platform, AnAlignedReservationNeedsNoSlackUnderAnAddressSpaceLimit) {
  if (tmtest::kSanitized) GTEST_SKIP() << "the sanitizers' shadow memory rules out RLIMIT_AS";
  constexpr std::size_t kMiB = std::size_t{1} << 20;
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (!tmtest::limit_address_space(12 * kMiB)) _exit(10);
    for (bool closed : {false, true}) {
      void* p =
          closed ? os::reserve_closed(8 * kMiB, 8 * kMiB) : os::reserve_aligned(8 * kMiB, 8 * kMiB);
      if (p == nullptr) _exit(11);
      if ((reinterpret_cast<std::uintptr_t>(p) & (8 * kMiB - 1)) != 0) _exit(12);
      if (!closed) static_cast<char*>(p)[8 * kMiB - 1] = 1;  // writable to its end
      os::release(p, 8 * kMiB);
    }
    errno = 0;
    if (os::reserve_aligned(16 * kMiB, 8 * kMiB) != nullptr || errno != ENOMEM) _exit(13);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "10 setup, 11 no 8 MiB reservation with 12 MiB of headroom, 12 misaligned, 13 an "
         "impossible one did not fail with ENOMEM";
}
