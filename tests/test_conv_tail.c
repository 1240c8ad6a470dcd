/* Suite "conv_tail": the elementwise ops a compiled conv2d computes in its
 * store (jit/lower_plan.c plans the tail, jit/lower_cnn.c and
 * jit/lower_conv_sparse.c emit it): batch_norm, activations and a residual
 * add after a conv, against the eager modules bit for bit in exact mode
 * (live and frozen), over geometries and masks that take each conv
 * lowering (dense tile, plane accumulator, sparse tap table); and the plan
 * itself: which nodes the conv absorbs, and that they get no storage. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "jit/jit_internal.h"
#include "jit/jit_test.h"
#include "maskjit.h"
#include "test_cnn_models.h"
#include "test_util.h"

MJT_JIT_FIXTURE
TestSuite(conv_tail, .init = setup, .fini = teardown, .timeout = 300);

/* The forms of the block's forward (children "conv", "bn", "proj"):
 *   BN:          bn(conv(x))
 *   BN_RELU:     relu(bn(conv(x)))
 *   RESIDUAL:    relu(bn(conv(x)) + r), r = x or proj(x) computed first
 *   RESIDUAL_RL: relu(r + bn(conv(x))), proj(x) computed after the conv
 *   RELU:        relu(conv(x)), no batch norm */
enum { BN, BN_RELU, RESIDUAL, RESIDUAL_RL, RELU, BASIC, N_FORMS };
static const char *const form_names[N_FORMS] = {"conv+bn", "conv+bn+relu", "conv+bn+add+relu",
                                                "conv+bn+add(r first, later)+relu", "conv+relu",
                                                "ResNet basic block"};
static int form; /* the forward's form: one test process runs one at a time */

static mj_status call(mj_module *self, const char *child, const mj_tensor *x, mj_tensor **y) {
    return mj_module_forward(mj_module_find(self, child), x, y);
}

/* BASIC: relu(bn2(conv2(relu(bn(conv(x))))) + x), without the add when
 * the convs change x's shape */
static mj_status basic_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    const char *seq[5] = {"conv", "bn", "", "conv2", "bn2"};
    mj_tensor *h = mj_tensor_retain((mj_tensor *)x), *t = NULL;
    mj_status s = MJ_OK;
    for (int i = 0; i < 5 && s == MJ_OK; i++) {
        s = seq[i][0] ? call(self, seq[i], h, &t) : mj_activation(&t, MJ_ACT_RELU, h);
        mj_tensor_release(h);
        h = s == MJ_OK ? t : NULL;
    }
    if (s == MJ_OK && mj_tensor_rank(h) == mj_tensor_rank(x) && mj_tensor_numel(h) == mj_tensor_numel(x) &&
        mj_tensor_dim(h, 1) == mj_tensor_dim(x, 1) && mj_tensor_dim(h, 2) == mj_tensor_dim(x, 2)) {
        s = mj_add(&t, h, x);
        mj_tensor_release(h);
        h = s == MJ_OK ? t : NULL;
    }
    if (s == MJ_OK) {
        s = mj_activation(&t, MJ_ACT_RELU, h);
        mj_tensor_release(h);
        h = s == MJ_OK ? t : NULL;
    }
    if (s != MJ_OK) return s;
    *y = h;
    return MJ_OK;
}

static mj_status block_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    if (form == BASIC) return basic_forward(self, x, y);
    mj_tensor *r = NULL, *h = NULL, *t = NULL;
    bool proj = mj_module_find(self, "proj") != NULL;
    mj_status s = MJ_OK;
    if (form == RESIDUAL) s = proj ? call(self, "proj", x, &r) : (r = mj_tensor_retain((mj_tensor *)x), MJ_OK);
    if (s == MJ_OK) s = call(self, "conv", x, &h);
    if (s == MJ_OK && form != RELU) {
        s = call(self, "bn", h, &t);
        mj_tensor_release(h);
        h = t;
    }
    if (s == MJ_OK && form == RESIDUAL_RL)
        s = proj ? call(self, "proj", x, &r) : (r = mj_tensor_retain((mj_tensor *)x), MJ_OK);
    if (s == MJ_OK && (form == RESIDUAL || form == RESIDUAL_RL)) {
        s = form == RESIDUAL ? mj_add(&t, h, r) : mj_add(&t, r, h);
        mj_tensor_release(h);
        h = t;
    }
    if (s == MJ_OK && form != BN) {
        s = mj_activation(&t, MJ_ACT_RELU, h);
        mj_tensor_release(h);
        h = t;
    }
    mj_tensor_release(r);
    if (s != MJ_OK) {
        mj_tensor_release(h);
        return s;
    }
    *y = h;
    return MJ_OK;
}

typedef struct geo {
    int64_t C, O, H, W, k, stride, pad;
    bool bias;
} geo;

/* A masked conv of g: output channel 1 without weights, channel 2 all
 * weights, the others about `density` of them. */
static mj_module *masked_conv(const geo *g, int64_t C, int64_t k, int64_t stride, int64_t pad, double density,
                              mj_rng *rng) {
    mj_conv2d_params p;
    mj_conv2d_params_init(&p);
    p.stride[0] = p.stride[1] = stride;
    p.padding[0] = p.padding[1] = pad;
    mj_module *m = NULL;
    OK(mj_conv2d_new(&m, C, g->O, (int64_t[]){k, k}, &p, g->bias, rng));
    int64_t per = C * k * k;
    mj_tensor *mask = NULL;
    OK(mj_tensor_zeros(&mask, 4, (int64_t[]){g->O, C, k, k}));
    for (int64_t i = 0; i < g->O * per; i++) {
        int64_t o = i / per;
        mj_tensor_data_mut(mask)[i] = o == 2 || (o != 1 && mj_rng_uniform(rng) < density) ? 1.0f : 0.0f;
    }
    mj_parametrization *fs = NULL;
    OK(mj_fake_sparsity_new(&fs, mask));
    OK(mj_register_parametrization(m, "weight", fs));
    mj_tensor_release(mask);
    return m;
}

/* The block of form f on geometry g; the residual is x when the conv keeps
 * x's shape, else a projection conv of the same geometry. BASIC's second
 * conv (O -> O, stride 1, g's kernel and padding) has density2. */
static mj_module *block(const geo *g, int f, double density, double density2, mj_rng *rng) {
    mj_module *m = NULL;
    OK(mj_module_new(&m, "ConvTail", block_forward, NULL, NULL));
    int64_t OH = (g->H + 2 * g->pad - g->k) / g->stride + 1, OW = (g->W + 2 * g->pad - g->k) / g->stride + 1;
    bool same = g->C == g->O && OH == g->H && OW == g->W;
    if ((f == RESIDUAL || f == RESIDUAL_RL) && !same)
        mjc_add(m, "proj", masked_conv(g, g->C, g->k, g->stride, g->pad, 0.5, rng));
    mjc_add(m, "conv", masked_conv(g, g->C, g->k, g->stride, g->pad, density, rng));
    mjc_add(m, "bn", mjc_bn(g->O, 1e-5f, rng));
    if (f == BASIC) {
        mjc_add(m, "conv2", masked_conv(g, g->O, g->k, 1, g->pad, density2, rng));
        mjc_add(m, "bn2", mjc_bn(g->O, 1e-5f, rng));
    }
    return m;
}

static const geo geos[] = {
    {.C = 8, .O = 8, .H = 9, .W = 11, .k = 3, .stride = 1, .pad = 1, .bias = true},
    {.C = 8, .O = 8, .H = 9, .W = 11, .k = 3, .stride = 1, .pad = 1, .bias = false},
    {.C = 8, .O = 16, .H = 9, .W = 11, .k = 3, .stride = 2, .pad = 1, .bias = true},
    {.C = 6, .O = 6, .H = 10, .W = 7, .k = 3, .stride = 1, .pad = 0, .bias = false},
    {.C = 16, .O = 16, .H = 20, .W = 37, .k = 3, .stride = 1, .pad = 1, .bias = true},
    {.C = 4, .O = 12, .H = 8, .W = 8, .k = 1, .stride = 1, .pad = 0, .bias = true},
    /* 1x1 convs whose zero padding is none but whose stored planes still
     * have longer rows (28 -> 32): the second conv reads the first's value
     * in that layout (MobileNet's and ResNet-50's pointwise convs) */
    {.C = 8, .O = 8, .H = 6, .W = 28, .k = 1, .stride = 1, .pad = 0, .bias = false},
    /* a plane narrower than half a vector: two rows in a vector of 16,
     * the last block one row (ResNet's layer4 at 7x7) */
    {.C = 8, .O = 8, .H = 7, .W = 7, .k = 3, .stride = 1, .pad = 1, .bias = true},
};
enum { N_GEOS = sizeof geos / sizeof geos[0] };

/* Every geometry, form and mode at batches 1 and 3: exact modes bit for
 * bit eager, fast modes within tolerance. Densities 0.2 (frozen: the
 * sparse tap table where the stride along W is 1) and 1 (the dense tile
 * where the table's rounded-up tiles cost more fmas than the weights it
 * skips save: checked for 16 -> 16 at 20x37; at 9x11 the table, no more
 * fmas per tap than the dense tile, takes density 1 too);
 * BASIC's second conv also at the other density (frozen: the first conv
 * stores its value padded for the second only when both are sparse). */
static void check_form(int f) {
    form = f;
    mj_rng rng = mjt_rng(90 + (uint64_t)f);
    for (int gi = 0; gi < N_GEOS; gi++)
        for (int di = 0; di < (f == BASIC ? 4 : 2); di++) {
            const geo *g = &geos[gi];
            double density = di % 2 == 0 ? 0.2 : 1.0, density2 = di < 2 ? density : 1.2 - density;
            mj_module *m = block(g, f, density, density2, &rng);
            mj_tensor *x0 = mjc_randn(4, (int64_t[]){2, g->C, g->H, g->W}, &rng);
            mj_graph *gr = mjt_trace(m, x0);
            for (int md = 0; md < 4; md++) {
                mj_compiled *c = mjt_compile(jit, gr, mjt_modes[md]);
                if (gi == 4 && di < 2 && md == 1) /* the lowering: both convs at `density` */
                    cr_expect_eq(mjt_ir_has(c, ".staps.start"), density < 1.0, "%s, density %g: sparse tap table %d",
                                 form_names[f], density, density < 1.0);
                for (int64_t batch = 1; batch <= 3; batch += 2) {
                    mj_tensor *x = mjc_randn(4, (int64_t[]){batch, g->C, g->H, g->W}, &rng);
                    mj_tensor *want = mjt_forward(m, x), *got = mjt_run(c, x);
                    if (mjt_modes[md].numeric == MJ_NUMERIC_EXACT)
                        cr_expect(mj_tensor_equal(got, want), "%s, geometry %d, density %g (%s), batch %lld: differs from eager",
                                  form_names[f], gi, density, mjt_modes[md].name, (long long)batch);
                    else
                        MJT_EXPECT_CLOSE(got, want, MJ_RTOL_F32, MJ_ATOL_F32, "%s, geometry %d, density %g (%s), batch %lld",
                                         form_names[f], gi, density, mjt_modes[md].name, (long long)batch);
                    MJT_RELEASE(x, want, got);
                }
                mj_compiled_free(c);
            }
            mj_graph_free(gr);
            mj_tensor_release(x0);
            mj_module_free(m);
        }
}

/* The ResNet basic block at 20% density on 2 and 3 threads at batches 1
 * to 3, exact, frozen (two sparse convs, the first storing its value
 * padded for the second, whose store adds the block's input) and live
 * (two register tiles): column mode wherever there are fewer images than
 * threads, the images split otherwise; bit for bit eager either way. */
Test(conv_tail, basic_block_shared_by_threads_is_eager_bit_for_bit) {
    form = BASIC;
    mj_rng rng = mjt_rng(97);
    const geo *g = &geos[4];
    mj_module *m = block(g, BASIC, 0.2, 0.2, &rng);
    mj_tensor *x0 = mjc_randn(4, (int64_t[]){2, g->C, g->H, g->W}, &rng);
    mj_graph *gr = mjt_trace(m, x0);
    for (int run = 0; run < 4; run++) {
        int threads = 2 + run % 2;
        mj_compile_options o;
        mj_compile_options_init(&o);
        o.frozen = run < 2;
        o.threads = threads;
        mj_compiled *c = mjt_compile_with(jit, gr, &o);
        for (int64_t batch = 1; batch <= 3; batch++) {
            mj_tensor *x = mjc_randn(4, (int64_t[]){batch, g->C, g->H, g->W}, &rng);
            mj_tensor *want = mjt_forward(m, x), *got = mjt_run(c, x);
            int split = batch < threads ? 2 : 1;
            cr_expect_eq(mj_compiled_last_split(c), split, "%s, %d threads, batch %lld: split %d, not %d",
                         o.frozen ? "frozen" : "live", threads, (long long)batch, mj_compiled_last_split(c), split);
            cr_expect(mj_tensor_equal(got, want), "%s, %d threads, batch %lld: differs from eager",
                      o.frozen ? "frozen" : "live", threads, (long long)batch);
            MJT_RELEASE(x, want, got);
        }
        mj_compiled_free(c);
    }
    mj_graph_free(gr);
    mj_tensor_release(x0);
    mj_module_free(m);
}

/* The tap table's rows go out through the conv's tail as whole vectors
 * and one part vector a row: as a scalar loop over a short row (14) LLVM
 * unrolled it and vectorised it across the rows with gathers and scatters,
 * which made a 5x5 depthwise conv with batch norm 2.9x slower than without
 * (672 channels at 14x14). Bit for bit eager at batches 1 and 3. */
Test(conv_tail, table_rows_go_out_as_vectors) {
    form = BN;
    mj_rng rng = mjt_rng(98);
    const geo g = {.C = 16, .O = 16, .H = 14, .W = 14, .k = 5, .stride = 1, .pad = 2, .bias = false};
    mj_module *m = block(&g, BN, 0.2, 0.2, &rng);
    mj_tensor *x0 = mjc_randn(4, (int64_t[]){2, g.C, g.H, g.W}, &rng);
    mj_graph *gr = mjt_trace(m, x0);
    mj_compiled *c = mjt_compile(jit, gr, mjt_modes[1]);
    cr_expect(mjt_ir_has(c, ".staps.start"), "frozen at density 0.2: not the sparse tap table");
    char *text = mjt_dump(c, "asm");
    cr_expect(!strstr(text, "scatter") && !strstr(text, "gather"), "gathers or scatters in the conv's code");
    free(text);
    for (int64_t batch = 1; batch <= 3; batch += 2) {
        mj_tensor *x = mjc_randn(4, (int64_t[]){batch, g.C, g.H, g.W}, &rng);
        mj_tensor *want = mjt_forward(m, x), *got = mjt_run(c, x);
        cr_expect(mj_tensor_equal(got, want), "batch %lld: differs from eager", (long long)batch);
        MJT_RELEASE(x, want, got);
    }
    mj_compiled_free(c);
    mj_graph_free(gr);
    mj_tensor_release(x0);
    mj_module_free(m);
}

Test(conv_tail, conv_bn_is_eager_bit_for_bit) { check_form(BN); }
Test(conv_tail, conv_bn_relu_is_eager_bit_for_bit) { check_form(BN_RELU); }
Test(conv_tail, conv_bn_add_relu_is_eager_bit_for_bit) { check_form(RESIDUAL); }
Test(conv_tail, conv_bn_add_relu_other_order_is_eager_bit_for_bit) { check_form(RESIDUAL_RL); }
Test(conv_tail, conv_relu_is_eager_bit_for_bit) { check_form(RELU); }
Test(conv_tail, basic_block_is_eager_bit_for_bit) { check_form(BASIC); }

/* The plan of the traced block of form f (frozen: after the frozen
 * pipeline, as mj_jit_compile plans it): per node, fused_by and has_slot. */
typedef struct planned {
    mj_graph *g;
    bool *input_free;
    mj_body_plan p;
} planned;

static planned plan_of(int f, const geo *g, bool frozen, mj_rng *rng) {
    form = f;
    mj_module *m = block(g, f, 0.2, 0.2, rng);
    mj_tensor *x0 = mjc_randn(4, (int64_t[]){2, g->C, g->H, g->W}, rng);
    planned pl = {.g = mjt_trace(m, x0)};
    mj_graph *t = pl.g;
    OK(mj_graph_clone(t, &pl.g));
    mj_graph_free(t);
    if (frozen) {
        OK(mj_graph_freeze(pl.g));
        OK(mj_graph_optimize(pl.g, "default"));
    } else {
        OK(mj_graph_optimize(pl.g, "cse,fuse,dce"));
    }
    pl.input_free = mj_graph_input_free(pl.g);
    cr_assert_not_null(pl.input_free);
    OK(mj_body_plan_build(pl.g, pl.input_free, frozen, 16, MJ_OP_COUNT, &pl.p));
    mj_tensor_release(x0);
    mj_module_free(m);
    return pl;
}

static void planned_free(planned *pl) {
    mj_body_plan_free(&pl->p);
    free(pl->input_free);
    mj_graph_free(pl->g);
}

/* The body nodes of op `op`, in order: the k-th one's id. */
static int32_t nth_node(const mj_graph *g, const bool *input_free, mj_op op, int k) {
    for (int32_t i = 0; i < g->n_nodes; i++)
        if (!input_free[i] && g->nodes[i].op == op && k-- == 0) return i;
    return -1;
}

/* The W8 block (3x3, stride 1, pad 1, the input as residual): the conv
 * absorbs batch_norm, add and relu and writes the output itself; none of
 * the values in between has storage. Live and frozen alike. */
Test(conv_tail, residual_block_is_one_conv_writing_the_output) {
    mj_rng rng = mjt_rng(97);
    for (int frozen = 0; frozen < 2; frozen++) {
        planned pl = plan_of(RESIDUAL, &geos[0], frozen, &rng);
        const mj_graph *g = pl.g;
        int32_t conv = nth_node(g, pl.input_free, MJ_OP_CONV2D, 0), bn = nth_node(g, pl.input_free, MJ_OP_BATCH_NORM, 0);
        int32_t add = nth_node(g, pl.input_free, MJ_OP_ADD, 0), relu = nth_node(g, pl.input_free, MJ_OP_RELU, 0);
        cr_assert(conv >= 0 && bn > conv && add > bn && relu > add, "frozen %d: conv %d, bn %d, add %d, relu %d", frozen,
                  conv, bn, add, relu);
        cr_expect_eq(pl.p.fused_by[conv], -1);
        cr_expect_eq(pl.p.fused_by[bn], conv, "frozen %d: batch_norm is its own op", frozen);
        cr_expect_eq(pl.p.fused_by[add], conv, "frozen %d: the residual add is its own op", frozen);
        cr_expect_eq(pl.p.fused_by[relu], conv, "frozen %d: relu is its own op", frozen);
        cr_expect_eq(pl.p.tail_out[conv], relu);
        cr_expect_eq(g->outputs[0], relu);
        for (int32_t i = 0; i < g->n_nodes; i++) /* the output is y itself: no scratch at all */
            cr_expect(!pl.p.has_slot[i], "frozen %d: %%%d (%s) has scratch", frozen, i, mj_op_table[g->nodes[i].op].name);
        planned_free(&pl);
    }
}

/* What stays separate: a residual computed after the conv (the tail stops
 * before the add), and a conv value with two uses. */
Test(conv_tail, tail_stops_where_the_store_cannot_compute_it) {
    mj_rng rng = mjt_rng(98);
    planned pl = plan_of(RESIDUAL_RL, &geos[2], true, &rng); /* stride 2: proj(x) after the conv */
    const mj_graph *g = pl.g;
    int32_t conv = nth_node(g, pl.input_free, MJ_OP_CONV2D, 0), proj = nth_node(g, pl.input_free, MJ_OP_CONV2D, 1);
    int32_t bn = nth_node(g, pl.input_free, MJ_OP_BATCH_NORM, 0), add = nth_node(g, pl.input_free, MJ_OP_ADD, 0);
    int32_t relu = nth_node(g, pl.input_free, MJ_OP_RELU, 0);
    cr_assert(conv >= 0 && bn > conv && proj > bn && add > proj && relu > add);
    cr_expect_eq(pl.p.fused_by[bn], conv);
    cr_expect_eq(pl.p.tail_out[conv], bn);
    cr_expect(pl.p.has_slot[bn] && !pl.p.has_slot[conv]);
    cr_expect_eq(pl.p.fused_by[add], -1, "the add needs proj, computed after the conv");
    cr_expect_eq(pl.p.tail_out[proj], proj);
    cr_expect_eq(pl.p.fused_by[relu], -1);
    planned_free(&pl);

    /* the conv's value also a graph output: nothing to fuse */
    const char *text = "maskjit-ir 1\n"
                       "%0 = input \"x\" : f32[B,2,4,4]\n"
                       "%1 = const \"w\" : f32[3,2,3,3]\n"
                       "%2 = conv2d %0, %1 {stride=[1,1], padding=[1,1], dilation=[1,1], groups=1} : f32[B,3,4,4]\n"
                       "%3 = relu %2 : f32[B,3,4,4]\n"
                       "return %3, %2\n";
    mj_graph *g2 = NULL;
    OK(mj_graph_parse(text, &g2));
    bool *inf = mj_graph_input_free(g2);
    mj_body_plan p;
    OK(mj_body_plan_build(g2, inf, true, 16, MJ_OP_COUNT, &p));
    cr_expect_eq(p.fused_by[3], -1);
    cr_expect_eq(p.tail_out[2], 2);
    mj_body_plan_free(&p);
    free(inf);
    mj_graph_free(g2);
}

/* A ResNet basic block with both convs sparse, frozen: the first conv's
 * tail (batch_norm, relu) is stored zero-padded as the second conv reads
 * it, so the second copies nothing; live, nothing is padded. */
Test(conv_tail, sparse_convs_pass_their_value_padded) {
    mj_rng rng = mjt_rng(99);
    for (int k = 0; k < 2; k++) {
        planned pl = plan_of(BASIC, &geos[4], k == 1, &rng);
        const mj_graph *g = pl.g;
        int32_t conv2 = nth_node(g, pl.input_free, MJ_OP_CONV2D, 1), relu = nth_node(g, pl.input_free, MJ_OP_RELU, 0);
        cr_assert(relu >= 0 && conv2 > relu && g->nodes[conv2].operands[0] == relu);
        cr_expect(pl.p.has_slot[relu]);
        cr_expect_eq(pl.p.padded_by[relu], k == 1 ? conv2 : -1, "frozen %d", k);
        int64_t per, over = mj_body_padded_floats(&pl.p, relu, &per);
        if (k == 1) /* 16 planes of (20 + 2) x (37 + 2), rows 48 apart (aligned), and the overrun */
            cr_expect(per == 16 * 22 * 48 && over > 0 && over % 16 == 0, "%lld, %lld", (long long)per, (long long)over);
        for (int32_t i = 0; i < g->n_nodes; i++)
            if (i != relu) cr_expect_eq(pl.p.padded_by[i], -1, "%%%d", i);
        planned_free(&pl);
    }
}
