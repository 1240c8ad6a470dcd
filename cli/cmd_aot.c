/* maskjit aot: compile a model ahead of time into an object file and a C
 * header that a program links without LLVM or maskjit (jit/aot.c). */
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "jit/aot.h"

static const char AOT_DETAILS[] =
    "MODEL is a saved trace file (maskjit trace -o FILE) or a spec (see maskjit run --help).\n"
    "Writes DIR/NAME.o (position independent; needs only libc and libm) and\n"
    "DIR/NAME.h, which declares\n"
    "  int NAME_run(int64_t batch, const float *const inputs[], float *const outputs[]);\n"
    "  const char *NAME_strerror(int code);\n"
    "and the input/output shapes. Link: cc app.c DIR/NAME.o -lm.\n"
    "--frozen: the weights become read-only data in the object. Without it (live)\n"
    "the header also declares NAME_bind(name, data) and NAME_run_with(params, ...):\n"
    "the weights, by their state-dict names, are read at every call.\n"
    "--target-cpu: host (default), x86-64, x86-64-v2, x86-64-v3 (AVX2) or x86-64-v4\n"
    "(AVX-512). NAME_run returns NAME_ERR_CPU on a CPU without the target's features.\n"
    "The same input and options give the same bytes. See docs/aot.md.\n";

int cmd_aot(int argc, char **argv) {
    static const cli_command cmd = {"aot", "MODEL -o DIR [options]",
                                    "Compile a model ahead of time into DIR/NAME.o and DIR/NAME.h.", NULL};
    const char *out = NULL, *name = "model", *weights = NULL, *cpu = NULL, *features = NULL;
    bool exact = false, fast = false, frozen = false, shared = false;
    int64_t seed = 0;
    const cli_opt opts[] = {
        {"-o", OPT_STRING, &out, "output directory (created if missing)"},
        {"--name", OPT_STRING, &name, "C prefix of the symbols and file names (default model)"},
        {"--exact", OPT_FLAG, &exact, "bit-identical to eager (default)"},
        {"--fast", OPT_FLAG, &fast, "allow FMA and reassociation"},
        {"--frozen", OPT_FLAG, &frozen, "bake the parameters in as read-only data (else live)"},
        {"--target-cpu", OPT_STRING, &cpu, "host | x86-64 | x86-64-v2 | x86-64-v3 | x86-64-v4"},
        {"--features", OPT_STRING, &features, "extra LLVM features, e.g. +avx512vnni,-fma"},
        {"--shared", OPT_FLAG, &shared, "also link DIR/NAME.so (runs cc -shared)"},
        {"--weights", OPT_STRING, &weights, "safetensors file with the model's tensors"},
        {"--seed", OPT_INT, &seed, "seed of the default init (default 0)"},
    };
    const char *model;
    int rc;
    if (!cli_parse_args(&cmd, argc, argv, opts, CLI_N_OPTS(opts), AOT_DETAILS, &model, &rc)) return rc;
    if (!out) return cli_error("aot", CLI_USAGE, "missing -o DIR (the output directory)");
    struct stat st; /* before the compile: a file there is the caller's mistake, and is left alone */
    if (stat(out, &st) == 0 && !S_ISDIR(st.st_mode))
        return cli_error("aot", CLI_USAGE, "-o %s: exists and is not a directory (-o names the output directory)",
                         out);
    if (exact && fast) return cli_error("aot", CLI_USAGE, "--exact and --fast exclude each other");
    mj_aot_options o;
    mj_aot_options_init(&o);
    o.name = name;
    o.numeric = fast ? MJ_NUMERIC_FAST : MJ_NUMERIC_EXACT;
    o.frozen = frozen;
    o.target_cpu = cpu;
    o.features = features;
    o.shared = shared;
    /* the file name, not its path: the header's bytes must not depend on where the build is */
    const char *slash = strrchr(model, '/');
    o.description = slash ? slash + 1 : model;
    mj_status checked = mj_aot_options_check(&o); /* the arguments' own errors: before the model's */
    if (checked != MJ_OK)
        return cli_error("aot", checked == MJ_ERR_BACKEND ? CLI_FAIL : CLI_USAGE, "%s",
                         strncmp(mj_last_error(), "aot: ", 5) ? mj_last_error() : mj_last_error() + 5);
    cli_model cm;
    if ((rc = cli_model_load("aot", model, weights, (uint64_t)seed, &cm)) != CLI_OK) return rc;
    if ((rc = cli_model_trace("aot", &cm)) == CLI_OK) {
        if (mj_aot_compile(cm.graph, &o, out) != MJ_OK) rc = cli_mj_error("aot", model);
        else printf("maskjit aot: wrote %s/%s.o and %s/%s.h%s\n", out, name, out, name, shared ? " (and .so)" : "");
    }
    cli_model_free(&cm);
    return rc;
}
