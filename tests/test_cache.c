/* jit/cache_*.c and jit/sha256.c: SHA-256 against FIPS 180-2 vectors, the key's inputs, entry
 * round trips, and the cache through mj_jit_compile (hits bit-identical to
 * the interpreter, corrupt entries repaired, off switches, racing
 * processes, an unwritable directory). Hostile entries, the size cap and
 * `maskjit cache`: tests/test_cache_reliability.c. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "jit/cache.h"
#include "maskjit.h"
#include "test_util.h"

static void hex_of(const char *msg, size_t n, char hex[65]) {
    mj_sha256 s;
    uint8_t d[32];
    mj_sha256_init(&s);
    mj_sha256_update(&s, msg, n);
    mj_sha256_final(&s, d);
    mj_sha256_hex(d, hex);
}

Test(cache, sha256_fips_180_2_vectors) {
    char hex[65];
    hex_of("abc", 3, hex);
    cr_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    hex_of(m448, strlen(m448), hex);
    cr_assert_str_eq(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    hex_of("", 0, hex);
    cr_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    /* FIPS 180-2 appendix B.3: one million 'a', fed in uneven pieces */
    mj_sha256 s;
    uint8_t d[32];
    char a[997];
    memset(a, 'a', sizeof a);
    mj_sha256_init(&s);
    size_t left = 1000000;
    for (size_t i = 1; left > 0; i = i % 997 + 1) {
        size_t n = i < left ? i : left;
        mj_sha256_update(&s, a, n);
        left -= n;
    }
    mj_sha256_final(&s, d);
    mj_sha256_hex(d, hex);
    cr_assert_str_eq(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

/* Long runs of whole blocks in one update (the path a frozen model's weights
 * take, on the SHA extensions where the CPU has them): FIPS 180-2's
 * two-block message and the million 'a' in one piece. */
Test(cache, sha256_long_updates) {
    char hex[65];
    const char *m896 = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnop"
                       "jklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
    hex_of(m896, strlen(m896), hex);
    cr_assert_str_eq(hex, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
    char *a = malloc(1000000);
    cr_assert_not_null(a);
    memset(a, 'a', 1000000);
    hex_of(a, 1000000, hex);
    free(a);
    cr_assert_str_eq(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

/* ---- graphs ----------------------------------------------------------------- */

/* input [B,8] -> linear_act(w [8,8] const, b [8] const) {act} */
/* xxHash's own XXH64 values (libxxhash 0.8.1) for bytes (i * 131 + 7) & 255:
 * every tail length path (8, 4, 1 bytes) and whole 32-byte stripes. */
Test(cache, xxh64_reference_vectors) {
    static const struct {
        size_t n;
        uint64_t seed0, seed1; /* seeds 0 and 0x9E3779B97F4A7C15 */
    } v[] = {
        {0, 0xef46db3751d8e999u, 0xc4349fc93c010000u},   {1, 0xa96c7f0ce858bbb7u, 0x585882422a6165e7u},
        {3, 0xbed43740ee6332bbu, 0x45fa1406538fa168u},   {4, 0xfa212ae44b3bb23du, 0xa65107f22943365au},
        {7, 0x2744460dd675d2c0u, 0xc9b637e2c4599de2u},   {8, 0x994b676b71ce94ddu, 0xce592d5f53e192ecu},
        {31, 0x6711d55e306b5d8fu, 0x24c4e99ab0404b5eu},  {32, 0x07f7b8e3bc5d6e25u, 0x046e99bbda1a814bu},
        {33, 0x09f85eeb4e1cbe9fu, 0xd7fe2bfee6e4cdedu},  {63, 0xb7c9968c066cb6a5u, 0xbd457f9ea47180c8u},
        {64, 0x50d4159a0411632eu, 0xa768f350a8e4fcf6u},  {100, 0x9ddada11d3dc2d8fu, 0x35546bd9a4779ae4u},
        {1000, 0x0bf0bdbcc82eb373u, 0x3ecb5d7b5e7c64cfu},
    };
    uint8_t msg[1001];
    for (int i = 0; i < 1001; i++) msg[i] = (uint8_t)((i * 131 + 7) & 255);
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        cr_assert_eq(mj_xxh64(msg, v[i].n, 0), v[i].seed0, "n %zu", v[i].n);
        cr_assert_eq(mj_xxh64(msg, v[i].n, UINT64_C(0x9E3779B97F4A7C15)), v[i].seed1, "n %zu", v[i].n);
        /* the one-pass 128-bit digest is both, little-endian; from an odd address too */
        uint8_t d[16], moved[1001 + 1];
        memcpy(moved + 1, msg, v[i].n);
        for (int k = 0; k < 2; k++) {
            mj_fasthash128(k ? moved + 1 : msg, v[i].n, d);
            uint64_t a = 0, b = 0;
            for (int j = 0; j < 8; j++) {
                a |= (uint64_t)d[j] << (8 * j);
                b |= (uint64_t)d[8 + j] << (8 * j);
            }
            cr_assert_eq(a, v[i].seed0, "n %zu", v[i].n);
            cr_assert_eq(b, v[i].seed1, "n %zu", v[i].n);
        }
    }
}

static mj_graph *small_graph(const char *act, float w0) {
    char text[4096];
    int n = snprintf(text, sizeof text,
                     "maskjit-ir 1\n%%0 = input \"x\" : f32[B,8]\n%%1 = const \"w\" : f32[8,8] = [");
    for (int i = 0; i < 64; i++)
        n += snprintf(text + n, sizeof text - (size_t)n, "%s%a", i ? ", " : "",
                      i == 0 ? (double)w0 : (double)((float)((i * 37) % 17 - 8) / 8.0f));
    n += snprintf(text + n, sizeof text - (size_t)n, "]\n%%2 = const \"b\" : f32[8] = [");
    for (int i = 0; i < 8; i++) n += snprintf(text + n, sizeof text - (size_t)n, "%s%a", i ? ", " : "", (double)i / 4);
    snprintf(text + n, sizeof text - (size_t)n, "]\n%%3 = linear_act %%0, %%1, %%2 {act=%s} : f32[B,8]\nreturn %%3\n",
             act);
    mj_graph *g;
    OK(mj_graph_parse(text, &g));
    return g;
}

static void key_of(const mj_graph *g, mj_numeric_mode mode, bool frozen, const char *cpu, char hex[65]) {
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.numeric = mode;
    o.frozen = frozen;
    mj_cache_target t = {.cpu = cpu, .features = "+avx2,+fma"};
    OK(mj_cache_key(g, &o, &t, hex));
    cr_assert_eq(strlen(hex), 64);
}

Test(cache, key_changes_with_each_component) {
    mj_graph *g = small_graph("relu", 0.5f), *same = small_graph("relu", 0.5f);
    mj_graph *other_ir = small_graph("tanh", 0.5f), *other_w = small_graph("relu", 0.25f);
    char k[65], k2[65];
    key_of(g, MJ_NUMERIC_EXACT, false, "znver5", k);
    key_of(same, MJ_NUMERIC_EXACT, false, "znver5", k2);
    cr_assert_str_eq(k, k2, "the same inputs give the same key");
    /* each differs from g's key in one component */
    const struct {
        const mj_graph *g;
        mj_numeric_mode mode;
        bool frozen;
        const char *cpu, *what;
    } other[] = {
        {other_ir, MJ_NUMERIC_EXACT, false, "znver5", "IR"},
        {other_w, MJ_NUMERIC_EXACT, false, "znver5", "one weight"},
        {g, MJ_NUMERIC_FAST, false, "znver5", "numeric mode"},
        {g, MJ_NUMERIC_EXACT, true, "znver5", "frozen"},
        {g, MJ_NUMERIC_EXACT, false, "haswell", "CPU"},
    };
    for (size_t i = 0; i < sizeof other / sizeof *other; i++) {
        key_of(other[i].g, other[i].mode, other[i].frozen, other[i].cpu, k2);
        cr_assert_str_neq(k, k2, "%s", other[i].what);
    }
    mj_compile_options o;
    mj_compile_options_init(&o);
    mj_cache_target t = {.cpu = "znver5", .features = "+avx2,+fma", .passes = "default<O1>"};
    OK(mj_cache_key(g, &o, &t, k2));
    cr_assert_str_neq(k, k2, "a pipeline override");
    mj_graph_free(g);
    mj_graph_free(same);
    mj_graph_free(other_ir);
    mj_graph_free(other_w);
}



Test(cache, store_and_load_round_trip) {
    char *dir = mjt_temp_dir("maskjit-cache-test");
    char sub[512];
    snprintf(sub, sizeof sub, "%s/a/b", dir); /* created on demand */
    const char *hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    char data[3000], bc[700];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (char)(i * 7);
    for (size_t i = 0; i < sizeof bc; i++) bc[i] = (char)(i * 11 + 1);
    mj_cache_entry e;
    char why[96];
    cr_assert_eq(mj_cache_load(sub, hex, &e, why, sizeof why), MJ_CACHE_MISS, "empty cache: a miss");
    OK(mj_cache_store(sub, hex, data, sizeof data, bc, sizeof bc, 0));
    cr_assert_eq(mj_cache_load(sub, hex, &e, why, sizeof why), MJ_CACHE_FOUND, "%s", why);
    cr_assert_eq(LLVMGetBufferSize(e.obj), sizeof data);
    cr_assert(memcmp(LLVMGetBufferStart(e.obj), data, sizeof data) == 0);
    cr_assert_eq(e.bitcode_size, sizeof bc);
    cr_assert(memcmp(e.bitcode, bc, sizeof bc) == 0);
    mj_cache_entry_dispose(&e);
    cr_assert_eq(mjt_count_entries(sub, "*.mjc"), 1);
    cr_assert_eq(mjt_count_entries(sub, "*"), 1, "no temp files left (only the entry)");
    /* the same bytes are no entry for another key */
    const char *other = "ff112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    char a[600], b[600];
    snprintf(a, sizeof a, "%s/%s.mjc", sub, hex);
    snprintf(b, sizeof b, "%s/%s.mjc", sub, other);
    cr_assert_eq(link(a, b), 0);
    cr_assert_eq(mj_cache_load(sub, other, &e, why, sizeof why), MJ_CACHE_BAD);
    cr_assert(strstr(why, "another key"), "%s", why);
    mj_cache_remove(sub, hex);
    cr_assert_eq(mj_cache_load(sub, hex, &e, why, sizeof why), MJ_CACHE_MISS);
    mjt_rm_temp(dir);
}

Test(cache, directory_choice_and_off_switches) {
    mj_compile_options o;
    mj_compile_options_init(&o);
    setenv("MASKJIT_CACHE_DIR", "/tmp/from-env", 1);
    unsetenv("MASKJIT_CACHE");
    char *d = mj_cache_dir(&o);
    cr_assert_str_eq(d, "/tmp/from-env");
    free(d);
    o.cache_dir = "/tmp/from-options";
    d = mj_cache_dir(&o);
    cr_assert_str_eq(d, "/tmp/from-options");
    free(d);
    o.cache_dir = NULL;
    unsetenv("MASKJIT_CACHE_DIR");
    setenv("XDG_CACHE_HOME", "/tmp/xdg", 1);
    d = mj_cache_dir(&o);
    cr_assert_str_eq(d, "/tmp/xdg/maskjit");
    free(d);
    unsetenv("XDG_CACHE_HOME");
    setenv("HOME", "/tmp/home", 1);
    d = mj_cache_dir(&o);
    cr_assert_str_eq(d, "/tmp/home/.cache/maskjit");
    free(d);
    setenv("MASKJIT_CACHE", "0", 1);
    cr_assert_null(mj_cache_dir(&o));
    unsetenv("MASKJIT_CACHE");
    o.use_cache = false;
    cr_assert_null(mj_cache_dir(&o));
}

/* ---- through mj_jit_compile ----------------------------------------------------- */

static mj_tensor *input(int64_t batch) {
    mj_rng rng = mjt_rng(42);
    return mjt_randn2(batch, 8, &rng);
}

/* compiles g with the cache in dir, runs it, checks the output against the
 * interpreter bit for bit; returns the stats */
static mj_compile_stats compile_run(mj_jit *jit, mj_graph *g, const char *dir, bool use, bool frozen,
                                    mj_tensor **y_out) {
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.cache_dir = dir;
    o.use_cache = use;
    o.frozen = frozen;
    mj_compiled *c = mjt_compile_with(jit, g, &o);
    mj_tensor *x = input(5), *y, *want;
    OK(mj_compiled_run(c, x, &y));
    OK(mj_graph_run(g, x, &want));
    cr_assert(mj_tensor_equal(y, want), "compiled output differs from the interpreter");
    mj_compile_stats st = *mj_compiled_stats(c);
    mj_compiled_free(c);
    MJT_RELEASE(x, want);
    if (y_out) *y_out = y;
    else mj_tensor_release(y);
    return st;
}

Test(cache, hit_is_bit_identical_and_skips_the_compile) {
    char *dir = mjt_temp_dir("maskjit-cache-test");
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    for (int frozen = 0; frozen < 2; frozen++) {
        mj_graph *g = small_graph("gelu", 0.75f);
        mj_tensor *y1, *y2, *y3;
        mj_compile_stats a = compile_run(jit, g, dir, true, frozen, &y1);
        cr_assert(!a.cache_hit);
        cr_assert_eq(a.warning[0], '\0', "%s", a.warning);
        mj_compile_stats b = compile_run(jit, g, dir, true, frozen, &y2);
        cr_assert(b.cache_hit, "the second compile hits");
        cr_assert_eq(b.ir_ms, 0.0);
        cr_assert_eq(b.optimize_ms, 0.0);
        cr_assert(mj_tensor_equal(y1, y2));
        /* the same object twice in one process, both alive */
        mj_compile_options o;
        mj_compile_options_init(&o);
        o.cache_dir = dir;
        o.frozen = frozen;
        mj_compiled *c1, *c2;
        OK(mj_jit_compile(jit, g, &o, &c1));
        OK(mj_jit_compile(jit, g, &o, &c2));
        cr_assert(mj_compiled_stats(c1)->cache_hit && mj_compiled_stats(c2)->cache_hit);
        mj_tensor *x = input(3);
        OK(mj_compiled_run(c1, x, &y3));
        mj_tensor *y4;
        OK(mj_compiled_run(c2, x, &y4));
        cr_assert(mj_tensor_equal(y3, y4));
        /* dumps work from a hit too (the bitcode is kept next to the object) */
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        OK(mj_compiled_dump(c2, "ir", f));
        fclose(f);
        cr_assert(strstr(buf, "define"), "%.200s", buf);
        free(buf);
        mj_compiled_free(c1);
        mj_compiled_free(c2);
        MJT_RELEASE(x, y1, y2, y3, y4);
        mj_graph_free(g);
    }
    cr_assert_eq(mjt_count_entries(dir, "*.mjc"), 2, "live and frozen: two entries");
    mj_jit_free(jit);
    mjt_rm_temp(dir);
}

/* MASKJIT_JIT_PASSES (a JIT's pipeline override, for measurements) changes
 * the code, so a JIT created under it must not reuse the entries of a JIT
 * without it, nor the other way round. */
Test(cache, pipeline_override_gets_its_own_entries) {
    char *dir = mjt_temp_dir("maskjit-cache-test");
    unsetenv("MASKJIT_JIT_PASSES");
    mj_jit *plain;
    OK(mj_jit_new(&plain));
    cr_assert_eq(setenv("MASKJIT_JIT_PASSES", "default<O1>", 1), 0);
    mj_jit *o1;
    mj_status s = mj_jit_new(&o1);
    unsetenv("MASKJIT_JIT_PASSES");
    OK(s);
    for (int frozen = 0; frozen < 2; frozen++) {
        mj_graph *g = small_graph("relu", 0.5f);
        cr_assert(!compile_run(plain, g, dir, true, frozen, NULL).cache_hit);
        cr_assert(!compile_run(o1, g, dir, true, frozen, NULL).cache_hit, "another pipeline, another entry");
        cr_assert(compile_run(o1, g, dir, true, frozen, NULL).cache_hit);
        cr_assert(compile_run(plain, g, dir, true, frozen, NULL).cache_hit);
        mj_graph_free(g);
    }
    cr_assert_eq(mjt_count_entries(dir, "*.mjc"), 4);
    mj_jit_free(plain);
    mj_jit_free(o1);
    mjt_rm_rf(dir);
    free(dir);
}

/* A masked 16x16 linear layer with params w, mask, b: the weights are over
 * 64 elements, so the IR text shows no data and only the key's digest of the
 * frozen consts tells two weights apart. */
static mj_graph *masked_graph(mj_tensor **w, mj_tensor **mask) {
    mj_graph *g;
    OK(mj_graph_parse("maskjit-ir 1\n%0 = input \"x\" : f32[B,16]\n%1 = param \"w\" : f32[16,16]\n"
                      "%2 = param \"mask\" : f32[16,16]\n%3 = mul %2, %1 : f32[16,16]\n"
                      "%4 = param \"b\" : f32[16]\n%5 = linear %0, %3, %4 : f32[B,16]\nreturn %5\n",
                      &g));
    mj_rng rng = mjt_rng(3);
    int64_t ws[2] = {16, 16}, bs[1] = {16};
    mj_tensor *b;
    OK(mj_tensor_randn(w, 2, ws, &rng));
    OK(mj_tensor_randn(&b, 1, bs, &rng));
    OK(mj_tensor_zeros(mask, 2, ws));
    float *m = mj_tensor_data_mut(*mask);
    for (int i = 0; i < 256; i++) m[i] = (i * 7) % 10 < 3 ? 1.0f : 0.0f;
    mj_tensor_dict *d;
    OK(mj_tensor_dict_new(&d));
    OK(mj_tensor_dict_set(d, "w", *w));
    OK(mj_tensor_dict_set(d, "mask", *mask));
    OK(mj_tensor_dict_set(d, "b", b));
    OK(mj_graph_bind(g, d));
    mj_tensor_dict_free(d);
    mj_tensor_release(b);
    return g;
}

static mj_tensor *run16(mj_compiled *c, mj_graph *g) {
    mj_rng rng = mjt_rng(9);
    int64_t shape[2] = {5, 16};
    mj_tensor *x, *y, *want;
    OK(mj_tensor_randn(&x, 2, shape, &rng));
    OK(mj_compiled_run(c, x, &y));
    if (g) {
        OK(mj_graph_run(g, x, &want));
        cr_assert(mj_tensor_equal(y, want), "compiled output differs from the interpreter");
        mj_tensor_release(want);
    }
    mj_tensor_release(x);
    return y;
}

/* Frozen: one changed weight or mask element is another entry, and a
 * compiled graph keeps the weights it was compiled with when the
 * parameters change afterwards. */
Test(cache, frozen_weight_or_mask_change_misses) {
    char *dir = mjt_temp_dir("maskjit-cache-test");
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    mj_tensor *w, *mask;
    mj_graph *g = masked_graph(&w, &mask);
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.cache_dir = dir;
    o.frozen = true;
    mj_compiled *c0 = mjt_compile_with(jit, g, &o), *c;
    cr_assert(!mj_compiled_stats(c0)->cache_hit);
    mj_tensor *y0 = run16(c0, g);
    c = mjt_compile_with(jit, g, &o);
    cr_assert(mj_compiled_stats(c)->cache_hit, "the same weights hit");
    mj_compiled_free(c);
    /* the last weight under the mask, then a mask element that was 0 */
    int kept = 255;
    while (mj_tensor_data(mask)[kept] == 0.0f) kept--;
    mj_tensor_data_mut(w)[kept] += 0.5f;
    c = mjt_compile_with(jit, g, &o);
    cr_assert(!mj_compiled_stats(c)->cache_hit, "a changed weight misses");
    mj_tensor_release(run16(c, g));
    mj_compiled_free(c);
    float *mm = mj_tensor_data_mut(mask);
    cr_assert_eq(mm[254], 0.0f);
    mm[254] = 1.0f;
    c = mjt_compile_with(jit, g, &o);
    cr_assert(!mj_compiled_stats(c)->cache_hit, "a changed mask misses");
    mj_tensor_release(run16(c, g));
    mj_compiled_free(c);
    /* the first compile still computes with the weights it froze */
    mj_tensor *y0_again = run16(c0, NULL);
    cr_assert(mj_tensor_equal(y0, y0_again), "a frozen compile follows later parameter writes");
    mj_tensor_release(y0);
    mj_tensor_release(y0_again);
    mj_compiled_free(c0);
    cr_assert_eq(mjt_count_entries(dir, "*.mjc"), 3);
    mj_tensor_release(w);
    mj_tensor_release(mask);
    mj_graph_free(g);
    mj_jit_free(jit);
    mjt_rm_rf(dir);
    free(dir);
}

static char *only_entry(const char *dir) {
    DIR *d = opendir(dir);
    cr_assert(d);
    struct dirent *e;
    char *p = NULL;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l > 4 && !strcmp(e->d_name + l - 4, ".mjc")) {
            p = malloc(strlen(dir) + l + 2);
            sprintf(p, "%s/%s", dir, e->d_name);
        }
    }
    closedir(d);
    cr_assert(p);
    return p;
}

Test(cache, corrupt_entry_falls_back_and_repairs) {
    char *dir = mjt_temp_dir("maskjit-cache-test");
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    mj_graph *g = small_graph("sigmoid", 1.5f);
    compile_run(jit, g, dir, true, true, NULL);
    char *path = only_entry(dir);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    off_t full = st.st_size;
    cr_assert_eq(truncate(path, full / 3), 0);
    mj_compile_stats s = compile_run(jit, g, dir, true, true, NULL);
    cr_assert(!s.cache_hit, "a truncated entry is no hit");
    cr_assert(strstr(s.warning, "bad entry"), "%s", s.warning);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_size, full, "repaired");
    /* garbage of the right size */
    FILE *f = fopen(path, "r+b");
    for (off_t i = 0; i < full; i++) fputc((int)(i * 131 % 251), f);
    fclose(f);
    s = compile_run(jit, g, dir, true, true, NULL);
    cr_assert(!s.cache_hit);
    s = compile_run(jit, g, dir, true, true, NULL);
    cr_assert(s.cache_hit, "hits again after the repair");
    free(path);
    mj_graph_free(g);
    mj_jit_free(jit);
    mjt_rm_temp(dir);
}

Test(cache, off_switch_writes_nothing) {
    char *dir = mjt_temp_dir("maskjit-cache-test");
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    mj_graph *g = small_graph("relu", 2.0f);
    mj_compile_stats s = compile_run(jit, g, dir, false, false, NULL);
    cr_assert(!s.cache_hit);
    cr_assert_eq(mjt_count_entries(dir, "*.mjc"), 0);
    setenv("MASKJIT_CACHE", "0", 1);
    compile_run(jit, g, dir, true, false, NULL);
    compile_run(jit, g, dir, true, false, NULL);
    cr_assert_eq(mjt_count_entries(dir, "*.mjc"), 0);
    unsetenv("MASKJIT_CACHE");
    compile_run(jit, g, dir, true, false, NULL);
    cr_assert_eq(mjt_count_entries(dir, "*.mjc"), 1);
    mj_graph_free(g);
    mj_jit_free(jit);
    mjt_rm_temp(dir);
}

Test(cache, unwritable_directory_compiles_anyway) {
    char *dir = mjt_temp_dir("maskjit-cache-test");
    char file[512], under[600];
    snprintf(file, sizeof file, "%s/a-file", dir);
    FILE *f = fopen(file, "w");
    fclose(f);
    snprintf(under, sizeof under, "%s/sub", file); /* a directory can't live under a file, even for root */
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    mj_graph *g = small_graph("tanh", 2.0f);
    mj_compile_stats s = compile_run(jit, g, under, true, true, NULL);
    cr_assert(!s.cache_hit);
    cr_assert(strstr(s.warning, "cache") && strstr(s.warning, under), "%s", s.warning);
    mj_graph_free(g);
    mj_jit_free(jit);
    mjt_rm_temp(dir);
}

Test(cache, two_processes_race_on_one_entry) {
    char *dir = mjt_temp_dir("maskjit-cache-test");
    mj_graph *g = small_graph("gelu_tanh", -1.0f);
    int fds[2][2];
    pid_t pid[2];
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(pipe(fds[k]), 0);
        pid[k] = fork();
        cr_assert(pid[k] >= 0);
        if (pid[k] == 0) {
            /* child: compile into the shared empty directory, send the output */
            mj_jit *jit;
            int rc = 1;
            if (mj_jit_new(&jit) == MJ_OK) {
                mj_compile_options o;
                mj_compile_options_init(&o);
                o.cache_dir = dir;
                o.frozen = true;
                mj_compiled *c;
                mj_tensor *x = input(4), *y;
                if (mj_jit_compile(jit, g, &o, &c) == MJ_OK && mj_compiled_run(c, x, &y) == MJ_OK) {
                    size_t n = (size_t)mj_tensor_numel(y) * sizeof(float);
                    rc = write(fds[k][1], mj_tensor_data(y), n) == (ssize_t)n ? 0 : 1;
                }
            }
            _exit(rc);
        }
        close(fds[k][1]);
    }
    float out[2][32];
    for (int k = 0; k < 2; k++) {
        size_t got = 0;
        while (got < sizeof out[k]) {
            ssize_t r = read(fds[k][0], (char *)out[k] + got, sizeof out[k] - got);
            if (r <= 0) break;
            got += (size_t)r;
        }
        close(fds[k][0]);
        int st;
        cr_assert_eq(waitpid(pid[k], &st, 0), pid[k]);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d failed", k);
        cr_assert_eq(got, sizeof out[k]);
    }
    cr_assert(memcmp(out[0], out[1], sizeof out[0]) == 0, "identical outputs");
    cr_assert_eq(mjt_count_entries(dir, "*.mjc"), 1);
    cr_assert_eq(mjt_count_entries(dir, "*"), 1, "one entry, no temp files");
    /* and the entry is whole: this process hits it */
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    mj_compile_stats s = compile_run(jit, g, dir, true, true, NULL);
    cr_assert(s.cache_hit);
    mj_jit_free(jit);
    mj_graph_free(g);
    mjt_rm_temp(dir);
}
