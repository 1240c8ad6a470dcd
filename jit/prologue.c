/* The prologue of a compiled graph: the input-free values computed with the
 * interpreter's kernels and the packed weights (mj_prologue_*, shared with
 * aot.c), and live mode's snapshots of them, refreshed when a parameter
 * changes and reclaimed when no call uses them. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "compiled.h"

/* ---- prologue ------------------------------------------------------------ */

mj_status mj_prologue_leaves(const mj_graph *g, const mj_body_plan *p, mj_tensor *const *vals, bool params_live,
                             float **packed, const float **leaf_data) {
    for (int32_t i = 0; i < p->n_leaves; i++) {
        const mj_leaf *lf = &p->leaves[i];
        const mj_tensor *v = vals[lf->node];
        if (params_live && g->nodes[lf->node].op == MJ_OP_PARAM) {
            leaf_data[i] = NULL;
        } else if (lf->packed) {
            if (!(packed[i] = mj_prologue_pack(v, p->panel))) return MJ_ERR_NOMEM;
            leaf_data[i] = packed[i];
        } else {
            leaf_data[i] = v->data;
        }
    }
    return MJ_OK;
}

void mj_prologue_release(const mj_graph *g, const mj_body_plan *p, mj_tensor **vals, float **packed,
                         const float **leaf_data) {
    if (vals)
        for (int32_t i = 0; i < g->n_nodes; i++) mj_tensor_release(vals[i]);
    if (packed)
        for (int32_t i = 0; i < p->n_leaves; i++) free(packed[i]);
    free(vals);
    free(packed);
    free(leaf_data);
}

void mj_compiled_prologue_free(const mj_compiled *c, prologue *pr) {
    mj_prologue_release(c->g, &c->plan, pr->vals, pr->packed, pr->leaf_data);
    free(pr->versions);
    memset(pr, 0, sizeof *pr);
}

/* W[N][K] -> the panels the linear kernels stream (mj_pack_panels) */
float *mj_prologue_pack(const mj_tensor *w, int64_t panel) {
    int64_t N = w->shape[0], K = w->shape[1];
    float *t = mj_alloc_big((size_t)(N * K) * sizeof(float), false); /* huge pages: the GEMM streams it */
    if (!t) return NULL;
    mj_pack_panels(w->data, N, K, panel, t);
    return t;
}

bool *mj_prologue_needed(const mj_graph *g, const mj_body_plan *p) {
    bool *needed = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *needed);
    if (!needed) return NULL;
    for (int32_t i = 0; i < p->n_leaves; i++) needed[p->leaves[i].node] = true;
    for (int32_t i = g->n_nodes - 1; i >= 0; i--)
        if (needed[i])
            for (int k = 0; k < g->nodes[i].n_operands; k++) needed[g->nodes[i].operands[k]] = true;
    return needed;
}

mj_status mj_prologue_eval(const mj_graph *g, const bool *needed, mj_tensor **vals, const char *who) {
    for (int32_t i = 0; i < g->n_nodes; i++) {
        if (!needed[i]) continue;
        const mj_node *n = &g->nodes[i];
        if (n->op == MJ_OP_PARAM || n->op == MJ_OP_CONST) {
            MJ_ASSERT(n->tensor); /* mj_jit_check_nodes */
            vals[i] = mj_tensor_retain(n->tensor);
            continue;
        }
        const mj_tensor *ops[MJ_MAX_OPERANDS];
        for (int k = 0; k < n->n_operands; k++) ops[k] = vals[n->operands[k]];
        mj_status s = mj_interp_node(g, n, ops, &vals[i]);
        if (s != MJ_OK)
            return mj_fail_prefix(s, "%s: computing the prologue value %%%d (%s)", who, (int)i, mj_op_table[n->op].name);
    }
    return MJ_OK;
}

/* Computes every needed prologue value with the interpreter's kernels
 * (bit-identical to eager) and the leaves' buffers. */
mj_status mj_compiled_prologue_compute(const mj_compiled *c, prologue *pr) {
    const mj_graph *g = c->g;
    memset(pr, 0, sizeof *pr);
    pr->vals = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *pr->vals);
    pr->packed = mj_alloc_array((size_t)c->plan.n_leaves + 1, sizeof *pr->packed);
    pr->leaf_data = mj_alloc_array((size_t)c->plan.n_leaves + 1, sizeof *pr->leaf_data);
    mj_status s = MJ_OK;
    if (!pr->vals || !pr->packed || !pr->leaf_data) {
        s = MJ_ERR_NOMEM;
        goto fail;
    }
    if ((s = mj_prologue_eval(g, c->needed, pr->vals, "jit")) != MJ_OK) goto fail;
    if ((s = mj_prologue_leaves(g, &c->plan, pr->vals, false, pr->packed, pr->leaf_data)) != MJ_OK) goto fail;
    /* Keep only the values the body reads in place. */
    for (int32_t i = 0; i < g->n_nodes; i++) {
        if (pr->vals[i] && c->plan.leaf_plain[i] < 0) {
            mj_tensor_release(pr->vals[i]);
            pr->vals[i] = NULL;
        }
    }
    return MJ_OK;
fail:
    mj_compiled_prologue_free(c, pr);
    return s;
}

bool mj_compiled_stale(const mj_compiled *c, const prologue *pr) {
    for (int32_t i = 0; i < c->n_params; i++) /* mj_tensor_version, inline: this is every call */
        if (atomic_load_explicit(c->param_versions[i], memory_order_acquire) != pr->versions[i]) return true;
    return false;
}

void mj_compiled_snapshot_free(const mj_compiled *c, prologue *pr) {
    if (!pr) return;
    mj_compiled_prologue_free(c, pr);
    free(pr);
}

/* Frees the retired snapshots if no call is running; refresh_mu held. A call
 * that starts after the check loads c->cur, which is never retired. */
void mj_compiled_reclaim(mj_compiled *c) {
    if (!c->retired || atomic_load(&c->readers) != 0) return;
    while (c->retired) {
        prologue *n = c->retired->next;
        mj_compiled_snapshot_free(c, c->retired);
        c->retired = n;
    }
    atomic_store(&c->has_retired, false);
}

/* Live mode: recompute the prologue and the packed weights into a new
 * snapshot and publish it, unless another thread already did. */
mj_status mj_compiled_refresh(mj_compiled *c) {
    pthread_mutex_lock(&c->refresh_mu);
    prologue *old = atomic_load(&c->cur);
    mj_status s = MJ_OK;
    if (old && !mj_compiled_stale(c, old)) goto out;
    prologue *pr = mj_alloc(sizeof *pr);
    /* Versions first: a write racing with the recompute shows up as stale
     * again on the next call. */
    uint64_t *v = mj_alloc_array((size_t)c->n_params + 1, sizeof *v);
    if (!pr || !v) {
        free(pr);
        free(v);
        s = MJ_ERR_NOMEM;
        goto out;
    }
    for (int32_t i = 0; i < c->n_params; i++) v[i] = atomic_load_explicit(c->param_versions[i], memory_order_acquire);
    if ((s = mj_compiled_prologue_compute(c, pr)) != MJ_OK) {
        free(pr);
        free(v);
        goto out;
    }
    pr->versions = v;
    atomic_store(&c->cur, pr);
    if (old) {
        old->next = c->retired;
        c->retired = old;
        atomic_store(&c->has_retired, true);
    }
    mj_compiled_reclaim(c);
out:
    pthread_mutex_unlock(&c->refresh_mu);
    return s;
}
