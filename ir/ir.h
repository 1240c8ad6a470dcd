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
/* cat takes up to 8 operands, batch_norm 5; every other op at most 3 */
#define MJ_MAX_OPERANDS 8
/* Graph size limit: a guard against hostile IR files. */
#define MJ_MAX_NODES 1000000

enum {
    MJ_OPF_LEAF = 1 << 0,        /* no operands; has a name             */
    MJ_OPF_ELEMENTWISE = 1 << 1, /* NumPy broadcasting, same dtype      */
    MJ_OPF_COMMUTATIVE = 1 << 2, /* bitwise commutative (CSE may swap)  */
    MJ_OPF_ACTIVATION = 1 << 3,  /* unary, mj_op_info.act is its act    */
    MJ_OPF_ACT_ATTR = 1 << 4,    /* carries an {act=...} attribute      */
    MJ_OPF_REDUCE = 1 << 5,      /* works along attrs.dim: rows of that dim interact */
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

/* Case labels of the op families that switches treat alike. Switches over
 * mj_op list every op (these families and the rest) with no default, so a
 * new row of ops.def fails to build (-Wswitch) until each switch places it;
 * mj_op_families_agree checks these lists against the table's flags. */
#define MJ_CASE_ACT_OPS                                                                              \
    case MJ_OP_RELU: case MJ_OP_GELU: case MJ_OP_GELU_TANH: case MJ_OP_SIGMOID: case MJ_OP_TANH:    \
    case MJ_OP_SILU
#define MJ_CASE_UNARY_MATH_OPS /* unary elementwise, not an mj_act */                               \
    case MJ_OP_NEG: case MJ_OP_EXP: case MJ_OP_LOG: case MJ_OP_SQRT: case MJ_OP_RSQRT: case MJ_OP_POW: \
    case MJ_OP_LEAKY_RELU: case MJ_OP_ELU: case MJ_OP_HARDTANH: case MJ_OP_SOFTPLUS
#define MJ_CASE_BINARY_OPS /* binary elementwise with broadcasting */                               \
    case MJ_OP_ADD: case MJ_OP_SUB: case MJ_OP_MUL: case MJ_OP_DIV: case MJ_OP_MAXIMUM: case MJ_OP_MINIMUM
#define MJ_CASE_LEAF_OPS case MJ_OP_INPUT: case MJ_OP_PARAM: case MJ_OP_CONST
#define MJ_CASE_OTHER_OPS /* neither leaf nor elementwise: each its own lowering */                 \
    case MJ_OP_MATMUL: case MJ_OP_LINEAR: case MJ_OP_LINEAR_ACT: case MJ_OP_EXPAND: case MJ_OP_TRANSPOSE: \
    case MJ_OP_RESHAPE: case MJ_OP_SUM: case MJ_OP_MEAN: case MJ_OP_SOFTMAX: case MJ_OP_LOG_SOFTMAX:       \
    case MJ_OP_LAYER_NORM: case MJ_OP_PERMUTE: case MJ_OP_SLICE: case MJ_OP_CAT
#define MJ_CASE_CNN_OPS /* NCHW layers of CNNs: window ops with integer attributes */               \
    case MJ_OP_CONV2D: case MJ_OP_BATCH_NORM: case MJ_OP_MAX_POOL2D: case MJ_OP_AVG_POOL2D:           \
    case MJ_OP_ADAPTIVE_AVG_POOL2D
/* Whether the families above match ops.def's flags (ELEMENTWISE, ACTIVATION,
 * LEAF; CNN ops: none of them, and each has attributes): a test calls it. */
bool mj_op_families_agree(void);
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

/* Attributes of the math ops (ir/attrs.c has each op's names, kinds and
 * defaults; the text form is `{name=value, ...}` in that order). dim is
 * as written (-rank..rank-1; mj_attr_dim normalises it); f holds the op's
 * float attributes in its schema order. Ops without attributes keep all
 * zero. */
#define MJ_MAX_FATTRS 2
#define MJ_MAX_IATTRS 8
typedef struct mj_attrs {
    int32_t dim;
    bool keepdim;
    float f[MJ_MAX_FATTRS];
    int32_t i[MJ_MAX_IATTRS]; /* integer, pair and bool attributes (CNN ops), by slot */
} mj_attrs;
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
    mj_attrs attrs;     /* the ops of ir/attrs.c; zero otherwise                 */
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

/* ---- attributes (ir/attrs.c) --------------------------------------------- */
/* INT: one int in i[slot]; PAIR: [H, W] in i[slot], i[slot + 1], printed
 * "[1,1]" like permute's perm; BOOL: 0 or 1 in i[slot], printed true/false.
 * Integers are 0..MJ_ATTR_INT_MAX (the eager kernels' limit, 2^20). */
typedef enum mj_attr_kind { MJ_ATTR_DIM, MJ_ATTR_KEEPDIM, MJ_ATTR_FLOAT, MJ_ATTR_INT, MJ_ATTR_PAIR, MJ_ATTR_BOOL } mj_attr_kind;
#define MJ_ATTR_INT_MAX (1 << 20)
/* Slots in mj_attrs.i of the CNN ops (adaptive_avg_pool2d: size at 0). */
enum { MJ_CONV_STRIDE = 0, MJ_CONV_PADDING = 2, MJ_CONV_DILATION = 4, MJ_CONV_GROUPS = 6 };
enum { MJ_POOL_KERNEL = 0, MJ_POOL_STRIDE = 2, MJ_POOL_PADDING = 4, MJ_POOL_COUNT_PAD = 6 };
typedef struct mj_attr_spec {
    const char *name;
    mj_attr_kind kind;
    int slot;        /* FLOAT: index in mj_attrs.f; INT, PAIR, BOOL: in mj_attrs.i */
    bool required;   /* no default: the text form must give it                */
    float def;       /* default (keepdim, bool: 0 or 1; pair: both entries)   */
} mj_attr_spec;
/* The op's attributes in text order; *n = 0 for ops without. */
const mj_attr_spec *mj_op_attrs(mj_op op, int *n);
/* The op's default attributes (all zero for ops without). */
mj_attrs mj_attrs_default(mj_op op);
bool mj_attrs_equal(const mj_attrs *a, const mj_attrs *b); /* bitwise floats */
/* attrs.dim normalised to 0..rank-1, or -1 if outside -rank..rank-1. */
int mj_attr_dim(const mj_attrs *a, int rank);
/* The dim an MJ_OPF_REDUCE node works along, for an operand of this rank
 * (layer_norm: the last). */
int mj_reduce_dim(const mj_node *n, int rank);
/* " {dim=-1, keepdim=true}" for the op's attributes ("" without); floats
 * in the shortest form that reads back to the same float. */
void mj_attrs_format(mj_op op, const mj_attrs *a, char *buf, size_t size);

/* Scalar definitions shared by the eager kernels, the interpreter and the
 * JIT's reference (src/ops.c): a unary elementwise op (not an activation
 * of mj_act) with its attributes, and a binary one. */
float mj_unary_apply(mj_op op, const mj_attrs *a, float x);
float mj_binary_apply(mj_op op, float a, float b);

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
