#!/usr/bin/python3
"""ctest driver for the parts of stats/ that are seen from outside a process (tests/stats):

  check_stats.py json <json_main>            JSON parses and holds the documented keys
  check_stats.py env <libtrimalloc.so>       TRIMALLOC_STATS / TRIMALLOC_PROFILE at start and exit
  check_stats.py profile <leak_site> <diff>  the leaking call site is first in the snapshot diff
"""
import json
import os
import subprocess
import sys
import tempfile

KEYS = {
    "": ["version", "allocated", "peak_allocated_seen", "resident_ours", "mapped", "classes", "arenas",
         "large", "metadata", "kernel", "profile", "ledger"],
    "classes[]": ["class", "block_size", "pools", "blocks_live", "blocks_free", "peak_blocks_seen",
                  "peak_pools", "peak_blocks_bound"],
    "arenas": ["count", "released", "mapped", "resident", "pools_in_use", "pools_free_dirty",
               "pools_free_clean", "empty_pools_resident", "pages_released", "trims", "trim_bytes_released"],
    "large": ["allocated", "active", "resident", "retained", "mapped", "metadata", "dirty", "resident_measured", "nmalloc", "ndalloc"],
    "metadata": ["thread_heaps", "arena_headers", "profiler"],
    "kernel": ["rss", "rss_anon", "rss_file"],
    "profile": ["rate", "samples_live"],
    "ledger": ["small_live", "small_free", "small_pool_slack", "small_empty_pools", "large_live",
               "large_slack", "large_dirty", "metadata", "not_ours_file", "not_ours_anon",
               "small_live_requested", "small_rounding", "small_rounding_stderr",
               "small_requested_samples", "total", "rss_kernel", "ours", "overcount"],
}
LEDGER_PARTS = KEYS["ledger"][:10]


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def check_doc(doc, where):
    # The same parse the documentation shows: python3 -c 'import json,sys; json.load(sys.stdin)'
    for section, keys in KEYS.items():
        obj = doc if section == "" else (doc["classes"][0] if section == "classes[]" else doc[section])
        missing = [k for k in keys if k not in obj]
        if missing:
            fail("%s: section '%s' lacks %s" % (where, section or "top", missing))
    if len(doc["classes"]) != 32:
        fail("%s: %d classes, expected 32" % (where, len(doc["classes"])))
    led = doc["ledger"]
    if sum(led[k] for k in LEDGER_PARTS) != led["total"]:
        fail("%s: ledger parts do not sum to total" % where)
    # A tiny process is dominated by jemalloc's metadata estimate (docs/stats.md): 5% or 4 MiB.
    if abs(led["total"] - led["rss_kernel"]) > max(0.05 * led["rss_kernel"], 4 << 20):
        fail("%s: ledger total %d vs kernel RSS %d" % (where, led["total"], led["rss_kernel"]))


def parse_with_json_tool(text, where):
    r = subprocess.run(["/usr/bin/python3", "-c", "import json,sys; json.load(sys.stdin)"], input=text,
                       capture_output=True, text=True)
    if r.returncode != 0:
        fail("%s: not JSON: %s\n%s" % (where, r.stderr, text[:500]))
    return json.loads(text)


def cmd_json(prog):
    out = subprocess.run([prog, "json"], capture_output=True, text=True, check=True).stdout
    doc = parse_with_json_tool(out, "tm_stats_print json")
    check_doc(doc, "tm_stats_print json")
    if doc["large"]["allocated"] < 500 * 4000 or doc["classes"][3]["blocks_live"] < 500:
        fail("json_main's 500 large and 500 small blocks are not in the figures")
    r = subprocess.run([prog, "yaml"], capture_output=True, text=True)
    if r.returncode == 0 or "'yaml'" not in r.stderr:
        fail("an unknown format must fail and be named on stderr; got %r" % r.stderr)
    print("ok")


def run_preloaded(lib, env, argv=("/bin/true",)):
    e = dict(os.environ, LD_PRELOAD=lib, **env)
    return subprocess.run(list(argv), env=e, capture_output=True, text=True, timeout=60)


def cmd_env(lib):
    r = run_preloaded(lib, {"TRIMALLOC_STATS": "json"})
    check_doc(parse_with_json_tool(r.stderr, "TRIMALLOC_STATS=json"), "TRIMALLOC_STATS=json")
    r = run_preloaded(lib, {"TRIMALLOC_STATS": "1"})
    if "RSS ledger" not in r.stderr:
        fail("TRIMALLOC_STATS=1 printed no table: %r" % r.stderr[:300])
    with tempfile.TemporaryDirectory() as d:
        for name, is_json in (("s.json", True), ("s.txt", False)):
            path = os.path.join(d, name)
            r = run_preloaded(lib, {"TRIMALLOC_STATS": path})
            text = open(path).read() if os.path.exists(path) else fail("%s not written: %s" % (path, r.stderr))
            if is_json:
                check_doc(json.loads(text), path)
            elif "RSS ledger" not in text:
                fail("%s lacks the ledger" % path)
    # Requested bytes and rounding: null with sampling off, estimates with it on.
    doc = json.loads(run_preloaded(lib, {"TRIMALLOC_STATS": "json"}).stderr)
    if doc["ledger"]["small_live_requested"] is not None:
        fail("small_live_requested must be null with sampling off")
    # The figures are read while the strings are alive (at exit Python has freed them).
    script = ("import ctypes, sys\n"
              "x = [str(i) * 3 for i in range(200000)]\n"
              "lib = ctypes.CDLL(None)\n"
              "if sys.argv[1] == 'json':\n"
              "    buf = ctypes.create_string_buffer(1 << 20)\n"
              "    lib.tm_stats_json(buf, len(buf))\n"
              "    print(buf.value.decode())\n"
              "else:\n"
              "    lib.tm_stats_print(ctypes.c_void_p.in_dll(lib, 'stdout'), b'text')\n")
    env = {"TRIMALLOC_PROFILE": "4k", "PYTHONMALLOC": "malloc"}
    doc = json.loads(run_preloaded(lib, env, ("/usr/bin/python3", "-c", script, "json")).stdout)
    led = doc["ledger"]
    if led["small_live_requested"] is None or led["small_requested_samples"] < 100:
        fail("with TRIMALLOC_PROFILE=4k the ledger must estimate requested bytes: %r" % led)
    if led["small_live_requested"] + led["small_rounding"] != led["small_live"] or led["small_rounding"] <= 0:
        fail("requested + rounding must equal small_live, rounding > 0: %r" % led)
    r = run_preloaded(lib, env, ("/usr/bin/python3", "-c", script, "text"))
    if "of which rounding inside size classes" not in r.stdout or "estimate" not in r.stdout:
        fail("the table must show the rounding estimate: %r" % (r.stdout[-1500:] + r.stderr))
    for var, value in (("TRIMALLOC_STATS", "bogus"), ("TRIMALLOC_STATS", "/nonexistent-dir/x.json"),
                       ("TRIMALLOC_PROFILE", "12q"), ("TRIMALLOC_PROFILE", "-5")):
        r = run_preloaded(lib, {var: value})
        if r.returncode != 0 or value not in r.stderr or (var not in r.stderr and "cannot write" not in r.stderr):
            fail("%s=%s: expected one message naming it, got rc=%d %r" % (var, value, r.returncode, r.stderr))
        if r.stderr.count(value) != 1:
            fail("%s=%s reported more than once: %r" % (var, value, r.stderr))
    print("ok")


def cmd_profile(prog, tool):
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "leak_site.c")
    leak_line = next(i for i, l in enumerate(open(src), 1) if "LEAK-LINE" in l)
    with tempfile.TemporaryDirectory() as d:
        a, b = os.path.join(d, "a.snap"), os.path.join(d, "b.snap")
        r = subprocess.run([prog, a, b], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, TRIMALLOC_PROFILE="8k"))
        if r.returncode != 0:
            fail("leak_site failed: %s" % r.stderr)
        if "not wired" in r.stderr:
            fail("sampling is not wired into the allocator: %s" % r.stderr)
        out = subprocess.run(["/usr/bin/python3", tool, a, b, "--top", "3"], capture_output=True, text=True,
                             check=True).stdout
        print(out)
        lines = out.splitlines()
        if len(lines) < 2 or ("leak_site.c:%d" % leak_line) not in lines[1]:
            fail("leak_site.c:%d is not the top site" % leak_line)
        # 200000 x 64 B = 12.2 MiB leaked. At 8 KiB sampling that is ~1560 samples, a relative
        # standard deviation of ~2.5%, so +-10% is a 4-sigma bound (at 64 KiB it would be 1.4).
        size = lines[1].split("size=")[1].split(" (")[0]
        value, unit = size.split()
        mib = float(value) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit]
        if not 11.0 <= mib <= 13.5:
            fail("estimated leak %.2f MiB, expected about 12.2" % mib)
    print("ok")


if __name__ == "__main__":
    {"json": cmd_json, "env": cmd_env, "profile": cmd_profile}[sys.argv[1]](*sys.argv[2:])
