/* The convolution peers of the benchmark (see peers.h): a chain of 2-D
 * convolutions as a user of oneDNN or XNNPACK deploys a pruned CNN block —
 * BatchNorm already folded into the conv weights and bias, the masked
 * weights run dense, ReLU and the block's residual add fused where the
 * library fuses them. Input and output are NCHW like maskjit's; the
 * library's preferred layout (oneDNN's blocked nChw16c-like format, XNNPACK's
 * NHWC) is reached by a reorder inside the timed call, as a user holding NCHW
 * tensors pays it. Weights are reordered once, outside any timing. */
#include "bench/peers_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"

#ifdef MJ_HAVE_XNNPACK
#include <pthreadpool.h>
#include <xnnpack.h>
#endif

typedef struct conv_layer {
    mj_peer_conv_layer c;
    int64_t ih, iw, oh, ow; /* spatial sizes in and out */
#ifdef MJ_HAVE_ONEDNN
    dnnl_primitive_t conv;
    dnnl_memory_t wei, bias, dst;
#endif
#ifdef MJ_HAVE_XNNPACK
    xnn_operator_t op, add;
    float *out; /* NHWC [batch][oh][ow][out_c] */
    float *sum; /* NHWC, after the residual add */
#endif
} conv_layer;

struct mj_peer_conv {
    mj_peer_kind kind;
    int n;
    conv_layer *layers;
    int64_t batch, c, h, w; /* the chain's input */
    int threads;
    float *y;               /* NCHW output of the last layer */
    bool vzeroupper;
#ifdef MJ_HAVE_ONEDNN
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    dnnl_memory_t user_x, x, user_y; /* NCHW input, its reorder, NCHW output */
    dnnl_primitive_t x_reorder, y_reorder;
#endif
#ifdef MJ_HAVE_XNNPACK
    pthreadpool_t pool;
    float *x_nhwc;
#endif
};

static int64_t conv_out(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
    return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

void mj_peer_conv_free(mj_peer_conv *p) {
    if (!p) return;
    for (int i = 0; p->layers && i < p->n; i++) {
        conv_layer *l = &p->layers[i];
#ifdef MJ_HAVE_ONEDNN
        mj_peer_dnnl_destroy(l->conv, 3, (dnnl_memory_t[]){l->wei, l->bias, l->dst});
#endif
#ifdef MJ_HAVE_XNNPACK
        if (l->op) xnn_delete_operator(l->op);
        if (l->add) xnn_delete_operator(l->add);
        free(l->out);
        free(l->sum);
#endif
        (void)l;
    }
#ifdef MJ_HAVE_ONEDNN
    mj_peer_dnnl_destroy(p->x_reorder, 2, (dnnl_memory_t[]){p->user_x, p->x});
    mj_peer_dnnl_destroy(p->y_reorder, 1, &p->user_y);
    mj_peer_dnnl_stop(p->engine, p->stream);
#endif
#ifdef MJ_HAVE_XNNPACK
    if (p->pool) pthreadpool_destroy(p->pool);
    free(p->x_nhwc);
#endif
    free(p->layers);
    free(p->y);
    free(p);
}

#ifdef MJ_HAVE_ONEDNN
#define DNNL_TRY(call) MJ_DNNL_TRY("peer onednn conv", call)

/* The conv descriptor of layer l with the given src/dst descriptors. */
static dnnl_status_t conv_desc(dnnl_convolution_desc_t *cd, const conv_layer *l,
                               const dnnl_memory_desc_t *src, const dnnl_memory_desc_t *wei,
                               const dnnl_memory_desc_t *bias, const dnnl_memory_desc_t *dst) {
    const dnnl_dims_t strides = {l->c.stride[0], l->c.stride[1]};
    const dnnl_dims_t dil = {l->c.dilation[0] - 1, l->c.dilation[1] - 1}; /* oneDNN: 0 = dense */
    const dnnl_dims_t pad = {l->c.padding[0], l->c.padding[1]};
    return dnnl_dilated_convolution_forward_desc_init(cd, dnnl_forward_inference,
                                                      dnnl_convolution_direct, src, wei, bias, dst,
                                                      strides, dil, pad, pad);
}

/* One convolution primitive per layer with ReLU, the residual (a binary add
 * of the chain's input, in the layout oneDNN chose for it) and ReLU again as
 * post-ops. src/dst layouts are oneDNN's choice for the first layer, kept
 * through the chain. */
static mj_status onednn_conv_init(mj_peer_conv *p) {
    mj_status st = MJ_OK;
    dnnl_primitive_desc_t pd = NULL, rpd = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_memory_desc_t act_md; /* the layout of activations between layers */
    dnnl_memory_desc_t in_md;  /* the chain's input in the first layer's layout */
    memset(&act_md, 0, sizeof act_md);
    memset(&in_md, 0, sizeof in_md);
    omp_set_num_threads(p->threads); /* before the primitives: see peers_internal.h */
    if ((st = mj_peer_dnnl_start("peer onednn conv", &p->engine, &p->stream)) != MJ_OK) goto done;
    for (int i = 0; i < p->n; i++) {
        conv_layer *l = &p->layers[i];
        int64_t g = l->c.groups, cg = l->c.in_c / g, og = l->c.out_c / g;
        dnnl_memory_desc_t src_any, dst_any, src_md, dst_md, wei_any, wei_user, bias_md;
        const dnnl_dims_t src_dims = {p->batch, l->c.in_c, l->ih, l->iw},
                          dst_dims = {p->batch, l->c.out_c, l->oh, l->ow},
                          bias_dims = {l->c.out_c};
        dnnl_dims_t wei_dims = {l->c.out_c, cg, l->c.kh, l->c.kw};
        dnnl_dims_t gwei_dims = {g, og, cg, l->c.kh, l->c.kw};
        int wr = g > 1 ? 5 : 4;
        DNNL_TRY(dnnl_memory_desc_init_by_tag(&wei_any, wr, g > 1 ? gwei_dims : wei_dims, dnnl_f32,
                                              dnnl_format_tag_any));
        DNNL_TRY(dnnl_memory_desc_init_by_tag(&wei_user, wr, g > 1 ? gwei_dims : wei_dims, dnnl_f32,
                                              g > 1 ? dnnl_goihw : dnnl_oihw));
        DNNL_TRY(dnnl_memory_desc_init_by_tag(&bias_md, 1, bias_dims, dnnl_f32, dnnl_a));
        DNNL_TRY(dnnl_memory_desc_init_by_tag(&src_any, 4, src_dims, dnnl_f32, dnnl_format_tag_any));
        DNNL_TRY(dnnl_memory_desc_init_by_tag(&dst_any, 4, dst_dims, dnnl_f32, dnnl_format_tag_any));
        /* First ask oneDNN which layouts it wants, then fix them so the
         * residual's descriptor can be named in the post-ops. */
        dnnl_convolution_desc_t cd;
        DNNL_TRY(conv_desc(&cd, l, i == 0 ? &src_any : &act_md, &wei_any, l->c.b ? &bias_md : NULL,
                           &dst_any));
        DNNL_TRY(dnnl_primitive_desc_create(&pd, &cd, NULL, p->engine, NULL));
        src_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
        dst_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
        dnnl_primitive_desc_destroy(pd);
        pd = NULL;
        if (i == 0) in_md = src_md;
        DNNL_TRY(dnnl_post_ops_create(&po));
        if (l->c.relu) DNNL_TRY(dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f));
        if (l->c.add_input) {
            /* the residual is the chain's input, in the first layer's src layout */
            DNNL_TRY(dnnl_post_ops_append_binary(po, dnnl_binary_add, i == 0 ? &src_md : &in_md));
        }
        if (l->c.relu_after_add)
            DNNL_TRY(dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f));
        DNNL_TRY(dnnl_primitive_attr_create(&attr));
        DNNL_TRY(dnnl_primitive_attr_set_post_ops(attr, po));
        DNNL_TRY(conv_desc(&cd, l, &src_md, &wei_any, l->c.b ? &bias_md : NULL, &dst_md));
        DNNL_TRY(dnnl_primitive_desc_create(&pd, &cd, attr, p->engine, NULL));
        const dnnl_memory_desc_t *wei_md = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        st = mj_peer_dnnl_weights("peer onednn conv", p->engine, p->stream, &wei_user, l->c.w, wei_md, &l->wei);
        if (st != MJ_OK) goto done;
        if (l->c.b) DNNL_TRY(dnnl_memory_create(&l->bias, &bias_md, p->engine, (void *)l->c.b));
        DNNL_TRY(dnnl_memory_create(&l->dst, &dst_md, p->engine, DNNL_MEMORY_ALLOCATE));
        DNNL_TRY(dnnl_primitive_create(&l->conv, pd));
        dnnl_primitive_desc_destroy(pd);
        pd = NULL;
        dnnl_primitive_attr_destroy(attr);
        attr = NULL;
        dnnl_post_ops_destroy(po);
        po = NULL;
        if (i == 0) {
            /* the NCHW input and its reorder into the first layer's layout */
            dnnl_memory_desc_t nchw;
            DNNL_TRY(dnnl_memory_desc_init_by_tag(&nchw, 4, src_dims, dnnl_f32, dnnl_nchw));
            DNNL_TRY(dnnl_memory_create(&p->user_x, &nchw, p->engine, DNNL_MEMORY_NONE));
            DNNL_TRY(dnnl_memory_create(&p->x, &src_md, p->engine, DNNL_MEMORY_ALLOCATE));
            DNNL_TRY(dnnl_reorder_primitive_desc_create(&rpd, &nchw, p->engine, &src_md, p->engine, NULL));
            DNNL_TRY(dnnl_primitive_create(&p->x_reorder, rpd));
            dnnl_primitive_desc_destroy(rpd);
            rpd = NULL;
        }
        act_md = dst_md;
        if (i == p->n - 1) {
            dnnl_memory_desc_t nchw;
            DNNL_TRY(dnnl_memory_desc_init_by_tag(&nchw, 4, dst_dims, dnnl_f32, dnnl_nchw));
            DNNL_TRY(dnnl_memory_create(&p->user_y, &nchw, p->engine, p->y));
            DNNL_TRY(dnnl_reorder_primitive_desc_create(&rpd, &dst_md, p->engine, &nchw, p->engine, NULL));
            DNNL_TRY(dnnl_primitive_create(&p->y_reorder, rpd));
            dnnl_primitive_desc_destroy(rpd);
            rpd = NULL;
        }
    }
done:
    if (rpd) dnnl_primitive_desc_destroy(rpd);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (po) dnnl_post_ops_destroy(po);
    return st;
}
#undef DNNL_TRY

static void onednn_conv_run(mj_peer_conv *p, const float *x) {
    dnnl_memory_set_data_handle(p->user_x, (void *)x);
    dnnl_exec_arg_t a[2] = {{DNNL_ARG_FROM, p->user_x}, {DNNL_ARG_TO, p->x}};
    dnnl_primitive_execute(p->x_reorder, p->stream, 2, a);
    dnnl_memory_t in = p->x;
    for (int i = 0; i < p->n; i++) {
        conv_layer *l = &p->layers[i];
        dnnl_exec_arg_t args[5];
        int n = 0;
        args[n++] = (dnnl_exec_arg_t){DNNL_ARG_SRC, in};
        args[n++] = (dnnl_exec_arg_t){DNNL_ARG_WEIGHTS, l->wei};
        if (l->bias) args[n++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, l->bias};
        args[n++] = (dnnl_exec_arg_t){DNNL_ARG_DST, l->dst};
        if (l->c.add_input)
            args[n++] = (dnnl_exec_arg_t){DNNL_ARG_ATTR_MULTIPLE_POST_OP(l->c.relu ? 1 : 0) | DNNL_ARG_SRC_1,
                                          p->x};
        dnnl_primitive_execute(l->conv, p->stream, n, args);
        in = l->dst;
    }
    dnnl_exec_arg_t b[2] = {{DNNL_ARG_FROM, in}, {DNNL_ARG_TO, p->user_y}};
    dnnl_primitive_execute(p->y_reorder, p->stream, 2, b);
    dnnl_stream_wait(p->stream);
}
#endif

#ifdef MJ_HAVE_XNNPACK
/* One NHWC convolution operator per layer (ReLU as its output clamp when no
 * residual follows), the residual as an add operator clamped for the ReLU
 * after it. Weights go in as XNNPACK's [groups][out/g][kh][kw][in/g]. */
static mj_status xnnpack_conv_init(mj_peer_conv *p) {
    if (xnn_initialize(NULL) != xnn_status_success)
        return mj_fail(MJ_ERR_UNSUPPORTED, "peer xnnpack conv: xnn_initialize failed");
    if (!(p->x_nhwc = malloc((size_t)(p->batch * p->c * p->h * p->w) * sizeof(float))))
        return mj_fail(MJ_ERR_NOMEM, "peer xnnpack conv: out of memory");
    if (p->threads > 1 && !(p->pool = pthreadpool_create((size_t)p->threads)))
        return mj_fail(MJ_ERR_NOMEM, "peer xnnpack conv: cannot create %d threads", p->threads);
    const float *in = p->x_nhwc;
    for (int i = 0; i < p->n; i++) {
        conv_layer *l = &p->layers[i];
        int64_t g = l->c.groups, cg = l->c.in_c / g, og = l->c.out_c / g, kk = l->c.kh * l->c.kw;
        size_t outn = (size_t)(p->batch * l->oh * l->ow * l->c.out_c);
        float *k = malloc((size_t)(l->c.out_c * cg * kk) * sizeof(float));
        l->out = malloc(outn * sizeof(float));
        if (l->c.add_input) l->sum = malloc(outn * sizeof(float));
        if (!k || !l->out || (l->c.add_input && !l->sum)) {
            free(k);
            return mj_fail(MJ_ERR_NOMEM, "peer xnnpack conv: out of memory");
        }
        for (int64_t o = 0; o < l->c.out_c; o++) /* OIHW -> OHWI (groups are blocks of O) */
            for (int64_t c = 0; c < cg; c++)
                for (int64_t t = 0; t < kk; t++) k[(o * kk + t) * cg + c] = l->c.w[(o * cg + c) * kk + t];
        float lo = l->c.relu ? 0.0f : -INFINITY;
        enum xnn_status xs = xnn_create_convolution2d_nhwc_f32(
            (uint32_t)l->c.padding[0], (uint32_t)l->c.padding[1], (uint32_t)l->c.padding[0],
            (uint32_t)l->c.padding[1], (uint32_t)l->c.kh, (uint32_t)l->c.kw, (uint32_t)l->c.stride[0],
            (uint32_t)l->c.stride[1], (uint32_t)l->c.dilation[0], (uint32_t)l->c.dilation[1], (uint32_t)g,
            (size_t)cg, (size_t)og, (size_t)l->c.in_c, (size_t)l->c.out_c, k, l->c.b, lo, INFINITY, 0, &l->op);
        free(k);
        if (xs != xnn_status_success)
            return mj_fail(MJ_ERR_UNSUPPORTED, "peer xnnpack conv: cannot create layer %d (status %d)",
                           i, (int)xs);
        if (xnn_setup_convolution2d_nhwc_f32(l->op, (size_t)p->batch, (size_t)l->ih, (size_t)l->iw, in,
                                             l->out, p->pool) != xnn_status_success)
            return mj_fail(MJ_ERR_UNSUPPORTED, "peer xnnpack conv: cannot set up layer %d", i);
        in = l->out;
        if (l->c.add_input) {
            size_t shape[4] = {(size_t)p->batch, (size_t)l->oh, (size_t)l->ow, (size_t)l->c.out_c};
            if (xnn_create_add_nd_f32(l->c.relu_after_add ? 0.0f : -INFINITY, INFINITY, 0, &l->add) !=
                    xnn_status_success ||
                xnn_setup_add_nd_f32(l->add, 4, shape, 4, shape, l->out, p->x_nhwc, l->sum, p->pool) !=
                    xnn_status_success)
                return mj_fail(MJ_ERR_UNSUPPORTED, "peer xnnpack conv: cannot set up the residual add");
            in = l->sum;
        }
    }
    return MJ_OK;
}

static void xnnpack_conv_run(mj_peer_conv *p, const float *x) {
    int64_t hw = p->h * p->w;
    for (int64_t n = 0; n < p->batch; n++) /* NCHW -> NHWC */
        for (int64_t c = 0; c < p->c; c++)
            for (int64_t i = 0; i < hw; i++) p->x_nhwc[(n * hw + i) * p->c + c] = x[(n * p->c + c) * hw + i];
    const float *y = NULL;
    for (int i = 0; i < p->n; i++) {
        conv_layer *l = &p->layers[i];
        xnn_run_operator(l->op, p->pool);
        y = l->out;
        if (l->add) {
            xnn_run_operator(l->add, p->pool);
            y = l->sum;
        }
    }
    const conv_layer *last = &p->layers[p->n - 1];
    int64_t ohw = last->oh * last->ow, oc = last->c.out_c;
    for (int64_t n = 0; n < p->batch; n++) /* NHWC -> NCHW */
        for (int64_t i = 0; i < ohw; i++)
            for (int64_t c = 0; c < oc; c++) p->y[(n * oc + c) * ohw + i] = y[(n * ohw + i) * oc + c];
}
#endif

mj_status mj_peer_conv_new(mj_peer_kind k, int n_layers, const mj_peer_conv_layer *layers,
                           int64_t batch, int64_t h, int64_t w, int threads, mj_peer_conv **out) {
    if (!out || !layers || n_layers < 1)
        return mj_fail(MJ_ERR_INVALID, "peer conv: need an output pointer and at least one layer");
    *out = NULL;
    if (k != MJ_PEER_ONEDNN && k != MJ_PEER_XNNPACK)
        return mj_fail(MJ_ERR_UNSUPPORTED, "peer %s: no convolution peer (oneDNN and XNNPACK have one)",
                       mj_peer_name(k));
    if (!mj_peer_built(k))
        return mj_fail(MJ_ERR_UNSUPPORTED, "peer %s: not built (library not found at build time)",
                       mj_peer_name(k));
    if (batch < 1 || h < 1 || w < 1 || threads < 1)
        return mj_fail(MJ_ERR_INVALID, "peer conv: batch %lld, size %lldx%lld and threads %d must be >= 1",
                       (long long)batch, (long long)h, (long long)w, threads);
    mj_peer_conv *p = calloc(1, sizeof *p);
    if (!p || !(p->layers = calloc((size_t)n_layers, sizeof *p->layers))) {
        free(p);
        return mj_fail(MJ_ERR_NOMEM, "peer conv: out of memory");
    }
    p->kind = k;
    p->n = n_layers;
    p->batch = batch;
    p->threads = threads;
    p->c = layers[0].in_c;
    p->h = h;
    p->w = w;
    p->vzeroupper = __builtin_cpu_supports("avx");
    mj_status st = MJ_OK;
    int64_t ih = h, iw = w, ic = p->c;
    for (int i = 0; i < n_layers && st == MJ_OK; i++) {
        conv_layer *l = &p->layers[i];
        l->c = layers[i];
        const mj_peer_conv_layer *c = &layers[i];
        l->ih = ih;
        l->iw = iw;
        l->oh = conv_out(ih, c->kh, c->stride[0], c->padding[0], c->dilation[0]);
        l->ow = conv_out(iw, c->kw, c->stride[1], c->padding[1], c->dilation[1]);
        if (c->in_c != ic || c->groups < 1 || c->in_c % c->groups || c->out_c % c->groups || !c->w ||
            l->oh < 1 || l->ow < 1)
            st = mj_fail(MJ_ERR_SHAPE, "peer conv: layer %d does not fit its input [%lld, %lld, %lld]",
                         i, (long long)ic, (long long)ih, (long long)iw);
        else if (c->add_input && (c->out_c != p->c || l->oh != h || l->ow != w))
            st = mj_fail(MJ_ERR_SHAPE, "peer conv: layer %d adds the chain's input but changes its shape", i);
        ih = l->oh;
        iw = l->ow;
        ic = c->out_c;
    }
    if (st == MJ_OK && !(p->y = malloc((size_t)(batch * ic * ih * iw) * sizeof(float))))
        st = mj_fail(MJ_ERR_NOMEM, "peer conv: out of memory");
    if (st == MJ_OK) {
#ifdef MJ_HAVE_ONEDNN
        if (k == MJ_PEER_ONEDNN) st = onednn_conv_init(p);
#endif
#ifdef MJ_HAVE_XNNPACK
        if (k == MJ_PEER_XNNPACK) st = xnnpack_conv_init(p);
#endif
    }
    if (st != MJ_OK) {
        mj_peer_conv_free(p);
        return st;
    }
    *out = p;
    return MJ_OK;
}

const float *mj_peer_conv_run(mj_peer_conv *p, const float *x) {
#ifdef MJ_HAVE_ONEDNN
    if (p->kind == MJ_PEER_ONEDNN) onednn_conv_run(p, x);
#endif
#ifdef MJ_HAVE_XNNPACK
    if (p->kind == MJ_PEER_XNNPACK) xnnpack_conv_run(p, x);
#endif
    (void)x;
    if (p->vzeroupper) __asm__ volatile("vzeroupper" ::: "memory");
    return p->y;
}

/* ---- the chain a graph computes ----------------------------------------- */
static const float *const_data(const mj_graph *g, int32_t id, int64_t numel) {
    const mj_node *n = &g->nodes[id];
    if (n->op != MJ_OP_CONST || !n->tensor || mj_tensor_numel(n->tensor) != numel) return NULL;
    return mj_tensor_data(n->tensor);
}

static mj_status not_a_chain(const char *why, const mj_node *n) {
    return mj_fail(MJ_ERR_UNSUPPORTED, "the convolution peers run chains of conv2d [batch_norm] "
                   "[relu] with a residual of the input; this graph has %s%s", why,
                   n ? mj_op_table[n->op].name : "");
}

void mj_peer_conv_chain_free(mj_peer_conv_chain *c) {
    if (!c) return;
    for (int i = 0; i < c->n; i++) {
        free((void *)c->layers[i].w);
        free((void *)c->layers[i].b);
    }
    free(c->layers);
    memset(c, 0, sizeof *c);
}

/* Reads the frozen, folded graph node by node: each conv2d starts a layer,
 * batch_norm folds into its weights and bias (w * s, (b - mean) * s + beta
 * with s = gamma / sqrt(var + eps), as deployments fold it), relu and an add
 * of the graph's input set the layer's flags. */
static mj_status read_chain(const mj_graph *g, mj_peer_conv_chain *c) {
    int32_t x = -1, cur = -1;
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if (n->op == MJ_OP_CONST) continue;
        if (n->op == MJ_OP_INPUT) {
            if (x >= 0) return not_a_chain("two inputs", NULL);
            if (n->type.rank != 4) return not_a_chain("an input that is not [B, C, H, W]", NULL);
            x = cur = i;
            c->h = n->type.dims[2];
            c->w = n->type.dims[3];
            continue;
        }
        if (n->op == MJ_OP_PARAM) return not_a_chain("an unfolded param", NULL);
        mj_peer_conv_layer *l = c->n ? &c->layers[c->n - 1] : NULL;
        bool on_cur = n->n_operands >= 1 && n->operands[0] == cur;
        if (n->op == MJ_OP_CONV2D && on_cur) {
            const mj_type *wt = &g->nodes[n->operands[1]].type;
            mj_peer_conv_layer *grown = realloc(c->layers, (size_t)(c->n + 1) * sizeof *grown);
            if (!grown) return mj_fail(MJ_ERR_NOMEM, "peer conv: out of memory");
            c->layers = grown;
            l = &c->layers[c->n++];
            memset(l, 0, sizeof *l);
            const int32_t *a = n->attrs.i;
            *l = (mj_peer_conv_layer){.in_c = g->nodes[cur].type.dims[1], .out_c = wt->dims[0],
                                      .kh = wt->dims[2], .kw = wt->dims[3],
                                      .stride = {a[MJ_CONV_STRIDE], a[MJ_CONV_STRIDE + 1]},
                                      .padding = {a[MJ_CONV_PADDING], a[MJ_CONV_PADDING + 1]},
                                      .dilation = {a[MJ_CONV_DILATION], a[MJ_CONV_DILATION + 1]},
                                      .groups = a[MJ_CONV_GROUPS]};
            int64_t wn = l->out_c * wt->dims[1] * l->kh * l->kw;
            const float *w = const_data(g, n->operands[1], wn);
            const float *b = n->n_operands > 2 ? const_data(g, n->operands[2], l->out_c) : NULL;
            if (!w || (n->n_operands > 2 && !b)) return not_a_chain("a conv2d weight that is not constant", NULL);
            float *wc = malloc((size_t)wn * sizeof *wc), *bc = calloc((size_t)l->out_c, sizeof *bc);
            l->w = wc;
            l->b = bc;
            if (!wc || !bc) return mj_fail(MJ_ERR_NOMEM, "peer conv: out of memory");
            memcpy(wc, w, (size_t)wn * sizeof *wc);
            if (b) memcpy(bc, b, (size_t)l->out_c * sizeof *bc);
        } else if (n->op == MJ_OP_BATCH_NORM && on_cur && l && !l->relu && !l->add_input) {
            int64_t oc = l->out_c, per = l->in_c / l->groups * l->kh * l->kw;
            const float *p[4] = {NULL, NULL, NULL, NULL}; /* mean, var, gamma, beta */
            for (int k = 1; k < n->n_operands; k++)
                if (!(p[k - 1] = const_data(g, n->operands[k], oc)))
                    return not_a_chain("a batch_norm with non-constant statistics", NULL);
            float *w = (float *)l->w, *b = (float *)l->b;
            for (int64_t o = 0; o < oc; o++) {
                double s = (p[2] ? p[2][o] : 1.0) / sqrt((double)p[1][o] + (double)n->attrs.f[0]);
                for (int64_t k = 0; k < per; k++) w[o * per + k] = (float)(w[o * per + k] * s);
                b[o] = (float)(((double)b[o] - p[0][o]) * s + (p[3] ? p[3][o] : 0.0));
            }
        } else if (n->op == MJ_OP_RELU && on_cur && l && !l->relu_after_add) {
            if (l->add_input) l->relu_after_add = true;
            else if (!l->relu) l->relu = true;
            else return not_a_chain("two relus in a row", NULL);
        } else if (n->op == MJ_OP_ADD && l && !l->add_input &&
                   ((n->operands[0] == cur && n->operands[1] == x) ||
                    (n->operands[1] == cur && n->operands[0] == x))) {
            l->add_input = true;
        } else {
            return not_a_chain("", n);
        }
        cur = i;
    }
    if (!c->n || g->n_outputs != 1 || g->outputs[0] != cur)
        return not_a_chain("no conv2d, or an output that is not the chain's end", NULL);
    return MJ_OK;
}

mj_status mj_peer_conv_chain_from_graph(const mj_graph *g, mj_peer_conv_chain *out) {
    memset(out, 0, sizeof *out);
    mj_graph *f = NULL;
    mj_status st = mj_graph_clone(g, &f);
    if (st == MJ_OK) st = mj_graph_freeze(f);
    if (st == MJ_OK) st = mj_graph_optimize(f, "simplify,fold,simplify,cse,dce");
    if (st == MJ_OK) st = read_chain(f, out);
    if (st != MJ_OK) mj_peer_conv_chain_free(out);
    mj_graph_free(f);
    return st;
}
