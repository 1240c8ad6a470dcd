/* Shared pieces of the maskjit command-line tool. */
#ifndef MJ_CLI_H
#define MJ_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "maskjit.h"

/* Exit codes: 0 success, 1 a check failed or the model could not run, 2 bad usage. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2, CLI_HELP = -1 };

/* ---- options --------------------------------------------------------------- */
/* OPT_RANGED: a decimal integer within its cli_int's [min, max] (use it for
 * every new numeric option); OPT_INT: a decimal integer in 0..2^40 into an
 * int64_t; OPT_REAL: a finite number >= 0. Anything else (overflow,
 * trailing text, out of range) is a usage error naming the option.
 * OPT_STRINGS: a repeatable string option, its values in order. */
typedef enum { OPT_FLAG, OPT_STRING, OPT_INT, OPT_RANGED, OPT_REAL, OPT_STRINGS } cli_opt_kind;
#define CLI_MAX_STRINGS 64
typedef struct cli_strings {
    const char *v[CLI_MAX_STRINGS];
    int n;
} cli_strings;
typedef struct cli_opt {
    const char *name; /* "--weights" */
    cli_opt_kind kind;
    void *dest;       /* bool*, const char**, int64_t*, cli_int*, double*, cli_strings* */
    const char *help; /* one line for --help */
} cli_opt;

/* An integer option's value (the default until given) and its range. */
typedef struct cli_int {
    int64_t value, min, max;
} cli_int;

/* Limits of the numeric options (threads: the library's MJ_MAX_THREADS);
 * batch: the random input is batch x in_features floats. */
#define CLI_MAX_BATCH (INT64_C(1) << 20)
#define CLI_MAX_SEED INT64_MAX

typedef struct cli_command {
    const char *name;
    const char *synopsis; /* "MODEL [options]" */
    const char *summary;  /* one line */
    int (*run)(int argc, char **argv);
} cli_command;

/* Parses argv[1..] (argv[0] is the subcommand). Positional arguments go to
 * pos (at most max_pos). Returns CLI_OK, CLI_HELP (usage printed to stdout)
 * or CLI_USAGE (message printed to stderr). */
int cli_parse(const cli_command *cmd, int argc, char **argv, const cli_opt *opts, int n_opts,
              const char **pos, int max_pos, int *n_pos, const char *details);
/* cli_parse for a command taking exactly one MODEL (model not NULL) or no
 * positional argument (model NULL). Returns true to go on; false with *rc
 * the command's exit code: CLI_OK after --help, else a usage error (printed). */
bool cli_parse_args(const cli_command *cmd, int argc, char **argv, const cli_opt *opts, int n_opts,
                    const char *details, const char **model, int *rc);
#define CLI_N_OPTS(opts) ((int)(sizeof(opts) / sizeof((opts)[0])))
void cli_print_usage(FILE *f, const cli_command *cmd, const cli_opt *opts, int n_opts,
                     const char *details);

/* "maskjit CMD: message" on stderr; returns code. */
int cli_error(const char *cmd, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The same with mj_last_error() appended. */
int cli_mj_error(const char *cmd, const char *what);

/* Colour only on a terminal and without NO_COLOR. */
bool cli_use_color(FILE *f);

/* ---- models ---------------------------------------------------------------- */
typedef struct cli_model {
    mj_module *module;    /* NULL when MODEL is a saved trace              */
    mj_graph *graph;      /* the trace (loaded, or made by cli_model_trace) */
    mj_tensor_dict *file; /* --weights file or export (may hold input/expected) */
    bool exported;        /* MODEL was an export or a saved trace: file may   */
                          /* hold input/expected (and .batchN sets)           */
    int64_t in_features;
    const char *name;     /* as given */
    bool random_inputs;   /* cli_model_inputs: seeded random ones even where */
                          /* an export stores its input (run --batch N)       */
} cli_model;

/* MODEL is a saved trace file, an export from tools/export_torch.py (its
 * metadata names the spec; weights, masks, input and expected are inside),
 * or a spec (see models.h).
 * weights may be NULL (seeded default init). Prints errors itself. */
int cli_model_load(const char *cmd, const char *model, const char *weights, uint64_t seed,
                   cli_model *out);
/* Traces the module on ones(batch, in_features); no-op for a loaded trace. */
int cli_model_trace(const char *cmd, cli_model *cm);
void cli_model_free(cli_model *cm);

/* The model's inputs and outputs: a saved trace's, else the module's
 * (after tracing, the graph's). Input i is named like the graph's input
 * ("input" when there is one). */
int cli_model_input_count(const cli_model *cm);
int cli_model_output_count(const cli_model *cm);
const char *cli_model_input_name(const cli_model *cm, int i, char *buf, size_t size);

/* The model's inputs, x[0..cli_model_input_count): from the safetensors
 * file `path` (tensors named by `names`, one per input, else by the
 * model's input names; dict kept in *file_out when not NULL), else from an
 * export's file, else seeded randn at `batch` (input 0 from seed, input i
 * from seed + i * 1000003). Prints errors itself; on error x is empty. */
int cli_model_inputs(const char *cmd, cli_model *cm, const char *path, const cli_strings *names,
                     int64_t batch, uint64_t seed, mj_tensor **x, mj_tensor_dict **file_out);
/* Name of output j in files: "output" when there is one, else "output.<j>". */
const char *cli_output_name(int n_out, int j, char *buf, size_t size);

/* Reads tensor `name` from a safetensors file (dict kept in *file_out when
 * not NULL, else freed). */
int cli_load_input(const char *cmd, const char *path, const char *name, mj_tensor **x,
                   mj_tensor_dict **file_out);
/* Seeded randn [batch, in]. */
int cli_random_input(const char *cmd, int64_t batch, int64_t in_features, uint64_t seed,
                     mj_tensor **x);

/* Parses "eager|traced|compiled" etc.; numeric/frozen flags into options. */
typedef enum { MODE_EAGER, MODE_TRACED, MODE_COMPILED } cli_mode;
int cli_parse_mode(const char *cmd, const char *text, cli_mode *mode);

/* Runs one forward in the given mode (compiling when needed; jit may be
 * NULL for eager/traced). */
int cli_forward(const char *cmd, cli_model *cm, cli_mode mode, mj_jit *jit,
                const mj_compile_options *o, const mj_tensor *x, mj_tensor **y);
/* What a compile took: the library's statistics (wall clock) and the
 * process CPU time of mj_jit_compile (on a loaded machine the wall clock
 * mostly measures the other jobs). */
typedef struct cli_compile_info {
    mj_compile_stats stats;
    double cpu_ms;
} cli_compile_info;
/* The same with the model's n_in inputs and n_out outputs; info (may be
 * NULL) receives what the compile took in compiled mode. */
int cli_forward_n(const char *cmd, cli_model *cm, cli_mode mode, mj_jit *jit,
                  const mj_compile_options *o, int n_in, const mj_tensor *const *x, int n_out,
                  mj_tensor **y, cli_compile_info *info);

/* ---- subcommands ----------------------------------------------------------- */
/* Test-only: $MASKJIT_TEST_FAULT, read once by main (NULL if unset); the
 * commands that compare paths pass it to their JIT (jit/jit_test.h). */
extern const char *cli_test_fault;

int cmd_demo(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_ir(int argc, char **argv);
int cmd_trace(int argc, char **argv);
int cmd_asm(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_cache(int argc, char **argv);
int cmd_aot(int argc, char **argv);

/* Median wall time in ns of fn(ctx) over rounds (each round sized ~min_ms). */
double cli_time_ns(int (*fn)(void *), void *ctx, int rounds, double min_ms);
/* CPU time of the process (every thread) in ms. */
double cli_cpu_ms(void);

#endif
