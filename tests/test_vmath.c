/* maskjit's expf and gelu (src/core/vmath.h): the reference against double
 * precision (ulps), its special values, and compiled code (the same
 * sequence emitted on scalars and vectors, jit/emit.c) against it bit for
 * bit in every mode, with the host's vectors and with AVX2 forced. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../ir/ir.h"
#include "../src/core/vmath.h"
#include "maskjit.h"
#include "test_graph_util.h"
#include "test_util.h"

MJT_JIT_FIXTURE

TestSuite(vmath, .init = setup, .fini = teardown, .timeout = 600);

/* |got - ref| in units of the float ulp at ref (2^-149 below FLT_MIN);
 * results beyond FLT_MAX must be inf (HUGE_VAL when got is not). */
static double ulp_error(float got, double ref) {
    if (fabs(ref) >= 0x1.ffffffp127) return isinf(got) && (got > 0) == (ref > 0) ? 0 : HUGE_VAL;
    if (isinf(got) || isnan(got)) return HUGE_VAL;
    double ulp = fabs(ref) < 0x1p-126 ? 0x1p-149 : ldexp(1.0, ilogb(ref) - 23);
    return fabs((double)got - ref) / ulp;
}

/* gelu(x) = x Phi(x) in double */
static double gelu_double(double x) { return x * 0.5 * erfc(-x / sqrt(2.0)); }

/* Every 97th float (all signs and exponents) and every float within 4096
 * ulps of the thresholds; the bound is vs the exact value, so vs the
 * correctly rounded float it is half an ulp more. Measured on every 61st
 * float: expf 0.996 ulp. gelu by range of x (its negative tail is x times a
 * tiny Phi(x), whose relative error grows with -log Phi(x)); measured on
 * every 101st float: 2.93 ulp from -1 up, 15.5 on [-3, -1), 53 below
 * (docs/numerics.md). */
Test(vmath, reference_within_ulps_of_double) {
    double max_e = 0, max_g[3] = {0}, max_t = 0;
    uint32_t at_e = 0, at_g[3] = {0}, at_t = 0;
    static const double bound_g[3] = {3.5, 20.0, 64.0};
    static const float centres[] = {MJ_EXPF_HI, 88.7228394f, -87.336544f, -103.97208f, MJ_EXPF_LO, MJ_GELU_T,
                                    0x1p-126f,  1.0f,        3.0f,        0x1p-20f,    MJ_TANH_SMALL, 9.01f};
    for (int pass = 0; pass < 2; pass++) {
        uint64_t n = pass == 0 ? 0x100000000ull / 97 : 2 * 8193 * (sizeof centres / sizeof *centres);
        for (uint64_t i = 0; i < n; i++) {
            uint32_t u;
            if (pass == 0) u = (uint32_t)(i * 97);
            else {
                uint64_t c = i / (2 * 8193), r = i % (2 * 8193); /* both signs of each */
                u = mjt_f32_bits(centres[c]) + (uint32_t)(r / 2) - 4096;
                if (r % 2) u ^= 0x80000000u;
            }
            float x = mjt_bits_f32(u);
            if (!isfinite(x)) continue;
            double e = ulp_error(mj_expf(x), exp((double)x));
            if (e > max_e) max_e = e, at_e = u;
            double th = ulp_error(mj_tanhf(x), tanh((double)x));
            if (th > max_t) max_t = th, at_t = u;
            if (x <= -MJ_GELU_T) continue; /* exactly -0 there (special_values) */
            int range = x >= -1.0f ? 0 : x >= -3.0f ? 1 : 2;
            double g = ulp_error(mj_geluf(x), gelu_double(x));
            if (g > max_g[range]) max_g[range] = g, at_g[range] = u;
        }
    }
    cr_log_info("expf: max %.3f ulp at %a; gelu: max %.3f ulp at %a (from -1 up), %.3f at %a ([-3, -1)), %.3f at %a "
                "(below)",
                max_e, (double)mjt_bits_f32(at_e), max_g[0], (double)mjt_bits_f32(at_g[0]), max_g[1],
                (double)mjt_bits_f32(at_g[1]), max_g[2], (double)mjt_bits_f32(at_g[2]));
    cr_log_info("tanh: max %.3f ulp at %a", max_t, (double)mjt_bits_f32(at_t));
    cr_assert(max_e <= 1.5, "expf: %.3f ulp at %a", max_e, (double)mjt_bits_f32(at_e));
    cr_assert(max_t <= 1.6, "tanh: %.3f ulp at %a", max_t, (double)mjt_bits_f32(at_t));
    for (int r = 0; r < 3; r++)
        cr_assert(max_g[r] <= bound_g[r], "gelu: %.3f ulp at %a", max_g[r], (double)mjt_bits_f32(at_g[r]));
}

static float gelu_q(float a) {
    static const float G[MJ_GELU_NG] = MJ_GELU_G;
    float q = G[MJ_GELU_NG - 1];
    for (int i = MJ_GELU_NG - 2; i >= 0; i--) q = fmaf(q, a, G[i]);
    return q;
}

/* gelu's reduction (vmath.h), on every float a of [0, T): q is in
 * [1, 27.5], nf = round(q), and f = nf - q is exact and in [-1/2, 1/2], so
 * 2^-n is a normal float and the scaling exact. The claim holds for these
 * coefficients; a refit must keep it. Below 2^-26 q is the last fmaf,
 * q = fmaf(p, a, 1) with p close to G[1] > 0, which rounds to 1 and cannot
 * decrease as a grows: q = 1 at both ends of [0, 2^-26) covers that range
 * (three quarters of the floats; the loop checks the rest one by one). */
Test(vmath, gelu_reduction_is_exact) {
    const uint32_t tiny = mjt_f32_bits(0x1p-26f);
    cr_assert_eq(gelu_q(0.0f), 1.0f);
    cr_assert_eq(gelu_q(mjt_bits_f32(tiny - 1)), 1.0f);
    for (uint32_t u = tiny; u < mjt_f32_bits(MJ_GELU_T); u++) {
        float a = mjt_bits_f32(u), q = gelu_q(a);
        float nf = (q + MJ_EXPF_SHIFT) - MJ_EXPF_SHIFT, f = nf - q;
        if (!(q >= 1.0f && q <= 27.5f) || nf != rintf(q) || (double)f != (double)nf - (double)q || fabsf(f) > 0.5f)
            cr_assert_fail("a %a: q %a, nf %a, f %a", (double)a, (double)q, (double)nf, (double)f);
    }
}

Test(vmath, special_values) {
    cr_assert_eq(mjt_f32_bits(mj_expf(0.0f)), mjt_f32_bits(1.0f));
    cr_assert_eq(mjt_f32_bits(mj_expf(-0.0f)), mjt_f32_bits(1.0f));
    cr_assert_eq(mjt_f32_bits(mj_expf(-INFINITY)), mjt_f32_bits(0.0f));
    cr_assert_eq(mjt_f32_bits(mj_expf(INFINITY)), mjt_f32_bits(INFINITY));
    cr_assert_eq(mjt_f32_bits(mj_expf(NAN)), mjt_f32_bits(NAN), "NaN in, the same NaN out");
    cr_assert_eq(mjt_f32_bits(mj_expf(-NAN)), mjt_f32_bits(-NAN));
    /* the largest argument with a finite result, and the next float */
    cr_assert(isfinite(mj_expf(88.72283172607421875f)) && mj_expf(88.72283172607421875f) > 3.4e38f);
    cr_assert(isinf(mj_expf(nextafterf(88.72283172607421875f, 100.0f))));
    cr_assert(isinf(mj_expf(1e30f)) && isinf(mj_expf(MJ_EXPF_HI)) && isinf(mj_expf(FLT_MAX)));
    /* denormal results, rounded once: e^-100 = 3.72e-44 = 26.55 * 2^-149 */
    cr_assert_eq(mj_expf(-100.0f), 27 * 0x1p-149f);
    cr_assert_eq(mj_expf(-103.27892990343184f), 0x1p-149f, "e^x = 2^-149 exactly");
    cr_assert_eq(mjt_f32_bits(mj_expf(-104.0f)), 0u, "below 2^-150: +0");
    cr_assert_eq(mjt_f32_bits(mj_expf(-1e30f)), 0u);
    cr_assert_eq(mj_expf(1.0f), 2.71828182845904523536f);
    for (int k = -126; k <= 127; k++) /* e^(k ln 2) within an ulp of 2^k */
        cr_assert(ulp_error(mj_expf((float)k * 0.693147180559945f), exp((double)((float)k * 0.693147180559945f))) <= 1.0,
                  "k %d", k);

    cr_assert_eq(mjt_f32_bits(mj_geluf(0.0f)), 0u);
    cr_assert_eq(mjt_f32_bits(mj_geluf(-0.0f)), 0x80000000u);
    cr_assert_eq(mj_geluf(INFINITY), INFINITY);
    cr_assert(isnan(mj_geluf(-INFINITY)), "-inf times Phi(-inf) = 0, as in PyTorch's erf form");
    cr_assert_eq(mjt_f32_bits(mj_geluf(NAN)), mjt_f32_bits(NAN), "NaN in, the same NaN out");
    cr_assert_eq(mjt_f32_bits(mj_geluf(-NAN)), mjt_f32_bits(-NAN));
    cr_assert_eq(mj_geluf(FLT_MAX), FLT_MAX);
    cr_assert_eq(mj_geluf(MJ_GELU_T), MJ_GELU_T);
    cr_assert_eq(mjt_f32_bits(mj_geluf(-MJ_GELU_T)), 0x80000000u, "from -T down: -0");
    cr_assert_eq(mjt_f32_bits(mj_geluf(-FLT_MAX)), 0x80000000u);
    float below = nextafterf(-MJ_GELU_T, 0.0f); /* x Phi(x) = -5.7e-8 */
    cr_assert(ulp_error(mj_geluf(below), gelu_double(below)) <= 64.0, "%a", (double)mj_geluf(below));
    cr_assert_eq(mj_geluf(0x1p-148f), 0x1p-149f, "x / 2 near 0, rounded once");
    cr_assert(ulp_error(mj_geluf(1.0f), gelu_double(1.0)) <= 3.5 && ulp_error(mj_geluf(-1.0f), gelu_double(-1.0)) <= 3.5);

    cr_assert_eq(mjt_f32_bits(mj_tanhf(0.0f)), 0u);
    cr_assert_eq(mjt_f32_bits(mj_tanhf(-0.0f)), 0x80000000u);
    cr_assert_eq(mj_tanhf(INFINITY), 1.0f);
    cr_assert_eq(mj_tanhf(-INFINITY), -1.0f);
    cr_assert_eq(mj_tanhf(FLT_MAX), 1.0f, "a + a overflows to inf: e^inf = inf, 2 / inf = 0");
    cr_assert_eq(mj_tanhf(-10.0f), -1.0f);
    cr_assert_eq(mjt_f32_bits(mj_tanhf(NAN)), mjt_f32_bits(NAN), "NaN in, the same NaN out");
    cr_assert_eq(mjt_f32_bits(mj_tanhf(-NAN)), mjt_f32_bits(-NAN));
    cr_assert_eq(mj_tanhf(0x1p-149f), 0x1p-149f, "tanh(x) = x near 0");
    cr_assert_eq(mj_tanhf(-1e-20f), -1e-20f);
    for (float x = -9.5f; x <= 9.5f; x += 0.125f) /* odd, and within the bound on a grid */
        cr_assert(mj_tanhf(-x) == -mj_tanhf(x) && ulp_error(mj_tanhf(x), tanh((double)x)) <= 1.6, "%a", (double)x);
}

/* ---- compiled code against the reference ------------------------------------ */

/* Arguments that reach every part of the sequences: zeros, denormals, the
 * thresholds of exp (also as -x, for sigmoid and silu) and of gelu, huge
 * values; then random ones. Finite only when
 * `finite` (they go through a linear layer). */
static mj_tensor *edge_input(int64_t rows, int64_t cols, bool finite, mj_rng *rng) {
    static const float edges[] = {0.0f, -0.0f, 0x1p-149f, -0x1p-149f, 1e-40f, 0x1p-126f, 1e-20f, 0.5f, 1.0f,
                                  -1.0f, 0.921875f, 0.92187494f, 1.3037146f, 4.0f, 3.99999f, 5.65625f, 5.6562495f, 5.66f,
                                  88.72283f, 88.722839f, 88.75f, 88.76f, 89.0f, -87.33654f, -87.4f, -100.0f,
                                  -103.97f, -103.98f, -104.0f, -104.01f, 103.97f, 104.0f, 1e30f, -1e30f, FLT_MAX,
                                  -FLT_MAX, 20.0f, 20.5f, -20.0f};
    static const float specials[] = {INFINITY, -INFINITY, NAN, -NAN};
    int64_t shape[2] = {rows, cols};
    mj_tensor *x;
    OK(mj_tensor_zeros(&x, 2, shape));
    float *d = mj_tensor_data_mut(x);
    int64_t n = rows * cols, ne = sizeof edges / sizeof *edges;
    for (int64_t i = 0; i < n; i++) {
        if (i < 2 * ne) d[i] = i < ne ? edges[i] : -edges[i - ne];
        else if (!finite && i < 2 * ne + 4) d[i] = specials[i - 2 * ne];
        else if (i % 3 == 0) d[i] = (float)(mj_rng_uniform(rng) * 240.0 - 120.0);
        else if (i % 3 == 1) d[i] = (float)(mj_rng_uniform(rng) * 16.0 - 8.0);
        else {
            float v = mjt_bits_f32((uint32_t)(mj_rng_uniform(rng) * 4294967295.0));
            d[i] = isfinite(v) ? v : 1.5f;
        }
    }
    return x;
}

/* exact: every bit but NaN's (docs/numerics.md); fast: within tolerance */
static void check_same(const mj_tensor *got, const mj_tensor *want, mjt_mode m, const char *what) {
    cr_assert_eq(mj_tensor_numel(got), mj_tensor_numel(want));
    const float *a = mj_tensor_data(got), *b = mj_tensor_data(want);
    if (m.numeric == MJ_NUMERIC_EXACT) {
        for (int64_t i = 0; i < mj_tensor_numel(got); i++)
            cr_assert(mjt_f32_bits(a[i]) == mjt_f32_bits(b[i]) || (isnan(a[i]) && isnan(b[i])),
                      "%s (%s): element %lld is %a, want %a", what, m.name, (long long)i, (double)a[i], (double)b[i]);
    } else {
        mj_compare c = mj_tensor_compare(got, want, MJ_RTOL_F32, MJ_ATOL_F32);
        char desc[256];
        mj_compare_describe(&c, got, want, desc, sizeof desc);
        cr_assert(c.close, "%s (%s): %s", what, m.name, desc);
    }
}

/* g compiled in every mode against the interpreter (the eager kernels) */
static void check_all_modes(mj_jit *j, mj_graph *g, const mj_tensor *x, const char *what) {
    mj_tensor *want;
    OK(mj_graph_run(g, x, &want));
    for (int mi = 0; mi < 4; mi++) {
        mj_compiled *c = mjt_compile(j, g, mjt_modes[mi]);
        mj_tensor *got;
        OK(mj_compiled_run(c, x, &got));
        check_same(got, want, mjt_modes[mi], what);
        mj_tensor_release(got);
        mj_compiled_free(c);
    }
    mj_tensor_release(want);
}

static void check_ops(mj_jit *j) {
    mj_rng rng = mjt_rng(42);
    /* elementwise (the loop LLVM vectorises), softmax along either dim */
    static const mj_op ops[] = {MJ_OP_EXP,      MJ_OP_GELU,    MJ_OP_SIGMOID,     MJ_OP_SILU,     MJ_OP_TANH,
                                MJ_OP_GELU_TANH, MJ_OP_SOFTPLUS, MJ_OP_SOFTMAX, MJ_OP_LOG_SOFTMAX};
    mj_tensor *x = edge_input(61, 64, false, &rng);
    for (size_t k = 0; k < sizeof ops / sizeof *ops; k++)
        for (int dim = 0; dim < (ops[k] == MJ_OP_SOFTMAX || ops[k] == MJ_OP_LOG_SOFTMAX ? 2 : 1); dim++) {
            mj_graph *g;
            OK(mj_graph_new(&g));
            int32_t in = input(g, ty(2, B, 64, 0)), id;
            mj_attrs a = mj_attrs_default(ops[k]);
            a.dim = dim;
            OK(mj_graph_add_op_attrs(g, ops[k], 1, &in, MJ_ACT_NONE, &a, NULL, &id));
            OK(mj_graph_add_output(g, id));
            char what[64];
            snprintf(what, sizeof what, "%s dim %d", mj_op_table[ops[k]].name, dim);
            check_all_modes(j, g, x, what);
            mj_graph_free(g);
        }
    mj_tensor_release(x);

    /* the activation in the epilogues of linear_act: the small fused kernel
     * (16 wide), the wide dense one (live, 128) and the sparse one (frozen,
     * 128: an identity weight is 1/128 dense), whole vectors each; finite
     * inputs, as an inf times a zero weight is NaN */
    static const mj_act acts[] = {MJ_ACT_GELU, MJ_ACT_SIGMOID, MJ_ACT_SILU, MJ_ACT_TANH, MJ_ACT_GELU_TANH};
    static const int64_t widths[] = {16, 128};
    for (size_t wi = 0; wi < 2; wi++) {
        int64_t n = widths[wi], ws[2] = {n, n};
        mj_tensor *w, *bias;
        OK(mj_tensor_zeros(&w, 2, ws));
        OK(mj_tensor_zeros(&bias, 1, &n));
        for (int64_t i = 0; i < n; i++) mj_tensor_data_mut(w)[i * n + i] = 1.0f;
        mj_tensor *xl = edge_input(3 + 4096 / n, n, true, &rng);
        for (size_t ai = 0; ai < sizeof acts / sizeof *acts; ai++) {
            mj_graph *g;
            OK(mj_graph_new(&g));
            mj_type wt = ty(2, n, n, 0), bt = ty(1, n, 0, 0);
            int32_t ops3[3] = {input(g, ty(2, B, n, 0)), 0, 0}, id;
            OK(mj_graph_add_leaf(g, MJ_OP_PARAM, "w", &wt, w, &ops3[1]));
            OK(mj_graph_add_leaf(g, MJ_OP_PARAM, "b", &bt, bias, &ops3[2]));
            OK(mj_graph_add_op(g, MJ_OP_LINEAR_ACT, 3, ops3, acts[ai], NULL, &id));
            OK(mj_graph_add_output(g, id));
            char what[64];
            snprintf(what, sizeof what, "linear_act %s, %lld wide", mj_act_name(acts[ai]), (long long)n);
            check_all_modes(j, g, xl, what);
            mj_graph_free(g);
        }
        mj_tensor_release(xl);
        mj_tensor_release(w);
        mj_tensor_release(bias);
    }
}

Test(vmath, compiled_bitwise_in_every_mode) { check_ops(jit); }

/* Compiled softmax takes exp's short form for blocks whose x - max lie in
 * its band (emit.h: MJ_EXPF_BAND_LO up) and the whole sequence elsewhere.
 * Rows whose max is 0, so that x - max = x: every float in the ulps around
 * the band's low end and down to where 2^n leaves the normal floats, the
 * points where n steps, and random x of the band and of [-104, 0]; 8 rows
 * a group and a lone row after them, widths of whole 8-float blocks, one
 * block and a tail, a tail only. Bit for bit against eager. */
Test(vmath, softmax_band_exp_is_mj_expf_bit_for_bit) {
    mj_rng rng = mjt_rng(7);
    static const int64_t widths[] = {64, 13, 5};
    for (size_t wi = 0; wi < sizeof widths / sizeof *widths; wi++) {
        int64_t n = widths[wi], rows = 8 * 512 + 1, shape[2] = {rows, n};
        mj_tensor *x;
        OK(mj_tensor_zeros(&x, 2, shape));
        float *d = mj_tensor_data_mut(x);
        /* from 4096 ulps above -87 down to about -88.5, where 2^n of the
         * short form would no longer be a normal float */
        int64_t quarter = rows * n / 4;
        uint32_t edge = mjt_f32_bits(MJ_EXPF_BAND_LO) - 4096, step = (uint32_t)(1 + 200000 / quarter);
        for (int64_t i = 0; i < rows * n; i++) {
            if (i % n == 0) continue; /* the row's max, 0 */
            if (i < quarter) {
                d[i] = mjt_bits_f32(edge);
                edge += step;
            } else if (i % 3 == 0) {
                d[i] = (float)(mj_rng_uniform(&rng) * -104.0);
            } else if (i % 3 == 1) { /* within 2 ulps of -(k + 1/2) ln 2, where n steps */
                int k = (int)(mj_rng_uniform(&rng) * 125.0);
                float v = (float)(-(k + 0.5) * 0.6931471805599453);
                d[i] = mjt_bits_f32(mjt_f32_bits(v) + (uint32_t)(int)(mj_rng_uniform(&rng) * 5.0) - 2u);
            } else {
                d[i] = (float)(mj_rng_uniform(&rng) * MJ_EXPF_BAND_LO);
            }
        }
        mj_graph *g;
        OK(mj_graph_new(&g));
        int32_t in = input(g, ty(2, B, n, 0)), id;
        mj_attrs a = mj_attrs_default(MJ_OP_SOFTMAX);
        a.dim = 1;
        OK(mj_graph_add_op_attrs(g, MJ_OP_SOFTMAX, 1, &in, MJ_ACT_NONE, &a, NULL, &id));
        OK(mj_graph_add_output(g, id));
        char what[64];
        snprintf(what, sizeof what, "softmax of %lld near exp's band", (long long)n);
        check_all_modes(jit, g, x, what);
        mj_graph_free(g);
        mj_tensor_release(x);
    }
}

Test(vmath, compiled_bitwise_with_avx2_forced) {
    mj_jit *j2 = mjt_avx2_jit();
    check_ops(j2);
    mj_jit_free(j2);
}
