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

/* Further stored checks: "<input>.batchN" with "expected.batchN" (PyTorch's
 * output at another batch size, from tools/export_torch.py). Returns how many
 * pairs it put in xs/ys (borrowed), at most cap. */
static int stored_batches(const mj_tensor_dict *d, const char *input_name, mj_tensor **xs,
                          mj_tensor **ys, int cap) {
    int n = 0;
    size_t len = strlen(input_name);
    for (int i = 0; i < mj_tensor_dict_size(d) && n < cap; i++) {
        const char *key = mj_tensor_dict_key(d, i);
        if (strncmp(key, input_name, len) != 0 || strncmp(key + len, ".batch", 6) != 0) continue;
        const char *digits = key + len + 6;
        if (!*digits || strspn(digits, "0123456789") != strlen(digits)) continue;
        char name[64];
        if ((size_t)snprintf(name, sizeof name, "expected.batch%s", digits) >= sizeof name) continue;
        mj_tensor *y = mj_tensor_dict_get(d, name);
        if (!y) continue;
        xs[n] = mj_tensor_dict_value(d, i);
        ys[n++] = y;
    }
    return n;
}

int cmd_check(int argc, char **argv) {
    static const cli_command cmd = {
        "check", "MODEL [options]",
        "Check that traced, compiled (exact, fast) and frozen outputs equal eager's.\n"
        "Exact paths must be bit-identical to eager, fast within rtol/atol; with an\n"
        "input file holding `expected` (e.g. from tools/export_torch.py) every path\n"
        "must also be within rtol/atol of it, and so for each `input.batchN` with its\n"
        "`expected.batchN` stored beside them. Exit 0 on PASS, 1 on FAIL, 2 on bad usage.", NULL};
    const char *weights = NULL, *input = NULL, *input_name = "input", *rtol_s = NULL,
               *atol_s = NULL;
    int64_t n_random = 4, batch = 0, seed = 0;
    bool json = false;
    const cli_opt opts[] = {
        {"--weights", OPT_STRING, &weights, "safetensors file with the model's tensors"},
        {"--input", OPT_STRING, &input, "safetensors file with `input` (and `expected`)"},
        {"--input-name", OPT_STRING, &input_name, "name of the input tensor (default input)"},
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
    mj_tensor *given = NULL, *expected = NULL;
    mj_tensor_dict *input_file = NULL;
    mj_jit *jit = NULL;
    mj_compiled *compiled[N_PATHS] = {0};
    path_result res[N_PATHS];
    memset(res, 0, sizeof res);
    int n_inputs = 0;
    if (input) {
        if ((rc = cli_load_input("check", input, input_name, &given, &input_file)) != CLI_OK)
            goto done;
        expected = mj_tensor_dict_get(input_file, "expected");
        if (batch == 0 && mj_tensor_rank(given) >= 1) batch = mj_tensor_dim(given, 0);
    } else if (cm.exported && mj_tensor_dict_get(cm.file, input_name)) {
        /* An export carries its input and PyTorch's expected output. */
        given = mj_tensor_retain(mj_tensor_dict_get(cm.file, input_name));
        expected = mj_tensor_dict_get(cm.file, "expected");
        if (batch == 0 && mj_tensor_rank(given) >= 1) batch = mj_tensor_dim(given, 0);
    }
    enum { MAX_STORED = 16 };
    mj_tensor *stored_x[MAX_STORED], *stored_y[MAX_STORED];
    int n_stored = 0;
    if (given) {
        stored_x[0] = given;
        stored_y[0] = expected;
        n_stored = 1;
        const mj_tensor_dict *src = input ? input_file : cm.file;
        n_stored += stored_batches(src, input_name, stored_x + 1, stored_y + 1, MAX_STORED - 1);
    }
    if (batch == 0) batch = 3;
    if (!given && n_random == 0) {
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
    for (int64_t k = -n_stored; k < n_random; k++) {
        mj_tensor *x = NULL, *ys[N_PATHS] = {0};
        const mj_tensor *want = k < 0 ? stored_y[k + n_stored] : NULL;
        if (k < 0) {
            x = mj_tensor_retain(stored_x[k + n_stored]);
        } else if ((rc = cli_random_input("check", batch, cm.in_features, (uint64_t)seed + 100 + k,
                                          &x)) != CLI_OK) {
            goto done;
        }
        n_inputs++;
        for (int p = 0; p < N_PATHS && rc == CLI_OK; p++) {
            if (!res[p].ran) continue;
            mj_status s = MJ_OK;
            if (p == PATH_EAGER) s = mj_module_forward(cm.module, x, &ys[p]);
            else if (p == PATH_TRACED) s = mj_graph_run(cm.graph, x, &ys[p]);
            else s = mj_compiled_run(compiled[p], x, &ys[p]);
            if (s != MJ_OK) rc = cli_mj_error("check", path_names[p]);
        }
        for (int p = 0; p < N_PATHS && rc == CLI_OK; p++) {
            if (!res[p].ran) continue;
            mj_compare c = mj_tensor_compare(ys[p], ys[ref_path], rtol, atol);
            merge(&res[p], &c, ys[p], ys[ref_path]);
            if (want) {
                mj_compare e = mj_tensor_compare(ys[p], want, rtol, atol);
                res[p].has_expected = true;
                res[p].exp_abs = fmax(res[p].exp_abs, e.max_abs);
                res[p].exp_rel = fmax(res[p].exp_rel, e.max_rel);
                res[p].exp_close = res[p].exp_close && e.close;
                if (!e.close && !res[p].detail[0]) {
                    char d[200];
                    mj_compare_describe(&e, ys[p], want, d, sizeof d);
                    snprintf(res[p].detail, sizeof res[p].detail, "vs expected: %s", d);
                }
            }
        }
        for (int p = 0; p < N_PATHS; p++) mj_tensor_release(ys[p]);
        mj_tensor_release(x);
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
    mj_tensor_release(given);
    mj_tensor_dict_free(input_file);
    cli_model_free(&cm);
    return rc;
}
