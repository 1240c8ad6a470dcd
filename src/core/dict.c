/* Ordered name -> tensor map with string metadata (named_parameters, state
 * dicts, safetensors). Entries stay in insertion order; a hash index over
 * the keys keeps lookups O(1), so a file with many tensors (a hostile
 * safetensors header) does not make loading quadratic. */
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

/* Open addressing with linear probing: slots hold entry index + 1, 0 is
 * empty; at most half full. Rebuilt on growth and removal. */
typedef struct key_index {
    int32_t *slots;
    int32_t n_slots; /* power of two, or 0 */
} key_index;

struct mj_tensor_dict {
    dict_item *items;
    int32_t n, cap;
    key_index items_ix;
    meta_item *meta;
    int32_t n_meta, cap_meta;
    key_index meta_ix;
};

static uint64_t hash_key(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

/* Entry i's key; entries are dict_item or meta_item,
 * both starting with `char *key`, so a stride and the array suffice. */
static const char *key_at(const void *arr, size_t stride, int32_t i) {
    return *(char *const *)((const char *)arr + (size_t)i * stride);
}

static int32_t index_find(const key_index *ix, const void *arr, size_t stride, const char *key) {
    if (ix->n_slots == 0) return -1;
    uint32_t mask = (uint32_t)ix->n_slots - 1;
    for (uint32_t h = (uint32_t)hash_key(key) & mask;; h = (h + 1) & mask) {
        int32_t e = ix->slots[h];
        if (e == 0) return -1;
        if (strcmp(key_at(arr, stride, e - 1), key) == 0) return e - 1;
    }
}

static void index_put(key_index *ix, const char *key, int32_t i) {
    uint32_t mask = (uint32_t)ix->n_slots - 1;
    uint32_t h = (uint32_t)hash_key(key) & mask;
    while (ix->slots[h] != 0) h = (h + 1) & mask;
    ix->slots[h] = i + 1;
}

/* Makes room for n entries (rebuilding from arr[0..n_now)). */
static mj_status index_reserve(key_index *ix, const void *arr, size_t stride, int32_t n_now,
                               int32_t n) {
    if ((int64_t)n * 2 <= ix->n_slots) return MJ_OK;
    int64_t want = 16;
    while (want < (int64_t)n * 2) want *= 2;
    if (want > INT32_MAX / 2) return mj_fail(MJ_ERR_LIMIT, "tensor dict too large");
    int32_t *slots = calloc((size_t)want, sizeof *slots);
    if (!slots) return mj_fail(MJ_ERR_NOMEM, "out of memory growing a tensor dict");
    free(ix->slots);
    ix->slots = slots;
    ix->n_slots = (int32_t)want;
    for (int32_t i = 0; i < n_now; i++) index_put(ix, key_at(arr, stride, i), i);
    return MJ_OK;
}

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
    free(d->items_ix.slots);
    free(d->meta_ix.slots);
    free(d);
}

static int32_t find_key(const mj_tensor_dict *d, const char *key) {
    return index_find(&d->items_ix, d->items, sizeof *d->items, key);
}

static int32_t find_meta(const mj_tensor_dict *d, const char *key) {
    return index_find(&d->meta_ix, d->meta, sizeof *d->meta, key);
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
    MJ_TRY(index_reserve(&d->items_ix, d->items, sizeof *d->items, d->n, d->n + 1));
    char *k = mj_strdup(key);
    if (!k) return MJ_ERR_NOMEM;
    d->items[d->n].key = k;
    d->items[d->n].t = mj_tensor_retain(t);
    index_put(&d->items_ix, k, d->n);
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
    /* Entries after i moved: rebuild the index (removal is rare). Cannot
     * fail for lack of memory: the old slot array is reused when it fits. */
    memset(d->items_ix.slots, 0, (size_t)d->items_ix.n_slots * sizeof *d->items_ix.slots);
    for (int32_t j = 0; j < d->n; j++) index_put(&d->items_ix, d->items[j].key, j);
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
    if (s == MJ_OK)
        s = index_reserve(&d->meta_ix, d->meta, sizeof *d->meta, d->n_meta, d->n_meta + 1);
    if (s != MJ_OK) {
        free(k);
        free(v);
        return s;
    }
    d->meta[d->n_meta].key = k;
    d->meta[d->n_meta].value = v;
    index_put(&d->meta_ix, k, d->n_meta);
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
