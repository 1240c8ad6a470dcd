/* The verdict of `maskjit check`, apart from the command so the tests can
 * call it. */
#ifndef MJ_CLI_CHECK_VERDICT_H
#define MJ_CLI_CHECK_VERDICT_H

#include <stdbool.h>
#include <stdint.h>

#include "maskjit.h"

/* How one path compared with the reference over every input. */
typedef struct check_tally {
    bool ran;
    bool must_be_exact; /* an exact path: judged by `exact`; else by `close` */
    bool exact;         /* every output check_exact_equal to the reference   */
    bool close;         /* every output within rtol/atol of the reference    */
    bool has_expected;  /* the input file held `expected`...                 */
    bool exp_close;     /* ...and this path's output was within rtol/atol of it */
} check_tally;

/* Exact mode's promise (docs/numerics.md): same shape, and every element
 * either NaN in both or the same 32 bits (so -0 and +0 differ; NaN sign and
 * payload are not compared). *first gets the first element that breaks it,
 * -1 if none (or if the shapes differ). */
bool check_exact_equal(const mj_tensor *got, const mj_tensor *want, int64_t *first);

/* The tolerance a non-exact comparison of output `out` of g uses: the
 * user's rtol / atol where given (>= 0), else fast mode's bound for that
 * output at this batch against ref (mj_graph_output_tolerance,
 * docs/numerics.md). */
mj_tolerance check_tolerance(const mj_graph *g, int out, int64_t batch, const mj_tensor *ref, double rtol,
                             double atol);

/* A path that did not run is ok; else it must meet its own standard and be
 * close to `expected` when there is one. */
bool check_path_ok(const check_tally *t);

/* ok[p] for each of the n paths; true when every one is ok. */
bool check_verdict(const check_tally *t, int n, bool *ok);

#endif
