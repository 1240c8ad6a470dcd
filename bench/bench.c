/* The benchmark harness (bench.h): builds each workload, checks every
 * variant against eager, times the variants interleaved and reports. */
#include "bench/bench.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "bench/peers.h"
#include "src/internal.h"

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

typedef struct variant {
    int kind;
    bool exact;   /* must be bit-identical to eager */
    bool timed;   /* false: built for checking only (single-threaded refs at threads > 1) */
    mj_compiled *compiled;
    double compile_ms;
    mj_peer *peer;
} variant;

struct mj_bench_setup {
    mj_bench_workload w;
    mj_jit *jit;
    mj_module *model;
    mj_graph *trace;
    mj_tensor *x;
    int64_t batch;
    int64_t in_features, out_features;
    int n_layers;
    mj_peer_layer *layers;      /* masked dense weights for the peers (owned copies) */
    mj_tensor **layer_tensors;  /* the tensors behind layers[].w / .b                 */
    bool peers_expressible;
    char peer_note[256];        /* why peers were skipped, if they were              */
    double sum_in_out;          /* sum of in*out over Linear layers                  */
    int64_t sum_k;              /* sum of in_features (tolerance scale)              */
    float *ybuf;
    int64_t y_numel;
    variant v[V_COUNT];
    int nv;
    char skipped[V_COUNT][256];
    int n_skipped;
    double trace_ms; /* mj_trace_module of the model, once per workload */
};

/* ---- small helpers ----------------------------------------------------- */

/* Wall clock by default; process CPU time on request (robust when the
 * machine is oversubscribed, meaningful for single-threaded runs only). */
static _Thread_local clockid_t bench_clock = CLOCK_MONOTONIC;

void mj_bench_use_cpu_clock(bool cpu) {
    bench_clock = cpu ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC;
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(bench_clock, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static long peak_rss_kb(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
    return ru.ru_maxrss; /* kilobytes on Linux */
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

/* Which mj_act an activation module computes, found by running it on probe
 * values (type names cannot tell GELU from GELU(tanh)). */
static bool identify_act(mj_module *m, mj_act *out) {
    static const float probe[8] = {-3.0f, -1.25f, -0.5f, -0.0f, 0.25f, 0.75f, 1.5f, 4.0f};
    int64_t shape[2] = {1, 8};
    mj_tensor *x = NULL, *y = NULL;
    if (mj_tensor_from_data(&x, 2, shape, probe) != MJ_OK) return false;
    bool found = false;
    if (mj_module_forward(m, x, &y) == MJ_OK && mj_tensor_numel(y) == 8) {
        const float *yd = mj_tensor_data(y);
        for (int a = 0; a < MJ_ACT_COUNT && !found; a++) {
            bool same = true;
            for (int i = 0; i < 8 && same; i++) {
                float e = mj_act_apply((mj_act)a, probe[i]);
                same = memcmp(&e, &yd[i], sizeof e) == 0;
            }
            if (same) {
                *out = (mj_act)a;
                found = true;
            }
        }
    }
    mj_tensor_release(x);
    mj_tensor_release(y);
    mj_clear_error();
    return found;
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
        if (!identify_act(m, &act)) {
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
    return MJ_OK;
}

/* ---- setup -------------------------------------------------------------- */

void mj_bench_setup_free(mj_bench_setup *s) {
    if (!s) return;
    for (int i = 0; i < s->nv; i++) {
        mj_compiled_free(s->v[i].compiled);
        mj_peer_free(s->v[i].peer);
    }
    if (s->layer_tensors)
        for (int i = 0; i < 2 * s->n_layers; i++) mj_tensor_release(s->layer_tensors[i]);
    free(s->layer_tensors);
    free(s->layers);
    free(s->ybuf);
    mj_tensor_release(s->x);
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
    if (st != MJ_OK)
        return mj_fail_prefix(st, "%s: %s: compiling", s->w.id, variant_names[kind]);
    const mj_compile_stats *cs = mj_compiled_stats(v->compiled);
    v->compile_ms = cs ? cs->total_ms : -1;
    s->nv++;
    return MJ_OK;
}

static mj_status make_input(mj_bench_setup *s, int64_t batch) {
    mj_rng rng;
    mj_rng_seed(&rng, s->w.seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)batch));
    int64_t shape[2] = {batch, s->in_features};
    mj_tensor *x = NULL;
    MJ_TRY(mj_tensor_randn(&x, 2, shape, &rng));
    int64_t yn;
    if (__builtin_mul_overflow(batch, s->out_features, &yn)) {
        mj_tensor_release(x);
        return mj_fail(MJ_ERR_LIMIT, "bench: batch %lld too large", (long long)batch);
    }
    float *y = malloc((size_t)yn * sizeof *y);
    if (!y) {
        mj_tensor_release(x);
        return mj_fail(MJ_ERR_NOMEM, "bench: out of memory for the output");
    }
    mj_tensor_release(s->x);
    free(s->ybuf);
    s->x = x;
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
            s->v[idx].peer = NULL;
        }
        if (!mj_peer_built((mj_peer_kind)k)) continue;
        mj_peer *p = NULL;
        if (!s->peers_expressible) {
            if (idx < 0) note_skip(s, "%s: %.200s", mj_peer_name((mj_peer_kind)k), s->peer_note);
        } else if (mj_peer_new((mj_peer_kind)k, s->n_layers, s->layers, s->batch, s->w.threads,
                               &p) != MJ_OK) {
            if (idx < 0) note_skip(s, "%s: %.200s", mj_peer_name((mj_peer_kind)k), mj_last_error());
            mj_clear_error();
        }
        if (idx >= 0) {
            if (p) {
                s->v[idx].peer = p;
            } else {
                /* drop the variant: shift the rest down */
                memmove(&s->v[idx], &s->v[idx + 1], (size_t)(s->nv - idx - 1) * sizeof s->v[0]);
                s->nv--;
            }
        } else if (p) {
            variant *v = &s->v[s->nv++];
            memset(v, 0, sizeof *v);
            v->kind = kind;
            v->timed = true;
            v->compile_ms = -1;
            v->peer = p;
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
    st = mj_trace_module(s->model, s->x, &s->trace);
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

/* Changes the batch: new input, output buffer and peers (whose kernels are
 * shaped per batch). The compiled code runs at any batch. */
mj_status mj_bench_setup_set_batch(mj_bench_setup *s, int64_t batch) {
    if (!s || batch < 1)
        return mj_fail(MJ_ERR_INVALID, "bench: batch %lld must be >= 1", (long long)batch);
    MJ_TRY(make_input(s, batch));
    s->w.batch = batch;
    build_peers(s);
    return MJ_OK;
}

mj_module *mj_bench_setup_model(mj_bench_setup *s) { return s->model; }
const mj_tensor *mj_bench_setup_input(const mj_bench_setup *s) { return s->x; }
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
    return i >= 0 && i < s->nv && s->v[i].peer != NULL;
}
double mj_bench_variant_compile_ms(const mj_bench_setup *s, int i) {
    return i >= 0 && i < s->nv ? s->v[i].compile_ms : -1;
}

/* ---- running ------------------------------------------------------------ */

/* One forward call; the output is dropped (eager and interp allocate it,
 * as PyTorch does; compiled and peers write into buffers). */
static mj_status run_once(mj_bench_setup *s, variant *v) {
    mj_tensor *y = NULL;
    mj_status st = MJ_OK;
    switch (v->kind) {
    case V_EAGER: st = mj_module_forward(s->model, s->x, &y); break;
    case V_INTERP: st = mj_graph_run(s->trace, s->x, &y); break;
    case V_EXACT:
    case V_FAST:
    case V_FROZEN:
        st = mj_compiled_run_raw(v->compiled, mj_tensor_data(s->x), s->batch, s->ybuf, s->y_numel);
        break;
    default: (void)mj_peer_run(v->peer, mj_tensor_data(s->x)); break;
    }
    mj_tensor_release(y);
    return st;
}

mj_status mj_bench_variant_output(mj_bench_setup *s, int i, mj_tensor **out) {
    if (!s || !out || i < 0 || i >= s->nv)
        return mj_fail(MJ_ERR_INVALID, "bench: no variant %d (have %d)", i, s ? s->nv : 0);
    variant *v = &s->v[i];
    int64_t shape[2] = {s->batch, s->out_features};
    mj_status st;
    switch (v->kind) {
    case V_EAGER: st = mj_module_forward(s->model, s->x, out); break;
    case V_INTERP: st = mj_graph_run(s->trace, s->x, out); break;
    case V_EXACT:
    case V_FAST:
    case V_FROZEN:
        memset(s->ybuf, 0xff, (size_t)s->y_numel * sizeof(float)); /* NaNs: catch unwritten output */
        st = mj_compiled_run_raw(v->compiled, mj_tensor_data(s->x), s->batch, s->ybuf, s->y_numel);
        if (st == MJ_OK) st = mj_tensor_from_data(out, 2, shape, s->ybuf);
        break;
    default: st = mj_tensor_from_data(out, 2, shape, mj_peer_run(v->peer, mj_tensor_data(s->x))); break;
    }
    if (st != MJ_OK) return mj_fail_prefix(st, "%s: %s", s->w.id, variant_names[v->kind]);
    return MJ_OK;
}

void mj_bench_tolerance(const mj_bench_setup *s, double *rtol, double *atol) {
    double k = sqrt((double)(s->sum_k > 0 ? s->sum_k : 1));
    if (rtol) *rtol = MJ_RTOL_F32 * k;
    if (atol) *atol = MJ_ATOL_F32 * k;
}

mj_status mj_bench_check(mj_bench_setup *s) {
    if (!s) return mj_fail(MJ_ERR_INVALID, "bench: NULL setup");
    mj_tensor *ref = NULL;
    MJ_TRY(mj_bench_variant_output(s, 0, &ref)); /* variant 0 is eager */
    MJ_ASSERT(s->v[0].kind == V_EAGER);
    double rtol, atol;
    mj_bench_tolerance(s, &rtol, &atol);
    double maxabs = 0;
    const float *rd = mj_tensor_data(ref);
    for (int64_t i = 0; i < mj_tensor_numel(ref); i++)
        if (fabs(rd[i]) > maxabs) maxabs = fabs(rd[i]);
    double atol_eff = atol * (maxabs > 1 ? maxabs : 1);

    char msg[2048] = "";
    size_t used = 0;
    int n_bad = 0;
    mj_status result = MJ_OK;
    for (int i = 1; i < s->nv; i++) {
        mj_tensor *y = NULL;
        mj_status st = mj_bench_variant_output(s, i, &y);
        if (st != MJ_OK) {
            mj_tensor_release(ref);
            return st;
        }
        mj_compare c = mj_tensor_compare(y, ref, rtol, atol_eff);
        bool ok = s->v[i].exact ? c.bit_identical : (c.same_shape && c.close);
        if (!ok) {
            char d[512];
            mj_compare_describe(&c, y, ref, d, sizeof d);
            int n = snprintf(msg + used, sizeof msg - used, "%s%s %s eager (%s)",
                             n_bad ? "; " : "", variant_names[s->v[i].kind],
                             s->v[i].exact ? "is not bit-identical to" : "is not close to", d);
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

static mj_status time_runs(mj_bench_setup *s, variant *v, int64_t n, double *ns) {
    double t0 = now_ns();
    for (int64_t i = 0; i < n; i++) MJ_TRY(run_once(s, v));
    *ns = now_ns() - t0;
    return MJ_OK;
}

mj_status mj_bench_measure(mj_bench_setup *s, int reps, double min_ms, mj_bench_result *results) {
    if (!s || !results || reps < 1 || !(min_ms > 0))
        return mj_fail(MJ_ERR_INVALID, "bench: reps %d must be >= 1 and min_ms %g > 0", reps, min_ms);
    double target = min_ms * 1e6;
    int64_t iters[V_COUNT];
    int vreps[V_COUNT];
    /* calibrate: grow the call count until a batch takes a fifth of the target */
    for (int i = 0; i < s->nv; i++) {
        variant *v = &s->v[i];
        results[i] = (mj_bench_result){.median_ns = NAN, .min_ns = NAN, .iters = 0,
                                       .gflops = NAN, .compile_ms = v->compile_ms};
        iters[i] = 0;
        vreps[i] = 0;
        if (!v->timed) continue;
        MJ_TRY(run_once(s, v)); /* warm-up */
        int64_t n = 1;
        double el = 0;
        for (;;) {
            MJ_TRY(time_runs(s, v, n, &el));
            if (el >= target * 0.2 || n >= (INT64_C(1) << 26)) break;
            int64_t grow = el > 0 ? (int64_t)(target * 0.25 / el) + 1 : 100;
            n *= grow < 2 ? 2 : grow > 100 ? 100 : grow;
        }
        double it = ceil((double)n * target / (el > 0 ? el : 1));
        iters[i] = it < 1 ? 1 : it > 1e9 ? (int64_t)1e9 : (int64_t)it;
        /* a call of over a second (eager at batch 1024) is its own average:
         * three rounds are enough and keep the full run short */
        vreps[i] = el / (double)n > 1e9 && reps > 3 ? 3 : reps;
    }
    double *samples = calloc((size_t)reps * (size_t)s->nv, sizeof *samples);
    if (!samples) return mj_fail(MJ_ERR_NOMEM, "bench: out of memory");
    /* rounds: every variant once per round, start rotating, so drift in the
     * machine's speed hits all variants alike */
    for (int r = 0; r < reps; r++) {
        for (int j = 0; j < s->nv; j++) {
            int i = (j + r) % s->nv;
            if (!s->v[i].timed || r >= vreps[i]) continue;
            double el;
            mj_status st = time_runs(s, &s->v[i], iters[i], &el);
            if (st != MJ_OK) {
                free(samples);
                return st;
            }
            samples[i * reps + r] = el / (double)iters[i];
        }
    }
    double flops = mj_bench_setup_flops(s);
    for (int i = 0; i < s->nv; i++) {
        if (!s->v[i].timed) continue;
        double *x = samples + i * reps;
        int nr = vreps[i];
        qsort(x, (size_t)nr, sizeof *x, cmp_double);
        double med = nr % 2 ? x[nr / 2] : 0.5 * (x[nr / 2 - 1] + x[nr / 2]);
        results[i].reps = nr;
        results[i].median_ns = med;
        results[i].min_ns = x[0];
        results[i].iters = iters[i];
        results[i].gflops = med > 0 ? flops / med : NAN;
    }
    free(samples);
    return MJ_OK;
}

/* ---- the program ---------------------------------------------------------- */

#define MAX_WORKLOADS 64
#define MAX_THREADS_LIST 8

typedef struct row {
    char variant[32];
    bool peer;
    mj_bench_result r;
    double ratio; /* best peer time / this time; NAN without peers */
} row;

typedef struct wl_result {
    mj_bench_workload w;
    double flops;
    long rss_kb;
    int n_rows;
    row rows[V_COUNT];
    int n_skipped;
    char skipped[V_COUNT][256];
} wl_result;

typedef struct options {
    bool json, csv, smoke, help, list;
    bool cpu_clock;
    const char *plot;
    bool want[7];  /* W1..W6 by number */
    int reps;
    double min_ms;
    int threads[MAX_THREADS_LIST];
    int n_threads;
    uint64_t seed;
} options;

static void usage(FILE *f, const char *prog) {
    fprintf(f,
            "usage: %s [options]\n"
            "Times eager, the interpreter, the compiled modes and the peers (OpenBLAS,\n"
            "LIBXSMM, oneDNN, XNNPACK: those found at build time) on masked MLP workloads\n"
            "(--list shows them); every variant is checked against eager first.\n"
            "  --workloads LIST  comma-separated ids (default W1,W2,W3,W4,W5,W6)\n"
            "  --reps N          timing rounds, median reported (default 7; --smoke 3)\n"
            "  --min-ms X        time per variant per round in ms (default 25; --smoke 2)\n"
            "  --threads LIST    thread counts for W6 (default 1%s)\n"
            "  --seed N          weights, masks and inputs (default 0)\n"
            "  --clock wall|cpu  wall time (default) or process CPU time (for loaded machines;\n"
            "                    single-thread runs only)\n"
            "  --smoke           a quick run for CI: few rounds, 1024 -> 256 wide, W6 at 1,8,64\n"
            "  --json | --csv    machine-readable output instead of the table\n"
            "  --plot FILE.svg   GFLOP/s against batch for W6 (needs gnuplot)\n"
            "  --list            list the workloads and exit\n"
            "  --help            this text\n",
            prog, MJ_BENCH_JIT_THREADS ? ",2" : " (the JIT is single-threaded)");
}

static bool parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static int parse_args(int argc, char **argv, options *o, FILE *err) {
    const char *prog = argc > 0 && argv[0] ? argv[0] : "maskjit-bench";
    memset(o, 0, sizeof *o);
    o->reps = -1;
    o->min_ms = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        bool takes = !strcmp(a, "--workloads") || !strcmp(a, "--reps") || !strcmp(a, "--min-ms") ||
                     !strcmp(a, "--plot") || !strcmp(a, "--threads") || !strcmp(a, "--seed") ||
                     !strcmp(a, "--clock");
        if (takes) {
            if (i + 1 >= argc) {
                fprintf(err, "%s: %s needs a value\n", prog, a);
                return 2;
            }
            val = argv[++i];
        }
        if (!strcmp(a, "--json")) o->json = true;
        else if (!strcmp(a, "--csv")) o->csv = true;
        else if (!strcmp(a, "--smoke")) o->smoke = true;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) o->help = true;
        else if (!strcmp(a, "--list")) o->list = true;
        else if (!strcmp(a, "--clock")) {
            if (strcmp(val, "wall") && strcmp(val, "cpu")) {
                fprintf(err, "%s: --clock wants 'wall' or 'cpu', got '%s'\n", prog, val);
                return 2;
            }
            o->cpu_clock = !strcmp(val, "cpu");
        } else if (!strcmp(a, "--plot")) {
            if (!*val || strchr(val, '\'') || strchr(val, '\n')) {
                fprintf(err, "%s: --plot needs a file name without quotes or newlines, got '%s'\n",
                        prog, val);
                return 2;
            }
            o->plot = val;
        } else if (!strcmp(a, "--reps")) {
            int64_t v;
            if (!parse_i64(val, 1, 1000, &v)) {
                fprintf(err, "%s: --reps wants an integer in 1..1000, got '%s'\n", prog, val);
                return 2;
            }
            o->reps = (int)v;
        } else if (!strcmp(a, "--seed")) {
            int64_t v;
            if (!parse_i64(val, 0, INT64_MAX, &v)) {
                fprintf(err, "%s: --seed wants a non-negative integer, got '%s'\n", prog, val);
                return 2;
            }
            o->seed = (uint64_t)v;
        } else if (!strcmp(a, "--min-ms")) {
            char *end;
            errno = 0;
            double v = strtod(val, &end);
            if (errno || end == val || *end || !(v > 0 && v <= 60000)) {
                fprintf(err, "%s: --min-ms wants a number of milliseconds in (0, 60000], got '%s'\n",
                        prog, val);
                return 2;
            }
            o->min_ms = v;
        } else if (!strcmp(a, "--workloads") || !strcmp(a, "--threads")) {
            bool wl = !strcmp(a, "--workloads");
            char buf[256];
            if (strlen(val) >= sizeof buf || !*val) {
                fprintf(err, "%s: %s: list '%s' is empty or too long\n", prog, a, val);
                return 2;
            }
            strcpy(buf, val);
            char *save = NULL;
            int count = 0;
            for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                int64_t v;
                if (wl) {
                    if ((t[0] != 'W' && t[0] != 'w') || !parse_i64(t + 1, 1, 6, &v)) {
                        fprintf(err, "%s: unknown workload '%s' (known: W1, W2, W3, W4, W5, W6)\n",
                                prog, t);
                        return 2;
                    }
                    o->want[v] = true;
                } else {
                    if (!parse_i64(t, 1, 256, &v)) {
                        fprintf(err, "%s: --threads wants counts in 1..256, got '%s'\n", prog, t);
                        return 2;
                    }
                    if (o->n_threads >= MAX_THREADS_LIST) {
                        fprintf(err, "%s: --threads takes at most %d counts\n", prog,
                                MAX_THREADS_LIST);
                        return 2;
                    }
                    o->threads[o->n_threads++] = (int)v;
                }
                count++;
            }
            if (count == 0) {
                fprintf(err, "%s: %s: empty list '%s'\n", prog, a, val);
                return 2;
            }
        } else {
            fprintf(err, "%s: unknown argument '%s' (try --help)\n", prog, a);
            return 2;
        }
    }
    if (o->json && o->csv) {
        fprintf(err, "%s: --json and --csv are exclusive\n", prog);
        return 2;
    }
    bool any = false;
    for (int i = 1; i <= 6; i++) any |= o->want[i];
    if (!any)
        for (int i = 1; i <= 6; i++) o->want[i] = true;
    if (o->reps < 0) o->reps = o->smoke ? 3 : 7;
    if (o->min_ms < 0) o->min_ms = o->smoke ? 2 : 25;
    if (o->n_threads == 0) {
        o->threads[o->n_threads++] = 1;
        if (MJ_BENCH_JIT_THREADS) o->threads[o->n_threads++] = 2;
    }
    return 0;
}

static void set_wl(mj_bench_workload *w, const char *id, const char *spec, int64_t batch,
                   mj_bench_mask mask, double density, int threads, uint64_t seed) {
    memset(w, 0, sizeof *w);
    snprintf(w->id, sizeof w->id, "%s", id);
    snprintf(w->spec, sizeof w->spec, "%s", spec);
    w->batch = batch;
    w->mask = mask;
    w->density = density;
    w->threads = threads;
    w->seed = seed;
}

/* The issue 5 table. W6 is listed once per thread count (the batch sweep
 * reuses one setup). */
static int build_workloads(const options *o, mj_bench_workload *ws) {
    int n = 0;
    int big = o->smoke ? 256 : 1024;
    char mlp_big[128], mlp_small[] = "mlp:256,256,256,256:act=relu:bias=1";
    snprintf(mlp_big, sizeof mlp_big, "mlp:%d,%d,%d,%d:act=relu:bias=1", big, big, big, big);
    if (o->want[1]) {
        set_wl(&ws[n], "W1", "mut", 3, MJ_BENCH_MASK_IDENTITY, 1, 1, o->seed);
        snprintf(ws[n++].description, sizeof ws[0].description,
                 "seed model (mut): 3 Linear(16,16)+bias, identity masks, batch 3");
    }
    if (o->want[2]) {
        set_wl(&ws[n], "W2", mlp_small, 64, MJ_BENCH_MASK_RANDOM, 0.1, 1, o->seed);
        snprintf(ws[n++].description, sizeof ws[0].description,
                 "3 Linear(256,256)+bias, ReLU between, unstructured masks density 0.1, batch 64");
    }
    if (o->want[3]) {
        set_wl(&ws[n], "W3", mlp_big, 64, MJ_BENCH_MASK_ONES, 1, 1, o->seed);
        snprintf(ws[n++].description, sizeof ws[0].description,
                 "3 Linear(%d,%d)+bias, ReLU between, all-ones masks (dense), batch 64", big, big);
    }
    if (o->want[4]) {
        set_wl(&ws[n], "W4", mlp_big, 64, MJ_BENCH_MASK_RANDOM, 0.1, 1, o->seed);
        snprintf(ws[n++].description, sizeof ws[0].description,
                 "3 Linear(%d,%d)+bias, ReLU between, unstructured masks density 0.1, batch 64",
                 big, big);
    }
    if (o->want[5]) {
        set_wl(&ws[n], "W5", mlp_big, 64, MJ_BENCH_MASK_BLOCK4, 0.1, 1, o->seed);
        snprintf(ws[n++].description, sizeof ws[0].description,
                 "3 Linear(%d,%d)+bias, ReLU between, 1x4 block masks density 0.1, batch 64", big,
                 big);
    }
    if (o->want[6])
        for (int t = 0; t < o->n_threads; t++) {
            set_wl(&ws[n], "W6", mlp_big, 1, MJ_BENCH_MASK_ONES, 1, o->threads[t], o->seed);
            snprintf(ws[n++].description, sizeof ws[0].description,
                     "W3 (%d wide, dense masks) at batch B, %d thread%s", big, o->threads[t],
                     o->threads[t] > 1 ? "s" : "");
        }
    return n;
}

static int w6_batches(const options *o, int64_t *b) {
    int n = 0;
    if (o->smoke) {
        b[n++] = 1;
        b[n++] = 8;
        b[n++] = 64;
    } else {
        for (int64_t x = 1; x <= 1024; x *= 2) b[n++] = x;
    }
    return n;
}

static const char *mask_name(mj_bench_mask m) {
    switch (m) {
    case MJ_BENCH_MASK_NONE: return "none";
    case MJ_BENCH_MASK_ONES: return "ones";
    case MJ_BENCH_MASK_IDENTITY: return "identity";
    case MJ_BENCH_MASK_RANDOM: return "unstructured";
    case MJ_BENCH_MASK_BLOCK4: return "block1x4";
    }
    return "?";
}

static void cpu_name(char *buf, size_t size) {
    snprintf(buf, size, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        char *c = strchr(line, ':');
        if (!c) continue;
        c++;
        while (*c == ' ' || *c == '\t') c++;
        c[strcspn(c, "\n")] = 0;
        snprintf(buf, size, "%s", c);
        break;
    }
    fclose(f);
}

static void fmt_time(char *buf, size_t n, double ns) {
    if (!isfinite(ns)) snprintf(buf, n, "-");
    else if (ns < 1e3) snprintf(buf, n, "%.1f ns", ns);
    else if (ns < 1e6) snprintf(buf, n, "%.2f us", ns / 1e3);
    else if (ns < 1e9) snprintf(buf, n, "%.2f ms", ns / 1e6);
    else snprintf(buf, n, "%.3f s", ns / 1e9);
}

static void print_table_block(FILE *out, const wl_result *wr) {
    fprintf(out, "\n%s  %s\n", wr->w.id, wr->w.description);
    fprintf(out, "    batch %lld, %d thread%s, %.4g MFLOP per forward (dense count), peak RSS %.1f MB\n",
            (long long)wr->w.batch, wr->w.threads, wr->w.threads > 1 ? "s" : "", wr->flops / 1e6,
            wr->rss_kb / 1024.0);
    fprintf(out, "    %-16s %12s %10s %12s %12s %10s\n", "variant", "median", "GFLOP/s",
            "vs best peer", "compile ms", "calls/round");
    for (int i = 0; i < wr->n_rows; i++) {
        const row *r = &wr->rows[i];
        if (!isfinite(r->r.median_ns)) continue;
        char t[32], ratio[32], comp[32];
        fmt_time(t, sizeof t, r->r.median_ns);
        if (isfinite(r->ratio)) snprintf(ratio, sizeof ratio, "%.3fx", r->ratio);
        else snprintf(ratio, sizeof ratio, "-");
        if (r->r.compile_ms >= 0) snprintf(comp, sizeof comp, "%.1f", r->r.compile_ms);
        else snprintf(comp, sizeof comp, "-");
        fprintf(out, "    %-16s %12s %10.2f %12s %12s %10lld\n", r->variant, t, r->r.gflops, ratio,
                comp, (long long)r->r.iters);
    }
    for (int i = 0; i < wr->n_skipped; i++) fprintf(out, "    (skipped) %s\n", wr->skipped[i]);
}

/* W6 again as one matrix: GFLOP/s per batch and variant. */
static void print_w6_matrix(FILE *out, const wl_result *res, int n) {
    const char *names[V_COUNT];
    int nn = 0;
    for (int i = 0; i < n; i++) {
        if (strcmp(res[i].w.id, "W6")) continue;
        for (int j = 0; j < res[i].n_rows; j++) {
            bool seen = false;
            for (int k = 0; k < nn; k++) seen |= !strcmp(names[k], res[i].rows[j].variant);
            if (!seen && nn < V_COUNT) names[nn++] = res[i].rows[j].variant;
        }
    }
    if (nn == 0) return;
    fprintf(out, "\nW6 batch scaling, GFLOP/s (best peer ratio in parentheses)\n");
    fprintf(out, "    %7s %3s", "batch", "thr");
    for (int k = 0; k < nn; k++) fprintf(out, " %22s", names[k]);
    fprintf(out, "\n");
    for (int i = 0; i < n; i++) {
        if (strcmp(res[i].w.id, "W6")) continue;
        fprintf(out, "    %7lld %3d", (long long)res[i].w.batch, res[i].w.threads);
        for (int k = 0; k < nn; k++) {
            char cell[40] = "-";
            for (int j = 0; j < res[i].n_rows; j++) {
                const row *r = &res[i].rows[j];
                if (strcmp(r->variant, names[k]) || !isfinite(r->r.median_ns)) continue;
                if (isfinite(r->ratio)) snprintf(cell, sizeof cell, "%.2f (%.2fx)", r->r.gflops, r->ratio);
                else snprintf(cell, sizeof cell, "%.2f", r->r.gflops);
            }
            fprintf(out, " %22s", cell);
        }
        fprintf(out, "\n");
    }
}

static json_t *num_or_null(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static void write_json(FILE *out, const wl_result *res, int n, const options *o, const char *cpu,
                       const char *llvm_cpu, double rtol, double atol) {
    json_t *root = json_object();
    json_object_set_new(root, "cpu", json_string(cpu));
    json_object_set_new(root, "llvm_cpu", json_string(llvm_cpu));
    json_object_set_new(root, "reps", json_integer(o->reps));
    json_object_set_new(root, "min_ms", json_real(o->min_ms));
    json_object_set_new(root, "smoke", json_boolean(o->smoke));
    json_object_set_new(root, "clock", json_string(o->cpu_clock ? "cpu" : "wall"));
    json_object_set_new(root, "jit_threads_supported", json_boolean(MJ_BENCH_JIT_THREADS));
    json_t *peers = json_object();
    for (int k = 0; k < MJ_PEER_COUNT; k++)
        json_object_set_new(peers, mj_peer_name((mj_peer_kind)k),
                            json_string(mj_peer_info((mj_peer_kind)k)));
    json_object_set_new(root, "peers", peers);
    json_object_set_new(root, "tolerance",
                        json_pack("{s:s,s:f,s:f}", "rule",
                                  "exact variants bit-identical; others |a-e| <= rtol*|e| + "
                                  "atol*max(1,max|e|), rtol = MJ_RTOL_F32*sqrt(K), atol = "
                                  "MJ_ATOL_F32*sqrt(K), K = sum of in_features",
                                  "rtol_per_sqrt_k", rtol, "atol_per_sqrt_k", atol));
    json_t *wls = json_array();
    for (int i = 0; i < n; i++) {
        const wl_result *wr = &res[i];
        json_t *w = json_object();
        json_object_set_new(w, "id", json_string(wr->w.id));
        json_object_set_new(w, "description", json_string(wr->w.description));
        json_object_set_new(w, "spec", json_string(wr->w.spec));
        json_object_set_new(w, "batch", json_integer(wr->w.batch));
        json_object_set_new(w, "threads", json_integer(wr->w.threads));
        json_object_set_new(w, "mask", json_string(mask_name(wr->w.mask)));
        json_object_set_new(w, "density", json_real(wr->w.density));
        json_object_set_new(w, "flops", json_real(wr->flops));
        json_object_set_new(w, "peak_rss_kb", json_integer(wr->rss_kb));
        json_t *rs = json_array();
        for (int j = 0; j < wr->n_rows; j++) {
            const row *r = &wr->rows[j];
            if (!isfinite(r->r.median_ns)) continue;
            json_t *jr = json_object();
            json_object_set_new(jr, "variant", json_string(r->variant));
            json_object_set_new(jr, "median_ns", json_real(r->r.median_ns));
            json_object_set_new(jr, "min_ns", json_real(r->r.min_ns));
            json_object_set_new(jr, "iters", json_integer(r->r.iters));
            json_object_set_new(jr, "rounds", json_integer(r->r.reps));
            json_object_set_new(jr, "gflops", num_or_null(r->r.gflops));
            json_object_set_new(jr, "ratio_to_best_peer", num_or_null(r->ratio));
            json_object_set_new(jr, "compile_ms",
                                r->r.compile_ms >= 0 ? json_real(r->r.compile_ms) : json_null());
            json_array_append_new(rs, jr);
        }
        json_object_set_new(w, "results", rs);
        json_t *sk = json_array();
        for (int j = 0; j < wr->n_skipped; j++) json_array_append_new(sk, json_string(wr->skipped[j]));
        json_object_set_new(w, "skipped", sk);
        json_array_append_new(wls, w);
    }
    json_object_set_new(root, "workloads", wls);
    json_dumpf(root, out, JSON_INDENT(2) | JSON_REAL_PRECISION(8));
    fputc('\n', out);
    json_decref(root);
}

static void write_csv(FILE *out, const wl_result *res, int n) {
    fprintf(out, "workload,batch,threads,variant,median_ns,min_ns,iters,gflops,ratio_to_best_peer,"
                 "compile_ms,peak_rss_kb\n");
    for (int i = 0; i < n; i++)
        for (int j = 0; j < res[i].n_rows; j++) {
            const row *r = &res[i].rows[j];
            if (!isfinite(r->r.median_ns)) continue;
            fprintf(out, "%s,%lld,%d,%s,%.1f,%.1f,%lld,%.4f,", res[i].w.id,
                    (long long)res[i].w.batch, res[i].w.threads, r->variant, r->r.median_ns,
                    r->r.min_ns, (long long)r->r.iters, r->r.gflops);
            if (isfinite(r->ratio)) fprintf(out, "%.4f", r->ratio);
            fputc(',', out);
            if (r->r.compile_ms >= 0) fprintf(out, "%.2f", r->r.compile_ms);
            fprintf(out, ",%ld\n", res[i].rss_kb);
        }
}

static bool in_path(const char *prog) {
    const char *path = getenv("PATH");
    if (!path) return false;
    char buf[4096];
    const char *p = path;
    while (*p) {
        size_t len = strcspn(p, ":");
        if (len > 0 && len + strlen(prog) + 2 < sizeof buf) {
            memcpy(buf, p, len);
            buf[len] = '/';
            strcpy(buf + len + 1, prog);
            if (access(buf, X_OK) == 0) return true;
        }
        p += len;
        if (*p == ':') p++;
    }
    return false;
}

/* GFLOP/s against batch for W6, one line per variant and thread count.
 * Returns 0, or 1 when gnuplot ran and failed. */
static int write_plot(const char *file, const wl_result *res, int n, FILE *err) {
    int n6 = 0;
    for (int i = 0; i < n; i++) n6 += !strcmp(res[i].w.id, "W6");
    if (n6 == 0) {
        fprintf(err, "maskjit-bench: --plot: W6 (batch scaling) was not run; no plot written\n");
        return 0;
    }
    if (!in_path("gnuplot")) {
        fprintf(err, "maskjit-bench: --plot: gnuplot not found in PATH; no plot written\n");
        return 0;
    }
    FILE *g = popen("gnuplot", "w");
    if (!g) {
        fprintf(err, "maskjit-bench: --plot: cannot start gnuplot: %s\n", strerror(errno));
        return 1;
    }
    fprintf(g, "set terminal svg size 900,560 dynamic enhanced font 'sans,11'\n"
               "set output '%s'\n"
               "set title 'W6: 3 dense Linear layers, GFLOP/s against batch'\n"
               "set xlabel 'batch'\nset ylabel 'GFLOP/s'\nset logscale x 2\nset grid\n"
               "set key outside right\n",
               file);
    /* series = (variant, threads) */
    char series[32][48];
    int ns = 0;
    for (int i = 0; i < n; i++) {
        if (strcmp(res[i].w.id, "W6")) continue;
        for (int j = 0; j < res[i].n_rows; j++) {
            if (!isfinite(res[i].rows[j].r.median_ns)) continue;
            char name[48];
            snprintf(name, sizeof name, "%s %dT", res[i].rows[j].variant, res[i].w.threads);
            bool seen = false;
            for (int k = 0; k < ns; k++) seen |= !strcmp(series[k], name);
            if (!seen && ns < 32) strcpy(series[ns++], name);
        }
    }
    for (int k = 0; k < ns; k++) {
        fprintf(g, "$s%d << EOD\n", k);
        for (int i = 0; i < n; i++) {
            if (strcmp(res[i].w.id, "W6")) continue;
            for (int j = 0; j < res[i].n_rows; j++) {
                char name[48];
                snprintf(name, sizeof name, "%s %dT", res[i].rows[j].variant, res[i].w.threads);
                if (!strcmp(name, series[k]) && isfinite(res[i].rows[j].r.median_ns))
                    fprintf(g, "%lld %.6g\n", (long long)res[i].w.batch, res[i].rows[j].r.gflops);
            }
        }
        fprintf(g, "EOD\n");
    }
    fprintf(g, "plot ");
    for (int k = 0; k < ns; k++)
        fprintf(g, "%s$s%d using 1:2 with linespoints title '%s'", k ? ", " : "", k, series[k]);
    fprintf(g, "\n");
    int st = pclose(g);
    if (st != 0) {
        fprintf(err, "maskjit-bench: --plot: gnuplot failed (status %d)\n", st);
        return 1;
    }
    fprintf(err, "maskjit-bench: plot written to %s\n", file);
    return 0;
}

static void fill_result(wl_result *wr, mj_bench_setup *s, const mj_bench_result *r) {
    wr->w = s->w;
    wr->flops = mj_bench_setup_flops(s);
    wr->rss_kb = peak_rss_kb();
    wr->n_rows = s->nv;
    double best_peer = NAN;
    for (int i = 0; i < s->nv; i++)
        if (s->v[i].peer && isfinite(r[i].median_ns) &&
            (!isfinite(best_peer) || r[i].median_ns < best_peer))
            best_peer = r[i].median_ns;
    for (int i = 0; i < s->nv; i++) {
        row *rw = &wr->rows[i];
        snprintf(rw->variant, sizeof rw->variant, "%s", variant_names[s->v[i].kind]);
        rw->peer = s->v[i].peer != NULL;
        rw->r = r[i];
        rw->ratio = isfinite(best_peer) && r[i].median_ns > 0 ? best_peer / r[i].median_ns : NAN;
    }
    wr->n_skipped = s->n_skipped;
    for (int i = 0; i < s->n_skipped; i++) snprintf(wr->skipped[i], sizeof wr->skipped[i], "%s", s->skipped[i]);
}

/* Check + measure the setup at its current batch; appends to res. */
static int run_one(mj_bench_setup *s, const options *o, wl_result *res, int *n_res, FILE *out,
                   FILE *err) {
    if (*n_res >= MAX_WORKLOADS * 2) return 0;
    fprintf(err, "[%s] batch %lld, %d thread(s): checking %d variants against eager\n", s->w.id,
            (long long)s->batch, s->w.threads, s->nv);
    if (mj_bench_check(s) != MJ_OK) {
        fprintf(err, "maskjit-bench: %s\n", mj_last_error());
        return 1;
    }
    fprintf(err, "[%s] timing: %d rounds x %d variants, ~%g ms each\n", s->w.id, o->reps, s->nv,
            o->min_ms);
    mj_bench_result r[V_COUNT];
    if (mj_bench_measure(s, o->reps, o->min_ms, r) != MJ_OK) {
        fprintf(err, "maskjit-bench: %s: timing: %s\n", s->w.id, mj_last_error());
        return 1;
    }
    wl_result *wr = &res[(*n_res)++];
    fill_result(wr, s, r);
    if (!o->json && !o->csv && strcmp(s->w.id, "W6") != 0) {
        print_table_block(out, wr);
        fflush(out);
    }
    return 0;
}

int mj_bench_run(int argc, char **argv, FILE *out, FILE *err) {
    options o;
    int rc = parse_args(argc, argv, &o, err);
    if (rc) return rc;
    const char *prog = argc > 0 && argv[0] ? argv[0] : "maskjit-bench";
    if (o.help) {
        usage(out, prog);
        return 0;
    }
    mj_bench_use_cpu_clock(o.cpu_clock);
    mj_bench_workload ws[MAX_WORKLOADS];
    int nw = build_workloads(&o, ws);
    if (o.list) {
        for (int i = 0; i < nw; i++)
            fprintf(out, "%s  %s (spec %s)\n", ws[i].id, ws[i].description, ws[i].spec);
        return 0;
    }
    wl_result *res = calloc(MAX_WORKLOADS * 2, sizeof *res);
    if (!res) {
        fprintf(err, "%s: out of memory\n", prog);
        return 1;
    }
    mj_jit *jit = NULL;
    if (mj_jit_new(&jit) != MJ_OK) {
        fprintf(err, "%s: cannot start the JIT: %s\n", prog, mj_last_error());
        free(res);
        return 1;
    }
    char cpu[256];
    cpu_name(cpu, sizeof cpu);
    const char *llvm_cpu = mj_jit_cpu_name(jit);
    if (!o.json && !o.csv) {
        fprintf(out, "maskjit bench — CPU: %s (LLVM: %s)\n", cpu, llvm_cpu ? llvm_cpu : "?");
        for (int k = 0; k < MJ_PEER_COUNT; k++)
            fprintf(out, "  peer %-8s %s\n", mj_peer_name((mj_peer_kind)k),
                    mj_peer_info((mj_peer_kind)k));
        fprintf(out, "  %d rounds, ~%g ms per variant per round, median reported, %s clock%s\n",
                o.reps, o.min_ms, o.cpu_clock ? "process CPU" : "wall",
                o.smoke ? " (--smoke: reduced sizes)" : "");
        fprintf(out, "  ratio = best peer time / variant time (> 1: faster than the best peer)\n");
        if (!MJ_BENCH_JIT_THREADS)
            fprintf(out, "  threads: the JIT's threads option is not parallel yet; 1 thread only\n");
        fflush(out);
    }
    int n_res = 0;
    int64_t batches[16];
    int nb = w6_batches(&o, batches);
    rc = 0;
    for (int i = 0; i < nw && rc == 0; i++) {
        fprintf(err, "[%s] building %s (%s)\n", ws[i].id, ws[i].description, ws[i].spec);
        mj_bench_setup *s = NULL;
        if (mj_bench_setup_new(&ws[i], jit, &s) != MJ_OK) {
            fprintf(err, "%s: %s: %s\n", prog, ws[i].id, mj_last_error());
            rc = 1;
            break;
        }
        fprintf(err, "[%s] traced in %.2f ms\n", ws[i].id, s->trace_ms);
        for (int v = 0; v < s->nv; v++)
            if (s->v[v].compile_ms >= 0)
                fprintf(err, "[%s] %s compiled in %.1f ms (trace + compile %.1f ms)\n", ws[i].id,
                        variant_names[s->v[v].kind], s->v[v].compile_ms, s->trace_ms + s->v[v].compile_ms);
        for (int k = 0; k < s->n_skipped; k++) fprintf(err, "[%s] skipped %s\n", ws[i].id, s->skipped[k]);
        if (!strcmp(ws[i].id, "W6")) {
            for (int b = 0; b < nb && rc == 0; b++) {
                if (mj_bench_setup_set_batch(s, batches[b]) != MJ_OK) {
                    fprintf(err, "%s: W6: %s\n", prog, mj_last_error());
                    rc = 1;
                    break;
                }
                rc = run_one(s, &o, res, &n_res, out, err);
            }
        } else {
            rc = run_one(s, &o, res, &n_res, out, err);
        }
        mj_bench_setup_free(s);
    }
    if (rc == 0) {
        double rtol = MJ_RTOL_F32, atol = MJ_ATOL_F32;
        if (o.json) write_json(out, res, n_res, &o, cpu, llvm_cpu ? llvm_cpu : "?", rtol, atol);
        else if (o.csv) write_csv(out, res, n_res);
        else {
            print_w6_matrix(out, res, n_res);
            fprintf(out, "\ncorrectness: every variant checked against eager before timing; "
                         "interp/compiled-exact/compiled-frozen bit-identical, compiled-fast and "
                         "peers within rtol %.3g*sqrt(K), atol %.3g*sqrt(K)*max(1,max|y|), K = sum "
                         "of in_features\n",
                    MJ_RTOL_F32, MJ_ATOL_F32);
        }
        fflush(out);
        if (o.plot) rc = write_plot(o.plot, res, n_res, err);
    }
    free(res);
    mj_jit_free(jit);
    return rc;
}

int mj_bench_main(int argc, char **argv) { return mj_bench_run(argc, argv, stdout, stderr); }
