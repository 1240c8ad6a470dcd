#!/bin/sh
# Runs the benchmark against the peers' best kernels: this workplace pins
# OpenBLAS to its Haswell (AVX2) kernels through OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE; unsetting both for this one command lets it pick its
# AVX-512 kernel (shared notes: peers.md). Single-threaded OpenBLAS and oneDNN
# unless a workload asks for more. Never use these settings in tests or CI.
#
#   tools/bench.sh [--json|--csv] [--workloads W1,W3] [--smoke] [--plot w6.svg] ...
#   tools/bench.sh --torch [--workloads W1,W3] [--rounds N] [--min-ms X] [--clock cpu]
#
# --torch adds PyTorch (tools/bench_torch.py, /usr/bin/python3 with torch) as a
# peer measured in the same run: N rounds (default 5) alternate one round of
# maskjit-bench with one round of PyTorch per workload, and the table gives
# each variant's median over the rounds and its ratio to the best peer.
# --clock cpu times both sides in process CPU time (single thread): on a
# machine shared with other jobs the load changes within a round, and wall
# time charges it to whichever side runs then.
#
# W7 (a pruned BERT-base encoder layer, 90% unstructured masks) and W7b4 (the
# same with 1x4 block masks) run only with --torch, at batch 1 and 8:
#   tools/bench.sh --torch --workloads W7,W7b4 --rounds 3
# Their trace files are written once into $BUILD_DIR/w7/ by
# tools/bench_torch.py --export-w7 (seeded: the PyTorch side builds the same
# weights and masks), and maskjit-bench times them as user models: the
# interpreter (the reference, timed in the first round only: it is slow) and
# compiled exact, fast (live, dense) and frozen.
#
# W8 (a pruned ResNet basic block: two 3x3 convs 64->64 at 56x56 with BN, ReLU
# and the residual, 80% unstructured conv masks) runs the same way at batch 1,
# from $BUILD_DIR/w8/W8.safetensors (tools/bench_torch.py --export-w8):
#   tools/bench.sh --torch --workloads W8 --clock cpu
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
peer_env() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 "$@"; }

if [ "${1:-}" != --torch ]; then
    peer_env "$exe" "$@"
    exit $?
fi
shift
workloads=W1,W2,W3,W4,W5
rounds=5
min_ms=25
clock=wall
while [ $# -gt 0 ]; do
    case $1 in
    --workloads) workloads=${2:?--workloads needs a value}; shift 2 ;;
    --rounds) rounds=${2:?--rounds needs a value}; shift 2 ;;
    --min-ms) min_ms=${2:?--min-ms needs a value}; shift 2 ;;
    --clock) clock=${2:?--clock needs wall or cpu}; shift 2 ;;
    *) echo "tools/bench.sh --torch: unknown argument '$1' (--workloads, --rounds, --min-ms, --clock)" >&2; exit 2 ;;
    esac
done
case $rounds in ''|*[!0-9]*|0) echo "tools/bench.sh: --rounds wants a count >= 1, got '$rounds'" >&2; exit 2 ;; esac
py=/usr/bin/python3
if ! $py -c 'import torch' 2>/dev/null; then
    echo "tools/bench.sh --torch: $py cannot import torch (apt-get install python3-torch)" >&2
    exit 2
fi
for w in $(echo "$workloads" | tr ',' ' '); do
    case $w in
    W7|W7b4)
        if [ ! -f "$build/w7/$w.safetensors" ]; then
            echo "writing the W7 trace files into $build/w7 (once; a few minutes)" >&2
            $py "$root/tools/bench_torch.py" --export-w7 "$build/w7" --maskjit "$build/maskjit" >&2
        fi ;;
    W8)
        if [ ! -f "$build/w8/W8.safetensors" ]; then
            echo "writing the W8 trace file into $build/w8 (once)" >&2
            $py "$root/tools/bench_torch.py" --export-w8 "$build/w8" --maskjit "$build/maskjit" >&2
        fi ;;
    esac
done
log=$(mktemp)
trap 'rm -f "$log"' EXIT
compact() { $py -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))'; }
r=1
while [ "$r" -le "$rounds" ]; do
    for w in $(echo "$workloads" | tr ',' ' '); do
        echo "round $r/$rounds: $w" >&2
        case $w in
        W7|W7b4)
            ref=; [ "$r" -gt 1 ] && ref=--untimed-ref
            peer_env "$exe" "$build/w7/$w.safetensors" --id "$w" --batch 1,8 --threads 1 $ref \
                --reps 1 --min-ms "$min_ms" --clock "$clock" --json 2>/dev/null | compact >>"$log" ;;
        W8)
            ref=; [ "$r" -gt 1 ] && ref=--untimed-ref
            peer_env "$exe" "$build/w8/W8.safetensors" --id W8 --batch 1 --threads 1 $ref \
                --reps 1 --min-ms "$min_ms" --clock "$clock" --json 2>/dev/null | compact >>"$log" ;;
        *) peer_env "$exe" --workloads "$w" --reps 1 --min-ms "$min_ms" --clock "$clock" --json 2>/dev/null | compact >>"$log" ;;
        esac
        peer_env $py "$root/tools/bench_torch.py" --workloads "$w" --reps 1 --min-ms "$min_ms" --clock "$clock" --json \
            2>/dev/null | compact >>"$log"
    done
    r=$((r + 1))
done
$py "$root/tools/bench_torch.py" --merge "$log"
