/* A compiled graph: the compile pipeline (clone, optimise, split off the
 * input-free prologue, lower the body, JIT it), and what the call path
 * (compiled_run.c) needs of the graph, computed once. */
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "compiled.h"
#include "src/core/observer.h"

/* ---- compile ------------------------------------------------------------- */

const mj_compile_stats *mj_compiled_stats(const mj_compiled *c) { return c ? &c->stats : NULL; }

void mj_compiled_free(mj_compiled *c) {
    if (!c) return;
    mj_compiled_pool_free(c->pool);
    if (c->rt) mj_jit_remove(c->jit, c->rt);
    if (c->g) {
        mj_compiled_snapshot_free(c, atomic_load(&c->cur));
        while (c->retired) {
            prologue *n = c->retired->next;
            mj_compiled_snapshot_free(c, c->retired);
            c->retired = n;
        }
    }
    float *sp = atomic_load(&c->spare);
    if (sp) free(sp - 16);
    mj_body_plan_free(&c->plan);
    MJ_FREE_ALL(c->input_free, c->needed, c->param_versions, c->in_types, c->out_types, c->in_rows,
                c->out_rows);
    mj_graph_free(c->g);
    pthread_mutex_destroy(&c->refresh_mu);
    mj_jit_release(c->jit); /* NULL-safe */
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

mj_status mj_unshare_consts(mj_graph *frozen, const mj_graph *user) {
    for (int32_t i = 0; i < frozen->n_nodes; i++) {
        mj_node *n = &frozen->nodes[i];
        if (n->op != MJ_OP_CONST || !n->tensor) continue;
        bool shared = false;
        for (int32_t k = 0; k < user->n_nodes && !shared; k++)
            shared = user->nodes[k].op == MJ_OP_PARAM && user->nodes[k].tensor == n->tensor;
        if (!shared) continue;
        mj_tensor *copy;
        MJ_TRY(mj_tensor_clone(&copy, n->tensor));
        mj_tensor_release(n->tensor);
        n->tensor = copy;
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

mj_status mj_compiled_lower(const mj_compiled *c, const prologue *pr, LLVMOrcThreadSafeContextRef *tsc,
                            LLVMModuleRef *m) {
    int64_t *numel = NULL;
    mj_lower_options lo = {.numeric = c->opts.numeric, .fname = "mj_body_main", .fault = c->jit->fault};
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
    *tsc = LLVMOrcCreateNewThreadSafeContext();
    LLVMContextRef ctx = LLVMOrcThreadSafeContextGetContext(*tsc);
    *m = LLVMModuleCreateWithNameInContext("maskjit", ctx);
    mj_status s = mj_lower_body(ctx, *m, &c->plan, &lo);
    free(numel);
    if (s != MJ_OK) {
        LLVMDisposeModule(*m);
        LLVMOrcDisposeThreadSafeContext(*tsc);
        *m = NULL;
        *tsc = NULL;
    }
    return s;
}

/* Lower, optimise, emit an object file, link it, with the compile cache
 * (jit/cache_*.c, docs/cache.md) in front: a hit skips IR, optimisation and
 * codegen. Each compiled graph links into its own JITDylib, so the body
 * keeps one fixed name and one cached object can be loaded any number of
 * times in a process. */
static mj_status build_and_add(mj_compiled *c, prologue *pr) {
    const char *fname = "mj_body_main";
    char key[65];
    char *dir = c->jit->fault == MJ_OP_COUNT ? mj_cache_dir(&c->opts) : NULL; /* a fault is never cached */
    mj_cache_target tg = {.cpu = c->jit->cpu, .features = c->jit->features, .passes = c->jit->passes};
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
            mj_cache_entry_dispose(&e); /* bitcode, if any: dumps lower again */
            if (s == MJ_OK) {
                c->stats.cache_hit = true;
                c->stats.codegen_ms = (mj_now_seconds() - t0) * 1e3;
                goto done;
            }
            snprintf(why, sizeof why, "%s", mj_last_error());
        }
        if (r != MJ_CACHE_MISS) {
            /* unusable (corrupt, another key's, not a file): drop it and
             * compile; the store replaces it */
            mj_cache_remove(dir, key);
            warn(c, "cache: dropped a bad entry %.16s...: %s", key, why);
        }
    }

    double t0 = mj_now_seconds();
    LLVMOrcThreadSafeContextRef tsc;
    LLVMModuleRef m;
    s = mj_compiled_lower(c, pr, &tsc, &m);
    c->stats.ir_ms = (mj_now_seconds() - t0) * 1e3;
    if (s != MJ_OK) goto done;
    /* takes tsc and m; no bitcode (dumps lower again: mj_compiled_dump) */
    if ((s = mj_cache_codegen(c->jit, tsc, m, &obj, &c->stats)) != MJ_OK) goto done;
    if (dir) {
        /* not fatal: the code is compiled, only the cache misses out */
        uint64_t cap;
        if (mj_cache_max_bytes(&cap) != MJ_OK) warn(c, "%s; using %d", mj_last_error(), MJ_CACHE_DEFAULT_MAX_MB);
        if (mj_cache_store(dir, key, LLVMGetBufferStart(obj), LLVMGetBufferSize(obj), NULL, 0, cap) != MJ_OK)
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
    if (opts.threads > MJ_MAX_THREADS)
        return mj_fail(MJ_ERR_INVALID, "mj_jit_compile: threads is %d (at most %d)", opts.threads, MJ_MAX_THREADS);
    double t_start = mj_now_seconds();
    MJ_TRY(check_graph(g));
    MJ_TRY(mj_jit_check_memory(g, opts.frozen)); /* before LLVM can run out */

    mj_compiled *c = mj_alloc(sizeof *c);
    if (!c) return MJ_ERR_NOMEM;
    c->opts = opts;
    c->opts.cache_dir = opts.cache_dir; /* borrowed while compiling (build_and_add); cleared below */
    if (pthread_mutex_init(&c->refresh_mu, NULL) != 0) {
        free(c);
        return mj_fail(MJ_ERR_NOMEM, "jit: cannot create a lock");
    }
    mj_jit_retain(jit); /* c->jit is set only with the reference it holds */
    c->jit = jit;
    prologue pr = {0};
    mj_status s = mj_graph_clone(g, &c->g);
    if (s != MJ_OK) goto fail;
    if (opts.frozen) {
        if ((s = mj_graph_freeze_as(c->g, false)) != MJ_OK || (s = mj_graph_optimize(c->g, "default")) != MJ_OK ||
            (s = mj_unshare_consts(c->g, g)) != MJ_OK)
            goto fail;
        /* batch norm into the conv before it: other rounding, fast mode only */
        if (opts.numeric == MJ_NUMERIC_FAST && (s = mj_graph_optimize(c->g, "fold_bn,dce")) != MJ_OK) goto fail;
    } else {
        if ((s = mj_graph_optimize(c->g, "simplify,cse,fuse,dce")) != MJ_OK) goto fail;
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
    s = mj_body_plan_build(c->g, c->input_free, opts.frozen, mj_features_vector_width(jit->features),
                           jit->fault, &c->plan);
    if (s != MJ_OK) goto fail;
    c->needed = mj_prologue_needed(c->g, &c->plan);
    c->param_versions = mj_alloc_array((size_t)c->g->n_nodes + 1, sizeof *c->param_versions);
    if (!c->needed || !c->param_versions) {
        s = MJ_ERR_NOMEM;
        goto fail;
    }
    for (int32_t i = c->g->n_nodes - 1; i >= 0; i--)
        if (c->needed[i] && c->g->nodes[i].op == MJ_OP_PARAM)
            c->param_versions[c->n_params++] = &c->g->nodes[i].tensor->version;
    if (opts.frozen) {
        if ((s = mj_compiled_prologue_compute(c, &pr)) != MJ_OK) goto fail;
        if ((s = build_and_add(c, &pr)) != MJ_OK) goto fail;
        mj_compiled_prologue_free(c, &pr); /* baked into the code */
        c->n_params = 0;
    } else {
        if ((s = mj_compiled_refresh(c)) != MJ_OK) goto fail;
        if ((s = build_and_add(c, NULL)) != MJ_OK) goto fail;
    }
    if ((s = runtime_init(c)) != MJ_OK) goto fail;
    c->opts.cache_dir = NULL; /* the caller's string: not ours to keep */
    c->stats.total_ms = (mj_now_seconds() - t_start) * 1e3;
    *out = c;
    return MJ_OK;
fail:
    if (c->g) mj_compiled_prologue_free(c, &pr);
    mj_compiled_free(c);
    return s;
}

/* ---- what the call path needs, computed once ------------------------------ */

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
        if (mj_op_is_linear(n->op) || (n->op == MJ_OP_MATMUL && n->type.rank == 2)) {
            /* weight and bias; a residual has the node's type, checked above */
            int n_wb = n->op == MJ_OP_MATMUL ? n->n_operands : MJ_LINEAR_N_OPS(n);
            for (int k = 1; k < n_wb; k++) rows_ok = rows_ok && c->input_free[n->operands[k]];
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
        if (b_at_dim0_only(&n->type)) { /* a value stored padded for a conv: its row is the padded planes */
            int64_t per, over = mj_body_padded_floats(&c->plan, i, &per);
            c->scratch_row += per >= 0 ? per : type_row(&n->type);
            c->scratch_fixed += 16 + over;
        } else {
            c->batch_linear = c->row_independent = false;
        }
    }
    /* the sparse kernels' region (fixed-size chunks: not the batch's), as
     * mj_body_scratch_floats counts it, and in column mode one per thread */
    int64_t sp = mj_body_sparse_linear_floats(&c->plan) + mj_body_conv_scratch_floats(&c->plan);
    if (sp) c->scratch_fixed += sp + 16;
    c->sparse_stride = mj_body_sparse_thread_stride(&c->plan);
    c->all_columns = true;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (!c->input_free[i] && n->op != MJ_OP_INPUT && n->op != MJ_OP_RESHAPE)
            c->all_columns = c->all_columns && mj_body_splits_columns(&c->plan, i);
        if (!c->input_free[i] && mj_body_splits_columns(&c->plan, i)) {
            int64_t panels = g->nodes[n->operands[1]].type.dims[0] / c->plan.panel;
            if (panels > c->col_panels) c->col_panels = panels;
        }
    }
    c->sparse_rows = mj_body_sparse_rows_per_item(&c->plan);
    c->shared_convs = mj_body_has_conv(&c->plan);
    int threads = c->opts.threads;
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n < 1 ? 1 : n > 64 ? 64 : (int)n;
    }
    c->threads = threads;
    if (threads > 1 && c->row_independent) MJ_TRY(mj_compiled_pool_new(c, threads, &c->pool));
    return MJ_OK;
}
