/* The verdict of `maskjit check` (see check_verdict.h). */
#include "check_verdict.h"

#include <math.h>
#include <string.h>

bool check_exact_equal(const mj_tensor *got, const mj_tensor *want, int64_t *first) {
    if (first) *first = -1;
    if (!got || !want || mj_tensor_rank(got) != mj_tensor_rank(want)) return false;
    for (int d = 0; d < mj_tensor_rank(got); d++)
        if (mj_tensor_dim(got, d) != mj_tensor_dim(want, d)) return false;
    const float *a = mj_tensor_data(got), *b = mj_tensor_data(want);
    for (int64_t i = 0; i < mj_tensor_numel(got); i++) {
        if (isnan(a[i]) && isnan(b[i])) continue;
        if (memcmp(&a[i], &b[i], sizeof a[i]) != 0) {
            if (first) *first = i;
            return false;
        }
    }
    return true;
}

bool check_path_ok(const check_tally *t) {
    if (!t->ran) return true;
    bool own = t->must_be_exact ? t->exact : t->close;
    return own && (!t->has_expected || t->exp_close);
}

bool check_verdict(const check_tally *t, int n, bool *ok) {
    bool pass = true;
    for (int p = 0; p < n; p++) {
        ok[p] = check_path_ok(&t[p]);
        pass = pass && ok[p];
    }
    return pass;
}

mj_tolerance check_tolerance(const mj_graph *g, int out, int64_t batch, const mj_tensor *ref, double rtol,
                             double atol) {
    mj_tolerance t;
    /* fails only for an output or batch out of range, which the callers
     * never pass; the strictest bound then */
    if (mj_graph_output_tolerance(g, out, batch, ref, &t) != MJ_OK) t = mj_fast_tolerance(1, 0);
    if (rtol >= 0) t.rtol = rtol;
    if (atol >= 0) t.atol = atol;
    return t;
}
