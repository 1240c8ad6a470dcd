/* maskjit command-line tool: dispatches to the subcommands in cli/. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const cli_command commands[] = {
    {"demo", "[options]", "the seed model end to end: masks, trace, compile, timings", cmd_demo},
    {"run", "MODEL [options]", "one forward call (eager, traced or compiled)", cmd_run},
    {"check", "MODEL [options]", "equivalence check of every path against eager (for CI)",
     cmd_check},
    {"ir", "MODEL [options]", "print the traced IR (--frozen, --passes, --dot)", cmd_ir},
    {"trace", "MODEL -o FILE", "save a trace to replay without the model's code", cmd_trace},
    {"asm", "MODEL [options]", "print the optimised LLVM IR and host assembly", cmd_asm},
    {"bench", "[options]", "benchmarks: eager vs compiled vs OpenBLAS, LIBXSMM, oneDNN, XNNPACK", cmd_bench},
    {"cache", "stats|clear|prune [options]", "the compile cache: its size, clear it, prune it", cmd_cache},
    {"aot", "MODEL -o DIR", "compile ahead of time: an object file and a C header, no LLVM", cmd_aot},
};
enum { N_COMMANDS = sizeof commands / sizeof commands[0] };

static void usage(FILE *f) {
    fprintf(f,
            "maskjit %s — trace-and-replay JIT for parametrized (masked) models\n\n"
            "usage: maskjit <command> [options]   (maskjit <command> --help for details)\n\n"
            "commands:\n",
            MJ_VERSION_STRING);
    for (int i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-7s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nMODEL: mut | mut-nobias | mlp:IN,H1,...,OUT[:act=NAME][:bias=0|1] | a saved trace file\n");
}

const char *cli_test_fault;

int main(int argc, char **argv) {
    int rc = 2;
    /* the tests' fault injection (tests/test_export.c): read here, once, so
     * that the library reads no environment for it */
    cli_test_fault = getenv("MASKJIT_TEST_FAULT");
    if (argc < 2) {
        usage(stderr);
    } else if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
               strcmp(argv[1], "help") == 0) {
        usage(stdout);
        rc = 0;
    } else if (strcmp(argv[1], "--version") == 0) {
        printf("maskjit %s\n", MJ_VERSION_STRING);
        rc = 0;
    } else {
        const cli_command *cmd = NULL;
        for (int i = 0; i < N_COMMANDS; i++)
            if (strcmp(argv[1], commands[i].name) == 0) cmd = &commands[i];
        if (cmd) {
            rc = cmd->run(argc - 1, argv + 1);
        } else {
            fprintf(stderr, "maskjit: unknown command '%s'\n\n", argv[1]);
            usage(stderr);
        }
    }
    /* Release LLVM's static state so leak checkers see a clean exit. */
    mj_llvm_shutdown();
    return rc;
}
