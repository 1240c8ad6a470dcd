/* jit/sparse.c: the mask-specialised frozen linear kernel, JIT'd here on its
 * own (a small LLJIT harness) and compared with eager mj_linear +
 * mj_activation on the masked weight: bit-identical in exact mode, within
 * tolerance in fast mode. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/Core.h>
#include <llvm-c/Error.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/Orc.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include "jit/jit_internal.h"
#include "jit/sparse.h"
#include "maskjit.h"
#include "test_util.h"

typedef void (*sparse_fn)(const float *x, float *y, int64_t batch, float *scratch, const float *res);

typedef struct harness {
    LLVMOrcResourceTrackerRef rt;
    sparse_fn fn;
    int64_t out, in;
    bool residual;
} harness;

/* One LLJIT per test (Criterion runs each test in its own process); each
 * kernel under its own resource tracker. */
static LLVMOrcLLJITRef g_jit;
static int g_count;

static void jit_fini(void) {
    if (!g_jit) return;
    LLVMErrorRef err = LLVMOrcDisposeLLJIT(g_jit);
    if (err) LLVMConsumeError(err);
    g_jit = NULL;
}

TestSuite(sparse, .fini = jit_fini);

/* NULL: kernels are compiled for the host's features; else for these (a
 * test that sets them compiles every kernel of its process that way: the
 * LLJIT takes the first kernel's target machine), and the kernel's assembly
 * must have ymm registers and no zmm. */
static const char *g_features;

static char *target_features(void) {
    return g_features ? LLVMCreateMessage(g_features) : LLVMGetHostCPUFeatures();
}

/* The host's target machine (g_features); m gets its triple and data layout. */
static LLVMTargetMachineRef host_tm(LLVMModuleRef m) {
    char *triple = LLVMGetDefaultTargetTriple(), *cpu = LLVMGetHostCPUName(), *feat = target_features();
    LLVMTargetRef t;
    char *err = NULL;
    cr_assert(!LLVMGetTargetFromTriple(triple, &t, &err), "%s", err ? err : "");
    LLVMTargetMachineRef tm = LLVMCreateTargetMachine(t, triple, cpu, feat, LLVMCodeGenLevelAggressive,
                                                      LLVMRelocDefault, LLVMCodeModelJITDefault);
    cr_assert(tm);
    LLVMSetTarget(m, triple);
    LLVMTargetDataRef td = LLVMCreateTargetDataLayout(tm);
    LLVMSetModuleDataLayout(m, td);
    LLVMDisposeTargetData(td);
    LLVMDisposeMessage(triple);
    LLVMDisposeMessage(cpu);
    LLVMDisposeMessage(feat);
    return tm;
}

/* Emit, optimise with O3 (as jit/jit.c does), JIT, look up. */
static void harness_init_r(harness *h, const float *w, const float *b, int64_t out, int64_t in, mj_act act,
                           bool residual, bool fast) {
    LLVMInitializeNativeTarget();
    LLVMInitializeNativeAsmPrinter();
    h->out = out;
    h->in = in;
    h->residual = residual;
    LLVMOrcThreadSafeContextRef tsc = LLVMOrcCreateNewThreadSafeContext();
    LLVMContextRef ctx = LLVMOrcThreadSafeContextGetContext(tsc);
    LLVMModuleRef m = LLVMModuleCreateWithNameInContext("sparse_test", ctx);
    char name[32];
    snprintf(name, sizeof name, "sparse_lin%d", g_count++);
    char *feat = target_features(); /* the harness compiles for the host (or g_features) */
    int vw = mj_features_vector_width(feat);
    LLVMDisposeMessage(feat);
    LLVMValueRef f = mj_sparse_emit_linear(m, name, w, b, out, in, act, residual, fast, vw);
    cr_assert(f != NULL, "emit failed");
    char *msg = NULL;
    cr_assert(!LLVMVerifyModule(m, LLVMReturnStatusAction, &msg), "invalid IR: %s", msg);
    LLVMDisposeMessage(msg);

    LLVMTargetMachineRef tm = host_tm(m);
    LLVMPassBuilderOptionsRef po = LLVMCreatePassBuilderOptions();
    LLVMErrorRef err = LLVMRunPasses(m, "default<O3>", tm, po);
    LLVMDisposePassBuilderOptions(po);
    cr_assert(!err);
    if (g_features) {
        LLVMMemoryBufferRef buf = NULL;
        char *emsg = NULL;
        cr_assert(!LLVMTargetMachineEmitToMemoryBuffer(tm, m, LLVMAssemblyFile, &emsg, &buf), "%s", emsg ? emsg : "");
        size_t n = LLVMGetBufferSize(buf);
        char *as = malloc(n + 1);
        memcpy(as, LLVMGetBufferStart(buf), n);
        as[n] = 0;
        LLVMDisposeMemoryBuffer(buf);
        cr_assert(strstr(as, "ymm") && !strstr(as, "zmm"), "%s: expected AVX2 code only", name);
        free(as);
    }

    if (!g_jit) {
        LLVMOrcLLJITBuilderRef builder = LLVMOrcCreateLLJITBuilder();
        LLVMOrcLLJITBuilderSetJITTargetMachineBuilder(builder,
                                                      LLVMOrcJITTargetMachineBuilderCreateFromTargetMachine(tm));
        cr_assert(!LLVMOrcCreateLLJIT(&g_jit, builder));
        LLVMOrcDefinitionGeneratorRef gen;
        cr_assert(!LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(&gen, LLVMOrcLLJITGetGlobalPrefix(g_jit), NULL,
                                                                        NULL));
        LLVMOrcJITDylibAddGenerator(LLVMOrcLLJITGetMainJITDylib(g_jit), gen);
    } else {
        LLVMDisposeTargetMachine(tm);
    }
    LLVMOrcThreadSafeModuleRef tsm = LLVMOrcCreateNewThreadSafeModule(m, tsc);
    LLVMOrcDisposeThreadSafeContext(tsc);
    h->rt = LLVMOrcJITDylibCreateResourceTracker(LLVMOrcLLJITGetMainJITDylib(g_jit));
    cr_assert(!LLVMOrcLLJITAddLLVMIRModuleWithRT(g_jit, h->rt, tsm));
    LLVMOrcExecutorAddress addr = 0;
    err = LLVMOrcLLJITLookup(g_jit, &addr, name);
    if (err) {
        char *em = LLVMGetErrorMessage(err);
        cr_assert(false, "lookup: %s", em);
    }
    h->fn = (sparse_fn)(uintptr_t)addr;
}

static void harness_init(harness *h, const float *w, const float *b, int64_t out, int64_t in, mj_act act,
                         bool fast) {
    harness_init_r(h, w, b, out, in, act, false, fast);
}

static void harness_free(harness *h) {
    LLVMErrorRef err = LLVMOrcResourceTrackerRemove(h->rt);
    if (err) LLVMConsumeError(err);
    LLVMOrcReleaseResourceTracker(h->rt);
}

#define CANARY 0x7fc0dead

/* Runs the kernel on x [batch, in] (+ res [batch, out] for a residual
 * kernel) into a fresh tensor, checking that neither y nor the scratch is
 * written past its end. */
static mj_tensor *harness_run_r(const harness *h, const mj_tensor *x, const mj_tensor *res) {
    int64_t batch = mj_tensor_dim(x, 0);
    int64_t ns = mj_sparse_scratch_floats(h->in, h->out, batch);
    cr_assert(ns >= 0);
    size_t sbytes = (((size_t)ns + 16) * sizeof(float) + 63) & ~(size_t)63;
    float *scratch = aligned_alloc(64, sbytes);
    uint32_t *sc = (uint32_t *)scratch;
    for (size_t i = 0; i < sbytes / 4; i++) sc[i] = CANARY;
    float *y = malloc(((size_t)(batch * h->out) + 16) * sizeof(float));
    uint32_t *yc = (uint32_t *)y;
    for (int64_t i = 0; i < batch * h->out + 16; i++) yc[i] = CANARY;
    cr_assert_eq(h->residual, res != NULL);
    h->fn(mj_tensor_data(x), y, batch, scratch, res ? mj_tensor_data(res) : NULL);
    for (size_t i = (size_t)ns; i < sbytes / 4; i++) cr_assert_eq(sc[i], CANARY, "scratch overrun at %zu", i);
    for (int64_t i = batch * h->out; i < batch * h->out + 16; i++) cr_assert_eq(yc[i], CANARY, "y overrun");
    mj_tensor *t;
    int64_t shape[2] = {batch, h->out};
    OK(mj_tensor_from_data(&t, 2, shape, y));
    MJT_FREE(y, scratch);
    return t;
}

static mj_tensor *harness_run(const harness *h, const mj_tensor *x) { return harness_run_r(h, x, NULL); }

typedef enum { MASK_RANDOM, MASK_ROWS, MASK_BLOCK4, MASK_COLS, MASK_BLOCK4_HOLES, MASK_RAMP } mask_kind;

/* randn weight times a 0/1 mask of the given density (the eager masked
 * weight, as FakeSparsity computes it: w * mask) */
static mj_tensor *masked_weight(int64_t out, int64_t in, double density, mask_kind kind, uint64_t seed) {
    mj_rng rng = mjt_rng(seed);
    int64_t shape[2] = {out, in};
    mj_tensor *w, *mask, *wm;
    OK(mj_tensor_randn(&w, 2, shape, &rng));
    OK(mj_tensor_zeros(&mask, 2, shape));
    float *md = mj_tensor_data_mut(mask);
    for (int64_t j = 0; j < out; j++) {
        bool row_on = mj_rng_uniform(&rng) < density;
        for (int64_t k = 0; k < in; k++) {
            bool on;
            switch (kind) {
            case MASK_ROWS: on = row_on; break;
            case MASK_BLOCK4:
                if (k % 4 == 0) row_on = mj_rng_uniform(&rng) < density;
                on = row_on;
                break;
            case MASK_BLOCK4_HOLES: /* 1x4 blocks, one in 8 kept ones missing a weight */
                if (k % 4 == 0) row_on = mj_rng_uniform(&rng) < density;
                on = row_on && !(k % 4 == 2 && mj_rng_uniform(&rng) < 0.125);
                break;
            case MASK_COLS: on = k % 3 == 0 && mj_rng_uniform(&rng) < density; break;
            case MASK_RAMP: /* row j at density * (j % 7) / 3, its nonzeros in the first (j % 3 + 1) thirds */
                on = k * 3 < in * (j % 3 + 1) && mj_rng_uniform(&rng) < density * (double)(j % 7) / 3;
                break;
            default: on = mj_rng_uniform(&rng) < density;
            }
            md[j * in + k] = on ? 1.0f : 0.0f;
        }
    }
    OK(mj_mul(&wm, w, mask));
    MJT_RELEASE(w, mask);
    return wm;
}

static mj_tensor *reference(const mj_tensor *x, const mj_tensor *w, const mj_tensor *b, mj_act act) {
    mj_tensor *lin, *y;
    OK(mj_linear(&lin, x, w, b));
    OK(mj_activation(&y, act, lin));
    mj_tensor_release(lin);
    return y;
}

/* huge: include values whose sums overflow (exact mode only: in fast mode a
 * different summation order may turn inf - inf into NaN or not) */
static mj_tensor *rand_input(int64_t batch, int64_t in, uint64_t seed, bool huge) {
    mj_rng rng = mjt_rng(seed);
    mj_tensor *x = mjt_randn2(batch, in, &rng);
    /* a few special finite values: signed zeros, denormals, large values */
    float *d = mj_tensor_data_mut(x);
    static const float special[] = {0.0f, -0.0f, 1e-40f, -1e-40f, 3e38f, -3e38f, 1e20f, 88.0f, -88.0f, 10.0f};
    int64_t n = batch * in;
    for (int64_t i = 0; i < n && i < (huge ? 10 : 4); i++) d[(i * 7919) % n] = special[i];
    return x;
}

/* Compile once, check every batch: exact must be bitwise equal. With
 * residual, the reference adds a random [batch, out] tensor after the
 * activation (eager mj_add), as linear_add / linear_act_add define it. */
static void check_case_r(int64_t out, int64_t in, double density, mask_kind kind, bool bias, mj_act act,
                         bool residual, bool fast, const int64_t *batches, int nb) {
    uint64_t seed = (uint64_t)(out * 1000003 + in * 7 + (int64_t)(density * 1000) + kind * 13 + act);
    mj_tensor *w = masked_weight(out, in, density, kind, seed);
    mj_tensor *b = NULL;
    if (bias) {
        mj_rng rng = mjt_rng(seed + 1);
        int64_t bs[1] = {out};
        OK(mj_tensor_randn(&b, 1, bs, &rng));
    }
    harness h;
    harness_init_r(&h, mj_tensor_data(w), b ? mj_tensor_data(b) : NULL, out, in, act, residual, fast);
    for (int i = 0; i < nb; i++) {
        mj_tensor *x = rand_input(batches[i], in, seed + 2 + (uint64_t)i, !fast);
        mj_tensor *want = reference(x, w, b, act), *res = NULL;
        if (residual) {
            mj_tensor *sum;
            res = rand_input(batches[i], out, seed + 99 + (uint64_t)i, false);
            OK(mj_add(&sum, want, res));
            mj_tensor_release(want);
            want = sum;
        }
        mj_tensor *got = harness_run_r(&h, x, res);
        mj_tensor_release(res);
        char buf[256];
        if (fast) {
            mj_compare c = mj_tensor_compare(got, want, 1e-4, 1e-3);
            mj_compare_describe(&c, got, want, buf, sizeof buf);
            cr_assert(c.close, "fast %lldx%lld density %g kind %d act %s bias %d batch %lld: %s", (long long)out,
                      (long long)in, density, kind, mj_act_name(act), bias, (long long)batches[i], buf);
        } else if (!mj_tensor_equal(got, want)) {
            mj_compare c = mj_tensor_compare(got, want, 0, 0);
            mj_compare_describe(&c, got, want, buf, sizeof buf);
            cr_assert(false, "exact %lldx%lld density %g kind %d act %s bias %d batch %lld not bit-identical: %s",
                    (long long)out, (long long)in, density, kind, mj_act_name(act), bias, (long long)batches[i], buf);
        }
        MJT_RELEASE(x, want, got);
    }
    harness_free(&h);
    MJT_RELEASE(w, b);
}

static void check_case(int64_t out, int64_t in, double density, mask_kind kind, bool bias, mj_act act, bool fast,
                       const int64_t *batches, int nb) {
    check_case_r(out, in, density, kind, bias, act, false, fast, batches, nb);
}

static const double densities[] = {0.0, 0.01, 0.1, 0.5, 1.0};
static const int64_t all_batches[] = {1, 3, 16, 17, 64, 65, 1000};

Test(sparse, small_shapes_every_activation_density_batch) {
    int64_t shapes[][2] = {{1, 1}, {7, 13}};
    /* each activation with and without bias across the densities */
    for (int s = 0; s < 2; s++)
        for (int d = 0; d < 5; d++)
            for (int a = 0; a < MJ_ACT_COUNT; a++)
                check_case(shapes[s][0], shapes[s][1], densities[d], MASK_RANDOM, (s + d + a) % 2, (mj_act)a, false,
                           all_batches, 7);
}

Test(sparse, large_shapes_relu_and_none, .timeout = 600) {
    int64_t shapes[][2] = {{256, 256}, {1000, 300}};
    for (int s = 0; s < 2; s++)
        for (int d = 0; d < 5; d++) {
            check_case(shapes[s][0], shapes[s][1], densities[d], MASK_RANDOM, true, MJ_ACT_RELU, false, all_batches,
                       7);
            check_case(shapes[s][0], shapes[s][1], densities[d], MASK_RANDOM, false, MJ_ACT_NONE, false,
                       all_batches, 6); /* up to 65 */
        }
}

Test(sparse, large_shapes_every_activation) {
    static const int64_t b[] = {17, 64};
    for (int a = 0; a < MJ_ACT_COUNT; a++) {
        check_case(256, 256, 0.1, MASK_RANDOM, true, (mj_act)a, false, b, 2);
        check_case(1000, 300, 0.5, MASK_RANDOM, a % 2, (mj_act)a, false, b, 1);
    }
}

Test(sparse, row_masks_block_masks_dropped_columns) {
    static const int64_t b[] = {1, 17, 64, 65};
    for (int bias = 0; bias < 2; bias++) {
        check_case(256, 256, 0.5, MASK_ROWS, bias, MJ_ACT_RELU, false, b, 4);
        check_case(64, 48, 0.1, MASK_ROWS, bias, MJ_ACT_GELU, false, b, 4);
        check_case(256, 256, 0.1, MASK_BLOCK4, bias, MJ_ACT_RELU, false, b, 4);
        check_case(256, 258, 0.1, MASK_BLOCK4, bias, MJ_ACT_NONE, false, b, 4);
        /* runs of 4 columns (jit/sparse.c), some with a zero weight inside,
         * over several k-blocks */
        check_case(96, 1024, 0.1, MASK_BLOCK4_HOLES, bias, MJ_ACT_TANH, false, b, 4);
        check_case(96, 1024, 0.2, MASK_BLOCK4_HOLES, bias, MJ_ACT_RELU, true, b, 4);
        check_case(256, 256, 0.3, MASK_COLS, bias, MJ_ACT_RELU, false, b, 4);
        check_case(33, 100, 0.3, MASK_COLS, bias, MJ_ACT_SIGMOID, false, b, 4);
    }
}

/* The kernel groups rows by their nonzero counts, not by index, and a
 * group's t-th nonzeros go together, so a group's rows reach a k-block's
 * columns at different times: rows of very different counts (empty ones
 * too) whose nonzeros end at different k, over several k-blocks. */
Test(sparse, rows_of_unequal_counts_grouped_by_count) {
    static const int64_t b[] = {1, 17, 64, 65};
    for (int bias = 0; bias < 2; bias++) {
        check_case(37, 1000, 0.3, MASK_RAMP, bias, MJ_ACT_RELU, false, b, 4);
        check_case(64, 2048, 0.05, MASK_RAMP, bias, MJ_ACT_NONE, false, b, 4);
        check_case(13, 777, 0.6, MASK_RAMP, bias, MJ_ACT_GELU, false, b, 4);
        check_case(40, 1024, 0.3, MASK_RAMP, bias, MJ_ACT_TANH, true, b, 4);
    }
}

/* All-zero rows give exactly +0.0f + b (or +0.0f), then the activation,
 * checked against a loop written here. */
Test(sparse, all_zero_rows_are_bias_only) {
    int64_t out = 20, in = 9, shape[2] = {out, in};
    float w[20 * 9] = {0}, b[20];
    for (int j = 0; j < out; j++) {
        b[j] = j % 3 == 0 ? -0.0f : (float)(j - 10) * 0.25f;
        if (j % 4 == 1) w[j * in + j % in] = 1.5f; /* a few rows keep one weight */
    }
    (void)shape;
    harness h;
    harness_init(&h, w, b, out, in, MJ_ACT_SIGMOID, false);
    mj_rng rng = mjt_rng(5);
    mj_tensor *x = mjt_randn2(5, in, &rng);
    mj_tensor *y = harness_run(&h, x);
    const float *X = mj_tensor_data(x), *Y = mj_tensor_data(y);
    for (int64_t i = 0; i < 5; i++)
        for (int64_t j = 0; j < out; j++) {
            float acc = 0.0f;
            if (j % 4 == 1) acc = fmaf(X[i * in + j % in], 1.5f, acc);
            float want = mj_act_apply(MJ_ACT_SIGMOID, acc + b[j]);
            float got = Y[i * out + j];
            cr_assert(memcmp(&got, &want, 4) == 0, "[%lld][%lld]: %a vs %a", (long long)i, (long long)j, got, want);
        }
    MJT_RELEASE(x, y);
    harness_free(&h);
}

Test(sparse, fast_mode_within_tolerance) {
    static const int64_t b[] = {1, 17, 64, 65};
    for (int a = 0; a < MJ_ACT_COUNT; a++) check_case(256, 256, 0.1, MASK_RANDOM, true, (mj_act)a, true, b, 4);
    check_case(1000, 300, 0.5, MASK_RANDOM, false, MJ_ACT_RELU, true, b, 4);
    check_case(256, 256, 0.1, MASK_BLOCK4, true, MJ_ACT_NONE, true, b, 4);
}

Test(sparse, profitable) {
    int64_t n = 256;
    mj_tensor *dense = masked_weight(n, n, 1.0, MASK_RANDOM, 1);
    mj_tensor *sparse = masked_weight(n, n, 0.1, MASK_RANDOM, 2);
    mj_tensor *rows = masked_weight(n, n, 0.5, MASK_ROWS, 3);
    cr_assert(!mj_sparse_profitable(mj_tensor_data(dense), n, n));
    cr_assert(mj_sparse_profitable(mj_tensor_data(sparse), n, n));
    cr_assert(mj_sparse_profitable(mj_tensor_data(rows), n, n));
    cr_assert(!mj_sparse_profitable(NULL, n, n));
    cr_assert(!mj_sparse_profitable(mj_tensor_data(dense), 0, n));
    MJT_RELEASE(dense, sparse, rows);
}

Test(sparse, emit_rejects_bad_arguments) {
    LLVMContextRef ctx = LLVMContextCreate();
    LLVMModuleRef m = LLVMModuleCreateWithNameInContext("bad", ctx);
    float w[4] = {1, 0, 0, 1};
    cr_assert_null(mj_sparse_emit_linear(m, "f", w, NULL, 0, 2, MJ_ACT_NONE, false, false, 8));
    cr_assert_null(mj_sparse_emit_linear(m, "f", NULL, NULL, 2, 2, MJ_ACT_NONE, false, false, 8));
    cr_assert_null(mj_sparse_emit_linear(m, "f", w, NULL, 2, 2, MJ_ACT_COUNT, false, false, 8));
    cr_assert_null(mj_sparse_emit_linear(m, "f", w, NULL, 2, 2, MJ_ACT_NONE, false, false, 5));
    cr_assert_null(LLVMGetNamedFunction(m, "f"));
    LLVMDisposeModule(m);
    LLVMContextDispose(ctx);
}

/* The residual epilogue (linear_add / linear_act_add): added after the
 * activation as y is transposed back, in the full tiles, the tail columns
 * and the partial chunk; bit-identical in exact mode. */
Test(sparse, residual_add_after_activation_every_path) {
    int64_t shapes[][2] = {{1, 1}, {7, 13}, {100, 70}, {129, 256}};
    for (int s = 0; s < 4; s++)
        for (int f = 0; f < 2; f++)
            for (int a = 0; a < 3; a++) {
                mj_act act = a == 0 ? MJ_ACT_NONE : a == 1 ? MJ_ACT_RELU : MJ_ACT_GELU;
                check_case_r(shapes[s][0], shapes[s][1], s == 3 ? 0.1 : 0.3, s == 2 ? MASK_BLOCK4 : MASK_RANDOM,
                             (s + a) % 2 == 0, act, true, f == 1, all_batches, 7);
            }
}

/* Batches 1..13 (every partial vector of a chunk, with AVX-512 and AVX2)
 * and 128 (two whole chunks of 4 vectors, W7's sequence at batch 1), odd
 * widths, the densities around W7's 10%, 1x4 blocks, with and without bias,
 * activations with and without libm, the residual: bit-identical to eager.
 * The widths 300 and 1030 give several k-blocks, so the accumulators go
 * through yT between blocks and get bias and activation after the last. */
static void check_rows_table(void) {
    static const int64_t batches[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 128};
    static const double dens[] = {0.0, 0.05, 0.1, 0.5, 1.0};
    static const struct {
        int64_t out, in;
        mask_kind kind;
    } shapes[] = {{1, 3, MASK_RANDOM}, {13, 7, MASK_RANDOM}, {33, 300, MASK_RANDOM}, {67, 1030, MASK_RANDOM},
                  {31, 260, MASK_BLOCK4}, {20, 1032, MASK_BLOCK4_HOLES}};
    static const mj_act acts[] = {MJ_ACT_NONE, MJ_ACT_RELU, MJ_ACT_GELU, MJ_ACT_TANH};
    int n = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
        for (int d = 0; d < 5; d++, n++) {
            mj_act act = acts[n % 4];
            check_case_r(shapes[si].out, shapes[si].in, dens[d], shapes[si].kind, n % 2 == 0, act, n % 3 == 1, false,
                         batches, 14);
        }
}

Test(sparse, rows_1_to_13_and_128_odd_widths_densities, .timeout = 600) { check_rows_table(); }

/* The same table with AVX2 forced (8-wide vectors, 32-row chunks): the
 * kernel follows the vector width it is given and uses no zmm register. */
Test(sparse, rows_table_with_avx2_forced, .timeout = 600) {
    g_features = MJT_AVX2_FEATURES;
    char *f = target_features();
    cr_assert_eq(mj_features_vector_width(f), 8);
    LLVMDisposeMessage(f);
    check_rows_table();
}
