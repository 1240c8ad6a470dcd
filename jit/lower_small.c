/* Lowering of chains of small linear layers: one straight-line kernel per
 * group of rows, activations kept in vector registers. */
#include <stdio.h>
#include <string.h>

#include "lower.h"

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

bool mj_lw_small_linear(const mj_body_plan *p, int32_t id) {
    const mj_node *n = &p->g->nodes[id];
    if (!mj_op_is_linear(n->op) || p->input_free[id] || p->sparse[id]) return false;
    if (!p->input_free[n->operands[1]] || (MJ_LINEAR_BIAS(n) >= 0 && !p->input_free[MJ_LINEAR_BIAS(n)])) return false;
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

/* One layer for `rows` rows (row indices row[r]) reading x[r][k] from the
 * rows xrow[r]; the output vectors (bias, activation and residual applied)
 * in out[r][v]. */
static void small_layer(lw *w, int32_t id, int rows, LLVMValueRef const *row, LLVMValueRef const *xrow,
                        LLVMValueRef out[SMALL_ROWS][MK_MAX_VECS]) {
    const mj_graph *g = w->p->g;
    const mj_node *n = &g->nodes[id];
    const mj_type *wt = &g->nodes[n->operands[1]].type;
    int64_t N = wt->dims[0], K = wt->dims[1], P = w->p->panel;
    int vw = w->p->vw, nv = (int)((N + vw - 1) / vw);
    LLVMValueRef Wp = w->buf[(size_t)g->n_nodes + 1 + (size_t)w->p->leaf_packed[n->operands[1]]];
    LLVMValueRef bias = MJ_LINEAR_BIAS(n) >= 0 ? w->buf[MJ_LINEAR_BIAS(n)] : NULL;
    LLVMValueRef res = MJ_LINEAR_RES(n) >= 0 ? w->buf[MJ_LINEAR_RES(n)] : NULL;
    mj_act act = MJ_LINEAR_ACT(n);
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
        /* Fast mode may reassociate: the sum over k runs in `split` chains
         * (k mod split) added pairwise at the end, so the FMA latency of
         * one long chain no longer bounds a small layer; as many chains as
         * the vector registers hold with the weights and x. Four on AVX2's
         * 16 registers spilled the 16-wide seed model (3 rows x 2 vectors):
         * fast ran 1.3x slower than exact (Zen 3). */
        int split = 1;
        while (w->e.fast && split < FAST_SPLIT && K >= 4 * split && rows * nv * 2 * split + nv + 1 <= w->p->vregs)
            split *= 2;
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
            out[r][v] = emit_act(w, act, out[r][v]);
            if (res)
                out[r][v] = fadd(w, out[r][v],
                                 vload(w, at(w, res, add(w, mul(w, row[r], ci(w, N)), ci(w, (int64_t)v * vw))), lanes[v]));
        }
    }
}

/* Rows in groups of SMALL_ROWS, all of them in flight together (the exact
 * sums are latency-bound chains; independent rows hide each other's
 * latency). The last group clamps its row indices to M-1: the extra rows
 * recompute and rewrite the last row with the same values, so one body of
 * code serves every batch. */
void mj_lw_emit_small_chain(lw *w, const int32_t *ids, int n_ids) {
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
        small_layer(w, ids[t], SMALL_ROWS, row, xrow, a);
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
