"""bench/ab-pairs --cpus: every benchmark run is pinned to the CPUs given, and a CPU this
process may not use is refused with a message.

The "benchmark" here is a stand-in script that reports, as its ns per pair, how many CPUs it
was allowed to run on, so the table says whether the pinning reached the process that measures.
"""
import os
import stat
import subprocess
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
AB_PAIRS = os.path.join(os.path.dirname(HERE), "ab-pairs")

FAKE_BENCHMARK = textwrap.dedent("""\
    #!/usr/bin/python3
    import json, os, sys
    out = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--benchmark_out=")][0]
    cpus = len(os.sched_getaffinity(0))
    rows = [{"name": "BM_pair/%d" % s, "cpu_time": float(cpus), "real_time": float(cpus),
             "time_unit": "ns"} for s in (16, 64)]
    json.dump({"benchmarks": rows}, open(out, "w"))
    """)


class AbPairsCpus(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        build = self.tmp.name
        os.makedirs(os.path.join(build, "bench"))
        os.makedirs(os.path.join(build, "allocator"))
        program = os.path.join(build, "bench", "trimalloc_bench_micro")
        with open(program, "w") as f:
            f.write(FAKE_BENCHMARK)
        os.chmod(program, os.stat(program).st_mode | stat.S_IXUSR)
        # ab-pairs preloads these; the loader ignores an empty file with a warning on stderr.
        self.lib = os.path.join(build, "allocator", "libtrimalloc.so")
        open(self.lib, "w").close()
        self.build = build

    def tearDown(self):
        self.tmp.cleanup()

    def run_ab_pairs(self, *args):
        return subprocess.run([AB_PAIRS, "--build", self.build, "--rounds", "2", "--sizes", "16",
                               "--allocators", "trimalloc", "other=" + self.lib] + list(args),
                              capture_output=True, text=True, timeout=60)

    def row_16(self, stdout):
        rows = [line for line in stdout.splitlines() if line.startswith("| 16 B |")]
        self.assertEqual(len(rows), 1, stdout)
        return [cell.strip() for cell in rows[0].strip("|").split("|")]

    def test_pinned_runs_see_only_the_cpus_given(self):
        cpu = min(os.sched_getaffinity(0))
        done = self.run_ab_pairs("--cpus", str(cpu))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("runs pinned to CPUs %d" % cpu, done.stdout)
        cells = self.row_16(done.stdout)
        self.assertEqual(cells[1:3], ["1.00", "1.00"], done.stdout)  # both allocators' runs

    def test_unpinned_runs_see_every_cpu(self):
        allowed = len(os.sched_getaffinity(0))
        if allowed < 2:
            self.skipTest("one CPU: pinned and unpinned runs look the same")
        done = self.run_ab_pairs()
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertNotIn("pinned", done.stdout)
        self.assertEqual(self.row_16(done.stdout)[1], "%.2f" % allowed, done.stdout)

    def test_a_cpu_out_of_reach_is_refused(self):
        beyond = max(os.sched_getaffinity(0)) + 1
        done = self.run_ab_pairs("--cpus", str(beyond))
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("--cpus %d: this process may run only on CPUs" % beyond, done.stderr)

    def test_a_cpu_list_that_is_not_numbers_is_refused(self):
        done = self.run_ab_pairs("--cpus", "first")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("expected CPU numbers separated by commas", done.stderr)


if __name__ == "__main__":
    unittest.main()
