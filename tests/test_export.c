/* Trace files written by tools/export_torch.py from PyTorch models no spec
 * describes (tests/fixtures/export_*.safetensors, made by
 * tools/make_fixtures.py): an nn.Sequential with Flatten, Dropout, LeakyReLU
 * and a bias-free layer pruned with torch.nn.utils.prune (holding PyTorch's
 * value of every node); a residual MLP with batch-relative view sizes; a
 * torch.ao FakeSparsity / FakeStructuredSparsity MLP; a two-input two-output
 * model; transformer-era blocks. Each is loaded as a saved trace and run in
 * every mode at every stored batch against PyTorch's outputs, and through
 * `maskjit check`, which must name the node where a perturbed file or a
 * faulty compiled path first diverges. No PyTorch is needed here. */
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

/* Input i / output j of a stored set: "input" / "expected" with one, else
 * "input.<i>" / "expected.<j>"; suffix "" or ".batchN". */
static const mj_tensor *stored(const mj_tensor_dict *d, const char *base, int n, int i, const char *suffix) {
    char key[64];
    if (n == 1) snprintf(key, sizeof key, "%s%s", base, suffix);
    else snprintf(key, sizeof key, "%s.%d%s", base, i, suffix);
    const mj_tensor *t = mj_tensor_dict_get(d, key);
    cr_assert_not_null(t, "no %s", key);
    return t;
}

/* The compiled paths the fixtures run: exact live and frozen, fast live and frozen. */
enum { N_COMPILED = 4 };
static const char *const paths[N_COMPILED] = {"compiled-exact", "frozen", "compiled-fast", "fast-frozen"};
static void compile_paths(mj_jit *jit, const mj_graph *g, mj_compiled *c[N_COMPILED]) {
    for (int p = 0; p < N_COMPILED; p++) {
        mj_compile_options o;
        mj_compile_options_init(&o);
        o.frozen = p % 2 == 1;
        o.numeric = p >= 2 ? MJ_NUMERIC_FAST : MJ_NUMERIC_EXACT;
        OK(mj_jit_compile(jit, g, &o, &c[p]));
    }
}

/* Loads the fixture as a saved trace and, at each stored batch (`batches`,
 * the example's first, as in its "maskjit.batches"), runs the interpreter
 * and compiled exact and fast, live and frozen: each within PyTorch's
 * tolerance of PyTorch's outputs, exact paths bit-identical to the
 * interpreter. With expect_sparse, frozen code must use the mask-specialised
 * kernel for some layer (those wider than 64). */
static void check_fixture_at(const char *name, const char *batches, bool expect_sparse) {
    char *path = fixture_path(name);
    mj_tensor_dict *file;
    OK(mj_safetensors_load(path, &file));
    cr_assert_str_eq(mj_tensor_dict_get_meta(file, "maskjit.format"), "trace-v1");
    cr_assert_str_eq(mj_tensor_dict_get_meta(file, "maskjit.generator"), "tools/make_fixtures.py");
    cr_assert_not_null(mj_tensor_dict_get_meta(file, "torch.version"));
    cr_assert_not_null(mj_tensor_dict_get_meta(file, "maskjit.origins"));
    cr_assert_str_eq(mj_tensor_dict_get_meta(file, "maskjit.batches"), batches);
    mj_graph *g;
    OK(mj_graph_load(path, &g));
    int n_in = mj_graph_input_count(g), n_out = mj_graph_output_count(g);
    cr_assert(n_in >= 1 && n_in <= 4 && n_out >= 1 && n_out <= 4);
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    mj_compiled *c[N_COMPILED];
    compile_paths(jit, g, c);
    char list[64];
    snprintf(list, sizeof list, "%s", batches);
    bool first = true;
    for (char *save = NULL, *b = strtok_r(list, ",", &save); b; b = strtok_r(NULL, ",", &save)) {
        char suffix[32] = "";
        if (!first) snprintf(suffix, sizeof suffix, ".batch%s", b);
        first = false;
        const mj_tensor *xs[4], *want[4];
        for (int i = 0; i < n_in; i++) {
            xs[i] = stored(file, "input", n_in, i, suffix);
            cr_assert_eq(mj_tensor_dim(xs[i], 0), atoll(b), "%s: input %d%s", name, i, suffix);
        }
        for (int j = 0; j < n_out; j++) want[j] = stored(file, "expected", n_out, j, suffix);
        mj_tensor *ref[4] = {0};
        OK(mj_graph_run_n(g, n_in, xs, n_out, ref));
        for (int p = -1; p < N_COMPILED; p++) {
            mj_tensor *y[4] = {0};
            if (p >= 0) OK(mj_compiled_run_n(c[p], n_in, xs, n_out, y));
            for (int j = 0; j < n_out; j++) {
                const mj_tensor *got = p >= 0 ? y[j] : ref[j];
                /* PyTorch sums in other orders: fast mode's bound (ir/tolerance.c) */
                mj_tolerance t;
                OK(mj_graph_output_tolerance(g, j, atoll(b), want[j], &t));
                mj_compare e = mj_tensor_compare(got, want[j], t.rtol, t.atol);
                cr_assert(e.same_shape && e.close,
                          "%s %s, batch %s, output %d vs PyTorch: max abs %g (rtol %g, atol %g)", name,
                          p >= 0 ? paths[p] : "interpreter", b, j, e.max_abs, t.rtol, t.atol);
                if (p == 0 || p == 1)
                    cr_assert(mj_tensor_equal(got, ref[j]), "%s %s, batch %s, output %d: not "
                              "bit-identical to the interpreter", name, paths[p], b, j);
                mj_tensor_release(y[j]);
            }
        }
        for (int j = 0; j < n_out; j++) mj_tensor_release(ref[j]);
    }
    if (expect_sparse) {
        FILE *ir = tmpfile();
        cr_assert_not_null(ir);
        OK(mj_compiled_dump(c[1], "ir", ir));
        long size = ftell(ir);
        rewind(ir);
        char *text = calloc((size_t)size + 1, 1);
        cr_assert_eq(fread(text, 1, (size_t)size, ir), (size_t)size);
        fclose(ir);
        cr_expect(strstr(text, ".sparse"), "%s: frozen code has no mask-specialised layer", name);
        free(text);
    }
    for (int p = 0; p < N_COMPILED; p++) mj_compiled_free(c[p]);
    mj_jit_free(jit);
    mj_graph_free(g);
    mj_tensor_dict_free(file);
    free(path);
}

/* The fixtures stored at batch 5 with 1 and 6. */
static void check_fixture(const char *name) { check_fixture_at(name, "5,1,6", false); }

Test(export, sequential_prune_runs_in_every_mode, .timeout = 60) {
    check_fixture("export_sequential_prune");
}

Test(export, residual_runs_in_every_mode, .timeout = 60) {
    check_fixture("export_residual");
}

/* A pruned CNN (FakeSparsity and prune masks on convs, BatchNorm, pools, a
 * depthwise dilated conv, a residual), stored at batches 3, 1 and 17. */
Test(export, pruned_cnn_runs_in_every_mode, .timeout = 120) {
    check_fixture_at("export_cnn", "3,1,17", false);
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
    /* With the layer masked out, its LeakyReLU gives 0 and the head gives sigmoid(bias). */
    const float *bias = mj_tensor_data(mj_tensor_dict_get(d, "6.bias"));
    for (int64_t j = 0; j < mj_tensor_dim(y_live, 1); j++) {
        float want = 1.0f / (1.0f + expf(-bias[j]));
        cr_assert_float_eq(mj_tensor_data(y_live)[j], want, 1e-6f, "output %lld", (long long)j);
    }
    mj_compare f = mj_tensor_compare(y_frozen, expected, MJ_RTOL_F32, MJ_ATOL_F32);
    cr_assert(f.close, "the frozen compile saw a later mask edit: max abs %g", f.max_abs);
    MJT_RELEASE(y_live, y_frozen, y_ref);
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
 * batch (5, 1 and 6, or 3, 1 and 17) plus 4 random inputs. */
Test(export, cli_check_passes_on_every_fixture, .timeout = 240) {
    static const char *const names[] = {"export_sequential_prune", "export_residual",
                                        "export_fakesparsity", "export_heads",
                                        "export_llama_mlp", "export_residual_layernorm",
                                        "export_bert_layer", "export_vit_block",
                                        "export_two_in_two_out", "export_cnn",
                                        "export_torch_encoder"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char *path = fixture_path(names[i]), *out;
        int rc = run_check(&out, path);
        cr_assert_eq(rc, 0, "maskjit check %s -> %d:\n%s", names[i], rc, out);
        cr_assert(strstr(out, "7 input(s)"), "%s: not 3 stored + 4 random inputs:\n%s", names[i], out);
        cr_assert(strstr(out, "PASS") && !strstr(out, "MISMATCH") && !strstr(out, "divergence"),
                  "%s", out);
        MJT_FREE(out, path);
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

/* A copy of the fixture's IR text (malloc'd). */
static char *fixture_ir(const char *name) {
    char *path = fixture_path(name);
    mj_tensor_dict *d;
    OK(mj_safetensors_load(path, &d));
    char *ir = strdup(mj_tensor_dict_get_meta(d, "maskjit.ir"));
    cr_assert_not_null(ir);
    mj_tensor_dict_free(d);
    free(path);
    return ir;
}

/* The id of the first IR line of `ir` that contains `needle` after "= ". */
static int node_with(const char *ir, const char *needle) {
    for (const char *line = ir; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        const char *eq = strstr(line, " = "), *nl = strchr(line, '\n'), *hit = strstr(line, needle);
        int id;
        if (line[0] == '%' && eq && hit && (!nl || hit < nl) && sscanf(line, "%%%d", &id) == 1) return id;
    }
    cr_assert_fail("no IR line with %s in\n%s", needle, ir);
    return -1;
}

/* The first node that reads value %id (as any operand but the first too). */
static int reader_of(const char *ir, int id) {
    char pat[2][32];
    snprintf(pat[0], sizeof pat[0], " %%%d,", id);
    snprintf(pat[1], sizeof pat[1], " %%%d ", id);
    for (const char *line = ir; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        char buf[512];
        snprintf(buf, sizeof buf, "%.*s ", (int)(len < 500 ? len : 500), line);
        int reader;
        if ((strstr(buf, pat[0]) || strstr(buf, pat[1])) && sscanf(buf, "%%%d", &reader) == 1 && reader != id)
            return reader;
    }
    cr_assert_fail("nothing reads %%%d in\n%s", id, ir);
    return -1;
}

/* A copy of export_sequential_prune (which holds PyTorch's node values) with
 * element 0 of each tensor in `keys` moved by 0.5; `maskjit check` must fail
 * and every path name node %want as the first that differs from PyTorch. */
static void check_names_node(const char *const *keys, int n_keys, int want) {
    char *path = fixture_path("export_sequential_prune");
    mj_tensor_dict *d;
    OK(mj_safetensors_load(path, &d));
    for (int i = 0; i < n_keys; i++) {
        mj_tensor *t = mj_tensor_dict_get(d, keys[i]);
        cr_assert_not_null(t, "no %s", keys[i]);
        mj_tensor_data_mut(t)[0] += 0.5f;
    }
    char *dir = mjt_temp_dir("maskjit-locate"), tmp[512], *out;
    snprintf(tmp, sizeof tmp, "%s/perturbed.safetensors", dir);
    OK(mj_safetensors_save(tmp, d));
    int rc = run_check(&out, tmp);
    cr_assert_eq(rc, 1, "maskjit check -> %d:\n%s", rc, out);
    char line[64];
    snprintf(line, sizeof line, "first divergence at %%%d = ", want);
    int named = 0;
    for (const char *p = out; (p = strstr(p, "first divergence at ")); p++) {
        cr_assert(strncmp(p, line, strlen(line)) == 0, "not %%%d:\n%s", want, out);
        cr_assert(strstr(p, "against PyTorch"), "%s", out);
        named++;
    }
    cr_assert_eq(named, 4, "every path names the node:\n%s", out);
    free(out);
    mjt_rm_temp(dir);
    mj_tensor_dict_free(d);
    free(path);
}

/* A param of the head moved in the file: its linear layer is the first node
 * whose value leaves PyTorch's (the nodes before it do not read it). */
Test(export, cli_check_names_the_node_a_perturbed_param_changes, .timeout = 60) {
    char *ir = fixture_ir("export_sequential_prune");
    int head = reader_of(ir, node_with(ir, "param \"6.bias\""));
    free(ir);
    const char *keys[] = {"6.bias"};
    check_names_node(keys, 1, head);
}

/* PyTorch's stored value of the pruned layer (and the output, so that the
 * output differs) moved: check names that node, not its predecessors. */
Test(export, cli_check_names_a_node_whose_pytorch_value_is_perturbed, .timeout = 60) {
    char *ir = fixture_ir("export_sequential_prune");
    int pruned = reader_of(ir, reader_of(ir, node_with(ir, "param \"4.weight_mask\"")));
    free(ir);
    char key[64];
    snprintf(key, sizeof key, "maskjit.node.%d", pruned);
    const char *keys[] = {key, "expected"};
    check_names_node(keys, 2, pruned);
}

/* Between maskjit's own paths, without PyTorch: a test-only fault
 * (MASKJIT_TEST_FAULT, which the CLI reads once at startup and hands to
 * its JIT: jit/jit_test.h) makes compiled code add 0.5 to every
 * layer_norm value. The softmax after it
 * hides most of the shift, yet the exact paths are not bit-identical, and
 * check names the layer_norm node against the interpreter; the same in
 * --json. */
Test(export, cli_check_names_the_node_a_compiled_path_gets_wrong, .timeout = 60) {
    char *ir = fixture_ir("export_residual_layernorm"), *path = fixture_path("export_residual_layernorm");
    int ln = node_with(ir, "= layer_norm ");
    free(ir);
    cr_assert_eq(setenv("MASKJIT_TEST_FAULT", "layer_norm", 1), 0);
    char *out, want[64];
    int rc = run_check(&out, path);
    cr_assert_eq(rc, 1, "maskjit check -> %d:\n%s", rc, out);
    snprintf(want, sizeof want, "first divergence at %%%d = layer_norm ", ln);
    cr_assert(strstr(out, want) && strstr(out, "(ln): max abs 0.5 vs tolerance"), "%s", out);
    cr_assert(strstr(out, "against traced"), "%s", out);
    const char *traced = strstr(out, "\ntraced "), *end = traced ? strchr(traced + 1, '\n') : NULL;
    cr_assert(end && strncmp(end - 2, "ok", 2) == 0, "the interpreter has no fault:\n%s", out);
    free(out);
    rc = mjt_maskjit(&out, false, "check %s --inputs 0 --json", path);
    cr_assert_eq(rc, 1, "%s", out);
    snprintf(want, sizeof want, "\"node\": %d,", ln);
    cr_assert(strstr(out, want) && strstr(out, "\"against\": \"traced\""), "%s", out);
    free(out);
    unsetenv("MASKJIT_TEST_FAULT");
    free(path);
}

/* Transformer layers exported from PyTorch, stored at batches 3, 1 and 17:
 * a Hugging Face-style BERT layer (heads by view/permute, / sqrt(d), an
 * additive attention mask as a second input, softmax, dropout, LayerNorm,
 * GELU) and a pre-norm ViT block whose fused qkv projection is split by
 * chunk, every Linear pruned at 80% with torch.nn.utils.prune; a LLaMA MLP
 * (RMSNorm, SiLU gate) and a residual LayerNorm MLP. */
Test(export, bert_layer_with_attention_mask_input_runs_in_every_mode, .timeout = 120) {
    check_fixture_at("export_bert_layer", "3,1,17", false); /* 32-wide layers */
}

Test(export, vit_block_with_fused_qkv_chunk_runs_in_every_mode, .timeout = 120) {
    check_fixture_at("export_vit_block", "3,1,17", true); /* qkv 32 -> 96, fc1 32 -> 128 */
}

/* PyTorch's own nn.TransformerEncoder (two layers, GELU) with a float key
 * padding mask as a second input, every weight pruned with
 * torch.nn.utils.prune (MultiheadAttention's packed in_proj_weight and its
 * out_proj too), exported through the exporter's batch-first form of
 * multi-head attention. */
Test(export, torch_transformer_encoder_with_padding_mask_runs_in_every_mode, .timeout = 120) {
    check_fixture_at("export_torch_encoder", "3,1,17", false); /* 32-wide layers */
}

Test(export, llama_mlp_with_rmsnorm_and_silu_gate_runs_in_every_mode, .timeout = 60) {
    check_fixture_at("export_llama_mlp", "3,1,17", false);
}

Test(export, residual_layernorm_mlp_runs_in_every_mode, .timeout = 60) {
    check_fixture_at("export_residual_layernorm", "3,1,17", false);
}

Test(export, two_inputs_two_outputs_run_in_every_mode, .timeout = 60) {
    check_fixture("export_two_in_two_out");
}

static int count_str(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

/* The transformer fixtures with the residual adds fused into their linear
 * layers' epilogues (the default) and unfused (MASKJIT_FUSE_RESIDUAL=0),
 * at every stored batch (3, 1, 17) and in every mode: exact paths give the
 * same bits both ways, fast paths agree within PyTorch's tolerance. The
 * graphs must fuse: BERT's attention output and FFN output, ViT's two
 * residual branches, the residual MLP's and the LLaMA MLP's one. */
Test(export, residual_adds_fused_equal_unfused_in_transformer_fixtures, .timeout = 240) {
    static const struct {
        const char *name;
        int fused;
    } fx[] = {{"export_bert_layer", 2}, {"export_vit_block", 2}, {"export_residual_layernorm", 1},
              {"export_llama_mlp", 1}};
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    for (size_t f = 0; f < sizeof fx / sizeof *fx; f++) {
        char *path = fixture_path(fx[f].name);
        mj_tensor_dict *file;
        OK(mj_safetensors_load(path, &file));
        mj_graph *g, *opt;
        OK(mj_graph_load(path, &g));
        OK(mj_graph_clone(g, &opt));
        OK(mj_graph_optimize(opt, "cse,fuse,dce"));
        char *text = mj_graph_to_string(opt);
        int n = count_str(text, "= linear_add ") + count_str(text, "= linear_act_add ");
        cr_assert_eq(n, fx[f].fused, "%s: %d residual adds fused, want %d:\n%s", fx[f].name, n, fx[f].fused, text);
        free(text);
        mj_graph_free(opt);
        int n_in = mj_graph_input_count(g), n_out = mj_graph_output_count(g);
        mj_compiled *fused[N_COMPILED], *unfused[N_COMPILED];
        compile_paths(jit, g, fused);
        cr_assert_eq(setenv("MASKJIT_FUSE_RESIDUAL", "0", 1), 0);
        compile_paths(jit, g, unfused);
        cr_assert_eq(unsetenv("MASKJIT_FUSE_RESIDUAL"), 0);
        static const char *const batches[] = {"3", "1", "17"};
        for (int bi = 0; bi < 3; bi++) {
            char suffix[32] = "";
            if (bi > 0) snprintf(suffix, sizeof suffix, ".batch%s", batches[bi]);
            const mj_tensor *xs[4];
            for (int i = 0; i < n_in; i++) xs[i] = stored(file, "input", n_in, i, suffix);
            for (int p = 0; p < N_COMPILED; p++) {
                mj_tensor *a[4] = {0}, *b[4] = {0};
                OK(mj_compiled_run_n(fused[p], n_in, xs, n_out, a));
                OK(mj_compiled_run_n(unfused[p], n_in, xs, n_out, b));
                for (int j = 0; j < n_out; j++) {
                    if (p < 2) {
                        cr_assert(mj_tensor_equal(a[j], b[j]), "%s %s batch %s output %d: fused != unfused",
                                  fx[f].name, paths[p], batches[bi], j);
                    } else {
                        mj_compare e = mj_tensor_compare(a[j], b[j], MJ_RTOL_F32, MJ_ATOL_F32);
                        cr_assert(e.close, "%s %s batch %s output %d: fused vs unfused max abs %g", fx[f].name,
                                  paths[p], batches[bi], j, e.max_abs);
                    }
                    MJT_RELEASE(a[j], b[j]);
                }
            }
        }
        for (int p = 0; p < N_COMPILED; p++) {
            mj_compiled_free(fused[p]);
            mj_compiled_free(unfused[p]);
        }
        mj_graph_free(g);
        mj_tensor_dict_free(file);
        free(path);
    }
    mj_jit_free(jit);
}
