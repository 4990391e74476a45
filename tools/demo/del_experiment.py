"""The documents' experiment: build millions of small objects, drop them, and watch RSS.

Run by tools/trimalloc-demo once per allocator. Prints one CSV line per scenario:
scenario,allocator,base_mib,peak_mib,after_free_mib,after_release_mib,after_idle_mib
("-" for after_release_mib in the scenario that makes no release call).
"""
import ctypes
import gc
import sys
import time

N = int(sys.argv[2]) if len(sys.argv) > 2 else 2_000_000
allocator = sys.argv[1]


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def explicit_release():
    """Each allocator's own "give memory back" call, as a user would make it."""
    gc.collect()
    libc = ctypes.CDLL(None)
    if allocator in ("glibc", "trimalloc"):  # under trimalloc, malloc_trim is trimalloc's
        libc.malloc_trim(0)


class Node:
    def __init__(self, i):
        self.i = i
        self.name = "node-%d" % i
        self.attrs = {"k": i}


def run(scenario, keep_every, release=True):
    gc.collect()
    base = rss_mib()
    nodes = [Node(i) for i in range(N)]
    peak = rss_mib()
    if keep_every:
        survivors = nodes[::keep_every]  # scattered: one in every keep_every objects
    del nodes
    after_free = rss_mib()
    after_release = "-"
    if release:
        explicit_release()
        after_release = f"{rss_mib():.1f}"
    time.sleep(2)
    after_idle = rss_mib()
    print(f"{scenario},{allocator},{base:.1f},{peak:.1f},{after_free:.1f},"
          f"{after_release},{after_idle:.1f}", flush=True)
    if keep_every:
        del survivors


run("del everything", 0)
run("keep 1% scattered", 100)
# The documents' complaint itself: no gc.collect(), no malloc_trim, just wait. Last, because
# an allocator that returns nothing by itself would leave its heap to the scenarios after it.
run("del everything (no call)", 0, release=False)
