/* Preload probe: loaded after libtrimalloc.so
 * (LD_PRELOAD="libtrimalloc.so:libtrimalloc_preload_probe.so") into a program the preload tests
 * run. When TRIMALLOC_PROBE_OUT names a file, its constructor appends one line per process: "<pid>
 * ok" if every malloc-family symbol the process resolves (dlsym(RTLD_DEFAULT, ...)) lives in
 * libtrimalloc.so and a malloc'd block is trimalloc's (tm_owns), else "<pid> FAIL <what> <where>".
 * It defines no allocation function itself. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "malloc_symbols.h"

/* The first object after the main program in link-map order (the global search order), skipping
 * the vDSO: with a working preload, libtrimalloc.so. */
static int first_after_main(struct dl_phdr_info* info, size_t size, void* data) {
  (void)size;
  const char** first = (const char**)data;
  if (!info->dlpi_name || !*info->dlpi_name || strstr(info->dlpi_name, "linux-vdso")) return 0;
  *first = info->dlpi_name;
  return 1;
}

/* Does the process bind `name` to libtrimalloc.so? dlsym(RTLD_DEFAULT) says where, except that a
 * non-PIE program (Debian's python3) that takes a function's address exports a canonical PLT stub
 * for it (an undefined symbol with a value); calls through that stub go to the first definition
 * after the program, which must then be libtrimalloc.so's. */
static int bound_to_trimalloc(const char* name, const char* first, const char** where) {
  void* sym = dlsym(RTLD_DEFAULT, name);
  Dl_info info;
  const ElfW(Sym)* entry = NULL;
  memset(&info, 0, sizeof info);
  if (!sym) {
    *where = "(not found)";
    return 0;
  }
  if (!dladdr1(sym, &info, (void**)&entry, RTLD_DL_SYMENT) || !info.dli_fname) {
    *where = "(dladdr failed)";
    return 0;
  }
  *where = info.dli_fname;
  if (strstr(info.dli_fname, "libtrimalloc.so")) return 1;
  if (entry && entry->st_shndx == SHN_UNDEF && first && strstr(first, "libtrimalloc.so")) {
    void* own = dlopen(first, RTLD_LAZY | RTLD_NOLOAD);
    void* def = own ? dlsym(own, name) : NULL;
    Dl_info di;
    memset(&di, 0, sizeof di);
    int ok = def && dladdr(def, &di) && di.dli_fname && strstr(di.dli_fname, "libtrimalloc.so");
    if (own) dlclose(own);
    if (ok) return 1;
  }
  return 0;
}

__attribute__((constructor)) static void trimalloc_preload_probe(void) {
  const char* out = getenv("TRIMALLOC_PROBE_OUT");
  if (!out || !*out) return;
  const char* bad = NULL;
  const char* where = "";
  const char* first = NULL;
  dl_iterate_phdr(first_after_main, &first);
  for (size_t i = 0; i < sizeof trimalloc_malloc_symbols / sizeof trimalloc_malloc_symbols[0];
       ++i) {
    if (!bound_to_trimalloc(trimalloc_malloc_symbols[i], first, &where)) {
      bad = trimalloc_malloc_symbols[i];
      break;
    }
  }
  if (!bad) {
    int (*owns)(const void*) = (int (*)(const void*))dlsym(RTLD_DEFAULT, "tm_owns");
    void* p = malloc(100);
    if (!owns || !p || !owns(p)) {
      bad = "tm_owns(malloc(100))";
      where = owns ? "not trimalloc's block" : "tm_owns not found";
    }
    free(p);
  }
  char line[512];
  int n = bad ? snprintf(line, sizeof line, "%ld FAIL %s %s\n", (long)getpid(), bad, where)
              : snprintf(line, sizeof line, "%ld ok\n", (long)getpid());
  int fd = open(out, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd >= 0) {
    if (write(fd, line, (size_t)n) != n) { /* nothing more a probe can do */
    }
    close(fd);
  }
}
