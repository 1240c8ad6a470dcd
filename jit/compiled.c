/* A compiled graph: the compile pipeline (clone, optimise, split off the
 * input-free prologue, lower the body, JIT it) and the runtime (shape
 * guards, live-parameter refresh, scratch, the call). */
#include <string.h>

#include "jit_internal.h"

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
    mj_type in_type, out_type;

    /* Live state, under lock: readers call the body, a refresh writes. */
    pthread_rwlock_t lock;
    mj_tensor **pro_vals;    /* per node: prologue value kept for a plain leaf */
    float **packed;          /* per leaf: transposed copy, or NULL */
    const float **leaf_data; /* per leaf: what the body reads */
    int32_t *params;         /* param nodes the prologue reads */
    int32_t n_params;
    uint64_t *versions;      /* their versions at the last refresh */
};

/* ---- prologue ------------------------------------------------------------ */

typedef struct prologue {
    mj_tensor **vals;
    float **packed;
    const float **leaf_data;
} prologue;

static void prologue_free(const mj_compiled *c, prologue *pr) {
    if (pr->vals)
        for (int32_t i = 0; i < c->g->n_nodes; i++) mj_tensor_release(pr->vals[i]);
    if (pr->packed)
        for (int32_t i = 0; i < c->plan.n_leaves; i++) free(pr->packed[i]);
    free(pr->vals);
    free(pr->packed);
    free(pr->leaf_data);
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

static bool stale(const mj_compiled *c) {
    for (int32_t i = 0; i < c->n_params; i++)
        if (mj_tensor_version(c->g->nodes[c->params[i]].tensor) != c->versions[i]) return true;
    return false;
}

/* Live mode, write lock held: recompute the prologue and the packed weights. */
static mj_status refresh(mj_compiled *c) {
    /* Versions first: a write racing with the recompute shows up as stale
     * again on the next call. */
    uint64_t *v = mj_alloc_array((size_t)c->n_params + 1, sizeof *v);
    if (!v) return MJ_ERR_NOMEM;
    for (int32_t i = 0; i < c->n_params; i++) v[i] = mj_tensor_version(c->g->nodes[c->params[i]].tensor);
    prologue pr;
    mj_status s = prologue_compute(c, &pr);
    if (s != MJ_OK) {
        free(v);
        return s;
    }
    prologue old = {c->pro_vals, c->packed, c->leaf_data};
    prologue_free(c, &old);
    c->pro_vals = pr.vals;
    c->packed = pr.packed;
    c->leaf_data = pr.leaf_data;
    free(c->versions);
    c->versions = v;
    return MJ_OK;
}

/* ---- compile ------------------------------------------------------------- */

const mj_compile_stats *mj_compiled_stats(const mj_compiled *c) { return c ? &c->stats : NULL; }

void mj_compiled_free(mj_compiled *c) {
    if (!c) return;
    if (c->rt) mj_jit_remove(c->jit, c->rt);
    if (c->g) {
        prologue old = {c->pro_vals, c->packed, c->leaf_data};
        prologue_free(c, &old);
    }
    mj_body_plan_free(&c->plan);
    free(c->input_free);
    free(c->needed);
    free(c->params);
    free(c->versions);
    free(c->bitcode);
    mj_graph_free(c->g);
    pthread_rwlock_destroy(&c->lock);
    free(c);
}

static mj_status check_graph(const mj_graph *g) {
    if (g->n_outputs != 1 || mj_graph_input_count(g) != 1)
        return mj_fail(MJ_ERR_UNSUPPORTED, "jit: the graph has %d inputs and %d outputs; only 1 and 1 are supported",
                       mj_graph_input_count(g), (int)g->n_outputs);
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (n->op == MJ_OP_INPUT) {
            char ts[96];
            bool ok = n->type.dims[0] == MJ_DIM_BATCH;
            for (int d = 1; d < n->type.rank; d++) ok = ok && n->type.dims[d] != MJ_DIM_BATCH;
            if (!ok)
                return mj_fail(MJ_ERR_UNSUPPORTED,
                               "jit: input \"%s\" has type %s; the batch B must be its first dim and only there",
                               n->name, mj_type_str(ts, sizeof ts, &n->type));
        } else if ((n->op == MJ_OP_PARAM || n->op == MJ_OP_CONST) && !n->tensor) {
            return mj_fail(MJ_ERR_STATE, "jit: %s \"%s\" (%%%d) is not bound to a tensor (see mj_graph_bind)",
                           mj_op_table[n->op].name, n->name, (int)i);
        }
    }
    return MJ_OK;
}

static mj_status build_and_add(mj_compiled *c, prologue *pr) {
    char fname[64];
    pthread_mutex_lock(&c->jit->mu);
    uint64_t id = c->jit->next_id++;
    pthread_mutex_unlock(&c->jit->mu);
    snprintf(fname, sizeof fname, "mj_body_%llu", (unsigned long long)id);

    int64_t *numel = NULL;
    mj_lower_options lo = {.numeric = c->opts.numeric, .fname = fname};
    if (c->opts.frozen) {
        numel = mj_alloc_array((size_t)c->plan.n_leaves + 1, sizeof *numel);
        if (!numel) return MJ_ERR_NOMEM;
        for (int32_t i = 0; i < c->plan.n_leaves; i++) {
            /* prologue values have no batch dim: input-free */
            const mj_type *t = &c->g->nodes[c->plan.leaves[i].node].type;
            int64_t shape[MJ_MAX_RANK];
            mj_type_shape(t, 1, shape);
            mj_status s = mj_shape_numel(t->rank, shape, &numel[i]);
            if (s != MJ_OK) {
                free(numel);
                return s;
            }
        }
        lo.baked = pr->leaf_data;
        lo.baked_numel = numel;
    }

    double t0 = mj_now_seconds();
    LLVMOrcThreadSafeContextRef tsc = LLVMOrcCreateNewThreadSafeContext();
    LLVMContextRef ctx = LLVMOrcThreadSafeContextGetContext(tsc);
    LLVMModuleRef m = LLVMModuleCreateWithNameInContext("maskjit", ctx);
    mj_status s = mj_lower_body(ctx, m, &c->plan, &lo);
    free(numel);
    c->stats.ir_ms = (mj_now_seconds() - t0) * 1e3;
    if (s != MJ_OK) {
        LLVMDisposeModule(m);
        LLVMOrcDisposeThreadSafeContext(tsc);
        return s;
    }
    return mj_jit_add_module(c->jit, tsc, m, fname, &c->rt, &c->fn, &c->bitcode, &c->bitcode_size, &c->stats);
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
    /* use_cache / cache_dir are accepted but not used yet: the compile
     * cache (jit/cache.c) comes later. threads: the body runs on the
     * calling thread. */
    MJ_TRY(check_graph(g));

    mj_compiled *c = mj_alloc(sizeof *c);
    if (!c) return MJ_ERR_NOMEM;
    c->jit = jit;
    c->opts = opts;
    c->opts.cache_dir = NULL; /* not ours to keep */
    if (pthread_rwlock_init(&c->lock, NULL) != 0) {
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
    for (int32_t i = 0; i < c->g->n_nodes; i++)
        if (c->g->nodes[i].op == MJ_OP_INPUT) c->in_type = c->g->nodes[i].type;
    c->out_type = c->g->nodes[c->g->outputs[0]].type;

    if (!(c->input_free = mj_graph_input_free(c->g))) {
        s = MJ_ERR_NOMEM;
        goto fail;
    }
    if ((s = mj_body_plan_build(c->g, c->input_free, opts.frozen, &c->plan)) != MJ_OK) goto fail;
    c->plan.vw = mj_features_vector_width(jit->features);
    c->plan.nr = c->plan.vw == 16 ? 4 : 2;
    c->plan.panel = (int64_t)c->plan.nr * c->plan.vw;
    c->needed = mj_alloc_array((size_t)c->g->n_nodes + 1, sizeof *c->needed);
    c->params = mj_alloc_array((size_t)c->g->n_nodes + 1, sizeof *c->params);
    if (!c->needed || !c->params) {
        s = MJ_ERR_NOMEM;
        goto fail;
    }
    for (int32_t i = 0; i < c->plan.n_leaves; i++) c->needed[c->plan.leaves[i].node] = true;
    for (int32_t i = c->g->n_nodes - 1; i >= 0; i--) {
        if (!c->needed[i]) continue;
        const mj_node *n = &c->g->nodes[i];
        for (int k = 0; k < n->n_operands; k++) c->needed[n->operands[k]] = true;
        if (n->op == MJ_OP_PARAM) c->params[c->n_params++] = i;
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
    *out = c;
    return MJ_OK;
fail:
    if (c->g) prologue_free(c, &pr);
    mj_compiled_free(c);
    return s;
}

/* ---- run ----------------------------------------------------------------- */

mj_status mj_compiled_run_raw(mj_compiled *c, const float *x, int64_t batch, float *y, int64_t y_numel) {
    if (!c || !x || !y)
        return mj_fail(MJ_ERR_INVALID, "mj_compiled_run_raw: %s is NULL", !c ? "the compiled graph" : !x ? "x" : "y");
    char ts[96];
    if (batch < 1)
        return mj_fail(MJ_ERR_SHAPE, "compiled graph: batch is %lld but must be >= 1 (input %s)", (long long)batch,
                       mj_type_str(ts, sizeof ts, &c->in_type));
    int64_t in_shape[MJ_MAX_RANK], out_shape[MJ_MAX_RANK], in_numel, out_numel, scratch_n;
    mj_type_shape(&c->in_type, batch, in_shape);
    mj_type_shape(&c->out_type, batch, out_shape);
    if (mj_shape_numel(c->in_type.rank, in_shape, &in_numel) != MJ_OK ||
        mj_shape_numel(c->out_type.rank, out_shape, &out_numel) != MJ_OK)
        return mj_fail(MJ_ERR_LIMIT, "compiled graph: batch %lld is too large", (long long)batch);
    MJ_TRY(mj_body_scratch_floats(&c->plan, batch, &scratch_n));
    if (y_numel < out_numel) {
        char os[96];
        return mj_fail(MJ_ERR_SHAPE, "compiled graph: y has room for %lld floats but the output %s needs %lld",
                       (long long)y_numel, mj_shape_str(os, sizeof os, c->out_type.rank, out_shape),
                       (long long)out_numel);
    }
    uintptr_t xa = (uintptr_t)x, ya = (uintptr_t)y;
    if (in_numel > 0 && out_numel > 0 && xa < ya + (uintptr_t)out_numel * sizeof(float) &&
        ya < xa + (uintptr_t)in_numel * sizeof(float))
        return mj_fail(MJ_ERR_INVALID, "compiled graph: x and y overlap");

    /* Scratch per call (reentrant): on the stack when small. */
    _Alignas(64) float stack_buf[2048];
    float *scratch = stack_buf, *heap = NULL;
    if (scratch_n > (int64_t)(sizeof stack_buf / sizeof *stack_buf)) {
        size_t bytes = ((size_t)scratch_n * sizeof(float) + 63) & ~(size_t)63;
        heap = aligned_alloc(64, bytes);
        if (!heap) return mj_fail(MJ_ERR_NOMEM, "compiled graph: out of memory for %lld floats of scratch",
                                  (long long)scratch_n);
        scratch = heap;
    }
    mj_status s = MJ_OK;
    for (;;) {
        pthread_rwlock_rdlock(&c->lock);
        if (!c->opts.frozen && stale(c)) {
            pthread_rwlock_unlock(&c->lock);
            pthread_rwlock_wrlock(&c->lock);
            if (stale(c)) s = refresh(c); /* another thread may have done it */
            pthread_rwlock_unlock(&c->lock);
            if (s != MJ_OK) break;
            continue;
        }
        c->fn(c->leaf_data, x, y, batch, scratch);
        pthread_rwlock_unlock(&c->lock);
        break;
    }
    free(heap);
    return s;
}

mj_status mj_compiled_run(mj_compiled *c, const mj_tensor *x, mj_tensor **y) {
    if (!c || !x || !y)
        return mj_fail(MJ_ERR_INVALID, "mj_compiled_run: %s is NULL",
                       !c ? "the compiled graph" : !x ? "x" : "the output pointer");
    bool ok = x->rank == c->in_type.rank;
    for (int d = 1; ok && d < x->rank; d++) ok = x->shape[d] == c->in_type.dims[d];
    char want[96], got[96];
    if (!ok)
        return mj_fail(MJ_ERR_SHAPE, "compiled graph: x has shape %s but the graph takes %s",
                       mj_shape_str(got, sizeof got, x->rank, x->shape),
                       mj_type_str(want, sizeof want, &c->in_type));
    int64_t batch = x->shape[0];
    if (batch < 1)
        return mj_fail(MJ_ERR_SHAPE, "compiled graph: x has shape %s; the batch (dim 0) must be >= 1 for %s",
                       mj_shape_str(got, sizeof got, x->rank, x->shape),
                       mj_type_str(want, sizeof want, &c->in_type));
    int64_t shape[MJ_MAX_RANK];
    mj_type_shape(&c->out_type, batch, shape);
    mj_tensor *t;
    MJ_TRY(mj_tensor_new_uninit(&t, c->out_type.rank, shape));
    mj_status s = mj_compiled_run_raw(c, x->data, batch, t->data, t->numel);
    if (s != MJ_OK) {
        mj_tensor_release(t);
        return s;
    }
    *y = t;
    return MJ_OK;
}

mj_status mj_compiled_dump(mj_compiled *c, const char *what, FILE *f) {
    if (!c || !what || !f) return mj_fail(MJ_ERR_INVALID, "mj_compiled_dump: NULL argument");
    if (strcmp(what, "ir") == 0 || strcmp(what, "asm") == 0)
        return mj_jit_dump(c->jit, c->bitcode, c->bitcode_size, what, f);
    return mj_fail(MJ_ERR_INVALID, "mj_compiled_dump: unknown dump \"%s\" (use \"ir\" or \"asm\")", what);
}
