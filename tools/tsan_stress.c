/* The concurrency scenarios of docs/threads.md as one plain program, for
 * ThreadSanitizer (tools/tsan.sh). Criterion cannot run under TSan (its
 * worker arena collides with TSan's shadow memory: Snaipe/Criterion#274),
 * so these mirror the threaded tests of tests/test_reliability.c, the JIT
 * suite and the trace suite without it. Every result is compared with the
 * eager forward computed single-threaded; the exit status is the number of
 * failed scenarios. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

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

static mj_graph *trace(mj_module *m, int64_t in) {
    mj_tensor *ex;
    int64_t shape[2] = {3, in};
    if (mj_tensor_ones(&ex, 2, shape) != MJ_OK) return NULL;
    mj_graph *g = NULL;
    mj_status s = mj_trace_module(m, ex, &g);
    mj_tensor_release(ex);
    return s == MJ_OK ? g : NULL;
}

static mj_tensor *randn(int64_t batch, int64_t in, uint64_t seed) {
    mj_rng rng;
    mj_rng_seed(&rng, seed);
    int64_t shape[2] = {batch, in};
    mj_tensor *x = NULL;
    mj_tensor_randn(&x, 2, shape, &rng);
    return x;
}

/* ---- 1. one compiled model, 8 callers ---------------------------------- */
typedef struct call_arg {
    mj_compiled *c;
    mj_module *m;
    mj_graph *g;
    mj_tensor *x, *want;
    int mode; /* 0 compiled, 1 eager forward + interpreter */
    int bad;
} call_arg;

static void *call_main(void *p) {
    call_arg *a = p;
    for (int i = 0; i < 100; i++) {
        mj_tensor *y = NULL;
        mj_status s;
        if (a->mode == 0) s = mj_compiled_run(a->c, a->x, &y);
        else if (i & 1) s = mj_graph_run(a->g, a->x, &y);
        else s = mj_module_forward(a->m, a->x, &y);
        if (s != MJ_OK || !mj_tensor_equal(y, a->want)) a->bad++;
        mj_tensor_release(y);
    }
    return NULL;
}

/* pool > 1: the model's own pool splits the calls of a model wide enough to
 * pass PAR_MIN_FLOPS (jit/compiled.c): by rows at 24+ rows (6 per thread),
 * by output columns (threads meeting at a barrier after each op) below. */
static void shared_calls(mj_jit *jit, bool frozen, int mode, int pool, bool columns, const char *name) {
    int64_t in = pool > 1 ? 256 : 32;
    mj_module *m = model(pool > 1 ? "mlp:256,1024,256:act=gelu" : "mlp:32,48,8:act=gelu", 31, 0.5);
    mj_graph *g = m ? trace(m, in) : NULL;
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.frozen = frozen;
    o.threads = pool;
    mj_compiled *c = NULL;
    if (!g || (mode == 0 && mj_jit_compile(jit, g, &o, &c) != MJ_OK)) {
        fail(name, mj_last_error());
        mj_graph_free(g);
        mj_module_free(m);
        return;
    }
    pthread_t th[T];
    call_arg args[T];
    for (int i = 0; i < T; i++) {
        int64_t batch = pool == 1 ? 1 + i : columns ? 4 + 2 * i : 24 + 16 * i;
        args[i] = (call_arg){.c = c, .m = m, .g = g, .mode = mode, .x = randn(batch, in, 50 + (uint64_t)i)};
        mj_module_forward(m, args[i].x, &args[i].want);
    }
    for (int i = 0; i < T; i++) pthread_create(&th[i], NULL, call_main, &args[i]);
    for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < T; i++) {
        if (args[i].bad) fail(name, "a thread got a result that differs from eager");
        mj_tensor_release(args[i].x);
        mj_tensor_release(args[i].want);
    }
    mj_compiled_free(c);
    mj_graph_free(g);
    mj_module_free(m);
}

/* ---- 2. each thread its own model: trace + compile on a shared JIT -------- */
typedef struct own_arg {
    mj_jit *jit;
    int index, ok;
} own_arg;

static void *own_main(void *p) {
    own_arg *a = p;
    static const char *const acts[] = {"relu", "gelu", "tanh", "sigmoid"};
    char spec[96];
    int64_t in = 8 + a->index;
    snprintf(spec, sizeof spec, "mlp:%lld,%d,5:act=%s", (long long)in, 12 + a->index, acts[a->index % 4]);
    mj_module *m = model(spec, 100 + (uint64_t)a->index, 0.6);
    mj_graph *g = m ? trace(m, in) : NULL;
    mj_jit *own = NULL;
    mj_compiled *c = NULL;
    mj_tensor *x = randn(4, in, 7), *want = NULL, *got = NULL;
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.frozen = a->index % 2;
    if (g && (a->index % 4 != 3 || mj_jit_new(&own) == MJ_OK) &&
        mj_jit_compile(own ? own : a->jit, g, &o, &c) == MJ_OK &&
        mj_module_forward(m, x, &want) == MJ_OK && mj_compiled_run(c, x, &got) == MJ_OK)
        a->ok = mj_tensor_equal(got, want);
    mj_tensor_release(x);
    mj_tensor_release(want);
    mj_tensor_release(got);
    mj_compiled_free(c);
    mj_jit_free(own);
    mj_graph_free(g);
    mj_module_free(m);
    return NULL;
}

static void own_models(mj_jit *jit) {
    pthread_t th[T];
    own_arg args[T];
    for (int i = 0; i < T; i++) {
        args[i] = (own_arg){.jit = jit, .index = i};
        pthread_create(&th[i], NULL, own_main, &args[i]);
    }
    for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < T; i++)
        if (!args[i].ok) fail("own models", "a thread's compiled model differs from eager or failed");
}

/* ---- 3. thread-local error messages ------------------------------------ */
static void *err_main(void *p) {
    int *bad = p;
    for (int i = 0; i < 500; i++) {
        int64_t shape[2] = {2, -(int64_t)(i + 1)};
        mj_tensor *t;
        char want[32];
        snprintf(want, sizeof want, "(%lld)", (long long)shape[1]);
        if (mj_tensor_zeros(&t, 2, shape) != MJ_ERR_INVALID || !strstr(mj_last_error(), want)) (*bad)++;
    }
    return NULL;
}

static void error_messages(void) {
    pthread_t th[T];
    int bad[T] = {0};
    for (int i = 0; i < T; i++) pthread_create(&th[i], NULL, err_main, &bad[i]);
    for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < T; i++)
        if (bad[i]) fail("error messages", "a thread read another thread's message");
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
    };
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
        int before = failures;
        switch (scenarios[i].id) {
        case 0: shared_calls(jit, false, 0, 1, false, scenarios[i].name); break;
        case 1: shared_calls(jit, true, 0, 1, false, scenarios[i].name); break;
        case 2: shared_calls(jit, false, 1, 1, false, scenarios[i].name); break;
        case 5: shared_calls(jit, false, 0, 4, false, scenarios[i].name); break;
        case 6: shared_calls(jit, false, 0, 4, true, scenarios[i].name); break;
        case 7: shared_calls(jit, true, 0, 4, true, scenarios[i].name); break;
        case 3: own_models(jit); break;
        case 4: error_messages(); break;
        }
        printf("%s: %s\n", failures == before ? "PASS" : "FAIL", scenarios[i].name);
    }
    mj_jit_free(jit);
    mj_llvm_shutdown();
    return failures;
}
