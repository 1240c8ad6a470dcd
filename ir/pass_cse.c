/* Common subexpression elimination: a node equal to an earlier one (same
 * op, act, attributes, type and operands) is replaced by it. Commutative ops (the op
 * table's MJ_OPF_COMMUTATIVE: the same bits either way, except which NaN
 * wins when both operands are NaN, which exact mode does not promise;
 * docs/numerics.md) compare their operands in canonical (sorted) order, so
 * mul(a, b) and mul(b, a) merge; sub(a, b) and sub(b, a) never do. Leaves
 * merge only when op, name and bound tensor agree; inputs never merge (each
 * one is part of the signature). */
#include <string.h>

#include "ir.h"

static void canonical_operands(const mj_node *n, int32_t *ops) {
    for (int k = 0; k < n->n_operands; k++) ops[k] = n->operands[k];
    if ((mj_op_table[n->op].flags & MJ_OPF_COMMUTATIVE) && n->n_operands == 2 && ops[0] > ops[1]) {
        int32_t t = ops[0];
        ops[0] = ops[1];
        ops[1] = t;
    }
}

static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + UINT64_C(0x9e3779b97f4a7c15) + (h << 6) + (h >> 2);
    return h;
}

static uint64_t node_hash(const mj_node *n) {
    uint64_t h = mix((uint64_t)n->op, (uint64_t)n->act);
    h = mix(h, (uint64_t)(uint32_t)n->attrs.dim ^ ((uint64_t)n->attrs.keepdim << 32));
    if (n->name)
        for (const char *p = n->name; *p; p++) h = mix(h, (unsigned char)*p);
    h = mix(h, (uint64_t)n->type.rank);
    for (int d = 0; d < n->type.rank; d++) h = mix(h, (uint64_t)n->type.dims[d]);
    int32_t ops[MJ_MAX_OPERANDS];
    canonical_operands(n, ops);
    for (int k = 0; k < n->n_operands; k++) h = mix(h, (uint64_t)ops[k]);
    h = mix(h, (uint64_t)n->sa.start ^ ((uint64_t)n->sa.end << 20) ^ ((uint64_t)(uint8_t)n->sa.dim << 56));
    return h;
}

static bool node_equal(const mj_node *a, const mj_node *b) {
    if (a->op != b->op || a->act != b->act || a->n_operands != b->n_operands) return false;
    if (!mj_attrs_equal(&a->attrs, &b->attrs)) return false;
    if (!mj_type_equal(&a->type, &b->type)) return false;
    if (memcmp(&a->sa, &b->sa, sizeof a->sa) != 0) return false; /* slices of one value differ */
    if (mj_op_table[a->op].flags & MJ_OPF_LEAF)
        return a->name && b->name && strcmp(a->name, b->name) == 0 && a->tensor == b->tensor;
    int32_t x[MJ_MAX_OPERANDS] = {0}, y[MJ_MAX_OPERANDS] = {0};
    canonical_operands(a, x);
    canonical_operands(b, y);
    for (int k = 0; k < a->n_operands; k++)
        if (x[k] != y[k]) return false;
    return true;
}

mj_status mj_pass_cse(mj_graph *g) {
    size_t cap = 16;
    while (cap < (size_t)g->n_nodes * 2) cap *= 2;
    int32_t *table = mj_alloc_array(cap, sizeof *table); /* node id + 1; 0 = empty */
    int32_t *repr = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *repr);
    bool *keep = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *keep);
    mj_status s = MJ_OK;
    if (!table || !repr || !keep) {
        s = MJ_ERR_NOMEM;
        goto done;
    }
    bool merged = false;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        mj_node *n = &g->nodes[i];
        /* Operands first point at their representatives, so equal chains
         * merge in one forward sweep. */
        for (int k = 0; k < n->n_operands; k++) n->operands[k] = repr[n->operands[k]];
        repr[i] = i;
        keep[i] = true;
        if (n->op == MJ_OP_INPUT) continue;
        size_t slot = (size_t)node_hash(n) & (cap - 1);
        for (; table[slot]; slot = (slot + 1) & (cap - 1)) {
            int32_t j = table[slot] - 1;
            if (node_equal(&g->nodes[j], n)) {
                repr[i] = j;
                keep[i] = false;
                merged = true;
                break;
            }
        }
        if (keep[i]) table[slot] = i + 1;
    }
    for (int32_t i = 0; i < g->n_outputs; i++) g->outputs[i] = repr[g->outputs[i]];
    if (merged) s = mj_graph_compact(g, keep);
done:
    free(table);
    free(repr);
    free(keep);
    return s;
}
