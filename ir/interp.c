/* The reference interpreter: evaluates a graph node by node with the eager
 * kernels of src/core/ops.c, so its results are bit-identical to eager mode. */
#include <string.h>

#include "ir_core.h"
#include "src/core/observer.h"
#include "maskjit/cnn.h"

/* The batch size of a value of type t held in tensor v (-1 if t has no B). */
static int64_t batch_of(const mj_type *t, const mj_tensor *v) {
    for (int i = 0; i < t->rank && i < v->rank; i++)
        if (t->dims[i] == MJ_DIM_BATCH) return v->shape[i];
    return -1;
}

/* expand: x[..., k] b[n]? -> x[...] + [n], every element 0.0f + b[j] (or
 * +0.0f): what linear computes with an all-zero weight. */
static mj_status eval_expand(const mj_node *n, const mj_tensor *x, const mj_tensor *b, mj_tensor **out) {
    int64_t shape[MJ_MAX_RANK];
    int rank = x->rank;
    memcpy(shape, x->shape, sizeof shape);
    int64_t cols = b ? b->shape[0] : n->type.dims[rank - 1];
    if (cols < 0) return mj_fail(MJ_ERR_SHAPE, "expand: output width is not concrete");
    shape[rank - 1] = cols;
    mj_tensor *y;
    MJ_TRY(mj_tensor_new_uninit(&y, rank, shape));
    int64_t rows = cols ? y->numel / cols : 0;
    const float *bd = b ? b->data : NULL;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) y->data[r * cols + j] = bd ? 0.0f + bd[j] : +0.0f;
    *out = y;
    return MJ_OK;
}

static mj_status eval_node(const mj_node *n, const mj_tensor *const *v, int64_t batch, mj_tensor **out) {
    const mj_op_info *info = &mj_op_table[n->op];
    switch (n->op) {
    case MJ_OP_INPUT:
        return mj_fail(MJ_ERR_INVALID, "input \"%s\" has no value here", n->name);
    case MJ_OP_PARAM:
    case MJ_OP_CONST:
        if (!n->tensor)
            return mj_fail(MJ_ERR_STATE, "%s \"%s\" is not bound to a tensor (see mj_graph_bind)", info->name,
                           n->name);
        *out = mj_tensor_retain(n->tensor);
        return MJ_OK;
    case MJ_OP_MATMUL:
        return mj_matmul(out, v[0], v[1]);
    case MJ_OP_LINEAR:
        return mj_linear(out, v[0], v[1], n->n_operands == 3 ? v[2] : NULL);
    case MJ_OP_LINEAR_ACT: {
        mj_tensor *t;
        MJ_TRY(mj_linear(&t, v[0], v[1], n->n_operands == 3 ? v[2] : NULL));
        mj_status s = mj_activation(out, n->act, t);
        mj_tensor_release(t);
        return s;
    }
    case MJ_OP_LINEAR_ADD:
    case MJ_OP_LINEAR_ACT_ADD: { /* the separate ops, one rounding each */
        mj_tensor *t, *a = NULL;
        int nl = MJ_LINEAR_N_OPS(n);
        MJ_TRY(mj_linear(&t, v[0], v[1], nl == 3 ? v[2] : NULL));
        mj_status s = MJ_OK;
        if (n->op == MJ_OP_LINEAR_ACT_ADD) s = mj_activation(&a, n->act, t);
        if (s == MJ_OK) s = mj_add(out, a ? a : t, v[nl]);
        mj_tensor_release(a);
        mj_tensor_release(t);
        return s;
    }
    case MJ_OP_EXPAND:
        return eval_expand(n, v[0], n->n_operands == 2 ? v[1] : NULL, out);
    MJ_CASE_BINARY_OPS:
        return mj_binary_op(out, v[0], v[1], n->op);
    case MJ_OP_TRANSPOSE:
        return mj_transpose_dims(out, v[0], n->sa.dim0, n->sa.dim1);
    case MJ_OP_PERMUTE: {
        int perm[MJ_MAX_RANK];
        for (int d = 0; d < MJ_MAX_RANK; d++) perm[d] = n->sa.perm[d];
        return mj_permute(out, v[0], v[0]->rank, perm);
    }
    case MJ_OP_SLICE:
        return mj_slice(out, v[0], n->sa.dim, n->sa.start, n->sa.end);
    case MJ_OP_CAT:
        return mj_cat(out, n->n_operands, v, n->sa.dim);
    case MJ_OP_RESHAPE: {
        int64_t shape[MJ_MAX_RANK];
        mj_type_shape(&n->type, batch, shape);
        return mj_reshape(out, v[0], n->type.rank, shape);
    }
    /* the math of transformers */
    case MJ_OP_NEG:
        return mj_neg(out, v[0]);
    case MJ_OP_EXP:
        return mj_exp(out, v[0]);
    case MJ_OP_LOG:
        return mj_log(out, v[0]);
    case MJ_OP_SQRT:
        return mj_sqrt(out, v[0]);
    case MJ_OP_RSQRT:
        return mj_rsqrt(out, v[0]);
    case MJ_OP_POW:
        return mj_pow_scalar(out, v[0], n->attrs.f[0]);
    case MJ_OP_LEAKY_RELU:
        return mj_leaky_relu(out, v[0], n->attrs.f[0]);
    case MJ_OP_ELU:
        return mj_elu(out, v[0], n->attrs.f[0]);
    case MJ_OP_HARDTANH:
        return mj_hardtanh(out, v[0], n->attrs.f[0], n->attrs.f[1]);
    case MJ_OP_SOFTPLUS:
        return mj_softplus(out, v[0], n->attrs.f[0], n->attrs.f[1]);
    case MJ_OP_SUM:
        return mj_sum(out, v[0], n->attrs.dim, n->attrs.keepdim);
    case MJ_OP_MEAN:
        return mj_mean(out, v[0], n->attrs.dim, n->attrs.keepdim);
    case MJ_OP_SOFTMAX:
        return mj_softmax(out, v[0], n->attrs.dim);
    case MJ_OP_LOG_SOFTMAX:
        return mj_log_softmax(out, v[0], n->attrs.dim);
    case MJ_OP_LAYER_NORM:
        return mj_layer_norm(out, v[0], n->n_operands >= 2 ? v[1] : NULL, n->n_operands == 3 ? v[2] : NULL,
                             n->attrs.f[0]);
    MJ_CASE_ACT_OPS: return mj_activation(out, info->act, v[0]);
    /* the layers of CNNs (src/nn/cnn.c) */
    case MJ_OP_CONV2D: {
        mj_conv2d_params p;
        for (int i = 0; i < 2; i++) {
            p.stride[i] = n->attrs.i[MJ_CONV_STRIDE + i];
            p.padding[i] = n->attrs.i[MJ_CONV_PADDING + i];
            p.dilation[i] = n->attrs.i[MJ_CONV_DILATION + i];
        }
        p.groups = n->attrs.i[MJ_CONV_GROUPS];
        return mj_conv2d(out, v[0], v[1], n->n_operands == 3 ? v[2] : NULL, &p);
    }
    case MJ_OP_BATCH_NORM:
        return mj_batch_norm(out, v[0], v[1], v[2], n->n_operands >= 4 ? v[3] : NULL,
                             n->n_operands == 5 ? v[4] : NULL, n->attrs.f[0]);
    case MJ_OP_MAX_POOL2D:
    case MJ_OP_AVG_POOL2D: {
        mj_pool2d_params p = {.max = n->op == MJ_OP_MAX_POOL2D,
                              .ceil_mode = n->attrs.i[MJ_POOL_CEIL] != 0,
                              .count_include_pad = n->attrs.i[MJ_POOL_COUNT_PAD] != 0};
        for (int i = 0; i < 2; i++) {
            p.kernel[i] = n->attrs.i[MJ_POOL_KERNEL + i];
            p.stride[i] = n->attrs.i[MJ_POOL_STRIDE + i];
            p.padding[i] = n->attrs.i[MJ_POOL_PADDING + i];
        }
        return mj_pool2d(out, v[0], &p);
    }
    case MJ_OP_ADAPTIVE_AVG_POOL2D:
        return mj_adaptive_avg_pool2d(out, v[0], n->attrs.i[0], n->attrs.i[1]);
    case MJ_OP_COUNT: break;
    }
    MJ_ASSERT(!"not an op (the graph is verified)");
}

mj_status mj_interp_node(const mj_graph *g, const mj_node *n, const mj_tensor *const *operands,
                         mj_tensor **out) {
    if (!n || !out || (n->n_operands > 0 && !operands))
        return mj_fail(MJ_ERR_INVALID, "mj_interp_node: NULL argument");
    if ((unsigned)n->op >= MJ_OP_COUNT) return mj_fail(MJ_ERR_INVALID, "unknown op %d", (int)n->op);
    for (int i = 0; i < n->n_operands; i++)
        if (!operands[i]) return mj_fail(MJ_ERR_INVALID, "mj_interp_node: operand %d is NULL", i);
    /* The batch comes from the operands: where their types have B. */
    int64_t batch = -1;
    for (int i = 0; i < n->n_operands && batch < 0 && g; i++) {
        int32_t a = n->operands[i];
        if (a >= 0 && a < g->n_nodes) batch = batch_of(&g->nodes[a].type, operands[i]);
    }
    /* An internal call (folding, the JIT's prologue): the kernels compute a
     * node of a graph, not an op of a forward an observer watches. */
    const mj_op_observer *saved = mj_observer_suspend();
    mj_status s = eval_node(n, operands, batch, out);
    mj_observer_resume(saved);
    return s;
}

/* Checks input tensor v against the input node's type and fixes *batch. */
static mj_status check_input(const mj_node *n, int idx, const mj_tensor *v, int64_t *batch) {
    char want[96], got[96];
    mj_type_str(want, sizeof want, &n->type);
    if (!v) return mj_fail(MJ_ERR_INVALID, "input %d (\"%s\"): expected %s, got NULL", idx, n->name, want);
    bool ok = v->rank == n->type.rank;
    for (int d = 0; ok && d < v->rank; d++) {
        int64_t td = n->type.dims[d];
        if (td == MJ_DIM_BATCH) {
            if (v->shape[d] < 1) ok = false;
            else if (*batch < 0) *batch = v->shape[d];
            else if (*batch != v->shape[d]) ok = false;
        } else if (td != v->shape[d]) {
            ok = false;
        }
    }
    if (!ok) {
        mj_shape_str(got, sizeof got, v->rank, v->shape);
        if (*batch >= 0)
            return mj_fail(MJ_ERR_SHAPE, "input %d (\"%s\"): expected %s with B = %lld (B >= 1), got shape %s",
                           idx, n->name, want, (long long)*batch, got);
        return mj_fail(MJ_ERR_SHAPE, "input %d (\"%s\"): expected %s (B >= 1), got shape %s", idx, n->name,
                       want, got);
    }
    return MJ_OK;
}

mj_status mj_interp_run(const mj_graph *g, int n_in, const mj_tensor *const *in, int n_out,
                        mj_tensor **out) {
    if (!g || !out || (n_in > 0 && !in)) return mj_fail(MJ_ERR_INVALID, "mj_interp_run: NULL argument");
    /* Some kernels (expand) are not eager ops the tracer records, so the
     * trace would hold part of the result as a const: refused instead. */
    if (mj_observer())
        return mj_fail(MJ_ERR_STATE, "cannot run a graph inside a trace: the interpreter's result would be "
                                     "recorded partly as constants; call the module's forward inside the "
                                     "trace instead");
    int want_in = mj_graph_input_count(g);
    if (n_in != want_in || n_out != g->n_outputs)
        return mj_fail(MJ_ERR_INVALID, "interpreter: the graph takes %d inputs and gives %d outputs, called with %d and %d",
                       want_in, (int)g->n_outputs, n_in, n_out);
    /* Validate inputs and bindings before computing anything. */
    int64_t batch = -1;
    int k = 0;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (n->op == MJ_OP_INPUT) {
            MJ_TRY(check_input(n, k, in[k], &batch));
            k++;
        } else if ((n->op == MJ_OP_PARAM || n->op == MJ_OP_CONST) && !n->tensor) {
            return mj_fail(MJ_ERR_STATE, "interpreter: %s \"%s\" (%%%d) is not bound to a tensor (see mj_graph_bind)",
                           mj_op_table[n->op].name, n->name, (int)i);
        }
    }
    if (batch < 0) batch = 1; /* no input has B: any batch is fine for the types */

    int32_t *last = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *last);
    mj_tensor **val = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *val);
    bool *is_out = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *is_out);
    mj_status s = MJ_OK;
    if (!last || !val || !is_out) {
        s = MJ_ERR_NOMEM;
        goto done;
    }
    for (int32_t i = 0; i < g->n_nodes; i++) {
        last[i] = -1;
        for (int o = 0; o < g->nodes[i].n_operands; o++) last[g->nodes[i].operands[o]] = i;
    }
    for (int32_t i = 0; i < g->n_outputs; i++) is_out[g->outputs[i]] = true;

    k = 0;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (n->op == MJ_OP_INPUT) {
            val[i] = mj_tensor_retain((mj_tensor *)in[k++]);
        } else {
            const mj_tensor *ops[MJ_MAX_OPERANDS];
            for (int o = 0; o < n->n_operands; o++) ops[o] = val[n->operands[o]];
            s = eval_node(n, ops, batch, &val[i]);
            if (s != MJ_OK) {
                mj_fail_prefix(s, "interpreter: %%%d (%s)", (int)i, mj_op_table[n->op].name);
                goto done;
            }
            /* The kernels and the shape rules must agree. */
            int64_t shape[MJ_MAX_RANK];
            mj_type_shape(&n->type, batch, shape);
            MJ_ASSERT(mj_shape_equal(val[i]->rank, val[i]->shape, n->type.rank, shape));
            for (int o = 0; o < n->n_operands; o++) {
                int32_t a = n->operands[o];
                if (last[a] == i && !is_out[a] && val[a]) {
                    mj_tensor_release(val[a]);
                    val[a] = NULL;
                }
            }
        }
        if (last[i] < 0 && !is_out[i]) { /* dead value */
            mj_tensor_release(val[i]);
            val[i] = NULL;
        }
    }
    for (int32_t i = 0; i < g->n_outputs; i++) out[i] = mj_tensor_retain(val[g->outputs[i]]);
done:
    if (val)
        for (int32_t i = 0; i < g->n_nodes; i++) mj_tensor_release(val[i]);
    free(val);
    free(last);
    free(is_out);
    return s;
}
