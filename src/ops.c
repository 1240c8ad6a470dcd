/* Eager ops: maskjit's reference semantics.
 *
 * Written as plain loops and compiled with -ffp-contract=off, so each
 * result is a fixed sequence of IEEE operations: dot products start at
 * +0.0f and add x*w for k ascending, the bias is added last, activations are
 * mj_act_apply. The interpreter calls these kernels and the JIT's exact mode
 * emits the same operations, which is what makes them bit-identical.
 *
 * Each op, when a trace is recording on this thread, reports itself to the
 * tracer after computing its output (src/tracer.c).
 */
#include <math.h>
#include <string.h>

#include "../ir/ir.h"
#include "internal.h"

#define SHAPE(buf, t) mj_shape_str(buf, sizeof buf, (t)->rank, (t)->shape)

/* Hands `out` to the caller after the tracer (if any) has recorded it. */
static mj_status finish(mj_tensor **out, mj_tensor *y, int op, int n, const mj_tensor *const *in,
                        mj_act act) {
    if (mj_trace_active()) {
        mj_status s = mj_trace_record(op, n, in, act, y);
        if (s != MJ_OK) {
            mj_tensor_release(y);
            return s;
        }
    }
    *out = y;
    return MJ_OK;
}

static mj_status check_args(const char *op, mj_tensor **out, const mj_tensor *a,
                            const mj_tensor *b) {
    if (!out) return mj_fail(MJ_ERR_INVALID, "%s: output pointer is NULL", op);
    if (!a || !b) return mj_fail(MJ_ERR_INVALID, "%s: input tensor is NULL", op);
    return MJ_OK;
}

/* ---- activations -------------------------------------------------------- */
static const char *const act_names[MJ_ACT_COUNT] = {
    [MJ_ACT_NONE] = "none",       [MJ_ACT_RELU] = "relu",       [MJ_ACT_GELU] = "gelu",
    [MJ_ACT_GELU_TANH] = "gelu_tanh", [MJ_ACT_SIGMOID] = "sigmoid", [MJ_ACT_TANH] = "tanh",
};
_Static_assert(MJ_ACT_COUNT == 6, "update act_names");

const char *mj_act_name(mj_act act) {
    return (unsigned)act < MJ_ACT_COUNT ? act_names[act] : "?";
}

mj_status mj_act_parse(const char *name, mj_act *out) {
    if (!name || !out) return mj_fail(MJ_ERR_INVALID, "activation name is NULL");
    for (int a = 0; a < MJ_ACT_COUNT; a++) {
        if (strcmp(name, act_names[a]) == 0) {
            *out = (mj_act)a;
            return MJ_OK;
        }
    }
    return mj_fail(MJ_ERR_INVALID,
                   "unknown activation '%s' (expected none, relu, gelu, gelu_tanh, sigmoid, tanh)",
                   name);
}

/* The one definition of each activation. The JIT emits exactly these
 * operations in this order (evaluation is left to right as written). */
float mj_act_apply(mj_act act, float x) {
    switch (act) {
    case MJ_ACT_NONE: return x;
    case MJ_ACT_RELU: return x < 0.0f ? 0.0f : x; /* NaN passes through */
    case MJ_ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
    case MJ_ACT_GELU_TANH:
        return 0.5f * x * (1.0f + tanhf(0.79788456080286535588f * (x + 0.044715f * x * x * x)));
    case MJ_ACT_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case MJ_ACT_TANH: return tanhf(x);
    case MJ_ACT_COUNT: break;
    }
    MJ_ASSERT(!"unknown activation");
}

mj_status mj_activation(mj_tensor **out, mj_act act, const mj_tensor *x) {
    if (!out || !x) return mj_fail(MJ_ERR_INVALID, "activation: NULL argument");
    if ((unsigned)act >= MJ_ACT_COUNT)
        return mj_fail(MJ_ERR_INVALID, "activation: unknown activation %d", (int)act);
    mj_tensor *y;
    MJ_TRY(mj_tensor_new_uninit(&y, x->rank, x->shape));
    for (int64_t i = 0; i < x->numel; i++) y->data[i] = mj_act_apply(act, x->data[i]);
    /* Identity records as an alias of its input: the graph has no copy op. */
    int op = act == MJ_ACT_NONE ? -1 : (int)mj_op_for_act(act);
    return finish(out, y, op, 1, &x, MJ_ACT_NONE);
}

mj_status mj_relu(mj_tensor **out, const mj_tensor *x) { return mj_activation(out, MJ_ACT_RELU, x); }
mj_status mj_gelu(mj_tensor **out, const mj_tensor *x) { return mj_activation(out, MJ_ACT_GELU, x); }
mj_status mj_gelu_tanh(mj_tensor **out, const mj_tensor *x) {
    return mj_activation(out, MJ_ACT_GELU_TANH, x);
}
mj_status mj_sigmoid(mj_tensor **out, const mj_tensor *x) {
    return mj_activation(out, MJ_ACT_SIGMOID, x);
}
mj_status mj_tanh(mj_tensor **out, const mj_tensor *x) { return mj_activation(out, MJ_ACT_TANH, x); }

/* ---- matmul / linear ---------------------------------------------------- */

/* The reference dot product (docs/numerics.md): acc = +0.0f, then for k
 * ascending acc = fmaf(x[k], w[k], acc), one rounding per term, so compiled
 * code reproduces it bit for bit with FMA instructions at full speed. The
 * clones only choose how fmaf is computed (the instruction, or libm's exact
 * software fmaf on CPUs without FMA): the results are the same. */
__attribute__((target_clones("fma", "default")))
static void linear_kernel(const float *X, const float *W, const float *B, float *Y, int64_t rows,
                          int64_t in_f, int64_t out_f) {
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < out_f; j++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < in_f; k++) acc = fmaf(X[i * in_f + k], W[j * in_f + k], acc);
            Y[i * out_f + j] = B ? acc + B[j] : acc;
        }
    }
}

__attribute__((target_clones("fma", "default")))
static void matmul_kernel(const float *A, const float *B, float *Y, int64_t m, int64_t k, int64_t n) {
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
            float acc = 0.0f;
            for (int64_t p = 0; p < k; p++) acc = fmaf(A[i * k + p], B[p * n + j], acc);
            Y[i * n + j] = acc;
        }
    }
}
mj_status mj_matmul(mj_tensor **out, const mj_tensor *a, const mj_tensor *b) {
    MJ_TRY(check_args("matmul", out, a, b));
    char sa[64], sb[64];
    if (a->rank != 2 || b->rank != 2 || a->shape[1] != b->shape[0])
        return mj_fail(MJ_ERR_SHAPE, "matmul: cannot multiply %s by %s (need [m, k] @ [k, n])",
                       SHAPE(sa, a), SHAPE(sb, b));
    int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
    int64_t shape[2] = {m, n};
    mj_tensor *y;
    MJ_TRY(mj_tensor_new_uninit(&y, 2, shape));
    matmul_kernel(a->data, b->data, y->data, m, k, n);
    const mj_tensor *in[2] = {a, b};
    return finish(out, y, MJ_OP_MATMUL, 2, in, MJ_ACT_NONE);
}

mj_status mj_linear(mj_tensor **out, const mj_tensor *x, const mj_tensor *w, const mj_tensor *b) {
    MJ_TRY(check_args("linear", out, x, w));
    char sx[64], sw[64], sb[64];
    if (w->rank != 2)
        return mj_fail(MJ_ERR_SHAPE, "linear: weight must be 2-D [out, in], got %s", SHAPE(sw, w));
    int64_t in_f = w->shape[1], out_f = w->shape[0];
    if (x->shape[x->rank - 1] != in_f)
        return mj_fail(MJ_ERR_SHAPE,
                       "linear: input has shape %s but weight has shape %s (in_features %lld)",
                       SHAPE(sx, x), SHAPE(sw, w), (long long)in_f);
    if (b && (b->rank != 1 || b->shape[0] != out_f))
        return mj_fail(MJ_ERR_SHAPE, "linear: bias has shape %s but weight has shape %s (need [%lld])",
                       SHAPE(sb, b), SHAPE(sw, w), (long long)out_f);
    int64_t shape[MJ_MAX_RANK];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->rank - 1] = out_f;
    mj_tensor *y;
    MJ_TRY(mj_tensor_new_uninit(&y, x->rank, shape));
    int64_t rows = in_f ? x->numel / in_f : (out_f ? y->numel / out_f : 0);
    linear_kernel(x->data, w->data, b ? b->data : NULL, y->data, rows, in_f, out_f);
    const mj_tensor *in[3] = {x, w, b};
    return finish(out, y, MJ_OP_LINEAR, b ? 3 : 2, in, MJ_ACT_NONE);
}

/* ---- broadcasting elementwise ------------------------------------------- */
typedef enum { BIN_ADD, BIN_SUB, BIN_MUL } bin_kind;

static mj_status binary(mj_tensor **out, const mj_tensor *a, const mj_tensor *b, bin_kind kind) {
    static const char *const names[] = {"add", "sub", "mul"};
    static const int ops[] = {MJ_OP_ADD, MJ_OP_SUB, MJ_OP_MUL};
    MJ_TRY(check_args(names[kind], out, a, b));
    /* NumPy broadcasting: align right, a dim of 1 stretches. */
    int rank = a->rank > b->rank ? a->rank : b->rank;
    int64_t shape[MJ_MAX_RANK], sa[MJ_MAX_RANK], sb[MJ_MAX_RANK];
    int64_t stride_a = 1, stride_b = 1;
    for (int d = rank - 1; d >= 0; d--) {
        int da = d - (rank - a->rank), db = d - (rank - b->rank);
        int64_t na = da >= 0 ? a->shape[da] : 1, nb = db >= 0 ? b->shape[db] : 1;
        if (na != nb && na != 1 && nb != 1) {
            char s1[64], s2[64];
            return mj_fail(MJ_ERR_SHAPE, "%s: shapes %s and %s cannot be broadcast together",
                           names[kind], SHAPE(s1, a), SHAPE(s2, b));
        }
        shape[d] = na == 1 ? nb : na;
        sa[d] = na == 1 ? 0 : stride_a;
        sb[d] = nb == 1 ? 0 : stride_b;
        stride_a *= na;
        stride_b *= nb;
    }
    mj_tensor *y;
    MJ_TRY(mj_tensor_new_uninit(&y, rank, shape));
    const float *A = a->data, *B = b->data;
    float *Y = y->data;
    bool same = mj_shape_equal(a->rank, a->shape, b->rank, b->shape);
    if (same) {
        for (int64_t i = 0; i < y->numel; i++) {
            Y[i] = kind == BIN_ADD ? A[i] + B[i] : kind == BIN_SUB ? A[i] - B[i] : A[i] * B[i];
        }
    } else {
        /* Pad to rank 4 and walk the output in order. */
        int64_t n[4] = {1, 1, 1, 1}, xa[4] = {0}, xb[4] = {0};
        for (int d = 0; d < rank; d++) {
            n[4 - rank + d] = shape[d];
            xa[4 - rank + d] = sa[d];
            xb[4 - rank + d] = sb[d];
        }
        int64_t o = 0;
        for (int64_t i0 = 0; i0 < n[0]; i0++)
            for (int64_t i1 = 0; i1 < n[1]; i1++)
                for (int64_t i2 = 0; i2 < n[2]; i2++)
                    for (int64_t i3 = 0; i3 < n[3]; i3++, o++) {
                        float p = A[i0 * xa[0] + i1 * xa[1] + i2 * xa[2] + i3 * xa[3]];
                        float q = B[i0 * xb[0] + i1 * xb[1] + i2 * xb[2] + i3 * xb[3]];
                        Y[o] = kind == BIN_ADD ? p + q : kind == BIN_SUB ? p - q : p * q;
                    }
    }
    const mj_tensor *in[2] = {a, b};
    return finish(out, y, ops[kind], 2, in, MJ_ACT_NONE);
}

mj_status mj_add(mj_tensor **out, const mj_tensor *a, const mj_tensor *b) {
    return binary(out, a, b, BIN_ADD);
}
mj_status mj_sub(mj_tensor **out, const mj_tensor *a, const mj_tensor *b) {
    return binary(out, a, b, BIN_SUB);
}
mj_status mj_mul(mj_tensor **out, const mj_tensor *a, const mj_tensor *b) {
    return binary(out, a, b, BIN_MUL);
}

/* ---- layout ------------------------------------------------------------- */
mj_status mj_transpose(mj_tensor **out, const mj_tensor *x) {
    if (!out || !x) return mj_fail(MJ_ERR_INVALID, "transpose: NULL argument");
    char sx[64];
    if (x->rank != 2)
        return mj_fail(MJ_ERR_SHAPE, "transpose: input must be 2-D, got %s", SHAPE(sx, x));
    int64_t r = x->shape[0], c = x->shape[1], shape[2] = {c, r};
    mj_tensor *y;
    MJ_TRY(mj_tensor_new_uninit(&y, 2, shape));
    for (int64_t i = 0; i < r; i++)
        for (int64_t j = 0; j < c; j++) y->data[j * r + i] = x->data[i * c + j];
    return finish(out, y, MJ_OP_TRANSPOSE, 1, &x, MJ_ACT_NONE);
}

mj_status mj_reshape(mj_tensor **out, const mj_tensor *x, int rank, const int64_t *shape) {
    if (!out || !x || !shape) return mj_fail(MJ_ERR_INVALID, "reshape: NULL argument");
    if (rank < 1 || rank > MJ_MAX_RANK)
        return mj_fail(MJ_ERR_INVALID, "reshape: rank %d is outside 1..%d", rank, MJ_MAX_RANK);
    int64_t target[MJ_MAX_RANK], known = 1;
    int infer = -1;
    for (int d = 0; d < rank; d++) {
        target[d] = shape[d];
        if (shape[d] == -1) {
            if (infer >= 0) return mj_fail(MJ_ERR_INVALID, "reshape: more than one -1 in the shape");
            infer = d;
        } else if (shape[d] < 0) {
            return mj_fail(MJ_ERR_INVALID, "reshape: dimension %d is negative (%lld)", d,
                           (long long)shape[d]);
        } else if (__builtin_mul_overflow(known, shape[d], &known)) {
            return mj_fail(MJ_ERR_LIMIT, "reshape: target shape overflows");
        }
    }
    char sx[64], st[64];
    if (infer >= 0) {
        if (known == 0 || x->numel % known != 0)
            return mj_fail(MJ_ERR_SHAPE, "reshape: cannot reshape %s into %s", SHAPE(sx, x),
                           mj_shape_str(st, sizeof st, rank, shape));
        target[infer] = x->numel / known;
    } else if (known != x->numel) {
        return mj_fail(MJ_ERR_SHAPE, "reshape: cannot reshape %s (%lld elements) into %s",
                       SHAPE(sx, x), (long long)x->numel, mj_shape_str(st, sizeof st, rank, shape));
    }
    mj_tensor *y;
    MJ_TRY(mj_tensor_from_data(&y, rank, target, x->data));
    return finish(out, y, MJ_OP_RESHAPE, 1, &x, MJ_ACT_NONE);
}
