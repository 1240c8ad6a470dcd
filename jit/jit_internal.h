/* Internal to the LLVM backend (jit/): the JIT instance, the lowering plan
 * shared by the lowering (lower*.c: IR -> LLVM IR) and the compiled graph
 * (compile.c, compiled_run.c: runtime), and the body's calling convention.
 * The compiled object itself is in compiled.h. */
#ifndef MJ_JIT_INTERNAL_H
#define MJ_JIT_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <llvm-c/Core.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/Orc.h>
#include <llvm-c/TargetMachine.h>

#include "../ir/ir.h"
#include "maskjit/jit.h"

#include "sparse.h"

struct mj_jit {
    LLVMOrcLLJITRef lljit;
    char *cpu;      /* LLVMGetHostCPUName, disposed with LLVMDisposeMessage */
    char *features; /* LLVMGetHostCPUFeatures */
    char *triple;
    /* MASKJIT_JIT_PASSES when the JIT was created (malloc'd), or NULL: a
     * pipeline that replaces mj_jit_pipeline's, for measuring pipelines;
     * part of the compile cache's key (it changes the code). */
    char *passes;
    pthread_mutex_t mu; /* serialises linking into JITDylibs and code removal */
    uint64_t next_id;   /* unique symbol names: mj_body_<id> */
    mj_op fault;        /* test-only (jit_test.h); MJ_OP_COUNT: none */
    /* the owner's reference and one per mj_compiled: compiled code lives in
     * the LLJIT, so the last of them to go disposes of it */
    atomic_int refs;
};

void mj_jit_retain(mj_jit *jit);
void mj_jit_release(mj_jit *jit);

/* One buffer the body reads that no input influences: a prologue value,
 * either as it is or (packed) as the transpose of a linear weight [out,in],
 * laid out [in][out] so the j loop reads contiguous rows. */
typedef struct mj_leaf {
    int32_t node;
    bool packed;
} mj_leaf;

/* What the lowering needs to know about the split graph (lower_plan.c). */
typedef struct mj_body_plan {
    const mj_graph *g;
    const bool *input_free;    /* per node: depends on no input (prologue)    */
    int32_t *leaf_plain;       /* per node: leaf index of the value, or -1     */
    int32_t *leaf_packed;      /* per node: leaf index of its transpose, or -1 */
    mj_leaf *leaves;
    int32_t n_leaves;
    bool *has_slot;            /* per node: owns a scratch slice               */
    int32_t n_in, n_out;       /* the graph's inputs and outputs               */
    int32_t *in_nodes;         /* per input: its node (graph order)            */
    int32_t *out_nodes;        /* per output: the graph's output value         */
    int32_t *out_root;         /* per output: node whose slice is y[j] itself,
                                  or -1 (copied at the end)                    */
    int32_t *root_of;          /* per node: the output it writes, or -1        */
    /* Code shape, from the JIT's target:
     * vw floats per vector (16 AVX-512, 8 AVX2, 4 otherwise), packed linear
     * weights in panels of panel = nr*vw output columns (see mj_pack_panels);
     * vregs vector registers (32 with AVX-512, 16 with AVX2). */
    int vw, nr, vregs;
    int64_t panel;
    bool *sparse;              /* per linear node: emitted by jit/sparse.c     */
    int32_t *sparse_next;      /* per sparse node: the next layer of its chain
                                  (one function, jit/sparse.c; the value in
                                  between is never stored), or -1             */
    bool frozen;               /* constant weights may shape the code          */
    int32_t *fused_by;         /* per node: the conv2d or matmul whose store
                                  computes it (its tail: batch_norm,
                                  activations, a residual add; a matmul's: a
                                  division by a scalar, an add of a row), or
                                  -1                                           */
    int32_t *tail_out;         /* per conv2d and matmul: the node whose
                                  storage it writes (the last of its tail, or
                                  itself); -1 for other nodes                  */
    int32_t *attn_pv;          /* per matmul: the matmul of the softmax of its
                                  value (attention's P V) that runs in its
                                  loop over matrices, one matrix at a time
                                  through both and the softmax between
                                  (mj_lw_emit_attention), or -1                */
    int32_t *attn_in;          /* per softmax and matmul run that way: the
                                  matmul whose loop runs it, or -1             */
    int32_t *padded_by;        /* per node: stored zero-padded as the input of
                                  this frozen sparse conv (its only readers are
                                  such convs; a sparse conv writes it), or -1  */
    int32_t *view_base;        /* per permute or transpose that only matmuls
                                  (and such views) read: the node whose
                                  storage they read it from in place, with
                                  view_dim's strides; it has no storage and
                                  no code of its own. Else -1               */
    int8_t *view_dim;          /* [node * MJ_MAX_RANK + d]: for a view, the
                                  dim of its base that its dim d walks       */
    int8_t *conv_how;          /* per conv2d of the body: how it is lowered
                                  (mj_conv_lowering, jit/lower_cnn.h; each way
                                  splits its work between column mode's
                                  threads), or -1                              */
} mj_body_plan;

/* The operand dim that each dim of a permute or transpose node walks. */
void mj_node_perm(const mj_node *n, int *perm);

/* A matmul's b panel copied for the micro-kernels is at most this many
 * floats (K x the panel width; lower_gemm.c). */
#define MJ_GEMM_PACK_MAX_FLOATS (16 << 10)

/* Packs W[N][K] into column panels of width P: panel p (columns
 * j0 = p*P .. min(N, j0+P), width pw) is [K][pw] at offset K*j0. With P >= N
 * this is the plain transpose Wt[K][N]. K*N floats. */
void mj_pack_panels(const float *w, int64_t N, int64_t K, int64_t P, float *out);
/* Vector width in floats for a feature string (the JIT's). */
int mj_features_vector_width(const char *features);
/* A cache size of this host in bytes (sysconf's name: _SC_LEVEL1_DCACHE_SIZE,
 * _SC_LEVEL2_CACHE_SIZE, _SC_LEVEL1_DCACHE_LINESIZE), or fallback where the
 * system does not know it or reports a value outside [lo, hi]. */
int64_t mj_host_cache_bytes(int name, int64_t lo, int64_t hi, int64_t fallback);

/* Builds the plan for a graph whose input_free flags are known (allocates
 * the arrays; mj_body_plan_free releases them). */
/* fault: the test-only fault's op (MJ_OP_COUNT for none), which must keep
 * its code: its nodes are never views. */
mj_status mj_body_plan_build(const mj_graph *g, const bool *input_free, bool frozen, int vw, mj_op fault,
                             mj_body_plan *p);
/* A slot of padded_by >= 0 holds per_image floats per image of its batch
 * dim plus the returned floats once; 0 (per_image -1) for other nodes. */
int64_t mj_body_padded_floats(const mj_body_plan *p, int32_t i, int64_t *per_image);
void mj_body_plan_free(mj_body_plan *p);
/* Whether matmul node m runs on the register-tiled micro-kernels (its K
 * and N known): only those take a tail or run attention's loop. */
bool mj_body_matmul_on_kernels(const mj_graph *g, int32_t m);
/* The layer that extends a chain (head .. last) of layers run as one piece
 * of code at head's place (jit/lower.c's small layers, the sparse chains):
 * the one user of last's value (uses: per node, outputs counted), reading it
 * as x, when that value is no output and no output's storage and the user's
 * residual, if any, exists before head. -1 if none; the caller checks that
 * the user is a layer of the chain's kind. */
int32_t mj_body_chain_next(const mj_body_plan *p, const int32_t *uses, int32_t head, int32_t last);
/* Floats of scratch the body needs at this batch (slices rounded up to 16
 * floats so each starts 64-byte aligned). MJ_ERR_LIMIT on overflow. */
mj_status mj_body_scratch_floats(const mj_body_plan *p, int64_t batch, int64_t *out);
/* Of that, the sparse linear layers' part (jit/sparse.c; one region that
 * every chain of them uses in turn, fixed-size chunks: not the batch's). */
int64_t mj_body_sparse_linear_floats(const mj_body_plan *p);
/* In column mode every thread runs its share of each sparse linear layer's
 * rows, and of each sparse conv's tiles, in a region of its own, thread
 * tid's this many floats times tid past thread 0's: a call on nth threads
 * needs (nth - 1) times it more scratch. */
int64_t mj_body_sparse_thread_stride(const mj_body_plan *p);
/* The fewest rows a sparse linear layer has per batch item (128 for a layer
 * on [B, 128, 768]; 1 for [B, 768]); 0 without such layers. */
int64_t mj_body_sparse_rows_per_item(const mj_body_plan *p);
/* Of that, the frozen sparse convs' part (jit/lower_conv_sparse.c; they run
 * one image at a time, so it does not grow with the batch). */
int64_t mj_body_conv_scratch_floats(const mj_body_plan *p);
/* Does the body have a conv (whose work column mode's threads share)? */
bool mj_body_has_conv(const mj_body_plan *p);

typedef struct mj_lower_options {
    mj_numeric_mode numeric;
    const char *fname;
    /* Frozen: leaf data baked into the module as private constants
     * (n_leaves entries, numel floats each); NULL in live mode. */
    const float *const *baked;
    const int64_t *baked_numel;
    /* Test-only fault injection (mj_jit_inject_fault, jit_test.h): each
     * node of this op gets 0.5 added to its value; MJ_OP_COUNT: none. */
    mj_op fault;
} mj_lower_options;

/* Emits `void fname(const float *const *leaves, const float *const *x,
 * float *const *y, int64_t batch, float *scratch, int64_t tid, int64_t nth,
 * mj_body_sync *sync)` into m (in context ctx): x[i] is input i, y[j]
 * output j (no output overlaps an input or another output). With nth = 1
 * (tid 0, sync unused) one
 * call computes everything. With nth > 1, nth threads make the same call
 * on the same buffers with tid 0..nth-1 (column mode): each packed linear
 * layer's panels of output columns are claimed by them (sync->claim), every other op
 * runs on thread 0, and all meet at sync->wait after each op. Every output
 * element is still computed by one thread in the same order. */
mj_status mj_lower_body(LLVMContextRef ctx, LLVMModuleRef m, const mj_body_plan *p,
                        const mj_lower_options *o);
/* Does node i split its output columns in column mode (a packed linear
 * layer that is neither a small chain's nor a sparse one)? */
bool mj_body_splits_columns(const mj_body_plan *p, int32_t i);

typedef struct mj_body_sync mj_body_sync;
struct mj_body_sync {
    /* first member: the generated code loads and calls it as
     * wait(sync, y, scratch); passing y (the output, or with several an
     * array of their pointers) and scratch tells LLVM the call may write
     * them (they are noalias arguments of the body) */
    void (*wait)(mj_body_sync *sync, void *y, void *scratch);
    /* second member (loaded by the generated code too): the next n items
     * of the current op's shared work, from `next`, which every barrier
     * and every call start at 0 */
    int64_t (*claim)(mj_body_sync *sync, int64_t n);
    atomic_llong next;
    atomic_int arrived;
    atomic_uint phase;
    int n;
};

typedef void (*mj_body_fn)(const float *const *leaves, const float *const *x, float *const *y, int64_t batch,
                           float *scratch, int64_t tid, int64_t nth, mj_body_sync *sync);

/* The prologue (prologue.c), shared by the JIT and AOT (aot_graph.c), which
 * must compute it the same way: the nodes some leaf of p depends on
 * (malloc'd flags, NULL when out of memory); their values into vals (one
 * per node, NULL where not computed), with the interpreter's kernels
 * (bit-identical to eager), messages starting with who; a weight W[N][K]
 * packed into the panels the linear kernels stream (malloc'd, NULL when
 * out of memory). */
bool *mj_prologue_needed(const mj_graph *g, const mj_body_plan *p);
mj_status mj_prologue_eval(const mj_graph *g, const bool *needed, mj_tensor **vals, const char *who);
float *mj_prologue_pack(const mj_tensor *w, int64_t panel);
/* The leaves' buffers from the values: packed ones packed (into packed[i]),
 * the others the value's data; NULL for params when params_live (the
 * caller reads them at run time). */
mj_status mj_prologue_leaves(const mj_graph *g, const mj_body_plan *p, mj_tensor *const *vals, bool params_live,
                             float **packed, const float **leaf_data);
/* Frees what the functions above made for g and p: vals (and their
 * references), packed (per leaf) and leaf_data; any may be NULL. */
void mj_prologue_release(const mj_graph *g, const mj_body_plan *p, mj_tensor **vals, float **packed,
                         const float **leaf_data);

/* What compiled bodies need of a graph's nodes: every input has the batch
 * B as its first dim and only there; every param and const is bound.
 * Messages start with who ("jit", "aot"). */
mj_status mj_jit_check_nodes(const mj_graph *g, const char *who);

/* A target machine for the JIT's triple, CPU and features (forced ones
 * included), O3 code generation, with this relocation model and code model. */
mj_status mj_jit_target_machine(const mj_jit *jit, LLVMRelocMode reloc, LLVMCodeModel model,
                                LLVMTargetMachineRef *out);
/* Scratch slices start on 16-float (64-byte) boundaries. */
static inline int64_t mj_round16(int64_t n) { return (n + 15) & ~INT64_C(15); }
/* How many of w[0..n) are not +-0 (NaN counts): in 8 independent lanes the
 * compiler vectorises, since a frozen compile or cache hit scans every
 * weight (jit/sparse_plan.c). */
int64_t mj_count_nonzero(const float *w, int64_t n);
/* Gives module m tm's triple and data layout, as code generation needs. */
void mj_jit_set_module_target(LLVMModuleRef m, LLVMTargetMachineRef tm);
/* Rows per micro-kernel call of the GEMM (lower_gemm.c). The runtime splits the
 * output columns between threads instead of the rows when each thread would
 * get fewer rows than this (compiled_run.c): one constant, so they agree. */
#define MJ_MK_MAX_ROWS 6
static inline double mj_ms_since(double t0) { return (mj_now_seconds() - t0) * 1e3; }

/* The new-PM pipeline for a lowered module: a cheap clean-up when the body
 * is explicit vector code (module flag MJ_FLAG_EXPLICIT), else default<O2>.
 * A fused residual (linear_add) counts as the loop it replaced, so fusing
 * never changes the pipeline (jit/lower.c). A JIT's passes (set from
 * MASKJIT_JIT_PASSES) replace it; the environment is read by mj_jit_new
 * only. */
#define MJ_FLAG_EXPLICIT "maskjit.explicit"
const char *mj_jit_pipeline(LLVMModuleRef m);
/* A function attribute: fn is explicit vector code (jit/sparse.c) and gets
 * the clean-up pipeline even in a module that needs default<O2> for its
 * loops (jit/pipeline.c). */
#define MJ_ATTR_EXPLICIT "maskjit.explicit"
void mj_mark_explicit(LLVMValueRef fn);
/* Runs the passes on m for tm: passes (a JIT's override) if not NULL, else
 * mj_jit_pipeline's, with functions marked explicit held to the clean-up
 * pipeline. Errors are MJ_ERR_BACKEND "what: <LLVM's message>". */
mj_status mj_jit_optimize(LLVMModuleRef m, LLVMTargetMachineRef tm, const char *passes, const char *what);
/* Frozen compiles freeze their private clone of the user's graph without
 * copying the parameters (mj_graph_freeze_as), since the graph passes
 * replace the big masked weights anyway; this then copies every const of
 * frozen still sharing a param tensor of user, so that later writes to the
 * user's parameters never reach the compiled graph. */
mj_status mj_unshare_consts(mj_graph *frozen, const mj_graph *user);
/* Frees a compiled module's code. */
void mj_jit_remove(mj_jit *jit, LLVMOrcResourceTrackerRef rt);
/* Removes a tracker's code and releases it (caller holds the JIT mutex or
 * owns the tracker alone); NULL is ignored. */
void mj_rt_discard(LLVMOrcResourceTrackerRef rt);
/* A private, unnamed_addr, 64-byte aligned constant global holding bytes. */
LLVMValueRef mj_llvm_const_bytes(LLVMModuleRef m, LLVMContextRef ctx, const char *name,
                                 const void *data, size_t bytes);
/* Optimises m as a compile does and writes it as LLVM IR text (what="ir")
 * or host assembly ("asm"); m stays the caller's. */
mj_status mj_jit_dump(mj_jit *jit, LLVMModuleRef m, const char *what, FILE *f);
/* Turns an LLVMErrorRef into MJ_ERR_BACKEND with "what: <LLVM's message>". */
mj_status mj_jit_llvm_error(LLVMErrorRef err, const char *what);
/* MJ_ERR_LIMIT when compiling g would likely exhaust the process's address
 * space limit (LLVM aborts on out of memory instead of failing): jit.c. */
mj_status mj_jit_check_memory(const mj_graph *g, bool frozen);

#endif
