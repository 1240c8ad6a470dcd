/* A pruned transformer encoder block written in C (BERT-style, post-norm):
 * masked q/k/v/output/feed-forward projections, heads by reshape and
 * permute, scores / sqrt(d) plus an additive attention mask (a second
 * input), softmax, LayerNorm, GELU. Traced with two inputs, compiled frozen
 * (the masks shape the code), and compared with eager, bit for bit. */
#include <maskjit.h>
#include <math.h>
#include <stdio.h>

enum { D = 64, HEADS = 4, DH = D / HEADS, FFN = 128, SEQ = 8 };

/* y = child(x) */
static mj_status call(mj_module *self, const char *child, const mj_tensor *x, mj_tensor **y) {
    return mj_module_forward(mj_module_find(self, child), x, y);
}

/* [B, S, D] -> [B, H, S, DH] */
static mj_status split_heads(const mj_tensor *x, mj_tensor **out) {
    mj_tensor *r = NULL;
    int64_t shape[4] = {mj_tensor_dim(x, 0), SEQ, HEADS, DH};
    mj_status s = mj_reshape(&r, x, 4, shape);
    if (s == MJ_OK) s = mj_permute(out, r, 4, (const int[]){0, 2, 1, 3});
    mj_tensor_release(r);
    return s;
}

/* Releases a list of tensors (NULL entries ignored). */
static void release(int n, mj_tensor **t) {
    for (int i = 0; i < n; i++) mj_tensor_release(t[i]);
}

static mj_status encoder_forward(mj_module *self, int n_in, const mj_tensor *const *in, int n_out,
                                 mj_tensor **out) {
    (void)n_in, (void)n_out;
    const mj_tensor *x = in[0], *mask = in[1]; /* [B, S, D], [B, 1, 1, S] */
    mj_tensor *t[24] = {NULL};
    mj_status s = call(self, "query", x, &t[0]);
    if (s == MJ_OK) s = call(self, "key", x, &t[1]);
    if (s == MJ_OK) s = call(self, "value", x, &t[2]);
    if (s == MJ_OK) s = split_heads(t[0], &t[3]);                 /* q [B,H,S,DH] */
    if (s == MJ_OK) s = split_heads(t[1], &t[4]);                 /* k */
    if (s == MJ_OK) s = split_heads(t[2], &t[5]);                 /* v */
    if (s == MJ_OK) s = mj_transpose_dims(&t[6], t[4], 2, 3);     /* k^T [B,H,DH,S] */
    if (s == MJ_OK) s = mj_matmul(&t[7], t[3], t[6]);             /* [B,H,S,S] */
    if (s == MJ_OK) s = mj_div_scalar(&t[8], t[7], sqrtf((float)DH));
    if (s == MJ_OK) s = mj_add(&t[9], t[8], mask);
    if (s == MJ_OK) s = mj_softmax(&t[10], t[9], -1);
    if (s == MJ_OK) s = mj_matmul(&t[11], t[10], t[5]);           /* [B,H,S,DH] */
    if (s == MJ_OK) s = mj_permute(&t[12], t[11], 4, (const int[]){0, 2, 1, 3});
    int64_t merged[3] = {mj_tensor_dim(x, 0), SEQ, D};
    if (s == MJ_OK) s = mj_reshape(&t[13], t[12], 3, merged);
    if (s == MJ_OK) s = call(self, "attn_out", t[13], &t[14]);
    if (s == MJ_OK) s = mj_add(&t[15], x, t[14]);                 /* residual */
    if (s == MJ_OK) s = call(self, "ln1", t[15], &t[16]);
    if (s == MJ_OK) s = call(self, "inter", t[16], &t[17]);
    if (s == MJ_OK) s = mj_gelu(&t[18], t[17]);
    if (s == MJ_OK) s = call(self, "out", t[18], &t[19]);
    if (s == MJ_OK) s = mj_add(&t[20], t[16], t[19]);             /* residual */
    if (s == MJ_OK) s = call(self, "ln2", t[20], &out[0]);
    release(24, t);
    return s;
}

/* A FakeSparsity mask keeping about `density` of the weight. */
static mj_status mask_weight(mj_module *lin, float density, mj_rng *rng) {
    int64_t shape[2] = {mj_linear_out_features(lin), mj_linear_in_features(lin)};
    mj_tensor *mask = NULL;
    mj_parametrization *p = NULL;
    mj_status s = mj_tensor_zeros(&mask, 2, shape);
    if (s != MJ_OK) return s;
    float *m = mj_tensor_data_mut(mask);
    for (int64_t i = 0; i < shape[0] * shape[1]; i++) m[i] = mj_rng_uniform(rng) < density ? 1.0f : 0.0f;
    s = mj_fake_sparsity_new(&p, mask);
    if (s == MJ_OK) s = mj_register_parametrization(lin, "weight", p);
    mj_tensor_release(mask);
    return s;
}

static mj_status build(mj_module **out, mj_rng *rng) {
    static const struct { const char *name; int in, out; } linears[] = {
        {"query", D, D}, {"key", D, D}, {"value", D, D}, {"attn_out", D, D}, {"inter", D, FFN}, {"out", FFN, D}};
    mj_module *m = NULL, *c = NULL;
    mj_status s = mj_module_new_n(&m, "EncoderBlock", 2, 1, encoder_forward, NULL, NULL);
    for (int i = 0; i < 6 && s == MJ_OK; i++) {
        s = mj_linear_new(&c, linears[i].in, linears[i].out, true, rng);
        if (s == MJ_OK) s = mask_weight(c, 0.2f, rng); /* 80% pruned */
        if (s == MJ_OK) s = mj_module_add_child(m, linears[i].name, c);
        else mj_module_free(c);
    }
    for (int i = 1; i <= 2 && s == MJ_OK; i++) {
        s = mj_layer_norm_new(&c, D, 1e-12f, true, true);
        if (s == MJ_OK) s = mj_module_add_child(m, i == 1 ? "ln1" : "ln2", c);
        else mj_module_free(c);
    }
    if (s != MJ_OK) {
        mj_module_free(m);
        return s;
    }
    *out = m;
    return MJ_OK;
}

/* x [batch, S, D] random; mask [batch, 1, 1, S]: the last two positions hidden */
static mj_status inputs(int64_t batch, mj_rng *rng, mj_tensor **x, mj_tensor **mask) {
    mj_status s = mj_tensor_randn(x, 3, (int64_t[]){batch, SEQ, D}, rng);
    if (s == MJ_OK) s = mj_tensor_zeros(mask, 4, (int64_t[]){batch, 1, 1, SEQ});
    if (s != MJ_OK) return s;
    float *m = mj_tensor_data_mut(*mask);
    for (int64_t b = 0; b < batch; b++) m[b * SEQ + SEQ - 1] = m[b * SEQ + SEQ - 2] = -10000.0f;
    return MJ_OK;
}

int main(void) {
    mj_rng rng;
    mj_rng_seed(&rng, 0);
    mj_module *block = NULL;
    mj_graph *g = NULL;
    mj_jit *jit = NULL;
    mj_compiled *c = NULL;
    mj_tensor *x = NULL, *mask = NULL, *y_eager = NULL, *y_jit = NULL;
    int rc = 1;
    if (build(&block, &rng) != MJ_OK || inputs(2, &rng, &x, &mask) != MJ_OK) goto done;
    const mj_tensor *ex[2] = {x, mask};
    if (mj_trace_module_n(block, 2, ex, (const char *[]){"hidden", "attention_mask"}, &g) != MJ_OK) goto done;
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.frozen = true; /* weights and masks baked in; exact numerics */
    if (mj_jit_new(&jit) != MJ_OK || mj_jit_compile(jit, g, &o, &c) != MJ_OK) goto done;
    mj_tensor_release(x);
    mj_tensor_release(mask);
    x = mask = NULL;
    if (inputs(5, &rng, &x, &mask) != MJ_OK) goto done; /* traced at batch 2, run at 5 */
    const mj_tensor *in[2] = {x, mask};
    if (mj_module_forward_n(block, 2, in, 1, &y_eager) != MJ_OK) goto done;
    if (mj_compiled_run_n(c, 2, in, 1, &y_jit) != MJ_OK) goto done;
    printf("encoder block (d %d, %d heads, ffn %d, 80%% pruned): %d graph nodes, %d inputs\n", D, HEADS,
           FFN, mj_graph_node_count(g), mj_graph_input_count(g));
    printf("compiled frozen == eager, bit for bit: %s\n", mj_tensor_equal(y_jit, y_eager) ? "yes" : "NO");
    rc = mj_tensor_equal(y_jit, y_eager) ? 0 : 1;
done:
    if (rc && mj_last_error()[0]) fprintf(stderr, "transformer_block: %s\n", mj_last_error());
    mj_tensor_release(x);
    mj_tensor_release(mask);
    mj_tensor_release(y_eager);
    mj_tensor_release(y_jit);
    mj_compiled_free(c);
    mj_jit_free(jit);
    mj_graph_free(g);
    mj_module_free(block);
    mj_llvm_shutdown();
    return rc;
}
