"""CPython side of bench/gc/run: the same graphs as gc_bench.cpp, timed around gc.collect()
(process CPU time, like the C++ programs).

    python3 gc_bench.py N REPS     prints:  python <scenario> <N> <ns per object>
"""
import gc
import statistics
import sys
import time


class Node:
    __slots__ = ("next", "prev", "__weakref__")

    def __init__(self):
        self.next = None
        self.prev = None


def build_list(n):
    head = Node()
    tail = head
    for _ in range(n - 1):
        node = Node()
        tail.next = node
        node.prev = tail
        tail = node
    return head


def build_cycles(n):
    holders = []
    for _ in range(n // 2):
        a, b = Node(), Node()
        a.next = b
        b.next = a
        holders.append(a)
    return holders


def median_ns(reps, n, run):
    return statistics.median(run() * 1e9 / n for _ in range(reps))


def report(scenario, n, ns):
    print(f"python {scenario} {n} {ns:.2f}", flush=True)


def timed_collect(expected):
    start = time.process_time()
    found = gc.collect()
    seconds = time.process_time() - start
    if expected is not None and found != expected:
        raise SystemExit(f"gc.collect() found {found}, expected {expected}")
    return seconds


def main():
    n = int(sys.argv[1])
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    gc.disable()
    gc.collect()

    def cycles_garbage():
        build_cycles(n)
        return timed_collect(n // 2 * 2)

    def list_garbage():
        build_list(n)
        return timed_collect(n)

    report("cycles_garbage", n, median_ns(reps, n, cycles_garbage))
    report("list_garbage", n, median_ns(reps, n, list_garbage))

    holders = build_cycles(n)
    gc.collect()
    report("cycles_live", n, median_ns(reps, n, lambda: timed_collect(0)))
    del holders
    gc.collect()

    head = build_list(n)
    gc.collect()
    report("list_live", n, median_ns(reps, n, lambda: timed_collect(0)))
    del head
    gc.collect()

    for automatic in (True, False):
        def build():
            if automatic:
                gc.enable()
            start = time.process_time()
            head = build_list(n)
            seconds = time.process_time() - start
            gc.disable()
            del head
            gc.collect()  # the list's neighbour pairs are cycles: not part of the timing
            return seconds
        report("build_auto_on" if automatic else "build_auto_off", n, median_ns(reps, n, build))
        gc.collect()

    # 16-byte GC header in front of every container object, plus the 8-byte reference count.
    gc_header = sys.getsizeof(Node()) - Node.__basicsize__
    print(f"python bookkeeping_bytes {n} {gc_header + 8}", flush=True)


if __name__ == "__main__":
    main()
