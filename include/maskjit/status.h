/* maskjit/status.h — status codes and the per-thread error message.
 *
 * Every public function that can fail returns an mj_status. On failure it
 * leaves a readable message, retrievable on the same thread with
 * mj_last_error(), and changes nothing the caller owns.
 */
#ifndef MASKJIT_STATUS_H
#define MASKJIT_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mj_status {
    MJ_OK = 0,
    MJ_ERR_INVALID,     /* bad argument: NULL, out-of-range value, bad name     */
    MJ_ERR_SHAPE,       /* shapes do not fit together                           */
    MJ_ERR_KEY,         /* unknown, missing, duplicate or unexpected name       */
    MJ_ERR_IO,          /* the file system said no                              */
    MJ_ERR_FORMAT,      /* malformed file, IR text or model spec               */
    MJ_ERR_UNSUPPORTED, /* well formed but not supported (dtype, op)            */
    MJ_ERR_STATE,       /* not allowed now (e.g. tracing while cached)          */
    MJ_ERR_NOMEM,       /* allocation failed                                    */
    MJ_ERR_LIMIT,       /* a size limit was hit or size arithmetic overflowed   */
    MJ_ERR_BACKEND,     /* LLVM reported an error                               */
    MJ_ERR_MISMATCH,    /* a check compared outputs and they differ             */
    MJ_STATUS_COUNT
} mj_status;

/* "MJ_OK", "MJ_ERR_SHAPE", ... */
const char *mj_status_name(mj_status s);

/* Message of the last failure on this thread ("" if none). Valid until the
 * next failing maskjit call on this thread. */
const char *mj_last_error(void);
void mj_clear_error(void);

#ifdef __cplusplus
}
#endif
#endif
