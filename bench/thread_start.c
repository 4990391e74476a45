/* What a thread's start costs when its first act is to allocate: starts N threads, PAR at a
 * time, each of which allocates one block of SIZE bytes, writes it, frees it and ends, and
 * prints the wall time per thread. Run it under LD_PRELOAD to compare allocators. With SIZE
 * over 512 the block is trimalloc's first large one in the thread: jemalloc makes the thread's
 * cache then (from arena 0's spare, allocator/large.cpp) and trimalloc binds the thread to its
 * arena.
 *
 *   trimalloc_bench_thread_start N PAR SIZE
 *
 * Servers that start a thread per connection or per task pay this for every one. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static size_t g_size;

static void* run(void* arg) {
  char* p = malloc(g_size);
  if (p == NULL) return p;
  memset(p, 1, g_size);
  free(p);
  return arg;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s N PAR SIZE\n", argv[0]);
    return 2;
  }
  const long n = strtol(argv[1], NULL, 10), par = strtol(argv[2], NULL, 10);
  g_size = strtoul(argv[3], NULL, 10);
  if (n <= 0 || par <= 0 || par > 1024 || g_size == 0) {
    fprintf(stderr, "%s: N > 0, 0 < PAR <= 1024, SIZE > 0\n", argv[0]);
    return 2;
  }
  pthread_t threads[1024];
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  long started = 0;
  while (started < n) {
    long batch = n - started < par ? n - started : par;
    for (long k = 0; k < batch; ++k) {
      if (pthread_create(&threads[k], NULL, run, NULL) != 0) {
        fprintf(stderr, "%s: pthread_create failed\n", argv[0]);
        return 1;
      }
    }
    for (long k = 0; k < batch; ++k) pthread_join(threads[k], NULL);
    started += batch;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  const double us =
      ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / 1e3;
  printf("%.2f us per thread (%ld threads, %ld at a time, %zu-byte block)\n", us / (double)n, n,
         par, g_size);
  return 0;
}
