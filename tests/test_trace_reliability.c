/* Tracing and ownership under misuse:
 *  - reading any traced value into C (the input, a parameter, an
 *    intermediate) records a TracerWarning; library code reading data does not;
 *  - running a compiled graph or the interpreter inside a trace is refused;
 *  - a parametrization or module forward that returns its input (`return X`)
 *    does not free the caller's tensor;
 *  - compiling under an address-space limit too small for LLVM fails with a
 *    status and a message instead of LLVM aborting the process.
 * References: eager forward, naive loops here, and a forked child's exit. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "maskjit.h"
#include "test_util.h"

static mj_tensor *full2(int64_t rows, int64_t cols, float v) {
    int64_t shape[2] = {rows, cols};
    mj_tensor *t = NULL;
    OK(mj_tensor_full(&t, 2, shape, v));
    return t;
}

static mj_module *user_module(const char *type, mj_forward_fn fwd, void *user) {
    mj_module *m = NULL;
    OK(mj_module_new(&m, type, fwd, user, NULL));
    return m;
}

/* A user module around Linear(4, 3) named "lin". */
static mj_module *wrap_linear(const char *type, mj_forward_fn fwd, void *user) {
    mj_rng rng = mjt_rng(3);
    mj_module *m = user_module(type, fwd, user), *lin = NULL;
    OK(mj_linear_new(&lin, 4, 3, true, &rng));
    OK(mj_module_add_child(m, "lin", lin));
    return m;
}

static bool has_warning(const mj_graph *g, const char *a, const char *b) {
    for (int i = 0; i < mj_graph_warning_count(g); i++) {
        const char *w = mj_graph_warning(g, i);
        if (strstr(w, "TracerWarning") && strstr(w, a) && (!b || strstr(w, b))) return true;
    }
    return false;
}

static void dump_warnings(const mj_graph *g) {
    for (int i = 0; i < mj_graph_warning_count(g); i++)
        fprintf(stderr, "  warning %d: %s\n", i, mj_graph_warning(g, i));
}

/* ---- TracerWarnings on reads ------------------------------------------------ */

/* The forward of the report: branches on the input's first element. */
static mj_status branch_on_input(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    (void)self;
    return mj_tensor_data(x)[0] > 0 ? mj_relu(y, x) : mj_tanh(y, x);
}

Test(trace_rel, branching_on_the_input_warns) {
    mj_module *m = user_module("BranchOnInput", branch_on_input, NULL);
    mj_tensor *pos = full2(2, 4, 1.0f), *neg = full2(2, 4, -1.0f);
    mj_graph *g = mjt_trace(m, pos);
    dump_warnings(g);
    cr_assert_eq(mj_graph_warning_count(g), 1, "got %d warnings", mj_graph_warning_count(g));
    cr_assert(has_warning(g, "the input", "might not generalize"), "%s", mj_graph_warning(g, 0));
    /* The warning is right: the trace replays relu for an input that takes tanh. */
    const mj_tensor *ins[1] = {neg};
    FAILS(mj_graph_check(g, m, 1, ins, NULL), MJ_ERR_MISMATCH, "not bit-identical");
    MJT_RELEASE(pos, neg);
    mjt_free_traced(g, m);
}

/* Reads the input twice (mutably too), a parameter, an intermediate, and a
 * tensor the trace does not know. */
static mj_status reads_everything(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    mj_module *lin = mj_module_child(self, "lin");
    volatile float sink = mj_tensor_data(x)[0];
    sink += mj_tensor_data_mut((mj_tensor *)x)[1]; /* same value: no second warning */
    mj_tensor *w = NULL, *h = NULL, *local = NULL;
    mj_status s = mj_module_get(lin, "weight", &w);
    if (s != MJ_OK) return s;
    sink += mj_tensor_data(w)[0];
    mj_tensor_release(w);
    s = mj_module_forward(lin, x, &h);
    if (s != MJ_OK) return s;
    sink += mj_tensor_data(h)[0];
    int64_t shape[1] = {3};
    s = mj_tensor_zeros(&local, 1, shape); /* not traced: reading it is harmless */
    if (s == MJ_OK) sink += mj_tensor_data(local)[0];
    mj_tensor_release(local);
    (void)sink;
    *y = h;
    return s;
}

Test(trace_rel, reads_of_input_param_and_intermediate_warn_once_each) {
    mj_module *m = wrap_linear("ReadsEverything", reads_everything, NULL);
    mj_tensor *x = full2(2, 4, 0.5f);
    mj_graph *g = mjt_trace(m, x);
    dump_warnings(g);
    cr_assert_eq(mj_graph_warning_count(g), 3, "got %d warnings", mj_graph_warning_count(g));
    cr_assert(has_warning(g, "the input", NULL));
    cr_assert(has_warning(g, "parameter 'lin.weight'", NULL));
    cr_assert(has_warning(g, "traced value %", NULL));
    mj_tensor_release(x);
    mjt_free_traced(g, m);
}

/* Writes into its buffer from C: the trace does not see the write. */
static mj_status writes_buffer(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    mj_tensor *scale = NULL;
    mj_status s = mj_module_get(self, "scale", &scale);
    if (s != MJ_OK) return s;
    mj_tensor_data_mut(scale)[0] = 2.0f;
    s = mj_mul(y, x, scale);
    mj_tensor_release(scale);
    return s;
}

Test(trace_rel, writing_a_buffer_from_c_warns) {
    mj_module *m = user_module("WritesBuffer", writes_buffer, NULL);
    mj_tensor *scale = NULL;
    OK(mj_tensor_ones(&scale, 1, (int64_t[]){4}));
    OK(mj_module_add_buffer(m, "scale", scale, true));
    mj_tensor *x = full2(2, 4, 1.0f);
    mj_graph *g = mjt_trace(m, x);
    dump_warnings(g);
    cr_assert_eq(mj_graph_warning_count(g), 1);
    cr_assert(has_warning(g, "writing to the data of buffer 'scale'", "does not see the write"));
    MJT_RELEASE(x, scale);
    mjt_free_traced(g, m);
}

/* The library's own reads (eager kernels, parametrizations, the tracer's
 * consts, a module built inside forward) record nothing. */
static mj_status builds_inside(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    mj_rng rng = mjt_rng(1);
    mj_module *inner = NULL;
    mj_status s = mj_linear_new(&inner, 3, 2, true, &rng);
    if (s != MJ_OK) return s;
    mj_tensor *h = NULL;
    s = mj_module_forward(mj_module_child(self, "lin"), x, &h);
    if (s == MJ_OK) s = mj_module_forward(inner, h, y);
    mj_tensor_release(h);
    mj_module_free(inner);
    return s;
}

/* Tracing m on ones(rows, cols) gives no warning; frees m. */
static void assert_traces_without_warnings(mj_module *m, int64_t rows, int64_t cols) {
    mj_tensor *x = full2(rows, cols, 1.0f);
    mj_graph *g = mjt_trace(m, x);
    dump_warnings(g);
    cr_assert_eq(mj_graph_warning_count(g), 0);
    mj_tensor_release(x);
    mjt_free_traced(g, m);
}

Test(trace_rel, library_reads_do_not_warn) {
    mj_rng rng = mjt_rng(2);
    mj_module *m = mjt_half_masked_mut(&rng);
    assert_traces_without_warnings(m, 3, 16);
    /* Linear(4, 3) then a Linear(3, 2) made (and its weights read) inside forward */
    assert_traces_without_warnings(wrap_linear("BuildsInside", builds_inside, NULL), 2, 4);
}

/* ---- graphs run inside a trace are refused -------------------------------- */

typedef struct inner_runner {
    mj_compiled *compiled;
    mj_graph *graph;
    int how; /* 0 compiled_run, 1 compiled_run_raw, 2 graph_run (interpreter) */
} inner_runner;

static mj_status runs_inner(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    inner_runner *r = mj_module_user(self);
    if (r->how == 0) return mj_compiled_run(r->compiled, x, y);
    if (r->how == 2) return mj_graph_run(r->graph, x, y);
    int64_t shape[2] = {mj_tensor_dim(x, 0), 3};
    mj_tensor *t = NULL;
    mj_status s = mj_tensor_zeros(&t, 2, shape);
    if (s != MJ_OK) return s;
    s = mj_compiled_run_raw(r->compiled, mj_tensor_data(x), shape[0],
                                      mj_tensor_data_mut(t), mj_tensor_numel(t));
    if (s != MJ_OK) {
        mj_tensor_release(t);
        return s;
    }
    *y = t;
    return MJ_OK;
}

Test(trace_rel, running_a_compiled_graph_or_the_interpreter_inside_a_trace_is_refused) {
    mj_rng rng = mjt_rng(6);
    mj_module *lin = NULL;
    OK(mj_linear_new(&lin, 4, 3, true, &rng));
    mj_tensor *x = full2(2, 4, 0.25f);
    mj_graph *g = mjt_trace(lin, x);
    mj_jit *jit = NULL;
    OK(mj_jit_new(&jit));
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.use_cache = false;
    inner_runner r = {.graph = g};
    OK(mj_jit_compile(jit, g, &o, &r.compiled));
    mj_module *outer = user_module("RunsInner", runs_inner, &r);
    static const char *const what[3] = {"compiled graph", "compiled graph", "graph"};
    for (r.how = 0; r.how < 3; r.how++) {
        /* outside a trace: fine, and equal to eager */
        mj_tensor *y = NULL, *ref = NULL;
        OK(mj_module_forward(outer, x, &y));
        OK(mj_module_forward(lin, x, &ref));
        cr_assert(mj_tensor_equal(y, ref), "how %d", r.how);
        MJT_RELEASE(y, ref);
        /* inside: refused, the output would be a constant */
        mj_graph *tg = NULL;
        FAILS(mj_trace_module(outer, x, &tg), MJ_ERR_STATE, "inside a trace");
        cr_assert(strstr(mj_last_error(), what[r.how]), "how %d: %s", r.how, mj_last_error());
        cr_assert_null(tg);
        /* the tracer is gone: a trace afterwards works */
        OK(mj_trace_module(lin, x, &tg));
        mj_graph_free(tg);
    }
    mj_module_free(outer);
    mj_compiled_free(r.compiled);
    mj_jit_free(jit);
    mj_tensor_release(x);
    mjt_free_traced(g, lin);
}

/* ---- identity forwards: `return X` ----------------------------------------- */

static mj_status identity_param(mj_parametrization *self, const mj_tensor *x, mj_tensor **y) {
    (void)self;
    *y = (mj_tensor *)x; /* PyTorch's `return X`: no reference taken */
    return MJ_OK;
}

static mj_status identity_param_retained(mj_parametrization *self, const mj_tensor *x,
                                         mj_tensor **y) {
    (void)self;
    *y = mj_tensor_retain((mj_tensor *)x); /* the documented way */
    return MJ_OK;
}

static const mj_parametrization_ops identity_ops = {
    .type_name = "Identity", .forward = identity_param, .right_inverse = identity_param};
static const mj_parametrization_ops identity_retained_ops = {
    .type_name = "IdentityRetained",
    .forward = identity_param_retained,
    .right_inverse = identity_param_retained};

static void check_identity_parametrization(const mj_parametrization_ops *ops) {
    mj_rng rng = mjt_rng(4);
    mj_module *lin = NULL;
    OK(mj_linear_new(&lin, 4, 3, true, &rng));
    mj_tensor *w0 = NULL;
    OK(mj_module_get(lin, "weight", &w0));
    mj_tensor *expect = NULL;
    OK(mj_tensor_clone(&expect, w0));
    mj_tensor_release(w0);
    for (int k = 0; k < 2; k++) { /* registered twice: a chain of two */
        mj_parametrization *p = NULL;
        OK(mj_parametrization_new(&p, ops, NULL));
        OK(mj_register_parametrization(lin, "weight", p));
    }
    mj_tensor *w = NULL;
    OK(mj_module_get(lin, "weight", &w));
    cr_assert(mj_tensor_equal(w, expect));
    cr_assert(mj_tensor_equal(mj_module_original(lin, "weight"), expect));
    mj_tensor_release(w);
    /* assignment goes through right_inverse (identity) */
    mj_tensor *v = full2(3, 4, 7.0f);
    OK(mj_module_set(lin, "weight", v));
    OK(mj_module_get(lin, "weight", &w));
    cr_assert(mj_tensor_equal(w, v));
    mj_tensor_release(w);
    /* forward, and a trace that binds the original */
    mj_tensor *x = full2(2, 4, 1.0f), *y = NULL, *ref = NULL, *bias = NULL;
    OK(mj_module_forward(lin, x, &y));
    OK(mj_module_get(lin, "bias", &bias));
    OK(mj_linear(&ref, x, v, bias));
    cr_assert(mj_tensor_equal(y, ref));
    mj_graph *g = NULL;
    mj_tensor *yg = NULL;
    OK(mj_trace_module(lin, x, &g));
    OK(mj_graph_run(g, x, &yg));
    cr_assert(mj_tensor_equal(yg, ref));
    mj_graph_free(g);
    for (mj_tensor **t = (mj_tensor *[]){x, y, ref, bias, yg, v, expect}, **e = t + 7; t < e; t++)
        mj_tensor_release(*t);
    mj_module_free(lin);
}

Test(trace_rel, identity_parametrization_returning_its_input_keeps_the_weight) {
    check_identity_parametrization(&identity_ops);
}

Test(trace_rel, identity_parametrization_returning_a_new_reference_does_not_leak) {
    check_identity_parametrization(&identity_retained_ops);
}

static mj_status identity_module(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    (void)self;
    *y = (mj_tensor *)x;
    return MJ_OK;
}

static mj_status identity_module_retained(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    (void)self;
    *y = mj_tensor_retain((mj_tensor *)x);
    return MJ_OK;
}

Test(trace_rel, identity_module_forward_keeps_the_callers_tensor) {
    mj_forward_fn fns[2] = {identity_module, identity_module_retained};
    for (int k = 0; k < 2; k++) {
        mj_module *id = user_module("Id", fns[k], NULL);
        mj_tensor *x = full2(2, 4, 3.0f), *y = NULL;
        OK(mj_module_forward(id, x, &y));
        cr_assert_eq(y, x);
        mj_tensor_release(y); /* the caller's reference */
        cr_assert_eq(mj_tensor_data(x)[7], 3.0f); /* x is still alive */
        /* inside Sequential(Id, ReLU) and traced */
        mj_module *relu = NULL, *seq = NULL;
        OK(mj_activation_module_new(&relu, MJ_ACT_RELU));
        OK(mj_sequential_new(&seq, 2, (mj_module *[]){id, relu}));
        mj_graph *g = mjt_trace(seq, x);
        OK(mj_graph_run(g, x, &y));
        cr_assert(mj_tensor_equal(y, x));
        mj_tensor_release(y);
        mjt_free_traced(g, seq);
        mj_tensor_release(x);
    }
}

/* ---- compiling under a memory limit ---------------------------------------- */

/* Runs tests/limit_child.c (a fresh process: the test runner's heap would
 * lend LLVM memory the limit does not count) with HEADROOM MiB of address
 * space beyond what it uses after setup. Returns its exit code; it must not
 * die by a signal. */
static int compile_in_limited_child(const char *spec, const char *in, long headroom_mib,
                                    bool frozen) {
    char mib[32];
    snprintf(mib, sizeof mib, "%ld", headroom_mib);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        execl(MJ_BUILD_ROOT "/tests/maskjit-limit-child", "maskjit-limit-child", spec, in, mib,
              frozen ? "frozen" : "live", (char *)NULL);
        _exit(127);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "%s, %ld MiB: the child died (signal %d) instead of returning a status",
              spec, headroom_mib, WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    return WEXITSTATUS(status);
}

#if defined(__SANITIZE_ADDRESS__)
#define SKIP_UNDER_ASAN() cr_skip_test("ASan reserves terabytes of address space")
#else
#define SKIP_UNDER_ASAN() (void)0
#endif

Test(trace_rel, frozen_compile_beyond_the_address_space_limit_is_an_error_status) {
    SKIP_UNDER_ASAN();
    /* 5.3 MB of weights baked into the code need ~60 MB inside LLVM. Where
     * exactly LLVM would run out depends on the heap the child inherits, so
     * sweep the headroom: every child must compile or fail with a status,
     * never die, and the small headrooms must be refused up front. */
    int refused = 0;
    for (long mb = 10; mb <= 90; mb += 10) {
        int rc = compile_in_limited_child("mlp:256,1024,1024,10", "256", mb, true);
        cr_assert(rc == 0 || rc == 10 + MJ_ERR_LIMIT || rc == 10 + MJ_ERR_NOMEM || rc == 10 + MJ_ERR_BACKEND,
                  "headroom %ld MiB: child exit %d", mb, rc);
        refused += rc == 10 + MJ_ERR_LIMIT;
    }
    cr_assert_gt(refused, 0, "no compile was refused with MJ_ERR_LIMIT");
}

Test(trace_rel, compiles_that_fit_the_limit_still_succeed) {
    SKIP_UNDER_ASAN();
    int rc = compile_in_limited_child("mlp:64,128,10", "64", 40, true);
    cr_assert_eq(rc, 0, "frozen small model: child exit %d", rc);
    rc = compile_in_limited_child("mlp:256,1024,1024,10", "256", 40, false);
    cr_assert_eq(rc, 0, "live large model: child exit %d", rc);
}
