/* Portable scalar kernels: the twin of every SIMD kernel, and the fallback.
 *
 * Overflow: every product is at most 128 * 127 = 16256 in magnitude, so an int32
 * accumulator holds any row of up to 131072 inputs (the binding rejects larger k).
 */
#include <math.h>
#include <string.h>

#include "eq_kernels.h"

void eq_generic_quant_i8(const float *x, int32_t k, eq_act *a) {
    float amax = 0.0f;
    for (int32_t j = 0; j < k; j++) {
        float v = fabsf(x[j]);
        amax = v > amax ? v : amax;
    }
    if (!(amax > 0.0f)) amax = 1.0f;
    const float s = (float)EQ_ACT_QMAX / amax;
    int32_t sum = 0;
    for (int32_t j = 0; j < k; j++) {
        float r = rintf(x[j] * s); /* ties to even, as numpy.rint */
        if (r > EQ_ACT_QMAX) r = EQ_ACT_QMAX;
        if (r < -EQ_ACT_QMAX) r = -EQ_ACT_QMAX;
        int8_t q = (int8_t)r;
        a->q[j] = q;
        a->qu[j] = (uint8_t)(q ^ 0x80);
        sum += q;
    }
    for (int32_t j = k; j < a->kp; j++) {
        a->q[j] = 0;
        a->qu[j] = 0x80;
    }
    a->qsum = sum;
    a->scale = amax / (float)EQ_ACT_QMAX;
}

/* binary activations for popcount: bit 1 marks a low input (x <= tau); the scale is
 * mean|x| (EQ_ACT_SIGN) or the mean of the high inputs (EQ_ACT_UNSIGNED) */
void eq_generic_quant_sign(const float *x, int32_t k, float tau, int32_t mode, eq_act *a) {
    const int32_t words = a->kp / 64;
    memset(a->planes, 0, sizeof(uint64_t) * (size_t)words);
    float tot = 0.0f, high = 0.0f;
    int32_t nhigh = 0;
    for (int32_t j = 0; j < k; j++) {
        tot += fabsf(x[j]);
        if (x[j] > tau) {
            high += x[j];
            nhigh++;
        } else {
            a->planes[j >> 6] |= 1ull << (j & 63);
        }
    }
    const float scale = mode == EQ_ACT_UNSIGNED ? (nhigh ? high / (float)nhigh : 0.0f) : tot / (float)k;
    a->scale = scale > 0.0f ? scale : 1.0f;
}

/* Tiled fields (q1, q2, ternary, q4; layout in formats.py): out[i] = sum of x * u over
 * every stored row i, u the stored unsigned field. */
static void tiled_sums(const eq_layer *L, const int8_t *x, int32_t *out) {
    const int bits = eq_fmt_bits[L->fmt], per = 8 / bits, span = 4 * per, mask = (1 << bits) - 1;
    const int32_t spans = L->kp / span, tiles = eq_tiled_rows(L->n) / EQ_ROW_TILE;
    const uint8_t *w = L->w;
    for (int32_t t = 0; t < tiles; t++) {
        int32_t s[EQ_ROW_TILE] = {0};
        for (int32_t sp = 0; sp < spans; sp++, w += EQ_SPAN_BYTES) {
            const int8_t *xs = x + (size_t)sp * span;
            for (int r = 0; r < EQ_ROW_TILE; r++)
                for (int c = 0; c < 4; c++) {
                    const int b = w[4 * r + c];
                    for (int j = 0; j < per; j++) s[r] += xs[4 * j + c] * ((b >> (bits * j)) & mask);
                }
        }
        memcpy(out + (size_t)t * EQ_ROW_TILE, s, sizeof s);
    }
}

/* q1: sum x*(2b-1) = 2*sum x*b - sum x */
static void acc_q1(const eq_layer *L, const eq_act *a, int32_t *acc) {
    tiled_sums(L, a->q, acc);
    for (int32_t i = 0; i < eq_tiled_rows(L->n); i++) acc[i] = 2 * acc[i] - a->qsum;
}

/* q2, ternary, q4: sum x*(u - offset) = sum x*u - offset * sum x */
static void acc_tiled(const eq_layer *L, const eq_act *a, int32_t *acc) {
    const int32_t corr = eq_fmt_offset[L->fmt] * a->qsum;
    tiled_sums(L, a->q, acc);
    for (int32_t i = 0; i < eq_tiled_rows(L->n); i++) acc[i] -= corr;
}

static void acc_q8(const eq_layer *L, const eq_act *a, int32_t *acc) {
    for (int32_t i = 0; i < L->n; i++) {
        const int8_t *row = (const int8_t *)L->w + (size_t)L->kp * i;
        int32_t s = 0;
        for (int32_t j = 0; j < L->kp; j++) s += a->q[j] * row[j];
        acc[i] = s;
    }
}

/* ternary weights x +-1 activations: with M = non-zero weights and D = M & (sign_w ^
 * low_x), dot = popcount(M) - 2 popcount(D); popcount(M) is L->rowsum. 0/1
 * activations are handled after the kernel (eq_linear_row). Tiled: per 32-column
 * span, 16 sign words then 16 mask words; the span's activation bits are one word. */
static void acc_popcount(const eq_layer *L, const eq_act *a, int32_t *acc) {
    const int32_t spans = L->kp / 32, tiles = eq_tiled_rows(L->n) / EQ_ROW_TILE;
    const uint32_t *w = (const uint32_t *)L->w, *xs = (const uint32_t *)a->planes;
    for (int32_t t = 0; t < tiles; t++) {
        int32_t d[EQ_ROW_TILE] = {0};
        for (int32_t s = 0; s < spans; s++, w += 2 * EQ_ROW_TILE)
            for (int r = 0; r < EQ_ROW_TILE; r++) d[r] += __builtin_popcount(w[EQ_ROW_TILE + r] & (w[r] ^ xs[s]));
        for (int r = 0; r < EQ_ROW_TILE; r++) acc[EQ_ROW_TILE * t + r] = L->rowsum[EQ_ROW_TILE * t + r] - 2 * d[r];
    }
}

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, f;
    if (exp == 0) {
        if (man == 0) {
            f = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            f = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        f = sign | 0x7f800000u | (man << 13);
    } else {
        f = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float out;
    memcpy(&out, &f, sizeof out);
    return out;
}

static void gemv_f16(const eq_layer *L, const float *x, float *y) {
    for (int32_t i = 0; i < L->n; i++) {
        const uint16_t *row = (const uint16_t *)L->w + (size_t)L->kp * i;
        float s = 0.0f;
        for (int32_t j = 0; j < L->k; j++) s += half_to_float(row[j]) * x[j];
        y[i] = s;
    }
}

const eq_kernels eq_kernels_generic = {
    .name = "generic",
    .quant_i8 = eq_generic_quant_i8,
    .quant_sign = eq_generic_quant_sign,
    .acc = {[EQ_FMT_Q1] = acc_q1,
            [EQ_FMT_Q2] = acc_tiled,
            [EQ_FMT_Q4] = acc_tiled,
            [EQ_FMT_Q8] = acc_q8,
            [EQ_FMT_TERNARY] = acc_tiled,
            [EQ_FMT_F16] = NULL,
            [EQ_FMT_POPCOUNT] = acc_popcount},
    .gemv_f16 = gemv_f16,
    .dequant = eq_generic_dequant,
};
