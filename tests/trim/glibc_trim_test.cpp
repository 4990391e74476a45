// glibc compatibility under replacement: malloc_trim(0) releases (returns 1 when it did) and
// mallopt accepts glibc's options. Linked against the override build: these are trimalloc's.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <malloc.h>
#include <trimalloc/trimalloc.h>

#include <cstring>
#include <vector>

TEST(GlibcCompat, MallocTrimIsTrimallocsAndReleases) {
  Dl_info info{};
  ASSERT_NE(dladdr(reinterpret_cast<void*>(&malloc_trim), &info), 0);
  EXPECT_NE(std::strstr(info.dli_fname, "libtrimalloc"), nullptr) << info.dli_fname;
  tm_option_set("decay_ms", -1);
  std::vector<void*> v;
  for (int i = 0; i < 100000; ++i) {
    v.push_back(malloc(100));
    std::memset(v.back(), 1, 100);
  }
  for (std::size_t i = 0; i < v.size(); ++i)
    if (i % 300) free(v[i]);
  EXPECT_EQ(malloc_trim(0), 1);
  EXPECT_EQ(malloc_trim(0), 0) << "nothing left to release";
  for (std::size_t i = 0; i < v.size(); i += 300) free(v[i]);
}

TEST(GlibcCompat, MalloptAcceptsGlibcOptions) {
  EXPECT_EQ(mallopt(M_TRIM_THRESHOLD, 1 << 20), 1);
  long long cap = 0;
  ASSERT_EQ(tm_option_get("max_cached", &cap), 0);
  EXPECT_EQ(cap, 1 << 20);
  EXPECT_EQ(mallopt(M_MMAP_THRESHOLD, 1 << 20), 1);
  EXPECT_EQ(mallopt(M_ARENA_MAX, 2), 1);
  EXPECT_EQ(mallopt(M_TRIM_THRESHOLD, -5), 0);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
}
