/* The JIT instance: one ORC LLJIT for the host CPU, shared by every graph
 * compiled with it. Each compiled graph lives under its own ResourceTracker
 * so freeing it frees its code. */
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <llvm-c/Error.h>
#include <llvm-c/ErrorHandling.h>
#include <llvm-c/ExecutionEngine.h>
#include <llvm-c/OrcEE.h>
#include <llvm-c/Target.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include "jit_internal.h"
#include "jit_test.h"

static pthread_once_t llvm_once = PTHREAD_ONCE_INIT;
static bool llvm_init_ok;
/* LLVMShutdown cannot be undone: later JITs are refused, not crashed. */
static _Atomic bool llvm_down;

/* ---- when LLVM itself gives up ---------------------------------------------
 * LLVM reports out-of-memory and internal errors by ending the process; its
 * handlers may print but must not return (LLVM exits or aborts after them),
 * and unwinding out of them would leave its locks and state broken. So they
 * cannot become a status: mj_jit_check_memory refuses compiles that would
 * not fit first, and these handlers make the end say what happened. */

/* The bad-alloc handler has no C binding: this is
 * llvm::install_bad_alloc_error_handler(fatal_error_handler_t, void *) of
 * llvm/Support/ErrorHandling.h, by its symbol in libLLVM-19. */
typedef void (*mj_llvm_handler_fn)(void *user, const char *reason, bool gen_crash_diag);
extern void mj_llvm_install_bad_alloc_handler(mj_llvm_handler_fn fn, void *user) __asm__(
    "_ZN4llvm31install_bad_alloc_error_handlerEPFvPvPKcbES0_");

static void say(const char *s) { (void)!write(STDERR_FILENO, s, strlen(s)); } /* no malloc */

static void on_llvm_bad_alloc(void *user, const char *reason, bool gen_crash_diag) {
    (void)user;
    (void)gen_crash_diag;
    say("maskjit: LLVM ran out of memory while compiling (");
    say(reason ? reason : "no reason given");
    say("); LLVM cannot continue after that, so the process exits with status 1. "
        "Allow more memory (ulimit -v), or compile in live mode, which bakes no "
        "parameters into the code\n");
    _exit(EXIT_FAILURE);
}

static void on_llvm_fatal(const char *reason) {
    say("maskjit: LLVM fatal error: ");
    say(reason ? reason : "no reason given");
    say("\n"); /* LLVM ends the process when this returns */
}

/* LLVM's target registry and error handlers are global: set up once per
 * process. */
static void llvm_init(void) {
    LLVMInstallFatalErrorHandler(on_llvm_fatal);
    mj_llvm_install_bad_alloc_handler(on_llvm_bad_alloc, NULL);
    llvm_init_ok = LLVMInitializeNativeTarget() == 0 && LLVMInitializeNativeAsmPrinter() == 0;
}

/* Address space a compile is expected to need, from measurements of
 * mlp:256,1024,1024,10 and smaller (docs/design.md, "Memory"): a base for
 * LLVM's working set, plus per byte of parameters ~11x in frozen mode (the
 * constants are copied into LLVM IR, bitcode, the object file and the linked
 * image) and ~1.5x in live mode (the packed layouts). Rounded up. */
#define COMPILE_BASE_BYTES (UINT64_C(8) << 20)
#define FROZEN_BYTES_PER_PARAM_BYTE 12
#define LIVE_BYTES_PER_PARAM_BYTE 2

/* Fields of /proc/self/statm in bytes: 0 total size, 5 data + stack. */
static bool statm_bytes(int field, uint64_t *out) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return false;
    unsigned long long v[6];
    bool ok = fscanf(f, "%llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) == 6;
    fclose(f);
    long page = sysconf(_SC_PAGESIZE);
    if (ok && page > 0) *out = (uint64_t)v[field] * (uint64_t)page;
    return ok && page > 0;
}

mj_status mj_jit_check_memory(const mj_graph *g, bool frozen) {
    uint64_t param_bytes = 0;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if ((n->op == MJ_OP_PARAM || n->op == MJ_OP_CONST) && n->tensor)
            param_bytes += (uint64_t)n->tensor->numel * sizeof(float);
    }
    uint64_t need = COMPILE_BASE_BYTES +
                    param_bytes * (frozen ? FROZEN_BYTES_PER_PARAM_BYTE : LIVE_BYTES_PER_PARAM_BYTE);
    static const struct {
        int resource, statm_field;
        const char *name;
    } limits[2] = {{RLIMIT_AS, 0, "RLIMIT_AS, ulimit -v"}, {RLIMIT_DATA, 5, "RLIMIT_DATA, ulimit -d"}};
    for (int k = 0; k < 2; k++) {
        struct rlimit lim;
        uint64_t used;
        if (getrlimit(limits[k].resource, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY ||
            !statm_bytes(limits[k].statm_field, &used))
            continue; /* no limit, or nothing to measure against */
        uint64_t left = (uint64_t)lim.rlim_cur > used ? (uint64_t)lim.rlim_cur - used : 0;
        if (need <= left) continue;
        const double mib = 1024.0 * 1024.0;
        return mj_fail(MJ_ERR_LIMIT,
                       "jit: a %s compile with %.1f MiB of parameters needs about %.0f MiB of "
                       "address space, but only %.0f MiB are left under the process's limit "
                       "(%s: %.0f MiB, %.0f MiB in use); LLVM cannot recover from running out "
                       "of memory, so the compile is refused: raise the limit%s",
                       frozen ? "frozen" : "live", (double)param_bytes / mib, (double)need / mib,
                       (double)left / mib, limits[k].name, (double)lim.rlim_cur / mib,
                       (double)used / mib, frozen ? " or compile in live mode" : "");
    }
    return MJ_OK;
}

mj_status mj_jit_llvm_error(LLVMErrorRef err, const char *what) {
    char *msg = LLVMGetErrorMessage(err); /* consumes err */
    mj_status s = mj_fail(MJ_ERR_BACKEND, "%s: %s", what, msg ? msg : "(no message)");
    LLVMDisposeErrorMessage(msg);
    return s;
}

/* A host target machine: CPU and features as detected (never hard-coded:
 * under valgrind the host has no AVX-512), O3 code generation, JIT code model. */
mj_status mj_jit_target_machine(const mj_jit *jit, LLVMRelocMode reloc, LLVMCodeModel model,
                                LLVMTargetMachineRef *out) {
    LLVMTargetRef target;
    char *err = NULL;
    if (LLVMGetTargetFromTriple(jit->triple, &target, &err)) {
        mj_status s = mj_fail(MJ_ERR_BACKEND, "no LLVM target for %s: %s", jit->triple, err ? err : "");
        LLVMDisposeMessage(err);
        return s;
    }
    LLVMTargetMachineRef tm = LLVMCreateTargetMachine(target, jit->triple, jit->cpu, jit->features,
                                                      LLVMCodeGenLevelAggressive, reloc, model);
    if (!tm) return mj_fail(MJ_ERR_BACKEND, "cannot create a target machine for %s (%s)", jit->triple, jit->cpu);
    *out = tm;
    return MJ_OK;
}

static mj_status host_tm(const mj_jit *jit, LLVMTargetMachineRef *out) {
    return mj_jit_target_machine(jit, LLVMRelocDefault, LLVMCodeModelJITDefault, out);
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
    jit->fault = MJ_OP_COUNT;
    atomic_init(&jit->refs, 1);
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
    /* for measuring pipelines: read once here, so that the cache key can
     * name the pipeline the JIT's code was optimised with */
    const char *passes = getenv("MASKJIT_JIT_PASSES");
    if (passes && *passes && !(jit->passes = mj_strdup(passes))) {
        s = MJ_ERR_NOMEM;
        goto fail;
    }
    LLVMTargetMachineRef jtm = NULL;
    if ((s = host_tm(jit, &jtm)) != MJ_OK) goto fail;

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
    /* logf, expm1f, ... resolve to the libm the eager kernels use. */
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
    LLVMDisposeMessage(jit->cpu);
    LLVMDisposeMessage(jit->features);
    LLVMDisposeMessage(jit->triple);
    free(jit->passes);
    free(jit);
    return s;
}

void mj_jit_retain(mj_jit *jit) { atomic_fetch_add_explicit(&jit->refs, 1, memory_order_relaxed); }

/* acq_rel: whatever a compiled model's last call wrote happens before the
 * disposal that another thread's release may run */
void mj_jit_release(mj_jit *jit) {
    if (!jit || atomic_fetch_sub_explicit(&jit->refs, 1, memory_order_acq_rel) != 1) return;
    LLVMErrorRef err = LLVMOrcDisposeLLJIT(jit->lljit);
    if (err) LLVMConsumeError(err);
    LLVMDisposeMessage(jit->cpu);
    LLVMDisposeMessage(jit->features);
    LLVMDisposeMessage(jit->triple);
    free(jit->passes);
    pthread_mutex_destroy(&jit->mu);
    free(jit);
}

void mj_jit_free(mj_jit *jit) { mj_jit_release(jit); }

const char *mj_jit_cpu_name(const mj_jit *jit) { return jit ? jit->cpu : ""; }

void mj_llvm_shutdown(void) {
    llvm_down = true;
    LLVMShutdown();
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

void mj_jit_set_module_target(LLVMModuleRef m, LLVMTargetMachineRef tm) {
    char *triple = LLVMGetTargetMachineTriple(tm);
    LLVMSetTarget(m, triple);
    LLVMDisposeMessage(triple);
    LLVMTargetDataRef td = LLVMCreateTargetDataLayout(tm);
    LLVMSetModuleDataLayout(m, td);
    LLVMDisposeTargetData(td);
}

mj_status mj_jit_dump(mj_jit *jit, LLVMModuleRef m, const char *what, FILE *f) {
    /* the target and passes of a compile (mj_cache_codegen) */
    LLVMTargetMachineRef tm;
    MJ_TRY(mj_jit_target_machine(jit, LLVMRelocPIC, LLVMCodeModelSmall, &tm));
    mj_jit_set_module_target(m, tm);
    mj_status s = mj_jit_optimize(m, tm, jit->passes, "optimising");
    if (s == MJ_OK && strcmp(what, "ir") == 0) {
        char *text = LLVMPrintModuleToString(m);
        if (fputs(text, f) < 0) s = mj_fail(MJ_ERR_IO, "writing the LLVM IR failed");
        LLVMDisposeMessage(text);
    } else if (s == MJ_OK) {
        char *msg = NULL;
        LLVMMemoryBufferRef out = NULL;
        if (LLVMTargetMachineEmitToMemoryBuffer(tm, m, LLVMAssemblyFile, &msg, &out)) {
            s = mj_fail(MJ_ERR_BACKEND, "emitting assembly: %s", msg ? msg : "");
            LLVMDisposeMessage(msg);
        } else {
            size_t n = LLVMGetBufferSize(out);
            if (fwrite(LLVMGetBufferStart(out), 1, n, f) != n) s = mj_fail(MJ_ERR_IO, "writing the assembly failed");
            LLVMDisposeMemoryBuffer(out);
        }
    }
    LLVMDisposeTargetMachine(tm);
    return s;
}

mj_status mj_jit_inject_fault(mj_jit *jit, const char *op_name) {
    if (!jit) return mj_fail(MJ_ERR_INVALID, "mj_jit_inject_fault: NULL JIT");
    mj_op op = MJ_OP_COUNT;
    if (op_name && *op_name) {
        op = mj_op_from_name(op_name, strlen(op_name));
        if (op == MJ_OP_COUNT) return mj_fail(MJ_ERR_INVALID, "fault injection: no op '%s'", op_name);
    }
    pthread_mutex_lock(&jit->mu); /* compiles read it under the same lock */
    jit->fault = op;
    pthread_mutex_unlock(&jit->mu);
    return MJ_OK;
}
