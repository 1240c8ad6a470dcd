/* safetensors I/O. The format:
 *   u64 little-endian N | N bytes of UTF-8 JSON (may end in spaces) | data
 * The JSON maps each tensor name to {"dtype", "shape", "data_offsets":[b,e]}
 * (offsets relative to the data section) plus an optional "__metadata__"
 * object of strings. Every field comes from an untrusted file, so every
 * number is checked before it sizes an allocation or a read.
 *
 * Loading streams the data section straight into the tensors (F32) or
 * through a small conversion buffer (F16, BF16, F64): a large file is never
 * held twice in memory. Saving goes through src/io/outfile.c: atomic (temp
 * file, fsync, rename) for files, written through for FIFOs and devices. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "src/core/internal.h"

#define ST_HEADER_LIMIT (UINT64_C(100) * 1000 * 1000) /* 100 MB, as the reference loader */
#define ST_CHUNK 65536                                /* conversion buffer, bytes */
/* Far above any real model (thousands of tensors); bounds the work a
 * hostile header of tiny entries can cause in the name -> tensor dict. */
#define ST_MAX_TENSORS 65536

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define ST_BIG_ENDIAN 1
#else
#define ST_BIG_ENDIAN 0
#endif

/* ---- dtypes --------------------------------------------------------------- */
typedef enum st_dtype { ST_F32, ST_F16, ST_BF16, ST_F64, ST_OTHER } st_dtype;

typedef struct st_dtype_info {
    const char *name;
    st_dtype kind;  /* ST_OTHER: known to the format, not read by maskjit */
    int bits;       /* element size in bits (sub-byte types exist)       */
} st_dtype_info;

/* Every dtype the safetensors format defines, so a real-but-unsupported one
 * gets MJ_ERR_UNSUPPORTED and a typo gets MJ_ERR_FORMAT. */
static const st_dtype_info st_dtypes[] = {
    {"F32", ST_F32, 32},       {"F16", ST_F16, 16},       {"BF16", ST_BF16, 16},
    {"F64", ST_F64, 64},       {"BOOL", ST_OTHER, 8},     {"U8", ST_OTHER, 8},
    {"I8", ST_OTHER, 8},       {"I16", ST_OTHER, 16},     {"U16", ST_OTHER, 16},
    {"I32", ST_OTHER, 32},     {"U32", ST_OTHER, 32},     {"I64", ST_OTHER, 64},
    {"U64", ST_OTHER, 64},     {"F8_E4M3", ST_OTHER, 8},  {"F8_E5M2", ST_OTHER, 8},
    {"F8_E8M0", ST_OTHER, 8},  {"F4", ST_OTHER, 4},       {"F6_E2M3", ST_OTHER, 6},
    {"F6_E3M2", ST_OTHER, 6},  {"C64", ST_OTHER, 64},
};

static const st_dtype_info *st_dtype_find(const char *name) {
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(st_dtypes[i].name, name) == 0) return &st_dtypes[i];
    return NULL;
}

/* ---- conversions (exact bit-level definitions, no host float16 needed) --- */
static float st_bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* IEEE binary16 -> binary32, exact for every input (subnormals, inf, nan). */
static float st_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) /* inf / nan: keep the payload in the top mantissa bits */
        return st_bits_to_f32(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        if (mant == 0) return st_bits_to_f32(sign);
        /* subnormal: mant * 2^-24, exact in binary32 */
        int e = -1;
        do {
            mant <<= 1;
            e++;
        } while (!(mant & 0x400u));
        mant &= 0x3ffu;
        return st_bits_to_f32(sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13));
    }
    return st_bits_to_f32(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

static uint16_t st_le16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint64_t st_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* Converts n elements of `kind` at src (little-endian) to floats at dst. */
static void st_convert(st_dtype kind, const unsigned char *src, size_t n, float *dst) {
    switch (kind) {
    case ST_F32:
        for (size_t i = 0; i < n; i++) {
            const unsigned char *p = src + 4 * i;
            dst[i] = st_bits_to_f32((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                                    (uint32_t)p[3] << 24);
        }
        break;
    case ST_F16:
        for (size_t i = 0; i < n; i++) dst[i] = st_f16_to_f32(st_le16(src + 2 * i));
        break;
    case ST_BF16:
        for (size_t i = 0; i < n; i++) dst[i] = st_bits_to_f32((uint32_t)st_le16(src + 2 * i) << 16);
        break;
    case ST_F64:
        for (size_t i = 0; i < n; i++) {
            uint64_t u = st_le64(src + 8 * i);
            double d;
            memcpy(&d, &u, sizeof d);
            dst[i] = (float)d; /* IEEE round to nearest; out of range -> inf (Annex F) */
        }
        break;
    case ST_OTHER:
        MJ_ASSERT(0);
    }
}

/* ---- a byte source: a file or a memory buffer ----------------------------- */
typedef struct st_source {
    FILE *f;                   /* NULL: memory */
    const unsigned char *mem;
    size_t pos, size;
} st_source;

static mj_status st_read(st_source *s, void *dst, size_t n) {
    if (n == 0) return MJ_OK;
    if (!s->f) {
        MJ_ASSERT(n <= s->size - s->pos); /* bounds were validated against size */
        memcpy(dst, s->mem + s->pos, n);
        s->pos += n;
        return MJ_OK;
    }
    size_t got = fread(dst, 1, n, s->f);
    if (got != n) {
        if (ferror(s->f))
            return mj_fail(MJ_ERR_IO, "read error at byte %zu: %s", s->pos + got, strerror(errno));
        return mj_fail(MJ_ERR_IO, "unexpected end of file at byte %zu (the file shrank while reading?)",
                       s->pos + got);
    }
    s->pos += n;
    return MJ_OK;
}

/* ---- header ----------------------------------------------------------------- */
typedef struct st_entry {
    const char *key;  /* borrowed from the JSON object */
    const st_dtype_info *dtype;
    int rank;         /* >= 1 (a scalar becomes [1]) */
    int64_t shape[MJ_MAX_RANK];
    int64_t numel;
    uint64_t begin, end;
    mj_tensor *t;
} st_entry;

static int st_entry_cmp(const void *a, const void *b) {
    const st_entry *x = *(const st_entry *const *)a, *y = *(const st_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static mj_status st_parse_metadata(json_t *meta, mj_tensor_dict *d) {
    if (!json_is_object(meta))
        return mj_fail(MJ_ERR_FORMAT, "\"__metadata__\" is not an object");
    const char *k;
    json_t *v;
    json_object_foreach(meta, k, v) {
        if (!json_is_string(v))
            return mj_fail(MJ_ERR_FORMAT, "\"__metadata__\" entry '%s' is not a string", k);
        MJ_TRY(mj_tensor_dict_set_meta(d, k, json_string_value(v)));
    }
    return MJ_OK;
}

/* Reads one non-negative JSON integer. */
static bool st_uint(json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static mj_status st_parse_entry(const char *key, json_t *v, uint64_t data_len, st_entry *e) {
    char sbuf[128];
    if (key[0] == '\0') return mj_fail(MJ_ERR_FORMAT, "a tensor has an empty name");
    if (!json_is_object(v)) return mj_fail(MJ_ERR_FORMAT, "tensor '%s': entry is not an object", key);
    e->key = key;

    json_t *jd = json_object_get(v, "dtype");
    if (!jd) return mj_fail(MJ_ERR_FORMAT, "tensor '%s' has no \"dtype\"", key);
    if (!json_is_string(jd)) return mj_fail(MJ_ERR_FORMAT, "tensor '%s': \"dtype\" is not a string", key);
    const char *dname = json_string_value(jd);
    e->dtype = st_dtype_find(dname);
    if (!e->dtype) return mj_fail(MJ_ERR_FORMAT, "tensor '%s' has unknown dtype '%s'", key, dname);
    if (e->dtype->kind == ST_OTHER)
        return mj_fail(MJ_ERR_UNSUPPORTED,
                       "tensor '%s' has dtype %s; maskjit reads F32, F16, BF16, F64", key, dname);

    json_t *js = json_object_get(v, "shape");
    if (!js) return mj_fail(MJ_ERR_FORMAT, "tensor '%s' has no \"shape\"", key);
    if (!json_is_array(js)) return mj_fail(MJ_ERR_FORMAT, "tensor '%s': \"shape\" is not an array", key);
    size_t rank = json_array_size(js);
    if (rank > MJ_MAX_RANK)
        return mj_fail(MJ_ERR_UNSUPPORTED, "tensor '%s' has rank %zu; maskjit supports rank 1-%d (and 0, read as [1])",
                       key, rank, MJ_MAX_RANK);
    for (size_t i = 0; i < rank; i++) {
        json_t *jdim = json_array_get(js, i);
        if (!json_is_integer(jdim))
            return mj_fail(MJ_ERR_FORMAT, "tensor '%s': shape entry %zu is not an integer", key, i);
        json_int_t dim = json_integer_value(jdim);
        if (dim < 0)
            return mj_fail(MJ_ERR_FORMAT, "tensor '%s': shape entry %zu is negative (%lld)", key, i,
                           (long long)dim);
        e->shape[i] = (int64_t)dim;
    }
    e->rank = (int)rank;
    if (rank == 0) { /* a scalar: maskjit tensors have rank >= 1 */
        e->rank = 1;
        e->shape[0] = 1;
    }
    if (mj_shape_numel(e->rank, e->shape, &e->numel) != MJ_OK)
        return mj_fail(MJ_ERR_LIMIT, "tensor '%s': shape %s has more than 2^40 elements", key,
                       mj_shape_str(sbuf, sizeof sbuf, e->rank, e->shape));

    json_t *jo = json_object_get(v, "data_offsets");
    if (!jo) return mj_fail(MJ_ERR_FORMAT, "tensor '%s' has no \"data_offsets\"", key);
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        !st_uint(json_array_get(jo, 0), &e->begin) || !st_uint(json_array_get(jo, 1), &e->end))
        return mj_fail(MJ_ERR_FORMAT,
                       "tensor '%s': \"data_offsets\" is not a pair of non-negative integers", key);
    if (e->begin > e->end)
        return mj_fail(MJ_ERR_FORMAT, "tensor '%s': data_offsets [%llu, %llu] have begin > end", key,
                       (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->end > data_len)
        return mj_fail(MJ_ERR_FORMAT,
                       "tensor '%s': data_offsets [%llu, %llu] run past the data section (%llu bytes)",
                       key, (unsigned long long)e->begin, (unsigned long long)e->end,
                       (unsigned long long)data_len);
    /* numel <= 2^40 and bits <= 64, so this cannot overflow */
    uint64_t bits = (uint64_t)e->numel * (uint64_t)e->dtype->bits;
    uint64_t nbytes = (bits + 7) / 8;
    if (nbytes != e->end - e->begin)
        return mj_fail(MJ_ERR_FORMAT,
                       "tensor '%s': shape %s of %s needs %llu bytes but data_offsets [%llu, %llu] "
                       "span %llu",
                       key, mj_shape_str(sbuf, sizeof sbuf, e->rank, e->shape), e->dtype->name,
                       (unsigned long long)nbytes, (unsigned long long)e->begin,
                       (unsigned long long)e->end, (unsigned long long)(e->end - e->begin));
    return MJ_OK;
}

/* Checks the entries tile [0, data_len) exactly; fills `sorted` (by begin). */
static mj_status st_check_tiling(st_entry **sorted, size_t n, uint64_t data_len) {
    qsort(sorted, n, sizeof *sorted, st_entry_cmp);
    uint64_t at = 0;
    const st_entry *prev = NULL;
    for (size_t i = 0; i < n; i++) {
        const st_entry *e = sorted[i];
        if (e->begin < at)
            return mj_fail(MJ_ERR_FORMAT,
                           "tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s' [%llu, %llu]",
                           e->key, (unsigned long long)e->begin, (unsigned long long)e->end,
                           prev->key, (unsigned long long)prev->begin,
                           (unsigned long long)prev->end);
        if (e->begin > at)
            return mj_fail(MJ_ERR_FORMAT,
                           "hole in the data section: bytes [%llu, %llu) belong to no tensor "
                           "(next is '%s' at %llu)",
                           (unsigned long long)at, (unsigned long long)e->begin, e->key,
                           (unsigned long long)e->begin);
        at = e->end;
        if (e->end > e->begin) prev = e;
    }
    if (at != data_len)
        return mj_fail(MJ_ERR_FORMAT,
                       "the data section has %llu bytes but the tensors cover only [0, %llu)",
                       (unsigned long long)data_len, (unsigned long long)at);
    return MJ_OK;
}

/* Reads one tensor's data from the source into e->t. */
static mj_status st_read_tensor(st_source *src, st_entry *e, unsigned char *chunk) {
    float *dst = e->t->data;
    size_t n = (size_t)e->numel;
    if (e->dtype->kind == ST_F32 && !ST_BIG_ENDIAN)
        return st_read(src, dst, n * sizeof(float)); /* no copy through a buffer */
    size_t esize = (size_t)e->dtype->bits / 8;
    size_t per = ST_CHUNK / esize;
    for (size_t done = 0; done < n;) {
        size_t k = n - done < per ? n - done : per;
        MJ_TRY(st_read(src, chunk, k * esize));
        st_convert(e->dtype->kind, chunk, k, dst + done);
        done += k;
    }
    return MJ_OK;
}

/* The common loader. The source is positioned at the header (after the 8
 * length bytes); header_len and total size were checked by the caller. */
static mj_status st_load_from(st_source *src, uint64_t header_len, uint64_t data_len,
                              mj_tensor_dict **out) {
    mj_status s = MJ_OK;
    char *hdr = NULL;         /* owned copy, file sources only */
    const char *htext = NULL; /* the header bytes */
    json_t *root = NULL;
    st_entry *entries = NULL;
    st_entry **sorted = NULL;
    unsigned char *chunk = NULL;
    mj_tensor_dict *d = NULL;
    size_t n = 0;

    if (src->f) {
        hdr = mj_alloc((size_t)header_len + 1);
        if (!hdr) return MJ_ERR_NOMEM;
        s = st_read(src, hdr, (size_t)header_len);
        if (s != MJ_OK) goto done;
        htext = hdr;
    } else {
        htext = (const char *)src->mem + src->pos; /* parsed in place */
        src->pos += (size_t)header_len;
    }

    json_error_t jerr;
    root = json_loadb(htext, (size_t)header_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        s = mj_fail(MJ_ERR_FORMAT, "invalid JSON header at line %d, column %d: %s", jerr.line,
                    jerr.column, jerr.text);
        goto done;
    }
    if (!json_is_object(root)) {
        s = mj_fail(MJ_ERR_FORMAT, "the JSON header is not an object");
        goto done;
    }
    s = mj_tensor_dict_new(&d);
    if (s != MJ_OK) goto done;

    size_t cap = json_object_size(root);
    size_t n_tensors = cap - (json_object_get(root, "__metadata__") != NULL);
    if (n_tensors > ST_MAX_TENSORS) {
        s = mj_fail(MJ_ERR_LIMIT, "the header lists %zu tensors; maskjit loads at most %d",
                    n_tensors, ST_MAX_TENSORS);
        goto done;
    }
    entries = mj_alloc_array(cap ? cap : 1, sizeof *entries);
    sorted = mj_alloc_array(cap ? cap : 1, sizeof *sorted);
    chunk = mj_alloc(ST_CHUNK);
    if (!entries || !sorted || !chunk) {
        s = MJ_ERR_NOMEM;
        goto done;
    }
    const char *key;
    json_t *val;
    /* jansson (>= 2.8) iterates in insertion order = the order in the file */
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            s = st_parse_metadata(val, d);
        } else {
            s = st_parse_entry(key, val, data_len, &entries[n]);
            if (s == MJ_OK) {
                sorted[n] = &entries[n];
                n++;
            }
        }
        if (s != MJ_OK) goto done;
    }
    s = st_check_tiling(sorted, n, data_len);
    if (s != MJ_OK) goto done;

    for (size_t i = 0; i < n; i++) {
        s = mj_tensor_new_uninit(&entries[i].t, entries[i].rank, entries[i].shape);
        if (s != MJ_OK) goto done;
    }
    /* tiling holds, so reading in offset order consumes the data section
     * front to back: a plain sequential stream */
    for (size_t i = 0; i < n; i++) {
        s = st_read_tensor(src, sorted[i], chunk);
        if (s != MJ_OK) goto done;
    }
    for (size_t i = 0; i < n; i++) {
        s = mj_tensor_dict_set(d, entries[i].key, entries[i].t);
        if (s != MJ_OK) goto done;
    }

done:
    for (size_t i = 0; i < n; i++) mj_tensor_release(entries[i].t);
    free(entries);
    free(sorted);
    free(chunk);
    json_decref(root);
    free(hdr);
    if (s != MJ_OK) {
        mj_tensor_dict_free(d);
        return s;
    }
    *out = d;
    return MJ_OK;
}

/* Validates the 8-byte prefix against the total size. */
static mj_status st_check_prefix(const unsigned char len_bytes[8], uint64_t size,
                                 uint64_t *header_len, uint64_t *data_len) {
    uint64_t n = st_le64(len_bytes);
    if (n > ST_HEADER_LIMIT)
        return mj_fail(MJ_ERR_LIMIT, "header length %llu exceeds the limit of %llu bytes (100 MB)",
                       (unsigned long long)n, (unsigned long long)ST_HEADER_LIMIT);
    if (n > size - 8)
        return mj_fail(MJ_ERR_FORMAT,
                       "header length %llu runs past the end of the file (%llu bytes in all, "
                       "%llu after the length)",
                       (unsigned long long)n, (unsigned long long)size,
                       (unsigned long long)(size - 8));
    *header_len = n;
    *data_len = size - 8 - n;
    return MJ_OK;
}

mj_status mj_safetensors_parse(const void *bytes, size_t size, mj_tensor_dict **out) {
    if (!out) return mj_fail(MJ_ERR_INVALID, "safetensors_parse: out is NULL");
    if (!bytes && size) return mj_fail(MJ_ERR_INVALID, "safetensors_parse: bytes is NULL");
    mj_status s;
    if (size < 8) {
        s = mj_fail(MJ_ERR_FORMAT, "%zu bytes are too few for the 8-byte header length", size);
    } else {
        uint64_t hl = 0, dl = 0;
        s = st_check_prefix(bytes, size, &hl, &dl);
        if (s == MJ_OK) {
            st_source src = {.f = NULL, .mem = bytes, .pos = 8, .size = size};
            s = st_load_from(&src, hl, dl, out);
        }
    }
    if (s != MJ_OK) return mj_fail_prefix(s, "safetensors");
    return MJ_OK;
}

mj_status mj_safetensors_load(const char *path, mj_tensor_dict **out) {
    if (!path || !out) return mj_fail(MJ_ERR_INVALID, "safetensors_load: path or out is NULL");
    FILE *f = fopen(path, "rb");
    if (!f) return mj_fail(MJ_ERR_IO, "loading '%s': cannot open: %s", path, strerror(errno));
    mj_status s = MJ_OK;
    struct stat st;
    unsigned char lenb[8];
    uint64_t hl = 0, dl = 0;
    if (fstat(fileno(f), &st) != 0) {
        s = mj_fail(MJ_ERR_IO, "cannot stat: %s", strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        s = mj_fail(MJ_ERR_IO, "not a regular file");
    } else if ((uint64_t)st.st_size < 8) {
        s = mj_fail(MJ_ERR_FORMAT, "the file has %lld bytes, too few for the 8-byte header length",
                    (long long)st.st_size);
    } else {
        st_source src = {.f = f, .pos = 0, .size = (size_t)st.st_size};
        s = st_read(&src, lenb, 8);
        if (s == MJ_OK) s = st_check_prefix(lenb, (uint64_t)st.st_size, &hl, &dl);
        if (s == MJ_OK) s = st_load_from(&src, hl, dl, out);
    }
    fclose(f); /* read-only: a close error cannot lose data */
    if (s != MJ_OK) return mj_fail_prefix(s, "loading '%s'", path);
    return MJ_OK;
}

/* ---- save ------------------------------------------------------------------- */
static mj_status st_build_header(const mj_tensor_dict *d, char **out, size_t *len) {
    json_t *root = json_object();
    if (!root) return mj_fail(MJ_ERR_NOMEM, "out of memory building the header");
    mj_status s = MJ_OK;
    int nmeta = mj_tensor_dict_meta_size(d);
    if (nmeta > 0) {
        json_t *meta = json_object();
        if (!meta || json_object_set_new(root, "__metadata__", meta) != 0) {
            s = mj_fail(MJ_ERR_NOMEM, "out of memory building the header");
            goto fail;
        }
        for (int i = 0; i < nmeta; i++) {
            const char *k = mj_tensor_dict_meta_key(d, i), *v = mj_tensor_dict_meta_value(d, i);
            json_t *jv = json_string(v); /* NULL on invalid UTF-8 */
            if (!jv || json_object_set_new(meta, k, jv) != 0) {
                s = mj_fail(MJ_ERR_INVALID, "metadata '%s' is not valid UTF-8", k);
                goto fail;
            }
        }
    }
    uint64_t off = 0;
    for (int i = 0; i < mj_tensor_dict_size(d); i++) {
        const char *k = mj_tensor_dict_key(d, i);
        const mj_tensor *t = mj_tensor_dict_value(d, i);
        if (strcmp(k, "__metadata__") == 0) {
            s = mj_fail(MJ_ERR_INVALID, "a tensor may not be named \"__metadata__\"");
            goto fail;
        }
        if (!*k) { /* the loader refuses it: the file would not load back */
            s = mj_fail(MJ_ERR_INVALID, "a tensor needs a name (the dict has one under \"\")");
            goto fail;
        }
        json_t *shape = json_array();
        for (int r = 0; shape && r < mj_tensor_rank(t); r++)
            if (json_array_append_new(shape, json_integer(mj_tensor_dim(t, r))) != 0) {
                json_decref(shape);
                shape = NULL;
            }
        uint64_t nbytes = (uint64_t)mj_tensor_numel(t) * sizeof(float);
        json_t *entry = json_pack("{s:s, s:o?, s:[I,I]}", "dtype", "F32", "shape", shape,
                                  "data_offsets", (json_int_t)off, (json_int_t)(off + nbytes));
        if (!entry || !shape) {
            json_decref(entry);
            s = mj_fail(MJ_ERR_NOMEM, "out of memory building the header");
            goto fail;
        }
        if (json_object_set_new(root, k, entry) != 0) {
            s = mj_fail(MJ_ERR_INVALID, "tensor name '%s' is not valid UTF-8", k);
            goto fail;
        }
        off += nbytes;
    }
    /* print into our own buffer, padded with spaces so the data section
     * starts 8-aligned (8 + a multiple of 8) */
    const size_t flags = JSON_COMPACT | JSON_PRESERVE_ORDER;
    size_t n = json_dumpb(root, NULL, 0, flags);
    if (n == 0) {
        s = mj_fail(MJ_ERR_NOMEM, "out of memory printing the header");
        goto fail;
    }
    size_t padded = (n + 7) & ~(size_t)7;
    char *text = mj_alloc(padded);
    if (!text) {
        s = MJ_ERR_NOMEM;
        goto fail;
    }
    size_t n2 = json_dumpb(root, text, padded, flags);
    MJ_ASSERT(n2 == n);
    memset(text + n, ' ', padded - n);
    json_decref(root);
    *out = text;
    *len = padded;
    return MJ_OK;
fail:
    json_decref(root);
    return s;
}

static mj_status st_write_tensor(mj_outfile *o, const mj_tensor *t) {
    const float *data = t->data; /* not the public accessor: no TracerWarning */
    size_t n = (size_t)mj_tensor_numel(t);
#if ST_BIG_ENDIAN
    unsigned char buf[ST_CHUNK];
    for (size_t done = 0; done < n;) {
        size_t k = n - done < ST_CHUNK / 4 ? n - done : ST_CHUNK / 4;
        for (size_t i = 0; i < k; i++) {
            uint32_t u;
            memcpy(&u, &data[done + i], 4);
            for (int b = 0; b < 4; b++) buf[4 * i + b] = (unsigned char)(u >> (8 * b));
        }
        MJ_TRY(mj_outfile_write(o, buf, k * 4));
        done += k;
    }
    return MJ_OK;
#else
    return mj_outfile_write(o, data, n * sizeof(float));
#endif
}

mj_status mj_safetensors_save(const char *path, const mj_tensor_dict *d) {
    if (!path || !d) return mj_fail(MJ_ERR_INVALID, "safetensors_save: path or dict is NULL");
    if (path[0] == '\0') return mj_fail(MJ_ERR_INVALID, "safetensors_save: empty path");

    char *hdr = NULL;
    size_t padded = 0;
    mj_status s = st_build_header(d, &hdr, &padded);
    mj_outfile o;
    if (s == MJ_OK) s = mj_outfile_open(&o, path);
    if (s == MJ_OK) {
        unsigned char lenb[8];
        for (int b = 0; b < 8; b++) lenb[b] = (unsigned char)((uint64_t)padded >> (8 * b));
        s = mj_outfile_write(&o, lenb, 8);
        if (s == MJ_OK) s = mj_outfile_write(&o, hdr, padded);
        for (int i = 0; s == MJ_OK && i < mj_tensor_dict_size(d); i++)
            s = st_write_tensor(&o, mj_tensor_dict_value(d, i));
        if (s == MJ_OK)
            s = mj_outfile_commit(&o);
        else
            mj_outfile_abort(&o);
    }
    free(hdr);
    if (s != MJ_OK) return mj_fail_prefix(s, "saving '%s'", path);
    return MJ_OK;
}
