#include "fatal.h"

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace trimalloc {
namespace {
struct Line {
  char buf[256];
  std::size_t len = 0;
  void put(const char* s) noexcept {
    while (*s && len < sizeof(buf) - 1) buf[len++] = *s++;
  }
  void put_hex(std::uintptr_t v) noexcept {
    char digits[2 + 16];
    int n = 0;
    do {
      digits[n++] = "0123456789abcdef"[v & 15];
      v >>= 4;
    } while (v);
    put("0x");
    while (n && len < sizeof(buf) - 1) buf[len++] = digits[--n];
  }
  void flush() noexcept {
    buf[len++] = '\n';
    ssize_t ignored = write(STDERR_FILENO, buf, len);
    (void)ignored;
  }
};
}  // namespace

void fatal(const char* call, const char* problem, const void* address) noexcept {
  Line line;
  line.put("trimalloc: ");
  line.put(call);
  line.put("(): ");
  line.put(problem);
  line.put(" ");
  line.put_hex(reinterpret_cast<std::uintptr_t>(address));
  line.flush();
  abort();
}

void fatal_message(const char* message) noexcept {
  warn(message);
  abort();
}

void warn(const char* message) noexcept {
  Line line;
  line.put("trimalloc: ");
  line.put(message);
  line.flush();
}

}  // namespace trimalloc
