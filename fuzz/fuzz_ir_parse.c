/* libFuzzer harness: mj_graph_parse on arbitrary text.
 *
 * A text that parses must verify, print, re-parse, and print to the same
 * text again (the round trip docs/IR.md promises): anything else aborts, so
 * libFuzzer reports it as a crash with the input that caused it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "maskjit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *a, const char *b) {
    fprintf(stderr, "fuzz_ir_parse: %s\n", what);
    if (a) fprintf(stderr, "---- first\n%s\n", a);
    if (b) fprintf(stderr, "---- second\n%s\n", b);
    fprintf(stderr, "---- last error: %s\n", mj_last_error());
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    mj_graph *g = NULL;
    mj_clear_error();
    mj_status s = mj_graph_parse(text, &g);
    free(text);
    if (s != MJ_OK) {
        if (mj_last_error()[0] == '\0') fail("parse failed without a message", NULL, NULL);
        return 0;
    }
    if (mj_graph_verify(g) != MJ_OK) fail("a parsed graph does not verify", NULL, NULL);
    char *p1 = mj_graph_to_string(g);
    if (!p1) fail("printing a parsed graph failed", NULL, NULL);
    mj_graph *g2 = NULL;
    if (mj_graph_parse(p1, &g2) != MJ_OK) fail("re-parsing the printed graph failed", p1, NULL);
    char *p2 = mj_graph_to_string(g2);
    if (!p2) fail("printing the re-parsed graph failed", p1, NULL);
    if (strcmp(p1, p2) != 0) fail("print(parse(print(g))) differs from print(g)", p1, p2);
    if (mj_graph_node_count(g) != mj_graph_node_count(g2) ||
        mj_graph_output_count(g) != mj_graph_output_count(g2))
        fail("the re-parsed graph has other node or output counts", p1, p2);
    /* the DOT writer walks the same graph; it must not trip either */
    FILE *devnull = fopen("/dev/null", "w");
    if (devnull) {
        if (mj_graph_write_dot(g, devnull) != MJ_OK) fail("DOT export of a valid graph failed", p1, NULL);
        fclose(devnull);
    }
    free(p1);
    free(p2);
    mj_graph_free(g);
    mj_graph_free(g2);
    return 0;
}
