/* Tensor dicts, state_dict and load_state_dict. Key lists of the load
 * reports were printed by PyTorch 1.13's load_state_dict(strict=False). */
#include <criterion/criterion.h>
#include <string.h>

#include "maskjit.h"

#include "test_util.h"

static mj_tensor *full1(int64_t n, float v) {
    mj_tensor *t;
    OK(mj_tensor_full(&t, 1, &n, v));
    return t;
}

static void assert_list(char *const *got, int n_got, const char *const *want, int n_want) {
    cr_assert_eq(n_got, n_want, "%d keys, expected %d", n_got, n_want);
    for (int i = 0; i < n_want; i++) cr_assert_str_eq(got[i], want[i], "key %d", i);
}

/* ---- mj_tensor_dict --------------------------------------------------------- */

Test(state_dict, dict_is_ordered_and_retains) {
    mj_tensor_dict *d;
    OK(mj_tensor_dict_new(&d));
    mj_tensor *a = full1(2, 1.0f), *b = full1(3, 2.0f), *c = full1(1, 3.0f);
    OK(mj_tensor_dict_set(d, "z", a));
    OK(mj_tensor_dict_set(d, "a", b));
    OK(mj_tensor_dict_set(d, "m", c));
    cr_assert_eq(mj_tensor_dict_size(d), 3);
    cr_assert_str_eq(mj_tensor_dict_key(d, 0), "z");
    cr_assert_str_eq(mj_tensor_dict_key(d, 1), "a");
    cr_assert_str_eq(mj_tensor_dict_key(d, 2), "m");
    /* replacing keeps the position */
    OK(mj_tensor_dict_set(d, "a", c));
    cr_assert_str_eq(mj_tensor_dict_key(d, 1), "a");
    cr_assert_eq(mj_tensor_dict_value(d, 1), c);
    cr_assert_eq(mj_tensor_dict_get(d, "a"), c);
    cr_assert_null(mj_tensor_dict_get(d, "nope"));
    cr_assert_null(mj_tensor_dict_key(d, 3));
    cr_assert_null(mj_tensor_dict_value(d, -1));
    /* the dict holds its own references */
    MJT_RELEASE(a, b, c);
    cr_assert_eq(mj_tensor_data(mj_tensor_dict_get(d, "z"))[1], 1.0f);
    OK(mj_tensor_dict_remove(d, "z"));
    cr_assert_eq(mj_tensor_dict_size(d), 2);
    cr_assert_str_eq(mj_tensor_dict_key(d, 0), "a");
    FAILS(mj_tensor_dict_remove(d, "z"), MJ_ERR_KEY, "'z'");

    OK(mj_tensor_dict_set_meta(d, "format", "pt"));
    OK(mj_tensor_dict_set_meta(d, "author", "x"));
    OK(mj_tensor_dict_set_meta(d, "format", "np"));
    cr_assert_eq(mj_tensor_dict_meta_size(d), 2);
    cr_assert_str_eq(mj_tensor_dict_meta_key(d, 0), "format");
    cr_assert_str_eq(mj_tensor_dict_meta_value(d, 0), "np");
    cr_assert_str_eq(mj_tensor_dict_get_meta(d, "author"), "x");
    cr_assert_null(mj_tensor_dict_get_meta(d, "other"));
    cr_assert_null(mj_tensor_dict_meta_key(d, 2));
    FAILS(mj_tensor_dict_set(d, NULL, c), MJ_ERR_INVALID, "key");
    mj_tensor_dict_free(d);
}

/* ---- state_dict ------------------------------------------------------------- */

static mj_module *seed_model(bool bias, bool masks, float mask_value) {
    mj_module *m;
    OK(mj_model_under_test_new(&m, bias));
    if (!masks) return m;
    const char *mods[3] = {"linear", "seq.0", "seq.1"};
    for (int i = 0; i < 3; i++) {
        mj_tensor *mask;
        int64_t s[2] = {16, 16};
        OK(mj_tensor_full(&mask, 2, s, mask_value));
        mj_parametrization *p;
        OK(mj_fake_sparsity_new(&p, mask));
        OK(mj_register_parametrization(mj_module_find(m, mods[i]), "weight", p));
        mj_tensor_release(mask);
    }
    return m;
}

Test(state_dict, shares_the_module_tensors) {
    mj_module *m = seed_model(true, true, 1.0f);
    mj_tensor_dict *sd;
    OK(mj_module_state_dict(m, true, &sd));
    mj_module *lin = mj_module_find(m, "linear");
    cr_assert_eq(mj_tensor_dict_get(sd, "linear.parametrizations.weight.original"),
                 mj_module_original(lin, "weight"));
    cr_assert_eq(mj_tensor_dict_get(sd, "linear.parametrizations.weight.0.mask"),
                 mj_parametrization_buffer(mj_module_parametrization(lin, "weight", 0), "mask"));
    mj_tensor *bias;
    OK(mj_module_get(lin, "bias", &bias));
    cr_assert_eq(mj_tensor_dict_get(sd, "linear.bias"), bias);
    mj_tensor_release(bias);
    /* the dict keeps the tensors alive after the model is gone */
    mj_module_free(m);
    cr_assert_eq(mj_tensor_data(mj_tensor_dict_get(sd, "seq.1.bias"))[0], 30.0f);
    mj_tensor_dict_free(sd);
}

/* Loading an unparametrized model's dict into a parametrized model
 * (PyTorch: "load unparam sd into param"). */
static const char *const missing_ref[] = {
    "linear.parametrizations.weight.original", "linear.parametrizations.weight.0.mask",
    "seq.0.parametrizations.weight.original",  "seq.0.parametrizations.weight.0.mask",
    "seq.1.parametrizations.weight.original",  "seq.1.parametrizations.weight.0.mask"};
static const char *const unexpected_ref[] = {"linear.weight", "seq.0.weight", "seq.1.weight"};

Test(state_dict, strict_load_reports_and_refuses) {
    mj_module *plain = seed_model(true, false, 0.0f);
    mj_module *m = seed_model(true, true, 1.0f);
    mj_tensor_dict *sd, *before;
    OK(mj_module_state_dict(plain, false, &sd));
    /* make the plain model's biases differ so a copy would show */
    mj_tensor *b7 = full1(16, 7.0f);
    OK(mj_module_set(mj_module_find(plain, "seq.0"), "bias", b7));
    OK(mj_module_state_dict(m, true, &before));
    mj_tensor *bias_before;
    OK(mj_tensor_clone(&bias_before, mj_tensor_dict_get(before, "seq.0.bias")));

    mj_load_report r;
    FAILS(mj_module_load_state_dict(m, sd, true, &r), MJ_ERR_KEY, "6 missing");
    cr_assert(strstr(mj_last_error(), "'linear.weight'"), "%s", mj_last_error());
    assert_list(r.missing, r.n_missing, missing_ref, 6);
    assert_list(r.unexpected, r.n_unexpected, unexpected_ref, 3);
    mj_load_report_free(&r);
    cr_assert(mj_tensor_equal(mj_tensor_dict_get(before, "seq.0.bias"), bias_before),
              "strict failure copies nothing");

    OK(mj_module_load_state_dict(m, sd, false, &r));
    assert_list(r.missing, r.n_missing, missing_ref, 6);
    assert_list(r.unexpected, r.n_unexpected, unexpected_ref, 3);
    mj_load_report_free(&r);
    cr_assert(mj_tensor_equal(mj_tensor_dict_get(before, "seq.0.bias"), b7),
              "non-strict load copies the matching keys");
    OK(mj_module_load_state_dict(m, sd, false, NULL)); /* report is optional */

    /* the other direction (PyTorch: "load into unparam") */
    mj_tensor_dict *psd;
    OK(mj_module_state_dict(m, false, &psd));
    OK(mj_module_load_state_dict(plain, psd, false, &r));
    const char *miss2[] = {"linear.weight", "seq.0.weight", "seq.1.weight"};
    const char *unexp2[] = {"linear.parametrizations.weight.original",
                            "seq.0.parametrizations.weight.original",
                            "seq.1.parametrizations.weight.original"};
    assert_list(r.missing, r.n_missing, miss2, 3);
    assert_list(r.unexpected, r.n_unexpected, unexp2, 3);
    mj_load_report_free(&r);

    mj_tensor_dict_free(psd);
    MJT_RELEASE(bias_before, b7);
    mj_tensor_dict_free(before);
    mj_tensor_dict_free(sd);
    mj_module_free(plain);
    mj_module_free(m);
}

/* A load whose report r names no missing or unexpected key (r is freed)
 * left m's state dict (masks included) equal to want, key by key: that
 * dict, for the caller to free. */
static mj_tensor_dict *assert_clean_load_gives(mj_module *m, mj_load_report *r, const mj_tensor_dict *want) {
    cr_assert_eq(r->n_missing, 0);
    cr_assert_eq(r->n_unexpected, 0);
    mj_load_report_free(r);
    mj_tensor_dict *got;
    OK(mj_module_state_dict(m, true, &got));
    cr_assert_eq(mj_tensor_dict_size(got), mj_tensor_dict_size(want));
    for (int i = 0; i < mj_tensor_dict_size(want); i++) {
        const char *k = mj_tensor_dict_key(want, i);
        cr_assert(mj_tensor_equal(mj_tensor_dict_get(got, k), mj_tensor_dict_value(want, i)), "%s differs", k);
    }
    return got;
}

Test(state_dict, strict_load_with_masks_loads_everything) {
    mj_module *src = seed_model(true, true, 1.0f), *dst = seed_model(true, true, 0.0f);
    mj_tensor *b = full1(16, -1.5f);
    OK(mj_module_set(mj_module_find(src, "seq.1"), "bias", b));
    mj_tensor_dict *sd;
    OK(mj_module_state_dict(src, true, &sd));
    mj_load_report r;
    OK(mj_module_load_state_dict(dst, sd, true, &r));
    mj_tensor_dict *got = assert_clean_load_gives(dst, &r, sd);
    for (int i = 0; i < mj_tensor_dict_size(sd); i++)
        cr_assert_neq(mj_tensor_dict_get(got, mj_tensor_dict_key(sd, i)), mj_tensor_dict_value(sd, i),
                      "%s: copied, not shared", mj_tensor_dict_key(sd, i));
    /* loading a model's own dict is a no-op */
    OK(mj_module_load_state_dict(dst, got, true, NULL));
    mj_tensor_dict_free(got);
    mj_tensor_release(b);
    mj_tensor_dict_free(sd);
    mj_module_free(src);
    mj_module_free(dst);
}

Test(state_dict, shape_mismatch_changes_nothing) {
    mj_module *m = seed_model(true, true, 1.0f);
    mj_tensor_dict *cur, *snapshot, *sd;
    OK(mj_module_state_dict(m, true, &cur));
    OK(mj_tensor_dict_new(&snapshot));
    OK(mj_tensor_dict_new(&sd));
    for (int i = 0; i < mj_tensor_dict_size(cur); i++) {
        mj_tensor *c, *z;
        OK(mj_tensor_clone(&c, mj_tensor_dict_value(cur, i)));
        OK(mj_tensor_dict_set(snapshot, mj_tensor_dict_key(cur, i), c));
        mj_tensor_release(c);
        /* every value different, so any copy would show */
        const mj_tensor *t = mj_tensor_dict_value(cur, i);
        OK(mj_tensor_full(&z, mj_tensor_rank(t), mj_tensor_shape(t), 42.0f));
        OK(mj_tensor_dict_set(sd, mj_tensor_dict_key(cur, i), z));
        mj_tensor_release(z);
    }
    /* the last key has the wrong shape */
    mj_tensor *bad = full1(15, 0.0f);
    OK(mj_tensor_dict_set(sd, "seq.1.parametrizations.weight.0.mask", bad));
    mj_load_report r;
    FAILS(mj_module_load_state_dict(m, sd, false, &r), MJ_ERR_SHAPE,
          "'seq.1.parametrizations.weight.0.mask'");
    cr_assert(strstr(mj_last_error(), "[15]"), "%s", mj_last_error());
    cr_assert(strstr(mj_last_error(), "[16, 16]"), "%s", mj_last_error());
    mj_tensor_dict *after = assert_clean_load_gives(m, &r, snapshot);
    mj_tensor_release(bad);
    mj_tensor_dict_free(after);
    mj_tensor_dict_free(cur);
    mj_tensor_dict_free(snapshot);
    mj_tensor_dict_free(sd);
    mj_module_free(m);
}

Test(state_dict, load_refreshes_cached_values) {
    mj_module *m = seed_model(false, true, 1.0f);
    mj_module *lin = mj_module_find(m, "linear");
    OK(mj_parametrize_cache_begin(m));
    mj_tensor *w1;
    OK(mj_module_get(lin, "weight", &w1));
    cr_assert_eq(mj_tensor_data(w1)[0], 1.0f);
    mj_tensor_dict *sd;
    OK(mj_tensor_dict_new(&sd));
    mj_tensor *five;
    int64_t s[2] = {16, 16};
    OK(mj_tensor_full(&five, 2, s, 5.0f));
    OK(mj_tensor_dict_set(sd, "linear.parametrizations.weight.original", five));
    OK(mj_module_load_state_dict(m, sd, false, NULL));
    mj_tensor *w2;
    OK(mj_module_get(lin, "weight", &w2));
    cr_assert_eq(mj_tensor_data(w2)[0], 5.0f, "mask 1 * loaded 5");
    mj_parametrize_cache_end(m);
    MJT_RELEASE(w1, w2, five);
    mj_tensor_dict_free(sd);
    mj_module_free(m);
}

/* The key index against a naive reference: many keys, replacement keeps the
 * position, removal keeps the order of the rest, lookups stay right. */
Test(state_dict, dict_index_matches_naive_reference) {
    enum { N = 20000 };
    mj_tensor_dict *d;
    OK(mj_tensor_dict_new(&d));
    mj_tensor *a, *b;
    int64_t one = 1;
    mj_tensor_zeros(&a, 1, &one);
    mj_tensor_ones(&b, 1, &one);
    char key[32];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "layer.%d.weight", i);
        OK(mj_tensor_dict_set(d, key, a));
    }
    for (int i = 0; i < N; i += 7) { /* replace in place */
        snprintf(key, sizeof key, "layer.%d.weight", i);
        OK(mj_tensor_dict_set(d, key, b));
    }
    for (int i = 0; i < N; i += 1000) {
        snprintf(key, sizeof key, "layer.%d.weight", i);
        OK(mj_tensor_dict_remove(d, key));
    }
    cr_assert_eq(mj_tensor_dict_size(d), N - N / 1000);
    int pos = 0;
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "layer.%d.weight", i);
        mj_tensor *t = mj_tensor_dict_get(d, key);
        if (i % 1000 == 0) {
            cr_assert_null(t, "%s was removed", key);
            continue;
        }
        cr_assert_eq(t, i % 7 == 0 ? b : a, "%s", key);
        cr_assert_str_eq(mj_tensor_dict_key(d, pos), key, "insertion order kept");
        pos++;
    }
    cr_assert_null(mj_tensor_dict_get(d, "layer.-1.weight"));
    for (int i = 0; i < 3000; i++) {
        snprintf(key, sizeof key, "m%d", i);
        OK(mj_tensor_dict_set_meta(d, key, key + 1));
    }
    cr_assert_str_eq(mj_tensor_dict_get_meta(d, "m2999"), "2999");
    cr_assert_str_eq(mj_tensor_dict_meta_key(d, 5), "m5");
    mj_tensor_dict_free(d);
    MJT_RELEASE(a, b);
}
