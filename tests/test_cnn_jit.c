/* Suite "cnn_jit": pruned CNNs compiled (jit/lower_cnn.c) against the eager
 * modules: every conv geometry and the models of test_cnn_models.h, exact
 * mode bit for bit (live and frozen) and fast mode within tolerance, at
 * batches 1, 3 and 17; non-finite values under zero masks. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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

static void non_finite_input(mj_tensor *x) {
    float *xd = mj_tensor_data_mut(x);
    xd[5] = NAN;
    xd[70] = INFINITY;
    xd[200] = -INFINITY;
    xd[333] = NAN;
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

/* Eager's NaNs: NaN and inf inputs meet zero (masked) weights, and an
 * original NaN or inf under a zero mask makes a NaN weight, which reaches
 * the padded positions too. Exact live is bitwise eager; exact frozen may
 * skip zero weights (the tap table; docs/numerics.md: exact for finite
 * inputs), so it agrees wherever eager is finite, and keeps every NaN that
 * a NaN weight makes. */
Test(cnn_jit, non_finite_values_under_zero_masks) {
    mj_rng rng = mjt_rng(33);
    for (int stride = 1; stride <= 2; stride++) /* frozen: the register tile, then the tap table */
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

/* Frozen, a conv with stride 2 along W, or one below 10% density, takes its
 * taps from a table of its nonzero weights; a denser one with stride 1 and
 * every live one read the weight. Each way is bit for bit eager. */
Test(cnn_jit, frozen_conv_uses_a_tap_table_when_sparse_or_strided) {
    mj_rng rng = mjt_rng(34);
    for (int kind = 0; kind < 3; kind++) { /* stride 1 at 40%, stride 2 at 40%, stride 1 at 2% */
        mjc_geometry geo = {.stride = kind == 1 ? 2 : 1, .pad = 1, .dil = 1, .groups = 1, .k = 3};
        mj_module *m = mjc_conv_module(&geo, &rng);
        if (kind == 2) { /* a sparser mask: 2 taps per output channel */
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
            cr_expect_eq(mjt_ir_has(c, ".taps.start"), mjt_modes[k].frozen && kind > 0, "%s, kind %d",
                         mjt_modes[k].name, kind);
            mj_tensor *got = mjt_run(c, x);
            cr_expect(mj_tensor_equal(got, want), "%s, kind %d", mjt_modes[k].name, kind);
            mj_tensor_release(got);
            mj_compiled_free(c);
        }
        MJT_RELEASE(x, want);
        mjt_free_traced(g, m);
    }
}
