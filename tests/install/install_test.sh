#!/usr/bin/env bash
# cmake --install gives a usable package: headers, libtrimalloc.so, CMake config (find_package),
# pkg-config, and the tools (trimalloc-run, trimalloc-snapshot-diff, the Python module).
# Usage: install_test.sh <build dir> <source dir>
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
for f in include/trimalloc/trimalloc.h include/trimalloc/stats.h include/trimalloc/gc.hpp; do
  [[ -f "$tmp/prefix/$f" ]] || { echo "missing $f after install"; exit 1; }
done
for f in bin/trimalloc-run bin/trimalloc-snapshot-diff; do
  [[ -x "$tmp/prefix/$f" ]] || { echo "missing or not executable: $f after install"; exit 1; }
done
"$tmp/prefix/bin/trimalloc-snapshot-diff" --help | grep -q -- "--top" ||
  { echo "installed trimalloc-snapshot-diff does not run"; exit 1; }
# The installed Python module finds the installed diff tool (not the source tree's).
pydir="$tmp/prefix/share/trimalloc/python"
[[ -f "$pydir/trimalloc/__init__.py" ]] || { echo "missing share/trimalloc/python/trimalloc after install"; exit 1; }
found=$(cd "$tmp" && env -u TRIMALLOC_SNAPSHOT_DIFF PATH=/usr/bin:/bin PYTHONPATH="$pydir" \
        /usr/bin/python3 -c 'import trimalloc; print(trimalloc._diff_tool())')
[[ "$found" == "$tmp/prefix/bin/trimalloc-snapshot-diff" ]] ||
  { echo "installed module found the diff tool at '$found'"; exit 1; }
libdir=$(ls -d "$tmp"/prefix/lib*/ | head -1)
# 1. find_package
cmake -S "$src/tests/install/consumer" -B "$tmp/c1" -G Ninja -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/c1" >/dev/null
"$tmp/c1/consumer"
# 2. pkg-config
export PKG_CONFIG_PATH="$libdir/pkgconfig"
g++ -std=c++17 "$src/tests/install/consumer/main.cpp" $(pkg-config --cflags --libs trimalloc) \
  -Wl,-rpath,"$libdir" -ldl -o "$tmp/c2"
"$tmp/c2"
echo "install ok"
