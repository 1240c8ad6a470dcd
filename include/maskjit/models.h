/* maskjit/models.h — ready-made models named by a spec string (used by the
 * CLI, the benchmarks and the tests).
 *
 *   "mut"          the seed's ModelUnderTest with bias: linear -> seq.0 -> seq.1,
 *                  all Linear(16, 16); weights 1, 2, 3 and biases 10, 20, 30
 *   "mut-nobias"   the same without biases
 *   "mlp:IN,H1,...,OUT[:act=NAME][:bias=0|1]"
 *                  nn.Sequential of Linear layers with the activation between
 *                  them (none after the last), named like PyTorch: "0.weight",
 *                  "2.weight", ... (default act=relu, bias=1; seeded init).
 *                  NAME is any name of maskjit/acts.def (mj_act_parse; the
 *                  table is the one list, so it is not repeated here).
 */
#ifndef MASKJIT_MODELS_H
#define MASKJIT_MODELS_H

#include <stdbool.h>
#include <stdint.h>

#include "maskjit/module.h"
#include "maskjit/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The seed's ModelUnderTest (forward: linear, then seq), fixed weights. */
mj_status mj_model_under_test_new(mj_module **out, bool bias);

/* Builds the model a spec names; weights from rng (seeded default init) for
 * "mlp:", fixed for "mut". MJ_ERR_FORMAT with a message on a bad spec. */
mj_status mj_model_from_spec(const char *spec, mj_rng *rng, mj_module **out);

/* Registers FakeSparsity masks on the Linear layers of the tree: from
 * `masks` by key "<mod>.parametrizations.weight.0.mask" (and
 * "...bias.0.mask" for a bias, as torch.ao.pruning can make) when present,
 * else (density < 1) random unstructured weight masks of that density from
 * rng, else nothing. A weight mask of shape [out] (one flag per output row)
 * registers FakeStructuredSparsity; one of the tensor's shape FakeSparsity.
 * A key of the form "<path>.parametrizations.<name>.<i>.mask" that fits no
 * weight or bias of a Linear at the next free index <i> is MJ_ERR_KEY
 * naming it. All or nothing: on error the model is unchanged. */
mj_status mj_model_apply_masks(mj_module *m, const mj_tensor_dict *masks, double density,
                               mj_rng *rng);

#ifdef __cplusplus
}
#endif
#endif
