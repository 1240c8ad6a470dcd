#!/usr/bin/env bash
# libFuzzer smoke runs of maskjit's parsers of untrusted input, and the
# differential fuzzer of the interpreter against the compiled paths.
#
#   fuzz/run.sh [SECONDS] [HARNESS...]   (default 30 s, every harness)
#
# HARNESS is e.g. graph_diff or fuzz_graph_diff: run only those (the long
# run of the differential fuzzer is `fuzz/run.sh 1800 graph_diff`).
# Builds the harnesses with clang-19 (-fsanitize=fuzzer,address,undefined)
# into build-fuzz/ and runs each for SECONDS on a scratch copy of its seed
# corpus (fuzz/corpus/<name>/; nothing is written back into the repo).
# Prints the executions of each harness and exits 1 on any crash, leak,
# sanitizer report, timeout or out-of-memory; the reproducer is kept in
# build-fuzz/artifacts/. See fuzz/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
seconds=${1:-30}
if ! [[ $seconds =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: fuzz/run.sh [SECONDS] [HARNESS...]   (SECONDS a positive integer, got '$seconds')" >&2
    exit 2
fi
all_harnesses=(fuzz_safetensors fuzz_ir_parse fuzz_model_spec fuzz_graph_diff)
harnesses=()
for h in "${@:2}"; do
    h=fuzz_${h#fuzz_}
    if [ ! -f "fuzz/$h.c" ]; then
        echo "fuzz/run.sh: no harness '$h' (have: ${all_harnesses[*]})" >&2
        exit 2
    fi
    harnesses+=("$h")
done
[ ${#harnesses[@]} -eq 0 ] && harnesses=("${all_harnesses[@]}")
CC=${FUZZ_CC:-clang-19}
if ! command -v "$CC" >/dev/null; then
    echo "fuzz/run.sh: $CC not found (tools/install-deps.sh installs clang-19 and libclang-rt-19-dev)" >&2
    exit 1
fi
out=build-fuzz
mkdir -p "$out/artifacts"

# The library minus the LLVM backend and the CLI: the parser harnesses reach
# only src/ and ir/, which never call into jit/ (so no LLVM headers or
# libraries). fuzz_graph_diff also links jit/ (against the system LLVM,
# which is not instrumented) and the verdict of `maskjit check`.
lib_sources=$(ls src/*/*.c ir/*.c)
jit_sources=$(ls jit/*.c)
llvm_config=${FUZZ_LLVM_CONFIG:-llvm-config-19}
# jit/cache_key.c names the build by its code id (the harness turns the cache off)
tools/code_id.sh "$out/code_id.new.h" $lib_sources $jit_sources include/maskjit/*.h
cmp -s "$out/code_id.new.h" "$out/code_id.h" || mv "$out/code_id.new.h" "$out/code_id.h"
rm -f "$out/code_id.new.h"
# -fno-sanitize=function: clang's check of an indirect call reads a type
# hash in front of the callee, which code compiled by the JIT does not have.
sanitize="-fsanitize=address,undefined -fno-sanitize=function -fno-sanitize-recover=undefined"
cflags="-std=c17 -D_GNU_SOURCE -ffp-contract=off -O1 -g -fno-omit-frame-pointer $sanitize \
-Wall -Wextra -I$root/include -I$root $(pkg-config --cflags jansson)"
ldlibs="$(pkg-config --libs jansson) -lm -lpthread"

# A generated ninja file: incremental rebuilds with header dependencies.
{
    echo "cflags = $cflags"
    echo "rule cc"
    echo "  command = $CC -MMD -MF \$out.d \$cflags \$extra -c \$in -o \$out"
    echo "  depfile = \$out.d"
    echo "  deps = gcc"
    echo "  description = CC \$out"
    echo "rule link"
    echo "  command = $CC $sanitize -fsanitize=fuzzer \$in -o \$out \$ldextra $ldlibs"
    echo "  description = LINK \$out"
    objs=""
    for s in $lib_sources; do
        o="obj/${s//\//_}.o"
        # coverage instrumentation of the library too, or libFuzzer is blind
        echo "build $o: cc $root/$s"
        echo "  extra = -fsanitize=fuzzer-no-link"
        objs="$objs $o"
    done
    jit_objs=""
    for s in $jit_sources cli/check_verdict.c; do
        o="obj/${s//\//_}.o"
        echo "build $o: cc $root/$s"
        echo "  extra = -fsanitize=fuzzer-no-link -I$root/$out" $($llvm_config --cflags)
        jit_objs="$jit_objs $o"
    done
    for h in "${all_harnesses[@]}"; do
        echo "build obj/$h.o: cc $root/fuzz/$h.c"
        echo "  extra = -fsanitize=fuzzer"
        if [ "$h" = fuzz_graph_diff ]; then
            echo "build $h: link obj/$h.o $objs $jit_objs"
            echo "  ldextra =" $($llvm_config --ldflags --libs core orcjit native passes analysis)
        else
            echo "build $h: link obj/$h.o $objs"
        fi
    done
} >"$out/build.ninja"
if ! ninja -C "$out" "${harnesses[@]}" >"$out/build.log" 2>&1; then
    cat "$out/build.log" >&2
    echo "fuzz/run.sh: building the harnesses failed" >&2
    exit 1
fi

failed=()
printf '\n%-18s %12s %10s  %s\n' harness executions exec/s result
for h in "${harnesses[@]}"; do
    name=${h#fuzz_}
    work="$out/corpus/$name"       # scratch corpus: seeds + what libFuzzer adds
    rm -rf "$work"
    mkdir -p "$work"
    cp fuzz/corpus/"$name"/* "$work"/ 2>/dev/null
    dict=()
    [ -f "fuzz/$name.dict" ] && dict=(-dict="fuzz/$name.dict")
    log="$out/$h.log"
    # -rss_limit_mb/-malloc_limit_mb: a hostile input must not make the
    # parser allocate gigabytes; -timeout: nor spin for seconds. The
    # differential fuzzer reads a few hundred bytes at most (the rest of a
    # longer input is ignored) and compiles four times per input.
    limits=(-timeout=10 -max_len=65536)
    [ "$h" = fuzz_graph_diff ] && limits=(-timeout=60 -max_len=512)
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
    LSAN_OPTIONS=suppressions="$root/tools/lsan.supp":print_suppressions=0 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 MASKJIT_CACHE=0 \
        "$out/$h" -max_total_time="$seconds" -print_final_stats=1 "${limits[@]}" \
        -rss_limit_mb=2048 "${dict[@]}" \
        -artifact_prefix="$out/artifacts/$name-" "$work" >"$log" 2>&1
    rc=$?
    execs=$(grep -a 'stat::number_of_executed_units' "$log" | tail -n 1 | awk '{print $2}')
    speed=$(grep -a 'stat::average_exec_per_sec' "$log" | tail -n 1 | awk '{print $2}')
    result=ok
    if [ $rc -ne 0 ] || grep -aq 'ERROR: \(libFuzzer\|AddressSanitizer\|LeakSanitizer\)\|runtime error:' "$log"; then
        result="CRASH (exit $rc): see $log and $out/artifacts/$name-*"
        failed+=("$h")
    fi
    printf '%-18s %12s %10s  %s\n' "$h" "${execs:-?}" "${speed:-?}" "$result"
done
if [ ${#failed[@]} -ne 0 ]; then
    for h in "${failed[@]}"; do
        echo
        echo "==== $h"
        grep -a -A 30 'ERROR:\|runtime error:\|fuzz_ir_parse:\|fuzz_graph_diff:' "$out/$h.log" | head -n 60
    done
    echo "fuzz: FAILED: ${failed[*]}"
    exit 1
fi
echo "fuzz: ${#harnesses[@]} harness(es) ran ${seconds}s each without a finding"
