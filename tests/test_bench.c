/* Suite "bench": a smoke test of the benchmark harness (bench/). Every
 * variant's output is compared with eager computed here, masks with a loop
 * over the weights, the FLOP count with the formula, and the program's
 * output formats and argument errors end to end. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bench/peers.h"
#include "test_util.h"

static mj_jit *jit;

static void setup_jit(void) { cr_assert_eq(mj_jit_new(&jit), MJ_OK, "%s", mj_last_error()); }
static void teardown_jit(void) { mj_jit_free(jit); }

static mj_bench_workload small_workload(const char *spec, int64_t batch, mj_bench_mask mask,
                                        double density) {
    mj_bench_workload w;
    memset(&w, 0, sizeof w);
    snprintf(w.id, sizeof w.id, "T");
    snprintf(w.description, sizeof w.description, "test %s", spec);
    snprintf(w.spec, sizeof w.spec, "%s", spec);
    w.batch = batch;
    w.mask = mask;
    w.density = density;
    w.threads = 1;
    w.seed = 7;
    return w;
}

static bool is_exact_name(const char *n) {
    return !strcmp(n, "eager") || !strcmp(n, "interp") || !strcmp(n, "compiled-exact") ||
           !strcmp(n, "compiled-frozen");
}

/* Every variant against eager run here, at several batches. */
static void check_all_variants(const char *spec, mj_bench_mask mask, double density) {
    mj_bench_workload w = small_workload(spec, 3, mask, density);
    mj_bench_setup *s = NULL;
    OK(mj_bench_setup_new(&w, jit, &s));
    int expected = 5;
    for (int k = 0; k < MJ_PEER_COUNT; k++) expected += mj_peer_built((mj_peer_kind)k);
    cr_assert_eq(mj_bench_variant_count(s), expected, "%s: %d variants, expected %d", spec,
                 mj_bench_variant_count(s), expected);
    const int64_t batches[] = {3, 1, 17};
    for (int b = 0; b < 3; b++) {
        if (b > 0) cr_assert_eq(mj_bench_setup_set_batch(s, batches[b]), MJ_OK, "%s", mj_last_error());
        mj_tensor *ref = NULL;
        OK(mj_module_forward(mj_bench_setup_model(s), mj_bench_setup_input(s), &ref));
        cr_assert_eq(mj_tensor_dim(ref, 0), batches[b]);
        for (int i = 0; i < mj_bench_variant_count(s); i++) {
            const char *name = mj_bench_variant_name(s, i);
            mj_tensor *y = NULL;
            cr_assert_eq(mj_bench_variant_output(s, i, &y), MJ_OK, "%s: %s: %s", spec, name,
                         mj_last_error());
            cr_assert_eq(mj_bench_variant_exact(s, i), is_exact_name(name), "%s", name);
            if (is_exact_name(name)) {
                cr_expect(mj_tensor_equal(y, ref), "%s batch %lld: %s not bit-identical to eager",
                          spec, (long long)batches[b], name);
            } else {
                /* K-long sums in another order: generous absolute bound */
                mj_compare c = mj_tensor_compare(y, ref, 1e-4, 1e-4);
                cr_expect(c.close, "%s batch %lld: %s max abs err %g", spec, (long long)batches[b],
                          name, c.max_abs);
            }
            mj_tensor_release(y);
        }
        mj_tensor_release(ref);
        cr_expect_eq(mj_bench_check(s), MJ_OK, "%s", mj_last_error());
    }
    mj_bench_setup_free(s);
}

Test(bench, variants_match_eager_relu_mlp, .init = setup_jit, .fini = teardown_jit) {
    check_all_variants("mlp:8,12,12,5:act=relu:bias=1", MJ_BENCH_MASK_RANDOM, 0.5);
}

Test(bench, variants_match_eager_seed_model, .init = setup_jit, .fini = teardown_jit) {
    check_all_variants("mut", MJ_BENCH_MASK_IDENTITY, 1);
}

Test(bench, variants_match_eager_tanh_block, .init = setup_jit, .fini = teardown_jit) {
    check_all_variants("mlp:16,8,4:act=tanh:bias=0", MJ_BENCH_MASK_BLOCK4, 0.5);
}

/* The bench builds 1x4 block masks itself: each group of 4 inputs of a row is
 * either all kept (weight = original) or all zero, and density is roughly met. */
Test(bench, block_masks_are_blocks, .init = setup_jit, .fini = teardown_jit) {
    mj_bench_workload w = small_workload("mlp:64,32:bias=1", 2, MJ_BENCH_MASK_BLOCK4, 0.25);
    mj_bench_setup *s = NULL;
    OK(mj_bench_setup_new(&w, jit, &s));
    mj_module *lin = mj_module_find(mj_bench_setup_model(s), "0");
    cr_assert_not_null(lin);
    cr_assert(mj_is_parametrized(lin, "weight"));
    mj_tensor *wt = NULL;
    OK(mj_module_get(lin, "weight", &wt));
    const float *wd = mj_tensor_data(wt);
    const float *od = mj_tensor_data(mj_module_original(lin, "weight"));
    int kept = 0, groups = 0;
    for (int o = 0; o < 32; o++)
        for (int g = 0; g < 64; g += 4) {
            int nz = 0;
            for (int q = g; q < g + 4; q++) {
                float v = wd[o * 64 + q];
                cr_assert(v == 0.0f || v == od[o * 64 + q]);
                nz += v == od[o * 64 + q];
            }
            cr_assert(nz == 0 || nz == 4, "row %d group %d partially kept (%d of 4)", o, g, nz);
            kept += nz == 4;
            groups++;
        }
    cr_expect(kept > groups / 8 && kept < groups / 2, "kept %d of %d groups at density 0.25", kept,
              groups);
    mj_tensor_release(wt);
    mj_bench_setup_free(s);
}

Test(bench, measure_reports_consistent_numbers, .init = setup_jit, .fini = teardown_jit) {
    mj_bench_workload w = small_workload("mlp:16,24,8:act=relu:bias=1", 5, MJ_BENCH_MASK_RANDOM, 0.5);
    mj_bench_setup *s = NULL;
    OK(mj_bench_setup_new(&w, jit, &s));
    double flops = 2.0 * 5 * (16 * 24 + 24 * 8);
    cr_assert_float_eq(mj_bench_setup_flops(s), flops, 1e-9);
    mj_bench_result r[16];
    OK(mj_bench_measure(s, 3, 0.5, r));
    for (int i = 0; i < mj_bench_variant_count(s); i++) {
        const char *name = mj_bench_variant_name(s, i);
        cr_expect(r[i].median_ns > 0 && r[i].min_ns > 0 && r[i].min_ns <= r[i].median_ns, "%s", name);
        cr_expect(r[i].iters >= 1, "%s", name);
        cr_expect(fabs(r[i].gflops - flops / r[i].median_ns) <= 1e-9 * r[i].gflops, "%s", name);
        bool compiled = !strncmp(name, "compiled-", 9);
        cr_expect(compiled ? r[i].compile_ms > 0 : r[i].compile_ms < 0, "%s compile_ms %g", name,
                  r[i].compile_ms);
    }
    cr_expect_eq(mj_bench_measure(s, 0, 1, r), MJ_ERR_INVALID);
    cr_expect(strstr(mj_last_error(), "reps 0"), "%s", mj_last_error());
    mj_bench_setup_free(s);
}

/* The host check: 1 at one thread; a speed-up, not a time, at two (1.0
 * on a machine that gives the second thread nothing, 2.0 on two free
 * cores; the bounds leave room for a loaded CI machine). */
Test(bench, thread_ceiling_is_a_speedup) {
    cr_expect_eq(mj_bench_thread_ceiling(1), 1.0);
    double c = mj_bench_thread_ceiling(2);
    cr_expect(isfinite(c) && c > 0.25 && c < 2.5, "2 threads ran %gx one", c);
}

/* At two threads each round starts with a host check, and the cell keeps
 * the lowest and highest; at one thread there is none. */
Test(bench, measure_checks_the_host_each_round_at_two_threads, .init = setup_jit, .fini = teardown_jit) {
    mj_bench_result r[16];
    double lo, hi;
    for (int threads = 1; threads <= 2; threads++) {
        mj_bench_workload w = small_workload("mlp:16,24,8:act=relu:bias=1", 5, MJ_BENCH_MASK_RANDOM, 0.5);
        w.threads = threads;
        mj_bench_setup *s = NULL;
        OK(mj_bench_setup_new(&w, jit, &s));
        mj_bench_setup_host_range(s, &lo, &hi);
        cr_expect(isnan(lo) && isnan(hi), "before a measure: %g-%g", lo, hi);
        OK(mj_bench_measure(s, 3, 0.5, r));
        mj_bench_setup_host_range(s, &lo, &hi);
        if (threads == 1) cr_expect(isnan(lo) && isnan(hi), "one thread: %g-%g", lo, hi);
        else cr_expect(lo > 0.25 && lo <= hi && hi < 2.5, "two threads: host %g-%g", lo, hi);
        mj_bench_setup_free(s);
    }
}

/* At two threads every compiled mode also runs compiled for one thread,
 * next to it in each round: the speed-up is a ratio of neighbours; the
 * same rounds run two copies of the one-thread model at once (the host
 * check with the work itself), and the speed-up is also given as a share
 * of theirs. Peers and one-thread cells have none of these. */
Test(bench, measure_times_a_one_thread_twin_at_two_threads, .init = setup_jit, .fini = teardown_jit) {
    mj_bench_result r[16];
    for (int threads = 1; threads <= 2; threads++) {
        mj_bench_workload w = small_workload("mlp:16,24,8:act=relu:bias=1", 5, MJ_BENCH_MASK_RANDOM, 0.5);
        w.threads = threads;
        mj_bench_setup *s = NULL;
        OK(mj_bench_setup_new(&w, jit, &s));
        OK(mj_bench_check(s));
        OK(mj_bench_measure(s, 3, 0.5, r));
        for (int i = 0; i < mj_bench_variant_count(s); i++) {
            const char *name = mj_bench_variant_name(s, i);
            bool compiled = !strncmp(name, "compiled-", 9);
            if (threads == 2 && compiled)
                cr_expect(r[i].vs_one_thread > 0.05 && r[i].vs_one_thread < 20 &&
                              r[i].vs_one_thread_min <= r[i].vs_one_thread,
                          "%s: vs one thread %g (lowest %g)", name, r[i].vs_one_thread, r[i].vs_one_thread_min);
            if (threads == 2 && compiled) {
                cr_expect(r[i].host_copies > 0.25 && r[i].host_copies < 2.5 &&
                              r[i].host_copies_min <= r[i].host_copies,
                          "%s: copies %g (lowest %g)", name, r[i].host_copies, r[i].host_copies_min);
                cr_expect(r[i].vs_host > 0.02 && r[i].vs_host < 80 && r[i].vs_host_min <= r[i].vs_host,
                          "%s: vs copies %g (lowest %g)", name, r[i].vs_host, r[i].vs_host_min);
            } else {
                cr_expect(isnan(r[i].vs_one_thread) && isnan(r[i].vs_one_thread_min),
                          "%s at %d thread(s): vs one thread %g", name, threads, r[i].vs_one_thread);
                cr_expect(isnan(r[i].host_copies) && isnan(r[i].vs_host), "%s at %d thread(s): copies %g, vs %g",
                          name, threads, r[i].host_copies, r[i].vs_host);
            }
        }
        mj_bench_setup_free(s);
    }
}

/* A setup whose live weights changed after it was made: its check fails
 * (the message is mj_last_error()). */
static mj_bench_setup *setup_with_stale_copies(int threads) {
    mj_bench_workload w = small_workload("mlp:8,8,8:act=relu:bias=1", 4, MJ_BENCH_MASK_RANDOM, 0.5);
    w.threads = threads;
    mj_bench_setup *s = NULL;
    OK(mj_bench_setup_new(&w, jit, &s));
    OK(mj_bench_check(s));
    mj_module *lin = mj_module_find(mj_bench_setup_model(s), "0");
    cr_assert_not_null(lin);
    float *wd = mj_tensor_data_mut(mj_module_original(lin, "weight"));
    for (int i = 0; i < 64; i++) wd[i] = wd[i] * 2.0f + 0.5f;
    cr_assert_eq(mj_bench_check(s), MJ_ERR_MISMATCH);
    return s;
}

/* Changing the live weights after setup: interp and live compiled code
 * follow, the frozen code and the peers (copies) do not; the check must
 * name them. */
Test(bench, check_names_stale_variants, .init = setup_jit, .fini = teardown_jit) {
    mj_bench_setup *s = setup_with_stale_copies(1);
    const char *msg = mj_last_error();
    cr_expect(strstr(msg, "compiled-frozen is not bit-identical to eager"), "%s", msg);
    cr_expect(!strstr(msg, "interp is not"), "%s", msg);
    if (mj_peer_built(MJ_PEER_OPENBLAS)) cr_expect(strstr(msg, "openblas is not close"), "%s", msg);
    cr_expect(!strstr(msg, "(one thread)"), "one thread has no twins: %s", msg);
    mj_bench_setup_free(s);
}

/* At two threads the one-thread twins are checked too: a speed-up over
 * code that computes something else would mean nothing. */
Test(bench, check_names_stale_one_thread_twins, .init = setup_jit, .fini = teardown_jit) {
    mj_bench_setup *s = setup_with_stale_copies(2);
    const char *msg = mj_last_error();
    cr_expect(strstr(msg, "compiled-frozen is not bit-identical to eager"), "%s", msg);
    cr_expect(strstr(msg, "compiled-frozen (one thread) is not bit-identical to eager"), "%s", msg);
    cr_expect(!strstr(msg, "compiled-exact (one thread)"), "live code follows the weights: %s", msg);
    mj_bench_setup_free(s);
}

Test(bench, setup_rejects_bad_workloads, .init = setup_jit, .fini = teardown_jit) {
    mj_bench_setup *s = NULL;
    mj_bench_workload w = small_workload("mlp:8,8", 0, MJ_BENCH_MASK_NONE, 1);
    cr_expect_eq(mj_bench_setup_new(&w, jit, &s), MJ_ERR_INVALID);
    cr_expect(strstr(mj_last_error(), "batch 0"), "%s", mj_last_error());
    w = small_workload("mlp:8,8", 2, MJ_BENCH_MASK_RANDOM, 1.5);
    cr_expect_eq(mj_bench_setup_new(&w, jit, &s), MJ_ERR_INVALID);
    cr_expect(strstr(mj_last_error(), "density 1.5"), "%s", mj_last_error());
    w = small_workload("mlp:", 2, MJ_BENCH_MASK_NONE, 1);
    cr_expect_neq(mj_bench_setup_new(&w, jit, &s), MJ_OK);
    cr_expect_null(s);
}

/* ---- the program ---------------------------------------------------------- */

typedef struct run_out {
    int rc;
    char *out, *err;
} run_out;

static char *slurp(FILE *f) {
    fflush(f);
    long n = ftell(f);
    rewind(f);
    char *buf = calloc((size_t)n + 1, 1);
    cr_assert_not_null(buf);
    if (n > 0) cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return buf;
}

static run_out run_bench(int argc, const char **argv) {
    FILE *out = tmpfile(), *err = tmpfile();
    cr_assert(out && err);
    run_out r;
    r.rc = mj_bench_run(argc, (char **)argv, out, err);
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
}

static void run_free(run_out *r) {
    MJT_FREE(r->out, r->err);
}

/* A run of the argc arguments that must exit with rc, needle in its stderr. */
static void expect_bench_error(const char **argv, int argc, int rc, const char *needle) {
    run_out r = run_bench(argc, argv);
    cr_expect_eq(r.rc, rc, "%s: rc %d", needle, r.rc);
    cr_expect(strstr(r.err, needle), "%s", r.err);
    run_free(&r);
}

/* A --json run that must succeed, with err_needle (unless NULL) in its
 * stderr: its parsed output (the caller decrefs it and frees *r). */
static json_t *run_bench_json(int argc, const char **argv, const char *err_needle, run_out *r) {
    *r = run_bench(argc, argv);
    cr_assert_eq(r->rc, 0, "rc %d, stderr: %s", r->rc, r->err);
    if (err_needle) cr_expect(strstr(r->err, err_needle), "%s", r->err);
    json_error_t je;
    json_t *root = json_loads(r->out, 0, &je);
    cr_assert_not_null(root, "not JSON (%s): %s", je.text, r->out);
    return root;
}

Test(bench, program_json_w1) {
    const char *argv[] = {"maskjit-bench", "--workloads", "w1", "--reps", "2", "--min-ms", "0.5",
                          "--json"};
    run_out r;
    json_t *root = run_bench_json(8, argv, NULL, &r);
    cr_expect(json_is_string(json_object_get(root, "cpu")));
    json_t *wls = json_object_get(root, "workloads");
    cr_assert_eq(json_array_size(wls), 1);
    json_t *w = json_array_get(wls, 0);
    cr_expect_str_eq(json_string_value(json_object_get(w, "id")), "W1");
    cr_expect(json_is_string(json_object_get(w, "description")));
    cr_expect(json_integer_value(json_object_get(w, "peak_rss_kb")) > 0);
    json_t *rs = json_object_get(w, "results");
    const char *want[] = {"eager", "interp", "compiled-exact", "compiled-fast", "compiled-frozen",
                          "openblas", "libxsmm", "onednn", "xnnpack"};
    _Static_assert(MJ_PEER_COUNT == 4, "list the new peer in want[]");
    const double flops = 2.0 * 3 * 3 * 16 * 16; /* the seed model: 4608 FLOP */
    int npeers = 0;
    for (int k = 0; k < 5 + MJ_PEER_COUNT; k++) {
        bool need = k < 5 || mj_peer_built((mj_peer_kind)(k - 5));
        npeers += k >= 5 && need;
        json_t *found = NULL;
        for (size_t i = 0; i < json_array_size(rs); i++) {
            json_t *e = json_array_get(rs, i);
            if (!strcmp(json_string_value(json_object_get(e, "variant")), want[k])) found = e;
        }
        if (!need) continue;
        cr_assert_not_null(found, "variant %s missing", want[k]);
        double med = json_real_value(json_object_get(found, "median_ns"));
        double gf = json_real_value(json_object_get(found, "gflops"));
        cr_expect(med > 0, "%s", want[k]);
        cr_expect(fabs(gf - flops / med) <= 1e-6 * gf, "%s: gflops %g vs %g", want[k], gf, flops / med);
        json_t *ratio = json_object_get(found, "ratio_to_best_peer");
        if (npeers > 0 || k >= 5) cr_expect(json_is_real(ratio), "%s", want[k]);
    }
    json_decref(root);
    run_free(&r);
}

Test(bench, program_csv_and_table) {
    const char *argv[] = {"maskjit-bench", "--workloads", "W1", "--reps", "1", "--min-ms", "0.2",
                          "--csv"};
    run_out r = run_bench(8, argv);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_expect(!strncmp(r.out, "workload,batch,threads,variant,median_ns", 40), "%s", r.out);
    cr_expect(strstr(r.out, "\nW1,3,1,compiled-frozen,"), "%s", r.out);
    cr_expect(strstr(r.err, "checking"), "progress goes to stderr: %s", r.err);
    run_free(&r);
    const char *argv2[] = {"maskjit-bench", "--workloads", "W1", "--reps", "1", "--min-ms", "0.2",
                           "--plot", "/nonexistent/x.svg"};
    r = run_bench(9, argv2);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_expect(strstr(r.out, "W1  seed model"), "%s", r.out);
    cr_expect(strstr(r.out, "compiled-exact"), "%s", r.out);
    cr_expect(strstr(r.err, "W6 (batch scaling) was not run"), "%s", r.err);
    run_free(&r);
}

/* CPU time adds up every thread's: a threaded cell under --clock cpu
 * cannot show a speed-up, and the run says so before it starts. */
Test(bench, program_warns_of_the_cpu_clock_with_threads) {
    const char *argv[] = {"b", "mlp:8,8", "--batch", "1", "--threads", "1,2", "--clock", "cpu",
                          "--reps", "1", "--min-ms", "0.2"};
    run_out r = run_bench(12, argv);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_expect(strstr(r.err, "warning: --clock cpu adds up the CPU time of every thread"), "%s", r.err);
    cr_expect(strstr(r.out, "process CPU clock"), "%s", r.out);
    run_free(&r);
    argv[5] = "1";
    r = run_bench(12, argv);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_expect(!strstr(r.err, "warning"), "one thread: %s", r.err);
    run_free(&r);
}

Test(bench, program_bad_arguments) {
    struct {
        int argc;
        const char *argv[4];
        const char *msg;
    } cases[] = {
        {2, {"b", "--bogus"}, "unknown argument '--bogus'"},
        {3, {"b", "--reps", "0"}, "--reps wants an integer in 1..1000, got '0'"},
        {3, {"b", "--reps", "3x"}, "got '3x'"},
        {3, {"b", "--min-ms", "-1"}, "--min-ms wants a number"},
        {3, {"b", "--min-ms", "nan"}, "got 'nan'"},
        {3, {"b", "--workloads", "W9"}, "unknown workload 'W9'"},
        {3, {"b", "--workloads", ","}, "empty list"},
        {3, {"b", "--threads", "0"}, "--threads wants counts"},
        {2, {"b", "--reps"}, "--reps needs a value"},
        {3, {"b", "--json", "--csv"}, "exclusive"},
        {3, {"b", "--plot", "a'b.svg"}, "without quotes"},
        {3, {"b", "--batch", "1,,2"}, "--batch: an empty item in '1,,2'"},
        {3, {"b", "--batch", "2,2,"}, "--batch: an empty item in '2,2,'"},
        {3, {"b", "--batch", "2,4,2"}, "--batch lists 2 twice"},
        {3, {"b", "--threads", "1,1"}, "--threads lists 1 twice"},
        {3, {"b", "--workloads", ",W1"}, "--workloads: an empty item"},
        {4, {"b", "mlp:8,8", "--workloads", "W1"}, "--workloads chooses built-in workloads, not a MODEL"},
        {4, {"b", "mlp:8,8", "--plot", "x.svg"}, "--plot draws W6's batch scaling, not a MODEL"},
        {3, {"b", "mlp:8,8", "--list"}, "--list lists built-in workloads, not a MODEL"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run_out r = run_bench(cases[i].argc, cases[i].argv);
        cr_expect_eq(r.rc, 2, "case %zu: rc %d", i, r.rc);
        cr_expect(strstr(r.err, cases[i].msg), "case %zu: stderr '%s' lacks '%s'", i, r.err,
                  cases[i].msg);
        cr_expect_eq(r.out[0], '\0', "case %zu wrote to stdout", i);
        run_free(&r);
    }
    const char *help[] = {"b", "--help"};
    run_out r = run_bench(2, help);
    cr_expect_eq(r.rc, 0);
    cr_expect(strstr(r.out, "--workloads LIST"));
    run_free(&r);
    const char *list[] = {"b", "--list", "--smoke"};
    r = run_bench(3, list);
    cr_expect_eq(r.rc, 0);
    cr_expect(strstr(r.out, "W5  3 Linear(256,256)+bias"), "%s", r.out);
    run_free(&r);
}

/* Runs argv with a time limit and an address-space limit (0: none), stdout to
 * /dev/null and stderr to errpath; returns the exit status, or -signal, or
 * -1000 on the time limit. */
static int run_limited(char *const argv[], const char *const envp_extra[], long as_kb, int seconds,
                       const char *errpath) {
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        if (as_kb > 0) {
            struct rlimit rl = {(rlim_t)as_kb * 1024, (rlim_t)as_kb * 1024};
            setrlimit(RLIMIT_AS, &rl);
        }
        int null = open("/dev/null", O_WRONLY), err = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(null, 1);
        dup2(err, 2);
        for (int i = 0; envp_extra && envp_extra[i]; i++) putenv((char *)envp_extra[i]);
        execv(argv[0], argv);
        _exit(127);
    }
    for (int waited = 0; waited < seconds * 10; waited++) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
        usleep(100000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1000;
}

static char *slurp_file(const char *path) {
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* The maskjit binary loads no peer library (OpenBLAS starts threads at load
 * time, which hung the CLI's exit under an address-space limit): only
 * maskjit-bench links them, and `maskjit bench` runs that program. */
Test(bench, cli_loads_no_peer_library) {
    char err[] = "/tmp/mj-bench-ld-XXXXXX";
    int fd = mkstemp(err);
    cr_assert(fd >= 0);
    close(fd);
    char *version[] = {MJ_BUILD_ROOT "/maskjit", "--version", NULL};
    const char *ld_debug[] = {"LD_DEBUG=libs", NULL};
    cr_assert_eq(run_limited(version, ld_debug, 0, 60, err), 0);
    const char *log = slurp_file(err);
    cr_assert(strstr(log, "calling init"), "LD_DEBUG printed nothing: %.200s", log);
    const char *peers[] = {"libopenblas", "libxsmm", "libdnnl", "libXNNPACK", "libgomp", "libpthreadpool"};
    for (size_t i = 0; i < sizeof peers / sizeof peers[0]; i++)
        cr_expect(!strstr(log, peers[i]), "maskjit loads %s", peers[i]);

    /* under an address-space limit a command still runs and exits (not
     * under ASan, whose shadow memory alone is larger than the limit) */
#ifndef __SANITIZE_ADDRESS__
    char *run[] = {MJ_BUILD_ROOT "/maskjit", "run", "mut", NULL};
    int rc = run_limited(run, NULL, 300000, 60, err);
    cr_expect_eq(rc, 0, "maskjit run mut under ulimit -v 300000: %s (%s)",
                 rc == -1000 ? "hung" : "failed", slurp_file(err));
#endif

    /* `maskjit bench` is maskjit-bench, peers included */
    char *list[] = {MJ_BUILD_ROOT "/maskjit", "bench", "--list", "--smoke", NULL};
    const char *ld_files[] = {"LD_DEBUG=libs", NULL};
    cr_assert_eq(run_limited(list, ld_files, 0, 60, err), 0);
    log = slurp_file(err);
    if (mj_peer_built(MJ_PEER_OPENBLAS)) cr_expect(strstr(log, "libopenblas"), "maskjit bench ran without peers");
    cr_expect(!strstr(log, "running without peer libraries"));
    unlink(err);
}

/* A user's model as a saved trace: the setup's variants against the model's
 * own eager forward on the setup's input (exact ones bit for bit), at the
 * traced batch and at others. */
Test(bench, user_model_setup_matches_eager, .init = setup_jit, .fini = teardown_jit) {
    mj_rng rng = mjt_rng(3);
    mj_module *m = NULL;
    OK(mj_model_from_spec("mlp:8,16,4:act=relu", &rng, &m));
    OK(mj_model_apply_masks(m, NULL, 0.5, &rng));
    mj_tensor *ones = NULL;
    OK(mj_tensor_ones(&ones, 2, (int64_t[]){2, 8}));
    mj_graph *g = mjt_trace(m, ones);
    mj_bench_setup *s = NULL;
    OK(mj_bench_setup_from_graph("T", "test", g, 3, 1, 5, jit, &s));
    cr_expect_null(mj_bench_setup_model(s));
    const char *want[] = {"interp", "compiled-exact", "compiled-fast", "compiled-frozen"};
    cr_assert_eq(mj_bench_variant_count(s), 4);
    for (int64_t batch = 3; batch <= 17; batch += 14) {
        if (batch != 3) cr_assert_eq(mj_bench_setup_set_batch(s, batch), MJ_OK, "%s", mj_last_error());
        mj_tensor *ref = NULL;
        OK(mj_module_forward(m, mj_bench_setup_input(s), &ref));
        for (int i = 0; i < 4; i++) {
            cr_expect_str_eq(mj_bench_variant_name(s, i), want[i]);
            mj_tensor *y = NULL;
            OK(mj_bench_variant_output(s, i, &y));
            mj_compare c = mj_tensor_compare(y, ref, 1e-5, 1e-5);
            cr_expect(mj_bench_variant_exact(s, i) ? c.bit_identical : c.close, "%s at batch %lld",
                      want[i], (long long)batch);
            mj_tensor_release(y);
        }
        mj_tensor_release(ref);
        cr_expect_eq(mj_bench_check(s), MJ_OK, "%s", mj_last_error());
        cr_expect(fabs(mj_bench_setup_flops(s) - 2.0 * (double)batch * (8 * 16 + 16 * 4)) < 1e-9);
    }
    mj_bench_setup_free(s);
    mj_tensor_release(ones);
    mjt_free_traced(g, m);
}

/* A user's graph with two inputs (a BERT-style layer and its attention
 * mask, exported from PyTorch): every variant against the interpreter run
 * here on the setup's inputs, exact ones bit for bit, at two batches. */
Test(bench, user_model_with_two_inputs, .init = setup_jit, .fini = teardown_jit) {
    mj_graph *g = NULL, *ref_g = NULL;
    const char *path = MJ_SOURCE_ROOT "/tests/fixtures/export_bert_layer.safetensors";
    OK(mj_graph_load(path, &g));
    OK(mj_graph_load(path, &ref_g));
    mj_bench_setup *s = NULL;
    OK(mj_bench_setup_from_graph("T", "bert", g, 2, 1, 5, jit, &s));
    cr_assert_eq(mj_bench_setup_input_count(s), 2);
    cr_expect_null(mj_bench_setup_input_at(s, 2));
    cr_assert_eq(mj_bench_variant_count(s), 4);
    for (int64_t batch = 2; batch <= 5; batch += 3) {
        if (batch != 2) OK(mj_bench_setup_set_batch(s, batch));
        const mj_tensor *in[2] = {mj_bench_setup_input_at(s, 0), mj_bench_setup_input_at(s, 1)};
        cr_assert_eq(mj_tensor_shape(in[1])[0], batch);
        mj_tensor *ref = NULL;
        OK(mj_graph_run_n(ref_g, 2, in, 1, &ref));
        for (int i = 0; i < 4; i++) {
            mj_tensor *y = NULL;
            OK(mj_bench_variant_output(s, i, &y));
            mj_compare c = mj_tensor_compare(y, ref, 1e-4, 1e-4);
            cr_expect(mj_bench_variant_exact(s, i) ? c.bit_identical : c.close, "%s at batch %lld",
                      mj_bench_variant_name(s, i), (long long)batch);
            mj_tensor_release(y);
        }
        mj_tensor_release(ref);
        cr_expect_eq(mj_bench_check(s), MJ_OK, "%s", mj_last_error());
    }
    mj_bench_setup_free(s);
    mj_graph_free(ref_g);
    mj_graph_free(g);
}

/* --id names the model in the JSON; --untimed-ref checks against the
 * interpreter without timing it, so its row is absent. */
Test(bench, program_id_and_untimed_reference) {
    const char *argv[] = {"maskjit-bench", MJ_SOURCE_ROOT "/tests/fixtures/export_bert_layer.safetensors",
                          "--id", "bert", "--untimed-ref", "--batch", "2", "--threads", "1",
                          "--reps", "1", "--min-ms", "0.5", "--json"};
    run_out r;
    json_t *root = run_bench_json(14, argv, "checking 4 variants against interp", &r);
    json_t *w = json_array_get(json_object_get(root, "workloads"), 0);
    cr_assert_not_null(w);
    cr_expect_str_eq(json_string_value(json_object_get(w, "id")), "bert");
    json_t *rs = json_object_get(w, "results");
    cr_assert_eq(json_array_size(rs), 3);
    for (size_t k = 0; k < 3; k++)
        cr_expect_str_neq(json_string_value(json_object_get(json_array_get(rs, k), "variant")), "interp");
    json_decref(root);
    run_free(&r);
    expect_bench_error((const char *[]){"b", "mut", "--id", "a-name-far-too-long-for-the-tables-of-the-bench-and-its-json-file"}, 4, 2,
                       "--id wants a name of 1 to 63 characters");
}

/* `maskjit bench MODEL`: a saved trace at two batches, as JSON. */
Test(bench, program_times_a_saved_trace) {
    char path[] = "/tmp/mj-bench-model-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    mj_rng rng = mjt_rng(4);
    mj_module *m = NULL;
    OK(mj_model_from_spec("mlp:8,16,4:act=relu", &rng, &m));
    mj_tensor *ones = NULL;
    OK(mj_tensor_ones(&ones, 2, (int64_t[]){1, 8}));
    mj_graph *g = mjt_trace(m, ones);
    OK(mj_graph_save(g, path));
    const char *argv[] = {"maskjit-bench", path, "--batch", "1,3", "--threads", "1", "--reps", "1",
                          "--min-ms", "0.5", "--json"};
    run_out r;
    json_t *root = run_bench_json(11, argv, "checking 4 variants against interp", &r);
    json_t *wls = json_object_get(root, "workloads");
    cr_assert_eq(json_array_size(wls), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *w = json_array_get(wls, i);
        cr_expect_eq(json_integer_value(json_object_get(w, "batch")), i == 0 ? 1 : 3);
        cr_expect_str_eq(json_string_value(json_object_get(w, "ratio_against")), "interp");
        json_t *rs = json_object_get(w, "results");
        cr_assert_eq(json_array_size(rs), 4);
        for (size_t k = 0; k < 4; k++)
            cr_expect(json_real_value(json_object_get(json_array_get(rs, k), "median_ns")) > 0);
    }
    json_decref(root);
    run_free(&r);
    unlink(path);
    mj_tensor_release(ones);
    mjt_free_traced(g, m);

    /* errors: a bad MODEL fails with the reason; --batch needs a MODEL or W6 */
    expect_bench_error((const char *[]){"b", "/nonexistent/model.mjt"}, 2, 2, "MODEL '/nonexistent/model.mjt': No such file");
    expect_bench_error((const char *[]){"b", "nonexistent"}, 2, 1, "neither a file nor a model spec");
    expect_bench_error((const char *[]){"b", "--workloads", "W1,W2", "--batch", "4"}, 5, 2, "--batch goes with a MODEL");
    expect_bench_error((const char *[]){"b", "mut", "--batch", "0"}, 4, 2, "--batch wants batches");
}

/* The convolution peers compute what maskjit's eager ops compute on a
 * ResNet-style chain (conv-relu, conv + input, relu), a strided dilated conv
 * and a depthwise one (within float32 tolerance: they sum in their own
 * order); peers without a convolution say so. */
Test(bench, conv_peers_match_eager_conv_chains) {
    mj_rng rng;
    mj_rng_seed(&rng, 5);
    const int64_t N = 2, C = 8, H = 9, W = 7;
    const int64_t xs[4] = {N, C, H, W}, ws[4] = {C, C, 3, 3}, dws[4] = {C, 1, 3, 3}, bs[1] = {C};
    mj_tensor *x, *w1, *w2, *wd, *b1;
    OK(mj_tensor_randn(&x, 4, xs, &rng));
    OK(mj_tensor_randn(&w1, 4, ws, &rng));
    OK(mj_tensor_randn(&w2, 4, ws, &rng));
    OK(mj_tensor_randn(&wd, 4, dws, &rng));
    OK(mj_tensor_randn(&b1, 1, bs, &rng));
    mj_conv2d_params same, strided, depthwise;
    mj_conv2d_params_init(&same);
    same.padding[0] = same.padding[1] = 1;
    strided = same;
    strided.stride[0] = 2;
    strided.dilation[1] = 2;
    strided.padding[1] = 2;
    depthwise = same;
    depthwise.groups = C;
    /* eager: relu(conv(relu(conv(x, w1) + b1), w2) + x), and the other two */
    mj_tensor *h, *r, *c2, *s, *block, *ys, *yd;
    OK(mj_conv2d(&h, x, w1, b1, &same));
    OK(mj_relu(&r, h));
    OK(mj_conv2d(&c2, r, w2, NULL, &same));
    OK(mj_add(&s, c2, x));
    OK(mj_relu(&block, s));
    OK(mj_conv2d(&ys, x, w1, b1, &strided));
    OK(mj_conv2d(&yd, x, wd, NULL, &depthwise));
    const mj_peer_conv_layer base = {.in_c = C, .out_c = C, .kh = 3, .kw = 3, .stride = {1, 1},
                                     .padding = {1, 1}, .dilation = {1, 1}, .groups = 1};
    mj_peer_conv_layer chain[2] = {base, base}, one = base, dw = base;
    chain[0].w = mj_tensor_data(w1);
    chain[0].b = mj_tensor_data(b1);
    chain[0].relu = true;
    chain[1].w = mj_tensor_data(w2);
    chain[1].add_input = chain[1].relu_after_add = true;
    one.w = mj_tensor_data(w1);
    one.b = mj_tensor_data(b1);
    one.stride[0] = 2;
    one.dilation[1] = 2;
    one.padding[1] = 2;
    dw.w = mj_tensor_data(wd);
    dw.groups = C;
    const struct {
        const char *what;
        int n;
        const mj_peer_conv_layer *layers;
        const mj_tensor *want;
    } cases[] = {{"residual block", 2, chain, block}, {"strided dilated", 1, &one, ys},
                 {"depthwise", 1, &dw, yd}};
    for (int k = 0; k < MJ_PEER_COUNT; k++) {
        for (size_t ci = 0; ci < 2 * (sizeof cases / sizeof cases[0]); ci++) {
            mj_peer_conv *p;
            size_t i = ci / 2;
            int threads = (int)(ci % 2) + 1; /* each case at 1 and 2 threads */
            mj_status st = mj_peer_conv_new((mj_peer_kind)k, cases[i].n, cases[i].layers, N, H, W, threads, &p);
            bool conv_peer = k == MJ_PEER_ONEDNN || k == MJ_PEER_XNNPACK;
            if (!conv_peer || !mj_peer_built((mj_peer_kind)k)) {
                cr_expect_eq(st, MJ_ERR_UNSUPPORTED, "%s", mj_peer_name((mj_peer_kind)k));
                continue;
            }
            cr_assert_eq(st, MJ_OK, "%s %s: %s", mj_peer_name((mj_peer_kind)k), cases[i].what,
                         mj_last_error());
            const float *y = mj_peer_conv_run(p, mj_tensor_data(x));
            y = mj_peer_conv_run(p, mj_tensor_data(x)); /* twice: set-up state is reused */
            const float *want = mj_tensor_data(cases[i].want);
            for (int64_t j = 0; j < mj_tensor_numel(cases[i].want); j++)
                cr_assert(fabsf(y[j] - want[j]) <= 1e-4f * (1.0f + fabsf(want[j])),
                          "%s %s, %d threads: element %lld is %g, eager %g", mj_peer_name((mj_peer_kind)k),
                          cases[i].what, threads, (long long)j, y[j], want[j]);
            mj_peer_conv_free(p);
        }
    }
    mj_tensor *all[] = {x, w1, w2, wd, b1, h, r, c2, s, block, ys, yd};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) mj_tensor_release(all[i]);
}

/* oneDNN fixes a primitive's thread count when the primitive is created,
 * from OpenMP's count at that moment; setting the count only when a peer
 * runs timed a "1 thread" peer made after a 2-thread one on two cores (and
 * the reverse on one). Each oneDNN peer, linear or conv, is made with its
 * own count. */
Test(bench, onednn_peers_are_made_for_their_thread_count) {
    if (!mj_peer_built(MJ_PEER_ONEDNN)) return;
    mj_rng rng;
    mj_rng_seed(&rng, 9);
    const int64_t ws[2] = {16, 16}, cs[4] = {4, 4, 3, 3};
    mj_tensor *w, *cw;
    OK(mj_tensor_randn(&w, 2, ws, &rng));
    OK(mj_tensor_randn(&cw, 4, cs, &rng));
    const mj_peer_layer layer = {.in = 16, .out = 16, .w = mj_tensor_data(w)};
    const mj_peer_conv_layer conv = {.in_c = 4, .out_c = 4, .kh = 3, .kw = 3, .stride = {1, 1},
                                     .padding = {1, 1}, .dilation = {1, 1}, .groups = 1,
                                     .w = mj_tensor_data(cw)};
    const int order[] = {2, 1, 2, 1};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        mj_peer *p;
        OK(mj_peer_new(MJ_PEER_ONEDNN, 1, &layer, 8, order[i], &p));
        cr_expect_eq(mj_peer_openmp_threads(), order[i], "a %d-thread linear peer was made for %d", order[i],
                     mj_peer_openmp_threads());
        mj_peer_free(p);
        mj_peer *q;
        OK(mj_peer_new(MJ_PEER_ONEDNN, 1, &layer, 8, 3 - order[i], &q)); /* OpenMP at the other count */
        mj_peer_free(q);
        mj_peer_conv *c;
        OK(mj_peer_conv_new(MJ_PEER_ONEDNN, 1, &conv, 1, 5, 5, order[i], &c));
        cr_expect_eq(mj_peer_openmp_threads(), order[i], "a %d-thread conv peer was made for %d", order[i],
                     mj_peer_openmp_threads());
        mj_peer_conv_free(c);
    }
    mj_tensor_release(w);
    mj_tensor_release(cw);
}

/* A traced CNN block (conv-BN-ReLU-conv-BN) benchmarks with the convolution
 * peers, BN folded into their weights, and they agree with the interpreter;
 * a CNN that is not a conv chain (a pool in it) runs without peers and says
 * why. */
Test(bench, cnn_user_model_gets_conv_peers, .init = setup_jit, .fini = teardown_jit) {
    mj_rng rng;
    mj_rng_seed(&rng, 6);
    mj_conv2d_params same;
    mj_conv2d_params_init(&same);
    same.padding[0] = same.padding[1] = 1;
    const int64_t k3[2] = {3, 3}, k2[2] = {2, 2};
    mj_module *mods[5];
    OK(mj_conv2d_new(&mods[0], 4, 6, k3, &same, true, &rng));
    OK(mj_batch_norm2d_new(&mods[1], 6, 1e-5f));
    OK(mj_activation_module_new(&mods[2], MJ_ACT_RELU));
    OK(mj_conv2d_new(&mods[3], 6, 4, k3, &same, false, &rng));
    OK(mj_batch_norm2d_new(&mods[4], 4, 1e-5f));
    /* statistics that are not the defaults, so folding them matters */
    mj_tensor *stat;
    OK(mj_tensor_randn(&stat, 1, (int64_t[]){6}, &rng));
    OK(mj_module_set(mods[1], "running_mean", stat));
    OK(mj_module_set(mods[1], "bias", stat));
    mj_tensor_release(stat);
    OK(mj_tensor_rand(&stat, 1, (int64_t[]){6}, &rng));
    OK(mj_module_set(mods[1], "running_var", stat));
    mj_tensor_release(stat);
    mj_module *chain;
    OK(mj_sequential_new(&chain, 5, mods));
    mj_tensor *x;
    OK(mj_tensor_randn(&x, 4, (int64_t[]){2, 4, 7, 5}, &rng));
    mj_graph *g = mjt_trace(chain, x);
    mj_bench_setup *s;
    OK(mj_bench_setup_from_graph("C", "cnn", g, 2, 1, 7, jit, &s));
    int npeers = 0;
    for (int i = 0; i < mj_bench_variant_count(s); i++) npeers += mj_bench_variant_is_peer(s, i);
    cr_expect_eq(npeers, mj_peer_built(MJ_PEER_ONEDNN) + mj_peer_built(MJ_PEER_XNNPACK));
    cr_assert_eq(mj_bench_check(s), MJ_OK, "%s", mj_last_error());
    OK(mj_bench_setup_set_batch(s, 3));
    cr_assert_eq(mj_bench_check(s), MJ_OK, "%s", mj_last_error());
    mj_bench_setup_free(s);
    mj_graph_free(g);

    mj_module *pool, *pooled, *two[2] = {chain, NULL};
    OK(mj_max_pool2d_new(&pool, k2, NULL, NULL));
    two[1] = pool;
    OK(mj_sequential_new(&pooled, 2, two));
    OK(mj_trace_module(pooled, x, &g));
    OK(mj_bench_setup_from_graph("P", "cnn+pool", g, 2, 1, 7, jit, &s));
    for (int i = 0; i < mj_bench_variant_count(s); i++) cr_expect(!mj_bench_variant_is_peer(s, i));
    if (mj_peer_built(MJ_PEER_ONEDNN)) {
        cr_assert_gt(mj_bench_setup_skipped_count(s), 0);
        cr_expect(strstr(mj_bench_setup_skipped(s, 0), "max_pool2d"), "%s", mj_bench_setup_skipped(s, 0));
    }
    cr_assert_eq(mj_bench_check(s), MJ_OK, "%s", mj_last_error());
    mj_bench_setup_free(s);
    mjt_free_traced(g, pooled);
    mj_tensor_release(x);
}
