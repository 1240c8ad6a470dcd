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

#include "../src/internal.h"

#define MJ_DIM_BATCH INT64_C(-1)
/* cat takes up to 8 operands; every other op at most 3 */
#define MJ_MAX_OPERANDS 8
/* Graph size limit: a guard against hostile IR files. */
#define MJ_MAX_NODES 1000000

enum {
    MJ_OPF_LEAF = 1 << 0,        /* no operands; has a name             */
    MJ_OPF_ELEMENTWISE = 1 << 1, /* NumPy broadcasting, same dtype      */
    MJ_OPF_COMMUTATIVE = 1 << 2, /* bitwise commutative (CSE may swap)  */
    MJ_OPF_ACTIVATION = 1 << 3,  /* unary, mj_op_info.act is its act    */
    MJ_OPF_ACT_ATTR = 1 << 4,    /* carries an {act=...} attribute      */
};

typedef enum mj_op {
#define MJ_OP(e, text, lo, hi, flags, act) MJ_OP_##e,
#include "ops.def"
#undef MJ_OP
    MJ_OP_COUNT
} mj_op;

typedef struct mj_op_info {
    const char *name;
    int8_t min_operands, max_operands;
    uint32_t flags;
    mj_act act; /* for MJ_OPF_ACTIVATION ops */
} mj_op_info;

extern const mj_op_info mj_op_table[MJ_OP_COUNT];
/* MJ_OP_COUNT if no such op. */
mj_op mj_op_from_name(const char *name, size_t len);
/* The unary op of an activation (MJ_OP_COUNT for MJ_ACT_NONE). */
mj_op mj_op_for_act(mj_act act);

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

/* Attributes of the shape ops (docs/IR.md), stored normalised (dims
 * non-negative); all zero for every other op, so nodes compare bytewise. */
typedef struct mj_shape_attrs {
    int8_t perm[MJ_MAX_RANK]; /* PERMUTE: output dim d is operand dim perm[d]   */
    int8_t dim0, dim1;        /* TRANSPOSE: the dims swapped, dim0 < dim1       */
    int8_t dim;               /* SLICE, CAT: along this dim                      */
    int8_t zero_;             /* always 0: no padding, so memcmp compares nodes  */
    int64_t start, end;       /* SLICE: [start, end), 0 <= start <= end <= size  */
} mj_shape_attrs;

typedef struct mj_node {
    mj_op op;
    int n_operands;
    int32_t operands[MJ_MAX_OPERANDS];
    mj_type type;
    mj_act act;         /* LINEAR_ACT only                                       */
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
/* The same for ops with shape attributes (sa may be NULL: all zero; a
 * TRANSPOSE with dim0 == dim1 swaps the last two dims). */
mj_status mj_graph_add_op_sa(mj_graph *g, mj_op op, int n, const int32_t *operands, mj_act act,
                             const mj_shape_attrs *sa, const mj_type *declared, int32_t *id);
mj_status mj_graph_add_output(mj_graph *g, int32_t id);
mj_status mj_graph_add_warning(mj_graph *g, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Index of the leaf with that name, or -1. */
int32_t mj_graph_find_leaf(const mj_graph *g, mj_op op, const char *name);

/* Shape rules, shared by builder, parser, verifier and tracer. */
mj_status mj_infer_type(const mj_graph *g, mj_op op, int n, const int32_t *operands,
                        mj_act act, const mj_type *declared, mj_type *out);
/* With shape attributes: sa is read and normalised in place (negative dims
 * counted from the end, the default transpose made explicit). */
mj_status mj_infer_type_sa(const mj_graph *g, mj_op op, int n, const int32_t *operands, mj_act act,
                           mj_shape_attrs *sa, const mj_type *declared, mj_type *out);

/* Drops nodes with keep[i] == false and renumbers operands and outputs
 * (keep must include every operand of every kept node and every output). */
mj_status mj_graph_compact(mj_graph *g, const bool *keep);
/* Replaces every use of value `from` (operands and outputs) by `to`. */
void mj_graph_replace_uses(mj_graph *g, int32_t from, int32_t to);
/* Number of uses of each value (operands + outputs); caller frees. */
int32_t *mj_graph_use_counts(const mj_graph *g);
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

#endif
