/* maskjit bench: the benchmark program of bench/ (bench/README.md).
 *
 * The peer libraries (OpenBLAS, LIBXSMM, oneDNN, XNNPACK) are linked only
 * into maskjit-bench, so that every other command loads none of them
 * (OpenBLAS starts a thread pool as soon as it is loaded). This command runs
 * maskjit-bench from beside this executable (installed: the same bindir;
 * build tree: bench/), and falls back to the peerless harness linked in
 * here when it is not there. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench.h"
#include "cli.h"

/* Writes the path of an executable maskjit-bench into buf, or returns false. */
static bool find_bench_program(char *buf, size_t n) {
    char self[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) return false;
    self[len] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash) return false;
    *slash = '\0';
    static const char *const rel[] = {"/maskjit-bench", "/bench/maskjit-bench"};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
        int w = snprintf(buf, n, "%s%s", self, rel[i]);
        if (w > 0 && (size_t)w < n && access(buf, X_OK) == 0) return true;
    }
    return false;
}

int cmd_bench(int argc, char **argv) {
    char path[PATH_MAX];
    if (find_bench_program(path, sizeof path)) {
        char **args = calloc((size_t)argc + 1, sizeof *args);
        if (args) {
            args[0] = (char *)"maskjit bench"; /* its messages' prefix, as every command's */
            for (int i = 1; i < argc; i++) args[i] = argv[i];
            fflush(NULL);
            execv(path, args);
            free(args); /* exec failed: run the built-in harness below */
        }
    }
    fprintf(stderr, "maskjit bench: maskjit-bench not found beside this program; "
                    "running without peer libraries\n");
    return mj_bench_main(argc, argv);
}
