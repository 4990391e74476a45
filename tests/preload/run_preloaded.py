#!/usr/bin/python3
"""Runs real programs with LD_PRELOAD=libtrimalloc.so and compares them with a run without it.

    run_preloaded.py --lib libtrimalloc.so --probe libtrimalloc_preload_probe.so CASE

CASE is one of
  python         /usr/bin/python3 (PYTHONMALLOC=malloc) on alloc_heavy.py
  data-limit     /usr/bin/python3 on data_limit.py under `ulimit -d 102400` (RLIMIT_DATA), and on
                 a tiny script under `ulimit -d 30720`
  address-space-limit
                 the same scripts under RLIMIT_AS = 200 MiB and 64 MiB, and sort(1) on a 9 MB file
                 under 64 MiB
  sort           sort(1) on a ~20 MB generated file, three ways (locale, numeric key, external merge)
  git            git init/add/commit/log/diff/gc/fsck/archive on a repository made in a temp dir
  probe-selftest the loaded-check itself: it must reject a process without trimalloc

Each preloaded run also loads a probe library whose constructor writes one line per process to a
file: "ok" only if every malloc-family symbol of that process resolves to libtrimalloc.so and a
malloc'd block is trimalloc's (tm_owns). The case fails unless every process of the preloaded
run said "ok", both runs exit 0, and stdout and stderr are identical.
"""
import argparse
import hashlib
import os
import random
import resource
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


class Failure(Exception):
    pass


def base_env(extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "TRIMALLOC_PROBE_OUT", "MALLOC_CONF")}
    env["LC_ALL"] = "C"
    env["TZ"] = "UTC"
    env.update(extra or {})
    return env


class Runner:
    def __init__(self, lib, probe, tmp):
        self.lib = lib
        self.probe = probe
        self.tmp = tmp
        self.count = 0

    def run(self, cmd, preload, env=None, cwd=None, timeout=120, rlimit=None):
        """Runs cmd; returns (returncode, stdout, stderr, probe_lines). preload: None (plain run),
        'both' (trimalloc + probe) or 'probe-only' (the probe without trimalloc). rlimit:
        (resource, bytes) set in the child before exec, as prlimit(1) or systemd's Limit* do."""
        env = base_env(env)
        self.count += 1
        probe_out = os.path.join(self.tmp, "probe-%d.txt" % self.count)
        if preload:
            libs = [self.probe] if preload == "probe-only" else [self.lib, self.probe]
            env["LD_PRELOAD"] = ":".join(libs)
            env["TRIMALLOC_PROBE_OUT"] = probe_out
        def limit():
            resource.setrlimit(rlimit[0], (rlimit[1], rlimit[1]))
        p = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                           preexec_fn=limit if rlimit else None)
        lines = []
        if os.path.exists(probe_out):
            with open(probe_out) as f:
                lines = [l.strip() for l in f if l.strip()]
        return p.returncode, p.stdout, p.stderr, lines


def check_probe(lines, what, min_processes=1):
    if len(lines) < min_processes:
        raise Failure("%s: the probe saw %d process(es), expected at least %d: was trimalloc preloaded?"
                      % (what, len(lines), min_processes))
    bad = [l for l in lines if l.split()[1:2] != ["ok"]]
    if bad:
        raise Failure("%s: trimalloc is not the allocator of every process: %s" % (what, "; ".join(bad[:5])))


def short(b):
    s = b.decode(errors="replace")
    return s if len(s) < 2000 else s[:2000] + "...(%d bytes)" % len(s)


def compare(what, plain, pre):
    rc0, out0, err0, _ = plain
    rc1, out1, err1, _ = pre
    if rc0 != 0:
        raise Failure("%s without trimalloc exited %d (the test itself is broken): %s" % (what, rc0, short(err0)))
    if rc1 != 0:
        raise Failure("%s with trimalloc exited %d; stderr: %s" % (what, rc1, short(err1)))
    if out0 != out1:
        raise Failure("%s: stdout differs with trimalloc (sha256 %s vs %s); with trimalloc: %s"
                      % (what, hashlib.sha256(out0).hexdigest()[:12], hashlib.sha256(out1).hexdigest()[:12],
                         short(out1)))
    if err0 != err1:
        raise Failure("%s: stderr differs with trimalloc:\n--- without\n%s\n--- with\n%s"
                      % (what, short(err0), short(err1)))


def case_python(r):
    cmd = ["/usr/bin/python3", os.path.join(HERE, "alloc_heavy.py")]
    env = {"PYTHONMALLOC": "malloc", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    plain = r.run(cmd, None, env)
    pre = r.run(cmd, "both", env)
    compare("python3 alloc_heavy.py", plain, pre)
    check_probe(pre[3], "python3")
    if len(plain[1]) < 100:
        raise Failure("python3 alloc_heavy.py printed almost nothing: %r" % plain[1])


def case_python_memory_error(r):
    """More memory than RAM plus swap: the same answer as glibc's (MemoryError under the kernel's
    default overcommit policy; the block, untouched, where the kernel always overcommits)."""
    cmd = ["/usr/bin/python3", os.path.join(HERE, "memory_error.py")]
    env = {"PYTHONMALLOC": "malloc", "PYTHONDONTWRITEBYTECODE": "1"}
    plain = r.run(cmd, None, env)
    pre = r.run(cmd, "both", env)
    compare("python3 memory_error.py", plain, pre)
    check_probe(pre[3], "python3")


def run_limited(r, option, runs, env):
    """Each (what, limit, shell command, argument) under `ulimit <option> <limit>`: the same
    output with and without trimalloc."""
    for what, limit, command, arg in runs:
        cmd = ["/bin/sh", "-c", "ulimit %s %s && %s" % (option, limit, command), arg]
        plain = r.run(cmd, None, env)
        pre = r.run(cmd, "both", env)
        compare("%s under ulimit %s %s" % (what, option, limit), plain, pre)
        check_probe(pre[3], what)


TINY_SCRIPT = 'import json; print(json.dumps({"a": [1, 2, 3]}))'


def case_data_limit(r):
    """Under RLIMIT_DATA = 100 MB (ulimit -d 102400), far above what the script needs: the same
    output as glibc's (the arena map once counted 128 MiB against the limit in full). And a
    tiny script under 30 MiB (ulimit -d 30720), which python3 runs under 10000 with glibc and
    under 25000 with trimalloc: with small arenas mapped writable whole (8 MiB each) and the
    large allocator's region table (3.5 MiB), it needed over 35000."""
    script = os.path.join(HERE, "data_limit.py")
    env = {"PYTHONMALLOC": "malloc", "PYTHONDONTWRITEBYTECODE": "1"}
    run_limited(r, "-d", [
        ("python3 data_limit.py", "102400", 'exec /usr/bin/python3 "$0"', script),
        ("python3 -c '%s'" % TINY_SCRIPT, "30720", 'exec /usr/bin/python3 -c "$0"', TINY_SCRIPT),
    ], env)


def case_address_space_limit(r):
    """Under RLIMIT_AS, set before exec (prlimit(1), systemd's LimitAS=, a shell's `ulimit -v`
    before it starts the program): it counts every mapping, readable or not. trimalloc's arena
    map reserved 128 MiB of address space at start, so python3 could not start under 170000 KiB
    (glibc runs data_limit.py under 70000 and the tiny script under 15000), nor sort(1) under
    100000; under a limit below 16 GiB the map is a 512 KiB window now. The limits here leave
    trimalloc's other start-up mappings (about 27 MiB: see the README) room."""
    script = os.path.join(HERE, "data_limit.py")
    path = os.path.join(r.tmp, "numbers.txt")
    rnd = random.Random(5)
    with open(path, "w") as f:
        for _ in range(300000):
            f.write("%d %s\n" % (rnd.randrange(10**9), "x" * rnd.randrange(40)))
    py_env = {"PYTHONMALLOC": "malloc", "PYTHONDONTWRITEBYTECODE": "1"}
    runs = [
        ("python3 data_limit.py", 200, ["/usr/bin/python3", script], py_env),
        ("python3 -c '%s'" % TINY_SCRIPT, 64, ["/usr/bin/python3", "-c", TINY_SCRIPT], py_env),
        ("sort numbers.txt", 64, ["sort", path], {}),
    ]
    for what, mib, cmd, env in runs:
        limit = (resource.RLIMIT_AS, mib << 20)
        what = "%s under RLIMIT_AS = %d MiB" % (what, mib)
        plain = r.run(cmd, None, env, rlimit=limit)
        pre = r.run(cmd, "both", env, rlimit=limit)
        compare(what, plain, pre)
        check_probe(pre[3], what)


def case_sort(r):
    path = os.path.join(r.tmp, "input.txt")
    rnd = random.Random(20240501)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rnd.choice(letters) for _ in range(rnd.randrange(2, 12))) for _ in range(5000)]
    with open(path, "w") as f:
        size = 0
        while size < 20 * 1024 * 1024:
            line = "%s %d %s %s\n" % (rnd.choice(words), rnd.randrange(-10**9, 10**9), rnd.choice(words),
                                      "x" * rnd.randrange(0, 60))
            f.write(line)
            size += len(line)
    spill = os.path.join(r.tmp, "spill")
    os.mkdir(spill)
    runs = [
        (["sort", path], {"LC_ALL": "C.UTF-8"}),
        (["sort", "-t", " ", "-k2,2n", "-k1,1", path], {}),
        (["sort", "-u", "-S", "4M", "--parallel=2", "-T", spill, path], {}),
    ]
    for cmd, env in runs:
        what = " ".join(cmd).replace(r.tmp, "$TMP")
        plain = r.run(cmd, None, env)
        pre = r.run(cmd, "both", env)
        compare(what, plain, pre)
        check_probe(pre[3], what)
        if len(plain[1]) < 1024 * 1024:
            raise Failure("%s: output unexpectedly small (%d bytes)" % (what, len(plain[1])))


def make_tree(root, rnd, version):
    for i in range(120):
        d = os.path.join(root, "dir%d" % (i % 7))
        os.makedirs(d, exist_ok=True)
        if version == 2 and i % 11 == 0:
            continue  # deleted in the second commit
        with open(os.path.join(d, "file%d.txt" % i), "w") as f:
            for j in range(40 + i % 60):
                changed = version == 2 and i % 3 == 0 and j % 5 == 0
                f.write("line %d of file %d %s%s\n" % (j, i, "changed " if changed else "", "w" * ((i * j) % 70)))
    if version == 2:
        for i in range(10):
            with open(os.path.join(root, "new%d.bin" % i), "wb") as f:
                f.write(bytes(rnd.randrange(256) for _ in range(3000)))


def git_session(r, root, preload):
    """All git commands of one session; returns (combined output, probe lines)."""
    env = {
        "HOME": root, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.path.join(root, "gitconfig"),
        "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.org", "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.org", "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
        "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z", "GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat",
    }
    repo = os.path.join(root, "repo")
    os.makedirs(repo)
    out = []
    probes = []
    rnd = random.Random(99)

    def git(*args):
        rc, so, se, lines = r.run(["git"] + list(args), preload, env, cwd=repo)
        probes.extend(lines)
        out.append(b"$ git %s -> %d\n%s%s" % (" ".join(args).encode(), rc, so, se))
        if rc != 0:
            how = "with trimalloc" if preload else "without trimalloc"
            raise Failure("git %s exited %d %s: %s" % (" ".join(args), rc, how, short(se)))

    git("init", "-q", "-b", "main", ".")
    git("config", "gc.auto", "0")
    git("config", "pack.threads", "2")
    make_tree(repo, rnd, 1)
    git("add", "-A")
    git("commit", "-q", "-m", "first commit")
    make_tree(repo, rnd, 2)
    for i in range(0, 120, 11):
        os.unlink(os.path.join(repo, "dir%d" % (i % 7), "file%d.txt" % i))
    git("add", "-A")
    git("commit", "-q", "-m", "second commit")
    git("log", "--stat", "--format=%H %an %s")
    git("log", "-p", "-1", "--format=%H")
    git("diff", "--numstat", "HEAD~1", "HEAD")
    git("grep", "-n", "of file 3 changed", "HEAD")
    git("blame", "--porcelain", "dir3/file3.txt")
    git("gc", "-q")
    git("fsck", "--full", "--no-progress")
    git("cat-file", "--batch-all-objects", "--batch-check")
    git("archive", "--format=tar", "HEAD")
    git("status", "--porcelain")
    return b"".join(out), probes


def case_git(r):
    plain_root = os.path.join(r.tmp, "plain")
    pre_root = os.path.join(r.tmp, "preloaded")
    out0, _ = git_session(r, plain_root, None)
    out1, probes = git_session(r, pre_root, "both")
    compare("git session", (0, out0, b"", []), (0, out1, b"", []))
    check_probe(probes, "git", min_processes=16)


def case_probe_selftest(r):
    # Without trimalloc the probe must report a failure, and check_probe must reject it.
    rc, _, _, lines = r.run(["/bin/true"], "probe-only")
    if rc != 0 or not lines or "FAIL" not in lines[0]:
        raise Failure("probe without trimalloc should write a FAIL line, wrote %r" % lines)
    try:
        check_probe(lines, "selftest")
    except Failure:
        pass
    else:
        raise Failure("check_probe accepted a process without trimalloc: %r" % lines)
    # No preload at all: no lines, also rejected.
    try:
        check_probe(r.run(["/bin/true"], None)[3], "selftest")
    except Failure:
        pass
    else:
        raise Failure("check_probe accepted a run without the probe")
    # With trimalloc it says ok.
    rc, _, err, lines = r.run(["/bin/true"], "both")
    if rc != 0:
        raise Failure("/bin/true with trimalloc exited %d: %s" % (rc, short(err)))
    check_probe(lines, "/bin/true")


CASES = {"python": case_python, "python-memory-error": case_python_memory_error, "data-limit": case_data_limit, "address-space-limit": case_address_space_limit, "sort": case_sort, "git": case_git, "probe-selftest": case_probe_selftest}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--probe", required=True)
    ap.add_argument("case", choices=sorted(CASES))
    args = ap.parse_args()
    for f in (args.lib, args.probe):
        if not os.path.isfile(f):
            print("run_preloaded: no such file: %s" % f, file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="trimalloc-preload-") as tmp:
        r = Runner(os.path.abspath(args.lib), os.path.abspath(args.probe), tmp)
        try:
            CASES[args.case](r)
        except Failure as e:
            print("FAIL: %s" % e, file=sys.stderr)
            return 1
        except subprocess.TimeoutExpired as e:
            print("FAIL: timed out (deadlock?): %s" % " ".join(e.cmd), file=sys.stderr)
            return 1
    print("ok: %s" % args.case)
    return 0


if __name__ == "__main__":
    sys.exit(main())
