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

bool mj_op_families_agree(void) {
    for (int i = 0; i < MJ_OP_COUNT; i++) {
        const mj_op_info *info = &mj_op_table[i];
        uint32_t want = 0;
        int arity = -1; /* operands of an elementwise family */
        switch ((mj_op)i) {
        MJ_CASE_ACT_OPS: want = MJ_OPF_ELEMENTWISE | MJ_OPF_ACTIVATION, arity = 1; break;
        MJ_CASE_UNARY_MATH_OPS: want = MJ_OPF_ELEMENTWISE, arity = 1; break;
        MJ_CASE_BINARY_OPS: want = MJ_OPF_ELEMENTWISE, arity = 2; break;
        MJ_CASE_LEAF_OPS: want = MJ_OPF_LEAF; break;
        MJ_CASE_OTHER_OPS:
        case MJ_OP_COUNT: break;
        MJ_CASE_CNN_OPS: {
            int na;
            if (!mj_op_attrs((mj_op)i, &na) || na == 0) return false;
            break;
        }
        }
        if ((info->flags & (MJ_OPF_ELEMENTWISE | MJ_OPF_ACTIVATION | MJ_OPF_LEAF)) != want) return false;
        if (arity >= 0 && (info->min_operands != arity || info->max_operands != arity)) return false;
        if ((want & MJ_OPF_ACTIVATION) && mj_op_for_act(info->act) != (mj_op)i) return false;
    }
    return true;
}

mj_op mj_op_for_act(mj_act act) {
    static const mj_op op_of[MJ_ACT_COUNT] = {
#define MJ_ACT(id, name, torch_class, ir_op) [MJ_ACT_##id] = MJ_OP_##ir_op,
#include "maskjit/acts.def"
#undef MJ_ACT
    };
    if ((unsigned)act >= MJ_ACT_COUNT) return MJ_OP_COUNT;
    mj_op op = op_of[act];
    /* ops.def names the activation of each activation op: the tables agree */
    MJ_ASSERT(op == MJ_OP_COUNT || ((mj_op_table[op].flags & MJ_OPF_ACTIVATION) && mj_op_table[op].act == act));
    return op;
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
