/* fold_bn: a batch_norm of a conv2d, all their parameters consts, becomes
 * the conv with scaled weights and a new bias: per output channel
 * alpha = w / sqrtf(var + eps), beta = b - mean * alpha (as the eager
 * kernel), weight' = weight * alpha, bias' = bias * alpha + beta. Not in
 * the default pipeline: it rounds differently from eager (one rounding per
 * product instead of the fmaf of batch norm), so only frozen fast mode runs
 * it (docs/numerics.md). Zero weights stay zero: the mask survives. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ir.h"

static bool is_const(const mj_graph *g, int32_t v) {
    return g->nodes[v].op == MJ_OP_CONST && g->nodes[v].tensor != NULL;
}

/* A const name free in both graphs: "<base>.<i>[.<suffix>]" */
static void fresh_name(const mj_graph *g, const mj_graph *ng, const char *base, int32_t i, char *name, size_t n) {
    snprintf(name, n, "%s.%d", base, (int)i);
    for (int suffix = 1; mj_graph_find_leaf(g, MJ_OP_CONST, name) >= 0 || mj_graph_find_leaf(ng, MJ_OP_CONST, name) >= 0;
         suffix++)
        snprintf(name, n, "%s.%d.%d", base, (int)i, suffix);
}

/* Emits conv node i folded with batch_norm node b into ng (*to: its value). */
static mj_status emit_folded(const mj_graph *g, mj_graph *ng, int32_t i, int32_t b, const int32_t *map, int32_t *to) {
    const mj_node *conv = &g->nodes[i], *bn = &g->nodes[b];
    const mj_tensor *w = g->nodes[conv->operands[1]].tensor;
    const mj_tensor *cb = conv->n_operands == 3 ? g->nodes[conv->operands[2]].tensor : NULL;
    const mj_tensor *mean = g->nodes[bn->operands[1]].tensor, *var = g->nodes[bn->operands[2]].tensor;
    const mj_tensor *gw = bn->n_operands >= 4 ? g->nodes[bn->operands[3]].tensor : NULL;
    const mj_tensor *gb = bn->n_operands == 5 ? g->nodes[bn->operands[4]].tensor : NULL;
    int64_t O = w->shape[0], per = w->numel / O;
    mj_tensor *nw = NULL, *nb = NULL;
    MJ_TRY(mj_tensor_new_uninit(&nw, w->rank, w->shape));
    mj_status s = mj_tensor_new_uninit(&nb, 1, &O);
    if (s != MJ_OK) {
        mj_tensor_release(nw);
        return s;
    }
    for (int64_t o = 0; o < O; o++) {
        float alpha = (gw ? gw->data[o] : 1.0f) / sqrtf(var->data[o] + bn->attrs.f[0]);
        float beta = (gb ? gb->data[o] : 0.0f) - mean->data[o] * alpha;
        for (int64_t k = 0; k < per; k++) nw->data[o * per + k] = w->data[o * per + k] * alpha;
        nb->data[o] = cb ? cb->data[o] * alpha + beta : beta;
    }
    char name[64];
    int32_t ops[3] = {map[conv->operands[0]], -1, -1};
    fresh_name(g, ng, "fold_bn.weight", i, name, sizeof name);
    mj_type wt = g->nodes[conv->operands[1]].type, bt = {.rank = 1, .dims = {O}};
    s = mj_graph_add_leaf(ng, MJ_OP_CONST, name, &wt, nw, &ops[1]);
    fresh_name(g, ng, "fold_bn.bias", i, name, sizeof name);
    if (s == MJ_OK) s = mj_graph_add_leaf(ng, MJ_OP_CONST, name, &bt, nb, &ops[2]);
    if (s == MJ_OK) s = mj_graph_add_op_full(ng, MJ_OP_CONV2D, 3, ops, MJ_ACT_NONE, &conv->attrs, NULL, &bn->type, to);
    mj_tensor_release(nw);
    mj_tensor_release(nb);
    return s;
}

mj_status mj_pass_fold_bn(mj_graph *g) {
    /* uses count from live nodes only: a dead batch_norm must not take a
     * conv whose one live user is another node */
    int32_t *uses = mj_graph_use_counts(g);
    int32_t *fold = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *fold); /* conv -> its batch_norm */
    int32_t *map = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *map);
    mj_graph *ng = NULL;
    mj_status s = uses && fold && map ? mj_graph_new(&ng) : MJ_ERR_NOMEM;
    bool changed = false;
    for (int32_t i = 0; i < g->n_nodes && s == MJ_OK; i++) fold[i] = -1;
    for (int32_t i = 0; i < g->n_nodes && s == MJ_OK; i++) {
        const mj_node *n = &g->nodes[i];
        if (n->op != MJ_OP_BATCH_NORM || !mj_uses_live(g, uses, i)) continue;
        int32_t c = n->operands[0];
        const mj_node *conv = &g->nodes[c];
        bool ok = conv->op == MJ_OP_CONV2D && uses[c] == 1 && is_const(g, conv->operands[1]) &&
                  (conv->n_operands < 3 || is_const(g, conv->operands[2]));
        for (int k = 1; k < n->n_operands; k++) ok = ok && is_const(g, n->operands[k]);
        if (ok) fold[c] = i;
    }
    for (int32_t i = 0; i < g->n_nodes && s == MJ_OK; i++) {
        const mj_node *n = &g->nodes[i];
        if (n->op == MJ_OP_BATCH_NORM && fold[n->operands[0]] == i) {
            map[i] = map[n->operands[0]]; /* the folded conv */
            changed = true;
        } else if (fold[i] >= 0) {
            s = emit_folded(g, ng, i, fold[i], map, &map[i]);
        } else if (mj_op_table[n->op].flags & MJ_OPF_LEAF) {
            s = mj_graph_add_leaf(ng, n->op, n->name, &n->type, n->tensor, &map[i]);
        } else {
            int32_t ops[MJ_MAX_OPERANDS];
            for (int k = 0; k < n->n_operands; k++) ops[k] = map[n->operands[k]];
            s = mj_graph_add_op_full(ng, n->op, n->n_operands, ops, n->act, &n->attrs, &n->sa, &n->type, &map[i]);
        }
    }
    for (int32_t i = 0; i < g->n_outputs && s == MJ_OK; i++) s = mj_graph_add_output(ng, map[g->outputs[i]]);
    for (int32_t i = 0; i < g->n_warnings && s == MJ_OK; i++) s = mj_graph_add_warning(ng, "%s", g->warnings[i]);
    MJ_FREE_ALL(uses, fold, map);
    if (s != MJ_OK || !changed) {
        mj_graph_free(ng);
        return s;
    }
    mj_graph old = *g; /* g takes the rebuilt graph, ng's shell frees the old one */
    *g = *ng;
    *ng = old;
    mj_graph_free(ng);
    return MJ_OK;
}
