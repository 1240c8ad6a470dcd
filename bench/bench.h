/* bench/bench.h — the benchmark harness behind `maskjit bench` and the
 * `maskjit-bench` program.
 *
 * A workload is a model (a spec for mj_model_from_spec plus masks), a batch
 * and a thread count. For each workload the harness builds every variant
 * (eager, interpreter, the compiled modes and the optional BLAS peers),
 * checks each variant's output against eager, then times them interleaved in
 * rounds and reports the median time per forward call. bench/README.md
 * describes the program and its columns.
 */
#ifndef MJ_BENCH_H
#define MJ_BENCH_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "maskjit.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The program: argv[0] is the program name, options follow (see --help).
 * Exit code: 0 ok, 1 a variant failed (build, compile, mismatch), 2 bad
 * arguments. Tables/JSON/CSV go to stdout, progress to stderr. */
int mj_bench_main(int argc, char **argv);
/* The same with explicit streams (tests capture them). */
int mj_bench_run(int argc, char **argv, FILE *out, FILE *err);

/* ---- workloads ----------------------------------------------------------- */
typedef enum mj_bench_mask {
    MJ_BENCH_MASK_NONE = 0,  /* plain Linear layers, no parametrization          */
    MJ_BENCH_MASK_ONES,      /* FakeSparsity with an all-ones mask (density 1)   */
    MJ_BENCH_MASK_IDENTITY,  /* FakeSparsity(eye(n)), the seed's masks           */
    MJ_BENCH_MASK_RANDOM,    /* unstructured, mj_model_apply_masks(density)      */
    MJ_BENCH_MASK_BLOCK4,    /* 1x4 blocks: 4 consecutive inputs of a row kept
                                together with probability density               */
} mj_bench_mask;

typedef struct mj_bench_workload {
    char id[64];           /* "W1" ..., or a model file's name                    */
    char description[160];
    char spec[128];        /* mj_model_from_spec: "mut", "mlp:256,256,256,256"  */
    int64_t batch;
    mj_bench_mask mask;
    double density;        /* for RANDOM and BLOCK4                              */
    int threads;           /* compiled variants and OpenBLAS; >= 1              */
    uint64_t seed;         /* weights, masks, input                              */
} mj_bench_workload;

/* ---- one workload, built ------------------------------------------------- */
typedef struct mj_bench_setup mj_bench_setup;

/* Builds the model, masks, input, trace, compiled variants (no compile cache,
 * so compile times are real) and peers. jit is borrowed and must outlive s. */
mj_status mj_bench_setup_new(const mj_bench_workload *w, mj_jit *jit, mj_bench_setup **out);
/* A user's model: a graph (a saved trace) with its params bound, with 1 to
 * MJ_BENCH_MAX_INPUTS inputs and one output. Variants: the interpreter (the
 * reference), compiled exact, fast and frozen; no peers. Each input is seeded
 * randn of the graph's input shape at batch. */
#define MJ_BENCH_MAX_INPUTS 8
mj_status mj_bench_setup_from_graph(const char *id, const char *description, const mj_graph *g,
                                    int64_t batch, int threads, uint64_t seed, mj_jit *jit,
                                    mj_bench_setup **out);
/* A new input (and peers) at another batch; the compiled code is reused. */
mj_status mj_bench_setup_set_batch(mj_bench_setup *s, int64_t batch);
void mj_bench_setup_free(mj_bench_setup *s);
/* Whether the reference (variant 0: eager or the interpreter) is timed, or
 * only checks the others (a slow interpreter on a large model); timed by
 * default at one thread. */
void mj_bench_setup_time_reference(mj_bench_setup *s, bool timed);

mj_module *mj_bench_setup_model(mj_bench_setup *s);     /* borrowed */
const mj_tensor *mj_bench_setup_input(const mj_bench_setup *s); /* input 0, borrowed */
int mj_bench_setup_input_count(const mj_bench_setup *s);
const mj_tensor *mj_bench_setup_input_at(const mj_bench_setup *s, int i); /* borrowed; NULL if none */
/* 2 * batch * sum(in*out) over the Linear layers (dense count). */
double mj_bench_setup_flops(const mj_bench_setup *s);

const mj_bench_workload *mj_bench_setup_workload(const mj_bench_setup *s);
int64_t mj_bench_setup_batch(const mj_bench_setup *s);
/* ms to trace the model (once per workload) */
double mj_bench_setup_trace_ms(const mj_bench_setup *s);
/* Variants that were not built (a peer that cannot run this model), with why. */
int mj_bench_setup_skipped_count(const mj_bench_setup *s);
const char *mj_bench_setup_skipped(const mj_bench_setup *s, int i);
/* Does mj_compile_options.threads > 1 make compiled code use more cores? */
bool mj_bench_jit_threads(void);

/* At most this many variants per setup. */
#define MJ_BENCH_MAX_VARIANTS 16
int mj_bench_variant_count(const mj_bench_setup *s);
const char *mj_bench_variant_name(const mj_bench_setup *s, int i);
/* True when the variant must be bit-identical to eager. */
bool mj_bench_variant_exact(const mj_bench_setup *s, int i);
bool mj_bench_variant_is_peer(const mj_bench_setup *s, int i);
/* Compile time in ms (mj_compiled_stats: IR + optimise + codegen); -1 when
 * the variant is not compiled. */
double mj_bench_variant_compile_ms(const mj_bench_setup *s, int i);
/* One forward call of variant i on the setup's input; the output in *out. */
mj_status mj_bench_variant_output(mj_bench_setup *s, int i, mj_tensor **out);

/* The tolerances used for the non-exact variants (fast mode, peers)
 * against the reference output ref: |a - e| <= rtol*|e| + atol, fast
 * mode's bound (mj_fast_tolerance) with K the sum of the layers'
 * in_features. */
void mj_bench_tolerance(const mj_bench_setup *s, const mj_tensor *ref, double *rtol, double *atol);

/* Runs every variant once and compares with eager (exact ones bit for bit).
 * MJ_ERR_MISMATCH naming every failing variant. */
mj_status mj_bench_check(mj_bench_setup *s);

typedef struct mj_bench_result {
    double median_ns;   /* per forward call, median over rounds              */
    double min_ns;
    int64_t iters;      /* forward calls per round                           */
    int reps;           /* rounds taken (3 for variants slower than 1 s/call) */
    double gflops;      /* dense FLOP count / median                         */
    double compile_ms;  /* -1 if not compiled                                */
    /* threads > 1, compiled variants: the median and the lowest over rounds
     * of (one-thread time / this time), the same mode compiled for one
     * thread and timed next to this one in each round; NAN otherwise */
    double vs_one_thread, vs_one_thread_min;
    /* threads > 1, compiled variants: each round also runs that many copies
     * of the one-thread model at once, each on its own thread and output,
     * for as many calls as the one-thread timing: host_copies is their
     * calls per second against one copy's (threads = every copy ran at
     * full speed; 1.0 = the host gave the copies one core's worth), median
     * and lowest over rounds. vs_host is the round's vs_one_thread divided
     * by its host_copies: the share of what this host gave independent
     * copies of the same work that the threaded model got; NAN otherwise */
    double host_copies, host_copies_min;
    double vs_host, vs_host_min;
} mj_bench_result;

/* Timing clock of this thread's measurements: wall (default) or process CPU
 * time (robust on an oversubscribed machine; meaningful at 1 thread only). */
void mj_bench_use_cpu_clock(bool cpu);

/* How much faster n threads of independent arithmetic (no memory, no
 * sharing) run than one, now: n on an idle machine with n free cores. On a
 * shared or virtual machine it tells what the host gives a multi-threaded
 * cell at the moment it is timed (seen between 0.9 and 2.0 for 2 threads on
 * a 2-vCPU VM within minutes). */
double mj_bench_thread_ceiling(int n);

/* Times the variants interleaved: reps rounds, each running every variant
 * for iters calls sized to about min_ms. results has one entry per variant.
 * At threads > 1 each round starts with mj_bench_thread_ceiling, and each
 * compiled variant's turn times its one-thread twin and the twin's copies
 * (host_copies) next to it. */
mj_status mj_bench_measure(mj_bench_setup *s, int reps, double min_ms, mj_bench_result *results);
/* The lowest and highest host check of the last mj_bench_measure (one per
 * round); NAN at one thread or before a measure. */
void mj_bench_setup_host_range(const mj_bench_setup *s, double *lo, double *hi);

#ifdef __cplusplus
}
#endif
#endif
