/* maskjit ir / trace / asm: look at and save what the tracer and the JIT make. */
#include <string.h>

#include "cli.h"

static const char MODEL_DETAILS[] =
    "MODEL is a saved trace file or a spec: mut | mut-nobias |\n"
    "mlp:IN,H1,...,OUT[:act=...][:bias=0|1] (see maskjit run --help).\n"
    "The model is traced on ones(3, in_features); the batch dimension stays\n"
    "symbolic (B) in the IR.\n";

typedef struct graph_args {
    const char *weights, *passes;
    bool frozen;
    cli_int seed;
} graph_args;

/* Loads MODEL, traces it, then freezes and/or optimises as asked. */
static int prepare_graph(const char *cmd, const char *model, const graph_args *a, cli_model *cm) {
    int rc = cli_model_load(cmd, model, a->weights, (uint64_t)a->seed.value, cm);
    if (rc != CLI_OK) return rc;
    if ((rc = cli_model_trace(cmd, cm)) != CLI_OK) goto fail;
    if (a->frozen && mj_graph_freeze(cm->graph) != MJ_OK) {
        rc = cli_mj_error(cmd, "--frozen");
        goto fail;
    }
    mj_status s = a->passes ? mj_graph_optimize(cm->graph, a->passes) : MJ_OK;
    if (s != MJ_OK) {
        /* on a loaded (verified) graph, invalid is the pipeline text itself */
        rc = s == MJ_ERR_INVALID ? cli_error(cmd, CLI_USAGE, "--passes: %s", mj_last_error())
                                 : cli_mj_error(cmd, "--passes");
        goto fail;
    }
    return CLI_OK;
fail:
    cli_model_free(cm);
    return rc;
}

int cmd_ir(int argc, char **argv) {
    static const cli_command cmd = {"ir", "MODEL [options]", "Print the traced IR of a model.", NULL};
    graph_args a = {.seed = {0, 0, CLI_MAX_SEED}};
    bool dot = false;
    const cli_opt opts[] = {
        {"--weights", OPT_STRING, &a.weights, "safetensors file with the model's tensors"},
        {"--frozen", OPT_FLAG, &a.frozen, "turn parameters into constants (torch.jit.freeze)"},
        {"--passes", OPT_STRING, &a.passes,
         "run passes: default, or a list of dce,cse,fold,simplify,fuse,fold_bn"},
        {"--dot", OPT_FLAG, &dot, "print Graphviz DOT instead of the text form"},
        {"--seed", OPT_RANGED, &a.seed, "seed of the default init (default 0)"},
    };
    const char *model;
    int rc;
    if (!cli_parse_args(&cmd, argc, argv, opts, CLI_N_OPTS(opts), MODEL_DETAILS, &model, &rc)) return rc;
    cli_model cm;
    if ((rc = prepare_graph("ir", model, &a, &cm)) != CLI_OK) return rc;
    mj_status s = dot ? mj_graph_write_dot(cm.graph, stdout) : mj_graph_print(cm.graph, stdout);
    for (int i = 0; i < mj_graph_warning_count(cm.graph); i++)
        fprintf(stderr, "%s\n", mj_graph_warning(cm.graph, i));
    rc = s == MJ_OK ? CLI_OK : cli_mj_error("ir", "printing");
    cli_model_free(&cm);
    return rc;
}

int cmd_trace(int argc, char **argv) {
    static const cli_command cmd = {
        "trace", "MODEL -o FILE [options]",
        "Trace a model and save the trace (IR + tensors in one safetensors file);\n"
        "`maskjit run FILE` replays it without the model's code.", NULL};
    graph_args a = {.seed = {0, 0, CLI_MAX_SEED}};
    const char *out = NULL;
    const cli_opt opts[] = {
        {"-o", OPT_STRING, &out, "output file"},
        {"--weights", OPT_STRING, &a.weights, "safetensors file with the model's tensors"},
        {"--frozen", OPT_FLAG, &a.frozen, "save parameters as constants"},
        {"--passes", OPT_STRING, &a.passes, "run passes before saving (default or a list)"},
        {"--seed", OPT_RANGED, &a.seed, "seed of the default init (default 0)"},
    };
    const char *model;
    int rc;
    if (!cli_parse_args(&cmd, argc, argv, opts, CLI_N_OPTS(opts), MODEL_DETAILS, &model, &rc)) return rc;
    if (!out) return cli_error("trace", CLI_USAGE, "missing -o FILE");
    cli_model cm;
    if ((rc = prepare_graph("trace", model, &a, &cm)) != CLI_OK) return rc;
    if (mj_graph_save(cm.graph, out) != MJ_OK) {
        rc = cli_mj_error("trace", "saving");
    } else {
        fprintf(stderr, "maskjit trace: wrote %s (%d nodes)\n", out, mj_graph_node_count(cm.graph));
    }
    cli_model_free(&cm);
    return rc;
}

int cmd_asm(int argc, char **argv) {
    static const cli_command cmd = {"asm", "MODEL [options]",
                                    "Print the optimised LLVM IR and the host assembly of a "
                                    "compiled model.", NULL};
    graph_args a = {.seed = {0, 0, CLI_MAX_SEED}};
    bool fast = false, ir_only = false, asm_only = false;
    const cli_opt opts[] = {
        {"--weights", OPT_STRING, &a.weights, "safetensors file with the model's tensors"},
        {"--frozen", OPT_FLAG, &a.frozen, "compile with parameters baked in"},
        {"--fast", OPT_FLAG, &fast, "fast numeric mode (FMA, reassociation)"},
        {"--ir", OPT_FLAG, &ir_only, "only the LLVM IR"},
        {"--asm", OPT_FLAG, &asm_only, "only the assembly"},
        {"--seed", OPT_RANGED, &a.seed, "seed of the default init (default 0)"},
    };
    const char *model;
    int rc;
    if (!cli_parse_args(&cmd, argc, argv, opts, CLI_N_OPTS(opts), MODEL_DETAILS, &model, &rc)) return rc;
    bool frozen = a.frozen;
    a.frozen = false; /* the compiler freezes itself */
    cli_model cm;
    if ((rc = prepare_graph("asm", model, &a, &cm)) != CLI_OK) return rc;
    mj_jit *jit = NULL;
    mj_compiled *c = NULL;
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.frozen = frozen;
    o.numeric = fast ? MJ_NUMERIC_FAST : MJ_NUMERIC_EXACT;
    o.use_cache = false;
    if (mj_jit_new(&jit) != MJ_OK || mj_jit_compile(jit, cm.graph, &o, &c) != MJ_OK) {
        rc = cli_mj_error("asm", "compiling");
        goto done;
    }
    printf("; host CPU: %s\n", mj_jit_cpu_name(jit));
    if (!asm_only) {
        printf("; ---- optimised LLVM IR ----\n");
        if (mj_compiled_dump(c, "ir", stdout) != MJ_OK) rc = cli_mj_error("asm", "LLVM IR");
    }
    if (!ir_only && rc == CLI_OK) {
        printf("; ---- host assembly ----\n");
        if (mj_compiled_dump(c, "asm", stdout) != MJ_OK) rc = cli_mj_error("asm", "assembly");
    }
done:
    mj_compiled_free(c);
    mj_jit_free(jit);
    cli_model_free(&cm);
    return rc;
}
