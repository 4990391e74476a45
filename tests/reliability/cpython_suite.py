#!/usr/bin/python3
"""CPython's own regression tests (Debian's libpython3.11-testsuite) with and without trimalloc.

Runs `/usr/bin/python3 -m test -jN --junit-xml ...` on the modules below twice: once in a clean
environment, once with LD_PRELOAD=<libtrimalloc.so> PYTHONMALLOC=malloc (so every Python object
goes through trimalloc's malloc). Each run must give the same result: per module the same
regrtest outcome (passed / failed / skipped) and, per test case, the same status (passed /
failed / error / skipped) and no case more than 30 s and 5x slower (a hang that the test's own
timeout ends would otherwise pass). Tests that fail in both runs are reported.

A module whose results differ is run once more, alone, in both configurations; the test fails if
the difference shows again (a timing-sensitive test that flips once under load is reported as
such, not hidden). Exit status 0 = same results, 1 = different, 2 = could not run.

  cpython_suite.py --lib build/allocator/libtrimalloc.so [--work DIR] [-j 2] [--modules m1,m2]
"""
import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

PYTHON = "/usr/bin/python3"
SLOW_SECONDS = 30  # a test case this much (and 5x) slower with trimalloc counts as a difference
MODULES = [
    "test_gc", "test_weakref", "test_dict", "test_list", "test_set", "test_unicode", "test_json",
    "test_re", "test_threading", "test_bytes", "test_array", "test_memoryview",
]


def clean_env():
    env = dict(os.environ)
    for k in ("LD_PRELOAD", "PYTHONMALLOC", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
        env.pop(k, None)
    env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8")
    return env


def trimalloc_env(lib):
    env = clean_env()
    env.update(LD_PRELOAD=lib, PYTHONMALLOC="malloc")
    return env


def check_preload(lib):
    """Objects of the preloaded interpreter really come from trimalloc (bytes: no GC header,
    so id() is the address malloc returned)."""
    code = ("import ctypes; lib = ctypes.CDLL(None); lib.tm_owns.argtypes = [ctypes.c_void_p];"
            "b = b'x' * 1000; s = 'y' * 100; print(lib.tm_owns(id(b)), lib.tm_owns(id(s)))")
    out = subprocess.run([PYTHON, "-c", code], env=trimalloc_env(lib), capture_output=True, text=True, timeout=60)
    if out.returncode != 0 or out.stdout.split() != ["1", "1"]:
        print("cpython_suite: the preloaded interpreter does not allocate with trimalloc:", out.stdout, out.stderr)
        return False
    return True


def module_of(case_name):
    # "test.test_gc.GCTests.test_x" -> "test_gc"
    parts = case_name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "test" else parts[0]


def parse_junit(path, times=None):
    """{module: {case: status}} with status in passed/failed/error/skipped; times[case] = s."""
    result = {}
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        name = case.get("name", "?")
        if case.find("failure") is not None:
            status = "failed"
        elif case.find("error") is not None:
            status = "error"
        elif case.find("skipped") is not None or case.get("status") == "skipped":
            status = "skipped"
        else:
            status = "passed"
        result.setdefault(module_of(name), {})[name] = status
        if times is not None:
            try:
                times[name] = float(case.get("time", "0"))
            except ValueError:
                pass
    return result


def parse_outcomes(log, modules):
    """regrtest's per-module outcome from its summary lines."""
    outcome = {m: "passed" for m in modules}
    lines = log.splitlines()
    kinds = [("failed", "failed"), ("skipped", "skipped"), ("altered the execution environment", "env-changed"),
             ("resource denied", "skipped"), ("run no tests", "no-tests"), ("omitted", "omitted"),
             ("interrupted", "interrupted")]
    for i, line in enumerate(lines):
        for phrase, kind in kinds:
            if line.rstrip().endswith(phrase + ":") and (line.startswith(tuple("0123456789")) or line.startswith(("1 test", "All"))):
                j = i + 1
                while j < len(lines) and lines[j].startswith("    "):
                    for m in lines[j].split():
                        if m in outcome:
                            outcome[m] = kind
                    j += 1
    return outcome


def run(label, env, modules, jobs, work):
    os.makedirs(work, exist_ok=True)
    xml = os.path.join(work, label + ".xml")
    if os.path.exists(xml):
        os.remove(xml)
    cmd = [PYTHON, "-m", "test", "-j%d" % jobs, "--junit-xml", xml] + modules
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, timeout=1800)
    elapsed = time.monotonic() - t0
    with open(os.path.join(work, label + ".log"), "w") as f:
        f.write(proc.stdout)
        f.write(proc.stderr)
    if not os.path.exists(xml):
        print("cpython_suite: %s run produced no junit file (exit %d); tail of its output:" % (label, proc.returncode))
        print("\n".join((proc.stdout + proc.stderr).splitlines()[-30:]))
        return None
    times = {}
    return {"cases": parse_junit(xml, times), "times": times, "outcome": parse_outcomes(proc.stdout, modules), "rc": proc.returncode,
            "seconds": elapsed}


def differences(a, b, modules):
    diff = {}
    for m in modules:
        lines = []
        if a["outcome"][m] != b["outcome"][m]:
            lines.append("module outcome: %s without trimalloc, %s with" % (a["outcome"][m], b["outcome"][m]))
        ca, cb = a["cases"].get(m, {}), b["cases"].get(m, {})
        for name in sorted(set(ca) | set(cb)):
            sa, sb = ca.get(name, "absent"), cb.get(name, "absent")
            if sa != sb:
                lines.append("%s: %s without trimalloc, %s with" % (name, sa, sb))
            # A hang that a test's own timeout ends still "passes": compare the times too.
            ta, tb = a["times"].get(name, 0.0), b["times"].get(name, 0.0)
            if tb > ta + SLOW_SECONDS and tb > 5 * ta:
                lines.append("%s: %.1f s without trimalloc, %.1f s with (hang?)" % (name, ta, tb))
        if lines:
            diff[m] = lines
    return diff


def summary(r, modules):
    counts = {}
    for m in modules:
        for status in r["cases"].get(m, {}).values():
            counts[status] = counts.get(status, 0) + 1
    return ", ".join("%d %s" % (v, k) for k, v in sorted(counts.items()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True, help="libtrimalloc.so (override build)")
    ap.add_argument("--work", default="cpython_suite_work")
    ap.add_argument("-j", type=int, default=2)
    ap.add_argument("--modules", default=",".join(MODULES))
    args = ap.parse_args()
    modules = [m for m in args.modules.split(",") if m]
    lib = os.path.abspath(args.lib)
    work = os.path.abspath(args.work)
    if not os.path.exists(lib):
        print("cpython_suite: no such library", lib)
        return 2
    if not check_preload(lib):
        return 1
    base = run("without", clean_env(), modules, args.j, work)
    tm = run("trimalloc", trimalloc_env(lib), modules, args.j, work)
    if base is None or tm is None:
        return 2
    print("without trimalloc: %.0f s, exit %d, %s" % (base["seconds"], base["rc"], summary(base, modules)))
    print("with trimalloc:    %.0f s, exit %d, %s" % (tm["seconds"], tm["rc"], summary(tm, modules)))
    for m in modules:
        print("  %-16s %-8s %-8s %4d cases" % (m, base["outcome"][m], tm["outcome"][m], len(tm["cases"].get(m, {}))))
    if not any(base["cases"].values()):
        print("cpython_suite: no test case ran")
        return 2
    both = [(m, n) for m in modules for n, s in base["cases"].get(m, {}).items()
            if s in ("failed", "error") and tm["cases"].get(m, {}).get(n) in ("failed", "error")]
    for m, n in both:
        print("fails in BOTH runs (not trimalloc's doing):", n)

    diff = differences(base, tm, modules)
    if not diff:
        print("cpython_suite: same results with and without trimalloc")
        return 0
    for m, lines in diff.items():
        print("DIFFERENT in %s:" % m)
        for line in lines[:20]:
            print("   ", line)
    # Run each differing module once more, alone, in both configurations.
    still = {}
    for m in diff:
        b2 = run("without-" + m, clean_env(), [m], 1, work)
        t2 = run("trimalloc-" + m, trimalloc_env(lib), [m], 1, work)
        if b2 is None or t2 is None:
            still[m] = ["rerun did not complete"]
            continue
        d2 = differences(b2, t2, [m])
        if d2:
            still[m] = d2[m]
        else:
            print("NOTE: %s differed in the -j%d run but not when rerun alone (timing-sensitive test?)" % (m, args.j))
    if still:
        for m, lines in still.items():
            print("cpython_suite: %s differs again when rerun alone:" % m)
            for line in lines[:20]:
                print("   ", line)
        return 1
    print("cpython_suite: same results with and without trimalloc (after rerunning %s)" % ", ".join(diff))
    return 0


if __name__ == "__main__":
    sys.exit(main())
