"""Python access to trimalloc when it is the process's allocator.

Run Python under trimalloc (``tools/trimalloc-run -- python3 app.py``, or
``PYTHONMALLOC=malloc LD_PRELOAD=/path/libtrimalloc.so python3 app.py``), then::

    import trimalloc
    trimalloc.trim()        # give freed memory back to the OS now; returns the bytes released
    trimalloc.stats()       # trimalloc's statistics as a dict

Every call raises :class:`NotLoaded` with an explanation when trimalloc is not loaded in this
process, and :class:`Unsupported` when the loaded libtrimalloc lacks the C function the call needs.
The functions are found at run time (``ctypes.CDLL(None)``), so importing this module never fails.
"""
import ctypes
import json
import os
import warnings

__all__ = ["NotLoaded", "Unsupported", "loaded", "version", "trim", "stats",
           "TRIM_FAST", "TRIM_FULL", "TRIM_ALL"]

# tm_trim levels (allocator/include/trimalloc/trimalloc.h): empty arenas and pools only; also the
# free pages inside pools and jemalloc's dirty pages; also other threads' caches.
TRIM_FAST, TRIM_FULL, TRIM_ALL = 0, 1, 2


class NotLoaded(RuntimeError):
    """trimalloc is not this process's allocator."""


class Unsupported(RuntimeError):
    """The libtrimalloc in this process does not export the function a call needs."""


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
