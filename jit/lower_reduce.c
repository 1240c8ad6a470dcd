/* Lowering of reductions along a dim (sum, mean, max, softmax, ...) and
 * layer_norm. */
#include "lower.h"
#include "src/core/vmath.h"

/* ---- reductions and normalisations ----------------------------------------
 * Plain loops, one line (or row) at a time, each doing the float operations
 * of its eager kernel (src/core/ops.c) in the same order; accumulators live in
 * entry-block allocas that LLVM promotes to registers. Fast mode's flags let
 * LLVM vectorise the sums. */

static LLVMValueRef ld_acc(lw *w, LLVMValueRef a) { return LLVMBuildLoad2(w->e.b, w->e.f32, a, ""); }
static void st_acc(lw *w, LLVMValueRef a, LLVMValueRef v) { LLVMBuildStore(w->e.b, v, a); }

/* (float)n for an i64 count, as C converts it */
static LLVMValueRef count_f(lw *w, LLVMValueRef n) { return LLVMBuildSIToFP(w->e.b, n, w->e.f32, ""); }

/* Lines per group where the dim is the last one: each line's sum (or max)
 * is one chain of dependent adds, 4 cycles apiece; R lines side by side
 * keep R chains in flight, every line's operations and order unchanged.
 * (BERT's softmax over [8, 12, 128, 128] scores ran ~2.5x faster; LLVM
 * turns the R chains into one vector of R lanes, one chain per lane.) */
#define LINES_R 8

/* The lines starting at base[r] (elements stride apart), r < R, through
 * op's loops; sum and mean write y[yo[r]]. */
static void emit_lines(lw *w, mj_op op, LLVMValueRef x, LLVMValueRef y, int R, LLVMValueRef const *base,
                       LLVMValueRef stride, LLVMValueRef const *yo, LLVMValueRef N, LLVMValueRef const *acc,
                       LLVMValueRef const *mx) {
#define LINE_AT(r, iv) add(w, base[r], mul(w, (iv), stride))
    if (op == MJ_OP_SUM || op == MJ_OP_MEAN) {
        for (int r = 0; r < R; r++) st_acc(w, acc[r], cf(w, 0.0f));
        loop li = loop_begin(w, N);
        for (int r = 0; r < R; r++) st_acc(w, acc[r], fadd(w, ld_acc(w, acc[r]), load(w, x, LINE_AT(r, li.iv))));
        loop_end(w, &li);
        for (int r = 0; r < R; r++) {
            LLVMValueRef v = ld_acc(w, acc[r]);
            if (op == MJ_OP_MEAN) v = fdiv(w, v, count_f(w, N));
            store(w, v, y, yo[r]);
        }
        return;
    }
    /* m = x[0]; m = x[i] > m ? x[i] : m (x[0] > x[0] is false: the loop may start at 0) */
    for (int r = 0; r < R; r++) st_acc(w, mx[r], load(w, x, base[r]));
    loop li = loop_begin(w, N);
    for (int r = 0; r < R; r++) {
        LLVMValueRef v = load(w, x, LINE_AT(r, li.iv)), m0 = ld_acc(w, mx[r]);
        st_acc(w, mx[r], sel(w, LLVMRealOGT, v, m0, v, m0));
    }
    loop_end(w, &li);
    LLVMValueRef m[LINES_R];
    for (int r = 0; r < R; r++) {
        m[r] = ld_acc(w, mx[r]);
        st_acc(w, acc[r], cf(w, 0.0f));
    }
    if (op == MJ_OP_SOFTMAX) { /* y[i] = e[i] (loops LLVM vectorises), then the sums in order */
        for (int r = 0; r < R; r++) {
            li = loop_begin(w, N);
            store(w, emit_expf(w, fsub(w, load(w, x, LINE_AT(r, li.iv)), m[r])), y, LINE_AT(r, li.iv));
            loop_end(w, &li);
        }
        li = loop_begin(w, N);
        for (int r = 0; r < R; r++) st_acc(w, acc[r], fadd(w, ld_acc(w, acc[r]), load(w, y, LINE_AT(r, li.iv))));
        loop_end(w, &li);
        for (int r = 0; r < R; r++) { /* y[i] / sum: a division, as eager */
            LLVMValueRef sum = ld_acc(w, acc[r]);
            li = loop_begin(w, N);
            store(w, fdiv(w, load(w, y, LINE_AT(r, li.iv)), sum), y, LINE_AT(r, li.iv));
            loop_end(w, &li);
        }
    } else { /* the last loop reads x again: e[i] is not stored */
        li = loop_begin(w, N);
        for (int r = 0; r < R; r++)
            st_acc(w, acc[r],
                   fadd(w, ld_acc(w, acc[r]), emit_expf(w, fsub(w, load(w, x, LINE_AT(r, li.iv)), m[r]))));
        loop_end(w, &li);
        for (int r = 0; r < R; r++) { /* (x[i] - m) - logf(sum) */
            LLVMValueRef ls = call_libm(w, "logf", ld_acc(w, acc[r]));
            li = loop_begin(w, N);
            store(w, fsub(w, fsub(w, load(w, x, LINE_AT(r, li.iv)), m[r]), ls), y, LINE_AT(r, li.iv));
            loop_end(w, &li);
        }
    }
#undef LINE_AT
}

/* ---- softmax over 8 contiguous rows, in 8-float blocks ----------------------
 * The max and the sum over a group of rows, side by side, gathered one
 * float per row per step (emit_lines) were a third of BERT's softmax. Here
 * they read whole blocks: the max keeps 8 lanes per row and combines them
 * at the end, the exp pass transposes each 8x8 block of e and adds its
 * columns in order to one vector of the 8 rows' sums (lane r: row r's
 * e[0] + e[1] + ... in eager's order). The max may pick the other of two
 * equal zeros than eager's scan (a NaN is never larger in either, and a
 * NaN x[0] stays the max in both): x - m and then exp give the same bits
 * either way. log_softmax, which returns x - m itself, keeps the scan.
 * A block whose x - m are all in exp's band (not below -87: the usual
 * case) takes exp's shorter form (mj_emit_expf_band), the same bits.
 * BERT's scores, [12, 128, 128], one thread: 228 -> 124 us. */
#define SM_LANES 8
_Static_assert(SM_LANES == LINES_R, "softmax's groups are emit_along's");

static LLVMTypeRef v8(lw *w) { return LLVMVectorType(w->e.f32, SM_LANES); }

static LLVMValueRef load8(lw *w, LLVMValueRef base, LLVMValueRef idx) {
    LLVMValueRef v = LLVMBuildLoad2(w->e.b, v8(w), at(w, base, idx), "");
    LLVMSetAlignment(v, 4);
    return v;
}

static void store8(lw *w, LLVMValueRef v, LLVMValueRef base, LLVMValueRef idx) {
    LLVMSetAlignment(LLVMBuildStore(w->e.b, v, at(w, base, idx)), 4);
}

static LLVMValueRef splat8(lw *w, LLVMValueRef s) {
    LLVMValueRef v = LLVMBuildInsertElement(w->e.b, LLVMGetPoison(v8(w)), s, ci(w, 0), "");
    return LLVMBuildShuffleVector(w->e.b, v, LLVMGetPoison(v8(w)), LLVMConstNull(LLVMVectorType(w->e.i32, SM_LANES)),
                                  "");
}

static LLVMValueRef shuffle8(lw *w, LLVMValueRef a, LLVMValueRef b, const int idx[SM_LANES]) {
    LLVMValueRef m[SM_LANES];
    for (int i = 0; i < SM_LANES; i++) m[i] = LLVMConstInt(w->e.i32, (unsigned long long)idx[i], 0);
    return LLVMBuildShuffleVector(w->e.b, a, b, LLVMConstVector(m, SM_LANES), "");
}

/* v[r] lane c -> v[c] lane r: unpack pairs, then pairs of pairs, then the
 * 128-bit halves (the usual 24 shuffles of an 8x8 float transpose). */
static void transpose8(lw *w, LLVMValueRef v[SM_LANES]) {
    static const int lo[8] = {0, 8, 1, 9, 4, 12, 5, 13}, hi[8] = {2, 10, 3, 11, 6, 14, 7, 15};
    static const int plo[8] = {0, 1, 8, 9, 4, 5, 12, 13}, phi[8] = {2, 3, 10, 11, 6, 7, 14, 15};
    static const int hlo[8] = {0, 1, 2, 3, 8, 9, 10, 11}, hhi[8] = {4, 5, 6, 7, 12, 13, 14, 15};
    LLVMValueRef t[8], s[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = shuffle8(w, v[i], v[i + 1], lo);
        t[i + 1] = shuffle8(w, v[i], v[i + 1], hi);
    }
    for (int i = 0; i < 8; i += 4) {
        s[i] = shuffle8(w, t[i], t[i + 2], plo);
        s[i + 1] = shuffle8(w, t[i], t[i + 2], phi);
        s[i + 2] = shuffle8(w, t[i + 1], t[i + 3], plo);
        s[i + 3] = shuffle8(w, t[i + 1], t[i + 3], phi);
    }
    for (int c = 0; c < 4; c++) {
        v[c] = shuffle8(w, s[c], s[c + 4], hlo);
        v[c + 4] = shuffle8(w, s[c], s[c + 4], hhi);
    }
}

/* sums (lane r: row r's sum so far) += the columns of the 8x8 block v
 * (v[r]: row r's 8 floats), in column order: v is transposed in place */
static void add_columns8(lw *w, LLVMValueRef v[SM_LANES], LLVMValueRef sums) {
    transpose8(w, v);
    LLVMValueRef sv = LLVMBuildLoad2(w->e.b, v8(w), sums, "");
    for (int c = 0; c < SM_LANES; c++) sv = fadd(w, sv, v[c]);
    LLVMBuildStore(w->e.b, sv, sums);
}

/* acc[r] = lane r of sums */
static void lanes_to(lw *w, LLVMValueRef sums, LLVMValueRef const *acc) {
    LLVMValueRef sv = LLVMBuildLoad2(w->e.b, v8(w), sums, "");
    for (int r = 0; r < SM_LANES; r++) st_acc(w, acc[r], LLVMBuildExtractElement(w->e.b, sv, ci(w, r), ""));
}

/* softmax of the 8 rows at x + base[r] (N >= 1 floats each) into y at the
 * same offsets; acc and mx: a float alloca per row. */
static void emit_softmax8(lw *w, LLVMValueRef x, LLVMValueRef y, LLVMValueRef const *base, LLVMValueRef N,
                          LLVMValueRef const *acc, LLVMValueRef const *mx) {
    LLVMValueRef nb = LLVMBuildSDiv(w->e.b, N, ci(w, SM_LANES), ""), vend = mul(w, nb, ci(w, SM_LANES));
    LLVMValueRef mv[SM_LANES], sums = mj_emit_entry_alloca(&w->e, v8(w));
    for (int r = 0; r < SM_LANES; r++) {
        mv[r] = mj_emit_entry_alloca(&w->e, v8(w));
        LLVMBuildStore(w->e.b, splat8(w, load(w, x, base[r])), mv[r]);
    }
    /* max: per lane over the blocks (x[0] > x[0] is false: starting from it is harmless) */
    loop lb = loop_begin(w, nb);
    LLVMValueRef j = mul(w, lb.iv, ci(w, SM_LANES));
    for (int r = 0; r < SM_LANES; r++) {
        LLVMValueRef v = load8(w, x, add(w, base[r], j)), m0 = LLVMBuildLoad2(w->e.b, v8(w), mv[r], "");
        LLVMBuildStore(w->e.b, sel(w, LLVMRealOGT, v, m0, v, m0), mv[r]);
    }
    loop_end(w, &lb);
    for (int r = 0; r < SM_LANES; r++) { /* the lanes, then the columns past the blocks */
        LLVMValueRef v = LLVMBuildLoad2(w->e.b, v8(w), mv[r], "");
        LLVMValueRef m = LLVMBuildExtractElement(w->e.b, v, ci(w, 0), "");
        for (int l = 1; l < SM_LANES; l++) {
            LLVMValueRef e = LLVMBuildExtractElement(w->e.b, v, ci(w, l), "");
            m = sel(w, LLVMRealOGT, e, m, e, m);
        }
        st_acc(w, mx[r], m);
    }
    loop lt = loop_range(w, vend, N, 1);
    for (int r = 0; r < SM_LANES; r++) {
        LLVMValueRef v = load(w, x, add(w, base[r], lt.iv)), m0 = ld_acc(w, mx[r]);
        st_acc(w, mx[r], sel(w, LLVMRealOGT, v, m0, v, m0));
    }
    loop_end(w, &lt);
    /* e = exp(x - m), stored, and its columns added in order */
    LLVMValueRef m[SM_LANES], ms[SM_LANES];
    for (int r = 0; r < SM_LANES; r++) {
        m[r] = ld_acc(w, mx[r]);
        ms[r] = splat8(w, m[r]);
    }
    LLVMBuildStore(w->e.b, LLVMConstNull(v8(w)), sums);
    lb = loop_begin(w, nb);
    j = mul(w, lb.iv, ci(w, SM_LANES));
    LLVMValueRef e[SM_LANES], d[SM_LANES], inband = NULL;
    for (int r = 0; r < SM_LANES; r++) {
        d[r] = fsub(w, load8(w, x, add(w, base[r], j)), ms[r]);
        LLVMValueRef ok = LLVMBuildFCmp(w->e.b, LLVMRealOGE, d[r], mj_emit_kf(&w->e, v8(w), MJ_EXPF_BAND_LO), "");
        inband = inband ? LLVMBuildAnd(w->e.b, inband, ok, "") : ok;
    }
    /* x - m <= 0: where the block's are all >= the band's low end (the
     * usual case), exp's shorter form gives the same bits */
    LLVMValueRef all = LLVMBuildICmp(w->e.b, LLVMIntEQ,
                                     LLVMBuildBitCast(w->e.b, inband, LLVMInt8TypeInContext(w->e.ctx), ""),
                                     LLVMConstInt(LLVMInt8TypeInContext(w->e.ctx), 0xff, 0), "");
    LLVMBasicBlockRef bb_band = LLVMAppendBasicBlockInContext(w->e.ctx, w->e.fn, "band");
    LLVMBasicBlockRef bb_full = LLVMAppendBasicBlockInContext(w->e.ctx, w->e.fn, "full");
    LLVMBasicBlockRef bb_join = LLVMAppendBasicBlockInContext(w->e.ctx, w->e.fn, "exps");
    LLVMBuildCondBr(w->e.b, all, bb_band, bb_full);
    LLVMValueRef eb[SM_LANES], ef[SM_LANES];
    LLVMPositionBuilderAtEnd(w->e.b, bb_band);
    for (int r = 0; r < SM_LANES; r++) eb[r] = mj_emit_expf_band(&w->e, d[r]);
    LLVMBuildBr(w->e.b, bb_join);
    LLVMPositionBuilderAtEnd(w->e.b, bb_full);
    for (int r = 0; r < SM_LANES; r++) ef[r] = emit_expf(w, d[r]);
    LLVMBuildBr(w->e.b, bb_join);
    LLVMPositionBuilderAtEnd(w->e.b, bb_join);
    for (int r = 0; r < SM_LANES; r++) {
        e[r] = LLVMBuildPhi(w->e.b, v8(w), "");
        LLVMValueRef in[2] = {eb[r], ef[r]};
        LLVMBasicBlockRef from[2] = {bb_band, bb_full};
        LLVMAddIncoming(e[r], in, from, 2);
    }
    for (int r = 0; r < SM_LANES; r++) store8(w, e[r], y, add(w, base[r], j));
    add_columns8(w, e, sums);
    loop_end(w, &lb);
    lanes_to(w, sums, acc);
    lt = loop_range(w, vend, N, 1);
    for (int r = 0; r < SM_LANES; r++) {
        LLVMValueRef ev = emit_expf(w, fsub(w, load(w, x, add(w, base[r], lt.iv)), m[r]));
        store(w, ev, y, add(w, base[r], lt.iv));
        st_acc(w, acc[r], fadd(w, ld_acc(w, acc[r]), ev));
    }
    loop_end(w, &lt);
    for (int r = 0; r < SM_LANES; r++) { /* y[i] / sum: a division, as eager */
        LLVMValueRef sum = ld_acc(w, acc[r]);
        loop li = loop_begin(w, N);
        store(w, fdiv(w, load(w, y, add(w, base[r], li.iv)), sum), y, add(w, base[r], li.iv));
        loop_end(w, &li);
    }
}

/* Column mode: thread tid's share [*g0, *g0 + *mine) of the groups of R
 * rows, and *left, the rows past the last group (done one at a time) for
 * the last thread, else 0. Every row is in the same kind of group as with
 * one thread: fast mode may sum a lone row in another order than a row of a
 * group, and its bits must not depend on the thread count. */
static void thread_rows(lw *w, LLVMValueRef groups, int R, LLVMValueRef rows, LLVMValueRef *g0, LLVMValueRef *mine,
                        LLVMValueRef *left) {
    mj_emit_share(&w->e, &w->team, groups, g0, mine);
    LLVMValueRef last = LLVMBuildICmp(w->e.b, LLVMIntEQ, w->team.tid, LLVMBuildSub(w->e.b, w->team.nth, ci(w, 1), ""), "");
    *left = LLVMBuildSelect(w->e.b, last, LLVMBuildSub(w->e.b, rows, mul(w, groups, ci(w, R)), ""), ci(w, 0), "");
}

bool mj_lw_splits_rows(const mj_body_plan *p, int32_t i) {
    const mj_node *n = &p->g->nodes[i];
    if (n->op == MJ_OP_LAYER_NORM) return true;
    if (n->op != MJ_OP_SUM && n->op != MJ_OP_MEAN && n->op != MJ_OP_SOFTMAX && n->op != MJ_OP_LOG_SOFTMAX) return false;
    const mj_type *xt = &p->g->nodes[n->operands[0]].type;
    return mj_reduce_dim(n, xt->rank) == xt->rank - 1;
}

/* op over rows of N floats at x (reductions: one float per row at y):
 * groups [g0, g0 + mine) of LINES_R rows side by side (softmax: in blocks,
 * emit_softmax8), then `left` rows one at a time from row groups * LINES_R;
 * acc and mx: LINES_R float allocas */
static void emit_row_groups(lw *w, mj_op op, LLVMValueRef x, LLVMValueRef y, LLVMValueRef N, LLVMValueRef g0,
                            LLVMValueRef mine, LLVMValueRef groups, LLVMValueRef left, LLVMValueRef const *acc,
                            LLVMValueRef const *mx) {
    loop lg = loop_begin(w, mine);
    LLVMValueRef base[LINES_R], yo[LINES_R];
    for (int r = 0; r < LINES_R; r++) {
        yo[r] = add(w, mul(w, add(w, g0, lg.iv), ci(w, LINES_R)), ci(w, r));
        base[r] = mul(w, yo[r], N);
    }
    if (op == MJ_OP_SOFTMAX) emit_softmax8(w, x, y, base, N, acc, mx);
    else emit_lines(w, op, x, y, LINES_R, base, ci(w, 1), yo, N, acc, mx);
    loop_end(w, &lg);
    LLVMValueRef done = mul(w, groups, ci(w, LINES_R));
    loop lr = loop_begin(w, left);
    LLVMValueRef row = add(w, done, lr.iv), b0 = mul(w, row, N);
    emit_lines(w, op, x, y, 1, &b0, ci(w, 1), &row, N, acc, mx);
    loop_end(w, &lr);
}

static void line_allocas(lw *w, LLVMValueRef *acc, LLVMValueRef *mx) {
    for (int r = 0; r < LINES_R; r++) {
        acc[r] = entry_alloca(w);
        mx[r] = entry_alloca(w);
    }
}

/* softmax over rows [0, rows) of N floats at x into y, every row on the
 * calling thread, grouped as mj_lw_emit_along groups them (attention's
 * matrices, one at a time: lower_gemm.c) */
void mj_lw_emit_softmax_rows(lw *w, LLVMValueRef x, LLVMValueRef y, LLVMValueRef rows, LLVMValueRef N) {
    LLVMValueRef acc[LINES_R], mx[LINES_R];
    line_allocas(w, acc, mx);
    LLVMValueRef groups = LLVMBuildSDiv(w->e.b, rows, ci(w, LINES_R), "");
    LLVMValueRef left = LLVMBuildSub(w->e.b, rows, mul(w, groups, ci(w, LINES_R)), "");
    emit_row_groups(w, MJ_OP_SOFTMAX, x, y, N, ci(w, 0), groups, groups, left, acc, mx);
}

/* sum / mean / softmax / log_softmax along dim d of x: lines [outer][n][inner] */
void mj_lw_emit_along(lw *w, int32_t id) {
    w->loops = true;
    const mj_graph *g = w->p->g;
    const mj_node *n = &g->nodes[id];
    const mj_type *xt = &g->nodes[n->operands[0]].type;
    int d = mj_reduce_dim(n, xt->rank);
    if (xt->dims[d] == 0 && (n->op == MJ_OP_SOFTMAX || n->op == MJ_OP_LOG_SOFTMAX)) return; /* no elements */
    LLVMValueRef outer = dims_product(w, xt, 0, d), N = dimv(w, xt->dims[d]);
    LLVMValueRef x = w->buf[n->operands[0]], y = w->buf[id];
    LLVMValueRef acc[LINES_R], mx[LINES_R];
    line_allocas(w, acc, mx);
    if (d == xt->rank - 1) { /* lines are rows: LINES_R at a time, then one at a time */
        LLVMValueRef groups = LLVMBuildSDiv(w->e.b, outer, ci(w, LINES_R), ""), g0, mine, left;
        thread_rows(w, groups, LINES_R, outer, &g0, &mine, &left);
        emit_row_groups(w, n->op, x, y, N, g0, mine, groups, left, acc, mx);
        return;
    }
    LLVMValueRef inner = dims_product(w, xt, d + 1, xt->rank);
    loop lo = loop_begin(w, outer);
    loop lj = loop_begin(w, inner);
    LLVMValueRef base = add(w, mul(w, mul(w, lo.iv, N), inner), lj.iv);
    LLVMValueRef yo = add(w, mul(w, lo.iv, inner), lj.iv);
    emit_lines(w, n->op, x, y, 1, &base, inner, &yo, N, acc, mx);
    loop_end(w, &lj);
    loop_end(w, &lo);
}

/* layer_norm's last step for R rows, their means and sums of squares
 * known: rstd = 1/sqrtf(var + eps), then (x - mean) * rstd [* w] [+ b] */
static void emit_ln_out(lw *w, const mj_node *n, int R, LLVMValueRef const *xr, LLVMValueRef const *yr,
                        LLVMValueRef N, LLVMValueRef wt, LLVMValueRef bs, LLVMValueRef const *mean,
                        LLVMValueRef const *sq) {
    LLVMValueRef nf = count_f(w, N);
    for (int r = 0; r < R; r++) {
        LLVMValueRef var_eps = fadd(w, fdiv(w, ld_acc(w, sq[r]), nf), cf(w, n->attrs.f[0]));
        LLVMValueRef rstd = fdiv(w, cf(w, 1.0f), vsqrt(w, var_eps));
        loop lj = loop_begin(w, N);
        LLVMValueRef v = fmul(w, fsub(w, load(w, xr[r], lj.iv), mean[r]), rstd);
        if (wt) v = fmul(w, v, load(w, wt, lj.iv));
        if (bs) v = fadd(w, v, load(w, bs, lj.iv));
        store(w, v, yr[r], lj.iv);
        loop_end(w, &lj);
    }
}

/* layer_norm of R rows side by side (the rows after emit_ln8's groups, one
 * at a time): mean, biased variance, rstd = 1/sqrtf(var + eps),
 * (x - mean) * rstd [* w] [+ b], per row in the reference's order. */
static void emit_ln_rows(lw *w, const mj_node *n, int R, LLVMValueRef const *xr, LLVMValueRef const *yr,
                         LLVMValueRef N, LLVMValueRef wt, LLVMValueRef bs, LLVMValueRef const *acc,
                         LLVMValueRef const *sq) {
    for (int r = 0; r < R; r++) st_acc(w, acc[r], cf(w, 0.0f));
    loop lj = loop_begin(w, N);
    for (int r = 0; r < R; r++) st_acc(w, acc[r], fadd(w, ld_acc(w, acc[r]), load(w, xr[r], lj.iv)));
    loop_end(w, &lj);
    LLVMValueRef nf = count_f(w, N), mean[LINES_R];
    for (int r = 0; r < R; r++) {
        mean[r] = fdiv(w, ld_acc(w, acc[r]), nf);
        st_acc(w, sq[r], cf(w, 0.0f));
    }
    lj = loop_begin(w, N);
    for (int r = 0; r < R; r++) {
        LLVMValueRef dv = fsub(w, load(w, xr[r], lj.iv), mean[r]);
        st_acc(w, sq[r], fadd(w, ld_acc(w, sq[r]), fmul(w, dv, dv)));
    }
    loop_end(w, &lj);
    emit_ln_out(w, n, R, xr, yr, N, wt, bs, mean, sq);
}

/* The two sums of layer_norm for 8 rows, in 8-float blocks transposed in
 * registers (as softmax's: emit_softmax8), each row's in its order; the
 * columns past the blocks one at a time. Then emit_ln_rows' last loops. */
static void emit_ln8(lw *w, const mj_node *n, LLVMValueRef const *xr, LLVMValueRef const *yr, LLVMValueRef N,
                     LLVMValueRef wt, LLVMValueRef bs, LLVMValueRef const *acc, LLVMValueRef const *sq) {
    LLVMValueRef nb = LLVMBuildSDiv(w->e.b, N, ci(w, SM_LANES), ""), vend = mul(w, nb, ci(w, SM_LANES));
    LLVMValueRef sums = mj_emit_entry_alloca(&w->e, v8(w)), v[SM_LANES];
    LLVMBuildStore(w->e.b, LLVMConstNull(v8(w)), sums);
    loop lb = loop_begin(w, nb);
    LLVMValueRef j = mul(w, lb.iv, ci(w, SM_LANES));
    for (int r = 0; r < SM_LANES; r++) v[r] = load8(w, xr[r], j);
    add_columns8(w, v, sums);
    loop_end(w, &lb);
    lanes_to(w, sums, acc);
    loop lt = loop_range(w, vend, N, 1);
    for (int r = 0; r < SM_LANES; r++) st_acc(w, acc[r], fadd(w, ld_acc(w, acc[r]), load(w, xr[r], lt.iv)));
    loop_end(w, &lt);
    LLVMValueRef nf = count_f(w, N), mean[SM_LANES], meanv[SM_LANES];
    for (int r = 0; r < SM_LANES; r++) {
        mean[r] = fdiv(w, ld_acc(w, acc[r]), nf);
        meanv[r] = splat8(w, mean[r]);
    }
    LLVMBuildStore(w->e.b, LLVMConstNull(v8(w)), sums);
    lb = loop_begin(w, nb);
    j = mul(w, lb.iv, ci(w, SM_LANES));
    for (int r = 0; r < SM_LANES; r++) {
        LLVMValueRef dv = fsub(w, load8(w, xr[r], j), meanv[r]);
        v[r] = fmul(w, dv, dv);
    }
    add_columns8(w, v, sums);
    loop_end(w, &lb);
    lanes_to(w, sums, sq);
    lt = loop_range(w, vend, N, 1);
    for (int r = 0; r < SM_LANES; r++) {
        LLVMValueRef dv = fsub(w, load(w, xr[r], lt.iv), mean[r]);
        st_acc(w, sq[r], fadd(w, ld_acc(w, sq[r]), fmul(w, dv, dv)));
    }
    loop_end(w, &lt);
    emit_ln_out(w, n, SM_LANES, xr, yr, N, wt, bs, mean, sq);
}

/* layer_norm over the last dim, LN_R rows at a time (emit_ln8), then one
 * at a time */
#define LN_R SM_LANES
void mj_lw_emit_layer_norm(lw *w, int32_t id) {
    w->loops = true;
    const mj_graph *g = w->p->g;
    const mj_node *n = &g->nodes[id];
    const mj_type *xt = &g->nodes[n->operands[0]].type;
    LLVMValueRef rows = dims_product(w, xt, 0, xt->rank - 1), N = dimv(w, xt->dims[xt->rank - 1]);
    LLVMValueRef x = w->buf[n->operands[0]], y = w->buf[id];
    LLVMValueRef wt = n->n_operands >= 2 ? w->buf[n->operands[1]] : NULL;
    LLVMValueRef bs = n->n_operands == 3 ? w->buf[n->operands[2]] : NULL;
    LLVMValueRef acc[LN_R], sq[LN_R], xr[LN_R], yr[LN_R];
    for (int r = 0; r < LN_R; r++) {
        acc[r] = entry_alloca(w);
        sq[r] = entry_alloca(w);
    }
    LLVMValueRef groups = LLVMBuildSDiv(w->e.b, rows, ci(w, LN_R), ""), g0, mine, left;
    thread_rows(w, groups, LN_R, rows, &g0, &mine, &left);
    loop lg = loop_begin(w, mine);
    for (int r = 0; r < LN_R; r++) {
        LLVMValueRef row = add(w, mul(w, add(w, g0, lg.iv), ci(w, LN_R)), ci(w, r));
        xr[r] = at(w, x, mul(w, row, N));
        yr[r] = at(w, y, mul(w, row, N));
    }
    emit_ln8(w, n, xr, yr, N, wt, bs, acc, sq);
    loop_end(w, &lg);
    LLVMValueRef done = mul(w, groups, ci(w, LN_R));
    loop lr = loop_begin(w, left);
    LLVMValueRef row = add(w, done, lr.iv);
    xr[0] = at(w, x, mul(w, row, N));
    yr[0] = at(w, y, mul(w, row, N));
    emit_ln_rows(w, n, 1, xr, yr, N, wt, bs, acc, sq);
    loop_end(w, &lr);
}
