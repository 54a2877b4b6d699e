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

/* max and min in the form that compilers turn into one vector instruction (maxps takes
 * its second operand unless the first is greater; no NaN reaches here) */
EQ_INL float max_f(float a, float b) { return a > b ? a : b; }
EQ_INL float min_f(float a, float b) { return a < b ? a : b; }

EQ_INL float act_of(float f, int act) {
    if (act == EQ_CNN_ACT_RELU) return max_f(f, 0.0f);
    if (act == EQ_CNN_ACT_HS) return f * min_f(max_f(f + 3.0f, 0.0f), 6.0f) * (float)(1.0 / 6.0);
    return f;
}

/* clamp(rint(f * inv) + zero, 0, 255), all in float (exact: small integers) */
EQ_INL uint8_t requant(float f, float inv, int32_t zero) {
    const float y = min_f(max_f(f * inv, -512.0f), 512.0f);
    const float q = ((y + MAGIC) - MAGIC) + (float)zero;
    return (uint8_t)(int32_t)min_f(max_f(q, 0.0f), 255.0f);
}

/* one pixel row; act and res constant where it is inlined, so that the compiler makes
 * a straight (vectorisable) loop of each case */
EQ_INL void epi_row(const eq_cnn_epi *e, const int32_t *restrict a, int32_t n, const uint8_t *restrict r,
                    uint8_t *restrict o, int act, int res) {
    const int32_t *restrict corr = e->corr, *restrict oz = e->out_zero, *restrict rz = e->res_zero;
    const float *restrict ws = e->w_scale, *restrict bias = e->bias, *restrict inv = e->out_inv,
                          *restrict rsc = e->res_scale;
    for (int32_t c = 0; c < n; c++) {
        float f = (float)(a[c] + corr[c]) * ws[c] + bias[c];
        if (res) f = f + (float)((int32_t)r[c] - rz[c]) * rsc[c];
        o[c] = requant(act_of(f, act), inv[c], oz[c]);
    }
}

/* the float stem (3x3, stride 2, padding 1), one output row at a time. Each input row is
 * split once into its even and odd samples, with zeros where the taps fall outside the
 * map, so that the input under every tap is a straight row (stem_split, stem_taps);
 * then every channel's sum runs along the output row in tap order and is requantised
 * into a row of its own (stem_channel), and the rows are interleaved into the
 * channels-last map (stem_interleave). scratch: eq_cnn_stem_scratch floats. */
EQ_INL int32_t stem_wp(const eq_cnn_op *op) { return (op->w_out + 16) & ~15; } /* Wo values, a zero after */

EQ_INL float *stem_split(const eq_cnn_op *op, const float *mel, float *scratch) {
    const int32_t H = op->h_in, W = op->w_in, Wp = stem_wp(op);
    float *restrict split = scratch, *restrict zeros = split + (size_t)2 * H * Wp;
    for (int32_t j = 0; j < Wp; j++) zeros[j] = 0.0f;
    for (int32_t r = 0; r < H; r++) { /* even[j] = x[2j]; odd[j] = x[2j - 1] (odd[0] = 0) */
        const float *restrict row = mel + (size_t)r * W;
        float *restrict ev = split + (size_t)2 * r * Wp, *restrict od = ev + Wp;
        const int32_t ne = (W + 1) / 2, no = W / 2; /* even samples, odd samples (Wo = ne <= Wp - 1) */
        /* a sample that is not finite counts as 0 (x - x is 0 only for finite x), as
         * the reference's nan_to_num(nan=0, posinf=0, neginf=0) */
        for (int32_t j = 0; j < ne; j++) ev[j] = row[2 * j] - row[2 * j] == 0.0f ? row[2 * j] : 0.0f;
        for (int32_t j = ne; j < Wp; j++) ev[j] = 0.0f;
        od[0] = 0.0f;
        for (int32_t j = 1; j <= no; j++) od[j] = row[2 * j - 1] - row[2 * j - 1] == 0.0f ? row[2 * j - 1] : 0.0f;
        for (int32_t j = no + 1; j < Wp; j++) od[j] = 0.0f;
    }
    return split;
}

/* the rows under the nine taps of output row oy: ix = 2 ox + dx is odd[ox] for dx = -1,
 * even[ox] for 0, odd[ox + 1] for +1; rows outside the map are zeros */
EQ_INL void stem_taps(const eq_cnn_op *op, const float *split, int32_t oy, const float **v) {
    const int32_t Wp = stem_wp(op);
    for (int32_t t = 0; t < 9; t++) {
        const int32_t iy = 2 * oy + t / 3 - 1, dx = t % 3 - 1;
        v[t] = (iy < 0 || iy >= op->h_in) ? split + (size_t)2 * op->h_in * Wp
                                          : split + (size_t)2 * iy * Wp + (dx == 0 ? 0 : Wp) + (dx > 0 ? 1 : 0);
    }
}

EQ_INL void stem_channel(const eq_cnn_op *op, int32_t c, const float *const *v, uint8_t *restrict q) {
    const float *w = op->fw + c * 9, b = op->fb[c], inv = op->epi.out_inv[c];
    const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5], w6 = w[6], w7 = w[7], w8 = w[8];
    const float *restrict v0 = v[0], *restrict v1 = v[1], *restrict v2 = v[2], *restrict v3 = v[3],
                          *restrict v4 = v[4], *restrict v5 = v[5], *restrict v6 = v[6], *restrict v7 = v[7],
                          *restrict v8 = v[8];
    const int32_t z = op->epi.out_zero[c];
    for (int32_t ox = 0; ox < op->w_out; ox++) { /* 0, then the taps in order: as the reference */
        float a = 0.0f;
        a = a + v0[ox] * w0;
        a = a + v1[ox] * w1;
        a = a + v2[ox] * w2;
        a = a + v3[ox] * w3;
        a = a + v4[ox] * w4;
        a = a + v5[ox] * w5;
        a = a + v6[ox] * w6;
        a = a + v7[ox] * w7;
        a = a + v8[ox] * w8;
        q[ox] = requant(act_of(a + b, EQ_CNN_ACT_HS), inv, z);
    }
}

/* qrow: cout rows of stem_wp bytes -> output row oy of the channels-last map */
EQ_INL void stem_interleave(const eq_cnn_op *op, const uint8_t *restrict qrow, int32_t oy, uint8_t *restrict out) {
    const int32_t C = op->cout, cs = eq_cnn_c4(C), Wo = op->w_out, Wp = stem_wp(op);
    uint8_t *restrict o = out + (size_t)oy * Wo * cs;
    for (int32_t ox = 0; ox < Wo; ox++)
        for (int32_t c = 0; c < C; c++) o[(size_t)ox * cs + c] = qrow[(size_t)c * Wp + ox];
}

EQ_INL uint8_t *stem_qrow(const eq_cnn_op *op, float *scratch) {
    return (uint8_t *)(scratch + (size_t)(2 * op->h_in + 1) * stem_wp(op));
}

EQ_INL void stem_body(const eq_cnn_op *op, const float *mel, uint8_t *out, float *scratch) {
    const float *split = stem_split(op, mel, scratch), *v[9];
    uint8_t *qrow = stem_qrow(op, scratch);
    for (int32_t oy = 0; oy < op->h_out; oy++) {
        stem_taps(op, split, oy, v);
        for (int32_t c = 0; c < op->cout; c++) stem_channel(op, c, v, qrow + (size_t)c * stem_wp(op));
        stem_interleave(op, qrow, oy, out);
    }
}

EQ_INL void channel_sums(const uint8_t *restrict x, int32_t npix, int32_t C, int32_t *restrict sum) {
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
EQ_INL void float_layer(const float *restrict wt, const float *restrict b, const float *restrict x, int32_t n,
                        int32_t k, float *restrict y) {
    for (int32_t o = 0; o < n; o++) y[o] = 0.0f;
    for (int32_t c = 0; c < k; c++) {
        const float xc = x[c], *w = wt + (size_t)c * n;
        for (int32_t o = 0; o < n; o++) y[o] = y[o] + xc * w[o];
    }
    for (int32_t o = 0; o < n; o++) y[o] = y[o] + b[o];
}

/* squeeze-excitation's gates (Q15, 0..2^15) from its channel sums: g holds the cin sums
 * and is overwritten by the gates; fs holds 2 cin + cout floats */
EQ_INL void se_gates(const eq_cnn_op *op, const int32_t *gate, float *fs, int32_t *g) {
    const int32_t C = op->cin, S = op->cout;
    float *m = fs, *h = m + C, *z = h + S;
    channel_means(g, op->h_in * op->w_in, C, op->scale, op->zero, m);
    const float *w1t = op->packed, *w2t = w1t + (size_t)S * C; /* transposed copies */
    float_layer(w1t, op->fb, m, S, C, h);
    for (int32_t j = 0; j < S; j++) h[j] = h[j] > 0.0f ? h[j] : 0.0f;
    float_layer(w2t, op->fb + S, h, C, S, z);
    const float lim = (float)(EQ_CNN_GATE_RANGE * EQ_CNN_GATE_STEPS);
    for (int32_t c = 0; c < C; c++) {
        float y = z[c] * (float)EQ_CNN_GATE_STEPS;
        y = y > -lim ? (y < lim ? y : lim) : -lim; /* a NaN (a damaged weight) gives -lim, never an index */
        g[c] = gate[(int32_t)((y + MAGIC) - MAGIC) + EQ_CNN_GATE_RANGE * EQ_CNN_GATE_STEPS];
    }
}

/* squeeze-excitation in place on x: fs holds 2 cin + cout floats, sums cin int32 */
EQ_INL void se_body(const eq_cnn_op *op, const int32_t *gate, float *fs, int32_t *sums, uint8_t *x) {
    const int32_t C = op->cin, npix = op->h_in * op->w_in, cs = eq_cnn_c4(C);
    channel_sums(x, npix, C, sums);
    se_gates(op, gate, fs, sums);
    const int32_t *restrict zero = op->zero, *restrict gg = sums;
    for (int32_t p = 0; p < npix; p++) {
        uint8_t *restrict xp = x + (size_t)p * cs;
        for (int32_t c = 0; c < C; c++) {
            const int32_t d = (int32_t)xp[c] - zero[c];
            xp[c] = (uint8_t)(zero[c] + ((d * gg[c] + (1 << 14)) >> 15));
        }
    }
}

/* The body of a depthwise output row for variants whose pixel function PX(zp, w, base, C,
 * xs, row, k, ty0, ty1, tx0, tx1, epi, o) works on the wide layout (eq_cnn_dw_pack_wide:
 * zero points, then the taps): each output pixel with the taps inside the map, interior
 * pixels of 3x3 and 5x5 kernels with the size and ranges as constants, so that the
 * compiler unrolls their taps. */
#define EQ_CNN_DW_ROW(PX, packed, op, x, xs, oy, out)                                                         \
    do {                                                                                                      \
        const int32_t k_ = (op)->k, s_ = (op)->stride, pad_ = (op)->pad, C_ = (op)->cout;                     \
        const int32_t cs_ = eq_cnn_c4(C_), row_ = (op)->w_in * (xs);                                          \
        const int32_t *zp_ = (const int32_t *)(packed), *w_ = zp_ + ((C_ + 15) & ~15);                       \
        int32_t ty0_, ty1_;                                                                                   \
        eq_cnn_tap_range((oy), s_, pad_, k_, (op)->h_in, &ty0_, &ty1_);                                       \
        const int full_y_ = ty0_ == 0 && ty1_ == k_;                                                          \
        for (int32_t ox_ = 0; ox_ < (op)->w_out; ox_++) {                                                     \
            int32_t tx0_, tx1_;                                                                               \
            eq_cnn_tap_range(ox_, s_, pad_, k_, (op)->w_in, &tx0_, &tx1_);                                    \
            const uint8_t *base_ = (x) + ((ptrdiff_t)((oy) * s_ - pad_) * (op)->w_in + (ox_ * s_ - pad_)) * (xs); \
            uint8_t *o_ = (out) + (size_t)ox_ * cs_;                                                          \
            if (full_y_ && tx0_ == 0 && tx1_ == k_ && k_ == 3)                                                \
                PX(zp_, w_, base_, C_, (xs), row_, 3, 0, 3, 0, 3, &(op)->epi, o_);                            \
            else if (full_y_ && tx0_ == 0 && tx1_ == k_ && k_ == 5)                                           \
                PX(zp_, w_, base_, C_, (xs), row_, 5, 0, 5, 0, 5, &(op)->epi, o_);                            \
            else                                                                                              \
                PX(zp_, w_, base_, C_, (xs), row_, k_, ty0_, ty1_, tx0_, tx1_, &(op)->epi, o_);               \
        }                                                                                                     \
    } while (0)

#endif
