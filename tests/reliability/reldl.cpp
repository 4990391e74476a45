// A small shared library for the dlopen/dlclose test (hostile_test.cpp): it allocates in its
// constructor (C and C++ statics), frees in its destructor, and hands blocks to and takes
// blocks from the program. It is not linked with trimalloc: it uses whatever malloc the
// process has, which in the test is trimalloc's.
#include <pthread.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {
constexpr int kBlocks = 50;
void* g_blocks[kBlocks];
std::size_t g_sizes[kBlocks];
int* g_bad = nullptr;
int* g_freed = nullptr;
std::vector<std::string> g_names = {"alpha", std::string(100, 'b'),
                                    std::string(3000, 'c')};  // C++ static init

unsigned char byte(unsigned seed, std::size_t i) {
  return static_cast<unsigned char>(seed * 131 + i * 7 + (i >> 8));
}
void fill(void* p, std::size_t n, unsigned seed) {
  auto* b = static_cast<unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i) b[i] = byte(seed, i);
}
bool intact(const void* p, std::size_t n, unsigned seed) {
  auto* b = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i)
    if (b[i] != byte(seed, i)) return false;
  return true;
}

__attribute__((constructor)) void on_load() {
  for (int i = 0; i < kBlocks; ++i) {
    g_sizes[i] = 1 + (static_cast<std::size_t>(i) * 2654435761u) % (i % 5 == 0 ? 100000 : 600);
    g_blocks[i] = std::malloc(g_sizes[i]);
    if (g_blocks[i]) fill(g_blocks[i], g_sizes[i], static_cast<unsigned>(i));
  }
}

__attribute__((destructor)) void on_unload() {
  int bad = 0, freed = 0;
  for (int i = 0; i < kBlocks; ++i) {
    if (!g_blocks[i] || !intact(g_blocks[i], g_sizes[i], static_cast<unsigned>(i))) ++bad;
    std::free(g_blocks[i]);
    ++freed;
  }
  if (g_bad) *g_bad += bad;
  if (g_freed) *g_freed += freed;
}

void* thread_body(void*) {
  void* ps[100];
  for (int i = 0; i < 100; ++i) {
    ps[i] = std::malloc(16 + i * 7);
    if (ps[i]) std::memset(ps[i], i, 16 + i * 7);
  }
  for (int i = 0; i < 100; ++i) std::free(ps[i]);
  return nullptr;
}
}  // namespace

extern "C" {
__attribute__((visibility("default"))) void rel_dl_report_to(int* bad, int* freed) {
  g_bad = bad;
  g_freed = freed;
}
// 1 if the blocks made by the constructor and the C++ statics still hold their data.
__attribute__((visibility("default"))) int rel_dl_check() {
  for (int i = 0; i < kBlocks; ++i)
    if (!g_blocks[i] || !intact(g_blocks[i], g_sizes[i], static_cast<unsigned>(i))) return 0;
  return g_names.size() == 3 && g_names[1] == std::string(100, 'b') && g_names[2].size() == 3000;
}
// A block for the program (which frees it, possibly after dlclose).
__attribute__((visibility("default"))) void* rel_dl_make(std::size_t n, unsigned seed) {
  void* p = std::malloc(n);
  if (p) fill(p, n, seed);
  return p;
}
// Checks and frees a block the program made; 1 if it was intact.
__attribute__((visibility("default"))) int rel_dl_take(void* p, std::size_t n, unsigned seed) {
  int ok = intact(p, n, seed);
  std::free(p);
  return ok;
}
// A C++ container grown inside the library, and a thread of the library that allocates.
__attribute__((visibility("default"))) int rel_dl_work() {
  std::vector<std::string> v;
  for (int i = 0; i < 200; ++i) v.push_back(std::string(static_cast<std::size_t>(i * 11), 'z'));
  pthread_t t;
  if (pthread_create(&t, nullptr, thread_body, nullptr) != 0) return 0;
  pthread_join(t, nullptr);
  return v.size() == 200 && v[199].size() == 199 * 11;
}
}
