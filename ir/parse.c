/* Parser of the text form (docs/IR.md). Written for hostile input: every
 * read is bounds-checked against the NUL terminator, numbers are
 * overflow-checked, and every error is MJ_ERR_FORMAT "line:col: ...". */
#include <ctype.h>
#include <locale.h>
#include <stdarg.h>
#include <string.h>

#include "ir_core.h"

typedef struct parser {
    const char *s;   /* whole text, NUL-terminated          */
    size_t pos;      /* current byte                         */
    int line, col;   /* of pos, 1-based                      */
    mj_graph *g;
    locale_t c_loc;
    /* (op, name) set of leaves, open addressing, for duplicate names */
    int32_t *slots;
    size_t n_slots, n_used;
} parser;

static char peek(const parser *p) { return p->s[p->pos]; }

static void advance(parser *p) {
    if (!p->s[p->pos]) return;
    if (p->s[p->pos] == '\n') {
        p->line++;
        p->col = 1;
    } else {
        p->col++;
    }
    p->pos++;
}

static void skip_blanks(parser *p) {
    while (peek(p) == ' ' || peek(p) == '\t' || peek(p) == '\r') advance(p);
    if (peek(p) == '#')
        while (peek(p) && peek(p) != '\n') advance(p);
}

/* What is at the cursor, for "... found X" messages. */
static const char *found(const parser *p, char *buf, size_t size) {
    const char *c = p->s + p->pos;
    if (!*c) return "end of input";
    if (*c == '\n') return "end of line";
    size_t o = 0;
    buf[o++] = '\'';
    for (int k = 0; c[k] && c[k] != '\n' && c[k] != ' ' && c[k] != '\t' && k < 24 && o + 6 < size; k++) {
        unsigned char ch = (unsigned char)c[k];
        if (ch >= 0x20 && ch < 0x7f) buf[o++] = (char)ch;
        else o += (size_t)snprintf(buf + o, size - o, "\\x%02x", ch);
        if (k == 0 && strchr(",:=[]{}\"", ch)) break; /* a punctuation token on its own */
    }
    buf[o++] = '\'';
    buf[o] = '\0';
    return buf;
}

__attribute__((format(printf, 4, 5))) static mj_status err_at(const parser *p, int line, int col,
                                                              const char *fmt, ...) {
    (void)p;
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return mj_fail(MJ_ERR_FORMAT, "%d:%d: %s", line, col, msg);
}

static mj_status expected(const parser *p, const char *what) {
    char buf[160];
    return err_at(p, p->line, p->col, "expected %s, found %s", what, found(p, buf, sizeof buf));
}

/* an activation name that mj_act_parse rejects, or none where one is needed */
static mj_status bad_act(const parser *p, int line, int col, const char *name) {
    char list[MJ_ACT_LIST_MAX];
    mj_act_list(list, sizeof list);
    return err_at(p, line, col, "expected an activation (%s), found '%s'", list, name);
}

static mj_status expect_char(parser *p, char c, const char *what) {
    skip_blanks(p);
    if (peek(p) != c) return expected(p, what);
    advance(p);
    return MJ_OK;
}

/* A non-negative decimal integer <= limit. */
static mj_status parse_uint(parser *p, int64_t limit, const char *what, int64_t *out) {
    if (!isdigit((unsigned char)peek(p))) return expected(p, what);
    int line = p->line, col = p->col;
    int64_t v = 0;
    bool over = false;
    while (isdigit((unsigned char)peek(p))) {
        if (!over && (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, peek(p) - '0', &v) || v > limit))
            over = true;
        advance(p);
    }
    if (over) return err_at(p, line, col, "%s is too large (at most %lld)", what, (long long)limit);
    *out = v;
    return MJ_OK;
}

/* %N referring to an existing value (< n_nodes). */
static mj_status parse_ref(parser *p, int32_t *out) {
    skip_blanks(p);
    int line = p->line, col = p->col;
    if (peek(p) != '%') return expected(p, "a value '%N'");
    advance(p);
    int64_t v;
    MJ_TRY(parse_uint(p, INT32_MAX, "a value number", &v));
    if (v >= p->g->n_nodes)
        return err_at(p, line, col, "%%%lld is not defined before this line (operands must refer to earlier values %%0..%%%d)",
                      (long long)v, (int)p->g->n_nodes - 1);
    *out = (int32_t)v;
    return MJ_OK;
}

static mj_status parse_ident(parser *p, size_t *start, size_t *len) {
    skip_blanks(p);
    *start = p->pos;
    while (isalnum((unsigned char)peek(p)) || peek(p) == '_') advance(p);
    *len = p->pos - *start;
    return MJ_OK;
}

/* After a list item: at `close`, consumes it and sets *end; at ',',
 * consumes it (*end false); else "expected <what>". */
static mj_status list_next(parser *p, char close, const char *what, bool *end) {
    skip_blanks(p);
    *end = peek(p) == close;
    if (!*end && peek(p) != ',') return expected(p, what);
    advance(p);
    return MJ_OK;
}

/* The text [start, start + len) as a C string in buf, cut to size - 1
 * bytes; true when it was cut. */
static bool copy_token(const parser *p, size_t start, size_t len, char *buf, size_t size) {
    size_t k = len < size - 1 ? len : size - 1;
    memcpy(buf, p->s + start, k);
    buf[k] = '\0';
    return k < len;
}

/* A token of an attribute value or a number (letters, digits and . + - _):
 * its length; tok holds at most size - 1 bytes of it. */
static size_t value_token(parser *p, char *tok, size_t size) {
    skip_blanks(p);
    size_t start = p->pos;
    while (isalnum((unsigned char)peek(p)) || peek(p) == '.' || peek(p) == '+' || peek(p) == '-' || peek(p) == '_')
        advance(p);
    size_t len = p->pos - start;
    copy_token(p, start, len, tok, size);
    return len;
}

/* An attribute name (at *line, *col) into buf, cut to size - 1 bytes (*cut
 * tells, when not NULL). */
static mj_status parse_attr_name(parser *p, char *buf, size_t size, int *line, int *col, bool *cut) {
    size_t st, len;
    skip_blanks(p);
    *line = p->line;
    *col = p->col;
    parse_ident(p, &st, &len);
    if (len == 0) return expected(p, "an attribute name");
    bool c = copy_token(p, st, len, buf, size);
    if (cut) *cut = c;
    return MJ_OK;
}

/* "name" with \" and \\ escapes, printable ASCII; malloc'd. */
static mj_status parse_string(parser *p, char **out) {
    skip_blanks(p);
    if (peek(p) != '"') return expected(p, "a quoted name");
    int line = p->line, col = p->col;
    advance(p);
    char *buf = mj_alloc(MJ_IR_MAX_NAME + 1);
    if (!buf) return MJ_ERR_NOMEM;
    size_t n = 0;
    for (;;) {
        char c = peek(p);
        if (c == '\0' || c == '\n') {
            free(buf);
            return err_at(p, line, col, "unterminated string (expected a closing '\"' on this line)");
        }
        if (c == '"') {
            advance(p);
            break;
        }
        if (c == '\\') {
            advance(p);
            c = peek(p);
            if (c != '"' && c != '\\') {
                char f[64];
                free(buf);
                return err_at(p, p->line, p->col, "expected '\\\"' or '\\\\' escape, found %s", found(p, f, sizeof f));
            }
        } else if ((unsigned char)c < 0x20 || (unsigned char)c > 0x7e) {
            free(buf);
            return err_at(p, p->line, p->col, "expected a printable ASCII character in a name, found byte 0x%02x",
                          (unsigned char)c);
        }
        if (n >= MJ_IR_MAX_NAME) {
            free(buf);
            return err_at(p, line, col, "name is longer than %d bytes", MJ_IR_MAX_NAME);
        }
        buf[n++] = c;
        advance(p);
    }
    if (n == 0) {
        free(buf);
        return err_at(p, line, col, "expected a non-empty name, found \"\"");
    }
    buf[n] = '\0';
    *out = buf;
    return MJ_OK;
}

/* f32[d,...] with B for the batch dim. */
static mj_status parse_type(parser *p, mj_type *t, bool allow_batch) {
    skip_blanks(p);
    int line = p->line, col = p->col;
    if (strncmp(p->s + p->pos, "f32[", 4) != 0) return expected(p, "a type 'f32[...]'");
    for (int k = 0; k < 4; k++) advance(p);
    memset(t, 0, sizeof *t);
    for (;;) {
        skip_blanks(p);
        if (t->rank == MJ_MAX_RANK) return err_at(p, line, col, "type has more than %d dims", MJ_MAX_RANK);
        if (peek(p) == 'B') {
            if (!allow_batch)
                return err_at(p, p->line, p->col, "the batch dim B is only allowed in input and op types, found 'B'");
            advance(p);
            t->dims[t->rank++] = MJ_DIM_BATCH;
        } else {
            int64_t d;
            MJ_TRY(parse_uint(p, MJ_MAX_NUMEL, "a dim (a size or B)", &d));
            t->dims[t->rank++] = d;
        }
        bool end;
        MJ_TRY(list_next(p, ']', "',' or ']' in a type", &end));
        if (end) break;
    }
    if (mj_type_check(t, allow_batch, "type") != MJ_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", mj_last_error());
        return err_at(p, line, col, "%s", msg);
    }
    return MJ_OK;
}

/* [f, f, ...] floats as printed by "%a" (any strtof syntax accepted). */
static mj_status parse_data(parser *p, float **out, int64_t *count) {
    MJ_TRY(expect_char(p, '[', "'['"));
    float *v = NULL;
    int32_t n = 0, cap = 0;
    mj_status s = MJ_OK;
    skip_blanks(p);
    if (peek(p) == ']') {
        advance(p);
        *out = NULL;
        *count = 0;
        return MJ_OK;
    }
    for (;;) {
        skip_blanks(p);
        int line = p->line, col = p->col;
        char tok[64];
        size_t len = value_token(p, tok, sizeof tok);
        if (len == 0) {
            s = expected(p, "a number");
            break;
        }
        if (len >= sizeof tok) {
            s = err_at(p, line, col, "number is longer than %zu characters", sizeof tok - 1);
            break;
        }
        char *end = NULL;
        float f = strtof_l(tok, &end, p->c_loc);
        if (end != tok + len) {
            s = err_at(p, line, col, "expected a number, found '%s'", tok);
            break;
        }
        if (n == INT32_MAX - 1) {
            s = err_at(p, line, col, "too many numbers");
            break;
        }
        if ((s = mj_grow((void **)&v, &cap, n + 1, sizeof *v)) != MJ_OK) break;
        v[n++] = f;
        bool last;
        if ((s = list_next(p, ']', "',' or ']' in const data", &last)) != MJ_OK || last) break;
    }
    if (s != MJ_OK) {
        free(v);
        return s;
    }
    *out = v;
    *count = n;
    return MJ_OK;
}

static mj_status expect_eol(parser *p) {
    skip_blanks(p);
    if (peek(p) == '\n') {
        advance(p);
        return MJ_OK;
    }
    if (peek(p) == '\0') return MJ_OK;
    return expected(p, "end of line");
}

/* Skips blank and comment lines. */
static void skip_empty_lines(parser *p) {
    for (;;) {
        skip_blanks(p);
        if (peek(p) != '\n') return;
        advance(p);
    }
}

/* ---- duplicate leaf names ---------------------------------------------------- */

static uint64_t name_hash(mj_op op, const char *s) {
    uint64_t h = 1469598103934665603ull ^ (uint64_t)op;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Returns the id of an earlier leaf with the same op and name, or -1 after
 * inserting node id. */
static mj_status name_insert(parser *p, int32_t id, int32_t *dup) {
    const mj_node *n = &p->g->nodes[id];
    *dup = -1;
    if (2 * (p->n_used + 1) > p->n_slots) {
        size_t ns = p->n_slots ? p->n_slots * 2 : 64;
        int32_t *sl = mj_alloc_array(ns, sizeof *sl);
        if (!sl) return MJ_ERR_NOMEM;
        for (size_t i = 0; i < ns; i++) sl[i] = -1;
        for (size_t i = 0; i < p->n_slots; i++) {
            if (p->slots[i] < 0) continue;
            const mj_node *m = &p->g->nodes[p->slots[i]];
            size_t h = (size_t)name_hash(m->op, m->name) & (ns - 1);
            while (sl[h] >= 0) h = (h + 1) & (ns - 1);
            sl[h] = p->slots[i];
        }
        free(p->slots);
        p->slots = sl;
        p->n_slots = ns;
    }
    size_t h = (size_t)name_hash(n->op, n->name) & (p->n_slots - 1);
    while (p->slots[h] >= 0) {
        const mj_node *m = &p->g->nodes[p->slots[h]];
        if (m->op == n->op && strcmp(m->name, n->name) == 0) {
            *dup = p->slots[h];
            return MJ_OK;
        }
        h = (h + 1) & (p->n_slots - 1);
    }
    p->slots[h] = id;
    p->n_used++;
    return MJ_OK;
}

/* ---- statements ------------------------------------------------------------------ */

static mj_status rewrap(const parser *p, mj_status s, int line, int col) {
    if (s == MJ_ERR_NOMEM) return s;
    char msg[900];
    snprintf(msg, sizeof msg, "%s", mj_last_error());
    return err_at(p, line, col, "%s", msg);
}

static mj_status parse_leaf(parser *p, mj_op op) {
    char *name = NULL;
    mj_tensor *t = NULL;
    float *data = NULL;
    mj_status s;
    int name_line, name_col;
    skip_blanks(p);
    name_line = p->line;
    name_col = p->col;
    if ((s = parse_string(p, &name)) != MJ_OK) return s;
    mj_type type;
    int tl, tc;
    if ((s = expect_char(p, ':', "':' and a type")) != MJ_OK) goto out;
    skip_blanks(p);
    tl = p->line;
    tc = p->col;
    if ((s = parse_type(p, &type, op == MJ_OP_INPUT)) != MJ_OK) goto out;
    skip_blanks(p);
    if (op == MJ_OP_CONST && peek(p) == '=') {
        advance(p);
        skip_blanks(p);
        int dl = p->line, dc = p->col;
        int64_t count, numel = 1;
        if ((s = parse_data(p, &data, &count)) != MJ_OK) goto out;
        for (int i = 0; i < type.rank; i++) numel *= type.dims[i]; /* checked by parse_type */
        if (count != numel) {
            char ts[96];
            s = err_at(p, dl, dc, "const data has %lld numbers but the type %s has %lld elements", (long long)count,
                       mj_type_str(ts, sizeof ts, &type), (long long)numel);
            goto out;
        }
        static const float dummy = 0.0f;
        if ((s = mj_tensor_from_data(&t, type.rank, type.dims, data ? data : &dummy)) != MJ_OK) {
            s = rewrap(p, s, dl, dc);
            goto out;
        }
    }
    (void)tl;
    (void)tc;
    if ((s = expect_eol(p)) != MJ_OK) goto out;
    int32_t id;
    if ((s = mj_graph_add_leaf(p->g, op, name, &type, t, &id)) != MJ_OK) {
        s = rewrap(p, s, name_line, name_col);
        goto out;
    }
    int32_t dup;
    if ((s = name_insert(p, id, &dup)) != MJ_OK) goto out;
    if (dup >= 0) {
        s = err_at(p, name_line, name_col, "duplicate %s name \"%s\" (already %%%d)", mj_op_table[op].name, name,
                   (int)dup);
        goto out;
    }
out:
    mj_tensor_release(t);
    free(data);
    free(name);
    return s;
}

/* ["{" name "=" value ("," name "=" value)* "}"]: {act=...} on the ops that
 * take it, the op's attributes of src/core/attrs.c otherwise (each at most once,
 * the required ones present, the others defaulting to PyTorch's). */
static mj_status parse_attrs(parser *p, mj_op op, mj_act *act, mj_attrs *attrs) {
    const mj_op_info *info = &mj_op_table[op];
    int na;
    const mj_attr_spec *spec = mj_op_attrs(op, &na);
    bool seen_act = false, seen[8] = {false};
    skip_blanks(p);
    int al = p->line, ac = p->col;
    if (peek(p) == '{') {
        if (!(info->flags & MJ_OPF_ACT_ATTR) && na == 0)
            return err_at(p, al, ac, "%s takes no {act=...} or other attributes, found '{'", info->name);
        advance(p);
        for (;;) {
            char name[32];
            int nl, nc;
            bool cut;
            MJ_TRY(parse_attr_name(p, name, sizeof name, &nl, &nc, &cut));
            /* a cut name (31 characters or more) matches none */
            int which = -1;
            for (int i = 0; i < na; i++)
                if (!cut && strcmp(spec[i].name, name) == 0) which = i;
            bool is_act = (info->flags & MJ_OPF_ACT_ATTR) && strcmp(name, "act") == 0;
            if (which < 0 && !is_act) {
                char names[160] = "";
                size_t o = 0;
                if (info->flags & MJ_OPF_ACT_ATTR) o += (size_t)snprintf(names + o, sizeof names - o, "act");
                for (int i = 0; i < na && o < sizeof names; i++)
                    o += (size_t)snprintf(names + o, sizeof names - o, "%s%s", o ? ", " : "", spec[i].name);
                return err_at(p, nl, nc, "%s has no attribute '%s%s' (its attributes: %s)", info->name, name,
                              cut ? "..." : "", names);
            }
            if (is_act ? seen_act : seen[which]) return err_at(p, nl, nc, "attribute '%s' is given twice", name);
            MJ_TRY(expect_char(p, '=', "'='"));
            skip_blanks(p);
            int vl = p->line, vc = p->col;
            if (!is_act && (spec[which].kind == MJ_ATTR_PAIR || spec[which].kind == MJ_ATTR_INT)) {
                /* "[h,w]" or an integer, each 0..2^20 (the ranges the ops take are checked with the types) */
                seen[which] = true;
                int64_t v0, v1;
                int32_t *slot = &attrs->i[spec[which].slot];
                if (spec[which].kind == MJ_ATTR_INT) {
                    MJ_TRY(parse_uint(p, MJ_ATTR_INT_MAX, "an integer attribute", &v0));
                    slot[0] = (int32_t)v0;
                } else {
                    MJ_TRY(expect_char(p, '[', "'[' starting a pair [h,w]"));
                    skip_blanks(p);
                    MJ_TRY(parse_uint(p, MJ_ATTR_INT_MAX, "an entry of a pair [h,w]", &v0));
                    MJ_TRY(expect_char(p, ',', "',' in a pair [h,w]"));
                    skip_blanks(p);
                    MJ_TRY(parse_uint(p, MJ_ATTR_INT_MAX, "an entry of a pair [h,w]", &v1));
                    MJ_TRY(expect_char(p, ']', "']' ending a pair [h,w]"));
                    slot[0] = (int32_t)v0;
                    slot[1] = (int32_t)v1;
                }
                bool end;
                MJ_TRY(list_next(p, '}', "',' or '}' in attributes", &end));
                if (end) break;
                continue;
            }
            char tok[64];
            size_t vlen = value_token(p, tok, sizeof tok);
            if (vlen == 0) return expected(p, "an attribute value");
            if (vlen >= sizeof tok) return err_at(p, vl, vc, "attribute value is longer than %zu characters", sizeof tok - 1);
            if (is_act) {
                seen_act = true;
                if (mj_act_parse(tok, act) != MJ_OK || *act == MJ_ACT_NONE)
                    return bad_act(p, vl, vc, tok);
            } else {
                seen[which] = true;
                char *end = NULL;
                switch (spec[which].kind) {
                case MJ_ATTR_DIM: {
                    long v = strtol(tok, &end, 10);
                    if (end != tok + vlen || v < -MJ_MAX_RANK || v >= MJ_MAX_RANK)
                        return err_at(p, vl, vc, "expected a dim (an integer from %d to %d), found '%s'", -MJ_MAX_RANK,
                                      MJ_MAX_RANK - 1, tok);
                    attrs->dim = (int32_t)v;
                    break;
                }
                case MJ_ATTR_KEEPDIM:
                case MJ_ATTR_BOOL:
                    if (strcmp(tok, "true") != 0 && strcmp(tok, "false") != 0)
                        return err_at(p, vl, vc, "expected true or false, found '%s'", tok);
                    if (spec[which].kind == MJ_ATTR_BOOL) attrs->i[spec[which].slot] = tok[0] == 't';
                    else attrs->keepdim = tok[0] == 't';
                    break;
                case MJ_ATTR_INT:
                case MJ_ATTR_PAIR: MJ_ASSERT(!"parsed above"); break;
                case MJ_ATTR_FLOAT: {
                    float f = strtof_l(tok, &end, p->c_loc);
                    if (end != tok + vlen) return err_at(p, vl, vc, "expected a number, found '%s'", tok);
                    attrs->f[spec[which].slot] = f;
                    break;
                }
                }
            }
            bool end;
            MJ_TRY(list_next(p, '}', "',' or '}' in attributes", &end));
            if (end) break;
        }
    }
    if ((info->flags & MJ_OPF_ACT_ATTR) && !seen_act) return expected(p, "an {act=...} attribute");
    for (int i = 0; i < na; i++)
        if (spec[i].required && !seen[i]) {
            if (peek(p) == ':' || peek(p) == '{')
                return err_at(p, al, ac, "%s needs the attribute {%s=...}", info->name, spec[i].name);
            return err_at(p, p->line, p->col, "%s needs the attribute {%s=...}", info->name, spec[i].name);
        }
    return MJ_OK;
}

static bool is_shape_attr_op(mj_op op) {
    return op == MJ_OP_TRANSPOSE || op == MJ_OP_PERMUTE || op == MJ_OP_SLICE || op == MJ_OP_CAT;
}

/* ---- shape attributes: {perm=[...]}, {dim0=, dim1=}, {dim=, start=, end=} ---- */

enum { SA_PERM = 1, SA_DIM0 = 2, SA_DIM1 = 4, SA_DIM = 8, SA_START = 16, SA_END = 32 };

static mj_status parse_int(parser *p, int64_t lo, int64_t hi, const char *what, int64_t *out) {
    int l = p->line, c = p->col;
    bool neg = peek(p) == '-';
    if (neg) advance(p);
    int64_t v;
    MJ_TRY(parse_uint(p, INT64_MAX / 2, what, &v));
    if (neg) v = -v;
    if (v < lo || v > hi)
        return err_at(p, l, c, "%s is %lld, outside %lld..%lld", what, (long long)v, (long long)lo, (long long)hi);
    *out = v;
    return MJ_OK;
}

static mj_status parse_shape_attr(parser *p, mj_op op, const char *key, int kl, int kc, mj_shape_attrs *sa,
                                  unsigned *seen, int *n_perm) {
    static const struct {
        const char *key;
        unsigned bit;
        uint64_t ops; /* bit per op that takes it */
    } keys[] = {
        {"perm", SA_PERM, UINT64_C(1) << MJ_OP_PERMUTE},
        {"dim0", SA_DIM0, UINT64_C(1) << MJ_OP_TRANSPOSE},
        {"dim1", SA_DIM1, UINT64_C(1) << MJ_OP_TRANSPOSE},
        {"dim", SA_DIM, UINT64_C(1) << MJ_OP_SLICE | UINT64_C(1) << MJ_OP_CAT},
        {"start", SA_START, UINT64_C(1) << MJ_OP_SLICE},
        {"end", SA_END, UINT64_C(1) << MJ_OP_SLICE},
    };
    _Static_assert(MJ_OP_COUNT <= 64, "op bit sets");
    unsigned bit = 0;
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        if (strcmp(key, keys[k].key) == 0 && (keys[k].ops >> op & 1u)) bit = keys[k].bit;
    if (!bit) return err_at(p, kl, kc, "%s takes no attribute '%s'", mj_op_table[op].name, key);
    if (*seen & bit) return err_at(p, kl, kc, "attribute '%s' given twice", key);
    *seen |= bit;
    int64_t v;
    switch (bit) {
    case SA_PERM: {
        MJ_TRY(expect_char(p, '[', "'[' starting the perm list"));
        for (int d = 0;; d++) {
            skip_blanks(p);
            if (d == MJ_MAX_RANK) return expected(p, "']' (a perm has at most 4 entries)");
            MJ_TRY(parse_int(p, -MJ_MAX_RANK, MJ_MAX_RANK - 1, "a perm entry", &v));
            sa->perm[d] = (int8_t)v;
            *n_perm = d + 1;
            skip_blanks(p);
            if (peek(p) == ',') {
                advance(p);
                continue;
            }
            MJ_TRY(expect_char(p, ']', "',' or ']' in the perm list"));
            return MJ_OK;
        }
    }
    case SA_DIM0:
    case SA_DIM1:
    case SA_DIM:
        MJ_TRY(parse_int(p, -MJ_MAX_RANK, MJ_MAX_RANK - 1, key, &v));
        *(bit == SA_DIM0 ? &sa->dim0 : bit == SA_DIM1 ? &sa->dim1 : &sa->dim) = (int8_t)v;
        return MJ_OK;
    default:
        MJ_TRY(parse_int(p, 0, MJ_MAX_NUMEL, key, &v));
        *(bit == SA_START ? &sa->start : &sa->end) = v;
        return MJ_OK;
    }
}

/* Required attributes present; a transpose names both dims or neither. */
static mj_status check_shape_attrs(parser *p, mj_op op, unsigned seen, mj_shape_attrs *sa) {
    unsigned need = op == MJ_OP_PERMUTE ? SA_PERM
                    : op == MJ_OP_SLICE ? SA_DIM | SA_START | SA_END
                    : op == MJ_OP_CAT   ? SA_DIM
                                        : 0;
    if (op == MJ_OP_TRANSPOSE && seen) need = SA_DIM0 | SA_DIM1;
    if ((seen & need) != need) {
        const char *what = op == MJ_OP_PERMUTE ? "{perm=[...]}"
                           : op == MJ_OP_SLICE ? "{dim=D, start=S, end=E}"
                           : op == MJ_OP_CAT   ? "{dim=D}"
                                               : "both dim0 and dim1";
        return expected(p, what);
    }
    if (op == MJ_OP_TRANSPOSE && seen && sa->dim0 == sa->dim1)
        return expected(p, "two different dims in {dim0=, dim1=}");
    return MJ_OK;
}

static mj_status parse_op(parser *p, mj_op op, int op_line, int op_col) {
    const mj_op_info *info = &mj_op_table[op];
    int32_t operands[MJ_MAX_OPERANDS];
    int n = 0;
    skip_blanks(p);
    if (peek(p) == '%') {
        for (;;) {
            int32_t v = -1;
            skip_blanks(p);
            int l = p->line, c = p->col;
            MJ_TRY(parse_ref(p, &v));
            if (n == info->max_operands)
                return err_at(p, l, c, "%s takes at most %d operands, found more", info->name, info->max_operands);
            operands[n++] = v;
            skip_blanks(p);
            if (peek(p) != ',') break;
            advance(p);
        }
    }
    if (n < info->min_operands) {
        char buf[160];
        return err_at(p, p->line, p->col, "%s takes at least %d operands, found %d (then %s)", info->name,
                      info->min_operands, n, found(p, buf, sizeof buf));
    }
    mj_act act = MJ_ACT_NONE;
    mj_attrs attrs = mj_attrs_default(op);
    mj_shape_attrs sa;
    memset(&sa, 0, sizeof sa);
    /* Each op parses its own attributes: the shape ops theirs (mj_node.sa),
     * every other op {act=...} and those of src/core/attrs.c (mj_node.attrs). */
    if (is_shape_attr_op(op)) {
        bool has_act = false;
        unsigned seen = 0; /* shape attributes given, bit per key */
        int n_perm = 0, al = 0, ac = 0;
        skip_blanks(p);
        if (peek(p) == '{') {
            int bl = p->line, bc = p->col;
            al = bl;
            ac = bc;
            advance(p);
            for (;;) {
                char key[16];
                int kl, kc;
                MJ_TRY(parse_attr_name(p, key, sizeof key, &kl, &kc, NULL));
                MJ_TRY(expect_char(p, '=', "'='"));
                skip_blanks(p);
                if (strcmp(key, "act") == 0) {
                    if (!(info->flags & MJ_OPF_ACT_ATTR))
                        return err_at(p, bl, bc, "%s takes no {act=...} attribute, found '{'", info->name);
                    if (has_act) return err_at(p, kl, kc, "attribute 'act' given twice");
                    has_act = true;
                    int nl = p->line, nc = p->col;
                    size_t st, len;
                    parse_ident(p, &st, &len);
                    char an[32];
                    if (len == 0) return expected(p, "an activation name");
                    copy_token(p, st, len, an, sizeof an);
                    if (mj_act_parse(an, &act) != MJ_OK || act == MJ_ACT_NONE)
                        return bad_act(p, nl, nc, an);
                } else {
                    MJ_TRY(parse_shape_attr(p, op, key, kl, kc, &sa, &seen, &n_perm));
                }
                skip_blanks(p);
                if (peek(p) == ',') {
                    advance(p);
                    continue;
                }
                MJ_TRY(expect_char(p, '}', "',' or '}'"));
                break;
            }
        }
        if ((info->flags & MJ_OPF_ACT_ATTR) && !has_act) return expected(p, "an {act=...} attribute");
        MJ_TRY(check_shape_attrs(p, op, seen, &sa));
        if (op == MJ_OP_PERMUTE && n > 0 && n_perm != p->g->nodes[operands[0]].type.rank)
            return err_at(p, al, ac, "permute: perm has %d entries but %%%d has rank %d", n_perm, (int)operands[0],
                          p->g->nodes[operands[0]].type.rank);
    } else {
        MJ_TRY(parse_attrs(p, op, &act, &attrs));
    }
    MJ_TRY(expect_char(p, ':', "':' and a type"));
    skip_blanks(p);
    int tl = p->line, tc = p->col;
    mj_type type;
    MJ_TRY(parse_type(p, &type, true));
    MJ_TRY(expect_eol(p));
    mj_status s = mj_graph_add_op_full(p->g, op, n, operands, act, &attrs, &sa, &type, NULL);
    if (s != MJ_OK) {
        (void)op_line;
        (void)op_col;
        return rewrap(p, s, tl, tc);
    }
    return MJ_OK;
}

static mj_status parse_node(parser *p) {
    int line = p->line, col = p->col;
    MJ_ASSERT(peek(p) == '%');
    advance(p);
    int64_t id;
    MJ_TRY(parse_uint(p, INT32_MAX, "a value number", &id));
    if (id != p->g->n_nodes)
        return err_at(p, line, col, "expected %%%d (value ids must be %%0, %%1, ... in order), found %%%lld",
                      (int)p->g->n_nodes, (long long)id);
    if (p->g->n_nodes >= MJ_MAX_NODES) return err_at(p, line, col, "more than %d nodes", MJ_MAX_NODES);
    MJ_TRY(expect_char(p, '=', "'='"));
    size_t st, len;
    skip_blanks(p);
    int ol = p->line, oc = p->col;
    parse_ident(p, &st, &len);
    if (len == 0) return expected(p, "an op name");
    mj_op op = mj_op_from_name(p->s + st, len);
    if (op == MJ_OP_COUNT) {
        char nm[40];
        bool cut = copy_token(p, st, len, nm, sizeof nm);
        return err_at(p, ol, oc, "expected an op name, found unknown op '%s%s'", nm, cut ? "..." : "");
    }
    if (mj_op_table[op].flags & MJ_OPF_LEAF) return parse_leaf(p, op);
    return parse_op(p, op, ol, oc);
}

static mj_status parse_all(parser *p) {
    skip_empty_lines(p);
    if (strncmp(p->s + p->pos, "maskjit-ir", 10) != 0) return expected(p, "the header 'maskjit-ir 1'");
    for (int k = 0; k < 10; k++) advance(p);
    skip_blanks(p);
    if (peek(p) != '1') return expected(p, "version 1 after 'maskjit-ir'");
    advance(p);
    MJ_TRY(expect_eol(p));
    for (;;) {
        skip_empty_lines(p);
        if (peek(p) == '%') {
            MJ_TRY(parse_node(p));
            continue;
        }
        if (strncmp(p->s + p->pos, "return", 6) == 0 && !isalnum((unsigned char)p->s[p->pos + 6]) &&
            p->s[p->pos + 6] != '_')
            break;
        return expected(p, "a node '%N = ...' or 'return'");
    }
    int rl = p->line, rc = p->col;
    for (int k = 0; k < 6; k++) advance(p);
    for (;;) {
        int32_t v = -1;
        MJ_TRY(parse_ref(p, &v));
        MJ_TRY(mj_graph_add_output(p->g, v));
        skip_blanks(p);
        if (peek(p) != ',') break;
        advance(p);
    }
    MJ_TRY(expect_eol(p));
    skip_empty_lines(p);
    if (peek(p) != '\0') return expected(p, "end of input after 'return'");
    if (mj_graph_verify(p->g) != MJ_OK) return rewrap(p, MJ_ERR_FORMAT, rl, rc);
    return MJ_OK;
}

mj_status mj_graph_parse(const char *text, mj_graph **out) {
    if (!text || !out) return mj_fail(MJ_ERR_INVALID, "mj_graph_parse: NULL argument");
    parser p = {.s = text, .line = 1, .col = 1};
    MJ_TRY(mj_graph_new(&p.g));
    p.c_loc = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    mj_status s = p.c_loc ? parse_all(&p) : mj_fail(MJ_ERR_NOMEM, "parse: cannot create the C locale");
    if (p.c_loc) freelocale(p.c_loc);
    free(p.slots);
    if (s != MJ_OK) {
        mj_graph_free(p.g);
        return s;
    }
    *out = p.g;
    return MJ_OK;
}
