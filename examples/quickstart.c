/* The seed model in C: masks, trace, compile, compare (README's example). */
#include <maskjit.h>
#include <stdio.h>

int main(void) {
    mj_module *model;                          /* linear -> seq.0 -> seq.1, 16x16 */
    mj_model_under_test_new(&model, true);     /* weights 1/2/3, biases 10/20/30 */
    const char *layers[] = {"linear", "seq.0", "seq.1"};
    for (int i = 0; i < 3; i++) {              /* FakeSparsity(eye) on each weight */
        mj_tensor *mask; mj_parametrization *p;
        mj_tensor_eye(&mask, 16);
        mj_fake_sparsity_new(&p, mask);
        mj_register_parametrization(mj_module_find(model, layers[i]), "weight", p);
        mj_tensor_release(mask);
    }
    mj_rng rng; mj_rng_seed(&rng, 0);
    mj_tensor *ones, *x, *y_eager, *y_jit;
    mj_tensor_ones(&ones, 2, (int64_t[]){3, 16});
    mj_tensor_randn(&x, 2, (int64_t[]){5, 16}, &rng);
    mj_graph *g;  mj_trace_module(model, ones, &g);        /* torch.jit.trace */
    mj_jit *jit;  mj_jit_new(&jit);
    mj_compile_options o; mj_compile_options_init(&o);   /* exact, live */
    mj_compiled *c;
    if (mj_jit_compile(jit, g, &o, &c) != MJ_OK) { fprintf(stderr, "%s\n", mj_last_error()); return 1; }
    mj_module_forward(model, x, &y_eager);
    mj_compiled_run(c, x, &y_jit);                       /* traced at batch 3, run at 5 */
    int same = mj_tensor_equal(y_eager, y_jit);
    printf("compiled == eager, bit for bit: %s\n", same ? "yes" : "no");
    mj_compiled_free(c); mj_jit_free(jit); mj_graph_free(g); mj_module_free(model);
    mj_tensor_release(ones); mj_tensor_release(x);
    mj_tensor_release(y_eager); mj_tensor_release(y_jit);
    return same ? 0 : 1;
}
