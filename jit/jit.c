/* The JIT instance: one ORC LLJIT for the host CPU, shared by every graph
 * compiled with it. Each compiled graph lives under its own ResourceTracker
 * so freeing it frees its code. */
#include <stdlib.h>
#include <string.h>

#include <llvm-c/Error.h>
#include <llvm-c/ExecutionEngine.h>
#include <llvm-c/OrcEE.h>
#include <llvm-c/BitReader.h>
#include <llvm-c/BitWriter.h>
#include <llvm-c/Target.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include "jit_internal.h"

static pthread_once_t llvm_once = PTHREAD_ONCE_INIT;
static bool llvm_init_ok;
/* LLVMShutdown cannot be undone: later JITs are refused, not crashed. */
static _Atomic bool llvm_down;

/* LLVM's target registry is global: initialise it once per process. */
static void llvm_init(void) {
    llvm_init_ok = LLVMInitializeNativeTarget() == 0 && LLVMInitializeNativeAsmPrinter() == 0;
}

mj_status mj_jit_llvm_error(LLVMErrorRef err, const char *what) {
    char *msg = LLVMGetErrorMessage(err); /* consumes err */
    mj_status s = mj_fail(MJ_ERR_BACKEND, "%s: %s", what, msg ? msg : "(no message)");
    LLVMDisposeErrorMessage(msg);
    return s;
}

/* A host target machine: CPU and features as detected (never hard-coded:
 * under valgrind the host has no AVX-512), O3 code generation, JIT code model. */
static mj_status host_tm(const mj_jit *jit, LLVMTargetMachineRef *out) {
    LLVMTargetRef target;
    char *err = NULL;
    if (LLVMGetTargetFromTriple(jit->triple, &target, &err)) {
        mj_status s = mj_fail(MJ_ERR_BACKEND, "no LLVM target for %s: %s", jit->triple, err ? err : "");
        LLVMDisposeMessage(err);
        return s;
    }
    LLVMTargetMachineRef tm = LLVMCreateTargetMachine(target, jit->triple, jit->cpu, jit->features,
                                                      LLVMCodeGenLevelAggressive, LLVMRelocDefault,
                                                      LLVMCodeModelJITDefault);
    if (!tm) return mj_fail(MJ_ERR_BACKEND, "cannot create a target machine for %s (%s)", jit->triple, jit->cpu);
    *out = tm;
    return MJ_OK;
}

/* MASKJIT_PERF=1: link JIT code through RTDyld with LLVM's perf listener,
 * which writes a jitdump (~/.debug/jit or $JITDUMPDIR) that `perf inject
 * --jit` turns into symbols and annotated code: tools/perf_jit.sh. */
static LLVMOrcObjectLayerRef perf_object_layer(void *ctx, LLVMOrcExecutionSessionRef es,
                                               const char *triple) {
    (void)ctx;
    (void)triple;
    LLVMOrcObjectLayerRef layer = LLVMOrcCreateRTDyldObjectLinkingLayerWithSectionMemoryManager(es);
    LLVMJITEventListenerRef perf = LLVMCreatePerfJITEventListener(); /* LLVM's singleton */
    if (layer && perf) LLVMOrcRTDyldObjectLinkingLayerRegisterJITEventListener(layer, perf);
    return layer;
}

void mj_compile_options_init(mj_compile_options *o) {
    if (!o) return;
    memset(o, 0, sizeof *o);
    o->numeric = MJ_NUMERIC_EXACT;
    o->frozen = false;
    o->threads = 0; /* every core; a call smaller than PAR_MIN_FLOPS stays on one */
    o->use_cache = true;
    o->cache_dir = NULL;
}

mj_status mj_jit_new(mj_jit **out) {
    if (!out) return mj_fail(MJ_ERR_INVALID, "mj_jit_new: output pointer is NULL");
    if (llvm_down) return mj_fail(MJ_ERR_STATE, "mj_jit_new: LLVM was shut down (mj_llvm_shutdown)");
    pthread_once(&llvm_once, llvm_init);
    if (!llvm_init_ok) return mj_fail(MJ_ERR_BACKEND, "LLVM has no native target for this host");
    mj_jit *jit = mj_alloc(sizeof *jit);
    if (!jit) return MJ_ERR_NOMEM;
    /* Test hook: MASKJIT_JIT_FEATURES replaces the host's feature string
     * (e.g. "-avx512f" variants to emit AVX2 code on an AVX-512 host, as
     * under valgrind); the CPU becomes a generic one so that its own
     * features do not come back. */
    const char *forced = getenv("MASKJIT_JIT_FEATURES");
    if (forced && *forced) {
        jit->cpu = LLVMCreateMessage(strstr(forced, "+avx512f") ? "skylake-avx512"
                                     : strstr(forced, "+avx2")  ? "haswell"
                                                                : "x86-64");
        jit->features = LLVMCreateMessage(forced);
    } else {
        jit->cpu = LLVMGetHostCPUName();
        jit->features = LLVMGetHostCPUFeatures();
    }
    jit->triple = LLVMGetDefaultTargetTriple();
    mj_status s;
    LLVMTargetMachineRef jtm = NULL;
    if ((s = host_tm(jit, &jit->tm)) != MJ_OK || (s = host_tm(jit, &jtm)) != MJ_OK) goto fail;

    LLVMOrcLLJITBuilderRef builder = LLVMOrcCreateLLJITBuilder();
    /* takes ownership of jtm, and the builder takes the JTMB */
    LLVMOrcLLJITBuilderSetJITTargetMachineBuilder(
        builder, LLVMOrcJITTargetMachineBuilderCreateFromTargetMachine(jtm));
    jtm = NULL;
    const char *perf = getenv("MASKJIT_PERF");
    if (perf && !strcmp(perf, "1"))
        LLVMOrcLLJITBuilderSetObjectLinkingLayerCreator(builder, perf_object_layer, NULL);
    LLVMErrorRef err = LLVMOrcCreateLLJIT(&jit->lljit, builder); /* consumes builder */
    if (err) {
        jit->lljit = NULL;
        s = mj_jit_llvm_error(err, "creating the LLJIT");
        goto fail;
    }
    /* erff, expf, tanhf resolve to the libm the eager kernels use. */
    LLVMOrcDefinitionGeneratorRef gen;
    err = LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(
        &gen, LLVMOrcLLJITGetGlobalPrefix(jit->lljit), NULL, NULL);
    if (err) {
        s = mj_jit_llvm_error(err, "creating the process symbol generator");
        goto fail;
    }
    LLVMOrcJITDylibAddGenerator(LLVMOrcLLJITGetMainJITDylib(jit->lljit), gen);
    if (pthread_mutex_init(&jit->mu, NULL) != 0) {
        s = mj_fail(MJ_ERR_NOMEM, "cannot create the JIT mutex");
        goto fail;
    }
    *out = jit;
    return MJ_OK;
fail:
    if (jtm) LLVMDisposeTargetMachine(jtm);
    if (jit->lljit) LLVMOrcDisposeLLJIT(jit->lljit);
    if (jit->tm) LLVMDisposeTargetMachine(jit->tm);
    LLVMDisposeMessage(jit->cpu);
    LLVMDisposeMessage(jit->features);
    LLVMDisposeMessage(jit->triple);
    free(jit);
    return s;
}

void mj_jit_free(mj_jit *jit) {
    if (!jit) return;
    LLVMErrorRef err = LLVMOrcDisposeLLJIT(jit->lljit);
    if (err) LLVMConsumeError(err);
    LLVMDisposeTargetMachine(jit->tm);
    LLVMDisposeMessage(jit->cpu);
    LLVMDisposeMessage(jit->features);
    LLVMDisposeMessage(jit->triple);
    pthread_mutex_destroy(&jit->mu);
    free(jit);
}

const char *mj_jit_cpu_name(const mj_jit *jit) { return jit ? jit->cpu : ""; }

void mj_llvm_shutdown(void) {
    llvm_down = true;
    LLVMShutdown();
}

const char *mj_jit_pipeline(LLVMModuleRef m) {
    const char *env = getenv("MASKJIT_JIT_PASSES"); /* for measuring pipelines */
    if (env && *env) return env;
    /* Explicit vector kernels only: they need clean-up, not loop
     * optimisation (O2/O3 cost 3-10x more here and change nothing). */
    if (LLVMGetModuleFlag(m, MJ_FLAG_EXPLICIT, strlen(MJ_FLAG_EXPLICIT)))
        return "always-inline,function(sroa,early-cse,instcombine<no-verify-fixpoint>,simplifycfg)";
    return "default<O2>"; /* scalar loops for the loop and SLP vectorisers */
}

static double ms_since(double t0) { return (mj_now_seconds() - t0) * 1e3; }

mj_status mj_jit_add_module(mj_jit *jit, LLVMOrcThreadSafeContextRef tsc, LLVMModuleRef m,
                            const char *fname, LLVMOrcResourceTrackerRef *rt_out, mj_body_fn *fn,
                            char **bitcode, size_t *bitcode_size, mj_compile_stats *stats) {
    mj_status s = MJ_OK;
    LLVMOrcResourceTrackerRef rt = NULL;
    *bitcode = NULL;
    *bitcode_size = 0;
    *fn = NULL;
    pthread_mutex_lock(&jit->mu);
    char *triple = LLVMGetTargetMachineTriple(jit->tm);
    LLVMSetTarget(m, triple);
    LLVMDisposeMessage(triple);
    LLVMTargetDataRef td = LLVMCreateTargetDataLayout(jit->tm);
    LLVMSetModuleDataLayout(m, td);
    LLVMDisposeTargetData(td);

    double t0 = mj_now_seconds();
    LLVMPassBuilderOptionsRef po = LLVMCreatePassBuilderOptions();
    LLVMErrorRef err = LLVMRunPasses(m, mj_jit_pipeline(m), jit->tm, po);
    LLVMDisposePassBuilderOptions(po);
    stats->optimize_ms = ms_since(t0);
    if (err) {
        s = mj_jit_llvm_error(err, "optimising");
        LLVMDisposeModule(m);
        LLVMOrcDisposeThreadSafeContext(tsc);
        goto out;
    }
    LLVMMemoryBufferRef bc = LLVMWriteBitcodeToMemoryBuffer(m);
    size_t bc_size = bc ? LLVMGetBufferSize(bc) : 0;
    *bitcode = bc ? mj_alloc(bc_size) : NULL;
    if (*bitcode) {
        memcpy(*bitcode, LLVMGetBufferStart(bc), bc_size);
        *bitcode_size = bc_size;
    }
    if (bc) LLVMDisposeMemoryBuffer(bc);
    if (!*bitcode) {
        s = MJ_ERR_NOMEM;
        LLVMDisposeModule(m);
        LLVMOrcDisposeThreadSafeContext(tsc);
        goto out;
    }

    t0 = mj_now_seconds();
    LLVMOrcThreadSafeModuleRef tsm = LLVMOrcCreateNewThreadSafeModule(m, tsc);
    LLVMOrcDisposeThreadSafeContext(tsc); /* the module keeps the context alive */
    rt = LLVMOrcJITDylibCreateResourceTracker(LLVMOrcLLJITGetMainJITDylib(jit->lljit));
    err = LLVMOrcLLJITAddLLVMIRModuleWithRT(jit->lljit, rt, tsm); /* consumes tsm */
    if (err) {
        s = mj_jit_llvm_error(err, "adding the module to the JIT");
        goto out;
    }
    LLVMOrcExecutorAddress addr = 0;
    err = LLVMOrcLLJITLookup(jit->lljit, &addr, fname); /* compiles and links */
    stats->codegen_ms = ms_since(t0);
    if (err) {
        s = mj_jit_llvm_error(err, "generating code");
        goto out;
    }
    MJ_ASSERT(addr != 0);
    /* ORC hands back an address; converting it to a function pointer is the
     * documented way to call JIT'd code. */
    *fn = (mj_body_fn)(uintptr_t)addr;
out:
    if (s != MJ_OK && rt) {
        mj_rt_discard(rt);
        rt = NULL;
    }
    if (s != MJ_OK && *bitcode) {
        free(*bitcode);
        *bitcode = NULL;
        *bitcode_size = 0;
    }
    pthread_mutex_unlock(&jit->mu);
    *rt_out = rt;
    return s;
}

void mj_rt_discard(LLVMOrcResourceTrackerRef rt) {
    if (!rt) return;
    LLVMErrorRef err = LLVMOrcResourceTrackerRemove(rt);
    if (err) LLVMConsumeError(err);
    LLVMOrcReleaseResourceTracker(rt);
}

void mj_jit_remove(mj_jit *jit, LLVMOrcResourceTrackerRef rt) {
    if (!rt) return;
    pthread_mutex_lock(&jit->mu);
    mj_rt_discard(rt);
    pthread_mutex_unlock(&jit->mu);
}

LLVMValueRef mj_llvm_const_bytes(LLVMModuleRef m, LLVMContextRef ctx, const char *name,
                                 const void *data, size_t bytes) {
    LLVMValueRef init = LLVMConstStringInContext2(ctx, bytes ? (const char *)data : "", bytes, 1);
    LLVMValueRef gv = LLVMAddGlobal(m, LLVMTypeOf(init), name);
    LLVMSetInitializer(gv, init);
    LLVMSetGlobalConstant(gv, 1);
    LLVMSetLinkage(gv, LLVMPrivateLinkage);
    LLVMSetUnnamedAddress(gv, LLVMGlobalUnnamedAddr);
    LLVMSetAlignment(gv, 64);
    return gv;
}

mj_status mj_jit_dump(mj_jit *jit, const char *bitcode, size_t size, const char *what, FILE *f) {
    mj_status s = MJ_OK;
    LLVMContextRef ctx = LLVMContextCreate();
    LLVMMemoryBufferRef buf = LLVMCreateMemoryBufferWithMemoryRange(bitcode, size, "maskjit", 0);
    LLVMModuleRef m = NULL;
    if (LLVMParseBitcodeInContext2(ctx, buf, &m)) {
        LLVMDisposeMemoryBuffer(buf);
        LLVMContextDispose(ctx);
        return mj_fail(MJ_ERR_BACKEND, "re-reading the compiled module's bitcode failed");
    }
    LLVMDisposeMemoryBuffer(buf);
    if (strcmp(what, "ir") == 0) {
        char *text = LLVMPrintModuleToString(m);
        if (fputs(text, f) < 0) s = mj_fail(MJ_ERR_IO, "writing the LLVM IR failed");
        LLVMDisposeMessage(text);
    } else {
        char *msg = NULL;
        LLVMMemoryBufferRef out = NULL;
        pthread_mutex_lock(&jit->mu);
        LLVMBool failed = LLVMTargetMachineEmitToMemoryBuffer(jit->tm, m, LLVMAssemblyFile, &msg, &out);
        pthread_mutex_unlock(&jit->mu);
        if (failed) {
            s = mj_fail(MJ_ERR_BACKEND, "emitting assembly: %s", msg ? msg : "");
            LLVMDisposeMessage(msg);
        } else {
            size_t n = LLVMGetBufferSize(out);
            if (fwrite(LLVMGetBufferStart(out), 1, n, f) != n) s = mj_fail(MJ_ERR_IO, "writing the assembly failed");
            LLVMDisposeMemoryBuffer(out);
        }
    }
    LLVMDisposeModule(m);
    LLVMContextDispose(ctx);
    return s;
}
