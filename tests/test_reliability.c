/* Reliability (issue 7): hostile inputs, limits, all-or-nothing failures,
 * crash-safe saves, concurrency, and CLI argument abuse.
 *
 * - Regressions of fuzzer findings (fuzz/README.md) and a replay of the seed
 *   corpora through the harnesses' checks (so the gcc build runs them too).
 * - Integer overflow and size limits: tensors, IR text, model specs,
 *   safetensors headers, compiled batch sizes.
 * - "Nothing lost": saves that die midway (file size limit in a forked
 *   child, or SIGKILL) leave the previous file intact; failing
 *   load_state_dict / register / remove / set calls leave every tensor
 *   bitwise as it was.
 * - Threads: one compiled model called from 8 threads; 8 threads tracing and
 *   compiling their own models on one JIT; thread-local error messages
 *   (docs/threads.md). tools/tsan.sh runs these under ThreadSanitizer.
 * - The maskjit binary with bad arguments: a message and an exit status,
 *   never a crash. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "maskjit.h"
#include "test_util.h"
#include "thread_util.h"

extern char **environ;

#define SRC MJ_SOURCE_ROOT
#define MASKJIT_BIN MJ_BUILD_ROOT "/maskjit"

/* ---- helpers ---------------------------------------------------------------- */
MJT_TMPDIR_FIXTURE("mj-rel")

/* No per-test timeouts: they would override --timeout, which tools/valgrind.sh
 * raises (a JIT compile takes a minute under valgrind on a loaded machine). */
TestSuite(reliability, .init = make_tmpdir, .fini = remove_tmpdir);

static char *tmp_path(const char *name) {
    char *p = malloc(512);
    cr_assert_not_null(p);
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

/* Files in tmpdir whose name starts with prefix (temporaries of a save). */
static void assert_error(mj_status got, mj_status want, const char *needle) {
    cr_assert_eq(got, want, "got %s, want %s (message: %s)", mj_status_name(got),
                 mj_status_name(want), mj_last_error());
    cr_assert_not_null(strstr(mj_last_error(), needle), "message '%s' lacks '%s'",
                       mj_last_error(), needle);
}

static mj_tensor_dict *dict1(const char *key, int64_t n, float v) {
    mj_tensor *t;
    OK(mj_tensor_full(&t, 1, &n, v));
    mj_tensor_dict *d;
    OK(mj_tensor_dict_new(&d));
    OK(mj_tensor_dict_set(d, key, t));
    mj_tensor_release(t);
    return d;
}

/* ---- fuzz findings and corpus replay --------------------------------------
 * The properties fuzz/fuzz_*.c check, as functions, so every seed and every
 * reproducer runs in the ordinary build too. */

static void check_safetensors_bytes(const unsigned char *b, size_t n, const char *what) {
    mj_tensor_dict *d = NULL;
    mj_clear_error();
    mj_status s = mj_safetensors_parse(b, n, &d);
    if (s != MJ_OK) {
        cr_assert(mj_last_error()[0], "%s: failure without a message", what);
        return;
    }
    for (int i = 0; i < mj_tensor_dict_size(d); i++)
        cr_assert_leq((uint64_t)mj_tensor_numel(mj_tensor_dict_value(d, i)) * 2, n, "%s", what);
    mj_tensor_dict_free(d);
}

static void check_ir_text(const char *text, const char *what) {
    mj_graph *g = NULL, *g2 = NULL;
    mj_clear_error();
    if (mj_graph_parse(text, &g) != MJ_OK) {
        cr_assert(mj_last_error()[0], "%s: failure without a message", what);
        return;
    }
    cr_assert_eq(mj_graph_verify(g), MJ_OK, "%s: %s", what, mj_last_error());
    char *p1 = mj_graph_to_string(g);
    cr_assert_not_null(p1);
    cr_assert_eq(mj_graph_parse(p1, &g2), MJ_OK, "%s: re-parse: %s\n%s", what, mj_last_error(), p1);
    char *p2 = mj_graph_to_string(g2);
    cr_assert_str_eq(p1, p2, "%s: print(parse(print(g))) differs", what);
    MJT_FREE(p1, p2);
    mj_graph_free(g);
    mj_graph_free(g2);
}

static void check_spec(const char *spec, const char *what) {
    mj_rng rng = mjt_rng(1);
    mj_module *m = NULL;
    mj_clear_error();
    if (mj_model_from_spec(spec, &rng, &m) != MJ_OK) {
        cr_assert(mj_last_error()[0], "%s: failure without a message", what);
        cr_assert_null(m);
        return;
    }
    mj_module_free(m);
}

Test(reliability, fuzz_seed_corpora_replay) {
    static const char *const dirs[] = {"safetensors", "ir_parse", "model_spec"};
    int total = 0;
    for (int k = 0; k < 3; k++) {
        char dpath[512];
        snprintf(dpath, sizeof dpath, "%s/fuzz/corpus/%s", SRC, dirs[k]);
        DIR *dir = opendir(dpath);
        cr_assert_not_null(dir, "%s", dpath);
        struct dirent *e;
        int n = 0;
        while ((e = readdir(dir))) {
            if (e->d_name[0] == '.') continue;
            char p[1024];
            snprintf(p, sizeof p, "%s/%s", dpath, e->d_name);
            size_t len;
            unsigned char *b = mjt_read_file(p, &len);
            cr_assert_not_null(b, "%s", p);
            if (k == 0) check_safetensors_bytes(b, len, p);
            else if (k == 1) check_ir_text((const char *)b, p);
            else check_spec((const char *)b, p);
            free(b);
            n++;
        }
        closedir(dir);
        cr_assert_geq(n, 5, "%s has only %d seeds", dpath, n);
        total += n;
    }
    cr_assert_geq(total, 25);
}

/* fuzz_model_spec finding 1 (timeout, reproducer "mlp:16,6516,6551"): a
 * valid spec builds whatever size it names. It is correct but makes a huge
 * model; the limit a hostile spec needs is below (pending test). Here: the
 * reproducer's shape at a size that fits a test builds exactly the layers
 * it names. */
Test(reliability, fuzz_spec_large_widths_build_what_they_name) {
    mj_rng rng = mjt_rng(1);
    mj_module *m;
    OK(mj_model_from_spec("mlp:16,651,655", &rng, &m));
    mj_tensor_dict *p;
    OK(mj_module_named_parameters(m, &p));
    cr_assert_eq(mj_tensor_dim(mj_tensor_dict_get(p, "0.weight"), 0), 651);
    cr_assert_eq(mj_tensor_dim(mj_tensor_dict_get(p, "0.weight"), 1), 16);
    cr_assert_eq(mj_tensor_dim(mj_tensor_dict_get(p, "2.weight"), 0), 655);
    cr_assert_eq(mj_tensor_dim(mj_tensor_dict_get(p, "2.weight"), 1), 651);
    mj_tensor_dict_free(p);
    mj_module_free(m);
}

/* "mlp:W,W,...,W" with n widths W (malloc'd). */
static char *mlp_spec(int w, int n) {
    size_t cap = 8 + (size_t)n * 12;
    char *spec = malloc(cap);
    cr_assert_not_null(spec);
    size_t len = (size_t)snprintf(spec, cap, "mlp:%d", w);
    for (int i = 1; i < n; i++) len += (size_t)snprintf(spec + len, cap - len, ",%d", w);
    return spec;
}

/* Finding 1's real gap, fixed in src/models.c (be915e3, by its owner): a
 * spec's total size had no limit, so "mlp:65536,65536" (4 Gi weights,
 * 16 GiB) allocated and filled until memory ran out. Now MJ_ERR_LIMIT
 * before any allocation. */
Test(reliability, spec_total_weight_limit) {
    mj_rng rng = mjt_rng(1);
    mj_module *m = NULL;
    assert_error(mj_model_from_spec("mlp:65536,65536", &rng, &m), MJ_ERR_LIMIT, "exceed the limit");
    cr_assert_not_null(strstr(mj_last_error(), "4295032832 parameters"), "%s", mj_last_error());
    /* one over 2^28 by the bias alone */
    assert_error(mj_model_from_spec("mlp:16384,16384", &rng, &m), MJ_ERR_LIMIT, "268451840 parameters");
    /* 1024 layers of 65536: the sum of products must not overflow either */
    char *spec = mlp_spec(65536, 1025);
    mj_status s = mj_model_from_spec(spec, &rng, &m);
    cr_assert_eq(s, MJ_ERR_LIMIT, "%s: %s", mj_status_name(s), mj_last_error());
    free(spec);
    cr_assert_null(m);
}

/* ---- limits and overflow ----------------------------------------------------- */

Test(reliability, tensor_shape_overflow_and_rank) {
    mj_tensor *t = NULL;
    int64_t over[2] = {INT64_C(1) << 21, INT64_C(1) << 20}; /* 2^41 > 2^40 */
    assert_error(mj_tensor_zeros(&t, 2, over), MJ_ERR_LIMIT, "2^40");
    int64_t wrap[3] = {INT64_MAX / 2 + 1, 2, 2}; /* overflows int64 */
    assert_error(mj_tensor_zeros(&t, 3, wrap), MJ_ERR_LIMIT, "2^40");
    int64_t neg[2] = {3, -1};
    assert_error(mj_tensor_ones(&t, 2, neg), MJ_ERR_INVALID, "-1");
    int64_t five[5] = {1, 1, 1, 1, 1};
    assert_error(mj_tensor_zeros(&t, 5, five), MJ_ERR_INVALID, "rank 5");
    assert_error(mj_tensor_zeros(&t, 0, five), MJ_ERR_INVALID, "rank 0");
    cr_assert_null(t);

    mj_tensor *x;
    int64_t four = 4;
    OK(mj_tensor_zeros(&x, 1, &four));
    int64_t big[2] = {INT64_MAX, 3};
    assert_error(mj_reshape(&t, x, 2, big), MJ_ERR_LIMIT, "overflows");
    int64_t inf0[2] = {-1, 0};
    assert_error(mj_reshape(&t, x, 2, inf0), MJ_ERR_SHAPE, "cannot reshape");
    cr_assert_null(t);
    mj_tensor_release(x);

    mj_rng rng = mjt_rng(0);
    mj_module *m = NULL;
    assert_error(mj_linear_new(&m, INT64_C(1) << 21, INT64_C(1) << 20, true, &rng), MJ_ERR_LIMIT,
                 "2^40");
    assert_error(mj_linear_new(&m, 0, 3, true, &rng), MJ_ERR_INVALID, "in_features (0)");
    cr_assert_null(m);
}

static void ir_fails(const char *text, const char *needle) {
    mj_graph *g = NULL;
    mj_status s = mj_graph_parse(text, &g);
    cr_assert_eq(s, MJ_ERR_FORMAT, "parse of:\n%s\ngave %s (%s)", text, mj_status_name(s),
                 mj_last_error());
    cr_assert_not_null(strstr(mj_last_error(), needle), "message '%s' lacks '%s'", mj_last_error(),
                       needle);
    cr_assert_null(g);
}

Test(reliability, ir_huge_dims_and_overflowing_products) {
    /* one dim over 2^40 */
    ir_fails("maskjit-ir 1\n%0 = input \"x\" : f32[B,1099511627777]\nreturn %0\n",
             "2:24: a dim (a size or B) is too large (at most 1099511627776)");
    /* a dim that does not fit in int64 */
    ir_fails("maskjit-ir 1\n%0 = input \"x\" : f32[B,99999999999999999999]\nreturn %0\n",
             "too large");
    /* each dim fine, the product 2^60 is not */
    ir_fails("maskjit-ir 1\n%0 = input \"x\" : f32[B,4]\n"
             "%1 = param \"w\" : f32[1048576,1048576,1048576]\nreturn %0\n",
             "3:");
    /* the product would overflow int64 */
    ir_fails("maskjit-ir 1\n%0 = param \"w\" : f32[4294967296,4294967296,4294967296,4]\n"
             "return %0\n",
             "2:");
    /* rank 5 */
    ir_fails("maskjit-ir 1\n%0 = input \"x\" : f32[B,1,1,1,1]\nreturn %0\n", "more than 4 dims");
    /* value ids past int32 */
    ir_fails("maskjit-ir 1\n%0 = input \"x\" : f32[B,4]\n%1 = relu %2147483648 : f32[B,4]\n"
             "return %1\n",
             "too large");
    ir_fails("maskjit-ir 1\n%0 = input \"x\" : f32[B,4]\nreturn %99999999999999999999\n",
             "too large");
    /* const data longer than its type */
    ir_fails("maskjit-ir 1\n%0 = const \"c\" : f32[2] = [1, 2, 3]\nreturn %0\n",
             "3 numbers but the type");
    /* a number token longer than any float */
    char text[512];
    snprintf(text, sizeof text, "maskjit-ir 1\n%%0 = const \"c\" : f32[1] = [%0100d]\nreturn %%0\n", 1);
    ir_fails(text, "longer than");
    /* a 1025-byte name */
    char *t2 = malloc(4096);
    cr_assert_not_null(t2);
    int n = snprintf(t2, 4096, "maskjit-ir 1\n%%0 = input \"");
    for (int i = 0; i < 1025; i++) t2[n++] = 'a';
    snprintf(t2 + n, 4096 - (size_t)n, "\" : f32[B,1]\nreturn %%0\n");
    ir_fails(t2, "longer than 1024");
    free(t2);
    /* a batch dim where only sizes are allowed */
    ir_fails("maskjit-ir 1\n%0 = param \"w\" : f32[B,4]\nreturn %0\n", "batch");
}

/* A text of 2M nodes: the parser stops at its 1M-node limit with a message
 * naming the line, instead of building a graph of any size. */
Test(reliability, ir_two_million_nodes_hit_the_limit) {
    const int nodes = 2000000;
    size_t cap = (size_t)nodes * 40 + 128, len = 0;
    char *text = malloc(cap);
    cr_assert_not_null(text);
    len += (size_t)snprintf(text + len, cap - len, "maskjit-ir 1\n%%0 = input \"x\" : f32[B,1]\n");
    for (int i = 1; i < nodes; i++)
        len += (size_t)snprintf(text + len, cap - len, "%%%d = relu %%%d : f32[B,1]\n", i, i - 1);
    snprintf(text + len, cap - len, "return %%%d\n", nodes - 1);
    mj_graph *g = NULL;
    mj_status s = mj_graph_parse(text, &g);
    free(text);
    assert_error(s, MJ_ERR_FORMAT, "more than 1000000 nodes");
    cr_assert_not_null(strstr(mj_last_error(), "1000002:"), "%s", mj_last_error()); /* the line */
    cr_assert_null(g);
}

Test(reliability, spec_overflowing_widths_and_layers) {
    mj_rng rng = mjt_rng(0);
    mj_module *m = NULL;
    assert_error(mj_model_from_spec("mlp:65537,4", &rng, &m), MJ_ERR_FORMAT, "between 1 and 65536");
    assert_error(mj_model_from_spec("mlp:4,99999999999999999999999999", &rng, &m), MJ_ERR_FORMAT,
                 "between 1 and 65536");
    assert_error(mj_model_from_spec("mlp:18446744073709551617,4", &rng, &m), MJ_ERR_FORMAT,
                 "between 1 and 65536");
    assert_error(mj_model_from_spec("mlp:0,4", &rng, &m), MJ_ERR_FORMAT, "between 1 and 65536");
    assert_error(mj_model_from_spec("mlp:-4,4", &rng, &m), MJ_ERR_FORMAT, "not a positive integer");
    assert_error(mj_model_from_spec("mlp:4", &rng, &m), MJ_ERR_FORMAT, "at least 2 widths");
    assert_error(mj_model_from_spec("mlp:4,,4", &rng, &m), MJ_ERR_FORMAT, "empty width");
    /* 1026 widths = 1025 layers */
    char *spec = mlp_spec(1, 1026);
    /* Found by this test: the message used to quote the whole 2 KB spec and
     * lose the reason; specs are now quoted up to 160 characters. */
    assert_error(mj_model_from_spec(spec, &rng, &m), MJ_ERR_FORMAT, "more than 1024 layers");
    free(spec);
    assert_error(mj_model_from_spec("mlp:4,4:act=relu:act=relu", &rng, &m), MJ_ERR_FORMAT, "twice");
    assert_error(mj_model_from_spec("mlp:4,4:bias=2", &rng, &m), MJ_ERR_FORMAT, "bias=0 or bias=1");
    assert_error(mj_model_from_spec("", &rng, &m), MJ_ERR_FORMAT, "unknown model");
    assert_error(mj_model_from_spec("mlp:4,4", NULL, &m), MJ_ERR_INVALID, "rng");
    cr_assert_null(m);
}

/* The safetensors limits the issue names (the format's own hostile headers
 * are in test_safetensors.c). */
Test(reliability, safetensors_header_cap_and_size_overflow) {
    unsigned char b[16] = {0};
    uint64_t hl = UINT64_C(100) * 1000 * 1000 + 1; /* one byte over 100 MB */
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(hl >> (8 * i));
    mj_tensor_dict *d = NULL;
    assert_error(mj_safetensors_parse(b, sizeof b, &d), MJ_ERR_LIMIT, "100 MB");
    for (int i = 0; i < 8; i++) b[i] = 0xff; /* 2^64 - 1 */
    assert_error(mj_safetensors_parse(b, sizeof b, &d), MJ_ERR_LIMIT, "100 MB");
    /* the same through a file */
    char *p = tmp_path("cap.safetensors");
    mjt_write_file(p, b, sizeof b);
    assert_error(mj_safetensors_load(p, &d), MJ_ERR_LIMIT, "100 MB");
    free(p);
    /* a shape whose byte size wraps uint64: 2^62 elements * 4 bytes */
    const char *h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,0]}}";
    size_t hn = strlen(h), n = 8 + hn;
    unsigned char *f = calloc(1, n);
    cr_assert_not_null(f);
    for (int i = 0; i < 8; i++) f[i] = (unsigned char)((uint64_t)hn >> (8 * i));
    memcpy(f + 8, h, hn);
    assert_error(mj_safetensors_parse(f, n, &d), MJ_ERR_LIMIT, "2^40");
    free(f);
    cr_assert_null(d);
}

/* ---- nothing lost: crash-safe saves ----------------------------------------- */

/* In a forked child with a 64 KiB file size limit (SIGXFSZ ignored, so
 * write() fails with EFBIG), runs save(path) and exits 0 if it failed with
 * MJ_ERR_IO and a message naming the cause. */
typedef mj_status (*save_fn)(const char *path, void *what);

static int save_in_limited_child(save_fn save, const char *path, void *what) {
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit small = {.rlim_cur = 65536, .rlim_max = 65536};
        if (setrlimit(RLIMIT_FSIZE, &small) != 0) _exit(3);
        mj_status s = save(path, what);
        if (s != MJ_ERR_IO) _exit(1);
        if (!strstr(mj_last_error(), "File too large")) _exit(2);
        _exit(0);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "the child died (signal %d)", WTERMSIG(status));
    return WEXITSTATUS(status);
}

static mj_status save_dict(const char *path, void *d) { return mj_safetensors_save(path, d); }
static mj_status save_graph(const char *path, void *g) { return mj_graph_save(g, path); }

/* save(path, big) fails midway in a child (RLIMIT_FSIZE): the file at path
 * keeps its bytes and no temporary (tmp_pattern) is left behind. */
static void assert_failed_save_keeps_file(save_fn save, const char *path, void *big,
                                          const char *tmp_pattern) {
    size_t n0, n1;
    unsigned char *before = mjt_read_file(path, &n0);
    int rc = save_in_limited_child(save, path, big);
    cr_assert_eq(rc, 0, "child: save under RLIMIT_FSIZE did not fail with MJ_ERR_IO/EFBIG (rc %d)", rc);
    unsigned char *after = mjt_read_file(path, &n1);
    cr_assert_eq(n1, n0);
    cr_assert_eq(memcmp(before, after, n0), 0, "the previous file changed");
    cr_assert_eq(mjt_count_entries(tmpdir, tmp_pattern), 0, "a temporary file was left behind");
    MJT_FREE(before, after);
}

Test(reliability, safetensors_save_failing_midway_in_child_keeps_old_file) {
    char *path = tmp_path("st.safetensors");
    mj_tensor_dict *old = dict1("w", 1000, 1.0f), *big = dict1("w", 200000, 2.0f); /* 800 KB */
    OK(mj_safetensors_save(path, old));
    assert_failed_save_keeps_file(save_dict, path, big, "st.safetensors.tmp*");
    /* still loads, to the old values */
    mj_tensor_dict *back;
    OK(mj_safetensors_load(path, &back));
    cr_assert(mj_tensor_equal(mj_tensor_dict_get(back, "w"), mj_tensor_dict_get(old, "w")));
    mj_tensor_dict_free(back);
    free(path);
    mj_tensor_dict_free(old);
    mj_tensor_dict_free(big);
}

static mj_graph *graph_with_weight(int64_t n, float v) {
    char text[256];
    snprintf(text, sizeof text,
             "maskjit-ir 1\n%%0 = input \"x\" : f32[B,%lld]\n%%1 = param \"w\" : f32[%lld]\n"
             "%%2 = mul %%0, %%1 : f32[B,%lld]\nreturn %%2\n",
             (long long)n, (long long)n, (long long)n);
    mj_graph *g;
    OK(mj_graph_parse(text, &g));
    mj_tensor_dict *d = dict1("w", n, v);
    OK(mj_graph_bind(g, d));
    mj_tensor_dict_free(d);
    return g;
}

Test(reliability, graph_save_failing_midway_in_child_keeps_old_file) {
    char *path = tmp_path("g.mjtrace");
    mj_graph *old = graph_with_weight(100, 1.0f), *big = graph_with_weight(200000, 3.0f);
    OK(mj_graph_save(old, path));
    assert_failed_save_keeps_file(save_graph, path, big, "g.mjtrace.tmp*");
    mj_graph *back;
    OK(mj_graph_load(path, &back));
    cr_assert_eq(mj_graph_input_dim(back, 0, 1), 100);
    mj_graph_free(back);
    free(path);
    mj_graph_free(old);
    mj_graph_free(big);
}

/* A child saving two 1 MB versions of a file in a loop is killed at random
 * moments: whatever the moment, the file is one complete version, never a
 * torn one. (SIGKILL leaves the child's temporary behind: nothing can run
 * after it. The test counts and removes them; the name pattern makes them
 * easy to clean.) */
Test(reliability, save_killed_by_sigkill_never_tears_the_file) {
    char *path = tmp_path("kill.safetensors");
    mj_tensor_dict *a = dict1("w", 262144, 1.0f), *b = dict1("w", 262144, 2.0f);
    char *pa = tmp_path("a.safetensors"), *pb = tmp_path("b.safetensors");
    OK(mj_safetensors_save(pa, a));
    OK(mj_safetensors_save(pb, b));
    size_t na, nb;
    unsigned char *ba = mjt_read_file(pa, &na), *bb = mjt_read_file(pb, &nb);
    cr_assert_eq(na, nb);
    OK(mj_safetensors_save(path, a));
    struct timespec seed_ts;
    clock_gettime(CLOCK_MONOTONIC, &seed_ts);
    srand((unsigned)seed_ts.tv_nsec);
    int saw_b = 0;
    for (int round = 0; round < 8; round++) {
        fflush(NULL);
        pid_t pid = fork();
        cr_assert_neq(pid, -1);
        if (pid == 0) {
            for (unsigned i = 0;; i++)
                if (mj_safetensors_save(path, (i & 1) ? a : b) != MJ_OK) _exit(1);
        }
        struct timespec d = {0, (long)(1 + rand() % 40) * 1000000L};
        nanosleep(&d, NULL);
        kill(pid, SIGKILL);
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                  "the saving child stopped by itself (status %d)", status);
        size_t n;
        unsigned char *now = mjt_read_file(path, &n);
        cr_assert_not_null(now);
        cr_assert_eq(n, na, "round %d: the file has %zu bytes, a version has %zu", round, n, na);
        bool is_a = memcmp(now, ba, n) == 0, is_b = memcmp(now, bb, n) == 0;
        cr_assert(is_a || is_b, "round %d: the file is neither version (torn)", round);
        saw_b += is_b;
        free(now);
        /* the killed save's temporary, if it had one: at most one */
        cr_assert_leq(mjt_count_entries(tmpdir, "kill.safetensors.tmp*"), 1);
        DIR *dir = opendir(tmpdir);
        struct dirent *e;
        while ((e = readdir(dir)))
            if (strncmp(e->d_name, "kill.safetensors.tmp", 20) == 0) {
                char p[512];
                snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
                unlink(p);
            }
        closedir(dir);
    }
    (void)saw_b; /* timing decides how many rounds saw b; either version is correct */
    MJT_FREE(ba, bb, pa, pb, path);
    mj_tensor_dict_free(a);
    mj_tensor_dict_free(b);
}

/* ---- nothing lost: all-or-nothing module calls ------------------------------ */

/* Every tensor of a module tree (parameters, buffers, parametrization
 * buffers, originals) with its identity and a copy of its bits, plus the
 * parametrization count of every weight and bias. */
typedef struct snapshot {
    mj_tensor_dict *live; /* the module's own tensors (identity) */
    mj_tensor_dict *copy; /* their values at snapshot time       */
    int counts[64];
    int n_counts;
} snapshot;

static int count_visit(const char *path, mj_module *m, void *ctx) {
    (void)path;
    snapshot *s = ctx;
    if (s->n_counts + 2 <= 64) {
        s->counts[s->n_counts++] = mj_parametrization_count(m, "weight");
        s->counts[s->n_counts++] = mj_parametrization_count(m, "bias");
    }
    return 0;
}

static void add_all(snapshot *s, mj_tensor_dict *from, const char *tag) {
    for (int i = 0; i < mj_tensor_dict_size(from); i++) {
        char key[512];
        snprintf(key, sizeof key, "%s:%s", tag, mj_tensor_dict_key(from, i));
        mj_tensor *t = mj_tensor_dict_value(from, i), *c;
        OK(mj_tensor_clone(&c, t));
        OK(mj_tensor_dict_set(s->live, key, t));
        OK(mj_tensor_dict_set(s->copy, key, c));
        mj_tensor_release(c);
    }
}

static snapshot take(mj_module *m) {
    snapshot s = {0};
    OK(mj_tensor_dict_new(&s.live));
    OK(mj_tensor_dict_new(&s.copy));
    mj_tensor_dict *p, *b, *sd;
    OK(mj_module_named_parameters(m, &p));
    OK(mj_module_named_buffers(m, &b));
    OK(mj_module_state_dict(m, true, &sd));
    add_all(&s, p, "param");
    add_all(&s, b, "buffer");
    add_all(&s, sd, "state");
    mj_tensor_dict_free(p);
    mj_tensor_dict_free(b);
    mj_tensor_dict_free(sd);
    mj_module_walk(m, count_visit, &s);
    return s;
}

/* The module is exactly as in s: same keys in the same order, the same
 * tensor objects, the same bits, the same parametrizations. */
static void assert_unchanged(mj_module *m, snapshot *s, const char *what) {
    snapshot now = take(m);
    int n = mj_tensor_dict_size(s->live);
    cr_assert_eq(mj_tensor_dict_size(now.live), n, "%s: %d tensors before, %d after", what, n,
                 mj_tensor_dict_size(now.live));
    for (int i = 0; i < n; i++) {
        const char *k = mj_tensor_dict_key(s->live, i);
        cr_assert_str_eq(mj_tensor_dict_key(now.live, i), k, "%s: tensor %d renamed", what, i);
        cr_assert_eq(mj_tensor_dict_value(now.live, i), mj_tensor_dict_value(s->live, i),
                     "%s: %s is another tensor object", what, k);
        cr_assert(mj_tensor_equal(mj_tensor_dict_value(now.live, i), mj_tensor_dict_value(s->copy, i)),
                  "%s: %s changed", what, k);
    }
    cr_assert_eq(now.n_counts, s->n_counts);
    for (int i = 0; i < s->n_counts; i++)
        cr_assert_eq(now.counts[i], s->counts[i], "%s: parametrization count %d changed", what, i);
    mj_tensor_dict_free(now.live);
    mj_tensor_dict_free(now.copy);
}

static void snapshot_free(snapshot *s) {
    mj_tensor_dict_free(s->live);
    mj_tensor_dict_free(s->copy);
}

/* mlp:4,3,2 with random FakeSparsity masks on both weights. */
static mj_module *masked_mlp(void) {
    mj_rng rng = mjt_rng(21);
    mj_module *m;
    OK(mj_model_from_spec("mlp:4,3,2:act=tanh", &rng, &m));
    OK(mj_model_apply_masks(m, NULL, 0.5, &rng));
    return m;
}

/* A parametrization with switches: forward y = x + x, right_inverse
 * x = y * 0.5, each of which can be told to fail or to change the shape. */
typedef struct knob {
    bool fail_forward, fail_inverse, reshape_forward, reshape_inverse;
} knob;

/* [d...] -> [1, d...]: another shape for any rank < 4 */
static mj_status unsqueeze(const mj_tensor *x, mj_tensor **y) {
    int64_t shape[MJ_MAX_RANK] = {1};
    int r = mj_tensor_rank(x);
    for (int i = 0; i < r && i + 1 < MJ_MAX_RANK; i++) shape[i + 1] = mj_tensor_dim(x, i);
    return mj_reshape(y, x, r + 1, shape);
}

/* A user parametrization fails through a public call that sets a message
 * naming the given word (mj_fail is internal to the library). */
static mj_status refuse(const char *word) {
    mj_act act;
    return mj_act_parse(word, &act);
}

static mj_status knob_forward(mj_parametrization *self, const mj_tensor *x, mj_tensor **y) {
    knob *k = mj_parametrization_user(self);
    if (k->fail_forward) return refuse("knob-forward-refuses");
    if (k->reshape_forward) return unsqueeze(x, y);
    return mj_add(y, x, x);
}

static mj_status knob_inverse(mj_parametrization *self, const mj_tensor *y, mj_tensor **x) {
    knob *k = mj_parametrization_user(self);
    if (k->fail_inverse) return refuse("knob-inverse-refuses");
    if (k->reshape_inverse) return unsqueeze(y, x);
    mj_tensor *half;
    mj_status s = mj_tensor_full(&half, mj_tensor_rank(y), mj_tensor_shape(y), 0.5f);
    if (s != MJ_OK) return s;
    s = mj_mul(x, y, half);
    mj_tensor_release(half);
    return s;
}

static const mj_parametrization_ops knob_ops = {
    .type_name = "Knob", .forward = knob_forward, .right_inverse = knob_inverse, .free_user = NULL};

static mj_parametrization *new_knob(knob *k) {
    mj_parametrization *p;
    OK(mj_parametrization_new(&p, &knob_ops, k));
    return p;
}

Test(reliability, load_state_dict_failures_change_nothing) {
    mj_module *m = masked_mlp();
    mj_tensor_dict *sd;
    OK(mj_module_state_dict(m, true, &sd));
    /* a full, valid dict with other values */
    mj_tensor_dict *good;
    OK(mj_tensor_dict_new(&good));
    for (int i = 0; i < mj_tensor_dict_size(sd); i++) {
        mj_tensor *t = mj_tensor_dict_value(sd, i), *c;
        OK(mj_tensor_full(&c, mj_tensor_rank(t), mj_tensor_shape(t), 7.0f + (float)i));
        OK(mj_tensor_dict_set(good, mj_tensor_dict_key(sd, i), c));
        mj_tensor_release(c);
    }
    int n = mj_tensor_dict_size(good);
    cr_assert_geq(n, 6);
    const char *last = mj_tensor_dict_key(good, n - 1);
    snapshot s = take(m);

    /* 1. the last key has the wrong shape: nothing before it may be copied */
    mj_tensor *wrong;
    int64_t ws[2] = {5, 5};
    OK(mj_tensor_zeros(&wrong, 2, ws));
    mj_tensor *keep = mj_tensor_retain(mj_tensor_dict_get(good, last));
    OK(mj_tensor_dict_set(good, last, wrong));
    mj_load_report r;
    assert_error(mj_module_load_state_dict(m, good, true, &r), MJ_ERR_SHAPE, last);
    cr_assert_not_null(strstr(mj_last_error(), "[5, 5]"), "%s", mj_last_error());
    mj_load_report_free(&r);
    assert_unchanged(m, &s, "shape mismatch (strict)");
    assert_error(mj_module_load_state_dict(m, good, false, NULL), MJ_ERR_SHAPE, last);
    assert_unchanged(m, &s, "shape mismatch (non-strict)");
    OK(mj_tensor_dict_set(good, last, keep));
    MJT_RELEASE(keep, wrong);

    /* 2. strict and a key missing */
    mj_tensor *b0 = mj_tensor_retain(mj_tensor_dict_get(good, "2.bias"));
    OK(mj_tensor_dict_remove(good, "2.bias"));
    assert_error(mj_module_load_state_dict(m, good, true, NULL), MJ_ERR_KEY, "'2.bias'");
    assert_unchanged(m, &s, "missing key");
    OK(mj_tensor_dict_set(good, "2.bias", b0));
    mj_tensor_release(b0);

    /* 3. strict and an unexpected key */
    mj_tensor *extra;
    OK(mj_tensor_zeros(&extra, 2, ws));
    OK(mj_tensor_dict_set(good, "5.weight", extra));
    assert_error(mj_module_load_state_dict(m, good, true, NULL), MJ_ERR_KEY, "'5.weight'");
    assert_unchanged(m, &s, "unexpected key");
    mj_tensor_release(extra);

    /* and the same dict, non-strict, loads every value (the test can fail) */
    OK(mj_module_load_state_dict(m, good, false, NULL));
    mj_tensor_dict *after;
    OK(mj_module_state_dict(m, true, &after));
    for (int i = 0; i < mj_tensor_dict_size(after); i++)
        cr_assert(mj_tensor_equal(mj_tensor_dict_value(after, i),
                                  mj_tensor_dict_get(good, mj_tensor_dict_key(after, i))));
    mj_tensor_dict_free(after);
    snapshot_free(&s);
    mj_tensor_dict_free(good);
    mj_tensor_dict_free(sd);
    mj_module_free(m);
}

Test(reliability, register_parametrization_failures_change_nothing) {
    mj_module *m = masked_mlp();
    mj_module *l0 = mj_module_find(m, "0"), *l2 = mj_module_find(m, "2");
    snapshot s = take(m);
    static knob k;
    struct {
        knob setting;
        mj_module *mod;
        const char *name;
        mj_status want;
        const char *needle;
    } cases[] = {
        {{.fail_forward = true}, l0, "weight", MJ_ERR_INVALID, "knob-forward-refuses"},    /* appending */
        {{.reshape_forward = true}, l0, "weight", MJ_ERR_SHAPE, "changes the shape"}, /* appending */
        {{.reshape_inverse = true}, l0, "weight", MJ_ERR_SHAPE, "right_inverse changes"},
        {{.fail_inverse = true}, l2, "bias", MJ_ERR_INVALID, "knob-inverse-refuses"}, /* first */
        {{.reshape_inverse = true}, l2, "bias", MJ_ERR_SHAPE, "right_inverse changes"},
        {{.fail_forward = true}, l2, "bias", MJ_ERR_INVALID, "knob-forward-refuses"},
        {{0}, l2, "nope", MJ_ERR_KEY, "no parameter or buffer named 'nope'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        k = cases[i].setting;
        mj_parametrization *p = new_knob(&k);
        assert_error(mj_register_parametrization(cases[i].mod, cases[i].name, p), cases[i].want,
                     cases[i].needle);
        char what[64];
        snprintf(what, sizeof what, "register case %zu", i);
        assert_unchanged(m, &s, what);
        mj_parametrization_free(p); /* not taken on failure */
    }
    /* a parametrization registered once cannot be registered again */
    k = (knob){0};
    mj_parametrization *p = new_knob(&k);
    OK(mj_register_parametrization(l2, "bias", p));
    snapshot s2 = take(m);
    assert_error(mj_register_parametrization(l0, "bias", p), MJ_ERR_STATE, "already registered");
    assert_unchanged(m, &s2, "double registration");
    /* the successful one did what it says: bias reads 2 * original */
    mj_tensor *v, *orig = mj_module_original(l2, "bias");
    OK(mj_module_get(l2, "bias", &v));
    for (int64_t i = 0; i < mj_tensor_numel(v); i++)
        cr_assert_eq(mj_tensor_data(v)[i], mj_tensor_data(orig)[i] + mj_tensor_data(orig)[i]);
    mj_tensor_release(v);
    snapshot_free(&s);
    snapshot_free(&s2);
    mj_module_free(m);
}

Test(reliability, remove_and_set_failures_change_nothing) {
    mj_module *m = masked_mlp();
    mj_module *l0 = mj_module_find(m, "0"), *l2 = mj_module_find(m, "2");
    static knob k1, k2;
    k1 = k2 = (knob){0};
    /* 2.weight: FakeSparsity, then two knobs */
    OK(mj_register_parametrization(l2, "weight", new_knob(&k1)));
    OK(mj_register_parametrization(l2, "weight", new_knob(&k2)));
    /* 0.bias: one knob only (has right_inverse) */
    static knob kb;
    kb = (knob){0};
    OK(mj_register_parametrization(l0, "bias", new_knob(&kb)));
    snapshot s = take(m);

    /* remove with leave_parametrized: the chain fails midway */
    k2.fail_forward = true;
    assert_error(mj_remove_parametrizations(l2, "weight", true), MJ_ERR_INVALID, "knob-forward-refuses");
    assert_unchanged(m, &s, "remove, forward fails");
    k2.fail_forward = false;
    assert_error(mj_remove_parametrizations(l2, "bias", true), MJ_ERR_KEY, "no parametrization on 'bias'");
    assert_unchanged(m, &s, "remove, not parametrized");

    /* set through a chain with a link lacking right_inverse (FakeSparsity) */
    mj_tensor *v;
    OK(mj_module_get(l2, "weight", &v));
    assert_error(mj_module_set(l2, "weight", v), MJ_ERR_UNSUPPORTED, "FakeSparsity");
    assert_unchanged(m, &s, "set, no right_inverse");
    mj_tensor_release(v);

    /* 0.bias: the inverse fails / the value has the wrong shape */
    mj_tensor *b;
    int64_t three = 3, four = 4;
    OK(mj_tensor_full(&b, 1, &three, 4.0f));
    kb.fail_inverse = true;
    assert_error(mj_module_set(l0, "bias", b), MJ_ERR_INVALID, "knob-inverse-refuses");
    assert_unchanged(m, &s, "set, inverse fails");
    kb.fail_inverse = false;
    mj_tensor *b4;
    OK(mj_tensor_full(&b4, 1, &four, 4.0f));
    assert_error(mj_module_set(l0, "bias", b4), MJ_ERR_SHAPE, "[4]");
    assert_unchanged(m, &s, "set, wrong shape through the chain");
    /* plain parameter, wrong shape; unknown name */
    assert_error(mj_module_set(mj_module_find(m, "2"), "bias", b4), MJ_ERR_SHAPE, "[4]");
    assert_unchanged(m, &s, "set plain, wrong shape");
    assert_error(mj_module_set(l0, "nope", b), MJ_ERR_KEY, "nope");
    assert_unchanged(m, &s, "set, unknown name");

    /* and a set that may succeed does: original = value * 0.5 */
    OK(mj_module_set(l0, "bias", b));
    const float *o = mj_tensor_data(mj_module_original(l0, "bias"));
    for (int i = 0; i < 3; i++) cr_assert_eq(o[i], 2.0f);
    MJT_RELEASE(b, b4);
    snapshot_free(&s);
    mj_module_free(m);
}

Test(reliability, apply_masks_failure_registers_nothing) {
    mj_rng rng = mjt_rng(3);
    mj_module *m;
    OK(mj_model_from_spec("mlp:4,3,2", &rng, &m));
    snapshot s = take(m);
    /* the first mask is fine, the second has the wrong shape */
    mj_tensor_dict *masks;
    OK(mj_tensor_dict_new(&masks));
    mj_tensor *m0, *m2;
    int64_t s0[2] = {3, 4}, s2[2] = {3, 2};
    OK(mj_tensor_ones(&m0, 2, s0));
    OK(mj_tensor_ones(&m2, 2, s2));
    OK(mj_tensor_dict_set(masks, "0.parametrizations.weight.0.mask", m0));
    OK(mj_tensor_dict_set(masks, "2.parametrizations.weight.0.mask", m2));
    assert_error(mj_model_apply_masks(m, masks, 1.0, &rng), MJ_ERR_SHAPE, "[3, 2]");
    assert_unchanged(m, &s, "apply_masks");
    cr_assert(!mj_is_parametrized(mj_module_find(m, "0"), NULL));
    MJT_RELEASE(m0, m2);
    mj_tensor_dict_free(masks);
    snapshot_free(&s);
    mj_module_free(m);
}

/* ---- threads (the harness is tests/thread_util.h, shared with tools/tsan_stress.c) */

/* T callers of one shared model; each result must equal eager bit for bit. */
static void assert_callers_agree(mjt_call_arg *args, int n) {
    cr_assert(mjt_run_threads(n, mjt_call_main, args, sizeof *args), "pthread_create failed");
    for (int i = 0; i < n; i++) {
        cr_assert_eq(args[i].bad, 0, "thread %d: %d bad results (%s)", i, args[i].bad, args[i].err);
        MJT_RELEASE(args[i].x, args[i].want);
    }
}

/* The model of spec masked at density 0.5, and in *g its trace on ones(3, in). */
static mj_module *half_masked(const char *spec, int64_t in, mj_rng *rng, mj_graph **g) {
    mj_module *m;
    OK(mj_model_from_spec(spec, rng, &m));
    OK(mj_model_apply_masks(m, NULL, 0.5, rng));
    *g = mjt_trace_ones(m, in);
    cr_assert_not_null(*g, "%s", mj_last_error());
    return m;
}

/* One compiled model (live mode), 8 threads calling it with their own
 * inputs; each result must equal eager bit for bit (exact mode). */
Test(reliability, eight_threads_call_one_compiled_model) {
    mj_rng rng = mjt_rng(31);
    mj_graph *g;
    mj_module *m = half_masked("mlp:32,48,8:act=gelu", 32, &rng, &g);
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    mj_compiled *c = mjt_compile_with(jit, g, NULL);
    enum { T = 8 };
    mjt_call_arg args[T];
    for (int i = 0; i < T; i++) {
        int64_t xs[2] = {1 + i, 32};
        args[i] = (mjt_call_arg){.c = c, .kind = MJT_CALL_COMPILED, .iters = 200};
        OK(mj_tensor_randn(&args[i].x, 2, xs, &rng));
        OK(mj_module_forward(m, args[i].x, &args[i].want)); /* eager reference */
    }
    assert_callers_agree(args, T);
    mj_compiled_free(c);
    mj_jit_free(jit);
    mjt_free_traced(g, m);
}

/* Each thread builds, masks, traces and compiles its own model on the shared
 * JIT, then checks compiled == eager and traced == eager on its own input. */
Test(reliability, eight_threads_trace_and_compile_their_own_models) {
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    enum { T = 8 };
    mjt_own_arg args[T];
    for (int i = 0; i < T; i++) args[i] = (mjt_own_arg){.jit = jit, .index = i};
    cr_assert(mjt_run_threads(T, mjt_own_main, args, sizeof *args), "pthread_create failed");
    for (int i = 0; i < T; i++) cr_assert(args[i].ok, "thread %d: %s", i, args[i].err);
    mj_jit_free(jit);
}

/* Read-only sharing (docs/threads.md): eager forward of one masked module
 * (no parametrize cache active) and the interpreter on one graph, from 8
 * threads at once, against single-threaded results. */
Test(reliability, eight_threads_read_one_module_and_graph) {
    mj_rng rng = mjt_rng(41);
    mj_graph *g;
    mj_module *m = half_masked("mlp:12,20,6:act=sigmoid", 12, &rng, &g);
    enum { T = 8 };
    mjt_call_arg args[T];
    for (int i = 0; i < T; i++) {
        int64_t xs[2] = {2 + i, 12};
        args[i] = (mjt_call_arg){.m = m, .g = g, .kind = MJT_CALL_READ, .iters = 100};
        OK(mj_tensor_randn(&args[i].x, 2, xs, &rng));
        OK(mj_module_forward(m, args[i].x, &args[i].want));
    }
    assert_callers_agree(args, T);
    mjt_free_traced(g, m);
}

/* Each thread fails with its own values and must read back its own message. */
Test(reliability, error_messages_are_per_thread) {
    enum { T = 8 };
    mjt_err_arg args[T];
    for (int i = 0; i < T; i++) args[i] = (mjt_err_arg){.index = i};
    cr_assert(mjt_run_threads(T, mjt_err_main, args, sizeof *args), "pthread_create failed");
    for (int i = 0; i < T; i++) cr_assert_eq(args[i].bad, 0, "thread %d read another's message", i);
}

Test(reliability, compiled_batch_overflow_is_a_limit_error) {
    mj_graph *g = graph_with_weight(16, 1.0f);
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    mj_compiled *c = mjt_compile_with(jit, g, NULL);
    float x[4] = {0}, y[4];
    /* batch * 16 overflows int64 / exceeds 2^40: refused before any access */
    assert_error(mj_compiled_run_raw(c, x, INT64_MAX / 2, y, 4), MJ_ERR_LIMIT, "too large");
    assert_error(mj_compiled_run_raw(c, x, INT64_C(1) << 37, y, 4), MJ_ERR_LIMIT, "too large");
    assert_error(mj_compiled_run_raw(c, x, 0, y, 4), MJ_ERR_SHAPE, "batch is 0");
    assert_error(mj_compiled_run_raw(c, x, 1, y, 4), MJ_ERR_SHAPE, "room for 4 floats");
    mj_compiled_free(c);
    mj_jit_free(jit);
    mj_graph_free(g);
}

/* ---- CLI argument abuse ------------------------------------------------------ */

typedef struct cli_result {
    int exited;  /* 1 if it exited (not killed by a signal) */
    int code;    /* exit status, or the signal */
    char err[8192];
} cli_result;

/* Runs build/maskjit with argv (NULL-terminated after the program name),
 * stdout to /dev/null, stderr captured. */
static cli_result cli(const char *const *args) {
    cli_result r = {0};
    char *argv[32];
    int n = 0;
    argv[n++] = (char *)MASKJIT_BIN;
    for (; args[n - 1] && n < 31; n++) argv[n] = (char *)args[n - 1];
    argv[n] = NULL;
    int errpipe[2];
    cr_assert_eq(pipe(errpipe), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, errpipe[1], 2);
    posix_spawn_file_actions_addclose(&fa, errpipe[0]);
    posix_spawn_file_actions_addclose(&fa, errpipe[1]);
    pid_t pid;
    int rc = posix_spawn(&pid, MASKJIT_BIN, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(errpipe[1]);
    cr_assert_eq(rc, 0, "cannot run %s: %s", MASKJIT_BIN, strerror(rc));
    size_t len = 0;
    ssize_t got;
    char sink[4096];
    while ((got = read(errpipe[0], len < sizeof r.err - 1 ? r.err + len : sink,
                       len < sizeof r.err - 1 ? sizeof r.err - 1 - len : sizeof sink)) > 0)
        if (len < sizeof r.err - 1) len += (size_t)got;
    close(errpipe[0]);
    r.err[len] = '\0';
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    r.exited = WIFEXITED(status);
    r.code = r.exited ? WEXITSTATUS(status) : WTERMSIG(status);
    return r;
}

#define CLI_EXPECT(code_, needle_, ...)                                                        \
    do {                                                                                       \
        const char *const a_[] = {__VA_ARGS__, NULL};                                          \
        cli_result r_ = cli(a_);                                                               \
        cr_assert(r_.exited, "maskjit %s ... died of signal %d:\n%s", a_[0], r_.code, r_.err); \
        cr_assert_eq(r_.code, code_, "maskjit %s ...: exit %d, want %d:\n%s", a_[0], r_.code,  \
                     code_, r_.err);                                                           \
        cr_assert_not_null(strstr(r_.err, needle_), "maskjit %s ...: stderr lacks '%s':\n%s",  \
                           a_[0], needle_, r_.err);                                            \
        cr_assert_null(strstr(r_.err, "internal error"), "%s", r_.err);                        \
        cr_assert_null(strstr(r_.err, "Sanitizer"), "%s", r_.err);                             \
        cases++;                                                                               \
    } while (0)

/* Usage errors exit 2 (README: "exit status 2 (usage) or 1 (failure)"). */
Test(reliability, cli_bad_arguments_exit_2_with_a_message) {
    int cases = 0;
    const char *const none[] = {NULL};
    cli_result r = cli(none);
    cr_assert(r.exited && r.code == 2, "no arguments: exit %d", r.code);
    cr_assert_not_null(strstr(r.err, "usage"), "%s", r.err);
    CLI_EXPECT(2, "unknown command 'frobnicate'", "frobnicate");
    CLI_EXPECT(2, "unknown command '--bogus'", "--bogus");
    CLI_EXPECT(2, "unknown option '--bogus'", "run", "mut", "--bogus");
    CLI_EXPECT(2, "unknown option '-x'", "check", "mut", "-x");
    CLI_EXPECT(2, "option --batch needs a value", "run", "mut", "--batch");
    CLI_EXPECT(2, "option --weights needs a value", "run", "mut", "--weights");
    CLI_EXPECT(2, "--batch needs an integer in 1..1048576, got 'abc'", "run", "mut", "--batch", "abc");
    CLI_EXPECT(2, "--batch needs an integer in 1..1048576, got '12x'", "run", "mut", "--batch", "12x");
    CLI_EXPECT(2, "--batch needs an integer in 1..1048576, got '-5'", "run", "mut", "--batch", "-5");
    CLI_EXPECT(2, "--batch needs an integer in 1..1048576, got '99999999999999999999'", "run", "mut",
               "--batch", "99999999999999999999");
    CLI_EXPECT(2, "--batch needs an integer in 1..1048576, got ''", "run", "mut", "--batch=");
    CLI_EXPECT(2, "--batch needs an integer in 1..1048576, got '0'", "run", "mut", "--batch", "0");
    CLI_EXPECT(2, "--mode must be eager, traced or compiled, got 'nonsense'", "run", "mut", "--mode",
               "nonsense");
    CLI_EXPECT(2, "option --frozen takes no value", "run", "mut", "--frozen=1");
    CLI_EXPECT(2, "--exact and --fast exclude each other", "run", "mut", "--mode", "compiled",
               "--exact", "--fast");
    CLI_EXPECT(2, "unexpected argument 'extra'", "run", "mut", "extra");
    CLI_EXPECT(2, "missing MODEL", "run");
    CLI_EXPECT(2, "neither a file nor a model spec", "run", "nonexistent");
    /* a path (specs have no '/' or '.') gets the file's own error */
    CLI_EXPECT(2, "MODEL '/nonexistent/model.safetensors': No such file or directory", "run",
               "/nonexistent/model.safetensors");
    CLI_EXPECT(2, "MODEL 'model.safetensors': No such file or directory", "check", "model.safetensors");
    CLI_EXPECT(2, "is not a regular file (a directory)", "run", "/tmp");
    CLI_EXPECT(2, "between 1 and 65536", "run", "mlp:4,99999999999");
    CLI_EXPECT(2, "unknown activation", "ir", "mlp:4,4:act=swish");
    CLI_EXPECT(2, "--passes: optimize: unknown pass 'bogus'", "ir", "mut", "--passes", "bogus");
    /* aot's own arguments, before the model is even read */
    CLI_EXPECT(2, "maskjit aot: name \"bad name\" is not a C identifier", "aot", "/nonexistent/m.safetensors",
               "-o", "/nonexistent/dir", "--name", "bad name");
    CLI_EXPECT(2, "unknown target CPU \"pentium\"", "aot", "mut", "-o", "/nonexistent/dir", "--target-cpu",
               "pentium");
    CLI_EXPECT(2, "feature \"foo\" cannot be checked at run time", "aot", "mut", "-o", "/nonexistent/dir",
               "--features", "+foo");
    CLI_EXPECT(2, "maskjit aot: -o /dev/null: exists and is not a directory", "aot", "mut", "-o", "/dev/null");
    CLI_EXPECT(2, "--threads needs an integer in 1..256, got '257'", "run", "mut", "--mode", "compiled", "--threads",
               "257");
    CLI_EXPECT(2, "is a saved or exported model, not a state dict: give it as MODEL", "run", "mlp:16,8",
               "--weights", MJ_SOURCE_ROOT "/tests/fixtures/export_fakesparsity.safetensors");
    CLI_EXPECT(2, "maskjit bench: MODEL '/nonexistent/m.safetensors': No such file", "bench",
               "/nonexistent/m.safetensors");
    CLI_EXPECT(2, "tools/bench.sh --torch --workloads W7", "bench", "--workloads", "W7");
    cr_assert_eq(cases, 32);
}

/* Bad data files: a message and exit 1 (the model could not run). */
Test(reliability, cli_bad_files_fail_with_a_message) {
    int cases = 0;
    char *corrupt = tmp_path("corrupt.safetensors"), *partial = tmp_path("partial.safetensors"),
         *shaped = tmp_path("shaped.safetensors"), *empty = tmp_path("empty.safetensors");
    /* a header length that runs past the end, then garbage */
    unsigned char junk[64];
    for (int i = 0; i < 64; i++) junk[i] = (unsigned char)(i * 37 + 11);
    mjt_write_file(corrupt, junk, sizeof junk);
    mjt_write_file(empty, "", 0);
    /* the seed model's weights, minus one tensor / with one of the wrong shape */
    mj_module *m;
    OK(mj_model_under_test_new(&m, true));
    mj_tensor_dict *sd;
    OK(mj_module_state_dict(m, false, &sd));
    cr_assert_not_null(mj_tensor_dict_get(sd, "seq.1.bias"));
    mj_tensor *keep = mj_tensor_retain(mj_tensor_dict_get(sd, "seq.1.bias"));
    OK(mj_tensor_dict_remove(sd, "seq.1.bias"));
    OK(mj_safetensors_save(partial, sd));
    OK(mj_tensor_dict_set(sd, "seq.1.bias", keep));
    mj_tensor *wrong;
    int64_t ws[2] = {16, 15};
    OK(mj_tensor_zeros(&wrong, 2, ws));
    OK(mj_tensor_dict_set(sd, "seq.0.weight", wrong));
    OK(mj_safetensors_save(shaped, sd));
    /* a torch.nn.utils.prune state dict: 'linear.weight_orig' and '_mask' */
    char *pruned = tmp_path("pruned.safetensors");
    mj_tensor_dict *pd;
    OK(mj_module_state_dict(m, false, &pd));
    mj_tensor *w = mj_tensor_retain(mj_tensor_dict_get(pd, "linear.weight"));
    OK(mj_tensor_dict_remove(pd, "linear.weight"));
    OK(mj_tensor_dict_set(pd, "linear.weight_orig", w));
    OK(mj_tensor_dict_set(pd, "linear.weight_mask", w));
    OK(mj_safetensors_save(pruned, pd));
    mj_tensor_release(w);
    mj_tensor_dict_free(pd);

    CLI_EXPECT(1, "cannot open", "run", "mut", "--weights", "/nonexistent/w.safetensors");
    CLI_EXPECT(1, "exceeds the limit", "run", "mut", "--weights", corrupt);
    CLI_EXPECT(1, "too few", "run", "mut", "--weights", empty);
    CLI_EXPECT(1, "no tensor 'seq.1.bias'", "run", "mut", "--weights", partial);
    CLI_EXPECT(1, "[16, 15]", "run", "mut", "--weights", shaped);
    CLI_EXPECT(1, "[16, 15]", "run", "mut", "--weights", shaped, "--mode", "compiled");
    CLI_EXPECT(1, "cannot open", "run", "mut", "--input", "/nonexistent/x.safetensors");
    CLI_EXPECT(1, "exceeds the limit", "run", "mut", "--input", corrupt);
    CLI_EXPECT(1, "has no tensor 'input'", "run", "mut", "--input", partial);
    /* a corrupt file given as MODEL */
    CLI_EXPECT(1, "exceeds the limit", "run", corrupt);
    CLI_EXPECT(1, "holds torch.nn.utils.prune's 'linear.weight_orig' (and its mask), not 'linear.weight'", "run",
               "mut", "--weights", pruned);
    cr_assert_eq(cases, 11);
    unlink(pruned);
    free(pruned);

    MJT_RELEASE(keep, wrong);
    mj_tensor_dict_free(sd);
    mj_module_free(m);
    MJT_FREE(corrupt, partial, shaped, empty);
}
