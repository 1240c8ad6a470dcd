/* safetensors load/parse/save: round trips, every hostile header the loader
 * must refuse, dtype conversions against independently computed values, and
 * the atomic-save guarantees. Hostile files are built here byte by byte from
 * a header string and a data blob, so each test names exactly what is wrong. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "maskjit.h"
#include "test_util.h"

#define FIXTURES MJ_SOURCE_ROOT "/tests/fixtures"

/* ---- helpers ---------------------------------------------------------------- */
MJT_TMPDIR_FIXTURE("mj-st")

TestSuite(safetensors, .init = make_tmpdir, .fini = remove_tmpdir);

/* Builds "u64 len | header | data" in a malloc'd buffer. */
static unsigned char *build(const char *header, const void *data, size_t data_len, size_t *size) {
    size_t hl = strlen(header);
    *size = 8 + hl + data_len;
    unsigned char *b = malloc(*size ? *size : 1);
    cr_assert_not_null(b);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, header, hl);
    if (data_len) memcpy(b + 8 + hl, data, data_len);
    return b;
}

static const char *tmp_path(const char *name) {
    static char p[256];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    return p;
}

/* Both entry points must refuse the file with the same status and a message
 * containing `frag`; load's message must also name the file. Nothing is
 * returned (*out untouched). */
static void expect_bad(const char *header, const void *data, size_t data_len, mj_status want,
                       const char *frag) {
    size_t size;
    unsigned char *b = build(header, data, data_len, &size);
    mj_tensor_dict *sentinel = (mj_tensor_dict *)(uintptr_t)0x1234, *d = sentinel;
    mj_status s = mj_safetensors_parse(b, size, &d);
    cr_assert_eq(s, want, "parse: got %s, want %s: %s", mj_status_name(s), mj_status_name(want),
                 mj_last_error());
    cr_assert_not_null(strstr(mj_last_error(), frag), "parse message '%s' lacks '%s'",
                       mj_last_error(), frag);
    cr_assert_eq(d, sentinel);

    const char *path = tmp_path("bad.safetensors");
    mjt_write_file(path, b, size);
    s = mj_safetensors_load(path, &d);
    cr_assert_eq(s, want, "load: got %s, want %s: %s", mj_status_name(s), mj_status_name(want),
                 mj_last_error());
    cr_assert_not_null(strstr(mj_last_error(), frag), "load message '%s' lacks '%s'",
                       mj_last_error(), frag);
    cr_assert_not_null(strstr(mj_last_error(), path), "load message '%s' does not name the file",
                       mj_last_error());
    cr_assert_eq(d, sentinel);
    free(b);
}

static mj_tensor_dict *parse_ok(const char *header, const void *data, size_t data_len) {
    size_t size;
    unsigned char *b = build(header, data, data_len, &size);
    mj_tensor_dict *d = NULL;
    mj_status s = mj_safetensors_parse(b, size, &d);
    cr_assert_eq(s, MJ_OK, "parse failed: %s", mj_last_error());
    free(b);
    return d;
}

static void assert_same_float(float got, float want, const char *what, int i) {
    if (isnan(want)) {
        cr_assert(isnan(got), "%s[%d]: got %a, want nan", what, i, (double)got);
        return;
    }
    cr_assert_eq(mjt_f32_bits(got), mjt_f32_bits(want), "%s[%d]: got %a (0x%08x), want %a (0x%08x)", what, i,
                 (double)got, mjt_f32_bits(got), (double)want, mjt_f32_bits(want));
}

/* ---- round trip ------------------------------------------------------------- */
static mj_tensor *filled(int rank, const int64_t *shape, uint32_t seed) {
    mj_tensor *t;
    OK(mj_tensor_zeros(&t, rank, shape));
    float *p = mj_tensor_data_mut(t);
    uint32_t x = seed;
    for (int64_t i = 0; i < mj_tensor_numel(t); i++) {
        x = x * 1664525u + 1013904223u;
        p[i] = mjt_bits_f32(x); /* arbitrary bit patterns: denormals, nans, infs */
    }
    /* the special values the brief asks for, at fixed places */
    if (mj_tensor_numel(t) > 0) p[0] = -0.0f;
    if (mj_tensor_numel(t) > 3) {
        p[1] = INFINITY;
        p[2] = -INFINITY;
        p[3] = mjt_bits_f32(0x7fc01234u); /* a nan with a payload */
    }
    return t;
}

Test(safetensors, round_trip_shapes_metadata_order_bits) {
    const int64_t s1[] = {7}, s2[] = {3, 5}, s3[] = {2, 3, 4}, s4[] = {2, 1, 3, 2}, s0[] = {0};
    const char *keys[] = {"zeta", "alpha", "m.parametrizations.weight.0.mask", "beta", "empty"};
    mj_tensor *ts[] = {filled(1, s1, 1), filled(2, s2, 2), filled(3, s3, 3), filled(4, s4, 4),
                       filled(1, s0, 5)};
    mj_tensor_dict *d;
    OK(mj_tensor_dict_new(&d));
    for (int i = 0; i < 5; i++) cr_assert_eq(mj_tensor_dict_set(d, keys[i], ts[i]), MJ_OK);
    OK(mj_tensor_dict_set_meta(d, "maskjit.model", "mlp:2,3"));
    OK(mj_tensor_dict_set_meta(d, "note", "caf\xc3\xa9 \"quoted\" \\"));

    const char *path = tmp_path("rt.safetensors");
    OK(mj_safetensors_save(path, d));

    /* the bytes follow the format independently of our loader: 8-aligned
     * header, then the tensors' raw little-endian floats in dict order */
    size_t n;
    unsigned char *raw = mjt_read_file(path, &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | raw[i];
    cr_assert_eq(hl % 8, 0, "header length %llu is not a multiple of 8", (unsigned long long)hl);
    cr_assert_eq(raw[8], '{');
    cr_assert(raw[8 + hl - 1] == '}' || raw[8 + hl - 1] == ' ');
    size_t at = 8 + (size_t)hl;
    for (int i = 0; i < 5; i++) {
        size_t bytes = (size_t)mj_tensor_numel(ts[i]) * 4;
        cr_assert_eq(memcmp(raw + at, mj_tensor_data(ts[i]), bytes), 0, "data of %s", keys[i]);
        at += bytes;
    }
    cr_assert_eq(at, n);

    mj_tensor_dict *back;
    OK(mj_safetensors_load(path, &back));
    mj_tensor_dict *parsed;
    OK(mj_safetensors_parse(raw, n, &parsed));
    mj_tensor_dict *both[] = {back, parsed};
    for (int b = 0; b < 2; b++) {
        mj_tensor_dict *r = both[b];
        cr_assert_eq(mj_tensor_dict_size(r), 5);
        for (int i = 0; i < 5; i++) {
            cr_assert_str_eq(mj_tensor_dict_key(r, i), keys[i]);
            const mj_tensor *t = mj_tensor_dict_value(r, i);
            cr_assert_eq(mj_tensor_rank(t), mj_tensor_rank(ts[i]));
            for (int k = 0; k < mj_tensor_rank(t); k++)
                cr_assert_eq(mj_tensor_dim(t, k), mj_tensor_dim(ts[i], k));
            cr_assert_eq(memcmp(mj_tensor_data(t), mj_tensor_data(ts[i]),
                                (size_t)mj_tensor_numel(t) * 4), 0, "bits of %s", keys[i]);
        }
        cr_assert_eq(mj_tensor_dict_meta_size(r), 2);
        cr_assert_str_eq(mj_tensor_dict_meta_key(r, 0), "maskjit.model");
        cr_assert_str_eq(mj_tensor_dict_get_meta(r, "maskjit.model"), "mlp:2,3");
        cr_assert_str_eq(mj_tensor_dict_get_meta(r, "note"), "caf\xc3\xa9 \"quoted\" \\");
    }
    free(raw);
    mj_tensor_dict_free(back);
    mj_tensor_dict_free(parsed);
    mj_tensor_dict_free(d);
    for (int i = 0; i < 5; i++) mj_tensor_release(ts[i]);
}

Test(safetensors, empty_dict_round_trip) {
    mj_tensor_dict *d, *back;
    OK(mj_tensor_dict_new(&d));
    const char *path = tmp_path("empty.safetensors");
    OK(mj_safetensors_save(path, d));
    OK(mj_safetensors_load(path, &back));
    cr_assert_eq(mj_tensor_dict_size(back), 0);
    cr_assert_eq(mj_tensor_dict_meta_size(back), 0);
    mj_tensor_dict_free(back);
    mj_tensor_dict_free(d);
}

Test(safetensors, file_order_not_offset_order_and_trailing_spaces) {
    /* "b" comes first in the JSON but second in the data section; the dict
     * lists tensors in JSON order. The header ends in padding spaces. */
    const float data[3] = {1.0f, 2.0f, 3.0f};
    mj_tensor_dict *d = parse_ok("{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]},"
                                 "\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}   ",
                                 data, sizeof data);
    cr_assert_eq(mj_tensor_dict_size(d), 2);
    cr_assert_str_eq(mj_tensor_dict_key(d, 0), "b");
    cr_assert_str_eq(mj_tensor_dict_key(d, 1), "a");
    const mj_tensor *b = mj_tensor_dict_value(d, 0), *a = mj_tensor_dict_value(d, 1);
    cr_assert_eq(mj_tensor_dim(b, 0), 2);
    cr_assert_eq(mj_tensor_data(b)[0], 2.0f);
    cr_assert_eq(mj_tensor_data(b)[1], 3.0f);
    /* rank 0 loads as shape [1] */
    cr_assert_eq(mj_tensor_rank(a), 1);
    cr_assert_eq(mj_tensor_dim(a, 0), 1);
    cr_assert_eq(mj_tensor_data(a)[0], 1.0f);
    mj_tensor_dict_free(d);
}

/* ---- hostile files ---------------------------------------------------------- */
static const float F2[2] = {1.0f, 2.0f};
#define ENTRY(k, dt, shape, off) "\"" k "\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":" off "}"

Test(safetensors, bad_too_short) {
    const unsigned char b[5] = {1, 0, 0, 0, 0};
    mj_tensor_dict *d = NULL;
    cr_assert_eq(mj_safetensors_parse(b, sizeof b, &d), MJ_ERR_FORMAT);
    cr_assert_not_null(strstr(mj_last_error(), "too few for the 8-byte header length"));
    const char *path = tmp_path("short.safetensors");
    mjt_write_file(path, b, sizeof b);
    cr_assert_eq(mj_safetensors_load(path, &d), MJ_ERR_FORMAT);
    cr_assert_not_null(strstr(mj_last_error(), "has 5 bytes"), "%s", mj_last_error());
    cr_assert_null(d);
}

Test(safetensors, bad_header_length_over_limit) {
    unsigned char b[16] = {0};
    uint64_t n = UINT64_C(100000001);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(n >> (8 * i));
    memcpy(b + 8, "{}      ", 8);
    mj_tensor_dict *d = NULL;
    cr_assert_eq(mj_safetensors_parse(b, sizeof b, &d), MJ_ERR_LIMIT);
    cr_assert_not_null(strstr(mj_last_error(), "header length 100000001 exceeds"), "%s",
                       mj_last_error());
    /* the biggest u64 too: no wrap-around in the size checks */
    memset(b, 0xff, 8);
    cr_assert_eq(mj_safetensors_parse(b, sizeof b, &d), MJ_ERR_LIMIT);
    cr_assert_null(d);
}

Test(safetensors, bad_header_length_past_eof) {
    unsigned char b[16] = {0};
    b[0] = 9; /* 9 header bytes claimed, 8 present */
    memcpy(b + 8, "{}      ", 8);
    mj_tensor_dict *d = NULL;
    cr_assert_eq(mj_safetensors_parse(b, sizeof b, &d), MJ_ERR_FORMAT);
    cr_assert_not_null(strstr(mj_last_error(), "header length 9 runs past the end of the file"),
                       "%s", mj_last_error());
    const char *path = tmp_path("eof.safetensors");
    mjt_write_file(path, b, sizeof b);
    cr_assert_eq(mj_safetensors_load(path, &d), MJ_ERR_FORMAT);
    cr_assert_not_null(strstr(mj_last_error(), "runs past the end"));
    cr_assert_null(d);
}

/* Hostile headers, each with its data section: parse and load refuse them
 * with the status and a message holding frag (expect_bad). */
static const float Z[8]; /* zeros, for data sections that only need a size */
struct bad_case {
    const char *name, *header;
    const void *data;
    size_t len;
    mj_status status;
    const char *frag;
};

static const struct bad_case bad_cases[] = {
    {"bad_json", "{\"a\": {\"dtype\": \"F32\",\n \"shape\": [2,, }", NULL, 0, MJ_ERR_FORMAT,
     "invalid JSON header at line 2, column"},
    {"bad_json_trailing_garbage", "{} x", NULL, 0, MJ_ERR_FORMAT,
     "invalid JSON header at line 1"},
    {"bad_utf8", "{\"\xff\xfe\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
     F2, sizeof F2, MJ_ERR_FORMAT,
     "invalid JSON header"},
    {"bad_nul_in_key", "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
     F2, sizeof F2, MJ_ERR_FORMAT,
     "invalid JSON header"},
    {"bad_not_object", "[1, 2]", NULL, 0, MJ_ERR_FORMAT,
     "the JSON header is not an object"},
    {"bad_entry_not_object", "{\"w\": [1]}", NULL, 0, MJ_ERR_FORMAT,
     "tensor 'w': entry is not an object"},
    {"bad_missing_dtype", "{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", F2, sizeof F2, MJ_ERR_FORMAT,
     "tensor 'w' has no \"dtype\""},
    {"bad_dtype_not_string", "{\"w\":{\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]}}",
     F2, sizeof F2, MJ_ERR_FORMAT,
     "tensor 'w': \"dtype\" is not a string"},
    {"bad_missing_shape", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}",
     F2, sizeof F2, MJ_ERR_FORMAT,
     "tensor 'w' has no \"shape\""},
    {"bad_shape_not_array", "{" ENTRY("w", "F32", "2", "[0,8]") "}", F2, sizeof F2, MJ_ERR_FORMAT,
     "tensor 'w': \"shape\" is not an array"},
    {"bad_shape_entry_not_integer", "{" ENTRY("w", "F32", "[2.0]", "[0,8]") "}",
     F2, sizeof F2, MJ_ERR_FORMAT,
     "tensor 'w': shape entry 0 is not an integer"},
    {"bad_missing_offsets", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", F2, sizeof F2, MJ_ERR_FORMAT,
     "tensor 'w' has no \"data_offsets\""},
    {"bad_offsets_ill_typed", "{" ENTRY("w", "F32", "[2]", "[0,8,8]") "}", F2, sizeof F2, MJ_ERR_FORMAT,
     "tensor 'w': \"data_offsets\" is not a pair of non-negative integers"},
    {"bad_offsets_ill_typed", "{" ENTRY("w", "F32", "[2]", "[-8,0]") "}", F2, sizeof F2, MJ_ERR_FORMAT,
     "\"data_offsets\" is not a pair of non-negative integers"},
    {"bad_offsets_ill_typed", "{" ENTRY("w", "F32", "[2]", "\"0,8\"") "}", F2, sizeof F2, MJ_ERR_FORMAT,
     "\"data_offsets\" is not a pair"},
    {"bad_rank_5", "{" ENTRY("w", "F32", "[1,1,1,1,2]", "[0,8]") "}", F2, sizeof F2, MJ_ERR_UNSUPPORTED,
     "tensor 'w' has rank 5; maskjit supports rank 1-4 (and 0, read as [1])"},
    {"bad_negative_dim", "{" ENTRY("w", "F32", "[2,-2]", "[0,8]") "}", F2, sizeof F2, MJ_ERR_FORMAT,
     "tensor 'w': shape entry 1 is negative (-2)"},
    /* 2^31 * 2^31 * 2^31 * 4 wraps around int64: must be caught, not wrapped */
    {"bad_shape_overflow", "{" ENTRY("w", "F32", "[2147483648,2147483648,2147483648,4]", "[0,8]") "}",
     F2, sizeof F2, MJ_ERR_LIMIT,
     "tensor 'w': shape [2147483648, 2147483648"},
    /* wraps to exactly 0 in uint64 arithmetic: 2^32 * 2^32 */
    {"bad_shape_overflow", "{" ENTRY("w", "F32", "[4294967296,4294967296]", "[0,0]") "}",
     NULL, 0, MJ_ERR_LIMIT,
     "more than 2^40 elements"},
    {"bad_byte_size", "{" ENTRY("w", "F32", "[2,3]", "[0,20]") "}", Z, 20, MJ_ERR_FORMAT,
     "tensor 'w': shape [2, 3] of F32 needs 24 bytes but data_offsets [0, 20] span 20"},
    {"bad_byte_size", "{" ENTRY("h", "F16", "[3]", "[0,8]") "}", Z, 8, MJ_ERR_FORMAT,
     "shape [3] of F16 needs 6 bytes"},
    {"bad_begin_after_end", "{" ENTRY("w", "F32", "[0]", "[8,0]") "}", F2, sizeof F2, MJ_ERR_FORMAT,
     "tensor 'w': data_offsets [8, 0] have begin > end"},
    {"bad_offsets_past_data", "{" ENTRY("w", "F32", "[2]", "[4,12]") "}", F2, sizeof F2, MJ_ERR_FORMAT,
     "tensor 'w': data_offsets [4, 12] run past the data section (8 bytes)"},
    {"bad_overlap", "{" ENTRY("a", "F32", "[2]", "[0,8]") "," ENTRY("b", "F32", "[2]", "[4,12]") "}",
     Z, 12, MJ_ERR_FORMAT,
     "tensor 'b': data_offsets [4, 12] overlap tensor 'a' [0, 8]"},
    /* two names for the same bytes */
    {"bad_overlap", "{" ENTRY("a", "F32", "[2]", "[0,8]") "," ENTRY("b", "F32", "[2]", "[0,8]") "}",
     F2, sizeof F2, MJ_ERR_FORMAT,
     "overlap tensor"},
    {"bad_hole", "{" ENTRY("a", "F32", "[1]", "[0,4]") "," ENTRY("b", "F32", "[1]", "[8,12]") "}",
     Z, 12, MJ_ERR_FORMAT,
     "hole in the data section: bytes [4, 8) belong to no tensor (next is 'b' at 8)"},
    /* a hole at the start */
    {"bad_hole", "{" ENTRY("b", "F32", "[1]", "[4,8]") "}", F2, sizeof F2, MJ_ERR_FORMAT,
     "bytes [0, 4) belong to no tensor"},
    {"bad_data_not_covered", "{" ENTRY("a", "F32", "[2]", "[0,8]") "}", Z, 12, MJ_ERR_FORMAT,
     "the data section has 12 bytes but the tensors cover only [0, 8)"},
    /* no tensors at all but data bytes */
    {"bad_data_not_covered", "{}", Z, 4, MJ_ERR_FORMAT,
     "has 4 bytes but the tensors cover only [0, 0)"},
    {"bad_duplicate_key", "{" ENTRY("a", "F32", "[1]", "[0,4]") "," ENTRY("a", "F32", "[1]", "[4,8]") "}",
     F2, sizeof F2, MJ_ERR_FORMAT,
     "duplicate object key"},
    {"bad_unknown_dtype", "{" ENTRY("w", "F17", "[2]", "[0,8]") "}", F2, sizeof F2, MJ_ERR_FORMAT,
     "tensor 'w' has unknown dtype 'F17'"},
    {"bad_metadata", "{\"__metadata__\": [1]}", NULL, 0, MJ_ERR_FORMAT,
     "\"__metadata__\" is not an object"},
    {"bad_metadata", "{\"__metadata__\": {\"a\": \"x\", \"b\": 2}}", NULL, 0, MJ_ERR_FORMAT,
     "\"__metadata__\" entry 'b' is not a string"},
    {"bad_empty_name", "{" ENTRY("", "F32", "[2]", "[0,8]") "}", F2, sizeof F2, MJ_ERR_FORMAT,
     "a tensor has an empty name"},
};
#define N_BAD_CASES (sizeof bad_cases / sizeof bad_cases[0])

/* One test process per case. The parameter is the case's index: Criterion
 * runs each in a new process image, where only plain values survive. */
ParameterizedTestParameters(safetensors, bad_headers_are_refused) {
    static size_t index[N_BAD_CASES];
    for (size_t i = 0; i < N_BAD_CASES; i++) index[i] = i;
    return cr_make_param_array(size_t, index, N_BAD_CASES);
}

ParameterizedTest(size_t *i, safetensors, bad_headers_are_refused) {
    const struct bad_case *c = &bad_cases[*i];
    cr_log_info("case %s", c->name);
    expect_bad(c->header, c->data, c->len, c->status, c->frag);
}

Test(safetensors, bad_unsupported_dtypes) {
    expect_bad("{" ENTRY("k", "I64", "[1]", "[0,8]") "}", F2, sizeof F2, MJ_ERR_UNSUPPORTED,
               "tensor 'k' has dtype I64; maskjit reads F32, F16, BF16, F64");
    const char *names[] = {"I8", "U8", "BOOL", "I16", "I32", "U32", "F8_E4M3"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char hdr[160], frag[64];
        snprintf(hdr, sizeof hdr, "{\"k\":{\"dtype\":\"%s\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                 names[i]);
        snprintf(frag, sizeof frag, "has dtype %s; maskjit reads", names[i]);
        expect_bad(hdr, F2, 1, MJ_ERR_UNSUPPORTED, frag);
    }
}

Test(safetensors, bad_too_many_tensors) {
    /* 65537 empty tensors: within the 100 MB header limit, over the tensor cap */
    size_t cap = 65537 * 64 + 64, len = 0;
    char *hdr = malloc(cap);
    cr_assert_not_null(hdr);
    hdr[len++] = '{';
    for (int i = 0; i < 65537; i++)
        len += (size_t)snprintf(hdr + len, cap - len,
                                "%s\"t%d\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}",
                                i ? "," : "", i);
    snprintf(hdr + len, cap - len, "}");
    expect_bad(hdr, NULL, 0, MJ_ERR_LIMIT, "the header lists 65537 tensors; maskjit loads at most 65536");
    free(hdr);
}

Test(safetensors, missing_file) {
    mj_tensor_dict *d = NULL;
    const char *path = tmp_path("does-not-exist.safetensors");
    cr_assert_eq(mj_safetensors_load(path, &d), MJ_ERR_IO);
    cr_assert_not_null(strstr(mj_last_error(), "cannot open"), "%s", mj_last_error());
    cr_assert_not_null(strstr(mj_last_error(), path));
    cr_assert_eq(mj_safetensors_load(tmpdir, &d), MJ_ERR_IO); /* a directory */
    cr_assert_not_null(strstr(mj_last_error(), "not a regular file"), "%s", mj_last_error());
    cr_assert_null(d);
}

/* ---- dtype conversion --------------------------------------------------------
 * The expected floats come from C literals, ldexpf and the compiler's own
 * double->float conversion, never from the loader. */

/* IEEE half -> float by the textbook formula, in double arithmetic. */
static float ref_half(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 31) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexp(m, -24);
    else v = ldexp(1.0 + m / 1024.0, e - 15);
    return (float)(s ? -v : v);
}

Test(safetensors, f16_known_patterns) {
    const uint16_t bits[] = {0x3C00, 0xC000, 0x7C00, 0xFC00, 0x0001, 0x03FF,
                             0x0400, 0x7BFF, 0x8000, 0x3555, 0x8001, 0x7E00};
    const float want[] = {1.0f, -2.0f, INFINITY, -INFINITY, ldexpf(1, -24), ldexpf(1023, -24),
                          ldexpf(1, -14), 65504.0f, -0.0f, 0.333251953125f, -ldexpf(1, -24), NAN};
    unsigned char data[24];
    for (int i = 0; i < 12; i++) {
        data[2 * i] = (unsigned char)(bits[i] & 0xff);
        data[2 * i + 1] = (unsigned char)(bits[i] >> 8);
    }
    mj_tensor_dict *d = parse_ok("{" ENTRY("h", "F16", "[3,4]", "[0,24]") "}", data, sizeof data);
    const mj_tensor *t = mj_tensor_dict_get(d, "h");
    cr_assert_eq(mj_tensor_rank(t), 2);
    cr_assert_eq(mj_tensor_dim(t, 0), 3);
    for (int i = 0; i < 12; i++) assert_same_float(mj_tensor_data(t)[i], want[i], "f16", i);
    mj_tensor_dict_free(d);
}

Test(safetensors, f16_all_65536_patterns_streamed) {
    /* every half value, twice (131072 elements: more than one conversion chunk) */
    const size_t n = 2 * 65536;
    unsigned char *data = malloc(2 * n);
    for (size_t i = 0; i < n; i++) {
        data[2 * i] = (unsigned char)(i & 0xff);
        data[2 * i + 1] = (unsigned char)((i >> 8) & 0xff);
    }
    size_t size;
    unsigned char *b =
        build("{" ENTRY("h", "F16", "[2,65536]", "[0,262144]") "}", data, 2 * n, &size);
    const char *path = tmp_path("f16.safetensors");
    mjt_write_file(path, b, size);
    mj_tensor_dict *d;
    OK(mj_safetensors_load(path, &d));
    const float *got = mj_tensor_data(mj_tensor_dict_get(d, "h"));
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        float want = ref_half((uint16_t)(i & 0xffff));
        bool ok = isnan(want) ? isnan(got[i]) : mjt_f32_bits(got[i]) == mjt_f32_bits(want);
        if (!ok && bad++ == 0) first = i;
    }
    cr_assert_eq(bad, 0, "%zu of %zu halves differ, first 0x%04zx: got %a want %a", bad, n,
                 first & 0xffff, (double)got[first], (double)ref_half((uint16_t)(first & 0xffff)));
    mj_tensor_dict_free(d);
    MJT_FREE(b, data);
}

Test(safetensors, bf16_known_patterns) {
    const uint16_t bits[] = {0x3F80, 0xC000, 0x7F80, 0x0001, 0x4049, 0x8000};
    const float want[] = {1.0f, -2.0f, INFINITY, ldexpf(1, -133), 3.140625f, -0.0f};
    unsigned char data[12];
    for (int i = 0; i < 6; i++) {
        data[2 * i] = (unsigned char)(bits[i] & 0xff);
        data[2 * i + 1] = (unsigned char)(bits[i] >> 8);
    }
    mj_tensor_dict *d = parse_ok("{" ENTRY("b", "BF16", "[6]", "[0,12]") "}", data, sizeof data);
    for (int i = 0; i < 6; i++)
        assert_same_float(mj_tensor_data(mj_tensor_dict_get(d, "b"))[i], want[i], "bf16", i);
    mj_tensor_dict_free(d);
}

Test(safetensors, f64_rounds_to_nearest) {
    const double in[] = {1.0, -2.0, 0.1, 1e300, -1e300, ldexp(1, -149), ldexp(1, -150),
                         ldexp(3, -151), 1.0 + ldexp(1, -24), 1.0 + ldexp(3, -24), -0.0};
    /* ties go to even: 1+2^-24 -> 1, 1+3*2^-24 -> 1+2^-22; 2^-150 -> 0 */
    const float want[] = {1.0f, -2.0f, 0.1f, INFINITY, -INFINITY, ldexpf(1, -149), 0.0f,
                          ldexpf(1, -149), 1.0f, 1.0f + ldexpf(1, -22), -0.0f};
    enum { N = sizeof in / sizeof in[0] };
    unsigned char data[8 * N];
    for (int i = 0; i < N; i++) {
        uint64_t u;
        memcpy(&u, &in[i], 8);
        for (int b = 0; b < 8; b++) data[8 * i + b] = (unsigned char)(u >> (8 * b));
    }
    mj_tensor_dict *d = parse_ok("{" ENTRY("x", "F64", "[11]", "[0,88]") "}", data, sizeof data);
    for (int i = 0; i < N; i++)
        assert_same_float(mj_tensor_data(mj_tensor_dict_get(d, "x"))[i], want[i], "f64", i);
    mj_tensor_dict_free(d);
}

Test(safetensors, mixed_dtypes_and_big_endian_free_f32) {
    /* F32 bytes given explicitly little-endian: 1.0f = 00 00 80 3f */
    const unsigned char data[] = {0x00, 0x00, 0x80, 0x3f, /* f32 1.0 */
                                  0x00, 0x3c,             /* f16 1.0 */
                                  0x80, 0x3f};            /* bf16 1.0 */
    mj_tensor_dict *d = parse_ok("{" ENTRY("a", "F32", "[1]", "[0,4]") "," ENTRY(
                                     "b", "F16", "[1]", "[4,6]") "," ENTRY("c", "BF16", "[1]",
                                                                           "[6,8]") "}",
                                 data, sizeof data);
    for (int i = 0; i < 3; i++) cr_assert_eq(mj_tensor_data(mj_tensor_dict_value(d, i))[0], 1.0f);
    mj_tensor_dict_free(d);
}

/* tests/fixtures/dtypes.safetensors is written by PyTorch (tools/make_fixtures.py);
 * these are the values that script stores, listed here independently. */
Test(safetensors, pytorch_dtype_fixture) {
    mj_tensor_dict *d;
    cr_assert_eq(mj_safetensors_load(FIXTURES "/dtypes.safetensors", &d), MJ_OK, "%s",
                 mj_last_error());
    struct {
        const char *key;
        int rank;
        int64_t shape[4];
        int n;
        float v[8];
    } want[] = {
        {"f16", 2, {2, 4}, 8, {1.0f, -2.0f, 0.5f, 65504.0f, ldexpf(1, -24), INFINITY, -0.0f, NAN}},
        {"bf16", 1, {6}, 6, {1.0f, -2.0f, 0.5f, ldexpf(1, 127), ldexpf(1, -133), -INFINITY}},
        {"f64", 1, {8}, 8,
         {1.0f, -2.0f, 0.1f, INFINITY, ldexpf(1, -149), 1.0f, 1.0f + ldexpf(1, -22), -0.0f}},
        {"f32", 3, {1, 2, 2}, 4, {1.5f, -0.0f, INFINITY, 3.0e38f}},
        {"scalar", 1, {1}, 1, {3.25f}},
    };
    cr_assert_eq(mj_tensor_dict_size(d), 5);
    for (int k = 0; k < 5; k++) {
        cr_assert_str_eq(mj_tensor_dict_key(d, k), want[k].key); /* file order */
        const mj_tensor *t = mj_tensor_dict_value(d, k);
        cr_assert_eq(mj_tensor_rank(t), want[k].rank, "%s", want[k].key);
        for (int r = 0; r < want[k].rank; r++) cr_assert_eq(mj_tensor_dim(t, r), want[k].shape[r]);
        for (int i = 0; i < want[k].n; i++)
            assert_same_float(mj_tensor_data(t)[i], want[k].v[i], want[k].key, i);
    }
    cr_assert_str_eq(mj_tensor_dict_get_meta(d, "maskjit.generator"), "tools/make_fixtures.py");
    mj_tensor_dict_free(d);
}

/* ---- save ------------------------------------------------------------------- */
static mj_tensor_dict *dict_of(int64_t n, float base) {
    mj_tensor *t;
    OK(mj_tensor_zeros(&t, 1, &n));
    float *p = mj_tensor_data_mut(t);
    for (int64_t i = 0; i < n; i++) p[i] = base + (float)i;
    mj_tensor_dict *d;
    OK(mj_tensor_dict_new(&d));
    OK(mj_tensor_dict_set(d, "w", t));
    mj_tensor_release(t);
    return d;
}

Test(safetensors, save_into_missing_directory) {
    mj_tensor_dict *d = dict_of(4, 0.0f);
    char path[256];
    snprintf(path, sizeof path, "%s/no-such-dir/x.safetensors", tmpdir);
    cr_assert_eq(mj_safetensors_save(path, d), MJ_ERR_IO);
    cr_assert_not_null(strstr(mj_last_error(), "cannot create a temporary file"), "%s",
                       mj_last_error());
    cr_assert_not_null(strstr(mj_last_error(), path));
    struct stat st;
    cr_assert_neq(stat(path, &st), 0);
    mj_tensor_dict_free(d);
}

Test(safetensors, save_failing_midway_keeps_old_file) {
    const char *path = tmp_path("keep.safetensors");
    mj_tensor_dict *old = dict_of(1000, 1.0f), *big = dict_of(100000, 7.0f);
    OK(mj_safetensors_save(path, old));
    size_t n0;
    unsigned char *before = mjt_read_file(path, &n0);

    /* a 64 KiB file size limit makes the 400 KB write fail with EFBIG
     * (SIGXFSZ ignored so the process survives) */
    struct rlimit saved;
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &saved), 0);
    struct sigaction ign = {.sa_handler = SIG_IGN}, prev;
    sigemptyset(&ign.sa_mask);
    cr_assert_eq(sigaction(SIGXFSZ, &ign, &prev), 0);
    struct rlimit small = {.rlim_cur = 65536, .rlim_max = saved.rlim_max};
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
    mj_status s = mj_safetensors_save(path, big);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", mj_last_error());
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &saved), 0);
    cr_assert_eq(sigaction(SIGXFSZ, &prev, NULL), 0);

    cr_assert_eq(s, MJ_ERR_IO, "save under a 64 KiB limit: %s (%s)", mj_status_name(s), msg);
    cr_assert_not_null(strstr(msg, "File too large"), "%s", msg);
    cr_assert_not_null(strstr(msg, path), "%s", msg);
    size_t n1;
    unsigned char *after = mjt_read_file(path, &n1);
    cr_assert_eq(n1, n0);
    cr_assert_eq(memcmp(before, after, n0), 0, "the old file changed");
    cr_assert_eq(mjt_count_entries(tmpdir, "*.tmp.*"), 0, "a temporary file was left behind");

    /* and once the limit is gone the same save replaces the file */
    OK(mj_safetensors_save(path, big));
    mj_tensor_dict *back;
    OK(mj_safetensors_load(path, &back));
    cr_assert(mj_tensor_equal(mj_tensor_dict_get(back, "w"), mj_tensor_dict_get(big, "w")));
    cr_assert_eq(mjt_count_entries(tmpdir, "*.tmp.*"), 0);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    mode_t um = umask(0); /* read the umask: a new file is 0666 & ~umask and keeps it */
    umask(um);
    cr_assert_eq(st.st_mode & 0777, 0666 & ~um);
    mj_tensor_dict_free(back);
    MJT_FREE(before, after);
    mj_tensor_dict_free(old);
    mj_tensor_dict_free(big);
}

Test(safetensors, save_refuses_metadata_name) {
    mj_tensor_dict *d = dict_of(2, 0.0f);
    OK(mj_tensor_dict_set(d, "__metadata__", mj_tensor_dict_get(d, "w")));
    const char *path = tmp_path("meta.safetensors");
    cr_assert_eq(mj_safetensors_save(path, d), MJ_ERR_INVALID);
    cr_assert_not_null(strstr(mj_last_error(), "may not be named \"__metadata__\""), "%s",
                       mj_last_error());
    struct stat st;
    cr_assert_neq(stat(path, &st), 0);
    cr_assert_eq(mjt_count_entries(tmpdir, "*.tmp.*"), 0);
    mj_tensor_dict_free(d);
}

/* The loader refuses a tensor with an empty name, so the saver must not
 * write one: a file it wrote would not load back. */
Test(safetensors, save_refuses_an_empty_name) {
    mj_tensor_dict *d = dict_of(2, 0.0f);
    OK(mj_tensor_dict_set(d, "", mj_tensor_dict_get(d, "w")));
    const char *path = tmp_path("empty-name.safetensors");
    cr_assert_eq(mj_safetensors_save(path, d), MJ_ERR_INVALID);
    cr_assert_not_null(strstr(mj_last_error(), "a tensor needs a name"), "%s", mj_last_error());
    struct stat st;
    cr_assert_neq(stat(path, &st), 0);
    cr_assert_eq(mjt_count_entries(tmpdir, "*.tmp.*"), 0);
    mj_tensor_dict_free(d);
}

Test(safetensors, null_arguments) {
    mj_tensor_dict *d = NULL;
    cr_assert_eq(mj_safetensors_load(NULL, &d), MJ_ERR_INVALID);
    cr_assert_eq(mj_safetensors_parse(NULL, 8, &d), MJ_ERR_INVALID);
    cr_assert_eq(mj_safetensors_save("x", NULL), MJ_ERR_INVALID);
    cr_assert_not_null(strstr(mj_last_error(), "NULL"));
    cr_assert_null(d);
}
