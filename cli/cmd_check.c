/* maskjit check: the equivalence test users put in CI. Runs every path on
 * the given input and N random ones and compares them with eager (and with
 * the file's `expected` tensor when there is one). */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "check_locate.h"
#include "check_verdict.h"
#include "cli.h"
#include "jit/jit_test.h"

enum { PATH_EAGER, PATH_TRACED, PATH_EXACT, PATH_FAST, PATH_FROZEN, N_PATHS };
static const char *const path_names[N_PATHS] = {"eager", "traced", "compiled-exact",
                                                "compiled-fast", "frozen"};
/* Paths that promise eager's bits (exact mode's rule: any NaN matches any
 * NaN; for finite inputs on frozen, see docs/numerics.md). */
static const bool path_exact[N_PATHS] = {true, true, true, false, true};

typedef struct path_result {
    check_tally t;                 /* what the verdict looks at */
    double max_abs, max_rel;       /* vs the reference (eager, or traced for a saved trace) */
    bool bit_identical;            /* every byte the same, NaNs included */
    double exp_abs, exp_rel;       /* vs `expected` from the input file */
    char detail[256];              /* first mismatch, when any */
    bool located;                  /* the first failing input was looked into: */
    int where_input;               /* which one (0-based, stored sets first)   */
    int64_t where_batch;
    check_where where;             /* its first diverging node                 */
} path_result;

static void path_options(int p, mj_compile_options *o) {
    mj_compile_options_init(o);
    o->numeric = p == PATH_FAST ? MJ_NUMERIC_FAST : MJ_NUMERIC_EXACT;
    o->frozen = p == PATH_FROZEN;
    o->threads = 1;
}

/* --json's "first_divergence": the input, and the node or why none. */
static json_t *where_json(const path_result *r) {
    const check_where *w = &r->where;
    json_t *o = json_pack("{s:i, s:I, s:s}", "input", r->where_input, "batch",
                          (json_int_t)r->where_batch, "against", w->against ? w->against : "");
    if (!w->found) {
        json_object_set_new(o, "note", json_string(w->note));
        return o;
    }
    json_object_set_new(o, "node", json_integer(w->node));
    json_object_set_new(o, "ir", json_string(w->line));
    if (w->origin[0]) json_object_set_new(o, "origin", json_string(w->origin));
    json_object_set_new(o, "max_abs", isfinite(w->max_abs) ? json_real(w->max_abs) : json_null());
    json_object_set_new(o, "tolerance", json_real(w->tol));
    json_object_set_new(o, "within_tolerance_but_not_bit_identical", json_boolean(w->bits));
    return o;
}

/* Path p just failed on x: name its first diverging node. A compiled path
 * that parts from the interpreter is compared with it node by node; a path
 * that only misses PyTorch's output, with PyTorch's node values when the
 * file holds them for this input. */
static mj_status locate(path_result *r, int p, check_locator *l, mj_jit *jit, int n_in,
                        const mj_tensor *const *x, const char *suffix, double rtol, double atol) {
    bool own_ok = r->t.must_be_exact ? r->t.exact : r->t.close;
    if (!own_ok && p >= PATH_EXACT) {
        mj_compile_options o;
        path_options(p, &o);
        return check_locate(l, jit, &o, n_in, x, NULL, path_exact[p], rtol, atol, &r->where);
    }
    r->where.against = own_ok ? "PyTorch" : path_names[PATH_EAGER];
    if (p == PATH_EAGER || !own_ok) {
        snprintf(r->where.note, sizeof r->where.note, "not localised: eager runs no graph nodes");
        return MJ_OK;
    }
    if (!suffix || !check_locator_has_pytorch(l, suffix)) {
        snprintf(r->where.note, sizeof r->where.note,
                 "not localised: the file holds no PyTorch node values for this input (export "
                 "with --intermediates)");
        return MJ_OK;
    }
    mj_compile_options o;
    path_options(p, &o);
    return check_locate(l, jit, p == PATH_TRACED ? NULL : &o, n_in, x, suffix, false, rtol, atol,
                        &r->where);
}

static void merge(path_result *r, const mj_compare *c, const mj_tensor *y, const mj_tensor *ref) {
    if (c->max_abs > r->max_abs) r->max_abs = c->max_abs;
    if (c->max_rel > r->max_rel) r->max_rel = c->max_rel;
    int64_t first;
    bool exact = check_exact_equal(y, ref, &first);
    r->bit_identical = r->bit_identical && c->bit_identical;
    r->t.exact = r->t.exact && exact;
    r->t.close = r->t.close && c->close;
    if (r->detail[0]) return;
    if (!c->close) {
        mj_compare_describe(c, y, ref, r->detail, sizeof r->detail);
    } else if (r->t.must_be_exact && first >= 0) { /* close, but not the same bits */
        float a = mj_tensor_data(y)[first], b = mj_tensor_data(ref)[first];
        uint32_t ab, bb;
        memcpy(&ab, &a, sizeof ab);
        memcpy(&bb, &b, sizeof bb);
        snprintf(r->detail, sizeof r->detail,
                 "not bit-identical: element %lld is %a (0x%08x), the reference %a (0x%08x)",
                 (long long)first, (double)a, (unsigned)ab, (double)b, (unsigned)bb);
    }
}

/* A stored check: the inputs and PyTorch's outputs (from
 * tools/export_torch.py) under "<input><suffix>" and "expected[.j]<suffix>",
 * suffix "" or ".batchN"; borrowed from the file. */
typedef struct stored_set {
    mj_tensor *x[CLI_MAX_STRINGS];
    const mj_tensor *y[CLI_MAX_STRINGS];
    char suffix[32];
} stored_set;

/* "expected<suffix>" for one output, else "expected.<j><suffix>". */
static void expected_name(char *buf, size_t size, int n_out, int j, const char *suffix) {
    if (n_out == 1) snprintf(buf, size, "expected%s", suffix);
    else snprintf(buf, size, "expected.%d%s", j, suffix);
}

/* The ".batchN" sets beside the first input's name in d, each with every
 * input and every expected output; returns how many it put in sets. */
static int stored_batches(const mj_tensor_dict *d, const char *const *in_names, int n_in, int n_out,
                          stored_set *sets, int cap) {
    int n = 0;
    size_t len = strlen(in_names[0]);
    for (int i = 0; i < mj_tensor_dict_size(d) && n < cap; i++) {
        const char *key = mj_tensor_dict_key(d, i);
        if (strncmp(key, in_names[0], len) != 0 || strncmp(key + len, ".batch", 6) != 0) continue;
        const char *digits = key + len + 6;
        if (!*digits || strspn(digits, "0123456789") != strlen(digits) || strlen(digits) > 20) continue;
        stored_set *st = &sets[n];
        snprintf(st->suffix, sizeof st->suffix, ".batch%s", digits);
        bool all = true;
        for (int k = 0; k < n_in + n_out && all; k++) {
            char name[192];
            if (k < n_in) snprintf(name, sizeof name, "%s%s", in_names[k], st->suffix);
            else expected_name(name, sizeof name, n_out, k - n_in, st->suffix);
            mj_tensor *t = mj_tensor_dict_get(d, name);
            if (!t) all = false;
            else if (k < n_in) st->x[k] = t;
            else st->y[k - n_in] = t;
        }
        if (all) n++;
    }
    return n;
}

int cmd_check(int argc, char **argv) {
    static const cli_command cmd = {
        "check", "MODEL [options]",
        "Check that traced, compiled (exact, fast) and frozen outputs equal eager's.\n"
        "Exact paths must be bit-identical to eager (a NaN matches any NaN: exact\n"
        "mode does not promise NaN sign or payload), fast within tolerance; with an\n"
        "input file holding `expected` (e.g. from tools/export_torch.py) every path\n"
        "must also be within tolerance of it (several outputs: `expected.0`,\n"
        "`expected.1`, ...), and so for each\n"
        "`input.batchN` with its `expected.batchN` stored beside them.\n"
        "A failing path names its first diverging node: against the interpreter\n"
        "for a compiled path, else against PyTorch's node values when the file\n"
        "holds them (tools/export_torch.py --intermediates).\n"
        "The tolerance of each output grows with the longest sum K (in_features,\n"
        "reduced dim) computing it: rtol = max(8 sqrt(K) u, 1.3e-6), atol =\n"
        "8 K u mean|reference| with u = 2^-24 (docs/numerics.md); --rtol and\n"
        "--atol replace either part for every output.\n"
        "Exit 0 on PASS, 1 on FAIL, 2 on bad usage.", NULL};
    const char *weights = NULL, *input = NULL;
    cli_strings input_names = {0};
    double rtol = -1, atol = -1; /* not given: fast mode's bound per output */
    /* batch 0: not given (the input's batch, else 3) */
    cli_int inputs = {4, 0, 1000}, batch_opt = {0, 1, CLI_MAX_BATCH}, seed = {0, 0, CLI_MAX_SEED};
    bool json = false;
    const cli_opt opts[] = {
        {"--weights", OPT_STRING, &weights, "safetensors file with the model's tensors"},
        {"--input", OPT_STRING, &input, "safetensors file with `input` (and `expected`)"},
        {"--input-name", OPT_STRINGS, &input_names,
         "name of the input tensor (default: the model's input name); once per input"},
        {"--inputs", OPT_RANGED, &inputs, "number of extra random inputs, 0..1000 (default 4)"},
        {"--batch", OPT_RANGED, &batch_opt,
         "batch of random inputs (default: the input's, else 3)"},
        {"--rtol", OPT_REAL, &rtol, "relative tolerance (default: grows with the sum length)"},
        {"--atol", OPT_REAL, &atol, "absolute tolerance (default: grows with the sum length)"},
        {"--seed", OPT_RANGED, &seed, "seed of default init and random inputs (default 0)"},
        {"--json", OPT_FLAG, &json, "print one JSON object instead of the table"},
    };
    const char *model;
    int rc;
    if (!cli_parse_args(&cmd, argc, argv, opts, CLI_N_OPTS(opts), NULL, &model, &rc)) return rc;
    int64_t n_random = inputs.value, batch = batch_opt.value;

    cli_model cm;
    if ((rc = cli_model_load("check", model, weights, (uint64_t)seed.value, &cm)) != CLI_OK)
        return rc;
    mj_tensor *given[CLI_MAX_STRINGS] = {0}, *expected[CLI_MAX_STRINGS] = {0};
    bool has_given = false;
    mj_tensor_dict *input_file = NULL;
    int n_in = cli_model_input_count(&cm), n_out = cli_model_output_count(&cm);
    mj_jit *jit = NULL;
    mj_compiled *compiled[N_PATHS] = {0};
    path_result res[N_PATHS];
    memset(res, 0, sizeof res);
    check_locator *locator = NULL;
    int n_inputs = 0;
    if (n_in > CLI_MAX_STRINGS || n_out > CLI_MAX_STRINGS) {
        rc = cli_error("check", CLI_FAIL, "%s has %d inputs and %d outputs; the CLI handles at most %d each",
                       model, n_in, n_out, CLI_MAX_STRINGS);
        n_in = 0;
        goto done;
    }
    char in_buf[CLI_MAX_STRINGS][32];
    const char *in_names[CLI_MAX_STRINGS];
    bool file_has_inputs = cm.exported;
    for (int i = 0; i < n_in; i++) {
        in_names[i] = input_names.n ? input_names.v[i] : cli_model_input_name(&cm, i, in_buf[i], sizeof in_buf[i]);
        file_has_inputs = file_has_inputs && in_names[i] && mj_tensor_dict_get(cm.file, in_names[i]);
    }
    if (input || (n_in >= 1 && input_names.n <= n_in && file_has_inputs)) {
        /* a file's inputs (an export carries its inputs and PyTorch's expected outputs) */
        if ((rc = cli_model_inputs("check", &cm, input, &input_names, 1, 0, given, &input_file)) != CLI_OK) {
            n_in = 0;
            goto done;
        }
        has_given = true;
        const mj_tensor_dict *ef = input ? input_file : cm.file;
        for (int j = 0; j < n_out; j++) {
            char nb[32];
            expected_name(nb, sizeof nb, n_out, j, "");
            expected[j] = mj_tensor_dict_get(ef, nb);
        }
        if (batch == 0 && mj_tensor_rank(given[0]) >= 1) batch = mj_tensor_dim(given[0], 0);
    }
    /* The stored sets: the given inputs, then each "<input>.batchN" with its
     * "expected[.j].batchN", borrowed from the file. */
    enum { MAX_STORED = 16 };
    stored_set stored[MAX_STORED];
    memset(stored, 0, sizeof stored);
    int n_stored = 0;
    if (has_given) {
        n_stored = 1;
        for (int i = 0; i < n_in; i++) stored[0].x[i] = given[i];
        for (int j = 0; j < n_out; j++) stored[0].y[j] = expected[j];
        n_stored += stored_batches(input ? input_file : cm.file, in_names, n_in, n_out, stored + 1,
                                   MAX_STORED - 1);
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
    if (cli_test_fault && mj_jit_inject_fault(jit, cli_test_fault) != MJ_OK) {
        rc = cli_mj_error("check", "MASKJIT_TEST_FAULT");
        goto done;
    }
    for (int p = PATH_EXACT; p <= PATH_FROZEN; p++) {
        mj_compile_options o;
        path_options(p, &o);
        if (mj_jit_compile(jit, cm.graph, &o, &compiled[p]) != MJ_OK) {
            rc = cli_mj_error("check", path_names[p]);
            goto done;
        }
    }
    if (!(locator = check_locator_new(cm.graph, cm.exported && !input ? cm.file : NULL))) {
        rc = cli_error("check", CLI_FAIL, "out of memory");
        goto done;
    }
    for (int p = 0; p < N_PATHS; p++) {
        res[p].bit_identical = res[p].t.exact = res[p].t.close = res[p].t.exp_close = true;
        res[p].t.must_be_exact = path_exact[p];
        res[p].t.ran = p != PATH_EAGER || cm.module != NULL;
    }
    /* The reference is eager; a saved trace has no model code, so its
     * interpreter replay is the reference instead. */
    int ref_path = cm.module ? PATH_EAGER : PATH_TRACED;
    mj_tolerance shown = {0}; /* the largest tolerance any output got, for the header */
    for (int64_t k = -n_stored; k < n_random; k++) {
        mj_tensor *x[CLI_MAX_STRINGS] = {0}, *ys[N_PATHS][CLI_MAX_STRINGS] = {{0}};
        const mj_tensor *want[CLI_MAX_STRINGS] = {0};
        const char *suffix = NULL; /* of a stored set */
        if (k < 0) {
            const stored_set *st = &stored[k + n_stored];
            for (int i = 0; i < n_in; i++) x[i] = mj_tensor_retain(st->x[i]);
            for (int j = 0; j < n_out; j++) want[j] = st->y[j];
            suffix = st->suffix;
        } else if ((rc = cli_model_inputs("check", &cm, NULL, NULL, batch, (uint64_t)seed.value + 100 + k, x,
                                          NULL)) != CLI_OK) {
            goto done;
        }
        n_inputs++;
        const mj_tensor *const *xc = (const mj_tensor *const *)x;
        for (int p = 0; p < N_PATHS && rc == CLI_OK; p++) {
            if (!res[p].t.ran) continue;
            mj_status s = MJ_OK;
            if (p == PATH_EAGER) s = mj_module_forward_n(cm.module, n_in, xc, n_out, ys[p]);
            else if (p == PATH_TRACED) s = mj_graph_run_n(cm.graph, n_in, xc, n_out, ys[p]);
            else s = mj_compiled_run_n(compiled[p], n_in, xc, n_out, ys[p]);
            if (s != MJ_OK) rc = cli_mj_error("check", path_names[p]);
        }
        int64_t xb = n_in > 0 && mj_tensor_rank(x[0]) >= 1 ? mj_tensor_dim(x[0], 0) : 1;
        for (int p = 0; p < N_PATHS && rc == CLI_OK; p++) {
            if (!res[p].t.ran) continue;
            for (int j = 0; j < n_out; j++) {
                mj_tolerance tr = check_tolerance(cm.graph, j, xb, ys[ref_path][j], rtol, atol);
                if (tr.sum_len > shown.sum_len || (tr.sum_len == shown.sum_len && tr.atol > shown.atol))
                    shown = tr; /* the loosest, for the header */
                mj_compare c = mj_tensor_compare(ys[p][j], ys[ref_path][j], tr.rtol, tr.atol);
                merge(&res[p], &c, ys[p][j], ys[ref_path][j]);
                if (want[j]) {
                    mj_tolerance te = check_tolerance(cm.graph, j, xb, want[j], rtol, atol);
                    mj_compare e = mj_tensor_compare(ys[p][j], want[j], te.rtol, te.atol);
                    res[p].t.has_expected = true;
                    res[p].exp_abs = fmax(res[p].exp_abs, e.max_abs);
                    res[p].exp_rel = fmax(res[p].exp_rel, e.max_rel);
                    res[p].t.exp_close = res[p].t.exp_close && e.close;
                    if (!e.close && !res[p].detail[0]) {
                        char d[200];
                        mj_compare_describe(&e, ys[p][j], want[j], d, sizeof d);
                        snprintf(res[p].detail, sizeof res[p].detail, "vs expected: %s", d);
                    }
                }
            }
            if (!res[p].located && !check_path_ok(&res[p].t)) { /* its first failing input */
                res[p].located = true;
                res[p].where_input = n_inputs - 1;
                res[p].where_batch = mj_tensor_rank(x[0]) >= 1 ? mj_tensor_dim(x[0], 0) : 1;
                if (locate(&res[p], p, locator, jit, n_in, xc, suffix, rtol, atol) != MJ_OK)
                    rc = cli_mj_error("check", "finding the first diverging node");
            }
        }
        for (int p = 0; p < N_PATHS; p++)
            for (int j = 0; j < n_out; j++) mj_tensor_release(ys[p][j]);
        for (int i = 0; i < n_in; i++) mj_tensor_release(x[i]);
        if (rc != CLI_OK) goto done;
    }

    check_tally tally[N_PATHS];
    for (int p = 0; p < N_PATHS; p++) tally[p] = res[p].t;
    bool ok[N_PATHS];
    bool pass = check_verdict(tally, N_PATHS, ok);
    if (json) {
        json_t *paths = json_array();
        for (int p = 0; p < N_PATHS; p++) {
            if (!res[p].t.ran) continue;
            json_t *o = json_pack("{s:s, s:f, s:f, s:b, s:b, s:b, s:b}", "path", path_names[p],
                                  "max_abs", res[p].max_abs, "max_rel", res[p].max_rel,
                                  "bit_identical", res[p].bit_identical, "exact", res[p].t.exact,
                                  "must_be_bit_identical", path_exact[p], "ok", ok[p]);
            if (res[p].t.has_expected)
                json_object_set_new(o, "vs_expected",
                                    json_pack("{s:f, s:f, s:b}", "max_abs", res[p].exp_abs,
                                              "max_rel", res[p].exp_rel, "close",
                                              res[p].t.exp_close));
            if (res[p].detail[0]) json_object_set_new(o, "detail", json_string(res[p].detail));
            if (res[p].located) json_object_set_new(o, "first_divergence", where_json(&res[p]));
            json_array_append_new(paths, o);
        }
        json_t *root = json_pack("{s:s, s:s, s:i, s:I, s:f, s:f, s:o, s:b}", "model", model,
                                 "reference", path_names[ref_path], "inputs", n_inputs, "batch",
                                 (json_int_t)batch, "rtol", shown.rtol, "atol", shown.atol, "paths",
                                 paths, "pass", pass);
        json_object_set_new(root, "tolerance",
                            json_pack("{s:b, s:b, s:I, s:f}", "rtol_given", rtol >= 0, "atol_given",
                                      atol >= 0, "longest_sum", (json_int_t)shown.sum_len,
                                      "mean_abs_reference", shown.scale));
        json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        fputc('\n', stdout);
        json_decref(root);
    } else {
        bool color = cli_use_color(stdout);
        printf("maskjit check %s: %d input(s), batch %lld, reference %s, rtol %.3g, atol %.3g", model,
               n_inputs, (long long)batch, path_names[ref_path], shown.rtol, shown.atol);
        if (rtol < 0 || atol < 0)
            printf(" (fast-mode bound; shown for the output with the longest sum, %lld, mean |ref| %.3g)",
                   (long long)shown.sum_len, shown.scale);
        printf("\n");
        printf("%-15s %-12s %-12s %-15s %-12s %-12s %s\n", "path", "max abs", "max rel",
               "bit-identical", "exp abs", "exp rel", "result");
        for (int p = 0; p < N_PATHS; p++) {
            if (!res[p].t.ran) continue;
            char ea[32] = "-", er[32] = "-";
            if (res[p].t.has_expected) {
                snprintf(ea, sizeof ea, "%.3g", res[p].exp_abs);
                snprintf(er, sizeof er, "%.3g", res[p].exp_rel);
            }
            printf("%-15s %-12.3g %-12.3g %-15s %-12s %-12s %s%s%s\n", path_names[p],
                   res[p].max_abs, res[p].max_rel, res[p].bit_identical ? "yes" : res[p].t.exact ? "NaN bits" : "no", ea, er,
                   color ? (ok[p] ? "\033[32m" : "\033[31m") : "", ok[p] ? "ok" : "MISMATCH",
                   color ? "\033[0m" : "");
            if (!ok[p] && res[p].detail[0]) printf("  %s\n", res[p].detail);
            if (!ok[p] && res[p].located) {
                char w[600];
                check_where_describe(&res[p].where, w, sizeof w);
                printf("  input %d (batch %lld): %s\n", res[p].where_input + 1,
                       (long long)res[p].where_batch, w);
            }
        }
        printf("%s: %s\n", pass ? "PASS" : "FAIL",
               pass ? "exact paths bit-identical to the reference (NaN matching any NaN), fast "
                      "within tolerance"
                    : "at least one path differs (see above)");
    }
    rc = pass ? CLI_OK : CLI_FAIL;
done:
    for (int p = 0; p < N_PATHS; p++) mj_compiled_free(compiled[p]);
    check_locator_free(locator);
    mj_jit_free(jit);
    for (int i = 0; i < n_in; i++) mj_tensor_release(given[i]);
    mj_tensor_dict_free(input_file);
    cli_model_free(&cm);
    return rc;
}
