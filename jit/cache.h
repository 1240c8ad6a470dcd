/* The compile cache (docs/cache.md): object files keyed by a SHA-256 of
 * everything that decides the generated code, stored as <dir>/<hex>.mjc
 * (a header with the key and a checksum, the object, the bitcode) with
 * atomic writes, so processes can share one directory; a size cap evicts
 * the least recently used entries. */
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
#define MJ_CACHE_FORMAT 3

/* The size cap when MASKJIT_CACHE_MAX_MB is unset: 1 GiB. */
#define MJ_CACHE_DEFAULT_MAX_MB 1024
/* The largest MASKJIT_CACHE_MAX_MB (1 EiB): MiB to bytes cannot overflow. */
#define MJ_CACHE_MAX_MB_LIMIT ((uint64_t)1 << 40)
/* A writer's temp file this old (seconds) was abandoned (a crash). */
#define MJ_CACHE_TEMP_STALE_S 3600

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

/* ---- a fast digest (jit/fasthash.c) ----------------------------------------- */

/* XXH64 of n bytes with this seed (xxHash's reference values). */
uint64_t mj_xxh64(const void *data, size_t n, uint64_t seed);
/* 16 bytes: XXH64 with seeds 0 and 0x9E3779B97F4A7C15, little-endian, in
 * one pass over the data (~5-10x SHA-256's speed). Detects any accidental
 * change; not a defence against someone crafting collisions. */
void mj_fasthash128(const void *data, size_t n, uint8_t out[16]);

/* ---- the key -------------------------------------------------------------- */

/* What decides the code, besides the graph. */
typedef struct mj_cache_target {
    const char *cpu;      /* LLVMGetHostCPUName */
    const char *features; /* LLVMGetHostCPUFeatures */
    const char *passes;   /* the JIT's pipeline override, or NULL */
} mj_cache_target;

/* hex = SHA-256 over: a tag and MJ_CACHE_FORMAT, the maskjit and LLVM
 * versions, the CPU name and features, the JIT's pipeline override (if
 * any), the options that change code
 * (numeric mode, frozen, threads), the graph's printed IR, and the
 * mj_fasthash128 digest of the data bytes of every const (frozen weights;
 * params are read at run time). Each part is length-prefixed, so no two
 * different inputs share a stream. */
mj_status mj_cache_key(const mj_graph *g, const mj_compile_options *o, const mj_cache_target *t, char hex[65]);

/* ---- the directory --------------------------------------------------------- */

/* The directory to use (malloc'd), or NULL when the cache is off
 * (o->use_cache false or MASKJIT_CACHE=0) or no directory can be named:
 * o->cache_dir, else mj_cache_default_dir(). */
char *mj_cache_dir(const mj_compile_options *o);
/* $MASKJIT_CACHE_DIR, else $XDG_CACHE_HOME/maskjit, else
 * $HOME/.cache/maskjit (malloc'd), or NULL; ignores the off switches. */
char *mj_cache_default_dir(void);
/* The size cap in bytes from MASKJIT_CACHE_MAX_MB (MiB, digits only;
 * 0 = no limit; unset or empty = MJ_CACHE_DEFAULT_MAX_MB). A bad value is
 * MJ_ERR_INVALID naming it, with *bytes set to the default. */
mj_status mj_cache_max_bytes(uint64_t *bytes);

/* ---- entries ------------------------------------------------------------------ */

typedef enum mj_cache_lookup {
    MJ_CACHE_MISS,  /* nothing at the entry's name */
    MJ_CACHE_FOUND, /* a verified entry for this key */
    MJ_CACHE_BAD    /* something else is there: why says what */
} mj_cache_lookup;

typedef struct mj_cache_entry {
    LLVMMemoryBufferRef obj; /* the object file, a view of payload */
    char *bitcode;           /* in payload, for dumps */
    size_t bitcode_size;
    char *payload; /* object and bitcode as read; freed by mj_cache_entry_dispose */
} mj_cache_entry;

/* Reads <dir>/<hex>.mjc and verifies it (magic, format, this key, sizes,
 * the SHA-256 of header and payload) before anything uses it. Only a
 * regular file is opened, never blocking and never through a symlink. A
 * hit sets the file's times to now (the eviction order). */
mj_cache_lookup mj_cache_load(const char *dir, const char *hex, mj_cache_entry *out, char *why, size_t why_size);
void mj_cache_entry_dispose(mj_cache_entry *e);
/* Writes <dir>/<hex>.mjc atomically (a 0600 temp file in dir, fsync,
 * rename over the name), creating dir and missing parents 0700. Then, when
 * max_bytes is not 0, evicts least-recently-used entries until the entries
 * total at most max_bytes; an entry larger than max_bytes is not stored
 * (MJ_ERR_LIMIT). Never leaves a partial entry. */
mj_status mj_cache_store(const char *dir, const char *hex, const void *obj, size_t obj_size, const void *bitcode,
                         size_t bitcode_size, uint64_t max_bytes);
/* Deletes <dir>/<hex>.mjc (a bad entry). */
void mj_cache_remove(const char *dir, const char *hex);

/* Are the n characters of s lowercase hex digits? (cache_store.c) */
bool mj_cache_all_hex(const char *s, size_t n);

/* ---- usage, eviction (maskjit cache) ------------------------------------------ */

/* Only regular files whose names are maskjit's count and are ever removed:
 * entries <hex>.mjc, the first format's <hex>.o and <hex>.bc (entries of an
 * older format: never read, evicted like the others), and writers' temp
 * files .<16 hex>.<6 letters/digits>. */
typedef struct mj_cache_usage {
    int64_t entries;     /* entry files, older formats included */
    uint64_t bytes;      /* their total size (what the cap bounds) */
    int64_t old_entries; /* of entries: an older format's files */
    int64_t temp_files;  /* writers' temp files (not under the cap) */
    uint64_t temp_bytes;
} mj_cache_usage;

/* What is in dir; a missing directory is empty. */
mj_status mj_cache_usage_of(const char *dir, mj_cache_usage *u);
/* Removes entries, least recently used (oldest mtime) first, until they
 * total at most max_bytes (0 keeps none), and temp files older than
 * MJ_CACHE_TEMP_STALE_S. Safe while other processes use dir: a file that
 * vanished is skipped, one touched since the scan stays. removed: what went. */
mj_status mj_cache_prune(const char *dir, uint64_t max_bytes, mj_cache_usage *removed);
/* mj_cache_prune(dir, 0, removed): every entry and abandoned temp file. */
mj_status mj_cache_clear(const char *dir, mj_cache_usage *removed);

/* ---- object code (the compile path the cache needs) ------------------------ */

typedef struct mj_jit mj_jit;

/* Optimises m (mj_jit_optimize) for the JIT's target and emits an object
 * file (position independent, small code model: what the JIT's linker
 * expects). No bitcode is kept: dumps lower again (mj_compiled_dump).
 * Takes ownership of tsc and m. */
mj_status mj_cache_codegen(mj_jit *jit, LLVMOrcThreadSafeContextRef tsc, LLVMModuleRef m, LLVMMemoryBufferRef *obj,
                           mj_compile_stats *stats);
/* Adds the object (taking the buffer) under a new resource tracker to a
 * JITDylib of its own (fname is defined once per JITDylib, so the same
 * object can be loaded any number of times in a process) and looks fname
 * up. Removing the tracker (mj_jit_remove) frees the code and the
 * JITDylib for reuse. On failure nothing stays behind. */
mj_status mj_cache_link(mj_jit *jit, LLVMMemoryBufferRef obj, const char *fname, LLVMOrcResourceTrackerRef *rt,
                        uint64_t *addr);

#endif
