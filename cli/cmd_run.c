/* maskjit run: one forward call of a model in a chosen mode. */
#include <string.h>

#include "cli.h"

/* The activation names come from maskjit/acts.def, so the help cannot
 * miss one. */
#define MJ_ACT(id, name, torch_class, ir_op) " " name
static const char RUN_DETAILS[] =
    "MODEL is a saved trace file (maskjit trace -o FILE) or a spec:\n"
    "  mut | mut-nobias | mlp:IN,H1,...,OUT[:act=NAME][:bias=0|1]\n"
    "  NAME (default relu):"
#include "maskjit/acts.def"
    "\n"
    "Weights load from plain (linear.weight) or parametrized\n"
    "(linear.parametrizations.weight.original) keys, not both; masks under\n"
    "<mod>.parametrizations.weight.0.mask or <mod>.parametrizations.bias.0.mask are\n"
    "registered as FakeSparsity (a mask key that fits no Linear weight or bias is\n"
    "an error). Other tensors in the file (input, expected, ...) are ignored.\n"
    "Without --weights the seeded default init is used. Without --input: the\n"
    "input an export stores, or, with --batch (or none stored), a seeded randn\n"
    "[batch, in] input. A saved trace runs traced unless --mode says otherwise.\n"
    "A saved trace may have several inputs of rank 1-4 (batch first): --input\n"
    "reads them by their names in the trace (`maskjit ir` shows them), or by the\n"
    "names given with --input-name, once per input in order; random inputs take\n"
    "their shapes from the trace. The output is written as tensor 'output'\n"
    "(several: 'output.0', 'output.1', ...) with --out, or summarised on stdout.\n";
#undef MJ_ACT

int cli_parse_mode(const char *cmd, const char *text, cli_mode *mode) {
    if (strcmp(text, "eager") == 0) *mode = MODE_EAGER;
    else if (strcmp(text, "traced") == 0 || strcmp(text, "interp") == 0) *mode = MODE_TRACED; /* bench's name */
    else if (strcmp(text, "compiled") == 0) *mode = MODE_COMPILED;
    else return cli_error(cmd, CLI_USAGE, "--mode must be eager, traced or compiled, got '%s'", text);
    return CLI_OK;
}

int cmd_run(int argc, char **argv) {
    static const cli_command cmd = {"run", "MODEL [options]",
                                    "Run one forward call and print or save the output.", NULL};
    const char *weights = NULL, *input = NULL, *mode_text = NULL, *out_path = NULL;
    cli_strings input_names = {0};
    bool exact = false, fast = false, frozen = false, show_stats = false;
    /* threads 0: not given (all cores) */
    /* batch -1: not given (3, or the input an export stores) */
    cli_int batch = {-1, 1, CLI_MAX_BATCH}, seed = {0, 0, CLI_MAX_SEED},
            threads = {0, 1, MJ_MAX_THREADS};
    const cli_opt opts[] = {
        {"--weights", OPT_STRING, &weights, "safetensors file with the model's tensors"},
        {"--input", OPT_STRING, &input, "safetensors file holding the input tensor"},
        {"--input-name", OPT_STRINGS, &input_names,
         "name of the input tensor (default: the model's input name, e.g. input); once per input"},
        {"--mode", OPT_STRING, &mode_text, "eager | traced (alias interp: the interpreter replays the trace) | compiled (default eager; traced for a saved trace)"},
        {"--exact", OPT_FLAG, &exact, "compiled: bit-identical to eager (default)"},
        {"--fast", OPT_FLAG, &fast, "compiled: allow FMA and reassociation"},
        {"--frozen", OPT_FLAG, &frozen, "compiled: bake parameters in as constants"},
        {"--threads", OPT_RANGED, &threads, "compiled: threads, 1..256 (default: all cores)"},
        {"--stats", OPT_FLAG, &show_stats, "compiled: print the compile's times on stderr"},
        {"--out", OPT_STRING, &out_path, "write the output as tensor 'output' to this file"},
        {"--batch", OPT_RANGED, &batch,
         "batch of a seeded random input (default 3; an export's stored input unless given)"},
        {"--seed", OPT_RANGED, &seed, "seed of default init and random input (default 0)"},
    };
    const char *model;
    int rc;
    if (!cli_parse_args(&cmd, argc, argv, opts, CLI_N_OPTS(opts), RUN_DETAILS, &model, &rc)) return rc;
    if (exact && fast) return cli_error("run", CLI_USAGE, "--exact and --fast exclude each other");
    cli_mode mode = MODE_EAGER;
    if (mode_text && (rc = cli_parse_mode("run", mode_text, &mode)) != CLI_OK) return rc;
    /* without --mode: eager, or traced for a saved trace; never compiled */
    if ((!mode_text || mode != MODE_COMPILED) && (fast || frozen || exact || show_stats))
        return cli_error("run", CLI_USAGE, "--exact/--fast/--frozen/--stats apply to --mode compiled");

    cli_model cm;
    if ((rc = cli_model_load("run", model, weights, (uint64_t)seed.value, &cm)) != CLI_OK) return rc;
    if (!mode_text) { /* a saved trace has no code to run eagerly: replay it */
        mode_text = cm.module ? "eager" : "traced";
        mode = cm.module ? MODE_EAGER : MODE_TRACED;
    }
    cm.random_inputs = batch.value != -1 && !input;
    if (batch.value == -1) batch.value = 3;
    mj_tensor *x[CLI_MAX_STRINGS] = {0}, *y[CLI_MAX_STRINGS] = {0};
    int n_in = cli_model_input_count(&cm), n_out = cli_model_output_count(&cm);
    mj_jit *jit = NULL;
    if (n_in > CLI_MAX_STRINGS || n_out > CLI_MAX_STRINGS) {
        rc = cli_error("run", CLI_FAIL, "%s has %d inputs and %d outputs; the CLI handles at most %d each", model,
                       n_in, n_out, CLI_MAX_STRINGS);
        n_in = n_out = 0;
        goto done;
    }
    if ((rc = cli_model_inputs("run", &cm, input, &input_names, batch.value, (uint64_t)seed.value + 1, x, NULL)) != CLI_OK)
        goto done;
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.numeric = fast ? MJ_NUMERIC_FAST : MJ_NUMERIC_EXACT;
    o.frozen = frozen;
    o.threads = (int)threads.value; /* 0 or 1..MJ_MAX_THREADS: fits an int */
    if (mode == MODE_COMPILED && mj_jit_new(&jit) != MJ_OK) {
        rc = cli_mj_error("run", "starting the JIT");
        goto done;
    }
    cli_compile_info ci;
    if ((rc = cli_forward_n("run", &cm, mode, jit, &o, n_in, (const mj_tensor *const *)x, n_out, y, &ci)) != CLI_OK)
        goto done;
    if (show_stats) {
        const mj_compile_stats *cs = &ci.stats;
        fprintf(stderr, "compile: %.1f ms (IR %.1f ms, optimise %.1f ms, codegen %.1f ms)%s, CPU time %.1f ms\n",
                cs->total_ms, cs->ir_ms, cs->optimize_ms, cs->codegen_ms, cs->cache_hit ? " (cache hit)" : "",
                ci.cpu_ms);
        if (cs->warning[0]) fprintf(stderr, "compile warning: %s\n", cs->warning);
    }
    if (out_path) {
        mj_tensor_dict *d = NULL;
        mj_status s = mj_tensor_dict_new(&d);
        for (int j = 0; j < n_out && s == MJ_OK; j++) {
            char nb[32];
            s = mj_tensor_dict_set(d, cli_output_name(n_out, j, nb, sizeof nb), y[j]);
        }
        if (s != MJ_OK || mj_tensor_dict_set_meta(d, "maskjit.mode", mode_text) != MJ_OK ||
            mj_safetensors_save(out_path, d) != MJ_OK) {
            rc = cli_mj_error("run", "--out");
        }
        mj_tensor_dict_free(d);
    } else {
        for (int j = 0; j < n_out; j++) {
            char nb[32];
            mj_tensor_print(stdout, y[j], cli_output_name(n_out, j, nb, sizeof nb));
        }
    }
done:
    for (int i = 0; i < n_in; i++) mj_tensor_release(x[i]);
    for (int j = 0; j < n_out; j++) mj_tensor_release(y[j]);
    cli_model_free(&cm);
    mj_jit_free(jit);
    return rc;
}
