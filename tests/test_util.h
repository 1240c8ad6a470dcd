/* Assertion helpers shared by the test files. */
#ifndef MJT_TEST_UTIL_H
#define MJT_TEST_UTIL_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "maskjit.h"

/* expr must return MJ_OK; on failure show the status and message. */
#define OK(expr)                                                                           \
    do {                                                                                   \
        mj_status s_ = (expr);                                                             \
        cr_assert_eq(s_, MJ_OK, "%s -> %s: %s", #expr, mj_status_name(s_), mj_last_error()); \
    } while (0)

/* expr must fail with status and a message containing needle. */
#define FAILS(expr, status, needle)                                                        \
    do {                                                                                   \
        mj_status s_ = (expr);                                                             \
        cr_assert_eq(s_, status, "%s -> %s (%s)", #expr, mj_status_name(s_), mj_last_error()); \
        cr_assert(strstr(mj_last_error(), needle), "message '%s' lacks '%s'", mj_last_error(), \
                  needle);                                                                 \
    } while (0)

/* Releases each tensor listed (NULLs allowed): MJT_RELEASE(x, y, want). */
#define MJT_RELEASE(...)                                                                   \
    mjt_release_n((mj_tensor *[]){__VA_ARGS__}, sizeof((mj_tensor *[]){__VA_ARGS__}) / sizeof(mj_tensor *))
static inline void mjt_release_n(mj_tensor *const *t, size_t n) {
    for (size_t i = 0; i < n; i++) mj_tensor_release(t[i]);
}

/* Frees each malloc'd pointer listed: MJT_FREE(path, text). */
#define MJT_FREE(...) mjt_free_n((void *[]){__VA_ARGS__}, sizeof((void *[]){__VA_ARGS__}) / sizeof(void *))
static inline void mjt_free_n(void *const *p, size_t n) {
    for (size_t i = 0; i < n; i++) free(p[i]);
}

/* A generator seeded with seed: `mj_rng rng = mjt_rng(7);`. */
/* a float's bits and back (memcpy: no aliasing questions) */
static inline uint32_t mjt_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static inline float mjt_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline mj_rng mjt_rng(uint64_t seed) {
    mj_rng r;
    mj_rng_seed(&r, seed);
    return r;
}

/* A new f32[r, c] of normal samples from rng. */
static inline mj_tensor *mjt_randn2(int64_t r, int64_t c, mj_rng *rng) {
    mj_tensor *t = NULL;
    OK(mj_tensor_randn(&t, 2, (int64_t[]){r, c}, rng));
    return t;
}

/* The model under test (mj_model_under_test_new, with biases) masked at
 * density 0.5 with rng. */
static inline mj_module *mjt_half_masked_mut(mj_rng *rng) {
    mj_module *m = NULL;
    OK(mj_model_under_test_new(&m, true));
    OK(mj_model_apply_masks(m, NULL, 0.5, rng));
    return m;
}

/* At file scope: the `jit` of a suite whose tests compile, with the setup
 * and teardown to pass to TestSuite (one JIT per test process). */
#define MJT_JIT_FIXTURE                                                                    \
    static mj_jit *jit;                                                                    \
    static void setup(void) { OK(mj_jit_new(&jit)); }                                      \
    static void teardown(void) {                                                           \
        mj_jit_free(jit);                                                                  \
        jit = NULL;                                                                        \
        mj_llvm_shutdown(); /* each test runs in its own process */                        \
    }

/* At file scope: `tmpdir`, the suite's scratch directory /tmp/<prefix>-XXXXXX,
 * with the init and fini to pass to TestSuite (made before the suite's tests,
 * removed with everything in it after them). */
#define MJT_TMPDIR_FIXTURE(prefix)                                                         \
    static char *tmpdir;                                                                   \
    static void make_tmpdir(void) { tmpdir = mjt_temp_dir(prefix); }                       \
    static void remove_tmpdir(void) {                                                      \
        mjt_rm_rf(tmpdir);                                                                 \
        free(tmpdir);                                                                      \
    }

/* The four ways to compile a graph (numeric mode x live/frozen). */
typedef struct mjt_mode {
    mj_numeric_mode numeric;
    bool frozen;
    const char *name;
} mjt_mode;
__attribute__((unused)) static const mjt_mode mjt_modes[4] = {
    {MJ_NUMERIC_EXACT, false, "exact live"},
    {MJ_NUMERIC_EXACT, true, "exact frozen"},
    {MJ_NUMERIC_FAST, false, "fast live"},
    {MJ_NUMERIC_FAST, true, "fast frozen"},
};

/* g compiled in mode m (without the cache's options); must succeed. */
static inline mj_compiled *mjt_compile(mj_jit *jit, const mj_graph *g, mjt_mode m) {
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.numeric = m.numeric;
    o.frozen = m.frozen;
    mj_compiled *c = NULL;
    mj_status s = mj_jit_compile(jit, g, &o, &c);
    cr_assert_eq(s, MJ_OK, "compile (%s): %s: %s", m.name, mj_status_name(s), mj_last_error());
    return c;
}

/* g compiled with the options o (NULL: the defaults); must succeed. */
static inline mj_compiled *mjt_compile_with(mj_jit *jit, const mj_graph *g, const mj_compile_options *o) {
    mj_compiled *c = NULL;
    mj_status s = mj_jit_compile(jit, g, o, &c);
    cr_assert_eq(s, MJ_OK, "compile: %s: %s", mj_status_name(s), mj_last_error());
    return c;
}

/* The model of spec (mj_model_from_spec) built from rng, masked at density
 * (mj_model_apply_masks) when density is below 1. */
static inline mj_module *mjt_model(const char *spec, double density, mj_rng *rng) {
    mj_module *m = NULL;
    OK(mj_model_from_spec(spec, rng, &m));
    if (density < 1) OK(mj_model_apply_masks(m, NULL, density, rng));
    return m;
}

/* Frees a test's graph and then its module (either may be NULL). */
static inline void mjt_free_traced(mj_graph *g, mj_module *m) {
    mj_graph_free(g);
    mj_module_free(m);
}

/* m traced on the example x; must succeed. */
static inline mj_graph *mjt_trace(mj_module *m, const mj_tensor *x) {
    mj_graph *g = NULL;
    OK(mj_trace_module(m, x, &g));
    return g;
}

/* m's eager output at x (a reference the caller releases). */
static inline mj_tensor *mjt_forward(mj_module *m, const mj_tensor *x) {
    mj_tensor *y = NULL;
    OK(mj_module_forward(m, x, &y));
    return y;
}

/* Whether g's interpreter gives m's eager output at x, bit for bit. */
static inline bool mjt_replays_eager(mj_graph *g, mj_module *m, const mj_tensor *x) {
    mj_tensor *want = mjt_forward(m, x), *got = NULL;
    OK(mj_graph_run(g, x, &got));
    bool same = mj_tensor_equal(got, want);
    mj_tensor_release(got);
    mj_tensor_release(want);
    return same;
}

/* c's output at x (a reference the caller releases). */
static inline mj_tensor *mjt_run(mj_compiled *c, const mj_tensor *x) {
    mj_tensor *y = NULL;
    OK(mj_compiled_run(c, x, &y));
    return y;
}

/* g compiled in mode m and run once at x: the output. */
static inline mj_tensor *mjt_compile_run(mj_jit *jit, const mj_graph *g, mjt_mode m, const mj_tensor *x) {
    mj_compiled *c = mjt_compile(jit, g, m);
    mj_tensor *y = mjt_run(c, x);
    mj_compiled_free(c);
    return y;
}

/* c's dump of kind what (mj_compiled_dump: "ir", "asm", ...) as a malloc'd string. */
static inline char *mjt_dump(mj_compiled *c, const char *what) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert_not_null(f);
    OK(mj_compiled_dump(c, what, f));
    fclose(f);
    return buf;
}

/* c's LLVM IR holds needle (e.g. ".sparse": a layer uses the sparse kernel). */
static inline bool mjt_ir_has(mj_compiled *c, const char *needle) {
    char *ir = mjt_dump(c, "ir");
    bool has = strstr(ir, needle) != NULL;
    free(ir);
    return has;
}

/* got is within (rtol, atol) of want; what (printf-style) names the case. */
#define MJT_EXPECT_CLOSE(got, want, rtol, atol, ...)                                       \
    do {                                                                                   \
        mj_compare cmp_ = mj_tensor_compare(got, want, rtol, atol);                        \
        char desc_[256], what_[256];                                                       \
        mj_compare_describe(&cmp_, got, want, desc_, sizeof desc_);                        \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                        \
        cr_expect(cmp_.close, "%s: not close: %s", what_, desc_);                          \
    } while (0)

/* A module's print (mj_module_print) as a malloc'd string. */
static inline char *mjt_module_str(const mj_module *m) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert_not_null(f);
    mj_module_print(f, m);
    fclose(f);
    return buf;
}

/* Tensor key of the safetensors file path (a reference the caller releases). */
static inline mj_tensor *mjt_load_tensor(const char *path, const char *key) {
    mj_tensor_dict *d;
    OK(mj_safetensors_load(path, &d));
    mj_tensor *t = mj_tensor_dict_get(d, key);
    cr_assert_not_null(t, "%s has no %s", path, key);
    mj_tensor_retain(t);
    mj_tensor_dict_free(d);
    return t;
}

/* ---- files and processes ------------------------------------------------ */

/* A fresh empty directory /tmp/<prefix>-XXXXXX (malloc'd). */
static inline char *mjt_temp_dir(const char *prefix) {
    char *d = malloc(strlen(prefix) + 16);
    cr_assert_not_null(d);
    sprintf(d, "/tmp/%s-XXXXXX", prefix);
    cr_assert_not_null(mkdtemp(d), "mkdtemp %s", d);
    return d;
}

/* Removes dir and everything below it (links are removed, not followed). */
static inline void mjt_rm_rf(const char *dir) {
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char p[4096];
            if (snprintf(p, sizeof p, "%s/%s", dir, e->d_name) >= (int)sizeof p) continue;
            struct stat st;
            if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) mjt_rm_rf(p);
            else unlink(p);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* Removes a directory from mjt_temp_dir with everything in it, and frees its name. */
static inline void mjt_rm_temp(char *dir) {
    mjt_rm_rf(dir);
    free(dir);
}

/* The bytes of the file path (malloc'd, with a NUL after them so that texts
 * can be read as strings); their count in *n when n is not NULL. */
static inline void *mjt_read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s: %s", path, strerror(errno));
    char *b = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? 2 * cap : 65536;
            b = realloc(b, cap + 1);
            cr_assert_not_null(b);
        }
        size_t got = fread(b + len, 1, cap - len, f);
        if (got == 0) break;
        len += got;
    }
    fclose(f);
    b[len] = 0;
    if (n) *n = len;
    return b;
}

/* Writes the n bytes at data to path (created or truncated). */
static inline void mjt_write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    cr_assert_eq(fwrite(data, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

/* Entries of dir, other than . and .., whose name matches the shell pattern
 * (fnmatch); dir must exist. */
static inline int mjt_count_entries(const char *dir, const char *pattern) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "opendir %s: %s", dir, strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && fnmatch(pattern, e->d_name, 0) == 0) n++;
    closedir(d);
    return n;
}

/* Runs a shell command line; returns its exit status (128 + the signal if
 * it did not exit) and its stdout (malloc'd) in *out when out is not NULL,
 * its length in *len when len is not NULL. */
static inline int mjt_shell_len(char **out, size_t *len, const char *cmd) {
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p, "popen %s", cmd);
    char *buf = NULL;
    size_t size = 0;
    FILE *mem = open_memstream(&buf, &size);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, p)) > 0) fwrite(chunk, 1, n, mem);
    fclose(mem);
    int status = pclose(p);
    if (len) *len = size;
    if (out) *out = buf;
    else free(buf);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}
static inline int mjt_shell(char **out, const char *cmd) { return mjt_shell_len(out, NULL, cmd); }

#ifdef MJ_BUILD_ROOT
#define MJT_MASKJIT MJ_BUILD_ROOT "/maskjit"
/* Runs `maskjit ARGS` (NO_COLOR=1) through the shell, stderr joined to
 * stdout or dropped; the exit status, and the output in *out (malloc'd)
 * when out is not NULL. */
static inline int mjt_maskjit(char **out, bool with_stderr, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline int mjt_maskjit(char **out, bool with_stderr, const char *fmt, ...) {
    char args[2048], cmd[2400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "NO_COLOR=1 %s %s %s", MJT_MASKJIT, args, with_stderr ? "2>&1" : "2>/dev/null");
    return mjt_shell(out, cmd);
}
#endif

/* Features that make LLVM emit AVX2 code on an AVX-512 host, as under
 * valgrind (the JIT's test hook MASKJIT_JIT_FEATURES, read by mj_jit_new). */
#define MJT_AVX2_FEATURES "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt,+sse4.2,-avx512f"

/* A JIT that emits AVX2 code whatever the host: the hook is set for its
 * mj_jit_new only. */
static inline mj_jit *mjt_avx2_jit(void) {
    cr_assert_eq(setenv("MASKJIT_JIT_FEATURES", MJT_AVX2_FEATURES, 1), 0);
    mj_jit *j = NULL;
    mj_status s = mj_jit_new(&j);
    unsetenv("MASKJIT_JIT_FEATURES");
    cr_assert_eq(s, MJ_OK, "mj_jit_new with AVX2 forced: %s", mj_last_error());
    return j;
}

#endif
