/* The BLAS peers of the benchmark (see peers.h and shared notes on running
 * them fairly): dense GEMMs on the masked weights, beta = 0, then one pass of
 * bias + activation per layer, chained through two ping-pong buffers. */
#include "bench/peers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/internal.h"

#ifdef MJ_HAVE_OPENBLAS
#include <cblas.h>
#endif
#ifdef MJ_HAVE_LIBXSMM
#include <libxsmm.h>
#endif

typedef struct peer_layer {
    int64_t in, out;
    float *w;  /* OpenBLAS: [out][in] as given; LIBXSMM: transposed [in][out] */
    float *b;  /* [out] or NULL */
    mj_act act;
#ifdef MJ_HAVE_LIBXSMM
    libxsmm_smmfunction kernel;
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
};

const char *mj_peer_name(mj_peer_kind k) {
    switch (k) {
    case MJ_PEER_OPENBLAS: return "openblas";
    case MJ_PEER_LIBXSMM: return "libxsmm";
    default: return "?";
    }
}

bool mj_peer_built(mj_peer_kind k) {
    switch (k) {
#ifdef MJ_HAVE_OPENBLAS
    case MJ_PEER_OPENBLAS: return true;
#endif
#ifdef MJ_HAVE_LIBXSMM
    case MJ_PEER_LIBXSMM: return true;
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
    for (int i = 0; i < p->n; i++) {
        free(p->layers[i].w);
        free(p->layers[i].b);
    }
    free(p->layers);
    free(p->buf[0]);
    free(p->buf[1]);
    free(p);
}

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
    *out = p;
    return MJ_OK;
nomem:
    mj_peer_free(p);
    return mj_fail(MJ_ERR_NOMEM, "peer %s: out of memory", mj_peer_name(k));
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
        default:
            for (int64_t j = 0; j < n; j++) row[j] = mj_act_apply(act, row[j]);
            break;
        }
    }
}

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
        default: MJ_ASSERT(!"peer kind not built");
        }
        (void)in; /* read only by the peers this build has */
        bias_act(outb, p->batch, l->out, l->b, l->act);
        in = outb;
    }
    return outb;
}
