/* Tracing (torch.jit.trace semantics): the seed's test_jit_trace, live
 * parameters, batch generalisation, TracerWarnings, consts, error paths,
 * and random models replayed by the interpreter (also after save/load,
 * optimisation and freezing). The reference is always eager mode (or a
 * naive loop written here). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>

#include "ir/ir.h"
#include "maskjit.h"
#include "model_gen.h"
#include "test_util.h"

static mj_tensor *full2(int64_t rows, int64_t cols, float v) {
    int64_t shape[2] = {rows, cols};
    mj_tensor *t = NULL;
    OK(mj_tensor_full(&t, 2, shape, v));
    return t;
}

/* The seed's model: ModelUnderTest(bias=False) with eye masks on linear,
 * seq.0 and seq.1. */
static mj_module *seed_model(void) {
    mj_module *model = NULL;
    OK(mj_model_under_test_new(&model, false));
    static const char *const paths[3] = {"linear", "seq.0", "seq.1"};
    for (int i = 0; i < 3; i++) {
        mj_tensor *mask = NULL;
        mj_parametrization *p = NULL;
        OK(mj_tensor_eye(&mask, 16));
        OK(mj_fake_sparsity_new(&p, mask));
        mj_tensor_release(mask);
        mj_module *lin = mj_module_find(model, paths[i]);
        cr_assert_not_null(lin, "no module %s", paths[i]);
        OK(mj_register_parametrization(lin, "weight", p));
    }
    return model;
}

static mj_graph *trace_at(mj_module *m, int64_t batch, int64_t features) {
    mj_tensor *example = full2(batch, features, 1.0f);
    mj_graph *g = mjt_trace(m, example);
    mj_tensor_release(example);
    return g;
}

/* The seed model (in *model) traced at ones(3, 16), as the seed's test did. */
static mj_graph *traced_seed(mj_module **model) {
    *model = seed_model();
    return trace_at(*model, 3, 16);
}

/* eager(m, x) and run(g, x) must be bit-identical; returns eager's result. */
static mj_tensor *assert_replay(mj_graph *g, mj_module *m, const mj_tensor *x, const char *what) {
    mj_tensor *y = NULL, *y_hat = NULL;
    OK(mj_module_forward(m, x, &y));
    OK(mj_graph_run(g, x, &y_hat));
    char buf[256];
    mj_compare c = mj_tensor_compare(y_hat, y, 0, 0);
    mj_compare_describe(&c, y_hat, y, buf, sizeof buf);
    cr_assert(mj_tensor_equal(y_hat, y), "%s (batch %lld): traced != eager: %s", what,
              (long long)mj_tensor_dim(x, 0), buf);
    mj_tensor_release(y_hat);
    return y;
}

/* The seed: trace on ones(3, 16), compare on randn(3, 16). */
Test(trace, seed_jit_trace) {
    mj_module *model;
    mj_graph *g = traced_seed(&model);

    mj_rng rng = mjt_rng(20240229);
    mj_tensor *x = mjt_randn2(3, 16, &rng);
    mj_tensor *y = assert_replay(g, model, x, "seed");
    /* Independent reference: with eye masks each layer scales by its weight
     * (1, 2, 3); the off-diagonal products are +-0 and leave the sum alone. */
    const float *xd = mj_tensor_data(x), *yd = mj_tensor_data(y);
    for (int i = 0; i < 48; i++) {
        float want = ((xd[i] * 1.0f) * 2.0f) * 3.0f;
        cr_assert(yd[i] == want, "y[%d] = %a, want %a", i, (double)yd[i], (double)want);
    }
    cr_assert_eq(mj_graph_input_count(g), 1);
    cr_assert_eq(mj_graph_output_count(g), 1);
    cr_assert_eq(mj_graph_input_dim(g, 0, 0), -1, "dim 0 is the symbolic batch");
    cr_assert_eq(mj_graph_input_dim(g, 0, 1), 16);
    cr_assert_eq(mj_graph_warning_count(g), 0);
    OK(mj_graph_verify(g));
    MJT_RELEASE(x, y);
    mjt_free_traced(g, model);
}

static const mj_node *find_leaf(const mj_graph *g, int32_t id) { return &g->nodes[id]; }

/* The parametrization is traced, not baked: mul(mask, original) of two params. */
Test(trace, mask_multiply_in_graph) {
    mj_module *model;
    mj_graph *g = traced_seed(&model);
    static const char *const mods[3] = {"linear", "seq.0", "seq.1"};
    for (int k = 0; k < 3; k++) {
        char mask[96], orig[96];
        snprintf(mask, sizeof mask, "%s.parametrizations.weight.0.mask", mods[k]);
        snprintf(orig, sizeof orig, "%s.parametrizations.weight.original", mods[k]);
        bool found = false;
        for (int32_t i = 0; i < g->n_nodes && !found; i++) {
            const mj_node *n = &g->nodes[i];
            if (n->op != MJ_OP_MUL) continue;
            const mj_node *a = find_leaf(g, n->operands[0]), *b = find_leaf(g, n->operands[1]);
            if (a->op != MJ_OP_PARAM || b->op != MJ_OP_PARAM) continue;
            found = (!strcmp(a->name, mask) && !strcmp(b->name, orig)) ||
                    (!strcmp(a->name, orig) && !strcmp(b->name, mask));
        }
        char *text = mj_graph_to_string(g);
        cr_assert(found, "no mul of params %s and %s in\n%s", mask, orig, text);
        free(text);
        /* Bound to the module's live tensors, not copies. */
        mj_module *lin = mj_module_find(model, mods[k]);
        int32_t id = mj_graph_find_leaf(g, MJ_OP_PARAM, orig);
        cr_assert_geq(id, 0);
        cr_assert_eq(g->nodes[id].tensor, mj_module_original(lin, "weight"));
    }
    mjt_free_traced(g, model);
}

/* A weight and a mask changed after tracing are seen by the trace. */
Test(trace, live_parameters) {
    mj_module *model;
    mj_graph *g = traced_seed(&model);
    mj_rng rng = mjt_rng(7);
    mj_tensor *x = mjt_randn2(3, 16, &rng);
    mj_tensor *before = assert_replay(g, model, x, "before");

    mj_module *seq0 = mj_module_find(model, "seq.0");
    float *w = mj_tensor_data_mut(mj_module_original(seq0, "weight"));
    w[0 * 16 + 1] = 5.0f; /* masked out by eye ... */
    mj_parametrization *p = mj_module_parametrization(seq0, "weight", 0);
    float *mask = mj_tensor_data_mut(mj_parametrization_buffer(p, "mask"));
    mask[0 * 16 + 1] = 1.0f; /* ... until the mask lets it through */

    mj_tensor *after = assert_replay(g, model, x, "after");
    cr_assert_not(mj_tensor_equal(before, after), "the change must be visible");
    /* Row 0, output 0 of seq.0 gained 5 * h[1]; a naive reference of the whole model: */
    const float *xd = mj_tensor_data(x), *ad = mj_tensor_data(after);
    for (int r = 0; r < 3; r++) {
        float h[16];
        for (int j = 0; j < 16; j++) h[j] = xd[r * 16 + j] * 1.0f;
        float h2[16];
        for (int j = 0; j < 16; j++) {
            float acc = 0.0f;
            for (int k = 0; k < 16; k++) {
                float wk = (j == k) ? 2.0f : (j == 0 && k == 1) ? 5.0f : 0.0f;
                acc = fmaf(h[k], wk, acc);
            }
            h2[j] = acc;
        }
        for (int j = 0; j < 16; j++) {
            float want = h2[j] * 3.0f;
            cr_assert(ad[r * 16 + j] == want, "y[%d,%d] = %a, want %a", r, j,
                      (double)ad[r * 16 + j], (double)want);
        }
    }
    MJT_RELEASE(x, before, after);
    mjt_free_traced(g, model);
}

/* Traced at batch 3, replayed at other batches. */
Test(trace, generalises_over_batch) {
    mj_rng rng = mjt_rng(11);
    mj_module *model = mjt_half_masked_mut(&rng);
    mj_graph *g = trace_at(model, 3, 16);
    static const int64_t batches[] = {1, 5, 64, 1000};
    for (int i = 0; i < 4; i++) {
        mj_tensor *x = mjt_randn2(batches[i], 16, &rng);
        mj_tensor_release(assert_replay(g, model, x, "batch"));
        mj_tensor_release(x);
    }
    mjt_free_traced(g, model);
}

Test(trace, wrong_feature_size_is_an_error) {
    mj_module *model;
    mj_graph *g = traced_seed(&model);
    mj_tensor *x = full2(3, 15, 1.0f), *y = NULL;
    mj_status s = mj_graph_run(g, x, &y);
    cr_assert_eq(s, MJ_ERR_SHAPE, "%s", mj_status_name(s));
    cr_assert_null(y);
    cr_assert(strstr(mj_last_error(), "f32[B,16]") && strstr(mj_last_error(), "[3, 15]"),
              "message: %s", mj_last_error());
    mj_tensor_release(x);
    mjt_free_traced(g, model);
}

/* ---- user modules for the special cases ---------------------------------- */
/* Reads the data of a traced value (and of the input and a param) into C. */
static mj_status peeking_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    mj_module *lin = mj_module_child(self, "lin");
    mj_tensor *h = NULL, *w = NULL;
    mj_status s = mj_module_forward(lin, x, &h);
    if (s != MJ_OK) return s;
    volatile float sink = mj_tensor_data(h)[0]; /* warns */
    sink += mj_tensor_data(h)[1];               /* same value: no second warning */
    sink += mj_tensor_data(x)[0];               /* the input: warns too */
    s = mj_module_get(lin, "weight", &w);
    if (s == MJ_OK) sink += mj_tensor_data(w)[0]; /* a param: warns too */
    mj_tensor_release(w);
    (void)sink;
    *y = h;
    return s;
}

static mj_module *wrap_linear(const char *type, mj_forward_fn fwd, int64_t in, int64_t out) {
    mj_rng rng = mjt_rng(3);
    mj_module *m = NULL, *lin = NULL;
    OK(mj_module_new(&m, type, fwd, NULL, NULL));
    OK(mj_linear_new(&lin, in, out, true, &rng));
    OK(mj_module_add_child(m, "lin", lin));
    return m;
}

Test(trace, tracer_warning_on_data_read) {
    mj_module *m = wrap_linear("Peeking", peeking_forward, 4, 3);
    mj_graph *g = trace_at(m, 2, 4);
    cr_assert_eq(mj_graph_warning_count(g), 3, "got %d warnings", mj_graph_warning_count(g));
    const char *w = mj_graph_warning(g, 0);
    /* %0 input, %1 lin.weight, %2 lin.bias, %3 the linear */
    cr_assert(strstr(w, "TracerWarning") && strstr(w, "traced value %3") &&
                  strstr(w, "might not generalize"),
              "warning: %s", w);
    mjt_free_traced(g, m);
}

/* Branches on data: the trace records one branch (as torch.jit.trace). */
static mj_status branching_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    mj_tensor *h = NULL;
    mj_status s = mj_module_forward(mj_module_child(self, "lin"), x, &h);
    if (s != MJ_OK) return s;
    s = mj_tensor_data(h)[0] > 0 ? mj_relu(y, h) : mj_tanh(y, h);
    mj_tensor_release(h);
    return s;
}

Test(trace, check_inputs) {
    mj_module *model;
    mj_graph *g = traced_seed(&model);
    mj_rng rng = mjt_rng(5);
    const mj_tensor *ins[3] = {mjt_randn2(1, 16, &rng), mjt_randn2(4, 16, &rng), mjt_randn2(9, 16, &rng)};
    mj_check_result r[3];
    memset(r, 0xff, sizeof r);
    OK(mj_graph_check(g, model, 3, ins, r));
    for (int i = 0; i < 3; i++) {
        cr_assert(r[i].bit_identical, "input %d", i);
        cr_assert_eq(r[i].max_abs, 0.0);
        cr_assert_eq(r[i].max_rel, 0.0);
        mj_tensor_release((mj_tensor *)ins[i]);
    }
    mjt_free_traced(g, model);
}

Test(trace, check_inputs_reports_a_mismatch) {
    mj_module *m = wrap_linear("Branching", branching_forward, 4, 3);
    mj_tensor *pos = NULL;
    /* Trace where the first output is positive: relu is recorded. */
    mj_rng rng = mjt_rng(9);
    mj_tensor *h = NULL;
    mj_graph *g = NULL;
    for (int tries = 0; tries < 100 && !g; tries++) {
        mj_tensor *x = mjt_randn2(2, 4, &rng);
        OK(mj_module_forward(mj_module_child(m, "lin"), x, &h));
        if (mj_tensor_data(h)[0] > 0) {
            OK(mj_trace_module(m, x, &g));
            pos = mj_tensor_retain(x);
        }
        MJT_RELEASE(h, x);
    }
    cr_assert_not_null(g);
    cr_assert_eq(mj_graph_warning_count(g), 1, "the branch read traced data");
    /* Input 1 takes the other branch: out[0] = -(out[0] of pos) - bias... find one. */
    mj_tensor *neg = NULL;
    for (int tries = 0; tries < 1000 && !neg; tries++) {
        mj_tensor *x = mjt_randn2(2, 4, &rng);
        OK(mj_module_forward(mj_module_child(m, "lin"), x, &h));
        if (mj_tensor_data(h)[0] <= 0) neg = mj_tensor_retain(x);
        MJT_RELEASE(h, x);
    }
    cr_assert_not_null(neg);
    const mj_tensor *ins[2] = {pos, neg};
    mj_check_result r[2];
    mj_status s = mj_graph_check(g, m, 2, ins, r);
    cr_assert_eq(s, MJ_ERR_MISMATCH, "%s", mj_status_name(s));
    cr_assert(strstr(mj_last_error(), "input 1") && strstr(mj_last_error(), "max abs"),
              "message: %s", mj_last_error());
    cr_assert(r[0].bit_identical);
    cr_assert_not(r[1].bit_identical);
    cr_assert_gt(r[1].max_abs, 0.0);
    MJT_RELEASE(pos, neg);
    mjt_free_traced(g, m);
}

/* Tensors made in C during forward become consts (copies, as in torch.jit.trace). */
typedef struct scaled {
    mj_tensor *scale; /* not registered: invisible to the tracer */
} scaled;

static mj_status scaled_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    scaled *u = mj_module_user(self);
    mj_tensor *h = NULL, *two = NULL;
    int64_t n = mj_tensor_dim(x, 1);
    mj_status s = mj_tensor_full(&two, 1, &n, 2.0f);
    if (s == MJ_OK) s = mj_mul(&h, x, two);
    if (s == MJ_OK) s = mj_mul(y, h, u->scale);
    MJT_RELEASE(h, two);
    return s;
}

static void free_scaled(void *p) {
    scaled *u = p;
    mj_tensor_release(u->scale);
    free(u);
}

Test(trace, untraced_tensors_become_consts) {
    scaled *u = calloc(1, sizeof *u);
    int64_t n = 4;
    OK(mj_tensor_full(&u->scale, 1, &n, 0.5f));
    mj_module *m = NULL;
    OK(mj_module_new(&m, "Scaled", scaled_forward, u, free_scaled));
    mj_graph *g = trace_at(m, 2, 4);
    int32_t c0 = mj_graph_find_leaf(g, MJ_OP_CONST, "const.0");
    int32_t c1 = mj_graph_find_leaf(g, MJ_OP_CONST, "const.1");
    cr_assert(c0 >= 0 && c1 >= 0, "consts const.0 and const.1 expected");
    cr_assert_eq(mj_tensor_data(g->nodes[c0].tensor)[0], 2.0f);
    cr_assert_eq(mj_tensor_data(g->nodes[c1].tensor)[0], 0.5f);
    cr_assert_neq(g->nodes[c1].tensor, u->scale, "a const holds a copy");

    /* Changing the untraced tensor later does not change the trace. */
    mj_tensor_data_mut(u->scale)[0] = 8.0f;
    mj_rng rng = mjt_rng(1);
    mj_tensor *x = mjt_randn2(5, 4, &rng), *y = NULL;
    OK(mj_graph_run(g, x, &y));
    const float *xd = mj_tensor_data(x), *yd = mj_tensor_data(y);
    for (int i = 0; i < 20; i++)
        cr_assert(yd[i] == (xd[i] * 2.0f) * 0.5f, "y[%d] = %a", i, (double)yd[i]);
    MJT_RELEASE(x, y);
    mjt_free_traced(g, m);
}

Test(trace, refused_while_cached) {
    mj_module *model = seed_model();
    OK(mj_parametrize_cache_begin(model));
    mj_tensor *ex = full2(3, 16, 1.0f);
    mj_graph *g = NULL;
    mj_status s = mj_trace_module(model, ex, &g);
    cr_assert_eq(s, MJ_ERR_STATE, "%s", mj_status_name(s));
    cr_assert_null(g);
    cr_assert(strstr(mj_last_error(), "cannot trace while parametrizations are cached"),
              "message: %s", mj_last_error());
    mj_parametrize_cache_end(model);
    OK(mj_trace_module(model, ex, &g)); /* fine once the cache is closed */
    mj_tensor_release(ex);
    mjt_free_traced(g, model);
}

static mj_status nested_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    mj_status *inner = mj_module_user(self);
    mj_graph *g = NULL;
    *inner = mj_trace_module(mj_module_child(self, "lin"), x, &g);
    mj_graph_free(g);
    return mj_module_forward(mj_module_child(self, "lin"), x, y);
}

Test(trace, nested_tracing_is_refused) {
    mj_status *inner = malloc(sizeof *inner);
    *inner = MJ_OK;
    mj_module *m = NULL, *lin = NULL;
    mj_rng rng = mjt_rng(2);
    OK(mj_module_new(&m, "Nested", nested_forward, inner, free));
    OK(mj_linear_new(&lin, 4, 2, false, &rng));
    OK(mj_module_add_child(m, "lin", lin));
    mj_graph *g = trace_at(m, 2, 4);
    cr_assert_eq(*inner, MJ_ERR_STATE);
    mj_graph_free(g);
    /* The outer trace is unaffected and the thread is free again. */
    mj_graph *g2 = trace_at(lin, 2, 4);
    mjt_free_traced(g2, m);
}

Test(trace, argument_errors) {
    mj_module *model = seed_model();
    mj_graph *g = NULL;
    mj_tensor *ex = full2(3, 16, 1.0f);
    cr_assert_eq(mj_trace_module(NULL, ex, &g), MJ_ERR_INVALID);
    cr_assert_eq(mj_trace_module(model, NULL, &g), MJ_ERR_INVALID);
    cr_assert_eq(mj_trace_module(model, ex, NULL), MJ_ERR_INVALID);
    cr_assert(strstr(mj_last_error(), "NULL"), "message: %s", mj_last_error());
    int64_t n = 16;
    mj_tensor *flat = NULL;
    OK(mj_tensor_ones(&flat, 1, &n));
    cr_assert_eq(mj_trace_module(model, flat, &g), MJ_ERR_SHAPE);
    /* a rank-1 input is [B]: the seed's Linear(16, ...) cannot take it at other batches */
    cr_assert(strstr(mj_last_error(), "generalise over the batch") && strstr(mj_last_error(), "f32[B]"),
              "message: %s", mj_last_error());
    cr_assert_null(g);
    MJT_RELEASE(flat, ex);
    mj_module_free(model);
}

/* An error in forward fails the trace with context, and leaves the thread
 * ready for the next trace. */
Test(trace, forward_error_is_returned) {
    mj_module *model = seed_model();
    mj_tensor *ex = full2(3, 15, 1.0f);
    mj_graph *g = NULL;
    mj_status s = mj_trace_module(model, ex, &g);
    cr_assert_eq(s, MJ_ERR_SHAPE);
    cr_assert_null(g);
    cr_assert(strncmp(mj_last_error(), "tracing", 7) == 0 && strstr(mj_last_error(), "in_features 16"),
              "message: %s", mj_last_error());
    mj_tensor_release(ex);
    g = trace_at(model, 3, 16);
    mjt_free_traced(g, model);
}

/* Ops that tie the graph to the traced batch are refused. */
static mj_status add_batch_const_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    (void)self;
    mj_tensor *c = NULL;
    mj_status s = mj_tensor_ones(&c, 2, mj_tensor_shape(x)); /* [3, 4]: concrete batch */
    if (s == MJ_OK) s = mj_add(y, x, c);
    mj_tensor_release(c);
    return s;
}

static mj_status flatten_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    (void)self;
    int64_t all = -1;
    return mj_reshape(y, x, 1, &all); /* [3, 4] -> [12]: the batch is gone */
}

static mj_status split_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    (void)self;
    mj_tensor *h = NULL;
    int64_t shape[3] = {mj_tensor_dim(x, 0), 2, 2};
    mj_status s = mj_reshape(&h, x, 3, shape); /* [3, 4] -> [3, 2, 2]: keeps B */
    if (s == MJ_OK) s = mj_relu(y, h);
    mj_tensor_release(h);
    return s;
}

static void assert_trace_fails(mj_forward_fn fwd, const char *needle) {
    mj_module *m = NULL;
    OK(mj_module_new(&m, "Bad", fwd, NULL, NULL));
    mj_tensor *ex = full2(3, 4, 1.0f);
    mj_graph *g = NULL;
    mj_status s = mj_trace_module(m, ex, &g);
    cr_assert_eq(s, MJ_ERR_SHAPE, "%s: %s", mj_status_name(s), mj_last_error());
    cr_assert_null(g);
    cr_assert(strstr(mj_last_error(), needle), "message: %s", mj_last_error());
    mj_tensor_release(ex);
    mj_module_free(m);
}

Test(trace, batch_dependent_ops_are_refused) {
    assert_trace_fails(add_batch_const_forward, "would not generalise over the batch");
    assert_trace_fails(flatten_forward, "reshape would not generalise over the batch");
}

Test(trace, reshape_keeping_the_batch) {
    mj_module *m = NULL;
    OK(mj_module_new(&m, "Split", split_forward, NULL, NULL));
    mj_graph *g = trace_at(m, 3, 4);
    mj_rng rng = mjt_rng(4);
    for (int64_t b = 1; b <= 7; b += 3) {
        mj_tensor *x = mjt_randn2(b, 4, &rng);
        mj_tensor_release(assert_replay(g, m, x, "split"));
        mj_tensor_release(x);
    }
    mjt_free_traced(g, m);
}

/* Identity records as an alias: the graph output is the input itself. */
Test(trace, identity_model) {
    mj_module *m = NULL;
    OK(mj_activation_module_new(&m, MJ_ACT_NONE));
    mj_graph *g = trace_at(m, 2, 3);
    cr_assert_eq(g->n_nodes, 1);
    cr_assert_eq(g->outputs[0], 0);
    mj_rng rng = mjt_rng(8);
    mj_tensor *x = mjt_randn2(4, 3, &rng);
    mj_tensor_release(assert_replay(g, m, x, "identity"));
    mj_tensor_release(x);
    mjt_free_traced(g, m);
}

/* ---- random models --------------------------------------------------------- */
static void assert_graph_matches(mj_graph *g, mj_module *m, const mj_tensor *const *xs, int n,
                                 const char *what, const char *spec) {
    for (int i = 0; i < n; i++) {
        mj_tensor *y = NULL, *y_hat = NULL;
        OK(mj_module_forward(m, xs[i], &y));
        mj_status s = mj_graph_run(g, xs[i], &y_hat);
        cr_assert_eq(s, MJ_OK, "%s [%s]: %s", what, spec, mj_last_error());
        if (!mj_tensor_equal(y_hat, y)) {
            char buf[256];
            mj_compare c = mj_tensor_compare(y_hat, y, 0, 0);
            mj_compare_describe(&c, y_hat, y, buf, sizeof buf);
            char *text = mj_graph_to_string(g);
            cr_assert_fail("%s [%s] at batch %lld: not bit-identical to eager: %s\n%s", what,
                           spec, (long long)mj_tensor_dim(xs[i], 0), buf, text);
        }
        MJT_RELEASE(y, y_hat);
    }
}

Test(trace, random_models, .timeout = 120) {
    char dir[] = "/tmp/maskjit-trace-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);

    mj_rng rng = mjt_rng(0x7261636572ULL);
    bool acts[MJ_ACT_COUNT] = {0}, dens[4] = {0}, structured = false, user = false, bias[2] = {0};
    int depths[7] = {0};
    int n_models = 0, n_expand = 0, n_fused = 0, n_mask_gone = 0;
    for (; n_models < 200; n_models++) {
        bool all = n_models >= 60 && structured && user && bias[0] && bias[1];
        for (int a = 0; a < MJ_ACT_COUNT; a++) all = all && acts[a];
        for (int d = 0; d < 4; d++) all = all && dens[d];
        for (int d = 1; d <= 6; d++) all = all && depths[d];
        if (all) break;

        mjt_model_spec spec;
        mjt_random_spec(&rng, 300, &spec);
        acts[spec.act] = true;
        dens[spec.density == 0 ? 0 : spec.density == 0.1 ? 1 : spec.density == 0.5 ? 2 : 3] = true;
        structured |= spec.structured;
        user |= spec.user_parametrization;
        bias[spec.bias] = true;
        depths[spec.depth]++;

        mj_module *m = NULL;
        OK(mjt_build_model(&spec, &rng, &m));
        int64_t b0 = 1 + (int64_t)(mj_rng_next(&rng) % 4);
        mj_tensor *ex = NULL;
        OK(mjt_random_input(&spec, b0, &rng, &ex));
        mj_graph *g = NULL;
        mj_status s = mj_trace_module(m, ex, &g);
        cr_assert_eq(s, MJ_OK, "[%s]: %s", spec.text, mj_last_error());
        mj_tensor_release(ex);

        int64_t batches[3] = {1, 2 + (int64_t)(mj_rng_next(&rng) % 7),
                              9 + (int64_t)(mj_rng_next(&rng) % 24)};
        mj_tensor *xs[3];
        for (int i = 0; i < 3; i++) OK(mjt_random_input(&spec, batches[i], &rng, &xs[i]));
        const mj_tensor *const *cx = (const mj_tensor *const *)xs;
        assert_graph_matches(g, m, cx, 3, "traced", spec.text);

        /* torch.jit.save / load */
        OK(mj_graph_save(g, path));
        mj_graph *loaded = NULL;
        OK(mj_graph_load(path, &loaded));
        assert_graph_matches(loaded, m, cx, 3, "loaded", spec.text);

        /* optimised (live) */
        mj_graph *opt = NULL;
        OK(mj_graph_clone(g, &opt));
        OK(mj_graph_optimize(opt, "default"));
        assert_graph_matches(opt, m, cx, 3, "optimised", spec.text);

        /* frozen + optimised: masks fold away, still bit-identical (finite inputs) */
        mj_graph *frozen = NULL;
        OK(mj_graph_clone(g, &frozen));
        OK(mj_graph_freeze(frozen));
        OK(mj_graph_optimize(frozen, NULL));
        assert_graph_matches(frozen, m, cx, 3, "frozen", spec.text);
        bool has_mul = false, has_expand = false, has_fused = false;
        for (int32_t i = 0; i < frozen->n_nodes; i++) {
            cr_assert_neq(frozen->nodes[i].op, MJ_OP_PARAM, "[%s] frozen graph has a param",
                          spec.text);
            has_mul |= frozen->nodes[i].op == MJ_OP_MUL;
            has_expand |= frozen->nodes[i].op == MJ_OP_EXPAND;
            has_fused |= frozen->nodes[i].op == MJ_OP_LINEAR_ACT;
        }
        /* Frozen masks are consts: mask * W folds (or simplifies) away. */
        cr_assert_not(has_mul, "[%s] a mask multiply survived freezing", spec.text);
        n_mask_gone++;
        n_expand += has_expand;
        n_fused += has_fused;

        for (int i = 0; i < 3; i++) mj_tensor_release(xs[i]);
        mj_graph_free(frozen);
        mj_graph_free(opt);
        mj_graph_free(loaded);
        mjt_free_traced(g, m);
    }
    cr_assert_lt(n_models, 200, "the specs did not cover every activation/density/option");
    /* The passes had something to do: zero masks became expands, linears fused. */
    cr_assert_gt(n_expand, 0);
    cr_assert_gt(n_fused, 0);
    cr_assert_eq(n_mask_gone, n_models);
    unlink(path);
    rmdir(dir);
}

Test(trace, check_argument_errors) {
    mj_module *model;
    mj_graph *g = traced_seed(&model);
    mj_tensor *x = full2(2, 16, 1.0f);
    const mj_tensor *ins[1] = {x};
    cr_assert_eq(mj_graph_check(NULL, model, 1, ins, NULL), MJ_ERR_INVALID);
    cr_assert_eq(mj_graph_check(g, NULL, 1, ins, NULL), MJ_ERR_INVALID);
    cr_assert_eq(mj_graph_check(g, model, 1, NULL, NULL), MJ_ERR_INVALID);
    cr_assert(strstr(mj_last_error(), "check"), "message: %s", mj_last_error());
    const mj_tensor *none[1] = {NULL};
    cr_assert_eq(mj_graph_check(g, model, 1, none, NULL), MJ_ERR_INVALID);
    cr_assert(strstr(mj_last_error(), "input 0 is NULL"), "message: %s", mj_last_error());
    OK(mj_graph_check(g, model, 1, ins, NULL)); /* results may be NULL */
    mj_tensor *bad = full2(2, 15, 1.0f);
    const mj_tensor *ins2[2] = {x, bad};
    mj_status s = mj_graph_check(g, model, 2, ins2, NULL);
    cr_assert_eq(s, MJ_ERR_SHAPE, "%s", mj_status_name(s));
    cr_assert(strstr(mj_last_error(), "input 1"), "message: %s", mj_last_error());
    MJT_RELEASE(bad, x);
    mjt_free_traced(g, model);
}

/* The active tracer is per thread: concurrent traces do not see each
 * other's ops. */
typedef struct trace_job {
    uint64_t seed;
    mj_status status;
    bool same;
} trace_job;

static void *trace_thread(void *arg) {
    trace_job *job = arg;
    mj_rng rng = mjt_rng(job->seed);
    for (int k = 0; k < 20; k++) {
        mjt_model_spec spec;
        mjt_random_spec(&rng, 32, &spec);
        mj_module *m = NULL;
        mj_tensor *x = NULL, *y = NULL, *y_hat = NULL;
        mj_graph *g = NULL;
        job->status = mjt_build_model(&spec, &rng, &m);
        if (job->status == MJ_OK) job->status = mjt_random_input(&spec, 3, &rng, &x);
        if (job->status == MJ_OK) job->status = mj_trace_module(m, x, &g);
        if (job->status == MJ_OK) job->status = mj_module_forward(m, x, &y);
        if (job->status == MJ_OK) job->status = mj_graph_run(g, x, &y_hat);
        job->same = job->status == MJ_OK && mj_tensor_equal(y, y_hat);
        MJT_RELEASE(x, y, y_hat);
        mjt_free_traced(g, m);
        if (!job->same) break;
    }
    return NULL;
}

Test(trace, concurrent_traces_on_threads) {
    pthread_t th[4];
    trace_job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (trace_job){.seed = 100 + (uint64_t)i};
        cr_assert_eq(pthread_create(&th[i], NULL, trace_thread, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++)
        cr_assert(jobs[i].same, "thread %d: %s", i, mj_status_name(jobs[i].status));
}
