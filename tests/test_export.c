/* Trace files written by tools/export_torch.py from PyTorch models no spec
 * describes (tests/fixtures/export_*.safetensors, made by
 * tools/make_fixtures.py): an nn.Sequential with Flatten, Dropout and a
 * layer pruned with torch.nn.utils.prune; a residual MLP with batch-relative
 * view sizes; a torch.ao FakeSparsity / FakeStructuredSparsity MLP. Each is
 * loaded as a saved trace and run in every mode at every stored batch against
 * PyTorch's outputs, and through `maskjit check`. No PyTorch is needed here. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "maskjit.h"
#include "test_util.h"

#define FIXTURES MJ_SOURCE_ROOT "/tests/fixtures"

static char *fixture_path(const char *name) {
    char *p = malloc(512);
    cr_assert_not_null(p);
    snprintf(p, 512, "%s/%s.safetensors", FIXTURES, name);
    return p;
}

/* The stored (input, expected) pairs: "input"/"expected" and each
 * "input.batchN"/"expected.batchN". Returns their count. */
static int stored_sets(const mj_tensor_dict *d, const mj_tensor **xs, const mj_tensor **ys, int cap) {
    int n = 0;
    for (int i = 0; i < mj_tensor_dict_size(d) && n < cap; i++) {
        const char *key = mj_tensor_dict_key(d, i);
        char want[64];
        if (strcmp(key, "input") == 0) snprintf(want, sizeof want, "expected");
        else if (strncmp(key, "input.batch", 11) == 0) snprintf(want, sizeof want, "expected%s", key + 5);
        else continue;
        const mj_tensor *y = mj_tensor_dict_get(d, want);
        cr_assert_not_null(y, "%s without %s", key, want);
        xs[n] = mj_tensor_dict_value(d, i);
        ys[n++] = y;
    }
    return n;
}

/* The compiled paths the fixtures run: exact live, exact frozen, fast live. */
static const char *const paths[] = {"compiled-exact", "frozen", "compiled-fast"};
static void compile_paths(mj_jit *jit, const mj_graph *g, mj_compiled *c[3]) {
    for (int p = 0; p < 3; p++) {
        mj_compile_options o;
        mj_compile_options_init(&o);
        o.frozen = p == 1;
        o.numeric = p == 2 ? MJ_NUMERIC_FAST : MJ_NUMERIC_EXACT;
        OK(mj_jit_compile(jit, g, &o, &c[p]));
    }
}

/* Loads the fixture as a saved trace and runs the interpreter, compiled
 * exact, frozen and fast at every stored batch: each within PyTorch's
 * tolerance of PyTorch's output, exact paths bit-identical to the interpreter. */
static void check_fixture(const char *name) {
    char *path = fixture_path(name);
    mj_tensor_dict *file;
    OK(mj_safetensors_load(path, &file));
    cr_assert_str_eq(mj_tensor_dict_get_meta(file, "maskjit.format"), "trace-v1");
    cr_assert_str_eq(mj_tensor_dict_get_meta(file, "maskjit.generator"), "tools/make_fixtures.py");
    cr_assert_not_null(mj_tensor_dict_get_meta(file, "torch.version"));
    cr_assert_not_null(mj_tensor_dict_get_meta(file, "maskjit.origins"));
    cr_assert_str_eq(mj_tensor_dict_get_meta(file, "maskjit.batches"), "5,1,6");
    mj_graph *g;
    OK(mj_graph_load(path, &g));
    const mj_tensor *xs[8], *ys[8];
    int n = stored_sets(file, xs, ys, 8);
    cr_assert_eq(n, 3, "%s: %d stored batches", name, n);
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    mj_compiled *c[3];
    compile_paths(jit, g, c);
    for (int i = 0; i < n; i++) {
        int64_t batch = mj_tensor_dim(xs[i], 0);
        mj_tensor *ref;
        OK(mj_graph_run(g, xs[i], &ref));
        mj_compare vs = mj_tensor_compare(ref, ys[i], MJ_RTOL_F32, MJ_ATOL_F32);
        cr_assert(vs.same_shape && vs.close, "%s traced, batch %lld vs PyTorch: max abs %g",
                  name, (long long)batch, vs.max_abs);
        for (int p = 0; p < 3; p++) {
            mj_tensor *y;
            OK(mj_compiled_run(c[p], xs[i], &y));
            mj_compare e = mj_tensor_compare(y, ys[i], MJ_RTOL_F32, MJ_ATOL_F32);
            cr_assert(e.same_shape && e.close, "%s %s, batch %lld vs PyTorch: max abs %g", name,
                      paths[p], (long long)batch, e.max_abs);
            if (p < 2)
                cr_assert(mj_tensor_equal(y, ref), "%s %s, batch %lld: not bit-identical to the "
                          "interpreter", name, paths[p], (long long)batch);
            mj_tensor_release(y);
        }
        mj_tensor_release(ref);
    }
    for (int p = 0; p < 3; p++) mj_compiled_free(c[p]);
    mj_jit_free(jit);
    mj_graph_free(g);
    mj_tensor_dict_free(file);
    free(path);
}

Test(export, sequential_prune_runs_in_every_mode, .timeout = 60) {
    check_fixture("export_sequential_prune");
}

Test(export, residual_runs_in_every_mode, .timeout = 60) {
    check_fixture("export_residual");
}

Test(export, llama_mlp_with_rmsnorm_and_silu_gate_runs_in_every_mode, .timeout = 60) {
    check_fixture("export_llama_mlp");
}

Test(export, residual_layernorm_mlp_runs_in_every_mode, .timeout = 60) {
    check_fixture("export_residual_layernorm");
}

Test(export, fakesparsity_runs_in_every_mode, .timeout = 60) {
    check_fixture("export_fakesparsity");
}

/* x.view(b, s, 2, 4) on a [b, s, 8] input: the view sizes are B-relative,
 * so the graph runs at batches 1 and 6 too. */
Test(export, batch_relative_views_run_at_every_batch, .timeout = 60) {
    char *path = fixture_path("export_heads");
    mj_tensor_dict *d;
    OK(mj_safetensors_load(path, &d));
    const char *ir = mj_tensor_dict_get_meta(d, "maskjit.ir");
    cr_assert(strstr(ir, "input \"input\" : f32[B,3,8]"), "%s", ir);
    cr_assert(strstr(ir, "reshape") && strstr(ir, ": f32[B,3,2,4]"), "%s", ir);
    mj_tensor_dict_free(d);
    free(path);
    check_fixture("export_heads");
}

/* The masks are params of their own, multiplied in by the IR: a prune'd layer
 * as weight_orig * weight_mask, a FakeSparsity one as original * 0.mask. */
Test(export, masks_are_separate_params) {
    static const struct {
        const char *fixture, *orig, *mask;
    } cases[] = {
        {"export_sequential_prune", "4.weight_orig", "4.weight_mask"},
        {"export_residual", "fc2.weight_orig", "fc2.weight_mask"},
        {"export_residual", "fc1.parametrizations.weight.original",
         "fc1.parametrizations.weight.0.mask"},
        {"export_fakesparsity", "2.parametrizations.weight.original",
         "2.parametrizations.weight.0.mask"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *path = fixture_path(cases[i].fixture);
        mj_tensor_dict *d;
        OK(mj_safetensors_load(path, &d));
        const char *ir = mj_tensor_dict_get_meta(d, "maskjit.ir");
        cr_assert_not_null(ir);
        char want[256];
        snprintf(want, sizeof want, "param \"%s\"", cases[i].orig);
        cr_assert(strstr(ir, want), "%s: no %s in\n%s", cases[i].fixture, want, ir);
        snprintf(want, sizeof want, "param \"%s\"", cases[i].mask);
        cr_assert(strstr(ir, want), "%s: no %s in\n%s", cases[i].fixture, want, ir);
        cr_assert_not_null(mj_tensor_dict_get(d, cases[i].orig));
        cr_assert_not_null(mj_tensor_dict_get(d, cases[i].mask));
        mj_tensor_dict_free(d);
        free(path);
    }
}

/* Live mode reads the mask at call time: zeroing the prune mask of the last
 * hidden layer changes the live output (to what the interpreter computes
 * with the edited mask), while a frozen compile keeps the mask it saw. */
Test(export, live_mode_sees_mask_edits_frozen_does_not, .timeout = 60) {
    char *path = fixture_path("export_sequential_prune");
    mj_tensor_dict *d;
    OK(mj_safetensors_load(path, &d));
    mj_graph *g;
    OK(mj_graph_parse(mj_tensor_dict_get_meta(d, "maskjit.ir"), &g));
    OK(mj_graph_bind(g, d)); /* the graph shares the dict's tensors */
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    mj_compiled *live, *frozen;
    mj_compile_options o;
    mj_compile_options_init(&o);
    OK(mj_jit_compile(jit, g, &o, &live));
    o.frozen = true;
    OK(mj_jit_compile(jit, g, &o, &frozen));
    const mj_tensor *x = mj_tensor_dict_get(d, "input"), *expected = mj_tensor_dict_get(d, "expected");
    mj_tensor *mask = mj_tensor_dict_get(d, "4.weight_mask");
    cr_assert_not_null(mask);
    float *m = mj_tensor_data_mut(mask);
    for (int64_t i = 0; i < mj_tensor_numel(mask); i++) m[i] = 0.0f;

    mj_tensor *y_live, *y_frozen, *y_ref;
    OK(mj_compiled_run(live, x, &y_live));
    OK(mj_compiled_run(frozen, x, &y_frozen));
    OK(mj_graph_run(g, x, &y_ref));
    cr_assert(mj_tensor_equal(y_live, y_ref), "live output is not the edited mask's");
    cr_assert(!mj_tensor_compare(y_live, expected, MJ_RTOL_F32, MJ_ATOL_F32).close,
              "zeroing the mask changed nothing");
    /* With the layer masked out, its ReLU gives 0 and the head gives sigmoid(bias). */
    const float *bias = mj_tensor_data(mj_tensor_dict_get(d, "6.bias"));
    for (int64_t j = 0; j < mj_tensor_dim(y_live, 1); j++) {
        float want = 1.0f / (1.0f + expf(-bias[j]));
        cr_assert_float_eq(mj_tensor_data(y_live)[j], want, 1e-6f, "output %lld", (long long)j);
    }
    mj_compare f = mj_tensor_compare(y_frozen, expected, MJ_RTOL_F32, MJ_ATOL_F32);
    cr_assert(f.close, "the frozen compile saw a later mask edit: max abs %g", f.max_abs);
    mj_tensor_release(y_live);
    mj_tensor_release(y_frozen);
    mj_tensor_release(y_ref);
    mj_compiled_free(live);
    mj_compiled_free(frozen);
    mj_jit_free(jit);
    mj_graph_free(g);
    mj_tensor_dict_free(d);
    free(path);
}

/* Runs `maskjit check FILE --inputs 4`; returns the exit status, output in *out. */
static int run_check(char **out, const char *file) {
    return mjt_maskjit(out, true, "check %s --inputs 4", file);
}

/* check compares every path with PyTorch's stored outputs at each stored
 * batch (5, 1 and 6) plus 4 random inputs. */
Test(export, cli_check_passes_on_every_fixture, .timeout = 120) {
    static const char *const names[] = {"export_sequential_prune", "export_residual",
                                        "export_fakesparsity", "export_llama_mlp",
                                        "export_residual_layernorm"};
    for (int i = 0; i < 5; i++) {
        char *path = fixture_path(names[i]), *out;
        int rc = run_check(&out, path);
        cr_assert_eq(rc, 0, "maskjit check %s -> %d:\n%s", names[i], rc, out);
        cr_assert(strstr(out, "7 input(s)"), "%s: not 3 stored + 4 random inputs:\n%s", names[i], out);
        cr_assert(strstr(out, "PASS") && !strstr(out, "MISMATCH"), "%s", out);
        free(out);
        free(path);
    }
}

/* A copy of a fixture with one stored output changed: check must fail on it
 * (it compares every stored batch, not only the first input). */
static void check_detects_wrong(const char *key) {
    char *path = fixture_path("export_residual");
    mj_tensor_dict *d;
    OK(mj_safetensors_load(path, &d));
    mj_tensor *y = mj_tensor_dict_get(d, key);
    cr_assert_not_null(y, "no %s", key);
    mj_tensor_data_mut(y)[0] += 0.5f;
    char tmp[256];
    snprintf(tmp, sizeof tmp, "/tmp/maskjit-export-%d-%s.safetensors", (int)getpid(), key);
    OK(mj_safetensors_save(tmp, d));
    char *out;
    int rc = run_check(&out, tmp);
    cr_assert_eq(rc, 1, "maskjit check with a wrong %s -> %d:\n%s", key, rc, out);
    cr_assert(strstr(out, "FAIL") && strstr(out, "vs expected"), "%s", out);
    free(out);
    unlink(tmp);
    mj_tensor_dict_free(d);
    free(path);
}

Test(export, cli_check_fails_on_a_wrong_expected, .timeout = 60) {
    check_detects_wrong("expected");
}

Test(export, cli_check_fails_on_a_wrong_output_at_another_batch, .timeout = 60) {
    check_detects_wrong("expected.batch6");
}

/* Transformer layers exported from PyTorch: a Hugging Face-style BERT layer
 * (heads by view/permute, / sqrt(d), an additive attention mask as a second
 * input, softmax, dropout, LayerNorm, GELU) and a pre-norm ViT block whose
 * fused qkv projection is split by chunk; every Linear pruned at 80% with
 * torch.nn.utils.prune. At each stored batch (5, 1, 6): the interpreter and
 * compiled exact, frozen and fast within PyTorch's tolerance of PyTorch's
 * output, exact and frozen bit-identical to the interpreter; frozen code
 * uses the mask-specialised kernel for the layers wider than 64. */
static void check_multi_input_fixture(const char *name, bool expect_sparse) {
    char *path = fixture_path(name);
    mj_tensor_dict *file;
    OK(mj_safetensors_load(path, &file));
    mj_graph *g;
    OK(mj_graph_load(path, &g));
    int n_in = mj_graph_input_count(g);
    cr_assert(n_in >= 1 && n_in <= 4);
    cr_assert_eq(mj_graph_output_count(g), 1);
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    mj_compiled *c[3];
    compile_paths(jit, g, c);
    static const char *const suffixes[] = {"", ".batch1", ".batch6"};
    for (int si = 0; si < 3; si++) {
        const mj_tensor *xs[4];
        char key[64];
        for (int i = 0; i < n_in; i++) {
            if (n_in == 1) snprintf(key, sizeof key, "input%s", suffixes[si]);
            else snprintf(key, sizeof key, "input.%d%s", i, suffixes[si]);
            xs[i] = mj_tensor_dict_get(file, key);
            cr_assert_not_null(xs[i], "%s lacks %s", name, key);
        }
        snprintf(key, sizeof key, "expected%s", suffixes[si]);
        const mj_tensor *want = mj_tensor_dict_get(file, key);
        cr_assert_not_null(want, "%s lacks %s", name, key);
        mj_tensor *ref = NULL;
        OK(mj_graph_run_n(g, n_in, xs, 1, &ref));
        mj_compare vs = mj_tensor_compare(ref, want, MJ_RTOL_F32, MJ_ATOL_F32);
        cr_assert(vs.same_shape && vs.close, "%s interpreter%s vs PyTorch: max abs %g", name,
                  suffixes[si], vs.max_abs);
        for (int p = 0; p < 3; p++) {
            mj_tensor *y = NULL;
            OK(mj_compiled_run_n(c[p], n_in, xs, 1, &y));
            mj_compare e = mj_tensor_compare(y, want, MJ_RTOL_F32, MJ_ATOL_F32);
            cr_assert(e.same_shape && e.close, "%s %s%s vs PyTorch: max abs %g", name, paths[p],
                      suffixes[si], e.max_abs);
            if (p < 2)
                cr_assert(mj_tensor_equal(y, ref), "%s %s%s: not bit-identical to the interpreter",
                          name, paths[p], suffixes[si]);
            mj_tensor_release(y);
        }
        mj_tensor_release(ref);
    }
    FILE *ir = tmpfile();
    cr_assert_not_null(ir);
    OK(mj_compiled_dump(c[1], "ir", ir));
    long size = ftell(ir);
    rewind(ir);
    char *text = calloc((size_t)size + 1, 1);
    cr_assert_eq(fread(text, 1, (size_t)size, ir), (size_t)size);
    fclose(ir);
    if (expect_sparse) /* layers wider than 64 (narrower ones skip zeros lane by lane) */
        cr_expect(strstr(text, ".sparse"), "%s: frozen code has no mask-specialised layer", name);
    free(text);
    for (int p = 0; p < 3; p++) mj_compiled_free(c[p]);
    mj_jit_free(jit);
    mj_graph_free(g);
    mj_tensor_dict_free(file);
    free(path);
}

Test(export, bert_layer_with_attention_mask_input_runs_in_every_mode, .timeout = 120) {
    check_multi_input_fixture("export_bert_layer", false); /* 32-wide layers */
}

Test(export, vit_block_with_fused_qkv_chunk_runs_in_every_mode, .timeout = 120) {
    check_multi_input_fixture("export_vit_block", true); /* qkv 32 -> 96, fc1 32 -> 128 */
}
