/* Internal to the sparse kernels (jit/sparse*.c): the preprocessed weight
 * (sparse_plan.c) that the emitter (sparse.c) turns into code. */
#ifndef MJ_JIT_SPARSE_PLAN_H
#define MJ_JIT_SPARSE_PLAN_H

#include <stdbool.h>
#include <stdint.h>

/* Chunks are at most this many rows (mj_sparse_chunk_rows): the scratch
 * size does not depend on the vector width. */
#define MAX_CHUNK 32
#define MAX_GROUP 4
/* meta ints per k-block and group: tuples, then each row's own entries */
#define META(gr) (2 + 2 * (gr))

typedef struct plan {
    int64_t out, in;
    int32_t ncols;   /* columns some nonzero uses */
    int32_t *colmap; /* compact column -> k */
    bool identity;   /* colmap is k -> k (no column dropped) */
    /* Entries are runs of `run` consecutive columns (1, or 4 for weights
     * pruned in aligned 1x4 blocks): pidx/tidx hold a run's first column,
     * pw/tw its `run` weights. */
    int run;
    int gr;           /* rows per group: 2, or 4 (MAX_GROUP) */
    int32_t n_groups; /* groups of gr rows; dummy rows fill the last one */
    int32_t *rows;    /* group g: rows[gr*g .. gr*g + gr-1] (out: the dummy row), then
                       * one group more of dummy rows (the emitter reads one group ahead) */
    int32_t kb;       /* compact columns per k-block */
    int32_t n_kblocks;
    /* per k-block, per group (META(gr) ints): tuple start, tuple end, then
     * per row of the group its own entries' start and end in tidx */
    int32_t *meta;
    int32_t *pidx; /* tuples: first compact columns of the group's rows' runs, interleaved */
    float *pw;
    int64_t n_pairs; /* entries in tuples (gr per tuple) */
    int32_t *tidx; /* a row's entries beyond the shortest row of its group's count */
    float *tw;
    int64_t n_tail;
} plan;

void mj_sparse_plan_free(plan *p);
/* Preprocesses w[out][in] for vector width vw; false when out of memory.
 * full_k: keep every column (identity colmap), as a layer inside a chain
 * needs: its xT is the previous layer's yT, one row per input column. */
bool mj_sparse_plan_build(plan *p, const float *w, int64_t out, int64_t in, int vw, bool full_k);

#endif
