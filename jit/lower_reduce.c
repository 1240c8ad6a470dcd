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
    for (int r = 0; r < LINES_R; r++) {
        acc[r] = entry_alloca(w);
        mx[r] = entry_alloca(w);
    }
    if (d == xt->rank - 1) { /* lines are rows: LINES_R at a time, then one at a time */
        LLVMValueRef groups = LLVMBuildSDiv(w->e.b, outer, ci(w, LINES_R), ""), g0, mine, left;
        thread_rows(w, groups, LINES_R, outer, &g0, &mine, &left);
        loop lg = loop_begin(w, mine);
        LLVMValueRef base[LINES_R], yo[LINES_R];
        for (int r = 0; r < LINES_R; r++) {
            yo[r] = add(w, mul(w, add(w, g0, lg.iv), ci(w, LINES_R)), ci(w, r));
            base[r] = mul(w, yo[r], N);
        }
        emit_lines(w, n->op, x, y, LINES_R, base, ci(w, 1), yo, N, acc, mx);
        loop_end(w, &lg);
        LLVMValueRef done = mul(w, groups, ci(w, LINES_R));
        loop lr = loop_begin(w, left);
        LLVMValueRef row = add(w, done, lr.iv), b0 = mul(w, row, N);
        emit_lines(w, n->op, x, y, 1, &b0, ci(w, 1), &row, N, acc, mx);
        loop_end(w, &lr);
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

/* layer_norm of R rows side by side (their sums are R chains in flight,
 * as emit_lines): mean, biased variance, rstd = 1/sqrtf(var + eps),
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
    for (int r = 0; r < R; r++) {
        LLVMValueRef var_eps = fadd(w, fdiv(w, ld_acc(w, sq[r]), nf), cf(w, n->attrs.f[0]));
        LLVMValueRef rstd = fdiv(w, cf(w, 1.0f), call_libm(w, "sqrtf", var_eps));
        lj = loop_begin(w, N);
        LLVMValueRef v = fmul(w, fsub(w, load(w, xr[r], lj.iv), mean[r]), rstd);
        if (wt) v = fmul(w, v, load(w, wt, lj.iv));
        if (bs) v = fadd(w, v, load(w, bs, lj.iv));
        store(w, v, yr[r], lj.iv);
        loop_end(w, &lj);
    }
}

/* layer_norm over the last dim, LN_R rows at a time, then one at a time */
#define LN_R 4
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
    emit_ln_rows(w, n, LN_R, xr, yr, N, wt, bs, acc, sq);
    loop_end(w, &lg);
    LLVMValueRef done = mul(w, groups, ci(w, LN_R));
    loop lr = loop_begin(w, left);
    LLVMValueRef row = add(w, done, lr.iv);
    xr[0] = at(w, x, mul(w, row, N));
    yr[0] = at(w, y, mul(w, row, N));
    emit_ln_rows(w, n, 1, xr, yr, N, wt, bs, acc, sq);
    loop_end(w, &lr);
}
