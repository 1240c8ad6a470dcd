/* Lowering of reductions along a dim (sum, mean, max, softmax, ...) and
 * layer_norm. */
#include "lower.h"

/* ---- reductions and normalisations ----------------------------------------
 * Plain loops, one line (or row) at a time, each doing the float operations
 * of its eager kernel (src/core/ops.c) in the same order; accumulators live in
 * entry-block allocas that LLVM promotes to registers. Fast mode's flags let
 * LLVM vectorise the sums. */

static LLVMValueRef ld_acc(lw *w, LLVMValueRef a) { return LLVMBuildLoad2(w->e.b, w->e.f32, a, ""); }
static void st_acc(lw *w, LLVMValueRef a, LLVMValueRef v) { LLVMBuildStore(w->e.b, v, a); }

/* (float)n for an i64 count, as C converts it */
static LLVMValueRef count_f(lw *w, LLVMValueRef n) { return LLVMBuildSIToFP(w->e.b, n, w->e.f32, ""); }

/* sum / mean / softmax / log_softmax along dim d of x: lines [outer][n][inner] */
void mj_lw_emit_along(lw *w, int32_t id) {
    w->loops = true;
    const mj_graph *g = w->p->g;
    const mj_node *n = &g->nodes[id];
    const mj_type *xt = &g->nodes[n->operands[0]].type;
    int d = mj_reduce_dim(n, xt->rank);
    if (xt->dims[d] == 0 && (n->op == MJ_OP_SOFTMAX || n->op == MJ_OP_LOG_SOFTMAX)) return; /* no elements */
    LLVMValueRef outer = dims_product(w, xt, 0, d), N = dimv(w, xt->dims[d]);
    LLVMValueRef inner = dims_product(w, xt, d + 1, xt->rank);
    LLVMValueRef x = w->buf[n->operands[0]], y = w->buf[id];
    LLVMValueRef acc = entry_alloca(w), mx = entry_alloca(w);
    loop lo = loop_begin(w, outer);
    loop lj = loop_begin(w, inner);
    LLVMValueRef base = add(w, mul(w, mul(w, lo.iv, N), inner), lj.iv);
#define LINE_AT(iv) add(w, base, mul(w, (iv), inner))
    if (n->op == MJ_OP_SUM || n->op == MJ_OP_MEAN) {
        st_acc(w, acc, cf(w, 0.0f));
        loop li = loop_begin(w, N);
        st_acc(w, acc, fadd(w, ld_acc(w, acc), load(w, x, LINE_AT(li.iv))));
        loop_end(w, &li);
        LLVMValueRef v = ld_acc(w, acc);
        if (n->op == MJ_OP_MEAN) v = fdiv(w, v, count_f(w, N));
        store(w, v, y, add(w, mul(w, lo.iv, inner), lj.iv));
    } else {
        /* m = x[0]; m = x[i] > m ? x[i] : m (x[0] > x[0] is false: the loop may start at 0) */
        st_acc(w, mx, load(w, x, base));
        loop li = loop_begin(w, N);
        LLVMValueRef v = load(w, x, LINE_AT(li.iv)), m0 = ld_acc(w, mx);
        st_acc(w, mx, sel(w, LLVMRealOGT, v, m0, v, m0));
        loop_end(w, &li);
        LLVMValueRef m = ld_acc(w, mx);
        st_acc(w, acc, cf(w, 0.0f));
        li = loop_begin(w, N);
        if (n->op == MJ_OP_SOFTMAX) { /* y[i] = e[i] (a loop LLVM vectorises), then the sum in order */
            store(w, emit_expf(w, fsub(w, load(w, x, LINE_AT(li.iv)), m)), y, LINE_AT(li.iv));
            loop_end(w, &li);
            li = loop_begin(w, N);
            st_acc(w, acc, fadd(w, ld_acc(w, acc), load(w, y, LINE_AT(li.iv))));
        } else { /* the last loop reads x again: e[i] is not stored */
            st_acc(w, acc, fadd(w, ld_acc(w, acc), emit_expf(w, fsub(w, load(w, x, LINE_AT(li.iv)), m))));
        }
        loop_end(w, &li);
        LLVMValueRef sum = ld_acc(w, acc);
        if (n->op == MJ_OP_SOFTMAX) { /* y[i] / sum: a division, as eager */
            li = loop_begin(w, N);
            store(w, fdiv(w, load(w, y, LINE_AT(li.iv)), sum), y, LINE_AT(li.iv));
            loop_end(w, &li);
        } else { /* (x[i] - m) - logf(sum) */
            LLVMValueRef ls = call_libm(w, "logf", sum);
            li = loop_begin(w, N);
            store(w, fsub(w, fsub(w, load(w, x, LINE_AT(li.iv)), m), ls), y, LINE_AT(li.iv));
            loop_end(w, &li);
        }
    }
#undef LINE_AT
    loop_end(w, &lj);
    loop_end(w, &lo);
}

/* layer_norm over the last dim: mean, biased variance, rstd = 1/sqrtf(var + eps),
 * (x - mean) * rstd [* w] [+ b] */
void mj_lw_emit_layer_norm(lw *w, int32_t id) {
    w->loops = true;
    const mj_graph *g = w->p->g;
    const mj_node *n = &g->nodes[id];
    const mj_type *xt = &g->nodes[n->operands[0]].type;
    LLVMValueRef rows = dims_product(w, xt, 0, xt->rank - 1), N = dimv(w, xt->dims[xt->rank - 1]);
    LLVMValueRef x = w->buf[n->operands[0]], y = w->buf[id];
    LLVMValueRef wt = n->n_operands >= 2 ? w->buf[n->operands[1]] : NULL;
    LLVMValueRef bs = n->n_operands == 3 ? w->buf[n->operands[2]] : NULL;
    LLVMValueRef acc = entry_alloca(w), sq = entry_alloca(w);
    loop lr = loop_begin(w, rows);
    LLVMValueRef xr = at(w, x, mul(w, lr.iv, N)), yr = at(w, y, mul(w, lr.iv, N));
    st_acc(w, acc, cf(w, 0.0f));
    loop lj = loop_begin(w, N);
    st_acc(w, acc, fadd(w, ld_acc(w, acc), load(w, xr, lj.iv)));
    loop_end(w, &lj);
    LLVMValueRef nf = count_f(w, N);
    LLVMValueRef mean = fdiv(w, ld_acc(w, acc), nf);
    st_acc(w, sq, cf(w, 0.0f));
    lj = loop_begin(w, N);
    LLVMValueRef dv = fsub(w, load(w, xr, lj.iv), mean);
    st_acc(w, sq, fadd(w, ld_acc(w, sq), fmul(w, dv, dv)));
    loop_end(w, &lj);
    LLVMValueRef var_eps = fadd(w, fdiv(w, ld_acc(w, sq), nf), cf(w, n->attrs.f[0]));
    LLVMValueRef rstd = fdiv(w, cf(w, 1.0f), call_libm(w, "sqrtf", var_eps));
    lj = loop_begin(w, N);
    LLVMValueRef v = fmul(w, fsub(w, load(w, xr, lj.iv), mean), rstd);
    if (wt) v = fmul(w, v, load(w, wt, lj.iv));
    if (bs) v = fadd(w, v, load(w, bs, lj.iv));
    store(w, v, yr, lj.iv);
    loop_end(w, &lj);
    loop_end(w, &lr);
}
