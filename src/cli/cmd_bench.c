/* maskjit bench: the benchmark program of bench/ (bench/README.md). */
#include "../../bench/bench.h"
#include "cli.h"

int cmd_bench(int argc, char **argv) { return mj_bench_main(argc, argv); }
