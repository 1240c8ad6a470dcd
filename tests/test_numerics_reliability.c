/* Numerics reliability: what the passes and the JIT may and may not do with
 * zero weights, NaN and inf, checked against eager (docs/numerics.md).
 *
 * - A zero mask over a NaN or inf weight: every path (eager, traced, live,
 *   frozen, exact and fast; the small fused kernel, the dense kernel, the
 *   sparse kernel) gives NaN, as PyTorch does (0 * nan = nan).
 * - Exact mode's NaN rule: every result that is not NaN has eager's 32 bits
 *   (so -0 and +0 differ); a NaN result is a NaN, sign and payload not
 *   promised. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "maskjit.h"
#include "test_util.h"

static mj_jit *jit;

static void setup(void) { OK(mj_jit_new(&jit)); }
static void teardown(void) {
    mj_jit_free(jit);
    jit = NULL;
    mj_llvm_shutdown(); /* each test runs in its own process */
}

TestSuite(numerics_rel, .init = setup, .fini = teardown, .timeout = 300);

static float bits_f(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static uint32_t f_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Exact mode's promise: same shape, and each element either NaN in both or
 * the same 32 bits. Returns the first element that breaks it, -1 if none. */
static int64_t first_exact_mismatch(const mj_tensor *got, const mj_tensor *want) {
    cr_assert_eq(mj_tensor_rank(got), mj_tensor_rank(want));
    for (int d = 0; d < mj_tensor_rank(got); d++) cr_assert_eq(mj_tensor_dim(got, d), mj_tensor_dim(want, d));
    const float *a = mj_tensor_data(got), *b = mj_tensor_data(want);
    for (int64_t i = 0; i < mj_tensor_numel(got); i++) {
        if (isnan(a[i]) && isnan(b[i])) continue;
        if (f_bits(a[i]) != f_bits(b[i])) return i;
    }
    return -1;
}

/* ---- models ---------------------------------------------------------------- */

/* Overwrites the tensor named key (a parameter or buffer, PyTorch's name)
 * with data, through mj_tensor_data_mut (which bumps its version). */
static void set_tensor(mj_module *m, const char *key, const float *data) {
    mj_tensor_dict *p = NULL, *b = NULL;
    OK(mj_module_named_parameters(m, &p));
    OK(mj_module_named_buffers(m, &b));
    mj_tensor *t = mj_tensor_dict_get(p, key);
    if (!t) t = mj_tensor_dict_get(b, key);
    cr_assert_not_null(t, "no tensor '%s'", key);
    memcpy(mj_tensor_data_mut(t), data, (size_t)mj_tensor_numel(t) * sizeof(float));
    mj_tensor_dict_free(p);
    mj_tensor_dict_free(b);
}

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

/* The model a spec names, with FakeSparsity masks of all ones registered on
 * every weight (so "N.parametrizations.weight.0.mask" exists to be set). */
static mj_module *masked_model(const char *spec) {
    mj_rng rng;
    mj_rng_seed(&rng, 5);
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
    mj_graph *g = NULL;
    OK(mj_trace_module(m, ex, &g));
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
    mj_compiled *c = NULL;
    OK(mj_jit_compile(jit, g, &o, &c));
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
    cr_assert_eq(f_bits(mj_tensor_data(ys[P_EAGER])[1]), f_bits(0.25f));
    for (int p = 1; p < N_P; p++) {
        const float *y = mj_tensor_data(ys[p]);
        cr_assert(isnan(y[0]), "%s: y[0] = %g, want NaN (0 * nan)", p_names[p], y[0]);
        cr_assert_eq(f_bits(y[1]), f_bits(0.25f), "%s: y[1] = %g, want 0.25", p_names[p], y[1]);
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
    mj_rng rng;
    mj_rng_seed(&rng, 77);
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
            if (mask[e] == 0.0f) w[e] = bits_f(poison[planted++ % 3]);
        cr_assert_gt(planted, 0, "%s layer %d: no masked-off weight to poison", spec, l);
        int64_t row = out - 1; /* a row masked off entirely, over a NaN */
        for (int64_t k = 0; k < in; k++) mask[row * in + k] = 0.0f;
        w[row * in + in / 2] = bits_f(0xffc00000u);
        mj_tensor_release(wt);
        mj_tensor_release(mt);
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
                         f_bits(mj_tensor_data(ys[p])[bad < 0 ? 0 : bad]), ye[bad < 0 ? 0 : bad],
                         f_bits(ye[bad < 0 ? 0 : bad]));
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