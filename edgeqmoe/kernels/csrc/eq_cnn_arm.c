/* 64-bit ARM variants of the integer embedder's convolutions (eq_cnn.h): NEON (uint8
 * and int8 widened to int16, vmlal into int32) and NEON with sdot (ARMv8.2 dotprod:
 * the uint8 inputs offset by -128 to int8, four products per int32 lane, and 128 x the
 * row's weight sum added back). Exact integer sums: bit for bit the generic twins. */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <string.h>

#include "eq_cnn.h"

#define TDOT __attribute__((target("arch=armv8.2-a+dotprod")))

static inline int32_t up16(int32_t n) { return (n + 15) & ~15; }

/* depthwise, both variants: 8 channels at a time in int32 */
static void dw_acc_neon(const void *packed, const eq_cnn_op *op, const uint8_t *x, int32_t xs, int32_t oy,
                        int32_t *acc, int32_t accs) {
    const int32_t k = op->k, s = op->stride, pad = (k - 1) / 2, c16 = up16(op->cout);
    const int32_t *zp = packed, *w = zp + c16;
    int32_t ty0, ty1;
    eq_cnn_tap_range(oy, s, pad, k, op->h_in, &ty0, &ty1);
    for (int32_t ox = 0; ox < op->w_out; ox++) {
        int32_t tx0, tx1;
        eq_cnn_tap_range(ox, s, pad, k, op->w_in, &tx0, &tx1);
        const uint8_t *base = x + ((ptrdiff_t)(oy * s - pad) * op->w_in + (ox * s - pad)) * xs;
        for (int32_t c = 0; c < c16; c += 8) {
            const int32x4_t z0 = vld1q_s32(zp + c), z1 = vld1q_s32(zp + c + 4);
            int32x4_t a0 = vdupq_n_s32(0), a1 = vdupq_n_s32(0);
            for (int32_t ty = ty0; ty < ty1; ty++)
                for (int32_t tx = tx0; tx < tx1; tx++) {
                    const uint16x8_t b = vmovl_u8(vld1_u8(base + ((size_t)ty * op->w_in + tx) * xs + c));
                    const int32_t *wt = w + (size_t)(ty * k + tx) * c16 + c;
                    const int32x4_t v0 = vsubq_s32(vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(b))), z0);
                    const int32x4_t v1 = vsubq_s32(vreinterpretq_s32_u32(vmovl_u16(vget_high_u16(b))), z1);
                    a0 = vmlaq_s32(a0, v0, vld1q_s32(wt));
                    a1 = vmlaq_s32(a1, v1, vld1q_s32(wt + 4));
                }
            vst1q_s32(acc + (size_t)ox * accs + c, a0);
            vst1q_s32(acc + (size_t)ox * accs + c + 4, a1);
        }
    }
}

#define MAGIC 12582912.0f /* as in eq_cnn_body.h: (y + MAGIC) - MAGIC rounds half to even */

/* the generic requantisation, 8 channels at a time, in the same operations and order
 * (separate multiplies and adds: vmlaq_f32 would fuse them) */
static void epilogue_neon(const eq_cnn_epi *e, const int32_t *acc, int32_t accs, int32_t npix, int32_t n,
                          const uint8_t *res, int32_t rs, uint8_t *out, int32_t os) {
    const float32x4_t zero = vdupq_n_f32(0.0f), three = vdupq_n_f32(3.0f), six = vdupq_n_f32(6.0f),
                      sixth = vdupq_n_f32((float)(1.0 / 6.0)), lo = vdupq_n_f32(-512.0f), hi = vdupq_n_f32(512.0f),
                      magic = vdupq_n_f32(MAGIC);
    for (int32_t p = 0; p < npix; p++) {
        const int32_t *a = acc + (size_t)p * accs;
        uint8_t *o = out + (size_t)p * os;
        for (int32_t c = 0; c < n; c += 8) {
            uint8_t rb[8] = {0};
            if (res) memcpy(rb, res + (size_t)p * rs + c, (size_t)(n - c < 8 ? n - c : 8));
            const uint16x8_t r16 = vmovl_u8(vld1_u8(rb));
            int32x4_t q[2];
            for (int h = 0; h < 2; h++) {
                const int32_t j = c + 4 * h;
                const int32x4_t s = vaddq_s32(vld1q_s32(a + j), vld1q_s32(e->corr + j));
                float32x4_t f = vaddq_f32(vmulq_f32(vcvtq_f32_s32(s), vld1q_f32(e->w_scale + j)), vld1q_f32(e->bias + j));
                if (res) {
                    const uint32x4_t r = vmovl_u16(h ? vget_high_u16(r16) : vget_low_u16(r16));
                    const float32x4_t d = vcvtq_f32_s32(vsubq_s32(vreinterpretq_s32_u32(r), vld1q_s32(e->res_zero + j)));
                    f = vaddq_f32(f, vmulq_f32(d, vld1q_f32(e->res_scale + j)));
                } else if (e->act == EQ_CNN_ACT_RELU) {
                    f = vmaxq_f32(f, zero);
                } else if (e->act == EQ_CNN_ACT_HS) {
                    const float32x4_t r = vminq_f32(vmaxq_f32(vaddq_f32(f, three), zero), six);
                    f = vmulq_f32(vmulq_f32(f, r), sixth);
                }
                float32x4_t y = vminq_f32(vmaxq_f32(vmulq_f32(f, vld1q_f32(e->out_inv + j)), lo), hi);
                y = vsubq_f32(vaddq_f32(y, magic), magic);
                q[h] = vaddq_s32(vcvtq_s32_f32(y), vld1q_s32(e->out_zero + j));
            }
            const uint8x8_t b = vqmovn_u16(vcombine_u16(vqmovun_s32(q[0]), vqmovun_s32(q[1])));
            if (n - c >= 8)
                vst1_u8(o + c, b);
            else {
                uint8_t tmp[8];
                vst1_u8(tmp, b);
                memcpy(o + c, tmp, (size_t)(n - c));
            }
        }
    }
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

static void pw_acc_neon(const void *packed, int32_t n, int32_t k, const uint8_t *x, int32_t xs, int32_t npix,
                        int32_t *acc, int32_t accs) {
    const int32_t n8 = (n + 7) & ~7;
    const int16_t *w = packed;
    for (int32_t p = 0; p < npix; p++) {
        const uint8_t *xp = x + (size_t)p * xs;
        for (int32_t o = 0; o < n8; o += 8) {
            int32x4_t lo = vdupq_n_s32(0), hi = vdupq_n_s32(0);
            for (int32_t c = 0; c < k; c++) {
                const int16x8_t wv = vld1q_s16(w + (size_t)c * n8 + o);
                const int16x4_t xv = vdup_n_s16((int16_t)xp[c]);
                lo = vmlal_s16(lo, vget_low_s16(wv), xv);
                hi = vmlal_s16(hi, vget_high_s16(wv), xv);
            }
            vst1q_s32(acc + (size_t)p * accs + o, lo);
            vst1q_s32(acc + (size_t)p * accs + o + 4, hi);
        }
    }
}

const eq_cnn_kernels eq_cnn_neon = {"neon", pw_bytes_neon, pw_pack_neon, pw_acc_neon,
                                    eq_cnn_dw_bytes_wide, eq_cnn_dw_pack_wide, dw_acc_neon, epilogue_neon,
                                    eq_cnn_stem_generic, eq_cnn_se_generic, NULL, NULL};

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

TDOT static void pw_acc_dot(const void *packed, int32_t n, int32_t k, const uint8_t *x, int32_t xs, int32_t npix,
                            int32_t *acc, int32_t accs) {
    const int32_t n16 = up16(n), kq = eq_cnn_c4(k) / 4;
    const int8_t *w = packed;
    const int32_t *sum = (const int32_t *)(w + (size_t)n16 * eq_cnn_c4(k));
    const uint8x16_t flip = vdupq_n_u8(0x80);
    for (int32_t p = 0; p < npix; p++) {
        const uint8_t *xp = x + (size_t)p * xs;
        for (int32_t o = 0; o < n16; o += 16) {
            int32x4_t a[4];
            for (int j = 0; j < 4; j++) a[j] = vshlq_n_s32(vld1q_s32(sum + o + 4 * j), 7); /* 128 x sum */
            for (int32_t q = 0; q < kq; q++) {
                uint32_t f;
                memcpy(&f, xp + 4 * q, 4);
                const int8x16_t xv = vreinterpretq_s8_u8(veorq_u8(vreinterpretq_u8_u32(vdupq_n_u32(f)), flip));
                const int8_t *wq = w + ((size_t)q * n16 + o) * 4;
                for (int j = 0; j < 4; j++) a[j] = vdotq_s32(a[j], vld1q_s8(wq + 16 * j), xv);
            }
            for (int j = 0; j < 4; j++) vst1q_s32(acc + (size_t)p * accs + o + 4 * j, a[j]);
        }
    }
}

const eq_cnn_kernels eq_cnn_dotprod = {"dotprod", pw_bytes_dot, pw_pack_dot, pw_acc_dot,
                                       eq_cnn_dw_bytes_wide, eq_cnn_dw_pack_wide, dw_acc_neon, epilogue_neon,
                                       eq_cnn_stem_generic, eq_cnn_se_generic, NULL, NULL};

#endif
