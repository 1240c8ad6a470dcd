/* The compile cache under hostile conditions: entries are verified before
 * they are linked (bit flips, another graph's entry), a FIFO or a symlink at
 * an entry's name neither hangs nor is followed, the directory is private,
 * the size cap evicts least-recently-used entries (MASKJIT_CACHE_MAX_MB),
 * `maskjit cache stats|clear|prune` only touches maskjit's files, and the key
 * covers the bytes of consts too large to be printed inline.
 *
 * References: compiled outputs are compared bit for bit with the eager
 * forward of the traced model (exact mode), sizes with stat(2) in the test. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "jit/cache.h"
#include "maskjit.h"
#include "test_util.h"

#define run_maskjit(out, ...) mjt_maskjit(out, true, __VA_ARGS__)



/* ---- files ------------------------------------------------------------------ */



static bool all_hex(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

/* A cache entry: a regular file named by 64 hex digits and .mjc (or .o,
 * the object file of the cache's first format). */
static bool entry_name(const char *dir, const char *name) {
    size_t l = strlen(name);
    if (!(l > 65 && all_hex(name, 64) && name[64] == '.' &&
          (strcmp(name + 65, "mjc") == 0 || strcmp(name + 65, "o") == 0)))
        return false;
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat st;
    return lstat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* entry names in dir, sorted, NULL-terminated (caller frees) */
static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
static char **entries(const char *dir, int *count) {
    char **v = calloc(4096, sizeof *v);
    int n = 0;
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) && n < 4095)
            if (entry_name(dir, e->d_name)) v[n++] = strdup(e->d_name);
        closedir(d);
    }
    qsort(v, (size_t)n, sizeof *v, cmp_str);
    if (count) *count = n;
    return v;
}
static void free_entries(char **v) {
    for (int i = 0; v[i]; i++) free(v[i]);
    free(v);
}
static bool has_entry(char **v, const char *name) {
    for (int i = 0; v[i]; i++)
        if (!strcmp(v[i], name)) return true;
    return false;
}

/* the path of the only entry in dir (malloc'd) */
static char *only_entry(const char *dir) {
    int n;
    char **v = entries(dir, &n);
    cr_assert_eq(n, 1, "%d entries in %s", n, dir);
    char *p = malloc(strlen(dir) + strlen(v[0]) + 2);
    sprintf(p, "%s/%s", dir, v[0]);
    free_entries(v);
    return p;
}

static uint64_t entry_bytes(const char *dir) {
    char **v = entries(dir, NULL);
    uint64_t total = 0;
    for (int i = 0; v[i]; i++) {
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, v[i]);
        struct stat st;
        cr_assert_eq(lstat(p, &st), 0);
        total += (uint64_t)st.st_size;
    }
    free_entries(v);
    return total;
}

/* ---- models ----------------------------------------------------------------- */

typedef struct model {
    mj_module *m;
    mj_graph *g;
    mj_tensor *x, *want; /* an input and the eager output for it */
} model;

static model model_new(const char *spec, uint64_t seed) {
    model md;
    mj_rng rng = mjt_rng(seed);
    OK(mj_model_from_spec(spec, &rng, &md.m));
    mj_tensor *ones;
    OK(mj_tensor_ones(&ones, 2, (int64_t[]){3, 16}));
    OK(mj_trace_module(md.m, ones, &md.g));
    mj_tensor_release(ones);
    mj_rng_seed(&rng, seed + 100);
    OK(mj_tensor_randn(&md.x, 2, (int64_t[]){5, 16}, &rng));
    OK(mj_module_forward(md.m, md.x, &md.want));
    return md;
}

static void model_free(model *md) {
    MJT_RELEASE(md->x, md->want);
    mj_graph_free(md->g);
    mj_module_free(md->m);
}

/* Compiles (exact) with the cache in dir, runs, and asserts the output is
 * the eager output bit for bit. */
static mj_compile_stats compile_check(mj_jit *jit, model *md, const char *dir, bool frozen) {
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.cache_dir = dir;
    o.frozen = frozen;
    mj_compiled *c;
    OK(mj_jit_compile(jit, md->g, &o, &c));
    mj_tensor *y;
    OK(mj_compiled_run(c, md->x, &y));
    cr_assert(mj_tensor_equal(y, md->want), "compiled output differs from eager");
    mj_compile_stats st = *mj_compiled_stats(c);
    mj_tensor_release(y);
    mj_compiled_free(c);
    return st;
}

/* input [B,K] -> linear_act(w [N,K] const, bound by name, b [N]) {act=relu},
 * every w element from (seed, i), one element tweaked */
static mj_graph *big_const_graph(int k, int n, uint32_t seed, int64_t tweak_at) {
    char text[512];
    snprintf(text, sizeof text,
             "maskjit-ir 1\n%%0 = input \"x\" : f32[B,%d]\n%%1 = const \"w\" : f32[%d,%d]\n"
             "%%2 = const \"b\" : f32[%d]\n%%3 = linear_act %%0, %%1, %%2 {act=relu} : f32[B,%d]\nreturn %%3\n",
             k, n, k, n, n);
    mj_graph *g;
    OK(mj_graph_parse(text, &g));
    mj_tensor *w, *b;
    OK(mj_tensor_zeros(&w, 2, (int64_t[]){n, k}));
    OK(mj_tensor_zeros(&b, 1, (int64_t[]){n}));
    float *wd = mj_tensor_data_mut(w);
    uint32_t s = seed * 2654435761u + 1;
    for (int64_t i = 0; i < (int64_t)n * k; i++) {
        s = s * 1664525u + 1013904223u;
        wd[i] = (float)((int)(s >> 20) - 2048) / 1024.0f;
    }
    if (tweak_at >= 0) wd[tweak_at] += 0.5f;
    for (int i = 0; i < n; i++) mj_tensor_data_mut(b)[i] = (float)i / 8;
    mj_tensor_dict *d;
    OK(mj_tensor_dict_new(&d));
    OK(mj_tensor_dict_set(d, "w", w));
    OK(mj_tensor_dict_set(d, "b", b));
    OK(mj_graph_bind(g, d));
    mj_tensor_dict_free(d);
    MJT_RELEASE(w, b);
    return g;
}

/* ---- entries are verified ------------------------------------------------------ */

Test(cache_rel, bit_flips_anywhere_are_caught_and_rebuilt, .timeout = 600) {
    char *dir = mjt_temp_dir("maskjit-cache-rel");
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    model md = model_new("mlp:16,24,8:act=gelu", 3);
    for (int frozen = 1; frozen >= 0; frozen--) {
        mjt_rm_rf(dir);
        cr_assert_eq(mkdir(dir, 0700), 0);
        mj_compile_stats st = compile_check(jit, &md, dir, frozen);
        cr_assert(!st.cache_hit);
        char *path = only_entry(dir);
        size_t n;
        char *orig = mjt_read_file(path, &n);
        /* the first and last bytes, the first header bytes, and seeded
         * random offsets over the whole file */
        size_t offs[16] = {0, 1, 9, 17, 40, 70, n - 1};
        uint64_t r = 0x9e3779b97f4a7c15u;
        for (int i = 7; i < 16; i++) {
            r = r * 6364136223846793005u + 1442695040888963407u;
            offs[i] = (size_t)(r >> 33) % n;
        }
        for (int i = 0; i < 16; i++) {
            char *bad = malloc(n);
            memcpy(bad, orig, n);
            bad[offs[i]] ^= (char)(1u << (offs[i] * 5 % 8));
            mjt_write_file(path, bad, n);
            free(bad);
            st = compile_check(jit, &md, dir, frozen);
            cr_assert(!st.cache_hit, "frozen %d: a flipped bit at offset %zu of %zu is no hit", frozen, offs[i], n);
            cr_assert(strstr(st.warning, "bad entry"), "frozen %d offset %zu: warning '%s'", frozen, offs[i],
                      st.warning);
            size_t n2;
            char *now = mjt_read_file(path, &n2);
            cr_assert(n2 == n && memcmp(now, orig, n) == 0, "frozen %d offset %zu: the entry is rebuilt", frozen,
                      offs[i]);
            free(now);
        }
        st = compile_check(jit, &md, dir, frozen);
        cr_assert(st.cache_hit, "the rebuilt entry hits");
        MJT_FREE(orig, path);
    }
    model_free(&md);
    mj_jit_free(jit);
    mjt_rm_temp(dir);
}

/* Another graph's entry copied over this graph's entry name: the same
 * architecture with other weights (frozen: silently wrong code) and another
 * architecture (live: other shapes). */
Test(cache_rel, another_graphs_entry_is_not_linked, .timeout = 300) {
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    const char *specs[2][2] = {{"mlp:16,24,8:act=tanh", "mlp:16,24,8:act=tanh"},
                               {"mlp:16,24,8:act=relu", "mlp:16,40,12,8:act=sigmoid"}};
    for (int k = 0; k < 2; k++) {
        bool frozen = k == 0;
        char *da = mjt_temp_dir("maskjit-cache-rel"), *db = mjt_temp_dir("maskjit-cache-rel");
        model a = model_new(specs[k][0], 10), b = model_new(specs[k][1], 20);
        compile_check(jit, &a, da, frozen);
        compile_check(jit, &b, db, frozen);
        char *pa = only_entry(da), *pb = only_entry(db);
        size_t na, nb;
        char *ea = mjt_read_file(pa, &na), *eb = mjt_read_file(pb, &nb);
        cr_assert(na != nb || memcmp(ea, eb, na) != 0, "two different entries");
        mjt_write_file(pa, eb, nb);
        mj_compile_stats st = compile_check(jit, &a, da, frozen);
        cr_assert(!st.cache_hit, "case %d: another graph's entry is no hit", k);
        cr_assert(strstr(st.warning, "bad entry"), "case %d: %s", k, st.warning);
        size_t n2;
        char *now = mjt_read_file(pa, &n2);
        cr_assert(n2 == na && memcmp(now, ea, na) == 0, "case %d: rebuilt", k);
        free(now);
        cr_assert(compile_check(jit, &a, da, frozen).cache_hit);
        MJT_FREE(ea, eb, pa, pb);
        model_free(&a);
        model_free(&b);
        mjt_rm_temp(da);
        mjt_rm_temp(db);
    }
    mj_jit_free(jit);
}

/* ---- no hangs, no following ------------------------------------------------------ */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

Test(cache_rel, fifo_at_the_entry_name_does_not_hang, .timeout = 120) {
    char *dir = mjt_temp_dir("maskjit-cache-rel");
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    model md = model_new("mlp:16,8:act=relu", 5);
    compile_check(jit, &md, dir, true);
    char *path = only_entry(dir);
    cr_assert_eq(unlink(path), 0);
    cr_assert_eq(mkfifo(path, 0600), 0);
    /* a blocking open would wait for a writer forever: SIGALRM ends the
     * test process instead (a crash is a failure) */
    alarm(30);
    double t0 = now_s();
    mj_compile_stats st = compile_check(jit, &md, dir, true);
    alarm(0);
    cr_assert(now_s() - t0 < 20, "took %.1f s", now_s() - t0);
    cr_assert(!st.cache_hit);
    struct stat sb;
    cr_assert_eq(lstat(path, &sb), 0);
    cr_assert(S_ISREG(sb.st_mode), "the FIFO was replaced by the entry");
    cr_assert(compile_check(jit, &md, dir, true).cache_hit);
    /* a FIFO as the cache directory: a warning, no hang, for compiles and
     * for maskjit cache */
    char fifo_dir[600];
    snprintf(fifo_dir, sizeof fifo_dir, "%s/fifo-dir", dir);
    cr_assert_eq(mkfifo(fifo_dir, 0600), 0);
    alarm(60);
    t0 = now_s();
    st = compile_check(jit, &md, fifo_dir, true);
    cr_assert(!st.cache_hit);
    cr_assert(strstr(st.warning, "cache") && strstr(st.warning, fifo_dir), "%s", st.warning);
    char *out;
    const char *subs[] = {"stats", "clear", "prune --max-mb 1"};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(run_maskjit(&out, "cache %s --dir %s", subs[i], fifo_dir), 1, "%s: %s", subs[i], out);
        cr_assert(strstr(out, "Not a directory"), "%s", out);
        free(out);
    }
    alarm(0);
    cr_assert(now_s() - t0 < 40, "took %.1f s", now_s() - t0);
    free(path);
    model_free(&md);
    mj_jit_free(jit);
    mjt_rm_temp(dir);
}

Test(cache_rel, symlink_at_the_entry_name_is_not_followed, .timeout = 120) {
    char *dir = mjt_temp_dir("maskjit-cache-rel"), *other = mjt_temp_dir("maskjit-cache-rel");
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    model a = model_new("mlp:16,8:act=tanh", 6), b = model_new("mlp:16,8:act=tanh", 7);
    compile_check(jit, &a, dir, true);
    compile_check(jit, &b, other, true);
    char *pa = only_entry(dir), *pb = only_entry(other);
    size_t nb;
    char *eb = mjt_read_file(pb, &nb);
    /* a's entry name points at b's (valid, other key) entry */
    cr_assert_eq(unlink(pa), 0);
    cr_assert_eq(symlink(pb, pa), 0);
    mj_compile_stats st = compile_check(jit, &a, dir, true);
    cr_assert(!st.cache_hit);
    struct stat sb;
    cr_assert_eq(lstat(pa, &sb), 0);
    cr_assert(S_ISREG(sb.st_mode), "the link was replaced, not written through");
    size_t n2;
    char *now = mjt_read_file(pb, &n2);
    cr_assert(n2 == nb && memcmp(now, eb, nb) == 0, "the link's target is untouched");
    MJT_FREE(now, eb, pa, pb);
    model_free(&a);
    model_free(&b);
    mj_jit_free(jit);
    mjt_rm_temp(dir);
    mjt_rm_temp(other);
}

/* ---- a private directory -------------------------------------------------------- */

Test(cache_rel, directory_is_created_private_and_entries_are_not_shared, .timeout = 120) {
    char *top = mjt_temp_dir("maskjit-cache-rel");
    char dir[600], mid[600];
    snprintf(mid, sizeof mid, "%s/new", top);
    snprintf(dir, sizeof dir, "%s/new/cache", top);
    umask(0); /* the modes below are the ones the cache asks for */
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    model md = model_new("mlp:16,8:act=relu", 8);
    compile_check(jit, &md, dir, true);
    struct stat st;
    cr_assert_eq(stat(dir, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0700, "cache directory mode %o", st.st_mode & 07777);
    cr_assert_eq(stat(mid, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0700, "created parent mode %o", st.st_mode & 07777);
    char *path = only_entry(dir);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 077, 0, "entry mode %o", st.st_mode & 07777);
    free(path);
    /* an existing directory keeps its mode; its entries are private still */
    char shared[600];
    snprintf(shared, sizeof shared, "%s/shared", top);
    cr_assert_eq(mkdir(shared, 0755), 0);
    compile_check(jit, &md, shared, true);
    cr_assert_eq(stat(shared, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0755);
    path = only_entry(shared);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 077, 0, "entry mode %o", st.st_mode & 07777);
    free(path);
    model_free(&md);
    mj_jit_free(jit);
    mjt_rm_temp(top);
}

/* ---- the size cap ------------------------------------------------------------------ */

/* the one name in now that is not in before (malloc'd) */
static char *new_name(char **before, char **now) {
    char *found = NULL;
    for (int i = 0; now[i]; i++)
        if (!has_entry(before, now[i])) {
            cr_assert_null(found, "one new entry");
            found = strdup(now[i]);
        }
    cr_assert_not_null(found, "a new entry");
    return found;
}

static mj_compile_stats compile_graph(mj_jit *jit, mj_graph *g, const char *dir) {
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.cache_dir = dir;
    o.frozen = true;
    mj_compiled *c = mjt_compile_with(jit, g, &o);
    mj_compile_stats st = *mj_compiled_stats(c);
    mj_compiled_free(c);
    return st;
}

Test(cache_rel, small_cap_evicts_least_recently_used, .timeout = 600) {
    char *dir = mjt_temp_dir("maskjit-cache-rel");
    setenv("MASKJIT_CACHE_MAX_MB", "1", 1);
    const uint64_t cap = 1u << 20;
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    enum { MAXG = 24 };
    char *name[MAXG] = {0};
    mj_graph *g[MAXG] = {0};
    int fit = 0; /* entries that fit under the cap */
    int n = 0;
    for (int i = 0; i < MAXG; i++) {
        g[i] = big_const_graph(128, 128, (uint32_t)i + 1, -1);
        char **before = entries(dir, NULL);
        mj_compile_stats st = compile_graph(jit, g[i], dir);
        cr_assert(!st.cache_hit);
        cr_assert_eq(st.warning[0], '\0', "%s", st.warning);
        char **now = entries(dir, NULL);
        name[i] = new_name(before, now);
        free_entries(before);
        free_entries(now);
        n = i + 1;
        if (i == 0) {
            char p[1024];
            snprintf(p, sizeof p, "%s/%s", dir, name[0]);
            struct stat sb;
            cr_assert_eq(stat(p, &sb), 0);
            /* room to spare: entries may differ by a few bytes */
            fit = (int)(cap / ((uint64_t)sb.st_size + 4096));
            cr_assert(fit >= 5 && fit + 4 <= MAXG, "entry of %lld bytes", (long long)sb.st_size);
        }
        cr_assert_leq(entry_bytes(dir), cap, "after %d compiles: %llu bytes", n, (unsigned long long)entry_bytes(dir));
        if (i == fit - 1) {
            /* all fit: none evicted yet; now use the oldest again */
            int count;
            free_entries(entries(dir, &count));
            cr_assert_eq(count, fit);
            cr_assert(compile_graph(jit, g[0], dir).cache_hit);
        }
        if (i == fit + 3) break;
    }
    char **now = entries(dir, NULL);
    cr_assert(has_entry(now, name[n - 1]), "the newest entry stays");
    cr_assert(has_entry(now, name[0]), "the oldest entry was used recently: it stays");
    cr_assert(!has_entry(now, name[1]), "the least recently used entry is evicted");
    free_entries(now);
    cr_assert(compile_graph(jit, g[n - 1], dir).cache_hit);
    for (int i = 0; i < MAXG; i++) {
        free(name[i]);
        mj_graph_free(g[i]);
    }
    mj_jit_free(jit);
    unsetenv("MASKJIT_CACHE_MAX_MB");
    mjt_rm_temp(dir);
}

Test(cache_rel, bad_max_mb_falls_back_with_a_warning, .timeout = 120) {
    char *dir = mjt_temp_dir("maskjit-cache-rel");
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    model md = model_new("mlp:16,8:act=relu", 9);
    const char *bad[] = {"abc", "-1", "1.5", "12MB", " 7", "99999999999999999999999999"};
    for (int i = 0; i < 6; i++) {
        /* the cap is read when an entry is stored: a miss each time */
        mjt_rm_rf(dir);
        setenv("MASKJIT_CACHE_MAX_MB", bad[i], 1);
        mj_compile_stats st = compile_check(jit, &md, dir, true);
        cr_assert(!st.cache_hit);
        cr_assert(strstr(st.warning, "MASKJIT_CACHE_MAX_MB") && strstr(st.warning, "using 1024"),
                  "'%s': warning '%s'", bad[i], st.warning);
        int n;
        free_entries(entries(dir, &n));
        cr_assert_eq(n, 1, "'%s': stored under the default cap", bad[i]);
    }
    /* the fallback (the default cap) keeps caching */
    setenv("MASKJIT_CACHE_MAX_MB", "abc", 1);
    cr_assert(compile_check(jit, &md, dir, true).cache_hit);
    /* 0 is no limit; an empty value is the default */
    const char *good[] = {"0", "", "2048"};
    for (int i = 0; i < 3; i++) {
        setenv("MASKJIT_CACHE_MAX_MB", good[i], 1);
        mj_compile_stats st = compile_check(jit, &md, dir, true);
        cr_assert(st.cache_hit);
        cr_assert_eq(st.warning[0], '\0', "'%s': %s", good[i], st.warning);
    }
    unsetenv("MASKJIT_CACHE_MAX_MB");
    model_free(&md);
    mj_jit_free(jit);
    mjt_rm_temp(dir);
}

/* ---- the key ------------------------------------------------------------------------ */

/* A const over 64 elements is printed without its data: only the bytes part
 * of the key tells two such graphs apart. */
Test(cache_rel, key_covers_bytes_of_large_consts) {
    mj_graph *a = big_const_graph(16, 16, 1, -1), *b = big_const_graph(16, 16, 1, 200);
    char *ta = mj_graph_to_string(a), *tb = mj_graph_to_string(b);
    cr_assert_str_eq(ta, tb, "the IR text does not show the const's data");
    MJT_FREE(ta, tb);
    mj_compile_options o;
    mj_compile_options_init(&o);
    mj_cache_target t = {.cpu = "znver5", .features = "+avx512f"};
    char ka[65], kb[65], ka2[65];
    OK(mj_cache_key(a, &o, &t, ka));
    OK(mj_cache_key(b, &o, &t, kb));
    cr_assert_str_neq(ka, kb, "one of 256 const elements differs");
    mj_graph *a2 = big_const_graph(16, 16, 1, -1);
    OK(mj_cache_key(a2, &o, &t, ka2));
    cr_assert_str_eq(ka, ka2);
    mj_graph_free(a);
    mj_graph_free(a2);
    mj_graph_free(b);
}

/* ---- maskjit cache ------------------------------------------------------------------ */


/* the number after "KEY:" in text, or -1 */
static long long field(const char *text, const char *key) {
    char k[64];
    snprintf(k, sizeof k, "\n%s:", key);
    size_t len = strlen(text) + 2;
    char *t = malloc(len);
    cr_assert(t);
    snprintf(t, len, "\n%s", text);
    const char *p = strstr(t, k);
    long long v = p ? strtoll(p + strlen(k), NULL, 10) : -1;
    free(t);
    return v;
}

static const char HEX64[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd";

/* a file of n bytes at dir/name, last modified age seconds ago */
static void fake_file(const char *dir, const char *name, size_t n, time_t age) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    char *z = calloc(1, n + 1);
    mjt_write_file(p, z, n);
    free(z);
    struct timespec ts[2];
    clock_gettime(CLOCK_REALTIME, &ts[0]);
    ts[0].tv_sec -= age;
    ts[1] = ts[0];
    cr_assert_eq(utimensat(AT_FDCWD, p, ts, 0), 0);
}

static bool exists(const char *dir, const char *name) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat st;
    return lstat(p, &st) == 0;
}

Test(cache_rel, cli_help_and_bad_arguments) {
    char *out;
    cr_assert_eq(run_maskjit(&out, "--help"), 0);
    cr_assert(strstr(out, "cache"), "%s", out);
    free(out);
    cr_assert_eq(run_maskjit(&out, "cache --help"), 0);
    cr_assert(strstr(out, "stats") && strstr(out, "clear") && strstr(out, "prune"), "%s", out);
    free(out);
    const char *subs[] = {"stats", "clear", "prune"};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(run_maskjit(&out, "cache %s --help", subs[i]), 0, "%s --help", subs[i]);
        cr_assert(strstr(out, "usage: maskjit cache") && strstr(out, "--dir"), "%s", out);
        free(out);
    }
    const char *bad[] = {"cache", "cache bogus", "cache stats extra", "cache stats --nope",
                         "cache prune --max-mb", "cache prune --max-mb abc", "cache prune --max-mb -3",
                         "cache clear --dir", "cache prune --max-mb 1x"};
    for (int i = 0; i < 9; i++) {
        cr_assert_eq(run_maskjit(&out, "%s", bad[i]), 2, "'%s' exits 2: %s", bad[i], out);
        cr_assert(strstr(out, "maskjit"), "'%s' says why: %s", bad[i], out);
        free(out);
    }
    cr_assert_eq(run_maskjit(&out, "cache bogus"), 2);
    cr_assert(strstr(out, "bogus"), "%s", out);
    free(out);
}

Test(cache_rel, cli_stats_and_clear_count_only_maskjit_files, .timeout = 300) {
    char *dir = mjt_temp_dir("maskjit-cache-rel");
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    model a = model_new("mlp:16,8:act=relu", 1), b = model_new("mlp:16,12,8:act=gelu", 2);
    compile_check(jit, &a, dir, true);
    compile_check(jit, &b, dir, false);
    uint64_t bytes = entry_bytes(dir);
    /* the user's files: never counted, never removed */
    fake_file(dir, "notes.txt", 5000, 0);
    fake_file(dir, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.txt", 100, 7200);
    char p[1024];
    snprintf(p, sizeof p, "%s/%s.mjc", dir, HEX64);
    cr_assert_eq(mkfifo(p, 0600), 0); /* entry-like name, not a file */
    snprintf(p, sizeof p, "%s/sub", dir);
    cr_assert_eq(mkdir(p, 0700), 0);
    char *out;
    cr_assert_eq(run_maskjit(&out, "cache stats --dir %s", dir), 0, "%s", out);
    cr_assert_eq(field(out, "entries"), 2, "%s", out);
    cr_assert_eq(field(out, "bytes"), (long long)bytes, "%s", out);
    cr_assert(strstr(out, dir), "names the directory: %s", out);
    free(out);
    /* MASKJIT_CACHE_DIR names the directory too; MASKJIT_CACHE=0 does not hide it */
    setenv("MASKJIT_CACHE_DIR", dir, 1);
    setenv("MASKJIT_CACHE", "0", 1);
    cr_assert_eq(run_maskjit(&out, "cache stats"), 0, "%s", out);
    cr_assert_eq(field(out, "entries"), 2, "%s", out);
    free(out);
    unsetenv("MASKJIT_CACHE");
    cr_assert_eq(run_maskjit(&out, "cache clear"), 0, "%s", out);
    free(out);
    int n;
    free_entries(entries(dir, &n));
    cr_assert_eq(n, 0, "clear removes the entries");
    cr_assert(exists(dir, "notes.txt") && exists(dir, "sub"), "and nothing else");
    cr_assert(exists(dir, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.txt"));
    char fifo[200];
    snprintf(fifo, sizeof fifo, "%s.mjc", HEX64);
    cr_assert(exists(dir, fifo), "a FIFO with an entry's name is not maskjit's");
    cr_assert_eq(run_maskjit(&out, "cache stats --dir %s", dir), 0);
    cr_assert_eq(field(out, "entries"), 0, "%s", out);
    free(out);
    /* a directory that does not exist: empty, and not created */
    char missing[700];
    snprintf(missing, sizeof missing, "%s/not-there", dir);
    cr_assert_eq(run_maskjit(&out, "cache stats --dir %s", missing), 0, "%s", out);
    cr_assert_eq(field(out, "entries"), 0, "%s", out);
    free(out);
    cr_assert_eq(run_maskjit(&out, "cache clear --dir %s", missing), 0, "%s", out);
    free(out);
    cr_assert(!exists(dir, "not-there"));
    /* a bad cap is a usage error for stats */
    setenv("MASKJIT_CACHE_MAX_MB", "lots", 1);
    cr_assert_eq(run_maskjit(&out, "cache stats --dir %s", dir), 2, "%s", out);
    cr_assert(strstr(out, "MASKJIT_CACHE_MAX_MB") && strstr(out, "lots"), "%s", out);
    free(out);
    unsetenv("MASKJIT_CACHE_MAX_MB");
    unsetenv("MASKJIT_CACHE_DIR");
    model_free(&a);
    model_free(&b);
    mj_jit_free(jit);
    mjt_rm_temp(dir);
}

Test(cache_rel, cli_prune_keeps_the_newest_under_the_cap) {
    char *dir = mjt_temp_dir("maskjit-cache-rel");
    /* ten 300 KB entries, entry i last used 100 - i minutes ago */
    char names[10][80];
    for (int i = 0; i < 10; i++) {
        snprintf(names[i], sizeof names[i], "%.62s%02d.mjc", HEX64, i);
        fake_file(dir, names[i], 300 * 1024, (time_t)(100 - i) * 60);
    }
    fake_file(dir, "big-user-file.o", 4 << 20, 99999); /* not an entry's name */
    fake_file(dir, ".0123456789abcdef.Ab12Cd", 1000, 7200); /* a writer's temp file, abandoned */
    fake_file(dir, ".0123456789abcdef.Xy34Zw", 1000, 0);    /* one being written now */
    char *out;
    cr_assert_eq(run_maskjit(&out, "cache prune --dir %s --max-mb 1", dir), 0, "%s", out);
    free(out);
    for (int i = 0; i < 10; i++)
        cr_assert_eq(exists(dir, names[i]), i >= 7, "entry %d (the three newest fit in 1 MiB)", i);
    cr_assert(exists(dir, "big-user-file.o"));
    cr_assert(!exists(dir, ".0123456789abcdef.Ab12Cd"), "an abandoned temp file goes");
    cr_assert(exists(dir, ".0123456789abcdef.Xy34Zw"), "a fresh one stays");
    cr_assert_eq(run_maskjit(&out, "cache stats --dir %s", dir), 0);
    cr_assert_eq(field(out, "entries"), 3, "%s", out);
    cr_assert_eq(field(out, "bytes"), 3 * 300 * 1024, "%s", out);
    free(out);
    cr_assert_eq(run_maskjit(&out, "cache prune --dir %s --max-mb 0", dir), 0, "%s", out);
    free(out);
    int n;
    free_entries(entries(dir, &n));
    cr_assert_eq(n, 0, "--max-mb 0 keeps nothing");
    cr_assert(exists(dir, "big-user-file.o"));
    mjt_rm_temp(dir);
}
