/* Ahead-of-time compilation (docs/aot.md): a graph into DIR/NAME.o, a
 * position-independent object file that needs only libc and libm, and
 * DIR/NAME.h, a self-contained C header for it. Used by `maskjit aot`.
 * No LLVM types here: the CLI and the tests include it. */
#ifndef MJ_JIT_AOT_H
#define MJ_JIT_AOT_H

#include <stdbool.h>

#include "maskjit.h"

typedef struct mj_aot_options {
    const char *name;        /* C identifier prefix of every symbol; default "model" */
    mj_numeric_mode numeric; /* exact (default) or fast                            */
    /* true (default): weights become read-only data in the object; false
     * (live): NAME_bind / NAME_run_with supply them at run time. */
    bool frozen;
    /* NULL or "host": this machine's CPU and features (the default);
     * "x86-64", "x86-64-v2", "x86-64-v3" (AVX2, FMA), "x86-64-v4" (AVX-512):
     * the psABI levels, to ship to other machines. */
    const char *target_cpu;
    /* Extra LLVM features, "+f1,-f2", applied after the CPU's. */
    const char *features;
    /* Also link DIR/NAME.so with `cc -shared` (cc must be on PATH). */
    bool shared;
    /* One line for the header's comment (e.g. the model spec); may be NULL. */
    const char *description;
} mj_aot_options;

void mj_aot_options_init(mj_aot_options *o);

/* Compiles g (copied, never changed) and writes DIR/NAME.o and DIR/NAME.h
 * (and DIR/NAME.so with o->shared), each atomically (a temporary file in
 * DIR renamed into place): on failure no output file is half written.
 * Creates DIR if its parent exists. Same graph and options, same bytes. */
mj_status mj_aot_compile(const mj_graph *g, const mj_aot_options *o, const char *dir);

/* The checks mj_aot_compile makes of o alone (name, numeric mode, target
 * CPU and features), without a graph: MJ_OK, or the error it would fail
 * with. For front ends that tell bad arguments from bad models. */
mj_status mj_aot_options_check(const mj_aot_options *o);

/* NAME_run's return codes (also in the generated header). */
enum {
    MJ_AOT_OK = 0,
    MJ_AOT_ERR_CPU = 1,      /* the CPU lacks a feature the code was compiled for */
    MJ_AOT_ERR_NULL = 2,     /* inputs, outputs or one of their pointers is NULL  */
    MJ_AOT_ERR_BATCH = 3,    /* batch < 1 or > NAME_MAX_BATCH                     */
    MJ_AOT_ERR_OVERLAP = 4,  /* an output overlaps an input or another output     */
    MJ_AOT_ERR_NOMEM = 5,    /* no memory for the intermediate values             */
    MJ_AOT_ERR_KEY = 6,      /* NAME_bind: no parameter of that name              */
    MJ_AOT_ERR_UNBOUND = 7,  /* live: a parameter is not bound (or NULL)          */
};

#endif
