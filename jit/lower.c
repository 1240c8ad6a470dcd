/* IR -> LLVM IR: the body of a compiled graph, op by op, loops as basic
 * blocks, typed builders only.
 *
 *   void body(const float *const *leaves, const float *const *x,
 *             float *const *y, int64_t batch, float *scratch, int64_t tid,
 *             int64_t nth, mj_body_sync *sync)   (jit_internal.h: mj_lower_body)
 *
 * loads the input and output pointers and calls the inner function that
 * takes each of them as an argument (outputs noalias), so one output and
 * several compile to the same code.
 *
 * Exact mode emits, per output element, the float operations of the eager
 * kernels (src/ops.c) in the same order; only the loops around them differ.
 * Linear layers with a prologue weight are explicit vector code over the
 * panel-packed weight (vectors across output columns and rows, never across
 * k): chains of small layers become one straight-line kernel per group of
 * rows, wider layers register-tiled micro-kernels (see "vector kernels").
 * Other ops are scalar loops left to LLVM's vectorisers (default<O2>). Fast
 * mode sets fast-math flags on every float operation so LLVM may contract to
 * FMA and reassociate. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <llvm-c/Analysis.h>

#include "jit_internal.h"
#include "emit.h"
#include "lower_cnn.h"

/* ---- the plan ------------------------------------------------------------ */

/* Reshape is an alias of its operand's storage: follow the chain. */
static int32_t alias_root(const mj_graph *g, const bool *input_free, int32_t v) {
    while (!input_free[v] && g->nodes[v].op == MJ_OP_RESHAPE) v = g->nodes[v].operands[0];
    return v;
}

int mj_features_vector_width(const char *features) {
    if (features && strstr(features, "+avx512f")) return 16;
    if (features && strstr(features, "+avx")) return 8;
    return 4;
}

void mj_pack_panels(const float *w, int64_t N, int64_t K, int64_t P, float *out) {
    for (int64_t j0 = 0; j0 < N; j0 += P) {
        int64_t pw = N - j0 < P ? N - j0 : P;
        float *panel = out + K * j0;
        for (int64_t jj = 0; jj < pw; jj++)
            for (int64_t k = 0; k < K; k++) panel[k * pw + jj] = w[(j0 + jj) * K + k];
    }
}

/* A frozen linear layer whose weight (and bias) are constants, sparse enough
 * for jit/sparse.c to beat the dense kernel. */
static bool use_sparse(const mj_graph *g, const bool *input_free, const mj_node *n, bool frozen) {
    if (!frozen || (n->op != MJ_OP_LINEAR && n->op != MJ_OP_LINEAR_ACT) || input_free[n - g->nodes]) return false;
    const mj_node *w = &g->nodes[n->operands[1]];
    if (w->op != MJ_OP_CONST || !w->tensor || w->type.rank != 2) return false;
    /* small layers: the fused straight-line kernels are faster than any
     * sparse bookkeeping (transposes, index tables) */
    if (w->type.dims[0] <= 64 && w->type.dims[1] <= 64) return false;
    if (n->n_operands == 3 && (g->nodes[n->operands[2]].op != MJ_OP_CONST || !g->nodes[n->operands[2]].tensor))
        return false;
    return mj_sparse_profitable(w->tensor->data, w->type.dims[0], w->type.dims[1]);
}

mj_status mj_body_plan_build(const mj_graph *g, const bool *input_free, bool frozen, mj_body_plan *p) {
    memset(p, 0, sizeof *p);
    p->g = g;
    p->input_free = input_free;
    p->frozen = frozen;
    size_t n = (size_t)g->n_nodes + 1;
    p->n_in = mj_graph_input_count(g);
    p->n_out = g->n_outputs;
    p->leaf_plain = mj_alloc_array(n, sizeof *p->leaf_plain);
    p->leaf_packed = mj_alloc_array(n, sizeof *p->leaf_packed);
    p->leaves = mj_alloc_array(2 * n + (size_t)p->n_out, sizeof *p->leaves);
    p->has_slot = mj_alloc_array(n, sizeof *p->has_slot);
    p->sparse = mj_alloc_array(n, sizeof *p->sparse);
    p->in_nodes = mj_alloc_array((size_t)p->n_in + 1, sizeof *p->in_nodes);
    p->out_nodes = mj_alloc_array((size_t)p->n_out + 1, sizeof *p->out_nodes);
    p->out_root = mj_alloc_array((size_t)p->n_out + 1, sizeof *p->out_root);
    p->root_of = mj_alloc_array(n, sizeof *p->root_of);
    if (!p->leaf_plain || !p->leaf_packed || !p->leaves || !p->has_slot || !p->sparse || !p->in_nodes ||
        !p->out_nodes || !p->out_root || !p->root_of) {
        mj_body_plan_free(p);
        return MJ_ERR_NOMEM;
    }
    int32_t k_in = 0;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        p->leaf_plain[i] = p->leaf_packed[i] = p->root_of[i] = -1;
        p->sparse[i] = use_sparse(g, input_free, &g->nodes[i], frozen);
        if (g->nodes[i].op == MJ_OP_INPUT) p->in_nodes[k_in++] = i;
    }
    for (int32_t j = 0; j < p->n_out; j++) p->out_nodes[j] = g->outputs[j];
    p->vw = 16;
    p->nr = 4;
    p->panel = 64;

    /* Leaves: prologue values that a body node (or an output) reads. */
    for (int32_t i = 0; i < g->n_nodes + p->n_out; i++) {
        bool is_out = i >= g->n_nodes;
        if (!is_out && input_free[i]) continue;
        int n_ops = is_out ? 1 : g->nodes[i].n_operands;
        if (!is_out && p->sparse[i]) n_ops = 1; /* weight and bias live in the sparse kernel */
        for (int k = 0; k < n_ops; k++) {
            int32_t a = is_out ? p->out_nodes[i - g->n_nodes] : g->nodes[i].operands[k];
            if (!input_free[a]) continue;
            mj_op op = is_out ? MJ_OP_COUNT : g->nodes[i].op;
            bool packed = (op == MJ_OP_LINEAR || op == MJ_OP_LINEAR_ACT) && k == 1;
            int32_t *slot = packed ? &p->leaf_packed[a] : &p->leaf_plain[a];
            if (*slot >= 0) continue;
            *slot = p->n_leaves;
            p->leaves[p->n_leaves++] = (mj_leaf){.node = a, .packed = packed};
        }
    }
    /* Storage: every computing body node gets a scratch slice, except those
     * an output aliases, which write y[j] directly (one output per node: a
     * value returned twice is copied the second time). */
    for (int32_t j = 0; j < p->n_out; j++) {
        int32_t root = alias_root(g, input_free, p->out_nodes[j]);
        bool direct = !input_free[root] && g->nodes[root].op != MJ_OP_INPUT && p->root_of[root] < 0;
        p->out_root[j] = direct ? root : -1;
        if (direct) p->root_of[root] = j;
    }
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *nd = &g->nodes[i];
        p->has_slot[i] = !input_free[i] && nd->op != MJ_OP_INPUT && nd->op != MJ_OP_RESHAPE && p->root_of[i] < 0;
    }
    return MJ_OK;
}

void mj_body_plan_free(mj_body_plan *p) {
    free(p->leaf_plain);
    free(p->leaf_packed);
    free(p->leaves);
    free(p->has_slot);
    free(p->sparse);
    free(p->in_nodes);
    free(p->out_nodes);
    free(p->out_root);
    free(p->root_of);
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
    /* one region shared by the sparse layers (they run one after another) */
    int64_t sp = 0;
    for (int32_t i = 0; i < p->g->n_nodes; i++) {
        if (!p->sparse[i]) continue;
        const mj_type *wt = &p->g->nodes[p->g->nodes[i].operands[1]].type;
        int64_t f = mj_sparse_scratch_floats(wt->dims[1], wt->dims[0], batch);
        if (f > sp) sp = f;
    }
    if (sp > MJ_MAX_NUMEL || __builtin_add_overflow(total, round16(sp), &total) || total > MJ_MAX_NUMEL)
        return mj_fail(MJ_ERR_LIMIT, "batch %lld: the sparse kernels' scratch is too large", (long long)batch);
    *out = total;
    return MJ_OK;
}

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

static LLVMValueRef dimv(lw *w, int64_t d) { return d == MJ_DIM_BATCH ? w->batch : ci(w, d); }

/* numel of type t dims [from, to) */
static LLVMValueRef dims_product(lw *w, const mj_type *t, int from, int to) {
    LLVMValueRef n = ci(w, 1);
    for (int d = from; d < to; d++) n = mul(w, n, dimv(w, t->dims[d]));
    return n;
}

/* ---- the math of transformers: scalar definitions (src/ops.c) ------------ */

/* mj_unary_apply, operation for operation (both sides of a ?: are
 * computed and one selected: the same value). */
static LLVMValueRef emit_unary(lw *w, const mj_node *n, LLVMValueRef x) {
    const mj_attrs *a = &n->attrs;
    LLVMValueRef one = cf(w, 1.0f), zero = cf(w, 0.0f);
    switch (n->op) {
    case MJ_OP_NEG: return fpflags(w, LLVMBuildFNeg(w->e.b, x, ""));
    case MJ_OP_EXP: return call_libm(w, "expf", x);
    case MJ_OP_LOG: return call_libm(w, "logf", x);
    case MJ_OP_SQRT: return call_libm(w, "sqrtf", x);
    case MJ_OP_RSQRT: return fdiv(w, one, call_libm(w, "sqrtf", x));
    case MJ_OP_POW: {
        float e = a->f[0];
        if (e == 2.0f) return fmul(w, x, x);
        if (e == 3.0f) return fmul(w, fmul(w, x, x), x);
        if (e == 0.5f) return call_libm(w, "sqrtf", x);
        if (e == -0.5f) return fdiv(w, one, call_libm(w, "sqrtf", x));
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
        LLVMValueRef soft = fdiv(w, call_libm(w, "log1pf", call_libm(w, "expf", t)), cf(w, a->f[0]));
        return sel(w, LLVMRealOGT, t, cf(w, a->f[1]), x, soft);
    }
    MJ_CASE_ACT_OPS: return emit_act(w, mj_op_table[n->op].act, x);
    /* not unary elementwise: emit_elementwise never passes these */
    MJ_CASE_LEAF_OPS:
    MJ_CASE_BINARY_OPS:
    MJ_CASE_OTHER_OPS:
    MJ_CASE_CNN_OPS:
    case MJ_OP_COUNT: break;
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
static void emit_elementwise(lw *w, int32_t id) {
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
static void emit_expand(lw *w, int32_t id) {
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


/* y[M,N] = x[M,K] . W  with W[k][j] at W + k*wsk + j*wsj; then + b[j], then
 * act. Each y element: +0.0f, then y = fmaf(x, w, y) for k ascending (vmuladd),
 * then + b: the order of mj_linear / mj_matmul (batched: per matrix). With a contiguous j (wsj == 1) the loops
 * run i, k, j with the output row as accumulator; otherwise i, j, k. */
static void emit_dot(lw *w, LLVMValueRef y, LLVMValueRef x, LLVMValueRef W, LLVMValueRef M,
                     LLVMValueRef K, LLVMValueRef N, LLVMValueRef wsk, LLVMValueRef wsj, bool j_contig,
                     LLVMValueRef bias, mj_act act) {
    w->loops = true;
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
        store(w, vmuladd(w, load(w, yrow, lj.iv), xv, load(w, wrow, lj.iv)), yrow, lj.iv);
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
        store(w, vmuladd(w, load(w, yrow, lj.iv), load(w, xrow, lk.iv), load(w, wcol, mul(w, lk.iv, wsk))),
              yrow, lj.iv);
        loop_end(w, &lk);
        LLVMValueRef v = load(w, yrow, lj.iv);
        if (bias) v = fadd(w, v, load(w, bias, lj.iv));
        store(w, emit_act(w, act, v), yrow, lj.iv);
        loop_end(w, &lj);
    }
    loop_end(w, &li);
}

static void emit_gemm(lw *w, LLVMValueRef y, LLVMValueRef x, LLVMValueRef Wp, LLVMValueRef M, int64_t K,
                      int64_t N, LLVMValueRef bias, mj_act act);

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
    if (Wp && wt->dims[0] >= 1 && wt->dims[1] >= 1)
        emit_gemm(w, w->buf[id], w->buf[n->operands[0]], Wp, M, wt->dims[1], wt->dims[0], bias, act);
    else if (Wp)
        emit_dot(w, w->buf[id], w->buf[n->operands[0]], Wp, M, K, N, N, ci(w, 1), true, bias, act);
    else /* a weight computed from the input: read it in place, [out][in] */
        emit_dot(w, w->buf[id], w->buf[n->operands[0]], w->buf[n->operands[1]], M, K, N, ci(w, 1), K, false,
                 bias, act);
}

/* matmul a[..., M, K] @ b[..., K, N]: per matrix of the (broadcast) batch
 * dims, emit_dot's i, k, j order, each element +0.0f then + a*b for k
 * ascending, as mj_matmul. */
static void emit_matmul(lw *w, int32_t id) {
    w->loops = true;
    const mj_graph *g = w->p->g;
    const mj_node *n = &g->nodes[id];
    const mj_type *ta = &g->nodes[n->operands[0]].type, *tb = &g->nodes[n->operands[1]].type, *to = &n->type;
    LLVMValueRef M = dimv(w, ta->dims[ta->rank - 2]), K = dimv(w, ta->dims[ta->rank - 1]);
    LLVMValueRef N = dimv(w, tb->dims[tb->rank - 1]);
    int nb = to->rank - 2;
    /* per output batch dim: strides of a, b (0 where broadcast) and y */
    LLVMValueRef sa[2], sb[2], sy[2], ea = mul(w, M, K), eb = mul(w, K, N), ey = mul(w, M, N);
    for (int d = nb - 1; d >= 0; d--) {
        int da = d - (nb - (ta->rank - 2)), db = d - (nb - (tb->rank - 2));
        sy[d] = ey;
        ey = mul(w, ey, dimv(w, to->dims[d]));
        sa[d] = da >= 0 && ta->dims[da] == to->dims[d] ? ea : ci(w, 0);
        if (da >= 0) ea = mul(w, ea, dimv(w, ta->dims[da]));
        sb[d] = db >= 0 && tb->dims[db] == to->dims[d] ? eb : ci(w, 0);
        if (db >= 0) eb = mul(w, eb, dimv(w, tb->dims[db]));
    }
    loop lb[2];
    LLVMValueRef oa = ci(w, 0), ob = ci(w, 0), oy = ci(w, 0);
    for (int d = 0; d < nb; d++) {
        lb[d] = loop_begin(w, dimv(w, to->dims[d]));
        oa = add(w, oa, mul(w, lb[d].iv, sa[d]));
        ob = add(w, ob, mul(w, lb[d].iv, sb[d]));
        oy = add(w, oy, mul(w, lb[d].iv, sy[d]));
    }
    emit_dot(w, at(w, w->buf[id], oy), at(w, w->buf[n->operands[0]], oa), at(w, w->buf[n->operands[1]], ob), M, K,
             N, N, ci(w, 1), true, NULL, MJ_ACT_NONE);
    for (int d = nb - 1; d >= 0; d--) loop_end(w, &lb[d]);
}

/* transpose / permute: output dim d walks operand dim perm[d]. */
static void emit_permute(lw *w, int32_t id) {
    w->loops = true;
    const mj_graph *g = w->p->g;
    const mj_node *n = &g->nodes[id];
    const mj_type *t = &g->nodes[n->operands[0]].type, *to = &n->type;
    int perm[MJ_MAX_RANK];
    for (int d = 0; d < t->rank; d++) perm[d] = n->op == MJ_OP_PERMUTE ? n->sa.perm[d] : d;
    if (n->op == MJ_OP_TRANSPOSE) {
        perm[n->sa.dim0] = n->sa.dim1;
        perm[n->sa.dim1] = n->sa.dim0;
    }
    LLVMValueRef xs[MJ_MAX_RANK], s = ci(w, 1);
    for (int d = t->rank - 1; d >= 0; d--) {
        xs[d] = s;
        s = mul(w, s, dimv(w, t->dims[d]));
    }
    loop l[MJ_MAX_RANK];
    LLVMValueRef src = ci(w, 0), dst = ci(w, 0);
    for (int d = 0; d < to->rank; d++) {
        l[d] = loop_begin(w, dimv(w, to->dims[d]));
        src = add(w, src, mul(w, l[d].iv, xs[perm[d]]));
        dst = add(w, mul(w, dst, dimv(w, to->dims[d])), l[d].iv);
    }
    store(w, load(w, w->buf[n->operands[0]], src), w->buf[id], dst);
    for (int d = to->rank - 1; d >= 0; d--) loop_end(w, &l[d]);
}

/* dims [0, dim) and (dim, rank) of t as two products */
static void outer_inner(lw *w, const mj_type *t, int dim, LLVMValueRef *outer, LLVMValueRef *inner) {
    *outer = dims_product(w, t, 0, dim);
    *inner = dims_product(w, t, dim + 1, t->rank);
}

/* slice: per outer index, (end - start) * inner floats from start * inner. */
static void emit_slice(lw *w, int32_t id) {
    w->loops = true;
    const mj_node *n = &w->p->g->nodes[id];
    const mj_type *t = &w->p->g->nodes[n->operands[0]].type;
    LLVMValueRef outer, inner;
    outer_inner(w, t, n->sa.dim, &outer, &inner);
    LLVMValueRef size = ci(w, t->dims[n->sa.dim]); /* concrete: the verifier refuses slicing B */
    LLVMValueRef len = mul(w, ci(w, n->sa.end - n->sa.start), inner);
    loop lo = loop_begin(w, outer);
    LLVMValueRef src = at(w, w->buf[n->operands[0]], mul(w, add(w, mul(w, lo.iv, size), ci(w, n->sa.start)), inner));
    LLVMValueRef dst = at(w, w->buf[id], mul(w, lo.iv, len));
    loop li = loop_begin(w, len);
    store(w, load(w, src, li.iv), dst, li.iv);
    loop_end(w, &li);
    loop_end(w, &lo);
}

/* cat: operand k's rows go to columns [at_k, at_k + len_k) of each output row. */
static void emit_cat(lw *w, int32_t id) {
    w->loops = true;
    const mj_node *n = &w->p->g->nodes[id];
    LLVMValueRef outer, inner;
    outer_inner(w, &n->type, n->sa.dim, &outer, &inner);
    LLVMValueRef row = mul(w, ci(w, n->type.dims[n->sa.dim]), inner);
    int64_t at0 = 0;
    for (int k = 0; k < n->n_operands; k++) {
        int64_t dk = w->p->g->nodes[n->operands[k]].type.dims[n->sa.dim];
        LLVMValueRef len = mul(w, ci(w, dk), inner);
        loop lo = loop_begin(w, outer);
        LLVMValueRef src = at(w, w->buf[n->operands[k]], mul(w, lo.iv, len));
        LLVMValueRef dst = at(w, w->buf[id], add(w, mul(w, lo.iv, row), mul(w, ci(w, at0), inner)));
        loop li = loop_begin(w, len);
        store(w, load(w, src, li.iv), dst, li.iv);
        loop_end(w, &li);
        loop_end(w, &lo);
        at0 += dk;
    }
}

static void emit_copy(lw *w, LLVMValueRef dst, LLVMValueRef src, LLVMValueRef n) {
    w->loops = true;
    loop l = loop_begin(w, n);
    store(w, load(w, src, l.iv), dst, l.iv);
    loop_end(w, &l);
}

/* ---- reductions and normalisations ----------------------------------------
 * Plain loops, one line (or row) at a time, each doing the float operations
 * of its eager kernel (src/ops.c) in the same order; accumulators live in
 * entry-block allocas that LLVM promotes to registers. Fast mode's flags let
 * LLVM vectorise the sums. */

static LLVMValueRef ld_acc(lw *w, LLVMValueRef a) { return LLVMBuildLoad2(w->e.b, w->e.f32, a, ""); }
static void st_acc(lw *w, LLVMValueRef a, LLVMValueRef v) { LLVMBuildStore(w->e.b, v, a); }

/* (float)n for an i64 count, as C converts it */
static LLVMValueRef count_f(lw *w, LLVMValueRef n) { return LLVMBuildSIToFP(w->e.b, n, w->e.f32, ""); }

/* sum / mean / softmax / log_softmax along dim d of x: lines [outer][n][inner] */
static void emit_along(lw *w, int32_t id) {
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
        LLVMValueRef e = call_libm(w, "expf", fsub(w, load(w, x, LINE_AT(li.iv)), m));
        if (n->op == MJ_OP_SOFTMAX) store(w, e, y, LINE_AT(li.iv));
        st_acc(w, acc, fadd(w, ld_acc(w, acc), e));
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
static void emit_layer_norm(lw *w, int32_t id) {
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

/* ---- vector kernels for linear layers with a packed weight ----------------
 *
 * The packed weight is in column panels (mj_pack_panels): panel p holds
 * columns j0 = p*P .. j0+pw as [K][pw]. A micro-kernel keeps rows x vectors
 * accumulators in registers across a block of k and streams the panel: per k
 * it loads the panel's vectors once, broadcasts x[i][k] per row and does
 * acc = fma(x, w, acc) (exact: k ascending per element, so every element
 * sees eager's fmaf chain in eager's order; fast: fmuladd). Partial
 * vectors (pw not a multiple of the width) use masked loads and stores. */

#define MK_MAX_ROWS MJ_MK_MAX_ROWS
#define MK_MAX_VECS 8

/* void mk(const float *x, int64 xs, const float *wp, float *y, int64 ys,
 *         int64 kc, i1 first, i1 last, const float *bias)
 * rows rows of x (stride xs) times the panel block wp ([kc][pw]) into
 * y (stride ys): first -> start from +0.0f, else from y; last -> + bias and
 * the activation. */
static LLVMValueRef emit_microkernel(lw *w, int rows, int pw, bool has_bias, mj_act act) {
    static const char *const pnames[9] = {"x", "xs", "wp", "y", "ys", "kc", "first", "last", "bias"};
    LLVMTypeRef i1 = LLVMInt1TypeInContext(w->e.ctx);
    LLVMTypeRef pt[9] = {w->e.ptr, w->e.i64, w->e.ptr, w->e.ptr, w->e.i64, w->e.i64, i1, i1, w->e.ptr};
    LLVMTypeRef fty = LLVMFunctionType(LLVMVoidTypeInContext(w->e.ctx), pt, 9, 0);
    char name[96];
    snprintf(name, sizeof name, "%s.mk%d", w->o->fname, w->n_kernels++);
    LLVMValueRef fn = LLVMAddFunction(w->e.m, name, fty);
    LLVMSetLinkage(fn, LLVMInternalLinkage);
    add_attr(w, fn, LLVMAttributeFunctionIndex, "nounwind");
    add_attr(w, fn, LLVMAttributeFunctionIndex, "noinline");
    add_attr(w, fn, 4, "noalias"); /* y */
    LLVMValueRef P[9];
    for (int i = 0; i < 9; i++) {
        P[i] = LLVMGetParam(fn, (unsigned)i);
        LLVMSetValueName2(P[i], pnames[i], strlen(pnames[i]));
    }
    LLVMBasicBlockRef saved = LLVMGetInsertBlock(w->e.b);
    LLVMValueRef saved_fn = w->e.fn;
    w->e.fn = fn;

    int vw = w->p->vw, nv = (pw + vw - 1) / vw;
    int lanes[MK_MAX_VECS];
    for (int v = 0; v < nv; v++) lanes[v] = pw - v * vw < vw ? pw - v * vw : vw;
    LLVMBasicBlockRef entry = LLVMAppendBasicBlockInContext(w->e.ctx, fn, "entry");
    LLVMBasicBlockRef bload = LLVMAppendBasicBlockInContext(w->e.ctx, fn, "load");
    LLVMBasicBlockRef pre = LLVMAppendBasicBlockInContext(w->e.ctx, fn, "pre");
    LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(w->e.ctx, fn, "k");
    LLVMBasicBlockRef exit = LLVMAppendBasicBlockInContext(w->e.ctx, fn, "exit");
    LLVMBasicBlockRef epi = LLVMAppendBasicBlockInContext(w->e.ctx, fn, "epilogue");
    LLVMBasicBlockRef plain = LLVMAppendBasicBlockInContext(w->e.ctx, fn, "store");

    LLVMPositionBuilderAtEnd(w->e.b, entry);
    LLVMValueRef yrow[MK_MAX_ROWS], xrow[MK_MAX_ROWS];
    for (int r = 0; r < rows; r++) {
        yrow[r] = at(w, P[3], mul(w, ci(w, r), P[4]));
        xrow[r] = at(w, P[0], mul(w, ci(w, r), P[1]));
    }
    LLVMBuildCondBr(w->e.b, P[6], pre, bload);
    LLVMPositionBuilderAtEnd(w->e.b, bload);
    LLVMValueRef loaded[MK_MAX_ROWS][MK_MAX_VECS];
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < nv; v++) loaded[r][v] = vload(w, at(w, yrow[r], ci(w, v * vw)), lanes[v]);
    LLVMBuildBr(w->e.b, pre);

    LLVMPositionBuilderAtEnd(w->e.b, pre);
    LLVMValueRef init[MK_MAX_ROWS][MK_MAX_VECS];
    LLVMBasicBlockRef from[2] = {entry, bload};
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < nv; v++) {
            init[r][v] = LLVMBuildPhi(w->e.b, w->e.vt, "");
            LLVMValueRef in[2] = {LLVMConstNull(w->e.vt), loaded[r][v]};
            LLVMAddIncoming(init[r][v], in, from, 2);
        }
    LLVMBuildBr(w->e.b, body);

    /* do { ... } while (++k < kc): kc >= 1 */
    LLVMPositionBuilderAtEnd(w->e.b, body);
    LLVMValueRef k = LLVMBuildPhi(w->e.b, w->e.i64, "k");
    LLVMValueRef acc[MK_MAX_ROWS][MK_MAX_VECS], nacc[MK_MAX_ROWS][MK_MAX_VECS];
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < nv; v++) acc[r][v] = LLVMBuildPhi(w->e.b, w->e.vt, "acc");
    LLVMValueRef wrow = at(w, P[2], mul(w, k, ci(w, pw)));
    LLVMValueRef wv[MK_MAX_VECS];
    for (int v = 0; v < nv; v++) wv[v] = vload(w, at(w, wrow, ci(w, v * vw)), lanes[v]);
    for (int r = 0; r < rows; r++) {
        LLVMValueRef xb = vsplat(w, load(w, xrow[r], k));
        for (int v = 0; v < nv; v++) nacc[r][v] = vmuladd(w, acc[r][v], xb, wv[v]);
    }
    LLVMValueRef k1 = LLVMBuildNSWAdd(w->e.b, k, ci(w, 1), "");
    LLVMBuildCondBr(w->e.b, LLVMBuildICmp(w->e.b, LLVMIntSLT, k1, P[5], ""), body, exit);
    LLVMValueRef zero = ci(w, 0);
    LLVMAddIncoming(k, &zero, &pre, 1);
    LLVMAddIncoming(k, &k1, &body, 1);
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < nv; v++) {
            LLVMAddIncoming(acc[r][v], &init[r][v], &pre, 1);
            LLVMAddIncoming(acc[r][v], &nacc[r][v], &body, 1);
        }

    LLVMPositionBuilderAtEnd(w->e.b, exit);
    LLVMBuildCondBr(w->e.b, P[7], epi, plain);
    LLVMPositionBuilderAtEnd(w->e.b, epi);
    LLVMValueRef bv[MK_MAX_VECS];
    if (has_bias)
        for (int v = 0; v < nv; v++) bv[v] = vload(w, at(w, P[8], ci(w, v * vw)), lanes[v]);
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < nv; v++) {
            LLVMValueRef e = nacc[r][v];
            if (has_bias) e = fadd(w, e, bv[v]);
            vstore(w, emit_act_vec(w, act, e, lanes[v]), at(w, yrow[r], ci(w, v * vw)), lanes[v]);
        }
    LLVMBuildRetVoid(w->e.b);
    LLVMPositionBuilderAtEnd(w->e.b, plain);
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < nv; v++) vstore(w, nacc[r][v], at(w, yrow[r], ci(w, v * vw)), lanes[v]);
    LLVMBuildRetVoid(w->e.b);

    w->e.fn = saved_fn;
    LLVMPositionBuilderAtEnd(w->e.b, saved);
    return fn;
}

static const int mk_rows[4] = {6, 4, 2, 1};

/* Rows [0, M) of one panel block: 6 at a time, then 4, 2, 1 for the rest. */
static void emit_rows(lw *w, LLVMValueRef const mk[4], LLVMValueRef x, int64_t K, LLVMValueRef wp, LLVMValueRef y,
                      int64_t N, LLVMValueRef M, LLVMValueRef kc, LLVMValueRef first, LLVMValueRef last,
                      LLVMValueRef bias) {
    LLVMTypeRef i1 = LLVMInt1TypeInContext(w->e.ctx);
    LLVMTypeRef pt[9] = {w->e.ptr, w->e.i64, w->e.ptr, w->e.ptr, w->e.i64, w->e.i64, i1, i1, w->e.ptr};
    LLVMTypeRef fty = LLVMFunctionType(LLVMVoidTypeInContext(w->e.ctx), pt, 9, 0);
    LLVMValueRef bp = bias ? bias : LLVMConstNull(w->e.ptr);
    LLVMValueRef blocks = LLVMBuildSDiv(w->e.b, M, ci(w, 6), "");
    loop lb = loop_begin(w, blocks);
    LLVMValueRef i0 = mul(w, lb.iv, ci(w, 6));
    LLVMValueRef args[9] = {at(w, x, mul(w, i0, ci(w, K))), ci(w, K), wp, at(w, y, mul(w, i0, ci(w, N))),
                            ci(w, N), kc, first, last, bp};
    LLVMBuildCall2(w->e.b, fty, mk[0], args, 9, "");
    loop_end(w, &lb);
    LLVMValueRef done = mul(w, blocks, ci(w, 6));
    LLVMValueRef rem = LLVMBuildSub(w->e.b, M, done, "");
    for (int t = 1; t < 4; t++) {
        int r = mk_rows[t];
        LLVMBasicBlockRef end = if_begin(w, LLVMBuildICmp(w->e.b, LLVMIntNE, LLVMBuildAnd(w->e.b, rem, ci(w, r), ""),
                                                          ci(w, 0), ""));
        /* rows before this piece: done + (rem & bigger pieces) */
        LLVMValueRef row = add(w, done, LLVMBuildAnd(w->e.b, rem, ci(w, ~(int64_t)(2 * r - 1)), ""));
        LLVMValueRef a[9] = {at(w, x, mul(w, row, ci(w, K))), ci(w, K), wp, at(w, y, mul(w, row, ci(w, N))),
                             ci(w, N), kc, first, last, bp};
        LLVMBuildCall2(w->e.b, fty, mk[t], a, 9, "");
        if_end(w, end);
    }
}

/* Rows of x per row block: the block's x[rows][K] stays within half the
 * per-core L2 while every panel of W passes over it. Without the blocks, a
 * batch whose x outgrows L2 is re-read from L3 once per panel, with 4 KiB
 * row strides the prefetchers follow badly (1024 wide: batch 512 and up ran
 * at 0.6-0.75x of batch 64-256 on a 2 MiB-L2 core). */
static int64_t gemm_row_block(int64_t K) {
    long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE); /* 0 or -1 when unknown */
    if (l2 < 256 * 1024 || l2 > 64 * 1024 * 1024) l2 = 1024 * 1024;
    int64_t mc = (int64_t)l2 / 2 / (K * 4) / MK_MAX_ROWS * MK_MAX_ROWS; /* so no block is empty */
    return mc < 4 * MK_MAX_ROWS ? 4 * MK_MAX_ROWS : mc;
}

/* y[M][N] = act(x[M][K] . W^T + b) over the packed panels Wp. */
static void emit_gemm(lw *w, LLVMValueRef y, LLVMValueRef x, LLVMValueRef Wp, LLVMValueRef M, int64_t K,
                      int64_t N, LLVMValueRef bias, mj_act act) {
    int64_t P = w->p->panel;
    /* k blocks keep the panel block in L1 (~32 KB) */
    int64_t KC = 32768 / (P * 4);
    if (KC < 16) KC = 16;
    if (K <= KC + KC / 2) KC = K;
    int64_t nkb = (K + KC - 1) / KC;
    int64_t nfull = N / P, tail = N % P;
    LLVMValueRef mk[2][4];
    for (int part = 0; part < 2; part++)
        if (part == 0 ? nfull : tail)
            for (int t = 0; t < 4; t++)
                mk[part][t] = emit_microkernel(w, mk_rows[t], (int)(part == 0 ? P : tail), bias != NULL, act);
    /* Row blocks of at most MC rows (one block when x fits): nblk equal
     * blocks, each a multiple of the 6-row kernel but the last. */
    int64_t MC = gemm_row_block(K);
    LLVMValueRef nblk = LLVMBuildSDiv(w->e.b, add(w, M, ci(w, MC - 1)), ci(w, MC), "");
    LLVMValueRef per = LLVMBuildSDiv(w->e.b, add(w, M, LLVMBuildSub(w->e.b, nblk, ci(w, 1), "")), nblk, "");
    per = mul(w, LLVMBuildSDiv(w->e.b, add(w, per, ci(w, MK_MAX_ROWS - 1)), ci(w, MK_MAX_ROWS), ""), ci(w, MK_MAX_ROWS));
    loop lr = loop_begin(w, nblk);
    LLVMValueRef r0 = mul(w, lr.iv, per), left = LLVMBuildSub(w->e.b, M, r0, "");
    LLVMValueRef rows = LLVMBuildSelect(w->e.b, LLVMBuildICmp(w->e.b, LLVMIntSLT, left, per, ""), left, per, "");
    LLVMValueRef xb = at(w, x, mul(w, r0, ci(w, K))), yb = at(w, y, mul(w, r0, ci(w, N)));
    for (int part = 0; part < 2; part++) {
        int64_t np = part == 0 ? nfull : (tail ? 1 : 0);
        if (np == 0) continue;
        int pw = (int)(part == 0 ? P : tail);
        /* column mode: thread tid takes full panels [np*tid/nth, np*(tid+1)/nth),
         * the last thread the narrow tail panel */
        LLVMValueRef lo = ci(w, 0), cnt;
        if (part == 0) {
            lo = LLVMBuildSDiv(w->e.b, mul(w, ci(w, np), w->tid), w->nth, "");
            LLVMValueRef hi = LLVMBuildSDiv(w->e.b, mul(w, ci(w, np), add(w, w->tid, ci(w, 1))), w->nth, "");
            cnt = LLVMBuildSub(w->e.b, hi, lo, "");
        } else {
            LLVMValueRef last_thread = LLVMBuildICmp(w->e.b, LLVMIntEQ, w->tid, LLVMBuildSub(w->e.b, w->nth, ci(w, 1), ""), "");
            cnt = LLVMBuildSelect(w->e.b, last_thread, ci(w, 1), ci(w, 0), "");
        }
        loop lp = loop_begin(w, cnt);
        LLVMValueRef j0 = add(w, mul(w, add(w, lo, lp.iv), ci(w, P)), ci(w, part == 0 ? 0 : nfull * P));
        LLVMValueRef panel = at(w, Wp, mul(w, j0, ci(w, K)));
        LLVMValueRef ycol = at(w, yb, j0);
        LLVMValueRef bcol = bias ? at(w, bias, j0) : NULL;
        loop lk = loop_begin(w, ci(w, nkb));
        LLVMValueRef k0 = mul(w, lk.iv, ci(w, KC));
        LLVMValueRef last = LLVMBuildICmp(w->e.b, LLVMIntEQ, lk.iv, ci(w, nkb - 1), "");
        LLVMValueRef kc = LLVMBuildSelect(w->e.b, last, ci(w, K - (nkb - 1) * KC), ci(w, KC), "");
        LLVMValueRef first = LLVMBuildICmp(w->e.b, LLVMIntEQ, lk.iv, ci(w, 0), "");
        emit_rows(w, mk[part], at(w, xb, k0), K, at(w, panel, mul(w, k0, ci(w, pw))), ycol, N, rows, kc, first,
                  last, bcol);
        loop_end(w, &lk);
        loop_end(w, &lp);
    }
    loop_end(w, &lr);
}

/* ---- small layers: one straight-line kernel per group of rows -------------
 *
 * A chain of small linear layers (each feeding only the next) runs per group
 * of rows with every intermediate activation in vector registers: no stores,
 * no loops over k or j. Per element the operations are still +0.0f, then
 * acc + x*w for k ascending, + b, the activation. */

#define SMALL_MAX_K 64
#define SMALL_MAX_N 64
#define SMALL_ROWS 3
#define FAST_SPLIT 4

static bool small_linear(const mj_body_plan *p, int32_t id) {
    const mj_node *n = &p->g->nodes[id];
    if ((n->op != MJ_OP_LINEAR && n->op != MJ_OP_LINEAR_ACT) || p->input_free[id] || p->sparse[id]) return false;
    if (!p->input_free[n->operands[1]] || (n->n_operands == 3 && !p->input_free[n->operands[2]])) return false;
    const mj_type *wt = &p->g->nodes[n->operands[1]].type;
    int64_t N = wt->dims[0], K = wt->dims[1];
    return K >= 1 && N >= 1 && K <= SMALL_MAX_K && N <= SMALL_MAX_N && N <= (int64_t)MK_MAX_VECS * p->vw;
}

/* Frozen small layers skip zero weights lane by lane. Step t adds, in lane
 * j, x[k]*w[j][k] for row j's t-th nonzero k (ascending), the x values
 * gathered from the row's vectors by a constant shuffle; a lane whose row
 * has run out adds x[0]*0. Per lane that is eager's sequence minus products
 * with zero weights, exact for finite inputs as in jit/sparse.c (see
 * docs/numerics.md), and it takes max-nonzeros-per-row steps instead of K:
 * the seed's identity masks need one step per layer instead of 16. */
#define LANE_MAX_STEPS 32 /* K <= 2 vectors of at most 16 lanes */

/* Steps for W[N][K] if the per-lane form applies and saves steps, else -1;
 * idx[t][j] and wv[t][j] filled for j < N. */
static int lane_sparse_plan(const lw *w, const mj_node *wn, int64_t N, int64_t K,
                            int8_t idx[LANE_MAX_STEPS][SMALL_MAX_N], float wv[LANE_MAX_STEPS][SMALL_MAX_N]) {
    if (!w->p->frozen || wn->op != MJ_OP_CONST || !wn->tensor || K > 2 * (int64_t)w->p->vw) return -1;
    const float *W = wn->tensor->data;
    int steps = 0;
    for (int64_t j = 0; j < N; j++) {
        int t = 0;
        for (int64_t k = 0; k < K; k++) t += W[j * K + k] != 0.0f;
        if (t > steps) steps = t;
    }
    if (steps >= K) return -1; /* nothing to skip: the broadcast form is cheaper */
    for (int64_t j = 0; j < N; j++) {
        int t = 0;
        for (int64_t k = 0; k < K; k++)
            if (W[j * K + k] != 0.0f) {
                idx[t][j] = (int8_t)k;
                wv[t][j] = W[j * K + k];
                t++;
            }
        for (; t < steps; t++) {
            idx[t][j] = 0;
            wv[t][j] = 0.0f;
        }
    }
    return steps;
}

static LLVMValueRef const_vec(lw *w, const float *v, int lanes) {
    LLVMValueRef e[64];
    for (int l = 0; l < w->p->vw; l++) e[l] = cf(w, l < lanes ? v[l] : 0.0f);
    return LLVMConstVector(e, (unsigned)w->p->vw);
}

static LLVMValueRef shuffle_mask(lw *w, const int8_t *k, int lanes) {
    LLVMValueRef e[64];
    LLVMTypeRef i32 = LLVMInt32TypeInContext(w->e.ctx);
    for (int l = 0; l < w->p->vw; l++) e[l] = LLVMConstInt(i32, l < lanes ? (unsigned)k[l] : 0, 0);
    return LLVMConstVector(e, (unsigned)w->p->vw);
}

/* One layer for `rows` rows reading x[r][k] from the rows xrow[r]; the
 * output vectors (bias and activation applied) in out[r][v]. */
static void small_layer(lw *w, int32_t id, int rows, LLVMValueRef const *xrow,
                        LLVMValueRef out[SMALL_ROWS][MK_MAX_VECS]) {
    const mj_graph *g = w->p->g;
    const mj_node *n = &g->nodes[id];
    const mj_type *wt = &g->nodes[n->operands[1]].type;
    int64_t N = wt->dims[0], K = wt->dims[1], P = w->p->panel;
    int vw = w->p->vw, nv = (int)((N + vw - 1) / vw);
    LLVMValueRef Wp = w->buf[(size_t)g->n_nodes + 1 + (size_t)w->p->leaf_packed[n->operands[1]]];
    LLVMValueRef bias = n->n_operands == 3 ? w->buf[n->operands[2]] : NULL;
    mj_act act = n->op == MJ_OP_LINEAR_ACT ? n->act : MJ_ACT_NONE;
    int lanes[MK_MAX_VECS];
    int64_t woff[MK_MAX_VECS], wstride[MK_MAX_VECS];
    for (int v = 0; v < nv; v++) {
        int64_t j0 = (int64_t)v * vw, p0 = j0 / P * P, pw = N - p0 < P ? N - p0 : P;
        lanes[v] = (int)(N - j0 < vw ? N - j0 : vw);
        woff[v] = K * p0 + (j0 - p0);
        wstride[v] = pw;
    }
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < nv; v++) out[r][v] = LLVMConstNull(w->e.vt);
    int8_t lidx[LANE_MAX_STEPS][SMALL_MAX_N];
    float wsteps[LANE_MAX_STEPS][SMALL_MAX_N];
    int steps = lane_sparse_plan(w, &g->nodes[n->operands[1]], N, K, lidx, wsteps);
    if (steps >= 0) {
        for (int r = 0; r < rows; r++) {
            LLVMValueRef xv[2] = {NULL, LLVMGetPoison(w->e.vt)};
            for (int64_t i = 0; i * vw < K; i++)
                xv[i] = vload(w, at(w, xrow[r], ci(w, i * vw)), (int)(K - i * vw < vw ? K - i * vw : vw));
            for (int t = 0; t < steps; t++)
                for (int v = 0; v < nv; v++) {
                    LLVMValueRef xs = LLVMBuildShuffleVector(w->e.b, xv[0], xv[1],
                                                             shuffle_mask(w, &lidx[t][v * vw], lanes[v]), "lanes");
                    out[r][v] = vmuladd(w, out[r][v], xs, const_vec(w, &wsteps[t][v * vw], lanes[v]));
                }
        }
    } else {
        /* Fast mode may reassociate: the sum over k runs in FAST_SPLIT chains
         * (k mod FAST_SPLIT) added pairwise at the end, so the FMA latency of
         * one long chain no longer bounds a small layer. */
        int split = w->e.fast && K >= 2 * FAST_SPLIT ? FAST_SPLIT : 1;
        LLVMValueRef part[FAST_SPLIT][SMALL_ROWS][MK_MAX_VECS];
        for (int i = 0; i < split; i++)
            for (int r = 0; r < rows; r++)
                for (int v = 0; v < nv; v++) part[i][r][v] = out[r][v];
        for (int64_t k = 0; k < K; k++) {
            LLVMValueRef wv[MK_MAX_VECS];
            int i = (int)(k % split);
            for (int v = 0; v < nv; v++) wv[v] = vload(w, at(w, Wp, ci(w, woff[v] + k * wstride[v])), lanes[v]);
            for (int r = 0; r < rows; r++) {
                LLVMValueRef xb = vsplat(w, load(w, xrow[r], ci(w, k)));
                for (int v = 0; v < nv; v++) part[i][r][v] = vmuladd(w, part[i][r][v], xb, wv[v]);
            }
        }
        for (int r = 0; r < rows; r++)
            for (int v = 0; v < nv; v++) {
                for (int width = 1; width < split; width *= 2)
                    for (int i = 0; i + width < split; i += 2 * width)
                        /* no fast-math flags here: with them LLVM folds the
                         * chains back into one */
                        part[i][r][v] = LLVMBuildFAdd(w->e.b, part[i][r][v], part[i + width][r][v], "");
                out[r][v] = part[0][r][v];
            }
    }
    for (int v = 0; v < nv; v++) {
        LLVMValueRef bv = bias ? vload(w, at(w, bias, ci(w, (int64_t)v * vw)), lanes[v]) : NULL;
        for (int r = 0; r < rows; r++) {
            if (bv) out[r][v] = fadd(w, out[r][v], bv);
            out[r][v] = emit_act_vec(w, act, out[r][v], lanes[v]);
        }
    }
}

/* Rows in groups of SMALL_ROWS, all of them in flight together (the exact
 * sums are latency-bound chains; independent rows hide each other's
 * latency). The last group clamps its row indices to M-1: the extra rows
 * recompute and rewrite the last row with the same values, so one body of
 * code serves every batch. */
static void emit_small_chain(lw *w, const int32_t *ids, int n_ids) {
    const mj_graph *g = w->p->g;
    const mj_node *first = &g->nodes[ids[0]], *lastn = &g->nodes[ids[n_ids - 1]];
    const mj_type *xt = &g->nodes[first->operands[0]].type;
    int64_t K0 = g->nodes[first->operands[1]].type.dims[1];
    int64_t NL = g->nodes[lastn->operands[1]].type.dims[0];
    LLVMValueRef M = dims_product(w, xt, 0, xt->rank - 1);
    LLVMValueRef x = w->buf[first->operands[0]], y = w->buf[ids[n_ids - 1]];
    int vw = w->p->vw, nvl = (int)((NL + vw - 1) / vw);
    LLVMValueRef groups = LLVMBuildSDiv(w->e.b, add(w, M, ci(w, SMALL_ROWS - 1)), ci(w, SMALL_ROWS), "");
    LLVMValueRef maxrow = LLVMBuildSub(w->e.b, M, ci(w, 1), "");
    loop l = loop_begin(w, groups);
    LLVMValueRef i0 = mul(w, l.iv, ci(w, SMALL_ROWS));
    LLVMValueRef row[SMALL_ROWS], xrow[SMALL_ROWS];
    for (int r = 0; r < SMALL_ROWS; r++) {
        LLVMValueRef i = add(w, i0, ci(w, r));
        row[r] = LLVMBuildSelect(w->e.b, LLVMBuildICmp(w->e.b, LLVMIntSLT, i, M, ""), i, maxrow, "");
        xrow[r] = at(w, x, mul(w, row[r], ci(w, K0)));
    }
    LLVMValueRef a[SMALL_ROWS][MK_MAX_VECS] = {{0}};
    for (int t = 0; t < n_ids; t++) {
        small_layer(w, ids[t], SMALL_ROWS, xrow, a);
        /* Each layer's rows go to its slice (the last one's is y) and the
         * next layer broadcasts from there: broadcast loads run on the load
         * ports, register shuffles would compete with the multiplies. */
        const mj_node *n = &g->nodes[ids[t]];
        int64_t N = g->nodes[n->operands[1]].type.dims[0];
        int nv = (int)((N + vw - 1) / vw);
        for (int r = 0; r < SMALL_ROWS; r++) {
            LLVMValueRef orow = at(w, t == n_ids - 1 ? y : w->buf[ids[t]], mul(w, row[r], ci(w, N)));
            for (int v = 0; v < nv; v++)
                vstore(w, a[r][v], at(w, orow, ci(w, (int64_t)v * vw)),
                       (int)(N - (int64_t)v * vw < vw ? N - (int64_t)v * vw : vw));
            xrow[r] = orow;
        }
    }
    (void)nvl;
    loop_end(w, &l);
}

/* Does node i go through emit_gemm (and so split its columns in column
 * mode)? The same conditions as emit_linear, after small chains and sparse
 * layers have taken theirs. */
bool mj_body_splits_columns(const mj_body_plan *p, int32_t i) {
    const mj_node *n = &p->g->nodes[i];
    if ((n->op != MJ_OP_LINEAR && n->op != MJ_OP_LINEAR_ACT) || small_linear(p, i) || p->sparse[i]) return false;
    const mj_type *wt = &p->g->nodes[n->operands[1]].type;
    return p->input_free[n->operands[1]] && wt->dims[0] >= 1 && wt->dims[1] >= 1;
}

static bool is_output(const mj_body_plan *p, int32_t id) {
    for (int32_t j = 0; j < p->n_out; j++)
        if (p->out_nodes[j] == id) return true;
    return false;
}

/* if (tid == 0) { ... } (if_end closes it) */
static LLVMBasicBlockRef if_first_thread(lw *w) {
    return if_begin(w, LLVMBuildICmp(w->e.b, LLVMIntEQ, w->tid, ci(w, 0), ""));
}

/* if (nth > 1) sync->wait(sync, y, scratch): y is the output, or with
 * several the array of their pointers */
static void emit_barrier(lw *w) {
    LLVMBasicBlockRef end = if_begin(w, LLVMBuildICmp(w->e.b, LLVMIntSGT, w->nth, ci(w, 1), ""));
    LLVMValueRef fp = LLVMBuildLoad2(w->e.b, w->e.ptr, w->sync, "wait");
    LLVMTypeRef pt[3] = {w->e.ptr, w->e.ptr, w->e.ptr};
    LLVMValueRef args[3] = {w->sync, w->y_sync, w->scratch};
    LLVMBuildCall2(w->e.b, LLVMFunctionType(LLVMVoidTypeInContext(w->e.ctx), pt, 3, 0), fp, args, 3, "");
    if_end(w, end);
}

/* Pointer to leaf i: a baked constant (frozen) or leaves[i] (live). */
static LLVMValueRef leaf_ptr(lw *w, int32_t i) {
    if (w->o->baked) {
        const mj_leaf *lf = &w->p->leaves[i];
        char name[64];
        snprintf(name, sizeof name, "%s.leaf%d%s", w->o->fname, (int)i, lf->packed ? ".t" : "");
        int64_t bytes = w->o->baked_numel[i] * (int64_t)sizeof(float);
        return mj_llvm_const_bytes(w->e.m, w->e.ctx, name, w->o->baked[i], (size_t)bytes);
    }
    LLVMValueRef idx = ci(w, i);
    LLVMValueRef slot = LLVMBuildInBoundsGEP2(w->e.b, w->e.ptr, w->leaves, &idx, 1, "");
    LLVMValueRef v = LLVMBuildLoad2(w->e.b, w->e.ptr, slot, "leaf");
    return v;
}

mj_op mj_test_fault_op(void) {
    const char *e = getenv("MASKJIT_TEST_FAULT");
    return e && *e ? mj_op_from_name(e, strlen(e)) : MJ_OP_COUNT;
}

/* The fault of mj_test_fault_op: node i's value + 0.5, element by element. */
static void emit_fault(lw *w, int32_t i) {
    const mj_type *t = &w->p->g->nodes[i].type;
    loop l = loop_begin(w, dims_product(w, t, 0, t->rank));
    store(w, LLVMBuildFAdd(w->e.b, load(w, w->buf[i], l.iv), cf(w, 0.5f), ""), w->buf[i], l.iv);
    loop_end(w, &l);
}

mj_status mj_lower_body(LLVMContextRef ctx, LLVMModuleRef m, const mj_body_plan *p,
                        const mj_lower_options *o) {
    const mj_op fault = mj_test_fault_op();
    const mj_graph *g = p->g;
    lw w = {.p = p, .o = o};
    mj_emit_init(&w.e, m, o->numeric == MJ_NUMERIC_FAST, p->vw, false);
    MJ_ASSERT(w.e.ctx == ctx);
    /* the inner function: (leaves, x_0..x_{n_in-1}, y_0..y_{n_out-1}, batch,
     * scratch, tid, nth, sync) */
    int n_args = 6 + p->n_in + p->n_out, ai = 0;
    LLVMTypeRef *params = mj_alloc_array((size_t)n_args, sizeof *params);
    w.x = mj_alloc_array((size_t)p->n_in + 1, sizeof *w.x);
    w.y = mj_alloc_array((size_t)p->n_out + 1, sizeof *w.y);
    if (!params || !w.x || !w.y) {
        free(params);
        free(w.x);
        free(w.y);
        return MJ_ERR_NOMEM;
    }
    for (int i = 0; i < n_args; i++) params[i] = w.e.ptr;
    params[1 + p->n_in + p->n_out] = params[3 + p->n_in + p->n_out] = params[4 + p->n_in + p->n_out] = w.e.i64;
    char iname[96];
    snprintf(iname, sizeof iname, "%s.inner", o->fname);
    LLVMTypeRef fty = LLVMFunctionType(LLVMVoidTypeInContext(ctx), params, (unsigned)n_args, 0);
    w.e.fn = LLVMAddFunction(m, iname, fty);
    LLVMSetLinkage(w.e.fn, LLVMInternalLinkage);
    /* the activations' libm functions, declared first as they always were */
    libm(&w, "erff", 1);
    libm(&w, "expf", 1);
    libm(&w, "tanhf", 1);
    /* The outputs and scratch are written only through themselves; inputs
     * and the leaves are read only. The caller guarantees that no output
     * overlaps an input or another output. */
    unsigned noalias = LLVMGetEnumAttributeKindForName("noalias", 7);
    for (int j = 0; j < p->n_out; j++)
        LLVMAddAttributeAtIndex(w.e.fn, (unsigned)(2 + p->n_in + j), LLVMCreateEnumAttribute(ctx, noalias, 0));
    LLVMAddAttributeAtIndex(w.e.fn, (unsigned)(3 + p->n_in + p->n_out), LLVMCreateEnumAttribute(ctx, noalias, 0));
    unsigned nounwind = LLVMGetEnumAttributeKindForName("nounwind", 8);
    LLVMAddAttributeAtIndex(w.e.fn, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(ctx, nounwind, 0));
    /* inlined into the entry point (noalias becomes scoped metadata) */
    unsigned inl = LLVMGetEnumAttributeKindForName("alwaysinline", 12);
    LLVMAddAttributeAtIndex(w.e.fn, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(ctx, inl, 0));

    w.leaves = LLVMGetParam(w.e.fn, (unsigned)ai++);
    for (int i = 0; i < p->n_in; i++) w.x[i] = LLVMGetParam(w.e.fn, (unsigned)ai++);
    for (int j = 0; j < p->n_out; j++) w.y[j] = LLVMGetParam(w.e.fn, (unsigned)ai++);
    w.batch = LLVMGetParam(w.e.fn, (unsigned)ai++);
    w.scratch = LLVMGetParam(w.e.fn, (unsigned)ai++);
    w.tid = LLVMGetParam(w.e.fn, (unsigned)ai++);
    w.nth = LLVMGetParam(w.e.fn, (unsigned)ai++);
    w.sync = LLVMGetParam(w.e.fn, (unsigned)ai++);
    w.e.b = LLVMCreateBuilderInContext(ctx);

    /* the entry point: load the pointers, call the inner function */
    {
        LLVMTypeRef opt[8] = {w.e.ptr, w.e.ptr, w.e.ptr, w.e.i64, w.e.ptr, w.e.i64, w.e.i64, w.e.ptr};
        LLVMValueRef outer = LLVMAddFunction(m, o->fname, LLVMFunctionType(LLVMVoidTypeInContext(ctx), opt, 8, 0));
        LLVMAddAttributeAtIndex(outer, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(ctx, nounwind, 0));
        LLVMPositionBuilderAtEnd(w.e.b, LLVMAppendBasicBlockInContext(ctx, outer, "entry"));
        LLVMValueRef *args = mj_alloc_array((size_t)n_args, sizeof *args);
        if (!args) {
            LLVMDisposeBuilder(w.e.b);
            free(params);
            free(w.x);
            free(w.y);
            return MJ_ERR_NOMEM;
        }
        int k = 0;
        args[k++] = LLVMGetParam(outer, 0);
        for (int side = 0; side < 2; side++) {
            int cnt = side == 0 ? p->n_in : p->n_out;
            for (int i = 0; i < cnt; i++) {
                LLVMValueRef idx = LLVMConstInt(w.e.i64, (unsigned long long)i, 0);
                LLVMValueRef slot = LLVMBuildInBoundsGEP2(w.e.b, w.e.ptr, LLVMGetParam(outer, (unsigned)(1 + side)), &idx, 1, "");
                args[k++] = LLVMBuildLoad2(w.e.b, w.e.ptr, slot, side == 0 ? "x" : "y");
            }
        }
        for (unsigned i = 3; i < 8; i++) args[k++] = LLVMGetParam(outer, i);
        LLVMBuildCall2(w.e.b, fty, w.e.fn, args, (unsigned)n_args, "");
        LLVMBuildRetVoid(w.e.b);
        free(args);
    }
    free(params);
    LLVMPositionBuilderAtEnd(w.e.b, LLVMAppendBasicBlockInContext(ctx, w.e.fn, "entry"));
    if (p->n_out == 1) {
        w.y_sync = w.y[0];
    } else { /* the barrier gets every output pointer (see emit_barrier) */
        LLVMTypeRef arr = LLVMArrayType2(w.e.ptr, (uint64_t)p->n_out);
        w.y_sync = LLVMBuildAlloca(w.e.b, arr, "ys");
        for (int j = 0; j < p->n_out; j++) {
            LLVMValueRef idx = LLVMConstInt(w.e.i64, (unsigned long long)j, 0);
            LLVMBuildStore(w.e.b, w.y[j], LLVMBuildInBoundsGEP2(w.e.b, w.e.ptr, w.y_sync, &idx, 1, ""));
        }
    }

    /* buf[0 .. n_nodes) per node; buf[n_nodes + 1 + i] packed leaf i */
    w.buf = mj_alloc_array((size_t)g->n_nodes + 2 + (size_t)p->n_leaves, sizeof *w.buf);
    if (!w.buf) {
        LLVMDisposeBuilder(w.e.b);
        free(w.x);
        free(w.y);
        return MJ_ERR_NOMEM;
    }
    for (int32_t i = 0; i < p->n_in; i++) w.buf[p->in_nodes[i]] = w.x[i];
    for (int32_t i = 0; i < p->n_leaves; i++) {
        LLVMValueRef ptr = leaf_ptr(&w, i);
        if (p->leaves[i].packed) w.buf[(size_t)g->n_nodes + 1 + (size_t)i] = ptr;
        else w.buf[p->leaves[i].node] = ptr;
    }
    /* scratch slices, offsets computed from the batch as in mj_body_scratch_floats */
    LLVMValueRef off = ci(&w, 0);
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (n->op == MJ_OP_INPUT) continue;
        else if (p->root_of[i] >= 0) w.buf[i] = w.y[p->root_of[i]];
        else if (p->has_slot[i]) {
            w.buf[i] = at(&w, w.scratch, off);
            LLVMValueRef sz = dims_product(&w, &n->type, 0, n->type.rank);
            off = add(&w, off, LLVMBuildAnd(w.e.b, add(&w, sz, ci(&w, 15)), ci(&w, ~INT64_C(15)), ""));
        }
    }
    LLVMValueRef sparse_scratch = at(&w, w.scratch, off);
    /* users per node, to find chains of small layers */
    int32_t *users = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *users);
    int32_t *chain = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *chain);
    bool *done = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *done);
    mj_status s = users && chain && done ? MJ_OK : MJ_ERR_NOMEM;
    for (int32_t i = 0; i < g->n_nodes && s == MJ_OK; i++)
        if (!p->input_free[i])
            for (int k = 0; k < g->nodes[i].n_operands; k++) users[g->nodes[i].operands[k]]++;
    for (int32_t j = 0; j < p->n_out && s == MJ_OK; j++) users[p->out_nodes[j]]++;
    for (int32_t i = 0; i < g->n_nodes && s == MJ_OK; i++) {
        const mj_node *n = &g->nodes[i];
        if (p->input_free[i] || n->op == MJ_OP_INPUT || done[i]) continue;
        if (n->op == MJ_OP_RESHAPE) { /* an alias: no code */
            w.buf[i] = w.buf[n->operands[0]];
            continue;
        }
        /* column mode: packed linear layers split their columns, anything
         * else runs on thread 0; everyone meets after each op */
        LLVMBasicBlockRef first_only = NULL;
        if (!mj_body_splits_columns(p, i)) first_only = if_first_thread(&w);
        if (small_linear(p, i)) {
            int nc = 0;
            chain[nc++] = i;
            for (;;) { /* extend while the last layer's one user is a small layer reading it as x */
                int32_t last = chain[nc - 1], next = -1;
                if (users[last] != 1 || p->root_of[last] >= 0 || is_output(p, last)) break;
                for (int32_t u = last + 1; u < g->n_nodes && next < 0; u++)
                    for (int k = 0; k < g->nodes[u].n_operands; k++)
                        if (g->nodes[u].operands[k] == last && !p->input_free[u]) next = k == 0 ? u : INT32_MAX;
                if (next < 0 || next == INT32_MAX || !small_linear(p, next)) break;
                chain[nc++] = next;
            }
            for (int c = 0; c < nc; c++) done[chain[c]] = true;
            emit_small_chain(&w, chain, nc);
            if_end(&w, first_only);
            emit_barrier(&w);
            continue;
        }
        if (p->sparse[i]) {
            const mj_node *wn = &g->nodes[n->operands[1]];
            const float *bd = n->n_operands == 3 ? g->nodes[n->operands[2]].tensor->data : NULL;
            char name[96];
            snprintf(name, sizeof name, "%s.sparse%d", o->fname, (int)i);
            LLVMValueRef sf = mj_sparse_emit_linear(m, name, wn->tensor->data, bd, wn->type.dims[0], wn->type.dims[1],
                                                    n->op == MJ_OP_LINEAR_ACT ? n->act : MJ_ACT_NONE, w.e.fast,
                                                    p->vw);
            if (!sf) {
                s = MJ_ERR_NOMEM;
                break;
            }
            const mj_type *xt = &g->nodes[n->operands[0]].type;
            LLVMTypeRef spt[4] = {w.e.ptr, w.e.ptr, w.e.i64, w.e.ptr};
            LLVMValueRef args[4] = {w.buf[n->operands[0]], w.buf[i], dims_product(&w, xt, 0, xt->rank - 1),
                                    sparse_scratch};
            LLVMBuildCall2(w.e.b, LLVMFunctionType(LLVMVoidTypeInContext(ctx), spt, 4, 0), sf, args, 4, "");
            if_end(&w, first_only);
            emit_barrier(&w);
            continue;
        }
        switch (n->op) {
        case MJ_OP_MATMUL: emit_matmul(&w, i); break;
        case MJ_OP_LINEAR:
        case MJ_OP_LINEAR_ACT: emit_linear(&w, i); break;
        case MJ_OP_EXPAND: emit_expand(&w, i); break;
        case MJ_OP_TRANSPOSE:
        case MJ_OP_PERMUTE: emit_permute(&w, i); break;
        case MJ_OP_SLICE: emit_slice(&w, i); break;
        case MJ_OP_CAT: emit_cat(&w, i); break;
        case MJ_OP_SUM:
        case MJ_OP_MEAN:
        case MJ_OP_SOFTMAX:
        case MJ_OP_LOG_SOFTMAX: emit_along(&w, i); break;
        case MJ_OP_LAYER_NORM: emit_layer_norm(&w, i); break;
        MJ_CASE_BINARY_OPS:
        MJ_CASE_UNARY_MATH_OPS:
        MJ_CASE_ACT_OPS: emit_elementwise(&w, i); break;
        MJ_CASE_CNN_OPS: {
            w.loops = true;
            char prefix[96];
            snprintf(prefix, sizeof prefix, "%s.cnn%d", o->fname, (int)i);
            mj_cnn_lowering cl = {.e = &w.e, .g = g, .id = i, .y = w.buf[i], .batch = w.batch, .prefix = prefix};
            for (int k = 0; k < n->n_operands; k++) cl.ops[k] = w.buf[n->operands[k]];
            int32_t wl = n->op == MJ_OP_CONV2D ? p->leaf_plain[n->operands[1]] : -1;
            if (o->baked && wl >= 0) cl.conv_weight = o->baked[wl]; /* frozen: the mask is known */
            s = mj_lower_cnn(&cl);
            break;
        }
        /* leaves and aliases never get here (skipped above) */
        MJ_CASE_LEAF_OPS:
        case MJ_OP_RESHAPE:
            s = mj_fail(MJ_ERR_UNSUPPORTED, "jit: no lowering for op %s", mj_op_table[n->op].name);
            break;
        case MJ_OP_COUNT: MJ_ASSERT(!"not an op (the graph is verified)");
        }
        if (s == MJ_OK && n->op == fault) emit_fault(&w, i);
        if (first_only) if_end(&w, first_only);
        emit_barrier(&w);
    }
    for (int32_t j = 0; j < p->n_out && s == MJ_OK; j++) {
        if (p->out_root[j] >= 0) continue;
        /* an input, a leaf, an alias of one, or a value another output writes */
        const mj_type *t = &g->nodes[p->out_nodes[j]].type;
        LLVMBasicBlockRef first_only = if_first_thread(&w);
        emit_copy(&w, w.y[j], w.buf[p->out_nodes[j]], dims_product(&w, t, 0, t->rank));
        if_end(&w, first_only);
    }
    if (s == MJ_OK) LLVMBuildRetVoid(w.e.b);
    if (s == MJ_OK && !w.loops)
        LLVMAddModuleFlag(m, LLVMModuleFlagBehaviorOverride, MJ_FLAG_EXPLICIT, strlen(MJ_FLAG_EXPLICIT),
                          LLVMValueAsMetadata(LLVMConstInt(LLVMInt32TypeInContext(ctx), 1, 0)));
    LLVMDisposeBuilder(w.e.b);
    free(w.buf);
    free(w.x);
    free(w.y);
    free(users);
    free(chain);
    free(done);
    if (s != MJ_OK) return s;
    char *msg = NULL;
    if (LLVMVerifyModule(m, LLVMReturnStatusAction, &msg)) {
        s = mj_fail(MJ_ERR_BACKEND, "jit: the generated LLVM IR is invalid: %s", msg ? msg : "");
    }
    LLVMDisposeMessage(msg);
    return s;
}
