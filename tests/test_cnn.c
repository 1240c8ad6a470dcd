/* Suite "cnn": the CNN layers in eager C (maskjit/cnn.h). conv2d against a
 * naive loop written here (bit for bit: the documented fmaf order over an
 * explicitly zero-padded input) in every geometry, and against PyTorch's
 * outputs (tests/fixtures/cnn.safetensors, tools/make_cnn_fixtures.py);
 * batch norm and pooling likewise; the torch.nn modules' keys, init and
 * masks; a small pruned CNN loaded from PyTorch's state dict. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "maskjit.h"
#include "test_util.h"

#define FIXTURE MJ_SOURCE_ROOT "/tests/fixtures/cnn.safetensors"

/* libm's fmaf through a volatile pointer: no compiler choice enters */
static float (*volatile ref_fmaf)(float, float, float) = fmaf;

/* conv2d by definition: pad x with zeros, then per output element
 * acc = fmaf(xpad, w, acc) over c, kh, kw ascending, + b. */
static float *naive_conv(const float *x, const float *w, const float *b, int64_t N, int64_t C,
                         int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW,
                         const mj_conv2d_params *p, int64_t *OH, int64_t *OW) {
    int64_t PH = H + 2 * p->padding[0], PW = W + 2 * p->padding[1];
    float *xp = calloc((size_t)(N * C * PH * PW), sizeof *xp);
    for (int64_t n = 0; n < N * C; n++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t v = 0; v < W; v++)
                xp[(n * PH + h + p->padding[0]) * PW + v + p->padding[1]] = x[(n * H + h) * W + v];
    *OH = (PH - p->dilation[0] * (KH - 1) - 1) / p->stride[0] + 1;
    *OW = (PW - p->dilation[1] * (KW - 1) - 1) / p->stride[1] + 1;
    int64_t cg = C / p->groups, og = O / p->groups;
    float *y = malloc((size_t)(N * O * *OH * *OW) * sizeof *y);
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++)
            for (int64_t i = 0; i < *OH; i++)
                for (int64_t j = 0; j < *OW; j++) {
                    float acc = 0.0f;
                    for (int64_t c = 0; c < cg; c++)
                        for (int64_t kh = 0; kh < KH; kh++)
                            for (int64_t kw = 0; kw < KW; kw++) {
                                int64_t ci = (o / og) * cg + c;
                                float xv = xp[((n * C + ci) * PH + i * p->stride[0] + kh * p->dilation[0]) * PW +
                                              j * p->stride[1] + kw * p->dilation[1]];
                                acc = ref_fmaf(xv, w[((o * cg + c) * KH + kh) * KW + kw], acc);
                            }
                    y[((n * O + o) * *OH + i) * *OW + j] = b ? acc + b[o] : acc;
                }
    free(xp);
    return y;
}

static mj_tensor *randn(int rank, const int64_t *shape, mj_rng *rng) {
    mj_tensor *t = NULL;
    OK(mj_tensor_randn(&t, rank, shape, rng));
    return t;
}

/* mj_module_print shows the CNN layers' arguments as PyTorch's repr does
 * (the expected text is torch 1.13's print of the same layers; BatchNorm2d
 * without momentum, which maskjit's eval-only norm does not have). */
Test(cnn, modules_print_their_arguments_as_pytorch_does) {
    mj_rng rng = mjt_rng(3);
    mj_conv2d_params dw, dil;
    mj_conv2d_params_init(&dw);
    dw.stride[0] = dw.stride[1] = 2;
    dw.padding[0] = dw.padding[1] = 1;
    dw.groups = 8;
    mj_conv2d_params_init(&dil);
    dil.dilation[1] = 2;
    mj_module *l[9];
    OK(mj_conv2d_new(&l[0], 8, 8, (int64_t[]){3, 3}, &dw, false, &rng));
    OK(mj_batch_norm2d_new(&l[1], 8, 1e-5f));
    OK(mj_conv2d_new(&l[2], 8, 16, (int64_t[]){1, 3}, &dil, true, &rng));
    OK(mj_max_pool2d_new(&l[3], (int64_t[]){2, 2}, NULL, NULL));
    OK(mj_pool2d_new(&l[4], &(mj_pool2d_params){.max = true, .kernel = {3, 2}, .stride = {1, 1},
                                                 .padding = {1, 1}, .ceil_mode = true}));
    OK(mj_avg_pool2d_new(&l[5], (int64_t[]){3, 3}, (int64_t[]){1, 1}, (int64_t[]){1, 1}, true));
    OK(mj_avg_pool2d_new(&l[6], (int64_t[]){2, 2}, NULL, NULL, false));
    OK(mj_adaptive_avg_pool2d_new(&l[7], 1, 1));
    OK(mj_adaptive_avg_pool2d_new(&l[8], 2, 3));
    mj_module *seq;
    OK(mj_sequential_new(&seq, 9, l));
    char *r = mjt_module_str(seq);
    cr_expect_str_eq(r, "Sequential(\n"
                        "  (0): Conv2d(8, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), groups=8, bias=False)\n"
                        "  (1): BatchNorm2d(8, eps=1e-05, affine=True, track_running_stats=True)\n"
                        "  (2): Conv2d(8, 16, kernel_size=(1, 3), stride=(1, 1), dilation=(1, 2))\n"
                        "  (3): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)\n"
                        "  (4): MaxPool2d(kernel_size=(3, 2), stride=1, padding=1, dilation=1, ceil_mode=True)\n"
                        "  (5): AvgPool2d(kernel_size=3, stride=1, padding=1)\n"
                        "  (6): AvgPool2d(kernel_size=2, stride=2, padding=0)\n"
                        "  (7): AdaptiveAvgPool2d(output_size=1)\n"
                        "  (8): AdaptiveAvgPool2d(output_size=(2, 3))\n"
                        ")\n");
    free(r);
    mj_module_free(seq);
}

Test(cnn, conv2d_every_geometry_matches_the_naive_loop) {
    mj_rng rng;
    mj_rng_seed(&rng, 11);
    const int64_t C = 4, H = 7, W = 9, O = 8;
    int cases = 0;
    for (int s = 1; s <= 2; s++)
        for (int pad = 0; pad <= 1; pad++)
            for (int d = 1; d <= 2; d++)
                for (int gi = 0; gi < 2; gi++)
                    for (int k = 1; k <= 5; k += 2) {
                        mj_conv2d_params p;
                        mj_conv2d_params_init(&p);
                        p.stride[0] = s, p.stride[1] = 3 - s; /* both strides, mixed */
                        p.padding[0] = p.padding[1] = pad;
                        p.dilation[0] = d, p.dilation[1] = 1;
                        p.groups = gi ? C : 1;
                        if (H + 2 * pad < d * (k - 1) + 1) continue;
                        mj_tensor *x = randn(4, (int64_t[]){3, C, H, W}, &rng);
                        mj_tensor *w = randn(4, (int64_t[]){O, C / p.groups, k, k}, &rng);
                        mj_tensor *b = randn(1, (int64_t[]){O}, &rng);
                        for (int with_bias = 0; with_bias <= 1; with_bias++) {
                            mj_tensor *y = NULL;
                            OK(mj_conv2d(&y, x, w, with_bias ? b : NULL, &p));
                            int64_t OH, OW;
                            float *ref = naive_conv(mj_tensor_data(x), mj_tensor_data(w),
                                                    with_bias ? mj_tensor_data(b) : NULL, 3, C, H, W,
                                                    O, k, k, &p, &OH, &OW);
                            cr_assert_eq(mj_tensor_dim(y, 2), OH);
                            cr_assert_eq(mj_tensor_dim(y, 3), OW);
                            cr_expect_eq(memcmp(mj_tensor_data(y), ref, (size_t)mj_tensor_numel(y) * 4), 0,
                                         "stride %d pad %d dil %d groups %lld k %d", s, pad, d,
                                         (long long)p.groups, k);
                            free(ref);
                            mj_tensor_release(y);
                            cases++;
                        }
                        MJT_RELEASE(x, w, b);
                    }
    cr_expect_geq(cases, 80);
}

/* A NaN weight under padding gives NaN, as im2col's 0 * NaN does. */
Test(cnn, conv2d_padding_multiplies_zeros_in) {
    mj_tensor *x = NULL, *w = NULL, *y = NULL;
    OK(mj_tensor_ones(&x, 4, (int64_t[]){1, 1, 1, 1}));
    OK(mj_tensor_zeros(&w, 4, (int64_t[]){1, 1, 3, 3}));
    mj_tensor_data_mut(w)[0] = NAN; /* reads the padding at output (0, 0) */
    mj_conv2d_params p;
    mj_conv2d_params_init(&p);
    p.padding[0] = p.padding[1] = 1;
    OK(mj_conv2d(&y, x, w, NULL, &p));
    cr_expect(isnan(mj_tensor_data(y)[0]));
    MJT_RELEASE(x, w, y);
}

static mj_tensor_dict *fixture(void) {
    mj_tensor_dict *d = NULL;
    OK(mj_safetensors_load(FIXTURE, &d));
    return d;
}

static mj_tensor *get(mj_tensor_dict *d, const char *fmt, int i) {
    char key[128];
    snprintf(key, sizeof key, fmt, i);
    mj_tensor *t = mj_tensor_dict_get(d, key);
    cr_assert_not_null(t, "fixture lacks %s", key);
    return t;
}

static void expect_close(const mj_tensor *y, const mj_tensor *e, double k, const char *what) {
    double rtol = MJ_RTOL_F32 * sqrt(k), atol = MJ_ATOL_F32 * sqrt(k);
    mj_compare c = mj_tensor_compare(y, e, rtol, atol);
    char msg[256];
    mj_compare_describe(&c, y, e, msg, sizeof msg);
    cr_expect(c.same_shape && c.close, "%s: %s", what, msg);
}

Test(cnn, conv2d_matches_pytorch) {
    mj_tensor_dict *d = fixture();
    for (int i = 0; i < 5; i++) {
        char key[16];
        snprintf(key, sizeof key, "conv%d", i);
        const char *geo = mj_tensor_dict_get_meta(d, key);
        cr_assert_not_null(geo);
        mj_conv2d_params p;
        long long v[7];
        cr_assert_eq(sscanf(geo, "%lld,%lld,%lld,%lld,%lld,%lld,%lld", &v[0], &v[1], &v[2], &v[3], &v[4],
                            &v[5], &v[6]), 7);
        for (int a = 0; a < 2; a++) p.stride[a] = v[a], p.padding[a] = v[2 + a], p.dilation[a] = v[4 + a];
        p.groups = v[6];
        mj_tensor *w = get(d, "conv%d.w", i), *y = NULL;
        OK(mj_conv2d(&y, get(d, "conv%d.x", i), w, get(d, "conv%d.b", i), &p));
        expect_close(y, get(d, "conv%d.y", i),
                     (double)(mj_tensor_dim(w, 1) * mj_tensor_dim(w, 2) * mj_tensor_dim(w, 3)), key);
        mj_tensor_release(y);
    }
    mj_tensor_dict_free(d);
}

Test(cnn, batch_norm_matches_pytorch_and_its_formula) {
    mj_tensor_dict *d = fixture();
    mj_tensor *x = get(d, "bn.x", 0), *mean = get(d, "bn.mean", 0), *var = get(d, "bn.var", 0),
              *w = get(d, "bn.w", 0), *b = get(d, "bn.b", 0), *y = NULL;
    OK(mj_batch_norm(&y, x, mean, var, w, b, 1e-5f));
    expect_close(y, get(d, "bn.y", 0), 4, "batch_norm");
    /* the documented formula, bit for bit */
    const float *X = mj_tensor_data(x), *Y = mj_tensor_data(y);
    for (int64_t i = 0; i < mj_tensor_numel(x); i++) {
        int64_t c = (i / 12) % 5;
        volatile float alpha = mj_tensor_data(w)[c] / sqrtf(mj_tensor_data(var)[c] + 1e-5f);
        volatile float prod = mj_tensor_data(mean)[c] * alpha;
        volatile float beta = mj_tensor_data(b)[c] - prod;
        float want = ref_fmaf(X[i], alpha, beta);
        cr_expect_eq(memcmp(&Y[i], &want, 4), 0, "element %lld", (long long)i);
    }
    mj_tensor_release(y);
    mj_tensor_dict_free(d);
}

/* ceil_mode, against values worked out by hand: x = 0..24 as [1,1,5,5],
 * 2x2 windows with stride 2 give 3x3 (2x2 without ceil_mode); the last
 * row and column of windows hang over the edge and are clipped, and
 * avg_pool2d divides by what lies inside the (unpadded) input. Padding 1
 * on 5 with ceil would start a fourth window at the padding's end: PyTorch
 * drops it, so 3. */
Test(cnn, pools_with_ceil_mode_clip_the_windows_that_hang_over) {
    mj_tensor *x = NULL, *y = NULL;
    OK(mj_tensor_zeros(&x, 4, (int64_t[]){1, 1, 5, 5}));
    for (int i = 0; i < 25; i++) mj_tensor_data_mut(x)[i] = (float)i;
    mj_pool2d_params p = {.max = true, .kernel = {2, 2}, .stride = {2, 2}, .ceil_mode = true};
    const float want_max[9] = {6, 8, 9, 16, 18, 19, 21, 23, 24};
    const float want_avg[9] = {3, 5, 6.5f, 13, 15, 16.5f, 20.5f, 22.5f, 24};
    for (int max = 1; max >= 0; max--) {
        p.max = max;
        p.count_include_pad = true;
        OK(mj_pool2d(&y, x, &p));
        cr_assert(mj_tensor_dim(y, 2) == 3 && mj_tensor_dim(y, 3) == 3, "%s: %lldx%lld", max ? "max" : "avg",
                  (long long)mj_tensor_dim(y, 2), (long long)mj_tensor_dim(y, 3));
        for (int i = 0; i < 9; i++)
            cr_expect_eq(mj_tensor_data(y)[i], (max ? want_max : want_avg)[i], "%s [%d]: %g", max ? "max" : "avg", i,
                         (double)mj_tensor_data(y)[i]);
        mj_tensor_release(y);
    }
    p.ceil_mode = false;
    OK(mj_pool2d(&y, x, &p));
    cr_expect(mj_tensor_dim(y, 2) == 2 && mj_tensor_dim(y, 3) == 2);
    mj_tensor_release(y);
    p = (mj_pool2d_params){.max = true, .kernel = {2, 2}, .stride = {2, 2}, .padding = {1, 1}, .ceil_mode = true};
    OK(mj_pool2d(&y, x, &p));
    cr_expect(mj_tensor_dim(y, 2) == 3 && mj_tensor_dim(y, 3) == 3, "%lldx%lld", (long long)mj_tensor_dim(y, 2),
              (long long)mj_tensor_dim(y, 3));
    cr_expect_eq(mj_tensor_data(y)[8], 24.0f);
    MJT_RELEASE(x, y);
}

Test(cnn, pools_match_pytorch) {
    mj_tensor_dict *d = fixture();
    const int64_t k[2] = {3, 3}, s[2] = {2, 2}, p[2] = {1, 1};
    mj_tensor *y = NULL;
    OK(mj_max_pool2d(&y, get(d, "maxpool.x", 0), k, s, p));
    expect_close(y, get(d, "maxpool.y", 0), 1, "max_pool2d (NaN propagates)");
    int nans = 0;
    for (int64_t i = 0; i < mj_tensor_numel(y); i++) nans += isnan(mj_tensor_data(y)[i]);
    cr_expect_gt(nans, 0, "the NaN in the input reaches the output");
    mj_tensor_release(y);
    OK(mj_avg_pool2d(&y, get(d, "avgpool.x", 0), k, s, p, true));
    expect_close(y, get(d, "avgpool_pad.y", 0), 9, "avg_pool2d count_include_pad");
    mj_tensor_release(y);
    OK(mj_avg_pool2d(&y, get(d, "avgpool.x", 0), k, s, p, false));
    expect_close(y, get(d, "avgpool_nopad.y", 0), 9, "avg_pool2d without pad");
    mj_tensor_release(y);
    OK(mj_adaptive_avg_pool2d(&y, get(d, "adaptive.x", 0), 3, 2));
    expect_close(y, get(d, "adaptive.y", 0), 12, "adaptive_avg_pool2d");
    mj_tensor_release(y);
    mj_tensor_dict_free(d);
}

/* ---- the small pruned CNN of the fixture --------------------------------- */

static mj_status small_cnn_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    static const char *const seq[] = {"conv1", "bn1", NULL, "pool1", "conv2", "bn2", NULL, "pool2", "gap"};
    mj_tensor *h = mj_tensor_retain((mj_tensor *)x), *next = NULL;
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        mj_status s = seq[i] ? mj_module_forward(mj_module_find(self, seq[i]), h, &next) : mj_relu(&next, h);
        mj_tensor_release(h);
        if (s != MJ_OK) return s;
        h = next;
    }
    mj_tensor *flat = NULL;
    mj_status s = mj_reshape(&flat, h, 2, (int64_t[]){mj_tensor_dim(h, 0), mj_tensor_dim(h, 1)});
    mj_tensor_release(h);
    if (s == MJ_OK) s = mj_module_forward(mj_module_find(self, "fc"), flat, y);
    mj_tensor_release(flat);
    return s;
}

static mj_module *small_cnn(mj_rng *rng) {
    mj_module *m = NULL, *c = NULL;
    OK(mj_module_new(&m, "SmallCNN", small_cnn_forward, NULL, NULL));
    mj_conv2d_params p1, p2;
    mj_conv2d_params_init(&p1);
    p1.padding[0] = p1.padding[1] = 1;
    p2 = p1;
    p2.groups = 2;
    const int64_t k3[2] = {3, 3}, k2[2] = {2, 2};
    OK(mj_conv2d_new(&c, 3, 8, k3, &p1, true, rng));
    OK(mj_module_add_child(m, "conv1", c));
    OK(mj_batch_norm2d_new(&c, 8, 1e-5f));
    OK(mj_module_add_child(m, "bn1", c));
    OK(mj_max_pool2d_new(&c, k2, NULL, NULL));
    OK(mj_module_add_child(m, "pool1", c));
    OK(mj_conv2d_new(&c, 8, 8, k3, &p2, false, rng));
    OK(mj_module_add_child(m, "conv2", c));
    OK(mj_batch_norm2d_new(&c, 8, 1e-5f));
    OK(mj_module_add_child(m, "bn2", c));
    OK(mj_avg_pool2d_new(&c, k2, NULL, NULL, true));
    OK(mj_module_add_child(m, "pool2", c));
    OK(mj_adaptive_avg_pool2d_new(&c, 1, 1));
    OK(mj_module_add_child(m, "gap", c));
    OK(mj_linear_new(&c, 8, 5, true, rng));
    OK(mj_module_add_child(m, "fc", c));
    return m;
}

Test(cnn, small_pruned_cnn_matches_pytorch_at_every_batch) {
    mj_rng rng;
    mj_rng_seed(&rng, 1);
    mj_module *m = small_cnn(&rng);
    mj_tensor_dict *d = fixture(), *sd = NULL;
    OK(mj_tensor_dict_new(&sd));
    for (int i = 0; i < mj_tensor_dict_size(d); i++) {
        const char *key = mj_tensor_dict_key(d, i);
        if (!strncmp(key, "cnn.", 4) && strcmp(key, "cnn.input") && strcmp(key, "cnn.expected"))
            OK(mj_tensor_dict_set(sd, key + 4, mj_tensor_dict_get(d, key)));
    }
    mj_tensor *mask = NULL;
    OK(mj_tensor_clone(&mask, mj_tensor_dict_get(d, "cnn.conv1.parametrizations.weight.0.mask")));
    mj_parametrization *fs = NULL;
    OK(mj_fake_sparsity_new(&fs, mask));
    OK(mj_register_parametrization(mj_module_find(m, "conv1"), "weight", fs));
    mj_tensor_release(mask);
    OK(mj_module_load_state_dict(m, sd, true, NULL));
    mj_tensor *x = mj_tensor_dict_get(d, "cnn.input"), *want = mj_tensor_dict_get(d, "cnn.expected");
    mj_tensor *y = mjt_forward(m, x);
    expect_close(y, want, 8 * 9 * 2, "SmallCNN at batch 3");
    /* its trace replays the eager result bit for bit, so it matches PyTorch too */
    mj_graph *g = NULL;
    mj_tensor *yt = NULL;
    OK(mj_trace_module(m, x, &g));
    OK(mj_graph_run(g, x, &yt));
    cr_expect(mj_tensor_equal(yt, y), "the trace of SmallCNN differs from eager");
    mj_tensor_release(yt);
    mj_graph_free(g);
    /* batch 1 and 17: each row as computed alone, bit for bit (rows never interact) */
    int64_t row = 3 * 9 * 11;
    for (int64_t batch = 1; batch <= 17; batch += 16) {
        mj_tensor *xb = NULL, *yb = NULL;
        OK(mj_tensor_zeros(&xb, 4, (int64_t[]){batch, 3, 9, 11}));
        for (int64_t i = 0; i < batch; i++)
            memcpy(mj_tensor_data_mut(xb) + i * row, mj_tensor_data(x) + (i % 3) * row, (size_t)row * 4);
        OK(mj_module_forward(m, xb, &yb));
        for (int64_t i = 0; i < batch; i++)
            cr_expect_eq(memcmp(mj_tensor_data(yb) + i * 5, mj_tensor_data(y) + (i % 3) * 5, 20), 0,
                         "batch %lld row %lld", (long long)batch, (long long)i);
        MJT_RELEASE(xb, yb);
    }
    mj_tensor_release(y);
    mj_tensor_dict_free(sd);
    mj_tensor_dict_free(d);
    mj_module_free(m);
}

Test(cnn, conv2d_module_keys_init_and_mask) {
    mj_rng rng, replay;
    mj_rng_seed(&rng, 5);
    replay = rng;
    mj_conv2d_params p;
    mj_conv2d_params_init(&p);
    p.groups = 2;
    mj_module *m = NULL;
    OK(mj_conv2d_new(&m, 4, 6, (int64_t[]){3, 1}, &p, true, &rng));
    mj_tensor_dict *sd = NULL;
    OK(mj_module_state_dict(m, true, &sd));
    cr_assert_eq(mj_tensor_dict_size(sd), 2);
    cr_expect_str_eq(mj_tensor_dict_key(sd, 0), "weight");
    cr_expect_str_eq(mj_tensor_dict_key(sd, 1), "bias");
    mj_tensor *w = mj_tensor_dict_get(sd, "weight"), *b = mj_tensor_dict_get(sd, "bias");
    cr_assert_eq(mj_tensor_rank(w), 4);
    cr_expect(mj_tensor_dim(w, 0) == 6 && mj_tensor_dim(w, 1) == 2 && mj_tensor_dim(w, 2) == 3 &&
              mj_tensor_dim(w, 3) == 1);
    /* U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 2*3*1, weight first then bias */
    float bound = (float)(1.0 / sqrt(6.0));
    for (int64_t i = 0; i < 36; i++) {
        float want = (2.0f * mj_rng_uniform(&replay) - 1.0f) * bound;
        cr_expect_eq(mj_tensor_data(w)[i], want);
    }
    for (int64_t i = 0; i < 6; i++) {
        float want = (2.0f * mj_rng_uniform(&replay) - 1.0f) * bound;
        cr_expect_eq(mj_tensor_data(b)[i], want);
    }
    /* FakeSparsity on the weight: the module computes conv2d with mask * w */
    mj_tensor *mask = NULL, *masked = NULL, *x = randn(4, (int64_t[]){2, 4, 5, 5}, &rng), *y = NULL, *ref = NULL;
    OK(mj_tensor_zeros(&mask, 4, (int64_t[]){6, 2, 3, 1}));
    for (int64_t i = 0; i < 36; i += 3) mj_tensor_data_mut(mask)[i] = 1.0f;
    mj_parametrization *fs = NULL;
    OK(mj_fake_sparsity_new(&fs, mask));
    OK(mj_register_parametrization(m, "weight", fs));
    OK(mj_mul(&masked, mask, w));
    OK(mj_module_forward(m, x, &y));
    OK(mj_conv2d(&ref, x, masked, b, &p));
    cr_expect(mj_tensor_equal(y, ref));
    MJT_RELEASE(mask, masked, x, y, ref);
    mj_tensor_dict_free(sd);
    mj_module_free(m);
}

Test(cnn, bad_arguments_fail_with_a_message) {
    mj_rng rng;
    mj_rng_seed(&rng, 2);
    mj_tensor *x = randn(4, (int64_t[]){1, 4, 5, 5}, &rng), *w = randn(4, (int64_t[]){6, 3, 3, 3}, &rng);
    mj_tensor *y = NULL;
    FAILS(mj_conv2d(&y, x, w, NULL, NULL), MJ_ERR_SHAPE, "groups 1 do not fit");
    mj_tensor *w2 = randn(4, (int64_t[]){6, 4, 7, 7}, &rng);
    FAILS(mj_conv2d(&y, x, w2, NULL, NULL), MJ_ERR_SHAPE, "does not fit input [1, 4, 5, 5]");
    mj_conv2d_params p;
    mj_conv2d_params_init(&p);
    p.stride[1] = 0;
    FAILS(mj_conv2d(&y, x, w2, NULL, &p), MJ_ERR_INVALID, "must be >= 1");
    FAILS(mj_max_pool2d(&y, x, (int64_t[]){2, 2}, (int64_t[]){2, 2}, (int64_t[]){2, 0}), MJ_ERR_INVALID,
          "at most half the kernel");
    FAILS(mj_adaptive_avg_pool2d(&y, w2, 0, 1), MJ_ERR_INVALID, "output size 0x1");
    mj_tensor *x3 = randn(3, (int64_t[]){4, 5, 5}, &rng);
    FAILS(mj_avg_pool2d(&y, x3, (int64_t[]){2, 2}, (int64_t[]){2, 2}, (int64_t[]){0, 0}, true), MJ_ERR_SHAPE,
          "must be 4-D");
    mj_module *m = NULL;
    FAILS(mj_conv2d_new(&m, 4, 6, (int64_t[]){3, 3}, &(mj_conv2d_params){.stride = {1, 1}, .dilation = {1, 1}, .groups = 4},
                        true, &rng),
          MJ_ERR_INVALID, "multiples of groups 4");
    cr_expect_null(y);
    cr_expect_null(m);
    /* traces of the layers: test_cnn_graph.c */
    MJT_RELEASE(x, x3, w, w2);
}
