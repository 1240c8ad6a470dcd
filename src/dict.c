/* Ordered name -> tensor map with string metadata (named_parameters, state
 * dicts, safetensors). Lookups are linear: dicts hold one entry per
 * parameter, and keeping insertion order is what matters. */
#include <string.h>

#include "internal.h"

typedef struct dict_item {
    char *key;
    mj_tensor *t;
} dict_item;

typedef struct meta_item {
    char *key;
    char *value;
} meta_item;

struct mj_tensor_dict {
    dict_item *items;
    int32_t n, cap;
    meta_item *meta;
    int32_t n_meta, cap_meta;
};

mj_status mj_tensor_dict_new(mj_tensor_dict **out) {
    if (!out) return mj_fail(MJ_ERR_INVALID, "mj_tensor_dict_new: out is NULL");
    mj_tensor_dict *d = mj_alloc(sizeof *d);
    if (!d) return MJ_ERR_NOMEM;
    *out = d;
    return MJ_OK;
}

void mj_tensor_dict_free(mj_tensor_dict *d) {
    if (!d) return;
    for (int32_t i = 0; i < d->n; i++) {
        free(d->items[i].key);
        mj_tensor_release(d->items[i].t);
    }
    for (int32_t i = 0; i < d->n_meta; i++) {
        free(d->meta[i].key);
        free(d->meta[i].value);
    }
    free(d->items);
    free(d->meta);
    free(d);
}

static int32_t find_key(const mj_tensor_dict *d, const char *key) {
    for (int32_t i = 0; i < d->n; i++)
        if (strcmp(d->items[i].key, key) == 0) return i;
    return -1;
}

static int32_t find_meta(const mj_tensor_dict *d, const char *key) {
    for (int32_t i = 0; i < d->n_meta; i++)
        if (strcmp(d->meta[i].key, key) == 0) return i;
    return -1;
}

mj_status mj_tensor_dict_set(mj_tensor_dict *d, const char *key, mj_tensor *t) {
    if (!d || !key || !t)
        return mj_fail(MJ_ERR_INVALID, "mj_tensor_dict_set: %s is NULL",
                       !d ? "dict" : !key ? "key" : "tensor");
    int32_t i = find_key(d, key);
    if (i >= 0) { /* replacing keeps the position, like a Python dict */
        mj_tensor_retain(t);
        mj_tensor_release(d->items[i].t);
        d->items[i].t = t;
        return MJ_OK;
    }
    MJ_TRY(mj_grow((void **)&d->items, &d->cap, d->n + 1, sizeof *d->items));
    char *k = mj_strdup(key);
    if (!k) return MJ_ERR_NOMEM;
    d->items[d->n].key = k;
    d->items[d->n].t = mj_tensor_retain(t);
    d->n++;
    return MJ_OK;
}

mj_tensor *mj_tensor_dict_get(const mj_tensor_dict *d, const char *key) {
    if (!d || !key) return NULL;
    int32_t i = find_key(d, key);
    return i >= 0 ? d->items[i].t : NULL;
}

mj_status mj_tensor_dict_remove(mj_tensor_dict *d, const char *key) {
    if (!d || !key)
        return mj_fail(MJ_ERR_INVALID, "mj_tensor_dict_remove: %s is NULL", !d ? "dict" : "key");
    int32_t i = find_key(d, key);
    if (i < 0) return mj_fail(MJ_ERR_KEY, "tensor dict has no key '%s'", key);
    free(d->items[i].key);
    mj_tensor_release(d->items[i].t);
    memmove(&d->items[i], &d->items[i + 1], (size_t)(d->n - i - 1) * sizeof *d->items);
    d->n--;
    return MJ_OK;
}

int mj_tensor_dict_size(const mj_tensor_dict *d) { return d ? d->n : 0; }

const char *mj_tensor_dict_key(const mj_tensor_dict *d, int i) {
    if (!d || i < 0 || i >= d->n) return NULL;
    return d->items[i].key;
}

mj_tensor *mj_tensor_dict_value(const mj_tensor_dict *d, int i) {
    if (!d || i < 0 || i >= d->n) return NULL;
    return d->items[i].t;
}

mj_status mj_tensor_dict_set_meta(mj_tensor_dict *d, const char *key, const char *value) {
    if (!d || !key || !value)
        return mj_fail(MJ_ERR_INVALID, "mj_tensor_dict_set_meta: %s is NULL",
                       !d ? "dict" : !key ? "key" : "value");
    char *v = mj_strdup(value);
    if (!v) return MJ_ERR_NOMEM;
    int32_t i = find_meta(d, key);
    if (i >= 0) {
        free(d->meta[i].value);
        d->meta[i].value = v;
        return MJ_OK;
    }
    char *k = mj_strdup(key);
    mj_status s = k ? mj_grow((void **)&d->meta, &d->cap_meta, d->n_meta + 1, sizeof *d->meta)
                    : MJ_ERR_NOMEM;
    if (s != MJ_OK) {
        free(k);
        free(v);
        return s;
    }
    d->meta[d->n_meta].key = k;
    d->meta[d->n_meta].value = v;
    d->n_meta++;
    return MJ_OK;
}

const char *mj_tensor_dict_get_meta(const mj_tensor_dict *d, const char *key) {
    if (!d || !key) return NULL;
    int32_t i = find_meta(d, key);
    return i >= 0 ? d->meta[i].value : NULL;
}

int mj_tensor_dict_meta_size(const mj_tensor_dict *d) { return d ? d->n_meta : 0; }

const char *mj_tensor_dict_meta_key(const mj_tensor_dict *d, int i) {
    if (!d || i < 0 || i >= d->n_meta) return NULL;
    return d->meta[i].key;
}

const char *mj_tensor_dict_meta_value(const mj_tensor_dict *d, int i) {
    if (!d || i < 0 || i >= d->n_meta) return NULL;
    return d->meta[i].value;
}
