/* 64-bit ARM kernels: NEON (baseline on aarch64) and NEON with the dot-product
 * extension (sdot, ARMv8.2+), chosen at run time from HWCAP. Same results as the
 * generic twins; activation quantization uses the generic code. */
#if defined(__aarch64__)
#include <arm_neon.h>

#include "eq_kernels.h"

#define TDOT __attribute__((target("arch=armv8.2-a+dotprod")))
#define INL inline __attribute__((always_inline))

/* 16 natural-order fields starting at weight 16*c of a 64-weight tail block. */
static INL uint8x16_t tail_fields16(const uint8_t *blk, int bits, int c) {
    if (bits == 1) { /* byte i holds weights i + 8f: two bytes' fields f = 2c, 2c+1 */
        const uint8x8_t b = vld1_u8(blk);
        const uint8x16_t v = vcombine_u8(b, b);
        const int8x16_t sh = vcombine_s8(vdup_n_s8((int8_t)-(2 * c)), vdup_n_s8((int8_t)-(2 * c + 1)));
        return vandq_u8(vshlq_u8(v, sh), vdupq_n_u8(1));
    } else if (bits == 2) { /* byte i holds weights i + 16f */
        return vandq_u8(vshlq_u8(vld1q_u8(blk), vdupq_n_s8((int8_t)(-2 * c))), vdupq_n_u8(3));
    } else { /* byte i holds weights i and i + 32 */
        const uint8x16_t v = vld1q_u8(blk + 16 * (c & 1));
        return vandq_u8(vshlq_u8(v, vdupq_n_s8((int8_t)(c >= 2 ? -4 : 0))), vdupq_n_u8(15));
    }
}

/* products of 16 unsigned fields (<= 15, so they fit s8) with 16 int8 activations */
static INL int32x4_t mac16(int32x4_t acc, uint8x16_t u, int8x16_t x) {
    const int8x16_t s = vreinterpretq_s8_u8(u);
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(s), vget_low_s8(x)));
    return vpadalq_s16(acc, vmull_high_s8(s, x));
}

TDOT static INL int32x4_t mac16_dot(int32x4_t acc, uint8x16_t u, int8x16_t x) {
    return vdotq_s32(acc, vreinterpretq_s8_u8(u), x);
}

#define ROW_FIELDS(NAME, MAC, ATTR)                                                                  \
    ATTR static INL int32_t NAME(const uint8_t *row, const int8_t *x, int32_t kp, int bits, int big) { \
        const int per = 8 / bits;                                                                    \
        const uint8x16_t m = vdupq_n_u8((uint8_t)((1 << bits) - 1));                                 \
        int32x4_t A0 = vdupq_n_s32(0), A1 = A0;                                                      \
        int32_t pos = 0;                                                                             \
        for (; kp - pos >= big; pos += big) {                                                        \
            const uint8_t *blk = row + (size_t)pos * bits / 8;                                       \
            const uint8x16_t v0 = vld1q_u8(blk), v1 = vld1q_u8(blk + 16), v2 = vld1q_u8(blk + 32),   \
                             v3 = vld1q_u8(blk + 48);                                                \
            for (int j = 0; j < per; j++) {                                                          \
                const int8x16_t sh = vdupq_n_s8((int8_t)(-bits * j));                               \
                const int8_t *xj = x + pos + 64 * j;                                                 \
                A0 = MAC(A0, vandq_u8(vshlq_u8(v0, sh), m), vld1q_s8(xj));                           \
                A1 = MAC(A1, vandq_u8(vshlq_u8(v1, sh), m), vld1q_s8(xj + 16));                      \
                A0 = MAC(A0, vandq_u8(vshlq_u8(v2, sh), m), vld1q_s8(xj + 32));                      \
                A1 = MAC(A1, vandq_u8(vshlq_u8(v3, sh), m), vld1q_s8(xj + 48));                      \
            }                                                                                        \
        }                                                                                            \
        for (; pos < kp; pos += EQ_ROW_ALIGN) {                                                      \
            const uint8_t *blk = row + (size_t)pos * bits / 8;                                       \
            for (int c = 0; c < 4; c++) A0 = MAC(A0, tail_fields16(blk, bits, c), vld1q_s8(x + pos + 16 * c)); \
        }                                                                                            \
        return vaddvq_s32(vaddq_s32(A0, A1));                                                        \
    }

ROW_FIELDS(row_fields_neon, mac16, )
ROW_FIELDS(row_fields_dot, mac16_dot, TDOT)

#define ACC_FIELDS(NAME, ROW, ATTR, BITS, BIG, SCALE, CORR)                                          \
    ATTR static void NAME(const eq_layer *L, const eq_act *a, int32_t *acc) {                         \
        const size_t rb = (size_t)L->kp * BITS / 8;                                                  \
        const int32_t corr = CORR;                                                                   \
        for (int32_t i = 0; i < L->n; i++) acc[i] = SCALE * ROW(L->w + rb * i, a->q, L->kp, BITS, BIG) - corr; \
    }

ACC_FIELDS(acc_q1_neon, row_fields_neon, , 1, EQ_Q1_BIG, 2, a->qsum)
ACC_FIELDS(acc_q2_neon, row_fields_neon, , 2, EQ_Q2_BIG, 1, eq_fmt_offset[L->fmt] * a->qsum)
ACC_FIELDS(acc_q4_neon, row_fields_neon, , 4, EQ_Q4_BIG, 1, eq_fmt_offset[L->fmt] * a->qsum)
ACC_FIELDS(acc_q1_dot, row_fields_dot, TDOT, 1, EQ_Q1_BIG, 2, a->qsum)
ACC_FIELDS(acc_q2_dot, row_fields_dot, TDOT, 2, EQ_Q2_BIG, 1, eq_fmt_offset[L->fmt] * a->qsum)
ACC_FIELDS(acc_q4_dot, row_fields_dot, TDOT, 4, EQ_Q4_BIG, 1, eq_fmt_offset[L->fmt] * a->qsum)

static void acc_q8_neon(const eq_layer *L, const eq_act *a, int32_t *acc) {
    for (int32_t i = 0; i < L->n; i++) {
        const int8_t *w = (const int8_t *)L->w + (size_t)L->kp * i;
        int32x4_t A = vdupq_n_s32(0);
        for (int32_t j = 0; j < L->kp; j += 16) {
            const int8x16_t wv = vld1q_s8(w + j), xv = vld1q_s8(a->q + j);
            A = vpadalq_s16(A, vmull_s8(vget_low_s8(wv), vget_low_s8(xv)));
            A = vpadalq_s16(A, vmull_high_s8(wv, xv));
        }
        acc[i] = vaddvq_s32(A);
    }
}

TDOT static void acc_q8_dot(const eq_layer *L, const eq_act *a, int32_t *acc) {
    for (int32_t i = 0; i < L->n; i++) {
        const int8_t *w = (const int8_t *)L->w + (size_t)L->kp * i;
        int32x4_t A0 = vdupq_n_s32(0), A1 = A0;
        for (int32_t j = 0; j < L->kp; j += 32) {
            A0 = vdotq_s32(A0, vld1q_s8(w + j), vld1q_s8(a->q + j));
            A1 = vdotq_s32(A1, vld1q_s8(w + j + 16), vld1q_s8(a->q + j + 16));
        }
        acc[i] = vaddvq_s32(vaddq_s32(A0, A1));
    }
}

/* popcount: D = M & (sign_w ^ sign_x) counted with vcnt, pairwise-widened into u16
 * (a row of < 2^16 bits fits); dot = popcount(M) (L->rowsum) - 2 popcount(D). */
static void acc_popcount_neon(const eq_layer *L, const eq_act *a, int32_t *acc) {
    const int32_t words = L->kp / 64;
    const uint8_t *xs = (const uint8_t *)a->planes;
    for (int32_t i = 0; i < L->n; i++) {
        const uint8_t *ws = L->w + (size_t)16 * words * i, *wm = ws + 8 * (size_t)words;
        uint16x8_t cd = vdupq_n_u16(0);
        int32_t j = 0;
        for (; j + 2 <= words; j += 2)
            cd = vpadalq_u8(cd, vcntq_u8(vandq_u8(vld1q_u8(wm + 8 * j), veorq_u8(vld1q_u8(ws + 8 * j), vld1q_u8(xs + 8 * j)))));
        int32_t d = (int32_t)vaddlvq_u16(cd);
        if (j < words) d += (int32_t)vaddlv_u8(vcnt_u8(vand_u8(vld1_u8(wm + 8 * j), veor_u8(vld1_u8(ws + 8 * j), vld1_u8(xs + 8 * j)))));
        acc[i] = L->rowsum[i] - 2 * d;
    }
}

static void gemv_f16_neon(const eq_layer *L, const float *x, float *y) {
    const int32_t k = L->k, kv = k / 8 * 8;
    for (int32_t i = 0; i < L->n; i++) {
        const float16_t *w = (const float16_t *)(L->w + (size_t)2 * L->kp * i);
        float32x4_t A0 = vdupq_n_f32(0.0f), A1 = A0;
        int32_t j = 0;
        for (; j < kv; j += 8) {
            const float16x8_t h = vld1q_f16(w + j);
            A0 = vfmaq_f32(A0, vcvt_f32_f16(vget_low_f16(h)), vld1q_f32(x + j));
            A1 = vfmaq_f32(A1, vcvt_high_f32_f16(h), vld1q_f32(x + j + 4));
        }
        float s = vaddvq_f32(vaddq_f32(A0, A1));
        for (; j < k; j++) s += (float)w[j] * x[j];
        y[i] = s;
    }
}

const eq_kernels eq_kernels_neon = {
    "neon",
    eq_generic_quant_i8,
    eq_generic_quant_sign,
    {acc_q1_neon, acc_q2_neon, acc_q4_neon, acc_q8_neon, acc_q2_neon, NULL, acc_popcount_neon},
    gemv_f16_neon,
    eq_generic_dequant,
};

const eq_kernels eq_kernels_dotprod = {
    "dotprod",
    eq_generic_quant_i8,
    eq_generic_quant_sign,
    {acc_q1_dot, acc_q2_dot, acc_q4_dot, acc_q8_dot, acc_q2_dot, NULL, acc_popcount_neon},
    gemv_f16_neon,
    eq_generic_dequant,
};

#endif
