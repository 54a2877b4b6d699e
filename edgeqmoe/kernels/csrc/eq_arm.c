/* 64-bit ARM kernels: NEON (baseline on aarch64) and NEON with the dot-product
 * extension (sdot, ARMv8.2+), chosen at run time from HWCAP. Same results as the
 * generic twins; activation quantization uses the generic code. */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <string.h>

#include "eq_kernels.h"

#define TDOT __attribute__((target("arch=armv8.2-a+dotprod")))
#define INL inline __attribute__((always_inline))

/* Tiled fields (q1, q2, ternary, q4; layout in formats.py): a 16-byte quarter of a
 * span is 4 rows x 4 bytes. Fields are shifted down (<= 15, so they fit s8) and
 * multiplied with four broadcast activations. sdot adds each row's four products into
 * its 32-bit lane; plain NEON widens with vmull + vpadal into (row, pair) lanes that
 * vpaddq folds into rows at the end. */
static INL int8x16_t bcast4(const int8_t *p) {
    int32_t f;
    memcpy(&f, p, 4);
    return vreinterpretq_s8_s32(vdupq_n_s32(f));
}

static void tiled_sums_neon(const eq_layer *L, const int8_t *x, int32_t *out) {
    const int bits = eq_fmt_bits[L->fmt], per = 8 / bits, span = 4 * per;
    const int32_t spans = L->kp / span, tiles = eq_tiled_rows(L->n) / EQ_ROW_TILE;
    const uint8x16_t m = vdupq_n_u8((uint8_t)((1 << bits) - 1));
    const uint8_t *w = L->w;
    for (int32_t t = 0; t < tiles; t++) {
        int32x4_t lo[4], hi[4];
        for (int q = 0; q < 4; q++) lo[q] = hi[q] = vdupq_n_s32(0);
        for (int32_t s = 0; s < spans; s++, w += EQ_SPAN_BYTES) {
            const uint8x16_t v[4] = {vld1q_u8(w), vld1q_u8(w + 16), vld1q_u8(w + 32), vld1q_u8(w + 48)};
            for (int j = 0; j < per; j++) {
                const int8x16_t xb = bcast4(x + (size_t)s * span + 4 * j);
                const int8x16_t sh = vdupq_n_s8((int8_t)(-bits * j));
                for (int q = 0; q < 4; q++) {
                    const int8x16_t u = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(v[q], sh), m));
                    lo[q] = vpadalq_s16(lo[q], vmull_s8(vget_low_s8(u), vget_low_s8(xb)));
                    hi[q] = vpadalq_s16(hi[q], vmull_high_s8(u, xb));
                }
            }
        }
        for (int q = 0; q < 4; q++) vst1q_s32(out + EQ_ROW_TILE * t + 4 * q, vpaddq_s32(lo[q], hi[q]));
    }
}

TDOT static void tiled_sums_dot(const eq_layer *L, const int8_t *x, int32_t *out) {
    const int bits = eq_fmt_bits[L->fmt], per = 8 / bits, span = 4 * per;
    const int32_t spans = L->kp / span, tiles = eq_tiled_rows(L->n) / EQ_ROW_TILE;
    const uint8x16_t m = vdupq_n_u8((uint8_t)((1 << bits) - 1));
    const uint8_t *w = L->w;
    for (int32_t t = 0; t < tiles; t++) {
        int32x4_t A[4];
        for (int q = 0; q < 4; q++) A[q] = vdupq_n_s32(0);
        for (int32_t s = 0; s < spans; s++, w += EQ_SPAN_BYTES) {
            const uint8x16_t v[4] = {vld1q_u8(w), vld1q_u8(w + 16), vld1q_u8(w + 32), vld1q_u8(w + 48)};
            for (int j = 0; j < per; j++) {
                const int8x16_t xb = bcast4(x + (size_t)s * span + 4 * j);
                const int8x16_t sh = vdupq_n_s8((int8_t)(-bits * j));
                for (int q = 0; q < 4; q++)
                    A[q] = vdotq_s32(A[q], vreinterpretq_s8_u8(vandq_u8(vshlq_u8(v[q], sh), m)), xb);
            }
        }
        for (int q = 0; q < 4; q++) vst1q_s32(out + EQ_ROW_TILE * t + 4 * q, A[q]);
    }
}

/* q1: 2 * sum - qsum; q2, ternary, q4: sum - offset * qsum */
#define ACC_TILED(NAME, SUMS, ATTR)                                                              \
    ATTR static void NAME##_q1(const eq_layer *L, const eq_act *a, int32_t *acc) {               \
        SUMS(L, a->q, acc);                                                                      \
        for (int32_t i = 0; i < eq_tiled_rows(L->n); i++) acc[i] = 2 * acc[i] - a->qsum;         \
    }                                                                                            \
    ATTR static void NAME##_fields(const eq_layer *L, const eq_act *a, int32_t *acc) {           \
        const int32_t corr = eq_fmt_offset[L->fmt] * a->qsum;                                    \
        SUMS(L, a->q, acc);                                                                      \
        for (int32_t i = 0; i < eq_tiled_rows(L->n); i++) acc[i] -= corr;                        \
    }

ACC_TILED(acc_neon, tiled_sums_neon, )
ACC_TILED(acc_dot, tiled_sums_dot, TDOT)

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

/* popcount: D = M & (sign_w ^ sign_x) counted with vcnt, tiled: a 16-byte quarter of
 * a span's plane is 4 rows' words. Byte counters take at most 31 spans (<= 248) and
 * are widened into the rows' lanes with two pairwise adds; dot = popcount(M)
 * (L->rowsum) - 2 popcount(D). */
static void acc_popcount_neon(const eq_layer *L, const eq_act *a, int32_t *acc) {
    const int32_t spans = L->kp / 32, tiles = eq_tiled_rows(L->n) / EQ_ROW_TILE;
    const size_t tb = (size_t)spans * 2 * EQ_SPAN_BYTES;
    const uint32_t *xs = (const uint32_t *)a->planes;
    for (int32_t t = 0; t < tiles; t++) {
        const uint8_t *w = L->w + tb * t;
        uint32x4_t A[4];
        for (int q = 0; q < 4; q++) A[q] = vdupq_n_u32(0);
        for (int32_t s0 = 0; s0 < spans; s0 += 31) {
            const int32_t end = s0 + 31 < spans ? s0 + 31 : spans;
            uint8x16_t B[4];
            for (int q = 0; q < 4; q++) B[q] = vdupq_n_u8(0);
            for (int32_t s = s0; s < end; s++) {
                const uint8_t *p = w + (size_t)2 * EQ_SPAN_BYTES * s;
                const uint8x16_t xb = vreinterpretq_u8_u32(vdupq_n_u32(xs[s]));
                for (int q = 0; q < 4; q++)
                    B[q] = vaddq_u8(B[q], vcntq_u8(vandq_u8(vld1q_u8(p + 64 + 16 * q), veorq_u8(vld1q_u8(p + 16 * q), xb))));
            }
            for (int q = 0; q < 4; q++) A[q] = vaddq_u32(A[q], vpaddlq_u16(vpaddlq_u8(B[q])));
        }
        for (int q = 0; q < 4; q++)
            vst1q_s32(acc + EQ_ROW_TILE * t + 4 * q,
                      vsubq_s32(vld1q_s32(L->rowsum + EQ_ROW_TILE * t + 4 * q), vshlq_n_s32(vreinterpretq_s32_u32(A[q]), 1)));
    }
}

static void gemv_f16_neon(const eq_layer *L, const float *x, float *y) {
    const int32_t k = L->k, kv = k / 8 * 8;
    for (int32_t i = 0; i < L->n; i++) {
        const float16_t *w = (const float16_t *)(L->w + (size_t)2 * L->kp * i);
        float32x4_t A0 = vdupq_n_f32(0.0f), A1 = A0;
        int32_t j = 0;
        for (; j < kv; j += 8) {
            if (!(j & 127)) EQ_PREFETCH(w + 2 * L->kp + j); /* two rows ahead, every fourth line */
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
    .name = "neon",
    .quant_i8 = eq_generic_quant_i8,
    .quant_sign = eq_generic_quant_sign,
    .acc = {[EQ_FMT_Q1] = acc_neon_q1,
            [EQ_FMT_Q2] = acc_neon_fields,
            [EQ_FMT_Q4] = acc_neon_fields,
            [EQ_FMT_Q8] = acc_q8_neon,
            [EQ_FMT_TERNARY] = acc_neon_fields,
            [EQ_FMT_F16] = NULL,
            [EQ_FMT_POPCOUNT] = acc_popcount_neon},
    .gemv_f16 = gemv_f16_neon,
    .dequant = eq_generic_dequant,
};

const eq_kernels eq_kernels_dotprod = {
    .name = "dotprod",
    .quant_i8 = eq_generic_quant_i8,
    .quant_sign = eq_generic_quant_sign,
    .acc = {[EQ_FMT_Q1] = acc_dot_q1,
            [EQ_FMT_Q2] = acc_dot_fields,
            [EQ_FMT_Q4] = acc_dot_fields,
            [EQ_FMT_Q8] = acc_q8_dot,
            [EQ_FMT_TERNARY] = acc_dot_fields,
            [EQ_FMT_F16] = NULL,
            [EQ_FMT_POPCOUNT] = acc_popcount_neon},
    .gemv_f16 = gemv_f16_neon,
    .dequant = eq_generic_dequant,
};

#endif
