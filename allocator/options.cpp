#include "options.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "arena.h"
#include "config.h"
#include "decay.h"
#include "fatal.h"
#include "trimalloc/trimalloc.h"

namespace trimalloc {

Options g_options;

namespace {
struct OptionSpec {
  const char* name;  // tm_option_* name, and TRIMALLOC_<NAME upper-cased> in the environment
  const char* env;
  std::atomic<long long>* value;
  long long min, max;
  bool size;  // accepts K/M/G suffixes
  const char* meaning;
};

const OptionSpec kSpecs[] = {
    {"decay_ms", "TRIMALLOC_DECAY_MS", &g_options.decay_ms, -1, 3600000, false,
     "milliseconds, -1 (never) to 3600000"},
    {"max_cached", "TRIMALLOC_MAX_CACHED", &g_options.max_cached, 0, 1ll << 50, true,
     "bytes, optionally with K, M or G"},
    {"background_thread", "TRIMALLOC_BACKGROUND_THREAD", &g_options.background_thread, 0, 1, false,
     "0 or 1"},
    {"placement", "TRIMALLOC_PLACEMENT", &g_fullest_placement, 0, 1, false,
     "1 (fullest arena and pool first) or 0 (the opposite, for comparison)"},
};

const OptionSpec* find(const char* name) {
  if (name == nullptr) return nullptr;
  for (const OptionSpec& s : kSpecs)
    if (std::strcmp(s.name, name) == 0) return &s;
  return nullptr;
}

void report_bad(const char* env, const char* text, const char* meaning) {
  // Built by hand: snprintf into a stack buffer does not allocate, but keep it dependency-free.
  char line[256];
  std::size_t n = 0;
  auto put = [&](const char* s) {
    while (*s && n < sizeof line - 1) line[n++] = *s++;
  };
  put(env);
  put("='");
  put(text);
  put("' is not valid (expected ");
  put(meaning);
  put("); using the default");
  line[n] = 0;
  warn(line);
}
}  // namespace

bool parse_integer(const char* text, long long* out) noexcept {
  if (text == nullptr || *text == 0) return false;
  const char* p = text;
  bool negative = *p == '-';
  if (*p == '-' || *p == '+') ++p;
  if (*p < '0' || *p > '9') return false;
  unsigned long long v = 0;
  for (; *p >= '0' && *p <= '9'; ++p) {
    if (v > (~0ull >> 1) / 10) return false;
    v = v * 10 + static_cast<unsigned>(*p - '0');
  }
  if (*p != 0 || v > static_cast<unsigned long long>(~0ull >> 1)) return false;
  *out = negative ? -static_cast<long long>(v) : static_cast<long long>(v);
  return true;
}

bool parse_size(const char* text, long long* out) noexcept {
  if (text == nullptr) return false;
  std::size_t len = std::strlen(text);
  if (len == 0 || len > 30) return false;
  char digits[32];
  std::memcpy(digits, text, len + 1);
  int shift = 0;
  switch (digits[len - 1]) {
    case 'k':
    case 'K':
      shift = 10;
      break;
    case 'm':
    case 'M':
      shift = 20;
      break;
    case 'g':
    case 'G':
      shift = 30;
      break;
    default:
      break;
  }
  if (shift) digits[len - 1] = 0;
  long long v;
  if (!parse_integer(digits, &v) || v < 0) return false;
  if (shift && static_cast<unsigned long long>(v) > ((~0ull >> 1) >> shift)) return false;
  *out = v << shift;
  return true;
}

void options_init() noexcept {
  static std::atomic<bool> done{false};
  if (done.exchange(true)) return;
  // Hardening is a build option (so the default build's fast path carries none of it); say so
  // rather than let TRIMALLOC_SECURE look as if it had worked.
  if (const char* secure = getenv("TRIMALLOC_SECURE")) {
    bool on = std::strcmp(secure, "1") == 0, off = std::strcmp(secure, "0") == 0;
    if (!on && !off)
      report_bad("TRIMALLOC_SECURE", secure, "0 or 1");
    else if (on != kSecure)
      warn(kSecure ? "TRIMALLOC_SECURE=0: this library was built hardened "
                     "(-DTRIMALLOC_SECURE=ON) and stays hardened"
                   : "TRIMALLOC_SECURE=1: this library was built without hardening; build with "
                     "-DTRIMALLOC_SECURE=ON for hardened mode");
  }
  for (const OptionSpec& s : kSpecs) {
    const char* text = getenv(s.env);
    if (text == nullptr) continue;
    long long v;
    bool ok = s.size ? parse_size(text, &v) : parse_integer(text, &v);
    if (!ok || v < s.min || v > s.max) {
      report_bad(s.env, text, s.meaning);
      continue;
    }
    s.value->store(v, std::memory_order_relaxed);
  }
}

}  // namespace trimalloc

using namespace trimalloc;

extern "C" int tm_option_set(const char* name, long long value) {
  const OptionSpec* s = find(name);
  if (s == nullptr || value < s->min || value > s->max) return EINVAL;
  s->value->store(value, std::memory_order_relaxed);
  if (s->value == &g_options.decay_ms) decay_apply_to_large();
  return 0;
}

extern "C" int tm_option_get(const char* name, long long* value) {
  const OptionSpec* s = find(name);
  if (s == nullptr || value == nullptr) return EINVAL;
  *value = s->value->load(std::memory_order_relaxed);
  return 0;
}
