"""Tests of tools/trimalloc-run against the libtrimalloc.so named by $TRIMALLOC_LIB (ctest sets it)."""
import csv
import os
import struct
import subprocess
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
TOOL = os.path.join(os.path.dirname(HERE), "trimalloc-run")
LIB = os.environ.get("TRIMALLOC_LIB", "")


def run(args, **kw):
    return subprocess.run([TOOL] + args, capture_output=True, text=True, timeout=60, **kw)


def png_size(path):
    """(width, height) of a PNG file; fails unless it has the PNG signature and an IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG: %r" % head[:8]
    assert head[12:16] == b"IHDR", "no IHDR chunk"
    return struct.unpack(">II", head[16:24])


@unittest.skipUnless(LIB, "set TRIMALLOC_LIB to a built libtrimalloc.so (ctest does)")
class TrimallocRunTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        assert os.path.exists(LIB), "TRIMALLOC_LIB=%s does not exist" % LIB

    def tool(self, args, **kw):
        return run(["--lib", LIB] + args, **kw)

    def test_exit_code_passes_through(self):
        for code in (0, 1, 7, 42):
            r = self.tool(["--", "sh", "-c", "exit %d" % code])
            self.assertEqual(r.returncode, code, r.stderr)
            self.assertIn("exit code %d" % code, r.stderr)

    def test_signal_becomes_128_plus_n(self):
        r = self.tool(["--", "sh", "-c", "kill -KILL $$"])
        self.assertEqual(r.returncode, 128 + 9, r.stderr)
        self.assertIn("killed by signal SIGKILL", r.stderr)

    def test_missing_command(self):
        r = self.tool(["--", "no-such-command-trimalloc"])
        self.assertEqual(r.returncode, 127)
        self.assertIn("command not found: no-such-command-trimalloc", r.stderr)
        r = self.tool(["--", "/nonexistent/prog"])
        self.assertEqual(r.returncode, 127)
        self.assertIn("command not found: /nonexistent/prog", r.stderr)

    def test_not_executable(self):
        with tempfile.NamedTemporaryFile() as f:
            r = self.tool(["--", f.name])
        self.assertEqual(r.returncode, 126)
        self.assertIn("cannot execute", r.stderr)

    def test_missing_or_wrong_library(self):
        r = run(["--lib", "/nonexistent/libtrimalloc.so", "--", "true"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("library /nonexistent/libtrimalloc.so does not exist", r.stderr)
        libm = "/lib/x86_64-linux-gnu/libm.so.6"
        if os.path.exists(libm):
            r = run(["--lib", libm, "--", "true"])
            self.assertEqual(r.returncode, 2)
            self.assertIn("is not a libtrimalloc", r.stderr)

    def test_no_command(self):
        r = self.tool([])
        self.assertEqual(r.returncode, 2)
        self.assertIn("no command given", r.stderr)

    def test_program_runs_under_trimalloc_with_pythonmalloc(self):
        module_dir = os.path.join(os.path.dirname(HERE), "python")
        code = ("import os, sys; sys.path.insert(0, %r); import trimalloc; "
                "print(trimalloc.loaded(), os.environ['PYTHONMALLOC'], %r in os.environ['LD_PRELOAD'])"
                % (module_dir, os.path.abspath(LIB)))
        env = dict(os.environ)
        env.pop("PYTHONMALLOC", None)
        r = self.tool(["--", "/usr/bin/python3", "-c", code], env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), "True malloc True")

    def test_reports_rss_and_writes_csv_and_png(self):
        with tempfile.TemporaryDirectory() as d:
            csv_path, png_path = os.path.join(d, "rss.csv"), os.path.join(d, "rss.png")
            # ~80 MiB of small objects held for 0.3 s, then freed.
            code = "import time; x = [str(i) * 3 for i in range(1000000)]; time.sleep(0.3); del x; time.sleep(0.2)"
            r = self.tool(["--interval", "5", "--csv", csv_path, "--png", png_path, "--",
                           "/usr/bin/python3", "-c", code])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertRegex(r.stderr, r"peak RSS \d+\.\d MiB, final RSS \d+\.\d MiB \(\d+ samples every 5 ms\)")
            peak = float(r.stderr.split("peak RSS ")[1].split(" MiB")[0])
            self.assertGreater(peak, 40.0)
            with open(csv_path) as f:
                rows = list(csv.DictReader(f))
            self.assertGreater(len(rows), 20)
            self.assertGreater(max(int(row["rss_bytes"]) for row in rows), 40 * 2**20)
            times = [float(row["t_s"]) for row in rows]
            self.assertEqual(times, sorted(times))
            width, height = png_size(png_path)
            self.assertGreater(width, 100)
            self.assertGreater(height, 100)
            self.assertGreater(os.path.getsize(png_path), 5000)


if __name__ == "__main__":
    unittest.main()
