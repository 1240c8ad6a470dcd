/* What the linear peers (peers.c) and the convolution peers (peers_conv.c)
 * share: oneDNN's error check, engine and stream, the one-time reorder of
 * the weights into the primitive's layout, and the teardown. Defined in
 * peers.c. */
#ifndef MJ_BENCH_PEERS_INTERNAL_H
#define MJ_BENCH_PEERS_INTERNAL_H

#include "bench/peers.h"
#include "src/core/internal.h"

#ifdef MJ_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>

/* In a function with `mj_status st` and a `done:` label: a failing oneDNN
 * call sets st to MJ_ERR_UNSUPPORTED ("<prefix>: <call> failed (status N)")
 * and jumps to done. */
#define MJ_DNNL_TRY(prefix, call)                                                                     \
    do {                                                                                              \
        dnnl_status_t ds_ = (call);                                                                   \
        if (ds_ != dnnl_success) {                                                                    \
            st = mj_fail(MJ_ERR_UNSUPPORTED, "%s: %s failed (status %d)", prefix, #call, (int)ds_);   \
            goto done;                                                                                \
        }                                                                                             \
    } while (0)

/* oneDNN makes each primitive for OpenMP's thread count at the time it is
 * created and runs it on that many threads whatever the count is later: a
 * peer sets omp_set_num_threads(its threads) before it makes any. */
void omp_set_num_threads(int n);

/* A CPU engine and its stream; errors name prefix. */
mj_status mj_peer_dnnl_start(const char *prefix, dnnl_engine_t *engine, dnnl_stream_t *stream);
void mj_peer_dnnl_stop(dnnl_engine_t engine, dnnl_stream_t stream);
/* *wei: new memory of layout md holding the weights data (layout user_md),
 * reordered once, outside any timing, as a user of oneDNN would. */
mj_status mj_peer_dnnl_weights(const char *prefix, dnnl_engine_t engine, dnnl_stream_t stream,
                               const dnnl_memory_desc_t *user_md, const float *data,
                               const dnnl_memory_desc_t *md, dnnl_memory_t *wei);
/* Destroys a layer's primitive and its n memories (NULLs skipped). */
void mj_peer_dnnl_destroy(dnnl_primitive_t prim, int n, const dnnl_memory_t *mem);
#endif

#endif
