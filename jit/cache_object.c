/* The object-file compile path the compile cache needs: codegen of a
 * lowered module to an object, and linking an
 * object into a per-graph JITDylib. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llvm-c/Error.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include "cache.h"
#include "src/core/internal.h"
#include "jit_internal.h"

/* ---- object code -------------------------------------------------------------- */

mj_status mj_cache_codegen(mj_jit *jit, LLVMOrcThreadSafeContextRef tsc, LLVMModuleRef m, LLVMMemoryBufferRef *obj,
                           mj_compile_stats *stats) {
    *obj = NULL;
    mj_status s = MJ_OK;
    char *msg = NULL;
    LLVMTargetMachineRef tm = NULL;
    /* Our own machine (per compile, so no lock): PIC and the small code
     * model, as LLJIT configures its own for its JITLink linker. */
    if ((s = mj_jit_target_machine(jit, LLVMRelocPIC, LLVMCodeModelSmall, &tm)) != MJ_OK) goto out;
    mj_jit_set_module_target(m, tm);

    double t0 = mj_now_seconds();
    s = mj_jit_optimize(m, tm, jit->passes, "optimising");
    stats->optimize_ms = mj_ms_since(t0);
    if (s != MJ_OK) goto out;
    t0 = mj_now_seconds();
    if (LLVMTargetMachineEmitToMemoryBuffer(tm, m, LLVMObjectFile, &msg, obj)) {
        s = mj_fail(MJ_ERR_BACKEND, "emitting the object file: %s", msg ? msg : "");
        LLVMDisposeMessage(msg);
        *obj = NULL;
    }
    stats->codegen_ms = mj_ms_since(t0);
out:
    if (tm) LLVMDisposeTargetMachine(tm);
    LLVMDisposeModule(m);
    LLVMOrcDisposeThreadSafeContext(tsc);
    return s;
}

typedef struct lookup_result {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    LLVMErrorRef err;
    uint64_t addr;
} lookup_result;

static void lookup_done(LLVMErrorRef err, LLVMOrcCSymbolMapPairs result, size_t n, void *ctx) {
    lookup_result *r = ctx;
    pthread_mutex_lock(&r->mu);
    r->err = err;
    if (!err && n >= 1) r->addr = result[0].Sym.Address;
    r->done = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* fname in jd alone (LLJITLookup searches the main JITDylib only). Weak:
 * a missing symbol is no error, the address stays 0. */
static LLVMErrorRef lookup_in(mj_jit *jit, LLVMOrcJITDylibRef jd, const char *fname, bool weak, uint64_t *addr) {
    lookup_result r = {.done = false};
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);
    LLVMOrcCJITDylibSearchOrderElement order[2] = {{jd, LLVMOrcJITDylibLookupFlagsMatchExportedSymbolsOnly},
                                                   {NULL, 0}};
    LLVMOrcCLookupSetElement syms[2] = {
        {LLVMOrcLLJITMangleAndIntern(jit->lljit, fname),
         weak ? LLVMOrcSymbolLookupFlagsWeaklyReferencedSymbol : LLVMOrcSymbolLookupFlagsRequiredSymbol},
        {NULL, 0}};
    LLVMOrcExecutionSessionLookup(LLVMOrcLLJITGetExecutionSession(jit->lljit), LLVMOrcLookupKindStatic, order, 1,
                                  syms, 1, lookup_done, &r);
    pthread_mutex_lock(&r.mu);
    while (!r.done) pthread_cond_wait(&r.cv, &r.mu);
    pthread_mutex_unlock(&r.mu);
    pthread_cond_destroy(&r.cv);
    pthread_mutex_destroy(&r.mu);
    *addr = r.addr;
    return r.err;
}

/* A JITDylib with no fname in it, jit->mu held. The C API cannot remove a
 * JITDylib, so they are reused: "mj_graph_<i>" is free once the compiled
 * graph that used it is freed (its resource tracker removed). Their number
 * is the most compiled graphs alive at once. */
static mj_status free_dylib(mj_jit *jit, const char *fname, LLVMOrcJITDylibRef *out) {
    LLVMOrcExecutionSessionRef es = LLVMOrcLLJITGetExecutionSession(jit->lljit);
    for (unsigned i = 0;; i++) {
        char name[48];
        snprintf(name, sizeof name, "mj_graph_%u", i);
        LLVMOrcJITDylibRef jd = LLVMOrcExecutionSessionGetJITDylibByName(es, name);
        if (jd) {
            uint64_t a = 0;
            LLVMErrorRef err = lookup_in(jit, jd, fname, true, &a);
            if (err) return mj_jit_llvm_error(err, "looking for a free JITDylib");
            if (a) continue; /* in use */
            *out = jd;
            return MJ_OK;
        }
        jd = LLVMOrcExecutionSessionCreateBareJITDylib(es, name);
        /* logf, expm1f, ... (and memset/memcpy) resolve to the process's libm
         * and libc, the ones the eager kernels call */
        LLVMOrcDefinitionGeneratorRef gen;
        LLVMErrorRef err = LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(
            &gen, LLVMOrcLLJITGetGlobalPrefix(jit->lljit), NULL, NULL);
        if (err) return mj_jit_llvm_error(err, "creating the process symbol generator");
        LLVMOrcJITDylibAddGenerator(jd, gen);
        *out = jd;
        return MJ_OK;
    }
}

mj_status mj_cache_link(mj_jit *jit, LLVMMemoryBufferRef obj, const char *fname, LLVMOrcResourceTrackerRef *rt_out,
                        uint64_t *addr) {
    *rt_out = NULL;
    *addr = 0;
    pthread_mutex_lock(&jit->mu); /* pick and fill a free JITDylib as one step */
    LLVMOrcJITDylibRef jd = NULL;
    LLVMOrcResourceTrackerRef rt = NULL;
    mj_status s = free_dylib(jit, fname, &jd);
    if (s != MJ_OK) {
        LLVMDisposeMemoryBuffer(obj);
        goto out;
    }
    rt = LLVMOrcJITDylibCreateResourceTracker(jd);
    LLVMErrorRef err = LLVMOrcLLJITAddObjectFileWithRT(jit->lljit, rt, obj); /* takes obj */
    if (err) {
        s = mj_jit_llvm_error(err, "adding the object file to the JIT");
        goto out;
    }
    if ((err = lookup_in(jit, jd, fname, false, addr))) s = mj_jit_llvm_error(err, "linking the object file");
    else if (!*addr) s = mj_fail(MJ_ERR_BACKEND, "linking the object file: %s has no address", fname);
out:
    if (s != MJ_OK && rt) {
        mj_rt_discard(rt);
        rt = NULL;
    }
    pthread_mutex_unlock(&jit->mu);
    *rt_out = rt;
    return s;
}
