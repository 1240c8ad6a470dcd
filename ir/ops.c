/* The op table (generated from ops.def) and mj_type helpers. */
#include <string.h>

#include "ir.h"

const mj_op_info mj_op_table[MJ_OP_COUNT] = {
#define MJ_OP(e, text, lo, hi, flags, act) [MJ_OP_##e] = {text, lo, hi, flags, act},
#include "ops.def"
#undef MJ_OP
};

mj_op mj_op_from_name(const char *name, size_t len) {
    if (!name) return MJ_OP_COUNT;
    for (int i = 0; i < MJ_OP_COUNT; i++) {
        const char *n = mj_op_table[i].name;
        if (strlen(n) == len && memcmp(n, name, len) == 0) return (mj_op)i;
    }
    return MJ_OP_COUNT;
}

mj_op mj_op_for_act(mj_act act) {
    if (act == MJ_ACT_NONE) return MJ_OP_COUNT;
    for (int i = 0; i < MJ_OP_COUNT; i++)
        if ((mj_op_table[i].flags & MJ_OPF_ACTIVATION) && mj_op_table[i].act == act) return (mj_op)i;
    return MJ_OP_COUNT;
}

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
