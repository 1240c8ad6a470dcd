/* Internal to the sparse kernels (jit/sparse*.c): the preprocessed weight
 * (sparse_plan.c) that the emitter (sparse.c) turns into code. */
#ifndef MJ_JIT_SPARSE_PLAN_H
#define MJ_JIT_SPARSE_PLAN_H

#include <stdbool.h>
#include <stdint.h>

/* Chunks are at most this many rows (4 x 16 lanes): the scratch size does
 * not depend on the vector width. */
#define MAX_CHUNK 64

typedef struct plan {
    int64_t out, in;
    int32_t ncols;   /* columns some nonzero uses */
    int32_t *colmap; /* compact column -> k */
    bool identity;   /* colmap is k -> k (no column dropped) */
    /* Entries are runs of `run` consecutive columns (1, or 4 for weights
     * pruned in aligned 1x4 blocks): pidx/tidx hold a run's first column,
     * pw/tw its `run` weights. */
    int run;
    int32_t n_groups; /* row pairs (2g, 2g+1); an odd last row pairs with a dummy */
    int32_t kb;       /* compact columns per k-block */
    int32_t n_kblocks;
    /* per k-block, per group: pair start, pair end, tail-a start, end,
     * tail-b start, end */
    int32_t *meta;
    int32_t *pidx; /* pairs: first compact columns of rows 2g and 2g+1's runs, interleaved */
    float *pw;
    int64_t n_pairs;
    int32_t *tidx; /* a row's nonzeros of the block beyond its partner's count */
    float *tw;
    int64_t n_tail;
} plan;

void mj_sparse_plan_free(plan *p);
/* Preprocesses w[out][in] for vector width vw; false when out of memory. */
bool mj_sparse_plan_build(plan *p, const float *w, int64_t out, int64_t in, int vw);

#endif
