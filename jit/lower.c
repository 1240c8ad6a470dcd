/* IR -> LLVM IR: the body of a compiled graph, op by op, loops as basic
 * blocks, typed builders only.
 *
 *   void body(const float *const *leaves, const float *x, float *y,
 *             int64_t batch, float *scratch)
 *
 * Exact mode emits, per output element, the float operations of the eager
 * kernels (src/ops.c) in the same order; only the loops around them differ
 * (linear runs i, k, j over the packed weight so O3 vectorises across output
 * columns, never across k). Fast mode sets fast-math flags on every float
 * operation so LLVM may contract to FMA and reassociate. */
#include <string.h>

#include <llvm-c/Analysis.h>

#include "jit_internal.h"

/* ---- the plan ------------------------------------------------------------ */

/* Reshape is an alias of its operand's storage: follow the chain. */
static int32_t alias_root(const mj_graph *g, const bool *input_free, int32_t v) {
    while (!input_free[v] && g->nodes[v].op == MJ_OP_RESHAPE) v = g->nodes[v].operands[0];
    return v;
}

mj_status mj_body_plan_build(const mj_graph *g, const bool *input_free, mj_body_plan *p) {
    memset(p, 0, sizeof *p);
    p->g = g;
    p->input_free = input_free;
    size_t n = (size_t)g->n_nodes + 1;
    p->leaf_plain = mj_alloc_array(n, sizeof *p->leaf_plain);
    p->leaf_packed = mj_alloc_array(n, sizeof *p->leaf_packed);
    p->leaves = mj_alloc_array(2 * n, sizeof *p->leaves);
    p->has_slot = mj_alloc_array(n, sizeof *p->has_slot);
    if (!p->leaf_plain || !p->leaf_packed || !p->leaves || !p->has_slot) {
        mj_body_plan_free(p);
        return MJ_ERR_NOMEM;
    }
    for (int32_t i = 0; i < g->n_nodes; i++) p->leaf_plain[i] = p->leaf_packed[i] = -1;
    p->out_node = g->outputs[0];

    /* Leaves: prologue values that a body node (or the output) reads. */
    for (int32_t i = 0; i <= g->n_nodes; i++) {
        bool is_out = i == g->n_nodes;
        if (!is_out && input_free[i]) continue;
        int n_ops = is_out ? 1 : g->nodes[i].n_operands;
        for (int k = 0; k < n_ops; k++) {
            int32_t a = is_out ? p->out_node : g->nodes[i].operands[k];
            if (!input_free[a]) continue;
            mj_op op = is_out ? MJ_OP_COUNT : g->nodes[i].op;
            bool packed = (op == MJ_OP_LINEAR || op == MJ_OP_LINEAR_ACT) && k == 1;
            int32_t *slot = packed ? &p->leaf_packed[a] : &p->leaf_plain[a];
            if (*slot >= 0) continue;
            *slot = p->n_leaves;
            p->leaves[p->n_leaves++] = (mj_leaf){.node = a, .packed = packed};
        }
    }
    /* Storage: every computing body node gets a scratch slice, except the one
     * the output aliases, which writes y directly. */
    int32_t root = alias_root(g, input_free, p->out_node);
    p->out_root = (!input_free[root] && g->nodes[root].op != MJ_OP_INPUT) ? root : -1;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *nd = &g->nodes[i];
        p->has_slot[i] = !input_free[i] && nd->op != MJ_OP_INPUT && nd->op != MJ_OP_RESHAPE &&
                         i != p->out_root;
    }
    return MJ_OK;
}

void mj_body_plan_free(mj_body_plan *p) {
    free(p->leaf_plain);
    free(p->leaf_packed);
    free(p->leaves);
    free(p->has_slot);
    memset(p, 0, sizeof *p);
}

/* Slices start on 16-float (64-byte) boundaries. */
static int64_t round16(int64_t n) { return (n + 15) & ~INT64_C(15); }

mj_status mj_body_scratch_floats(const mj_body_plan *p, int64_t batch, int64_t *out) {
    int64_t total = 0;
    for (int32_t i = 0; i < p->g->n_nodes; i++) {
        if (!p->has_slot[i]) continue;
        int64_t shape[MJ_MAX_RANK], n;
        mj_type_shape(&p->g->nodes[i].type, batch, shape);
        if (mj_shape_numel(p->g->nodes[i].type.rank, shape, &n) != MJ_OK || n > MJ_MAX_NUMEL ||
            __builtin_add_overflow(total, round16(n), &total) || total > MJ_MAX_NUMEL)
            return mj_fail(MJ_ERR_LIMIT, "batch %lld: the intermediate values need more than 2^40 floats",
                           (long long)batch);
    }
    *out = total;
    return MJ_OK;
}

/* ---- builder helpers ----------------------------------------------------- */

typedef struct lw {
    LLVMContextRef ctx;
    LLVMModuleRef m;
    LLVMBuilderRef b;
    LLVMValueRef fn;
    LLVMTypeRef f32, i64, ptr, unary_ty;
    LLVMValueRef leaves, x, y, batch, scratch;
    LLVMValueRef *buf; /* per node: pointer to its float storage */
    LLVMValueRef erff_fn, expf_fn, tanhf_fn;
    const mj_body_plan *p;
    const mj_lower_options *o;
    bool fast;
} lw;

static LLVMValueRef ci(lw *w, int64_t v) { return LLVMConstInt(w->i64, (unsigned long long)v, 1); }
static LLVMValueRef cf(lw *w, float v) { return LLVMConstReal(w->f32, (double)v); }

static LLVMValueRef dimv(lw *w, int64_t d) { return d == MJ_DIM_BATCH ? w->batch : ci(w, d); }

/* Sizes are checked against MJ_MAX_NUMEL before the call: no wrap. */
static LLVMValueRef mul(lw *w, LLVMValueRef a, LLVMValueRef b) {
    return LLVMBuildNSWMul(w->b, a, b, "");
}
static LLVMValueRef add(lw *w, LLVMValueRef a, LLVMValueRef b) {
    return LLVMBuildNSWAdd(w->b, a, b, "");
}

/* numel of type t dims [from, to) */
static LLVMValueRef dims_product(lw *w, const mj_type *t, int from, int to) {
    LLVMValueRef n = ci(w, 1);
    for (int d = from; d < to; d++) n = mul(w, n, dimv(w, t->dims[d]));
    return n;
}

static LLVMValueRef at(lw *w, LLVMValueRef base, LLVMValueRef idx) {
    return LLVMBuildInBoundsGEP2(w->b, w->f32, base, &idx, 1, "");
}
static LLVMValueRef load(lw *w, LLVMValueRef base, LLVMValueRef idx) {
    return LLVMBuildLoad2(w->b, w->f32, at(w, base, idx), "");
}
static void store(lw *w, LLVMValueRef v, LLVMValueRef base, LLVMValueRef idx) {
    LLVMBuildStore(w->b, v, at(w, base, idx));
}

/* Fast mode: let LLVM contract and reassociate. NaN and Inf keep their
 * meaning (no nnan/ninf): fast changes rounding, not semantics. */
static LLVMValueRef fpflags(lw *w, LLVMValueRef v) {
    if (w->fast && LLVMIsAInstruction(v))
        LLVMSetFastMathFlags(v, LLVMFastMathAllowContract | LLVMFastMathAllowReassoc |
                                    LLVMFastMathNoSignedZeros | LLVMFastMathAllowReciprocal);
    return v;
}
static LLVMValueRef fadd(lw *w, LLVMValueRef a, LLVMValueRef b) {
    return fpflags(w, LLVMBuildFAdd(w->b, a, b, ""));
}
static LLVMValueRef fsub(lw *w, LLVMValueRef a, LLVMValueRef b) {
    return fpflags(w, LLVMBuildFSub(w->b, a, b, ""));
}
static LLVMValueRef fmul(lw *w, LLVMValueRef a, LLVMValueRef b) {
    return fpflags(w, LLVMBuildFMul(w->b, a, b, ""));
}
static LLVMValueRef fdiv(lw *w, LLVMValueRef a, LLVMValueRef b) {
    return fpflags(w, LLVMBuildFDiv(w->b, a, b, ""));
}

/* A counted loop: `for (iv = 0; iv < n; iv++)`. */
typedef struct loop {
    LLVMBasicBlockRef header, exit;
    LLVMValueRef iv;
} loop;

static loop loop_begin(lw *w, LLVMValueRef n) {
    loop l;
    LLVMBasicBlockRef pre = LLVMGetInsertBlock(w->b);
    l.header = LLVMAppendBasicBlockInContext(w->ctx, w->fn, "loop");
    LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(w->ctx, w->fn, "body");
    l.exit = LLVMAppendBasicBlockInContext(w->ctx, w->fn, "done");
    LLVMBuildBr(w->b, l.header);
    LLVMPositionBuilderAtEnd(w->b, l.header);
    l.iv = LLVMBuildPhi(w->b, w->i64, "i");
    LLVMValueRef zero = ci(w, 0);
    LLVMAddIncoming(l.iv, &zero, &pre, 1);
    LLVMBuildCondBr(w->b, LLVMBuildICmp(w->b, LLVMIntSLT, l.iv, n, ""), body, l.exit);
    LLVMPositionBuilderAtEnd(w->b, body);
    return l;
}

static void loop_end(lw *w, loop *l) {
    LLVMBasicBlockRef latch = LLVMGetInsertBlock(w->b);
    LLVMValueRef next = LLVMBuildNSWAdd(w->b, l->iv, ci(w, 1), "");
    LLVMBuildBr(w->b, l->header);
    LLVMAddIncoming(l->iv, &next, &latch, 1);
    LLVMPositionBuilderAtEnd(w->b, l->exit);
}

static LLVMValueRef call_libm(lw *w, LLVMValueRef fn, LLVMValueRef x) {
    LLVMValueRef c = LLVMBuildCall2(w->b, w->unary_ty, fn, &x, 1, "");
    if (!w->fast) {
        /* Exact: never let LLVM fold or replace the call with its own
         * approximation; the process's libm computes it, as in eager. */
        unsigned kind = LLVMGetEnumAttributeKindForName("nobuiltin", 9);
        LLVMAddCallSiteAttribute(c, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(w->ctx, kind, 0));
    }
    return c;
}

/* mj_act_apply (src/ops.c), operation for operation. */
static LLVMValueRef emit_act(lw *w, mj_act act, LLVMValueRef x) {
    switch (act) {
    case MJ_ACT_NONE: return x;
    case MJ_ACT_RELU: /* x < 0.0f ? 0.0f : x */
        return LLVMBuildSelect(w->b, LLVMBuildFCmp(w->b, LLVMRealOLT, x, cf(w, 0.0f), ""), cf(w, 0.0f), x, "");
    case MJ_ACT_GELU: /* 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f)) */
        return fmul(w, fmul(w, cf(w, 0.5f), x),
                    fadd(w, cf(w, 1.0f), call_libm(w, w->erff_fn, fmul(w, x, cf(w, 0.70710678118654752440f)))));
    case MJ_ACT_GELU_TANH: {
        /* 0.5f * x * (1.0f + tanhf(0.79788456080286535588f * (x + 0.044715f * x * x * x))) */
        LLVMValueRef cube = fmul(w, fmul(w, fmul(w, cf(w, 0.044715f), x), x), x);
        LLVMValueRef inner = fmul(w, cf(w, 0.79788456080286535588f), fadd(w, x, cube));
        return fmul(w, fmul(w, cf(w, 0.5f), x), fadd(w, cf(w, 1.0f), call_libm(w, w->tanhf_fn, inner)));
    }
    case MJ_ACT_SIGMOID: /* 1.0f / (1.0f + expf(-x)) */
        return fdiv(w, cf(w, 1.0f),
                    fadd(w, cf(w, 1.0f), call_libm(w, w->expf_fn, fpflags(w, LLVMBuildFNeg(w->b, x, "")))));
    case MJ_ACT_TANH: return call_libm(w, w->tanhf_fn, x);
    case MJ_ACT_COUNT: break;
    }
    MJ_ASSERT(!"unknown activation");
}

/* ---- ops ----------------------------------------------------------------- */

static LLVMValueRef elementwise_op(lw *w, const mj_node *n, const LLVMValueRef *v) {
    switch (n->op) {
    case MJ_OP_ADD: return fadd(w, v[0], v[1]);
    case MJ_OP_SUB: return fsub(w, v[0], v[1]);
    case MJ_OP_MUL: return fmul(w, v[0], v[1]);
    default: return emit_act(w, mj_op_table[n->op].act, v[0]);
    }
}

/* Elementwise over the node's type with NumPy broadcasting: operand dim
 * equal to the output dim (concrete or B) -> its contiguous stride, else
 * (a stretched 1) stride 0. */
static void emit_elementwise(lw *w, int32_t id) {
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
static void emit_expand(lw *w, int32_t id) {
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

/* y[M,N] = x[M,K] . W  with W[k][j] at W + k*wsk + j*wsj; then + b[j], then
 * act. Each y element: +0.0f, then y + x*w for k ascending, then + b: the
 * order of mj_linear / mj_matmul. With a contiguous j (wsj == 1) the loops
 * run i, k, j with the output row as accumulator; otherwise i, j, k. */
static void emit_dot(lw *w, LLVMValueRef y, LLVMValueRef x, LLVMValueRef W, LLVMValueRef M,
                     LLVMValueRef K, LLVMValueRef N, LLVMValueRef wsk, LLVMValueRef wsj, bool j_contig,
                     LLVMValueRef bias, mj_act act) {
    loop li = loop_begin(w, M);
    LLVMValueRef yrow = at(w, y, mul(w, li.iv, N));
    LLVMValueRef xrow = at(w, x, mul(w, li.iv, K));
    if (j_contig) {
        loop lj = loop_begin(w, N);
        store(w, cf(w, 0.0f), yrow, lj.iv);
        loop_end(w, &lj);
        loop lk = loop_begin(w, K);
        LLVMValueRef xv = load(w, xrow, lk.iv);
        LLVMValueRef wrow = at(w, W, mul(w, lk.iv, wsk));
        lj = loop_begin(w, N);
        store(w, fadd(w, load(w, yrow, lj.iv), fmul(w, xv, load(w, wrow, lj.iv))), yrow, lj.iv);
        loop_end(w, &lj);
        loop_end(w, &lk);
        if (bias || act != MJ_ACT_NONE) {
            lj = loop_begin(w, N);
            LLVMValueRef v = load(w, yrow, lj.iv);
            if (bias) v = fadd(w, v, load(w, bias, lj.iv));
            store(w, emit_act(w, act, v), yrow, lj.iv);
            loop_end(w, &lj);
        }
    } else {
        loop lj = loop_begin(w, N);
        LLVMValueRef wcol = at(w, W, mul(w, lj.iv, wsj));
        store(w, cf(w, 0.0f), yrow, lj.iv);
        loop lk = loop_begin(w, K);
        LLVMValueRef prod = fmul(w, load(w, xrow, lk.iv), load(w, wcol, mul(w, lk.iv, wsk)));
        store(w, fadd(w, load(w, yrow, lj.iv), prod), yrow, lj.iv);
        loop_end(w, &lk);
        LLVMValueRef v = load(w, yrow, lj.iv);
        if (bias) v = fadd(w, v, load(w, bias, lj.iv));
        store(w, emit_act(w, act, v), yrow, lj.iv);
        loop_end(w, &lj);
    }
    loop_end(w, &li);
}

static void emit_linear(lw *w, int32_t id) {
    const mj_graph *g = w->p->g;
    const mj_node *n = &g->nodes[id];
    const mj_type *xt = &g->nodes[n->operands[0]].type, *wt = &g->nodes[n->operands[1]].type;
    LLVMValueRef K = dimv(w, wt->dims[1]), N = dimv(w, wt->dims[0]);
    LLVMValueRef M = dims_product(w, xt, 0, xt->rank - 1);
    LLVMValueRef bias = n->n_operands == 3 ? w->buf[n->operands[2]] : NULL;
    mj_act act = n->op == MJ_OP_LINEAR_ACT ? n->act : MJ_ACT_NONE;
    /* a prologue weight is read from its packed [in][out] leaf */
    LLVMValueRef Wp = NULL;
    if (w->p->input_free[n->operands[1]]) {
        int32_t packed = w->p->leaf_packed[n->operands[1]];
        MJ_ASSERT(packed >= 0);
        Wp = w->buf[(size_t)g->n_nodes + 1 + (size_t)packed];
    }
    if (Wp)
        emit_dot(w, w->buf[id], w->buf[n->operands[0]], Wp, M, K, N, N, ci(w, 1), true, bias, act);
    else /* a weight computed from the input: read it in place, [out][in] */
        emit_dot(w, w->buf[id], w->buf[n->operands[0]], w->buf[n->operands[1]], M, K, N, ci(w, 1), K, false,
                 bias, act);
}

static void emit_matmul(lw *w, int32_t id) {
    const mj_graph *g = w->p->g;
    const mj_node *n = &g->nodes[id];
    const mj_type *at_ = &g->nodes[n->operands[0]].type, *bt = &g->nodes[n->operands[1]].type;
    LLVMValueRef M = dimv(w, at_->dims[0]), K = dimv(w, at_->dims[1]), N = dimv(w, bt->dims[1]);
    emit_dot(w, w->buf[id], w->buf[n->operands[0]], w->buf[n->operands[1]], M, K, N, N, ci(w, 1), true, NULL,
             MJ_ACT_NONE);
}

static void emit_transpose(lw *w, int32_t id) {
    const mj_graph *g = w->p->g;
    const mj_node *n = &g->nodes[id];
    const mj_type *t = &g->nodes[n->operands[0]].type;
    LLVMValueRef R = dimv(w, t->dims[0]), C = dimv(w, t->dims[1]);
    loop lr = loop_begin(w, R);
    loop lc = loop_begin(w, C);
    LLVMValueRef v = load(w, w->buf[n->operands[0]], add(w, mul(w, lr.iv, C), lc.iv));
    store(w, v, w->buf[id], add(w, mul(w, lc.iv, R), lr.iv));
    loop_end(w, &lc);
    loop_end(w, &lr);
}

static void emit_copy(lw *w, LLVMValueRef dst, LLVMValueRef src, LLVMValueRef n) {
    loop l = loop_begin(w, n);
    store(w, load(w, src, l.iv), dst, l.iv);
    loop_end(w, &l);
}

/* Pointer to leaf i: a baked constant (frozen) or leaves[i] (live). */
static LLVMValueRef leaf_ptr(lw *w, int32_t i) {
    if (w->o->baked) {
        const mj_leaf *lf = &w->p->leaves[i];
        char name[64];
        snprintf(name, sizeof name, "%s.leaf%d%s", w->o->fname, (int)i, lf->packed ? ".t" : "");
        int64_t bytes = w->o->baked_numel[i] * (int64_t)sizeof(float);
        LLVMValueRef init = LLVMConstStringInContext2(w->ctx, (const char *)w->o->baked[i], (size_t)bytes, 1);
        LLVMValueRef gv = LLVMAddGlobal(w->m, LLVMTypeOf(init), name);
        LLVMSetInitializer(gv, init);
        LLVMSetGlobalConstant(gv, 1);
        LLVMSetLinkage(gv, LLVMPrivateLinkage);
        LLVMSetUnnamedAddress(gv, LLVMGlobalUnnamedAddr);
        LLVMSetAlignment(gv, 64);
        return gv;
    }
    LLVMValueRef idx = ci(w, i);
    LLVMValueRef slot = LLVMBuildInBoundsGEP2(w->b, w->ptr, w->leaves, &idx, 1, "");
    LLVMValueRef v = LLVMBuildLoad2(w->b, w->ptr, slot, "leaf");
    return v;
}

mj_status mj_lower_body(LLVMContextRef ctx, LLVMModuleRef m, const mj_body_plan *p,
                        const mj_lower_options *o) {
    const mj_graph *g = p->g;
    lw w = {.ctx = ctx, .m = m, .p = p, .o = o, .fast = o->numeric == MJ_NUMERIC_FAST};
    w.f32 = LLVMFloatTypeInContext(ctx);
    w.i64 = LLVMInt64TypeInContext(ctx);
    w.ptr = LLVMPointerTypeInContext(ctx, 0);
    LLVMTypeRef params[5] = {w.ptr, w.ptr, w.ptr, w.i64, w.ptr};
    LLVMTypeRef fty = LLVMFunctionType(LLVMVoidTypeInContext(ctx), params, 5, 0);
    w.fn = LLVMAddFunction(m, o->fname, fty);
    w.unary_ty = LLVMFunctionType(w.f32, &w.f32, 1, 0);
    w.erff_fn = LLVMAddFunction(m, "erff", w.unary_ty);
    w.expf_fn = LLVMAddFunction(m, "expf", w.unary_ty);
    w.tanhf_fn = LLVMAddFunction(m, "tanhf", w.unary_ty);
    /* y and scratch are written only through themselves; x and the leaves
     * are read only. The caller guarantees x and y do not overlap. */
    unsigned noalias = LLVMGetEnumAttributeKindForName("noalias", 7);
    LLVMAddAttributeAtIndex(w.fn, 3, LLVMCreateEnumAttribute(ctx, noalias, 0)); /* y */
    LLVMAddAttributeAtIndex(w.fn, 5, LLVMCreateEnumAttribute(ctx, noalias, 0)); /* scratch */
    unsigned nounwind = LLVMGetEnumAttributeKindForName("nounwind", 8);
    LLVMAddAttributeAtIndex(w.fn, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(ctx, nounwind, 0));

    w.leaves = LLVMGetParam(w.fn, 0);
    w.x = LLVMGetParam(w.fn, 1);
    w.y = LLVMGetParam(w.fn, 2);
    w.batch = LLVMGetParam(w.fn, 3);
    w.scratch = LLVMGetParam(w.fn, 4);
    w.b = LLVMCreateBuilderInContext(ctx);
    LLVMPositionBuilderAtEnd(w.b, LLVMAppendBasicBlockInContext(ctx, w.fn, "entry"));

    /* buf[0 .. n_nodes) per node; buf[n_nodes + 1 + i] packed leaf i */
    w.buf = mj_alloc_array((size_t)g->n_nodes + 2 + (size_t)p->n_leaves, sizeof *w.buf);
    if (!w.buf) {
        LLVMDisposeBuilder(w.b);
        return MJ_ERR_NOMEM;
    }
    for (int32_t i = 0; i < p->n_leaves; i++) {
        LLVMValueRef ptr = leaf_ptr(&w, i);
        if (p->leaves[i].packed) w.buf[(size_t)g->n_nodes + 1 + (size_t)i] = ptr;
        else w.buf[p->leaves[i].node] = ptr;
    }
    /* scratch slices, offsets computed from the batch as in mj_body_scratch_floats */
    LLVMValueRef off = ci(&w, 0);
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (n->op == MJ_OP_INPUT) w.buf[i] = w.x;
        else if (i == p->out_root) w.buf[i] = w.y;
        else if (p->has_slot[i]) {
            w.buf[i] = at(&w, w.scratch, off);
            LLVMValueRef sz = dims_product(&w, &n->type, 0, n->type.rank);
            off = add(&w, off, LLVMBuildAnd(w.b, add(&w, sz, ci(&w, 15)), ci(&w, ~INT64_C(15)), ""));
        }
    }
    mj_status s = MJ_OK;
    for (int32_t i = 0; i < g->n_nodes && s == MJ_OK; i++) {
        const mj_node *n = &g->nodes[i];
        if (p->input_free[i] || n->op == MJ_OP_INPUT) continue;
        switch (n->op) {
        case MJ_OP_MATMUL: emit_matmul(&w, i); break;
        case MJ_OP_LINEAR:
        case MJ_OP_LINEAR_ACT: emit_linear(&w, i); break;
        case MJ_OP_EXPAND: emit_expand(&w, i); break;
        case MJ_OP_TRANSPOSE: emit_transpose(&w, i); break;
        case MJ_OP_RESHAPE: w.buf[i] = w.buf[n->operands[0]]; break;
        default:
            if (mj_op_table[n->op].flags & MJ_OPF_ELEMENTWISE) emit_elementwise(&w, i);
            else s = mj_fail(MJ_ERR_UNSUPPORTED, "jit: no lowering for op %s", mj_op_table[n->op].name);
        }
    }
    if (s == MJ_OK && p->out_root < 0) { /* the output is an input, a leaf or an alias of one */
        const mj_type *t = &g->nodes[p->out_node].type;
        emit_copy(&w, w.y, w.buf[p->out_node], dims_product(&w, t, 0, t->rank));
    }
    if (s == MJ_OK) LLVMBuildRetVoid(w.b);
    LLVMDisposeBuilder(w.b);
    free(w.buf);
    if (s != MJ_OK) return s;
    char *msg = NULL;
    if (LLVMVerifyModule(m, LLVMReturnStatusAction, &msg)) {
        s = mj_fail(MJ_ERR_BACKEND, "jit: the generated LLVM IR is invalid: %s", msg ? msg : "");
    }
    LLVMDisposeMessage(msg);
    return s;
}
