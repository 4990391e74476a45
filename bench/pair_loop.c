/* A malloc+free loop with nothing else in it, for counting instructions per pair under
 * callgrind (bench/count-instructions), on machines where hardware counters are not available
 * (virtual machines often have none). Usage: trimalloc_bench_pair_loop SIZE COUNT. The first
 * 1000 pairs warm the allocator up; the script subtracts two runs of different COUNT, so start-up
 * and exit cost cancel out. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s SIZE COUNT\n", argv[0]);
    return 2;
  }
  size_t size = strtoul(argv[1], NULL, 10);
  long count = strtol(argv[2], NULL, 10);
  for (int i = 0; i < 1000; ++i) free(malloc(size));
  for (long i = 0; i < count; ++i) {
    void* p = malloc(size);
    __asm__ volatile("" : : "r"(p) : "memory");
    *(volatile char*)p = 1; /* the block is written, as in bench/micro's BM_pair */
    free(p);
  }
  return 0;
}
