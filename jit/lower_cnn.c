/* The CNN ops lowered to LLVM IR (see lower_cnn.h). Every output element
 * gets the float operations of its eager kernel (src/nn/cnn.c,
 * docs/numerics.md "CNN layers") in the same order; the loops around them
 * differ so that LLVM can vectorise across output positions, never across
 * a reduction.
 *
 * conv2d: a register tile of output channels times a vector of a row's
 * output positions (lower_conv_tiled), each lane its own output element:
 * +0.0f, then acc = fmaf(x, w, acc) for each tap (c, kh, kw) in eager's
 * order, padding lanes reading 0.0f as eager's x. Frozen, when the nonzero
 * taps cost less than the tile, jit/lower_conv_sparse.c runs them instead
 * (the contract of the frozen linear layers: exact for finite inputs).
 *
 * Either way's store (value + b[o]) then runs the conv's tail (the plan's:
 * batch_norm, activations, a residual add; mj_conv_tail_apply), each step
 * the separate op's operations, so that BN, ReLU and the residual of a
 * ResNet block cost no passes over memory. */
#include <math.h>

#define MJ_EMIT_CTX(c) (c) /* the short forms, on the mj_emit itself */
#include "lower_cnn.h"

#include "jit_internal.h"

static LLVMValueRef dimv(const mj_cnn_lowering *c, int64_t d) { return d == MJ_DIM_BATCH ? c->batch : ci(c->e, d); }
static LLVMValueRef isub(mj_emit *e, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildNSWSub(e->b, a, b, ""); }
static LLVMValueRef idiv(mj_emit *e, LLVMValueRef a, int64_t b) { return LLVMBuildSDiv(e->b, a, ci(e, b), ""); }
static LLVMValueRef irem(mj_emit *e, LLVMValueRef a, int64_t b) { return LLVMBuildSRem(e->b, a, ci(e, b), ""); }
static LLVMValueRef imin(mj_emit *e, LLVMValueRef a, LLVMValueRef b) {
    return LLVMBuildSelect(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, a, b, ""), a, b, "");
}
static LLVMValueRef imax(mj_emit *e, LLVMValueRef a, LLVMValueRef b) {
    return LLVMBuildSelect(e->b, LLVMBuildICmp(e->b, LLVMIntSGT, a, b, ""), a, b, "");
}

/* batch_norm's per-channel values, as eager: alpha = w / sqrtf(var + eps),
 * beta = b - mean * alpha (1 and 0.0f without w, b); y = fmaf(x, alpha, beta) */
static void bn_coefs(mj_emit *e, const LLVMValueRef *p, float eps, LLVMValueRef ch, LLVMValueRef *alpha,
                     LLVMValueRef *beta) {
    LLVMValueRef sd = vsqrt(e, fadd(e, load(e, p[1], ch), cf(e, eps)));
    *alpha = fdiv(e, p[2] ? load(e, p[2], ch) : cf(e, 1.0f), sd);
    *beta = fsub(e, p[3] ? load(e, p[3], ch) : cf(e, 0.0f), fmul(e, load(e, p[0], ch), *alpha));
}

void mj_conv_tail_coefs(const mj_cnn_lowering *c, LLVMValueRef o, mj_conv_coefs *k) {
    for (int s = 0; s < c->n_tail; s++)
        if (c->tail[s].op == MJ_OP_BATCH_NORM) bn_coefs(c->e, c->tail[s].p, c->tail[s].eps, o, &k->alpha[s], &k->beta[s]);
}

LLVMValueRef mj_conv_tail_apply(const mj_cnn_lowering *c, const mj_conv_coefs *k, LLVMValueRef v, LLVMValueRef idx,
                                int lanes) {
    mj_emit *e = c->e;
    LLVMValueRef half = lanes ? vsplat(e, cf(e, 0.5f)) : cf(e, 0.5f);
    if (c->fault) v = fadd(e, v, half);
    for (int s = 0; s < c->n_tail; s++) {
        const mj_conv_step *st = &c->tail[s];
        if (st->op == MJ_OP_BATCH_NORM) {
            v = lanes ? vmuladd(e, vsplat(e, k->beta[s]), v, vsplat(e, k->alpha[s])) : vmuladd(e, k->beta[s], v, k->alpha[s]);
        } else if (st->op == MJ_OP_ADD) {
            LLVMValueRef r = lanes ? vload(e, at(e, st->p[0], idx), lanes) : load(e, st->p[0], idx);
            v = st->r_first ? fadd(e, r, v) : fadd(e, v, r);
        } else {
            mj_act act = mj_op_table[st->op].act;
            v = emit_act(e, act, v);
        }
        if (st->fault) v = fadd(e, v, half);
    }
    return v;
}

mj_conv_lowering mj_conv_lowering_of(const mj_graph *g, int32_t id, const float *w, bool scratch, int vw) {
    const mj_node *n = &g->nodes[id];
    MJ_ASSERT(n->op == MJ_OP_CONV2D);
    /* the tile multiplies the zeros too (as eager does): the sparse conv
     * when its nonzero taps are cheaper (SPARSE_FMA_COST) */
    if (w && scratch && mj_conv_sparse_takes(g, id, w, vw)) return MJ_CONV_SPARSE;
    return MJ_CONV_TILED;
}

/* ---- conv2d: a register tile -----------------------------------------
 * OB output channels (of one group) x one vector of output positions of a
 * row stay in registers while the taps run in eager's order: per tap the
 * input elements of the vector's lanes (padding lanes get 0.0f, which is
 * eager's x there) and OB fmas with the broadcast weights. Each lane is
 * one output element: the order of its fmaf chain is eager's.
 *
 * With stride sw along W the lanes' inputs are sw floats apart:
 * sw <= STRIDED_LOAD_MAX loads the sw vectors that span them and keeps
 * every sw-th float (one shuffle, shared by the OB fmas), masked at the
 * row's ends; wider strides gather (mj_conv_row_lanes). (ResNet's 7x7
 * stride-2 stem, before this tile: 46 ms one thread, where PyTorch takes
 * 7.6 ms.) */

/* Widest stride loaded as whole vectors and shuffled: sw vectors per tap
 * for OB fmas; wider strides gather. */
#define STRIDED_LOAD_MAX 4

/* The fewest vector fmas a thread claims at once in column mode (about a
 * microsecond of work: depthwise 3x3 144 channels at 56x56, batch 1, two
 * threads ran 0.58x one thread with a claim per row). */
#define TILE_CLAIM_FMAS 2048

typedef struct tile {
    const mj_cnn_lowering *c;
    int64_t H, W, cg, KH, KW, OB, sh, sw, ph, pw, dh, dw;
    /* rows > 0: the vector holds that many whole output rows from row oh
     * (a plane narrower than half a vector; stride 1 and W = OW, so lane l
     * reads the input at the rows' start + l: see rows_lanes) */
    int64_t rows;
    LLVMValueRef acc[8], wo, xg, yrow[8], yidx[8], oh, b;
    mj_conv_coefs k[8]; /* the tail's, per output channel of the tile */
} tile;

/* mj_conv_row_lanes (lower_cnn.h). For sw <= STRIDED_LOAD_MAX: one load
 * of the sw*vw floats from iw0, then every sw-th (a shuffle: LLVM splits
 * the load into sw vectors and the shuffle into permutes). Off the
 * interior that load is masked; the span's valid floats are one range
 * [lo, hi), so its mask is built from two scalar shifts, not from a
 * compare per lane (on AVX2 the per-lane 64-bit compares were most of the
 * conv's loop). Wider strides gather. */
LLVMValueRef mj_conv_row_lanes(mj_emit *e, LLVMValueRef xr, LLVMValueRef iw0, int64_t sw, int64_t W, int lanes,
                               LLVMValueRef hvalid, float pad, bool interior) {
    LLVMTypeRef i1 = LLVMInt1TypeInContext(e->ctx);
    /* the row pointer may sit before the row (those lanes are off): no inbounds */
    LLVMValueRef ptr = LLVMBuildGEP2(e->b, e->f32, xr, &iw0, 1, "");
    if (sw <= STRIDED_LOAD_MAX) {
        int64_t n = sw * e->vw;
        LLVMTypeRef wide = LLVMVectorType(e->f32, (unsigned)n);
        LLVMValueRef v;
        if (interior) {
            v = LLVMBuildLoad2(e->b, wide, ptr, "");
            LLVMSetAlignment(v, 4);
        } else {
            /* floats [lo, hi) of the span: lo = clamp(-iw0), hi = clamp(W - iw0),
             * hi at most the last lane's float + 1; none on a padding row */
            LLVMValueRef lo = imin(e, imax(e, LLVMBuildNeg(e->b, iw0, ""), ci(e, 0)), ci(e, n));
            LLVMValueRef hi = imin(e, imax(e, isub(e, ci(e, W), iw0), ci(e, 0)), ci(e, (lanes - 1) * sw + 1));
            LLVMValueRef any = LLVMBuildAnd(e->b, hvalid, LLVMBuildICmp(e->b, LLVMIntSLT, lo, hi, ""), "");
            /* with any: 0 <= lo < hi <= n, so both shifts are below n bits
             * (else they may not be, and the select drops them) */
            LLVMTypeRef bits = LLVMIntTypeInContext(e->ctx, (unsigned)n);
            LLVMValueRef ones = LLVMConstAllOnes(bits);
            LLVMValueRef below_hi = LLVMBuildLShr(e->b, ones, LLVMBuildTrunc(e->b, isub(e, ci(e, n), hi), bits, ""), "");
            LLVMValueRef from_lo = LLVMBuildShl(e->b, ones, LLVMBuildTrunc(e->b, lo, bits, ""), "");
            LLVMValueRef mbits = LLVMBuildSelect(e->b, any, LLVMBuildAnd(e->b, below_hi, from_lo, ""), LLVMConstNull(bits), "");
            LLVMValueRef m = LLVMBuildBitCast(e->b, mbits, LLVMVectorType(i1, (unsigned)n), "");
            LLVMValueRef padv[256];
            for (int64_t l = 0; l < n; l++) padv[l] = cf(e, pad);
            LLVMTypeRef tys[2] = {wide, e->ptr}, fty;
            LLVMValueRef fn = intrinsic(e, "llvm.masked.load", tys, 2, &fty);
            LLVMValueRef args[4] = {ptr, LLVMConstInt(e->i32, 4, 0), m, LLVMConstVector(padv, (unsigned)n)};
            v = LLVMBuildCall2(e->b, fty, fn, args, 4, "");
        }
        if (sw == 1) return v;
        LLVMValueRef pick[64];
        for (int l = 0; l < e->vw; l++) pick[l] = LLVMConstInt(e->i32, (unsigned long long)(l * sw), 0);
        return LLVMBuildShuffleVector(e->b, v, LLVMGetPoison(wide), LLVMConstVector(pick, (unsigned)e->vw), "");
    }
    LLVMValueRef idx[64];
    for (int l = 0; l < e->vw; l++) idx[l] = LLVMConstInt(e->i64, (unsigned long long)(l * sw), 0);
    LLVMValueRef iw = LLVMBuildAdd(e->b, vsplat(e, iw0), LLVMConstVector(idx, (unsigned)e->vw), "");
    LLVMValueRef m = LLVMBuildAnd(e->b, LLVMBuildICmp(e->b, LLVMIntSGE, iw, vsplat(e, ci(e, 0)), ""),
                                  LLVMBuildICmp(e->b, LLVMIntSLT, iw, vsplat(e, ci(e, W)), ""), "");
    LLVMTypeRef vi1 = LLVMVectorType(i1, (unsigned)e->vw);
    m = LLVMBuildAnd(e->b, m, lane_mask(e, lanes), "");
    m = LLVMBuildAnd(e->b, m, LLVMBuildSelect(e->b, hvalid, LLVMConstAllOnes(vi1), LLVMConstNull(vi1), ""), "");
    LLVMTypeRef tys[2] = {e->vt, LLVMVectorType(e->ptr, (unsigned)e->vw)}, fty;
    LLVMValueRef fn = intrinsic(e, "llvm.masked.gather", tys, 2, &fty);
    LLVMValueRef args[4] = {LLVMBuildGEP2(e->b, e->f32, xr, &iw, 1, ""), LLVMConstInt(e->i32, 4, 0), m, vsplat(e, cf(e, pad))};
    return LLVMBuildCall2(e->b, fty, fn, args, 4, "");
}

/* Several rows in a vector (tile.rows): lane l is output element (oh + r,
 * ow), r = l / W, ow = l % W, and its tap reads input row ih + r (ih the
 * tap's row for oh) at column ow + iw0: element (ih*W + iw0) + l, valid
 * where both lie inside the input. in_rows (per tap row, lanes < lanes
 * off) then the columns per tap column: compares of constant lane vectors. */
static LLVMValueRef lane_consts(mj_emit *e, int64_t div, int64_t mod) {
    LLVMValueRef k[64];
    for (int l = 0; l < e->vw; l++)
        k[l] = LLVMConstInt(e->i32, (unsigned long long)(div ? l / div : l % mod), 0);
    return LLVMConstVector(k, (unsigned)e->vw);
}

/* vw lanes of the i64 s as i32 (lane offsets within a plane) */
static LLVMValueRef splat32(mj_emit *e, LLVMValueRef s) { return vsplat(e, LLVMBuildTrunc(e->b, s, e->i32, "")); }

/* lanes whose row ih + l/W lies in [0, H), and l < lanes */
static LLVMValueRef rows_in(mj_emit *e, const tile *t, LLVMValueRef ih, int lanes) {
    LLVMValueRef r = lane_consts(e, t->W, 0);
    LLVMValueRef m = LLVMBuildAnd(e->b, LLVMBuildICmp(e->b, LLVMIntSGE, r, splat32(e, isub(e, ci(e, 0), ih)), ""),
                                  LLVMBuildICmp(e->b, LLVMIntSLT, r, splat32(e, isub(e, ci(e, t->H), ih)), ""), "");
    return LLVMBuildAnd(e->b, m, lane_mask(e, lanes), "");
}

static LLVMValueRef rows_lanes(mj_emit *e, const tile *t, LLVMValueRef xc, LLVMValueRef ih, LLVMValueRef iw0,
                               LLVMValueRef in_rows) {
    LLVMValueRef col = lane_consts(e, 0, t->W);
    LLVMValueRef m = LLVMBuildAnd(e->b, LLVMBuildICmp(e->b, LLVMIntSGE, col, splat32(e, isub(e, ci(e, 0), iw0)), ""),
                                  LLVMBuildICmp(e->b, LLVMIntSLT, col, splat32(e, isub(e, ci(e, t->W), iw0)), ""), "");
    m = LLVMBuildAnd(e->b, m, in_rows, "");
    LLVMValueRef off = add(e, mul(e, ih, ci(e, t->W)), iw0);
    /* the start may lie before the plane (its lanes are off): no inbounds */
    LLVMValueRef ptr = LLVMBuildGEP2(e->b, e->f32, xc, &off, 1, "");
    LLVMTypeRef tys[2] = {e->vt, e->ptr}, fty;
    LLVMValueRef fn = intrinsic(e, "llvm.masked.load", tys, 2, &fty);
    LLVMValueRef args[4] = {ptr, LLVMConstInt(e->i32, 4, 0), m, LLVMConstNull(e->vt)};
    return LLVMBuildCall2(e->b, fty, fn, args, 4, "");
}

/* Tap row kh's input row for output row oh: *hvalid whether it lies in
 * [0, H) (else the returned row is row 0, whose lanes the caller drops) */
static LLVMValueRef tap_row(const tile *t, LLVMValueRef xc, LLVMValueRef kh, LLVMValueRef *hvalid) {
    mj_emit *e = t->c->e;
    LLVMValueRef ih = add(e, isub(e, mul(e, t->oh, ci(e, t->sh)), ci(e, t->ph)), mul(e, kh, ci(e, t->dh)));
    *hvalid = LLVMBuildAnd(e->b, LLVMBuildICmp(e->b, LLVMIntSGE, ih, ci(e, 0), ""),
                           LLVMBuildICmp(e->b, LLVMIntSLT, ih, ci(e, t->H), ""), "");
    return at(e, xc, mul(e, LLVMBuildSelect(e->b, *hvalid, ih, ci(e, 0), ""), ci(e, t->W)));
}

/* Output channel j's value v at output positions [ow, ow + lanes) of row
 * oh: + b, the conv's tail, the store */
static void tile_store(const tile *t, int j, LLVMValueRef v, LLVMValueRef ow, int lanes) {
    mj_emit *e = t->c->e;
    if (t->b) v = fadd(e, v, vsplat(e, load(e, t->b, ci(e, j))));
    v = mj_conv_tail_apply(t->c, &t->k[j], v, add(e, t->yidx[j], ow), lanes);
    vstore(e, v, at(e, t->yrow[j], ow), lanes);
}

/* one tap: acc[j] = fmaf(xv, w[o0 + j][widx], acc[j]) */
static void tile_fmas(tile *t, LLVMValueRef xv, LLVMValueRef widx) {
    mj_emit *e = t->c->e;
    int64_t per = t->cg * t->KH * t->KW;
    for (int j = 0; j < t->OB; j++) {
        LLVMValueRef wv = vsplat(e, load(e, t->wo, add(e, widx, ci(e, j * per))));
        LLVMValueRef a = LLVMBuildLoad2(e->b, e->vt, t->acc[j], "");
        LLVMBuildStore(e->b, vmuladd(e, a, xv, wv), t->acc[j]);
    }
}

/* Whether every tap's wide load for the vector of outputs from ow0 lies
 * inside a row of W floats: [ow0*sw - pw, ow0*sw - pw + sw*vw - 1 + reach]
 * (reach: the last tap's offset, (KW-1)*dw; the wide load's last sw - 1
 * floats included). */
static LLVMValueRef row_inside(mj_emit *e, LLVMValueRef ow0, int64_t sw, int64_t pw, int64_t reach, int64_t W) {
    LLVMValueRef lo = isub(e, mul(e, ow0, ci(e, sw)), ci(e, pw));
    LLVMValueRef hi = add(e, lo, ci(e, sw * e->vw - 1 + reach));
    return LLVMBuildAnd(e->b, LLVMBuildICmp(e->b, LLVMIntSGE, lo, ci(e, 0), ""),
                        LLVMBuildICmp(e->b, LLVMIntSLT, hi, ci(e, W), ""), "");
}

/* The tile at output positions [ow0, ow0 + lanes) of row oh (with rows,
 * its R rows from oh). interior: the caller knows every tap's loads lie
 * inside the row (no padding along W), so a tap loads the row's floats as
 * they are (or zeros when its input row is padding): the same floats as
 * the masked load, without its mask. */
static void tile_body(tile *t, LLVMValueRef ow0, int lanes, bool interior) {
    mj_emit *e = t->c->e;
    for (int j = 0; j < t->OB; j++) LLVMBuildStore(e->b, LLVMConstNull(e->vt), t->acc[j]);
    int64_t KK = t->KH * t->KW;
    loop lc = loop_begin(e, ci(e, t->cg));
    LLVMValueRef xc = at(e, t->xg, mul(e, lc.iv, ci(e, t->H * t->W)));
    if (t->rows) {
        /* the taps unrolled: their masks depend on (kh, kw) alone, and
         * LLVM hoists them out of the channel loop */
        for (int64_t kh = 0; kh < t->KH; kh++) {
            LLVMValueRef ih = add(e, isub(e, mul(e, t->oh, ci(e, t->sh)), ci(e, t->ph)), ci(e, kh * t->dh));
            LLVMValueRef in_rows = rows_in(e, t, ih, lanes);
            for (int64_t kw = 0; kw < t->KW; kw++)
                tile_fmas(t, rows_lanes(e, t, xc, ih, ci(e, kw * t->dw - t->pw), in_rows),
                          add(e, mul(e, lc.iv, ci(e, KK)), ci(e, kh * t->KW + kw)));
        }
        loop_end(e, &lc);
    } else {
        loop lkh = loop_begin(e, ci(e, t->KH));
        LLVMValueRef hvalid, xr = tap_row(t, xc, lkh.iv, &hvalid);
        LLVMValueRef wtap = add(e, mul(e, lc.iv, ci(e, KK)), mul(e, lkh.iv, ci(e, t->KW)));
        loop lkw = loop_begin(e, ci(e, t->KW));
        LLVMValueRef iw0 = add(e, isub(e, mul(e, ow0, ci(e, t->sw)), ci(e, t->pw)), mul(e, lkw.iv, ci(e, t->dw)));
        LLVMValueRef xv = mj_conv_row_lanes(e, xr, iw0, t->sw, t->W, lanes, hvalid, 0.0f, interior);
        if (interior) xv = LLVMBuildSelect(e->b, hvalid, xv, LLVMConstNull(e->vt), "");
        tile_fmas(t, xv, add(e, wtap, lkw.iv));
        loop_end(e, &lkw);
        loop_end(e, &lkh);
        loop_end(e, &lc);
    }
    for (int j = 0; j < t->OB; j++) tile_store(t, j, LLVMBuildLoad2(e->b, e->vt, t->acc[j], ""), ow0, lanes);
}

/* A plane narrower than half a vector (7x7: 7 of 16 lanes) puts R whole
 * rows in a vector, when lane l's input is the rows' input + l: stride 1
 * and W = OW (3x3 with padding 1, ...). Else 1. */
static int64_t rows_per_vector(const mj_graph *g, int32_t id, int vw) {
    const mj_node *n = &g->nodes[id];
    const int32_t *a = n->attrs.i;
    int64_t W = g->nodes[n->operands[0]].type.dims[3], OH = n->type.dims[2], OW = n->type.dims[3];
    if (a[MJ_CONV_STRIDE] != 1 || a[MJ_CONV_STRIDE + 1] != 1 || W != OW || 2 * OW > vw) return 1;
    return vw / OW < OH ? vw / OW : OH;
}

bool mj_conv_tile_is_depthwise(const mj_graph *g, int32_t id, int vw) {
    const mj_node *n = &g->nodes[id];
    const int32_t *a = n->attrs.i;
    const mj_type *wt = &g->nodes[n->operands[1]].type;
    int64_t og = wt->dims[0] / a[MJ_CONV_GROUPS];
    return rows_per_vector(g, id, vw) == 1 && wt->dims[1] == 1 && og == 1 && a[MJ_CONV_STRIDE + 1] == 1 &&
           (wt->dims[3] - 1) * a[MJ_CONV_DILATION + 1] < vw;
}

int64_t mj_conv_tile_vectors(const mj_graph *g, int32_t id, int vw) {
    const mj_node *n = &g->nodes[id];
    int64_t OH = n->type.dims[2], OW = n->type.dims[3], R = rows_per_vector(g, id, vw);
    return R > 1 ? (OH + R - 1) / R : OH * ((OW + vw - 1) / vw);
}

/* A depthwise conv (one input channel per output channel, stride 1 along
 * W): a tile has one output channel, so each tap's fma had a load and a
 * mask of its own, and one accumulator waited on each fma's latency. Here
 * nv vectors of a row (from ow0; the last has lanes lanes) run at once:
 * per tap row, the nv + 1 vectors that span their inputs from ow0 - pw are
 * loaded once (masked: padding reads 0.0f), and each tap column's vector
 * is a shuffle of two of them, kw*dw < vw floats on. Each lane's fmaf
 * chain is eager's, taps in (kh, kw) order. */
#define DEPTHWISE_VECTORS(vw) ((vw) >= 16 ? 8 : 4) /* AVX2: half the registers */

static void depthwise_body(tile *t, LLVMValueRef ow0, int nv, int lanes) {
    mj_emit *e = t->c->e;
    LLVMValueRef acc[8], x[9], pick[64];
    MJ_ASSERT(nv <= 8);
    for (int v = 0; v < nv; v++) acc[v] = LLVMConstNull(e->vt);
    for (int64_t kh = 0; kh < t->KH; kh++) {
        LLVMValueRef hvalid, xr = tap_row(t, t->xg, ci(e, kh), &hvalid);
        for (int v = 0; v <= nv; v++)
            x[v] = mj_conv_row_lanes(e, xr, add(e, isub(e, ow0, ci(e, t->pw)), ci(e, (int64_t)v * e->vw)), 1, t->W,
                                     e->vw, hvalid, 0.0f, false);
        for (int64_t kw = 0; kw < t->KW; kw++) {
            for (int l = 0; l < e->vw; l++) pick[l] = LLVMConstInt(e->i32, (unsigned long long)(kw * t->dw + l), 0);
            LLVMValueRef wv = vsplat(e, load(e, t->wo, ci(e, kh * t->KW + kw)));
            for (int v = 0; v < nv; v++)
                acc[v] = vmuladd(e, acc[v],
                                 LLVMBuildShuffleVector(e->b, x[v], x[v + 1], LLVMConstVector(pick, (unsigned)e->vw), ""), wv);
        }
    }
    for (int v = 0; v < nv; v++)
        tile_store(t, 0, acc[v], add(e, ow0, ci(e, (int64_t)v * e->vw)), v == nv - 1 ? lanes : e->vw);
}

static void lower_conv_tiled(const mj_cnn_lowering *c) {
    mj_emit *e = c->e;
    const mj_node *n = &c->g->nodes[c->id];
    const mj_type *xt = &c->g->nodes[n->operands[0]].type, *wt = &c->g->nodes[n->operands[1]].type;
    const int32_t *a = n->attrs.i;
    tile t = {.c = c, .H = xt->dims[2], .W = xt->dims[3], .cg = wt->dims[1], .KH = wt->dims[2], .KW = wt->dims[3],
              .sh = a[MJ_CONV_STRIDE], .sw = a[MJ_CONV_STRIDE + 1], .ph = a[MJ_CONV_PADDING], .pw = a[MJ_CONV_PADDING + 1],
              .dh = a[MJ_CONV_DILATION], .dw = a[MJ_CONV_DILATION + 1]};
    int64_t C = xt->dims[1], O = wt->dims[0], og = O / a[MJ_CONV_GROUPS], OH = n->type.dims[2], OW = n->type.dims[3];
    int64_t per = t.cg * t.KH * t.KW;
    t.OB = og % 8 == 0 ? 8 : og % 4 == 0 ? 4 : og % 2 == 0 ? 2 : 1;
    for (int j = 0; j < t.OB; j++) t.acc[j] = mj_emit_entry_alloca(e, e->vt);
    LLVMValueRef bias = n->n_operands == 3 ? c->ops[2] : NULL;

    int64_t R = rows_per_vector(c->g, c->id, e->vw);
    /* depthwise (depthwise_body): an item is a channel's whole plane, its
     * batch norm coefficients computed once for all its rows */
    bool depthwise = mj_conv_tile_is_depthwise(c->g, c->id, e->vw);
    int64_t nblk = depthwise ? 1 : (OH + R - 1) / R; /* blocks of R rows, the last maybe fewer */

    /* items (image, group of OB output channels, block of output rows),
     * in the order of the loops they replace; in column mode the threads
     * claim them (each writes its own rows), one thread counts them itself */
    int64_t groups = O / t.OB;
    /* A claim takes K consecutive items, at least TILE_CLAIM_FMAS vector
     * fmas: a depthwise item (one channel's row) is a few dozen, and a
     * claim each (a call and an atomic add on a line both threads write)
     * made two threads slower than one. */
    int64_t item_fmas = t.OB * per * (R > 1 ? 1 : (OW + e->vw - 1) / e->vw) * (depthwise ? OH : 1);
    int64_t K = item_fmas >= TILE_CLAIM_FMAS ? 1 : (TILE_CLAIM_FMAS + item_fmas - 1) / item_fmas;
    LLVMValueRef n_items = mul(e, dimv(c, xt->dims[0]), ci(e, groups * nblk)), chunk;
    mj_claim_loop li = mj_emit_claim_begin(e, c->team, idiv(e, add(e, n_items, ci(e, K - 1)), K), &chunk, true);
    LLVMValueRef first = mul(e, chunk, ci(e, K));
    loop lk = loop_range(e, first, imin(e, add(e, first, ci(e, K)), n_items), 1);
    LLVMValueRef item = lk.iv;
    LLVMValueRef img = idiv(e, item, groups * nblk), o0 = mul(e, irem(e, idiv(e, item, nblk), groups), ci(e, t.OB));
    LLVMValueRef blk = irem(e, item, nblk);
    t.oh = mul(e, blk, ci(e, R));
    t.xg = at(e, c->ops[0], mul(e, add(e, mul(e, img, ci(e, C)), mul(e, idiv(e, o0, og), ci(e, t.cg))), ci(e, t.H * t.W)));
    t.wo = at(e, c->ops[1], mul(e, o0, ci(e, per)));
    t.b = bias ? at(e, bias, o0) : NULL;
    for (int j = 0; j < t.OB; j++) mj_conv_tail_coefs(c, add(e, o0, ci(e, j)), &t.k[j]);
    loop lr = {0};
    if (depthwise) { /* every row of the channel */
        lr = loop_begin(e, ci(e, OH));
        t.oh = lr.iv;
    }
    for (int j = 0; j < t.OB; j++) {
        t.yidx[j] = mul(e, add(e, mul(e, add(e, mul(e, img, ci(e, O)), add(e, o0, ci(e, j))), ci(e, OH)), t.oh), ci(e, OW));
        t.yrow[j] = at(e, c->y, t.yidx[j]);
    }
    if (depthwise) {
        /* groups of DEPTHWISE_VECTORS vectors, then what is left */
        int64_t span = DEPTHWISE_VECTORS(e->vw) * e->vw, full = OW / span * span;
        if (full > 0) {
            loop lw = loop_range(e, ci(e, 0), ci(e, full), span);
            depthwise_body(&t, lw.iv, DEPTHWISE_VECTORS(e->vw), e->vw);
            loop_end(e, &lw);
        }
        if (OW > full) {
            int64_t left = OW - full, nv = (left + e->vw - 1) / e->vw;
            depthwise_body(&t, ci(e, full), (int)nv, (int)(left - (nv - 1) * e->vw));
        }
        loop_end(e, &lr);
    } else if (R > 1) {
        t.rows = R;
        int64_t last = OH - (nblk - 1) * R;
        if (last == R) {
            tile_body(&t, ci(e, 0), (int)(R * OW), false);
        } else {
            ifb f = ifelse_begin(e, LLVMBuildICmp(e->b, LLVMIntSLT, blk, ci(e, nblk - 1), ""));
            tile_body(&t, ci(e, 0), (int)(R * OW), false);
            if_else(e, &f);
            t.rows = last;
            tile_body(&t, ci(e, 0), (int)(last * OW), false);
            if_end(e, f.end);
        }
    } else {
        int64_t full = OW / e->vw * e->vw;
        if (full > 0) {
            loop lw = loop_range(e, ci(e, 0), ci(e, full), e->vw);
            if (t.sw <= STRIDED_LOAD_MAX) {
                ifb f = ifelse_begin(e, row_inside(e, lw.iv, t.sw, t.pw, (t.KW - 1) * t.dw, t.W));
                tile_body(&t, lw.iv, e->vw, true);
                if_else(e, &f);
                tile_body(&t, lw.iv, e->vw, false);
                if_end(e, f.end);
            } else {
                tile_body(&t, lw.iv, e->vw, false); /* wider strides gather everywhere */
            }
            loop_end(e, &lw);
        }
        if (OW > full) tile_body(&t, ci(e, full), (int)(OW - full), false);
    }
    loop_end(e, &lk);
    mj_emit_claim_end(e, &li);
}

static bool lower_conv(const mj_cnn_lowering *c) {
    switch ((mj_conv_lowering)c->how) {
    case MJ_CONV_SPARSE:
        MJ_ASSERT(c->conv_weight && c->scratch); /* the plan saw the frozen weight */
        return mj_lower_conv_sparse(c);
    case MJ_CONV_TILED: lower_conv_tiled(c); return true;
    }
    MJ_ASSERT(!"unknown conv lowering");
}

/* per channel alpha and beta (bn_coefs), then y = fmaf(x, alpha, beta) */
static void lower_batch_norm(const mj_cnn_lowering *c) {
    mj_emit *e = c->e;
    const mj_node *n = &c->g->nodes[c->id];
    const mj_type *xt = &c->g->nodes[n->operands[0]].type;
    int64_t C = xt->dims[1], inner = 1;
    for (int d = 2; d < xt->rank; d++) inner *= xt->dims[d];
    LLVMValueRef x = c->ops[0], mean = c->ops[1], var = c->ops[2];
    LLVMValueRef wt = n->n_operands >= 4 ? c->ops[3] : NULL, bs = n->n_operands == 5 ? c->ops[4] : NULL;
    loop lc = loop_begin(e, ci(e, C));
    LLVMValueRef p[4] = {mean, var, wt, bs}, alpha, beta;
    bn_coefs(e, p, n->attrs.f[0], lc.iv, &alpha, &beta);
    loop ln = loop_begin(e, dimv(c, xt->dims[0]));
    LLVMValueRef base = mul(e, add(e, mul(e, ln.iv, ci(e, C)), lc.iv), ci(e, inner));
    LLVMValueRef xs = at(e, x, base), ys = at(e, c->y, base);
    loop li = loop_begin(e, ci(e, inner));
    store(e, vmuladd(e, beta, load(e, xs, li.iv), alpha), ys, li.iv);
    loop_end(e, &li);
    loop_end(e, &ln);
    loop_end(e, &lc);
}

/* adaptive_avg_pool2d: per output element its window [floor(i*H/OH),
 * ceil((i+1)*H/OH)) (and along W), summed in row order, / its size */
static void lower_adaptive_pool(const mj_cnn_lowering *c) {
    mj_emit *e = c->e;
    const mj_node *n = &c->g->nodes[c->id];
    const mj_type *xt = &c->g->nodes[n->operands[0]].type;
    int64_t H = xt->dims[2], W = xt->dims[3], OH = n->type.dims[2], OW = n->type.dims[3];
    LLVMValueRef NC = mul(e, dimv(c, xt->dims[0]), ci(e, xt->dims[1]));
    LLVMValueRef acc = entry_alloca(e);
    loop lp = loop_begin(e, NC);
    LLVMValueRef xs = at(e, c->ops[0], mul(e, lp.iv, ci(e, H * W)));
    LLVMValueRef ys = at(e, c->y, mul(e, lp.iv, ci(e, OH * OW)));
    loop lh = loop_begin(e, ci(e, OH));
    loop lw = loop_begin(e, ci(e, OW));
    LLVMValueRef h0 = idiv(e, mul(e, lh.iv, ci(e, H)), OH);
    LLVMValueRef h1 = idiv(e, add(e, mul(e, add(e, lh.iv, ci(e, 1)), ci(e, H)), ci(e, OH - 1)), OH);
    LLVMValueRef w0 = idiv(e, mul(e, lw.iv, ci(e, W)), OW);
    LLVMValueRef w1 = idiv(e, add(e, mul(e, add(e, lw.iv, ci(e, 1)), ci(e, W)), ci(e, OW - 1)), OW);
    store(e, cf(e, 0.0f), acc, ci(e, 0));
    loop li = loop_range(e, h0, h1, 1);
    LLVMValueRef xr = at(e, xs, mul(e, li.iv, ci(e, W)));
    loop lj = loop_range(e, w0, w1, 1);
    store(e, fadd(e, load(e, acc, ci(e, 0)), load(e, xr, lj.iv)), acc, ci(e, 0));
    loop_end(e, &lj);
    loop_end(e, &li);
    LLVMValueRef divisor = mul(e, isub(e, h1, h0), isub(e, w1, w0));
    store(e, fdiv(e, load(e, acc, ci(e, 0)), LLVMBuildSIToFP(e->b, divisor, e->f32, "")), ys,
          add(e, mul(e, lh.iv, ci(e, OW)), lw.iv));
    loop_end(e, &lw);
    loop_end(e, &lh);
    loop_end(e, &lp);
}

/* ---- max_pool2d and avg_pool2d: a vector of a row's outputs -------------
 * Each lane is one output element and walks the whole KH x KW window in
 * eager's row order; a tap outside the input (padding, or past its end
 * with ceil_mode) reads -inf for max, 0.0f for avg, where eager skips it:
 * max's step (v > m || isnan(v)) && !isnan(m) then keeps m, and the sum
 * (from +0.0f, never -0.0f) plus +0.0f is the sum. So each lane's result
 * is eager's, NaN included (the first NaN stays). The taps' inputs come as
 * in the conv's tile: whole vectors inside the row, masked loads or
 * gathers at its ends. */
typedef struct pool {
    const mj_cnn_lowering *c;
    int64_t H, W, OW, KH, KW, sh, sw, ph, pw;
    bool is_max, count_pad;
    LLVMValueRef xs, ys, oh;
} pool;

static void pool_body(const pool *p, LLVMValueRef ow0, int lanes, bool interior) {
    mj_emit *e = p->c->e;
    LLVMValueRef pad = vsplat(e, cf(e, p->is_max ? -INFINITY : 0.0f));
    LLVMValueRef acc = mj_emit_entry_alloca(e, e->vt);
    LLVMBuildStore(e->b, pad, acc);
    LLVMValueRef h0 = isub(e, mul(e, p->oh, ci(e, p->sh)), ci(e, p->ph));
    LLVMValueRef w0 = isub(e, mul(e, ow0, ci(e, p->sw)), ci(e, p->pw));
    loop lkh = loop_begin(e, ci(e, p->KH));
    LLVMValueRef ih = add(e, h0, lkh.iv);
    LLVMValueRef hvalid = LLVMBuildAnd(e->b, LLVMBuildICmp(e->b, LLVMIntSGE, ih, ci(e, 0), ""),
                                       LLVMBuildICmp(e->b, LLVMIntSLT, ih, ci(e, p->H), ""), "");
    LLVMValueRef xr = at(e, p->xs, mul(e, LLVMBuildSelect(e->b, hvalid, ih, ci(e, 0), ""), ci(e, p->W)));
    loop lkw = loop_begin(e, ci(e, p->KW));
    LLVMValueRef v = mj_conv_row_lanes(e, xr, add(e, w0, lkw.iv), p->sw, p->W, lanes, hvalid, p->is_max ? -INFINITY : 0.0f, interior);
    if (interior) v = LLVMBuildSelect(e->b, hvalid, v, pad, "");
    LLVMValueRef m = LLVMBuildLoad2(e->b, e->vt, acc, "");
    if (p->is_max) {
        LLVMValueRef take = LLVMBuildOr(e->b, LLVMBuildFCmp(e->b, LLVMRealOGT, v, m, ""),
                                        LLVMBuildFCmp(e->b, LLVMRealUNO, v, v, ""), "");
        take = LLVMBuildAnd(e->b, take, LLVMBuildFCmp(e->b, LLVMRealORD, m, m, ""), "");
        m = LLVMBuildSelect(e->b, take, v, m, "");
    } else {
        m = fadd(e, m, v);
    }
    LLVMBuildStore(e->b, m, acc);
    loop_end(e, &lkw);
    loop_end(e, &lkh);
    LLVMValueRef res = LLVMBuildLoad2(e->b, e->vt, acc, "");
    if (!p->is_max) { /* eager's divisor (pool_window in src/nn/cnn.c), per lane */
        LLVMValueRef idx[64];
        for (int l = 0; l < e->vw; l++) idx[l] = LLVMConstInt(e->i64, (unsigned long long)(l * p->sw), 0);
        LLVMValueRef lw0 = LLVMBuildAdd(e->b, vsplat(e, w0), LLVMConstVector(idx, (unsigned)e->vw), "");
        LLVMValueRef hlo = h0, hhi = imin(e, add(e, h0, ci(e, p->KH)), ci(e, p->H + p->ph));
        LLVMValueRef wlo = lw0, whi = LLVMBuildAdd(e->b, lw0, vsplat(e, ci(e, p->KW)), "");
        LLVMValueRef wcap = vsplat(e, ci(e, p->count_pad ? p->W + p->pw : p->W));
        whi = LLVMBuildSelect(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, whi, wcap, ""), whi, wcap, "");
        if (!p->count_pad) {
            hlo = imax(e, h0, ci(e, 0));
            hhi = imin(e, hhi, ci(e, p->H));
            LLVMValueRef zero = vsplat(e, ci(e, 0));
            wlo = LLVMBuildSelect(e->b, LLVMBuildICmp(e->b, LLVMIntSGT, lw0, zero, ""), lw0, zero, "");
        }
        LLVMValueRef div = LLVMBuildMul(e->b, vsplat(e, isub(e, hhi, hlo)), LLVMBuildSub(e->b, whi, wlo, ""), "");
        res = fdiv(e, res, LLVMBuildSIToFP(e->b, div, e->vt, ""));
    }
    vstore(e, res, at(e, p->ys, add(e, mul(e, p->oh, ci(e, p->OW)), ow0)), lanes);
}
static void lower_pool(const mj_cnn_lowering *c) {
    mj_emit *e = c->e;
    const mj_node *n = &c->g->nodes[c->id];
    const mj_type *xt = &c->g->nodes[n->operands[0]].type;
    const int32_t *a = n->attrs.i;
    int64_t OH = n->type.dims[2];
    pool p = {.c = c, .H = xt->dims[2], .W = xt->dims[3], .OW = n->type.dims[3], .KH = a[MJ_POOL_KERNEL],
              .KW = a[MJ_POOL_KERNEL + 1], .sh = a[MJ_POOL_STRIDE], .sw = a[MJ_POOL_STRIDE + 1],
              .ph = a[MJ_POOL_PADDING], .pw = a[MJ_POOL_PADDING + 1], .is_max = n->op == MJ_OP_MAX_POOL2D,
              .count_pad = n->op == MJ_OP_AVG_POOL2D && a[MJ_POOL_COUNT_PAD]};
    loop lp = loop_begin(e, mul(e, dimv(c, xt->dims[0]), ci(e, xt->dims[1])));
    p.xs = at(e, c->ops[0], mul(e, lp.iv, ci(e, p.H * p.W)));
    p.ys = at(e, c->y, mul(e, lp.iv, ci(e, OH * p.OW)));
    loop lh = loop_begin(e, ci(e, OH));
    p.oh = lh.iv;
    int64_t full = p.OW / e->vw * e->vw;
    if (full > 0) {
        loop lw = loop_range(e, ci(e, 0), ci(e, full), e->vw);
        if (p.sw <= STRIDED_LOAD_MAX) { /* as the conv's tile: the wide loads inside the row */
            ifb f = ifelse_begin(e, row_inside(e, lw.iv, p.sw, p.pw, p.KW - 1, p.W));
            pool_body(&p, lw.iv, e->vw, true);
            if_else(e, &f);
            pool_body(&p, lw.iv, e->vw, false);
            if_end(e, f.end);
        } else {
            pool_body(&p, lw.iv, e->vw, false);
        }
        loop_end(e, &lw);
    }
    if (p.OW > full) pool_body(&p, ci(e, full), (int)(p.OW - full), false);
    loop_end(e, &lh);
    loop_end(e, &lp);
}

mj_status mj_lower_cnn(const mj_cnn_lowering *c) {
    switch (c->g->nodes[c->id].op) {
    case MJ_OP_CONV2D: return lower_conv(c) ? MJ_OK : MJ_ERR_NOMEM;
    case MJ_OP_BATCH_NORM: lower_batch_norm(c); return MJ_OK;
    case MJ_OP_MAX_POOL2D:
    case MJ_OP_AVG_POOL2D: lower_pool(c); return MJ_OK;
    case MJ_OP_ADAPTIVE_AVG_POOL2D: lower_adaptive_pool(c); return MJ_OK;
    MJ_CASE_LEAF_OPS:
    MJ_CASE_ACT_OPS:
    MJ_CASE_UNARY_MATH_OPS:
    MJ_CASE_BINARY_OPS:
    MJ_CASE_OTHER_OPS:
    case MJ_OP_COUNT: break;
    }
    MJ_ASSERT(!"not a CNN op");
}
