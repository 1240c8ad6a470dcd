/* maskjit — a trace-and-replay JIT for parametrized (masked) neural models.
 *
 * A short tour (full example: examples/quickstart.c):
 *
 *   mj_rng rng; mj_rng_seed(&rng, 0);
 *   mj_module *lin; mj_linear_new(&lin, 16, 16, true, &rng);
 *   mj_tensor *mask; mj_tensor_eye(&mask, 16);
 *   mj_parametrization *p; mj_fake_sparsity_new(&p, mask);
 *   mj_register_parametrization(lin, "weight", p);  // weight = mask * original
 *
 *   mj_graph *g;  mj_trace_module(lin, x, &g);       // record a forward call
 *   mj_graph_print(g, stdout);                        // the IR (docs/IR.md)
 *
 *   mj_jit *jit; mj_jit_new(&jit);
 *   mj_compile_options o; mj_compile_options_init(&o);
 *   mj_compiled *c; mj_jit_compile(jit, g, &o, &c);   // native code, host CPU
 *   mj_compiled_run(c, x, &y);                        // == eager, bit for bit
 *
 * Every call returns an mj_status; on failure mj_last_error() says why.
 */
#ifndef MASKJIT_H
#define MASKJIT_H

#include "maskjit/status.h"
#include "maskjit/tensor.h"
#include "maskjit/module.h"
#include "maskjit/graph.h"
#include "maskjit/jit.h"
#include "maskjit/models.h"
#include "maskjit/cnn.h"

#define MJ_VERSION_STRING "0.1.0"

#endif
