/* maskjit command-line tool: dispatches to the subcommands in src/cli/. */
#include <stdio.h>
#include <string.h>

#include "maskjit.h"

static void usage(FILE *f) {
    fprintf(f, "usage: maskjit <command> [options]\n"
               "commands: demo, --help\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    fprintf(stderr, "maskjit: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
