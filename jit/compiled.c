/* A compiled graph: the compile pipeline (clone, optimise, split off the
 * input-free prologue, lower the body, JIT it) and the runtime (shape
 * guards, live-parameter refresh, scratch, the call). */
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "jit_internal.h"

typedef struct prologue prologue;
typedef struct pool pool;

struct mj_compiled {
    mj_jit *jit;
    mj_graph *g; /* the optimised clone */
    bool *input_free;
    bool *needed; /* prologue nodes some leaf depends on */
    mj_body_plan plan;
    mj_compile_options opts;
    mj_compile_stats stats;
    LLVMOrcResourceTrackerRef rt;
    mj_body_fn fn;
    char *bitcode; /* the optimised module, for dumps */
    size_t bitcode_size;
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
    int64_t scratch_row, scratch_fixed;
    bool has_sparse;
    _Atomic(float *) spare; /* a cached scratch buffer, size in spare[-16] */
    /* Threads: rows split over a pool when every row is independent. */
    bool row_independent;
    int threads;
    double row_flops;
    int64_t col_panels; /* full column panels of the widest packed linear layer */
    bool all_columns;   /* every op of the body splits its columns (an MLP of wide layers) */
    pool *pool;
};

/* ---- prologue ------------------------------------------------------------ */

struct prologue {
    mj_tensor **vals;
    float **packed;
    const float **leaf_data;
    uint64_t *versions; /* of c->param_versions when computed */
    prologue *next;     /* retired list */
};

static void prologue_free(const mj_compiled *c, prologue *pr) {
    if (pr->vals)
        for (int32_t i = 0; i < c->g->n_nodes; i++) mj_tensor_release(pr->vals[i]);
    if (pr->packed)
        for (int32_t i = 0; i < c->plan.n_leaves; i++) free(pr->packed[i]);
    free(pr->vals);
    free(pr->packed);
    free(pr->leaf_data);
    free(pr->versions);
    memset(pr, 0, sizeof *pr);
}

/* W[N][K] -> the panels the linear kernels stream (mj_pack_panels) */
static float *pack_transposed(const mj_compiled *c, const mj_tensor *w) {
    int64_t N = w->shape[0], K = w->shape[1];
    float *t = mj_alloc_array((size_t)(N * K) + 1, sizeof *t);
    if (!t) return NULL;
    mj_pack_panels(w->data, N, K, c->plan.panel, t);
    return t;
}

/* Computes every needed prologue value with the interpreter's kernels
 * (bit-identical to eager) and the leaves' buffers. */
static mj_status prologue_compute(const mj_compiled *c, prologue *pr) {
    const mj_graph *g = c->g;
    memset(pr, 0, sizeof *pr);
    pr->vals = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *pr->vals);
    pr->packed = mj_alloc_array((size_t)c->plan.n_leaves + 1, sizeof *pr->packed);
    pr->leaf_data = mj_alloc_array((size_t)c->plan.n_leaves + 1, sizeof *pr->leaf_data);
    mj_status s = MJ_OK;
    if (!pr->vals || !pr->packed || !pr->leaf_data) {
        s = MJ_ERR_NOMEM;
        goto fail;
    }
    for (int32_t i = 0; i < g->n_nodes; i++) {
        if (!c->needed[i]) continue;
        const mj_node *n = &g->nodes[i];
        if (n->op == MJ_OP_PARAM || n->op == MJ_OP_CONST) {
            MJ_ASSERT(n->tensor); /* checked at compile time */
            pr->vals[i] = mj_tensor_retain(n->tensor);
            continue;
        }
        const mj_tensor *ops[MJ_MAX_OPERANDS];
        for (int k = 0; k < n->n_operands; k++) ops[k] = pr->vals[n->operands[k]];
        s = mj_interp_node(g, n, ops, &pr->vals[i]);
        if (s != MJ_OK) {
            mj_fail_prefix(s, "jit: computing the prologue value %%%d (%s)", (int)i, mj_op_table[n->op].name);
            goto fail;
        }
    }
    for (int32_t i = 0; i < c->plan.n_leaves; i++) {
        const mj_leaf *lf = &c->plan.leaves[i];
        const mj_tensor *v = pr->vals[lf->node];
        if (lf->packed) {
            if (!(pr->packed[i] = pack_transposed(c, v))) {
                s = MJ_ERR_NOMEM;
                goto fail;
            }
            pr->leaf_data[i] = pr->packed[i];
        } else {
            pr->leaf_data[i] = v->data;
        }
    }
    /* Keep only the values the body reads in place. */
    for (int32_t i = 0; i < g->n_nodes; i++) {
        if (pr->vals[i] && c->plan.leaf_plain[i] < 0) {
            mj_tensor_release(pr->vals[i]);
            pr->vals[i] = NULL;
        }
    }
    return MJ_OK;
fail:
    prologue_free(c, pr);
    return s;
}

static bool stale(const mj_compiled *c, const prologue *pr) {
    for (int32_t i = 0; i < c->n_params; i++) /* mj_tensor_version, inline: this is every call */
        if (atomic_load_explicit(c->param_versions[i], memory_order_acquire) != pr->versions[i]) return true;
    return false;
}

static void snapshot_free(const mj_compiled *c, prologue *pr) {
    if (!pr) return;
    prologue_free(c, pr);
    free(pr);
}

/* Frees the retired snapshots if no call is running; refresh_mu held. A call
 * that starts after the check loads c->cur, which is never retired. */
static void reclaim(mj_compiled *c) {
    if (!c->retired || atomic_load(&c->readers) != 0) return;
    while (c->retired) {
        prologue *n = c->retired->next;
        snapshot_free(c, c->retired);
        c->retired = n;
    }
    atomic_store(&c->has_retired, false);
}

/* Live mode: recompute the prologue and the packed weights into a new
 * snapshot and publish it, unless another thread already did. */
static mj_status refresh(mj_compiled *c) {
    pthread_mutex_lock(&c->refresh_mu);
    prologue *old = atomic_load(&c->cur);
    mj_status s = MJ_OK;
    if (old && !stale(c, old)) goto out;
    prologue *pr = mj_alloc(sizeof *pr);
    /* Versions first: a write racing with the recompute shows up as stale
     * again on the next call. */
    uint64_t *v = mj_alloc_array((size_t)c->n_params + 1, sizeof *v);
    if (!pr || !v) {
        free(pr);
        free(v);
        s = MJ_ERR_NOMEM;
        goto out;
    }
    for (int32_t i = 0; i < c->n_params; i++) v[i] = atomic_load_explicit(c->param_versions[i], memory_order_acquire);
    if ((s = prologue_compute(c, pr)) != MJ_OK) {
        free(pr);
        free(v);
        goto out;
    }
    pr->versions = v;
    atomic_store(&c->cur, pr);
    if (old) {
        old->next = c->retired;
        c->retired = old;
        atomic_store(&c->has_retired, true);
    }
    reclaim(c);
out:
    pthread_mutex_unlock(&c->refresh_mu);
    return s;
}

/* ---- threads ------------------------------------------------------------- */

/* A persistent pool per compiled graph: the caller runs part 0 of a call,
 * workers 1..n-1 the other parts (consecutive row ranges). One call uses the
 * pool at a time (busy); a concurrent call runs on its own thread instead. */
typedef struct part {
    const float **x; /* per input: this part's rows */
    float **y;       /* per output */
    int64_t rows;
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
    uint64_t gen;    /* bumped per call */
    int pending;     /* workers still running this call */
    bool quit;
    int n_parts;     /* this call */
    const float *const *leaves;
    part *parts;
    int started;     /* workers created */
    mj_body_sync sync; /* column mode's barrier */
};

typedef struct worker_arg {
    pool *p;
    int idx;
} worker_arg;

static void *worker_main(void *arg) {
    pool *p = ((worker_arg *)arg)->p;
    int idx = ((worker_arg *)arg)->idx;
    free(arg);
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->gen == seen) pthread_cond_wait(&p->work, &p->mu);
        if (p->quit) break;
        seen = p->gen;
        bool mine = idx < p->n_parts;
        part pt = mine ? p->parts[idx] : (part){0};
        const float *const *leaves = p->leaves;
        pthread_mutex_unlock(&p->mu);
        if (mine) p->c->fn(leaves, (const float *const *)pt.x, pt.y, pt.rows, pt.use, pt.tid, pt.nth, &p->sync);
        pthread_mutex_lock(&p->mu);
        if (mine && --p->pending == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* The column-mode barrier (mj_body_sync): the last thread to arrive
 * starts the next phase; the others spin on it, yielding now and then (a
 * VM may have descheduled the thread they wait for). acq_rel on arrival
 * and release/acquire on the phase make each op's writes visible to the
 * next op on every thread. */
static void sync_wait(mj_body_sync *s, void *y, void *scratch) {
    (void)y, (void)scratch;
    unsigned phase = atomic_load_explicit(&s->phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&s->arrived, 1, memory_order_acq_rel) == s->n - 1) {
        atomic_store_explicit(&s->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&s->phase, phase + 1, memory_order_release);
        return;
    }
    for (unsigned i = 1; atomic_load_explicit(&s->phase, memory_order_acquire) == phase; i++) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if (i % 1024 == 0) sched_yield();
    }
}

static void pool_free(pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->started; i++) pthread_join(p->th[i], NULL);
    if (p->parts)
        for (int i = 0; i < p->n; i++) {
            if (p->parts[i].scratch) free(p->parts[i].scratch - 16);
            free(p->parts[i].x);
            free(p->parts[i].y);
        }
    free(p->parts);
    free(p->th);
    pthread_mutex_destroy(&p->busy);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->done);
    free(p);
}

static mj_status pool_new(mj_compiled *c, int n, pool **out) {
    pool *p = mj_alloc(sizeof *p);
    if (!p) return MJ_ERR_NOMEM;
    p->c = c;
    p->n = n;
    p->sync.wait = sync_wait;
    p->th = mj_alloc_array((size_t)n, sizeof *p->th);
    p->parts = mj_alloc_array((size_t)n, sizeof *p->parts);
    bool ok = p->th && p->parts;
    for (int i = 0; ok && i < n; i++) {
        p->parts[i].x = mj_alloc_array((size_t)c->n_in, sizeof *p->parts[i].x);
        p->parts[i].y = mj_alloc_array((size_t)c->n_out, sizeof *p->parts[i].y);
        ok = p->parts[i].x && p->parts[i].y;
    }
    if (!ok || pthread_mutex_init(&p->busy, NULL) || pthread_mutex_init(&p->mu, NULL) ||
        pthread_cond_init(&p->work, NULL) || pthread_cond_init(&p->done, NULL)) {
        if (p->parts)
            for (int i = 0; i < n; i++) {
                free(p->parts[i].x);
                free(p->parts[i].y);
            }
        free(p->th);
        free(p->parts);
        free(p);
        return mj_fail(MJ_ERR_NOMEM, "jit: cannot create a thread pool of %d threads", n);
    }
    for (int i = 1; i < n; i++) {
        worker_arg *a = mj_alloc(sizeof *a);
        if (!a) break;
        *a = (worker_arg){p, i};
        if (pthread_create(&p->th[p->started], NULL, worker_main, a) != 0) {
            free(a);
            break;
        }
        p->started++;
    }
    if (p->started != n - 1) {
        pool_free(p);
        return mj_fail(MJ_ERR_NOMEM, "jit: cannot start %d worker threads", n - 1);
    }
    *out = p;
    return MJ_OK;
}

/* ---- compile ------------------------------------------------------------- */

const mj_compile_stats *mj_compiled_stats(const mj_compiled *c) { return c ? &c->stats : NULL; }

void mj_compiled_free(mj_compiled *c) {
    if (!c) return;
    pool_free(c->pool);
    if (c->rt) mj_jit_remove(c->jit, c->rt);
    if (c->g) {
        snapshot_free(c, atomic_load(&c->cur));
        while (c->retired) {
            prologue *n = c->retired->next;
            snapshot_free(c, c->retired);
            c->retired = n;
        }
    }
    float *sp = atomic_load(&c->spare);
    if (sp) free(sp - 16);
    mj_body_plan_free(&c->plan);
    free(c->input_free);
    free(c->needed);
    free(c->param_versions);
    free(c->in_types);
    free(c->out_types);
    free(c->in_rows);
    free(c->out_rows);
    free(c->bitcode);
    mj_graph_free(c->g);
    pthread_mutex_destroy(&c->refresh_mu);
    free(c);
}

static mj_status runtime_init(mj_compiled *c);

mj_status mj_jit_check_nodes(const mj_graph *g, const char *who) {
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (n->op == MJ_OP_INPUT) {
            char ts[96];
            bool ok = n->type.dims[0] == MJ_DIM_BATCH;
            for (int d = 1; d < n->type.rank; d++) ok = ok && n->type.dims[d] != MJ_DIM_BATCH;
            if (!ok)
                return mj_fail(MJ_ERR_UNSUPPORTED,
                               "%s: input \"%s\" has type %s; the batch B must be its first dim and only there",
                               who, n->name, mj_type_str(ts, sizeof ts, &n->type));
        } else if ((n->op == MJ_OP_PARAM || n->op == MJ_OP_CONST) && !n->tensor) {
            return mj_fail(MJ_ERR_STATE, "%s: %s \"%s\" (%%%d) is not bound to a tensor (see mj_graph_bind)",
                           who, mj_op_table[n->op].name, n->name, (int)i);
        }
    }
    return MJ_OK;
}

static mj_status check_graph(const mj_graph *g) {
    MJ_TRY(mj_graph_verify(g));
    return mj_jit_check_nodes(g, "jit");
}

/* Appends to stats.warning ("; " between messages), cut to its size. */
static void warn(mj_compiled *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(mj_compiled *c, const char *fmt, ...) {
    char *w = c->stats.warning;
    size_t n = strlen(w), cap = sizeof c->stats.warning;
    if (n) {
        if (n + 3 >= cap) return; /* full: the first messages matter most */
        memcpy(w + n, "; ", 3);
        n += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w + n, cap - n, fmt, ap);
    va_end(ap);
}

/* Lower, optimise, emit an object file, link it, with the compile cache
 * (jit/cache.c, docs/cache.md) in front: a hit skips IR, optimisation and
 * codegen. Each compiled graph links into its own JITDylib, so the body
 * keeps one fixed name and one cached object can be loaded any number of
 * times in a process. */
static mj_status build_and_add(mj_compiled *c, prologue *pr) {
    const char *fname = "mj_body_main";
    char key[65];
    char *dir = mj_test_fault_op() == MJ_OP_COUNT ? mj_cache_dir(&c->opts) : NULL; /* a fault is never cached */
    mj_cache_target tg = {.cpu = c->jit->cpu, .features = c->jit->features};
    if (dir && mj_cache_key(c->g, &c->opts, &tg, key) != MJ_OK) {
        free(dir); /* no key, no cache: compile as usual */
        dir = NULL;
    }
    uint64_t addr = 0;
    mj_status s;
    LLVMMemoryBufferRef obj = NULL;
    if (dir) {
        double t0 = mj_now_seconds();
        mj_cache_entry e;
        char why[96];
        mj_cache_lookup r = mj_cache_load(dir, key, &e, why, sizeof why);
        if (r == MJ_CACHE_FOUND) {
            s = mj_cache_link(c->jit, e.obj, fname, &c->rt, &addr); /* takes obj */
            e.obj = NULL;
            if (s == MJ_OK) {
                c->stats.cache_hit = true;
                c->bitcode = e.bitcode; /* for dumps */
                c->bitcode_size = e.bitcode_size;
                c->stats.codegen_ms = (mj_now_seconds() - t0) * 1e3;
                goto done;
            }
            mj_cache_entry_dispose(&e);
            snprintf(why, sizeof why, "%s", mj_last_error());
        }
        if (r != MJ_CACHE_MISS) {
            /* unusable (corrupt, another key's, not a file): drop it and
             * compile; the store replaces it */
            mj_cache_remove(dir, key);
            warn(c, "cache: dropped a bad entry %.16s...: %s", key, why);
        }
    }

    int64_t *numel = NULL;
    mj_lower_options lo = {.numeric = c->opts.numeric, .fname = fname};
    if (c->opts.frozen) {
        numel = mj_alloc_array((size_t)c->plan.n_leaves + 1, sizeof *numel);
        if (!numel) {
            s = MJ_ERR_NOMEM;
            goto done;
        }
        for (int32_t i = 0; i < c->plan.n_leaves; i++) {
            /* prologue values have no batch dim: input-free */
            const mj_type *t = &c->g->nodes[c->plan.leaves[i].node].type;
            int64_t shape[MJ_MAX_RANK];
            mj_type_shape(t, 1, shape);
            if ((s = mj_shape_numel(t->rank, shape, &numel[i])) != MJ_OK) {
                free(numel);
                goto done;
            }
        }
        lo.baked = pr->leaf_data;
        lo.baked_numel = numel;
    }

    double t0 = mj_now_seconds();
    LLVMOrcThreadSafeContextRef tsc = LLVMOrcCreateNewThreadSafeContext();
    LLVMContextRef ctx = LLVMOrcThreadSafeContextGetContext(tsc);
    LLVMModuleRef m = LLVMModuleCreateWithNameInContext("maskjit", ctx);
    s = mj_lower_body(ctx, m, &c->plan, &lo);
    free(numel);
    c->stats.ir_ms = (mj_now_seconds() - t0) * 1e3;
    if (s != MJ_OK) {
        LLVMDisposeModule(m);
        LLVMOrcDisposeThreadSafeContext(tsc);
        goto done;
    }
    /* takes tsc and m */
    if ((s = mj_cache_codegen(c->jit, tsc, m, &obj, &c->bitcode, &c->bitcode_size, &c->stats)) != MJ_OK) goto done;
    if (dir) {
        /* not fatal: the code is compiled, only the cache misses out */
        uint64_t cap;
        if (mj_cache_max_bytes(&cap) != MJ_OK) warn(c, "%s; using %d", mj_last_error(), MJ_CACHE_DEFAULT_MAX_MB);
        if (mj_cache_store(dir, key, LLVMGetBufferStart(obj), LLVMGetBufferSize(obj), c->bitcode, c->bitcode_size,
                           cap) != MJ_OK)
            warn(c, "%s", mj_last_error());
    }
    t0 = mj_now_seconds();
    s = mj_cache_link(c->jit, obj, fname, &c->rt, &addr); /* takes obj */
    c->stats.codegen_ms += (mj_now_seconds() - t0) * 1e3;
done:
    free(dir);
    if (s == MJ_OK) {
        /* ORC hands back an address; converting it to a function pointer is
         * the documented way to call JIT'd code. */
        c->fn = (mj_body_fn)(uintptr_t)addr;
    }
    return s;
}

mj_status mj_jit_compile(mj_jit *jit, const mj_graph *g, const mj_compile_options *o,
                         mj_compiled **out) {
    if (!jit || !g || !out) return mj_fail(MJ_ERR_INVALID, "mj_jit_compile: NULL argument");
    mj_compile_options opts;
    if (o) opts = *o;
    else mj_compile_options_init(&opts);
    if ((unsigned)opts.numeric > MJ_NUMERIC_FAST)
        return mj_fail(MJ_ERR_INVALID, "mj_jit_compile: unknown numeric mode %d", (int)opts.numeric);
    if (opts.threads < 0)
        return mj_fail(MJ_ERR_INVALID, "mj_jit_compile: threads is %d (must be >= 0)", opts.threads);
    double t_start = mj_now_seconds();
    MJ_TRY(check_graph(g));
    MJ_TRY(mj_jit_check_memory(g, opts.frozen)); /* before LLVM can run out */

    mj_compiled *c = mj_alloc(sizeof *c);
    if (!c) return MJ_ERR_NOMEM;
    c->jit = jit;
    c->opts = opts;
    c->opts.cache_dir = opts.cache_dir; /* borrowed while compiling (build_and_add); cleared below */
    if (pthread_mutex_init(&c->refresh_mu, NULL) != 0) {
        free(c);
        return mj_fail(MJ_ERR_NOMEM, "jit: cannot create a lock");
    }
    prologue pr = {0};
    mj_status s = mj_graph_clone(g, &c->g);
    if (s != MJ_OK) goto fail;
    if (opts.frozen) {
        if ((s = mj_graph_freeze(c->g)) != MJ_OK || (s = mj_graph_optimize(c->g, "default")) != MJ_OK) goto fail;
    } else {
        if ((s = mj_graph_optimize(c->g, "cse,fuse,dce")) != MJ_OK) goto fail;
    }
    if ((s = check_graph(c->g)) != MJ_OK) goto fail;
    c->n_in = mj_graph_input_count(c->g);
    c->n_out = c->g->n_outputs;
    c->in_types = mj_alloc_array((size_t)c->n_in, sizeof *c->in_types);
    c->out_types = mj_alloc_array((size_t)c->n_out, sizeof *c->out_types);
    c->in_rows = mj_alloc_array((size_t)c->n_in, sizeof *c->in_rows);
    c->out_rows = mj_alloc_array((size_t)c->n_out, sizeof *c->out_rows);
    if (!c->in_types || !c->out_types || !c->in_rows || !c->out_rows) {
        s = MJ_ERR_NOMEM;
        goto fail;
    }
    for (int32_t i = 0, k = 0; i < c->g->n_nodes; i++)
        if (c->g->nodes[i].op == MJ_OP_INPUT) c->in_types[k++] = c->g->nodes[i].type;
    for (int j = 0; j < c->n_out; j++) c->out_types[j] = c->g->nodes[c->g->outputs[j]].type;

    if (!(c->input_free = mj_graph_input_free(c->g))) {
        s = MJ_ERR_NOMEM;
        goto fail;
    }
    if ((s = mj_body_plan_build(c->g, c->input_free, opts.frozen, &c->plan)) != MJ_OK) goto fail;
    c->plan.vw = mj_features_vector_width(jit->features);
    c->plan.nr = c->plan.vw == 16 ? 4 : 2;
    c->plan.panel = (int64_t)c->plan.nr * c->plan.vw;
    c->needed = mj_alloc_array((size_t)c->g->n_nodes + 1, sizeof *c->needed);
    c->param_versions = mj_alloc_array((size_t)c->g->n_nodes + 1, sizeof *c->param_versions);
    if (!c->needed || !c->param_versions) {
        s = MJ_ERR_NOMEM;
        goto fail;
    }
    for (int32_t i = 0; i < c->plan.n_leaves; i++) c->needed[c->plan.leaves[i].node] = true;
    for (int32_t i = c->g->n_nodes - 1; i >= 0; i--) {
        if (!c->needed[i]) continue;
        const mj_node *n = &c->g->nodes[i];
        for (int k = 0; k < n->n_operands; k++) c->needed[n->operands[k]] = true;
        if (n->op == MJ_OP_PARAM) c->param_versions[c->n_params++] = &n->tensor->version;
    }
    if (opts.frozen) {
        if ((s = prologue_compute(c, &pr)) != MJ_OK) goto fail;
        if ((s = build_and_add(c, &pr)) != MJ_OK) goto fail;
        prologue_free(c, &pr); /* baked into the code */
        c->n_params = 0;
    } else {
        if ((s = refresh(c)) != MJ_OK) goto fail;
        if ((s = build_and_add(c, NULL)) != MJ_OK) goto fail;
    }
    if ((s = runtime_init(c)) != MJ_OK) goto fail;
    c->opts.cache_dir = NULL; /* the caller's string: not ours to keep */
    c->stats.total_ms = (mj_now_seconds() - t_start) * 1e3;
    *out = c;
    return MJ_OK;
fail:
    if (c->g) prologue_free(c, &pr);
    mj_compiled_free(c);
    return s;
}

/* ---- run ----------------------------------------------------------------- */

/* Work (FLOP) below which a call stays on the caller's thread: waking the
 * pool costs tens of microseconds. */
#define PAR_MIN_FLOPS 4e6

static bool b_at_dim0_only(const mj_type *t) {
    if (t->rank < 1 || t->dims[0] != MJ_DIM_BATCH) return false;
    for (int d = 1; d < t->rank; d++)
        if (t->dims[d] == MJ_DIM_BATCH) return false;
    return true;
}

static int64_t type_row(const mj_type *t) {
    int64_t shape[MJ_MAX_RANK], n;
    mj_type_shape(t, 1, shape);
    return mj_shape_numel(t->rank, shape, &n) == MJ_OK ? n : -1;
}

static int64_t sparse_floats(const mj_compiled *c, int64_t rows) {
    int64_t sp = 0;
    for (int32_t i = 0; i < c->g->n_nodes; i++) {
        if (!c->plan.sparse[i]) continue;
        const mj_type *wt = &c->g->nodes[c->g->nodes[i].operands[1]].type;
        int64_t f = mj_sparse_scratch_floats(wt->dims[1], wt->dims[0], rows);
        if (f > sp) sp = f;
    }
    return sp ? sp + 16 : 0;
}

/* What the call path needs, computed once. */
static mj_status runtime_init(mj_compiled *c) {
    const mj_graph *g = c->g;
    c->batch_linear = true;
    for (int i = 0; i < c->n_in; i++) {
        c->batch_linear = c->batch_linear && b_at_dim0_only(&c->in_types[i]);
        c->in_rows[i] = type_row(&c->in_types[i]);
    }
    for (int j = 0; j < c->n_out; j++) {
        c->batch_linear = c->batch_linear && b_at_dim0_only(&c->out_types[j]);
        c->out_rows[j] = type_row(&c->out_types[j]);
    }
    c->row_independent = c->batch_linear;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (c->input_free[i] || n->op == MJ_OP_INPUT) continue;
        bool rows_ok = b_at_dim0_only(&n->type);
        if (mj_op_table[n->op].flags & MJ_OPF_REDUCE) { /* along the batch dim, rows meet */
            const mj_type *xt = &g->nodes[n->operands[0]].type;
            if (xt->dims[mj_reduce_dim(n, xt->rank)] == MJ_DIM_BATCH) rows_ok = false;
        }
        /* shape ops keep rows apart when dim 0 (the batch) stays put and
         * every operand that depends on the input has B there too */
        if (n->op == MJ_OP_TRANSPOSE) rows_ok = rows_ok && n->sa.dim0 != 0;
        if (n->op == MJ_OP_PERMUTE) rows_ok = rows_ok && n->sa.perm[0] == 0;
        if (n->op == MJ_OP_SLICE || n->op == MJ_OP_CAT) rows_ok = rows_ok && n->sa.dim != 0;
        if (n->op == MJ_OP_MATMUL) { /* batched: b[B, ...] with the same rank, or input-free */
            for (int k = 0; k < 2; k++) {
                const mj_type *t = &g->nodes[n->operands[k]].type;
                rows_ok = rows_ok && (c->input_free[n->operands[k]] || (t->rank == n->type.rank && b_at_dim0_only(t)));
            }
            rows_ok = rows_ok && n->type.rank > 2;
            const mj_type *ta = &g->nodes[n->operands[0]].type;
            int64_t yr = type_row(&n->type), K = ta->dims[ta->rank - 1];
            if (n->type.rank > 2 && yr > 0 && K > 0) c->row_flops += 2.0 * (double)yr * (double)K;
        }
        if (n->op == MJ_OP_SLICE || n->op == MJ_OP_CAT || n->op == MJ_OP_TRANSPOSE || n->op == MJ_OP_PERMUTE)
            for (int k = 0; k < n->n_operands; k++)
                rows_ok = rows_ok && b_at_dim0_only(&g->nodes[n->operands[k]].type);
        if (n->op == MJ_OP_LINEAR || n->op == MJ_OP_LINEAR_ACT || (n->op == MJ_OP_MATMUL && n->type.rank == 2)) {
            for (int k = 1; k < n->n_operands; k++) rows_ok = rows_ok && c->input_free[n->operands[k]];
            int64_t xr = type_row(&g->nodes[n->operands[0]].type);
            int64_t K = g->nodes[n->operands[0]].type.dims[g->nodes[n->operands[0]].type.rank - 1];
            int64_t N = n->type.dims[n->type.rank - 1];
            if (xr > 0 && K > 0 && N > 0) c->row_flops += 2.0 * (double)xr * (double)N;
        }
        if (n->op == MJ_OP_CONV2D || n->op == MJ_OP_BATCH_NORM) { /* weights and statistics: one for every row */
            for (int k = 1; k < n->n_operands; k++) rows_ok = rows_ok && c->input_free[n->operands[k]];
            const mj_type *wt = &g->nodes[n->operands[1]].type;
            if (n->op == MJ_OP_CONV2D)
                c->row_flops += 2.0 * (double)type_row(&n->type) * (double)(wt->dims[1] * wt->dims[2] * wt->dims[3]);
        }
        c->row_independent = c->row_independent && rows_ok;
        if (!c->plan.has_slot[i]) continue;
        if (b_at_dim0_only(&n->type)) {
            c->scratch_row += type_row(&n->type);
            c->scratch_fixed += 16;
        } else {
            c->batch_linear = c->row_independent = false;
        }
    }
    c->has_sparse = false;
    c->all_columns = true;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        c->has_sparse = c->has_sparse || c->plan.sparse[i];
        if (!c->input_free[i] && n->op != MJ_OP_INPUT && n->op != MJ_OP_RESHAPE)
            c->all_columns = c->all_columns && mj_body_splits_columns(&c->plan, i);
        if (!c->input_free[i] && mj_body_splits_columns(&c->plan, i)) {
            int64_t panels = g->nodes[n->operands[1]].type.dims[0] / c->plan.panel;
            if (panels > c->col_panels) c->col_panels = panels;
        }
    }
    int threads = c->opts.threads;
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n < 1 ? 1 : n > 64 ? 64 : (int)n;
    }
    c->threads = threads;
    if (threads > 1 && c->row_independent) MJ_TRY(pool_new(c, threads, &c->pool));
    return MJ_OK;
}

static void leave(mj_compiled *c) {
    if (atomic_fetch_sub(&c->readers, 1) == 1 && atomic_load(&c->has_retired) &&
        pthread_mutex_trylock(&c->refresh_mu) == 0) {
        reclaim(c);
        pthread_mutex_unlock(&c->refresh_mu);
    }
}

static int64_t scratch_for(const mj_compiled *c, int64_t rows) {
    return rows * c->scratch_row + c->scratch_fixed + (c->has_sparse ? sparse_floats(c, rows) : 0);
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
 * its share of each wide layer's output columns (mj_lower_body). False if
 * the pool is busy or out of memory (the caller then runs the call itself). */
static bool run_parallel(mj_compiled *c, const float *const *leaves, const float *const *x, int64_t batch,
                         float *const *y, bool columns) {
    pool *p = c->pool;
    if (pthread_mutex_trylock(&p->busy) != 0) return false;
    int np = columns || batch >= p->n ? p->n : (int)batch;
    for (int t = 0; t < np; t++) {
        int64_t r0 = columns ? 0 : batch * t / np, r1 = columns ? batch : batch * (t + 1) / np;
        part *pt = &p->parts[t];
        int64_t need = columns && t > 0 ? 0 : scratch_for(c, r1 - r0);
        if (need > 0 && (!pt->scratch || pt->cap < need)) {
            free(pt->scratch ? pt->scratch - 16 : NULL);
            pt->scratch = scratch_alloc(need);
            pt->cap = pt->scratch ? need : 0;
            if (!pt->scratch) {
                pthread_mutex_unlock(&p->busy);
                return false;
            }
        }
        for (int i = 0; i < c->n_in; i++) pt->x[i] = x[i] + r0 * c->in_rows[i];
        for (int j = 0; j < c->n_out; j++) pt->y[j] = y[j] + r0 * c->out_rows[j];
        pt->rows = r1 - r0;
        pt->use = columns ? p->parts[0].scratch : pt->scratch;
        pt->tid = columns ? t : 0;
        pt->nth = columns ? np : 1;
    }
    p->sync.n = np;
    pthread_mutex_lock(&p->mu);
    p->n_parts = np;
    p->leaves = leaves;
    p->pending = np - 1;
    p->gen++;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    const part *p0 = &p->parts[0];
    c->fn(leaves, (const float *const *)p0->x, p0->y, p0->rows, p0->use, p0->tid, p0->nth, &p->sync);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
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
        scratch_n = scratch_for(c, batch);
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
            if (!stale(c, pr)) break;
            leave(c);
            MJ_TRY(refresh(c));
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
         * So: below 6 rows per thread always; below 4 full micro-kernels
         * per thread when every op splits its columns (nothing waits on
         * thread 0). */
        int64_t per_thread = c->all_columns ? 4 * MJ_MK_MAX_ROWS : MJ_MK_MAX_ROWS;
        bool columns = batch < per_thread * c->pool->n && c->col_panels >= c->pool->n;
        if ((columns || batch >= 2) && run_parallel(c, leaves, x, batch, y, columns)) {
            if (pr) leave(c);
            return MJ_OK;
        }
    }
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
    if (mj_trace_active()) return refuse_in_trace();
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
    if (mj_trace_active()) return refuse_in_trace();
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
    if (mj_trace_active()) return refuse_in_trace();
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
    if (strcmp(what, "ir") == 0 || strcmp(what, "asm") == 0)
        return mj_jit_dump(c->jit, c->bitcode, c->bitcode_size, what, f);
    return mj_fail(MJ_ERR_INVALID, "mj_compiled_dump: unknown dump \"%s\" (use \"ir\" or \"asm\")", what);
}
