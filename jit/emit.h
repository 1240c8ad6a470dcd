/* The LLVM builder helpers that every lowering shares (jit/lower.c for
 * graph bodies, jit/sparse.c for mask-specialised linear layers): types,
 * constants, index arithmetic, loads and stores, float arithmetic with the
 * mode's flags, loops, ifs, libm calls, the activations (scalar and vector).
 *
 * The exact-mode contract, written once here and kept by every function:
 *   - float operations carry no fast-math flags in exact mode, so LLVM never
 *     contracts a*b+c into an FMA nor reassociates; an fmaf of eager's is
 *     llvm.fma (one rounding), never fmuladd. Fast mode sets contract,
 *     reassoc, nsz and arcp (not nnan/ninf: NaN and Inf keep their meaning);
 *   - exp, gelu and tanh are maskjit's own (src/core/vmath.h: mj_expf,
 *     mj_geluf, mj_tanhf), emitted as the same float operations on scalars
 *     or vectors (mj_emit_expf, ...); the libm functions (logf,
 *     ...) are the process's: exact calls are marked nobuiltin so LLVM
 *     neither folds them nor substitutes its own approximation; the
 *     activation formulas are mj_act_apply's (src/core/ops.c) operation for
 *     operation;
 *   - lanes whose value does not matter are poison (never undef).
 *
 * A lowering keeps its own state struct with an `mj_emit e` member; the short
 * forms below (ci(w, 3), fadd(w, a, b), loop_begin(w, n), ...) take a pointer
 * to that struct. */
#ifndef MJ_JIT_EMIT_H
#define MJ_JIT_EMIT_H

#include <stdbool.h>
#include <stdint.h>

#include <llvm-c/Core.h>

#include "maskjit/tensor.h"

typedef struct mj_emit {
    LLVMContextRef ctx;
    LLVMModuleRef m;
    LLVMBuilderRef b;
    LLVMValueRef fn; /* the function being filled: loops and ifs add blocks to it */
    LLVMTypeRef f32, i32, i64, ptr, unary_ty;
    LLVMTypeRef vt; /* <vw x float> */
    int vw;         /* the target's vector width in floats */
    bool fast;      /* fast numeric mode (see above) */
    bool loop_hints; /* loops say "no unroll, no vectorise" (hand-vectorised code) */
} mj_emit;

/* Types of the module's context; no builder and no function yet. */
void mj_emit_init(mj_emit *e, LLVMModuleRef m, bool fast, int vw, bool loop_hints);

/* for (iv = from; iv < to; iv += step) */
typedef struct mj_loop {
    LLVMBasicBlockRef header, exit;
    LLVMValueRef iv, step;
} mj_loop;

/* if (cond) { then } else { else }: fill then, mj_emit_else, fill else,
 * mj_emit_if_end(e, f.end). */
typedef struct mj_ifelse {
    LLVMBasicBlockRef els, end;
} mj_ifelse;

LLVMValueRef mj_emit_ci(mj_emit *e, int64_t v);
LLVMValueRef mj_emit_cf(mj_emit *e, float v);
LLVMValueRef mj_emit_mul(mj_emit *e, LLVMValueRef a, LLVMValueRef b);
LLVMValueRef mj_emit_add(mj_emit *e, LLVMValueRef a, LLVMValueRef b);
LLVMValueRef mj_emit_at(mj_emit *e, LLVMTypeRef t, LLVMValueRef base, LLVMValueRef idx);
LLVMValueRef mj_emit_load(mj_emit *e, LLVMTypeRef t, LLVMValueRef base, LLVMValueRef idx);
void mj_emit_store(mj_emit *e, LLVMValueRef v, LLVMValueRef base, LLVMValueRef idx);
LLVMValueRef mj_emit_fpflags(mj_emit *e, LLVMValueRef v);
LLVMValueRef mj_emit_fadd(mj_emit *e, LLVMValueRef a, LLVMValueRef b);
LLVMValueRef mj_emit_fsub(mj_emit *e, LLVMValueRef a, LLVMValueRef b);
LLVMValueRef mj_emit_fmul(mj_emit *e, LLVMValueRef a, LLVMValueRef b);
LLVMValueRef mj_emit_fdiv(mj_emit *e, LLVMValueRef a, LLVMValueRef b);
LLVMValueRef mj_emit_sel(mj_emit *e, LLVMRealPredicate p, LLVMValueRef a, LLVMValueRef b, LLVMValueRef t,
                         LLVMValueRef f);
LLVMValueRef mj_emit_muladd(mj_emit *e, LLVMValueRef acc, LLVMValueRef a, LLVMValueRef b);
LLVMValueRef mj_emit_intrinsic(mj_emit *e, const char *name, LLVMTypeRef *tys, size_t n, LLVMTypeRef *fty);
LLVMValueRef mj_emit_add_attr(mj_emit *e, LLVMValueRef fn, unsigned idx, const char *name);

/* A t-typed slot in the function's entry block (accumulators: LLVM promotes
 * them to registers). */
LLVMValueRef mj_emit_entry_alloca(mj_emit *e, LLVMTypeRef t);
mj_loop mj_emit_loop_begin(mj_emit *e, LLVMValueRef from, LLVMValueRef to, int64_t step);
void mj_emit_loop_end(mj_emit *e, mj_loop *l);
LLVMBasicBlockRef mj_emit_if_begin(mj_emit *e, LLVMValueRef cond); /* if (cond) { ...: the join block */
void mj_emit_if_end(mj_emit *e, LLVMBasicBlockRef end);
mj_ifelse mj_emit_ifelse_begin(mj_emit *e, LLVMValueRef cond);
void mj_emit_else(mj_emit *e, const mj_ifelse *f);

LLVMValueRef mj_emit_libm(mj_emit *e, const char *name, int arity); /* declared once per module */
LLVMValueRef mj_emit_call_libm(mj_emit *e, const char *name, LLVMValueRef x);
LLVMValueRef mj_emit_call_libm2(mj_emit *e, const char *name, LLVMValueRef x, LLVMValueRef y);
/* IEEE square root (scalar or vector), the bits of libm's sqrtf, inline */
LLVMValueRef mj_emit_sqrtf(mj_emit *e, LLVMValueRef x);
/* mj_expf / mj_geluf / mj_tanhf of src/core/vmath.c on a float or a vector of floats */
LLVMValueRef mj_emit_expf(mj_emit *e, LLVMValueRef x);
LLVMValueRef mj_emit_geluf(mj_emit *e, LLVMValueRef x);
LLVMValueRef mj_emit_tanhf(mj_emit *e, LLVMValueRef x);
/* mj_expf's bits for x in [MJ_EXPF_BAND_LO, MJ_EXPF_BAND_HI] only
 * (src/core/vmath.h); the caller checks the range */
LLVMValueRef mj_emit_expf_band(mj_emit *e, LLVMValueRef x);
LLVMValueRef mj_emit_kf(mj_emit *e, LLVMTypeRef t, float v); /* a float constant of type t (splatted) */
/* every activation is float operations: x is a float or a vector of them */
LLVMValueRef mj_emit_act(mj_emit *e, mj_act act, LLVMValueRef x);

LLVMValueRef mj_emit_splat(mj_emit *e, LLVMValueRef s);
LLVMValueRef mj_emit_lane_mask(mj_emit *e, int lanes);
LLVMValueRef mj_emit_vload(mj_emit *e, LLVMValueRef ptr, int lanes);
void mj_emit_vstore(mj_emit *e, LLVMValueRef v, LLVMValueRef ptr, int lanes);
LLVMValueRef mj_emit_vld(mj_emit *e, LLVMValueRef base, LLVMValueRef idx, unsigned align);
void mj_emit_vst(mj_emit *e, LLVMValueRef v, LLVMValueRef base, LLVMValueRef idx, unsigned align);
/* r[0..vw) as the rows of a vw x vw tile: transposed in registers, log2(vw)
 * stages of two-vector shuffles (stage h swaps the off-diagonal h x h
 * blocks of every 2h x 2h block). */
void mj_emit_transpose_tile(mj_emit *e, LLVMValueRef *r);

/* ---- column mode's threads ----------------------------------------------
 * A graph body is called by nth threads at once with tid 0..nth-1
 * (jit_internal.h: mj_lower_body); nth == 1 computes everything alone and
 * sync may be NULL. These emit the team's run-time tests, its barrier and
 * its shared work, for every lowering that splits an op between them. */
typedef struct mj_emit_team {
    LLVMValueRef tid, nth, sync; /* the body's arguments */
    LLVMValueRef y_sync, scratch; /* what the barrier passes (mj_emit_barrier) */
} mj_emit_team;

/* nth > 1 (an i1) */
LLVMValueRef mj_emit_several_threads(mj_emit *e, const mj_emit_team *t);
/* if (nth > 1) sync->wait(sync, y_sync, scratch): every thread's writes
 * before it are seen by every thread after it */
void mj_emit_barrier(mj_emit *e, const mj_emit_team *t);
/* Thread tid's share of n independent items: [*lo, *lo + *count) with
 * lo = n*tid/nth (one thread: all of them). */
void mj_emit_share(mj_emit *e, const mj_emit_team *t, LLVMValueRef n, LLVMValueRef *lo, LLVMValueRef *count);
/* Shared work: while ((*item = sync->claim(sync, 1)) < n) { body }.
 * mj_emit_claim_begin emits the claim and the test and leaves the builder
 * in the body; mj_emit_claim_end closes the loop. The threads take items
 * until none is left, so a thread the host slows down does fewer. The
 * counter starts at 0 at every call and after every barrier, so one op's
 * claims must be separated from the next's by a barrier. solo: with
 * nth == 1 the thread counts the items 0, 1, ... itself (else the caller
 * must not reach it then). */
typedef struct mj_claim_loop {
    LLVMBasicBlockRef header, exit;
} mj_claim_loop;
mj_claim_loop mj_emit_claim_begin(mj_emit *e, const mj_emit_team *t, LLVMValueRef n, LLVMValueRef *item, bool solo);
void mj_emit_claim_end(mj_emit *e, const mj_claim_loop *l);

/* ---- short forms, on a lowering's state `c` that has an `mj_emit e` ------ */
#ifndef MJ_EMIT_CTX
#define MJ_EMIT_CTX(c) (&(c)->e)
#endif
typedef mj_loop loop;
typedef mj_ifelse ifb;
#define ci(c, v) mj_emit_ci(MJ_EMIT_CTX(c), (v))
#define cf(c, v) mj_emit_cf(MJ_EMIT_CTX(c), (v))
/* Sizes are checked against MJ_MAX_NUMEL before the call: nsw, no wrap. */
#define mul(c, a, b) mj_emit_mul(MJ_EMIT_CTX(c), (a), (b))
#define add(c, a, b) mj_emit_add(MJ_EMIT_CTX(c), (a), (b))
/* float element idx of base; its value; v stored there */
#define at(c, base, idx) mj_emit_at(MJ_EMIT_CTX(c), MJ_EMIT_CTX(c)->f32, (base), (idx))
#define load(c, base, idx) mj_emit_load(MJ_EMIT_CTX(c), MJ_EMIT_CTX(c)->f32, (base), (idx))
#define store(c, v, base, idx) mj_emit_store(MJ_EMIT_CTX(c), (v), (base), (idx))
/* element idx of type t */
#define ld(c, t, base, idx) mj_emit_load(MJ_EMIT_CTX(c), (t), (base), (idx))
#define fpflags(c, v) mj_emit_fpflags(MJ_EMIT_CTX(c), (v))
#define fadd(c, a, b) mj_emit_fadd(MJ_EMIT_CTX(c), (a), (b))
#define fsub(c, a, b) mj_emit_fsub(MJ_EMIT_CTX(c), (a), (b))
#define fmul(c, a, b) mj_emit_fmul(MJ_EMIT_CTX(c), (a), (b))
#define fdiv(c, a, b) mj_emit_fdiv(MJ_EMIT_CTX(c), (a), (b))
#define sel(c, p, a, b, t, f) mj_emit_sel(MJ_EMIT_CTX(c), (p), (a), (b), (t), (f))
#define vmuladd(c, acc, a, b) mj_emit_muladd(MJ_EMIT_CTX(c), (acc), (a), (b))
#define intrinsic(c, name, tys, n, fty) mj_emit_intrinsic(MJ_EMIT_CTX(c), (name), (tys), (n), (fty))
#define add_attr(c, fn, idx, name) mj_emit_add_attr(MJ_EMIT_CTX(c), (fn), (idx), (name))
/* for (iv = 0; iv < n; iv++) */
#define entry_alloca(c) mj_emit_entry_alloca(MJ_EMIT_CTX(c), MJ_EMIT_CTX(c)->f32)
#define loop_begin(c, n) mj_emit_loop_begin(MJ_EMIT_CTX(c), mj_emit_ci(MJ_EMIT_CTX(c), 0), (n), 1)
#define loop_range(c, from, to, step) mj_emit_loop_begin(MJ_EMIT_CTX(c), (from), (to), (step))
#define loop_end(c, l) mj_emit_loop_end(MJ_EMIT_CTX(c), (l))
#define if_begin(c, cond) mj_emit_if_begin(MJ_EMIT_CTX(c), (cond))
#define if_end(c, end) mj_emit_if_end(MJ_EMIT_CTX(c), (end))
#define ifelse_begin(c, cond) mj_emit_ifelse_begin(MJ_EMIT_CTX(c), (cond))
#define if_else(c, f) mj_emit_else(MJ_EMIT_CTX(c), (f))
#define libm(c, name, arity) mj_emit_libm(MJ_EMIT_CTX(c), (name), (arity))
#define call_libm(c, name, x) mj_emit_call_libm(MJ_EMIT_CTX(c), (name), (x))
#define emit_expf(c, x) mj_emit_expf(MJ_EMIT_CTX(c), (x))
#define vsqrt(c, x) mj_emit_sqrtf(MJ_EMIT_CTX(c), (x))
#define call_libm2(c, name, x, y) mj_emit_call_libm2(MJ_EMIT_CTX(c), (name), (x), (y))
#define emit_act(c, act, x) mj_emit_act(MJ_EMIT_CTX(c), (act), (x))
#define vsplat(c, s) mj_emit_splat(MJ_EMIT_CTX(c), (s))
#define lane_mask(c, lanes) mj_emit_lane_mask(MJ_EMIT_CTX(c), (lanes))
#define vload(c, ptr, lanes) mj_emit_vload(MJ_EMIT_CTX(c), (ptr), (lanes))
#define vstore(c, v, ptr, lanes) mj_emit_vstore(MJ_EMIT_CTX(c), (v), (ptr), (lanes))
#define vld(c, base, idx, align) mj_emit_vld(MJ_EMIT_CTX(c), (base), (idx), (align))
#define vst(c, v, base, idx, align) mj_emit_vst(MJ_EMIT_CTX(c), (v), (base), (idx), (align))

#endif
