/* Fast mode's tolerance: how far a result may honestly be from the
 * reference when sums are reassociated (docs/numerics.md, "How close fast
 * mode is"). The one definition `maskjit check`, the benchmark's check, the
 * differential fuzzer and the tests use. */
#include <math.h>

#include "ir.h"

int64_t mj_node_sum_length(const mj_graph *g, int32_t id, int64_t batch) {
    const mj_node *n = &g->nodes[id];
    if (mj_op_table[n->op].flags & MJ_OPF_LEAF) return 1;
    const mj_type *x = &g->nodes[n->operands[0]].type;
    int64_t k = 1;
    switch (n->op) {
    case MJ_OP_LINEAR:
    case MJ_OP_LINEAR_ACT:
    case MJ_OP_LINEAR_ADD:
    case MJ_OP_LINEAR_ACT_ADD:
    case MJ_OP_MATMUL: k = x->dims[x->rank - 1]; break;
    case MJ_OP_CONV2D: { /* in_channels / groups * kh * kw */
        const mj_type *w = &g->nodes[n->operands[1]].type;
        k = w->dims[1] * w->dims[2] * w->dims[3];
        break;
    }
    case MJ_OP_AVG_POOL2D:
    case MJ_OP_ADAPTIVE_AVG_POOL2D: k = x->dims[2] * x->dims[3]; break; /* at most the window */
    default:
        if (mj_op_table[n->op].flags & MJ_OPF_REDUCE) k = x->dims[mj_reduce_dim(n, x->rank)];
        break;
    }
    if (k == MJ_DIM_BATCH) k = batch;
    return k > 1 ? k : 1;
}

int64_t mj_graph_sum_length(const mj_graph *g, int32_t id, int64_t batch) {
    MJ_ASSERT(id >= 0 && id < g->n_nodes);
    /* nodes are in topological order: one pass up to id */
    int64_t *len = malloc((size_t)(id + 1) * sizeof *len);
    if (!len) return mj_node_sum_length(g, id, batch); /* a smaller bound; never seen in practice */
    for (int32_t i = 0; i <= id; i++) {
        const mj_node *n = &g->nodes[i];
        int64_t l = mj_node_sum_length(g, i, batch);
        for (int o = 0; o < n->n_operands; o++)
            if (len[n->operands[o]] > l) l = len[n->operands[o]];
        len[i] = l;
    }
    int64_t r = len[id];
    free(len);
    return r;
}

mj_tolerance mj_fast_tolerance(int64_t sum_len, double scale) {
    double k = (double)(sum_len > 1 ? sum_len : 1);
    mj_tolerance t = {.sum_len = sum_len > 1 ? sum_len : 1, .scale = scale};
    t.rtol = fmax(MJ_TOL_C * sqrt(k) * 0x1p-24, MJ_RTOL_F32);
    t.atol = MJ_TOL_C * k * 0x1p-24 * scale;
    return t;
}

double mj_tolerance_scale(const mj_tensor *ref) {
    const float *p = ref->data;
    int64_t n = mj_tensor_numel(ref), m = 0;
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(p[i])) {
            s += fabs((double)p[i]);
            m++;
        }
    return m ? s / (double)m : 0;
}

mj_status mj_graph_output_tolerance(const mj_graph *g, int i, int64_t batch, const mj_tensor *ref,
                                    mj_tolerance *out) {
    if (!g || !ref || !out) return mj_fail(MJ_ERR_INVALID, "mj_graph_output_tolerance: NULL argument");
    if (i < 0 || i >= g->n_outputs)
        return mj_fail(MJ_ERR_INVALID, "mj_graph_output_tolerance: output %d of a graph with %d", i,
                       g->n_outputs);
    if (batch < 1) return mj_fail(MJ_ERR_INVALID, "mj_graph_output_tolerance: batch %lld", (long long)batch);
    *out = mj_fast_tolerance(mj_graph_sum_length(g, g->outputs[i], batch), mj_tolerance_scale(ref));
    return MJ_OK;
}
