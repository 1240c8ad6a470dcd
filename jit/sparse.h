/* Mask-specialised frozen linear layers: code generated for one fixed weight
 * whose zeros (from a pruning mask) are skipped entirely.
 *
 * The weight's nonzero values and their k indices are packed (CSR by output
 * row, ascending k) into private constant globals of the module; the
 * function vectorises across the batch (a chunk of rows of x is transposed
 * into scratch, each output row keeps vector accumulators over the chunk).
 *
 * Exact (fast=false): per output element acc = +0.0f, then acc + x[k]*w[k]
 * for the NONZERO w in ascending k, then + b, then the activation with the
 * float operations and libm calls of mj_act_apply: bit-identical to eager
 * mj_linear + mj_activation for finite inputs (skipping a zero weight is
 * exact there: acc is never -0.0f and adding a signed zero leaves it
 * unchanged; with an inf or NaN input eager gives NaN where x*0 was skipped).
 * Fast (fast=true) may contract to FMA.
 *
 * A chain of such layers (each the only reader of the one before, as its
 * x) is emitted as one function: the first layer's x is transposed in, each
 * later layer reads the previous layer's transposed output yT as its xT (by
 * full column k), and only the last layer's yT is transposed out; the
 * values in between never reach row-major memory.
 *
 * Used by the lowering (jit/lower.c) for frozen linear layers when
 * mj_sparse_profitable says so. */
#ifndef MJ_JIT_SPARSE_H
#define MJ_JIT_SPARSE_H

#include <stdbool.h>
#include <stdint.h>

#include <llvm-c/Core.h>

#include "maskjit/tensor.h"

/* True when the sparse kernel is expected to beat the dense compiled kernel
 * for weight w[out][in] (density below the measured crossover, or rows
 * worth dropping). */
bool mj_sparse_profitable(const float *w, int64_t out, int64_t in);

/* One layer of a chain: w [out][in] row-major, b [out] or NULL, then act. */
typedef struct mj_sparse_layer {
    const float *w, *b;
    int64_t out, in;
    mj_act act;
} mj_sparse_layer;

/* Floats of scratch the emitted function needs for this batch (>= 0; the
 * caller passes a 64-byte aligned buffer of at least that many floats). */
int64_t mj_sparse_scratch_floats(int64_t in, int64_t out, int64_t batch);
/* The same for a chain of n_layers >= 1 layers, the first one in wide,
 * none more than max_out wide (any batch: chunks are fixed-size). */
int64_t mj_sparse_chain_scratch_floats(int64_t in, int64_t max_out, int n_layers);

/* Rows per chunk of the emitted functions: 32 (4 vectors of 8 floats, 2 of
 * 16), 16 with 4-float vectors. A column of the chunk's xT is then 128
 * bytes whatever the vector width, so a k-block that fills the L1 holds
 * twice the columns it held with 4 vectors of 16 (64 floats): each group
 * of rows stores and reloads its sums half as often, and its slice of xT
 * misses the L1 less. Zen 4 (32 KiB L1d), frozen, two builds alternating
 * (min of 3000 or 40 calls): 3 x 1024 MLP at 10% in 1x4 blocks, batch 64,
 * 0.649-0.663 -> 0.618-0.626 ms, unstructured 0.60 ms either way; BERT-base
 * layer at 90% in 1x4 blocks 3.79-3.82 -> 3.54-3.56 ms at batch 1 and
 * 32.8-33.2 -> 30.9-31.0 ms at batch 8, unstructured 3.59-3.61 -> 3.53-3.58
 * and 31.1-31.3 -> 30.7-30.9 ms. Rows are independent lanes, so any split
 * of a call's rows gives the same bits; threads split at these boundaries
 * (jit/lower.c), so that no thread runs more partial chunks than the whole
 * call would. */
static inline int64_t mj_sparse_chunk_rows(int vw) { return vw >= 8 ? 32 : 4 * (int64_t)vw; }

/* Emits into M (in M's context):
 *   void name(const float *x, float *y, int64_t batch, float *scratch,
 *             const float *res)
 * x row-major [batch][in], y [batch][out], any batch >= 1, x and y do not
 * overlap; y = act(x . w^T + b), then + res (residual: res [batch][out],
 * not overlapping y; else res is ignored), each step rounded to float. w is [out][in] row-major, b is [out] or
 * NULL. The data of w and b is copied into the module. Returns the function,
 * or NULL if out of memory. vw (4, 8 or 16 floats) is the vector width of
 * the JIT's target (mj_body_plan.vw), so forced features (an AVX2 target on
 * an AVX-512 host) shape this code as they shape the rest. */
LLVMValueRef mj_sparse_emit_linear(LLVMModuleRef M, const char *name, const float *w,
                                   const float *b /* NULL = no bias */, int64_t out, int64_t in,
                                   mj_act act, bool residual, bool fast, int vw);
/* The same function for a chain of n >= 1 layers: layer l+1 takes layer l's
 * output as x (layers[l+1].in == layers[l].out), x is the first layer's
 * input, y (+ res, if residual) the last layer's output; the values in
 * between are not stored anywhere the caller sees. Every output element is
 * bit-identical to running the layers one by one (mj_sparse_emit_linear).
 * NULL if out of memory or the layers do not fit together. */
LLVMValueRef mj_sparse_emit_chain(LLVMModuleRef M, const char *name, const mj_sparse_layer *layers, int n,
                                  bool residual, bool fast, int vw);

#endif
