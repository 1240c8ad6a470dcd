/* The compile cache (docs/cache.md): object files keyed by a SHA-256 of
 * everything that decides the generated code, stored as <dir>/<hex>.o with
 * atomic writes, so processes can share one directory. */
#ifndef MJ_JIT_CACHE_H
#define MJ_JIT_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llvm-c/Core.h>
#include <llvm-c/Orc.h>

#include "../ir/ir.h"
#include "maskjit/jit.h"

/* Bump when the key's inputs or the lowering's calling convention change in
 * a way the other key parts do not capture. */
#define MJ_CACHE_FORMAT 1

/* ---- SHA-256 (FIPS 180-2) ------------------------------------------------- */

typedef struct mj_sha256 {
    uint32_t h[8];
    uint64_t bytes;
    uint8_t buf[64];
    size_t n;
} mj_sha256;

void mj_sha256_init(mj_sha256 *s);
void mj_sha256_update(mj_sha256 *s, const void *data, size_t n);
void mj_sha256_final(mj_sha256 *s, uint8_t digest[32]);
/* 64 lowercase hex digits and a NUL */
void mj_sha256_hex(const uint8_t digest[32], char hex[65]);

/* ---- the key -------------------------------------------------------------- */

/* What decides the code, besides the graph. */
typedef struct mj_cache_target {
    const char *cpu;      /* LLVMGetHostCPUName */
    const char *features; /* LLVMGetHostCPUFeatures */
} mj_cache_target;

/* hex = SHA-256 over: a tag and MJ_CACHE_FORMAT, the maskjit and LLVM
 * versions, the CPU name and features, the options that change code
 * (numeric mode, frozen, threads), the graph's printed IR, and the data
 * bytes of every const (frozen weights; params are read at run time). Each
 * part is length-prefixed, so no two different inputs share a stream. */
mj_status mj_cache_key(const mj_graph *g, const mj_compile_options *o, const mj_cache_target *t, char hex[65]);

/* ---- the directory --------------------------------------------------------- */

/* The directory to use (malloc'd), or NULL when the cache is off
 * (o->use_cache false or MASKJIT_CACHE=0) or no directory can be named:
 * o->cache_dir, else $MASKJIT_CACHE_DIR, else $XDG_CACHE_HOME/maskjit, else
 * $HOME/.cache/maskjit. */
char *mj_cache_dir(const mj_compile_options *o);

/* <dir>/<hex>.o as a memory buffer (caller disposes). False when absent or
 * unreadable (a miss). */
bool mj_cache_load(const char *dir, const char *hex, LLVMMemoryBufferRef *out);
/* Writes <dir>/<hex>.o atomically: a temp file in dir, fsync, rename.
 * Creates dir (and missing parents). Never leaves a partial entry. */
mj_status mj_cache_store(const char *dir, const char *hex, const void *data, size_t n);
/* Deletes <dir>/<hex>.o and .bc (a corrupt entry). */
void mj_cache_remove(const char *dir, const char *hex);
/* The optimised module's bitcode, kept next to the object for dumps:
 * <dir>/<hex>.bc, written before the .o so a reader that sees the object
 * finds it. Load returns a malloc'd copy, or false. */
mj_status mj_cache_store_bitcode(const char *dir, const char *hex, const void *data, size_t n);
bool mj_cache_load_bitcode(const char *dir, const char *hex, char **data, size_t *n);

/* ---- object code (the compile path the cache needs) ------------------------ */

typedef struct mj_jit mj_jit;

/* Optimises m (default<O3>) for the host, keeps it as bitcode (for dumps)
 * and emits an object file (position independent, small code model: what
 * the JIT's linker expects). Takes ownership of tsc and m. */
mj_status mj_cache_codegen(mj_jit *jit, LLVMOrcThreadSafeContextRef tsc, LLVMModuleRef m, LLVMMemoryBufferRef *obj,
                           char **bitcode, size_t *bitcode_size, mj_compile_stats *stats);
/* Adds the object (taking the buffer) under a new resource tracker to a
 * JITDylib of its own (fname is defined once per JITDylib, so the same
 * object can be loaded any number of times in a process) and looks fname
 * up. Removing the tracker (mj_jit_remove) frees the code and the
 * JITDylib for reuse. On failure nothing stays behind. */
mj_status mj_cache_link(mj_jit *jit, LLVMMemoryBufferRef obj, const char *fname, LLVMOrcResourceTrackerRef *rt,
                        uint64_t *addr);

#endif
