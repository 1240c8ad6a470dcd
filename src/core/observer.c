/* The observer hook of src/core/observer.h. */
#include "observer.h"

/* The one justified piece of mutable static state: the observer of this
 * thread (eager ops have no other way to find it). */
static _Thread_local const mj_op_observer *tls_observer;

const mj_op_observer *mj_observer(void) { return tls_observer; }

const mj_op_observer *mj_observer_install(const mj_op_observer *o) {
    const mj_op_observer *prev = tls_observer;
    tls_observer = o;
    return prev;
}

mj_status mj_observe_op(mj_op op, int n_in, const mj_tensor *const *in, mj_act act, const mj_attrs *attrs,
                        const mj_shape_attrs *sa, const mj_tensor *out) {
    const mj_op_observer *o = tls_observer;
    MJ_ASSERT((unsigned)op < MJ_OP_COUNT);
    return o && o->op ? o->op(o->ctx, op, n_in, in, act, attrs, sa, out) : MJ_OK;
}

mj_status mj_observe_alias(const mj_tensor *in, const mj_tensor *out) {
    const mj_op_observer *o = tls_observer;
    return o && o->alias ? o->alias(o->ctx, in, out) : MJ_OK;
}

void mj_observe_data_access(const mj_tensor *t, bool write) {
    const mj_op_observer *o = tls_observer;
    if (o && o->data_access) o->data_access(o->ctx, t, write);
}

mj_status mj_observe_result(mj_tensor **out, mj_tensor *y, mj_op op, int n_in, const mj_tensor *const *in,
                            mj_act act, const mj_attrs *attrs, const mj_shape_attrs *sa) {
    mj_status s = mj_observe_op(op, n_in, in, act, attrs, sa, y);
    if (s != MJ_OK) {
        mj_tensor_release(y);
        return s;
    }
    *out = y;
    return MJ_OK;
}
