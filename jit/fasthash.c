/* XXH64 (Yann Collet's xxHash, 64-bit variant), two seeds in one pass: the
 * compile cache's digest of bulk bytes (frozen weights for the key, the
 * entry's payload for its checksum), where SHA-256 cost a frozen BERT
 * layer's cache hit ~50 ms of CPU. Not cryptographic: see docs/cache.md. */
#include <string.h>

#include "cache.h"

#define P1 UINT64_C(0x9E3779B185EBCA87)
#define P2 UINT64_C(0xC2B2AE3D27D4EB4F)
#define P3 UINT64_C(0x165667B19E3779F9)
#define P4 UINT64_C(0x85EBCA77C2B2AE63)
#define P5 UINT64_C(0x27D4EB2F165667C5)

/* the second seed of mj_fasthash128 */
#define SEED_B UINT64_C(0x9E3779B97F4A7C15)

static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/* the n (4 or 8) bytes at p as a little-endian number (memcpy: any alignment) */
static inline uint64_t rd_le(const uint8_t *p, size_t n) {
    uint64_t v = 0;
    memcpy(&v, p, n);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v); /* the n bytes were the high end */
#endif
    return v;
}
static inline uint64_t rd64(const uint8_t *p) { return rd_le(p, 8); }
static inline uint32_t rd32(const uint8_t *p) { return (uint32_t)rd_le(p, 4); }

static inline uint64_t round64(uint64_t acc, uint64_t in) { return rotl(acc + in * P2, 31) * P1; }
static inline uint64_t merge64(uint64_t h, uint64_t v) { return (h ^ round64(0, v)) * P1 + P4; }

/* The 4 accumulators after the whole 32-byte stripes, folded into h. */
static uint64_t fold_lanes(const uint64_t v[4]) {
    uint64_t h = rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18);
    for (int i = 0; i < 4; i++) h = merge64(h, v[i]);
    return h;
}

static void init_lanes(uint64_t v[4], uint64_t seed) {
    v[0] = seed + P1 + P2;
    v[1] = seed + P2;
    v[2] = seed;
    v[3] = seed - P1;
}

/* the tail (< 32 bytes) and the final avalanche */
static uint64_t finish(uint64_t h, const uint8_t *p, size_t n) {
    for (; n >= 8; n -= 8, p += 8) h = rotl(h ^ round64(0, rd64(p)), 27) * P1 + P4;
    if (n >= 4) {
        h = rotl(h ^ (uint64_t)rd32(p) * P1, 23) * P2 + P3;
        p += 4;
        n -= 4;
    }
    for (; n > 0; n--, p++) h = rotl(h ^ (uint64_t)*p * P5, 11) * P1;
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

uint64_t mj_xxh64(const void *data, size_t n, uint64_t seed) {
    const uint8_t *p = data;
    uint64_t h;
    size_t len = n;
    if (n >= 32) {
        uint64_t v[4];
        init_lanes(v, seed);
        for (; n >= 32; n -= 32, p += 32)
            for (int i = 0; i < 4; i++) v[i] = round64(v[i], rd64(p + 8 * i));
        h = fold_lanes(v);
    } else {
        h = seed + P5;
    }
    return finish(h + (uint64_t)len, p, n);
}

void mj_fasthash128(const void *data, size_t n, uint8_t out[16]) {
    const uint8_t *p = data;
    uint64_t ha, hb;
    size_t len = n;
    if (n >= 32) {
        /* the same stripes through both seeds' lanes: one read of memory */
        uint64_t a[4], b[4];
        init_lanes(a, 0);
        init_lanes(b, SEED_B);
        for (; n >= 32; n -= 32, p += 32)
            for (int i = 0; i < 4; i++) {
                uint64_t in = rd64(p + 8 * i);
                a[i] = round64(a[i], in);
                b[i] = round64(b[i], in);
            }
        ha = fold_lanes(a);
        hb = fold_lanes(b);
    } else {
        ha = P5;
        hb = SEED_B + P5;
    }
    ha = finish(ha + (uint64_t)len, p, n);
    hb = finish(hb + (uint64_t)len, p, n);
    for (int i = 0; i < 8; i++) {
        out[i] = (uint8_t)(ha >> (8 * i));
        out[8 + i] = (uint8_t)(hb >> (8 * i));
    }
}
