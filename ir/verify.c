/* The verifier: the invariants every pass must keep (checked between passes
 * by mj_graph_optimize and after parsing). Messages name the node. */
#include <string.h>

#include "ir_core.h"

typedef struct leaf_key {
    mj_op op;
    const char *name;
    int32_t id;
} leaf_key;

static int cmp_leaf(const void *a, const void *b) {
    const leaf_key *x = a, *y = b;
    if (x->op != y->op) return x->op < y->op ? -1 : 1;
    int c = strcmp(x->name, y->name);
    if (c) return c;
    return x->id < y->id ? -1 : x->id > y->id;
}

static mj_status node_err(int32_t i, const mj_node *n, mj_status s, const char *fmt, const char *a,
                          const char *b) {
    const char *opn = (unsigned)n->op < MJ_OP_COUNT ? mj_op_table[n->op].name : "?";
    char msg[600];
    snprintf(msg, sizeof msg, fmt, a ? a : "", b ? b : "");
    return mj_fail(s, "%%%d (%s): %s", (int)i, opn, msg);
}

static mj_status verify_node(const mj_graph *g, int32_t i) {
    const mj_node *n = &g->nodes[i];
    char buf[64], buf2[96], buf3[96];
    if ((unsigned)n->op >= MJ_OP_COUNT) {
        snprintf(buf, sizeof buf, "%d", (int)n->op);
        return node_err(i, n, MJ_ERR_INVALID, "unknown op %s", buf, NULL);
    }
    const mj_op_info *info = &mj_op_table[n->op];
    if (n->n_operands < info->min_operands || n->n_operands > info->max_operands) {
        snprintf(buf, sizeof buf, "%d", n->n_operands);
        return node_err(i, n, MJ_ERR_INVALID, "has %s operands, outside the op's arity", buf, NULL);
    }
    for (int k = 0; k < n->n_operands; k++)
        if (n->operands[k] < 0 || n->operands[k] >= i) {
            snprintf(buf, sizeof buf, "%%%d", (int)n->operands[k]);
            return node_err(i, n, MJ_ERR_INVALID, "operand %s is not an earlier value (SSA order)", buf, NULL);
        }
    if (info->flags & MJ_OPF_ACT_ATTR) {
        if (n->act <= MJ_ACT_NONE || n->act >= MJ_ACT_COUNT) {
            snprintf(buf, sizeof buf, "%d", (int)n->act);
            return node_err(i, n, MJ_ERR_INVALID, "needs an activation, has act %s", buf, NULL);
        }
    } else if (n->act != MJ_ACT_NONE) {
        return node_err(i, n, MJ_ERR_INVALID, "carries an activation attribute the op does not take", NULL, NULL);
    }
    if (info->flags & MJ_OPF_LEAF) {
        if (!mj_ir_name_ok(n->name))
            return node_err(i, n, MJ_ERR_INVALID, "a leaf needs a name of 1..1024 printable ASCII characters", NULL,
                            NULL);
        if (mj_type_check(&n->type, n->op == MJ_OP_INPUT, "type") != MJ_OK) {
            snprintf(buf3, sizeof buf3, "%s", mj_last_error());
            return node_err(i, n, MJ_ERR_SHAPE, "%s", buf3, NULL);
        }
        if (n->tensor) {
            if (n->op == MJ_OP_INPUT) return node_err(i, n, MJ_ERR_INVALID, "an input has a tensor", NULL, NULL);
            mj_type tt;
            mj_type_of_tensor(n->tensor, &tt);
            if (!mj_type_equal(&tt, &n->type))
                return node_err(i, n, MJ_ERR_SHAPE, "bound tensor is %s but the type is %s",
                                mj_type_str(buf2, sizeof buf2, &tt), mj_type_str(buf3, sizeof buf3, &n->type));
        }
        return MJ_OK;
    }
    if (n->name) return node_err(i, n, MJ_ERR_INVALID, "an op node has a name", NULL, NULL);
    if (n->tensor) return node_err(i, n, MJ_ERR_INVALID, "an op node has a tensor", NULL, NULL);
    mj_type t;
    mj_shape_attrs sa = n->sa;
    mj_status s = mj_infer_type_full(g, n->op, n->n_operands, n->operands, n->act, &n->attrs, &sa, &n->type, &t);
    if (s != MJ_OK) return mj_fail_prefix(s, "%%%d (%s)", (int)i, info->name);
    if (memcmp(&sa, &n->sa, sizeof sa) != 0)
        return node_err(i, n, MJ_ERR_INVALID, "shape attributes are not in normal form (dims >= 0, dim0 < dim1)",
                        NULL, NULL);
    if (!mj_type_equal(&t, &n->type))
        return node_err(i, n, MJ_ERR_SHAPE, "type %s differs from the inferred %s",
                        mj_type_str(buf2, sizeof buf2, &n->type), mj_type_str(buf3, sizeof buf3, &t));
    return MJ_OK;
}

mj_status mj_graph_verify(const mj_graph *g) {
    if (!g) return mj_fail(MJ_ERR_INVALID, "verify: graph is NULL");
    if (g->n_nodes < 0 || g->n_nodes > MJ_MAX_NODES)
        return mj_fail(MJ_ERR_LIMIT, "verify: %d nodes (at most %d)", (int)g->n_nodes, MJ_MAX_NODES);
    int32_t n_leaves = 0, n_inputs = 0;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        MJ_TRY(verify_node(g, i));
        if (mj_op_table[g->nodes[i].op].flags & MJ_OPF_LEAF) n_leaves++;
        n_inputs += g->nodes[i].op == MJ_OP_INPUT;
    }
    if (n_inputs == 0) return mj_fail(MJ_ERR_INVALID, "verify: the graph has no input");
    if (g->n_outputs < 1) return mj_fail(MJ_ERR_INVALID, "verify: the graph has no output (needs 'return')");
    for (int32_t i = 0; i < g->n_outputs; i++)
        if (g->outputs[i] < 0 || g->outputs[i] >= g->n_nodes)
            return mj_fail(MJ_ERR_INVALID, "verify: output %d is %%%d, not a value of the graph (%d nodes)", (int)i,
                           (int)g->outputs[i], (int)g->n_nodes);
    /* Leaf names unique per kind: sort (op, name) pairs, compare neighbours. */
    if (n_leaves > 1) {
        leaf_key *k = mj_alloc_array((size_t)n_leaves, sizeof *k);
        if (!k) return MJ_ERR_NOMEM;
        int32_t m = 0;
        for (int32_t i = 0; i < g->n_nodes; i++)
            if (mj_op_table[g->nodes[i].op].flags & MJ_OPF_LEAF)
                k[m++] = (leaf_key){g->nodes[i].op, g->nodes[i].name, i};
        qsort(k, (size_t)m, sizeof *k, cmp_leaf);
        for (int32_t i = 1; i < m; i++)
            if (k[i].op == k[i - 1].op && strcmp(k[i].name, k[i - 1].name) == 0) {
                mj_status s = mj_fail(MJ_ERR_KEY, "%%%d (%s): duplicate name \"%s\" (already %%%d)", (int)k[i].id,
                                      mj_op_table[k[i].op].name, k[i].name, (int)k[i - 1].id);
                free(k);
                return s;
            }
        free(k);
    }
    return MJ_OK;
}
