/* Numerics reliability: what the passes and the JIT may and may not do with
 * zero weights, NaN and inf, checked against eager (docs/numerics.md).
 *
 * - A zero mask over a NaN or inf weight: every path (eager, traced, live,
 *   frozen, exact and fast; the small fused kernel, the dense kernel, the
 *   sparse kernel) gives NaN, as PyTorch does (0 * nan = nan).
 * - Exact mode's NaN rule: every result that is not NaN has eager's 32 bits
 *   (so -0 and +0 differ); a NaN result is a NaN, sign and payload not
 *   promised. `maskjit check` judges exact paths by that rule, and fails
 *   when any one path fails (its verdict unit-tested, and through the
 *   binary).
 * - Live mode follows a change to every parameter; cse on random graphs
 *   with sub keeps the interpreter's bits. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ir/ir.h"
#include "maskjit.h"
#include "cli/check_verdict.h"
#include "test_util.h"

MJT_JIT_FIXTURE

TestSuite(numerics_rel, .init = setup, .fini = teardown, .timeout = 300);

/* Exact mode's promise: same shape, and each element either NaN in both or
 * the same 32 bits. Returns the first element that breaks it, -1 if none. */
static int64_t first_exact_mismatch(const mj_tensor *got, const mj_tensor *want) {
    cr_assert_eq(mj_tensor_rank(got), mj_tensor_rank(want));
    for (int d = 0; d < mj_tensor_rank(got); d++) cr_assert_eq(mj_tensor_dim(got, d), mj_tensor_dim(want, d));
    const float *a = mj_tensor_data(got), *b = mj_tensor_data(want);
    for (int64_t i = 0; i < mj_tensor_numel(got); i++) {
        if (isnan(a[i]) && isnan(b[i])) continue;
        if (mjt_f32_bits(a[i]) != mjt_f32_bits(b[i])) return i;
    }
    return -1;
}

/* ---- models ---------------------------------------------------------------- */

/* The tensor named key (a parameter or buffer, PyTorch's name): a new
 * reference. */
static mj_tensor *tensor_of(mj_module *m, const char *key) {
    mj_tensor_dict *p = NULL, *b = NULL;
    OK(mj_module_named_parameters(m, &p));
    OK(mj_module_named_buffers(m, &b));
    mj_tensor *t = mj_tensor_dict_get(p, key);
    if (!t) t = mj_tensor_dict_get(b, key);
    cr_assert_not_null(t, "no tensor '%s'", key);
    mj_tensor_retain(t);
    mj_tensor_dict_free(p);
    mj_tensor_dict_free(b);
    return t;
}

/* Overwrites the tensor named key with data, through mj_tensor_data_mut
 * (which bumps its version). */
static void set_tensor(mj_module *m, const char *key, const float *data) {
    mj_tensor *t = tensor_of(m, key);
    memcpy(mj_tensor_data_mut(t), data, (size_t)mj_tensor_numel(t) * sizeof(float));
    mj_tensor_release(t);
}

/* The model a spec names, with FakeSparsity masks of all ones registered on
 * every weight (so "N.parametrizations.weight.0.mask" exists to be set). */
static mj_module *masked_model(const char *spec) {
    mj_rng rng = mjt_rng(5);
    mj_module *m = NULL;
    OK(mj_model_from_spec(spec, &rng, &m));
    OK(mj_model_apply_masks(m, NULL, 0.999999, &rng));
    /* the random masks of density ~1 become all ones */
    mj_tensor_dict *b = NULL;
    OK(mj_module_named_buffers(m, &b));
    for (int i = 0; i < mj_tensor_dict_size(b); i++) {
        mj_tensor *t = mj_tensor_dict_get(b, mj_tensor_dict_key(b, i));
        float *d = mj_tensor_data_mut(t);
        for (int64_t k = 0; k < mj_tensor_numel(t); k++) d[k] = 1.0f;
    }
    mj_tensor_dict_free(b);
    return m;
}

static mj_graph *trace(mj_module *m, int64_t in) {
    mj_tensor *ex = NULL;
    int64_t shape[2] = {3, in};
    OK(mj_tensor_ones(&ex, 2, shape));
    mj_graph *g = mjt_trace(m, ex);
    mj_tensor_release(ex);
    return g;
}

static mj_compiled *compile(const mj_graph *g, bool frozen, mj_numeric_mode numeric) {
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.frozen = frozen;
    o.numeric = numeric;
    o.threads = 1;
    o.use_cache = false; /* test the compiler, not a cached object */
    mj_compiled *c = mjt_compile_with(jit, g, &o);
    return c;
}

enum { P_EAGER, P_TRACED, P_LIVE, P_LIVE_FAST, P_FROZEN, P_FROZEN_FAST, N_P };
static const char *const p_names[N_P] = {"eager", "traced", "live exact", "live fast", "frozen exact",
                                         "frozen fast"};

/* Runs x through every path of m (traced and compiled now, with the
 * model's current values); ys[p] receives each output. */
static void run_all(mj_module *m, int64_t in, const mj_tensor *x, mj_tensor **ys) {
    OK(mj_module_forward(m, x, &ys[P_EAGER]));
    mj_graph *g = trace(m, in);
    OK(mj_graph_run(g, x, &ys[P_TRACED]));
    for (int p = P_LIVE; p < N_P; p++) {
        mj_compiled *c = compile(g, p >= P_FROZEN, (p == P_LIVE_FAST || p == P_FROZEN_FAST) ? MJ_NUMERIC_FAST
                                                                                            : MJ_NUMERIC_EXACT);
        OK(mj_compiled_run(c, x, &ys[p]));
        mj_compiled_free(c);
    }
    mj_graph_free(g);
}

static void release_all(mj_tensor **ys) {
    for (int p = 0; p < N_P; p++) mj_tensor_release(ys[p]);
}

/* ---- 1. a zero mask over a NaN or inf weight ------------------------------ */

/* The reported case: mlp:2,2:act=none, original weight [[nan, 1], [2, 3]],
 * an all-zero mask, bias [.5, .25], input [1, 2]. PyTorch gives
 * [nan, 0.25]: 0 * nan = nan. */
Test(numerics_rel, zero_mask_over_nan_weight_is_nan_on_every_path) {
    mj_module *m = masked_model("mlp:2,2:act=none");
    const float w[4] = {NAN, 1, 2, 3}, mask[4] = {0}, bias[2] = {0.5f, 0.25f};
    set_tensor(m, "0.parametrizations.weight.original", w);
    set_tensor(m, "0.parametrizations.weight.0.mask", mask);
    set_tensor(m, "0.bias", bias);
    mj_tensor *x = NULL;
    OK(mj_tensor_from_data(&x, 2, (int64_t[]){1, 2}, (const float[]){1, 2}));
    mj_tensor *ys[N_P] = {0};
    run_all(m, 2, x, ys);
    cr_assert(isnan(mj_tensor_data(ys[P_EAGER])[0]), "eager y[0] = %g", mj_tensor_data(ys[P_EAGER])[0]);
    cr_assert_eq(mjt_f32_bits(mj_tensor_data(ys[P_EAGER])[1]), mjt_f32_bits(0.25f));
    for (int p = 1; p < N_P; p++) {
        const float *y = mj_tensor_data(ys[p]);
        cr_assert(isnan(y[0]), "%s: y[0] = %g, want NaN (0 * nan)", p_names[p], y[0]);
        cr_assert_eq(mjt_f32_bits(y[1]), mjt_f32_bits(0.25f), "%s: y[1] = %g, want 0.25", p_names[p], y[1]);
    }
    release_all(ys);
    mj_tensor_release(x);
    mj_module_free(m);
}


/* Random masks of the given density on mlp spec's layers; then in each
 * layer, NaN, +inf and -inf planted in the original weight where the mask
 * is zero, and one row whose mask is all zero but whose original holds a
 * NaN. Every path must agree with eager: exact paths per exact mode's rule,
 * fast paths within tolerance with NaN in the same places. */
static void check_planted(const char *spec, int n_layers, const int64_t *widths, double density) {
    mj_rng rng = mjt_rng(77);
    mj_module *m = NULL;
    OK(mj_model_from_spec(spec, &rng, &m));
    OK(mj_model_apply_masks(m, NULL, density, &rng));
    for (int l = 0; l < n_layers; l++) {
        char wk[64], mk[64];
        snprintf(wk, sizeof wk, "%d.parametrizations.weight.original", 2 * l);
        snprintf(mk, sizeof mk, "%d.parametrizations.weight.0.mask", 2 * l);
        mj_tensor *wt = tensor_of(m, wk), *mt = tensor_of(m, mk);
        float *w = mj_tensor_data_mut(wt), *mask = mj_tensor_data_mut(mt);
        int64_t in = widths[l], out = widths[l + 1];
        static const uint32_t poison[3] = {0x7fc00000u, 0x7f800000u, 0xff800000u}; /* nan, inf, -inf */
        int planted = 0;
        for (int64_t e = (l * 5) % 7; e < in * out && planted < 6; e += in / 2 + 3)
            if (mask[e] == 0.0f) w[e] = mjt_bits_f32(poison[planted++ % 3]);
        cr_assert_gt(planted, 0, "%s layer %d: no masked-off weight to poison", spec, l);
        int64_t row = out - 1; /* a row masked off entirely, over a NaN */
        for (int64_t k = 0; k < in; k++) mask[row * in + k] = 0.0f;
        w[row * in + in / 2] = mjt_bits_f32(0xffc00000u);
        MJT_RELEASE(wt, mt);
    }
    mj_tensor *x = NULL;
    OK(mj_tensor_randn(&x, 2, (int64_t[]){5, widths[0]}, &rng));
    mj_tensor *ys[N_P] = {0};
    run_all(m, widths[0], x, ys);
    const float *ye = mj_tensor_data(ys[P_EAGER]);
    int64_t n = mj_tensor_numel(ys[P_EAGER]), nans = 0;
    for (int64_t i = 0; i < n; i++) nans += isnan(ye[i]);
    cr_assert_gt(nans, 0, "%s: eager has no NaN: the planted weights did not reach the output", spec);
    for (int p = 1; p < N_P; p++) {
        bool fast = p == P_LIVE_FAST || p == P_FROZEN_FAST;
        if (fast) {
            mj_compare c = mj_tensor_compare(ys[p], ys[P_EAGER], MJ_RTOL_F32, MJ_ATOL_F32);
            char buf[256];
            mj_compare_describe(&c, ys[p], ys[P_EAGER], buf, sizeof buf);
            cr_assert(c.close, "%s density %g, %s: %s", spec, density, p_names[p], buf);
        } else {
            int64_t bad = first_exact_mismatch(ys[p], ys[P_EAGER]);
            cr_assert_eq(bad, -1, "%s density %g, %s: element %lld is %g (%08x), eager %g (%08x)", spec, density,
                         p_names[p], (long long)bad, mj_tensor_data(ys[p])[bad < 0 ? 0 : bad],
                         mjt_f32_bits(mj_tensor_data(ys[p])[bad < 0 ? 0 : bad]), ye[bad < 0 ? 0 : bad],
                         mjt_f32_bits(ye[bad < 0 ? 0 : bad]));
        }
    }
    release_all(ys);
    mj_tensor_release(x);
    mj_module_free(m);
}

/* The kernels that exploit zero weights, each over NaN/inf under a zero
 * mask: the small fused straight-line kernel (lane by lane skipping), the
 * sparse CSR kernel (wide, density below 0.5), the dense wide kernel, and a
 * layer with many inputs and few outputs. */
Test(numerics_rel, zero_mask_over_nan_and_inf_in_every_kernel) {
    check_planted("mlp:8,12,4:act=relu", 2, (int64_t[]){8, 12, 4}, 0.3);
    check_planted("mlp:16,16,16:act=none", 2, (int64_t[]){16, 16, 16}, 0.1);
    check_planted("mlp:100,80:act=none", 1, (int64_t[]){100, 80}, 0.1);
    check_planted("mlp:128,96:act=tanh", 1, (int64_t[]){128, 96}, 0.4);
    check_planted("mlp:100,80:act=none", 1, (int64_t[]){100, 80}, 0.8);
    check_planted("mlp:100,3:act=none", 1, (int64_t[]){100, 3}, 0.1);
}
/* ---- live mode follows every parameter ---------------------------------- */

/* Changes every tensor of the model in turn (each layer's original weight
 * or plain weight, mask and bias) through mj_tensor_data_mut; after each
 * change the live compiled output must equal eager's again, and differ from
 * the output before the change (so the change was seen). */
static void follow_every_param(const char *spec, int64_t in, double density, bool fast) {
    mj_rng rng = mjt_rng(11);
    mj_module *m = NULL;
    OK(mj_model_from_spec(spec, &rng, &m));
    if (density < 1) OK(mj_model_apply_masks(m, NULL, density, &rng));
    mj_graph *g = trace(m, in);
    mj_compiled *c = compile(g, false, fast ? MJ_NUMERIC_FAST : MJ_NUMERIC_EXACT);
    mj_tensor *x = NULL;
    OK(mj_tensor_randn(&x, 2, (int64_t[]){3, in}, &rng));
    mj_tensor *before = NULL;
    OK(mj_compiled_run(c, x, &before));

    mj_tensor_dict *all[2] = {0};
    OK(mj_module_named_parameters(m, &all[0]));
    OK(mj_module_named_buffers(m, &all[1]));
    int changed = 0;
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < mj_tensor_dict_size(all[d]); i++) {
            const char *key = mj_tensor_dict_key(all[d], i);
            mj_tensor *t = mj_tensor_dict_get(all[d], key);
            float *v = mj_tensor_data_mut(t);
            bool is_mask = strstr(key, ".mask") != NULL;
            for (int64_t k = 0; k < mj_tensor_numel(t); k++) v[k] = is_mask ? 1.0f - v[k] : v[k] * 0.5f + 0.25f;
            mj_tensor *want = NULL, *got = NULL;
            OK(mj_module_forward(m, x, &want));
            OK(mj_compiled_run(c, x, &got));
            cr_assert(!mj_tensor_equal(want, before), "%s: changing %s changed nothing in eager", spec, key);
            if (fast) {
                mj_compare cmp = mj_tensor_compare(got, want, MJ_RTOL_F32, MJ_ATOL_F32);
                char buf[256];
                mj_compare_describe(&cmp, got, want, buf, sizeof buf);
                cr_assert(cmp.close, "%s (fast): after changing %s: %s", spec, key, buf);
            } else {
                int64_t bad = first_exact_mismatch(got, want);
                cr_assert_eq(bad, -1, "%s: after changing %s, element %lld is %g, eager %g", spec, key, (long long)bad,
                             mj_tensor_data(got)[bad < 0 ? 0 : bad], mj_tensor_data(want)[bad < 0 ? 0 : bad]);
            }
            MJT_RELEASE(got, before);
            before = want;
            changed++;
        }
    cr_assert_geq(changed, 3, "%s: only %d tensors", spec, changed);
    mj_tensor_dict_free(all[0]);
    mj_tensor_dict_free(all[1]);
    MJT_RELEASE(before, x);
    mj_compiled_free(c);
    mjt_free_traced(g, m);
}

Test(numerics_rel, live_follows_a_change_to_every_parameter) {
    follow_every_param("mlp:6,5,4,3:act=tanh", 6, 0.6, false); /* masked: original, mask, bias */
    follow_every_param("mlp:6,5,4,3:act=relu", 6, 1.0, false); /* plain weights */
    follow_every_param("mlp:70,80,3:act=gelu", 70, 0.6, false); /* the wide kernel's packing */
    follow_every_param("mlp:6,5,4,3:act=tanh", 6, 0.6, true);
}

/* ---- cse on random graphs with sub ------------------------------------- */

/* A random graph over input x [B, 4] and params p, q [4]: 14 ops from add,
 * sub, mul, tanh, relu on random earlier values, and about one in three a
 * copy of an earlier binary op with its operands swapped (sub(b, a) beside
 * sub(a, b)) or kept (a real duplicate). The last four values are the
 * outputs. */
static mj_graph *random_graph(mj_rng *rng, int *n_swapped_subs) {
    mj_graph *g = NULL;
    OK(mj_graph_new(&g));
    mj_type tx = {.rank = 2, .dims = {MJ_DIM_BATCH, 4}}, tp = {.rank = 1, .dims = {4}};
    int32_t ids[64], n = 0, binaries[64], nb = 0;
    OK(mj_graph_add_leaf(g, MJ_OP_INPUT, "x", &tx, NULL, &ids[n++]));
    for (int i = 0; i < 2; i++) {
        mj_tensor *t = NULL;
        OK(mj_tensor_randn(&t, 1, (int64_t[]){4}, rng));
        OK(mj_graph_add_leaf(g, MJ_OP_PARAM, i ? "q" : "p", &tp, t, &ids[n++]));
        mj_tensor_release(t);
    }
    static const mj_op ops[] = {MJ_OP_ADD, MJ_OP_SUB, MJ_OP_SUB, MJ_OP_MUL, MJ_OP_TANH, MJ_OP_RELU};
    for (int k = 0; k < 14; k++) {
        int32_t id;
        if (nb > 0 && mj_rng_next(rng) % 3 == 0) { /* a copy of an earlier binary op */
            const mj_node *o = &g->nodes[binaries[mj_rng_next(rng) % (uint64_t)nb]];
            bool swap = mj_rng_next(rng) % 4 != 0;
            int32_t a[2] = {o->operands[swap], o->operands[!swap]};
            mj_op op = o->op;
            *n_swapped_subs += swap && op == MJ_OP_SUB && a[0] != a[1];
            OK(mj_graph_add_op(g, op, 2, a, MJ_ACT_NONE, NULL, &id));
        } else {
            mj_op op = ops[mj_rng_next(rng) % (sizeof ops / sizeof ops[0])];
            int ar = mj_op_table[op].min_operands;
            int32_t a[2] = {ids[mj_rng_next(rng) % (uint64_t)n], ids[mj_rng_next(rng) % (uint64_t)n]};
            OK(mj_graph_add_op(g, op, ar, a, MJ_ACT_NONE, NULL, &id));
        }
        if (g->nodes[id].n_operands == 2) binaries[nb++] = id;
        ids[n++] = id;
    }
    for (int k = n - 4; k < n; k++) OK(mj_graph_add_output(g, ids[k]));
    return g;
}

/* cse must leave every output bitwise as the interpreter computed it
 * before, on random graphs where sub(a, b) and sub(b, a) sit side by side. */
Test(numerics_rel, cse_on_random_graphs_with_sub_keeps_the_outputs) {
    mj_rng rng = mjt_rng(0xc5e);
    int swapped = 0, merged = 0;
    for (int trial = 0; trial < 200; trial++) {
        mj_graph *g = random_graph(&rng, &swapped), *ref = NULL;
        OK(mj_graph_clone(g, &ref));
        OK(mj_graph_optimize(g, "cse"));
        merged += g->n_nodes < ref->n_nodes;
        mj_tensor *x = NULL;
        OK(mj_tensor_randn(&x, 2, (int64_t[]){3, 4}, &rng));
        mj_tensor *a[4] = {0}, *b[4] = {0};
        OK(mj_interp_run(ref, 1, (const mj_tensor *const[]){x}, 4, a));
        OK(mj_interp_run(g, 1, (const mj_tensor *const[]){x}, 4, b));
        for (int o = 0; o < 4; o++) {
            if (first_exact_mismatch(b[o], a[o]) >= 0) {
                char *before = mj_graph_to_string(ref), *after = mj_graph_to_string(g);
                cr_assert(false, "trial %d, output %d changed by cse:\n--- before\n%s--- after\n%s", trial, o,
                          before, after);
            }
            MJT_RELEASE(a[o], b[o]);
        }
        mj_tensor_release(x);
        mj_graph_free(ref);
        mj_graph_free(g);
    }
    /* the generator did make the cases that matter */
    cr_assert_gt(swapped, 50, "only %d swapped subs", swapped);
    cr_assert_gt(merged, 50, "cse merged something in only %d graphs", merged);
}

/* ---- 2. exact mode's NaN rule, and `maskjit check` ------------------------ */

static mj_tensor *vec(int64_t n, const uint32_t *bits) {
    float *f = malloc((size_t)n * sizeof *f);
    for (int64_t i = 0; i < n; i++) f[i] = mjt_bits_f32(bits[i]);
    mj_tensor *t = NULL;
    OK(mj_tensor_from_data(&t, 1, &n, f));
    free(f);
    return t;
}

Test(numerics_rel, exact_rule_ignores_nan_bits_only) {
    const uint32_t base[6] = {0x7fc00000u, 0x00000000u, 0x80000001u, 0x7f800000u, 0x3f800000u, 0xffc00000u};
    mj_tensor *a = vec(6, base);
    int64_t first;
    cr_assert(check_exact_equal(a, a, &first) && first == -1);
    /* NaN sign and payload: still equal */
    mj_tensor *b = vec(6, (const uint32_t[]){0xffc00000u, 0x00000000u, 0x80000001u, 0x7f800000u, 0x3f800000u,
                                             0x7fa00001u});
    cr_assert(check_exact_equal(b, a, &first), "NaN payload/sign must not matter (first %lld)", (long long)first);
    /* every other bit pattern must match: -0 vs +0, denormals, inf, NaN vs number */
    static const struct { int at; uint32_t bits; } diff[] = {
        {1, 0x80000000u}, /* -0 for +0 */
        {2, 0x80000002u}, /* the next denormal */
        {3, 0xff800000u}, /* -inf for inf */
        {3, 0x7fc00000u}, /* NaN for inf */
        {4, 0x3f800001u}, /* one ulp */
        {0, 0x3f800000u}, /* a number for NaN */
    };
    for (size_t i = 0; i < sizeof diff / sizeof diff[0]; i++) {
        uint32_t v[6];
        memcpy(v, base, sizeof v);
        v[diff[i].at] = diff[i].bits;
        mj_tensor *c = vec(6, v);
        cr_assert(!check_exact_equal(c, a, &first), "case %zu: %08x for %08x counted as equal", i, diff[i].bits,
                  base[diff[i].at]);
        cr_assert_eq(first, diff[i].at);
        cr_assert(!check_exact_equal(a, c, NULL), "case %zu reversed", i);
        mj_tensor_release(c);
    }
    mj_tensor *short_ = vec(5, base);
    cr_assert(!check_exact_equal(short_, a, &first) && first == -1, "shapes differ");
    MJT_RELEASE(short_, b, a);
}

/* The verdict: an exact path must be exact (close is not enough), any
 * failing path fails the whole check, wherever it sits. */
Test(numerics_rel, check_verdict_needs_every_path_and_exact_bits) {
    enum { N = 5 };
    const check_tally good_exact = {.ran = true, .must_be_exact = true, .exact = true, .close = true};
    const check_tally good_fast = {.ran = true, .must_be_exact = false, .exact = false, .close = true};
    check_tally t[N];
    bool ok[N];
    for (int p = 0; p < N; p++) t[p] = p == 3 ? good_fast : good_exact;
    cr_assert(check_verdict(t, N, ok));
    for (int p = 0; p < N; p++) cr_assert(ok[p], "path %d", p);

    /* within tolerance but not bit-identical: an exact path fails */
    check_tally near = good_exact;
    near.exact = false;
    cr_assert(!check_path_ok(&near), "an exact path judged by close");
    /* a fast path that is close passes even when not exact */
    cr_assert(check_path_ok(&good_fast));
    check_tally far = good_fast;
    far.close = false;
    cr_assert(!check_path_ok(&far));
    /* far from `expected` fails either kind */
    check_tally exp_bad = good_exact;
    exp_bad.has_expected = true;
    exp_bad.exp_close = false;
    cr_assert(!check_path_ok(&exp_bad));
    exp_bad.exp_close = true;
    cr_assert(check_path_ok(&exp_bad));
    /* a path that did not run (eager of a saved trace) is not judged */
    check_tally skipped = near;
    skipped.ran = false;
    cr_assert(check_path_ok(&skipped));

    /* one failing path at each position, alone: the check fails */
    for (int bad = 0; bad < N; bad++) {
        for (int p = 0; p < N; p++) t[p] = p == 3 ? good_fast : good_exact;
        if (bad == 3) t[bad] = far;
        else t[bad] = near;
        cr_assert(!check_verdict(t, N, ok), "only path %d fails, yet the verdict passes", bad);
        for (int p = 0; p < N; p++) cr_assert_eq(ok[p], p != bad, "path %d (failing: %d)", p, bad);
    }
}

/* +NaN inputs times -NaN weights (and the reverse) in the small fused, the
 * dense wide and the sparse kernels: every exact path gives NaN exactly
 * where eager does and eager's bits everywhere else; which NaN is not
 * asked. */
static void check_two_nans(const char *spec, int64_t in, int64_t out, double density) {
    mj_rng rng = mjt_rng(3);
    mj_module *m = NULL;
    OK(mj_model_from_spec(spec, &rng, &m));
    OK(mj_model_apply_masks(m, NULL, density, &rng));
    mj_tensor *wt = tensor_of(m, "0.parametrizations.weight.original"), *mt = tensor_of(m, "0.parametrizations.weight.0.mask");
    float *w = mj_tensor_data_mut(wt), *mask = mj_tensor_data_mut(mt);
    /* Columns 0 and 1 kept in every row (a NaN input over a zero weight is
     * the documented exception of frozen mode); even rows: -NaN at k = 0,
     * +NaN with a payload at k = 1. */
    for (int64_t j = 0; j < out; j++) {
        mask[j * in] = mask[j * in + 1] = 1.0f;
        if (j % 2) continue;
        w[j * in] = mjt_bits_f32(0xffc00000u);
        w[j * in + 1] = mjt_bits_f32(0x7fc00001u);
    }
    MJT_RELEASE(wt, mt);
    mj_tensor *x = NULL;
    OK(mj_tensor_randn(&x, 2, (int64_t[]){4, in}, &rng));
    float *xd = mj_tensor_data_mut(x);
    for (int64_t i = 0; i < 4; i += 2) { /* even rows: +NaN, then -NaN with a payload */
        xd[i * in] = mjt_bits_f32(0x7fc00000u);
        xd[i * in + 1] = mjt_bits_f32(0xffc00abcu);
    }
    mj_tensor *ys[N_P] = {0};
    run_all(m, in, x, ys);
    const float *ye = mj_tensor_data(ys[P_EAGER]);
    cr_assert(isnan(ye[0]) && !isnan(ye[1 * out + 1]), "%s: the planted NaNs did not reach eager's output", spec);
    for (int p = 1; p < N_P; p++) {
        if (p == P_LIVE_FAST || p == P_FROZEN_FAST) continue;
        int64_t bad = first_exact_mismatch(ys[p], ys[P_EAGER]);
        cr_assert_eq(bad, -1, "%s, %s: element %lld is %08x, eager %08x", spec, p_names[p], (long long)bad,
                     mjt_f32_bits(mj_tensor_data(ys[p])[bad < 0 ? 0 : bad]), mjt_f32_bits(ye[bad < 0 ? 0 : bad]));
    }
    release_all(ys);
    mj_tensor_release(x);
    mj_module_free(m);
}

Test(numerics_rel, two_nans_give_a_nan_on_every_exact_path) {
    check_two_nans("mlp:8,6:act=relu", 8, 6, 0.999);
    check_two_nans("mlp:100,80:act=none", 100, 80, 0.999);
    check_two_nans("mlp:100,80:act=sigmoid", 100, 80, 0.1);
    check_two_nans("mlp:100,3:act=none", 100, 3, 0.999);
}

/* ---- the maskjit binary ---- */


/* `maskjit ARGS` with stderr joined to stdout (test_util.h) */
#define run_cli(out, ...) mjt_maskjit(out, true, __VA_ARGS__)

static char *tmp_file(const char *name) {
    char *p = malloc(512);
    snprintf(p, 512, "/tmp/maskjit-numrel-%d-%s", (int)getpid(), name);
    return p;
}

/* The "paths" entry named path of check --json output. */
static json_t *path_of(json_t *root, const char *path) {
    json_t *paths = json_object_get(root, "paths");
    for (size_t i = 0; i < json_array_size(paths); i++) {
        json_t *o = json_array_get(paths, i);
        if (strcmp(json_string_value(json_object_get(o, "path")), path) == 0) return o;
    }
    cr_assert(false, "no path %s", path);
    return NULL;
}

static json_t *parse_json(const char *text) {
    json_error_t err;
    const char *brace = strchr(text, '{');
    cr_assert_not_null(brace, "no JSON in:\n%s", text);
    json_t *root = json_loads(brace, 0, &err);
    cr_assert_not_null(root, "not JSON (%s):\n%s", err.text, text);
    return root;
}

/* Only compiled-fast differs under --rtol 0 --atol 0 (it contracts to FMA):
 * the check must fail on that one middle path. */
Test(numerics_rel, check_fails_when_only_a_middle_path_fails) {
    char *text;
    int rc = run_cli(&text, "check mlp:16,32,8:act=gelu --rtol 0 --atol 0 --json");
    json_t *root = parse_json(text);
    /* first confirm the premise: fast differs, every other path is exact */
    static const char *const others[] = {"eager", "traced", "compiled-exact", "frozen"};
    for (int i = 0; i < 4; i++) {
        json_t *o = path_of(root, others[i]);
        cr_assert(json_is_true(json_object_get(o, "bit_identical")), "%s differs:\n%s", others[i], text);
        cr_assert(json_is_true(json_object_get(o, "ok")), "%s:\n%s", others[i], text);
    }
    json_t *fast = path_of(root, "compiled-fast");
    cr_assert(json_is_false(json_object_get(fast, "bit_identical")), "fast is bit-identical here:\n%s", text);
    cr_assert(json_is_false(json_object_get(fast, "ok")), "%s", text);
    cr_assert(json_is_false(json_object_get(root, "pass")), "one path fails, yet pass:\n%s", text);
    cr_assert_eq(rc, 1, "exit %d:\n%s", rc, text);
    json_decref(root);
    free(text);
    /* the table form says so too */
    rc = run_cli(&text, "check mlp:16,32,8:act=gelu --rtol 0 --atol 0");
    cr_assert_eq(rc, 1, "%s", text);
    cr_assert(strstr(text, "FAIL") && strstr(text, "MISMATCH"), "%s", text);
    free(text);
}

/* Writes dict entries (key, n floats) to a safetensors file. */
static void save_tensors(const char *path, int n, const char *const *keys, const int64_t *const *shapes,
                         const int *ranks, const float *const *data) {
    mj_tensor_dict *d = NULL;
    OK(mj_tensor_dict_new(&d));
    for (int i = 0; i < n; i++) {
        mj_tensor *t = NULL;
        OK(mj_tensor_from_data(&t, ranks[i], shapes[i], data[i]));
        OK(mj_tensor_dict_set(d, keys[i], t));
        mj_tensor_release(t);
    }
    OK(mj_safetensors_save(path, d));
    mj_tensor_dict_free(d);
}

/* `maskjit check` of the one-layer mlp:IN,OUT:act=none with the given
 * original weight and mask ([OUT, IN]), bias 0.5, 0.25, ... and the one
 * input x ([1, IN]; no random inputs). */
static int check_cli(int64_t in, int64_t out, const float *w, const float *mask, const float *x, char **text,
                     const char *extra) {
    char *wpath = tmp_file("w.safetensors"), *xpath = tmp_file("x.safetensors");
    float *bias = malloc((size_t)out * sizeof *bias);
    for (int64_t j = 0; j < out; j++) bias[j] = 0.5f / (float)(j + 1);
    const int64_t sw[2] = {out, in}, sb[1] = {out}, sx[2] = {1, in};
    save_tensors(wpath, 3,
                 (const char *const[]){"0.parametrizations.weight.original", "0.parametrizations.weight.0.mask",
                                       "0.bias"},
                 (const int64_t *const[]){sw, sw, sb}, (const int[]){2, 2, 1},
                 (const float *const[]){w, mask, bias});
    save_tensors(xpath, 1, (const char *const[]){"input"}, (const int64_t *const[]){sx}, (const int[]){2},
                 (const float *const[]){x});
    int rc = run_cli(text, "check mlp:%lld,%lld:act=none --weights %s --input %s --inputs 0 %s", (long long)in,
                     (long long)out, wpath, xpath, extra);
    unlink(wpath);
    unlink(xpath);
    MJT_FREE(wpath, xpath, bias);
    return rc;
}

/* The reported case through the CLI: mlp:2,2:act=none, original weight
 * [[nan, 1], [2, 3]], all-zero mask, input [1, 2]. Every path, frozen
 * included, gives NaN for 0 * nan, so check passes. */
Test(numerics_rel, check_passes_zero_mask_over_nan_weight) {
    char *text;
    const float w[4] = {NAN, 1, 2, 3}, mask[4] = {0}, x[2] = {1, 2};
    int rc = check_cli(2, 2, w, mask, x, &text, "");
    cr_assert_eq(rc, 0, "exit %d:\n%s", rc, text);
    cr_assert(strstr(text, "PASS"), "%s", text);
    free(text);
}

/* A +NaN input times a -NaN weight: which NaN comes out is up to the
 * operand order the code generator picks (measured on mlp:100,80: eager
 * ffc00000, the wide compiled kernels 7fc00000). Exact mode does not
 * promise NaN bits, so check passes, and still reports the paths whose
 * bytes differ. */
Test(numerics_rel, check_treats_any_nan_as_equal_for_exact_paths) {
    enum { IN = 100, OUT = 80 };
    float *w = malloc(IN * OUT * sizeof *w), *mask = malloc(IN * OUT * sizeof *mask), x[IN];
    for (int i = 0; i < IN * OUT; i++) {
        w[i] = (float)(i % 7) * 0.125f - 0.25f;
        mask[i] = 1.0f;
    }
    for (int j = 0; j < OUT; j++) w[j * IN] = mjt_bits_f32(0xffc00000u);
    for (int k = 0; k < IN; k++) x[k] = 1.0f;
    x[0] = mjt_bits_f32(0x7fc00000u);
    char *text;
    int rc = check_cli(IN, OUT, w, mask, x, &text, "--json");
    json_t *root = parse_json(text);
    int differ = 0;
    static const char *const exact_paths[] = {"traced", "compiled-exact", "frozen"};
    for (int i = 0; i < 3; i++) {
        json_t *o = path_of(root, exact_paths[i]);
        differ += json_is_false(json_object_get(o, "bit_identical"));
        cr_assert(json_is_true(json_object_get(o, "ok")), "%s:\n%s", exact_paths[i], text);
    }
    cr_assert(json_is_true(json_object_get(root, "pass")), "%s", text);
    cr_assert_eq(rc, 0, "exit %d:\n%s", rc, text);
    for (int i = 0; i < 3; i++)
        cr_assert(json_is_true(json_object_get(path_of(root, exact_paths[i]), "exact")), "%s:\n%s", exact_paths[i],
                  text);
    if (differ == 0) cr_log_warn("no exact path changed the NaN's bits here: the NaN rule went untested");
    json_decref(root);
    MJT_FREE(text, w, mask);
}

/* ---- 3. fast mode's tolerance (mj_graph_output_tolerance) ------------------ */

static mj_tensor *scaled(const mj_tensor *t, double f) {
    mj_tensor *r = NULL;
    OK(mj_tensor_clone(&r, t));
    float *p = mj_tensor_data_mut(r);
    for (int64_t i = 0; i < mj_tensor_numel(r); i++) p[i] = (float)(p[i] * f);
    return r;
}

/* A sum of K = 16384 terms (about 1 each, as after a softmax or a
 * positive activation): fast mode vectorises it (a reassociation), and its
 * correct result is further from the interpreter's than the old fixed
 * rtol 1.3e-6 / atol 1e-5 allow (that tolerance failed correct code); it
 * is within the bound that grows with K. Dropping 2% of the terms (a real
 * fault, e.g. a wrong mask) is still outside the bound. */
Test(numerics_rel, fast_tolerance_grows_with_the_sum_length) {
    const int64_t k = 16384;
    mj_graph *g = NULL;
    OK(mj_graph_parse("maskjit-ir 1\n%0 = input \"x\" : f32[B,16384]\n"
                      "%1 = sum %0 {dim=-1, keepdim=true} : f32[B,1]\nreturn %1\n",
                      &g));
    mj_compiled *c = compile(g, false, MJ_NUMERIC_FAST);
    mj_rng rng;
    mj_rng_seed(&rng, 11);
    int64_t shape[2] = {3, k};
    mj_tensor *x = NULL, *want = NULL, *got = NULL, *off = NULL;
    OK(mj_tensor_randn(&x, 2, shape, &rng));
    float *p = mj_tensor_data_mut(x);
    for (int64_t i = 0; i < 3 * k; i++) p[i] = 1.0f + 0.25f * p[i];
    OK(mj_graph_run(g, x, &want));
    OK(mj_compiled_run(c, x, &got));
    mj_tolerance t;
    OK(mj_graph_output_tolerance(g, 0, 3, want, &t));
    cr_assert_eq(t.sum_len, k);
    mj_compare old = mj_tensor_compare(got, want, MJ_RTOL_F32, MJ_ATOL_F32);
    mj_compare now = mj_tensor_compare(got, want, t.rtol, t.atol);
    cr_log_info("K %lld: max abs %.3g, rtol %.3g, atol %.3g", (long long)k, now.max_abs, t.rtol, t.atol);
    cr_assert(!old.close, "the old fixed tolerance should have failed fast mode here (max abs %g)", old.max_abs);
    cr_assert(now.close, "fast mode outside its bound: max abs %g, rtol %g, atol %g", now.max_abs, t.rtol, t.atol);
    /* the last 2% of the terms left out */
    for (int64_t r = 0; r < 3; r++)
        for (int64_t j = k - k / 50; j < k; j++) p[r * k + j] = 0;
    OK(mj_compiled_run(c, x, &off));
    mj_compare f = mj_tensor_compare(off, want, t.rtol, t.atol);
    cr_assert(!f.close, "a 2%% fault passed the bound (max abs %g)", f.max_abs);
    MJT_RELEASE(x, want, got, off);
    mj_compiled_free(c);
    mj_graph_free(g);
}

/* Small outputs: the old atol 1e-5 passed a result 5% off when every
 * output is about 1e-4; the bound scales with the output and fails it,
 * while fast mode's own result still passes. */
Test(numerics_rel, fast_tolerance_scales_with_the_output) {
    mj_module *m = masked_model("mlp:16,8:act=none:bias=0");
    mj_graph *g = trace(m, 16);
    mj_compiled *c = compile(g, false, MJ_NUMERIC_FAST);
    mj_rng rng;
    mj_rng_seed(&rng, 12);
    int64_t shape[2] = {5, 16};
    mj_tensor *x0 = NULL, *want = NULL, *got = NULL;
    OK(mj_tensor_randn(&x0, 2, shape, &rng));
    mj_tensor *x = scaled(x0, 1e-4);
    OK(mj_graph_run(g, x, &want));
    OK(mj_compiled_run(c, x, &got));
    mj_tolerance t;
    OK(mj_graph_output_tolerance(g, 0, 5, want, &t));
    cr_assert(t.scale > 0 && t.scale < 1e-3, "mean |y| %g", t.scale);
    cr_assert(mj_tensor_compare(got, want, t.rtol, t.atol).close);
    mj_tensor *wrong = scaled(want, 1.05);
    cr_assert(mj_tensor_compare(wrong, want, MJ_RTOL_F32, MJ_ATOL_F32).close, "the old fixed tolerance passes it");
    cr_assert(!mj_tensor_compare(wrong, want, t.rtol, t.atol).close, "5%% off passed the bound");
    MJT_RELEASE(x0, x, wrong, want, got);
    mj_compiled_free(c);
    mjt_free_traced(g, m);
}
