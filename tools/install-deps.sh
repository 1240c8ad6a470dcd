#!/usr/bin/env bash
# Installs the Debian packages maskjit needs that are missing (and only those).
# Build: meson, ninja, LLVM 19, jansson. Tests: Criterion, clang-19 + its
# sanitizer/fuzzer runtimes, valgrind. Benchmark peers: OpenBLAS, LIBXSMM, oneDNN,
# XNNPACK (its header needs pthreadpool), gnuplot.
set -euo pipefail
packages=(meson ninja-build pkg-config gcc git llvm-19-dev libcriterion-dev libjansson-dev
          clang-19 libclang-rt-19-dev valgrind libopenblas-dev libxsmm-dev libdnnl-dev
          libxnnpack-dev libpthreadpool-dev gnuplot-nox)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#packages[@]} packages present"
    exit 0
fi
echo "install-deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
