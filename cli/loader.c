/* Loading what the subcommands work on: a model (spec or saved trace) with
 * its weights and masks, and input tensors. */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

static const char PARAM_SEG[] = "parametrizations.";
static const char ORIG_SUFFIX[] = ".original";

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Where "parametrizations." starts a segment of key, or NULL. */
static const char *param_segment(const char *key) {
    for (const char *p = strstr(key, PARAM_SEG); p; p = strstr(p + 1, PARAM_SEG))
        if (p == key || p[-1] == '.') return p;
    return NULL;
}

static bool is_regular_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int first_linear_in(const char *path, mj_module *m, void *ctx) {
    (void)path;
    int64_t *in = ctx;
    if (*in == 0 && mj_linear_in_features(m) > 0) *in = mj_linear_in_features(m);
    return 0;
}

/* The other spelling of a parameter key: "a.parametrizations.NAME.original"
 * <-> "a.NAME" (any NAME: weights and biases can both be masked). Returns
 * false when there is none. */
static bool alternate_key(const char *key, char *buf, size_t size) {
    const char *seg = param_segment(key);
    if (seg) {
        const char *name = seg + sizeof PARAM_SEG - 1;
        size_t n = strlen(name), o = sizeof ORIG_SUFFIX - 1;
        if (n <= o || !ends_with(name, ORIG_SUFFIX) || memchr(name, '.', n - o)) return false;
        return (size_t)snprintf(buf, size, "%.*s%.*s", (int)(seg - key), key, (int)(n - o), name) <
               size;
    }
    const char *dot = strrchr(key, '.');
    size_t stem = dot ? (size_t)(dot + 1 - key) : 0;
    return (size_t)snprintf(buf, size, "%.*s%s%s%s", (int)stem, key, PARAM_SEG, key + stem,
                            ORIG_SUFFIX) < size;
}

/* A parametrization's own buffer ("a.parametrizations.weight.0.mask"). */
static bool is_parametrization_buffer(const char *key) {
    return param_segment(key) && !ends_with(key, ORIG_SUFFIX);
}

/* Registers masks found in the file, then loads every model tensor from it
 * under its parametrized or plain key. All model tensors must be present;
 * anything else in the file is ignored. */
static int load_weights(const char *cmd, cli_model *cm, mj_rng *rng) {
    mj_module *m = cm->module;
    if (mj_model_apply_masks(m, cm->file, 1.0, rng) != MJ_OK)
        return cli_mj_error(cmd, "registering masks from the weights file");
    mj_tensor_dict *want = NULL, *load = NULL;
    int rc = CLI_FAIL;
    if (mj_module_state_dict(m, true, &want) != MJ_OK || mj_tensor_dict_new(&load) != MJ_OK) {
        cli_mj_error(cmd, "weights");
        goto done;
    }
    for (int i = 0; i < mj_tensor_dict_size(want); i++) {
        const char *key = mj_tensor_dict_key(want, i);
        mj_tensor *t = mj_tensor_dict_get(cm->file, key);
        char alt[512];
        bool has_alt = !is_parametrization_buffer(key) && alternate_key(key, alt, sizeof alt);
        mj_tensor *t_alt = has_alt ? mj_tensor_dict_get(cm->file, alt) : NULL;
        if (t && t_alt) {
            /* Which one is meant cannot be known: refuse rather than pick. */
            bool parametrized = param_segment(key) != NULL;
            cli_error(cmd, CLI_FAIL,
                      "the weights file holds one tensor under two keys, '%s' and '%s'; keep one",
                      parametrized ? alt : key, parametrized ? key : alt);
            goto done;
        }
        if (!t) t = t_alt;
        if (!t && is_parametrization_buffer(key)) t = mj_tensor_dict_value(want, i); /* the model's */
        if (!t) {
            /* torch.nn.utils.prune's state dict: '<mod>.weight_orig' and '<mod>.weight_mask' */
            const char *plain = !param_segment(key) ? key : has_alt ? alt : NULL;
            char orig[520] = "";
            if (plain) snprintf(orig, sizeof orig, "%s_orig", plain);
            if (plain && mj_tensor_dict_get(cm->file, orig))
                cli_error(cmd, CLI_FAIL,
                          "the weights file holds torch.nn.utils.prune's '%s' (and its mask), not '%s': "
                          "export the pruned model with tools/export_torch.py, which keeps the masks, or "
                          "save the state dict after prune.remove",
                          orig, plain);
            else
                cli_error(cmd, CLI_FAIL, "the weights file has no tensor '%s'%s%s%s", key,
                          has_alt ? " (nor '" : "", has_alt ? alt : "", has_alt ? "')" : "");
            goto done;
        }
        if (mj_tensor_dict_set(load, key, t) != MJ_OK) {
            cli_mj_error(cmd, "weights");
            goto done;
        }
    }
    if (mj_module_load_state_dict(m, load, true, NULL) != MJ_OK) {
        cli_mj_error(cmd, "loading weights");
        goto done;
    }
    rc = CLI_OK;
done:
    mj_tensor_dict_free(want);
    mj_tensor_dict_free(load);
    return rc;
}

static int model_from_spec(const char *cmd, const char *spec, uint64_t seed, cli_model *out) {
    mj_rng rng;
    mj_rng_seed(&rng, seed);
    if (mj_model_from_spec(spec, &rng, &out->module) != MJ_OK)
        return cli_error(cmd, CLI_USAGE, "MODEL '%s' is neither a file nor a model spec: %s", spec,
                         mj_last_error());
    mj_module_walk(out->module, first_linear_in, &out->in_features);
    return CLI_OK;
}

int cli_model_load(const char *cmd, const char *model, const char *weights, uint64_t seed,
                   cli_model *out) {
    memset(out, 0, sizeof *out);
    out->name = model;
    if (is_regular_file(model)) {
        /* An export from tools/export_torch.py names its spec in the metadata
         * and carries weights, masks, input and expected output. */
        mj_tensor_dict *d;
        if (mj_safetensors_load(model, &d) != MJ_OK) return cli_mj_error(cmd, "MODEL");
        const char *spec = mj_tensor_dict_get_meta(d, "maskjit.model");
        bool is_trace = mj_tensor_dict_get_meta(d, "maskjit.ir") != NULL;
        if (!is_trace && spec) {
            int rc = CLI_OK;
            if (weights) {
                rc = cli_error(cmd, CLI_USAGE, "%s is an export with its own weights (drop --weights)",
                               model);
            } else {
                rc = model_from_spec(cmd, spec, seed, out);
                out->name = model;
                if (rc == CLI_OK) {
                    out->file = d;
                    out->exported = true;
                    d = NULL;
                    mj_rng rng;
                    mj_rng_seed(&rng, seed);
                    rc = load_weights(cmd, out, &rng);
                    if (rc != CLI_OK) cli_model_free(out);
                }
            }
            mj_tensor_dict_free(d);
            return rc;
        }
        if (!is_trace) {
            mj_tensor_dict_free(d);
            return cli_error(cmd, CLI_USAGE,
                             "%s is neither a saved trace (maskjit trace) nor an export naming its "
                             "model (tools/export_torch.py): no maskjit.ir or maskjit.model metadata",
                             model);
        }
        /* A saved trace: no model code, just the graph and its tensors. */
        if (weights) {
            mj_tensor_dict_free(d);
            return cli_error(cmd, CLI_USAGE,
                             "%s is a saved trace; it carries its own weights (drop --weights)",
                             model);
        }
        /* A trace from tools/export_torch.py also holds inputs and PyTorch's
         * outputs: keep the file's tensors for check and run. */
        out->file = d;
        out->exported = true;
        if (mj_graph_load(model, &out->graph) != MJ_OK) {
            cli_model_free(out);
            return cli_mj_error(cmd, "loading trace");
        }
        for (int i = 0; i < mj_graph_input_count(out->graph); i++) {
            bool ok = mj_graph_input_dim(out->graph, i, 0) == -1;
            for (int k = 1; k < mj_graph_input_rank(out->graph, i); k++)
                ok = ok && mj_graph_input_dim(out->graph, i, k) != -1;
            if (!ok) {
                int rc = cli_error(cmd, CLI_FAIL, "%s: input %d (\"%s\") must have the batch B as its first dim and only there",
                                   model, i, mj_graph_input_name(out->graph, i));
                cli_model_free(out);
                return rc;
            }
        }
        if (mj_graph_input_rank(out->graph, 0) >= 2) out->in_features = mj_graph_input_dim(out->graph, 0, 1);
        return CLI_OK;
    }
    /* Not a regular file: a spec, unless it names a path (specs have no
     * '/' and no '.'), which then gets the file's own error. */
    struct stat st;
    bool exists = stat(model, &st) == 0;
    if (exists || strchr(model, '/') || strchr(model, '.')) {
        if (!exists) return cli_error(cmd, CLI_USAGE, "MODEL '%s': %s", model, strerror(errno));
        return cli_error(cmd, CLI_USAGE, "MODEL '%s' is not a regular file (%s)", model,
                         S_ISDIR(st.st_mode) ? "a directory" : "a device, FIFO or socket");
    }
    int rc = model_from_spec(cmd, model, seed, out);
    if (rc != CLI_OK) return rc;
    mj_rng rng;
    mj_rng_seed(&rng, seed);
    if (weights) {
        if (mj_safetensors_load(weights, &out->file) != MJ_OK) {
            cli_model_free(out);
            return cli_mj_error(cmd, "--weights");
        }
        if (mj_tensor_dict_get_meta(out->file, "maskjit.ir")) {
            /* an export or a saved trace: the model is in the file itself */
            cli_model_free(out);
            return cli_error(cmd, CLI_USAGE,
                             "--weights %s is a saved or exported model, not a state dict: give it as MODEL "
                             "(maskjit %s %s), without the spec",
                             weights, cmd, weights);
        }
        rc = load_weights(cmd, out, &rng);
        if (rc != CLI_OK) {
            cli_model_free(out);
            return rc;
        }
    }
    return CLI_OK;
}

int cli_model_trace(const char *cmd, cli_model *cm) {
    if (cm->graph) return CLI_OK;
    /* As in the seed test: trace on ones(3, in); the batch stays symbolic. */
    int64_t shape[2] = {3, cm->in_features};
    mj_tensor *example;
    if (mj_tensor_ones(&example, 2, shape) != MJ_OK) return cli_mj_error(cmd, "tracing");
    mj_status s = mj_trace_module(cm->module, example, &cm->graph);
    mj_tensor_release(example);
    if (s != MJ_OK) return cli_mj_error(cmd, "tracing");
    return CLI_OK;
}

void cli_model_free(cli_model *cm) {
    mj_graph_free(cm->graph);
    mj_module_free(cm->module);
    mj_tensor_dict_free(cm->file);
    memset(cm, 0, sizeof *cm);
}

int cli_load_input(const char *cmd, const char *path, const char *name, mj_tensor **x,
                   mj_tensor_dict **file_out) {
    mj_tensor_dict *d;
    if (mj_safetensors_load(path, &d) != MJ_OK) return cli_mj_error(cmd, "--input");
    mj_tensor *t = mj_tensor_dict_get(d, name);
    if (!t) {
        char have[512] = "";
        size_t used = 0;
        for (int i = 0; i < mj_tensor_dict_size(d) && used < sizeof have - 1; i++) {
            int n = snprintf(have + used, sizeof have - used, "%s'%s'", i ? ", " : "",
                             mj_tensor_dict_key(d, i));
            if (n < 0) break;
            used += (size_t)n;
        }
        mj_tensor_dict_free(d);
        return cli_error(cmd, CLI_FAIL, "%s has no tensor '%s' (it has %s; choose with --input-name)",
                         path, name, used ? have : "none");
    }
    *x = mj_tensor_retain(t);
    if (file_out)
        *file_out = d;
    else
        mj_tensor_dict_free(d);
    return CLI_OK;
}

int cli_random_input(const char *cmd, int64_t batch, int64_t in_features, uint64_t seed,
                     mj_tensor **x) {
    mj_rng rng;
    mj_rng_seed(&rng, seed);
    int64_t shape[2] = {batch, in_features};
    if (mj_tensor_randn(x, 2, shape, &rng) != MJ_OK) return cli_mj_error(cmd, "input");
    return CLI_OK;
}

int cli_model_input_count(const cli_model *cm) {
    return cm->graph ? mj_graph_input_count(cm->graph) : mj_module_input_count(cm->module);
}

int cli_model_output_count(const cli_model *cm) {
    return cm->graph ? mj_graph_output_count(cm->graph) : mj_module_output_count(cm->module);
}

const char *cli_model_input_name(const cli_model *cm, int i, char *buf, size_t size) {
    if (cm->graph) return mj_graph_input_name(cm->graph, i);
    if (cli_model_input_count(cm) == 1) return "input";
    snprintf(buf, size, "input.%d", i);
    return buf;
}

const char *cli_output_name(int n_out, int j, char *buf, size_t size) {
    if (n_out == 1) return "output";
    snprintf(buf, size, "output.%d", j);
    return buf;
}

/* Seeded randn of input i's type (B = batch), or [batch, in] for a spec. */
static int random_input_i(const char *cmd, const cli_model *cm, int i, int64_t batch, uint64_t seed, mj_tensor **x) {
    if (!cm->graph) return cli_random_input(cmd, batch, cm->in_features, seed, x);
    int rank = mj_graph_input_rank(cm->graph, i);
    int64_t shape[4] = {0};
    for (int d = 0; d < rank && d < 4; d++) {
        int64_t v = mj_graph_input_dim(cm->graph, i, d);
        shape[d] = v == -1 ? batch : v;
    }
    mj_rng rng;
    mj_rng_seed(&rng, seed);
    if (mj_tensor_randn(x, rank, shape, &rng) != MJ_OK) return cli_mj_error(cmd, "input");
    return CLI_OK;
}

int cli_model_inputs(const char *cmd, cli_model *cm, const char *path, const cli_strings *names,
                     int64_t batch, uint64_t seed, mj_tensor **x, mj_tensor_dict **file_out) {
    int n = cli_model_input_count(cm);
    if (names && names->n > 0 && names->n != n)
        return cli_error(cmd, CLI_USAGE, "%s takes %d input%s but --input-name is given %d time%s", cm->name, n,
                         n == 1 ? "" : "s", names->n, names->n == 1 ? "" : "s");
    mj_tensor_dict *file = NULL;
    int rc = CLI_OK;
    int i = 0;
    for (; i < n && rc == CLI_OK; i++) {
        char buf[32];
        const char *name = names && names->n > 0 ? names->v[i] : cli_model_input_name(cm, i, buf, sizeof buf);
        if (path) {
            mj_tensor_dict *d = NULL;
            rc = cli_load_input(cmd, path, name, &x[i], &d);
            if (rc == CLI_OK && !file) file = d;
            else mj_tensor_dict_free(d);
        } else if (cm->exported && !cm->random_inputs && mj_tensor_dict_get(cm->file, name)) {
            x[i] = mj_tensor_retain(mj_tensor_dict_get(cm->file, name)); /* the export's input */
        } else {
            rc = random_input_i(cmd, cm, i, batch, seed + (uint64_t)i * 1000003u, &x[i]);
        }
    }
    if (rc != CLI_OK) {
        for (int k = 0; k < i; k++) {
            mj_tensor_release(x[k]);
            x[k] = NULL;
        }
        mj_tensor_dict_free(file);
        return rc;
    }
    if (file_out) *file_out = file;
    else mj_tensor_dict_free(file);
    return CLI_OK;
}

int cli_forward(const char *cmd, cli_model *cm, cli_mode mode, mj_jit *jit,
                const mj_compile_options *o, const mj_tensor *x, mj_tensor **y) {
    return cli_forward_n(cmd, cm, mode, jit, o, 1, &x, 1, y, NULL);
}

int cli_forward_n(const char *cmd, cli_model *cm, cli_mode mode, mj_jit *jit,
                  const mj_compile_options *o, int n_in, const mj_tensor *const *x, int n_out,
                  mj_tensor **y, cli_compile_info *info) {
    switch (mode) {
    case MODE_EAGER:
        if (!cm->module)
            return cli_error(cmd, CLI_USAGE,
                             "%s is a saved trace: eager mode needs the model's code (use --mode "
                             "traced or compiled)",
                             cm->name);
        if (mj_module_forward_n(cm->module, n_in, x, n_out, y) != MJ_OK) return cli_mj_error(cmd, "eager forward");
        return CLI_OK;
    case MODE_TRACED: {
        int rc = cli_model_trace(cmd, cm);
        if (rc != CLI_OK) return rc;
        if (mj_graph_run_n(cm->graph, n_in, x, n_out, y) != MJ_OK) return cli_mj_error(cmd, "traced forward");
        return CLI_OK;
    }
    case MODE_COMPILED: {
        int rc = cli_model_trace(cmd, cm);
        if (rc != CLI_OK) return rc;
        mj_compiled *c;
        double t0 = cli_cpu_ms();
        if (mj_jit_compile(jit, cm->graph, o, &c) != MJ_OK) return cli_mj_error(cmd, "compiling");
        if (info) {
            info->cpu_ms = cli_cpu_ms() - t0;
            info->stats = *mj_compiled_stats(c);
        }
        mj_status s = mj_compiled_run_n(c, n_in, x, n_out, y);
        mj_compiled_free(c);
        if (s != MJ_OK) return cli_mj_error(cmd, "compiled forward");
        return CLI_OK;
    }
    }
    return CLI_USAGE;
}
