/* Random 8-byte reads over one big malloc'd array, under whatever allocator is preloaded:
 *
 *   trimalloc_bench_big_array_walk MIB [READS]
 *
 * writes the whole array, then times READS (20 M) reads at pseudo-random places and prints ns
 * per read. Bound by the TLB, so it shows whether the array got transparent huge pages: under
 * the kernel's "always" setting glibc's big block (its own mmap) gets them, trimalloc's (which
 * opts out, arenas/os.cpp) does not (docs/bench.md, "Transparent huge pages"). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s MIB [READS]\n", argv[0]);
    return 2;
  }
  const size_t words = strtoull(argv[1], NULL, 10) << 17; /* 8-byte words in MIB MiB */
  const long reads = argc > 2 ? strtol(argv[2], NULL, 10) : 20000000;
  uint64_t* a = malloc(words * sizeof *a);
  if (a == NULL || words == 0 || reads <= 0) {
    fprintf(stderr, "big_array_walk: no array of %s MiB\n", argv[1]);
    return 1;
  }
  for (size_t i = 0; i < words; ++i) a[i] = i * 2654435761u;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  uint64_t x = 1, sum = 0;
  for (long k = 0; k < reads; ++k) {
    x = x * 6364136223846793005ull + 1442695040888963407ull; /* an LCG; its high bits index */
    sum += a[(x >> 17) % words];
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  const double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
  printf("%.2f ns per read (checksum %llu)\n", ns / (double)reads, (unsigned long long)sum);
  free(a);
  return 0;
}
