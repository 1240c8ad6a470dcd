/* Helpers shared by the IR core files (graph, parse, verify, interp,
 * serialize); not part of the contract in ir.h. */
#ifndef MJ_IR_CORE_H
#define MJ_IR_CORE_H

#include "ir.h"

/* Longest leaf name (bytes, without the NUL). */
#define MJ_IR_MAX_NAME 1024

/* Rank 1..MJ_MAX_RANK, dims >= 0 or MJ_DIM_BATCH (only when allow_batch),
 * the product of the concrete dims <= MJ_MAX_NUMEL. On failure the message
 * is "<what> has <problem>" (MJ_ERR_SHAPE / MJ_ERR_LIMIT). */
mj_status mj_type_check(const mj_type *t, bool allow_batch, const char *what);
/* A tensor's shape as a type. */
void mj_type_of_tensor(const mj_tensor *t, mj_type *out);
/* true if name is printable ASCII, 1..MJ_IR_MAX_NAME bytes. */
bool mj_ir_name_ok(const char *name);

#endif
