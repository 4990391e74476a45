"""Allocation-heavy, deterministic Python workload for the LD_PRELOAD tests (run with
PYTHONMALLOC=malloc so that every object allocation is a malloc/realloc/free). Prints digests of
what it built; the output must be the same with and without trimalloc."""
import collections
import hashlib
import json
import random
import re
import sys
import threading


def build(seed, n):
    rnd = random.Random(seed)
    d = {}
    for i in range(n):
        key = "k%d_%d" % (rnd.randrange(1 << 30), i)
        kind = i % 6
        if kind == 0:
            val = [rnd.random() for _ in range(rnd.randrange(20))]
        elif kind == 1:
            val = "".join(chr(97 + rnd.randrange(26)) for _ in range(rnd.randrange(1, 300)))
        elif kind == 2:
            val = {str(j): j * 1.5 for j in range(rnd.randrange(12))}
        elif kind == 3:
            val = [i, str(i), [i] * (i % 9), None, True]
        elif kind == 4:
            val = bytes(rnd.randrange(256) for _ in range(rnd.randrange(700))).hex()
        else:
            val = "\u00e9\u4e2d" * rnd.randrange(50) + str(i)
        d[key] = val
    for k in list(d)[::3]:
        del d[k]
    return d


def digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def work(seed, n, out):
    d = build(seed, n)
    text = json.dumps(d, sort_keys=True)
    back = json.loads(text)
    assert back == d
    words = re.findall(r"[a-z]{3,}", text)
    counts = collections.Counter(words).most_common(5)
    big = []
    for i in range(n):
        big.append(str(i) * (i % 17))
        if i % 1000 == 999:
            big = big[::2]
    acc = ""
    for i in range(3000):
        acc += chr(65 + i % 26) * (i % 40)
    s = set(d) - set(list(d)[::5])
    ba = bytearray()
    for i in range(2000):
        ba += bytes([i % 256]) * (i % 100)
    out[seed] = (len(d), digest(d), len(text), counts, len(big), len(acc), len(s), hashlib.sha256(ba).hexdigest()[:16])


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    results = {}
    threads = [threading.Thread(target=work, args=(seed, n, results)) for seed in range(1, 5)]
    for t in threads:
        t.start()
    work(0, n, results)
    for t in threads:
        t.join()
    for seed in sorted(results):
        print(seed, *results[seed])
    # One large structure that lives across many resizes, then a json round trip of it.
    table = {i: [str(j) for j in range(i % 50)] for i in range(20000)}
    blob = json.dumps(table)
    print("table", len(blob), digest(json.loads(blob)))


if __name__ == "__main__":
    main()
