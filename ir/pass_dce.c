/* Dead code elimination: drops every node no graph output depends on.
 * Input nodes always stay: they are the graph's signature (a caller passes
 * every input, used or not). */
#include "ir.h"

mj_status mj_pass_dce(mj_graph *g) {
    bool *live = mj_graph_live(g);
    if (!live) return MJ_ERR_NOMEM;
    bool any_dead = false;
    for (int32_t i = 0; i < g->n_nodes; i++) any_dead = any_dead || !live[i];
    mj_status s = any_dead ? mj_graph_compact(g, live) : MJ_OK;
    free(live);
    return s;
}
