/* Mask-specialised frozen linear layers (see sparse.h).
 *
 * Layout of the generated code, for a chunk of C rows of x (C = 32 floats,
 * mj_sparse_chunk_rows, then 1 vector width for the rest of the batch):
 *   1. transpose the chunk into scratch: xT[kc][c] for the columns any
 *      nonzero uses (kc compact), rows past the batch zero-padded;
 *   2. for each k-block (a share of each group's nonzeros, about the
 *      columns that fit the L1 cache: sparse_plan.c), for each group of
 *      two output rows j (rows of (nearly) equal nonzero counts, any two:
 *      the plan sorts them): vector accumulators over the chunk, +0.0f in
 *      the first block, else reloaded from yT[j][c]; then acc + xT[k]*w
 *      for the rows' nonzeros in ascending k, the two rows' t-th nonzeros
 *      together (two rows at once hide the add latency; the longer row's
 *      extra nonzeros follow on their own, in the last block); after
 *      the last block + b[j], then the activation (in registers), stored
 *      to yT[j][c];
 *   3. transpose yT back into y (adding the residual there, if any: as y is
 *      stored, so in y's row-major layout, after the activation).
 * A chain of layers (each the next one's x, its only reader) is one
 * function: step 1 for the first layer, step 2 for each layer in turn with
 * the previous layer's yT as its xT (so a later layer indexes xT by its full
 * input column k: an identity column map; the padding lanes past the batch
 * carry harmless finite values that nothing stores), step 3 for the last.
 * The yT of consecutive layers alternate between two scratch regions. The
 * values in between never reach memory in row-major form: two transposes
 * per chunk for the whole chain instead of two per layer.
 * Each output element therefore sees exactly eager's operations in eager's
 * order minus the products with zero weights. The nonzeros, indices, group
 * tables (rows, and per k-block their ranges of entries) and bias are
 * private constant globals of the module. Weights pruned in aligned 1x4
 * blocks are stored as runs of 4 columns (one index, four weights), which
 * cuts the index loads and loop trips by four.
 *
 * This file emits the code; sparse_plan.c decides when the kernel pays off
 * and preprocesses the weight (sparse_plan.h). */
#include "sparse.h"
#include "jit_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <llvm-c/TargetMachine.h>

#include "src/core/internal.h"
#include "emit.h"
#include "sparse_plan.h"

/* ---- the emitter's state --------------------------------------------------- */

/* One layer of a chain: its plan, tables and scratch regions. */
typedef struct sl {
    plan p;
    mj_act act;
    LLVMValueRef g_meta, g_rows, g_pidx, g_pw, g_tidx, g_tw, g_bias, g_colmap;
    LLVMValueRef xT, yT; /* its input (the layer before's yT) and output */
} sl;

typedef struct sb {
    mj_emit e; /* builder, types, mode, vector width (emit.h) */
    const sl *l; /* the layer being emitted */
    sl *L;
    int n; /* layers */
    LLVMValueRef x, y, batch, res; /* res: NULL, or the residual (y's layout) */
    LLVMValueRef acc[MAX_GROUP][4]; /* allocas: per group row, per vector of the chunk */
    LLVMValueRef tile;      /* the vw x vw transpose */
    LLVMValueRef tile_out;  /* the same for yT -> y, + the residual if there is one */
} sb;

/* A vw x vw tile: row t of the source (vw floats at src + t*sstride) becomes
 * column t of the destination (row t at dst + t*dstride). log2(vw) stages;
 * stage h swaps the off-diagonal h x h blocks of every 2h x 2h block. With
 * add, a fifth argument res (same stride as dst) is added to each row
 * before it is stored. */
static LLVMValueRef tile_fn(sb *s, const char *name, bool add_res) {
    char fname[256];
    snprintf(fname, sizeof fname, "%s.tile%s", name, add_res ? ".add" : "");
    LLVMTypeRef params[5] = {s->e.ptr, s->e.i64, s->e.ptr, s->e.i64, s->e.ptr};
    LLVMValueRef fn = LLVMAddFunction(s->e.m, fname,
                                      LLVMFunctionType(LLVMVoidTypeInContext(s->e.ctx), params, add_res ? 5 : 4, 0));
    LLVMSetLinkage(fn, LLVMPrivateLinkage);
    mj_mark_explicit(fn);
    /* one copy, called per tile: inlining 10 copies of 64 shuffles only
     * costs compile time */
    add_attr(s, fn, LLVMAttributeFunctionIndex, "noinline");
    add_attr(s, fn, LLVMAttributeFunctionIndex, "nounwind");
    char width[16];
    snprintf(width, sizeof width, "%d", s->e.vw * 32);
    LLVMAddAttributeAtIndex(fn, LLVMAttributeFunctionIndex,
                            LLVMCreateStringAttribute(s->e.ctx, "min-legal-vector-width", 22, width, (unsigned)strlen(width)));
    LLVMBuilderRef saved = s->e.b;
    s->e.b = LLVMCreateBuilderInContext(s->e.ctx);
    LLVMPositionBuilderAtEnd(s->e.b, LLVMAppendBasicBlockInContext(s->e.ctx, fn, "entry"));
    LLVMValueRef src = LLVMGetParam(fn, 0), ss = LLVMGetParam(fn, 1), dst = LLVMGetParam(fn, 2),
                 ds = LLVMGetParam(fn, 3);
    /* row t of the source (vw floats at src + t*ss) becomes column t of the
     * destination (row t at dst + t*ds) */
    int n = s->e.vw;
    LLVMValueRef r[16];
    for (int t = 0; t < n; t++) r[t] = vld(s, src, mul(s, ci(s, t), ss), 4);
    mj_emit_transpose_tile(&s->e, r);
    for (int t = 0; t < n; t++) {
        if (add_res) r[t] = fadd(s, r[t], vld(s, LLVMGetParam(fn, 4), mul(s, ci(s, t), ds), 4));
        vst(s, r[t], dst, mul(s, ci(s, t), ds), 4);
    }
    LLVMBuildRetVoid(s->e.b);
    LLVMDisposeBuilder(s->e.b);
    s->e.b = saved;
    return fn;
}

/* res NULL: the plain transpose (s->tile); else s->tile_out, adding res */
static void tile_transpose(sb *s, LLVMValueRef src, LLVMValueRef sstride, LLVMValueRef dst, LLVMValueRef dstride,
                           LLVMValueRef res) {
    LLVMTypeRef params[5] = {s->e.ptr, s->e.i64, s->e.ptr, s->e.i64, s->e.ptr};
    LLVMValueRef args[5] = {src, sstride, dst, dstride, res};
    unsigned n = res ? 5 : 4;
    LLVMBuildCall2(s->e.b, LLVMFunctionType(LLVMVoidTypeInContext(s->e.ctx), params, n, 0), res ? s->tile_out : s->tile,
                   args, n, "");
}

static LLVMValueRef const_array(sb *s, const char *name, const char *suffix, LLVMTypeRef elt, const void *data,
                                int64_t n) {
    char gname[320]; /* a layer name (< 256) and a suffix */
    snprintf(gname, sizeof gname, "%s.%s", name, suffix);
    (void)elt; /* every table holds 4-byte elements (float or int32) */
    return mj_llvm_const_bytes(s->e.m, s->e.ctx, gname, data, (size_t)n * 4);
}

/* ---- the chunk ------------------------------------------------------------ */

/* xT[kc][c] = x[i0 + c][colmap[kc]] for c < valid, 0 beyond. */
static void emit_transpose_in(sb *s, int C, LLVMValueRef i0, LLVMValueRef valid, bool full) {
    const plan *p = &s->l->p;
    LLVMValueRef in = ci(s, p->in), Cv = ci(s, C);
    ifb f = {0};
    if (p->identity) {
        if (!full) f = ifelse_begin(s, LLVMBuildICmp(s->e.b, LLVMIntEQ, valid, Cv, ""));
        /* the whole chunk: vw x vw tiles, then the columns left over */
        int64_t kfull = p->in / s->e.vw * s->e.vw;
        loop lk = loop_range(s, ci(s, 0), ci(s, kfull), s->e.vw);
        for (int c0 = 0; c0 < C; c0 += s->e.vw) {
            LLVMValueRef src = at(s, s->x, add(s, mul(s, add(s, i0, ci(s, c0)), in), lk.iv));
            LLVMValueRef dst = at(s, s->l->xT, add(s, mul(s, lk.iv, Cv), ci(s, c0)));
            tile_transpose(s, src, in, dst, Cv, NULL);
        }
        loop_end(s, &lk);
        if (kfull < p->in) {
            loop lr = loop_range(s, ci(s, kfull), in, 1);
            loop lc = loop_range(s, ci(s, 0), Cv, 1);
            LLVMValueRef v = ld(s, s->e.f32, s->x, add(s, mul(s, add(s, i0, lc.iv), in), lr.iv));
            store(s, v, s->l->xT, add(s, mul(s, lr.iv, Cv), lc.iv));
            loop_end(s, &lc);
            loop_end(s, &lr);
        }
        if (full) return;
        if_else(s, &f);
    }
    /* rows one by one (a partial chunk, or a gather of the used columns) */
    LLVMValueRef nc = ci(s, p->ncols);
    loop lc = loop_range(s, ci(s, 0), valid, 1);
    LLVMValueRef xrow = at(s, s->x, mul(s, add(s, i0, lc.iv), in));
    loop lk = loop_range(s, ci(s, 0), nc, 1);
    LLVMValueRef k = p->identity ? lk.iv : LLVMBuildSExt(s->e.b, ld(s, s->e.i32, s->l->g_colmap, lk.iv), s->e.i64, "");
    store(s, ld(s, s->e.f32, xrow, k), s->l->xT, add(s, mul(s, lk.iv, Cv), lc.iv));
    loop_end(s, &lk);
    loop_end(s, &lc);
    /* padding rows: zeros, so the lanes past the batch compute harmless values */
    lc = loop_range(s, valid, Cv, 1);
    lk = loop_range(s, ci(s, 0), nc, 1);
    store(s, cf(s, 0.0f), s->l->xT, add(s, mul(s, lk.iv, Cv), lc.iv));
    loop_end(s, &lk);
    loop_end(s, &lc);
    if (p->identity) if_end(s, f.end);
}

/* y[i0 + c][j] = yT[j][c] (+ res[i0 + c][j]) for c < valid. */
static void emit_transpose_out(sb *s, int C, LLVMValueRef i0, LLVMValueRef valid, bool full) {
    const plan *p = &s->l->p;
    LLVMValueRef out = ci(s, p->out), Cv = ci(s, C);
    ifb f = {0};
    if (!full) f = ifelse_begin(s, LLVMBuildICmp(s->e.b, LLVMIntEQ, valid, Cv, ""));
    int64_t jfull = p->out / s->e.vw * s->e.vw;
    loop lj = loop_range(s, ci(s, 0), ci(s, jfull), s->e.vw);
    for (int c0 = 0; c0 < C; c0 += s->e.vw) {
        LLVMValueRef src = at(s, s->l->yT, add(s, mul(s, lj.iv, Cv), ci(s, c0)));
        LLVMValueRef off = add(s, mul(s, add(s, i0, ci(s, c0)), out), lj.iv);
        tile_transpose(s, src, Cv, at(s, s->y, off), out, s->res ? at(s, s->res, off) : NULL);
    }
    loop_end(s, &lj);
    if (jfull < p->out) {
        loop lr = loop_range(s, ci(s, jfull), out, 1);
        loop lc = loop_range(s, ci(s, 0), Cv, 1);
        LLVMValueRef v = ld(s, s->e.f32, s->l->yT, add(s, mul(s, lr.iv, Cv), lc.iv));
        LLVMValueRef off = add(s, mul(s, add(s, i0, lc.iv), out), lr.iv);
        if (s->res) v = fadd(s, v, ld(s, s->e.f32, s->res, off));
        store(s, v, s->y, off);
        loop_end(s, &lc);
        loop_end(s, &lr);
    }
    if (full) return;
    if_else(s, &f);
    loop lc = loop_range(s, ci(s, 0), valid, 1);
    LLVMValueRef yrow = at(s, s->y, mul(s, add(s, i0, lc.iv), out));
    LLVMValueRef rrow = s->res ? at(s, s->res, mul(s, add(s, i0, lc.iv), out)) : NULL;
    loop lr = loop_range(s, ci(s, 0), out, 1);
    LLVMValueRef v = ld(s, s->e.f32, s->l->yT, add(s, mul(s, lr.iv, Cv), lc.iv));
    if (rrow) v = fadd(s, v, ld(s, s->e.f32, rrow, lr.iv));
    store(s, v, yrow, lr.iv);
    loop_end(s, &lr);
    loop_end(s, &lc);
    if_end(s, f.end);
}

/* v itself, through an empty inline asm that codegen cannot see into (its
 * constraints pick the register class), so no pattern matches across it. */
static LLVMValueRef through_asm(sb *s, LLVMValueRef v, const char *constraints) {
    LLVMTypeRef t = LLVMTypeOf(v);
    LLVMTypeRef fty = LLVMFunctionType(t, &t, 1, 0);
    LLVMValueRef asm_ = LLVMGetInlineAsm(fty, "", 0, constraints, strlen(constraints), 0, 0,
                                         LLVMInlineAsmDialectATT, 0);
    LLVMValueRef call = LLVMBuildCall2(s->e.b, fty, asm_, &v, 1, "");
    /* no memory access: loads around it stay free to move */
    LLVMAddCallSiteAttribute(call, LLVMAttributeFunctionIndex,
                             LLVMCreateEnumAttribute(s->e.ctx, LLVMGetEnumAttributeKindForName("memory", 6), 0));
    LLVMAddCallSiteAttribute(call, LLVMAttributeFunctionIndex,
                             LLVMCreateEnumAttribute(s->e.ctx, LLVMGetEnumAttributeKindForName("nounwind", 8), 0));
    return call;
}

/* The pointer p, opaque. x86 folds an add of two registers into the loads
 * that use it ((base,index) addressing), and an FMA with such a memory
 * operand is unlaminated into two micro-ops at rename: 8 extra per pair of
 * terms, which made the pair loop rename-bound (~29 micro-ops for 8 FMAs at
 * 6 per cycle) instead of FMA-bound. An opaque row pointer leaves the FMAs
 * (base+displacement). */
static LLVMValueRef opaque(sb *s, LLVMValueRef p) { return through_asm(s, p, "=r,0"); }

/* acc[r][v] = acc[r][v] + xT[k][v*vw ..] * w  for one nonzero */
static void emit_term(sb *s, int r, int nv, int C, LLVMValueRef kc, LLVMValueRef wv) {
    LLVMValueRef row = opaque(s, at(s, s->l->xT, mul(s, kc, ci(s, C))));
    for (int v = 0; v < nv; v++) {
        LLVMValueRef a = LLVMBuildLoad2(s->e.b, s->e.vt, s->acc[r][v], "");
        LLVMValueRef xv = vld(s, row, ci(s, (int64_t)v * s->e.vw), (unsigned)s->e.vw * 4);
        LLVMBuildStore(s->e.b, vmuladd(s, a, xv, wv), s->acc[r][v]);
    }
}

static LLVMValueRef kidx(sb *s, LLVMValueRef table, LLVMValueRef i);

static void splat_loaded(sb *s, LLVMValueRef at_w, int n, LLVMValueRef *wv);

/* Weights loaded together and splat by shuffles in registers, instead of
 * a broadcast load each: a pair of single columns (one per row of the
 * group) in one 8-byte load, a 1x4 run's four weights in one 16-byte load.
 * The loop is bound by its loads (every FMA reads its xT vector from
 * memory), and the shuffles use a pipe the FMAs leave free (Zen 3 and
 * Zen 4: the third FP pipe; Intel's AVX2 cores: port 5). On Zen 3, variants
 * in one process: a 768-3072-768 chain at 90% masks, batch 128, 2.45 ->
 * 2.34 ms; W7b4 (1x4 blocks) 5.53 -> 5.31 ms. With 16 lanes (two vectors
 * per chunk) on Zen 4, alternating builds: 3 x 1024 MLP at 10%, batch 64,
 * 0.60-0.61 -> 0.57-0.58 ms unstructured and 0.62-0.63 -> 0.56-0.57 ms in
 * 1x4 blocks; BERT-base layer at 90%, 3.52-3.58 -> 3.40-3.41 ms at batch 1
 * and 31.2-31.3 -> 29.9-30.0 ms at batch 8 (1x4 blocks: 3.55-3.58 ->
 * 3.34-3.41 and 30.8-31.2 -> 29.3 ms). Not measured on Intel's AVX-512
 * cores, whose second FMA unit shares port 5 with the shuffles. */
static bool weights_in_registers(const sb *s) { return s->e.vw == 8 || s->e.vw == 16; }

/* The terms of entry i of an index/weight table pair: its run of columns
 * kc, kc+1, ... in ascending order. */
static void emit_run(sb *s, int r, int nv, int C, LLVMValueRef idx_table, LLVMValueRef w_table, LLVMValueRef i) {
    LLVMValueRef kc = kidx(s, idx_table, i);
    LLVMValueRef w0 = mul(s, i, ci(s, s->l->p.run));
    if (s->l->p.run == 4 && weights_in_registers(s)) { /* one load, four splats */
        LLVMValueRef wv[4];
        splat_loaded(s, at(s, w_table, w0), 4, wv);
        for (int q = 0; q < 4; q++) emit_term(s, r, nv, C, add(s, kc, ci(s, q)), wv[q]);
        return;
    }
    for (int q = 0; q < s->l->p.run; q++)
        emit_term(s, r, nv, C, add(s, kc, ci(s, q)), vsplat(s, ld(s, s->e.f32, w_table, add(s, w0, ci(s, q)))));
}

/* wv[r] = splat of at_w[r], r < n (2 or 4), from one load. The loaded
 * value goes through an empty asm, which keeps LLVM from folding load and
 * shuffles back into n broadcast loads. With 16 lanes the load fills every
 * 128-bit lane with the n weights (a broadcast load), so that each splat
 * is one in-lane shuffle: splatting lane r of an SSE register across 16
 * lanes took two shuffles each (a lane shuffle, then a 64-bit broadcast). */
static void splat_loaded(sb *s, LLVMValueRef at_w, int n, LLVMValueRef *wv) {
    MJ_ASSERT(n == 2 || n == 4);
    LLVMTypeRef gt = LLVMVectorType(s->e.f32, (unsigned)n);
    LLVMTypeRef lt = n == 2 ? LLVMDoubleTypeInContext(s->e.ctx) : gt;
    LLVMValueRef wl = LLVMBuildLoad2(s->e.b, lt, at_w, "");
    LLVMSetAlignment(wl, 4);
    LLVMValueRef lane[16];
    if (s->e.vw == 16) {
        for (int l = 0; l < 16; l++) lane[l] = LLVMConstInt(s->e.i32, (unsigned long long)(l % n), 0);
        LLVMValueRef rep = LLVMBuildShuffleVector(s->e.b, LLVMBuildBitCast(s->e.b, wl, gt, ""), LLVMGetUndef(gt),
                                                  LLVMConstVector(lane, 16), "");
        LLVMValueRef w = through_asm(s, rep, "=v,0"); /* a zmm register */
        for (int r = 0; r < n; r++) {
            for (int l = 0; l < 16; l++) lane[l] = LLVMConstInt(s->e.i32, (unsigned long long)(l / n * n + r), 0);
            wv[r] = LLVMBuildShuffleVector(s->e.b, w, LLVMGetUndef(s->e.vt), LLVMConstVector(lane, 16), "");
        }
        return;
    }
    LLVMValueRef w = LLVMBuildBitCast(s->e.b, through_asm(s, wl, "=x,0"), gt, ""); /* an SSE register */
    for (int r = 0; r < n; r++) {
        for (int l = 0; l < s->e.vw; l++) lane[l] = LLVMConstInt(s->e.i32, (unsigned long long)r, 0);
        wv[r] = LLVMBuildShuffleVector(s->e.b, w, LLVMGetUndef(gt), LLVMConstVector(lane, (unsigned)s->e.vw), "");
    }
}

static void emit_pair(sb *s, int nv, int C, LLVMValueRef it) {
    MJ_ASSERT(s->l->p.gr == 2);
    LLVMValueRef wv[2];
    splat_loaded(s, at(s, s->l->g_pw, it), 2, wv);
    for (int r = 0; r < 2; r++) emit_term(s, r, nv, C, kidx(s, s->l->g_pidx, add(s, it, ci(s, r))), wv[r]);
}

/* acc[r] <-> yT row j */
static void emit_acc_move(sb *s, int r, int nv, int C, LLVMValueRef j, bool load) {
    LLVMValueRef row = at(s, s->l->yT, mul(s, j, ci(s, C)));
    for (int v = 0; v < nv; v++) {
        LLVMValueRef idx = ci(s, (int64_t)v * s->e.vw);
        if (load) LLVMBuildStore(s->e.b, vld(s, row, idx, (unsigned)s->e.vw * 4), s->acc[r][v]);
        else vst(s, LLVMBuildLoad2(s->e.b, s->e.vt, s->acc[r][v], ""), row, idx, (unsigned)s->e.vw * 4);
    }
}

static LLVMValueRef meta(sb *s, LLVMValueRef base, int field) {
    LLVMValueRef v = ld(s, s->e.i32, s->l->g_meta, add(s, base, ci(s, field)));
    return LLVMBuildSExt(s->e.b, v, s->e.i64, "");
}

static LLVMValueRef kidx(sb *s, LLVMValueRef table, LLVMValueRef i) {
    return LLVMBuildSExt(s->e.b, ld(s, s->e.i32, table, i), s->e.i64, "");
}

/* acc[r] = +0.0f (every accumulator starts there, as acc = 0.0f in eager) */
static void emit_acc_zero(sb *s, int r, int nv) {
    for (int v = 0; v < nv; v++) LLVMBuildStore(s->e.b, LLVMConstNull(s->e.vt), s->acc[r][v]);
}

/* After the last k-block: acc[r] + b[j], then a vector activation, in
 * registers, as the accumulators are stored (the dummy row of an odd out
 * reads b[out - 1]; it is never copied into y). */
static void emit_acc_finish(sb *s, int r, int nv, LLVMValueRef j) {
    LLVMValueRef bv = NULL;
    if (s->l->g_bias) {
        LLVMValueRef last = ci(s, s->l->p.out - 1);
        LLVMValueRef jj = LLVMBuildSelect(s->e.b, LLVMBuildICmp(s->e.b, LLVMIntSGT, j, last, ""), last, j, "");
        bv = vsplat(s, ld(s, s->e.f32, s->l->g_bias, jj));
    }
    for (int v = 0; v < nv; v++) {
        LLVMValueRef a = LLVMBuildLoad2(s->e.b, s->e.vt, s->acc[r][v], "");
        if (bv) a = fadd(s, a, bv);
        if (s->l->act != MJ_ACT_NONE) a = emit_act(s, s->l->act, a);
        LLVMBuildStore(s->e.b, a, s->acc[r][v]);
    }
}

/* The next group's yT rows, towards L1 while this group runs: the group
 * loads them as it starts (stores them, in the first block), and the rows
 * of a block's groups are a stream from L2 the hardware does not foresee
 * (the plan orders rows by their counts). The table of rows has one group
 * of dummy rows more (sparse_plan.h), which the last group reads. About 4%
 * of a BERT feed-forward chain on AVX2. */
static void emit_prefetch_next_rows(sb *s, LLVMValueRef g, int C) {
    LLVMTypeRef fty;
    LLVMValueRef fn = intrinsic(s, "llvm.prefetch", &s->e.ptr, 1, &fty);
    LLVMValueRef next = mul(s, add(s, g, ci(s, 1)), ci(s, s->l->p.gr));
    for (int r = 0; r < s->l->p.gr; r++) {
        LLVMValueRef row = at(s, s->l->yT, mul(s, kidx(s, s->l->g_rows, add(s, next, ci(s, r))), ci(s, C)));
        for (int line = 0; line < C * 4 / 64; line++) {
            /* for writing, locality 3 (keep in all levels), data */
            LLVMValueRef args[4] = {at(s, row, ci(s, line * 16)), LLVMConstInt(s->e.i32, 1, 0),
                                    LLVMConstInt(s->e.i32, 3, 0), LLVMConstInt(s->e.i32, 1, 0)};
            LLVMBuildCall2(s->e.b, fty, fn, args, 4, "");
        }
    }
}

/* One layer over the chunk: xT -> yT, with the bias and activation. */
static void emit_layer(sb *s, int C) {
    const plan *p = &s->l->p;
    int nv = C / s->e.vw;

    /* Per k-block, per pair of rows: the accumulators start at +0.0f in the
     * first block and come back from yT in the others; after the last block
     * they get the bias and a vector activation before they go to yT. So yT
     * is written once per block, never zeroed or re-read for the epilogue. */
    loop lb = loop_range(s, ci(s, 0), ci(s, p->n_kblocks), 1);
    LLVMValueRef first = LLVMBuildICmp(s->e.b, LLVMIntEQ, lb.iv, ci(s, 0), "");
    LLVMValueRef lastb = LLVMBuildICmp(s->e.b, LLVMIntEQ, lb.iv, ci(s, p->n_kblocks - 1), "");
    LLVMValueRef middle = LLVMBuildNot(s->e.b, LLVMBuildOr(s->e.b, first, lastb, ""), "");
    loop lg = loop_range(s, ci(s, 0), ci(s, p->n_groups), 1);
    int GR = p->gr;
    LLVMValueRef mb = mul(s, add(s, mul(s, lb.iv, ci(s, p->n_groups)), lg.iv), ci(s, META(GR)));
    LLVMValueRef ms[META(MAX_GROUP)];
    for (int q = 0; q < META(GR); q++) ms[q] = meta(s, mb, q);
    /* nothing of these rows in a middle block (dropped rows, sparse
     * blocks): yT already holds their sums */
    LLVMValueRef none = LLVMBuildICmp(s->e.b, LLVMIntEQ, ms[0], ms[1], "");
    for (int r = 0; r < GR; r++)
        none = LLVMBuildAnd(s->e.b, none, LLVMBuildICmp(s->e.b, LLVMIntEQ, ms[2 + 2 * r], ms[3 + 2 * r], ""), "");
    ifb f = ifelse_begin(s, LLVMBuildAnd(s->e.b, none, middle, ""));
    if_else(s, &f);
    LLVMValueRef g0 = mul(s, lg.iv, ci(s, GR)), j[MAX_GROUP];
    for (int r = 0; r < GR; r++) j[r] = kidx(s, s->l->g_rows, add(s, g0, ci(s, r)));
    emit_prefetch_next_rows(s, lg.iv, C);
    ifb fz = ifelse_begin(s, first);
    for (int r = 0; r < GR; r++) emit_acc_zero(s, r, nv);
    if_else(s, &fz);
    for (int r = 0; r < GR; r++) emit_acc_move(s, r, nv, C, j[r], true);
    if_end(s, fz.end);
    loop lp = loop_range(s, ms[0], ms[1], 1);
    LLVMValueRef it = mul(s, lp.iv, ci(s, GR));
    if (s->l->p.run == 1 && GR == 2 && weights_in_registers(s)) emit_pair(s, nv, C, it);
    else
        for (int r = 0; r < GR; r++) emit_run(s, r, nv, C, s->l->g_pidx, s->l->g_pw, add(s, it, ci(s, r)));
    loop_end(s, &lp);
    for (int r = 0; r < GR; r++) {
        loop lt = loop_range(s, ms[2 + 2 * r], ms[3 + 2 * r], 1);
        emit_run(s, r, nv, C, s->l->g_tidx, s->l->g_tw, lt.iv);
        loop_end(s, &lt);
    }
    if (s->l->g_bias || s->l->act != MJ_ACT_NONE) {
        LLVMBasicBlockRef fin = if_begin(s, lastb);
        for (int r = 0; r < GR; r++) emit_acc_finish(s, r, nv, j[r]);
        if_end(s, fin);
    }
    for (int r = 0; r < GR; r++) emit_acc_move(s, r, nv, C, j[r], false);
    if_end(s, f.end);
    loop_end(s, &lg);
    loop_end(s, &lb);
}

/* The chain over a chunk: the first layer's x in, every layer, the last
 * layer's yT out. */
static void emit_chunk(sb *s, int C, LLVMValueRef i0, LLVMValueRef valid, bool full) {
    s->l = &s->L[0];
    emit_transpose_in(s, C, i0, valid, full);
    for (int l = 0; l < s->n; l++) {
        s->l = &s->L[l];
        emit_layer(s, C);
    }
    emit_transpose_out(s, C, i0, valid, full);
}

LLVMValueRef mj_sparse_emit_linear(LLVMModuleRef M, const char *name, const float *w, const float *b,
                                   int64_t out, int64_t in, mj_act act, bool residual, bool fast, int vw) {
    mj_sparse_layer l = {.w = w, .b = b, .out = out, .in = in, .act = act};
    return mj_sparse_emit_chain(M, name, &l, 1, residual, fast, vw);
}

static void free_layers(sl *L, int n) {
    for (int l = 0; l < n; l++) mj_sparse_plan_free(&L[l].p);
    free(L);
}

LLVMValueRef mj_sparse_emit_chain(LLVMModuleRef M, const char *name, const mj_sparse_layer *layers, int n,
                                  bool residual, bool fast, int vw) {
    if (!M || !name || !layers || n < 1 || (vw != 4 && vw != 8 && vw != 16)) return NULL;
    for (int l = 0; l < n; l++) {
        const mj_sparse_layer *a = &layers[l];
        if (!a->w || a->out <= 0 || a->in <= 0 || a->out > INT32_MAX || a->in > INT32_MAX ||
            (unsigned)a->act >= MJ_ACT_COUNT || (l > 0 && a->in != layers[l - 1].out))
            return NULL;
    }
    sl *L = mj_alloc_array((size_t)n, sizeof *L);
    if (!L) return NULL;
    for (int l = 0; l < n; l++) {
        /* inside the chain xT is the layer before's yT: row k is column k */
        if (!mj_sparse_plan_build(&L[l].p, layers[l].w, layers[l].out, layers[l].in, vw, l > 0)) {
            free_layers(L, l);
            return NULL;
        }
        L[l].act = layers[l].act;
    }
    sb s = {.L = L, .n = n};
    mj_emit_init(&s.e, M, fast, vw, true);
    LLVMTypeRef params[5] = {s.e.ptr, s.e.ptr, s.e.i64, s.e.ptr, s.e.ptr};
    s.e.fn = LLVMAddFunction(M, name, LLVMFunctionType(LLVMVoidTypeInContext(s.e.ctx), params, 5, 0));
    unsigned noalias = LLVMGetEnumAttributeKindForName("noalias", 7);
    LLVMAddAttributeAtIndex(s.e.fn, 2, LLVMCreateEnumAttribute(s.e.ctx, noalias, 0)); /* y */
    LLVMAddAttributeAtIndex(s.e.fn, 4, LLVMCreateEnumAttribute(s.e.ctx, noalias, 0)); /* scratch */
    unsigned nounwind = LLVMGetEnumAttributeKindForName("nounwind", 8);
    LLVMAddAttributeAtIndex(s.e.fn, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(s.e.ctx, nounwind, 0));
    mj_mark_explicit(s.e.fn); /* clean-up passes only: jit/pipeline.c */
    /* Keep our explicit vw-wide vectors whole even where the CPU's tuning
     * prefers narrower ones for auto-vectorised code. */
    char width[16];
    snprintf(width, sizeof width, "%d", s.e.vw * 32);
    LLVMAddAttributeAtIndex(s.e.fn, LLVMAttributeFunctionIndex,
                            LLVMCreateStringAttribute(s.e.ctx, "min-legal-vector-width", 22, width,
                                                      (unsigned)strlen(width)));

    for (int l = 0; l < n; l++) {
        sl *a = &L[l];
        const plan *p = &a->p;
        char lname[256];
        /* one layer keeps the names it always had */
        if (n == 1) snprintf(lname, sizeof lname, "%s", name);
        else snprintf(lname, sizeof lname, "%s.l%d", name, l);
        a->g_meta = const_array(&s, lname, "meta", s.e.i32, p->meta, (int64_t)p->n_kblocks * p->n_groups * META(p->gr));
        a->g_rows = const_array(&s, lname, "rows", s.e.i32, p->rows, ((int64_t)p->n_groups + 1) * p->gr);
        a->g_pidx = const_array(&s, lname, "pidx", s.e.i32, p->pidx, p->n_pairs);
        a->g_pw = const_array(&s, lname, "pw", s.e.f32, p->pw, p->n_pairs * p->run);
        a->g_tidx = const_array(&s, lname, "tidx", s.e.i32, p->tidx, p->n_tail);
        a->g_tw = const_array(&s, lname, "tw", s.e.f32, p->tw, p->n_tail * p->run);
        a->g_bias = layers[l].b ? const_array(&s, lname, "bias", s.e.f32, layers[l].b, p->out) : NULL;
        a->g_colmap = p->identity ? NULL : const_array(&s, lname, "colmap", s.e.i32, p->colmap, p->ncols);
    }

    s.tile = tile_fn(&s, name, false);
    s.tile_out = residual ? tile_fn(&s, name, true) : s.tile;
    s.e.b = LLVMCreateBuilderInContext(s.e.ctx);
    LLVMPositionBuilderAtEnd(s.e.b, LLVMAppendBasicBlockInContext(s.e.ctx, s.e.fn, "entry"));
    for (int r = 0; r < MAX_GROUP; r++)
        for (int v = 0; v < 4; v++) s.acc[r][v] = LLVMBuildAlloca(s.e.b, s.e.vt, "acc");
    s.x = LLVMGetParam(s.e.fn, 0);
    s.y = LLVMGetParam(s.e.fn, 1);
    s.batch = LLVMGetParam(s.e.fn, 2);
    LLVMValueRef scratch = LLVMGetParam(s.e.fn, 3);
    s.res = residual ? LLVMGetParam(s.e.fn, 4) : NULL;
    int C1 = (int)mj_sparse_chunk_rows(s.e.vw);
    MJ_ASSERT(C1 <= MAX_CHUNK);
    /* the first layer's xT, then its yT; a chain's further layers take two
     * yT regions in turn (mj_sparse_chain_scratch_floats) */
    int64_t maxout = 0;
    for (int l = 0; l < n; l++) maxout = layers[l].out > maxout ? layers[l].out : maxout;
    LLVMValueRef region[2];
    region[0] = at(&s, scratch, ci(&s, ((int64_t)L[0].p.ncols * C1 + 15) & ~INT64_C(15)));
    region[1] = at(&s, region[0], ci(&s, (maxout + 1) * C1));
    for (int l = 0; l < n; l++) {
        L[l].xT = l == 0 ? scratch : L[l - 1].yT;
        L[l].yT = region[l % 2];
    }

    /* whole chunks, then one vector at a time (the last one partial) */
    LLVMValueRef nfull = mul(&s, LLVMBuildSDiv(s.e.b, s.batch, ci(&s, C1), ""), ci(&s, C1));
    loop l1 = loop_range(&s, ci(&s, 0), nfull, C1);
    emit_chunk(&s, C1, l1.iv, ci(&s, C1), true);
    loop_end(&s, &l1);
    loop l2 = loop_range(&s, nfull, s.batch, s.e.vw);
    LLVMValueRef left = LLVMBuildNSWSub(s.e.b, s.batch, l2.iv, "");
    LLVMValueRef valid = LLVMBuildSelect(s.e.b, LLVMBuildICmp(s.e.b, LLVMIntSLT, left, ci(&s, s.e.vw), ""), left,
                                         ci(&s, s.e.vw), "");
    emit_chunk(&s, s.e.vw, l2.iv, valid, false);
    loop_end(&s, &l2);
    LLVMBuildRetVoid(s.e.b);
    LLVMDisposeBuilder(s.e.b);
    free_layers(L, n);
    return s.e.fn;
}
