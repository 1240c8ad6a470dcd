/* The concurrency scenarios of docs/threads.md as one plain program, for
 * ThreadSanitizer (tools/tsan.sh). Criterion cannot run under TSan (its
 * worker arena collides with TSan's shadow memory: Snaipe/Criterion#274),
 * so these mirror the threaded tests of tests/test_reliability.c, the JIT
 * suite and the trace suite without it, on the same thread bodies
 * (tests/thread_util.h). Every result is compared with the
 * eager forward computed single-threaded; the exit status is the number of
 * failed scenarios. */
#include <stdio.h>
#include <string.h>

#include "../jit/jit_test.h"
#include "../tests/thread_util.h"
#include "maskjit.h"

enum { T = 8 };

static int failures;

static void fail(const char *scenario, const char *what) {
    fprintf(stderr, "tsan_stress: %s: %s\n", scenario, what);
    failures++;
}

static mj_module *model(const char *spec, uint64_t seed, double density) {
    mj_rng rng;
    mj_rng_seed(&rng, seed);
    mj_module *m = NULL;
    if (mj_model_from_spec(spec, &rng, &m) != MJ_OK) return NULL;
    if (density < 1.0 && mj_model_apply_masks(m, NULL, density, &rng) != MJ_OK) {
        mj_module_free(m);
        return NULL;
    }
    return m;
}

static mj_tensor *randn(int64_t batch, int64_t in, uint64_t seed) {
    mj_rng rng;
    mj_rng_seed(&rng, seed);
    int64_t shape[2] = {batch, in};
    mj_tensor *x = NULL;
    mj_tensor_randn(&x, 2, shape, &rng);
    return x;
}

/* Runs the T callers, checks them, and frees their inputs, the compiled
 * model, the graph and the module they share. */
static void run_callers(mjt_call_arg *args, const char *name) {
    if (!mjt_run_threads(T, mjt_call_main, args, sizeof *args)) fail(name, "pthread_create failed");
    for (int i = 0; i < T; i++) {
        if (args[i].bad) fail(name, "a thread got a result that differs from eager");
        mj_tensor_release(args[i].x);
        mj_tensor_release(args[i].want);
    }
    mj_compiled_free(args[0].c);
    mj_graph_free(args[0].g);
    mj_module_free(args[0].m);
}

/* ---- 1. one compiled model, 8 callers ---------------------------------- */
/* pool > 1: the model's own pool splits the calls of a model wide enough to
 * pass PAR_MIN_FLOPS (jit/compiled_run.c): by rows at 24+ rows (6 per thread;
 * from 384, up to 4 chunks a thread, claimed one at a time), by output
 * columns (threads meeting at a barrier after each op) below.
 * sleepy: the pool's threads never spin, so every call wakes sleeping
 * workers and its caller sleeps until they are done. */
static void shared_calls(mj_jit *jit, bool frozen, mjt_call_kind kind, int pool, bool columns, bool sleepy,
                         const char *name) {
    int64_t in = pool > 1 ? 256 : 32;
    mj_module *m = model(pool > 1 ? "mlp:256,1024,256:act=gelu" : "mlp:32,48,8:act=gelu", 31, 0.5);
    mj_graph *g = m ? mjt_trace_ones(m, in) : NULL;
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.frozen = frozen;
    o.threads = pool;
    mj_compiled *c = NULL;
    if (!g || (kind == MJT_CALL_COMPILED && mj_jit_compile(jit, g, &o, &c) != MJ_OK)) {
        fail(name, mj_last_error());
        mj_graph_free(g);
        mj_module_free(m);
        return;
    }
    if (sleepy) mj_compiled_pool_spin_for_tests(c, 0);
    mjt_call_arg args[T];
    for (int i = 0; i < T; i++) {
        int64_t batch = pool == 1 ? 1 + i : columns ? 4 + 2 * i : 24 + 56 * i;
        args[i] = (mjt_call_arg){.c = c, .m = m, .g = g, .kind = kind, .iters = 100,
                                 .x = randn(batch, in, 50 + (uint64_t)i)};
        mj_module_forward(m, args[i].x, &args[i].want);
    }
    run_callers(args, name);
}

/* Compiles g (frozen or live) with a pool of `threads` and runs the T
 * callers on their own items of the given shape, each checked against m's
 * forward (the model g was traced from) or, without m, the interpreter;
 * takes m and g (g NULL: failed to build, `why` says how). */
static void graph_calls(mj_jit *jit, mj_module *m, mj_graph *g, const char *why, int rank, const int64_t *shape,
                        bool frozen, int threads, int iters, uint64_t seed, const char *name) {
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.frozen = frozen;
    o.threads = threads;
    mj_compiled *c = NULL;
    if (!g || mj_jit_compile(jit, g, &o, &c) != MJ_OK) {
        fail(name, g ? mj_last_error() : why);
        mj_graph_free(g);
        mj_module_free(m);
        return;
    }
    mjt_call_arg args[T];
    for (int i = 0; i < T; i++) {
        mj_rng rng;
        mj_rng_seed(&rng, seed + (uint64_t)i);
        args[i] = (mjt_call_arg){.c = c, .m = m, .g = g, .kind = MJT_CALL_COMPILED, .iters = iters};
        mj_tensor_randn(&args[i].x, rank, shape, &rng);
        if (m) mj_module_forward(m, args[i].x, &args[i].want);
        else mj_graph_run(g, args[i].x, &args[i].want);
    }
    run_callers(args, name);
}

/* Traces m on one item of the given shape, then graph_calls; takes m
 * (NULL: the model could not be built). */
static void one_item_calls(mj_jit *jit, mj_module *m, int rank, const int64_t *shape, bool frozen, int threads,
                           int iters, uint64_t seed, const char *name) {
    mj_tensor *ex = NULL;
    mj_graph *g = NULL;
    if (m && mj_tensor_ones(&ex, rank, shape) == MJ_OK && mj_trace_module(m, ex, &g) != MJ_OK) g = NULL;
    mj_tensor_release(ex);
    graph_calls(jit, m, g, m ? mj_last_error() : "could not build the model", rank, shape, frozen, threads, iters,
                seed, name);
}

/* ---- 1b. a frozen sparse model on a sequence, batch 1 ----------------- */
/* One item of 256 rows (a transformer's sequence): fewer items than the
 * pool's threads, so its sparse layers hand out chunks of rows by claim
 * (jit/lower.c), while other callers find the pool busy and run alone. */
static void sequence_calls(mj_jit *jit, const char *name) {
    const int64_t shape[3] = {1, 256, 96};
    one_item_calls(jit, model("mlp:96,256,96:act=relu", 37, 0.1), 3, shape, true, 4, 40, 70, name);
}

/* ---- 1c. a pruned conv block, batch 1 -------------------------------- */
/* conv -> relu -> conv, 16 -> 16 channels at 32x32, 80% of each conv's
 * weights masked: fewer images than the pool's threads, so they share each
 * conv. Frozen: the tap table's padding copy, tiles and rows by claim
 * (jit/lower_conv_sparse.c), the first conv storing its value padded for
 * the second; live: the register tile's rows by claim (jit/lower_cnn.c). */
static mj_module *masked_conv(mj_rng *rng) {
    mj_conv2d_params p;
    mj_conv2d_params_init(&p);
    p.padding[0] = p.padding[1] = 1;
    mj_module *m = NULL;
    mj_tensor *mask = NULL;
    mj_parametrization *fs = NULL;
    if (mj_conv2d_new(&m, 16, 16, (int64_t[]){3, 3}, &p, true, rng) != MJ_OK ||
        mj_tensor_zeros(&mask, 4, (int64_t[]){16, 16, 3, 3}) != MJ_OK) {
        mj_module_free(m);
        return NULL;
    }
    for (int64_t i = 0; i < 16 * 16 * 9; i++) mj_tensor_data_mut(mask)[i] = mj_rng_uniform(rng) < 0.2 ? 1.0f : 0.0f;
    if (mj_fake_sparsity_new(&fs, mask) != MJ_OK || mj_register_parametrization(m, "weight", fs) != MJ_OK) {
        mj_module_free(m);
        m = NULL;
    }
    mj_tensor_release(mask);
    return m;
}

static void conv_calls(mj_jit *jit, bool frozen, const char *name) {
    mj_rng rng;
    mj_rng_seed(&rng, 41);
    mj_module *parts[3] = {masked_conv(&rng), NULL, masked_conv(&rng)}, *m = NULL;
    if (!parts[0] || !parts[2] || mj_activation_module_new(&parts[1], MJ_ACT_RELU) != MJ_OK ||
        mj_sequential_new(&m, 3, parts) != MJ_OK) {
        for (int i = 0; i < 3; i++) mj_module_free(parts[i]);
        m = NULL;
    }
    const int64_t shape[4] = {1, 16, 32, 32};
    one_item_calls(jit, m, 4, shape, frozen, 3, 20, 80, name);
}

/* ---- 1d. attention, batch 1 -------------------------------------------- */
/* softmax(q q^T / c) q over 8 heads of one item: fewer items than the
 * pool's threads, so they claim the heads, each running a head's matmul,
 * softmax and second matmul (mj_lw_emit_attention, jit/lower_gemm.c). */
static void attention_calls(mj_jit *jit, const char *name) {
    static const char text[] = "maskjit-ir 1\n%0 = input \"q\" : f32[B,8,128,64]\n"
                               "%1 = transpose %0 : f32[B,8,64,128]\n%2 = matmul %0, %1 : f32[B,8,128,128]\n"
                               "%3 = const \"c\" : f32[1] = [0x1p+3]\n%4 = div %2, %3 : f32[B,8,128,128]\n"
                               "%5 = softmax %4 {dim=-1} : f32[B,8,128,128]\n"
                               "%6 = matmul %5, %0 : f32[B,8,128,64]\nreturn %6\n";
    mj_graph *g = NULL;
    if (mj_graph_parse(text, &g) != MJ_OK) g = NULL;
    const int64_t shape[4] = {1, 8, 128, 64};
    graph_calls(jit, NULL, g, mj_last_error(), 4, shape, false, 4, 10, 90, name);
}

/* ---- 2. each thread its own model: trace + compile on a shared JIT -------- */
static void own_models(mj_jit *jit) {
    mjt_own_arg args[T];
    for (int i = 0; i < T; i++) args[i] = (mjt_own_arg){.jit = jit, .index = i};
    if (!mjt_run_threads(T, mjt_own_main, args, sizeof *args)) fail("own models", "pthread_create failed");
    for (int i = 0; i < T; i++)
        if (!args[i].ok) fail("own models", args[i].err);
}

/* ---- 3. thread-local error messages ------------------------------------ */
static void error_messages(void) {
    mjt_err_arg args[T];
    for (int i = 0; i < T; i++) args[i] = (mjt_err_arg){.index = i};
    if (!mjt_run_threads(T, mjt_err_main, args, sizeof *args)) fail("error messages", "pthread_create failed");
    for (int i = 0; i < T; i++)
        if (args[i].bad) fail("error messages", "a thread read another thread's message");
}

int main(void) {
    mj_jit *jit;
    if (mj_jit_new(&jit) != MJ_OK) {
        fprintf(stderr, "tsan_stress: %s\n", mj_last_error());
        return 1;
    }
    struct {
        const char *name;
        int id;
    } scenarios[] = {
        {"8 threads call one compiled model (live)", 0},
        {"8 threads call one compiled model (frozen)", 1},
        {"8 threads: eager forward of one module + interpreter on one graph", 2},
        {"8 threads trace and compile their own models (shared JIT, 2 own JITs)", 3},
        {"8 threads: thread-local error messages", 4},
        {"8 threads call one compiled model with a 4-thread pool splitting rows (live)", 5},
        {"8 threads call one compiled model with a 4-thread pool splitting columns (live)", 6},
        {"8 threads call one compiled model with a 4-thread pool splitting columns (frozen)", 7},
        {"8 threads call one frozen sparse model on a 256-row sequence, its 4-thread pool claiming rows", 8},
        {"8 threads call one frozen pruned conv block at batch 1, its 3-thread pool sharing the convs", 9},
        {"8 threads call one pruned conv block (live) at batch 1, its 3-thread pool sharing the convs", 10},
        {"8 threads call one compiled attention at batch 1, its 4-thread pool claiming the heads", 11},
        {"8 threads call one compiled model with a 4-thread pool that sleeps at once, splitting rows", 12},
        {"8 threads call one compiled model with a 4-thread pool that sleeps at once, splitting columns", 13},
    };
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
        int before = failures;
        switch (scenarios[i].id) {
        case 0: shared_calls(jit, false, MJT_CALL_COMPILED, 1, false, false, scenarios[i].name); break;
        case 1: shared_calls(jit, true, MJT_CALL_COMPILED, 1, false, false, scenarios[i].name); break;
        case 2: shared_calls(jit, false, MJT_CALL_READ, 1, false, false, scenarios[i].name); break;
        case 5: shared_calls(jit, false, MJT_CALL_COMPILED, 4, false, false, scenarios[i].name); break;
        case 6: shared_calls(jit, false, MJT_CALL_COMPILED, 4, true, false, scenarios[i].name); break;
        case 7: shared_calls(jit, true, MJT_CALL_COMPILED, 4, true, false, scenarios[i].name); break;
        case 8: sequence_calls(jit, scenarios[i].name); break;
        case 9: conv_calls(jit, true, scenarios[i].name); break;
        case 10: conv_calls(jit, false, scenarios[i].name); break;
        case 11: attention_calls(jit, scenarios[i].name); break;
        case 12: shared_calls(jit, false, MJT_CALL_COMPILED, 4, false, true, scenarios[i].name); break;
        case 13: shared_calls(jit, false, MJT_CALL_COMPILED, 4, true, true, scenarios[i].name); break;
        case 3: own_models(jit); break;
        case 4: error_messages(); break;
        }
        printf("%s: %s\n", failures == before ? "PASS" : "FAIL", scenarios[i].name);
    }
    mj_jit_free(jit);
    mj_llvm_shutdown();
    return failures;
}
