/* The shared LLVM builder helpers (see emit.h for the exact-mode contract). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <llvm-c/DebugInfo.h>

#define MJ_EMIT_CTX(c) (c) /* the short forms, on the mj_emit itself */
#include "emit.h"

#include "src/core/internal.h"
#include "src/core/vmath.h"

void mj_emit_init(mj_emit *e, LLVMModuleRef m, bool fast, int vw, bool loop_hints) {
    memset(e, 0, sizeof *e);
    e->m = m;
    e->ctx = LLVMGetModuleContext(m);
    e->fast = fast;
    e->vw = vw;
    e->loop_hints = loop_hints;
    e->f32 = LLVMFloatTypeInContext(e->ctx);
    e->i32 = LLVMInt32TypeInContext(e->ctx);
    e->i64 = LLVMInt64TypeInContext(e->ctx);
    e->ptr = LLVMPointerTypeInContext(e->ctx, 0);
    e->vt = LLVMVectorType(e->f32, (unsigned)vw);
    e->unary_ty = LLVMFunctionType(e->f32, &e->f32, 1, 0);
}

/* ---- constants, indices, memory ------------------------------------------ */

LLVMValueRef mj_emit_ci(mj_emit *e, int64_t v) { return LLVMConstInt(e->i64, (unsigned long long)v, 1); }
LLVMValueRef mj_emit_cf(mj_emit *e, float v) { return LLVMConstReal(e->f32, (double)v); }
LLVMValueRef mj_emit_mul(mj_emit *e, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildNSWMul(e->b, a, b, ""); }
LLVMValueRef mj_emit_add(mj_emit *e, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildNSWAdd(e->b, a, b, ""); }

LLVMValueRef mj_emit_at(mj_emit *e, LLVMTypeRef t, LLVMValueRef base, LLVMValueRef idx) {
    return LLVMBuildInBoundsGEP2(e->b, t, base, &idx, 1, "");
}
LLVMValueRef mj_emit_load(mj_emit *e, LLVMTypeRef t, LLVMValueRef base, LLVMValueRef idx) {
    return LLVMBuildLoad2(e->b, t, mj_emit_at(e, t, base, idx), "");
}
void mj_emit_store(mj_emit *e, LLVMValueRef v, LLVMValueRef base, LLVMValueRef idx) {
    LLVMBuildStore(e->b, v, at(e, base, idx));
}

LLVMValueRef mj_emit_intrinsic(mj_emit *e, const char *name, LLVMTypeRef *tys, size_t n, LLVMTypeRef *fty) {
    unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
    MJ_ASSERT(id != 0);
    *fty = LLVMIntrinsicGetType(e->ctx, id, tys, n);
    return LLVMGetIntrinsicDeclaration(e->m, id, tys, n);
}

LLVMValueRef mj_emit_add_attr(mj_emit *e, LLVMValueRef fn, unsigned idx, const char *name) {
    unsigned kind = LLVMGetEnumAttributeKindForName(name, strlen(name));
    LLVMAddAttributeAtIndex(fn, idx, LLVMCreateEnumAttribute(e->ctx, kind, 0));
    return fn;
}

/* ---- float arithmetic in the mode ------------------------------------------ */

/* Fast mode: let LLVM contract and reassociate. NaN and Inf keep their
 * meaning (no nnan/ninf): fast changes rounding, not semantics. */
LLVMValueRef mj_emit_fpflags(mj_emit *e, LLVMValueRef v) {
    if (e->fast && LLVMIsAInstruction(v))
        LLVMSetFastMathFlags(v, LLVMFastMathAllowContract | LLVMFastMathAllowReassoc |
                                    LLVMFastMathNoSignedZeros | LLVMFastMathAllowReciprocal);
    return v;
}
LLVMValueRef mj_emit_fadd(mj_emit *e, LLVMValueRef a, LLVMValueRef b) {
    return fpflags(e, LLVMBuildFAdd(e->b, a, b, ""));
}
LLVMValueRef mj_emit_fsub(mj_emit *e, LLVMValueRef a, LLVMValueRef b) {
    return fpflags(e, LLVMBuildFSub(e->b, a, b, ""));
}
LLVMValueRef mj_emit_fmul(mj_emit *e, LLVMValueRef a, LLVMValueRef b) {
    return fpflags(e, LLVMBuildFMul(e->b, a, b, ""));
}
LLVMValueRef mj_emit_fdiv(mj_emit *e, LLVMValueRef a, LLVMValueRef b) {
    return fpflags(e, LLVMBuildFDiv(e->b, a, b, ""));
}

LLVMValueRef mj_emit_sel(mj_emit *e, LLVMRealPredicate p, LLVMValueRef a, LLVMValueRef b, LLVMValueRef t,
                         LLVMValueRef f) {
    return LLVMBuildSelect(e->b, LLVMBuildFCmp(e->b, p, a, b, ""), t, f, "");
}

/* acc + a*b, scalar or vector: exact is eager's fmaf(a, b, acc) (llvm.fma:
 * one rounding, an FMA instruction where the target has one, libm's fmaf
 * elsewhere); fast is fmuladd with fast-math flags (LLVM may reassociate). */
LLVMValueRef mj_emit_muladd(mj_emit *e, LLVMValueRef acc, LLVMValueRef a, LLVMValueRef b) {
    LLVMTypeRef t = LLVMTypeOf(acc), fty;
    LLVMValueRef fn = intrinsic(e, e->fast ? "llvm.fmuladd" : "llvm.fma", &t, 1, &fty);
    LLVMValueRef args[3] = {a, b, acc};
    return fpflags(e, LLVMBuildCall2(e->b, fty, fn, args, 3, ""));
}

/* ---- control flow ---------------------------------------------------------- */

LLVMValueRef mj_emit_entry_alloca(mj_emit *e, LLVMTypeRef t) {
    LLVMBuilderRef b = LLVMCreateBuilderInContext(e->ctx);
    LLVMBasicBlockRef entry = LLVMGetEntryBasicBlock(e->fn);
    LLVMValueRef first = LLVMGetFirstInstruction(entry);
    if (first) LLVMPositionBuilderBefore(b, first);
    else LLVMPositionBuilderAtEnd(b, entry);
    LLVMValueRef a = LLVMBuildAlloca(b, t, "acc");
    LLVMDisposeBuilder(b);
    return a;
}

mj_loop mj_emit_loop_begin(mj_emit *e, LLVMValueRef from, LLVMValueRef to, int64_t step) {
    mj_loop l;
    LLVMBasicBlockRef pre = LLVMGetInsertBlock(e->b);
    l.header = LLVMAppendBasicBlockInContext(e->ctx, e->fn, "loop");
    LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(e->ctx, e->fn, "body");
    l.exit = LLVMAppendBasicBlockInContext(e->ctx, e->fn, "done");
    l.step = ci(e, step);
    LLVMBuildBr(e->b, l.header);
    LLVMPositionBuilderAtEnd(e->b, l.header);
    l.iv = LLVMBuildPhi(e->b, LLVMTypeOf(from), "i");
    LLVMAddIncoming(l.iv, &from, &pre, 1);
    LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, l.iv, to, ""), body, l.exit);
    LLVMPositionBuilderAtEnd(e->b, body);
    return l;
}

/* !{self, !{"llvm.loop.unroll.disable"}, !{"llvm.loop.vectorize.enable", false}}:
 * the code is vectorised by hand; unrolling or vectorising the short edge
 * loops (constant trip counts) again only makes compiles slow. */
static LLVMValueRef loop_md(mj_emit *e) {
    LLVMMetadataRef tmp = LLVMTemporaryMDNode(e->ctx, NULL, 0);
    LLVMMetadataRef u = LLVMMDStringInContext2(e->ctx, "llvm.loop.unroll.disable", 24);
    LLVMMetadataRef v[2] = {LLVMMDStringInContext2(e->ctx, "llvm.loop.vectorize.enable", 26),
                            LLVMValueAsMetadata(LLVMConstInt(LLVMInt1TypeInContext(e->ctx), 0, 0))};
    LLVMMetadataRef ops[3] = {tmp, LLVMMDNodeInContext2(e->ctx, &u, 1), LLVMMDNodeInContext2(e->ctx, v, 2)};
    LLVMMetadataRef node = LLVMMDNodeInContext2(e->ctx, ops, 3);
    LLVMMetadataReplaceAllUsesWith(tmp, node); /* also disposes tmp */
    return LLVMMetadataAsValue(e->ctx, node);
}

void mj_emit_loop_end(mj_emit *e, mj_loop *l) {
    LLVMBasicBlockRef latch = LLVMGetInsertBlock(e->b);
    LLVMValueRef next = LLVMBuildNSWAdd(e->b, l->iv, l->step, "");
    LLVMValueRef br = LLVMBuildBr(e->b, l->header);
    if (e->loop_hints) LLVMSetMetadata(br, LLVMGetMDKindIDInContext(e->ctx, "llvm.loop", 9), loop_md(e));
    LLVMAddIncoming(l->iv, &next, &latch, 1);
    LLVMPositionBuilderAtEnd(e->b, l->exit);
}

LLVMBasicBlockRef mj_emit_if_begin(mj_emit *e, LLVMValueRef cond) {
    LLVMBasicBlockRef then = LLVMAppendBasicBlockInContext(e->ctx, e->fn, "then");
    LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(e->ctx, e->fn, "endif");
    LLVMBuildCondBr(e->b, cond, then, done);
    LLVMPositionBuilderAtEnd(e->b, then);
    return done;
}
void mj_emit_if_end(mj_emit *e, LLVMBasicBlockRef end) {
    LLVMBuildBr(e->b, end);
    LLVMPositionBuilderAtEnd(e->b, end);
}

mj_ifelse mj_emit_ifelse_begin(mj_emit *e, LLVMValueRef cond) {
    mj_ifelse f;
    LLVMBasicBlockRef then = LLVMAppendBasicBlockInContext(e->ctx, e->fn, "then");
    f.els = LLVMAppendBasicBlockInContext(e->ctx, e->fn, "else");
    f.end = LLVMAppendBasicBlockInContext(e->ctx, e->fn, "endif");
    LLVMBuildCondBr(e->b, cond, then, f.els);
    LLVMPositionBuilderAtEnd(e->b, then);
    return f;
}
void mj_emit_else(mj_emit *e, const mj_ifelse *f) {
    LLVMBuildBr(e->b, f->end);
    LLVMPositionBuilderAtEnd(e->b, f->els);
}

/* ---- libm and the activations ---------------------------------------------- */

LLVMValueRef mj_emit_libm(mj_emit *e, const char *name, int arity) {
    LLVMValueRef f = LLVMGetNamedFunction(e->m, name);
    if (f) return f;
    LLVMTypeRef two[2] = {e->f32, e->f32};
    return LLVMAddFunction(e->m, name, arity == 1 ? e->unary_ty : LLVMFunctionType(e->f32, two, 2, 0));
}

/* Exact: never let LLVM fold or replace the call with its own approximation;
 * the process's libm computes it, as in eager. */
static LLVMValueRef libm_call(mj_emit *e, LLVMTypeRef fty, LLVMValueRef fn, LLVMValueRef *args, unsigned n) {
    LLVMValueRef c = LLVMBuildCall2(e->b, fty, fn, args, n, "");
    if (!e->fast) {
        unsigned kind = LLVMGetEnumAttributeKindForName("nobuiltin", 9);
        LLVMAddCallSiteAttribute(c, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(e->ctx, kind, 0));
    }
    return c;
}

LLVMValueRef mj_emit_call_libm(mj_emit *e, const char *name, LLVMValueRef x) {
    return libm_call(e, e->unary_ty, libm(e, name, 1), &x, 1);
}

/* IEEE sqrt, correctly rounded as libm's sqrtf is: the same bits (NaN
 * included: both are the sqrtss instruction), without a call. A call made
 * LLVM spill every vector register around it: a conv's batch norm computes
 * its sqrt per tile, and the spills cost MobileNetV2's blocks a fifth of
 * their time. No fast-math flags: fast mode must not make it an estimate. */
LLVMValueRef mj_emit_sqrtf(mj_emit *e, LLVMValueRef x) {
    LLVMTypeRef t = LLVMTypeOf(x), fty;
    LLVMValueRef fn = mj_emit_intrinsic(e, "llvm.sqrt", &t, 1, &fty);
    return LLVMBuildCall2(e->b, fty, fn, &x, 1, "");
}

LLVMValueRef mj_emit_call_libm2(mj_emit *e, const char *name, LLVMValueRef x, LLVMValueRef y) {
    LLVMValueRef args[2] = {x, y};
    LLVMTypeRef two[2] = {e->f32, e->f32};
    return libm_call(e, LLVMFunctionType(e->f32, two, 2, 0), libm(e, name, 2), args, 2);
}

/* ---- maskjit's expf and gelu (src/core/vmath.h), on scalars or vectors ----- */

/* A float constant of type t (float or a vector of floats: splatted). */
static LLVMValueRef splat_const(LLVMTypeRef t, LLVMValueRef s) {
    if (LLVMGetTypeKind(t) != LLVMVectorTypeKind) return s;
    unsigned n = LLVMGetVectorSize(t);
    LLVMValueRef el[64];
    MJ_ASSERT(n <= 64);
    for (unsigned i = 0; i < n; i++) el[i] = s;
    return LLVMConstVector(el, n);
}
LLVMValueRef mj_emit_kf(mj_emit *e, LLVMTypeRef t, float v) { return splat_const(t, cf(e, v)); }
static LLVMTypeRef int_like(mj_emit *e, LLVMTypeRef t) {
    return LLVMGetTypeKind(t) == LLVMVectorTypeKind ? LLVMVectorType(e->i32, LLVMGetVectorSize(t)) : e->i32;
}
static LLVMValueRef ki(mj_emit *e, LLVMTypeRef t, uint32_t v) {
    return splat_const(int_like(e, t), LLVMConstInt(e->i32, v, 0));
}

/* A constant of the sequences below. On vectors it is loaded from a
 * private global vector, which LLVM cannot fold back into a splat (the
 * global is externally initialised): the load becomes the memory operand
 * of the FMA or compare that uses it. A splat constant would be a
 * broadcast load of its own, and with more constants than vector
 * registers (gelu has 22, exp 12) every use pays one; on Zen 3 a
 * broadcast takes a slot of an FMA pipe. In a BERT feed-forward chain
 * (gelu in the epilogue, AVX2, Zen 3) 2.86 -> 2.73 ms; softmax over
 * [12, 128, 128] 125 -> 120 us. +0.0f stays a constant (a register xor). */
static LLVMValueRef vm_k(mj_emit *e, LLVMTypeRef t, float v) {
    if (LLVMGetTypeKind(t) != LLVMVectorTypeKind || (v == 0.0f && !signbit(v))) return mj_emit_kf(e, t, v);
    char name[48];
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    snprintf(name, sizeof name, "mj.k%u.%08x", LLVMGetVectorSize(t), (unsigned)bits);
    LLVMValueRef g = LLVMGetNamedGlobal(e->m, name);
    if (!g) {
        g = LLVMAddGlobal(e->m, t, name);
        LLVMSetInitializer(g, mj_emit_kf(e, t, v));
        LLVMSetLinkage(g, LLVMPrivateLinkage);
        LLVMSetExternallyInitialized(g, 1);
        LLVMSetAlignment(g, (unsigned)LLVMGetVectorSize(t) * 4);
    }
    LLVMValueRef l = LLVMBuildLoad2(e->b, t, g, "");
    LLVMSetAlignment(l, (unsigned)LLVMGetVectorSize(t) * 4);
    return l;
}

/* The sequences carry no fast-math flags in either mode: reassociation
 * would undo the rounding trick of the range reduction. vmath.c's fmaf is
 * llvm.fma; fast mode may use fmuladd (an FMA where the target has one). */
static LLVMValueRef vm_fma(mj_emit *e, LLVMValueRef a, LLVMValueRef b, LLVMValueRef c) {
    LLVMTypeRef t = LLVMTypeOf(a), fty;
    LLVMValueRef fn = intrinsic(e, e->fast ? "llvm.fmuladd" : "llvm.fma", &t, 1, &fty);
    LLVMValueRef args[3] = {a, b, c};
    return LLVMBuildCall2(e->b, fty, fn, args, 3, "");
}
static LLVMValueRef vm_sel(mj_emit *e, LLVMRealPredicate p, LLVMValueRef a, LLVMValueRef b, LLVMValueRef t,
                           LLVMValueRef f) {
    return LLVMBuildSelect(e->b, LLVMBuildFCmp(e->b, p, a, b, ""), t, f, "");
}
/* 2^k for k in [-126, 127]: the bits (k + 127) << 23 */
static LLVMValueRef vm_pow2i(mj_emit *e, LLVMTypeRef t, LLVMValueRef k) {
    LLVMValueRef b = LLVMBuildShl(e->b, LLVMBuildAdd(e->b, k, ki(e, t, 127), ""), ki(e, t, 23), "");
    return LLVMBuildBitCast(e->b, b, t, "");
}

/* vmath.c's expf_poly: u = e^s, and *kf = SHIFT + n */
static LLVMValueRef vm_expf_poly(mj_emit *e, LLVMValueRef x, LLVMValueRef *kf) {
    static const float P[MJ_EXPF_NP] = MJ_EXPF_P;
    LLVMTypeRef t = LLVMTypeOf(x);
    LLVMBuilderRef b = e->b;
    LLVMValueRef shift = vm_k(e, t, MJ_EXPF_SHIFT);
    *kf = vm_fma(e, x, vm_k(e, t, MJ_EXPF_LOG2E), shift);
    LLVMValueRef nf = LLVMBuildFSub(b, *kf, shift, "");
    LLVMValueRef s = vm_fma(e, nf, vm_k(e, t, MJ_EXPF_NEG_LN2_HI), x);
    s = vm_fma(e, nf, vm_k(e, t, MJ_EXPF_NEG_LN2_LO), s);
    LLVMValueRef p = vm_k(e, t, P[MJ_EXPF_NP - 1]);
    for (int i = MJ_EXPF_NP - 2; i >= 0; i--) p = vm_fma(e, p, s, vm_k(e, t, P[i]));
    return LLVMBuildFAdd(b, vm_k(e, t, 1.0f), vm_fma(e, LLVMBuildFMul(b, s, s, ""), p, s), "");
}

LLVMValueRef mj_emit_expf(mj_emit *e, LLVMValueRef x) {
    LLVMTypeRef t = LLVMTypeOf(x);
    LLVMBuilderRef b = e->b;
    LLVMValueRef hi = vm_k(e, t, MJ_EXPF_HI), lo = vm_k(e, t, MJ_EXPF_LO);
    LLVMValueRef xc = vm_sel(e, LLVMRealOLT, x, hi, x, hi);
    xc = vm_sel(e, LLVMRealOGT, xc, lo, xc, lo);
    LLVMValueRef kf, u = vm_expf_poly(e, xc, &kf);
    LLVMValueRef nf = LLVMBuildFSub(b, kf, vm_k(e, t, MJ_EXPF_SHIFT), "");
    LLVMValueRef n = LLVMBuildFPToSI(b, nf, int_like(e, t), ""); /* |nf| <= 150: in range */
    LLVMValueRef n1 = LLVMBuildSDiv(b, n, ki(e, t, 2), ""), n2 = LLVMBuildSub(b, n, n1, "");
    LLVMValueRef r = LLVMBuildFMul(b, LLVMBuildFMul(b, u, vm_pow2i(e, t, n1), ""), vm_pow2i(e, t, n2), "");
    r = vm_sel(e, LLVMRealOGT, x, hi, vm_k(e, t, INFINITY), r);
    r = vm_sel(e, LLVMRealOLT, x, lo, vm_k(e, t, 0.0f), r);
    return vm_sel(e, LLVMRealUNO, x, x, x, r);
}

/* mj_expf's bits for any x in [MJ_EXPF_BAND_LO, MJ_EXPF_BAND_HI]
 * (vmath.h), in fewer operations (softmax's usual case): there the clamps
 * and special cases never act and x log2(e) is in [-125.6, 127.0], so n =
 * kf - SHIFT is in [-126, 127] and 2^n comes from kf's bits. */
LLVMValueRef mj_emit_expf_band(mj_emit *e, LLVMValueRef x) {
    LLVMTypeRef t = LLVMTypeOf(x);
    LLVMBuilderRef b = e->b;
    LLVMValueRef kf, u = vm_expf_poly(e, x, &kf);
    LLVMValueRef kb = LLVMBuildBitCast(b, kf, int_like(e, t), "");
    LLVMValueRef p2 = LLVMBuildShl(b, LLVMBuildAdd(b, kb, ki(e, t, 127u - MJ_EXPF_SHIFT_BITS), ""), ki(e, t, 23), "");
    return LLVMBuildFMul(b, u, LLVMBuildBitCast(b, p2, t, ""), "");
}

/* vmath.c's mj_geluf */
LLVMValueRef mj_emit_geluf(mj_emit *e, LLVMValueRef x) {
    static const float G[MJ_GELU_NG] = MJ_GELU_G, E[MJ_GELU_NE] = MJ_GELU_E;
    LLVMTypeRef t = LLVMTypeOf(x), it = int_like(e, t);
    LLVMBuilderRef b = e->b;
    LLVMValueRef xb = LLVMBuildBitCast(b, x, it, "");
    LLVMValueRef a = LLVMBuildBitCast(b, LLVMBuildAnd(b, xb, ki(e, t, 0x7fffffffu), ""), t, "");
    LLVMValueRef q = vm_k(e, t, G[MJ_GELU_NG - 1]);
    for (int i = MJ_GELU_NG - 2; i >= 0; i--) q = vm_fma(e, q, a, vm_k(e, t, G[i]));
    LLVMValueRef shift = vm_k(e, t, MJ_EXPF_SHIFT);
    LLVMValueRef kf = LLVMBuildFAdd(b, q, shift, "");
    LLVMValueRef f = LLVMBuildFSub(b, LLVMBuildFSub(b, kf, shift, ""), q, "");
    LLVMValueRef p = vm_k(e, t, E[MJ_GELU_NE - 1]);
    for (int i = MJ_GELU_NE - 2; i >= 0; i--) p = vm_fma(e, p, f, vm_k(e, t, E[i]));
    LLVMValueRef kb = LLVMBuildBitCast(b, kf, it, "");
    LLVMValueRef p2 = LLVMBuildShl(b, LLVMBuildSub(b, ki(e, t, 127u + MJ_EXPF_SHIFT_BITS), kb, ""), ki(e, t, 23), "");
    LLVMValueRef h = LLVMBuildFMul(b, p, LLVMBuildBitCast(b, p2, t, ""), "");
    h = vm_sel(e, LLVMRealOGE, a, vm_k(e, t, MJ_GELU_T), vm_k(e, t, 0.0f), h);
    LLVMValueRef neg = LLVMBuildICmp(b, LLVMIntSLT, xb, LLVMConstNull(it), "");
    LLVMValueRef phi = LLVMBuildSelect(b, neg, h, LLVMBuildFSub(b, vm_k(e, t, 1.0f), h, ""), "");
    return vm_sel(e, LLVMRealUNO, x, x, x, LLVMBuildFMul(b, x, phi, ""));
}

/* vmath.c's mj_tanhf */
LLVMValueRef mj_emit_tanhf(mj_emit *e, LLVMValueRef x) {
    static const float T[MJ_TANH_NT] = MJ_TANH_T;
    LLVMTypeRef t = LLVMTypeOf(x), it = int_like(e, t);
    LLVMBuilderRef b = e->b;
    LLVMValueRef xb = LLVMBuildBitCast(b, x, it, "");
    LLVMValueRef a = LLVMBuildBitCast(b, LLVMBuildAnd(b, xb, ki(e, t, 0x7fffffffu), ""), t, "");
    LLVMValueRef z = LLVMBuildFMul(b, a, a, "");
    LLVMValueRef p = vm_k(e, t, T[MJ_TANH_NT - 1]);
    for (int i = MJ_TANH_NT - 2; i >= 0; i--) p = vm_fma(e, p, z, vm_k(e, t, T[i]));
    LLVMValueRef small = vm_fma(e, LLVMBuildFMul(b, a, z, ""), p, a);
    LLVMValueRef ex = mj_emit_expf(e, LLVMBuildFAdd(b, a, a, ""));
    LLVMValueRef big = LLVMBuildFSub(
        b, vm_k(e, t, 1.0f), LLVMBuildFDiv(b, vm_k(e, t, 2.0f), LLVMBuildFAdd(b, ex, vm_k(e, t, 1.0f), ""), ""), "");
    LLVMValueRef th = vm_sel(e, LLVMRealOLT, a, vm_k(e, t, MJ_TANH_SMALL), small, big);
    LLVMValueRef sign = LLVMBuildAnd(b, xb, ki(e, t, 0x80000000u), "");
    LLVMValueRef r = LLVMBuildBitCast(b, LLVMBuildOr(b, LLVMBuildBitCast(b, th, it, ""), sign, ""), t, "");
    return vm_sel(e, LLVMRealUNO, x, x, x, r);
}

/* mj_act_apply (src/core/ops.c), operation for operation, on a float or a
 * vector of floats. */
LLVMValueRef mj_emit_act(mj_emit *e, mj_act act, LLVMValueRef x) {
    LLVMTypeRef t = LLVMTypeOf(x);
#define K(v) mj_emit_kf(e, t, (v))
    switch (act) {
    case MJ_ACT_NONE: return x;
    case MJ_ACT_RELU: /* x < 0.0f ? 0.0f : x */
        return LLVMBuildSelect(e->b, LLVMBuildFCmp(e->b, LLVMRealOLT, x, K(0.0f), ""), K(0.0f), x, "");
    case MJ_ACT_GELU: return mj_emit_geluf(e, x); /* mj_geluf */
    case MJ_ACT_GELU_TANH: {
        /* 0.5f * x * (1.0f + mj_tanhf(0.79788456080286535588f * (x + 0.044715f * x * x * x))) */
        LLVMValueRef cube = fmul(e, fmul(e, fmul(e, K(0.044715f), x), x), x);
        LLVMValueRef inner = fmul(e, K(0.79788456080286535588f), fadd(e, x, cube));
        return fmul(e, fmul(e, K(0.5f), x), fadd(e, K(1.0f), mj_emit_tanhf(e, inner)));
    }
    case MJ_ACT_SIGMOID: /* 1.0f / (1.0f + mj_expf(-x)) */
        return fdiv(e, K(1.0f), fadd(e, K(1.0f), mj_emit_expf(e, fpflags(e, LLVMBuildFNeg(e->b, x, "")))));
    case MJ_ACT_TANH: return mj_emit_tanhf(e, x); /* mj_tanhf */
    case MJ_ACT_SILU: /* x / (1.0f + mj_expf(-x)) */
        return fdiv(e, x, fadd(e, K(1.0f), mj_emit_expf(e, fpflags(e, LLVMBuildFNeg(e->b, x, "")))));
    case MJ_ACT_COUNT: break;
    }
#undef K
    MJ_ASSERT(!"unknown activation");
}

/* ---- vectors of vw floats -------------------------------------------------- */

/* vw lanes of the scalar s, of its type (a float, or an integer for lane
 * indices and masks) */
LLVMValueRef mj_emit_splat(mj_emit *e, LLVMValueRef s) {
    LLVMTypeRef t = LLVMVectorType(LLVMTypeOf(s), (unsigned)e->vw);
    LLVMValueRef v = LLVMBuildInsertElement(e->b, LLVMGetPoison(t), s, ci(e, 0), "");
    LLVMValueRef mask = LLVMConstNull(LLVMVectorType(e->i32, (unsigned)e->vw));
    return LLVMBuildShuffleVector(e->b, v, LLVMGetPoison(t), mask, "");
}

LLVMValueRef mj_emit_lane_mask(mj_emit *e, int lanes) {
    LLVMValueRef bits[64];
    LLVMTypeRef i1 = LLVMInt1TypeInContext(e->ctx);
    for (int l = 0; l < e->vw; l++) bits[l] = LLVMConstInt(i1, l < lanes, 0);
    return LLVMConstVector(bits, (unsigned)e->vw);
}

/* lanes floats from ptr (4-byte aligned) into a vector, zeros past them */
LLVMValueRef mj_emit_vload(mj_emit *e, LLVMValueRef ptr, int lanes) {
    if (lanes == e->vw) {
        LLVMValueRef v = LLVMBuildLoad2(e->b, e->vt, ptr, "");
        LLVMSetAlignment(v, 4);
        return v;
    }
    LLVMTypeRef tys[2] = {e->vt, e->ptr}, fty;
    LLVMValueRef fn = intrinsic(e, "llvm.masked.load", tys, 2, &fty);
    LLVMValueRef args[4] = {ptr, LLVMConstInt(e->i32, 4, 0), lane_mask(e, lanes), LLVMConstNull(e->vt)};
    return LLVMBuildCall2(e->b, fty, fn, args, 4, "");
}

void mj_emit_transpose_tile(mj_emit *e, LLVMValueRef *r) {
    int n = e->vw;
    for (int h = 1; h < n; h *= 2) {
        LLVMValueRef ma[16], mb[16];
        for (int c = 0; c < n; c++) {
            /* new[i][c]   = c&h ? r[i+h][c-h] : r[i][c]
             * new[i+h][c] = c&h ? r[i+h][c]   : r[i][c+h] */
            ma[c] = LLVMConstInt(e->i32, (unsigned long long)((c & h) ? n + c - h : c), 0);
            mb[c] = LLVMConstInt(e->i32, (unsigned long long)((c & h) ? n + c : c + h), 0);
        }
        LLVMValueRef MA = LLVMConstVector(ma, (unsigned)n), MB = LLVMConstVector(mb, (unsigned)n);
        for (int i = 0; i < n; i++) {
            if (i & h) continue;
            LLVMValueRef a = LLVMBuildShuffleVector(e->b, r[i], r[i + h], MA, "");
            LLVMValueRef b = LLVMBuildShuffleVector(e->b, r[i], r[i + h], MB, "");
            r[i] = a;
            r[i + h] = b;
        }
    }
}

void mj_emit_vstore(mj_emit *e, LLVMValueRef v, LLVMValueRef ptr, int lanes) {
    if (lanes == e->vw) {
        LLVMSetAlignment(LLVMBuildStore(e->b, v, ptr), 4);
        return;
    }
    LLVMTypeRef tys[2] = {e->vt, e->ptr}, fty;
    LLVMValueRef fn = intrinsic(e, "llvm.masked.store", tys, 2, &fty);
    LLVMValueRef args[4] = {v, ptr, LLVMConstInt(e->i32, 4, 0), lane_mask(e, lanes)};
    LLVMBuildCall2(e->b, fty, fn, args, 4, "");
}

/* A whole vector at base + idx floats; align in bytes. */
LLVMValueRef mj_emit_vld(mj_emit *e, LLVMValueRef base, LLVMValueRef idx, unsigned align) {
    LLVMValueRef v = LLVMBuildLoad2(e->b, e->vt, at(e, base, idx), "");
    LLVMSetAlignment(v, align);
    return v;
}
void mj_emit_vst(mj_emit *e, LLVMValueRef v, LLVMValueRef base, LLVMValueRef idx, unsigned align) {
    LLVMSetAlignment(LLVMBuildStore(e->b, v, at(e, base, idx)), align);
}

/* ---- column mode's threads (emit.h) ---------------------------------------- */

LLVMValueRef mj_emit_several_threads(mj_emit *e, const mj_emit_team *t) {
    return LLVMBuildICmp(e->b, LLVMIntSGT, t->nth, ci(e, 1), "");
}

void mj_emit_barrier(mj_emit *e, const mj_emit_team *t) {
    LLVMBasicBlockRef end = if_begin(e, mj_emit_several_threads(e, t));
    /* wait is the sync's first member (jit_internal.h); passing y and the
     * scratch tells LLVM the call may write them */
    LLVMValueRef fp = LLVMBuildLoad2(e->b, e->ptr, t->sync, "wait");
    LLVMTypeRef pt[3] = {e->ptr, e->ptr, e->ptr};
    LLVMValueRef args[3] = {t->sync, t->y_sync, t->scratch};
    LLVMBuildCall2(e->b, LLVMFunctionType(LLVMVoidTypeInContext(e->ctx), pt, 3, 0), fp, args, 3, "");
    if_end(e, end);
}

void mj_emit_share(mj_emit *e, const mj_emit_team *t, LLVMValueRef n, LLVMValueRef *lo, LLVMValueRef *count) {
    *lo = LLVMBuildSDiv(e->b, mul(e, n, t->tid), t->nth, "");
    LLVMValueRef hi = LLVMBuildSDiv(e->b, mul(e, n, add(e, t->tid, ci(e, 1))), t->nth, "");
    *count = LLVMBuildSub(e->b, hi, *lo, "");
}

mj_claim_loop mj_emit_claim_begin(mj_emit *e, const mj_emit_team *t, LLVMValueRef n, LLVMValueRef *item, bool solo) {
    mj_claim_loop l = {LLVMAppendBasicBlockInContext(e->ctx, e->fn, "claim"),
                       LLVMAppendBasicBlockInContext(e->ctx, e->fn, "claimed.end")};
    LLVMValueRef counter = NULL;
    if (solo) {
        counter = mj_emit_entry_alloca(e, e->i64);
        LLVMBuildStore(e->b, ci(e, 0), counter);
    }
    LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(e->ctx, e->fn, "claimed");
    LLVMBuildBr(e->b, l.header);
    LLVMPositionBuilderAtEnd(e->b, l.header);
    LLVMBasicBlockRef shared = l.header, own = NULL, join = NULL;
    if (solo) { /* one thread: count the items itself (sync may be NULL) */
        shared = LLVMAppendBasicBlockInContext(e->ctx, e->fn, "claim.shared");
        own = LLVMAppendBasicBlockInContext(e->ctx, e->fn, "claim.own");
        join = LLVMAppendBasicBlockInContext(e->ctx, e->fn, "claim.join");
        LLVMBuildCondBr(e->b, mj_emit_several_threads(e, t), shared, own);
        LLVMPositionBuilderAtEnd(e->b, shared);
    }
    /* claim is the sync's second member (jit_internal.h) */
    LLVMValueRef off = ci(e, (int64_t)sizeof(void *));
    LLVMValueRef slot = LLVMBuildGEP2(e->b, LLVMInt8TypeInContext(e->ctx), t->sync, &off, 1, "");
    LLVMValueRef fp = LLVMBuildLoad2(e->b, e->ptr, slot, "claim");
    LLVMTypeRef pt[2] = {e->ptr, e->i64};
    LLVMValueRef args[2] = {t->sync, ci(e, 1)};
    *item = LLVMBuildCall2(e->b, LLVMFunctionType(e->i64, pt, 2, 0), fp, args, 2, "item");
    if (solo) {
        LLVMValueRef claimed = *item;
        LLVMBuildBr(e->b, join);
        LLVMPositionBuilderAtEnd(e->b, own);
        LLVMValueRef mine = LLVMBuildLoad2(e->b, e->i64, counter, "");
        LLVMBuildStore(e->b, add(e, mine, ci(e, 1)), counter);
        LLVMBuildBr(e->b, join);
        LLVMPositionBuilderAtEnd(e->b, join);
        *item = LLVMBuildPhi(e->b, e->i64, "item");
        LLVMValueRef vals[2] = {claimed, mine};
        LLVMBasicBlockRef from[2] = {shared, own};
        LLVMAddIncoming(*item, vals, from, 2);
    }
    LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, *item, n, ""), body, l.exit);
    LLVMPositionBuilderAtEnd(e->b, body);
    return l;
}

void mj_emit_claim_end(mj_emit *e, const mj_claim_loop *l) {
    LLVMBuildBr(e->b, l->header);
    LLVMPositionBuilderAtEnd(e->b, l->exit);
}
