/* Dead code elimination: drops every node no graph output depends on.
 * Input nodes always stay: they are the graph's signature (a caller passes
 * every input, used or not). */
#include "ir.h"

mj_status mj_pass_dce(mj_graph *g) {
    bool *live = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *live);
    if (!live) return MJ_ERR_NOMEM;
    for (int32_t i = 0; i < g->n_outputs; i++) live[g->outputs[i]] = true;
    /* Operands precede their users (SSA order): one backward sweep suffices. */
    bool any_dead = false;
    for (int32_t i = g->n_nodes - 1; i >= 0; i--) {
        const mj_node *n = &g->nodes[i];
        if (n->op == MJ_OP_INPUT) live[i] = true;
        if (!live[i]) {
            any_dead = true;
            continue;
        }
        for (int k = 0; k < n->n_operands; k++) live[n->operands[k]] = true;
    }
    mj_status s = any_dead ? mj_graph_compact(g, live) : MJ_OK;
    free(live);
    return s;
}
