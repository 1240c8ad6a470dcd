#!/bin/sh
# Runs the benchmark against the peers' best kernels: this workplace pins
# OpenBLAS to its Haswell (AVX2) kernels through OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE; unsetting both for this one command lets it pick its
# AVX-512 kernel (shared notes: peers.md). Single-threaded OpenBLAS unless a
# workload asks for more. Never use these settings in tests or CI.
#
#   tools/bench.sh [--json|--csv] [--workloads W1,W3] [--smoke] [--plot w6.svg] ...
#
# BUILD_DIR picks the build directory (default: build).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-build}
case $build in /*) ;; *) build=$root/$build ;; esac
exe=$build/bench/maskjit-bench
if [ ! -x "$exe" ]; then
    echo "tools/bench.sh: $exe not found; build first (meson setup $build && ninja -C $build)" >&2
    exit 2
fi
exec env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 "$exe" "$@"
