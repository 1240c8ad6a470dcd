/* torch.nn.utils.parametrize for maskjit modules, plus torch.ao.pruning's
 * FakeSparsity and FakeStructuredSparsity.
 *
 * A parametrized tensor keeps its original tensor object (traces and
 * compiled code bind to tensor objects); reading it applies the chain with
 * tensor ops, so the tracer records the masking like any other op. */
#include <string.h>

#include "module_impl.h"

/* ---- parametrization objects --------------------------------------------- */

mj_status mj_parametrization_new(mj_parametrization **out, const mj_parametrization_ops *ops,
                                 void *user) {
    if (!out || !ops)
        return mj_fail(MJ_ERR_INVALID, "mj_parametrization_new: %s is NULL", !out ? "out" : "ops");
    if (!ops->type_name || !ops->type_name[0] || !ops->forward)
        return mj_fail(MJ_ERR_INVALID,
                       "mj_parametrization_new: ops needs a type_name and a forward function");
    mj_parametrization *p = mj_alloc(sizeof *p);
    if (!p) return MJ_ERR_NOMEM;
    p->ops = ops;
    p->user = user;
    *out = p;
    return MJ_OK;
}

void mj_parametrization_free(mj_parametrization *p) {
    /* A registered parametrization belongs to its module. */
    if (!p || p->registered) return;
    for (int32_t i = 0; i < p->n_bufs; i++) {
        free(p->bufs[i].name);
        mj_tensor_release(p->bufs[i].t);
    }
    free(p->bufs);
    if (p->ops->free_user) p->ops->free_user(p->user);
    free(p);
}

mj_status mj_parametrization_add_buffer(mj_parametrization *p, const char *name, mj_tensor *t,
                                        bool persistent) {
    if (!p || !t)
        return mj_fail(MJ_ERR_INVALID, "mj_parametrization_add_buffer: %s is NULL",
                       !p ? "parametrization" : "tensor");
    MJ_TRY(mj_check_local_name(name, "buffer"));
    if (mj_parametrization_buffer(p, name))
        return mj_fail(MJ_ERR_KEY, "%s already has a buffer '%s'", p->ops->type_name, name);
    MJ_TRY(mj_grow((void **)&p->bufs, &p->cap_bufs, p->n_bufs + 1, sizeof *p->bufs));
    char *n = mj_strdup(name);
    if (!n) return MJ_ERR_NOMEM;
    p->bufs[p->n_bufs++] =
        (mj_named_tensor){.name = n, .t = mj_tensor_retain(t), .persistent = persistent};
    return MJ_OK;
}

mj_tensor *mj_parametrization_buffer(const mj_parametrization *p, const char *name) {
    if (!p || !name) return NULL;
    for (int32_t i = 0; i < p->n_bufs; i++)
        if (strcmp(p->bufs[i].name, name) == 0) return p->bufs[i].t;
    return NULL;
}

void *mj_parametrization_user(const mj_parametrization *p) { return p ? p->user : NULL; }
const char *mj_parametrization_type(const mj_parametrization *p) {
    return p ? p->ops->type_name : NULL;
}

int mj_parametrization_buffer_count(const mj_parametrization *p) { return p ? p->n_bufs : 0; }
const char *mj_parametrization_buffer_name(const mj_parametrization *p, int i) {
    return p && i >= 0 && i < p->n_bufs ? p->bufs[i].name : NULL;
}
mj_tensor *mj_parametrization_buffer_at(const mj_parametrization *p, int i) {
    return p && i >= 0 && i < p->n_bufs ? p->bufs[i].t : NULL;
}
bool mj_parametrization_buffer_persistent(const mj_parametrization *p, int i) {
    return p && i >= 0 && i < p->n_bufs && p->bufs[i].persistent;
}

/* ---- FakeSparsity / FakeStructuredSparsity ------------------------------- */

static mj_status fake_sparsity_forward(mj_parametrization *self, const mj_tensor *x,
                                       mj_tensor **y) {
    const mj_tensor *mask = mj_parametrization_buffer(self, "mask");
    MJ_ASSERT(mask);
    if (!mj_shape_equal(mj_tensor_rank(mask), mj_tensor_shape(mask), mj_tensor_rank(x),
                        mj_tensor_shape(x))) {
        char ms[96], xs[96];
        return mj_fail(MJ_ERR_SHAPE, "FakeSparsity: mask has shape %s but the tensor has shape %s",
                       mj_shape_str(ms, sizeof ms, mj_tensor_rank(mask), mj_tensor_shape(mask)),
                       mj_shape_str(xs, sizeof xs, mj_tensor_rank(x), mj_tensor_shape(x)));
    }
    return mj_mul(y, mask, x);
}

static const mj_parametrization_ops fake_sparsity_ops = {
    .type_name = "FakeSparsity",
    .forward = fake_sparsity_forward,
};

static mj_status fake_structured_forward(mj_parametrization *self, const mj_tensor *x,
                                         mj_tensor **y) {
    const mj_tensor *mask = mj_parametrization_buffer(self, "mask");
    MJ_ASSERT(mask);
    if (mj_tensor_rank(x) != 2 || mj_tensor_dim(x, 0) != mj_tensor_numel(mask)) {
        char ms[96], xs[96];
        return mj_fail(MJ_ERR_SHAPE,
                       "FakeStructuredSparsity: row mask has shape %s but the tensor has shape %s "
                       "(needs a 2-D tensor with %lld rows)",
                       mj_shape_str(ms, sizeof ms, mj_tensor_rank(mask), mj_tensor_shape(mask)),
                       mj_shape_str(xs, sizeof xs, mj_tensor_rank(x), mj_tensor_shape(x)),
                       (long long)mj_tensor_numel(mask));
    }
    const int64_t col[2] = {-1, 1};
    mj_tensor *m2;
    MJ_TRY(mj_reshape(&m2, mask, 2, col));
    mj_status s = mj_mul(y, m2, x);
    mj_tensor_release(m2);
    return s;
}

static const mj_parametrization_ops fake_structured_ops = {
    .type_name = "FakeStructuredSparsity",
    .forward = fake_structured_forward,
};

static mj_status new_with_mask(mj_parametrization **out, const mj_parametrization_ops *ops,
                               mj_tensor *mask) {
    mj_parametrization *p;
    MJ_TRY(mj_parametrization_new(&p, ops, NULL));
    /* Non-persistent: torch.ao.pruning keeps masks out of the model's state
     * dict (the sparsifier owns them). */
    mj_status s = mj_parametrization_add_buffer(p, "mask", mask, false);
    if (s != MJ_OK) {
        mj_parametrization_free(p);
        return s;
    }
    *out = p;
    return MJ_OK;
}

mj_status mj_fake_sparsity_new(mj_parametrization **out, mj_tensor *mask) {
    if (!out || !mask)
        return mj_fail(MJ_ERR_INVALID, "mj_fake_sparsity_new: %s is NULL", !out ? "out" : "mask");
    return new_with_mask(out, &fake_sparsity_ops, mask);
}

mj_status mj_fake_structured_sparsity_new(mj_parametrization **out, mj_tensor *row_mask) {
    if (!out || !row_mask)
        return mj_fail(MJ_ERR_INVALID, "mj_fake_structured_sparsity_new: %s is NULL",
                       !out ? "out" : "row_mask");
    if (mj_tensor_rank(row_mask) != 1) {
        char ms[96];
        return mj_fail(MJ_ERR_SHAPE, "FakeStructuredSparsity: row mask must be 1-D, got shape %s",
                       mj_shape_str(ms, sizeof ms, mj_tensor_rank(row_mask),
                                    mj_tensor_shape(row_mask)));
    }
    return new_with_mask(out, &fake_structured_ops, row_mask);
}

/* ---- applying a chain ---------------------------------------------------- */

static bool same_shape(const mj_tensor *a, const mj_tensor *b) {
    return mj_shape_equal(mj_tensor_rank(a), mj_tensor_shape(a), mj_tensor_rank(b),
                          mj_tensor_shape(b));
}

/* At registering pt on m.name: MJ_ERR_SHAPE unless got keeps value's shape
 * (what: the step that made got). */
static mj_status check_kept_shape(const mj_tensor *got, const mj_tensor *value, const char *pt,
                                  const mj_module *m, const char *name, const char *what) {
    if (same_shape(got, value)) return MJ_OK;
    char vs[96], gs[96];
    return mj_fail(MJ_ERR_SHAPE, "registering %s on %s.%s: %s changes the shape from %s to %s", pt,
                   m->type_name, name, what,
                   mj_shape_str(vs, sizeof vs, mj_tensor_rank(value), mj_tensor_shape(value)),
                   mj_shape_str(gs, sizeof gs, mj_tensor_rank(got), mj_tensor_shape(got)));
}

/* p(x), or with inverse p's right_inverse(x), with the result's presence
 * checked; a new reference in *y. */
static mj_status run_param(mj_parametrization *p, bool inverse, const mj_tensor *x, mj_tensor **y) {
    mj_tensor *r = NULL;
    int refs = mj_tensor_refs(x);
    MJ_TRY((inverse ? p->ops->right_inverse : p->ops->forward)(p, x, &r));
    r = mj_own_result(x, refs, r);
    if (!r)
        return mj_fail(MJ_ERR_INVALID, "%sparametrization %s returned MJ_OK but no tensor",
                       inverse ? "right_inverse of " : "", p->ops->type_name);
    *y = r;
    return MJ_OK;
}

static mj_status run_forward(mj_parametrization *p, const mj_tensor *x, mj_tensor **y) {
    return run_param(p, false, x, y);
}

static mj_status run_inverse(mj_parametrization *p, const mj_tensor *y, mj_tensor **x) {
    return run_param(p, true, y, x);
}

mj_status mj_param_entry_compute(mj_param_entry *e, mj_tensor **out) {
    mj_tensor *cur = mj_tensor_retain(e->original);
    for (int32_t i = 0; i < e->n_chain; i++) {
        mj_tensor *next = NULL;
        mj_status s = run_forward(e->chain[i], cur, &next);
        mj_tensor_release(cur);
        if (s != MJ_OK)
            return mj_fail_prefix(s, "parametrization %d (%s) of '%s'", (int)i,
                                  e->chain[i]->ops->type_name, e->name);
        cur = next;
    }
    *out = cur;
    return MJ_OK;
}

static mj_status no_such_tensor(const mj_module *m, const char *name) {
    return mj_fail(MJ_ERR_KEY,
                   "module %s has no parameter, buffer or parametrized tensor named '%s'",
                   m->type_name, name);
}

mj_status mj_module_get(mj_module *m, const char *name, mj_tensor **out) {
    if (!m || !name || !out)
        return mj_fail(MJ_ERR_INVALID, "mj_module_get: %s is NULL",
                       !m ? "module" : !name ? "name" : "out");
    mj_param_entry *e = mj_module_entry(m, name);
    if (e) {
        if (m->cache_depth > 0 && e->cached) {
            *out = mj_tensor_retain(e->cached);
            return MJ_OK;
        }
        mj_tensor *v;
        MJ_TRY(mj_param_entry_compute(e, &v));
        if (m->cache_depth > 0) e->cached = mj_tensor_retain(v);
        *out = v;
        return MJ_OK;
    }
    mj_named_tensor *nt = mj_module_find_param(m, name, NULL);
    if (!nt) nt = mj_module_find_buffer(m, name, NULL);
    if (!nt) return no_such_tensor(m, name);
    *out = mj_tensor_retain(nt->t);
    return MJ_OK;
}

static mj_status copy_checked(const mj_module *m, const char *name, mj_tensor *dst,
                              const mj_tensor *src) {
    if (!same_shape(dst, src)) {
        char ds[96], ss[96];
        return mj_fail(MJ_ERR_SHAPE, "%s.%s has shape %s but the value has shape %s",
                       m->type_name, name,
                       mj_shape_str(ds, sizeof ds, mj_tensor_rank(dst), mj_tensor_shape(dst)),
                       mj_shape_str(ss, sizeof ss, mj_tensor_rank(src), mj_tensor_shape(src)));
    }
    if (dst == src) return MJ_OK;
    return mj_tensor_copy(dst, src);
}

mj_status mj_module_set(mj_module *m, const char *name, const mj_tensor *value) {
    if (!m || !name || !value)
        return mj_fail(MJ_ERR_INVALID, "mj_module_set: %s is NULL",
                       !m ? "module" : !name ? "name" : "value");
    mj_param_entry *e = mj_module_entry(m, name);
    if (!e) {
        mj_named_tensor *nt = mj_module_find_param(m, name, NULL);
        if (!nt) nt = mj_module_find_buffer(m, name, NULL);
        if (!nt) return no_such_tensor(m, name);
        return copy_checked(m, name, nt->t, value);
    }
    /* Check the whole chain first so a refusal changes nothing. */
    for (int32_t i = e->n_chain - 1; i >= 0; i--)
        if (!e->chain[i]->ops->right_inverse)
            return mj_fail(MJ_ERR_UNSUPPORTED,
                           "cannot assign %s.%s: parametrization %d (%s) does not implement "
                           "right_inverse",
                           m->type_name, name, (int)i, e->chain[i]->ops->type_name);
    mj_tensor *cur = mj_tensor_retain((mj_tensor *)value);
    for (int32_t i = e->n_chain - 1; i >= 0; i--) {
        mj_tensor *prev = NULL;
        mj_status s = run_inverse(e->chain[i], cur, &prev);
        mj_tensor_release(cur);
        if (s != MJ_OK)
            return mj_fail_prefix(s, "assigning %s.%s: right_inverse of %s", m->type_name, name,
                                  e->chain[i]->ops->type_name);
        cur = prev;
    }
    mj_status s = copy_checked(m, name, e->original, cur);
    mj_tensor_release(cur);
    if (s == MJ_OK) mj_param_entry_drop_cache(e);
    return s;
}

/* ---- registration -------------------------------------------------------- */

mj_status mj_register_parametrization(mj_module *m, const char *name, mj_parametrization *p) {
    if (!m || !name || !p)
        return mj_fail(MJ_ERR_INVALID, "mj_register_parametrization: %s is NULL",
                       !m ? "module" : !name ? "name" : "parametrization");
    if (p->registered)
        return mj_fail(MJ_ERR_STATE, "parametrization %s is already registered on a module",
                       p->ops->type_name);
    const char *pt = p->ops->type_name;
    mj_param_entry *e = mj_module_entry(m, name);
    int32_t pidx = -1, bidx = -1;
    mj_named_tensor *nt = NULL;
    if (!e) {
        nt = mj_module_find_param(m, name, &pidx);
        if (!nt) nt = mj_module_find_buffer(m, name, &bidx);
        if (!nt)
            return mj_fail(MJ_ERR_KEY,
                           "cannot register %s: module %s has no parameter or buffer named '%s'",
                           pt, m->type_name, name);
    }

    /* Non-unsafe checks (parametrize.register_parametrization): run the
     * parametrization on the current value; it must keep the shape. */
    mj_tensor *value = NULL, *orig_new = NULL, *y = NULL;
    mj_status s = MJ_OK;
    if (e)
        s = mj_param_entry_compute(e, &value);
    else
        value = mj_tensor_retain(nt->t);
    if (s == MJ_OK && !e && p->ops->right_inverse) {
        /* First registration: original = right_inverse(value). */
        s = run_inverse(p, value, &orig_new);
        if (s == MJ_OK) s = check_kept_shape(orig_new, value, pt, m, name, "right_inverse");
    }
    if (s == MJ_OK) {
        s = run_forward(p, orig_new ? orig_new : value, &y);
        if (s != MJ_OK)
            s = mj_fail_prefix(s, "registering %s on %s.%s", pt, m->type_name, name);
        else
            s = check_kept_shape(y, value, pt, m, name, "the parametrization");
    }
    if (s == MJ_OK && e && p->ops->right_inverse) {
        /* Appending: right_inverse must map back into the same space. */
        mj_tensor *z = NULL;
        s = run_inverse(p, y, &z);
        if (s == MJ_OK) s = check_kept_shape(z, value, pt, m, name, "right_inverse");
        mj_tensor_release(z);
    }
    mj_tensor_release(y);

    /* Allocate everything before changing the module. */
    if (s == MJ_OK) {
        if (e)
            s = mj_grow((void **)&e->chain, &e->cap_chain, e->n_chain + 1, sizeof *e->chain);
        else
            s = mj_grow((void **)&m->entries, &m->cap_entries, m->n_entries + 1,
                        sizeof *m->entries);
    }
    mj_param_entry fresh = {0};
    if (s == MJ_OK && !e) {
        fresh.name = mj_strdup(name);
        fresh.chain = mj_alloc(4 * sizeof *fresh.chain);
        fresh.cap_chain = 4;
        if (!fresh.name || !fresh.chain) s = MJ_ERR_NOMEM;
    }
    if (s != MJ_OK) {
        free(fresh.name);
        free(fresh.chain);
        mj_tensor_release(value);
        mj_tensor_release(orig_new);
        return s;
    }

    /* Commit. */
    if (e) {
        e->chain[e->n_chain++] = p;
        mj_param_entry_drop_cache(e);
    } else {
        mj_named_tensor *list = pidx >= 0 ? m->params : m->buffers;
        int32_t *n = pidx >= 0 ? &m->n_params : &m->n_buffers;
        int32_t idx = pidx >= 0 ? pidx : bidx;
        fresh.original = list[idx].t; /* the reference moves into the entry */
        fresh.is_buffer = pidx < 0;
        fresh.persistent = list[idx].persistent;
        fresh.orig_pos = idx;
        free(list[idx].name);
        memmove(&list[idx], &list[idx + 1], (size_t)(*n - idx - 1) * sizeof *list);
        (*n)--;
        if (orig_new) {
            /* Same object, new content: keeps the identity traces bind to. */
            mj_status cs = mj_tensor_copy(fresh.original, orig_new);
            MJ_ASSERT(cs == MJ_OK);
        }
        fresh.chain[0] = p;
        fresh.n_chain = 1;
        if (m->n_entries == 0) m->entries_pos = m->n_children;
        m->entries[m->n_entries++] = fresh;
    }
    p->registered = true;
    mj_tensor_release(value);
    mj_tensor_release(orig_new);
    return MJ_OK;
}

bool mj_is_parametrized(const mj_module *m, const char *name) {
    if (!m) return false;
    if (!name) return m->n_entries > 0;
    return mj_module_entry(m, name) != NULL;
}

int mj_parametrization_count(const mj_module *m, const char *name) {
    const mj_param_entry *e = mj_module_entry(m, name);
    return e ? e->n_chain : 0;
}

mj_parametrization *mj_module_parametrization(const mj_module *m, const char *name, int i) {
    const mj_param_entry *e = mj_module_entry(m, name);
    return e && i >= 0 && i < e->n_chain ? e->chain[i] : NULL;
}

mj_tensor *mj_module_original(const mj_module *m, const char *name) {
    const mj_param_entry *e = mj_module_entry(m, name);
    return e ? e->original : NULL;
}

/* Moves entry k's original back into the module's own list at position pos
 * (clamped) and frees the entry. The list must have room for one more. */
static void unregister_entry(mj_module *m, int32_t k, int32_t pos) {
    mj_param_entry *e = &m->entries[k];
    mj_named_tensor *list = e->is_buffer ? m->buffers : m->params;
    int32_t *n = e->is_buffer ? &m->n_buffers : &m->n_params;
    if (pos > *n) pos = *n;
    memmove(&list[pos + 1], &list[pos], (size_t)(*n - pos) * sizeof *list);
    list[pos] = (mj_named_tensor){.name = e->name, .t = e->original, .persistent = e->persistent};
    (*n)++;
    e->name = NULL; /* moved */
    e->original = NULL;
    mj_param_entry_clear(e);
    memmove(&m->entries[k], &m->entries[k + 1], (size_t)(m->n_entries - k - 1) * sizeof *e);
    m->n_entries--;
}

static mj_status reserve_slot(mj_module *m, bool is_buffer) {
    if (is_buffer)
        return mj_grow((void **)&m->buffers, &m->cap_buffers, m->n_buffers + 1,
                       sizeof *m->buffers);
    return mj_grow((void **)&m->params, &m->cap_params, m->n_params + 1, sizeof *m->params);
}

mj_status mj_remove_parametrizations(mj_module *m, const char *name, bool leave_parametrized) {
    if (!m || !name)
        return mj_fail(MJ_ERR_INVALID, "mj_remove_parametrizations: %s is NULL",
                       !m ? "module" : "name");
    mj_param_entry *e = mj_module_entry(m, name);
    if (!e)
        return mj_fail(MJ_ERR_KEY, "module %s has no parametrization on '%s'", m->type_name, name);
    mj_tensor *v = NULL;
    if (leave_parametrized) {
        MJ_TRY(mj_param_entry_compute(e, &v));
        if (!same_shape(v, e->original)) {
            char vs[96], os[96];
            mj_fail(MJ_ERR_SHAPE,
                    "removing the parametrizations of %s.%s: value has shape %s but the original "
                    "has shape %s",
                    m->type_name, name, mj_shape_str(vs, sizeof vs, mj_tensor_rank(v), mj_tensor_shape(v)),
                    mj_shape_str(os, sizeof os, mj_tensor_rank(e->original),
                                 mj_tensor_shape(e->original)));
            mj_tensor_release(v);
            return MJ_ERR_SHAPE;
        }
    }
    mj_status s = reserve_slot(m, e->is_buffer);
    if (s != MJ_OK) {
        mj_tensor_release(v);
        return s;
    }
    if (v) {
        /* Bake the value into the original object (squash_mask). */
        if (v != e->original) {
            s = mj_tensor_copy(e->original, v);
            MJ_ASSERT(s == MJ_OK);
        }
        mj_tensor_release(v);
    }
    /* PyTorch re-registers the tensor (register_buffer: persistent), so it
     * goes to the end of the list. */
    e->persistent = true;
    unregister_entry(m, (int32_t)(e - m->entries), INT32_MAX);
    return MJ_OK;
}

void mj_parametrization_pop_last(mj_module *m, const char *name) {
    mj_param_entry *e = mj_module_entry(m, name);
    MJ_ASSERT(e && e->n_chain > 0);
    if (e->n_chain > 1) {
        mj_parametrization *p = e->chain[--e->n_chain];
        p->registered = false;
        mj_parametrization_free(p);
        mj_param_entry_drop_cache(e);
        return;
    }
    /* Cannot fail: registration removed the tensor from the list, whose
     * capacity never shrinks, so there is room to put it back. */
    MJ_ASSERT((e->is_buffer ? m->cap_buffers - m->n_buffers : m->cap_params - m->n_params) > 0);
    unregister_entry(m, (int32_t)(e - m->entries), e->orig_pos);
}

/* ---- cached mode --------------------------------------------------------- */

static void cache_add(mj_module *m, int32_t delta) {
    m->cache_depth += delta;
    if (m->cache_depth == 0)
        for (int32_t i = 0; i < m->n_entries; i++) mj_param_entry_drop_cache(&m->entries[i]);
    for (int32_t i = 0; i < m->n_children; i++) cache_add(m->children[i].m, delta);
}

mj_status mj_parametrize_cache_begin(mj_module *root) {
    if (!root) return mj_fail(MJ_ERR_INVALID, "mj_parametrize_cache_begin: module is NULL");
    cache_add(root, 1);
    return MJ_OK;
}

static bool subtree_cached_at_least_once(const mj_module *m) {
    if (m->cache_depth <= 0) return false;
    for (int32_t i = 0; i < m->n_children; i++)
        if (!subtree_cached_at_least_once(m->children[i].m)) return false;
    return true;
}

void mj_parametrize_cache_end(mj_module *root) {
    /* Unbalanced end calls are ignored rather than driving depths negative. */
    if (!root || !subtree_cached_at_least_once(root)) return;
    cache_add(root, -1);
}

bool mj_parametrize_is_cached(const mj_module *m) {
    if (!m) return false;
    if (m->cache_depth > 0) return true;
    for (int32_t i = 0; i < m->n_children; i++)
        if (mj_parametrize_is_cached(m->children[i].m)) return true;
    return false;
}
