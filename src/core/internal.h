/* Internal to libmaskjit: tensor layout, error helpers, checked arithmetic. */
#ifndef MJ_INTERNAL_H
#define MJ_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "maskjit.h"

struct mj_tensor {
    int rank;
    int64_t shape[MJ_MAX_RANK];
    int64_t numel;
    float *data;
    bool owns_data;
    _Atomic int refcount;
    _Atomic uint64_t version;
    uint64_t uid;
};

/* ---- errors -------------------------------------------------------------
 * User errors: set the thread-local message and return the status.
 * Internal invariants: MJ_ASSERT, always on, prints file:line and aborts. */
mj_status mj_fail(mj_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefix the current message: "loading x.safetensors: <old message>". */
mj_status mj_fail_prefix(mj_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define MJ_ASSERT(cond)                                                              \
    do {                                                                             \
        if (!(cond)) mj_assert_fail(#cond, __FILE__, __LINE__);                      \
    } while (0)
_Noreturn void mj_assert_fail(const char *what, const char *file, int line);

/* Propagate a failing status. */
#define MJ_TRY(expr)                                                                 \
    do {                                                                             \
        mj_status mj_try_s_ = (expr);                                                \
        if (mj_try_s_ != MJ_OK) return mj_try_s_;                                    \
    } while (0)

/* ---- kernels cloned per CPU ------------------------------------------------ */
/* A function cloned for CPUs with and without FMA (an ifunc picks one at
 * load time); both clones compute the same bits, fmaf being exact either
 * way. Not under ThreadSanitizer: it instruments the ifunc's resolver, which
 * then runs before the sanitizer is set up and crashes the program at load
 * (tools/tsan.sh); there the default clone alone runs. */
#if defined(__SANITIZE_THREAD__)
#define MJ_FMA_CLONES
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MJ_FMA_CLONES
#endif
#endif
#ifndef MJ_FMA_CLONES
#define MJ_FMA_CLONES __attribute__((target_clones("fma", "default")))
#endif

/* ---- allocation (NULL on failure, message set) --------------------------- */
void *mj_alloc(size_t size);             /* zeroed */
void *mj_alloc_array(size_t n, size_t elem); /* zeroed, overflow checked */
/* malloc (zeroed if asked), on huge pages when large; free() frees it. */
void *mj_alloc_big(size_t bytes, bool zero);
/* Frees each malloc'd pointer listed (NULLs allowed): MJ_FREE_ALL(p->a, p->b). */
#define MJ_FREE_ALL(...) mj_free_n((void *[]){__VA_ARGS__}, sizeof((void *[]){__VA_ARGS__}) / sizeof(void *))
static inline void mj_free_n(void *const *p, size_t n) {
    for (size_t i = 0; i < n; i++) free(p[i]);
}
char *mj_strdup(const char *s);
/* Grows *ptr (array of elem-size items, capacity *cap) to hold need items. */
mj_status mj_grow(void **ptr, int32_t *cap, int32_t need, size_t elem);

/* ---- checked size arithmetic -------------------------------------------- */
static inline bool mj_mul_overflow_i64(int64_t a, int64_t b, int64_t *out) {
    return __builtin_mul_overflow(a, b, out);
}
/* Validates rank and dims (each >= 0 ... > 0 when !allow_zero) and
 * computes numel <= MJ_MAX_NUMEL; MJ_ERR_INVALID / MJ_ERR_LIMIT otherwise. */
mj_status mj_shape_numel(int rank, const int64_t *shape, int64_t *numel);

/* Callbacks (module and parametrization forwards, right_inverse) hand over
 * a new reference in *y. One that returns its argument without retaining it
 * (`*y = (mj_tensor *)x`, the habit of `return X`) would make the caller
 * free a tensor it does not own. The count tells the two apart: if r is x
 * and x's count did not move during the call, take the reference the
 * callback did not. */
static inline int mj_tensor_refs(const mj_tensor *t) {
    return atomic_load(&((mj_tensor *)t)->refcount);
}
static inline mj_tensor *mj_own_result(const mj_tensor *x, int refs_before, mj_tensor *r) {
    if (r && r == x && mj_tensor_refs(x) == refs_before) atomic_fetch_add(&r->refcount, 1);
    return r;
}

/* A tensor with uninitialised data (internal: ops overwrite all of it). */
mj_status mj_tensor_new_uninit(mj_tensor **out, int rank, const int64_t *shape);
bool mj_shape_equal(int ra, const int64_t *a, int rb, const int64_t *b);

/* The activations but none, in maskjit/acts.def's order ("relu, gelu, ...,
 * silu"): the one list that error messages print. */
#define MJ_ACT_LIST_MAX 128
void mj_act_list(char *buf, size_t size);

/* Eager ops report themselves to an observer (the tracer): observer.h. */

/* Internal access to a parametrization's buffers (for module.c / state dicts) */
int mj_parametrization_buffer_count(const mj_parametrization *p);
const char *mj_parametrization_buffer_name(const mj_parametrization *p, int i);
mj_tensor *mj_parametrization_buffer_at(const mj_parametrization *p, int i);
bool mj_parametrization_buffer_persistent(const mj_parametrization *p, int i);

/* ---- files the user names (src/io/outfile.c) ---------------------------------
 * open, write..., then commit (or abort). A regular file or a new name is
 * written to a temporary file next to it and renamed over it (symlinks
 * followed; a replaced file keeps its permission bits, a new one gets
 * 0666 & ~umask); a FIFO or character device is written through; a
 * directory, socket or block device is refused. Commit and abort free o. */
typedef struct mj_outfile {
    const char *path; /* as the caller named it (borrowed) */
    char *final;      /* the file that is replaced (links followed) */
    char *tmp;        /* temporary file; NULL when writing through */
    char *dir;        /* final's directory, fsync'd after the rename */
    int fd;
    bool through;     /* FIFO or character device */
} mj_outfile;
mj_status mj_outfile_open(mj_outfile *o, const char *path);
mj_status mj_outfile_write(mj_outfile *o, const void *buf, size_t n);
mj_status mj_outfile_commit(mj_outfile *o);
void mj_outfile_abort(mj_outfile *o);

/* Monotonic clock in seconds (for stats). */
double mj_now_seconds(void);

#endif
