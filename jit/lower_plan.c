/* The lowering's plan of a split graph (jit_internal.h: mj_body_plan): which
 * values are leaves (prologue buffers, packed or plain), which nodes own
 * scratch, which outputs are written in place, which linear layers go to the
 * sparse kernels and which of those run as one chain; and the scratch a body
 * needs at a batch. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jit_internal.h"
#include "lower_cnn.h"

/* ---- the plan ------------------------------------------------------------ */

/* Reshape is an alias of its operand's storage: follow the chain. */
static int32_t alias_root(const mj_graph *g, const bool *input_free, int32_t v) {
    while (!input_free[v] && g->nodes[v].op == MJ_OP_RESHAPE) v = g->nodes[v].operands[0];
    return v;
}

void mj_node_perm(const mj_node *n, int *perm) {
    for (int d = 0; d < n->type.rank; d++) perm[d] = n->op == MJ_OP_PERMUTE ? n->sa.perm[d] : d;
    if (n->op == MJ_OP_TRANSPOSE) {
        perm[n->sa.dim0] = n->sa.dim1;
        perm[n->sa.dim1] = n->sa.dim0;
    }
}

int mj_features_vector_width(const char *features) {
    if (features && strstr(features, "+avx512f")) return 16;
    if (features && strstr(features, "+avx")) return 8;
    return 4;
}

int64_t mj_host_cache_bytes(int name, int64_t lo, int64_t hi, int64_t fallback) {
    long v = sysconf(name); /* 0 or -1 when unknown */
    return v < lo || v > hi ? fallback : (int64_t)v;
}

void mj_pack_panels(const float *w, int64_t N, int64_t K, int64_t P, float *out) {
    for (int64_t j0 = 0; j0 < N; j0 += P) {
        int64_t pw = N - j0 < P ? N - j0 : P;
        float *panel = out + K * j0;
        for (int64_t jj = 0; jj < pw; jj++)
            for (int64_t k = 0; k < K; k++) panel[k * pw + jj] = w[(j0 + jj) * K + k];
    }
}

/* A frozen linear layer whose weight (and bias) are constants, sparse enough
 * for jit/sparse.c to beat the dense kernel. */
static bool use_sparse(const mj_graph *g, const bool *input_free, const mj_node *n, bool frozen) {
    if (!frozen || !mj_op_is_linear(n->op) || input_free[n - g->nodes]) return false;
    const mj_node *w = &g->nodes[n->operands[1]];
    if (w->op != MJ_OP_CONST || !w->tensor || w->type.rank != 2) return false;
    /* small layers: the fused straight-line kernels are faster than any
     * sparse bookkeeping (transposes, index tables) */
    if (w->type.dims[0] <= 64 && w->type.dims[1] <= 64) return false;
    int32_t b = MJ_LINEAR_BIAS(n);
    if (b >= 0 && (g->nodes[b].op != MJ_OP_CONST || !g->nodes[b].tensor)) return false;
    return mj_sparse_profitable(w->tensor->data, w->type.dims[0], w->type.dims[1]);
}

static bool is_output(const mj_body_plan *p, int32_t v) {
    for (int32_t j = 0; j < p->n_out; j++)
        if (p->out_nodes[j] == v) return true;
    return false;
}

/* The single user of node v, or -1 (none, several, or v is an output). */
static int32_t only_user(const mj_graph *g, const int32_t *uses, const mj_body_plan *p, int32_t v) {
    if (is_output(p, v) || uses[v] != 1) return -1;
    for (int32_t i = v + 1; i < g->n_nodes; i++)
        for (int k = 0; k < g->nodes[i].n_operands; k++)
            if (g->nodes[i].operands[k] == v) return i;
    return -1;
}

/* The tail of conv2d node c: while its value has one use (and is not an
 * output), that use joins if the conv's store can compute it: batch_norm of
 * it (statistics input-free), an activation of it, or an add of it and a
 * value r of the same type that exists before the conv runs (an input, a
 * prologue value, or an earlier node that is stored). Each step is the
 * separate op's float operations in its order, so the values are the same
 * bits; the values in between are never stored. */
static void plan_conv_tail(const mj_graph *g, const bool *input_free, const int32_t *uses, mj_body_plan *p,
                           int32_t c) {
    int32_t cur = c, n_tail = 0;
    for (;;) {
        int32_t u = n_tail < MJ_CONV_TAIL_MAX ? only_user(g, uses, p, cur) : -1;
        if (u < 0) break;
        const mj_node *n = &g->nodes[u];
        bool ok = false;
        if (n->op == MJ_OP_BATCH_NORM) {
            ok = n->operands[0] == cur;
            for (int k = 1; k < n->n_operands; k++) ok = ok && input_free[n->operands[k]];
        } else if (mj_op_table[n->op].flags & MJ_OPF_ACTIVATION) {
            ok = true;
        } else if (n->op == MJ_OP_ADD) {
            int32_t r = n->operands[0] == cur ? n->operands[1] : n->operands[0];
            ok = r != cur && mj_type_equal(&g->nodes[r].type, &n->type) && mj_type_equal(&g->nodes[cur].type, &n->type) &&
                 (input_free[r] || (r < c && p->fused_by[r] < 0));
        }
        if (!ok) break;
        p->fused_by[u] = c;
        cur = u;
        n_tail++;
    }
    p->tail_out[c] = cur;
}

/* Whether the value r can be read where matmul m's loop runs: input-free,
 * an input, or a node before m that has its own storage (not computed in
 * another op's store). */
static bool ready_at(const mj_graph *g, const bool *input_free, const mj_body_plan *p, int32_t r, int32_t m) {
    return input_free[r] || g->nodes[r].op == MJ_OP_INPUT || (r < m && p->fused_by[r] < 0);
}

/* Whether r, added to a value of type t, is a row broadcast over t's
 * matrices: [..., 1, N] with t's N, each leading dim t's or 1. */
static bool is_row_of(const mj_type *r, const mj_type *t) {
    if (r->rank < 1 || r->rank > t->rank || r->dims[r->rank - 1] != t->dims[t->rank - 1]) return false;
    if (r->rank >= 2 && r->dims[r->rank - 2] != 1) return false;
    for (int d = 0; d < r->rank - 2; d++) {
        int64_t rd = r->dims[d], td = t->dims[d + t->rank - r->rank];
        if (rd != 1 && rd != td) return false;
    }
    return true;
}

bool mj_body_matmul_on_kernels(const mj_graph *g, int32_t m) {
    const mj_node *n = &g->nodes[m];
    const mj_type *ta = &g->nodes[n->operands[0]].type, *tb = &g->nodes[n->operands[1]].type;
    return n->type.rank >= 2 && ta->dims[ta->rank - 1] >= 1 && tb->dims[tb->rank - 1] >= 1;
}

/* Stride of dim d of t in a row-major buffer of t, if known without the
 * batch (else -1). */
static int64_t const_stride(const mj_type *t, int d) {
    int64_t s = 1;
    for (int e = d + 1; e < t->rank; e++) {
        if (t->dims[e] < 0) return -1;
        s *= t->dims[e];
    }
    return s;
}

/* A permute or transpose u of a matmul's value that keeps its rows (the
 * last dim stays last, so the store writes rows of N floats) with the row
 * stride known without the batch: the matmul can store into u's layout. */
static bool keeps_rows(const mj_graph *g, int32_t u) {
    const mj_node *n = &g->nodes[u];
    int r = n->type.rank, perm[MJ_MAX_RANK];
    if (r < 2 || (n->op != MJ_OP_PERMUTE && n->op != MJ_OP_TRANSPOSE)) return false;
    mj_node_perm(n, perm);
    if (perm[r - 1] != r - 1) return false;
    /* the row dim's stride in u: that of u's dim that walks it */
    int d = 0;
    while (perm[d] != r - 2) d++;
    return const_stride(&n->type, d) >= 0;
}

/* The tail of matmul m on the micro-kernels (K and N known), which its
 * epilogue computes as it stores: a division of its value by a scalar (an
 * input-free value of one element), then an add of a row broadcast over
 * its matrices (is_row_of; input-free, an input or a value computed
 * before m), each while the value before has one use and is not an output.
 * Each step is the separate op's operation on each element: the same bits.
 * The attention's scores, QK^T / sqrt(d) + mask, are stored once instead of
 * three times. Last, a permute that keeps the rows (keeps_rows): the store
 * writes each row where the permute puts it, so the attention's output
 * heads are merged back into [.., seq, heads, d] without a copy (not for
 * the test-only fault's op, which keeps its code). */
static void plan_matmul_tail(const mj_graph *g, const bool *input_free, const int32_t *uses, mj_body_plan *p,
                             int32_t m, mj_op fault) {
    const mj_node *mm = &g->nodes[m];
    p->tail_out[m] = m;
    if (!mj_body_matmul_on_kernels(g, m)) return;
    int32_t cur = m, u = only_user(g, uses, p, cur);
    if (u >= 0 && g->nodes[u].op == MJ_OP_DIV && g->nodes[u].operands[0] == cur) {
        int32_t s = g->nodes[u].operands[1];
        int64_t numel = 1;
        for (int d = 0; d < g->nodes[s].type.rank; d++) numel *= g->nodes[s].type.dims[d];
        if (s != cur && input_free[s] && numel == 1 && mj_type_equal(&g->nodes[u].type, &mm->type)) {
            p->fused_by[u] = m;
            cur = u;
            u = only_user(g, uses, p, cur);
        }
    }
    if (u >= 0 && g->nodes[u].op == MJ_OP_ADD) {
        int32_t r = g->nodes[u].operands[0] == cur ? g->nodes[u].operands[1] : g->nodes[u].operands[0];
        if (r != cur && ready_at(g, input_free, p, r, m) && is_row_of(&g->nodes[r].type, &mm->type) &&
            mj_type_equal(&g->nodes[u].type, &mm->type)) {
            p->fused_by[u] = m;
            cur = u;
            u = only_user(g, uses, p, cur);
        }
    }
    if (u >= 0 && g->nodes[u].op != fault && g->nodes[u].operands[0] == cur && keeps_rows(g, u)) {
        p->fused_by[u] = m;
        cur = u;
    }
    p->tail_out[m] = cur;
}

/* Attention: matmul a (with its tail), the softmax s of its value over the
 * last dim, and a matmul v of s, each value used only by the next and none
 * an output, v's matrices those of a (the same batch dims) and its other
 * operand ready before a: then a's loop over matrices runs all three, one
 * matrix at a time (mj_lw_emit_attention). */
static void plan_attention(const mj_graph *g, const bool *input_free, const int32_t *uses, mj_body_plan *p,
                           int32_t a) {
    if (!mj_body_matmul_on_kernels(g, a)) return;
    int32_t t = p->tail_out[a], s = only_user(g, uses, p, t);
    if (s < 0 || g->nodes[s].op != MJ_OP_SOFTMAX || g->nodes[s].operands[0] != t) return;
    const mj_type *tt = &g->nodes[t].type;
    if (mj_reduce_dim(&g->nodes[s], tt->rank) != tt->rank - 1) return;
    int32_t v = only_user(g, uses, p, s);
    if (v < 0 || g->nodes[v].op != MJ_OP_MATMUL || g->nodes[v].operands[0] != s) return;
    if (!mj_body_matmul_on_kernels(g, v)) return;
    int32_t b = g->nodes[v].operands[1];
    if (b == s || !ready_at(g, input_free, p, b, a)) return;
    const mj_type *tv = &g->nodes[v].type;
    if (tv->rank != tt->rank) return;
    for (int d = 0; d < tt->rank - 2; d++)
        if (tv->dims[d] != tt->dims[d]) return;
    p->attn_pv[a] = v;
    p->attn_in[s] = p->attn_in[v] = a;
}

/* How body conv i is lowered (jit/lower_cnn.c), or -1 if i is none; the
 * lowering takes this choice, made from the weight it sees when frozen. */
static int8_t conv_lowering(const mj_graph *g, const bool *input_free, int32_t i, bool frozen, int vw) {
    const mj_node *n = &g->nodes[i];
    if (n->op != MJ_OP_CONV2D || input_free[i]) return -1;
    const mj_node *w = &g->nodes[n->operands[1]];
    const float *wd = frozen && w->op == MJ_OP_CONST && w->tensor ? w->tensor->data : NULL;
    return (int8_t)mj_conv_lowering_of(g, i, wd, frozen, vw);
}

/* The value v that sparse conv c stores: if every reader is a sparse conv
 * reading it as x, all with stride 1 along W and the same padding, v is stored zero-padded as
 * they read it, and the first of them need not copy it (one layout: the
 * same padding). */
static void plan_padded(const mj_graph *g, mj_body_plan *p, int32_t c) {
    int32_t v = p->tail_out[c], first = -1;
    if (!p->has_slot[v] || p->conv_how[c] != MJ_CONV_SPARSE) return;
    for (int32_t j = 0; j < p->n_out; j++)
        if (p->out_nodes[j] == v) return;
    for (int32_t u = v + 1; u < g->n_nodes; u++)
        for (int k = 0; k < g->nodes[u].n_operands; k++) {
            if (g->nodes[u].operands[k] != v) continue;
            if (k != 0 || p->conv_how[u] != MJ_CONV_SPARSE) return;
            const int32_t *a = g->nodes[u].attrs.i;
            if (a[MJ_CONV_STRIDE + 1] != 1) return; /* it reads phase rows (jit/lower_conv_sparse.c) */
            if (first < 0) first = u;
            const int32_t *a0 = g->nodes[first].attrs.i;
            if (a[MJ_CONV_PADDING] != a0[MJ_CONV_PADDING] || a[MJ_CONV_PADDING + 1] != a0[MJ_CONV_PADDING + 1]) return;
        }
    p->padded_by[v] = first;
}

int32_t mj_body_chain_next(const mj_body_plan *p, const int32_t *uses, int32_t head, int32_t last) {
    const mj_graph *g = p->g;
    if (uses[last] != 1 || p->root_of[last] >= 0 || is_output(p, last)) return -1;
    int32_t next = -1;
    for (int32_t u = last + 1; u < g->n_nodes && next < 0; u++)
        for (int k = 0; k < g->nodes[u].n_operands; k++)
            if (g->nodes[u].operands[k] == last && !p->input_free[u]) next = k == 0 ? u : INT32_MAX;
    if (next < 0 || next == INT32_MAX) return -1;
    /* the chain runs at its first layer's place: a residual must be ready by then */
    int32_t res = MJ_LINEAR_RES(&g->nodes[next]);
    return res >= head && !p->input_free[res] ? -1 : next;
}

/* Chains of sparse linear layers (p->sparse_next), by the rule of the small
 * chains (mj_body_chain_next); only the last layer may have a residual of
 * its own (it is added as y is stored). */
static void plan_sparse_chains(const mj_graph *g, const int32_t *uses, mj_body_plan *p) {
    for (int32_t i = 0; i < g->n_nodes; i++) p->sparse_next[i] = -1;
    bool *inner = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *inner);
    if (!inner) return; /* out of memory: every layer on its own, still correct */
    for (int32_t head = 0; head < g->n_nodes; head++) {
        if (!p->sparse[head] || inner[head]) continue;
        for (int32_t last = head;;) {
            if (MJ_LINEAR_RES(&g->nodes[last]) >= 0) break;
            int32_t next = mj_body_chain_next(p, uses, head, last);
            if (next < 0 || !p->sparse[next]) break;
            p->sparse_next[last] = next;
            inner[next] = true;
            p->has_slot[last] = false; /* lives only in the chain's scratch */
            last = next;
        }
    }
    free(inner);
}

int64_t mj_body_padded_floats(const mj_body_plan *p, int32_t i, int64_t *per_image) {
    *per_image = -1;
    return p->padded_by[i] < 0 ? 0 : mj_conv_sparse_padded_floats(p->g, p->padded_by[i], per_image);
}

/* ---- views: permutes the matmuls read in place ---------------------------- */

/* The storage of s holds s row-major (not padded for a conv, not inside a
 * fused tail or a sparse chain). */
static bool plain_storage(const mj_graph *g, const mj_body_plan *p, int32_t s) {
    s = alias_root(g, p->input_free, s);
    if (g->nodes[s].op == MJ_OP_INPUT) return true;
    if (p->input_free[s]) return p->leaf_plain[s] >= 0;
    return (p->has_slot[s] || p->root_of[s] >= 0) && p->padded_by[s] < 0;
}

/* Whether matmul m can read the view v (base dims q) as each operand it is:
 * a's rows contiguous; b's rows contiguous, or b's columns (a transposed
 * b, copied panel by panel: mj_lw_emit_matmul), with the strides the
 * micro-kernels take known. */
static bool matmul_reads_view(const mj_graph *g, const mj_body_plan *p, int32_t m, int32_t v, const int8_t *q,
                              const mj_type *bt) {
    const mj_node *n = &g->nodes[m];
    if (n->op != MJ_OP_MATMUL || p->input_free[m] || !mj_body_matmul_on_kernels(g, m)) return false;
    int r = g->nodes[v].type.rank;
    if (r < 2) return false;
    for (int k = 0; k < 2; k++) {
        if (n->operands[k] != v) continue;
        bool rows = q[r - 1] == bt->rank - 1, cols = q[r - 2] == bt->rank - 1;
        if (k == 0 ? !rows : !rows && !cols) return false;
        if (const_stride(bt, rows ? q[r - 2] : q[r - 1]) < 0) return false;
        int64_t K = g->nodes[v].type.dims[r - 2];
        if (k == 1 && !rows && (K < 0 || K * p->panel > MJ_GEMM_PACK_MAX_FLOATS)) return false;
    }
    return true;
}

/* Permutes and transposes whose every reader is a matmul that can read it
 * in place, or another such view, become views of the storage they read
 * (a view of a view composes): the attention's heads (view, permute) and
 * its K^T were three copies per layer, each a pass over memory (BERT-base
 * at batch 8: ~6% of a frozen layer). The matmul reads the same values in
 * the same order: the same bits. Start from every candidate, drop those
 * with another reader until none changes. */
static void plan_views(const mj_graph *g, mj_body_plan *p, mj_op fault) {
    int32_t n = g->n_nodes;
    for (int32_t i = 0; i < n; i++) {
        const mj_node *nd = &g->nodes[i];
        bool cand = (nd->op == MJ_OP_PERMUTE || nd->op == MJ_OP_TRANSPOSE) && nd->op != fault && !p->input_free[i] &&
                    !is_output(p, i) && p->root_of[i] < 0 && p->fused_by[i] < 0;
        p->view_base[i] = cand ? nd->operands[0] : -1;
    }
    for (bool changed = true; changed;) {
        changed = false;
        for (int32_t i = 0; i < n; i++) {
            if (p->view_base[i] < 0) continue;
            const mj_node *nd = &g->nodes[i];
            int32_t u = nd->operands[0];
            int r = nd->type.rank;
            int8_t *q = &p->view_dim[(size_t)i * MJ_MAX_RANK];
            int perm[MJ_MAX_RANK];
            mj_node_perm(nd, perm);
            bool ok = true;
            if (p->view_base[u] >= 0) {
                p->view_base[i] = p->view_base[u];
                for (int d = 0; d < r; d++) q[d] = p->view_dim[(size_t)u * MJ_MAX_RANK + perm[d]];
            } else {
                p->view_base[i] = u;
                for (int d = 0; d < r; d++) q[d] = (int8_t)perm[d];
                ok = plain_storage(g, p, u);
            }
            const mj_type *bt = &g->nodes[p->view_base[i]].type;
            for (int32_t j = i + 1; j < n && ok; j++) {
                const mj_node *nj = &g->nodes[j];
                bool reads = false;
                for (int k = 0; k < nj->n_operands; k++) reads = reads || nj->operands[k] == i;
                if (reads && p->view_base[j] < 0 && !matmul_reads_view(g, p, j, i, q, bt)) ok = false;
            }
            if (!ok) {
                p->view_base[i] = -1;
                changed = true;
            }
        }
    }
    for (int32_t i = 0; i < n; i++)
        if (p->view_base[i] >= 0) p->has_slot[i] = false;
}

mj_status mj_body_plan_build(const mj_graph *g, const bool *input_free, bool frozen, int vw, mj_op fault,
                             mj_body_plan *p) {
    memset(p, 0, sizeof *p);
    p->g = g;
    p->input_free = input_free;
    p->frozen = frozen;
    size_t n = (size_t)g->n_nodes + 1;
    p->n_in = mj_graph_input_count(g);
    p->n_out = g->n_outputs;
    p->leaf_plain = mj_alloc_array(n, sizeof *p->leaf_plain);
    p->leaf_packed = mj_alloc_array(n, sizeof *p->leaf_packed);
    p->leaves = mj_alloc_array(2 * n + (size_t)p->n_out, sizeof *p->leaves);
    p->has_slot = mj_alloc_array(n, sizeof *p->has_slot);
    p->sparse = mj_alloc_array(n, sizeof *p->sparse);
    p->sparse_next = mj_alloc_array(n, sizeof *p->sparse_next);
    p->in_nodes = mj_alloc_array((size_t)p->n_in + 1, sizeof *p->in_nodes);
    p->out_nodes = mj_alloc_array((size_t)p->n_out + 1, sizeof *p->out_nodes);
    p->out_root = mj_alloc_array((size_t)p->n_out + 1, sizeof *p->out_root);
    p->root_of = mj_alloc_array(n, sizeof *p->root_of);
    p->fused_by = mj_alloc_array(n, sizeof *p->fused_by);
    p->tail_out = mj_alloc_array(n, sizeof *p->tail_out);
    p->padded_by = mj_alloc_array(n, sizeof *p->padded_by);
    p->attn_pv = mj_alloc_array(n, sizeof *p->attn_pv);
    p->attn_in = mj_alloc_array(n, sizeof *p->attn_in);
    p->conv_how = mj_alloc_array(n, sizeof *p->conv_how);
    p->view_base = mj_alloc_array(n, sizeof *p->view_base);
    p->view_dim = mj_alloc_array(n * MJ_MAX_RANK, sizeof *p->view_dim);
    int32_t *uses = mj_graph_use_counts(g);
    if (!p->leaf_plain || !p->leaf_packed || !p->leaves || !p->has_slot || !p->sparse || !p->sparse_next || !p->in_nodes ||
        !p->out_nodes || !p->out_root || !p->root_of || !p->fused_by || !p->tail_out || !p->padded_by || !p->conv_how ||
        !p->attn_pv || !p->attn_in || !p->view_base || !p->view_dim || !uses) {
        free(uses);
        mj_body_plan_free(p);
        return MJ_ERR_NOMEM;
    }
    /* every node reaches an output (the compile's pipelines end with dce):
     * the fusion decisions below count live users only, and a dead reader
     * of a fused value would be lowered without it */
    for (int32_t i = 0; i < g->n_nodes; i++) MJ_ASSERT(mj_uses_live(g, uses, i));
    int32_t k_in = 0;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        p->leaf_plain[i] = p->leaf_packed[i] = p->root_of[i] = p->fused_by[i] = p->tail_out[i] = p->padded_by[i] = -1;
        p->attn_pv[i] = p->attn_in[i] = -1;
        p->sparse[i] = use_sparse(g, input_free, &g->nodes[i], frozen);
        if (g->nodes[i].op == MJ_OP_INPUT) p->in_nodes[k_in++] = i;
    }
    for (int32_t j = 0; j < p->n_out; j++) p->out_nodes[j] = g->outputs[j];
    for (int32_t i = 0; i < g->n_nodes; i++)
        if (g->nodes[i].op == MJ_OP_CONV2D && !input_free[i]) plan_conv_tail(g, input_free, uses, p, i);
        else if (g->nodes[i].op == MJ_OP_MATMUL && !input_free[i]) plan_matmul_tail(g, input_free, uses, p, i, fault);
    for (int32_t i = 0; i < g->n_nodes; i++)
        if (g->nodes[i].op == MJ_OP_MATMUL && !input_free[i] && p->attn_in[i] < 0)
            plan_attention(g, input_free, uses, p, i);
    p->vw = vw;
    p->vregs = vw == 16 ? 32 : 16;
    p->nr = p->vregs == 32 ? 4 : 2; /* 6 rows x nr vectors of sums, nr of w, one of x */
    p->panel = (int64_t)p->nr * vw;

    /* Leaves: prologue values that a body node (or an output) reads. */
    for (int32_t i = 0; i < g->n_nodes + p->n_out; i++) {
        bool is_out = i >= g->n_nodes;
        if (!is_out && input_free[i]) continue;
        int n_ops = is_out ? 1 : g->nodes[i].n_operands;
        for (int k = 0; k < n_ops; k++) {
            /* a sparse layer's weight and bias live in its kernel */
            if (!is_out && p->sparse[i] && (k == 1 || g->nodes[i].operands[k] == MJ_LINEAR_BIAS(&g->nodes[i])))
                continue;
            int32_t a = is_out ? p->out_nodes[i - g->n_nodes] : g->nodes[i].operands[k];
            if (!input_free[a]) continue;
            mj_op op = is_out ? MJ_OP_COUNT : g->nodes[i].op;
            bool packed = mj_op_is_linear(op) && k == 1;
            int32_t *slot = packed ? &p->leaf_packed[a] : &p->leaf_plain[a];
            if (*slot >= 0) continue;
            *slot = p->n_leaves;
            p->leaves[p->n_leaves++] = (mj_leaf){.node = a, .packed = packed};
        }
    }
    /* Storage: every computing body node gets a scratch slice, except those
     * an output aliases, which write y[j] directly (one output per node: a
     * value returned twice is copied the second time). */
    for (int32_t j = 0; j < p->n_out; j++) {
        int32_t root = alias_root(g, input_free, p->out_nodes[j]);
        bool direct = !input_free[root] && g->nodes[root].op != MJ_OP_INPUT && p->root_of[root] < 0;
        p->out_root[j] = direct ? root : -1;
        if (direct) p->root_of[root] = j;
    }
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *nd = &g->nodes[i];
        p->has_slot[i] = !input_free[i] && nd->op != MJ_OP_INPUT && nd->op != MJ_OP_RESHAPE && p->root_of[i] < 0;
    }
    /* a conv with a tail writes its last node's storage; the rest are never stored */
    for (int32_t i = 0; i < g->n_nodes; i++)
        if (p->fused_by[i] >= 0 && p->tail_out[p->fused_by[i]] != i) p->has_slot[i] = false;
        else if (p->tail_out[i] >= 0 && p->tail_out[i] != i) p->has_slot[i] = false;
    for (int32_t i = 0; i < g->n_nodes; i++) p->conv_how[i] = conv_lowering(g, input_free, i, frozen, vw);
    for (int32_t i = 0; i < g->n_nodes && frozen; i++)
        if (g->nodes[i].op == MJ_OP_CONV2D && p->tail_out[i] >= 0) plan_padded(g, p, i);
    plan_sparse_chains(g, uses, p);
    plan_views(g, p, fault);
    free(uses);
    return MJ_OK;
}

void mj_body_plan_free(mj_body_plan *p) {
    MJ_FREE_ALL(p->leaf_plain, p->leaf_packed, p->leaves, p->has_slot, p->sparse, p->sparse_next, p->in_nodes,
                p->out_nodes, p->out_root, p->root_of, p->fused_by, p->tail_out, p->padded_by, p->conv_how,
                p->attn_pv, p->attn_in, p->view_base, p->view_dim);
    memset(p, 0, sizeof *p);
}

int64_t mj_body_conv_scratch_floats(const mj_body_plan *p) {
    int64_t sp = 0;
    for (int32_t i = 0; i < p->g->n_nodes && p->frozen; i++) {
        int64_t f = p->input_free[i] ? 0 : mj_conv_sparse_scratch_floats(p->g, i);
        if (f > sp) sp = f;
    }
    return sp;
}

int64_t mj_body_sparse_linear_floats(const mj_body_plan *p) {
    const mj_graph *g = p->g;
    int64_t sp = 0;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        if (!p->sparse[i]) continue;
        /* the chain from i on (a later layer of a chain asks no more than
         * its head: its x is a yT the head already counts) */
        int64_t in = g->nodes[g->nodes[i].operands[1]].type.dims[1], maxout = 0;
        int n = 0;
        for (int32_t j = i; j >= 0; j = p->sparse_next[j], n++) {
            int64_t out = g->nodes[g->nodes[j].operands[1]].type.dims[0];
            maxout = out > maxout ? out : maxout;
        }
        int64_t f = mj_sparse_chain_scratch_floats(in, maxout, n);
        if (f > sp) sp = f;
    }
    return sp;
}

int64_t mj_body_sparse_thread_stride(const mj_body_plan *p) {
    int64_t st = mj_round16(mj_body_sparse_linear_floats(p));
    for (int32_t i = 0; i < p->g->n_nodes; i++) {
        int64_t f = p->conv_how[i] == MJ_CONV_SPARSE ? mj_round16(mj_conv_sparse_thread_floats(p->g, i)) : 0;
        if (f > st) st = f;
    }
    return st;
}

bool mj_body_has_conv(const mj_body_plan *p) {
    for (int32_t i = 0; i < p->g->n_nodes; i++)
        if (p->conv_how[i] >= 0) return true;
    return false;
}

int64_t mj_body_sparse_rows_per_item(const mj_body_plan *p) {
    const mj_graph *g = p->g;
    int64_t fewest = 0;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        if (!p->sparse[i]) continue;
        const mj_type *t = &g->nodes[g->nodes[i].operands[0]].type;
        if (t->dims[0] != MJ_DIM_BATCH) return 0; /* not split by batch items: no figure */
        int64_t rows = 1;
        for (int d = 1; d < t->rank - 1; d++) {
            if (t->dims[d] == MJ_DIM_BATCH) return 0;
            rows *= t->dims[d];
        }
        if (fewest == 0 || rows < fewest) fewest = rows;
    }
    return fewest;
}

mj_status mj_body_scratch_floats(const mj_body_plan *p, int64_t batch, int64_t *out) {
    int64_t total = 0;
    for (int32_t i = 0; i < p->g->n_nodes; i++) {
        if (!p->has_slot[i]) continue;
        int64_t shape[MJ_MAX_RANK], n, per, over = mj_body_padded_floats(p, i, &per);
        mj_type_shape(&p->g->nodes[i].type, batch, shape);
        if (per >= 0) { /* padded for a conv: [N, per] and the overrun */
            shape[1] = per;
            shape[2] = shape[3] = 1;
        }
        bool ok = mj_shape_numel(p->g->nodes[i].type.rank, shape, &n) == MJ_OK && n <= MJ_MAX_NUMEL - over;
        if (!ok || __builtin_add_overflow(total, mj_round16(n + over), &total) || total > MJ_MAX_NUMEL)
            return mj_fail(MJ_ERR_LIMIT, "batch %lld: the intermediate values need more than 2^40 floats",
                           (long long)batch);
    }
    /* one region shared by the sparse layers (they run one after another) */
    int64_t sp = mj_body_sparse_linear_floats(p);
    /* and by the frozen sparse convs: added, not the max, so that the
     * total stays a fixed part plus the batch's (jit/aot_graph.c's formula) */
    sp += mj_body_conv_scratch_floats(p);
    if (sp > MJ_MAX_NUMEL || __builtin_add_overflow(total, mj_round16(sp), &total) || total > MJ_MAX_NUMEL)
        return mj_fail(MJ_ERR_LIMIT, "batch %lld: the sparse kernels' scratch is too large", (long long)batch);
    *out = total;
    return MJ_OK;
}
