/* The maskjit-bench program (also `maskjit bench`): options, the workloads
 * W1-W6, and the reports (table, JSON, CSV, plot) over the harness of
 * bench/harness.c. bench/README.md describes it. */
#include "bench/bench.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "bench/peers.h"
#include "src/core/internal.h"

static long peak_rss_kb(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : -1;
}
/* ---- the program ---------------------------------------------------------- */

#define MAX_WORKLOADS 64
#define MAX_THREADS_LIST 8

typedef struct row {
    char variant[32];
    bool peer;
    mj_bench_result r;
    double ratio; /* best peer time / this time; NAN without peers */
} row;

typedef struct wl_result {
    mj_bench_workload w;
    double flops;
    long rss_kb;
    int n_rows;
    row rows[MJ_BENCH_MAX_VARIANTS];
    int n_skipped;
    char skipped[MJ_BENCH_MAX_VARIANTS][256];
    bool vs_reference; /* ratio is against the reference (variant 0), not a peer */
    double ceiling, ceiling_hi; /* threads > 1: the lowest and highest host check of the cell's rounds; else NAN */
} wl_result;

typedef struct options {
    bool json, csv, smoke, help, list;
    bool cpu_clock;
    const char *plot;
    bool want[7];  /* W1..W6 by number */
    int reps;
    double min_ms;
    int threads[MAX_THREADS_LIST];
    int n_threads;
    uint64_t seed;
    const char *model;  /* a user's model: saved trace file or spec (MODEL argument) */
    int64_t batches[MAX_THREADS_LIST];
    int n_batches;
    const char *id;     /* MODEL's name in the tables and JSON (default: its file name) */
    bool untimed_ref;   /* MODEL: the interpreter checks the others but is not timed */
} options;

static void usage(FILE *f, const char *prog) {
    fprintf(f,
            "usage: %s [options]          the built-in workloads\n"
            "       %s MODEL [options]    your model\n"
            "Times eager, the interpreter, the compiled modes and the peers (OpenBLAS,\n"
            "LIBXSMM, oneDNN, XNNPACK: those found at build time) on masked MLP workloads\n"
            "(--list shows them); every variant is checked against eager first.\n"
            "With MODEL (a saved trace, e.g. from `maskjit trace` or tools/export_torch.py,\n"
            "or a model spec) it times that model instead: the interpreter and the compiled\n"
            "modes (exact, fast, frozen), each checked against the interpreter first, at\n"
            "every --batch and --threads; ratios are against the interpreter.\n"
            "  --batch LIST      batches for MODEL (default 1,8,64) and for W6 (default 1,2,4,..,1024)\n"
            "  --id NAME         MODEL's name in the tables and JSON (default: its file name)\n"
            "  --untimed-ref     MODEL: check against the interpreter but do not time it\n"
            "  --workloads LIST  comma-separated ids (default W1,W2,W3,W4,W5,W6)\n"
            "  --reps N          timing rounds, median reported (default 7; --smoke 3)\n"
            "  --min-ms X        time per variant per round in ms (default 25; --smoke 2)\n"
            "  --threads LIST    thread counts for W6 and MODEL (default 1%s)\n"
            "  --seed N          weights, masks and inputs (default 0)\n"
            "  --clock wall|cpu  wall time (default) or process CPU time (for loaded machines;\n"
            "                    single-thread runs only)\n"
            "  --smoke           a quick run for CI: few rounds, 1024 -> 256 wide, W6 at 1,8,64\n"
            "  --json | --csv    machine-readable output instead of the table\n"
            "  --plot FILE.svg   GFLOP/s against batch for W6 (needs gnuplot)\n"
            "  --list            list the workloads and exit\n"
            "  --help            this text\n",
            prog, prog, mj_bench_jit_threads() ? ",2" : " (the JIT is single-threaded)");
}

static bool parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

/* A comma-separated list without empty items ("1,,2", "2,"): strtok
 * would skip them and run something other than what was asked. */
static bool list_has_empty_item(const char *val) {
    size_t n = strlen(val);
    return n == 0 || val[0] == ',' || val[n - 1] == ',' || strstr(val, ",,");
}

static bool seen_before(const int64_t *v, int n, int64_t x) {
    for (int i = 0; i < n; i++)
        if (v[i] == x) return true;
    return false;
}

static int parse_args(int argc, char **argv, options *o, FILE *err) {
    const char *prog = argc > 0 && argv[0] ? argv[0] : "maskjit-bench";
    memset(o, 0, sizeof *o);
    o->reps = -1;
    o->min_ms = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        bool takes = !strcmp(a, "--workloads") || !strcmp(a, "--reps") || !strcmp(a, "--min-ms") ||
                     !strcmp(a, "--plot") || !strcmp(a, "--threads") || !strcmp(a, "--seed") ||
                     !strcmp(a, "--clock") || !strcmp(a, "--batch") || !strcmp(a, "--id");
        if (takes) {
            if (i + 1 >= argc) {
                fprintf(err, "%s: %s needs a value\n", prog, a);
                return 2;
            }
            val = argv[++i];
        }
        if (!strcmp(a, "--json")) o->json = true;
        else if (!strcmp(a, "--csv")) o->csv = true;
        else if (!strcmp(a, "--smoke")) o->smoke = true;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) o->help = true;
        else if (!strcmp(a, "--list")) o->list = true;
        else if (!strcmp(a, "--untimed-ref")) o->untimed_ref = true;
        else if (!strcmp(a, "--id")) {
            if (!*val || strlen(val) >= sizeof ((mj_bench_workload *)0)->id) {
                fprintf(err, "%s: --id wants a name of 1 to %zu characters, got '%s'\n", prog,
                        sizeof ((mj_bench_workload *)0)->id - 1, val);
                return 2;
            }
            o->id = val;
        }
        else if (!strcmp(a, "--clock")) {
            if (strcmp(val, "wall") && strcmp(val, "cpu")) {
                fprintf(err, "%s: --clock wants 'wall' or 'cpu', got '%s'\n", prog, val);
                return 2;
            }
            o->cpu_clock = !strcmp(val, "cpu");
        } else if (!strcmp(a, "--plot")) {
            if (!*val || strchr(val, '\'') || strchr(val, '\n')) {
                fprintf(err, "%s: --plot needs a file name without quotes or newlines, got '%s'\n",
                        prog, val);
                return 2;
            }
            o->plot = val;
        } else if (!strcmp(a, "--reps")) {
            int64_t v;
            if (!parse_i64(val, 1, 1000, &v)) {
                fprintf(err, "%s: --reps wants an integer in 1..1000, got '%s'\n", prog, val);
                return 2;
            }
            o->reps = (int)v;
        } else if (!strcmp(a, "--seed")) {
            int64_t v;
            if (!parse_i64(val, 0, INT64_MAX, &v)) {
                fprintf(err, "%s: --seed wants a non-negative integer, got '%s'\n", prog, val);
                return 2;
            }
            o->seed = (uint64_t)v;
        } else if (!strcmp(a, "--min-ms")) {
            char *end;
            errno = 0;
            double v = strtod(val, &end);
            if (errno || end == val || *end || !(v > 0 && v <= 60000)) {
                fprintf(err, "%s: --min-ms wants a number of milliseconds in (0, 60000], got '%s'\n",
                        prog, val);
                return 2;
            }
            o->min_ms = v;
        } else if (!strcmp(a, "--workloads") || !strcmp(a, "--threads")) {
            bool wl = !strcmp(a, "--workloads");
            char buf[256];
            if (strlen(val) >= sizeof buf || !*val) {
                fprintf(err, "%s: %s: list '%s' is empty or too long\n", prog, a, val);
                return 2;
            }
            if (list_has_empty_item(val) && strspn(val, ",") != strlen(val)) {
                fprintf(err, "%s: %s: an empty item in '%s'\n", prog, a, val);
                return 2;
            }
            strcpy(buf, val);
            char *save = NULL;
            int count = 0;
            for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                int64_t v;
                if (wl) {
                    if ((t[0] != 'W' && t[0] != 'w') || !parse_i64(t + 1, 1, 6, &v)) {
                        fprintf(err, "%s: unknown workload '%s' (known: W1, W2, W3, W4, W5, W6; the whole "
                                "models W7, W7b4 and W8 run with PyTorch beside them: tools/bench.sh --torch "
                                "--workloads W7)\n",
                                prog, t);
                        return 2;
                    }
                    o->want[v] = true;
                } else {
                    if (!parse_i64(t, 1, 256, &v)) {
                        fprintf(err, "%s: --threads wants counts in 1..256, got '%s'\n", prog, t);
                        return 2;
                    }
                    int64_t seen[MAX_THREADS_LIST];
                    for (int k = 0; k < o->n_threads; k++) seen[k] = o->threads[k];
                    if (seen_before(seen, o->n_threads, v)) {
                        fprintf(err, "%s: --threads lists %lld twice\n", prog, (long long)v);
                        return 2;
                    }
                    if (o->n_threads >= MAX_THREADS_LIST) {
                        fprintf(err, "%s: --threads takes at most %d counts\n", prog,
                                MAX_THREADS_LIST);
                        return 2;
                    }
                    o->threads[o->n_threads++] = (int)v;
                }
                count++;
            }
            if (count == 0) {
                fprintf(err, "%s: %s: empty list '%s'\n", prog, a, val);
                return 2;
            }
        } else if (!strcmp(a, "--batch")) {
            char buf[256];
            if (strlen(val) >= sizeof buf || !*val) {
                fprintf(err, "%s: --batch: list '%s' is empty or too long\n", prog, val);
                return 2;
            }
            if (list_has_empty_item(val) && strspn(val, ",") != strlen(val)) {
                fprintf(err, "%s: --batch: an empty item in '%s'\n", prog, val);
                return 2;
            }
            strcpy(buf, val);
            char *save = NULL;
            for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                int64_t v;
                if (!parse_i64(t, 1, 1 << 20, &v)) {
                    fprintf(err, "%s: --batch wants batches in 1..1048576, got '%s'\n", prog, t);
                    return 2;
                }
                if (seen_before(o->batches, o->n_batches, v)) {
                    fprintf(err, "%s: --batch lists %lld twice\n", prog, (long long)v);
                    return 2;
                }
                if (o->n_batches >= MAX_THREADS_LIST) {
                    fprintf(err, "%s: --batch takes at most %d batches\n", prog, MAX_THREADS_LIST);
                    return 2;
                }
                o->batches[o->n_batches++] = v;
            }
            if (o->n_batches == 0) {
                fprintf(err, "%s: --batch: empty list '%s'\n", prog, val);
                return 2;
            }
        } else if (a[0] != '-' && !o->model) {
            o->model = a;
        } else {
            fprintf(err, "%s: unknown argument '%s' (try --help)\n", prog, a);
            return 2;
        }
    }
    if (o->json && o->csv) {
        fprintf(err, "%s: --json and --csv are exclusive\n", prog);
        return 2;
    }
    if (o->model) {
        /* options of the built-in workloads that a MODEL run would ignore */
        bool wl = false;
        for (int i = 1; i <= 6; i++) wl |= o->want[i];
        const char *why = wl ? "--workloads chooses built-in workloads"
                          : o->plot ? "--plot draws W6's batch scaling"
                          : o->list ? "--list lists built-in workloads" : NULL;
        if (why) {
            fprintf(err, "%s: %s, not a MODEL ('%s')\n", prog, why, o->model);
            return 2;
        }
    }
    if (o->model && o->n_batches == 0) {
        static const int64_t dflt[] = {1, 8, 64};
        for (int i = 0; i < 3; i++) o->batches[o->n_batches++] = dflt[i];
    }
    bool any = false;
    for (int i = 1; i <= 6; i++) any |= o->want[i];
    if (!any)
        for (int i = 1; i <= 6; i++) o->want[i] = true;
    if (o->n_batches && !o->model && !o->want[6]) {
        fprintf(err, "%s: --batch goes with a MODEL or W6 (the other workloads have their own batches)\n", prog);
        return 2;
    }
    if (o->reps < 0) o->reps = o->smoke ? 3 : 7;
    if (o->min_ms < 0) o->min_ms = o->smoke ? 2 : 25;
    if (o->n_threads == 0) {
        o->threads[o->n_threads++] = 1;
        if (mj_bench_jit_threads()) o->threads[o->n_threads++] = 2;
    }
    int most = 1;
    for (int t = 0; t < o->n_threads; t++) most = o->threads[t] > most ? o->threads[t] : most;
    if (o->cpu_clock && most > 1 && (o->model || o->want[6]) && !o->list && !o->help)
        fprintf(err, "%s: warning: --clock cpu adds up the CPU time of every thread, so cells at %d threads "
                     "cannot show a speed-up; time threads with the wall clock\n", prog, most);
    return 0;
}

static void set_wl(mj_bench_workload *w, const char *id, const char *spec, int64_t batch,
                   mj_bench_mask mask, double density, int threads, uint64_t seed) {
    memset(w, 0, sizeof *w);
    snprintf(w->id, sizeof w->id, "%s", id);
    snprintf(w->spec, sizeof w->spec, "%s", spec);
    w->batch = batch;
    w->mask = mask;
    w->density = density;
    w->threads = threads;
    w->seed = seed;
}

/* The built-in workloads W1-W6. W6 is listed once per thread count (the batch sweep
 * reuses one setup). */
static int build_workloads(const options *o, mj_bench_workload *ws) {
    int n = 0;
    int big = o->smoke ? 256 : 1024;
    char mlp_big[128], mlp_small[] = "mlp:256,256,256,256:act=relu:bias=1";
    snprintf(mlp_big, sizeof mlp_big, "mlp:%d,%d,%d,%d:act=relu:bias=1", big, big, big, big);
    if (o->want[1]) {
        set_wl(&ws[n], "W1", "mut", 3, MJ_BENCH_MASK_IDENTITY, 1, 1, o->seed);
        snprintf(ws[n++].description, sizeof ws[0].description,
                 "seed model (mut): 3 Linear(16,16)+bias, identity masks, batch 3");
    }
    if (o->want[2]) {
        set_wl(&ws[n], "W2", mlp_small, 64, MJ_BENCH_MASK_RANDOM, 0.1, 1, o->seed);
        snprintf(ws[n++].description, sizeof ws[0].description,
                 "3 Linear(256,256)+bias, ReLU between, unstructured masks density 0.1, batch 64");
    }
    if (o->want[3]) {
        set_wl(&ws[n], "W3", mlp_big, 64, MJ_BENCH_MASK_ONES, 1, 1, o->seed);
        snprintf(ws[n++].description, sizeof ws[0].description,
                 "3 Linear(%d,%d)+bias, ReLU between, all-ones masks (dense), batch 64", big, big);
    }
    if (o->want[4]) {
        set_wl(&ws[n], "W4", mlp_big, 64, MJ_BENCH_MASK_RANDOM, 0.1, 1, o->seed);
        snprintf(ws[n++].description, sizeof ws[0].description,
                 "3 Linear(%d,%d)+bias, ReLU between, unstructured masks density 0.1, batch 64",
                 big, big);
    }
    if (o->want[5]) {
        set_wl(&ws[n], "W5", mlp_big, 64, MJ_BENCH_MASK_BLOCK4, 0.1, 1, o->seed);
        snprintf(ws[n++].description, sizeof ws[0].description,
                 "3 Linear(%d,%d)+bias, ReLU between, 1x4 block masks density 0.1, batch 64", big,
                 big);
    }
    if (o->want[6])
        for (int t = 0; t < o->n_threads; t++) {
            set_wl(&ws[n], "W6", mlp_big, 1, MJ_BENCH_MASK_ONES, 1, o->threads[t], o->seed);
            snprintf(ws[n++].description, sizeof ws[0].description,
                     "W3 (%d wide, dense masks) at batch B, %d thread%s", big, o->threads[t],
                     o->threads[t] > 1 ? "s" : "");
        }
    return n;
}

static int w6_batches(const options *o, int64_t *b) {
    int n = 0;
    if (o->n_batches > 0) { /* --batch: the user's sweep */
        for (int i = 0; i < o->n_batches; i++) b[n++] = o->batches[i];
        return n;
    }
    if (o->smoke) {
        b[n++] = 1;
        b[n++] = 8;
        b[n++] = 64;
    } else {
        for (int64_t x = 1; x <= 1024; x *= 2) b[n++] = x;
    }
    return n;
}

static const char *mask_name(mj_bench_mask m) {
    switch (m) {
    case MJ_BENCH_MASK_NONE: return "none";
    case MJ_BENCH_MASK_ONES: return "ones";
    case MJ_BENCH_MASK_IDENTITY: return "identity";
    case MJ_BENCH_MASK_RANDOM: return "unstructured";
    case MJ_BENCH_MASK_BLOCK4: return "block1x4";
    }
    return "?";
}

static void cpu_name(char *buf, size_t size) {
    snprintf(buf, size, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        char *c = strchr(line, ':');
        if (!c) continue;
        c++;
        while (*c == ' ' || *c == '\t') c++;
        c[strcspn(c, "\n")] = 0;
        snprintf(buf, size, "%s", c);
        break;
    }
    fclose(f);
}

static void fmt_time(char *buf, size_t n, double ns) {
    if (!isfinite(ns)) snprintf(buf, n, "-");
    else if (ns < 1e3) snprintf(buf, n, "%.1f ns", ns);
    else if (ns < 1e6) snprintf(buf, n, "%.2f us", ns / 1e3);
    else if (ns < 1e9) snprintf(buf, n, "%.2f ms", ns / 1e6);
    else snprintf(buf, n, "%.3f s", ns / 1e9);
}

static void print_table_block(FILE *out, const wl_result *wr) {
    fprintf(out, "\n%s  %s\n", wr->w.id, wr->w.description);
    fprintf(out, "    batch %lld, %d thread%s, %.4g MFLOP per forward (dense count), peak RSS %.1f MB\n",
            (long long)wr->w.batch, wr->w.threads, wr->w.threads > 1 ? "s" : "", wr->flops / 1e6,
            wr->rss_kb / 1024.0);
    bool threaded = wr->w.threads > 1;
    fprintf(out, "    %-16s %12s %10s %12s %12s %10s%s\n", "variant", "median", "GFLOP/s",
            wr->vs_reference ? "vs interp" : "vs best peer", "compile ms", "calls/round",
            threaded ? "   vs 1 thread (lowest round)   copies (lowest)   vs copies (lowest)" : "");
    for (int i = 0; i < wr->n_rows; i++) {
        const row *r = &wr->rows[i];
        if (!isfinite(r->r.median_ns)) continue;
        char t[32], ratio[32], comp[32], one[128] = "";
        fmt_time(t, sizeof t, r->r.median_ns);
        if (isfinite(r->ratio)) snprintf(ratio, sizeof ratio, "%.3fx", r->ratio);
        else snprintf(ratio, sizeof ratio, "-");
        if (r->r.compile_ms >= 0) snprintf(comp, sizeof comp, "%.1f", r->r.compile_ms);
        else snprintf(comp, sizeof comp, "-");
        if (threaded && isfinite(r->r.vs_one_thread))
            snprintf(one, sizeof one, "   %13.2fx (%.2fx) %11.2fx (%.2fx) %14.2f (%.2f)", r->r.vs_one_thread,
                     r->r.vs_one_thread_min, r->r.host_copies, r->r.host_copies_min, r->r.vs_host,
                     r->r.vs_host_min);
        fprintf(out, "    %-16s %12s %10.2f %12s %12s %10lld%s\n", r->variant, t, r->r.gflops, ratio,
                comp, (long long)r->r.iters, one);
    }
    if (threaded)
        fprintf(out, "    vs 1 thread: the same mode compiled for one thread, timed next to this one in "
                     "every round; the median of the rounds' ratios\n"
                     "    copies: in the same rounds, %d copies of the one-thread model run at once, each on "
                     "its own thread: their calls against one copy's (%d.00 = the host gave every copy full "
                     "speed); vs copies: vs 1 thread / copies, round by round (1.00 = all the host gave)\n",
                wr->w.threads, wr->w.threads);
    for (int i = 0; i < wr->n_skipped; i++) fprintf(out, "    (skipped) %s\n", wr->skipped[i]);
    if (isfinite(wr->ceiling))
        fprintf(out, "    host check: %d threads of independent arithmetic ran %.2f-%.2fx one thread before "
                     "each round (%d.00 = %d free cores)\n", wr->w.threads, wr->ceiling, wr->ceiling_hi,
                wr->w.threads, wr->w.threads);
}

/* W6 again as one matrix: GFLOP/s per batch and variant. */
static void print_w6_matrix(FILE *out, const wl_result *res, int n) {
    const char *names[MJ_BENCH_MAX_VARIANTS];
    int nn = 0;
    for (int i = 0; i < n; i++) {
        if (strcmp(res[i].w.id, "W6")) continue;
        for (int j = 0; j < res[i].n_rows; j++) {
            bool seen = false;
            for (int k = 0; k < nn; k++) seen |= !strcmp(names[k], res[i].rows[j].variant);
            if (!seen && nn < MJ_BENCH_MAX_VARIANTS) names[nn++] = res[i].rows[j].variant;
        }
    }
    if (nn == 0) return;
    fprintf(out, "\nW6 batch scaling, GFLOP/s (best peer ratio in parentheses); host: what the machine gave "
                 "that many threads of independent arithmetic against one, lowest-highest of the checks before "
                 "each round\n");
    fprintf(out, "    %7s %3s %11s", "batch", "thr", "host");
    for (int k = 0; k < nn; k++) fprintf(out, " %22s", names[k]);
    fprintf(out, "\n");
    for (int i = 0; i < n; i++) {
        if (strcmp(res[i].w.id, "W6")) continue;
        char host[32] = "-";
        if (isfinite(res[i].ceiling)) snprintf(host, sizeof host, "%.2f-%.2fx", res[i].ceiling, res[i].ceiling_hi);
        fprintf(out, "    %7lld %3d %11s", (long long)res[i].w.batch, res[i].w.threads, host);
        for (int k = 0; k < nn; k++) {
            char cell[40] = "-";
            for (int j = 0; j < res[i].n_rows; j++) {
                const row *r = &res[i].rows[j];
                if (strcmp(r->variant, names[k]) || !isfinite(r->r.median_ns)) continue;
                if (isfinite(r->ratio)) snprintf(cell, sizeof cell, "%.2f (%.2fx)", r->r.gflops, r->ratio);
                else snprintf(cell, sizeof cell, "%.2f", r->r.gflops);
            }
            fprintf(out, " %22s", cell);
        }
        fprintf(out, "\n");
    }
}

/* W6 at threads > 1, per compiled mode: the speed-up over its one-thread
 * twin, timed in the same rounds; with vs_copies, that speed-up as a share
 * of what the host gave copies of the one-thread model in the same rounds. */
static void print_w6_threads(FILE *out, const wl_result *res, int n, bool vs_copies) {
    bool any = false;
    for (int i = 0; i < n; i++) any |= !strcmp(res[i].w.id, "W6") && res[i].w.threads > 1;
    if (!any) return;
    if (vs_copies)
        fprintf(out, "\nW6 against the host: copies = that many copies of the one-thread model run at once in "
                     "the same rounds, their calls against one's, the lowest median of the three modes (lowest "
                     "round); per mode the speed-up over one thread divided by the copies' in the same round, "
                     "median (lowest round); 1.00 = all the host gave\n");
    else
        fprintf(out, "\nW6 speed-up over one thread: each round times the mode compiled for one thread next "
                     "to the threaded one; median of the rounds' ratios (lowest round)\n");
    fprintf(out, "    %7s %3s %15s", "batch", "thr", vs_copies ? "copies" : "host");
    const char *modes[] = {"compiled-exact", "compiled-fast", "compiled-frozen"};
    for (int k = 0; k < 3; k++) fprintf(out, " %18s", modes[k]);
    fprintf(out, "\n");
    for (int i = 0; i < n; i++) {
        if (strcmp(res[i].w.id, "W6") || res[i].w.threads < 2) continue;
        double lo = NAN, hi = NAN; /* copies: the lowest median, the lowest round */
        char cells[3][40] = {"-", "-", "-"}, host[32] = "-";
        for (int j = 0; j < res[i].n_rows; j++) {
            const mj_bench_result *r = &res[i].rows[j].r;
            for (int k = 0; k < 3; k++) {
                if (strcmp(res[i].rows[j].variant, modes[k])) continue;
                double med = vs_copies ? r->vs_host : r->vs_one_thread;
                double low = vs_copies ? r->vs_host_min : r->vs_one_thread_min;
                if (!isfinite(med)) continue;
                snprintf(cells[k], sizeof cells[k], vs_copies ? "%.2f (%.2f)" : "%.2fx (%.2fx)", med, low);
                if (!(r->host_copies >= lo)) lo = r->host_copies;
                if (!(r->host_copies_min >= hi)) hi = r->host_copies_min;
            }
        }
        if (vs_copies && isfinite(lo)) snprintf(host, sizeof host, "%.2fx (%.2fx)", lo, hi);
        if (!vs_copies && isfinite(res[i].ceiling))
            snprintf(host, sizeof host, "%.2f-%.2fx", res[i].ceiling, res[i].ceiling_hi);
        fprintf(out, "    %7lld %3d %15s", (long long)res[i].w.batch, res[i].w.threads, host);
        for (int k = 0; k < 3; k++) fprintf(out, " %18s", cells[k]);
        fprintf(out, "\n");
    }
}

static json_t *num_or_null(double v) { return isfinite(v) ? json_real(v) : json_null(); }

/* What a non-exact variant is checked against (mj_bench_tolerance). */
#define TOLERANCE_RULE                                                                         \
    "fast mode's bound (docs/numerics.md): |a-e| <= rtol*|e| + atol, "                           \
    "rtol = max(8*sqrt(K)*u, 1.3e-6), atol = 8*K*u*mean|e|, u = 2^-24, "                        \
    "K = the summed reduction lengths"

static void write_json(FILE *out, const wl_result *res, int n, const options *o, const char *cpu,
                       const char *llvm_cpu) {
    json_t *root = json_object();
    json_object_set_new(root, "cpu", json_string(cpu));
    json_object_set_new(root, "llvm_cpu", json_string(llvm_cpu));
    json_object_set_new(root, "reps", json_integer(o->reps));
    json_object_set_new(root, "min_ms", json_real(o->min_ms));
    json_object_set_new(root, "smoke", json_boolean(o->smoke));
    json_object_set_new(root, "clock", json_string(o->cpu_clock ? "cpu" : "wall"));
    json_object_set_new(root, "jit_threads_supported", json_boolean(mj_bench_jit_threads()));
    json_t *peers = json_object();
    for (int k = 0; k < MJ_PEER_COUNT; k++)
        json_object_set_new(peers, mj_peer_name((mj_peer_kind)k),
                            json_string(mj_peer_info((mj_peer_kind)k)));
    json_object_set_new(root, "peers", peers);
    json_object_set_new(root, "tolerance",
                        json_pack("{s:s}", "rule",
                                  "exact variants bit-identical; others within " TOLERANCE_RULE));
    json_t *wls = json_array();
    for (int i = 0; i < n; i++) {
        const wl_result *wr = &res[i];
        json_t *w = json_object();
        json_object_set_new(w, "id", json_string(wr->w.id));
        json_object_set_new(w, "description", json_string(wr->w.description));
        json_object_set_new(w, "spec", json_string(wr->w.spec));
        json_object_set_new(w, "batch", json_integer(wr->w.batch));
        json_object_set_new(w, "threads", json_integer(wr->w.threads));
        json_object_set_new(w, "mask", json_string(mask_name(wr->w.mask)));
        json_object_set_new(w, "density", json_real(wr->w.density));
        json_object_set_new(w, "flops", json_real(wr->flops));
        json_object_set_new(w, "peak_rss_kb", json_integer(wr->rss_kb));
        json_object_set_new(w, "ratio_against", json_string(wr->vs_reference ? "interp" : "best peer"));
        json_object_set_new(w, "host_thread_ceiling", num_or_null(wr->ceiling));
        json_object_set_new(w, "host_thread_ceiling_max", num_or_null(wr->ceiling_hi));
        json_t *rs = json_array();
        for (int j = 0; j < wr->n_rows; j++) {
            const row *r = &wr->rows[j];
            if (!isfinite(r->r.median_ns)) continue;
            json_t *jr = json_object();
            json_object_set_new(jr, "variant", json_string(r->variant));
            json_object_set_new(jr, "median_ns", json_real(r->r.median_ns));
            json_object_set_new(jr, "min_ns", json_real(r->r.min_ns));
            json_object_set_new(jr, "iters", json_integer(r->r.iters));
            json_object_set_new(jr, "rounds", json_integer(r->r.reps));
            json_object_set_new(jr, "gflops", num_or_null(r->r.gflops));
            json_object_set_new(jr, "ratio_to_best_peer", num_or_null(r->ratio));
            json_object_set_new(jr, "vs_one_thread", num_or_null(r->r.vs_one_thread));
            json_object_set_new(jr, "vs_one_thread_min", num_or_null(r->r.vs_one_thread_min));
            json_object_set_new(jr, "host_copies", num_or_null(r->r.host_copies));
            json_object_set_new(jr, "host_copies_min", num_or_null(r->r.host_copies_min));
            json_object_set_new(jr, "vs_host_copies", num_or_null(r->r.vs_host));
            json_object_set_new(jr, "vs_host_copies_min", num_or_null(r->r.vs_host_min));
            json_object_set_new(jr, "compile_ms",
                                r->r.compile_ms >= 0 ? json_real(r->r.compile_ms) : json_null());
            json_array_append_new(rs, jr);
        }
        json_object_set_new(w, "results", rs);
        json_t *sk = json_array();
        for (int j = 0; j < wr->n_skipped; j++) json_array_append_new(sk, json_string(wr->skipped[j]));
        json_object_set_new(w, "skipped", sk);
        json_array_append_new(wls, w);
    }
    json_object_set_new(root, "workloads", wls);
    json_dumpf(root, out, JSON_INDENT(2) | JSON_REAL_PRECISION(8));
    fputc('\n', out);
    json_decref(root);
}

static void write_csv(FILE *out, const wl_result *res, int n) {
    fprintf(out, "workload,batch,threads,variant,median_ns,min_ns,iters,gflops,ratio_to_best_peer,"
                 "compile_ms,peak_rss_kb,vs_one_thread\n");
    for (int i = 0; i < n; i++)
        for (int j = 0; j < res[i].n_rows; j++) {
            const row *r = &res[i].rows[j];
            if (!isfinite(r->r.median_ns)) continue;
            fprintf(out, "%s,%lld,%d,%s,%.1f,%.1f,%lld,%.4f,", res[i].w.id,
                    (long long)res[i].w.batch, res[i].w.threads, r->variant, r->r.median_ns,
                    r->r.min_ns, (long long)r->r.iters, r->r.gflops);
            if (isfinite(r->ratio)) fprintf(out, "%.4f", r->ratio);
            fputc(',', out);
            if (r->r.compile_ms >= 0) fprintf(out, "%.2f", r->r.compile_ms);
            fprintf(out, ",%ld,", res[i].rss_kb);
            if (isfinite(r->r.vs_one_thread)) fprintf(out, "%.4f", r->r.vs_one_thread);
            fputc('\n', out);
        }
}

static bool in_path(const char *prog) {
    const char *path = getenv("PATH");
    if (!path) return false;
    char buf[4096];
    const char *p = path;
    while (*p) {
        size_t len = strcspn(p, ":");
        if (len > 0 && len + strlen(prog) + 2 < sizeof buf) {
            memcpy(buf, p, len);
            buf[len] = '/';
            strcpy(buf + len + 1, prog);
            if (access(buf, X_OK) == 0) return true;
        }
        p += len;
        if (*p == ':') p++;
    }
    return false;
}

/* GFLOP/s against batch for W6, one line per variant and thread count.
 * Returns 0, or 1 when gnuplot ran and failed. */
static int write_plot(const char *file, const wl_result *res, int n, FILE *err) {
    int n6 = 0;
    for (int i = 0; i < n; i++) n6 += !strcmp(res[i].w.id, "W6");
    if (n6 == 0) {
        fprintf(err, "maskjit-bench: --plot: W6 (batch scaling) was not run; no plot written\n");
        return 0;
    }
    if (!in_path("gnuplot")) {
        fprintf(err, "maskjit-bench: --plot: gnuplot not found in PATH; no plot written\n");
        return 0;
    }
    FILE *g = popen("gnuplot", "w");
    if (!g) {
        fprintf(err, "maskjit-bench: --plot: cannot start gnuplot: %s\n", strerror(errno));
        return 1;
    }
    fprintf(g, "set terminal svg size 900,560 dynamic enhanced font 'sans,11'\n"
               "set output '%s'\n"
               "set title 'W6: 3 dense Linear layers, GFLOP/s against batch'\n"
               "set xlabel 'batch'\nset ylabel 'GFLOP/s'\nset logscale x 2\nset grid\n"
               "set key outside right\n",
               file);
    /* series = (variant, threads) */
    char series[32][48];
    int ns = 0;
    for (int i = 0; i < n; i++) {
        if (strcmp(res[i].w.id, "W6")) continue;
        for (int j = 0; j < res[i].n_rows; j++) {
            if (!isfinite(res[i].rows[j].r.median_ns)) continue;
            char name[48];
            snprintf(name, sizeof name, "%s %dT", res[i].rows[j].variant, res[i].w.threads);
            bool seen = false;
            for (int k = 0; k < ns; k++) seen |= !strcmp(series[k], name);
            if (!seen && ns < 32) strcpy(series[ns++], name);
        }
    }
    for (int k = 0; k < ns; k++) {
        fprintf(g, "$s%d << EOD\n", k);
        for (int i = 0; i < n; i++) {
            if (strcmp(res[i].w.id, "W6")) continue;
            for (int j = 0; j < res[i].n_rows; j++) {
                char name[48];
                snprintf(name, sizeof name, "%s %dT", res[i].rows[j].variant, res[i].w.threads);
                if (!strcmp(name, series[k]) && isfinite(res[i].rows[j].r.median_ns))
                    fprintf(g, "%lld %.6g\n", (long long)res[i].w.batch, res[i].rows[j].r.gflops);
            }
        }
        fprintf(g, "EOD\n");
    }
    fprintf(g, "plot ");
    for (int k = 0; k < ns; k++)
        fprintf(g, "%s$s%d using 1:2 with linespoints title '%s'", k ? ", " : "", k, series[k]);
    fprintf(g, "\n");
    int st = pclose(g);
    if (st != 0) {
        fprintf(err, "maskjit-bench: --plot: gnuplot failed (status %d)\n", st);
        return 1;
    }
    fprintf(err, "maskjit-bench: plot written to %s\n", file);
    return 0;
}

static void fill_result(wl_result *wr, mj_bench_setup *s, const mj_bench_result *r) {
    int nv = mj_bench_variant_count(s);
    wr->vs_reference = mj_bench_setup_model(s) == NULL;
    wr->w = *mj_bench_setup_workload(s);
    wr->flops = mj_bench_setup_flops(s);
    wr->rss_kb = peak_rss_kb();
    wr->n_rows = nv;
    double best_peer = NAN;
    for (int i = 0; i < nv; i++)
        if (mj_bench_variant_is_peer(s, i) && isfinite(r[i].median_ns) &&
            (!isfinite(best_peer) || r[i].median_ns < best_peer))
            best_peer = r[i].median_ns;
    for (int i = 0; i < nv; i++) {
        row *rw = &wr->rows[i];
        snprintf(rw->variant, sizeof rw->variant, "%s", mj_bench_variant_name(s, i));
        rw->peer = mj_bench_variant_is_peer(s, i);
        rw->r = r[i];
        rw->ratio = isfinite(best_peer) && r[i].median_ns > 0 ? best_peer / r[i].median_ns : NAN;
    }
    if (wr->vs_reference) /* a user's model: speed-up over the interpreter */
        for (int i = 0; i < nv; i++)
            wr->rows[i].ratio = r[i].median_ns > 0 ? r[0].median_ns / r[i].median_ns : NAN;
    wr->n_skipped = mj_bench_setup_skipped_count(s);
    for (int i = 0; i < wr->n_skipped; i++)
        snprintf(wr->skipped[i], sizeof wr->skipped[i], "%s", mj_bench_setup_skipped(s, i));
}

/* Check + measure the setup at its current batch; appends to res. */
static int run_one(mj_bench_setup *s, const options *o, wl_result *res, int *n_res, FILE *out,
                   FILE *err) {
    if (*n_res >= MAX_WORKLOADS * 2) return 0;
    const mj_bench_workload *w = mj_bench_setup_workload(s);
    int nv = mj_bench_variant_count(s);
    fprintf(err, "[%s] batch %lld, %d thread(s): checking %d variants against %s\n", w->id,
            (long long)mj_bench_setup_batch(s), w->threads, nv, mj_bench_variant_name(s, 0));
    if (mj_bench_check(s) != MJ_OK) {
        fprintf(err, "maskjit-bench: %s\n", mj_last_error());
        return 1;
    }
    fprintf(err, "[%s] timing: %d rounds x %d variants, ~%g ms each\n", w->id, o->reps, nv,
            o->min_ms);
    mj_bench_result r[MJ_BENCH_MAX_VARIANTS];
    if (mj_bench_measure(s, o->reps, o->min_ms, r) != MJ_OK) {
        fprintf(err, "maskjit-bench: %s: timing: %s\n", w->id, mj_last_error());
        return 1;
    }
    wl_result *wr = &res[(*n_res)++];
    fill_result(wr, s, r);
    mj_bench_setup_host_range(s, &wr->ceiling, &wr->ceiling_hi);
    if (!o->json && !o->csv && strcmp(w->id, "W6") != 0) {
        print_table_block(out, wr);
        fflush(out);
    }
    return 0;
}

static int first_linear_in(const char *path, mj_module *m, void *ctx) {
    (void)path;
    int64_t *in = ctx;
    if (*in == 0 && mj_linear_in_features(m) > 0) *in = mj_linear_in_features(m);
    return 0;
}

/* The graph of a user's MODEL: a saved trace, or a spec traced on ones. */
static mj_status load_model_graph(const char *model, uint64_t seed, mj_graph **g) {
    struct stat st;
    if (stat(model, &st) == 0) {
        if (!S_ISREG(st.st_mode)) return mj_fail(MJ_ERR_INVALID, "%s is not a regular file", model);
        return mj_graph_load(model, g);
    }
    mj_rng rng;
    mj_rng_seed(&rng, seed);
    mj_module *m = NULL;
    mj_status s = mj_model_from_spec(model, &rng, &m);
    if (s != MJ_OK)
        return mj_fail_prefix(s, "'%s' is neither a file nor a model spec", model);
    int64_t in = 0;
    mj_module_walk(m, first_linear_in, &in);
    mj_tensor *x = NULL;
    s = mj_tensor_ones(&x, 2, (int64_t[]){1, in > 0 ? in : 1});
    if (s == MJ_OK) s = mj_trace_module(m, x, g);
    mj_tensor_release(x);
    mj_module_free(m);
    return s;
}

/* `maskjit bench MODEL`: every batch x thread count, checked, timed, reported. */
static int run_model(const options *o, const char *prog, FILE *out, FILE *err) {
    mj_graph *g = NULL;
    struct stat st;
    bool exists = stat(o->model, &st) == 0;
    if (exists ? !S_ISREG(st.st_mode) : strchr(o->model, '/') || strchr(o->model, '.')) {
        /* a path (specs have no '/' or '.') that names no file: the caller's mistake */
        fprintf(err, "%s: MODEL '%s': %s\n", prog, o->model,
                exists ? (S_ISDIR(st.st_mode) ? "a directory, not a file" : "not a regular file") : strerror(errno));
        return 2;
    }
    if (load_model_graph(o->model, o->seed, &g) != MJ_OK) {
        fprintf(err, "%s: %s\n", prog, mj_last_error());
        return 1;
    }
    int n_max = o->n_batches * o->n_threads;
    wl_result *res = calloc((size_t)n_max, sizeof *res);
    mj_jit *jit = NULL;
    int rc = 1;
    if (!res) {
        fprintf(err, "%s: out of memory\n", prog);
        goto done;
    }
    if (mj_jit_new(&jit) != MJ_OK) {
        fprintf(err, "%s: cannot start the JIT: %s\n", prog, mj_last_error());
        goto done;
    }
    const char *base = strrchr(o->model, '/');
    base = o->id ? o->id : base ? base + 1 : o->model;
    char cpu[256];
    cpu_name(cpu, sizeof cpu);
    const char *llvm_cpu = mj_jit_cpu_name(jit);
    if (!o->json && !o->csv)
        fprintf(out, "maskjit bench %s — CPU: %s (LLVM: %s), %d rounds, ~%g ms per variant per "
                     "round, median reported, %s clock\n", o->model, cpu, llvm_cpu ? llvm_cpu : "?", o->reps,
                o->min_ms, o->cpu_clock ? "process CPU" : "wall");
    int n_res = 0;
    rc = 0;
    for (int t = 0; t < o->n_threads && rc == 0; t++) {
        mj_bench_setup *s = NULL;
        fprintf(err, "[%s] compiling for %d thread(s)\n", base, o->threads[t]);
        if (mj_bench_setup_from_graph(base, o->model, g, o->batches[0], o->threads[t], o->seed, jit,
                                      &s) != MJ_OK) {
            fprintf(err, "%s: %s\n", prog, mj_last_error());
            rc = 1;
            break;
        }
        if (o->untimed_ref) mj_bench_setup_time_reference(s, false);
        for (int v = 0; v < mj_bench_variant_count(s); v++)
            if (mj_bench_variant_compile_ms(s, v) >= 0)
                fprintf(err, "[%s] %s compiled in %.1f ms\n", base, mj_bench_variant_name(s, v),
                        mj_bench_variant_compile_ms(s, v));
        for (int b = 0; b < o->n_batches && rc == 0; b++) {
            if (b > 0 && mj_bench_setup_set_batch(s, o->batches[b]) != MJ_OK) {
                fprintf(err, "%s: %s\n", prog, mj_last_error());
                rc = 1;
                break;
            }
            rc = run_one(s, o, res, &n_res, out, err);
        }
        mj_bench_setup_free(s);
    }
    /* at threads > 1 the interpreter is not timed: compare with its time at
     * the same batch on one thread */
    for (int i = 0; i < n_res; i++)
        for (int j = 0; j < n_res && res[i].w.threads > 1; j++)
            if (res[j].w.threads == 1 && res[j].w.batch == res[i].w.batch && res[j].n_rows > 0 &&
                isfinite(res[j].rows[0].r.median_ns))
                for (int v = 0; v < res[i].n_rows; v++)
                    res[i].rows[v].ratio = res[j].rows[0].r.median_ns / res[i].rows[v].r.median_ns;
    if (rc == 0) {
        if (o->json) write_json(out, res, n_res, o, cpu, llvm_cpu ? llvm_cpu : "?");
        else if (o->csv) write_csv(out, res, n_res);
        else
            fprintf(out, "\ncorrectness: every variant checked against the interpreter before "
                         "timing; compiled-exact/compiled-frozen bit-identical, compiled-fast within "
                         TOLERANCE_RULE "\n");
    }
done:
    free(res);
    mj_jit_free(jit);
    mj_graph_free(g);
    return rc;
}

int mj_bench_run(int argc, char **argv, FILE *out, FILE *err) {
    options o;
    int rc = parse_args(argc, argv, &o, err);
    if (rc) return rc;
    const char *prog = argc > 0 && argv[0] ? argv[0] : "maskjit-bench";
    if (o.help) {
        usage(out, prog);
        return 0;
    }
    mj_bench_use_cpu_clock(o.cpu_clock);
    if (o.model) return run_model(&o, prog, out, err);
    mj_bench_workload ws[MAX_WORKLOADS];
    int nw = build_workloads(&o, ws);
    if (o.list) {
        for (int i = 0; i < nw; i++)
            fprintf(out, "%s  %s (spec %s)\n", ws[i].id, ws[i].description, ws[i].spec);
        return 0;
    }
    wl_result *res = calloc(MAX_WORKLOADS * 2, sizeof *res);
    if (!res) {
        fprintf(err, "%s: out of memory\n", prog);
        return 1;
    }
    mj_jit *jit = NULL;
    if (mj_jit_new(&jit) != MJ_OK) {
        fprintf(err, "%s: cannot start the JIT: %s\n", prog, mj_last_error());
        free(res);
        return 1;
    }
    char cpu[256];
    cpu_name(cpu, sizeof cpu);
    const char *llvm_cpu = mj_jit_cpu_name(jit);
    if (!o.json && !o.csv) {
        fprintf(out, "maskjit bench — CPU: %s (LLVM: %s)\n", cpu, llvm_cpu ? llvm_cpu : "?");
        for (int k = 0; k < MJ_PEER_COUNT; k++)
            fprintf(out, "  peer %-8s %s\n", mj_peer_name((mj_peer_kind)k),
                    mj_peer_info((mj_peer_kind)k));
        fprintf(out, "  %d rounds, ~%g ms per variant per round, median reported, %s clock%s\n",
                o.reps, o.min_ms, o.cpu_clock ? "process CPU" : "wall",
                o.smoke ? " (--smoke: reduced sizes)" : "");
        fprintf(out, "  ratio = best peer time / variant time (> 1: faster than the best peer)\n");
        if (!mj_bench_jit_threads())
            fprintf(out, "  threads: the JIT's threads option is not parallel yet; 1 thread only\n");
        fflush(out);
    }
    int n_res = 0;
    int64_t batches[16];
    int nb = w6_batches(&o, batches);
    rc = 0;
    for (int i = 0; i < nw && rc == 0; i++) {
        fprintf(err, "[%s] building %s (%s)\n", ws[i].id, ws[i].description, ws[i].spec);
        mj_bench_setup *s = NULL;
        if (mj_bench_setup_new(&ws[i], jit, &s) != MJ_OK) {
            fprintf(err, "%s: %s: %s\n", prog, ws[i].id, mj_last_error());
            rc = 1;
            break;
        }
        double trace_ms = mj_bench_setup_trace_ms(s);
        fprintf(err, "[%s] traced in %.2f ms\n", ws[i].id, trace_ms);
        for (int v = 0; v < mj_bench_variant_count(s); v++) {
            double cms = mj_bench_variant_compile_ms(s, v);
            if (cms >= 0)
                fprintf(err, "[%s] %s compiled in %.1f ms (trace + compile %.1f ms)\n", ws[i].id,
                        mj_bench_variant_name(s, v), cms, trace_ms + cms);
        }
        for (int k = 0; k < mj_bench_setup_skipped_count(s); k++)
            fprintf(err, "[%s] skipped %s\n", ws[i].id, mj_bench_setup_skipped(s, k));
        if (!strcmp(ws[i].id, "W6")) {
            for (int b = 0; b < nb && rc == 0; b++) {
                if (mj_bench_setup_set_batch(s, batches[b]) != MJ_OK) {
                    fprintf(err, "%s: W6: %s\n", prog, mj_last_error());
                    rc = 1;
                    break;
                }
                rc = run_one(s, &o, res, &n_res, out, err);
            }
        } else {
            rc = run_one(s, &o, res, &n_res, out, err);
        }
        mj_bench_setup_free(s);
    }
    if (rc == 0) {
        if (o.json) write_json(out, res, n_res, &o, cpu, llvm_cpu ? llvm_cpu : "?");
        else if (o.csv) write_csv(out, res, n_res);
        else {
            print_w6_matrix(out, res, n_res);
            print_w6_threads(out, res, n_res, false);
            print_w6_threads(out, res, n_res, true);
            fprintf(out, "\ncorrectness: every variant checked against eager before timing; "
                         "interp/compiled-exact/compiled-frozen bit-identical, compiled-fast and "
                         "peers within " TOLERANCE_RULE " (for the peers, K sums every layer's "
                         "in_features)\n");
        }
        fflush(out);
        if (o.plot) rc = write_plot(o.plot, res, n_res, err);
    }
    free(res);
    mj_jit_free(jit);
    return rc;
}

int mj_bench_main(int argc, char **argv) { return mj_bench_run(argc, argv, stdout, stderr); }
