/* Internal to the lowering (jit/lower*.c): the state one body's lowering
 * carries from op to op, and the emitters the driver (lower.c) calls. */
#ifndef MJ_JIT_LOWER_H
#define MJ_JIT_LOWER_H

#include "jit_internal.h"
#include "emit.h"

/* ---- the lowering's state -------------------------------------------------- */

typedef struct lw {
    mj_emit e; /* builder, types, mode (emit.h); e.fn is the inner function */
    LLVMValueRef leaves, batch, scratch;
    LLVMValueRef *x, *y;  /* per input / output: its pointer (arguments)      */
    mj_emit_team team; /* column mode's threads (see mj_lower_body) */
    LLVMValueRef *buf; /* per node: pointer to its float storage */
    const mj_body_plan *p;
    const mj_lower_options *o;
    int n_kernels; /* micro-kernel functions emitted so far (names) */
    bool loops;    /* emitted scalar loops that want the loop vectoriser */
} lw;

static inline LLVMValueRef dimv(lw *w, int64_t d) { return d == MJ_DIM_BATCH ? w->batch : ci(w, d); }

/* numel of type t dims [from, to) */
static inline LLVMValueRef dims_product(lw *w, const mj_type *t, int from, int to) {
    LLVMValueRef n = ci(w, 1);
    for (int d = from; d < to; d++) n = mul(w, n, dimv(w, t->dims[d]));
    return n;
}

/* nth > 1: this call is one of column mode's threads (else it computes
 * everything alone, and sync may be NULL). */
static inline LLVMValueRef several_threads(lw *w) { return mj_emit_several_threads(&w->e, &w->team); }

/* Does op i split its rows between the threads in column mode (row-wise
 * along its last dim: layer_norm, softmax, ... of every row)? */
bool mj_lw_splits_rows(const mj_body_plan *p, int32_t i); /* lower_reduce.c */

/* The test-only fault of mj_lower_options (jit_test.h): + 0.5 on the n
 * floats at p, element by element (lower.c) */
void mj_lw_emit_fault_range(lw *w, LLVMValueRef p, LLVMValueRef n);

/* Vectors per row of a GEMM micro-kernel (lower_gemm.c); a small chain's
 * layer is at most this many vectors wide (lower_small.c). */
#define MK_MAX_VECS 8

/* The emitters of the ops (one file per kind), called by the driver
 * (lower.c), each at the node's place in the body. */
void mj_lw_emit_elementwise(lw *w, int32_t id); /* lower_scalar.c */
void mj_lw_emit_expand(lw *w, int32_t id);
void mj_lw_emit_linear(lw *w, int32_t id); /* lower_gemm.c */
void mj_lw_emit_matmul(lw *w, int32_t id);
void mj_lw_emit_attention(lw *w, int32_t id);
void mj_lw_emit_permute(lw *w, int32_t id); /* lower_layout.c */
void mj_lw_emit_slice(lw *w, int32_t id);
void mj_lw_emit_cat(lw *w, int32_t id);
void mj_lw_emit_copy(lw *w, LLVMValueRef dst, LLVMValueRef src, LLVMValueRef n);
void mj_lw_emit_along(lw *w, int32_t id); /* lower_reduce.c */
void mj_lw_emit_layer_norm(lw *w, int32_t id);
void mj_lw_emit_softmax_rows(lw *w, LLVMValueRef x, LLVMValueRef y, LLVMValueRef rows, LLVMValueRef N);
/* Is node id a layer of a small chain (lower_small.c)? */
bool mj_lw_small_linear(const mj_body_plan *p, int32_t id);
void mj_lw_emit_small_chain(lw *w, const int32_t *ids, int n_ids);

#endif
