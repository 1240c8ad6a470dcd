/* The module of an ahead-of-time object (body, wrapper, CPU check, shape
 * tables) and its emission as an object file for the target. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/Core.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include "src/core/internal.h"
#include "aot_internal.h"

/* ---- the module: body, wrapper, CPU check, shape tables ---------------------- */

static void set_attr(emit *e, LLVMValueRef fn, const char *k, const char *v) {
    LLVMAddAttributeAtIndex(fn, LLVMAttributeFunctionIndex,
                            LLVMCreateStringAttribute(e->ctx, k, (unsigned)strlen(k), v, (unsigned)strlen(v)));
}

/* Baseline code for a function, whatever the target machine's CPU. */
static void baseline(emit *e, LLVMValueRef fn) {
    if (!e->t->x86_64) return;
    set_attr(e, fn, "target-cpu", "x86-64");
    set_attr(e, fn, "target-features", "+cmov,+cx8,+fxsr,+mmx,+sse,+sse2,+x87");
    set_attr(e, fn, "tune-cpu", "generic");
}

LLVMValueRef mj_aot_add_fn(emit *e, const char *suffix, LLVMTypeRef ret, LLVMTypeRef *params, unsigned n,
                           bool exported) {
    char nm[160];
    snprintf(nm, sizeof nm, "%s%s", e->name, suffix);
    LLVMValueRef fn = LLVMAddFunction(e->m, nm, LLVMFunctionType(ret, params, n, 0));
    LLVMSetLinkage(fn, exported ? LLVMExternalLinkage : LLVMInternalLinkage);
    unsigned nounwind = LLVMGetEnumAttributeKindForName("nounwind", 8);
    LLVMAddAttributeAtIndex(fn, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(e->ctx, nounwind, 0));
    baseline(e, fn);
    return fn;
}

/* Builds the module and emits the object file into *obj. */
mj_status mj_aot_build_object(const aot *a, const target *t, const char *need, LLVMMemoryBufferRef *obj) {
    *obj = NULL;
    mj_status s = MJ_OK;
    LLVMTargetRef tgt;
    char *msg = NULL;
    if (LLVMGetTargetFromTriple(t->triple, &tgt, &msg)) {
        s = mj_fail(MJ_ERR_BACKEND, "aot: no LLVM target for %s: %s", t->triple, msg ? msg : "");
        LLVMDisposeMessage(msg);
        return s;
    }
    LLVMTargetMachineRef tm = LLVMCreateTargetMachine(tgt, t->triple, t->cpu, t->features, LLVMCodeGenLevelAggressive,
                                                      LLVMRelocPIC, LLVMCodeModelSmall);
    if (!tm) return mj_fail(MJ_ERR_BACKEND, "aot: cannot create a target machine for %s (%s)", t->triple, t->cpu);
    emit e = {.a = a, .t = t};
    snprintf(e.name, sizeof e.name, "%s", a->o->name);
    e.ctx = LLVMContextCreate();
    e.m = LLVMModuleCreateWithNameInContext(e.name, e.ctx);
    LLVMSetSourceFileName(e.m, e.name, strlen(e.name)); /* no path in the object */
    e.i1 = LLVMInt1TypeInContext(e.ctx);
    e.i32 = LLVMInt32TypeInContext(e.ctx);
    e.i64 = LLVMInt64TypeInContext(e.ctx);
    e.ptr = LLVMPointerTypeInContext(e.ctx, 0);
    mj_jit_set_module_target(e.m, tm);

    char fname[128];
    snprintf(fname, sizeof fname, "%s.body", e.name);
    mj_lower_options lo = {.numeric = a->o->numeric, .fname = fname, .fault = MJ_OP_COUNT};
    if (!a->live) {
        lo.baked = a->leaf_data;
        lo.baked_numel = a->numel;
    }
    if ((s = mj_lower_body(e.ctx, e.m, &a->plan, &lo)) != MJ_OK) goto out;
    if ((s = mj_jit_optimize(e.m, tm, NULL, "aot: optimising")) != MJ_OK) goto out;
    /* Only NAME_* is exported: what the lowering defined becomes internal,
     * after the JIT's pipeline (which would drop an unused internal body). */
    for (LLVMValueRef f = LLVMGetFirstFunction(e.m); f; f = LLVMGetNextFunction(f))
        if (!LLVMIsDeclaration(f)) LLVMSetLinkage(f, LLVMInternalLinkage);
    for (LLVMValueRef gv = LLVMGetFirstGlobal(e.m); gv; gv = LLVMGetNextGlobal(gv))
        if (LLVMGetLinkage(gv) == LLVMExternalLinkage && !LLVMIsDeclaration(gv)) LLVMSetLinkage(gv, LLVMInternalLinkage);
    /* The wrapper comes after the pipeline, so the body is the JIT's code
     * and is never inlined into the baseline wrapper. */
    e.b = LLVMCreateBuilderInContext(e.ctx);
    LLVMValueRef body = LLVMGetNamedFunction(e.m, fname);
    MJ_ASSERT(body);
    LLVMValueRef check = mj_aot_emit_cpu_check(&e);
    LLVMValueRef consts = NULL;
    if (a->live && a->plan.n_leaves > 0) {
        /* the consts' data (plain or packed, as the body reads them) */
        int32_t nl = a->plan.n_leaves;
        LLVMValueRef *ptrs = mj_alloc_array((size_t)nl, sizeof *ptrs);
        if (!ptrs) {
            LLVMDisposeBuilder(e.b);
            s = MJ_ERR_NOMEM;
            goto out;
        }
        for (int32_t l = 0; l < nl; l++) {
            char cn[160];
            snprintf(cn, sizeof cn, "%s.const%d", e.name, (int)l);
            ptrs[l] = a->leaf_param[l] >= 0 ? LLVMConstPointerNull(e.ptr)
                                             : mj_llvm_const_bytes(e.m, e.ctx, cn, a->leaf_data[l],
                                                                   (size_t)a->numel[l] * sizeof(float));
        }
        LLVMValueRef init = LLVMConstArray2(e.ptr, ptrs, (uint64_t)nl);
        free(ptrs);
        char cn[160];
        snprintf(cn, sizeof cn, "%s.consts", e.name);
        consts = LLVMAddGlobal(e.m, LLVMTypeOf(init), cn);
        LLVMSetInitializer(consts, init);
        LLVMSetGlobalConstant(consts, 1);
        LLVMSetLinkage(consts, LLVMInternalLinkage);
    }
    LLVMValueRef core = mj_aot_emit_core(&e, body, check, consts);
    if (a->live) mj_aot_emit_live_api(&e, core);
    mj_aot_emit_strerror(&e, need);
    mj_aot_emit_shape_tables(&e, "input", a->plan.in_nodes, a->plan.n_in);
    mj_aot_emit_shape_tables(&e, "output", a->plan.out_nodes, a->plan.n_out);
    LLVMDisposeBuilder(e.b);
    if (LLVMVerifyModule(e.m, LLVMReturnStatusAction, &msg)) {
        s = mj_fail(MJ_ERR_BACKEND, "aot: the generated LLVM IR is invalid: %s", msg ? msg : "");
        LLVMDisposeMessage(msg);
        goto out;
    }
    LLVMDisposeMessage(msg);
    msg = NULL;
    if (LLVMTargetMachineEmitToMemoryBuffer(tm, e.m, LLVMObjectFile, &msg, obj)) {
        s = mj_fail(MJ_ERR_BACKEND, "aot: emitting the object file: %s", msg ? msg : "");
        LLVMDisposeMessage(msg);
        *obj = NULL;
    }
out:
    LLVMDisposeModule(e.m);
    LLVMContextDispose(e.ctx);
    LLVMDisposeTargetMachine(tm);
    return s;
}
