/* Fusion, in two steps:
 *  1. linear(x, w[, b]) whose only use is an activation becomes one
 *     linear_act {act} in the activation's place;
 *  2. linear / linear_act whose only use is an add whose other operand r has
 *     the add's type (no broadcasting) becomes linear_add / linear_act_add
 *     (x, w[, b], r) in the add's place: the residual of a transformer
 *     sublayer is added in the GEMM epilogue instead of a pass over memory.
 * Each fused op is defined as the separate ops' values, each rounded to
 * float (act(linear) + r; the add is IEEE-commutative, so r + linear is the
 * same value), so the fused graph is bit-identical. A linear with other
 * uses (or that is a graph output) stays as it is: fusing would compute it
 * twice. An activation after the add is not fused (act(lin + r) is another
 * order). MASKJIT_FUSE_RESIDUAL=0 in the environment leaves step 2 out (for
 * measuring the fusion and testing the fused code against the unfused; the
 * compile cache keys on the optimised graph, so both kinds coexist). */
#include <stdlib.h>
#include <string.h>

#include "ir.h"

static bool residual_fusion_on(void) {
    const char *e = getenv("MASKJIT_FUSE_RESIDUAL");
    return !e || strcmp(e, "0") != 0;
}

/* Step 2 for add node n: which operand (0/1) is the fusable linear, or -1. */
static int residual_side(const mj_graph *g, const int32_t *uses, const mj_node *n) {
    for (int k = 0; k < 2; k++) {
        int32_t l = n->operands[k], r = n->operands[1 - k];
        const mj_node *lin = &g->nodes[l];
        if ((lin->op != MJ_OP_LINEAR && lin->op != MJ_OP_LINEAR_ACT) || uses[l] != 1 || l == r) continue;
        if (mj_type_equal(&lin->type, &n->type) && mj_type_equal(&g->nodes[r].type, &n->type)) return k;
    }
    return -1;
}

mj_status mj_pass_fuse(mj_graph *g) {
    /* Uses count only from live nodes (simplify leaves the nodes it
     * bypasses for dce), so only a live node may absorb a linear: a dead
     * activation whose linear has one live user elsewhere must not take it. */
    int32_t *uses = mj_graph_use_counts(g);
    bool *keep = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *keep);
    if (!uses || !keep) {
        MJ_FREE_ALL(uses, keep);
        return MJ_ERR_NOMEM;
    }
    bool fused = false;
    for (int32_t i = 0; i < g->n_nodes; i++) keep[i] = true;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        mj_node *n = &g->nodes[i];
        if (!mj_uses_live(g, uses, i) || !(mj_op_table[n->op].flags & MJ_OPF_ACTIVATION)) continue;
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
    /* Step 1 moved each linear_act into its activation's slot, which kept
     * its use count; the linears it removed had no other user. */
    bool residual = residual_fusion_on();
    for (int32_t i = 0; i < g->n_nodes && residual; i++) {
        mj_node *n = &g->nodes[i];
        if (n->op != MJ_OP_ADD || !keep[i] || !mj_uses_live(g, uses, i)) continue;
        int k = residual_side(g, uses, n);
        if (k < 0) continue;
        int32_t l = n->operands[k], r = n->operands[1 - k];
        const mj_node *lin = &g->nodes[l];
        n->op = lin->op == MJ_OP_LINEAR ? MJ_OP_LINEAR_ADD : MJ_OP_LINEAR_ACT_ADD;
        n->act = lin->act;
        n->n_operands = lin->n_operands + 1;
        for (int j = 0; j < lin->n_operands; j++) n->operands[j] = lin->operands[j];
        n->operands[lin->n_operands] = r;
        keep[l] = false;
        fused = true;
    }
    mj_status s = MJ_OK;
    if (fused) {
        /* dead nodes go too: one may still name a linear that was fused */
        for (int32_t i = 0; i < g->n_nodes; i++) keep[i] = keep[i] && mj_uses_live(g, uses, i);
        s = mj_graph_compact(g, keep);
    }
    MJ_FREE_ALL(uses, keep);
    return s;
}
