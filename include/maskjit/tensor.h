/* maskjit/tensor.h — float32 tensors, the seeded generator, and eager ops.
 *
 * Tensors are reference counted, contiguous, row-major float32 of rank 1-4.
 * A tensor either owns its data or borrows a caller's buffer (mj_tensor_wrap).
 *
 * The eager ops are maskjit's reference semantics: plain loops compiled with
 * -ffp-contract=off, every dot product summed in ascending k starting from
 * +0.0f, bias added last. The interpreter and the compiled code in exact mode
 * reproduce them bit for bit (see docs/numerics.md).
 *
 * Every op writes a new tensor to *out (the caller releases it) and returns
 * MJ_OK, or returns an error, leaves *out untouched and sets mj_last_error().
 */
#ifndef MASKJIT_TENSOR_H
#define MASKJIT_TENSOR_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "maskjit/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MJ_MAX_RANK 4
/* Largest element count of one tensor (2^40 floats = 4 TiB): a guard against
 * sizes read from files, not a practical limit. */
#define MJ_MAX_NUMEL (INT64_C(1) << 40)

typedef struct mj_tensor mj_tensor;

/* ---- the generator: xoshiro256** seeded through splitmix64 ------------- */
typedef struct mj_rng {
    uint64_t s[4];
} mj_rng;

void mj_rng_seed(mj_rng *rng, uint64_t seed);
uint64_t mj_rng_next(mj_rng *rng);
/* Uniform in [0, 1): the top 24 bits of the next draw times 2^-24. */
float mj_rng_uniform(mj_rng *rng);
/* Standard normal by Box-Muller on two uniform draws (one value per call). */
float mj_rng_normal(mj_rng *rng);

/* ---- construction ------------------------------------------------------ */
mj_status mj_tensor_zeros(mj_tensor **out, int rank, const int64_t *shape);
mj_status mj_tensor_ones(mj_tensor **out, int rank, const int64_t *shape);
mj_status mj_tensor_full(mj_tensor **out, int rank, const int64_t *shape, float value);
mj_status mj_tensor_eye(mj_tensor **out, int64_t n);
mj_status mj_tensor_arange(mj_tensor **out, int64_t n); /* 0, 1, ..., n-1 */
mj_status mj_tensor_rand(mj_tensor **out, int rank, const int64_t *shape, mj_rng *rng);
mj_status mj_tensor_randn(mj_tensor **out, int rank, const int64_t *shape, mj_rng *rng);
/* Copies numel(shape) floats from data. */
mj_status mj_tensor_from_data(mj_tensor **out, int rank, const int64_t *shape, const float *data);
/* Borrows data: the caller keeps it alive for the tensor's lifetime. */
mj_status mj_tensor_wrap(mj_tensor **out, int rank, const int64_t *shape, float *data);
mj_status mj_tensor_clone(mj_tensor **out, const mj_tensor *t);
/* dst = src elementwise; shapes must be equal. Bumps dst's version. */
mj_status mj_tensor_copy(mj_tensor *dst, const mj_tensor *src);

/* References: a new tensor has one; release frees at zero. NULL is ignored. */
mj_tensor *mj_tensor_retain(mj_tensor *t);
void mj_tensor_release(mj_tensor *t);

/* ---- inspection -------------------------------------------------------- */
int mj_tensor_rank(const mj_tensor *t);
int64_t mj_tensor_dim(const mj_tensor *t, int i); /* i may be negative */
const int64_t *mj_tensor_shape(const mj_tensor *t);
int64_t mj_tensor_numel(const mj_tensor *t);
/* Read access. While a trace is recording on this thread and t is a traced
 * value (the input, a parameter or buffer of the traced module, or a result
 * of a recorded op), reading its data into C records a TracerWarning on the
 * trace, once per value: what C decides from the data is baked into the
 * graph, which may then not generalise. mj_tensor_data_mut,
 * mj_tensor_compare / _allclose / _equal and mj_tensor_print count as reads
 * too. maskjit's own code never warns. */
const float *mj_tensor_data(const mj_tensor *t);
/* Write access: bumps the version counter, which compiled models in live
 * mode use to notice that a parameter changed. Call it again (or
 * mj_tensor_touch) after each later modification through a kept pointer. */
float *mj_tensor_data_mut(mj_tensor *t);
void mj_tensor_touch(mj_tensor *t);
uint64_t mj_tensor_version(const mj_tensor *t);
/* Process-unique identity (never reused, unlike addresses). */
uint64_t mj_tensor_uid(const mj_tensor *t);
/* "[3, 16]" into buf (always NUL-terminated); returns buf. */
const char *mj_shape_str(char *buf, size_t size, int rank, const int64_t *shape);

/* Readable print in PyTorch's style: shape, then rows (long dims elided). */
void mj_tensor_print(FILE *f, const mj_tensor *t, const char *name);

/* ---- comparison -------------------------------------------------------- */
/* torch.testing.assert_close defaults for float32 */
#define MJ_RTOL_F32 1.3e-6
#define MJ_ATOL_F32 1e-5

typedef struct mj_compare {
    bool same_shape;
    bool close;          /* every |a-e| <= atol + rtol*|e| (NaN equals NaN)   */
    bool bit_identical;  /* same shape and same bytes                          */
    double max_abs;      /* max |a - e|                                        */
    double max_rel;      /* max |a - e| / |e| over e != 0                      */
    int64_t n_mismatch;  /* elements outside the tolerance                     */
    int64_t first_mismatch; /* flat index of the first, -1 if none            */
} mj_compare;

mj_compare mj_tensor_compare(const mj_tensor *actual, const mj_tensor *expected,
                             double rtol, double atol);
bool mj_tensor_allclose(const mj_tensor *actual, const mj_tensor *expected,
                        double rtol, double atol);
bool mj_tensor_equal(const mj_tensor *a, const mj_tensor *b); /* bitwise */
/* One line: "close (max abs 0, max rel 0)" or "mismatch: 3 of 48 ... first at [0, 5]: 1.5 vs 2". */
void mj_compare_describe(const mj_compare *c, const mj_tensor *actual,
                         const mj_tensor *expected, char *buf, size_t size);

/* ---- eager ops (reference semantics) ----------------------------------- */
/* MJ_ACT_NONE (0), RELU, GELU, GELU_TANH, SIGMOID, TANH, SILU: see maskjit/acts.def. */
typedef enum mj_act {
#define MJ_ACT(id, name, torch_class, ir_op) MJ_ACT_##id,
#include "maskjit/acts.def"
#undef MJ_ACT
    MJ_ACT_COUNT
} mj_act;

const char *mj_act_name(mj_act act); /* "none", "relu", "gelu", "gelu_tanh", "sigmoid", "tanh", "silu" */
mj_status mj_act_parse(const char *name, mj_act *out);
/* The scalar function every path uses: eager, interpreter, JIT reference. */
float mj_act_apply(mj_act act, float x);

/* a[..., m,k] @ b[..., k,n] -> [..., m,n]: ranks 2-4, the leading (batch)
 * dims broadcast like NumPy ([B,h,s,d] @ [B,h,d,s], [B,s,k] @ [k,n]). */
mj_status mj_matmul(mj_tensor **out, const mj_tensor *a, const mj_tensor *b);
/* x[..., in] @ w[out,in]^T + b[out] -> [..., out]; b may be NULL. */
mj_status mj_linear(mj_tensor **out, const mj_tensor *x, const mj_tensor *w, const mj_tensor *b);
/* Elementwise with NumPy broadcasting. */
mj_status mj_add(mj_tensor **out, const mj_tensor *a, const mj_tensor *b);
mj_status mj_sub(mj_tensor **out, const mj_tensor *a, const mj_tensor *b);
mj_status mj_mul(mj_tensor **out, const mj_tensor *a, const mj_tensor *b);
mj_status mj_activation(mj_tensor **out, mj_act act, const mj_tensor *x);
mj_status mj_relu(mj_tensor **out, const mj_tensor *x);
mj_status mj_gelu(mj_tensor **out, const mj_tensor *x);
mj_status mj_gelu_tanh(mj_tensor **out, const mj_tensor *x);
mj_status mj_sigmoid(mj_tensor **out, const mj_tensor *x);
mj_status mj_tanh(mj_tensor **out, const mj_tensor *x);
mj_status mj_silu(mj_tensor **out, const mj_tensor *x);

/* ---- the math of transformers (docs/numerics.md defines each) ----------- */
/* Elementwise, NumPy broadcasting: a / b; maximum and minimum propagate NaN
 * and order -0 below +0 (torch.maximum / torch.minimum). */
mj_status mj_div(mj_tensor **out, const mj_tensor *a, const mj_tensor *b);
mj_status mj_maximum(mj_tensor **out, const mj_tensor *a, const mj_tensor *b);
mj_status mj_minimum(mj_tensor **out, const mj_tensor *a, const mj_tensor *b);
/* With a scalar: the scalar becomes a one-element tensor (a const [1] when
 * traced), as torch.jit.trace records `x / 8.0`. */
mj_status mj_add_scalar(mj_tensor **out, const mj_tensor *x, float s);
mj_status mj_sub_scalar(mj_tensor **out, const mj_tensor *x, float s);
mj_status mj_mul_scalar(mj_tensor **out, const mj_tensor *x, float s);
mj_status mj_div_scalar(mj_tensor **out, const mj_tensor *x, float s);
/* Unary: -x, expf, logf, sqrtf, 1/sqrtf. */
mj_status mj_neg(mj_tensor **out, const mj_tensor *x);
mj_status mj_exp(mj_tensor **out, const mj_tensor *x);
mj_status mj_log(mj_tensor **out, const mj_tensor *x);
mj_status mj_sqrt(mj_tensor **out, const mj_tensor *x);
mj_status mj_rsqrt(mj_tensor **out, const mj_tensor *x);
/* x ** exponent: 2 -> x*x, 3 -> x*x*x, 0.5 -> sqrtf, -0.5 -> 1/sqrtf,
 * -1 -> 1/x, -2 -> 1/(x*x), 1 -> x, else powf (as PyTorch's CPU kernel). */
mj_status mj_pow_scalar(mj_tensor **out, const mj_tensor *x, float exponent);
/* Parametrized activations (torch.nn.functional's definitions). */
mj_status mj_leaky_relu(mj_tensor **out, const mj_tensor *x, float negative_slope);
mj_status mj_elu(mj_tensor **out, const mj_tensor *x, float alpha);
mj_status mj_hardtanh(mj_tensor **out, const mj_tensor *x, float min_val, float max_val);
mj_status mj_relu6(mj_tensor **out, const mj_tensor *x); /* hardtanh(0, 6) */
mj_status mj_softplus(mj_tensor **out, const mj_tensor *x, float beta, float threshold);
/* Reductions over one dim (-rank..rank-1); keepdim keeps it as size 1. A
 * rank-1 x without keepdim is an error (tensors have rank >= 1). */
mj_status mj_sum(mj_tensor **out, const mj_tensor *x, int dim, bool keepdim);
mj_status mj_mean(mj_tensor **out, const mj_tensor *x, int dim, bool keepdim);
/* softmax / log_softmax over dim, max-subtracted. */
mj_status mj_softmax(mj_tensor **out, const mj_tensor *x, int dim);
mj_status mj_log_softmax(mj_tensor **out, const mj_tensor *x, int dim);
/* torch.nn.functional.layer_norm over the last dim (biased variance);
 * weight and bias [last dim] may be NULL (bias only with a weight). */
mj_status mj_layer_norm(mj_tensor **out, const mj_tensor *x, const mj_tensor *weight,
                        const mj_tensor *bias, float eps);

/* 2-D transpose. */
mj_status mj_transpose(mj_tensor **out, const mj_tensor *x);
/* New shape with the same element count; one entry may be -1 (inferred).
 * Traced, the batch B may end up at any dim that keeps it whole. */
mj_status mj_reshape(mj_tensor **out, const mj_tensor *x, int rank, const int64_t *shape);

/* ---- shape ops of attention (data movement: exact on every path) -------
 * Dims may be negative (counted from the end), as in PyTorch. */
/* torch.transpose(x, dim0, dim1) */
mj_status mj_transpose_dims(mj_tensor **out, const mj_tensor *x, int dim0, int dim1);
/* x.permute(perm): output dim d is x's dim perm[d]; n must be x's rank. */
mj_status mj_permute(mj_tensor **out, const mj_tensor *x, int n, const int *perm);
/* x[start:end] along dim (Python slicing: negative from the end, clamped). */
mj_status mj_slice(mj_tensor **out, const mj_tensor *x, int dim, int64_t start, int64_t end);
/* torch.chunk: pieces of ceil(size/chunks) along dim, *n_out <= chunks of
 * them in out (room for chunks; chunks 1..64). */
mj_status mj_chunk(mj_tensor **out, int *n_out, const mj_tensor *x, int chunks, int dim);
/* torch.split(x, split_size, dim): *n_out pieces (at most max_out, 64). */
mj_status mj_split(mj_tensor **out, int max_out, int *n_out, const mj_tensor *x, int64_t split_size,
                   int dim);
/* torch.split(x, [sizes], dim): n pieces (1..64) whose sizes add up to the dim. */
mj_status mj_split_sizes(mj_tensor **out, const mj_tensor *x, int n, const int64_t *sizes, int dim);
/* torch.cat(xs, dim): 1..8 tensors equal outside dim. */
mj_status mj_cat(mj_tensor **out, int n, const mj_tensor *const *xs, int dim);

#ifdef __cplusplus
}
#endif
#endif
