/* maskjit against PyTorch: every model file in tests/fixtures/ was written by
 * tools/make_fixtures.py with PyTorch's weights, masks, an input and
 * PyTorch's output. Each test rebuilds the model from the file's spec,
 * registers the masks (mj_model_apply_masks), loads the state dict (non-strict: "input" and
 * "expected" are unexpected keys), runs eager, traced (interpreter), compiled
 * exact, frozen and fast, and compares each with PyTorch's output at
 * torch.testing.assert_close's float32 tolerances. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "maskjit.h"
#include "test_util.h"

#define FIXTURES MJ_SOURCE_ROOT "/tests/fixtures"
#define MASK_SUFFIX ".parametrizations.weight.0.mask"

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Is key listed in the comma-separated metadata "maskjit.structured"? */
static bool listed_structured(const mj_tensor_dict *file, const char *key) {
    const char *list = mj_tensor_dict_get_meta(file, "maskjit.structured");
    if (!list) return false;
    size_t k = strlen(key);
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == k && strncmp(p, key, n) == 0) return true;
        if (!end) break;
        p = end + 1;
    }
    return false;
}

/* After mj_model_apply_masks: every mask key of the file names a parametrized
 * Linear whose parametrization kind matches the file (a row mask, listed in
 * "maskjit.structured", is FakeStructuredSparsity). Returns the row-mask count. */
static int check_mask_kinds(mj_module *m, const mj_tensor_dict *file) {
    int n_structured = 0;
    for (int i = 0; i < mj_tensor_dict_size(file); i++) {
        const char *key = mj_tensor_dict_key(file, i);
        if (!ends_with(key, MASK_SUFFIX)) continue;
        const mj_tensor *mask = mj_tensor_dict_value(file, i);
        bool structured = listed_structured(file, key);
        cr_assert_eq(structured, mj_tensor_rank(mask) == 1,
                     "%s: rank %d disagrees with the metadata", key, mj_tensor_rank(mask));
        char path[256];
        size_t n = strlen(key) - strlen(MASK_SUFFIX);
        cr_assert_lt(n, sizeof path);
        memcpy(path, key, n);
        path[n] = '\0';
        mj_module *lin = mj_module_find(m, path);
        cr_assert_not_null(lin, "%s: no module '%s'", key, path);
        cr_assert_eq(mj_parametrization_count(lin, "weight"), 1, "%s", path);
        const char *kind = mj_parametrization_type(mj_module_parametrization(lin, "weight", 0));
        cr_assert_str_eq(kind, structured ? "FakeStructuredSparsity" : "FakeSparsity", "%s", path);
        n_structured += structured;
    }
    return n_structured;
}

/* The same fixture through the trace (made at batch 3, the fixtures' input
 * has batch 5) and the compiled paths: every path within PyTorch's
 * tolerance, exact ones bit-identical to eager. */
static void check_traced_and_compiled(const char *name, mj_module *m, const mj_tensor *x,
                                      const mj_tensor *expected, const mj_tensor *eager) {
    cr_assert_neq(mj_tensor_dim(x, 0), 3, "the fixture batch must differ from the traced one");
    mj_tensor *example;
    OK(mj_tensor_ones(&example, 2, (int64_t[]){3, mj_tensor_dim(x, 1)}));
    mj_graph *g;
    cr_assert_eq(mj_trace_module(m, example, &g), MJ_OK, "%s: %s", name, mj_last_error());
    mj_tensor_release(example);
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    static const char *const paths[] = {"traced", "compiled-exact", "compiled-frozen",
                                        "compiled-fast"};
    for (int p = 0; p < 4; p++) {
        mj_tensor *y = NULL;
        mj_compiled *c = NULL;
        if (p == 0) {
            cr_assert_eq(mj_graph_run(g, x, &y), MJ_OK, "%s: %s", name, mj_last_error());
        } else {
            mj_compile_options o;
            mj_compile_options_init(&o);
            o.frozen = p == 2;
            o.numeric = p == 3 ? MJ_NUMERIC_FAST : MJ_NUMERIC_EXACT;
            cr_assert_eq(mj_jit_compile(jit, g, &o, &c), MJ_OK, "%s: %s", name, mj_last_error());
            cr_assert_eq(mj_compiled_run(c, x, &y), MJ_OK, "%s: %s", name, mj_last_error());
        }
        mj_compare vs_torch = mj_tensor_compare(y, expected, MJ_RTOL_F32, MJ_ATOL_F32);
        cr_assert(vs_torch.close, "%s %s vs PyTorch: max abs %g, max rel %g", name, paths[p],
                  vs_torch.max_abs, vs_torch.max_rel);
        if (p < 3) cr_assert(mj_tensor_equal(y, eager), "%s %s not bit-identical to eager", name, paths[p]);
        mj_tensor_release(y);
        mj_compiled_free(c);
    }
    mj_jit_free(jit);
    mj_graph_free(g);
}

/* Loads fixture `name`, runs it, compares; returns the file for extra checks
 * (the caller frees it). */
static mj_tensor_dict *check_fixture(const char *name, const char *want_spec, int want_structured) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s.safetensors", FIXTURES, name);
    mj_tensor_dict *file;
    OK(mj_safetensors_load(path, &file));
    const char *spec = mj_tensor_dict_get_meta(file, "maskjit.model");
    cr_assert_not_null(spec, "%s: no maskjit.model metadata", name);
    cr_assert_str_eq(spec, want_spec);
    cr_assert_str_eq(mj_tensor_dict_get_meta(file, "maskjit.generator"), "tools/make_fixtures.py");
    cr_assert_not_null(mj_tensor_dict_get_meta(file, "torch.version"));

    mj_rng rng = mjt_rng(1234); /* init only: every weight is overwritten below */
    mj_module *m;
    cr_assert_eq(mj_model_from_spec(spec, &rng, &m), MJ_OK, "%s: %s", spec, mj_last_error());
    /* the file's mask keys register the masks; its other keys are ignored */
    OK(mj_model_apply_masks(m, file, 1.0, &rng));
    cr_assert_eq(check_mask_kinds(m, file), want_structured);

    mj_load_report rep = {0};
    OK(mj_module_load_state_dict(m, file, false, &rep));
    cr_assert_eq(rep.n_missing, 0, "%s: %d missing keys, first '%s'", name, rep.n_missing,
                 rep.n_missing ? rep.missing[0] : "");
    cr_assert_eq(rep.n_unexpected, 2, "%s: %d unexpected keys", name, rep.n_unexpected);
    for (int i = 0; i < rep.n_unexpected; i++)
        cr_assert(strcmp(rep.unexpected[i], "input") == 0 ||
                      strcmp(rep.unexpected[i], "expected") == 0,
                  "unexpected key '%s'", rep.unexpected[i]);
    mj_load_report_free(&rep);

    const mj_tensor *x = mj_tensor_dict_get(file, "input");
    const mj_tensor *expected = mj_tensor_dict_get(file, "expected");
    cr_assert_not_null(x);
    cr_assert_not_null(expected);
    mj_tensor *y = mjt_forward(m, x);
    mj_compare c = mj_tensor_compare(y, expected, MJ_RTOL_F32, MJ_ATOL_F32);
    char desc[512];
    mj_compare_describe(&c, y, expected, desc, sizeof desc);
    cr_assert(c.same_shape && c.close, "%s (%s) vs PyTorch: max abs %g, max rel %g: %s", name, spec,
              c.max_abs, c.max_rel, desc);

    check_traced_and_compiled(name, m, x, expected, y);
    mj_tensor_release(y);
    mj_module_free(m);
    return file;
}

Test(torch_fixtures, mut_identity_masks) {
    mj_tensor_dict *f = check_fixture("mut", "mut", 0);
    /* the fixture itself, against a naive reference: identity masks keep the
     * diagonal of W = 1, 2, 3, so y = 3*(2*(x+10)+20)+30 elementwise */
    const mj_tensor *x = mj_tensor_dict_get(f, "input"), *e = mj_tensor_dict_get(f, "expected");
    for (int64_t i = 0; i < mj_tensor_numel(x); i++) {
        double want = 3.0 * (2.0 * (mj_tensor_data(x)[i] + 10.0) + 20.0) + 30.0;
        cr_assert_float_eq(mj_tensor_data(e)[i], want, 1e-4, "element %lld", (long long)i);
    }
    mj_tensor_dict_free(f);
}

/* The fixtures checked with nothing more than check_fixture: fixture
 * tests/fixtures/NAME.safetensors against the model of spec. */
#define PLAIN_FIXTURE(name, spec) \
    Test(torch_fixtures, name) { mj_tensor_dict_free(check_fixture(#name, spec, 0)); }
PLAIN_FIXTURE(mut_random, "mut")
PLAIN_FIXTURE(mut_nobias, "mut-nobias")
PLAIN_FIXTURE(mlp_relu, "mlp:16,32,8:act=relu")
PLAIN_FIXTURE(mlp_gelu, "mlp:16,32,8:act=gelu")
PLAIN_FIXTURE(mlp_gelu_tanh, "mlp:16,32,8:act=gelu_tanh")
PLAIN_FIXTURE(mlp_tanh, "mlp:16,32,8:act=tanh")
PLAIN_FIXTURE(mlp_sigmoid, "mlp:16,32,8:act=sigmoid")
#undef PLAIN_FIXTURE
Test(torch_fixtures, mlp_structured_row_mask) {
    mj_tensor_dict *f = check_fixture("mlp_structured", "mlp:8,8:act=none:bias=0", 1);
    /* a pruned row gives a zero output column in PyTorch's result */
    const mj_tensor *mask = mj_tensor_dict_get(f, "0" MASK_SUFFIX);
    const mj_tensor *e = mj_tensor_dict_get(f, "expected");
    int pruned = 0;
    for (int64_t j = 0; j < 8; j++) {
        if (mj_tensor_data(mask)[j] != 0.0f) continue;
        pruned++;
        for (int64_t b = 0; b < mj_tensor_dim(e, 0); b++)
            cr_assert_eq(mj_tensor_data(e)[b * 8 + j], 0.0f);
    }
    cr_assert_eq(pruned, 4);
    mj_tensor_dict_free(f);
}
Test(torch_fixtures, mlp_sparse_deep) {
    mj_tensor_dict *f = check_fixture("mlp_sparse", "mlp:64,128,64,10:act=relu", 0);
    /* density 0.1: round(0.1 * 64*128) ones in the first mask */
    const mj_tensor *mask = mj_tensor_dict_get(f, "0" MASK_SUFFIX);
    int64_t ones = 0;
    for (int64_t i = 0; i < mj_tensor_numel(mask); i++) ones += mj_tensor_data(mask)[i] == 1.0f;
    cr_assert_eq(ones, 819);
    mj_tensor_dict_free(f);
}
