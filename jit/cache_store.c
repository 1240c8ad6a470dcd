/* The compile cache's directory and its entries: where the cache is and
 * its size cap (the environment), and reading, verifying, writing
 * (atomically) and removing entry files. See docs/cache.md. */
#include "cache.h"

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

#include "src/core/internal.h"
#include "jit_internal.h"
#include "maskjit.h"

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
 *  64  SHA-256 of header bytes 0..63 and the digests of the object and the bitcode
 *  96  the object, then the bitcode */
enum { HDR = 96, HDR_SUM = 64 };

/* SHA-256 of header bytes 0..63 and the mj_fasthash128 digests of the
 * object and of the bitcode: the header's bytes 64..95. */
static void entry_checksum(const uint8_t *h, const void *obj, size_t on, const void *bc, size_t bn,
                           uint8_t sum[32]) {
    uint8_t d[32];
    mj_fasthash128(obj, on, d);
    mj_fasthash128(bn ? bc : "", bn, d + 16);
    mj_sha256 s;
    mj_sha256_init(&s);
    mj_sha256_update(&s, h, HDR_SUM);
    mj_sha256_update(&s, d, sizeof d);
    mj_sha256_final(&s, sum);
}
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
bool mj_cache_all_hex(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (hex_digit(s[i]) < 0) return false;
    return true;
}

/* hex is always a key from mj_cache_key */
static void key_bytes(const char *hex, uint8_t key[32]) {
    MJ_ASSERT(strlen(hex) == 64 && mj_cache_all_hex(hex, 64));
    for (int i = 0; i < 32; i++) key[i] = (uint8_t)(hex_digit(hex[2 * i]) << 4 | hex_digit(hex[2 * i + 1]));
}

static char *entry_path(const char *dir, const char *hex) {
    size_t n = strlen(dir) + 64 + 8;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s.mjc", dir, hex);
    return p;
}

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
    /* huge pages: a frozen model's entry holds its weights (6 MB for a
     * BERT layer), and one fault per 4 KiB page was a third of the read */
    payload = mj_alloc_big((size_t)(on + bn), false);
    if (!payload || !read_full(fd, payload, (size_t)(on + bn))) {
        bad(why, why_size, payload ? "truncated while reading" : "out of memory");
        goto out;
    }
    uint8_t sum[32];
    entry_checksum(h, payload, (size_t)on, payload + on, (size_t)bn, sum);
    if (memcmp(sum, h + HDR_SUM, 32) != 0) {
        bad(why, why_size, "checksum mismatch");
        goto out;
    }
    /* a hit is a use: the eviction order is by modification time */
    (void)futimens(fd, NULL);
    /* the object stays in the payload, no copy: linking reads it before
     * mj_cache_entry_dispose frees the payload */
    out->obj = LLVMCreateMemoryBufferWithMemoryRange(payload, (size_t)on, "maskjit-cache", false);
    if (!out->obj) {
        bad(why, why_size, "out of memory");
        goto out;
    }
    out->payload = payload;
    out->bitcode = bn ? payload + on : NULL;
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
    free(e->payload);
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
    entry_checksum(h, obj, obj_size, bitcode, bitcode_size, h + HDR_SUM);

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
