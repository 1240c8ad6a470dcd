/* The call path of a compiled graph: shape guards, live-parameter refresh,
 * scratch, rows or columns over the thread pool, and the public run and dump
 * functions. */
#include <sched.h>
#include <string.h>

#include "compiled.h"
#include "sparse.h"
#include "src/core/observer.h"

/* Work (FLOP) below which a call stays on the caller's thread: waking the
 * pool costs tens of microseconds. */
#define PAR_MIN_FLOPS 4e6

static void leave(mj_compiled *c) {
    if (atomic_fetch_sub(&c->readers, 1) == 1 && atomic_load(&c->has_retired) &&
        pthread_mutex_trylock(&c->refresh_mu) == 0) {
        mj_compiled_reclaim(c);
        pthread_mutex_unlock(&c->refresh_mu);
    }
}

/* for a call of rows on nth threads in column mode (else nth = 1): each
 * thread's share of the sparse linear layers has a region of its own */
static int64_t scratch_for(const mj_compiled *c, int64_t rows, int nth) {
    return rows * c->scratch_row + c->scratch_fixed + (nth - 1) * c->sparse_stride;
}

/* A 64-byte aligned buffer of at least n floats; its capacity in buf[-16]. */
static float *scratch_alloc(int64_t n) {
    size_t bytes = ((size_t)(n + 16) * sizeof(float) + 63) & ~(size_t)63;
    float *b = aligned_alloc(64, bytes);
    if (!b) return NULL;
    memcpy(b, &n, sizeof n);
    return b + 16;
}
static int64_t scratch_cap(const float *b) {
    int64_t n;
    memcpy(&n, b - 16, sizeof n);
    return n;
}

/* Splits the call over the pool: the rows between the threads, or, in
 * column mode (few rows, wide layers), every thread the whole batch with
 * its share of each wide layer's output columns (mj_lower_body). Rows go in
 * up to 4 chunks a thread of at least min_rows each, claimed one at a time:
 * with equal shares, a thread that the host slowed down (another process,
 * another guest on the core) made its caller wait for all of its share: a
 * 1024-wide MLP at batch 512, two threads beside a busy process pinned to
 * one of two vCPUs, ran 0.95-1.06x one thread in halves and 1.13-1.22x in
 * chunks (1.99-2.01x either way on a quiet host). False if the pool is
 * busy or out of memory (the caller then runs the call itself). */
static bool run_parallel(mj_compiled *c, const float *const *leaves, const float *const *x, int64_t batch,
                         float *const *y, bool columns, int64_t min_rows) {
    pool *p = c->pool;
    if (pthread_mutex_trylock(&p->busy) != 0) return false;
    int np = columns || batch >= p->n ? p->n : (int)batch;
    int64_t per = batch / ((min_rows > 0 ? min_rows : 1) * np);
    int n_chunks = columns ? 1 : np * (per < 1 ? 1 : per > 4 ? 4 : (int)per);
    int64_t chunk_rows = (batch + n_chunks - 1) / n_chunks;
    for (int t = 0; t < np; t++) {
        part *pt = &p->parts[t];
        int64_t need = columns && t > 0 ? 0 : scratch_for(c, columns ? batch : chunk_rows, columns ? np : 1);
        if (need > 0 && (!pt->scratch || pt->cap < need)) {
            free(pt->scratch ? pt->scratch - 16 : NULL);
            pt->scratch = scratch_alloc(need);
            pt->cap = pt->scratch ? need : 0;
            if (!pt->scratch) {
                pthread_mutex_unlock(&p->busy);
                return false;
            }
        }
        if (!columns) continue; /* the chunks set x, y and rows as they are claimed */
        for (int i = 0; i < c->n_in; i++) pt->x[i] = x[i];
        for (int j = 0; j < c->n_out; j++) pt->y[j] = y[j];
        pt->rows = batch;
        pt->use = p->parts[0].scratch;
        pt->tid = t;
        pt->nth = np;
    }
    p->sync.n = np;
    atomic_store_explicit(&p->sync.next, 0, memory_order_relaxed);
    p->by_rows = !columns;
    p->x = x;
    p->y = y;
    p->batch = batch;
    p->n_chunks = n_chunks;
    atomic_store_explicit(&p->next_chunk, 0, memory_order_relaxed);
    mj_pool_lock(p, &p->mu);
    atomic_store_explicit(&p->caller_cpu, sched_getcpu(), memory_order_relaxed);
    p->n_parts = np;
    p->leaves = leaves;
    atomic_store(&p->pending, np - 1);
    atomic_fetch_add(&p->gen, 1);
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    const part *p0 = &p->parts[0];
    if (columns) c->fn(leaves, (const float *const *)p0->x, p0->y, p0->rows, p0->use, p0->tid, p0->nth, &p->sync);
    else mj_pool_run_row_chunks(p, 0, leaves);
    if (!mj_pool_spin_until_zero(p, &p->pending)) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->caller_sleeps, true);
        while (atomic_load(&p->pending) > 0) pthread_cond_wait(&p->done, &p->mu);
        atomic_store(&p->caller_sleeps, false);
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&p->busy);
    return true;
}

/* Sizes the slow way (any graph), with the errors for too large a batch. */
static mj_status sizes_general(const mj_compiled *c, int64_t batch, int64_t *in_numel, int64_t *out_numel,
                               int64_t *scratch_n) {
    for (int k = 0; k < c->n_in + c->n_out; k++) {
        const mj_type *t = k < c->n_in ? &c->in_types[k] : &c->out_types[k - c->n_in];
        int64_t shape[MJ_MAX_RANK];
        mj_type_shape(t, batch, shape);
        if (mj_shape_numel(t->rank, shape, k < c->n_in ? &in_numel[k] : &out_numel[k - c->n_in]) != MJ_OK)
            return mj_fail(MJ_ERR_LIMIT, "compiled graph: batch %lld is too large", (long long)batch);
    }
    return mj_body_scratch_floats(&c->plan, batch, scratch_n);
}

static bool overlap(const void *a, int64_t na, const void *b, int64_t nb) {
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return na > 0 && nb > 0 && x < y + (uintptr_t)nb * sizeof(float) && y < x + (uintptr_t)na * sizeof(float);
}

/* Sizes of up to this many inputs and outputs live on the stack of a call. */
#define IO_STACK 16

static inline mj_status run_checked(mj_compiled *c, const float *const *x, int64_t batch, float *const *y,
                             const int64_t *y_numel, int64_t *in_numel, int64_t *out_numel) {
    int64_t scratch_n;
    /* fast path: B x fixed rows, small enough that nothing overflows */
    bool fast = c->batch_linear && batch <= (INT64_C(1) << 20);
    if (fast) {
        for (int i = 0; i < c->n_in; i++) fast = fast && (in_numel[i] = batch * c->in_rows[i]) <= MJ_MAX_NUMEL;
        for (int j = 0; j < c->n_out; j++) fast = fast && (out_numel[j] = batch * c->out_rows[j]) <= MJ_MAX_NUMEL;
        scratch_n = scratch_for(c, batch, 1);
        fast = fast && scratch_n <= MJ_MAX_NUMEL;
    }
    if (!fast) MJ_TRY(sizes_general(c, batch, in_numel, out_numel, &scratch_n));
    for (int j = 0; j < c->n_out; j++) {
        if (y_numel[j] >= out_numel[j]) continue;
        char os[96];
        int64_t out_shape[MJ_MAX_RANK];
        mj_type_shape(&c->out_types[j], batch, out_shape);
        if (c->n_out == 1)
            return mj_fail(MJ_ERR_SHAPE, "compiled graph: y has room for %lld floats but the output %s needs %lld",
                           (long long)y_numel[j], mj_shape_str(os, sizeof os, c->out_types[j].rank, out_shape),
                           (long long)out_numel[j]);
        return mj_fail(MJ_ERR_SHAPE, "compiled graph: y[%d] has room for %lld floats but output %d %s needs %lld", j,
                       (long long)y_numel[j], j, mj_shape_str(os, sizeof os, c->out_types[j].rank, out_shape),
                       (long long)out_numel[j]);
    }
    for (int j = 0; j < c->n_out; j++) {
        for (int i = 0; i < c->n_in; i++)
            if (overlap(x[i], in_numel[i], y[j], out_numel[j])) {
                if (c->n_in == 1 && c->n_out == 1) return mj_fail(MJ_ERR_INVALID, "compiled graph: x and y overlap");
                return mj_fail(MJ_ERR_INVALID, "compiled graph: input %d and output %d overlap", i, j);
            }
        for (int k = 0; k < j; k++)
            if (overlap(y[k], out_numel[k], y[j], out_numel[j]))
                return mj_fail(MJ_ERR_INVALID, "compiled graph: outputs %d and %d overlap", k, j);
    }

    /* Live: enter, then check the snapshot's versions; a stale snapshot is
     * replaced (refresh) and the call retries. Frozen: nothing to check. */
    prologue *pr = NULL;
    if (!c->opts.frozen) {
        for (;;) {
            atomic_fetch_add(&c->readers, 1);
            pr = atomic_load(&c->cur);
            if (!mj_compiled_stale(c, pr)) break;
            leave(c);
            MJ_TRY(mj_compiled_refresh(c));
        }
    }
    const float *const *leaves = pr ? pr->leaf_data : NULL;
    if (c->pool && (double)batch * c->row_flops >= PAR_MIN_FLOPS) {
        /* Few rows per thread and a layer with a panel of columns per
         * thread: split the columns instead of rows. Split by rows, every
         * thread streams all of each weight for its few rows (narrow
         * micro-kernels, weight traffic per FLOP ~ 1/rows); split by
         * columns, each streams its share of the weights for every row, at
         * the price of a barrier per op, while the other ops run on thread 0.
         * So: below 6 rows per thread always; below 8 full micro-kernels
         * per thread when every op splits its columns (nothing waits on
         * thread 0). Measured on a 1024-wide MLP, 2 threads (Xeon, 2 MB L2
         * a core): batch 64 split by rows ran 1.14x one thread, by columns
         * 1.73x (32 rows are too few for the micro-kernels to hide each
         * thread's full weight stream); at batch 128 rows won, 1.86x vs
         * 1.75x. */
        int64_t per_thread = c->all_columns ? 8 * MJ_MK_MAX_ROWS : MJ_MK_MAX_ROWS;
        bool columns = batch < per_thread * c->pool->n && c->col_panels >= c->pool->n;
        /* Fewer batch items than threads, but sparse linear layers with a
         * chunk of rows for each thread (a transformer's sequence): they
         * split their rows, the rest runs on thread 0. A frozen 90%-masked
         * BERT layer at batch 1 (its sparse layers ~75% of the time) ran on
         * one thread before. */
        int64_t chunk = mj_sparse_chunk_rows(c->plan.vw);
        columns = columns || (batch < c->pool->n && batch * c->sparse_rows >= chunk * c->pool->n);
        /* Fewer images than threads and convs, which share their work (the
         * tap table's tiles, the register tile's rows, planes): a ResNet
         * block at batch 1 ran on one thread before; the other ops run on
         * thread 0. */
        columns = columns || (batch < c->pool->n && c->shared_convs);
        if ((columns || batch >= 2) && run_parallel(c, leaves, x, batch, y, columns, per_thread)) {
            atomic_store_explicit(&c->last_split, columns ? 2 : 1, memory_order_relaxed);
            if (pr) leave(c);
            return MJ_OK;
        }
    }
    atomic_store_explicit(&c->last_split, 0, memory_order_relaxed);
    /* Scratch (reentrant): on the stack when small, else the cached buffer
     * if no other call holds it, else a fresh one. */
    _Alignas(64) float stack_buf[2048];
    float *scratch = stack_buf, *heap = NULL;
    if (scratch_n > (int64_t)(sizeof stack_buf / sizeof *stack_buf)) {
        heap = atomic_exchange(&c->spare, NULL);
        if (heap && scratch_cap(heap) < scratch_n) {
            free(heap - 16);
            heap = NULL;
        }
        if (!heap && !(heap = scratch_alloc(scratch_n))) {
            if (pr) leave(c);
            return mj_fail(MJ_ERR_NOMEM, "compiled graph: out of memory for %lld floats of scratch",
                           (long long)scratch_n);
        }
        scratch = heap;
    }
    c->fn(leaves, x, y, batch, scratch, 0, 1, NULL);
    if (pr) leave(c);
    if (heap) {
        float *old = atomic_exchange(&c->spare, heap);
        if (old) free(old - 16);
    }
    return MJ_OK;
}

/* The trace cannot see into native code: its output would become a const
 * of this one call's values. Refused rather than recorded wrongly. */
static mj_status refuse_in_trace(void) {
    return mj_fail(MJ_ERR_STATE, "cannot run a compiled graph inside a trace: the trace cannot record "
                                 "what the native code computes, so its output would become a constant; "
                                 "call the module's forward inside the trace instead");
}

mj_status mj_compiled_run_raw_n(mj_compiled *c, int n_in, const float *const *x, int64_t batch, int n_out,
                                float *const *y, const int64_t *y_numel) {
    if (!c || (n_in > 0 && !x) || (n_out > 0 && (!y || !y_numel)))
        return mj_fail(MJ_ERR_INVALID, "mj_compiled_run_raw_n: %s is NULL",
                       !c ? "the compiled graph" : (n_in > 0 && !x) ? "x" : !y ? "y" : "y_numel");
    if (n_in != c->n_in || n_out != c->n_out)
        return mj_fail(MJ_ERR_INVALID, "compiled graph: it takes %d inputs and gives %d outputs, called with %d and %d",
                       c->n_in, c->n_out, n_in, n_out);
    for (int i = 0; i < n_in; i++)
        if (!x[i]) return mj_fail(MJ_ERR_INVALID, "compiled graph: input %d is NULL", i);
    for (int j = 0; j < n_out; j++)
        if (!y[j]) return mj_fail(MJ_ERR_INVALID, "compiled graph: output %d is NULL", j);
    if (mj_observer()) return refuse_in_trace();
    if (batch < 1) {
        char ts[96];
        return mj_fail(MJ_ERR_SHAPE, "compiled graph: batch is %lld but must be >= 1 (input %s)", (long long)batch,
                       mj_type_str(ts, sizeof ts, &c->in_types[0]));
    }
    int64_t stack[2 * IO_STACK], *numel = stack;
    if (n_in > IO_STACK || n_out > IO_STACK) {
        numel = mj_alloc_array((size_t)n_in + (size_t)n_out, sizeof *numel);
        if (!numel) return MJ_ERR_NOMEM;
    }
    mj_status s = run_checked(c, x, batch, y, y_numel, numel, numel + n_in);
    if (numel != stack) free(numel);
    return s;
}

mj_status mj_compiled_run_raw(mj_compiled *c, const float *x, int64_t batch, float *y, int64_t y_numel) {
    if (!c || !x || !y)
        return mj_fail(MJ_ERR_INVALID, "mj_compiled_run_raw: %s is NULL", !c ? "the compiled graph" : !x ? "x" : "y");
    if (c->n_in != 1 || c->n_out != 1)
        return mj_fail(MJ_ERR_INVALID,
                       "mj_compiled_run_raw: the graph has %d inputs and %d outputs; use mj_compiled_run_raw_n",
                       c->n_in, c->n_out);
    if (mj_observer()) return refuse_in_trace();
    if (batch < 1) {
        char ts[96];
        return mj_fail(MJ_ERR_SHAPE, "compiled graph: batch is %lld but must be >= 1 (input %s)", (long long)batch,
                       mj_type_str(ts, sizeof ts, &c->in_types[0]));
    }
    /* straight to the call: this is the path of small models, where every
     * nanosecond of the wrapper shows */
    int64_t in_numel, out_numel;
    return run_checked(c, &x, batch, &y, &y_numel, &in_numel, &out_numel);
}

mj_status mj_compiled_run_n(mj_compiled *c, int n_in, const mj_tensor *const *x, int n_out, mj_tensor **y) {
    if (!c || (n_in > 0 && !x) || (n_out > 0 && !y))
        return mj_fail(MJ_ERR_INVALID, "mj_compiled_run_n: %s is NULL",
                       !c ? "the compiled graph" : (n_in > 0 && !x) ? "x" : "the output array");
    if (mj_observer()) return refuse_in_trace();
    if (n_in != c->n_in || n_out != c->n_out)
        return mj_fail(MJ_ERR_INVALID, "compiled graph: it takes %d inputs and gives %d outputs, called with %d and %d",
                       c->n_in, c->n_out, n_in, n_out);
    char want[96], got[96];
    int64_t batch = -1;
    for (int i = 0; i < n_in; i++) {
        const mj_tensor *t = x[i];
        const mj_type *ty = &c->in_types[i];
        if (!t) return mj_fail(MJ_ERR_INVALID, "compiled graph: input %d is NULL", i);
        bool ok = t->rank == ty->rank;
        for (int d = 1; ok && d < t->rank; d++) ok = t->shape[d] == ty->dims[d];
        if (!ok) {
            if (n_in == 1)
                return mj_fail(MJ_ERR_SHAPE, "compiled graph: x has shape %s but the graph takes %s",
                               mj_shape_str(got, sizeof got, t->rank, t->shape), mj_type_str(want, sizeof want, ty));
            return mj_fail(MJ_ERR_SHAPE, "compiled graph: input %d has shape %s but the graph takes %s", i,
                           mj_shape_str(got, sizeof got, t->rank, t->shape), mj_type_str(want, sizeof want, ty));
        }
        if (t->shape[0] < 1 && n_in == 1)
            return mj_fail(MJ_ERR_SHAPE, "compiled graph: x has shape %s; the batch (dim 0) must be >= 1 for %s",
                           mj_shape_str(got, sizeof got, t->rank, t->shape), mj_type_str(want, sizeof want, ty));
        if (t->shape[0] < 1)
            return mj_fail(MJ_ERR_SHAPE, "compiled graph: input %d has shape %s; the batch (dim 0) must be >= 1 for %s",
                           i, mj_shape_str(got, sizeof got, t->rank, t->shape), mj_type_str(want, sizeof want, ty));
        if (batch >= 0 && t->shape[0] != batch)
            return mj_fail(MJ_ERR_SHAPE,
                           "compiled graph: input %d has shape %s but input 0 has batch %lld (inputs share the batch B)",
                           i, mj_shape_str(got, sizeof got, t->rank, t->shape), (long long)batch);
        batch = t->shape[0];
    }
    mj_tensor *stack_t[IO_STACK], **outs = stack_t;
    const float *stack_x[IO_STACK], **xd = stack_x;
    float *stack_y[IO_STACK], **yd = stack_y;
    int64_t stack_n[IO_STACK], *yn = stack_n;
    bool heap = n_in > IO_STACK || n_out > IO_STACK;
    if (heap) {
        outs = mj_alloc_array((size_t)n_out + 1, sizeof *outs);
        xd = mj_alloc_array((size_t)n_in + 1, sizeof *xd);
        yd = mj_alloc_array((size_t)n_out + 1, sizeof *yd);
        yn = mj_alloc_array((size_t)n_out + 1, sizeof *yn);
    }
    mj_status s = outs && xd && yd && yn ? MJ_OK : MJ_ERR_NOMEM;
    int made = 0;
    for (int j = 0; j < n_out && s == MJ_OK; j++) {
        int64_t shape[MJ_MAX_RANK];
        mj_type_shape(&c->out_types[j], batch, shape);
        if ((s = mj_tensor_new_uninit(&outs[j], c->out_types[j].rank, shape)) != MJ_OK) break;
        made++;
        yd[j] = outs[j]->data;
        yn[j] = outs[j]->numel;
    }
    for (int i = 0; i < n_in && s == MJ_OK; i++) xd[i] = x[i]->data;
    if (s == MJ_OK) s = mj_compiled_run_raw_n(c, n_in, xd, batch, n_out, yd, yn);
    for (int j = 0; j < made; j++) {
        if (s == MJ_OK) y[j] = outs[j];
        else mj_tensor_release(outs[j]);
    }
    if (heap) {
        free(outs);
        free(xd);
        free(yd);
        free(yn);
    }
    return s;
}

mj_status mj_compiled_run(mj_compiled *c, const mj_tensor *x, mj_tensor **y) {
    if (!c || !x || !y)
        return mj_fail(MJ_ERR_INVALID, "mj_compiled_run: %s is NULL",
                       !c ? "the compiled graph" : !x ? "x" : "the output pointer");
    if (c->n_in != 1 || c->n_out != 1)
        return mj_fail(MJ_ERR_INVALID, "mj_compiled_run: the graph has %d inputs and %d outputs; use mj_compiled_run_n",
                       c->n_in, c->n_out);
    return mj_compiled_run_n(c, 1, &x, 1, y);
}

int mj_compiled_input_count(const mj_compiled *c) { return c ? c->n_in : 0; }
int mj_compiled_output_count(const mj_compiled *c) { return c ? c->n_out : 0; }

mj_status mj_compiled_dump(mj_compiled *c, const char *what, FILE *f) {
    if (!c || !what || !f) return mj_fail(MJ_ERR_INVALID, "mj_compiled_dump: NULL argument");
    if (strcmp(what, "ir") == 0 || strcmp(what, "asm") == 0) {
        /* Lowered again, as the compile did (the lowering is deterministic):
         * keeping the module's bitcode cost every compile its writing
         * (~70 ms for the W7 BERT layer) and doubled cache entries. */
        prologue pr = {0};
        if (c->opts.frozen) MJ_TRY(mj_compiled_prologue_compute(c, &pr));
        LLVMOrcThreadSafeContextRef tsc;
        LLVMModuleRef m;
        mj_status s = mj_compiled_lower(c, c->opts.frozen ? &pr : NULL, &tsc, &m);
        if (c->opts.frozen) mj_compiled_prologue_free(c, &pr);
        if (s != MJ_OK) return s;
        s = mj_jit_dump(c->jit, m, what, f);
        LLVMDisposeModule(m);
        LLVMOrcDisposeThreadSafeContext(tsc);
        return s;
    }
    return mj_fail(MJ_ERR_INVALID, "mj_compiled_dump: unknown dump \"%s\" (use \"ir\" or \"asm\")", what);
}

int mj_compiled_last_split(const mj_compiled *c) {
    return atomic_load_explicit(&((mj_compiled *)c)->last_split, memory_order_relaxed);
}
