/* The op vocabulary shared by the eager kernels and the IR: the op table
 * (ops.def, op_table.c), op attributes (attrs.c) and the scalar definitions
 * of the elementwise ops (ops.c). Core owns it so that kernels can name
 * their op without knowing the graph IR (ir/ir.h includes this). */
#ifndef MJ_OP_H
#define MJ_OP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "internal.h"

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
    case MJ_OP_LAYER_NORM: case MJ_OP_PERMUTE: case MJ_OP_SLICE: case MJ_OP_CAT: case MJ_OP_LINEAR_ADD:     \
    case MJ_OP_LINEAR_ACT_ADD
#define MJ_CASE_CNN_OPS /* NCHW layers of CNNs: window ops with integer attributes */               \
    case MJ_OP_CONV2D: case MJ_OP_BATCH_NORM: case MJ_OP_MAX_POOL2D: case MJ_OP_AVG_POOL2D:           \
    case MJ_OP_ADAPTIVE_AVG_POOL2D
/* Every op a unary elementwise switch (eager's and the JIT's) does not
 * take: the two must agree, so they name one list. */
#define MJ_CASE_NOT_UNARY_OPS                                                                        \
    MJ_CASE_LEAF_OPS: MJ_CASE_BINARY_OPS: MJ_CASE_OTHER_OPS: MJ_CASE_CNN_OPS: case MJ_OP_COUNT
/* The linear family: linear x, w[, b]; linear_act (+ act); linear_add and
 * linear_act_add (+ a residual r of the result's type, the last operand):
 *   y = act(linear(x, w, b)) + r
 * each step rounded to float as the separate ops would (docs/numerics.md). */
static inline bool mj_op_is_linear(int op) {
    return op == MJ_OP_LINEAR || op == MJ_OP_LINEAR_ACT || op == MJ_OP_LINEAR_ADD || op == MJ_OP_LINEAR_ACT_ADD;
}
static inline bool mj_op_has_residual(int op) { return op == MJ_OP_LINEAR_ADD || op == MJ_OP_LINEAR_ACT_ADD; }
/* Operands of the linear itself (x, w[, b]): without the residual. */
#define MJ_LINEAR_N_OPS(n) ((n)->n_operands - (mj_op_has_residual((n)->op) ? 1 : 0))
/* The bias / residual operand of a linear-family node, or -1. */
#define MJ_LINEAR_BIAS(n) (MJ_LINEAR_N_OPS(n) == 3 ? (n)->operands[2] : -1)
#define MJ_LINEAR_RES(n) (mj_op_has_residual((n)->op) ? (n)->operands[(n)->n_operands - 1] : -1)
#define MJ_LINEAR_ACT(n) \
    ((n)->op == MJ_OP_LINEAR_ACT || (n)->op == MJ_OP_LINEAR_ACT_ADD ? (n)->act : MJ_ACT_NONE)
/* Whether the families above match ops.def's flags (ELEMENTWISE, ACTIVATION,
 * LEAF; CNN ops: none of them, and each has attributes): a test calls it. */
bool mj_op_families_agree(void);
/* MJ_OP_COUNT if no such op. */
mj_op mj_op_from_name(const char *name, size_t len);
/* The unary op of an activation (MJ_OP_COUNT for MJ_ACT_NONE). */
mj_op mj_op_for_act(mj_act act);

/* Attributes of the math ops (src/core/attrs.c has each op's names, kinds and
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

/* ---- attributes (attrs.c) --------------------------------------------- */
/* INT: one int in i[slot]; PAIR: [H, W] in i[slot], i[slot + 1], printed
 * "[1,1]" like permute's perm; BOOL: 0 or 1 in i[slot], printed true/false.
 * Integers are 0..MJ_ATTR_INT_MAX (the eager kernels' limit, 2^20). */
typedef enum mj_attr_kind { MJ_ATTR_DIM, MJ_ATTR_KEEPDIM, MJ_ATTR_FLOAT, MJ_ATTR_INT, MJ_ATTR_PAIR, MJ_ATTR_BOOL } mj_attr_kind;
#define MJ_ATTR_INT_MAX (1 << 20)
/* Slots in mj_attrs.i of the CNN ops (adaptive_avg_pool2d: size at 0). */
enum { MJ_CONV_STRIDE = 0, MJ_CONV_PADDING = 2, MJ_CONV_DILATION = 4, MJ_CONV_GROUPS = 6 };
enum { MJ_POOL_KERNEL = 0, MJ_POOL_STRIDE = 2, MJ_POOL_PADDING = 4, MJ_POOL_COUNT_PAD = 6, MJ_POOL_CEIL = 7 };
/* Output length of a window sweep (< 1: the window does not fit), as
 * PyTorch computes it; ceil (pools' ceil_mode) rounds up, but the last
 * window must start inside the input or its left padding. */
static inline int64_t mj_window_out(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil) {
    int64_t span = in + 2 * p - d * (k - 1) - 1;
    if (span < 0) return 0;
    int64_t out = (span + (ceil ? s - 1 : 0)) / s + 1;
    if (ceil && (out - 1) * s >= in + p) out--;
    return out;
}
typedef struct mj_attr_spec {
    const char *name;
    mj_attr_kind kind;
    int slot;        /* FLOAT: index in mj_attrs.f; INT, PAIR, BOOL: in mj_attrs.i */
    bool required;   /* no default: the text form must give it                */
    float def;       /* default (keepdim, bool: 0 or 1; pair: both entries)   */
    bool quiet;      /* printed only when not the default (an attribute added
                        later: older texts, files and goldens stay the same)  */
} mj_attr_spec;
/* The op's attributes in text order; *n = 0 for ops without. */
const mj_attr_spec *mj_op_attrs(mj_op op, int *n);
/* The op's default attributes (all zero for ops without). */
mj_attrs mj_attrs_default(mj_op op);
bool mj_attrs_equal(const mj_attrs *a, const mj_attrs *b); /* bitwise floats */
/* attrs.dim normalised to 0..rank-1, or -1 if outside -rank..rank-1. */
int mj_attr_dim(const mj_attrs *a, int rank);
/* " {dim=-1, keepdim=true}" for the op's attributes ("" without); floats
 * in the shortest form that reads back to the same float. */
void mj_attrs_format(mj_op op, const mj_attrs *a, char *buf, size_t size);

/* Scalar definitions shared by the eager kernels, the interpreter and the
 * JIT's reference (src/core/ops.c): a unary elementwise op (not an activation
 * of mj_act) with its attributes, and a binary one. */
float mj_unary_apply(mj_op op, const mj_attrs *a, float x);
float mj_binary_apply(mj_op op, float a, float b);
/* The eager kernel of a binary elementwise op (MJ_CASE_BINARY_OPS), as
 * mj_add, mj_sub, ... call it. */
mj_status mj_binary_op(mj_tensor **out, const mj_tensor *a, const mj_tensor *b, mj_op op);

#endif
