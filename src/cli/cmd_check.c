/* maskjit check: the equivalence test users put in CI. Runs every path on
 * the given input and N random ones and compares them with eager (and with
 * the file's `expected` tensor when there is one). */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "cli.h"

enum { PATH_EAGER, PATH_TRACED, PATH_EXACT, PATH_FAST, PATH_FROZEN, N_PATHS };
static const char *const path_names[N_PATHS] = {"eager", "traced", "compiled-exact",
                                                "compiled-fast", "frozen"};
/* Paths that promise bit-identical output to eager (for finite inputs). */
static const bool path_exact[N_PATHS] = {true, true, true, false, true};

typedef struct path_result {
    bool ran;
    double max_abs, max_rel;       /* vs the reference (eager, or traced for a saved trace) */
    bool bit_identical, close;
    bool has_expected;
    double exp_abs, exp_rel;       /* vs `expected` from the input file */
    bool exp_close;
    char detail[256];              /* first mismatch, when any */
} path_result;

static void merge(path_result *r, const mj_compare *c, const mj_tensor *y, const mj_tensor *ref) {
    if (c->max_abs > r->max_abs) r->max_abs = c->max_abs;
    if (c->max_rel > r->max_rel) r->max_rel = c->max_rel;
    r->bit_identical = r->bit_identical && c->bit_identical;
    r->close = r->close && c->close;
    if (!c->close && !r->detail[0]) mj_compare_describe(c, y, ref, r->detail, sizeof r->detail);
}

int cmd_check(int argc, char **argv) {
    static const cli_command cmd = {
        "check", "MODEL [options]",
        "Check that traced, compiled (exact, fast) and frozen outputs equal eager's.\n"
        "Exact paths must be bit-identical to eager, fast within rtol/atol; with an\n"
        "input file holding `expected` (e.g. from tools/export_torch.py) every path\n"
        "must also be within rtol/atol of it. Exit 0 on PASS, 1 on FAIL, 2 on bad usage.", NULL};
    const char *weights = NULL, *input = NULL, *rtol_s = NULL, *atol_s = NULL;
    cli_strings input_names = {0};
    int64_t n_random = 4, batch = 0, seed = 0;
    bool json = false;
    const cli_opt opts[] = {
        {"--weights", OPT_STRING, &weights, "safetensors file with the model's tensors"},
        {"--input", OPT_STRING, &input, "safetensors file with `input` (and `expected`)"},
        {"--input-name", OPT_STRINGS, &input_names,
         "name of the input tensor (default: the model's input name); once per input"},
        {"--inputs", OPT_INT, &n_random, "number of extra random inputs (default 4)"},
        {"--batch", OPT_INT, &batch, "batch of random inputs (default: the input's, else 3)"},
        {"--rtol", OPT_STRING, &rtol_s, "relative tolerance (default 1.3e-6)"},
        {"--atol", OPT_STRING, &atol_s, "absolute tolerance (default 1e-5)"},
        {"--seed", OPT_INT, &seed, "seed of default init and random inputs (default 0)"},
        {"--json", OPT_FLAG, &json, "print one JSON object instead of the table"},
    };
    const char *pos[1];
    int n_pos;
    int rc = cli_parse(&cmd, argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), pos, 1, &n_pos,
                       NULL);
    if (rc != CLI_OK) return rc == CLI_HELP ? CLI_OK : rc;
    if (n_pos != 1) return cli_error("check", CLI_USAGE, "missing MODEL (see maskjit check --help)");
    double rtol = MJ_RTOL_F32, atol = MJ_ATOL_F32;
    if (rtol_s && (sscanf(rtol_s, "%lf", &rtol) != 1 || !(rtol >= 0)))
        return cli_error("check", CLI_USAGE, "--rtol needs a non-negative number, got '%s'", rtol_s);
    if (atol_s && (sscanf(atol_s, "%lf", &atol) != 1 || !(atol >= 0)))
        return cli_error("check", CLI_USAGE, "--atol needs a non-negative number, got '%s'", atol_s);
    if (n_random > 1000) return cli_error("check", CLI_USAGE, "--inputs is at most 1000");

    cli_model cm;
    if ((rc = cli_model_load("check", pos[0], weights, (uint64_t)seed, &cm)) != CLI_OK) return rc;
    mj_tensor *given[CLI_MAX_STRINGS] = {0}, *expected[CLI_MAX_STRINGS] = {0};
    bool has_given = false;
    mj_tensor_dict *input_file = NULL;
    int n_in = cli_model_input_count(&cm), n_out = cli_model_output_count(&cm);
    mj_jit *jit = NULL;
    mj_compiled *compiled[N_PATHS] = {0};
    path_result res[N_PATHS];
    memset(res, 0, sizeof res);
    int n_inputs = 0;
    if (n_in > CLI_MAX_STRINGS || n_out > CLI_MAX_STRINGS) {
        rc = cli_error("check", CLI_FAIL, "%s has %d inputs and %d outputs; the CLI handles at most %d each",
                       pos[0], n_in, n_out, CLI_MAX_STRINGS);
        n_in = 0;
        goto done;
    }
    if (input || (cm.exported && n_in == 1 &&
                  mj_tensor_dict_get(cm.file, input_names.n ? input_names.v[0] : "input"))) {
        /* a file's inputs (an export carries its input and PyTorch's expected output) */
        if ((rc = cli_model_inputs("check", &cm, input, &input_names, 1, 0, given, &input_file)) != CLI_OK) {
            n_in = 0;
            goto done;
        }
        has_given = true;
        const mj_tensor_dict *ef = input ? input_file : cm.file;
        for (int j = 0; j < n_out; j++) {
            char nb[32];
            snprintf(nb, sizeof nb, n_out == 1 ? "expected" : "expected.%d", j);
            expected[j] = mj_tensor_dict_get(ef, nb);
        }
        if (batch == 0 && mj_tensor_rank(given[0]) >= 1) batch = mj_tensor_dim(given[0], 0);
    }
    if (batch == 0) batch = 3;
    if (!has_given && n_random == 0) {
        rc = cli_error("check", CLI_USAGE, "nothing to check: give --input or --inputs N > 0");
        goto done;
    }
    if ((rc = cli_model_trace("check", &cm)) != CLI_OK) goto done;
    if (mj_jit_new(&jit) != MJ_OK) {
        rc = cli_mj_error("check", "starting the JIT");
        goto done;
    }
    for (int p = PATH_EXACT; p <= PATH_FROZEN; p++) {
        mj_compile_options o;
        mj_compile_options_init(&o);
        o.numeric = p == PATH_FAST ? MJ_NUMERIC_FAST : MJ_NUMERIC_EXACT;
        o.frozen = p == PATH_FROZEN;
        o.threads = 1;
        if (mj_jit_compile(jit, cm.graph, &o, &compiled[p]) != MJ_OK) {
            rc = cli_mj_error("check", path_names[p]);
            goto done;
        }
    }
    for (int p = 0; p < N_PATHS; p++) {
        res[p].bit_identical = res[p].close = res[p].exp_close = true;
        res[p].ran = p != PATH_EAGER || cm.module != NULL;
    }
    /* The reference is eager; a saved trace has no model code, so its
     * interpreter replay is the reference instead. */
    int ref_path = cm.module ? PATH_EAGER : PATH_TRACED;
    for (int64_t k = -1; k < n_random; k++) {
        mj_tensor *x[CLI_MAX_STRINGS] = {0}, *ys[N_PATHS][CLI_MAX_STRINGS] = {{0}};
        if (k < 0) {
            if (!has_given) continue;
            for (int i = 0; i < n_in; i++) x[i] = mj_tensor_retain(given[i]);
        } else if ((rc = cli_model_inputs("check", &cm, NULL, NULL, batch, (uint64_t)seed + 100 + k, x, NULL)) !=
                   CLI_OK) {
            goto done;
        }
        n_inputs++;
        const mj_tensor *const *xc = (const mj_tensor *const *)x;
        for (int p = 0; p < N_PATHS && rc == CLI_OK; p++) {
            if (!res[p].ran) continue;
            mj_status s = MJ_OK;
            if (p == PATH_EAGER) s = mj_module_forward_n(cm.module, n_in, xc, n_out, ys[p]);
            else if (p == PATH_TRACED) s = mj_graph_run_n(cm.graph, n_in, xc, n_out, ys[p]);
            else s = mj_compiled_run_n(compiled[p], n_in, xc, n_out, ys[p]);
            if (s != MJ_OK) rc = cli_mj_error("check", path_names[p]);
        }
        for (int p = 0; p < N_PATHS && rc == CLI_OK; p++) {
            if (!res[p].ran) continue;
            for (int j = 0; j < n_out; j++) {
                mj_compare c = mj_tensor_compare(ys[p][j], ys[ref_path][j], rtol, atol);
                merge(&res[p], &c, ys[p][j], ys[ref_path][j]);
                if (k < 0 && expected[j]) {
                    mj_compare e = mj_tensor_compare(ys[p][j], expected[j], rtol, atol);
                    res[p].has_expected = true;
                    res[p].exp_abs = fmax(res[p].exp_abs, e.max_abs);
                    res[p].exp_rel = fmax(res[p].exp_rel, e.max_rel);
                    res[p].exp_close = res[p].exp_close && e.close;
                    if (!e.close && !res[p].detail[0]) {
                        char d[200];
                        mj_compare_describe(&e, ys[p][j], expected[j], d, sizeof d);
                        snprintf(res[p].detail, sizeof res[p].detail, "vs expected: %s", d);
                    }
                }
            }
        }
        for (int p = 0; p < N_PATHS; p++)
            for (int j = 0; j < n_out; j++) mj_tensor_release(ys[p][j]);
        for (int i = 0; i < n_in; i++) mj_tensor_release(x[i]);
        if (rc != CLI_OK) goto done;
    }

    bool pass = true;
    bool ok[N_PATHS];
    for (int p = 0; p < N_PATHS; p++) {
        ok[p] = !res[p].ran || ((path_exact[p] ? res[p].bit_identical : res[p].close) &&
                                (!res[p].has_expected || res[p].exp_close));
        pass = pass && ok[p];
    }
    if (json) {
        json_t *paths = json_array();
        for (int p = 0; p < N_PATHS; p++) {
            if (!res[p].ran) continue;
            json_t *o = json_pack("{s:s, s:f, s:f, s:b, s:b, s:b}", "path", path_names[p],
                                  "max_abs", res[p].max_abs, "max_rel", res[p].max_rel,
                                  "bit_identical", res[p].bit_identical, "must_be_bit_identical",
                                  path_exact[p], "ok", ok[p]);
            if (res[p].has_expected)
                json_object_set_new(o, "vs_expected",
                                    json_pack("{s:f, s:f, s:b}", "max_abs", res[p].exp_abs,
                                              "max_rel", res[p].exp_rel, "close",
                                              res[p].exp_close));
            if (res[p].detail[0]) json_object_set_new(o, "detail", json_string(res[p].detail));
            json_array_append_new(paths, o);
        }
        json_t *root = json_pack("{s:s, s:s, s:i, s:I, s:f, s:f, s:o, s:b}", "model", pos[0],
                                 "reference", path_names[ref_path], "inputs", n_inputs, "batch",
                                 (json_int_t)batch, "rtol", rtol, "atol", atol, "paths", paths,
                                 "pass", pass);
        json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        fputc('\n', stdout);
        json_decref(root);
    } else {
        bool color = cli_use_color(stdout);
        printf("maskjit check %s: %d input(s), batch %lld, reference %s, rtol %g, atol %g\n",
               pos[0], n_inputs, (long long)batch, path_names[ref_path], rtol, atol);
        printf("%-15s %-12s %-12s %-15s %-12s %-12s %s\n", "path", "max abs", "max rel",
               "bit-identical", "exp abs", "exp rel", "result");
        for (int p = 0; p < N_PATHS; p++) {
            if (!res[p].ran) continue;
            char ea[32] = "-", er[32] = "-";
            if (res[p].has_expected) {
                snprintf(ea, sizeof ea, "%.3g", res[p].exp_abs);
                snprintf(er, sizeof er, "%.3g", res[p].exp_rel);
            }
            printf("%-15s %-12.3g %-12.3g %-15s %-12s %-12s %s%s%s\n", path_names[p],
                   res[p].max_abs, res[p].max_rel, res[p].bit_identical ? "yes" : "no", ea, er,
                   color ? (ok[p] ? "\033[32m" : "\033[31m") : "", ok[p] ? "ok" : "MISMATCH",
                   color ? "\033[0m" : "");
            if (!ok[p] && res[p].detail[0]) printf("  %s\n", res[p].detail);
        }
        printf("%s: %s\n", pass ? "PASS" : "FAIL",
               pass ? "exact paths bit-identical to the reference, fast within tolerance"
                    : "at least one path differs (see above)");
    }
    rc = pass ? CLI_OK : CLI_FAIL;
done:
    for (int p = 0; p < N_PATHS; p++) mj_compiled_free(compiled[p]);
    mj_jit_free(jit);
    for (int i = 0; i < n_in; i++) mj_tensor_release(given[i]);
    mj_tensor_dict_free(input_file);
    cli_model_free(&cm);
    return rc;
}
