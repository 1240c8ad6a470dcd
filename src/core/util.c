/* Errors, allocation and small helpers shared by the whole library. */
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "internal.h"

/* The last error message, one per thread: callers on different threads must
 * not see each other's messages (the one piece of mutable static state). */
static _Thread_local char tls_message[1024];

static const char *const status_names[MJ_STATUS_COUNT] = {
    [MJ_OK] = "MJ_OK",
    [MJ_ERR_INVALID] = "MJ_ERR_INVALID",
    [MJ_ERR_SHAPE] = "MJ_ERR_SHAPE",
    [MJ_ERR_KEY] = "MJ_ERR_KEY",
    [MJ_ERR_IO] = "MJ_ERR_IO",
    [MJ_ERR_FORMAT] = "MJ_ERR_FORMAT",
    [MJ_ERR_UNSUPPORTED] = "MJ_ERR_UNSUPPORTED",
    [MJ_ERR_STATE] = "MJ_ERR_STATE",
    [MJ_ERR_NOMEM] = "MJ_ERR_NOMEM",
    [MJ_ERR_LIMIT] = "MJ_ERR_LIMIT",
    [MJ_ERR_BACKEND] = "MJ_ERR_BACKEND",
    [MJ_ERR_MISMATCH] = "MJ_ERR_MISMATCH",
};
_Static_assert(MJ_STATUS_COUNT == 12, "update status_names");

const char *mj_status_name(mj_status s) {
    if ((unsigned)s >= MJ_STATUS_COUNT) return "MJ_ERR_UNKNOWN";
    return status_names[s];
}

const char *mj_last_error(void) { return tls_message; }

void mj_clear_error(void) { tls_message[0] = '\0'; }

mj_status mj_fail(mj_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_message, sizeof tls_message, fmt, ap);
    va_end(ap);
    return s;
}

mj_status mj_fail_prefix(mj_status s, const char *fmt, ...) {
    char prefix[512], old[sizeof tls_message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, tls_message, sizeof old);
    /* Assemble by hand: truncating a long message is intended here. */
    size_t cap = sizeof tls_message - 1, n = strnlen(prefix, cap);
    memcpy(tls_message, prefix, n);
    for (const char *p = ": "; *p && n < cap; p++) tls_message[n++] = *p;
    size_t rest = strnlen(old, sizeof old - 1);
    if (rest > cap - n) rest = cap - n;
    memcpy(tls_message + n, old, rest);
    tls_message[n + rest] = '\0';
    return s;
}

_Noreturn void mj_assert_fail(const char *what, const char *file, int line) {
    fprintf(stderr, "maskjit: internal error: %s:%d: assertion '%s' failed\n", file, line, what);
    abort();
}

void *mj_alloc(size_t size) {
    void *p = calloc(1, size ? size : 1);
    if (!p) mj_fail(MJ_ERR_NOMEM, "out of memory allocating %zu bytes", size);
    return p;
}

void *mj_alloc_array(size_t n, size_t elem) {
    size_t total;
    if (__builtin_mul_overflow(n, elem, &total)) {
        mj_fail(MJ_ERR_LIMIT, "allocation of %zu x %zu bytes overflows", n, elem);
        return NULL;
    }
    return mj_alloc(total);
}

/* From 2 MiB on, 2 MiB-aligned and offered to transparent huge pages (where
 * the kernel's policy is madvise). Two reasons: kernels streaming a large
 * weight stop at each 4 KiB page for the TLB and the prefetchers (W3's GEMM
 * ran ~5% faster), and first touch costs one fault per page, dear in a VM:
 * folding a frozen BERT layer's 28 MB of mask x weight took ~6 ms less, and
 * reading its 6 MB cache entry ~3 ms less, on huge pages. */
void *mj_alloc_big(size_t bytes, bool zero) {
    const size_t huge = (size_t)2 << 20;
    void *t = NULL;
    if (bytes >= huge && posix_memalign(&t, huge, bytes) == 0) {
#ifdef MADV_HUGEPAGE
        /* the whole huge pages only: a partial last one would take 2 MiB
         * of memory for its few bytes (advice only: 4 KiB pages if refused) */
        (void)madvise(t, bytes / huge * huge, MADV_HUGEPAGE);
#endif
        if (zero) memset(t, 0, bytes);
        return t;
    }
    t = zero ? calloc(1, bytes ? bytes : 1) : malloc(bytes ? bytes : 1);
    if (!t) mj_fail(MJ_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
    return t;
}

char *mj_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = mj_alloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

mj_status mj_grow(void **ptr, int32_t *cap, int32_t need, size_t elem) {
    if (need <= *cap) return MJ_OK;
    if (need < 0) return mj_fail(MJ_ERR_LIMIT, "container size overflow");
    int64_t ncap = *cap ? (int64_t)*cap * 2 : 8;
    while (ncap < need) ncap *= 2;
    if (ncap > INT32_MAX) ncap = INT32_MAX;
    size_t bytes;
    if (__builtin_mul_overflow((size_t)ncap, elem, &bytes))
        return mj_fail(MJ_ERR_LIMIT, "container size overflow");
    void *p = realloc(*ptr, bytes);
    if (!p) return mj_fail(MJ_ERR_NOMEM, "out of memory growing to %zu bytes", bytes);
    memset((char *)p + (size_t)*cap * elem, 0, (size_t)(ncap - *cap) * elem);
    *ptr = p;
    *cap = (int32_t)ncap;
    return MJ_OK;
}

mj_status mj_shape_numel(int rank, const int64_t *shape, int64_t *numel) {
    if (rank < 1 || rank > MJ_MAX_RANK)
        return mj_fail(MJ_ERR_INVALID, "rank %d is outside 1..%d", rank, MJ_MAX_RANK);
    if (!shape) return mj_fail(MJ_ERR_INVALID, "shape is NULL");
    int64_t n = 1;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 0)
            return mj_fail(MJ_ERR_INVALID, "dimension %d is negative (%lld)", i,
                           (long long)shape[i]);
        if (__builtin_mul_overflow(n, shape[i], &n) || n > MJ_MAX_NUMEL)
            return mj_fail(MJ_ERR_LIMIT, "shape has more than 2^40 elements");
    }
    *numel = n;
    return MJ_OK;
}

double mj_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
