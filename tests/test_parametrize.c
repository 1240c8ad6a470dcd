/* Parametrizations: chains, order, removal, assignment, caching, names and
 * the repr tree. Name lists and reprs were printed by PyTorch 1.13
 * (torch.nn.utils.parametrize + torch.ao.sparsity FakeSparsity). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "maskjit.h"

#include "test_util.h"

/* ---- user parametrizations ------------------------------------------------ */

static mj_status scalar_op(mj_status (*op)(mj_tensor **, const mj_tensor *, const mj_tensor *),
                           const mj_tensor *x, float c, mj_tensor **y) {
    mj_tensor *k;
    mj_status s = mj_tensor_full(&k, mj_tensor_rank(x), mj_tensor_shape(x), c);
    if (s != MJ_OK) return s;
    s = op(y, k, x);
    mj_tensor_release(k);
    return s;
}

static mj_status scale_forward(mj_parametrization *self, const mj_tensor *x, mj_tensor **y) {
    int *calls = mj_parametrization_user(self);
    if (calls) (*calls)++;
    return scalar_op(mj_mul, x, 2.0f, y);
}
static mj_status scale_inverse(mj_parametrization *self, const mj_tensor *y, mj_tensor **x) {
    (void)self;
    return scalar_op(mj_mul, y, 0.5f, x);
}
static const mj_parametrization_ops scale_ops = {
    .type_name = "Scale", .forward = scale_forward, .right_inverse = scale_inverse};

static mj_status add1_forward(mj_parametrization *self, const mj_tensor *x, mj_tensor **y) {
    (void)self;
    return scalar_op(mj_add, x, 1.0f, y);
}
static const mj_parametrization_ops add1_ops = {.type_name = "AddOne", .forward = add1_forward};

static mj_status bad_shape_forward(mj_parametrization *self, const mj_tensor *x, mj_tensor **y) {
    (void)self;
    return mj_transpose(y, x);
}
static const mj_parametrization_ops transpose_ops = {.type_name = "Transpose",
                                                     .forward = bad_shape_forward};

static mj_parametrization *new_param(const mj_parametrization_ops *ops, void *user) {
    mj_parametrization *p;
    OK(mj_parametrization_new(&p, ops, user));
    return p;
}

static mj_parametrization *new_mask(mj_tensor *mask) {
    mj_parametrization *p;
    OK(mj_fake_sparsity_new(&p, mask));
    return p;
}

/* ---- helpers -------------------------------------------------------------- */

static mj_tensor *random_mask(int64_t r, int64_t c, mj_rng *rng) {
    mj_tensor *t;
    int64_t shape[2] = {r, c};
    OK(mj_tensor_zeros(&t, 2, shape));
    float *d = mj_tensor_data_mut(t);
    for (int64_t i = 0; i < r * c; i++) d[i] = mj_rng_uniform(rng) < 0.5f ? 1.0f : 0.0f;
    return t;
}

static mj_tensor *get(mj_module *m, const char *name) {
    mj_tensor *t;
    OK(mj_module_get(m, name, &t));
    return t;
}

static mj_tensor *clone(const mj_tensor *t) {
    mj_tensor *c;
    OK(mj_tensor_clone(&c, t));
    return c;
}

static void assert_keys(const mj_tensor_dict *d, const char *const *keys, int n) {
    cr_assert_eq(mj_tensor_dict_size(d), n, "dict has %d keys, expected %d",
                 mj_tensor_dict_size(d), n);
    for (int i = 0; i < n; i++)
        cr_assert_str_eq(mj_tensor_dict_key(d, i), keys[i], "key %d", i);
}

static mj_module *linear(int64_t in, int64_t out, bool bias, uint64_t seed) {
    mj_rng rng = mjt_rng(seed);
    mj_module *m;
    OK(mj_linear_new(&m, in, out, bias, &rng));
    return m;
}

/* A Linear(4, 3) from seed (plain_linear); mask_then gives its weight a
 * random FakeSparsity mask (drawn from rng), then ops. */
typedef struct masked {
    mj_module *lin;
    mj_tensor *w_obj; /* the weight's tensor object before (a reference) */
    mj_tensor *w0;    /* a copy of its values before */
    mj_tensor *mask;
} masked;

static masked plain_linear(bool bias, uint64_t seed) {
    masked m = {.lin = linear(4, 3, bias, seed)};
    m.w_obj = get(m.lin, "weight");
    m.w0 = clone(m.w_obj);
    return m;
}

static masked mask_then(const mj_parametrization_ops *ops, bool bias, uint64_t seed, mj_rng *rng) {
    masked m = plain_linear(bias, seed);
    m.mask = random_mask(3, 4, rng);
    OK(mj_register_parametrization(m.lin, "weight", new_mask(m.mask)));
    OK(mj_register_parametrization(m.lin, "weight", new_param(ops, NULL)));
    return m;
}

static void masked_free(masked m) {
    MJT_RELEASE(m.w_obj, m.w0, m.mask);
    mj_module_free(m.lin);
}

/* Which names of a module assert_names lists. */
enum names { PARAMETERS, BUFFERS, STATE_DICT, STATE_DICT_WITH_MASKS };

/* m's names of the kind which are keys, in this order. */
static void assert_names(mj_module *m, enum names which, const char *const *keys, int n) {
    mj_tensor_dict *d;
    switch (which) {
    case PARAMETERS: OK(mj_module_named_parameters(m, &d)); break;
    case BUFFERS: OK(mj_module_named_buffers(m, &d)); break;
    default: OK(mj_module_state_dict(m, which == STATE_DICT_WITH_MASKS, &d)); break;
    }
    assert_keys(d, keys, n);
    mj_tensor_dict_free(d);
}

/* ---- chains --------------------------------------------------------------- */

Test(parametrize, chain_mask_then_scale) {
    mj_rng rng = mjt_rng(3);
    masked mk = mask_then(&scale_ops, true, 11, &rng);
    mj_module *lin = mk.lin;
    cr_assert_eq(mj_parametrization_count(lin, "weight"), 2);
    cr_assert_str_eq(mj_parametrization_type(mj_module_parametrization(lin, "weight", 0)),
                     "FakeSparsity");
    cr_assert_str_eq(mj_parametrization_type(mj_module_parametrization(lin, "weight", 1)), "Scale");

    mj_tensor *v = get(lin, "weight");
    const float *w = mj_tensor_data(mk.w0), *md = mj_tensor_data(mk.mask), *vd = mj_tensor_data(v);
    for (int i = 0; i < 12; i++) cr_assert_eq(vd[i], 2.0f * (md[i] * w[i]), "element %d", i);
    /* the original is untouched (FakeSparsity has no right_inverse) */
    cr_assert(mj_tensor_equal(mj_module_original(lin, "weight"), mk.w0));

    /* forward uses the parametrized value: eager linear with v as reference */
    mj_tensor *x, *y, *ref;
    int64_t xs[2] = {2, 4};
    OK(mj_tensor_randn(&x, 2, xs, &rng));
    OK(mj_module_forward(lin, x, &y));
    mj_tensor *b = get(lin, "bias");
    OK(mj_linear(&ref, x, v, b));
    cr_assert(mj_tensor_equal(y, ref));
    MJT_RELEASE(b, x, y, ref, v);
    masked_free(mk);
}

Test(parametrize, order_of_registration_matters) {
    mj_rng rng = mjt_rng(5);
    mj_module *a = linear(4, 3, false, 1), *b = linear(4, 3, false, 1);
    mj_tensor *w = get(a, "weight");
    mj_tensor *mask = random_mask(3, 4, &rng);
    /* a: mask(add1(W)) = mask * (W + 1);  b: add1(mask(W)) = mask * W + 1 */
    OK(mj_register_parametrization(a, "weight", new_param(&add1_ops, NULL)));
    OK(mj_register_parametrization(a, "weight", new_mask(mask)));
    OK(mj_register_parametrization(b, "weight", new_mask(mask)));
    OK(mj_register_parametrization(b, "weight", new_param(&add1_ops, NULL)));
    mj_tensor *va = get(a, "weight"), *vb = get(b, "weight");
    const float *wd = mj_tensor_data(w), *md = mj_tensor_data(mask);
    bool differ = false;
    for (int i = 0; i < 12; i++) {
        cr_assert_eq(mj_tensor_data(va)[i], md[i] * (wd[i] + 1.0f), "a[%d]", i);
        cr_assert_eq(mj_tensor_data(vb)[i], md[i] * wd[i] + 1.0f, "b[%d]", i);
        differ |= mj_tensor_data(va)[i] != mj_tensor_data(vb)[i];
    }
    cr_assert(differ, "the two orders must give different values");
    MJT_RELEASE(va, vb, w, mask);
    mj_module_free(a);
    mj_module_free(b);
}

Test(parametrize, remove_leave_parametrized_bakes_value_into_original_object) {
    mj_rng rng = mjt_rng(9);
    masked mk = mask_then(&scale_ops, true, 2, &rng);
    mj_module *lin = mk.lin;
    cr_assert_eq(mj_module_original(lin, "weight"), mk.w_obj, "identity kept at registration");

    OK(mj_remove_parametrizations(lin, "weight", true));
    cr_assert(!mj_is_parametrized(lin, "weight"));
    cr_assert(!mj_is_parametrized(lin, NULL));
    cr_assert_null(mj_module_original(lin, "weight"));
    mj_tensor *v = get(lin, "weight");
    cr_assert_eq(v, mk.w_obj, "the original object is the plain parameter again");
    for (int i = 0; i < 12; i++)
        cr_assert_eq(mj_tensor_data(v)[i], 2.0f * (mj_tensor_data(mk.mask)[i] * mj_tensor_data(mk.w0)[i]));
    /* PyTorch re-registers the tensor: named_parameters gives ['bias', 'weight'] */
    const char *keys[] = {"bias", "weight"};
    assert_names(lin, PARAMETERS, keys, 2);
    char *repr = mjt_module_str(lin);
    cr_assert_str_eq(repr, "Linear(in_features=4, out_features=3, bias=True)\n");
    free(repr);

    FAILS(mj_remove_parametrizations(lin, "weight", true), MJ_ERR_KEY,
          "no parametrization on 'weight'");
    mj_tensor_release(v);
    masked_free(mk);
}

Test(parametrize, remove_not_leave_parametrized_restores_original) {
    mj_rng rng = mjt_rng(10);
    masked mk = mask_then(&add1_ops, false, 3, &rng);
    OK(mj_remove_parametrizations(mk.lin, "weight", false));
    mj_tensor *v = get(mk.lin, "weight");
    cr_assert_eq(v, mk.w_obj);
    cr_assert(mj_tensor_equal(v, mk.w0));
    mj_tensor_release(v);
    masked_free(mk);
}

/* ---- assignment ----------------------------------------------------------- */

Test(parametrize, right_inverse_at_registration_and_assignment) {
    masked pl = plain_linear(false, 4);
    mj_module *lin = pl.lin;
    mj_tensor *w_obj = pl.w_obj, *w0 = pl.w0;
    OK(mj_register_parametrization(lin, "weight", new_param(&scale_ops, NULL)));
    /* original = right_inverse(W) = 0.5 W, in the same tensor object */
    cr_assert_eq(mj_module_original(lin, "weight"), w_obj);
    for (int i = 0; i < 12; i++)
        cr_assert_eq(mj_tensor_data(w_obj)[i], 0.5f * mj_tensor_data(w0)[i]);
    mj_tensor *v = get(lin, "weight"); /* 2 * 0.5 W == W exactly */
    cr_assert(mj_tensor_equal(v, w0));
    mj_tensor_release(v);

    mj_tensor *x;
    int64_t shape[2] = {3, 4};
    OK(mj_tensor_arange(&x, 12));
    mj_tensor *x2;
    OK(mj_reshape(&x2, x, 2, shape));
    OK(mj_module_set(lin, "weight", x2));
    for (int i = 0; i < 12; i++) cr_assert_eq(mj_tensor_data(w_obj)[i], 0.5f * (float)i);
    v = get(lin, "weight");
    cr_assert(mj_tensor_equal(v, x2));
    mj_tensor_release(v);

    /* a wrong shape is refused and changes nothing */
    mj_tensor *before = clone(w_obj);
    FAILS(mj_module_set(lin, "weight", x), MJ_ERR_SHAPE, "[12]");
    cr_assert(mj_tensor_equal(w_obj, before));
    MJT_RELEASE(before, x, x2);
    masked_free(pl);
}

Test(parametrize, assignment_through_fake_sparsity_is_refused) {
    mj_rng rng = mjt_rng(12);
    masked mk = mask_then(&scale_ops, false, 5, &rng);
    mj_module *lin = mk.lin;
    mj_tensor *before = clone(mj_module_original(lin, "weight"));
    mj_tensor *value;
    int64_t shape[2] = {3, 4};
    OK(mj_tensor_ones(&value, 2, shape));
    FAILS(mj_module_set(lin, "weight", value), MJ_ERR_UNSUPPORTED, "FakeSparsity");
    cr_assert(strstr(mj_last_error(), "right_inverse"), "%s", mj_last_error());
    cr_assert(mj_tensor_equal(mj_module_original(lin, "weight"), before));

    /* a plain parameter is copied into; shapes must match */
    mj_module *plain = linear(4, 3, true, 6);
    mj_tensor *b_obj = get(plain, "bias");
    mj_tensor *bias_value;
    int64_t bshape[1] = {3};
    OK(mj_tensor_full(&bias_value, 1, bshape, 7.0f));
    OK(mj_module_set(plain, "bias", bias_value));
    mj_tensor *b_now = get(plain, "bias");
    cr_assert_eq(b_now, b_obj);
    cr_assert(mj_tensor_equal(b_now, bias_value));
    FAILS(mj_module_set(plain, "bias", value), MJ_ERR_SHAPE, "[3, 4]");
    FAILS(mj_module_set(plain, "nope", value), MJ_ERR_KEY, "'nope'");
    MJT_RELEASE(b_now, b_obj, bias_value);
    mj_module_free(plain);

    MJT_RELEASE(value, before);
    masked_free(mk);
}

/* ---- cached mode ---------------------------------------------------------- */

Test(parametrize, cached_mode_computes_once) {
    int calls = 0;
    mj_module *lin = linear(4, 3, true, 7);
    mj_module *seq;
    OK(mj_sequential_new(&seq, 1, &lin));
    OK(mj_register_parametrization(lin, "weight", new_param(&scale_ops, &calls)));
    calls = 0; /* the registration check ran forward once */

    mj_tensor *a = get(lin, "weight"), *b = get(lin, "weight");
    cr_assert_eq(calls, 2, "uncached: every read computes");
    cr_assert(!mj_parametrize_is_cached(seq));
    MJT_RELEASE(a, b);

    OK(mj_parametrize_cache_begin(seq));
    cr_assert(mj_parametrize_is_cached(seq));
    cr_assert(mj_parametrize_is_cached(lin), "the flag covers the subtree");
    calls = 0;
    a = get(lin, "weight");
    b = get(lin, "weight");
    mj_tensor *x, *y;
    int64_t xs[2] = {2, 4};
    OK(mj_tensor_ones(&x, 2, xs));
    OK(mj_module_forward(seq, x, &y));
    cr_assert_eq(calls, 1, "cached: computed once, got %d calls", calls);
    cr_assert_eq(a, b, "the cached tensor is returned");
    MJT_RELEASE(a, b, y);
    mj_parametrize_cache_end(seq);
    cr_assert(!mj_parametrize_is_cached(seq));
    cr_assert(!mj_parametrize_is_cached(lin));

    calls = 0;
    OK(mj_module_forward(seq, x, &y));
    mj_tensor_release(y);
    a = get(lin, "weight");
    mj_tensor_release(a);
    cr_assert_eq(calls, 2, "after cache_end every read computes again");
    mj_tensor_release(x);
    mj_module_free(seq);
}

/* ---- names, order and repr (lists printed by PyTorch 1.13) ---------------- */

static mj_module *seed_model_with_masks(bool bias) {
    mj_module *m;
    OK(mj_model_under_test_new(&m, bias));
    const char *mods[3] = {"linear", "seq.0", "seq.1"};
    for (int i = 0; i < 3; i++) {
        mj_tensor *eye;
        OK(mj_tensor_eye(&eye, 16));
        OK(mj_register_parametrization(mj_module_find(m, mods[i]), "weight", new_mask(eye)));
        mj_tensor_release(eye);
    }
    return m;
}

Test(parametrize, seed_model_names_match_pytorch) {
    mj_module *m = seed_model_with_masks(true);
    mj_tensor_dict *d;

    const char *params[] = {"linear.bias", "linear.parametrizations.weight.original",
                            "seq.0.bias",  "seq.0.parametrizations.weight.original",
                            "seq.1.bias",  "seq.1.parametrizations.weight.original"};
    OK(mj_module_named_parameters(m, &d));
    assert_keys(d, params, 6);
    cr_assert_eq(mj_tensor_dict_get(d, "seq.0.parametrizations.weight.original"),
                 mj_module_original(mj_module_find(m, "seq.0"), "weight"));
    mj_tensor_dict_free(d);

    const char *buffers[] = {"linear.parametrizations.weight.0.mask",
                             "seq.0.parametrizations.weight.0.mask",
                             "seq.1.parametrizations.weight.0.mask"};
    assert_names(m, BUFFERS, buffers, 3);

    assert_names(m, STATE_DICT, params, 6); /* PyTorch's state_dict keys equal the parameter list here */

    /* With the masks: PyTorch's order when FakeSparsity does not hide them. */
    const char *with_masks[] = {
        "linear.bias", "linear.parametrizations.weight.original",
        "linear.parametrizations.weight.0.mask", "seq.0.bias",
        "seq.0.parametrizations.weight.original", "seq.0.parametrizations.weight.0.mask",
        "seq.1.bias", "seq.1.parametrizations.weight.original",
        "seq.1.parametrizations.weight.0.mask"};
    assert_names(m, STATE_DICT_WITH_MASKS, with_masks, 9);
    mj_module_free(m);

    m = seed_model_with_masks(false);
    const char *nobias[] = {"linear.parametrizations.weight.original",
                            "seq.0.parametrizations.weight.original",
                            "seq.1.parametrizations.weight.original"};
    assert_names(m, STATE_DICT, nobias, 3);
    mj_module_free(m);
}

/* tests/fixtures/seed_model_repr.txt: PyTorch 1.13's repr of
 * tools/export_torch.py's ModelUnderTest with a FakeSparsity on each weight. */
Test(parametrize, seed_model_repr_matches_pytorch) {
    mj_module *m = seed_model_with_masks(true);
    char *s = mjt_module_str(m);
    char *torch_repr = mjt_read_file(MJ_SOURCE_ROOT "/tests/fixtures/seed_model_repr.txt", NULL);
    cr_assert_str_eq(s, torch_repr);
    MJT_FREE(torch_repr, s);
    mj_module_free(m);

    /* two parametrizations in one list */
    mj_module *lin = linear(4, 3, true, 8);
    mj_tensor *ones;
    int64_t shape[2] = {3, 4};
    OK(mj_tensor_ones(&ones, 2, shape));
    OK(mj_register_parametrization(lin, "weight", new_mask(ones)));
    OK(mj_register_parametrization(lin, "weight", new_param(&scale_ops, NULL)));
    s = mjt_module_str(lin);
    cr_assert_str_eq(s, "ParametrizedLinear(\n"
                        "  in_features=4, out_features=3, bias=True\n"
                        "  (parametrizations): ModuleDict(\n"
                        "    (weight): ParametrizationList(\n"
                        "      (0): FakeSparsity()\n"
                        "      (1): Scale()\n"
                        "    )\n"
                        "  )\n"
                        ")\n");
    free(s);
    mj_tensor_release(ones);
    mj_module_free(lin);
}

/* PyTorch adds the "parametrizations" ModuleDict as a child when the first
 * parametrization is registered: children added later come after it.
 * Module U: parameter w, child sub, buffer b; FakeSparsity on w; child sub2. */
Test(parametrize, parametrizations_sit_among_children_like_pytorch) {
    mj_module *u;
    OK(mj_module_new(&u, "U", NULL, NULL, NULL));
    mj_tensor *w, *b;
    int64_t s2[2] = {2, 2}, s1[1] = {2};
    OK(mj_tensor_ones(&w, 2, s2));
    OK(mj_tensor_ones(&b, 1, s1));
    OK(mj_module_add_parameter(u, "w", w));
    OK(mj_module_add_child(u, "sub", linear(2, 2, true, 1)));
    OK(mj_module_add_buffer(u, "b", b, true));
    OK(mj_register_parametrization(u, "w", new_mask(w)));
    OK(mj_module_add_child(u, "sub2", linear(2, 2, true, 2)));

    const char *params[] = {"sub.weight", "sub.bias", "parametrizations.w.original", "sub2.weight",
                            "sub2.bias"};
    assert_names(u, PARAMETERS, params, 5);
    const char *sd[] = {"b", "sub.weight", "sub.bias", "parametrizations.w.original",
                        "sub2.weight", "sub2.bias"};
    assert_names(u, STATE_DICT, sd, 6);
    char *r = mjt_module_str(u);
    cr_assert_str_eq(r, "ParametrizedU(\n"
                        "  (sub): Linear(in_features=2, out_features=2, bias=True)\n"
                        "  (parametrizations): ModuleDict(\n"
                        "    (w): ParametrizationList(\n"
                        "      (0): FakeSparsity()\n"
                        "    )\n"
                        "  )\n"
                        "  (sub2): Linear(in_features=2, out_features=2, bias=True)\n"
                        ")\n");
    free(r);
    MJT_RELEASE(w, b);
    mj_module_free(u);
}

Test(parametrize, parametrized_buffer_stays_a_buffer) {
    mj_module *u;
    OK(mj_module_new(&u, "U", NULL, NULL, NULL));
    mj_tensor *t;
    int64_t s2[2] = {2, 3};
    OK(mj_tensor_full(&t, 2, s2, 3.0f));
    OK(mj_module_add_buffer(u, "buf", t, true));
    OK(mj_register_parametrization(u, "buf", new_param(&add1_ops, NULL)));
    const char *keys[] = {"parametrizations.buf.original"};
    assert_names(u, BUFFERS, keys, 1);
    assert_names(u, PARAMETERS, NULL, 0);
    mj_tensor *v = get(u, "buf");
    for (int i = 0; i < 6; i++) cr_assert_eq(mj_tensor_data(v)[i], 4.0f);
    MJT_RELEASE(v, t);
    mj_module_free(u);
}

/* ---- FakeStructuredSparsity ------------------------------------------------ */

Test(parametrize, structured_row_mask) {
    masked pl = plain_linear(false, 9);
    mj_module *lin = pl.lin;
    const mj_tensor *w0 = pl.w0;
    const float rows[3] = {1.0f, 0.0f, 1.0f};
    int64_t rs[1] = {3};
    mj_tensor *row;
    OK(mj_tensor_from_data(&row, 1, rs, rows));
    mj_parametrization *p;
    OK(mj_fake_structured_sparsity_new(&p, row));
    OK(mj_register_parametrization(lin, "weight", p));
    mj_tensor *v = get(lin, "weight");
    for (int o = 0; o < 3; o++)
        for (int k = 0; k < 4; k++)
            cr_assert_eq(mj_tensor_data(v)[o * 4 + k], rows[o] * mj_tensor_data(w0)[o * 4 + k]);
    mj_tensor_release(v);

    /* a row mask of the wrong length is refused at registration */
    mj_module *other = linear(4, 5, false, 10);
    OK(mj_fake_structured_sparsity_new(&p, row));
    FAILS(mj_register_parametrization(other, "weight", p), MJ_ERR_SHAPE, "[5, 4]");
    cr_assert(!mj_is_parametrized(other, NULL));
    mj_parametrization_free(p);
    /* and must be 1-D */
    mj_tensor *m2;
    int64_t s2[2] = {3, 1};
    OK(mj_tensor_ones(&m2, 2, s2));
    FAILS(mj_fake_structured_sparsity_new(&p, m2), MJ_ERR_SHAPE, "[3, 1]");
    MJT_RELEASE(m2, row);
    mj_module_free(other);
    masked_free(pl);
}

/* ---- error paths ---------------------------------------------------------- */

Test(parametrize, mismatched_mask_is_refused_and_changes_nothing) {
    masked pl = plain_linear(true, 12);
    mj_module *lin = pl.lin;
    mj_tensor *w = pl.w_obj, *w0 = pl.w0;
    mj_tensor *mask;
    int64_t s44[2] = {4, 4};
    OK(mj_tensor_ones(&mask, 2, s44));
    mj_parametrization *p = new_mask(mask);
    FAILS(mj_register_parametrization(lin, "weight", p), MJ_ERR_SHAPE, "[4, 4]");
    cr_assert(strstr(mj_last_error(), "[3, 4]"), "%s", mj_last_error());
    cr_assert(!mj_is_parametrized(lin, NULL));
    mj_tensor *after = get(lin, "weight");
    cr_assert_eq(after, w, "the weight is still the plain parameter");
    cr_assert(mj_tensor_equal(after, w0));
    mj_tensor_release(after);
    const char *keys[] = {"weight", "bias"};
    assert_names(lin, PARAMETERS, keys, 2);

    /* p was not consumed: the caller still owns it and can use it elsewhere */
    mj_module *l44 = linear(4, 4, false, 13);
    OK(mj_register_parametrization(l44, "weight", p));
    FAILS(mj_register_parametrization(lin, "weight", p), MJ_ERR_STATE, "already registered");

    /* a shape-changing parametrization is refused (forward succeeds) */
    mj_parametrization *t = new_param(&transpose_ops, NULL);
    FAILS(mj_register_parametrization(lin, "weight", t), MJ_ERR_SHAPE, "changes the shape");
    cr_assert(strstr(mj_last_error(), "Transpose"), "%s", mj_last_error());

    /* unknown tensor */
    FAILS(mj_register_parametrization(lin, "foo", t), MJ_ERR_KEY, "'foo'");
    mj_parametrization_free(t);
    FAILS(mj_module_get(lin, "foo", &after), MJ_ERR_KEY, "'foo'");

    /* a later mask of the wrong shape, appended to an existing chain */
    mj_tensor *ones34;
    int64_t s34[2] = {3, 4};
    OK(mj_tensor_ones(&ones34, 2, s34));
    OK(mj_register_parametrization(lin, "weight", new_mask(ones34)));
    p = new_mask(mask);
    FAILS(mj_register_parametrization(lin, "weight", p), MJ_ERR_SHAPE, "[4, 4]");
    cr_assert_eq(mj_parametrization_count(lin, "weight"), 1);
    mj_parametrization_free(p);

    MJT_RELEASE(ones34, mask);
    mj_module_free(l44);
    masked_free(pl);
}
