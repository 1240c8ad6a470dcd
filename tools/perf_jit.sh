#!/bin/sh
# Profiles JIT-compiled code with perf, symbols and annotated assembly
# included. MASKJIT_PERF=1 makes the JIT link through LLVM's RTDyld layer
# with its perf listener, which writes a jitdump; `perf inject --jit` turns
# that into one ELF file per compiled function, so `perf report` names
# mj_body_main, mj_body_main.sparse3, ... and `perf annotate` shows their
# instructions.
#
#   tools/perf_jit.sh OUTDIR COMMAND [ARGS...]
#   e.g. tools/perf_jit.sh /tmp/prof build/bench/maskjit-bench --workloads W4
#
# Writes OUTDIR/perf.jit.data and prints the top of the report. Then:
#   perf report   -i OUTDIR/perf.jit.data --sort dso,sym
#   perf annotate -i OUTDIR/perf.jit.data --stdio -s mj_body_main.sparse3
# Needs perf (linux-perf) and kernel.perf_event_paranoid <= 2. In a VM
# without hardware counters perf samples on cpu-clock, which is enough.
set -eu
if [ $# -lt 2 ]; then
    echo "usage: tools/perf_jit.sh OUTDIR COMMAND [ARGS...]" >&2
    exit 2
fi
out=$1
shift
command -v perf >/dev/null || { echo "tools/perf_jit.sh: perf not found" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -rf "$out/.debug" "$out"/jitted-*.so "$out/perf.data" "$out/perf.jit.data"
# -k 1: the jitdump's timestamps are CLOCK_MONOTONIC, which inject matches
MASKJIT_PERF=1 JITDUMPDIR="$out" perf record -q -k 1 -F 10000 -o "$out/perf.data" "$@"
(cd "$out" && perf inject --jit -i perf.data -o perf.jit.data)
perf report -i "$out/perf.jit.data" --sort dso,sym --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25
