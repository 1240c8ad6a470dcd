/* The first diverging node for `maskjit check` (see check_locate.h). Every
 * op node becomes an output of one clone of the graph (mj_graph_expose), so
 * one run (one compile for a compiled path) gives every node's value. */
#include "check_locate.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check_verdict.h"

struct check_locator {
    const mj_tensor_dict *file; /* borrowed: PyTorch's values, when stored */
    mj_graph *exposed;          /* NULL when the graph has no op node      */
    int n;                      /* op nodes                                */
    int *ids;                   /* their ids, in graph order               */
    char **lines;               /* their IR lines, type dropped            */
    json_t *origins, *sources;  /* "%id" -> module path / "file.py:line"   */
};

static json_t *meta_json(const mj_tensor_dict *file, const char *key) {
    const char *text = file ? mj_tensor_dict_get_meta(file, key) : NULL;
    json_t *j = text ? json_loads(text, 0, NULL) : NULL;
    if (j && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

check_locator *check_locator_new(const mj_graph *g, const mj_tensor_dict *file) {
    check_locator *l = calloc(1, sizeof *l);
    char *text = mj_graph_to_string(g);
    int cap = mj_graph_node_count(g);
    if (!l || !text || !(l->ids = calloc((size_t)cap + 1, sizeof *l->ids)) ||
        !(l->lines = calloc((size_t)cap + 1, sizeof *l->lines)))
        goto fail;
    l->file = file;
    /* "%5 = linear %0, %4, %3 : f32[B,8]" per node, in id order */
    for (char *s = text, *end; *s; s = end + (*end != '\0')) {
        end = s + strcspn(s, "\n");
        int id, skip = 0;
        if (sscanf(s, "%%%d = %n", &id, &skip) != 1 || skip == 0 || l->n >= cap) continue;
        const char *op = s + skip;
        size_t oplen = strcspn(op, " \n");
        if ((oplen == 5 && !strncmp(op, "input", 5)) || (oplen == 5 && !strncmp(op, "param", 5)) ||
            (oplen == 5 && !strncmp(op, "const", 5)))
            continue;
        size_t len = (size_t)(end - s);
        for (const char *c = s; c + 3 < end; c++)
            if (!strncmp(c, " : f", 4)) { /* the type: the message names the op */
                len = (size_t)(c - s);
                break;
            }
        if (!(l->lines[l->n] = strndup(s, len))) goto fail;
        l->ids[l->n++] = id;
    }
    free(text);
    text = NULL;
    if (l->n > 0 && mj_graph_expose(g, l->n, l->ids, &l->exposed) != MJ_OK) goto fail;
    l->origins = meta_json(file, "maskjit.origins");
    l->sources = meta_json(file, "maskjit.sources");
    return l;
fail:
    free(text);
    check_locator_free(l);
    return NULL;
}

void check_locator_free(check_locator *l) {
    if (!l) return;
    for (int i = 0; i < l->n; i++) free(l->lines[i]);
    free(l->lines);
    free(l->ids);
    mj_graph_free(l->exposed);
    json_decref(l->origins);
    json_decref(l->sources);
    free(l);
}

static const mj_tensor *pytorch_value(const check_locator *l, int id, const char *suffix) {
    char name[96];
    snprintf(name, sizeof name, CHECK_NODE_PREFIX "%d%s", id, suffix);
    return l->file ? mj_tensor_dict_get(l->file, name) : NULL;
}

bool check_locator_has_pytorch(const check_locator *l, const char *suffix) {
    if (!l || l->n == 0) return false;
    for (int i = 0; i < l->n; i++)
        if (!pytorch_value(l, l->ids[i], suffix)) return false;
    return true;
}

/* The max abs error and the tolerance (atol + rtol*|want|) at that element. */
static void worst(const mj_tensor *got, const mj_tensor *want, double rtol, double atol, double *err,
                  double *tol) {
    const float *a = mj_tensor_data(got), *b = mj_tensor_data(want);
    *err = 0;
    *tol = atol;
    for (int64_t i = 0; i < mj_tensor_numel(got); i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (isnan(a[i]) != isnan(b[i])) d = INFINITY;
        if (d > *err) {
            *err = d;
            *tol = atol + rtol * fabs((double)b[i]);
        }
    }
}

static void describe_node(const check_locator *l, int k, check_where *w) {
    w->found = true;
    w->node = l->ids[k];
    snprintf(w->line, sizeof w->line, "%s", l->lines[k]);
    char key[32];
    snprintf(key, sizeof key, "%%%d", w->node);
    const char *origin = json_string_value(json_object_get(l->origins, key));
    const char *source = json_string_value(json_object_get(l->sources, key));
    w->origin[0] = '\0';
    if (origin && *origin && source) snprintf(w->origin, sizeof w->origin, "%s, %s", origin, source);
    else if (origin && *origin) snprintf(w->origin, sizeof w->origin, "%s", origin);
    else if (source) snprintf(w->origin, sizeof w->origin, "%s", source);
}

mj_status check_locate(check_locator *l, mj_jit *jit, const mj_compile_options *o, int n_in,
                       const mj_tensor *const *x, const char *suffix, bool exact, double rtol,
                       double atol, check_where *w) {
    memset(w, 0, sizeof *w);
    w->against = suffix ? "PyTorch" : "traced";
    if (l->n == 0) {
        snprintf(w->note, sizeof w->note, "not localised: the graph has no op node");
        return MJ_OK;
    }
    mj_tensor **got = calloc((size_t)l->n, sizeof *got), **ref = calloc((size_t)l->n, sizeof *ref);
    mj_compiled *c = NULL;
    mj_status s = got && ref ? MJ_OK : MJ_ERR_NOMEM;
    if (s == MJ_OK && o) s = mj_jit_compile(jit, l->exposed, o, &c);
    if (s == MJ_OK)
        s = c ? mj_compiled_run_n(c, n_in, x, l->n, got) : mj_graph_run_n(l->exposed, n_in, x, l->n, got);
    if (s == MJ_OK && !suffix) s = mj_graph_run_n(l->exposed, n_in, x, l->n, ref);
    for (int k = 0; k < l->n && s == MJ_OK && !w->found; k++) {
        const mj_tensor *want = suffix ? pytorch_value(l, l->ids[k], suffix) : ref[k];
        if (!want) continue;
        int64_t batch = n_in > 0 && mj_tensor_rank(x[0]) >= 1 ? mj_tensor_dim(x[0], 0) : 1;
        mj_tolerance t = check_tolerance(l->exposed, k, batch, want, rtol, atol);
        mj_compare cmp = mj_tensor_compare(got[k], want, t.rtol, t.atol);
        bool same = exact ? check_exact_equal(got[k], want, NULL) : cmp.same_shape && cmp.close;
        if (same) continue;
        describe_node(l, k, w);
        w->bits = cmp.same_shape && cmp.close;
        if (cmp.same_shape) worst(got[k], want, t.rtol, t.atol, &w->max_abs, &w->tol);
        else w->max_abs = INFINITY;
    }
    if (s == MJ_OK && !w->found)
        snprintf(w->note, sizeof w->note,
                 "not localised: every node agrees with %s when each is an output (the difference "
                 "comes with how the whole graph is compiled)",
                 w->against);
    for (int k = 0; got && ref && k < l->n; k++) {
        mj_tensor_release(got[k]);
        mj_tensor_release(ref[k]);
    }
    free(got);
    free(ref);
    mj_compiled_free(c);
    return s;
}

void check_where_describe(const check_where *w, char *buf, size_t size) {
    if (!w->found) {
        snprintf(buf, size, "%s", w->note);
        return;
    }
    char where[220] = "";
    if (w->origin[0]) snprintf(where, sizeof where, " (%s)", w->origin);
    if (w->bits)
        snprintf(buf, size, "first divergence at %s%s: not bit-identical (max abs %.3g) against %s",
                 w->line, where, w->max_abs, w->against);
    else
        snprintf(buf, size, "first divergence at %s%s: max abs %.3g vs tolerance %.3g against %s",
                 w->line, where, w->max_abs, w->tol, w->against);
}
