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
static void build_driver_opt(const char *dir, const char *name, const char *cflags) {
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

static void build_driver(const char *dir, const char *name) { build_driver_opt(dir, name, ""); }

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

/* nm -u: only C library and libm symbols may stay undefined (not expf or
 * erff: exp and erf are maskjit's own, inline). */
static void assert_only_libc(const char *path) {
    static const char *const allowed[] = {"aligned_alloc", "free", "malloc", "memcpy", "memset", "memmove",
                                          "tanhf", "logf", "sqrtf", "exp2f", "fmaf", "strcmp"};
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
    int64_t shape[2] = {batch, in};
    mj_tensor *x;
    OK(mj_tensor_randn(&x, 2, shape, &rng));
    return x;
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
    mj_graph *g;
    OK(mj_trace_module(*mod, ex, &g));
    mj_tensor_release(ex);
    cr_assert_eq(in_width(g), in);
    return g;
}

/* AOT (target cpu, features) vs the JIT exact frozen at batches 1, 3, 17. */
static void check_model_mode(const char *spec, double density, const char *cpu, const char *features,
                             mj_numeric_mode mode) {
    mj_module *mod;
    mj_graph *g = trace_model(spec, density, &mod);
    int64_t in = in_width(g);
    char dir[1024];
    temp_dir(dir, sizeof dir);
    mj_aot_options o;
    mj_aot_options_init(&o);
    o.name = "m";
    o.target_cpu = cpu;
    o.features = features;
    o.description = spec;
    o.numeric = mode;
    OK(mj_aot_compile(g, &o, dir));
    char obj[1100], exe[1100];
    snprintf(obj, sizeof obj, "%s/m.o", dir);
    snprintf(exe, sizeof exe, "%s/drv", dir);
    assert_only_libc(obj);
    build_driver(dir, "m");
    assert_no_llvm(exe);

    mj_jit *jit;
    OK(mj_jit_new(&jit));
    mj_compile_options co;
    mj_compile_options_init(&co);
    co.frozen = true;
    co.numeric = mode;
    co.use_cache = false;
    mj_compiled *c = mjt_compile_with(jit, g, &co);
    const int64_t batches[] = {1, 3, 17};
    for (int bi = 0; bi < 3; bi++) {
        mj_tensor *x = randn(batches[bi], in, 100 + (uint64_t)bi), *y;
        OK(mj_compiled_run(c, x, &y));
        size_t n = (size_t)mj_tensor_numel(y);
        float *got = calloc(n, sizeof *got);
        char msg[1024];
        int rc = run_driver(dir, x, got, n, msg, sizeof msg);
        cr_assert_eq(rc, 0, "%s batch %lld: driver exit %d: %s", spec, (long long)batches[bi], rc, msg);
        for (size_t i = 0; i < n; i++)
            cr_assert(memcmp(&got[i], &mj_tensor_data(y)[i], 4) == 0,
                      "%s (%s%s) batch %lld: y[%zu] AOT %a, JIT %a", spec, cpu ? cpu : "host",
                      features ? features : "", (long long)batches[bi], i, (double)got[i],
                      (double)mj_tensor_data(y)[i]);
        free(got);
        mj_tensor_release(x);
        mj_tensor_release(y);
    }
    mj_compiled_free(c);
    mj_jit_free(jit);
    mj_graph_free(g);
    mj_module_free(mod);
    rm_rf(dir);
}

static void check_model(const char *spec, double density, const char *cpu, const char *features) {
    check_model_mode(spec, density, cpu, features, MJ_NUMERIC_EXACT);
}

Test(aot, seed_model_matches_jit_bit_for_bit) { check_model("mut", 1, NULL, NULL); }

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
    mj_module *mod;
    mj_graph *g = trace_model("mut", 1, &mod);
    char dir[1024];
    temp_dir(dir, sizeof dir);
    mj_aot_options o;
    mj_aot_options_init(&o);
    o.name = "m";
    o.features = "+amx-tile";
    OK(mj_aot_compile(g, &o, dir));
    build_driver(dir, "m");
    mj_tensor *x = randn(3, 16, 1);
    float y[48];
    char msg[2048];
    int rc = run_driver(dir, x, y, 48, msg, sizeof msg);
    cr_assert_eq(rc, MJ_AOT_ERR_CPU, "exit %d: %s", rc, msg);
    cr_assert(strstr(msg, "m: this CPU lacks a feature the code was compiled for"), "%s", msg);
    cr_assert(strstr(msg, "amx-tile"), "%s", msg);
    char hdr[1100], text[16384];
    snprintf(hdr, sizeof hdr, "cat '%s/m.h'", dir);
    run(hdr, text, sizeof text);
    cr_assert(strstr(text, "amx-tile"), "the header records the needed features:\n%s", text);
    mj_tensor_release(x);
    mj_graph_free(g);
    mj_module_free(mod);
    rm_rf(dir);
}

Test(aot, bad_calls_return_codes) {
    mj_module *mod;
    mj_graph *g = trace_model("mut", 1, &mod);
    char dir[1024];
    temp_dir(dir, sizeof dir);
    mj_aot_options o;
    mj_aot_options_init(&o);
    o.name = "m";
    OK(mj_aot_compile(g, &o, dir));
    build_driver(dir, "m");
    char cmd[4400], out[1024];
    snprintf(cmd, sizeof cmd, "'%s/drv' errors", dir);
    cr_assert_eq(run(cmd, out, sizeof out), 0);
    char want[64];
    snprintf(want, sizeof want, "%d %d %d %d %d %d\n", MJ_AOT_ERR_BATCH, MJ_AOT_ERR_BATCH, MJ_AOT_ERR_NULL,
             MJ_AOT_ERR_NULL, MJ_AOT_ERR_OVERLAP, MJ_AOT_ERR_BATCH);
    cr_assert(strncmp(out, want, strlen(want)) == 0, "got %s want %s", out, want);
    cr_assert(strstr(out, "m: batch must be between 1 and "), "%s", out);
    cr_assert(strstr(out, "m: an input buffer overlaps an output buffer"), "%s", out);
    cr_assert(strstr(out, "m: unknown error code"), "%s", out);
    mj_graph_free(g);
    mj_module_free(mod);
    rm_rf(dir);
}

/* Same graph and options, twice, into different directories: same bytes. */
Test(aot, output_is_deterministic) {
    mj_module *mod;
    mj_graph *g = trace_model("mlp:96,160,40:act=gelu", 0.1, &mod);
    char d1[1024], d2[1024];
    temp_dir(d1, sizeof d1);
    temp_dir(d2, sizeof d2);
    mj_aot_options o;
    mj_aot_options_init(&o);
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
        free(a);
        free(b);
    }
    mj_graph_free(g);
    mj_module_free(mod);
    rm_rf(d1);
    rm_rf(d2);
}

Test(aot, bad_arguments_fail_and_write_nothing) {
    mj_module *mod;
    mj_graph *g = trace_model("mut", 1, &mod);
    char dir[1024];
    temp_dir(dir, sizeof dir);
    mj_aot_options o;
    mj_aot_options_init(&o);
    o.name = "1bad";
    FAILS(mj_aot_compile(g, &o, dir), MJ_ERR_INVALID, "name \"1bad\" is not a C identifier");
    o.name = "../evil";
    FAILS(mj_aot_compile(g, &o, dir), MJ_ERR_INVALID, "not a C identifier");
    o.name = "m";
    o.target_cpu = "pentium";
    FAILS(mj_aot_compile(g, &o, dir), MJ_ERR_INVALID, "unknown target CPU \"pentium\"");
    o.target_cpu = "x86-64-v3";
    o.features = "+frobnicate";
    FAILS(mj_aot_compile(g, &o, dir), MJ_ERR_UNSUPPORTED, "feature \"frobnicate\" cannot be checked");
    o.features = "avx2";
    FAILS(mj_aot_compile(g, &o, dir), MJ_ERR_INVALID, "\"avx2\" is not +FEATURE or -FEATURE");
    o.features = NULL;
    cr_assert_eq(mjt_count_entries(dir, "*"), 0, "a failed compile wrote into %s", dir);
    char file[1100];
    snprintf(file, sizeof file, "%s/plain", dir);
    FILE *f = fopen(file, "w");
    fputs("keep", f);
    fclose(f);
    FAILS(mj_aot_compile(g, &o, file), MJ_ERR_IO, "is not a directory");
    size_t n;
    char *text = mjt_read_file(file, &n);
    cr_assert(n == 4 && memcmp(text, "keep", 4) == 0);
    free(text);
    mj_graph_free(g);
    mj_module_free(mod);
    rm_rf(dir);
}

/* The CLI: errors, files written, --shared gives a loadable .so
 * whose NAME_run agrees with the .o's. */
Test(aot, cli_writes_object_header_and_shared_library) {
    char dir[1024], cmd[9000], out[8192];
    temp_dir(dir, sizeof dir);
    snprintf(cmd, sizeof cmd, "'%s' aot mut -o '%s/o' --name mut --target-cpu 486 2>&1", BIN, dir);
    cr_assert_eq(run(cmd, out, sizeof out), 1, "%s", out);
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
    int64_t shape[2] = {1, 16};
    OK(mj_tensor_ones(&xt, 2, shape));
    OK(mj_module_forward(mod, xt, &yt));
    cr_assert(memcmp(y, mj_tensor_data(yt), sizeof y) == 0, "mut.so differs from eager: %g vs %g", (double)y[0],
              (double)mj_tensor_data(yt)[0]);
    dlclose(h);
    mj_tensor_release(xt);
    mj_tensor_release(yt);
    mj_graph_free(g);
    mj_module_free(mod);
    rm_rf(dir);
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
        mj_tensor_dict *d;
        OK(mj_safetensors_load(outp, &d));
        const mj_tensor *y = mj_tensor_dict_get(d, "output");
        cr_assert(y);
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
        mj_tensor_dict_free(d);
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

/* y of the JIT, live exact, for the graph g at x. */
static mj_tensor *jit_live(const mj_graph *g, const mj_tensor *x) {
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    mj_compile_options co;
    mj_compile_options_init(&co);
    co.use_cache = false;
    mj_compiled *c = mjt_compile_with(jit, g, &co);
    mj_tensor *y;
    OK(mj_compiled_run(c, x, &y));
    mj_compiled_free(c);
    mj_jit_free(jit);
    return y;
}

static void compare_live(const char *dir, const mj_graph *g, int64_t in, const char *what) {
    const int64_t batches[] = {1, 3, 17};
    for (int bi = 0; bi < 3; bi++) {
        mj_tensor *x = randn(batches[bi], in, 200 + (uint64_t)bi);
        mj_tensor *y = jit_live(g, x);
        size_t n = (size_t)mj_tensor_numel(y);
        float *got = calloc(n, sizeof *got);
        char msg[1024];
        int rc = run_driver(dir, x, got, n, msg, sizeof msg);
        cr_assert_eq(rc, 0, "%s batch %lld: driver exit %d: %s", what, (long long)batches[bi], rc, msg);
        for (size_t i = 0; i < n; i++)
            cr_assert(memcmp(&got[i], &mj_tensor_data(y)[i], 4) == 0, "%s batch %lld: y[%zu] AOT %a, JIT %a", what,
                      (long long)batches[bi], i, (double)got[i], (double)mj_tensor_data(y)[i]);
        free(got);
        mj_tensor_release(x);
        mj_tensor_release(y);
    }
}

/* Live: weights and masks bound by name at run time (NAME_bind and
 * NAME_run_with agree; an unbound parameter is refused), outputs the JIT
 * live's bit for bit; other weights bound to the same object give the
 * other model's outputs, so nothing was baked in. */
Test(aot, live_masked_mlp_binds_weights_by_name) {
    const char *spec = "mlp:16,48,8:act=gelu";
    mj_module *m1, *m2;
    mj_graph *g1 = trace_model(spec, 0.5, &m1);
    char dir[1024];
    temp_dir(dir, sizeof dir);
    mj_aot_options o;
    mj_aot_options_init(&o);
    o.name = "m";
    o.frozen = false;
    OK(mj_aot_compile(g1, &o, dir));
    char obj[1100];
    snprintf(obj, sizeof obj, "%s/m.o", dir);
    assert_only_libc(obj);
    build_driver_opt(dir, "m", "-DLIVE");
    write_params(dir, m1);
    compare_live(dir, g1, 16, "live, first weights");

    mj_rng rng = mjt_rng(99);
    OK(mj_model_from_spec(spec, &rng, &m2));
    OK(mj_model_apply_masks(m2, NULL, 0.3, &rng));
    int64_t shape[2] = {3, 16};
    mj_tensor *ex;
    OK(mj_tensor_ones(&ex, 2, shape));
    mj_graph *g2;
    OK(mj_trace_module(m2, ex, &g2));
    mj_tensor_release(ex);
    write_params(dir, m2);
    compare_live(dir, g2, 16, "live, other weights");
    mj_graph_free(g1);
    mj_graph_free(g2);
    mj_module_free(m1);
    mj_module_free(m2);
    rm_rf(dir);
}

/* Live on an unmasked model (weights packed at run time) and on a
 * shipping target. */
Test(aot, live_plain_mlp_on_x86_64_v3) {
    mj_module *m;
    mj_graph *g = trace_model("mlp:24,40,40,6:act=tanh", 1, &m);
    char dir[1024];
    temp_dir(dir, sizeof dir);
    mj_aot_options o;
    mj_aot_options_init(&o);
    o.name = "m";
    o.frozen = false;
    o.target_cpu = "x86-64-v3";
    OK(mj_aot_compile(g, &o, dir));
    build_driver_opt(dir, "m", "-DLIVE");
    write_params(dir, m);
    compare_live(dir, g, 24, "live plain");
    mj_graph_free(g);
    mj_module_free(m);
    rm_rf(dir);
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
    char dir[1024];
    temp_dir(dir, sizeof dir);
    mj_aot_options o;
    mj_aot_options_init(&o);
    o.name = "m";
    o.description = name;
    OK(mj_aot_compile(g, &o, dir));
    build_driver(dir, "m");
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    mj_compile_options co;
    mj_compile_options_init(&co);
    co.frozen = true;
    co.use_cache = false;
    mj_compiled *c = mjt_compile_with(jit, g, &co);
    int checked = 0;
    for (int i = 0; i < mj_tensor_dict_size(file); i++) {
        const char *key = mj_tensor_dict_key(file, i);
        if (strcmp(key, "input") != 0 && strncmp(key, "input.batch", 11) != 0) continue;
        const mj_tensor *x = mj_tensor_dict_value(file, i);
        mj_tensor *y;
        OK(mj_compiled_run(c, x, &y));
        size_t n = (size_t)mj_tensor_numel(y);
        float *got = calloc(n, sizeof *got);
        char msg[1024];
        int rc = run_driver(dir, x, got, n, msg, sizeof msg);
        cr_assert_eq(rc, 0, "%s %s: driver exit %d: %s", name, key, rc, msg);
        for (size_t k = 0; k < n; k++)
            cr_assert(memcmp(&got[k], &mj_tensor_data(y)[k], 4) == 0, "%s %s: y[%zu] AOT %a, JIT %a", name, key, k,
                      (double)got[k], (double)mj_tensor_data(y)[k]);
        free(got);
        mj_tensor_release(y);
        checked++;
    }
    cr_assert_geq(checked, 1, "%s holds no input", name);
    mj_compiled_free(c);
    mj_jit_free(jit);
    mj_tensor_dict_free(file);
    mj_graph_free(g);
    rm_rf(dir);
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
    mj_rng rng;
    mj_rng_seed(&rng, 41);
    mj_module *cnn = mjc_small_cnn(&rng);
    mj_tensor *ex = mjc_randn(4, (int64_t[]){2, 3, 13, 11}, &rng);
    mj_graph *g = NULL;
    OK(mj_trace_module(cnn, ex, &g));
    char dir[1024];
    temp_dir(dir, sizeof dir);
    mj_aot_options o;
    mj_aot_options_init(&o);
    o.name = "m";
    o.frozen = true;
    OK(mj_aot_compile(g, &o, dir));
    build_driver(dir, "m");
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    mj_compile_options co;
    mj_compile_options_init(&co);
    co.frozen = true;
    co.use_cache = false;
    mj_compiled *c;
    OK(mj_jit_compile(jit, g, &co, &c));
    for (int bi = 0; bi < 3; bi++) {
        int64_t batch = (int64_t[]){1, 3, 17}[bi];
        mj_tensor *x = mjc_randn(4, (int64_t[]){batch, 3, 13, 11}, &rng), *y = NULL, *want = NULL;
        OK(mj_compiled_run(c, x, &y));
        OK(mj_module_forward(cnn, x, &want));
        cr_expect(mj_tensor_equal(y, want), "JIT exact frozen vs eager at batch %lld", (long long)batch);
        size_t n = (size_t)mj_tensor_numel(y);
        float *got = calloc(n, sizeof *got);
        char msg[1024];
        int rc = run_driver(dir, x, got, n, msg, sizeof msg);
        cr_assert_eq(rc, 0, "batch %lld: driver exit %d: %s", (long long)batch, rc, msg);
        cr_expect(memcmp(got, mj_tensor_data(y), n * 4) == 0, "AOT vs JIT at batch %lld", (long long)batch);
        free(got);
        mj_tensor_release(x);
        mj_tensor_release(y);
        mj_tensor_release(want);
    }
    mj_compiled_free(c);
    mj_jit_free(jit);
    mj_graph_free(g);
    mj_tensor_release(ex);
    mj_module_free(cnn);
    rm_rf(dir);
}
