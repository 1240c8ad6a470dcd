/* The tracer: torch.jit.trace for maskjit modules.
 *
 * mj_trace_module installs a tracer, as the observer of the calling thread
 * (src/core/observer.h), and runs the module's forward on the example. Every
 * eager op reports itself to the observer once it has computed its output; the tracer maps
 * tensor uids to graph values:
 *   - the example is the `input` node, its dim 0 the symbolic batch B;
 *   - a parameter or buffer of the module tree becomes a `param` node named
 *     as in PyTorch, created on first use and bound to the live tensor;
 *   - any other tensor the trace did not produce becomes a `const` holding a
 *     copy of its data (what torch.jit.trace does with untraced tensors).
 * Uids are never reused, so a uid of an intermediate freed during forward
 * can never be confused with a later tensor.
 */
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "ir/ir_core.h"
#include "src/core/internal.h"
#include "src/core/observer.h"

/* ---- uid -> int32 map (open addressing, linear probing) ----------------- */
typedef struct uid_map {
    uint64_t *keys;
    int32_t *vals;
    uint8_t *used;
    size_t cap, n;
} uid_map;

static size_t uid_hash(uint64_t k, size_t cap) {
    k ^= k >> 33;
    k *= UINT64_C(0xff51afd7ed558ccd);
    k ^= k >> 33;
    return (size_t)k & (cap - 1);
}

static void uid_map_free(uid_map *m) {
    free(m->keys);
    free(m->vals);
    free(m->used);
    memset(m, 0, sizeof *m);
}

static bool uid_map_get(const uid_map *m, uint64_t k, int32_t *v) {
    if (!m->cap) return false;
    for (size_t i = uid_hash(k, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (!m->used[i]) return false;
        if (m->keys[i] == k) {
            *v = m->vals[i];
            return true;
        }
    }
}

static mj_status uid_map_put(uid_map *m, uint64_t k, int32_t v);

static mj_status uid_map_grow(uid_map *m) {
    uid_map bigger = {0};
    bigger.cap = m->cap ? m->cap * 2 : 64;
    bigger.keys = mj_alloc_array(bigger.cap, sizeof *bigger.keys);
    bigger.vals = mj_alloc_array(bigger.cap, sizeof *bigger.vals);
    bigger.used = mj_alloc_array(bigger.cap, 1);
    if (!bigger.keys || !bigger.vals || !bigger.used) {
        uid_map_free(&bigger);
        return MJ_ERR_NOMEM;
    }
    for (size_t i = 0; i < m->cap; i++)
        if (m->used[i]) (void)uid_map_put(&bigger, m->keys[i], m->vals[i]);
    uid_map_free(m);
    *m = bigger;
    return MJ_OK;
}

/* Inserts or overwrites. */
static mj_status uid_map_put(uid_map *m, uint64_t k, int32_t v) {
    if ((m->n + 1) * 2 > m->cap) MJ_TRY(uid_map_grow(m));
    size_t i = uid_hash(k, m->cap);
    while (m->used[i] && m->keys[i] != k) i = (i + 1) & (m->cap - 1);
    if (!m->used[i]) {
        m->used[i] = 1;
        m->keys[i] = k;
        m->n++;
    }
    m->vals[i] = v;
    return MJ_OK;
}

/* ---- the tracer --------------------------------------------------------- */
struct mj_tracer {
    mj_graph *g;
    int64_t batch;         /* the example's dim 0: becomes B              */
    uid_map values;        /* tensor uid -> graph value                   */
    uid_map params;        /* tensor uid -> index in the dicts below      */
    mj_tensor_dict *named; /* parameters then buffers, PyTorch's names    */
    int32_t n_named_params; /* named[0, n) are parameters, the rest buffers */
    uid_map warned;        /* graph value, or param index | PARAM_KEY: warned */
    int n_consts;
    bool busy;             /* inside the tracer: ignore nested reports   */
    mj_status error;       /* first recording error (sticky)              */
    char error_msg[1024];
    mj_op_observer observer; /* installed while forward runs; ctx = this */
};

static mj_status on_op(void *ctx, mj_op op, int n_in, const mj_tensor *const *in, mj_act act,
                       const mj_attrs *attrs, const mj_shape_attrs *sa, const mj_tensor *out);
static mj_status on_alias(void *ctx, const mj_tensor *in, const mj_tensor *out);
static void on_data_access(void *ctx, const mj_tensor *x, bool write);

/* The tracer recording on this thread: the observer if it is a tracer's. */
static struct mj_tracer *active_tracer(void) {
    const mj_op_observer *o = mj_observer();
    return o && o->op == on_op ? o->ctx : NULL;
}

static mj_status tracer_fail(struct mj_tracer *t, mj_status s) {
    if (t->error == MJ_OK) {
        t->error = s;
        snprintf(t->error_msg, sizeof t->error_msg, "%s", mj_last_error());
    }
    return s;
}

static const char *shape_of(char *buf, size_t size, const mj_tensor *x) {
    return mj_shape_str(buf, size, x->rank, x->shape);
}

/* The graph value of tensor x: mapped, else a param (created now), else a
 * new const holding a copy of x. */
static mj_status tracer_value(struct mj_tracer *t, const mj_tensor *x, int32_t *id) {
    if (uid_map_get(&t->values, x->uid, id)) return MJ_OK;
    mj_type ty = {.rank = x->rank};
    memcpy(ty.dims, x->shape, sizeof(int64_t) * (size_t)x->rank);
    int32_t pi;
    if (uid_map_get(&t->params, x->uid, &pi)) {
        MJ_TRY(mj_graph_add_leaf(t->g, MJ_OP_PARAM, mj_tensor_dict_key(t->named, pi), &ty,
                                 mj_tensor_dict_value(t->named, pi), id));
    } else {
        char name[32];
        snprintf(name, sizeof name, "const.%d", t->n_consts);
        mj_tensor *copy = NULL;
        MJ_TRY(mj_tensor_clone(&copy, x));
        mj_status s = mj_graph_add_leaf(t->g, MJ_OP_CONST, name, &ty, copy, id);
        mj_tensor_release(copy); /* the graph holds its own reference */
        if (s != MJ_OK) return s;
        t->n_consts++;
    }
    return uid_map_put(&t->values, x->uid, *id);
}

/* Where the batch B goes in a reshape's result: the dim (of size batch)
 * whose elements before it are the operand's before its B, as PyTorch
 * keeps the batch in a view that does not merge or split it; -1 if none. */
static int reshape_batch_dim(const mj_type *in, const mj_tensor *out, int64_t batch) {
    int64_t before = 1;
    for (int d = 0; d < in->rank && in->dims[d] != MJ_DIM_BATCH; d++) before *= in->dims[d];
    int64_t acc = 1;
    for (int d = 0; d < out->rank; d++) {
        if (acc == before && out->shape[d] == batch) return d;
        acc *= out->shape[d];
    }
    return -1;
}

/* op == MJ_OP_COUNT: out is an alias or copy of in[0] (on_alias). */
static mj_status record(struct mj_tracer *t, mj_op op, int n_in, const mj_tensor *const *in,
                        mj_act act, const mj_attrs *attrs, const mj_shape_attrs *sa, const mj_tensor *out) {
    MJ_ASSERT((unsigned)op <= MJ_OP_COUNT);
    MJ_ASSERT(n_in >= 1 && n_in <= MJ_MAX_OPERANDS && in && out);
    int32_t ids[MJ_MAX_OPERANDS];
    for (int i = 0; i < n_in; i++) {
        MJ_ASSERT(in[i]);
        MJ_TRY(tracer_value(t, in[i], &ids[i]));
    }
    if (op == MJ_OP_COUNT) /* out is an alias or copy of in[0] */
        return uid_map_put(&t->values, out->uid, ids[0]);

    const char *opname = mj_op_table[op].name;
    char b1[64], b2[64];
    mj_type declared = {.rank = out->rank};
    const mj_type *decl = NULL;
    if (op == MJ_OP_RESHAPE) {
        memcpy(declared.dims, out->shape, sizeof(int64_t) * (size_t)out->rank);
        if (mj_type_has_batch(&t->g->nodes[ids[0]].type)) {
            int bd = reshape_batch_dim(&t->g->nodes[ids[0]].type, out, t->batch);
            if (bd < 0)
                return mj_fail(MJ_ERR_SHAPE,
                               "reshape would not generalise over the batch: %s -> %s merges or "
                               "splits the batch dim (traced batch %lld)",
                               mj_type_str(b1, sizeof b1, &t->g->nodes[ids[0]].type),
                               shape_of(b2, sizeof b2, out), (long long)t->batch);
            declared.dims[bd] = MJ_DIM_BATCH;
        }
        decl = &declared;
    }
    int32_t id;
    mj_status s = mj_graph_add_op_full(t->g, op, n_in, ids, act, attrs, sa, decl, &id);
    if (s == MJ_ERR_SHAPE || s == MJ_ERR_INVALID)
        return mj_fail_prefix(s, "%s: the trace would not generalise over the batch dim B "
                                 "(traced at batch %lld)",
                              opname, (long long)t->batch);
    if (s != MJ_OK) return s;

    /* The inferred type at the traced batch must be what eager computed. */
    int64_t shape[MJ_MAX_RANK];
    const mj_type *ty = &t->g->nodes[id].type;
    mj_type_shape(ty, t->batch, shape);
    if (!mj_shape_equal(ty->rank, shape, out->rank, out->shape))
        return mj_fail(MJ_ERR_SHAPE,
                       "%s: the graph type %s does not match the eager result %s at the traced "
                       "batch %lld: the trace would not generalise over the batch dim",
                       opname, mj_type_str(b1, sizeof b1, ty), shape_of(b2, sizeof b2, out),
                       (long long)t->batch);
    return uid_map_put(&t->values, out->uid, id);
}

static mj_status record_checked(struct mj_tracer *t, mj_op op, int n_in, const mj_tensor *const *in, mj_act act,
                                const mj_attrs *attrs, const mj_shape_attrs *sa, const mj_tensor *out) {
    if (t->busy) return MJ_OK;
    if (t->error != MJ_OK) return mj_fail(t->error, "%s", t->error_msg);
    t->busy = true;
    mj_status s = record(t, op, n_in, in, act, attrs, sa, out);
    t->busy = false;
    if (s != MJ_OK) tracer_fail(t, s);
    return s;
}

static mj_status on_op(void *ctx, mj_op op, int n_in, const mj_tensor *const *in, mj_act act,
                       const mj_attrs *attrs, const mj_shape_attrs *sa, const mj_tensor *out) {
    return record_checked(ctx, op, n_in, in, act, attrs, sa, out);
}

static mj_status on_alias(void *ctx, const mj_tensor *in, const mj_tensor *out) {
    return record_checked(ctx, MJ_OP_COUNT, 1, &in, MJ_ACT_NONE, NULL, NULL, out);
}

/* Keys of t->warned for parameters (by their index in t->named, whether or
 * not forward used them yet); other values are keyed by graph value id. */
#define PARAM_KEY (UINT64_C(1) << 40)

static void on_data_access(void *ctx, const mj_tensor *x, bool write) {
    struct mj_tracer *t = ctx;
    if (t->busy || !x || t->error != MJ_OK) return;
    int32_t id = -1, pi = -1;
    uint64_t key;
    if (uid_map_get(&t->params, x->uid, &pi)) {
        key = PARAM_KEY | (uint64_t)pi;
    } else if (uid_map_get(&t->values, x->uid, &id)) {
        /* a const holds a copy of an untraced tensor: reading it is harmless */
        if (t->g->nodes[id].op == MJ_OP_CONST) return;
        key = (uint64_t)id;
    } else {
        return; /* not traced: a tensor forward made itself */
    }
    int32_t seen;
    if (uid_map_get(&t->warned, key, &seen)) return;
    t->busy = true;
    char what[300];
    if (pi >= 0)
        snprintf(what, sizeof what, "%s '%s'", pi < t->n_named_params ? "parameter" : "buffer",
                 mj_tensor_dict_key(t->named, pi));
    else if (t->g->nodes[id].op == MJ_OP_INPUT)
        snprintf(what, sizeof what, "the input (%%%d)", (int)id);
    else
        snprintf(what, sizeof what, "traced value %%%d", (int)id);
    mj_status s = uid_map_put(&t->warned, key, 1);
    if (s == MJ_OK)
        s = mj_graph_add_warning(t->g, "TracerWarning: %s %s %s: the trace might not generalize to "
                                       "other inputs%s",
                                 write ? "writing to the data of" : "reading the data of", what,
                                 write ? "from C (the trace does not see the write)" : "into C",
                                 pi >= 0 ? " or parameter values" : "");
    t->busy = false;
    if (s != MJ_OK) tracer_fail(t, s);
}

/* ---- mj_trace_module ---------------------------------------------------- */
static int visit_cached(const char *path, mj_module *m, void *ctx) {
    if (!mj_parametrize_is_cached(m)) return 0;
    *(const char **)ctx = path;
    return 1;
}

static void tracer_free(struct mj_tracer *t) {
    uid_map_free(&t->values);
    uid_map_free(&t->params);
    mj_tensor_dict_free(t->named);
    uid_map_free(&t->warned);
}

/* Binds parameters then buffers by uid; the first name of a shared tensor wins. */
static mj_status collect_named(struct mj_tracer *t, mj_module *m) {
    mj_tensor_dict *params = NULL, *buffers = NULL;
    mj_status s = mj_tensor_dict_new(&t->named);
    if (s == MJ_OK) s = mj_module_named_parameters(m, &params);
    if (s == MJ_OK) s = mj_module_named_buffers(m, &buffers);
    mj_tensor_dict *both[2] = {params, buffers};
    for (int d = 0; d < 2 && s == MJ_OK; d++) {
        if (d == 1) t->n_named_params = mj_tensor_dict_size(t->named);
        for (int i = 0; i < mj_tensor_dict_size(both[d]) && s == MJ_OK; i++) {
            mj_tensor *x = mj_tensor_dict_value(both[d], i);
            int32_t dummy;
            if (uid_map_get(&t->params, x->uid, &dummy)) continue;
            const char *key = mj_tensor_dict_key(both[d], i);
            if (mj_tensor_dict_get(t->named, key)) continue; /* a name clash: first wins */
            int32_t idx = mj_tensor_dict_size(t->named);
            s = mj_tensor_dict_set(t->named, key, x);
            if (s == MJ_OK) s = uid_map_put(&t->params, x->uid, idx);
        }
    }
    mj_tensor_dict_free(params);
    mj_tensor_dict_free(buffers);
    return s;
}

static mj_status trace_run(struct mj_tracer *t, mj_module *m, int n_in, const mj_tensor *const *examples,
                           const char *const *names) {
    MJ_TRY(collect_named(t, m));
    MJ_TRY(mj_graph_new(&t->g));
    for (int i = 0; i < n_in; i++) {
        const mj_tensor *ex = examples[i];
        mj_type ty = {.rank = ex->rank};
        memcpy(ty.dims, ex->shape, sizeof(int64_t) * (size_t)ex->rank);
        ty.dims[0] = MJ_DIM_BATCH;
        char name[32];
        if (!names || !names[i]) snprintf(name, sizeof name, n_in == 1 ? "input" : "input.%d", i);
        int32_t in_id, seen;
        if (uid_map_get(&t->values, ex->uid, &seen))
            return mj_fail(MJ_ERR_INVALID, "tracing: inputs %d and %d are the same tensor; pass distinct tensors",
                           (int)seen, i);
        MJ_TRY(mj_graph_add_leaf(t->g, MJ_OP_INPUT, names && names[i] ? names[i] : name, &ty, NULL, &in_id));
        MJ_TRY(uid_map_put(&t->values, ex->uid, in_id));
    }

    int n_out = mj_module_output_count(m);
    mj_tensor *y[MJ_MODULE_MAX_IO] = {0};
    t->observer = (mj_op_observer){.ctx = t, .op = on_op, .alias = on_alias, .data_access = on_data_access};
    const mj_op_observer *prev = mj_observer_install(&t->observer);
    mj_status s = mj_module_forward_n(m, n_in, examples, n_out, y);
    mj_observer_install(prev);
    if (s == MJ_OK && t->error != MJ_OK) /* an op swallowed a recording error */
        s = mj_fail(t->error, "%s", t->error_msg);
    t->busy = true;
    for (int j = 0; j < n_out && s == MJ_OK; j++) {
        int32_t out_id = -1;
        if (!y[j]) s = mj_fail(MJ_ERR_STATE, "forward returned no tensor for output %d", j);
        if (s == MJ_OK) s = tracer_value(t, y[j], &out_id);
        if (s == MJ_OK) s = mj_graph_add_output(t->g, out_id);
    }
    for (int j = 0; j < n_out; j++) mj_tensor_release(y[j]);
    return s;
}

mj_status mj_trace_module_n(mj_module *m, int n_in, const mj_tensor *const *examples, const char *const *names,
                            mj_graph **out) {
    if (!m || !examples || !out || n_in < 1)
        return mj_fail(MJ_ERR_INVALID, "tracing: module, examples and out must not be NULL (and n_in >= 1)");
    if (active_tracer())
        return mj_fail(MJ_ERR_STATE,
                       "tracing: a trace is already recording on this thread (nested tracing)");
    if (n_in != mj_module_input_count(m))
        return mj_fail(MJ_ERR_INVALID, "tracing: module %s takes %d inputs, got %d examples", mj_module_type(m),
                       mj_module_input_count(m), n_in);
    char b[64];
    for (int i = 0; i < n_in; i++) {
        const mj_tensor *ex = examples[i];
        char what[32];
        snprintf(what, sizeof what, n_in == 1 ? "the example input" : "example input %d", i);
        if (!ex) return mj_fail(MJ_ERR_INVALID, "tracing: %s is NULL", what);
        if (ex->shape[0] < 1)
            return mj_fail(MJ_ERR_SHAPE, "tracing: %s has batch 0; it needs >= 1", what);
        if (ex->shape[0] != examples[0]->shape[0])
            return mj_fail(MJ_ERR_SHAPE,
                           "tracing: example input %d has shape %s but input 0 has batch %lld (dim 0 is the "
                           "batch B, shared by every input)",
                           i, shape_of(b, sizeof b, ex), (long long)examples[0]->shape[0]);
        if (names && names[i] && !mj_ir_name_ok(names[i]))
            return mj_fail(MJ_ERR_INVALID, "tracing: input name %d must be 1..%d printable ASCII characters", i,
                           MJ_IR_MAX_NAME);
        for (int k = 0; names && names[i] && k < i; k++)
            if (names[k] && strcmp(names[k], names[i]) == 0)
                return mj_fail(MJ_ERR_KEY, "tracing: inputs %d and %d are both named \"%s\"", k, i, names[i]);
    }
    const char *cached_path = NULL;
    mj_module_walk(m, visit_cached, &cached_path);
    if (cached_path)
        return mj_fail(MJ_ERR_STATE,
                       "tracing: cannot trace while parametrizations are cached (as in "
                       "PyTorch): %s%s%s is inside mj_parametrize_cache_begin/end",
                       cached_path[0] ? "module '" : "the root module", cached_path,
                       cached_path[0] ? "'" : "");

    struct mj_tracer t = {.batch = examples[0]->shape[0]};
    mj_status s = trace_run(&t, m, n_in, examples, names);
    if (s != MJ_OK) {
        mj_graph_free(t.g);
        tracer_free(&t);
        if (strncmp(mj_last_error(), "tracing", 7) == 0) return s;
        return mj_fail_prefix(s, "tracing");
    }
    tracer_free(&t);
    *out = t.g;
    return MJ_OK;
}

mj_status mj_trace_module(mj_module *m, const mj_tensor *example, mj_graph **out) {
    if (!m || !example || !out)
        return mj_fail(MJ_ERR_INVALID, "tracing: module, example and out must not be NULL");
    return mj_trace_module_n(m, 1, &example, NULL, out);
}

/* ---- check_inputs ------------------------------------------------------- */
/* Stores the result of input (set) i; *bad keeps the first that is not
 * bit-identical. */
static void check_record(mj_check_result *results, int i, mj_check_result r, int *bad,
                         mj_check_result *bad_r) {
    if (results) results[i] = r;
    if (!r.bit_identical && *bad < 0) {
        *bad = i;
        *bad_r = r;
    }
}

/* MJ_ERR_MISMATCH naming the first failing input (what: "input" or "input
 * set"), else MJ_OK. */
static mj_status check_verdict(const char *what, int bad, mj_check_result r) {
    if (bad < 0) return MJ_OK;
    return mj_fail(MJ_ERR_MISMATCH,
                   "check: %s %d: the traced graph is not bit-identical to eager "
                   "(max abs error %g, max rel error %g)",
                   what, bad, r.max_abs, r.max_rel);
}

mj_status mj_graph_check(mj_graph *g, mj_module *m, int n_inputs,
                         const mj_tensor *const *inputs, mj_check_result *results) {
    if (!g || !m || n_inputs < 0 || (n_inputs > 0 && !inputs))
        return mj_fail(MJ_ERR_INVALID, "check: graph, module and inputs must not be NULL");
    if (active_tracer())
        return mj_fail(MJ_ERR_STATE, "check: cannot check while a trace is recording");
    for (int i = 0; i < n_inputs; i++)
        if (!inputs[i]) return mj_fail(MJ_ERR_INVALID, "check: input %d is NULL", i);

    int bad = -1;
    mj_check_result bad_r = {0};
    for (int i = 0; i < n_inputs; i++) {
        mj_tensor *eager = NULL, *traced = NULL;
        mj_status s = mj_module_forward(m, inputs[i], &eager);
        if (s != MJ_OK) return mj_fail_prefix(s, "check: input %d: eager forward", i);
        s = mj_graph_run(g, inputs[i], &traced);
        if (s != MJ_OK) {
            mj_tensor_release(eager);
            return mj_fail_prefix(s, "check: input %d: traced graph", i);
        }
        mj_compare c = mj_tensor_compare(traced, eager, MJ_RTOL_F32, MJ_ATOL_F32);
        mj_check_result r = {.max_abs = c.max_abs, .max_rel = c.max_rel,
                             .bit_identical = c.bit_identical};
        if (!c.same_shape) r.max_abs = r.max_rel = INFINITY;
        check_record(results, i, r, &bad, &bad_r);
        mj_tensor_release(eager);
        mj_tensor_release(traced);
    }
    return check_verdict("input", bad, bad_r);
}

/* check_inputs for several inputs and outputs: set s is inputs[s*n_in ..
 * s*n_in + n_in); its result is the worst over the outputs. */
mj_status mj_graph_check_n(mj_graph *g, mj_module *m, int n_sets, int n_in, const mj_tensor *const *inputs,
                           mj_check_result *results) {
    if (!g || !m || n_sets < 0 || n_in < 1 || (n_sets > 0 && !inputs))
        return mj_fail(MJ_ERR_INVALID, "check: graph, module and inputs must not be NULL");
    if (active_tracer()) return mj_fail(MJ_ERR_STATE, "check: cannot check while a trace is recording");
    int n_out = mj_graph_output_count(g);
    if (n_in != mj_graph_input_count(g) || n_in != mj_module_input_count(m) || n_out != mj_module_output_count(m))
        return mj_fail(MJ_ERR_INVALID,
                       "check: the graph takes %d inputs and gives %d outputs, the module %d and %d, called with %d "
                       "inputs per set",
                       mj_graph_input_count(g), n_out, mj_module_input_count(m), mj_module_output_count(m), n_in);
    int bad = -1;
    mj_check_result bad_r = {0};
    for (int s = 0; s < n_sets; s++) {
        const mj_tensor *const *x = inputs + (size_t)s * (size_t)n_in;
        mj_tensor *eager[MJ_MODULE_MAX_IO] = {0}, *traced[MJ_MODULE_MAX_IO] = {0};
        mj_status st = mj_module_forward_n(m, n_in, x, n_out, eager);
        if (st != MJ_OK) return mj_fail_prefix(st, "check: input set %d: eager forward", s);
        st = mj_graph_run_n(g, n_in, x, n_out, traced);
        if (st != MJ_OK) {
            for (int j = 0; j < n_out; j++) mj_tensor_release(eager[j]);
            return mj_fail_prefix(st, "check: input set %d: traced graph", s);
        }
        mj_check_result r = {.bit_identical = true};
        for (int j = 0; j < n_out; j++) {
            mj_compare c = mj_tensor_compare(traced[j], eager[j], MJ_RTOL_F32, MJ_ATOL_F32);
            if (!c.same_shape) c.max_abs = c.max_rel = INFINITY;
            r.max_abs = fmax(r.max_abs, c.max_abs);
            r.max_rel = fmax(r.max_rel, c.max_rel);
            r.bit_identical = r.bit_identical && c.bit_identical;
            mj_tensor_release(eager[j]);
            mj_tensor_release(traced[j]);
        }
        check_record(results, s, r, &bad, &bad_r);
    }
    return check_verdict("input set", bad, bad_r);
}
