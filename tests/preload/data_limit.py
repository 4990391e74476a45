"""Run under a data-segment limit (RLIMIT_DATA, `ulimit -d`) well above what this script needs:
it must print the same with and without trimalloc. trimalloc's arena map (128 MiB of address
space) once counted against that limit in full, and python3 could not even start under it."""
import hashlib

words = [("%x" % (i * 2654435761 % 2**32)) * (1 + i % 7) for i in range(200000)]
index = {w: i for i, w in enumerate(words)}
blob = "".join(sorted(words[::5]))
print(len(words), len(index), hashlib.sha256(blob.encode()).hexdigest()[:16])
