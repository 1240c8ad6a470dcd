/* The canonical text form of a graph (docs/IR.md): parse(print(g)) gives
 * back g, and print(parse(text)) is the same text for printed text. */
#include <locale.h>
#include <stdarg.h>
#include <string.h>

#include "ir_core.h"

/* Consts up to this many elements carry their data inline. */
#define MJ_IR_INLINE_MAX 64

typedef struct strbuf {
    char *p;
    size_t len, cap;
    bool failed;
} strbuf;

static void sb_putn(strbuf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) {
            if (cap > SIZE_MAX / 2) {
                b->failed = true;
                return;
            }
            cap *= 2;
        }
        char *q = realloc(b->p, cap);
        if (!q) {
            b->failed = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(strbuf *b, const char *s) { sb_putn(b, s, strlen(s)); }

__attribute__((format(printf, 2, 3))) static void sb_printf(strbuf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = true;
        return;
    }
    if ((size_t)n < sizeof tmp) {
        sb_putn(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->failed = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_putn(b, big, (size_t)n);
    free(big);
}

static void sb_name(strbuf *b, const char *name) {
    sb_putn(b, "\"", 1);
    for (const char *p = name ? name : ""; *p; p++) {
        if (*p == '"' || *p == '\\') sb_putn(b, "\\", 1);
        sb_putn(b, p, 1);
    }
    sb_putn(b, "\"", 1);
}

/* The shape ops' attributes; a transpose of the last two dims prints none
 * (the form of files that predate the attributes). */
static void sb_shape_attrs(strbuf *b, const mj_node *n) {
    const mj_shape_attrs *sa = &n->sa;
    switch (n->op) {
    case MJ_OP_TRANSPOSE:
        if (sa->dim0 != n->type.rank - 2 || sa->dim1 != n->type.rank - 1)
            sb_printf(b, " {dim0=%d, dim1=%d}", (int)sa->dim0, (int)sa->dim1);
        break;
    case MJ_OP_PERMUTE:
        sb_puts(b, " {perm=[");
        for (int d = 0; d < n->type.rank; d++) sb_printf(b, "%s%d", d ? "," : "", (int)sa->perm[d]);
        sb_puts(b, "]}");
        break;
    case MJ_OP_SLICE:
        sb_printf(b, " {dim=%d, start=%lld, end=%lld}", (int)sa->dim, (long long)sa->start, (long long)sa->end);
        break;
    case MJ_OP_CAT: sb_printf(b, " {dim=%d}", (int)sa->dim); break;
    default: break; /* a subset: the other ops have no shape attributes */
    }
}

static void sb_node(strbuf *b, const mj_graph *g, int32_t i) {
    const mj_node *n = &g->nodes[i];
    char ts[96];
    if ((unsigned)n->op >= MJ_OP_COUNT) {
        sb_printf(b, "%%%d = <bad op %d>\n", (int)i, (int)n->op);
        return;
    }
    const mj_op_info *info = &mj_op_table[n->op];
    sb_printf(b, "%%%d = %s", (int)i, info->name);
    if (info->flags & MJ_OPF_LEAF) {
        sb_putn(b, " ", 1);
        sb_name(b, n->name);
    }
    for (int k = 0; k < n->n_operands && k < MJ_MAX_OPERANDS; k++)
        sb_printf(b, "%s%%%d", k ? ", " : " ", (int)n->operands[k]);
    if ((info->flags & MJ_OPF_ACT_ATTR) || n->act != MJ_ACT_NONE)
        sb_printf(b, " {act=%s}", mj_act_name(n->act));
    char attrs[256];
    mj_attrs_format(n->op, &n->attrs, attrs, sizeof attrs);
    sb_puts(b, attrs);
    sb_shape_attrs(b, n);
    sb_printf(b, " : %s", mj_type_str(ts, sizeof ts, &n->type));
    if (n->op == MJ_OP_CONST && n->tensor && n->tensor->numel <= MJ_IR_INLINE_MAX) {
        sb_puts(b, " = [");
        for (int64_t k = 0; k < n->tensor->numel; k++)
            sb_printf(b, "%s%a", k ? ", " : "", (double)n->tensor->data[k]);
        sb_puts(b, "]");
    }
    sb_putn(b, "\n", 1);
}

char *mj_graph_to_string(const mj_graph *g) {
    if (!g) return NULL;
    /* "%a" must not depend on the caller's LC_NUMERIC. */
    locale_t c_loc = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    locale_t old = c_loc ? uselocale(c_loc) : (locale_t)0;
    strbuf b = {0};
    sb_puts(&b, "maskjit-ir 1\n");
    for (int32_t i = 0; i < g->n_nodes; i++) sb_node(&b, g, i);
    sb_puts(&b, "return");
    for (int32_t i = 0; i < g->n_outputs; i++) sb_printf(&b, "%s%%%d", i ? ", " : " ", (int)g->outputs[i]);
    sb_puts(&b, "\n");
    if (c_loc) {
        uselocale(old);
        freelocale(c_loc);
    }
    if (b.failed) {
        free(b.p);
        mj_fail(MJ_ERR_NOMEM, "out of memory printing a graph");
        return NULL;
    }
    return b.p;
}

mj_status mj_graph_print(const mj_graph *g, FILE *f) {
    if (!g || !f) return mj_fail(MJ_ERR_INVALID, "mj_graph_print: NULL argument");
    char *s = mj_graph_to_string(g);
    if (!s) return MJ_ERR_NOMEM;
    size_t n = strlen(s);
    bool ok = fwrite(s, 1, n, f) == n;
    free(s);
    if (!ok) return mj_fail(MJ_ERR_IO, "printing a graph: write failed");
    return MJ_OK;
}
