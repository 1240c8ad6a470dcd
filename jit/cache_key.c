/* The compile cache's key: a SHA-256 of everything that decides the code
 * (docs/cache.md). */
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "code_id.h" /* MJ_CODE_ID, generated at build time */

#include <llvm-c/Core.h>

#include "src/core/internal.h"
#include "maskjit.h"

/* ---- the key ------------------------------------------------------------------ */

/* A length-prefixed part. */
static void part(mj_sha256 *s, const void *data, size_t n) {
    uint64_t len = n;
    mj_sha256_update(s, &len, sizeof len);
    mj_sha256_update(s, data, n);
}
static void part_str(mj_sha256 *s, const char *str) { part(s, str ? str : "", str ? strlen(str) : 0); }
static void part_i64(mj_sha256 *s, int64_t v) { part(s, &v, sizeof v); }

mj_status mj_cache_key(const mj_graph *g, const mj_compile_options *o, const mj_cache_target *t, char hex[65]) {
    if (!g || !o || !t || !hex) return mj_fail(MJ_ERR_INVALID, "mj_cache_key: NULL argument");
    char *text = mj_graph_to_string(g);
    if (!text) return mj_fail(MJ_ERR_NOMEM, "cache key: out of memory printing the graph");
    mj_sha256 s;
    mj_sha256_init(&s);
    part_str(&s, "maskjit-cache");
    part_i64(&s, MJ_CACHE_FORMAT);
    part_str(&s, MJ_VERSION_STRING);
    part_str(&s, MJ_CODE_ID);
    unsigned maj, min, patch;
    LLVMGetVersion(&maj, &min, &patch);
    part_i64(&s, (int64_t)maj * 1000000 + (int64_t)min * 1000 + patch);
    part_str(&s, t->cpu);
    part_str(&s, t->features);
    /* the GEMM's blocking follows the caches (lower_gemm.c): speed only,
     * never the bits, but an entry should be the code this machine gets */
    part_i64(&s, sysconf(_SC_LEVEL1_DCACHE_SIZE));
    part_i64(&s, sysconf(_SC_LEVEL2_CACHE_SIZE));
    part_str(&s, t->passes ? t->passes : "");
    part_i64(&s, (int64_t)o->numeric);
    part_i64(&s, o->frozen);
    part_i64(&s, o->threads);
    part_str(&s, text);
    free(text);
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (n->op != MJ_OP_CONST) continue;
        part_i64(&s, i);
        /* a digest, then the byte count: 28 MB of BERT weights through
         * SHA-256 were a third of a cache hit */
        uint8_t d[16] = {0};
        size_t bytes = n->tensor ? (size_t)n->tensor->numel * sizeof(float) : 0;
        if (n->tensor) mj_fasthash128(n->tensor->data, bytes, d);
        part_i64(&s, n->tensor ? (int64_t)bytes : -1);
        part(&s, d, sizeof d);
    }
    uint8_t d[32];
    mj_sha256_final(&s, d);
    mj_sha256_hex(d, hex);
    return MJ_OK;
}
