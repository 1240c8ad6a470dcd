/* Helper of test_trace_reliability.c: a fresh process (no test runner heap
 * to borrow from) that builds SPEC, traces it, limits its own address space
 * to what it uses now plus HEADROOM_MIB, and compiles (frozen or live, one
 * thread, no cache).
 *   usage: maskjit-limit-child SPEC IN_FEATURES HEADROOM_MIB frozen|live
 * Exit: 0 compiled, 10 + mj_status if the compile failed (message on
 * stderr), 2-4 setup trouble. Dying by a signal is what the test forbids. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "maskjit.h"

static long vm_size_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = -1;
    if (f) {
        if (fscanf(f, "%ld", &pages) != 1) pages = -1;
        fclose(f);
    }
    return pages < 0 ? -1 : pages * sysconf(_SC_PAGESIZE);
}

/* SPEC traced on a random [3, in] input; NULL on failure. The module and
 * the input stay alive: the process ends soon. */
static mj_graph *trace_spec(const char *spec, int64_t in) {
    mj_rng rng;
    mj_rng_seed(&rng, 0);
    mj_module *m = NULL;
    mj_tensor *x = NULL;
    mj_graph *g = NULL;
    if (mj_model_from_spec(spec, &rng, &m) || mj_tensor_randn(&x, 2, (int64_t[]){3, in}, &rng) ||
        mj_trace_module(m, x, &g))
        return NULL;
    return g;
}

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    mj_graph *g = trace_spec(argv[1], atoll(argv[2]));
    mj_jit *jit = NULL;
    if (!g || mj_jit_new(&jit)) {
        fprintf(stderr, "limit child: setup: %s\n", mj_last_error());
        return 2;
    }
    long now = vm_size_bytes();
    if (now < 0) return 3;
    struct rlimit lim = {.rlim_cur = (rlim_t)now + ((rlim_t)atol(argv[3]) << 20),
                         .rlim_max = RLIM_INFINITY};
    if (setrlimit(RLIMIT_AS, &lim) != 0) return 4;
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.frozen = strcmp(argv[4], "frozen") == 0;
    o.use_cache = false;
    o.threads = 1;
    mj_compiled *c = NULL;
    mj_status s = mj_jit_compile(jit, g, &o, &c);
    if (s != MJ_OK) {
        fprintf(stderr, "limit child: %s: %s\n", mj_status_name(s), mj_last_error());
        return 10 + (int)s;
    }
    /* no clean-up: the process ends here */
    return 0;
}
