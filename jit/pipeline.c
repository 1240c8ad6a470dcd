/* The LLVM pipeline of a lowered module, per function.
 *
 * A module with loops (matmul, softmax, layer norm, ...) needs default<O2>
 * for the loop and SLP vectorisers, but its explicit vector kernels (the
 * frozen sparse layers of jit/sparse.c, attribute MJ_ATTR_EXPLICIT) need
 * only clean-up: O2 on them cost a frozen BERT layer's compile ~60% of its
 * pass time and left their code as fast. The new pass manager of LLVM 19's
 * C API runs a pipeline on a whole module, so each set runs its pipeline
 * while the other set is marked optnone (which every pass skips), and the
 * marks are removed afterwards. */
#include <string.h>

#include <llvm-c/Transforms/PassBuilder.h>

#include "jit_internal.h"

#define CLEANUP_PIPELINE "always-inline,function(sroa,early-cse,instcombine<no-verify-fixpoint>,simplifycfg)"

const char *mj_jit_pipeline(LLVMModuleRef m) {
    /* Explicit vector kernels only: they need clean-up, not loop
     * optimisation (O2/O3 cost 3-10x more here and change nothing). */
    if (LLVMGetModuleFlag(m, MJ_FLAG_EXPLICIT, strlen(MJ_FLAG_EXPLICIT))) return CLEANUP_PIPELINE;
    return "default<O2>"; /* scalar loops for the loop and SLP vectorisers */
}

void mj_mark_explicit(LLVMValueRef fn) {
    LLVMContextRef ctx = LLVMGetTypeContext(LLVMTypeOf(fn));
    LLVMAddAttributeAtIndex(fn, LLVMAttributeFunctionIndex,
                            LLVMCreateStringAttribute(ctx, MJ_ATTR_EXPLICIT, (unsigned)strlen(MJ_ATTR_EXPLICIT), "", 0));
}

static bool is_explicit(LLVMValueRef fn) {
    return LLVMGetStringAttributeAtIndex(fn, LLVMAttributeFunctionIndex, MJ_ATTR_EXPLICIT,
                                         (unsigned)strlen(MJ_ATTR_EXPLICIT)) != NULL;
}

static unsigned kind(const char *name) { return LLVMGetEnumAttributeKindForName(name, strlen(name)); }

#define ADDED_NOINLINE "maskjit.added-noinline"

/* Marks (on) or unmarks (off) optnone on the defined functions whose
 * explicitness is `which`. optnone needs noinline; a function that had
 * noinline before keeps it (the function itself remembers which one got it:
 * passes add and remove declarations, so no list of functions stays valid). */
static void set_optnone(LLVMModuleRef m, bool which, bool on) {
    LLVMContextRef ctx = LLVMGetModuleContext(m);
    unsigned optnone = kind("optnone"), noinline = kind("noinline"), added = (unsigned)strlen(ADDED_NOINLINE);
    const unsigned fi = (unsigned)LLVMAttributeFunctionIndex;
    for (LLVMValueRef f = LLVMGetFirstFunction(m); f; f = LLVMGetNextFunction(f)) {
        if (LLVMIsDeclaration(f) || is_explicit(f) != which) continue;
        if (on) {
            LLVMAddAttributeAtIndex(f, fi, LLVMCreateEnumAttribute(ctx, optnone, 0));
            if (!LLVMGetEnumAttributeAtIndex(f, fi, noinline)) {
                LLVMAddAttributeAtIndex(f, fi, LLVMCreateEnumAttribute(ctx, noinline, 0));
                LLVMAddAttributeAtIndex(f, fi, LLVMCreateStringAttribute(ctx, ADDED_NOINLINE, added, "", 0));
            }
        } else {
            LLVMRemoveEnumAttributeAtIndex(f, fi, optnone);
            if (LLVMGetStringAttributeAtIndex(f, fi, ADDED_NOINLINE, added)) {
                LLVMRemoveEnumAttributeAtIndex(f, fi, noinline);
                LLVMRemoveStringAttributeAtIndex(f, fi, ADDED_NOINLINE, added);
            }
        }
    }
}

static mj_status run(LLVMModuleRef m, const char *pipeline, LLVMTargetMachineRef tm, const char *what) {
    LLVMPassBuilderOptionsRef po = LLVMCreatePassBuilderOptions();
    LLVMErrorRef err = LLVMRunPasses(m, pipeline, tm, po);
    LLVMDisposePassBuilderOptions(po);
    return err ? mj_jit_llvm_error(err, what) : MJ_OK;
}

mj_status mj_jit_optimize(LLVMModuleRef m, LLVMTargetMachineRef tm, const char *passes, const char *what) {
    if (passes) return run(m, passes, tm, what);
    const char *pipeline = mj_jit_pipeline(m);
    bool any_explicit = false;
    for (LLVMValueRef f = LLVMGetFirstFunction(m); f && !any_explicit; f = LLVMGetNextFunction(f))
        any_explicit = !LLVMIsDeclaration(f) && is_explicit(f);
    if (!any_explicit || strcmp(pipeline, CLEANUP_PIPELINE) == 0) return run(m, pipeline, tm, what);
    /* the explicit kernels first (clean-up), then the rest (O2) */
    set_optnone(m, false, true);
    mj_status s = run(m, CLEANUP_PIPELINE, tm, what);
    set_optnone(m, false, false);
    if (s == MJ_OK) {
        set_optnone(m, true, true);
        s = run(m, pipeline, tm, what);
        set_optnone(m, true, false);
    }
    return s;
}
