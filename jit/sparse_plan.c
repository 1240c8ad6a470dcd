/* The sparse kernels' plan (see sparse.h): when they pay off, their
 * scratch, and the weight preprocessed for the emitter: compact columns,
 * runs of 1 or 4 columns, row pairs, k-blocks sized for the L1 cache. */
#include "sparse.h"
#include "jit_internal.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/core/internal.h"
#include "sparse_plan.h"

/* Below this density the sparse kernel beats the dense compiled kernel (and
 * OpenBLAS) at batch 64, widths 256 and 1024: see docs/numerics.md. */
#define SPARSE_CROSSOVER_DENSITY 0.5

int64_t mj_count_nonzero(const float *w, int64_t n) {
    /* a cache hit of a frozen BERT layer scans its 28 MB of weights here */
    uint32_t c8[8] = {0};
    int64_t k = 0;
    for (; k + 8 <= n; k += 8)
        for (int q = 0; q < 8; q++) c8[q] += w[k + q] != 0.0f;
    int64_t r = 0;
    for (; k < n; k++) r += w[k] != 0.0f;
    for (int q = 0; q < 8; q++) r += c8[q];
    return r;
}

bool mj_sparse_profitable(const float *w, int64_t out, int64_t in) {
    if (!w || out <= 0 || in <= 0 || out > INT32_MAX || in > INT32_MAX) return false;
    int64_t nnz = 0, empty_rows = 0;
    for (int64_t j = 0; j < out; j++) {
        int64_t r = mj_count_nonzero(w + j * in, in);
        nnz += r;
        empty_rows += r == 0;
    }
    double density = (double)nnz / ((double)out * (double)in);
    /* dropped rows (row masks) save their whole dot products */
    return density < SPARSE_CROSSOVER_DENSITY || empty_rows * 4 >= out;
}

int64_t mj_sparse_scratch_floats(int64_t in, int64_t out, int64_t batch) {
    (void)batch; /* chunks are fixed-size: the scratch does not grow with it */
    return mj_sparse_chain_scratch_floats(in, out, 1);
}

int64_t mj_sparse_chain_scratch_floats(int64_t in, int64_t max_out, int n_layers) {
    if (in < 0 || max_out < 0 || n_layers < 1) return 0;
    /* the first layer's xT [in][C], then a yT [out rounded up to even][C]
     * at a 16-float boundary: one region (one layer), or two that the
     * layers take in turn (each reads the one the layer before wrote);
     * (max_out + 1) * MAX_CHUNK is a multiple of 16 floats */
    return (in + (n_layers > 1 ? 2 : 1) * (max_out + 1)) * MAX_CHUNK + 16;
}

/* ---- the weight, preprocessed -------------------------------------------- */

void mj_sparse_plan_free(plan *p) {
    MJ_FREE_ALL(p->colmap, p->rows, p->meta, p->pidx, p->pw, p->tidx, p->tw);
}

/* Compact columns per k-block: the chunk's slice of xT (kb rows of C1
 * floats) fills the L1 data cache while every row's nonzeros in it are
 * consumed; the accumulators go back to yT between blocks. Measured on
 * Zen 5 (48 KiB L1d), 1024 wide, batch 64, 10% density: 128-256 columns
 * (32-64 KiB) alike, 2048 (the whole layer, in L2) 10-35% slower. The
 * blocks are now equal shares of each row group's nonzeros (below), which
 * for nonzeros spread evenly over k are about these columns; on Sapphire
 * Rapids (48 KiB L1d) 192 columns beat 96, 384 and 1024 by about 8%, 4%
 * and 15%. (Those were chunks of 64 floats, 256 bytes a column; now 32 on
 * AVX-512 too, so the same bytes hold twice the columns: sparse.h.) */
static int32_t kblock_cols(int vw) {
    int64_t l1 = mj_host_cache_bytes(_SC_LEVEL1_DCACHE_SIZE, 16 << 10, 1 << 20, 32 << 10);
    return (int32_t)(l1 / (4 * mj_sparse_chunk_rows(vw)));
}

/* Run size for W: 4 when the nonzeros sit in aligned groups of 4 columns
 * (1x4 block masks) so that covering whole groups adds few zero weights,
 * else 1. A zero inside a kept group costs a product with a zero weight,
 * which eager computes too (exact for finite inputs, docs/numerics.md). */
static int choose_run(const float *w, int64_t out, int64_t in, int64_t nnz) {
    if (in % 4 != 0 || nnz == 0) return 1;
    int64_t covered = 0;
    for (int64_t j = 0; j < out; j++)
        for (int64_t k = 0; k < in; k += 4) {
            const float *g = w + j * in + k;
            covered += 4 * ((g[0] != 0.0f) | (g[1] != 0.0f) | (g[2] != 0.0f) | (g[3] != 0.0f));
        }
    return covered * 4 <= nnz * 5 ? 4 : 1; /* at most 25% padding */
}

/* Does row wr have a nonzero in the run starting at compact column c? */
static bool run_used(const plan *p, const float *wr, int32_t c) {
    for (int q = 0; q < p->run; q++)
        if (wr[p->identity ? c + q : p->colmap[c + q]] != 0.0f) return true;
    return false;
}

/* the weights of row wr's run at compact column c */
static void run_values(const plan *p, const float *wr, int32_t c, float *wv) {
    for (int q = 0; q < p->run; q++) wv[q] = wr[p->identity ? c + q : p->colmap[c + q]];
}

/* Rows are sorted by entry count within windows of this many: a window's
 * rows are the ones whose yT rows a stretch of groups reads and writes.
 * Sorting all rows at once scattered those over the whole yT (768 KiB at
 * 3072 rows of 64 lanes): 8% slower there than windows of 64 or 256 rows,
 * which are as good as one sort at 1024 rows (Sapphire Rapids). */
#define SORT_WINDOW 256

/* a row and its entry count, sorted by count, then row (a total order:
 * the same plan on every libc) */
typedef struct rowkey {
    int64_t n;
    int32_t j;
} rowkey;

static int by_count(const void *a, const void *b) {
    const rowkey *x = a, *y = b;
    if (x->n != y->n) return x->n < y->n ? -1 : 1;
    return (x->j > y->j) - (x->j < y->j);
}

/* a group's place in its item stream while the blocks are filled */
struct cursor {
    int64_t t; /* next entry of the row(s) */
    int r;     /* -1: tuples; r: row r's own entries; gr: done */
};

bool mj_sparse_plan_build(plan *p, const float *w, int64_t out, int64_t in, int vw, bool full_k) {
    memset(p, 0, sizeof *p);
    p->out = out;
    p->in = in;
    int32_t *kc = mj_alloc_array((size_t)in + 1, sizeof *kc);
    int64_t nnz = 0;
    bool ok = kc != NULL;
    if (!ok) goto done;
    /* Scans of the whole weight (28 MB for a BERT layer) are written
     * without branches on its values: at density 0.1 a branch per value
     * mispredicts about once in ten. */
    for (int64_t j = 0; j < out; j++)
        for (int64_t k = 0; k < in; k++) {
            int nz = w[j * in + k] != 0.0f;
            kc[k] |= nz;
            nnz += nz;
        }
    for (int64_t k = 0; k < in; k++) kc[k] = kc[k] ? 0 : -1; /* used: 0 */
    p->run = choose_run(w, out, in, nnz);
    int32_t nc = 0;
    for (int64_t k = 0; k < in; k++) nc += kc[k] == 0;
    /* Drop unused columns only when it saves a real share of the transpose:
     * the identity layout takes the fast tiled transpose. Runs need it. */
    p->identity = full_k || p->run > 1 || (int64_t)nc * 4 > in * 3;
    if (p->identity) {
        nc = (int32_t)in;
        for (int64_t k = 0; k < in; k++) kc[k] = (int32_t)k;
    } else {
        p->colmap = mj_alloc_array((size_t)nc + 1, sizeof *p->colmap);
        if (!(ok = p->colmap != NULL)) goto done;
        int32_t c = 0;
        for (int64_t k = 0; k < in; k++)
            if (kc[k] == 0) {
                p->colmap[c] = (int32_t)k;
                kc[k] = c++;
            }
    }
    p->ncols = nc;
    /* whole runs per block. Runs once took blocks twice as wide (more
     * trips per row between the sums' stores and reloads), which paid with
     * chunks of 64 floats; with chunks of 32 the blocks hold twice the
     * columns anyway. Zen 4, weights splat in registers, every layer's
     * blocks at 0.75x / 1x / 1.5x / 2x: W5 0.58-0.59 / 0.55-0.57 /
     * 0.57 / 0.58-0.60 ms, W4 0.59-0.60 / 0.57 / 0.56-0.57 / 0.59 ms, W7
     * at batch 1 3.45-3.48 / 3.35-3.39 / 3.32-3.36 / 3.37-3.39 ms. */
    p->kb = kblock_cols(vw) / 4 * 4;
    p->n_kblocks = nc ? (nc + p->kb - 1) / p->kb : 1;
    /* Two rows a group, each with an accumulator per vector of the chunk.
     * Four rows measured 1-4% slower at 1024 and 768 wide, batch 64 and 128,
     * with chunks of 4 vectors of 16 (Sapphire Rapids), and the same within
     * the noise with 2 vectors of 16 (Zen 4): the FMA chains are not what
     * limits the loop. */
    p->gr = 2;
    p->n_groups = (int32_t)((out + p->gr - 1) / p->gr);
    size_t cap = (size_t)nnz + 1; /* entries: every used run holds a nonzero */
    p->meta = mj_alloc_array((size_t)p->n_kblocks * (size_t)p->n_groups * (size_t)META(p->gr) + 1, sizeof *p->meta);
    p->pidx = mj_alloc_array(cap, sizeof *p->pidx);
    p->pw = mj_alloc_array(cap * (size_t)p->run, sizeof *p->pw);
    p->tidx = mj_alloc_array(cap, sizeof *p->tidx);
    p->tw = mj_alloc_array(cap * (size_t)p->run, sizeof *p->tw);
    if (!(ok = p->meta && p->pidx && p->pw && p->tidx && p->tw)) goto done;
    /* Every row's used runs (first compact columns, ascending), found in one
     * scan of the weight: the blocks and groups below walk these lists with
     * a cursor per row instead of rescanning the weight's rows twice per
     * block (~100 ms of a frozen BERT layer's compile), with their weights
     * (reading them from the weight again, block by block, missed the cache
     * on most of them: ~40% of the plan's time). Every used run holds a
     * nonzero, so nnz bounds the lists. */
    int R = p->run;
    int64_t *rs = mj_alloc_array((size_t)out + 1, sizeof *rs);
    int32_t *rc = mj_alloc_array(cap, sizeof *rc);
    float *rv = mj_alloc_array(cap * (size_t)R, sizeof *rv);
    rowkey *ord = NULL;
    struct cursor *cur = NULL;
    if (!(ok = rs && rc && rv)) goto lists;
    int64_t e = 0;
    for (int64_t j = 0; j < out; j++) {
        rs[j] = e;
        const float *wr = w + j * in;
        if (R == 1 && p->identity) { /* the common case, without run_used's lookups */
            for (int32_t c = 0; c < nc; c++) { /* rc, rv have room for one past the nonzeros */
                rc[e] = c;
                rv[e] = wr[c];
                e += wr[c] != 0.0f;
            }
        } else {
            for (int32_t c = 0; c < nc; c += R)
                if (run_used(p, wr, c)) {
                    rc[e] = c;
                    run_values(p, wr, c, &rv[e * R]);
                    e++;
                }
        }
    }
    rs[out] = e;
    /* Rows grouped by their entry counts (sorted within windows of
     * SORT_WINDOW rows, neighbours grouped): the rows of a group then have
     * (nearly) as many entries, and the group loop covers (nearly) all of
     * them. The entries left over, which one row's accumulators take alone
     * (half the independent FMA chains, so that much slower), were ~12%
     * at 1024x1024, density 0.1, when rows 2g and 2g+1 were paired per
     * k-block; now 0.03%. */
    int GR = p->gr;
    ord = mj_alloc_array((size_t)out + 1, sizeof *ord);
    cur = mj_alloc_array((size_t)p->n_groups + 1, sizeof *cur);
    p->rows = mj_alloc_array(((size_t)p->n_groups + 1) * (size_t)GR, sizeof *p->rows);
    if (!(ok = ord && cur && p->rows)) goto lists;
    for (int64_t j = 0; j < out; j++) ord[j] = (rowkey){rs[j + 1] - rs[j], (int32_t)j};
    for (int64_t j0 = 0; j0 < out; j0 += SORT_WINDOW)
        qsort(ord + j0, (size_t)(out - j0 < SORT_WINDOW ? out - j0 : SORT_WINDOW), sizeof *ord, by_count);
    for (int32_t g = 0; g < p->n_groups; g++) cur[g].r = -1;
    for (int64_t q = 0; q < ((int64_t)p->n_groups + 1) * GR; q++)
        p->rows[q] = q < out ? ord[q].j : (int32_t)out; /* out: the dummy row */
    /* Per group a stream of items: tuple t takes entry t of each row (t <
     * the shortest row's count), then each row's further entries alone, row
     * by row. Each k-block takes an equal share of a group's tuples, the
     * last block also the entries alone: a group's tuple loop then runs
     * the same trip count in every block but the last, and groups of
     * similar counts sit next to each other, so the loop's exit branch is
     * mostly predicted (ending each block at the block's column boundary
     * instead, a random trip count per group and block, measured 2.5-5%
     * slower at 1024x1024, 3072x768 and 768x3072). With nonzeros spread
     * evenly over k, a share is about the block's columns; any split keeps
     * each row's entries in ascending k, as the blocks take the stream in
     * order. */
    int64_t entries = 0;
    for (int32_t blk = 0; blk < p->n_kblocks; blk++) {
        for (int32_t g = 0; g < p->n_groups; g++) {
            const float *vr[MAX_GROUP];
            const int32_t *cr[MAX_GROUP];
            int64_t nr[MAX_GROUP], np = INT64_MAX;
            for (int r = 0; r < GR; r++) {
                int64_t j = p->rows[g * GR + r];
                nr[r] = j < out ? rs[j + 1] - rs[j] : 0;
                cr[r] = j < out ? rc + rs[j] : NULL;
                vr[r] = j < out ? rv + rs[j] * R : NULL;
                if (nr[r] < np) np = nr[r];
            }
            int32_t *m = &p->meta[((size_t)blk * (size_t)p->n_groups + (size_t)g) * (size_t)META(GR)];
            struct cursor c = cur[g];
            int64_t tg = (np + p->n_kblocks - 1) / p->n_kblocks; /* tuples per block */
            m[0] = (int32_t)(p->n_pairs / GR);
            for (; c.r < 0 && c.t < np && c.t < (blk + 1) * tg; c.t++)
                for (int r = 0; r < GR; r++) {
                    p->pidx[p->n_pairs] = cr[r][c.t];
                    memcpy(&p->pw[p->n_pairs * R], &vr[r][c.t * R], (size_t)R * sizeof(float));
                    p->n_pairs++;
                }
            m[1] = (int32_t)(p->n_pairs / GR);
            if (c.r < 0 && c.t == np && blk == p->n_kblocks - 1) c.r = 0;
            for (int r = 0; r < GR; r++) {
                m[2 + 2 * r] = (int32_t)p->n_tail;
                for (; c.r == r; c.t++) {
                    if (c.t >= nr[r]) { /* this row done: the next one's tail from np */
                        c.r = r + 1 < GR ? r + 1 : GR;
                        c.t = np - 1;
                        continue;
                    }
                    p->tidx[p->n_tail] = cr[r][c.t];
                    memcpy(&p->tw[p->n_tail * R], &vr[r][c.t * R], (size_t)R * sizeof(float));
                    p->n_tail++;
                }
                m[3 + 2 * r] = (int32_t)p->n_tail;
            }
            entries += GR * (int64_t)(m[1] - m[0]);
            for (int r = 0; r < GR; r++) entries += m[3 + 2 * r] - m[2 + 2 * r];
            cur[g] = c;
        }
    }
    MJ_ASSERT(p->n_pairs + p->n_tail == entries && entries == e && entries <= nnz && (R > 1 || entries == nnz));
lists:
    MJ_FREE_ALL(rs, rc, rv, ord, cur);
done:
    free(kc);
    if (!ok) mj_sparse_plan_free(p);
    return ok;
}
