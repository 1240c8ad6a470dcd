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

static mj_jit *jit;

static void setup(void) { OK(mj_jit_new(&jit)); }
static void teardown(void) {
    mj_jit_free(jit);
    jit = NULL;
    mj_llvm_shutdown();
}

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
        mj_rng rng;
        mj_rng_seed(&rng, seed * 1000 + (uint64_t)batch);
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
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert(f);
    OK(mj_compiled_dump(c, "ir", f));
    fclose(f);
    bool found = strstr(buf, ".sparse") != NULL;
    free(buf);
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
    mj_rng rng;
    mj_rng_seed(&rng, 1);
    mj_module *m = two_io_model(&rng);
    mj_tensor *ex[2] = {randn(&rng, 2, 3, 512, 0, 0), randn(&rng, 2, 3, 24, 0, 0)};
    mj_graph *g = check_everywhere(m, 2, ex, 1);
    cr_assert_str_eq(mj_graph_input_name(g, 0), "input.0");
    cr_assert_str_eq(mj_graph_input_name(g, 1), "input.1");
    cr_assert(frozen_uses_sparse(g), "the masked 512x512 layer should run on the sparse kernel when frozen");

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
    mj_graph_free(g);
    mj_module_free(m);
}

Test(graphs_io, run_n_argument_errors) {
    mj_rng rng;
    mj_rng_seed(&rng, 2);
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
    mj_compiled_free(c);
    release_all(ex, 2);
    mj_graph_free(g);
    mj_module_free(m);
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
    mj_rng rng;
    mj_rng_seed(&rng, 3);
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

static const char *const BIN = MJ_BUILD_ROOT "/maskjit";

/* Runs `maskjit ARGS`; returns the exit status, stdout in *out (malloc'd)
 * when out is not NULL. */
static int run_cli(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run_cli(char **out, const char *fmt, ...) {
    char args[2048], cmd[2400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "NO_COLOR=1 %s %s 2>&1", BIN, args);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, p)) > 0) fwrite(chunk, 1, n, mem);
    fclose(mem);
    int status = pclose(p);
    if (out) *out = buf;
    else free(buf);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static mj_tensor *file_tensor(const char *path, const char *key) {
    mj_tensor_dict *d;
    OK(mj_safetensors_load(path, &d));
    mj_tensor *t = mj_tensor_dict_get(d, key);
    cr_assert_not_null(t, "%s has no %s", path, key);
    mj_tensor_retain(t);
    mj_tensor_dict_free(d);
    return t;
}

static void save_tensors(const char *path, int n, const char *const *names, mj_tensor *const *t) {
    mj_tensor_dict *d;
    OK(mj_tensor_dict_new(&d));
    for (int i = 0; i < n; i++) OK(mj_tensor_dict_set(d, names[i], t[i]));
    OK(mj_safetensors_save(path, d));
    mj_tensor_dict_free(d);
}

Test(graphs_io, cli_runs_two_input_two_output_traces, .timeout = 120) {
    mj_rng rng;
    mj_rng_seed(&rng, 5);
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
                mj_tensor *y = file_tensor(out, key);
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
    mj_graph_free(g);
    mj_module_free(m);
}

/* A token-wise MLP on [B, seq, d]: the CLI takes rank-3 inputs. */
static mj_status tokens_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    mj_tensor *h = fwd(self, "fc1", x), *r;
    OK(mj_gelu(&r, h));
    *y = fwd(self, "fc2", r);
    mj_tensor_release(h);
    mj_tensor_release(r);
    return MJ_OK;
}

Test(graphs_io, token_mlp_rank3_every_mode_and_cli, .timeout = 120) {
    mj_rng rng;
    mj_rng_seed(&rng, 6);
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
    mj_tensor *y = file_tensor(out, "output");
    expect_same(y, want, true, "cli rank 3", 0, 5);
    mj_tensor_release(y);
    cr_assert_eq(run_cli(&text, "check %s --inputs 2", trace), 0, "%s", text);
    free(text);
    unlink(trace);
    unlink(in);
    unlink(out);
    mj_tensor_release(x);
    mj_tensor_release(want);
    mj_tensor_release(ex);
    mj_graph_free(g);
    mj_module_free(m);
}
