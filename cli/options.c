/* Option parsing, error reporting and timing shared by the subcommands. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

void cli_print_usage(FILE *f, const cli_command *cmd, const cli_opt *opts, int n_opts,
                     const char *details) {
    fprintf(f, "usage: maskjit %s %s\n\n%s\n", cmd->name, cmd->synopsis, cmd->summary);
    if (details) fprintf(f, "\n%s", details);
    fprintf(f, "\noptions:\n");
    for (int i = 0; i < n_opts; i++) {
        const char *arg = opts[i].kind == OPT_FLAG     ? ""
                          : opts[i].kind == OPT_INT    ? " N"
                          : opts[i].kind == OPT_RANGED ? " N"
                          : opts[i].kind == OPT_REAL   ? " X"
                                                       : " VALUE";
        char left[48];
        snprintf(left, sizeof left, "%s%s", opts[i].name, arg);
        fprintf(f, "  %-24s %s\n", left, opts[i].help);
    }
    fprintf(f, "  %-24s %s\n", "--help", "show this help");
}

/* Decimal digits only (a '-' first when lo < 0): no blanks, '+', hex or
 * trailing text, and no silent wrap or truncation of large values. */
static bool parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    if (!((s[0] >= '0' && s[0] <= '9') || (s[0] == '-' && lo < 0 && s[1] >= '0' && s[1] <= '9')))
        return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static bool parse_real(const char *s, double *out) {
    if (!((s[0] >= '0' && s[0] <= '9') || s[0] == '.')) return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || v < 0) return false;
    *out = v;
    return true;
}

int cli_parse(const cli_command *cmd, int argc, char **argv, const cli_opt *opts, int n_opts,
              const char **pos, int max_pos, int *n_pos, const char *details) {
    *n_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            cli_print_usage(stdout, cmd, opts, n_opts, details);
            return CLI_HELP;
        }
        if (a[0] == '-' && a[1] != '\0') {
            /* Accept --name=value as well as --name value. */
            const char *eq = strchr(a, '=');
            size_t len = eq ? (size_t)(eq - a) : strlen(a);
            const cli_opt *o = NULL;
            for (int k = 0; k < n_opts; k++)
                if (strlen(opts[k].name) == len && strncmp(opts[k].name, a, len) == 0) o = &opts[k];
            if (!o)
                return cli_error(cmd->name, CLI_USAGE, "unknown option '%s' (see maskjit %s --help)",
                                 a, cmd->name);
            if (o->kind == OPT_FLAG) {
                if (eq) return cli_error(cmd->name, CLI_USAGE, "option %s takes no value", o->name);
                *(bool *)o->dest = true;
                continue;
            }
            const char *val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
            if (!val) return cli_error(cmd->name, CLI_USAGE, "option %s needs a value", o->name);
            if (o->kind == OPT_STRING) {
                *(const char **)o->dest = val;
            } else if (o->kind == OPT_STRINGS) {
                cli_strings *l = o->dest;
                if (l->n >= CLI_MAX_STRINGS)
                    return cli_error(cmd->name, CLI_USAGE, "option %s is given more than %d times", o->name,
                                     CLI_MAX_STRINGS);
                l->v[l->n++] = val;
            } else if (o->kind == OPT_INT) {
                if (!parse_int(val, 0, INT64_C(1) << 40, (int64_t *)o->dest))
                    return cli_error(cmd->name, CLI_USAGE,
                                     "option %s needs a non-negative integer, got '%s'", o->name,
                                     val);
            } else if (o->kind == OPT_RANGED) {
                cli_int *v = o->dest;
                if (!parse_int(val, v->min, v->max, &v->value))
                    return cli_error(cmd->name, CLI_USAGE,
                                     "option %s needs an integer in %lld..%lld, got '%s'", o->name,
                                     (long long)v->min, (long long)v->max, val);
            } else {
                if (!parse_real(val, (double *)o->dest))
                    return cli_error(cmd->name, CLI_USAGE,
                                     "option %s needs a finite number >= 0, got '%s'", o->name,
                                     val);
            }
            continue;
        }
        if (*n_pos >= max_pos)
            return cli_error(cmd->name, CLI_USAGE, "unexpected argument '%s' (see maskjit %s --help)",
                             a, cmd->name);
        pos[(*n_pos)++] = a;
    }
    return CLI_OK;
}

bool cli_parse_args(const cli_command *cmd, int argc, char **argv, const cli_opt *opts, int n_opts,
                    const char *details, const char **model, int *rc) {
    const char *pos[1];
    int n_pos;
    *rc = cli_parse(cmd, argc, argv, opts, n_opts, pos, model ? 1 : 0, &n_pos, details);
    if (*rc != CLI_OK) {
        if (*rc == CLI_HELP) *rc = CLI_OK;
        return false;
    }
    if (model && n_pos != 1) {
        *rc = cli_error(cmd->name, CLI_USAGE, "missing MODEL (see maskjit %s --help)", cmd->name);
        return false;
    }
    if (model) *model = pos[0];
    return true;
}

int cli_error(const char *cmd, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "maskjit %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

int cli_mj_error(const char *cmd, const char *what) {
    return cli_error(cmd, CLI_FAIL, "%s: %s", what, mj_last_error());
}

bool cli_use_color(FILE *f) {
    const char *nc = getenv("NO_COLOR");
    return isatty(fileno(f)) && !(nc && *nc);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double cli_cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double cli_time_ns(int (*fn)(void *), void *ctx, int rounds, double min_ms) {
    /* Size one round so it lasts about min_ms, then take the median round. */
    int64_t iters = 1;
    for (;;) {
        double t0 = now_seconds();
        for (int64_t i = 0; i < iters; i++) fn(ctx);
        double dt = now_seconds() - t0;
        if (dt * 1e3 >= min_ms || iters >= (1 << 24)) break;
        iters *= 2;
    }
    if (rounds < 1) rounds = 1;
    if (rounds > 64) rounds = 64;
    double per[64];
    for (int r = 0; r < rounds; r++) {
        double t0 = now_seconds();
        for (int64_t i = 0; i < iters; i++) fn(ctx);
        per[r] = (now_seconds() - t0) * 1e9 / (double)iters;
    }
    qsort(per, (size_t)rounds, sizeof per[0], cmp_double);
    return per[rounds / 2];
}
