/* maskjit's own expf, gelu and tanh: the reference definitions that eager, the
 * interpreter and compiled code (jit/emit.c, the same sequence on vectors)
 * all compute, bit for bit, independent of the libm version. Each is a fixed
 * sequence of float operations: range reduction, a polynomial in fmaf, the
 * scaling by 2^n built from exponent bits, and selects for the special
 * cases (no branches, so the vector form is the same operations lane by
 * lane). The constants are here so that both sides read one copy; the
 * sequence itself is written in vmath.c and, operation for operation, in
 * jit/emit.c (mj_emit_expf, mj_emit_geluf, mj_emit_tanhf). docs/numerics.md gives the
 * accuracy. */
#ifndef MJ_CORE_VMATH_H
#define MJ_CORE_VMATH_H

/* expf(x):
 *   xc = x < HI ? x : HI;  xc = xc > LO ? xc : LO      (NaN becomes HI: n stays in range)
 *   kf = fmaf(xc, LOG2E, SHIFT);  nf = kf - SHIFT       (nf = round(xc*log2 e), exact)
 *   s = fmaf(nf, -LN2_HI, xc);  s = fmaf(nf, -LN2_LO, s) (|s| <= ln2/2; the first is exact)
 *   p = P[4];  p = fmaf(p, s, P[i]) for i = 3..0
 *   u = 1.0f + fmaf(s * s, p, s)                        (e^s)
 *   n = (int32_t)nf;  n1 = n / 2 (truncating);  n2 = n - n1
 *   r = (u * 2^n1) * 2^n2                               (2^k = bits (k + 127) << 23; the first
 *                                                        product is exact, the second rounds
 *                                                        once, also into the denormals)
 *   r = x > HI ? +inf : r;  r = x < LO ? +0.0f : r;  r = x is NaN ? x : r */
#define MJ_EXPF_HI 0x1.63p+6f   /* 88.75: above ln(FLT_MAX), so the product overflows to inf first */
#define MJ_EXPF_LO (-0x1.ap+6f) /* -104: below ln(2^-150), where the result rounds to 0 */
#define MJ_EXPF_LOG2E 0x1.715476p+0f
#define MJ_EXPF_SHIFT 0x1.8p+23f /* 1.5 * 2^23: adding it rounds to an integer */
#define MJ_EXPF_SHIFT_BITS 0x4b400000u /* its bits: SHIFT + n has the bits SHIFT_BITS + n */
#define MJ_EXPF_NEG_LN2_HI (-0x1.62e4p-1f) /* 15 bits: nf * LN2_HI is exact for |nf| <= 256 */
#define MJ_EXPF_NEG_LN2_LO (-0x1.7f7d1cp-20f)
/* (e^s - 1 - s) / s^2 on [-ln2/2, ln2/2], weighted to minimise the relative error of e^s */
#define MJ_EXPF_P {0x1.fffffcp-2f, 0x1.555490p-3f, 0x1.5558fcp-5f, 0x1.123b8ap-7f, 0x1.6a2174p-10f}
#define MJ_EXPF_NP 5
/* The band where exp's short form (no clamps or special cases, r = u * 2^n
 * in one product: jit/emit.c's mj_emit_expf_band) gives r's bits: there n
 * is in [-126, 127], 2^n a normal float, and u * 2^n the same exact product
 * as (u * 2^n1) * 2^n2, rounded once. */
#define MJ_EXPF_BAND_LO (-87.0f)
#define MJ_EXPF_BAND_HI 88.0f

/* gelu(x) = x Phi(x) (Phi: the standard normal CDF), on a = |x|:
 *   q = G[10];  q = fmaf(q, a, G[i]) for i = 9..0      (q = -log2 Phi(-a), in [1, 27])
 *   kf = q + SHIFT;  nf = kf - SHIFT;  f = nf - q      (nf = round(q) = n; f in [-1/2, 1/2],
 *                                                       exact: nf and q are within a factor 2)
 *   p = E[6];  p = fmaf(p, f, E[i]) for i = 5..0       (2^f)
 *   h = p * 2^-n                                        (Phi(-a) = 2^-q; 2^-n's bits come from
 *                                                       kf's, (127 + SHIFT_BITS - bits(kf)) << 23:
 *                                                       n in [1, 27], so the product is exact)
 *   h = a >= T ? 0.0f : h                               (Phi(-a) < 1e-8 there: gelu(x) is x or -0)
 *   phi = x's sign bit set ? h : 1.0f - h              (Phi(x) = 1 - Phi(-x))
 *   result: x * phi;  x is NaN ? x : result            (-inf gives NaN, inf times 0, as
 *                                                       PyTorch's erf form does)
 * One exponential of a polynomial instead of erf's two branches: 31
 * vector operations where 0.5 x (1 + erf(x / sqrt 2)) took 42, and the
 * negative tail keeps its relative accuracy (1 + erf(x / sqrt 2) cancels
 * there). */
#define MJ_GELU_T 5.65625f /* about 4 sqrt 2: where 1 + erf(x / sqrt 2) is 0 in float too */
/* -log2(Phi(-a)) on [0, T], minimax in units of q's own ulp (weighted
 * towards small a, where most activations are) */
#define MJ_GELU_G                                                                                        \
    {0x1p+0f,          0x1.26aedep+0f,  0x1.d63aa0p-2f, 0x1.ade90ap-5f,  -0x1.cadff6p-8f, 0x1.6f691ap-15f, \
     0x1.0fd61ap-12f, -0x1.28cce6p-14f, 0x1.50ba12p-17f, -0x1.a0db68p-21f, 0x1.bb5cf6p-26f}
#define MJ_GELU_NG 11
/* 2^f on [-1/2, 1/2], minimax relative error (0.86 ulp after rounding) */
#define MJ_GELU_E {0x1p+0f, 0x1.62e430p-1f, 0x1.ebfbdcp-3f, 0x1.c6aee8p-5f, 0x1.3b2d4cp-7f, 0x1.5f3e54p-10f, 0x1.41fbbcp-13f}
#define MJ_GELU_NE 7

/* tanh(x), on a = |x|:
 *   z = a * a;  p = T[4];  p = fmaf(p, z, T[i]) for i = 3..0
 *   small = fmaf(a * z, p, a)                           (a + a^3 p(a^2))
 *   e = expf(a + a)  (the sequence above);  big = 1.0f - 2.0f / (e + 1.0f)
 *   t = a < SMALL ? small : big                          (big is 1 from a = 9.01 up,
 *                                                        also for inf: e = inf)
 *   result: t with x's sign bit;  x is NaN ? x : result
 * Vector code instead of libm's tanhf, which compiled code called one
 * element at a time (half of a GPT-2 block's time in its gelu_tanh). The
 * polynomial keeps the relative accuracy near 0, where 1 - 2/(e + 1)
 * cancels. Measured on every third positive float: 1.46 ulp (glibc's
 * tanhf: 2.18). */
#define MJ_TANH_SMALL 0.55f /* e^(2a) = 3: from here 2/(e + 1) <= 1/2 */
/* (tanh(a) - a) / a^3 in z = a^2 on [0, SMALL^2], near-minimax for the
 * relative error of tanh */
#define MJ_TANH_T {-0x1.55554ap-2f, 0x1.110d26p-3f, -0x1.b9287ap-5f, 0x1.593d02p-6f, -0x1.9b302ap-8f}
#define MJ_TANH_NT 5

float mj_expf(float x);
float mj_geluf(float x);
float mj_tanhf(float x);

#endif
