/* Frozen conv2d, sparse: per output channel a table of its nonzero taps,
 * run over a zero-padded copy of the input (see lower_cnn.h,
 * docs/numerics.md "CNN layers").
 *
 * Per image the input is copied once into the scratch, each channel plane
 * padded to Hp x Wp (H + 2ph rows, rows Wp >= W + 2pw apart) with zeros,
 * so that the tap (c, kh, kw) of output position (oh, ow) reads element
 *   oh*sh*Wp + ow + off,  off = c'*Hp*Wp + kh*dh*Wp + kw*dw   (c' the input
 * channel, its group's included): always in bounds, 0.0f where eager reads
 * padding. With stride 1 along H the output rows, laid out Wp apart, make
 * one flat run of positions q = oh*Wp + ow reading q + off; the columns
 * ow >= OW between rows are computed and dropped. Stride > 1 along H runs
 * each row by itself.
 *
 * With stride sw > 1 along W a lane's input is sw floats from its
 * neighbour's, so the copy stores each padded row as sw phase rows (phase
 * p: the row's columns p, p + sw, ...; Wph apart, Wp = sw*Wph), and the
 * tap (c, kh, kw) reads phase kw*dw mod sw from kw*dw / sw on: consecutive
 * floats again, the same floats eager reads. Each output row is a run.
 *
 * The register tile is V vectors of that run (consecutive, or whole
 * output rows when that skips the columns between rows: tiles_of): per
 * tap one broadcast weight and V loads and fmas, each lane its own output
 * element. The taps come
 * from a table (offset, weight) per output channel in eager's order, zero
 * weights left out (NaN and inf are kept), so each lane's fmaf chain is
 * eager's without the zero steps: the frozen contract (exact for finite
 * inputs). A NaN or inf weight meets the padding's 0.0f as in eager.
 *
 * One load per fma makes the loop load-bound, and a vector load at an
 * offset that is not a multiple of 16 floats splits a cache line: such
 * loads ran at half the rate of aligned ones. So where it costs at most a
 * quarter more columns, Wp (each phase row's Wph) is a multiple of 16
 * ("aligned"): a tap's offset is then its column offset (kw*dw, or kw*dw
 * / sw in its phase row) mod 16 floats past a multiple of 16. The taps
 * with shift 0 read the padded input; for each other shift, each tile
 * copies the rows it reads (of the current block of input channels) from
 * the position + shift into a small buffer, where those taps read whole
 * aligned vectors. The floats read are the same.
 *
 * Per tile, the input channels run in blocks whose rows under the tile
 * (and their copies) fit L1: per block, every output channel runs the
 * block's taps, its partial sums kept per output channel between blocks.
 * The last block's sums go into a row buffer per output channel (Wp
 * apart, as the run), copied out at the end with + b[o] and the conv's
 * tail, or straight into y when y is stored padded for the next conv or,
 * aligned with stride 1, in its own layout (tile_plain, tile_direct).
 *
 * In column mode (fewer images than threads) the threads share the conv:
 * each copies its share of the padded rows, then, after a barrier, they
 * claim tiles one at a time (each tile's copy and partial sums in the
 * claiming thread's own region, see mj_cnn_lowering), then, after another
 * barrier, output channels' rows to read out. A tile writes only its own
 * positions, and each element is one thread's with its taps in the same
 * order: the bits do not depend on the thread count.
 *
 * The tile's width and shape (tiles_of) and the choice between this and the
 * dense tile of lower_cnn.c (SPARSE_FMA_COST) come from measurements,
 * quoted where they are used. */
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
    int64_t C, H, W, O, cg, og, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, Hp, Wp;
    /* stride sw > 1 along W: each padded row is stored as sw phase rows,
     * phase p holding its columns p, p + sw, ..., Wph apart (Wp = sw*Wph),
     * so that a tap's lanes read consecutive floats again; sw = 1: one
     * phase, Wph = Wp */
    int64_t Wph;
    int64_t reach; /* a tap's largest offset from its output position */
    /* aligned: Wp is a multiple of 16 and a block's copy has a version per
     * shift of a tap within 16 floats (kw*dw mod 16): shift[k] of version
     * k (ns of them), so that every tap reads whole aligned vectors.
     * Unaligned: one version, shift 0. */
    bool aligned;
    int ns;
    int shift[16];
    int64_t S;  /* floats of a version of one channel's rows under a tile */
    int64_t cb; /* input channels per block */
} geom;

/* The row stride of the padded planes for rows of Wu = W + 2pw floats:
 * rounded up to 16 floats (64 bytes) when that adds at most a quarter
 * (the columns past Wu are computed and dropped), which makes every load
 * of the tap loop aligned (see the header); else Wu itself. */
static int64_t row_stride(int64_t Wu) {
    int64_t r = mj_round16(Wu);
    return r * 4 <= Wu * 5 ? r : Wu;
}

/* Tap column kw's offset in a padded row from its output position's
 * column: its phase row (kw*dw mod sw), then kw*dw / sw floats on. */
static int64_t tap_col(const geom *q, int64_t kw) { return kw * q->dw % q->sw * q->Wph + kw * q->dw / q->sw; }

static bool geometry(const mj_graph *g, int32_t id, geom *q) {
    const mj_node *n = &g->nodes[id];
    if (n->op != MJ_OP_CONV2D) return false;
    const mj_type *xt = &g->nodes[n->operands[0]].type, *wt = &g->nodes[n->operands[1]].type;
    const int32_t *a = n->attrs.i;
    *q = (geom){.C = xt->dims[1], .H = xt->dims[2], .W = xt->dims[3], .O = wt->dims[0], .cg = wt->dims[1],
                .KH = wt->dims[2], .KW = wt->dims[3], .sh = a[MJ_CONV_STRIDE], .sw = a[MJ_CONV_STRIDE + 1],
                .ph = a[MJ_CONV_PADDING], .pw = a[MJ_CONV_PADDING + 1], .dh = a[MJ_CONV_DILATION],
                .dw = a[MJ_CONV_DILATION + 1], .OH = n->type.dims[2], .OW = n->type.dims[3]};
    q->og = q->O / a[MJ_CONV_GROUPS];
    q->Hp = q->H + 2 * q->ph;
    q->Wph = row_stride((q->W + 2 * q->pw + q->sw - 1) / q->sw);
    q->Wp = q->sw * q->Wph;
    q->aligned = q->Wph % 16 == 0;
    q->ns = 1;
    q->shift[0] = 0;
    for (int64_t kw = 0; q->aligned && kw < q->KW; kw++) {
        int sft = (int)(tap_col(q, kw) % 16), k = 0;
        while (k < q->ns && q->shift[k] != sft) k++;
        if (k == q->ns) q->shift[q->ns++] = sft;
    }
    int64_t col = 0; /* the farthest tap column (phase rows are not in kw order) */
    for (int64_t kw = 0; kw < q->KW; kw++) col = tap_col(q, kw) > col ? tap_col(q, kw) : col;
    q->reach = (q->KH - 1) * q->dh * q->Wp + col;
    q->S = mj_round16(SPARSE_TILE_MAX + q->reach);
    /* Input channels per block: the block's rows under a tile (every
     * group's channels of the block: the padded input's and the ns - 1
     * shifted copies) stay in L1 while every output channel runs its taps
     * of the block over the tile: about 40 KiB of them (3x3 64->64 at
     * 56x56, AVX-512: 24, 40, 64 and 96 KiB ran within 10% of each other,
     * 40 the fastest). */
    int64_t G = q->C / q->cg, per = G * q->ns * q->S * (int64_t)sizeof(float);
    q->cb = (40 << 10) / per;
    q->cb = q->cb < 1 ? 1 : q->cb > q->cg ? q->cg : q->cb;
    /* the offsets (input and copy) are int32 */
    return q->C * q->Hp * q->Wp + q->Wp + SPARSE_TILE_MAX + 32 < INT32_MAX && G * q->cb * q->ns * q->S < INT32_MAX / 2;
}

/* The scratch: the padded input (C*Hp*Wp, then the overrun the copies
 * read: see the bound in lower), the rows of the conv's value per output
 * channel (OH*Wp, as the run), read out at the end, and then what each
 * thread working on tiles has of its own: the block's copy and the
 * partial sums of a tile per output channel (between blocks). */
static int64_t padded_floats(const geom *q) { return mj_round16(q->C * q->Hp * q->Wp + q->Wp + SPARSE_TILE_MAX + 32); }
static int64_t copy_floats(const geom *q) { return mj_round16((q->C / q->cg) * q->cb * (q->ns - 1) * q->S); }
static int64_t rows_floats(const geom *q) { return mj_round16(q->OH * q->Wp + SPARSE_TILE_MAX); }

int64_t mj_conv_sparse_padded_floats(const mj_graph *g, int32_t id, int64_t *per_image) {
    geom q;
    MJ_ASSERT(geometry(g, id, &q));
    *per_image = q.C * q.Hp * q.Wp;
    return mj_round16(padded_floats(&q) - q.C * q.Hp * q.Wp);
}

int64_t mj_conv_sparse_thread_floats(const mj_graph *g, int32_t id) {
    geom q;
    return geometry(g, id, &q) ? copy_floats(&q) + q.O * SPARSE_TILE_MAX : 0;
}

int64_t mj_conv_sparse_scratch_floats(const mj_graph *g, int32_t id) {
    geom q;
    return geometry(g, id, &q) ? padded_floats(&q) + copy_floats(&q) + q.O * (SPARSE_TILE_MAX + rows_floats(&q)) : 0;
}

/* Tile width in vectors: with AVX2's 16 registers, 14 accumulators and
 * the broadcast weight, one spare (the fmas take their input from memory);
 * AVX-512's 32 take 16, which spreads each tap's two table loads and loop
 * step over more fmas; no wider than the run. (W8's two 3x3 64->64 at
 * 56x56, 20% density, calls interleaved in one process. AVX-512 (Xeon):
 * 16 vectors ran 2 to 3% faster than 12, 24 no faster than 16. AVX2 (Zen
 * 3): 14 and 15 ran 4% faster than 12, 13 2%, 10 and 8 2% and 6% slower,
 * 16 spilled: 35% slower.) */
static int most_vectors(int vw) { return vw == 16 ? 16 : 14; }

/* The tiles: nrun runs (one flat run of all output rows, Wp apart, when
 * the stride along H is 1, else one per row) of ntile tiles, tile k of a
 * run at position k*span. A tile is V vectors, vector v at position
 * off[v] of the tile: flat, V consecutive vectors; by rows, r output
 * rows of vr vectors each. A flat run also computes the Wp - OW columns
 * between rows; by rows, a row is rounded up to whole vectors instead
 * (56 wide, AVX2: 7 vectors, 56 columns where the flat run computes 64),
 * at the price of fewer fmas per tap when the row's vectors do not fill
 * the tile. Each tap's two table loads and loop step cost about two
 * fmas: the tiling with the fewest fmas plus that wins, flat on a tie. */
typedef struct tiling {
    int V;
    int64_t nrun, run, span, ntile;
    int64_t off[SPARSE_TILE_MAX / 8];
} tiling;

static tiling tiles_of(const geom *q, int vw) {
    bool flat = q->sh == 1 && q->sw == 1; /* with phase rows, a flat run would compute sw times the columns */
    tiling t = {.nrun = flat ? 1 : q->OH, .run = flat ? q->OH * q->Wp : q->OW};
    int64_t most = most_vectors(vw), need = (t.run + vw - 1) / vw;
    t.V = (int)(need < most ? need : most);
    t.span = (int64_t)t.V * vw;
    t.ntile = (t.run + t.span - 1) / t.span;
    for (int v = 0; v < t.V; v++) t.off[v] = (int64_t)v * vw;
    int64_t vr = (q->OW + vw - 1) / vw, r = vr > 0 ? most / vr : 0;
    /* whole rows per tile, dividing OH, within the scratch's tile bound */
    while (r > 0 && (q->OH % r || r * q->Wp > SPARSE_TILE_MAX)) r--;
    if (flat && r > 0 && vr * vw < q->Wp && q->OH / r * (r * vr + 2) < t.ntile * (t.V + 2)) {
        t.V = (int)(r * vr);
        t.span = r * q->Wp;
        t.ntile = q->OH / r;
        for (int v = 0; v < t.V; v++) t.off[v] = v / vr * q->Wp + v % vr * vw;
    }
    return t;
}

/* A vector fma here costs about as much as one of the dense tile's (which
 * loads each input vector once for 8 output channels, but whose rows are
 * masked loads): frozen 3x3 convs, one thread, the two compiled in one
 * process with their calls interleaved, time sparse / dense at density d
 * and, dividing by the ratio of their vector fmas, the cost per fma:
 * AVX-512 (Xeon, LLVM rocketlake; dense 5.1 ms): 64->64 at 56x56, d 0.2
 * 0.25 (1.25), 0.5 0.51 (1.02), 0.65 0.62 (0.95), 0.8 0.77 (0.96), 0.9
 * 0.85 (0.94), 1.0 0.93 (0.93); 256->256 at 14x14, d 0.3 0.31 (1.03), 0.5
 * 0.54 (1.08), 0.65 0.68 (1.05), 0.8 0.81 (1.01). AVX2 forced (8 wide,
 * 16% more fmas than dense for 64->64, 29% for 256->256): 64->64 d 0.65
 * 0.69 (0.92), 0.8 0.81 (0.87), 0.9 0.90 (0.86), 1.0 1.14 (0.98);
 * 256->256 d 0.8 1.10 (1.07). 1.1 is above every cost measured from d 0.5
 * up, so where it picks this the sparse conv measured faster (at 3x3
 * 64->64 on 56x56 up to d 0.9). (The earlier 1.4 was measured against
 * a dense 64->64 timed at 3.4 to 3.5 ms; it takes 5.1 ms here now.) */
#define SPARSE_FMA_COST 1.1

/* A vector the copies move (into the padded planes and the shifted
 * versions) costs about 1.9 of the dense tile's fmas: frozen convs, one
 * thread, the tap table and the tile forced in turn, AVX-512 (Zen 4, LLVM
 * znver4), time sparse / dense against the model's (fmas x 1.1 + copied
 * vectors x c) / dense fmas. Depthwise 3x3 at 15-20% density (where the
 * copies are most of the table's work): 144 channels at 56x56 stride 1
 * measured 1.74 (model 1.04 + 0.88 c: c > 1.81 picks the tile), stride 2
 * 2.15 (c > 0.74), 96 at 112x112 stride 2 2.67 (c > 0.70), 576 at 14x14
 * 0.75 (c < 1.97 picks the table). Dense convs copy little: 3x3 64->64
 * at 56x56, 20/50/80%: 0.29/0.65/1.08 (copies 0.7% of the dense fmas). */
#define SPARSE_COPY_COST 1.9

/* A vector fma of the depthwise tile (mj_conv_tile_is_depthwise: a row's
 * vectors loaded once per tap row, then shuffled) costs about 0.7 of the
 * generic tile's, on which the two costs above were measured: frozen
 * depthwise convs, one thread, AVX-512 (Zen 4, LLVM znver4), the tile and
 * the table forced in turn, at density 0.1/0.2/0.35. Measured table/tile
 * over the model's ratio came out 1.28-1.57 in all eight shapes: 3x3 at
 * 32x112x112, 144x56x56, 192x28x28, 384x14x14, 576x14x14, 5x5 at
 * 240x28x28, 480x14x14, 672x14x14. With 1.0 the table took 3x3 convs on
 * 14x14 and 28x28 planes, 1.4-1.5x slower than the tile there (576x14x14
 * at 0.2: 53.2 against 34.8 us), and frozen EfficientNet-B0 ran slower
 * than exact. The 5x5 convs on 14x14 planes still take the table, 2.1-2.4x
 * faster than the tile at 0.1-0.2. */
#define DEPTHWISE_TILE_COST 0.7

/* The fewest items a conv's threads claim (tiles, or chunks of a tile's
 * output channels): MobileNetV2's 1x1 convs on 7x7 planes have one tile,
 * and on two threads frozen MobileNetV2 ran 0.96x one thread. */
#define SPARSE_MIN_ITEMS 8

bool mj_conv_sparse_takes(const mj_graph *g, int32_t id, const float *w, int vw) {
    geom q;
    if (!geometry(g, id, &q)) return false;
    int64_t per = q.cg * q.KH * q.KW;
    double nz = (double)mj_count_nonzero(w, q.O * per);
    /* vector fmas of the dense tile and of this one (the columns between
     * rows and the tiles' round-up included) */
    double dense = (double)(q.O * per) * (double)mj_conv_tile_vectors(g, id, vw) *
                   (mj_conv_tile_is_depthwise(g, id, vw) ? DEPTHWISE_TILE_COST : 1.0);
    tiling t = tiles_of(&q, vw);
    double sparse = nz * (double)(t.nrun * t.ntile * t.V);
    /* vectors copied: the padded input, then per tile each channel's
     * shifted versions (a depthwise conv has few taps per copied channel) */
    int64_t len = mj_round16(t.span + q.reach);
    double copied = (double)(q.C * q.Hp * q.Wp) / vw +
                    (double)(t.nrun * t.ntile) * (double)q.C * (double)(q.ns - 1) * (double)((len + vw - 1) / vw);
    return SPARSE_FMA_COST * sparse + SPARSE_COPY_COST * copied <= dense;
}

static LLVMValueRef table(const mj_cnn_lowering *c, const char *what, const void *data, size_t bytes) {
    char name[160];
    snprintf(name, sizeof name, "%s.%s", c->prefix, what);
    return mj_llvm_const_bytes(c->e->m, c->e->ctx, name, data, bytes);
}

/* Output channel o's taps of channel block b are start[o*(nb + 1) + b] ..
 * start[o*(nb + 1) + b + 1] of tap[]: pairs (offset as int32, weight as
 * float bits), eager's order. The offset is into the block's copy: the
 * version of its channel (its group's and its own place in the block)
 * for the tap's shift, at the tap's offset in the plane less the shift. */
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
            int64_t ch = k / KK, kh = k / q->KW % q->KH, kw = k % q->KW, slot = c0 / q->cg * cb + ch % cb;
            int sft = q->aligned ? (int)(tap_col(q, kw) % 16) : 0, ver = 0;
            while (q->shift[ver] != sft) ver++;
            MJ_ASSERT(ver < q->ns);
            int64_t in = kh * q->dh * q->Wp + tap_col(q, kw) - sft;
            tap[2 * n] = ver == 0 ? (int32_t)((c0 + ch) * q->Hp * q->Wp + in) /* the padded input itself */
                                  : (int32_t)(((slot * (q->ns - 1) + ver - 1) * q->S + in) | 1);
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
    LLVMValueRef dst, bias, o; /* dst: y's plane + the padding before row 0 */
    int64_t run;
    /* plain: y in its own layout (aligned, stride 1): each vector lies in
     * one row (Wp and the tile's start are multiples of vw), its lanes
     * before OW go to y's row at element ybase + oh*OW + ow, where the
     * tail's residual is read too */
    bool plain;
    LLVMValueRef ybase;
    int64_t Wp, OH, OW;
} direct;

/* The first n lanes of accumulator a, + bias and the conv's tail, into y
 * at element idx (where the tail's residual is read too). */
static void store_lanes(const mj_cnn_lowering *c, const mj_conv_coefs *k, LLVMValueRef a, LLVMValueRef bv,
                        LLVMValueRef idx, int n) {
    mj_emit *e = c->e;
    LLVMValueRef val = LLVMBuildLoad2(e->b, e->vt, a, "");
    if (bv) val = fadd(e, val, bv);
    vstore(e, mj_conv_tail_apply(c, k, val, idx, n), at(e, c->y, idx), n);
}

/* n lanes of a row of partial sums at src + off, + bias and the conv's
 * tail (its residual read at element drow + off of y), to dst + off. */
static void rows_out(const mj_cnn_lowering *c, const mj_conv_coefs *k, LLVMValueRef src, LLVMValueRef dst,
                     LLVMValueRef drow, LLVMValueRef off, LLVMValueRef bv, int n) {
    mj_emit *e = c->e;
    LLVMValueRef v = vload(e, at(e, src, off), n);
    if (bv) v = fadd(e, v, bv);
    vstore(e, mj_conv_tail_apply(c, k, v, add(e, drow, off), n), at(e, dst, off), n);
}

static void tile_plain(const mj_cnn_lowering *c, LLVMValueRef *acc, int V, const int64_t *voff, const direct *d,
                       LLVMValueRef q0) {
    mj_emit *e = c->e;
    mj_conv_coefs k;
    mj_conv_tail_coefs(c, d->o, &k);
    LLVMValueRef bv = d->bias ? vsplat(e, load(e, d->bias, d->o)) : NULL;
    int part = (int)(d->OW % e->vw);
    for (int v = 0; v < V; v++) {
        LLVMValueRef qv = add(e, q0, ci(e, voff[v]));
        LLVMValueRef oh = LLVMBuildUDiv(e->b, qv, ci(e, d->Wp), ""), ow = LLVMBuildURem(e->b, qv, ci(e, d->Wp), "");
        LLVMValueRef idx = add(e, d->ybase, add(e, mul(e, oh, ci(e, d->OW)), ow));
        LLVMValueRef in_rows = LLVMBuildICmp(e->b, LLVMIntULT, oh, ci(e, d->OH), "");
        LLVMValueRef full = LLVMBuildICmp(e->b, LLVMIntSLE, ow, ci(e, d->OW - e->vw), "");
        ifb f = ifelse_begin(e, LLVMBuildAnd(e->b, in_rows, full, ""));
        store_lanes(c, &k, acc[v], bv, idx, e->vw);
        if_else(e, &f);
        if (part) { /* the row's last OW % vw lanes */
            LLVMValueRef last = LLVMBuildICmp(e->b, LLVMIntEQ, ow, ci(e, d->OW - part), "");
            ifb g = ifelse_begin(e, LLVMBuildAnd(e->b, in_rows, last, ""));
            store_lanes(c, &k, acc[v], bv, idx, part);
            if_else(e, &g);
            if_end(e, g.end);
        }
        if_end(e, f.end);
    }
}

/* val's lanes at run positions q0 + off + l below run, to dst (the run's
 * position q0 + off); positions < 2^31: the tap offsets' bound */
static void store_in_run(mj_emit *e, LLVMValueRef val, LLVMValueRef dst, LLVMValueRef q0, int64_t off, int64_t run) {
    LLVMValueRef lanes[64];
    for (int l = 0; l < e->vw; l++) lanes[l] = LLVMConstInt(e->i32, (unsigned long long)l, 0);
    LLVMValueRef qs = LLVMBuildTrunc(e->b, add(e, q0, ci(e, off)), e->i32, "");
    LLVMValueRef qv = LLVMBuildAdd(e->b, vsplat(e, qs), LLVMConstVector(lanes, (unsigned)e->vw), "");
    LLVMValueRef in_run =
        LLVMBuildICmp(e->b, LLVMIntULT, qv, vsplat(e, LLVMConstInt(e->i32, (unsigned long long)run, 0)), "");
    LLVMTypeRef mty[2] = {e->vt, e->ptr}, fty;
    LLVMValueRef fn = intrinsic(e, "llvm.masked.store", mty, 2, &fty);
    LLVMValueRef args[4] = {val, at(e, dst, add(e, q0, ci(e, off))), LLVMConstInt(e->i32, 4, 0), in_run};
    LLVMBuildCall2(e->b, fty, fn, args, 4, "");
}

static void tile_direct(const mj_cnn_lowering *c, LLVMValueRef *acc, int V, const int64_t *voff, const direct *d,
                        LLVMValueRef q0) {
    mj_emit *e = c->e;
    mj_conv_coefs k;
    mj_conv_tail_coefs(c, d->o, &k);
    LLVMValueRef bv = d->bias ? vsplat(e, load(e, d->bias, d->o)) : NULL;
    for (int v = 0; v < V; v++) {
        LLVMValueRef val = LLVMBuildLoad2(e->b, e->vt, acc[v], "");
        if (bv) val = fadd(e, val, bv);
        store_in_run(e, mj_conv_tail_apply(c, &k, val, NULL, e->vw), d->dst, q0, voff[v], d->run);
    }
}

/* One tile: V vectors at positions q0 + voff[v] of the run, taps [t0, t1) at xr
 * (the padded input at the tile) or, aligned, at the block's copy cp
 * for odd offsets (the offset less its low 4 bits); the partial sums in part between blocks (first: none
 * yet; last: the last block), the last block's into rr (the output
 * channel's rows at the run) or, with d, y itself (tile_direct). */
static void tile(const mj_cnn_lowering *c, LLVMValueRef *acc, int V, const int64_t *voff, LLVMValueRef taps, LLVMValueRef t0,
                 LLVMValueRef t1, LLVMValueRef xr, LLVMValueRef cp, LLVMValueRef part, LLVMValueRef rr,
                 LLVMValueRef q0, LLVMValueRef first, LLVMValueRef last, const direct *d, int64_t row_run) {
    mj_emit *e = c->e;
    /* +0.0f in the first block, else the sum so far */
    ifb f = ifelse_begin(e, first);
    for (int v = 0; v < V; v++) LLVMBuildStore(e->b, LLVMConstNull(e->vt), acc[v]);
    if_else(e, &f);
    for (int v = 0; v < V; v++) LLVMBuildStore(e->b, vld(e, part, ci(e, (int64_t)v * e->vw), 4), acc[v]);
    if_end(e, f.end);
    loop lt = loop_range(e, t0, t1, 1);
    LLVMValueRef k2 = mul(e, lt.iv, ci(e, 2));
    LLVMValueRef off = LLVMBuildSExt(e->b, ld(e, e->i32, taps, k2), e->i64, "");
    LLVMValueRef wv = vsplat(e, load(e, taps, add(e, k2, ci(e, 1))));
    LLVMValueRef xp = at(e, xr, off);
    if (cp) { /* aligned: odd offsets are into the copy, the low bits dropped */
        LLVMValueRef in_copy = LLVMBuildTrunc(e->b, off, LLVMInt1TypeInContext(e->ctx), "");
        LLVMValueRef base = LLVMBuildSelect(e->b, in_copy, cp, xr, "");
        xp = at(e, base, LLVMBuildAnd(e->b, off, ci(e, ~INT64_C(15)), ""));
    }
    for (int v = 0; v < V; v++) {
        LLVMValueRef xv = vld(e, xp, ci(e, voff[v]), 4);
        LLVMValueRef a = LLVMBuildLoad2(e->b, e->vt, acc[v], "");
        LLVMBuildStore(e->b, vmuladd(e, a, xv, wv), acc[v]);
    }
    loop_end(e, &lt);
    ifb fl = ifelse_begin(e, last);
    if (d && d->plain) {
        tile_plain(c, acc, V, voff, d, q0);
    } else if (d) {
        tile_direct(c, acc, V, voff, d, q0);
    } else if (row_run) {
        /* a run per output row: only its row_run positions, since the
         * tile's last vector may reach past the rows' stride into the next
         * row, another item (another thread's in column mode) */
        for (int v = 0; v < V; v++) store_in_run(e, LLVMBuildLoad2(e->b, e->vt, acc[v], ""), rr, q0, voff[v], row_run);
    } else {
        for (int v = 0; v < V; v++)
            vst(e, LLVMBuildLoad2(e->b, e->vt, acc[v], ""), rr, add(e, q0, ci(e, voff[v])), 4);
    }
    if_else(e, &fl);
    for (int v = 0; v < V; v++) vst(e, LLVMBuildLoad2(e->b, e->vt, acc[v], ""), part, ci(e, (int64_t)v * e->vw), 4);
    if_end(e, fl.end);
}

bool mj_lower_conv_sparse(const mj_cnn_lowering *c) {
    mj_emit *e = c->e;
    const mj_node *n = &c->g->nodes[c->id];
    geom q;
    MJ_ASSERT(geometry(c->g, c->id, &q));
    int64_t cb = q.cb, nb = (q.cg + cb - 1) / cb, G = q.C / q.cg;
    int32_t *start = NULL, *tap = NULL;
    int64_t nt = 0;
    if (!build_taps(c->conv_weight, &q, cb, &start, &tap, &nt)) return false;
    LLVMValueRef tstart = table(c, "staps.start", start, (size_t)(q.O * (nb + 1)) * sizeof *start);
    LLVMValueRef ttap = table(c, "staps.tap", tap, (size_t)(2 * nt + 2) * sizeof *tap);
    free(start);
    free(tap);

    tiling tl = tiles_of(&q, e->vw);
    int V = tl.V;
    int64_t T = tl.span, nrun = tl.nrun, ntile = tl.ntile, RF = rows_floats(&q);
    MJ_ASSERT(T <= SPARSE_TILE_MAX && (int64_t)V * e->vw <= SPARSE_TILE_MAX);
    /* Bounds: the tile at q0 of run r reads, per channel of the block,
     * positions r*sh*Wp + q0 + [0, T + (KH - 1)*dh*Wp + (KW - 1)*dw) of
     * its plane (T its span): the block's copy holds them (S floats per
     * version, version k the positions + shift[k], a tap reading its
     * version at its offset less the shift: a multiple of 16 when
     * aligned). The last of them is below OH*Wp + T + (KH - 1)*dh*Wp +
     * (KW - 1)*dw, and (OH - 1)*sh + (KH - 1)*dh < Hp, OW + (KW - 1)*dw =
     * W + 2pw <= Wp: a copy reads the padded input below C*Hp*Wp + Wp + T
     * + 16 + 15. A row buffer takes (nrun - 1)*Wp + ntile*T <= OH*Wp + T
     * (by rows: OH*Wp). */
    int64_t PF = padded_floats(&q), CF = copy_floats(&q);
    const mj_emit_team *team = c->team;
    MJ_ASSERT(c->thread_stride >= CF + q.O * SPARSE_TILE_MAX);
    LLVMValueRef xpad = c->scratch, rows = at(e, c->scratch, ci(e, PF));
    LLVMValueRef cp = at(e, rows, add(e, ci(e, q.O * RF), mul(e, team->tid, ci(e, c->thread_stride))));
    LLVMValueRef parts = at(e, cp, ci(e, CF));
    int64_t planes = q.C * q.Hp * q.Wp, N = c->g->nodes[n->operands[0]].type.dims[0];
    LLVMValueRef nimg = N == MJ_DIM_BATCH ? c->batch : ci(e, N);
    LLVMValueRef acc[SPARSE_TILE_MAX / 8];
    for (int v = 0; v < V; v++) acc[v] = mj_emit_entry_alloca(e, e->vt);
    LLVMValueRef bias = n->n_operands == 3 ? c->ops[2] : NULL;

    /* the overrun: zeros (the tiles' dropped columns read it); when x is
     * stored padded for this conv, after its last image */
    LLVMValueRef zero8 = LLVMConstInt(LLVMInt8TypeInContext(e->ctx), 0, 0);
    LLVMBasicBlockRef first_thread = if_begin(e, LLVMBuildICmp(e->b, LLVMIntEQ, team->tid, ci(e, 0), ""));
    if (c->x_padded) {
        int64_t per;
        int64_t over = mj_conv_sparse_padded_floats(c->g, c->id, &per);
        MJ_ASSERT(per == planes);
        LLVMBuildMemSet(e->b, at(e, c->ops[0], mul(e, nimg, ci(e, planes))), zero8, ci(e, over * 4), 4);
    } else {
        LLVMBuildMemSet(e->b, at(e, xpad, ci(e, planes)), zero8, ci(e, (PF - planes) * 4), 4);
    }
    if_end(e, first_thread);

    loop ln = loop_begin(e, nimg);
    if (c->x_padded) xpad = at(e, c->ops[0], mul(e, ln.iv, ci(e, planes)));
    { /* the image into the padded planes, row by row: a padding row is
       * zeros, an input row gets zeros left and right (the scratch is
       * shared, so the zeros are written on every call); x stored padded
       * has its rows in place already, only the zeros are written */
        LLVMValueRef r0, nr;
        mj_emit_share(e, team, ci(e, q.C * q.Hp), &r0, &nr);
        loop lr = loop_range(e, r0, add(e, r0, nr), 1);
        LLVMValueRef ch = LLVMBuildSDiv(e->b, lr.iv, ci(e, q.Hp), "");
        LLVMValueRef h = isub(e, LLVMBuildSRem(e->b, lr.iv, ci(e, q.Hp), ""), ci(e, q.ph));
        LLVMValueRef dst = at(e, xpad, mul(e, lr.iv, ci(e, q.Wp)));
        LLVMValueRef inside = LLVMBuildAnd(e->b, LLVMBuildICmp(e->b, LLVMIntSGE, h, ci(e, 0), ""),
                                           LLVMBuildICmp(e->b, LLVMIntSLT, h, ci(e, q.H), ""), "");
        ifb f = ifelse_begin(e, inside);
        LLVMValueRef src = at(e, c->ops[0], mul(e, add(e, mul(e, add(e, mul(e, ln.iv, ci(e, q.C)), ch), ci(e, q.H)), h),
                                                ci(e, q.W)));
        if (q.sw > 1) { /* phase row p, float j: padded column j*sw + p */
            MJ_ASSERT(!c->x_padded); /* the plan stores values padded only for stride 1 along W */
            LLVMValueRef on = LLVMConstInt(LLVMInt1TypeInContext(e->ctx), 1, 0);
            int64_t full = q.Wph / e->vw * e->vw;
            for (int64_t p = 0; p < q.sw; p++) {
                LLVMValueRef prow = at(e, dst, ci(e, p * q.Wph));
                if (full > 0) {
                    loop lj = loop_range(e, ci(e, 0), ci(e, full), e->vw);
                    LLVMValueRef iw = isub(e, add(e, mul(e, lj.iv, ci(e, q.sw)), ci(e, p)), ci(e, q.pw));
                    vstore(e, mj_conv_row_lanes(e, src, iw, q.sw, q.W, e->vw, on, 0.0f, false), at(e, prow, lj.iv), e->vw);
                    loop_end(e, &lj);
                }
                if (q.Wph > full) {
                    int part = (int)(q.Wph - full);
                    LLVMValueRef iw = ci(e, full * q.sw + p - q.pw);
                    vstore(e, mj_conv_row_lanes(e, src, iw, q.sw, q.W, part, on, 0.0f, false), at(e, prow, ci(e, full)), part);
                }
            }
        } else {
            if (q.pw > 0) LLVMBuildMemSet(e->b, dst, zero8, ci(e, q.pw * 4), 4);
            if (q.Wp > q.pw + q.W)
                LLVMBuildMemSet(e->b, at(e, dst, ci(e, q.pw + q.W)), zero8, ci(e, (q.Wp - q.pw - q.W) * 4), 4);
            if (!c->x_padded) LLVMBuildMemCpy(e->b, at(e, dst, ci(e, q.pw)), 4, src, 4, ci(e, q.W * 4));
        }
        if_else(e, &f);
        LLVMBuildMemSet(e->b, dst, zero8, ci(e, q.Wp * 4), 4);
        if_end(e, f.end);
        loop_end(e, &lr);
    }
    mj_emit_barrier(e, team);
    /* per tile, per block of input channels: the block's copy, then every
     * output channel's taps of the block */
    int64_t py = c->pad_y[0], px = c->pad_y[1], HPy = q.OH + 2 * py,
            WPy = row_stride(q.OW + 2 * px); /* the next conv's Hp x Wp */
    bool has_add = false;
    for (int k = 0; k < c->n_tail; k++) has_add = has_add || c->tail[k].op == MJ_OP_ADD;
    /* y stored padded for the next conv with rows as long as the run's,
     * and no residual to read in y's own layout: the last block's tiles
     * store y themselves, so no rows go out after it */
    bool direct_out = c->y_padded && q.sh == 1 && q.sw == 1 && WPy == q.Wp && !has_add;
    /* y in its own layout, aligned rows: the tiles store it too */
    bool plain_out = !c->y_padded && q.sh == 1 && q.sw == 1 && q.aligned && q.Wp % e->vw == 0;
    LLVMValueRef item;
    /* Few tiles (a 7x7 plane is one): with several threads each tile's
     * output channels go in n_oc chunks of at least 8, so that the threads
     * have at least SPARSE_MIN_ITEMS items to claim; a chunk copies its
     * tile's shifted rows itself. One thread keeps whole tiles. */
    int64_t tiles = nrun * ntile, n_oc = 1;
    if (tiles < SPARSE_MIN_ITEMS) {
        n_oc = (SPARSE_MIN_ITEMS + tiles - 1) / tiles;
        if (n_oc > q.O / 8) n_oc = q.O / 8 > 1 ? q.O / 8 : 1;
    }
    LLVMValueRef noc = LLVMBuildSelect(e->b, mj_emit_several_threads(e, team), ci(e, n_oc), ci(e, 1), "");
    mj_claim_loop lt = mj_emit_claim_begin(e, team, mul(e, ci(e, tiles), noc), &item, true);
    LLVMValueRef oc = LLVMBuildSRem(e->b, item, noc, "");
    LLVMValueRef o_lo = LLVMBuildSDiv(e->b, mul(e, oc, ci(e, q.O)), noc, "");
    LLVMValueRef o_hi = LLVMBuildSDiv(e->b, mul(e, add(e, oc, ci(e, 1)), ci(e, q.O)), noc, "");
    item = LLVMBuildSDiv(e->b, item, noc, "");
    LLVMValueRef runi = LLVMBuildSDiv(e->b, item, ci(e, ntile), "");
    LLVMValueRef q0 = mul(e, LLVMBuildSRem(e->b, item, ci(e, ntile), ""), ci(e, T));
    LLVMValueRef xr = mul(e, runi, ci(e, q.sh * q.Wp));
    loop lb = loop_begin(e, ci(e, nb));
    LLVMValueRef first = LLVMBuildICmp(e->b, LLVMIntEQ, lb.iv, ci(e, 0), "");
    LLVMValueRef last = LLVMBuildICmp(e->b, LLVMIntEQ, lb.iv, ci(e, nb - 1), "");
    if (q.ns > 1) { /* the copy: channel j of group g's block in slot g*cb + j, version k >= 1
       * from the position + shift[k] */
        LLVMValueRef cnt = isub(e, ci(e, q.cg), mul(e, lb.iv, ci(e, cb)));
        cnt = LLVMBuildSelect(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, cnt, ci(e, cb), ""), cnt, ci(e, cb), "");
        loop lg = loop_begin(e, ci(e, G));
        loop lj = loop_begin(e, cnt);
        LLVMValueRef chn = add(e, add(e, mul(e, lg.iv, ci(e, q.cg)), mul(e, lb.iv, ci(e, cb))), lj.iv);
        LLVMValueRef src = at(e, xpad, add(e, mul(e, chn, ci(e, q.Hp * q.Wp)), add(e, xr, q0)));
        LLVMValueRef dst = at(e, cp, mul(e, add(e, mul(e, lg.iv, ci(e, cb)), lj.iv), ci(e, (q.ns - 1) * q.S)));
        int64_t len = mj_round16(T + q.reach);
        MJ_ASSERT(len <= q.S);
        for (int k = 1; k < q.ns; k++)
            LLVMBuildMemCpy(e->b, at(e, dst, ci(e, (k - 1) * q.S)), 4, at(e, src, ci(e, q.shift[k])), 4,
                            ci(e, len * 4));
        loop_end(e, &lj);
        loop_end(e, &lg);
    }
    loop lo = loop_range(e, o_lo, o_hi, 1);
    LLVMValueRef si = add(e, mul(e, lo.iv, ci(e, nb + 1)), lb.iv);
    LLVMValueRef t0 = LLVMBuildSExt(e->b, ld(e, e->i32, tstart, si), e->i64, "");
    LLVMValueRef t1 = LLVMBuildSExt(e->b, ld(e, e->i32, tstart, add(e, si, ci(e, 1))), e->i64, "");
    LLVMValueRef part = at(e, parts, mul(e, lo.iv, ci(e, SPARSE_TILE_MAX)));
    LLVMValueRef rr = at(e, rows, add(e, mul(e, lo.iv, ci(e, RF)), mul(e, runi, ci(e, q.Wp))));
    direct d = {0};
    if (plain_out) {
        d = (direct){.bias = bias, .o = lo.iv, .plain = true, .Wp = q.Wp, .OH = q.OH, .OW = q.OW,
                     .ybase = mul(e, add(e, mul(e, ln.iv, ci(e, q.O)), lo.iv), ci(e, q.OH * q.OW))};
    } else if (direct_out) {
        d = (direct){.bias = bias, .o = lo.iv, .run = tl.run,
                     .dst = at(e, c->y, add(e, mul(e, add(e, mul(e, ln.iv, ci(e, q.O)), lo.iv), ci(e, HPy * WPy)),
                                            ci(e, py * WPy + px)))};
    }
    tile(c, acc, V, tl.off, ttap, t0, t1, at(e, xpad, add(e, xr, q0)), q.ns > 1 ? cp : NULL, part, rr, q0, first, last,
         direct_out || plain_out ? &d : NULL, nrun > 1 ? tl.run : 0);
    loop_end(e, &lo);
    loop_end(e, &lb);
    mj_emit_claim_end(e, &lt);
    if (!direct_out && !plain_out) { /* the rows out, + b[o], then the conv's tail */
        mj_emit_barrier(e, team);
        LLVMValueRef o;
        mj_claim_loop lc = mj_emit_claim_begin(e, team, ci(e, q.O), &o, true);
        LLVMValueRef bv = bias ? load(e, bias, o) : NULL;
        mj_conv_coefs k;
        mj_conv_tail_coefs(c, o, &k);
        LLVMValueRef ybase = mul(e, add(e, mul(e, ln.iv, ci(e, q.O)), o), ci(e, q.OH * q.OW));
        loop lh = loop_begin(e, ci(e, q.OH));
        LLVMValueRef src = at(e, rows, add(e, mul(e, o, ci(e, RF)), mul(e, lh.iv, ci(e, q.Wp))));
        LLVMValueRef drow = add(e, ybase, mul(e, lh.iv, ci(e, q.OW)));
        /* stored padded for the next conv: its planes are (OH + 2py) x WPy */
        LLVMValueRef dst = at(e, c->y, c->y_padded ? add(e, mul(e, add(e, mul(e, add(e, mul(e, ln.iv, ci(e, q.O)), o), ci(e, HPy)),
                                                                      add(e, lh.iv, ci(e, py))),
                                                              ci(e, WPy)),
                                                      ci(e, px))
                                              : drow);
        /* whole vectors, then the row's last OW % vw lanes: a scalar loop
         * here, unrolled over a short row, was vectorised across the rows
         * with gathers and scatters (a 5x5 depthwise conv with batch norm,
         * 672 channels at 14x14: 186 us, 65 without the batch norm) */
        LLVMValueRef bvv = bv ? vsplat(e, bv) : NULL;
        int64_t nfull = q.OW / e->vw, rest = q.OW % e->vw;
        if (nfull > 0) {
            loop lw = loop_begin(e, ci(e, nfull));
            rows_out(c, &k, src, dst, drow, mul(e, lw.iv, ci(e, e->vw)), bvv, e->vw);
            loop_end(e, &lw);
        }
        if (rest) rows_out(c, &k, src, dst, drow, ci(e, nfull * e->vw), bvv, (int)rest);
        loop_end(e, &lh);
        mj_emit_claim_end(e, &lc);
    }
    /* the next image's copy overwrites what this one's tiles read (after
     * the last image, the body's barrier after the op serves) */
    LLVMBasicBlockRef more = if_begin(e, LLVMBuildICmp(e->b, LLVMIntSLT, add(e, ln.iv, ci(e, 1)), nimg, ""));
    mj_emit_barrier(e, team);
    if_end(e, more);
    loop_end(e, &ln);
    return true;
}
