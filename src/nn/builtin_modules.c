/* Built-in modules: Linear, Sequential, the activations and the modules of
 * transformer blocks (torch.nn). */
#include <math.h>
#include <string.h>

#include "module_impl.h"

/* ---- Linear ------------------------------------------------------------- */

static mj_status linear_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    int64_t in = self->in_features;
    if (mj_tensor_rank(x) < 1 || mj_tensor_dim(x, -1) != in) {
        char xs[96], ws[64];
        const int64_t wshape[2] = {self->out_features, in};
        return mj_fail(MJ_ERR_SHAPE, "Linear: x has shape %s but weight has shape %s (in_features %lld)",
                       mj_shape_str(xs, sizeof xs, mj_tensor_rank(x), mj_tensor_shape(x)),
                       mj_shape_str(ws, sizeof ws, 2, wshape), (long long)in);
    }
    /* Through mj_module_get so a parametrized weight (mask * original) is
     * computed with tensor ops the tracer records. */
    mj_tensor *w = NULL, *b = NULL;
    MJ_TRY(mj_module_get(self, "weight", &w));
    bool has_bias = mj_module_find_param(self, "bias", NULL) || mj_module_entry(self, "bias");
    mj_status s = has_bias ? mj_module_get(self, "bias", &b) : MJ_OK;
    if (s == MJ_OK) s = mj_linear(y, x, w, b);
    mj_tensor_release(w);
    mj_tensor_release(b);
    return s;
}

mj_status mj_fill_uniform(int rank, const int64_t *shape, float bound, mj_rng *rng, mj_tensor **out) {
    mj_tensor *t;
    MJ_TRY(mj_tensor_zeros(&t, rank, shape));
    float *d = mj_tensor_data_mut(t);
    int64_t n = mj_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) d[i] = (2.0f * mj_rng_uniform(rng) - 1.0f) * bound;
    *out = t;
    return MJ_OK;
}

mj_status mj_module_add_uniform(mj_module *m, int wrank, const int64_t *wshape, bool bias, float bound,
                                mj_rng *rng) {
    mj_tensor *w = NULL, *b = NULL;
    mj_status s = mj_fill_uniform(wrank, wshape, bound, rng, &w);
    if (s == MJ_OK) s = mj_module_add_parameter(m, "weight", w);
    if (s == MJ_OK && bias) s = mj_fill_uniform(1, &wshape[0], bound, rng, &b);
    if (s == MJ_OK && bias) s = mj_module_add_parameter(m, "bias", b);
    mj_tensor_release(w);
    mj_tensor_release(b);
    return s;
}

mj_status mj_module_finish(mj_module *m, mj_status s, mj_module **out) {
    if (s != MJ_OK) {
        mj_module_free(m);
        return s;
    }
    *out = m;
    return MJ_OK;
}

mj_status mj_linear_new(mj_module **out, int64_t in_features, int64_t out_features, bool bias,
                        mj_rng *rng) {
    if (!out || !rng)
        return mj_fail(MJ_ERR_INVALID, "mj_linear_new: %s is NULL", !out ? "out" : "rng");
    if (in_features < 1 || out_features < 1)
        return mj_fail(MJ_ERR_INVALID,
                       "Linear: in_features (%lld) and out_features (%lld) must be >= 1",
                       (long long)in_features, (long long)out_features);
    const int64_t wshape[2] = {out_features, in_features};
    int64_t numel;
    MJ_TRY(mj_shape_numel(2, wshape, &numel));

    mj_module *m;
    MJ_TRY(mj_module_alloc(&m, "Linear", MJ_KIND_LINEAR, linear_forward));
    m->in_features = in_features;
    m->out_features = out_features;
    /* torch.nn.Linear.reset_parameters: kaiming_uniform(a=sqrt(5)) on the
     * weight and the bias both reduce to U(-1/sqrt(in), 1/sqrt(in)). */
    float bound = (float)(1.0 / sqrt((double)in_features));
    return mj_module_finish(m, mj_module_add_uniform(m, 2, wshape, bias, bound, rng), out);
}

/* ---- Sequential --------------------------------------------------------- */

static mj_status sequential_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    if (self->n_children == 0) { /* nn.Sequential() returns its input */
        *y = mj_tensor_retain((mj_tensor *)x);
        return MJ_OK;
    }
    mj_tensor *h = NULL;
    for (int32_t i = 0; i < self->n_children; i++) {
        mj_tensor *next = NULL;
        mj_status s = mj_module_forward(self->children[i].m, h ? h : x, &next);
        mj_tensor_release(h); /* intermediates die as soon as they are consumed */
        if (s != MJ_OK)
            return mj_fail_prefix(s, "Sequential child '%s' (%s)", self->children[i].name,
                                  self->children[i].m->type_name);
        h = next;
    }
    *y = h;
    return MJ_OK;
}

mj_status mj_sequential_new(mj_module **out, int n, mj_module *const *children) {
    if (!out) return mj_fail(MJ_ERR_INVALID, "mj_sequential_new: out is NULL");
    if (n < 0 || (n > 0 && !children))
        return mj_fail(MJ_ERR_INVALID, "mj_sequential_new: %d children from %s", n,
                       children ? "an array" : "NULL");
    for (int i = 0; i < n; i++) {
        if (!children[i]) return mj_fail(MJ_ERR_INVALID, "Sequential: child %d is NULL", i);
        if (children[i]->parent)
            return mj_fail(MJ_ERR_STATE, "Sequential: child %d (%s) already belongs to a %s", i,
                           children[i]->type_name, children[i]->parent->type_name);
        for (int j = 0; j < i; j++)
            if (children[j] == children[i])
                return mj_fail(MJ_ERR_INVALID, "Sequential: child %d is the same module as child %d",
                               i, j);
    }
    mj_module *m;
    MJ_TRY(mj_module_alloc(&m, "Sequential", MJ_KIND_SEQUENTIAL, sequential_forward));
    for (int i = 0; i < n; i++) {
        char name[16];
        snprintf(name, sizeof name, "%d", i);
        mj_status s = mj_module_add_child(m, name, children[i]);
        if (s != MJ_OK) {
            /* Ownership passes only on success: hand the children back. */
            for (int32_t j = 0; j < m->n_children; j++) m->children[j].m->parent = NULL;
            m->n_children = 0;
            mj_module_free(m);
            return s;
        }
    }
    *out = m;
    return MJ_OK;
}

/* ---- activations -------------------------------------------------------- */

static mj_status activation_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    return mj_activation(y, self->act, x);
}

mj_status mj_activation_module_new(mj_module **out, mj_act act) {
    if (!out) return mj_fail(MJ_ERR_INVALID, "mj_activation_module_new: out is NULL");
    static const char *const torch_class[MJ_ACT_COUNT] = {
#define MJ_ACT(id, name, torch_class, ir_op) [MJ_ACT_##id] = torch_class,
#include "maskjit/acts.def"
#undef MJ_ACT
    };
    if ((unsigned)act >= MJ_ACT_COUNT) return mj_fail(MJ_ERR_INVALID, "unknown activation %d", (int)act);
    mj_module *m;
    MJ_TRY(mj_module_alloc(&m, torch_class[act], MJ_KIND_ACTIVATION, activation_forward));
    m->act = act;
    *out = m;
    return MJ_OK;
}

bool mj_activation_module_act(const mj_module *m, mj_act *out) {
    if (!m || m->kind != MJ_KIND_ACTIVATION) return false;
    if (out) *out = m->act;
    return true;
}

/* ---- the modules of transformer blocks ----------------------------------- */

void mj_py_float(char *buf, size_t size, float v) {
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, size, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    if (!strpbrk(buf, ".eninf")) { /* Python shows 1.0, not 1 */
        size_t n = strlen(buf);
        if (n + 2 < size) memcpy(buf + n, ".0", 3);
    }
}

static mj_status math_alloc(mj_module **out, mj_module **m, const char *name, mj_forward_fn forward) {
    if (!out) return mj_fail(MJ_ERR_INVALID, "%s: out is NULL", name);
    return mj_module_alloc(m, name, MJ_KIND_MATH, forward);
}

static mj_status layer_norm_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    int64_t n = self->in_features;
    if (mj_tensor_rank(x) < 1 || mj_tensor_dim(x, -1) != n) {
        char xs[96];
        return mj_fail(MJ_ERR_SHAPE, "LayerNorm: x has shape %s but normalized_shape is (%lld,)",
                       mj_shape_str(xs, sizeof xs, mj_tensor_rank(x), mj_tensor_shape(x)), (long long)n);
    }
    mj_tensor *w = NULL, *b = NULL;
    bool has_w = mj_module_find_param(self, "weight", NULL) || mj_module_entry(self, "weight");
    bool has_b = mj_module_find_param(self, "bias", NULL) || mj_module_entry(self, "bias");
    mj_status s = has_w ? mj_module_get(self, "weight", &w) : MJ_OK;
    if (s == MJ_OK && has_b) s = mj_module_get(self, "bias", &b);
    if (s == MJ_OK) s = mj_layer_norm(y, x, w, b, self->fp[0]);
    mj_tensor_release(w);
    mj_tensor_release(b);
    return s;
}

mj_status mj_layer_norm_new(mj_module **out, int64_t n, float eps, bool elementwise_affine, bool bias) {
    if (n < 1 || n > MJ_MAX_NUMEL)
        return mj_fail(MJ_ERR_INVALID, "LayerNorm: normalized_shape %lld must be >= 1", (long long)n);
    mj_module *m;
    MJ_TRY(math_alloc(out, &m, "LayerNorm", layer_norm_forward));
    m->in_features = m->out_features = n;
    m->fp[0] = eps;
    char e[32];
    mj_py_float(e, sizeof e, eps);
    snprintf(m->extra_repr, sizeof m->extra_repr, "(%lld,), eps=%s, elementwise_affine=%s", (long long)n, e,
             elementwise_affine ? "True" : "False");
    mj_tensor *w = NULL, *b = NULL;
    mj_status s = MJ_OK;
    if (elementwise_affine) { /* reset_parameters: ones and zeros; bias only matters with affine */
        s = mj_tensor_ones(&w, 1, &n);
        if (s == MJ_OK) s = mj_module_add_parameter(m, "weight", w);
        if (s == MJ_OK && bias) s = mj_tensor_zeros(&b, 1, &n);
        if (s == MJ_OK && bias) s = mj_module_add_parameter(m, "bias", b);
    }
    mj_tensor_release(w);
    mj_tensor_release(b);
    return mj_module_finish(m, s, out);
}

static mj_status softmax_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    return self->ip[1] ? mj_log_softmax(y, x, self->ip[0]) : mj_softmax(y, x, self->ip[0]);
}

static mj_status softmax_new(mj_module **out, int dim, bool log) {
    mj_module *m;
    MJ_TRY(math_alloc(out, &m, log ? "LogSoftmax" : "Softmax", softmax_forward));
    m->ip[0] = dim;
    m->ip[1] = log;
    snprintf(m->extra_repr, sizeof m->extra_repr, "dim=%d", dim);
    *out = m;
    return MJ_OK;
}
mj_status mj_softmax_new(mj_module **out, int dim) { return softmax_new(out, dim, false); }
mj_status mj_log_softmax_new(mj_module **out, int dim) { return softmax_new(out, dim, true); }

static mj_status dropout_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    (void)self; /* eval mode: the identity, recorded as an alias */
    return mj_activation(y, MJ_ACT_NONE, x);
}

mj_status mj_dropout_new(mj_module **out, float p) {
    if (!(p >= 0.0f && p <= 1.0f))
        return mj_fail(MJ_ERR_INVALID, "Dropout: probability has to be between 0 and 1, but got %g", (double)p);
    mj_module *m;
    MJ_TRY(math_alloc(out, &m, "Dropout", dropout_forward));
    m->fp[0] = p;
    char ps[32];
    mj_py_float(ps, sizeof ps, p);
    snprintf(m->extra_repr, sizeof m->extra_repr, "p=%s, inplace=False", ps);
    *out = m;
    return MJ_OK;
}

/* One unary op with up to two float attributes; which in ip[0]. */
enum { P_LEAKY, P_ELU, P_HARDTANH, P_SOFTPLUS };

static mj_status param_act_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    switch (self->ip[0]) {
    case P_LEAKY: return mj_leaky_relu(y, x, self->fp[0]);
    case P_ELU: return mj_elu(y, x, self->fp[0]);
    case P_HARDTANH: return mj_hardtanh(y, x, self->fp[0], self->fp[1]);
    default: return mj_softplus(y, x, self->fp[0], self->fp[1]);
    }
}

static mj_status param_act_new(mj_module **out, const char *name, int which, float a, float b) {
    mj_module *m;
    MJ_TRY(math_alloc(out, &m, name, param_act_forward));
    m->ip[0] = which;
    m->fp[0] = a;
    m->fp[1] = b;
    char sa[32], sb[32];
    mj_py_float(sa, sizeof sa, a);
    mj_py_float(sb, sizeof sb, b);
    switch (which) {
    case P_LEAKY: snprintf(m->extra_repr, sizeof m->extra_repr, "negative_slope=%s", sa); break;
    case P_ELU: snprintf(m->extra_repr, sizeof m->extra_repr, "alpha=%s", sa); break;
    case P_HARDTANH:
        if (strcmp(name, "ReLU6") != 0)
            snprintf(m->extra_repr, sizeof m->extra_repr, "min_val=%s, max_val=%s", sa, sb);
        break;
    default: snprintf(m->extra_repr, sizeof m->extra_repr, "beta=%s, threshold=%s", sa, sb); break;
    }
    *out = m;
    return MJ_OK;
}

mj_status mj_leaky_relu_new(mj_module **out, float negative_slope) {
    return param_act_new(out, "LeakyReLU", P_LEAKY, negative_slope, 0.0f);
}
mj_status mj_elu_new(mj_module **out, float alpha) { return param_act_new(out, "ELU", P_ELU, alpha, 0.0f); }
mj_status mj_hardtanh_new(mj_module **out, float min_val, float max_val) {
    if (!(min_val <= max_val))
        return mj_fail(MJ_ERR_INVALID, "Hardtanh: min_val %g must not be greater than max_val %g", (double)min_val,
                       (double)max_val);
    return param_act_new(out, "Hardtanh", P_HARDTANH, min_val, max_val);
}
mj_status mj_relu6_new(mj_module **out) { return param_act_new(out, "ReLU6", P_HARDTANH, 0.0f, 6.0f); }
mj_status mj_softplus_new(mj_module **out, float beta, float threshold) {
    return param_act_new(out, "Softplus", P_SOFTPLUS, beta, threshold);
}

static mj_status flatten_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    int rank = mj_tensor_rank(x);
    int s = self->ip[0] < 0 ? self->ip[0] + rank : self->ip[0];
    int e = self->ip[1] < 0 ? self->ip[1] + rank : self->ip[1];
    if (s < 0 || s >= rank || e < 0 || e >= rank || s > e) {
        char xs[96];
        return mj_fail(MJ_ERR_SHAPE, "Flatten: start_dim %d and end_dim %d do not fit x of shape %s", self->ip[0],
                       self->ip[1], mj_shape_str(xs, sizeof xs, rank, mj_tensor_shape(x)));
    }
    const int64_t *xs = mj_tensor_shape(x);
    int64_t shape[MJ_MAX_RANK];
    int r = 0;
    for (int i = 0; i < s; i++) shape[r++] = xs[i];
    int64_t p = 1;
    for (int i = s; i <= e; i++) p *= xs[i]; /* <= numel: no overflow */
    shape[r++] = p;
    for (int i = e + 1; i < rank; i++) shape[r++] = xs[i];
    return mj_reshape(y, x, r, shape);
}

mj_status mj_flatten_new(mj_module **out, int start_dim, int end_dim) {
    if (start_dim < -MJ_MAX_RANK || start_dim >= MJ_MAX_RANK || end_dim < -MJ_MAX_RANK || end_dim >= MJ_MAX_RANK)
        return mj_fail(MJ_ERR_INVALID, "Flatten: start_dim %d / end_dim %d outside -%d..%d", start_dim, end_dim,
                       MJ_MAX_RANK, MJ_MAX_RANK - 1);
    mj_module *m;
    MJ_TRY(math_alloc(out, &m, "Flatten", flatten_forward));
    m->ip[0] = start_dim;
    m->ip[1] = end_dim;
    snprintf(m->extra_repr, sizeof m->extra_repr, "start_dim=%d, end_dim=%d", start_dim, end_dim);
    *out = m;
    return MJ_OK;
}
