/* Suite "cnn_graph": pruned CNNs through the IR. Every conv geometry, a
 * small pruned CNN and a MobileNet-style block are traced and replayed by
 * the interpreter bit for bit against the eager modules (the reference: the
 * eager kernels of src/nn/cnn.c, themselves checked against naive loops and
 * PyTorch in test_cnn.c); the text form round-trips byte for byte; traces
 * save and load; bad attributes are refused with a message; the CLI runs a
 * saved CNN trace on a rank-4 input. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "maskjit.h"
#include "test_cnn_models.h"
#include "test_util.h"

/* Traces m on x, then checks the interpreter (plain and optimised) against
 * eager at batches 1, 3 and 17. Returns the plain trace. */
static mj_graph *trace_and_replay(mj_module *m, const int64_t *chw, mj_rng *rng, const char *what) {
    mj_tensor *x0 = mjc_randn(4, (int64_t[]){2, chw[0], chw[1], chw[2]}, rng);
    mj_graph *g = mjt_trace(m, x0), *opt = NULL;
    cr_expect_eq(mj_graph_warning_count(g), 0, "%s: %s", what, mj_graph_warning_count(g) ? mj_graph_warning(g, 0) : "");
    OK(mj_graph_clone(g, &opt));
    OK(mj_graph_optimize(opt, NULL));
    for (int bi = 0; bi < 3; bi++) {
        int64_t batch = (int64_t[]){1, 3, 17}[bi];
        mj_tensor *x = mjc_randn(4, (int64_t[]){batch, chw[0], chw[1], chw[2]}, rng);
        cr_expect(mjt_replays_eager(g, m, x), "%s: interpreter differs from eager at batch %lld", what,
                  (long long)batch);
        cr_expect(mjt_replays_eager(opt, m, x), "%s: optimised interpreter differs at batch %lld", what,
                  (long long)batch);
        mj_tensor_release(x);
    }
    mj_graph_free(opt);
    mj_tensor_release(x0);
    return g;
}

/* g's text form holds each of the n needles. */
static void expect_text_has(const mj_graph *g, const char *const *needles, size_t n) {
    char *text = mj_graph_to_string(g);
    for (size_t i = 0; i < n; i++) cr_expect(strstr(text, needles[i]), "%s:\n%s", needles[i], text);
    free(text);
}

Test(cnn_graph, every_conv_geometry_traces_and_replays_bit_identically) {
    mj_rng rng = mjt_rng(21);
    int cases = 0;
    for (int gi = 0; gi < MJC_N_GEOMETRIES; gi++) {
        mjc_geometry geo = mjc_geometry_at(gi);
        mj_module *m = mjc_conv_module(&geo, &rng);
        if (!m) continue; /* the kernel does not fit the input */
        char what[128];
        mjc_geometry_str(&geo, what, sizeof what);
        mj_graph *g = trace_and_replay(m, (int64_t[]){MJC_GEO_C, MJC_GEO_H, MJC_GEO_W}, &rng, what);
        char *text = mj_graph_to_string(g);
        cr_expect(strstr(text, "conv2d"), "%s:\n%s", what, text);
        cr_expect(strstr(text, "mul"), "%s: the mask is an op of the trace:\n%s", what, text);
        free(text);
        mjt_free_traced(g, m);
        cases++;
    }
    cr_expect_geq(cases, 40);
}

Test(cnn_graph, small_pruned_cnn_and_mobilenet_block_replay_bit_identically) {
    mj_rng rng = mjt_rng(22);
    mj_module *cnn = mjc_small_cnn(&rng), *mb = mjc_mobilenet_block(&rng);
    mj_graph *g = trace_and_replay(cnn, (int64_t[]){3, 13, 11}, &rng, "small CNN");
    const char *ops[] = {"conv2d", "batch_norm", "relu", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
                         "reshape", "linear"};
    expect_text_has(g, ops, sizeof ops / sizeof ops[0]);
    mj_graph_free(g);
    g = trace_and_replay(mb, (int64_t[]){8, 9, 7}, &rng, "MobileNet block");
    expect_text_has(g, (const char *[]){"groups=16", "add"}, 2);
    mjt_free_traced(g, cnn);
    mj_module_free(mb);
}

/* Printing, parsing and printing again gives the same bytes; so does
 * saving and loading, and the loaded trace computes the same. */
Test(cnn_graph, text_form_round_trips_and_traces_save_and_load) {
    mj_rng rng = mjt_rng(23);
    mj_module *cnn = mjc_small_cnn(&rng);
    mj_tensor *x = mjc_randn(4, (int64_t[]){3, 3, 13, 11}, &rng);
    mj_graph *g = mjt_trace(cnn, x), *p = NULL, *l = NULL;
    char *text = mj_graph_to_string(g);
    const char *attrs[] = {"{stride=[1,1], padding=[1,1], dilation=[1,1], groups=1}",
                           "{kernel=[2,2], stride=[2,2], padding=[0,0]}",
                           "{kernel=[3,3], stride=[2,2], padding=[1,1], count_include_pad=false}",
                           "adaptive_avg_pool2d %", "{size=[1,1]}", "{eps=0.001}"};
    for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++) cr_expect(strstr(text, attrs[i]), "%s", text);
    OK(mj_graph_parse(text, &p));
    char *again = mj_graph_to_string(p);
    cr_expect_str_eq(again, text);
    char *dir = mjt_temp_dir("cnn_graph"), path[512];
    snprintf(path, sizeof path, "%s/cnn.safetensors", dir);
    OK(mj_graph_save(g, path));
    OK(mj_graph_load(path, &l));
    char *loaded = mj_graph_to_string(l);
    cr_expect_str_eq(loaded, text);
    cr_expect(mjt_replays_eager(l, cnn, x));
    MJT_FREE(text, again, loaded);
    mj_graph_free(g);
    mj_graph_free(p);
    mj_graph_free(l);
    mjt_rm_temp(dir);
    mj_tensor_release(x);
    mj_module_free(cnn);
}

static mj_status bias_only_bn_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    mj_tensor *c = NULL;
    mj_status s = mj_module_get(self, "c", &c);
    if (s == MJ_OK) s = mj_batch_norm(y, x, c, c, NULL, c, 1e-5f);
    mj_tensor_release(c);
    return s;
}

/* The parser and shape rules refuse bad attributes and shapes with a
 * message naming what is wrong (the parser reports every error as
 * MJ_ERR_FORMAT at its line and column). */
Test(cnn_graph, bad_attributes_and_shapes_are_refused_with_a_message) {
    static const char head[] = "maskjit-ir 1\n"
                               "%0 = input \"x\" : f32[B,4,7,9]\n"
                               "%1 = param \"w\" : f32[8,2,3,3]\n"
                               "%2 = param \"m\" : f32[4]\n";
    static const struct {
        const char *line, *needle;
        mj_status status;
    } bad[] = {
        {"%3 = conv2d %0, %1 {stride=[0,1]}", "must be >= 1", MJ_ERR_FORMAT},
        {"%3 = conv2d %0, %1 {groups=0}", "must be >= 1", MJ_ERR_FORMAT},
        {"%3 = conv2d %0, %1 {groups=3}", "do not fit", MJ_ERR_FORMAT},
        {"%3 = conv2d %0, %1", "do not fit", MJ_ERR_FORMAT}, /* groups 1: 4 != 2 */
        {"%3 = conv2d %0, %1 {groups=2, dilation=[5,1]}", "does not fit input", MJ_ERR_FORMAT},
        {"%3 = conv2d %0, %1 {groups=2, padding=[-1,0]}", "pair", MJ_ERR_FORMAT},
        {"%3 = conv2d %0, %1 {groups=2, stride=[1,1,1]}", "']'", MJ_ERR_FORMAT},
        {"%3 = conv2d %0, %1 {groups=2, stride=3}", "'['", MJ_ERR_FORMAT},
        {"%3 = conv2d %0, %1 {groups=2, stride=[9999999,1]}", "too large", MJ_ERR_FORMAT},
        {"%3 = conv2d %0, %1 {groups=2, kernel=[1,1]}", "no attribute 'kernel'", MJ_ERR_FORMAT},
        {"%3 = conv2d %0, %2", "weight must be 4-D", MJ_ERR_FORMAT},
        {"%3 = conv2d %0, %1, %2 {groups=2}", "bias does not fit", MJ_ERR_FORMAT},
        {"%3 = max_pool2d %0 {kernel=[2,2]}", "needs the attribute {stride=...}", MJ_ERR_FORMAT},
        {"%3 = max_pool2d %0 {kernel=[2,2], stride=[2,2], padding=[2,0]}", "at most half", MJ_ERR_FORMAT},
        {"%3 = max_pool2d %0 {kernel=[9,1], stride=[1,1]}", "does not fit", MJ_ERR_FORMAT},
        /* 8 rows over 7 with stride 2: C's truncating division made this one window */
        {"%3 = max_pool2d %0 {kernel=[8,1], stride=[2,1], padding=[0,0], ceil_mode=true}", "does not fit",
         MJ_ERR_FORMAT},
        {"%3 = avg_pool2d %0 {kernel=[8,1], stride=[2,1]}", "does not fit", MJ_ERR_FORMAT},
        {"%3 = avg_pool2d %0 {kernel=[2,2], stride=[2,2], ceil_mode=yes}", "true or false", MJ_ERR_FORMAT},
        {"%3 = avg_pool2d %0 {kernel=[2,2], stride=[0,2]}", "must be >= 1", MJ_ERR_FORMAT},
        {"%3 = avg_pool2d %0 {kernel=[2,2], stride=[2,2], count_include_pad=1}", "true or false", MJ_ERR_FORMAT},
        {"%3 = adaptive_avg_pool2d %0 {size=[0,1]}", "must be >= 1", MJ_ERR_FORMAT},
        {"%3 = adaptive_avg_pool2d %2 {size=[1,1]}", "4-D", MJ_ERR_FORMAT},
        {"%3 = batch_norm %0, %2, %1", "does not fit the 4 channels", MJ_ERR_FORMAT},
        {"%3 = batch_norm %0, %2, %2 {eps=-1}", "eps", MJ_ERR_FORMAT},
        {"%3 = batch_norm %0, %2", "takes at least 3 operands", MJ_ERR_FORMAT},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[512];
        snprintf(text, sizeof text, "%s%s : f32[B,8,7,9]\nreturn %%3\n", head, bad[i].line);
        mj_graph *g = NULL;
        mj_status s = mj_graph_parse(text, &g);
        cr_expect_eq(s, bad[i].status, "%s -> %s: %s", bad[i].line, mj_status_name(s), mj_last_error());
        cr_expect(strstr(mj_last_error(), bad[i].needle), "%s: message '%s' lacks '%s'", bad[i].line,
                  mj_last_error(), bad[i].needle);
        cr_expect_null(g);
    }
    /* a bias without a weight is no positional operand list: eager runs it, a trace refuses */
    mj_rng rng = mjt_rng(3);
    mj_module *m = NULL;
    OK(mj_module_new(&m, "BiasOnlyNorm", bias_only_bn_forward, NULL, NULL));
    mj_tensor *x = mjc_randn(4, (int64_t[]){1, 2, 3, 3}, &rng), *c = NULL, *y = NULL;
    OK(mj_tensor_ones(&c, 1, (int64_t[]){2}));
    OK(mj_module_add_buffer(m, "c", c, true));
    OK(mj_module_forward(m, x, &y));
    mj_graph *g = NULL;
    FAILS(mj_trace_module(m, x, &g), MJ_ERR_UNSUPPORTED, "a bias without a weight cannot be traced");
    cr_expect_null(g);
    MJT_RELEASE(y, x, c);
    mj_module_free(m);
}

/* A pruned conv traced with its parametrization: live, the mask stays an
 * operand (mul); frozen, the zeros are constants in the weight. */
Test(cnn_graph, masked_conv_weight_traces_as_the_parametrization) {
    mj_rng rng = mjt_rng(24);
    mjc_geometry geo = {.stride = 1, .pad = 1, .dil = 1, .groups = 1, .k = 3};
    mj_module *m = mjc_conv_module(&geo, &rng);
    mj_tensor *x = mjc_randn(4, (int64_t[]){2, MJC_GEO_C, MJC_GEO_H, MJC_GEO_W}, &rng);
    mj_graph *g = mjt_trace(m, x);
    char *text = mj_graph_to_string(g);
    cr_expect(strstr(text, "param \"parametrizations.weight.original\""), "%s", text);
    cr_expect(strstr(text, "parametrizations.weight.0.mask"), "%s", text);
    free(text);
    OK(mj_graph_freeze(g));
    OK(mj_graph_optimize(g, NULL));
    cr_expect(mjt_replays_eager(g, m, x));
    mj_tensor_release(x);
    mjt_free_traced(g, m);
}

/* `maskjit run` replays a saved CNN trace on a rank-4 input file. */
Test(cnn_graph, cli_runs_a_saved_cnn_trace_on_a_rank4_input, .timeout = 60) {
    mj_rng rng = mjt_rng(25);
    mj_module *cnn = mjc_small_cnn(&rng);
    mj_tensor *x = mjc_randn(4, (int64_t[]){3, 3, 13, 11}, &rng);
    mj_graph *g = mjt_trace(cnn, x);
    mj_tensor *want = mjt_forward(cnn, x);
    char *dir = mjt_temp_dir("cnn_cli"), trace[512], in[512], out[512];
    snprintf(trace, sizeof trace, "%s/trace.safetensors", dir);
    snprintf(in, sizeof in, "%s/in.safetensors", dir);
    snprintf(out, sizeof out, "%s/out.safetensors", dir);
    OK(mj_graph_save(g, trace));
    mj_tensor_dict *d = NULL;
    OK(mj_tensor_dict_new(&d));
    OK(mj_tensor_dict_set(d, "x", x));
    OK(mj_safetensors_save(in, d));
    cr_assert_eq(mjt_maskjit(NULL, false, "run %s --input %s --input-name x --mode traced --out %s", trace, in, out), 0);
    mj_tensor *y = mjt_load_tensor(out, "output");
    cr_expect(mj_tensor_equal(y, want));
    mj_tensor_release(y);
    mj_tensor_dict_free(d);
    mjt_rm_temp(dir);
    MJT_RELEASE(x, want);
    mjt_free_traced(g, cnn);
}


/* fold_bn (frozen fast mode only) folds each batch_norm into its conv: the
 * graph keeps no batch_norm, computes within tolerance of eager, and the
 * masked zeros of the weights stay zeros. Live params are left alone. */
Test(cnn_graph, fold_bn_folds_batch_norm_into_the_conv) {
    mj_rng rng = mjt_rng(27);
    mj_module *mb = mjc_mobilenet_block(&rng);
    mj_tensor *x = mjc_randn(4, (int64_t[]){5, 8, 9, 7}, &rng), *got = NULL;
    mj_graph *g = mjt_trace(mb, x), *live = NULL;
    OK(mj_graph_clone(g, &live));
    OK(mj_graph_optimize(live, "fold_bn"));
    char *text = mj_graph_to_string(live);
    cr_expect(strstr(text, "batch_norm"), "params are not folded:\n%s", text);
    free(text);
    OK(mj_graph_freeze(g));
    OK(mj_graph_optimize(g, NULL));
    OK(mj_graph_optimize(g, "fold_bn,dce"));
    text = mj_graph_to_string(g);
    cr_expect(!strstr(text, "batch_norm"), "%s", text);
    cr_expect(strstr(text, "fold_bn.weight"), "%s", text);
    free(text);
    int zeros = 0;
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i].op == MJ_OP_CONST && strstr(g->nodes[i].name, "fold_bn.weight"))
            for (int64_t k = 0; k < g->nodes[i].tensor->numel; k++) zeros += g->nodes[i].tensor->data[k] == 0.0f;
    cr_expect_gt(zeros, 0, "the masks survive");
    mj_tensor *want = mjt_forward(mb, x);
    OK(mj_graph_run(g, x, &got));
    MJT_EXPECT_CLOSE(got, want, 1e-5, 1e-5, "folded graph vs eager");
    MJT_RELEASE(want, got, x);
    mj_graph_free(g);
    mjt_free_traced(live, mb);
}
