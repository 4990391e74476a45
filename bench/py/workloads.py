"""Python workloads for bench/compare.

    python3 workloads.py docs    [--count N] [--idle S]   the documents' experiment: build N records
                                                          (~4 small objects each), del, idle, release
    python3 workloads.py frag99  [--count N] [--idle S]   keep 1% of the records, scattered; computes
                                                          the theoretical maximum releasable bytes
    python3 workloads.py json    [--rounds R]             json/dict/str heavy work (timed)
    python3 workloads.py classes [--rounds R]             class-instance heavy work (timed)
    python3 workloads.py bigbuf  [--rounds R]             a 16 MiB bytearray made, written and
                                                          dropped, 30 times a round (timed)

Run with PYTHONMALLOC=malloc and LD_PRELOAD=<allocator> to measure that allocator, or with neither to
measure CPython's own pymalloc. Output: one JSON object per line, like the C++ programs (common.h):
{"event": name, "t": CLOCK_MONOTONIC seconds, "rss": bytes} and a final {"result": {...}}.
"""
import argparse
import ctypes
import gc
import json
import os
import random
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def emit_event(name):
    print(json.dumps({"event": name, "t": time.monotonic(), "rss": rss_bytes()}), flush=True)


_process = ctypes.CDLL(None)


def allocator_name():
    """The allocator behind this interpreter's objects: pymalloc unless PYTHONMALLOC=malloc, else the
    preloaded allocator, known by a symbol only it exports (dladdr on `malloc` would name python3
    itself, whose executable holds the canonical address of malloc)."""
    if os.environ.get("PYTHONMALLOC") != "malloc":
        return "pymalloc"
    for symbol, name in (("tm_version", "trimalloc"), ("mi_version", "mimalloc"),
                         ("tc_version", "tcmalloc"), ("mallctl", "jemalloc")):
        if hasattr(_process, symbol):
            return name
    return "glibc"


def explicit_release(who):
    """Each allocator's own call to give memory back, reached through ctypes; returns what was called."""
    if who == "trimalloc":
        if not hasattr(_process, "tm_trim"):
            return "none: this libtrimalloc does not export tm_trim"
        _process.tm_trim.restype = ctypes.c_size_t
        return "tm_trim(2) released %d bytes" % _process.tm_trim(2)
    if who == "mimalloc":
        _process.mi_collect(ctypes.c_bool(True))
        return "mi_collect(true)"
    if who == "tcmalloc":
        _process.MallocExtension_ReleaseFreeMemory()
        return "MallocExtension_ReleaseFreeMemory()"
    if who == "jemalloc":
        _process.mallctl(b"thread.tcache.flush", None, None, None, ctypes.c_size_t(0))
        rc = _process.mallctl(b"arena.4096.purge", None, None, None, ctypes.c_size_t(0))
        return "mallctl(thread.tcache.flush, arena.<all>.purge) = %d" % rc
    if who == "pymalloc":  # pymalloc has no release call: what people do instead
        gc.collect()
        return "gc.collect(); malloc_trim(0) = %d" % _process.malloc_trim(ctypes.c_size_t(0))
    if who == "glibc":
        return "malloc_trim(0) = %d" % _process.malloc_trim(ctypes.c_size_t(0))
    return "none: unknown allocator"


def record_ledger(result, when, who):
    """Under trimalloc, its RSS ledger at moment `when` (as common.h's record_ledger), read from
    tm_stats_json through ctypes."""
    if who != "trimalloc" or not hasattr(_process, "tm_stats_json"):
        return
    fn = _process.tm_stats_json
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    # Allocating the buffer changes the figures (and so the text's length): retry until it fits.
    cap = fn(None, 0) + 4096
    while True:
        buf = ctypes.create_string_buffer(cap)
        need = fn(buf, cap)
        if need < cap:
            break
        cap = need + 4096
    ledger = json.loads(buf.value.decode()).get("ledger", {})
    for key in ("ours", "not_ours_anon", "not_ours_file", "overcount", "total", "rss_kernel"):
        if isinstance(ledger.get(key), int):
            result["ledger_%s_%s" % (when, key)] = ledger[key]


def release_phases(result, idle_s, who):
    """RSS after the free, after idling with no call, and after the explicit release (as common.h)."""
    emit_event("freed")
    result["rss_after_free"] = rss_bytes()
    time.sleep(idle_s)
    emit_event("idle")
    result["rss_after_idle"] = rss_bytes()
    t0 = time.monotonic()
    result["release_call"] = explicit_release(who)
    result["release_s"] = time.monotonic() - t0
    emit_event("release")
    result["rss_after_release"] = rss_bytes()
    record_ledger(result, "release", who)


def peak_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def make_records(n):
    # Each record: a tuple of an int, a str and a float (4 blocks, none shared with another record).
    return [(i + 1000, "record-%d" % i, i * 0.5) for i in range(n)]


_HAVE_GC = 1 << 14  # Py_TPFLAGS_HAVE_GC: the block starts 16 bytes before id(obj) (PyGC_Head)


def _block(obj):
    size = sys.getsizeof(obj)  # includes the GC header for GC objects
    start = id(obj) - (16 if type(obj).__flags__ & _HAVE_GC else 0)
    return start, size


def live_page_bytes(records, holder):
    """Bytes of the OS pages holding a byte of a surviving block: the records' objects, the list
    object `holder` and its item array (read through ctypes: PyListObject.ob_item at offset 24)."""
    pages = set()

    def add(start, size):
        pages.update(range(start // PAGE, (start + size - 1) // PAGE + 1))

    for rec in records:
        add(*_block(rec))
        for item in rec:
            add(*_block(item))
    add(*_block(holder))
    ob_item = ctypes.c_void_p.from_address(id(holder) + 24).value
    allocated = ctypes.c_ssize_t.from_address(id(holder) + 32).value
    if ob_item:
        add(ob_item, allocated * 8)
    return len(pages) * PAGE


def run_docs(args, result, who):
    gc.collect()
    emit_event("start")
    baseline = rss_bytes()
    t0 = time.monotonic()
    data = make_records(args.count)
    result["alloc_s"] = time.monotonic() - t0
    emit_event("allocated")
    result["rss_baseline"], result["rss_peak"] = baseline, rss_bytes()
    record_ledger(result, "peak", who)
    t0 = time.monotonic()
    del data
    result["free_s"] = time.monotonic() - t0
    release_phases(result, args.idle, who)


def run_frag99(args, result, who):
    gc.collect()
    emit_event("start")
    baseline = rss_bytes()
    t0 = time.monotonic()
    data = make_records(args.count)
    result["alloc_s"] = time.monotonic() - t0
    emit_event("allocated")
    peak = rss_bytes()
    result["rss_baseline"], result["rss_peak"] = baseline, peak
    record_ledger(result, "peak", who)
    rng = random.Random(1)
    t0 = time.monotonic()
    keep = [rec for rec in data if rng.random() < 0.01]
    del data
    result["free_s"] = time.monotonic() - t0
    live = live_page_bytes(keep, keep)
    result["live_page_bytes"] = live
    result["theoretical_max_release"] = max(0, peak - baseline - live)
    result["survivors"] = len(keep)
    release_phases(result, args.idle, who)
    assert all(rec[1] == "record-%d" % (rec[0] - 1000) for rec in keep), "survivor corrupted"


def run_json(args, result, who):
    emit_event("start")
    result["rss_baseline"] = rss_bytes()
    rng = random.Random(2)
    t0 = time.monotonic()
    checksum = 0
    for r in range(args.rounds):
        docs = [{"id": i, "name": "user-%d" % rng.randrange(10**6), "tags": ["t%d" % (i % 7), "x"],
                 "score": rng.random(), "meta": {"round": r, "ok": i % 3 == 0}} for i in range(20000)]
        text = json.dumps(docs)
        back = json.loads(text)
        index = {d["name"]: d for d in back}
        words = " ".join(d["name"].upper() for d in back).split()
        checksum += len(index) + len(words) + len(text)
    result["work_s"] = time.monotonic() - t0
    result["checksum"] = checksum
    emit_event("worked")
    result["rss_peak"] = peak_rss_bytes()
    del docs, text, back, index, words
    release_phases(result, args.idle, who)


class Node:
    def __init__(self, key, parent):
        self.key = key
        self.parent = parent
        self.children = []
        self.label = "n%d" % key


def run_classes(args, result, who):
    emit_event("start")
    result["rss_baseline"] = rss_bytes()
    t0 = time.monotonic()
    total = 0
    for r in range(args.rounds):
        root = Node(0, None)
        nodes = [root]
        for k in range(1, 100000):
            parent = nodes[(k - 1) // 4]
            child = Node(k, parent)
            parent.children.append(child)
            nodes.append(child)
        total += sum(len(n.children) + len(n.label) for n in nodes)
        for n in nodes:  # break the parent/child cycles so the tree dies by reference counting
            n.parent = None
        del nodes, root
    result["work_s"] = time.monotonic() - t0
    result["checksum"] = total
    emit_event("worked")
    result["rss_peak"] = peak_rss_bytes()
    release_phases(result, args.idle, who)


def run_bigbuf(args, result, who):
    """A big buffer per request, as a server or a data pipeline makes one: bytearray(16 MiB)
    (calloc), one byte written per page, dropped; 30 times a round."""
    emit_event("start")
    result["rss_baseline"] = rss_bytes()
    size = 16 << 20
    ones = b"\1" * (size // PAGE)
    t0 = time.monotonic()
    total = 0
    for r in range(args.rounds * 30):
        buf = bytearray(size)
        buf[::PAGE] = ones
        total += buf[PAGE * (r % (size // PAGE))]
        del buf
    result["work_s"] = time.monotonic() - t0
    result["checksum"] = total
    emit_event("worked")
    result["rss_peak"] = peak_rss_bytes()
    release_phases(result, args.idle, who)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["docs", "frag99", "json", "classes", "bigbuf"])
    p.add_argument("--count", type=int, default=500000, help="records (docs, frag99)")
    p.add_argument("--rounds", type=int, default=10, help="rounds (json, classes, bigbuf)")
    p.add_argument("--idle", type=float, default=2.0, help="seconds idle after the free")
    args = p.parse_args()
    who = allocator_name()
    result = {"workload": "py-" + args.mode, "allocator": who, "python": sys.version.split()[0]}
    {"docs": run_docs, "frag99": run_frag99, "json": run_json, "classes": run_classes,
     "bigbuf": run_bigbuf}[args.mode](args, result, who)
    result.setdefault("rss_hwm", peak_rss_bytes())
    print(json.dumps({"result": result}), flush=True)


if __name__ == "__main__":
    main()
