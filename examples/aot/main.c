/* A program that runs a model compiled ahead of time by `maskjit aot`:
 * it includes the generated header and links the generated object, and
 * needs nothing else (no LLVM, no maskjit) but libc and libm.
 *
 *   aot-example [BATCH] [--write-input FILE]
 *
 * Runs BATCH rows (default 3) of a fixed input and prints the outputs, one
 * row per line, with 9 significant digits (enough to give back the exact
 * floats). --write-input also saves the input as tensor "input" in a
 * safetensors file, for `maskjit run MODEL --mode compiled --input FILE`. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "seed.h" /* written by maskjit aot --name seed */

/* [B, d1, ...] with B = batch: the element count. */
static int64_t numel(const int64_t *dims, int rank, int64_t batch) {
    int64_t n = 1;
    for (int i = 0; i < rank; i++) n *= dims[i] < 0 ? batch : dims[i];
    return n;
}

/* The smallest safetensors file: 8-byte header length, JSON, raw floats. */
static int write_input(const char *path, const float *x, int64_t batch, int64_t n) {
    char json[256];
    int len = snprintf(json, sizeof json,
                       "{\"input\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],\"data_offsets\":[0,%lld]}}",
                       (long long)batch, (long long)(n / batch), (long long)(n * 4));
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    uint64_t hl = (uint64_t)len;
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(hl >> (8 * i));
    int bad = fwrite(le, 1, 8, f) != 8 || fwrite(json, 1, (size_t)len, f) != (size_t)len ||
              fwrite(x, 4, (size_t)n, f) != (size_t)n; /* little-endian host */
    return fclose(f) != 0 || bad;
}

int main(int argc, char **argv) {
    int64_t batch = 3;
    const char *input_file = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--write-input") == 0 && i + 1 < argc) input_file = argv[++i];
        else batch = atoll(argv[i]);
    }
    if (seed_input_rank[0] != 2) return 2; /* this example feeds [B, features] */
    int64_t nx = numel(seed_input_dims[0], seed_input_rank[0], batch);
    int64_t ny = numel(seed_output_dims[0], seed_output_rank[0], batch);
    float *x = malloc((size_t)(nx > 0 ? nx : 1) * sizeof *x), *y = malloc((size_t)(ny > 0 ? ny : 1) * sizeof *y);
    if (!x || !y) return 1;
    for (int64_t i = 0; i < nx; i++) x[i] = (float)((i * 7) % 11 - 5) / 4.0f; /* exact in float */

    const float *const inputs[seed_NUM_INPUTS] = {x};
    float *const outputs[seed_NUM_OUTPUTS] = {y};
    int rc = seed_run(batch, inputs, outputs);
    if (rc != seed_OK) {
        fprintf(stderr, "aot-example: %s\n", seed_strerror(rc));
        return 1;
    }
    int64_t cols = ny / batch;
    for (int64_t r = 0; r < batch; r++)
        for (int64_t j = 0; j < cols; j++) printf("%.9g%c", (double)y[r * cols + j], j + 1 < cols ? ' ' : '\n');
    if (input_file && write_input(input_file, x, batch, nx) != 0) {
        fprintf(stderr, "aot-example: cannot write %s\n", input_file);
        return 1;
    }
    free(x);
    free(y);
    return 0;
}
