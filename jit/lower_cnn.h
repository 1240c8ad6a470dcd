/* The CNN ops of the IR lowered to LLVM IR (jit/lower_cnn.c): conv2d,
 * batch_norm, max_pool2d, avg_pool2d, adaptive_avg_pool2d. jit/lower.c's
 * op switch calls mj_lower_cnn with the node's pointers; the code is built
 * with emit.h's helpers and keeps its exact-mode contract. */
#ifndef MJ_JIT_LOWER_CNN_H
#define MJ_JIT_LOWER_CNN_H

#include "../ir/ir.h"
#include "emit.h"

/* The elementwise ops a conv2d computes in its store, in graph order (the
 * plan's tail of the conv: jit/lower_plan.c), each on the value so far. */
enum { MJ_CONV_TAIL_MAX = 6 };
typedef struct mj_conv_step {
    mj_op op;          /* MJ_OP_BATCH_NORM, an activation or MJ_OP_ADD     */
    LLVMValueRef p[4]; /* batch_norm: mean, var, weight, bias (NULL: none);
                          add: p[0] the other operand, of the output's type */
    float eps;         /* batch_norm                                        */
    bool r_first;      /* add: the other operand is the add's first         */
    bool fault;        /* test-only (jit_test.h): + 0.5 after this step     */
} mj_conv_step;

typedef struct mj_cnn_lowering {
    mj_emit *e;               /* builder at the op's place in the body         */
    const mj_graph *g;
    int32_t id;               /* the node                                      */
    LLVMValueRef y;           /* its output storage                            */
    LLVMValueRef ops[5];      /* its operands' storage                         */
    LLVMValueRef batch;       /* the value of B in this call                   */
    const float *conv_weight; /* frozen conv2d: the weight's values, baked in;
                                 NULL: read the weight at run time (live)      */
    const char *prefix;       /* unique name prefix for the op's tables        */
    LLVMValueRef scratch;     /* frozen conv2d: mj_conv_sparse_scratch_floats
                                 floats of its own (NULL: none)                */
    /* conv2d: its tail; y is then the last step's storage */
    int n_tail;
    mj_conv_step tail[MJ_CONV_TAIL_MAX];
    bool fault;               /* test-only: + 0.5 on the conv's own value      */
    /* frozen sparse conv2d: x is stored zero-padded for it (its borders
     * still to be zeroed); y_padded: y is stored in the next conv's padded
     * layout, pad_y[0..1] rows and columns around each plane and rows as
     * long as that conv's (longer than OW + 2 pad_y[1] where it rounds them
     * up: so also with no padding) */
    bool x_padded, y_padded;
    int64_t pad_y[2];
    /* column mode's threads: a conv2d shares its work between them (the
     * other CNN ops run on thread 0 alone); with the tap table each has
     * mj_conv_sparse_thread_floats of its own, thread_stride apart after
     * the conv's shared part of the scratch */
    const mj_emit_team *team;
    int64_t thread_stride;
    int how; /* conv2d: its mj_conv_lowering, the plan's (below) */
} mj_cnn_lowering;

/* The conv's store: per output channel o (an i64 value) the tail's
 * per-channel values (batch_norm's alpha and beta, as eager computes them),
 * then per element (or vector of lanes elements: lanes >= 1) of the conv's
 * value v (bias added) at element index idx of the output, the tail. */
typedef struct mj_conv_coefs {
    LLVMValueRef alpha[MJ_CONV_TAIL_MAX], beta[MJ_CONV_TAIL_MAX];
} mj_conv_coefs;
void mj_conv_tail_coefs(const mj_cnn_lowering *c, LLVMValueRef o, mj_conv_coefs *k);
LLVMValueRef mj_conv_tail_apply(const mj_cnn_lowering *c, const mj_conv_coefs *k, LLVMValueRef v, LLVMValueRef idx,
                                int lanes);

/* The register tile's vectors per image and output channel of conv2d id
 * (its cost, in the sparse conv's model). */
int64_t mj_conv_tile_vectors(const mj_graph *g, int32_t id, int vw);
/* Whether the register tile runs conv `id` as a depthwise conv: a row's
 * vectors loaded once per tap row, a shuffle per tap column. */
bool mj_conv_tile_is_depthwise(const mj_graph *g, int32_t id, int vw);

/* Lane l (of lanes <= vw) of a vector from row xr of W floats: xr[iw0 +
 * l*sw], or pad where that lies outside [0, W), where l >= lanes or where
 * hvalid (an i1) is off; nothing outside the row is read. interior: the
 * caller knows every lane and the whole span of sw*vw floats lie inside
 * the row and hvalid is on (a plain load then). */
LLVMValueRef mj_conv_row_lanes(mj_emit *e, LLVMValueRef xr, LLVMValueRef iw0, int64_t sw, int64_t W, int lanes,
                               LLVMValueRef hvalid, float pad, bool interior);

/* MJ_ERR_NOMEM if the frozen tables cannot be built. */
mj_status mj_lower_cnn(const mj_cnn_lowering *c);

/* How conv2d id is lowered, given its frozen weight w (NULL: live) and
 * whether the body has the sparse scratch (frozen): from the table of its
 * nonzero taps (jit/lower_conv_sparse.c) or as a register tile of output
 * channels times a vector of a row. Each shares its work between column
 * mode's threads. The plan (jit/lower_plan.c) decides it once; the
 * lowering follows the plan. */
typedef enum mj_conv_lowering { MJ_CONV_SPARSE, MJ_CONV_TILED } mj_conv_lowering;
mj_conv_lowering mj_conv_lowering_of(const mj_graph *g, int32_t id, const float *w, bool scratch, int vw);

/* Frozen conv2d from a table of its nonzero taps
 * (jit/lower_conv_sparse.c). The scratch it needs (0: never used for this
 * node); of that, what each thread sharing the conv's tiles needs of its
 * own; whether it beats lower_cnn.c's dense tile for node id with the
 * frozen weight w, for vectors of vw floats (mj_conv_lowering_of asks);
 * the lowering (false: out of memory). */
int64_t mj_conv_sparse_scratch_floats(const mj_graph *g, int32_t id);
int64_t mj_conv_sparse_thread_floats(const mj_graph *g, int32_t id);
bool mj_conv_sparse_takes(const mj_graph *g, int32_t id, const float *w, int vw);
/* The storage of node id's input when the producer writes it zero-padded
 * for the sparse conv id (the plan's padded_by): per_image floats per
 * image (C planes of Hp rows Wp apart, Wp >= W + 2pw as that conv lays
 * them out), plus the returned floats once after the last image (the
 * tiles' overrun; a multiple of 16). */
int64_t mj_conv_sparse_padded_floats(const mj_graph *g, int32_t id, int64_t *per_image);
bool mj_lower_conv_sparse(const mj_cnn_lowering *c);

#endif
