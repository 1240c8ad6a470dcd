/* Random models for equivalence tests (see model_gen.h).
 *
 * A model is nn.Sequential(Linear, act, Linear, act, ..., Linear) whose
 * Linear weights carry a FakeSparsity (or FakeStructuredSparsity) mask and,
 * optionally, a user parametrization that scales the weight by a buffer.
 * Everything is drawn from the caller's rng, so a seed reproduces a model. */
#include "model_gen.h"

#include <stdio.h>
#include <string.h>

static const double densities[4] = {0.0, 0.1, 0.5, 1.0};

static int64_t draw_int(mj_rng *rng, int64_t lo, int64_t hi) { /* [lo, hi] */
    return lo + (int64_t)(mj_rng_next(rng) % (uint64_t)(hi - lo + 1));
}

void mjt_random_spec(mj_rng *rng, int max_width, mjt_model_spec *spec) {
    if (max_width < 1) max_width = 1;
    memset(spec, 0, sizeof *spec);
    spec->depth = (int)draw_int(rng, 1, 6);
    for (int i = 0; i <= spec->depth; i++) {
        /* Half of the widths small: narrow layers (1, 2, 3) are where
         * broadcasting and shape bugs show up. */
        int64_t hi = (mj_rng_next(rng) & 1) ? max_width : (max_width < 8 ? max_width : 8);
        spec->widths[i] = draw_int(rng, 1, hi);
    }
    spec->bias = mj_rng_next(rng) & 1;
    spec->density = densities[mj_rng_next(rng) % 4];
    spec->structured = mj_rng_next(rng) % 3 == 0;
    spec->act = (mj_act)(mj_rng_next(rng) % MJ_ACT_COUNT);
    spec->user_parametrization = mj_rng_next(rng) % 3 == 0;

    int n = snprintf(spec->text, sizeof spec->text, "depth=%d widths=[", spec->depth);
    for (int i = 0; i <= spec->depth && n > 0 && (size_t)n < sizeof spec->text; i++)
        n += snprintf(spec->text + n, sizeof spec->text - (size_t)n, "%s%lld", i ? "," : "",
                      (long long)spec->widths[i]);
    if (n > 0 && (size_t)n < sizeof spec->text)
        snprintf(spec->text + n, sizeof spec->text - (size_t)n,
                 "] bias=%d density=%g %s act=%s user=%d", spec->bias, spec->density,
                 spec->structured ? "structured" : "unstructured", mj_act_name(spec->act),
                 spec->user_parametrization);
}

/* ---- the user parametrization: weight * scale (a [1] buffer) ------------ */
static mj_status scale_forward(mj_parametrization *self, const mj_tensor *x, mj_tensor **y) {
    return mj_mul(y, x, mj_parametrization_buffer(self, "scale"));
}

static const mj_parametrization_ops scale_ops = {
    .type_name = "Scale",
    .forward = scale_forward,
};

/* mask of `density`: each element 1 with probability density (0 and 1 exact). */
static mj_status random_mask(mj_rng *rng, int rank, const int64_t *shape, double density,
                             mj_tensor **out) {
    mj_tensor *m = NULL;
    mj_status s = mj_tensor_zeros(&m, rank, shape);
    if (s != MJ_OK) return s;
    float *d = mj_tensor_data_mut(m);
    int64_t n = mj_tensor_numel(m);
    for (int64_t i = 0; i < n; i++) d[i] = (double)mj_rng_uniform(rng) < density ? 1.0f : 0.0f;
    *out = m;
    return MJ_OK;
}

static mj_status register_or_free(mj_module *lin, mj_parametrization *p) {
    mj_status s = mj_register_parametrization(lin, "weight", p);
    if (s != MJ_OK) mj_parametrization_free(p);
    return s;
}

static mj_status build_linear(const mjt_model_spec *spec, int layer, mj_rng *rng,
                              mj_module **out) {
    int64_t in = spec->widths[layer], outf = spec->widths[layer + 1];
    mj_module *lin = NULL;
    mj_tensor *mask = NULL, *scale = NULL;
    mj_parametrization *p = NULL;
    mj_status s = mj_linear_new(&lin, in, outf, spec->bias, rng);
    if (s != MJ_OK) return s;

    if (spec->structured) {
        s = random_mask(rng, 1, &outf, spec->density, &mask);
        if (s == MJ_OK) s = mj_fake_structured_sparsity_new(&p, mask);
    } else {
        int64_t shape[2] = {outf, in};
        s = random_mask(rng, 2, shape, spec->density, &mask);
        if (s == MJ_OK) s = mj_fake_sparsity_new(&p, mask);
    }
    mj_tensor_release(mask);
    if (s == MJ_OK) s = register_or_free(lin, p);

    if (s == MJ_OK && spec->user_parametrization) {
        int64_t one = 1;
        float v = 0.5f + 1.5f * mj_rng_uniform(rng);
        p = NULL;
        s = mj_tensor_full(&scale, 1, &one, v);
        if (s == MJ_OK) s = mj_parametrization_new(&p, &scale_ops, NULL);
        if (s == MJ_OK) {
            s = mj_parametrization_add_buffer(p, "scale", scale, true);
            if (s == MJ_OK) s = register_or_free(lin, p);
            else mj_parametrization_free(p);
        }
        mj_tensor_release(scale);
    }
    if (s != MJ_OK) {
        mj_module_free(lin);
        return s;
    }
    *out = lin;
    return MJ_OK;
}

mj_status mjt_build_model(const mjt_model_spec *spec, mj_rng *rng, mj_module **out) {
    if (!spec || !rng || !out || spec->depth < 1 || spec->depth > 6) return MJ_ERR_INVALID;
    mj_module *children[11] = {0};
    int n = 0;
    mj_status s = MJ_OK;
    for (int l = 0; l < spec->depth && s == MJ_OK; l++) {
        if (l > 0) s = mj_activation_module_new(&children[n++], spec->act);
        if (s == MJ_OK) s = build_linear(spec, l, rng, &children[n++]);
    }
    if (s == MJ_OK) s = mj_sequential_new(out, n, children);
    if (s != MJ_OK)
        for (int i = 0; i < n; i++)
            if (children[i]) mj_module_free(children[i]);
    return s;
}

mj_status mjt_random_input(const mjt_model_spec *spec, int64_t batch, mj_rng *rng,
                           mj_tensor **out) {
    int64_t shape[2] = {batch, spec->widths[0]};
    return mj_tensor_randn(out, 2, shape, rng);
}
