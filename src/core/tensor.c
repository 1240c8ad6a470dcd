/* Tensors: construction, references, inspection, comparison, printing,
 * and the seeded generator. */
#include <math.h>
#include <string.h>

#include "internal.h"
#include "observer.h"

/* Tensor identities: unique for the process lifetime so the tracer can map
 * tensors to graph values without being fooled by reused addresses. */
static _Atomic uint64_t next_uid = 1;

/* ---- generator: xoshiro256** (Blackman & Vigna), splitmix64 seeding ---- */
static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void mj_rng_seed(mj_rng *rng, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t mj_rng_next(mj_rng *rng) {
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float mj_rng_uniform(mj_rng *rng) {
    return (float)(mj_rng_next(rng) >> 40) * 0x1p-24f;
}

float mj_rng_normal(mj_rng *rng) {
    /* Box-Muller; u1 in (0, 1] so the log is finite. */
    double u1 = ((double)(mj_rng_next(rng) >> 11) + 1.0) * 0x1p-53;
    double u2 = (double)(mj_rng_next(rng) >> 11) * 0x1p-53;
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

/* ---- construction ------------------------------------------------------ */
static mj_status tensor_alloc(mj_tensor **out, int rank, const int64_t *shape, float *borrowed,
                              bool zero) {
    if (!out) return mj_fail(MJ_ERR_INVALID, "output pointer is NULL");
    int64_t numel;
    MJ_TRY(mj_shape_numel(rank, shape, &numel));
    mj_tensor *t = mj_alloc(sizeof *t);
    if (!t) return MJ_ERR_NOMEM;
    if (borrowed) {
        t->data = borrowed;
    } else {
        t->data = mj_alloc_big((size_t)numel * sizeof(float), zero); /* numel is bounded */
        if (!t->data) {
            free(t);
            return mj_fail(MJ_ERR_NOMEM, "out of memory allocating a tensor of %lld floats",
                           (long long)numel);
        }
        t->owns_data = true;
    }
    t->rank = rank;
    memcpy(t->shape, shape, (size_t)rank * sizeof *shape);
    t->numel = numel;
    atomic_init(&t->refcount, 1);
    atomic_init(&t->version, 0);
    t->uid = atomic_fetch_add(&next_uid, 1);
    *out = t;
    return MJ_OK;
}

mj_status mj_tensor_new_uninit(mj_tensor **out, int rank, const int64_t *shape) {
    return tensor_alloc(out, rank, shape, NULL, false);
}

mj_status mj_tensor_zeros(mj_tensor **out, int rank, const int64_t *shape) {
    return tensor_alloc(out, rank, shape, NULL, true);
}

mj_status mj_tensor_full(mj_tensor **out, int rank, const int64_t *shape, float value) {
    mj_tensor *t = NULL;
    MJ_TRY(tensor_alloc(&t, rank, shape, NULL, false));
    for (int64_t i = 0; i < t->numel; i++) t->data[i] = value;
    *out = t;
    return MJ_OK;
}

mj_status mj_tensor_ones(mj_tensor **out, int rank, const int64_t *shape) {
    return mj_tensor_full(out, rank, shape, 1.0f);
}

mj_status mj_tensor_eye(mj_tensor **out, int64_t n) {
    int64_t shape[2] = {n, n};
    mj_tensor *t = NULL;
    MJ_TRY(tensor_alloc(&t, 2, shape, NULL, true));
    for (int64_t i = 0; i < n; i++) t->data[i * n + i] = 1.0f;
    *out = t;
    return MJ_OK;
}

mj_status mj_tensor_arange(mj_tensor **out, int64_t n) {
    mj_tensor *t = NULL;
    MJ_TRY(tensor_alloc(&t, 1, &n, NULL, false));
    for (int64_t i = 0; i < n; i++) t->data[i] = (float)i;
    *out = t;
    return MJ_OK;
}

/* rand (U[0, 1)) or, normal, randn. */
static mj_status tensor_random(mj_tensor **out, int rank, const int64_t *shape, mj_rng *rng, bool normal) {
    if (!rng) return mj_fail(MJ_ERR_INVALID, "%s: generator is NULL", normal ? "randn" : "rand");
    mj_tensor *t;
    MJ_TRY(tensor_alloc(&t, rank, shape, NULL, false));
    for (int64_t i = 0; i < t->numel; i++) t->data[i] = normal ? mj_rng_normal(rng) : mj_rng_uniform(rng);
    *out = t;
    return MJ_OK;
}

mj_status mj_tensor_rand(mj_tensor **out, int rank, const int64_t *shape, mj_rng *rng) {
    return tensor_random(out, rank, shape, rng, false);
}

mj_status mj_tensor_randn(mj_tensor **out, int rank, const int64_t *shape, mj_rng *rng) {
    return tensor_random(out, rank, shape, rng, true);
}

mj_status mj_tensor_from_data(mj_tensor **out, int rank, const int64_t *shape, const float *data) {
    if (!data) return mj_fail(MJ_ERR_INVALID, "from_data: data is NULL");
    mj_tensor *t = NULL;
    MJ_TRY(tensor_alloc(&t, rank, shape, NULL, false));
    memcpy(t->data, data, (size_t)t->numel * sizeof(float));
    *out = t;
    return MJ_OK;
}

mj_status mj_tensor_wrap(mj_tensor **out, int rank, const int64_t *shape, float *data) {
    if (!data) return mj_fail(MJ_ERR_INVALID, "wrap: data is NULL");
    return tensor_alloc(out, rank, shape, data, false);
}

mj_status mj_tensor_clone(mj_tensor **out, const mj_tensor *t) {
    if (!t) return mj_fail(MJ_ERR_INVALID, "clone: tensor is NULL");
    return mj_tensor_from_data(out, t->rank, t->shape, t->data);
}

mj_status mj_tensor_copy(mj_tensor *dst, const mj_tensor *src) {
    if (!dst || !src) return mj_fail(MJ_ERR_INVALID, "copy: tensor is NULL");
    if (!mj_shape_equal(dst->rank, dst->shape, src->rank, src->shape)) {
        char a[64], b[64];
        return mj_fail(MJ_ERR_SHAPE, "copy: destination has shape %s but source has shape %s",
                       mj_shape_str(a, sizeof a, dst->rank, dst->shape),
                       mj_shape_str(b, sizeof b, src->rank, src->shape));
    }
    if (dst != src) memmove(dst->data, src->data, (size_t)src->numel * sizeof(float));
    mj_tensor_touch(dst);
    return MJ_OK;
}

mj_tensor *mj_tensor_retain(mj_tensor *t) {
    if (t) atomic_fetch_add(&t->refcount, 1);
    return t;
}

void mj_tensor_release(mj_tensor *t) {
    if (!t) return;
    int before = atomic_fetch_sub(&t->refcount, 1);
    MJ_ASSERT(before >= 1);
    if (before == 1) {
        if (t->owns_data) free(t->data);
        free(t);
    }
}

/* ---- inspection -------------------------------------------------------- */
int mj_tensor_rank(const mj_tensor *t) { return t ? t->rank : 0; }

int64_t mj_tensor_dim(const mj_tensor *t, int i) {
    if (!t) return 0;
    if (i < 0) i += t->rank;
    if (i < 0 || i >= t->rank) return 0;
    return t->shape[i];
}

const int64_t *mj_tensor_shape(const mj_tensor *t) { return t ? t->shape : NULL; }
int64_t mj_tensor_numel(const mj_tensor *t) { return t ? t->numel : 0; }

/* The public accessors are how user code sees data, so they are where a
 * trace notices it (library code reads t->data and never warns). */
const float *mj_tensor_data(const mj_tensor *t) {
    if (!t) return NULL;
    mj_observe_data_access(t, false);
    return t->data;
}

float *mj_tensor_data_mut(mj_tensor *t) {
    if (!t) return NULL;
    mj_observe_data_access(t, true);
    mj_tensor_touch(t);
    return t->data;
}

void mj_tensor_touch(mj_tensor *t) {
    if (t) atomic_fetch_add(&t->version, 1);
}

uint64_t mj_tensor_version(const mj_tensor *t) {
    return t ? atomic_load(&((mj_tensor *)t)->version) : 0;
}

uint64_t mj_tensor_uid(const mj_tensor *t) { return t ? t->uid : 0; }

bool mj_shape_equal(int ra, const int64_t *a, int rb, const int64_t *b) {
    if (ra != rb) return false;
    for (int i = 0; i < ra; i++)
        if (a[i] != b[i]) return false;
    return true;
}

const char *mj_shape_str(char *buf, size_t size, int rank, const int64_t *shape) {
    if (!buf || size == 0) return buf;
    size_t used = 0;
    buf[0] = '\0';
    int n = snprintf(buf, size, "[");
    used = n > 0 ? (size_t)n : 0;
    for (int i = 0; i < rank && used < size; i++) {
        n = snprintf(buf + used, size - used, i ? ", %lld" : "%lld", (long long)shape[i]);
        if (n < 0) break;
        used += (size_t)n;
    }
    if (used < size) snprintf(buf + used, size - used, "]");
    return buf;
}

/* ---- printing ---------------------------------------------------------- */
static void print_row(FILE *f, const float *row, int64_t n) {
    fputc('[', f);
    for (int64_t j = 0; j < n; j++) {
        if (n > 8 && j == 4) {
            fputs(", ...", f); /* long rows: first four, last four */
            j = n - 4;
        }
        fprintf(f, "%s%.4f", j ? ", " : "", (double)row[j]);
    }
    fputc(']', f);
}

void mj_tensor_print(FILE *f, const mj_tensor *t, const char *name) {
    if (!f) return;
    if (!t) {
        fprintf(f, "%s(null)\n", name ? name : "");
        return;
    }
    char shape[96];
    mj_shape_str(shape, sizeof shape, t->rank, t->shape);
    mj_observe_data_access(t, false);
    fprintf(f, "%s%stensor(shape=%s\n", name ? name : "", name ? " = " : "", shape);
    int64_t cols = t->shape[t->rank - 1];
    int64_t rows = cols ? t->numel / cols : 0;
    for (int64_t i = 0; i < rows; i++) {
        if (rows > 8 && i == 4) {
            fputs("        ...\n", f);
            i = rows - 4;
        }
        fputs("       ", f);
        print_row(f, t->data + i * cols, cols);
        fputc('\n', f);
    }
    fputs("       )\n", f);
}

/* ---- comparison -------------------------------------------------------- */
/* A comparison hands C a decision about the data: inside a trace it is a
 * read like mj_tensor_data. */
static void note_reads(const mj_tensor *a, const mj_tensor *b) {
    mj_observe_data_access(a, false);
    mj_observe_data_access(b, false);
}

mj_compare mj_tensor_compare(const mj_tensor *actual, const mj_tensor *expected, double rtol,
                             double atol) {
    mj_compare c = {.first_mismatch = -1};
    if (!actual || !expected) return c;
    c.same_shape = mj_shape_equal(actual->rank, actual->shape, expected->rank, expected->shape);
    if (!c.same_shape) return c;
    note_reads(actual, expected);
    c.bit_identical = memcmp(actual->data, expected->data,
                             (size_t)actual->numel * sizeof(float)) == 0;
    for (int64_t i = 0; i < actual->numel; i++) {
        double a = actual->data[i], e = expected->data[i];
        bool ok;
        if (isnan(a) || isnan(e)) {
            ok = isnan(a) && isnan(e);
        } else if (isinf(a) || isinf(e)) {
            ok = a == e;
        } else {
            double diff = fabs(a - e);
            if (diff > c.max_abs) c.max_abs = diff;
            if (e != 0 && diff / fabs(e) > c.max_rel) c.max_rel = diff / fabs(e);
            ok = diff <= atol + rtol * fabs(e);
        }
        if (!ok) {
            if (c.first_mismatch < 0) c.first_mismatch = i;
            c.n_mismatch++;
        }
    }
    c.close = c.n_mismatch == 0;
    return c;
}

bool mj_tensor_allclose(const mj_tensor *actual, const mj_tensor *expected, double rtol,
                        double atol) {
    return mj_tensor_compare(actual, expected, rtol, atol).close;
}

bool mj_tensor_equal(const mj_tensor *a, const mj_tensor *b) {
    if (a && b) note_reads(a, b);
    return a && b && mj_shape_equal(a->rank, a->shape, b->rank, b->shape) &&
           memcmp(a->data, b->data, (size_t)a->numel * sizeof(float)) == 0;
}

void mj_compare_describe(const mj_compare *c, const mj_tensor *actual, const mj_tensor *expected,
                         char *buf, size_t size) {
    if (!buf || size == 0) return;
    if (!c || !actual || !expected) {
        snprintf(buf, size, "missing tensor");
        return;
    }
    if (!c->same_shape) {
        char a[64], e[64];
        snprintf(buf, size, "shape mismatch: %s vs expected %s",
                 mj_shape_str(a, sizeof a, actual->rank, actual->shape),
                 mj_shape_str(e, sizeof e, expected->rank, expected->shape));
        return;
    }
    if (c->close) {
        snprintf(buf, size, "%s (max abs %.3g, max rel %.3g)",
                 c->bit_identical ? "bit-identical" : "close", c->max_abs, c->max_rel);
        return;
    }
    /* Unravel the flat index into coordinates. */
    int64_t idx[MJ_MAX_RANK], rem = c->first_mismatch;
    for (int d = actual->rank - 1; d >= 0; d--) {
        idx[d] = actual->shape[d] ? rem % actual->shape[d] : 0;
        rem = actual->shape[d] ? rem / actual->shape[d] : 0;
    }
    char where[96];
    mj_shape_str(where, sizeof where, actual->rank, idx);
    snprintf(buf, size,
             "mismatch: %lld of %lld elements outside tolerance (max abs %.3g, max rel %.3g); "
             "first at %s: %.9g vs expected %.9g",
             (long long)c->n_mismatch, (long long)actual->numel, c->max_abs, c->max_rel, where,
             (double)actual->data[c->first_mismatch], (double)expected->data[c->first_mismatch]);
}
