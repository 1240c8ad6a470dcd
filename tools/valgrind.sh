#!/usr/bin/env bash
# The Criterion suite (the subsets that finish in reasonable time) under
# valgrind memcheck. Fails on any memory error or definite/indirect leak.
#
#   tools/valgrind.sh            builds build-vg (gcc, debugoptimized) and runs
#
# Under valgrind the CPU has no AVX-512 (valgrind 3.19 emulates up to AVX2),
# so the JIT must detect the host and emit AVX2 code: the jit and
# reliability tests here prove that path bit-identical to eager.
#
# Criterion runs every test in a fresh process, and each one starts
# libLLVM under valgrind (seconds each), so the selection is what fits in
# ~10 minutes on 2 cores (~75 test processes):
#   - every test of tensor, ops, modules, parametrize, state_dict, seed, ir:
#     the library's allocation-heavy code without LLVM;
#   - jit: the seed model, every activation fused into linear, broadcasting,
#     transpose/reshape/expand, live vs frozen refresh, the shape guards;
#   - reliability: all but the 2M-node parse (30 MB of text) and the CLI
#     tests (30 CLI processes); the CLI runs once below instead.
# Left out: safetensors, passes, trace, torch_fixtures, cli, bench, the rest
# of jit (their code paths are the ones above, run at more sizes). Run any of
# them with: tools/valgrind.sh 'suite/*'
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=build-vg
if [ ! -d "$out" ]; then meson setup "$out" -Dbench_peers=disabled >/dev/null || exit 1; fi
ninja -C "$out" tests/maskjit-tests maskjit >/dev/null || { ninja -C "$out"; exit 1; }

if [ $# -gt 0 ]; then filters=("$@"); else filters=(
    'jit/@(seed_model_trace_compiled_equals_eager|op_linear_act_every_activation|op_elementwise_with_broadcasting|op_transpose_reshape_expand|live_mode_sees_weight_and_mask_changes_frozen_does_not|shape_guards_reject_bad_calls_with_messages)'
    'reliability/!(ir_two_million_nodes_hit_the_limit|cli_*)'
    '@(tensor|ops|modules|parametrize|seed|state_dict|ir)/*'
); fi
logs="$out/valgrind-logs"
rm -rf "$logs"
mkdir -p "$logs"
export MASKJIT_CACHE_DIR="$root/$out/test-cache"
failed=0
t0=$(date +%s)
for f in "${filters[@]}"; do
    echo "==== valgrind: $f"
    valgrind --tool=memcheck --trace-children=yes --leak-check=full \
        --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect \
        --suppressions="$root/valgrind/maskjit.supp" --error-exitcode=99 \
        --log-file="$logs/vg.%p.log" \
        "$out/tests/maskjit-tests" --filter "$f" --jobs 2 --timeout 900 2>&1 | grep -a -A4 "Synthesis\|FAIL\|CRASH\|Assertion"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "valgrind: the suite exited $rc"; failed=1; }
done
# The CLI once, under valgrind: LLVM sees valgrind's CPU (no AVX-512) and the
# compiled model must still run (an AVX-512 instruction would be SIGILL).
echo "==== valgrind: maskjit run mut --mode compiled; maskjit asm mut"
vg_cli() {
    valgrind --tool=memcheck --trace-children=yes --leak-check=full \
        --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect \
        --suppressions="$root/valgrind/maskjit.supp" --error-exitcode=99 \
        --log-file="$logs/vg.%p.log" "$out/maskjit" "$@"
}
vg_cli run mut --mode compiled >"$logs/run.txt" 2>&1 || { echo "maskjit run failed under valgrind"; cat "$logs/run.txt"; failed=1; }
"$out/maskjit" run mut --mode eager >"$logs/run-native.txt" 2>&1
if ! cmp -s "$logs/run.txt" "$logs/run-native.txt"; then
    echo "compiled under valgrind differs from eager natively:"; diff "$logs/run.txt" "$logs/run-native.txt" | head
    failed=1
fi
vg_cli asm mut >"$logs/asm.txt" 2>&1 || { echo "maskjit asm failed under valgrind"; failed=1; }
echo "LLVM host CPU natively:       $("$out/maskjit" asm mut 2>/dev/null | grep -m1 'host CPU' | sed 's/.*: //')"
echo "LLVM host CPU under valgrind: $(grep -m1 'host CPU' "$logs/asm.txt" | sed 's/.*: //')" \
     "($(grep -c zmm "$logs/asm.txt") zmm, $(grep -c ymm "$logs/asm.txt") ymm lines in its assembly)"

# Every traced process (the runner and each test worker) writes a log.
bad=$(grep -l "ERROR SUMMARY: [1-9]" "$logs"/vg.*.log 2>/dev/null)
n_logs=$(ls "$logs"/vg.*.log 2>/dev/null | wc -l)
if [ -n "$bad" ]; then
    failed=1
    for f in $bad; do
        echo "==== $f"
        grep -a -B2 -A25 "Invalid\|uninitialised\|definitely lost\|indirectly lost\|Mismatched\|overlap" "$f" | head -80
    done
fi
echo "valgrind: $n_logs processes checked in $(( $(date +%s) - t0 ))s;" \
    "$(echo "$bad" | grep -c . ) with errors"
[ "$failed" -eq 0 ] && echo "valgrind: no memory errors, no definite or indirect leaks"
exit "$failed"
