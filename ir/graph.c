/* Graph building, shape inference, graph surgery helpers, and the public
 * lifetime / inspection / bind / freeze functions of maskjit/graph.h. */
#include <stdarg.h>
#include <string.h>

#include "ir_core.h"

/* ---- types ---------------------------------------------------------------- */

mj_status mj_type_check(const mj_type *t, bool allow_batch, const char *what) {
    if (t->rank < 1 || t->rank > MJ_MAX_RANK)
        return mj_fail(MJ_ERR_SHAPE, "%s has rank %d (must be 1..%d)", what, t->rank, MJ_MAX_RANK);
    int64_t n = 1;
    for (int i = 0; i < t->rank; i++) {
        int64_t d = t->dims[i];
        if (d == MJ_DIM_BATCH) {
            if (!allow_batch)
                return mj_fail(MJ_ERR_SHAPE, "%s has the batch dim B at %d where only concrete sizes are allowed",
                               what, i);
            continue;
        }
        if (d < 0) return mj_fail(MJ_ERR_SHAPE, "%s has negative dim %lld", what, (long long)d);
        if (__builtin_mul_overflow(n, d, &n) || n > MJ_MAX_NUMEL)
            return mj_fail(MJ_ERR_LIMIT, "%s has more than 2^40 elements", what);
    }
    return MJ_OK;
}

void mj_type_of_tensor(const mj_tensor *t, mj_type *out) {
    memset(out, 0, sizeof *out);
    out->rank = t->rank;
    for (int i = 0; i < t->rank && i < MJ_MAX_RANK; i++) out->dims[i] = t->shape[i];
}

bool mj_ir_name_ok(const char *name) {
    if (!name) return false;
    size_t n = 0;
    for (const char *p = name; *p; p++, n++) {
        if (n >= MJ_IR_MAX_NAME) return false;
        if (*p < 0x20 || *p > 0x7e) return false;
    }
    return n > 0;
}

/* ---- shape inference ------------------------------------------------------ */

static bool dim_match(int64_t a, int64_t b) { return a == b; /* B (-1) matches only B */ }

static mj_status shape_err(mj_op op, const char *what, const mj_type *a, const mj_type *b) {
    char sa[96], sb[96];
    mj_type_str(sa, sizeof sa, a);
    if (b) {
        mj_type_str(sb, sizeof sb, b);
        return mj_fail(MJ_ERR_SHAPE, "%s: %s %s with %s", mj_op_table[op].name, what, sa, sb);
    }
    return mj_fail(MJ_ERR_SHAPE, "%s: %s %s", mj_op_table[op].name, what, sa);
}

/* linear / linear_act: x[..., in] w[out,in] b[out]? -> [..., out];
 * linear_add / linear_act_add: the same, then r of exactly that type (no
 * broadcasting: the fused epilogue reads r like y). */
static mj_status infer_linear(mj_op op, int n, const mj_type *const *t, mj_type *out) {
    const mj_type *x = t[0], *w = t[1];
    if (mj_op_has_residual(op)) n--;
    if (w->rank != 2) return shape_err(op, "weight must be rank 2, got", w, NULL);
    if (!dim_match(x->dims[x->rank - 1], w->dims[1]))
        return shape_err(op, "in_features differ: x", x, w);
    if (n == 3) {
        const mj_type *b = t[2];
        if (b->rank != 1 || !dim_match(b->dims[0], w->dims[0]))
            return shape_err(op, "bias does not fit the weight: bias", b, w);
    }
    *out = *x;
    out->dims[x->rank - 1] = w->dims[0];
    if (mj_op_has_residual(op) && !mj_type_equal(t[n], out))
        return shape_err(op, "residual does not have the result's type: residual", t[n], out);
    return MJ_OK;
}

/* The attributes must fit the op: zero for ops without, a valid dim, sane
 * float values. */
static mj_status check_attrs(mj_op op, const mj_attrs *a, const mj_type *x) {
    const char *name = mj_op_table[op].name;
    int na;
    const mj_attr_spec *spec = mj_op_attrs(op, &na);
    mj_attrs zero;
    memset(&zero, 0, sizeof zero);
    if (na == 0) {
        if (!mj_attrs_equal(a, &zero)) return mj_fail(MJ_ERR_INVALID, "%s takes no attributes", name);
        return MJ_OK;
    }
    bool has_dim = false, has_keepdim = false;
    for (int i = 0; i < na; i++) {
        has_dim = has_dim || spec[i].kind == MJ_ATTR_DIM;
        has_keepdim = has_keepdim || spec[i].kind == MJ_ATTR_KEEPDIM;
    }
    if (!has_dim && a->dim != 0) return mj_fail(MJ_ERR_INVALID, "%s takes no dim attribute", name);
    if (!has_keepdim && a->keepdim) return mj_fail(MJ_ERR_INVALID, "%s takes no keepdim attribute", name);
    if (has_dim && mj_attr_dim(a, x->rank) < 0) {
        char ts[96];
        return mj_fail(MJ_ERR_SHAPE, "%s: dim %d is out of range for %s (expected %d..%d)", name, (int)a->dim,
                       mj_type_str(ts, sizeof ts, x), -x->rank, x->rank - 1);
    }
    for (int k = 0; k < MJ_MAX_FATTRS; k++) {
        bool used = false;
        for (int i = 0; i < na; i++) used = used || (spec[i].kind == MJ_ATTR_FLOAT && spec[i].slot == k);
        if (!used && a->f[k] != 0.0f) return mj_fail(MJ_ERR_INVALID, "%s: stray float attribute %d", name, k);
    }
    unsigned iused = 0;
    for (int i = 0; i < na; i++) {
        if (spec[i].kind == MJ_ATTR_INT || spec[i].kind == MJ_ATTR_BOOL) iused |= 1u << spec[i].slot;
        if (spec[i].kind == MJ_ATTR_PAIR) iused |= 3u << spec[i].slot;
    }
    for (int k = 0; k < MJ_MAX_IATTRS; k++) {
        if (!(iused >> k & 1u) && a->i[k] != 0) return mj_fail(MJ_ERR_INVALID, "%s: stray integer attribute %d", name, k);
        if (a->i[k] < 0 || a->i[k] > MJ_ATTR_INT_MAX)
            return mj_fail(MJ_ERR_INVALID, "%s: integer attribute %d is %d, outside 0..%d", name, k, (int)a->i[k],
                           MJ_ATTR_INT_MAX);
    }
    for (int i = 0; i < na; i++)
        if (spec[i].kind == MJ_ATTR_BOOL && a->i[spec[i].slot] > 1)
            return mj_fail(MJ_ERR_INVALID, "%s: %s is %d (must be 0 or 1)", name, spec[i].name, (int)a->i[spec[i].slot]);
    if (op == MJ_OP_HARDTANH && !(a->f[0] <= a->f[1]))
        return mj_fail(MJ_ERR_INVALID, "hardtanh: min %g must not be greater than max %g", (double)a->f[0],
                       (double)a->f[1]);
    return MJ_OK;
}

/* x must be [N, C, H, W] (N may be B; C, H, W concrete). */
static mj_status check_nchw(mj_op op, const mj_type *x) {
    if (x->rank != 4) return shape_err(op, "input must be 4-D [N, C, H, W], got", x, NULL);
    for (int d = 1; d < 4; d++)
        if (x->dims[d] == MJ_DIM_BATCH) return shape_err(op, "only dim 0 of the input may be the batch B, got", x, NULL);
    return MJ_OK;
}

/* The CNN ops (attributes checked against the table already). */
static mj_status infer_cnn(mj_op op, int n, const mj_type *const *t, const mj_attrs *a, mj_type *r) {
    const mj_type *x = t[0];
    const char *name = mj_op_table[op].name;
    char b1[96], b2[96];
    if (op == MJ_OP_BATCH_NORM) {
        if (x->rank < 2) return shape_err(op, "input needs a channel dim (rank >= 2), got", x, NULL);
        for (int d = 1; d < x->rank; d++)
            if (x->dims[d] == MJ_DIM_BATCH) return shape_err(op, "only dim 0 of the input may be the batch B, got", x, NULL);
        static const char *const what[5] = {"", "mean", "var", "weight", "bias"};
        for (int k = 1; k < n; k++)
            if (t[k]->rank != 1 || t[k]->dims[0] != x->dims[1])
                return mj_fail(MJ_ERR_SHAPE, "batch_norm: %s %s does not fit the %lld channels of %s", what[k],
                               mj_type_str(b1, sizeof b1, t[k]), (long long)x->dims[1], mj_type_str(b2, sizeof b2, x));
        if (!(a->f[0] >= 0.0f)) /* as the eager kernel: NaN and negative refused */
            return mj_fail(MJ_ERR_INVALID, "batch_norm: eps %g must be >= 0", (double)a->f[0]);
        *r = *x;
        return MJ_OK;
    }
    MJ_TRY(check_nchw(op, x));
    int64_t H = x->dims[2], W = x->dims[3];
    *r = *x;
    if (op == MJ_OP_ADAPTIVE_AVG_POOL2D) {
        if (a->i[0] < 1 || a->i[1] < 1)
            return mj_fail(MJ_ERR_INVALID, "adaptive_avg_pool2d: size=[%d,%d] must be >= 1", (int)a->i[0], (int)a->i[1]);
        if (H < 1 || W < 1) return shape_err(op, "input is empty:", x, NULL);
        r->dims[2] = a->i[0];
        r->dims[3] = a->i[1];
        return MJ_OK;
    }
    int64_t oh, ow;
    if (op == MJ_OP_CONV2D) {
        const mj_type *w = t[1];
        const int32_t *st = &a->i[MJ_CONV_STRIDE], *pd = &a->i[MJ_CONV_PADDING], *dl = &a->i[MJ_CONV_DILATION];
        int64_t G = a->i[MJ_CONV_GROUPS];
        if (st[0] < 1 || st[1] < 1 || dl[0] < 1 || dl[1] < 1 || G < 1)
            return mj_fail(MJ_ERR_INVALID, "conv2d: stride=[%d,%d], dilation=[%d,%d] and groups=%d must be >= 1",
                           (int)st[0], (int)st[1], (int)dl[0], (int)dl[1], (int)G);
        if (w->rank != 4) return shape_err(op, "weight must be 4-D [out, in/groups, kh, kw], got", w, NULL);
        for (int d = 0; d < 4; d++)
            if (w->dims[d] == MJ_DIM_BATCH) return shape_err(op, "weight must have concrete dims, got", w, NULL);
        int64_t C = x->dims[1], O = w->dims[0];
        if (w->dims[1] * G != C || O % G)
            return mj_fail(MJ_ERR_SHAPE, "conv2d: input %s, weight %s and groups=%lld do not fit (need in channels = "
                           "weight dim 1 * groups, out channels divisible by groups)", mj_type_str(b1, sizeof b1, x),
                           mj_type_str(b2, sizeof b2, w), (long long)G);
        if (n == 3 && (t[2]->rank != 1 || t[2]->dims[0] != O))
            return shape_err(op, "bias does not fit the weight: bias", t[2], w);
        if (w->dims[2] < 1 || w->dims[3] < 1) return shape_err(op, "kernel is empty: weight", w, NULL);
        oh = mj_window_out(H, w->dims[2], st[0], pd[0], dl[0], false);
        ow = mj_window_out(W, w->dims[3], st[1], pd[1], dl[1], false);
        if (oh < 1 || ow < 1)
            return mj_fail(MJ_ERR_SHAPE, "conv2d: kernel %lldx%lld (dilation [%d,%d], padding [%d,%d]) does not fit "
                           "input %s", (long long)w->dims[2], (long long)w->dims[3], (int)dl[0], (int)dl[1],
                           (int)pd[0], (int)pd[1], mj_type_str(b1, sizeof b1, x));
        r->dims[1] = O;
    } else { /* max_pool2d, avg_pool2d */
        const int32_t *k = &a->i[MJ_POOL_KERNEL], *st = &a->i[MJ_POOL_STRIDE], *pd = &a->i[MJ_POOL_PADDING];
        for (int i = 0; i < 2; i++) {
            if (k[i] < 1 || st[i] < 1)
                return mj_fail(MJ_ERR_INVALID, "%s: kernel=[%d,%d] and stride=[%d,%d] must be >= 1", name, (int)k[0],
                               (int)k[1], (int)st[0], (int)st[1]);
            if (2 * pd[i] > k[i])
                return mj_fail(MJ_ERR_INVALID, "%s: padding=[%d,%d] must be at most half the kernel [%d,%d] (as in "
                               "PyTorch)", name, (int)pd[0], (int)pd[1], (int)k[0], (int)k[1]);
        }
        oh = mj_window_out(H, k[0], st[0], pd[0], 1, a->i[MJ_POOL_CEIL] != 0);
        ow = mj_window_out(W, k[1], st[1], pd[1], 1, a->i[MJ_POOL_CEIL] != 0);
        if (oh < 1 || ow < 1)
            return mj_fail(MJ_ERR_SHAPE, "%s: window %dx%d does not fit input %s", name, (int)k[0], (int)k[1],
                           mj_type_str(b1, sizeof b1, x));
    }
    r->dims[2] = oh;
    r->dims[3] = ow;
    return MJ_OK;
}

/* Broadcasts dims a[0..na) with b[0..nb) aligned on the right into r
 * (NumPy rules; B with B or 1 gives B). */
static bool broadcast_dims(const int64_t *a, int na, const int64_t *b, int nb, int64_t *r, int *nr) {
    *nr = na > nb ? na : nb;
    for (int i = 0; i < *nr; i++) {
        int ia = na - *nr + i, ib = nb - *nr + i;
        int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
        if (da == db) r[i] = da;
        else if (da == 1) r[i] = db;
        else if (db == 1) r[i] = da;
        else return false;
    }
    return true;
}

/* A dim attribute d of a rank-r operand, -r <= d < r, made non-negative. */
static mj_status norm_dim(mj_op op, const char *what, int r, int8_t *d) {
    if (*d < -r || *d >= r)
        return mj_fail(MJ_ERR_SHAPE, "%s: %s=%d is out of range for rank %d (-%d..%d)", mj_op_table[op].name, what,
                       (int)*d, r, r, r - 1);
    if (*d < 0) *d = (int8_t)(*d + r);
    return MJ_OK;
}

/* The shape ops: matmul (batched), transpose, permute, slice, cat. */
static mj_status infer_shape_op(mj_op op, int n, const mj_type *const *t, mj_shape_attrs *sa, mj_type *r) {
    const mj_type *x = t[0];
    char b1[96];
    switch (op) {
    case MJ_OP_MATMUL: {
        const mj_type *a = t[0], *b = t[1];
        if (a->rank < 2 || b->rank < 2) return shape_err(op, "needs operands of rank 2 to 4, got", a, b);
        if (!dim_match(a->dims[a->rank - 1], b->dims[b->rank - 2])) return shape_err(op, "inner dims differ:", a, b);
        if (!broadcast_dims(a->dims, a->rank - 2, b->dims, b->rank - 2, r->dims, &r->rank))
        return shape_err(op, "cannot broadcast the batch dims of", a, b);
        r->dims[r->rank] = a->dims[a->rank - 2];
        r->dims[r->rank + 1] = b->dims[b->rank - 1];
        r->rank += 2;
        return MJ_OK;
    }
    case MJ_OP_TRANSPOSE:
        if (x->rank < 2) return shape_err(op, "needs an operand of rank 2 to 4, got", x, NULL);
        if (sa->dim0 == sa->dim1) { /* the default: the last two dims */
            sa->dim0 = (int8_t)(x->rank - 2);
            sa->dim1 = (int8_t)(x->rank - 1);
        }
        MJ_TRY(norm_dim(op, "dim0", x->rank, &sa->dim0));
        MJ_TRY(norm_dim(op, "dim1", x->rank, &sa->dim1));
        if (sa->dim0 == sa->dim1)
            return mj_fail(MJ_ERR_SHAPE, "transpose: dim0 and dim1 are both %d (they must differ)", (int)sa->dim0);
        if (sa->dim0 > sa->dim1) {
            int8_t tmp = sa->dim0;
            sa->dim0 = sa->dim1;
            sa->dim1 = tmp;
        }
        *r = *x;
        r->dims[sa->dim0] = x->dims[sa->dim1];
        r->dims[sa->dim1] = x->dims[sa->dim0];
        return MJ_OK;
    case MJ_OP_PERMUTE: {
        bool seen[MJ_MAX_RANK] = {0};
        for (int d = 0; d < MJ_MAX_RANK; d++) {
            if (d >= x->rank) {
                if (sa->perm[d] != 0) return shape_err(op, "perm has more entries than the rank of", x, NULL);
                continue;
            }
            MJ_TRY(norm_dim(op, "a perm entry", x->rank, &sa->perm[d]));
            if (seen[sa->perm[d]])
                return mj_fail(MJ_ERR_SHAPE, "permute: perm names dim %d twice (it must be a permutation of 0..%d)",
                               (int)sa->perm[d], x->rank - 1);
            seen[sa->perm[d]] = true;
        }
        *r = *x;
        for (int d = 0; d < x->rank; d++) r->dims[d] = x->dims[sa->perm[d]];
        return MJ_OK;
    }
    case MJ_OP_SLICE: {
        MJ_TRY(norm_dim(op, "dim", x->rank, &sa->dim));
        int64_t size = x->dims[sa->dim];
        if (size == MJ_DIM_BATCH)
            return mj_fail(MJ_ERR_SHAPE, "slice: cannot slice %s along dim %d, the batch B",
                           mj_type_str(b1, sizeof b1, x), (int)sa->dim);
        if (sa->start < 0 || sa->start > sa->end || sa->end > size)
            return mj_fail(MJ_ERR_SHAPE, "slice: start=%lld, end=%lld do not fit dim %d of %s (need 0 <= start <= end <= %lld)",
                           (long long)sa->start, (long long)sa->end, (int)sa->dim, mj_type_str(b1, sizeof b1, x),
                           (long long)size);
        *r = *x;
        r->dims[sa->dim] = sa->end - sa->start;
        return MJ_OK;
    }
    case MJ_OP_CAT: {
        MJ_TRY(norm_dim(op, "dim", x->rank, &sa->dim));
        *r = *x;
        int64_t sum = 0;
        for (int k = 0; k < n; k++) {
            if (t[k]->rank != x->rank) return shape_err(op, "operands differ in rank:", x, t[k]);
            for (int d = 0; d < x->rank; d++)
                if (d != sa->dim && t[k]->dims[d] != x->dims[d]) return shape_err(op, "operands differ outside dim:", x, t[k]);
            int64_t dk = t[k]->dims[sa->dim];
            if (dk == MJ_DIM_BATCH)
                return mj_fail(MJ_ERR_SHAPE, "cat: cannot concatenate along dim %d, the batch B of %s", (int)sa->dim,
                               mj_type_str(b1, sizeof b1, t[k]));
            if (__builtin_add_overflow(sum, dk, &sum)) return mj_fail(MJ_ERR_LIMIT, "cat: size overflow");
        }
        r->dims[sa->dim] = sum;
        return MJ_OK;
    }
    default: break; /* a subset: mj_infer_type_full passes only these ops */
    }
    MJ_ASSERT(!"not a shape op");
}

static bool has_shape_attrs(mj_op op) {
    return op == MJ_OP_TRANSPOSE || op == MJ_OP_PERMUTE || op == MJ_OP_SLICE || op == MJ_OP_CAT;
}

mj_status mj_infer_type(const mj_graph *g, mj_op op, int n, const int32_t *operands, mj_act act,
                        const mj_type *declared, mj_type *out) {
    mj_attrs a;
    memset(&a, 0, sizeof a);
    mj_shape_attrs sa;
    memset(&sa, 0, sizeof sa);
    return mj_infer_type_full(g, op, n, operands, act, &a, &sa, declared, out);
}

mj_status mj_infer_type_attrs(const mj_graph *g, mj_op op, int n, const int32_t *operands, mj_act act,
                              const mj_attrs *attrs, const mj_type *declared, mj_type *out) {
    mj_shape_attrs sa;
    memset(&sa, 0, sizeof sa);
    return mj_infer_type_full(g, op, n, operands, act, attrs, &sa, declared, out);
}

mj_status mj_infer_type_sa(const mj_graph *g, mj_op op, int n, const int32_t *operands, mj_act act,
                           mj_shape_attrs *sa, const mj_type *declared, mj_type *out) {
    mj_attrs a;
    memset(&a, 0, sizeof a);
    return mj_infer_type_full(g, op, n, operands, act, &a, sa, declared, out);
}

mj_status mj_infer_type_full(const mj_graph *g, mj_op op, int n, const int32_t *operands, mj_act act,
                             const mj_attrs *attrs, mj_shape_attrs *sa, const mj_type *declared, mj_type *out) {
    if ((unsigned)op >= MJ_OP_COUNT) return mj_fail(MJ_ERR_INVALID, "unknown op %d", (int)op);
    const mj_op_info *info = &mj_op_table[op];
    if (info->flags & MJ_OPF_LEAF) {
        if (!declared) return mj_fail(MJ_ERR_INVALID, "%s: a leaf needs a declared type", info->name);
        MJ_TRY(mj_type_check(declared, op == MJ_OP_INPUT, info->name));
        *out = *declared;
        return MJ_OK;
    }
    if (n < info->min_operands || n > info->max_operands) {
        if (info->min_operands == info->max_operands)
            return mj_fail(MJ_ERR_INVALID, "%s takes %d operands, got %d", info->name,
                           info->min_operands, n);
        return mj_fail(MJ_ERR_INVALID, "%s takes %d to %d operands, got %d", info->name,
                       info->min_operands, info->max_operands, n);
    }
    const mj_type *t[MJ_MAX_OPERANDS];
    for (int i = 0; i < n; i++) {
        if (operands[i] < 0 || operands[i] >= g->n_nodes)
            return mj_fail(MJ_ERR_INVALID, "%s: operand %d is %%%d, not a value of the graph (%d nodes)",
                           info->name, i, (int)operands[i], (int)g->n_nodes);
        t[i] = &g->nodes[operands[i]].type;
        if (t[i]->rank < 1 || t[i]->rank > MJ_MAX_RANK)
            return mj_fail(MJ_ERR_INVALID, "%s: operand %%%d has invalid rank %d", info->name,
                           (int)operands[i], t[i]->rank);
    }
    if (info->flags & MJ_OPF_ACT_ATTR) {
        if (act <= MJ_ACT_NONE || act >= MJ_ACT_COUNT)
            return mj_fail(MJ_ERR_INVALID, "%s needs an activation {act=...}, got %d", info->name, (int)act);
    } else if (act != MJ_ACT_NONE) {
        return mj_fail(MJ_ERR_INVALID, "%s takes no activation attribute", info->name);
    }
    if (declared) MJ_TRY(mj_type_check(declared, true, "declared type"));
    MJ_TRY(check_attrs(op, attrs, t[0]));
    if (!has_shape_attrs(op)) {
        static const mj_shape_attrs zero;
        if (memcmp(sa, &zero, sizeof zero) != 0)
            return mj_fail(MJ_ERR_INVALID, "%s takes no shape attributes", info->name);
    }

    mj_type r;
    memset(&r, 0, sizeof r);
    bool declared_is_source = false;
    switch (op) {
    case MJ_OP_MATMUL:
    case MJ_OP_TRANSPOSE:
    case MJ_OP_PERMUTE:
    case MJ_OP_SLICE:
    case MJ_OP_CAT:
        MJ_TRY(infer_shape_op(op, n, t, sa, &r));
        break;
    case MJ_OP_LINEAR:
    case MJ_OP_LINEAR_ACT:
    case MJ_OP_LINEAR_ADD:
    case MJ_OP_LINEAR_ACT_ADD:
        MJ_TRY(infer_linear(op, n, t, &r));
        break;
    case MJ_OP_EXPAND:
        r = *t[0];
        if (n == 2) {
            if (t[1]->rank != 1) return shape_err(op, "bias must be rank 1, got", t[1], NULL);
            r.dims[r.rank - 1] = t[1]->dims[0];
        } else {
            if (!declared) return mj_fail(MJ_ERR_SHAPE, "expand: without a bias the type must be declared");
            if (declared->rank != t[0]->rank) return shape_err(op, "declared type does not fit x:", declared, t[0]);
            for (int i = 0; i < r.rank - 1; i++)
                if (declared->dims[i] != t[0]->dims[i])
                    return shape_err(op, "declared type does not fit x:", declared, t[0]);
            if (declared->dims[r.rank - 1] == MJ_DIM_BATCH)
                return shape_err(op, "the width must be concrete, declared", declared, NULL);
            r.dims[r.rank - 1] = declared->dims[r.rank - 1];
            declared_is_source = true;
        }
        break;
    case MJ_OP_RESHAPE: {
        if (!declared) return mj_fail(MJ_ERR_SHAPE, "reshape: the target type must be declared");
        int64_t pa = 1, pb = 1;
        int ba = 0, bb = 0;
        for (int i = 0; i < t[0]->rank; i++) {
            if (t[0]->dims[i] == MJ_DIM_BATCH) ba++;
            else if (__builtin_mul_overflow(pa, t[0]->dims[i], &pa)) return mj_fail(MJ_ERR_LIMIT, "reshape: size overflow");
        }
        for (int i = 0; i < declared->rank; i++) {
            if (declared->dims[i] == MJ_DIM_BATCH) bb++;
            else if (__builtin_mul_overflow(pb, declared->dims[i], &pb)) return mj_fail(MJ_ERR_LIMIT, "reshape: size overflow");
        }
        if (pa != pb || ba != bb) return shape_err(op, "element counts differ:", t[0], declared);
        r = *declared;
        declared_is_source = true;
        break;
    }
    case MJ_OP_SUM:
    case MJ_OP_MEAN: {
        int d = mj_attr_dim(attrs, t[0]->rank);
        r = *t[0];
        if (attrs->keepdim) {
            r.dims[d] = 1;
        } else {
            if (t[0]->rank == 1) return shape_err(op, "without keepdim would make a rank-0 value from", t[0], NULL);
            for (int i = d; i < r.rank - 1; i++) r.dims[i] = r.dims[i + 1];
            r.dims[--r.rank] = 0;
        }
        break;
    }
    case MJ_OP_SOFTMAX:
    case MJ_OP_LOG_SOFTMAX:
        r = *t[0];
        break;
    case MJ_OP_LAYER_NORM: {
        int64_t last = t[0]->dims[t[0]->rank - 1];
        if (last == MJ_DIM_BATCH) return shape_err(op, "normalises the last dim, which must be concrete, got", t[0], NULL);
        for (int k = 1; k < n; k++)
            if (t[k]->rank != 1 || t[k]->dims[0] != last)
                return shape_err(op, k == 1 ? "weight does not fit the last dim: weight" : "bias does not fit the last dim: bias",
                                 t[k], t[0]);
        r = *t[0];
        break;
    }
    MJ_CASE_CNN_OPS:
        MJ_TRY(infer_cnn(op, n, t, attrs, &r));
        break;
    MJ_CASE_UNARY_MATH_OPS:
    MJ_CASE_ACT_OPS:
        r = *t[0];
        break;
    MJ_CASE_BINARY_OPS: {
        const mj_type *a = t[0], *b = t[1];
        r.rank = a->rank > b->rank ? a->rank : b->rank;
        for (int i = 0; i < r.rank; i++) {
            int ia = a->rank - r.rank + i, ib = b->rank - r.rank + i;
            int64_t da = ia >= 0 ? a->dims[ia] : 1, db = ib >= 0 ? b->dims[ib] : 1;
            if (da == db) r.dims[i] = da;
            else if (da == 1) r.dims[i] = db;
            else if (db == 1) r.dims[i] = da;
            else return shape_err(op, "cannot broadcast", a, b);
        }
        break;
    }
    MJ_CASE_LEAF_OPS:
    case MJ_OP_COUNT: MJ_ASSERT(!"leaves are typed and unknown ops rejected above");
    }
    if (declared && !declared_is_source && !mj_type_equal(declared, &r))
        return shape_err(op, "declared type differs from the inferred one: declared", declared, &r);
    MJ_TRY(mj_type_check(&r, true, info->name));
    *out = r;
    return MJ_OK;
}

/* ---- building ------------------------------------------------------------- */

mj_status mj_graph_new(mj_graph **out) {
    if (!out) return mj_fail(MJ_ERR_INVALID, "mj_graph_new: out is NULL");
    mj_graph *g = mj_alloc(sizeof *g);
    if (!g) return MJ_ERR_NOMEM;
    *out = g;
    return MJ_OK;
}

mj_status mj_graph_add_leaf(mj_graph *g, mj_op op, const char *name, const mj_type *type,
                            mj_tensor *tensor, int32_t *id) {
    if (!g || !type) return mj_fail(MJ_ERR_INVALID, "mj_graph_add_leaf: NULL argument");
    if ((unsigned)op >= MJ_OP_COUNT || !(mj_op_table[op].flags & MJ_OPF_LEAF))
        return mj_fail(MJ_ERR_INVALID, "mj_graph_add_leaf: op %d is not a leaf", (int)op);
    const char *opn = mj_op_table[op].name;
    if (!mj_ir_name_ok(name))
        return mj_fail(MJ_ERR_INVALID, "%s: name must be 1..%d printable ASCII characters", opn,
                       MJ_IR_MAX_NAME);
    char what[64];
    snprintf(what, sizeof what, "%s type", opn);
    MJ_TRY(mj_type_check(type, op == MJ_OP_INPUT, what));
    if (tensor) {
        if (op == MJ_OP_INPUT) return mj_fail(MJ_ERR_INVALID, "input \"%s\": an input has no tensor", name);
        mj_type tt;
        mj_type_of_tensor(tensor, &tt);
        if (!mj_type_equal(&tt, type)) {
            char a[96], b[96];
            return mj_fail(MJ_ERR_SHAPE, "%s \"%s\": tensor is %s but the type is %s", opn, name,
                           mj_type_str(a, sizeof a, &tt), mj_type_str(b, sizeof b, type));
        }
    }
    if (g->n_nodes >= MJ_MAX_NODES)
        return mj_fail(MJ_ERR_LIMIT, "graph has more than %d nodes", MJ_MAX_NODES);
    char *copy = mj_strdup(name);
    if (!copy) return MJ_ERR_NOMEM;
    mj_status s = mj_grow((void **)&g->nodes, &g->cap_nodes, g->n_nodes + 1, sizeof *g->nodes);
    if (s != MJ_OK) {
        free(copy);
        return s;
    }
    mj_node *n = &g->nodes[g->n_nodes];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->type = *type;
    n->name = copy;
    n->tensor = tensor ? mj_tensor_retain(tensor) : NULL;
    if (id) *id = g->n_nodes;
    g->n_nodes++;
    return MJ_OK;
}

mj_status mj_graph_add_op(mj_graph *g, mj_op op, int n, const int32_t *operands, mj_act act,
                          const mj_type *declared, int32_t *id) {
    return mj_graph_add_op_full(g, op, n, operands, act, NULL, NULL, declared, id);
}

mj_status mj_graph_add_op_attrs(mj_graph *g, mj_op op, int n, const int32_t *operands, mj_act act,
                                const mj_attrs *attrs, const mj_type *declared, int32_t *id) {
    return mj_graph_add_op_full(g, op, n, operands, act, attrs, NULL, declared, id);
}

mj_status mj_graph_add_op_sa(mj_graph *g, mj_op op, int n, const int32_t *operands, mj_act act,
                             const mj_shape_attrs *sa, const mj_type *declared, int32_t *id) {
    return mj_graph_add_op_full(g, op, n, operands, act, NULL, sa, declared, id);
}

mj_status mj_graph_add_op_full(mj_graph *g, mj_op op, int n, const int32_t *operands, mj_act act,
                               const mj_attrs *attrs, const mj_shape_attrs *shape_attrs, const mj_type *declared,
                               int32_t *id) {
    if (!g || (n > 0 && !operands)) return mj_fail(MJ_ERR_INVALID, "mj_graph_add_op: NULL argument");
    if ((unsigned)op >= MJ_OP_COUNT || (mj_op_table[op].flags & MJ_OPF_LEAF))
        return mj_fail(MJ_ERR_INVALID, "mj_graph_add_op: op %d is not an operation", (int)op);
    mj_attrs a = attrs ? *attrs : mj_attrs_default(op);
    mj_type t;
    mj_shape_attrs sa;
    if (shape_attrs) sa = *shape_attrs;
    else memset(&sa, 0, sizeof sa);
    MJ_TRY(mj_infer_type_full(g, op, n, operands, act, &a, &sa, declared, &t));
    if (g->n_nodes >= MJ_MAX_NODES)
        return mj_fail(MJ_ERR_LIMIT, "graph has more than %d nodes", MJ_MAX_NODES);
    MJ_TRY(mj_grow((void **)&g->nodes, &g->cap_nodes, g->n_nodes + 1, sizeof *g->nodes));
    mj_node *nd = &g->nodes[g->n_nodes];
    memset(nd, 0, sizeof *nd);
    nd->op = op;
    nd->n_operands = n;
    for (int i = 0; i < n; i++) nd->operands[i] = operands[i];
    nd->type = t;
    nd->act = act;
    nd->attrs = a;
    nd->sa = sa;
    if (id) *id = g->n_nodes;
    g->n_nodes++;
    return MJ_OK;
}

mj_status mj_graph_add_output(mj_graph *g, int32_t id) {
    if (!g) return mj_fail(MJ_ERR_INVALID, "mj_graph_add_output: graph is NULL");
    if (id < 0 || id >= g->n_nodes)
        return mj_fail(MJ_ERR_INVALID, "output %%%d is not a value of the graph (%d nodes)", (int)id,
                       (int)g->n_nodes);
    MJ_TRY(mj_grow((void **)&g->outputs, &g->cap_outputs, g->n_outputs + 1, sizeof *g->outputs));
    g->outputs[g->n_outputs++] = id;
    return MJ_OK;
}

mj_status mj_graph_add_warning(mj_graph *g, const char *fmt, ...) {
    if (!g || !fmt) return mj_fail(MJ_ERR_INVALID, "mj_graph_add_warning: NULL argument");
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (len < 0) return mj_fail(MJ_ERR_INVALID, "mj_graph_add_warning: bad format");
    char *msg = mj_alloc((size_t)len + 1);
    if (!msg) return MJ_ERR_NOMEM;
    va_start(ap, fmt);
    vsnprintf(msg, (size_t)len + 1, fmt, ap);
    va_end(ap);
    mj_status s = mj_grow((void **)&g->warnings, &g->cap_warnings, g->n_warnings + 1, sizeof *g->warnings);
    if (s != MJ_OK) {
        free(msg);
        return s;
    }
    g->warnings[g->n_warnings++] = msg;
    return MJ_OK;
}

int32_t mj_graph_find_leaf(const mj_graph *g, mj_op op, const char *name) {
    if (!g || !name) return -1;
    for (int32_t i = 0; i < g->n_nodes; i++)
        if (g->nodes[i].op == op && g->nodes[i].name && strcmp(g->nodes[i].name, name) == 0) return i;
    return -1;
}

/* ---- surgery --------------------------------------------------------------- */

mj_status mj_graph_compact(mj_graph *g, const bool *keep) {
    if (!g || !keep) return mj_fail(MJ_ERR_INVALID, "mj_graph_compact: NULL argument");
    for (int32_t i = 0; i < g->n_nodes; i++) {
        if (!keep[i]) continue;
        for (int k = 0; k < g->nodes[i].n_operands; k++)
            if (!keep[g->nodes[i].operands[k]])
                return mj_fail(MJ_ERR_INVALID, "compact: %%%d is dropped but used by %%%d",
                               (int)g->nodes[i].operands[k], (int)i);
    }
    for (int32_t i = 0; i < g->n_outputs; i++)
        if (!keep[g->outputs[i]])
            return mj_fail(MJ_ERR_INVALID, "compact: output %%%d is dropped", (int)g->outputs[i]);
    int32_t *map = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *map);
    if (!map) return MJ_ERR_NOMEM;
    int32_t j = 0;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        mj_node *n = &g->nodes[i];
        if (!keep[i]) {
            map[i] = -1;
            free(n->name);
            mj_tensor_release(n->tensor);
            continue;
        }
        map[i] = j;
        if (j != i) g->nodes[j] = *n;
        mj_node *m = &g->nodes[j];
        for (int k = 0; k < m->n_operands; k++) m->operands[k] = map[m->operands[k]];
        j++;
    }
    for (int32_t i = 0; i < g->n_outputs; i++) g->outputs[i] = map[g->outputs[i]];
    g->n_nodes = j;
    free(map);
    return MJ_OK;
}

void mj_graph_replace_uses(mj_graph *g, int32_t from, int32_t to) {
    for (int32_t i = 0; i < g->n_nodes; i++)
        for (int k = 0; k < g->nodes[i].n_operands; k++)
            if (g->nodes[i].operands[k] == from) g->nodes[i].operands[k] = to;
    for (int32_t i = 0; i < g->n_outputs; i++)
        if (g->outputs[i] == from) g->outputs[i] = to;
}

bool *mj_graph_live(const mj_graph *g) {
    bool *live = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *live);
    if (!live) return NULL;
    for (int32_t i = 0; i < g->n_outputs; i++) live[g->outputs[i]] = true;
    /* Operands precede their users (SSA order): one backward sweep suffices. */
    for (int32_t i = g->n_nodes - 1; i >= 0; i--) {
        const mj_node *n = &g->nodes[i];
        if (n->op == MJ_OP_INPUT) live[i] = true;
        if (live[i])
            for (int k = 0; k < n->n_operands; k++) live[n->operands[k]] = true;
    }
    return live;
}

int32_t *mj_graph_use_counts(const mj_graph *g) {
    int32_t *c = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *c);
    bool *live = mj_graph_live(g);
    if (!c || !live) {
        free(c);
        free(live);
        return NULL;
    }
    /* only live users count: simplify leaves the nodes it bypasses for dce,
     * and their uses must not keep a fusion from happening before it */
    for (int32_t i = 0; i < g->n_outputs; i++) c[g->outputs[i]]++;
    for (int32_t i = 0; i < g->n_nodes; i++)
        if (live[i])
            for (int k = 0; k < g->nodes[i].n_operands; k++) c[g->nodes[i].operands[k]]++;
    free(live);
    return c;
}

bool *mj_graph_input_free(const mj_graph *g) {
    bool *f = mj_alloc_array((size_t)g->n_nodes + 1, sizeof *f);
    if (!f) return NULL;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (n->op == MJ_OP_INPUT) continue;
        bool ok = true;
        for (int k = 0; k < n->n_operands; k++) ok = ok && f[n->operands[k]];
        f[i] = ok;
    }
    return f;
}

/* ---- lifetime ---------------------------------------------------------------- */

void mj_graph_free(mj_graph *g) {
    if (!g) return;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        free(g->nodes[i].name);
        mj_tensor_release(g->nodes[i].tensor);
    }
    for (int32_t i = 0; i < g->n_warnings; i++) free(g->warnings[i]);
    free(g->nodes);
    free(g->outputs);
    free(g->warnings);
    free(g);
}

mj_status mj_graph_clone(const mj_graph *g, mj_graph **out) {
    if (!g || !out) return mj_fail(MJ_ERR_INVALID, "mj_graph_clone: NULL argument");
    mj_graph *c;
    MJ_TRY(mj_graph_new(&c));
    mj_status s = MJ_OK;
    if (g->n_nodes > 0) {
        c->nodes = mj_alloc_array((size_t)g->n_nodes, sizeof *c->nodes);
        if (!c->nodes) goto nomem;
        c->cap_nodes = g->n_nodes;
        for (int32_t i = 0; i < g->n_nodes; i++) {
            c->nodes[i] = g->nodes[i];
            c->nodes[i].name = NULL;
            c->nodes[i].tensor = NULL;
            c->n_nodes = i + 1; /* so that mj_graph_free cleans up a partial clone */
            if (g->nodes[i].name && !(c->nodes[i].name = mj_strdup(g->nodes[i].name))) goto nomem;
            c->nodes[i].tensor = g->nodes[i].tensor ? mj_tensor_retain(g->nodes[i].tensor) : NULL;
        }
    }
    if (g->n_outputs > 0) {
        c->outputs = mj_alloc_array((size_t)g->n_outputs, sizeof *c->outputs);
        if (!c->outputs) goto nomem;
        memcpy(c->outputs, g->outputs, (size_t)g->n_outputs * sizeof *c->outputs);
        c->n_outputs = c->cap_outputs = g->n_outputs;
    }
    for (int32_t i = 0; i < g->n_warnings; i++)
        if ((s = mj_graph_add_warning(c, "%s", g->warnings[i])) != MJ_OK) goto fail;
    *out = c;
    return MJ_OK;
nomem:
    s = MJ_ERR_NOMEM;
fail:
    mj_graph_free(c);
    return s;
}

mj_status mj_graph_expose(const mj_graph *g, int n, const int *ids, mj_graph **out) {
    if (!g || !out || n < 1 || !ids) return mj_fail(MJ_ERR_INVALID, "mj_graph_expose: no graph or no values");
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= g->n_nodes)
            return mj_fail(MJ_ERR_INVALID, "mj_graph_expose: %%%d is not a value of the graph (%d nodes)", ids[i],
                           (int)g->n_nodes);
    mj_graph *c;
    MJ_TRY(mj_graph_clone(g, &c));
    c->n_outputs = 0;
    mj_status s = MJ_OK;
    for (int i = 0; i < n && s == MJ_OK; i++) s = mj_graph_add_output(c, ids[i]);
    if (s != MJ_OK) {
        mj_graph_free(c);
        return s;
    }
    *out = c;
    return MJ_OK;
}

/* ---- bind / freeze ------------------------------------------------------------- */

static bool wants_binding(const mj_node *n) {
    return n->op == MJ_OP_PARAM || (n->op == MJ_OP_CONST && !n->tensor);
}

mj_status mj_graph_bind(mj_graph *g, const mj_tensor_dict *d) {
    if (!g || !d) return mj_fail(MJ_ERR_INVALID, "mj_graph_bind: NULL argument");
    /* Validate everything first: on error the graph is unchanged. */
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (!wants_binding(n)) continue;
        mj_tensor *t = mj_tensor_dict_get(d, n->name);
        if (!t) {
            if (n->tensor) continue; /* an already bound param keeps its tensor */
            return mj_fail(MJ_ERR_KEY, "bind: no tensor named \"%s\" for %%%d (%s)", n->name, (int)i,
                           mj_op_table[n->op].name);
        }
        mj_type tt;
        mj_type_of_tensor(t, &tt);
        if (!mj_type_equal(&tt, &n->type)) {
            char a[96], b[96];
            return mj_fail(MJ_ERR_SHAPE, "bind: \"%s\" is %s but %%%d (%s) has type %s", n->name,
                           mj_type_str(a, sizeof a, &tt), (int)i, mj_op_table[n->op].name,
                           mj_type_str(b, sizeof b, &n->type));
        }
    }
    for (int32_t i = 0; i < g->n_nodes; i++) {
        mj_node *n = &g->nodes[i];
        if (!wants_binding(n)) continue;
        mj_tensor *t = mj_tensor_dict_get(d, n->name);
        if (!t) continue;
        mj_tensor_retain(t);
        mj_tensor_release(n->tensor);
        n->tensor = t;
    }
    return MJ_OK;
}

mj_status mj_graph_freeze(mj_graph *g) { return mj_graph_freeze_as(g, true); }

mj_status mj_graph_freeze_as(mj_graph *g, bool copy) {
    if (!g) return mj_fail(MJ_ERR_INVALID, "mj_graph_freeze: graph is NULL");
    int32_t n_params = 0;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (n->op != MJ_OP_PARAM) continue;
        if (!n->tensor)
            return mj_fail(MJ_ERR_STATE, "freeze: param \"%s\" (%%%d) is not bound", n->name, (int)i);
        if (mj_graph_find_leaf(g, MJ_OP_CONST, n->name) >= 0)
            return mj_fail(MJ_ERR_KEY, "freeze: param \"%s\" (%%%d) would clash with the const of that name",
                           n->name, (int)i);
        n_params++;
    }
    if (n_params == 0) return MJ_OK;
    /* Copy every tensor before changing any node (all or nothing). */
    mj_tensor **copies = mj_alloc_array((size_t)n_params, sizeof *copies);
    if (!copies) return MJ_ERR_NOMEM;
    int32_t k = 0;
    mj_status s = MJ_OK;
    for (int32_t i = 0; i < g->n_nodes && s == MJ_OK; i++)
        if (g->nodes[i].op == MJ_OP_PARAM) {
            if (copy) s = mj_tensor_clone(&copies[k], g->nodes[i].tensor);
            else copies[k] = mj_tensor_retain(g->nodes[i].tensor);
            if (s == MJ_OK) k++;
        }
    if (s != MJ_OK) {
        for (int32_t i = 0; i < k; i++) mj_tensor_release(copies[i]);
        free(copies);
        return s;
    }
    k = 0;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        mj_node *n = &g->nodes[i];
        if (n->op != MJ_OP_PARAM) continue;
        mj_tensor_release(n->tensor);
        n->tensor = copies[k++];
        n->op = MJ_OP_CONST;
    }
    free(copies);
    return MJ_OK;
}

/* ---- inspection ------------------------------------------------------------------ */

int mj_graph_node_count(const mj_graph *g) { return g ? g->n_nodes : 0; }

static const mj_node *input_node(const mj_graph *g, int i) {
    if (!g || i < 0) return NULL;
    int k = 0;
    for (int32_t j = 0; j < g->n_nodes; j++)
        if (g->nodes[j].op == MJ_OP_INPUT && k++ == i) return &g->nodes[j];
    return NULL;
}

const char *mj_graph_input_name(const mj_graph *g, int i) {
    const mj_node *n = input_node(g, i);
    return n ? n->name : NULL;
}

int mj_graph_input_count(const mj_graph *g) {
    int k = 0;
    if (g)
        for (int32_t j = 0; j < g->n_nodes; j++) k += g->nodes[j].op == MJ_OP_INPUT;
    return k;
}

int mj_graph_output_count(const mj_graph *g) { return g ? g->n_outputs : 0; }

/* The full rank of input i's type (its dims include the batch dim, reported
 * as -1 by mj_graph_input_dim); 0 if there is no input i. */
int mj_graph_input_rank(const mj_graph *g, int i) {
    const mj_node *n = input_node(g, i);
    return n ? n->type.rank : 0;
}

int64_t mj_graph_input_dim(const mj_graph *g, int i, int d) {
    const mj_node *n = input_node(g, i);
    if (!n || d < 0 || d >= n->type.rank) return 0;
    return n->type.dims[d];
}

int mj_graph_output_rank(const mj_graph *g, int i) {
    if (!g || i < 0 || i >= g->n_outputs) return 0;
    return g->nodes[g->outputs[i]].type.rank;
}

int64_t mj_graph_output_dim(const mj_graph *g, int i, int d) {
    if (!g || i < 0 || i >= g->n_outputs) return 0;
    const mj_type *t = &g->nodes[g->outputs[i]].type;
    if (d < 0 || d >= t->rank) return 0;
    return t->dims[d];
}

int mj_graph_warning_count(const mj_graph *g) { return g ? g->n_warnings : 0; }

const char *mj_graph_warning(const mj_graph *g, int i) {
    if (!g || i < 0 || i >= g->n_warnings) return NULL;
    return g->warnings[i];
}

mj_status mj_graph_run(mj_graph *g, const mj_tensor *input, mj_tensor **output) {
    if (!g || !output) return mj_fail(MJ_ERR_INVALID, "mj_graph_run: NULL argument");
    if (mj_graph_input_count(g) != 1 || g->n_outputs != 1)
        return mj_fail(MJ_ERR_INVALID, "mj_graph_run: the graph has %d inputs and %d outputs (needs 1 and 1); use mj_graph_run_n",
                       mj_graph_input_count(g), (int)g->n_outputs);
    return mj_interp_run(g, 1, &input, 1, output);
}

mj_status mj_graph_run_n(mj_graph *g, int n_in, const mj_tensor *const *in, int n_out, mj_tensor **out) {
    if (!g) return mj_fail(MJ_ERR_INVALID, "mj_graph_run_n: graph is NULL");
    return mj_interp_run(g, n_in, in, n_out, out);
}
