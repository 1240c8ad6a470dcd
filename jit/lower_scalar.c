/* Lowering of the elementwise ops: the scalar definitions of the unary and
 * binary ops (src/core/ops.c), operation for operation, in broadcasting
 * loops; and expand. */
#include "lower.h"

/* ---- the math of transformers: scalar definitions (src/core/ops.c) ------------ */

/* mj_unary_apply, operation for operation (both sides of a ?: are
 * computed and one selected: the same value). */
static LLVMValueRef emit_unary(lw *w, const mj_node *n, LLVMValueRef x) {
    const mj_attrs *a = &n->attrs;
    LLVMValueRef one = cf(w, 1.0f), zero = cf(w, 0.0f);
    switch (n->op) {
    case MJ_OP_NEG: return fpflags(w, LLVMBuildFNeg(w->e.b, x, ""));
    case MJ_OP_EXP: return emit_expf(w, x);
    case MJ_OP_LOG: return call_libm(w, "logf", x);
    case MJ_OP_SQRT: return vsqrt(w, x);
    case MJ_OP_RSQRT: return fdiv(w, one, vsqrt(w, x));
    case MJ_OP_POW: {
        float e = a->f[0];
        if (e == 2.0f) return fmul(w, x, x);
        if (e == 3.0f) return fmul(w, fmul(w, x, x), x);
        if (e == 0.5f) return vsqrt(w, x);
        if (e == -0.5f) return fdiv(w, one, vsqrt(w, x));
        if (e == -1.0f) return fdiv(w, one, x);
        if (e == -2.0f) return fdiv(w, one, fmul(w, x, x));
        if (e == 1.0f) return x;
        return call_libm2(w, "powf", x, cf(w, e));
    }
    case MJ_OP_LEAKY_RELU: /* x > 0.0f ? x : x * slope */
        return sel(w, LLVMRealOGT, x, zero, x, fmul(w, x, cf(w, a->f[0])));
    case MJ_OP_ELU: /* x > 0.0f ? x : expm1f(x) * alpha */
        return sel(w, LLVMRealOGT, x, zero, x, fmul(w, call_libm(w, "expm1f", x), cf(w, a->f[0])));
    case MJ_OP_HARDTANH: /* x < min ? min : x > max ? max : x */
        return sel(w, LLVMRealOLT, x, cf(w, a->f[0]), cf(w, a->f[0]),
                   sel(w, LLVMRealOGT, x, cf(w, a->f[1]), cf(w, a->f[1]), x));
    case MJ_OP_SOFTPLUS: { /* x * beta > threshold ? x : log1pf(expf(x * beta)) / beta */
        LLVMValueRef t = fmul(w, x, cf(w, a->f[0]));
        LLVMValueRef soft = fdiv(w, call_libm(w, "log1pf", emit_expf(w, t)), cf(w, a->f[0]));
        return sel(w, LLVMRealOGT, t, cf(w, a->f[1]), x, soft);
    }
    MJ_CASE_ACT_OPS: return emit_act(w, mj_op_table[n->op].act, x);
    /* not unary elementwise: mj_lw_emit_elementwise never passes these */
    MJ_CASE_NOT_UNARY_OPS: break;
    }
    MJ_ASSERT(!"not a unary elementwise op");
}

static LLVMValueRef signbit_of(lw *w, LLVMValueRef x) {
    LLVMTypeRef i32 = LLVMInt32TypeInContext(w->e.ctx);
    return LLVMBuildICmp(w->e.b, LLVMIntSLT, LLVMBuildBitCast(w->e.b, x, i32, ""), LLVMConstInt(i32, 0, 0), "");
}

/* mj_binary_apply: maximum / minimum as selects, NaN first. */
static LLVMValueRef emit_minmax(lw *w, bool max, LLVMValueRef a, LLVMValueRef b) {
    LLVMValueRef tie = LLVMBuildSelect(w->e.b, signbit_of(w, a), max ? b : a, max ? a : b, "");
    LLVMValueRef v = sel(w, max ? LLVMRealOLT : LLVMRealOGT, a, b, b, tie);
    v = sel(w, max ? LLVMRealOGT : LLVMRealOLT, a, b, a, v);
    v = sel(w, LLVMRealUNO, b, b, b, v);
    return sel(w, LLVMRealUNO, a, a, a, v);
}

/* ---- ops ----------------------------------------------------------------- */

static LLVMValueRef elementwise_op(lw *w, const mj_node *n, const LLVMValueRef *v) {
    switch (n->op) {
    case MJ_OP_ADD: return fadd(w, v[0], v[1]);
    case MJ_OP_SUB: return fsub(w, v[0], v[1]);
    case MJ_OP_MUL: return fmul(w, v[0], v[1]);
    case MJ_OP_DIV: return fdiv(w, v[0], v[1]);
    case MJ_OP_MAXIMUM: return emit_minmax(w, true, v[0], v[1]);
    case MJ_OP_MINIMUM: return emit_minmax(w, false, v[0], v[1]);
    default: return emit_unary(w, n, v[0]); /* which names every other op */
    }
}

/* Elementwise over the node's type with NumPy broadcasting: operand dim
 * equal to the output dim (concrete or B) -> its contiguous stride, else
 * (a stretched 1) stride 0. */
void mj_lw_emit_elementwise(lw *w, int32_t id) {
    w->loops = true;
    const mj_graph *g = w->p->g;
    const mj_node *n = &g->nodes[id];
    const mj_type *ot = &n->type;
    int n_in = n->n_operands;
    LLVMValueRef out = w->buf[id], vals[MJ_MAX_OPERANDS];

    bool same = true;
    for (int k = 0; k < n_in; k++) same = same && mj_type_equal(&g->nodes[n->operands[k]].type, ot);
    if (same) { /* one flat loop: what the vectoriser likes best */
        loop l = loop_begin(w, dims_product(w, ot, 0, ot->rank));
        for (int k = 0; k < n_in; k++) vals[k] = load(w, w->buf[n->operands[k]], l.iv);
        store(w, elementwise_op(w, n, vals), out, l.iv);
        loop_end(w, &l);
        return;
    }

    /* strides[k][d] of operand k along output dim d */
    LLVMValueRef strides[MJ_MAX_OPERANDS][MJ_MAX_RANK];
    for (int k = 0; k < n_in; k++) {
        const mj_type *t = &g->nodes[n->operands[k]].type;
        LLVMValueRef s = ci(w, 1);
        for (int d = ot->rank - 1; d >= 0; d--) {
            int dk = d - (ot->rank - t->rank);
            if (dk < 0) {
                strides[k][d] = ci(w, 0);
                continue;
            }
            strides[k][d] = t->dims[dk] == ot->dims[d] ? s : ci(w, 0);
            s = mul(w, s, dimv(w, t->dims[dk]));
        }
    }
    loop loops[MJ_MAX_RANK];
    LLVMValueRef idx[MJ_MAX_OPERANDS], oidx = ci(w, 0);
    for (int k = 0; k < n_in; k++) idx[k] = ci(w, 0);
    for (int d = 0; d < ot->rank; d++) {
        loops[d] = loop_begin(w, dimv(w, ot->dims[d]));
        oidx = add(w, mul(w, oidx, dimv(w, ot->dims[d])), loops[d].iv);
        for (int k = 0; k < n_in; k++) idx[k] = add(w, idx[k], mul(w, loops[d].iv, strides[k][d]));
    }
    for (int k = 0; k < n_in; k++) vals[k] = load(w, w->buf[n->operands[k]], idx[k]);
    store(w, elementwise_op(w, n, vals), out, oidx);
    for (int d = ot->rank - 1; d >= 0; d--) loop_end(w, &loops[d]);
}

/* expand: x[..., k] b[n]? -> [..., n], every element 0.0f + b[j] (or +0.0f),
 * as ir/interp.c defines it. */
void mj_lw_emit_expand(lw *w, int32_t id) {
    w->loops = true;
    const mj_node *n = &w->p->g->nodes[id];
    const mj_type *t = &n->type;
    LLVMValueRef cols = dimv(w, t->dims[t->rank - 1]);
    loop li = loop_begin(w, dims_product(w, t, 0, t->rank - 1));
    LLVMValueRef row = mul(w, li.iv, cols);
    loop lj = loop_begin(w, cols);
    LLVMValueRef v = n->n_operands == 2 ? fadd(w, cf(w, 0.0f), load(w, w->buf[n->operands[1]], lj.iv))
                                        : cf(w, 0.0f);
    store(w, v, w->buf[id], add(w, row, lj.iv));
    loop_end(w, &lj);
    loop_end(w, &li);
}
