/* Algebraic simplification, limited to rewrites that keep the results
 * bit for bit (the JIT's exact mode and the tests rely on it):
 *
 *  - mul(x, c) / mul(c, x), c a const of all 1.0f, type(result) == type(x)
 *      -> x. x * 1.0f == x exactly (an all-ones mask costs nothing).
 *  - mul(x, c) / mul(c, x), c a const of all zeros (+0 or -0) and x a
 *      const of finite values -> a const of the product, computed now with
 *      the eager kernel (so each zero has the product's sign). Only then:
 *      0 * nan and 0 * inf are NaN, and a param (or a value made from one)
 *      may hold either, so a zero mask over it keeps its mul.
 *  - linear / linear_act / linear_add / linear_act_add / matmul whose weight
 *      is a const of all zeros -> expand(x[, b]) (then the activation, then
 *      the add of the residual, as the op has them). Each sum is
 *      +0.0f + x[k]*0 ... = +0.0f when every x[k] is finite (an inf or NaN
 *      input would make it NaN: the one documented exception, see
 *      docs/numerics.md), then + b: what expand computes.
 *  - transpose(transpose(x)) swapping the same two dims -> x: data movement
 *      only. PyTorch's seq-first attention code transposes its batch-first
 *      input and output, and the exporter's batch-first form of it
 *      transposes back: the copies go, and a residual add after the output
 *      projection can fuse into it again.
 *
 * Rewrites look at the rewritten operands, so a zero mask that turns the
 * weight into a zero const also turns its linear into an expand in the same
 * pass. The graph is rebuilt (a linear_act becomes two nodes); values left
 * without uses are for dce.
 */
#include <stdio.h>
#include <string.h>

#include "ir.h"

static bool const_all_bits(const mj_node *n, uint32_t mask, uint32_t want) {
    if (n->op != MJ_OP_CONST || !n->tensor) return false;
    const float *d = n->tensor->data;
    for (int64_t i = 0; i < n->tensor->numel; i++) {
        uint32_t b;
        memcpy(&b, &d[i], sizeof b);
        if ((b & mask) != want) return false;
    }
    return true;
}
static bool is_ones(const mj_node *n) { return const_all_bits(n, 0xffffffffu, 0x3f800000u); }
static bool is_zeros(const mj_node *n) { return const_all_bits(n, 0x7fffffffu, 0); }
/* No NaN and no inf: every exponent field below all ones. */
static bool is_finite(const mj_node *n) {
    if (n->op != MJ_OP_CONST || !n->tensor) return false;
    const float *d = n->tensor->data;
    for (int64_t i = 0; i < n->tensor->numel; i++) {
        uint32_t b;
        memcpy(&b, &d[i], sizeof b);
        if ((b & 0x7f800000u) == 0x7f800000u) return false;
    }
    return true;
}

static bool name_taken(const mj_graph *a, const mj_graph *b, const char *name) {
    for (int k = 0; k < 2; k++) {
        const mj_graph *g = k ? b : a;
        if (mj_graph_find_leaf(g, MJ_OP_CONST, name) >= 0 ||
            mj_graph_find_leaf(g, MJ_OP_PARAM, name) >= 0 ||
            mj_graph_find_leaf(g, MJ_OP_INPUT, name) >= 0)
            return true;
    }
    return false;
}

/* The two dims a transpose swaps, dim0 < dim1 (dim0 == dim1 in the node:
 * the last two). */
static void swapped_dims(const mj_node *n, int *d0, int *d1) {
    *d0 = n->sa.dim0 == n->sa.dim1 ? n->type.rank - 2 : n->sa.dim0;
    *d1 = n->sa.dim0 == n->sa.dim1 ? n->type.rank - 1 : n->sa.dim1;
}

/* Emits old node i into ng with rewrites; *to receives its new value. */
static mj_status emit(const mj_graph *g, mj_graph *ng, int32_t i, const int32_t *map,
                      int32_t *to, bool *changed) {
    const mj_node *n = &g->nodes[i];
    if (mj_op_table[n->op].flags & MJ_OPF_LEAF)
        return mj_graph_add_leaf(ng, n->op, n->name, &n->type, n->tensor, to);

    int32_t ops[MJ_MAX_OPERANDS];
    for (int k = 0; k < n->n_operands; k++) ops[k] = map[n->operands[k]];

    if (n->op == MJ_OP_MUL) {
        for (int k = 0; k < 2; k++) {
            int32_t x = ops[1 - k], c = ops[k];
            if (is_ones(&ng->nodes[c]) && mj_type_equal(&n->type, &ng->nodes[x].type)) {
                *to = x;
                *changed = true;
                return MJ_OK;
            }
        }
        const mj_node *a = &ng->nodes[ops[0]], *b = &ng->nodes[ops[1]];
        if ((is_zeros(a) && is_finite(b)) || (is_zeros(b) && is_finite(a))) {
            char name[48];
            snprintf(name, sizeof name, "zeros.%d", (int)i);
            for (int suffix = 1; name_taken(g, ng, name); suffix++)
                snprintf(name, sizeof name, "zeros.%d.%d", (int)i, suffix);
            MJ_ASSERT(!mj_type_has_batch(&n->type)); /* both operands are consts */
            const mj_tensor *vals[2] = {a->tensor, b->tensor};
            mj_tensor *z = NULL;
            MJ_TRY(mj_interp_node(g, n, vals, &z));
            mj_status s = mj_graph_add_leaf(ng, MJ_OP_CONST, name, &n->type, z, to);
            mj_tensor_release(z);
            *changed = true;
            return s;
        }
    }
    if (n->op == MJ_OP_TRANSPOSE && ng->nodes[ops[0]].op == MJ_OP_TRANSPOSE) {
        const mj_node *inner = &ng->nodes[ops[0]];
        int a0, a1, b0, b1;
        swapped_dims(n, &a0, &a1);
        swapped_dims(inner, &b0, &b1);
        if (a0 == b0 && a1 == b1 && mj_type_equal(&n->type, &ng->nodes[inner->operands[0]].type)) {
            *to = inner->operands[0];
            *changed = true;
            return MJ_OK;
        }
    }
    if ((mj_op_is_linear(n->op) ||
         (n->op == MJ_OP_MATMUL && ng->nodes[ops[1]].type.rank == 2)) && /* not batched */
        is_zeros(&ng->nodes[ops[1]])) {
        bool has_bias = n->op != MJ_OP_MATMUL && MJ_LINEAR_BIAS(n) >= 0;
        int32_t e, args[2] = {ops[0], has_bias ? ops[2] : -1};
        /* Without a bias the width comes from the declared type: the old
         * node's (an activation and a residual keep the type). */
        MJ_TRY(mj_graph_add_op(ng, MJ_OP_EXPAND, has_bias ? 2 : 1, args, MJ_ACT_NONE, has_bias ? NULL : &n->type,
                               &e));
        *changed = true;
        mj_act act = n->op == MJ_OP_MATMUL ? MJ_ACT_NONE : MJ_LINEAR_ACT(n);
        if (act != MJ_ACT_NONE) MJ_TRY(mj_graph_add_op(ng, mj_op_for_act(act), 1, &e, MJ_ACT_NONE, &n->type, &e));
        if (n->op == MJ_OP_MATMUL || !mj_op_has_residual(n->op)) {
            *to = e;
            return MJ_OK;
        }
        int32_t sum[2] = {e, ops[n->n_operands - 1]};
        return mj_graph_add_op(ng, MJ_OP_ADD, 2, sum, MJ_ACT_NONE, &n->type, to);
    }
    return mj_graph_add_op_full(ng, n->op, n->n_operands, ops, n->act, &n->attrs, &n->sa, &n->type, to);
}

mj_status mj_pass_simplify(mj_graph *g) {
    mj_graph *ng = NULL;
    int32_t *map = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *map);
    if (!map) return MJ_ERR_NOMEM;
    mj_status s = mj_graph_new(&ng);
    bool changed = false;
    for (int32_t i = 0; i < g->n_nodes && s == MJ_OK; i++) s = emit(g, ng, i, map, &map[i], &changed);
    for (int32_t i = 0; i < g->n_outputs && s == MJ_OK; i++) s = mj_graph_add_output(ng, map[g->outputs[i]]);
    for (int32_t i = 0; i < g->n_warnings && s == MJ_OK; i++) s = mj_graph_add_warning(ng, "%s", g->warnings[i]);
    free(map);
    if (s != MJ_OK || !changed) {
        mj_graph_free(ng);
        return s;
    }
    /* Swap contents: g takes the rebuilt graph, ng's shell frees the old one. */
    mj_graph old = *g;
    *g = *ng;
    *ng = old;
    mj_graph_free(ng);
    return MJ_OK;
}
