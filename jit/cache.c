/* The compile cache: SHA-256 keys, the cache directory, atomic entries, and
 * the object-file compile path (codegen to an object, link it into a
 * per-graph JITDylib). See docs/cache.md. */
#include "cache.h"
#include "code_id.h" /* MJ_CODE_ID, generated at build time */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <llvm-c/BitWriter.h>
#include <llvm-c/Error.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include "../src/internal.h"
#include "jit_internal.h"
#include "maskjit.h"

/* ---- SHA-256 ---------------------------------------------------------------- */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha_block(uint32_t h[8], const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = hh + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
}

void mj_sha256_init(mj_sha256 *s) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0);
    s->bytes = 0;
    s->n = 0;
}

void mj_sha256_update(mj_sha256 *s, const void *data, size_t n) {
    const uint8_t *p = data;
    s->bytes += n;
    if (s->n) {
        size_t take = 64 - s->n < n ? 64 - s->n : n;
        memcpy(s->buf + s->n, p, take);
        s->n += take;
        p += take;
        n -= take;
        if (s->n < 64) return;
        sha_block(s->h, s->buf);
        s->n = 0;
    }
    for (; n >= 64; p += 64, n -= 64) sha_block(s->h, p);
    memcpy(s->buf, p, n);
    s->n = n;
}

void mj_sha256_final(mj_sha256 *s, uint8_t digest[32]) {
    uint64_t bits = s->bytes * 8;
    uint8_t pad[72] = {0x80};
    size_t padn = (s->n < 56 ? 56 : 120) - s->n;
    for (int i = 0; i < 8; i++) pad[padn + (size_t)i] = (uint8_t)(bits >> (56 - 8 * i));
    mj_sha256_update(s, pad, padn + 8);
    MJ_ASSERT(s->n == 0);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++) digest[4 * i + j] = (uint8_t)(s->h[i] >> (24 - 8 * j));
}

void mj_sha256_hex(const uint8_t digest[32], char hex[65]) {
    static const char d[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = d[digest[i] >> 4];
        hex[2 * i + 1] = d[digest[i] & 15];
    }
    hex[64] = '\0';
}

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
    part_i64(&s, (int64_t)o->numeric);
    part_i64(&s, o->frozen);
    part_i64(&s, o->threads);
    part_str(&s, text);
    free(text);
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (n->op != MJ_OP_CONST) continue;
        part_i64(&s, i);
        if (n->tensor) part(&s, n->tensor->data, (size_t)n->tensor->numel * sizeof(float));
        else part(&s, "", 0);
    }
    uint8_t d[32];
    mj_sha256_final(&s, d);
    mj_sha256_hex(d, hex);
    return MJ_OK;
}

/* ---- the directory --------------------------------------------------------------- */

static char *join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", a, b);
    return p;
}

char *mj_cache_dir(const mj_compile_options *o) {
    if (o && !o->use_cache) return NULL;
    const char *off = getenv("MASKJIT_CACHE");
    if (off && strcmp(off, "0") == 0) return NULL;
    if (o && o->cache_dir && *o->cache_dir) return strdup(o->cache_dir);
    const char *e = getenv("MASKJIT_CACHE_DIR");
    if (e && *e) return strdup(e);
    e = getenv("XDG_CACHE_HOME");
    if (e && *e == '/') return join(e, "maskjit");
    e = getenv("HOME");
    if (e && *e) return join(e, ".cache/maskjit");
    return NULL;
}

static char *entry_path(const char *dir, const char *hex, const char *ext) {
    size_t n = strlen(dir) + 64 + 8;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s.%s", dir, hex, ext);
    return p;
}

/* The whole file, malloc'd; false when absent, empty or unreadable. Read
 * through one descriptor: a racing writer's rename replaces the name, never
 * the bytes of the file already open. */
static bool read_file(const char *path, char **data, size_t *size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    struct stat st;
    bool ok = false;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
        size_t n = (size_t)st.st_size, got = 0;
        char *buf = malloc(n);
        while (buf && got < n) {
            ssize_t r = read(fd, buf + got, n - got);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            got += (size_t)r;
        }
        if (buf && got == n) {
            *data = buf;
            *size = n;
            ok = true;
        } else {
            free(buf);
        }
    }
    close(fd);
    return ok;
}

bool mj_cache_load(const char *dir, const char *hex, LLVMMemoryBufferRef *out) {
    char *path = entry_path(dir, hex, "o"), *data = NULL;
    size_t n = 0;
    bool ok = path && read_file(path, &data, &n);
    free(path);
    if (!ok) return false;
    *out = LLVMCreateMemoryBufferWithMemoryRangeCopy(data, n, hex);
    free(data);
    return *out != NULL;
}

bool mj_cache_load_bitcode(const char *dir, const char *hex, char **data, size_t *n) {
    char *path = entry_path(dir, hex, "bc");
    bool ok = path && read_file(path, data, n);
    free(path);
    return ok;
}

/* mkdir -p */
static bool make_dirs(const char *dir) {
    char *p = strdup(dir);
    if (!p) return false;
    bool ok = true;
    for (char *q = p + 1; ok; q++) {
        if (*q != '/' && *q != '\0') continue;
        char c = *q;
        *q = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) ok = false;
        *q = c;
        if (c == '\0') break;
    }
    free(p);
    return ok;
}

static mj_status store(const char *dir, const char *hex, const char *ext, const void *data, size_t n) {
    if (!make_dirs(dir))
        return mj_fail(MJ_ERR_IO, "cache: cannot create the directory %s: %s", dir, strerror(errno));
    char *path = entry_path(dir, hex, ext);
    size_t tn = strlen(dir) + 96;
    char *tmp = malloc(tn);
    if (!path || !tmp) {
        free(path);
        free(tmp);
        return MJ_ERR_NOMEM;
    }
    /* A unique temp name in the same directory: rename is atomic there, and
     * racing writers never share a temp file. */
    snprintf(tmp, tn, "%s/.%.16s.XXXXXX", dir, hex);
    mj_status s = MJ_OK;
    int fd = mkstemp(tmp);
    if (fd < 0) {
        s = mj_fail(MJ_ERR_IO, "cache: cannot create a file in %s: %s", dir, strerror(errno));
        goto out;
    }
    (void)fchmod(fd, 0644); /* mkstemp makes 0600; entries are shared like any cache file */
    const char *p = data;
    size_t left = n;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        p += w;
        left -= (size_t)w;
    }
    int err = left ? errno : 0;
    if (!left && fsync(fd) != 0) err = errno, left = 1;
    if (close(fd) != 0 && !left) err = errno, left = 1;
    if (left || rename(tmp, path) != 0) {
        if (!err) err = errno;
        unlink(tmp);
        s = mj_fail(MJ_ERR_IO, "cache: cannot write %s: %s", path, strerror(err ? err : EIO));
    }
out:
    free(path);
    free(tmp);
    return s;
}

mj_status mj_cache_store(const char *dir, const char *hex, const void *data, size_t n) {
    return store(dir, hex, "o", data, n);
}

mj_status mj_cache_store_bitcode(const char *dir, const char *hex, const void *data, size_t n) {
    return store(dir, hex, "bc", data, n);
}

void mj_cache_remove(const char *dir, const char *hex) {
    const char *ext[2] = {"o", "bc"};
    for (int i = 0; i < 2; i++) {
        char *path = entry_path(dir, hex, ext[i]);
        if (path) unlink(path);
        free(path);
    }
}

/* ---- object code -------------------------------------------------------------- */

static double ms_since(double t0) { return (mj_now_seconds() - t0) * 1e3; }

mj_status mj_cache_codegen(mj_jit *jit, LLVMOrcThreadSafeContextRef tsc, LLVMModuleRef m, LLVMMemoryBufferRef *obj,
                           char **bitcode, size_t *bitcode_size, mj_compile_stats *stats) {
    *obj = NULL;
    *bitcode = NULL;
    *bitcode_size = 0;
    mj_status s = MJ_OK;
    LLVMTargetRef target;
    char *msg = NULL;
    LLVMTargetMachineRef tm = NULL;
    if (LLVMGetTargetFromTriple(jit->triple, &target, &msg)) {
        s = mj_fail(MJ_ERR_BACKEND, "no LLVM target for %s: %s", jit->triple, msg ? msg : "");
        LLVMDisposeMessage(msg);
        goto out;
    }
    /* Our own machine (per compile, so no lock): PIC and the small code
     * model, as LLJIT configures its own for its JITLink linker. */
    tm = LLVMCreateTargetMachine(target, jit->triple, jit->cpu, jit->features, LLVMCodeGenLevelAggressive,
                                 LLVMRelocPIC, LLVMCodeModelSmall);
    if (!tm) {
        s = mj_fail(MJ_ERR_BACKEND, "cannot create a target machine for %s (%s)", jit->triple, jit->cpu);
        goto out;
    }
    char *triple = LLVMGetTargetMachineTriple(tm);
    LLVMSetTarget(m, triple);
    LLVMDisposeMessage(triple);
    LLVMTargetDataRef td = LLVMCreateTargetDataLayout(tm);
    LLVMSetModuleDataLayout(m, td);
    LLVMDisposeTargetData(td);

    double t0 = mj_now_seconds();
    LLVMPassBuilderOptionsRef po = LLVMCreatePassBuilderOptions();
    LLVMErrorRef err = LLVMRunPasses(m, mj_jit_pipeline(m), tm, po);
    LLVMDisposePassBuilderOptions(po);
    stats->optimize_ms = ms_since(t0);
    if (err) {
        s = mj_jit_llvm_error(err, "optimising");
        goto out;
    }
    LLVMMemoryBufferRef bc = LLVMWriteBitcodeToMemoryBuffer(m);
    if (bc) {
        size_t n = LLVMGetBufferSize(bc);
        if ((*bitcode = mj_alloc(n + 1))) {
            memcpy(*bitcode, LLVMGetBufferStart(bc), n);
            *bitcode_size = n;
        }
        LLVMDisposeMemoryBuffer(bc);
    }
    if (!*bitcode) {
        s = MJ_ERR_NOMEM;
        goto out;
    }
    t0 = mj_now_seconds();
    if (LLVMTargetMachineEmitToMemoryBuffer(tm, m, LLVMObjectFile, &msg, obj)) {
        s = mj_fail(MJ_ERR_BACKEND, "emitting the object file: %s", msg ? msg : "");
        LLVMDisposeMessage(msg);
        *obj = NULL;
    }
    stats->codegen_ms = ms_since(t0);
out:
    if (s != MJ_OK) {
        free(*bitcode);
        *bitcode = NULL;
        *bitcode_size = 0;
    }
    if (tm) LLVMDisposeTargetMachine(tm);
    LLVMDisposeModule(m);
    LLVMOrcDisposeThreadSafeContext(tsc);
    return s;
}

typedef struct lookup_result {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    LLVMErrorRef err;
    uint64_t addr;
} lookup_result;

static void lookup_done(LLVMErrorRef err, LLVMOrcCSymbolMapPairs result, size_t n, void *ctx) {
    lookup_result *r = ctx;
    pthread_mutex_lock(&r->mu);
    r->err = err;
    if (!err && n >= 1) r->addr = result[0].Sym.Address;
    r->done = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* fname in jd alone (LLJITLookup searches the main JITDylib only). Weak:
 * a missing symbol is no error, the address stays 0. */
static LLVMErrorRef lookup_in(mj_jit *jit, LLVMOrcJITDylibRef jd, const char *fname, bool weak, uint64_t *addr) {
    lookup_result r = {.done = false};
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);
    LLVMOrcCJITDylibSearchOrderElement order[2] = {{jd, LLVMOrcJITDylibLookupFlagsMatchExportedSymbolsOnly},
                                                   {NULL, 0}};
    LLVMOrcCLookupSetElement syms[2] = {
        {LLVMOrcLLJITMangleAndIntern(jit->lljit, fname),
         weak ? LLVMOrcSymbolLookupFlagsWeaklyReferencedSymbol : LLVMOrcSymbolLookupFlagsRequiredSymbol},
        {NULL, 0}};
    LLVMOrcExecutionSessionLookup(LLVMOrcLLJITGetExecutionSession(jit->lljit), LLVMOrcLookupKindStatic, order, 1,
                                  syms, 1, lookup_done, &r);
    pthread_mutex_lock(&r.mu);
    while (!r.done) pthread_cond_wait(&r.cv, &r.mu);
    pthread_mutex_unlock(&r.mu);
    pthread_cond_destroy(&r.cv);
    pthread_mutex_destroy(&r.mu);
    *addr = r.addr;
    return r.err;
}

/* A JITDylib with no fname in it, jit->mu held. The C API cannot remove a
 * JITDylib, so they are reused: "mj_graph_<i>" is free once the compiled
 * graph that used it is freed (its resource tracker removed). Their number
 * is the most compiled graphs alive at once. */
static mj_status free_dylib(mj_jit *jit, const char *fname, LLVMOrcJITDylibRef *out) {
    LLVMOrcExecutionSessionRef es = LLVMOrcLLJITGetExecutionSession(jit->lljit);
    for (unsigned i = 0;; i++) {
        char name[48];
        snprintf(name, sizeof name, "mj_graph_%u", i);
        LLVMOrcJITDylibRef jd = LLVMOrcExecutionSessionGetJITDylibByName(es, name);
        if (jd) {
            uint64_t a = 0;
            LLVMErrorRef err = lookup_in(jit, jd, fname, true, &a);
            if (err) return mj_jit_llvm_error(err, "looking for a free JITDylib");
            if (a) continue; /* in use */
            *out = jd;
            return MJ_OK;
        }
        jd = LLVMOrcExecutionSessionCreateBareJITDylib(es, name);
        /* erff, expf, tanhf (and memset/memcpy) resolve to the process's
         * libm and libc, the ones the eager kernels call */
        LLVMOrcDefinitionGeneratorRef gen;
        LLVMErrorRef err = LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(
            &gen, LLVMOrcLLJITGetGlobalPrefix(jit->lljit), NULL, NULL);
        if (err) return mj_jit_llvm_error(err, "creating the process symbol generator");
        LLVMOrcJITDylibAddGenerator(jd, gen);
        *out = jd;
        return MJ_OK;
    }
}

mj_status mj_cache_link(mj_jit *jit, LLVMMemoryBufferRef obj, const char *fname, LLVMOrcResourceTrackerRef *rt_out,
                        uint64_t *addr) {
    *rt_out = NULL;
    *addr = 0;
    pthread_mutex_lock(&jit->mu); /* pick and fill a free JITDylib as one step */
    LLVMOrcJITDylibRef jd = NULL;
    LLVMOrcResourceTrackerRef rt = NULL;
    mj_status s = free_dylib(jit, fname, &jd);
    if (s != MJ_OK) {
        LLVMDisposeMemoryBuffer(obj);
        goto out;
    }
    rt = LLVMOrcJITDylibCreateResourceTracker(jd);
    LLVMErrorRef err = LLVMOrcLLJITAddObjectFileWithRT(jit->lljit, rt, obj); /* takes obj */
    if (err) {
        s = mj_jit_llvm_error(err, "adding the object file to the JIT");
        goto out;
    }
    if ((err = lookup_in(jit, jd, fname, false, addr))) s = mj_jit_llvm_error(err, "linking the object file");
    else if (!*addr) s = mj_fail(MJ_ERR_BACKEND, "linking the object file: %s has no address", fname);
out:
    if (s != MJ_OK && rt) {
        mj_rt_discard(rt);
        rt = NULL;
    }
    pthread_mutex_unlock(&jit->mu);
    *rt_out = rt;
    return s;
}
