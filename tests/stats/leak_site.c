/* A program with one leaking call site (tests/stats/check_stats.py profile): it takes a snapshot,
 * leaks 64-byte blocks from leak_here() while other sites churn (allocate and free) or hold a
 * fixed amount, takes a second snapshot and writes both. */
#include <stdio.h>
#include <stdlib.h>

#include "trimalloc/stats.h"

__attribute__((noinline)) static void* leak_here(size_t n) {
  return malloc(n); /* LEAK-LINE */
}
__attribute__((noinline)) static void* churn(size_t n) { return malloc(n); }
__attribute__((noinline)) static void* steady(size_t n) { return malloc(n); }

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s before.snap after.snap\n", argv[0]);
    return 2;
  }
  if (tm_profile_rate() == 0) tm_profile_set_rate(64 * 1024);
  static void* held[20000];
  for (int i = 0; i < 20000; ++i) held[i] = steady(256);
  if (tm_snapshot_take() < 0 || tm_snapshot_write(argv[1]) != 0) return 1;
  for (int i = 0; i < 200000; ++i) {
    void* p = leak_here(64);
    *(volatile char*)p = 1;
    void* q = churn(128 + (i & 255));
    *(volatile char*)q = 1;
    free(q);
  }
  for (int i = 0; i < 20000; i += 2) free(held[i]), held[i] = steady(256);
  if (tm_snapshot_take() < 0 || tm_snapshot_write(argv[2]) != 0) return 1;
  return 0;
}
