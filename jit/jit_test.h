/* Test-only hooks of the JIT, apart from jit_internal.h so that a caller
 * needs no LLVM headers: the CLI sets them once, from its environment at
 * startup (cli/main.c); the library itself reads no environment for
 * them. */
#ifndef MJ_JIT_TEST_H
#define MJ_JIT_TEST_H

#include "maskjit/jit.h"

/* Fault injection: every later compile by jit adds 0.5 to each element
 * that a node of op `op_name` (e.g. "layer_norm") computes (in the general
 * lowering: not sparse or small-chain linear layers), so the tests can see
 * `maskjit check` name the node. NULL or "" turns it off. Such compiles
 * bypass the compile cache (neither read nor written). MJ_ERR_INVALID for
 * a name that is no op. */
mj_status mj_jit_inject_fault(mj_jit *jit, const char *op_name);

/* How c's last call ran: 0 on the calling thread alone, 1 its rows split
 * over the pool, 2 in column mode (each wide layer's columns, each sparse
 * layer's rows). With concurrent calls, one of theirs. */
int mj_compiled_last_split(const mj_compiled *c);

/* How long c's pool threads spin before they sleep, waiting for a call, for
 * the mutex or for the other threads (default 0.2 ms); 0: they sleep at
 * once, so the tests reach every sleeping path on every call. No effect
 * without a pool. */
void mj_compiled_pool_spin_for_tests(mj_compiled *c, int64_t ns);

/* Where c's pool threads ran: how many times a worker started its share
 * on its caller's CPU, how many times one then moved to another CPU, and
 * the CPU a worker last ended its share on (-1 before any; all 0 and -1
 * without a pool). */
typedef struct mj_pool_placement {
    int colocated, moved, worker_cpu;
} mj_pool_placement;
mj_pool_placement mj_compiled_pool_placement_for_tests(const mj_compiled *c);

#endif
