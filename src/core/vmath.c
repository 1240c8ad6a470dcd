/* maskjit's expf, gelu and tanh (vmath.h has the sequences and the constants). */
#include "vmath.h"
#include "internal.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static float float_of(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
/* 2^k for -126 <= k <= 127 */
static float pow2i(int32_t k) { return float_of((uint32_t)(k + 127) << 23); }

/* The clones choose how fmaf is computed (the instruction, or libm's
 * correctly rounded software fmaf on CPUs without FMA): the same bits. */

/* e^x's reduction and polynomial for an x in range: u = e^s, and kf =
 * SHIFT + n (x = n ln2 + s) */
__attribute__((always_inline)) static inline float expf_poly(float x, float *kf) {
    static const float P[MJ_EXPF_NP] = MJ_EXPF_P;
    *kf = fmaf(x, MJ_EXPF_LOG2E, MJ_EXPF_SHIFT);
    float nf = *kf - MJ_EXPF_SHIFT;
    float s = fmaf(nf, MJ_EXPF_NEG_LN2_HI, x);
    s = fmaf(nf, MJ_EXPF_NEG_LN2_LO, s);
    float p = P[MJ_EXPF_NP - 1];
#pragma GCC unroll 8
    for (int i = MJ_EXPF_NP - 2; i >= 0; i--) p = fmaf(p, s, P[i]);
    return 1.0f + fmaf(s * s, p, s);
}

__attribute__((always_inline)) static inline float expf_seq(float x) {
    float xc = x < MJ_EXPF_HI ? x : MJ_EXPF_HI;
    xc = xc > MJ_EXPF_LO ? xc : MJ_EXPF_LO;
    float kf, u = expf_poly(xc, &kf);
    int32_t n = (int32_t)(kf - MJ_EXPF_SHIFT);
    int32_t n1 = n / 2, n2 = n - n1;
    float r = u * pow2i(n1) * pow2i(n2);
    r = x > MJ_EXPF_HI ? INFINITY : r;
    r = x < MJ_EXPF_LO ? 0.0f : r;
    return isnan(x) ? x : r;
}

MJ_FMA_CLONES float mj_expf(float x) { return expf_seq(x); }

/* vmath.h gives the sequence and why */
MJ_FMA_CLONES float mj_geluf(float x) {
    static const float G[MJ_GELU_NG] = MJ_GELU_G, E[MJ_GELU_NE] = MJ_GELU_E;
    float a = float_of(bits_of(x) & 0x7fffffffu);
    float q = G[MJ_GELU_NG - 1];
#pragma GCC unroll 16
    for (int i = MJ_GELU_NG - 2; i >= 0; i--) q = fmaf(q, a, G[i]);
    float kf = q + MJ_EXPF_SHIFT;
    float f = (kf - MJ_EXPF_SHIFT) - q;
    float p = E[MJ_GELU_NE - 1];
#pragma GCC unroll 8
    for (int i = MJ_GELU_NE - 2; i >= 0; i--) p = fmaf(p, f, E[i]);
    float h = p * float_of((127u + MJ_EXPF_SHIFT_BITS - bits_of(kf)) << 23);
    h = a >= MJ_GELU_T ? 0.0f : h;
    float phi = bits_of(x) >> 31 ? h : 1.0f - h;
    return isnan(x) ? x : x * phi;
}

/* vmath.h gives the sequence and why */
MJ_FMA_CLONES float mj_tanhf(float x) {
    static const float T[MJ_TANH_NT] = MJ_TANH_T;
    float a = float_of(bits_of(x) & 0x7fffffffu);
    float z = a * a;
    float p = T[MJ_TANH_NT - 1];
#pragma GCC unroll 8
    for (int i = MJ_TANH_NT - 2; i >= 0; i--) p = fmaf(p, z, T[i]);
    float small = fmaf(a * z, p, a);
    float big = 1.0f - 2.0f / (expf_seq(a + a) + 1.0f);
    float t = a < MJ_TANH_SMALL ? small : big;
    float r = float_of(bits_of(t) | (bits_of(x) & 0x80000000u));
    return isnan(x) ? x : r;
}
