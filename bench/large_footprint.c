/* What large blocks cost in memory beyond their bytes, under whatever allocator is preloaded:
 *
 *   trimalloc_bench_large_footprint rss SIZE COUNT
 *       allocates COUNT blocks of SIZE bytes, writes every byte, and prints the anonymous
 *       resident memory that grew, per byte of the blocks (1.00: no overhead);
 *   trimalloc_bench_large_footprint address-space SIZE MIB
 *       sets RLIMIT_AS to the address space already mapped plus MIB MiB, allocates blocks of
 *       SIZE bytes until malloc fails, frees them and trims (malloc_trim), three rounds, and
 *       prints how many fitted in each round and the address space mapped after each.
 *
 * A block that takes a page more than its size (jemalloc's cache-oblivious padding) shows in
 * the first; address space an allocator cannot fill, or does not give back, in the second. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* Resident minus file-backed pages, in bytes; or VmSize, in bytes (statm fields 2-3, 1). */
static long statm_bytes(int want_size) {
  FILE* f = fopen("/proc/self/statm", "r");
  long size = 0, resident = 0, shared = 0;
  if (f == NULL) return -1;
  if (fscanf(f, "%ld %ld %ld", &size, &resident, &shared) != 3) size = resident = shared = 0;
  fclose(f);
  return (want_size ? size : resident - shared) * sysconf(_SC_PAGESIZE);
}

static int rss(size_t size, long count) {
  char** blocks = calloc((size_t)count, sizeof *blocks);
  if (blocks == NULL) return 1;
  const long before = statm_bytes(0);
  for (long i = 0; i < count; ++i) {
    if ((blocks[i] = malloc(size)) == NULL) return 1;
    memset(blocks[i], 1, size);
  }
  const long grown = statm_bytes(0) - before;
  printf("%ld blocks of %zu bytes, written: resident memory grew by %.3f times their bytes\n",
         count, size, (double)grown / ((double)size * (double)count));
  for (long i = 0; i < count; ++i) free(blocks[i]);
  free(blocks);
  return 0;
}

static int address_space(size_t size, long mib) {
  enum { kMaxBlocks = 1 << 20 };
  static void* blocks[kMaxBlocks];
  const long start = statm_bytes(1);
  struct rlimit limit = {(rlim_t)start + ((rlim_t)mib << 20), RLIM_INFINITY};
  if (setrlimit(RLIMIT_AS, &limit) != 0) return 1;
  for (int round = 0; round < 3; ++round) {
    long n = 0;
    while (n < kMaxBlocks && (blocks[n] = malloc(size)) != NULL) {
      memset(blocks[n], 1, 64);
      ++n;
    }
    for (long i = 0; i < n; ++i) free(blocks[i]);
    malloc_trim(0);
    printf(
        "round %d: %ld blocks of %zu bytes fitted in %ld MiB (%.1f%% of it); mapped after "
        "free and trim: %+.1f MiB against the start\n",
        round, n, size, mib, 100.0 * (double)n * (double)size / (double)((size_t)mib << 20),
        (double)(statm_bytes(1) - start) / 1048576.0);
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 4 && strcmp(argv[1], "rss") == 0 && atol(argv[2]) > 0 && atol(argv[3]) > 0)
    return rss(strtoul(argv[2], NULL, 10), atol(argv[3]));
  if (argc == 4 && strcmp(argv[1], "address-space") == 0 && atol(argv[2]) > 0 && atol(argv[3]) > 0)
    return address_space(strtoul(argv[2], NULL, 10), atol(argv[3]));
  fprintf(stderr, "usage: %s rss SIZE COUNT | address-space SIZE MIB\n", argv[0]);
  return 2;
}
