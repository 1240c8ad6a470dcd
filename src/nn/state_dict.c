/* state_dict / load_state_dict with PyTorch's keys and semantics. */
#include <string.h>

#include "module_impl.h"

mj_status mj_module_state_dict(mj_module *m, bool include_masks, mj_tensor_dict **out) {
    return mj_module_collect_new("mj_module_state_dict", m, MJ_COLLECT_STATE, include_masks, out);
}

void mj_load_report_free(mj_load_report *r) {
    if (!r) return;
    for (int i = 0; i < r->n_missing; i++) free(r->missing[i]);
    for (int i = 0; i < r->n_unexpected; i++) free(r->unexpected[i]);
    free(r->missing);
    free(r->unexpected);
    memset(r, 0, sizeof *r);
}

/* Appends key to a report list (capacity = n_total, allocated up front). */
static mj_status report_add(char **list, int *n, const char *key) {
    char *k = mj_strdup(key);
    if (!k) return MJ_ERR_NOMEM;
    list[(*n)++] = k;
    return MJ_OK;
}

/* "'a', 'b', 'c' and 2 more" into buf. */
static void key_list(char *buf, size_t size, char *const *keys, int n) {
    size_t used = 0;
    buf[0] = '\0';
    int shown = n < 3 ? n : 3;
    for (int i = 0; i < shown && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s'%s'", i ? ", " : "", keys[i]);
    if (n > shown && used < size) snprintf(buf + used, size - used, " and %d more", n - shown);
}

mj_status mj_module_load_state_dict(mj_module *m, const mj_tensor_dict *sd, bool strict,
                                    mj_load_report *report) {
    if (report) memset(report, 0, sizeof *report);
    if (!m || !sd)
        return mj_fail(MJ_ERR_INVALID, "mj_module_load_state_dict: %s is NULL",
                       !m ? "module" : "state dict");
    /* Expected keys: the state dict with the parametrization buffers, which
     * PyTorch's load_state_dict expects too (FakeSparsity's mask is a
     * regular buffer there, hidden only from state_dict()). */
    mj_tensor_dict *exp;
    MJ_TRY(mj_module_state_dict(m, true, &exp));
    int n_exp = mj_tensor_dict_size(exp), n_sd = mj_tensor_dict_size(sd);
    mj_load_report r = {0};
    mj_status s = MJ_OK;
    r.missing = mj_alloc_array((size_t)n_exp + 1, sizeof *r.missing);
    r.unexpected = mj_alloc_array((size_t)n_sd + 1, sizeof *r.unexpected);
    if (!r.missing || !r.unexpected) s = MJ_ERR_NOMEM;

    for (int i = 0; s == MJ_OK && i < n_exp; i++) {
        const char *key = mj_tensor_dict_key(exp, i);
        if (!mj_tensor_dict_get(sd, key)) s = report_add(r.missing, &r.n_missing, key);
    }
    for (int i = 0; s == MJ_OK && i < n_sd; i++) {
        const char *key = mj_tensor_dict_key(sd, i);
        if (!mj_tensor_dict_get(exp, key)) s = report_add(r.unexpected, &r.n_unexpected, key);
    }
    if (s == MJ_OK && strict && (r.n_missing || r.n_unexpected)) {
        char miss[512], unexp[512];
        key_list(miss, sizeof miss, r.missing, r.n_missing);
        key_list(unexp, sizeof unexp, r.unexpected, r.n_unexpected);
        s = mj_fail(MJ_ERR_KEY,
                    "load_state_dict (strict): %d missing key(s)%s%s, %d unexpected key(s)%s%s",
                    r.n_missing, r.n_missing ? ": " : "", miss, r.n_unexpected,
                    r.n_unexpected ? ": " : "", unexp);
    }
    /* Every shape before any copy: all or nothing. */
    for (int i = 0; s == MJ_OK && i < n_exp; i++) {
        const mj_tensor *dst = mj_tensor_dict_value(exp, i);
        const mj_tensor *src = mj_tensor_dict_get(sd, mj_tensor_dict_key(exp, i));
        if (src && !mj_shape_equal(mj_tensor_rank(dst), mj_tensor_shape(dst), mj_tensor_rank(src),
                                   mj_tensor_shape(src))) {
            char ds[96], ss[96];
            s = mj_fail(MJ_ERR_SHAPE,
                        "load_state_dict: '%s' has shape %s in the state dict but %s in the model",
                        mj_tensor_dict_key(exp, i),
                        mj_shape_str(ss, sizeof ss, mj_tensor_rank(src), mj_tensor_shape(src)),
                        mj_shape_str(ds, sizeof ds, mj_tensor_rank(dst), mj_tensor_shape(dst)));
        }
    }
    if (s == MJ_OK) {
        for (int i = 0; i < n_exp; i++) {
            mj_tensor *dst = mj_tensor_dict_value(exp, i);
            const mj_tensor *src = mj_tensor_dict_get(sd, mj_tensor_dict_key(exp, i));
            if (!src || src == dst) continue; /* loading a model's own dict is a no-op */
            mj_status cs = mj_tensor_copy(dst, src);
            MJ_ASSERT(cs == MJ_OK); /* shapes were checked above */
        }
        mj_module_drop_caches(m); /* cached parametrized values are stale now */
    }
    mj_tensor_dict_free(exp);
    if (report && r.missing && r.unexpected)
        *report = r;
    else
        mj_load_report_free(&r);
    return s;
}
