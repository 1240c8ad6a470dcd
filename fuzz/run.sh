#!/usr/bin/env bash
# libFuzzer smoke runs of maskjit's parsers of untrusted input.
#
#   fuzz/run.sh [SECONDS]     (default 30 per harness)
#
# Builds the three harnesses with clang-19 (-fsanitize=fuzzer,address,undefined)
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
    echo "usage: fuzz/run.sh [SECONDS]   (a positive integer, got '$seconds')" >&2
    exit 2
fi
CC=${FUZZ_CC:-clang-19}
if ! command -v "$CC" >/dev/null; then
    echo "fuzz/run.sh: $CC not found (tools/install-deps.sh installs clang-19 and libclang-rt-19-dev)" >&2
    exit 1
fi
harnesses=(fuzz_safetensors fuzz_ir_parse fuzz_model_spec)
out=build-fuzz
mkdir -p "$out/artifacts"

# The library minus the LLVM backend and the CLI: these harnesses reach only
# src/ and ir/, which never call into jit/ (so no LLVM headers or libraries).
lib_sources=$(ls src/*.c ir/*.c)
sanitize="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
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
    echo "  command = $CC $sanitize -fsanitize=fuzzer \$in -o \$out $ldlibs"
    echo "  description = LINK \$out"
    objs=""
    for s in $lib_sources; do
        o="obj/${s//\//_}.o"
        # coverage instrumentation of the library too, or libFuzzer is blind
        echo "build $o: cc $root/$s"
        echo "  extra = -fsanitize=fuzzer-no-link"
        objs="$objs $o"
    done
    for h in "${harnesses[@]}"; do
        echo "build obj/$h.o: cc $root/fuzz/$h.c"
        echo "  extra = -fsanitize=fuzzer"
        echo "build $h: link obj/$h.o $objs"
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
    # parser allocate gigabytes; -timeout: nor spin for seconds.
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        "$out/$h" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 \
        -rss_limit_mb=2048 -max_len=65536 "${dict[@]}" \
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
        grep -a -A 30 'ERROR:\|runtime error:\|fuzz_ir_parse:' "$out/$h.log" | head -n 60
    done
    echo "fuzz: FAILED: ${failed[*]}"
    exit 1
fi
echo "fuzz: all ${#harnesses[@]} harnesses ran ${seconds}s each without a finding"
