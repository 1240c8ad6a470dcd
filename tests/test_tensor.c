/* Tensors: construction, references, generator, comparison, printing. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "maskjit.h"
#include "test_util.h"

Test(tensor, constructors_fill_as_documented) {
    int64_t shape[2] = {2, 3};
    mj_tensor *z, *o, *f, *e, *a;
    OK(mj_tensor_zeros(&z, 2, shape));
    OK(mj_tensor_ones(&o, 2, shape));
    OK(mj_tensor_full(&f, 2, shape, -2.5f));
    OK(mj_tensor_eye(&e, 3));
    OK(mj_tensor_arange(&a, 5));
    for (int i = 0; i < 6; i++) {
        cr_assert_eq(mj_tensor_data(z)[i], 0.0f);
        cr_assert_eq(mj_tensor_data(o)[i], 1.0f);
        cr_assert_eq(mj_tensor_data(f)[i], -2.5f);
    }
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) cr_assert_eq(mj_tensor_data(e)[i * 3 + j], i == j ? 1.0f : 0.0f);
    for (int i = 0; i < 5; i++) cr_assert_eq(mj_tensor_data(a)[i], (float)i);
    cr_assert_eq(mj_tensor_rank(z), 2);
    cr_assert_eq(mj_tensor_dim(z, 0), 2);
    cr_assert_eq(mj_tensor_dim(z, -1), 3);
    cr_assert_eq(mj_tensor_numel(z), 6);
    MJT_RELEASE(z, o, f, e, a);
}

/* Large tensors take another allocator (huge pages, not calloc): zeros must
 * still be zeros where the memory was used before, and the whole tensor
 * is writable. */
Test(tensor, large_tensors_zeroed_and_whole) {
    int64_t shape[2] = {3, (1 << 20) + 5}; /* 12 MiB and a bit: not a multiple of 2 MiB */
    mj_tensor *f[2], *z[2], *big;
    /* glibc serves large blocks by mmap (zeroed by the kernel) until a freed
     * one raises its threshold. After this they come from the heap, which
     * keeps two freed 12 MiB blocks (under its trim threshold) and hands the
     * memory of f back to z as it was. */
    int64_t big_shape[1] = {6 << 20};
    OK(mj_tensor_full(&big, 1, big_shape, 1.0f));
    mj_tensor_release(big);
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < 2; i++) {
            OK(mj_tensor_full(&f[i], 2, shape, -1.0f));
            const float *d = mj_tensor_data(f[i]);
            cr_assert_eq(d[0], -1.0f);
            cr_assert_eq(d[mj_tensor_numel(f[i]) - 1], -1.0f);
        }
        for (int i = 0; i < 2; i++) mj_tensor_release(f[i]); /* dirty memory for the zeros */
        for (int i = 0; i < 2; i++) {
            OK(mj_tensor_zeros(&z[i], 2, shape));
            const float *zd = mj_tensor_data(z[i]);
            int64_t nonzero = 0;
            for (int64_t k = 0; k < mj_tensor_numel(z[i]); k++) nonzero += zd[k] != 0.0f;
            cr_assert_eq(nonzero, 0, "round %d: %lld nonzero floats in a large zeros tensor", round,
                         (long long)nonzero);
        }
        for (int i = 0; i < 2; i++) mj_tensor_release(z[i]);
    }
}

Test(tensor, bad_shapes_are_errors_with_messages) {
    mj_tensor *t = (mj_tensor *)0x1;
    int64_t neg[2] = {2, -1};
    cr_assert_eq(mj_tensor_zeros(&t, 2, neg), MJ_ERR_INVALID);
    cr_assert(strstr(mj_last_error(), "negative"), "%s", mj_last_error());
    cr_assert_eq(t, (mj_tensor *)0x1, "output untouched on error");
    int64_t five[5] = {1, 1, 1, 1, 1};
    cr_assert_eq(mj_tensor_zeros(&t, 5, five), MJ_ERR_INVALID);
    cr_assert(strstr(mj_last_error(), "rank 5"), "%s", mj_last_error());
    int64_t huge[3] = {INT64_C(1) << 30, INT64_C(1) << 30, 4};
    cr_assert_eq(mj_tensor_zeros(&t, 3, huge), MJ_ERR_LIMIT);
    cr_assert(strstr(mj_last_error(), "2^40"), "%s", mj_last_error());
    cr_assert_eq(mj_tensor_from_data(&t, 1, five, NULL), MJ_ERR_INVALID);
    cr_assert_eq(mj_tensor_zeros(NULL, 1, five), MJ_ERR_INVALID);
}

Test(tensor, clone_copy_wrap_and_versions) {
    float buf[4] = {1, 2, 3, 4};
    int64_t shape[2] = {2, 2};
    mj_tensor *w, *c, *d;
    OK(mj_tensor_wrap(&w, 2, shape, buf));
    cr_assert_eq(mj_tensor_data(w), buf, "wrap borrows the buffer");
    OK(mj_tensor_clone(&c, w));
    cr_assert_neq(mj_tensor_data(c), buf);
    cr_assert(mj_tensor_equal(c, w));
    uint64_t v0 = mj_tensor_version(c);
    mj_tensor_data_mut(c)[0] = 9;
    cr_assert_gt(mj_tensor_version(c), v0, "write access bumps the version");
    cr_assert_eq(buf[0], 1.0f, "clone does not alias");
    int64_t other[1] = {4};
    OK(mj_tensor_zeros(&d, 1, other));
    cr_assert_eq(mj_tensor_copy(d, c), MJ_ERR_SHAPE);
    cr_assert(strstr(mj_last_error(), "[4]") && strstr(mj_last_error(), "[2, 2]"), "%s",
              mj_last_error());
    uint64_t v1 = mj_tensor_version(w);
    OK(mj_tensor_copy(w, c));
    cr_assert_eq(buf[0], 9.0f);
    cr_assert_gt(mj_tensor_version(w), v1);
    cr_assert_neq(mj_tensor_uid(w), mj_tensor_uid(c));
    mj_tensor_retain(w);
    mj_tensor_release(w); /* still one reference */
    cr_assert_eq(mj_tensor_numel(w), 4);
    MJT_RELEASE(w, c, d);
    cr_assert_eq(buf[3], 4.0f, "releasing a wrapped tensor leaves the buffer alone");
}

/* xoshiro256** reference values: the algorithm from Blackman & Vigna's
 * reference C code, seeded with splitmix64(0) as documented. The first
 * splitmix64 outputs for seed 0 are published constants. */
Test(tensor, generator_matches_reference_algorithm) {
    /* splitmix64 from state 0: published first outputs */
    const uint64_t sm[4] = {0xe220a8397b1dcdafULL, 0x6e789e6aa1b965f4ULL, 0x06c45d188009454fULL,
                            0xf88bb8a8724c81ecULL};
    mj_rng r = mjt_rng(0);
    for (int i = 0; i < 4; i++) cr_assert_eq(r.s[i], sm[i], "state word %d", i);
    /* One xoshiro256** step written out independently. */
    uint64_t s[4] = {sm[0], sm[1], sm[2], sm[3]};
    uint64_t x = s[1] * 5;
    uint64_t expect = ((x << 7) | (x >> 57)) * 9;
    cr_assert_eq(mj_rng_next(&r), expect);
    /* Uniform stays in [0, 1) and normal has plausible moments. */
    double sum = 0, sumsq = 0;
    for (int i = 0; i < 20000; i++) {
        float u = mj_rng_uniform(&r);
        cr_assert(u >= 0.0f && u < 1.0f);
        double n = mj_rng_normal(&r);
        sum += n;
        sumsq += n * n;
    }
    cr_assert(fabs(sum / 20000) < 0.05, "mean %g", sum / 20000);
    cr_assert(fabs(sumsq / 20000 - 1.0) < 0.05, "variance %g", sumsq / 20000);
    /* Same seed, same stream. */
    mj_rng a, b;
    mj_rng_seed(&a, 42);
    mj_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++) cr_assert_eq(mj_rng_next(&a), mj_rng_next(&b));
}

Test(tensor, compare_reports_errors_and_first_mismatch) {
    float x[6] = {1, 2, 3, 4, 5, 6}, y[6] = {1, 2, 3.5f, 4, 5, 6.000001f};
    int64_t shape[2] = {2, 3};
    mj_tensor *a, *b;
    mj_tensor_from_data(&a, 2, shape, x);
    mj_tensor_from_data(&b, 2, shape, y);
    mj_compare c = mj_tensor_compare(a, b, MJ_RTOL_F32, MJ_ATOL_F32);
    cr_assert(c.same_shape);
    cr_assert(!c.close);
    cr_assert(!c.bit_identical);
    cr_assert_eq(c.n_mismatch, 1, "6.000001 vs 6 is within atol 1e-5");
    cr_assert_eq(c.first_mismatch, 2);
    cr_assert_float_eq(c.max_abs, 0.5, 1e-12);
    char msg[256];
    mj_compare_describe(&c, a, b, msg, sizeof msg);
    cr_assert(strstr(msg, "first at [0, 2]"), "%s", msg);
    cr_assert(mj_tensor_compare(a, a, 0, 0).bit_identical);
    /* torch.testing.assert_close semantics: |a-e| <= atol + rtol*|e| */
    float big[1] = {1e6f}, big2[1] = {1e6f + 0.5f};
    int64_t one[1] = {1};
    mj_tensor *p, *q;
    mj_tensor_from_data(&p, 1, one, big);
    mj_tensor_from_data(&q, 1, one, big2);
    cr_assert(mj_tensor_allclose(p, q, MJ_RTOL_F32, MJ_ATOL_F32), "0.5 <= 1e-5 + 1.3e-6*1e6");
    MJT_RELEASE(a, b, p, q);
}

Test(tensor, compare_treats_nan_and_inf_like_torch) {
    float x[3] = {NAN, INFINITY, 1}, y[3] = {NAN, INFINITY, 1}, z[3] = {NAN, -INFINITY, 1};
    int64_t n[1] = {3};
    mj_tensor *a, *b, *c;
    mj_tensor_from_data(&a, 1, n, x);
    mj_tensor_from_data(&b, 1, n, y);
    mj_tensor_from_data(&c, 1, n, z);
    cr_assert(mj_tensor_allclose(a, b, MJ_RTOL_F32, MJ_ATOL_F32));
    cr_assert(!mj_tensor_allclose(a, c, MJ_RTOL_F32, MJ_ATOL_F32));
    MJT_RELEASE(a, b, c);
}

Test(tensor, print_is_readable) {
    mj_tensor *e;
    mj_tensor_eye(&e, 2);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    mj_tensor_print(f, e, "eye");
    fclose(f);
    cr_assert(strstr(buf, "eye = tensor(shape=[2, 2]"), "%s", buf);
    cr_assert(strstr(buf, "[1.0000, 0.0000]"), "%s", buf);
    free(buf);
    mj_tensor_release(e);
}
