/* The pruned CNNs of the cnn_graph and cnn_jit suites: one masked Conv2d
 * per geometry, a small CNN (conv-bn-relu-pool x2, global average pool,
 * flatten, linear) and a MobileNet-style block (pointwise, depthwise,
 * pointwise, residual), all with FakeSparsity masks and random batch norm
 * statistics. */
#ifndef MJT_TEST_CNN_MODELS_H
#define MJT_TEST_CNN_MODELS_H

#include <stdio.h>

#include "maskjit.h"
#include "test_util.h"

static inline mj_tensor *mjc_randn(int rank, const int64_t *shape, mj_rng *rng) {
    mj_tensor *t = NULL;
    OK(mj_tensor_randn(&t, rank, shape, rng));
    return t;
}

/* A FakeSparsity mask on m.weight: about 60% zeros, and output channel 1
 * (when there is one) all zero. */
static inline void mjc_prune(mj_module *m, mj_rng *rng) {
    mj_tensor *w = NULL, *mask = NULL;
    OK(mj_module_get(m, "weight", &w));
    OK(mj_tensor_zeros(&mask, mj_tensor_rank(w), (int64_t[]){mj_tensor_dim(w, 0), mj_tensor_dim(w, 1),
                                                             mj_tensor_rank(w) > 2 ? mj_tensor_dim(w, 2) : 0,
                                                             mj_tensor_rank(w) > 3 ? mj_tensor_dim(w, 3) : 0}));
    int64_t per = mj_tensor_numel(w) / mj_tensor_dim(w, 0);
    for (int64_t i = 0; i < mj_tensor_numel(w); i++)
        mj_tensor_data_mut(mask)[i] = (mj_rng_uniform(rng) < 0.4f && (i / per != 1)) ? 1.0f : 0.0f;
    mj_parametrization *fs = NULL;
    OK(mj_fake_sparsity_new(&fs, mask));
    OK(mj_register_parametrization(m, "weight", fs));
    mj_tensor_release(mask);
    mj_tensor_release(w);
}

/* Random running statistics and affine parameters. */
static inline void mjc_randomize_bn(mj_module *bn, int64_t c, mj_rng *rng) {
    const char *names[4] = {"weight", "bias", "running_mean", "running_var"};
    for (int i = 0; i < 4; i++) {
        mj_tensor *t = mjc_randn(1, &c, rng);
        if (i == 3)
            for (int64_t j = 0; j < c; j++) mj_tensor_data_mut(t)[j] = 0.5f + fabsf(mj_tensor_data(t)[j]);
        OK(mj_module_set(bn, names[i], t));
        mj_tensor_release(t);
    }
}

/* ---- the conv geometries: stride, padding, dilation 1/2, groups 1/C,
 * kernel 1/3/5 on a C x H x W input with odd sizes ------------------------ */
#define MJC_GEO_C 4
#define MJC_GEO_O 8
#define MJC_GEO_H 7
#define MJC_GEO_W 9
typedef struct mjc_geometry {
    int stride, pad, dil, groups, k;
} mjc_geometry;
#define MJC_N_GEOMETRIES 48
static inline mjc_geometry mjc_geometry_at(int i) {
    return (mjc_geometry){.stride = 1 + i / 24, .pad = i / 12 % 2, .dil = 1 + i / 6 % 2,
                          .groups = i / 3 % 2 ? MJC_GEO_C : 1, .k = 1 + 2 * (i % 3)};
}

static inline void mjc_geometry_str(const mjc_geometry *g, char *buf, size_t size) {
    snprintf(buf, size, "stride %d pad %d dilation %d groups %d kernel %d", g->stride, g->pad, g->dil, g->groups,
             g->k);
}

/* A masked Conv2d of that geometry (with a bias when the kernel is 3);
 * NULL if the kernel does not fit the input. */
static inline mj_module *mjc_conv_module(const mjc_geometry *g, mj_rng *rng) {
    int ext = g->dil * (g->k - 1) + 1;
    if (MJC_GEO_H + 2 * g->pad < ext || MJC_GEO_W + 2 * g->pad < ext) return NULL;
    mj_conv2d_params p;
    mj_conv2d_params_init(&p);
    p.stride[0] = p.stride[1] = g->stride;
    p.padding[0] = p.padding[1] = g->pad;
    p.dilation[0] = p.dilation[1] = g->dil;
    p.groups = g->groups;
    mj_module *m = NULL;
    OK(mj_conv2d_new(&m, MJC_GEO_C, MJC_GEO_O, (int64_t[]){g->k, g->k}, &p, g->k == 3, rng));
    mjc_prune(m, rng);
    return m;
}

static inline mj_status mjc_seq_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    /* children in order; a child named "relu*" is mj_relu, "flat" flattens */
    mj_tensor *h = mj_tensor_retain((mj_tensor *)x), *next = NULL;
    for (int i = 0; i < mj_module_child_count(self); i++) {
        const char *name;
        mj_module *c = mj_module_child_at(self, i, &name);
        mj_status s = mj_module_forward(c, h, &next);
        mj_tensor_release(h);
        if (s != MJ_OK) return s;
        h = next;
    }
    *y = h;
    return MJ_OK;
}

static inline void mjc_add(mj_module *m, const char *name, mj_module *c) { OK(mj_module_add_child(m, name, c)); }

static inline mj_module *mjc_relu(void) {
    mj_module *r = NULL;
    OK(mj_activation_module_new(&r, MJ_ACT_RELU));
    return r;
}

static inline mj_module *mjc_conv(int64_t in, int64_t out, int k, int pad, int groups, bool bias, mj_rng *rng) {
    mj_conv2d_params p;
    mj_conv2d_params_init(&p);
    p.padding[0] = p.padding[1] = pad;
    p.groups = groups;
    mj_module *c = NULL;
    OK(mj_conv2d_new(&c, in, out, (int64_t[]){k, k}, &p, bias, rng));
    mjc_prune(c, rng);
    return c;
}

static inline mj_module *mjc_bn(int64_t c, float eps, mj_rng *rng) {
    mj_module *b = NULL;
    OK(mj_batch_norm2d_new(&b, c, eps));
    mjc_randomize_bn(b, c, rng);
    return b;
}

/* [B, 3, 13, 11] -> [B, 5] */
static inline mj_module *mjc_small_cnn(mj_rng *rng) {
    mj_module *m = NULL, *c = NULL;
    OK(mj_module_new(&m, "SmallCNN", mjc_seq_forward, NULL, NULL));
    mjc_add(m, "conv1", mjc_conv(3, 8, 3, 1, 1, true, rng));
    mjc_add(m, "bn1", mjc_bn(8, 1e-3f, rng));
    mjc_add(m, "relu1", mjc_relu());
    OK(mj_max_pool2d_new(&c, (int64_t[]){2, 2}, NULL, NULL));
    mjc_add(m, "pool1", c);
    mjc_add(m, "conv2", mjc_conv(8, 16, 3, 1, 2, false, rng));
    mjc_add(m, "bn2", mjc_bn(16, 1e-5f, rng));
    mjc_add(m, "relu2", mjc_relu());
    OK(mj_avg_pool2d_new(&c, (int64_t[]){3, 3}, (int64_t[]){2, 2}, (int64_t[]){1, 1}, false));
    mjc_add(m, "pool2", c);
    OK(mj_adaptive_avg_pool2d_new(&c, 1, 1));
    mjc_add(m, "gap", c);
    OK(mj_flatten_new(&c, 1, -1));
    mjc_add(m, "flat", c);
    OK(mj_linear_new(&c, 16, 5, true, rng));
    mjc_prune(c, rng);
    mjc_add(m, "fc", c);
    return m;
}

/* pointwise 8->16, depthwise 3x3, pointwise 16->8, each with batch norm
 * (ReLU after the first two), plus the input: [B, 8, H, W] -> same */
static inline mj_status mjc_mobilenet_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    mj_tensor *h = NULL;
    mj_status s = mj_module_forward(mj_module_find(self, "body"), x, &h);
    if (s != MJ_OK) return s;
    s = mj_add(y, h, x);
    mj_tensor_release(h);
    return s;
}

static inline mj_module *mjc_mobilenet_block(mj_rng *rng) {
    mj_module *m = NULL, *body = NULL;
    OK(mj_module_new(&m, "MobileNetBlock", mjc_mobilenet_forward, NULL, NULL));
    OK(mj_module_new(&body, "Body", mjc_seq_forward, NULL, NULL));
    mjc_add(body, "pw1", mjc_conv(8, 16, 1, 0, 1, false, rng));
    mjc_add(body, "bn1", mjc_bn(16, 1e-5f, rng));
    mjc_add(body, "relu1", mjc_relu());
    mjc_add(body, "dw", mjc_conv(16, 16, 3, 1, 16, false, rng));
    mjc_add(body, "bn2", mjc_bn(16, 1e-5f, rng));
    mjc_add(body, "relu2", mjc_relu());
    mjc_add(body, "pw2", mjc_conv(16, 8, 1, 0, 1, true, rng));
    mjc_add(body, "bn3", mjc_bn(8, 1e-5f, rng));
    mjc_add(m, "body", body);
    return m;
}

#endif
