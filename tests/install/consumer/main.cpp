// Links libtrimalloc: malloc must be trimalloc's, and the tm_* API must work.
#include <dlfcn.h>
#include <trimalloc/trimalloc.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

int main() {
  void* p = std::malloc(100);
  if (!tm_owns(p)) return std::puts("malloc did not come from trimalloc"), 1;
  std::free(p);
  Dl_info info{};
  if (!dladdr(reinterpret_cast<void*>(&std::malloc), &info) ||
      !std::strstr(info.dli_fname, "libtrimalloc"))
    return std::puts("malloc does not resolve to libtrimalloc"), 1;
  void* q = tm_malloc(1000);
  std::printf("%s ok, usable %zu\n", tm_version(), tm_usable_size(q));
  tm_free(q);
  return 0;
}
