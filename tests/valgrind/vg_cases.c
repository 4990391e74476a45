/* Programs for memcheck, run by check.cmake as
 *   valgrind --error-exitcode=99 --leak-check=full vg_cases <case>
 * in a -DTRIMALLOC_VALGRIND=ON build. The program calls malloc & co. (override build: linked
 * against libtrimalloc.so, which valgrind does not replace) or, built with VG_TM_API, the tm_*
 * functions. Each case that plants a bug prints "planted" first; check.cmake compares memcheck's
 * report with what the case planted. Every case first makes sure its blocks are trimalloc's:
 * if valgrind had replaced malloc the test would prove nothing. */
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <trimalloc/trimalloc.h>

#ifdef VG_TM_API
#define M(n) tm_malloc(n)
#define C(c, n) tm_calloc(c, n)
#define R(p, n) tm_realloc(p, n)
#define F(p) tm_free(p)
#define AA(a, n) tm_aligned_alloc(a, n)
#define PM(o, a, n) tm_posix_memalign(o, a, n)
#define US(p) tm_usable_size(p)
#define FS(p, n) tm_free_sized(p, n)
#else
#define M(n) malloc(n)
#define C(c, n) calloc(c, n)
#define R(p, n) realloc(p, n)
#define F(p) free(p)
#define AA(a, n) aligned_alloc(a, n)
#define PM(o, a, n) posix_memalign(o, a, n)
#define US(p) malloc_usable_size(p)
#define FS(p, n) tm_free_sized(p, n)
#endif

/* GCC takes tm_owns(const void*) for a read of the fresh (uninitialised) block. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
static void* ours(void* p) {
  if (p == NULL || !tm_owns(p)) {
    fprintf(stderr, "vg_cases: %p is not a trimalloc block\n", p);
    exit(3);
  }
  return p;
}
#pragma GCC diagnostic pop

/* volatile: the compiler must not drop, move or merge the planted accesses. */
static void poke(volatile char* p, size_t i) {
  p[i] = 1;
}
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuse-after-free" /* the planted bug */
static int peek(volatile const char* p, size_t i) {
  return p[i];
}
#pragma GCC diagnostic pop

static int overrun(size_t size) {
  char* p = ours(M(size));
  memset(p, 0, size);
  puts("planted");
  fflush(stdout);
  poke(p, size); /* one byte past the end */
  F(p);
  return 0;
}

static int underrun(size_t size) {
  char* p = ours(M(size));
  memset(p, 0, size);
  puts("planted");
  fflush(stdout);
  poke(p - 1, 0); /* the byte before the block */
  F(p);
  return 0;
}

/* malloc'd bytes are undefined to memcheck, calloc'd bytes defined. */
static int uninitialised(void) {
  unsigned char* z = ours(C(1, 32));
  unsigned char* p = ours(M(32));
  p[0] = 0;
  puts("planted");
  fflush(stdout);
  if (z[5] + p[0] == 1) puts("never");                   /* all defined: fine */
  if (((volatile unsigned char*)p)[5] == 42) puts("42"); /* a branch on an undefined byte */
  F(z);
  F(p);
  return 0;
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuse-after-free" /* the planted bug */
static int double_free(void) {
  char* p = ours(M(40));
  F(p);
  puts("planted");
  fflush(stdout);
  F(p);
  return 0;
}
#pragma GCC diagnostic pop

static int use_after_free(size_t size, size_t at) {
  char* p = ours(M(size));
  memset(p, 7, size);
  F(p);
  puts("planted");
  fflush(stdout);
  return peek(p, at) == 42; /* at 0: where trimalloc keeps its free-list link */
}

/* A block freed by tm_free_batch among others: memcheck must see it freed like any other. */
static int use_after_batch_free(void) {
  void* blocks[40];
  for (int i = 0; i < 40; ++i) blocks[i] = ours(M(i == 20 ? 40 : (size_t)(i * 29 % 700) + 1));
  memset(blocks[20], 7, 40);
  tm_free_batch(blocks, 40);
  puts("planted");
  fflush(stdout);
  return peek(blocks[20], 8) == 42;
}

/* noinline: the leak report must name this function as the allocation site. */
__attribute__((noinline)) void* leak_small_here(void) {
  return ours(M(77));
}
__attribute__((noinline)) void* leak_large_here(void) {
  return ours(M(200000));
}
void* volatile g_sink;

static int leak(void) {
  g_sink = leak_small_here();
  g_sink = leak_large_here();
  g_sink = NULL; /* both blocks now unreachable */
  puts("planted");
  return 0;
}

/* Everything a correct program does, including what makes the engine read and write freed
 * blocks (reuse, remote frees from another thread, in-place realloc, trim): must be clean. */
enum { kSlots = 512 };
static void* g_cross[kSlots];

static void* freer(void* arg) {
  (void)arg;
  for (int i = 0; i < kSlots; ++i) F(g_cross[i]); /* frees of another thread's blocks */
  return NULL;
}

static int clean(void) {
  unsigned long long sum = 0;
  for (int round = 0; round < 4; ++round) {
    void* live[256];
    for (int i = 0; i < 256; ++i) {
      size_t n = (size_t)(i * 37 + round * 11) % 1300 + (i % 7 == 0 ? 20000 : 0);
      unsigned char* p = ours(M(n));
      memset(p, i, n);
      live[i] = p;
    }
    for (int i = 0; i < 256; i += 2) { /* free half, reallocate: reuse of freed blocks */
      F(live[i]);
      live[i] = ours(C(3, (size_t)i + 1));
      for (int j = 0; j < 3 * i + 3; ++j) sum += ((unsigned char*)live[i])[j];
    }
    for (int i = 1; i < 256; i += 2) { /* realloc: grow and shrink, in place and moving */
      size_t n = (size_t)(i * 37 + round * 11) % 1300 + (i % 7 == 0 ? 20000 : 0);
      unsigned char* p = ours(R(live[i], n / 2 + 1));
      for (size_t j = 0; j < n / 2 + 1; ++j) sum += p[j];
      p = ours(R(p, n + 700));
      memset(p + n / 2 + 1, 1, n + 700 - (n / 2 + 1));
      live[i] = p;
    }
    for (int i = 0; i < 256; ++i) {
      size_t u = US(live[i]);
      memset(live[i], 3, u); /* the whole usable size is the program's */
      F(live[i]);
    }
  }
  void* a = ours(AA(4096, 100));
  void* b = NULL;
  if (PM(&b, 64, 3000) != 0) return 2;
  ours(b);
  memset(a, 1, 100);
  memset(b, 1, 3000);
  F(a);
  F(b);
  void* s = ours(M(48));
  memset(s, 0, 48);
  FS(s, 48);
  for (int i = 0; i < kSlots; ++i) {
    g_cross[i] = ours(M((size_t)(i % 64) * 8 + 1 + (i % 50 == 0 ? 5000 : 0)));
    memset(g_cross[i], 9, 1);
  }
  pthread_t t;
  if (pthread_create(&t, NULL, freer, NULL) != 0) return 2;
  pthread_join(t, NULL);
  for (int i = 0; i < 300; ++i) F(ours(M(16))); /* pools that received remote frees */
  void* batch[600];
  for (int i = 0; i < 600; ++i) {
    batch[i] = ours(M((size_t)(i % 40) * 13 + 1 + (i % 100 == 0 ? 9000 : 0)));
    memset(batch[i], 5, 1);
  }
  F(batch[7]);
  batch[7] = NULL;
  tm_free_batch(batch, 600); /* small, large and null, many per pool */
  tm_trim(TM_TRIM_ALL);
  char* d = ours(M(32));
  strcpy(d, "after trim");
  sum += (unsigned char)d[0];
  F(d);
  printf("clean %llu\n", sum);
  return 0;
}

int main(int argc, char** argv) {
  const char* c = argc > 1 ? argv[1] : "";
  if (!strcmp(c, "overrun_small")) return overrun(24);
  if (!strcmp(c, "overrun_small_exact")) return overrun(64); /* a size class boundary */
  if (!strcmp(c, "overrun_large")) return overrun(100000);
  if (!strcmp(c, "underrun_large")) return underrun(100000);
  if (!strcmp(c, "double_free")) return double_free();
  if (!strcmp(c, "uninitialised")) return uninitialised();
  if (!strcmp(c, "uaf_small")) return use_after_free(40, 0);
  if (!strcmp(c, "uaf_large")) return use_after_free(50000, 0);
  if (!strcmp(c, "uaf_batch")) return use_after_batch_free();
  if (!strcmp(c, "leak")) return leak();
  if (!strcmp(c, "clean")) return clean();
  fprintf(stderr,
          "usage: vg_cases overrun_small|overrun_small_exact|overrun_large|underrun_large|\n"
          "                double_free|uninitialised|uaf_small|uaf_large|uaf_batch|leak|clean\n");
  return 2;
}
