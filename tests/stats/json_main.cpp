// Prints tm_stats_print(stdout, argv[1]) after making a small and a large heap (tests/stats).
#include <cstdio>
#include <cstdlib>

#include "trimalloc/stats.h"
#include "trimalloc/trimalloc.h"

int main(int argc, char** argv) {
  void* blocks[1000];
  for (int i = 0; i < 1000; ++i) blocks[i] = tm_malloc(i % 2 ? 64 : 4000);
  int rc = tm_stats_print(stdout, argc > 1 ? argv[1] : "json");
  for (void* p : blocks) tm_free(p);
  return rc == 0 ? 0 : 1;
}
