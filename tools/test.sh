#!/usr/bin/env bash
# Second command of the README, and what CI runs: the whole test suite.
#
#   0. the layer rules of docs/design.md (tools/check_layers.sh): includes
#      before the build, calls between the library's objects after it
#   1. build (gcc, debugoptimized, -Wall -Wextra -Werror) and run the Criterion suite
#   2. the same suite built with AddressSanitizer + UBSan (LeakSanitizer on)
#   3. libFuzzer smoke runs of the file/text parsers (clang-19), bounded in time
#   4. benchmark smoke run: every variant checked against eager
#   5. `meson install` into a staging dir and build examples/ against maskjit.pc
#
# MASKJIT_TEST_QUICK=1 runs step 1 only. Prints "tests: N passed, M failed"
# (Criterion test counts over steps 1-2) as its last line.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools/install-deps.sh || exit 1

export MASKJIT_CACHE_DIR="$root/build/test-cache"
failed_steps=()
total_passed=0
total_failed=0

step() { printf '\n==== %s\n' "$*"; }

# Runs the Criterion binary, echoes its output and adds its synthesis counts.
run_criterion() {
    local log
    log=$(mktemp)
    "$@" --jobs 2 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local line
    line=$(grep -a "Synthesis:" "$log" | tail -n 1)
    rm -f "$log"
    if [[ $line =~ Tested:\ ([0-9]+).*Passing:\ ([0-9]+).*Failing:\ ([0-9]+).*Crashing:\ ([0-9]+) ]]; then
        total_passed=$((total_passed + BASH_REMATCH[2]))
        total_failed=$((total_failed + BASH_REMATCH[3] + BASH_REMATCH[4]))
    else
        total_failed=$((total_failed + 1))
    fi
    return "$rc"
}

step "include direction (tools/check_layers.sh)"
tools/check_layers.sh || failed_steps+=("layers")

step "1/5 build + Criterion suite"
if [ ! -d build ]; then meson setup build -Dwerror=true >/dev/null || exit 1; fi
if ninja -C build; then
    # the calls too, now that the library's objects exist
    tools/check_layers.sh build || failed_steps+=("layer-calls")
    run_criterion build/tests/maskjit-tests || failed_steps+=("suite")
else
    failed_steps+=("build")
fi

# The exporter's own tests need PyTorch (python3-torch), which the library
# never needs: they run where it is installed and say so where it is not.
step "PyTorch exporter (tools/test_export.py)"
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    /usr/bin/python3 tools/test_export.py || failed_steps+=("export")
else
    echo "skip: tools/test_export.py (no PyTorch for /usr/bin/python3; apt-get install python3-torch)"
fi

if [ "${MASKJIT_TEST_QUICK:-0}" != 1 ]; then
    step "2/5 Criterion suite under AddressSanitizer + UBSan"
    if [ ! -d build-asan ]; then
        meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false \
            -Dbench_peers=disabled >/dev/null || failed_steps+=("asan-setup")
    fi
    # Everything: the CLI tests run the ASan-built maskjit binary too.
    if ninja -C build-asan; then
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        LSAN_OPTIONS=suppressions="$root/tools/lsan.supp":print_suppressions=0 \
        UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        MASKJIT_CACHE_DIR="$root/build-asan/test-cache" \
            run_criterion build-asan/tests/maskjit-tests || failed_steps+=("asan")
    else
        failed_steps+=("asan-build")
    fi

    step "3/5 fuzz smoke"
    if [ -x fuzz/run.sh ]; then
        fuzz/run.sh "${MASKJIT_FUZZ_SECONDS:-30}" || failed_steps+=("fuzz")
    else
        echo "no fuzz/run.sh yet"
    fi

    step "4/5 bench smoke"
    if [ -x build/bench/maskjit-bench ]; then
        build/bench/maskjit-bench --smoke || failed_steps+=("bench")
    else
        echo "no bench binary built"
    fi

    step "5/5 install + example against maskjit.pc"
    if [ -f examples/meson.build ] || [ -d examples ]; then
        tools/check-install.sh || failed_steps+=("install")
    else
        echo "no examples/ yet"
    fi
fi

echo
if [ ${#failed_steps[@]} -ne 0 ]; then
    echo "FAILED steps: ${failed_steps[*]}"
    [ "$total_failed" -gt 0 ] || total_failed=${#failed_steps[@]}
fi
echo "tests: $total_passed passed, $total_failed failed"
[ ${#failed_steps[@]} -eq 0 ]
