/* libFuzzer harness: differential testing of the five ways to run a graph.
 *
 * The input bytes drive a generator of random *valid* graphs over the ops
 * of src/core/ops.def (built with mj_graph_add_op_full, so every graph passes the
 * verifier: a refusal is a bug of this generator and aborts as such), with
 * random shapes (ranks 1-4, broadcasts, B moved by permute/reshape),
 * attributes, masked linear layers and convolutions recorded as the
 * tracer does (`mul(param, param)`), the CNN ops on rank-4 values, masks of any density, batch 1-33, and NaN, +-inf,
 * +-0 and denormals in inputs and weights. Each graph runs on the
 * interpreter (the reference), and compiled exact live, exact frozen, fast
 * live and fast frozen:
 *  - exact paths must give the interpreter's bits, NaN sign and payload
 *    excepted (check_exact_equal of `maskjit check`, docs/numerics.md);
 *    exact frozen is exempt for a run in which a linear/matmul with an
 *    input-free weight holding a zero sees an inf or NaN input (the one
 *    documented exception: frozen code skips zero weights);
 *  - fast paths are compared where the reference is finite, within fast
 *    mode's bound (mj_fast_tolerance: it grows with the longest sum into
 *    the output) plus 64 times how far the reference itself moves when
 *    every intermediate value is nudged by float32 rounding noise of that
 *    sum length, so ill-conditioned chains (a layer_norm of a
 *    cancellation) are not reported as findings. An output computed from
 *    a domain-restricted op (log, sqrt, rsqrt, pow with a negative or
 *    fractional exponent, div) whose operand comes within that bound of
 *    the edge (0) is ill-conditioned: fast mode may give NaN for a
 *    legitimately different rounding, so only the exact paths judge it.
 * Any other result aborts with the graph's text, the path and the element.
 * The compile cache is off: every graph is new. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "maskjit.h"
#include "cli/check_verdict.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { MAX_OPS = 12, MAX_POOL = 64, MAX_IN = 3, MAX_OUT = 4, MAX_BATCH = 33 };
/* Elements of one value at the largest batch: keeps runs cheap. */
#define MAX_VALUE_NUMEL 12000

typedef struct gen {
    const uint8_t *d;
    size_t n, pos;
    uint64_t rng;
    mj_graph *g;
    int32_t pool[MAX_POOL];
    int n_pool;
    int n_leaves;
    int special; /* 0: none; else about 1 in `special` weights is a special value */
} gen;

static unsigned take(gen *G, unsigned mod) {
    if (mod <= 1) return 0;
    unsigned v = G->pos < G->n ? G->d[G->pos++] : 0;
    return v % mod;
}

static uint64_t next_rng(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}
static double unit(uint64_t *s) { return (double)(next_rng(s) >> 11) * 0x1p-53; }

static const float specials[] = {NAN, -NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 1e-40f, -1e-40f,
                                 FLT_MIN, 3e38f, -3e38f, 1e20f};

/* Roughly randn values, and 1 in `special` a special value. */
static void fill(uint64_t *s, float *p, int64_t n, int special) {
    for (int64_t i = 0; i < n; i++) {
        if (special && next_rng(s) % (uint64_t)special == 0) {
            p[i] = specials[next_rng(s) % (sizeof specials / sizeof specials[0])];
            continue;
        }
        p[i] = (float)((unit(s) + unit(s) + unit(s) - 1.5) * 2.0);
    }
}

static void die(const char *what, const mj_graph *g) {
    fprintf(stderr, "fuzz_graph_diff: %s\n", what);
    if (g) {
        char *text = mj_graph_to_string(g);
        fprintf(stderr, "---- graph\n%s", text ? text : "(cannot print)\n");
        free(text);
    }
    fprintf(stderr, "---- last error: %s\n", mj_last_error());
    abort();
}

static const mj_type *ty(const gen *G, int32_t id) { return &G->g->nodes[id].type; }

static int64_t numel_at(const mj_type *t, int64_t batch) {
    int64_t n = 1;
    for (int d = 0; d < t->rank; d++) n *= t->dims[d] == MJ_DIM_BATCH ? batch : t->dims[d];
    return n;
}

static bool fits(const mj_type *t) { return numel_at(t, MAX_BATCH) <= MAX_VALUE_NUMEL; }

static mj_type mk(int rank, const int64_t *dims) {
    mj_type t;
    memset(&t, 0, sizeof t);
    t.rank = rank;
    for (int d = 0; d < rank; d++) t.dims[d] = dims[d];
    return t;
}

static void push(gen *G, int32_t id) {
    if (G->n_pool < MAX_POOL) G->pool[G->n_pool++] = id;
}

/* A param or const leaf with random values (or the given fill). */
static int32_t leaf(gen *G, mj_op op, const mj_type *t, const float *value) {
    int64_t n = numel_at(t, 1);
    mj_tensor *v = NULL;
    if (mj_tensor_zeros(&v, t->rank, t->dims) != MJ_OK) die("cannot allocate a leaf", NULL);
    float *p = mj_tensor_data_mut(v);
    if (value) for (int64_t i = 0; i < n; i++) p[i] = *value;
    else fill(&G->rng, p, n, G->special);
    char name[32];
    snprintf(name, sizeof name, "%s%d", op == MJ_OP_PARAM ? "p" : "c", G->n_leaves++);
    int32_t id;
    mj_status s = mj_graph_add_leaf(G->g, op, name, t, v, &id);
    mj_tensor_release(v);
    if (s != MJ_OK) die("generator bug: a leaf was refused", G->g);
    return id;
}

static int32_t add(gen *G, mj_op op, int n, const int32_t *ops, mj_act act, const mj_attrs *a,
                   const mj_shape_attrs *sa, const mj_type *declared) {
    int32_t id;
    if (mj_graph_add_op_full(G->g, op, n, ops, act, a, sa, declared, &id) != MJ_OK) {
        char what[96];
        snprintf(what, sizeof what, "generator bug: the builder refused a %s node", mj_op_table[op].name);
        die(what, G->g);
    }
    return id;
}

/* A 0/1 mask of the densities pruning produces: empty, full, random,
 * whole rows gone, 1x4 blocks. */
static int32_t mask(gen *G, int64_t rows, int64_t cols) {
    int64_t dims[2] = {rows, cols};
    mj_type t = mk(2, dims);
    float zero = 0.0f;
    int32_t id = leaf(G, MJ_OP_PARAM, &t, &zero);
    float *m = mj_tensor_data_mut(G->g->nodes[id].tensor);
    unsigned kind = take(G, 6);
    double p = (double)(1 + take(G, 9)) / 10.0;
    for (int64_t r = 0; r < rows; r++) {
        bool row_on = unit(&G->rng) < p;
        for (int64_t c = 0; c < cols; c++) {
            bool on;
            switch (kind) {
            case 0: on = false; break;
            case 1: on = true; break;
            case 2: on = row_on; break;
            case 3: on = ((r * 7 + c / 4 * 3) % 10) < (int64_t)(p * 10); break; /* 1x4 blocks */
            default: on = unit(&G->rng) < p; break;
            }
            m[r * cols + c] = on ? 1.0f : 0.0f;
        }
    }
    return id;
}

/* An operand: mostly the newest value (chains), sometimes any. */
static int32_t pick(gen *G) {
    if (take(G, 3) == 0) return G->pool[take(G, (unsigned)G->n_pool)];
    return G->pool[G->n_pool - 1];
}

static bool bcast(const mj_type *a, const mj_type *b, mj_type *r) {
    r->rank = a->rank > b->rank ? a->rank : b->rank;
    for (int i = 0; i < r->rank; i++) {
        int ia = a->rank - r->rank + i, ib = b->rank - r->rank + i;
        int64_t da = ia >= 0 ? a->dims[ia] : 1, db = ib >= 0 ? b->dims[ib] : 1;
        if (da == db) r->dims[i] = da;
        else if (da == 1) r->dims[i] = db;
        else if (db == 1) r->dims[i] = da;
        else return false;
    }
    return true;
}

static int concrete_dims(const mj_type *t, int *which) {
    int n = 0;
    for (int d = 0; d < t->rank; d++)
        if (t->dims[d] != MJ_DIM_BATCH) which[n++] = d;
    return n;
}

static const int64_t widths[] = {1, 2, 3, 4, 5, 7, 8, 16, 17, 33, 64, 65, 96};

static bool gen_binary(gen *G, int32_t x) {
    static const mj_op ops[] = {MJ_OP_ADD, MJ_OP_SUB, MJ_OP_MUL, MJ_OP_DIV, MJ_OP_MAXIMUM, MJ_OP_MINIMUM};
    mj_op op = ops[take(G, 6)];
    const mj_type txv = *ty(G, x), *tx = &txv; /* a copy: adding nodes moves them */
    int32_t y = -1;
    switch (take(G, 4)) {
    case 0: { /* a scalar operand, as the tracer records `x / 8.0` */
        static const float scalars[] = {8.0f, 0.125f, 1e-6f, -1.0f, 0.0f, -0.0f, 3.0f, NAN, INFINITY, 1e-40f};
        int64_t one = 1;
        mj_type t = mk(1, &one);
        y = leaf(G, MJ_OP_CONST, &t, &scalars[take(G, 10)]);
        break;
    }
    case 1: { /* a param broadcast over a suffix of x's dims */
        mj_type t;
        memset(&t, 0, sizeof t);
        t.rank = 1 + (int)take(G, (unsigned)tx->rank);
        for (int i = 0; i < t.rank; i++) {
            int64_t d = tx->dims[tx->rank - t.rank + i];
            t.dims[i] = d == MJ_DIM_BATCH || take(G, 3) == 0 ? 1 : d;
        }
        y = leaf(G, MJ_OP_PARAM, &t, NULL);
        break;
    }
    case 2: { /* a param with one more leading dim: the result grows */
        if (tx->rank == MJ_MAX_RANK) return false;
        mj_type t;
        memset(&t, 0, sizeof t);
        t.rank = tx->rank + 1;
        t.dims[0] = 1 + take(G, 3);
        for (int i = 0; i < tx->rank; i++) t.dims[i + 1] = tx->dims[i] == MJ_DIM_BATCH ? 1 : tx->dims[i];
        y = leaf(G, MJ_OP_PARAM, &t, NULL);
        break;
    }
    default: { /* another value that broadcasts with x (x itself at worst) */
        unsigned start = take(G, (unsigned)G->n_pool);
        y = x;
        for (int k = 0; k < G->n_pool; k++) {
            int32_t c = G->pool[(start + (unsigned)k) % (unsigned)G->n_pool];
            mj_type r;
            if (c != x && bcast(tx, ty(G, c), &r) && fits(&r)) {
                y = c;
                break;
            }
        }
    }
    }
    mj_type r;
    if (!bcast(tx, ty(G, y), &r) || !fits(&r)) return false;
    int32_t o[2] = {x, y};
    if (take(G, 2)) {
        o[0] = y;
        o[1] = x;
    }
    push(G, add(G, op, 2, o, MJ_ACT_NONE, NULL, NULL, NULL));
    return true;
}

static void gen_unary(gen *G, int32_t x) {
    static const mj_op ops[] = {MJ_OP_NEG,  MJ_OP_EXP,       MJ_OP_LOG,     MJ_OP_SQRT,  MJ_OP_RSQRT,
                                MJ_OP_POW,  MJ_OP_RELU,      MJ_OP_GELU,    MJ_OP_GELU_TANH, MJ_OP_SIGMOID,
                                MJ_OP_TANH, MJ_OP_SILU,      MJ_OP_LEAKY_RELU, MJ_OP_ELU, MJ_OP_HARDTANH,
                                MJ_OP_SOFTPLUS};
    mj_op op = ops[take(G, sizeof ops / sizeof ops[0])];
    mj_attrs a = mj_attrs_default(op);
    switch (op) {
    case MJ_OP_POW: {
        static const float e[] = {2, 3, 0.5f, -0.5f, -1, -2, 1, 1.5f, 0, -3};
        a.f[0] = e[take(G, 10)];
        break;
    }
    case MJ_OP_LEAKY_RELU: {
        static const float s[] = {0.01f, 0.2f, -1.0f, 0.0f};
        a.f[0] = s[take(G, 4)];
        break;
    }
    case MJ_OP_ELU: {
        static const float s[] = {1.0f, 0.5f, 2.0f, -1.0f};
        a.f[0] = s[take(G, 4)];
        break;
    }
    case MJ_OP_HARDTANH: {
        static const float s[][2] = {{-1, 1}, {0, 6}, {-0.5f, -0.5f}, {-2, 0}};
        unsigned k = take(G, 4);
        a.f[0] = s[k][0];
        a.f[1] = s[k][1];
        break;
    }
    case MJ_OP_SOFTPLUS: {
        static const float s[][2] = {{1, 20}, {2, 1}, {0.5f, 5}, {1, 0}};
        unsigned k = take(G, 4);
        a.f[0] = s[k][0];
        a.f[1] = s[k][1];
        break;
    }
    default: break;
    }
    push(G, add(G, op, 1, &x, MJ_ACT_NONE, &a, NULL, NULL));
}

static bool gen_reduce(gen *G, int32_t x, int kind) {
    const mj_type tv = *ty(G, x), *t = &tv; /* a copy: adding nodes moves them */
    mj_op op = kind == 0 ? (take(G, 2) ? MJ_OP_SUM : MJ_OP_MEAN)
                         : (take(G, 2) ? MJ_OP_SOFTMAX : MJ_OP_LOG_SOFTMAX);
    mj_attrs a = mj_attrs_default(op);
    a.dim = (int32_t)take(G, 2u * (unsigned)t->rank) - t->rank;
    if (op == MJ_OP_SUM || op == MJ_OP_MEAN) a.keepdim = t->rank == 1 || take(G, 2);
    push(G, add(G, op, 1, &x, MJ_ACT_NONE, &a, NULL, NULL));
    return true;
}

static bool gen_layer_norm(gen *G, int32_t x) {
    const mj_type tv = *ty(G, x), *t = &tv; /* a copy: adding nodes moves them */
    int64_t last = t->dims[t->rank - 1];
    if (last == MJ_DIM_BATCH) return false;
    static const float eps[] = {1e-5f, 1e-3f, 0.5f, 1e-12f};
    mj_attrs a = mj_attrs_default(MJ_OP_LAYER_NORM);
    a.f[0] = eps[take(G, 4)];
    int n = 1 + (int)take(G, 3);
    int32_t o[3] = {x, -1, -1};
    mj_type wt = mk(1, &last);
    for (int k = 1; k < n; k++) o[k] = leaf(G, MJ_OP_PARAM, &wt, NULL);
    push(G, add(G, MJ_OP_LAYER_NORM, n, o, MJ_ACT_NONE, &a, NULL, NULL));
    return true;
}

/* linear / linear_act, the weight a param or `mul(weight, mask)` as the
 * tracer records a pruned layer, with or without a bias, often followed by
 * a residual add. */
static bool gen_linear(gen *G, int32_t x) {
    const mj_type tv = *ty(G, x), *t = &tv; /* a copy: adding nodes moves them */
    int64_t k = t->dims[t->rank - 1];
    if (k == MJ_DIM_BATCH) return false;
    int64_t n = widths[take(G, sizeof widths / sizeof widths[0])];
    mj_type r = *t;
    r.dims[r.rank - 1] = n;
    if (!fits(&r)) return false;
    int64_t wd[2] = {n, k};
    mj_type wt = mk(2, wd);
    int32_t w = leaf(G, MJ_OP_PARAM, &wt, NULL);
    if (take(G, 4)) {
        int32_t o[2] = {w, mask(G, n, k)};
        w = add(G, MJ_OP_MUL, 2, o, MJ_ACT_NONE, NULL, NULL, NULL);
    }
    int32_t o[3] = {x, w, -1};
    int no = 2;
    if (take(G, 2)) {
        mj_type bt = mk(1, &n);
        o[no++] = leaf(G, MJ_OP_PARAM, &bt, NULL);
    }
    mj_act act = (mj_act)take(G, MJ_ACT_COUNT);
    int32_t l = add(G, act == MJ_ACT_NONE ? MJ_OP_LINEAR : MJ_OP_LINEAR_ACT, no, o, act, NULL, NULL, NULL);
    /* Often a residual add, as transformer sublayers end: x + linear(x) when
     * the layer keeps the width, else the newest value of the result's type
     * (r on either side). The compiled paths fuse it into the linear's
     * epilogue (linear_add); keeping the linear in the pool too sometimes
     * gives it a second use, which must not fuse. */
    if (take(G, 2)) {
        int32_t r = -1;
        if (mj_type_equal(t, ty(G, l))) r = x;
        for (int i = G->n_pool - 1; i >= 0 && r < 0; i--)
            if (mj_type_equal(ty(G, G->pool[i]), ty(G, l))) r = G->pool[i];
        if (r >= 0) {
            bool r_first = take(G, 2);
            int32_t s2[2] = {r_first ? r : l, r_first ? l : r};
            if (take(G, 4) == 0) push(G, l);
            l = add(G, MJ_OP_ADD, 2, s2, MJ_ACT_NONE, NULL, NULL, NULL);
        }
    }
    push(G, l);
    return true;
}

static bool gen_transpose(gen *G, int32_t x, int32_t *out) {
    const mj_type tv = *ty(G, x), *t = &tv; /* a copy: adding nodes moves them */
    if (t->rank < 2) return false;
    mj_shape_attrs sa;
    memset(&sa, 0, sizeof sa);
    sa.dim0 = (int8_t)take(G, (unsigned)t->rank);
    sa.dim1 = (int8_t)take(G, (unsigned)t->rank);
    if (sa.dim0 == sa.dim1) { /* the default: the last two */
        sa.dim0 = (int8_t)(t->rank - 2);
        sa.dim1 = (int8_t)(t->rank - 1);
    } else if (sa.dim0 > sa.dim1) {
        int8_t s = sa.dim0;
        sa.dim0 = sa.dim1;
        sa.dim1 = s;
    }
    *out = add(G, MJ_OP_TRANSPOSE, 1, &x, MJ_ACT_NONE, NULL, &sa, NULL);
    return true;
}

static bool gen_matmul(gen *G, int32_t x) {
    const mj_type tv = *ty(G, x), *t = &tv; /* a copy: adding nodes moves them */
    if (t->rank < 2) return false;
    int64_t k = t->dims[t->rank - 1];
    int32_t b = -1;
    unsigned how = take(G, 3);
    if (how == 0 || k == MJ_DIM_BATCH) { /* x @ x^T: attention scores */
        mj_shape_attrs sa;
        memset(&sa, 0, sizeof sa);
        sa.dim0 = (int8_t)(t->rank - 2);
        sa.dim1 = (int8_t)(t->rank - 1);
        b = add(G, MJ_OP_TRANSPOSE, 1, &x, MJ_ACT_NONE, NULL, &sa, NULL);
        if (take(G, 2)) { /* or x^T @ x */
            int32_t s = x;
            x = b;
            b = s;
        }
    } else { /* a param [k, n], or batched with broadcast batch dims */
        mj_type pt;
        memset(&pt, 0, sizeof pt);
        int batch_dims = how == 1 ? 0 : (int)take(G, (unsigned)(MJ_MAX_RANK - 1));
        if (batch_dims > MJ_MAX_RANK - 2) batch_dims = MJ_MAX_RANK - 2;
        pt.rank = batch_dims + 2;
        for (int i = 0; i < batch_dims; i++) {
            int xi = t->rank - 2 - batch_dims + i;
            int64_t d = xi >= 0 ? t->dims[xi] : 1 + take(G, 3);
            pt.dims[i] = d == MJ_DIM_BATCH || take(G, 3) == 0 ? 1 : d;
        }
        pt.dims[batch_dims] = k;
        pt.dims[batch_dims + 1] = widths[take(G, 10)];
        b = leaf(G, MJ_OP_PARAM, &pt, NULL);
    }
    mj_type r;
    mj_type ta = *ty(G, x), tb = *ty(G, b);
    if (!bcast(&(mj_type){.rank = ta.rank - 2, .dims = {ta.dims[0], ta.dims[1]}},
               &(mj_type){.rank = tb.rank - 2, .dims = {tb.dims[0], tb.dims[1]}}, &r))
        die("generator bug: matmul batch dims", G->g);
    r.dims[r.rank] = ta.dims[ta.rank - 2];
    r.dims[r.rank + 1] = tb.dims[tb.rank - 1];
    r.rank += 2;
    if (!fits(&r)) return false;
    int32_t o[2] = {x, b};
    push(G, add(G, MJ_OP_MATMUL, 2, o, MJ_ACT_NONE, NULL, NULL, NULL));
    return true;
}

static bool gen_permute(gen *G, int32_t x) {
    const mj_type tv = *ty(G, x), *t = &tv; /* a copy: adding nodes moves them */
    mj_shape_attrs sa;
    memset(&sa, 0, sizeof sa);
    for (int d = 0; d < t->rank; d++) sa.perm[d] = (int8_t)d;
    for (int d = t->rank - 1; d > 0; d--) {
        unsigned j = take(G, (unsigned)d + 1);
        int8_t s = sa.perm[d];
        sa.perm[d] = sa.perm[j];
        sa.perm[j] = s;
    }
    push(G, add(G, MJ_OP_PERMUTE, 1, &x, MJ_ACT_NONE, NULL, &sa, NULL));
    return true;
}

static bool gen_reshape(gen *G, int32_t x) {
    const mj_type tv = *ty(G, x), *t = &tv; /* a copy: adding nodes moves them */
    int64_t p = 1;
    int nb = 0;
    for (int d = 0; d < t->rank; d++) {
        if (t->dims[d] == MJ_DIM_BATCH) nb++;
        else p *= t->dims[d];
    }
    if (nb > 1 || p == 0) return false;
    int nconc = 1 + (int)take(G, (unsigned)(MJ_MAX_RANK - nb));
    int64_t dims[MJ_MAX_RANK], rem = p;
    for (int i = 0; i < nconc - 1; i++) {
        int64_t divs[16];
        int nd = 0;
        for (int64_t q = 1; q <= rem && nd < 16; q++)
            if (rem % q == 0) divs[nd++] = q;
        dims[i] = divs[take(G, (unsigned)nd)];
        rem /= dims[i];
    }
    dims[nconc - 1] = rem;
    mj_type r;
    memset(&r, 0, sizeof r);
    int at = nb ? (int)take(G, (unsigned)nconc + 1) : -1;
    for (int i = 0, j = 0; i < nconc + nb; i++) r.dims[i] = i == at ? MJ_DIM_BATCH : dims[j++];
    r.rank = nconc + nb;
    push(G, add(G, MJ_OP_RESHAPE, 1, &x, MJ_ACT_NONE, NULL, NULL, &r));
    return true;
}

static bool gen_slice_or_cat(gen *G, int32_t x, bool cat) {
    const mj_type tv = *ty(G, x), *t = &tv; /* a copy: adding nodes moves them */
    int which[MJ_MAX_RANK];
    int nc = concrete_dims(t, which);
    if (nc == 0) return false;
    mj_shape_attrs sa;
    memset(&sa, 0, sizeof sa);
    sa.dim = (int8_t)which[take(G, (unsigned)nc)];
    if (!cat) {
        int64_t size = t->dims[sa.dim];
        sa.start = take(G, (unsigned)size + 1);
        sa.end = sa.start + take(G, (unsigned)(size - sa.start) + 1);
        if (sa.end == sa.start && take(G, 4)) sa.end = size; /* empty slices, but rarely */
        push(G, add(G, MJ_OP_SLICE, 1, &x, MJ_ACT_NONE, NULL, &sa, NULL));
        return true;
    }
    int32_t o[MJ_MAX_OPERANDS] = {x};
    int n = 1, want = 2 + (int)take(G, 3);
    mj_type r = *t;
    for (int k = 0; k < G->n_pool && n < want; k++) { /* values that fit, else x again */
        int32_t c = G->pool[(k + (int)take(G, (unsigned)G->n_pool)) % G->n_pool];
        const mj_type *tc = ty(G, c);
        bool ok = tc->rank == t->rank && tc->dims[sa.dim] != MJ_DIM_BATCH;
        for (int d = 0; d < t->rank && ok; d++) ok = d == sa.dim || tc->dims[d] == t->dims[d];
        if (!ok) continue;
        r.dims[sa.dim] += tc->dims[sa.dim];
        if (!fits(&r)) return false;
        o[n++] = c;
    }
    push(G, add(G, MJ_OP_CAT, n, o, MJ_ACT_NONE, NULL, &sa, NULL));
    return true;
}

static bool gen_expand(gen *G, int32_t x) {
    const mj_type tv = *ty(G, x), *t = &tv; /* a copy: adding nodes moves them */
    int64_t n = widths[take(G, 8)];
    mj_type r = *t;
    r.dims[r.rank - 1] = n;
    if (!fits(&r)) return false;
    if (take(G, 2)) {
        mj_type bt = mk(1, &n);
        int32_t o[2] = {x, leaf(G, MJ_OP_PARAM, &bt, NULL)};
        push(G, add(G, MJ_OP_EXPAND, 2, o, MJ_ACT_NONE, NULL, NULL, NULL));
    } else {
        push(G, add(G, MJ_OP_EXPAND, 1, &x, MJ_ACT_NONE, NULL, NULL, &r));
    }
    return true;
}

/* The CNN ops on an [N, C, H, W] value (C, H, W concrete): a conv2d
 * whose weight is masked as the tracer records it (a 2-D mask reshaped),
 * groups 1, C or a divisor, batch_norm, the pools. */
static bool gen_cnn(gen *G, int32_t x) {
    const mj_type tv = *ty(G, x), *t = &tv; /* a copy: adding nodes moves them */
    if (t->rank != 4) return false;
    for (int d = 1; d < 4; d++)
        if (t->dims[d] == MJ_DIM_BATCH) return false;
    int64_t C = t->dims[1], H = t->dims[2], W = t->dims[3];
    mj_attrs a = {0};
    mj_type r = *t;
    int32_t o[5];
    mj_op op;
    unsigned kind = take(G, 5);
    if (kind == 0 || kind == 1) {
        op = MJ_OP_CONV2D;
        int64_t G0 = take(G, 3) == 0 ? C : 1, k = 1 + take(G, 3);
        if (G0 == 1 && C % 2 == 0 && take(G, 3) == 0) G0 = 2;
        int64_t O = G0 * (1 + take(G, 3)), cg = C / G0;
        a = mj_attrs_default(op);
        for (int i = 0; i < 2; i++) {
            a.i[MJ_CONV_STRIDE + i] = 1 + (int32_t)take(G, 2);
            a.i[MJ_CONV_PADDING + i] = (int32_t)take(G, 2);
            a.i[MJ_CONV_DILATION + i] = 1 + (int32_t)take(G, 2);
        }
        a.i[MJ_CONV_GROUPS] = (int32_t)G0;
        int64_t len[2] = {H, W};
        for (int i = 0; i < 2; i++) {
            int64_t out = (len[i] + 2 * a.i[MJ_CONV_PADDING + i] - a.i[MJ_CONV_DILATION + i] * (k - 1) - 1) /
                              a.i[MJ_CONV_STRIDE + i] + 1;
            if (len[i] + 2 * a.i[MJ_CONV_PADDING + i] < a.i[MJ_CONV_DILATION + i] * (k - 1) + 1) return false;
            r.dims[2 + i] = out;
        }
        r.dims[1] = O;
        if (!fits(&r)) return false;
        int64_t wd[4] = {O, cg, k, k};
        mj_type wt = mk(4, wd);
        int32_t w = leaf(G, MJ_OP_PARAM, &wt, NULL);
        if (take(G, 4)) {
            int32_t m2 = mask(G, O, cg * k * k);
            int32_t m4 = add(G, MJ_OP_RESHAPE, 1, &m2, MJ_ACT_NONE, NULL, NULL, &wt);
            int32_t mo[2] = {w, m4};
            w = add(G, MJ_OP_MUL, 2, mo, MJ_ACT_NONE, NULL, NULL, NULL);
        }
        o[0] = x;
        o[1] = w;
        int n = 2;
        if (take(G, 2)) {
            mj_type bt = mk(1, &O);
            o[n++] = leaf(G, MJ_OP_PARAM, &bt, NULL);
        }
        push(G, add(G, op, n, o, MJ_ACT_NONE, &a, NULL, NULL));
        return true;
    }
    if (kind == 2) {
        mj_type ct = mk(1, &C);
        int n = 3 + (int)take(G, 3);
        o[0] = x;
        for (int k = 1; k < n; k++) o[k] = leaf(G, MJ_OP_PARAM, &ct, NULL);
        a = mj_attrs_default(MJ_OP_BATCH_NORM);
        if (take(G, 2)) a.f[0] = 1e-3f;
        push(G, add(G, MJ_OP_BATCH_NORM, n, o, MJ_ACT_NONE, &a, NULL, NULL));
        return true;
    }
    if (kind == 3) {
        op = take(G, 2) ? MJ_OP_MAX_POOL2D : MJ_OP_AVG_POOL2D;
        a = mj_attrs_default(op);
        int64_t len[2] = {H, W};
        bool ceil = take(G, 2); /* windows that hang over the end */
        a.i[MJ_POOL_CEIL] = ceil;
        for (int i = 0; i < 2; i++) {
            int32_t k = 1 + (int32_t)take(G, 3), st = 1 + (int32_t)take(G, 2), pd = (int32_t)take(G, (unsigned)(k / 2 + 1));
            if (len[i] + 2 * pd < k) return false;
            a.i[MJ_POOL_KERNEL + i] = k;
            a.i[MJ_POOL_STRIDE + i] = st;
            a.i[MJ_POOL_PADDING + i] = pd;
            r.dims[2 + i] = mj_window_out(len[i], k, st, pd, 1, ceil);
        }
        if (op == MJ_OP_AVG_POOL2D) a.i[MJ_POOL_COUNT_PAD] = (int32_t)take(G, 2);
    } else {
        op = MJ_OP_ADAPTIVE_AVG_POOL2D;
        a = mj_attrs_default(op);
        a.i[0] = 1 + (int32_t)take(G, 3);
        a.i[1] = 1 + (int32_t)take(G, 5);
        r.dims[2] = a.i[0];
        r.dims[3] = a.i[1];
    }
    if (!fits(&r)) return false;
    push(G, add(G, op, 1, &x, MJ_ACT_NONE, &a, NULL, NULL));
    return true;
}

/* One op on a value of the pool; false if that kind does not fit it. */
static bool gen_op(gen *G) {
    int32_t x = pick(G), id;
    switch (take(G, 15)) {
    case 0:
    case 1: return gen_binary(G, x);
    case 2:
    case 3: gen_unary(G, x); return true;
    case 4: return gen_reduce(G, x, 0);
    case 5: return gen_reduce(G, x, 1);
    case 6: return gen_layer_norm(G, x);
    case 7:
    case 8: return gen_linear(G, x);
    case 9: return gen_matmul(G, x);
    case 10:
        if (take(G, 2)) return gen_permute(G, x);
        if (!gen_transpose(G, x, &id)) return false;
        push(G, id);
        return true;
    case 11: return gen_reshape(G, x);
    case 12: return gen_slice_or_cat(G, x, take(G, 2));
    case 13: return gen_cnn(G, x);
    default: return gen_expand(G, x);
    }
}

/* ---- running ------------------------------------------------------------ */

typedef struct path {
    const char *name;
    mj_numeric_mode numeric;
    bool frozen;
} path;
static const path paths[4] = {
    {"compiled exact live", MJ_NUMERIC_EXACT, false},
    {"compiled exact frozen", MJ_NUMERIC_EXACT, true},
    {"compiled fast live", MJ_NUMERIC_FAST, false},
    {"compiled fast frozen", MJ_NUMERIC_FAST, true},
};

static mj_jit *jit;

static void shutdown_jit(void) {
    mj_jit_free(jit);
    mj_llvm_shutdown();
}

static bool all_finite(const mj_tensor *t) {
    const float *p = mj_tensor_data(t);
    for (int64_t i = 0; i < mj_tensor_numel(t); i++)
        if (!isfinite(p[i])) return false;
    return true;
}

static bool has_zero(const mj_tensor *t) {
    const float *p = mj_tensor_data(t);
    for (int64_t i = 0; i < mj_tensor_numel(t); i++)
        if (p[i] == 0.0f) return true;
    return false;
}

/* Every node's value, node by node with the eager kernels; with noise > 0
 * each op's result is nudged by float32 rounding noise of that many ulps
 * (relative to the element and to the tensor's mean magnitude). */
static void eval_all(const mj_graph *g, const mj_tensor *const *in, double noise, uint64_t *rng, mj_tensor **val) {
    int k = 0;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (n->op == MJ_OP_INPUT) {
            val[i] = mj_tensor_retain((mj_tensor *)in[k++]);
            continue;
        }
        if (n->op == MJ_OP_PARAM || n->op == MJ_OP_CONST) {
            val[i] = mj_tensor_retain(n->tensor);
            continue;
        }
        const mj_tensor *ops[MJ_MAX_OPERANDS];
        for (int o = 0; o < n->n_operands; o++) ops[o] = val[n->operands[o]];
        if (mj_interp_node(g, n, ops, &val[i]) != MJ_OK) die("the interpreter failed on one node", g);
        if (noise <= 0) continue;
        float *p = mj_tensor_data_mut(val[i]);
        int64_t m = mj_tensor_numel(val[i]);
        double mean = 0;
        for (int64_t e = 0; e < m; e++)
            if (isfinite(p[e])) mean += fabs(p[e]) / (double)m;
        for (int64_t e = 0; e < m; e++)
            p[e] = (float)(p[e] + (2 * unit(rng) - 1) * noise * 0x1p-24 * (fabs(p[e]) + mean));
    }
}

static void free_vals(const mj_graph *g, mj_tensor **val) {
    for (int32_t i = 0; i < g->n_nodes; i++) {
        mj_tensor_release(val[i]);
        val[i] = NULL;
    }
}

/* The longest sum any node does (the noise of the replays grows with it). */
static int64_t longest_sum(const mj_graph *g, int64_t batch) {
    int64_t len = 1;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        int64_t d = mj_node_sum_length(g, i, batch);
        if (d > len) len = d;
    }
    return len;
}

/* The operand of a domain-restricted op whose edge (0: log, sqrt, rsqrt,
 * pow with a negative or fractional exponent, a divisor) it must keep away
 * from; -1 for other ops. */
static int edge_operand(const mj_node *n) {
    switch (n->op) {
    case MJ_OP_LOG:
    case MJ_OP_SQRT:
    case MJ_OP_RSQRT: return 0;
    case MJ_OP_POW: return n->attrs.f[0] < 0 || n->attrs.f[0] != floorf(n->attrs.f[0]) ? 0 : -1;
    case MJ_OP_DIV: return 1;
    default: return -1;
    }
}

/* ill[i]: node i's value is ill-conditioned for fast mode. A sum with a
 * term beyond 1e18 may overflow in one order only (below). A
 * domain-restricted op whose operand has an element within fast mode's
 * tolerance of the edge (or of its replays' spread) may give NaN, inf or
 * a far-off value for a legitimately different rounding: mean(layer_norm
 * (x)) is 0 up to rounding, and log of a linear of it is NaN in one path
 * and -19 in the other. Such a value, and everything computed from it, is
 * compared in the exact paths only (as strictly as every other value). */
static void ill_conditioned(const mj_graph *g, int64_t batch, mj_tensor *const *val, mj_tensor *const *const *pv,
                            bool *ill) {
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        ill[i] = false;
        if (mj_op_table[n->op].flags & MJ_OPF_LEAF) continue;
        for (int o = 0; o < n->n_operands; o++) ill[i] = ill[i] || ill[n->operands[o]];
        /* A sum over terms near the float range's end overflows in some
         * orders and not in others (3e38 + 3e38 - 3e38): fast mode may
         * reorder it, so such a sum is judged in the exact paths only. */
        if (!ill[i] && mj_node_sum_length(g, i, batch) > 1)
            for (int o = 0; o < n->n_operands && !ill[i]; o++) {
                const float *v = mj_tensor_data(val[n->operands[o]]);
                for (int64_t e = 0; e < mj_tensor_numel(val[n->operands[o]]) && !ill[i]; e++)
                    ill[i] = isfinite(v[e]) && fabsf(v[e]) > 1e18f; /* squares and products overflow */
            }
        int k = edge_operand(n);
        if (ill[i] || k < 0) continue;
        int32_t x = n->operands[k];
        mj_tolerance t = mj_fast_tolerance(mj_graph_sum_length(g, x, batch), mj_tolerance_scale(val[x]));
        const float *v = mj_tensor_data(val[x]), *q0 = mj_tensor_data(pv[0][x]), *q1 = mj_tensor_data(pv[1][x]);
        for (int64_t e = 0; e < mj_tensor_numel(val[x]) && !ill[i]; e++) {
            if (!isfinite(v[e])) continue;
            double spread = fmax(fabs((double)q0[e] - v[e]), fabs((double)q1[e] - v[e]));
            ill[i] = fabs((double)v[e]) <= 2 * (t.atol + t.rtol * fabs((double)v[e])) + 64 * spread;
        }
    }
}

/* The documented exception of frozen exact mode: a linear, matmul or
 * conv2d whose weight depends on no input, holds a zero, and meets a
 * non-finite input. */
static bool frozen_exception(const mj_graph *g, const bool *input_free, mj_tensor *const *val) {
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (!mj_op_is_linear(n->op) && n->op != MJ_OP_MATMUL && n->op != MJ_OP_CONV2D) continue;
        if (input_free[n->operands[1]] && has_zero(val[n->operands[1]]) && !all_finite(val[n->operands[0]]))
            return true;
    }
    return false;
}

static void mismatch(const mj_graph *g, const char *path, int out, int64_t batch, bool special_in, int64_t e,
                     float got, float want, const char *why) {
    uint32_t gb, wb;
    memcpy(&gb, &got, 4);
    memcpy(&wb, &want, 4);
    char what[512];
    snprintf(what, sizeof what,
             "%s differs from the interpreter: output %d, element %lld (batch %lld%s): %a (0x%08x), "
             "the interpreter %a (0x%08x)%s",
             path, out, (long long)e, (long long)batch, special_in ? ", special values in the inputs" : "",
             (double)got, (unsigned)gb, (double)want, (unsigned)wb, why);
    die(what, g);
}

/* One set of inputs through the reference and the four compiled paths. */
static void run_once(mj_graph *g, mj_compiled *const *c, int n_in, const mj_tensor *const *x, int64_t batch,
                     bool special_in, uint64_t *rng) {
    int n_out = mj_graph_output_count(g);
    mj_tensor *want[MAX_OUT] = {0}, *got[MAX_OUT] = {0};
    if (mj_graph_run_n(g, n_in, x, n_out, want) != MJ_OK) die("the interpreter failed", g);
    mj_tensor **val = calloc((size_t)g->n_nodes, sizeof *val), **pv[2];
    if (!val) die("out of memory", NULL);
    eval_all(g, x, 0, rng, val);
    bool *input_free = mj_graph_input_free(g);
    if (!input_free) die("out of memory", NULL);
    bool skip_frozen_exact = frozen_exception(g, input_free, val);
    free(input_free);
    int64_t len = longest_sum(g, batch);
    /* two noisy replays for the fast tolerance */
    for (int r = 0; r < 2; r++) {
        pv[r] = calloc((size_t)g->n_nodes, sizeof *pv[r]);
        if (!pv[r]) die("out of memory", NULL);
        eval_all(g, x, 4.0 * (double)len, rng, pv[r]);
    }
    bool *ill = calloc((size_t)g->n_nodes, sizeof *ill);
    if (!ill) die("out of memory", NULL);
    ill_conditioned(g, batch, val, (mj_tensor *const *const *)pv, ill);
    for (int p = 0; p < 4; p++) {
        if (mj_compiled_run_n(c[p], n_in, x, n_out, got) != MJ_OK) die(paths[p].name, g);
        bool exact = paths[p].numeric == MJ_NUMERIC_EXACT;
        for (int j = 0; j < n_out; j++) {
            const float *a = mj_tensor_data(got[j]), *b = mj_tensor_data(want[j]);
            int64_t first;
            if (exact) {
                if (!(paths[p].frozen && skip_frozen_exact) && !check_exact_equal(got[j], want[j], &first)) {
                    if (first < 0) die("an exact path gave an output of another shape", g);
                    mismatch(g, paths[p].name, j, batch, special_in, first, a[first], b[first], " (not bit-identical)");
                }
                continue;
            }
            if (mj_tensor_numel(got[j]) != mj_tensor_numel(want[j])) die("a fast path gave another shape", g);
            if (ill[g->outputs[j]]) continue;
            mj_tolerance t = mj_fast_tolerance(mj_graph_sum_length(g, g->outputs[j], batch), mj_tolerance_scale(want[j]));
            const float *q0 = mj_tensor_data(pv[0][g->outputs[j]]), *q1 = mj_tensor_data(pv[1][g->outputs[j]]);
            for (int64_t e = 0; e < mj_tensor_numel(want[j]); e++) {
                if (!isfinite(b[e]) || !isfinite(q0[e]) || !isfinite(q1[e])) continue;
                double spread = fmax(fabs((double)q0[e] - b[e]), fabs((double)q1[e] - b[e]));
                double tol = t.atol + t.rtol * fabs(b[e]) + 64 * spread;
                if (!(fabs((double)a[e] - b[e]) <= tol)) {
                    char why[128];
                    snprintf(why, sizeof why, " (outside the tolerance %.3g; longest sum %lld)", tol,
                             (long long)t.sum_len);
                    mismatch(g, paths[p].name, j, batch, special_in, e, a[e], b[e], why);
                }
            }
        }
        for (int j = 0; j < n_out; j++) {
            mj_tensor_release(got[j]);
            got[j] = NULL;
        }
    }
    for (int r = 0; r < 2; r++) {
        free_vals(g, pv[r]);
        free(pv[r]);
    }
    free(ill);
    free_vals(g, val);
    free(val);
    for (int j = 0; j < n_out; j++) mj_tensor_release(want[j]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!jit) {
        if (mj_jit_new(&jit) != MJ_OK) die("cannot start the JIT", NULL);
        atexit(shutdown_jit);
    }
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("FUZZ_GRAPH_DIFF_VERBOSE") != NULL;
    gen G = {.d = data, .n = size};
    for (int i = 0; i < 4; i++) G.rng = G.rng << 8 | take(&G, 256);
    static const int special_rates[] = {0, 0, 16, 4};
    G.special = special_rates[take(&G, 4)];
    int64_t batch = 1 + take(&G, MAX_BATCH);
    if (mj_graph_new(&G.g) != MJ_OK) die("out of memory", NULL);

    int n_in = 1 + (int)take(&G, MAX_IN);
    for (int i = 0; i < n_in; i++) {
        mj_type t;
        memset(&t, 0, sizeof t);
        t.rank = 1 + (int)take(&G, MJ_MAX_RANK);
        t.dims[0] = MJ_DIM_BATCH;
        for (int d = 1; d < t.rank; d++) t.dims[d] = 1 + take(&G, d == t.rank - 1 ? 17 : 4);
        char name[16];
        snprintf(name, sizeof name, "x%d", i);
        int32_t id;
        if (mj_graph_add_leaf(G.g, MJ_OP_INPUT, name, &t, NULL, &id) != MJ_OK) die("generator bug: input", G.g);
        push(&G, id);
    }
    for (int k = 0, tries = 0; k < MAX_OPS && tries < 3 * MAX_OPS && G.pos < G.n; tries++)
        if (gen_op(&G)) k++;
    int n_out = 1 + (int)take(&G, MAX_OUT);
    mj_graph_add_output(G.g, G.pool[G.n_pool - 1]);
    for (int j = 1; j < n_out; j++) mj_graph_add_output(G.g, G.pool[take(&G, (unsigned)G.n_pool)]);
    if (mj_graph_verify(G.g) != MJ_OK) die("generator bug: the graph does not verify", G.g);

    mj_compiled *c[4] = {0};
    for (int p = 0; p < 4; p++) {
        mj_compile_options o;
        mj_compile_options_init(&o);
        o.numeric = paths[p].numeric;
        o.frozen = paths[p].frozen;
        o.threads = 1;
        o.use_cache = false;
        if (mj_jit_compile(jit, G.g, &o, &c[p]) != MJ_OK) die(paths[p].name, G.g);
        if (verbose) {
            const mj_compile_stats *st = mj_compiled_stats(c[p]);
            fprintf(stderr, "%s: %d nodes, compiled in %.1f ms (IR %.1f, LLVM passes %.1f, codegen %.1f)\n", paths[p].name, G.g->n_nodes, st->total_ms, st->ir_ms, st->optimize_ms, st->codegen_ms);
        }
    }
    /* clean inputs, then (when the input asks) special values in them */
    int sets = G.special ? 2 : 1;
    for (int s = 0; s < sets; s++) {
        mj_tensor *x[MAX_IN] = {0};
        for (int i = 0; i < n_in; i++) {
            const mj_type *t = &G.g->nodes[i].type;
            int64_t shape[MJ_MAX_RANK];
            mj_type_shape(t, batch, shape);
            if (mj_tensor_zeros(&x[i], t->rank, shape) != MJ_OK) die("out of memory", NULL);
            fill(&G.rng, mj_tensor_data_mut(x[i]), mj_tensor_numel(x[i]), s ? G.special : 0);
        }
        run_once(G.g, c, n_in, (const mj_tensor *const *)x, batch, s == 1, &G.rng);
        for (int i = 0; i < n_in; i++) mj_tensor_release(x[i]);
    }
    for (int p = 0; p < 4; p++) mj_compiled_free(c[p]);
    mj_graph_free(G.g);
    return 0;
}
