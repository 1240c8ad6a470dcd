/* Internal to ahead-of-time compilation (jit/aot*.c): the target and the
 * CPU features it needs, the prepared graph, and the state of the module
 * being built. */
#ifndef MJ_JIT_AOT_INTERNAL_H
#define MJ_JIT_AOT_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <llvm-c/Core.h>

#include "aot.h"
#include "jit_internal.h"

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

typedef struct aot {
    const mj_aot_options *o;
    mj_graph *g;
    bool *input_free;
    mj_body_plan plan;
    mj_tensor **vals;  /* prologue values */
    float **packed;
    const float **leaf_data;
    int64_t *numel;
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

typedef struct emit {
    LLVMContextRef ctx;
    LLVMModuleRef m;
    LLVMBuilderRef b;
    LLVMTypeRef i1, i32, i64, ptr;
    const aot *a;
    const target *t;
    char name[96];
} emit;

static inline LLVMValueRef c64(emit *e, int64_t v) { return LLVMConstInt(e->i64, (unsigned long long)v, 1); }
static inline LLVMValueRef c32(emit *e, uint32_t v) { return LLVMConstInt(e->i32, v, 0); }

/* register r (0 eax .. 3 edx) of a cpuid result */
static inline LLVMValueRef reg(emit *e, LLVMValueRef regs, int r) { return LLVMBuildExtractValue(e->b, regs, (unsigned)r, ""); }

/* aot_target.c */
mj_status mj_aot_target_init(const mj_aot_options *o, target *t);
void mj_aot_target_free(target *t);
/* "avx,avx2,fma": the features the run-time check requires. */
char *mj_aot_need_list(const target *t);
/* int check(void): 0 if the CPU (and the OS, for vector state) has every
 * needed feature, else MJ_AOT_ERR_CPU; the answer is kept in a global. */
LLVMValueRef mj_aot_emit_cpu_check(emit *e);

/* aot_graph.c */
mj_status mj_aot_prepare(const mj_graph *g0, const mj_aot_options *o, const target *t, aot *a);
void mj_aot_free(aot *a);
/* coef * B^pow for a type (coef: the concrete dims' product). */
void mj_aot_type_poly(const mj_type *t, int64_t *coef, int *pow);

/* aot_object.c */
/* A function NAME<suffix> of the module, compiled for the baseline x86-64. */
LLVMValueRef mj_aot_add_fn(emit *e, const char *suffix, LLVMTypeRef ret, LLVMTypeRef *params, unsigned n,
                           bool exported);
/* Builds the module and emits the object file into *obj. */
mj_status mj_aot_build_object(const aot *a, const target *t, const char *need, LLVMMemoryBufferRef *obj);

/* aot_wrapper.c */
/* int core(const float *const params[], int64_t batch, const float *const
 * inputs[], float *const outputs[]): the checks, the scratch, the leaves,
 * the body. */
LLVMValueRef mj_aot_emit_core(emit *e, LLVMValueRef body, LLVMValueRef check, LLVMValueRef consts);
/* Live: the param table, NAME_bind, NAME_run over the bound table,
 * NAME_run_with. */
void mj_aot_emit_live_api(emit *e, LLVMValueRef core);
mj_status mj_aot_emit_strerror(emit *e, const char *need);
/* const int NAME_<what>_rank[1]; const int64_t NAME_<what>_dims[1][4] */
void mj_aot_emit_shape_tables(emit *e, const char *what, const int32_t *nodes, int32_t n);

/* aot_header.c: the header's text (malloc'd, *len bytes) */
char *mj_aot_header_text(const aot *a, const target *t, const char *need, size_t *len);

#endif
