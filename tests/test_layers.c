/* The layer rules (docs/design.md) and the observer hook kernels notify. */
#include <criterion/criterion.h>
#include <string.h>

#include "src/core/observer.h"
#include "test_util.h"

/* Includes and calls of the library follow the layers (tools/check_layers.sh
 * on this build: the tree's sources and the objects just linked). */
Test(layers, includes_and_calls_go_down_only, .timeout = 120) {
    char *out = NULL;
    int rc = mjt_shell(&out, "cd '" MJ_SOURCE_ROOT "' && tools/check_layers.sh '" MJ_BUILD_ROOT "' 2>&1");
    cr_assert_eq(rc, 0, "tools/check_layers.sh failed:\n%s", out);
    cr_assert(strstr(out, "check_layers: ok"), "%s", out);
    free(out);
}

typedef struct seen {
    int ops[MJ_OP_COUNT];
    int aliases, reads, writes;
    const mj_attrs *last_attrs;
} seen;

static mj_status see_op(void *ctx, mj_op op, int n_in, const mj_tensor *const *in, mj_act act,
                        const mj_attrs *attrs, const mj_shape_attrs *sa, const mj_tensor *out) {
    (void)n_in, (void)in, (void)act, (void)sa, (void)out;
    seen *s = ctx;
    s->ops[op]++;
    s->last_attrs = attrs;
    return MJ_OK;
}
static mj_status see_alias(void *ctx, const mj_tensor *in, const mj_tensor *out) {
    (void)in, (void)out;
    ((seen *)ctx)->aliases++;
    return MJ_OK;
}
static void see_access(void *ctx, const mj_tensor *t, bool write) {
    (void)t;
    if (write) ((seen *)ctx)->writes++;
    else ((seen *)ctx)->reads++;
}

/* Kernels report typed ops, the identity as an alias, the accessors user
 * reads; nothing while the observer is suspended (an internal call). */
Test(layers, observer_sees_typed_ops_aliases_and_reads) {
    seen s = {0};
    const mj_op_observer obs = {.ctx = &s, .op = see_op, .alias = see_alias, .data_access = see_access};
    mj_tensor *x, *y = NULL, *z = NULL, *w = NULL;
    OK(mj_tensor_ones(&x, 2, (const int64_t[]){2, 3}));
    cr_assert_null(mj_observer());
    cr_assert_null(mj_observer_install(&obs));
    OK(mj_activation(&y, MJ_ACT_RELU, x));
    OK(mj_activation(&z, MJ_ACT_NONE, x));
    (void)mj_tensor_data(y);
    (void)mj_tensor_data_mut(z);
    const mj_op_observer *saved = mj_observer_suspend();
    cr_assert_eq(saved, &obs);
    cr_assert_null(mj_observer());
    OK(mj_activation(&w, MJ_ACT_RELU, x));
    (void)mj_tensor_data(w);
    mj_observer_resume(saved);
    cr_assert_eq(mj_observer_install(NULL), &obs);
    cr_assert_eq(s.ops[MJ_OP_RELU], 1);
    int total = 0;
    for (int i = 0; i < MJ_OP_COUNT; i++) total += s.ops[i];
    cr_assert_eq(total, 1);
    cr_assert_eq(s.aliases, 1);
    cr_assert_eq(s.reads, 1);
    cr_assert_eq(s.writes, 1);
    mj_tensor_release(x), mj_tensor_release(y), mj_tensor_release(z), mj_tensor_release(w);
}

static mj_status refuse(void *ctx, mj_op op, int n_in, const mj_tensor *const *in, mj_act act,
                        const mj_attrs *attrs, const mj_shape_attrs *sa, const mj_tensor *out) {
    (void)ctx, (void)op, (void)n_in, (void)in, (void)act, (void)attrs, (void)sa, (void)out;
    return mj_fail(MJ_ERR_STATE, "observer says no");
}

/* An observer's error fails the op: no result handed out (and nothing
 * leaked: the ASan suite). */
Test(layers, observer_error_fails_the_op) {
    const mj_op_observer obs = {.op = refuse};
    mj_tensor *x, *y = NULL;
    OK(mj_tensor_ones(&x, 1, (const int64_t[]){4}));
    mj_observer_install(&obs);
    mj_status st = mj_activation(&y, MJ_ACT_GELU, x);
    mj_observer_install(NULL);
    cr_assert_eq(st, MJ_ERR_STATE);
    cr_assert_null(y);
    cr_assert_str_eq(mj_last_error(), "observer says no");
    mj_tensor_release(x);
}
