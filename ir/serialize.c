/* torch.jit.save / load: one safetensors file holding every param and
 * const tensor under its name, and the IR text in the metadata. */
#include <string.h>

#include "ir_core.h"

#define MJ_IR_FORMAT "trace-v1"

mj_status mj_graph_save(const mj_graph *g, const char *path) {
    if (!g || !path) return mj_fail(MJ_ERR_INVALID, "mj_graph_save: NULL argument");
    mj_status s = mj_graph_verify(g);
    if (s != MJ_OK) return mj_fail_prefix(s, "saving %s", path);
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        if ((n->op == MJ_OP_PARAM || n->op == MJ_OP_CONST) && !n->tensor)
            return mj_fail(MJ_ERR_STATE, "saving %s: %s \"%s\" (%%%d) is not bound to a tensor", path,
                           mj_op_table[n->op].name, n->name, (int)i);
    }
    mj_tensor_dict *d = NULL;
    char *text = NULL;
    MJ_TRY(mj_tensor_dict_new(&d));
    for (int32_t i = 0; i < g->n_nodes && s == MJ_OK; i++) {
        const mj_node *n = &g->nodes[i];
        if (n->op != MJ_OP_PARAM && n->op != MJ_OP_CONST) continue;
        /* Params and consts are separate name spaces in the IR but share the file's. */
        if (mj_tensor_dict_get(d, n->name)) {
            s = mj_fail(MJ_ERR_KEY, "saving %s: a param and a const are both named \"%s\"", path, n->name);
            break;
        }
        s = mj_tensor_dict_set(d, n->name, n->tensor);
    }
    if (s == MJ_OK) {
        text = mj_graph_to_string(g);
        if (!text) s = MJ_ERR_NOMEM;
    }
    if (s == MJ_OK) s = mj_tensor_dict_set_meta(d, "maskjit.format", MJ_IR_FORMAT);
    if (s == MJ_OK) s = mj_tensor_dict_set_meta(d, "maskjit.ir", text);
    if (s == MJ_OK) s = mj_safetensors_save(path, d);
    free(text);
    mj_tensor_dict_free(d);
    return s;
}

mj_status mj_graph_load(const char *path, mj_graph **out) {
    if (!path || !out) return mj_fail(MJ_ERR_INVALID, "mj_graph_load: NULL argument");
    mj_tensor_dict *d = NULL;
    mj_graph *g = NULL;
    MJ_TRY(mj_safetensors_load(path, &d));
    mj_status s = MJ_OK;
    const char *fmt = mj_tensor_dict_get_meta(d, "maskjit.format");
    const char *text = mj_tensor_dict_get_meta(d, "maskjit.ir");
    if (!fmt) {
        s = mj_fail(MJ_ERR_FORMAT, "loading %s: no \"maskjit.format\" in the metadata (not a saved maskjit graph)",
                    path);
    } else if (strcmp(fmt, MJ_IR_FORMAT) != 0) {
        s = mj_fail(MJ_ERR_UNSUPPORTED, "loading %s: maskjit.format is \"%.64s\", expected \"%s\"", path, fmt,
                    MJ_IR_FORMAT);
    } else if (!text) {
        s = mj_fail(MJ_ERR_FORMAT, "loading %s: no \"maskjit.ir\" in the metadata", path);
    } else if ((s = mj_graph_parse(text, &g)) != MJ_OK) {
        mj_fail_prefix(s, "loading %s: maskjit.ir", path);
    } else if ((s = mj_graph_bind(g, d)) != MJ_OK || (s = mj_graph_verify(g)) != MJ_OK) {
        mj_fail_prefix(s, "loading %s", path);
    }
    mj_tensor_dict_free(d);
    if (s != MJ_OK) {
        mj_graph_free(g);
        return s;
    }
    *out = g;
    return MJ_OK;
}
