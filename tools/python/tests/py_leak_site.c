/* Known C allocation sites for the Python module's snapshot test (test_trimalloc.py), called
 * through ctypes from a python3 running under trimalloc. Built with -O0 -g so that the diff tool
 * can name the lines. */
#include <stdlib.h>

static void** g_held;
static size_t g_count;

__attribute__((noinline)) static void* leak_one(size_t size) {
  return malloc(size); /* PY-LEAK-LINE */
}
__attribute__((noinline)) static void* churn_one(size_t size) {
  return malloc(size); /* PY-CHURN-LINE */
}

/* Allocates n blocks of `size` bytes from PY-LEAK-LINE and keeps them; returns n, or 0. */
size_t leak(size_t n, size_t size) {
  void** held = realloc(g_held, (g_count + n) * sizeof *held);
  if (held == NULL) return 0;
  g_held = held;
  for (size_t i = 0; i < n; ++i) {
    void* p = leak_one(size);
    if (p == NULL) return 0;
    *(volatile char*)p = 1;
    g_held[g_count++] = p;
  }
  return n;
}

/* Allocates n blocks from PY-CHURN-LINE, all live at once, then frees them all: no growth. */
size_t hold_then_free(size_t n, size_t size) {
  void** blocks = malloc(n * sizeof *blocks);
  if (blocks == NULL) return 0;
  for (size_t i = 0; i < n; ++i) {
    blocks[i] = churn_one(size);
    if (blocks[i] != NULL) *(volatile char*)blocks[i] = 1;
  }
  for (size_t i = 0; i < n; ++i) free(blocks[i]);
  free(blocks);
  return n;
}
