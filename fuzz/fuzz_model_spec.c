/* libFuzzer harness: mj_model_from_spec on arbitrary text (+ free).
 *
 * A spec either builds a model or fails with a status and a message.
 *
 * Building the weights costs sum(w[i] * w[i+1]) random draws: a valid spec
 * such as "mlp:16,6516,6551" (43M weights) takes seconds under ASan, and
 * "mlp:65536,65536" would want 16 GiB (now refused). That is the size the user asked for, not
 * a parser bug, so specs whose widths (as far as a crude scan can tell) ask
 * for more than MAX_WEIGHTS are skipped; invalid widths (> 65536, overflow)
 * still reach the parser, which rejects them before allocating anything.
 * The total-size limit (2^28, src/nn/models.c) is tested in tests/test_reliability.c. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "maskjit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_WEIGHTS (UINT64_C(1) << 20)

/* Upper bound of the weights "mlp:W0,W1,..." would build, counting only
 * widths the parser accepts (<= 65536); 0 when spec is not an mlp. */
static uint64_t mlp_weights(const char *spec) {
    if (strncmp(spec, "mlp:", 4) != 0) return 0;
    uint64_t total = 0, prev = 0;
    const char *p = spec + 4;
    for (;;) {
        uint64_t w = 0;
        const char *start = p;
        while (*p >= '0' && *p <= '9') {
            if (w <= 65536) w = w * 10 + (uint64_t)(*p - '0');
            p++;
        }
        if (p == start || w > 65536) return total; /* the parser rejects it */
        total += prev * w;
        prev = w;
        if (*p != ',') return total;
        p++;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *spec = malloc(size + 1);
    if (!spec) return 0;
    memcpy(spec, data, size);
    spec[size] = '\0';
    if (mlp_weights(spec) > MAX_WEIGHTS) {
        free(spec);
        return -1; /* too big to build in a fuzz iteration; keep it out of the corpus */
    }
    mj_rng rng;
    mj_rng_seed(&rng, 1);
    mj_module *m = NULL;
    mj_clear_error();
    mj_status s = mj_model_from_spec(spec, &rng, &m);
    free(spec);
    if (s != MJ_OK) {
        if (mj_last_error()[0] == '\0' || m != NULL) abort();
        return 0;
    }
    if (!m) abort();
    mj_module_free(m);
    return 0;
}
