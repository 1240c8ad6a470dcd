/* Graphviz export: one box per value (id, op, name, type), edges from each
 * operand to its user, and a marker per output. */
#include <string.h>

#include "ir_core.h"

/* Writes s for a DOT double-quoted string, escaping '"' and '\'. */
static void dot_str(FILE *f, const char *s) {
    for (; s && *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        fputc(*s, f);
    }
}

mj_status mj_graph_write_dot(const mj_graph *g, FILE *f) {
    if (!g || !f) return mj_fail(MJ_ERR_INVALID, "mj_graph_write_dot: NULL argument");
    fprintf(f, "digraph maskjit {\n  node [shape=box, fontname=\"monospace\"];\n");
    for (int32_t i = 0; i < g->n_nodes; i++) {
        const mj_node *n = &g->nodes[i];
        char ts[96];
        const char *opn = (unsigned)n->op < MJ_OP_COUNT ? mj_op_table[n->op].name : "?";
        fprintf(f, "  n%d [label=\"%%%d = %s", (int)i, (int)i, opn);
        if (n->act != MJ_ACT_NONE) fprintf(f, " {act=%s}", mj_act_name(n->act));
        if ((unsigned)n->op < MJ_OP_COUNT) {
            char attrs[256];
            mj_attrs_format(n->op, &n->attrs, attrs, sizeof attrs);
            fputs(attrs, f);
        }
        if (n->op == MJ_OP_TRANSPOSE) fprintf(f, " {dim0=%d, dim1=%d}", (int)n->sa.dim0, (int)n->sa.dim1);
        if (n->op == MJ_OP_PERMUTE)
            for (int d = 0; d < n->type.rank; d++) fprintf(f, "%s%d%s", d ? "," : " {perm=[", (int)n->sa.perm[d],
                                                          d == n->type.rank - 1 ? "]}" : "");
        if (n->op == MJ_OP_SLICE)
            fprintf(f, " {dim=%d, start=%lld, end=%lld}", (int)n->sa.dim, (long long)n->sa.start, (long long)n->sa.end);
        if (n->op == MJ_OP_CAT) fprintf(f, " {dim=%d}", (int)n->sa.dim);
        if (n->name) {
            fputs("\\n\\\"", f);
            dot_str(f, n->name);
            fputs("\\\"", f);
        }
        fprintf(f, "\\n%s\"", mj_type_str(ts, sizeof ts, &n->type));
        if (n->op == MJ_OP_INPUT) fputs(", style=filled, fillcolor=lightblue", f);
        else if (n->op == MJ_OP_PARAM) fputs(", style=filled, fillcolor=lightyellow", f);
        else if (n->op == MJ_OP_CONST) fputs(", style=filled, fillcolor=lightgrey", f);
        fputs("];\n", f);
        for (int k = 0; k < n->n_operands && k < MJ_MAX_OPERANDS; k++)
            fprintf(f, "  n%d -> n%d;\n", (int)n->operands[k], (int)i);
    }
    for (int32_t i = 0; i < g->n_outputs; i++)
        fprintf(f, "  out%d [label=\"output %d\", shape=plaintext];\n  n%d -> out%d;\n", (int)i, (int)i,
                (int)g->outputs[i], (int)i);
    fputs("}\n", f);
    if (ferror(f)) return mj_fail(MJ_ERR_IO, "writing DOT: write failed");
    return MJ_OK;
}
