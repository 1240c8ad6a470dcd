/* The observer of eager ops: how a layer above core (the tracer) watches the
 * kernels without the kernels knowing it, as PyTorch's dispatcher keeps its
 * kernels ignorant of torch.jit.trace. Core owns the hook; the tracer
 * installs one for the thread that runs the traced forward. */
#ifndef MJ_OBSERVER_H
#define MJ_OBSERVER_H

#include <stdbool.h>

#include "internal.h"
#include "op.h"

typedef struct mj_op_observer {
    void *ctx;
    /* An eager op computed out from in[0..n_in) (attrs, sa NULL: the op's
     * defaults). Anything but MJ_OK (message set) fails the op, which then
     * releases out. */
    mj_status (*op)(void *ctx, mj_op op, int n_in, const mj_tensor *const *in, mj_act act,
                    const mj_attrs *attrs, const mj_shape_attrs *sa, const mj_tensor *out);
    /* out holds in's values and no op computes it (the identity activation,
     * a transpose of a dim with itself): the same value, a new tensor. */
    mj_status (*alias)(void *ctx, const mj_tensor *in, const mj_tensor *out);
    /* User code reads t's data into C (write: gets it to write) through a
     * public accessor; library code reads t->data and is never reported. */
    void (*data_access)(void *ctx, const mj_tensor *t, bool write);
} mj_op_observer;

/* This thread's observer (NULL: none; then the kernels report nothing). */
const mj_op_observer *mj_observer(void);
/* Installs o (NULL: none) on this thread; returns the one it replaces, which
 * the caller puts back when done. */
const mj_op_observer *mj_observer_install(const mj_op_observer *o);

/* An internal call: kernels that a library component runs for itself (the
 * interpreter, constant folding, the JIT's prologue) compute no op of the
 * user's forward, so the observer does not see them:
 *     const mj_op_observer *saved = mj_observer_suspend();
 *     ... kernels ...
 *     mj_observer_resume(saved);                                         */
static inline const mj_op_observer *mj_observer_suspend(void) { return mj_observer_install(NULL); }
static inline void mj_observer_resume(const mj_op_observer *saved) { mj_observer_install(saved); }

/* What kernels and accessors call: no-ops (MJ_OK) without an observer. */
mj_status mj_observe_op(mj_op op, int n_in, const mj_tensor *const *in, mj_act act, const mj_attrs *attrs,
                        const mj_shape_attrs *sa, const mj_tensor *out);
mj_status mj_observe_alias(const mj_tensor *in, const mj_tensor *out);
/* How a kernel hands its new result y to the caller: the observer sees the
 * op, then *out = y; if the observer fails, y is released and *out kept. */
mj_status mj_observe_result(mj_tensor **out, mj_tensor *y, mj_op op, int n_in, const mj_tensor *const *in,
                            mj_act act, const mj_attrs *attrs, const mj_shape_attrs *sa);
void mj_observe_data_access(const mj_tensor *t, bool write);

#endif
