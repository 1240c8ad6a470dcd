/* Lowering of linear and matmul: the scalar dot loops, and for linear layers
 * with a packed prologue weight the register-tiled vector micro-kernels. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "lower.h"

/* y[j] = act(y[j] + b[j]) + r[j], each part where given: the epilogue of
 * mj_linear's order, shared by both loop orders of emit_dot. */
static void dot_epilogue(lw *w, LLVMValueRef yrow, LLVMValueRef j, LLVMValueRef bias, mj_act act,
                         LLVMValueRef rrow) {
    LLVMValueRef v = load(w, yrow, j);
    if (bias) v = fadd(w, v, load(w, bias, j));
    v = emit_act(w, act, v);
    if (rrow) v = fadd(w, v, load(w, rrow, j));
    store(w, v, yrow, j);
}

/* y[M,N] = x[M,K] . W  with W[k][j] at W + k*wsk + j*wsj; then + b[j], then
 * act, then + res[i][j] (res NULL: none). Each y element: +0.0f, then y = fmaf(x, w, y) for k ascending (vmuladd),
 * then + b: the order of mj_linear / mj_matmul (batched: per matrix). With a contiguous j (wsj == 1) the loops
 * run i, k, j with the output row as accumulator; otherwise i, j, k. */
static void emit_dot(lw *w, LLVMValueRef y, LLVMValueRef x, LLVMValueRef W, LLVMValueRef M,
                     LLVMValueRef K, LLVMValueRef N, LLVMValueRef wsk, LLVMValueRef wsj, bool j_contig,
                     LLVMValueRef bias, mj_act act, LLVMValueRef res) {
    w->loops = true;
    loop li = loop_begin(w, M);
    LLVMValueRef yrow = at(w, y, mul(w, li.iv, N));
    LLVMValueRef rrow = res ? at(w, res, mul(w, li.iv, N)) : NULL;
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
        if (bias || act != MJ_ACT_NONE || res) {
            lj = loop_begin(w, N);
            dot_epilogue(w, yrow, lj.iv, bias, act, rrow);
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
        dot_epilogue(w, yrow, lj.iv, bias, act, rrow);
        loop_end(w, &lj);
    }
    loop_end(w, &li);
}

/* A matmul's tail in its epilogue (lower_plan.c): y = acc / *dv (dv not
 * NULL), then + the row at bias; faults: the test-only +0.5 after the
 * matmul (MK_FAULT_MM), the division, the add. */
enum { MK_FAULT_MM = 1, MK_FAULT_DIV = 2, MK_FAULT_ADD = 4 };

/* x's rows are xs floats apart; a matmul's b (plain) has rows ldb floats
 * apart, or with btrans its columns (b[k][n] at n*ldb + k). */
typedef struct gemm_layout {
    int64_t xs, ldb, ys; /* ys: y's rows (a matmul storing into a permute's layout) */
    bool btrans;
} gemm_layout;

static void emit_gemm(lw *w, LLVMValueRef y, LLVMValueRef x, LLVMValueRef W, bool plain, bool split,
                      LLVMValueRef M, int64_t K, int64_t N, LLVMValueRef bias, mj_act act, LLVMValueRef res,
                      LLVMValueRef dv, int faults, gemm_layout lay);

void mj_lw_emit_linear(lw *w, int32_t id) {
    const mj_graph *g = w->p->g;
    const mj_node *n = &g->nodes[id];
    const mj_type *xt = &g->nodes[n->operands[0]].type, *wt = &g->nodes[n->operands[1]].type;
    LLVMValueRef K = dimv(w, wt->dims[1]), N = dimv(w, wt->dims[0]);
    LLVMValueRef M = dims_product(w, xt, 0, xt->rank - 1);
    LLVMValueRef bias = MJ_LINEAR_BIAS(n) >= 0 ? w->buf[MJ_LINEAR_BIAS(n)] : NULL;
    LLVMValueRef res = MJ_LINEAR_RES(n) >= 0 ? w->buf[MJ_LINEAR_RES(n)] : NULL;
    mj_act act = MJ_LINEAR_ACT(n);
    /* a prologue weight is read from its packed [in][out] leaf */
    LLVMValueRef Wp = NULL;
    if (w->p->input_free[n->operands[1]]) {
        int32_t packed = w->p->leaf_packed[n->operands[1]];
        MJ_ASSERT(packed >= 0);
        Wp = w->buf[(size_t)g->n_nodes + 1 + (size_t)packed];
    }
    if (Wp && wt->dims[0] >= 1 && wt->dims[1] >= 1)
        emit_gemm(w, w->buf[id], w->buf[n->operands[0]], Wp, false, true, M, wt->dims[1], wt->dims[0], bias, act,
                  res, NULL, 0, (gemm_layout){.xs = wt->dims[1], .ys = wt->dims[0]});
    else if (Wp)
        emit_dot(w, w->buf[id], w->buf[n->operands[0]], Wp, M, K, N, N, ci(w, 1), true, bias, act, res);
    else /* a weight computed from the input: read it in place, [out][in] */
        emit_dot(w, w->buf[id], w->buf[n->operands[0]], w->buf[n->operands[1]], M, K, N, ci(w, 1), K, false,
                 bias, act, res);
}

/* A matmul's work outside its loop over matrices: the per-dim strides and
 * its tail (matmul_setup), then per matrix (matmul_one). */
typedef struct mm_setup {
    int32_t id, row; /* row: the tail's added row, or -1 */
    int nb, faults;
    int64_t Kd, Nd;
    LLVMValueRef M, K, N, count, dv;
    LLVMValueRef sa[2], sb[2], sy[2], sr[2]; /* per output batch dim (0 where broadcast) */
    LLVMValueRef abuf, bbuf;                 /* a's and b's storage (a view's: its base's) */
    gemm_layout lay;
} mm_setup;

/* st[d]: the stride of dim d in a row-major buffer of t; cs[d] the same as
 * a constant (-1 where it depends on the batch). */
static void row_major(lw *w, const mj_type *t, LLVMValueRef *st, int64_t *cs) {
    LLVMValueRef s = ci(w, 1);
    int64_t c = 1;
    for (int d = t->rank - 1; d >= 0; d--) {
        st[d] = s;
        cs[d] = c;
        s = mul(w, s, dimv(w, t->dims[d]));
        c = c < 0 || t->dims[d] < 0 ? -1 : c * t->dims[d];
    }
}

/* Where operand v lives: its storage, or for a view (lower_plan.c's
 * plan_views) its base's; st[d] and cs[d] the stride of v's dim d there. */
static LLVMValueRef operand_layout(lw *w, int32_t v, LLVMValueRef *st, int64_t *cs) {
    const mj_body_plan *p = w->p;
    int32_t base = p->view_base[v] >= 0 ? p->view_base[v] : v;
    const mj_type *t = &p->g->nodes[v].type, *bt = &p->g->nodes[base].type;
    LLVMValueRef bs[MJ_MAX_RANK];
    int64_t bc[MJ_MAX_RANK];
    row_major(w, bt, bs, bc);
    for (int d = 0; d < t->rank; d++) {
        int e = p->view_base[v] >= 0 ? p->view_dim[(size_t)v * MJ_MAX_RANK + d] : d;
        st[d] = bs[e];
        cs[d] = bc[e];
    }
    return w->buf[base];
}

static void matmul_setup(lw *w, int32_t id, mm_setup *m) {
    const mj_graph *g = w->p->g;
    const mj_node *n = &g->nodes[id];
    const mj_type *ta = &g->nodes[n->operands[0]].type, *tb = &g->nodes[n->operands[1]].type, *to = &n->type;
    *m = (mm_setup){.id = id, .row = -1, .nb = to->rank - 2};
    m->Kd = ta->dims[ta->rank - 1], m->Nd = tb->dims[tb->rank - 1];
    m->M = dimv(w, ta->dims[ta->rank - 2]), m->K = dimv(w, m->Kd), m->N = dimv(w, m->Nd);
    int nb = m->nb;
    /* per output batch dim: strides of a and b (0 where broadcast) */
    LLVMValueRef sta[MJ_MAX_RANK], stb[MJ_MAX_RANK];
    int64_t ca[MJ_MAX_RANK], cb[MJ_MAX_RANK];
    m->abuf = operand_layout(w, n->operands[0], sta, ca);
    m->bbuf = operand_layout(w, n->operands[1], stb, cb);
    for (int d = nb - 1; d >= 0; d--) {
        int da = d - (nb - (ta->rank - 2)), db = d - (nb - (tb->rank - 2));
        m->sa[d] = da >= 0 && ta->dims[da] == to->dims[d] ? sta[da] : ci(w, 0);
        m->sb[d] = db >= 0 && tb->dims[db] == to->dims[d] ? stb[db] : ci(w, 0);
    }
    /* a's rows, b's rows or columns (plan_views checked them) */
    m->lay.xs = ca[ta->rank - 2];
    m->lay.btrans = cb[tb->rank - 1] != 1;
    m->lay.ldb = m->lay.btrans ? cb[tb->rank - 1] : cb[tb->rank - 2];
    /* The tail the epilogue computes (lower_plan.c's plan_matmul_tail): the
     * divisor, and the row added, with its strides per output batch dim (0
     * where broadcast) */
    int32_t cur = id;
    m->faults = n->op == w->o->fault && w->p->tail_out[id] != id ? MK_FAULT_MM : 0;
    LLVMValueRef sty[MJ_MAX_RANK];
    int64_t cy[MJ_MAX_RANK];
    row_major(w, to, sty, cy);
    for (int32_t j = id + 1; j < g->n_nodes; j++) {
        if (w->p->fused_by[j] != id) continue;
        const mj_node *t = &g->nodes[j];
        if (t->op == MJ_OP_DIV) {
            m->dv = w->buf[t->operands[1]];
            m->faults |= t->op == w->o->fault ? MK_FAULT_DIV : 0;
        } else if (t->op == MJ_OP_PERMUTE || t->op == MJ_OP_TRANSPOSE) {
            /* the store puts each row where the permute would (its last dim stays last) */
            LLVMValueRef bs[MJ_MAX_RANK];
            int64_t bc[MJ_MAX_RANK];
            int perm[MJ_MAX_RANK];
            row_major(w, &t->type, bs, bc);
            mj_node_perm(t, perm);
            for (int d = 0; d < t->type.rank; d++) {
                sty[perm[d]] = bs[d];
                cy[perm[d]] = bc[d];
            }
        } else {
            MJ_ASSERT(t->op == MJ_OP_ADD);
            m->row = t->operands[0] == cur ? t->operands[1] : t->operands[0];
            m->faults |= t->op == w->o->fault ? MK_FAULT_ADD : 0;
        }
        cur = j;
    }
    MJ_ASSERT(cur == w->p->tail_out[id]);
    for (int d = 0; d < nb; d++) m->sy[d] = sty[d];
    m->lay.ys = cy[to->rank - 2]; /* known on the kernels (their N is): -1 where the batch is N */
    MJ_ASSERT(!mj_body_matmul_on_kernels(g, id) || (m->lay.ys > 0 && cy[to->rank - 1] == 1));
    if (m->row >= 0) {
        const mj_type *tr = &g->nodes[m->row].type;
        LLVMValueRef er = ci(w, 1), st[MJ_MAX_RANK];
        for (int d = tr->rank - 1; d >= 0; d--) {
            st[d] = er;
            er = mul(w, er, dimv(w, tr->dims[d]));
        }
        for (int d = 0; d < nb; d++) {
            int dr = d - (to->rank - tr->rank);
            m->sr[d] = dr >= 0 && tr->dims[dr] != 1 ? st[dr] : ci(w, 0);
        }
    }
    m->count = ci(w, 1);
    for (int d = 0; d < nb; d++) m->count = mul(w, m->count, dimv(w, to->dims[d]));
}

/* Matrix f of the batch; returns where its output (the tail's last value)
 * starts. */
static LLVMValueRef matmul_one(lw *w, const mm_setup *m, LLVMValueRef f) {
    const mj_graph *g = w->p->g;
    const mj_node *n = &g->nodes[m->id];
    LLVMValueRef oa = ci(w, 0), ob = ci(w, 0), oy = ci(w, 0), orow = ci(w, 0);
    for (int d = m->nb - 1; d >= 0; d--) { /* f's index along output batch dim d */
        LLVMValueRef dim = dimv(w, n->type.dims[d]);
        LLVMValueRef i = LLVMBuildSRem(w->e.b, f, dim, "");
        f = LLVMBuildSDiv(w->e.b, f, dim, "");
        oa = add(w, oa, mul(w, i, m->sa[d]));
        ob = add(w, ob, mul(w, i, m->sb[d]));
        oy = add(w, oy, mul(w, i, m->sy[d]));
        if (m->row >= 0) orow = add(w, orow, mul(w, i, m->sr[d]));
    }
    LLVMValueRef y = at(w, w->buf[w->p->tail_out[m->id]], oy), a = at(w, m->abuf, oa);
    LLVMValueRef b = at(w, m->bbuf, ob);
    if (mj_body_matmul_on_kernels(g, m->id)) { /* each matrix on one thread: no column split */
        LLVMValueRef rowp = m->row >= 0 ? at(w, w->buf[m->row], orow) : NULL;
        emit_gemm(w, y, a, b, true, false, m->M, m->Kd, m->Nd, rowp, MJ_ACT_NONE, NULL, m->dv, m->faults, m->lay);
    } else {
        MJ_ASSERT(w->p->tail_out[m->id] == m->id);
        MJ_ASSERT(w->p->view_base[n->operands[0]] < 0 && w->p->view_base[n->operands[1]] < 0);
        emit_dot(w, y, a, b, m->M, m->K, m->N, m->N, ci(w, 1), true, NULL, MJ_ACT_NONE, NULL);
    }
    return y;
}

/* matmul a[..., M, K] @ b[..., K, N]: per matrix of the (broadcast) batch
 * dims, each element +0.0f then + a*b for k ascending, as mj_matmul. With K
 * and N known the register-tiled micro-kernels read b's rows as panels (the
 * attention's QK^T and PV: a loop with the output row in memory ran them at
 * a third of the kernels' rate); otherwise emit_dot's i, k, j order. */
void mj_lw_emit_matmul(lw *w, int32_t id) {
    w->loops = true;
    mm_setup m;
    matmul_setup(w, id, &m);
    /* The matrices of the batch as one range; in column mode the threads
     * claim them one at a time (attention's heads), each matrix whole: the
     * same bits as one thread. */
    LLVMValueRef f;
    mj_claim_loop lm = mj_emit_claim_begin(&w->e, &w->team, m.count, &f, true);
    matmul_one(w, &m, f);
    mj_emit_claim_end(&w->e, &lm);
}

/* Attention's scores and their use, one matrix at a time (lower_plan.c's
 * plan_attention): per matrix f, matmul id (and its tail), the softmax of
 * its rows, then the matmul of those rows. Each is the op's own code on
 * the matrix, so the bits are those of the ops one after another; a
 * matrix's scores are still in the cache when the softmax and the second
 * matmul read them (BERT-base at batch 8: 6 MiB of scores, which went to
 * memory and back twice). */
void mj_lw_emit_attention(lw *w, int32_t id) {
    w->loops = true;
    const mj_graph *g = w->p->g;
    int32_t pv = w->p->attn_pv[id], sm = g->nodes[pv].operands[0];
    mm_setup m1, m2;
    matmul_setup(w, id, &m1);
    matmul_setup(w, pv, &m2);
    mj_op fault = w->o->fault;
    LLVMValueRef mn = mul(w, m1.M, m1.N), f;
    mj_claim_loop lm = mj_emit_claim_begin(&w->e, &w->team, m1.count, &f, true);
    LLVMValueRef scores = matmul_one(w, &m1, f);
    if (fault == MJ_OP_MATMUL && w->p->tail_out[id] == id) mj_lw_emit_fault_range(w, scores, mn);
    LLVMValueRef probs = at(w, w->buf[sm], mul(w, f, mn));
    mj_lw_emit_softmax_rows(w, scores, probs, m1.M, m1.N);
    if (fault == MJ_OP_SOFTMAX) mj_lw_emit_fault_range(w, probs, mn);
    LLVMValueRef out = matmul_one(w, &m2, f);
    if (fault == MJ_OP_MATMUL && w->p->tail_out[pv] == pv)
        mj_lw_emit_fault_range(w, out, mul(w, m2.M, m2.N));
    mj_emit_claim_end(&w->e, &lm);
}

/* ---- vector kernels for linear layers and matmul ---------------------------
 *
 * The packed weight is in column panels (mj_pack_panels): panel p holds
 * columns j0 = p*P .. j0+pw as [K][pw]; a matmul's b[K][N] is read in place,
 * the same panel with row stride N, or from a contiguous copy of the panel
 * when b is wider than one (emit_gemm). A micro-kernel keeps rows x vectors
 * accumulators in registers across a block of k and streams the panel: per k
 * it loads the panel's vectors once, broadcasts x[i][k] per row and does
 * acc = fma(x, w, acc) (exact: k ascending per element, so every element
 * sees eager's fmaf chain in eager's order; fast: fmuladd). Partial
 * vectors (pw not a multiple of the width) use masked loads and stores. */

#define MK_MAX_ROWS MJ_MK_MAX_ROWS

/* void mk(const float *x, int64 xs, const float *wp, float *y, int64 ys,
 *         int64 kc, i1 first, i1 last, const float *bias, const float *res,
 *         const float *pf, const float *dv)
 * rows rows of x (stride xs) times the panel block wp ([kc][pw], rows ws apart) into
 * y (stride ys): first -> start from +0.0f, else from y; last -> / *dv (a
 * matmul's tail), + bias, the activation, + res (the residual, read like y:
 * stride ys). Per k it also prefetches pf + k*ws towards L2 (see
 * emit_rows). */
#define MK_NPARAMS 12
static LLVMTypeRef mk_type(lw *w) {
    LLVMTypeRef i1 = LLVMInt1TypeInContext(w->e.ctx);
    LLVMTypeRef pt[MK_NPARAMS] = {w->e.ptr, w->e.i64, w->e.ptr, w->e.ptr, w->e.i64, w->e.i64,
                                  i1,       i1,       w->e.ptr, w->e.ptr, w->e.ptr, w->e.ptr};
    return LLVMFunctionType(LLVMVoidTypeInContext(w->e.ctx), pt, MK_NPARAMS, 0);
}

/* A read prefetch of base + idx floats into L2 (locality 2). The address
 * may lie past the weight's end (the block after the last one): prefetches
 * never fault, and the GEP is not inbounds so the address is not poison. */
static void emit_prefetch_l2(lw *w, LLVMValueRef base, LLVMValueRef idx) {
    LLVMTypeRef fty;
    LLVMValueRef fn = mj_emit_intrinsic(&w->e, "llvm.prefetch", &w->e.ptr, 1, &fty);
    LLVMValueRef args[4] = {LLVMBuildGEP2(w->e.b, w->e.f32, base, &idx, 1, ""), LLVMConstInt(w->e.i32, 0, 0),
                            LLVMConstInt(w->e.i32, 2, 0), LLVMConstInt(w->e.i32, 1, 0)};
    LLVMBuildCall2(w->e.b, fty, fn, args, 4, "");
}

static LLVMValueRef emit_microkernel(lw *w, int rows, int pw, int64_t ws, bool has_bias, mj_act act, bool has_res,
                                     bool has_div, int faults) {
    static const char *const pnames[MK_NPARAMS] = {"x",     "xs",   "wp",   "y",   "ys", "kc",
                                                   "first", "last", "bias", "res", "pf", "dv"};
    LLVMTypeRef fty = mk_type(w);
    char name[96];
    snprintf(name, sizeof name, "%s.mk%d", w->o->fname, w->n_kernels++);
    LLVMValueRef fn = LLVMAddFunction(w->e.m, name, fty);
    LLVMSetLinkage(fn, LLVMInternalLinkage);
    add_attr(w, fn, LLVMAttributeFunctionIndex, "nounwind");
    add_attr(w, fn, LLVMAttributeFunctionIndex, "noinline");
    add_attr(w, fn, 4, "noalias"); /* y */
    LLVMValueRef P[MK_NPARAMS];
    for (int i = 0; i < MK_NPARAMS; i++) {
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
    LLVMValueRef wrow = at(w, P[2], mul(w, k, ci(w, ws)));
    LLVMValueRef wv[MK_MAX_VECS];
    for (int v = 0; v < nv; v++) wv[v] = vload(w, at(w, wrow, ci(w, v * vw)), lanes[v]);
    for (int r = 0; r < rows; r++) {
        LLVMValueRef xb = vsplat(w, load(w, xrow[r], k));
        for (int v = 0; v < nv; v++) nacc[r][v] = vmuladd(w, acc[r][v], xb, wv[v]);
    }
    emit_prefetch_l2(w, P[10], mul(w, k, ci(w, ws)));
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
    LLVMValueRef dvv = has_div ? vsplat(w, load(w, P[11], ci(w, 0))) : NULL, half = vsplat(w, cf(w, 0.5f));
    for (int r = 0; r < rows; r++) {
        LLVMValueRef rrow = has_res ? at(w, P[9], mul(w, ci(w, r), P[4])) : NULL;
        for (int v = 0; v < nv; v++) {
            LLVMValueRef e = nacc[r][v];
            if (faults & MK_FAULT_MM) e = fadd(w, e, half);
            if (has_div) e = fdiv(w, e, dvv);
            if (faults & MK_FAULT_DIV) e = fadd(w, e, half);
            if (has_bias) e = fadd(w, e, bv[v]);
            if (faults & MK_FAULT_ADD) e = fadd(w, e, half);
            e = emit_act(w, act, e);
            if (has_res) e = fadd(w, e, vload(w, at(w, rrow, ci(w, v * vw)), lanes[v]));
            vstore(w, e, at(w, yrow[r], ci(w, v * vw)), lanes[v]);
        }
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

/* Floats per cache line (64 bytes when unknown). */
static int64_t line_floats(void) { return mj_host_cache_bytes(_SC_LEVEL1_DCACHE_LINESIZE, 16, 1024, 64) / 4; }

/* The prefetch pointer of tile t: line t % lines of every row of the next
 * panel block (next, rows as the micro-kernel's ws apart), so that the
 * first `lines` tiles of a block bring the whole next block towards L2 while
 * they compute, one line per k. W is streamed from L3 once per row block
 * (a 1024x1024 layer is 4 MiB), and a block the hardware prefetchers had
 * not fetched stalled the first tile on it: W3 (batch 64) ran ~4% faster. */
static LLVMValueRef tile_prefetch(lw *w, LLVMValueRef next, LLVMValueRef t, int64_t lines) {
    LLVMValueRef line = LLVMBuildSRem(w->e.b, t, ci(w, lines), "");
    LLVMValueRef idx = mul(w, line, ci(w, line_floats()));
    return LLVMBuildGEP2(w->e.b, w->e.f32, next, &idx, 1, "");
}

/* Rows [0, M) of one panel block: 6 at a time, then 4, 2, 1 for the rest;
 * each tile prefetches its share of the next block (tile_prefetch). */
static void emit_rows(lw *w, LLVMValueRef const mk[4], LLVMValueRef x, int64_t xs, LLVMValueRef wp, LLVMValueRef y,
                      int64_t ys, LLVMValueRef M, LLVMValueRef kc, LLVMValueRef first, LLVMValueRef last,
                      LLVMValueRef bias, LLVMValueRef res, LLVMValueRef dv, LLVMValueRef next, int64_t lines) {
    LLVMTypeRef fty = mk_type(w);
    LLVMValueRef bp = bias ? bias : LLVMConstNull(w->e.ptr);
    LLVMValueRef null = LLVMConstNull(w->e.ptr);
    LLVMValueRef blocks = LLVMBuildSDiv(w->e.b, M, ci(w, 6), "");
    loop lb = loop_begin(w, blocks);
    LLVMValueRef i0 = mul(w, lb.iv, ci(w, 6));
    LLVMValueRef args[MK_NPARAMS] = {at(w, x, mul(w, i0, ci(w, xs))), ci(w, xs), wp, at(w, y, mul(w, i0, ci(w, ys))),
                                     ci(w, ys), kc, first, last, bp, res ? at(w, res, mul(w, i0, ci(w, ys))) : null,
                                     tile_prefetch(w, next, lb.iv, lines), dv ? dv : null};
    LLVMBuildCall2(w->e.b, fty, mk[0], args, MK_NPARAMS, "");
    loop_end(w, &lb);
    LLVMValueRef done = mul(w, blocks, ci(w, 6));
    LLVMValueRef rem = LLVMBuildSub(w->e.b, M, done, "");
    for (int t = 1; t < 4; t++) {
        int r = mk_rows[t];
        LLVMBasicBlockRef end = if_begin(w, LLVMBuildICmp(w->e.b, LLVMIntNE, LLVMBuildAnd(w->e.b, rem, ci(w, r), ""),
                                                          ci(w, 0), ""));
        /* rows before this piece: done + (rem & bigger pieces) */
        LLVMValueRef row = add(w, done, LLVMBuildAnd(w->e.b, rem, ci(w, ~(int64_t)(2 * r - 1)), ""));
        LLVMValueRef a[MK_NPARAMS] = {at(w, x, mul(w, row, ci(w, xs))), ci(w, xs), wp, at(w, y, mul(w, row, ci(w, ys))),
                                      ci(w, ys), kc, first, last, bp, res ? at(w, res, mul(w, row, ci(w, ys))) : null,
                                      tile_prefetch(w, next, add(w, blocks, ci(w, t)), lines), dv ? dv : null};
        LLVMBuildCall2(w->e.b, fty, mk[t], a, MK_NPARAMS, "");
        if_end(w, end);
    }
}

/* Rows of x per row block: the block's x[rows][K] stays within half the
 * per-core L2 while every panel of W passes over it. Without the blocks, a
 * batch whose x outgrows L2 is re-read from L3 once per panel, with 4 KiB
 * row strides the prefetchers follow badly (1024 wide: batch 512 and up ran
 * at 0.6-0.75x of batch 64-256 on a 2 MiB-L2 core). */
static int64_t l2_bytes(void) { return mj_host_cache_bytes(_SC_LEVEL2_CACHE_SIZE, 256 << 10, 64 << 20, 1 << 20); }

/* k per chunk of a long row: ~256 rows of x[MC][chunk] fill half the L2
 * (emit_gemm cuts long rows into such chunks; gemm_k_block stays within
 * one). */
static int64_t gemm_k_chunk(void) { return l2_bytes() / 2 / (256 * 4); }

static int64_t gemm_row_block(int64_t K) {
    int64_t mc = l2_bytes() / 2 / (K * 4) / MK_MAX_ROWS * MK_MAX_ROWS; /* so no block is empty */
    return mc < 4 * MK_MAX_ROWS ? 4 * MK_MAX_ROWS : mc;
}

/* k per block: the panel's [KC][P] block is twice the L1 data cache, so it
 * streams from L2 (a 6-row tile reads nr of its vectors per 6*nr FMAs,
 * which L2 keeps up with), and the block boundaries, where each tile's
 * sums are stored and reloaded and the micro-kernel restarts, are rare. At
 * most the k chunk of emit_gemm (~256 rows of x in half the L2), so that
 * long rows keep their row blocks. On Zen 4 (32 KiB L1d, 1 MiB L2; 1024-wide
 * layers, one thread) blocks of half the L1 (64 k) ran at 104-106 GFLOP/s
 * from batch 8 to 1024, twice the L1 (256 k) at 111-114, and 512 and 1024
 * alike; AVX2 code on the same core likewise (256 -> 1024 k: 105 -> 113).
 * (Earlier, with half the L1 the rule: on Zen 5 a block filling the whole
 * 48 KiB L1 was evicted by x rows 4 KiB apart, and BERT's FFN
 * down-projection ran ~28% slower per flop; blocks larger than the L1 do not
 * try to stay in it.) */
static int64_t gemm_k_block(int64_t P) {
    int64_t l1 = mj_host_cache_bytes(_SC_LEVEL1_DCACHE_SIZE, 16 << 10, 1 << 20, 32 << 10);
    int64_t kc = 2 * l1 / (P * 4) / 8 * 8, chunk = gemm_k_chunk() / 8 * 8;
    if (kc > chunk) kc = chunk;
    return kc < 16 ? 16 : kc;
}

/* k block kb of a panel (pw columns, rows ws apart, KC k's a block but the
 * last) over rows [0, M) of x: emit_rows with the block after it as the
 * prefetch target (the next k block, or the next panel's first after the
 * last: packed panels are contiguous; or past W's end). */
static void emit_panel_block(lw *w, LLVMValueRef const mk[4], LLVMValueRef kb, int64_t K, int64_t KC,
                             LLVMValueRef panel, int64_t ws, int64_t pw, LLVMValueRef x, int64_t xs, LLVMValueRef y,
                             int64_t ys, LLVMValueRef M, LLVMValueRef bias, LLVMValueRef res, LLVMValueRef dv) {
    int64_t nkb = (K + KC - 1) / KC;
    LLVMValueRef k0 = mul(w, kb, ci(w, KC));
    LLVMValueRef last = LLVMBuildICmp(w->e.b, LLVMIntEQ, kb, ci(w, nkb - 1), "");
    LLVMValueRef kc = LLVMBuildSelect(w->e.b, last, ci(w, K - (nkb - 1) * KC), ci(w, KC), "");
    LLVMValueRef first = LLVMBuildICmp(w->e.b, LLVMIntEQ, kb, ci(w, 0), "");
    LLVMValueRef wblk = at(w, panel, mul(w, k0, ci(w, ws)));
    LLVMValueRef off = mul(w, kc, ci(w, ws));
    LLVMValueRef next = LLVMBuildGEP2(w->e.b, w->e.f32, wblk, &off, 1, "");
    emit_rows(w, mk, at(w, x, k0), xs, wblk, y, ys, M, kc, first, last, bias, res, dv, next,
              (pw + line_floats() - 1) / line_floats());
}

/* Column mode (nth > 1): the threads claim panels one at a time
 * (mj_emit_claim_begin): a thread the host slows down (a VM's vCPU sharing
 * its core) does fewer instead of holding the others at the barrier after
 * the op. Each claimed panel: all M rows, k
 * blocks in ascending order, by the one thread that claimed it, so every
 * element is computed as with one thread. Panels outermost: a panel's
 * blocks are read once from memory and x (few rows here) stays in L2. */
static void emit_claimed_panels(lw *w, LLVMValueRef mk[2][4], LLVMValueRef y, LLVMValueRef x, LLVMValueRef W,
                                LLVMValueRef M, int64_t K, int64_t N, int64_t P, int64_t KC, LLVMValueRef bias,
                                LLVMValueRef res) {
    int64_t nkb = (K + KC - 1) / KC, nfull = N / P, tail = N % P;
    LLVMValueRef idx;
    mj_claim_loop cl = mj_emit_claim_begin(&w->e, &w->team, ci(w, nfull + (tail ? 1 : 0)), &idx, false);
    LLVMValueRef j0 = mul(w, idx, ci(w, P));
    LLVMValueRef panel = at(w, W, mul(w, j0, ci(w, K)));
    LLVMValueRef ycol = at(w, y, j0), bcol = bias ? at(w, bias, j0) : NULL, rcol = res ? at(w, res, j0) : NULL;
    for (int part = 0; part < 2; part++) {
        if (part == 0 ? !nfull : !tail) continue;
        LLVMBasicBlockRef end = NULL;
        if (tail && nfull) /* the narrow tail panel is the last index */
            end = if_begin(w, LLVMBuildICmp(w->e.b, part == 0 ? LLVMIntSLT : LLVMIntEQ, idx, ci(w, nfull), ""));
        int64_t pw = part == 0 ? P : tail;
        loop lk = loop_begin(w, ci(w, nkb));
        emit_panel_block(w, mk[part], lk.iv, K, KC, panel, pw, pw, x, K, ycol, N, M, bcol, rcol, NULL);
        loop_end(w, &lk);
        if (end) if_end(w, end);
    }
    mj_emit_claim_end(&w->e, &cl);
}

/* The rows k0 .. k0+kn of a transposed b's panel into pbuf ([k][pw]):
 * b[k][j] is src[j*ldb + k]. vw x vw tiles transposed in registers (a
 * vectorised loop of single floats became scatters, microcoded on AVX-512
 * cores), single floats for the edges. */
static void pack_transposed(lw *w, LLVMValueRef src, int64_t ldb, LLVMValueRef pbuf, int64_t pw, LLVMValueRef k0,
                            LLVMValueRef kn) {
    int vw = w->p->vw;
    int64_t jfull = pw / vw * vw;
    LLVMValueRef kfull = LLVMBuildAnd(w->e.b, kn, ci(w, ~(int64_t)(vw - 1)), "");
    LLVMValueRef ldbv = ci(w, ldb), pwv = ci(w, pw);
    if (jfull) {
        loop lj = loop_begin(w, ci(w, jfull / vw));
        loop lk = loop_begin(w, LLVMBuildSDiv(w->e.b, kfull, ci(w, vw), ""));
        LLVMValueRef j = mul(w, lj.iv, ci(w, vw)), k = add(w, k0, mul(w, lk.iv, ci(w, vw)));
        LLVMValueRef r[16];
        for (int t = 0; t < vw; t++) r[t] = vload(w, at(w, src, add(w, mul(w, add(w, j, ci(w, t)), ldbv), k)), vw);
        mj_emit_transpose_tile(&w->e, r);
        for (int t = 0; t < vw; t++) vstore(w, r[t], at(w, pbuf, add(w, mul(w, add(w, k, ci(w, t)), pwv), j)), vw);
        loop_end(w, &lk);
        loop_end(w, &lj);
    }
    /* the edges: rows past kfull for every column, columns past jfull */
    for (int part = 0; part < 2; part++) {
        if (part == 1 && jfull == pw) break;
        LLVMValueRef kfrom = part == 0 ? kfull : ci(w, 0), kto = part == 0 ? kn : kfull;
        int64_t jfrom = part == 0 ? 0 : jfull;
        loop lj = loop_begin(w, ci(w, pw - jfrom));
        LLVMValueRef j = add(w, lj.iv, ci(w, jfrom));
        loop lk = loop_begin(w, LLVMBuildSub(w->e.b, kto, kfrom, ""));
        LLVMValueRef k = add(w, k0, add(w, kfrom, lk.iv));
        store(w, load(w, src, add(w, mul(w, j, ldbv), k)), pbuf, add(w, mul(w, k, pwv), j));
        loop_end(w, &lk);
        loop_end(w, &lj);
    }
}

/* y[M][N] = act(x[M][K] . W + b) + res, W the packed panels (plain: a
 * row-major [K][N] read in place). split: in column mode the threads claim
 * the panels (emit_claimed_panels); else one thread does them all. */
static void emit_gemm(lw *w, LLVMValueRef y, LLVMValueRef x, LLVMValueRef W, bool plain, bool split,
                      LLVMValueRef M, int64_t K, int64_t N, LLVMValueRef bias, mj_act act, LLVMValueRef res,
                      LLVMValueRef dv, int faults, gemm_layout lay) {
    int64_t P = w->p->panel;
    /* A matmul's b read in place has rows N floats apart: with N a multiple
     * of 128 floats (attention: 64 or 128) a panel's lines fall into an
     * eighth of the L1's sets or fewer, and a [K][P] panel of K >= 64
     * evicted itself between the tiles that reuse it. Copied into a
     * contiguous [K][pw] buffer (per panel, on the stack) they spread over
     * every set: the attention's matmuls (BERT-base, batch 1) took ~30%
     * less time, the layer ~4%. The buffer is at most 64 KiB of stack.
     * A view's b (a head of [.., seq, heads * d]) has rows 768 floats apart
     * and worse sets, and a transposed one must be copied anyway. */
    bool strided = plain && (lay.btrans || lay.ldb != N);
    bool pack = plain && (N > P || strided) && K * P <= MJ_GEMM_PACK_MAX_FLOATS;
    MJ_ASSERT(pack || !lay.btrans);
    LLVMValueRef pbuf = pack ? mj_emit_entry_alloca(&w->e, LLVMArrayType2(w->e.f32, (uint64_t)(K * P))) : NULL;
    if (pbuf) LLVMSetAlignment(pbuf, 64);
    int64_t KC = gemm_k_block(P);
    if (K <= KC + KC / 2) KC = K;
    int64_t nkb = (K + KC - 1) / KC;
    int64_t nfull = N / P, tail = N % P;
    LLVMValueRef mk[2][4];
    for (int part = 0; part < 2; part++)
        if (part == 0 ? nfull : tail)
            for (int t = 0; t < 4; t++)
                mk[part][t] = emit_microkernel(w, mk_rows[t], (int)(part == 0 ? P : tail),
                                               plain && !pack ? lay.ldb : (part == 0 ? P : tail), bias != NULL, act,
                                               res != NULL, dv != NULL, faults);
    MJ_ASSERT(!split || !plain); /* claimed panels are packed ones */
    MJ_ASSERT(!split || !dv);
    ifb claimed = {0};
    if (split) { /* column mode: claimed panels (a call on one thread: the loops below) */
        claimed = ifelse_begin(w, several_threads(w));
        emit_claimed_panels(w, mk, y, x, W, M, K, N, P, KC, bias, res);
        if_else(w, &claimed);
    }
    /* Long rows are cut into k chunks of bpc blocks, the loop inside the
     * row blocks, so that a row block of x[MC][chunk] in half the L2 still has ~256 rows:
     * every panel block is reused by MC/6 tiles after its first fetch. With
     * whole rows of K = 3072 a row block had 84 rows and BERT's FFN
     * down-projection ran ~15% slower per flop than its 768-wide layers.
     * y carries each element's sum from chunk to chunk: still one chain in
     * ascending k. */
    int64_t bpc = gemm_k_chunk() / KC;
    if (bpc < 1) bpc = 1;
    int64_t nch = (nkb + bpc - 1) / bpc;
    bpc = (nkb + nch - 1) / nch;
    int64_t MC = gemm_row_block(nch == 1 ? K : bpc * KC);
    LLVMValueRef MCv = ci(w, MC), bpcv = ci(w, bpc), nchv = ci(w, nch);
    if (nch > 1) {
        /* Rows that fit one row block of whole rows need no chunks: each
         * chunk after the first re-reads y from L2 and restarts the
         * prefetch stream. W3 (1024 wide, batch 64) ran ~3.5% faster. */
        int64_t MW = gemm_row_block(K);
        LLVMValueRef whole = LLVMBuildICmp(w->e.b, LLVMIntSLE, M, ci(w, MW), "");
        MCv = LLVMBuildSelect(w->e.b, whole, ci(w, MW), MCv, "");
        bpcv = LLVMBuildSelect(w->e.b, whole, ci(w, nkb), bpcv, "");
        nchv = LLVMBuildSelect(w->e.b, whole, ci(w, 1), nchv, "");
    }
    /* Row blocks of at most MC rows (one block when x fits): nblk equal
     * blocks, each a multiple of the 6-row kernel but the last. */
    LLVMValueRef nblk = LLVMBuildSDiv(w->e.b, add(w, M, LLVMBuildSub(w->e.b, MCv, ci(w, 1), "")), MCv, "");
    LLVMValueRef per = LLVMBuildSDiv(w->e.b, add(w, M, LLVMBuildSub(w->e.b, nblk, ci(w, 1), "")), nblk, "");
    per = mul(w, LLVMBuildSDiv(w->e.b, add(w, per, ci(w, MK_MAX_ROWS - 1)), ci(w, MK_MAX_ROWS), ""), ci(w, MK_MAX_ROWS));
    loop lr = loop_begin(w, nblk);
    LLVMValueRef r0 = mul(w, lr.iv, per), left = LLVMBuildSub(w->e.b, M, r0, "");
    LLVMValueRef rows = LLVMBuildSelect(w->e.b, LLVMBuildICmp(w->e.b, LLVMIntSLT, left, per, ""), left, per, "");
    LLVMValueRef xb = at(w, x, mul(w, r0, ci(w, lay.xs))), yb = at(w, y, mul(w, r0, ci(w, lay.ys)));
    LLVMValueRef rb = res ? at(w, res, mul(w, r0, ci(w, lay.ys))) : NULL;
    loop lc = loop_begin(w, nchv);
    LLVMValueRef kb0 = mul(w, lc.iv, bpcv); /* the chunk's first k block */
    LLVMValueRef left_kb = LLVMBuildSub(w->e.b, ci(w, nkb), kb0, "");
    LLVMValueRef nkc = LLVMBuildSelect(w->e.b, LLVMBuildICmp(w->e.b, LLVMIntSLT, left_kb, bpcv, ""), left_kb, bpcv, "");
    for (int part = 0; part < 2; part++) {
        int64_t np = part == 0 ? nfull : (tail ? 1 : 0);
        if (np == 0) continue;
        int64_t pw = part == 0 ? P : tail;
        int64_t ws = plain && !pack ? lay.ldb : pw; /* panel row stride */
        loop lp = loop_begin(w, ci(w, np));
        LLVMValueRef j0 = add(w, mul(w, lp.iv, ci(w, P)), ci(w, part == 0 ? 0 : nfull * P));
        LLVMValueRef panel = !plain      ? at(w, W, mul(w, j0, ci(w, K)))
                             : lay.btrans ? at(w, W, mul(w, j0, ci(w, lay.ldb))) /* column j0: row j0 of the base */
                                          : at(w, W, j0);
        if (pack) { /* the chunk's rows of the panel, [k][pw] (pack's comment) */
            LLVMValueRef k0 = mul(w, kb0, ci(w, KC));
            LLVMValueRef kn = LLVMBuildSub(w->e.b, ci(w, K), k0, "");
            LLVMValueRef kspan = mul(w, nkc, ci(w, KC));
            kn = LLVMBuildSelect(w->e.b, LLVMBuildICmp(w->e.b, LLVMIntSLT, kspan, kn, ""), kspan, kn, "");
            if (lay.btrans) pack_transposed(w, panel, lay.ldb, pbuf, pw, k0, kn);
            else {
                loop lq = loop_begin(w, kn);
                LLVMValueRef src = at(w, panel, mul(w, add(w, k0, lq.iv), ci(w, lay.ldb)));
                LLVMValueRef dst = at(w, pbuf, mul(w, add(w, k0, lq.iv), ci(w, pw)));
                for (int64_t v = 0; v * w->p->vw < pw; v++) {
                    int lanes = (int)(pw - v * w->p->vw < w->p->vw ? pw - v * w->p->vw : w->p->vw);
                    vstore(w, vload(w, at(w, src, ci(w, v * w->p->vw)), lanes), at(w, dst, ci(w, v * w->p->vw)),
                           lanes);
                }
                loop_end(w, &lq);
            }
            panel = pbuf;
        }
        LLVMValueRef ycol = at(w, yb, j0);
        LLVMValueRef bcol = bias ? at(w, bias, j0) : NULL;
        LLVMValueRef rcol = res ? at(w, rb, j0) : NULL;
        loop lk = loop_begin(w, nkc);
        emit_panel_block(w, mk[part], add(w, kb0, lk.iv), K, KC, panel, ws, pw, xb, lay.xs, ycol, lay.ys, rows,
                         bcol, rcol, dv);
        loop_end(w, &lk);
        loop_end(w, &lp);
    }
    loop_end(w, &lc);
    loop_end(w, &lr);
    if (split) if_end(w, claimed.end);
}
