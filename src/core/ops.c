/* Eager ops: maskjit's reference semantics.
 *
 * Written as plain loops and compiled with -ffp-contract=off, so each
 * result is a fixed sequence of IEEE operations: dot products start at
 * +0.0f and add x*w for k ascending, the bias is added last, activations are
 * mj_act_apply. The interpreter calls these kernels and the JIT's exact mode
 * emits the same operations, which is what makes them bit-identical.
 *
 * Each op reports itself to the thread's observer (src/core/observer.h:
 * the tracer, while one records) after computing its output.
 */
#include <math.h>
#include <string.h>

#include "internal.h"
#include "observer.h"
#include "op.h"
#include "vmath.h"

#define SHAPE(buf, t) mj_shape_str(buf, sizeof buf, (t)->rank, (t)->shape)

/* finish() for an op with shape attributes. */
static mj_status finish_sa(mj_tensor **out, mj_tensor *y, mj_op op, int n, const mj_tensor *const *in,
                           const mj_shape_attrs *sa) {
    return mj_observe_result(out, y, op, n, in, MJ_ACT_NONE, NULL, sa);
}

/* Hands `out` to the caller after the observer (if any) has seen it
 * (with the op's attributes; NULL: none). */
static mj_status finish_attrs(mj_tensor **out, mj_tensor *y, mj_op op, int n, const mj_tensor *const *in,
                              mj_act act, const mj_attrs *attrs) {
    return mj_observe_result(out, y, op, n, in, act, attrs, NULL);
}

static mj_status finish(mj_tensor **out, mj_tensor *y, mj_op op, int n, const mj_tensor *const *in,
                        mj_act act) {
    return finish_attrs(out, y, op, n, in, act, NULL);
}

/* finish() for a result that is in's value under a new tensor. */
static mj_status finish_alias(mj_tensor **out, mj_tensor *y, const mj_tensor *in) {
    mj_status s = mj_observe_alias(in, y);
    if (s != MJ_OK) {
        mj_tensor_release(y);
        return s;
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
#define MJ_ACT(id, name, torch_class, ir_op) [MJ_ACT_##id] = name,
#include "maskjit/acts.def"
#undef MJ_ACT
};

const char *mj_act_name(mj_act act) {
    return (unsigned)act < MJ_ACT_COUNT ? act_names[act] : "?";
}

void mj_act_list(char *buf, size_t size) {
    size_t at = 0;
    buf[0] = '\0';
    for (int a = 1; a < MJ_ACT_COUNT && at < size; a++) {
        int n = snprintf(buf + at, size - at, "%s%s", a > 1 ? ", " : "", act_names[a]);
        if (n < 0) break;
        at += (size_t)n;
    }
}

mj_status mj_act_parse(const char *name, mj_act *out) {
    if (!name || !out) return mj_fail(MJ_ERR_INVALID, "activation name is NULL");
    for (int a = 0; a < MJ_ACT_COUNT; a++) {
        if (strcmp(name, act_names[a]) == 0) {
            *out = (mj_act)a;
            return MJ_OK;
        }
    }
    char list[MJ_ACT_LIST_MAX];
    mj_act_list(list, sizeof list);
    return mj_fail(MJ_ERR_INVALID, "unknown activation '%s' (expected none, %s)", name, list);
}

/* The one definition of each activation. The JIT emits exactly these
 * operations in this order (evaluation is left to right as written). */
float mj_act_apply(mj_act act, float x) {
    switch (act) {
    case MJ_ACT_NONE: return x;
    case MJ_ACT_RELU: return x < 0.0f ? 0.0f : x; /* NaN passes through */
    case MJ_ACT_GELU: return mj_geluf(x);
    case MJ_ACT_GELU_TANH:
        return 0.5f * x * (1.0f + mj_tanhf(0.79788456080286535588f * (x + 0.044715f * x * x * x)));
    case MJ_ACT_SIGMOID: return 1.0f / (1.0f + mj_expf(-x));
    case MJ_ACT_TANH: return mj_tanhf(x);
    case MJ_ACT_SILU: return x / (1.0f + mj_expf(-x));
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
    if (act == MJ_ACT_NONE) return finish_alias(out, y, x);
    return finish(out, y, mj_op_for_act(act), 1, &x, MJ_ACT_NONE);
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
mj_status mj_silu(mj_tensor **out, const mj_tensor *x) { return mj_activation(out, MJ_ACT_SILU, x); }

/* ---- matmul / linear ---------------------------------------------------- */

/* The reference dot product (docs/numerics.md): acc = +0.0f, then for k
 * ascending acc = fmaf(x[k], w[k], acc), one rounding per term, so compiled
 * code reproduces it bit for bit with FMA instructions at full speed. The
 * clones only choose how fmaf is computed (the instruction, or libm's exact
 * software fmaf on CPUs without FMA): the results are the same. */
MJ_FMA_CLONES
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

MJ_FMA_CLONES
static void matmul_kernel(const float *A, const float *B, float *Y, int64_t m, int64_t k, int64_t n) {
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
            float acc = 0.0f;
            for (int64_t p = 0; p < k; p++) acc = fmaf(A[i * k + p], B[p * n + j], acc);
            Y[i * n + j] = acc;
        }
    }
}

/* a[..., m, k] @ b[..., k, n]: the leading (batch) dims broadcast; each
 * matrix product is matmul_kernel's, the reference dot product (acc = +0.0f,
 * then acc = fmaf(a, b, acc) for k ascending). */
mj_status mj_matmul(mj_tensor **out, const mj_tensor *a, const mj_tensor *b) {
    MJ_TRY(check_args("matmul", out, a, b));
    char sa[64], sb[64];
    if (a->rank < 2 || b->rank < 2 || a->shape[a->rank - 1] != b->shape[b->rank - 2])
        return mj_fail(MJ_ERR_SHAPE, "matmul: cannot multiply %s by %s (need [..., m, k] @ [..., k, n])",
                       SHAPE(sa, a), SHAPE(sb, b));
    int64_t m = a->shape[a->rank - 2], k = a->shape[a->rank - 1], n = b->shape[b->rank - 1];
    /* batch dims, right-aligned, padded to 2 (rank <= 4) */
    int nb = (a->rank > b->rank ? a->rank : b->rank) - 2;
    int64_t shape[MJ_MAX_RANK], bs[2] = {1, 1}, as_[2] = {0, 0}, bst[2] = {0, 0};
    int64_t astride = m * k, bstride = k * n;
    for (int d = nb - 1; d >= 0; d--) {
        int da = d - (nb - (a->rank - 2)), db = d - (nb - (b->rank - 2));
        int64_t na = da >= 0 ? a->shape[da] : 1, nbd = db >= 0 ? b->shape[db] : 1;
        if (na != nbd && na != 1 && nbd != 1)
            return mj_fail(MJ_ERR_SHAPE, "matmul: the batch dims of %s and %s cannot be broadcast together",
                           SHAPE(sa, a), SHAPE(sb, b));
        shape[d] = na == 1 ? nbd : na;
        int slot = 2 - nb + d;
        bs[slot] = shape[d];
        as_[slot] = na == 1 ? 0 : astride;
        bst[slot] = nbd == 1 ? 0 : bstride;
        astride *= na;
        bstride *= nbd;
    }
    shape[nb] = m;
    shape[nb + 1] = n;
    mj_tensor *y;
    MJ_TRY(mj_tensor_new_uninit(&y, nb + 2, shape));
    float *Y = y->data;
    for (int64_t b0 = 0; b0 < bs[0]; b0++)
        for (int64_t b1 = 0; b1 < bs[1]; b1++) {
            const float *A = a->data + b0 * as_[0] + b1 * as_[1], *B = b->data + b0 * bst[0] + b1 * bst[1];
            matmul_kernel(A, B, Y, m, k, n);
            Y += m * n;
        }
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
/* The one definition of each binary elementwise op. maximum / minimum as
 * torch.maximum / torch.minimum: a NaN operand wins (the first one if
 * both), and -0 orders below +0. */
float mj_binary_apply(mj_op op, float a, float b) {
    switch (op) {
    case MJ_OP_ADD: return a + b;
    case MJ_OP_SUB: return a - b;
    case MJ_OP_MUL: return a * b;
    case MJ_OP_DIV: return a / b;
    case MJ_OP_MAXIMUM:
        return a != a ? a : b != b ? b : a > b ? a : a < b ? b : signbit(a) ? b : a;
    case MJ_OP_MINIMUM:
        return a != a ? a : b != b ? b : a < b ? a : a > b ? b : signbit(a) ? a : b;
    MJ_CASE_LEAF_OPS:
    MJ_CASE_UNARY_MATH_OPS:
    MJ_CASE_ACT_OPS:
    MJ_CASE_OTHER_OPS:
    MJ_CASE_CNN_OPS:
    case MJ_OP_COUNT: break;
    }
    MJ_ASSERT(!"not a binary elementwise op");
}

mj_status mj_binary_op(mj_tensor **out, const mj_tensor *a, const mj_tensor *b, mj_op kind) {
    const char *opname = mj_op_table[kind].name;
    MJ_TRY(check_args(opname, out, a, b));
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
                           opname, SHAPE(s1, a), SHAPE(s2, b));
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
        /* add/sub/mul in loops of their own: the eager hot path, and the
         * fold of a frozen model's mask x weight (28 MB for a BERT layer) */
        int64_t n = y->numel;
        if (kind == MJ_OP_MUL)
            for (int64_t i = 0; i < n; i++) Y[i] = A[i] * B[i];
        else if (kind == MJ_OP_ADD)
            for (int64_t i = 0; i < n; i++) Y[i] = A[i] + B[i];
        else if (kind == MJ_OP_SUB)
            for (int64_t i = 0; i < n; i++) Y[i] = A[i] - B[i];
        else
            for (int64_t i = 0; i < n; i++) Y[i] = mj_binary_apply(kind, A[i], B[i]);
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
                        Y[o] = kind == MJ_OP_ADD   ? p + q
                               : kind == MJ_OP_SUB ? p - q
                               : kind == MJ_OP_MUL ? p * q
                                                   : mj_binary_apply(kind, p, q);
                    }
    }
    const mj_tensor *in[2] = {a, b};
    return finish(out, y, (int)kind, 2, in, MJ_ACT_NONE);
}

mj_status mj_add(mj_tensor **out, const mj_tensor *a, const mj_tensor *b) { return mj_binary_op(out, a, b, MJ_OP_ADD); }
mj_status mj_sub(mj_tensor **out, const mj_tensor *a, const mj_tensor *b) { return mj_binary_op(out, a, b, MJ_OP_SUB); }
mj_status mj_mul(mj_tensor **out, const mj_tensor *a, const mj_tensor *b) { return mj_binary_op(out, a, b, MJ_OP_MUL); }

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

/* ---- the math of transformers -------------------------------------------
 * Each kernel's order of operations is written in docs/numerics.md; the
 * JIT's exact mode emits the same sequence (jit/lower.c). */

mj_status mj_div(mj_tensor **out, const mj_tensor *a, const mj_tensor *b) { return mj_binary_op(out, a, b, MJ_OP_DIV); }
mj_status mj_maximum(mj_tensor **out, const mj_tensor *a, const mj_tensor *b) { return mj_binary_op(out, a, b, MJ_OP_MAXIMUM); }
mj_status mj_minimum(mj_tensor **out, const mj_tensor *a, const mj_tensor *b) { return mj_binary_op(out, a, b, MJ_OP_MINIMUM); }

/* x op s with s as a one-element tensor: traced, it is a const f32[1]. */
static mj_status with_scalar(mj_tensor **out, const mj_tensor *x, float s, mj_op kind) {
    if (!out || !x) return mj_fail(MJ_ERR_INVALID, "%s: NULL argument", mj_op_table[kind].name);
    const int64_t one = 1;
    mj_tensor *c;
    MJ_TRY(mj_tensor_full(&c, 1, &one, s));
    mj_status st = mj_binary_op(out, x, c, kind);
    mj_tensor_release(c);
    return st;
}
mj_status mj_add_scalar(mj_tensor **out, const mj_tensor *x, float s) { return with_scalar(out, x, s, MJ_OP_ADD); }
mj_status mj_sub_scalar(mj_tensor **out, const mj_tensor *x, float s) { return with_scalar(out, x, s, MJ_OP_SUB); }
mj_status mj_mul_scalar(mj_tensor **out, const mj_tensor *x, float s) { return with_scalar(out, x, s, MJ_OP_MUL); }
mj_status mj_div_scalar(mj_tensor **out, const mj_tensor *x, float s) { return with_scalar(out, x, s, MJ_OP_DIV); }

/* The one definition of each unary elementwise op that has attributes or
 * is not an activation of mj_act (those are mj_act_apply). */
float mj_unary_apply(mj_op op, const mj_attrs *a, float x) {
    switch (op) {
    case MJ_OP_NEG: return -x;
    case MJ_OP_EXP: return mj_expf(x);
    case MJ_OP_LOG: return logf(x);
    case MJ_OP_SQRT: return sqrtf(x);
    case MJ_OP_RSQRT: return 1.0f / sqrtf(x);
    case MJ_OP_POW: {
        float e = a->f[0];
        if (e == 2.0f) return x * x;
        if (e == 3.0f) return x * x * x;
        if (e == 0.5f) return sqrtf(x);
        if (e == -0.5f) return 1.0f / sqrtf(x);
        if (e == -1.0f) return 1.0f / x;
        if (e == -2.0f) return 1.0f / (x * x);
        if (e == 1.0f) return x;
        return powf(x, e);
    }
    case MJ_OP_LEAKY_RELU: return x > 0.0f ? x : x * a->f[0];
    case MJ_OP_ELU: return x > 0.0f ? x : expm1f(x) * a->f[0];
    case MJ_OP_HARDTANH: return x < a->f[0] ? a->f[0] : x > a->f[1] ? a->f[1] : x;
    case MJ_OP_SOFTPLUS: return x * a->f[0] > a->f[1] ? x : log1pf(mj_expf(x * a->f[0])) / a->f[0];
    MJ_CASE_ACT_OPS: return mj_act_apply(mj_op_table[op].act, x);
    MJ_CASE_NOT_UNARY_OPS: break;
    }
    MJ_ASSERT(!"not a unary elementwise op");
}

static mj_status unary(mj_tensor **out, const mj_tensor *x, mj_op op, const mj_attrs *a) {
    if (!out || !x) return mj_fail(MJ_ERR_INVALID, "%s: NULL argument", mj_op_table[op].name);
    mj_tensor *y;
    MJ_TRY(mj_tensor_new_uninit(&y, x->rank, x->shape));
    for (int64_t i = 0; i < x->numel; i++) y->data[i] = mj_unary_apply(op, a, x->data[i]);
    return finish_attrs(out, y, (int)op, 1, &x, MJ_ACT_NONE, a);
}

static mj_status unary1(mj_tensor **out, const mj_tensor *x, mj_op op, float f0, float f1) {
    mj_attrs a = mj_attrs_default(op);
    a.f[0] = f0;
    a.f[1] = f1;
    return unary(out, x, op, &a);
}

mj_status mj_neg(mj_tensor **out, const mj_tensor *x) { return unary1(out, x, MJ_OP_NEG, 0, 0); }
mj_status mj_exp(mj_tensor **out, const mj_tensor *x) { return unary1(out, x, MJ_OP_EXP, 0, 0); }
mj_status mj_log(mj_tensor **out, const mj_tensor *x) { return unary1(out, x, MJ_OP_LOG, 0, 0); }
mj_status mj_sqrt(mj_tensor **out, const mj_tensor *x) { return unary1(out, x, MJ_OP_SQRT, 0, 0); }
mj_status mj_rsqrt(mj_tensor **out, const mj_tensor *x) { return unary1(out, x, MJ_OP_RSQRT, 0, 0); }
mj_status mj_pow_scalar(mj_tensor **out, const mj_tensor *x, float exponent) {
    return unary1(out, x, MJ_OP_POW, exponent, 0);
}
mj_status mj_leaky_relu(mj_tensor **out, const mj_tensor *x, float negative_slope) {
    return unary1(out, x, MJ_OP_LEAKY_RELU, negative_slope, 0);
}
mj_status mj_elu(mj_tensor **out, const mj_tensor *x, float alpha) { return unary1(out, x, MJ_OP_ELU, alpha, 0); }
mj_status mj_hardtanh(mj_tensor **out, const mj_tensor *x, float min_val, float max_val) {
    if (!(min_val <= max_val))
        return mj_fail(MJ_ERR_INVALID, "hardtanh: min_val %g must not be greater than max_val %g", (double)min_val,
                       (double)max_val);
    return unary1(out, x, MJ_OP_HARDTANH, min_val, max_val);
}
mj_status mj_relu6(mj_tensor **out, const mj_tensor *x) { return mj_hardtanh(out, x, 0.0f, 6.0f); }
mj_status mj_softplus(mj_tensor **out, const mj_tensor *x, float beta, float threshold) {
    return unary1(out, x, MJ_OP_SOFTPLUS, beta, threshold);
}

/* x viewed as [outer, n, inner] around dim d. */
typedef struct lines {
    int64_t outer, n, inner;
} lines;

static mj_status dim_lines(const char *op, const mj_tensor *x, int dim, int *d, lines *l) {
    char sx[64];
    if (dim < -x->rank || dim >= x->rank)
        return mj_fail(MJ_ERR_SHAPE, "%s: dim %d is out of range for shape %s (expected %d..%d)", op, dim,
                       SHAPE(sx, x), -x->rank, x->rank - 1);
    *d = dim < 0 ? dim + x->rank : dim;
    l->outer = l->inner = 1;
    for (int i = 0; i < *d; i++) l->outer *= x->shape[i];
    for (int i = *d + 1; i < x->rank; i++) l->inner *= x->shape[i];
    l->n = x->shape[*d];
    return MJ_OK;
}

static mj_status reduce(mj_tensor **out, const mj_tensor *x, int dim, bool keepdim, mj_op op) {
    const char *name = mj_op_table[op].name;
    if (!out || !x) return mj_fail(MJ_ERR_INVALID, "%s: NULL argument", name);
    int d;
    lines l;
    MJ_TRY(dim_lines(name, x, dim, &d, &l));
    int64_t shape[MJ_MAX_RANK];
    int rank = x->rank;
    memcpy(shape, x->shape, sizeof shape);
    if (keepdim) {
        shape[d] = 1;
    } else {
        char sx[64];
        if (rank == 1)
            return mj_fail(MJ_ERR_SHAPE, "%s: reducing %s over dim %d without keepdim would give a rank-0 tensor",
                           name, SHAPE(sx, x), dim);
        for (int i = d; i < rank - 1; i++) shape[i] = shape[i + 1];
        rank--;
    }
    mj_tensor *y;
    MJ_TRY(mj_tensor_new_uninit(&y, rank, shape));
    const float *X = x->data;
    for (int64_t o = 0; o < l.outer; o++)
        for (int64_t j = 0; j < l.inner; j++) {
            const float *line = X + o * l.n * l.inner + j;
            float acc = 0.0f;
            for (int64_t i = 0; i < l.n; i++) acc = acc + line[i * l.inner];
            y->data[o * l.inner + j] = op == MJ_OP_MEAN ? acc / (float)l.n : acc;
        }
    mj_attrs a = mj_attrs_default(op);
    a.dim = dim;
    a.keepdim = keepdim;
    return finish_attrs(out, y, (int)op, 1, &x, MJ_ACT_NONE, &a);
}

mj_status mj_sum(mj_tensor **out, const mj_tensor *x, int dim, bool keepdim) {
    return reduce(out, x, dim, keepdim, MJ_OP_SUM);
}
mj_status mj_mean(mj_tensor **out, const mj_tensor *x, int dim, bool keepdim) {
    return reduce(out, x, dim, keepdim, MJ_OP_MEAN);
}

static mj_status softmax_any(mj_tensor **out, const mj_tensor *x, int dim, mj_op op) {
    const char *name = mj_op_table[op].name;
    if (!out || !x) return mj_fail(MJ_ERR_INVALID, "%s: NULL argument", name);
    int d;
    lines l;
    MJ_TRY(dim_lines(name, x, dim, &d, &l));
    mj_tensor *y;
    MJ_TRY(mj_tensor_new_uninit(&y, x->rank, x->shape));
    for (int64_t o = 0; o < l.outer; o++)
        for (int64_t j = 0; j < l.inner && l.n > 0; j++) {
            int64_t base = o * l.n * l.inner + j, st = l.inner;
            const float *in = x->data + base;
            float *yo = y->data + base;
            float m = in[0];
            for (int64_t i = 1; i < l.n; i++) m = in[i * st] > m ? in[i * st] : m;
            float sum = 0.0f;
            if (op == MJ_OP_SOFTMAX) {
                for (int64_t i = 0; i < l.n; i++) {
                    float e = mj_expf(in[i * st] - m);
                    yo[i * st] = e;
                    sum = sum + e;
                }
                for (int64_t i = 0; i < l.n; i++) yo[i * st] = yo[i * st] / sum;
            } else {
                for (int64_t i = 0; i < l.n; i++) sum = sum + mj_expf(in[i * st] - m);
                float ls = logf(sum);
                for (int64_t i = 0; i < l.n; i++) yo[i * st] = (in[i * st] - m) - ls;
            }
        }
    mj_attrs a = mj_attrs_default(op);
    a.dim = dim;
    return finish_attrs(out, y, (int)op, 1, &x, MJ_ACT_NONE, &a);
}

mj_status mj_softmax(mj_tensor **out, const mj_tensor *x, int dim) {
    return softmax_any(out, x, dim, MJ_OP_SOFTMAX);
}
mj_status mj_log_softmax(mj_tensor **out, const mj_tensor *x, int dim) {
    return softmax_any(out, x, dim, MJ_OP_LOG_SOFTMAX);
}

mj_status mj_layer_norm(mj_tensor **out, const mj_tensor *x, const mj_tensor *w, const mj_tensor *b, float eps) {
    if (!out || !x) return mj_fail(MJ_ERR_INVALID, "layer_norm: NULL argument");
    char sx[64], sw[64];
    int64_t n = x->shape[x->rank - 1];
    if (b && !w) return mj_fail(MJ_ERR_INVALID, "layer_norm: a bias needs a weight (pass a weight of ones)");
    const mj_tensor *wb[2] = {w, b};
    for (int k = 0; k < 2; k++)
        if (wb[k] && (wb[k]->rank != 1 || wb[k]->shape[0] != n))
            return mj_fail(MJ_ERR_SHAPE, "layer_norm: %s has shape %s but x has shape %s (need [%lld])",
                           k ? "bias" : "weight", SHAPE(sw, wb[k]), SHAPE(sx, x), (long long)n);
    mj_tensor *y;
    MJ_TRY(mj_tensor_new_uninit(&y, x->rank, x->shape));
    int64_t rows = n ? x->numel / n : 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *in = x->data + r * n;
        float *yo = y->data + r * n;
        float sum = 0.0f;
        for (int64_t j = 0; j < n; j++) sum = sum + in[j];
        float mean = sum / (float)n;
        float sq = 0.0f;
        for (int64_t j = 0; j < n; j++) {
            float dv = in[j] - mean;
            sq = sq + dv * dv;
        }
        float rstd = 1.0f / sqrtf(sq / (float)n + eps);
        for (int64_t j = 0; j < n; j++) {
            float v = (in[j] - mean) * rstd;
            if (w) v = v * w->data[j];
            if (b) v = v + b->data[j];
            yo[j] = v;
        }
    }
    mj_attrs a = mj_attrs_default(MJ_OP_LAYER_NORM);
    a.f[0] = eps;
    const mj_tensor *in[3] = {x, w, b};
    return finish_attrs(out, y, MJ_OP_LAYER_NORM, b ? 3 : w ? 2 : 1, in, MJ_ACT_NONE, &a);
}

/* ---- shape ops of attention ----------------------------------------------
 * Pure data movement (no float arithmetic): every path gives the same bits. */

/* dim d of a rank-r tensor, -r <= d < r, as 0..r-1; -1 if out of range. */
static int norm_dim(int d, int r) {
    if (d < -r || d >= r) return -1;
    return d < 0 ? d + r : d;
}

/* y[o] = x[perm-mapped index]: output dim d walks input dim perm[d]. */
static mj_status permute_impl(mj_tensor **out, const mj_tensor *x, const int *perm, int op,
                              const mj_shape_attrs *sa) {
    int r = x->rank;
    int64_t shape[MJ_MAX_RANK], xs[MJ_MAX_RANK], stride = 1;
    for (int d = r - 1; d >= 0; d--) {
        xs[d] = stride;
        stride *= x->shape[d];
    }
    int64_t n[4] = {1, 1, 1, 1}, st[4] = {0, 0, 0, 0};
    for (int d = 0; d < r; d++) {
        shape[d] = x->shape[perm[d]];
        n[4 - r + d] = shape[d];
        st[4 - r + d] = xs[perm[d]];
    }
    mj_tensor *y;
    MJ_TRY(mj_tensor_new_uninit(&y, r, shape));
    float *Y = y->data;
    for (int64_t i0 = 0; i0 < n[0]; i0++)
        for (int64_t i1 = 0; i1 < n[1]; i1++)
            for (int64_t i2 = 0; i2 < n[2]; i2++)
                for (int64_t i3 = 0; i3 < n[3]; i3++)
                    *Y++ = x->data[i0 * st[0] + i1 * st[1] + i2 * st[2] + i3 * st[3]];
    return finish_sa(out, y, op, 1, &x, sa);
}

mj_status mj_transpose_dims(mj_tensor **out, const mj_tensor *x, int dim0, int dim1) {
    if (!out || !x) return mj_fail(MJ_ERR_INVALID, "transpose: NULL argument");
    char sx[64];
    int d0 = norm_dim(dim0, x->rank), d1 = norm_dim(dim1, x->rank);
    if (d0 < 0 || d1 < 0)
        return mj_fail(MJ_ERR_SHAPE, "transpose: dims %d and %d do not both fit %s (rank %d)", dim0, dim1,
                       SHAPE(sx, x), x->rank);
    if (d0 == d1) { /* nothing moves: a copy, recorded as an alias of x */
        mj_tensor *y;
        MJ_TRY(mj_tensor_clone(&y, x));
        return finish_alias(out, y, x);
    }
    int perm[MJ_MAX_RANK] = {0, 1, 2, 3};
    perm[d0] = d1;
    perm[d1] = d0;
    mj_shape_attrs sa;
    memset(&sa, 0, sizeof sa);
    sa.dim0 = (int8_t)(d0 < d1 ? d0 : d1);
    sa.dim1 = (int8_t)(d0 < d1 ? d1 : d0);
    return permute_impl(out, x, perm, MJ_OP_TRANSPOSE, &sa);
}

mj_status mj_permute(mj_tensor **out, const mj_tensor *x, int n, const int *perm) {
    if (!out || !x || !perm) return mj_fail(MJ_ERR_INVALID, "permute: NULL argument");
    char sx[64];
    if (n != x->rank)
        return mj_fail(MJ_ERR_SHAPE, "permute: %d dims given for %s (rank %d)", n, SHAPE(sx, x), x->rank);
    int p[MJ_MAX_RANK];
    bool seen[MJ_MAX_RANK] = {0};
    mj_shape_attrs sa;
    memset(&sa, 0, sizeof sa);
    for (int d = 0; d < n; d++) {
        p[d] = norm_dim(perm[d], n);
        if (p[d] < 0 || seen[p[d]])
            return mj_fail(MJ_ERR_SHAPE, "permute: entry %d (%d) makes the list not a permutation of the %d dims of %s",
                           d, perm[d], n, SHAPE(sx, x));
        seen[p[d]] = true;
        sa.perm[d] = (int8_t)p[d];
    }
    return permute_impl(out, x, p, MJ_OP_PERMUTE, &sa);
}

/* x viewed as [outer, size, inner] around dim. */
static void around(const mj_tensor *x, int dim, int64_t *outer, int64_t *inner) {
    *outer = *inner = 1;
    for (int d = 0; d < dim; d++) *outer *= x->shape[d];
    for (int d = dim + 1; d < x->rank; d++) *inner *= x->shape[d];
}

/* Python slicing x[start:end] along dim (negative counts from the end,
 * clamped to the size), step 1. */
mj_status mj_slice(mj_tensor **out, const mj_tensor *x, int dim, int64_t start, int64_t end) {
    if (!out || !x) return mj_fail(MJ_ERR_INVALID, "slice: NULL argument");
    char sx[64];
    int d = norm_dim(dim, x->rank);
    if (d < 0) return mj_fail(MJ_ERR_SHAPE, "slice: dim %d does not fit %s (rank %d)", dim, SHAPE(sx, x), x->rank);
    int64_t size = x->shape[d];
    if (start < 0) start += size;
    if (end < 0) end += size;
    start = start < 0 ? 0 : start > size ? size : start;
    end = end < start ? start : end > size ? size : end;
    int64_t shape[MJ_MAX_RANK], outer, inner;
    memcpy(shape, x->shape, sizeof shape);
    shape[d] = end - start;
    around(x, d, &outer, &inner);
    mj_tensor *y;
    MJ_TRY(mj_tensor_new_uninit(&y, x->rank, shape));
    int64_t len = (end - start) * inner;
    for (int64_t o = 0; o < outer; o++)
        if (len) memcpy(y->data + o * len, x->data + (o * size + start) * inner, (size_t)len * sizeof(float));
    mj_shape_attrs sa;
    memset(&sa, 0, sizeof sa);
    sa.dim = (int8_t)d;
    sa.start = start;
    sa.end = end;
    return finish_sa(out, y, MJ_OP_SLICE, 1, &x, &sa);
}

/* n consecutive slices of the given sizes along dim; all or nothing. */
static mj_status split_into(mj_tensor **out, const mj_tensor *x, int n, const int64_t *sizes, int dim) {
    mj_tensor *tmp[64];
    MJ_ASSERT(n <= 64);
    int64_t at = 0;
    for (int i = 0; i < n; i++) {
        mj_status s = mj_slice(&tmp[i], x, dim, at, at + sizes[i]);
        if (s != MJ_OK) {
            for (int k = 0; k < i; k++) mj_tensor_release(tmp[k]);
            return s;
        }
        at += sizes[i];
    }
    for (int i = 0; i < n; i++) out[i] = tmp[i];
    return MJ_OK;
}

mj_status mj_split_sizes(mj_tensor **out, const mj_tensor *x, int n, const int64_t *sizes, int dim) {
    if (!out || !x || !sizes) return mj_fail(MJ_ERR_INVALID, "split: NULL argument");
    char sx[64];
    int d = norm_dim(dim, x->rank);
    if (d < 0) return mj_fail(MJ_ERR_SHAPE, "split: dim %d does not fit %s (rank %d)", dim, SHAPE(sx, x), x->rank);
    if (n < 1 || n > 64) return mj_fail(MJ_ERR_INVALID, "split: %d sizes (must be 1..64)", n);
    int64_t sum = 0;
    for (int i = 0; i < n; i++) {
        if (sizes[i] < 0) return mj_fail(MJ_ERR_SHAPE, "split: size %d is negative (%lld)", i, (long long)sizes[i]);
        sum += sizes[i] > x->shape[d] ? x->shape[d] + 1 : sizes[i];
    }
    if (sum != x->shape[d])
        return mj_fail(MJ_ERR_SHAPE, "split: the sizes add up to %lld but dim %d of %s is %lld", (long long)sum, d,
                       SHAPE(sx, x), (long long)x->shape[d]);
    return split_into(out, x, n, sizes, d);
}

/* torch.split(x, split_size, dim): pieces of split_size, the last smaller. */
mj_status mj_split(mj_tensor **out, int max_out, int *n_out, const mj_tensor *x, int64_t split_size, int dim) {
    if (!out || !n_out || !x) return mj_fail(MJ_ERR_INVALID, "split: NULL argument");
    char sx[64];
    int d = norm_dim(dim, x->rank);
    if (d < 0) return mj_fail(MJ_ERR_SHAPE, "split: dim %d does not fit %s (rank %d)", dim, SHAPE(sx, x), x->rank);
    if (split_size < 1) return mj_fail(MJ_ERR_INVALID, "split: split_size is %lld (must be >= 1)", (long long)split_size);
    int64_t size = x->shape[d], n = size == 0 ? 1 : (size + split_size - 1) / split_size;
    if (n > max_out || n > 64)
        return mj_fail(MJ_ERR_INVALID, "split: %s in pieces of %lld along dim %d gives %lld tensors; room for %d",
                       SHAPE(sx, x), (long long)split_size, d, (long long)n, max_out < 64 ? max_out : 64);
    int64_t sizes[64];
    for (int64_t i = 0; i < n; i++) sizes[i] = size - i * split_size < split_size ? size - i * split_size : split_size;
    MJ_TRY(split_into(out, x, (int)n, sizes, d));
    *n_out = (int)n;
    return MJ_OK;
}

/* torch.chunk(x, chunks, dim): pieces of ceil(size / chunks); there may be
 * fewer than chunks. out has room for chunks tensors. */
mj_status mj_chunk(mj_tensor **out, int *n_out, const mj_tensor *x, int chunks, int dim) {
    if (!out || !n_out || !x) return mj_fail(MJ_ERR_INVALID, "chunk: NULL argument");
    if (chunks < 1 || chunks > 64) return mj_fail(MJ_ERR_INVALID, "chunk: chunks is %d (must be 1..64)", chunks);
    char sx[64];
    int d = norm_dim(dim, x->rank);
    if (d < 0) return mj_fail(MJ_ERR_SHAPE, "chunk: dim %d does not fit %s (rank %d)", dim, SHAPE(sx, x), x->rank);
    int64_t size = x->shape[d], piece = (size + chunks - 1) / chunks;
    return mj_split(out, chunks, n_out, x, piece < 1 ? 1 : piece, d);
}

mj_status mj_cat(mj_tensor **out, int n, const mj_tensor *const *xs, int dim) {
    if (!out || !xs || n < 1) return mj_fail(MJ_ERR_INVALID, "cat: NULL argument or no tensors");
    if (n > 8) return mj_fail(MJ_ERR_LIMIT, "cat: %d tensors (at most 8; concatenate in steps)", n);
    for (int i = 0; i < n; i++)
        if (!xs[i]) return mj_fail(MJ_ERR_INVALID, "cat: tensor %d is NULL", i);
    const mj_tensor *x = xs[0];
    char s1[64], s2[64];
    int d = norm_dim(dim, x->rank);
    if (d < 0) return mj_fail(MJ_ERR_SHAPE, "cat: dim %d does not fit %s (rank %d)", dim, SHAPE(s1, x), x->rank);
    int64_t shape[MJ_MAX_RANK];
    memcpy(shape, x->shape, sizeof shape);
    shape[d] = 0;
    for (int i = 0; i < n; i++) {
        bool ok = xs[i]->rank == x->rank;
        for (int k = 0; ok && k < x->rank; k++) ok = k == d || xs[i]->shape[k] == x->shape[k];
        if (!ok)
            return mj_fail(MJ_ERR_SHAPE, "cat: %s and %s differ outside dim %d", SHAPE(s1, x), SHAPE(s2, xs[i]), d);
        shape[d] += xs[i]->shape[d];
    }
    mj_tensor *y;
    MJ_TRY(mj_tensor_new_uninit(&y, x->rank, shape));
    int64_t outer, inner;
    around(y, d, &outer, &inner);
    int64_t row = shape[d] * inner, at = 0;
    for (int i = 0; i < n; i++) {
        int64_t len = xs[i]->shape[d] * inner;
        for (int64_t o = 0; o < outer; o++)
            if (len) memcpy(y->data + o * row + at, xs[i]->data + o * len, (size_t)len * sizeof(float));
        at += len;
    }
    mj_shape_attrs sa;
    memset(&sa, 0, sizeof sa);
    sa.dim = (int8_t)d;
    return finish_sa(out, y, MJ_OP_CAT, n, xs, &sa);
}
