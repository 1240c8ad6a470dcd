/* The layers of CNNs in eager C (maskjit/cnn.h): the reference kernels of
 * conv2d, eval batch norm and pooling, and their torch.nn modules. The
 * orders of operations are the reference (docs/numerics.md, "CNN layers").
 * Inside a trace each kernel records its IR op (src/core/ops.def) after it has
 * computed its output, like the ops of src/ops.c. */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/op.h"
#include "maskjit/cnn.h"
#include "module_impl.h"
#include "src/core/observer.h"

#define SHAPE(buf, t) mj_shape_str(buf, sizeof buf, (t)->rank, (t)->shape)

/* Hands y to the caller once the observer (the tracer, if any) has seen it. */
static mj_status finish(mj_tensor **out, mj_tensor *y, mj_op op, int n, const mj_tensor *const *in,
                        const mj_attrs *a) {
    return mj_observe_result(out, y, op, n, in, MJ_ACT_NONE, a, NULL);
}

/* The attributes of a pooling op. */
static mj_attrs pool_attrs(mj_op op, const int64_t k[2], const int64_t s[2], const int64_t p[2]) {
    mj_attrs a = mj_attrs_default(op);
    for (int i = 0; i < 2; i++) {
        a.i[MJ_POOL_KERNEL + i] = (int32_t)k[i];
        a.i[MJ_POOL_STRIDE + i] = (int32_t)s[i];
        a.i[MJ_POOL_PADDING + i] = (int32_t)p[i];
    }
    return a;
}

void mj_conv2d_params_init(mj_conv2d_params *p) {
    if (!p) return;
    for (int i = 0; i < 2; i++) {
        p->stride[i] = 1;
        p->padding[i] = 0;
        p->dilation[i] = 1;
    }
    p->groups = 1;
}

/* Each output element: acc = +0.0f, then for c, kh, kw ascending
 * acc = fmaf(x, w, acc) with x = 0.0f where the window reads padding (as
 * im2col does: a NaN or inf weight there still gives NaN), then acc + b.
 * Cloned like the linear kernel: fmaf is the instruction or libm's. */
MJ_FMA_CLONES
static void conv2d_kernel(const float *X, const float *W, const float *B, float *Y, int64_t N,
                          int64_t C, int64_t H, int64_t Wd, int64_t O, int64_t KH, int64_t KW,
                          int64_t OH, int64_t OW, const mj_conv2d_params *p) {
    int64_t cg = C / p->groups, og = O / p->groups;
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++) {
            int64_t g = o / og;
            const float *wo = W + o * cg * KH * KW;
            for (int64_t oh = 0; oh < OH; oh++)
                for (int64_t ow = 0; ow < OW; ow++) {
                    float acc = 0.0f;
                    for (int64_t c = 0; c < cg; c++) {
                        const float *xc = X + ((n * C) + g * cg + c) * H * Wd;
                        for (int64_t kh = 0; kh < KH; kh++) {
                            int64_t ih = oh * p->stride[0] - p->padding[0] + kh * p->dilation[0];
                            for (int64_t kw = 0; kw < KW; kw++) {
                                int64_t iw = ow * p->stride[1] - p->padding[1] + kw * p->dilation[1];
                                float xv = ih >= 0 && ih < H && iw >= 0 && iw < Wd ? xc[ih * Wd + iw] : 0.0f;
                                acc = fmaf(xv, wo[(c * KH + kh) * KW + kw], acc);
                            }
                        }
                    }
                    Y[((n * O + o) * OH + oh) * OW + ow] = B ? acc + B[o] : acc;
                }
        }
}

mj_status mj_conv2d(mj_tensor **out, const mj_tensor *x, const mj_tensor *w, const mj_tensor *b,
                    const mj_conv2d_params *p) {
    if (!out || !x || !w) return mj_fail(MJ_ERR_INVALID, "conv2d: NULL output, input or weight");
    mj_conv2d_params dflt;
    if (!p) {
        mj_conv2d_params_init(&dflt);
        p = &dflt;
    }
    char sx[64], sw[64], sb[64];
    for (int i = 0; i < 2; i++)
        if (p->stride[i] < 1 || p->dilation[i] < 1 || p->padding[i] < 0 || p->stride[i] > (1 << 20) ||
            p->dilation[i] > (1 << 20) || p->padding[i] > (1 << 20))
            return mj_fail(MJ_ERR_INVALID, "conv2d: stride %lld, dilation %lld must be >= 1 and "
                           "padding %lld >= 0 (and each at most 2^20)", (long long)p->stride[i],
                           (long long)p->dilation[i], (long long)p->padding[i]);
    if (x->rank != 4 || w->rank != 4)
        return mj_fail(MJ_ERR_SHAPE, "conv2d: input %s and weight %s must be 4-D "
                       "([N, C, H, W] and [out, in/groups, kh, kw])", SHAPE(sx, x), SHAPE(sw, w));
    int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], Wd = x->shape[3];
    int64_t O = w->shape[0], KH = w->shape[2], KW = w->shape[3], G = p->groups;
    if (G < 1 || C % G || O % G || w->shape[1] * G != C)
        return mj_fail(MJ_ERR_SHAPE, "conv2d: input %s, weight %s and groups %lld do not fit "
                       "(need in channels = weight dim 1 * groups, both channel counts divisible "
                       "by groups)", SHAPE(sx, x), SHAPE(sw, w), (long long)G);
    if (b && (b->rank != 1 || b->shape[0] != O))
        return mj_fail(MJ_ERR_SHAPE, "conv2d: bias %s does not match weight %s (need [%lld])",
                       SHAPE(sb, b), SHAPE(sw, w), (long long)O);
    int64_t OH = mj_window_out(H, KH, p->stride[0], p->padding[0], p->dilation[0], false);
    int64_t OW = mj_window_out(Wd, KW, p->stride[1], p->padding[1], p->dilation[1], false);
    if (OH < 1 || OW < 1 || KH < 1 || KW < 1)
        return mj_fail(MJ_ERR_SHAPE, "conv2d: kernel %lldx%lld (dilation %lldx%lld) does not fit "
                       "input %s with padding %lldx%lld", (long long)KH, (long long)KW,
                       (long long)p->dilation[0], (long long)p->dilation[1], SHAPE(sx, x),
                       (long long)p->padding[0], (long long)p->padding[1]);
    const int64_t shape[4] = {N, O, OH, OW};
    mj_tensor *y;
    MJ_TRY(mj_tensor_new_uninit(&y, 4, shape));
    conv2d_kernel(x->data, w->data, b ? b->data : NULL, y->data, N, C, H, Wd, O, KH, KW, OH, OW, p);
    mj_attrs a = mj_attrs_default(MJ_OP_CONV2D);
    for (int i = 0; i < 2; i++) {
        a.i[MJ_CONV_STRIDE + i] = (int32_t)p->stride[i];
        a.i[MJ_CONV_PADDING + i] = (int32_t)p->padding[i];
        a.i[MJ_CONV_DILATION + i] = (int32_t)p->dilation[i];
    }
    a.i[MJ_CONV_GROUPS] = (int32_t)G; /* <= C, which the IR's checks bound */
    const mj_tensor *in[3] = {x, w, b};
    return finish(out, y, MJ_OP_CONV2D, b ? 3 : 2, in, &a);
}

static bool is_channel_vector(const mj_tensor *t, int64_t c) {
    return !t || (t->rank == 1 && t->shape[0] == c);
}

mj_status mj_batch_norm(mj_tensor **out, const mj_tensor *x, const mj_tensor *mean,
                        const mj_tensor *var, const mj_tensor *weight, const mj_tensor *bias,
                        float eps) {
    if (!out || !x || !mean || !var)
        return mj_fail(MJ_ERR_INVALID, "batch_norm: NULL output, input, mean or variance");
    char sx[64];
    if (x->rank < 2)
        return mj_fail(MJ_ERR_SHAPE, "batch_norm: input %s needs a channel dim (rank >= 2)", SHAPE(sx, x));
    int64_t C = x->shape[1];
    if (!is_channel_vector(mean, C) || !is_channel_vector(var, C) || !is_channel_vector(weight, C) ||
        !is_channel_vector(bias, C))
        return mj_fail(MJ_ERR_SHAPE, "batch_norm: input %s has %lld channels; mean, var, weight "
                       "and bias must be [%lld]", SHAPE(sx, x), (long long)C, (long long)C);
    if (!(eps >= 0.0f)) return mj_fail(MJ_ERR_INVALID, "batch_norm: eps %g must be >= 0", (double)eps);
    if (bias && !weight && mj_observer()) /* the IR's operands are positional */
        return mj_fail(MJ_ERR_UNSUPPORTED, "batch_norm: a bias without a weight cannot be traced (pass a weight "
                       "of ones)");
    mj_tensor *y;
    MJ_TRY(mj_tensor_new_uninit(&y, x->rank, x->shape));
    int64_t inner = 1;
    for (int d = 2; d < x->rank; d++) inner *= x->shape[d];
    int64_t outer = x->shape[0];
    for (int64_t c = 0; c < C; c++) {
        float alpha = (weight ? weight->data[c] : 1.0f) / sqrtf(var->data[c] + eps);
        float beta = (bias ? bias->data[c] : 0.0f) - mean->data[c] * alpha;
        for (int64_t n = 0; n < outer; n++) {
            const float *xs = x->data + (n * C + c) * inner;
            float *ys = y->data + (n * C + c) * inner;
            for (int64_t i = 0; i < inner; i++) ys[i] = fmaf(xs[i], alpha, beta);
        }
    }
    mj_attrs a = mj_attrs_default(MJ_OP_BATCH_NORM);
    a.f[0] = eps;
    const mj_tensor *in[5] = {x, mean, var, weight, bias};
    return finish(out, y, MJ_OP_BATCH_NORM, bias ? 5 : weight ? 4 : 3, in, &a);
}

/* Validates a pooling window; fills OH, OW. */
static mj_status pool_geometry(const char *op, const mj_tensor *x, const int64_t k[2],
                               const int64_t s[2], const int64_t p[2], bool ceil, int64_t *oh, int64_t *ow) {
    char sx[64];
    if (!x || x->rank != 4)
        return mj_fail(MJ_ERR_SHAPE, "%s: input %s must be 4-D [N, C, H, W]", op,
                       x ? SHAPE(sx, x) : "NULL");
    for (int i = 0; i < 2; i++) {
        if (k[i] < 1 || s[i] < 1 || p[i] < 0 || k[i] > (1 << 20) || s[i] > (1 << 20))
            return mj_fail(MJ_ERR_INVALID, "%s: kernel %lld and stride %lld must be >= 1, padding "
                           "%lld >= 0", op, (long long)k[i], (long long)s[i], (long long)p[i]);
        if (2 * p[i] > k[i])
            return mj_fail(MJ_ERR_INVALID, "%s: padding %lld must be at most half the kernel %lld "
                           "(as in PyTorch)", op, (long long)p[i], (long long)k[i]);
    }
    *oh = mj_window_out(x->shape[2], k[0], s[0], p[0], 1, ceil);
    *ow = mj_window_out(x->shape[3], k[1], s[1], p[1], 1, ceil);
    if (*oh < 1 || *ow < 1)
        return mj_fail(MJ_ERR_SHAPE, "%s: window %lldx%lld does not fit input %s", op,
                       (long long)k[0], (long long)k[1], SHAPE(sx, x));
    return MJ_OK;
}

/* Checks a pooling call and allocates its output [N, C, OH, OW]. */
static mj_status pool_begin(const char *op, mj_tensor **out, const mj_tensor *x, const int64_t k[2],
                            const int64_t s[2], const int64_t p[2], bool ceil, int64_t *oh, int64_t *ow,
                            mj_tensor **y) {
    if (!out || !k || !s || !p) return mj_fail(MJ_ERR_INVALID, "%s: NULL output or window", op);
    MJ_TRY(pool_geometry(op, x, k, s, p, ceil, oh, ow));
    const int64_t shape[4] = {x->shape[0], x->shape[1], *oh, *ow};
    return mj_tensor_new_uninit(y, 4, shape);
}

/* Output (oh, ow)'s window clipped to the input: rows [r[0], r[1]), columns
 * [r[2], r[3]), walked in row order by both pools. Returns its size clipped
 * to the padded input only: PyTorch's avg_pool2d divisor with padding. */
static int64_t pool_window(int64_t oh, int64_t ow, const int64_t kernel[2], const int64_t stride[2],
                           const int64_t padding[2], int64_t H, int64_t W, int64_t r[4]) {
    int64_t h0 = oh * stride[0] - padding[0], w0 = ow * stride[1] - padding[1];
    int64_t h1 = h0 + kernel[0] < H + padding[0] ? h0 + kernel[0] : H + padding[0];
    int64_t w1 = w0 + kernel[1] < W + padding[1] ? w0 + kernel[1] : W + padding[1];
    int64_t pool = (h1 - h0) * (w1 - w0);
    r[0] = h0 < 0 ? 0 : h0;
    r[1] = h1 > H ? H : h1;
    r[2] = w0 < 0 ? 0 : w0;
    r[3] = w1 > W ? W : w1;
    return pool;
}

/* Both pools: one walk over the windows, the reduction per op. With
 * ceil, the last windows may hang over the input's end (and its padding):
 * they are clipped like the others. */
static mj_status pool2d(mj_op op, mj_tensor **out, const mj_tensor *x, const int64_t kernel[2],
                        const int64_t stride[2], const int64_t padding[2], bool count_include_pad, bool ceil) {
    int64_t OH = 0, OW = 0; /* set by pool_begin; GCC cannot see it through the op table name */
    mj_tensor *y;
    MJ_TRY(pool_begin(mj_op_table[op].name, out, x, kernel, stride, padding, ceil, &OH, &OW, &y));
    int64_t NC = x->shape[0] * x->shape[1], H = x->shape[2], W = x->shape[3];
    for (int64_t nc = 0; nc < NC; nc++) {
        const float *xs = x->data + nc * H * W;
        for (int64_t oh = 0; oh < OH; oh++)
            for (int64_t ow = 0; ow < OW; ow++) {
                int64_t r[4], pool = pool_window(oh, ow, kernel, stride, padding, H, W, r);
                float v;
                if (op == MJ_OP_MAX_POOL2D) { /* NaN wins: the first one, where eager stops */
                    v = -INFINITY;
                    for (int64_t ih = r[0]; ih < r[1] && !isnan(v); ih++)
                        for (int64_t iw = r[2]; iw < r[3]; iw++) {
                            float e = xs[ih * W + iw];
                            if (e > v || isnan(e)) v = e;
                            if (isnan(v)) break;
                        }
                } else {
                    float sum = 0.0f;
                    for (int64_t ih = r[0]; ih < r[1]; ih++)
                        for (int64_t iw = r[2]; iw < r[3]; iw++) sum = sum + xs[ih * W + iw];
                    int64_t div = count_include_pad ? pool : (r[1] - r[0]) * (r[3] - r[2]);
                    v = sum / (float)div;
                }
                y->data[(nc * OH + oh) * OW + ow] = v;
            }
    }
    mj_attrs a = pool_attrs(op, kernel, stride, padding);
    if (op == MJ_OP_AVG_POOL2D) a.i[MJ_POOL_COUNT_PAD] = count_include_pad;
    a.i[MJ_POOL_CEIL] = ceil;
    return finish(out, y, op, 1, &x, &a);
}

mj_status mj_pool2d(mj_tensor **out, const mj_tensor *x, const mj_pool2d_params *p) {
    if (!p) return mj_fail(MJ_ERR_INVALID, "pool2d: NULL parameters");
    return pool2d(p->max ? MJ_OP_MAX_POOL2D : MJ_OP_AVG_POOL2D, out, x, p->kernel, p->stride, p->padding,
                  !p->max && p->count_include_pad, p->ceil_mode);
}

mj_status mj_max_pool2d(mj_tensor **out, const mj_tensor *x, const int64_t kernel[2],
                        const int64_t stride[2], const int64_t padding[2]) {
    return pool2d(MJ_OP_MAX_POOL2D, out, x, kernel, stride, padding, false, false);
}

mj_status mj_avg_pool2d(mj_tensor **out, const mj_tensor *x, const int64_t kernel[2],
                        const int64_t stride[2], const int64_t padding[2], bool count_include_pad) {
    return pool2d(MJ_OP_AVG_POOL2D, out, x, kernel, stride, padding, count_include_pad, false);
}

mj_status mj_adaptive_avg_pool2d(mj_tensor **out, const mj_tensor *x, int64_t oh_n, int64_t ow_n) {
    char sx[64];
    if (!out) return mj_fail(MJ_ERR_INVALID, "adaptive_avg_pool2d: NULL output");
    if (!x || x->rank != 4)
        return mj_fail(MJ_ERR_SHAPE, "adaptive_avg_pool2d: input %s must be 4-D [N, C, H, W]",
                       x ? SHAPE(sx, x) : "NULL");
    if (oh_n < 1 || ow_n < 1 || oh_n > (1 << 20) || ow_n > (1 << 20))
        return mj_fail(MJ_ERR_INVALID, "adaptive_avg_pool2d: output size %lldx%lld must be >= 1",
                       (long long)oh_n, (long long)ow_n);
    int64_t NC = x->shape[0] * x->shape[1], H = x->shape[2], W = x->shape[3];
    if (H < 1 || W < 1)
        return mj_fail(MJ_ERR_SHAPE, "adaptive_avg_pool2d: input %s is empty", SHAPE(sx, x));
    const int64_t shape[4] = {x->shape[0], x->shape[1], oh_n, ow_n};
    mj_tensor *y;
    MJ_TRY(mj_tensor_new_uninit(&y, 4, shape));
    for (int64_t nc = 0; nc < NC; nc++) {
        const float *xs = x->data + nc * H * W;
        for (int64_t oh = 0; oh < oh_n; oh++) {
            int64_t h0 = oh * H / oh_n, h1 = ((oh + 1) * H + oh_n - 1) / oh_n;
            for (int64_t ow = 0; ow < ow_n; ow++) {
                int64_t w0 = ow * W / ow_n, w1 = ((ow + 1) * W + ow_n - 1) / ow_n;
                float sum = 0.0f;
                for (int64_t ih = h0; ih < h1; ih++)
                    for (int64_t iw = w0; iw < w1; iw++) sum = sum + xs[ih * W + iw];
                y->data[(nc * oh_n + oh) * ow_n + ow] = sum / (float)((h1 - h0) * (w1 - w0));
            }
        }
    }
    mj_attrs a = mj_attrs_default(MJ_OP_ADAPTIVE_AVG_POOL2D);
    a.i[0] = (int32_t)oh_n;
    a.i[1] = (int32_t)ow_n;
    return finish(out, y, MJ_OP_ADAPTIVE_AVG_POOL2D, 1, &x, &a);
}

/* ---- modules ------------------------------------------------------------- */

typedef struct cnn_cfg {
    mj_conv2d_params conv;
    int64_t kernel[2], stride[2], padding[2];
    int64_t out_hw[2];
    bool count_include_pad, ceil_mode;
    float eps;
} cnn_cfg;

/* Appends to m's extra_repr (PyTorch's text for the layer; cut short if
 * some value is absurdly long, never overrun). */
static void repr_add(mj_module *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void repr_add(mj_module *m, const char *fmt, ...) {
    size_t used = strlen(m->extra_repr);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->extra_repr + used, sizeof m->extra_repr - used, fmt, ap);
    va_end(ap);
}

/* A pair as PyTorch prints it: "(3, 3)" for a conv (it stores tuples), and
 * for the pools, which keep what they were given, "2" when both are equal
 * (the common way to write them). */
static void repr_pair(mj_module *m, const char *name, const int64_t v[2], bool as_tuple) {
    if (!as_tuple && v[0] == v[1]) repr_add(m, "%s=%lld", name, (long long)v[0]);
    else repr_add(m, "%s=(%lld, %lld)", name, (long long)v[0], (long long)v[1]);
}

static void conv_repr(mj_module *m, int64_t in_ch, int64_t out_ch, const int64_t kernel[2],
                      const mj_conv2d_params *p, bool bias) {
    repr_add(m, "%lld, %lld, ", (long long)in_ch, (long long)out_ch);
    repr_pair(m, "kernel_size", kernel, true);
    repr_pair(m, ", stride", p->stride, true);
    if (p->padding[0] || p->padding[1]) repr_pair(m, ", padding", p->padding, true);
    if (p->dilation[0] != 1 || p->dilation[1] != 1) repr_pair(m, ", dilation", p->dilation, true);
    if (p->groups != 1) repr_add(m, ", groups=%lld", (long long)p->groups);
    if (!bias) repr_add(m, ", bias=False");
}

static void pool_repr(mj_module *m, const cnn_cfg *c, bool max) {
    repr_pair(m, "kernel_size", c->kernel, false);
    repr_pair(m, ", stride", c->stride, false);
    repr_pair(m, ", padding", c->padding, false);
    if (max) repr_add(m, ", dilation=1, ceil_mode=%s", c->ceil_mode ? "True" : "False");
}

static mj_status new_module(mj_module **out, const char *type, mj_forward_fn fwd, const cnn_cfg *cfg) {
    cnn_cfg *c = malloc(sizeof *c);
    if (!c) return mj_fail(MJ_ERR_NOMEM, "%s: out of memory", type);
    *c = *cfg;
    mj_status s = mj_module_new(out, type, fwd, c, free);
    if (s != MJ_OK) free(c);
    return s;
}

static mj_status conv_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    const cnn_cfg *c = mj_module_user(self);
    mj_tensor *w = NULL, *b = NULL;
    MJ_TRY(mj_module_get(self, "weight", &w)); /* mask * original when parametrized */
    bool has_bias = mj_module_find_param(self, "bias", NULL) || mj_module_entry(self, "bias");
    mj_status s = has_bias ? mj_module_get(self, "bias", &b) : MJ_OK;
    if (s == MJ_OK) s = mj_conv2d(y, x, w, b, &c->conv);
    mj_tensor_release(w);
    mj_tensor_release(b);
    return s;
}

mj_status mj_conv2d_new(mj_module **out, int64_t in_ch, int64_t out_ch, const int64_t kernel[2],
                        const mj_conv2d_params *p, bool bias, mj_rng *rng) {
    if (!out || !kernel || !rng) return mj_fail(MJ_ERR_INVALID, "Conv2d: NULL out, kernel or rng");
    cnn_cfg cfg = {0};
    if (p) cfg.conv = *p;
    else mj_conv2d_params_init(&cfg.conv);
    int64_t G = cfg.conv.groups;
    if (in_ch < 1 || out_ch < 1 || G < 1 || in_ch % G || out_ch % G || kernel[0] < 1 || kernel[1] < 1 ||
        kernel[0] > 4096 || kernel[1] > 4096)
        return mj_fail(MJ_ERR_INVALID, "Conv2d: in_channels %lld and out_channels %lld must be "
                       "positive multiples of groups %lld, kernel %lldx%lld >= 1", (long long)in_ch,
                       (long long)out_ch, (long long)G, (long long)kernel[0], (long long)kernel[1]);
    for (int i = 0; i < 2; i++)
        if (cfg.conv.stride[i] < 1 || cfg.conv.dilation[i] < 1 || cfg.conv.padding[i] < 0)
            return mj_fail(MJ_ERR_INVALID, "Conv2d: stride and dilation must be >= 1, padding >= 0");
    const int64_t wshape[4] = {out_ch, in_ch / G, kernel[0], kernel[1]};
    int64_t numel;
    MJ_TRY(mj_shape_numel(4, wshape, &numel));
    float bound = (float)(1.0 / sqrt((double)(in_ch / G * kernel[0] * kernel[1])));
    mj_module *m = NULL;
    mj_status s = new_module(&m, "Conv2d", conv_forward, &cfg);
    if (s == MJ_OK) conv_repr(m, in_ch, out_ch, kernel, &cfg.conv, bias);
    if (s == MJ_OK) s = mj_module_add_uniform(m, 4, wshape, bias, bound, rng);
    return mj_module_finish(m, s, out);
}

static mj_status bn_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    const cnn_cfg *c = mj_module_user(self);
    mj_tensor *w = NULL, *b = NULL, *mean = NULL, *var = NULL;
    mj_status s = mj_module_get(self, "weight", &w);
    if (s == MJ_OK) s = mj_module_get(self, "bias", &b);
    if (s == MJ_OK) s = mj_module_get(self, "running_mean", &mean);
    if (s == MJ_OK) s = mj_module_get(self, "running_var", &var);
    if (s == MJ_OK) s = mj_batch_norm(y, x, mean, var, w, b, c->eps);
    mj_tensor_release(w);
    mj_tensor_release(b);
    mj_tensor_release(mean);
    mj_tensor_release(var);
    return s;
}

mj_status mj_batch_norm2d_new(mj_module **out, int64_t num_features, float eps) {
    if (!out) return mj_fail(MJ_ERR_INVALID, "BatchNorm2d: out is NULL");
    if (num_features < 1 || num_features > (INT64_C(1) << 32) || !(eps >= 0.0f))
        return mj_fail(MJ_ERR_INVALID, "BatchNorm2d: num_features %lld must be >= 1 and eps %g >= 0",
                       (long long)num_features, (double)eps);
    cnn_cfg cfg = {.eps = eps};
    mj_module *m = NULL;
    mj_tensor *t[4] = {NULL};
    mj_status s = new_module(&m, "BatchNorm2d", bn_forward, &cfg);
    if (s == MJ_OK) { /* PyTorch's, without momentum: an eval-only norm has none */
        char e[32];
        mj_py_float(e, sizeof e, eps);
        repr_add(m, "%lld, eps=%s, affine=True, track_running_stats=True", (long long)num_features, e);
    }
    if (s == MJ_OK) s = mj_tensor_ones(&t[0], 1, &num_features);
    if (s == MJ_OK) s = mj_tensor_zeros(&t[1], 1, &num_features);
    if (s == MJ_OK) s = mj_tensor_zeros(&t[2], 1, &num_features);
    if (s == MJ_OK) s = mj_tensor_ones(&t[3], 1, &num_features);
    if (s == MJ_OK) s = mj_module_add_parameter(m, "weight", t[0]);
    if (s == MJ_OK) s = mj_module_add_parameter(m, "bias", t[1]);
    if (s == MJ_OK) s = mj_module_add_buffer(m, "running_mean", t[2], true);
    if (s == MJ_OK) s = mj_module_add_buffer(m, "running_var", t[3], true);
    for (int i = 0; i < 4; i++) mj_tensor_release(t[i]);
    return mj_module_finish(m, s, out);
}

static mj_status pool_forward(mj_module *self, const mj_tensor *x, mj_tensor **y, bool max) {
    const cnn_cfg *c = mj_module_user(self);
    mj_pool2d_params p = {.max = max, .ceil_mode = c->ceil_mode, .count_include_pad = c->count_include_pad};
    for (int i = 0; i < 2; i++) {
        p.kernel[i] = c->kernel[i];
        p.stride[i] = c->stride[i];
        p.padding[i] = c->padding[i];
    }
    return mj_pool2d(y, x, &p);
}

static mj_status maxpool_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    return pool_forward(self, x, y, true);
}

static mj_status avgpool_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    return pool_forward(self, x, y, false);
}

static mj_status adaptive_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    const cnn_cfg *c = mj_module_user(self);
    return mj_adaptive_avg_pool2d(y, x, c->out_hw[0], c->out_hw[1]);
}

static mj_status pool_cfg(const char *type, const int64_t kernel[2], const int64_t stride[2],
                          const int64_t padding[2], cnn_cfg *cfg) {
    if (!kernel) return mj_fail(MJ_ERR_INVALID, "%s: kernel is NULL", type);
    for (int i = 0; i < 2; i++) {
        cfg->kernel[i] = kernel[i];
        cfg->stride[i] = stride ? stride[i] : kernel[i];
        cfg->padding[i] = padding ? padding[i] : 0;
        if (cfg->kernel[i] < 1 || cfg->stride[i] < 1 || cfg->padding[i] < 0 ||
            2 * cfg->padding[i] > cfg->kernel[i])
            return mj_fail(MJ_ERR_INVALID, "%s: kernel %lld and stride %lld must be >= 1, padding "
                           "%lld between 0 and half the kernel", type, (long long)cfg->kernel[i],
                           (long long)cfg->stride[i], (long long)cfg->padding[i]);
    }
    return MJ_OK;
}

mj_status mj_max_pool2d_new(mj_module **out, const int64_t kernel[2], const int64_t stride[2],
                            const int64_t padding[2]) {
    if (!out) return mj_fail(MJ_ERR_INVALID, "MaxPool2d: out is NULL");
    cnn_cfg cfg = {0};
    MJ_TRY(pool_cfg("MaxPool2d", kernel, stride, padding, &cfg));
    MJ_TRY(new_module(out, "MaxPool2d", maxpool_forward, &cfg));
    pool_repr(*out, &cfg, true);
    return MJ_OK;
}

mj_status mj_pool2d_new(mj_module **out, const mj_pool2d_params *p) {
    const char *type = p && p->max ? "MaxPool2d" : "AvgPool2d";
    if (!out || !p) return mj_fail(MJ_ERR_INVALID, "%s: out or parameters NULL", type);
    cnn_cfg cfg = {.count_include_pad = !p->max && p->count_include_pad, .ceil_mode = p->ceil_mode};
    MJ_TRY(pool_cfg(type, p->kernel, p->stride, p->padding, &cfg));
    MJ_TRY(new_module(out, type, p->max ? maxpool_forward : avgpool_forward, &cfg));
    pool_repr(*out, &cfg, p->max);
    return MJ_OK;
}

mj_status mj_avg_pool2d_new(mj_module **out, const int64_t kernel[2], const int64_t stride[2],
                            const int64_t padding[2], bool count_include_pad) {
    if (!out) return mj_fail(MJ_ERR_INVALID, "AvgPool2d: out is NULL");
    cnn_cfg cfg = {.count_include_pad = count_include_pad};
    MJ_TRY(pool_cfg("AvgPool2d", kernel, stride, padding, &cfg));
    MJ_TRY(new_module(out, "AvgPool2d", avgpool_forward, &cfg));
    pool_repr(*out, &cfg, false);
    return MJ_OK;
}

mj_status mj_adaptive_avg_pool2d_new(mj_module **out, int64_t oh, int64_t ow) {
    if (!out) return mj_fail(MJ_ERR_INVALID, "AdaptiveAvgPool2d: out is NULL");
    if (oh < 1 || ow < 1 || oh > (1 << 20) || ow > (1 << 20))
        return mj_fail(MJ_ERR_INVALID, "AdaptiveAvgPool2d: output size %lldx%lld must be >= 1",
                       (long long)oh, (long long)ow);
    cnn_cfg cfg = {.out_hw = {oh, ow}};
    MJ_TRY(new_module(out, "AdaptiveAvgPool2d", adaptive_forward, &cfg));
    repr_pair(*out, "output_size", cfg.out_hw, false);
    return MJ_OK;
}
