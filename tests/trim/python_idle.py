"""Issue 3's default: a Python program under trimalloc that does `del big_list` and then sits
idle is back near its starting RSS within 2 seconds. Run with LD_PRELOAD=libtrimalloc.so and
PYTHONMALLOC=malloc; exits non-zero (with the figures) if not."""
import sys
import time


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


with open("/proc/self/maps") as f:
    if "libtrimalloc" not in f.read():
        sys.exit("libtrimalloc is not loaded")
base = rss_mib()
big_list = [{"id": i, "name": "item-%d" % i} for i in range(1_000_000)]
peak = rss_mib()
del big_list
time.sleep(2)
idle = rss_mib()
print(f"base {base:.1f} MiB, peak {peak:.1f} MiB, 2 s after del {idle:.1f} MiB")
if peak - base < 100:
    sys.exit("the workload did not grow the heap; the check would be meaningless")
if idle > base + 8:
    sys.exit("RSS did not come back near its start")
