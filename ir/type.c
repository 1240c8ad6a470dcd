/* mj_type helpers and the attributes of a node: the IR side of the op
 * vocabulary (src/core/op_table.c, src/core/attrs.c). */
#include <stdio.h>

#include "ir.h"

bool mj_type_equal(const mj_type *a, const mj_type *b) {
    if (a->rank != b->rank) return false;
    for (int i = 0; i < a->rank; i++)
        if (a->dims[i] != b->dims[i]) return false;
    return true;
}

bool mj_type_has_batch(const mj_type *t) {
    for (int i = 0; i < t->rank; i++)
        if (t->dims[i] == MJ_DIM_BATCH) return true;
    return false;
}

const char *mj_type_str(char *buf, size_t size, const mj_type *t) {
    if (!buf || size == 0) return buf;
    size_t pos = 0;
    int n = snprintf(buf, size, "f32[");
    if (n > 0) pos = (size_t)n;
    for (int i = 0; i < t->rank && i < MJ_MAX_RANK && pos < size; i++) {
        if (t->dims[i] == MJ_DIM_BATCH)
            n = snprintf(buf + pos, size - pos, "%sB", i ? "," : "");
        else
            n = snprintf(buf + pos, size - pos, "%s%lld", i ? "," : "", (long long)t->dims[i]);
        if (n > 0) pos += (size_t)n;
    }
    if (pos < size) snprintf(buf + pos, size - pos, "]");
    return buf;
}

void mj_type_shape(const mj_type *t, int64_t batch, int64_t *shape) {
    for (int i = 0; i < t->rank; i++) shape[i] = t->dims[i] == MJ_DIM_BATCH ? batch : t->dims[i];
}

int mj_reduce_dim(const mj_node *n, int rank) {
    return n->op == MJ_OP_LAYER_NORM ? rank - 1 : mj_attr_dim(&n->attrs, rank);
}
