/* maskjit/graph.h — tracing a module into an IR graph, and what to do with it.
 *
 * mj_trace_module runs a forward call eagerly on an example input and
 * records every tensor op (torch.jit.trace). Parameters and buffers become
 * named `param` nodes bound to the module's live tensors; a tensor the trace
 * did not see created (made in C during forward) becomes a `const`.
 * The input's leading dimension is symbolic (B): the graph runs at any batch.
 *
 * The text form is documented in docs/IR.md; print and parse round-trip.
 */
#ifndef MASKJIT_GRAPH_H
#define MASKJIT_GRAPH_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "maskjit/module.h"
#include "maskjit/status.h"
#include "maskjit/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mj_graph mj_graph;

/* ---- tracing ------------------------------------------------------------ */
mj_status mj_trace_module(mj_module *m, const mj_tensor *example, mj_graph **out);
/* Several inputs (a module of mj_module_new_n; n_in must be its count):
 * examples[i] becomes input i, rank 1-4, its dim 0 the batch B shared by
 * every input (all examples need the same dim 0). names[i] names input i
 * in the graph (NULL, or a NULL entry: "input" for one input, "input.<i>"
 * for several). Every output of the forward becomes a graph output, in
 * order. */
mj_status mj_trace_module_n(mj_module *m, int n_in, const mj_tensor *const *examples,
                            const char *const *names, mj_graph **out);

/* TracerWarnings recorded while tracing (reading traced data into C, ...). */
int mj_graph_warning_count(const mj_graph *g);
const char *mj_graph_warning(const mj_graph *g, int i);

/* check_inputs: runs the graph (interpreter) and the module (eager) on each
 * input; per input the max abs / rel error. MJ_ERR_MISMATCH if any output is
 * not bit-identical (exact) / not within float32 tolerance. */
typedef struct mj_check_result {
    double max_abs;
    double max_rel;
    bool bit_identical;
} mj_check_result;
mj_status mj_graph_check(mj_graph *g, mj_module *m, int n_inputs,
                         const mj_tensor *const *inputs, mj_check_result *results);
/* The same for models with several inputs and outputs: n_sets sets of n_in
 * tensors, set s at inputs[s*n_in .. s*n_in + n_in); results[s] is the
 * worst over the outputs. */
mj_status mj_graph_check_n(mj_graph *g, mj_module *m, int n_sets, int n_in,
                           const mj_tensor *const *inputs, mj_check_result *results);

/* ---- inspection --------------------------------------------------------- */
int mj_graph_node_count(const mj_graph *g);
int mj_graph_input_count(const mj_graph *g);
int mj_graph_output_count(const mj_graph *g);
/* Name of input i ("input" in a single-input trace); NULL if none. */
const char *mj_graph_input_name(const mj_graph *g, int i);
/* Rank and dims of input/output i; dim 0 is the batch and reads as -1 (B). */
int mj_graph_input_rank(const mj_graph *g, int i);
int64_t mj_graph_input_dim(const mj_graph *g, int i, int d); /* -1 = batch */
int mj_graph_output_rank(const mj_graph *g, int i);
int64_t mj_graph_output_dim(const mj_graph *g, int i, int d);

/* ---- fast mode's tolerance (docs/numerics.md, "How close fast mode is") -
 * Reassociating a sum of K products moves it by at most about
 * sqrt(K) u sum|x_k w_k| with high probability (u = 2^-24). The summands
 * are estimated from the result: |y_e| when they do not cancel, sqrt(K)
 * times the output's mean |y| when they do. Element e passes when
 *     |got_e - ref_e| <= rtol |ref_e| + atol,
 *     rtol = max(C sqrt(K) u, MJ_RTOL_F32),  atol = C K u mean|ref|,
 * C = MJ_TOL_C (a few chained layers, FMA contraction), K the longest sum
 * on any path from the inputs to the value. Use with mj_tensor_compare. */
#define MJ_TOL_C 8.0
typedef struct mj_tolerance {
    double rtol, atol;
    int64_t sum_len; /* K                                  */
    double scale;    /* mean |ref| over its finite elements */
} mj_tolerance;
mj_tolerance mj_fast_tolerance(int64_t sum_len, double scale);
/* The tolerance for output i of g at this batch, against ref (that
 * output's reference value). */
mj_status mj_graph_output_tolerance(const mj_graph *g, int i, int64_t batch, const mj_tensor *ref,
                                    mj_tolerance *out);

/* ---- text form, verification, DOT -------------------------------------- */
mj_status mj_graph_print(const mj_graph *g, FILE *f);
/* Malloc'd text; caller frees. NULL on allocation failure. */
char *mj_graph_to_string(const mj_graph *g);
/* Errors: MJ_ERR_FORMAT with "line:col: message". Constants whose data is
 * not inline and params are left unbound (see mj_graph_bind). */
mj_status mj_graph_parse(const char *text, mj_graph **out);
mj_status mj_graph_verify(const mj_graph *g);
mj_status mj_graph_write_dot(const mj_graph *g, FILE *f);
mj_status mj_graph_clone(const mj_graph *g, mj_graph **out);
/* A clone of g (params and consts bound to the same tensors) that returns
 * the values %ids[0..n) instead of g's outputs: any node's value from the
 * interpreter or a compiled path, to find where two of them part. */
mj_status mj_graph_expose(const mj_graph *g, int n, const int *ids, mj_graph **out);
void mj_graph_free(mj_graph *g);

/* Binds param and const nodes to tensors by name (retained); a name the
 * graph needs and d lacks, or a wrong shape, is an error; extra keys are
 * ignored. */
mj_status mj_graph_bind(mj_graph *g, const mj_tensor_dict *d);

/* ---- transformation ----------------------------------------------------- */
/* torch.jit.freeze: every param becomes a const holding a copy of its
 * current value. */
mj_status mj_graph_freeze(mj_graph *g);
/* Runs passes by name, comma separated, in order: "dce", "cse", "fold",
 * "simplify" (bit-exact rewrites: masks of ones, zero consts, a transpose
 * of a transpose over the same dims; ir/pass_simplify.c), "fuse" (a linear
 * and its single-use activation -> linear_act, then a linear/linear_act and
 * its single-use residual add -> linear_add / linear_act_add; uses by dead
 * nodes do not count, and fuse drops those nodes; docs/IR.md), "fold_bn" (batch norm into the conv before
 * it: changes rounding, so not in the default; it needs the conv's and the
 * norm's parameters as consts, so it folds after mj_graph_freeze and
 * leaves a live graph as it is; run "dce" after it to drop the old
 * consts); NULL or "default" = "simplify,fold,simplify,cse,fuse,dce", as
 * the whole string only (write the passes out to add one to them).
 * The graph is verified after each pass. */
mj_status mj_graph_optimize(mj_graph *g, const char *passes);

/* ---- interpreter -------------------------------------------------------- */
/* Replays the graph with the eager kernels (bit-identical to eager).
 * Single input, single output. */
mj_status mj_graph_run(mj_graph *g, const mj_tensor *input, mj_tensor **output);
/* Any number of inputs and outputs: in[i] is input i (graph order), out[j]
 * receives output j (a new reference); n_in and n_out must be the graph's
 * counts. */
mj_status mj_graph_run_n(mj_graph *g, int n_in, const mj_tensor *const *in, int n_out,
                         mj_tensor **out);

/* ---- save / load (torch.jit.save / load) -------------------------------- */
/* One safetensors file: the params and consts under their names, and the IR
 * text in __metadata__["maskjit.ir"]. Atomic. */
mj_status mj_graph_save(const mj_graph *g, const char *path);
mj_status mj_graph_load(const char *path, mj_graph **out);

#ifdef __cplusplus
}
#endif
#endif
