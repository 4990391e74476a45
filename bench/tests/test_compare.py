"""Tests of the bench/compare harness itself (smoke mode: tiny sizes, the figures mean nothing).

    TRIMALLOC_BUILD=<cmake build dir> TRIMALLOC_LIB=<libtrimalloc.so> python3 -m unittest test_compare
"""
import csv
import os
import struct
import subprocess
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
COMPARE = os.path.join(os.path.dirname(HERE), "compare")
BUILD = os.environ.get("TRIMALLOC_BUILD", "")
LIB = os.environ.get("TRIMALLOC_LIB", "")
ALL = {"glibc", "jemalloc", "mimalloc", "tcmalloc", "trimalloc"}


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "%s is not a PNG" % path
    assert head[12:16] == b"IHDR", "%s has no IHDR chunk" % path
    return struct.unpack(">II", head[16:24])


def read(path):
    with open(path) as f:
        return f.read()


def compare(args):
    return subprocess.run([COMPARE, "--smoke", "--build", BUILD] + args, capture_output=True, text=True,
                          timeout=240)


@unittest.skipUnless(BUILD and LIB, "set TRIMALLOC_BUILD and TRIMALLOC_LIB (ctest does)")
class CompareTest(unittest.TestCase):
    def test_quick_run_has_every_allocator_and_valid_plots(self):
        with tempfile.TemporaryDirectory() as out:
            r = compare(["--only", "micro,docs,py-docs", "--trimalloc", LIB, "--out", out])
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            with open(os.path.join(out, "results.csv")) as f:
                rows = list(csv.DictReader(f))
            seen = {}
            for row in rows:
                seen.setdefault(row["workload"], set()).add(row["allocator"])
                float(row["value"])  # every value is a number
            self.assertEqual(seen["docs"], ALL)
            self.assertEqual(seen["py-docs"], ALL | {"pymalloc"})
            micro = [w for w in seen if w.startswith("micro:")]
            self.assertTrue(micro, "no micro benchmark rows")
            for w in micro:
                self.assertEqual(seen[w], ALL, w)
            metrics = {(row["workload"], row["allocator"], row["metric"]) for row in rows}
            for a in ALL:
                for m in ("rss_peak", "rss_after_free", "rss_after_idle", "rss_after_release", "time_s"):
                    self.assertIn(("docs", a, m), metrics)
            for name in ("rss_docs.png", "rss_py-docs.png", "micro.png", "ratio_time.png"):
                w, h = png_size(os.path.join(out, name))
                self.assertGreater(w, 100, name)
                self.assertGreater(h, 100, name)
            with open(os.path.join(out, "rss_docs.csv")) as f:
                series = list(csv.DictReader(f))
            self.assertEqual({row["allocator"] for row in series}, ALL)
            self.assertTrue({"freed", "idle", "release"} <= {row["event"] for row in series})
            report = read(os.path.join(out, "report.md"))
            self.assertIn("## Targets", report)
            self.assertIn("smoke mode", report)
            self.assertRegex(report, r"\| (PASS|MISSED) \|")
            self.assertIn("| docs | trimalloc |", r.stdout)  # the table is printed too

    def test_missing_trimalloc_is_reported_not_hidden(self):
        with tempfile.TemporaryDirectory() as out:
            r = compare(["--only", "docs", "--allocators", "glibc,trimalloc",
                         "--trimalloc", "/nonexistent/libtrimalloc.so", "--out", out])
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            report = read(os.path.join(out, "report.md"))
            self.assertIn("/nonexistent/libtrimalloc.so does not exist", report)
            self.assertIn("No target could be checked", report)
            self.assertIn("NOT MEASURED", report)
            self.assertNotIn("| PASS |", report)

    def test_wrong_allocator_is_a_failed_run(self):
        # A "trimalloc" that is really jemalloc: the programs notice, and compare fails the run.
        jemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
        if not os.path.exists(jemalloc):
            self.skipTest("libjemalloc2 is not installed")
        with tempfile.TemporaryDirectory() as out:
            r = compare(["--only", "docs", "--allocators", "trimalloc", "--trimalloc", jemalloc, "--out", out])
            self.assertEqual(r.returncode, 1)
            self.assertIn("ran under 'jemalloc', not trimalloc", r.stderr)


@unittest.skipUnless(BUILD and LIB, "set TRIMALLOC_BUILD and TRIMALLOC_LIB (ctest does)")
class AbPairsTest(unittest.TestCase):
    def test_every_allocator_gets_a_time_and_a_ratio_per_size(self):
        r = subprocess.run([os.path.join(os.path.dirname(HERE), "ab-pairs"), "--build", BUILD, "--rounds", "2",
                            "--min-time", "0.01", "--sizes", "16,512", "--allocators", "glibc,trimalloc,floor"],
                           capture_output=True, text=True, timeout=240)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and " B |" in line]
        self.assertEqual([row.split("|")[1].strip() for row in rows], ["16 B", "512 B"])
        for row in rows:
            cells = [c.strip() for c in row.strip("|").split("|")][1:]
            self.assertEqual(len(cells), 5, row)  # three times, two ratios
            for c in cells[:3]:
                self.assertGreater(float(c), 0.0, row)  # the floor stand-in ran the loop too
            for c in cells[3:]:
                self.assertRegex(c, r"^\d+\.\d{3} \(\d+\.\d{3}-\d+\.\d{3}\)$")

    def test_the_embedded_jemalloc_peer_serves_the_large_pairs(self):
        r = subprocess.run([os.path.join(os.path.dirname(HERE), "ab-pairs"), "--build", BUILD, "--rounds", "2",
                            "--min-time", "0.01", "--sizes", "1024", "--allocators", "trimalloc,embedded"],
                           capture_output=True, text=True, timeout=240)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        rows = [line for line in r.stdout.splitlines() if line.startswith("| 1024 B |")]
        self.assertEqual(len(rows), 1, r.stdout)
        cells = [c.strip() for c in rows[0].strip("|").split("|")][1:]
        self.assertGreater(float(cells[1]), 0.0, rows[0])
        # The peer is the renamed copy: its malloc is the library's own, and the blocks it hands
        # out are jemalloc's (malloc_usable_size of 1000 bytes is jemalloc's 1024-byte class).
        lib = os.path.join(BUILD, "bench", "libtrimalloc_bench_embedded_jemalloc.so")
        probe = subprocess.run(["/usr/bin/python3", "-c",
                                "import ctypes; c = ctypes.CDLL(None); c.malloc.restype = ctypes.c_void_p; "
                                "p = c.malloc(1000); c.malloc_usable_size.argtypes = [ctypes.c_void_p]; "
                                "print(c.malloc_usable_size(p))"],
                               env=dict(os.environ, LD_PRELOAD=lib, PYTHONMALLOC="malloc"),
                               capture_output=True, text=True, timeout=60)
        self.assertEqual(probe.returncode, 0, probe.stderr[-2000:])
        self.assertEqual(probe.stdout.strip(), "1024")

    def test_producer_consumer_in_alternating_runs(self):
        r = subprocess.run([os.path.join(os.path.dirname(HERE), "ab-pairs"), "--build", BUILD, "--rounds", "2",
                            "--min-time", "0.01", "--benchmark", "BM_prodcons", "--sizes", "64",
                            "--allocators", "glibc,trimalloc"], capture_output=True, text=True, timeout=240)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertRegex(r.stdout, r"\| 64 B \| \d+\.\d\d \| \d+\.\d\d \| \d+\.\d{3} \(")
        r = subprocess.run([os.path.join(os.path.dirname(HERE), "ab-pairs"), "--build", BUILD, "--rounds", "2",
                            "--min-time", "0.01", "--benchmark", "BM_prodcons", "--sizes", "16",
                            "--allocators", "glibc,trimalloc"], capture_output=True, text=True, timeout=240)
        self.assertNotEqual(r.returncode, 0)  # BM_prodcons has no 16-byte run: said, not hidden
        self.assertIn("BM_prodcons has no size 16", r.stderr)

    def test_a_run_that_dies_is_named_with_its_signal_and_last_words(self):
        with tempfile.TemporaryDirectory() as tmp:
            source, lib = os.path.join(tmp, "dies.c"), os.path.join(tmp, "libdies.so")
            with open(source, "w") as f:
                f.write('#include <stdio.h>\n#include <stdlib.h>\n'
                        '__attribute__((constructor)) static void die(void) {\n'
                        '  fputs("dies: refusing to start\\n", stderr);\n  abort();\n}\n')
            subprocess.run(["cc", "-shared", "-fPIC", "-o", lib, source], check=True)
            r = subprocess.run([os.path.join(os.path.dirname(HERE), "ab-pairs"), "--build", BUILD, "--rounds", "2",
                                "--min-time", "0.01", "--sizes", "16", "--allocators", "trimalloc",
                                "dies=" + lib], capture_output=True, text=True, timeout=240)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("BM_pair under %s failed (killed by signal 6): dies: refusing to start" % lib, r.stderr)
        self.assertNotIn("Traceback", r.stderr)

    def test_one_round_is_refused(self):
        r = subprocess.run([os.path.join(os.path.dirname(HERE), "ab-pairs"), "--build", BUILD, "--rounds", "1"],
                           capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--rounds 1: at least 2 rounds", r.stderr)


if __name__ == "__main__":
    unittest.main()
