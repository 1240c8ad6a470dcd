/* The compile cache: SHA-256 keys, the cache directory, atomic entries, and
 * the object-file compile path (codegen to an object, link it into a
 * per-graph JITDylib). See docs/cache.md. */
#include "cache.h"
#include "code_id.h" /* MJ_CODE_ID, generated at build time */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MJ_SHA_NI 1
#endif

#include <llvm-c/BitWriter.h>
#include <llvm-c/Error.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include "src/core/internal.h"
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

#ifdef MJ_SHA_NI
/* The same compression with the x86 SHA extensions: a frozen model's key
 * hashes its weights and a hit checksums its entry, tens of MB for a BERT
 * layer, which the portable code does at 60-150 MB/s and these instructions
 * at over 1 GB/s. State layout and message schedule as in Intel's white paper
 * "Intel SHA Extensions" (2013). */
__attribute__((target("sha,sse4.1,ssse3"))) static void sha_blocks_ni(uint32_t h[8], const uint8_t *p,
                                                                     size_t nblocks) {
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
    __m128i tmp = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[0]), 0xB1); /* CDAB */
    __m128i st1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[4]), 0x1B); /* EFGH */
    __m128i st0 = _mm_alignr_epi8(tmp, st1, 8);                                      /* ABEF */
    st1 = _mm_blend_epi16(st1, tmp, 0xF0);                                           /* CDGH */
    for (; nblocks > 0; nblocks--, p += 64) {
        __m128i save0 = st0, save1 = st1, m[4];
        for (int i = 0; i < 16; i++) {
            if (i < 4) {
                m[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), bswap);
            } else { /* W[t] from W[t-16], W[t-15], W[t-7], W[t-2], four at a time */
                __m128i t = _mm_sha256msg1_epu32(m[i % 4], m[(i + 1) % 4]);
                t = _mm_add_epi32(t, _mm_alignr_epi8(m[(i + 3) % 4], m[(i + 2) % 4], 4));
                m[i % 4] = _mm_sha256msg2_epu32(t, m[(i + 3) % 4]);
            }
            __m128i wk = _mm_add_epi32(m[i % 4], _mm_loadu_si128((const __m128i *)&K256[4 * i]));
            st1 = _mm_sha256rnds2_epu32(st1, st0, wk);
            st0 = _mm_sha256rnds2_epu32(st0, st1, _mm_shuffle_epi32(wk, 0x0E));
        }
        st0 = _mm_add_epi32(st0, save0);
        st1 = _mm_add_epi32(st1, save1);
    }
    tmp = _mm_shuffle_epi32(st0, 0x1B);                                  /* FEBA */
    st1 = _mm_shuffle_epi32(st1, 0xB1);                                  /* DCHG */
    _mm_storeu_si128((__m128i *)&h[0], _mm_blend_epi16(tmp, st1, 0xF0)); /* DCBA */
    _mm_storeu_si128((__m128i *)&h[4], _mm_alignr_epi8(st1, tmp, 8));    /* HGFE */
}
#endif

/* nblocks 64-byte blocks: the SHA extensions where the CPU has them. */
static void sha_blocks(uint32_t h[8], const uint8_t *p, size_t nblocks) {
#ifdef MJ_SHA_NI
    if (__builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1")) {
        sha_blocks_ni(h, p, nblocks);
        return;
    }
#endif
    for (; nblocks > 0; nblocks--, p += 64) sha_block(h, p);
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
        sha_blocks(s->h, s->buf, 1);
        s->n = 0;
    }
    sha_blocks(s->h, p, n / 64);
    p += n / 64 * 64;
    n %= 64;
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

char *mj_cache_default_dir(void) {
    const char *e = getenv("MASKJIT_CACHE_DIR");
    if (e && *e) return strdup(e);
    e = getenv("XDG_CACHE_HOME");
    if (e && *e == '/') return join(e, "maskjit");
    e = getenv("HOME");
    if (e && *e) return join(e, ".cache/maskjit");
    return NULL;
}

char *mj_cache_dir(const mj_compile_options *o) {
    if (o && !o->use_cache) return NULL;
    const char *off = getenv("MASKJIT_CACHE");
    if (off && strcmp(off, "0") == 0) return NULL;
    if (o && o->cache_dir && *o->cache_dir) return strdup(o->cache_dir);
    return mj_cache_default_dir();
}

mj_status mj_cache_max_bytes(uint64_t *bytes) {
    *bytes = (uint64_t)MJ_CACHE_DEFAULT_MAX_MB << 20;
    const char *e = getenv("MASKJIT_CACHE_MAX_MB");
    if (!e || !*e) return MJ_OK;
    uint64_t mb = 0;
    for (const char *p = e; *p; p++) {
        /* digits only: no sign, space, unit or fraction slips through */
        if (*p < '0' || *p > '9' || mb > (MJ_CACHE_MAX_MB_LIMIT - (uint64_t)(*p - '0')) / 10)
            return mj_fail(MJ_ERR_INVALID,
                           "cache: MASKJIT_CACHE_MAX_MB is '%.40s', not a whole number of MiB up to %llu "
                           "(0 = no limit)",
                           e, (unsigned long long)MJ_CACHE_MAX_MB_LIMIT);
        mb = mb * 10 + (uint64_t)(*p - '0');
    }
    *bytes = mb << 20;
    return MJ_OK;
}

/* ---- entry files ------------------------------------------------------------------ */

/* The header of an entry (docs/cache.md), little-endian:
 *   0  magic "MJCACHE\0"      8  format (u32)     12  zero (u32)
 *  16  key digest (32)       48  object bytes (u64)  56  bitcode bytes (u64)
 *  64  SHA-256 of header bytes 0..63, the object, then the bitcode
 *  96  the object, then the bitcode */
enum { HDR = 96, HDR_SUM = 64 };
static const char MAGIC[8] = {'M', 'J', 'C', 'A', 'C', 'H', 'E', '\0'};

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}
static bool all_hex(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (hex_digit(s[i]) < 0) return false;
    return true;
}

/* hex is always a key from mj_cache_key */
static void key_bytes(const char *hex, uint8_t key[32]) {
    MJ_ASSERT(strlen(hex) == 64 && all_hex(hex, 64));
    for (int i = 0; i < 32; i++) key[i] = (uint8_t)(hex_digit(hex[2 * i]) << 4 | hex_digit(hex[2 * i + 1]));
}

static char *entry_path(const char *dir, const char *hex) {
    size_t n = strlen(dir) + 64 + 8;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s.mjc", dir, hex);
    return p;
}

/* What a name in the cache directory is. Only these names are ever
 * deleted by eviction, prune and clear. */
typedef enum { NAME_OTHER, NAME_ENTRY, NAME_OLD_ENTRY, NAME_TEMP } name_kind;

static name_kind classify(const char *name) {
    size_t l = strlen(name);
    if (l > 65 && all_hex(name, 64) && name[64] == '.') {
        if (strcmp(name + 65, "mjc") == 0) return NAME_ENTRY;
        /* the object and bitcode files of the first format */
        if (strcmp(name + 65, "o") == 0 || strcmp(name + 65, "bc") == 0) return NAME_OLD_ENTRY;
        return NAME_OTHER;
    }
    /* store's mkstemp names: "." 16 hex "." and 6 letters or digits */
    if (l == 24 && name[0] == '.' && all_hex(name + 1, 16) && name[17] == '.') {
        for (size_t i = 18; i < 24; i++)
            if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'z') ||
                  (name[i] >= 'A' && name[i] <= 'Z')))
                return NAME_OTHER;
        return NAME_TEMP;
    }
    return NAME_OTHER;
}

/* n bytes from fd; false on a short read or an error */
static bool read_full(int fd, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        got += (size_t)r;
    }
    return true;
}

static mj_cache_lookup bad(char *why, size_t why_size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static mj_cache_lookup bad(char *why, size_t why_size, const char *fmt, ...) {
    if (why && why_size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, why_size, fmt, ap);
        va_end(ap);
    }
    return MJ_CACHE_BAD;
}

mj_cache_lookup mj_cache_load(const char *dir, const char *hex, mj_cache_entry *out, char *why, size_t why_size) {
    memset(out, 0, sizeof *out);
    if (why && why_size) why[0] = '\0';
    uint8_t key[32];
    key_bytes(hex, key);
    char *path = entry_path(dir, hex);
    if (!path) return MJ_CACHE_MISS;
    /* Never open anything but a regular file: opening a FIFO blocks until
     * a writer comes, a device may act on open. O_NONBLOCK and O_NOFOLLOW
     * cover a name swapped between the lstat and the open. */
    struct stat st;
    int fd = -1;
    if (lstat(path, &st) != 0) {
        free(path);
        return MJ_CACHE_MISS;
    }
    mj_cache_lookup r = MJ_CACHE_BAD;
    uint8_t h[HDR];
    char *payload = NULL;
    if (!S_ISREG(st.st_mode)) {
        bad(why, why_size, "not a regular file");
        goto out;
    }
    fd = open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        bad(why, why_size, "cannot open it: %s", strerror(errno));
        goto out;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        bad(why, why_size, "not a regular file");
        goto out;
    }
    if (st.st_size < HDR || !read_full(fd, h, HDR)) {
        bad(why, why_size, "truncated (%lld bytes)", (long long)st.st_size);
        goto out;
    }
    if (memcmp(h, MAGIC, sizeof MAGIC) != 0) {
        bad(why, why_size, "not a maskjit cache entry");
        goto out;
    }
    if (get_u32(h + 8) != MJ_CACHE_FORMAT || get_u32(h + 12) != 0) {
        bad(why, why_size, "format %u, expected %d", (unsigned)get_u32(h + 8), MJ_CACHE_FORMAT);
        goto out;
    }
    if (memcmp(h + 16, key, 32) != 0) {
        bad(why, why_size, "written for another key");
        goto out;
    }
    uint64_t on = get_u64(h + 48), bn = get_u64(h + 56), want;
    if (on == 0 || on > (uint64_t)SIZE_MAX / 2 || bn > (uint64_t)SIZE_MAX / 2 ||
        __builtin_add_overflow(on + bn, (uint64_t)HDR, &want) || want != (uint64_t)st.st_size) {
        bad(why, why_size, "%lld bytes, but the header says %llu + %llu + %d", (long long)st.st_size,
            (unsigned long long)on, (unsigned long long)bn, HDR);
        goto out;
    }
    payload = malloc((size_t)(on + bn));
    if (!payload || !read_full(fd, payload, (size_t)(on + bn))) {
        bad(why, why_size, payload ? "truncated while reading" : "out of memory");
        goto out;
    }
    mj_sha256 s;
    uint8_t sum[32];
    mj_sha256_init(&s);
    mj_sha256_update(&s, h, HDR_SUM);
    mj_sha256_update(&s, payload, (size_t)(on + bn));
    mj_sha256_final(&s, sum);
    if (memcmp(sum, h + HDR_SUM, 32) != 0) {
        bad(why, why_size, "checksum mismatch");
        goto out;
    }
    /* a hit is a use: the eviction order is by modification time */
    (void)futimens(fd, NULL);
    out->obj = LLVMCreateMemoryBufferWithMemoryRangeCopy(payload, (size_t)on, "maskjit-cache");
    if (!out->obj) {
        bad(why, why_size, "out of memory");
        goto out;
    }
    memmove(payload, payload + on, (size_t)bn);
    out->bitcode = payload;
    out->bitcode_size = (size_t)bn;
    payload = NULL;
    r = MJ_CACHE_FOUND;
out:
    free(payload);
    if (fd >= 0) close(fd);
    free(path);
    return r;
}

void mj_cache_entry_dispose(mj_cache_entry *e) {
    if (e->obj) LLVMDisposeMemoryBuffer(e->obj);
    free(e->bitcode);
    memset(e, 0, sizeof *e);
}

/* mkdir -p, private: the entries of frozen graphs hold the weights */
static bool make_dirs(const char *dir) {
    char *p = strdup(dir);
    if (!p) return false;
    bool ok = true;
    for (char *q = p + 1; ok; q++) {
        if (*q != '/' && *q != '\0') continue;
        char c = *q;
        *q = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST) ok = false;
        *q = c;
        if (c == '\0') break;
    }
    free(p);
    return ok;
}

static bool write_full(int fd, const void *data, size_t n) {
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            if (w == 0) errno = EIO;
            return false;
        }
        p += w;
        n -= (size_t)w;
    }
    return true;
}

static double mib(uint64_t bytes) { return (double)bytes / (1024.0 * 1024.0); }

mj_status mj_cache_store(const char *dir, const char *hex, const void *obj, size_t obj_size, const void *bitcode,
                         size_t bitcode_size, uint64_t max_bytes) {
    MJ_ASSERT(obj && obj_size > 0 && (bitcode || bitcode_size == 0));
    uint64_t total = (uint64_t)HDR + obj_size + bitcode_size;
    if (max_bytes && total > max_bytes)
        return mj_fail(MJ_ERR_LIMIT, "cache: not stored: the entry (%.1f MiB) is over the cap of %.1f MiB "
                                     "(MASKJIT_CACHE_MAX_MB)",
                       mib(total), mib(max_bytes));
    uint8_t h[HDR] = {0};
    memcpy(h, MAGIC, sizeof MAGIC);
    put_u32(h + 8, MJ_CACHE_FORMAT);
    key_bytes(hex, h + 16);
    put_u64(h + 48, obj_size);
    put_u64(h + 56, bitcode_size);
    mj_sha256 s;
    mj_sha256_init(&s);
    mj_sha256_update(&s, h, HDR_SUM);
    mj_sha256_update(&s, obj, obj_size);
    if (bitcode_size) mj_sha256_update(&s, bitcode, bitcode_size);
    mj_sha256_final(&s, h + HDR_SUM);

    if (!make_dirs(dir))
        return mj_fail(MJ_ERR_IO, "cache: cannot create the directory %s: %s", dir, strerror(errno));
    char *path = entry_path(dir, hex);
    size_t tn = strlen(dir) + 32;
    char *tmp = malloc(tn);
    if (!path || !tmp) {
        free(path);
        free(tmp);
        return mj_fail(MJ_ERR_NOMEM, "cache: out of memory");
    }
    /* A unique temp name in the same directory: rename is atomic there, and
     * racing writers never share a temp file. mkstemp makes it 0600, which
     * entries keep: the cache is private to its user. */
    snprintf(tmp, tn, "%s/.%.16s.XXXXXX", dir, hex);
    mj_status st = MJ_OK;
    int fd = mkstemp(tmp);
    if (fd < 0) {
        st = mj_fail(MJ_ERR_IO, "cache: cannot create a file in %s: %s", dir, strerror(errno));
        goto out;
    }
    bool ok = write_full(fd, h, HDR) && write_full(fd, obj, obj_size) &&
              (!bitcode_size || write_full(fd, bitcode, bitcode_size)) && fsync(fd) == 0;
    int err = ok ? 0 : errno;
    if (close(fd) != 0 && ok) ok = false, err = errno;
    /* rename replaces whatever is at the entry's name (a bad entry, a FIFO,
     * a symlink) without opening it */
    if (ok && rename(tmp, path) != 0) ok = false, err = errno;
    if (!ok) {
        unlink(tmp);
        st = mj_fail(MJ_ERR_IO, "cache: cannot write %s: %s", path, strerror(err ? err : EIO));
        goto out;
    }
    if (max_bytes) {
        mj_cache_usage removed;
        st = mj_cache_prune(dir, max_bytes, &removed);
    }
out:
    free(path);
    free(tmp);
    return st;
}

void mj_cache_remove(const char *dir, const char *hex) {
    char *path = entry_path(dir, hex);
    if (path) unlink(path);
    free(path);
}

/* ---- usage, eviction ------------------------------------------------------------ */

typedef struct scan_item {
    char name[72];
    name_kind kind;
    uint64_t size;
    struct timespec mtime;
    dev_t dev;
    ino_t ino;
} scan_item;

typedef struct scan {
    DIR *d; /* NULL: no directory (yet) */
    scan_item *items;
    size_t n, cap;
} scan;

static void scan_free(scan *sc) {
    if (sc->d) closedir(sc->d);
    free(sc->items);
}

static void count(mj_cache_usage *u, name_kind k, uint64_t size) {
    if (k == NAME_TEMP) {
        u->temp_files++;
        u->temp_bytes += size;
        return;
    }
    u->entries++;
    u->bytes += size;
    if (k == NAME_OLD_ENTRY) u->old_entries++;
}

/* Lists the regular files in dir that are maskjit's (a missing directory is
 * an empty one) into *u, with the number of abandoned temp files in *stale.
 * With collect, sc->items lists them: only eviction needs that, so a store
 * under the cap allocates nothing. Never opens a file: lstat only. */
static mj_status scan_dir(const char *dir, bool collect, scan *sc, mj_cache_usage *u, int64_t *stale) {
    memset(sc, 0, sizeof *sc);
    memset(u, 0, sizeof *u);
    *stale = 0;
    sc->d = opendir(dir); /* O_DIRECTORY: a FIFO at dir's name fails, no hang */
    if (!sc->d) {
        if (errno == ENOENT) return MJ_OK;
        return mj_fail(MJ_ERR_IO, "cache: cannot read the directory %s: %s", dir, strerror(errno));
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int dfd = dirfd(sc->d);
    struct dirent *e;
    while ((e = readdir(sc->d))) {
        name_kind k = classify(e->d_name);
        struct stat st;
        /* vanished under us, or not a regular file: not ours to count */
        if (k == NAME_OTHER || fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
            continue;
        count(u, k, (uint64_t)st.st_size);
        if (k == NAME_TEMP && now.tv_sec - st.st_mtim.tv_sec >= MJ_CACHE_TEMP_STALE_S) ++*stale;
        if (!collect) continue;
        if (sc->n == sc->cap) {
            size_t cap = sc->cap ? sc->cap * 2 : 64;
            scan_item *p = realloc(sc->items, cap * sizeof *p);
            if (!p) {
                scan_free(sc);
                memset(sc, 0, sizeof *sc);
                return mj_fail(MJ_ERR_NOMEM, "cache: out of memory listing %s", dir);
            }
            sc->items = p;
            sc->cap = cap;
        }
        scan_item *it = &sc->items[sc->n++];
        snprintf(it->name, sizeof it->name, "%s", e->d_name);
        it->kind = k;
        it->size = (uint64_t)st.st_size;
        it->mtime = st.st_mtim;
        it->dev = st.st_dev;
        it->ino = st.st_ino;
    }
    return MJ_OK;
}

mj_status mj_cache_usage_of(const char *dir, mj_cache_usage *u) {
    scan sc;
    int64_t stale;
    mj_status s = scan_dir(dir, false, &sc, u, &stale);
    scan_free(&sc);
    return s;
}

static int by_mtime(const void *a, const void *b) {
    const scan_item *x = a, *y = b;
    if (x->mtime.tv_sec != y->mtime.tv_sec) return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
    if (x->mtime.tv_nsec != y->mtime.tv_nsec) return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : 1;
    return strcmp(x->name, y->name);
}

static bool same_time(struct timespec a, struct timespec b) { return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec; }

mj_status mj_cache_prune(const char *dir, uint64_t max_bytes, mj_cache_usage *removed) {
    memset(removed, 0, sizeof *removed);
    scan sc;
    mj_cache_usage u;
    int64_t stale;
    MJ_TRY(scan_dir(dir, false, &sc, &u, &stale));
    scan_free(&sc);
    if (u.bytes <= max_bytes && stale == 0) return MJ_OK; /* the common case after a store */
    MJ_TRY(scan_dir(dir, true, &sc, &u, &stale));
    if (!sc.d) return MJ_OK;
    qsort(sc.items, sc.n, sizeof *sc.items, by_mtime);
    int dfd = dirfd(sc.d);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    uint64_t total = u.bytes;
    mj_status s = MJ_OK;
    for (size_t i = 0; i < sc.n; i++) {
        const scan_item *it = &sc.items[i];
        if (it->kind == NAME_TEMP ? now.tv_sec - it->mtime.tv_sec < MJ_CACHE_TEMP_STALE_S : total <= max_bytes)
            continue;
        /* Other processes share the directory: a file that changed since
         * the scan was used (a hit touches it) or replaced, so it stays;
         * one that is gone is no longer counted. */
        struct stat st;
        if (fstatat(dfd, it->name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (it->kind != NAME_TEMP) total -= it->size;
            continue;
        }
        if (!S_ISREG(st.st_mode) || st.st_dev != it->dev || st.st_ino != it->ino || !same_time(st.st_mtim, it->mtime))
            continue;
        if (unlinkat(dfd, it->name, 0) != 0) {
            if (errno == ENOENT) {
                if (it->kind != NAME_TEMP) total -= it->size;
            } else if (s == MJ_OK) {
                s = mj_fail(MJ_ERR_IO, "cache: cannot remove %s/%s: %s", dir, it->name, strerror(errno));
            }
            continue;
        }
        count(removed, it->kind, it->size);
        if (it->kind != NAME_TEMP) total -= it->size;
    }
    scan_free(&sc);
    return s;
}

mj_status mj_cache_clear(const char *dir, mj_cache_usage *removed) { return mj_cache_prune(dir, 0, removed); }

/* ---- object code -------------------------------------------------------------- */

mj_status mj_cache_codegen(mj_jit *jit, LLVMOrcThreadSafeContextRef tsc, LLVMModuleRef m, LLVMMemoryBufferRef *obj,
                           char **bitcode, size_t *bitcode_size, mj_compile_stats *stats) {
    *obj = NULL;
    *bitcode = NULL;
    *bitcode_size = 0;
    mj_status s = MJ_OK;
    char *msg = NULL;
    LLVMTargetMachineRef tm = NULL;
    /* Our own machine (per compile, so no lock): PIC and the small code
     * model, as LLJIT configures its own for its JITLink linker. */
    if ((s = mj_jit_target_machine(jit, LLVMRelocPIC, LLVMCodeModelSmall, &tm)) != MJ_OK) goto out;
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
    stats->optimize_ms = mj_ms_since(t0);
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
    stats->codegen_ms = mj_ms_since(t0);
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
