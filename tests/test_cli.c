/* The maskjit CLI, run as a user runs it. Outputs are compared with what the
 * library computes in the test (eager forward), or with PyTorch's fixtures. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "maskjit.h"
#include "test_util.h"

#define run_maskjit(out, ...) mjt_maskjit(out, false, __VA_ARGS__)

static const char *const FIXTURES = MJ_SOURCE_ROOT "/tests/fixtures";


static char *tmp_path(const char *name) {
    char *p = malloc(512);
    snprintf(p, 512, "/tmp/maskjit-cli-%d-%s", (int)getpid(), name);
    return p;
}

/* run --out writes what eager computes for the same weights and input. */
Test(cli, run_modes_write_eager_output, .timeout = 60) {
    char *in = tmp_path("in.safetensors"), *out = tmp_path("out.safetensors");
    mj_rng rng = mjt_rng(11);
    mj_tensor *x;
    mj_tensor_randn(&x, 2, (int64_t[]){4, 16}, &rng);
    mj_tensor_dict *d;
    mj_tensor_dict_new(&d);
    mj_tensor_dict_set(d, "x", x);
    OK(mj_safetensors_save(in, d));
    mj_tensor_dict_free(d);
    /* Reference: the same model built by the library (spec + seed 5). */
    mj_module *m;
    mj_rng init = mjt_rng(5);
    OK(mj_model_from_spec("mlp:16,24,8:act=tanh", &init, &m));
    mj_tensor *want = mjt_forward(m, x);
    /* interp: the bench's name of traced */
    const char *modes[] = {"--mode eager", "--mode traced", "--mode interp", "--mode compiled",
                           "--mode compiled --frozen", "--mode compiled --exact"};
    for (int i = 0; i < 6; i++) {
        cr_assert_eq(run_maskjit(NULL, "run mlp:16,24,8:act=tanh --seed 5 --input %s --input-name x %s --out %s",
                         in, modes[i], out),
                     0, "%s", modes[i]);
        mj_tensor *got = mjt_load_tensor(out, "output");
        cr_assert(mj_tensor_equal(got, want), "%s differs from eager", modes[i]);
        mj_tensor_release(got);
    }
    cr_assert_eq(run_maskjit(NULL, "run mlp:16,24,8:act=tanh --seed 5 --input %s --input-name x --mode "
                           "compiled --fast --out %s", in, out), 0);
    mj_tensor *fast = mjt_load_tensor(out, "output");
    cr_assert(mj_tensor_allclose(fast, want, MJ_RTOL_F32, MJ_ATOL_F32));
    MJT_RELEASE(fast, want, x);
    mj_module_free(m);
    unlink(in);
    unlink(out);
    MJT_FREE(in, out);
}

/* A saved trace runs traced by default (it has no code for eager mode);
 * an export's stored input is used unless --batch asks for another batch. */
Test(cli, run_on_a_trace_defaults_to_traced_and_batch_picks_a_random_input, .timeout = 60) {
    char *out = tmp_path("trace-out.safetensors"), *fx = malloc(512);
    snprintf(fx, 512, "%s/export_residual.safetensors", FIXTURES);
    mj_tensor_dict *file;
    OK(mj_safetensors_load(fx, &file));
    const mj_tensor *stored = mj_tensor_dict_get(file, "input");
    cr_assert_not_null(stored);
    cr_assert_eq(run_maskjit(NULL, "run %s --out %s", fx, out), 0);
    mj_tensor *got = mjt_load_tensor(out, "output");
    cr_assert(mj_tensor_equal(got, mj_tensor_dict_get(file, "expected")) ||
                  mj_tensor_allclose(got, mj_tensor_dict_get(file, "expected"), 1e-5, 1e-5),
              "the stored input's output");
    mj_tensor_release(got);
    cr_assert_eq(run_maskjit(NULL, "run %s --batch 7 --out %s", fx, out), 0);
    got = mjt_load_tensor(out, "output");
    cr_assert_eq(mj_tensor_shape(got)[0], 7);
    cr_assert_neq(mj_tensor_shape(mj_tensor_dict_get(file, "input"))[0], 7);
    mj_tensor_release(got);
    char *err = NULL;
    cr_assert_eq(mjt_maskjit(&err, true, "run %s --mode eager", fx), 2);
    cr_assert_not_null(strstr(err, "eager mode needs the model's code"), "%s", err);
    free(err);
    mj_tensor_dict_free(file);
    unlink(out);
    MJT_FREE(out, fx);
}

/* A saved trace replays without model code, and equals the model's eager output. */
Test(cli, trace_then_replay_matches_fixture, .timeout = 60) {
    char fixture[512], *trace = tmp_path("trace.safetensors"), *out = tmp_path("y.safetensors");
    snprintf(fixture, sizeof fixture, "%s/mut.safetensors", FIXTURES);
    cr_assert_eq(run_maskjit(NULL, "trace mut --weights %s -o %s", fixture, trace), 0);
    char *text;
    cr_assert_eq(run_maskjit(&text, "ir %s", trace), 0);
    cr_assert(strstr(text, "maskjit-ir 1") && strstr(text, "linear"), "%s", text);
    free(text);
    for (int compiled = 0; compiled < 2; compiled++) {
        cr_assert_eq(run_maskjit(NULL, "run %s --input %s --mode %s --out %s", trace, fixture,
                         compiled ? "compiled" : "traced", out),
                     0);
        mj_tensor *y = mjt_load_tensor(out, "output"), *expected = mjt_load_tensor(fixture, "expected");
        mj_compare c = mj_tensor_compare(y, expected, MJ_RTOL_F32, MJ_ATOL_F32);
        char msg[256];
        mj_compare_describe(&c, y, expected, msg, sizeof msg);
        cr_assert(c.close, "replay vs PyTorch: %s", msg);
        MJT_RELEASE(y, expected);
    }
    /* Eager needs model code: refused for a trace, with exit 2. */
    cr_assert_eq(run_maskjit(NULL, "run %s --mode eager", trace), 2);
    unlink(trace);
    unlink(out);
    MJT_FREE(trace, out);
}

/* check passes on PyTorch's exports and fails (exit 1) when expected is wrong. */
Test(cli, check_passes_on_fixtures_and_fails_on_tampered_expected, .timeout = 120) {
    const char *names[] = {"mut", "mut_nobias", "mlp_relu", "mlp_gelu", "mlp_sparse",
                           "mlp_structured"};
    for (int i = 0; i < 6; i++) {
        char *json;
        cr_assert_eq(run_maskjit(&json, "check %s/%s.safetensors --inputs 2 --json", FIXTURES, names[i]), 0,
                     "%s", names[i]);
        json_error_t err;
        json_t *root = json_loads(json, 0, &err);
        cr_assert_not_null(root, "check --json is JSON: %s", err.text);
        cr_assert(json_is_true(json_object_get(root, "pass")));
        cr_assert_eq(json_array_size(json_object_get(root, "paths")), 5);
        json_t *p0 = json_array_get(json_object_get(root, "paths"), 0);
        cr_assert_not_null(json_object_get(p0, "vs_expected"), "fixture has expected");
        json_decref(root);
        free(json);
    }
    /* Tamper with expected: every path now disagrees with "PyTorch". */
    char fixture[512], *bad = tmp_path("bad.safetensors");
    snprintf(fixture, sizeof fixture, "%s/mlp_relu.safetensors", FIXTURES);
    mj_tensor_dict *d;
    OK(mj_safetensors_load(fixture, &d));
    mj_tensor_data_mut(mj_tensor_dict_get(d, "expected"))[3] += 0.5f;
    OK(mj_safetensors_save(bad, d));
    mj_tensor_dict_free(d);
    char *text;
    cr_assert_eq(run_maskjit(&text, "check %s --inputs 1", bad), 1);
    cr_assert(strstr(text, "FAIL"), "%s", text);
    cr_assert(strstr(text, "MISMATCH"), "%s", text);
    free(text);
    unlink(bad);
    free(bad);
}

Test(cli, help_lists_every_command) {
    char *text;
    cr_assert_eq(run_maskjit(&text, "--help"), 0);
    const char *cmds[] = {"demo", "run", "check", "ir", "trace", "asm", "bench"};
    for (int i = 0; i < 7; i++) {
        cr_assert(strstr(text, cmds[i]), "%s missing", cmds[i]);
        char *sub;
        cr_assert_eq(run_maskjit(&sub, "%s --help", cmds[i]), 0, "%s --help", cmds[i]);
        cr_assert(strlen(sub) > 40, "%s --help says something", cmds[i]);
        free(sub);
    }
    free(text);
}

Test(cli, demo_output_is_the_seed_models, .timeout = 60) {
    char *text;
    cr_assert_eq(run_maskjit(&text, "demo --no-timing"), 0);
    /* Identity masks: y = 3*(2*(x + 10) + 20) + 30 = 6x + 150; x[0][0] = -1. */
    cr_assert(strstr(text, "[144.0000, 144.7500"), "%s", text);
    cr_assert(strstr(text, "linear.parametrizations.weight.original"), "%s", text);
    cr_assert(strstr(text, "%3 = mul"), "traced IR shows the mask multiply");
    cr_assert(strstr(text, "compiled vs eager: max abs diff 0 (bit-identical)"), "%s", text);
    free(text);
}
