/* maskjit/cnn.h — the layers of CNNs in eager C: conv2d, batch_norm (eval),
 * pooling; and their torch.nn modules (Conv2d, BatchNorm2d, MaxPool2d,
 * AvgPool2d, AdaptiveAvgPool2d). Tensors are NCHW like PyTorch's.
 *
 * Each kernel's reference order is in docs/numerics.md ("CNN layers"). */
#ifndef MASKJIT_CNN_H
#define MASKJIT_CNN_H

#include <stdbool.h>
#include <stdint.h>

#include "maskjit/module.h"
#include "maskjit/status.h"
#include "maskjit/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Geometry of a 2-D window: [0] along H, [1] along W. */
typedef struct mj_conv2d_params {
    int64_t stride[2];   /* >= 1 */
    int64_t padding[2];  /* >= 0, zeros */
    int64_t dilation[2]; /* >= 1 */
    int64_t groups;      /* >= 1, divides in and out channels */
} mj_conv2d_params;

/* stride 1, padding 0, dilation 1, groups 1 (torch.nn.Conv2d's defaults) */
void mj_conv2d_params_init(mj_conv2d_params *p);

/* y[N,O,OH,OW] = conv2d(x[N,C,H,W], w[O,C/groups,KH,KW]) + b[O] (b may be
 * NULL); OH = (H + 2*padding - dilation*(KH-1) - 1) / stride + 1. */
mj_status mj_conv2d(mj_tensor **out, const mj_tensor *x, const mj_tensor *w, const mj_tensor *b,
                    const mj_conv2d_params *p);
/* Eval-mode batch norm over dim 1 of x[N,C,...]: per channel
 * alpha = weight / sqrtf(var + eps), beta = bias - mean * alpha,
 * y = fmaf(x, alpha, beta). weight and bias may be NULL (1 and 0). */
mj_status mj_batch_norm(mj_tensor **out, const mj_tensor *x, const mj_tensor *running_mean,
                        const mj_tensor *running_var, const mj_tensor *weight, const mj_tensor *bias,
                        float eps);
/* Max over each window of x[N,C,H,W] (padding is never the max; NaN wins,
 * as in PyTorch). kernel/stride/padding: [H, W]; padding <= kernel / 2. */
mj_status mj_max_pool2d(mj_tensor **out, const mj_tensor *x, const int64_t kernel[2],
                        const int64_t stride[2], const int64_t padding[2]);
/* Mean over each window; count_include_pad as torch's (default true). */
mj_status mj_avg_pool2d(mj_tensor **out, const mj_tensor *x, const int64_t kernel[2],
                        const int64_t stride[2], const int64_t padding[2], bool count_include_pad);
/* Either pool with every option of F.max_pool2d / F.avg_pool2d that maskjit
 * has: ceil_mode as PyTorch's (the output size rounds up; the last window
 * may hang over the input's end but starts inside it or its left padding;
 * windows are clipped to the input, avg_pool2d's divisor with padding to
 * the padded input). count_include_pad: avg_pool2d only. */
typedef struct mj_pool2d_params {
    bool max; /* max_pool2d, else avg_pool2d */
    int64_t kernel[2], stride[2], padding[2];
    bool ceil_mode, count_include_pad;
} mj_pool2d_params;
mj_status mj_pool2d(mj_tensor **out, const mj_tensor *x, const mj_pool2d_params *p);
/* PyTorch's adaptive windows: rows [floor(i*H/OH), ceil((i+1)*H/OH)). */
mj_status mj_adaptive_avg_pool2d(mj_tensor **out, const mj_tensor *x, int64_t oh, int64_t ow);

/* ---- modules (torch.nn names, defaults, init and state-dict keys) ------- */

/* Conv2d: "weight" [out, in/groups, kh, kw] and "bias" [out], both
 * U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in/groups*kh*kw, weight
 * drawn first (torch.nn.Conv2d.reset_parameters). The weight may be
 * parametrized (FakeSparsity masks). */
mj_status mj_conv2d_new(mj_module **out, int64_t in_channels, int64_t out_channels,
                        const int64_t kernel[2], const mj_conv2d_params *p, bool bias, mj_rng *rng);
/* BatchNorm2d (eval): "weight" ones, "bias" zeros, buffers "running_mean"
 * zeros and "running_var" ones. PyTorch's num_batches_tracked counts
 * training steps; eval never reads it, so it is not kept (a state dict
 * holding it loads non-strictly). */
mj_status mj_batch_norm2d_new(mj_module **out, int64_t num_features, float eps);
/* stride NULL = kernel, as torch's default */
mj_status mj_max_pool2d_new(mj_module **out, const int64_t kernel[2], const int64_t stride[2],
                            const int64_t padding[2]);
mj_status mj_avg_pool2d_new(mj_module **out, const int64_t kernel[2], const int64_t stride[2],
                            const int64_t padding[2], bool count_include_pad);
/* MaxPool2d or AvgPool2d with every option mj_pool2d has (ceil_mode);
 * the stride is p->stride, written out */
mj_status mj_pool2d_new(mj_module **out, const mj_pool2d_params *p);
mj_status mj_adaptive_avg_pool2d_new(mj_module **out, int64_t oh, int64_t ow);

#ifdef __cplusplus
}
#endif
#endif
