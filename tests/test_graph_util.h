/* Graph-building helpers shared by the tests that build IR graphs by hand
 * (test_graphs_ops.c, test_jit.c). */
#ifndef MJT_TEST_GRAPH_UTIL_H
#define MJT_TEST_GRAPH_UTIL_H

#include <string.h>

#include "../ir/ir.h"
#include "test_util.h"

#define B MJ_DIM_BATCH

/* f32[d0, d1, d2] cut to rank dims */
static inline mj_type ty(int rank, int64_t d0, int64_t d1, int64_t d2) {
    mj_type t;
    memset(&t, 0, sizeof t);
    t.rank = rank;
    t.dims[0] = d0;
    t.dims[1] = d1;
    t.dims[2] = d2;
    return t;
}

/* The input "x" of type t. */
static inline int32_t input(mj_graph *g, mj_type t) {
    int32_t id;
    OK(mj_graph_add_leaf(g, MJ_OP_INPUT, "x", &t, NULL, &id));
    return id;
}

/* A param (or const) leaf holding a fresh randn tensor of type t. */
static inline int32_t leaf(mj_graph *g, mj_op op, const char *name, mj_type t, mj_rng *rng) {
    mj_tensor *v;
    OK(mj_tensor_randn(&v, t.rank, t.dims, rng));
    int32_t id;
    OK(mj_graph_add_leaf(g, op, name, &t, v, &id));
    mj_tensor_release(v);
    return id;
}

#endif
