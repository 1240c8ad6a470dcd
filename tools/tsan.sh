#!/usr/bin/env bash
# The concurrency claims of docs/threads.md under ThreadSanitizer.
#
#   tools/tsan.sh        builds build-tsan (gcc, -Db_sanitize=thread) and runs
#
# Criterion cannot run under TSan (its worker arena collides with TSan's
# shadow memory: "Could not initialize inheritable arena", Snaipe/Criterion
# #274), so the threaded tests are mirrored in tools/tsan_stress.c, a plain
# program linked against the TSan-built libmaskjit.a:
#   - 8 threads call one compiled model (live, then frozen,
#     then with a 4-thread pool splitting each call's rows,   = reliability/eight_threads_call_one_compiled_model,
#     then its columns, live and frozen)                        jit/eight_threads_share_one_compiled_model,
#                                                               jit/column_split_threads_are_bit_identical
#   - 8 threads call a frozen sparse model on one 256-row     = jit/sparse_rows_split_over_threads_bit_identical
#     sequence (its pool's threads claim chunks of rows)
#   - 8 threads call a pruned conv block (frozen, live) and   = conv_tail/basic_block_shared_by_threads_is_eager_bit_for_bit,
#     an attention of 8 heads at batch 1 (their pools share     jit/attention_runs_one_matrix_at_a_time_bit_for_bit
#     the convs, claim the heads)
#   - 8 threads call one model whose 4-thread pool never      = jit/pool_threads_that_sleep_at_once_are_right
#     spins (rows, then columns): every call wakes sleeping
#     workers and its caller sleeps until they are done
#   - 8 threads: eager forward of one module + interpreter    = reliability/eight_threads_read_one_module_and_graph
#   - 8 threads trace + compile their own models on one JIT   = reliability/eight_threads_trace_and_compile_their_own_models,
#     (two of them on their own JIT)                            trace/concurrent_traces_on_threads
#   - 8 threads fail and read their own error messages        = reliability/error_messages_are_per_thread
# Any ThreadSanitizer report, or a result differing from eager, fails.
#
# LLVM itself is not instrumented: its locks are pthread mutexes, which TSan
# intercepts, so the happens-before edges through them are still seen.
# Neither is the JIT-compiled code: TSan sees the pool and the column-mode
# barrier (jit/thread_pool.c), while a missing barrier in the generated code
# would show as a result that differs from eager.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=build-tsan
if [ ! -d "$out" ]; then
    meson setup "$out" -Db_sanitize=thread -Db_lundef=false -Dbench_peers=disabled -Dtests=false \
        >/dev/null || exit 1
fi
ninja -C "$out" libmaskjit.a >/dev/null || { ninja -C "$out" libmaskjit.a; exit 1; }
llvm_config=${LLVM_CONFIG:-llvm-config-19}
cc -std=c17 -D_GNU_SOURCE -O1 -g -fsanitize=thread -Wall -Wextra -Iinclude \
    tools/tsan_stress.c "$out/libmaskjit.a" -o "$out/tsan_stress" \
    $("$llvm_config" --ldflags --libs core orcjit native passes analysis) \
    $(pkg-config --libs jansson) -lm -lpthread || exit 1

log="$out/tsan.log"
TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:exitcode=66" "$out/tsan_stress" >"$log" 2>&1
rc=$?
grep -a "^PASS\|^FAIL" "$log"
reports=$(grep -ac "WARNING: ThreadSanitizer" "$log")
if [ "$rc" -ne 0 ] || [ "$reports" -ne 0 ]; then
    grep -a -A40 "WARNING: ThreadSanitizer\|tsan_stress:" "$log" | head -150
    echo "tsan: FAILED (exit $rc, $reports ThreadSanitizer reports; log: $log)"
    exit 1
fi
echo "tsan: all scenarios passed, no ThreadSanitizer reports (log: $log)"
