/* maskjit-bench: the benchmark program (also `maskjit bench`). */
#include "bench/bench.h"

int main(int argc, char **argv) {
    int rc = mj_bench_main(argc, argv);
    mj_llvm_shutdown();
    return rc;
}
