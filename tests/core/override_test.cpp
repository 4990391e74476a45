// What only the malloc-overriding library can show: C++ operator new/delete in every form, symbol
// resolution of the whole malloc family, and memory that libc allocates on the program's behalf.
#include "malloc_symbols.h"
#include "override_api.h"

#include <dlfcn.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

namespace tmtest {
namespace {

template <class F>
F* opaque(F* f) {
  F* volatile v = f;
  return v;
}

using New = void* (*)(std::size_t);
using NewNothrow = void* (*)(std::size_t, const std::nothrow_t&) noexcept;
using NewAligned = void* (*)(std::size_t, std::align_val_t);
using NewAlignedNothrow = void* (*)(std::size_t, std::align_val_t, const std::nothrow_t&) noexcept;
using Delete = void (*)(void*) noexcept;
using DeleteSized = void (*)(void*, std::size_t) noexcept;
using DeleteAligned = void (*)(void*, std::align_val_t) noexcept;
using DeleteAlignedSized = void (*)(void*, std::size_t, std::align_val_t) noexcept;

const New op_new = opaque(static_cast<New>(&::operator new));
const New op_new_arr = opaque(static_cast<New>(&::operator new[]));
const NewNothrow op_new_nt = opaque(static_cast<NewNothrow>(&::operator new));
const NewNothrow op_new_arr_nt = opaque(static_cast<NewNothrow>(&::operator new[]));
const NewAligned op_new_al = opaque(static_cast<NewAligned>(&::operator new));
const NewAligned op_new_arr_al = opaque(static_cast<NewAligned>(&::operator new[]));
const NewAlignedNothrow op_new_al_nt = opaque(static_cast<NewAlignedNothrow>(&::operator new));
const NewAlignedNothrow op_new_arr_al_nt =
    opaque(static_cast<NewAlignedNothrow>(&::operator new[]));
const Delete op_del = opaque(static_cast<Delete>(&::operator delete));
const Delete op_del_arr = opaque(static_cast<Delete>(&::operator delete[]));
const DeleteSized op_del_sz = opaque(static_cast<DeleteSized>(&::operator delete));
const DeleteSized op_del_arr_sz = opaque(static_cast<DeleteSized>(&::operator delete[]));
const DeleteAligned op_del_al = opaque(static_cast<DeleteAligned>(&::operator delete));
const DeleteAligned op_del_arr_al = opaque(static_cast<DeleteAligned>(&::operator delete[]));
const DeleteAlignedSized op_del_al_sz = opaque(static_cast<DeleteAlignedSized>(&::operator delete));
const DeleteAlignedSized op_del_arr_al_sz =
    opaque(static_cast<DeleteAlignedSized>(&::operator delete[]));

void check_block(void* p, std::size_t n, std::size_t align, const std::string& what) {
  ASSERT_NE(p, nullptr) << what;
  EXPECT_EQ(addr(p) % align, 0u) << what << " = " << p;
  EXPECT_TRUE(tm_owns(p)) << what << " is not trimalloc's";
  EXPECT_GE(malloc_usable_size(p), n) << what;
  if (n > 0 && n <= TM_SMALL_MAX && align <= 16) {
    EXPECT_EQ(malloc_usable_size(p), small_class(n)) << what;
  }
  fill(p, n, n + align);
  EXPECT_EQ(first_bad(p, n, n + align), -1) << what;
}

const std::size_t kSizes[] = {0, 1, 15, 16, 17, 100, 511, 512, 513, 5000, 1 << 20};

TEST(OperatorNew, PlainArrayAndNothrowWithEveryDelete) {
  for (std::size_t n : kSizes) {
    std::string s = std::to_string(n);
    void* p;
    check_block(p = op_new(n), n, 16, "operator new(" + s + ")");
    op_del(p);
    check_block(p = op_new(n), n, 16, "operator new(" + s + ")");
    op_del_sz(p, n);
    check_block(p = op_new_arr(n), n, 16, "operator new[](" + s + ")");
    op_del_arr(p);
    check_block(p = op_new_arr(n), n, 16, "operator new[](" + s + ")");
    op_del_arr_sz(p, n);
    check_block(p = op_new_nt(n, std::nothrow), n, 16, "operator new(" + s + ", nothrow)");
    ::operator delete(p, std::nothrow);
    check_block(p = op_new_arr_nt(n, std::nothrow), n, 16, "operator new[](" + s + ", nothrow)");
    ::operator delete[](p, std::nothrow);
  }
}

TEST(OperatorNew, AlignedWithEveryDelete) {
  for (std::size_t a = 16; a <= (std::size_t{1} << 16); a *= 2) {
    for (std::size_t n : kSizes) {
      std::string s = std::to_string(n) + ", align " + std::to_string(a);
      auto al = std::align_val_t(a);
      void* p;
      check_block(p = op_new_al(n, al), n, a, "operator new(" + s + ")");
      op_del_al(p, al);
      check_block(p = op_new_al(n, al), n, a, "operator new(" + s + ")");
      op_del_al_sz(p, n, al);
      check_block(p = op_new_arr_al(n, al), n, a, "operator new[](" + s + ")");
      op_del_arr_al(p, al);
      check_block(p = op_new_arr_al(n, al), n, a, "operator new[](" + s + ")");
      op_del_arr_al_sz(p, n, al);
      check_block(p = op_new_al_nt(n, al, std::nothrow), n, a, "operator new(" + s + ", nothrow)");
      ::operator delete(p, al, std::nothrow);
      check_block(p = op_new_arr_al_nt(n, al, std::nothrow), n, a,
                  "operator new[](" + s + ", nothrow)");
      ::operator delete[](p, al, std::nothrow);
    }
  }
}

TEST(OperatorNew, ZeroSizeGivesDistinctBlocks) {
  std::vector<void*> v;
  for (int i = 0; i < 100; ++i) {
    v.push_back(op_new(0));
    ASSERT_NE(v.back(), nullptr);
  }
  std::vector<Span> spans;
  for (void* p : v) spans.push_back({p, 1});
  EXPECT_EQ(find_overlap(spans), "");
  for (void* p : v) op_del(p);
}

struct alignas(256) Overaligned {
  char bytes[300];
};

TEST(OperatorNew, NewExpressionsGoToTrimalloc) {
  auto* v = new std::vector<int>(1000, 7);
  EXPECT_TRUE(tm_owns(v));
  EXPECT_TRUE(tm_owns(v->data()));
  delete v;
  auto* o = new Overaligned;
  EXPECT_EQ(addr(o) % 256, 0u);
  EXPECT_TRUE(tm_owns(o));
  delete o;
  auto* arr = new Overaligned[3];
  EXPECT_EQ(addr(arr) % 256, 0u);
  delete[] arr;
  auto up = std::make_unique<std::string>(std::string(100, 'x'));
  EXPECT_TRUE(tm_owns(up.get()));
  EXPECT_TRUE(tm_owns(up->data()));
}

TEST(OperatorNew, HugeSizesThrowBadAllocAndNothrowReturnsNull) {
  const std::size_t huge[] = {SIZE_MAX, SIZE_MAX - 15, static_cast<std::size_t>(PTRDIFF_MAX),
                              static_cast<std::size_t>(PTRDIFF_MAX) + 1, std::size_t{1} << 47};
  for (std::size_t n : huge) {
    EXPECT_THROW(op_new(n), std::bad_alloc) << n;
    EXPECT_THROW(op_new_arr(n), std::bad_alloc) << n;
    EXPECT_THROW(op_new_al(n, std::align_val_t(64)), std::bad_alloc) << n;
    EXPECT_THROW(op_new_arr_al(n, std::align_val_t(4096)), std::bad_alloc) << n;
    EXPECT_EQ(op_new_nt(n, std::nothrow), nullptr) << n;
    EXPECT_EQ(op_new_arr_nt(n, std::nothrow), nullptr) << n;
    EXPECT_EQ(op_new_al_nt(n, std::align_val_t(64), std::nothrow), nullptr) << n;
    EXPECT_EQ(op_new_arr_al_nt(n, std::align_val_t(4096), std::nothrow), nullptr) << n;
  }
  void* p = op_new(100);  // still works
  EXPECT_TRUE(tm_owns(p));
  op_del(p);
}

int g_handler_calls = 0;
void counting_handler() {
  ++g_handler_calls;
  std::set_new_handler(nullptr);  // the next failure throws
}

// [new.delete.single]: on failure operator new calls the installed new_handler and retries, and
// throws bad_alloc only when there is none; the nothrow forms behave the same but return NULL.
TEST(OperatorNew, FailureCallsTheNewHandler) {
  g_handler_calls = 0;
  std::set_new_handler(counting_handler);
  EXPECT_THROW(op_new(SIZE_MAX / 2), std::bad_alloc);
  EXPECT_EQ(g_handler_calls, 1);
  g_handler_calls = 0;
  std::set_new_handler(counting_handler);
  EXPECT_EQ(op_new_nt(SIZE_MAX / 2, std::nothrow), nullptr);
  EXPECT_EQ(g_handler_calls, 1);
  g_handler_calls = 0;
  std::set_new_handler(counting_handler);
  EXPECT_THROW(op_new_al(SIZE_MAX / 2, std::align_val_t(128)), std::bad_alloc);
  EXPECT_EQ(g_handler_calls, 1);
  std::set_new_handler(nullptr);
}

void bad_alloc_handler() {
  ++g_handler_calls;
  throw std::bad_alloc();
}
struct HandlerGaveUp {};
void custom_throw_handler() {
  ++g_handler_calls;
  throw HandlerGaveUp{};
}

// A handler that throws: its exception leaves the throwing forms through trimalloc's operator
// new (built without exceptions, with unwind tables), and the nothrow forms return NULL, for
// which trimalloc borrows the program's C++ runtime's catch (override_new.cpp).
TEST(OperatorNew, AHandlerThatThrowsEndsTheRetries) {
  std::set_new_handler(bad_alloc_handler);
  g_handler_calls = 0;
  EXPECT_EQ(op_new_nt(SIZE_MAX / 2, std::nothrow), nullptr);
  EXPECT_EQ(op_new_arr_nt(SIZE_MAX / 2, std::nothrow), nullptr);
  EXPECT_EQ(op_new_al_nt(SIZE_MAX / 2, std::align_val_t(256), std::nothrow), nullptr);
  EXPECT_EQ(op_new_arr_al_nt(SIZE_MAX / 2, std::align_val_t(64), std::nothrow), nullptr);
  EXPECT_EQ(g_handler_calls, 4);
  g_handler_calls = 0;
  EXPECT_THROW(op_new(SIZE_MAX / 2), std::bad_alloc);
  std::set_new_handler(custom_throw_handler);
  EXPECT_THROW(op_new_arr_al(SIZE_MAX / 2, std::align_val_t(64)), HandlerGaveUp);
  EXPECT_EQ(g_handler_calls, 2);
  std::set_new_handler(nullptr);
  void* p = op_new(100);  // and allocation goes on
  EXPECT_TRUE(tm_owns(p));
  op_del(p);
}

class OperatorDeleteDeathTest : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(OperatorDeleteDeathTest, SizedDeleteWithSizeOfAnotherClass) {
  EXPECT_DEATH(op_del_sz(op_new(16), 100), "trimalloc: .*0x[0-9a-f]+") << "16 deleted as 100";
  EXPECT_DEATH(op_del_arr_sz(op_new_arr(200), 40), "trimalloc: .*0x[0-9a-f]+")
      << "200 deleted as 40";
  EXPECT_DEATH(op_del_sz(op_new(64), 4000), "trimalloc: .*0x[0-9a-f]+")
      << "small deleted with a large size";
  EXPECT_DEATH(op_del_al_sz(op_new_al(64, std::align_val_t(64)), 300, std::align_val_t(64)),
               "trimalloc: .*0x[0-9a-f]+")
      << "aligned 64 deleted as 300";
}

TEST_F(OperatorDeleteDeathTest, DoubleDelete) {
  EXPECT_DEATH(
      {
        void* p = op_new(40);
        op_del(p);
        op_del(p);
      },
      "trimalloc: .*double free of 0x[0-9a-f]+");
}

// ---------------------------------------------------------------------------------------------

bool from_trimalloc(void* sym, std::string& where) {
  Dl_info info{};
  if (!sym) {
    where = "(not found)";
    return false;
  }
  if (!dladdr(sym, &info) || !info.dli_fname) {
    where = "(dladdr failed)";
    return false;
  }
  where = info.dli_fname;
  return where.find("libtrimalloc.so") != std::string::npos;
}

TEST(Symbols, EveryMallocFamilySymbolResolvesToLibtrimalloc) {
  for (const char* name : trimalloc_malloc_symbols) {
    std::string where;
    EXPECT_TRUE(from_trimalloc(dlsym(RTLD_DEFAULT, name), where))
        << name << " resolves to " << where;
  }
  struct {
    const char* name;
    void* addr;
  } taken[] = {
      {"malloc", reinterpret_cast<void*>(&::malloc)},
      {"free", reinterpret_cast<void*>(&::free)},
      {"calloc", reinterpret_cast<void*>(&::calloc)},
      {"realloc", reinterpret_cast<void*>(&::realloc)},
      {"reallocarray", reinterpret_cast<void*>(&::reallocarray)},
      {"posix_memalign", reinterpret_cast<void*>(&::posix_memalign)},
      {"aligned_alloc", reinterpret_cast<void*>(&::aligned_alloc)},
      {"memalign", reinterpret_cast<void*>(&::memalign)},
      {"valloc", reinterpret_cast<void*>(&::valloc)},
      {"pvalloc", reinterpret_cast<void*>(&::pvalloc)},
      {"malloc_usable_size", reinterpret_cast<void*>(&::malloc_usable_size)},
      {"free_sized", reinterpret_cast<void*>(&::free_sized)},
      {"free_aligned_sized", reinterpret_cast<void*>(&::free_aligned_sized)},
      {"_Znwm", reinterpret_cast<void*>(op_new)},
      {"_Znam", reinterpret_cast<void*>(op_new_arr)},
      {"_ZnwmSt11align_val_t", reinterpret_cast<void*>(op_new_al)},
      {"_ZdlPv", reinterpret_cast<void*>(op_del)},
      {"_ZdlPvm", reinterpret_cast<void*>(op_del_sz)},
      {"_ZdlPvmSt11align_val_t", reinterpret_cast<void*>(op_del_al_sz)},
  };
  for (auto& t : taken) {
    std::string where;
    EXPECT_TRUE(from_trimalloc(t.addr, where)) << "&" << t.name << " is in " << where;
    EXPECT_EQ(t.addr, dlsym(RTLD_DEFAULT, t.name)) << t.name;
  }
}

extern "C" {
void* __libc_malloc(std::size_t);
void __libc_free(void*);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void* __libc_valloc(std::size_t);
void* __libc_pvalloc(std::size_t);
int __libc_mallopt(int, int);
struct mallinfo __libc_mallinfo();
}

// glibc's __libc_* names are trimalloc's functions: a block from one of them and a block from
// malloc can be freed through either name (before, __libc_malloc's block was glibc's, and free()
// aborted on it as a foreign pointer).
TEST(Symbols, GlibcsInternalNamesAreTrimallocs) {
  for (std::size_t n : {1u, 100u, 512u, 513u, 5000u}) {
    char* p = static_cast<char*>(opaque(&__libc_malloc)(n));
    ASSERT_NE(p, nullptr);
    EXPECT_TRUE(tm_owns(p)) << n;
    std::memset(p, 'a', n);
    std::free(p);
    p = static_cast<char*>(std::malloc(n));
    std::memset(p, 'b', n);
    opaque (&__libc_free)(p);
    p = static_cast<char*>(opaque(&__libc_calloc)(n, 1));
    ASSERT_NE(p, nullptr);
    EXPECT_TRUE(tm_owns(p));
    EXPECT_EQ(std::count(p, p + n, 0), static_cast<std::ptrdiff_t>(n));
    std::memset(p, 'c', n);
    p = static_cast<char*>(opaque(&__libc_realloc)(p, 2 * n));
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(std::count(p, p + n, 'c'), static_cast<std::ptrdiff_t>(n)) << "realloc kept data";
    opaque (&__libc_free)(p);
  }
  void* a = opaque(&__libc_memalign)(256, 100);
  EXPECT_TRUE(tm_owns(a));
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a) % 256, 0u);
  opaque (&__libc_free)(a);
  const std::uintptr_t page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  for (void* (*f)(std::size_t) : {opaque(&__libc_valloc), opaque(&__libc_pvalloc)}) {
    void* v = f(10);
    EXPECT_TRUE(tm_owns(v));
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(v) % page, 0u);
    std::free(v);
  }
  errno = 0;
  EXPECT_EQ(opaque(&__libc_malloc)(SIZE_MAX), nullptr);
  EXPECT_EQ(errno, ENOMEM);
  EXPECT_EQ(opaque(&__libc_mallopt)(M_ARENA_MAX, 1), 1);
  void* live = std::malloc(100000);
  EXPECT_GT(opaque(&__libc_mallinfo)().uordblks, 100000);
  std::free(live);
}

// __libc_free is free under another name (as in glibc): the same checks, the same message.
TEST(SymbolsDeathTest, LibcFreeOfAForeignPointerAbortsAsFreeDoes) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  int on_stack = 0;
  EXPECT_DEATH(opaque(&__libc_free)(&on_stack),
               "trimalloc: free\\(\\): invalid pointer .*0x[0-9a-f]+");
}

// Memory that glibc allocates for the program comes from trimalloc and is freed by it.
TEST(LibcAllocations, StrdupAndFriends) {
  char* s = strdup("hello trimalloc");
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(tm_owns(s));
  std::free(s);
  s = strndup("abcdefghijklmnopqrstuvwxyz", 600);
  EXPECT_TRUE(tm_owns(s));
  std::free(s);
  std::string big(5000, 'z');
  s = strdup(big.c_str());
  EXPECT_TRUE(tm_owns(s));
  EXPECT_EQ(std::string(s), big);
  std::free(s);
  char* a = nullptr;
  ASSERT_GT(asprintf(&a, "%s-%d-%0300d", "x", 42, 7), 0);
  EXPECT_TRUE(tm_owns(a));
  std::free(a);
  char* rp = realpath("/proc/self", nullptr);
  ASSERT_NE(rp, nullptr);
  EXPECT_TRUE(tm_owns(rp));
  std::free(rp);
}

TEST(LibcAllocations, FopenGetlineOpenMemstream) {
  char path[] = "/tmp/trimalloc-test-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  {
    std::string text;
    for (int i = 0; i < 2000; ++i)
      text += "line " + std::to_string(i) + std::string(i % 300, 'q') + "\n";
    ASSERT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
    close(fd);
  }
  for (int round = 0; round < 20; ++round) {
    std::FILE* f = std::fopen(path, "r");
    ASSERT_NE(f, nullptr);
    EXPECT_TRUE(tm_owns(f)) << "FILE from fopen";
    char* line = nullptr;
    std::size_t cap = 0;
    int lines = 0;
    while (getline(&line, &cap, f) > 0) ++lines;
    EXPECT_EQ(lines, 2000);
    ASSERT_NE(line, nullptr);
    EXPECT_TRUE(tm_owns(line)) << "getline buffer";
    std::free(line);
    std::fclose(f);
  }
  unlink(path);
  char* buf = nullptr;
  std::size_t len = 0;
  std::FILE* ms = open_memstream(&buf, &len);
  ASSERT_NE(ms, nullptr);
  for (int i = 0; i < 1000; ++i) std::fprintf(ms, "%d,", i);
  std::fclose(ms);
  ASSERT_NE(buf, nullptr);
  EXPECT_TRUE(tm_owns(buf));
  EXPECT_EQ(std::string(buf).substr(0, 6), "0,1,2,");
  std::free(buf);
}

TEST(LibcAllocations, GetaddrinfoLocalhost) {
  for (int round = 0; round < 10; ++round) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    int rc = getaddrinfo("localhost", "80", &hints, &res);
    ASSERT_EQ(rc, 0) << gai_strerror(rc);
    ASSERT_NE(res, nullptr);
    EXPECT_TRUE(tm_owns(res));
    int n = 0;
    for (addrinfo* r = res; r; r = r->ai_next) ++n;
    EXPECT_GE(n, 1);
    freeaddrinfo(res);
  }
}

}  // namespace
}  // namespace tmtest
