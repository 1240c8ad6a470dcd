/* Private layout of modules and parametrizations, shared by module.c,
 * builtin_modules.c, parametrize.c, state_dict.c and models.c. */
#ifndef MJ_MODULE_IMPL_H
#define MJ_MODULE_IMPL_H

#include "src/core/internal.h"

typedef struct mj_named_tensor {
    char *name;
    mj_tensor *t; /* one reference */
    bool persistent;
} mj_named_tensor;

typedef struct mj_named_child {
    char *name;
    mj_module *m; /* owned */
} mj_named_child;

struct mj_parametrization {
    const mj_parametrization_ops *ops;
    void *user;
    mj_named_tensor *bufs;
    int32_t n_bufs, cap_bufs;
    bool registered; /* owned by a module: mj_parametrization_free ignores it */
};

/* One "parametrizations.<name>" entry (PyTorch's ParametrizationList). */
typedef struct mj_param_entry {
    char *name;
    mj_tensor *original; /* the tensor object that was registered (identity kept) */
    bool is_buffer;      /* the parametrized tensor was a buffer, not a parameter */
    bool persistent;     /* for buffers: as before registration (for an exact rollback);
                          * `original` itself is always persistent, as in PyTorch */
    int32_t orig_pos;    /* index it had in params/buffers (exact rollback) */
    mj_parametrization **chain;
    int32_t n_chain, cap_chain;
    mj_tensor *cached; /* value while cached mode is on, else NULL */
} mj_param_entry;

typedef enum mj_module_kind {
    MJ_KIND_USER = 0,
    MJ_KIND_LINEAR,
    MJ_KIND_SEQUENTIAL,
    MJ_KIND_ACTIVATION,
    MJ_KIND_MATH, /* LayerNorm, Softmax, Dropout, LeakyReLU, ...: fp/ip, extra_repr */
} mj_module_kind;

struct mj_module {
    char *type_name;
    mj_module_kind kind;
    mj_forward_fn forward;
    void *user;
    void (*free_user)(void *);
    mj_module *parent; /* set while owned by another module */

    mj_named_tensor *params;
    int32_t n_params, cap_params;
    mj_named_tensor *buffers;
    int32_t n_buffers, cap_buffers;
    mj_named_child *children;
    int32_t n_children, cap_children;

    mj_param_entry *entries; /* registration order of the names */
    int32_t n_entries, cap_entries;
    /* PyTorch adds the "parametrizations" ModuleDict as a child at the first
     * registration, so it sits after the children that existed then. */
    int32_t entries_pos;

    int32_t cache_depth; /* > 0: parametrize.cached() active on this module */

    /* built-in modules */
    int64_t in_features, out_features;
    mj_act act;
    float fp[2];          /* MJ_KIND_MATH: eps, slope, alpha, min/max, beta/threshold, p */
    int ip[2];            /* MJ_KIND_MATH: dim, start_dim/end_dim                        */
    char extra_repr[160]; /* what PyTorch's extra_repr prints (MJ_KIND_MATH, CNN layers) */

    /* user modules with several inputs/outputs (mj_module_new_n); forward
     * is NULL for them */
    mj_forward_n_fn forward_n;
    int n_in, n_out;
};

/* A new tensor of U(-bound, bound) draws in order (torch's init of Linear
 * and Conv2d weights and biases). */
mj_status mj_fill_uniform(int rank, const int64_t *shape, float bound, mj_rng *rng, mj_tensor **out);
/* torch's reset_parameters of Linear and Conv2d: adds "weight" (wshape) and,
 * with bias, "bias" ([wshape[0]]), both U(-bound, bound), drawn in that order. */
mj_status mj_module_add_uniform(mj_module *m, int wrank, const int64_t *wshape, bool bias, float bound,
                                mj_rng *rng);
/* The end of a built-in module's constructor: on MJ_OK hands m to *out,
 * else frees m (NULL allowed) and returns s. */
mj_status mj_module_finish(mj_module *m, mj_status s, mj_module **out);

/* Allocates an empty module (no validation of the name). */
mj_status mj_module_alloc(mj_module **out, const char *type_name, mj_module_kind kind,
                          mj_forward_fn forward);

mj_param_entry *mj_module_entry(const mj_module *m, const char *name);
mj_named_tensor *mj_module_find_param(const mj_module *m, const char *name, int32_t *index);
mj_named_tensor *mj_module_find_buffer(const mj_module *m, const char *name, int32_t *index);

/* Applies the chain of e to its original (no caching): a new reference. */
mj_status mj_param_entry_compute(mj_param_entry *e, mj_tensor **out);
void mj_param_entry_drop_cache(mj_param_entry *e);
void mj_param_entry_clear(mj_param_entry *e); /* frees the chain and name, releases tensors */
/* Drops every cached parametrized value in the tree (after a load). */
void mj_module_drop_caches(mj_module *m);

/* Undo the last mj_register_parametrization on (m, name) exactly, restoring
 * the tensor's position (used to roll back a failing batch). */
void mj_parametrization_pop_last(mj_module *m, const char *name);

/* Tree traversal collecting named tensors with PyTorch's names and order. */
typedef enum mj_collect_what {
    MJ_COLLECT_PARAMS,  /* named_parameters */
    MJ_COLLECT_BUFFERS, /* named_buffers (persistent or not) */
    MJ_COLLECT_STATE,   /* state_dict: params, then persistent buffers, per module */
} mj_collect_what;
mj_status mj_module_collect(mj_module *m, mj_collect_what what, bool include_masks,
                            mj_tensor_dict *d);
/* The same into a new dict (*out); fn names the public call in errors. */
mj_status mj_module_collect_new(const char *fn, mj_module *m, mj_collect_what what, bool include_masks,
                                mj_tensor_dict **out);

/* A valid local name: non-empty, no '.'. what = "child", "parameter", ... */
mj_status mj_check_local_name(const char *name, const char *what);

/* "1e-05" / "0.01" as Python prints these floats (shortest round trip). */
void mj_py_float(char *buf, size_t size, float v);

#endif
