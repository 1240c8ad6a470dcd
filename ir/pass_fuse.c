/* Fusion: linear(x, w[, b]) whose only use is an activation becomes one
 * linear_act {act} in the activation's place. linear_act is defined as the
 * activation applied to linear's result (same kernels), so the fused graph
 * is bit-identical. A linear with other uses (or that is a graph output)
 * stays as it is: fusing would compute it twice. */
#include "ir.h"

mj_status mj_pass_fuse(mj_graph *g) {
    int32_t *uses = mj_graph_use_counts(g);
    bool *keep = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *keep);
    if (!uses || !keep) {
        free(uses);
        free(keep);
        return MJ_ERR_NOMEM;
    }
    bool fused = false;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        keep[i] = true;
        mj_node *n = &g->nodes[i];
        if (!(mj_op_table[n->op].flags & MJ_OPF_ACTIVATION)) continue;
        int32_t l = n->operands[0];
        mj_node *lin = &g->nodes[l];
        if (lin->op != MJ_OP_LINEAR || uses[l] != 1) continue;
        /* The activation node takes the linear's operands (all earlier than
         * the linear, so SSA order holds) and the linear dies. */
        MJ_ASSERT(mj_type_equal(&n->type, &lin->type));
        n->act = mj_op_table[n->op].act;
        n->op = MJ_OP_LINEAR_ACT;
        n->n_operands = lin->n_operands;
        for (int k = 0; k < lin->n_operands; k++) n->operands[k] = lin->operands[k];
        keep[l] = false;
        fused = true;
    }
    mj_status s = fused ? mj_graph_compact(g, keep) : MJ_OK;
    free(uses);
    free(keep);
    return s;
}
