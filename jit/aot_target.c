/* The target of an ahead-of-time object: LLVM's CPU and features from the
 * options (levels, host, extra features), and the run-time CPU check the
 * wrapper calls (cpuid/xgetbv as inline asm). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llvm-c/Core.h>
#include <llvm-c/TargetMachine.h>

#include "src/core/internal.h"
#include "aot_internal.h"

/* ---- target: CPU, features, and how to check them at run time ------------- */

static const cpu_feature *find_feature(const char *name, size_t len) {
    for (int i = 0; i < N_FEATURES; i++)
        if (strlen(FEATURES[i].name) == len && strncmp(FEATURES[i].name, name, len) == 0) return &FEATURES[i];
    return NULL;
}

/* The x86-64 psABI micro-architecture levels, each adding to the last. */
static const char *const LEVELS[4][2] = {
    {"x86-64", "+cmov,+cx8,+fxsr,+mmx,+sse,+sse2"},
    {"x86-64-v2", "+cx16,+sahf,+popcnt,+sse3,+sse4.1,+sse4.2,+crc32,+ssse3"},
    {"x86-64-v3", "+avx,+avx2,+bmi,+bmi2,+f16c,+fma,+lzcnt,+movbe,+xsave"},
    {"x86-64-v4", "+avx512f,+avx512bw,+avx512cd,+avx512dq,+avx512vl,+evex512"},
};
void mj_aot_target_free(target *t) {
    free(t->triple);
    free(t->cpu);
    free(t->features);
    free(t->unchecked);
    memset(t, 0, sizeof *t);
}

/* Appends ",item" (or "item") to a malloc'd string. */
static bool append(char **s, const char *item, size_t len) {
    size_t n = *s ? strlen(*s) : 0;
    char *r = realloc(*s, n + len + 2);
    if (!r) return false;
    if (n) r[n++] = ',';
    memcpy(r + n, item, len);
    r[n + len] = '\0';
    *s = r;
    return true;
}

/* Applies a feature list to need[]: "+f" requires f, "-f" drops it. strict:
 * a "+f" the run-time check does not know is an error, else it is noted in
 * t->unchecked. */
static mj_status apply_features(target *t, const char *list, bool strict, const char *what) {
    for (const char *p = list; p && *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0) {
            p = end ? end + 1 : p + len;
            continue;
        }
        if ((p[0] != '+' && p[0] != '-') || len < 2)
            return mj_fail(MJ_ERR_INVALID, "aot: %s: \"%.*s\" is not +FEATURE or -FEATURE", what, (int)len, p);
        const cpu_feature *f = find_feature(p + 1, len - 1);
        if (f) {
            t->need[f - FEATURES] = p[0] == '+';
        } else if (p[0] == '+') {
            if (strict)
                return mj_fail(MJ_ERR_UNSUPPORTED,
                               "aot: %s: feature \"%.*s\" cannot be checked at run time (known: avx, avx2, fma, "
                               "avx512f, avx512bw, ... see docs/aot.md)",
                               what, (int)(len - 1), p + 1);
            if (!append(&t->unchecked, p + 1, len - 1)) return MJ_ERR_NOMEM;
        }
        p = end ? end + 1 : p + len;
    }
    return MJ_OK;
}

mj_status mj_aot_target_init(const mj_aot_options *o, target *t) {
    memset(t, 0, sizeof *t);
    char *triple = LLVMGetDefaultTargetTriple();
    t->triple = mj_strdup(triple);
    LLVMDisposeMessage(triple);
    if (!t->triple) return MJ_ERR_NOMEM;
    t->x86_64 = strncmp(t->triple, "x86_64", 6) == 0;
    const char *cpu = o->target_cpu && *o->target_cpu ? o->target_cpu : "host";
    const char *extra = o->features ? o->features : "";
    mj_status s = MJ_OK;
    char *feats = NULL;
    if (strcmp(cpu, "host") == 0) {
        /* As the JIT: MASKJIT_JIT_FEATURES replaces the host's features
         * (tests; valgrind has no AVX-512). */
        const char *forced = getenv("MASKJIT_JIT_FEATURES");
        char *hc = NULL, *hf = NULL;
        if (forced && *forced) {
            t->cpu = mj_strdup(strstr(forced, "+avx512f") ? "skylake-avx512" : strstr(forced, "+avx2") ? "haswell"
                                                                                                       : "x86-64");
            feats = mj_strdup(forced);
        } else {
            hc = LLVMGetHostCPUName();
            hf = LLVMGetHostCPUFeatures();
            t->cpu = mj_strdup(hc);
            feats = mj_strdup(hf);
            LLVMDisposeMessage(hc);
            LLVMDisposeMessage(hf);
        }
        if (!t->cpu || !feats) {
            s = MJ_ERR_NOMEM;
            goto out;
        }
        if (t->x86_64 && (s = apply_features(t, feats, false, "host features")) != MJ_OK) goto out;
    } else {
        int level = -1;
        for (int i = 0; i < 4; i++)
            if (strcmp(cpu, LEVELS[i][0]) == 0) level = i;
        if (level < 0 || !t->x86_64) {
            s = mj_fail(MJ_ERR_INVALID,
                        "aot: unknown target CPU \"%s\" (use host, x86-64, x86-64-v2, x86-64-v3 or x86-64-v4%s)", cpu,
                        t->x86_64 ? "" : "; this host is not x86-64, only host works");
            goto out;
        }
        if (!(t->cpu = mj_strdup(cpu))) {
            s = MJ_ERR_NOMEM;
            goto out;
        }
        for (int i = 0; i <= level; i++) {
            if (!append(&feats, LEVELS[i][1], strlen(LEVELS[i][1]))) {
                s = MJ_ERR_NOMEM;
                goto out;
            }
            MJ_ASSERT(apply_features(t, LEVELS[i][1], true, "level") == MJ_OK);
        }
    }
    if (*extra) {
        if (!t->x86_64) {
            s = mj_fail(MJ_ERR_UNSUPPORTED, "aot: --features needs an x86-64 host (this one is %s)", t->triple);
            goto out;
        }
        if ((s = apply_features(t, extra, true, "--features")) != MJ_OK) goto out;
        if (!append(&feats, extra, strlen(extra))) {
            s = MJ_ERR_NOMEM;
            goto out;
        }
    }
    t->features = feats;
    feats = NULL;
out:
    free(feats);
    if (s != MJ_OK) mj_aot_target_free(t);
    return s;
}

/* "avx,avx2,fma": the features the run-time check requires. */
char *mj_aot_need_list(const target *t) {
    char *s = mj_strdup("");
    for (int i = 0; s && i < N_FEATURES; i++)
        if (t->need[i] && !append(&s, FEATURES[i].name, strlen(FEATURES[i].name))) {
            free(s);
            s = NULL;
        }
    return s;
}

static LLVMValueRef cpuid(emit *e, uint32_t leaf, uint32_t sub) {
    LLVMTypeRef four[4] = {e->i32, e->i32, e->i32, e->i32};
    LLVMTypeRef st = LLVMStructTypeInContext(e->ctx, four, 4, 0);
    LLVMTypeRef args_t[2] = {e->i32, e->i32};
    LLVMTypeRef fty = LLVMFunctionType(st, args_t, 2, 0);
    static const char cons[] = "={ax},={bx},={cx},={dx},{ax},{cx}";
    LLVMValueRef asm_ = LLVMGetInlineAsm(fty, "cpuid", 5, cons, sizeof cons - 1, 0, 0, LLVMInlineAsmDialectATT, 0);
    LLVMValueRef args[2] = {c32(e, leaf), c32(e, sub)};
    return LLVMBuildCall2(e->b, fty, asm_, args, 2, "cpuid");
}

/* int check(void): 0 if the CPU (and the OS, for vector state) has every
 * needed feature, else MJ_AOT_ERR_CPU; the answer is kept in a global. */
LLVMValueRef mj_aot_emit_cpu_check(emit *e) {
    LLVMValueRef fn = mj_aot_add_fn(e, ".cpu_check", e->i32, NULL, 0, false);
    char gname[160];
    snprintf(gname, sizeof gname, "%s.cpu_state", e->name);
    LLVMValueRef state = LLVMAddGlobal(e->m, e->i32, gname); /* 0 unknown, 1 ok, 2 lacking */
    LLVMSetInitializer(state, c32(e, 0));
    LLVMSetLinkage(state, LLVMInternalLinkage);
    LLVMBasicBlockRef entry = LLVMAppendBasicBlockInContext(e->ctx, fn, "entry");
    LLVMBasicBlockRef known = LLVMAppendBasicBlockInContext(e->ctx, fn, "known");
    LLVMBasicBlockRef probe = LLVMAppendBasicBlockInContext(e->ctx, fn, "probe");
    LLVMPositionBuilderAtEnd(e->b, entry);
    LLVMValueRef st = LLVMBuildLoad2(e->b, e->i32, state, "state");
    LLVMSetOrdering(st, LLVMAtomicOrderingMonotonic);
    LLVMSetAlignment(st, 4);
    LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntNE, st, c32(e, 0), ""), known, probe);

    LLVMPositionBuilderAtEnd(e->b, known);
    LLVMBuildRet(e->b, LLVMBuildSelect(e->b, LLVMBuildICmp(e->b, LLVMIntEQ, st, c32(e, 1), ""), c32(e, MJ_AOT_OK),
                                       c32(e, MJ_AOT_ERR_CPU), ""));

    LLVMPositionBuilderAtEnd(e->b, probe);
    LLVMValueRef ok = LLVMConstInt(e->i1, 1, 0);
    uint32_t xmask = 0;
    if (e->t->x86_64) {
        LLVMValueRef max_basic = reg(e, cpuid(e, 0, 0), 0);
        LLVMValueRef max_ext = reg(e, cpuid(e, 0x80000000u, 0), 0);
        LLVMValueRef leaf1 = NULL;
        /* one cpuid per distinct (leaf, subleaf), in table order */
        for (int i = 0; i < N_FEATURES; i++) {
            if (!e->t->need[i]) continue;
            bool first = true;
            for (int j = 0; j < i; j++)
                if (e->t->need[j] && FEATURES[j].leaf == FEATURES[i].leaf && FEATURES[j].sub == FEATURES[i].sub)
                    first = false;
            if (!first) continue;
            uint32_t leaf = FEATURES[i].leaf, sub = FEATURES[i].sub;
            LLVMValueRef regs = cpuid(e, leaf, sub);
            /* an unsupported leaf returns other data: require leaf <= max */
            LLVMValueRef valid = LLVMBuildICmp(e->b, LLVMIntULE, c32(e, leaf), leaf >= 0x80000000u ? max_ext : max_basic, "");
            ok = LLVMBuildAnd(e->b, ok, valid, "");
            if (leaf == 1 && sub == 0) leaf1 = regs;
            for (int j = i; j < N_FEATURES; j++) {
                if (!e->t->need[j] || FEATURES[j].leaf != leaf || FEATURES[j].sub != sub) continue;
                LLVMValueRef bit = LLVMBuildAnd(e->b, reg(e, regs, FEATURES[j].reg), c32(e, 1u << FEATURES[j].bit), "");
                ok = LLVMBuildAnd(e->b, ok, LLVMBuildICmp(e->b, LLVMIntNE, bit, c32(e, 0), ""), "");
                xmask |= FEATURES[j].xcr0;
            }
        }
        if (xmask) {
            /* The OS must save the vector state: OSXSAVE, then XCR0. */
            if (!leaf1) leaf1 = cpuid(e, 1, 0);
            LLVMValueRef osx = LLVMBuildICmp(e->b, LLVMIntNE,
                                             LLVMBuildAnd(e->b, reg(e, leaf1, 2), c32(e, 1u << 27), ""), c32(e, 0), "");
            LLVMBasicBlockRef from = LLVMGetInsertBlock(e->b);
            LLVMBasicBlockRef xg = LLVMAppendBasicBlockInContext(e->ctx, fn, "xgetbv");
            LLVMBasicBlockRef join = LLVMAppendBasicBlockInContext(e->ctx, fn, "join");
            LLVMBuildCondBr(e->b, osx, xg, join);
            LLVMPositionBuilderAtEnd(e->b, xg);
            LLVMTypeRef two[2] = {e->i32, e->i32};
            LLVMTypeRef xty = LLVMFunctionType(LLVMStructTypeInContext(e->ctx, two, 2, 0), &e->i32, 1, 0);
            static const char cons[] = "={ax},={dx},{cx}";
            LLVMValueRef xasm = LLVMGetInlineAsm(xty, "xgetbv", 6, cons, sizeof cons - 1, 0, 0, LLVMInlineAsmDialectATT, 0);
            LLVMValueRef zero = c32(e, 0);
            LLVMValueRef xcr0 = reg(e, LLVMBuildCall2(e->b, xty, xasm, &zero, 1, "xcr0"), 0);
            LLVMBuildBr(e->b, join);
            LLVMPositionBuilderAtEnd(e->b, join);
            LLVMValueRef phi = LLVMBuildPhi(e->b, e->i32, "xcr0lo");
            LLVMValueRef in_v[2] = {c32(e, 0), xcr0};
            LLVMBasicBlockRef in_b[2] = {from, xg};
            LLVMAddIncoming(phi, in_v, in_b, 2);
            LLVMValueRef has = LLVMBuildICmp(e->b, LLVMIntEQ, LLVMBuildAnd(e->b, phi, c32(e, xmask), ""), c32(e, xmask), "");
            ok = LLVMBuildAnd(e->b, ok, has, "");
        }
    }
    LLVMValueRef nv = LLVMBuildSelect(e->b, ok, c32(e, 1), c32(e, 2), "");
    LLVMValueRef store = LLVMBuildStore(e->b, nv, state);
    LLVMSetOrdering(store, LLVMAtomicOrderingMonotonic);
    LLVMSetAlignment(store, 4);
    LLVMBuildRet(e->b, LLVMBuildSelect(e->b, ok, c32(e, MJ_AOT_OK), c32(e, MJ_AOT_ERR_CPU), ""));
    return fn;
}
