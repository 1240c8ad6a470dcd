/* The pass pipeline: a straight list of passes run by name, the graph
 * verified after each (QBE style). MASKJIT_DUMP_PASSES=1 prints the IR
 * after every pass to stderr. The passes run on a copy that replaces the
 * graph only when every pass succeeded: on error the graph is unchanged. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"

typedef struct pass {
    const char *name;
    mj_status (*run)(mj_graph *g);
} pass;

static const pass passes[] = {
    {"dce", mj_pass_dce},   {"cse", mj_pass_cse},   {"fold", mj_pass_fold},
    {"simplify", mj_pass_simplify}, {"fuse", mj_pass_fuse}, {"fold_bn", mj_pass_fold_bn},
};
enum { N_PASSES = sizeof passes / sizeof passes[0], MAX_PIPELINE = 64 };

#define DEFAULT_PIPELINE "simplify,fold,simplify,cse,fuse,dce"

/* Splits the comma list into pass indices; MJ_ERR_INVALID on a bad name. */
static mj_status parse_pipeline(const char *spec, int *idx, int *n) {
    *n = 0;
    const char *p = spec;
    for (;;) {
        while (*p == ' ') p++;
        const char *e = p;
        while (*e && *e != ',') e++;
        const char *end = e;
        while (end > p && end[-1] == ' ') end--;
        size_t len = (size_t)(end - p);
        int found = -1;
        for (int k = 0; k < N_PASSES && found < 0; k++)
            if (strlen(passes[k].name) == len && strncmp(passes[k].name, p, len) == 0) found = k;
        if (found < 0)
            return mj_fail(MJ_ERR_INVALID,
                           "optimize: unknown pass '%.*s' in \"%s\" (valid passes: dce, cse, fold, "
                           "simplify, fuse, fold_bn; or \"default\" = " DEFAULT_PIPELINE ")",
                           (int)(len > 64 ? 64 : len), p, spec);
        if (*n >= MAX_PIPELINE)
            return mj_fail(MJ_ERR_LIMIT, "optimize: more than %d passes in \"%s\"", MAX_PIPELINE,
                           spec);
        idx[(*n)++] = found;
        if (!*e) return MJ_OK;
        p = e + 1;
    }
}

mj_status mj_graph_optimize(mj_graph *g, const char *spec) {
    if (!g) return mj_fail(MJ_ERR_INVALID, "optimize: graph is NULL");
    if (!spec || strcmp(spec, "default") == 0) spec = DEFAULT_PIPELINE;
    int idx[MAX_PIPELINE], n;
    MJ_TRY(parse_pipeline(spec, idx, &n));
    MJ_TRY(mj_graph_verify(g));

    const char *dump = getenv("MASKJIT_DUMP_PASSES");
    bool dumping = dump && dump[0] && strcmp(dump, "0") != 0;
    mj_graph *work = NULL;
    MJ_TRY(mj_graph_clone(g, &work));
    for (int i = 0; i < n; i++) {
        const pass *ps = &passes[idx[i]];
        mj_status s = ps->run(work);
        if (s != MJ_OK) {
            mj_graph_free(work);
            return mj_fail_prefix(s, "optimize: pass %s", ps->name);
        }
        s = mj_graph_verify(work);
        if (s != MJ_OK) { /* a pass produced an invalid graph: a bug here, not the user's */
            fprintf(stderr, "maskjit: pass %s produced an invalid graph: %s\n", ps->name,
                    mj_last_error());
            mj_graph_print(work, stderr);
            MJ_ASSERT(!"pass output verifies");
        }
        if (dumping) {
            fprintf(stderr, "# after pass %s\n", ps->name);
            mj_graph_print(work, stderr);
        }
    }
    mj_graph tmp = *g;
    *g = *work;
    *work = tmp;
    mj_graph_free(work);
    return MJ_OK;
}
