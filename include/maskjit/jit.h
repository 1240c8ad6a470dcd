/* maskjit/jit.h — compile a graph to native code with LLVM (ORC LLJIT).
 *
 * One mj_jit serves many compiled graphs; each mj_compiled owns its code and
 * frees it when released. Compiled functions are reentrant.
 *
 * Modes:
 *  - exact (default): the same float operations in the same order as eager,
 *    no FMA contraction or reassociation: bit-identical to eager.
 *  - fast: FMA and reassociation allowed; within float32 tolerances.
 *  - live (default): parameters are read at call time; derived layouts (mask
 *    applied, transposed) are refreshed when a parameter's version changes.
 *  - frozen: parameters are baked in as constants, masks fold away and the
 *    code is specialised to the mask pattern.
 */
#ifndef MASKJIT_JIT_H
#define MASKJIT_JIT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "maskjit/graph.h"
#include "maskjit/status.h"
#include "maskjit/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mj_numeric_mode { MJ_NUMERIC_EXACT = 0, MJ_NUMERIC_FAST } mj_numeric_mode;

/* The largest thread count a compiled model's pool takes. */
#define MJ_MAX_THREADS 256

typedef struct mj_compile_options {
    mj_numeric_mode numeric; /* default exact                                  */
    bool frozen;             /* default false (live)                           */
    int threads;             /* default 0 = available cores (at most 64); 1 = one
                                thread; at most MJ_MAX_THREADS                 */
    bool use_cache;          /* default true                                   */
    const char *cache_dir;   /* NULL = $MASKJIT_CACHE_DIR or XDG cache         */
} mj_compile_options;

void mj_compile_options_init(mj_compile_options *o);

typedef struct mj_compile_stats {
    double ir_ms;       /* building LLVM IR                 */
    double optimize_ms; /* the LLVM pass pipeline           */
    double codegen_ms;  /* ORC: machine code + linking      */
    double total_ms;    /* all of mj_jit_compile: the above,
                           graph passes, prologue, constants,
                           sparse plans, cache lookup        */
    bool cache_hit;
    /* Non-fatal trouble, e.g. "cache: cannot create a file in DIR: ..."
     * (the compile succeeded); empty when none. */
    char warning[160];
} mj_compile_stats;

typedef struct mj_jit mj_jit;
typedef struct mj_compiled mj_compiled;

mj_status mj_jit_new(mj_jit **out);
/* Releases the JIT. A compiled model keeps its JIT alive, so the JIT goes
 * when it and every mj_compiled from it are freed, in any order; no compile
 * on it may be running. */
void mj_jit_free(mj_jit *jit);
/* Host CPU name and features as LLVM sees them (e.g. "znver5"). */
const char *mj_jit_cpu_name(const mj_jit *jit);

/* The graph is copied: later changes to g do not affect the compiled code
 * (in live mode the param tensors stay shared).
 * Memory: LLVM cannot fail an allocation gracefully, it ends the process. So
 * under an address-space or data limit (RLIMIT_AS / RLIMIT_DATA, ulimit -v /
 * -d) a compile first estimates what it needs (about 8 MiB plus 12x the
 * parameter bytes frozen, 2x live) and returns MJ_ERR_LIMIT with the numbers
 * if that exceeds what is left. Without a limit no check is made. If LLVM
 * still runs out of memory, maskjit's handler prints "maskjit: LLVM ran out
 * of memory ..." and the process exits with status 1 (not a signal); other
 * LLVM fatal errors print "maskjit: LLVM fatal error: ..." before LLVM ends
 * the process. The handlers are installed once per process by mj_jit_new and
 * replace any an application installed before. */
mj_status mj_jit_compile(mj_jit *jit, const mj_graph *g, const mj_compile_options *o,
                         mj_compiled **out);
const mj_compile_stats *mj_compiled_stats(const mj_compiled *c);

/* Several inputs and outputs: x[i] is the graph's input i (inputs in the
 * order they appear in the graph), y[j] receives output j as a new tensor.
 * Every input has the batch B as dim 0 and all share its value (>= 1); the
 * other dims must match the graph's types. n_in and n_out must be the
 * graph's counts (mj_compiled_input_count / mj_compiled_output_count). On
 * error nothing is written to y. */
mj_status mj_compiled_run_n(mj_compiled *c, int n_in, const mj_tensor *const *x, int n_out,
                            mj_tensor **y);
/* Raw buffers: x[i] holds input i at this batch (row-major), y[j] has room
 * for y_numel[j] floats of output j. No output may overlap an input or
 * another output. */
mj_status mj_compiled_run_raw_n(mj_compiled *c, int n_in, const float *const *x, int64_t batch,
                                int n_out, float *const *y, const int64_t *y_numel);
int mj_compiled_input_count(const mj_compiled *c);
int mj_compiled_output_count(const mj_compiled *c);

/* One input, one output (wrappers of the _n calls; a graph with other
 * counts is MJ_ERR_INVALID).
 * y = f(x). x's shape must match the graph input (any batch >= 1).
 * Inside a trace (from a module's forward) the run calls fail with
 * MJ_ERR_STATE: the trace cannot see into native code. */
mj_status mj_compiled_run(mj_compiled *c, const mj_tensor *x, mj_tensor **y);
/* Raw buffers: x is [batch, features...], y has room for the output. */
mj_status mj_compiled_run_raw(mj_compiled *c, const float *x, int64_t batch, float *y,
                              int64_t y_numel);
void mj_compiled_free(mj_compiled *c);

/* Optimised LLVM IR (what="ir") or host assembly (what="asm"). */
mj_status mj_compiled_dump(mj_compiled *c, const char *what, FILE *f);

/* Call at process exit to release LLVM's static state (for leak checkers). */
void mj_llvm_shutdown(void);

#ifdef __cplusplus
}
#endif
#endif
