/* The thread harness of the concurrency scenarios (docs/threads.md), shared
 * by the threaded tests (test_reliability.c, test_jit.c) and by
 * tools/tsan_stress.c, which runs the same scenarios under ThreadSanitizer
 * without Criterion: so plain C here, no assertions; each thread counts
 * what went wrong and the caller checks. */
#ifndef MJT_THREAD_UTIL_H
#define MJT_THREAD_UTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "maskjit.h"

/* The trace of m on ones(3, in), or NULL (mj_last_error says why). */
static inline mj_graph *mjt_trace_ones(mj_module *m, int64_t in) {
    mj_tensor *ex;
    int64_t shape[2] = {3, in};
    if (mj_tensor_ones(&ex, 2, shape) != MJ_OK) return NULL;
    mj_graph *g = NULL;
    mj_status s = mj_trace_module(m, ex, &g);
    mj_tensor_release(ex);
    return s == MJ_OK ? g : NULL;
}

/* Runs fn on n threads (at most 64), the i-th on (char *)args + i * size,
 * and waits for those that started; false if one could not start. */
static inline bool mjt_run_threads(int n, void *(*fn)(void *), void *args, size_t size) {
    pthread_t th[64];
    if (n > 64) return false;
    int started = 0;
    while (started < n && pthread_create(&th[started], NULL, fn, (char *)args + (size_t)started * size) == 0)
        started++;
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    return started == n;
}

/* ---- one shared model, many callers ------------------------------------- */

typedef enum {
    MJT_CALL_COMPILED, /* mj_compiled_run(c) */
    MJT_CALL_READ,     /* mj_module_forward(m) and mj_graph_run(g), alternately */
} mjt_call_kind;

/* A caller: iters calls on x, each result compared with want (bit for bit);
 * bad counts the failed or differing calls, err keeps the last failure. */
typedef struct mjt_call_arg {
    mj_compiled *c;
    mj_module *m;
    mj_graph *g;
    mj_tensor *x, *want;
    mjt_call_kind kind;
    int iters, bad;
    char err[256];
} mjt_call_arg;

static inline void *mjt_call_main(void *p) {
    mjt_call_arg *a = p;
    for (int i = 0; i < a->iters; i++) {
        mj_tensor *y = NULL;
        mj_status s = a->kind == MJT_CALL_COMPILED ? mj_compiled_run(a->c, a->x, &y)
                      : (i & 1)                     ? mj_graph_run(a->g, a->x, &y)
                                                    : mj_module_forward(a->m, a->x, &y);
        if (s != MJ_OK) snprintf(a->err, sizeof a->err, "%s", mj_last_error());
        if (s != MJ_OK || !mj_tensor_equal(y, a->want)) a->bad++;
        mj_tensor_release(y);
    }
    return NULL;
}

/* ---- each thread its own model on a shared JIT --------------------------- */

/* Thread index builds, masks, traces and compiles its own model on jit (every
 * fourth makes its own JIT: concurrent mj_jit_new too), then checks compiled
 * == eager and traced == eager on its own input; ok, or err says why not. */
typedef struct mjt_own_arg {
    mj_jit *jit;
    int index, ok;
    char err[512];
} mjt_own_arg;

static inline void *mjt_own_main(void *p) {
    mjt_own_arg *a = p;
    static const char *const acts[] = {"relu", "gelu", "tanh", "sigmoid"};
    char spec[96];
    int64_t in = 8 + a->index;
    snprintf(spec, sizeof spec, "mlp:%lld,%d,%d:act=%s", (long long)in, 12 + a->index, 5, acts[a->index % 4]);
    mj_rng rng;
    mj_rng_seed(&rng, 100 + (uint64_t)a->index);
    mj_module *m = NULL;
    mj_graph *g = NULL;
    mj_compiled *c = NULL;
    mj_jit *own_jit = NULL;
    mj_tensor *x = NULL, *want = NULL, *got = NULL, *traced = NULL;
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.frozen = a->index % 2 == 1;
    int64_t xs[2] = {4, in};
    const char *step = "spec";
    if (mj_model_from_spec(spec, &rng, &m) != MJ_OK) goto out;
    step = "masks";
    if (mj_model_apply_masks(m, NULL, 0.6, &rng) != MJ_OK) goto out;
    step = "trace";
    if (!(g = mjt_trace_ones(m, in))) goto out;
    step = "compile";
    if (a->index % 4 == 3 && mj_jit_new(&own_jit) != MJ_OK) goto out;
    if (mj_jit_compile(own_jit ? own_jit : a->jit, g, &o, &c) != MJ_OK) goto out;
    step = "run";
    if (mj_tensor_randn(&x, 2, xs, &rng) != MJ_OK || mj_module_forward(m, x, &want) != MJ_OK ||
        mj_compiled_run(c, x, &got) != MJ_OK || mj_graph_run(g, x, &traced) != MJ_OK)
        goto out;
    if (!mj_tensor_equal(got, want) || !mj_tensor_equal(traced, want)) {
        snprintf(a->err, sizeof a->err, "%s: results differ from eager", spec);
        goto done;
    }
    a->ok = 1;
    goto done;
out:
    snprintf(a->err, sizeof a->err, "%s: %s: %s", spec, step, mj_last_error());
done:
    mj_tensor_release(x);
    mj_tensor_release(want);
    mj_tensor_release(got);
    mj_tensor_release(traced);
    mj_compiled_free(c);
    mj_jit_free(own_jit);
    mj_graph_free(g);
    mj_module_free(m);
    return NULL;
}

/* ---- thread-local error messages ----------------------------------------- */

/* Thread index fails 2000 times with its own values and must read back its
 * own message each time; bad counts the times it did not. */
typedef struct mjt_err_arg {
    int index, bad;
} mjt_err_arg;

static inline void *mjt_err_main(void *p) {
    mjt_err_arg *a = p;
    char want[64];
    for (int i = 0; i < 2000; i++) {
        int64_t shape[2] = {a->index + 1, -(int64_t)(i + 1)};
        mj_tensor *t;
        if (mj_tensor_zeros(&t, 2, shape) != MJ_ERR_INVALID) {
            a->bad++;
            continue;
        }
        snprintf(want, sizeof want, "(%lld)", (long long)shape[1]);
        if (!strstr(mj_last_error(), want)) a->bad++;
    }
    return NULL;
}

#endif
