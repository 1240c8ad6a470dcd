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
    LLVMValueRef y_sync; /* what the barrier passes as y (see emit_barrier) */
    LLVMValueRef tid, nth, sync; /* column mode (see mj_lower_body) */
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
static inline LLVMValueRef several_threads(lw *w) { return LLVMBuildICmp(w->e.b, LLVMIntSGT, w->nth, ci(w, 1), ""); }

/* Thread tid's share of n independent items in column mode (one thread:
 * all): [*lo, *lo + *count) with lo = n*tid/nth. */
static inline void thread_share(lw *w, LLVMValueRef n, LLVMValueRef *lo, LLVMValueRef *count) {
    *lo = LLVMBuildSDiv(w->e.b, mul(w, n, w->tid), w->nth, "");
    LLVMValueRef hi = LLVMBuildSDiv(w->e.b, mul(w, n, add(w, w->tid, ci(w, 1))), w->nth, "");
    *count = LLVMBuildSub(w->e.b, hi, *lo, "");
}

/* Column mode's shared work (nth > 1): while ((*item = sync->claim(sync,
 * 1)) < n) { body }. mj_lw_claim_begin emits the claim and the test and
 * leaves the builder in the body; mj_lw_claim_end closes the loop. The
 * threads take items until none is left, so a thread the host slows down
 * does fewer (lower_gemm.c). solo: with nth == 1 the thread counts the
 * items 0, 1, ... itself (else the caller must not reach it then). */
typedef struct claim_loop {
    LLVMBasicBlockRef header, exit;
} claim_loop;
claim_loop mj_lw_claim_begin(lw *w, LLVMValueRef n, LLVMValueRef *item, bool solo);
void mj_lw_claim_end(lw *w, const claim_loop *l);

/* Does op i split its rows between the threads in column mode (row-wise
 * along its last dim: layer_norm, softmax, ... of every row)? */
bool mj_lw_splits_rows(const mj_body_plan *p, int32_t i); /* lower_reduce.c */

/* Vectors per row of a GEMM micro-kernel (lower_gemm.c); a small chain's
 * layer is at most this many vectors wide (lower_small.c). */
#define MK_MAX_VECS 8

/* The emitters of the ops (one file per kind), called by the driver
 * (lower.c), each at the node's place in the body. */
void mj_lw_emit_elementwise(lw *w, int32_t id); /* lower_scalar.c */
void mj_lw_emit_expand(lw *w, int32_t id);
void mj_lw_emit_linear(lw *w, int32_t id); /* lower_gemm.c */
void mj_lw_emit_matmul(lw *w, int32_t id);
void mj_lw_emit_permute(lw *w, int32_t id); /* lower_layout.c */
void mj_lw_emit_slice(lw *w, int32_t id);
void mj_lw_emit_cat(lw *w, int32_t id);
void mj_lw_emit_copy(lw *w, LLVMValueRef dst, LLVMValueRef src, LLVMValueRef n);
void mj_lw_emit_along(lw *w, int32_t id); /* lower_reduce.c */
void mj_lw_emit_layer_norm(lw *w, int32_t id);
/* Is node id a layer of a small chain (lower_small.c)? */
bool mj_lw_small_linear(const mj_body_plan *p, int32_t id);
void mj_lw_emit_small_chain(lw *w, const int32_t *ids, int n_ids);

#endif
