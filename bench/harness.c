/* The benchmark harness (bench.h): builds a workload's variants, checks
 * each against the reference, times them interleaved. The program (options,
 * workload list, reports) is bench/program.c. */
#include "bench/bench.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "bench/peers.h"
#include "ir/ir.h"
#include "src/core/internal.h"

/* Whether mj_compile_options.threads > 1 makes the compiled code use more
 * threads (it does: a per-model pool splits the batch), so W6 runs 1 and 2. */
#ifndef MJ_BENCH_JIT_THREADS
#define MJ_BENCH_JIT_THREADS 1
#endif

enum {
    V_EAGER = 0,
    V_INTERP,
    V_EXACT,
    V_FAST,
    V_FROZEN,
    V_PEER0, /* V_PEER0 + k: peer k (mj_peer_kind) */
    V_COUNT = V_PEER0 + MJ_PEER_COUNT
};

static const char *const variant_names[V_COUNT] = {
    "eager", "interp", "compiled-exact", "compiled-fast", "compiled-frozen",
    "openblas", "libxsmm", "onednn", "xnnpack",
};
_Static_assert(MJ_PEER_COUNT == 4, "a new peer needs its name in variant_names");
_Static_assert(V_COUNT <= MJ_BENCH_MAX_VARIANTS, "raise MJ_BENCH_MAX_VARIANTS");

typedef struct variant {
    int kind;
    bool exact;   /* must be bit-identical to eager */
    bool timed;   /* false: built for checking only (single-threaded refs at threads > 1) */
    mj_compiled *compiled;
    /* threads > 1: the same graph and mode compiled for one thread, timed
     * back to back with `compiled` in every round, so the speed-up over one
     * thread is a ratio of neighbours, not of cells minutes apart */
    mj_compiled *one_thread;
    double compile_ms;
    mj_peer *peer;
    mj_peer_conv *conv_peer; /* a peer of a conv chain (user models) */
} variant;

struct mj_bench_setup {
    mj_bench_workload w;
    mj_jit *jit;
    mj_module *model;
    mj_graph *trace;
    /* the inputs (a model from the workloads has one; a user's graph, e.g. a
     * transformer layer with its attention mask, may have several) */
    int n_in;
    mj_tensor *x[MJ_BENCH_MAX_INPUTS];
    int64_t batch;
    int64_t in_features, out_features;
    /* the inputs' and output's shapes, MJ_DIM_BATCH for the batch dim */
    int x_rank[MJ_BENCH_MAX_INPUTS], y_rank;
    int64_t x_dims[MJ_BENCH_MAX_INPUTS][MJ_MAX_RANK], y_dims[MJ_MAX_RANK];
    int n_layers;
    mj_peer_layer *layers;      /* masked dense weights for the peers (owned copies) */
    mj_tensor **layer_tensors;  /* the tensors behind layers[].w / .b                 */
    bool peers_expressible;
    bool conv_chain;            /* a user model the convolution peers can run          */
    mj_peer_conv_chain chain;
    char peer_note[256];        /* why peers were skipped, if they were              */
    double sum_in_out;          /* multiply-adds per batch row over Linear layers    */
    int64_t sum_k;              /* sum of in_features (tolerance scale)              */
    float *ybuf;
    int64_t y_numel;
    variant v[V_COUNT];
    int nv;
    char skipped[V_COUNT][256];
    int n_skipped;
    double trace_ms; /* mj_trace_module of the model, once per workload */
    double host_lo, host_hi; /* the last measure's host checks, one per round (threads > 1) */
};

/* ---- small helpers ----------------------------------------------------- */

/* Wall clock by default; process CPU time on request (robust when the
 * machine is oversubscribed, meaningful for single-threaded runs only). */
static _Thread_local clockid_t bench_clock = CLOCK_MONOTONIC;

void mj_bench_use_cpu_clock(bool cpu) {
    bench_clock = cpu ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC;
}

static double clock_ns(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static double now_ns(void) { return clock_ns(bench_clock); }

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}


/* ---- model structure --------------------------------------------------- */

/* Leaves of the module tree in child order: for the models the bench builds
 * (Sequential chains and the seed's linear -> seq) this is forward order. */
typedef struct leaf_list {
    mj_module **m;
    int n, cap;
} leaf_list;

static mj_status collect_leaves(mj_module *m, leaf_list *l) {
    int n = mj_module_child_count(m);
    if (n == 0 || strcmp(mj_module_type(m), "Linear") == 0) {
        if (l->n == l->cap) {
            int cap = l->cap ? l->cap * 2 : 16;
            mj_module **p = realloc(l->m, (size_t)cap * sizeof *p);
            if (!p) return mj_fail(MJ_ERR_NOMEM, "bench: out of memory");
            l->m = p;
            l->cap = cap;
        }
        l->m[l->n++] = m;
        return MJ_OK;
    }
    for (int i = 0; i < n; i++) {
        const char *name = NULL;
        MJ_TRY(collect_leaves(mj_module_child_at(m, i, &name), l));
    }
    return MJ_OK;
}

static mj_status register_mask(mj_module *lin, const float *mask) {
    int64_t shape[2] = {mj_linear_out_features(lin), mj_linear_in_features(lin)};
    mj_tensor *t = NULL;
    MJ_TRY(mj_tensor_from_data(&t, 2, shape, mask));
    mj_parametrization *p = NULL;
    mj_status s = mj_fake_sparsity_new(&p, t);
    mj_tensor_release(t);
    if (s != MJ_OK) return s;
    s = mj_register_parametrization(lin, "weight", p);
    if (s != MJ_OK) mj_parametrization_free(p);
    return s;
}

static mj_status apply_masks(mj_module *model, const leaf_list *leaves, const mj_bench_workload *w,
                             mj_rng *rng) {
    if (w->mask == MJ_BENCH_MASK_NONE) return MJ_OK;
    if (w->mask == MJ_BENCH_MASK_RANDOM) return mj_model_apply_masks(model, NULL, w->density, rng);
    for (int i = 0; i < leaves->n; i++) {
        mj_module *lin = leaves->m[i];
        if (strcmp(mj_module_type(lin), "Linear") != 0) continue;
        int64_t out = mj_linear_out_features(lin), in = mj_linear_in_features(lin);
        float *mask = calloc((size_t)(out * in), sizeof *mask);
        if (!mask) return mj_fail(MJ_ERR_NOMEM, "bench: out of memory for a [%lld, %lld] mask",
                                  (long long)out, (long long)in);
        for (int64_t o = 0; o < out; o++) {
            switch (w->mask) {
            case MJ_BENCH_MASK_ONES:
                for (int64_t j = 0; j < in; j++) mask[o * in + j] = 1.0f;
                break;
            case MJ_BENCH_MASK_IDENTITY:
                if (o < in) mask[o * in + o] = 1.0f;
                break;
            case MJ_BENCH_MASK_BLOCK4:
                /* each group of 4 consecutive inputs of a row lives or dies together */
                for (int64_t j = 0; j < in; j += 4) {
                    if (mj_rng_uniform(rng) >= w->density) continue;
                    for (int64_t q = j; q < j + 4 && q < in; q++) mask[o * in + q] = 1.0f;
                }
                break;
            default: break;
            }
        }
        mj_status s = register_mask(lin, mask);
        free(mask);
        MJ_TRY(s);
    }
    return MJ_OK;
}

/* Reads the chain Linear [act] Linear [act] ... for the peers, with the
 * masked weights as the model computes them. */
static mj_status build_layers(mj_bench_setup *s, const leaf_list *leaves) {
    int n_lin = 0;
    for (int i = 0; i < leaves->n; i++)
        if (strcmp(mj_module_type(leaves->m[i]), "Linear") == 0) n_lin++;
    if (n_lin == 0) return mj_fail(MJ_ERR_INVALID, "bench: model '%s' has no Linear layer", s->w.spec);
    s->layers = calloc((size_t)n_lin, sizeof *s->layers);
    s->layer_tensors = calloc((size_t)(2 * n_lin), sizeof *s->layer_tensors);
    if (!s->layers || !s->layer_tensors) return mj_fail(MJ_ERR_NOMEM, "bench: out of memory");
    s->n_layers = n_lin;
    s->peers_expressible = true;
    int li = -1;
    for (int i = 0; i < leaves->n; i++) {
        mj_module *m = leaves->m[i];
        if (strcmp(mj_module_type(m), "Linear") == 0) {
            li++;
            mj_peer_layer *l = &s->layers[li];
            l->in = mj_linear_in_features(m);
            l->out = mj_linear_out_features(m);
            l->act = MJ_ACT_NONE;
            mj_tensor *w = NULL, *b = NULL;
            MJ_TRY(mj_module_get(m, "weight", &w));
            s->layer_tensors[2 * li] = w;
            l->w = mj_tensor_data(w);
            if (mj_module_get(m, "bias", &b) == MJ_OK && b) {
                s->layer_tensors[2 * li + 1] = b;
                l->b = mj_tensor_data(b);
            }
            mj_clear_error();
            s->sum_in_out += (double)l->in * (double)l->out;
            s->sum_k += l->in;
            continue;
        }
        mj_act act;
        if (!mj_activation_module_act(m, &act)) {
            s->peers_expressible = false;
            snprintf(s->peer_note, sizeof s->peer_note,
                     "peers skipped: module '%s' is not a Linear or a known activation",
                     mj_module_type(m));
        } else if (act == MJ_ACT_NONE) {
            /* Identity: nothing to do */
        } else if (li < 0 || s->layers[li].act != MJ_ACT_NONE) {
            s->peers_expressible = false;
            snprintf(s->peer_note, sizeof s->peer_note,
                     "peers skipped: activation %s does not follow a Linear layer", mj_act_name(act));
        } else {
            s->layers[li].act = act;
        }
    }
    s->in_features = s->layers[0].in;
    s->out_features = s->layers[n_lin - 1].out;
    s->n_in = 1;
    s->x_rank[0] = s->y_rank = 2;
    s->x_dims[0][0] = s->y_dims[0] = MJ_DIM_BATCH;
    s->x_dims[0][1] = s->in_features;
    s->y_dims[1] = s->out_features;
    return MJ_OK;
}

/* ---- setup -------------------------------------------------------------- */

void mj_bench_setup_free(mj_bench_setup *s) {
    if (!s) return;
    for (int i = 0; i < s->nv; i++) {
        mj_compiled_free(s->v[i].compiled);
        mj_compiled_free(s->v[i].one_thread);
        mj_peer_free(s->v[i].peer);
        mj_peer_conv_free(s->v[i].conv_peer);
    }
    mj_peer_conv_chain_free(&s->chain);
    if (s->layer_tensors)
        for (int i = 0; i < 2 * s->n_layers; i++) mj_tensor_release(s->layer_tensors[i]);
    free(s->layer_tensors);
    free(s->layers);
    free(s->ybuf);
    for (int i = 0; i < s->n_in; i++) mj_tensor_release(s->x[i]);
    mj_graph_free(s->trace);
    mj_module_free(s->model);
    free(s);
}

static void note_skip(mj_bench_setup *s, const char *fmt, const char *a, const char *b) {
    if (s->n_skipped >= V_COUNT) return;
    snprintf(s->skipped[s->n_skipped++], sizeof s->skipped[0], fmt, a, b);
}

static mj_status compile_variant(mj_bench_setup *s, const mj_graph *g, int kind) {
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.numeric = kind == V_FAST ? MJ_NUMERIC_FAST : MJ_NUMERIC_EXACT;
    o.frozen = kind == V_FROZEN;
    o.threads = s->w.threads;
    o.use_cache = false; /* compile times must be real compiles */
    variant *v = &s->v[s->nv];
    memset(v, 0, sizeof *v);
    v->kind = kind;
    v->exact = kind != V_FAST;
    v->timed = true;
    mj_status st = mj_jit_compile(s->jit, g, &o, &v->compiled);
    if (st == MJ_OK) {
        const mj_compile_stats *cs = mj_compiled_stats(v->compiled);
        v->compile_ms = cs ? cs->total_ms : -1;
        s->nv++; /* owned by the setup from here: freed with it on failure */
        if (s->w.threads > 1) {
            o.threads = 1;
            st = mj_jit_compile(s->jit, g, &o, &v->one_thread);
        }
    }
    if (st != MJ_OK)
        return mj_fail_prefix(st, "%s: %s: compiling", s->w.id, variant_names[kind]);
    return MJ_OK;
}

/* A shape at this batch; false when its element count overflows. */
static bool shape_at(int rank, const int64_t *dims, int64_t batch, int64_t *shape, int64_t *numel) {
    int64_t n = 1;
    for (int d = 0; d < rank; d++) {
        shape[d] = dims[d] == MJ_DIM_BATCH ? batch : dims[d];
        if (__builtin_mul_overflow(n, shape[d], &n)) return false;
    }
    *numel = n;
    return true;
}

static mj_status make_input(mj_bench_setup *s, int64_t batch) {
    mj_rng rng;
    mj_rng_seed(&rng, s->w.seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)batch));
    int64_t shape[MJ_MAX_RANK], yshape[MJ_MAX_RANK], xn = 0, yn = 0;
    bool fits = shape_at(s->y_rank, s->y_dims, batch, yshape, &yn);
    for (int i = 0; i < s->n_in; i++) fits = fits && shape_at(s->x_rank[i], s->x_dims[i], batch, shape, &xn);
    if (!fits) return mj_fail(MJ_ERR_LIMIT, "bench: batch %lld too large", (long long)batch);
    mj_tensor *x[MJ_BENCH_MAX_INPUTS] = {0};
    float *y = malloc((size_t)(yn > 0 ? yn : 1) * sizeof *y);
    mj_status st = y ? MJ_OK : mj_fail(MJ_ERR_NOMEM, "bench: out of memory for the output");
    for (int i = 0; i < s->n_in && st == MJ_OK; i++) {
        (void)shape_at(s->x_rank[i], s->x_dims[i], batch, shape, &xn);
        st = mj_tensor_randn(&x[i], s->x_rank[i], shape, &rng);
    }
    if (st != MJ_OK) {
        for (int i = 0; i < s->n_in; i++) mj_tensor_release(x[i]);
        free(y);
        return st;
    }
    for (int i = 0; i < s->n_in; i++) {
        mj_tensor_release(s->x[i]);
        s->x[i] = x[i];
    }
    free(s->ybuf);
    s->ybuf = y;
    s->y_numel = yn;
    s->batch = batch;
    return MJ_OK;
}

/* (Re)builds the peers for the current batch; a peer that cannot run is
 * skipped with a note, not an error. */
static void build_peers(mj_bench_setup *s) {
    for (int k = 0; k < MJ_PEER_COUNT; k++) {
        int kind = V_PEER0 + k;
        int idx = -1;
        for (int i = 0; i < s->nv; i++)
            if (s->v[i].kind == kind) idx = i;
        if (idx >= 0) {
            mj_peer_free(s->v[idx].peer);
            mj_peer_conv_free(s->v[idx].conv_peer);
            s->v[idx].peer = NULL;
            s->v[idx].conv_peer = NULL;
        }
        if (!mj_peer_built((mj_peer_kind)k)) continue;
        mj_peer *p = NULL;
        mj_peer_conv *cp = NULL;
        if (s->conv_chain) {
            if (mj_peer_conv_new((mj_peer_kind)k, s->chain.n, s->chain.layers, s->batch, s->chain.h,
                                 s->chain.w, s->w.threads, &cp) != MJ_OK) {
                if (idx < 0) note_skip(s, "%s: %.200s", mj_peer_name((mj_peer_kind)k), mj_last_error());
                mj_clear_error();
            }
        } else if (!s->peers_expressible) {
            if (idx < 0) note_skip(s, "%s: %.200s", mj_peer_name((mj_peer_kind)k), s->peer_note);
        } else if (mj_peer_new((mj_peer_kind)k, s->n_layers, s->layers, s->batch, s->w.threads,
                               &p) != MJ_OK) {
            if (idx < 0) note_skip(s, "%s: %.200s", mj_peer_name((mj_peer_kind)k), mj_last_error());
            mj_clear_error();
        }
        if (idx >= 0) {
            if (p || cp) {
                s->v[idx].peer = p;
                s->v[idx].conv_peer = cp;
            } else {
                /* drop the variant: shift the rest down */
                memmove(&s->v[idx], &s->v[idx + 1], (size_t)(s->nv - idx - 1) * sizeof s->v[0]);
                s->nv--;
            }
        } else if (p || cp) {
            variant *v = &s->v[s->nv++];
            memset(v, 0, sizeof *v);
            v->kind = kind;
            v->timed = true;
            v->compile_ms = -1;
            v->peer = p;
            v->conv_peer = cp;
        }
    }
}

mj_status mj_bench_setup_new(const mj_bench_workload *w, mj_jit *jit, mj_bench_setup **out) {
    if (!w || !jit || !out) return mj_fail(MJ_ERR_INVALID, "bench: NULL workload, jit or out");
    if (w->batch < 1 || w->threads < 1)
        return mj_fail(MJ_ERR_INVALID, "bench: %s: batch %lld and threads %d must be >= 1", w->id,
                       (long long)w->batch, w->threads);
    if ((w->mask == MJ_BENCH_MASK_RANDOM || w->mask == MJ_BENCH_MASK_BLOCK4) &&
        !(w->density >= 0.0 && w->density <= 1.0))
        return mj_fail(MJ_ERR_INVALID, "bench: %s: density %g is not in [0, 1]", w->id, w->density);
    mj_bench_setup *s = calloc(1, sizeof *s);
    if (!s) return mj_fail(MJ_ERR_NOMEM, "bench: out of memory");
    s->host_lo = s->host_hi = NAN;
    s->w = *w;
    s->jit = jit;
    leaf_list leaves = {0};
    mj_rng rng;
    mj_rng_seed(&rng, w->seed);
    mj_status st = mj_model_from_spec(w->spec, &rng, &s->model);
    if (st != MJ_OK) goto fail;
    if ((st = collect_leaves(s->model, &leaves)) != MJ_OK) goto fail;
    if ((st = apply_masks(s->model, &leaves, w, &rng)) != MJ_OK) goto fail;
    if ((st = build_layers(s, &leaves)) != MJ_OK) goto fail;
    if ((st = make_input(s, w->batch)) != MJ_OK) goto fail;

    /* eager and the interpreter are single-threaded: at threads > 1 they
     * are kept for the correctness check only */
    for (int k = V_EAGER; k <= V_INTERP; k++) {
        variant *v = &s->v[s->nv++];
        v->kind = k;
        v->exact = true;
        v->timed = w->threads == 1;
        v->compile_ms = -1;
    }
    double t_trace = mj_now_seconds();
    st = mj_trace_module(s->model, s->x[0], &s->trace);
    s->trace_ms = (mj_now_seconds() - t_trace) * 1e3;
    if (st != MJ_OK) {
        mj_fail_prefix(st, "%s: tracing", w->id);
        goto fail;
    }
    /* the trace as the CLI compiles it: the JIT runs its own passes, and
     * their cost is part of the compile time reported */
    for (int k = V_EXACT; k <= V_FROZEN; k++)
        if ((st = compile_variant(s, s->trace, k)) != MJ_OK) goto fail;
    build_peers(s);
    free(leaves.m);
    *out = s;
    return MJ_OK;
fail:
    free(leaves.m);
    mj_bench_setup_free(s);
    return st;
}

/* Multiply-adds per batch row and the summed reduction lengths of the
 * graph's linear layers and matmuls (the FLOP count and tolerance scale). */
static void count_graph_work(const mj_graph *g, double *macs, int64_t *sum_k) {
    *macs = 0;
    *sum_k = 0;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        bool conv = n->op == MJ_OP_CONV2D;
        if (!mj_op_is_linear(n->op) && n->op != MJ_OP_MATMUL && !conv) continue;
        const mj_type *a = &g->nodes[n->operands[0]].type, *y = &n->type, *w = &g->nodes[n->operands[1]].type;
        /* a conv's sum per output element: in_channels / groups * kh * kw */
        int64_t k = conv ? w->dims[1] * w->dims[2] * w->dims[3] : a->dims[a->rank - 1];
        double rows_out = 1; /* output elements per batch row */
        for (int d = 0; d < y->rank; d++)
            if (y->dims[d] != MJ_DIM_BATCH) rows_out *= (double)y->dims[d];
        *macs += rows_out * (double)k;
        *sum_k += k;
    }
}

mj_status mj_bench_setup_from_graph(const char *id, const char *description, const mj_graph *g,
                                    int64_t batch, int threads, uint64_t seed, mj_jit *jit,
                                    mj_bench_setup **out) {
    if (!id || !g || !jit || !out) return mj_fail(MJ_ERR_INVALID, "bench: NULL id, graph, jit or out");
    if (batch < 1 || threads < 1)
        return mj_fail(MJ_ERR_INVALID, "bench: %s: batch %lld and threads %d must be >= 1", id,
                       (long long)batch, threads);
    if (mj_graph_input_count(g) < 1 || mj_graph_input_count(g) > MJ_BENCH_MAX_INPUTS ||
        mj_graph_output_count(g) != 1)
        return mj_fail(MJ_ERR_UNSUPPORTED, "bench: %s: the graph has %d inputs and %d outputs; "
                       "the benchmark runs graphs with 1 to %d inputs and one output", id,
                       mj_graph_input_count(g), mj_graph_output_count(g), MJ_BENCH_MAX_INPUTS);
    mj_bench_setup *s = calloc(1, sizeof *s);
    if (!s) return mj_fail(MJ_ERR_NOMEM, "bench: out of memory");
    s->host_lo = s->host_hi = NAN;
    snprintf(s->w.id, sizeof s->w.id, "%s", id);
    snprintf(s->w.description, sizeof s->w.description, "%s (%d nodes)",
             description ? description : id, mj_graph_node_count(g));
    s->w.batch = batch;
    s->w.threads = threads;
    s->w.seed = seed;
    s->jit = jit;
    s->n_in = mj_graph_input_count(g);
    for (int i = 0; i < s->n_in; i++) {
        s->x_rank[i] = mj_graph_input_rank(g, i);
        for (int d = 0; d < s->x_rank[i]; d++) s->x_dims[i][d] = mj_graph_input_dim(g, i, d);
    }
    s->y_rank = mj_graph_output_rank(g, 0);
    for (int d = 0; d < s->y_rank; d++) s->y_dims[d] = mj_graph_output_dim(g, 0, d);
    s->peers_expressible = false;
    snprintf(s->peer_note, sizeof s->peer_note, "a user model has no peer");
    count_graph_work(g, &s->sum_in_out, &s->sum_k);
    /* A chain of convolutions (a CNN block) has the convolution peers. */
    bool has_conv = false;
    for (int32_t i = 0; i < g->n_nodes; i++) has_conv |= g->nodes[i].op == MJ_OP_CONV2D;
    if (has_conv) {
        if (mj_peer_conv_chain_from_graph(g, &s->chain) == MJ_OK) s->conv_chain = true;
        else snprintf(s->peer_note, sizeof s->peer_note, "%.250s", mj_last_error());
        mj_clear_error();
    }
    mj_status st;
    double t0 = mj_now_seconds();
    if ((st = mj_graph_clone(g, &s->trace)) != MJ_OK) goto fail;
    s->trace_ms = (mj_now_seconds() - t0) * 1e3;
    if ((st = make_input(s, batch)) != MJ_OK) goto fail;
    variant *v = &s->v[s->nv++];
    v->kind = V_INTERP; /* the reference; single-threaded, so timed at 1 thread only */
    v->exact = true;
    v->timed = threads == 1;
    v->compile_ms = -1;
    for (int k = V_EXACT; k <= V_FROZEN; k++)
        if ((st = compile_variant(s, s->trace, k)) != MJ_OK) goto fail;
    if (s->conv_chain) build_peers(s);
    else if (has_conv)
        for (int k = 0; k < MJ_PEER_COUNT; k++)
            if (mj_peer_built((mj_peer_kind)k)) note_skip(s, "%s: %.200s", mj_peer_name((mj_peer_kind)k), s->peer_note);
    *out = s;
    return MJ_OK;
fail:
    mj_bench_setup_free(s);
    return st;
}

/* Changes the batch: new input, output buffer and peers (whose kernels are
 * shaped per batch). The compiled code runs at any batch. */
mj_status mj_bench_setup_set_batch(mj_bench_setup *s, int64_t batch) {
    if (!s || batch < 1)
        return mj_fail(MJ_ERR_INVALID, "bench: batch %lld must be >= 1", (long long)batch);
    MJ_TRY(make_input(s, batch));
    s->w.batch = batch;
    if (s->model || s->conv_chain) build_peers(s);
    return MJ_OK;
}

void mj_bench_setup_time_reference(mj_bench_setup *s, bool timed) {
    if (s && s->nv > 0) s->v[0].timed = timed && s->w.threads == 1;
}

mj_module *mj_bench_setup_model(mj_bench_setup *s) { return s->model; }
const mj_tensor *mj_bench_setup_input(const mj_bench_setup *s) { return s->x[0]; }
int mj_bench_setup_input_count(const mj_bench_setup *s) { return s->n_in; }

void mj_bench_setup_host_range(const mj_bench_setup *s, double *lo, double *hi) {
    *lo = s ? s->host_lo : NAN;
    *hi = s ? s->host_hi : NAN;
}
const mj_tensor *mj_bench_setup_input_at(const mj_bench_setup *s, int i) {
    return i >= 0 && i < s->n_in ? s->x[i] : NULL;
}
double mj_bench_setup_flops(const mj_bench_setup *s) {
    return 2.0 * (double)s->batch * s->sum_in_out;
}
int mj_bench_variant_count(const mj_bench_setup *s) { return s->nv; }
const char *mj_bench_variant_name(const mj_bench_setup *s, int i) {
    return i >= 0 && i < s->nv ? variant_names[s->v[i].kind] : NULL;
}
bool mj_bench_variant_exact(const mj_bench_setup *s, int i) {
    return i >= 0 && i < s->nv && s->v[i].exact;
}
bool mj_bench_variant_is_peer(const mj_bench_setup *s, int i) {
    return i >= 0 && i < s->nv && (s->v[i].peer != NULL || s->v[i].conv_peer != NULL);
}
bool mj_bench_jit_threads(void) { return MJ_BENCH_JIT_THREADS; }
const mj_bench_workload *mj_bench_setup_workload(const mj_bench_setup *s) { return &s->w; }
int64_t mj_bench_setup_batch(const mj_bench_setup *s) { return s->batch; }
double mj_bench_setup_trace_ms(const mj_bench_setup *s) { return s->trace_ms; }
int mj_bench_setup_skipped_count(const mj_bench_setup *s) { return s->n_skipped; }
const char *mj_bench_setup_skipped(const mj_bench_setup *s, int i) {
    return i >= 0 && i < s->n_skipped ? s->skipped[i] : NULL;
}
double mj_bench_variant_compile_ms(const mj_bench_setup *s, int i) {
    return i >= 0 && i < s->nv ? s->v[i].compile_ms : -1;
}

/* ---- running ------------------------------------------------------------ */

static const float *peer_run(variant *v, const float *x) {
    return v->conv_peer ? mj_peer_conv_run(v->conv_peer, x) : mj_peer_run(v->peer, x);
}

/* A compiled call on the setup's inputs, into ybuf. */
/* One call of c on the setup's inputs, its output into out (y_numel floats). */
static mj_status run_compiled_to(const mj_bench_setup *s, mj_compiled *c, float *out) {
    const float *xd[MJ_BENCH_MAX_INPUTS];
    for (int i = 0; i < s->n_in; i++) xd[i] = mj_tensor_data(s->x[i]);
    float *y[1] = {out};
    return mj_compiled_run_raw_n(c, s->n_in, xd, s->batch, 1, y, &s->y_numel);
}

static mj_status run_compiled(mj_bench_setup *s, mj_compiled *c) { return run_compiled_to(s, c, s->ybuf); }

/* One forward call; the output is dropped (eager and interp allocate it,
 * as PyTorch does; compiled and peers write into buffers). */
static mj_status run_once(mj_bench_setup *s, variant *v) {
    mj_tensor *y = NULL;
    mj_status st = MJ_OK;
    switch (v->kind) {
    case V_EAGER: st = mj_module_forward(s->model, s->x[0], &y); break;
    case V_INTERP:
        st = mj_graph_run_n(s->trace, s->n_in, (const mj_tensor *const *)s->x, 1, &y);
        break;
    case V_EXACT:
    case V_FAST:
    case V_FROZEN: st = run_compiled(s, v->compiled); break;
    default: (void)peer_run(v, mj_tensor_data(s->x[0])); break;
    }
    mj_tensor_release(y);
    return st;
}

/* Variant i's output; with one_thread, its one-thread twin's (a compiled
 * variant at threads > 1). */
static mj_status output_of(mj_bench_setup *s, int i, bool one_thread, mj_tensor **out) {
    if (!s || !out || i < 0 || i >= s->nv)
        return mj_fail(MJ_ERR_INVALID, "bench: no variant %d (have %d)", i, s ? s->nv : 0);
    variant *v = &s->v[i];
    MJ_ASSERT(!one_thread || v->one_thread);
    int64_t shape[MJ_MAX_RANK], yn;
    MJ_ASSERT(shape_at(s->y_rank, s->y_dims, s->batch, shape, &yn) && yn == s->y_numel);
    mj_status st;
    switch (v->kind) {
    case V_EAGER: st = mj_module_forward(s->model, s->x[0], out); break;
    case V_INTERP: st = mj_graph_run_n(s->trace, s->n_in, (const mj_tensor *const *)s->x, 1, out); break;
    case V_EXACT:
    case V_FAST:
    case V_FROZEN:
        memset(s->ybuf, 0xff, (size_t)s->y_numel * sizeof(float)); /* NaNs: catch unwritten output */
        st = run_compiled(s, one_thread ? v->one_thread : v->compiled);
        if (st == MJ_OK) st = mj_tensor_from_data(out, s->y_rank, shape, s->ybuf);
        break;
    default: st = mj_tensor_from_data(out, s->y_rank, shape, peer_run(v, mj_tensor_data(s->x[0]))); break;
    }
    if (st != MJ_OK)
        return mj_fail_prefix(st, "%s: %s%s", s->w.id, variant_names[v->kind], one_thread ? " (one thread)" : "");
    return MJ_OK;
}

mj_status mj_bench_variant_output(mj_bench_setup *s, int i, mj_tensor **out) {
    return output_of(s, i, false, out);
}

void mj_bench_tolerance(const mj_bench_setup *s, const mj_tensor *ref, double *rtol, double *atol) {
    /* fast mode's bound (ir/tolerance.c) with K the sum of every layer's
     * in_features: the peers' errors add up layer after layer */
    mj_tolerance t = mj_fast_tolerance(s->sum_k, mj_tolerance_scale(ref));
    if (rtol) *rtol = t.rtol;
    if (atol) *atol = t.atol;
}

mj_status mj_bench_check(mj_bench_setup *s) {
    if (!s) return mj_fail(MJ_ERR_INVALID, "bench: NULL setup");
    mj_tensor *ref = NULL;
    MJ_TRY(mj_bench_variant_output(s, 0, &ref)); /* the reference: eager, or the interpreter */
    MJ_ASSERT(s->v[0].kind == V_EAGER || s->v[0].kind == V_INTERP);
    double rtol, atol_eff;
    mj_bench_tolerance(s, ref, &rtol, &atol_eff);

    char msg[2048] = "";
    size_t used = 0;
    int n_bad = 0;
    mj_status result = MJ_OK;
    /* every variant, then the one-thread twins of the compiled ones */
    for (int k = 1; k < 2 * s->nv; k++) {
        int i = k % s->nv;
        bool one_thread = k >= s->nv;
        if (i == 0 || (one_thread && !s->v[i].one_thread)) continue;
        mj_tensor *y = NULL;
        mj_status st = output_of(s, i, one_thread, &y);
        if (st != MJ_OK) {
            mj_tensor_release(ref);
            return st;
        }
        mj_compare c = mj_tensor_compare(y, ref, rtol, atol_eff);
        bool ok = s->v[i].exact ? c.bit_identical : (c.same_shape && c.close);
        if (!ok) {
            char d[512];
            mj_compare_describe(&c, y, ref, d, sizeof d);
            int n = snprintf(msg + used, sizeof msg - used, "%s%s%s %s %s (%s)",
                             n_bad ? "; " : "", variant_names[s->v[i].kind],
                             one_thread ? " (one thread)" : "",
                             s->v[i].exact ? "is not bit-identical to" : "is not close to",
                             variant_names[s->v[0].kind], d);
            if (n > 0) used += (size_t)n < sizeof msg - used ? (size_t)n : sizeof msg - used - 1;
            n_bad++;
            result = MJ_ERR_MISMATCH;
        }
        mj_tensor_release(y);
    }
    mj_tensor_release(ref);
    if (result != MJ_OK)
        return mj_fail(result, "%s: %s (tolerance for non-exact variants: rtol %.3g, atol %.3g)",
                       s->w.id, msg, rtol, atol_eff);
    return MJ_OK;
}

/* At threads > 1, after each timed block, wait until no thread of this
 * process burns CPU any more. The peers' pools spin after a call before
 * they sleep (OpenBLAS up to 2^28 cycles; XNNPACK's pthreadpool and
 * OpenMP's millions of iterations, some yielding), and on a 2-core machine
 * the next variant would share its cores with them: maskjit's 2-thread W6
 * cells ran at half speed after XNNPACK. maskjit's own workers sleep as
 * soon as a call ends. Measured, not guessed: the process's CPU time must
 * stop growing (under 1 ms in a 20 ms window), for at most 3 s. */
static void settle_after(const mj_bench_setup *s) {
    if (s->w.threads < 2) return;
    struct timespec nap = {0, 20000000L};
    for (int i = 0; i < 150; i++) {
        struct timespec t = nap;
        double cpu0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
        while (nanosleep(&t, &t) != 0 && errno == EINTR) {}
        if (clock_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0 < 1e6) return;
    }
}

/* mj_bench_thread_ceiling's load: 8 independent multiply-add chains,
 * register-bound, the same work on every thread. */
typedef struct ceiling_arg {
    int64_t iters;
    volatile float out; /* read by no one: volatile keeps the loop */
} ceiling_arg;

static void *ceiling_work(void *arg) {
    ceiling_arg *a = arg;
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    for (int64_t n = 0; n < a->iters; n++)
        for (int i = 0; i < 8; i++) x[i] = x[i] * 0.9999999f + 1e-7f;
    a->out = x[0] + x[1] + x[2] + x[3] + x[4] + x[5] + x[6] + x[7];
    return NULL;
}

static double ceiling_wall(int n, int64_t iters) {
    pthread_t th[64];
    ceiling_arg args[64];
    int started = 0;
    double t0 = clock_ns(CLOCK_MONOTONIC);
    for (int i = 1; i < n; i++) {
        args[i].iters = iters;
        if (pthread_create(&th[started], NULL, ceiling_work, &args[i]) != 0) break;
        started++;
    }
    args[0].iters = iters;
    ceiling_work(&args[0]);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    double el = clock_ns(CLOCK_MONOTONIC) - t0;
    return started == n - 1 ? el : NAN;
}

double mj_bench_thread_ceiling(int n) {
    if (n < 2) return 1;
    if (n > 64) n = 64;
    int64_t iters = 1 << 16;
    while (ceiling_wall(1, iters) < 10e6 && iters < (INT64_C(1) << 28)) iters *= 2;
    double r[3];
    for (int k = 0; k < 3; k++) r[k] = n * ceiling_wall(1, iters) / ceiling_wall(n, iters);
    qsort(r, 3, sizeof *r, cmp_double);
    return r[1];
}

/* n calls of v, or with one_thread of its one-thread twin */
static mj_status time_runs(mj_bench_setup *s, variant *v, bool one_thread, int64_t n, double *ns) {
    double t0 = now_ns();
    mj_status st = MJ_OK;
    for (int64_t i = 0; i < n && st == MJ_OK; i++) st = one_thread ? run_compiled(s, v->one_thread) : run_once(s, v);
    *ns = now_ns() - t0;
    settle_after(s);
    return st;
}

/* The host check with the work itself: threads copies of v's one-thread
 * twin, each on its own thread with its own output, n calls each, started
 * together; *ns is the wall time until the last one ends. The arithmetic
 * check (mj_bench_thread_ceiling) cannot see a core shared with another
 * guest: it kept 1.5-2.0x while a 1024-wide MLP, pool or not, got 1.0x in
 * whole rounds (2-vCPU KVM guest, Zen 4), because its chains wait on
 * latency where the GEMM fills the FMA ports. */
typedef struct copy_arg {
    const mj_bench_setup *s;
    mj_compiled *c;
    int64_t n;
    float *y;
    atomic_bool *go;
    mj_status st;
} copy_arg;

static void *copy_work(void *arg) {
    copy_arg *a = arg;
    while (!atomic_load(a->go)) sched_yield();
    a->st = MJ_OK;
    for (int64_t i = 0; i < a->n && a->st == MJ_OK; i++) a->st = run_compiled_to(a->s, a->c, a->y);
    return NULL;
}

enum { MAX_COPIES = 64 };

static int copies_of(const mj_bench_setup *s) { return s->w.threads < MAX_COPIES ? s->w.threads : MAX_COPIES; }

static mj_status time_copies(mj_bench_setup *s, const variant *v, int64_t n, double *ns) {
    int k = copies_of(s);
    copy_arg a[MAX_COPIES];
    pthread_t th[MAX_COPIES];
    atomic_bool go = false;
    int made = 0, started = 0;
    while (made < k) {
        a[made] = (copy_arg){s, v->one_thread, n, malloc((size_t)s->y_numel * sizeof(float)), &go, MJ_OK};
        if (!a[made].y) break;
        made++;
    }
    while (made == k && started < k - 1 && pthread_create(&th[started], NULL, copy_work, &a[started + 1]) == 0)
        started++;
    bool ok = made == k && started == k - 1;
    /* on a failure the started copies run no calls */
    for (int i = 1; !ok && i <= started; i++) a[i].n = 0;
    double t0 = now_ns();
    atomic_store(&go, true);
    if (ok) copy_work(&a[0]);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    *ns = now_ns() - t0;
    mj_status st = ok ? MJ_OK : mj_fail(MJ_ERR_NOMEM, "bench: cannot start %d copies for the host check", k);
    for (int i = 0; i < made; i++) {
        if (ok && a[i].st != MJ_OK) st = a[i].st;
        free(a[i].y);
    }
    settle_after(s);
    return st;
}

/* Calls per round: n calls took el ns, a round should take target ns. */
static int64_t calls_for(int64_t n, double el, double target) {
    double it = ceil((double)n * target / (el > 0 ? el : 1));
    return it < 1 ? 1 : it > 1e9 ? (int64_t)1e9 : (int64_t)it;
}

static double median_of(double *x, int n) {
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

mj_status mj_bench_measure(mj_bench_setup *s, int reps, double min_ms, mj_bench_result *results) {
    if (!s || !results || reps < 1 || !(min_ms > 0))
        return mj_fail(MJ_ERR_INVALID, "bench: reps %d must be >= 1 and min_ms %g > 0", reps, min_ms);
    double target = min_ms * 1e6;
    int64_t iters[V_COUNT], iters1[V_COUNT];
    int vreps[V_COUNT];
    /* calibrate: grow the call count until a batch takes a fifth of the target */
    for (int i = 0; i < s->nv; i++) {
        variant *v = &s->v[i];
        results[i] = (mj_bench_result){.median_ns = NAN, .min_ns = NAN, .iters = 0,
                                       .gflops = NAN, .compile_ms = v->compile_ms,
                                       .vs_one_thread = NAN, .vs_one_thread_min = NAN,
                                       .host_copies = NAN, .host_copies_min = NAN,
                                       .vs_host = NAN, .vs_host_min = NAN};
        iters[i] = iters1[i] = 0;
        vreps[i] = 0;
        if (!v->timed) continue;
        MJ_TRY(run_once(s, v)); /* warm-up */
        int64_t n = 1;
        double el = 0;
        for (;;) {
            MJ_TRY(time_runs(s, v, false, n, &el));
            if (el >= target * 0.2 || n >= (INT64_C(1) << 26)) break;
            int64_t grow = el > 0 ? (int64_t)(target * 0.25 / el) + 1 : 100;
            n *= grow < 2 ? 2 : grow > 100 ? 100 : grow;
        }
        iters[i] = calls_for(n, el, target);
        if (v->one_thread) {
            /* the twin's calls per round: its share of the same target */
            MJ_TRY(run_compiled(s, v->one_thread)); /* warm-up */
            double el1;
            MJ_TRY(time_runs(s, v, true, n, &el1));
            iters1[i] = calls_for(n, el1, target);
        }
        /* a call of over a second (eager at batch 1024) is its own average:
         * three rounds are enough and keep the full run short */
        vreps[i] = el / (double)n > 1e9 && reps > 3 ? 3 : reps;
    }
    /* samples, then per round the twins' one-thread/threads ratios, the
     * copies' speed-ups and the ratio of the two */
    size_t per = (size_t)reps * (size_t)s->nv;
    double *samples = calloc(4 * per, sizeof *samples);
    if (!samples) return mj_fail(MJ_ERR_NOMEM, "bench: out of memory");
    double *speedups = samples + per, *copies = samples + 2 * per, *of_host = samples + 3 * per;
    /* rounds: every variant once per round, start rotating, so drift in the
     * machine's speed hits all variants alike. At threads > 1 each round
     * starts with the host check: what the host gives that many threads
     * changes within a cell, and one check before it hid that. */
    s->host_lo = s->host_hi = NAN;
    for (int r = 0; r < reps; r++) {
        if (s->w.threads > 1) {
            double h = mj_bench_thread_ceiling(s->w.threads);
            if (!(h >= s->host_lo)) s->host_lo = h;
            if (!(h <= s->host_hi)) s->host_hi = h;
        }
        for (int j = 0; j < s->nv; j++) {
            int i = (j + r) % s->nv;
            if (!s->v[i].timed || r >= vreps[i]) continue;
            /* a twin runs next to its variant, before it in odd rounds,
             * so neither order gets the warmer caches every time */
            variant *v = &s->v[i];
            bool twin_first = v->one_thread && r % 2;
            double el, el1 = NAN;
            mj_status st = twin_first ? time_runs(s, v, true, iters1[i], &el1) : MJ_OK;
            if (st == MJ_OK) st = time_runs(s, v, false, iters[i], &el);
            if (st == MJ_OK && v->one_thread && !twin_first) st = time_runs(s, v, true, iters1[i], &el1);
            double elc = NAN;
            if (st == MJ_OK && v->one_thread) st = time_copies(s, v, iters1[i], &elc);
            if (st != MJ_OK) {
                free(samples);
                return st;
            }
            samples[i * reps + r] = el / (double)iters[i];
            if (v->one_thread) {
                speedups[i * reps + r] = (el1 / (double)iters1[i]) / samples[i * reps + r];
                copies[i * reps + r] = copies_of(s) * el1 / elc;
                of_host[i * reps + r] = speedups[i * reps + r] / copies[i * reps + r];
            }
        }
    }
    double flops = mj_bench_setup_flops(s);
    for (int i = 0; i < s->nv; i++) {
        if (!s->v[i].timed) continue;
        double *x = samples + i * reps;
        int nr = vreps[i];
        double med = median_of(x, nr);
        if (s->v[i].one_thread) {
            double *q = speedups + i * reps;
            results[i].vs_one_thread = median_of(q, nr);
            results[i].vs_one_thread_min = q[0];
            q = copies + i * reps;
            results[i].host_copies = median_of(q, nr);
            results[i].host_copies_min = q[0];
            q = of_host + i * reps;
            results[i].vs_host = median_of(q, nr);
            results[i].vs_host_min = q[0];
        }
        results[i].reps = nr;
        results[i].median_ns = med;
        results[i].min_ns = x[0];
        results[i].iters = iters[i];
        results[i].gflops = med > 0 ? flops / med : NAN;
    }
    free(samples);
    return MJ_OK;
}

