"""Python access to trimalloc when it is the process's allocator.

Run Python under trimalloc (``tools/trimalloc-run -- python3 app.py``, or
``PYTHONMALLOC=malloc LD_PRELOAD=/path/libtrimalloc.so python3 app.py``), then::

    import trimalloc
    trimalloc.trim()        # give freed memory back to the OS now; returns the bytes released
    trimalloc.stats()       # trimalloc's statistics as a dict

    # allocation-site snapshots (sampling on: TRIMALLOC_PROFILE=512k, or set_profile_rate)
    s1 = trimalloc.snapshot()
    ...
    s2 = trimalloc.snapshot()
    for row in s2.compare_to(s1, top=10):
        print(row)          # like tracemalloc's compare_to(snapshot1, 'lineno')

Every call raises :class:`NotLoaded` with an explanation when trimalloc is not loaded in this
process, and :class:`Unsupported` when the loaded libtrimalloc lacks the C function the call needs.
The functions are found at run time (``ctypes.CDLL(None)``), so importing this module never fails.
"""
import collections
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

__all__ = ["NotLoaded", "Unsupported", "NotProfiling", "loaded", "version", "trim", "stats",
           "profile_rate", "set_profile_rate", "snapshot", "Snapshot", "SiteDiff", "diff",
           "TRIM_FAST", "TRIM_FULL", "TRIM_ALL"]

# tm_trim levels (allocator/include/trimalloc/trimalloc.h): empty arenas and pools only; also the
# free pages inside pools and jemalloc's dirty pages; also other threads' caches.
TRIM_FAST, TRIM_FULL, TRIM_ALL = 0, 1, 2


class NotLoaded(RuntimeError):
    """trimalloc is not this process's allocator."""


class Unsupported(RuntimeError):
    """The libtrimalloc in this process does not export the function a call needs."""


class NotProfiling(RuntimeError):
    """snapshot() was called while allocation sampling is off."""


_HOW_TO_LOAD = ("run Python under trimalloc: tools/trimalloc-run -- python3 ..., or "
                "PYTHONMALLOC=malloc LD_PRELOAD=/path/to/libtrimalloc.so python3 ...")


def _process():
    return ctypes.CDLL(None)


def loaded():
    """True if libtrimalloc is loaded in this process."""
    return hasattr(_process(), "tm_version")


def _function(name, restype, argtypes):
    proc = _process()
    if not hasattr(proc, "tm_version"):
        raise NotLoaded("trimalloc is not loaded in this process; " + _HOW_TO_LOAD)
    if not hasattr(proc, name):
        raise Unsupported("the libtrimalloc loaded in this process (%s) does not export %s()"
                          % (version(), name))
    fn = getattr(proc, name)
    fn.restype, fn.argtypes = restype, argtypes
    return fn


def version():
    """trimalloc's version string, e.g. 'trimalloc 0.1.0'."""
    return _function("tm_version", ctypes.c_char_p, []).__call__().decode()


_warned_pymalloc = False


def _warn_if_pymalloc():
    global _warned_pymalloc
    if os.environ.get("PYTHONMALLOC") != "malloc" and not _warned_pymalloc:
        _warned_pymalloc = True
        warnings.warn("PYTHONMALLOC is not 'malloc': Python's small objects live in pymalloc, "
                      "not in trimalloc, and trimalloc cannot give their memory back",
                      RuntimeWarning, stacklevel=3)


def trim(level=TRIM_FULL):
    """Returns freed memory to the OS now (tm_trim); returns the number of bytes released.

    level: TRIM_FAST (0), TRIM_FULL (1, the default) or TRIM_ALL (2)."""
    if level not in (TRIM_FAST, TRIM_FULL, TRIM_ALL):
        raise ValueError("trim level must be 0, 1 or 2, not %r" % (level,))
    fn = _function("tm_trim", ctypes.c_size_t, [ctypes.c_int])
    _warn_if_pymalloc()
    return int(fn(level))


def stats():
    """trimalloc's statistics (tm_stats_json) as a dict."""
    fn = _function("tm_stats_json", ctypes.c_size_t, [ctypes.c_char_p, ctypes.c_size_t])
    cap = 4096
    while True:
        buf = ctypes.create_string_buffer(cap)
        need = int(fn(buf, cap))
        if need < cap:  # fits, with its terminating NUL
            return json.loads(buf.raw[:need].decode())
        cap = need + 1


# --- allocation-site sampling and snapshots -------------------------------------------------

def profile_rate():
    """Mean bytes allocated between two samples (tm_profile_rate); 0 when sampling is off."""
    return int(_function("tm_profile_rate", ctypes.c_size_t, [])())


def set_profile_rate(rate):
    """Turns allocation sampling on (a mean of `rate` bytes between samples) or off (0); returns
    the previous rate. Only allocations made from now on can be sampled; TRIMALLOC_PROFILE=512k in
    the environment samples from start-up. A rate that does not take (libunwind missing, a build
    without sampling hooks) is explained on stderr by the library and raises NotProfiling."""
    if not isinstance(rate, int) or isinstance(rate, bool) or rate < 0:
        raise ValueError("rate must be a byte count >= 0, not %r" % (rate,))
    fn = _function("tm_profile_set_rate", ctypes.c_size_t, [ctypes.c_size_t])
    previous = int(fn(rate))
    if profile_rate() != rate:
        raise NotProfiling("allocation sampling could not be set to %d bytes (see the message "
                           "trimalloc printed on stderr)" % rate)
    return previous


SiteDiff = collections.namedtuple("SiteDiff", "site traceback size size_diff count count_diff")
SiteDiff.__doc__ = """One row of a snapshot comparison: the site ('file:line', 'function+0x..' or
'module+0x..'), its frames (the site first), estimated live bytes and allocations in the newer
snapshot and their change since the older one."""


def _human(n):
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return "%s%d B" % (sign, n) if unit == "B" else "%s%.1f %s" % (sign, n, unit)
        n /= 1024.0


def _site_diff_str(self):
    avg = self.size / self.count if self.count else 0
    return "%s: size=%s (%s%s), count=%d (%+d), average=%s" % (
        self.site, _human(self.size), "+" if self.size_diff >= 0 else "", _human(self.size_diff),
        round(self.count), round(self.count_diff), _human(avg))


SiteDiff.__str__ = _site_diff_str


class Snapshot:
    """The live sampled allocations at one moment (the text tm_snapshot_write writes).

    text: the snapshot file's contents; rate: the sampling rate; sites: [(bytes, count, samples,
    [return addresses])], bytes and count being unbiased estimates (docs/stats.md)."""

    def __init__(self, text):
        if not text.startswith("# trimalloc-snapshot 1"):
            raise ValueError("not a trimalloc snapshot (first line should be '# trimalloc-snapshot 1')")
        self.text = text
        self.rate = 0
        self.sites = []
        for line in text.splitlines():
            parts = line.split()
            if parts and parts[0] == "rate":
                self.rate = int(parts[1])
            elif parts and parts[0] == "site":
                self.sites.append((float(parts[1]), float(parts[2]), int(parts[3]),
                                   [int(x, 16) for x in parts[4:]]))

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls(f.read())

    @property
    def size(self):
        """Estimated live bytes over all sites."""
        return sum(site[0] for site in self.sites)

    def dump(self, path):
        """Writes the snapshot to `path`, in the format trimalloc-snapshot-diff reads."""
        with open(path, "w") as f:
            f.write(self.text)

    def compare_to(self, old, top=10, traceback=1):
        """[SiteDiff] of the `top` sites whose estimated live memory changed most since `old`
        (a Snapshot or a path), biggest change first; runs trimalloc-snapshot-diff."""
        return diff(old, self, top=top, traceback=traceback)


def snapshot(path=None):
    """Takes a snapshot of the live sampled allocations (tm_snapshot_take) and returns it as a
    Snapshot; with `path`, also leaves the file there (tm_snapshot_write). Raises NotProfiling when
    sampling is off. The C library keeps one current snapshot for the whole process: two threads
    taking snapshots at once may each get the other's."""
    if profile_rate() == 0:
        raise NotProfiling("allocation sampling is off: run with TRIMALLOC_PROFILE=512k (mean "
                           "bytes between samples), or call trimalloc.set_profile_rate(512 * 1024)")
    take = _function("tm_snapshot_take", ctypes.c_long, [])
    write = _function("tm_snapshot_write", ctypes.c_int, [ctypes.c_char_p])
    if take() < 0:
        raise MemoryError("tm_snapshot_take could not map its tables")
    if path is not None:
        if write(os.fsencode(path)) != 0:
            raise OSError("tm_snapshot_write could not write %s (the reason is on stderr)" % path)
        return Snapshot.load(path)
    fd, tmp = tempfile.mkstemp(prefix="trimalloc-", suffix=".snap")
    os.close(fd)
    try:
        if write(os.fsencode(tmp)) != 0:
            raise OSError("tm_snapshot_write could not write %s (the reason is on stderr)" % tmp)
        return Snapshot.load(tmp)
    finally:
        os.unlink(tmp)


def _diff_tool():
    """trimalloc-snapshot-diff: $TRIMALLOC_SNAPSHOT_DIFF, else beside this module in a source tree
    (tools/snapshot) or an installed prefix (PREFIX/bin), else on PATH."""
    here = os.path.dirname(os.path.realpath(__file__))
    candidates = [os.environ.get("TRIMALLOC_SNAPSHOT_DIFF", ""),
                  os.path.join(here, "..", "..", "snapshot", "trimalloc-snapshot-diff"),       # source
                  os.path.join(here, "..", "..", "..", "..", "bin", "trimalloc-snapshot-diff"),  # installed
                  shutil.which("trimalloc-snapshot-diff") or ""]
    for c in candidates:
        if c and os.path.isfile(c):
            return os.path.normpath(c)
    raise FileNotFoundError("trimalloc-snapshot-diff not found (set TRIMALLOC_SNAPSHOT_DIFF to its path)")


def _child_env():
    # The tool is an ordinary Python program: not under trimalloc, not sampled, no stats at exit.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIMALLOC_")}
    preload = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split()
               if "libtrimalloc" not in os.path.basename(p)]
    if preload:
        env["LD_PRELOAD"] = " ".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def diff(before, after, top=10, traceback=1):
    """Compares two snapshots (Snapshot objects or paths of files tm_snapshot_write wrote) with
    trimalloc-snapshot-diff; returns [SiteDiff], the biggest change first. Addresses are resolved
    against the mappings recorded in the files, so the process that wrote them may be gone (but
    its binaries must still be in place)."""
    if top < 1 or traceback < 1:
        raise ValueError("top and traceback must be at least 1")
    with tempfile.TemporaryDirectory(prefix="trimalloc-") as d:
        paths = []
        for name, snap in (("before.snap", before), ("after.snap", after)):
            if isinstance(snap, Snapshot):
                path = os.path.join(d, name)
                snap.dump(path)
                snap = path
            paths.append(os.fspath(snap))
        # The interpreter running this module runs the tool (python3 is all it needs).
        r = subprocess.run([sys.executable or "python3", _diff_tool()] + paths +
                           ["--top", str(top), "--traceback", str(traceback), "--json"],
                           capture_output=True, text=True, env=_child_env())
    if r.returncode != 0:
        raise RuntimeError("trimalloc-snapshot-diff failed: %s" % r.stderr.strip())
    return [SiteDiff(row["site"], tuple(row["traceback"]), row["size"], row["size_diff"],
                     row["count"], row["count_diff"]) for row in json.loads(r.stdout)["sites"]]
