/* Suite "cnn_jit": pruned CNNs compiled (jit/lower_cnn.c) against the eager
 * modules: every conv geometry and the models of test_cnn_models.h, exact
 * mode bit for bit (live and frozen) and fast mode within tolerance, at
 * batches 1, 3 and 17; non-finite values under zero masks. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "jit/jit_test.h"
#include "maskjit.h"
#include "test_cnn_models.h"
#include "test_util.h"

MJT_JIT_FIXTURE
TestSuite(cnn_jit, .init = setup, .fini = teardown, .timeout = 300);

/* The compiled graph of m (traced on a [2, chw] input) in mode md against
 * eager at batches 1, 3 and 17: bitwise in exact mode, within MJ_RTOL_F32 /
 * MJ_ATOL_F32 in fast mode. */
static void check_compiled(mj_module *m, const int64_t *chw, mjt_mode md, mj_rng *rng, const char *what) {
    mj_tensor *x0 = mjc_randn(4, (int64_t[]){2, chw[0], chw[1], chw[2]}, rng);
    mj_graph *g = mjt_trace(m, x0);
    mj_compiled *c = mjt_compile(jit, g, md);
    for (int bi = 0; bi < 3; bi++) {
        int64_t batch = (int64_t[]){1, 3, 17}[bi];
        mj_tensor *x = mjc_randn(4, (int64_t[]){batch, chw[0], chw[1], chw[2]}, rng);
        mj_tensor *want = mjt_forward(m, x), *got = mjt_run(c, x);
        if (md.numeric == MJ_NUMERIC_EXACT)
            cr_expect(mj_tensor_equal(got, want), "%s (%s): differs from eager at batch %lld", what, md.name,
                      (long long)batch);
        else
            MJT_EXPECT_CLOSE(got, want, MJ_RTOL_F32, MJ_ATOL_F32, "%s (%s) at batch %lld", what, md.name,
                             (long long)batch);
        MJT_RELEASE(x, want, got);
    }
    mj_compiled_free(c);
    mj_graph_free(g);
    mj_tensor_release(x0);
}

static void every_geometry(mjt_mode md) {
    mj_rng rng = mjt_rng(31);
    int cases = 0;
    for (int gi = 0; gi < MJC_N_GEOMETRIES; gi++) {
        mjc_geometry geo = mjc_geometry_at(gi);
        mj_module *m = mjc_conv_module(&geo, &rng);
        if (!m) continue;
        char what[128];
        mjc_geometry_str(&geo, what, sizeof what);
        check_compiled(m, (int64_t[]){MJC_GEO_C, MJC_GEO_H, MJC_GEO_W}, md, &rng, what);
        mj_module_free(m);
        cases++;
    }
    cr_expect_geq(cases, 40);
}

Test(cnn_jit, every_conv_geometry_exact_live) { every_geometry(mjt_modes[0]); }
Test(cnn_jit, every_conv_geometry_exact_frozen) { every_geometry(mjt_modes[1]); }
Test(cnn_jit, every_conv_geometry_fast_live) { every_geometry(mjt_modes[2]); }
Test(cnn_jit, every_conv_geometry_fast_frozen) { every_geometry(mjt_modes[3]); }

Test(cnn_jit, small_cnn_and_mobilenet_block_in_every_mode) {
    mj_rng rng = mjt_rng(32);
    mj_module *cnn = mjc_small_cnn(&rng), *mb = mjc_mobilenet_block(&rng);
    for (int k = 0; k < 4; k++) {
        check_compiled(cnn, (int64_t[]){3, 13, 11}, mjt_modes[k], &rng, "small CNN");
        check_compiled(mb, (int64_t[]){8, 9, 7}, mjt_modes[k], &rng, "MobileNet block");
    }
    mj_module_free(cnn);
    mj_module_free(mb);
}

/* Lines of text that define a function whose name has both parts. */
static int defined_functions(const char *text, const char *a, const char *b) {
    int n = 0;
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        const char *end = strchr(l, '\n');
        size_t len = end ? (size_t)(end - l) : strlen(l);
        char line[512];
        if (len >= sizeof line) len = sizeof line - 1;
        memcpy(line, l, len);
        line[len] = '\0';
        n += !strncmp(line, "define ", 7) && strstr(line, a) && strstr(line, b);
    }
    return n;
}

/* Each CNN op is a function of its own, called from the body: one
 * function for a whole network made LLVM's code generation grow faster
 * than the code (frozen EfficientNet-B0 compiled in 9.5 s, 3.7 s so). The
 * small CNN has two convs (their batch norms and activations in their
 * stores), a max pool and an average pool; live and frozen, bit for bit
 * eager (small_cnn_and_mobilenet_block_in_every_mode). */
Test(cnn_jit, every_cnn_op_is_a_function_of_its_own) {
    mj_rng rng = mjt_rng(33);
    mj_module *cnn = mjc_small_cnn(&rng);
    mj_tensor *x = mjc_randn(4, (int64_t[]){2, 3, 13, 11}, &rng);
    mj_graph *g = mjt_trace(cnn, x);
    for (int k = 0; k < 2; k++) {
        mj_compiled *c = mjt_compile(jit, g, mjt_modes[k]);
        char *ir = mjt_dump(c, "ir");
        int n = defined_functions(ir, ".cnn", ".op(");
        cr_expect_geq(n, 4, "%s: %d CNN op functions, expected one per conv and pool", mjt_modes[k].name, n);
        free(ir);
        mj_compiled_free(c);
    }
    mj_tensor_release(x);
    mjt_free_traced(g, cnn);
}

/* NaN and inf at a few elements (those the tensor has) */
static void non_finite_input(mj_tensor *x) {
    float *xd = mj_tensor_data_mut(x);
    const int64_t at[4] = {5, 70, 200, 333};
    const float v[4] = {NAN, INFINITY, -INFINITY, NAN};
    for (int i = 0; i < 4; i++)
        if (at[i] < mj_tensor_numel(x)) xd[at[i]] = v[i];
}

static void non_finite_conv(int stride, mj_rng *rng) {
    mjc_geometry geo = {.stride = stride, .pad = 1, .dil = 1, .groups = 1, .k = 3};
    mj_module *m = mjc_conv_module(&geo, rng);
    int64_t OH = (MJC_GEO_H - 1) / stride + 1, OW = (MJC_GEO_W - 1) / stride + 1;
    mj_tensor *x = mjc_randn(4, (int64_t[]){3, MJC_GEO_C, MJC_GEO_H, MJC_GEO_W}, rng);
    non_finite_input(x);
    for (int frozen_nan_weight = 0; frozen_nan_weight < 2; frozen_nan_weight++) {
        if (frozen_nan_weight) { /* the original under a zero of the mask (channel 1 is all zero) */
            mj_tensor_dict *ps = NULL;
            OK(mj_module_named_parameters(m, &ps));
            mj_tensor *orig = mj_tensor_dict_get(ps, "parametrizations.weight.original");
            cr_assert_not_null(orig);
            mj_tensor_data_mut(orig)[1 * MJC_GEO_C * 9 + 4] = NAN;
            mj_tensor_data_mut(orig)[1 * MJC_GEO_C * 9 + 0] = INFINITY;
            mj_tensor_dict_free(ps);
        }
        mj_tensor *want = mjt_forward(m, x);
        mj_graph *g = mjt_trace(m, x);
        for (int k = 0; k < 2; k++) {
            mj_tensor *got = mjt_compile_run(jit, g, mjt_modes[k], x);
            const float *a = mj_tensor_data(got), *b = mj_tensor_data(want);
            int64_t nan_b = 0;
            for (int64_t i = 0; i < mj_tensor_numel(want); i++) {
                nan_b += isnan(b[i]);
                if (k == 0 || isfinite(b[i]))
                    cr_expect(memcmp(&a[i], &b[i], 4) == 0, "stride %d, %s, NaN weight %d: element %lld: %g vs eager %g",
                              stride, mjt_modes[k].name, frozen_nan_weight, (long long)i, (double)a[i], (double)b[i]);
            }
            cr_expect_gt(nan_b, 0);
            if (frozen_nan_weight) /* the whole of output channel 1, padding included */
                for (int64_t n = 0; n < 3; n++)
                    for (int64_t i = 0; i < OH * OW; i++)
                        cr_expect(isnan(a[(n * MJC_GEO_O + 1) * OH * OW + i]), "stride %d, %s: element %lld",
                                  stride, mjt_modes[k].name, (long long)i);
            mj_tensor_release(got);
        }
        mj_graph_free(g);
        mj_tensor_release(want);
    }
    mj_tensor_release(x);
    mj_module_free(m);
}

/* Pools with ceil_mode (windows that hang over the input's end, clipped),
 * from their text form, in every mode against the interpreter: exact and
 * frozen bit for bit, fast within tolerance; NaN and inf inputs too. */
Test(cnn_jit, pools_with_ceil_mode_in_every_mode) {
    const char *text = "maskjit-ir 1\n"
                       "%0 = input \"x\" : f32[B,3,12,13]\n"
                       "%1 = max_pool2d %0 {kernel=[3,3], stride=[2,2], padding=[0,0], ceil_mode=true} : f32[B,3,6,6]\n"
                       "%2 = avg_pool2d %1 {kernel=[3,3], stride=[2,2], padding=[1,1], count_include_pad=false, "
                       "ceil_mode=true} : f32[B,3,4,4]\n"
                       "%3 = avg_pool2d %2 {kernel=[2,2], stride=[2,2], padding=[1,1], count_include_pad=true, "
                       "ceil_mode=true} : f32[B,3,3,3]\n"
                       "return %3, %1\n";
    mj_graph *g = NULL;
    OK(mj_graph_parse(text, &g));
    char *printed = mj_graph_to_string(g);
    cr_expect_str_eq(printed, text, "ceil_mode is printed where it is true");
    free(printed);
    mj_rng rng = mjt_rng(34);
    for (int k = 0; k < 4; k++) {
        mj_compiled *c = mjt_compile(jit, g, mjt_modes[k]);
        for (int64_t batch = 1; batch <= 3; batch += 2) {
            mj_tensor *x = mjc_randn(4, (int64_t[]){batch, 3, 12, 13}, &rng);
            if (batch == 3) non_finite_input(x);
            mj_tensor *want[2] = {0}, *got[2] = {0};
            OK(mj_graph_run_n(g, 1, (const mj_tensor *const *)&x, 2, want));
            OK(mj_compiled_run_n(c, 1, (const mj_tensor *const *)&x, 2, got));
            for (int o = 0; o < 2; o++) {
                if (mjt_modes[k].numeric == MJ_NUMERIC_EXACT || o == 1)
                    cr_expect(mj_tensor_equal(got[o], want[o]), "output %d (%s, batch %lld)", o, mjt_modes[k].name,
                              (long long)batch);
                else if (batch == 1)
                    MJT_EXPECT_CLOSE(got[o], want[o], MJ_RTOL_F32, MJ_ATOL_F32, "output %d (%s)", o, mjt_modes[k].name);
                MJT_RELEASE(want[o], got[o]);
            }
            mj_tensor_release(x);
        }
        mj_compiled_free(c);
    }
    mj_graph_free(g);
}

/* MaxPool2d and AvgPool2d modules with ceil_mode: traced with the
 * attribute, replayed and compiled in every mode as eager computes them
 * (bit for bit, but fast mode's average, whose division may become a
 * reciprocal estimate where the target has one, as AVX-512's). */
Test(cnn_jit, pool_modules_with_ceil_mode_trace_and_compile) {
    mj_rng rng = mjt_rng(35);
    for (int max = 0; max < 2; max++) {
        mj_pool2d_params p = {.max = max, .kernel = {3, 2}, .stride = {2, 2}, .padding = {1, 0}, .ceil_mode = true,
                              .count_include_pad = true};
        mj_module *m = NULL;
        OK(mj_pool2d_new(&m, &p));
        mj_tensor *x = mjc_randn(4, (int64_t[]){2, 3, 6, 7}, &rng), *direct = NULL;
        OK(mj_pool2d(&direct, x, &p));
        mj_tensor *want = mjt_forward(m, x);
        cr_expect(mj_tensor_equal(want, direct) && mj_tensor_dim(want, 2) == 4 && mj_tensor_dim(want, 3) == 4,
                  "%s module: %lldx%lld", max ? "max" : "avg", (long long)mj_tensor_dim(want, 2),
                  (long long)mj_tensor_dim(want, 3));
        mj_graph *g = mjt_trace(m, x);
        char *text = mj_graph_to_string(g);
        cr_expect(strstr(text, "ceil_mode=true"), "%s", text);
        free(text);
        for (int k = 0; k < 4; k++) {
            mj_tensor *got = mjt_compile_run(jit, g, mjt_modes[k], x);
            if (max || mjt_modes[k].numeric == MJ_NUMERIC_EXACT)
                cr_expect(mj_tensor_equal(got, want), "%s (%s)", max ? "max" : "avg", mjt_modes[k].name);
            else
                MJT_EXPECT_CLOSE(got, want, MJ_RTOL_F32, MJ_ATOL_F32, "avg (%s)", mjt_modes[k].name);
            mj_tensor_release(got);
        }
        MJT_RELEASE(x, direct, want);
        mjt_free_traced(g, m);
    }
}

/* Eager's NaNs: NaN and inf inputs meet zero (masked) weights, and an
 * original NaN or inf under a zero mask makes a NaN weight, which reaches
 * the padded positions too. Exact live is bitwise eager; exact frozen may
 * skip zero weights (the tap table; docs/numerics.md: exact for finite
 * inputs), so it agrees wherever eager is finite, and keeps every NaN that
 * a NaN weight makes. */
Test(cnn_jit, non_finite_values_under_zero_masks) {
    mj_rng rng = mjt_rng(33);
    for (int stride = 1; stride <= 2; stride++) /* the register tile, then with strided loads */
        non_finite_conv(stride, &rng);
    mj_module *pool = NULL;
    OK(mj_max_pool2d_new(&pool, (int64_t[]){3, 3}, (int64_t[]){2, 2}, (int64_t[]){1, 1}));
    mj_tensor *x = mjc_randn(4, (int64_t[]){3, MJC_GEO_C, MJC_GEO_H, MJC_GEO_W}, &rng);
    non_finite_input(x);
    /* max pool: NaN wins, the first one of the window (eager stops there) */
    mj_graph *g = mjt_trace(pool, x);
    mj_tensor *want = mjt_forward(pool, x);
    for (int k = 0; k < 4; k++) {
        mj_tensor *got = mjt_compile_run(jit, g, mjt_modes[k], x);
        cr_expect(mj_tensor_equal(got, want), "max_pool2d (%s)", mjt_modes[k].name);
        mj_tensor_release(got);
    }
    mj_tensor_release(want);
    mj_tensor_release(x);
    mjt_free_traced(g, pool);
}

/* Frozen, a conv takes its taps from a table of its nonzero weights when
 * that is cheaper than the dense tile (at 40% and 2% density here, stride
 * 1 and 2: jit/lower_conv_sparse.c); every live one reads the weight.
 * Each way is bit for bit eager. */
Test(cnn_jit, frozen_conv_uses_a_tap_table_when_sparse) {
    mj_rng rng = mjt_rng(34);
    for (int kind = 0; kind < 4; kind++) { /* stride 1, 2, 1, 2; 40%, 40%, 2%, 2% */
        mjc_geometry geo = {.stride = kind % 2 ? 2 : 1, .pad = 1, .dil = 1, .groups = 1, .k = 3};
        mj_module *m = mjc_conv_module(&geo, &rng);
        if (kind >= 2) { /* a sparser mask: 2 taps per output channel */
            mj_tensor *mask = NULL;
            OK(mj_tensor_zeros(&mask, 4, (int64_t[]){MJC_GEO_O, MJC_GEO_C, 3, 3}));
            for (int64_t o = 0; o < MJC_GEO_O; o++) {
                mj_tensor_data_mut(mask)[o * MJC_GEO_C * 9 + (o * 5) % 36] = 1.0f;
                mj_tensor_data_mut(mask)[o * MJC_GEO_C * 9 + (o * 11 + 3) % 36] = 1.0f;
            }
            mj_tensor_dict *bufs = NULL;
            OK(mj_module_named_buffers(m, &bufs));
            mj_tensor *cur = mj_tensor_dict_get(bufs, "parametrizations.weight.0.mask");
            cr_assert_not_null(cur);
            memcpy(mj_tensor_data_mut(cur), mj_tensor_data(mask), sizeof(float) * MJC_GEO_O * MJC_GEO_C * 9);
            mj_tensor_dict_free(bufs);
            mj_tensor_release(mask);
        }
        mj_tensor *x = mjc_randn(4, (int64_t[]){3, MJC_GEO_C, MJC_GEO_H, MJC_GEO_W}, &rng);
        mj_tensor *want = mjt_forward(m, x);
        mj_graph *g = mjt_trace(m, x);
        for (int k = 0; k < 2; k++) {
            mj_compiled *c = mjt_compile(jit, g, mjt_modes[k]);
            bool frozen = mjt_modes[k].frozen;
            cr_expect_eq(mjt_ir_has(c, ".staps.start"), frozen, "%s, kind %d", mjt_modes[k].name, kind);
            mj_tensor *got = mjt_run(c, x);
            cr_expect(mj_tensor_equal(got, want), "%s, kind %d", mjt_modes[k].name, kind);
            mj_tensor_release(got);
            mj_compiled_free(c);
        }
        MJT_RELEASE(x, want);
        mjt_free_traced(g, m);
    }
}

/* ---- the frozen sparse conv (jit/lower_conv_sparse.c) ------------------- */

typedef struct sconv_case {
    int64_t C, O, H, W, k, sh, sw, pad, dil, groups;
    bool bias;
    bool tile; /* frozen takes the dense tile even at 5%: its copies cost more than its taps save */
} sconv_case;

/* A conv of case k whose mask keeps about `density` of the weights, output
 * channel 1 none, against eager at batches 1 and 3, frozen exact bit for
 * bit (and frozen fast within tolerance). Returns whether the frozen exact
 * compile took the sparse tap table. */
static mj_module *masked_sconv(const sconv_case *k, double density, mj_rng *rng) {
    mj_conv2d_params p;
    mj_conv2d_params_init(&p);
    p.stride[0] = k->sh;
    p.stride[1] = k->sw;
    p.padding[0] = p.padding[1] = k->pad;
    p.dilation[0] = p.dilation[1] = k->dil;
    p.groups = k->groups;
    mj_module *m = NULL;
    OK(mj_conv2d_new(&m, k->C, k->O, (int64_t[]){k->k, k->k}, &p, k->bias, rng));
    int64_t per = k->C / k->groups * k->k * k->k;
    mj_tensor *mask = NULL;
    OK(mj_tensor_zeros(&mask, 4, (int64_t[]){k->O, k->C / k->groups, k->k, k->k}));
    for (int64_t i = 0; i < k->O * per; i++)
        mj_tensor_data_mut(mask)[i] = i / per != 1 && mj_rng_uniform(rng) < density ? 1.0f : 0.0f;
    mj_parametrization *fs = NULL;
    OK(mj_fake_sparsity_new(&fs, mask));
    OK(mj_register_parametrization(m, "weight", fs));
    mj_tensor_release(mask);
    return m;
}

static bool check_sparse_conv(mj_jit *j, const sconv_case *k, double density, mj_rng *rng) {
    mj_module *m = masked_sconv(k, density, rng);
    mj_tensor *x0 = mjc_randn(4, (int64_t[]){2, k->C, k->H, k->W}, rng);
    mj_graph *g = NULL;
    OK(mj_trace_module(m, x0, &g));
    bool sparse = false;
    char what[160];
    snprintf(what, sizeof what, "%lld->%lld %lldx%lld k%lld stride %lldx%lld pad %lld dil %lld groups %lld%s, density %g",
             (long long)k->C, (long long)k->O, (long long)k->H, (long long)k->W, (long long)k->k, (long long)k->sh,
             (long long)k->sw, (long long)k->pad, (long long)k->dil, (long long)k->groups, k->bias ? " bias" : "",
             density);
    for (int md = 1; md < 4; md += 2) { /* exact frozen, fast frozen */
        mj_compiled *c = mjt_compile(j, g, mjt_modes[md]);
        if (md == 1) sparse = mjt_ir_has(c, ".staps.start");
        if (j != jit) { /* forced AVX2: 8-wide code only (with stride > 1 along W, the copy into phase
                          * rows loads stride x 8 floats at once: LLVM splits that load) */
            if (k->sw == 1) cr_expect(!mjt_ir_has(c, "<16 x float>"), "%s: 16-wide vectors for an 8-wide target", what);
            char *asm_text = mjt_dump(c, "asm");
            cr_expect(strstr(asm_text, "ymm") && !strstr(asm_text, "zmm"), "%s: expected AVX2 code only", what);
            free(asm_text);
        }
        for (int64_t batch = 1; batch <= 3; batch += 2) {
            mj_tensor *x = mjc_randn(4, (int64_t[]){batch, k->C, k->H, k->W}, rng), *want = NULL, *got = NULL;
            OK(mj_module_forward(m, x, &want));
            OK(mj_compiled_run(c, x, &got));
            if (md == 1) {
                cr_expect(mj_tensor_equal(got, want), "%s, batch %lld: frozen exact differs from eager", what,
                          (long long)batch);
            } else {
                mj_compare cmp = mj_tensor_compare(got, want, MJ_RTOL_F32, MJ_ATOL_F32);
                char msg[256];
                mj_compare_describe(&cmp, got, want, msg, sizeof msg);
                cr_expect(cmp.close, "%s, batch %lld (fast frozen): %s", what, (long long)batch, msg);
            }
            /* channel 1 has no taps: its plane is the bias (or +0.0f; fast
             * mode may give -0.0f, as its flags allow) */
            const float *y = mj_tensor_data(got);
            int64_t plane = mj_tensor_dim(got, 2) * mj_tensor_dim(got, 3);
            for (int64_t n = 0; n < batch; n++)
                for (int64_t i = 0; i < plane; i++)
                    cr_expect(y[(n * k->O + 1) * plane + i] == y[(n * k->O + 1) * plane] &&
                                  (md != 1 ||
                                   !signbit(y[(n * k->O + 1) * plane + i]) == !signbit(y[(n * k->O + 1) * plane])),
                              "%s (mode %d, sparse %d): channel 1 is not constant", what, md, sparse);
            mj_tensor_release(x);
            mj_tensor_release(want);
            mj_tensor_release(got);
        }
        mj_compiled_free(c);
    }
    mj_graph_free(g);
    mj_tensor_release(x0);
    mj_module_free(m);
    return sparse;
}

/* Stride 1 along W (2 along H in two cases) and 2 to 5 along W (the
 * input's rows as phase rows, aligned or not), padding 0 to 3, dilation 2,
 * groups (depthwise too), kernels 1 to 7, odd sizes, several tiles,
 * blocks of input channels, rows aligned or not (jit/lower_conv_sparse.c:
 * with W + 2*pad rounded up to 16 when that adds at most a quarter), at
 * densities 0 to 1: bit for bit eager; at 5% and 20% by the sparse tap
 * table, but a depthwise stride-2 conv, whose copies the model prices
 * above its taps' savings, and a 3x3 depthwise conv on 14x14, where the
 * depthwise tile's shuffles cost less than the table's copies. */
Test(cnn_jit, frozen_sparse_conv_is_eager_bit_for_bit) {
    const sconv_case cases[] = {
        {.C = 4, .O = 8, .H = 7, .W = 9, .k = 3, .sh = 1, .sw = 1, .pad = 1, .dil = 1, .groups = 1, .bias = true},
        {.C = 6, .O = 6, .H = 11, .W = 13, .k = 3, .sh = 2, .sw = 1, .pad = 1, .dil = 1, .groups = 1, .bias = false},
        {.C = 4, .O = 8, .H = 9, .W = 10, .k = 3, .sh = 1, .sw = 1, .pad = 2, .dil = 2, .groups = 2, .bias = true},
        {.C = 8, .O = 8, .H = 9, .W = 7, .k = 3, .sh = 1, .sw = 1, .pad = 1, .dil = 1, .groups = 8, .bias = true},
        {.C = 3, .O = 5, .H = 5, .W = 17, .k = 1, .sh = 1, .sw = 1, .pad = 0, .dil = 1, .groups = 1, .bias = false},
        {.C = 4, .O = 4, .H = 8, .W = 8, .k = 5, .sh = 1, .sw = 1, .pad = 2, .dil = 1, .groups = 1, .bias = true},
        {.C = 40, .O = 6, .H = 9, .W = 10, .k = 3, .sh = 1, .sw = 1, .pad = 1, .dil = 1, .groups = 1, .bias = true},
        {.C = 16, .O = 16, .H = 20, .W = 37, .k = 3, .sh = 1, .sw = 1, .pad = 1, .dil = 1, .groups = 1, .bias = false},
        {.C = 4, .O = 6, .H = 9, .W = 11, .k = 3, .sh = 1, .sw = 2, .pad = 1, .dil = 1, .groups = 1, .bias = true},
        /* many output channels */
        {.C = 4, .O = 72, .H = 30, .W = 40, .k = 3, .sh = 1, .sw = 1, .pad = 1, .dil = 1, .groups = 1, .bias = true},
        /* rows 16 apart (aligned: shifted copies of the input for kw = 1, 2):
         * two groups in blocks of 5, 5, 5 and 1 input channels */
        {.C = 32, .O = 6, .H = 9, .W = 14, .k = 3, .sh = 1, .sw = 1, .pad = 1, .dil = 1, .groups = 2, .bias = true},
        /* aligned 1x1: no copy */
        {.C = 5, .O = 7, .H = 6, .W = 14, .k = 1, .sh = 1, .sw = 1, .pad = 0, .dil = 1, .groups = 1, .bias = false},
        /* aligned 5x5: four shifted copies */
        {.C = 3, .O = 5, .H = 10, .W = 12, .k = 5, .sh = 1, .sw = 1, .pad = 2, .dil = 1, .groups = 1, .bias = true},
        /* aligned, stride 2 along H, blocks of 10, 10 and 7 */
        {.C = 27, .O = 9, .H = 11, .W = 28, .k = 3, .sh = 2, .sw = 1, .pad = 1, .dil = 1, .groups = 1, .bias = false},
        /* aligned, dilation 2 (shifts 2 and 4), blocks of 10, 10 and 4 */
        {.C = 24, .O = 5, .H = 12, .W = 14, .k = 3, .sh = 1, .sw = 1, .pad = 1, .dil = 2, .groups = 1, .bias = true},
        /* stride > 1 along W: phase rows; aligned (16 apart: the tap kw = 2
         * reads its phase one float on, a shifted copy) */
        {.C = 6, .O = 8, .H = 12, .W = 28, .k = 3, .sh = 2, .sw = 2, .pad = 1, .dil = 1, .groups = 1, .bias = true},
        /* unaligned (11 apart), dilation 2, stride 1 along H */
        {.C = 5, .O = 6, .H = 9, .W = 19, .k = 3, .sh = 1, .sw = 2, .pad = 1, .dil = 2, .groups = 1, .bias = false},
        /* stride 3, kernel 5, two groups */
        {.C = 4, .O = 6, .H = 10, .W = 50, .k = 5, .sh = 3, .sw = 3, .pad = 2, .dil = 1, .groups = 2, .bias = true},
        /* ResNet's stem, narrower: 7x7 stride 2 */
        {.C = 3, .O = 8, .H = 16, .W = 64, .k = 7, .sh = 2, .sw = 2, .pad = 3, .dil = 1, .groups = 1, .bias = false},
        /* depthwise stride 2 (the tile: nine taps a channel do not pay for
         * its copy), and a 1x1 stride 2 (ResNet's downsample) */
        {.C = 8, .O = 8, .H = 14, .W = 30, .k = 3, .sh = 2, .sw = 2, .pad = 1, .dil = 1, .groups = 8, .bias = true,
         .tile = true},
        {.C = 32, .O = 32, .H = 10, .W = 32, .k = 1, .sh = 2, .sw = 2, .pad = 0, .dil = 1, .groups = 1, .bias = false},
        /* depthwise stride 1 on 14x14 (DEPTHWISE_TILE_COST): 3x3 takes the
         * depthwise tile, 1.4-1.5x faster than the table (MobileNetV2's 576
         * channels); 5x5 the table, 2.1-2.4x faster (EfficientNet's 672) */
        {.C = 32, .O = 32, .H = 14, .W = 14, .k = 3, .sh = 1, .sw = 1, .pad = 1, .dil = 1, .groups = 32, .bias = false,
         .tile = true},
        {.C = 32, .O = 32, .H = 14, .W = 14, .k = 5, .sh = 1, .sw = 1, .pad = 2, .dil = 1, .groups = 32, .bias = true},
        /* stride 5: the phase rows' copy gathers */
        {.C = 3, .O = 16, .H = 10, .W = 45, .k = 5, .sh = 5, .sw = 5, .pad = 0, .dil = 1, .groups = 1, .bias = true},
    };
    const double densities[] = {0.0, 0.05, 0.2, 0.5, 1.0};
    mj_rng rng;
    mj_rng_seed(&rng, 35);
    int n_sparse = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (size_t d = 0; d < sizeof densities / sizeof densities[0]; d++) {
            bool sparse = check_sparse_conv(jit, &cases[i], densities[d], &rng);
            if (densities[d] > 0.0 && densities[d] <= 0.2) /* 0: folded to its bias */
                cr_expect_eq(sparse, !cases[i].tile, "case %zu at density %g: sparse tap table %d", i, densities[d],
                             sparse);
            n_sparse += sparse;
        }
    cr_expect_geq(n_sparse, 41);
}

/* The crossover (SPARSE_FMA_COST, jit/lower_conv_sparse.c): a vector fma
 * of the tap table measured about as costly as one of the dense tile's, so
 * a 3x3 conv whose table has as many vector fmas per tap as the dense tile
 * (rows 32 apart for 30 columns, 24 rows: whole tiles 8 and 16 wide) takes
 * the table at 85% density (80% with channel 1 empty), bit for bit eager,
 * and the dense tile with every weight nonzero. */
Test(cnn_jit, frozen_sparse_conv_up_to_the_measured_crossover) {
    mj_rng rng;
    mj_rng_seed(&rng, 37);
    const sconv_case k = {.C = 16, .O = 16, .H = 24, .W = 30, .k = 3, .sh = 1, .sw = 1, .pad = 1, .dil = 1,
                          .groups = 1, .bias = true};
    cr_expect(check_sparse_conv(jit, &k, 0.85, &rng), "density 0.85: not the sparse tap table");
    mj_conv2d_params p;
    mj_conv2d_params_init(&p);
    p.padding[0] = p.padding[1] = 1;
    mj_module *m = NULL;
    OK(mj_conv2d_new(&m, k.C, k.O, (int64_t[]){3, 3}, &p, true, &rng));
    mj_tensor *x = mjc_randn(4, (int64_t[]){1, k.C, k.H, k.W}, &rng);
    mj_graph *g = mjt_trace(m, x);
    mj_compiled *c = mjt_compile(jit, g, mjt_modes[1]);
    cr_expect(!mjt_ir_has(c, ".staps.start"), "every weight nonzero: the sparse tap table");
    mj_compiled_free(c);
    mj_tensor_release(x);
    mjt_free_traced(g, m);
}

/* Column mode (fewer images than threads): the threads share a conv.
 * Frozen sparse (the tap table): they split its padding copy, claim its
 * tiles (a tile's output channels in chunks where there are few tiles) and
 * its output channels' rows, each with its own copies and partial sums;
 * the register tile (live): they claim its rows of output channel groups,
 * several at a time. Every output element is still one thread's, its taps
 * in the same order: at 2 and 3 threads, batches 1 and 2 (2 threads at
 * batch 2 split the images instead), the bits of one thread, and in exact
 * mode eager's. Cases: rows aligned (the tiles store y), stride 2 along H
 * (a run per row), unaligned rows with two groups (the rows go out per
 * channel), stride 2 along W (phase rows, strided loads), a 7x7 plane,
 * depthwise; each above the pool's minimum work per call. */
Test(cnn_jit, convs_shared_by_threads_bit_identical) {
    mj_rng rng;
    mj_rng_seed(&rng, 38);
    const sconv_case cases[] = {
        {.C = 16, .O = 16, .H = 32, .W = 40, .k = 3, .sh = 1, .sw = 1, .pad = 1, .dil = 1, .groups = 1, .bias = true},
        {.C = 24, .O = 16, .H = 48, .W = 30, .k = 3, .sh = 2, .sw = 1, .pad = 1, .dil = 1, .groups = 1, .bias = false},
        {.C = 32, .O = 32, .H = 60, .W = 15, .k = 3, .sh = 1, .sw = 1, .pad = 1, .dil = 1, .groups = 2, .bias = true},
        /* stride 2 along W: the tap table over phase rows, the register
         * tile's strided loads */
        {.C = 32, .O = 32, .H = 40, .W = 40, .k = 3, .sh = 1, .sw = 2, .pad = 1, .dil = 1, .groups = 1, .bias = true},
        /* a row a run whose tile is wider than the rows are apart: 1x1
         * stride 2 at 14x14 (rows 14 apart: 7 + 7 phase floats, a tile of
         * 16), and 3x3 stride 2 along H at 20 wide (rows 22 apart, a tile
         * of 32 with AVX-512): a tile must not write into the next row */
        {.C = 256, .O = 256, .H = 14, .W = 14, .k = 1, .sh = 2, .sw = 2, .pad = 0, .dil = 1, .groups = 1, .bias = false},
        {.C = 32, .O = 32, .H = 40, .W = 20, .k = 3, .sh = 2, .sw = 1, .pad = 1, .dil = 1, .groups = 1, .bias = true},
        /* a 7x7 plane, one tile: its output channels in 8 chunks */
        {.C = 128, .O = 128, .H = 7, .W = 7, .k = 3, .sh = 1, .sw = 1, .pad = 1, .dil = 1, .groups = 1, .bias = true},
        /* depthwise (frozen too: the tile): its rows claimed 57 at a time
         * (36 fmas each), the last claim fewer */
        {.C = 144, .O = 144, .H = 56, .W = 56, .k = 3, .sh = 1, .sw = 1, .pad = 1, .dil = 1, .groups = 144,
         .bias = true, .tile = true},
    };
    const int modes[] = {1, 0, 2}; /* exact frozen (sparse), exact live, fast live (register tile) */
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const sconv_case *k = &cases[i];
        mj_module *m = masked_sconv(k, 0.2, &rng);
        mj_tensor *x0 = mjc_randn(4, (int64_t[]){1, k->C, k->H, k->W}, &rng);
        mj_graph *g = mjt_trace(m, x0);
        for (size_t mi = 0; mi < sizeof modes / sizeof modes[0]; mi++) {
            mjt_mode md = mjt_modes[modes[mi]];
            mj_compiled *c[3];
            for (int t = 0; t < 3; t++) {
                mj_compile_options o;
                mj_compile_options_init(&o);
                o.numeric = md.numeric;
                o.frozen = md.frozen;
                o.threads = t + 1;
                c[t] = mjt_compile_with(jit, g, &o);
            }
            bool sparse = md.frozen && !k->tile;
            cr_expect_eq(mjt_ir_has(c[0], ".staps.start"), sparse, "case %zu (%s): sparse tap table %d", i, md.name,
                         sparse);
            for (int64_t batch = 1; batch <= 2; batch++) {
                mj_tensor *x = mjc_randn(4, (int64_t[]){batch, k->C, k->H, k->W}, &rng);
                mj_tensor *want = mjt_forward(m, x), *got[3];
                for (int t = 0; t < 3; t++) {
                    got[t] = mjt_run(c[t], x);
                    int split = t == 0 ? 0 : batch < t + 1 ? 2 : 1;
                    cr_expect_eq(mj_compiled_last_split(c[t]), split,
                                 "case %zu (%s), %d threads, batch %lld: split %d, not %d", i, md.name, t + 1,
                                 (long long)batch, mj_compiled_last_split(c[t]), split);
                    cr_expect(mj_tensor_equal(got[t], got[0]),
                              "case %zu (%s), %d threads, batch %lld: differs from one thread", i, md.name, t + 1,
                              (long long)batch);
                }
                if (md.numeric == MJ_NUMERIC_EXACT)
                    cr_expect(mj_tensor_equal(got[0], want), "case %zu (%s), batch %lld: differs from eager", i, md.name,
                              (long long)batch);
                MJT_RELEASE(x, want, got[0], got[1], got[2]);
            }
            for (int t = 0; t < 3; t++) mj_compiled_free(c[t]);
        }
        mj_tensor_release(x0);
        mjt_free_traced(g, m);
    }
}

/* The register tile with stride > 1 along W (jit/lower_cnn.c): strides 2
 * to 4 load the span of a vector's lanes and shuffle, masked at the row's
 * ends; wider strides gather. Rows wide enough for whole vectors inside
 * the row, at its ends and a part vector; padding, dilation, groups, bias,
 * 30% masks (live takes the tile; frozen the tile or the tap table),
 * batches 1 and 3 (NaN and inf inputs in 3). Exact live and frozen are eager bit for bit (frozen on
 * finite inputs: it skips zero weights), fast within tolerance; on the
 * machine's widest vectors and with AVX2 forced. */
static void check_tile_conv(mj_jit *j, const sconv_case *k) {
    mj_rng rng;
    mj_rng_seed(&rng, 39);
    mj_module *m = masked_sconv(k, 0.3, &rng);
    mj_tensor *x0 = mjc_randn(4, (int64_t[]){1, k->C, k->H, k->W}, &rng);
    mj_graph *g = mjt_trace(m, x0);
    for (int md = 0; md < 4; md++) {
        mj_compiled *c = mjt_compile(j, g, mjt_modes[md]);
        if (!mjt_modes[md].frozen) /* frozen takes the tap table where the model prices it lower */
            cr_expect(!mjt_ir_has(c, ".staps.start"), "stride %lld, k%lld, %s: not the register tile", (long long)k->sw,
                      (long long)k->k, mjt_modes[md].name);
        for (int64_t batch = 1; batch <= 3; batch += 2) {
            mj_tensor *x = mjc_randn(4, (int64_t[]){batch, k->C, k->H, k->W}, &rng);
            if (batch == 3) non_finite_input(x);
            mj_tensor *want = mjt_forward(m, x), *got = mjt_run(c, x);
            if (mjt_modes[md].numeric == MJ_NUMERIC_EXACT && (batch == 1 || !mjt_modes[md].frozen))
                cr_expect(mj_tensor_equal(got, want), "stride %lld, k%lld, %s, batch %lld: differs from eager",
                          (long long)k->sw, (long long)k->k, mjt_modes[md].name, (long long)batch);
            else if (batch == 1)
                MJT_EXPECT_CLOSE(got, want, MJ_RTOL_F32, MJ_ATOL_F32, "stride %lld, k%lld, %s", (long long)k->sw,
                                 (long long)k->k, mjt_modes[md].name);
            MJT_RELEASE(x, want, got);
        }
        mj_compiled_free(c);
    }
    mj_tensor_release(x0);
    mjt_free_traced(g, m);
}

/* check_tile_conv for each case, on the machine's widest vectors and with
 * AVX2 forced */
static void check_tile_cases(const sconv_case *cases, size_t n) {
    mj_jit *j2 = mjt_avx2_jit();
    for (size_t i = 0; i < n; i++) {
        check_tile_conv(jit, &cases[i]);
        check_tile_conv(j2, &cases[i]);
    }
    mj_jit_free(j2);
}

Test(cnn_jit, strided_convs_take_the_register_tile_bit_for_bit) {
    const sconv_case cases[] = {
        /* ResNet's stem, narrower: 7x7 stride 2, 50 outputs a row */
        {.C = 3, .O = 8, .H = 12, .W = 100, .k = 7, .sh = 2, .sw = 2, .pad = 3, .dil = 1, .groups = 1, .bias = false},
        /* stride 2 along W only, dilation 2, two groups */
        {.C = 4, .O = 8, .H = 7, .W = 75, .k = 3, .sh = 1, .sw = 2, .pad = 2, .dil = 2, .groups = 2, .bias = true},
        {.C = 5, .O = 6, .H = 9, .W = 70, .k = 3, .sh = 3, .sw = 3, .pad = 1, .dil = 1, .groups = 1, .bias = true},
        /* patches: 4x4 stride 4, no padding */
        {.C = 3, .O = 16, .H = 8, .W = 136, .k = 4, .sh = 4, .sw = 4, .pad = 0, .dil = 1, .groups = 1, .bias = true},
        /* gathers */
        {.C = 3, .O = 16, .H = 10, .W = 95, .k = 5, .sh = 5, .sw = 5, .pad = 2, .dil = 1, .groups = 1, .bias = true},
    };
    check_tile_cases(cases, sizeof cases / sizeof cases[0]);
}

/* Planes narrower than half a vector (jit/lower_cnn.c): the register
 * tile holds several whole output rows (7x7: two of 16 lanes; AVX2 with 8
 * lanes: 4x4 and smaller), the last block of rows maybe fewer; 3x3 with
 * padding 1, 5x5 with 2, dilation 2, 1x1, groups; strided or narrowing
 * convs keep a row a vector; checked as the strided tile above (live and
 * frozen, NaN inputs, AVX2 forced). */
Test(cnn_jit, small_planes_put_several_rows_in_a_vector) {
    const sconv_case cases[] = {
        {.C = 16, .O = 16, .H = 7, .W = 7, .k = 3, .sh = 1, .sw = 1, .pad = 1, .dil = 1, .groups = 1, .bias = true},
        {.C = 8, .O = 8, .H = 5, .W = 5, .k = 5, .sh = 1, .sw = 1, .pad = 2, .dil = 1, .groups = 2, .bias = false},
        {.C = 6, .O = 8, .H = 4, .W = 4, .k = 3, .sh = 1, .sw = 1, .pad = 2, .dil = 2, .groups = 1, .bias = true},
        {.C = 8, .O = 4, .H = 3, .W = 3, .k = 1, .sh = 1, .sw = 1, .pad = 0, .dil = 1, .groups = 1, .bias = true},
        {.C = 4, .O = 4, .H = 6, .W = 2, .k = 3, .sh = 1, .sw = 1, .pad = 1, .dil = 1, .groups = 4, .bias = false},
        /* strided, or W != OW: a row a vector (gathering the rows' lanes
         * measured slower: 3x3 256->512 stride 2 at 14x14, 3.74 ms against
         * 2.83 ms) */
        {.C = 8, .O = 16, .H = 14, .W = 14, .k = 3, .sh = 2, .sw = 2, .pad = 1, .dil = 1, .groups = 1, .bias = true},
        {.C = 8, .O = 8, .H = 14, .W = 14, .k = 1, .sh = 2, .sw = 2, .pad = 0, .dil = 1, .groups = 1, .bias = false},
        {.C = 4, .O = 8, .H = 9, .W = 5, .k = 3, .sh = 2, .sw = 1, .pad = 1, .dil = 1, .groups = 1, .bias = true},
        {.C = 4, .O = 8, .H = 6, .W = 9, .k = 3, .sh = 1, .sw = 1, .pad = 0, .dil = 1, .groups = 1, .bias = true},
    };
    check_tile_cases(cases, sizeof cases / sizeof cases[0]);
}

/* Depthwise convs with stride 1 along W (jit/lower_cnn.c): up to 8
 * vectors of a row at once, each tap column a shuffle of the row's loaded
 * vectors; rows with a whole group of vectors and a part, kernels 3 to 7,
 * dilation 2, stride 2 along H; checked as the strided tile above (live
 * and frozen, NaN inputs, AVX2 forced: 4 vectors at once). */
Test(cnn_jit, depthwise_convs_shuffle_their_rows_bit_for_bit) {
    const sconv_case cases[] = {
        {.C = 16, .O = 16, .H = 9, .W = 150, .k = 3, .sh = 1, .sw = 1, .pad = 1, .dil = 1, .groups = 16, .bias = true},
        {.C = 8, .O = 8, .H = 10, .W = 40, .k = 7, .sh = 1, .sw = 1, .pad = 3, .dil = 1, .groups = 8, .bias = false},
        {.C = 8, .O = 8, .H = 12, .W = 37, .k = 3, .sh = 1, .sw = 1, .pad = 2, .dil = 2, .groups = 8, .bias = true},
        {.C = 6, .O = 6, .H = 5, .W = 20, .k = 5, .sh = 1, .sw = 1, .pad = 2, .dil = 1, .groups = 6, .bias = true},
        {.C = 8, .O = 8, .H = 15, .W = 33, .k = 3, .sh = 2, .sw = 1, .pad = 1, .dil = 1, .groups = 8, .bias = false},
    };
    check_tile_cases(cases, sizeof cases / sizeof cases[0]);
}

/* max_pool2d and avg_pool2d on rows wide enough for whole vectors inside
 * the row (jit/lower_cnn.c): strides 1 to 3 (loads) and 5 (gathers),
 * padding, ceil_mode, both divisors; in every mode, NaN and inf inputs
 * too, against the interpreter: exact and frozen bit for bit, fast within
 * tolerance (its average may divide by a reciprocal); with AVX2 forced. */
Test(cnn_jit, wide_pools_are_eager_bit_for_bit) {
    const char *text = "maskjit-ir 1\n"
                       "%0 = input \"x\" : f32[B,2,9,83]\n"
                       "%1 = max_pool2d %0 {kernel=[3,3], stride=[2,2], padding=[1,1]} : f32[B,2,5,42]\n"
                       "%2 = max_pool2d %0 {kernel=[3,3], stride=[1,1], padding=[1,1]} : f32[B,2,9,83]\n"
                       "%3 = avg_pool2d %0 {kernel=[3,3], stride=[2,3], padding=[1,1], count_include_pad=true, "
                       "ceil_mode=true} : f32[B,2,5,28]\n"
                       "%4 = avg_pool2d %0 {kernel=[2,3], stride=[2,2], padding=[1,1], count_include_pad=false, "
                       "ceil_mode=true} : f32[B,2,5,42]\n"
                       "%5 = max_pool2d %0 {kernel=[5,5], stride=[5,5], padding=[2,2], ceil_mode=true} : f32[B,2,3,17]\n"
                       "return %1, %2, %3, %4, %5\n";
    mj_graph *g = NULL;
    OK(mj_graph_parse(text, &g));
    mj_rng rng = mjt_rng(40);
    mj_jit *j2 = mjt_avx2_jit();
    for (int k = 0; k < 8; k++) {
        mjt_mode md = mjt_modes[k % 4];
        mj_compiled *c = mjt_compile(k < 4 ? jit : j2, g, md);
        for (int64_t batch = 1; batch <= 3; batch += 2) {
            mj_tensor *x = mjc_randn(4, (int64_t[]){batch, 2, 9, 83}, &rng);
            if (batch == 3) {
                non_finite_input(x);
                mj_tensor_data_mut(x)[1000] = -NAN;
            }
            mj_tensor *want[5] = {0}, *got[5] = {0};
            OK(mj_graph_run_n(g, 1, (const mj_tensor *const *)&x, 5, want));
            OK(mj_compiled_run_n(c, 1, (const mj_tensor *const *)&x, 5, got));
            for (int o = 0; o < 5; o++) {
                bool is_avg = o == 2 || o == 3;
                if (md.numeric == MJ_NUMERIC_EXACT || !is_avg)
                    cr_expect(mj_tensor_equal(got[o], want[o]), "output %d (%s%s, batch %lld)", o, md.name,
                              k < 4 ? "" : ", AVX2", (long long)batch);
                else if (batch == 1)
                    MJT_EXPECT_CLOSE(got[o], want[o], MJ_RTOL_F32, MJ_ATOL_F32, "output %d (%s)", o, md.name);
                MJT_RELEASE(want[o], got[o]);
            }
            mj_tensor_release(x);
        }
        mj_compiled_free(c);
    }
    mj_jit_free(j2);
    mj_graph_free(g);
}

/* MASKJIT_JIT_FEATURES forcing AVX2: the sparse conv's tiles are 8 wide. */
Test(cnn_jit, frozen_sparse_conv_follows_the_jit_target) {
    mj_jit *j2 = mjt_avx2_jit();
    mj_rng rng;
    mj_rng_seed(&rng, 36);
    const sconv_case cases[] = {
        {.C = 16, .O = 16, .H = 20, .W = 37, .k = 3, .sh = 1, .sw = 1, .pad = 1, .dil = 1, .groups = 1, .bias = true},
        {.C = 6, .O = 6, .H = 11, .W = 13, .k = 3, .sh = 2, .sw = 1, .pad = 1, .dil = 1, .groups = 1, .bias = false},
        {.C = 3, .O = 8, .H = 16, .W = 64, .k = 7, .sh = 2, .sw = 2, .pad = 3, .dil = 1, .groups = 1, .bias = false},
        {.C = 4, .O = 6, .H = 10, .W = 50, .k = 5, .sh = 3, .sw = 3, .pad = 2, .dil = 1, .groups = 2, .bias = true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        cr_expect(check_sparse_conv(j2, &cases[i], 0.2, &rng), "case %zu: not the sparse tap table", i);
    mj_jit_free(j2);
}
