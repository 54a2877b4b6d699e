/* The parts of the integer embedder that every variant shares, as inline functions:
 * eq_cnn.c compiles them for the generic twin, the SIMD files inside functions with
 * their target attributes (so that the compiler vectorises them for that instruction
 * set). Elementwise float operations in a fixed order and integer sums only, so every
 * compilation gives the same bits (the module is built with -ffp-contract=off). */
#ifndef EQ_CNN_BODY_H
#define EQ_CNN_BODY_H

#include <stdint.h>

#include "eq_cnn.h"

#define EQ_INL static inline __attribute__((always_inline))

#define MAGIC 12582912.0f /* 1.5 * 2^23: (y + MAGIC) - MAGIC rounds |y| < 2^22 half to even, as rint */

EQ_INL float act_of(float f, int act) {
    if (act == EQ_CNN_ACT_RELU) return f > 0.0f ? f : 0.0f;
    if (act == EQ_CNN_ACT_HS) {
        float r = f + 3.0f;
        r = r < 0.0f ? 0.0f : r;
        r = r > 6.0f ? 6.0f : r;
        return f * r * (float)(1.0 / 6.0);
    }
    return f;
}

EQ_INL uint8_t requant(float f, float inv, int32_t zero) {
    float y = f * inv;
    y = y < -512.0f ? -512.0f : y;
    y = y > 512.0f ? 512.0f : y;
    int32_t v = (int32_t)((y + MAGIC) - MAGIC) + zero;
    return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

/* one pixel row; act and res constant where it is inlined, so that the compiler makes
 * a straight (vectorisable) loop of each case */
EQ_INL void epi_row(const eq_cnn_epi *e, const int32_t *a, int32_t n, const uint8_t *r, uint8_t *o, int act,
                    int res) {
    for (int32_t c = 0; c < n; c++) {
        float f = (float)(a[c] + e->corr[c]) * e->w_scale[c] + e->bias[c];
        if (res) f = f + (float)((int32_t)r[c] - e->res_zero[c]) * e->res_scale[c];
        o[c] = requant(act_of(f, act), e->out_inv[c], e->out_zero[c]);
    }
}

/* the float stem, one output row at a time: the input under each of the nine taps is
 * gathered into a row (zero outside the map), then every channel's sum runs along the
 * row in tap order (straight loops for the compiler). scratch: (cout + 9) x (w_out
 * rounded to 16) floats. */
EQ_INL void stem_body(const eq_cnn_op *op, const float *mel, uint8_t *out, float *scratch) {
    const int32_t C = op->cout, cs = eq_cnn_c4(C), W = op->w_in, Wo = op->w_out, Wp = (Wo + 15) & ~15;
    float *acc = scratch, *tap = scratch + (size_t)C * Wp;
    for (int32_t oy = 0; oy < op->h_out; oy++) {
        for (int32_t t = 0; t < 9; t++) {
            const int32_t iy = 2 * oy + t / 3 - 1, dx = t % 3 - 1;
            float *v = tap + (size_t)t * Wp;
            if (iy < 0 || iy >= op->h_in) {
                for (int32_t ox = 0; ox < Wo; ox++) v[ox] = 0.0f;
                continue;
            }
            const float *row = mel + (size_t)iy * W;
            for (int32_t ox = 0; ox < Wo; ox++) {
                const int32_t ix = 2 * ox + dx;
                v[ox] = (ix >= 0 && ix < W) ? row[ix] : 0.0f;
            }
        }
        for (int32_t c = 0; c < C; c++) {
            float *a = acc + (size_t)c * Wp;
            for (int32_t ox = 0; ox < Wo; ox++) a[ox] = 0.0f;
            for (int32_t t = 0; t < 9; t++) {
                const float w = op->fw[c * 9 + t], *v = tap + (size_t)t * Wp;
                for (int32_t ox = 0; ox < Wo; ox++) a[ox] = a[ox] + v[ox] * w;
            }
            const float b = op->fb[c], inv = op->epi.out_inv[c];
            const int32_t z = op->epi.out_zero[c];
            uint8_t *o = out + (size_t)oy * Wo * cs + c;
            for (int32_t ox = 0; ox < Wo; ox++) o[(size_t)ox * cs] = requant(act_of(a[ox] + b, EQ_CNN_ACT_HS), inv, z);
        }
    }
}

EQ_INL void channel_sums(const uint8_t *x, int32_t npix, int32_t C, int32_t *sum) {
    const int32_t cs = eq_cnn_c4(C);
    for (int32_t c = 0; c < C; c++) sum[c] = 0;
    for (int32_t p = 0; p < npix; p++)
        for (int32_t c = 0; c < C; c++) sum[c] += x[(size_t)p * cs + c];
}

/* mean of each channel (real value) from its integer sum */
EQ_INL void channel_means(const int32_t *sum, int32_t npix, int32_t C, const float *scale, const int32_t *zero,
                          float *m) {
    const float inv_n = (float)(1.0 / (double)npix);
    for (int32_t c = 0; c < C; c++) m[c] = (float)(sum[c] - npix * zero[c]) * scale[c] * inv_n;
}

/* y[o] = b[o] + sum_c w[o][c] x[c], summed in c order, without fused multiply-adds;
 * wt is w transposed (k x n), so that the outputs are one straight loop */
EQ_INL void float_layer(const float *wt, const float *b, const float *x, int32_t n, int32_t k, float *y) {
    for (int32_t o = 0; o < n; o++) y[o] = 0.0f;
    for (int32_t c = 0; c < k; c++) {
        const float xc = x[c], *w = wt + (size_t)c * n;
        for (int32_t o = 0; o < n; o++) y[o] = y[o] + xc * w[o];
    }
    for (int32_t o = 0; o < n; o++) y[o] = y[o] + b[o];
}

/* squeeze-excitation in place on x: fs holds 2 cin + cout floats, sums cin int32 */
EQ_INL void se_body(const eq_cnn_op *op, const int32_t *gate, float *fs, int32_t *sums, uint8_t *x) {
    const int32_t C = op->cin, S = op->cout, npix = op->h_in * op->w_in, cs = eq_cnn_c4(C);
    float *m = fs, *h = m + C, *z = h + S;
    int32_t *g = sums;
    channel_sums(x, npix, C, g);
    channel_means(g, npix, C, op->scale, op->zero, m);
    const float *w1t = op->packed, *w2t = w1t + (size_t)S * C; /* transposed copies */
    float_layer(w1t, op->fb, m, S, C, h);
    for (int32_t j = 0; j < S; j++) h[j] = h[j] > 0.0f ? h[j] : 0.0f;
    float_layer(w2t, op->fb + S, h, C, S, z);
    const float lim = (float)(EQ_CNN_GATE_RANGE * EQ_CNN_GATE_STEPS);
    for (int32_t c = 0; c < C; c++) {
        float y = z[c] * (float)EQ_CNN_GATE_STEPS;
        y = y < -lim ? -lim : (y > lim ? lim : y);
        g[c] = gate[(int32_t)((y + MAGIC) - MAGIC) + EQ_CNN_GATE_RANGE * EQ_CNN_GATE_STEPS];
    }
    for (int32_t p = 0; p < npix; p++) {
        uint8_t *xp = x + (size_t)p * cs;
        for (int32_t c = 0; c < C; c++) {
            const int32_t d = (int32_t)xp[c] - op->zero[c];
            xp[c] = (uint8_t)(op->zero[c] + ((d * g[c] + (1 << 14)) >> 15));
        }
    }
}

#endif
