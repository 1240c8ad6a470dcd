/* jit/aot.c and `maskjit aot`: the object file and header, linked by `cc`
 * into a small C program with no LLVM and no maskjit, give the JIT's exact
 * outputs bit for bit (the JIT is the reference; exact mode equals eager);
 * only libc/libm symbols stay undefined; a CPU without a target feature is
 * refused with an error code; outputs are deterministic; bad arguments
 * fail with a message and write nothing. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "jit/aot.h"
#include "maskjit.h"
#include "test_cnn_models.h"
#include "test_util.h"

static const char *const BIN = MJ_BUILD_ROOT "/maskjit";

/* A fresh directory under the build tree. */
static void temp_dir(char *out, size_t n) {
    snprintf(out, n, MJ_BUILD_ROOT "/test-aot-XXXXXX");
    cr_assert(mkdtemp(out), "mkdtemp %s", out);
}

static void rm_rf(const char *dir) {
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

/* Runs a shell command; returns its exit status, its stdout in out. */
static int run(const char *cmd, char *out, size_t n) {
    FILE *p = popen(cmd, "r");
    cr_assert(p, "popen %s", cmd);
    size_t got = out ? fread(out, 1, n - 1, p) : 0;
    if (out) out[got] = '\0';
    else {
        char sink[1024];
        while (fread(sink, 1, sizeof sink, p) > 0) {}
    }
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A driver written against NAME.h: reads batch rows of raw floats from a
 * file, runs NAME_run, writes the outputs; "errors" prints the return codes
 * of bad calls. Uses only the header's declarations. */
static const char DRIVER[] =
    "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include \"%1$s.h\"\n"
    "static int64_t numel(const int64_t *d, int rank, int64_t b) {\n"
    "    int64_t n = 1;\n    for (int i = 0; i < rank; i++) n *= d[i] < 0 ? b : d[i];\n    return n;\n}\n"
    "#ifdef DRV_THREADS\n"
    "#include <pthread.h>\n"
    "static const float *g_x, *g_y;\nstatic int64_t g_b, g_row;\n"
    "static void *worker(void *arg) {\n"
    "    float *y = malloc((size_t)(g_row * g_b) * 4);\n"
    "    const float *const in[1] = {g_x};\n    float *const out[1] = {y};\n    long bad = 0;\n"
    "    for (int i = 0; i < 300; i++) {\n"
    "        int64_t b = 1 + (i + (long)arg) %% g_b;\n"
    "        if (%1$s_run(b, in, out) || memcmp(y, g_y, (size_t)(g_row * b) * 4)) bad = 1;\n"
    "    }\n    free(y);\n    return (void *)bad;\n}\n"
    "#endif\n"
    "int main(int argc, char **argv) {\n"
    "    if (argc == 2 && !strcmp(argv[1], \"errors\")) {\n"
    "        float *x = calloc(1 << 16, 4), *y = calloc(1 << 16, 4);\n"
    "        const float *in[1] = {x}; float *out[1] = {y};\n"
    "        const float *in_null[1] = {NULL}; float *out_same[1] = {x + 1};\n"
    "        printf(\"%%d %%d %%d %%d %%d %%d\\n\", %1$s_run(0, in, out), %1$s_run(-5, in, out),\n"
    "               %1$s_run(1, NULL, out), %1$s_run(1, in_null, out), %1$s_run(2, in, out_same),\n"
    "               %1$s_run(%1$s_MAX_BATCH + 1, in, out));\n"
    "        printf(\"%%s|%%s|%%s\\n\", %1$s_strerror(%1$s_ERR_BATCH), %1$s_strerror(%1$s_ERR_OVERLAP), %1$s_strerror(99));\n"
    "        free(x); free(y);\n        return 0;\n    }\n"
    "#ifdef LIVE\n"
    "    if (argc == 2 && !strcmp(argv[1], \"names\")) {\n"
    "        for (int k = 0; k < %1$s_NUM_PARAMS; k++) printf(\"%%s\\n\", %1$s_param_names[k]);\n"
    "        return 0;\n    }\n"
    "    if (argc != 5) return 100;\n"
    "    const float *params[%1$s_NUM_PARAMS + 1];\n"
    "    FILE *pf = fopen(argv[4], \"rb\");\n"
    "    if (!pf) return 104;\n"
    "    for (int k = 0; k < %1$s_NUM_PARAMS; k++) {\n"
    "        int64_t n = numel(%1$s_param_dims[k], %1$s_param_rank[k], 1);\n"
    "        float *p = malloc((size_t)n * 4);\n"
    "        if (!p || fread(p, 4, (size_t)n, pf) != (size_t)n) return 105;\n"
    "        params[k] = p;\n"
    "        if (%1$s_bind(%1$s_param_names[k], p) != 0) return 106;\n"
    "    }\n    fclose(pf);\n"
    "    if (%1$s_bind(\"no such parameter\", params[0]) != %1$s_ERR_KEY) return 107;\n"
    "#else\n"
    "    if (argc != 4) return 100;\n"
    "#endif\n"
    "    int64_t b = atoll(argv[1]);\n"
    "    int64_t ni = numel(%1$s_input_dims[0], %1$s_input_rank[0], b);\n"
    "    int64_t no = numel(%1$s_output_dims[0], %1$s_output_rank[0], b);\n"
    "    float *x = malloc((size_t)ni * 4), *y = malloc((size_t)no * 4);\n"
    "    FILE *f = fopen(argv[2], \"rb\");\n"
    "    if (!f || fread(x, 4, (size_t)ni, f) != (size_t)ni) return 101;\n    fclose(f);\n"
    "    const float *const in[%1$s_NUM_INPUTS] = {x};\n    float *const out[%1$s_NUM_OUTPUTS] = {y};\n"
    "    int rc = %1$s_run(b, in, out);\n"
    "    if (rc) { printf(\"%%s\\n\", %1$s_strerror(rc)); return rc; }\n"
    "    {   /* the scratch kept between calls: smaller, equal and larger calls give the same rows */\n"
    "        float *x2 = malloc((size_t)ni * 8), *y2b = malloc((size_t)no * 8);\n"
    "        memcpy(x2, x, (size_t)ni * 4);\n        memcpy(x2 + ni, x, (size_t)ni * 4);\n"
    "        const float *const in2[%1$s_NUM_INPUTS] = {x2};\n        float *const out2b[%1$s_NUM_OUTPUTS] = {y2b};\n"
    "        if (%1$s_run(1, in, out2b) || %1$s_run(b, in, out2b) || memcmp(y, y2b, (size_t)no * 4)) return 110;\n"
    "        if (%1$s_run(2 * b, in2, out2b) || memcmp(y, y2b, (size_t)no * 4) || memcmp(y, y2b + no, (size_t)no * 4))\n"
    "            return 111;\n"
    "        free(x2);\n        free(y2b);\n    }\n"
    "#ifdef DRV_THREADS\n"
    "    {   /* four threads at once, batches 1..b each: every row as the first call gave it */\n"
    "        g_x = x, g_y = y, g_b = b, g_row = no / b;\n        pthread_t th[4];\n        void *bad = NULL;\n"
    "        for (long t = 0; t < 4; t++)\n            if (pthread_create(&th[t], NULL, worker, (void *)t)) return 112;\n"
    "        for (int t = 0; t < 4; t++) {\n            void *r;\n            pthread_join(th[t], &r);\n            if (r) bad = r;\n        }\n"
    "        if (bad) return 113;\n    }\n"
    "#endif\n"
    "#ifdef LIVE\n"
    "    float *y2 = malloc((size_t)no * 4);\n"
    "    float *const out2[1] = {y2};\n"
    "    if (%1$s_run_with(params, b, in, out2) != 0 || memcmp(y, y2, (size_t)no * 4)) return 108;\n"
    "    %1$s_bind(%1$s_param_names[0], NULL);\n"
    "    if (%1$s_run(b, in, out2) != %1$s_ERR_UNBOUND) return 109;\n"
    "    for (int k = 0; k < %1$s_NUM_PARAMS; k++) free((void *)params[k]);\n    free(y2);\n"
    "#endif\n"
    "    f = fopen(argv[3], \"wb\");\n"
    "    if (!f || fwrite(y, 4, (size_t)no, f) != (size_t)no) return 102;\n    fclose(f);\n"
    "    free(x); free(y);\n    return 0;\n}\n";

/* dir/drv from the driver, dir/NAME.h and dir/NAME.o: plain cc, -lm only. */
static void build_driver(const char *dir, const char *name, const char *cflags) {
    char path[1100], cmd[9000];
    snprintf(path, sizeof path, "%s/drv.c", dir);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fprintf(f, DRIVER, name);
    fclose(f);
    snprintf(cmd, sizeof cmd, "cc -std=c17 -Wall -Wextra -Werror %s -o '%s/drv' '%s/drv.c' '%s/%s.o' -lm 2>&1", cflags,
             dir, dir, dir, name);
    char out[8192];
    int rc = run(cmd, out, sizeof out);
    cr_assert_eq(rc, 0, "%s:\n%s", cmd, out);
}

/* Runs dir/drv on x (batch rows) and returns its exit code; y filled on 0. */
static int run_driver(const char *dir, const mj_tensor *x, float *y, size_t y_numel, char *msg, size_t msg_n) {
    char in[1100], outp[1100], cmd[9000];
    snprintf(in, sizeof in, "%s/x.bin", dir);
    snprintf(outp, sizeof outp, "%s/y.bin", dir);
    FILE *f = fopen(in, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(mj_tensor_data(x), 4, (size_t)mj_tensor_numel(x), f), (size_t)mj_tensor_numel(x));
    fclose(f);
    char params[1100];
    snprintf(params, sizeof params, "%s/params.bin", dir);
    if (access(params, R_OK) == 0) /* live */
        snprintf(cmd, sizeof cmd, "'%s/drv' %lld '%s' '%s' '%s'", dir, (long long)mj_tensor_shape(x)[0], in, outp,
                 params);
    else
        snprintf(cmd, sizeof cmd, "'%s/drv' %lld '%s' '%s'", dir, (long long)mj_tensor_shape(x)[0], in, outp);
    int rc = run(cmd, msg, msg_n);
    if (rc == 0) {
        f = fopen(outp, "rb");
        cr_assert(f);
        cr_assert_eq(fread(y, 4, y_numel, f), y_numel, "the driver wrote fewer than %zu floats", y_numel);
        fclose(f);
    }
    return rc;
}

/* nm -u: only C library and libm symbols may stay undefined (not expf,
 * erff or tanhf: exp, gelu and tanh are maskjit's own, inline; not sqrtf:
 * the instruction). */
static void assert_only_libc(const char *path) {
    static const char *const allowed[] = {"aligned_alloc", "free", "malloc", "memcpy", "memset", "memmove",
                                          "logf", "exp2f", "fmaf", "strcmp"};
    char cmd[4400], out[8192];
    snprintf(cmd, sizeof cmd, "nm -u '%s'", path);
    cr_assert_eq(run(cmd, out, sizeof out), 0, "%s", cmd);
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        char sym[256];
        cr_assert_eq(sscanf(line, " U %255s", sym), 1, "nm line '%s'", line);
        bool ok = false;
        for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++) ok = ok || strcmp(sym, allowed[i]) == 0;
        cr_assert(ok, "%s needs %s, which is not a libc/libm symbol", path, sym);
    }
}

/* ldd: the program links no LLVM and no maskjit. */
static void assert_no_llvm(const char *exe) {
    char cmd[4400], out[8192];
    snprintf(cmd, sizeof cmd, "ldd '%s'", exe);
    cr_assert_eq(run(cmd, out, sizeof out), 0, "%s", cmd);
    cr_assert_null(strstr(out, "LLVM"), "%s", out);
    cr_assert_null(strstr(out, "maskjit"), "%s", out);
    cr_assert_null(strstr(out, "pthread"), "%s", out);
}


static mj_tensor *randn(int64_t batch, int64_t in, uint64_t seed) {
    mj_rng rng = mjt_rng(seed);
    return mjt_randn2(batch, in, &rng);
}

/* The graph's input width (dim 1 of [B, in]). */
static int64_t in_width(const mj_graph *g) {
    char buf[8192];
    FILE *f = fmemopen(buf, sizeof buf, "w");
    OK(mj_graph_print(g, f));
    fclose(f);
    const char *p = strstr(buf, "f32[B,");
    cr_assert(p, "no input in %s", buf);
    return atoll(p + 6);
}

static mj_graph *trace_model(const char *spec, double density, mj_module **mod) {
    mj_rng rng = mjt_rng(7);
    OK(mj_model_from_spec(spec, &rng, mod));
    if (density < 1) OK(mj_model_apply_masks(*mod, NULL, density, &rng));
    int64_t in = mj_linear_in_features(*mod);
    if (in <= 0) { /* a container: the first Linear child's */
        in = 16;
        if (strncmp(spec, "mlp:", 4) == 0) in = atoll(spec + 4);
    }
    int64_t shape[2] = {3, in};
    mj_tensor *ex;
    OK(mj_tensor_ones(&ex, 2, shape));
    mj_graph *g = mjt_trace(*mod, ex);
    mj_tensor_release(ex);
    cr_assert_eq(in_width(g), in);
    return g;
}

/* The options of an object named "m" (the defaults otherwise: frozen). */
static mj_aot_options aot_m(void) {
    mj_aot_options o;
    mj_aot_options_init(&o);
    o.name = "m";
    return o;
}

/* g ahead of time with o into a fresh dir (o->name must be "m"), and the
 * driver built against it with cflags. */
static void aot_build(const mj_graph *g, const mj_aot_options *o, const char *cflags, char *dir, size_t n) {
    temp_dir(dir, n);
    OK(mj_aot_compile(g, o, dir));
    build_driver(dir, "m", cflags);
}

/* A model traced and compiled ahead of time into dir, with its driver. */
typedef struct built {
    mj_module *mod;
    mj_graph *g;
    char dir[1024];
} built;

/* spec (masked at density when below 1) traced, compiled with o, the
 * driver built with cflags. */
static void build_model(built *b, const char *spec, double density, const mj_aot_options *o, const char *cflags) {
    b->g = trace_model(spec, density, &b->mod);
    aot_build(b->g, o, cflags, b->dir, sizeof b->dir);
}

/* The test's graph, module and directory freed. */
static void done(mj_graph *g, mj_module *mod, const char *dir) {
    mjt_free_traced(g, mod);
    rm_rf(dir);
}

/* The AOT's reference: g compiled by a JIT of its own, without the cache. */
typedef struct jit_ref {
    mj_jit *jit;
    mj_compiled *c;
} jit_ref;

static jit_ref jit_ref_new(const mj_graph *g, bool frozen, mj_numeric_mode mode) {
    jit_ref r;
    OK(mj_jit_new(&r.jit));
    mj_compile_options co;
    mj_compile_options_init(&co);
    co.frozen = frozen;
    co.numeric = mode;
    co.use_cache = false;
    r.c = mjt_compile_with(r.jit, g, &co);
    return r;
}

static void jit_ref_free(jit_ref r) {
    mj_compiled_free(r.c);
    mj_jit_free(r.jit);
}

/* The driver in dir, run on x, writes y (the JIT's output) bit for bit;
 * what names the case in a failure. */
static void assert_driver_gives(const char *dir, const mj_tensor *x, const mj_tensor *y, const char *what) {
    size_t n = (size_t)mj_tensor_numel(y);
    float *got = calloc(n, sizeof *got);
    char msg[1024];
    int rc = run_driver(dir, x, got, n, msg, sizeof msg);
    cr_assert_eq(rc, 0, "%s: driver exit %d: %s", what, rc, msg);
    for (size_t i = 0; i < n; i++)
        cr_assert(memcmp(&got[i], &mj_tensor_data(y)[i], 4) == 0, "%s: y[%zu] AOT %a, JIT %a", what, i,
                  (double)got[i], (double)mj_tensor_data(y)[i]);
    free(got);
}

/* At batches 1, 3 and 17 (inputs randn [batch, in] seeded seed + i): the
 * driver in dir against the JIT's ref. */
static void compare_batches(const char *dir, jit_ref ref, int64_t in, uint64_t seed, const char *what) {
    const int64_t batches[] = {1, 3, 17};
    for (int bi = 0; bi < 3; bi++) {
        mj_tensor *x = randn(batches[bi], in, seed + (uint64_t)bi), *y;
        OK(mj_compiled_run(ref.c, x, &y));
        char label[512];
        snprintf(label, sizeof label, "%s batch %lld", what, (long long)batches[bi]);
        assert_driver_gives(dir, x, y, label);
        MJT_RELEASE(x, y);
    }
}

/* AOT (target cpu, features) vs the JIT exact frozen at batches 1, 3, 17. */
static void check_model_mode(const char *spec, double density, const char *cpu, const char *features,
                             mj_numeric_mode mode) {
    mj_aot_options o = aot_m();
    o.target_cpu = cpu;
    o.features = features;
    o.description = spec;
    o.numeric = mode;
    built b;
    build_model(&b, spec, density, &o, "");
    char obj[1100], exe[1100];
    snprintf(obj, sizeof obj, "%s/m.o", b.dir);
    snprintf(exe, sizeof exe, "%s/drv", b.dir);
    assert_only_libc(obj);
    assert_no_llvm(exe);
    jit_ref ref = jit_ref_new(b.g, true, mode);
    char what[512];
    snprintf(what, sizeof what, "%s (%s%s)", spec, cpu ? cpu : "host", features ? features : "");
    compare_batches(b.dir, ref, in_width(b.g), 100, what);
    jit_ref_free(ref);
    done(b.g, b.mod, b.dir);
}

static void check_model(const char *spec, double density, const char *cpu, const char *features) {
    check_model_mode(spec, density, cpu, features, MJ_NUMERIC_EXACT);
}

Test(aot, seed_model_matches_jit_bit_for_bit) { check_model("mut", 1, NULL, NULL); }

/* The heap scratch kept between calls, with four threads calling at once
 * at batches 1..17 (the driver's DRV_THREADS part): every output row as a
 * single call gave it. */
Test(aot, kept_scratch_is_right_with_threads_calling_at_once) {
    mj_aot_options o = aot_m();
    o.description = "threads";
    built b;
    build_model(&b, "mlp:96,160,40:act=gelu", 0.1, &o, "-DDRV_THREADS -pthread");
    jit_ref ref = jit_ref_new(b.g, true, MJ_NUMERIC_EXACT);
    compare_batches(b.dir, ref, in_width(b.g), 300, "threads");
    jit_ref_free(ref);
    done(b.g, b.mod, b.dir);
}

Test(aot, masked_mlp_matches_jit_bit_for_bit) { check_model("mlp:16,32,8:act=relu", 0.5, NULL, NULL); }

/* Wide, sparse enough for the mask-specialised kernels, and scratch beyond
 * the wrapper's stack buffer (heap path). */
Test(aot, wide_sparse_mlp_matches_jit_bit_for_bit) { check_model("mlp:96,160,40:act=gelu", 0.1, NULL, NULL); }

/* Shipping targets: other vector widths and kernels, same bits. */
Test(aot, psabi_levels_match_jit_bit_for_bit) {
    check_model("mlp:16,32,8:act=tanh", 0.5, "x86-64", NULL);
    check_model("mlp:16,32,8:act=sigmoid", 0.5, "x86-64-v3", NULL);
}

/* Fast mode on the host target is the JIT's fast code: the same bits too. */
Test(aot, fast_mode_matches_jit_fast_on_the_host) {
    check_model_mode("mlp:16,32,8:act=gelu_tanh", 0.5, NULL, NULL, MJ_NUMERIC_FAST);
}

static bool host_has_flag(const char *flag) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return false;
    char line[8192];
    bool has = false;
    while (!has && fgets(line, sizeof line, f))
        if (strncmp(line, "flags", 5) == 0) {
            char pat[64];
            snprintf(pat, sizeof pat, " %s", flag);
            char *p = strstr(line, pat);
            has = p && (p[strlen(pat)] == ' ' || p[strlen(pat)] == '\n');
        }
    fclose(f);
    return has;
}

/* Code generated for a feature this CPU lacks: NAME_run says so with a code
 * and a message, and writes nothing. */
Test(aot, refuses_a_cpu_without_the_target_features) {
    if (host_has_flag("amx_tile")) cr_skip_test("this host has AMX: no missing feature to test with");
    mj_aot_options o = aot_m();
    o.features = "+amx-tile";
    built b;
    build_model(&b, "mut", 1, &o, "");
    mj_tensor *x = randn(3, 16, 1);
    float y[48];
    char msg[2048];
    int rc = run_driver(b.dir, x, y, 48, msg, sizeof msg);
    cr_assert_eq(rc, MJ_AOT_ERR_CPU, "exit %d: %s", rc, msg);
    cr_assert(strstr(msg, "m: this CPU lacks a feature the code was compiled for"), "%s", msg);
    cr_assert(strstr(msg, "amx-tile"), "%s", msg);
    char hdr[1100], text[16384];
    snprintf(hdr, sizeof hdr, "cat '%s/m.h'", b.dir);
    run(hdr, text, sizeof text);
    cr_assert(strstr(text, "amx-tile"), "the header records the needed features:\n%s", text);
    mj_tensor_release(x);
    done(b.g, b.mod, b.dir);
}

Test(aot, bad_calls_return_codes) {
    mj_aot_options o = aot_m();
    built b;
    build_model(&b, "mut", 1, &o, "");
    char cmd[4400], out[1024];
    snprintf(cmd, sizeof cmd, "'%s/drv' errors", b.dir);
    cr_assert_eq(run(cmd, out, sizeof out), 0);
    char want[64];
    snprintf(want, sizeof want, "%d %d %d %d %d %d\n", MJ_AOT_ERR_BATCH, MJ_AOT_ERR_BATCH, MJ_AOT_ERR_NULL,
             MJ_AOT_ERR_NULL, MJ_AOT_ERR_OVERLAP, MJ_AOT_ERR_BATCH);
    cr_assert(strncmp(out, want, strlen(want)) == 0, "got %s want %s", out, want);
    const char *says[] = {"m: batch must be between 1 and ", "m: an input buffer overlaps an output buffer",
                          "m: unknown error code"};
    for (int i = 0; i < 3; i++) cr_assert(strstr(out, says[i]), "%s", out);
    done(b.g, b.mod, b.dir);
}

/* Same graph and options, twice, into different directories: same bytes. */
Test(aot, output_is_deterministic) {
    mj_module *mod;
    mj_graph *g = trace_model("mlp:96,160,40:act=gelu", 0.1, &mod);
    char d1[1024], d2[1024];
    temp_dir(d1, sizeof d1);
    temp_dir(d2, sizeof d2);
    mj_aot_options o = aot_m();
    o.name = "det";
    o.target_cpu = "x86-64-v3";
    OK(mj_aot_compile(g, &o, d1));
    OK(mj_aot_compile(g, &o, d2));
    const char *ext[] = {"o", "h"};
    for (int i = 0; i < 2; i++) {
        char p1[1100], p2[1100];
        snprintf(p1, sizeof p1, "%s/det.%s", d1, ext[i]);
        snprintf(p2, sizeof p2, "%s/det.%s", d2, ext[i]);
        size_t n1, n2;
        char *a = mjt_read_file(p1, &n1), *b = mjt_read_file(p2, &n2);
        cr_assert(n1 == n2 && memcmp(a, b, n1) == 0, "det.%s differs between two runs", ext[i]);
        cr_assert_null(memmem(a, n1, d1, strlen(d1)), "det.%s holds the output path", ext[i]);
        MJT_FREE(a, b);
    }
    done(g, mod, d1);
    rm_rf(d2);
}

Test(aot, bad_arguments_fail_and_write_nothing) {
    mj_module *mod;
    mj_graph *g = trace_model("mut", 1, &mod);
    char dir[1024];
    temp_dir(dir, sizeof dir);
    /* each case: the options after the change, the status and message */
    static const struct {
        const char *name, *cpu, *features;
        mj_status status;
        const char *says;
    } cases[] = {
        {"1bad", NULL, NULL, MJ_ERR_INVALID, "name \"1bad\" is not a C identifier"},
        {"../evil", NULL, NULL, MJ_ERR_INVALID, "not a C identifier"},
        {"m", "pentium", NULL, MJ_ERR_INVALID, "unknown target CPU \"pentium\""},
        {"m", "x86-64-v3", "+frobnicate", MJ_ERR_UNSUPPORTED, "feature \"frobnicate\" cannot be checked"},
        {"m", "x86-64-v3", "avx2", MJ_ERR_INVALID, "\"avx2\" is not +FEATURE or -FEATURE"},
    };
    mj_aot_options o = aot_m();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        o.name = cases[i].name;
        o.target_cpu = cases[i].cpu;
        o.features = cases[i].features;
        FAILS(mj_aot_compile(g, &o, dir), cases[i].status, cases[i].says);
    }
    o.features = NULL;
    cr_assert_eq(mjt_count_entries(dir, "*"), 0, "a failed compile wrote into %s", dir);
    char file[1100];
    snprintf(file, sizeof file, "%s/plain", dir);
    mjt_write_file(file, "keep", 4);
    FAILS(mj_aot_compile(g, &o, file), MJ_ERR_IO, "is not a directory");
    size_t n;
    char *text = mjt_read_file(file, &n);
    cr_assert(n == 4 && memcmp(text, "keep", 4) == 0);
    free(text);
    done(g, mod, dir);
}

/* The CLI: errors, files written, --shared gives a loadable .so
 * whose NAME_run agrees with the .o's. */
Test(aot, cli_writes_object_header_and_shared_library) {
    char dir[1024], cmd[9000], out[8192];
    temp_dir(dir, sizeof dir);
    snprintf(cmd, sizeof cmd, "'%s' aot mut -o '%s/o' --name mut --target-cpu 486 2>&1", BIN, dir);
    cr_assert_eq(run(cmd, out, sizeof out), 2, "%s", out); /* an argument error: exit 2 */
    cr_assert(strstr(out, "unknown target CPU \"486\""), "%s", out);
    snprintf(cmd, sizeof cmd, "'%s' aot mut -o '%s/o' --frozen --name mut --shared 2>&1", BIN, dir);
    cr_assert_eq(run(cmd, out, sizeof out), 0, "%s", out);
    char path[1100];
    struct stat st;
    const char *files[] = {"mut.o", "mut.h", "mut.so"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/o/%s", dir, files[i]);
        cr_assert_eq(stat(path, &st), 0, "%s missing", path);
    }
    snprintf(path, sizeof path, "%s/o/mut.so", dir);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    cr_assert(h, "dlopen: %s", dlerror());
    typedef int (*run_fn)(int64_t, const float *const *, float *const *);
    run_fn fn;
    *(void **)&fn = dlsym(h, "mut_run");
    cr_assert(fn);
    /* the seed model on ones: the seed test's fixed numbers */
    float x[16], y[16];
    for (int i = 0; i < 16; i++) x[i] = 1;
    const float *in[1] = {x};
    float *o[1] = {y};
    cr_assert_eq(fn(1, in, o), 0);
    mj_module *mod;
    mj_graph *g = trace_model("mut", 1, &mod);
    mj_tensor *xt, *yt;
    OK(mj_tensor_ones(&xt, 2, (int64_t[]){1, 16}));
    OK(mj_module_forward(mod, xt, &yt));
    cr_assert(memcmp(y, mj_tensor_data(yt), sizeof y) == 0, "mut.so differs from eager: %g vs %g", (double)y[0],
              (double)mj_tensor_data(yt)[0]);
    dlclose(h);
    MJT_RELEASE(xt, yt);
    done(g, mod, dir);
}

/* examples/aot (built by meson: maskjit trace, maskjit aot, cc): its
 * printed outputs are `maskjit run --mode compiled`'s on the same input,
 * bit for bit (%.9g gives the floats back exactly). */
Test(aot, example_program_matches_maskjit_run) {
    const char *exe = MJ_BUILD_ROOT "/examples/aot/aot-example";
    const char *trace = MJ_BUILD_ROOT "/examples/aot/seed.trace";
    assert_no_llvm(exe);
    char dir[1024];
    temp_dir(dir, sizeof dir);
    const int64_t batches[] = {1, 3, 17};
    for (int bi = 0; bi < 3; bi++) {
        char cmd[4400], in[1100], outp[1100];
        static char printed[65536];
        snprintf(in, sizeof in, "%s/in.safetensors", dir);
        snprintf(outp, sizeof outp, "%s/out.safetensors", dir);
        snprintf(cmd, sizeof cmd, "'%s' %lld --write-input '%s'", exe, (long long)batches[bi], in);
        cr_assert_eq(run(cmd, printed, sizeof printed), 0, "%s", cmd);
        snprintf(cmd, sizeof cmd, "'%s' run '%s' --mode compiled --input '%s' --out '%s' 2>&1", BIN, trace, in, outp);
        char msg[4096];
        cr_assert_eq(run(cmd, msg, sizeof msg), 0, "%s: %s", cmd, msg);
        mj_tensor *y = mjt_load_tensor(outp, "output");
        cr_assert_eq(mj_tensor_shape(y)[0], batches[bi]);
        char *p = printed;
        for (int64_t i = 0; i < mj_tensor_numel(y); i++) {
            char *end;
            float v = strtof(p, &end);
            cr_assert(end != p, "the example printed fewer than %lld numbers", (long long)mj_tensor_numel(y));
            cr_assert(memcmp(&v, &mj_tensor_data(y)[i], 4) == 0, "batch %lld y[%lld]: example %a, maskjit run %a",
                      (long long)batches[bi], (long long)i, (double)v, (double)mj_tensor_data(y)[i]);
            p = end;
        }
        mj_tensor_release(y);
    }
    rm_rf(dir);
}

/* dir/params.bin: the module's state-dict tensors in the order the driver
 * names (NAME_param_names). */
static void write_params(const char *dir, mj_module *mod) {
    char cmd[4400], names[8192], path[1100];
    snprintf(cmd, sizeof cmd, "'%s/drv' names", dir);
    cr_assert_eq(run(cmd, names, sizeof names), 0);
    mj_tensor_dict *sd;
    OK(mj_module_state_dict(mod, true, &sd));
    snprintf(path, sizeof path, "%s/params.bin", dir);
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    int n = 0;
    for (char *line = strtok(names, "\n"); line; line = strtok(NULL, "\n"), n++) {
        const mj_tensor *t = mj_tensor_dict_get(sd, line);
        cr_assert(t, "the object names a parameter \"%s\" the state dict lacks", line);
        cr_assert_eq(fwrite(mj_tensor_data(t), 4, (size_t)mj_tensor_numel(t), f), (size_t)mj_tensor_numel(t));
    }
    cr_assert_gt(n, 0);
    fclose(f);
    mj_tensor_dict_free(sd);
}

/* The live driver in dir with mod's weights against the JIT live exact
 * for g, at batches 1, 3 and 17. */
static void compare_live(const char *dir, mj_module *mod, const mj_graph *g, const char *what) {
    write_params(dir, mod);
    jit_ref ref = jit_ref_new(g, false, MJ_NUMERIC_EXACT);
    compare_batches(dir, ref, in_width(g), 200, what);
    jit_ref_free(ref);
}

/* Live: weights and masks bound by name at run time (NAME_bind and
 * NAME_run_with agree; an unbound parameter is refused), outputs the JIT
 * live's bit for bit; other weights bound to the same object give the
 * other model's outputs, so nothing was baked in. */
Test(aot, live_masked_mlp_binds_weights_by_name) {
    const char *spec = "mlp:16,48,8:act=gelu";
    mj_aot_options o = aot_m();
    o.frozen = false;
    built b;
    build_model(&b, spec, 0.5, &o, "-DLIVE");
    char obj[1100];
    snprintf(obj, sizeof obj, "%s/m.o", b.dir);
    assert_only_libc(obj);
    compare_live(b.dir, b.mod, b.g, "live, first weights");

    mj_module *m2;
    mj_rng rng = mjt_rng(99);
    OK(mj_model_from_spec(spec, &rng, &m2));
    OK(mj_model_apply_masks(m2, NULL, 0.3, &rng));
    mj_tensor *ex;
    OK(mj_tensor_ones(&ex, 2, (int64_t[]){3, 16}));
    mj_graph *g2 = mjt_trace(m2, ex);
    mj_tensor_release(ex);
    compare_live(b.dir, m2, g2, "live, other weights");
    mjt_free_traced(g2, m2);
    done(b.g, b.mod, b.dir);
}

/* Live on an unmasked model (weights packed at run time) and on a
 * shipping target. */
Test(aot, live_plain_mlp_on_x86_64_v3) {
    mj_aot_options o = aot_m();
    o.frozen = false;
    o.target_cpu = "x86-64-v3";
    built b;
    build_model(&b, "mlp:24,40,40,6:act=tanh", 1, &o, "-DLIVE");
    compare_live(b.dir, b.mod, b.g, "live plain");
    done(b.g, b.mod, b.dir);
}

/* Trace files exported from PyTorch models (tools/export_torch.py;
 * tests/fixtures/export_*.safetensors): a pruned nn.Sequential with Flatten,
 * a residual MLP with batch-relative views, torch.ao FakeSparsity. Frozen
 * AOT against the JIT frozen exact at each stored input, bit for bit. */
static void check_fixture(const char *name) {
    char path[512];
    snprintf(path, sizeof path, MJ_SOURCE_ROOT "/tests/fixtures/%s.safetensors", name);
    mj_graph *g;
    OK(mj_graph_load(path, &g));
    mj_tensor_dict *file;
    OK(mj_safetensors_load(path, &file));
    mj_aot_options o = aot_m();
    o.description = name;
    char dir[1024];
    aot_build(g, &o, "", dir, sizeof dir);
    jit_ref ref = jit_ref_new(g, true, MJ_NUMERIC_EXACT);
    int checked = 0;
    for (int i = 0; i < mj_tensor_dict_size(file); i++) {
        const char *key = mj_tensor_dict_key(file, i);
        if (strcmp(key, "input") != 0 && strncmp(key, "input.batch", 11) != 0) continue;
        const mj_tensor *x = mj_tensor_dict_value(file, i);
        mj_tensor *y;
        OK(mj_compiled_run(ref.c, x, &y));
        char what[512];
        snprintf(what, sizeof what, "%s %s", name, key);
        assert_driver_gives(dir, x, y, what);
        mj_tensor_release(y);
        checked++;
    }
    cr_assert_geq(checked, 1, "%s holds no input", name);
    jit_ref_free(ref);
    mj_tensor_dict_free(file);
    done(g, NULL, dir);
}

Test(aot, pytorch_exported_traces_match_jit_bit_for_bit) {
    check_fixture("export_sequential_prune");
    check_fixture("export_residual");
    check_fixture("export_fakesparsity");
    check_fixture("export_llama_mlp");          /* RMSNorm, SiLU gate */
    check_fixture("export_residual_layernorm"); /* LayerNorm, LeakyReLU, softmax */
}

/* A pruned CNN (conv, batch norm, pools, linear: jit/lower_cnn.c) ahead of
 * time, frozen, against the JIT exact frozen at batches 1, 3 and 17. */
Test(aot, pruned_cnn_matches_jit_bit_for_bit) {
    mj_rng rng = mjt_rng(41);
    mj_module *cnn = mjc_small_cnn(&rng);
    mj_tensor *ex = mjc_randn(4, (int64_t[]){2, 3, 13, 11}, &rng);
    mj_graph *g = mjt_trace(cnn, ex);
    mj_aot_options o = aot_m();
    char dir[1024];
    aot_build(g, &o, "", dir, sizeof dir);
    jit_ref ref = jit_ref_new(g, true, MJ_NUMERIC_EXACT);
    for (int bi = 0; bi < 3; bi++) {
        int64_t batch = (int64_t[]){1, 3, 17}[bi];
        mj_tensor *x = mjc_randn(4, (int64_t[]){batch, 3, 13, 11}, &rng), *y = NULL, *want = NULL;
        OK(mj_compiled_run(ref.c, x, &y));
        OK(mj_module_forward(cnn, x, &want));
        cr_expect(mj_tensor_equal(y, want), "JIT exact frozen vs eager at batch %lld", (long long)batch);
        char what[64];
        snprintf(what, sizeof what, "batch %lld", (long long)batch);
        assert_driver_gives(dir, x, y, what);
        MJT_RELEASE(x, y, want);
    }
    jit_ref_free(ref);
    mj_tensor_release(ex);
    done(g, cnn, dir);
}

/* ---- several inputs and outputs ------------------------------------------- */

/* drv BATCH IN_0 .. IN_n-1 OUT_0 .. OUT_m-1 (float files), or drv errors:
 * the return codes of calls with a NULL input pointer and with two outputs
 * that overlap, one line. */
static const char MULTI_DRIVER[] =
    "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include \"%1$s.h\"\n"
    "static int64_t numel(const int64_t *d, int rank, int64_t b) {\n"
    "    int64_t n = 1;\n    for (int i = 0; i < rank; i++) n *= d[i] < 0 ? b : d[i];\n    return n;\n}\n"
    "int main(int argc, char **argv) {\n"
    "    const float *in[%1$s_NUM_INPUTS];\n    float *out[%1$s_NUM_OUTPUTS];\n"
    "    if (argc == 2 && !strcmp(argv[1], \"errors\")) {\n"
    "        static float buf[1 << 20];\n"
    "        for (int i = 0; i < %1$s_NUM_INPUTS; i++) in[i] = buf;\n"
    "        for (int j = 0; j < %1$s_NUM_OUTPUTS; j++) out[j] = buf + (1 << 19);\n"
    "        if (%1$s_NUM_OUTPUTS == 1) out[0] = buf; /* over input 0 */\n"
    "        in[%1$s_NUM_INPUTS - 1] = NULL;\n        int null_rc = %1$s_run(1, in, out);\n"
    "        in[%1$s_NUM_INPUTS - 1] = buf;\n        int overlap_rc = %1$s_run(1, in, out);\n"
    "        printf(\"%%d %%d\\n\", null_rc, overlap_rc);\n        return 0;\n    }\n"
    "#ifdef LIVE\n"
    "    if (argc == 2 && !strcmp(argv[1], \"names\")) {\n"
    "        for (int k = 0; k < %1$s_NUM_PARAMS; k++) printf(\"%%s\\n\", %1$s_param_names[k]);\n"
    "        return 0;\n    }\n"
    "    FILE *pf = fopen(argv[--argc], \"rb\"); /* the params, in %1$s_param_names order */\n"
    "    if (!pf) return 104;\n"
    "    for (int k = 0; k < %1$s_NUM_PARAMS; k++) {\n"
    "        int64_t n = numel(%1$s_param_dims[k], %1$s_param_rank[k], 1);\n"
    "        float *p = malloc((size_t)n * 4);\n"
    "        if (!p || fread(p, 4, (size_t)n, pf) != (size_t)n || %1$s_bind(%1$s_param_names[k], p)) return 105;\n"
    "    }\n    fclose(pf);\n"
    "#endif\n"
    "    if (argc != 2 + %1$s_NUM_INPUTS + %1$s_NUM_OUTPUTS) return 100;\n"
    "    int64_t b = atoll(argv[1]);\n"
    "    for (int i = 0; i < %1$s_NUM_INPUTS; i++) {\n"
    "        int64_t n = numel(%1$s_input_dims[i], %1$s_input_rank[i], b);\n"
    "        float *x = malloc((size_t)n * 4);\n        FILE *f = fopen(argv[2 + i], \"rb\");\n"
    "        if (!x || !f || fread(x, 4, (size_t)n, f) != (size_t)n) return 101;\n"
    "        fclose(f);\n        in[i] = x;\n    }\n"
    "    for (int j = 0; j < %1$s_NUM_OUTPUTS; j++)\n"
    "        if (!(out[j] = malloc((size_t)numel(%1$s_output_dims[j], %1$s_output_rank[j], b) * 4))) return 102;\n"
    "    int rc = %1$s_run(b, in, out);\n"
    "    if (rc) { printf(\"%%s\\n\", %1$s_strerror(rc)); return rc; }\n"
    "    for (int j = 0; j < %1$s_NUM_OUTPUTS; j++) {\n"
    "        int64_t n = numel(%1$s_output_dims[j], %1$s_output_rank[j], b);\n"
    "        FILE *f = fopen(argv[2 + %1$s_NUM_INPUTS + j], \"wb\");\n"
    "        if (!f || fwrite(out[j], 4, (size_t)n, f) != (size_t)n) return 103;\n"
    "        fclose(f);\n        free(out[j]);\n    }\n"
    "    for (int i = 0; i < %1$s_NUM_INPUTS; i++) free((void *)in[i]);\n"
    "    return 0;\n}\n";

/* A fixture with several inputs (or outputs) ahead of time, frozen: its
 * header's tables, the error codes of bad calls, and at every stored batch
 * each output bit for bit against the JIT exact frozen. */
static void check_fixture_multi(const char *name, int n_in, int n_out, bool live) {
    char path[512];
    snprintf(path, sizeof path, MJ_SOURCE_ROOT "/tests/fixtures/%s.safetensors", name);
    mj_graph *g;
    OK(mj_graph_load(path, &g));
    cr_assert_eq(mj_graph_input_count(g), n_in);
    cr_assert_eq(mj_graph_output_count(g), n_out);
    mj_tensor_dict *file;
    OK(mj_safetensors_load(path, &file));
    mj_aot_options o = aot_m();
    o.description = name;
    o.frozen = !live;
    char dir[1024], cmd[9000], out[8192], file_path[1100];
    temp_dir(dir, sizeof dir);
    OK(mj_aot_compile(g, &o, dir));
    snprintf(file_path, sizeof file_path, "%s/drv.c", dir);
    FILE *f = fopen(file_path, "w");
    cr_assert(f);
    fprintf(f, MULTI_DRIVER, "m");
    fclose(f);
    snprintf(cmd, sizeof cmd, "cc -std=c17 -Wall -Wextra -Werror %s -o '%s/drv' '%s/drv.c' '%s/m.o' -lm 2>&1",
             live ? "-DLIVE" : "", dir, dir, dir);
    cr_assert_eq(run(cmd, out, sizeof out), 0, "%s:\n%s", cmd, out);
    char params[1100] = "";
    if (live) { /* the file's tensors under the header's parameter names, in its order */
        snprintf(cmd, sizeof cmd, "'%s/drv' names", dir);
        cr_assert_eq(run(cmd, out, sizeof out), 0, "%s: %s", cmd, out);
        snprintf(params, sizeof params, "%s/params.bin", dir);
        f = fopen(params, "wb");
        cr_assert(f);
        int bound = 0;
        for (char *save = NULL, *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            const mj_tensor *t = mj_tensor_dict_get(file, line);
            cr_assert_not_null(t, "%s: no tensor '%s' for the live object", name, line);
            fwrite(mj_tensor_data(t), 4, (size_t)mj_tensor_numel(t), f);
            bound++;
        }
        fclose(f);
        cr_assert_geq(bound, 1, "%s: a live object without params", name);
    }
    snprintf(file_path, sizeof file_path, "%s/m.h", dir);
    size_t header_len;
    char *header = mjt_read_file(file_path, &header_len);
    char want[128];
    snprintf(want, sizeof want, "m_NUM_INPUTS = %d, m_NUM_OUTPUTS = %d", n_in, n_out);
    cr_assert(strstr(header, want), "%s not in:\n%s", want, header);
    cr_assert(strstr(header, "input 1 \""), "%s", header);
    free(header);
    snprintf(cmd, sizeof cmd, "'%s/drv' errors", dir); /* live: unbound, checked after these */
    cr_assert_eq(run(cmd, out, sizeof out), 0, "%s: %s", cmd, out);
    char codes[32];
    snprintf(codes, sizeof codes, "%d %d\n", MJ_AOT_ERR_NULL, MJ_AOT_ERR_OVERLAP);
    cr_assert_str_eq(out, codes, "a NULL input; outputs over each other (one output: over an input)");

    jit_ref ref = jit_ref_new(g, !live, MJ_NUMERIC_EXACT);
    const char *suffixes[] = {"", ".batch1", ".batch5", ".batch6", ".batch17"};
    int checked = 0;
    for (size_t si = 0; si < sizeof suffixes / sizeof *suffixes; si++) {
        const mj_tensor *xs[4];
        char key[64];
        snprintf(key, sizeof key, "input.0%s", suffixes[si]);
        if (!mj_tensor_dict_get(file, key)) continue;
        int len = snprintf(cmd, sizeof cmd, "'%s/drv' %lld", dir, (long long)mj_tensor_shape(mj_tensor_dict_get(file, key))[0]);
        for (int i = 0; i < n_in; i++) {
            snprintf(key, sizeof key, "input.%d%s", i, suffixes[si]);
            xs[i] = mj_tensor_dict_get(file, key);
            cr_assert_not_null(xs[i], "%s: no %s", name, key);
            snprintf(file_path, sizeof file_path, "%s/x%d.bin", dir, i);
            f = fopen(file_path, "wb");
            cr_assert(f);
            fwrite(mj_tensor_data(xs[i]), 4, (size_t)mj_tensor_numel(xs[i]), f);
            fclose(f);
            len += snprintf(cmd + len, sizeof cmd - (size_t)len, " '%s'", file_path);
        }
        for (int j = 0; j < n_out; j++)
            len += snprintf(cmd + len, sizeof cmd - (size_t)len, " '%s/y%d.bin'", dir, j);
        if (live) len += snprintf(cmd + len, sizeof cmd - (size_t)len, " '%s'", params);
        cr_assert_eq(run(cmd, out, sizeof out), 0, "%s: %s", cmd, out);
        mj_tensor *ys[4] = {0};
        OK(mj_compiled_run_n(ref.c, n_in, xs, n_out, ys));
        for (int j = 0; j < n_out; j++) {
            size_t n = (size_t)mj_tensor_numel(ys[j]);
            float *got = calloc(n, sizeof *got);
            snprintf(file_path, sizeof file_path, "%s/y%d.bin", dir, j);
            f = fopen(file_path, "rb");
            cr_assert(f && fread(got, 4, n, f) == n, "%s: output %d short", name, j);
            fclose(f);
            for (size_t k = 0; k < n; k++)
                cr_assert(memcmp(&got[k], &mj_tensor_data(ys[j])[k], 4) == 0, "%s%s output %d [%zu]: AOT %a, JIT %a",
                          name, suffixes[si], j, k, (double)got[k], (double)mj_tensor_data(ys[j])[k]);
            free(got);
            mj_tensor_release(ys[j]);
        }
        checked++;
    }
    cr_assert_geq(checked, 2, "%s: stored batches", name);
    jit_ref_free(ref);
    mj_tensor_dict_free(file);
    done(g, NULL, dir);
}

/* Two inputs and two outputs; a BERT layer with its attention mask as a
 * second input; PyTorch's nn.TransformerEncoder with a padding mask input. */
Test(aot, several_inputs_and_outputs_match_jit_bit_for_bit, .timeout = 240) {
    check_fixture_multi("export_two_in_two_out", 2, 2, false);
    check_fixture_multi("export_bert_layer", 2, 1, false);
    check_fixture_multi("export_torch_encoder", 2, 1, false);
}

/* The same live: the weights bound by name at run time, against the JIT's
 * live exact mode. */
Test(aot, several_inputs_and_outputs_live_match_jit_bit_for_bit, .timeout = 240) {
    check_fixture_multi("export_two_in_two_out", 2, 2, true);
    check_fixture_multi("export_bert_layer", 2, 1, true);
}
