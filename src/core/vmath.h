/* maskjit's own expf and erff: the reference definitions that eager, the
 * interpreter and compiled code (jit/emit.c, the same sequence on vectors)
 * all compute, bit for bit, independent of the libm version. Each is a fixed
 * sequence of float operations: range reduction, a polynomial in fmaf, the
 * scaling by 2^n built from exponent bits, and selects for the special
 * cases (no branches, so the vector form is the same operations lane by
 * lane). The constants are here so that both sides read one copy; the
 * sequence itself is written in vmath.c and, operation for operation, in
 * jit/emit.c (mj_emit_expf, mj_emit_erff). docs/numerics.md gives the
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

/* erff(x), on a = |x| (the sign bit cleared):
 *   z = a * a;  p = A[6];  p = fmaf(p, z, A[i]) for i = 5..0;  small = fmaf(p, a, a)
 *                                          (erf(a) = a + a P(a^2) for a < SPLIT)
 *   q = B[6];   q = fmaf(q, a, B[i]) for i = 5..0;  big = 1.0f - e(-q)
 *                                          (erf(a) = 1 - e^-Q(a) for SPLIT <= a < 4)
 *   e(x) is mj_expf's sequence without what cannot act on the arguments
 *   this branch keeps (SPLIT <= a < 4: x in [-18, -1.64]): no clamps or
 *   special cases, and 2^n as one product, as u * 2^n is a normal float
 *   there, exact either way. 2^n's bits come from kf's (kf = SHIFT + n
 *   exactly, so its bits are SHIFT_BITS + n): no float-to-int conversion,
 *   which lanes the selects throw away (NaN, huge a) could overflow. The
 *   same bits as mj_expf on every float of the branch (tests/test_vmath.c),
 *   at about two thirds of the operations.
 *   r = a < SPLIT ? small : big;  r = a >= 4.0f ? 1.0f : r;  r = a is NaN ? a : r
 *   result: r with the sign bit of x (erf(-x) = -erf(x), erf(-0) = -0, erf(NaN) = x itself) */
#define MJ_ERFF_SPLIT 0x1.d8p-1f /* 0.921875 */
#define MJ_ERFF_ONE_AT 4.0f      /* erf(a) rounds to 1.0f from a = 3.92 on */
/* (erf(a) - a) / a as a polynomial in a^2 on [0, SPLIT], relative error */
#define MJ_ERFF_A                                                                                        \
    {0x1.06eba8p-3f, -0x1.812744p-2f, 0x1.ce2e20p-4f, -0x1.b8107cp-6f, 0x1.54dad8p-8f, -0x1.aae984p-11f, \
     0x1.5f113cp-14f}
#define MJ_ERFF_NA 7
/* -log(erfc(a)) on [SPLIT, 4], weighted by erfc(a) / erf(a) (the error it makes in erf) */
#define MJ_ERFF_B                                                                                      \
    {0x1.a0615cp-13f, 0x1.20ae92p+0f, 0x1.463f5ep-1f, 0x1.a9a1d4p-4f, -0x1.6c0716p-6f, 0x1.8e9a78p-9f, \
     -0x1.9a754ep-13f}
#define MJ_ERFF_NB 7

float mj_expf(float x);
float mj_erff(float x);

#endif
