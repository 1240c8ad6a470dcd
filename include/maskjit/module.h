/* maskjit/module.h — modules, parametrizations, named tensors, state dicts.
 *
 * Modules follow torch.nn: a module has ordered named parameters, buffers and
 * children; hierarchical names join with '.' ("seq.0.weight"). Linear,
 * Sequential and the activations are built in; a user module is a forward
 * function plus children and user data.
 *
 * Parametrizations follow torch.nn.utils.parametrize: registering one on
 * "weight" moves the tensor to "parametrizations.weight.original", and reading
 * "weight" (mj_module_get) applies the chain in registration order.
 */
#ifndef MASKJIT_MODULE_H
#define MASKJIT_MODULE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "maskjit/status.h"
#include "maskjit/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- ordered name -> tensor map (+ string metadata) ---------------------
 * Used for named_parameters, state dicts and safetensors files. It holds a
 * reference to each tensor. */
typedef struct mj_tensor_dict mj_tensor_dict;

mj_status mj_tensor_dict_new(mj_tensor_dict **out);
void mj_tensor_dict_free(mj_tensor_dict *d);
/* Inserts or replaces; retains t. */
mj_status mj_tensor_dict_set(mj_tensor_dict *d, const char *key, mj_tensor *t);
mj_tensor *mj_tensor_dict_get(const mj_tensor_dict *d, const char *key); /* borrowed, NULL if absent */
mj_status mj_tensor_dict_remove(mj_tensor_dict *d, const char *key);
int mj_tensor_dict_size(const mj_tensor_dict *d);
const char *mj_tensor_dict_key(const mj_tensor_dict *d, int i);
mj_tensor *mj_tensor_dict_value(const mj_tensor_dict *d, int i);
/* safetensors "__metadata__" (string -> string) */
mj_status mj_tensor_dict_set_meta(mj_tensor_dict *d, const char *key, const char *value);
const char *mj_tensor_dict_get_meta(const mj_tensor_dict *d, const char *key);
int mj_tensor_dict_meta_size(const mj_tensor_dict *d);
const char *mj_tensor_dict_meta_key(const mj_tensor_dict *d, int i);
const char *mj_tensor_dict_meta_value(const mj_tensor_dict *d, int i);

/* ---- modules ------------------------------------------------------------ */
typedef struct mj_module mj_module;
/* A forward writes its result to *y as a new reference (the caller releases
 * it). Returning the input itself is allowed either way: `*y =
 * mj_tensor_retain((mj_tensor *)x)`, or PyTorch's `return X` habit `*y =
 * (mj_tensor *)x`, which takes no reference: the library notices that *y is
 * x and that x's reference count did not move during the call, and takes the
 * reference itself (so the caller's release does not free x). The count is
 * read around the call, so a forward that returns x without retaining it
 * must not run while another thread retains or releases that same x.
 *
 * Inside mj_trace_module (see maskjit/graph.h) a forward must compute with
 * maskjit's tensor ops. Reading the data of a traced tensor (the input, a
 * parameter or buffer, anything computed from them) with mj_tensor_data,
 * mj_tensor_data_mut, the comparisons or mj_tensor_print records a
 * TracerWarning (mj_graph_warning), once per tensor: a branch on it is baked
 * into the trace. Running a compiled graph (mj_compiled_run, _raw) or a graph
 * in the interpreter (mj_graph_run) inside a trace fails with MJ_ERR_STATE:
 * the trace cannot record what they compute, and a constant in its place
 * would be wrong for every other input. */
typedef mj_status (*mj_forward_fn)(mj_module *self, const mj_tensor *x, mj_tensor **y);

/* torch.nn.Linear: weight [out,in] and bias [out] drawn from U(-1/sqrt(in), 1/sqrt(in)),
 * weight first, from rng. */
mj_status mj_linear_new(mj_module **out, int64_t in_features, int64_t out_features,
                        bool bias, mj_rng *rng);
/* torch.nn.Sequential: children named "0", "1", ...; takes ownership of the
 * children on success only. */
mj_status mj_sequential_new(mj_module **out, int n, mj_module *const *children);
/* ReLU, GELU, GELU(approximate='tanh'), Sigmoid, Tanh, SiLU, Identity (MJ_ACT_NONE). */
mj_status mj_activation_module_new(mj_module **out, mj_act act);
/* Whether m is such an activation module, and then its activation in *out
 * (GELU and GELU(approximate='tanh') share a type name, not an mj_act). */
bool mj_activation_module_act(const mj_module *m, mj_act *out);
/* torch.nn modules of transformer blocks (eval mode), PyTorch's names,
 * defaults and state-dict keys:
 *  - LayerNorm(n, eps, elementwise_affine, bias): over the last dim (size
 *    n); with elementwise_affine a "weight" of ones and (bias) a "bias" of
 *    zeros; without it no parameters, whatever bias says (as PyTorch).
 *  - Softmax(dim), LogSoftmax(dim).
 *  - Dropout(p): in eval mode the identity (traces to nothing).
 *  - LeakyReLU(negative_slope), ELU(alpha), Hardtanh(min, max), ReLU6,
 *    Softplus(beta, threshold).
 *  - Flatten(start_dim, end_dim): a reshape; flattening into the batch dim
 *    does not trace (the graph would not generalise). */
mj_status mj_layer_norm_new(mj_module **out, int64_t n, float eps, bool elementwise_affine, bool bias);
mj_status mj_softmax_new(mj_module **out, int dim);
mj_status mj_log_softmax_new(mj_module **out, int dim);
mj_status mj_dropout_new(mj_module **out, float p);
mj_status mj_leaky_relu_new(mj_module **out, float negative_slope);
mj_status mj_elu_new(mj_module **out, float alpha);
mj_status mj_hardtanh_new(mj_module **out, float min_val, float max_val);
mj_status mj_relu6_new(mj_module **out);
mj_status mj_softplus_new(mj_module **out, float beta, float threshold);
mj_status mj_flatten_new(mj_module **out, int start_dim, int end_dim);
/* A user module: forward is called with the module itself; user is freed
 * with free_user (may be NULL) when the module is freed. */
mj_status mj_module_new(mj_module **out, const char *type_name, mj_forward_fn forward,
                        void *user, void (*free_user)(void *));
/* A user module with n_in inputs and n_out outputs (each 1..MJ_MODULE_MAX_IO):
 * forward gets the inputs x[0..n_in) and must set every y[0..n_out) to a new
 * reference when it returns MJ_OK (on error, the ones it set are released). */
#define MJ_MODULE_MAX_IO 64
typedef mj_status (*mj_forward_n_fn)(mj_module *self, int n_in, const mj_tensor *const *x, int n_out,
                                     mj_tensor **y);
mj_status mj_module_new_n(mj_module **out, const char *type_name, int n_in, int n_out,
                          mj_forward_n_fn forward, void *user, void (*free_user)(void *));
/* Takes ownership of child on success. Names must be unique, non-empty, no '.'. */
mj_status mj_module_add_child(mj_module *m, const char *name, mj_module *child);
mj_status mj_module_add_parameter(mj_module *m, const char *name, mj_tensor *t); /* retains */
mj_status mj_module_add_buffer(mj_module *m, const char *name, mj_tensor *t, bool persistent);
void mj_module_free(mj_module *m);

const char *mj_module_type(const mj_module *m); /* "Linear", "Sequential", "ReLU", user's */
void *mj_module_user(const mj_module *m);
mj_module *mj_module_child(const mj_module *m, const char *name); /* NULL if none */
/* Dotted path from m: "seq.0"; "" is m itself. NULL if none. */
mj_module *mj_module_find(const mj_module *m, const char *path);
int mj_module_child_count(const mj_module *m);
mj_module *mj_module_child_at(const mj_module *m, int i, const char **name);
/* Linear's features (0 for other modules). */
int64_t mj_linear_in_features(const mj_module *m);
int64_t mj_linear_out_features(const mj_module *m);

/* One input, one output (a module made by mj_module_new_n works here when
 * it has 1 and 1). */
mj_status mj_module_forward(mj_module *m, const mj_tensor *x, mj_tensor **y);
/* Any module: n_in and n_out must be its counts (1 and 1 for every module
 * but those of mj_module_new_n). y[j] receive new references. */
mj_status mj_module_forward_n(mj_module *m, int n_in, const mj_tensor *const *x, int n_out,
                              mj_tensor **y);
int mj_module_input_count(const mj_module *m);
int mj_module_output_count(const mj_module *m);

/* Value of a parameter or buffer by local name, parametrizations applied:
 * a new reference in *out. For a plain parameter or buffer that is the
 * module's own tensor, not a copy: writing to it changes the model (as in
 * PyTorch); a parametrized one is computed afresh. */
mj_status mj_module_get(mj_module *m, const char *name, mj_tensor **out);
/* Assigns a value: a plain parameter is copied into (shapes must match); a
 * parametrized one goes through every right_inverse in reverse order (error
 * if one is missing). All or nothing. */
mj_status mj_module_set(mj_module *m, const char *name, const mj_tensor *value);

/* Named parameters / buffers of the whole tree, PyTorch's names, in
 * PyTorch's order (a module's own tensors, then children's). Parametrized
 * parameters appear as "<mod>.parametrizations.<name>.original" and
 * parametrization buffers as "<mod>.parametrizations.<name>.<i>.<buf>". */
mj_status mj_module_named_parameters(mj_module *m, mj_tensor_dict **out);
mj_status mj_module_named_buffers(mj_module *m, mj_tensor_dict **out);
/* Visits every module depth-first with its dotted path ("" for m). A
 * non-zero return from visit stops the walk. */
typedef int (*mj_module_visit_fn)(const char *path, mj_module *m, void *ctx);
void mj_module_walk(mj_module *m, mj_module_visit_fn visit, void *ctx);
/* PyTorch-style tree: "ModelUnderTest(\n  (linear): ParametrizedLinear(in_features=16, ...". */
void mj_module_print(FILE *f, const mj_module *m);

/* ---- parametrizations --------------------------------------------------- */
typedef struct mj_parametrization mj_parametrization;
typedef struct mj_parametrization_ops {
    const char *type_name; /* "FakeSparsity", ... */
    /* y = p(x), written with maskjit tensor ops so the tracer records it.
     * *y is a new reference; an identity may return x itself, retained or
     * not (as for mj_forward_fn: `*y = (mj_tensor *)x` does not free the
     * weight when the library releases the result). */
    mj_status (*forward)(mj_parametrization *self, const mj_tensor *x, mj_tensor **y);
    /* Optional: x such that forward(x) == y. NULL: assignment is refused.
     * Same ownership as forward (returning y itself is allowed). */
    mj_status (*right_inverse)(mj_parametrization *self, const mj_tensor *y, mj_tensor **x);
    void (*free_user)(void *user); /* optional */
} mj_parametrization_ops;

/* ops must outlive the parametrization (a static table). */
mj_status mj_parametrization_new(mj_parametrization **out, const mj_parametrization_ops *ops,
                                 void *user);
/* Buffers belong to the parametrization (PyTorch: "<mod>.parametrizations.weight.<i>.<name>").
 * persistent=false keeps it out of state dicts (FakeSparsity's mask). Retains t. */
mj_status mj_parametrization_add_buffer(mj_parametrization *p, const char *name,
                                        mj_tensor *t, bool persistent);
mj_tensor *mj_parametrization_buffer(const mj_parametrization *p, const char *name); /* borrowed */
void *mj_parametrization_user(const mj_parametrization *p);
const char *mj_parametrization_type(const mj_parametrization *p);
/* Frees a parametrization that was never registered. */
void mj_parametrization_free(mj_parametrization *p);

/* torch.ao.pruning FakeSparsity: forward(x) = mask * x (shapes must be equal);
 * buffer "mask", left out of state dicts. Retains mask. No right_inverse. */
mj_status mj_fake_sparsity_new(mj_parametrization **out, mj_tensor *mask);
/* FakeStructuredSparsity: row_mask [out], forward(x) = row_mask.reshape(-1,1) * x. */
mj_status mj_fake_structured_sparsity_new(mj_parametrization **out, mj_tensor *row_mask);

/* register_parametrization(m, name, p): checks that p keeps the shape (the
 * forward is run once on the current value), then takes ownership of p.
 * The first registration computes original = right_inverse(value) when p has one. */
mj_status mj_register_parametrization(mj_module *m, const char *name, mj_parametrization *p);
/* name NULL: any parameter of m. */
bool mj_is_parametrized(const mj_module *m, const char *name);
int mj_parametrization_count(const mj_module *m, const char *name);
mj_parametrization *mj_module_parametrization(const mj_module *m, const char *name, int i);
/* The unparametrized tensor ("parametrizations.<name>.original"); borrowed. */
mj_tensor *mj_module_original(const mj_module *m, const char *name);
/* A graph traced (or model compiled) before the removal keeps reading the
 * tensors it was traced with: trace again after changing the structure. */
mj_status mj_remove_parametrizations(mj_module *m, const char *name, bool leave_parametrized);

/* parametrize.cached(): while active on a tree, each parametrized value is
 * computed once. Tracing a tree that is cached is refused, as in PyTorch. */
mj_status mj_parametrize_cache_begin(mj_module *root);
void mj_parametrize_cache_end(mj_module *root);
bool mj_parametrize_is_cached(const mj_module *m);

/* ---- state dicts -------------------------------------------------------- */
/* Persistent parameters and buffers under PyTorch's keys. include_masks adds
 * the non-persistent parametrization buffers (FakeSparsity masks under
 * "<mod>.parametrizations.weight.0.mask"). A parametrized buffer's
 * "<mod>.parametrizations.<name>.original" is always included, persistent
 * or not: PyTorch registers it with register_buffer (and so does
 * remove_parametrizations when it puts the buffer back). The dict shares
 * the module's tensors (no copy). */
mj_status mj_module_state_dict(mj_module *m, bool include_masks, mj_tensor_dict **out);

typedef struct mj_load_report {
    int n_missing;
    char **missing;     /* keys the model expects that sd lacks     */
    int n_unexpected;
    char **unexpected;  /* keys in sd the model does not have       */
} mj_load_report;
void mj_load_report_free(mj_load_report *r);

/* Copies sd's tensors into the model's (PyTorch's load_state_dict). Masks
 * are expected keys too (loaded when present, "missing" when absent, as in
 * PyTorch). strict: any missing or unexpected key is an error. A shape
 * mismatch is always an error. All or nothing: on error the model is as it
 * was. report (may be NULL) receives the key lists either way. */
mj_status mj_module_load_state_dict(mj_module *m, const mj_tensor_dict *sd, bool strict,
                                    mj_load_report *report);

/* ---- safetensors -------------------------------------------------------- */
/* F32 native; F16, BF16 and F64 converted to F32 on load; other dtypes are
 * an error. A 0-dim tensor (shape []) loads as shape [1]: maskjit tensors
 * have rank 1-4, so it saves back as [1]. Header capped at 100 MB. */
mj_status mj_safetensors_load(const char *path, mj_tensor_dict **out);
mj_status mj_safetensors_parse(const void *bytes, size_t size, mj_tensor_dict **out);
/* Writes F32, keys in dict order, metadata as "__metadata__".
 * A regular file or a new name is written atomically: a temporary file in
 * the same directory, fsync, rename. A symlink is followed (the target is
 * replaced, the link stays). A replaced file keeps its permission bits; a
 * new file gets 0666 & ~umask. A FIFO or character device (/dev/stdout,
 * /dev/null) is written through, never replaced; a FIFO without a reader
 * is an error at once. A directory, socket or block device is refused. */
mj_status mj_safetensors_save(const char *path, const mj_tensor_dict *d);

#ifdef __cplusplus
}
#endif
#endif
