/* IR -> LLVM IR: the body of a compiled graph, op by op, loops as basic
 * blocks, typed builders only.
 *
 *   void body(const float *const *leaves, const float *const *x,
 *             float *const *y, int64_t batch, float *scratch, int64_t tid,
 *             int64_t nth, mj_body_sync *sync)   (jit_internal.h: mj_lower_body)
 *
 * loads the input and output pointers and calls the inner function that
 * takes each of them as an argument (outputs noalias), so one output and
 * several compile to the same code.
 *
 * Exact mode emits, per output element, the float operations of the eager
 * kernels (src/core/ops.c) in the same order; only the loops around them differ.
 * Linear layers with a prologue weight are explicit vector code over the
 * panel-packed weight (vectors across output columns and rows, never across
 * k): chains of small layers become one straight-line kernel per group of
 * rows, wider layers register-tiled micro-kernels (see "vector kernels").
 * Other ops are scalar loops left to LLVM's vectorisers (default<O2>). Fast
 * mode sets fast-math flags on every float operation so LLVM may contract to
 * FMA and reassociate.
 *
 * This file is the driver: the body's signature, storage and the op switch.
 * The plan is built in lower_plan.c; the ops are emitted by lower_scalar.c
 * (elementwise), lower_gemm.c (linear, matmul), lower_small.c (chains of
 * small linear layers), lower_layout.c (permute, slice, cat, copies),
 * lower_reduce.c (reductions, layer_norm), lower_cnn.c and sparse.c. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <llvm-c/Analysis.h>

#include "lower.h"
#include "lower_cnn.h"

/* Does node i go through emit_gemm (and so split its columns in column
 * mode)? The same conditions as mj_lw_emit_linear, after small chains and sparse
 * layers have taken theirs. */
bool mj_body_splits_columns(const mj_body_plan *p, int32_t i) {
    const mj_node *n = &p->g->nodes[i];
    if (!mj_op_is_linear(n->op) || mj_lw_small_linear(p, i) || p->sparse[i]) return false;
    const mj_type *wt = &p->g->nodes[n->operands[1]].type;
    return p->input_free[n->operands[1]] && wt->dims[0] >= 1 && wt->dims[1] >= 1;
}

/* if (tid == 0) { ... } (if_end closes it) */
static LLVMBasicBlockRef if_first_thread(lw *w) {
    return if_begin(w, LLVMBuildICmp(w->e.b, LLVMIntEQ, w->team.tid, ci(w, 0), ""));
}

static void emit_barrier(lw *w) { mj_emit_barrier(&w->e, &w->team); }

/* Pointer to leaf i: a baked constant (frozen) or leaves[i] (live). */
static LLVMValueRef leaf_ptr(lw *w, int32_t i) {
    if (w->o->baked) {
        const mj_leaf *lf = &w->p->leaves[i];
        char name[64];
        snprintf(name, sizeof name, "%s.leaf%d%s", w->o->fname, (int)i, lf->packed ? ".t" : "");
        int64_t bytes = w->o->baked_numel[i] * (int64_t)sizeof(float);
        return mj_llvm_const_bytes(w->e.m, w->e.ctx, name, w->o->baked[i], (size_t)bytes);
    }
    LLVMValueRef idx = ci(w, i);
    LLVMValueRef slot = LLVMBuildInBoundsGEP2(w->e.b, w->e.ptr, w->leaves, &idx, 1, "");
    LLVMValueRef v = LLVMBuildLoad2(w->e.b, w->e.ptr, slot, "leaf");
    return v;
}

void mj_lw_emit_fault_range(lw *w, LLVMValueRef p, LLVMValueRef n) {
    loop l = loop_begin(w, n);
    store(w, LLVMBuildFAdd(w->e.b, load(w, p, l.iv), cf(w, 0.5f), ""), p, l.iv);
    loop_end(w, &l);
}

/* The test-only fault of mj_lower_options on node i's whole value */
static void emit_fault(lw *w, int32_t i) {
    const mj_type *t = &w->p->g->nodes[i].type;
    mj_lw_emit_fault_range(w, w->buf[i], dims_product(w, t, 0, t->rank));
}

/* The steps of conv i's tail (the plan's), from their nodes. */
static void conv_tail(const lw *w, int32_t i, mj_cnn_lowering *cl) {
    const mj_graph *g = w->p->g;
    int32_t cur = i;
    for (int32_t j = i + 1; j < g->n_nodes; j++) {
        if (w->p->fused_by[j] != i) continue;
        const mj_node *n = &g->nodes[j];
        MJ_ASSERT(cl->n_tail < MJ_CONV_TAIL_MAX);
        mj_conv_step *st = &cl->tail[cl->n_tail++];
        *st = (mj_conv_step){.op = n->op, .fault = n->op == w->o->fault};
        if (n->op == MJ_OP_BATCH_NORM) {
            for (int k = 1; k < n->n_operands; k++) st->p[k - 1] = w->buf[n->operands[k]];
            st->eps = n->attrs.f[0];
        } else if (n->op == MJ_OP_ADD) {
            st->r_first = n->operands[1] == cur;
            st->p[0] = w->buf[n->operands[st->r_first ? 0 : 1]];
        }
        cur = j;
    }
    MJ_ASSERT(cur == w->p->tail_out[i]);
}

/* A CNN op in a function of its own, called from the body: with the whole
 * network in one function, LLVM's code generation grew faster than the
 * code (frozen EfficientNet-B0: 7.1 of its 9.5 s compile, the body 53k
 * lines of IR). The op's values from the body (its operands' storage, the
 * tail's, the batch, the team) become the function's parameters;
 * constants (the frozen tables) stay as they are. noinline: the inliner
 * would put a single-use function back. */
enum { OUTLINE_SLOTS = 13 + 4 * MJ_CONV_TAIL_MAX }; /* y, batch, scratch, the team's 5, 5 operands, the tail's */

/* v's parameter index among vals (added if new); -1: no parameter (NULL
 * or a constant) */
static int outline_value(LLVMValueRef v, LLVMValueRef *vals, int *n) {
    if (!v || LLVMIsConstant(v)) return -1;
    for (int k = 0; k < *n; k++)
        if (vals[k] == v) return k;
    vals[*n] = v;
    return (*n)++;
}

static mj_status lower_cnn_outlined(lw *w, mj_cnn_lowering *cl) {
    mj_emit *e = &w->e;
    mj_emit_team team = *cl->team;
    LLVMValueRef *slots[OUTLINE_SLOTS];
    int ns = 0;
    slots[ns++] = &cl->y;
    slots[ns++] = &cl->batch;
    slots[ns++] = &cl->scratch;
    slots[ns++] = &team.tid;
    slots[ns++] = &team.nth;
    slots[ns++] = &team.sync;
    slots[ns++] = &team.y_sync;
    slots[ns++] = &team.scratch;
    for (int k = 0; k < 5; k++) slots[ns++] = &cl->ops[k];
    for (int t = 0; t < cl->n_tail; t++)
        for (int k = 0; k < 4; k++) slots[ns++] = &cl->tail[t].p[k];
    MJ_ASSERT(ns <= OUTLINE_SLOTS);
    LLVMValueRef vals[OUTLINE_SLOTS];
    LLVMTypeRef tys[OUTLINE_SLOTS];
    int param[OUTLINE_SLOTS], nv = 0;
    for (int k = 0; k < ns; k++) param[k] = outline_value(*slots[k], vals, &nv);
    for (int k = 0; k < nv; k++) tys[k] = LLVMTypeOf(vals[k]);
    char name[128];
    snprintf(name, sizeof name, "%s.op", cl->prefix);
    LLVMTypeRef fty = LLVMFunctionType(LLVMVoidTypeInContext(e->ctx), tys, (unsigned)nv, 0);
    LLVMValueRef fn = LLVMAddFunction(e->m, name, fty);
    LLVMSetLinkage(fn, LLVMInternalLinkage);
    add_attr(w, fn, LLVMAttributeFunctionIndex, "nounwind");
    add_attr(w, fn, LLVMAttributeFunctionIndex, "noinline");
    /* the call here, the op's code there */
    LLVMBuildCall2(e->b, fty, fn, vals, (unsigned)nv, "");
    LLVMBasicBlockRef resume = LLVMGetInsertBlock(e->b);
    LLVMValueRef body_fn = e->fn;
    for (int k = 0; k < ns; k++)
        if (param[k] >= 0) *slots[k] = LLVMGetParam(fn, (unsigned)param[k]);
    cl->team = &team;
    e->fn = fn;
    LLVMPositionBuilderAtEnd(e->b, LLVMAppendBasicBlockInContext(e->ctx, fn, "entry"));
    mj_status s = mj_lower_cnn(cl);
    LLVMBuildRetVoid(e->b);
    e->fn = body_fn;
    LLVMPositionBuilderAtEnd(e->b, resume);
    return s;
}

mj_status mj_lower_body(LLVMContextRef ctx, LLVMModuleRef m, const mj_body_plan *p,
                        const mj_lower_options *o) {
    const mj_op fault = o->fault;
    const mj_graph *g = p->g;
    lw w = {.p = p, .o = o};
    mj_emit_init(&w.e, m, o->numeric == MJ_NUMERIC_FAST, p->vw, false);
    MJ_ASSERT(w.e.ctx == ctx);
    /* the inner function: (leaves, x_0..x_{n_in-1}, y_0..y_{n_out-1}, batch,
     * scratch, tid, nth, sync) */
    int n_args = 6 + p->n_in + p->n_out, ai = 0;
    LLVMTypeRef *params = mj_alloc_array((size_t)n_args, sizeof *params);
    w.x = mj_alloc_array((size_t)p->n_in + 1, sizeof *w.x);
    w.y = mj_alloc_array((size_t)p->n_out + 1, sizeof *w.y);
    if (!params || !w.x || !w.y) {
        free(params);
        free(w.x);
        free(w.y);
        return MJ_ERR_NOMEM;
    }
    for (int i = 0; i < n_args; i++) params[i] = w.e.ptr;
    params[1 + p->n_in + p->n_out] = params[3 + p->n_in + p->n_out] = params[4 + p->n_in + p->n_out] = w.e.i64;
    char iname[96];
    snprintf(iname, sizeof iname, "%s.inner", o->fname);
    LLVMTypeRef fty = LLVMFunctionType(LLVMVoidTypeInContext(ctx), params, (unsigned)n_args, 0);
    w.e.fn = LLVMAddFunction(m, iname, fty);
    LLVMSetLinkage(w.e.fn, LLVMInternalLinkage);
    /* The outputs and scratch are written only through themselves; inputs
     * and the leaves are read only. The caller guarantees that no output
     * overlaps an input or another output. */
    unsigned noalias = LLVMGetEnumAttributeKindForName("noalias", 7);
    for (int j = 0; j < p->n_out; j++)
        LLVMAddAttributeAtIndex(w.e.fn, (unsigned)(2 + p->n_in + j), LLVMCreateEnumAttribute(ctx, noalias, 0));
    LLVMAddAttributeAtIndex(w.e.fn, (unsigned)(3 + p->n_in + p->n_out), LLVMCreateEnumAttribute(ctx, noalias, 0));
    unsigned nounwind = LLVMGetEnumAttributeKindForName("nounwind", 8);
    LLVMAddAttributeAtIndex(w.e.fn, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(ctx, nounwind, 0));
    /* inlined into the entry point (noalias becomes scoped metadata) */
    unsigned inl = LLVMGetEnumAttributeKindForName("alwaysinline", 12);
    LLVMAddAttributeAtIndex(w.e.fn, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(ctx, inl, 0));

    w.leaves = LLVMGetParam(w.e.fn, (unsigned)ai++);
    for (int i = 0; i < p->n_in; i++) w.x[i] = LLVMGetParam(w.e.fn, (unsigned)ai++);
    for (int j = 0; j < p->n_out; j++) w.y[j] = LLVMGetParam(w.e.fn, (unsigned)ai++);
    w.batch = LLVMGetParam(w.e.fn, (unsigned)ai++);
    w.scratch = LLVMGetParam(w.e.fn, (unsigned)ai++);
    w.team.tid = LLVMGetParam(w.e.fn, (unsigned)ai++);
    w.team.nth = LLVMGetParam(w.e.fn, (unsigned)ai++);
    w.team.sync = LLVMGetParam(w.e.fn, (unsigned)ai++);
    w.team.scratch = w.scratch;
    w.e.b = LLVMCreateBuilderInContext(ctx);

    /* the entry point: load the pointers, call the inner function */
    {
        LLVMTypeRef opt[8] = {w.e.ptr, w.e.ptr, w.e.ptr, w.e.i64, w.e.ptr, w.e.i64, w.e.i64, w.e.ptr};
        LLVMValueRef outer = LLVMAddFunction(m, o->fname, LLVMFunctionType(LLVMVoidTypeInContext(ctx), opt, 8, 0));
        LLVMAddAttributeAtIndex(outer, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(ctx, nounwind, 0));
        LLVMPositionBuilderAtEnd(w.e.b, LLVMAppendBasicBlockInContext(ctx, outer, "entry"));
        LLVMValueRef *args = mj_alloc_array((size_t)n_args, sizeof *args);
        if (!args) {
            LLVMDisposeBuilder(w.e.b);
            free(params);
            free(w.x);
            free(w.y);
            return MJ_ERR_NOMEM;
        }
        int k = 0;
        args[k++] = LLVMGetParam(outer, 0);
        for (int side = 0; side < 2; side++) {
            int cnt = side == 0 ? p->n_in : p->n_out;
            for (int i = 0; i < cnt; i++) {
                LLVMValueRef idx = LLVMConstInt(w.e.i64, (unsigned long long)i, 0);
                LLVMValueRef slot = LLVMBuildInBoundsGEP2(w.e.b, w.e.ptr, LLVMGetParam(outer, (unsigned)(1 + side)), &idx, 1, "");
                args[k++] = LLVMBuildLoad2(w.e.b, w.e.ptr, slot, side == 0 ? "x" : "y");
            }
        }
        for (unsigned i = 3; i < 8; i++) args[k++] = LLVMGetParam(outer, i);
        LLVMBuildCall2(w.e.b, fty, w.e.fn, args, (unsigned)n_args, "");
        LLVMBuildRetVoid(w.e.b);
        free(args);
    }
    free(params);
    LLVMPositionBuilderAtEnd(w.e.b, LLVMAppendBasicBlockInContext(ctx, w.e.fn, "entry"));
    if (p->n_out == 1) {
        w.team.y_sync = w.y[0];
    } else { /* the barrier gets every output pointer (see mj_emit_barrier) */
        LLVMTypeRef arr = LLVMArrayType2(w.e.ptr, (uint64_t)p->n_out);
        w.team.y_sync = LLVMBuildAlloca(w.e.b, arr, "ys");
        for (int j = 0; j < p->n_out; j++) {
            LLVMValueRef idx = LLVMConstInt(w.e.i64, (unsigned long long)j, 0);
            LLVMBuildStore(w.e.b, w.y[j], LLVMBuildInBoundsGEP2(w.e.b, w.e.ptr, w.team.y_sync, &idx, 1, ""));
        }
    }

    /* buf[0 .. n_nodes) per node; buf[n_nodes + 1 + i] packed leaf i */
    w.buf = mj_alloc_array((size_t)g->n_nodes + 2 + (size_t)p->n_leaves, sizeof *w.buf);
    if (!w.buf) {
        LLVMDisposeBuilder(w.e.b);
        free(w.x);
        free(w.y);
        return MJ_ERR_NOMEM;
    }
    for (int32_t i = 0; i < p->n_in; i++) w.buf[p->in_nodes[i]] = w.x[i];
    for (int32_t i = 0; i < p->n_leaves; i++) {
        LLVMValueRef ptr = leaf_ptr(&w, i);
        if (p->leaves[i].packed) w.buf[(size_t)g->n_nodes + 1 + (size_t)i] = ptr;
        else w.buf[p->leaves[i].node] = ptr;
    }
    /* scratch slices, offsets computed from the batch as in mj_body_scratch_floats */
    LLVMValueRef off = ci(&w, 0);
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (n->op == MJ_OP_INPUT) continue;
        else if (p->root_of[i] >= 0) w.buf[i] = w.y[p->root_of[i]];
        else if (p->has_slot[i]) {
            w.buf[i] = at(&w, w.scratch, off);
            LLVMValueRef sz = dims_product(&w, &n->type, 0, n->type.rank);
            int64_t per, over = mj_body_padded_floats(p, i, &per);
            if (per >= 0) /* padded for a conv: per image, and the overrun */
                sz = add(&w, mul(&w, dims_product(&w, &n->type, 0, 1), ci(&w, per)), ci(&w, over));
            off = add(&w, off, LLVMBuildAnd(w.e.b, add(&w, sz, ci(&w, 15)), ci(&w, ~INT64_C(15)), ""));
        }
    }
    LLVMValueRef sparse_scratch = at(&w, w.scratch, off);
    /* column mode: each thread's region of it, this far apart */
    int64_t thread_stride = mj_body_sparse_thread_stride(p);
    /* users per node, to find chains of small layers */
    int32_t *users = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *users);
    int32_t *chain = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *chain);
    bool *done = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *done);
    mj_status s = users && chain && done ? MJ_OK : MJ_ERR_NOMEM;
    for (int32_t i = 0; i < g->n_nodes && s == MJ_OK; i++)
        if (!p->input_free[i])
            for (int k = 0; k < g->nodes[i].n_operands; k++) users[g->nodes[i].operands[k]]++;
    for (int32_t j = 0; j < p->n_out && s == MJ_OK; j++) users[p->out_nodes[j]]++;
    /* A fused residual stands for the add loop it replaced: the module
     * keeps the pipeline it had unfused (mj_jit_pipeline). Measured with
     * callgrind on a 3-block residual MLP (256/1024, frozen, batch 8):
     * with the add fused and the last loop gone, the explicit pipeline
     * ran 5.32M instructions (each micro-kernel ~27% more) where the
     * unfused graph ran 4.43M under default<O2>; fused under default<O2>,
     * 4.43M. */
    for (int32_t i = 0; i < g->n_nodes; i++)
        if (!p->input_free[i] && mj_op_has_residual(g->nodes[i].op)) w.loops = true;
    for (int32_t i = 0; i < g->n_nodes && s == MJ_OK; i++) {
        const mj_node *n = &g->nodes[i];
        /* a conv's or matmul's tail is computed in its store; attention's
         * softmax and second matmul in the first matmul's loop */
        if (p->input_free[i] || n->op == MJ_OP_INPUT || done[i] || p->fused_by[i] >= 0 || p->attn_in[i] >= 0 ||
            p->view_base[i] >= 0) /* a view: its matmuls read its base */
            continue;
        if (n->op == MJ_OP_RESHAPE) { /* an alias: no code */
            w.buf[i] = w.buf[n->operands[0]];
            continue;
        }
        /* column mode: packed linear layers split their columns, sparse
         * linear layers and row-wise ops (softmax, layer_norm) their rows,
         * matmuls their batch of matrices, convs their tiles, rows or
         * planes (the plan's conv_how), anything else runs on thread 0;
         * everyone meets after each op */
        LLVMBasicBlockRef first_only = NULL;
        if (!mj_body_splits_columns(p, i) && !p->sparse[i] && n->op != MJ_OP_MATMUL && !mj_lw_splits_rows(p, i) &&
            n->op != MJ_OP_CONV2D)
            first_only = if_first_thread(&w);
        if (mj_lw_small_linear(p, i)) {
            int nc = 0;
            chain[nc++] = i;
            for (;;) { /* extend while the last layer's one user is a small layer reading it as x */
                int32_t next = mj_body_chain_next(p, users, chain[0], chain[nc - 1]);
                if (next < 0 || !mj_lw_small_linear(p, next)) break;
                chain[nc++] = next;
            }
            for (int c = 0; c < nc; c++) done[chain[c]] = true;
            mj_lw_emit_small_chain(&w, chain, nc);
            if_end(&w, first_only);
            emit_barrier(&w);
            continue;
        }
        if (p->sparse[i]) { /* i and the chain it heads (lower_plan.c), one function */
            mj_sparse_layer *sl = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *sl);
            if (!sl) {
                s = MJ_ERR_NOMEM;
                break;
            }
            int nl = 0;
            int32_t last = i;
            for (int32_t j = i; j >= 0; j = p->sparse_next[j]) {
                const mj_node *nj = &g->nodes[j], *wn = &g->nodes[nj->operands[1]];
                int32_t b = MJ_LINEAR_BIAS(nj);
                sl[nl++] = (mj_sparse_layer){.w = wn->tensor->data,
                                             .b = b >= 0 ? g->nodes[b].tensor->data : NULL,
                                             .out = wn->type.dims[0],
                                             .in = wn->type.dims[1],
                                             .act = MJ_LINEAR_ACT(nj)};
                done[j] = true;
                last = j;
            }
            char name[96];
            snprintf(name, sizeof name, "%s.sparse%d", o->fname, (int)i);
            int32_t res = MJ_LINEAR_RES(&g->nodes[last]);
            LLVMValueRef sf = mj_sparse_emit_chain(m, name, sl, nl, res >= 0, w.e.fast, p->vw);
            free(sl);
            if (!sf) {
                s = MJ_ERR_NOMEM;
                break;
            }
            /* column mode: the threads claim the chunks of rows one at a
             * time (as the panels of a dense layer, emit_claimed_panels),
             * each in its own scratch region; one thread: all rows */
            const mj_type *xt = &g->nodes[n->operands[0]].type;
            int64_t chunk = mj_sparse_chunk_rows(p->vw);
            int64_t in = g->nodes[n->operands[1]].type.dims[1], out = g->nodes[last].type.dims[g->nodes[last].type.rank - 1];
            LLVMValueRef rows = dims_product(&w, xt, 0, xt->rank - 1), C = ci(&w, chunk);
            LLVMTypeRef spt[5] = {w.e.ptr, w.e.ptr, w.e.i64, w.e.ptr, w.e.ptr};
            LLVMTypeRef sft = LLVMFunctionType(LLVMVoidTypeInContext(ctx), spt, 5, 0);
            ifb split = ifelse_begin(&w, several_threads(&w));
            LLVMValueRef nchunks = LLVMBuildSDiv(w.e.b, add(&w, rows, ci(&w, chunk - 1)), C, "");
            LLVMValueRef scr = at(&w, sparse_scratch, mul(&w, w.team.tid, ci(&w, thread_stride)));
            LLVMValueRef r0;
            mj_claim_loop more = mj_emit_claim_begin(&w.e, &w.team, nchunks, &r0, false);
            r0 = mul(&w, r0, C);
            LLVMValueRef left = LLVMBuildSub(w.e.b, rows, r0, "");
            LLVMValueRef nr = LLVMBuildSelect(w.e.b, LLVMBuildICmp(w.e.b, LLVMIntSLT, left, C, ""), left, C, "");
            LLVMValueRef yoff = mul(&w, r0, ci(&w, out));
            LLVMValueRef args[5] = {at(&w, w.buf[n->operands[0]], mul(&w, r0, ci(&w, in))), at(&w, w.buf[last], yoff),
                                    nr, scr, res >= 0 ? at(&w, w.buf[res], yoff) : LLVMConstNull(w.e.ptr)};
            LLVMBuildCall2(w.e.b, sft, sf, args, 5, "");
            mj_emit_claim_end(&w.e, &more);
            if_else(&w, &split);
            LLVMValueRef all[5] = {w.buf[n->operands[0]], w.buf[last], rows, sparse_scratch,
                                   res >= 0 ? w.buf[res] : LLVMConstNull(w.e.ptr)};
            LLVMBuildCall2(w.e.b, sft, sf, all, 5, "");
            if_end(&w, split.end);
            emit_barrier(&w);
            continue;
        }
        switch (n->op) {
        case MJ_OP_MATMUL:
            if (p->attn_pv[i] >= 0) mj_lw_emit_attention(&w, i);
            else mj_lw_emit_matmul(&w, i);
            break;
        case MJ_OP_LINEAR:
        case MJ_OP_LINEAR_ACT:
        case MJ_OP_LINEAR_ADD:
        case MJ_OP_LINEAR_ACT_ADD: mj_lw_emit_linear(&w, i); break;
        case MJ_OP_EXPAND: mj_lw_emit_expand(&w, i); break;
        case MJ_OP_TRANSPOSE:
        case MJ_OP_PERMUTE: mj_lw_emit_permute(&w, i); break;
        case MJ_OP_SLICE: mj_lw_emit_slice(&w, i); break;
        case MJ_OP_CAT: mj_lw_emit_cat(&w, i); break;
        case MJ_OP_SUM:
        case MJ_OP_MEAN:
        case MJ_OP_SOFTMAX:
        case MJ_OP_LOG_SOFTMAX: mj_lw_emit_along(&w, i); break;
        case MJ_OP_LAYER_NORM: mj_lw_emit_layer_norm(&w, i); break;
        MJ_CASE_BINARY_OPS:
        MJ_CASE_UNARY_MATH_OPS:
        MJ_CASE_ACT_OPS: mj_lw_emit_elementwise(&w, i); break;
        MJ_CASE_CNN_OPS: {
            w.loops = true;
            char prefix[96];
            snprintf(prefix, sizeof prefix, "%s.cnn%d", o->fname, (int)i);
            mj_cnn_lowering cl = {.e = &w.e, .g = g, .id = i, .y = w.buf[i], .batch = w.batch, .prefix = prefix,
                                  .team = &w.team, .thread_stride = thread_stride, .how = p->conv_how[i]};
            for (int k = 0; k < n->n_operands; k++) cl.ops[k] = w.buf[n->operands[k]];
            if (n->op == MJ_OP_CONV2D && p->tail_out[i] != i) {
                conv_tail(&w, i, &cl);
                cl.y = w.buf[p->tail_out[i]];
                cl.fault = n->op == fault;
            }
            int32_t wl = n->op == MJ_OP_CONV2D ? p->leaf_plain[n->operands[1]] : -1;
            if (o->baked && wl >= 0) cl.conv_weight = o->baked[wl]; /* frozen: the mask is known */
            if (p->frozen) cl.scratch = sparse_scratch;
            if (n->op == MJ_OP_CONV2D) { /* frozen sparse convs: values stored padded */
                int32_t next = p->padded_by[p->tail_out[i]];
                cl.x_padded = p->padded_by[n->operands[0]] >= 0;
                if (next >= 0) {
                    cl.y_padded = true;
                    cl.pad_y[0] = g->nodes[next].attrs.i[MJ_CONV_PADDING];
                    cl.pad_y[1] = g->nodes[next].attrs.i[MJ_CONV_PADDING + 1];
                }
            }
            s = lower_cnn_outlined(&w, &cl);
            break;
        }
        /* leaves and aliases never get here (skipped above) */
        MJ_CASE_LEAF_OPS:
        case MJ_OP_RESHAPE:
            s = mj_fail(MJ_ERR_UNSUPPORTED, "jit: no lowering for op %s", mj_op_table[n->op].name);
            break;
        case MJ_OP_COUNT: MJ_ASSERT(!"not an op (the graph is verified)");
        }
        /* a conv's or matmul's tail applies the faults in its store, and
         * attention per matrix */
        bool faults_inside = (p->tail_out[i] >= 0 && p->tail_out[i] != i) || p->attn_pv[i] >= 0;
        if (s == MJ_OK && n->op == fault && !faults_inside) {
            if (first_only) {
                emit_fault(&w, i);
            } else { /* every thread computed a part: once, after them all */
                emit_barrier(&w);
                LLVMBasicBlockRef once = if_first_thread(&w);
                emit_fault(&w, i);
                if_end(&w, once);
            }
        }
        if (first_only) if_end(&w, first_only);
        emit_barrier(&w);
    }
    for (int32_t j = 0; j < p->n_out && s == MJ_OK; j++) {
        if (p->out_root[j] >= 0) continue;
        /* an input, a leaf, an alias of one, or a value another output writes */
        const mj_type *t = &g->nodes[p->out_nodes[j]].type;
        LLVMBasicBlockRef first_only = if_first_thread(&w);
        mj_lw_emit_copy(&w, w.y[j], w.buf[p->out_nodes[j]], dims_product(&w, t, 0, t->rank));
        if_end(&w, first_only);
    }
    if (s == MJ_OK) LLVMBuildRetVoid(w.e.b);
    if (s == MJ_OK && !w.loops)
        LLVMAddModuleFlag(m, LLVMModuleFlagBehaviorOverride, MJ_FLAG_EXPLICIT, strlen(MJ_FLAG_EXPLICIT),
                          LLVMValueAsMetadata(LLVMConstInt(LLVMInt32TypeInContext(ctx), 1, 0)));
    LLVMDisposeBuilder(w.e.b);
    free(w.buf);
    free(w.x);
    free(w.y);
    free(users);
    free(chain);
    free(done);
    if (s != MJ_OK) return s;
    char *msg = NULL;
    if (LLVMVerifyModule(m, LLVMReturnStatusAction, &msg)) {
        s = mj_fail(MJ_ERR_BACKEND, "jit: the generated LLVM IR is invalid: %s", msg ? msg : "");
    }
    LLVMDisposeMessage(msg);
    return s;
}
