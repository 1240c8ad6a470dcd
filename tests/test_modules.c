/* Modules: Linear, Sequential, activations, user modules, names, walks,
 * model specs and masks. Reprs and names were printed by PyTorch 1.13. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "maskjit.h"
#include "src/core/vmath.h" /* mj_tanhf: the reference tanh */

#include "test_util.h"

static mj_tensor *get(mj_module *m, const char *name) {
    mj_tensor *t;
    OK(mj_module_get(m, name, &t));
    return t;
}

/* y[i][o] = sum_k x[i][k] * w[o][k] + b[o], ascending k from +0 with one
 * rounding per term (fmaf), as docs/numerics.md defines (naive). */
static void naive_linear(const float *x, const float *w, const float *b, float *y, int n,
                         int in, int out) {
    for (int i = 0; i < n; i++)
        for (int o = 0; o < out; o++) {
            float acc = 0.0f;
            for (int k = 0; k < in; k++) acc = fmaf(x[i * in + k], w[o * in + k], acc);
            y[i * out + o] = b ? acc + b[o] : acc;
        }
}

/* ---- Linear ------------------------------------------------------------- */

Test(modules, linear_init_draws_weight_then_bias_from_rng) {
    mj_rng rng, ref;
    mj_rng_seed(&rng, 42);
    mj_rng_seed(&ref, 42);
    mj_module *lin;
    OK(mj_linear_new(&lin, 5, 3, true, &rng));
    cr_assert_str_eq(mj_module_type(lin), "Linear");
    cr_assert_eq(mj_linear_in_features(lin), 5);
    cr_assert_eq(mj_linear_out_features(lin), 3);
    mj_tensor *w = get(lin, "weight"), *b = get(lin, "bias");
    cr_assert_eq(mj_tensor_dim(w, 0), 3);
    cr_assert_eq(mj_tensor_dim(w, 1), 5);
    cr_assert_eq(mj_tensor_rank(b), 1);
    cr_assert_eq(mj_tensor_dim(b, 0), 3);
    double bound = 1.0 / sqrt(5.0);
    for (int i = 0; i < 15; i++) {
        double e = (2.0 * mj_rng_uniform(&ref) - 1.0) * bound;
        cr_assert(fabs(mj_tensor_data(w)[i] - e) < 1e-6, "w[%d] %g vs %g", i, mj_tensor_data(w)[i], e);
        cr_assert(fabsf(mj_tensor_data(w)[i]) <= (float)bound);
    }
    for (int i = 0; i < 3; i++) {
        double e = (2.0 * mj_rng_uniform(&ref) - 1.0) * bound;
        cr_assert(fabs(mj_tensor_data(b)[i] - e) < 1e-6, "b[%d]", i);
    }
    /* both generators have drawn the same count */
    cr_assert_eq(mj_rng_next(&rng), mj_rng_next(&ref));
    MJT_RELEASE(w, b);
    mj_module_free(lin);

    FAILS(mj_linear_new(&lin, 0, 3, true, &rng), MJ_ERR_INVALID, "in_features (0)");
    FAILS(mj_linear_new(&lin, 3, -2, true, &rng), MJ_ERR_INVALID, "out_features (-2)");
}

Test(modules, linear_forward_matches_naive_loop) {
    mj_rng rng = mjt_rng(1);
    for (int bias = 0; bias < 2; bias++) {
        mj_module *lin;
        OK(mj_linear_new(&lin, 7, 4, bias, &rng));
        mj_tensor *x = mjt_randn2(3, 7, &rng), *y, *w = get(lin, "weight"), *b = NULL;
        if (bias) b = get(lin, "bias");
        OK(mj_module_forward(lin, x, &y));
        float ref[12];
        naive_linear(mj_tensor_data(x), mj_tensor_data(w), b ? mj_tensor_data(b) : NULL, ref, 3,
                     7, 4);
        cr_assert_eq(mj_tensor_dim(y, 0), 3);
        cr_assert_eq(mj_tensor_dim(y, 1), 4);
        for (int i = 0; i < 12; i++) cr_assert_eq(mj_tensor_data(y)[i], ref[i], "y[%d]", i);
        mj_tensor_release(y);
        mj_tensor *x8 = mjt_randn2(3, 8, &rng);
        FAILS(mj_module_forward(lin, x8, &y), MJ_ERR_SHAPE, "x has shape [3, 8]");
        cr_assert(strstr(mj_last_error(), "[4, 7]"), "%s", mj_last_error());
        MJT_RELEASE(x8, x, w, b);
        mj_module_free(lin);
    }
}

/* ---- Sequential and activations ------------------------------------------- */

Test(modules, sequential_chains_children) {
    mj_rng rng = mjt_rng(2);
    mj_module *mods[3];
    OK(mj_linear_new(&mods[0], 4, 6, true, &rng));
    OK(mj_activation_module_new(&mods[1], MJ_ACT_TANH));
    OK(mj_linear_new(&mods[2], 6, 2, false, &rng));
    mj_module *seq;
    OK(mj_sequential_new(&seq, 3, mods));
    cr_assert_str_eq(mj_module_type(seq), "Sequential");
    cr_assert_eq(mj_module_child_count(seq), 3);
    const char *name;
    cr_assert_eq(mj_module_child_at(seq, 1, &name), mods[1]);
    cr_assert_str_eq(name, "1");
    cr_assert_eq(mj_module_child(seq, "2"), mods[2]);
    cr_assert_eq(mj_module_find(seq, "0"), mods[0]);
    cr_assert_eq(mj_module_find(seq, ""), seq);
    cr_assert_null(mj_module_find(seq, "3"));
    cr_assert_null(mj_module_find(seq, "0."));
    cr_assert_null(mj_module_find(seq, ".0"));
    cr_assert_null(mj_module_child_at(seq, 3, NULL));

    mj_tensor *x = mjt_randn2(2, 4, &rng), *y;
    OK(mj_module_forward(seq, x, &y));
    mj_tensor *w0 = get(mods[0], "weight"), *b0 = get(mods[0], "bias"), *w2 = get(mods[2], "weight");
    float h[12], t[12], ref[4];
    naive_linear(mj_tensor_data(x), mj_tensor_data(w0), mj_tensor_data(b0), h, 2, 4, 6);
    for (int i = 0; i < 12; i++) t[i] = mj_tanhf(h[i]);
    naive_linear(t, mj_tensor_data(w2), NULL, ref, 2, 6, 2);
    for (int i = 0; i < 4; i++) cr_assert_eq(mj_tensor_data(y)[i], ref[i], "y[%d]", i);

    /* a child's error names the child */
    mj_tensor *bad = mjt_randn2(2, 5, &rng), *yy;
    FAILS(mj_module_forward(seq, bad, &yy), MJ_ERR_SHAPE, "child '0'");
    mj_tensor_release(bad);

    MJT_RELEASE(x, y, w0, b0, w2);

    /* a module that already belongs to another is refused; nothing is taken */
    mj_module *again;
    FAILS(mj_sequential_new(&again, 1, &mods[1]), MJ_ERR_STATE, "already belongs");
    mj_module_free(seq);
}

Test(modules, activations_match_pytorch_repr_and_kernel) {
    const struct {
        mj_act act;
        const char *type, *repr;
    } cases[] = {
        {MJ_ACT_RELU, "ReLU", "ReLU()\n"},
        {MJ_ACT_GELU, "GELU", "GELU(approximate='none')\n"},
        {MJ_ACT_GELU_TANH, "GELU", "GELU(approximate='tanh')\n"},
        {MJ_ACT_TANH, "Tanh", "Tanh()\n"},
        {MJ_ACT_SIGMOID, "Sigmoid", "Sigmoid()\n"},
        {MJ_ACT_SILU, "SiLU", "SiLU()\n"},
        {MJ_ACT_NONE, "Identity", "Identity()\n"},
    };
    cr_assert_eq(sizeof cases / sizeof cases[0], MJ_ACT_COUNT, "a case per activation");
    mj_rng rng = mjt_rng(3);
    mj_tensor *x = mjt_randn2(2, 5, &rng);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        mj_module *m;
        OK(mj_activation_module_new(&m, cases[c].act));
        cr_assert_str_eq(mj_module_type(m), cases[c].type);
        mj_act got = MJ_ACT_COUNT;
        cr_assert(mj_activation_module_act(m, &got));
        cr_assert_eq(got, cases[c].act, "GELU and GELU(tanh) share a type name, not an act");
        char *r = mjt_module_str(m);
        cr_assert_str_eq(r, cases[c].repr);
        free(r);
        mj_tensor *y = mjt_forward(m, x);
        for (int i = 0; i < 10; i++)
            cr_assert_eq(mj_tensor_data(y)[i], mj_act_apply(cases[c].act, mj_tensor_data(x)[i]));
        mj_tensor_release(y);
        mj_module_free(m);
    }
    mj_module *m;
    FAILS(mj_activation_module_new(&m, MJ_ACT_COUNT), MJ_ERR_INVALID, "activation");
    OK(mj_linear_new(&m, 2, 2, true, &rng));
    mj_act got = MJ_ACT_RELU;
    cr_assert_not(mj_activation_module_act(m, &got), "a Linear is no activation module");
    cr_assert_eq(got, MJ_ACT_RELU, "and *out stays as it was");
    mj_module_free(m);
    mj_tensor_release(x);
}

/* ---- user modules ------------------------------------------------------- */

static int freed_user;
static void free_counter(void *p) {
    freed_user++;
    free(p);
}

static mj_status double_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    (void)self;
    return mj_add(y, x, x);
}

Test(modules, user_module_names_and_errors) {
    freed_user = 0;
    mj_module *u;
    OK(mj_module_new(&u, "MyNet", double_forward, malloc(8), free_counter));
    cr_assert_str_eq(mj_module_type(u), "MyNet");
    cr_assert_not_null(mj_module_user(u));
    mj_rng rng = mjt_rng(4);
    mj_module *a, *b;
    OK(mj_linear_new(&a, 2, 2, true, &rng));
    OK(mj_linear_new(&b, 2, 2, true, &rng));
    OK(mj_module_add_child(u, "enc", a));
    FAILS(mj_module_add_child(u, "enc", b), MJ_ERR_KEY, "'enc'");
    FAILS(mj_module_add_child(u, "", b), MJ_ERR_KEY, "empty");
    FAILS(mj_module_add_child(u, "a.b", b), MJ_ERR_KEY, "'a.b'");
    FAILS(mj_module_add_child(u, "parametrizations", b), MJ_ERR_KEY, "reserved");
    FAILS(mj_module_add_child(u, NULL, b), MJ_ERR_INVALID, "NULL");
    FAILS(mj_module_add_child(u, "x", NULL), MJ_ERR_INVALID, "NULL");
    FAILS(mj_module_add_child(u, "again", a), MJ_ERR_STATE, "already belongs");
    FAILS(mj_module_add_child(a, "parent", u), MJ_ERR_INVALID, "own descendant");
    FAILS(mj_module_add_child(u, "self", u), MJ_ERR_INVALID, "own descendant");

    mj_tensor *t;
    int64_t s[1] = {3};
    OK(mj_tensor_ones(&t, 1, s));
    OK(mj_module_add_parameter(u, "scale", t));
    FAILS(mj_module_add_parameter(u, "enc", t), MJ_ERR_KEY, "already a child");
    FAILS(mj_module_add_buffer(u, "scale", t, true), MJ_ERR_KEY, "already a parameter");
    OK(mj_module_add_buffer(u, "stats", t, false));
    FAILS(mj_module_add_child(u, "stats", b), MJ_ERR_KEY, "already a buffer");
    OK(mj_module_add_child(u, "dec", b));

    mj_tensor_dict *d;
    OK(mj_module_named_parameters(u, &d));
    const char *params[] = {"scale", "enc.weight", "enc.bias", "dec.weight", "dec.bias"};
    cr_assert_eq(mj_tensor_dict_size(d), 5);
    for (int i = 0; i < 5; i++) cr_assert_str_eq(mj_tensor_dict_key(d, i), params[i]);
    mj_tensor_dict_free(d);
    OK(mj_module_named_buffers(u, &d));
    cr_assert_eq(mj_tensor_dict_size(d), 1);
    cr_assert_str_eq(mj_tensor_dict_key(d, 0), "stats");
    mj_tensor_dict_free(d);
    OK(mj_module_state_dict(u, false, &d)); /* non-persistent buffers stay out */
    cr_assert_eq(mj_tensor_dict_size(d), 5);
    cr_assert_null(mj_tensor_dict_get(d, "stats"));
    mj_tensor_dict_free(d);

    mj_tensor *y = mjt_forward(u, t);
    cr_assert_eq(mj_tensor_data(y)[2], 2.0f);
    MJT_RELEASE(y, t);

    char *r = mjt_module_str(u);
    cr_assert_str_eq(r, "MyNet(\n"
                        "  (enc): Linear(in_features=2, out_features=2, bias=True)\n"
                        "  (dec): Linear(in_features=2, out_features=2, bias=True)\n"
                        ")\n");
    free(r);
    mj_module_free(a); /* owned by u: ignored */
    mj_module_free(u);
    cr_assert_eq(freed_user, 1);

    mj_module *nofwd;
    OK(mj_module_new(&nofwd, "Container", NULL, NULL, NULL));
    mj_tensor *x;
    OK(mj_tensor_ones(&x, 1, s));
    FAILS(mj_module_forward(nofwd, x, &y), MJ_ERR_UNSUPPORTED, "Container");
    mj_tensor_release(x);
    mj_module_free(nofwd);
    FAILS(mj_module_new(&nofwd, "", NULL, NULL, NULL), MJ_ERR_INVALID, "type name");
}

typedef struct walk_log {
    char paths[16][32];
    int n;
    int stop_after;
} walk_log;

static int log_visit(const char *path, mj_module *m, void *ctx) {
    (void)m;
    walk_log *l = ctx;
    snprintf(l->paths[l->n++], 32, "%s", path);
    return l->n == l->stop_after;
}

Test(modules, walk_is_depth_first_with_dotted_paths) {
    mj_module *m;
    OK(mj_model_under_test_new(&m, true));
    walk_log l = {.stop_after = -1};
    mj_module_walk(m, log_visit, &l);
    const char *want[] = {"", "linear", "seq", "seq.0", "seq.1"};
    cr_assert_eq(l.n, 5);
    for (int i = 0; i < 5; i++) cr_assert_str_eq(l.paths[i], want[i]);
    walk_log s = {.stop_after = 3};
    mj_module_walk(m, log_visit, &s);
    cr_assert_eq(s.n, 3, "a non-zero return stops the walk");
    mj_module_free(m);
}

/* ---- models ------------------------------------------------------------- */

Test(modules, model_under_test_forward_matches_naive_loop) {
    mj_rng rng = mjt_rng(5);
    for (int bias = 0; bias < 2; bias++) {
        mj_module *m;
        OK(mj_model_under_test_new(&m, bias));
        cr_assert_str_eq(mj_module_type(m), "ModelUnderTest");
        mj_tensor *x = mjt_randn2(3, 16, &rng), *y;
        OK(mj_module_forward(m, x, &y));
        float h[48], next[48], w[256], b[16];
        memcpy(h, mj_tensor_data(x), sizeof h);
        for (int layer = 0; layer < 3; layer++) {
            for (int i = 0; i < 256; i++) w[i] = (float)(layer + 1);
            for (int i = 0; i < 16; i++) b[i] = 10.0f * (float)(layer + 1);
            naive_linear(h, w, bias ? b : NULL, next, 3, 16, 16);
            memcpy(h, next, sizeof h);
        }
        for (int i = 0; i < 48; i++) cr_assert_eq(mj_tensor_data(y)[i], h[i], "y[%d]", i);
        mj_tensor_dict *d;
        OK(mj_module_state_dict(m, false, &d));
        cr_assert_eq(mj_tensor_dict_size(d), bias ? 6 : 3);
        cr_assert_str_eq(mj_tensor_dict_key(d, 0), bias ? "linear.weight" : "linear.weight");
        mj_tensor_dict_free(d);
        MJT_RELEASE(x, y);
        mj_module_free(m);
    }
}

Test(modules, mlp_spec_builds_pytorch_names_and_shapes) {
    mj_rng rng = mjt_rng(6);
    mj_module *m;
    OK(mj_model_from_spec("mlp:4,8,2", &rng, &m));
    /* PyTorch: [('0.weight', (8, 4)), ('0.bias', (8,)), ('2.weight', (2, 8)), ('2.bias', (2,))] */
    const struct {
        const char *key;
        int rank;
        int64_t d0, d1;
    } want[] = {{"0.weight", 2, 8, 4}, {"0.bias", 1, 8, 0}, {"2.weight", 2, 2, 8}, {"2.bias", 1, 2, 0}};
    mj_tensor_dict *d;
    OK(mj_module_named_parameters(m, &d));
    cr_assert_eq(mj_tensor_dict_size(d), 4);
    for (int i = 0; i < 4; i++) {
        const mj_tensor *t = mj_tensor_dict_value(d, i);
        cr_assert_str_eq(mj_tensor_dict_key(d, i), want[i].key);
        cr_assert_eq(mj_tensor_rank(t), want[i].rank, "%s", want[i].key);
        cr_assert_eq(mj_tensor_dim(t, 0), want[i].d0, "%s", want[i].key);
        if (want[i].rank == 2) cr_assert_eq(mj_tensor_dim(t, 1), want[i].d1, "%s", want[i].key);
    }
    mj_tensor_dict_free(d);
    char *r = mjt_module_str(m);
    cr_assert_str_eq(r, "Sequential(\n"
                        "  (0): Linear(in_features=4, out_features=8, bias=True)\n"
                        "  (1): ReLU()\n"
                        "  (2): Linear(in_features=8, out_features=2, bias=True)\n"
                        ")\n");
    free(r);
    mj_module_free(m);

    OK(mj_model_from_spec("mlp:3,5,5,1:act=gelu_tanh:bias=0", &rng, &m));
    cr_assert_eq(mj_module_child_count(m), 5);
    for (int i = 0; i < 5; i++) {
        const char *name;
        mj_module *c = mj_module_child_at(m, i, &name);
        cr_assert_str_eq(mj_module_type(c), i % 2 ? "GELU" : "Linear", "child %s", name);
    }
    OK(mj_module_named_parameters(m, &d));
    cr_assert_eq(mj_tensor_dict_size(d), 3, "bias=0: weights only");
    cr_assert_str_eq(mj_tensor_dict_key(d, 2), "4.weight");
    mj_tensor_dict_free(d);
    r = mjt_module_str(m);
    cr_assert(strstr(r, "(1): GELU(approximate='tanh')\n"), "%s", r);
    cr_assert(strstr(r, "(4): Linear(in_features=5, out_features=1, bias=False)\n"), "%s", r);
    free(r);
    mj_module_free(m);

    OK(mj_model_from_spec("mlp:2,2,2:act=none", &rng, &m));
    cr_assert_str_eq(mj_module_type(mj_module_child(m, "1")), "Identity");
    mj_module_free(m);

    OK(mj_model_from_spec("mut", NULL, &m));
    cr_assert_str_eq(mj_module_type(m), "ModelUnderTest");
    mj_tensor *b = get(mj_module_find(m, "seq.1"), "bias");
    cr_assert_eq(mj_tensor_data(b)[0], 30.0f);
    mj_tensor_release(b);
    mj_module_free(m);
    OK(mj_model_from_spec("mut-nobias", NULL, &m));
    cr_assert_null(mj_tensor_dict_get(NULL, "x"));
    OK(mj_module_named_parameters(m, &d));
    cr_assert_eq(mj_tensor_dict_size(d), 3);
    mj_tensor_dict_free(d);
    mj_module_free(m);
}

Test(modules, bad_specs_are_format_errors_quoting_the_bad_part) {
    mj_rng rng = mjt_rng(7);
    const struct {
        const char *spec, *needle;
    } cases[] = {
        {"resnet", "unknown model 'resnet'"},
        {"mutt", "unknown model 'mutt'"},
        {"mlp:16,abc,4", "width 'abc'"},
        {"mlp:16,-4", "width '-4'"},
        {"mlp:16,0,4", "width '0'"},
        {"mlp:16,65537", "width '65537'"},
        {"mlp:16,99999999999999999999", "width '99999999999999999999'"},
        {"mlp:16", "at least 2 widths"},
        {"mlp:", "empty width"},
        {"mlp:16,,4", "empty width"},
        {"mlp:16, 4", "width ' 4'"},
        {"mlp:16,4:act=swish", "'act=swish'"},
        {"mlp:16,4:depth=3", "unknown option 'depth=3'"},
        {"mlp:16,4:bias=2", "'bias=2'"},
        {"mlp:16,4:relu", "option 'relu'"},
        {"mlp:16,4:", "option ''"},
        {"mlp:16,4:act=relu:act=tanh", "act given twice"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mj_module *m = (mj_module *)0x1;
        FAILS(mj_model_from_spec(cases[i].spec, &rng, &m), MJ_ERR_FORMAT, cases[i].needle);
        cr_assert_eq(m, (mj_module *)0x1, "output untouched for '%s'", cases[i].spec);
    }
    mj_module *m;
    FAILS(mj_model_from_spec("mlp:4,4", NULL, &m), MJ_ERR_INVALID, "rng");
    /* 65536 * 65536 weights (16 GiB) fail before allocating anything */
    FAILS(mj_model_from_spec("mlp:65536,65536", &rng, &m), MJ_ERR_LIMIT, "4295032832 parameters");
    FAILS(mj_model_from_spec("mlp:16384,16384,2:bias=0", &rng, &m), MJ_ERR_LIMIT, "268468224");
}

/* ---- masks -------------------------------------------------------------- */

Test(modules, apply_masks_from_dict_and_random) {
    mj_module *m;
    OK(mj_model_under_test_new(&m, true));
    mj_tensor_dict *masks;
    OK(mj_tensor_dict_new(&masks));
    mj_tensor *eye;
    OK(mj_tensor_eye(&eye, 16));
    OK(mj_tensor_dict_set(masks, "seq.0.parametrizations.weight.0.mask", eye));
    mj_rng rng, ref;
    mj_rng_seed(&rng, 8);
    mj_rng_seed(&ref, 8);
    OK(mj_model_apply_masks(m, masks, 0.25, &rng));
    const char *mods[3] = {"linear", "seq.0", "seq.1"};
    for (int i = 0; i < 3; i++) {
        mj_module *lin = mj_module_find(m, mods[i]);
        cr_assert_eq(mj_parametrization_count(lin, "weight"), 1, "%s", mods[i]);
        const mj_tensor *mask =
            mj_parametrization_buffer(mj_module_parametrization(lin, "weight", 0), "mask");
        if (i == 1) {
            cr_assert_eq(mask, eye, "the dict's mask is used as is");
            continue;
        }
        /* random masks: walk order linear, seq.0 (skipped), seq.1; u < density */
        for (int k = 0; k < 256; k++)
            cr_assert_eq(mj_tensor_data(mask)[k], mj_rng_uniform(&ref) < 0.25 ? 1.0f : 0.0f,
                         "%s[%d]", mods[i], k);
    }
    mj_module_free(m);

    /* density 1 and no dict: nothing */
    OK(mj_model_under_test_new(&m, false));
    OK(mj_model_apply_masks(m, NULL, 1.0, NULL));
    cr_assert(!mj_is_parametrized(mj_module_find(m, "linear"), NULL));
    FAILS(mj_model_apply_masks(m, NULL, 1.5, &rng), MJ_ERR_INVALID, "1.5");
    FAILS(mj_model_apply_masks(m, NULL, 0.5, NULL), MJ_ERR_INVALID, "rng");

    /* a bad mask anywhere changes nothing */
    mj_tensor *bad;
    int64_t s[2] = {16, 8};
    OK(mj_tensor_ones(&bad, 2, s));
    OK(mj_tensor_dict_set(masks, "seq.1.parametrizations.weight.0.mask", bad));
    FAILS(mj_model_apply_masks(m, masks, 0.5, &rng), MJ_ERR_SHAPE, "[16, 8]");
    for (int i = 0; i < 3; i++) cr_assert(!mj_is_parametrized(mj_module_find(m, mods[i]), NULL));
    OK(mj_tensor_dict_remove(masks, "seq.1.parametrizations.weight.0.mask"));
    OK(mj_tensor_dict_set(masks, "seq.7.parametrizations.weight.0.mask", eye));
    FAILS(mj_model_apply_masks(m, masks, 1.0, NULL), MJ_ERR_KEY, "'seq.7.parametrizations.weight.0.mask'");
    for (int i = 0; i < 3; i++) cr_assert(!mj_is_parametrized(mj_module_find(m, mods[i]), NULL));
    mj_module_free(m);
    MJT_RELEASE(bad, eye);
    mj_tensor_dict_free(masks);
}
