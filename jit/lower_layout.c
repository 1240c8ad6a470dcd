/* Lowering of the ops that only move data: permute, slice, cat, and the copy
 * of a value into an output. */
#include "lower.h"

/* transpose / permute: output dim d walks operand dim perm[d]. */
void mj_lw_emit_permute(lw *w, int32_t id) {
    w->loops = true;
    const mj_graph *g = w->p->g;
    const mj_node *n = &g->nodes[id];
    const mj_type *t = &g->nodes[n->operands[0]].type, *to = &n->type;
    int perm[MJ_MAX_RANK];
    mj_node_perm(n, perm);
    LLVMValueRef xs[MJ_MAX_RANK], s = ci(w, 1);
    for (int d = t->rank - 1; d >= 0; d--) {
        xs[d] = s;
        s = mul(w, s, dimv(w, t->dims[d]));
    }
    loop l[MJ_MAX_RANK];
    LLVMValueRef src = ci(w, 0), dst = ci(w, 0);
    for (int d = 0; d < to->rank; d++) {
        l[d] = loop_begin(w, dimv(w, to->dims[d]));
        src = add(w, src, mul(w, l[d].iv, xs[perm[d]]));
        dst = add(w, mul(w, dst, dimv(w, to->dims[d])), l[d].iv);
    }
    store(w, load(w, w->buf[n->operands[0]], src), w->buf[id], dst);
    for (int d = to->rank - 1; d >= 0; d--) loop_end(w, &l[d]);
}

/* dims [0, dim) and (dim, rank) of t as two products */
static void outer_inner(lw *w, const mj_type *t, int dim, LLVMValueRef *outer, LLVMValueRef *inner) {
    *outer = dims_product(w, t, 0, dim);
    *inner = dims_product(w, t, dim + 1, t->rank);
}

/* slice: per outer index, (end - start) * inner floats from start * inner. */
void mj_lw_emit_slice(lw *w, int32_t id) {
    w->loops = true;
    const mj_node *n = &w->p->g->nodes[id];
    const mj_type *t = &w->p->g->nodes[n->operands[0]].type;
    LLVMValueRef outer, inner;
    outer_inner(w, t, n->sa.dim, &outer, &inner);
    LLVMValueRef size = ci(w, t->dims[n->sa.dim]); /* concrete: the verifier refuses slicing B */
    LLVMValueRef len = mul(w, ci(w, n->sa.end - n->sa.start), inner);
    loop lo = loop_begin(w, outer);
    LLVMValueRef src = at(w, w->buf[n->operands[0]], mul(w, add(w, mul(w, lo.iv, size), ci(w, n->sa.start)), inner));
    LLVMValueRef dst = at(w, w->buf[id], mul(w, lo.iv, len));
    loop li = loop_begin(w, len);
    store(w, load(w, src, li.iv), dst, li.iv);
    loop_end(w, &li);
    loop_end(w, &lo);
}

/* cat: operand k's rows go to columns [at_k, at_k + len_k) of each output row. */
void mj_lw_emit_cat(lw *w, int32_t id) {
    w->loops = true;
    const mj_node *n = &w->p->g->nodes[id];
    LLVMValueRef outer, inner;
    outer_inner(w, &n->type, n->sa.dim, &outer, &inner);
    LLVMValueRef row = mul(w, ci(w, n->type.dims[n->sa.dim]), inner);
    int64_t at0 = 0;
    for (int k = 0; k < n->n_operands; k++) {
        int64_t dk = w->p->g->nodes[n->operands[k]].type.dims[n->sa.dim];
        LLVMValueRef len = mul(w, ci(w, dk), inner);
        loop lo = loop_begin(w, outer);
        LLVMValueRef src = at(w, w->buf[n->operands[k]], mul(w, lo.iv, len));
        LLVMValueRef dst = at(w, w->buf[id], add(w, mul(w, lo.iv, row), mul(w, ci(w, at0), inner)));
        loop li = loop_begin(w, len);
        store(w, load(w, src, li.iv), dst, li.iv);
        loop_end(w, &li);
        loop_end(w, &lo);
        at0 += dk;
    }
}

void mj_lw_emit_copy(lw *w, LLVMValueRef dst, LLVMValueRef src, LLVMValueRef n) {
    w->loops = true;
    loop l = loop_begin(w, n);
    store(w, load(w, src, l.iv), dst, l.iv);
    loop_end(w, &l);
}
