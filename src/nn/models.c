/* Ready-made models: the seed's ModelUnderTest, "mlp:" specs, and masks. */
#include <math.h>
#include <string.h>

#include "module_impl.h"

/* ---- ModelUnderTest ------------------------------------------------------ */

static mj_status mut_forward(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    mj_tensor *h;
    MJ_TRY(mj_module_forward(mj_module_child(self, "linear"), x, &h));
    mj_status s = mj_module_forward(mj_module_child(self, "seq"), h, y);
    mj_tensor_release(h);
    return s;
}

/* Sets every element of m's parameter `name` to v. */
static void fill_param(mj_module *m, const char *name, float v) {
    mj_named_tensor *nt = mj_module_find_param(m, name, NULL);
    MJ_ASSERT(nt);
    float *d = mj_tensor_data_mut(nt->t);
    for (int64_t i = 0; i < mj_tensor_numel(nt->t); i++) d[i] = v;
}

mj_status mj_model_under_test_new(mj_module **out, bool bias) {
    if (!out) return mj_fail(MJ_ERR_INVALID, "mj_model_under_test_new: out is NULL");
    /* The values are overwritten below; the rng only feeds mj_linear_new. */
    mj_rng rng;
    mj_rng_seed(&rng, 0);
    mj_module *lin[3] = {NULL, NULL, NULL}, *seq = NULL, *root = NULL;
    mj_status s = MJ_OK;
    for (int i = 0; i < 3 && s == MJ_OK; i++) s = mj_linear_new(&lin[i], 16, 16, bias, &rng);
    if (s == MJ_OK) {
        /* What the seed meant (its bias branch assigns the wrong attributes). */
        for (int i = 0; i < 3; i++) {
            fill_param(lin[i], "weight", (float)(i + 1));
            if (bias) fill_param(lin[i], "bias", 10.0f * (float)(i + 1));
        }
        s = mj_sequential_new(&seq, 2, &lin[1]);
    }
    if (s == MJ_OK) {
        lin[1] = lin[2] = NULL; /* owned by seq */
        s = mj_module_new(&root, "ModelUnderTest", mut_forward, NULL, NULL);
    }
    if (s == MJ_OK) s = mj_module_add_child(root, "linear", lin[0]);
    if (s == MJ_OK) {
        lin[0] = NULL;
        s = mj_module_add_child(root, "seq", seq);
    }
    if (s == MJ_OK) seq = NULL;
    for (int i = 0; i < 3; i++) mj_module_free(lin[i]);
    mj_module_free(seq);
    if (s != MJ_OK) {
        mj_module_free(root);
        return s;
    }
    *out = root;
    return MJ_OK;
}

/* ---- specs --------------------------------------------------------------- */

#define MJ_SPEC_MAX_WIDTH 65536
#define MJ_SPEC_MAX_LAYERS 1024
/* Total parameters a spec may ask for (1 GiB of float32): a typo such as
 * "mlp:65536,65536" must fail fast, not fill 16 GiB. */
#define MJ_SPEC_MAX_PARAMS (INT64_C(1) << 28)

/* Copies [p, p+len) into buf for messages. */
static const char *part(char *buf, size_t size, const char *p, size_t len) {
    snprintf(buf, size, "%.*s", (int)(len < size - 1 ? len : size - 1), p);
    return buf;
}

static mj_status parse_width(const char *spec, const char *p, size_t len, int64_t *out) {
    char tok[64];
    if (len == 0)
        return mj_fail(MJ_ERR_FORMAT, "model spec '%.160s': empty width", spec);
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return mj_fail(MJ_ERR_FORMAT, "model spec '%.160s': width '%s' is not a positive integer",
                           spec, part(tok, sizeof tok, p, len));
        if (v <= MJ_SPEC_MAX_WIDTH) v = v * 10 + (p[i] - '0'); /* stops growing once too big */
    }
    if (v < 1 || v > MJ_SPEC_MAX_WIDTH)
        return mj_fail(MJ_ERR_FORMAT, "model spec '%.160s': width '%s' must be between 1 and %d", spec,
                       part(tok, sizeof tok, p, len), MJ_SPEC_MAX_WIDTH);
    *out = v;
    return MJ_OK;
}

typedef struct mlp_spec {
    int64_t widths[MJ_SPEC_MAX_LAYERS + 1];
    int n_widths;
    mj_act act;
    bool bias;
} mlp_spec;

static mj_status parse_mlp(const char *spec, const char *body, mlp_spec *ms) {
    char tok[128];
    ms->n_widths = 0;
    ms->act = MJ_ACT_RELU;
    ms->bias = true;
    const char *colon = strchr(body, ':');
    size_t wlen = colon ? (size_t)(colon - body) : strlen(body);
    for (const char *p = body; p <= body + wlen;) {
        const char *comma = memchr(p, ',', (size_t)(body + wlen - p));
        size_t len = comma ? (size_t)(comma - p) : (size_t)(body + wlen - p);
        if (ms->n_widths > MJ_SPEC_MAX_LAYERS)
            return mj_fail(MJ_ERR_FORMAT, "model spec '%.160s': more than %d layers", spec,
                           MJ_SPEC_MAX_LAYERS);
        MJ_TRY(parse_width(spec, p, len, &ms->widths[ms->n_widths]));
        ms->n_widths++;
        if (!comma) break;
        p = comma + 1;
    }
    if (ms->n_widths < 2)
        return mj_fail(MJ_ERR_FORMAT,
                       "model spec '%.160s': an mlp needs at least 2 widths (IN,...,OUT), got %d",
                       spec, ms->n_widths);
    bool seen_act = false, seen_bias = false;
    while (colon) {
        const char *opt = colon + 1;
        colon = strchr(opt, ':');
        size_t len = colon ? (size_t)(colon - opt) : strlen(opt);
        const char *eq = memchr(opt, '=', len);
        part(tok, sizeof tok, opt, len);
        if (!eq)
            return mj_fail(MJ_ERR_FORMAT,
                           "model spec '%.160s': option '%s' is not key=value (expected act= or bias=)",
                           spec, tok);
        size_t klen = (size_t)(eq - opt);
        const char *val = eq + 1;
        size_t vlen = len - klen - 1;
        if (klen == 3 && memcmp(opt, "act", 3) == 0) {
            if (seen_act)
                return mj_fail(MJ_ERR_FORMAT, "model spec '%.160s': option act given twice", spec);
            seen_act = true;
            bool found = false;
            for (int a = 0; a < MJ_ACT_COUNT; a++)
                if (strlen(mj_act_name((mj_act)a)) == vlen && memcmp(mj_act_name((mj_act)a), val, vlen) == 0) {
                    ms->act = (mj_act)a;
                    found = true;
                }
            if (!found) {
                char list[MJ_ACT_LIST_MAX];
                mj_act_list(list, sizeof list);
                return mj_fail(MJ_ERR_FORMAT, "model spec '%.160s': unknown activation in '%s' (expected %s or none)",
                               spec, tok, list);
            }
        } else if (klen == 4 && memcmp(opt, "bias", 4) == 0) {
            if (seen_bias)
                return mj_fail(MJ_ERR_FORMAT, "model spec '%.160s': option bias given twice", spec);
            seen_bias = true;
            if (vlen != 1 || (val[0] != '0' && val[0] != '1'))
                return mj_fail(MJ_ERR_FORMAT, "model spec '%.160s': '%s' must be bias=0 or bias=1",
                               spec, tok);
            ms->bias = val[0] == '1';
        } else {
            return mj_fail(MJ_ERR_FORMAT,
                           "model spec '%.160s': unknown option '%s' (expected act= or bias=)", spec,
                           tok);
        }
    }
    /* At most 1025 widths of at most 65536: the sum fits int64 easily. */
    int64_t total = 0;
    for (int i = 0; i + 1 < ms->n_widths; i++)
        total += ms->widths[i] * ms->widths[i + 1] + (ms->bias ? ms->widths[i + 1] : 0);
    if (total > MJ_SPEC_MAX_PARAMS)
        return mj_fail(MJ_ERR_LIMIT,
                       "model spec '%.160s': %lld parameters exceed the limit of %lld (1 GiB of "
                       "float32)",
                       spec, (long long)total, (long long)MJ_SPEC_MAX_PARAMS);
    return MJ_OK;
}

static mj_status build_mlp(const mlp_spec *ms, mj_rng *rng, mj_module **out) {
    int n_layers = ms->n_widths - 1;
    int n_mods = 2 * n_layers - 1; /* Linear, act, Linear, ..., Linear */
    mj_module **mods = mj_alloc_array((size_t)n_mods, sizeof *mods);
    if (!mods) return MJ_ERR_NOMEM;
    mj_status s = MJ_OK;
    for (int i = 0; i < n_mods && s == MJ_OK; i++) {
        if (i % 2 == 0)
            s = mj_linear_new(&mods[i], ms->widths[i / 2], ms->widths[i / 2 + 1], ms->bias, rng);
        else
            s = mj_activation_module_new(&mods[i], ms->act);
    }
    mj_module *seq = NULL;
    if (s == MJ_OK) s = mj_sequential_new(&seq, n_mods, mods);
    if (s != MJ_OK)
        for (int i = 0; i < n_mods; i++) mj_module_free(mods[i]);
    free(mods);
    if (s == MJ_OK) *out = seq;
    return s;
}

mj_status mj_model_from_spec(const char *spec, mj_rng *rng, mj_module **out) {
    if (!spec || !out)
        return mj_fail(MJ_ERR_INVALID, "mj_model_from_spec: %s is NULL", !spec ? "spec" : "out");
    if (strcmp(spec, "mut") == 0) return mj_model_under_test_new(out, true);
    if (strcmp(spec, "mut-nobias") == 0) return mj_model_under_test_new(out, false);
    if (strncmp(spec, "mlp:", 4) == 0) {
        mlp_spec *ms = mj_alloc(sizeof *ms);
        if (!ms) return MJ_ERR_NOMEM;
        mj_status s = parse_mlp(spec, spec + 4, ms);
        if (s == MJ_OK && !rng)
            s = mj_fail(MJ_ERR_INVALID, "model spec '%.160s': an mlp needs an rng for its weights",
                        spec);
        if (s == MJ_OK) s = build_mlp(ms, rng, out);
        free(ms);
        return s;
    }
    char tok[64];
    const char *colon = strchr(spec, ':');
    return mj_fail(MJ_ERR_FORMAT,
                   "unknown model '%s' in spec '%.160s' (expected mut, mut-nobias or "
                   "mlp:IN,...,OUT[:act=...][:bias=0|1])",
                   part(tok, sizeof tok, spec, colon ? (size_t)(colon - spec) : strlen(spec)),
                   spec);
}

/* ---- masks --------------------------------------------------------------- */

/* The tensors of a Linear that can carry a mask. */
static const char *const mask_targets[] = {"weight", "bias"};
enum { N_MASK_TARGETS = 2 };

typedef struct linear_list {
    mj_module **mods;
    char **paths;
    int32_t n, cap, cap_paths;
    mj_status status;
} linear_list;

static int collect_linear(const char *path, mj_module *m, void *ctx) {
    linear_list *l = ctx;
    if (m->kind != MJ_KIND_LINEAR) return 0;
    l->status = mj_grow((void **)&l->mods, &l->cap, l->n + 1, sizeof *l->mods);
    if (l->status == MJ_OK)
        l->status = mj_grow((void **)&l->paths, &l->cap_paths, l->n + 1, sizeof *l->paths);
    char *p = l->status == MJ_OK ? mj_strdup(path) : NULL;
    if (!p) {
        if (l->status == MJ_OK) l->status = MJ_ERR_NOMEM;
        return 1;
    }
    l->mods[l->n] = m;
    l->paths[l->n] = p;
    l->n++;
    return 0;
}

static bool has_tensor(const mj_module *m, const char *name) {
    return mj_module_find_param(m, name, NULL) || mj_module_find_buffer(m, name, NULL) ||
           mj_module_entry(m, name);
}

/* "<path>.parametrizations.<name>.<i>.mask" for the next mask on name. */
static void mask_key(char *buf, size_t size, const char *path, const mj_module *lin,
                     const char *name) {
    snprintf(buf, size, "%s%sparametrizations.%s.%d.mask", path, path[0] ? "." : "", name,
             mj_parametrization_count(lin, name));
}

/* A key of the form "[<path>.]parametrizations.<name>.<rest>.mask": where
 * PyTorch keeps a parametrization's mask buffer. */
static bool is_mask_key(const char *key, size_t *path_len, const char **name, size_t *name_len) {
    static const char seg[] = "parametrizations.";
    size_t n = strlen(key);
    if (n < 5 || strcmp(key + n - 5, ".mask") != 0) return false;
    for (const char *p = strstr(key, seg); p; p = strstr(p + 1, seg)) {
        if (p != key && p[-1] != '.') continue;
        const char *nm = p + sizeof seg - 1, *dot = strchr(nm, '.');
        if (!dot || dot == nm || dot >= key + n - 5) return false;
        *path_len = p == key ? 0 : (size_t)(p - key - 1);
        *name = nm;
        *name_len = (size_t)(dot - nm);
        return true;
    }
    return false;
}

/* Why a mask key fits no tensor of the model: an error naming it. */
static mj_status refuse_mask_key(const char *key, const linear_list *l) {
    size_t plen, nlen;
    const char *name;
    bool is_mask = is_mask_key(key, &plen, &name, &nlen);
    MJ_ASSERT(is_mask);
    const mj_module *lin = NULL;
    const char *path = "";
    for (int32_t j = 0; j < l->n && !lin; j++)
        if (strlen(l->paths[j]) == plen && strncmp(l->paths[j], key, plen) == 0) {
            lin = l->mods[j];
            path = l->paths[j];
        }
    if (!lin)
        return mj_fail(MJ_ERR_KEY, "mask '%s' matches no Linear of the model", key);
    bool target = false;
    for (int t = 0; t < N_MASK_TARGETS; t++)
        target = target ||
                 (strlen(mask_targets[t]) == nlen && strncmp(mask_targets[t], name, nlen) == 0);
    char tname[64];
    snprintf(tname, sizeof tname, "%.*s", (int)(nlen < 63 ? nlen : 63), name);
    if (!target || !has_tensor(lin, tname))
        return mj_fail(MJ_ERR_KEY,
                       "mask '%s': the Linear '%s' has no %s to mask (masks go on weight and bias)",
                       key, path[0] ? path : "(root)", tname);
    char want[512];
    mask_key(want, sizeof want, path, lin, tname);
    return mj_fail(MJ_ERR_KEY, "mask '%s': the next mask of this %s is '%s'", key, tname, want);
}

/* The mask for `name` of a Linear: a file's (checked against the tensor's
 * shape) or a random one for the weight; NULL with MJ_OK when none. */
static mj_status make_mask(mj_module *lin, const char *name, const char *key,
                           const mj_tensor_dict *masks, double density, mj_rng *rng,
                           mj_parametrization **out) {
    *out = NULL;
    bool is_weight = strcmp(name, "weight") == 0;
    const int64_t wshape[2] = {lin->out_features, lin->in_features};
    const int64_t *shape = wshape; /* the bias: rank 1, [out] */
    int rank = is_weight ? 2 : 1;
    mj_tensor *mask = masks ? mj_tensor_dict_get(masks, key) : NULL;
    mj_status s = MJ_OK;
    bool rows = false;
    if (mask && is_weight && mj_tensor_rank(mask) == 1 && mj_tensor_dim(mask, 0) == wshape[0]) {
        /* One flag per output row: FakeStructuredSparsity, stored as its
         * [out] vector (tools/export_torch.py). */
        rows = true;
        mj_tensor_retain(mask);
    } else if (mask) {
        if (!mj_shape_equal(mj_tensor_rank(mask), mj_tensor_shape(mask), rank, shape)) {
            char ms[96], ws[64];
            return mj_fail(MJ_ERR_SHAPE, "mask '%s' has shape %s but the %s has shape %s%s", key,
                           mj_shape_str(ms, sizeof ms, mj_tensor_rank(mask), mj_tensor_shape(mask)),
                           name, mj_shape_str(ws, sizeof ws, rank, shape),
                           is_weight ? " (a row mask would be [out])" : "");
        }
        mj_tensor_retain(mask);
    } else if (is_weight && density < 1.0) {
        if (!rng)
            return mj_fail(MJ_ERR_INVALID, "random masks of density %g need an rng", density);
        MJ_TRY(mj_tensor_zeros(&mask, 2, wshape));
        float *d = mj_tensor_data_mut(mask);
        for (int64_t k = 0; k < mj_tensor_numel(mask); k++)
            d[k] = mj_rng_uniform(rng) < density ? 1.0f : 0.0f;
    } else {
        return MJ_OK;
    }
    s = rows ? mj_fake_structured_sparsity_new(out, mask) : mj_fake_sparsity_new(out, mask);
    mj_tensor_release(mask);
    return s;
}

mj_status mj_model_apply_masks(mj_module *m, const mj_tensor_dict *masks, double density,
                               mj_rng *rng) {
    if (!m) return mj_fail(MJ_ERR_INVALID, "mj_model_apply_masks: module is NULL");
    if (!(density >= 0.0 && density <= 1.0))
        return mj_fail(MJ_ERR_INVALID, "mask density %g is outside [0, 1]", density);
    linear_list l = {0};
    mj_module_walk(m, collect_linear, &l);
    mj_status s = l.status;
    /* One job per (Linear, weight|bias), in walk order. */
    int32_t n_jobs = l.n * N_MASK_TARGETS;
    mj_parametrization **ps = NULL;
    bool *reg = NULL;
    if (s == MJ_OK && n_jobs > 0) {
        ps = mj_alloc_array((size_t)n_jobs, sizeof *ps);
        reg = mj_alloc_array((size_t)n_jobs, sizeof *reg);
        if (!ps || !reg) s = MJ_ERR_NOMEM;
    }
    /* Every mask key must fit a weight or bias of a Linear, at the index
     * its registration gets: a renamed layer, a mask file for another model
     * or a mask for a tensor maskjit cannot mask is refused by name, not
     * dropped. */
    char key[512];
    for (int i = 0; s == MJ_OK && i < mj_tensor_dict_size(masks); i++) {
        const char *k = mj_tensor_dict_key(masks, i);
        size_t plen, nlen;
        const char *nm;
        if (!is_mask_key(k, &plen, &nm, &nlen)) continue;
        bool used = false;
        for (int32_t j = 0; j < l.n && !used; j++)
            for (int t = 0; t < N_MASK_TARGETS && !used; t++) {
                if (!has_tensor(l.mods[j], mask_targets[t])) continue;
                mask_key(key, sizeof key, l.paths[j], l.mods[j], mask_targets[t]);
                used = strcmp(key, k) == 0;
            }
        if (!used) s = refuse_mask_key(k, &l);
    }
    /* Build every mask before registering any, so a bad one changes nothing. */
    for (int32_t i = 0; s == MJ_OK && i < n_jobs; i++) {
        mj_module *lin = l.mods[i / N_MASK_TARGETS];
        const char *name = mask_targets[i % N_MASK_TARGETS];
        if (!has_tensor(lin, name)) continue;
        mask_key(key, sizeof key, l.paths[i / N_MASK_TARGETS], lin, name);
        s = make_mask(lin, name, key, masks, density, rng, &ps[i]);
    }
    for (int32_t i = 0; s == MJ_OK && i < n_jobs; i++) {
        if (!ps[i]) continue;
        s = mj_register_parametrization(l.mods[i / N_MASK_TARGETS],
                                        mask_targets[i % N_MASK_TARGETS], ps[i]);
        if (s == MJ_OK) {
            ps[i] = NULL; /* owned by the module now */
            reg[i] = true;
        }
    }
    if (s != MJ_OK && reg) /* undo the registrations that succeeded, newest first */
        for (int32_t i = n_jobs - 1; i >= 0; i--)
            if (reg[i])
                mj_parametrization_pop_last(l.mods[i / N_MASK_TARGETS],
                                            mask_targets[i % N_MASK_TARGETS]);
    for (int32_t i = 0; ps && i < n_jobs; i++) mj_parametrization_free(ps[i]);
    for (int32_t i = 0; i < l.n; i++) free(l.paths[i]);
    free(reg);
    free(ps);
    free(l.mods);
    free(l.paths);
    return s;
}
