/* 64-bit ARM variants of the integer embedder's convolutions (eq_cnn.h): NEON (uint8
 * and int8 widened to int16, vmlal into int32) and NEON with sdot (ARMv8.2 dotprod:
 * the uint8 inputs offset by -128 to int8, four products per int32 lane, and 128 x the
 * row's weight sum added back). Exact integer sums: bit for bit the generic twins. */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <string.h>

#include "eq_cnn.h"
#include "eq_cnn_body.h"

#define TDOT __attribute__((target("arch=armv8.2-a+dotprod")))

static inline int32_t up16(int32_t n) { return (n + 15) & ~15; }

/* the requantisation's parameters for 8 channels (two vectors of 4), loaded once for
 * many pixels */
typedef struct {
    int32x4_t corr[2], out_zero[2], res_zero[2];
    float32x4_t w_scale[2], bias[2], out_inv[2], res_scale[2];
    int act, res;
} epi8;

static inline __attribute__((always_inline)) epi8 epi_load_neon(const eq_cnn_epi *e, int32_t c, int res) {
    epi8 P;
    for (int h = 0; h < 2; h++) {
        const int32_t j = c + 4 * h;
        P.corr[h] = vld1q_s32(e->corr + j), P.out_zero[h] = vld1q_s32(e->out_zero + j);
        P.w_scale[h] = vld1q_f32(e->w_scale + j), P.bias[h] = vld1q_f32(e->bias + j);
        P.out_inv[h] = vld1q_f32(e->out_inv + j);
        P.res_zero[h] = res ? vld1q_s32(e->res_zero + j) : vdupq_n_s32(0);
        P.res_scale[h] = res ? vld1q_f32(e->res_scale + j) : vdupq_n_f32(0.0f);
    }
    P.act = e->act, P.res = res;
    return P;
}

/* the generic requantisation of 8 channels (the first n of them stored) of one pixel, in
 * the same operations and order (separate multiplies and adds: vmlaq_f32 would fuse
 * them; rounding to nearest even in the conversion, as (y + MAGIC) - MAGIC) */
static inline __attribute__((always_inline)) void epi_apply_neon(const epi8 *P, int32x4_t a0, int32x4_t a1,
                                                                  const uint8_t *r, int32_t n, uint8_t *o) {
    const float32x4_t zero = vdupq_n_f32(0.0f);
    uint8_t rb[8] = {0};
    if (P->res) memcpy(rb, r, (size_t)(n < 8 ? n : 8));
    const uint16x8_t r16 = vmovl_u8(vld1_u8(rb));
    int32x4_t q[2];
    for (int h = 0; h < 2; h++) {
        const int32x4_t s = vaddq_s32(h ? a1 : a0, P->corr[h]);
        float32x4_t f = vaddq_f32(vmulq_f32(vcvtq_f32_s32(s), P->w_scale[h]), P->bias[h]);
        if (P->res) {
            const uint32x4_t rv = vmovl_u16(h ? vget_high_u16(r16) : vget_low_u16(r16));
            const float32x4_t d = vcvtq_f32_s32(vsubq_s32(vreinterpretq_s32_u32(rv), P->res_zero[h]));
            f = vaddq_f32(f, vmulq_f32(d, P->res_scale[h]));
        } else if (P->act == EQ_CNN_ACT_RELU) {
            f = vmaxq_f32(f, zero);
        } else if (P->act == EQ_CNN_ACT_HS) {
            const float32x4_t t = vminq_f32(vmaxq_f32(vaddq_f32(f, vdupq_n_f32(3.0f)), zero), vdupq_n_f32(6.0f));
            f = vmulq_f32(vmulq_f32(f, t), vdupq_n_f32((float)(1.0 / 6.0)));
        }
        /* clamped at the top only (as codes_512 does): below -512 the narrowing makes every
         * code 0 all the same; above, the conversion's saturation plus the zero point would wrap */
        const float32x4_t y = vminq_f32(vmulq_f32(f, P->out_inv[h]), vdupq_n_f32(512.0f));
        q[h] = vaddq_s32(vcvtnq_s32_f32(y), P->out_zero[h]);
    }
    const uint8x8_t b = vqmovn_u16(vcombine_u16(vqmovun_s32(q[0]), vqmovun_s32(q[1])));
    if (n >= 8)
        vst1_u8(o, b);
    else {
        uint8_t tmp[8];
        vst1_u8(tmp, b);
        memcpy(o, tmp, (size_t)n);
    }
}

/* one output pixel's depthwise sums over taps [ty0, ty1) x [tx0, tx1), requantised;
 * inlined with constant bounds for the interior */
static inline __attribute__((always_inline)) void dw_px_neon(const int32_t *zp, const int32_t *w, const uint8_t *base,
                                                              int32_t C, int32_t xs, int32_t row, int32_t k,
                                                              int32_t ty0, int32_t ty1, int32_t tx0, int32_t tx1,
                                                              const eq_cnn_epi *e, uint8_t *o) {
    const int32_t c16 = up16(C);
    for (int32_t c = 0; c < C; c += 8) {
        const int32x4_t z0 = vld1q_s32(zp + c), z1 = vld1q_s32(zp + c + 4);
        int32x4_t a0 = vdupq_n_s32(0), a1 = vdupq_n_s32(0);
        for (int32_t ty = ty0; ty < ty1; ty++)
            for (int32_t tx = tx0; tx < tx1; tx++) {
                const uint16x8_t b = vmovl_u8(vld1_u8(base + (size_t)ty * row + (size_t)tx * xs + c));
                const int32_t *wt = w + (size_t)(ty * k + tx) * c16 + c;
                a0 = vmlaq_s32(a0, vsubq_s32(vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(b))), z0), vld1q_s32(wt));
                a1 = vmlaq_s32(a1, vsubq_s32(vreinterpretq_s32_u32(vmovl_u16(vget_high_u16(b))), z1), vld1q_s32(wt + 4));
            }
        const epi8 P = epi_load_neon(e, c, 0);
        epi_apply_neon(&P, a0, a1, NULL, C - c, o + c);
    }
}

/* the depthwise row and its requantisation in one pass (both ARM variants) */
static void dw_row_neon(const void *packed, const eq_cnn_op *op, const uint8_t *x, int32_t xs, int32_t oy,
                        uint8_t *out) {
    EQ_CNN_DW_ROW(dw_px_neon, packed, op, x, xs, oy, out);
}

/* ==================================================================== NEON */

/* pointwise weights: [k][n rounded to 8] int16: one input's weights for 8 outputs per load */
static size_t pw_bytes_neon(int32_t n, int32_t k) { return (size_t)2 * ((n + 7) & ~7) * eq_cnn_c4(k); }

static void pw_pack_neon(const int8_t *w, int32_t n, int32_t k, void *out) {
    const int32_t n8 = (n + 7) & ~7;
    int16_t *o = out;
    memset(o, 0, pw_bytes_neon(n, k));
    for (int32_t r = 0; r < n; r++)
        for (int32_t c = 0; c < k; c++) o[(size_t)c * n8 + r] = w[(size_t)r * k + c];
}

/* outputs o..o+7 of one pixel: (lo, hi) */
static inline __attribute__((always_inline)) void px8_neon(const int16_t *w, int32_t n8, int32_t k, int32_t o,
                                                            const uint8_t *xp, int32x4_t *lo, int32x4_t *hi) {
    int32x4_t a0 = vdupq_n_s32(0), a1 = vdupq_n_s32(0);
    for (int32_t c = 0; c < k; c++) {
        const int16x8_t wv = vld1q_s16(w + (size_t)c * n8 + o);
        const int16x4_t xv = vdup_n_s16((int16_t)xp[c]);
        a0 = vmlal_s16(a0, vget_low_s16(wv), xv);
        a1 = vmlal_s16(a1, vget_high_s16(wv), xv);
    }
    *lo = a0, *hi = a1;
}

static void pw_acc_neon(const void *packed, int32_t n, int32_t k, const uint8_t *x, int32_t xs, int32_t npix,
                        int32_t *acc, int32_t accs) {
    const int32_t n8 = (n + 7) & ~7;
    for (int32_t p = 0; p < npix; p++)
        for (int32_t o = 0; o < n8; o += 8) {
            int32x4_t lo, hi;
            px8_neon(packed, n8, k, o, x + (size_t)p * xs, &lo, &hi);
            vst1q_s32(acc + (size_t)p * accs + o, lo);
            vst1q_s32(acc + (size_t)p * accs + o + 4, hi);
        }
}

#define PWN_TILE 4
/* one input (lane i of each pixel's widened inputs xv) times its 8 weights, into the tile */
#define PWN_LANE(i)                                                                           \
    do {                                                                                      \
        const int16x8_t wv = vld1q_s16(w + (size_t)(c + (i)) * n8 + o);                       \
        for (int j = 0; j < np; j++) {                                                        \
            lo[j] = vmlal_laneq_s16(lo[j], vget_low_s16(wv), xv[j], (i));                     \
            hi[j] = vmlal_high_laneq_s16(hi[j], wv, xv[j], (i));                              \
        }                                                                                     \
    } while (0)

/* outputs o..o+7 of np <= PWN_TILE pixels (rows xs bytes apart): each weight load serves
 * every pixel of the tile, and 8 inputs of a pixel are widened once and used lane by lane */
static inline __attribute__((always_inline)) void tile4_neon(const int16_t *w, int32_t n8, int32_t k, int32_t o,
                                                              const uint8_t *xp, int32_t xs, int32_t np,
                                                              int32x4_t *lo, int32x4_t *hi) {
    for (int j = 0; j < PWN_TILE; j++) lo[j] = vdupq_n_s32(0), hi[j] = vdupq_n_s32(0);
    int32_t c = 0;
    for (; c + 8 <= k; c += 8) {
        int16x8_t xv[PWN_TILE];
        for (int j = 0; j < np; j++) xv[j] = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(xp + (size_t)j * xs + c)));
        PWN_LANE(0);
        PWN_LANE(1);
        PWN_LANE(2);
        PWN_LANE(3);
        PWN_LANE(4);
        PWN_LANE(5);
        PWN_LANE(6);
        PWN_LANE(7);
    }
    for (; c < k; c++) {
        const int16x8_t wv = vld1q_s16(w + (size_t)c * n8 + o);
        for (int j = 0; j < np; j++) {
            const int16x4_t x1 = vdup_n_s16((int16_t)xp[(size_t)j * xs + c]);
            lo[j] = vmlal_s16(lo[j], vget_low_s16(wv), x1);
            hi[j] = vmlal_s16(hi[j], vget_high_s16(wv), x1);
        }
    }
}

/* pw_acc_neon and the requantisation in one pass: tiles of 4 pixels x 8 outputs */
static void pw_row_neon(const void *packed, int32_t n, int32_t k, const uint8_t *x, int32_t xs, int32_t npix,
                        const eq_cnn_epi *e, const uint8_t *res, int32_t rs, uint8_t *out, int32_t os) {
    const int32_t n8 = (n + 7) & ~7;
    const int16_t *w = packed;
    for (int32_t o = 0; o < n8; o += 8) {
        const epi8 P = epi_load_neon(e, o, res != NULL);
        for (int32_t p = 0; p < npix; p += PWN_TILE) {
            const int32_t np = npix - p < PWN_TILE ? npix - p : PWN_TILE;
            int32x4_t lo[PWN_TILE], hi[PWN_TILE];
            if (np == PWN_TILE) /* a constant count: the pixel loops unroll without tests */
                tile4_neon(w, n8, k, o, x + (size_t)p * xs, xs, PWN_TILE, lo, hi);
            else
                tile4_neon(w, n8, k, o, x + (size_t)p * xs, xs, np, lo, hi);
            for (int j = 0; j < np; j++)
                epi_apply_neon(&P, lo[j], hi[j], res ? res + (size_t)(p + j) * rs + o : NULL, n - o,
                               out + (size_t)(p + j) * os + o);
        }
    }
}

/* squeeze-excitation, 8 channels at a time (the generic body where the channels are not
 * a multiple of 8): the channel sums in 16-bit lanes (flushed to 32 bits every 256
 * pixels), the gates as se_gates, then zero + (x - zero) x gate by vqrdmulh, whose
 * (2 d g + 2^15) >> 16 is the reference's (d g + 2^14) >> 15; a gate of one (2^15) becomes
 * 2^15 - 1, which gives the same d for every |d| <= 255 (as in se_512) */
static void se_neon(const eq_cnn_op *op, const int32_t *gate, float *fs, int32_t *sums, uint8_t *x) {
    const int32_t C = op->cin, npix = op->h_in * op->w_in, cs = eq_cnn_c4(C);
    if (C % 8) {
        eq_cnn_se_generic(op, gate, fs, sums, x);
        return;
    }
    for (int32_t c = 0; c < C; c += 8) {
        uint32x4_t lo = vdupq_n_u32(0), hi = vdupq_n_u32(0);
        for (int32_t p0 = 0; p0 < npix; p0 += 256) {
            const int32_t p1 = npix - p0 < 256 ? npix : p0 + 256;
            uint16x8_t s = vdupq_n_u16(0);
            for (int32_t p = p0; p < p1; p++) s = vaddw_u8(s, vld1_u8(x + (size_t)p * cs + c));
            lo = vaddw_u16(lo, vget_low_u16(s)), hi = vaddw_u16(hi, vget_high_u16(s));
        }
        vst1q_s32(sums + c, vreinterpretq_s32_u32(lo)), vst1q_s32(sums + c + 4, vreinterpretq_s32_u32(hi));
    }
    se_gates(op, gate, fs, sums);
    const int32x4_t top = vdupq_n_s32((1 << 15) - 1);
    for (int32_t c = 0; c < C; c += 8) {
        const int16x8_t g = vcombine_s16(vmovn_s32(vminq_s32(vld1q_s32(sums + c), top)),
                                         vmovn_s32(vminq_s32(vld1q_s32(sums + c + 4), top)));
        const int16x8_t z = vcombine_s16(vmovn_s32(vld1q_s32(op->zero + c)), vmovn_s32(vld1q_s32(op->zero + c + 4)));
        for (int32_t p = 0; p < npix; p++) {
            uint8_t *xp = x + (size_t)p * cs + c;
            const int16x8_t d = vsubq_s16(vreinterpretq_s16_u16(vmovl_u8(vld1_u8(xp))), z);
            vst1_u8(xp, vqmovun_s16(vaddq_s16(vqrdmulhq_s16(d, g), z)));
        }
    }
}

/* 16-bit codes into pw_pack_neon's layout (int16 already; vmlal sums in int32) */
static void pw_pack16_neon(const int8_t *hi, const int8_t *lo, int32_t n, int32_t k, void *out) {
    eq_cnn_pw_pack16(hi, lo, n, k, 1, pw_bytes_neon(n, k), out);
}

const eq_cnn_kernels eq_cnn_neon = {
    .name = "neon",
    .pw_bytes = pw_bytes_neon,
    .pw_pack = pw_pack_neon,
    .pw_acc = pw_acc_neon,
    .dw_bytes = eq_cnn_dw_bytes_wide,
    .dw_pack = eq_cnn_dw_pack_wide,
    .stem = eq_cnn_stem_generic,
    .se = se_neon,
    .pw_row = pw_row_neon,
    .dw_row = dw_row_neon,
    .pw_pack16 = pw_pack16_neon,
};

/* ==================================================================== NEON + sdot */

/* pointwise weights: [k/4][n rounded to 16][4] int8 (four inputs of 4 outputs per
 * 16-byte load), then each output's weight sum (int32, n rounded to 16) */
static size_t pw_bytes_dot(int32_t n, int32_t k) { return (size_t)up16(n) * eq_cnn_c4(k) + (size_t)4 * up16(n); }

static void pw_pack_dot(const int8_t *w, int32_t n, int32_t k, void *out) {
    const int32_t n16 = up16(n);
    int8_t *o = out;
    memset(o, 0, pw_bytes_dot(n, k));
    int32_t *sum = (int32_t *)(o + (size_t)n16 * eq_cnn_c4(k));
    for (int32_t r = 0; r < n; r++)
        for (int32_t c = 0; c < k; c++) {
            o[((size_t)(c / 4) * n16 + r) * 4 + c % 4] = w[(size_t)r * k + c];
            sum[r] += w[(size_t)r * k + c];
        }
}

/* outputs o..o+15 of one pixel, in a[4] */
TDOT static inline __attribute__((always_inline)) void px16_dot(const int8_t *w, const int32_t *sum, int32_t n16,
                                                                 int32_t kq, int32_t o, const uint8_t *xp, int32x4_t *a) {
    const uint8x16_t flip = vdupq_n_u8(0x80);
    for (int j = 0; j < 4; j++) a[j] = vshlq_n_s32(vld1q_s32(sum + o + 4 * j), 7); /* 128 x sum */
    for (int32_t q = 0; q < kq; q++) {
        uint32_t f;
        memcpy(&f, xp + 4 * q, 4);
        const int8x16_t xv = vreinterpretq_s8_u8(veorq_u8(vreinterpretq_u8_u32(vdupq_n_u32(f)), flip));
        const int8_t *wq = w + ((size_t)q * n16 + o) * 4;
        for (int j = 0; j < 4; j++) a[j] = vdotq_s32(a[j], vld1q_s8(wq + 16 * j), xv);
    }
}

TDOT static void pw_acc_dot(const void *packed, int32_t n, int32_t k, const uint8_t *x, int32_t xs, int32_t npix,
                            int32_t *acc, int32_t accs) {
    const int32_t n16 = up16(n), kq = eq_cnn_c4(k) / 4;
    const int8_t *w = packed;
    const int32_t *sum = (const int32_t *)(w + (size_t)n16 * eq_cnn_c4(k));
    for (int32_t p = 0; p < npix; p++)
        for (int32_t o = 0; o < n16; o += 16) {
            int32x4_t a[4];
            px16_dot(w, sum, n16, kq, o, x + (size_t)p * xs, a);
            for (int j = 0; j < 4; j++) vst1q_s32(acc + (size_t)p * accs + o + 4 * j, a[j]);
        }
}

/* one group of 4 inputs (lane L of each pixel's 16 flipped inputs xv) times its weights
 * for 16 outputs, into the tile */
#define PWD_LANE(L)                                                                           \
    do {                                                                                      \
        const int8_t *wq = w + ((size_t)(q + (L)) * n16 + o) * 4;                            \
        const int8x16_t w0 = vld1q_s8(wq), w1 = vld1q_s8(wq + 16), w2 = vld1q_s8(wq + 32),   \
                        w3 = vld1q_s8(wq + 48);                                              \
        for (int j = 0; j < np; j++) {                                                        \
            a[j][0] = vdotq_laneq_s32(a[j][0], w0, xv[j], (L));                                \
            a[j][1] = vdotq_laneq_s32(a[j][1], w1, xv[j], (L));                                \
            a[j][2] = vdotq_laneq_s32(a[j][2], w2, xv[j], (L));                                \
            a[j][3] = vdotq_laneq_s32(a[j][3], w3, xv[j], (L));                                \
        }                                                                                     \
    } while (0)

/* outputs o..o+15 of np <= PWN_TILE pixels: each weight load serves every pixel of the
 * tile, and 16 inputs of a pixel are loaded and flipped once, their groups of 4 used by
 * lane (sdot by element) */
TDOT static inline __attribute__((always_inline)) void tile4_dot(const int8_t *w, const int32_t *sum, int32_t n16,
                                                                  int32_t kq, int32_t o, const uint8_t *xp, int32_t xs,
                                                                  int32_t np, int32x4_t a[PWN_TILE][4]) {
    const uint8x16_t flip = vdupq_n_u8(0x80);
    for (int j = 0; j < PWN_TILE; j++)
        for (int i = 0; i < 4; i++) a[j][i] = vshlq_n_s32(vld1q_s32(sum + o + 4 * i), 7); /* 128 x sum */
    int32_t q = 0;
    for (; q + 4 <= kq; q += 4) {
        int8x16_t xv[PWN_TILE];
        for (int j = 0; j < np; j++)
            xv[j] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(xp + (size_t)j * xs + 4 * q), flip));
        PWD_LANE(0);
        PWD_LANE(1);
        PWD_LANE(2);
        PWD_LANE(3);
    }
    for (; q < kq; q++) {
        const int8_t *wq = w + ((size_t)q * n16 + o) * 4;
        for (int j = 0; j < np; j++) {
            uint32_t f;
            memcpy(&f, xp + (size_t)j * xs + 4 * q, 4);
            const int8x16_t x1 = vreinterpretq_s8_u8(veorq_u8(vreinterpretq_u8_u32(vdupq_n_u32(f)), flip));
            for (int i = 0; i < 4; i++) a[j][i] = vdotq_s32(a[j][i], vld1q_s8(wq + 16 * i), x1);
        }
    }
}

/* pw_acc_dot and the requantisation in one pass: tiles of 4 pixels x 16 outputs in
 * registers. wl: for 16-bit codes, the low parts (w the high ones, each in pw_pack_dot's
 * layout with its own sums): both parts' tiles, the high sums shifted 8 bits and the low
 * ones added before the requantisation, as pw_row_wide_512 does; NULL for int8 codes */
TDOT static inline __attribute__((always_inline)) void pw_rows_dot(const int8_t *w, const int8_t *wl, int32_t n,
                                                                    int32_t k, const uint8_t *x, int32_t xs,
                                                                    int32_t npix, const eq_cnn_epi *e,
                                                                    const uint8_t *res, int32_t rs, uint8_t *out,
                                                                    int32_t os) {
    const int32_t n16 = up16(n), kq = eq_cnn_c4(k) / 4;
    const int32_t *sum = (const int32_t *)(w + (size_t)n16 * eq_cnn_c4(k));
    const int32_t *sum_l = wl ? (const int32_t *)(wl + (size_t)n16 * eq_cnn_c4(k)) : NULL;
    for (int32_t o = 0; o < n16; o += 16) {
        const epi8 P0 = epi_load_neon(e, o, res != NULL), P1 = epi_load_neon(e, o + 8, res != NULL);
        for (int32_t p = 0; p < npix; p += PWN_TILE) {
            const int32_t np = npix - p < PWN_TILE ? npix - p : PWN_TILE;
            const uint8_t *xp = x + (size_t)p * xs;
            int32x4_t a[PWN_TILE][4];
            if (np == PWN_TILE)
                tile4_dot(w, sum, n16, kq, o, xp, xs, PWN_TILE, a);
            else
                tile4_dot(w, sum, n16, kq, o, xp, xs, np, a);
            if (wl) {
                int32x4_t b[PWN_TILE][4];
                if (np == PWN_TILE)
                    tile4_dot(wl, sum_l, n16, kq, o, xp, xs, PWN_TILE, b);
                else
                    tile4_dot(wl, sum_l, n16, kq, o, xp, xs, np, b);
                for (int j = 0; j < np; j++)
                    for (int i = 0; i < 4; i++) a[j][i] = vaddq_s32(vshlq_n_s32(a[j][i], 8), b[j][i]);
            }
            for (int j = 0; j < np; j++) {
                const uint8_t *r = res ? res + (size_t)(p + j) * rs + o : NULL;
                uint8_t *op = out + (size_t)(p + j) * os + o;
                epi_apply_neon(&P0, a[j][0], a[j][1], r, n - o, op);
                if (n - o > 8) epi_apply_neon(&P1, a[j][2], a[j][3], r ? r + 8 : NULL, n - o - 8, op + 8);
            }
        }
    }
}

TDOT static void pw_row_dot(const void *packed, int32_t n, int32_t k, const uint8_t *x, int32_t xs, int32_t npix,
                            const eq_cnn_epi *e, const uint8_t *res, int32_t rs, uint8_t *out, int32_t os) {
    pw_rows_dot(packed, NULL, n, k, x, xs, npix, e, res, rs, out, os);
}

TDOT static void pw_row_wide_dot(const void *hi, const void *lo, int32_t n, int32_t k, const uint8_t *x, int32_t xs,
                                 int32_t npix, const eq_cnn_epi *e, const uint8_t *res, int32_t rs, uint8_t *out,
                                 int32_t os) {
    pw_rows_dot(hi, lo, n, k, x, xs, npix, e, res, rs, out, os);
}

const eq_cnn_kernels eq_cnn_dotprod = {
    .name = "dotprod",
    .pw_bytes = pw_bytes_dot,
    .pw_pack = pw_pack_dot,
    .pw_acc = pw_acc_dot,
    .dw_bytes = eq_cnn_dw_bytes_wide,
    .dw_pack = eq_cnn_dw_pack_wide,
    .stem = eq_cnn_stem_generic,
    .se = se_neon,
    .pw_row = pw_row_dot,
    .dw_row = dw_row_neon,
    .pw_row_wide = pw_row_wide_dot,
};

#endif
