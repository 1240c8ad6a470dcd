/* The graph of an ahead-of-time object, through the JIT's pipeline: checks,
 * passes, plan, prologue, and the scratch size as a formula of the batch. */
#include <stdlib.h>
#include <string.h>

#include "src/core/internal.h"
#include "aot_internal.h"

/* ---- the graph: the JIT's pipeline ------------------------------------------ */

void mj_aot_free(aot *a) {
    if (a->g) mj_prologue_release(a->g, &a->plan, a->vals, a->packed, a->leaf_data); /* made after a->g */
    MJ_FREE_ALL(a->numel, a->slot_coef, a->slot_pow, a->param_node, a->leaf_param, a->pack_off);
    mj_body_plan_free(&a->plan);
    free(a->input_free);
    mj_graph_free(a->g);
    memset(a, 0, sizeof *a);
}

/* What the body supports (as jit/compile.c's check; rank <= 4 for the
 * header's dims arrays is checked after the passes). */
static mj_status check_graph(const mj_graph *g) { return mj_jit_check_nodes(g, "aot"); }

/* coef * B^pow for a type (coef: the concrete dims' product). */
void mj_aot_type_poly(const mj_type *t, int64_t *coef, int *pow) {
    int64_t c = 1;
    int k = 0;
    for (int d = 0; d < t->rank; d++) {
        if (t->dims[d] == MJ_DIM_BATCH) k++;
        else c *= t->dims[d]; /* <= MJ_MAX_NUMEL: checked by the IR builder */
    }
    *coef = c;
    *pow = k;
}

/* coef * b^pow, or -1 beyond MJ_MAX_NUMEL. */
static int64_t poly_at(int64_t coef, int pow, int64_t b) {
    int64_t v = coef;
    for (int i = 0; i < pow; i++)
        if (__builtin_mul_overflow(v, b, &v) || v > MJ_MAX_NUMEL) return -1;
    return v;
}

/* The wrapper's scratch formula at batch b (b <= max_batch). */
static int64_t scratch_formula(const aot *a, int64_t b) {
    int64_t total = a->scratch_fixed;
    for (int32_t i = 0; i < a->n_slots; i++) total += mj_round16(poly_at(a->slot_coef[i], a->slot_pow[i], b));
    return total;
}

static bool batch_fits(const aot *a, int64_t b) {
    int64_t c, n;
    int p;
    for (int32_t i = 0; i < a->plan.n_in + a->plan.n_out; i++) {
        int32_t v = i < a->plan.n_in ? a->plan.in_nodes[i] : a->plan.out_nodes[i - a->plan.n_in];
        mj_aot_type_poly(&a->g->nodes[v].type, &c, &p);
        if (poly_at(c, p, b) < 0) return false;
    }
    return mj_body_scratch_floats(&a->plan, b, &n) == MJ_OK && n + a->pack_floats <= MJ_MAX_NUMEL;
}

/* Interprets the prologue (the kernels eager uses) and packs the leaves, as
 * jit/compile.c does for a frozen compile. Live, the leaves are params
 * (read at run time: data NULL here) and consts (baked). */
static mj_status prologue(aot *a) {
    const mj_graph *g = a->g;
    bool *needed = mj_prologue_needed(g, &a->plan);
    a->vals = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *a->vals);
    a->packed = mj_alloc_array((size_t)a->plan.n_leaves + 1, sizeof *a->packed);
    a->leaf_data = mj_alloc_array((size_t)a->plan.n_leaves + 1, sizeof *a->leaf_data);
    a->numel = mj_alloc_array((size_t)a->plan.n_leaves + 1, sizeof *a->numel);
    mj_status s = MJ_OK;
    if (!needed || !a->vals || !a->packed || !a->leaf_data || !a->numel) {
        s = MJ_ERR_NOMEM;
        goto out;
    }
    if ((s = mj_prologue_eval(g, needed, a->vals, "aot")) != MJ_OK) goto out;
    for (int32_t i = 0; i < a->plan.n_leaves; i++) a->numel[i] = a->vals[a->plan.leaves[i].node]->numel;
    s = mj_prologue_leaves(g, &a->plan, a->vals, a->live, a->packed, a->leaf_data);
out:
    free(needed);
    return s;
}

mj_status mj_aot_prepare(const mj_graph *g0, const mj_aot_options *o, const target *t, aot *a) {
    memset(a, 0, sizeof *a);
    a->o = o;
    MJ_TRY(check_graph(g0));
    MJ_TRY(mj_graph_clone(g0, &a->g));
    a->live = !o->frozen;
    if (o->frozen) { /* as mj_jit_compile */
        MJ_TRY(mj_graph_freeze(a->g));
        MJ_TRY(mj_graph_optimize(a->g, "default"));
    } else {
        MJ_TRY(mj_graph_optimize(a->g, "simplify,cse,fuse,dce"));
    }
    MJ_TRY(check_graph(a->g));
    for (int32_t i = 0; i < a->g->n_nodes; i++) {
        if (a->g->nodes[i].type.rank > 4)
            return mj_fail(MJ_ERR_UNSUPPORTED, "aot: value %%%d has rank %d; the header describes ranks up to 4",
                           (int)i, a->g->nodes[i].type.rank);
    }
    if (a->live) {
        /* The body computes the prologue too (mask products, ...), on every
         * call: only params and consts are leaves. */
        if (!(a->input_free = mj_alloc_array((size_t)a->g->n_nodes + 1, sizeof *a->input_free))) return MJ_ERR_NOMEM;
        for (int32_t i = 0; i < a->g->n_nodes; i++)
            a->input_free[i] = a->g->nodes[i].op == MJ_OP_PARAM || a->g->nodes[i].op == MJ_OP_CONST;
    } else if (!(a->input_free = mj_graph_input_free(a->g))) {
        return MJ_ERR_NOMEM;
    }
    MJ_TRY(mj_body_plan_build(a->g, a->input_free, !a->live, mj_features_vector_width(t->features), MJ_OP_COUNT,
                                      &a->plan));
    MJ_TRY(prologue(a));
    if (a->live) {
        a->param_node = mj_alloc_array((size_t)a->plan.n_leaves + 1, sizeof *a->param_node);
        a->leaf_param = mj_alloc_array((size_t)a->plan.n_leaves + 1, sizeof *a->leaf_param);
        a->pack_off = mj_alloc_array((size_t)a->plan.n_leaves + 1, sizeof *a->pack_off);
        if (!a->param_node || !a->leaf_param || !a->pack_off) return MJ_ERR_NOMEM;
        for (int32_t i = 0; i < a->g->n_nodes; i++) {
            bool leaf = a->plan.leaf_plain[i] >= 0 || a->plan.leaf_packed[i] >= 0;
            if (leaf && a->g->nodes[i].op == MJ_OP_PARAM) a->param_node[a->n_params++] = i;
        }
        for (int32_t l = 0; l < a->plan.n_leaves; l++) {
            a->leaf_param[l] = -1;
            for (int32_t k = 0; k < a->n_params; k++)
                if (a->param_node[k] == a->plan.leaves[l].node) a->leaf_param[l] = k;
            if (a->leaf_param[l] >= 0 && a->plan.leaves[l].packed) {
                a->pack_off[l] = a->pack_floats;
                a->pack_floats += mj_round16(a->numel[l]);
                if (a->pack_floats > MJ_MAX_NUMEL)
                    return mj_fail(MJ_ERR_LIMIT, "aot: the weights need more than 2^40 floats");
            }
        }
    }

    /* The scratch as a formula of B for the wrapper, checked against the
     * lowering's own count (mj_body_scratch_floats). */
    a->slot_coef = mj_alloc_array((size_t)a->g->n_nodes + 1, sizeof *a->slot_coef);
    a->slot_pow = mj_alloc_array((size_t)a->g->n_nodes + 1, sizeof *a->slot_pow);
    if (!a->slot_coef || !a->slot_pow) return MJ_ERR_NOMEM;
    for (int32_t i = 0; i < a->g->n_nodes; i++) {
        if (!a->plan.has_slot[i]) continue;
        const mj_type *ty = &a->g->nodes[i].type;
        mj_aot_type_poly(ty, &a->slot_coef[a->n_slots], &a->slot_pow[a->n_slots]);
        int64_t per;
        mj_body_padded_floats(&a->plan, i, &per); /* padded planes: the overrun goes to scratch_fixed */
        if (per >= 0)
            a->slot_coef[a->n_slots] = (ty->dims[0] == MJ_DIM_BATCH ? 1 : ty->dims[0]) * per;
        a->n_slots++;
    }
    int64_t s1;
    if (!batch_fits(a, 1) || mj_body_scratch_floats(&a->plan, 1, &s1) != MJ_OK)
        return mj_fail(MJ_ERR_LIMIT, "aot: even batch 1 needs more than 2^40 floats of intermediate values");
    a->scratch_fixed = 0;
    a->scratch_fixed = s1 - scratch_formula(a, 1); /* the sparse kernels' share: fixed */
    int64_t lo = 1, hi = MJ_MAX_NUMEL;
    while (lo < hi) { /* the largest batch whose sizes all fit */
        int64_t mid = lo + (hi - lo + 1) / 2;
        if (batch_fits(a, mid)) lo = mid;
        else hi = mid - 1;
    }
    a->max_batch = lo;
    const int64_t probes[] = {1, 2, 3, 17, 1000, a->max_batch};
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        int64_t b = probes[i] < a->max_batch ? probes[i] : a->max_batch, n;
        MJ_ASSERT(mj_body_scratch_floats(&a->plan, b, &n) == MJ_OK && n == scratch_formula(a, b));
    }
    return MJ_OK;
}
