// A C++ program that does NOT link trimalloc. Run with LD_PRELOAD=libtrimalloc.so it must find
// every malloc-family and operator new/delete symbol in libtrimalloc.so (dlsym and the addresses
// the program itself uses), and the memory that it, libstdc++ and libc allocate must be
// trimalloc's. Exit status 0 when all of that holds, 1 otherwise (one line per problem on stderr).
// Run without the preload it must fail: that is a ctest test too (WILL_FAIL), so the checks cannot
// be vacuous.
#include "malloc_symbols.h"

#include <dlfcn.h>
#include <malloc.h>
#include <netdb.h>
#include <sys/socket.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

namespace {

int failures = 0;

void fail(const std::string& what) {
  std::fprintf(stderr, "preload_symbols: %s\n", what.c_str());
  ++failures;
}

std::string lib_of(const void* p) {
  Dl_info info{};
  if (!p) return "(null)";
  if (!dladdr(p, &info) || !info.dli_fname) return "(dladdr failed)";
  return info.dli_fname;
}

bool in_trimalloc(const void* p) {
  return lib_of(p).find("libtrimalloc.so") != std::string::npos;
}

using OwnsFn = int (*)(const void*);
OwnsFn owns = nullptr;

void expect_owned(const void* p, const char* what) {
  if (!p)
    fail(std::string(what) + ": NULL");
  else if (!owns || !owns(p))
    fail(std::string(what) + ": block is not trimalloc's");
}

template <class F>
F* opaque(F* f) {
  F* volatile v = f;
  return v;
}

}  // namespace

int main() {
  for (const char* name : trimalloc_malloc_symbols) {
    void* s = dlsym(RTLD_DEFAULT, name);
    if (!in_trimalloc(s)) fail(std::string(name) + " resolves to " + lib_of(s));
  }
  const struct {
    const char* name;
    const void* p;
  } used[] = {
      {"&malloc", reinterpret_cast<const void*>(&::malloc)},
      {"&free", reinterpret_cast<const void*>(&::free)},
      {"&calloc", reinterpret_cast<const void*>(&::calloc)},
      {"&realloc", reinterpret_cast<const void*>(&::realloc)},
      {"&posix_memalign", reinterpret_cast<const void*>(&::posix_memalign)},
      {"&aligned_alloc", reinterpret_cast<const void*>(&::aligned_alloc)},
      {"&malloc_usable_size", reinterpret_cast<const void*>(&::malloc_usable_size)},
      {"&operator new",
       reinterpret_cast<const void*>(static_cast<void* (*)(std::size_t)>(&::operator new))},
      {"&operator delete",
       reinterpret_cast<const void*>(static_cast<void (*)(void*) noexcept>(&::operator delete))},
  };
  for (auto& u : used)
    if (!in_trimalloc(u.p)) fail(std::string(u.name) + " is in " + lib_of(u.p));

  owns = reinterpret_cast<OwnsFn>(dlsym(RTLD_DEFAULT, "tm_owns"));
  if (!owns) fail("tm_owns not found: libtrimalloc.so is not loaded");

  void* m = opaque(&::malloc)(100);
  expect_owned(m, "malloc(100)");
  std::free(m);
  m = opaque(&::malloc)(100000);
  expect_owned(m, "malloc(100000)");
  std::free(m);
  auto* v = new std::vector<int>(1000, 1);
  expect_owned(v, "new std::vector");
  expect_owned(v->data(), "std::vector storage");
  delete v;
  std::string s(300, 's');
  expect_owned(s.data(), "std::string storage");
  char* d = strdup("preloaded");
  expect_owned(d, "strdup");
  std::free(d);
  std::FILE* f = std::fopen("/proc/self/maps", "r");
  expect_owned(f, "fopen");
  char* line = nullptr;
  std::size_t cap = 0;
  bool mapped = false;
  while (getline(&line, &cap, f) > 0)
    if (std::strstr(line, "libtrimalloc.so")) mapped = true;
  expect_owned(line, "getline buffer");
  std::free(line);
  std::fclose(f);
  if (!mapped) fail("libtrimalloc.so is not in /proc/self/maps");
  addrinfo* res = nullptr;
  if (getaddrinfo("localhost", "80", nullptr, &res) == 0) {
    expect_owned(res, "getaddrinfo result");
    freeaddrinfo(res);
  } else {
    fail("getaddrinfo(localhost) failed");
  }
  // A program that calls glibc's __libc_* names directly and frees the block with free()
  // (an abort on a foreign pointer before trimalloc defined them), and the other way round.
  using LibcMalloc = void* (*)(std::size_t);
  using LibcFree = void (*)(void*);
  auto libc_malloc = reinterpret_cast<LibcMalloc>(dlsym(RTLD_DEFAULT, "__libc_malloc"));
  auto libc_free = reinterpret_cast<LibcFree>(dlsym(RTLD_DEFAULT, "__libc_free"));
  if (libc_malloc && libc_free) {
    m = libc_malloc(200);
    expect_owned(m, "__libc_malloc(200)");
    std::free(m);
    m = opaque(&::malloc)(200);
    libc_free(m);
  } else {
    fail("__libc_malloc or __libc_free not found");
  }
  // A thread allocates; the main thread frees after it exited.
  std::vector<void*> from_thread;
  std::thread([&] {
    for (int i = 0; i < 1000; ++i) from_thread.push_back(std::malloc(1 + i % 700));
  }).join();
  for (void* p : from_thread) {
    expect_owned(p, "malloc in a thread");
    std::free(p);
  }
  if (failures) return 1;
  std::puts("preload_symbols: every malloc-family symbol is libtrimalloc's");
  return 0;
}
