/* The graph IR, internal to libmaskjit (public handle: mj_graph in
 * maskjit/graph.h). A graph is a list of nodes in SSA order: a node's value
 * id is its index, and every operand refers to an earlier node.
 *
 * Leaves: `input` (a runtime argument, in order of appearance), `param`
 * (a named tensor bound at run time: live parameters), `const` (a named
 * tensor whose value is part of the graph: frozen parameters, folds).
 *
 * Types are float32 shapes whose dims are sizes >= 0 or MJ_DIM_BATCH, the
 * symbolic batch size B taken from the input's leading dimension.
 */
#ifndef MJ_IR_H
#define MJ_IR_H

#include <stdbool.h>
#include <stdint.h>

#include "src/core/internal.h"
#include "src/core/op.h"

#define MJ_DIM_BATCH INT64_C(-1)
/* cat takes up to 8 operands; linear_add / linear_act_add 4, batch_norm 5; every other op at most 3 */
#define MJ_MAX_OPERANDS 8
/* Graph size limit: a guard against hostile IR files. */
#define MJ_MAX_NODES 1000000

typedef struct mj_type {
    int rank;
    int64_t dims[MJ_MAX_RANK];
} mj_type;

bool mj_type_equal(const mj_type *a, const mj_type *b);
bool mj_type_has_batch(const mj_type *t);
/* "f32[B,16]" */
const char *mj_type_str(char *buf, size_t size, const mj_type *t);
/* Concrete shape for a given batch size. */
void mj_type_shape(const mj_type *t, int64_t batch, int64_t *shape);

typedef struct mj_node {
    mj_op op;
    int n_operands;
    int32_t operands[MJ_MAX_OPERANDS];
    mj_type type;
    mj_act act;         /* LINEAR_ACT and LINEAR_ACT_ADD only                    */
    mj_attrs attrs;     /* the ops of src/core/attrs.c; zero otherwise                 */
    mj_shape_attrs sa;  /* PERMUTE, TRANSPOSE, SLICE, CAT                         */
    char *name;         /* INPUT, PARAM, CONST                                    */
    mj_tensor *tensor;  /* PARAM: bound tensor (NULL = unbound); CONST: its data */
} mj_node;

struct mj_graph {
    mj_node *nodes;
    int32_t n_nodes, cap_nodes;
    int32_t *outputs;
    int32_t n_outputs, cap_outputs;
    char **warnings;
    int32_t n_warnings, cap_warnings;
};

/* ---- building (ir/graph.c) ---------------------------------------------- */
mj_status mj_graph_new(mj_graph **out);
/* Leaf node; name copied; tensor retained (may be NULL). */
mj_status mj_graph_add_leaf(mj_graph *g, mj_op op, const char *name, const mj_type *type,
                            mj_tensor *tensor, int32_t *id);
/* Op node; its type is inferred (declared is required for RESHAPE and is
 * otherwise checked against the inference when not NULL). */
mj_status mj_graph_add_op(mj_graph *g, mj_op op, int n, const int32_t *operands, mj_act act,
                          const mj_type *declared, int32_t *id);
/* The same with attributes (attrs NULL = the op's defaults). */
mj_status mj_graph_add_op_attrs(mj_graph *g, mj_op op, int n, const int32_t *operands, mj_act act,
                                const mj_attrs *attrs, const mj_type *declared, int32_t *id);
/* The same for ops with shape attributes (sa may be NULL: all zero; a
 * TRANSPOSE with dim0 == dim1 swaps the last two dims). */
mj_status mj_graph_add_op_sa(mj_graph *g, mj_op op, int n, const int32_t *operands, mj_act act,
                             const mj_shape_attrs *sa, const mj_type *declared, int32_t *id);
/* Both kinds of attributes (attrs NULL = the op's defaults, sa NULL = all
 * zero); the two calls above are this one with the other kind defaulted. */
mj_status mj_graph_add_op_full(mj_graph *g, mj_op op, int n, const int32_t *operands, mj_act act,
                               const mj_attrs *attrs, const mj_shape_attrs *sa, const mj_type *declared,
                               int32_t *id);
mj_status mj_graph_add_output(mj_graph *g, int32_t id);
mj_status mj_graph_add_warning(mj_graph *g, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* mj_graph_freeze, with copy false: the consts share the params' tensors
 * (retained, not copied). For a private graph whose passes replace most
 * frozen weights anyway (mask * weight folds into a new tensor): the caller
 * copies what is still shared before anyone could write to it. */
mj_status mj_graph_freeze_as(mj_graph *g, bool copy);
/* Index of the leaf with that name, or -1. */
int32_t mj_graph_find_leaf(const mj_graph *g, mj_op op, const char *name);

/* Shape rules, shared by builder, parser, verifier and tracer. */
mj_status mj_infer_type(const mj_graph *g, mj_op op, int n, const int32_t *operands,
                        mj_act act, const mj_type *declared, mj_type *out);
/* With shape attributes: sa is read and normalised in place (negative dims
 * counted from the end, the default transpose made explicit). */
mj_status mj_infer_type_sa(const mj_graph *g, mj_op op, int n, const int32_t *operands, mj_act act,
                           mj_shape_attrs *sa, const mj_type *declared, mj_type *out);

mj_status mj_infer_type_attrs(const mj_graph *g, mj_op op, int n, const int32_t *operands,
                              mj_act act, const mj_attrs *attrs, const mj_type *declared,
                              mj_type *out);
/* Both kinds (sa read and normalised in place as for mj_infer_type_sa). */
mj_status mj_infer_type_full(const mj_graph *g, mj_op op, int n, const int32_t *operands, mj_act act,
                             const mj_attrs *attrs, mj_shape_attrs *sa, const mj_type *declared, mj_type *out);

/* ---- attributes of a node (ir/type.c) --------------------------------- */
/* The dim an MJ_OPF_REDUCE node works along, for an operand of this rank
 * (layer_norm: the last). */
int mj_reduce_dim(const mj_node *n, int rank);

/* Fast mode's tolerance (public: mj_fast_tolerance, maskjit/graph.h;
 * ir/tolerance.c). The length of the sum node `id` does itself
 * (linear/matmul: in_features; sum/mean/softmax/log_softmax/layer_norm:
 * the reduced dim; else 1), B counting as `batch`. */
int64_t mj_node_sum_length(const mj_graph *g, int32_t id, int64_t batch);
/* The longest such sum on any path into `id` (itself included). */
int64_t mj_graph_sum_length(const mj_graph *g, int32_t id, int64_t batch);
/* Mean |x| over the finite elements of t (0 if none). */
double mj_tolerance_scale(const mj_tensor *t);

/* Drops nodes with keep[i] == false and renumbers operands and outputs
 * (keep must include every operand of every kept node and every output). */
mj_status mj_graph_compact(mj_graph *g, const bool *keep);
/* Replaces every use of value `from` (operands and outputs) by `to`. */
void mj_graph_replace_uses(mj_graph *g, int32_t from, int32_t to);
/* Number of uses of each value (operands of the nodes that reach an output,
 * and outputs): a dead node's uses do not count. Caller frees. */
int32_t *mj_graph_use_counts(const mj_graph *g);
/* Whether node i reaches an output, read off those counts: an input always
 * does, any other node when something live uses it. */
static inline bool mj_uses_live(const mj_graph *g, const int32_t *uses, int32_t i) {
    return uses[i] > 0 || g->nodes[i].op == MJ_OP_INPUT;
}
/* Per node: does a graph output depend on it (inputs always do: they are
 * the graph's signature)? Caller frees. */
bool *mj_graph_live(const mj_graph *g);
/* true for nodes whose value depends on no input (params and consts only). */
bool *mj_graph_input_free(const mj_graph *g);

/* ---- interpreter (ir/interp.c) ------------------------------------------ */
/* n inputs in graph input order, n outputs written (new references). */
mj_status mj_interp_run(const mj_graph *g, int n_in, const mj_tensor *const *in, int n_out,
                        mj_tensor **out);
/* Evaluates one node on operand values (eager kernels). */
mj_status mj_interp_node(const mj_graph *g, const mj_node *n, const mj_tensor *const *operands,
                         mj_tensor **out);

/* ---- passes (ir/pass_*.c), each verified after by mj_graph_optimize ----- */
mj_status mj_pass_dce(mj_graph *g);
mj_status mj_pass_cse(mj_graph *g);
mj_status mj_pass_fold(mj_graph *g);
mj_status mj_pass_simplify(mj_graph *g);
mj_status mj_pass_fuse(mj_graph *g);
/* Not in the default pipeline (it changes rounding): frozen fast mode only. */
mj_status mj_pass_fold_bn(mj_graph *g);

#endif
