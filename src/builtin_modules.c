/* Built-in modules: Linear, Sequential and the activations (torch.nn). */
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

static mj_status fill_uniform(int rank, const int64_t *shape, float bound, mj_rng *rng,
                              mj_tensor **out) {
    mj_tensor *t;
    MJ_TRY(mj_tensor_zeros(&t, rank, shape));
    float *d = mj_tensor_data_mut(t);
    int64_t n = mj_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) d[i] = (2.0f * mj_rng_uniform(rng) - 1.0f) * bound;
    *out = t;
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
    mj_tensor *w = NULL, *b = NULL;
    mj_status s = fill_uniform(2, wshape, bound, rng, &w);
    if (s == MJ_OK) s = mj_module_add_parameter(m, "weight", w);
    if (s == MJ_OK && bias) s = fill_uniform(1, &out_features, bound, rng, &b);
    if (s == MJ_OK && bias) s = mj_module_add_parameter(m, "bias", b);
    mj_tensor_release(w);
    mj_tensor_release(b);
    if (s != MJ_OK) {
        mj_module_free(m);
        return s;
    }
    *out = m;
    return MJ_OK;
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
    const char *name;
    switch (act) {
    case MJ_ACT_NONE: name = "Identity"; break;
    case MJ_ACT_RELU: name = "ReLU"; break;
    case MJ_ACT_GELU:
    case MJ_ACT_GELU_TANH: name = "GELU"; break;
    case MJ_ACT_SIGMOID: name = "Sigmoid"; break;
    case MJ_ACT_TANH: name = "Tanh"; break;
    case MJ_ACT_SILU: name = "SiLU"; break;
    default:
        return mj_fail(MJ_ERR_INVALID, "unknown activation %d", (int)act);
    }
    mj_module *m;
    MJ_TRY(mj_module_alloc(&m, name, MJ_KIND_ACTIVATION, activation_forward));
    m->act = act;
    *out = m;
    return MJ_OK;
}
