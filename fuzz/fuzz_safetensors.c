/* libFuzzer harness: mj_safetensors_parse on arbitrary bytes.
 *
 * Every input must either parse or fail with a status and a message; on
 * success every tensor must be readable (ASan checks the bytes) and its size
 * must be one the input could have held. Crashes, leaks, UB and aborts are
 * findings (fuzz/README.md). */
#include <stdint.h>
#include <stdlib.h>

#include "maskjit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mj_tensor_dict *d = NULL;
    mj_clear_error();
    mj_status s = mj_safetensors_parse(data, size, &d);
    if (s != MJ_OK) {
        /* a failure must say why */
        if (mj_last_error()[0] == '\0' || d != NULL) abort();
        return 0;
    }
    if (!d) abort();
    uint64_t total = 0;
    for (int i = 0; i < mj_tensor_dict_size(d); i++) {
        const mj_tensor *t = mj_tensor_dict_value(d, i);
        const char *k = mj_tensor_dict_key(d, i);
        if (!t || !k || !k[0]) abort();
        int64_t n = mj_tensor_numel(t);
        const float *p = mj_tensor_data(t);
        volatile float acc = 0.0f;
        for (int64_t j = 0; j < n; j++) acc += p[j]; /* touch every element */
        (void)acc;
        /* the smallest element we read (F16/BF16) takes 2 bytes of input */
        total += (uint64_t)n * 2;
        if (total > size) abort();
    }
    for (int i = 0; i < mj_tensor_dict_meta_size(d); i++)
        if (!mj_tensor_dict_meta_key(d, i) || !mj_tensor_dict_meta_value(d, i)) abort();
    mj_tensor_dict_free(d);
    return 0;
}
