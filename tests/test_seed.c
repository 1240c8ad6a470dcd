/* Ports of the seed test (PyTorch's test/ao/sparsity/test_parametrization.py,
 * /work/shared/seed/test_parametrization.py): same steps, same assertions.
 * test_jit_trace is ported with the tracer's tests. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "maskjit.h"
#include "test_util.h"

/* The model under test's three masked layers, by PyTorch name. */
static const char *const mods[3] = {"linear", "seq.0", "seq.1"};

static mj_tensor *eye16(void) {
    mj_tensor *t;
    OK(mj_tensor_eye(&t, 16));
    return t;
}

static mj_tensor *zeros(int64_t r, int64_t c) {
    mj_tensor *t;
    int64_t shape[2] = {r, c};
    OK(mj_tensor_zeros(&t, 2, shape));
    return t;
}

/* register_parametrization(mod, "weight", FakeSparsity(mask)); releases our mask ref. */
static void register_mask(mj_module *mod, mj_tensor *mask) {
    mj_parametrization *p;
    OK(mj_fake_sparsity_new(&p, mask));
    OK(mj_register_parametrization(mod, "weight", p));
    mj_tensor_release(mask);
}

static mj_module *at(mj_module *m, const char *path) {
    mj_module *r = mj_module_find(m, path);
    cr_assert_not_null(r, "no module '%s'", path);
    return r;
}

/* assertEqual on float tensors: torch.testing's float32 tolerances. */
static void assert_close(const mj_tensor *a, const mj_tensor *e) {
    mj_compare c = mj_tensor_compare(a, e, MJ_RTOL_F32, MJ_ATOL_F32);
    char buf[256];
    mj_compare_describe(&c, a, e, buf, sizeof buf);
    cr_assert(c.same_shape && c.close, "%s", buf);
}

Test(seed, masking_logic) {
    mj_rng rng = mjt_rng(1);
    mj_module *model;
    OK(mj_linear_new(&model, 16, 16, false, &rng));
    mj_tensor *eye = eye16();
    OK(mj_module_set(model, "weight", eye)); /* model.weight = nn.Parameter(torch.eye(16)) */
    mj_tensor *x = mjt_randn2(3, 16, &rng), *ref, *y;
    OK(mj_matmul(&ref, x, eye)); /* torch.mm(x, torch.eye(16)) */
    OK(mj_module_forward(model, x, &y));
    assert_close(y, ref);
    MJT_RELEASE(x, ref, y);

    register_mask(model, zeros(16, 16));

    x = mjt_randn2(3, 16, &rng);
    OK(mj_module_forward(model, x, &y));
    mj_tensor *z = zeros(3, 16);
    assert_close(y, z); /* torch.zeros(3, 16) == model(x) */
    MJT_RELEASE(z, x, y, eye);
    mj_module_free(model);
}

Test(seed, weights_parametrized) {
    mj_module *model;
    OK(mj_model_under_test_new(&model, false));

    /* assert not hasattr(model.<mod>, "parametrizations") */
    for (int i = 0; i < 3; i++) cr_assert(!mj_is_parametrized(at(model, mods[i]), NULL));
    for (int i = 0; i < 3; i++) register_mask(at(model, mods[i]), eye16());

    /* The seed checks is_parametrized(model.linear) three times (a copy-paste
     * slip); checking each module includes those assertions. */
    for (int i = 0; i < 3; i++) {
        cr_assert(mj_is_parametrized(at(model, mods[i]), NULL), "%s", mods[i]);
        cr_assert(mj_is_parametrized(at(model, "linear"), "weight"));
        cr_assert(mj_is_parametrized(at(model, mods[i]), "weight"), "%s", mods[i]);
    }
    mj_module_free(model);
}

Test(seed, state_dict_preserved) {
    mj_module *model_save;
    OK(mj_model_under_test_new(&model_save, false));
    for (int i = 0; i < 3; i++) register_mask(at(model_save, mods[i]), eye16());
    mj_tensor_dict *state_dict;
    OK(mj_module_state_dict(model_save, false, &state_dict));

    mj_module *model_load;
    OK(mj_model_under_test_new(&model_load, false));
    for (int i = 0; i < 3; i++) register_mask(at(model_load, mods[i]), zeros(16, 16));
    /* Not strict, as the masks are not in the state dict. */
    mj_load_report report;
    OK(mj_module_load_state_dict(model_load, state_dict, false, &report));
    cr_assert_eq(report.n_missing, 3, "the three masks are missing");
    cr_assert_eq(report.n_unexpected, 0);
    mj_load_report_free(&report);

    for (int i = 0; i < 3; i++) {
        /* the parametrizations are preserved */
        cr_assert(mj_is_parametrized(at(model_load, mods[i]), NULL));
        cr_assert(mj_is_parametrized(at(model_load, "linear"), "weight"));
        /* the weights are preserved */
        assert_close(mj_module_original(at(model_save, mods[i]), "weight"),
                     mj_module_original(at(model_load, mods[i]), "weight"));
        /* the masks are not (they are not in the state dict) */
        const mj_tensor *ms =
            mj_parametrization_buffer(mj_module_parametrization(at(model_save, mods[i]), "weight", 0), "mask");
        const mj_tensor *ml =
            mj_parametrization_buffer(mj_module_parametrization(at(model_load, mods[i]), "weight", 0), "mask");
        cr_assert_not_null(ms);
        cr_assert_not_null(ml);
        cr_assert(!mj_tensor_allclose(ms, ml, MJ_RTOL_F32, MJ_ATOL_F32), "%s mask", mods[i]);
    }
    mj_tensor_dict_free(state_dict);
    mj_module_free(model_save);
    mj_module_free(model_load);
}

/* What the seed's bias branch meant: biases 10, 20, 30, identity masks.
 * Reference: a naive loop over the same math. */
Test(seed, bias_model_with_identity_masks) {
    mj_module *model;
    OK(mj_model_under_test_new(&model, true));
    for (int i = 0; i < 3; i++) register_mask(at(model, mods[i]), eye16());

    mj_rng rng = mjt_rng(7);
    mj_tensor *x = mjt_randn2(3, 16, &rng), *y;
    OK(mj_module_forward(model, x, &y));

    float h[3][16], next[3][16];
    memcpy(h, mj_tensor_data(x), sizeof h);
    for (int layer = 0; layer < 3; layer++) {
        float w = (float)(layer + 1), b = 10.0f * (float)(layer + 1);
        for (int i = 0; i < 3; i++)
            for (int o = 0; o < 16; o++) {
                float acc = 0.0f;
                for (int k = 0; k < 16; k++) acc = fmaf(h[i][k], (o == k ? 1.0f : 0.0f) * w, acc);
                next[i][o] = acc + b;
            }
        memcpy(h, next, sizeof h);
    }
    mj_tensor *ref;
    int64_t shape[2] = {3, 16};
    OK(mj_tensor_from_data(&ref, 2, shape, &h[0][0]));
    assert_close(y, ref);
    MJT_RELEASE(ref, x, y);
    mj_module_free(model);
}
