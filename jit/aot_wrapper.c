/* The C-callable wrapper of an ahead-of-time object: NAME_run (checks, the
 * scratch, live weight packing, the body call), the live API NAME_bind and
 * NAME_run_with, NAME_strerror, and the shape tables. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llvm-c/Core.h>

#include "src/core/internal.h"
#include "aot_internal.h"

/* coef * batch^pow as i64 (no overflow below max_batch) */
static LLVMValueRef poly(emit *e, int64_t coef, int pow, LLVMValueRef batch) {
    LLVMValueRef v = c64(e, coef);
    for (int i = 0; i < pow; i++) v = LLVMBuildNUWMul(e->b, v, batch, "");
    return v;
}

/* Returns code from the current block when cond holds. */
static void fail_if(emit *e, LLVMValueRef fn, LLVMValueRef cond, int code) {
    LLVMBasicBlockRef bad = LLVMAppendBasicBlockInContext(e->ctx, fn, "fail");
    LLVMBasicBlockRef next = LLVMAppendBasicBlockInContext(e->ctx, fn, "next");
    LLVMBuildCondBr(e->b, cond, bad, next);
    LLVMPositionBuilderAtEnd(e->b, bad);
    LLVMBuildRet(e->b, c32(e, (uint32_t)code));
    LLVMPositionBuilderAtEnd(e->b, next);
}

/* a pointer that is a when control comes from block ba, b from bb */
static LLVMValueRef phi2(emit *e, const char *name, LLVMValueRef a, LLVMBasicBlockRef ba, LLVMValueRef b,
                         LLVMBasicBlockRef bb) {
    LLVMValueRef p = LLVMBuildPhi(e->b, e->ptr, name);
    LLVMValueRef v[2] = {a, b};
    LLVMBasicBlockRef from[2] = {ba, bb};
    LLVMAddIncoming(p, v, from, 2);
    return p;
}

#define STACK_FLOATS 2048 /* scratch up to 8 KiB lives on the wrapper's stack */

/* for (iv = 0; iv < n; iv++) { caller's code } */
typedef struct eloop {
    LLVMValueRef iv;
    LLVMBasicBlockRef head, exit;
} eloop;

static eloop loop_open(emit *e, LLVMValueRef fn, LLVMValueRef n) {
    eloop l;
    LLVMBasicBlockRef pre = LLVMGetInsertBlock(e->b);
    l.head = LLVMAppendBasicBlockInContext(e->ctx, fn, "loop");
    LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(e->ctx, fn, "body");
    l.exit = LLVMAppendBasicBlockInContext(e->ctx, fn, "done");
    LLVMBuildBr(e->b, l.head);
    LLVMPositionBuilderAtEnd(e->b, l.head);
    l.iv = LLVMBuildPhi(e->b, e->i64, "i");
    LLVMValueRef zero = c64(e, 0);
    LLVMAddIncoming(l.iv, &zero, &pre, 1);
    LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, l.iv, n, ""), body, l.exit);
    LLVMPositionBuilderAtEnd(e->b, body);
    return l;
}

static void loop_close(emit *e, eloop *l) {
    LLVMValueRef next = LLVMBuildAdd(e->b, l->iv, c64(e, 1), "");
    LLVMBasicBlockRef latch = LLVMGetInsertBlock(e->b);
    LLVMBuildBr(e->b, l->head);
    LLVMAddIncoming(l->iv, &next, &latch, 1);
    LLVMPositionBuilderAtEnd(e->b, l->exit);
}

static LLVMValueRef fptr(emit *e, LLVMValueRef base, LLVMValueRef idx) {
    return LLVMBuildInBoundsGEP2(e->b, LLVMFloatTypeInContext(e->ctx), base, &idx, 1, "");
}

/* out = W[N][K] packed in panels of P columns (mj_pack_panels), at run time. */
static void emit_pack(emit *e, LLVMValueRef fn, LLVMValueRef w, LLVMValueRef out, int64_t N, int64_t K, int64_t P) {
    LLVMTypeRef f32 = LLVMFloatTypeInContext(e->ctx);
    eloop lp = loop_open(e, fn, c64(e, (N + P - 1) / P));
    LLVMValueRef j0 = LLVMBuildMul(e->b, lp.iv, c64(e, P), "j0");
    LLVMValueRef rest = LLVMBuildSub(e->b, c64(e, N), j0, "");
    LLVMValueRef pw = LLVMBuildSelect(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, rest, c64(e, P), ""), rest, c64(e, P), "pw");
    LLVMValueRef panel = fptr(e, out, LLVMBuildMul(e->b, c64(e, K), j0, ""));
    eloop lj = loop_open(e, fn, pw);
    LLVMValueRef wrow = fptr(e, w, LLVMBuildMul(e->b, LLVMBuildAdd(e->b, j0, lj.iv, ""), c64(e, K), ""));
    eloop lk = loop_open(e, fn, c64(e, K));
    LLVMValueRef v = LLVMBuildLoad2(e->b, f32, fptr(e, wrow, lk.iv), "");
    LLVMBuildStore(e->b, v, fptr(e, panel, LLVMBuildAdd(e->b, LLVMBuildMul(e->b, lk.iv, pw, ""), lj.iv, "")));
    loop_close(e, &lk);
    loop_close(e, &lj);
    loop_close(e, &lp);
}

static LLVMValueRef libc_fn(emit *e, const char *name, LLVMTypeRef ty) {
    LLVMValueRef f = LLVMGetNamedFunction(e->m, name);
    return f ? f : LLVMAddFunction(e->m, name, ty);
}

/* int core(const float *const params[], int64_t batch, const float *const
 * inputs[], float *const outputs[]): the checks, the scratch, the leaves
 * (live: params as bound, packed ones packed into the scratch), the body. */
LLVMValueRef mj_aot_emit_core(emit *e, LLVMValueRef body, LLVMValueRef check, LLVMValueRef consts) {
    const aot *a = e->a;
    LLVMTypeRef pt[4] = {e->ptr, e->i64, e->ptr, e->ptr};
    LLVMValueRef fn = a->live ? mj_aot_add_fn(e, ".core", e->i32, pt, 4, false) : mj_aot_add_fn(e, "_run", e->i32, pt + 1, 3, true);
    unsigned o = a->live ? 1 : 0;
    LLVMValueRef params = a->live ? LLVMGetParam(fn, 0) : NULL;
    LLVMValueRef batch = LLVMGetParam(fn, o), inputs = LLVMGetParam(fn, o + 1), outputs = LLVMGetParam(fn, o + 2);
    LLVMPositionBuilderAtEnd(e->b, LLVMAppendBasicBlockInContext(e->ctx, fn, "entry"));
    LLVMTypeRef f32 = LLVMFloatTypeInContext(e->ctx);
    LLVMValueRef stack = LLVMBuildAlloca(e->b, LLVMArrayType2(f32, STACK_FLOATS), "stack");
    LLVMSetAlignment(stack, 64);
    int32_t nl = a->plan.n_leaves;
    LLVMValueRef leaves = a->live && nl > 0 ? LLVMBuildAlloca(e->b, LLVMArrayType2(e->ptr, (uint64_t)nl), "leaves") : NULL;
    LLVMValueRef cpu = LLVMBuildCall2(e->b, LLVMGlobalGetValueType(check), check, NULL, 0, "cpu");
    fail_if(e, fn, LLVMBuildICmp(e->b, LLVMIntNE, cpu, c32(e, 0), ""), MJ_AOT_ERR_CPU);
    LLVMValueRef null = LLVMConstPointerNull(e->ptr);
    fail_if(e, fn,
            LLVMBuildOr(e->b, LLVMBuildICmp(e->b, LLVMIntEQ, inputs, null, ""),
                        LLVMBuildICmp(e->b, LLVMIntEQ, outputs, null, ""), ""),
            MJ_AOT_ERR_NULL);
    /* every buffer: its address and byte count at this batch, the inputs
     * first (the body's order: graph order) */
    int32_t n_in = a->plan.n_in, n_io = a->plan.n_in + a->plan.n_out;
    LLVMValueRef *at = mj_alloc_array((size_t)n_io, sizeof *at), *bytes_of = mj_alloc_array((size_t)n_io, sizeof *bytes_of);
    MJ_ASSERT(at && bytes_of); /* a few pointers */
    LLVMValueRef any_null = LLVMConstInt(e->i1, 0, 0);
    for (int32_t i = 0; i < n_io; i++) {
        bool in = i < n_in;
        LLVMValueRef idx = c64(e, in ? i : i - n_in);
        LLVMValueRef ptr = LLVMBuildLoad2(e->b, e->ptr, LLVMBuildInBoundsGEP2(e->b, e->ptr, in ? inputs : outputs, &idx, 1, ""),
                                          in ? "x" : "y");
        any_null = LLVMBuildOr(e->b, any_null, LLVMBuildICmp(e->b, LLVMIntEQ, ptr, null, ""), "");
        at[i] = LLVMBuildPtrToInt(e->b, ptr, e->i64, "");
    }
    fail_if(e, fn, any_null, MJ_AOT_ERR_NULL);
    fail_if(e, fn,
            LLVMBuildOr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, batch, c64(e, 1), ""),
                        LLVMBuildICmp(e->b, LLVMIntSGT, batch, c64(e, a->max_batch), ""), ""),
            MJ_AOT_ERR_BATCH);
    for (int32_t i = 0; i < n_io; i++) {
        int64_t c;
        int p;
        mj_aot_type_poly(&a->g->nodes[i < n_in ? a->plan.in_nodes[i] : a->plan.out_nodes[i - n_in]].type, &c, &p);
        bytes_of[i] = poly(e, c * 4, p, batch);
    }
    /* no output may overlap an input or another output (the body's outputs
     * are noalias); inputs may share memory */
    LLVMValueRef any_ov = LLVMConstInt(e->i1, 0, 0);
    for (int32_t j = n_in; j < n_io; j++)
        for (int32_t i = 0; i < j; i++) {
            LLVMValueRef ov = LLVMBuildAnd(
                e->b, LLVMBuildICmp(e->b, LLVMIntULT, at[i], LLVMBuildAdd(e->b, at[j], bytes_of[j], ""), ""),
                LLVMBuildICmp(e->b, LLVMIntULT, at[j], LLVMBuildAdd(e->b, at[i], bytes_of[i], ""), ""), "");
            LLVMValueRef nonempty = LLVMBuildAnd(e->b, LLVMBuildICmp(e->b, LLVMIntNE, bytes_of[i], c64(e, 0), ""),
                                                 LLVMBuildICmp(e->b, LLVMIntNE, bytes_of[j], c64(e, 0), ""), "");
            any_ov = LLVMBuildOr(e->b, any_ov, LLVMBuildAnd(e->b, ov, nonempty, ""), "");
        }
    fail_if(e, fn, any_ov, MJ_AOT_ERR_OVERLAP);
    free(at);
    free(bytes_of);
    /* live: every param bound */
    LLVMValueRef *pv = NULL;
    if (a->live && a->n_params > 0) {
        pv = mj_alloc_array((size_t)a->n_params, sizeof *pv);
        MJ_ASSERT(pv); /* a few pointers */
        LLVMValueRef any_null = LLVMConstInt(e->i1, 0, 0);
        for (int32_t k = 0; k < a->n_params; k++) {
            LLVMValueRef idx = c64(e, k);
            pv[k] = LLVMBuildLoad2(e->b, e->ptr, LLVMBuildInBoundsGEP2(e->b, e->ptr, params, &idx, 1, ""), "param");
            any_null = LLVMBuildOr(e->b, any_null, LLVMBuildICmp(e->b, LLVMIntEQ, pv[k], null, ""), "");
        }
        fail_if(e, fn, any_null, MJ_AOT_ERR_UNBOUND);
    }

    /* scratch floats: [pack area][body's slices] */
    LLVMValueRef n = c64(e, a->pack_floats + a->scratch_fixed);
    for (int32_t i = 0; i < a->n_slots; i++) {
        LLVMValueRef v = poly(e, a->slot_coef[i], a->slot_pow[i], batch);
        v = LLVMBuildAnd(e->b, LLVMBuildAdd(e->b, v, c64(e, 15), ""), c64(e, ~INT64_C(15)), "");
        n = LLVMBuildAdd(e->b, n, v, "");
    }
    LLVMBasicBlockRef on_stack = LLVMAppendBasicBlockInContext(e->ctx, fn, "on_stack");
    LLVMBasicBlockRef on_heap = LLVMAppendBasicBlockInContext(e->ctx, fn, "on_heap");
    LLVMBasicBlockRef join = LLVMAppendBasicBlockInContext(e->ctx, fn, "join");
    LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLE, n, c64(e, STACK_FLOATS), ""), on_stack, on_heap);
    LLVMPositionBuilderAtEnd(e->b, on_stack);
    LLVMBuildBr(e->b, join);

    /* The heap scratch is kept for the next call: a buffer of [64-byte
     * header: its size][scratch] in one global slot, taken and given back
     * with atomic exchanges, so concurrent calls each have their own (a
     * call that finds the slot empty allocates). Freed each call, a
     * scratch beyond malloc's mmap threshold was mapped and faulted in
     * every time: a frozen MobileNetV2 stack ran 4x slower than in the
     * JIT, which keeps its scratch too. */
    LLVMPositionBuilderAtEnd(e->b, on_heap);
    LLVMTypeRef aat[2] = {e->i64, e->i64};
    LLVMTypeRef aa_ty = LLVMFunctionType(e->ptr, aat, 2, 0);
    LLVMTypeRef free_ty = LLVMFunctionType(LLVMVoidTypeInContext(e->ctx), &e->ptr, 1, 0);
    LLVMTypeRef i8 = LLVMInt8TypeInContext(e->ctx);
    char slot_name[128];
    snprintf(slot_name, sizeof slot_name, "%s.scratch", e->name);
    LLVMValueRef slot = LLVMAddGlobal(e->m, e->ptr, slot_name);
    LLVMSetInitializer(slot, null);
    LLVMSetLinkage(slot, LLVMInternalLinkage);
    /* aligned_alloc wants a multiple of the alignment */
    LLVMValueRef bytes = LLVMBuildAnd(e->b, LLVMBuildAdd(e->b, LLVMBuildMul(e->b, n, c64(e, 4), ""), c64(e, 63), ""),
                                      c64(e, ~INT64_C(63)), "");
    LLVMValueRef kept = LLVMBuildAtomicRMW(e->b, LLVMAtomicRMWBinOpXchg, slot, null, LLVMAtomicOrderingAcquireRelease, 0);
    LLVMBasicBlockRef check_kept = LLVMAppendBasicBlockInContext(e->ctx, fn, "check_kept");
    LLVMBasicBlockRef drop_kept = LLVMAppendBasicBlockInContext(e->ctx, fn, "drop_kept");
    LLVMBasicBlockRef alloc = LLVMAppendBasicBlockInContext(e->ctx, fn, "alloc");
    LLVMBasicBlockRef got = LLVMAppendBasicBlockInContext(e->ctx, fn, "got");
    LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntEQ, kept, null, ""), alloc, check_kept);
    LLVMPositionBuilderAtEnd(e->b, check_kept);
    LLVMValueRef kept_bytes = LLVMBuildLoad2(e->b, e->i64, kept, "kept_bytes");
    LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSGE, kept_bytes, bytes, ""), got, drop_kept);
    LLVMPositionBuilderAtEnd(e->b, drop_kept); /* too small for this batch */
    LLVMBuildCall2(e->b, free_ty, libc_fn(e, "free", free_ty), &kept, 1, "");
    LLVMBuildBr(e->b, alloc);
    LLVMPositionBuilderAtEnd(e->b, alloc);
    LLVMValueRef aargs[2] = {c64(e, 64), LLVMBuildAdd(e->b, bytes, c64(e, 64), "")};
    LLVMValueRef fresh = LLVMBuildCall2(e->b, aa_ty, libc_fn(e, "aligned_alloc", aa_ty), aargs, 2, "scratch");
    fail_if(e, fn, LLVMBuildICmp(e->b, LLVMIntEQ, fresh, null, ""), MJ_AOT_ERR_NOMEM);
    LLVMBuildStore(e->b, bytes, fresh);
    LLVMBasicBlockRef alloc_ok = LLVMGetInsertBlock(e->b);
    LLVMBuildBr(e->b, got);
    LLVMPositionBuilderAtEnd(e->b, got);
    LLVMValueRef whole = phi2(e, "whole", kept, check_kept, fresh, alloc_ok);
    LLVMValueRef header = c64(e, 64);
    LLVMValueRef buf = LLVMBuildInBoundsGEP2(e->b, i8, whole, &header, 1, "scratch");
    LLVMBasicBlockRef heap_ok = LLVMGetInsertBlock(e->b);
    LLVMBuildBr(e->b, join);

    LLVMPositionBuilderAtEnd(e->b, join);
    LLVMValueRef base = phi2(e, "base", stack, on_stack, buf, heap_ok);
    LLVMValueRef leaves_arg = null;
    if (leaves) {
        for (int32_t l = 0; l < nl; l++) {
            int32_t k = a->leaf_param[l];
            LLVMValueRef v;
            if (k < 0) {
                LLVMValueRef idx[2] = {c64(e, 0), c64(e, l)};
                v = LLVMBuildLoad2(e->b, e->ptr, LLVMBuildInBoundsGEP2(e->b, LLVMGlobalGetValueType(consts), consts, idx, 2, ""), "");
            } else if (a->plan.leaves[l].packed) {
                const mj_type *t = &a->g->nodes[a->plan.leaves[l].node].type;
                v = fptr(e, base, c64(e, a->pack_off[l]));
                emit_pack(e, fn, pv[k], v, t->dims[0], t->dims[1], a->plan.panel);
            } else {
                v = pv[k];
            }
            LLVMValueRef idx = c64(e, l);
            LLVMBuildStore(e->b, v, LLVMBuildInBoundsGEP2(e->b, e->ptr, leaves, &idx, 1, ""));
        }
        leaves_arg = leaves;
    }
    free(pv);
    /* the body takes arrays of input and output pointers: the caller's,
     * checked above */
    LLVMValueRef args[8] = {leaves_arg, inputs, outputs, batch, fptr(e, base, c64(e, a->pack_floats)), c64(e, 0), c64(e, 1), null};
    LLVMBuildCall2(e->b, LLVMGlobalGetValueType(body), body, args, 8, "");
    LLVMBasicBlockRef do_free = LLVMAppendBasicBlockInContext(e->ctx, fn, "free");
    LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(e->ctx, fn, "done");
    LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntEQ, base, stack, ""), done, do_free);
    LLVMPositionBuilderAtEnd(e->b, do_free); /* give the buffer back; free the one it displaces */
    LLVMValueRef back = c64(e, -64);
    LLVMValueRef mine = LLVMBuildInBoundsGEP2(e->b, i8, base, &back, 1, "");
    LLVMValueRef displaced = LLVMBuildAtomicRMW(e->b, LLVMAtomicRMWBinOpXchg, slot, mine, LLVMAtomicOrderingAcquireRelease, 0);
    LLVMBasicBlockRef free_displaced = LLVMAppendBasicBlockInContext(e->ctx, fn, "free_displaced");
    LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntEQ, displaced, null, ""), done, free_displaced);
    LLVMPositionBuilderAtEnd(e->b, free_displaced);
    LLVMBuildCall2(e->b, free_ty, libc_fn(e, "free", free_ty), &displaced, 1, "");
    LLVMBuildBr(e->b, done);
    LLVMPositionBuilderAtEnd(e->b, done);
    LLVMBuildRet(e->b, c32(e, MJ_AOT_OK));
    return fn;
}

/* A private constant C string. */
static LLVMValueRef cstr(emit *e, const char *suffix, const char *text);

/* Live: the param table (names, shapes), NAME_bind into a table of bound
 * pointers (atomic, so a bind racing with a call is defined: the call sees
 * the old or the new pointer), NAME_run over that table, NAME_run_with. */
void mj_aot_emit_live_api(emit *e, LLVMValueRef core) {
    const aot *a = e->a;
    int32_t np = a->n_params;
    char nm[160];
    LLVMValueRef *names = mj_alloc_array((size_t)np + 1, sizeof *names);
    LLVMValueRef *ranks = mj_alloc_array((size_t)np + 1, sizeof *ranks);
    LLVMValueRef *dims = mj_alloc_array((size_t)np + 1, sizeof *dims);
    MJ_ASSERT(names && ranks && dims);
    LLVMTypeRef row_ty = LLVMArrayType2(e->i64, 4);
    for (int32_t k = 0; k < np; k++) {
        const mj_node *n = &a->g->nodes[a->param_node[k]];
        char sfx[32];
        snprintf(sfx, sizeof sfx, ".param%d", (int)k);
        names[k] = cstr(e, sfx, n->name);
        ranks[k] = c32(e, (uint32_t)n->type.rank);
        LLVMValueRef d[4];
        for (int i = 0; i < 4; i++) d[i] = c64(e, i < n->type.rank ? n->type.dims[i] : 0);
        dims[k] = LLVMConstArray2(e->i64, d, 4);
    }
    struct {
        const char *sfx;
        LLVMTypeRef ty;
        LLVMValueRef *v;
    } tables[3] = {{"_param_names", e->ptr, names}, {"_param_rank", e->i32, ranks}, {"_param_dims", row_ty, dims}};
    LLVMValueRef names_gv = NULL;
    for (int t = 0; t < 3; t++) {
        snprintf(nm, sizeof nm, "%s%s", e->name, tables[t].sfx);
        LLVMValueRef init = LLVMConstArray2(tables[t].ty, tables[t].v, (uint64_t)np);
        LLVMValueRef gv = LLVMAddGlobal(e->m, LLVMTypeOf(init), nm);
        LLVMSetInitializer(gv, init);
        LLVMSetGlobalConstant(gv, 1);
        if (t == 0) names_gv = gv;
    }
    snprintf(nm, sizeof nm, "%s.bound", e->name);
    LLVMTypeRef bound_ty = LLVMArrayType2(e->ptr, (uint64_t)np);
    LLVMValueRef bound = LLVMAddGlobal(e->m, bound_ty, nm);
    LLVMSetInitializer(bound, LLVMConstNull(bound_ty));
    LLVMSetLinkage(bound, LLVMInternalLinkage);
    LLVMSetAlignment(bound, 8);
    LLVMValueRef null = LLVMConstPointerNull(e->ptr);

    /* int NAME_bind(const char *name, const float *data) */
    LLVMTypeRef bt[2] = {e->ptr, e->ptr};
    LLVMValueRef fn = mj_aot_add_fn(e, "_bind", e->i32, bt, 2, true);
    LLVMPositionBuilderAtEnd(e->b, LLVMAppendBasicBlockInContext(e->ctx, fn, "entry"));
    LLVMValueRef name = LLVMGetParam(fn, 0), data = LLVMGetParam(fn, 1);
    fail_if(e, fn, LLVMBuildICmp(e->b, LLVMIntEQ, name, null, ""), MJ_AOT_ERR_NULL);
    LLVMTypeRef sc_ty = LLVMFunctionType(e->i32, bt, 2, 0);
    LLVMValueRef strcmp_fn = libc_fn(e, "strcmp", sc_ty);
    for (int32_t k = 0; k < np; k++) {
        LLVMValueRef args[2] = {name, names[k]};
        LLVMValueRef r = LLVMBuildCall2(e->b, sc_ty, strcmp_fn, args, 2, "");
        LLVMBasicBlockRef hit = LLVMAppendBasicBlockInContext(e->ctx, fn, "hit");
        LLVMBasicBlockRef miss = LLVMAppendBasicBlockInContext(e->ctx, fn, "miss");
        LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntEQ, r, c32(e, 0), ""), hit, miss);
        LLVMPositionBuilderAtEnd(e->b, hit);
        LLVMValueRef idx[2] = {c64(e, 0), c64(e, k)};
        LLVMValueRef st = LLVMBuildStore(e->b, data, LLVMBuildInBoundsGEP2(e->b, bound_ty, bound, idx, 2, ""));
        LLVMSetOrdering(st, LLVMAtomicOrderingRelease);
        LLVMSetAlignment(st, 8);
        LLVMBuildRet(e->b, c32(e, MJ_AOT_OK));
        LLVMPositionBuilderAtEnd(e->b, miss);
    }
    LLVMBuildRet(e->b, c32(e, MJ_AOT_ERR_KEY));

    /* int NAME_run(batch, inputs, outputs): over the bound table */
    LLVMTypeRef rt[3] = {e->i64, e->ptr, e->ptr};
    fn = mj_aot_add_fn(e, "_run", e->i32, rt, 3, true);
    LLVMPositionBuilderAtEnd(e->b, LLVMAppendBasicBlockInContext(e->ctx, fn, "entry"));
    LLVMValueRef local = LLVMBuildAlloca(e->b, LLVMArrayType2(e->ptr, (uint64_t)(np > 0 ? np : 1)), "params");
    for (int32_t k = 0; k < np; k++) {
        LLVMValueRef idx[2] = {c64(e, 0), c64(e, k)};
        LLVMValueRef ld = LLVMBuildLoad2(e->b, e->ptr, LLVMBuildInBoundsGEP2(e->b, bound_ty, bound, idx, 2, ""), "");
        LLVMSetOrdering(ld, LLVMAtomicOrderingAcquire);
        LLVMSetAlignment(ld, 8);
        LLVMValueRef li = c64(e, k);
        LLVMBuildStore(e->b, ld, LLVMBuildInBoundsGEP2(e->b, e->ptr, local, &li, 1, ""));
    }
    LLVMValueRef cargs[4] = {local, LLVMGetParam(fn, 0), LLVMGetParam(fn, 1), LLVMGetParam(fn, 2)};
    LLVMBuildRet(e->b, LLVMBuildCall2(e->b, LLVMGlobalGetValueType(core), core, cargs, 4, ""));

    /* int NAME_run_with(params, batch, inputs, outputs): no shared state */
    LLVMTypeRef wt[4] = {e->ptr, e->i64, e->ptr, e->ptr};
    fn = mj_aot_add_fn(e, "_run_with", e->i32, wt, 4, true);
    LLVMPositionBuilderAtEnd(e->b, LLVMAppendBasicBlockInContext(e->ctx, fn, "entry"));
    if (np > 0) fail_if(e, fn, LLVMBuildICmp(e->b, LLVMIntEQ, LLVMGetParam(fn, 0), null, ""), MJ_AOT_ERR_NULL);
    LLVMValueRef wargs[4] = {LLVMGetParam(fn, 0), LLVMGetParam(fn, 1), LLVMGetParam(fn, 2), LLVMGetParam(fn, 3)};
    LLVMBuildRet(e->b, LLVMBuildCall2(e->b, LLVMGlobalGetValueType(core), core, wargs, 4, ""));
    (void)names_gv;
    free(names);
    free(ranks);
    free(dims);
}

static LLVMValueRef cstr(emit *e, const char *suffix, const char *text) {
    char nm[160];
    snprintf(nm, sizeof nm, "%s.msg%s", e->name, suffix);
    LLVMValueRef init = LLVMConstStringInContext2(e->ctx, text, strlen(text), 0);
    LLVMValueRef gv = LLVMAddGlobal(e->m, LLVMTypeOf(init), nm);
    LLVMSetInitializer(gv, init);
    LLVMSetGlobalConstant(gv, 1);
    LLVMSetLinkage(gv, LLVMPrivateLinkage);
    LLVMSetUnnamedAddress(gv, LLVMGlobalUnnamedAddr);
    return gv;
}

/* e->name is at most 64 characters (aot.c: is_identifier), so the messages
 * fit; GCC no longer sees that now that the caller is in another file. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-truncation"
mj_status mj_aot_emit_strerror(emit *e, const char *need) {
    LLVMValueRef fn = mj_aot_add_fn(e, "_strerror", e->ptr, &e->i32, 1, true);
    LLVMBasicBlockRef entry = LLVMAppendBasicBlockInContext(e->ctx, fn, "entry");
    LLVMBasicBlockRef dflt = LLVMAppendBasicBlockInContext(e->ctx, fn, "unknown");
    char cpu_msg[4096];
    snprintf(cpu_msg, sizeof cpu_msg,
             "%s: this CPU lacks a feature the code was compiled for (target %s; needs %s); "
             "regenerate it with maskjit aot --target-cpu for an older CPU",
             e->name, e->t->cpu, *need ? need : "nothing");
    char batch_msg[160];
    snprintf(batch_msg, sizeof batch_msg, "%s: batch must be between 1 and %lld", e->name,
             (long long)e->a->max_batch);
    char null_msg[160], ov_msg[160], mem_msg[160], ok_msg[160], unk_msg[160], key_msg[160], unb_msg[160];
    snprintf(key_msg, sizeof key_msg, "%s: no parameter of that name (see %s_param_names)", e->name, e->name);
    snprintf(unb_msg, sizeof unb_msg, "%s: a parameter is not bound (%s_bind) or is NULL", e->name, e->name);
    snprintf(ok_msg, sizeof ok_msg, "%s: success", e->name);
    snprintf(null_msg, sizeof null_msg, "%s: inputs, outputs or one of their buffers is NULL", e->name);
    snprintf(ov_msg, sizeof ov_msg, "%s: an input buffer overlaps an output buffer", e->name);
    snprintf(mem_msg, sizeof mem_msg, "%s: out of memory for the intermediate values", e->name);
    snprintf(unk_msg, sizeof unk_msg, "%s: unknown error code", e->name);
    const struct {
        int code;
        const char *sfx, *text;
    } msgs[] = {{MJ_AOT_OK, ".ok", ok_msg},          {MJ_AOT_ERR_CPU, ".cpu", cpu_msg},
                {MJ_AOT_ERR_NULL, ".null", null_msg}, {MJ_AOT_ERR_BATCH, ".batch", batch_msg},
                {MJ_AOT_ERR_OVERLAP, ".overlap", ov_msg}, {MJ_AOT_ERR_NOMEM, ".nomem", mem_msg},
                {MJ_AOT_ERR_KEY, ".key", key_msg}, {MJ_AOT_ERR_UNBOUND, ".unbound", unb_msg}};
    int n = (int)(sizeof msgs / sizeof msgs[0]);
    LLVMPositionBuilderAtEnd(e->b, entry);
    LLVMValueRef sw = LLVMBuildSwitch(e->b, LLVMGetParam(fn, 0), dflt, (unsigned)n);
    for (int i = 0; i < n; i++) {
        LLVMBasicBlockRef bb = LLVMAppendBasicBlockInContext(e->ctx, fn, "msg");
        LLVMAddCase(sw, c32(e, (uint32_t)msgs[i].code), bb);
        LLVMPositionBuilderAtEnd(e->b, bb);
        LLVMBuildRet(e->b, cstr(e, msgs[i].sfx, msgs[i].text));
    }
    LLVMPositionBuilderAtEnd(e->b, dflt);
    LLVMBuildRet(e->b, cstr(e, ".unknown", unk_msg));
    return MJ_OK;
}
#pragma GCC diagnostic pop

/* const int NAME_<what>_rank[n]; const int64_t NAME_<what>_dims[n][4] (-1 = B, 0 = unused), one row
 * per input (or output) in the body's order */
void mj_aot_emit_shape_tables(emit *e, const char *what, const int32_t *nodes, int32_t n) {
    char nm[160];
    snprintf(nm, sizeof nm, "%s_%s_rank", e->name, what);
    LLVMValueRef *r = mj_alloc_array((size_t)n + 1, sizeof *r), *rows = mj_alloc_array((size_t)n + 1, sizeof *rows);
    MJ_ASSERT(r && rows); /* a few pointers */
    for (int32_t k = 0; k < n; k++) {
        const mj_type *t = &e->a->g->nodes[nodes[k]].type;
        r[k] = c32(e, (uint32_t)t->rank);
        LLVMValueRef d[4];
        for (int i = 0; i < 4; i++) d[i] = c64(e, i >= t->rank ? 0 : t->dims[i] == MJ_DIM_BATCH ? -1 : t->dims[i]);
        rows[k] = LLVMConstArray2(e->i64, d, 4);
    }
    LLVMValueRef rank = LLVMConstArray2(e->i32, r, (uint64_t)n);
    LLVMValueRef gv = LLVMAddGlobal(e->m, LLVMTypeOf(rank), nm);
    LLVMSetInitializer(gv, rank);
    LLVMSetGlobalConstant(gv, 1);
    LLVMValueRef dims = LLVMConstArray2(LLVMArrayType2(e->i64, 4), rows, (uint64_t)n);
    free(r);
    free(rows);
    snprintf(nm, sizeof nm, "%s_%s_dims", e->name, what);
    gv = LLVMAddGlobal(e->m, LLVMTypeOf(dims), nm);
    LLVMSetInitializer(gv, dims);
    LLVMSetGlobalConstant(gv, 1);
    LLVMSetAlignment(gv, 8);
}
