"""Tests of the `trimalloc` Python module (tools/python/trimalloc).

The module is exercised in child interpreters, with and without libtrimalloc preloaded; the library
is $TRIMALLOC_LIB (ctest sets it to the one built in the tree). Where the library does not export a
function yet (tm_trim, tm_stats_json), the test checks the module's clear Unsupported error instead.
"""
import json
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE_DIR = os.path.dirname(HERE)
sys.path.insert(0, MODULE_DIR)
from trimalloc import elf  # noqa: E402

LIB = os.environ.get("TRIMALLOC_LIB", "")
PYTHON = "/usr/bin/python3"


def run_python(code, preload=True, pythonmalloc="malloc"):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.pop("PYTHONMALLOC", None)
    env["PYTHONPATH"] = MODULE_DIR
    if preload:
        env["LD_PRELOAD"] = LIB
    if pythonmalloc:
        env["PYTHONMALLOC"] = pythonmalloc
    return subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True, timeout=60)


class NotLoadedTest(unittest.TestCase):
    def test_calls_explain_how_to_load(self):
        r = run_python("""
import trimalloc
assert not trimalloc.loaded()
for call in (trimalloc.trim, trimalloc.stats, trimalloc.version):
    try:
        call()
    except trimalloc.NotLoaded as e:
        assert "not loaded" in str(e) and "trimalloc-run" in str(e) and "LD_PRELOAD" in str(e), e
    else:
        raise AssertionError("%s did not raise NotLoaded" % call.__name__)
print("ok")
""", preload=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), "ok")

    def test_bad_level_is_rejected_before_anything_else(self):
        r = run_python("""
import trimalloc
try:
    trimalloc.trim(7)
except ValueError as e:
    print("ValueError", e)
""", preload=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("ValueError trim level must be 0, 1 or 2", r.stdout)


@unittest.skipUnless(LIB, "set TRIMALLOC_LIB to a built libtrimalloc.so (ctest does)")
class LoadedTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        assert os.path.exists(LIB), "TRIMALLOC_LIB=%s does not exist" % LIB
        cls.symbols = elf.defined_symbols(LIB)

    def test_loaded_and_version(self):
        r = run_python("import trimalloc; print(trimalloc.loaded()); print(trimalloc.version())")
        self.assertEqual(r.returncode, 0, r.stderr)
        loaded, version = r.stdout.split("\n")[:2]
        self.assertEqual(loaded, "True")
        self.assertRegex(version, r"^trimalloc \d+\.\d+\.\d+")

    def test_trim_gives_memory_back(self):
        code = """
import trimalloc
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
base = rss()
data = [("x" * 40 + str(i), i + 1000) for i in range(600000)]
peak = rss()
del data
try:
    released = trimalloc.trim(trimalloc.TRIM_ALL)
except trimalloc.Unsupported as e:
    print("unsupported", e)
else:
    print("trimmed", released, base, peak, rss())
"""
        r = run_python(code)
        self.assertEqual(r.returncode, 0, r.stderr)
        if "tm_trim" not in self.symbols:
            self.assertIn("unsupported", r.stdout)
            self.assertIn("does not export tm_trim()", r.stdout)
            return
        _, released, base, peak, after = r.stdout.split()
        released, base, peak, after = int(released), int(base), int(peak), int(after)
        self.assertGreaterEqual(released, 0)
        # Most of the ~70 MiB the list took is back with the OS after the trim (or earlier, by
        # automatic return).
        self.assertLess(after - base, (peak - base) * 0.25, r.stdout)

    def test_stats_is_a_dict(self):
        r = run_python("""
import json, trimalloc
try:
    s = trimalloc.stats()
except trimalloc.Unsupported as e:
    print("unsupported", e)
else:
    print(json.dumps(s))
""")
        self.assertEqual(r.returncode, 0, r.stderr)
        if "tm_stats_json" not in self.symbols:
            self.assertIn("does not export tm_stats_json()", r.stdout)
            return
        stats = json.loads(r.stdout)
        self.assertIsInstance(stats, dict)
        self.assertTrue(stats)

    def test_warns_when_python_objects_are_in_pymalloc(self):
        if "tm_trim" not in self.symbols:
            self.skipTest("this libtrimalloc has no tm_trim")
        r = run_python("import warnings, trimalloc; warnings.simplefilter('error'); trimalloc.trim()",
                       pythonmalloc=None)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("PYTHONMALLOC", r.stderr)


if __name__ == "__main__":
    unittest.main()
