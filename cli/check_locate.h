/* Where `maskjit check` finds two runs of a graph parting: the first node
 * whose value differs, with its IR line and the module path and source line
 * the exporter stored for it. */
#ifndef MJ_CLI_CHECK_LOCATE_H
#define MJ_CLI_CHECK_LOCATE_H

#include <stdbool.h>

#include "maskjit.h"

/* Prefix of the tensors that hold PyTorch's value of each node: node %17's
 * value on the stored input "input<suffix>" is "maskjit.node.17<suffix>"
 * (tools/export_torch.py --intermediates). */
#define CHECK_NODE_PREFIX "maskjit.node."

typedef struct check_where {
    bool found;          /* a node differs                                   */
    int node;            /* its id (%node)                                   */
    char line[200];      /* "%17 = softmax %16 {dim=-1}"                      */
    char origin[200];    /* "encoder.attn, model.py:52", or ""               */
    bool bits;           /* within tolerance but not bit-identical           */
    double max_abs, tol; /* the node's max abs error and the tolerance there  */
    const char *against; /* "PyTorch" or "traced"                           */
    char note[200];      /* when !found: why no node was named               */
} check_where;

typedef struct check_locator check_locator;

/* The op nodes of g (every node but inputs, params and consts) and, from
 * file (an export; may be NULL), their origins. NULL on allocation failure. */
check_locator *check_locator_new(const mj_graph *g, const mj_tensor_dict *file);
void check_locator_free(check_locator *l);

/* True when file holds PyTorch's value of every op node for the stored
 * input `suffix` ("" or ".batchN"). */
bool check_locator_has_pytorch(const check_locator *l, const char *suffix);

/* Runs the path (the interpreter when o is NULL, else a compile of the
 * graph with o) on x with every op node as an output, and compares node
 * by node, in graph order, with PyTorch's stored values (suffix non-NULL)
 * or with the interpreter's (suffix NULL): bit for bit when exact, else
 * within check_tolerance of each node (rtol/atol < 0: not given) as check
 * compares outputs. Fills *w; MJ_OK unless a run or compile failed. */
mj_status check_locate(check_locator *l, mj_jit *jit, const mj_compile_options *o, int n_in,
                       const mj_tensor *const *x, const char *suffix, bool exact, double rtol,
                       double atol, check_where *w);

/* "first divergence at %17 = softmax %16 {dim=-1} (encoder.attn, model.py:52):
 * max abs 3e-3 vs tolerance 1e-5 (against PyTorch)", or the note. */
void check_where_describe(const check_where *w, char *buf, size_t size);

#endif
