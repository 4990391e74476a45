// TRIMALLOC_* environment variables: a malformed value is reported on stderr once, naming the
// variable, and the program still runs; valid values are taken. Runs /bin/true with
// libtrimalloc.so preloaded (only built with the malloc override, outside sanitizer builds).
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

namespace {
std::string run(const std::string& env) {
  std::string cmd = env + " LD_PRELOAD=" TRIMALLOC_LIB " /bin/true 2>&1; echo \"exit=$?\"";
  FILE* f = popen(cmd.c_str(), "r");
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, f)) out += buf;
  pclose(f);
  return out;
}
}  // namespace

TEST(Environment, MalformedValuesAreReportedByName) {
  std::string out = run("TRIMALLOC_DECAY_MS=soon");
  EXPECT_NE(out.find("trimalloc: TRIMALLOC_DECAY_MS='soon' is not valid"), std::string::npos)
      << out;
  EXPECT_NE(out.find("exit=0"), std::string::npos) << out;
  out = run("TRIMALLOC_MAX_CACHED=12Q");
  EXPECT_NE(out.find("TRIMALLOC_MAX_CACHED='12Q' is not valid"), std::string::npos) << out;
  out = run("TRIMALLOC_BACKGROUND_THREAD=2");
  EXPECT_NE(out.find("TRIMALLOC_BACKGROUND_THREAD='2' is not valid"), std::string::npos) << out;
  out = run("TRIMALLOC_DECAY_MS=99999999999999999999999");
  EXPECT_NE(out.find("TRIMALLOC_DECAY_MS="), std::string::npos) << out;
}

TEST(Environment, ValidValuesAreSilent) {
  std::string out =
      run("TRIMALLOC_DECAY_MS=250 TRIMALLOC_MAX_CACHED=16M TRIMALLOC_BACKGROUND_THREAD=0");
  EXPECT_EQ(out, "exit=0\n");
}
