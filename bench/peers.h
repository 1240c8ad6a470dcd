/* bench/peers.h — what users would pick instead: the same chain of Linear
 * layers on the already-masked dense weights, run through OpenBLAS
 * (cblas_sgemm) or LIBXSMM (JIT small GEMMs) followed by a bias + activation
 * loop, or through oneDNN (inner product with the activation as a post-op,
 * weights reordered once to its preferred layout) or XNNPACK (fully
 * connected operator, ReLU as its output clamp). Each peer is compiled in
 * only when its library was found at build time (MJ_HAVE_OPENBLAS,
 * MJ_HAVE_LIBXSMM, MJ_HAVE_ONEDNN, MJ_HAVE_XNNPACK). */
#ifndef MJ_BENCH_PEERS_H
#define MJ_BENCH_PEERS_H

#include <stdbool.h>
#include <stdint.h>

#include "maskjit.h"

typedef enum mj_peer_kind {
    MJ_PEER_OPENBLAS = 0,
    MJ_PEER_LIBXSMM,
    MJ_PEER_ONEDNN,
    MJ_PEER_XNNPACK,
    MJ_PEER_COUNT
} mj_peer_kind;

/* One layer, y = act(x · wᵀ + b): w [out][in] row-major (masked, dense), b
 * [out] or NULL. The peer copies both. */
typedef struct mj_peer_layer {
    int64_t in, out;
    const float *w;
    const float *b;
    mj_act act;
} mj_peer_layer;

typedef struct mj_peer mj_peer;

const char *mj_peer_name(mj_peer_kind k);      /* "openblas", "libxsmm", "onednn", "xnnpack" */
bool mj_peer_built(mj_peer_kind k);             /* compiled in?          */
/* A line about the peer's configuration ("OpenBLAS 0.3.21 ... core Haswell"),
 * or "not built". Static storage. */
const char *mj_peer_info(mj_peer_kind k);

/* MJ_ERR_UNSUPPORTED when the peer is not built or cannot run this shape /
 * thread count (the message says why; callers skip the peer). */
mj_status mj_peer_new(mj_peer_kind k, int n_layers, const mj_peer_layer *layers, int64_t batch,
                      int threads, mj_peer **out);
/* x is [batch][layers[0].in]; returns the peer's own output buffer
 * [batch][layers[n-1].out], valid until the next run or free. */
const float *mj_peer_run(mj_peer *p, const float *x);
void mj_peer_free(mj_peer *p);
/* OpenMP's thread count now, the count oneDNN's primitives are made with
 * (0 when oneDNN is not built). */
int mj_peer_openmp_threads(void);

/* ---- convolutions (peers_conv.c) -------------------------------------------
 * A chain of 2-D convolutions as a deployed pruned CNN block: each layer
 * y = conv(x, w) + b, then ReLU if relu, then + the chain's input if
 * add_input (same shape), then ReLU if relu_after_add. BatchNorm is folded
 * into w and b by the caller, as users of these libraries deploy it. NCHW in
 * and out. oneDNN (OpenMP threads) and XNNPACK (its pthreadpool) only, on
 * `threads` threads. */
typedef struct mj_peer_conv_layer {
    int64_t in_c, out_c, kh, kw;
    int64_t stride[2], padding[2], dilation[2], groups;
    const float *w; /* [out_c][in_c/groups][kh][kw], borrowed until mj_peer_conv_new returns */
    const float *b; /* [out_c] or NULL; borrowed for the peer's lifetime (oneDNN) */
    bool relu, add_input, relu_after_add;
} mj_peer_conv_layer;

typedef struct mj_peer_conv mj_peer_conv;

mj_status mj_peer_conv_new(mj_peer_kind k, int n_layers, const mj_peer_conv_layer *layers,
                           int64_t batch, int64_t h, int64_t w, int threads, mj_peer_conv **out);
/* x is [batch][c][h][w]; returns the peer's own NCHW output buffer. */
const float *mj_peer_conv_run(mj_peer_conv *p, const float *x);
void mj_peer_conv_free(mj_peer_conv *p);

/* The chain a graph computes (params bound): frozen and folded, then read as
 * conv2d [batch_norm] [relu] [add of the input] [relu], ... from one [B, C, H,
 * W] input to one output, BatchNorm folded into the layer before it. The
 * layers own their weights. MJ_ERR_UNSUPPORTED with the reason when the
 * graph is anything else. */
typedef struct mj_peer_conv_chain {
    int n;
    mj_peer_conv_layer *layers;
    int64_t h, w; /* the input's spatial size */
} mj_peer_conv_chain;
mj_status mj_peer_conv_chain_from_graph(const mj_graph *g, mj_peer_conv_chain *out);
void mj_peer_conv_chain_free(mj_peer_conv_chain *c);

#endif
