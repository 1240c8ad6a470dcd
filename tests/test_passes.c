/* The optimisation passes.
 *
 * Golden files in tests/ir/: NAME.before.mjir starts with "# passes: LIST";
 * NAME.after.mjir is the expected result, written by hand from the pass's
 * specification. Each case checks (1) the optimised graph prints exactly as
 * the parsed expectation and (2) the interpreter gives bit-identical outputs
 * before and after on random inputs at several batch sizes.
 * Then: every pass alone on traced random models (live and frozen), and the
 * pipeline's error handling. */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "maskjit.h"
#include "model_gen.h"
#include "test_util.h"

#ifndef MJ_SOURCE_ROOT
#define MJ_SOURCE_ROOT "."
#endif

static mj_graph *parse_file(const char *path) {
    char *text = mjt_read_file(path, NULL);
    mj_graph *g = NULL;
    mj_status s = mj_graph_parse(text, &g);
    cr_assert_eq(s, MJ_OK, "%s: %s", path, mj_last_error());
    free(text);
    return g;
}

/* Binds every param (and unbound const) to randn of its type. */
static void bind_random(mj_graph *g, mj_rng *rng) {
    mj_tensor_dict *d = NULL;
    OK(mj_tensor_dict_new(&d));
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (!(n->op == MJ_OP_PARAM || (n->op == MJ_OP_CONST && !n->tensor))) continue;
        mj_tensor *t = NULL;
        OK(mj_tensor_randn(&t, n->type.rank, n->type.dims, rng));
        OK(mj_tensor_dict_set(d, n->name, t));
        mj_tensor_release(t);
    }
    OK(mj_graph_bind(g, d));
    mj_tensor_dict_free(d);
}

/* Runs a and b on the same random inputs at several batches: bit-identical. */
static void assert_same_outputs(const mj_graph *a, const mj_graph *b, mj_rng *rng,
                                const char *what) {
    int n_in = mj_graph_input_count(a);
    cr_assert_eq(n_in, mj_graph_input_count(b), "%s: input count changed", what);
    cr_assert_eq(a->n_outputs, b->n_outputs, "%s: output count changed", what);
    static const int64_t batches[] = {1, 3, 17};
    for (int bi = 0; bi < 3; bi++) {
        mj_tensor *ins[8] = {0}, *oa[8] = {0}, *ob[8] = {0};
        cr_assert_leq(n_in, 8);
        int k = 0;
        for (int32_t i = 0; i < a->n_nodes; i++) {
            if (a->nodes[i].op != MJ_OP_INPUT) continue;
            int64_t shape[MJ_MAX_RANK];
            mj_type_shape(&a->nodes[i].type, batches[bi], shape);
            OK(mj_tensor_randn(&ins[k++], a->nodes[i].type.rank, shape, rng));
        }
        OK(mj_interp_run(a, n_in, (const mj_tensor *const *)ins, a->n_outputs, oa));
        OK(mj_interp_run(b, n_in, (const mj_tensor *const *)ins, b->n_outputs, ob));
        for (int o = 0; o < a->n_outputs; o++) {
            char buf[256];
            mj_compare c = mj_tensor_compare(ob[o], oa[o], 0, 0);
            mj_compare_describe(&c, ob[o], oa[o], buf, sizeof buf);
            cr_assert(mj_tensor_equal(ob[o], oa[o]), "%s: output %d at batch %lld: %s", what, o,
                      (long long)batches[bi], buf);
            MJT_RELEASE(oa[o], ob[o]);
        }
        for (int i = 0; i < n_in; i++) mj_tensor_release(ins[i]);
    }
}

static void run_golden(const char *name) {
    char before_path[512], after_path[512];
    snprintf(before_path, sizeof before_path, "%s/tests/ir/%s.before.mjir", MJ_SOURCE_ROOT, name);
    snprintf(after_path, sizeof after_path, "%s/tests/ir/%s.after.mjir", MJ_SOURCE_ROOT, name);

    char *text = mjt_read_file(before_path, NULL);
    const char *tag = "# passes: ";
    cr_assert(strncmp(text, tag, strlen(tag)) == 0, "%s: first line must be '# passes: ...'",
              before_path);
    char passes[128];
    size_t len = strcspn(text + strlen(tag), "\r\n");
    cr_assert_lt(len, sizeof passes);
    memcpy(passes, text + strlen(tag), len);
    passes[len] = '\0';
    free(text);

    mj_rng rng = mjt_rng(0x901d);
    mj_graph *g = parse_file(before_path);
    bind_random(g, &rng);
    mj_graph *ref = NULL;
    OK(mj_graph_clone(g, &ref));
    mj_status s = mj_graph_optimize(g, passes);
    cr_assert_eq(s, MJ_OK, "%s: optimize(\"%s\"): %s", name, passes, mj_last_error());

    mj_graph *want = parse_file(after_path);
    char *got_text = mj_graph_to_string(g), *want_text = mj_graph_to_string(want);
    cr_assert_str_eq(got_text, want_text, "%s after \"%s\":\n--- got\n%s--- expected\n%s", name,
                     passes, got_text, want_text);
    MJT_FREE(got_text, want_text);
    mj_graph_free(want);

    assert_same_outputs(ref, g, &rng, name);
    mj_graph_free(ref);
    mj_graph_free(g);
}

#define GOLDEN(name)                                                                         \
    Test(passes, name) { run_golden(#name); }

GOLDEN(dce_dead_chain)
GOLDEN(dce_keeps_inputs)
GOLDEN(cse_commutative_mul)
GOLDEN(cse_chain)
GOLDEN(cse_noop)
GOLDEN(fold_mask)
GOLDEN(fold_chain)
GOLDEN(fold_name_clash)
GOLDEN(fold_noop)
GOLDEN(simplify_ones_mask)
GOLDEN(simplify_zero_mask)
GOLDEN(simplify_zero_mask_nan)
GOLDEN(simplify_zero_mask_signs)
GOLDEN(simplify_minus_one_mask)
GOLDEN(simplify_zero_linear_act)
GOLDEN(simplify_zero_matmul)
GOLDEN(simplify_noop)
GOLDEN(fuse_linear_act)
GOLDEN(fuse_chain)
GOLDEN(fuse_two_uses)
GOLDEN(fuse_residual)
GOLDEN(fuse_residual_no)
GOLDEN(simplify_zero_linear_add)
GOLDEN(simplify_transpose_pairs)
GOLDEN(fuse_dead_users)
GOLDEN(fold_bn_dead_user)
GOLDEN(default_masked_mlp)

/* Every before file has a test above (a new golden file must be listed). */
Test(passes, every_golden_file_is_listed) {
    static const char *const listed[] = {
        "dce_dead_chain", "dce_keeps_inputs", "cse_commutative_mul", "cse_chain", "cse_noop",
        "fold_mask", "fold_chain", "fold_name_clash", "fold_noop", "simplify_ones_mask",
        "simplify_zero_mask", "simplify_zero_linear_act", "simplify_zero_matmul",
        "simplify_noop", "fuse_linear_act", "fuse_chain", "fuse_two_uses",
        "default_masked_mlp", "simplify_zero_mask_nan", "simplify_zero_mask_signs",
        "simplify_minus_one_mask", "fuse_residual", "fuse_residual_no", "simplify_zero_linear_add",
        "simplify_transpose_pairs", "fuse_dead_users", "fold_bn_dead_user"};
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls %s/tests/ir/ | grep -c '\\.before\\.mjir$'", MJ_SOURCE_ROOT);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    int n = -1;
    cr_assert_eq(fscanf(p, "%d", &n), 1);
    pclose(p);
    cr_assert_eq(n, (int)(sizeof listed / sizeof listed[0]),
                 "%d golden files but %zu listed", n, sizeof listed / sizeof listed[0]);
}

/* ---- every pass on traced random models ---------------------------------- */
static const char *const pass_names[] = {"dce", "cse", "fold", "simplify", "fuse", "default"};

static void passes_on_random_models(bool frozen) {
    mj_rng rng = mjt_rng(frozen ? 0xf202e : 0x11fe);
    for (int k = 0; k < 16; k++) {
        mjt_model_spec spec;
        mjt_random_spec(&rng, 40, &spec);
        mj_module *m = NULL;
        OK(mjt_build_model(&spec, &rng, &m));
        mj_tensor *ex = NULL;
        OK(mjt_random_input(&spec, 2, &rng, &ex));
        mj_graph *g = mjt_trace(m, ex);
        mj_tensor_release(ex);
        if (frozen) OK(mj_graph_freeze(g));
        for (size_t p = 0; p < sizeof pass_names / sizeof *pass_names; p++) {
            mj_graph *h = NULL;
            OK(mj_graph_clone(g, &h));
            mj_status s = mj_graph_optimize(h, pass_names[p]);
            cr_assert_eq(s, MJ_OK, "[%s] %s: %s", spec.text, pass_names[p], mj_last_error());
            cr_assert_leq(h->n_nodes, g->n_nodes + spec.depth, "[%s] %s grew the graph",
                          spec.text, pass_names[p]);
            char what[256];
            snprintf(what, sizeof what, "[%s]%s pass %s", spec.text, frozen ? " frozen" : "",
                     pass_names[p]);
            assert_same_outputs(g, h, &rng, what);
            mj_graph_free(h);
        }
        mjt_free_traced(g, m);
    }
}

Test(passes, each_pass_on_random_models) { passes_on_random_models(false); }
Test(passes, each_pass_on_frozen_random_models) { passes_on_random_models(true); }

/* A frozen model with an all-ones mask ends up as the plain linear. */
Test(passes, frozen_ones_mask_disappears) {
    mj_module *m = NULL;
    mj_rng rng = mjt_rng(3);
    OK(mj_model_under_test_new(&m, true));
    OK(mj_model_apply_masks(m, NULL, 0.5, &rng)); /* density < 1: masks registered */
    /* ... then make every mask all ones */
    static const char *const mods[3] = {"linear", "seq.0", "seq.1"};
    for (int i = 0; i < 3; i++) {
        mj_parametrization *p = mj_module_parametrization(mj_module_find(m, mods[i]), "weight", 0);
        mj_tensor *mask = mj_parametrization_buffer(p, "mask");
        float *d = mj_tensor_data_mut(mask);
        for (int64_t j = 0; j < mj_tensor_numel(mask); j++) d[j] = 1.0f;
    }
    int64_t shape[2] = {3, 16};
    mj_tensor *ex = NULL;
    OK(mj_tensor_ones(&ex, 2, shape));
    mj_graph *g = mjt_trace(m, ex);
    mj_graph *ref = NULL;
    OK(mj_graph_clone(g, &ref));
    OK(mj_graph_freeze(g));
    OK(mj_graph_optimize(g, NULL));
    /* input, then per layer weight, bias, linear: 1 + 3*3 nodes, no mul */
    char *text = mj_graph_to_string(g);
    cr_assert_eq(g->n_nodes, 10, "%s", text);
    for (int32_t i = 0; i < g->n_nodes; i++) cr_assert_neq(g->nodes[i].op, MJ_OP_MUL, "%s", text);
    free(text);
    assert_same_outputs(ref, g, &rng, "frozen ones");
    mj_graph_free(ref);
    mj_tensor_release(ex);
    mjt_free_traced(g, m);
}

/* ---- the pipeline ------------------------------------------------------------ */
static mj_graph *small_graph(void) {
    mj_graph *g = NULL;
    OK(mj_graph_parse("maskjit-ir 1\n"
                      "%0 = input \"input\" : f32[B,2]\n"
                      "%1 = const \"w\" : f32[2,2] = [0x1p+0, 0x0p+0, 0x0p+0, 0x1p+0]\n"
                      "%2 = linear %0, %1 : f32[B,2]\n"
                      "%3 = relu %2 : f32[B,2]\n"
                      "%4 = tanh %2 : f32[B,2]\n"
                      "return %3\n",
                      &g));
    return g;
}

Test(passes, unknown_pass_is_an_error_and_changes_nothing) {
    mj_graph *g = small_graph();
    char *before = mj_graph_to_string(g);
    static const char *const bad[] = {"dce,bogus", "dce,,cse", "", "DCE", "fold;dce"};
    for (int i = 0; i < 5; i++) {
        mj_status s = mj_graph_optimize(g, bad[i]);
        cr_assert_eq(s, MJ_ERR_INVALID, "\"%s\": %s", bad[i], mj_status_name(s));
        cr_assert(strstr(mj_last_error(), "unknown pass") &&
                      strstr(mj_last_error(), "dce, cse, fold, simplify, fuse"),
                  "message: %s", mj_last_error());
        char *after = mj_graph_to_string(g);
        cr_assert_str_eq(after, before);
        free(after);
    }
    cr_assert(strstr((mj_graph_optimize(g, "dce,bogus"), mj_last_error()), "'bogus'"));
    cr_assert_eq(mj_graph_optimize(NULL, "dce"), MJ_ERR_INVALID);
    free(before);
    mj_graph_free(g);
}

Test(passes, default_and_null_are_the_default_pipeline) {
    mj_graph *a = small_graph(), *b = small_graph(), *c = small_graph();
    OK(mj_graph_optimize(a, NULL));
    OK(mj_graph_optimize(b, "default"));
    OK(mj_graph_optimize(c, "simplify, fold, simplify, cse, fuse, dce"));
    char *ta = mj_graph_to_string(a), *tb = mj_graph_to_string(b), *tc = mj_graph_to_string(c);
    cr_assert_str_eq(ta, tb);
    cr_assert_str_eq(ta, tc);
    /* the dead tanh is no use of the linear (only live users count), so
     * fuse fuses it before dce runs, and drops the tanh with it */
    cr_assert_eq(a->n_nodes, 3, "%s", ta);
    cr_assert_eq(a->nodes[2].op, MJ_OP_LINEAR_ACT, "%s", ta);
    cr_assert_eq(a->nodes[2].act, MJ_ACT_RELU, "%s", ta);
    /* the same with dce first */
    mj_graph *d = small_graph();
    OK(mj_graph_optimize(d, "dce,fuse"));
    char *td = mj_graph_to_string(d);
    cr_assert_str_eq(td, ta);
    free(td);
    mj_graph_free(d);
    MJT_FREE(ta, tb, tc);
    mj_graph_free(a);
    mj_graph_free(b);
    mj_graph_free(c);
}

Test(passes, dump_flag_prints_each_pass, .init = cr_redirect_stderr) {
    setenv("MASKJIT_DUMP_PASSES", "1", 1);
    mj_graph *g = small_graph();
    OK(mj_graph_optimize(g, "fuse,dce"));
    mj_graph_free(g);
    fflush(stderr);
    cr_assert_stderr_eq_str("# after pass fuse\n"
                            "maskjit-ir 1\n"
                            "%0 = input \"input\" : f32[B,2]\n"
                            "%1 = const \"w\" : f32[2,2] = [0x1p+0, 0x0p+0, 0x0p+0, 0x1p+0]\n"
                            "%2 = linear_act %0, %1 {act=relu} : f32[B,2]\n"
                            "return %2\n"
                            "# after pass dce\n"
                            "maskjit-ir 1\n"
                            "%0 = input \"input\" : f32[B,2]\n"
                            "%1 = const \"w\" : f32[2,2] = [0x1p+0, 0x0p+0, 0x0p+0, 0x1p+0]\n"
                            "%2 = linear_act %0, %1 {act=relu} : f32[B,2]\n"
                            "return %2\n");
}

/* Folding over params is refused until frozen; after freezing it folds. */
Test(passes, fold_needs_frozen_params) {
    mj_graph *g = NULL;
    OK(mj_graph_parse("maskjit-ir 1\n"
                      "%0 = input \"input\" : f32[B,2]\n"
                      "%1 = param \"m\" : f32[2]\n"
                      "%2 = param \"w\" : f32[2]\n"
                      "%3 = mul %1, %2 : f32[2]\n"
                      "%4 = add %0, %3 : f32[B,2]\n"
                      "return %4\n",
                      &g));
    mj_rng rng = mjt_rng(12);
    bind_random(g, &rng);
    mj_graph *ref = NULL;
    OK(mj_graph_clone(g, &ref));
    OK(mj_graph_optimize(g, "fold"));
    cr_assert_eq(g->nodes[3].op, MJ_OP_MUL);
    OK(mj_graph_freeze(g));
    OK(mj_graph_optimize(g, "fold,dce"));
    cr_assert_eq(g->n_nodes, 3);
    cr_assert_eq(g->nodes[1].op, MJ_OP_CONST);
    cr_assert_str_eq(g->nodes[1].name, "fold.3");
    /* The folded value is m*w computed here: */
    const float *m = mj_tensor_data(ref->nodes[1].tensor), *w = mj_tensor_data(ref->nodes[2].tensor);
    const float *f = mj_tensor_data(g->nodes[1].tensor);
    for (int i = 0; i < 2; i++) cr_assert(f[i] == m[i] * w[i]);
    assert_same_outputs(ref, g, &rng, "fold frozen");
    mj_graph_free(ref);
    mj_graph_free(g);
}
