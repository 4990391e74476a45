#!/usr/bin/env bash
# cmake --install gives a usable package: headers, libtrimalloc.so, CMake config (find_package)
# and pkg-config. Usage: install_test.sh <build dir> <source dir>
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
for f in include/trimalloc/trimalloc.h include/trimalloc/stats.h include/trimalloc/gc.hpp; do
  [[ -f "$tmp/prefix/$f" ]] || { echo "missing $f after install"; exit 1; }
done
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
