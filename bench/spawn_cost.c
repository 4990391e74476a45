/* What an allocator under LD_PRELOAD costs every process it is loaded into: starts PROGRAM N
 * times with LD_PRELOAD=LIB (nothing else in its environment), waits for each, and prints the
 * children's CPU time (user + system, getrusage(RUSAGE_CHILDREN)) and minor page faults per
 * process. CPU time rather than wall time, because on a shared machine the wall time of a short
 * process moves with other people's load. LIB "" runs the program without a preload.
 *
 *   trimalloc_bench_spawn_cost N LIB PROGRAM [ARG...]
 *
 * Shell scripts, build systems and configure scripts start thousands of short processes, so a
 * preloaded allocator's start-up cost (loading it and the libraries it needs, running its
 * initialisers, faulting in the pages they touch) is paid thousands of times. */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s N LIB PROGRAM [ARG...]\n", argv[0]);
    return 2;
  }
  const long n = strtol(argv[1], NULL, 10);
  char preload[4096];
  snprintf(preload, sizeof preload, "LD_PRELOAD=%s", argv[2]);
  char* env[] = {preload, NULL};
  for (long i = 0; i < n; ++i) {
    pid_t pid;
    if (posix_spawn(&pid, argv[3], NULL, NULL, argv + 3, env) != 0) {
      perror("posix_spawn");
      return 1;
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fprintf(stderr, "%s did not exit with 0\n", argv[3]);
      return 1;
    }
  }
  struct rusage ru;
  getrusage(RUSAGE_CHILDREN, &ru);
  const double user = ru.ru_utime.tv_sec * 1e6 + ru.ru_utime.tv_usec;
  const double sys = ru.ru_stime.tv_sec * 1e6 + ru.ru_stime.tv_usec;
  printf("%-50s %7.0f us CPU per process (user %.0f, system %.0f), %.0f minor faults\n",
         argv[2][0] ? argv[2] : "(no preload)", (user + sys) / n, user / n, sys / n,
         (double)ru.ru_minflt / n);
  return 0;
}
