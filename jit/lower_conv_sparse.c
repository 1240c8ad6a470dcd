/* Frozen conv2d with stride 1 along W, sparse: per output channel a table of
 * its nonzero taps, run over a zero-padded copy of the input (see
 * lower_cnn.h, docs/numerics.md "CNN layers").
 *
 * Per image the input is copied once into the scratch, each channel plane
 * padded to Hp x Wp (H + 2ph, W + 2pw) with zeros, so that the tap (c, kh,
 * kw) of output position (oh, ow) reads element
 *   oh*sh*Wp + ow + off,  off = c'*Hp*Wp + kh*dh*Wp + kw*dw   (c' the input
 * channel, its group's included): always in bounds, 0.0f where eager reads
 * padding. With stride 1 along H the output rows, laid out Wp apart, make
 * one flat run of positions q = oh*Wp + ow reading q + off; the columns
 * ow >= OW between rows are computed and dropped. Stride > 1 along H runs
 * each row by itself.
 *
 * The register tile is V vectors of that run: per tap one broadcast weight
 * and V loads and fmas, each lane its own output element. The taps come
 * from a table (offset, weight) per output channel in eager's order, zero
 * weights left out (NaN and inf are kept), so each lane's fmaf chain is
 * eager's without the zero steps: the frozen contract (exact for finite
 * inputs). A NaN or inf weight meets the padding's 0.0f as in eager.
 *
 * The input channels run in blocks whose rows under a tile fit L1: per
 * block, per tile, every output channel runs the block's taps, its partial
 * sums kept in a row buffer per output channel (Wp apart, as the run)
 * between blocks. Then each row is copied out with + b[o]. The output
 * channels run in blocks too, so that their row buffers stay small.
 *
 * The tile's width and the choice between this and the dense tile of
 * lower_cnn.c come from the measurements in mj_conv_sparse_wanted. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MJ_EMIT_CTX(c) (c)
#include "lower_cnn.h"

#include "jit_internal.h"

static LLVMValueRef isub(mj_emit *e, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildNSWSub(e->b, a, b, ""); }

/* Widest tile in floats (V * vw), for the scratch bound. */
#define SPARSE_TILE_MAX 256

typedef struct geom {
    int64_t C, H, W, O, cg, og, KH, KW, sh, ph, pw, dh, dw, OH, OW, Hp, Wp;
} geom;

static bool geometry(const mj_graph *g, int32_t id, geom *q) {
    const mj_node *n = &g->nodes[id];
    if (n->op != MJ_OP_CONV2D) return false;
    const mj_type *xt = &g->nodes[n->operands[0]].type, *wt = &g->nodes[n->operands[1]].type;
    const int32_t *a = n->attrs.i;
    if (a[MJ_CONV_STRIDE + 1] != 1) return false;
    *q = (geom){.C = xt->dims[1], .H = xt->dims[2], .W = xt->dims[3], .O = wt->dims[0], .cg = wt->dims[1],
                .KH = wt->dims[2], .KW = wt->dims[3], .sh = a[MJ_CONV_STRIDE], .ph = a[MJ_CONV_PADDING],
                .pw = a[MJ_CONV_PADDING + 1], .dh = a[MJ_CONV_DILATION], .dw = a[MJ_CONV_DILATION + 1],
                .OH = n->type.dims[2], .OW = n->type.dims[3]};
    q->og = q->O / a[MJ_CONV_GROUPS];
    q->Hp = q->H + 2 * q->ph;
    q->Wp = q->W + 2 * q->pw;
    /* the tap offsets are int32 */
    return q->C * q->Hp * q->Wp + q->Wp + SPARSE_TILE_MAX < INT32_MAX;
}

/* Input channels per block: the taps of a block, for every output channel,
 * run over one tile of positions before the next block, so the block's
 * input rows under the tile (at most T/Wp + 2 + (KH - 1)*dh rows of Wp
 * floats per channel) stay in L1: about 24 KiB of them. */
static int64_t channel_block(const geom *q) {
    int64_t rows = SPARSE_TILE_MAX / q->Wp + 2 + (q->KH - 1) * q->dh, per = rows * q->Wp * (int64_t)sizeof(float);
    int64_t cb = (24 << 10) / per;
    return cb < 1 ? 1 : cb > q->cg ? q->cg : cb;
}

/* The padded input (C*Hp*Wp, then the tile's overrun: see the bound in
 * lower) and the row buffers (the partial sums), one per output channel. */
static int64_t padded_floats(const geom *q) { return mj_round16(q->C * q->Hp * q->Wp + q->Wp + SPARSE_TILE_MAX); }
static int64_t rows_floats(const geom *q) { return mj_round16(q->OH * q->Wp + SPARSE_TILE_MAX); }

/* Output channels per block: their row buffers take at most 256 KiB, so
 * that they and the padded input can stay in L2 (a block reads the input
 * again). */
static int64_t out_block(const geom *q) {
    int64_t ob = (256 << 10) / (rows_floats(q) * (int64_t)sizeof(float));
    return ob < 1 ? 1 : ob > q->O ? q->O : ob;
}

int64_t mj_conv_sparse_padded_floats(const mj_graph *g, int32_t id, int64_t *per_image) {
    geom q;
    MJ_ASSERT(geometry(g, id, &q));
    *per_image = q.C * q.Hp * q.Wp;
    return mj_round16(q.Wp + SPARSE_TILE_MAX);
}

int64_t mj_conv_sparse_scratch_floats(const mj_graph *g, int32_t id) {
    geom q;
    return geometry(g, id, &q) ? padded_floats(&q) + out_block(&q) * rows_floats(&q) : 0;
}

/* Tile width in vectors: 12 accumulators, the broadcast weight and room
 * for a loaded vector fit even 16 registers (AVX2); no wider than the run.
 * (3x3 64->64 at 56x56, 20% density, AVX-512: 8, 12 and 16 vectors ran
 * within the machine's noise of each other.) */
static int tile_vectors(int vw, int64_t run) {
    int64_t need = (run + vw - 1) / vw;
    return need < 12 ? (int)need : 12;
}

/* A vector fma here costs about 1.4 of the dense tile's (which loads each
 * input vector once for 8 output channels): frozen 3x3 convs, one thread,
 * AVX-512 (Xeon, LLVM rocketlake), sparse / dense time at density d:
 * 64->64 at 56x56: 0.05 0.39 / 1.30 ms (the older tap table), 0.2 1.13 /
 * 3.45, 0.5 3.03 / 5.22, 0.65 2.71 / 3.24, 0.8 3.50 / 3.39, 1.0 4.88 /
 * 3.53; 256->256 at 14x14: 0.3 2.03 / 3.18, 0.5 3.67 / 3.35, 0.8 5.65 /
 * 3.59. Per vector fma that is 1.24 to 1.52 times the dense tile's. */
#define SPARSE_FMA_COST 1.4

bool mj_conv_sparse_wanted(const mj_cnn_lowering *c) {
    return c->conv_weight && c->scratch && mj_conv_sparse_takes(c->g, c->id, c->conv_weight, c->e->vw);
}

bool mj_conv_sparse_takes(const mj_graph *g, int32_t id, const float *w, int vw) {
    geom q;
    if (!geometry(g, id, &q)) return false;
    int64_t per = q.cg * q.KH * q.KW;
    double nz = (double)mj_count_nonzero(w, q.O * per);
    /* vector fmas of the dense tile and of this one (the columns between
     * rows and the tiles' round-up included) */
    double dense = (double)(q.O * per) * (double)(q.OH * ((q.OW + vw - 1) / vw));
    int64_t run = q.sh == 1 ? q.OH * q.Wp : q.OW, T = tile_vectors(vw, run) * vw;
    double sparse = nz * (double)((q.sh == 1 ? 1 : q.OH) * ((run + T - 1) / T) * (T / vw));
    return SPARSE_FMA_COST * sparse <= dense;
}

static LLVMValueRef table(const mj_cnn_lowering *c, const char *what, const void *data, size_t bytes) {
    char name[160];
    snprintf(name, sizeof name, "%s.%s", c->prefix, what);
    return mj_llvm_const_bytes(c->e->m, c->e->ctx, name, data, bytes);
}

/* Output channel o's taps of channel block b are start[o*(nb + 1) + b] ..
 * start[o*(nb + 1) + b + 1] of tap[]: pairs (offset as int32, weight as
 * float bits), eager's order. */
static bool build_taps(const float *w, const geom *q, int64_t cb, int32_t **start_out, int32_t **tap_out,
                       int64_t *n_out) {
    int64_t KK = q->KH * q->KW, per = q->cg * KK, nz = mj_count_nonzero(w, q->O * per), nb = (q->cg + cb - 1) / cb;
    MJ_ASSERT(nz < INT32_MAX / 2);
    int32_t *start = malloc((size_t)(q->O * (nb + 1)) * sizeof *start);
    int32_t *tap = malloc((size_t)(2 * nz + 2) * sizeof *tap);
    if (!start || !tap) {
        free(start);
        free(tap);
        return false;
    }
    int64_t n = 0;
    for (int64_t o = 0; o < q->O; o++) {
        int64_t c0 = o / q->og * q->cg;
        for (int64_t k = 0; k < per; k++) {
            if (k % (cb * KK) == 0) start[o * (nb + 1) + k / (cb * KK)] = (int32_t)n;
            float v = w[o * per + k];
            if (v == 0.0f && !isnan(v)) continue;
            int64_t ch = c0 + k / KK, kh = k / q->KW % q->KH, kw = k % q->KW;
            tap[2 * n] = (int32_t)((ch * q->Hp + kh * q->dh) * q->Wp + kw * q->dw);
            memcpy(&tap[2 * n + 1], &v, sizeof v);
            n++;
        }
        start[o * (nb + 1) + nb] = (int32_t)n;
    }
    tap[2 * n] = tap[2 * n + 1] = 0; /* never empty */
    *start_out = start;
    *tap_out = tap;
    *n_out = n;
    return true;
}

/* The last block's tile straight into y stored padded for the next conv
 * (its rows Wp apart, as the run): run position q is y's plane at q + the
 * padding before row 0. Lanes past the run are not stored; the columns
 * between rows land on y's padding, which the next conv zeroes before it
 * reads (as it zeroes all of it). */
typedef struct direct {
    LLVMValueRef last, dst, bias, o; /* in the last block; dst: y's plane + the padding before row 0 */
    int64_t run;
} direct;

/* <vw x i32> of s */
static LLVMValueRef splat_i32(mj_emit *e, LLVMValueRef s) {
    LLVMTypeRef t = LLVMVectorType(e->i32, (unsigned)e->vw);
    LLVMValueRef v = LLVMBuildInsertElement(e->b, LLVMGetPoison(t), s, ci(e, 0), "");
    return LLVMBuildShuffleVector(e->b, v, LLVMGetPoison(t), LLVMConstNull(t), "");
}

static LLVMValueRef k_i32(mj_emit *e, int64_t v) {
    LLVMValueRef k[64];
    for (int l = 0; l < e->vw; l++) k[l] = LLVMConstInt(e->i32, (unsigned long long)v, 0);
    return LLVMConstVector(k, (unsigned)e->vw);
}

static void tile_direct(const mj_cnn_lowering *c, LLVMValueRef *acc, int V, const direct *d, LLVMValueRef q0) {
    mj_emit *e = c->e;
    mj_conv_coefs k;
    mj_conv_tail_coefs(c, d->o, &k);
    LLVMValueRef bv = d->bias ? vsplat(e, load(e, d->bias, d->o)) : NULL;
    LLVMValueRef lanes[64];
    for (int l = 0; l < e->vw; l++) lanes[l] = LLVMConstInt(e->i32, (unsigned long long)l, 0);
    LLVMValueRef lane = LLVMConstVector(lanes, (unsigned)e->vw);
    LLVMValueRef q32 = LLVMBuildTrunc(e->b, q0, e->i32, ""); /* positions < 2^31: the tap offsets' bound */
    for (int v = 0; v < V; v++) {
        LLVMValueRef val = LLVMBuildLoad2(e->b, e->vt, acc[v], "");
        if (bv) val = fadd(e, val, bv);
        val = mj_conv_tail_apply(c, &k, val, NULL, e->vw);
        LLVMValueRef qs = LLVMBuildAdd(e->b, q32, LLVMConstInt(e->i32, (unsigned long long)v * (unsigned)e->vw, 0), "");
        LLVMValueRef qv = LLVMBuildAdd(e->b, splat_i32(e, qs), lane, "");
        LLVMValueRef in_run = LLVMBuildICmp(e->b, LLVMIntULT, qv, k_i32(e, d->run), "");
        LLVMTypeRef mty[2] = {e->vt, e->ptr}, fty;
        LLVMValueRef fn = intrinsic(e, "llvm.masked.store", mty, 2, &fty);
        LLVMValueRef args[4] = {val, at(e, d->dst, add(e, q0, ci(e, (int64_t)v * e->vw))), LLVMConstInt(e->i32, 4, 0), in_run};
        LLVMBuildCall2(e->b, fty, fn, args, 4, "");
    }
}

/* One tile: positions [q0, q0 + V*vw) of the run at xr (input) and rr (row
 * buffer), taps [t0, t1); with d, the last block stores y (tile_direct). */
static void tile(const mj_cnn_lowering *c, LLVMValueRef *acc, int V, LLVMValueRef taps, LLVMValueRef t0,
                 LLVMValueRef t1, LLVMValueRef xr, LLVMValueRef rr, LLVMValueRef q0, LLVMValueRef first,
                 const direct *d) {
    mj_emit *e = c->e;
    /* +0.0f in the first block, else the sum so far */
    ifb f = ifelse_begin(e, first);
    for (int v = 0; v < V; v++) LLVMBuildStore(e->b, LLVMConstNull(e->vt), acc[v]);
    if_else(e, &f);
    for (int v = 0; v < V; v++) LLVMBuildStore(e->b, vld(e, rr, add(e, q0, ci(e, (int64_t)v * e->vw)), 4), acc[v]);
    if_end(e, f.end);
    loop lt = loop_range(e, t0, t1, 1);
    LLVMValueRef k2 = mul(e, lt.iv, ci(e, 2));
    LLVMValueRef off = LLVMBuildSExt(e->b, ld(e, e->i32, taps, k2), e->i64, "");
    LLVMValueRef wv = vsplat(e, load(e, taps, add(e, k2, ci(e, 1))));
    LLVMValueRef xp = at(e, xr, add(e, q0, off));
    for (int v = 0; v < V; v++) {
        LLVMValueRef xv = vld(e, xp, ci(e, (int64_t)v * e->vw), 4);
        LLVMValueRef a = LLVMBuildLoad2(e->b, e->vt, acc[v], "");
        LLVMBuildStore(e->b, vmuladd(e, a, xv, wv), acc[v]);
    }
    loop_end(e, &lt);
    ifb f2 = {0};
    if (d) {
        f2 = ifelse_begin(e, d->last);
        tile_direct(c, acc, V, d, q0);
        if_else(e, &f2);
    }
    for (int v = 0; v < V; v++)
        vst(e, LLVMBuildLoad2(e->b, e->vt, acc[v], ""), rr, add(e, q0, ci(e, (int64_t)v * e->vw)), 4);
    if (d) if_end(e, f2.end);
}

bool mj_lower_conv_sparse(const mj_cnn_lowering *c) {
    mj_emit *e = c->e;
    const mj_node *n = &c->g->nodes[c->id];
    geom q;
    MJ_ASSERT(geometry(c->g, c->id, &q));
    int64_t cb = channel_block(&q), nb = (q.cg + cb - 1) / cb;
    int32_t *start = NULL, *tap = NULL;
    int64_t nt = 0;
    if (!build_taps(c->conv_weight, &q, cb, &start, &tap, &nt)) return false;
    LLVMValueRef tstart = table(c, "staps.start", start, (size_t)(q.O * (nb + 1)) * sizeof *start);
    LLVMValueRef ttap = table(c, "staps.tap", tap, (size_t)(2 * nt + 2) * sizeof *tap);
    free(start);
    free(tap);

    /* rows: one flat run (stride 1 along H) or one run per output row */
    int64_t nrun = q.sh == 1 ? 1 : q.OH, run = q.sh == 1 ? q.OH * q.Wp : q.OW;
    int V = tile_vectors(e->vw, run);
    int64_t T = (int64_t)V * e->vw, ntile = (run + T - 1) / T, RF = rows_floats(&q);
    MJ_ASSERT(T <= SPARSE_TILE_MAX);
    /* Bounds (the scratch's): a tile reads below (run's start) + ntile*T +
     * off <= OH*Wp + T + (C - 1)*Hp*Wp + (KH - 1)*dh*Wp + (KW - 1)*dw, and
     * (OH - 1)*sh + (KH - 1)*dh < Hp, OW + (KW - 1)*dw = Wp: below
     * C*Hp*Wp + Wp + T. A row buffer takes (nrun - 1)*Wp + ntile*T <=
     * OH*Wp + T. */
    LLVMValueRef xpad = c->scratch, rows = at(e, c->scratch, ci(e, padded_floats(&q)));
    int64_t planes = q.C * q.Hp * q.Wp, N = c->g->nodes[n->operands[0]].type.dims[0];
    LLVMValueRef nimg = N == MJ_DIM_BATCH ? c->batch : ci(e, N);
    LLVMValueRef acc[16];
    for (int v = 0; v < V; v++) acc[v] = mj_emit_entry_alloca(e, e->vt);
    LLVMValueRef bias = n->n_operands == 3 ? c->ops[2] : NULL;

    /* the overrun: zeros (the tiles' dropped columns read it); when x is
     * stored padded for this conv, after its last image */
    LLVMValueRef zero8 = LLVMConstInt(LLVMInt8TypeInContext(e->ctx), 0, 0);
    if (c->x_padded) {
        int64_t per;
        int64_t over = mj_conv_sparse_padded_floats(c->g, c->id, &per);
        MJ_ASSERT(per == planes);
        LLVMBuildMemSet(e->b, at(e, c->ops[0], mul(e, nimg, ci(e, planes))), zero8, ci(e, over * 4), 4);
    } else {
        LLVMBuildMemSet(e->b, at(e, xpad, ci(e, planes)), zero8, ci(e, (padded_floats(&q) - planes) * 4), 4);
    }

    loop ln = loop_begin(e, nimg);
    if (c->x_padded) xpad = at(e, c->ops[0], mul(e, ln.iv, ci(e, planes)));
    { /* the image into the padded planes, row by row: a padding row is
       * zeros, an input row gets zeros left and right (the scratch is
       * shared, so the zeros are written on every call); x stored padded
       * has its rows in place already, only the zeros are written */
        loop lr = loop_begin(e, ci(e, q.C * q.Hp));
        LLVMValueRef ch = LLVMBuildSDiv(e->b, lr.iv, ci(e, q.Hp), "");
        LLVMValueRef h = isub(e, LLVMBuildSRem(e->b, lr.iv, ci(e, q.Hp), ""), ci(e, q.ph));
        LLVMValueRef dst = at(e, xpad, mul(e, lr.iv, ci(e, q.Wp)));
        LLVMValueRef inside = LLVMBuildAnd(e->b, LLVMBuildICmp(e->b, LLVMIntSGE, h, ci(e, 0), ""),
                                           LLVMBuildICmp(e->b, LLVMIntSLT, h, ci(e, q.H), ""), "");
        ifb f = ifelse_begin(e, inside);
        LLVMValueRef src = at(e, c->ops[0], mul(e, add(e, mul(e, add(e, mul(e, ln.iv, ci(e, q.C)), ch), ci(e, q.H)), h),
                                                ci(e, q.W)));
        if (q.pw > 0) {
            LLVMBuildMemSet(e->b, dst, zero8, ci(e, q.pw * 4), 4);
            LLVMBuildMemSet(e->b, at(e, dst, ci(e, q.pw + q.W)), zero8, ci(e, q.pw * 4), 4);
        }
        if (!c->x_padded) LLVMBuildMemCpy(e->b, at(e, dst, ci(e, q.pw)), 4, src, 4, ci(e, q.W * 4));
        if_else(e, &f);
        LLVMBuildMemSet(e->b, dst, zero8, ci(e, q.Wp * 4), 4);
        if_end(e, f.end);
        loop_end(e, &lr);
    }
    /* per block of output channels, per block of input channels, tile and
     * output channel: the block's taps */
    int64_t OB = out_block(&q);
    loop lob = loop_range(e, ci(e, 0), ci(e, q.O), OB);
    LLVMValueRef o_end = add(e, lob.iv, ci(e, OB));
    o_end = LLVMBuildSelect(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, o_end, ci(e, q.O), ""), o_end, ci(e, q.O), "");
    loop lb = loop_begin(e, ci(e, nb));
    LLVMValueRef first = LLVMBuildICmp(e->b, LLVMIntEQ, lb.iv, ci(e, 0), "");
    loop lrun = loop_begin(e, ci(e, nrun));
    LLVMValueRef xr = at(e, xpad, mul(e, lrun.iv, ci(e, q.sh * q.Wp)));
    loop lq = loop_range(e, ci(e, 0), ci(e, ntile * T), T);
    loop lo = loop_range(e, lob.iv, o_end, 1);
    LLVMValueRef si = add(e, mul(e, lo.iv, ci(e, nb + 1)), lb.iv);
    LLVMValueRef t0 = LLVMBuildSExt(e->b, ld(e, e->i32, tstart, si), e->i64, "");
    LLVMValueRef t1 = LLVMBuildSExt(e->b, ld(e, e->i32, tstart, add(e, si, ci(e, 1))), e->i64, "");
    LLVMValueRef rr = at(e, rows, add(e, mul(e, isub(e, lo.iv, lob.iv), ci(e, RF)), mul(e, lrun.iv, ci(e, q.Wp))));
    /* y stored padded for the next conv with rows as long as the run's,
     * and no residual to read in y's own layout: the last block's tiles
     * store y themselves, so no rows go out after it */
    int64_t py = c->pad_y[0], px = c->pad_y[1], HPy = q.OH + 2 * py, WPy = q.OW + 2 * px;
    bool has_add = false;
    for (int k = 0; k < c->n_tail; k++) has_add = has_add || c->tail[k].op == MJ_OP_ADD;
    bool direct_out = (py || px) && q.sh == 1 && WPy == q.Wp && !has_add;
    direct d = {0};
    if (direct_out) {
        d = (direct){.last = LLVMBuildICmp(e->b, LLVMIntEQ, lb.iv, ci(e, nb - 1), ""), .bias = bias, .o = lo.iv,
                     .run = run,
                     .dst = at(e, c->y, add(e, mul(e, add(e, mul(e, ln.iv, ci(e, q.O)), lo.iv), ci(e, HPy * WPy)),
                                            ci(e, py * WPy + px)))};
    }
    tile(c, acc, V, ttap, t0, t1, xr, rr, lq.iv, first, direct_out ? &d : NULL);
    loop_end(e, &lo);
    loop_end(e, &lq);
    loop_end(e, &lrun);
    loop_end(e, &lb);
    /* the block's rows out, + b[o], then the conv's tail */
    lo = loop_range(e, lob.iv, direct_out ? lob.iv : o_end, 1);
    LLVMValueRef bv = bias ? load(e, bias, lo.iv) : NULL;
    mj_conv_coefs k;
    mj_conv_tail_coefs(c, lo.iv, &k);
    LLVMValueRef ybase = mul(e, add(e, mul(e, ln.iv, ci(e, q.O)), lo.iv), ci(e, q.OH * q.OW));
    loop lh = loop_begin(e, ci(e, q.OH));
    LLVMValueRef src = at(e, rows, add(e, mul(e, isub(e, lo.iv, lob.iv), ci(e, RF)), mul(e, lh.iv, ci(e, q.Wp))));
    LLVMValueRef drow = add(e, ybase, mul(e, lh.iv, ci(e, q.OW)));
    /* stored padded for the next conv: its planes are (OH + 2py) x (OW + 2px) */
    LLVMValueRef dst = at(e, c->y, py || px ? add(e, mul(e, add(e, mul(e, add(e, mul(e, ln.iv, ci(e, q.O)), lo.iv), ci(e, HPy)),
                                                                  add(e, lh.iv, ci(e, py))),
                                                          ci(e, WPy)),
                                                  ci(e, px))
                                          : drow);
    loop lw = loop_begin(e, ci(e, q.OW));
    LLVMValueRef v = load(e, src, lw.iv);
    if (bv) v = fadd(e, v, bv);
    store(e, mj_conv_tail_apply(c, &k, v, add(e, drow, lw.iv), 0), dst, lw.iv);
    loop_end(e, &lw);
    loop_end(e, &lh);
    loop_end(e, &lo);
    loop_end(e, &lob);
    loop_end(e, &ln);
    return true;
}
