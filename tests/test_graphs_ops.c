/* The math of transformers: elementwise ops, activations, reductions,
 * layer_norm, softmax and their modules, in every mode.
 *
 *  - eager kernels against naive loops written here from docs/numerics.md
 *    (bit for bit) and against double-precision formulas (tolerance);
 *  - every op through the interpreter and the JIT (exact live/frozen bit for
 *    bit, fast live/frozen within tolerance) at batches 1, 3 and 17, with
 *    special values (+-0, +-inf, NaN, denormals) on the exact paths;
 *  - the text form of attributes and its errors;
 *  - a LLaMA-style MLP (RMSNorm, SiLU gate, masked Linear layers) and a
 *    residual MLP with LayerNorm, traced and compiled, exact mode bit for bit
 *    against eager, frozen mode using the sparse kernel. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../ir/ir.h"
#include "../src/core/vmath.h"
#include "maskjit.h"
#include "test_graph_util.h"
#include "test_util.h"

MJT_JIT_FIXTURE

TestSuite(graphs_ops, .init = setup, .fini = teardown, .timeout = 600);


static const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-40f, -1e-40f, 1e-45f,
                                 88.5f, -88.5f, 3e38f, -3e38f, 1.0f, -1.0f, 0.5f, 20.0f};
#define N_SPECIALS (int)(sizeof specials / sizeof specials[0])

static mj_tensor *randn(int rank, const int64_t *shape, mj_rng *rng) {
    mj_tensor *t = NULL;
    OK(mj_tensor_randn(&t, rank, shape, rng));
    return t;
}

/* Every 5th element a special value (cycling through them). */
static void sprinkle(mj_tensor *t) {
    float *d = mj_tensor_data_mut(t);
    for (int64_t i = 0, k = 0; i < mj_tensor_numel(t); i += 5, k++) d[i] = specials[k % N_SPECIALS];
}

static bool same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

static void assert_bits(const mj_tensor *got, const mj_tensor *want, const char *what) {
    mj_compare c = mj_tensor_compare(got, want, MJ_RTOL_F32, MJ_ATOL_F32);
    char desc[256];
    mj_compare_describe(&c, got, want, desc, sizeof desc);
    if (!mj_tensor_equal(got, want) && c.same_shape)
        for (int64_t i = 0; i < mj_tensor_numel(got); i++)
            if (!same_bits(mj_tensor_data(got)[i], mj_tensor_data(want)[i])) {
                uint32_t a, b;
                memcpy(&a, &mj_tensor_data(got)[i], 4);
                memcpy(&b, &mj_tensor_data(want)[i], 4);
                cr_log_error("%s: first difference at %lld: %08x vs %08x", what, (long long)i, a, b);
                break;
            }
    cr_assert(mj_tensor_equal(got, want), "%s: not bit-identical: %s", what, desc);
}

/* Bit for bit, except that a NaN may be any NaN: where two different NaNs
 * meet (inf - inf and an input NaN), IEEE and LLVM leave open which one
 * comes out (docs/numerics.md). */
static void assert_bits_any_nan(const mj_tensor *got, const mj_tensor *want, const char *what) {
    cr_assert_eq(mj_tensor_numel(got), mj_tensor_numel(want), "%s: sizes differ", what);
    for (int64_t i = 0; i < mj_tensor_numel(got); i++) {
        float a = mj_tensor_data(got)[i], b = mj_tensor_data(want)[i];
        cr_assert(same_bits(a, b) || (isnan(a) && isnan(b)), "%s: element %lld is %a, want %a", what, (long long)i,
                  (double)a, (double)b);
    }
}

/* What computes an output: a compiled graph, a module's forward or a
 * graph's interpreter (the first one set). */
typedef struct runner {
    mj_compiled *c;
    mj_module *m;
    mj_graph *g;
} runner;

static mj_tensor *run_on(runner r, const mj_tensor *x) {
    mj_tensor *y = NULL;
    if (r.c) OK(mj_compiled_run(r.c, x, &y));
    else if (r.m) OK(mj_module_forward(r.m, x, &y));
    else OK(mj_graph_run(r.g, x, &y));
    return y;
}

/* got and want give the same bits at x. */
static void assert_same_bits(runner got, runner want, const mj_tensor *x, const char *what) {
    mj_tensor *a = run_on(got, x), *b = run_on(want, x);
    assert_bits(a, b, what);
    MJT_RELEASE(a, b);
}

/* m traced on a randn example of shape s (rank r), which stays in *ex
 * when ex is not NULL. */
static mj_graph *trace_randn(mj_module *m, int rank, const int64_t *s, mj_rng *rng, mj_tensor **ex) {
    mj_tensor *x = randn(rank, s, rng);
    mj_graph *g = mjt_trace(m, x);
    if (ex) *ex = x;
    else mj_tensor_release(x);
    return g;
}

static void assert_graph_text(const mj_graph *g, const char *want) {
    char *p = mj_graph_to_string(g);
    cr_assert_str_eq(p, want);
    free(p);
}

/* ---- eager kernels against naive loops (the documented order) ------------- */

static float naive_unary(mj_op op, float x, float p0, float p1) {
    switch (op) {
    case MJ_OP_NEG: return -x;
    case MJ_OP_EXP: return mj_expf(x);
    case MJ_OP_LOG: return logf(x);
    case MJ_OP_SQRT: return sqrtf(x);
    case MJ_OP_RSQRT: return 1.0f / sqrtf(x);
    case MJ_OP_SILU: return x / (1.0f + mj_expf(-x));
    case MJ_OP_LEAKY_RELU: return x > 0.0f ? x : x * p0;
    case MJ_OP_ELU: return x > 0.0f ? x : expm1f(x) * p0;
    case MJ_OP_HARDTANH: return x < p0 ? p0 : x > p1 ? p1 : x;
    case MJ_OP_SOFTPLUS: return x * p0 > p1 ? x : log1pf(mj_expf(x * p0)) / p0;
    default: cr_assert_fail("no naive unary for %s", mj_op_table[op].name); return 0;
    }
}

static mj_status eager_unary(mj_op op, mj_tensor **y, const mj_tensor *x, float p0, float p1) {
    switch (op) {
    case MJ_OP_NEG: return mj_neg(y, x);
    case MJ_OP_EXP: return mj_exp(y, x);
    case MJ_OP_LOG: return mj_log(y, x);
    case MJ_OP_SQRT: return mj_sqrt(y, x);
    case MJ_OP_RSQRT: return mj_rsqrt(y, x);
    case MJ_OP_SILU: return mj_silu(y, x);
    case MJ_OP_LEAKY_RELU: return mj_leaky_relu(y, x, p0);
    case MJ_OP_ELU: return mj_elu(y, x, p0);
    case MJ_OP_HARDTANH: return mj_hardtanh(y, x, p0, p1);
    case MJ_OP_SOFTPLUS: return mj_softplus(y, x, p0, p1);
    default: return MJ_ERR_INVALID;
    }
}

static const struct {
    mj_op op;
    float p0, p1;
} unaries[] = {
    {MJ_OP_NEG, 0, 0},          {MJ_OP_EXP, 0, 0},          {MJ_OP_LOG, 0, 0},
    {MJ_OP_SQRT, 0, 0},         {MJ_OP_RSQRT, 0, 0},        {MJ_OP_SILU, 0, 0},
    {MJ_OP_LEAKY_RELU, 0.01f, 0}, {MJ_OP_LEAKY_RELU, 0.2f, 0}, {MJ_OP_ELU, 1.0f, 0},
    {MJ_OP_ELU, 0.5f, 0},       {MJ_OP_HARDTANH, -1.0f, 1.0f}, {MJ_OP_HARDTANH, 0.0f, 6.0f},
    {MJ_OP_SOFTPLUS, 1.0f, 20.0f}, {MJ_OP_SOFTPLUS, 2.0f, 5.0f},
};
#define N_UNARIES (int)(sizeof unaries / sizeof unaries[0])

Test(graphs_ops, eager_unary_ops_are_the_documented_formulas) {
    mj_rng rng = mjt_rng(1);
    int64_t n = 300;
    mj_tensor *x = randn(1, &n, &rng);
    float *X = mj_tensor_data_mut(x);
    for (int i = 0; i < N_SPECIALS; i++) X[i] = specials[i];
    for (int i = N_SPECIALS; i < 60; i++) X[i] *= 30.0f; /* the tails of exp, softplus's threshold */
    for (int u = 0; u < N_UNARIES; u++) {
        mj_tensor *y = NULL;
        OK(eager_unary(unaries[u].op, &y, x, unaries[u].p0, unaries[u].p1));
        for (int64_t i = 0; i < n; i++) {
            float want = naive_unary(unaries[u].op, X[i], unaries[u].p0, unaries[u].p1);
            cr_assert(same_bits(mj_tensor_data(y)[i], want), "%s(%a) = %a, want %a", mj_op_table[unaries[u].op].name,
                      (double)X[i], (double)mj_tensor_data(y)[i], (double)want);
        }
        mj_tensor_release(y);
    }
    /* pow: the PyTorch special cases, else powf */
    static const float exps[] = {2.0f, 3.0f, 0.5f, -0.5f, -1.0f, -2.0f, 1.0f, 1.5f, -3.0f};
    for (size_t e = 0; e < sizeof exps / sizeof *exps; e++) {
        mj_tensor *y = NULL;
        OK(mj_pow_scalar(&y, x, exps[e]));
        for (int64_t i = 0; i < n; i++) {
            float v = X[i], want;
            switch ((int)(exps[e] * 2)) {
            case 4: want = v * v; break;
            case 6: want = v * v * v; break;
            case 1: want = sqrtf(v); break;
            case -1: want = 1.0f / sqrtf(v); break;
            case -2: want = 1.0f / v; break;
            case -4: want = 1.0f / (v * v); break;
            case 2: want = v; break;
            default: want = powf(v, exps[e]); break;
            }
            cr_assert(same_bits(mj_tensor_data(y)[i], want), "pow(%a, %g) = %a, want %a", (double)v, (double)exps[e],
                      (double)mj_tensor_data(y)[i], (double)want);
        }
        mj_tensor_release(y);
    }
    mj_tensor_release(x);
}

Test(graphs_ops, eager_activations_match_pytorch_formulas_in_double) {
    mj_rng rng = mjt_rng(2);
    int64_t n = 257;
    mj_tensor *x = randn(1, &n, &rng);
    const float *X = mj_tensor_data(x);
    for (int u = 0; u < N_UNARIES; u++) {
        mj_op op = unaries[u].op;
        if (op == MJ_OP_LOG || op == MJ_OP_SQRT || op == MJ_OP_RSQRT) continue; /* NaN for x < 0 */
        mj_tensor *y = NULL;
        OK(eager_unary(op, &y, x, unaries[u].p0, unaries[u].p1));
        double p0 = unaries[u].p0, p1 = unaries[u].p1;
        for (int64_t i = 0; i < n; i++) {
            double v = X[i], ref;
            switch (op) {
            case MJ_OP_NEG: ref = -v; break;
            case MJ_OP_EXP: ref = exp(v); break;
            case MJ_OP_SILU: ref = v / (1 + exp(-v)); break;
            case MJ_OP_LEAKY_RELU: ref = v > 0 ? v : v * p0; break;
            case MJ_OP_ELU: ref = v > 0 ? v : p0 * (exp(v) - 1); break;
            case MJ_OP_HARDTANH: ref = fmin(fmax(v, p0), p1); break;
            default: ref = v * p0 > p1 ? v : log1p(exp(v * p0)) / p0; break;
            }
            double got = mj_tensor_data(y)[i];
            cr_assert(fabs(got - ref) <= 1e-6 + 1e-5 * fabs(ref), "%s(%g) = %.9g, want %.9g", mj_op_table[op].name, v,
                      got, ref);
        }
        mj_tensor_release(y);
    }
    mj_tensor_release(x);
}

Test(graphs_ops, eager_binary_ops_and_scalars) {
    mj_rng rng = mjt_rng(3);
    int64_t sa[2] = {N_SPECIALS, N_SPECIALS}, sb[1] = {N_SPECIALS};
    mj_tensor *a = randn(2, sa, &rng), *b = randn(1, sb, &rng);
    float *A = mj_tensor_data_mut(a), *Bd = mj_tensor_data_mut(b);
    for (int i = 0; i < N_SPECIALS; i++) {
        Bd[i] = specials[i];
        for (int j = 0; j < N_SPECIALS; j++) A[i * N_SPECIALS + j] = specials[i];
    }
    mj_tensor *d = NULL, *mx = NULL, *mn = NULL;
    OK(mj_div(&d, a, b));
    OK(mj_maximum(&mx, a, b));
    OK(mj_minimum(&mn, a, b));
    for (int i = 0; i < N_SPECIALS; i++)
        for (int j = 0; j < N_SPECIALS; j++) {
            float p = specials[i], q = specials[j];
            int k = i * N_SPECIALS + j;
            cr_assert(same_bits(mj_tensor_data(d)[k], p / q));
            /* torch.maximum: NaN wins, -0 < +0 */
            float wmax = isnan(p) ? p : isnan(q) ? q : p > q ? p : q > p ? q : signbit(p) ? q : p;
            float wmin = isnan(p) ? p : isnan(q) ? q : p < q ? p : q < p ? q : signbit(p) ? p : q;
            cr_assert(same_bits(mj_tensor_data(mx)[k], wmax), "maximum(%a, %a)", (double)p, (double)q);
            cr_assert(same_bits(mj_tensor_data(mn)[k], wmin), "minimum(%a, %a)", (double)p, (double)q);
        }
    cr_assert(!signbit(mj_tensor_data(mx)[0 * N_SPECIALS + 1]) && signbit(mj_tensor_data(mn)[0 * N_SPECIALS + 1]),
              "maximum(+0, -0) is +0 and minimum is -0");
    mj_tensor *s[4] = {0};
    OK(mj_add_scalar(&s[0], a, 1e-6f));
    OK(mj_sub_scalar(&s[1], a, 2.0f));
    OK(mj_mul_scalar(&s[2], a, 0.125f));
    OK(mj_div_scalar(&s[3], a, 8.0f));
    for (int k = 0; k < N_SPECIALS * N_SPECIALS; k++) {
        cr_assert(same_bits(mj_tensor_data(s[0])[k], A[k] + 1e-6f));
        cr_assert(same_bits(mj_tensor_data(s[1])[k], A[k] - 2.0f));
        cr_assert(same_bits(mj_tensor_data(s[2])[k], A[k] * 0.125f));
        cr_assert(same_bits(mj_tensor_data(s[3])[k], A[k] / 8.0f));
    }
    for (int i = 0; i < 4; i++) mj_tensor_release(s[i]);
    int64_t bad[1] = {3};
    mj_tensor *c = randn(1, bad, &rng), *y = NULL;
    FAILS(mj_div(&y, a, c), MJ_ERR_SHAPE, "div: shapes [16, 16] and [3] cannot be broadcast");
    FAILS(mj_hardtanh(&y, a, 1.0f, -1.0f), MJ_ERR_INVALID, "min_val 1 must not be greater than max_val -1");
    cr_assert_null(y);
    MJT_RELEASE(c, a, b, d, mx, mn);
}

/* Naive sum / mean / softmax / log_softmax along dim d of a [2,3,5,4] tensor,
 * written index by index. */
static float at4(const float *x, const int64_t *s, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    return x[((i0 * s[1] + i1) * s[2] + i2) * s[3] + i3];
}

Test(graphs_ops, eager_reductions_and_softmax_are_the_documented_loops) {
    mj_rng rng = mjt_rng(4);
    int64_t s[4] = {2, 3, 5, 4};
    mj_tensor *x = randn(4, s, &rng);
    sprinkle(x);
    const float *X = mj_tensor_data(x);
    for (int dim = -4; dim < 4; dim++) {
        int d = dim < 0 ? dim + 4 : dim;
        mj_tensor *sum = NULL, *mean = NULL, *meank = NULL, *sm = NULL, *lsm = NULL;
        OK(mj_sum(&sum, x, dim, false));
        OK(mj_mean(&mean, x, dim, false));
        OK(mj_mean(&meank, x, dim, true));
        OK(mj_softmax(&sm, x, dim));
        OK(mj_log_softmax(&lsm, x, dim));
        cr_assert_eq(mj_tensor_rank(sum), 3);
        cr_assert_eq(mj_tensor_rank(meank), 4);
        cr_assert_eq(mj_tensor_dim(meank, d), 1);
        int64_t o = 0;
        for (int64_t i0 = 0; i0 < (d == 0 ? 1 : s[0]); i0++)
            for (int64_t i1 = 0; i1 < (d == 1 ? 1 : s[1]); i1++)
                for (int64_t i2 = 0; i2 < (d == 2 ? 1 : s[2]); i2++)
                    for (int64_t i3 = 0; i3 < (d == 3 ? 1 : s[3]); i3++, o++) {
                        int64_t idx[4] = {i0, i1, i2, i3};
                        float acc = 0.0f, m = 0.0f;
                        for (int64_t k = 0; k < s[d]; k++) {
                            idx[d] = k;
                            float v = at4(X, s, idx[0], idx[1], idx[2], idx[3]);
                            acc = acc + v;
                            m = k == 0 ? v : v > m ? v : m;
                        }
                        cr_assert(same_bits(mj_tensor_data(sum)[o], acc), "sum dim %d at %lld", dim, (long long)o);
                        cr_assert(same_bits(mj_tensor_data(mean)[o], acc / (float)s[d]));
                        cr_assert(same_bits(mj_tensor_data(meank)[o], acc / (float)s[d]));
                        float es = 0.0f;
                        for (int64_t k = 0; k < s[d]; k++) {
                            idx[d] = k;
                            es = es + mj_expf(at4(X, s, idx[0], idx[1], idx[2], idx[3]) - m);
                        }
                        for (int64_t k = 0; k < s[d]; k++) {
                            idx[d] = k;
                            float v = at4(X, s, idx[0], idx[1], idx[2], idx[3]);
                            int64_t flat = ((idx[0] * s[1] + idx[1]) * s[2] + idx[2]) * s[3] + idx[3];
                            cr_assert(same_bits(mj_tensor_data(sm)[flat], mj_expf(v - m) / es), "softmax dim %d", dim);
                            cr_assert(same_bits(mj_tensor_data(lsm)[flat], (v - m) - logf(es)));
                        }
                    }
        MJT_RELEASE(sum, mean, meank, sm, lsm);
    }
    mj_tensor *y = NULL;
    FAILS(mj_softmax(&y, x, 4), MJ_ERR_SHAPE, "softmax: dim 4 is out of range for shape [2, 3, 5, 4] (expected -4..3)");
    FAILS(mj_sum(&y, x, -5, true), MJ_ERR_SHAPE, "sum: dim -5 is out of range");
    int64_t one = 7;
    mj_tensor *v = randn(1, &one, &rng);
    FAILS(mj_mean(&y, v, 0, false), MJ_ERR_SHAPE, "rank-0");
    mj_tensor_release(v);
    cr_assert_null(y);
    mj_tensor_release(x);
}

Test(graphs_ops, softmax_is_stable_and_close_to_double) {
    mj_rng rng = mjt_rng(5);
    int64_t s[2] = {4, 33};
    mj_tensor *x = randn(2, s, &rng);
    float *X = mj_tensor_data_mut(x);
    for (int i = 0; i < 33; i++) X[i] = 1000.0f + (float)i; /* exp would overflow without the max */
    mj_tensor *sm = NULL, *lsm = NULL;
    OK(mj_softmax(&sm, x, -1));
    OK(mj_log_softmax(&lsm, x, 1));
    for (int r = 0; r < 4; r++) {
        double m = -INFINITY, z = 0;
        for (int j = 0; j < 33; j++) m = fmax(m, X[r * 33 + j]);
        for (int j = 0; j < 33; j++) z += exp((double)X[r * 33 + j] - m);
        double total = 0;
        for (int j = 0; j < 33; j++) {
            double want = exp((double)X[r * 33 + j] - m) / z, got = mj_tensor_data(sm)[r * 33 + j];
            total += got;
            cr_assert(fabs(got - want) <= 1e-6 * want + 1e-9, "softmax[%d][%d] = %g, want %g", r, j, got, want);
            double lw = ((double)X[r * 33 + j] - m) - log(z);
            cr_assert(fabs(mj_tensor_data(lsm)[r * 33 + j] - lw) <= 1e-5 * (1 + fabs(lw)));
        }
        cr_assert(fabs(total - 1.0) < 1e-5);
    }
    MJT_RELEASE(sm, lsm, x);
}

Test(graphs_ops, eager_layer_norm_is_pytorchs) {
    mj_rng rng = mjt_rng(6);
    int64_t s[3] = {3, 2, 24}, n = 24;
    mj_tensor *x = randn(3, s, &rng), *w = randn(1, &n, &rng), *b = randn(1, &n, &rng);
    const float *X = mj_tensor_data(x), *W = mj_tensor_data(w), *Bb = mj_tensor_data(b);
    for (int affine = 0; affine < 3; affine++) {
        mj_tensor *y = NULL;
        OK(mj_layer_norm(&y, x, affine ? w : NULL, affine == 2 ? b : NULL, 1e-5f));
        for (int r = 0; r < 6; r++) {
            const float *row = X + r * n;
            /* the documented order, in float */
            float sum = 0.0f, sq = 0.0f;
            for (int j = 0; j < n; j++) sum = sum + row[j];
            float mean = sum / (float)n;
            for (int j = 0; j < n; j++) sq = sq + (row[j] - mean) * (row[j] - mean);
            float rstd = 1.0f / sqrtf(sq / (float)n + 1e-5f);
            /* and PyTorch's definition in double */
            double dm = 0, dv = 0;
            for (int j = 0; j < n; j++) dm += row[j];
            dm /= n;
            for (int j = 0; j < n; j++) dv += (row[j] - dm) * (row[j] - dm);
            dv /= n; /* biased */
            for (int j = 0; j < n; j++) {
                float v = (row[j] - mean) * rstd;
                if (affine) v = v * W[j];
                if (affine == 2) v = v + Bb[j];
                float got = mj_tensor_data(y)[r * n + j];
                cr_assert(same_bits(got, v), "layer_norm row %d col %d", r, j);
                double ref = (row[j] - dm) / sqrt(dv + 1e-5) * (affine ? W[j] : 1.0) + (affine == 2 ? Bb[j] : 0.0);
                cr_assert(fabs(got - ref) <= 1e-5 * (1 + fabs(ref)), "%g vs %g", (double)got, ref);
            }
        }
        mj_tensor_release(y);
    }
    mj_tensor *y = NULL;
    OK(mj_layer_norm(&y, x, b, w, 1e-5f)); /* any [24] weight and bias */
    mj_tensor_release(y);
    y = NULL;
    int64_t m = 23;
    mj_tensor *w23 = randn(1, &m, &rng);
    FAILS(mj_layer_norm(&y, x, w23, NULL, 1e-5f), MJ_ERR_SHAPE,
          "layer_norm: weight has shape [23] but x has shape [3, 2, 24] (need [24])");
    FAILS(mj_layer_norm(&y, x, NULL, b, 1e-5f), MJ_ERR_INVALID, "a bias needs a weight");
    cr_assert_null(y);
    MJT_RELEASE(w23, x, w, b);
}

/* ---- every op through the interpreter and the JIT -------------------------- */

static mj_tensor *input_for(const mj_graph *g, int64_t batch, mj_rng *rng, bool special) {
    const mj_node *in = NULL;
    for (int32_t i = 0; i < g->n_nodes && !in; i++)
        if (g->nodes[i].op == MJ_OP_INPUT) in = &g->nodes[i];
    int64_t shape[MJ_MAX_RANK];
    mj_type_shape(&in->type, batch, shape);
    mj_tensor *x = randn(in->type.rank, shape, rng);
    if (special) sprinkle(x);
    return x;
}

/* Compiles g in every mode and compares with the interpreter at batches 1,
 * 3 and 17: exact bit for bit (on randn inputs and on inputs with special
 * values), fast within fast mode's bound (mj_graph_output_tolerance).
 * Frees g. */
static void check_all_modes(mj_graph *g, const char *what, mj_rng *rng) {
    static const int64_t batches[] = {1, 3, 17};
    OK(mj_graph_verify(g));
    for (int mi = 0; mi < 4; mi++) {
        mj_compiled *c = mjt_compile(jit, g, mjt_modes[mi]);
        bool exact = mjt_modes[mi].numeric == MJ_NUMERIC_EXACT;
        double max_err = 0;
        for (int special = 0; special < (exact ? 2 : 1); special++)
            for (size_t bi = 0; bi < 3; bi++) {
                mj_tensor *x = input_for(g, batches[bi], rng, special), *want = NULL, *got = NULL;
                OK(mj_graph_run(g, x, &want));
                mj_status s = mj_compiled_run(c, x, &got);
                cr_assert_eq(s, MJ_OK, "%s (%s): %s", what, mjt_modes[mi].name, mj_last_error());
                char label[160];
                snprintf(label, sizeof label, "%s (%s, batch %lld%s)", what, mjt_modes[mi].name, (long long)batches[bi],
                         special ? ", special values" : "");
                if (exact && special) {
                    assert_bits_any_nan(got, want, label);
                } else if (exact) {
                    assert_bits(got, want, label);
                } else {
                    mj_tolerance t;
                    OK(mj_graph_output_tolerance(g, 0, batches[bi], want, &t));
                    mj_compare cmp = mj_tensor_compare(got, want, t.rtol, t.atol);
                    char desc[256];
                    mj_compare_describe(&cmp, got, want, desc, sizeof desc);
                    cr_assert(cmp.close, "%s: not close: %s", label, desc);
                    if (cmp.max_abs > max_err) max_err = cmp.max_abs;
                }
                MJT_RELEASE(x, want, got);
            }
        if (!exact) cr_log_info("%s (%s): max abs error %.3g", what, mjt_modes[mi].name, max_err);
        mj_compiled_free(c);
    }
    mj_graph_free(g);
}

static mj_graph *new_graph(void) {
    mj_graph *g = NULL;
    OK(mj_graph_new(&g));
    return g;
}

static int32_t node(mj_graph *g, mj_op o, int n, int32_t a, int32_t b, int32_t c, const mj_attrs *attrs) {
    int32_t ops[3] = {a, b, c}, id;
    OK(mj_graph_add_op_attrs(g, o, n, ops, MJ_ACT_NONE, attrs, NULL, &id));
    return id;
}

static mj_attrs attrs_of(mj_op op, int dim, bool keepdim, float f0, float f1) {
    mj_attrs a = mj_attrs_default(op);
    a.dim = dim;
    a.keepdim = keepdim;
    int n;
    const mj_attr_spec *s = mj_op_attrs(op, &n);
    for (int i = 0; i < n; i++)
        if (s[i].kind == MJ_ATTR_FLOAT) a.f[s[i].slot] = s[i].slot ? f1 : f0;
    return a;
}

Test(graphs_ops, every_unary_op_in_every_mode) {
    mj_rng rng = mjt_rng(10);
    for (int u = 0; u < N_UNARIES; u++) {
        mj_graph *g = new_graph();
        int32_t x = input(g, ty(3, B, 3, 20));
        mj_attrs a = attrs_of(unaries[u].op, 0, false, unaries[u].p0, unaries[u].p1);
        OK(mj_graph_add_output(g, node(g, unaries[u].op, 1, x, -1, -1, &a)));
        check_all_modes(g, mj_op_table[unaries[u].op].name, &rng);
    }
    static const float exps[] = {2.0f, 3.0f, 0.5f, -0.5f, -1.0f, -2.0f, 1.0f, 1.5f};
    for (size_t e = 0; e < sizeof exps / sizeof *exps; e++) {
        mj_graph *g = new_graph();
        int32_t x = input(g, ty(2, B, 40, 0));
        mj_attrs a = attrs_of(MJ_OP_POW, 0, false, exps[e], 0);
        OK(mj_graph_add_output(g, node(g, MJ_OP_POW, 1, x, -1, -1, &a)));
        check_all_modes(g, "pow", &rng);
    }
}

Test(graphs_ops, every_binary_op_in_every_mode_with_broadcasting_and_scalars) {
    mj_rng rng = mjt_rng(11);
    static const mj_op bins[] = {MJ_OP_DIV, MJ_OP_MAXIMUM, MJ_OP_MINIMUM};
    for (size_t k = 0; k < 3; k++) {
        /* x op x, x op row (a param), scalar const op result */
        mj_graph *g = new_graph();
        int32_t x = input(g, ty(3, B, 3, 20));
        int32_t row = leaf(g, MJ_OP_PARAM, "row", ty(1, 20, 0, 0), &rng);
        int32_t sc = leaf(g, MJ_OP_CONST, "scalar", ty(1, 1, 0, 0), &rng);
        int32_t a = node(g, bins[k], 2, x, row, -1, NULL);
        int32_t b = node(g, bins[k], 2, sc, a, -1, NULL);
        OK(mj_graph_add_output(g, node(g, bins[k], 2, b, x, -1, NULL)));
        check_all_modes(g, mj_op_table[bins[k]].name, &rng);
    }
}

Test(graphs_ops, reductions_and_normalisations_in_every_mode) {
    mj_rng rng = mjt_rng(12);
    static const mj_op ops[] = {MJ_OP_SUM, MJ_OP_MEAN, MJ_OP_SOFTMAX, MJ_OP_LOG_SOFTMAX};
    for (size_t k = 0; k < 4; k++)
        for (int dim = -3; dim < 3; dim++)
            for (int keep = 0; keep < 2; keep++) {
                if (keep && (ops[k] == MJ_OP_SOFTMAX || ops[k] == MJ_OP_LOG_SOFTMAX)) continue;
                mj_graph *g = new_graph();
                int32_t x = input(g, ty(3, B, 5, 24));
                mj_attrs a = attrs_of(ops[k], dim, keep, 0, 0);
                OK(mj_graph_add_output(g, node(g, ops[k], 1, x, -1, -1, &a)));
                char what[64];
                snprintf(what, sizeof what, "%s dim %d keepdim %d", mj_op_table[ops[k]].name, dim, keep);
                check_all_modes(g, what, &rng);
            }
    /* rows in groups of 8 (8-float blocks, then a tail) and lone rows:
     * widths of whole blocks, blocks and a tail, a tail only */
    static const int64_t widths[] = {48, 13, 5};
    for (size_t wi = 0; wi < 3; wi++) {
        int64_t n = widths[wi];
        for (int n_ops = 1; n_ops <= 3; n_ops++) {
            mj_graph *g = new_graph();
            int32_t x = input(g, ty(3, B, 2, n));
            int32_t w = leaf(g, MJ_OP_PARAM, "ln.weight", ty(1, n, 0, 0), &rng);
            int32_t b = leaf(g, MJ_OP_PARAM, "ln.bias", ty(1, n, 0, 0), &rng);
            mj_attrs a = attrs_of(MJ_OP_LAYER_NORM, 0, false, 1e-5f, 0);
            OK(mj_graph_add_output(g, node(g, MJ_OP_LAYER_NORM, n_ops, x, w, b, &a)));
            check_all_modes(g, "layer_norm", &rng);
        }
        for (size_t k = 2; k < 4 && n != 48; k++) { /* softmax, log_softmax: 24 wide above */
            mj_graph *g = new_graph();
            int32_t x = input(g, ty(3, B, 5, n));
            mj_attrs a = attrs_of(ops[k], -1, false, 0, 0);
            OK(mj_graph_add_output(g, node(g, ops[k], 1, x, -1, -1, &a)));
            char what[64];
            snprintf(what, sizeof what, "%s over %lld", mj_op_table[ops[k]].name, (long long)n);
            check_all_modes(g, what, &rng);
        }
    }
}

/* ---- text form ------------------------------------------------------------- */

static mj_graph *parse_ok(const char *text) {
    mj_graph *g = NULL;
    mj_status s = mj_graph_parse(text, &g);
    cr_assert_eq(s, MJ_OK, "%s\n%s", mj_last_error(), text);
    return g;
}

Test(graphs_ops, attributes_round_trip_and_defaults) {
    const char *text = "maskjit-ir 1\n"
                       "%0 = input \"x\" : f32[B,16]\n"
                       "%1 = mean %0 {dim=-1, keepdim=true} : f32[B,1]\n"
                       "%2 = softmax %0 {dim=1} : f32[B,16]\n"
                       "%3 = layer_norm %2 {eps=1e-05} : f32[B,16]\n"
                       "%4 = leaky_relu %3 {slope=-0} : f32[B,16]\n"
                       "%5 = hardtanh %4 {min=-inf, max=3.4028235e+38} : f32[B,16]\n"
                       "%6 = pow %5 {exponent=0.1} : f32[B,16]\n"
                       "%7 = sub %6, %1 : f32[B,16]\n"
                       "return %7\n";
    mj_graph *g = parse_ok(text);
    char *p = mj_graph_to_string(g);
    cr_assert_str_eq(p, text);
    free(p);
    cr_assert(signbit(g->nodes[4].attrs.f[0]));
    cr_assert_eq(g->nodes[6].attrs.f[0], 0.1f);
    mj_graph_free(g);
    /* defaults fill what the text omits; the printer writes them all */
    g = parse_ok("maskjit-ir 1\n%0 = input \"x\" : f32[B,4]\n%1 = softplus %0 : f32[B,4]\n"
                 "%2 = elu %1 {alpha=2} : f32[B,4]\n%3 = sum %2 {keepdim=true, dim=0} : f32[1,4]\nreturn %3\n");
    p = mj_graph_to_string(g);
    cr_assert_str_eq(p, "maskjit-ir 1\n%0 = input \"x\" : f32[B,4]\n%1 = softplus %0 {beta=1, threshold=20} : f32[B,4]\n"
                        "%2 = elu %1 {alpha=2} : f32[B,4]\n%3 = sum %2 {dim=0, keepdim=true} : f32[1,4]\nreturn %3\n");
    free(p);
    mj_graph_free(g);
}

Test(graphs_ops, attribute_errors_name_line_column_and_values) {
#define X "maskjit-ir 1\n%0 = input \"x\" : f32[B,4]\n"
    static const struct {
        const char *text, *where, *msg;
    } cases[] = {
        {X "%1 = softmax %0 : f32[B,4]\nreturn %1\n", "3:17:", "softmax needs the attribute {dim=...}"},
        {X "%1 = softmax %0 {dim=2} : f32[B,4]\nreturn %1\n", "3:27:", "softmax: dim 2 is out of range for f32[B,4] (expected -2..1)"},
        {X "%1 = softmax %0 {dim=x} : f32[B,4]\nreturn %1\n", "3:22:", "expected a dim (an integer from -4 to 3), found 'x'"},
        {X "%1 = softmax %0 {dim=1, dim=1} : f32[B,4]\nreturn %1\n", "3:25:", "attribute 'dim' is given twice"},
        {X "%1 = softmax %0 {axis=1} : f32[B,4]\nreturn %1\n", "3:18:", "softmax has no attribute 'axis' (its attributes: dim)"},
        {X "%1 = mean %0 {dim=1, keepdim=yes} : f32[B,1]\nreturn %1\n", "3:30:", "expected true or false, found 'yes'"},
        {X "%1 = mean %0 {dim=1} : f32[B,1]\nreturn %1\n", "3:24:", "differs from the inferred"},
        {X "%1 = layer_norm %0 {eps=1e-5x} : f32[B,4]\nreturn %1\n", "3:25:", "expected a number, found '1e-5x'"},
        {X "%1 = neg %0 {dim=1} : f32[B,4]\nreturn %1\n", "3:13:", "neg takes no {act=...} or other attributes"},
        {X "%1 = hardtanh %0 {min=2, max=1} : f32[B,4]\nreturn %1\n", "3:35:", "hardtanh: min 2 must not be greater than max 1"},
        {X "%1 = pow %0 : f32[B,4]\nreturn %1\n", "3:13:", "pow needs the attribute {exponent=...}"},
        {X "%1 = softmax %0 {dim=1 : f32[B,4]\nreturn %1\n", "3:24:", "expected ',' or '}' in attributes"},
        {X "%1 = param \"w\" : f32[3]\n%2 = layer_norm %0, %1 {eps=0.1} : f32[B,4]\nreturn %2\n", "4:36:",
         "layer_norm: weight does not fit the last dim: weight f32[3] with f32[B,4]"},
    };
#undef X
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        mj_graph *g = NULL;
        mj_status s = mj_graph_parse(cases[i].text, &g);
        cr_assert_eq(s, MJ_ERR_FORMAT, "case %zu parsed", i);
        cr_assert_null(g);
        cr_assert(strncmp(mj_last_error(), cases[i].where, strlen(cases[i].where)) == 0 &&
                      strstr(mj_last_error(), cases[i].msg),
                  "case %zu: '%s' should be at %s and say '%s'", i, mj_last_error(), cases[i].where, cases[i].msg);
    }
}

/* ---- tracing and modules ------------------------------------------------------ */

static mj_status scaled_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    (void)self;
    mj_tensor *a = NULL;
    MJ_TRY(mj_div_scalar(&a, x, 8.0f));
    mj_status s = mj_softmax(y, a, -1);
    mj_tensor_release(a);
    return s;
}

Test(graphs_ops, scalars_trace_as_one_element_consts) {
    mj_module *m = NULL;
    OK(mj_module_new(&m, "Scaled", scaled_forward, NULL, NULL));
    mj_rng rng = mjt_rng(13);
    mj_graph *g = trace_randn(m, 2, (int64_t[]){3, 4}, &rng, NULL);
    assert_graph_text(g, "maskjit-ir 1\n"
                         "%0 = input \"input\" : f32[B,4]\n"
                         "%1 = const \"const.0\" : f32[1] = [0x1p+3]\n"
                         "%2 = div %0, %1 : f32[B,4]\n"
                         "%3 = softmax %2 {dim=-1} : f32[B,4]\n"
                         "return %3\n");
    mjt_free_traced(g, m);
}

Test(graphs_ops, modules_mirror_torch_nn) {
    mj_module *ln = NULL, *sm = NULL, *dr = NULL, *lr = NULL, *fl = NULL, *si = NULL, *id = NULL;
    OK(mj_layer_norm_new(&ln, 8, 1e-5f, true, true));
    OK(mj_softmax_new(&sm, -1));
    OK(mj_dropout_new(&dr, 0.1f));
    OK(mj_leaky_relu_new(&lr, 0.01f));
    OK(mj_flatten_new(&fl, 1, -1));
    OK(mj_activation_module_new(&si, MJ_ACT_SILU));
    OK(mj_activation_module_new(&id, MJ_ACT_NONE));
    mj_tensor_dict *sd = NULL;
    OK(mj_module_state_dict(ln, false, &sd));
    cr_assert_eq(mj_tensor_dict_size(sd), 2);
    cr_assert_str_eq(mj_tensor_dict_key(sd, 0), "weight");
    cr_assert_str_eq(mj_tensor_dict_key(sd, 1), "bias");
    for (int j = 0; j < 8; j++) {
        cr_assert_eq(mj_tensor_data(mj_tensor_dict_value(sd, 0))[j], 1.0f);
        cr_assert_eq(mj_tensor_data(mj_tensor_dict_value(sd, 1))[j], 0.0f);
    }
    mj_tensor_dict_free(sd);
    mj_module *plain = NULL; /* nn.LayerNorm(8, elementwise_affine=False): no parameters */
    OK(mj_layer_norm_new(&plain, 8, 1e-5f, false, true));
    OK(mj_module_state_dict(plain, false, &sd));
    cr_assert_eq(mj_tensor_dict_size(sd), 0);
    mj_tensor_dict_free(sd);
    mj_module_free(plain);
    mj_module *children[7] = {fl, ln, lr, dr, si, id, sm};
    mj_module *seq = NULL;
    OK(mj_sequential_new(&seq, 7, children));
    char *buf = mjt_module_str(seq);
    cr_assert_str_eq(buf, "Sequential(\n"
                          "  (0): Flatten(start_dim=1, end_dim=-1)\n"
                          "  (1): LayerNorm((8,), eps=1e-05, elementwise_affine=True)\n"
                          "  (2): LeakyReLU(negative_slope=0.01)\n"
                          "  (3): Dropout(p=0.1, inplace=False)\n"
                          "  (4): SiLU()\n"
                          "  (5): Identity()\n"
                          "  (6): Softmax(dim=-1)\n"
                          ")\n");
    free(buf);
    /* Flatten is a reshape, Dropout and Identity trace to nothing */
    mj_rng rng = mjt_rng(14);
    mj_tensor *x = NULL, *y = NULL;
    mj_graph *g = trace_randn(seq, 3, (int64_t[]){2, 2, 4}, &rng, &x);
    assert_graph_text(g, "maskjit-ir 1\n"
                         "%0 = input \"input\" : f32[B,2,4]\n"
                         "%1 = reshape %0 : f32[B,8]\n"
                         "%2 = param \"1.weight\" : f32[8]\n"
                         "%3 = param \"1.bias\" : f32[8]\n"
                         "%4 = layer_norm %1, %2, %3 {eps=1e-05} : f32[B,8]\n"
                         "%5 = leaky_relu %4 {slope=0.01} : f32[B,8]\n"
                         "%6 = silu %5 : f32[B,8]\n"
                         "%7 = softmax %6 {dim=-1} : f32[B,8]\n"
                         "return %7\n");
    assert_same_bits((runner){.g = g}, (runner){.m = seq}, x, "traced Sequential");
    mj_graph_free(g);
    /* errors name the values */
    mj_module *bad = NULL;
    FAILS(mj_dropout_new(&bad, 1.5f), MJ_ERR_INVALID, "Dropout: probability has to be between 0 and 1, but got 1.5");
    FAILS(mj_layer_norm_new(&bad, 0, 1e-5f, true, true), MJ_ERR_INVALID, "normalized_shape 0 must be >= 1");
    FAILS(mj_hardtanh_new(&bad, 2.0f, 1.0f), MJ_ERR_INVALID, "min_val 2 must not be greater than max_val 1");
    cr_assert_null(bad);
    int64_t s2[2] = {2, 7};
    mj_tensor *x7 = randn(2, s2, &rng);
    FAILS(mj_module_forward(ln, x7, &y), MJ_ERR_SHAPE, "LayerNorm: x has shape [2, 7] but normalized_shape is (8,)");
    mj_tensor_release(x7);
    /* flattening into the batch dim would not generalise: refused */
    mj_module *fl0 = NULL;
    OK(mj_flatten_new(&fl0, 0, -1));
    g = NULL;
    FAILS(mj_trace_module(fl0, x, &g), MJ_ERR_SHAPE, "would not generalise over the batch");
    cr_assert_null(g);
    mj_module_free(fl0);
    mj_tensor_release(x);
    mj_module_free(seq);
}

/* ---- models: traced, compiled in every mode --------------------------------- */

/* A Linear(in, out) with a FakeSparsity mask of about `density` ones. */
static mj_module *masked_linear(int64_t in, int64_t out, bool bias, float density, mj_rng *rng) {
    mj_module *lin = NULL;
    OK(mj_linear_new(&lin, in, out, bias, rng));
    int64_t s[2] = {out, in};
    mj_tensor *mask = NULL;
    OK(mj_tensor_zeros(&mask, 2, s));
    float *m = mj_tensor_data_mut(mask);
    for (int64_t i = 0; i < in * out; i++) m[i] = mj_rng_uniform(rng) < density ? 1.0f : 0.0f;
    mj_parametrization *p = NULL;
    OK(mj_fake_sparsity_new(&p, mask));
    mj_tensor_release(mask);
    OK(mj_register_parametrization(lin, "weight", p));
    return lin;
}

/* LLaMA's MLP: h = RMSNorm(x) = x * rsqrt(mean(x^2, -1, keepdim) + eps) * w;
 * y = x + down(silu(gate(h)) * up(h)). Children: norm weight as a param of
 * the root, "gate", "up", "down". */
static mj_status llama_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    mj_tensor *t[12] = {0}, *w = NULL;
    mj_status s = mj_module_get(self, "norm_weight", &w);
    if (s == MJ_OK) s = mj_pow_scalar(&t[0], x, 2.0f);
    if (s == MJ_OK) s = mj_mean(&t[1], t[0], -1, true);
    if (s == MJ_OK) s = mj_add_scalar(&t[2], t[1], 1e-6f);
    if (s == MJ_OK) s = mj_rsqrt(&t[3], t[2]);
    if (s == MJ_OK) s = mj_mul(&t[4], x, t[3]);
    if (s == MJ_OK) s = mj_mul(&t[5], t[4], w);
    if (s == MJ_OK) s = mj_module_forward(mj_module_child(self, "gate"), t[5], &t[6]);
    if (s == MJ_OK) s = mj_silu(&t[7], t[6]);
    if (s == MJ_OK) s = mj_module_forward(mj_module_child(self, "up"), t[5], &t[8]);
    if (s == MJ_OK) s = mj_mul(&t[9], t[7], t[8]);
    if (s == MJ_OK) s = mj_module_forward(mj_module_child(self, "down"), t[9], &t[10]);
    if (s == MJ_OK) s = mj_add(y, x, t[10]);
    for (int i = 0; i < 12; i++) mj_tensor_release(t[i]);
    mj_tensor_release(w);
    return s;
}

static mj_module *llama_mlp(int64_t d, int64_t hidden, float density, mj_rng *rng) {
    mj_module *m = NULL;
    OK(mj_module_new(&m, "LlamaMLP", llama_forward, NULL, NULL));
    mj_tensor *w = randn(1, &d, rng);
    OK(mj_module_add_parameter(m, "norm_weight", w));
    mj_tensor_release(w);
    OK(mj_module_add_child(m, "gate", masked_linear(d, hidden, false, density, rng)));
    OK(mj_module_add_child(m, "up", masked_linear(d, hidden, false, density, rng)));
    OK(mj_module_add_child(m, "down", masked_linear(hidden, d, false, density, rng)));
    return m;
}

/* x + fc2(gelu(fc1(LayerNorm(x)))), then LayerNorm, head, Dropout, Softmax */
static mj_status residual_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    mj_tensor *a = NULL, *b = NULL;
    mj_status s = mj_module_forward(mj_module_child(self, "mlp"), x, &a);
    if (s == MJ_OK) s = mj_add(&b, x, a);
    if (s == MJ_OK) s = mj_module_forward(mj_module_child(self, "head"), b, y);
    MJT_RELEASE(a, b);
    return s;
}

static mj_module *residual_mlp(int64_t d, int64_t hidden, float density, mj_rng *rng) {
    mj_module *ln = NULL, *act = NULL, *ln2 = NULL, *drop = NULL, *sm = NULL, *mlp = NULL, *head = NULL, *m = NULL;
    OK(mj_layer_norm_new(&ln, d, 1e-5f, true, true));
    /* a non-trivial affine part, as after training */
    mj_tensor *w = NULL;
    OK(mj_module_get(ln, "weight", &w));
    float *wd = mj_tensor_data_mut(w);
    for (int64_t j = 0; j < d; j++) wd[j] = 0.5f + mj_rng_uniform(rng);
    mj_tensor_release(w);
    OK(mj_activation_module_new(&act, MJ_ACT_GELU));
    mj_module *mc[4] = {ln, masked_linear(d, hidden, true, density, rng), act, masked_linear(hidden, d, true, density, rng)};
    OK(mj_sequential_new(&mlp, 4, mc));
    OK(mj_layer_norm_new(&ln2, d, 1e-5f, true, false));
    OK(mj_dropout_new(&drop, 0.1f));
    OK(mj_softmax_new(&sm, -1));
    mj_module *hc[4] = {ln2, masked_linear(d, 10, true, 1.0f, rng), drop, sm};
    OK(mj_sequential_new(&head, 4, hc));
    OK(mj_module_new(&m, "ResidualMLP", residual_forward, NULL, NULL));
    OK(mj_module_add_child(m, "mlp", mlp));
    OK(mj_module_add_child(m, "head", head));
    return m;
}

/* Traces m, compiles it in every mode and compares with eager at batches 1,
 * 3 and 17: exact bit for bit, fast within tolerance; frozen layers must
 * use the sparse kernel when expect_sparse. */
static void check_model(mj_module *m, int64_t d, bool expect_sparse, const char *what, mj_rng *rng) {
    mj_graph *g = trace_randn(m, 2, (int64_t[]){3, d}, rng, NULL);
    static const int64_t batches[] = {1, 3, 17};
    for (int mi = 0; mi < 4; mi++) {
        mj_compiled *c = mjt_compile(jit, g, mjt_modes[mi]);
        if (mjt_modes[mi].frozen && expect_sparse)
            cr_assert(mjt_ir_has(c, ".sparse"), "%s (%s): the masked layers do not use the sparse kernel", what,
                      mjt_modes[mi].name);
        for (int bi = 0; bi < 3; bi++) {
            mj_tensor *x = randn(2, (int64_t[]){batches[bi], d}, rng);
            assert_same_bits((runner){.g = g}, (runner){.m = m}, x, "interpreter vs eager");
            char label[128];
            snprintf(label, sizeof label, "%s (%s, batch %lld)", what, mjt_modes[mi].name, (long long)batches[bi]);
            if (mjt_modes[mi].numeric == MJ_NUMERIC_EXACT) {
                assert_same_bits((runner){.c = c}, (runner){.m = m}, x, label);
            } else {
                mj_tensor *got = run_on((runner){.c = c}, x), *want = run_on((runner){.m = m}, x);
                mj_compare cmp = mj_tensor_compare(got, want, 1e-4, 1e-4);
                char desc[256];
                mj_compare_describe(&cmp, got, want, desc, sizeof desc);
                cr_assert(cmp.close, "%s: not close: %s", label, desc);
                cr_log_info("%s: max abs error %.3g", label, cmp.max_abs);
                MJT_RELEASE(want, got);
            }
            mj_tensor_release(x);
        }
        mj_compiled_free(c);
    }
    mj_graph_free(g);
}

/* check_model on make(d, hidden, density) built from the seed. */
static void check_built_model(mj_module *(*make)(int64_t, int64_t, float, mj_rng *), int64_t d, int64_t hidden,
                              float density, uint64_t seed, bool expect_sparse, const char *what) {
    mj_rng rng = mjt_rng(seed);
    mj_module *m = make(d, hidden, density, &rng);
    check_model(m, d, expect_sparse, what, &rng);
    mj_module_free(m);
}

Test(graphs_ops, llama_mlp_with_rmsnorm_and_silu_gate_in_every_mode) {
    check_built_model(llama_mlp, 96, 256, 0.2f, 20, true, "LLaMA MLP");
    /* small layers: the fused straight-line kernels */
    check_built_model(llama_mlp, 16, 40, 0.5f, 21, false, "small LLaMA MLP");
}

Test(graphs_ops, residual_mlp_with_layer_norm_in_every_mode) {
    check_built_model(residual_mlp, 80, 200, 0.25f, 22, true, "residual MLP");
}

/* A parameter changed after compiling shows up in live mode (layer_norm's
 * weight is read in place). */
Test(graphs_ops, live_mode_sees_new_layer_norm_weights) {
    mj_rng rng = mjt_rng(23);
    mj_module *ln = NULL;
    OK(mj_layer_norm_new(&ln, 12, 1e-5f, true, true));
    mj_tensor *x = NULL;
    mj_graph *g = trace_randn(ln, 2, (int64_t[]){5, 12}, &rng, &x);
    mj_compiled *c = mjt_compile(jit, g, mjt_modes[0]);
    mj_tensor *w = NULL;
    OK(mj_module_get(ln, "weight", &w));
    mj_tensor_data_mut(w)[3] = 2.5f;
    mj_tensor_release(w);
    assert_same_bits((runner){.c = c}, (runner){.m = ln}, x, "live layer_norm after a weight change");
    mj_tensor_release(x);
    mj_compiled_free(c);
    mjt_free_traced(g, ln);
}

Test(graphs_ops, silu_models_from_specs_fuse_into_linear_act) {
    mj_rng rng = mjt_rng(24);
    mj_module *m = NULL;
    OK(mj_model_from_spec("mlp:12,100,12:act=silu", &rng, &m));
    mj_graph *g = trace_randn(m, 2, (int64_t[]){2, 12}, &rng, NULL);
    OK(mj_graph_optimize(g, "default"));
    char *p = mj_graph_to_string(g);
    cr_assert(strstr(p, "{act=silu}"), "%s", p);
    free(p);
    mj_graph_free(g);
    check_model(m, 12, false, "mlp act=silu", &rng);
    mj_module_free(m);
    FAILS(mj_model_from_spec("mlp:4,4:act=swish", &rng, &m), MJ_ERR_FORMAT, "tanh, silu or none");
}

/* fold evaluates the new ops with the eager kernels; cse tells attributes
 * apart; simplify keeps them. */
Test(graphs_ops, passes_know_the_attributes) {
    mj_rng rng = mjt_rng(25);
    mj_graph *g = new_graph();
    int32_t x = input(g, ty(2, B, 6, 0));
    int32_t c = leaf(g, MJ_OP_CONST, "c", ty(2, 4, 6, 0), &rng);
    mj_attrs d0 = attrs_of(MJ_OP_SOFTMAX, 0, false, 0, 0), d1 = attrs_of(MJ_OP_SOFTMAX, 1, false, 0, 0);
    int32_t s0 = node(g, MJ_OP_SOFTMAX, 1, c, -1, -1, &d0);
    int32_t s1 = node(g, MJ_OP_SOFTMAX, 1, c, -1, -1, &d1);
    mj_attrs m0 = attrs_of(MJ_OP_MEAN, 0, true, 0, 0);
    int32_t mean = node(g, MJ_OP_MEAN, 1, node(g, MJ_OP_ADD, 2, s0, s1, -1, NULL), -1, -1, &m0); /* [1,6] */
    int32_t y = node(g, MJ_OP_ADD, 2, x, mean, -1, NULL);
    mj_attrs l1 = attrs_of(MJ_OP_LEAKY_RELU, 0, false, 0.1f, 0), l2 = attrs_of(MJ_OP_LEAKY_RELU, 0, false, 0.2f, 0);
    int32_t a = node(g, MJ_OP_LEAKY_RELU, 1, y, -1, -1, &l1), a2 = node(g, MJ_OP_LEAKY_RELU, 1, y, -1, -1, &l1);
    int32_t b = node(g, MJ_OP_LEAKY_RELU, 1, y, -1, -1, &l2);
    OK(mj_graph_add_output(g, node(g, MJ_OP_SUB, 2, node(g, MJ_OP_ADD, 2, a, a2, -1, NULL), b, -1, NULL)));
    mj_graph *orig = NULL;
    OK(mj_graph_clone(g, &orig));
    OK(mj_graph_optimize(g, "default"));
    char *p = mj_graph_to_string(g);
    /* the softmaxes and the mean folded into one const; the two slope-0.1
     * leaky_relus merged, the slope-0.2 one kept */
    cr_assert(strstr(p, "%1 = const \"fold.5\" : f32[1,6] = [") && !strstr(p, "softmax") && !strstr(p, "mean"), "%s", p);
    cr_assert(strstr(p, "%3 = leaky_relu %2 {slope=0.1} : f32[B,6]\n%4 = leaky_relu %2 {slope=0.2} : f32[B,6]\n"
                        "%5 = add %3, %3 : f32[B,6]\n"),
              "%s", p);
    free(p);
    mj_tensor *in = randn(2, (int64_t[]){5, 6}, &rng);
    assert_same_bits((runner){.g = g}, (runner){.g = orig}, in, "optimised graph");
    mj_tensor_release(in);
    mj_graph_free(orig);
    mj_graph_free(g);
}

/* With threads, rows split between the pool (many rows) or wide layers'
 * columns (few rows; the other ops on one thread between barriers): still
 * eager's bits. */
Test(graphs_ops, threads_keep_the_bits) {
    mj_rng rng = mjt_rng(26);
    mj_module *m = llama_mlp(256, 1024, 0.6f, &rng);
    mj_graph *g = trace_randn(m, 2, (int64_t[]){3, 256}, &rng, NULL);
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.threads = 2;
    mj_compiled *c = mjt_compile_with(jit, g, &o);
    static const int64_t batches[] = {1, 3, 64};
    for (int bi = 0; bi < 3; bi++) {
        mj_tensor *x = randn(2, (int64_t[]){batches[bi], 256}, &rng);
        assert_same_bits((runner){.c = c}, (runner){.m = m}, x, "LLaMA MLP on 2 threads");
        mj_tensor_release(x);
    }
    mj_compiled_free(c);
    /* a softmax over the batch dim: rows meet, so they stay on one thread */
    mj_graph *g2 = new_graph();
    int32_t x = input(g2, ty(2, B, 700, 0));
    int32_t w = leaf(g2, MJ_OP_PARAM, "w", ty(2, 700, 700, 0), &rng);
    mj_attrs a = attrs_of(MJ_OP_SOFTMAX, 0, false, 0, 0);
    OK(mj_graph_add_output(g2, node(g2, MJ_OP_SOFTMAX, 1, node(g2, MJ_OP_LINEAR, 2, x, w, -1, NULL), -1, -1, &a)));
    OK(mj_jit_compile(jit, g2, &o, &c));
    mj_tensor *xin = randn(2, (int64_t[]){40, 700}, &rng);
    assert_same_bits((runner){.c = c}, (runner){.g = g2}, xin, "softmax over the batch on 2 threads");
    mj_tensor_release(xin);
    mj_compiled_free(c);
    mj_graph_free(g2);
    mjt_free_traced(g, m);
}

/* ---- against PyTorch (tests/fixtures/ops.safetensors, tools/make_ops_fixtures.py) */

static mj_tensor *fx(const mj_tensor_dict *d, const char *name) {
    mj_tensor *t = mj_tensor_dict_get(d, name);
    cr_assert_not_null(t, "fixture has no \"%s\"", name);
    return t;
}

static void close_to_torch(mj_tensor *got, const mj_tensor_dict *d, const char *name) {
    const mj_tensor *want = fx(d, name);
    mj_compare c = mj_tensor_compare(got, want, 1e-5, 1e-6);
    char desc[256];
    mj_compare_describe(&c, got, want, desc, sizeof desc);
    cr_assert(c.close, "%s vs PyTorch: %s", name, desc);
    mj_tensor_release(got);
}

Test(graphs_ops, eager_ops_match_pytorch) {
    mj_tensor_dict *d = NULL;
    OK(mj_safetensors_load(MJ_SOURCE_ROOT "/tests/fixtures/ops.safetensors", &d));
    mj_tensor *x = fx(d, "x"), *y = fx(d, "y"), *w = fx(d, "ln.weight"), *b = fx(d, "ln.bias"), *a = NULL;
    /* a = |x| + 0.1 as the script makes it */
    mj_tensor *nx = NULL, *ax = NULL;
    OK(mj_neg(&nx, x));
    OK(mj_maximum(&ax, x, nx));
    OK(mj_add_scalar(&a, ax, 0.1f));
    MJT_RELEASE(nx, ax);
#define R(name, expr)                                                                                                  \
    do {                                                                                                               \
        mj_tensor *r_ = NULL;                                                                                          \
        OK(expr);                                                                                                      \
        close_to_torch(r_, d, name);                                                                                   \
    } while (0)
    R("div", mj_div(&r_, x, y));
    R("div_scalar", mj_div_scalar(&r_, x, 8.0f));
    R("maximum", mj_maximum(&r_, x, y));
    R("minimum", mj_minimum(&r_, x, y));
    R("neg", mj_neg(&r_, x));
    R("exp", mj_exp(&r_, x));
    R("log", mj_log(&r_, a));
    R("sqrt", mj_sqrt(&r_, a));
    R("rsqrt", mj_rsqrt(&r_, a));
    R("pow2", mj_pow_scalar(&r_, x, 2.0f));
    R("pow3", mj_pow_scalar(&r_, x, 3.0f));
    R("pow0.5", mj_pow_scalar(&r_, a, 0.5f));
    R("pow1.5", mj_pow_scalar(&r_, a, 1.5f));
    R("pow-1", mj_pow_scalar(&r_, a, -1.0f));
    R("silu", mj_silu(&r_, x));
    R("leaky_relu", mj_leaky_relu(&r_, x, 0.01f));
    R("leaky_relu0.2", mj_leaky_relu(&r_, x, 0.2f));
    R("elu", mj_elu(&r_, x, 1.0f));
    R("elu0.5", mj_elu(&r_, x, 0.5f));
    R("hardtanh", mj_hardtanh(&r_, x, -1.0f, 1.0f));
    mj_tensor *x4 = NULL, *x10 = NULL;
    OK(mj_mul_scalar(&x4, x, 4.0f));
    OK(mj_mul_scalar(&x10, x, 10.0f));
    R("relu6", mj_relu6(&r_, x4));
    R("softplus", mj_softplus(&r_, x10, 1.0f, 20.0f));
    R("softplus2.5", mj_softplus(&r_, x, 2.0f, 5.0f));
    MJT_RELEASE(x4, x10);
    R("layer_norm", mj_layer_norm(&r_, x, NULL, NULL, 1e-5f));
    R("layer_norm.affine", mj_layer_norm(&r_, x, w, b, 1e-5f));
    for (int dim = 0; dim < 3; dim++) {
        char n1[32], n2[32], n3[32], n4[32];
        snprintf(n1, sizeof n1, "sum.dim%d", dim);
        snprintf(n2, sizeof n2, "mean.dim%d", dim);
        snprintf(n3, sizeof n3, "softmax.dim%d", dim);
        snprintf(n4, sizeof n4, "log_softmax.dim%d", dim);
        R(n1, mj_sum(&r_, x, dim, false));
        R(n2, mj_mean(&r_, x, dim, true));
        R(n3, mj_softmax(&r_, x, dim));
        R(n4, mj_log_softmax(&r_, x, dim));
    }
    /* RMSNorm as LLaMA writes it */
    mj_tensor *p2 = NULL, *ms = NULL, *eps = NULL, *rs = NULL, *xn = NULL;
    OK(mj_pow_scalar(&p2, x, 2.0f));
    OK(mj_mean(&ms, p2, -1, true));
    OK(mj_add_scalar(&eps, ms, 1e-6f));
    OK(mj_rsqrt(&rs, eps));
    OK(mj_mul(&xn, x, rs));
    R("rmsnorm", mj_mul(&r_, xn, w));
#undef R
    mj_tensor *tensors[5] = {p2, ms, eps, rs, xn};
    for (int i = 0; i < 5; i++) mj_tensor_release(tensors[i]);
    /* the LayerNorm module loads PyTorch's state dict keys */
    mj_module *ln = NULL;
    OK(mj_layer_norm_new(&ln, 16, 1e-5f, true, true));
    mj_tensor_dict *sd = NULL;
    OK(mj_tensor_dict_new(&sd));
    OK(mj_tensor_dict_set(sd, "weight", w));
    OK(mj_tensor_dict_set(sd, "bias", b));
    OK(mj_module_load_state_dict(ln, sd, true, NULL));
    mj_tensor *r = mjt_forward(ln, x);
    close_to_torch(r, d, "layer_norm.affine");
    mj_tensor_dict_free(sd);
    mj_module_free(ln);
    mj_tensor_release(a);
    mj_tensor_dict_free(d);
}
