/* The IR core: text round trips, interpreter vs the eager kernels, parser
 * and verifier errors, DOT, bind/freeze and save/load. References are the
 * eager ops called directly (or naive loops), never the code under test. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ir/ir.h"
#include "maskjit.h"
#include "test_util.h"

/* ---- helpers ----------------------------------------------------------------- */

static mj_graph *parse_ok(const char *text) {
    mj_graph *g = NULL;
    mj_status s = mj_graph_parse(text, &g);
    cr_assert_eq(s, MJ_OK, "parse failed: %s\n%s", mj_last_error(), text);
    return g;
}

static mj_tensor *randn(int rank, const int64_t *shape, uint64_t seed) {
    mj_rng rng = mjt_rng(seed);
    mj_tensor *t;
    OK(mj_tensor_randn(&t, rank, shape, &rng));
    return t;
}

/* Random tensors for every data-less param/const (bound through
 * mj_graph_bind) and for the inputs at the given batch; vals[i] holds node
 * i's tensor for leaves (borrowed from g or from ins). */
static void make_leaves(mj_graph *g, int64_t batch, uint64_t seed, mj_tensor **ins, int *n_in,
                        mj_tensor **vals) {
    mj_tensor_dict *d;
    OK(mj_tensor_dict_new(&d));
    *n_in = 0;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        int64_t shape[MJ_MAX_RANK];
        mj_type_shape(&n->type, batch, shape);
        if (n->op == MJ_OP_INPUT) {
            ins[(*n_in)++] = randn(n->type.rank, shape, seed + 1000u * (uint64_t)i);
        } else if (n->op == MJ_OP_PARAM || (n->op == MJ_OP_CONST && !n->tensor)) {
            mj_tensor *t = randn(n->type.rank, shape, seed + 77u * (uint64_t)i + 5u);
            OK(mj_tensor_dict_set(d, n->name, t));
            mj_tensor_release(t);
        }
    }
    OK(mj_graph_bind(g, d));
    mj_tensor_dict_free(d);
    int k = 0;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        vals[i] = n->op == MJ_OP_INPUT ? ins[k++] : n->tensor;
    }
}

/* The ops whose kernel takes just the one or two operands. */
static const struct {
    mj_op op;
    mj_status (*kernel)(mj_tensor **, const mj_tensor *);
} unary_kernels[] = {
    {MJ_OP_RELU, mj_relu}, {MJ_OP_GELU, mj_gelu}, {MJ_OP_GELU_TANH, mj_gelu_tanh}, {MJ_OP_SIGMOID, mj_sigmoid},
    {MJ_OP_TANH, mj_tanh}, {MJ_OP_NEG, mj_neg}, {MJ_OP_EXP, mj_exp}, {MJ_OP_LOG, mj_log},
    {MJ_OP_SQRT, mj_sqrt}, {MJ_OP_RSQRT, mj_rsqrt}, {MJ_OP_SILU, mj_silu},
};
static const struct {
    mj_op op;
    mj_status (*kernel)(mj_tensor **, const mj_tensor *, const mj_tensor *);
} binary_kernels[] = {
    {MJ_OP_MATMUL, mj_matmul}, {MJ_OP_ADD, mj_add}, {MJ_OP_SUB, mj_sub}, {MJ_OP_MUL, mj_mul},
    {MJ_OP_DIV, mj_div}, {MJ_OP_MAXIMUM, mj_maximum}, {MJ_OP_MINIMUM, mj_minimum},
};

/* Eager reference for one node (written independently of interp.c). */
static mj_tensor *eager(const mj_node *n, mj_tensor **v, int64_t batch) {
    mj_tensor *y = NULL, *t = NULL;
    mj_status s;
    const mj_tensor *a = n->n_operands > 0 ? v[n->operands[0]] : NULL;
    const mj_tensor *b = n->n_operands > 1 ? v[n->operands[1]] : NULL;
    const mj_tensor *c = n->n_operands > 2 ? v[n->operands[2]] : NULL;
    for (size_t k = 0; k < sizeof unary_kernels / sizeof unary_kernels[0]; k++)
        if (unary_kernels[k].op == n->op) {
            OK(unary_kernels[k].kernel(&y, a));
            return y;
        }
    for (size_t k = 0; k < sizeof binary_kernels / sizeof binary_kernels[0]; k++)
        if (binary_kernels[k].op == n->op) {
            OK(binary_kernels[k].kernel(&y, a, b));
            return y;
        }
    switch (n->op) {
    case MJ_OP_LINEAR: s = mj_linear(&y, a, b, c); break;
    case MJ_OP_LINEAR_ACT:
        s = mj_linear(&t, a, b, c);
        OK(s);
        s = mj_activation(&y, n->act, t);
        mj_tensor_release(t);
        break;
    case MJ_OP_LINEAR_ADD:
    case MJ_OP_LINEAR_ACT_ADD: { /* linear, the activation, then + r (the last operand) */
        const mj_tensor *r = v[n->operands[n->n_operands - 1]];
        OK(mj_linear(&t, a, b, n->n_operands == 4 ? c : NULL));
        if (n->op == MJ_OP_LINEAR_ACT_ADD) {
            mj_tensor *u;
            OK(mj_activation(&u, n->act, t));
            mj_tensor_release(t);
            t = u;
        }
        s = mj_add(&y, t, r);
        mj_tensor_release(t);
        break;
    }
    case MJ_OP_EXPAND: {
        /* expand = linear with an all-zero weight */
        int64_t ws[2] = {n->type.dims[n->type.rank - 1], mj_tensor_dim(a, -1)};
        mj_tensor *w;
        OK(mj_tensor_zeros(&w, 2, ws));
        s = mj_linear(&y, a, w, b);
        mj_tensor_release(w);
        break;
    }
    case MJ_OP_TRANSPOSE: s = mj_transpose_dims(&y, a, n->sa.dim0, n->sa.dim1); break;
    case MJ_OP_PERMUTE: {
        int perm[MJ_MAX_RANK] = {n->sa.perm[0], n->sa.perm[1], n->sa.perm[2], n->sa.perm[3]};
        s = mj_permute(&y, a, a->rank, perm);
        break;
    }
    case MJ_OP_SLICE: s = mj_slice(&y, a, n->sa.dim, n->sa.start, n->sa.end); break;
    case MJ_OP_CAT: {
        const mj_tensor *xs[MJ_MAX_OPERANDS];
        for (int k = 0; k < n->n_operands; k++) xs[k] = v[n->operands[k]];
        s = mj_cat(&y, n->n_operands, xs, n->sa.dim);
        break;
    }
    case MJ_OP_RESHAPE: {
        int64_t shape[MJ_MAX_RANK];
        mj_type_shape(&n->type, batch, shape);
        s = mj_reshape(&y, a, n->type.rank, shape);
        break;
    }
    case MJ_OP_POW: s = mj_pow_scalar(&y, a, n->attrs.f[0]); break;
    case MJ_OP_LEAKY_RELU: s = mj_leaky_relu(&y, a, n->attrs.f[0]); break;
    case MJ_OP_ELU: s = mj_elu(&y, a, n->attrs.f[0]); break;
    case MJ_OP_HARDTANH: s = mj_hardtanh(&y, a, n->attrs.f[0], n->attrs.f[1]); break;
    case MJ_OP_SOFTPLUS: s = mj_softplus(&y, a, n->attrs.f[0], n->attrs.f[1]); break;
    case MJ_OP_SUM: s = mj_sum(&y, a, n->attrs.dim, n->attrs.keepdim); break;
    case MJ_OP_MEAN: s = mj_mean(&y, a, n->attrs.dim, n->attrs.keepdim); break;
    case MJ_OP_SOFTMAX: s = mj_softmax(&y, a, n->attrs.dim); break;
    case MJ_OP_LOG_SOFTMAX: s = mj_log_softmax(&y, a, n->attrs.dim); break;
    case MJ_OP_LAYER_NORM: s = mj_layer_norm(&y, a, b, c, n->attrs.f[0]); break;
    case MJ_OP_CONV2D: {
        const int32_t *i = n->attrs.i;
        mj_conv2d_params p = {{i[0], i[1]}, {i[2], i[3]}, {i[4], i[5]}, i[6]};
        s = mj_conv2d(&y, a, b, c, &p);
        break;
    }
    case MJ_OP_BATCH_NORM:
        s = mj_batch_norm(&y, a, b, c, n->n_operands > 3 ? v[n->operands[3]] : NULL,
                          n->n_operands > 4 ? v[n->operands[4]] : NULL, n->attrs.f[0]);
        break;
    case MJ_OP_MAX_POOL2D:
    case MJ_OP_AVG_POOL2D: {
        const int32_t *i = n->attrs.i;
        int64_t k[2] = {i[0], i[1]}, st[2] = {i[2], i[3]}, pd[2] = {i[4], i[5]};
        s = n->op == MJ_OP_MAX_POOL2D ? mj_max_pool2d(&y, a, k, st, pd) : mj_avg_pool2d(&y, a, k, st, pd, i[6]);
        break;
    }
    case MJ_OP_ADAPTIVE_AVG_POOL2D: s = mj_adaptive_avg_pool2d(&y, a, n->attrs.i[0], n->attrs.i[1]); break;
    default: cr_assert_fail("no reference for op %d", (int)n->op); return NULL;
    }
    cr_assert_eq(s, MJ_OK, "eager: %s", mj_last_error());
    return y;
}

/* Round trip + interpreter vs eager at several batches. Returns the set of
 * ops the text used (bit per op). */
static uint64_t check_graph_text(const char *text) {
    mj_graph *g = parse_ok(text);
    char *p1 = mj_graph_to_string(g);
    cr_assert_not_null(p1);
    cr_assert_str_eq(p1, text, "the printed form is not canonical");
    mj_graph *g2 = parse_ok(p1);
    char *p2 = mj_graph_to_string(g2);
    cr_assert_str_eq(p1, p2);
    MJT_FREE(p1, p2);
    mj_graph_free(g2);
    OK(mj_graph_verify(g));

    uint64_t used = 0;
    const int64_t batches[3] = {1, 5, 64};
    for (int bi = 0; bi < 3; bi++) {
        int64_t batch = batches[bi];
        mj_tensor *ins[8], **vals = calloc((size_t)g->n_nodes, sizeof *vals);
        int n_in;
        make_leaves(g, batch, 42 + (uint64_t)batch, ins, &n_in, vals);
        /* eager reference, node by node */
        mj_tensor **owned = calloc((size_t)g->n_nodes, sizeof *owned);
        for (int32_t i = 0; i < g->n_nodes; i++) {
            used |= UINT64_C(1) << g->nodes[i].op;
            if (mj_op_table[g->nodes[i].op].flags & MJ_OPF_LEAF) continue;
            owned[i] = vals[i] = eager(&g->nodes[i], vals, batch);
        }
        mj_tensor *out[4] = {0};
        mj_status s = mj_interp_run(g, n_in, (const mj_tensor *const *)ins, g->n_outputs, out);
        cr_assert_eq(s, MJ_OK, "interp: %s", mj_last_error());
        for (int32_t o = 0; o < g->n_outputs; o++) {
            const mj_tensor *want = vals[g->outputs[o]];
            cr_assert(mj_tensor_equal(out[o], want), "output %d differs from eager at batch %lld", (int)o,
                      (long long)batch);
            mj_tensor_release(out[o]);
        }
        for (int32_t i = 0; i < g->n_nodes; i++) mj_tensor_release(owned[i]);
        for (int i = 0; i < n_in; i++) mj_tensor_release(ins[i]);
        MJT_FREE(owned, vals);
    }
    mj_graph_free(g);
    return used;
}

/* ---- per-op graphs ----------------------------------------------------------------- */

static const char *const op_graphs[] = {
    /* the example of docs/IR.md, verbatim */
    "maskjit-ir 1\n"
    "%0 = input \"input\" : f32[B,2]\n"
    "%1 = param \"linear.parametrizations.weight.original\" : f32[2,2]\n"
    "%2 = param \"linear.parametrizations.weight.0.mask\" : f32[2,2]\n"
    "%3 = mul %2, %1 : f32[2,2]\n"
    "%4 = const \"c4\" : f32[2] = [0x1p+0, -0x1.8p+1]\n"
    "%5 = linear_act %0, %3, %4 {act=relu} : f32[B,2]\n"
    "return %5\n",
    /* a 16-wide masked linear layer */
    "maskjit-ir 1\n"
    "%0 = input \"input\" : f32[B,16]\n"
    "%1 = param \"linear.parametrizations.weight.original\" : f32[16,16]\n"
    "%2 = param \"linear.parametrizations.weight.0.mask\" : f32[16,16]\n"
    "%3 = mul %2, %1 : f32[16,16]\n"
    "%4 = const \"c4\" : f32[16]\n"
    "%5 = linear_act %0, %3, %4 {act=relu} : f32[B,16]\n"
    "return %5\n",
    /* matmul, transpose */
    "maskjit-ir 1\n"
    "%0 = input \"x\" : f32[B,4]\n"
    "%1 = param \"w\" : f32[4,5]\n"
    "%2 = matmul %0, %1 : f32[B,5]\n"
    "%3 = transpose %2 : f32[5,B]\n"
    "return %3, %2\n",
    /* linear with and without bias, rank-3 input, reshape */
    "maskjit-ir 1\n"
    "%0 = input \"x\" : f32[B,2,8]\n"
    "%1 = param \"w\" : f32[6,8]\n"
    "%2 = param \"b\" : f32[6]\n"
    "%3 = linear %0, %1, %2 : f32[B,2,6]\n"
    "%4 = param \"w2\" : f32[3,6]\n"
    "%5 = linear %3, %4 : f32[B,2,3]\n"
    "%6 = reshape %5 : f32[B,6]\n"
    "return %6\n",
    /* linear_act with every activation */
    "maskjit-ir 1\n"
    "%0 = input \"x\" : f32[B,8]\n"
    "%1 = param \"w\" : f32[8,8]\n"
    "%2 = linear_act %0, %1 {act=gelu} : f32[B,8]\n"
    "%3 = linear_act %2, %1 {act=gelu_tanh} : f32[B,8]\n"
    "%4 = linear_act %3, %1 {act=sigmoid} : f32[B,8]\n"
    "%5 = linear_act %4, %1 {act=tanh} : f32[B,8]\n"
    "%6 = param \"b\" : f32[8]\n"
    "%7 = linear_act %5, %1, %6 {act=relu} : f32[B,8]\n"
    "return %7\n",
    /* residual layers: linear_add and linear_act_add, with and without bias,
     * rank-3 input (r has the result's type) */
    "maskjit-ir 1\n"
    "%0 = input \"x\" : f32[B,3,8]\n"
    "%1 = param \"w\" : f32[8,8]\n"
    "%2 = param \"b\" : f32[8]\n"
    "%3 = linear_add %0, %1, %2, %0 : f32[B,3,8]\n"
    "%4 = linear_act_add %3, %1, %0 {act=gelu} : f32[B,3,8]\n"
    "%5 = linear_act_add %4, %1, %2, %3 {act=silu} : f32[B,3,8]\n"
    "%6 = linear_add %5, %1, %4 : f32[B,3,8]\n"
    "return %6\n",
    /* expand with and without bias */
    "maskjit-ir 1\n"
    "%0 = input \"x\" : f32[B,8]\n"
    "%1 = const \"b\" : f32[6]\n"
    "%2 = expand %0, %1 : f32[B,6]\n"
    "%3 = expand %0 : f32[B,6]\n"
    "%4 = add %2, %3 : f32[B,6]\n"
    "return %4, %3\n",
    /* elementwise with broadcasting, activations */
    "maskjit-ir 1\n"
    "%0 = input \"x\" : f32[B,8]\n"
    "%1 = param \"p\" : f32[8]\n"
    "%2 = add %0, %1 : f32[B,8]\n"
    "%3 = sub %1, %2 : f32[B,8]\n"
    "%4 = mul %3, %3 : f32[B,8]\n"
    "%5 = param \"col\" : f32[1,8]\n"
    "%6 = mul %5, %4 : f32[B,8]\n"
    "%7 = relu %6 : f32[B,8]\n"
    "%8 = gelu %7 : f32[B,8]\n"
    "%9 = gelu_tanh %3 : f32[B,8]\n"
    "%10 = sigmoid %9 : f32[B,8]\n"
    "%11 = tanh %10 : f32[B,8]\n"
    "%12 = sub %8, %11 : f32[B,8]\n"
    "return %12\n",
    /* the shape ops of attention: slice, transpose (default and two dims),
     * batched matmul with broadcast, permute, cat, reshape with B inside */
    "maskjit-ir 1\n"
    "%0 = input \"x\" : f32[B,4,6]\n"
    "%1 = slice %0 {dim=2, start=0, end=3} : f32[B,4,3]\n"
    "%2 = slice %0 {dim=2, start=3, end=6} : f32[B,4,3]\n"
    "%3 = transpose %2 : f32[B,3,4]\n"
    "%4 = matmul %1, %3 : f32[B,4,4]\n"
    "%5 = param \"w\" : f32[2,4,3]\n"
    "%6 = reshape %4 : f32[B,1,4,4]\n"
    "%7 = matmul %6, %5 : f32[B,2,4,3]\n"
    "%8 = permute %7 {perm=[0,2,1,3]} : f32[B,4,2,3]\n"
    "%9 = cat %8, %8, %8 {dim=3} : f32[B,4,2,9]\n"
    "%10 = transpose %9 {dim0=0, dim1=2} : f32[2,4,B,9]\n"
    "%11 = reshape %10 : f32[8,B,9]\n"
    "return %11, %7\n",
    /* two inputs, inline const data */
    "maskjit-ir 1\n"
    "%0 = input \"a\" : f32[B,2]\n"
    "%1 = input \"b\" : f32[B,2]\n"
    "%2 = const \"c2\" : f32[2] = [0x1p+0, -0x1.8p+1]\n"
    "%3 = mul %0, %2 : f32[B,2]\n"
    "%4 = add %3, %1 : f32[B,2]\n"
    "return %4\n",
    /* the math of transformers: attributes in their canonical text form */
    "maskjit-ir 1\n"
    "%0 = input \"x\" : f32[B,3,8]\n"
    "%1 = const \"c\" : f32[1] = [0x1p+3]\n"
    "%2 = div %0, %1 : f32[B,3,8]\n"
    "%3 = maximum %2, %0 : f32[B,3,8]\n"
    "%4 = minimum %3, %1 : f32[B,3,8]\n"
    "%5 = neg %4 : f32[B,3,8]\n"
    "%6 = exp %5 : f32[B,3,8]\n"
    "%7 = log %6 : f32[B,3,8]\n"
    "%8 = pow %7 {exponent=2} : f32[B,3,8]\n"
    "%9 = sqrt %8 : f32[B,3,8]\n"
    "%10 = rsqrt %6 : f32[B,3,8]\n"
    "%11 = silu %10 : f32[B,3,8]\n"
    "%12 = leaky_relu %11 {slope=0.01} : f32[B,3,8]\n"
    "%13 = elu %12 {alpha=1.5} : f32[B,3,8]\n"
    "%14 = hardtanh %13 {min=0, max=6} : f32[B,3,8]\n"
    "%15 = softplus %14 {beta=1, threshold=20} : f32[B,3,8]\n"
    "%16 = sum %15 {dim=0, keepdim=false} : f32[3,8]\n"
    "%17 = mean %15 {dim=-1, keepdim=true} : f32[B,3,1]\n"
    "%18 = softmax %15 {dim=-1} : f32[B,3,8]\n"
    "%19 = log_softmax %18 {dim=0} : f32[B,3,8]\n"
    "%20 = param \"ln.weight\" : f32[8]\n"
    "%21 = param \"ln.bias\" : f32[8]\n"
    "%22 = layer_norm %19, %20, %21 {eps=1e-05} : f32[B,3,8]\n"
    "%23 = layer_norm %22 {eps=0.001} : f32[B,3,8]\n"
    "%24 = sub %23, %17 : f32[B,3,8]\n"
    "%25 = add %24, %16 : f32[B,3,8]\n"
    "%26 = pow %25 {exponent=0.5} : f32[B,3,8]\n"
    "return %26\n",
    /* the layers of CNNs, every attribute given */
    "maskjit-ir 1\n"
    "%0 = input \"x\" : f32[B,4,7,9]\n"
    "%1 = param \"w\" : f32[6,2,3,3]\n"
    "%2 = param \"b\" : f32[6]\n"
    "%3 = conv2d %0, %1, %2 {stride=[2,1], padding=[1,0], dilation=[1,2], groups=2} : f32[B,6,4,5]\n"
    "%4 = param \"mean\" : f32[6]\n"
    "%5 = param \"var\" : f32[6]\n"
    "%6 = batch_norm %3, %4, %5, %2, %4 {eps=0.001} : f32[B,6,4,5]\n"
    "%7 = batch_norm %6, %4, %5 {eps=1e-05} : f32[B,6,4,5]\n"
    "%8 = max_pool2d %7 {kernel=[3,2], stride=[1,2], padding=[1,1]} : f32[B,6,4,3]\n"
    "%9 = avg_pool2d %8 {kernel=[2,3], stride=[1,1], padding=[1,1], count_include_pad=false} : f32[B,6,5,3]\n"
    "%10 = avg_pool2d %9 {kernel=[2,2], stride=[2,1], padding=[1,0], count_include_pad=true} : f32[B,6,3,2]\n"
    "%11 = adaptive_avg_pool2d %10 {size=[2,3]} : f32[B,6,2,3]\n"
    "%12 = param \"w1\" : f32[3,6,1,1]\n"
    "%13 = conv2d %11, %12 {stride=[1,1], padding=[0,0], dilation=[1,1], groups=1} : f32[B,3,2,3]\n"
    "return %13\n",
};

Test(ir, every_op_round_trips_and_matches_eager) {
    uint64_t used = 0;
    for (size_t i = 0; i < sizeof op_graphs / sizeof *op_graphs; i++) used |= check_graph_text(op_graphs[i]);
    for (int op = 0; op < MJ_OP_COUNT; op++)
        cr_expect(used & (UINT64_C(1) << op), "op %s is not covered by a test graph", mj_op_table[op].name);
}

/* The families that switches over mj_op use (ir.h) agree with ops.def's
 * flags, and each activation's op is the one acts.def names. */
Test(ir, op_families_and_activation_ops_agree_with_the_tables) {
    cr_assert(mj_op_families_agree());
    cr_assert_eq(mj_op_for_act(MJ_ACT_NONE), MJ_OP_COUNT);
    for (int a = 1; a < MJ_ACT_COUNT; a++) {
        mj_op op = mj_op_for_act((mj_act)a);
        cr_assert_lt(op, MJ_OP_COUNT, "%s has no op", mj_act_name((mj_act)a));
        cr_assert_eq(mj_op_table[op].act, (mj_act)a);
        cr_assert_str_eq(mj_op_table[op].name, mj_act_name((mj_act)a));
    }
}

Test(ir, const_data_inline_exact) {
    /* inf, nan, -0, denormal and 1/3 survive print -> parse bit for bit */
    float vals[6] = {INFINITY, -INFINITY, NAN, -0.0f, 1e-45f, 1.0f / 3.0f};
    int64_t n = 6;
    mj_tensor *t;
    OK(mj_tensor_from_data(&t, 1, &n, vals));
    mj_graph *g;
    OK(mj_graph_new(&g));
    mj_type ti = {.rank = 2, .dims = {MJ_DIM_BATCH, 6}}, tc = {.rank = 1, .dims = {6}};
    int32_t x, c, y;
    OK(mj_graph_add_leaf(g, MJ_OP_INPUT, "x", &ti, NULL, &x));
    OK(mj_graph_add_leaf(g, MJ_OP_CONST, "we\"ird\\name", &tc, t, &c));
    int32_t ops[2] = {x, c};
    OK(mj_graph_add_op(g, MJ_OP_ADD, 2, ops, MJ_ACT_NONE, NULL, &y));
    OK(mj_graph_add_output(g, y));
    char *text = mj_graph_to_string(g);
    cr_assert(strstr(text, "const \"we\\\"ird\\\\name\" : f32[6] = [inf, -inf, "), "%s", text);
    mj_graph *g2 = parse_ok(text);
    const mj_tensor *t2 = g2->nodes[1].tensor;
    cr_assert_not_null(t2);
    cr_assert_str_eq(g2->nodes[1].name, "we\"ird\\name");
    for (int i = 0; i < 6; i++) {
        uint32_t a, b;
        memcpy(&a, &vals[i], 4);
        memcpy(&b, &mj_tensor_data(t2)[i], 4);
        if (isnan(vals[i])) cr_assert(isnan(mj_tensor_data(t2)[i]));
        else cr_assert_eq(a, b, "element %d: %08x vs %08x", i, a, b);
    }
    char *text2 = mj_graph_to_string(g2);
    cr_assert_str_eq(text, text2);
    MJT_FREE(text, text2);
    mj_graph_free(g);
    mj_graph_free(g2);
    mj_tensor_release(t);
}

Test(ir, big_const_not_inline_and_comments) {
    const char *text = "# a comment\n\n  maskjit-ir 1   # header\n"
                       "%0 = input \"x\" : f32[B,65]   # trailing comment\n\n"
                       "%1 = const \"big\" : f32[65]\n"
                       "%2 = add %0, %1 : f32[B,65]\n"
                       "return %2\n# done\n\n";
    mj_graph *g = parse_ok(text);
    cr_assert_null(g->nodes[1].tensor);
    /* unbound const -> the interpreter names it */
    int64_t shape[2] = {2, 65};
    mj_tensor *x = randn(2, shape, 1), *y = NULL;
    cr_assert_eq(mj_graph_run(g, x, &y), MJ_ERR_STATE);
    cr_assert(strstr(mj_last_error(), "\"big\""), "%s", mj_last_error());
    /* bind it: 65 elements are printed without data */
    int64_t n = 65;
    mj_tensor *b = randn(1, &n, 2);
    mj_tensor_dict *d;
    OK(mj_tensor_dict_new(&d));
    OK(mj_tensor_dict_set(d, "big", b));
    OK(mj_graph_bind(g, d));
    char *p = mj_graph_to_string(g);
    cr_assert(strstr(p, "%1 = const \"big\" : f32[65]\n"), "%s", p);
    OK(mj_graph_run(g, x, &y));
    mj_tensor *ref;
    OK(mj_add(&ref, x, b));
    cr_assert(mj_tensor_equal(y, ref));
    free(p);
    MJT_RELEASE(ref, y, x, b);
    mj_tensor_dict_free(d);
    mj_graph_free(g);
}

/* ---- malformed texts ----------------------------------------------------------------- */

typedef struct bad_case {
    const char *text, *where, *fragment;
} bad_case;

#define HDR "maskjit-ir 1\n"
#define X "%0 = input \"x\" : f32[B,4]\n"

static const bad_case bad_cases[] = {
    {"", "1:1:", "header 'maskjit-ir 1'"},                                           /* empty input */
    {"   \n# only a comment\n", "3:1:", "found end of input"},                     /* empty input */
    {HDR X "%2 = relu %0 : f32[B,4]\nreturn %2\n", "3:1:", "expected %1"},           /* bad id order */
    {HDR X "%1 = frobnicate %0 : f32[B,4]\nreturn %1\n", "3:6:", "unknown op 'frobnicate'"},
    {HDR X "%1 = relu %0, %0 : f32[B,4]\nreturn %1\n", "3:15:", "at most 1 operands"}, /* wrong arity */
    {HDR X "%1 = matmul %0 : f32[B,4]\nreturn %1\n", "3:16:", "at least 2 operands"},  /* wrong arity */
    {HDR X "%1 = relu %7 : f32[B,4]\nreturn %1\n", "3:11:", "%7 is not defined"},   /* undefined operand */
    {HDR X "%1 = relu %2 : f32[B,4]\n%2 = relu %0 : f32[B,4]\nreturn %1\n", "3:11:", "%2 is not defined"}, /* forward */
    {HDR X "%1 = relu %0 : f32[B,5]\nreturn %1\n", "3:16:", "differs from the inferred"}, /* type mismatch */
    {HDR X "%1 = relu %0 : f32(B,4)\nreturn %1\n", "3:16:", "expected a type 'f32[...]'"}, /* bad type syntax */
    {HDR X "%1 = relu %0 : f32[B,,4]\nreturn %1\n", "3:22:", "expected a dim"},          /* bad type syntax */
    {HDR X "%1 = relu %0 : f32[B,4]\n", "4:1:", "found end of input"},                     /* missing return */
    {HDR "%0 = input \"x : f32[B,4]\nreturn %0\n", "2:12:", "unterminated string"},
    {HDR X "%1 = relu %0 {act=relu} : f32[B,4]\nreturn %1\n", "3:14:", "takes no {act=...}"},
    {HDR X "%1 = param \"w\" : f32[4,4]\n%2 = linear_act %0, %1 {act=swish} : f32[B,4]\nreturn %2\n", "4:29:",
     "found 'swish'"},                                                                       /* bad act name */
    {HDR X "%1 = param \"w\" : f32[4,4]\n%2 = linear_act %0, %1 {act=none} : f32[B,4]\nreturn %2\n", "4:29:",
     "(relu, gelu, gelu_tanh, sigmoid, tanh, silu), found 'none'"}, /* the list is maskjit/acts.def's */
    {HDR X "%1 = param \"w\" : f32[4,4]\n%2 = linear_act %0, %1 : f32[B,4]\nreturn %2\n", "4:24:",
     "an {act=...} attribute"},
    /* linear_add: r last, exactly the result's type (no broadcasting) */
    {HDR X "%1 = param \"w\" : f32[4,4]\n%2 = param \"b\" : f32[4]\n%3 = linear_add %0, %1, %2 : f32[B,4]\nreturn %3\n",
     "5:30:", "linear_add: residual does not have the result's type: residual f32[4] with f32[B,4]"},
    {HDR X "%1 = param \"w\" : f32[4,4]\n%2 = linear_add %0, %1 : f32[B,4]\nreturn %2\n", "4:24:",
     "at least 3 operands"},
    {HDR X "%1 = param \"w\" : f32[4,4]\n%2 = linear_act_add %0, %1, %0 : f32[B,4]\nreturn %2\n", "4:32:",
     "an {act=...} attribute"},
    {HDR X "%1 = param \"w\" : f32[4]\n%2 = param \"w\" : f32[4]\nreturn %0\n", "4:12:", "duplicate param name \"w\""},
    {HDR X "return %0\n%1 = relu %0 : f32[B,4]\n", "4:1:", "end of input after 'return'"}, /* garbage after return */
    {HDR X "return %0 junk\n", "3:11:", "expected end of line, found 'junk'"},
    {HDR "%0 = input \"x\" : f32[B,99999999999999999999]\nreturn %0\n", "2:24:", "too large"}, /* huge dims */
    {HDR "%0 = input \"x\" : f32[B,1048577,1048576]\nreturn %0\n", "2:18:", "more than 2^40"}, /* huge numel */
    {HDR "%0 = input \"x\" : f32[1,2,3,4,5]\nreturn %0\n", "2:18:", "more than 4 dims"},
    {HDR "%0 = param \"x\" : f32[B,4]\nreturn %0\n", "2:22:", "batch dim B is only allowed"},
    {HDR X "%1 = const \"c\" : f32[2] = [1, 2, 3]\nreturn %0\n", "3:27:", "3 numbers but the type f32[2] has 2"},
    {HDR X "%1 = const \"c\" : f32[2] = [1, zz]\nreturn %0\n", "3:31:", "expected a number, found 'zz'"},
    {HDR X "%1 = add %0, %0 : f32[B,4]\nreturn %9\n", "4:8:", "%9 is not defined"},
    {HDR "%0 = param \"w\" : f32[4]\nreturn %0\n", "3:1:", "no input"},                   /* verifier */
    {HDR "%0 = input \"bad\x01name\" : f32[B,4]\nreturn %0\n", "2:16:", "printable ASCII"},
    {HDR "%0 = input \"a\\n\" : f32[B,4]\nreturn %0\n", "2:15:", "escape"},
    {"maskjit-ir 2\n", "1:12:", "version 1"},
    {HDR X "%1 = matmul %0, %0 : f32[B,B]\nreturn %1\n", "3:22:", "inner dims differ"},
    {HDR X "%1 = param \"m\" : f32[3,4]\n%2 = add %0, %1 : f32[B,4]\nreturn %2\n", "4:19:",
     "cannot broadcast f32[B,4] with f32[3,4]"},
    {HDR X "%1 = reshape %0 : f32[B,5]\nreturn %1\n", "3:19:", "element counts differ"},
};

Test(ir, malformed_texts_are_rejected_with_line_col) {
    cr_assert_geq(sizeof bad_cases / sizeof *bad_cases, 15);
    for (size_t i = 0; i < sizeof bad_cases / sizeof *bad_cases; i++) {
        const bad_case *c = &bad_cases[i];
        mj_graph *g = NULL;
        mj_status s = mj_graph_parse(c->text, &g);
        cr_expect_eq(s, MJ_ERR_FORMAT, "case %zu: status %s (%s)", i, mj_status_name(s), mj_last_error());
        cr_expect_null(g);
        const char *m = mj_last_error();
        cr_expect(strncmp(m, c->where, strlen(c->where)) == 0, "case %zu: want '%s' at the start of: %s", i,
                  c->where, m);
        cr_expect(strstr(m, c->fragment), "case %zu: want '%s' in: %s", i, c->fragment, m);
        if (g) mj_graph_free(g);
    }
}

Test(ir, parser_survives_truncations_and_bytes) {
    /* Every prefix of a valid text and single-byte corruptions: no crash,
     * either OK or a "line:col:" message. */
    const char *src = op_graphs[1];
    size_t n = strlen(src);
    char *buf = malloc(n + 1);
    for (size_t cut = 0; cut <= n; cut++) {
        memcpy(buf, src, cut);
        buf[cut] = '\0';
        mj_graph *g = NULL;
        mj_status s = mj_graph_parse(buf, &g);
        if (s == MJ_OK) mj_graph_free(g);
        else cr_assert(s == MJ_ERR_FORMAT && strchr(mj_last_error(), ':'), "%s", mj_last_error());
    }
    const char bytes[] = {'%', '"', '\\', ',', '[', ']', '{', '}', '9', 'B', '\n', ' ', '\x7f', '\xff', '='};
    for (size_t pos = 0; pos < n; pos++)
        for (size_t b = 0; b < sizeof bytes; b++) {
            memcpy(buf, src, n + 1);
            buf[pos] = bytes[b];
            mj_graph *g = NULL;
            mj_status s = mj_graph_parse(buf, &g);
            if (s == MJ_OK) mj_graph_free(g);
            else cr_assert_eq(s, MJ_ERR_FORMAT, "%s", mj_last_error());
        }
    free(buf);
}

/* ---- builder and shape rules ---------------------------------------------------------------- */

Test(ir, builder_shape_errors) {
    mj_graph *g;
    OK(mj_graph_new(&g));
    mj_type tb = {.rank = 2, .dims = {MJ_DIM_BATCH, 16}}, t3 = {.rank = 2, .dims = {3, 16}};
    int32_t x, p, y;
    OK(mj_graph_add_leaf(g, MJ_OP_INPUT, "x", &tb, NULL, &x));
    OK(mj_graph_add_leaf(g, MJ_OP_PARAM, "p", &t3, NULL, &p));
    int32_t ops[2] = {x, p};
    cr_assert_eq(mj_graph_add_op(g, MJ_OP_ADD, 2, ops, MJ_ACT_NONE, NULL, &y), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "add: cannot broadcast f32[B,16] with f32[3,16]"), "%s", mj_last_error());
    cr_assert_eq(g->n_nodes, 2, "a failed add_op changed the graph");
    /* B vs 1 -> B */
    mj_type t1 = {.rank = 2, .dims = {1, 16}};
    OK(mj_graph_add_leaf(g, MJ_OP_PARAM, "one", &t1, NULL, &p));
    ops[1] = p;
    OK(mj_graph_add_op(g, MJ_OP_SUB, 2, ops, MJ_ACT_NONE, NULL, &y));
    cr_assert(mj_type_equal(&g->nodes[y].type, &tb));
    /* linear: in_features mismatch names both types */
    mj_type tw = {.rank = 2, .dims = {8, 15}};
    int32_t w;
    OK(mj_graph_add_leaf(g, MJ_OP_PARAM, "w", &tw, NULL, &w));
    ops[1] = w;
    cr_assert_eq(mj_graph_add_op(g, MJ_OP_LINEAR, 2, ops, MJ_ACT_NONE, NULL, &y), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "linear:") && strstr(mj_last_error(), "f32[B,16]") &&
              strstr(mj_last_error(), "f32[8,15]"), "%s", mj_last_error());
    /* linear_act needs an act; relu takes none */
    cr_assert_neq(mj_graph_add_op(g, MJ_OP_LINEAR_ACT, 2, ops, MJ_ACT_NONE, NULL, &y), MJ_OK);
    cr_assert(strstr(mj_last_error(), "linear_act"), "%s", mj_last_error());
    cr_assert_neq(mj_graph_add_op(g, MJ_OP_RELU, 1, &x, MJ_ACT_RELU, NULL, &y), MJ_OK);
    /* reshape needs a declared type */
    cr_assert_eq(mj_graph_add_op(g, MJ_OP_RESHAPE, 1, &x, MJ_ACT_NONE, NULL, &y), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "reshape"), "%s", mj_last_error());
    /* transpose needs rank >= 2 */
    mj_type r1 = {.rank = 1, .dims = {MJ_DIM_BATCH}};
    int32_t z;
    OK(mj_graph_add_leaf(g, MJ_OP_INPUT, "z", &r1, NULL, &z));
    cr_assert_eq(mj_graph_add_op(g, MJ_OP_TRANSPOSE, 1, &z, MJ_ACT_NONE, NULL, &y), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "transpose") && strstr(mj_last_error(), "f32[B]"), "%s", mj_last_error());
    /* a param type may not hold B; a bound tensor must fit the type */
    cr_assert_neq(mj_graph_add_leaf(g, MJ_OP_PARAM, "bad", &tb, NULL, &y), MJ_OK);
    int64_t s5 = 5;
    mj_tensor *t;
    OK(mj_tensor_zeros(&t, 1, &s5));
    cr_assert_eq(mj_graph_add_leaf(g, MJ_OP_PARAM, "bad", &t3, t, &y), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "f32[5]") && strstr(mj_last_error(), "f32[3,16]"), "%s", mj_last_error());
    mj_tensor_release(t);
    mj_graph_free(g);
}

/* ---- helpers for passes ----------------------------------------------------------------------------- */

Test(ir, compact_replace_use_counts_input_free) {
    mj_graph *g = parse_ok("maskjit-ir 1\n"
                           "%0 = input \"x\" : f32[B,4]\n"
                           "%1 = param \"a\" : f32[4]\n"
                           "%2 = param \"b\" : f32[4]\n"
                           "%3 = mul %1, %2 : f32[4]\n"
                           "%4 = mul %1, %2 : f32[4]\n"
                           "%5 = add %0, %4 : f32[B,4]\n"
                           "%6 = relu %0 : f32[B,4]\n"
                           "return %5, %4\n");
    int32_t *uc = mj_graph_use_counts(g);
    /* uses by live nodes only: %3 and %6 reach no output */
    const int32_t want_uc[7] = {1, 1, 1, 0, 2, 1, 0};
    cr_assert_arr_eq(uc, want_uc, sizeof want_uc);
    free(uc);
    bool *f = mj_graph_input_free(g);
    const bool want_f[7] = {false, true, true, true, true, false, false};
    cr_assert_arr_eq(f, want_f, sizeof want_f);
    free(f);
    mj_graph_replace_uses(g, 4, 3);
    cr_assert_eq(g->nodes[5].operands[1], 3);
    cr_assert_eq(g->outputs[1], 3);
    bool keep[7] = {true, true, true, true, false, true, false};
    bool bad[7] = {true, false, true, true, false, true, false};
    cr_assert_eq(mj_graph_compact(g, bad), MJ_ERR_INVALID);
    cr_assert_eq(g->n_nodes, 7, "a failed compact changed the graph");
    OK(mj_graph_compact(g, keep));
    char *p = mj_graph_to_string(g);
    cr_assert_str_eq(p, "maskjit-ir 1\n"
                        "%0 = input \"x\" : f32[B,4]\n"
                        "%1 = param \"a\" : f32[4]\n"
                        "%2 = param \"b\" : f32[4]\n"
                        "%3 = mul %1, %2 : f32[4]\n"
                        "%4 = add %0, %3 : f32[B,4]\n"
                        "return %4, %3\n");
    free(p);
    OK(mj_graph_verify(g));
    mj_graph_free(g);
}

/* ---- verifier ------------------------------------------------------------------------------------- */

static mj_graph *small_graph(void) {
    return parse_ok("maskjit-ir 1\n"
                    "%0 = input \"x\" : f32[B,4]\n"
                    "%1 = param \"w\" : f32[4,4]\n"
                    "%2 = param \"v\" : f32[4,4]\n"
                    "%3 = mul %1, %2 : f32[4,4]\n"
                    "%4 = linear_act %0, %3 {act=relu} : f32[B,4]\n"
                    "return %4\n");
}

Test(ir, verifier_catches_corruption) {
    mj_graph *g;
#define CORRUPT(stmt, frag)                                                                   \
    do {                                                                                      \
        g = small_graph();                                                                    \
        stmt;                                                                                 \
        mj_status s_ = mj_graph_verify(g);                                                    \
        cr_expect_neq(s_, MJ_OK, "verify accepted: %s", #stmt);                               \
        cr_expect(strstr(mj_last_error(), frag), "%s: want '%s' in: %s", #stmt, frag, mj_last_error()); \
        mj_graph_free(g);                                                                     \
    } while (0)
    CORRUPT(g->nodes[3].operands[0] = 3, "%3 (mul): operand %3 is not an earlier value");
    CORRUPT(g->nodes[3].operands[1] = 9, "%3 (mul): operand %9");
    CORRUPT(g->nodes[4].act = MJ_ACT_NONE, "%4 (linear_act)");
    CORRUPT(g->nodes[3].act = MJ_ACT_RELU, "%3 (mul): carries an activation");
    CORRUPT(g->nodes[4].type.dims[1] = 5, "%4 (linear_act)");
    CORRUPT(g->nodes[3].n_operands = 1, "%3 (mul): has 1 operands");
    CORRUPT(g->nodes[3].op = MJ_OP_RELU, "%3 (relu)");
    CORRUPT(strcpy(g->nodes[2].name, "w"), "duplicate name \"w\"");
    CORRUPT(g->n_outputs = 0, "no output");
    CORRUPT(g->outputs[0] = 17, "output 0 is %17");
    CORRUPT(g->nodes[1].type.dims[0] = MJ_DIM_BATCH, "%1 (param)");
    CORRUPT(g->nodes[0].op = MJ_OP_PARAM, "%0 (param)");
    CORRUPT(g->nodes[1].name[0] = '\n', "%1 (param): a leaf needs a name");
    /* a bound tensor of the wrong shape */
    g = small_graph();
    int64_t sh[2] = {4, 3};
    mj_tensor *t;
    OK(mj_tensor_zeros(&t, 2, sh));
    g->nodes[2].tensor = t;
    cr_assert_eq(mj_graph_verify(g), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "%2 (param): bound tensor is f32[4,3] but the type is f32[4,4]"), "%s",
              mj_last_error());
    mj_graph_free(g);
#undef CORRUPT
}

/* ---- interpreter inputs, bind, freeze, clone ---------------------------------------------------- */

Test(ir, interpreter_input_errors) {
    mj_graph *g = small_graph();
    mj_tensor *ins[1], *vals[5];
    int n_in;
    make_leaves(g, 3, 9, ins, &n_in, vals);
    mj_tensor *y = NULL;
    int64_t bad[2] = {3, 5}, zero[2] = {0, 4}, r1 = 4;
    mj_tensor *xb, *x0, *x1;
    OK(mj_tensor_zeros(&xb, 2, bad));
    OK(mj_tensor_zeros(&x0, 2, zero));
    OK(mj_tensor_zeros(&x1, 1, &r1));
    cr_assert_eq(mj_graph_run(g, xb, &y), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "expected f32[B,4]") && strstr(mj_last_error(), "[3, 5]"), "%s",
              mj_last_error());
    cr_assert_eq(mj_graph_run(g, x0, &y), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "[0, 4]"), "%s", mj_last_error());
    cr_assert_eq(mj_graph_run(g, x1, &y), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "[4]"), "%s", mj_last_error());
    cr_assert_neq(mj_graph_run(g, NULL, &y), MJ_OK);
    cr_assert(strstr(mj_last_error(), "expected f32[B,4], got NULL"), "%s", mj_last_error());
    cr_assert_null(y);
    OK(mj_graph_run(g, ins[0], &y));
    MJT_RELEASE(y, xb, x0, x1, ins[0]);
    mj_graph_free(g);
}

Test(ir, bind_freeze_clone) {
    mj_graph *g = small_graph();
    /* unbound -> freeze fails, interpreter names it */
    cr_assert_eq(mj_graph_freeze(g), MJ_ERR_STATE);
    cr_assert(strstr(mj_last_error(), "\"w\""), "%s", mj_last_error());
    mj_tensor_dict *d;
    OK(mj_tensor_dict_new(&d));
    int64_t s44[2] = {4, 4}, s43[2] = {4, 3};
    mj_tensor *w = randn(2, s44, 1), *v = randn(2, s44, 2), *bad = randn(2, s43, 3);
    OK(mj_tensor_dict_set(d, "w", w));
    /* missing "v" */
    cr_assert_eq(mj_graph_bind(g, d), MJ_ERR_KEY);
    cr_assert(strstr(mj_last_error(), "\"v\""), "%s", mj_last_error());
    cr_assert_null(g->nodes[1].tensor, "a failed bind changed the graph");
    OK(mj_tensor_dict_set(d, "v", bad));
    cr_assert_eq(mj_graph_bind(g, d), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "f32[4,3]") && strstr(mj_last_error(), "f32[4,4]"), "%s", mj_last_error());
    OK(mj_tensor_dict_set(d, "v", v));
    OK(mj_tensor_dict_set(d, "extra", bad));
    OK(mj_graph_bind(g, d));
    cr_assert_eq(g->nodes[1].tensor, w);

    mj_graph *c;
    OK(mj_graph_clone(g, &c));
    char *p1 = mj_graph_to_string(g), *p2 = mj_graph_to_string(c);
    cr_assert_str_eq(p1, p2);
    MJT_FREE(p1, p2);

    int64_t xs[2] = {5, 4};
    mj_tensor *x = randn(2, xs, 4), *y0, *y1, *y2;
    OK(mj_graph_run(g, x, &y0));
    OK(mj_graph_freeze(c));
    cr_assert_eq(c->nodes[1].op, MJ_OP_CONST);
    cr_assert_neq(c->nodes[1].tensor, w, "freeze must copy");
    OK(mj_graph_verify(c));
    /* live graph sees a weight update, the frozen one does not */
    mj_tensor_data_mut(w)[0] += 1.0f;
    OK(mj_graph_run(g, x, &y1));
    OK(mj_graph_run(c, x, &y2));
    cr_assert(mj_tensor_equal(y0, y2));
    cr_assert(!mj_tensor_equal(y0, y1));
    /* frozen graph: 4x4 consts (16 <= 64) are printed inline and parse back */
    char *fp = mj_graph_to_string(c);
    cr_assert(strstr(fp, "%1 = const \"w\" : f32[4,4] = ["), "%s", fp);
    mj_graph *c2 = parse_ok(fp);
    mj_tensor *y3;
    OK(mj_graph_run(c2, x, &y3));
    cr_assert(mj_tensor_equal(y3, y2));
    free(fp);
    mj_tensor_release(y3);
    mj_graph_free(c2);

    MJT_RELEASE(y0, y1, y2, x, w, v, bad);
    mj_tensor_dict_free(d);
    mj_graph_free(c);
    mj_graph_free(g);
}

Test(ir, inspection_and_warnings) {
    mj_graph *g = parse_ok(op_graphs[2]);
    cr_assert_eq(mj_graph_node_count(g), 4);
    cr_assert_eq(mj_graph_input_count(g), 1);
    cr_assert_eq(mj_graph_output_count(g), 2);
    cr_assert_eq(mj_graph_input_rank(g, 0), 2);
    cr_assert_eq(mj_graph_input_dim(g, 0, 0), -1);
    cr_assert_eq(mj_graph_input_dim(g, 0, 1), 4);
    cr_assert_eq(mj_graph_output_rank(g, 0), 2);
    cr_assert_eq(mj_graph_output_dim(g, 0, 0), 5);
    cr_assert_eq(mj_graph_output_dim(g, 0, 1), -1);
    cr_assert_eq(mj_graph_output_dim(g, 1, 1), 5);
    cr_assert_eq(mj_graph_warning_count(g), 0);
    OK(mj_graph_add_warning(g, "read %d values", 3));
    cr_assert_eq(mj_graph_warning_count(g), 1);
    cr_assert_str_eq(mj_graph_warning(g, 0), "read 3 values");
    cr_assert_null(mj_graph_warning(g, 1));
    /* mj_graph_run needs one input and one output */
    int64_t xs[2] = {2, 4};
    mj_tensor *x = randn(2, xs, 1), *y = NULL;
    cr_assert_eq(mj_graph_run(g, x, &y), MJ_ERR_INVALID);
    cr_assert(strstr(mj_last_error(), "2 outputs"), "%s", mj_last_error());
    mj_tensor_release(x);
    mj_graph_free(g);
}

/* ---- DOT -------------------------------------------------------------------------------------------- */

Test(ir, dot_output_has_nodes_and_edges) {
    mj_graph *g = parse_ok(op_graphs[1]);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    OK(mj_graph_write_dot(g, f));
    fclose(f);
    cr_assert(strncmp(buf, "digraph", 7) == 0);
    for (int i = 0; i < 6; i++) {
        char want[32];
        snprintf(want, sizeof want, "  n%d [label=\"%%%d = ", i, i);
        cr_assert(strstr(buf, want), "missing node %d in:\n%s", i, buf);
    }
    cr_assert(strstr(buf, "%5 = linear_act {act=relu}"), "%s", buf);
    cr_assert(strstr(buf, "\\\"linear.parametrizations.weight.original\\\""), "%s", buf);
    cr_assert(strstr(buf, "f32[B,16]"), "%s", buf);
    cr_assert(strstr(buf, "n2 -> n3;") && strstr(buf, "n1 -> n3;") && strstr(buf, "n3 -> n5;") &&
              strstr(buf, "n0 -> n5;") && strstr(buf, "n4 -> n5;") && strstr(buf, "n5 -> out0;"), "%s", buf);
    free(buf);
    mj_graph_free(g);
}

/* ---- save / load ------------------------------------------------------------------------------------ */

Test(ir, save_load_round_trip) {
    mj_graph *g = parse_ok("maskjit-ir 1\n"
                           "%0 = input \"x\" : f32[B,70]\n"
                           "%1 = param \"w\" : f32[8,70]\n"
                           "%2 = const \"big\" : f32[70]\n"
                           "%3 = const \"small\" : f32[2] = [0x1p-1, -0x1p+2]\n"
                           "%4 = linear %0, %1 : f32[B,8]\n"
                           "%5 = mul %0, %2 : f32[B,70]\n"
                           "%6 = relu %4 : f32[B,8]\n"
                           "return %6, %5, %3\n");
    mj_tensor *ins[1], *vals[7];
    int n_in;
    make_leaves(g, 3, 11, ins, &n_in, vals);
    char path[] = "/tmp/maskjit-ir-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    OK(mj_graph_save(g, path));
    mj_graph *l = NULL;
    OK(mj_graph_load(path, &l));
    char *a = mj_graph_to_string(g), *b = mj_graph_to_string(l);
    cr_assert_str_eq(a, b);
    MJT_FREE(a, b);
    mj_tensor *o1[3], *o2[3];
    OK(mj_interp_run(g, 1, (const mj_tensor *const *)ins, 3, o1));
    OK(mj_interp_run(l, 1, (const mj_tensor *const *)ins, 3, o2));
    for (int i = 0; i < 3; i++) {
        cr_assert(mj_tensor_equal(o1[i], o2[i]), "output %d", i);
        MJT_RELEASE(o1[i], o2[i]);
    }
    /* a plain safetensors file without the IR is refused clearly */
    mj_tensor_dict *d;
    OK(mj_tensor_dict_new(&d));
    OK(mj_tensor_dict_set(d, "w", vals[1]));
    OK(mj_safetensors_save(path, d));
    mj_graph *l2 = NULL;
    cr_assert_eq(mj_graph_load(path, &l2), MJ_ERR_FORMAT);
    cr_assert(strstr(mj_last_error(), "maskjit.format"), "%s", mj_last_error());
    /* IR present but a tensor missing */
    OK(mj_tensor_dict_set_meta(d, "maskjit.format", "trace-v1"));
    char *text = mj_graph_to_string(g);
    OK(mj_tensor_dict_set_meta(d, "maskjit.ir", text));
    free(text);
    OK(mj_safetensors_save(path, d));
    cr_assert_eq(mj_graph_load(path, &l2), MJ_ERR_KEY);
    cr_assert(strstr(mj_last_error(), "\"big\""), "%s", mj_last_error());
    cr_assert_null(l2);
    /* saving an unbound graph is refused */
    mj_graph *u = parse_ok(op_graphs[1]);
    cr_assert_eq(mj_graph_save(u, path), MJ_ERR_STATE);
    cr_assert(strstr(mj_last_error(), "not bound"), "%s", mj_last_error());
    mj_graph_free(u);
    unlink(path);
    mj_tensor_dict_free(d);
    mj_tensor_release(ins[0]);
    mj_graph_free(l);
    mj_graph_free(g);
}
