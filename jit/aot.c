/* Ahead-of-time compilation: the JIT's compile path (the same graph passes,
 * plan, prologue and lowering as jit/compiled.c, so frozen code is the
 * JIT's), written to an object file for a chosen target instead of linked
 * into this process, plus a public wrapper emitted into the same module:
 *
 *   int NAME_run(int64_t batch, const float *const inputs[], float *const outputs[])
 *
 * checks the CPU (cpuid/xgetbv as inline asm, once), its arguments and the
 * batch, allocates the scratch (on its stack when small, else aligned_alloc)
 * and calls the body on one thread. The wrapper and the check are compiled
 * for the baseline x86-64 whatever the target, so that a CPU without the
 * target's features reaches the check instead of a SIGILL.
 *
 * Live (not frozen): only params and consts are leaves; the body computes
 * the rest of the prologue (mask products) on every call, the wrapper packs
 * param weights into the scratch, and NAME_bind / NAME_run_with supply the
 * params. Only libc and libm symbols stay undefined. See docs/aot.md. */
#include "aot.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/Core.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include "src/core/internal.h"
#include "jit_internal.h"

extern char **environ;

void mj_aot_options_init(mj_aot_options *o) {
    if (!o) return;
    memset(o, 0, sizeof *o);
    o->name = "model";
    o->numeric = MJ_NUMERIC_EXACT;
    o->frozen = true;
}

/* ---- target: CPU, features, and how to check them at run time ------------- */

/* Where cpuid reports an LLVM feature, and the XCR0 state bits the OS must
 * enable for it (AVX: SSE+AVX state; AVX-512: + opmask and ZMM state; AMX:
 * tile config and data). */
typedef struct cpu_feature {
    const char *name;
    uint32_t leaf, sub;
    int reg; /* 0 eax, 1 ebx, 2 ecx, 3 edx */
    int bit;
    uint32_t xcr0;
} cpu_feature;

#define XAVX 0x6u
#define XAVX512 0xe6u
#define XAMX 0x60000u
static const cpu_feature FEATURES[] = {
    {"cx8", 1, 0, 3, 8, 0},        {"cmov", 1, 0, 3, 15, 0},      {"mmx", 1, 0, 3, 23, 0},
    {"fxsr", 1, 0, 3, 24, 0},      {"sse", 1, 0, 3, 25, 0},       {"sse2", 1, 0, 3, 26, 0},
    {"sse3", 1, 0, 2, 0, 0},       {"pclmul", 1, 0, 2, 1, 0},     {"ssse3", 1, 0, 2, 9, 0},
    {"fma", 1, 0, 2, 12, XAVX},    {"cx16", 1, 0, 2, 13, 0},      {"sse4.1", 1, 0, 2, 19, 0},
    {"sse4.2", 1, 0, 2, 20, 0},    {"crc32", 1, 0, 2, 20, 0},     {"movbe", 1, 0, 2, 22, 0},
    {"popcnt", 1, 0, 2, 23, 0},    {"aes", 1, 0, 2, 25, 0},       {"xsave", 1, 0, 2, 26, 0},
    {"avx", 1, 0, 2, 28, XAVX},    {"f16c", 1, 0, 2, 29, XAVX},   {"rdrnd", 1, 0, 2, 30, 0},
    {"fsgsbase", 7, 0, 1, 0, 0},   {"bmi", 7, 0, 1, 3, 0},        {"avx2", 7, 0, 1, 5, XAVX},
    {"bmi2", 7, 0, 1, 8, 0},       {"avx512f", 7, 0, 1, 16, XAVX512},
    {"evex512", 7, 0, 1, 16, XAVX512}, /* LLVM's name for 512-bit AVX-512 */
    {"avx512dq", 7, 0, 1, 17, XAVX512}, {"rdseed", 7, 0, 1, 18, 0}, {"adx", 7, 0, 1, 19, 0},
    {"avx512ifma", 7, 0, 1, 21, XAVX512}, {"clflushopt", 7, 0, 1, 23, 0}, {"clwb", 7, 0, 1, 24, 0},
    {"avx512cd", 7, 0, 1, 28, XAVX512}, {"sha", 7, 0, 1, 29, 0},  {"avx512bw", 7, 0, 1, 30, XAVX512},
    {"avx512vl", 7, 0, 1, 31, XAVX512}, {"avx512vbmi", 7, 0, 2, 1, XAVX512},
    {"avx512vbmi2", 7, 0, 2, 6, XAVX512}, {"gfni", 7, 0, 2, 8, 0}, {"vaes", 7, 0, 2, 9, XAVX},
    {"vpclmulqdq", 7, 0, 2, 10, XAVX}, {"avx512vnni", 7, 0, 2, 11, XAVX512},
    {"avx512bitalg", 7, 0, 2, 12, XAVX512}, {"avx512vpopcntdq", 7, 0, 2, 14, XAVX512},
    {"rdpid", 7, 0, 2, 22, 0},     {"movdiri", 7, 0, 2, 27, 0},   {"movdir64b", 7, 0, 2, 28, 0},
    {"avx512vp2intersect", 7, 0, 3, 8, XAVX512}, {"serialize", 7, 0, 3, 14, 0},
    {"amx-bf16", 7, 0, 3, 22, XAMX}, {"avx512fp16", 7, 0, 3, 23, XAVX512},
    {"amx-tile", 7, 0, 3, 24, XAMX}, {"amx-int8", 7, 0, 3, 25, XAMX},
    {"avxvnni", 7, 1, 0, 4, XAVX}, {"avx512bf16", 7, 1, 0, 5, XAVX512},
    {"xsaveopt", 0xd, 1, 0, 0, 0}, {"xsavec", 0xd, 1, 0, 1, 0},   {"xsaves", 0xd, 1, 0, 3, 0},
    {"sahf", 0x80000001u, 0, 2, 0, 0}, {"lzcnt", 0x80000001u, 0, 2, 5, 0},
    {"sse4a", 0x80000001u, 0, 2, 6, 0}, {"prfchw", 0x80000001u, 0, 2, 8, 0},
    {"clzero", 0x80000008u, 0, 1, 0, 0},
};
enum { N_FEATURES = sizeof FEATURES / sizeof FEATURES[0] };

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

/* The target: LLVM's CPU and an explicit feature string, and the features
 * the run-time check requires (flags into FEATURES). */
typedef struct target {
    char *triple;
    char *cpu;
    char *features;          /* "+a,+b,-c": what the code may use */
    bool need[N_FEATURES];
    bool x86_64;
    char *unchecked;         /* host "+" features cpuid is not asked about */
} target;

static void target_free(target *t) {
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

static mj_status target_init(const mj_aot_options *o, target *t) {
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
    if (s != MJ_OK) target_free(t);
    return s;
}

/* "avx,avx2,fma": the features the run-time check requires. */
static char *need_list(const target *t) {
    char *s = mj_strdup("");
    for (int i = 0; s && i < N_FEATURES; i++)
        if (t->need[i] && !append(&s, FEATURES[i].name, strlen(FEATURES[i].name))) {
            free(s);
            s = NULL;
        }
    return s;
}

/* ---- the graph: the JIT's pipeline ------------------------------------------ */

typedef struct aot {
    const mj_aot_options *o;
    mj_graph *g;
    bool *input_free;
    mj_body_plan plan;
    mj_tensor **vals;  /* prologue values */
    float **packed;
    const float **leaf_data;
    int64_t *numel;
    int32_t in_node, out_node;
    int64_t max_batch;
    /* scratch floats = sum over slots of round16(coef * B^pow) + fixed */
    int32_t n_slots;
    int64_t *slot_coef;
    int *slot_pow;
    int64_t scratch_fixed;
    /* Live: the params, in node order (leaves read them at run time), and
     * per leaf its param index (-1: a const, baked) and, for a packed
     * param, its offset in the wrapper's pack area of pack_floats. */
    bool live;
    int32_t n_params;
    int32_t *param_node;
    int32_t *leaf_param;
    int64_t *pack_off;
    int64_t pack_floats;
} aot;

static void aot_free(aot *a) {
    if (a->g) mj_prologue_release(a->g, &a->plan, a->vals, a->packed, a->leaf_data); /* made after a->g */
    free(a->numel);
    free(a->slot_coef);
    free(a->slot_pow);
    free(a->param_node);
    free(a->leaf_param);
    free(a->pack_off);
    mj_body_plan_free(&a->plan);
    free(a->input_free);
    mj_graph_free(a->g);
    memset(a, 0, sizeof *a);
}

/* What the body supports (as jit/compiled.c's check, plus rank <= 4 for the
 * header's dims arrays). */
static mj_status check_graph(const mj_graph *g) {
    if (g->n_outputs != 1 || mj_graph_input_count(g) != 1)
        return mj_fail(MJ_ERR_UNSUPPORTED, "aot: the graph has %d inputs and %d outputs; only 1 and 1 are supported",
                       mj_graph_input_count(g), (int)g->n_outputs);
    return mj_jit_check_nodes(g, "aot");
}

/* coef * B^pow for a type (coef: the concrete dims' product). */
static void type_poly(const mj_type *t, int64_t *coef, int *pow) {
    int64_t c = 1;
    int k = 0;
    for (int d = 0; d < t->rank; d++) {
        if (t->dims[d] == MJ_DIM_BATCH) k++;
        else c *= t->dims[d]; /* <= MJ_MAX_NUMEL: checked by the IR builder */
    }
    *coef = c;
    *pow = k;
}

/* coef * b^pow, or -1 beyond MJ_MAX_NUMEL. */
static int64_t poly_at(int64_t coef, int pow, int64_t b) {
    int64_t v = coef;
    for (int i = 0; i < pow; i++)
        if (__builtin_mul_overflow(v, b, &v) || v > MJ_MAX_NUMEL) return -1;
    return v;
}

static int64_t round16(int64_t n) { return (n + 15) & ~INT64_C(15); }

/* The wrapper's scratch formula at batch b (b <= max_batch). */
static int64_t scratch_formula(const aot *a, int64_t b) {
    int64_t total = a->scratch_fixed;
    for (int32_t i = 0; i < a->n_slots; i++) total += round16(poly_at(a->slot_coef[i], a->slot_pow[i], b));
    return total;
}

static bool batch_fits(const aot *a, int64_t b) {
    int64_t in_c, out_c, n;
    int in_p, out_p;
    type_poly(&a->g->nodes[a->in_node].type, &in_c, &in_p);
    type_poly(&a->g->nodes[a->out_node].type, &out_c, &out_p);
    if (poly_at(in_c, in_p, b) < 0 || poly_at(out_c, out_p, b) < 0) return false;
    return mj_body_scratch_floats(&a->plan, b, &n) == MJ_OK && n + a->pack_floats <= MJ_MAX_NUMEL;
}

/* Interprets the prologue (the kernels eager uses) and packs the leaves, as
 * jit/compiled.c does for a frozen compile. Live, the leaves are params
 * (read at run time: data NULL here) and consts (baked). */
static mj_status prologue(aot *a) {
    const mj_graph *g = a->g;
    bool *needed = mj_prologue_needed(g, &a->plan);
    a->vals = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *a->vals);
    a->packed = mj_alloc_array((size_t)a->plan.n_leaves + 1, sizeof *a->packed);
    a->leaf_data = mj_alloc_array((size_t)a->plan.n_leaves + 1, sizeof *a->leaf_data);
    a->numel = mj_alloc_array((size_t)a->plan.n_leaves + 1, sizeof *a->numel);
    mj_status s = MJ_OK;
    if (!needed || !a->vals || !a->packed || !a->leaf_data || !a->numel) {
        s = MJ_ERR_NOMEM;
        goto out;
    }
    if ((s = mj_prologue_eval(g, needed, a->vals, "aot")) != MJ_OK) goto out;
    for (int32_t i = 0; i < a->plan.n_leaves; i++) a->numel[i] = a->vals[a->plan.leaves[i].node]->numel;
    s = mj_prologue_leaves(g, &a->plan, a->vals, a->live, a->packed, a->leaf_data);
out:
    free(needed);
    return s;
}

static mj_status prepare(const mj_graph *g0, const mj_aot_options *o, const target *t, aot *a) {
    memset(a, 0, sizeof *a);
    a->o = o;
    MJ_TRY(check_graph(g0));
    MJ_TRY(mj_graph_clone(g0, &a->g));
    a->live = !o->frozen;
    if (o->frozen) { /* as mj_jit_compile */
        MJ_TRY(mj_graph_freeze(a->g));
        MJ_TRY(mj_graph_optimize(a->g, "default"));
    } else {
        MJ_TRY(mj_graph_optimize(a->g, "cse,fuse,dce"));
    }
    MJ_TRY(check_graph(a->g));
    for (int32_t i = 0; i < a->g->n_nodes; i++)
        if (a->g->nodes[i].op == MJ_OP_INPUT) a->in_node = i;
    a->out_node = a->g->outputs[0];
    for (int32_t i = 0; i < a->g->n_nodes; i++) {
        if (a->g->nodes[i].type.rank > 4)
            return mj_fail(MJ_ERR_UNSUPPORTED, "aot: value %%%d has rank %d; the header describes ranks up to 4",
                           (int)i, a->g->nodes[i].type.rank);
    }
    if (a->live) {
        /* The body computes the prologue too (mask products, ...), on every
         * call: only params and consts are leaves. */
        if (!(a->input_free = mj_alloc_array((size_t)a->g->n_nodes + 1, sizeof *a->input_free))) return MJ_ERR_NOMEM;
        for (int32_t i = 0; i < a->g->n_nodes; i++)
            a->input_free[i] = a->g->nodes[i].op == MJ_OP_PARAM || a->g->nodes[i].op == MJ_OP_CONST;
    } else if (!(a->input_free = mj_graph_input_free(a->g))) {
        return MJ_ERR_NOMEM;
    }
    MJ_TRY(mj_body_plan_build(a->g, a->input_free, !a->live, &a->plan));
    a->plan.vw = mj_features_vector_width(t->features);
    a->plan.nr = a->plan.vw == 16 ? 4 : 2;
    a->plan.panel = (int64_t)a->plan.nr * a->plan.vw;
    MJ_TRY(prologue(a));
    if (a->live) {
        a->param_node = mj_alloc_array((size_t)a->plan.n_leaves + 1, sizeof *a->param_node);
        a->leaf_param = mj_alloc_array((size_t)a->plan.n_leaves + 1, sizeof *a->leaf_param);
        a->pack_off = mj_alloc_array((size_t)a->plan.n_leaves + 1, sizeof *a->pack_off);
        if (!a->param_node || !a->leaf_param || !a->pack_off) return MJ_ERR_NOMEM;
        for (int32_t i = 0; i < a->g->n_nodes; i++) {
            bool leaf = a->plan.leaf_plain[i] >= 0 || a->plan.leaf_packed[i] >= 0;
            if (leaf && a->g->nodes[i].op == MJ_OP_PARAM) a->param_node[a->n_params++] = i;
        }
        for (int32_t l = 0; l < a->plan.n_leaves; l++) {
            a->leaf_param[l] = -1;
            for (int32_t k = 0; k < a->n_params; k++)
                if (a->param_node[k] == a->plan.leaves[l].node) a->leaf_param[l] = k;
            if (a->leaf_param[l] >= 0 && a->plan.leaves[l].packed) {
                a->pack_off[l] = a->pack_floats;
                a->pack_floats += round16(a->numel[l]);
                if (a->pack_floats > MJ_MAX_NUMEL)
                    return mj_fail(MJ_ERR_LIMIT, "aot: the weights need more than 2^40 floats");
            }
        }
    }

    /* The scratch as a formula of B for the wrapper, checked against the
     * lowering's own count (mj_body_scratch_floats). */
    a->slot_coef = mj_alloc_array((size_t)a->g->n_nodes + 1, sizeof *a->slot_coef);
    a->slot_pow = mj_alloc_array((size_t)a->g->n_nodes + 1, sizeof *a->slot_pow);
    if (!a->slot_coef || !a->slot_pow) return MJ_ERR_NOMEM;
    for (int32_t i = 0; i < a->g->n_nodes; i++) {
        if (!a->plan.has_slot[i]) continue;
        type_poly(&a->g->nodes[i].type, &a->slot_coef[a->n_slots], &a->slot_pow[a->n_slots]);
        a->n_slots++;
    }
    int64_t s1;
    if (!batch_fits(a, 1) || mj_body_scratch_floats(&a->plan, 1, &s1) != MJ_OK)
        return mj_fail(MJ_ERR_LIMIT, "aot: even batch 1 needs more than 2^40 floats of intermediate values");
    a->scratch_fixed = 0;
    a->scratch_fixed = s1 - scratch_formula(a, 1); /* the sparse kernels' share: fixed */
    int64_t lo = 1, hi = MJ_MAX_NUMEL;
    while (lo < hi) { /* the largest batch whose sizes all fit */
        int64_t mid = lo + (hi - lo + 1) / 2;
        if (batch_fits(a, mid)) lo = mid;
        else hi = mid - 1;
    }
    a->max_batch = lo;
    const int64_t probes[] = {1, 2, 3, 17, 1000, a->max_batch};
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        int64_t b = probes[i] < a->max_batch ? probes[i] : a->max_batch, n;
        MJ_ASSERT(mj_body_scratch_floats(&a->plan, b, &n) == MJ_OK && n == scratch_formula(a, b));
    }
    return MJ_OK;
}

/* ---- the module: body, wrapper, CPU check, shape tables ---------------------- */

typedef struct emit {
    LLVMContextRef ctx;
    LLVMModuleRef m;
    LLVMBuilderRef b;
    LLVMTypeRef i1, i32, i64, ptr;
    const aot *a;
    const target *t;
    char name[96];
} emit;

static LLVMValueRef c64(emit *e, int64_t v) { return LLVMConstInt(e->i64, (unsigned long long)v, 1); }
static LLVMValueRef c32(emit *e, uint32_t v) { return LLVMConstInt(e->i32, v, 0); }

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

static LLVMValueRef add_fn(emit *e, const char *suffix, LLVMTypeRef ret, LLVMTypeRef *params, unsigned n,
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

static LLVMValueRef reg(emit *e, LLVMValueRef regs, int r) { return LLVMBuildExtractValue(e->b, regs, (unsigned)r, ""); }

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
static LLVMValueRef emit_cpu_check(emit *e) {
    LLVMValueRef fn = add_fn(e, ".cpu_check", e->i32, NULL, 0, false);
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
static LLVMValueRef emit_core(emit *e, LLVMValueRef body, LLVMValueRef check, LLVMValueRef consts) {
    const aot *a = e->a;
    LLVMTypeRef pt[4] = {e->ptr, e->i64, e->ptr, e->ptr};
    LLVMValueRef fn = a->live ? add_fn(e, ".core", e->i32, pt, 4, false) : add_fn(e, "_run", e->i32, pt + 1, 3, true);
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
    LLVMValueRef x = LLVMBuildLoad2(e->b, e->ptr, inputs, "x");
    LLVMValueRef y = LLVMBuildLoad2(e->b, e->ptr, outputs, "y");
    fail_if(e, fn,
            LLVMBuildOr(e->b, LLVMBuildICmp(e->b, LLVMIntEQ, x, null, ""), LLVMBuildICmp(e->b, LLVMIntEQ, y, null, ""),
                        ""),
            MJ_AOT_ERR_NULL);
    fail_if(e, fn,
            LLVMBuildOr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, batch, c64(e, 1), ""),
                        LLVMBuildICmp(e->b, LLVMIntSGT, batch, c64(e, a->max_batch), ""), ""),
            MJ_AOT_ERR_BATCH);
    /* x and y must not overlap (the body's y is noalias) */
    int64_t c;
    int p;
    type_poly(&a->g->nodes[a->in_node].type, &c, &p);
    LLVMValueRef in_bytes = poly(e, c * 4, p, batch);
    type_poly(&a->g->nodes[a->out_node].type, &c, &p);
    LLVMValueRef out_bytes = poly(e, c * 4, p, batch);
    LLVMValueRef xi = LLVMBuildPtrToInt(e->b, x, e->i64, ""), yi = LLVMBuildPtrToInt(e->b, y, e->i64, "");
    LLVMValueRef ov = LLVMBuildAnd(e->b, LLVMBuildICmp(e->b, LLVMIntULT, xi, LLVMBuildAdd(e->b, yi, out_bytes, ""), ""),
                                   LLVMBuildICmp(e->b, LLVMIntULT, yi, LLVMBuildAdd(e->b, xi, in_bytes, ""), ""), "");
    LLVMValueRef nonempty = LLVMBuildAnd(e->b, LLVMBuildICmp(e->b, LLVMIntNE, in_bytes, c64(e, 0), ""),
                                         LLVMBuildICmp(e->b, LLVMIntNE, out_bytes, c64(e, 0), ""), "");
    fail_if(e, fn, LLVMBuildAnd(e->b, ov, nonempty, ""), MJ_AOT_ERR_OVERLAP);
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

    LLVMPositionBuilderAtEnd(e->b, on_heap);
    LLVMTypeRef aat[2] = {e->i64, e->i64};
    LLVMTypeRef aa_ty = LLVMFunctionType(e->ptr, aat, 2, 0);
    LLVMTypeRef free_ty = LLVMFunctionType(LLVMVoidTypeInContext(e->ctx), &e->ptr, 1, 0);
    /* aligned_alloc wants a multiple of the alignment */
    LLVMValueRef bytes = LLVMBuildAnd(e->b, LLVMBuildAdd(e->b, LLVMBuildMul(e->b, n, c64(e, 4), ""), c64(e, 63), ""),
                                      c64(e, ~INT64_C(63)), "");
    LLVMValueRef aargs[2] = {c64(e, 64), bytes};
    LLVMValueRef buf = LLVMBuildCall2(e->b, aa_ty, libc_fn(e, "aligned_alloc", aa_ty), aargs, 2, "scratch");
    fail_if(e, fn, LLVMBuildICmp(e->b, LLVMIntEQ, buf, null, ""), MJ_AOT_ERR_NOMEM);
    LLVMBasicBlockRef heap_ok = LLVMGetInsertBlock(e->b);
    LLVMBuildBr(e->b, join);

    LLVMPositionBuilderAtEnd(e->b, join);
    LLVMValueRef base = LLVMBuildPhi(e->b, e->ptr, "base");
    LLVMValueRef bases[2] = {stack, buf};
    LLVMBasicBlockRef froms[2] = {on_stack, heap_ok};
    LLVMAddIncoming(base, bases, froms, 2);
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
    /* the body takes arrays of input and output pointers (one of each here:
     * check_graph); the caller's arrays are those, checked above */
    LLVMValueRef args[8] = {leaves_arg, inputs, outputs, batch, fptr(e, base, c64(e, a->pack_floats)), c64(e, 0), c64(e, 1), null};
    LLVMBuildCall2(e->b, LLVMGlobalGetValueType(body), body, args, 8, "");
    LLVMBasicBlockRef do_free = LLVMAppendBasicBlockInContext(e->ctx, fn, "free");
    LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(e->ctx, fn, "done");
    LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntEQ, base, stack, ""), done, do_free);
    LLVMPositionBuilderAtEnd(e->b, do_free);
    LLVMBuildCall2(e->b, free_ty, libc_fn(e, "free", free_ty), &base, 1, "");
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
static void emit_live_api(emit *e, LLVMValueRef core) {
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
    LLVMValueRef fn = add_fn(e, "_bind", e->i32, bt, 2, true);
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
    fn = add_fn(e, "_run", e->i32, rt, 3, true);
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
    fn = add_fn(e, "_run_with", e->i32, wt, 4, true);
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

static mj_status emit_strerror(emit *e, const char *need) {
    LLVMValueRef fn = add_fn(e, "_strerror", e->ptr, &e->i32, 1, true);
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

/* const int NAME_<what>_rank[1]; const int64_t NAME_<what>_dims[1][4] (-1 = B, 0 = unused) */
static void emit_shape_tables(emit *e, const char *what, const mj_type *t) {
    char nm[160];
    snprintf(nm, sizeof nm, "%s_%s_rank", e->name, what);
    LLVMValueRef r = c32(e, (uint32_t)t->rank);
    LLVMValueRef rank = LLVMConstArray2(e->i32, &r, 1);
    LLVMValueRef gv = LLVMAddGlobal(e->m, LLVMTypeOf(rank), nm);
    LLVMSetInitializer(gv, rank);
    LLVMSetGlobalConstant(gv, 1);
    LLVMValueRef d[4];
    for (int i = 0; i < 4; i++) d[i] = c64(e, i >= t->rank ? 0 : t->dims[i] == MJ_DIM_BATCH ? -1 : t->dims[i]);
    LLVMValueRef row = LLVMConstArray2(e->i64, d, 4);
    LLVMValueRef dims = LLVMConstArray2(LLVMTypeOf(row), &row, 1);
    snprintf(nm, sizeof nm, "%s_%s_dims", e->name, what);
    gv = LLVMAddGlobal(e->m, LLVMTypeOf(dims), nm);
    LLVMSetInitializer(gv, dims);
    LLVMSetGlobalConstant(gv, 1);
    LLVMSetAlignment(gv, 8);
}

/* Builds the module and emits the object file into *obj. */
static mj_status build_object(const aot *a, const target *t, const char *need, LLVMMemoryBufferRef *obj) {
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
    char *triple = LLVMGetTargetMachineTriple(tm);
    LLVMSetTarget(e.m, triple);
    LLVMDisposeMessage(triple);
    LLVMTargetDataRef td = LLVMCreateTargetDataLayout(tm);
    LLVMSetModuleDataLayout(e.m, td);
    LLVMDisposeTargetData(td);

    char fname[128];
    snprintf(fname, sizeof fname, "%s.body", e.name);
    mj_lower_options lo = {.numeric = a->o->numeric, .fname = fname, .fault = MJ_OP_COUNT};
    if (!a->live) {
        lo.baked = a->leaf_data;
        lo.baked_numel = a->numel;
    }
    if ((s = mj_lower_body(e.ctx, e.m, &a->plan, &lo)) != MJ_OK) goto out;
    LLVMPassBuilderOptionsRef po = LLVMCreatePassBuilderOptions();
    LLVMErrorRef err = LLVMRunPasses(e.m, mj_jit_pipeline(e.m), tm, po);
    LLVMDisposePassBuilderOptions(po);
    if (err) {
        s = mj_jit_llvm_error(err, "aot: optimising");
        goto out;
    }
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
    LLVMValueRef check = emit_cpu_check(&e);
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
    LLVMValueRef core = emit_core(&e, body, check, consts);
    if (a->live) emit_live_api(&e, core);
    emit_strerror(&e, need);
    emit_shape_tables(&e, "input", &a->g->nodes[a->in_node].type);
    emit_shape_tables(&e, "output", &a->g->nodes[a->out_node].type);
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

/* ---- the header ---------------------------------------------------------------- */

static void print_dims(FILE *f, const mj_type *t) {
    fputc('[', f);
    for (int d = 0; d < t->rank; d++) {
        if (d) fputs(", ", f);
        if (t->dims[d] == MJ_DIM_BATCH) fputc('B', f);
        else fprintf(f, "%lld", (long long)t->dims[d]);
    }
    fputc(']', f);
}

/* Text from a trace or the command line inside a C comment: printable
 * ASCII without '*' (no comment end can appear). */
static void print_safe(FILE *f, const char *s) {
    for (; *s; s++) fputc(*s >= 0x20 && *s < 0x7f && *s != '*' ? *s : '?', f);
}

static char *header_text(const aot *a, const target *t, const char *need, size_t *len) {
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (!f) return NULL;
    const char *N = a->o->name;
    char up[96];
    size_t i = 0;
    for (; N[i] && i + 1 < sizeof up; i++) up[i] = (N[i] >= 'a' && N[i] <= 'z') ? (char)(N[i] - 32) : N[i];
    up[i] = '\0';
    const mj_type *it = &a->g->nodes[a->in_node].type, *ot = &a->g->nodes[a->out_node].type;
    fprintf(f, "/* %s.h: generated by maskjit %s (maskjit aot); do not edit.\n *\n", N, MJ_VERSION_STRING);
    fprintf(f, " * %s: ", N);
    print_safe(f, a->o->description && *a->o->description ? a->o->description : "a traced model");
    fprintf(f, "\n *   input 0 \"");
    print_safe(f, a->g->nodes[a->in_node].name);
    fprintf(f, "\": float ");
    print_dims(f, it);
    fprintf(f, "\n *   output 0: float ");
    print_dims(f, ot);
    fprintf(f, "\n *   B = batch, 1 .. %s_MAX_BATCH; row-major, contiguous.\n", N);
    if (a->live)
        fprintf(f, " * Mode: live (the weights are read at every call from %s_bind's table or\n"
                   " * %s_run_with's argument; masks applied and weights packed on every call), ", N, N);
    else
        fprintf(f, " * Mode: frozen (the weights are read-only data in the object), ");
    fprintf(f, "%s.\n",
            a->o->numeric == MJ_NUMERIC_EXACT ? "exact (bit-identical to maskjit's eager and JIT exact mode)"
                                              : "fast (FMA and reassociation; float32 tolerances)");
    fprintf(f, " * Target: %s, CPU %s. %s_run checks these CPU features once and returns\n"
               " * %s_ERR_CPU on a CPU without them: %s.\n",
            t->triple, t->cpu, N, N, *need ? need : "(none)");
    if (t->unchecked)
        fprintf(f, " * Also enabled, not checked at run time: %s.\n", t->unchecked);
    fprintf(f, " * Link: %s.o (or %s.so) and -lm; no LLVM, no maskjit library, no threads.\n */\n", N, N);
    fprintf(f, "#ifndef %s_H_INCLUDED\n#define %s_H_INCLUDED\n\n#include <stdint.h>\n\n", up, up);
    fprintf(f, "#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n");
    fprintf(f, "enum { %s_NUM_INPUTS = 1, %s_NUM_OUTPUTS = 1 };\n", N, N);
    fprintf(f, "#define %s_MAX_BATCH INT64_C(%lld)\n", N, (long long)a->max_batch);
    fprintf(f, "#define %s_TARGET_CPU \"%s\"\n", N, t->cpu);
    fprintf(f, "#define %s_TARGET_FEATURES \"%s\"\n\n", N, need);
    fprintf(f, "/* Return codes of %s_run. */\n", N);
    fprintf(f,
            "enum {\n    %s_OK = %d,\n    %s_ERR_CPU = %d,     /* the CPU lacks a needed feature */\n"
            "    %s_ERR_NULL = %d,    /* a NULL array or buffer */\n"
            "    %s_ERR_BATCH = %d,   /* batch < 1 or > %s_MAX_BATCH */\n"
            "    %s_ERR_OVERLAP = %d, /* an input overlaps an output */\n"
            "    %s_ERR_NOMEM = %d,   /* no memory for intermediate values */\n"
            "    %s_ERR_KEY = %d,     /* %s_bind: no parameter of that name */\n"
            "    %s_ERR_UNBOUND = %d  /* live: a parameter is not bound or NULL */\n};\n\n",
            N, MJ_AOT_OK, N, MJ_AOT_ERR_CPU, N, MJ_AOT_ERR_NULL, N, MJ_AOT_ERR_BATCH, N, N, MJ_AOT_ERR_OVERLAP,
            N, MJ_AOT_ERR_NOMEM, N, MJ_AOT_ERR_KEY, N, N, MJ_AOT_ERR_UNBOUND);
    fprintf(f, "/* Shapes: rank, then dims (-1 = B, 0 past the rank). */\n");
    fprintf(f, "extern const int %s_input_rank[], %s_output_rank[];\n", N, N);
    fprintf(f, "extern const int64_t %s_input_dims[][4], %s_output_dims[][4];\n\n", N, N);
    fprintf(f, "/* outputs[i] = model(inputs...)[i] for `batch` rows. Returns 0, or a non-zero\n"
               " * code with %s_strerror(code) for a message. Reentrant and thread-safe:\n"
               " * no global state but a cached CPU check; one thread per call. */\n", N);
    fprintf(f, "int %s_run(int64_t batch, const float *const inputs[], float *const outputs[]);\n", N);
    fprintf(f, "const char *%s_strerror(int code);\n\n", N);
    if (a->live) {
        fprintf(f, "/* Live parameters, by their PyTorch state-dict names:\n");
        for (int32_t k = 0; k < a->n_params; k++) {
            const mj_node *pn = &a->g->nodes[a->param_node[k]];
            fprintf(f, " *   %d \"", (int)k);
            print_safe(f, pn->name);
            fprintf(f, "\": float ");
            print_dims(f, &pn->type);
            fputc('\n', f);
        }
        fprintf(f, " * The data is read (not copied) at every call: keep it alive and\n"
                   " * unchanged while a call runs. */\n");
        fprintf(f, "enum { %s_NUM_PARAMS = %d };\n", N, (int)a->n_params);
        fprintf(f, "extern const char *const %s_param_names[];\n", N);
        fprintf(f, "extern const int %s_param_rank[];\n", N);
        fprintf(f, "extern const int64_t %s_param_dims[][4];\n", N);
        fprintf(f, "/* Binds a parameter for %s_run (a process-wide table; NULL unbinds).\n"
                   " * Returns 0 or %s_ERR_KEY. */\n", N, N);
        fprintf(f, "int %s_bind(const char *name, const float *data);\n", N);
        fprintf(f, "/* %s_run with params[i] for %s_param_names[i] instead of the bound ones:\n"
                   " * no shared state. */\n", N, N);
        fprintf(f, "int %s_run_with(const float *const params[], int64_t batch, const float *const inputs[], "
                   "float *const outputs[]);\n\n", N);
    }
    fprintf(f, "#ifdef __cplusplus\n}\n#endif\n#endif\n");
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* ---- files ------------------------------------------------------------------ */

/* Writes data to a new temporary file dir/.name.XXXXXX (path in tmp). */
static mj_status write_temp(const char *dir, const char *name, const void *data, size_t n, char tmp[4096]) {
    if ((size_t)snprintf(tmp, 4096, "%s/.%s.XXXXXX", dir, name) >= 4096)
        return mj_fail(MJ_ERR_INVALID, "aot: the output path %s/%s is too long", dir, name);
    int fd = mkstemp(tmp);
    if (fd < 0) return mj_fail(MJ_ERR_IO, "aot: cannot create a file in %s: %s", dir, strerror(errno));
    const char *p = data;
    size_t left = n;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return mj_fail(MJ_ERR_IO, "aot: writing %s/%s failed: %s", dir, name, strerror(e));
        }
        p += w;
        left -= (size_t)w;
    }
    /* mkstemp makes 0600; an output is an ordinary build product */
    mode_t um = umask(0);
    umask(um);
    if (fchmod(fd, 0666 & ~um) != 0 || close(fd) != 0) {
        int e = errno;
        unlink(tmp);
        return mj_fail(MJ_ERR_IO, "aot: writing %s/%s failed: %s", dir, name, strerror(e));
    }
    return MJ_OK;
}

/* Writes dir/NAME.o and dir/NAME.h: both to temporary files first, then
 * renamed, so a failure leaves no partial file and (short of a failing
 * rename) no new object next to an old header. */
static mj_status write_outputs(const char *dir, const char *name, const void *obj, size_t obj_n, const char *hdr,
                               size_t hdr_n) {
    char fo[96], fh[96], to[4096], th[4096], po[4200], ph[4200];
    snprintf(fo, sizeof fo, "%s.o", name);
    snprintf(fh, sizeof fh, "%s.h", name);
    MJ_TRY(write_temp(dir, fo, obj, obj_n, to));
    mj_status s = write_temp(dir, fh, hdr, hdr_n, th);
    if (s != MJ_OK) {
        unlink(to);
        return s;
    }
    snprintf(po, sizeof po, "%s/%s", dir, fo);
    snprintf(ph, sizeof ph, "%s/%s", dir, fh);
    if (rename(to, po) != 0) {
        s = mj_fail(MJ_ERR_IO, "aot: cannot write %s: %s", po, strerror(errno));
        unlink(to);
        unlink(th);
        return s;
    }
    if (rename(th, ph) != 0) {
        s = mj_fail(MJ_ERR_IO, "aot: cannot write %s: %s", ph, strerror(errno));
        unlink(th);
        return s;
    }
    return MJ_OK;
}

/* cc -shared -o dir/.NAME.so.PID.tmp dir/NAME.o -lm, then rename: no shell. */
static mj_status link_shared(const char *dir, const char *name) {
    char obj[4096], tmp[4096], so[4096];
    if ((size_t)snprintf(obj, sizeof obj, "%s/%s.o", dir, name) >= sizeof obj ||
        (size_t)snprintf(tmp, sizeof tmp, "%s/.%s.so.%ld.tmp", dir, name, (long)getpid()) >= sizeof tmp ||
        (size_t)snprintf(so, sizeof so, "%s/%s.so", dir, name) >= sizeof so)
        return mj_fail(MJ_ERR_INVALID, "aot: the output path in %s is too long", dir);
    char *argv[] = {"cc", "-shared", "-o", tmp, obj, "-lm", NULL};
    pid_t pid;
    int rc = posix_spawnp(&pid, "cc", NULL, NULL, argv, environ);
    if (rc != 0)
        return mj_fail(MJ_ERR_UNSUPPORTED, "aot: --shared needs a C compiler `cc` on PATH to link %s.so: %s", name,
                       strerror(rc));
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return mj_fail(MJ_ERR_IO, "aot: waiting for cc failed: %s", strerror(errno));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        unlink(tmp);
        return mj_fail(MJ_ERR_IO, "aot: `cc -shared -o %s %s -lm` failed (status %d)", so, obj,
                       WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }
    if (rename(tmp, so) != 0) {
        int e = errno;
        unlink(tmp);
        return mj_fail(MJ_ERR_IO, "aot: cannot write %s: %s", so, strerror(e));
    }
    return MJ_OK;
}

static bool is_identifier(const char *s) {
    if (!s || !*s || strlen(s) > 64) return false;
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_')) return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return false;
    return true;
}

static mj_status ensure_dir(const char *dir) {
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) return mj_fail(MJ_ERR_IO, "aot: %s exists and is not a directory", dir);
        return MJ_OK;
    }
    if (mkdir(dir, 0777) != 0) return mj_fail(MJ_ERR_IO, "aot: cannot create the directory %s: %s", dir, strerror(errno));
    return MJ_OK;
}

static pthread_once_t llvm_once = PTHREAD_ONCE_INIT;
static bool llvm_ok;
static void llvm_init(void) {
    /* the asm parser: the CPU check is inline asm */
    llvm_ok = LLVMInitializeNativeTarget() == 0 && LLVMInitializeNativeAsmPrinter() == 0 &&
              LLVMInitializeNativeAsmParser() == 0;
}

mj_status mj_aot_compile(const mj_graph *g, const mj_aot_options *opts, const char *dir) {
    if (!g || !dir) return mj_fail(MJ_ERR_INVALID, "mj_aot_compile: %s is NULL", !g ? "the graph" : "dir");
    mj_aot_options o;
    if (opts) o = *opts;
    else mj_aot_options_init(&o);
    if (!o.name) o.name = "model";
    if (!is_identifier(o.name))
        return mj_fail(MJ_ERR_INVALID, "aot: name \"%.80s\" is not a C identifier of at most 64 characters", o.name);
    if ((unsigned)o.numeric > MJ_NUMERIC_FAST)
        return mj_fail(MJ_ERR_INVALID, "aot: unknown numeric mode %d", (int)o.numeric);
    if (!*dir) return mj_fail(MJ_ERR_INVALID, "aot: the output directory is empty");
    pthread_once(&llvm_once, llvm_init);
    if (!llvm_ok) return mj_fail(MJ_ERR_BACKEND, "LLVM has no native target for this host");

    target t;
    MJ_TRY(target_init(&o, &t));
    aot a;
    LLVMMemoryBufferRef obj = NULL;
    char *need = NULL, *hdr = NULL;
    size_t hdr_len = 0;
    mj_status s = prepare(g, &o, &t, &a);
    if (s != MJ_OK) goto out;
    if (!(need = need_list(&t))) {
        s = MJ_ERR_NOMEM;
        goto out;
    }
    if ((s = build_object(&a, &t, need, &obj)) != MJ_OK) goto out;
    if (!(hdr = header_text(&a, &t, need, &hdr_len))) {
        s = mj_fail(MJ_ERR_NOMEM, "aot: out of memory for the header");
        goto out;
    }
    if ((s = ensure_dir(dir)) != MJ_OK) goto out;
    if ((s = write_outputs(dir, o.name, LLVMGetBufferStart(obj), LLVMGetBufferSize(obj), hdr, hdr_len)) != MJ_OK)
        goto out;
    if (o.shared) s = link_shared(dir, o.name);
out:
    if (obj) LLVMDisposeMemoryBuffer(obj);
    free(hdr);
    free(need);
    aot_free(&a);
    target_free(&t);
    return s;
}
