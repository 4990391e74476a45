"""Asks for more memory than the machine has (RAM plus swap plus 1 GiB) with bytes(n), which
calloc()s the block and never touches it, and prints what happened. Run with and without
trimalloc, the output must be the same: under the kernel's default heuristic overcommit, and
under strict accounting, glibc's malloc fails and Python raises MemoryError; with overcommit
always on, both get the block."""
import os

ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
with open("/proc/meminfo") as f:
    swap = [int(line.split()[1]) * 1024 for line in f if line.startswith("SwapTotal:")][0]
n = ram + swap + 2**30
try:
    b = bytes(n)
    print("allocated", len(b) == n)
    del b
except MemoryError:
    print("MemoryError")
b = bytes(1 << 20)  # and allocation goes on
print("then", len(b))
