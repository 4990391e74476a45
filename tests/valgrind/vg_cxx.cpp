// C++ counterpart of vg_cases.c: operator new/delete (every block through libtrimalloc.so's
// operator new, which valgrind is told not to replace), standard containers, threads.
//   vg_cxx clean | overrun_new | leak_new
#include <trimalloc/trimalloc.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {
template <typename T>
T* ours(T* p) {
  if (p == nullptr || !tm_owns(p)) {
    std::fprintf(stderr, "vg_cxx: %p is not a trimalloc block\n", static_cast<void*>(p));
    std::exit(3);
  }
  return p;
}

int clean() {
  std::map<std::string, std::vector<int>> m;
  for (int i = 0; i < 2000; ++i) {
    std::string key = "key-" + std::to_string(i * 7919 % 1000) + std::string(i % 40, 'x');
    auto& v = m[key];
    for (int j = 0; j < i % 300; ++j) v.push_back(j);  // vector growth: new, copy, delete
    if (!v.empty()) ours(v.data());
    if (i % 3 == 0) m.erase(m.begin());
  }
  std::vector<std::unique_ptr<std::string>> handed;
  for (int i = 0; i < 500; ++i) handed.push_back(std::make_unique<std::string>(100 + i, 'h'));
  std::thread t([&] { handed.clear(); });  // deletes of the main thread's blocks
  t.join();
  struct alignas(256) Wide {
    char bytes[300];
  };
  auto* w = ours(new Wide);
  std::memset(w->bytes, 1, sizeof w->bytes);
  delete w;
  auto* arr = ours(new int[1000]());
  long sum = 0;
  for (int i = 0; i < 1000; ++i) sum += arr[i];
  delete[] arr;
  std::printf("clean %zu %ld\n", m.size(), sum);
  return 0;
}

__attribute__((noinline)) char* make_array(std::size_t n) {
  return ours(new char[n]);
}

int overrun_new() {
  char* p = make_array(10);
  std::memset(p, 0, 10);
  std::puts("planted");
  std::fflush(stdout);
  static_cast<volatile char*>(p)[10] = 1;
  delete[] p;
  return 0;
}

std::vector<int>* volatile g_sink;
__attribute__((noinline)) void leak_vector_here() {
  // 24 + 4000 bytes. Only the vector object is checked: a stale copy of the buffer's address
  // (a register) can make the buffer "still reachable", with valgrind's own malloc as well.
  g_sink = ours(new std::vector<int>(1000, 1));
}

int leak_new() {
  leak_vector_here();
  g_sink = nullptr;
  std::puts("planted");
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  std::string c = argc > 1 ? argv[1] : "";
  if (c == "clean") return clean();
  if (c == "overrun_new") return overrun_new();
  if (c == "leak_new") return leak_new();
  std::fprintf(stderr, "usage: vg_cxx clean|overrun_new|leak_new\n");
  return 2;
}
