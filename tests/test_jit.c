/* The LLVM backend against the interpreter (eager kernels) and eager models:
 * exact mode bit for bit, fast mode within float32 tolerances; live
 * parameters, shape guards, leaks, threads, dumps.
 *
 * MJ_JIT_TEST_SCALE (default 1.0) scales the loop counts down for slow
 * runs (valgrind): e.g. 0.05. */
#include <sched.h>
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "../ir/ir.h"
#include "../jit/jit_internal.h"
#include "../jit/jit_test.h"
#include "maskjit.h"
#include "model_gen.h"
#include "test_graph_util.h"
#include "test_util.h"
#include "thread_util.h"

MJT_JIT_FIXTURE

TestSuite(jit, .init = setup, .fini = teardown, .timeout = 600);

static int scaled(int n) {
    const char *s = getenv("MJ_JIT_TEST_SCALE");
    double f = s ? atof(s) : 1.0;
    int r = (int)(n * f);
    return r < 1 ? 1 : r;
}

/* ---- graph building helpers (and test_graph_util.h) ----------------------- */

static int32_t op(mj_graph *g, mj_op o, int n, int32_t a, int32_t b, int32_t c, mj_act act,
                  const mj_type *declared) {
    int32_t ops[3] = {a, b, c}, id;
    OK(mj_graph_add_op(g, o, n, ops, act, declared, &id));
    return id;
}

static mj_tensor *randn_input(const mj_graph *g, int64_t batch, mj_rng *rng) {
    const mj_node *in = NULL;
    for (int32_t i = 0; i < g->n_nodes; i++)
        if (g->nodes[i].op == MJ_OP_INPUT) in = &g->nodes[i];
    cr_assert(in);
    int64_t shape[MJ_MAX_RANK];
    mj_type_shape(&in->type, batch, shape);
    mj_tensor *x;
    OK(mj_tensor_randn(&x, in->type.rank, shape, rng));
    return x;
}

/* Compares actual with expected: bitwise in exact mode, within float32
 * tolerance in fast mode; returns the max abs error. */
static double check_result(const mj_tensor *got, const mj_tensor *want, mjt_mode m, const char *what) {
    mj_compare cmp = mj_tensor_compare(got, want, MJ_RTOL_F32, MJ_ATOL_F32);
    char desc[256];
    mj_compare_describe(&cmp, got, want, desc, sizeof desc);
    cr_assert(cmp.same_shape, "%s (%s): shapes differ: %s", what, m.name, desc);
    if (m.numeric == MJ_NUMERIC_EXACT)
        cr_assert(mj_tensor_equal(got, want), "%s (%s): not bit-identical: %s", what, m.name, desc);
    else
        cr_assert(cmp.close, "%s (%s): not close: %s", what, m.name, desc);
    return cmp.max_abs;
}

/* The graph compiled in every mode against the interpreter at several batch
 * sizes. Takes ownership of g. */
static void check_graph_all_modes(mj_graph *g, const char *what, mj_rng *rng) {
    static const int64_t batches[] = {1, 3, 17};
    for (int mi = 0; mi < 4; mi++) {
        mj_compiled *c = mjt_compile(jit, g, mjt_modes[mi]);
        double max_err = 0;
        for (size_t bi = 0; bi < sizeof batches / sizeof *batches; bi++) {
            mj_tensor *x = randn_input(g, batches[bi], rng), *want, *got;
            cr_assert_eq(mj_graph_run(g, x, &want), MJ_OK, "%s: interpreter: %s", what, mj_last_error());
            mj_status s = mj_compiled_run(c, x, &got);
            cr_assert_eq(s, MJ_OK, "%s (%s): run: %s", what, mjt_modes[mi].name, mj_last_error());
            double e = check_result(got, want, mjt_modes[mi], what);
            if (e > max_err) max_err = e;
            MJT_RELEASE(x, want, got);
        }
        if (mjt_modes[mi].numeric == MJ_NUMERIC_FAST)
            cr_log_info("%s (%s): max abs error %.3g", what, mjt_modes[mi].name, max_err);
        mj_compiled_free(c);
    }
    mj_graph_free(g);
}

static mj_graph *new_graph(void) {
    mj_graph *g;
    OK(mj_graph_new(&g));
    return g;
}

static void out(mj_graph *g, int32_t id) { cr_assert_eq(mj_graph_add_output(g, id), MJ_OK, "%s", mj_last_error()); }
static double check_model(mj_compiled *c, mj_module *m, const mj_tensor *x, mjt_mode md, const char *what);

/* y = o(x, w) (with act) for x: f32[B,16] and a random param w of type wt. */
static mj_graph *x_w_graph(mj_op o, mj_act act, mj_type wt, mj_rng *rng) {
    mj_graph *g = new_graph();
    int32_t x = input(g, ty(2, B, 16, 0));
    int32_t w = leaf(g, MJ_OP_PARAM, "w", wt, rng);
    out(g, op(g, o, 2, x, w, -1, act, NULL));
    return g;
}

/* c against eager m (check_model) at each of the n batches, on inputs
 * f32[batch, in] from rng. */
static void check_batches(mj_compiled *c, mj_module *m, int64_t in, const int64_t *batches, size_t n, mjt_mode md,
                          const char *what, mj_rng *rng) {
    for (size_t bi = 0; bi < n; bi++) {
        mj_tensor *x = mjt_randn2(batches[bi], in, rng);
        check_model(c, m, x, md, what);
        mj_tensor_release(x);
    }
}

/* ---- per op ------------------------------------------------------------- */

Test(jit, op_linear_with_and_without_bias) {
    mj_rng rng = mjt_rng(1);
    for (int bias = 0; bias < 2; bias++) {
        mj_graph *g = new_graph();
        int32_t x = input(g, ty(2, B, 16, 0));
        int32_t w = leaf(g, MJ_OP_PARAM, "w", ty(2, 8, 16, 0), &rng);
        int32_t b = bias ? leaf(g, MJ_OP_PARAM, "b", ty(1, 8, 0, 0), &rng) : -1;
        out(g, op(g, MJ_OP_LINEAR, bias ? 3 : 2, x, w, b, MJ_ACT_NONE, NULL));
        check_graph_all_modes(g, bias ? "linear+bias" : "linear", &rng);
    }
}

Test(jit, op_linear_rank3_input_and_wide_layer) {
    mj_rng rng = mjt_rng(2);
    mj_graph *g = new_graph();
    int32_t x = input(g, ty(3, B, 5, 70));
    int32_t w = leaf(g, MJ_OP_PARAM, "w", ty(2, 133, 70, 0), &rng);
    int32_t b = leaf(g, MJ_OP_CONST, "b", ty(1, 133, 0, 0), &rng);
    out(g, op(g, MJ_OP_LINEAR, 3, x, w, b, MJ_ACT_NONE, NULL));
    check_graph_all_modes(g, "linear rank 3", &rng);
}

Test(jit, op_linear_act_every_activation) {
    mj_rng rng = mjt_rng(3);
    for (mj_act a = MJ_ACT_RELU; a < MJ_ACT_COUNT; a++) {
        mj_graph *g = new_graph();
        int32_t x = input(g, ty(2, B, 24, 0));
        int32_t w = leaf(g, MJ_OP_PARAM, "w", ty(2, 20, 24, 0), &rng);
        int32_t b = leaf(g, MJ_OP_PARAM, "b", ty(1, 20, 0, 0), &rng);
        out(g, op(g, MJ_OP_LINEAR_ACT, 3, x, w, b, a, NULL));
        check_graph_all_modes(g, mj_act_name(a), &rng);
    }
}

/* A weight computed from the input is read in place ([out][in]). */
Test(jit, op_linear_with_input_dependent_weight) {
    mj_rng rng = mjt_rng(4);
    mj_graph *g = new_graph();
    int32_t x = input(g, ty(2, B, 16, 0));
    int32_t r = op(g, MJ_OP_RELU, 1, x, -1, -1, MJ_ACT_NONE, NULL);
    out(g, op(g, MJ_OP_LINEAR, 2, x, r, -1, MJ_ACT_NONE, NULL)); /* [B, B] */
    check_graph_all_modes(g, "linear x r^T", &rng);
}

Test(jit, op_matmul_param_and_batch_inner_dim) {
    mj_rng rng = mjt_rng(5);
    mj_graph *g = x_w_graph(MJ_OP_MATMUL, MJ_ACT_NONE, ty(2, 16, 9, 0), &rng);
    check_graph_all_modes(g, "matmul x w", &rng);

    /* x^T @ x: the inner dim is the batch */
    g = new_graph();
    int32_t x = input(g, ty(2, B, 7, 0));
    int32_t t = op(g, MJ_OP_TRANSPOSE, 1, x, -1, -1, MJ_ACT_NONE, NULL);
    out(g, op(g, MJ_OP_MATMUL, 2, t, x, -1, MJ_ACT_NONE, NULL));
    check_graph_all_modes(g, "matmul x^T x", &rng);
}

Test(jit, op_elementwise_with_broadcasting) {
    mj_rng rng = mjt_rng(6);
    const mj_op ops_[3] = {MJ_OP_ADD, MJ_OP_SUB, MJ_OP_MUL};
    for (int i = 0; i < 3; i++) {
        /* same shape, a row vector, a [4,1] column against [B,4,5], and a param on the left */
        mj_graph *g = new_graph();
        int32_t x = input(g, ty(3, B, 4, 5));
        int32_t col = leaf(g, MJ_OP_PARAM, "col", ty(2, 4, 1, 0), &rng);
        int32_t row = leaf(g, MJ_OP_PARAM, "row", ty(1, 5, 0, 0), &rng);
        int32_t a = op(g, ops_[i], 2, x, x, -1, MJ_ACT_NONE, NULL);
        int32_t b = op(g, ops_[i], 2, a, col, -1, MJ_ACT_NONE, NULL);
        int32_t c = op(g, ops_[i], 2, row, b, -1, MJ_ACT_NONE, NULL);
        out(g, c);
        check_graph_all_modes(g, mj_op_table[ops_[i]].name, &rng);
    }
}

Test(jit, op_activations) {
    mj_rng rng = mjt_rng(7);
    const mj_op acts[5] = {MJ_OP_RELU, MJ_OP_GELU, MJ_OP_GELU_TANH, MJ_OP_SIGMOID, MJ_OP_TANH};
    for (int i = 0; i < 5; i++) {
        mj_graph *g = new_graph();
        int32_t x = input(g, ty(2, B, 37, 0));
        out(g, op(g, acts[i], 1, x, -1, -1, MJ_ACT_NONE, NULL));
        check_graph_all_modes(g, mj_op_table[acts[i]].name, &rng);
    }
}

/* Zeros, signed zeros, infinities, NaN, huge and tiny values through every
 * activation and through linear_act: the same bits as eager. */
Test(jit, activations_special_values_bitwise) {
    const float vals[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 1e30f, -1e30f, 1e-40f, -1e-40f,
                          88.7f, -88.7f, 9.0f, -9.0f, 0.5f, -3.25f};
    int64_t n = sizeof vals / sizeof *vals, shape[2] = {1, n};
    mj_tensor *x;
    OK(mj_tensor_from_data(&x, 2, shape, vals));
    const mj_op acts[5] = {MJ_OP_RELU, MJ_OP_GELU, MJ_OP_GELU_TANH, MJ_OP_SIGMOID, MJ_OP_TANH};
    for (int i = 0; i < 5; i++) {
        mj_graph *g = new_graph();
        int32_t in = input(g, ty(2, B, n, 0));
        out(g, op(g, acts[i], 1, in, -1, -1, MJ_ACT_NONE, NULL));
        mj_compiled *c = mjt_compile(jit, g, mjt_modes[0]);
        mj_tensor *got, *want;
        OK(mj_compiled_run(c, x, &got));
        OK(mj_activation(&want, mj_op_table[acts[i]].act, x));
        check_result(got, want, mjt_modes[0], mj_op_table[acts[i]].name);
        MJT_RELEASE(got, want);
        mj_compiled_free(c);
        mj_graph_free(g);
    }
    mj_tensor_release(x);
}

Test(jit, op_transpose_reshape_expand) {
    mj_rng rng = mjt_rng(8);
    mj_graph *g = new_graph();
    int32_t x = input(g, ty(2, B, 8, 0));
    out(g, op(g, MJ_OP_TRANSPOSE, 1, x, -1, -1, MJ_ACT_NONE, NULL));
    check_graph_all_modes(g, "transpose", &rng);

    /* reshape as an alias in the middle and as the output */
    mj_type flat = ty(2, B, 16, 0), cube = ty(3, B, 4, 4);
    g = new_graph();
    x = input(g, cube);
    int32_t r = op(g, MJ_OP_RESHAPE, 1, x, -1, -1, MJ_ACT_NONE, &flat);
    int32_t t = op(g, MJ_OP_TANH, 1, r, -1, -1, MJ_ACT_NONE, NULL);
    out(g, op(g, MJ_OP_RESHAPE, 1, t, -1, -1, MJ_ACT_NONE, &cube));
    check_graph_all_modes(g, "reshape tanh reshape", &rng);

    /* expand with a bias, and without (declared width) */
    g = new_graph();
    x = input(g, ty(2, B, 8, 0));
    int32_t b = leaf(g, MJ_OP_PARAM, "b", ty(1, 5, 0, 0), &rng);
    int32_t e = op(g, MJ_OP_EXPAND, 2, x, b, -1, MJ_ACT_NONE, NULL);
    mj_type w3 = ty(2, B, 5, 0);
    int32_t z = op(g, MJ_OP_EXPAND, 1, x, -1, -1, MJ_ACT_NONE, &w3);
    out(g, op(g, MJ_OP_SUB, 2, e, z, -1, MJ_ACT_NONE, NULL));
    check_graph_all_modes(g, "expand", &rng);

    /* the output is the input itself: a copy */
    g = new_graph();
    x = input(g, ty(2, B, 3, 0));
    out(g, x);
    check_graph_all_modes(g, "identity", &rng);
}

/* ---- traced models -------------------------------------------------------- */

static mj_tensor *eye16(void) {
    mj_tensor *t;
    OK(mj_tensor_eye(&t, 16));
    return t;
}

static mj_module *seed_model(bool bias) {
    mj_module *m;
    OK(mj_model_under_test_new(&m, bias));
    const char *paths[3] = {"linear", "seq.0", "seq.1"};
    for (int i = 0; i < 3; i++) {
        mj_tensor *mask = eye16();
        mj_parametrization *p;
        OK(mj_fake_sparsity_new(&p, mask));
        mj_tensor_release(mask);
        cr_assert_eq(mj_register_parametrization(mj_module_find(m, paths[i]), "weight", p), MJ_OK, "%s",
                     mj_last_error());
    }
    return m;
}

static mj_graph *trace(mj_module *m, int rank, const int64_t *shape) {
    mj_tensor *ex;
    OK(mj_tensor_ones(&ex, rank, shape));
    mj_graph *g;
    mj_status s = mj_trace_module(m, ex, &g);
    cr_assert_eq(s, MJ_OK, "trace: %s", mj_last_error());
    mj_tensor_release(ex);
    return g;
}

/* compiled(x) against eager forward(x) */
static double check_model(mj_compiled *c, mj_module *m, const mj_tensor *x, mjt_mode md, const char *what) {
    mj_tensor *want, *got;
    OK(mj_module_forward(m, x, &want));
    cr_assert_eq(mj_compiled_run(c, x, &got), MJ_OK, "%s (%s): %s", what, md.name, mj_last_error());
    double e = check_result(got, want, md, what);
    MJT_RELEASE(want, got);
    return e;
}

/* check_model at a randn input of shape shape2 (rank 2) from rng. */
static void check_model_randn(mj_compiled *c, mj_module *m, const int64_t *shape2, mj_rng *rng, mjt_mode md,
                              const char *what) {
    mj_tensor *x = mjt_randn2(shape2[0], shape2[1], rng);
    check_model(c, m, x, md, what);
    mj_tensor_release(x);
}

/* The seed's test_jit_trace, through the compiled path. */
Test(jit, seed_model_trace_compiled_equals_eager) {
    mj_rng rng = mjt_rng(9);
    int64_t ex[2] = {3, 16};
    for (int bias = 0; bias < 2; bias++) {
        mj_module *m = seed_model(bias);
        mj_graph *g = trace(m, 2, ex);
        for (int mi = 0; mi < 4; mi++) {
            mj_compiled *c = mjt_compile(jit, g, mjt_modes[mi]);
            const mj_compile_stats *st = mj_compiled_stats(c);
            cr_log_info("seed model%s (%s): total %.2f ms: ir %.2f ms, passes %.2f ms, codegen %.2f ms",
                        bias ? " +bias" : "", mjt_modes[mi].name, st->total_ms, st->ir_ms, st->optimize_ms,
                        st->codegen_ms);
            /* the total covers the parts (and a cache hit's lookup) */
            cr_assert(st->total_ms > 0 && st->total_ms >= st->ir_ms + st->optimize_ms + st->codegen_ms,
                      "total %.3f ms < parts", st->total_ms);
            check_model_randn(c, m, ex, &rng, mjt_modes[mi], bias ? "seed model with bias" : "seed model");
            mj_compiled_free(c);
        }
        mjt_free_traced(g, m);
    }
}

/* MASKJIT_PERF=1 (tools/perf_jit.sh) links through RTDyld with LLVM's perf
 * listener instead of the default layer: the code must be the same, and
 * the listener must write its jitdump where JITDUMPDIR says. */
Test(jit, perf_profiling_layer_runs_the_same_code) {
    char dir[] = "/tmp/mj-perf-XXXXXX";
    cr_assert(mkdtemp(dir));
    setenv("MASKJIT_PERF", "1", 1);
    setenv("JITDUMPDIR", dir, 1);
    mj_jit *pj = NULL;
    mj_status s = mj_jit_new(&pj);
    unsetenv("MASKJIT_PERF");
    OK(s);
    mj_rng rng = mjt_rng(30);
    int64_t ex[2] = {3, 16};
    mj_module *m = seed_model(1);
    mj_graph *g = trace(m, 2, ex);
    for (int mi = 0; mi < 2; mi++) {
        mj_compile_options o;
        mj_compile_options_init(&o);
        o.frozen = mjt_modes[mi].frozen;
        o.use_cache = false; /* a cache hit would skip the listener */
        mj_compiled *c = mjt_compile_with(pj, g, &o);
        check_model_randn(c, m, ex, &rng, mjt_modes[mi], "seed model through the perf layer");
        mj_compiled_free(c);
    }
    mjt_free_traced(g, m);
    mj_jit_free(pj);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "find %s -name 'jit-*.dump' | grep -q .", dir);
    cr_expect_eq(system(cmd), 0, "no jitdump under %s", dir);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
    unsetenv("JITDUMPDIR");
}

Test(jit, random_models_equal_eager) {
    mj_rng rng = mjt_rng(2024);
    int n_models = scaled(60);
    static const int64_t batches[] = {1, 4, 33};
    double max_fast = 0;
    for (int i = 0; i < n_models; i++) {
        mjt_model_spec spec;
        mjt_random_spec(&rng, 300, &spec);
        mj_module *m;
        cr_assert_eq(mjt_build_model(&spec, &rng, &m), MJ_OK, "%s: %s", spec.text, mj_last_error());
        mj_tensor *ex;
        OK(mjt_random_input(&spec, 2, &rng, &ex));
        mj_graph *g;
        cr_assert_eq(mj_trace_module(m, ex, &g), MJ_OK, "%s: trace: %s", spec.text, mj_last_error());
        mj_tensor_release(ex);
        /* every model exact live; modes rotate for the rest to keep the time sane */
        int extra = 1 + i % 3;
        for (int k = 0; k < 2; k++) {
            mjt_mode md = mjt_modes[k == 0 ? 0 : extra];
            mj_compiled *c = mjt_compile(jit, g, md);
            for (size_t b = 0; b < sizeof batches / sizeof *batches; b++) {
                mj_tensor *x;
                OK(mjt_random_input(&spec, batches[b], &rng, &x));
                char what[200];
                snprintf(what, sizeof what, "model %d %s batch %lld", i, spec.text, (long long)batches[b]);
                double e = check_model(c, m, x, md, what);
                if (md.numeric == MJ_NUMERIC_FAST && e > max_fast) max_fast = e;
                mj_tensor_release(x);
            }
            mj_compiled_free(c);
        }
        mjt_free_traced(g, m);
    }
    cr_log_info("random models: %d, fast mode max abs error %.3g", n_models, max_fast);
}

/* Live: a weight and a mask changed after compiling are honoured; frozen
 * keeps the values it was compiled with. */
Test(jit, live_mode_sees_weight_and_mask_changes_frozen_does_not) {
    mj_rng rng = mjt_rng(10);
    int64_t ex[2] = {3, 16};
    mj_module *m = seed_model(true);
    mj_graph *g = trace(m, 2, ex);
    mj_compiled *live = mjt_compile(jit, g, mjt_modes[0]), *frozen = mjt_compile(jit, g, mjt_modes[1]);
    mj_tensor *x, *before;
    OK(mj_tensor_randn(&x, 2, ex, &rng));
    OK(mj_module_forward(m, x, &before));
    check_model(live, m, x, mjt_modes[0], "live before");

    /* a weight */
    mj_module *lin = mj_module_find(m, "seq.0");
    float *w = mj_tensor_data_mut(mj_module_original(lin, "weight"));
    for (int i = 0; i < 256; i++) w[i] = mj_rng_normal(&rng);
    check_model(live, m, x, mjt_modes[0], "live after a weight change");
    /* a mask: all ones */
    mj_tensor *mask = mj_parametrization_buffer(mj_module_parametrization(lin, "weight", 0), "mask");
    float *md = mj_tensor_data_mut(mask);
    for (int i = 0; i < 256; i++) md[i] = 1.0f;
    check_model(live, m, x, mjt_modes[0], "live after a mask change");
    /* a bias: read in place by the body */
    mj_tensor_dict *params;
    OK(mj_module_named_parameters(m, &params));
    mj_tensor *bias = mj_tensor_dict_get(params, "seq.1.bias");
    cr_assert(bias);
    mj_tensor_data_mut(bias)[3] = -7.5f;
    mj_tensor_dict_free(params);
    check_model(live, m, x, mjt_modes[0], "live after a bias change");

    mj_tensor *now = mjt_forward(m, x);
    cr_assert(!mj_tensor_equal(now, before), "the changes must change the output");
    mj_tensor *fz;
    OK(mj_compiled_run(frozen, x, &fz));
    cr_assert(mj_tensor_equal(fz, before), "frozen must keep the compiled-in values");
    MJT_RELEASE(fz, now, before, x);
    mj_compiled_free(live);
    mj_compiled_free(frozen);
    mjt_free_traced(g, m);
}

/* ---- guards ---------------------------------------------------------------- */

Test(jit, shape_guards_reject_bad_calls_with_messages) {
    mj_rng rng = mjt_rng(11);
    mj_graph *g = x_w_graph(MJ_OP_LINEAR, MJ_ACT_NONE, ty(2, 8, 16, 0), &rng);
    mj_compiled *c = mjt_compile(jit, g, mjt_modes[0]);

    mj_tensor *bad, *y = NULL;
    int64_t s1[2] = {3, 15};
    OK(mj_tensor_zeros(&bad, 2, s1));
    cr_assert_eq(mj_compiled_run(c, bad, &y), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "[3, 15]") && strstr(mj_last_error(), "f32[B,16]"), "%s", mj_last_error());
    cr_assert_null(y);
    mj_tensor_release(bad);

    int64_t s0[2] = {0, 16};
    OK(mj_tensor_zeros(&bad, 2, s0));
    cr_assert_eq(mj_compiled_run(c, bad, &y), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "must be >= 1"), "%s", mj_last_error());
    mj_tensor_release(bad);

    float xb[32] = {0}, yb[16];
    for (int i = 0; i < 16; i++) yb[i] = 42.0f;
    cr_assert_eq(mj_compiled_run_raw(c, xb, 0, yb, 16), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "batch is 0"), "%s", mj_last_error());
    cr_assert_eq(mj_compiled_run_raw(c, NULL, 1, yb, 16), MJ_ERR_INVALID);
    cr_assert(strstr(mj_last_error(), "x is NULL"), "%s", mj_last_error());
    cr_assert_eq(mj_compiled_run_raw(c, xb, 1, NULL, 16), MJ_ERR_INVALID);
    cr_assert(strstr(mj_last_error(), "y is NULL"), "%s", mj_last_error());
    cr_assert_eq(mj_compiled_run(c, NULL, &y), MJ_ERR_INVALID);
    /* y too small: batch 2 needs 16 floats */
    cr_assert_eq(mj_compiled_run_raw(c, xb, 2, yb, 15), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "room for 15") && strstr(mj_last_error(), "[2, 8]"), "%s", mj_last_error());
    for (int i = 0; i < 16; i++) cr_assert_eq(yb[i], 42.0f, "nothing may be written on error");
    /* overlap */
    cr_assert_eq(mj_compiled_run_raw(c, xb, 1, xb + 8, 8), MJ_ERR_INVALID);
    cr_assert(strstr(mj_last_error(), "overlap"), "%s", mj_last_error());
    /* the good call still works */
    OK(mj_compiled_run_raw(c, xb, 2, yb, 16));

    cr_assert_eq(mj_compiled_dump(c, "bitcode", stdout), MJ_ERR_INVALID);
    cr_assert(strstr(mj_last_error(), "bitcode"), "%s", mj_last_error());
    mj_compiled_free(c);
    mj_graph_free(g);
}

Test(jit, compile_rejects_bad_graphs_and_options) {
    mj_compiled *c = NULL;
    cr_assert_eq(mj_jit_compile(jit, NULL, NULL, &c), MJ_ERR_INVALID);
    cr_assert(strstr(mj_last_error(), "NULL"), "%s", mj_last_error());
    /* an unbound param */
    mj_graph *g = new_graph();
    int32_t x = input(g, ty(2, B, 4, 0));
    mj_type wt = ty(2, 4, 4, 0);
    int32_t w;
    OK(mj_graph_add_leaf(g, MJ_OP_PARAM, "lonely.weight", &wt, NULL, &w));
    out(g, op(g, MJ_OP_LINEAR, 2, x, w, -1, MJ_ACT_NONE, NULL));
    mj_status s = mj_jit_compile(jit, g, NULL, &c);
    cr_assert_neq(s, MJ_OK);
    cr_assert(strstr(mj_last_error(), "lonely.weight"), "%s", mj_last_error());
    cr_assert_null(c);
    mj_graph_free(g);
    /* bad options */
    g = new_graph();
    x = input(g, ty(2, B, 4, 0));
    out(g, op(g, MJ_OP_RELU, 1, x, -1, -1, MJ_ACT_NONE, NULL));
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.threads = -2;
    cr_assert_eq(mj_jit_compile(jit, g, &o, &c), MJ_ERR_INVALID);
    cr_assert(strstr(mj_last_error(), "threads is -2"), "%s", mj_last_error());
    mj_graph_free(g);
}

/* ---- leaks, threads, dumps ------------------------------------------------- */

static long rss_kb(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    cr_assert(f);
    long size, res;
    cr_assert_eq(fscanf(f, "%ld %ld", &size, &res), 2);
    fclose(f);
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

Test(jit, compile_and_free_many_graphs_does_not_grow) {
    mj_rng rng = mjt_rng(12);
    int n = scaled(1000), half = n / 2;
    long after_first = 0;
    for (int i = 0; i < n; i++) {
        mj_graph *g = new_graph();
        int32_t x = input(g, ty(2, B, 8, 0));
        int32_t w = leaf(g, MJ_OP_PARAM, "w", ty(2, 8, 8, 0), &rng);
        int32_t b = leaf(g, MJ_OP_PARAM, "b", ty(1, 8, 0, 0), &rng);
        out(g, op(g, MJ_OP_LINEAR_ACT, 3, x, w, b, MJ_ACT_RELU, NULL));
        mj_compiled *c = mjt_compile(jit, g, mjt_modes[i % 4]);
        float xb[16] = {1, 2, 3}, yb[16];
        OK(mj_compiled_run_raw(c, xb, 2, yb, 16));
        mj_compiled_free(c);
        mj_graph_free(g);
        if (i + 1 == half) after_first = rss_kb();
    }
    long after_all = rss_kb();
    cr_log_info("RSS after %d compiles: %ld KB, after %d: %ld KB", half, after_first, n, after_all);
#ifndef __SANITIZE_ADDRESS__
    cr_assert_lt(after_all - after_first, 4096, "RSS grew by %ld KB over the last %d compiles",
                 after_all - after_first, n - half);
#else
    /* ASan's quarantine keeps freed blocks out of reuse until it holds
     * 256 MB, so RSS grows there by design (5-10 MB over these compiles in
     * a fresh CI run); under ASan, LeakSanitizer is the leak check. */
    (void)after_first;
#endif
}

/* n callers of c on x (iters calls each) must all get want. */
static void assert_callers_agree(mj_compiled *c, mj_tensor *x, mj_tensor *want, int n, int iters) {
    mjt_call_arg args[8];
    cr_assert_leq(n, 8);
    for (int i = 0; i < n; i++) args[i] = (mjt_call_arg){.c = c, .x = x, .want = want, .kind = MJT_CALL_COMPILED, .iters = iters};
    cr_assert(mjt_run_threads(n, mjt_call_main, args, sizeof *args), "pthread_create failed");
    for (int i = 0; i < n; i++) cr_assert_eq(args[i].bad, 0, "thread %d: %d bad results (%s)", i, args[i].bad, args[i].err);
}

Test(jit, eight_threads_share_one_compiled_model) {
    mj_rng rng = mjt_rng(13);
    mj_module *m = mjt_model("mlp:64,96,96,10:act=gelu", 0.5, &rng);
    int64_t ex[2] = {2, 64}, xs[2] = {7, 64};
    mj_graph *g = trace(m, 2, ex);
    mj_compiled *c = mjt_compile(jit, g, mjt_modes[0]);
    mj_tensor *x, *want;
    OK(mj_tensor_randn(&x, 2, xs, &rng));
    cr_assert_eq(mj_compiled_run(c, x, &want), MJ_OK); /* single-threaded reference */
    check_model(c, m, x, mjt_modes[0], "mlp");
    assert_callers_agree(c, x, want, 8, scaled(500));
    MJT_RELEASE(x, want);
    mj_compiled_free(c);
    mjt_free_traced(g, m);
}

static char *dump(mj_compiled *c, const char *what) {
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    cr_assert(f);
    mj_status s = mj_compiled_dump(c, what, f);
    fclose(f);
    OK(s);
    return buf;
}

Test(jit, dump_ir_and_asm) {
    mj_rng rng = mjt_rng(14);
    mj_graph *g = x_w_graph(MJ_OP_LINEAR_ACT, MJ_ACT_SIGMOID, ty(2, 16, 16, 0), &rng);
    mj_compiled *c = mjt_compile(jit, g, mjt_modes[0]);
    char *ir = dump(c, "ir");
    cr_assert(strstr(ir, "define") && strstr(ir, "mj_body_"), "%.300s", ir);
    /* maskjit's expf (src/core/vmath.h), inline: no call to libm's */
    cr_assert(!strstr(ir, "@expf") && strstr(ir, "fptosi"), "the sigmoid's exp is inline");
    /* exact: eager's fmaf chain as llvm.fma, never the contractable fmuladd
     * or fast-math flags (which would let LLVM reassociate) */
    cr_assert(strstr(ir, "llvm.fma.") && !strstr(ir, "fmuladd") && !strstr(ir, "contract") &&
                  !strstr(ir, "reassoc"),
              "exact mode: llvm.fma, no fast-math flags");
    char *as = dump(c, "asm");
    cr_assert(strstr(as, "mj_body_") && strstr(as, "ret"), "%.300s", as);
    cr_assert(strstr(as, "vfmadd") || strstr(as, "fmaf"), "expected FMA instructions or libm's fmaf");
    MJT_FREE(ir, as);
    mj_compiled_free(c);
    /* fast mode may contract */
    c = mjt_compile(jit, g, mjt_modes[2]);
    ir = dump(c, "ir");
    cr_assert(strstr(ir, "contract") || strstr(ir, "fast"), "fast-math flags expected");
    free(ir);
    mj_compiled_free(c);
    mj_graph_free(g);
}

/* ---- vector kernels: tile edges, threads, AVX2 ------------------------------ */


/* g compiled in every mode against the interpreter at each batch up to
 * max_batch. Exact: bit for bit (check_result). Fast: K-term sums reordered
 * and fused, so the error grows like sqrt(K). */
static void check_kernels_at_batches(mj_graph *g, int64_t K, const int64_t *batches, size_t n_batches,
                                     int64_t max_batch, const char *what, mj_rng *rng) {
    for (int mi = 0; mi < 4; mi++) {
        mjt_mode m = mjt_modes[mi];
        mj_compiled *c = mjt_compile(jit, g, m);
        for (size_t bi = 0; bi < n_batches; bi++) {
            if (batches[bi] > max_batch) continue;
            mj_tensor *xin = randn_input(g, batches[bi], rng), *want, *got;
            OK(mj_graph_run(g, xin, &want));
            OK(mj_compiled_run(c, xin, &got));
            char at[160];
            snprintf(at, sizeof at, "%s batch %lld", what, (long long)batches[bi]);
            if (m.numeric == MJ_NUMERIC_EXACT) {
                check_result(got, want, m, at);
            } else {
                double f = sqrt((double)K);
                mj_compare cmp = mj_tensor_compare(got, want, MJ_RTOL_F32 * f, MJ_ATOL_F32 * f);
                char desc[256];
                mj_compare_describe(&cmp, got, want, desc, sizeof desc);
                cr_assert(cmp.close, "%s (%s): not close: %s", at, m.name, desc);
            }
            MJT_RELEASE(xin, want, got);
        }
        mj_compiled_free(c);
    }
}

/* linear(+bias, act) of every (N, K) against the interpreter at batches that
 * are not multiples of any tile: the fused small kernels (<= 64 wide), the
 * GEMM micro-kernels with partial panels and vectors, k blocking
 * (K = 1000), and a packed weight of more than 2 MiB (520x1024, in the
 * memory offered to huge pages). */
Test(jit, kernels_tile_edges_against_interpreter) {
    mj_rng rng = mjt_rng(15);
    /* {20, 9000}: x rows so long that batch 33 spans two of the GEMM's
     * row blocks (sized from the L2 cache) on any L2 up to 3 MiB; {65, 1000},
     * {70, 1957}, {5, 3072} and {20, 9000} are cut into k chunks of unequal
     * counts of k blocks (sized from L1 and L2) on caches of 32-48 KiB and
     * 1-2 MiB, the last block short, when the batch is more rows than one
     * row block of whole rows holds (batch 1000; 33 at K = 9000), and run
     * whole rows in one chunk below that (batches 1-17) */
    static const int64_t shapes[][2] = {{1, 1},     {15, 17},   {33, 15},  {16, 64},   {17, 300},
                                        {1000, 33}, {65, 1000}, {130, 129}, {70, 1957}, {5, 3072},
                                        {20, 9000}, {520, 1024}};
    static const int64_t batches[] = {1, 15, 17, 33, 1000};
    int n_shapes = (int)(sizeof shapes / sizeof *shapes);
    for (int si = 0; si < n_shapes; si++) {
        int64_t N = shapes[si][0], K = shapes[si][1];
        mj_graph *g = new_graph();
        int32_t x = input(g, ty(2, B, K, 0));
        int32_t w = leaf(g, MJ_OP_PARAM, "w", ty(2, N, K, 0), &rng);
        int32_t b = leaf(g, MJ_OP_PARAM, "b", ty(1, N, 0, 0), &rng);
        mj_act act = si % 2 ? MJ_ACT_RELU : (si % 4 == 0 ? MJ_ACT_SIGMOID : MJ_ACT_NONE);
        out(g, op(g, act == MJ_ACT_NONE ? MJ_OP_LINEAR : MJ_OP_LINEAR_ACT, 3, x, w, b, act, NULL));
        char what[96];
        snprintf(what, sizeof what, "linear %lldx%lld", (long long)N, (long long)K);
        check_kernels_at_batches(g, K, batches, sizeof batches / sizeof *batches, scaled(70000000) / (N * K),
                                 what, &rng);
        mj_graph_free(g);
    }
}

/* matmul through the register-tiled micro-kernels (b in panels of a few
 * vectors, copied to a contiguous buffer when b is wider than one, rows
 * 6/4/2/1 at a time), exact bit for bit: x[B, K] @ w[K, N] puts the batch
 * in the rows (1..13, 128, 1000; K = 1000 at batch 1000 cuts the rows into
 * k chunks, each copied on its own), and x[B, 3, M, K] @ x^T the
 * attention's shape (batched, M a constant, N = M). */
Test(jit, kernels_matmul_tiles_against_interpreter) {
    mj_rng rng = mjt_rng(16);
    static const int64_t kn[][2] = {{1, 1}, {7, 5}, {64, 128}, {33, 70}, {300, 129}, {17, 64}, {1000, 40}};
    static const int64_t batches[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 128, 1000};
    static const int64_t mk[][2] = {{128, 64}, {13, 9}, {70, 3}};
    int n_kn = (int)(sizeof kn / sizeof *kn), n_mk = (int)(sizeof mk / sizeof *mk);
    size_t n_b = sizeof batches / sizeof *batches;
    for (int si = 0; si < n_kn + n_mk; si++) {
        mj_graph *g = new_graph();
        int64_t K;
        if (si < n_kn) {
            K = kn[si][0];
            int32_t x = input(g, ty(2, B, K, 0));
            int32_t w = leaf(g, MJ_OP_PARAM, "w", ty(2, K, kn[si][1], 0), &rng);
            out(g, op(g, MJ_OP_MATMUL, 2, x, w, -1, MJ_ACT_NONE, NULL));
        } else {
            int64_t M = mk[si - n_kn][0];
            K = mk[si - n_kn][1];
            mj_type xt = ty(3, B, 3, M);
            xt.rank = 4;
            xt.dims[3] = K;
            int32_t x = input(g, xt);
            int32_t t = op(g, MJ_OP_TRANSPOSE, 1, x, -1, -1, MJ_ACT_NONE, NULL);
            out(g, op(g, MJ_OP_MATMUL, 2, x, t, -1, MJ_ACT_NONE, NULL));
        }
        char what[96];
        snprintf(what, sizeof what, "matmul shape %d", si);
        /* the attention's shapes at batches 1..13 and 128 */
        check_kernels_at_batches(g, K, batches, si < n_kn ? n_b : n_b - 1, INT64_MAX, what, &rng);
        mj_graph_free(g);
    }
}

/* A chain of small layers (one fused kernel) and a chain mixing small and
 * wide layers, traced from a model, at odd batches. */
Test(jit, kernels_fused_chains_equal_eager) {
    mj_rng rng = mjt_rng(16);
    static const char *specs[] = {"mlp:16,16,16,16", "mlp:7,33,9,64,5:act=gelu", "mlp:20,100,20,70:act=relu"};
    static const int64_t batches[] = {1, 2, 3, 4, 17, 33};
    for (int si = 0; si < 3; si++) {
        mj_module *m = mjt_model(specs[si], 0.5, &rng);
        int64_t in = atoi(specs[si] + 4), ex[2] = {3, in};
        mj_graph *g = trace(m, 2, ex);
        for (int mi = 0; mi < 4; mi++) {
            mj_compiled *c = mjt_compile(jit, g, mjt_modes[mi]);
            check_batches(c, m, in, batches, sizeof batches / sizeof *batches, mjt_modes[mi], specs[si], &rng);
            mj_compiled_free(c);
        }
        mjt_free_traced(g, m);
    }
}

/* Frozen small layers with sparse masks take the per-lane form (one
 * shuffle per step, steps = most nonzeros in a row) and stay bit-identical:
 * K of 12 (one vector), 20 and 32 (two), rows left with no weight at all
 * (density 0.1 at K = 12), the seed's identity masks. */
Test(jit, frozen_small_layers_skip_zero_weights_per_lane) {
    mj_rng rng = mjt_rng(21);
    static const struct {
        const char *spec;
        double density;
    } cases[] = {{"mlp:12,16,12:act=relu", 0.1}, {"mlp:20,40,20,3:act=tanh", 0.3}, {"mlp:32,64,32", 0.5}};
    static const int64_t batches[] = {1, 3, 17};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        mj_module *m = mjt_model(cases[ci].spec, 1, &rng);
        OK(mj_model_apply_masks(m, NULL, cases[ci].density, &rng));
        int64_t in = atoi(cases[ci].spec + 4), ex[2] = {3, in};
        mj_graph *g = trace(m, 2, ex);
        mj_compiled *c = mjt_compile(jit, g, mjt_modes[1]);
        char *ir = mjt_dump(c, "ir");
        /* the steps' shuffles are named "lanes" (jit/lower_small.c); the form
         * takes K up to two vectors: 32 with AVX-512, 16 with AVX2 */
        int vw = strstr(ir, "<16 x float>") ? 16 : strstr(ir, "<8 x float>") ? 8 : 4;
        bool want = in <= 2 * vw;
        cr_assert_eq(strstr(ir, "%lanes") != NULL, want, "%s: per-lane steps %s in the frozen kernel",
                     cases[ci].spec, want ? "missing" : "unexpected");
        free(ir);
        for (size_t bi = 0; bi < sizeof batches / sizeof *batches; bi++) {
            int64_t xs[2] = {batches[bi], in};
            mj_tensor *x;
            OK(mj_tensor_randn(&x, 2, xs, &rng));
            check_model(c, m, x, mjt_modes[1], cases[ci].spec);
            mj_tensor_release(x);
        }
        mj_compiled_free(c);
        mjt_free_traced(g, m);
    }
}

static mj_compiled *compile_threads(mj_jit *j, const mj_graph *g, mjt_mode m, int threads) {
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.numeric = m.numeric;
    o.frozen = m.frozen;
    o.threads = threads;
    mj_compiled *c = NULL;
    cr_assert_eq(mj_jit_compile(j, g, &o, &c), MJ_OK, "threads %d: %s", threads, mj_last_error());
    return c;
}

/* g compiled in mode md at 1, 2 and 4 threads (into c[0..2]); at each of
 * the n batches (inputs randn [batch, in] from rng) the three give the same
 * bits, and live ones m's eager bits too (check_model). */
static void assert_threads_agree(mj_compiled *c[3], const mj_graph *g, mj_module *m, mjt_mode md, int64_t in,
                                 const int64_t *batches, size_t n, mj_rng *rng, const char *what) {
    for (int t = 0; t < 3; t++) c[t] = compile_threads(jit, g, md, 1 << t);
    for (size_t bi = 0; bi < n; bi++) {
        int64_t xs[2] = {batches[bi], in};
        mj_tensor *x, *y[3];
        OK(mj_tensor_randn(&x, 2, xs, rng));
        for (int t = 0; t < 3; t++) OK(mj_compiled_run(c[t], x, &y[t]));
        for (int t = 1; t < 3; t++)
            cr_assert(mj_tensor_equal(y[0], y[t]), "%s %s batch %lld: %d threads differ", what, md.name,
                      (long long)xs[0], 1 << t);
        if (!md.frozen) check_model(c[2], m, x, md, what);
        mj_tensor_release(x);
        for (int t = 0; t < 3; t++) mj_tensor_release(y[t]);
    }
}

static void free_threads(mj_compiled *c[3]) {
    for (int t = 0; t < 3; t++) mj_compiled_free(c[t]);
}

/* Column mode: at fewer than 6 rows per thread, wide layers split their
 * output columns between the pool's threads, which meet after every op
 * (jit/lower.c, jit/compiled_run.c). Same bits as one thread and as eager, for
 * dense, sparse-frozen and small layers mixed, at 2 and 4 threads. */
Test(jit, column_split_threads_are_bit_identical, .timeout = 120) {
    mj_rng rng = mjt_rng(23);
    static const struct {
        const char *spec;
        double density;
    } models[] = {{"mlp:1024,1024,1024:act=gelu", 1.0}, {"mlp:512,2048,520,16,8:act=relu", 0.2}};
    /* 40 and 90: columns too when every op splits them (below 48 rows per
     * thread) */
    static const int64_t batches[] = {1, 2, 5, 11, 40, 90};
    for (size_t mi_ = 0; mi_ < sizeof models / sizeof *models; mi_++) {
        mj_module *m = mjt_model(models[mi_].spec, models[mi_].density, &rng);
        int64_t in = atoi(models[mi_].spec + 4), ex[2] = {2, in};
        mj_graph *g = trace(m, 2, ex);
        for (int mi = 0; mi < 4; mi++) {
            mj_compiled *c[3];
            assert_threads_agree(c, g, m, mjt_modes[mi], in, batches, sizeof batches / sizeof *batches, &rng,
                                 models[mi_].spec);
            free_threads(c);
        }
        mjt_free_traced(g, m);
    }
}

/* A compiled model keeps its JIT alive: freeing the JIT first is safe, and
 * the models run on (the code was removed with the JIT before, and the
 * next call jumped into unmapped memory). */
Test(jit, compiled_models_outlive_their_jit) {
    mj_rng rng = mjt_rng(41);
    mj_module *m = mjt_model("mlp:64,96,32:act=relu", 0.5, &rng);
    mj_graph *g = trace(m, 2, (int64_t[]){2, 64});
    mj_jit *own;
    OK(mj_jit_new(&own));
    mj_compiled *c[2];
    for (int k = 0; k < 2; k++) {
        mj_compile_options o;
        mj_compile_options_init(&o);
        o.frozen = k == 1;
        o.threads = 2;
        o.use_cache = false;
        OK(mj_jit_compile(own, g, &o, &c[k]));
    }
    mj_jit_free(own);
    mj_tensor *x = mjt_randn2(67, 64, &rng), *want = mjt_forward(m, x);
    for (int k = 0; k < 2; k++) {
        mj_tensor *y = mjt_run(c[k], x);
        cr_expect(mj_tensor_equal(y, want), "%s after mj_jit_free: not eager's bits", k ? "frozen" : "live");
        mj_tensor_release(y);
        mj_compiled_free(c[k]);
    }
    mjt_release_n((mj_tensor *[]){x, want}, 2);
    mjt_free_traced(g, m);
}

/* The pool's size is an option, not a resource request: a typo of 100000
 * threads is refused as one, instead of starting workers until the
 * process runs out. */
Test(jit, threads_beyond_the_limit_are_refused) {
    mj_rng rng = mjt_rng(42);
    mj_module *m = mjt_model("mlp:16,16", 1, &rng);
    mj_graph *g = trace(m, 2, (int64_t[]){2, 16});
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.threads = MJ_MAX_THREADS + 1;
    mj_compiled *c = NULL;
    cr_expect_eq(mj_jit_compile(jit, g, &o, &c), MJ_ERR_INVALID);
    cr_expect(strstr(mj_last_error(), "threads is 257 (at most 256)"), "%s", mj_last_error());
    cr_expect_null(c);
    mjt_free_traced(g, m);
}

/* Rows split over 2 and 4 threads give the bits of 1 thread (and of the
 * interpreter in exact mode), at batches around the split points; a live
 * weight change is seen by the pooled calls too. */
Test(jit, threads_are_bit_identical_to_one_thread) {
    mj_rng rng = mjt_rng(17);
    mj_module *m = mjt_model("mlp:256,300,256:act=relu", 0.5, &rng);
    int64_t ex[2] = {2, 256};
    mj_graph *g = trace(m, 2, ex);
    static const int64_t batches[] = {1, 2, 3, 64, 65, 333};
    for (int mi = 0; mi < 4; mi++) {
        mj_compiled *c[3];
        assert_threads_agree(c, g, m, mjt_modes[mi], 256, batches, sizeof batches / sizeof *batches, &rng,
                             "4 threads");
        if (mi == 0) { /* live: change a weight, the pooled call sees it */
            mj_module *lin = mj_module_find(m, "0");
            cr_assert(lin && mj_module_original(lin, "weight"));
            float *w = mj_tensor_data_mut(mj_module_original(lin, "weight"));
            for (int i = 0; i < 300; i++) w[i] = mj_rng_normal(&rng);
            int64_t xs[2] = {200, 256};
            mj_tensor *x;
            OK(mj_tensor_randn(&x, 2, xs, &rng));
            check_model(c[2], m, x, mjt_modes[0], "4 threads after a weight change");
            check_model(c[0], m, x, mjt_modes[0], "1 thread after a weight change");
            mj_tensor_release(x);
        }
        free_threads(c);
    }
    /* threads = 0: every core */
    mj_compiled *c0 = compile_threads(jit, g, mjt_modes[0], 0);
    check_model_randn(c0, m, (int64_t[]){100, 256}, &rng, mjt_modes[0], "threads 0");
    mj_compiled_free(c0);
    mjt_free_traced(g, m);
}

/* The pool's threads spin a while between calls, then sleep: calls that
 * come back to back, after a short gap and after a long one (both sides
 * asleep) all use the pool and are right; a lost wake-up hangs here. */
Test(jit, pool_calls_after_idle_gaps_are_right, .timeout = 120) {
    mj_rng rng = mjt_rng(23);
    mj_module *m = mjt_model("mlp:128,128,128:act=tanh", 1, &rng);
    int64_t ex[2] = {2, 128}, xs[2] = {150, 128};
    mj_graph *g = trace(m, 2, ex);
    mj_compiled *c = compile_threads(jit, g, mjt_modes[0], 2);
    mj_tensor *x;
    OK(mj_tensor_randn(&x, 2, xs, &rng));
    static const long gaps_us[] = {0, 0, 50, 3000, 0, 20000, 3000, 0};
    for (size_t i = 0; i < sizeof gaps_us / sizeof *gaps_us; i++) {
        struct timespec nap = {0, gaps_us[i] * 1000};
        while (nanosleep(&nap, &nap) != 0) {}
        char what[64];
        snprintf(what, sizeof what, "call %zu after %ld us idle", i, gaps_us[i]);
        check_model(c, m, x, mjt_modes[0], what);
        cr_assert_eq(mj_compiled_last_split(c), 1, "%s: the pool split the rows", what);
    }
    mj_tensor_release(x);
    mj_compiled_free(c);
    mjt_free_traced(g, m);
}

/* Pool threads that never spin: every call wakes sleeping workers, and the
 * caller sleeps until the last of them wakes it. A lost wakeup hangs a
 * call (the timeout fails the test). Row and column mode, 2 and 3 threads
 * (1 and 2 workers to finish before the caller may go on). */
Test(jit, pool_threads_that_sleep_at_once_are_right, .timeout = 120) {
    mj_rng rng = mjt_rng(29);
    /* 4 MFLOP at batch 2: enough for the pool to split its columns */
    mj_module *m = mjt_model("mlp:512,1024,512:act=tanh", 1, &rng);
    int64_t ex[2] = {2, 512}, rows_shape[2] = {150, 512}, cols_shape[2] = {2, 512};
    mj_graph *g = trace(m, 2, ex);
    mj_tensor *x[2], *want[2];
    OK(mj_tensor_randn(&x[0], 2, rows_shape, &rng));
    OK(mj_tensor_randn(&x[1], 2, cols_shape, &rng));
    for (int k = 0; k < 2; k++) OK(mj_module_forward(m, x[k], &want[k]));
    for (int threads = 2; threads <= 3; threads++) {
        mj_compiled *c = compile_threads(jit, g, mjt_modes[0], threads);
        mj_compiled_pool_spin_for_tests(c, 0);
        for (int i = 0; i < scaled(100); i++)
            for (int k = 0; k < 2; k++) {
                char what[80];
                snprintf(what, sizeof what, "%d threads, call %d, %s", threads, i, k ? "columns" : "rows");
                mj_tensor *got;
                cr_assert_eq(mj_compiled_run(c, x[k], &got), MJ_OK, "%s: %s", what, mj_last_error());
                check_result(got, want[k], mjt_modes[0], what);
                mj_tensor_release(got);
                cr_assert_eq(mj_compiled_last_split(c), k ? 2 : 1, "%s: the pool split the %s", what,
                             k ? "columns" : "rows");
            }
        mj_compiled_free(c);
    }
    MJT_RELEASE(x[0], x[1], want[0], want[1]);
    mjt_free_traced(g, m);
}

/* A worker that starts its share on its caller's CPU moves to another one
 * the caller's affinity allows. The test pins itself to the CPU where the
 * worker ended its last share, so that the next call usually finds the two
 * together; every time the worker saw that, it must have moved. With one
 * allowed CPU there is nowhere to go, and nothing moves. */
Test(jit, pool_worker_moves_off_its_callers_cpu, .timeout = 120) {
    mj_rng rng = mjt_rng(31);
    mj_module *m = mjt_model("mlp:256,512,256:act=relu", 1, &rng);
    int64_t ex[2] = {2, 256}, xs[2] = {150, 256};
    mj_graph *g = trace(m, 2, ex);
    mj_compiled *c = compile_threads(jit, g, mjt_modes[0], 2);
    mj_tensor *x, *want;
    OK(mj_tensor_randn(&x, 2, xs, &rng));
    OK(mj_module_forward(m, x, &want));
    cpu_set_t allowed;
    cr_assert_eq(sched_getaffinity(0, sizeof allowed, &allowed), 0);
    mj_pool_placement pl = {0, 0, -1};
    for (int i = 0; i < 400 && pl.colocated < 3; i++) {
        mj_tensor *got;
        cr_assert_eq(mj_compiled_run(c, x, &got), MJ_OK, "%s", mj_last_error());
        check_result(got, want, mjt_modes[0], "a call beside the worker");
        mj_tensor_release(got);
        cr_assert_eq(mj_compiled_last_split(c), 1, "the pool split the rows");
        pl = mj_compiled_pool_placement_for_tests(c);
        /* the next call on the worker's CPU, then back to every CPU */
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(pl.worker_cpu, &one);
        if (i % 2 == 0 && pl.worker_cpu >= 0) cr_assert_eq(sched_setaffinity(0, sizeof one, &one), 0);
        else cr_assert_eq(sched_setaffinity(0, sizeof allowed, &allowed), 0);
    }
    cr_assert_eq(sched_setaffinity(0, sizeof allowed, &allowed), 0);
    if (CPU_COUNT(&allowed) < 2) {
        cr_expect_eq(pl.moved, 0, "one CPU allowed, yet a worker moved %d times", pl.moved);
    } else {
        cr_expect(pl.colocated > 0, "the worker never started on the caller's CPU in 400 calls");
        cr_expect_eq(pl.moved, pl.colocated, "the worker started on its caller's CPU %d times and moved %d",
                     pl.colocated, pl.moved);
    }
    MJT_RELEASE(x, want);
    mj_compiled_free(c);
    mjt_free_traced(g, m);
}

/* Many callers on one pooled compiled model: one uses the pool, the others
 * run on their own threads; every result is right. */
Test(jit, threads_pool_shared_by_concurrent_callers) {
    mj_rng rng = mjt_rng(18);
    mj_module *m = mjt_model("mlp:128,128,128:act=tanh", 1, &rng);
    int64_t ex[2] = {2, 128}, xs[2] = {150, 128};
    mj_graph *g = trace(m, 2, ex);
    mj_compiled *c = compile_threads(jit, g, mjt_modes[0], 2);
    mj_tensor *x, *want;
    OK(mj_tensor_randn(&x, 2, xs, &rng));
    OK(mj_module_forward(m, x, &want));
    assert_callers_agree(c, x, want, 4, scaled(100));
    MJT_RELEASE(x, want);
    mj_compiled_free(c);
    mjt_free_traced(g, m);
}

/* MASKJIT_JIT_FEATURES forces AVX2 code (as under valgrind): 256-bit
 * vectors only, and the same bits as eager. */
Test(jit, avx2_code_path_via_forced_features) {
    mj_jit *j2 = mjt_avx2_jit();
    mj_rng rng = mjt_rng(19);
    /* the third is masked at 10%: its frozen layers go to the sparse kernel,
     * which must follow the JIT's target too */
    static const char *specs[] = {"mlp:16,16,16,16", "mlp:100,130,33:act=gelu", "mlp:128,160,96:act=relu"};
    for (int si = 0; si < 3; si++) {
        mj_module *m = mjt_model(specs[si], 1, &rng);
        if (si == 2) cr_assert_eq(mj_model_apply_masks(m, NULL, 0.1, &rng), MJ_OK, "%s", mj_last_error());
        int64_t in = atoi(specs[si] + 4), ex[2] = {3, in};
        mj_graph *g = trace(m, 2, ex);
        for (int mi = 0; mi < 4; mi++) {
            mj_compiled *c = compile_threads(j2, g, mjt_modes[mi], 1);
            char *as = dump(c, "asm");
            cr_assert(strstr(as, "ymm"), "%s (%s): expected AVX2 ymm code", specs[si], mjt_modes[mi].name);
            cr_assert(!strstr(as, "zmm"), "%s (%s): AVX-512 code although avx512f is off", specs[si], mjt_modes[mi].name);
            free(as);
            char *ir = dump(c, "ir");
            cr_assert(!strstr(ir, "<16 x float>"), "%s (%s): 16-wide vectors for an 8-wide target",
                      specs[si], mjt_modes[mi].name);
            if (si == 2 && mjt_modes[mi].frozen)
                cr_assert(strstr(ir, ".sparse"), "%s (%s): expected the sparse kernel", specs[si], mjt_modes[mi].name);
            free(ir);
            static const int64_t batches[] = {1, 7, 40};
            check_batches(c, m, in, batches, 3, mjt_modes[mi], specs[si], &rng);
            mj_compiled_free(c);
        }
        mjt_free_traced(g, m);
    }
    mj_jit_free(j2);
}

/* ---- the residual epilogue (linear_add / linear_act_add) ------------------- */

/* Params get randn values, every weight ("w*") zeroed outside the given
 * density (frozen: the sparse kernel for layers wider than 64). */
static void bind_random_params(mj_graph *g, double density, mj_rng *rng) {
    for (int32_t i = 0; i < g->n_nodes; i++) {
        mj_node *n = &g->nodes[i];
        if (n->op != MJ_OP_PARAM) continue;
        mj_tensor *t;
        OK(mj_tensor_randn(&t, n->type.rank, n->type.dims, rng));
        if (n->name[0] == 'w') {
            float *d = mj_tensor_data_mut(t);
            for (int64_t k = 0; k < mj_tensor_numel(t); k++)
                if (mj_rng_uniform(rng) >= density) d[k] = 0.0f;
        }
        mj_tensor_release(n->tensor);
        n->tensor = t;
    }
}

static int count_op(const mj_graph *g, mj_op op) {
    int n = 0;
    for (int32_t i = 0; i < g->n_nodes; i++) n += g->nodes[i].op == op;
    return n;
}

static mj_compiled *compile_fused(const mj_graph *g, mjt_mode m, bool fused) {
    if (!fused) cr_assert_eq(setenv("MASKJIT_FUSE_RESIDUAL", "0", 1), 0);
    mj_compiled *c = mjt_compile(jit, g, m);
    cr_assert_eq(unsetenv("MASKJIT_FUSE_RESIDUAL"), 0);
    return c;
}

/* Residual layers compiled with the add fused into the linear's epilogue
 * and without (MASKJIT_FUSE_RESIDUAL=0), every mode, batches 1, 3 and 17:
 * fused exact == unfused exact == interpreter bit for bit, fast within
 * tolerance. The graphs reach every kernel kind: the small fused chain
 * (with a residual computed after the chain's first layer, which must end
 * the chain), the GEMM micro-kernels (full and tail panels), the frozen
 * sparse kernel (density 0.2) and the scalar loops of an input-dependent
 * weight. */
Test(jit, residual_add_fused_equals_unfused_every_kernel_and_mode) {
    mj_rng rng;
    mj_rng_seed(&rng, 31);
    static const struct {
        const char *text;
        double density;
        int fused; /* linear_add + linear_act_add nodes after "cse,fuse,dce" */
    } cases[] = {
        /* x + l2(gelu(l1(x))); relu(l3(h)) + h; then a small layer whose
         * residual (%11) comes after the first layer of its chain (%10) */
        {"maskjit-ir 1\n%0 = input \"x\" : f32[B,16]\n"
         "%1 = param \"w1\" : f32[40,16]\n%2 = param \"b1\" : f32[40]\n%3 = param \"w2\" : f32[16,40]\n"
         "%4 = param \"b2\" : f32[16]\n%5 = param \"w3\" : f32[16,16]\n"
         "%6 = linear %0, %1, %2 : f32[B,40]\n%7 = gelu %6 : f32[B,40]\n%8 = linear %7, %3, %4 : f32[B,16]\n"
         "%9 = add %0, %8 : f32[B,16]\n%10 = linear %9, %5 : f32[B,16]\n%11 = mul %9, %9 : f32[B,16]\n"
         "%12 = linear %10, %5 : f32[B,16]\n%13 = add %12, %11 : f32[B,16]\n"
         "%14 = linear %13, %5, %4 : f32[B,16]\n%15 = relu %14 : f32[B,16]\n%16 = add %15, %13 : f32[B,16]\n"
         "return %16\n",
         1.0, 3},
        /* wide: GEMM live, sparse frozen; N = 200 is 3 full panels and a tail */
        {"maskjit-ir 1\n%0 = input \"x\" : f32[B,200]\n"
         "%1 = param \"w1\" : f32[300,200]\n%2 = param \"b1\" : f32[300]\n%3 = param \"w2\" : f32[200,300]\n"
         "%4 = param \"b2\" : f32[200]\n%5 = param \"w3\" : f32[200,200]\n"
         "%6 = linear %0, %1, %2 : f32[B,300]\n%7 = gelu %6 : f32[B,300]\n%8 = linear %7, %3, %4 : f32[B,200]\n"
         "%9 = add %8, %0 : f32[B,200]\n%10 = linear %9, %5 : f32[B,200]\n%11 = tanh %10 : f32[B,200]\n"
         "%12 = add %9, %11 : f32[B,200]\nreturn %12\n",
         0.2, 2},
        /* the weight from the input (a sum over the batch): scalar i, j, k loops */
        {"maskjit-ir 1\n%0 = input \"x\" : f32[B,16]\n%1 = sum %0 {dim=0} : f32[16]\n"
         "%2 = reshape %1 : f32[4,4]\n%3 = slice %0 {dim=1, start=0, end=4} : f32[B,4]\n"
         "%4 = param \"b\" : f32[4]\n%5 = linear %3, %2, %4 : f32[B,4]\n%6 = add %5, %3 : f32[B,4]\n"
         "return %6\n",
         1.0, 1},
    };
    static const int64_t batches[] = {1, 3, 17};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        mj_graph *g = NULL;
        cr_assert_eq(mj_graph_parse(cases[ci].text, &g), MJ_OK, "case %zu: %s", ci, mj_last_error());
        bind_random_params(g, cases[ci].density, &rng);
        mj_graph *f = NULL;
        OK(mj_graph_clone(g, &f));
        OK(mj_graph_optimize(f, "cse,fuse,dce"));
        cr_assert_eq(count_op(f, MJ_OP_LINEAR_ADD) + count_op(f, MJ_OP_LINEAR_ACT_ADD), cases[ci].fused,
                     "case %zu fuses %d residual adds:\n%s", ci, cases[ci].fused, mj_graph_to_string(f));
        mj_graph_free(f);
        for (int mi = 0; mi < 4; mi++) {
            mj_compiled *cf = compile_fused(g, mjt_modes[mi], true), *cu = compile_fused(g, mjt_modes[mi], false);
            for (size_t bi = 0; bi < sizeof batches / sizeof *batches; bi++) {
                mj_tensor *x = randn_input(g, batches[bi], &rng), *want, *got, *unf;
                OK(mj_graph_run(g, x, &want));
                OK(mj_compiled_run(cf, x, &got));
                OK(mj_compiled_run(cu, x, &unf));
                char what[96];
                snprintf(what, sizeof what, "residual case %zu batch %lld", ci, (long long)batches[bi]);
                if (mjt_modes[mi].numeric == MJ_NUMERIC_EXACT) {
                    check_result(got, want, mjt_modes[mi], what);
                    cr_assert(mj_tensor_equal(got, unf), "%s (%s): fused != unfused", what, mjt_modes[mi].name);
                } else { /* sums reordered: fast mode's bound (docs/numerics.md) */
                    mj_tolerance t;
                    OK(mj_graph_output_tolerance(g, 0, batches[bi], want, &t));
                    mj_compare cmp = mj_tensor_compare(got, want, t.rtol, t.atol);
                    char desc[256];
                    mj_compare_describe(&cmp, got, want, desc, sizeof desc);
                    cr_assert(cmp.close, "%s (%s): not close: %s", what, mjt_modes[mi].name, desc);
                }
                MJT_RELEASE(x, want, got, unf);
            }
            mj_compiled_free(cf);
            mj_compiled_free(cu);
        }
        mj_graph_free(g);
    }
}

/* ---- chains of frozen sparse layers ------------------------------------------ */

/* Frozen sparse layers that feed one another run as one function per chain
 * (jit/sparse.c, lower_plan.c): only the first layer's x is transposed in,
 * only the last layer's y out. Three layers of 200 -> 161 -> 120 -> 200 (161:
 * an odd width, a dummy row in the chain's scratch) with relu, gelu_tanh and
 * the input as the last layer's residual, masked to 20%, and a third of the
 * first and of the second layer's input columns unused (each would drop
 * them on its own; inside the chain the second must read its input by full
 * column). Each case names the chains it must form (".l1" a chain of two
 * layers, ".l2" of three), then every mode at batches around the chunk sizes
 * against the interpreter (the eager kernels): bit for bit in exact mode. */
Test(jit, sparse_chains_bit_identical_and_only_where_allowed) {
    mj_rng rng;
    mj_rng_seed(&rng, 47);
#define SC_HEAD                                                                                                       \
    "maskjit-ir 1\n%0 = input \"x\" : f32[B,200]\n"                                                                  \
    "%1 = param \"w1\" : f32[161,200]\n%2 = param \"b1\" : f32[161]\n%3 = param \"w2\" : f32[120,161]\n"             \
    "%4 = param \"b2\" : f32[120]\n%5 = param \"w3\" : f32[200,120]\n%6 = param \"w4\" : f32[200,120]\n"
    static const struct {
        const char *text;
        bool l1, l2; /* a chain of at least two layers, of three */
        int n_out;
    } cases[] = {
        /* all three: relu(l1 x), gelu_tanh(l2 .), l3 . + x */
        {SC_HEAD "%7 = linear %0, %1, %2 : f32[B,161]\n%8 = relu %7 : f32[B,161]\n"
                 "%9 = linear %8, %3, %4 : f32[B,120]\n%10 = gelu_tanh %9 : f32[B,120]\n"
                 "%11 = linear %10, %5 : f32[B,200]\n%12 = add %11, %0 : f32[B,200]\nreturn %12\n",
         true, true, 1},
        /* the second layer's value is also an output: the chain ends there */
        {SC_HEAD "%7 = linear %0, %1, %2 : f32[B,161]\n%8 = relu %7 : f32[B,161]\n"
                 "%9 = linear %8, %3, %4 : f32[B,120]\n%10 = gelu_tanh %9 : f32[B,120]\n"
                 "%11 = linear %10, %5 : f32[B,200]\n%12 = add %11, %0 : f32[B,200]\nreturn %12, %10\n",
         true, false, 2},
        /* the second layer's value has two readers: stored, no chain past it */
        {SC_HEAD "%7 = linear %0, %1, %2 : f32[B,161]\n%8 = relu %7 : f32[B,161]\n"
                 "%9 = linear %8, %3, %4 : f32[B,120]\n%10 = gelu_tanh %9 : f32[B,120]\n"
                 "%11 = linear %10, %5 : f32[B,200]\n%12 = linear %10, %6 : f32[B,200]\n"
                 "%13 = add %11, %12 : f32[B,200]\nreturn %13\n",
         true, false, 1},
        /* the last layer's residual is computed after the chain's first
         * layer: it cannot join (the chain runs at the first layer's place) */
        {SC_HEAD "%7 = linear %0, %1, %2 : f32[B,161]\n%8 = relu %7 : f32[B,161]\n%9 = tanh %0 : f32[B,200]\n"
                 "%10 = linear %8, %3, %4 : f32[B,120]\n%11 = gelu_tanh %10 : f32[B,120]\n"
                 "%12 = linear %11, %5 : f32[B,200]\n%13 = add %12, %9 : f32[B,200]\nreturn %13\n",
         true, false, 1},
    };
#undef SC_HEAD
    static const int64_t batches[] = {1, 17, 64, 100, 130};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        mj_graph *g = NULL;
        cr_assert_eq(mj_graph_parse(cases[ci].text, &g), MJ_OK, "case %zu: %s", ci, mj_last_error());
        bind_random_params(g, 0.2, &rng);
        for (int32_t i = 0; i < g->n_nodes; i++) { /* unused input columns: k % 3 == 0 of w1, == 1 of w2 */
            const mj_node *n = &g->nodes[i];
            if (n->op != MJ_OP_PARAM) continue;
            int drop = strcmp(n->name, "w1") == 0 ? 0 : strcmp(n->name, "w2") == 0 ? 1 : -1;
            if (drop < 0) continue;
            float *d = mj_tensor_data_mut(n->tensor);
            for (int64_t j = 0; j < n->type.dims[0]; j++)
                for (int64_t k = drop; k < n->type.dims[1]; k += 3) d[j * n->type.dims[1] + k] = 0.0f;
        }
        for (int mi = 0; mi < 4; mi++) {
            mj_compiled *c = mjt_compile(jit, g, mjt_modes[mi]);
            if (mjt_modes[mi].frozen) {
                cr_assert(mjt_ir_has(c, ".sparse"), "case %zu (%s): no sparse layer", ci, mjt_modes[mi].name);
                cr_assert_eq(mjt_ir_has(c, ".l1.meta"), cases[ci].l1, "case %zu (%s): a chain of two %s", ci,
                             mjt_modes[mi].name, cases[ci].l1 ? "expected" : "not allowed");
                cr_assert_eq(mjt_ir_has(c, ".l2.meta"), cases[ci].l2, "case %zu (%s): a chain of three %s", ci,
                             mjt_modes[mi].name, cases[ci].l2 ? "expected" : "not allowed");
            }
            for (size_t bi = 0; bi < sizeof batches / sizeof *batches; bi++) {
                mj_tensor *x = randn_input(g, batches[bi], &rng), *want[2] = {0}, *got[2] = {0};
                const mj_tensor *xs[1] = {x};
                int no = cases[ci].n_out;
                OK(mj_graph_run_n(g, 1, xs, no, want));
                OK(mj_compiled_run_n(c, 1, xs, no, got));
                for (int j = 0; j < no; j++) {
                    char what[96];
                    snprintf(what, sizeof what, "chain case %zu batch %lld output %d", ci, (long long)batches[bi], j);
                    if (mjt_modes[mi].numeric == MJ_NUMERIC_EXACT) {
                        check_result(got[j], want[j], mjt_modes[mi], what);
                    } else { /* sums reordered */
                        mj_compare cmp = mj_tensor_compare(got[j], want[j], MJ_RTOL_F32 * 20, MJ_ATOL_F32 * 20);
                        char desc[256];
                        mj_compare_describe(&cmp, got[j], want[j], desc, sizeof desc);
                        cr_assert(cmp.close, "%s (%s): not close: %s", what, mjt_modes[mi].name, desc);
                    }
                    mj_tensor_release(want[j]);
                    mj_tensor_release(got[j]);
                }
                mj_tensor_release(x);
            }
            mj_compiled_free(c);
        }
        mj_graph_free(g);
    }
}

/* Fewer batch items than threads, but a sequence of rows per item: the
 * sparse linear layers split their rows (whole chunks) between the pool's
 * threads, each in a scratch region of its own, a matmul its matrices (4
 * heads an item), softmax and layer_norm their rows, and the other ops
 * (add, permute, transpose) run on thread 0 (jit/lower.c,
 * jit/compiled_run.c). 200 rows an item: 4 chunks of 64 (7 of
 * 32 with AVX2), shared 1/1/2 by three threads, the last one partial. Same
 * bits at 1, 2 and 3 threads, and as the interpreter in exact mode; live,
 * the same graph with dense layers splitting their columns. */
static const char split_graph_text[] =
        "maskjit-ir 1\n%0 = input \"x\" : f32[B,200,200]\n"
        "%1 = param \"w1\" : f32[161,200]\n%2 = param \"b1\" : f32[161]\n%3 = param \"w2\" : f32[200,161]\n"
        "%4 = param \"w3\" : f32[96,200]\n%5 = param \"g\" : f32[200]\n%6 = param \"beta\" : f32[200]\n"
        "%7 = linear %0, %1, %2 : f32[B,200,161]\n%8 = relu %7 : f32[B,200,161]\n"
        "%9 = linear %8, %3 : f32[B,200,200]\n%10 = add %9, %0 : f32[B,200,200]\n"
        "%11 = layer_norm %10, %5, %6 {eps=1e-05} : f32[B,200,200]\n"
        "%12 = softmax %11 {dim=-1} : f32[B,200,200]\n%13 = linear %12, %4 : f32[B,200,96]\n"
        "%14 = reshape %10 : f32[B,200,4,50]\n%15 = permute %14 {perm=[0,2,1,3]} : f32[B,4,200,50]\n"
        "%16 = transpose %15 : f32[B,4,50,200]\n%17 = matmul %15, %16 : f32[B,4,200,200]\nreturn %13, %17\n";

/* that graph, its weights at density 0.2 */
static mj_graph *split_graph(mj_rng *rng) {
    mj_graph *g = NULL;
    cr_assert_eq(mj_graph_parse(split_graph_text, &g), MJ_OK, "%s", mj_last_error());
    bind_random_params(g, 0.2, rng);
    return g;
}

Test(jit, sparse_rows_split_over_threads_bit_identical, .timeout = 120) {
    mj_rng rng;
    mj_rng_seed(&rng, 53);
    mj_graph *g = split_graph(&rng);
    for (int mi = 0; mi < 4; mi++) {
        bool frozen = mjt_modes[mi].frozen;
        mj_compiled *c[3];
        for (int t = 0; t < 3; t++) c[t] = compile_threads(jit, g, mjt_modes[mi], t + 1);
        cr_assert_eq(mjt_ir_has(c[0], ".sparse"), frozen, "%s: sparse layers only when frozen", mjt_modes[mi].name);
        for (int64_t batch = 1; batch <= 2; batch++) {
            mj_tensor *x = randn_input(g, batch, &rng), *want[2], *got[3][2];
            const mj_tensor *xs[1] = {x};
            OK(mj_graph_run_n(g, 1, xs, 2, want));
            for (int t = 0; t < 3; t++) {
                OK(mj_compiled_run_n(c[t], 1, xs, 2, got[t]));
                /* frozen, 2 threads at batch 2 split the items; else
                 * columns (live: dense layers of 3 panels) */
                int want_split = t == 0 ? 0 : frozen && t == 1 && batch == 2 ? 1 : 2;
                cr_assert_eq(mj_compiled_last_split(c[t]), want_split, "%s batch %lld, %d threads: split %d",
                             mjt_modes[mi].name, (long long)batch, t + 1, mj_compiled_last_split(c[t]));
            }
            for (int j = 0; j < 2; j++) {
                char what[64];
                snprintf(what, sizeof what, "batch %lld, 1 thread, output %d", (long long)batch, j);
                check_result(got[0][j], want[j], mjt_modes[mi], what);
                for (int t = 1; t < 3; t++)
                    cr_assert(mj_tensor_equal(got[t][j], got[0][j]), "%s batch %lld output %d: %d threads differ from one",
                              mjt_modes[mi].name, (long long)batch, j, t + 1);
            }
            mj_tensor_release(x);
            for (int j = 0; j < 2; j++) {
                mj_tensor_release(want[j]);
                for (int t = 0; t < 3; t++) mj_tensor_release(got[t][j]);
            }
        }
        for (int t = 0; t < 3; t++) mj_compiled_free(c[t]);
    }
    mj_graph_free(g);
}

/* A matmul's tail in its store (jit/lower_plan.c): scores = q k^T / c +
 * row, as attention's scores with their mask, is one matmul writing the
 * add's value; the division and the add have no storage. Then the same bits
 * as the interpreter, in every mode, at 1 and 2 threads (the matrices are
 * claimed one at a time, each with its own row of the mask), with -inf and
 * -10000 in the mask and special values in q; and the test-only fault in
 * the division or the add still reaches their elements. */
static const char tail_text[] =
    "maskjit-ir 1\n%0 = input \"q\" : f32[B,3,20,8]\n%1 = input \"mask\" : f32[B,1,1,20]\n"
    "%2 = transpose %0 : f32[B,3,8,20]\n%3 = matmul %0, %2 : f32[B,3,20,20]\n"
    "%4 = const \"c\" : f32[1] = [0x1.8p+1]\n%5 = div %3, %4 : f32[B,3,20,20]\n"
    "%6 = add %1, %5 : f32[B,3,20,20]\n%7 = softmax %6 {dim=-1} : f32[B,3,20,20]\nreturn %7, %6\n";

static mj_graph *parsed(const char *text) {
    mj_graph *g = NULL;
    cr_assert_eq(mj_graph_parse(text, &g), MJ_OK, "%s", mj_last_error());
    return g;
}

static void tail_inputs(int64_t batch, bool special, mj_rng *rng, mj_tensor *x[2]) {
    OK(mj_tensor_randn(&x[0], 4, (int64_t[]){batch, 3, 20, 8}, rng));
    OK(mj_tensor_zeros(&x[1], 4, (int64_t[]){batch, 1, 1, 20}));
    float *m = mj_tensor_data_mut(x[1]), *q = mj_tensor_data_mut(x[0]);
    for (int64_t i = 0; i < batch * 20; i++) m[i] = i % 7 == 3 ? -INFINITY : i % 5 == 1 ? -10000.0f : 0.0f;
    if (special) {
        q[5] = NAN;
        q[200] = INFINITY;
        q[333] = 1e30f;
    }
}

Test(jit, matmul_tail_is_stored_by_the_matmul_bit_for_bit, .timeout = 120) {
    mj_rng rng = mjt_rng(61);
    mj_graph *g = parsed(tail_text);
    bool *inf = mj_graph_input_free(g);
    mj_body_plan p;
    OK(mj_body_plan_build(g, inf, false, 8, MJ_OP_COUNT, &p));
    cr_expect_eq(p.fused_by[5], 3, "the division joins the matmul");
    cr_expect_eq(p.fused_by[6], 3, "the add of the mask's row joins it");
    cr_expect_eq(p.tail_out[3], 6);
    cr_expect(!p.has_slot[3] && !p.has_slot[5], "no storage between");
    mj_body_plan_free(&p);
    free(inf);
    for (int mi = 0; mi < 4; mi++) {
        mj_compiled *c[2];
        for (int t = 0; t < 2; t++) c[t] = compile_threads(jit, g, mjt_modes[mi], t + 1);
        for (int64_t batch = 1; batch <= 3; batch += 2)
            for (int special = 0; special < 2; special++) {
                mj_tensor *x[2], *want[2], *got[2][2];
                tail_inputs(batch, special, &rng, x);
                OK(mj_graph_run_n(g, 2, (const mj_tensor *const *)x, 2, want));
                for (int t = 0; t < 2; t++) {
                    OK(mj_compiled_run_n(c[t], 2, (const mj_tensor *const *)x, 2, got[t]));
                    for (int j = 0; j < 2; j++) {
                        char what[96];
                        snprintf(what, sizeof what, "batch %lld%s, %d threads, output %d", (long long)batch,
                                 special ? " (special)" : "", t + 1, j);
                        if (special && mjt_modes[mi].numeric == MJ_NUMERIC_EXACT) {
                            const float *a = mj_tensor_data(got[t][j]), *b = mj_tensor_data(want[j]);
                            for (int64_t i = 0; i < mj_tensor_numel(want[j]); i++)
                                cr_assert(mjt_f32_bits(a[i]) == mjt_f32_bits(b[i]) || (isnan(a[i]) && isnan(b[i])),
                                          "%s (%s): element %lld is %a, want %a", what, mjt_modes[mi].name,
                                          (long long)i, (double)a[i], (double)b[i]);
                        } else if (!special) {
                            check_result(got[t][j], want[j], mjt_modes[mi], what);
                        }
                    }
                }
                for (int j = 0; j < 2; j++) MJT_RELEASE(x[j], want[j], got[0][j], got[1][j]);
            }
        for (int t = 0; t < 2; t++) mj_compiled_free(c[t]);
    }
    /* the fault of the division or the add lands on each element once */
    static const char *const ops[] = {"div", "add", "matmul"};
    for (int oi = 0; oi < 3; oi++) {
        mj_jit *fj;
        OK(mj_jit_new(&fj));
        OK(mj_jit_inject_fault(fj, ops[oi]));
        mj_compiled *c = compile_threads(fj, g, mjt_modes[0], 1);
        mj_tensor *x[2], *want[2], *got[2];
        tail_inputs(1, false, &rng, x);
        OK(mj_graph_run_n(g, 2, (const mj_tensor *const *)x, 2, want));
        OK(mj_compiled_run_n(c, 2, (const mj_tensor *const *)x, 2, got));
        const float *a = mj_tensor_data(got[1]), *b = mj_tensor_data(want[1]);
        double scale = oi == 2 ? 1.0 / 3.0 : 1.0; /* the matmul's +0.5 is divided by c */
        for (int64_t i = 0; i < mj_tensor_numel(got[1]); i++)
            if (isfinite(b[i]))
                cr_assert(fabs(a[i] - b[i] - 0.5 * scale) < 1e-3, "fault in %s: element %lld is %g, want %g + %g",
                          ops[oi], (long long)i, (double)a[i], (double)b[i], 0.5 * scale);
        for (int j = 0; j < 2; j++) MJT_RELEASE(x[j], want[j], got[j]);
        mj_compiled_free(c);
        mj_jit_free(fj);
    }
    mj_graph_free(g);
}

/* Permutes and transposes that only matmuls read are views: each matmul
 * reads its operand in the permute's source (a's rows and b's rows
 * strided, a transposed b copied per panel through register tiles), with no
 * copy in between (jit/lower_plan.c, plan_views). Heads of [B, seq, heads,
 * d] as attention makes them: Q and V by permute, K^T a transpose of a
 * permute (a view of a view); a permute also read by an add, and a matmul
 * whose a is transposed, keep their copies. Sequences of 37 and 20 and
 * head sizes of 32 and 24 put whole register tiles and edges in the
 * transposed panels on 8- and 16-wide targets. The same bits as the
 * interpreter in exact mode, within fast mode's bound, at 1 and 2 threads
 * and with AVX2 forced; and a fault on permute (a view keeps the code of
 * the faulted op) still lands on its value. */
static void views_text(char *t, size_t n, int seq, int heads, int d) {
    snprintf(t, n,
             "maskjit-ir 1\n%%0 = input \"x\" : f32[B,%d,%d,%d]\n%%1 = input \"y\" : f32[B,%d,%d,%d]\n"
             "%%2 = permute %%0 {perm=[0,2,1,3]} : f32[B,%d,%d,%d]\n"
             "%%3 = permute %%1 {perm=[0,2,1,3]} : f32[B,%d,%d,%d]\n"
             "%%4 = transpose %%3 : f32[B,%d,%d,%d]\n%%5 = matmul %%2, %%4 : f32[B,%d,%d,%d]\n"
             "%%6 = softmax %%5 {dim=-1} : f32[B,%d,%d,%d]\n%%7 = matmul %%6, %%3 : f32[B,%d,%d,%d]\n"
             "%%8 = permute %%7 {perm=[0,2,1,3]} : f32[B,%d,%d,%d]\n%%9 = transpose %%2 : f32[B,%d,%d,%d]\n"
             "%%10 = matmul %%9, %%2 : f32[B,%d,%d,%d]\n%%11 = add %%2, %%2 : f32[B,%d,%d,%d]\n"
             "%%12 = add %%8, %%0 : f32[B,%d,%d,%d]\nreturn %%12, %%10, %%11\n",
             seq, heads, d, seq, heads, d, heads, seq, d, heads, seq, d, heads, d, seq, heads, seq, seq, heads, seq,
             seq, heads, seq, d, seq, heads, d, heads, d, seq, heads, d, d, heads, seq, d, seq, heads, d);
}

Test(jit, permutes_read_by_matmuls_are_views_bit_for_bit, .timeout = 300) {
    mj_rng rng = mjt_rng(62);
    mj_jit *avx2 = mjt_avx2_jit();
    static const int geo[][3] = {{37, 2, 32}, {20, 3, 24}};
    for (int gi = 0; gi < 2; gi++) {
        char text[1024];
        views_text(text, sizeof text, geo[gi][0], geo[gi][1], geo[gi][2]);
        mj_graph *g = parsed(text);
        bool *inf = mj_graph_input_free(g);
        mj_body_plan p;
        OK(mj_body_plan_build(g, inf, false, 16, MJ_OP_COUNT, &p));
        cr_expect_eq(p.view_base[3], 1, "V's heads: a view of y");
        cr_expect_eq(p.view_base[4], 1, "K^T: a view of a view of y");
        static const int8_t kt[4] = {0, 2, 3, 1};
        cr_expect(memcmp(&p.view_dim[4 * MJ_MAX_RANK], kt, 4) == 0, "K^T walks y's dims 0, 2, 3, 1");
        cr_expect(!p.has_slot[3] && !p.has_slot[4], "views have no storage");
        cr_expect_eq(p.view_base[2], -1, "Q's heads are read by an add too: copied");
        cr_expect_eq(p.view_base[9], -1, "a transposed a: copied");
        cr_expect(p.fused_by[8] == 7 && p.tail_out[7] == 8 && !p.has_slot[7], "P V stores its rows as %%8 puts them");
        mj_body_plan_free(&p);
        OK(mj_body_plan_build(g, inf, false, 16, MJ_OP_PERMUTE, &p));
        cr_expect_eq(p.view_base[3], -1, "the faulted op keeps its code");
        mj_body_plan_free(&p);
        free(inf);
        for (int ji = 0; ji < 2; ji++)
            for (int mi = 0; mi < 4; mi++) {
                mj_compiled *c[2];
                for (int t = 0; t < 2; t++) c[t] = compile_threads(ji ? avx2 : jit, g, mjt_modes[mi], t + 1);
                for (int64_t batch = 1; batch <= 3; batch += 2) {
                    mj_tensor *x[2], *want[3], *got[3];
                    for (int k = 0; k < 2; k++)
                        OK(mj_tensor_randn(&x[k], 4, (int64_t[]){batch, geo[gi][0], geo[gi][1], geo[gi][2]}, &rng));
                    OK(mj_graph_run_n(g, 2, (const mj_tensor *const *)x, 3, want));
                    for (int t = 0; t < 2; t++) {
                        OK(mj_compiled_run_n(c[t], 2, (const mj_tensor *const *)x, 3, got));
                        for (int j = 0; j < 3; j++) {
                            char what[128];
                            snprintf(what, sizeof what, "seq %d, d %d, %s, batch %lld, %d threads, output %d",
                                     geo[gi][0], geo[gi][2], ji ? "AVX2" : "host", (long long)batch, t + 1, j);
                            check_result(got[j], want[j], mjt_modes[mi], what);
                            mj_tensor_release(got[j]);
                        }
                    }
                    MJT_RELEASE(x[0], x[1], want[0], want[1], want[2]);
                }
                for (int t = 0; t < 2; t++) mj_compiled_free(c[t]);
            }
        /* a fault on permute: + 0.5 on the heads of y that V's matmul reads */
        mj_jit *fj;
        OK(mj_jit_new(&fj));
        OK(mj_jit_inject_fault(fj, "permute"));
        mj_compiled *c = compile_threads(fj, g, mjt_modes[0], 1);
        mj_tensor *x[2], *want[3], *got[3];
        for (int k = 0; k < 2; k++)
            OK(mj_tensor_randn(&x[k], 4, (int64_t[]){1, geo[gi][0], geo[gi][1], geo[gi][2]}, &rng));
        OK(mj_graph_run_n(g, 2, (const mj_tensor *const *)x, 3, want));
        OK(mj_compiled_run_n(c, 2, (const mj_tensor *const *)x, 3, got));
        mj_compare cmp = mj_tensor_compare(got[0], want[0], 0, 0);
        cr_expect(cmp.max_abs > 0.4, "the permute's fault reached the output (max abs %g)", cmp.max_abs);
        MJT_RELEASE(x[0], x[1], want[0], want[1], want[2], got[0], got[1], got[2]);
        mj_compiled_free(c);
        mj_jit_free(fj);
        mj_graph_free(g);
    }
    mj_jit_free(avx2);
}

/* A matmul whose N is the batch ([B, 4] @ [4, B]) runs the scalar loops,
 * not the kernels: its transposed b is copied, and its store has no row
 * stride known at compile time. */
Test(jit, matmul_with_the_batch_as_n_compiles_in_every_mode) {
    mj_graph *g = parsed("maskjit-ir 1\n%0 = input \"x\" : f32[B,4]\n%1 = transpose %0 : f32[4,B]\n"
                         "%2 = matmul %0, %1 : f32[B,B]\nreturn %2\n");
    mj_rng rng = mjt_rng(63);
    for (int mi = 0; mi < 4; mi++) {
        mj_compiled *c = compile_threads(jit, g, mjt_modes[mi], 1);
        for (int64_t batch = 1; batch <= 5; batch += 4) {
            mj_tensor *x = NULL, *want = NULL, *got = NULL;
            OK(mj_tensor_randn(&x, 2, (int64_t[]){batch, 4}, &rng));
            OK(mj_graph_run(g, x, &want));
            OK(mj_compiled_run(c, x, &got));
            check_result(got, want, mjt_modes[mi], "[B, 4] @ [4, B]");
            MJT_RELEASE(x, want, got);
        }
        mj_compiled_free(c);
    }
    mj_graph_free(g);
}

/* Attention one matrix at a time (jit/lower_plan.c, plan_attention): the
 * scores' matmul (with its tail, or without), their softmax and the matmul
 * of the softmax run in one loop over the matrices. 20 rows a matrix: two
 * groups of 8 rows and 4 more per matrix, where the softmax over all rows
 * made groups across matrices. The same bits as the interpreter in exact
 * mode, within fast mode's bound, at 1 and 2 threads; and the test-only
 * faults of the softmax and the matmuls land once per element: the
 * reference is the graph with an add of 0.5 after each faulted op, which
 * the plan does not fuse. */
#define ATTN_HDR "maskjit-ir 1\n%0 = input \"q\" : f32[B,3,20,8]\n%1 = transpose %0 : f32[B,3,8,20]\n"
static const char *const attn_texts[][3] = {
    {ATTN_HDR "%2 = matmul %0, %1 : f32[B,3,20,20]\n%3 = const \"c\" : f32[1] = [0x1.8p+1]\n"
              "%4 = div %2, %3 : f32[B,3,20,20]\n%5 = softmax %4 {dim=-1} : f32[B,3,20,20]\n"
              "%6 = matmul %5, %0 : f32[B,3,20,8]\nreturn %6\n",
     /* the softmax's fault */
     ATTN_HDR "%2 = matmul %0, %1 : f32[B,3,20,20]\n%3 = const \"c\" : f32[1] = [0x1.8p+1]\n"
              "%4 = div %2, %3 : f32[B,3,20,20]\n%5 = softmax %4 {dim=-1} : f32[B,3,20,20]\n"
              "%6 = const \"h\" : f32[1] = [0x1p-1]\n%7 = add %5, %6 : f32[B,3,20,20]\n"
              "%8 = matmul %7, %0 : f32[B,3,20,8]\nreturn %8\n",
     /* the matmuls' faults: the first one's before its division */
     ATTN_HDR "%2 = matmul %0, %1 : f32[B,3,20,20]\n%3 = const \"h\" : f32[1] = [0x1p-1]\n"
              "%4 = add %2, %3 : f32[B,3,20,20]\n%5 = const \"c\" : f32[1] = [0x1.8p+1]\n"
              "%6 = div %4, %5 : f32[B,3,20,20]\n%7 = softmax %6 {dim=-1} : f32[B,3,20,20]\n"
              "%8 = matmul %7, %0 : f32[B,3,20,8]\n%9 = add %8, %3 : f32[B,3,20,8]\nreturn %9\n"},
    {ATTN_HDR "%2 = matmul %0, %1 : f32[B,3,20,20]\n%3 = softmax %2 {dim=-1} : f32[B,3,20,20]\n"
              "%4 = matmul %3, %0 : f32[B,3,20,8]\nreturn %4\n",
     ATTN_HDR "%2 = matmul %0, %1 : f32[B,3,20,20]\n%3 = softmax %2 {dim=-1} : f32[B,3,20,20]\n"
              "%4 = const \"h\" : f32[1] = [0x1p-1]\n%5 = add %3, %4 : f32[B,3,20,20]\n"
              "%6 = matmul %5, %0 : f32[B,3,20,8]\nreturn %6\n",
     ATTN_HDR "%2 = matmul %0, %1 : f32[B,3,20,20]\n%3 = const \"h\" : f32[1] = [0x1p-1]\n"
              "%4 = add %2, %3 : f32[B,3,20,20]\n%5 = softmax %4 {dim=-1} : f32[B,3,20,20]\n"
              "%6 = matmul %5, %0 : f32[B,3,20,8]\n%7 = add %6, %3 : f32[B,3,20,8]\nreturn %7\n"},
};

Test(jit, attention_runs_one_matrix_at_a_time_bit_for_bit, .timeout = 120) {
    mj_rng rng = mjt_rng(63);
    for (int k = 0; k < 2; k++) {
        mj_graph *g = parsed(attn_texts[k][0]);
        bool *inf = mj_graph_input_free(g);
        mj_body_plan p;
        OK(mj_body_plan_build(g, inf, false, 8, MJ_OP_COUNT, &p));
        int32_t a = 2, s = k == 0 ? 5 : 3, v = k == 0 ? 6 : 4;
        cr_expect_eq(p.attn_pv[a], v, "form %d: the second matmul runs in the first's loop", k);
        cr_expect(p.attn_in[s] == a && p.attn_in[v] == a, "form %d", k);
        mj_body_plan_free(&p);
        free(inf);
        for (int mi = 0; mi < 4; mi++) {
            mj_compiled *c[2];
            for (int t = 0; t < 2; t++) c[t] = compile_threads(jit, g, mjt_modes[mi], t + 1);
            for (int64_t batch = 1; batch <= 3; batch += 2) {
                mj_tensor *x = randn_input(g, batch, &rng), *want, *got[2];
                OK(mj_graph_run(g, x, &want));
                for (int t = 0; t < 2; t++) {
                    OK(mj_compiled_run(c[t], x, &got[t]));
                    char what[64];
                    snprintf(what, sizeof what, "form %d, batch %lld, %d threads", k, (long long)batch, t + 1);
                    check_result(got[t], want, mjt_modes[mi], what);
                }
                cr_assert(mj_tensor_equal(got[0], got[1]), "form %d (%s): 2 threads differ from one", k,
                          mjt_modes[mi].name);
                MJT_RELEASE(x, want, got[0], got[1]);
            }
            for (int t = 0; t < 2; t++) mj_compiled_free(c[t]);
        }
        static const char *const faults[] = {"softmax", "matmul"};
        for (int fi = 0; fi < 2; fi++) {
            mj_graph *ref = parsed(attn_texts[k][1 + fi]);
            mj_jit *fj;
            OK(mj_jit_new(&fj));
            OK(mj_jit_inject_fault(fj, faults[fi]));
            mj_compiled *c = compile_threads(fj, g, mjt_modes[0], 2);
            mj_tensor *x = randn_input(g, 3, &rng), *want, *got;
            OK(mj_graph_run(ref, x, &want));
            OK(mj_compiled_run(c, x, &got));
            char what[64];
            snprintf(what, sizeof what, "form %d, fault in %s", k, faults[fi]);
            check_result(got, want, mjt_modes[0], what);
            MJT_RELEASE(x, want, got);
            mj_compiled_free(c);
            mj_jit_free(fj);
            mj_graph_free(ref);
        }
        mj_graph_free(g);
    }
}

/* The test-only fault (jit/jit_test.h) adds 0.5 to each element of its op
 * once, also when the op's work is split between threads (matmul's
 * matrices, a dense layer's columns): after them all, on one thread. */
Test(jit, injected_fault_once_per_element_when_split, .timeout = 120) {
    mj_rng rng;
    mj_rng_seed(&rng, 59);
    mj_graph *g = split_graph(&rng);
    static const char *const ops[] = {"matmul", "linear"};
    for (int oi = 0; oi < 2; oi++) {
        mj_jit *fj;
        OK(mj_jit_new(&fj));
        OK(mj_jit_inject_fault(fj, ops[oi]));
        mj_compiled *c[2];
        for (int t = 0; t < 2; t++) c[t] = compile_threads(fj, g, mjt_modes[0], t + 1);
        mj_tensor *x = randn_input(g, 1, &rng), *got[2][2];
        const mj_tensor *xs[1] = {x};
        for (int t = 0; t < 2; t++) OK(mj_compiled_run_n(c[t], 1, xs, 2, got[t]));
        cr_assert_eq(mj_compiled_last_split(c[1]), 2, "%s: 2 threads in column mode", ops[oi]);
        for (int j = 0; j < 2; j++)
            cr_assert(mj_tensor_equal(got[1][j], got[0][j]), "fault in %s, output %d: 2 threads differ from one",
                      ops[oi], j);
        mj_tensor_release(x);
        for (int t = 0; t < 2; t++) {
            mj_tensor_release(got[t][0]);
            mj_tensor_release(got[t][1]);
            mj_compiled_free(c[t]);
        }
        mj_jit_free(fj);
    }
    mj_graph_free(g);
}
