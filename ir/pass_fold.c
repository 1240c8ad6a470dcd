/* Constant folding: an operation whose operands are all `const` nodes with
 * data is evaluated now, with the interpreter's kernels (the eager ones, so
 * the folded value is bit-identical to computing it at run time), and the
 * node becomes a const named "fold.<id>". Params are never folded: they are
 * live (mj_graph_freeze turns them into consts first). Nodes are visited in
 * SSA order, so chains of constant ops fold in one pass; the operands left
 * without uses are for dce. */
#include <stdio.h>
#include <string.h>

#include "ir.h"

static bool name_taken(const mj_graph *g, const char *name) {
    return mj_graph_find_leaf(g, MJ_OP_CONST, name) >= 0 ||
           mj_graph_find_leaf(g, MJ_OP_PARAM, name) >= 0 ||
           mj_graph_find_leaf(g, MJ_OP_INPUT, name) >= 0;
}

mj_status mj_pass_fold(mj_graph *g) {
    for (int32_t i = 0; i < g->n_nodes; i++) {
        mj_node *n = &g->nodes[i];
        if ((mj_op_table[n->op].flags & MJ_OPF_LEAF) || n->n_operands == 0) continue;
        const mj_tensor *vals[MJ_MAX_OPERANDS];
        bool all_const = true;
        for (int k = 0; k < n->n_operands && all_const; k++) {
            const mj_node *a = &g->nodes[n->operands[k]];
            all_const = a->op == MJ_OP_CONST && a->tensor;
            vals[k] = a->tensor;
        }
        if (!all_const) continue;
        MJ_ASSERT(!mj_type_has_batch(&n->type)); /* consts have no B, nor what they make */

        char name[48];
        snprintf(name, sizeof name, "fold.%d", (int)i);
        for (int suffix = 1; name_taken(g, name); suffix++)
            snprintf(name, sizeof name, "fold.%d.%d", (int)i, suffix);
        char *copy = mj_strdup(name);
        if (!copy) return MJ_ERR_NOMEM;
        mj_tensor *v = NULL;
        mj_status s = mj_interp_node(g, n, vals, &v);
        if (s != MJ_OK) {
            free(copy);
            return mj_fail_prefix(s, "fold: %%%d (%s)", (int)i, mj_op_table[n->op].name);
        }
        int64_t shape[MJ_MAX_RANK];
        mj_type_shape(&n->type, 1, shape);
        MJ_ASSERT(mj_shape_equal(v->rank, v->shape, n->type.rank, shape));
        /* In place: a leaf has no operands, so SSA order is kept. */
        n->op = MJ_OP_CONST;
        n->n_operands = 0;
        n->act = MJ_ACT_NONE;
        memset(&n->attrs, 0, sizeof n->attrs);
        n->name = copy;
        n->tensor = v;
    }
    return MJ_OK;
}
