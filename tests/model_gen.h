/* Random models for equivalence tests (tracing, interpreter, JIT).
 * Implemented in tests/model_gen.c. */
#ifndef MJT_MODEL_GEN_H
#define MJT_MODEL_GEN_H

#include <stdbool.h>
#include <stdint.h>

#include "maskjit.h"

typedef struct mjt_model_spec {
    int depth;                 /* number of Linear layers, 1..6               */
    int64_t widths[7];         /* widths[0] = in_features, widths[depth] = out */
    bool bias;
    double density;            /* FakeSparsity mask density: 0, 0.1, 0.5, 1   */
    bool structured;           /* row masks (FakeStructuredSparsity) instead  */
    mj_act act;                /* between layers (none after the last)        */
    bool user_parametrization; /* also chain a user parametrization (scale)   */
    char text[160];            /* human-readable description for messages     */
} mjt_model_spec;

/* Draws a spec: depth 1..6, widths 1..max_width, bias on/off, density from
 * {0, 0.1, 0.5, 1}, every activation, sometimes a user parametrization. */
void mjt_random_spec(mj_rng *rng, int max_width, mjt_model_spec *spec);

/* Builds the model (a Sequential: Linear, act, Linear, ...) with random
 * weights and masks from rng. */
mj_status mjt_build_model(const mjt_model_spec *spec, mj_rng *rng, mj_module **out);

/* randn input [batch, widths[0]] */
mj_status mjt_random_input(const mjt_model_spec *spec, int64_t batch, mj_rng *rng,
                           mj_tensor **out);

#endif
