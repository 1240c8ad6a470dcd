/* Internal to the compiled graph (compile.c, prologue.c, thread_pool.c,
 * compiled_run.c): the compiled object, its live prologue snapshots and its
 * thread pool. */
#ifndef MJ_JIT_COMPILED_H
#define MJ_JIT_COMPILED_H

#include <stdatomic.h>

#include "jit_internal.h"

typedef struct prologue prologue;
typedef struct pool pool;

struct mj_compiled {
    mj_jit *jit; /* with a reference held (mj_jit_retain) */
    mj_graph *g; /* the optimised clone */
    bool *input_free;
    bool *needed; /* prologue nodes some leaf depends on */
    mj_body_plan plan;
    mj_compile_options opts;
    mj_compile_stats stats;
    LLVMOrcResourceTrackerRef rt;
    mj_body_fn fn;
    int n_in, n_out;
    mj_type *in_types, *out_types; /* per input / output */

    /* Live state (see "run" below): calls read the current prologue
     * snapshot without locks; a refresh publishes a new one and retires the
     * old, freed once no call is running. */
    _Atomic(prologue *) cur;
    atomic_long readers;       /* calls between enter and leave */
    atomic_bool has_retired;
    pthread_mutex_t refresh_mu; /* refreshes; the retired list */
    prologue *retired;
    /* The version counters of the param tensors the prologue reads,
     * gathered once: the staleness check runs on every live call, and
     * chasing graph -> node -> tensor for each parameter cost W1 ~15 ns per
     * call (bench, Zen 5). */
    _Atomic uint64_t **param_versions;
    int32_t n_params;

    /* Shapes precomputed for the call path (batch_linear: the inputs, the
     * outputs and every scratch slice are B x a fixed row). */
    bool batch_linear;
    int64_t *in_rows, *out_rows; /* per input / output: floats per row */
    int64_t scratch_row, scratch_fixed; /* fixed: the sparse kernels' region too */
    int64_t sparse_stride; /* more per thread in column mode (mj_body_sparse_thread_stride) */
    _Atomic(float *) spare; /* a cached scratch buffer, size in spare[-16] */
    /* Threads: rows split over a pool when every row is independent. */
    bool row_independent;
    int threads;
    double row_flops;
    int64_t col_panels; /* full column panels of the widest packed linear layer */
    bool all_columns;   /* every op of the body splits its columns (an MLP of wide layers) */
    bool shared_convs;  /* convs whose work column mode's threads share */
    int64_t sparse_rows; /* the fewest rows a sparse linear layer has per batch item (0: none) */
    _Atomic int last_split; /* how the last call ran (mj_compiled_last_split, for the tests) */
    pool *pool;
};

struct prologue {
    mj_tensor **vals;
    float **packed;
    const float **leaf_data;
    uint64_t *versions; /* of c->param_versions when computed */
    prologue *next;     /* retired list */
};

/* A persistent pool per compiled graph: the caller runs part 0 of a call,
 * workers 1..n-1 the others. Split by rows, the parts are threads that claim
 * the call's row chunks one at a time; split by columns, each thread runs the
 * whole batch with its share of each wide op. One call uses the pool at a
 * time (busy); a concurrent call runs on its own thread instead. */
typedef struct part {
    const float **x; /* per input: this part's rows (rows: of its current chunk) */
    float **y;       /* per output */
    int64_t rows;    /* columns: the batch */
    float *scratch; /* the pool's, per part */
    int64_t cap;    /* floats */
    float *use;     /* this call's scratch: its own (rows) or part 0's (columns) */
    int64_t tid, nth;
} part;

struct pool {
    mj_compiled *c;
    int n; /* parts = threads */
    pthread_t *th;
    pthread_mutex_t busy; /* one call at a time */
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    _Atomic uint64_t gen; /* bumped per call (under mu: workers may sleep on it) */
    atomic_int pending;   /* workers still running this call */
    atomic_bool caller_sleeps; /* on done: the last worker must signal it */
    _Atomic int64_t spin_ns;   /* how long a wait spins before it sleeps */
    bool quit;
    int n_parts;     /* this call */
    const float *const *leaves;
    part *parts;
    int started;     /* workers created */
    mj_body_sync sync; /* column mode's barrier */
    /* row mode: the call's rows in n_chunks near-equal chunks, claimed one
     * at a time, so a thread the host slows down runs fewer of them */
    bool by_rows;
    const float *const *x;
    float *const *y;
    int64_t batch;
    int n_chunks;
    atomic_int next_chunk;
    /* the caller's CPU during this call; for the tests
     * (mj_compiled_pool_placement_for_tests): how many times a worker found
     * itself on it, how many times one moved off, and where a worker last
     * ended its share */
    atomic_int caller_cpu;
    atomic_int colocated, moves, worker_cpu;
};

/* compile.c: the body's LLVM module, in a new context (*tsc); frozen: pr
 * holds the prologue's leaves that are baked in. */
mj_status mj_compiled_lower(const mj_compiled *c, const prologue *pr, LLVMOrcThreadSafeContextRef *tsc,
                            LLVMModuleRef *m);
/* prologue.c */
void mj_compiled_prologue_free(const mj_compiled *c, prologue *pr);
/* Computes every needed prologue value with the interpreter's kernels
 * (bit-identical to eager) and the leaves' buffers. */
mj_status mj_compiled_prologue_compute(const mj_compiled *c, prologue *pr);
/* Has a param the snapshot read changed since? */
bool mj_compiled_stale(const mj_compiled *c, const prologue *pr);
void mj_compiled_snapshot_free(const mj_compiled *c, prologue *pr);
/* Frees the retired snapshots if no call is running; refresh_mu held. */
void mj_compiled_reclaim(mj_compiled *c);
/* Live mode: recompute the prologue and the packed weights into a new
 * snapshot and publish it, unless another thread already did. */
mj_status mj_compiled_refresh(mj_compiled *c);

/* thread_pool.c */
void mj_compiled_pool_free(pool *p);
/* Spins a short while for *v to reach 0; false if it has not (then sleep). */
bool mj_pool_spin_until_zero(const pool *p, atomic_int *v);
/* Locks mu, spinning a short while before it sleeps on it. */
void mj_pool_lock(const pool *p, pthread_mutex_t *mu);
mj_status mj_compiled_pool_new(mj_compiled *c, int n, pool **out);
/* Row mode: runs chunks of the pool's current call until none is left, in
 * part idx's buffers. */
void mj_pool_run_row_chunks(pool *p, int idx, const float *const *leaves);

#endif
