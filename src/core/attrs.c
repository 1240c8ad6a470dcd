/* The attributes of the math ops: names, kinds, defaults (PyTorch's), and
 * their text form. One table; the parser, printer, verifier and CSE ask it
 * instead of switching on ops. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "op.h"

#define DIM_REQ {"dim", MJ_ATTR_DIM, 0, true, 0.0f, false}
#define KEEPDIM {"keepdim", MJ_ATTR_KEEPDIM, 0, false, 0.0f, false}

static const mj_attr_spec a_pow[] = {{"exponent", MJ_ATTR_FLOAT, 0, true, 0.0f, false}};
static const mj_attr_spec a_leaky[] = {{"slope", MJ_ATTR_FLOAT, 0, false, 0.01f, false}};
static const mj_attr_spec a_elu[] = {{"alpha", MJ_ATTR_FLOAT, 0, false, 1.0f, false}};
static const mj_attr_spec a_hardtanh[] = {{"min", MJ_ATTR_FLOAT, 0, false, -1.0f, false},
                                          {"max", MJ_ATTR_FLOAT, 1, false, 1.0f, false}};
static const mj_attr_spec a_softplus[] = {{"beta", MJ_ATTR_FLOAT, 0, false, 1.0f, false},
                                          {"threshold", MJ_ATTR_FLOAT, 1, false, 20.0f, false}};
static const mj_attr_spec a_reduce[] = {DIM_REQ, KEEPDIM};
static const mj_attr_spec a_softmax[] = {DIM_REQ};
static const mj_attr_spec a_layer_norm[] = {{"eps", MJ_ATTR_FLOAT, 0, false, 1e-5f, false}};
/* the CNN ops: torch.nn's defaults; slots are the MJ_CONV_* / MJ_POOL_* of ir.h */
static const mj_attr_spec a_conv2d[] = {{"stride", MJ_ATTR_PAIR, MJ_CONV_STRIDE, false, 1.0f, false},
                                        {"padding", MJ_ATTR_PAIR, MJ_CONV_PADDING, false, 0.0f, false},
                                        {"dilation", MJ_ATTR_PAIR, MJ_CONV_DILATION, false, 1.0f, false},
                                        {"groups", MJ_ATTR_INT, MJ_CONV_GROUPS, false, 1.0f, false}};
static const mj_attr_spec a_batch_norm[] = {{"eps", MJ_ATTR_FLOAT, 0, false, 1e-5f, false}};
static const mj_attr_spec a_max_pool[] = {{"kernel", MJ_ATTR_PAIR, MJ_POOL_KERNEL, true, 0.0f, false},
                                          {"stride", MJ_ATTR_PAIR, MJ_POOL_STRIDE, true, 0.0f, false},
                                          {"padding", MJ_ATTR_PAIR, MJ_POOL_PADDING, false, 0.0f, false},
                                          {"ceil_mode", MJ_ATTR_BOOL, MJ_POOL_CEIL, false, 0.0f, true}};
static const mj_attr_spec a_avg_pool[] = {{"kernel", MJ_ATTR_PAIR, MJ_POOL_KERNEL, true, 0.0f, false},
                                          {"stride", MJ_ATTR_PAIR, MJ_POOL_STRIDE, true, 0.0f, false},
                                          {"padding", MJ_ATTR_PAIR, MJ_POOL_PADDING, false, 0.0f, false},
                                          {"count_include_pad", MJ_ATTR_BOOL, MJ_POOL_COUNT_PAD, false, 1.0f, false},
                                          {"ceil_mode", MJ_ATTR_BOOL, MJ_POOL_CEIL, false, 0.0f, true}};
static const mj_attr_spec a_adaptive[] = {{"size", MJ_ATTR_PAIR, 0, true, 0.0f, false}};

#define N(a) (int)(sizeof a / sizeof a[0])

const mj_attr_spec *mj_op_attrs(mj_op op, int *n) {
    switch (op) {
    case MJ_OP_POW: *n = N(a_pow); return a_pow;
    case MJ_OP_LEAKY_RELU: *n = N(a_leaky); return a_leaky;
    case MJ_OP_ELU: *n = N(a_elu); return a_elu;
    case MJ_OP_HARDTANH: *n = N(a_hardtanh); return a_hardtanh;
    case MJ_OP_SOFTPLUS: *n = N(a_softplus); return a_softplus;
    case MJ_OP_SUM:
    case MJ_OP_MEAN: *n = N(a_reduce); return a_reduce;
    case MJ_OP_SOFTMAX:
    case MJ_OP_LOG_SOFTMAX: *n = N(a_softmax); return a_softmax;
    case MJ_OP_LAYER_NORM: *n = N(a_layer_norm); return a_layer_norm;
    case MJ_OP_CONV2D: *n = N(a_conv2d); return a_conv2d;
    case MJ_OP_BATCH_NORM: *n = N(a_batch_norm); return a_batch_norm;
    case MJ_OP_MAX_POOL2D: *n = N(a_max_pool); return a_max_pool;
    case MJ_OP_AVG_POOL2D: *n = N(a_avg_pool); return a_avg_pool;
    case MJ_OP_ADAPTIVE_AVG_POOL2D: *n = N(a_adaptive); return a_adaptive;
    default: *n = 0; return NULL; /* a subset: every other op takes no attributes */
    }
}

mj_attrs mj_attrs_default(mj_op op) {
    mj_attrs a;
    memset(&a, 0, sizeof a);
    int n;
    const mj_attr_spec *s = mj_op_attrs(op, &n);
    for (int i = 0; i < n; i++) {
        if (s[i].kind == MJ_ATTR_FLOAT) a.f[s[i].slot] = s[i].def;
        else if (s[i].kind == MJ_ATTR_KEEPDIM) a.keepdim = s[i].def != 0.0f;
        else if (s[i].kind == MJ_ATTR_INT || s[i].kind == MJ_ATTR_BOOL) a.i[s[i].slot] = (int32_t)s[i].def;
        else if (s[i].kind == MJ_ATTR_PAIR) a.i[s[i].slot] = a.i[s[i].slot + 1] = (int32_t)s[i].def;
    }
    return a;
}

bool mj_attrs_equal(const mj_attrs *a, const mj_attrs *b) {
    if (a->dim != b->dim || a->keepdim != b->keepdim) return false;
    return memcmp(a->f, b->f, sizeof a->f) == 0 && memcmp(a->i, b->i, sizeof a->i) == 0;
}

int mj_attr_dim(const mj_attrs *a, int rank) {
    if (a->dim < -rank || a->dim >= rank) return -1;
    return a->dim < 0 ? a->dim + rank : a->dim;
}

/* The shortest "%.*g" that strtof reads back to the same float ("20",
 * not "2e+01"; "1e-05"). */
static void format_float(char *buf, size_t size, float v) {
    if (v == 0.0f && signbit(v)) {
        snprintf(buf, size, "-0");
        return;
    }
    char best[48] = "";
    for (int prec = 1; prec <= 9; prec++) {
        char t[48];
        snprintf(t, sizeof t, "%.*g", prec, (double)v);
        if ((isnan(v) || strtof(t, NULL) == v) && (!best[0] || strlen(t) < strlen(best))) snprintf(best, sizeof best, "%s", t);
    }
    snprintf(buf, size, "%s", best);
}

void mj_attrs_format(mj_op op, const mj_attrs *a, char *buf, size_t size) {
    int n;
    const mj_attr_spec *s = mj_op_attrs(op, &n);
    size_t pos = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && pos < size; i++) {
        if (s[i].quiet && s[i].kind == MJ_ATTR_BOOL && a->i[s[i].slot] == (int32_t)s[i].def) continue;
        char v[48];
        switch (s[i].kind) {
        case MJ_ATTR_DIM: snprintf(v, sizeof v, "%d", (int)a->dim); break;
        case MJ_ATTR_KEEPDIM: snprintf(v, sizeof v, "%s", a->keepdim ? "true" : "false"); break;
        case MJ_ATTR_FLOAT: format_float(v, sizeof v, a->f[s[i].slot]); break;
        case MJ_ATTR_INT: snprintf(v, sizeof v, "%d", (int)a->i[s[i].slot]); break;
        case MJ_ATTR_PAIR: snprintf(v, sizeof v, "[%d,%d]", (int)a->i[s[i].slot], (int)a->i[s[i].slot + 1]); break;
        case MJ_ATTR_BOOL: snprintf(v, sizeof v, "%s", a->i[s[i].slot] ? "true" : "false"); break;
        }
        int k = snprintf(buf + pos, size - pos, "%s%s=%s", pos ? ", " : " {", s[i].name, v);
        if (k > 0) pos += (size_t)k;
    }
    if (pos && pos < size) snprintf(buf + pos, size - pos, "}");
}
