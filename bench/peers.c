/* The peers of the benchmark (see peers.h and bench/README.md on running
 * them fairly): dense layers on the masked weights, chained through two
 * ping-pong buffers. The BLAS peers run a GEMM with beta = 0 and then one
 * pass of bias + activation; oneDNN and XNNPACK fuse what they can (bias
 * always, the activation where they have it) and leave the rest to the same
 * epilogue. */
#include "bench/peers_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef MJ_HAVE_OPENBLAS
#include <cblas.h>
#endif
#ifdef MJ_HAVE_LIBXSMM
#include <libxsmm.h>
#endif
#ifdef MJ_HAVE_ONEDNN
/* Debian's oneDNN runs on OpenMP (libgomp): its thread count is OpenMP's
 * (omp_set_num_threads: peers_internal.h). */
int omp_get_max_threads(void);
#endif
#ifdef MJ_HAVE_XNNPACK
#include <pthreadpool.h>
#include <xnnpack.h>
#endif

typedef struct peer_layer {
    int64_t in, out;
    float *w;  /* OpenBLAS: [out][in] as given; LIBXSMM: transposed [in][out] */
    float *b;  /* [out] or NULL */
    mj_act act;
    bool act_fused; /* the peer applies act itself; the epilogue skips it */
#ifdef MJ_HAVE_LIBXSMM
    libxsmm_smmfunction kernel;
#endif
#ifdef MJ_HAVE_ONEDNN
    dnnl_primitive_t ip;
    dnnl_memory_t src, wei, bias, dst;
#endif
#ifdef MJ_HAVE_XNNPACK
    xnn_operator_t fc;
    const float *setup_in; /* the input pointer the operator was set up with */
#endif
} peer_layer;

struct mj_peer {
    mj_peer_kind kind;
    int n;
    peer_layer *layers;
    int64_t batch;
    int threads;
    float *buf[2]; /* [batch][max width] each */
    bool vzeroupper; /* the CPU has AVX: clear upper halves after foreign kernels */
#ifdef MJ_HAVE_ONEDNN
    dnnl_engine_t engine;
    dnnl_stream_t stream;
#endif
#ifdef MJ_HAVE_XNNPACK
    pthreadpool_t pool; /* NULL: one thread */
#endif
};

const char *mj_peer_name(mj_peer_kind k) {
    switch (k) {
    case MJ_PEER_OPENBLAS: return "openblas";
    case MJ_PEER_LIBXSMM: return "libxsmm";
    case MJ_PEER_ONEDNN: return "onednn";
    case MJ_PEER_XNNPACK: return "xnnpack";
    default: return "?";
    }
}

int mj_peer_openmp_threads(void) {
#ifdef MJ_HAVE_ONEDNN
    return omp_get_max_threads();
#else
    return 0;
#endif
}

bool mj_peer_built(mj_peer_kind k) {
    switch (k) {
#ifdef MJ_HAVE_OPENBLAS
    case MJ_PEER_OPENBLAS: return true;
#endif
#ifdef MJ_HAVE_LIBXSMM
    case MJ_PEER_LIBXSMM: return true;
#endif
#ifdef MJ_HAVE_ONEDNN
    case MJ_PEER_ONEDNN: return true;
#endif
#ifdef MJ_HAVE_XNNPACK
    case MJ_PEER_XNNPACK: return true;
#endif
    default: return false;
    }
}

const char *mj_peer_info(mj_peer_kind k) {
    static char info[MJ_PEER_COUNT][256];
    if ((int)k < 0 || k >= MJ_PEER_COUNT) return "?";
    if (!mj_peer_built(k)) return "not built";
    switch (k) {
#ifdef MJ_HAVE_OPENBLAS
    case MJ_PEER_OPENBLAS:
        snprintf(info[k], sizeof info[k], "%s; core %s", openblas_get_config(),
                 openblas_get_corename());
        break;
#endif
#ifdef MJ_HAVE_LIBXSMM
    case MJ_PEER_LIBXSMM:
        libxsmm_init();
        snprintf(info[k], sizeof info[k], "LIBXSMM %s; target %s", LIBXSMM_CONFIG_VERSION,
                 libxsmm_get_target_arch());
        break;
#endif
#ifdef MJ_HAVE_ONEDNN
    case MJ_PEER_ONEDNN: {
        const dnnl_version_t *v = dnnl_version();
        snprintf(info[k], sizeof info[k], "oneDNN %d.%d.%d; effective ISA 0x%x; OpenMP runtime",
                 v->major, v->minor, v->patch, (unsigned)dnnl_get_effective_cpu_isa());
        break;
    }
#endif
#ifdef MJ_HAVE_XNNPACK
    case MJ_PEER_XNNPACK:
        snprintf(info[k], sizeof info[k], "XNNPACK (Debian libxnnpack); fully_connected_nc_f32");
        break;
#endif
    default: break;
    }
    return info[k];
}

static float *alloc_floats(int64_t n) {
    /* 64-byte aligned, size rounded up as aligned_alloc requires */
    size_t bytes = (size_t)n * sizeof(float);
    bytes = (bytes + 63) / 64 * 64;
    if (bytes == 0) bytes = 64;
    float *p = aligned_alloc(64, bytes);
    if (!p) mj_fail(MJ_ERR_NOMEM, "peer: out of memory allocating %zu bytes", bytes);
    return p;
}

void mj_peer_free(mj_peer *p) {
    if (!p) return;
    for (int i = 0; p->layers && i < p->n; i++) {
        peer_layer *l = &p->layers[i];
#ifdef MJ_HAVE_ONEDNN
        mj_peer_dnnl_destroy(l->ip, 4, (dnnl_memory_t[]){l->src, l->wei, l->bias, l->dst});
#endif
#ifdef MJ_HAVE_XNNPACK
        if (l->fc) xnn_delete_operator(l->fc);
#endif
        free(l->w);
        free(l->b);
    }
#ifdef MJ_HAVE_ONEDNN
    mj_peer_dnnl_stop(p->engine, p->stream);
#endif
#ifdef MJ_HAVE_XNNPACK
    if (p->pool) pthreadpool_destroy(p->pool);
#endif
    free(p->layers);
    free(p->buf[0]);
    free(p->buf[1]);
    free(p);
}

#ifdef MJ_HAVE_ONEDNN
/* The activation as a oneDNN eltwise post-op, or false (the epilogue does it). */
static bool onednn_act(mj_act act, dnnl_alg_kind_t *alg) {
    switch (act) {
    case MJ_ACT_RELU: *alg = dnnl_eltwise_relu; return true;
    case MJ_ACT_GELU: *alg = dnnl_eltwise_gelu_erf; return true;
    case MJ_ACT_GELU_TANH: *alg = dnnl_eltwise_gelu_tanh; return true;
    case MJ_ACT_SIGMOID: *alg = dnnl_eltwise_logistic; return true;
    case MJ_ACT_TANH: *alg = dnnl_eltwise_tanh; return true;
    case MJ_ACT_NONE:
    case MJ_ACT_SILU:
    case MJ_ACT_COUNT: break;
    }
    return false;
}

mj_status mj_peer_dnnl_start(const char *prefix, dnnl_engine_t *engine, dnnl_stream_t *stream) {
    mj_status st = MJ_OK;
    MJ_DNNL_TRY(prefix, dnnl_engine_create(engine, dnnl_cpu, 0));
    MJ_DNNL_TRY(prefix, dnnl_stream_create(stream, *engine, dnnl_stream_default_flags));
done:
    return st;
}

void mj_peer_dnnl_stop(dnnl_engine_t engine, dnnl_stream_t stream) {
    if (stream) dnnl_stream_destroy(stream);
    if (engine) dnnl_engine_destroy(engine);
}

mj_status mj_peer_dnnl_weights(const char *prefix, dnnl_engine_t engine, dnnl_stream_t stream,
                               const dnnl_memory_desc_t *user_md, const float *data,
                               const dnnl_memory_desc_t *md, dnnl_memory_t *wei) {
    mj_status st = MJ_OK;
    dnnl_memory_t user_w = NULL;
    dnnl_primitive_desc_t rpd = NULL;
    dnnl_primitive_t reorder = NULL;
    MJ_DNNL_TRY(prefix, dnnl_memory_create(wei, md, engine, DNNL_MEMORY_ALLOCATE));
    MJ_DNNL_TRY(prefix, dnnl_memory_create(&user_w, user_md, engine, (void *)data));
    MJ_DNNL_TRY(prefix, dnnl_reorder_primitive_desc_create(&rpd, user_md, engine, md, engine, NULL));
    MJ_DNNL_TRY(prefix, dnnl_primitive_create(&reorder, rpd));
    dnnl_exec_arg_t rargs[2] = {{DNNL_ARG_FROM, user_w}, {DNNL_ARG_TO, *wei}};
    MJ_DNNL_TRY(prefix, dnnl_primitive_execute(reorder, stream, 2, rargs));
    MJ_DNNL_TRY(prefix, dnnl_stream_wait(stream));
done:
    if (reorder) dnnl_primitive_destroy(reorder);
    if (rpd) dnnl_primitive_desc_destroy(rpd);
    if (user_w) dnnl_memory_destroy(user_w);
    return st;
}

void mj_peer_dnnl_destroy(dnnl_primitive_t prim, int n, const dnnl_memory_t *mem) {
    if (prim) dnnl_primitive_destroy(prim);
    for (int i = 0; i < n; i++)
        if (mem[i]) dnnl_memory_destroy(mem[i]);
}

#define DNNL_TRY(call) MJ_DNNL_TRY("peer onednn", call)

/* One inner-product primitive per layer, y = act(x · wᵀ + b), with the
 * weights reordered once (here, outside any timing) into the layout the
 * primitive prefers, as a user of oneDNN would. */
static mj_status onednn_layer(mj_peer *p, peer_layer *l) {
    mj_status st = MJ_OK;
    dnnl_memory_desc_t src_md, wei_any, wei_user, bias_md, dst_md;
    dnnl_inner_product_desc_t ipd;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    const dnnl_dims_t src_dims = {p->batch, l->in}, wei_dims = {l->out, l->in},
                      bias_dims = {l->out}, dst_dims = {p->batch, l->out};
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&src_md, 2, src_dims, dnnl_f32, dnnl_ab));
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&wei_any, 2, wei_dims, dnnl_f32, dnnl_format_tag_any));
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&wei_user, 2, wei_dims, dnnl_f32, dnnl_ab));
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&bias_md, 1, bias_dims, dnnl_f32, dnnl_a));
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&dst_md, 2, dst_dims, dnnl_f32, dnnl_ab));
    DNNL_TRY(dnnl_inner_product_forward_desc_init(&ipd, dnnl_forward_inference, &src_md, &wei_any,
                                                  l->b ? &bias_md : NULL, &dst_md));
    DNNL_TRY(dnnl_primitive_attr_create(&attr));
    dnnl_alg_kind_t alg;
    if (onednn_act(l->act, &alg)) {
        DNNL_TRY(dnnl_post_ops_create(&po));
        DNNL_TRY(dnnl_post_ops_append_eltwise(po, 1.0f, alg, 0.0f, 0.0f));
        DNNL_TRY(dnnl_primitive_attr_set_post_ops(attr, po));
        l->act_fused = true;
    }
    DNNL_TRY(dnnl_primitive_desc_create(&pd, &ipd, attr, p->engine, NULL));
    const dnnl_memory_desc_t *wei_md = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    st = mj_peer_dnnl_weights("peer onednn", p->engine, p->stream, &wei_user, l->w, wei_md, &l->wei);
    if (st != MJ_OK) goto done;
    if (l->b) DNNL_TRY(dnnl_memory_create(&l->bias, &bias_md, p->engine, l->b));
    /* src and dst point at the ping-pong buffers; run() sets the handles */
    DNNL_TRY(dnnl_memory_create(&l->src, &src_md, p->engine, DNNL_MEMORY_NONE));
    DNNL_TRY(dnnl_memory_create(&l->dst, &dst_md, p->engine, DNNL_MEMORY_NONE));
    DNNL_TRY(dnnl_primitive_create(&l->ip, pd));
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (po) dnnl_post_ops_destroy(po);
    return st;
}

static mj_status onednn_init(mj_peer *p) {
    omp_set_num_threads(p->threads); /* before the primitives: see peers_internal.h */
    mj_status st = mj_peer_dnnl_start("peer onednn", &p->engine, &p->stream);
    for (int i = 0; i < p->n && st == MJ_OK; i++) st = onednn_layer(p, &p->layers[i]);
    return st;
}
#undef DNNL_TRY
#endif

#ifdef MJ_HAVE_XNNPACK
/* One fully-connected operator per layer; ReLU (and no activation) is its
 * output clamp, anything else runs in the epilogue. The operators of layers
 * after the first read fixed buffers, so they are set up once here; the
 * first layer's is set up again only when the caller's input moves. */
static mj_status xnnpack_init(mj_peer *p) {
    if (xnn_initialize(NULL) != xnn_status_success)
        return mj_fail(MJ_ERR_UNSUPPORTED, "peer xnnpack: xnn_initialize failed (CPU not supported?)");
    if (p->threads > 1) {
        p->pool = pthreadpool_create((size_t)p->threads);
        if (!p->pool) return mj_fail(MJ_ERR_NOMEM, "peer xnnpack: cannot create %d threads", p->threads);
    }
    for (int i = 0; i < p->n; i++) {
        peer_layer *l = &p->layers[i];
        float lo = -INFINITY, hi = INFINITY;
        if (l->act == MJ_ACT_RELU || l->act == MJ_ACT_NONE) {
            if (l->act == MJ_ACT_RELU) lo = 0.0f;
            l->act_fused = true;
        }
        if (xnn_create_fully_connected_nc_f32((size_t)l->in, (size_t)l->out, (size_t)l->in,
                                              (size_t)l->out, l->w, l->b, lo, hi, 0,
                                              &l->fc) != xnn_status_success)
            return mj_fail(MJ_ERR_UNSUPPORTED, "peer xnnpack: cannot create layer %d [%lld, %lld]", i,
                           (long long)l->out, (long long)l->in);
        if (i > 0) {
            const float *in = p->buf[(i - 1) & 1];
            if (xnn_setup_fully_connected_nc_f32(l->fc, (size_t)p->batch, in, p->buf[i & 1],
                                                 p->pool) != xnn_status_success)
                return mj_fail(MJ_ERR_UNSUPPORTED, "peer xnnpack: cannot set up layer %d", i);
            l->setup_in = in;
        }
    }
    return MJ_OK;
}
#endif

mj_status mj_peer_new(mj_peer_kind k, int n_layers, const mj_peer_layer *layers, int64_t batch,
                      int threads, mj_peer **out) {
    if (!out || !layers || n_layers < 1)
        return mj_fail(MJ_ERR_INVALID, "peer: need an output pointer and at least one layer "
                                       "(got %d)", n_layers);
    if ((int)k < 0 || k >= MJ_PEER_COUNT) return mj_fail(MJ_ERR_INVALID, "peer: unknown kind %d", k);
    if (!mj_peer_built(k))
        return mj_fail(MJ_ERR_UNSUPPORTED, "peer %s: not built (library not found at build time)",
                       mj_peer_name(k));
    if (batch < 1 || threads < 1)
        return mj_fail(MJ_ERR_INVALID, "peer %s: batch %lld and threads %d must be >= 1",
                       mj_peer_name(k), (long long)batch, threads);
    if (k == MJ_PEER_LIBXSMM && threads != 1)
        return mj_fail(MJ_ERR_UNSUPPORTED, "peer libxsmm: its kernels are single-threaded "
                                           "(asked for %d threads)", threads);
    int64_t maxw = layers[0].in;
    for (int i = 0; i < n_layers; i++) {
        if (layers[i].in < 1 || layers[i].out < 1 || !layers[i].w)
            return mj_fail(MJ_ERR_INVALID, "peer: layer %d has shape [%lld, %lld] or no weight", i,
                           (long long)layers[i].out, (long long)layers[i].in);
        if (i > 0 && layers[i].in != layers[i - 1].out)
            return mj_fail(MJ_ERR_SHAPE, "peer: layer %d takes %lld inputs but layer %d gives %lld",
                           i, (long long)layers[i].in, i - 1, (long long)layers[i - 1].out);
        /* blasint is 32-bit in both libraries */
        if (layers[i].in > INT32_MAX / 2 || layers[i].out > INT32_MAX / 2 || batch > INT32_MAX / 2)
            return mj_fail(MJ_ERR_LIMIT, "peer: layer %d is too large for 32-bit BLAS sizes", i);
        if (layers[i].out > maxw) maxw = layers[i].out;
    }
    int64_t bufn;
    if (__builtin_mul_overflow(batch, maxw, &bufn))
        return mj_fail(MJ_ERR_LIMIT, "peer: batch %lld x width %lld overflows", (long long)batch,
                       (long long)maxw);

    mj_peer *p = calloc(1, sizeof *p);
    if (!p) return mj_fail(MJ_ERR_NOMEM, "peer: out of memory");
    p->kind = k;
    p->batch = batch;
    p->threads = threads;
    p->layers = calloc((size_t)n_layers, sizeof *p->layers);
    if (!p->layers) {
        free(p);
        return mj_fail(MJ_ERR_NOMEM, "peer: out of memory");
    }
    p->n = n_layers;
    p->vzeroupper = __builtin_cpu_supports("avx");
    p->buf[0] = alloc_floats(bufn);
    p->buf[1] = alloc_floats(bufn);
    if (!p->buf[0] || !p->buf[1]) goto nomem;
    for (int i = 0; i < n_layers; i++) {
        const mj_peer_layer *src = &layers[i];
        peer_layer *l = &p->layers[i];
        l->in = src->in;
        l->out = src->out;
        l->act = src->act;
        l->w = alloc_floats(src->in * src->out);
        if (!l->w) goto nomem;
        if (k == MJ_PEER_LIBXSMM) {
            /* LIBXSMM is column-major without a transposed-A kernel here:
             * y^T[N][M] = W[N][K] · x^T needs A stored as W^T row-major. */
            for (int64_t o = 0; o < src->out; o++)
                for (int64_t j = 0; j < src->in; j++) l->w[j * src->out + o] = src->w[o * src->in + j];
        } else {
            memcpy(l->w, src->w, (size_t)(src->in * src->out) * sizeof(float));
        }
        if (src->b) {
            l->b = alloc_floats(src->out);
            if (!l->b) goto nomem;
            memcpy(l->b, src->b, (size_t)src->out * sizeof(float));
        }
#ifdef MJ_HAVE_LIBXSMM
        if (k == MJ_PEER_LIBXSMM) {
            libxsmm_init();
            const libxsmm_blasint m = (libxsmm_blasint)src->out, n = (libxsmm_blasint)batch,
                                  kk = (libxsmm_blasint)src->in;
            const libxsmm_blasint lda = m, ldb = kk, ldc = m;
            const float alpha = 1.0f, beta = 0.0f;
            const int flags = LIBXSMM_GEMM_FLAG_NONE;
            l->kernel = libxsmm_smmdispatch(m, n, kk, &lda, &ldb, &ldc, &alpha, &beta, &flags, NULL);
            if (!l->kernel) {
                mj_peer_free(p);
                return mj_fail(MJ_ERR_UNSUPPORTED,
                               "peer libxsmm: no kernel for M=%lld N=%lld K=%lld (layer %d)",
                               (long long)batch, (long long)src->out, (long long)src->in, i);
            }
        }
#endif
    }
    mj_status st = MJ_OK;
#ifdef MJ_HAVE_ONEDNN
    if (k == MJ_PEER_ONEDNN) st = onednn_init(p);
#endif
#ifdef MJ_HAVE_XNNPACK
    if (k == MJ_PEER_XNNPACK) st = xnnpack_init(p);
#endif
    if (st != MJ_OK) goto fail;
    *out = p;
    return MJ_OK;
nomem:
    st = mj_fail(MJ_ERR_NOMEM, "peer %s: out of memory", mj_peer_name(k));
fail:
    mj_peer_free(p);
    return st;
}

/* The epilogue every peer runs after its GEMM: y = act(y + b). Cloned per
 * ISA so it is vectorised as a user building with -march=native would get
 * (and so its stores match the width of the next GEMM's loads). */
__attribute__((target_clones("avx512f", "avx2", "default"), noinline))
static void bias_act(float *y, int64_t m, int64_t n, const float *b, mj_act act) {
    for (int64_t i = 0; i < m; i++) {
        float *row = y + i * n;
        if (b)
            for (int64_t j = 0; j < n; j++) row[j] += b[j];
        switch (act) {
        case MJ_ACT_NONE: break;
        case MJ_ACT_RELU:
            for (int64_t j = 0; j < n; j++) row[j] = row[j] < 0.0f ? 0.0f : row[j];
            break;
        default: /* the libm activations, each through the one scalar definition */
            for (int64_t j = 0; j < n; j++) row[j] = mj_act_apply(act, row[j]);
            break;
        }
    }
}

/* The libraries' thread counts are process-wide. OpenBLAS's: set only on
 * change (setting it may start or stop its threads). */
#ifdef MJ_HAVE_OPENBLAS
static int openblas_threads_set = 0;
#endif

const float *mj_peer_run(mj_peer *p, const float *x) {
    MJ_ASSERT(p && x);
    const float *in = x;
    float *outb = NULL;
#ifdef MJ_HAVE_OPENBLAS
    if (p->kind == MJ_PEER_OPENBLAS && openblas_threads_set != p->threads) {
        openblas_set_num_threads(p->threads);
        openblas_threads_set = p->threads;
    }
#endif
#ifdef MJ_HAVE_ONEDNN
    /* the primitives keep the count they were made with; this sets it for
     * anything oneDNN runs outside them */
    if (p->kind == MJ_PEER_ONEDNN) omp_set_num_threads(p->threads);
#endif
    for (int i = 0; i < p->n; i++) {
        peer_layer *l = &p->layers[i];
        outb = p->buf[i & 1];
        switch (p->kind) {
#ifdef MJ_HAVE_OPENBLAS
        case MJ_PEER_OPENBLAS:
            /* y[M][N] = x[M][K] · W[N][K]^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)p->batch, (int)l->out,
                        (int)l->in, 1.0f, in, (int)l->in, l->w, (int)l->in, 0.0f, outb,
                        (int)l->out);
            if (p->vzeroupper) __asm__ volatile("vzeroupper" ::: "memory");
            break;
#endif
#ifdef MJ_HAVE_LIBXSMM
        case MJ_PEER_LIBXSMM:
            l->kernel(l->w, in, outb);
            /* LIBXSMM's AVX-512 kernels return with dirty upper registers;
             * without this the SSE-encoded epilogue below runs several
             * times slower (AVX-SSE transition), which is not LIBXSMM's cost */
            if (p->vzeroupper) __asm__ volatile("vzeroupper" ::: "memory");
            break;
#endif
#ifdef MJ_HAVE_ONEDNN
        case MJ_PEER_ONEDNN: {
            dnnl_memory_set_data_handle(l->src, (void *)in);
            dnnl_memory_set_data_handle(l->dst, outb);
            dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, l->src},
                                       {DNNL_ARG_WEIGHTS, l->wei},
                                       {DNNL_ARG_DST, l->dst},
                                       {DNNL_ARG_BIAS, l->bias}};
            dnnl_status_t ds = dnnl_primitive_execute(l->ip, p->stream, l->bias ? 4 : 3, args);
            MJ_ASSERT(ds == dnnl_success);
            ds = dnnl_stream_wait(p->stream);
            MJ_ASSERT(ds == dnnl_success);
            if (p->vzeroupper) __asm__ volatile("vzeroupper" ::: "memory");
            break;
        }
#endif
#ifdef MJ_HAVE_XNNPACK
        case MJ_PEER_XNNPACK: {
            if (l->setup_in != in) {
                enum xnn_status xs = xnn_setup_fully_connected_nc_f32(l->fc, (size_t)p->batch, in,
                                                                      outb, p->pool);
                MJ_ASSERT(xs == xnn_status_success);
                l->setup_in = in;
            }
            enum xnn_status xs = xnn_run_operator(l->fc, p->pool);
            MJ_ASSERT(xs == xnn_status_success);
            if (p->vzeroupper) __asm__ volatile("vzeroupper" ::: "memory");
            break;
        }
#endif
        default: MJ_ASSERT(!"peer kind not built");
        }
        (void)in; /* read only by the peers this build has */
        bool bias_done = p->kind == MJ_PEER_ONEDNN || p->kind == MJ_PEER_XNNPACK;
        if (!(bias_done && l->act_fused))
            bias_act(outb, p->batch, l->out, bias_done ? NULL : l->b, l->act_fused ? MJ_ACT_NONE : l->act);
        in = outb;
    }
    return outb;
}
