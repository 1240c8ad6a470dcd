/* General graphs: several inputs and outputs of any rank, and the shape
 * ops of attention (batched matmul, permute, transpose(d0, d1), reshape
 * with B anywhere, slice/chunk/split, cat). Every model runs eagerly, is
 * traced from a C user module, and is replayed by the interpreter and by
 * compiled code (exact and fast, live and frozen, one and two threads) at
 * batches 1, 3 and 17 (and 8 with two threads, which splits columns);
 * exact mode and the interpreter must equal eager bit for bit, fast mode
 * within float32 tolerances. The eager kernels themselves are checked
 * against naive loops written here. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/wait.h>
#include <string.h>
#include <unistd.h>

#include "../ir/ir.h"
#include "maskjit.h"
#include "test_util.h"

MJT_JIT_FIXTURE

TestSuite(graphs_io, .init = setup, .fini = teardown, .timeout = 600);

#define MAX_IO 8

/* ---- helpers ---------------------------------------------------------------- */

static mj_tensor *randn(mj_rng *rng, int rank, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    int64_t shape[4] = {d0, d1, d2, d3};
    mj_tensor *t;
    OK(mj_tensor_randn(&t, rank, shape, rng));
    return t;
}

/* A Linear whose weight is masked by FakeSparsity with the given density. */
static mj_module *masked_linear(int64_t in, int64_t out, bool bias, double density, mj_rng *rng) {
    mj_module *l;
    OK(mj_linear_new(&l, in, out, bias, rng));
    if (density < 1.0) {
        int64_t shape[2] = {out, in};
        mj_tensor *mask;
        OK(mj_tensor_zeros(&mask, 2, shape));
        float *md = mj_tensor_data_mut(mask);
        for (int64_t i = 0; i < out * in; i++) md[i] = mj_rng_uniform(rng) < density ? 1.0f : 0.0f;
        mj_parametrization *p;
        OK(mj_fake_sparsity_new(&p, mask));
        OK(mj_register_parametrization(l, "weight", p));
        mj_tensor_release(mask);
    }
    return l;
}

static mj_tensor *fwd(mj_module *m, const char *child, const mj_tensor *x) {
    mj_tensor *y = NULL;
    mj_module *c = mj_module_child(m, child);
    cr_assert(c, "no child %s", child);
    OK(mj_module_forward(c, x, &y));
    return y;
}

/* Inputs of a graph at a batch: randn of each input type. */
static void graph_inputs(const mj_graph *g, int64_t batch, mj_rng *rng, mj_tensor **x) {
    for (int i = 0; i < mj_graph_input_count(g); i++) {
        int rank = mj_graph_input_rank(g, i);
        int64_t shape[4];
        for (int d = 0; d < rank; d++) {
            int64_t v = mj_graph_input_dim(g, i, d);
            shape[d] = v == -1 ? batch : v;
        }
        OK(mj_tensor_randn(&x[i], rank, shape, rng));
    }
}

static void release_all(mj_tensor **t, int n) {
    for (int i = 0; i < n; i++) {
        mj_tensor_release(t[i]);
        t[i] = NULL;
    }
}

static void expect_same(const mj_tensor *got, const mj_tensor *want, bool exact, const char *what, int j,
                        int64_t batch) {
    mj_compare c = mj_tensor_compare(got, want, 1e-5, 1e-4);
    char msg[300];
    mj_compare_describe(&c, got, want, msg, sizeof msg);
    if (exact)
        cr_assert(c.bit_identical, "%s, output %d, batch %lld: not bit-identical to eager: %s", what, j,
                  (long long)batch, msg);
    else
        cr_assert(c.same_shape && c.close, "%s, output %d, batch %lld: %s", what, j, (long long)batch, msg);
}

typedef struct variant {
    const char *name;
    mj_numeric_mode numeric;
    bool frozen;
    int threads;
} variant;

static const variant variants[] = {
    {"exact live", MJ_NUMERIC_EXACT, false, 1},  {"exact frozen", MJ_NUMERIC_EXACT, true, 1},
    {"fast live", MJ_NUMERIC_FAST, false, 1},    {"fast frozen", MJ_NUMERIC_FAST, true, 1},
    {"exact live 2 threads", MJ_NUMERIC_EXACT, false, 2},
    {"exact frozen 2 threads", MJ_NUMERIC_EXACT, true, 2},
};
#define N_VARIANTS ((int)(sizeof variants / sizeof variants[0]))

static mj_compiled *compile(const mj_graph *g, const variant *v) {
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.numeric = v->numeric;
    o.frozen = v->frozen;
    o.threads = v->threads;
    mj_compiled *c = NULL;
    mj_status s = mj_jit_compile(jit, g, &o, &c);
    cr_assert_eq(s, MJ_OK, "compiling (%s): %s", v->name, mj_last_error());
    return c;
}

/* Traces m on examples, then at batches 1, 3, 8, 17 runs eager, the
 * interpreter and every compiled variant on the same random inputs. Returns
 * the graph (caller frees) for further checks. */
static mj_graph *check_everywhere(mj_module *m, int n_in, mj_tensor *const *examples, uint64_t seed) {
    mj_graph *g = NULL;
    OK(mj_trace_module_n(m, n_in, (const mj_tensor *const *)examples, NULL, &g));
    int n_out = mj_graph_output_count(g);
    cr_assert_eq(mj_graph_input_count(g), n_in);
    cr_assert_eq(n_out, mj_module_output_count(m));
    mj_compiled *c[N_VARIANTS];
    for (int v = 0; v < N_VARIANTS; v++) c[v] = compile(g, &variants[v]);
    static const int64_t batches[] = {1, 3, 8, 17};
    for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; bi++) {
        int64_t batch = batches[bi];
        mj_rng rng = mjt_rng(seed * 1000 + (uint64_t)batch);
        mj_tensor *x[MAX_IO] = {0}, *eager[MAX_IO] = {0}, *got[MAX_IO] = {0};
        graph_inputs(g, batch, &rng, x);
        OK(mj_module_forward_n(m, n_in, (const mj_tensor *const *)x, n_out, eager));
        OK(mj_graph_run_n(g, n_in, (const mj_tensor *const *)x, n_out, got));
        for (int j = 0; j < n_out; j++) expect_same(got[j], eager[j], true, "interpreter", j, batch);
        release_all(got, n_out);
        for (int v = 0; v < N_VARIANTS; v++) {
            if (variants[v].threads > 1 && batch != 8 && batch != 17) continue;
            OK(mj_compiled_run_n(c[v], n_in, (const mj_tensor *const *)x, n_out, got));
            for (int j = 0; j < n_out; j++)
                expect_same(got[j], eager[j], variants[v].numeric == MJ_NUMERIC_EXACT, variants[v].name, j, batch);
            release_all(got, n_out);
        }
        release_all(x, n_in);
        release_all(eager, n_out);
    }
    for (int v = 0; v < N_VARIANTS; v++) mj_compiled_free(c[v]);
    return g;
}

/* Does the frozen compile of g use the sparse kernel (a function named
 * "...sparse<N>" in the optimised module)? */
static bool frozen_uses_sparse(const mj_graph *g) {
    variant v = {"exact frozen", MJ_NUMERIC_EXACT, true, 1};
    mj_compiled *c = compile(g, &v);
    bool found = mjt_ir_has(c, ".sparse");
    mj_compiled_free(c);
    return found;
}

/* ---- two inputs, two outputs ---------------------------------------------------
 * a[B,512] -> relu(big(a)) -> out(.) + small(b) = y0[B,16]
 * b[B,24]  -> sigmoid(side(b)) = y1[B,8]
 * big is a 512x512 Linear masked to 30%: frozen code runs it sparse; live
 * code splits its columns between two threads at batch 8. */

static mj_status two_io_forward(mj_module *self, int n_in, const mj_tensor *const *x, int n_out, mj_tensor **y) {
    cr_assert_eq(n_in, 2);
    cr_assert_eq(n_out, 2);
    mj_tensor *h = fwd(self, "big", x[0]), *r, *o, *s, *t;
    OK(mj_relu(&r, h));
    o = fwd(self, "out", r);
    s = fwd(self, "small", x[1]);
    OK(mj_add(&y[0], o, s));
    t = fwd(self, "side", x[1]);
    OK(mj_sigmoid(&y[1], t));
    mj_tensor *tmp[] = {h, r, o, s, t};
    release_all(tmp, 5);
    return MJ_OK;
}

static mj_module *two_io_model(mj_rng *rng) {
    mj_module *m;
    OK(mj_module_new_n(&m, "TwoInTwoOut", 2, 2, two_io_forward, NULL, NULL));
    OK(mj_module_add_child(m, "big", masked_linear(512, 512, true, 0.3, rng)));
    OK(mj_module_add_child(m, "out", masked_linear(512, 16, true, 0.5, rng)));
    OK(mj_module_add_child(m, "small", masked_linear(24, 16, false, 1.0, rng)));
    OK(mj_module_add_child(m, "side", masked_linear(24, 8, true, 0.5, rng)));
    return m;
}

Test(graphs_io, two_inputs_two_outputs_every_mode) {
    mj_rng rng = mjt_rng(1);
    mj_module *m = two_io_model(&rng);
    mj_tensor *ex[2] = {randn(&rng, 2, 3, 512, 0, 0), randn(&rng, 2, 3, 24, 0, 0)};
    mj_graph *g = check_everywhere(m, 2, ex, 1);
    cr_assert_str_eq(mj_graph_input_name(g, 0), "input.0");
    cr_assert_str_eq(mj_graph_input_name(g, 1), "input.1");
    cr_assert(frozen_uses_sparse(g), "the masked 512x512 layer should run on the sparse kernel when frozen");
    {   /* check_inputs: two sets of two inputs */
        mj_tensor *sets[4] = {randn(&rng, 2, 2, 512, 0, 0), randn(&rng, 2, 2, 24, 0, 0),
                              randn(&rng, 2, 6, 512, 0, 0), randn(&rng, 2, 6, 24, 0, 0)};
        mj_check_result r[2];
        OK(mj_graph_check_n(g, m, 2, 2, (const mj_tensor *const *)sets, r));
        cr_assert(r[0].bit_identical && r[1].bit_identical);
        FAILS(mj_graph_check_n(g, m, 1, 1, (const mj_tensor *const *)sets, r), MJ_ERR_INVALID,
              "called with 1 inputs per set");
        mj_module *other = two_io_model(&rng); /* same shapes, other weights */
        FAILS(mj_graph_check_n(g, other, 2, 2, (const mj_tensor *const *)sets, r), MJ_ERR_MISMATCH,
              "input set 0: the traced graph is not bit-identical");
        cr_assert(!r[1].bit_identical && r[1].max_abs > 0);
        mj_module_free(other);
        release_all(sets, 4);
    }

    /* the text form and a saved trace keep both inputs and outputs */
    char *text = mj_graph_to_string(g);
    cr_assert(text);
    cr_assert(strstr(text, "return %"), "%s", text);
    mj_graph *back = NULL;
    OK(mj_graph_parse(text, &back));
    char *text2 = mj_graph_to_string(back);
    cr_assert_str_eq(text, text2);
    free(text2);
    mj_graph_free(back);
    free(text);
    char path[] = "/tmp/mj_graphs_io_XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    OK(mj_graph_save(g, path));
    OK(mj_graph_load(path, &back));
    unlink(path);
    cr_assert_eq(mj_graph_input_count(back), 2);
    cr_assert_eq(mj_graph_output_count(back), 2);
    mj_tensor *x[2] = {randn(&rng, 2, 5, 512, 0, 0), randn(&rng, 2, 5, 24, 0, 0)}, *want[2], *got[2];
    OK(mj_module_forward_n(m, 2, (const mj_tensor *const *)x, 2, want));
    mj_compiled *c = compile(back, &variants[0]);
    OK(mj_compiled_run_n(c, 2, (const mj_tensor *const *)x, 2, got));
    for (int j = 0; j < 2; j++) expect_same(got[j], want[j], true, "loaded trace", j, 5);
    release_all(got, 2);
    release_all(want, 2);

    /* live mode sees a changed weight in the next call */
    mj_tensor *orig = mj_module_original(mj_module_child(m, "big"), "weight");
    mj_tensor_data_mut(orig)[7] += 1.0f;
    OK(mj_module_forward_n(m, 2, (const mj_tensor *const *)x, 2, want));
    OK(mj_compiled_run_n(c, 2, (const mj_tensor *const *)x, 2, got));
    for (int j = 0; j < 2; j++) expect_same(got[j], want[j], true, "live after a weight change", j, 5);
    release_all(got, 2);
    release_all(want, 2);
    mj_compiled_free(c);
    mj_graph_free(back);
    release_all(x, 2);
    release_all(ex, 2);
    mjt_free_traced(g, m);
}

Test(graphs_io, run_n_argument_errors) {
    mj_rng rng = mjt_rng(2);
    mj_module *m = two_io_model(&rng);
    mj_tensor *ex[2] = {randn(&rng, 2, 3, 512, 0, 0), randn(&rng, 2, 3, 24, 0, 0)};
    mj_graph *g = NULL;
    OK(mj_trace_module_n(m, 2, (const mj_tensor *const *)ex, NULL, &g));
    mj_compiled *c = compile(g, &variants[0]);
    cr_assert_eq(mj_compiled_input_count(c), 2);
    cr_assert_eq(mj_compiled_output_count(c), 2);
    mj_tensor *y[2] = {0}, *y1 = NULL;
    FAILS(mj_compiled_run(c, ex[0], &y1), MJ_ERR_INVALID, "2 inputs and 2 outputs");
    FAILS(mj_compiled_run_n(c, 1, (const mj_tensor *const *)ex, 2, y), MJ_ERR_INVALID,
          "takes 2 inputs and gives 2 outputs, called with 1 and 2");
    mj_tensor *bad[2] = {ex[0], randn(&rng, 2, 4, 24, 0, 0)};
    FAILS(mj_compiled_run_n(c, 2, (const mj_tensor *const *)bad, 2, y), MJ_ERR_SHAPE, "share the batch");
    cr_assert_null(y[0]);
    mj_tensor_release(bad[1]);
    bad[1] = randn(&rng, 2, 3, 25, 0, 0);
    FAILS(mj_compiled_run_n(c, 2, (const mj_tensor *const *)bad, 2, y), MJ_ERR_SHAPE,
          "input 1 has shape [3, 25] but the graph takes f32[B,24]");
    mj_tensor_release(bad[1]);
    /* raw: overlapping outputs */
    float *buf = calloc(3 * 16 + 3 * 8, sizeof *buf);
    const float *xs[2] = {mj_tensor_data(ex[0]), mj_tensor_data(ex[1])};
    float *ys[2] = {buf, buf + 8};
    int64_t yn[2] = {3 * 16, 3 * 8};
    FAILS(mj_compiled_run_raw_n(c, 2, xs, 3, 2, ys, yn), MJ_ERR_INVALID, "outputs 0 and 1 overlap");
    ys[1] = buf + 3 * 16;
    yn[1] = 3 * 8 - 1;
    FAILS(mj_compiled_run_raw_n(c, 2, xs, 3, 2, ys, yn), MJ_ERR_SHAPE, "y[1] has room for 23 floats");
    yn[1] = 3 * 8;
    OK(mj_compiled_run_raw_n(c, 2, xs, 3, 2, ys, yn));
    free(buf);
    /* the module and the interpreter check counts too */
    FAILS(mj_module_forward(m, ex[0], &y1), MJ_ERR_INVALID, "mj_module_forward_n");
    FAILS(mj_graph_run(g, ex[0], &y1), MJ_ERR_INVALID, "2 inputs");
    FAILS(mj_trace_module(m, ex[0], &g), MJ_ERR_INVALID, "takes 2 inputs, got 1 examples");
    mj_graph *named = NULL;
    FAILS(mj_trace_module_n(m, 2, (const mj_tensor *const *)ex, (const char *const[]){"q", "q"}, &named),
          MJ_ERR_KEY, "inputs 0 and 1 are both named \"q\"");
    FAILS(mj_trace_module_n(m, 2, (const mj_tensor *const[]){ex[0], ex[0]}, NULL, &named), MJ_ERR_INVALID,
          "inputs 0 and 1 are the same tensor");
    cr_assert_null(named);
    OK(mj_trace_module_n(m, 2, (const mj_tensor *const *)ex, (const char *const[]){"tokens", NULL}, &named));
    cr_assert_str_eq(mj_graph_input_name(named, 0), "tokens");
    cr_assert_str_eq(mj_graph_input_name(named, 1), "input.1");
    mj_graph_free(named);
    mj_compiled_free(c);
    release_all(ex, 2);
    mjt_free_traced(g, m);
}

/* Graph-level corner cases through the compiler: an output that is an
 * input, the same value returned twice, an output that is a prologue
 * value, and inputs of rank 1, 3 and 4. */
Test(graphs_io, compiled_outputs_alias_inputs_and_each_other) {
    static const char text[] =
        "maskjit-ir 1\n"
        "%0 = input \"a\" : f32[B,2,3,4]\n"
        "%1 = input \"s\" : f32[B]\n"
        "%2 = input \"t\" : f32[B,5,4]\n"
        "%3 = const \"w\" : f32[2,4] = [1, 2, 3, 4, 5, 6, 7, 8]\n"
        "%4 = linear %2, %3 : f32[B,5,2]\n"
        "%5 = relu %4 : f32[B,5,2]\n"
        "return %5, %1, %5, %3, %0\n";
    mj_graph *g = NULL;
    OK(mj_graph_parse(text, &g));
    mj_rng rng = mjt_rng(3);
    for (int v = 0; v < N_VARIANTS; v++) {
        mj_compiled *c = compile(g, &variants[v]);
        for (int64_t batch = 1; batch <= 17; batch += 8) {
            mj_tensor *x[3] = {0}, *want[5] = {0}, *got[5] = {0};
            graph_inputs(g, batch, &rng, x);
            OK(mj_graph_run_n(g, 3, (const mj_tensor *const *)x, 5, want));
            OK(mj_compiled_run_n(c, 3, (const mj_tensor *const *)x, 5, got));
            for (int j = 0; j < 5; j++)
                expect_same(got[j], want[j], variants[v].numeric == MJ_NUMERIC_EXACT, variants[v].name, j, batch);
            release_all(x, 3);
            release_all(want, 5);
            release_all(got, 5);
        }
        mj_compiled_free(c);
    }
    mj_graph_free(g);
}

/* ---- the CLI -------------------------------------------------------------------- */


/* `maskjit ARGS` with stderr joined to stdout (test_util.h) */
#define run_cli(out, ...) mjt_maskjit(out, true, __VA_ARGS__)

static void save_tensors(const char *path, int n, const char *const *names, mj_tensor *const *t) {
    mj_tensor_dict *d;
    OK(mj_tensor_dict_new(&d));
    for (int i = 0; i < n; i++) OK(mj_tensor_dict_set(d, names[i], t[i]));
    OK(mj_safetensors_save(path, d));
    mj_tensor_dict_free(d);
}

Test(graphs_io, cli_runs_two_input_two_output_traces, .timeout = 120) {
    mj_rng rng = mjt_rng(5);
    mj_module *m = two_io_model(&rng);
    mj_tensor *ex[2] = {randn(&rng, 2, 3, 512, 0, 0), randn(&rng, 2, 3, 24, 0, 0)};
    mj_graph *g = NULL;
    OK(mj_trace_module_n(m, 2, (const mj_tensor *const *)ex, NULL, &g));
    char trace[128], in[128], in2[128], out[128];
    snprintf(trace, sizeof trace, "/tmp/mj-gio-%d-trace.safetensors", (int)getpid());
    snprintf(in, sizeof in, "/tmp/mj-gio-%d-in.safetensors", (int)getpid());
    snprintf(in2, sizeof in2, "/tmp/mj-gio-%d-in2.safetensors", (int)getpid());
    snprintf(out, sizeof out, "/tmp/mj-gio-%d-out.safetensors", (int)getpid());
    OK(mj_graph_save(g, trace));
    mj_tensor *x[2] = {randn(&rng, 2, 4, 512, 0, 0), randn(&rng, 2, 4, 24, 0, 0)}, *want[2];
    OK(mj_module_forward_n(m, 2, (const mj_tensor *const *)x, 2, want));
    save_tensors(in, 2, (const char *const[]){"input.0", "input.1"}, x);
    save_tensors(in2, 2, (const char *const[]){"a", "b"}, x);
    const char *modes[] = {"--mode traced", "--mode compiled", "--mode compiled --frozen",
                           "--mode compiled --threads 2"};
    for (size_t k = 0; k < sizeof modes / sizeof modes[0]; k++) {
        for (int named = 0; named < 2; named++) {
            char *text = NULL;
            int rc = run_cli(&text, "run %s --input %s %s %s --out %s", trace, named ? in2 : in,
                             named ? "--input-name a --input-name b" : "", modes[k], out);
            cr_assert_eq(rc, 0, "%s: %s", modes[k], text);
            free(text);
            for (int j = 0; j < 2; j++) {
                char key[32];
                snprintf(key, sizeof key, "output.%d", j);
                mj_tensor *y = mjt_load_tensor(out, key);
                expect_same(y, want[j], true, modes[k], j, 4);
                mj_tensor_release(y);
            }
        }
    }
    char *text = NULL;
    cr_assert_eq(run_cli(&text, "run %s --input %s --input-name a", trace, in2), 2);
    cr_assert(strstr(text, "takes 2 inputs but --input-name is given 1 time"), "%s", text);
    free(text);
    cr_assert_eq(run_cli(&text, "run %s --mode compiled --batch 5", trace), 0, "random inputs");
    cr_assert(strstr(text, "output.0") && strstr(text, "output.1"), "%s", text);
    free(text);
    cr_assert_eq(run_cli(&text, "check %s --input %s --inputs 2", trace, in), 0);
    cr_assert(strstr(text, "PASS"), "%s", text);
    free(text);
    cr_assert_eq(run_cli(&text, "ir %s", trace), 0);
    cr_assert(strstr(text, "%0 = input \"input.0\"") && strstr(text, "input \"input.1\""), "%s", text);
    free(text);
    cr_assert_eq(run_cli(&text, "asm %s --ir", trace), 0);
    free(text);
    cr_assert_eq(run_cli(&text, "trace %s -o %s", trace, out), 0, "re-saving a trace");
    free(text);
    unlink(trace);
    unlink(in);
    unlink(in2);
    unlink(out);
    release_all(x, 2);
    release_all(want, 2);
    release_all(ex, 2);
    mjt_free_traced(g, m);
}

/* A token-wise MLP on [B, seq, d]: the CLI takes rank-3 inputs. */
static mj_status tokens_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    mj_tensor *h = fwd(self, "fc1", x), *r;
    OK(mj_gelu(&r, h));
    *y = fwd(self, "fc2", r);
    MJT_RELEASE(h, r);
    return MJ_OK;
}

Test(graphs_io, token_mlp_rank3_every_mode_and_cli, .timeout = 120) {
    mj_rng rng = mjt_rng(6);
    mj_module *m;
    OK(mj_module_new(&m, "TokenMLP", tokens_forward, NULL, NULL));
    OK(mj_module_add_child(m, "fc1", masked_linear(32, 96, true, 0.4, &rng)));
    OK(mj_module_add_child(m, "fc2", masked_linear(96, 32, true, 0.4, &rng)));
    mj_tensor *ex = randn(&rng, 3, 2, 7, 32, 0);
    mj_graph *g = check_everywhere(m, 1, &ex, 6);
    cr_assert_eq(mj_graph_input_rank(g, 0), 3);
    char trace[128], in[128], out[128];
    snprintf(trace, sizeof trace, "/tmp/mj-gio-%d-tok.safetensors", (int)getpid());
    snprintf(in, sizeof in, "/tmp/mj-gio-%d-tokin.safetensors", (int)getpid());
    snprintf(out, sizeof out, "/tmp/mj-gio-%d-tokout.safetensors", (int)getpid());
    OK(mj_graph_save(g, trace));
    mj_tensor *x = randn(&rng, 3, 5, 7, 32, 0), *want;
    OK(mj_module_forward(m, x, &want));
    save_tensors(in, 1, (const char *const[]){"input"}, &x);
    char *text = NULL;
    cr_assert_eq(run_cli(&text, "run %s --input %s --mode compiled --out %s", trace, in, out), 0, "%s", text);
    free(text);
    mj_tensor *y = mjt_load_tensor(out, "output");
    expect_same(y, want, true, "cli rank 3", 0, 5);
    mj_tensor_release(y);
    cr_assert_eq(run_cli(&text, "check %s --inputs 2", trace), 0, "%s", text);
    free(text);
    unlink(trace);
    unlink(in);
    unlink(out);
    MJT_RELEASE(x, want, ex);
    mjt_free_traced(g, m);
}

/* ---- eager shape kernels against naive loops --------------------------------------- */

/* flat index of idx in a contiguous shape */
static int64_t flat(int rank, const int64_t *shape, const int64_t *idx) {
    int64_t f = 0;
    for (int d = 0; d < rank; d++) f = f * shape[d] + idx[d];
    return f;
}

/* next multi-index in row-major order; false after the last */
static bool next_index(int rank, const int64_t *shape, int64_t *idx) {
    for (int d = rank - 1; d >= 0; d--) {
        if (++idx[d] < shape[d]) return true;
        idx[d] = 0;
    }
    return false;
}

static void check_matmul_naive(mj_rng *rng, int ra, const int64_t *sa, int rb, const int64_t *sb) {
    mj_tensor *a, *b, *y;
    OK(mj_tensor_randn(&a, ra, sa, rng));
    OK(mj_tensor_randn(&b, rb, sb, rng));
    OK(mj_matmul(&y, a, b));
    int ry = mj_tensor_rank(y);
    const int64_t *sy = mj_tensor_shape(y);
    int64_t M = sa[ra - 2], K = sa[ra - 1], N = sb[rb - 1];
    cr_assert_eq(sy[ry - 2], M);
    cr_assert_eq(sy[ry - 1], N);
    int64_t idx[4] = {0};
    do {
        /* batch index of a and b: right-aligned, 0 where their dim is 1 */
        int64_t ia[4] = {0}, ib[4] = {0};
        for (int d = 0; d < ra - 2; d++) ia[d] = sa[d] == 1 ? 0 : idx[d + (ry - ra)];
        for (int d = 0; d < rb - 2; d++) ib[d] = sb[d] == 1 ? 0 : idx[d + (ry - rb)];
        float acc = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            ia[ra - 2] = idx[ry - 2];
            ia[ra - 1] = k;
            ib[rb - 2] = k;
            ib[rb - 1] = idx[ry - 1];
            acc = fmaf(mj_tensor_data(a)[flat(ra, sa, ia)], mj_tensor_data(b)[flat(rb, sb, ib)], acc);
        }
        float got = mj_tensor_data(y)[flat(ry, sy, idx)];
        cr_assert(memcmp(&acc, &got, 4) == 0, "matmul element differs: %g vs %g", (double)got, (double)acc);
    } while (next_index(ry, sy, idx));
    MJT_RELEASE(a, b, y);
}

Test(graphs_io, eager_shape_ops_match_naive_loops) {
    mj_rng rng = mjt_rng(7);
    check_matmul_naive(&rng, 4, (int64_t[]){2, 3, 4, 5}, 4, (int64_t[]){2, 3, 5, 6});
    check_matmul_naive(&rng, 4, (int64_t[]){2, 3, 4, 5}, 3, (int64_t[]){3, 5, 2});
    check_matmul_naive(&rng, 3, (int64_t[]){3, 4, 5}, 2, (int64_t[]){5, 7});
    check_matmul_naive(&rng, 2, (int64_t[]){4, 5}, 4, (int64_t[]){2, 1, 5, 3});
    check_matmul_naive(&rng, 4, (int64_t[]){2, 1, 4, 5}, 3, (int64_t[]){3, 5, 2});
    check_matmul_naive(&rng, 2, (int64_t[]){3, 0}, 2, (int64_t[]){0, 2}); /* empty sum: +0 */

    mj_tensor *x = randn(&rng, 4, 2, 3, 4, 5), *y;
    const int64_t *sx = mj_tensor_shape(x);
    /* permute: y[i0,i1,i2,i3] = x[i at perm] */
    int perm[4] = {2, 0, 3, 1};
    OK(mj_permute(&y, x, 4, perm));
    int64_t idx[4] = {0};
    do {
        int64_t src[4];
        for (int d = 0; d < 4; d++) src[perm[d]] = idx[d];
        cr_assert_eq(mj_tensor_data(y)[flat(4, mj_tensor_shape(y), idx)], mj_tensor_data(x)[flat(4, sx, src)]);
    } while (next_index(4, mj_tensor_shape(y), idx));
    mj_tensor_release(y);
    /* transpose(1, -1) swaps dims 1 and 3 */
    OK(mj_transpose_dims(&y, x, 1, -1));
    cr_assert_eq(mj_tensor_dim(y, 1), 5);
    cr_assert_eq(mj_tensor_dim(y, 3), 3);
    do {
        int64_t src[4] = {idx[0], idx[3], idx[2], idx[1]};
        cr_assert_eq(mj_tensor_data(y)[flat(4, mj_tensor_shape(y), idx)], mj_tensor_data(x)[flat(4, sx, src)]);
    } while (next_index(4, mj_tensor_shape(y), idx));
    mj_tensor_release(y);
    /* slice with Python's negative and clamped bounds: x[:, :, -3:100] */
    OK(mj_slice(&y, x, 2, -3, 100));
    cr_assert_eq(mj_tensor_dim(y, 2), 3);
    do {
        int64_t src[4] = {idx[0], idx[1], idx[2] + 1, idx[3]};
        cr_assert_eq(mj_tensor_data(y)[flat(4, mj_tensor_shape(y), idx)], mj_tensor_data(x)[flat(4, sx, src)]);
    } while (next_index(4, mj_tensor_shape(y), idx));
    /* cat of the pieces of chunk and split gives x back, bit for bit */
    mj_tensor *parts[8];
    int n = 0;
    OK(mj_chunk(parts, &n, x, 3, -1)); /* 5 in chunks of 2: sizes 2, 2, 1 */
    cr_assert_eq(n, 3);
    cr_assert_eq(mj_tensor_dim(parts[2], 3), 1);
    mj_tensor *back;
    OK(mj_cat(&back, n, (const mj_tensor *const *)parts, 3));
    cr_assert(mj_tensor_equal(back, x));
    mj_tensor_release(back);
    release_all(parts, n);
    OK(mj_split(parts, 8, &n, x, 2, 1)); /* 3 in pieces of 2: 2, 1 */
    cr_assert_eq(n, 2);
    OK(mj_cat(&back, n, (const mj_tensor *const *)parts, -3));
    cr_assert(mj_tensor_equal(back, x));
    mj_tensor_release(back);
    release_all(parts, n);
    OK(mj_split_sizes(parts, x, 3, (int64_t[]){1, 0, 3}, 2));
    cr_assert_eq(mj_tensor_dim(parts[1], 2), 0);
    OK(mj_cat(&back, 3, (const mj_tensor *const *)parts, 2));
    cr_assert(mj_tensor_equal(back, x));
    mj_tensor_release(back);
    release_all(parts, 3);
    /* errors name the values */
    FAILS(mj_split_sizes(parts, x, 2, (int64_t[]){1, 2}, 2), MJ_ERR_SHAPE, "add up to 3 but dim 2");
    FAILS(mj_permute(&y, x, 4, (int[]){0, 1, 1, 2}), MJ_ERR_SHAPE, "not a permutation");
    FAILS(mj_transpose_dims(&y, x, 0, 4), MJ_ERR_SHAPE, "dims 0 and 4");
    FAILS(mj_cat(&y, 2, (const mj_tensor *const[]){x, y = mj_tensor_retain(x)}, 4), MJ_ERR_SHAPE, "dim 4");
    mj_tensor_release(y);
    mj_tensor *z = randn(&rng, 2, 3, 4, 0, 0);
    FAILS(mj_matmul(&y, x, z), MJ_ERR_SHAPE, "[2, 3, 4, 5] by [3, 4]");
    MJT_RELEASE(z, x);
}

/* ---- each shape op traced and compiled ------------------------------------------- */

/* x[B,4,6,8]: q @ k^T with k = transpose(x, -1, -2); batched matmul with a
 * rank-2 and a rank-3 weight (broadcast over B and heads). */
static mj_status bmm_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    mj_tensor *kt, *s, *w2, *w3, *p, *q, *r;
    OK(mj_transpose_dims(&kt, x, -1, -2));
    OK(mj_matmul(&s, x, kt));                        /* [B,4,6,6]  */
    OK(mj_module_get(self, "w2", &w2));              /* [6,5]      */
    OK(mj_module_get(self, "w3", &w3));              /* [4,5,3]    */
    OK(mj_matmul(&p, s, w2));                        /* [B,4,6,5]  */
    OK(mj_matmul(&q, p, w3));                        /* [B,4,6,3]  */
    OK(mj_tanh(&r, q));
    OK(mj_matmul(y, kt, r));                          /* [B,4,8,3] */
    mj_tensor *tmp[] = {kt, s, w2, w3, p, q, r};
    release_all(tmp, 7);
    return MJ_OK;
}

/* permute, transpose that moves the batch, reshape with B inside */
static mj_status permute_forward(mj_module *self, int n_in, const mj_tensor *const *x, int n_out, mj_tensor **y) {
    (void)self, (void)n_in, (void)n_out;
    mj_tensor *a, *b, *c, *d;
    OK(mj_permute(&a, x[0], 4, (int[]){0, 2, 1, 3}));   /* [B,s,h,d] -> [B,h,s,d] */
    OK(mj_permute(&y[0], a, 4, (int[]){0, 3, 1, 2}));   /* [B,d,h,s] */
    OK(mj_transpose_dims(&b, x[1], 0, 1));              /* [B,5,7] -> [5,B,7] */
    int64_t shape[4] = {5, mj_tensor_dim(x[1], 0), 7, 1};
    OK(mj_reshape(&c, b, 4, shape));                    /* [5,B,7,1] */
    OK(mj_transpose_dims(&d, c, 0, -1));                /* [1,B,7,5] */
    int64_t s2[3] = {mj_tensor_dim(x[1], 0), 7, 5};
    OK(mj_reshape(&y[1], d, 3, s2));                    /* [B,7,5] */
    OK(mj_transpose_dims(&y[2], b, 1, 0));              /* back to [B,5,7] */
    mj_tensor *tmp[] = {a, b, c, d};
    release_all(tmp, 4);
    return MJ_OK;
}

/* fused-qkv style: chunk, split, slice and cat along the last and middle dims */
static mj_status split_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    (void)self;
    mj_tensor *qkv[3], *sp[3], *mid, *t;
    int n;
    OK(mj_chunk(qkv, &n, x, 3, -1));                    /* [B,5,12] -> 3 x [B,5,4] */
    OK(mj_split_sizes(sp, qkv[1], 3, (int64_t[]){1, 2, 1}, 2));
    OK(mj_slice(&mid, x, 1, 1, -1));                    /* [B,3,12] */
    OK(mj_cat(&t, 5, (const mj_tensor *const[]){qkv[2], sp[2], sp[0], qkv[0], sp[1]}, 2)); /* [B,5,12] */
    mj_tensor *u;
    OK(mj_cat(&u, 2, (const mj_tensor *const[]){t, mid}, 1)); /* [B,8,12] */
    OK(mj_relu(y, u));
    release_all(qkv, 3);
    release_all(sp, 3);
    mj_tensor *tmp[] = {mid, t, u};
    release_all(tmp, 3);
    return MJ_OK;
}

Test(graphs_io, batched_matmul_and_transpose_every_mode) {
    mj_rng rng = mjt_rng(8);
    mj_module *m;
    OK(mj_module_new(&m, "Bmm", bmm_forward, NULL, NULL));
    mj_tensor *w2 = randn(&rng, 2, 6, 5, 0, 0), *w3 = randn(&rng, 3, 4, 5, 3, 0);
    OK(mj_module_add_parameter(m, "w2", w2));
    OK(mj_module_add_parameter(m, "w3", w3));
    mj_tensor *ex = randn(&rng, 4, 3, 4, 6, 8);
    mj_graph *g = check_everywhere(m, 1, &ex, 8);
    char *text = mj_graph_to_string(g);
    cr_assert(strstr(text, "= transpose %0 : f32[B,4,8,6]") && strstr(text, "matmul"), "%s", text);
    free(text);
    MJT_RELEASE(ex, w2, w3);
    mjt_free_traced(g, m);
}

Test(graphs_io, permute_transpose_reshape_every_mode) {
    mj_rng rng = mjt_rng(9);
    mj_module *m;
    OK(mj_module_new_n(&m, "Permute", 2, 3, permute_forward, NULL, NULL));
    mj_tensor *ex[2] = {randn(&rng, 4, 3, 6, 2, 4), randn(&rng, 3, 3, 5, 7, 0)};
    mj_graph *g = check_everywhere(m, 2, ex, 9);
    char *text = mj_graph_to_string(g);
    cr_assert(strstr(text, "permute %0 {perm=[0,2,1,3]} : f32[B,2,6,4]"), "%s", text);
    cr_assert(strstr(text, "{dim0=0, dim1=1} : f32[5,B,7]"), "%s", text);
    cr_assert(strstr(text, "reshape %") && strstr(text, ": f32[5,B,7,1]"), "%s", text);
    free(text);
    mj_graph_free(g);
    release_all(ex, 2);
    mj_module_free(m);
}

Test(graphs_io, chunk_split_slice_cat_every_mode) {
    mj_rng rng = mjt_rng(10);
    mj_module *m;
    OK(mj_module_new(&m, "Split", split_forward, NULL, NULL));
    mj_tensor *ex = randn(&rng, 3, 3, 5, 12, 0);
    mj_graph *g = check_everywhere(m, 1, &ex, 10);
    char *text = mj_graph_to_string(g);
    cr_assert(strstr(text, "slice %0 {dim=2, start=4, end=8} : f32[B,5,4]"), "%s", text);
    cr_assert(strstr(text, "{dim=2} : f32[B,5,12]") && strstr(text, "{dim=1} : f32[B,8,12]"), "%s", text);
    free(text);
    mj_tensor_release(ex);
    mjt_free_traced(g, m);
}

/* ---- a self-attention block (no softmax) from masked projections ---------------
 * x[B,s,96] -> qkv = Linear(96, 288) (masked) -> chunk 3 -> [B,s,4,24] ->
 * permute [B,4,s,24] -> scores = q @ k^T * scale -> tanh -> @ v -> permute
 * back -> [B,s,96] -> Linear(96, 96) (masked) + x. */

typedef struct attn_cfg {
    int64_t heads, dh;
} attn_cfg;

static mj_status attn_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    const attn_cfg *cfg = mj_module_user(self);
    int64_t B = mj_tensor_dim(x, 0), S = mj_tensor_dim(x, 1), H = cfg->heads, D = cfg->dh;
    mj_tensor *qkv = fwd(self, "qkv", x), *parts[3], *heads[3], *kt, *sc, *scale, *ss, *p, *o, *ot, *flat, *proj;
    int n;
    OK(mj_chunk(parts, &n, qkv, 3, -1));
    cr_assert_eq(n, 3);
    for (int i = 0; i < 3; i++) {
        mj_tensor *r;
        OK(mj_reshape(&r, parts[i], 4, (int64_t[]){B, S, H, D}));
        OK(mj_permute(&heads[i], r, 4, (int[]){0, 2, 1, 3}));
        mj_tensor_release(r);
    }
    OK(mj_transpose_dims(&kt, heads[1], -2, -1));
    OK(mj_matmul(&sc, heads[0], kt));
    OK(mj_tensor_full(&scale, 1, (int64_t[]){1}, 1.0f / sqrtf((float)D))); /* becomes a const */
    OK(mj_mul(&ss, sc, scale));
    OK(mj_tanh(&p, ss));
    OK(mj_matmul(&o, p, heads[2]));
    OK(mj_permute(&ot, o, 4, (int[]){0, 2, 1, 3}));
    OK(mj_reshape(&flat, ot, 3, (int64_t[]){B, S, H * D}));
    proj = fwd(self, "out", flat);
    OK(mj_add(y, proj, x));
    release_all(parts, 3);
    release_all(heads, 3);
    mj_tensor *tmp[] = {qkv, kt, sc, scale, ss, p, o, ot, flat, proj};
    release_all(tmp, 10);
    return MJ_OK;
}

Test(graphs_io, self_attention_masked_projections_every_mode) {
    mj_rng rng = mjt_rng(11);
    static attn_cfg cfg = {4, 24};
    mj_module *m;
    OK(mj_module_new(&m, "SelfAttention", attn_forward, &cfg, NULL));
    OK(mj_module_add_child(m, "qkv", masked_linear(96, 288, true, 0.3, &rng)));
    OK(mj_module_add_child(m, "out", masked_linear(96, 96, true, 0.3, &rng)));
    mj_tensor *ex = randn(&rng, 3, 3, 7, 96, 0);
    mj_graph *g = check_everywhere(m, 1, &ex, 11);
    cr_assert_eq(mj_graph_warning_count(g), 0);
    cr_assert(frozen_uses_sparse(g), "the masked projections should run on the sparse kernel when frozen");
    char *text = mj_graph_to_string(g);
    cr_assert(strstr(text, "permute") && strstr(text, "slice") && strstr(text, "matmul") &&
                  strstr(text, "linear") && strstr(text, "parametrizations.weight.0.mask"),
              "%s", text);
    free(text);
    mj_tensor_release(ex);
    mjt_free_traced(g, m);
}

/* ---- text form, verifier, passes and tracer errors for the shape ops ---------- */

#define HDR "maskjit-ir 1\n%0 = input \"x\" : f32[B,4,6]\n"

Test(graphs_io, shape_attribute_errors_name_line_and_values) {
    static const struct {
        const char *text, *needle;
    } cases[] = {
        {HDR "%1 = permute %0 : f32[B,4,6]\nreturn %1\n", "3:17: expected {perm=[...]}"},
        {HDR "%1 = slice %0 {dim=1, start=0} : f32[B,0,6]\nreturn %1\n", "expected {dim=D, start=S, end=E}"},
        {HDR "%1 = cat %0 {perm=[0,1,2]} : f32[B,4,6]\nreturn %1\n", "3:14: cat takes no attribute 'perm'"},
        {HDR "%1 = relu %0 {dim=1} : f32[B,4,6]\nreturn %1\n", "3:14: relu takes no {act=...} or other attributes"},
        {HDR "%1 = slice %0 {dim=0, start=0, end=1} : f32[1,4,6]\nreturn %1\n",
         "cannot slice f32[B,4,6] along dim 0, the batch B"},
        {HDR "%1 = slice %0 {dim=-2, start=2, end=9} : f32[B,7,6]\nreturn %1\n",
         "start=2, end=9 do not fit dim 1 of f32[B,4,6]"},
        {HDR "%1 = permute %0 {perm=[0,2,2]} : f32[B,6,6]\nreturn %1\n", "perm names dim 2 twice"},
        {HDR "%1 = permute %0 {perm=[0,1,2,3,0]} : f32[B,4,6]\nreturn %1\n", "at most 4 entries"},
        {HDR "%1 = permute %0 {perm=[0,1,2,0]} : f32[B,4,6]\nreturn %1\n", "3:17: permute: perm has 4 entries but %0 has rank 3"},
        {HDR "%1 = permute %0 {perm=[0,1]} : f32[B,4,6]\nreturn %1\n", "perm has 2 entries"},
        {HDR "%1 = transpose %0 {dim0=1} : f32[B,6,4]\nreturn %1\n", "both dim0 and dim1"},
        {HDR "%1 = transpose %0 {dim0=1, dim1=-2} : f32[B,4,6]\nreturn %1\n", "dim0 and dim1 are both 1 (they must differ)"},
        {HDR "%1 = transpose %0 {dim0=0, dim1=3} : f32[B,4,6]\nreturn %1\n", "dim1=3 is out of range for rank 3"},
        {HDR "%1 = cat %0, %0 {dim=0} : f32[B,4,6]\nreturn %1\n", "cannot concatenate along dim 0, the batch B"},
        {HDR "%1 = cat %0 {dim=1, dim=2} : f32[B,4,6]\nreturn %1\n", "attribute 'dim' given twice"},
        {HDR "%1 = const \"w\" : f32[3,6,2]\n%2 = matmul %0, %1 : f32[B,4,2]\nreturn %2\n",
         "cannot broadcast the batch dims of f32[B,4,6] with f32[3,6,2]"},
        {HDR "%1 = slice %0 {dim=1, start=1, end=3} : f32[B,2,5]\nreturn %1\n", "declared type differs"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mj_graph *g = NULL;
        mj_status s = mj_graph_parse(cases[i].text, &g);
        cr_assert_eq(s, MJ_ERR_FORMAT, "case %zu parsed: %s", i, cases[i].text);
        cr_assert(strstr(mj_last_error(), cases[i].needle), "case %zu: '%s' lacks '%s'", i, mj_last_error(),
                  cases[i].needle);
        cr_assert_null(g);
    }
}

Test(graphs_io, cse_keeps_different_slices_and_merges_equal_ones) {
    mj_graph *g = NULL;
    OK(mj_graph_parse(HDR "%1 = slice %0 {dim=2, start=0, end=3} : f32[B,4,3]\n"
                          "%2 = slice %0 {dim=2, start=3, end=6} : f32[B,4,3]\n"
                          "%3 = slice %0 {dim=2, start=0, end=3} : f32[B,4,3]\n"
                          "%4 = permute %1 {perm=[0,2,1]} : f32[B,3,4]\n"
                          "%5 = transpose %2 : f32[B,3,4]\n"
                          "%6 = permute %3 {perm=[0,2,1]} : f32[B,3,4]\n"
                          "%7 = cat %4, %5, %6 {dim=1} : f32[B,9,4]\n"
                          "return %7\n",
                      &g));
    mj_rng rng = mjt_rng(12);
    mj_tensor *x[1], *want[1], *got[1];
    graph_inputs(g, 3, &rng, x);
    OK(mj_graph_run_n(g, 1, (const mj_tensor *const *)x, 1, want));
    OK(mj_graph_optimize(g, "cse,dce"));
    /* %3 merges into %1 and %6 into %4; the other slice and the transpose stay */
    cr_assert_eq(mj_graph_node_count(g), 6, "%s", mj_graph_to_string(g));
    OK(mj_graph_run_n(g, 1, (const mj_tensor *const *)x, 1, got));
    cr_assert(mj_tensor_equal(got[0], want[0]));
    release_all(x, 1);
    release_all(want, 1);
    release_all(got, 1);
    mj_graph_free(g);
}

static mj_status merge_batch_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    (void)self;
    return mj_reshape(y, x, 2, (int64_t[]){mj_tensor_dim(x, 0) * 4, 6});
}

static mj_status chunk_batch_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    (void)self;
    mj_tensor *p[2];
    int n;
    MJ_TRY(mj_chunk(p, &n, x, 2, 0));
    release_all(p + 1, n - 1);
    *y = p[0];
    return MJ_OK;
}

Test(graphs_io, tracing_refuses_ops_that_do_not_generalise_over_the_batch) {
    mj_rng rng = mjt_rng(13);
    mj_tensor *ex = randn(&rng, 3, 4, 4, 6, 0);
    static const struct {
        const char *name;
        mj_forward_fn forward;
        const char *says;
    } cases[] = {
        {"MergeBatch", merge_batch_forward, "merges or splits the batch dim"},
        {"ChunkBatch", chunk_batch_forward, "the batch B"},
    };
    for (int i = 0; i < 2; i++) {
        mj_module *m;
        mj_graph *g = NULL;
        OK(mj_module_new(&m, cases[i].name, cases[i].forward, NULL, NULL));
        FAILS(mj_trace_module(m, ex, &g), MJ_ERR_SHAPE, cases[i].says);
        cr_assert_null(g);
        mj_module_free(m);
    }
    mj_tensor_release(ex);
}

/* The compile cache keys on the whole graph, outputs included: the same
 * graph hits and runs from the cached object; the graph returning its
 * outputs the other way round is another entry. */
Test(graphs_io, cache_keys_several_outputs) {
    char dir[] = "/tmp/mj-gio-cache-XXXXXX";
    cr_assert(mkdtemp(dir));
    static const char a[] = "maskjit-ir 1\n"
                            "%0 = input \"a\" : f32[B,3,4]\n"
                            "%1 = input \"b\" : f32[B,4,2]\n"
                            "%2 = matmul %0, %1 : f32[B,3,2]\n"
                            "%3 = permute %2 {perm=[0,2,1]} : f32[B,2,3]\n"
                            "return %2, %3\n";
    static const char b[] = "maskjit-ir 1\n"
                            "%0 = input \"a\" : f32[B,3,4]\n"
                            "%1 = input \"b\" : f32[B,4,2]\n"
                            "%2 = matmul %0, %1 : f32[B,3,2]\n"
                            "%3 = permute %2 {perm=[0,2,1]} : f32[B,2,3]\n"
                            "return %3, %2\n";
    const char *texts[3] = {a, a, b};
    const bool hits[3] = {false, true, false};
    mj_rng rng = mjt_rng(14);
    for (int t = 0; t < 3; t++) {
        mj_graph *g = NULL;
        OK(mj_graph_parse(texts[t], &g));
        mj_compile_options o;
        mj_compile_options_init(&o);
        o.cache_dir = dir;
        o.threads = 1;
        mj_compiled *c = mjt_compile_with(jit, g, &o);
        cr_assert_eq(mj_compiled_stats(c)->cache_hit, hits[t], "compile %d: cache hit %d", t,
                     (int)mj_compiled_stats(c)->cache_hit);
        mj_tensor *x[2] = {0}, *want[2] = {0}, *got[2] = {0};
        graph_inputs(g, 5, &rng, x);
        OK(mj_graph_run_n(g, 2, (const mj_tensor *const *)x, 2, want));
        OK(mj_compiled_run_n(c, 2, (const mj_tensor *const *)x, 2, got));
        for (int j = 0; j < 2; j++) expect_same(got[j], want[j], true, "cached", j, 5);
        release_all(x, 2);
        release_all(want, 2);
        release_all(got, 2);
        mj_compiled_free(c);
        mj_graph_free(g);
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

/* A rank-1 input [B] (a per-sample scale) next to a rank-2 one. */
static mj_status scale_forward(mj_module *self, int n_in, const mj_tensor *const *x, int n_out, mj_tensor **y) {
    (void)n_in, (void)n_out;
    mj_tensor *s, *h = fwd(self, "fc", x[0]);
    OK(mj_reshape(&s, x[1], 2, (int64_t[]){mj_tensor_dim(x[1], 0), 1}));
    OK(mj_mul(&y[0], h, s));
    MJT_RELEASE(s, h);
    return MJ_OK;
}

Test(graphs_io, rank1_input_every_mode) {
    mj_rng rng = mjt_rng(15);
    mj_module *m;
    OK(mj_module_new_n(&m, "Scale", 2, 1, scale_forward, NULL, NULL));
    OK(mj_module_add_child(m, "fc", masked_linear(8, 5, true, 0.5, &rng)));
    mj_tensor *ex[2] = {randn(&rng, 2, 3, 8, 0, 0), randn(&rng, 1, 3, 0, 0, 0)};
    mj_graph *g = check_everywhere(m, 2, ex, 15);
    cr_assert_eq(mj_graph_input_rank(g, 1), 1);
    mj_graph_free(g);
    release_all(ex, 2);
    mj_module_free(m);
}

/* Both attribute mechanisms in one graph: `dim` of sum/softmax (mj_node.attrs)
 * and `dim` of slice/cat (mj_node.sa) parse per op and round-trip. */
Test(graphs_io, shape_and_math_attributes_round_trip_together) {
    static const char text[] = "maskjit-ir 1\n"
                               "%0 = input \"x\" : f32[B,4,6]\n"
                               "%1 = softmax %0 {dim=-1} : f32[B,4,6]\n"
                               "%2 = slice %1 {dim=2, start=1, end=5} : f32[B,4,4]\n"
                               "%3 = sum %2 {dim=1, keepdim=true} : f32[B,1,4]\n"
                               "%4 = cat %3, %3 {dim=1} : f32[B,2,4]\n"
                               "%5 = transpose %4 {dim0=1, dim1=2} : f32[B,4,2]\n"
                               "return %5\n";
    mj_graph *g = NULL;
    OK(mj_graph_parse(text, &g));
    char *t1 = mj_graph_to_string(g);
    cr_assert(t1);
    cr_assert(strstr(t1, "softmax %0 {dim=-1}"), "%s", t1);
    cr_assert(strstr(t1, "slice %1 {dim=2, start=1, end=5}"), "%s", t1);
    cr_assert(strstr(t1, "sum %2 {dim=1, keepdim=true}"), "%s", t1);
    cr_assert(strstr(t1, "cat %3, %3 {dim=1}"), "%s", t1);
    mj_graph *back = NULL;
    OK(mj_graph_parse(t1, &back));
    char *t2 = mj_graph_to_string(back);
    cr_assert_str_eq(t1, t2);
    OK(mj_graph_verify(back));
    MJT_FREE(t2, t1);
    mj_graph_free(back);
    /* a shape attribute on a math op, and the reverse, are refused */
    FAILS(mj_graph_parse("maskjit-ir 1\n%0 = input \"x\" : f32[B,4]\n%1 = sum %0 {start=0} : f32[B]\nreturn %1\n", &back),
          MJ_ERR_FORMAT, "sum has no attribute 'start'");
    FAILS(mj_graph_parse("maskjit-ir 1\n%0 = input \"x\" : f32[B,4]\n%1 = slice %0 {dim=1, keepdim=true} : f32[B,4]\n"
                         "return %1\n", &back),
          MJ_ERR_FORMAT, "slice takes no attribute 'keepdim'");
    mj_graph_free(g);
}
