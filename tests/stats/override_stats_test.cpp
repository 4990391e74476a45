// glibc's introspection calls under the malloc override: they must be trimalloc's and move the
// right way.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <malloc.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "trimalloc/stats.h"

namespace {

TEST(GlibcCompat, Mallinfo2IsTrimallocs) {
  Dl_info info{};
  void* sym = dlsym(RTLD_DEFAULT, "mallinfo2");
  ASSERT_NE(sym, nullptr);
  ASSERT_NE(dladdr(sym, &info), 0);
  EXPECT_NE(std::string(info.dli_fname).find("libtrimalloc"), std::string::npos) << info.dli_fname;
}

TEST(GlibcCompat, Mallinfo2MovesTheRightWay) {
  std::vector<void*> blocks;
  blocks.reserve(100020);  // the vector's own memory is trimalloc's too: allocate it first
  struct mallinfo2 m0 = mallinfo2();
  for (int i = 0; i < 100000; ++i) blocks.push_back(malloc(200));  // 20 MB of small blocks
  for (int i = 0; i < 20; ++i) blocks.push_back(malloc(1 << 20));  // 20 MiB of large blocks
  struct mallinfo2 m1 = mallinfo2();
  EXPECT_GE(m1.uordblks - m0.uordblks, 100000u * 208 + 20u * (1 << 20));
  EXPECT_LE(m1.uordblks - m0.uordblks, 100000u * 208 + 20u * (1 << 20) + (1 << 20));
  EXPECT_GT(m1.arena, m0.arena);
  EXPECT_GE(m1.hblkhd, m1.uordblks);
  EXPECT_GE(m1.usmblks, m1.uordblks);
  for (void* p : blocks) free(p);
  struct mallinfo2 m2 = mallinfo2();
  EXPECT_LE(m2.uordblks, m0.uordblks + (1 << 20));
  EXPECT_GT(m2.fordblks, m1.fordblks);  // the freed small blocks are free bytes now
  tm_stats s;
  tm_stats_get(&s);
  EXPECT_NEAR(double(mallinfo2().uordblks), double(s.allocated), 1 << 20);
}

TEST(GlibcCompat, MallinfoClampsToInt) {
  // glibc deprecates mallinfo() for mallinfo2(); the old call is what is being tested.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  struct mallinfo m = mallinfo();
#pragma GCC diagnostic pop
  EXPECT_GE(m.uordblks, 0);
  EXPECT_GT(m.hblkhd, 0);
}

TEST(GlibcCompat, MallocInfoAndMallocStats) {
  char* text = nullptr;
  size_t len = 0;
  FILE* f = open_memstream(&text, &len);
  ASSERT_EQ(malloc_info(0, f), 0);
  fclose(f);
  std::string xml(text, len);
  free(text);
  EXPECT_EQ(xml.rfind("<malloc version=\"1\">", 0), 0u) << xml;
  EXPECT_NE(xml.find("</malloc>"), std::string::npos);
  EXPECT_EQ(malloc_info(1, stdout), -1);
  EXPECT_EQ(errno, EINVAL);
  testing::internal::CaptureStderr();
  malloc_stats();
  EXPECT_NE(testing::internal::GetCapturedStderr().find("RSS ledger"), std::string::npos);
}

}  // namespace
