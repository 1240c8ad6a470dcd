/* Modules: ownership, names, tree walks, named tensors and the repr tree.
 * Built-in module types live in builtin_modules.c, parametrizations in
 * parametrize.c, state dicts in state_dict.c. */
#include <string.h>

#include "module_impl.h"

mj_status mj_check_local_name(const char *name, const char *what) {
    if (!name) return mj_fail(MJ_ERR_INVALID, "%s name is NULL", what);
    if (!name[0]) return mj_fail(MJ_ERR_KEY, "%s name is empty", what);
    if (strchr(name, '.'))
        return mj_fail(MJ_ERR_KEY, "%s name '%s' contains '.' (dots join hierarchical names)",
                       what, name);
    /* Reserved: parametrized tensors live under "<mod>.parametrizations.*". */
    if (strcmp(name, "parametrizations") == 0)
        return mj_fail(MJ_ERR_KEY, "%s name 'parametrizations' is reserved", what);
    return MJ_OK;
}

mj_status mj_module_alloc(mj_module **out, const char *type_name, mj_module_kind kind,
                          mj_forward_fn forward) {
    mj_module *m = mj_alloc(sizeof *m);
    if (!m) return MJ_ERR_NOMEM;
    m->type_name = mj_strdup(type_name);
    if (!m->type_name) {
        free(m);
        return MJ_ERR_NOMEM;
    }
    m->kind = kind;
    m->forward = forward;
    *out = m;
    return MJ_OK;
}

mj_status mj_module_new(mj_module **out, const char *type_name, mj_forward_fn forward,
                        void *user, void (*free_user)(void *)) {
    if (!out) return mj_fail(MJ_ERR_INVALID, "mj_module_new: out is NULL");
    if (!type_name || !type_name[0])
        return mj_fail(MJ_ERR_INVALID, "mj_module_new: type name is NULL or empty");
    mj_module *m;
    MJ_TRY(mj_module_alloc(&m, type_name, MJ_KIND_USER, forward));
    m->user = user;
    m->free_user = free_user;
    *out = m;
    return MJ_OK;
}

mj_status mj_module_new_n(mj_module **out, const char *type_name, int n_in, int n_out, mj_forward_n_fn forward,
                          void *user, void (*free_user)(void *)) {
    if (!out) return mj_fail(MJ_ERR_INVALID, "mj_module_new_n: out is NULL");
    if (!type_name || !type_name[0])
        return mj_fail(MJ_ERR_INVALID, "mj_module_new_n: type name is NULL or empty");
    if (!forward) return mj_fail(MJ_ERR_INVALID, "mj_module_new_n: forward is NULL");
    if (n_in < 1 || n_in > MJ_MODULE_MAX_IO || n_out < 1 || n_out > MJ_MODULE_MAX_IO)
        return mj_fail(MJ_ERR_INVALID, "mj_module_new_n: %d inputs and %d outputs (each must be 1..%d)", n_in,
                       n_out, MJ_MODULE_MAX_IO);
    mj_module *m;
    MJ_TRY(mj_module_alloc(&m, type_name, MJ_KIND_USER, NULL));
    m->forward_n = forward;
    m->n_in = n_in;
    m->n_out = n_out;
    m->user = user;
    m->free_user = free_user;
    *out = m;
    return MJ_OK;
}

void mj_param_entry_drop_cache(mj_param_entry *e) {
    mj_tensor_release(e->cached);
    e->cached = NULL;
}

void mj_param_entry_clear(mj_param_entry *e) {
    for (int32_t i = 0; i < e->n_chain; i++) {
        e->chain[i]->registered = false;
        mj_parametrization_free(e->chain[i]);
    }
    free(e->chain);
    mj_param_entry_drop_cache(e);
    mj_tensor_release(e->original);
    free(e->name);
    memset(e, 0, sizeof *e);
}

static void free_named(mj_named_tensor *v, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        free(v[i].name);
        mj_tensor_release(v[i].t);
    }
    free(v);
}

void mj_module_free(mj_module *m) {
    /* An owned child is freed by its parent; freeing it here would leave the
     * parent with a dangling pointer. */
    if (!m || m->parent) return;
    for (int32_t i = 0; i < m->n_children; i++) {
        m->children[i].m->parent = NULL;
        mj_module_free(m->children[i].m);
        free(m->children[i].name);
    }
    free(m->children);
    free_named(m->params, m->n_params);
    free_named(m->buffers, m->n_buffers);
    for (int32_t i = 0; i < m->n_entries; i++) mj_param_entry_clear(&m->entries[i]);
    free(m->entries);
    if (m->free_user) m->free_user(m->user);
    free(m->type_name);
    free(m);
}

/* ---- lookups ------------------------------------------------------------ */

mj_param_entry *mj_module_entry(const mj_module *m, const char *name) {
    if (!m || !name) return NULL;
    for (int32_t i = 0; i < m->n_entries; i++)
        if (strcmp(m->entries[i].name, name) == 0) return &m->entries[i];
    return NULL;
}

static mj_named_tensor *find_named(mj_named_tensor *v, int32_t n, const char *name,
                                   int32_t *index) {
    for (int32_t i = 0; i < n; i++)
        if (strcmp(v[i].name, name) == 0) {
            if (index) *index = i;
            return &v[i];
        }
    return NULL;
}

mj_named_tensor *mj_module_find_param(const mj_module *m, const char *name, int32_t *index) {
    return find_named(m->params, m->n_params, name, index);
}

mj_named_tensor *mj_module_find_buffer(const mj_module *m, const char *name, int32_t *index) {
    return find_named(m->buffers, m->n_buffers, name, index);
}

mj_module *mj_module_child(const mj_module *m, const char *name) {
    if (!m || !name) return NULL;
    for (int32_t i = 0; i < m->n_children; i++)
        if (strcmp(m->children[i].name, name) == 0) return m->children[i].m;
    return NULL;
}

/* Parameters, buffers, children and parametrized names share one namespace,
 * as attributes of a torch.nn.Module do. */
static mj_status check_name_free(const mj_module *m, const char *name, const char *what) {
    MJ_TRY(mj_check_local_name(name, what));
    const char *taken = mj_module_find_param(m, name, NULL)    ? "a parameter"
                        : mj_module_find_buffer(m, name, NULL) ? "a buffer"
                        : mj_module_child(m, name)             ? "a child"
                        : mj_module_entry(m, name)             ? "a parametrized tensor"
                                                               : NULL;
    if (taken)
        return mj_fail(MJ_ERR_KEY, "%s: cannot add %s '%s': the name is already %s",
                       m->type_name, what, name, taken);
    return MJ_OK;
}

static void add_cache_depth(mj_module *m, int32_t delta) {
    m->cache_depth += delta;
    for (int32_t i = 0; i < m->n_children; i++) add_cache_depth(m->children[i].m, delta);
}

mj_status mj_module_add_child(mj_module *m, const char *name, mj_module *child) {
    if (!m || !child)
        return mj_fail(MJ_ERR_INVALID, "mj_module_add_child: %s is NULL", !m ? "module" : "child");
    MJ_TRY(check_name_free(m, name, "child"));
    if (child->parent)
        return mj_fail(MJ_ERR_STATE, "%s: child '%s' (%s) already belongs to a %s", m->type_name,
                       name, child->type_name, child->parent->type_name);
    for (const mj_module *a = m; a; a = a->parent)
        if (a == child)
            return mj_fail(MJ_ERR_INVALID,
                           "%s: adding child '%s' would make the module its own descendant",
                           m->type_name, name);
    MJ_TRY(mj_grow((void **)&m->children, &m->cap_children, m->n_children + 1,
                   sizeof *m->children));
    char *n = mj_strdup(name);
    if (!n) return MJ_ERR_NOMEM;
    m->children[m->n_children].name = n;
    m->children[m->n_children].m = child;
    m->n_children++;
    child->parent = m;
    /* A child added under a cached tree is cached too. */
    if (m->cache_depth) add_cache_depth(child, m->cache_depth);
    return MJ_OK;
}

static mj_status add_named(mj_module *m, mj_named_tensor **v, int32_t *n, int32_t *cap,
                           const char *name, mj_tensor *t, bool persistent, const char *what) {
    if (!m || !t)
        return mj_fail(MJ_ERR_INVALID, "adding a %s: %s is NULL", what, !m ? "module" : "tensor");
    MJ_TRY(check_name_free(m, name, what));
    MJ_TRY(mj_grow((void **)v, cap, *n + 1, sizeof **v));
    char *nm = mj_strdup(name);
    if (!nm) return MJ_ERR_NOMEM;
    (*v)[*n] = (mj_named_tensor){.name = nm, .t = mj_tensor_retain(t), .persistent = persistent};
    (*n)++;
    return MJ_OK;
}

mj_status mj_module_add_parameter(mj_module *m, const char *name, mj_tensor *t) {
    return add_named(m, m ? &m->params : NULL, m ? &m->n_params : NULL,
                     m ? &m->cap_params : NULL, name, t, true, "parameter");
}

mj_status mj_module_add_buffer(mj_module *m, const char *name, mj_tensor *t, bool persistent) {
    return add_named(m, m ? &m->buffers : NULL, m ? &m->n_buffers : NULL,
                     m ? &m->cap_buffers : NULL, name, t, persistent, "buffer");
}

const char *mj_module_type(const mj_module *m) { return m ? m->type_name : NULL; }
void *mj_module_user(const mj_module *m) { return m ? m->user : NULL; }
int mj_module_child_count(const mj_module *m) { return m ? m->n_children : 0; }

mj_module *mj_module_child_at(const mj_module *m, int i, const char **name) {
    if (!m || i < 0 || i >= m->n_children) return NULL;
    if (name) *name = m->children[i].name;
    return m->children[i].m;
}

mj_module *mj_module_find(const mj_module *m, const char *path) {
    if (!m || !path) return NULL;
    const mj_module *cur = m;
    const char *p = path;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (len == 0) return NULL; /* "seq..0", ".x", "x." */
        const mj_module *next = NULL;
        for (int32_t i = 0; i < cur->n_children; i++) {
            const char *cn = cur->children[i].name;
            if (strlen(cn) == len && memcmp(cn, p, len) == 0) {
                next = cur->children[i].m;
                break;
            }
        }
        if (!next) return NULL;
        cur = next;
        if (!dot) break;
        p = dot + 1;
        if (!*p) return NULL;
    }
    return (mj_module *)cur;
}

int64_t mj_linear_in_features(const mj_module *m) {
    return m && m->kind == MJ_KIND_LINEAR ? m->in_features : 0;
}

int64_t mj_linear_out_features(const mj_module *m) {
    return m && m->kind == MJ_KIND_LINEAR ? m->out_features : 0;
}

int mj_module_input_count(const mj_module *m) { return !m ? 0 : m->forward_n ? m->n_in : 1; }
int mj_module_output_count(const mj_module *m) { return !m ? 0 : m->forward_n ? m->n_out : 1; }

mj_status mj_module_forward_n(mj_module *m, int n_in, const mj_tensor *const *x, int n_out, mj_tensor **y) {
    if (!m || (n_in > 0 && !x) || (n_out > 0 && !y))
        return mj_fail(MJ_ERR_INVALID, "mj_module_forward_n: %s is NULL",
                       !m ? "module" : (n_in > 0 && !x) ? "the input array" : "the output array");
    if (n_in != mj_module_input_count(m) || n_out != mj_module_output_count(m))
        return mj_fail(MJ_ERR_INVALID, "module %s takes %d inputs and gives %d outputs, called with %d and %d",
                       m->type_name, mj_module_input_count(m), mj_module_output_count(m), n_in, n_out);
    for (int i = 0; i < n_in; i++)
        if (!x[i]) return mj_fail(MJ_ERR_INVALID, "module %s: input %d is NULL", m->type_name, i);
    if (!m->forward_n) return mj_module_forward(m, x[0], y);
    mj_tensor *r[MJ_MODULE_MAX_IO] = {0};
    mj_status s = m->forward_n(m, n_in, x, n_out, r);
    for (int j = 0; j < n_out && s == MJ_OK; j++)
        if (!r[j])
            s = mj_fail(MJ_ERR_INVALID, "forward of module %s returned MJ_OK but no tensor for output %d",
                        m->type_name, j);
    if (s != MJ_OK) {
        for (int j = 0; j < n_out; j++) mj_tensor_release(r[j]);
        return s;
    }
    for (int j = 0; j < n_out; j++) y[j] = r[j];
    return MJ_OK;
}

mj_status mj_module_forward(mj_module *m, const mj_tensor *x, mj_tensor **y) {
    if (!m || !x || !y)
        return mj_fail(MJ_ERR_INVALID, "mj_module_forward: %s is NULL",
                       !m ? "module" : !x ? "input" : "output");
    if (m->forward_n) {
        if (m->n_in != 1 || m->n_out != 1)
            return mj_fail(MJ_ERR_INVALID,
                           "module %s takes %d inputs and gives %d outputs; call it with mj_module_forward_n",
                           m->type_name, m->n_in, m->n_out);
        return mj_module_forward_n(m, 1, &x, 1, y);
    }
    if (!m->forward)
        return mj_fail(MJ_ERR_UNSUPPORTED, "module %s has no forward function", m->type_name);
    mj_tensor *r = NULL;
    int refs = mj_tensor_refs(x);
    MJ_TRY(m->forward(m, x, &r));
    r = mj_own_result(x, refs, r); /* `return X` works */
    if (!r)
        return mj_fail(MJ_ERR_INVALID, "forward of module %s returned MJ_OK but no tensor",
                       m->type_name);
    *y = r;
    return MJ_OK;
}

/* ---- walks -------------------------------------------------------------- */

/* "prefix.name", or "name" when prefix is empty; NULL (message set) on OOM. */
static char *join(const char *prefix, const char *name) {
    size_t a = strlen(prefix), b = strlen(name);
    char *s = mj_alloc(a + b + 2);
    if (!s) return NULL;
    if (a) {
        memcpy(s, prefix, a);
        s[a++] = '.';
    }
    memcpy(s + a, name, b + 1);
    return s;
}

static int walk_rec(mj_module *m, const char *path, mj_module_visit_fn visit, void *ctx) {
    int r = visit(path, m, ctx);
    if (r) return r;
    for (int32_t i = 0; i < m->n_children; i++) {
        char *p = join(path, m->children[i].name);
        if (!p) return -1; /* out of memory: stop rather than skip silently */
        r = walk_rec(m->children[i].m, p, visit, ctx);
        free(p);
        if (r) return r;
    }
    return 0;
}

void mj_module_walk(mj_module *m, mj_module_visit_fn visit, void *ctx) {
    if (!m || !visit) return;
    walk_rec(m, "", visit, ctx);
}

void mj_module_drop_caches(mj_module *m) {
    for (int32_t i = 0; i < m->n_entries; i++) mj_param_entry_drop_cache(&m->entries[i]);
    for (int32_t i = 0; i < m->n_children; i++) mj_module_drop_caches(m->children[i].m);
}

/* ---- named tensors ------------------------------------------------------ */

static bool dict_holds(const mj_tensor_dict *d, const mj_tensor *t) {
    for (int i = 0; i < mj_tensor_dict_size(d); i++)
        if (mj_tensor_dict_value(d, i) == t) return true;
    return false;
}

static mj_status put(mj_tensor_dict *d, mj_collect_what what, const char *prefix,
                     const char *name, mj_tensor *t) {
    /* named_parameters/named_buffers list a shared tensor once, as PyTorch's
     * remove_duplicate does; state_dict lists every key. */
    if (what != MJ_COLLECT_STATE && dict_holds(d, t)) return MJ_OK;
    char *key = join(prefix, name);
    if (!key) return MJ_ERR_NOMEM;
    mj_status s = mj_tensor_dict_set(d, key, t);
    free(key);
    return s;
}

static mj_status collect_entries(mj_module *m, const char *prefix, mj_collect_what what,
                                 bool include_masks, mj_tensor_dict *d) {
    for (int32_t k = 0; k < m->n_entries; k++) {
        mj_param_entry *e = &m->entries[k];
        /* "<prefix>.parametrizations.<name>" */
        char *p1 = join(prefix, "parametrizations");
        char *base = p1 ? join(p1, e->name) : NULL;
        free(p1);
        if (!base) return MJ_ERR_NOMEM;
        mj_status s = MJ_OK;
        /* PyTorch registers `original` with register_buffer (persistent)
         * even when the buffer it replaces was not: always in state dicts. */
        bool want_orig = what == MJ_COLLECT_PARAMS    ? !e->is_buffer
                         : what == MJ_COLLECT_BUFFERS ? e->is_buffer
                                                      : true;
        if (want_orig) s = put(d, what, base, "original", e->original);
        for (int32_t i = 0; s == MJ_OK && i < e->n_chain; i++) {
            mj_parametrization *p = e->chain[i];
            char idx[16];
            snprintf(idx, sizeof idx, "%d", (int)i);
            char *pb = join(base, idx);
            if (!pb) {
                s = MJ_ERR_NOMEM;
                break;
            }
            for (int32_t j = 0; s == MJ_OK && j < p->n_bufs; j++) {
                bool want = what == MJ_COLLECT_BUFFERS ||
                            (what == MJ_COLLECT_STATE && (p->bufs[j].persistent || include_masks));
                if (want) s = put(d, what, pb, p->bufs[j].name, p->bufs[j].t);
            }
            free(pb);
        }
        free(base);
        MJ_TRY(s);
    }
    return MJ_OK;
}

static mj_status collect_rec(mj_module *m, const char *prefix, mj_collect_what what,
                             bool include_masks, mj_tensor_dict *d) {
    if (what != MJ_COLLECT_BUFFERS)
        for (int32_t i = 0; i < m->n_params; i++)
            MJ_TRY(put(d, what, prefix, m->params[i].name, m->params[i].t));
    if (what != MJ_COLLECT_PARAMS)
        for (int32_t i = 0; i < m->n_buffers; i++)
            if (what == MJ_COLLECT_BUFFERS || m->buffers[i].persistent)
                MJ_TRY(put(d, what, prefix, m->buffers[i].name, m->buffers[i].t));
    for (int32_t i = 0; i <= m->n_children; i++) {
        if (i == m->entries_pos && m->n_entries > 0)
            MJ_TRY(collect_entries(m, prefix, what, include_masks, d));
        if (i == m->n_children) break;
        char *p = join(prefix, m->children[i].name);
        if (!p) return MJ_ERR_NOMEM;
        mj_status s = collect_rec(m->children[i].m, p, what, include_masks, d);
        free(p);
        MJ_TRY(s);
    }
    return MJ_OK;
}

mj_status mj_module_collect(mj_module *m, mj_collect_what what, bool include_masks,
                            mj_tensor_dict *d) {
    return collect_rec(m, "", what, include_masks, d);
}

mj_status mj_module_collect_new(const char *fn, mj_module *m, mj_collect_what what, bool include_masks,
                                mj_tensor_dict **out) {
    if (!m || !out) return mj_fail(MJ_ERR_INVALID, "%s: %s is NULL", fn, !m ? "module" : "out");
    mj_tensor_dict *d;
    MJ_TRY(mj_tensor_dict_new(&d));
    mj_status s = mj_module_collect(m, what, include_masks, d);
    if (s != MJ_OK) {
        mj_tensor_dict_free(d);
        return s;
    }
    *out = d;
    return MJ_OK;
}

mj_status mj_module_named_parameters(mj_module *m, mj_tensor_dict **out) {
    return mj_module_collect_new("mj_module_named_parameters", m, MJ_COLLECT_PARAMS, false, out);
}

mj_status mj_module_named_buffers(mj_module *m, mj_tensor_dict **out) {
    return mj_module_collect_new("mj_module_named_buffers", m, MJ_COLLECT_BUFFERS, false, out);
}

/* ---- repr (torch.nn.Module.__repr__) -------------------------------------
 * Name(extra) on one line when there is one extra line and no children;
 * otherwise every extra line and "(child): repr" indented by two. */

static void put_indent(FILE *f, int n) {
    for (int i = 0; i < n; i++) fputc(' ', f);
}

static void print_extra(FILE *f, const mj_module *m) {
    switch (m->kind) {
    case MJ_KIND_LINEAR:
        fprintf(f, "in_features=%lld, out_features=%lld, bias=%s", (long long)m->in_features,
                (long long)m->out_features,
                (mj_module_find_param(m, "bias", NULL) || mj_module_entry(m, "bias")) ? "True"
                                                                                     : "False");
        break;
    case MJ_KIND_ACTIVATION:
        if (m->act == MJ_ACT_GELU) fputs("approximate='none'", f);
        if (m->act == MJ_ACT_GELU_TANH) fputs("approximate='tanh'", f);
        break;
    default: /* MJ_KIND_MATH and the CNN layers set it; others leave it empty */
        fputs(m->extra_repr, f);
        break;
    }
}

static bool has_extra(const mj_module *m) {
    return m->kind == MJ_KIND_LINEAR || m->extra_repr[0] ||
           (m->kind == MJ_KIND_ACTIVATION && (m->act == MJ_ACT_GELU || m->act == MJ_ACT_GELU_TANH));
}

static void print_entries(FILE *f, const mj_module *m, int indent) {
    put_indent(f, indent);
    fputs("(parametrizations): ModuleDict(\n", f);
    for (int32_t k = 0; k < m->n_entries; k++) {
        const mj_param_entry *e = &m->entries[k];
        put_indent(f, indent + 2);
        fprintf(f, "(%s): ParametrizationList(\n", e->name);
        for (int32_t i = 0; i < e->n_chain; i++) {
            put_indent(f, indent + 4);
            fprintf(f, "(%d): %s()\n", (int)i, e->chain[i]->ops->type_name);
        }
        put_indent(f, indent + 2);
        fputs(")\n", f);
    }
    put_indent(f, indent);
    fputs(")\n", f);
}

static void print_rec(FILE *f, const mj_module *m, int indent) {
    fprintf(f, "%s%s(", m->n_entries ? "Parametrized" : "", m->type_name);
    bool children = m->n_children > 0 || m->n_entries > 0;
    if (!children) {
        print_extra(f, m);
        fputc(')', f);
        return;
    }
    fputc('\n', f);
    if (has_extra(m)) {
        put_indent(f, indent + 2);
        print_extra(f, m);
        fputc('\n', f);
    }
    for (int32_t i = 0; i <= m->n_children; i++) {
        if (i == m->entries_pos && m->n_entries > 0) print_entries(f, m, indent + 2);
        if (i == m->n_children) break;
        put_indent(f, indent + 2);
        fprintf(f, "(%s): ", m->children[i].name);
        print_rec(f, m->children[i].m, indent + 2);
        fputc('\n', f);
    }
    put_indent(f, indent);
    fputc(')', f);
}

void mj_module_print(FILE *f, const mj_module *m) {
    if (!f || !m) return;
    print_rec(f, m, 0);
    fputc('\n', f);
}
