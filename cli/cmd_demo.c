/* maskjit demo: the seed model end to end — masks, state dict, eager output,
 * trace, compiled output and timings. */
#include <string.h>

#include "cli.h"

/* One call of the model: compiled when set, else eager. */
typedef struct timing_ctx {
    mj_module *module;
    mj_compiled *compiled;
    const mj_tensor *x;
} timing_ctx;

static int time_call(void *p) {
    timing_ctx *t = p;
    mj_tensor *y;
    mj_status s = t->compiled ? mj_compiled_run(t->compiled, t->x, &y) : mj_module_forward(t->module, t->x, &y);
    if (s != MJ_OK) return 1;
    mj_tensor_release(y);
    return 0;
}

static int register_identity_masks(const char *path, mj_module *m, void *ctx) {
    (void)path;
    mj_status *st = ctx;
    if (*st != MJ_OK || mj_linear_out_features(m) == 0) return 0;
    mj_tensor *mask;
    mj_parametrization *p;
    if ((*st = mj_tensor_eye(&mask, mj_linear_out_features(m))) != MJ_OK) return 1;
    *st = mj_fake_sparsity_new(&p, mask);
    mj_tensor_release(mask);
    if (*st == MJ_OK && (*st = mj_register_parametrization(m, "weight", p)) != MJ_OK)
        mj_parametrization_free(p);
    return *st != MJ_OK;
}

int cmd_demo(int argc, char **argv) {
    static const cli_command cmd = {
        "demo", "[options]",
        "The seed's ModelUnderTest (weights 1/2/3, biases 10/20/30) with identity\n"
        "FakeSparsity masks: its tree, state-dict keys, eager output, traced IR,\n"
        "compiled output and eager vs compiled time per forward.", NULL};
    bool no_timing = false;
    const cli_opt opts[] = {
        {"--no-timing", OPT_FLAG, &no_timing, "skip the timing (faster, deterministic output)"},
    };
    int rc;
    if (!cli_parse_args(&cmd, argc, argv, opts, CLI_N_OPTS(opts), NULL, NULL, &rc)) return rc;

    /* a failed step names itself and ends the demo */
#define DEMO_STEP(failed, what)                                                                      \
    do {                                                                                             \
        if (failed) {                                                                                \
            cli_mj_error("demo", what);                                                              \
            goto done;                                                                               \
        }                                                                                            \
    } while (0)
    mj_module *m = NULL;
    mj_tensor_dict *sd = NULL;
    mj_tensor *x = NULL, *y_eager = NULL, *y_traced = NULL, *y_comp = NULL;
    mj_graph *g = NULL;
    mj_jit *jit = NULL;
    mj_compiled *c = NULL;
    mj_status st = MJ_OK;
    rc = CLI_FAIL;
    DEMO_STEP(mj_model_under_test_new(&m, true) != MJ_OK, "building the model");
    mj_module_walk(m, register_identity_masks, &st);
    DEMO_STEP(st != MJ_OK, "registering masks");
    printf("== model (identity FakeSparsity masks on every Linear)\n");
    mj_module_print(stdout, m);
    DEMO_STEP(mj_module_state_dict(m, false, &sd) != MJ_OK, "state dict");
    printf("\n== state dict keys (masks are kept out, as in PyTorch)\n");
    for (int i = 0; i < mj_tensor_dict_size(sd); i++) {
        char shape[64];
        mj_tensor *t = mj_tensor_dict_value(sd, i);
        printf("  %-45s %s\n", mj_tensor_dict_key(sd, i),
               mj_shape_str(shape, sizeof shape, mj_tensor_rank(t), mj_tensor_shape(t)));
    }
    /* A fixed input: x[i][k] = (k - 8 + i) / 8 */
    int64_t shape[2] = {3, 16};
    float data[48];
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 16; k++) data[i * 16 + k] = (float)(k - 8 + i) / 8.0f;
    DEMO_STEP(mj_tensor_from_data(&x, 2, shape, data) != MJ_OK ||
        mj_module_forward(m, x, &y_eager) != MJ_OK, "eager forward");
    printf("\n== eager output for x[i][k] = (k - 8 + i) / 8\n");
    mj_tensor_print(stdout, y_eager, "y");

    int64_t ones_shape[2] = {3, 16};
    mj_tensor *example;
    if (mj_tensor_ones(&example, 2, ones_shape) != MJ_OK) goto done;
    st = mj_trace_module(m, example, &g);
    mj_tensor_release(example);
    DEMO_STEP(st != MJ_OK, "tracing");
    printf("\n== traced IR (traced on ones(3, 16); B is the symbolic batch)\n");
    mj_graph_print(g, stdout);
    DEMO_STEP(mj_graph_run(g, x, &y_traced) != MJ_OK, "traced forward");
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.threads = 1;
    DEMO_STEP(mj_jit_new(&jit) != MJ_OK || mj_jit_compile(jit, g, &o, &c) != MJ_OK ||
        mj_compiled_run(c, x, &y_comp) != MJ_OK, "compiling");
    const mj_compile_stats *cs = mj_compiled_stats(c);
    printf("\n== compiled output (LLVM, host CPU %s, exact mode)\n", mj_jit_cpu_name(jit));
    mj_tensor_print(stdout, y_comp, "y");
    mj_compare ct = mj_tensor_compare(y_traced, y_eager, 0, 0);
    mj_compare cc = mj_tensor_compare(y_comp, y_eager, 0, 0);
    printf("\ntraced   vs eager: max abs diff %g (%s)\n", ct.max_abs,
           ct.bit_identical ? "bit-identical" : "DIFFERENT");
    printf("compiled vs eager: max abs diff %g (%s)\n", cc.max_abs,
           cc.bit_identical ? "bit-identical" : "DIFFERENT");
    printf("compile: %.2f ms (IR %.2f ms, optimise %.2f ms, codegen %.2f ms)%s\n", cs->total_ms, cs->ir_ms,
           cs->optimize_ms, cs->codegen_ms, cs->cache_hit ? " (cache hit)" : "");
    if (!no_timing) {
        timing_ctx eager = {m, NULL, x}, compiled = {m, c, x};
        double te = cli_time_ns(time_call, &eager, 9, 20);
        double tc = cli_time_ns(time_call, &compiled, 9, 20);
        printf("time per forward (median of 9 rounds): eager %.0f ns, compiled %.0f ns (%.1fx)\n", te,
               tc, te / tc);
    }
    rc = ct.bit_identical && cc.bit_identical ? CLI_OK : CLI_FAIL;
done:
#undef DEMO_STEP
    mj_compiled_free(c);
    mj_jit_free(jit);
    mj_graph_free(g);
    mj_tensor_release(x);
    mj_tensor_release(y_eager);
    mj_tensor_release(y_traced);
    mj_tensor_release(y_comp);
    mj_tensor_dict_free(sd);
    mj_module_free(m);
    return rc;
}
