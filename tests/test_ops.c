/* Eager ops against hand-worked values, double-precision references and
 * the documented summation order. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "maskjit.h"
#include "test_util.h"

static mj_tensor *tensor2(int64_t r, int64_t c, const float *data) {
    int64_t shape[2] = {r, c};
    mj_tensor *t;
    OK(mj_tensor_from_data(&t, 2, shape, data));
    return t;
}

static mj_tensor *tensor1(int64_t n, const float *data) {
    mj_tensor *t;
    OK(mj_tensor_from_data(&t, 1, &n, data));
    return t;
}

Test(ops, matmul_and_linear_hand_worked) {
    /* [[1,2],[3,4]] @ [[5,6],[7,8]] = [[19,22],[43,50]] */
    float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
    mj_tensor *A = tensor2(2, 2, a), *B = tensor2(2, 2, b), *Y;
    OK(mj_matmul(&Y, A, B));
    const float want[4] = {19, 22, 43, 50};
    cr_assert_arr_eq(mj_tensor_data(Y), want, sizeof want);
    mj_tensor_release(Y);
    /* linear: x @ W^T + b with W = B: [[1*5+2*6, 1*7+2*8], ...] + [1, -1] */
    float bias[2] = {1, -1};
    mj_tensor *bb = tensor1(2, bias);
    OK(mj_linear(&Y, A, B, bb));
    const float want2[4] = {18, 22, 40, 52};
    cr_assert_arr_eq(mj_tensor_data(Y), want2, sizeof want2);
    mj_tensor_release(Y);
    OK(mj_linear(&Y, A, B, NULL));
    const float want3[4] = {17, 23, 39, 53};
    cr_assert_arr_eq(mj_tensor_data(Y), want3, sizeof want3);
    MJT_RELEASE(Y, A, B, bb);
}

/* The documented order: acc = +0.0f, then acc = fmaf(x, w, acc) for k
 * ascending, bias last. Written here independently (libm's fmaf through a
 * volatile function pointer, so no compiler choice enters); must match bit
 * for bit. */
static float (*volatile ref_fmaf)(float, float, float) = fmaf;
Test(ops, linear_follows_documented_summation_order) {
    mj_rng rng = mjt_rng(7);
    int64_t xs[3] = {2, 3, 37}, ws[2] = {19, 37}, bs[1] = {19};
    mj_tensor *x, *w, *b, *y;
    mj_tensor_randn(&x, 3, xs, &rng);
    mj_tensor_randn(&w, 2, ws, &rng);
    mj_tensor_randn(&b, 1, bs, &rng);
    OK(mj_linear(&y, x, w, b));
    cr_assert_eq(mj_tensor_rank(y), 3);
    cr_assert_eq(mj_tensor_dim(y, 2), 19);
    const float *X = mj_tensor_data(x), *W = mj_tensor_data(w), *B = mj_tensor_data(b);
    double max_rel = 0;
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 19; j++) {
            volatile float acc = 0.0f;
            double ref = 0;
            for (int k = 0; k < 37; k++) {
                acc = ref_fmaf(X[i * 37 + k], W[j * 37 + k], acc);
                ref += (double)X[i * 37 + k] * W[j * 37 + k];
            }
            acc = acc + B[j];
            ref += B[j];
            float got = mj_tensor_data(y)[i * 19 + j];
            cr_assert_eq(memcmp(&got, (const void *)&acc, 4), 0, "[%d,%d] %.9g vs %.9g", i, j, got,
                         (double)acc);
            if (fabs(ref) > 1e-3) max_rel = fmax(max_rel, fabs(got - ref) / fabs(ref));
        }
    cr_assert_lt(max_rel, 1e-4, "float32 result close to the double reference");
    MJT_RELEASE(x, w, b, y);
}

Test(ops, shape_errors_name_both_shapes) {
    mj_tensor *a, *b, *y = NULL;
    int64_t s1[2] = {3, 8}, s2[2] = {16, 16};
    mj_tensor_zeros(&a, 2, s1);
    mj_tensor_zeros(&b, 2, s2);
    cr_assert_eq(mj_linear(&y, a, b, NULL), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "[3, 8]") && strstr(mj_last_error(), "[16, 16]"), "%s",
              mj_last_error());
    cr_assert_null(y);
    cr_assert_eq(mj_matmul(&y, a, b), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "[3, 8]") && strstr(mj_last_error(), "[16, 16]"));
    cr_assert_eq(mj_add(&y, a, b), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "cannot be broadcast"), "%s", mj_last_error());
    int64_t bad_bias[1] = {5};
    mj_tensor *bb;
    mj_tensor_zeros(&bb, 1, bad_bias);
    cr_assert_eq(mj_linear(&y, b, b, bb), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "bias has shape [5]"), "%s", mj_last_error());
    int64_t r[2] = {5, 5};
    cr_assert_eq(mj_reshape(&y, a, 2, r), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "[5, 5]"), "%s", mj_last_error());
    int64_t two_infer[2] = {-1, -1};
    cr_assert_eq(mj_reshape(&y, a, 2, two_infer), MJ_ERR_INVALID);
    cr_assert_eq(mj_transpose(&y, bb), MJ_ERR_SHAPE);
    cr_assert_null(y);
    MJT_RELEASE(a, b, bb);
}

Test(ops, broadcasting_like_numpy) {
    /* [2,3] * [3] (row), [2,3] + [2,1] (column), [1,3] - [2,1] -> [2,3] */
    float m[6] = {1, 2, 3, 4, 5, 6}, row[3] = {10, 20, 30}, col[2] = {100, 200};
    mj_tensor *M = tensor2(2, 3, m), *R = tensor1(3, row), *C = tensor2(2, 1, col), *Y;
    OK(mj_mul(&Y, M, R));
    const float w1[6] = {10, 40, 90, 40, 100, 180};
    cr_assert_arr_eq(mj_tensor_data(Y), w1, sizeof w1);
    mj_tensor_release(Y);
    OK(mj_add(&Y, M, C));
    const float w2[6] = {101, 102, 103, 204, 205, 206};
    cr_assert_arr_eq(mj_tensor_data(Y), w2, sizeof w2);
    mj_tensor_release(Y);
    mj_tensor *R2 = tensor2(1, 3, row);
    OK(mj_sub(&Y, R2, C));
    cr_assert_eq(mj_tensor_dim(Y, 0), 2);
    const float w3[6] = {-90, -80, -70, -190, -180, -170};
    cr_assert_arr_eq(mj_tensor_data(Y), w3, sizeof w3);
    MJT_RELEASE(Y, M, R, R2, C);
}

Test(ops, activations_match_double_precision_formulas) {
    mj_rng rng = mjt_rng(3);
    int64_t n[1] = {257};
    mj_tensor *x;
    mj_tensor_randn(&x, 1, n, &rng);
    float *X = mj_tensor_data_mut(x);
    X[0] = 0.0f;
    X[1] = -0.0f;
    X[2] = 8.0f;
    X[3] = -8.0f;
    for (int a = MJ_ACT_NONE; a < MJ_ACT_COUNT; a++) {
        mj_tensor *y;
        OK(mj_activation(&y, (mj_act)a, x));
        for (int i = 0; i < 257; i++) {
            double v = X[i], ref;
            switch (a) {
            case MJ_ACT_NONE: ref = v; break;
            case MJ_ACT_RELU: ref = v > 0 ? v : 0; break;
            case MJ_ACT_GELU: ref = 0.5 * v * (1 + erf(v / sqrt(2.0))); break;
            case MJ_ACT_GELU_TANH:
                ref = 0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
                break;
            case MJ_ACT_SIGMOID: ref = 1 / (1 + exp(-v)); break;
            case MJ_ACT_SILU: ref = v / (1 + exp(-v)); break;
            default: ref = tanh(v); break;
            }
            double got = mj_tensor_data(y)[i];
            cr_assert(fabs(got - ref) <= 1e-6 + 1e-5 * fabs(ref), "%s(%g) = %.9g, want %.9g",
                      mj_act_name((mj_act)a), v, got, ref);
        }
        mj_tensor_release(y);
    }
    float nan_in[1] = {NAN};
    mj_tensor *t = tensor1(1, nan_in), *r;
    OK(mj_relu(&r, t));
    cr_assert(isnan(mj_tensor_data(r)[0]), "relu propagates NaN like torch");
    MJT_RELEASE(r, t, x);
    mj_act parsed;
    OK(mj_act_parse("gelu_tanh", &parsed));
    cr_assert_eq(parsed, MJ_ACT_GELU_TANH);
    cr_assert_eq(mj_act_parse("swish", &parsed), MJ_ERR_INVALID);
    cr_assert(strstr(mj_last_error(), "'swish'"), "%s", mj_last_error());
}

Test(ops, transpose_and_reshape) {
    float m[6] = {1, 2, 3, 4, 5, 6};
    mj_tensor *M = tensor2(2, 3, m), *T, *R;
    OK(mj_transpose(&T, M));
    const float wt[6] = {1, 4, 2, 5, 3, 6};
    cr_assert_eq(mj_tensor_dim(T, 0), 3);
    cr_assert_arr_eq(mj_tensor_data(T), wt, sizeof wt);
    int64_t s[3] = {3, -1, 1};
    OK(mj_reshape(&R, M, 3, s));
    cr_assert_eq(mj_tensor_dim(R, 1), 2);
    cr_assert_arr_eq(mj_tensor_data(R), m, sizeof m);
    MJT_RELEASE(M, T, R);
}
