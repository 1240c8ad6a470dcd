/* The CNN ops of the IR lowered to LLVM IR (jit/lower_cnn.c): conv2d,
 * batch_norm, max_pool2d, avg_pool2d, adaptive_avg_pool2d. jit/lower.c's
 * op switch calls mj_lower_cnn with the node's pointers; the code is built
 * with emit.h's helpers and keeps its exact-mode contract. */
#ifndef MJ_JIT_LOWER_CNN_H
#define MJ_JIT_LOWER_CNN_H

#include "../ir/ir.h"
#include "emit.h"

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
} mj_cnn_lowering;

/* MJ_ERR_NOMEM if the frozen tables cannot be built. */
mj_status mj_lower_cnn(const mj_cnn_lowering *c);

/* Frozen conv2d with stride 1 along W from a table of its nonzero taps
 * (jit/lower_conv_sparse.c). The scratch it needs (0: never used for this
 * node); whether it beats lower_cnn.c's dense tile for c; the lowering
 * (false: out of memory). */
int64_t mj_conv_sparse_scratch_floats(const mj_graph *g, int32_t id);
bool mj_conv_sparse_wanted(const mj_cnn_lowering *c);
bool mj_lower_conv_sparse(const mj_cnn_lowering *c);

#endif
