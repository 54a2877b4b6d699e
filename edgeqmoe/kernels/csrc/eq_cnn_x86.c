/* x86-64 variants of the integer embedder's convolutions (eq_cnn.h): AVX-512 with VNNI
 * (vpdpbusd: four uint8 x int8 products into each int32 lane) and AVX2 (uint8 widened
 * to int16, vpmaddwd: two int16 products into each int32 lane). Both are exact integer
 * sums, so they equal the generic twins bit for bit. Per-function target attributes, as
 * in eq_x86.c: chosen at run time only where the CPU has the features. */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <string.h>

#include "eq_cnn.h"
#include "eq_cnn_body.h"

#define T2 __attribute__((target("avx2,fma")))
#define T512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

static inline int32_t load4(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline int32_t up16(int32_t n) { return (n + 15) & ~15; }

/* depthwise weights: as eq_cnn_dw_pack_wide, but each int32 holds the weight in its low
 * 16 bits and 0 above, so that vpmaddwd with (x - zero) (an int32 of magnitude < 2^15)
 * gives the exact product in one instruction, where vpmulld takes two */
static void dw_pack_madd(const int8_t *w, const int32_t *zero, int32_t c, int32_t k, void *out) {
    eq_cnn_dw_pack_wide(w, zero, c, k, out);
    int32_t *o = (int32_t *)out + up16(c);
    for (int32_t i = 0; i < up16(c) * k * k; i++) o[i] = (int32_t)(uint16_t)(int16_t)o[i];
}

/* The pair layout of the AVX2 depthwise kernel, for interior pixels: per block of 16
 * channels, its zero points as int16, then per pair of taps (t, t + 1; the last one alone,
 * with zeros) two vectors of 16 int16 in the order vpunpcklwd / vpunpckhwd give the inputs
 * within each 128-bit lane (channels 0-3 of both lanes, then 4-7), so that one vpmaddwd
 * adds two taps of a vector's worth of channels */
static size_t dw_pairs_bytes(int32_t c, int32_t k) {
    const int32_t lanes = 2, cb = 8 * lanes;
    return (size_t)((c + cb - 1) / cb) * 2 * cb * (1 + (size_t)2 * ((k * k + 1) / 2));
}

static void dw_pack_pairs(const int8_t *w, const int32_t *zero, int32_t c, int32_t k, int16_t *p) {
    const int32_t kk = k * k, lanes = 2, cb = 8 * lanes;
#define W_AT(t, ch) ((t) < kk && (ch) < c ? (int16_t)w[(size_t)(t) * c + (ch)] : (int16_t)0)
    for (int32_t b = 0; b < (c + cb - 1) / cb; b++) {
        for (int32_t j = 0; j < cb; j++) p[j] = cb * b + j < c ? (int16_t)zero[cb * b + j] : 0;
        p += cb;
        for (int32_t t = 0; t < kk; t += 2, p += 2 * cb)
            for (int32_t lane = 0; lane < lanes; lane++)
                for (int32_t i = 0; i < 4; i++) {
                    const int32_t lo = cb * b + 8 * lane + i, hi = lo + 4;
                    p[8 * lane + 2 * i] = W_AT(t, lo), p[8 * lane + 2 * i + 1] = W_AT(t + 1, lo);
                    p[cb + 8 * lane + 2 * i] = W_AT(t, hi), p[cb + 8 * lane + 2 * i + 1] = W_AT(t + 1, hi);
                }
    }
#undef W_AT
}

/* The quad layout of the AVX-512 depthwise kernel for interior pixels (tap_quads_512): per
 * block of 32 channels, the sums' starting values -zero x (the channel's weights summed),
 * so that the kernel multiplies the uint8 inputs themselves; then per group of four taps
 * (the last group filled with zero weights) four vectors of 32 bytes, one per accumulator
 * j: its 128-bit lane L, int32 i is channel 16 L + 4 j + i, whose four bytes are the
 * group's four weights: the order in which vpunpck{l,h}bw then vpunpck{l,h}wd interleave
 * four taps' rows of 32 channels. Starting values in the same order. */
static size_t dw_quads_bytes(int32_t c, int32_t k) {
    return (size_t)((c + 31) / 32) * 128 * (1 + (size_t)((k * k + 3) / 4));
}

static void dw_pack_quads(const int8_t *w, const int32_t *zero, int32_t c, int32_t k, uint8_t *p) {
    const int32_t kk = k * k;
    for (int32_t b = 0; b < (c + 31) / 32; b++) {
        int32_t *start = (int32_t *)p;
        for (int32_t j = 0; j < 4; j++)
            for (int32_t i = 0; i < 8; i++) { /* i: 4 L + the int32 within the lane */
                const int32_t ch = 32 * b + 16 * (i / 4) + 4 * j + i % 4;
                int32_t sum = 0;
                for (int32_t t = 0; t < kk && ch < c; t++) sum += w[(size_t)t * c + ch];
                start[8 * j + i] = ch < c ? -zero[ch] * sum : 0;
            }
        p += 128;
        for (int32_t t0 = 0; t0 < kk; t0 += 4, p += 128)
            for (int32_t j = 0; j < 4; j++)
                for (int32_t i = 0; i < 8; i++)
                    for (int32_t u = 0; u < 4; u++) {
                        const int32_t ch = 32 * b + 16 * (i / 4) + 4 * j + i % 4, t = t0 + u;
                        p[32 * j + 4 * i + u] = (uint8_t)(t < kk && ch < c ? w[(size_t)t * c + ch] : 0);
                    }
    }
}

/* AVX-512 depthwise weights: the madd layout above (pixels at the borders), then the quad
 * layout. An 8-channel map's block of 32 holds four neighbouring pixels (dw_px4_c8_512), so
 * its channels' weights and zero points repeat across the block. */
static size_t dw_bytes_512(int32_t c, int32_t k) { return eq_cnn_dw_bytes_wide(c, k) + dw_quads_bytes(c, k); }

static void dw_pack_512(const int8_t *w, const int32_t *zero, int32_t c, int32_t k, void *out) {
    dw_pack_madd(w, zero, c, k, out);
    uint8_t *q = (uint8_t *)out + eq_cnn_dw_bytes_wide(c, k);
    if (c != 8) {
        dw_pack_quads(w, zero, c, k, q);
        return;
    }
    int8_t w32[7 * 7 * 32]; /* k <= 7 (the engine refuses more) */
    int32_t z32[32];
    for (int32_t j = 0; j < 32; j++) {
        z32[j] = zero[j % 8];
        for (int32_t t = 0; t < k * k; t++) w32[t * 32 + j] = w[t * 8 + j % 8];
    }
    dw_pack_quads(w32, z32, 32, k, q);
}

/* AVX2 depthwise weights: the madd layout (pixels at the borders), then the pair layout in
 * blocks of 16 channels */
static size_t dw_bytes_2(int32_t c, int32_t k) { return eq_cnn_dw_bytes_wide(c, k) + dw_pairs_bytes(c, k); }

static void dw_pack_2(const int8_t *w, const int32_t *zero, int32_t c, int32_t k, void *out) {
    dw_pack_madd(w, zero, c, k, out);
    dw_pack_pairs(w, zero, c, k, (int16_t *)((uint8_t *)out + eq_cnn_dw_bytes_wide(c, k)));
}

/* the stem's channel rows (qrow) into output row oy of the channels-last map; 8 channels:
 * 8 rows of 16 bytes -> 16 pixels of 8 channels at a time, a transpose by unpacking */
T2 static inline __attribute__((always_inline)) void stem_rows_out_2(const eq_cnn_op *op, const uint8_t *qrow,
                                                                      int32_t oy, uint8_t *out) {
    if (op->cout != 8) {
        stem_interleave(op, qrow, oy, out);
        return;
    }
    const int32_t Wp = stem_wp(op);
    uint8_t *o = out + (size_t)oy * op->w_out * 8;
    int32_t x0 = 0;
    for (; x0 + 16 <= op->w_out; x0 += 16) {
        __m128i r[8], t[8], u[4], v[4];
        for (int c = 0; c < 8; c++) r[c] = _mm_loadu_si128((const __m128i *)(qrow + (size_t)c * Wp + x0));
        for (int c = 0; c < 8; c += 2)
            t[c] = _mm_unpacklo_epi8(r[c], r[c + 1]), t[c + 1] = _mm_unpackhi_epi8(r[c], r[c + 1]);
        u[0] = _mm_unpacklo_epi16(t[0], t[2]), u[1] = _mm_unpackhi_epi16(t[0], t[2]);
        u[2] = _mm_unpacklo_epi16(t[1], t[3]), u[3] = _mm_unpackhi_epi16(t[1], t[3]);
        v[0] = _mm_unpacklo_epi16(t[4], t[6]), v[1] = _mm_unpackhi_epi16(t[4], t[6]);
        v[2] = _mm_unpacklo_epi16(t[5], t[7]), v[3] = _mm_unpackhi_epi16(t[5], t[7]);
        for (int j = 0; j < 4; j++) {
            _mm_storeu_si128((__m128i *)(o + (size_t)(x0 + 4 * j) * 8), _mm_unpacklo_epi32(u[j], v[j]));
            _mm_storeu_si128((__m128i *)(o + (size_t)(x0 + 4 * j + 2) * 8), _mm_unpackhi_epi32(u[j], v[j]));
        }
    }
    for (; x0 < op->w_out; x0++)
        for (int c = 0; c < 8; c++) o[(size_t)x0 * 8 + c] = qrow[(size_t)c * Wp + x0];
}

/* requant (eq_cnn_body.h) of 16 values y = f x out_inv, to int32 codes not below 0 (a
 * saturating store caps them at 255). The reference clamps y to [-512, 512] and rounds
 * by (y + MAGIC) - MAGIC, to nearest even; the conversion rounds so itself. Below -512
 * every code is 0 all the same (the zero point is at most 255, and the max makes it 0),
 * so only the top is clamped, with 512 first so that a NaN stays one (and becomes 0, as
 * in the reference) */
T512 static inline __attribute__((always_inline)) __m512i codes_512(__m512 y, __m512i zero) {
    y = _mm512_min_ps(_mm512_set1_ps(512.0f), y);
    return _mm512_max_epi32(_mm512_add_epi32(_mm512_cvt_roundps_epi32(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                                             zero), _mm512_setzero_si512());
}

/* the shared stem with its channel rows in AVX-512: 16 outputs of a row at a time, the
 * same operations in the same order as stem_channel (rows are padded: no remainder) */
T512 static void stem_512(const eq_cnn_op *op, const float *mel, uint8_t *out, float *scratch) {
    const float *split = stem_split(op, mel, scratch), *v[9];
    uint8_t *qrow = stem_qrow(op, scratch);
    const int32_t Wp = stem_wp(op);
    const __m512 zero = _mm512_setzero_ps(), three = _mm512_set1_ps(3.0f), six = _mm512_set1_ps(6.0f),
                 sixth = _mm512_set1_ps((float)(1.0 / 6.0));
    for (int32_t oy = 0; oy < op->h_out; oy++) {
        stem_taps(op, split, oy, v);
        for (int32_t c = 0; c < op->cout; c++) {
            __m512 w[9];
            for (int t = 0; t < 9; t++) w[t] = _mm512_set1_ps(op->fw[c * 9 + t]);
            const __m512 b = _mm512_set1_ps(op->fb[c]), inv = _mm512_set1_ps(op->epi.out_inv[c]);
            const __m512i z = _mm512_set1_epi32(op->epi.out_zero[c]);
            for (int32_t x0 = 0; x0 < op->w_out; x0 += 16) {
                __m512 a = zero;
#pragma GCC unroll 9
                for (int t = 0; t < 9; t++) a = _mm512_add_ps(a, _mm512_mul_ps(_mm512_loadu_ps(v[t] + x0), w[t]));
                __m512 f = _mm512_add_ps(a, b);
                f = _mm512_mul_ps(_mm512_mul_ps(f, _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(f, three), zero), six)), sixth);
                _mm_storeu_si128((__m128i *)(qrow + (size_t)c * Wp + x0), _mm512_cvtusepi32_epi8(codes_512(_mm512_mul_ps(f, inv), z)));
            }
        }
        stem_rows_out_2(op, qrow, oy, out);
    }
}
static inline __mmask32 tail32(int32_t left) { return left >= 32 ? 0xffffffffu : (__mmask32)((1u << left) - 1); }

/* squeeze-excitation, 32 channels at a time: the channel sums in 16-bit lanes (flushed to
 * 32 bits every 256 pixels, before 255 x 257 could wrap), the gates as se_gates, then
 * zero + (x - zero) x gate in vpmulhrsw, which rounds exactly as the reference's
 * (d g + 2^14) >> 15. A gate of one (2^15) has no int16: it becomes 2^15 - 1, which gives
 * the same d for every |d| <= 255 ((2^14 - d) / 2^15 stays within [0, 1)) */
T512 static void se_512(const eq_cnn_op *op, const int32_t *gate, float *fs, int32_t *sums, uint8_t *x) {
    const int32_t C = op->cin, npix = op->h_in * op->w_in, cs = eq_cnn_c4(C);
    for (int32_t c = 0; c < C; c += 32) {
        const __mmask32 m = tail32(C - c);
        __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
        for (int32_t p0 = 0; p0 < npix; p0 += 256) {
            const int32_t p1 = npix - p0 < 256 ? npix : p0 + 256;
            __m512i s = _mm512_setzero_si512();
            for (int32_t p = p0; p < p1; p++)
                s = _mm512_add_epi16(s, _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, x + (size_t)p * cs + c)));
            lo = _mm512_add_epi32(lo, _mm512_cvtepu16_epi32(_mm512_castsi512_si256(s)));
            hi = _mm512_add_epi32(hi, _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(s, 1)));
        }
        _mm512_mask_storeu_epi32(sums + c, (__mmask16)m, lo);
        _mm512_mask_storeu_epi32(sums + c + 16, (__mmask16)(m >> 16), hi);
    }
    se_gates(op, gate, fs, sums);
    const __m512i top = _mm512_set1_epi32((1 << 15) - 1);
    for (int32_t c = 0; c < C; c += 32) {
        const __mmask32 m = tail32(C - c);
        const __mmask16 m0 = (__mmask16)m, m1 = (__mmask16)(m >> 16);
#define EQ_I16X32(a, b) _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(a)), _mm512_cvtepi32_epi16(b), 1)
        const __m512i g = EQ_I16X32(_mm512_min_epi32(_mm512_maskz_loadu_epi32(m0, sums + c), top),
                                    _mm512_min_epi32(_mm512_maskz_loadu_epi32(m1, sums + c + 16), top));
        const __m512i z = EQ_I16X32(_mm512_maskz_loadu_epi32(m0, op->zero + c),
                                    _mm512_maskz_loadu_epi32(m1, op->zero + c + 16));
#undef EQ_I16X32
        for (int32_t p = 0; p < npix; p++) {
            uint8_t *xp = x + (size_t)p * cs + c;
            const __m512i d = _mm512_sub_epi16(_mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, xp)), z);
            _mm256_mask_storeu_epi8(xp, m, _mm512_cvtepi16_epi8(_mm512_add_epi16(_mm512_mulhrs_epi16(d, g), z)));
        }
    }
}
/* requant (eq_cnn_body.h) of 8 values y = f x out_inv to 8 codes (the low 8 bytes), as
 * codes_512 does it: rounding to nearest even in the conversion (the MXCSR default),
 * only the top clamped; below -512 the saturating packs make every code 0, and the clamp
 * keeps codes under 32768, which the second pack would read as negative */
T2 static inline __attribute__((always_inline)) __m128i codes_2(__m256 y, __m256i zero) {
    const __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_min_ps(_mm256_set1_ps(512.0f), y)), zero);
    const __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    return _mm_packus_epi16(w16, w16);
}

/* the shared stem with its channel rows in AVX2: 8 outputs of a row at a time, the same
 * operations in the same order as stem_channel (rows are padded: no remainder) */
T2 static void stem_2(const eq_cnn_op *op, const float *mel, uint8_t *out, float *scratch) {
    const float *split = stem_split(op, mel, scratch), *v[9];
    uint8_t *qrow = stem_qrow(op, scratch);
    const int32_t Wp = stem_wp(op);
    const __m256 zero = _mm256_setzero_ps(), three = _mm256_set1_ps(3.0f), six = _mm256_set1_ps(6.0f),
                 sixth = _mm256_set1_ps((float)(1.0 / 6.0));
    for (int32_t oy = 0; oy < op->h_out; oy++) {
        stem_taps(op, split, oy, v);
        for (int32_t c = 0; c < op->cout; c++) {
            __m256 w[9];
            for (int t = 0; t < 9; t++) w[t] = _mm256_set1_ps(op->fw[c * 9 + t]);
            const __m256 b = _mm256_set1_ps(op->fb[c]), inv = _mm256_set1_ps(op->epi.out_inv[c]);
            const __m256i z = _mm256_set1_epi32(op->epi.out_zero[c]);
            for (int32_t x0 = 0; x0 < op->w_out; x0 += 8) {
                __m256 a = zero;
#pragma GCC unroll 9
                for (int t = 0; t < 9; t++) a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_loadu_ps(v[t] + x0), w[t]));
                __m256 f = _mm256_add_ps(a, b);
                f = _mm256_mul_ps(_mm256_mul_ps(f, _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(f, three), zero), six)), sixth);
                _mm_storel_epi64((__m128i *)(qrow + (size_t)c * Wp + x0), codes_2(_mm256_mul_ps(f, inv), z));
            }
        }
        stem_rows_out_2(op, qrow, oy, out);
    }
}
/* squeeze-excitation as se_512, 16 channels at a time (no byte masks in AVX2: where the
 * channels are not a multiple of 8, the generic body) */
T2 static void se_2(const eq_cnn_op *op, const int32_t *gate, float *fs, int32_t *sums, uint8_t *x) {
    const int32_t C = op->cin, npix = op->h_in * op->w_in, cs = eq_cnn_c4(C);
    if (C % 8) {
        se_body(op, gate, fs, sums, x);
        return;
    }
    for (int32_t c = 0; c < C; c += 16) {
        const int two = C - c > 8; /* else 8 channels: the upper 8 lanes read the next pixel's and are dropped */
        __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
        for (int32_t p0 = 0; p0 < npix; p0 += 256) {
            const int32_t p1 = npix - p0 < 256 ? npix : p0 + 256;
            __m256i s = _mm256_setzero_si256();
            for (int32_t p = p0; p < p1; p++) {
                const uint8_t *xp = x + (size_t)p * cs + c;
                s = _mm256_add_epi16(s, _mm256_cvtepu8_epi16(two ? _mm_loadu_si128((const __m128i *)xp)
                                                                 : _mm_loadl_epi64((const __m128i *)xp)));
            }
            lo = _mm256_add_epi32(lo, _mm256_cvtepu16_epi32(_mm256_castsi256_si128(s)));
            hi = _mm256_add_epi32(hi, _mm256_cvtepu16_epi32(_mm256_extracti128_si256(s, 1)));
        }
        _mm256_storeu_si256((__m256i *)(sums + c), lo);
        if (two) _mm256_storeu_si256((__m256i *)(sums + c + 8), hi);
    }
    se_gates(op, gate, fs, sums);
    const __m256i top = _mm256_set1_epi32((1 << 15) - 1);
    for (int32_t c = 0; c < C; c += 16) {
        const int two = C - c > 8;
        const __m256i g0 = _mm256_min_epi32(_mm256_loadu_si256((const __m256i *)(sums + c)), top);
        const __m256i g1 = two ? _mm256_min_epi32(_mm256_loadu_si256((const __m256i *)(sums + c + 8)), top) : g0;
        const __m256i z0 = _mm256_loadu_si256((const __m256i *)(op->zero + c));
        const __m256i z1 = two ? _mm256_loadu_si256((const __m256i *)(op->zero + c + 8)) : z0;
        /* int32 -> int16 in channel order (packs works within 128-bit lanes) */
        const __m256i g = _mm256_permute4x64_epi64(_mm256_packs_epi32(g0, g1), 0xd8);
        const __m256i z = _mm256_permute4x64_epi64(_mm256_packs_epi32(z0, z1), 0xd8);
        for (int32_t p = 0; p < npix; p++) {
            uint8_t *xp = x + (size_t)p * cs + c;
            const __m256i v = _mm256_cvtepu8_epi16(two ? _mm_loadu_si128((const __m128i *)xp) : _mm_loadl_epi64((const __m128i *)xp));
            const __m256i y = _mm256_add_epi16(_mm256_mulhrs_epi16(_mm256_sub_epi16(v, z), g), z);
            const __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(y), _mm256_extracti128_si256(y, 1));
            if (two)
                _mm_storeu_si128((__m128i *)xp, b);
            else
                _mm_storel_epi64((__m128i *)xp, b);
        }
    }
}

/* ==================================================================== AVX-512 VNNI */

/* the requantisation's parameters for 16 channels, loaded once for many pixels */
typedef struct {
    __m512i corr, out_zero, res_zero;
    __m512 w_scale, bias, out_inv, res_scale;
    int act, res;
} epi512;

T512 static inline __attribute__((always_inline)) epi512 epi_load_512(const eq_cnn_epi *e, int32_t c, int res) {
    epi512 P;
    P.corr = _mm512_load_si512((const void *)(e->corr + c));
    P.out_zero = _mm512_load_si512((const void *)(e->out_zero + c));
    P.w_scale = _mm512_load_ps(e->w_scale + c), P.bias = _mm512_load_ps(e->bias + c);
    P.out_inv = _mm512_load_ps(e->out_inv + c);
    P.res = res, P.act = e->act;
    P.res_zero = res ? _mm512_load_si512((const void *)(e->res_zero + c)) : _mm512_setzero_si512();
    P.res_scale = res ? _mm512_load_ps(e->res_scale + c) : _mm512_setzero_ps();
    return P;
}

/* the generic requantisation of 16 channels of one pixel (or 8 of two), in the same
 * operations and order, to int32 codes not below 0 (a saturating store caps them at 255);
 * acc: the sums with the correction already in them (the pointwise kernels start their
 * sums from P->corr; depthwise layers have none); rv: the residual's bytes at these
 * channels when P->res */
T512 static inline __attribute__((always_inline)) __m512i epi_codes_512(const epi512 *P, __m512i acc, __m128i rv) {
    const __m512 zero = _mm512_setzero_ps();
    __m512 f = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), P->w_scale), P->bias);
    if (P->res) {
        const __m512i r = _mm512_cvtepu8_epi32(rv);
        f = _mm512_add_ps(f, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(r, P->res_zero)), P->res_scale));
    } else if (P->act == EQ_CNN_ACT_RELU) {
        f = _mm512_max_ps(f, zero);
    } else if (P->act == EQ_CNN_ACT_HS) {
        const __m512 t = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(f, _mm512_set1_ps(3.0f)), zero), _mm512_set1_ps(6.0f));
        f = _mm512_mul_ps(_mm512_mul_ps(f, t), _mm512_set1_ps((float)(1.0 / 6.0)));
    }
    return codes_512(_mm512_mul_ps(f, P->out_inv), P->out_zero);
}

/* 16 channels (mask m) of one pixel: r its residual at these channels, o its output */
T512 static inline __attribute__((always_inline)) void epi_apply_512(const epi512 *P, __m512i acc, const uint8_t *r,
                                                                      __mmask16 m, uint8_t *o) {
    const __m128i rv = P->res ? _mm_maskz_loadu_epi8(m, r) : _mm_setzero_si128();
    _mm512_mask_cvtusepi32_storeu_epi8(o, m, epi_codes_512(P, acc, rv));
}

/* 8 channels of two pixels (lanes 0-7 and 8-15; P holds the 8 channels' parameters twice) */
T512 static inline __attribute__((always_inline)) void epi_apply2_512(const epi512 *P, __m512i acc, const uint8_t *r0,
                                                                       const uint8_t *r1, uint8_t *o0, uint8_t *o1) {
    const __m128i rv = P->res ? _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)r0), _mm_loadl_epi64((const __m128i *)r1))
                              : _mm_setzero_si128();
    const __m128i b = _mm512_cvtusepi32_epi8(epi_codes_512(P, acc, rv));
    _mm_storel_epi64((__m128i *)o0, b);
    _mm_storeh_pi((__m64 *)o1, _mm_castsi128_ps(b));
}

/* P's channels 0-7 in lanes 0-7 and again in 8-15 */
T512 static inline __attribute__((always_inline)) epi512 epi_twice_512(epi512 P) {
    const __m512i dup = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7);
    P.corr = _mm512_permutexvar_epi32(dup, P.corr), P.out_zero = _mm512_permutexvar_epi32(dup, P.out_zero);
    P.res_zero = _mm512_permutexvar_epi32(dup, P.res_zero);
    P.w_scale = _mm512_permutexvar_ps(dup, P.w_scale), P.bias = _mm512_permutexvar_ps(dup, P.bias);
    P.out_inv = _mm512_permutexvar_ps(dup, P.out_inv), P.res_scale = _mm512_permutexvar_ps(dup, P.res_scale);
    return P;
}

static inline __mmask16 tail16(int32_t left) { return left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1); }

/* pointwise weights: [k/4][n rounded to 16][4] int8, so one 64-byte load holds four
 * inputs of 16 outputs */
static size_t pw_bytes_512(int32_t n, int32_t k) { return (size_t)up16(n) * eq_cnn_c4(k); }

static void pw_pack_512(const int8_t *w, int32_t n, int32_t k, void *out) {
    const int32_t n16 = up16(n), kq = eq_cnn_c4(k) / 4;
    int8_t *o = out;
    memset(o, 0, pw_bytes_512(n, k));
    for (int32_t r = 0; r < n; r++)
        for (int32_t c = 0; c < k; c++) o[((size_t)(c / 4) * n16 + r) * 4 + c % 4] = w[(size_t)r * k + c];
    if (n % 16 == 8) /* a last tile of 8 outputs: rows repeated in lanes 8-15, for two pixels a vector */
        for (int32_t q = 0; q < kq; q++) memcpy(o + ((size_t)q * n16 + n) * 4, o + ((size_t)q * n16 + n - 8) * 4, 32);
}

#define PW_TILE 8
/* outputs o..o+15 of PW_TILE pixels (rows xs bytes apart), the sums starting from start;
 * pairs (a constant where inlined): a last tile of 8 outputs, whose weights pw_pack_512
 * repeats in lanes 8-15, over 2 x PW_TILE pixels, two a vector (pixel 2 j in lanes 0-7 of
 * a[j], 2 j + 1 in 8-15) */
T512 static inline __attribute__((always_inline)) void tile8_512(const int8_t *w, int32_t n16, int32_t kq, int32_t o,
                                                                  const uint8_t *xp, int32_t xs, __m512i start,
                                                                  int pairs, __m512i *a) {
    for (int j = 0; j < PW_TILE; j++) a[j] = start;
    for (int32_t q = 0; q < kq; q++) {
        const __m512i wv = _mm512_load_si512((const void *)(w + ((size_t)q * n16 + o) * 4));
#pragma GCC unroll 8
        for (int j = 0; j < PW_TILE; j++) {
            const __m512i xv =
                pairs ? _mm512_inserti64x4(_mm512_set1_epi32(load4(xp + (size_t)(2 * j) * xs + 4 * q)),
                                           _mm256_set1_epi32(load4(xp + (size_t)(2 * j + 1) * xs + 4 * q)), 1)
                      : _mm512_set1_epi32(load4(xp + (size_t)j * xs + 4 * q));
            a[j] = _mm512_dpbusd_epi32(a[j], xv, wv);
        }
    }
}

/* outputs o..o+15 of one pixel, the sums starting from start */
T512 static inline __attribute__((always_inline)) __m512i px16_512(const int8_t *w, int32_t n16, int32_t kq, int32_t o,
                                                                    const uint8_t *xp, __m512i start) {
    __m512i a = start;
    for (int32_t q = 0; q < kq; q++)
        a = _mm512_dpbusd_epi32(a, _mm512_set1_epi32(load4(xp + 4 * q)),
                                _mm512_load_si512((const void *)(w + ((size_t)q * n16 + o) * 4)));
    return a;
}
T512 static void pw_acc_512(const void *packed, int32_t n, int32_t k, const uint8_t *x, int32_t xs, int32_t npix,
                            int32_t *acc, int32_t accs) {
    const int32_t n16 = up16(n), kq = eq_cnn_c4(k) / 4;
    const int8_t *w = packed;
    if (npix == 1) { /* one vector (the dense layers): four output tiles at once, four independent sums */
        int32_t o = 0;
        for (; o + 64 <= n16; o += 64) {
            __m512i a[4];
            for (int j = 0; j < 4; j++) a[j] = _mm512_setzero_si512();
            for (int32_t q = 0; q < kq; q++) {
                const __m512i xv = _mm512_set1_epi32(load4(x + 4 * q));
                const int8_t *wq = w + ((size_t)q * n16 + o) * 4;
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) a[j] = _mm512_dpbusd_epi32(a[j], xv, _mm512_load_si512((const void *)(wq + 64 * j)));
            }
            for (int j = 0; j < 4; j++) _mm512_storeu_si512((void *)(acc + o + 16 * j), a[j]);
        }
        for (; o < n16; o += 16) _mm512_storeu_si512((void *)(acc + o), px16_512(w, n16, kq, o, x, _mm512_setzero_si512()));
        return;
    }
    for (int32_t o = 0; o < n16; o += 16) {
        int32_t p = 0;
        for (; p + PW_TILE <= npix; p += PW_TILE) {
            __m512i a[PW_TILE];
            tile8_512(w, n16, kq, o, x + (size_t)p * xs, xs, _mm512_setzero_si512(), 0, a);
            for (int j = 0; j < PW_TILE; j++) _mm512_storeu_si512((void *)(acc + (size_t)(p + j) * accs + o), a[j]);
        }
        for (; p < npix; p++) {
            const __m512i a0 = px16_512(w, n16, kq, o, x + (size_t)p * xs, _mm512_setzero_si512());
            _mm512_storeu_si512((void *)(acc + (size_t)p * accs + o), a0);
        }
    }
}

/* tile8_512 on int8 codes (wl NULL) or on 16-bit ones, w their high parts and wl their
 * low parts (both in pw_pack_512's layout): 256 x the high sums + the low sums; the sums
 * start from start either way */
T512 static inline __attribute__((always_inline)) void tile8_codes_512(const int8_t *w, const int8_t *wl, int32_t n16,
                                                                        int32_t kq, int32_t o, const uint8_t *xp,
                                                                        int32_t xs, __m512i start, int pairs,
                                                                        __m512i *a) {
    if (!wl) {
        tile8_512(w, n16, kq, o, xp, xs, start, pairs, a);
        return;
    }
    __m512i b[PW_TILE];
    tile8_512(w, n16, kq, o, xp, xs, _mm512_setzero_si512(), pairs, a);
    tile8_512(wl, n16, kq, o, xp, xs, start, pairs, b);
    for (int j = 0; j < PW_TILE; j++) a[j] = _mm512_add_epi32(_mm512_slli_epi32(a[j], 8), b[j]);
}

/* pw_acc_512 and the requantisation in one pass: the accumulators of 8 pixels x 16
 * outputs never leave their registers. wl: NULL for int8 codes, else the low parts of
 * 16-bit ones (tile8_codes_512) */
T512 static inline __attribute__((always_inline)) void pw_rows_512(const int8_t *w, const int8_t *wl, int32_t n,
                                                                    int32_t k, const uint8_t *x, int32_t xs,
                                                                    int32_t npix, const eq_cnn_epi *e,
                                                                    const uint8_t *res, int32_t rs, uint8_t *out,
                                                                    int32_t os) {
    const int32_t n16 = up16(n), kq = eq_cnn_c4(k) / 4;
    for (int32_t o = 0; o < n16; o += 16) {
        const __mmask16 m = tail16(n - o);
        const epi512 P = epi_load_512(e, o, res != NULL);
        int32_t p = 0;
        if (n - o == 8) { /* a last tile of 8 outputs: two pixels a vector (the weights repeat in lanes 8-15) */
            const epi512 P2 = epi_twice_512(P);
            for (; p + 2 * PW_TILE <= npix; p += 2 * PW_TILE) {
                __m512i a[PW_TILE];
                tile8_codes_512(w, wl, n16, kq, o, x + (size_t)p * xs, xs, P2.corr, 1, a);
#pragma GCC unroll 8
                for (int j = 0; j < PW_TILE; j++) {
                    const size_t p0 = (size_t)p + 2 * j;
                    epi_apply2_512(&P2, a[j], res ? res + p0 * rs + o : NULL, res ? res + (p0 + 1) * rs + o : NULL,
                                   out + p0 * os + o, out + (p0 + 1) * os + o);
                }
            }
        }
        for (; p + PW_TILE <= npix; p += PW_TILE) {
            __m512i a[PW_TILE];
            tile8_codes_512(w, wl, n16, kq, o, x + (size_t)p * xs, xs, P.corr, 0, a);
#pragma GCC unroll 8
            for (int j = 0; j < PW_TILE; j++)
                epi_apply_512(&P, a[j], res ? res + (size_t)(p + j) * rs + o : NULL, m, out + (size_t)(p + j) * os + o);
        }
        for (; p < npix; p++) {
            const uint8_t *xp = x + (size_t)p * xs;
            __m512i a0 = px16_512(w, n16, kq, o, xp, wl ? _mm512_setzero_si512() : P.corr);
            if (wl) a0 = _mm512_add_epi32(_mm512_slli_epi32(a0, 8), px16_512(wl, n16, kq, o, xp, P.corr));
            epi_apply_512(&P, a0, res ? res + (size_t)p * rs + o : NULL, m, out + (size_t)p * os + o);
        }
    }
}

T512 static void pw_row_512(const void *packed, int32_t n, int32_t k, const uint8_t *x, int32_t xs, int32_t npix,
                            const eq_cnn_epi *e, const uint8_t *res, int32_t rs, uint8_t *out, int32_t os) {
    pw_rows_512(packed, NULL, n, k, x, xs, npix, e, res, rs, out, os);
}

/* one output pixel's depthwise sums of channels c..c+15 over taps [ty0, ty1) x [tx0, tx1)
 * (the wide layout: zero points zp, then the taps' weights as int32) */
T512 static inline __attribute__((always_inline)) __m512i dw_acc16_512(const int32_t *zp, const int32_t *w,
                                                                        const uint8_t *base, int32_t c, int32_t c16,
                                                                        int32_t xs, int32_t row, int32_t k, int32_t ty0,
                                                                        int32_t ty1, int32_t tx0, int32_t tx1) {
    const __m512i z = _mm512_loadu_si512((const void *)(zp + c));
    __m512i a = _mm512_setzero_si512();
    for (int32_t ty = ty0; ty < ty1; ty++)
        for (int32_t tx = tx0; tx < tx1; tx++) {
            const __m128i b = _mm_loadu_si128((const __m128i *)(base + (size_t)ty * row + (size_t)tx * xs + c));
            const __m512i v = _mm512_sub_epi32(_mm512_cvtepu8_epi32(b), z);
            a = _mm512_add_epi32(a, _mm512_madd_epi16(v, _mm512_loadu_si512((const void *)(w + (size_t)(ty * k + tx) * c16 + c))));
        }
    return a;
}

/* the k x k taps of 32 channels at base in the quad layout (dw_pack_quads): four taps of
 * uint8 inputs per vpdpbusd, the sums starting from the zero points' share; channels 0-15
 * in *lo, 16-31 in *hi. Every tap is read: pixels inside the map, or a padded map. */
T512 static inline __attribute__((always_inline)) void tap_quads_512(const uint8_t *pk, const uint8_t *base,
                                                                      int32_t row, int32_t xs, int32_t k, __m512i *lo,
                                                                      __m512i *hi) {
    const int32_t kk = k * k;
    __m256i a[4];
    for (int j = 0; j < 4; j++) a[j] = _mm256_loadu_si256((const __m256i *)(pk + 32 * j));
    pk += 128;
    for (int32_t t = 0; t < kk; t += 4, pk += 128) {
        __m256i v[4];
        for (int32_t u = 0; u < 4; u++)
            v[u] = t + u < kk ? _mm256_loadu_si256((const __m256i *)(base + (size_t)((t + u) / k) * row +
                                                                      (size_t)((t + u) % k) * xs))
                              : _mm256_setzero_si256();
        const __m256i ab0 = _mm256_unpacklo_epi8(v[0], v[1]), ab1 = _mm256_unpackhi_epi8(v[0], v[1]);
        const __m256i cd0 = _mm256_unpacklo_epi8(v[2], v[3]), cd1 = _mm256_unpackhi_epi8(v[2], v[3]);
        a[0] = _mm256_dpbusd_epi32(a[0], _mm256_unpacklo_epi16(ab0, cd0), _mm256_loadu_si256((const __m256i *)pk));
        a[1] = _mm256_dpbusd_epi32(a[1], _mm256_unpackhi_epi16(ab0, cd0), _mm256_loadu_si256((const __m256i *)(pk + 32)));
        a[2] = _mm256_dpbusd_epi32(a[2], _mm256_unpacklo_epi16(ab1, cd1), _mm256_loadu_si256((const __m256i *)(pk + 64)));
        a[3] = _mm256_dpbusd_epi32(a[3], _mm256_unpackhi_epi16(ab1, cd1), _mm256_loadu_si256((const __m256i *)(pk + 96)));
    }
    const __m512i x = _mm512_inserti64x4(_mm512_castsi256_si512(a[0]), a[1], 1);
    const __m512i y = _mm512_inserti64x4(_mm512_castsi256_si512(a[2]), a[3], 1);
    *lo = _mm512_shuffle_i32x4(x, y, _MM_SHUFFLE(2, 0, 2, 0)); /* lane 0 of each accumulator */
    *hi = _mm512_shuffle_i32x4(x, y, _MM_SHUFFLE(3, 1, 3, 1));
}

/* four neighbouring interior pixels of an 8-channel map (stride 1): the 32 bytes of a tap
 * row hold all four (dw_pack_512 repeats the weights across the block); pixels 0-1 come
 * back in lo, 2-3 in hi; pair: the 8 channels' parameters twice */
T512 static inline __attribute__((always_inline)) void dw_px4_c8_512(const uint8_t *pk, const uint8_t *base, int32_t row,
                                                                      int32_t k, const epi512 *pair, uint8_t *o) {
    __m512i lo, hi;
    tap_quads_512(pk, base, row, 8, k, &lo, &hi);
    epi_apply_512(pair, lo, NULL, 0xffff, o);
    epi_apply_512(pair, hi, NULL, 0xffff, o + 16);
}

/* a depthwise output row and its requantisation in one pass: per block of 32 channels
 * (the quad layout's), its requantisation parameters loaded once for the whole row */
T512 static void dw_row_512(const void *packed, const eq_cnn_op *op, const uint8_t *x, int32_t xs, int32_t oy,
                            uint8_t *out) {
    const int32_t k = op->k, s = op->stride, pad = op->pad, C = op->cout, c16 = up16(C), cs = eq_cnn_c4(C);
    const int32_t *zp = packed, *w = zp + c16, row = op->w_in * xs;
    const uint8_t *quads = (const uint8_t *)packed + eq_cnn_dw_bytes_wide(C, k);
    int32_t ty0, ty1;
    eq_cnn_tap_range(oy, s, pad, k, op->h_in, &ty0, &ty1);
    const int full_y = ty0 == 0 && ty1 == k;
    const uint8_t *row0 = x + (ptrdiff_t)(oy * s - pad) * op->w_in * xs;
    if (C == 8 && s == 1) { /* 8 channels: four interior pixels a vector where they fit */
        const epi512 P = epi_load_512(&op->epi, 0, 0), pair = epi_twice_512(P);
        for (int32_t ox = 0; ox < op->w_out; ox++) {
            int32_t tx0, tx1;
            eq_cnn_tap_range(ox, s, pad, k, op->w_in, &tx0, &tx1);
            const uint8_t *base = row0 + (ptrdiff_t)(ox * s - pad) * xs;
            uint8_t *o = out + (size_t)ox * cs;
            if (full_y && tx0 == 0 && ox + 3 < op->w_out && (ox + 3) * s - pad + k <= op->w_in) {
                if (k == 3)
                    dw_px4_c8_512(quads, base, row, 3, &pair, o);
                else
                    dw_px4_c8_512(quads, base, row, k, &pair, o);
                ox += 3;
            } else if (full_y && tx0 == 0 && tx1 == k && (k == 3 || k == 5)) { /* one pixel: lanes 0-7 */
                __m512i lo, hi;
                tap_quads_512(quads, base, row, xs, k, &lo, &hi);
                epi_apply_512(&P, lo, NULL, 0xff, o);
            } else {
                epi_apply_512(&P, dw_acc16_512(zp, w, base, 0, c16, xs, row, k, ty0, ty1, tx0, tx1), NULL, 0xff, o);
            }
        }
        return;
    }
    const size_t block = (size_t)128 * (1 + (k * k + 3) / 4); /* bytes per block of the quad layout */
    for (int32_t c = 0; c < C; c += 32) {
        const uint8_t *pk = quads + (size_t)(c / 32) * block;
        const int two = C - c > 16;
        const epi512 P0 = epi_load_512(&op->epi, c, 0), P1 = epi_load_512(&op->epi, two ? c + 16 : c, 0);
        const __mmask16 m0 = tail16(C - c), m1 = two ? tail16(C - c - 16) : 0;
        for (int32_t ox = 0; ox < op->w_out; ox++) {
            int32_t tx0, tx1;
            eq_cnn_tap_range(ox, s, pad, k, op->w_in, &tx0, &tx1);
            const uint8_t *base = row0 + (ptrdiff_t)(ox * s - pad) * xs;
            uint8_t *o = out + (size_t)ox * cs + c;
            if (full_y && tx0 == 0 && tx1 == k && (k == 3 || k == 5)) {
                __m512i lo, hi;
                if (k == 3)
                    tap_quads_512(pk, base + c, row, xs, 3, &lo, &hi);
                else
                    tap_quads_512(pk, base + c, row, xs, 5, &lo, &hi);
                epi_apply_512(&P0, lo, NULL, m0, o);
                if (two) epi_apply_512(&P1, hi, NULL, m1, o + 16);
            } else {
                epi_apply_512(&P0, dw_acc16_512(zp, w, base, c, c16, xs, row, k, ty0, ty1, tx0, tx1), NULL, m0, o);
                if (two)
                    epi_apply_512(&P1, dw_acc16_512(zp, w, base, c + 16, c16, xs, row, k, ty0, ty1, tx0, tx1), NULL,
                                  m1, o + 16);
            }
        }
    }
}

/* pw_row_512 for 16-bit codes: the high and low parts' sums combined in registers */
T512 static void pw_row_wide_512(const void *hi, const void *lo, int32_t n, int32_t k, const uint8_t *x, int32_t xs,
                                 int32_t npix, const eq_cnn_epi *e, const uint8_t *res, int32_t rs, uint8_t *out,
                                 int32_t os) {
    pw_rows_512(hi, lo, n, k, x, xs, npix, e, res, rs, out, os);
}

const eq_cnn_kernels eq_cnn_avx512 = {
    .name = "avx512",
    .pw_bytes = pw_bytes_512,
    .pw_pack = pw_pack_512,
    .pw_acc = pw_acc_512,
    .dw_bytes = dw_bytes_512,
    .dw_pack = dw_pack_512,
    .stem = stem_512,
    .se = se_512,
    .pw_row = pw_row_512,
    .dw_row = dw_row_512,
    .pw_row_wide = pw_row_wide_512,
};

/* ==================================================================== AVX2 */

/* pointwise weights: [k/2][n rounded to 8][2] int16, so one 32-byte load holds two
 * inputs of 8 outputs for vpmaddwd */
static size_t pw_bytes_2(int32_t n, int32_t k) { return (size_t)2 * ((n + 7) & ~7) * eq_cnn_c4(k); }

static void pw_pack_2(const int8_t *w, int32_t n, int32_t k, void *out) {
    const int32_t n8 = (n + 7) & ~7;
    int16_t *o = out;
    memset(o, 0, pw_bytes_2(n, k));
    for (int32_t r = 0; r < n; r++)
        for (int32_t c = 0; c < k; c++) o[((size_t)(c / 2) * n8 + r) * 2 + c % 2] = w[(size_t)r * k + c];
}

/* the requantisation's parameters for 8 channels, loaded once for many pixels */
typedef struct {
    __m256i corr, out_zero, res_zero;
    __m256 w_scale, bias, out_inv, res_scale;
    int act, res;
} epi256;

T2 static inline __attribute__((always_inline)) epi256 epi_load_2(const eq_cnn_epi *e, int32_t c, int res) {
    epi256 P;
    P.corr = _mm256_load_si256((const __m256i *)(e->corr + c));
    P.out_zero = _mm256_load_si256((const __m256i *)(e->out_zero + c));
    P.w_scale = _mm256_load_ps(e->w_scale + c), P.bias = _mm256_load_ps(e->bias + c);
    P.out_inv = _mm256_load_ps(e->out_inv + c);
    P.res = res, P.act = e->act;
    P.res_zero = res ? _mm256_load_si256((const __m256i *)(e->res_zero + c)) : _mm256_setzero_si256();
    P.res_scale = res ? _mm256_load_ps(e->res_scale + c) : _mm256_setzero_ps();
    return P;
}

/* the generic requantisation of 8 channels (the first n of them stored) of one pixel, in
 * the same operations and order; acc: the sums with the correction in them (as for
 * epi_codes_512); r: that pixel's residual at these channels (8 bytes are read: the maps
 * have slack), o: its output */
T2 static inline __attribute__((always_inline)) void epi_apply_2(const epi256 *P, __m256i acc, const uint8_t *r,
                                                                  int32_t n, uint8_t *o) {
    const __m256 zero = _mm256_setzero_ps();
    __m256 f = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc), P->w_scale), P->bias);
    if (P->res) {
        const __m256i rv = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)r));
        f = _mm256_add_ps(f, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(rv, P->res_zero)), P->res_scale));
    } else if (P->act == EQ_CNN_ACT_RELU) {
        f = _mm256_max_ps(f, zero);
    } else if (P->act == EQ_CNN_ACT_HS) {
        const __m256 t = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(f, _mm256_set1_ps(3.0f)), zero), _mm256_set1_ps(6.0f));
        f = _mm256_mul_ps(_mm256_mul_ps(f, t), _mm256_set1_ps((float)(1.0 / 6.0)));
    }
    const __m128i b8 = codes_2(_mm256_mul_ps(f, P->out_inv), P->out_zero);
    if (n >= 8)
        _mm_storel_epi64((__m128i *)o, b8);
    else {
        uint8_t tmp[16];
        _mm_storeu_si128((__m128i *)tmp, b8);
        memcpy(o, tmp, (size_t)n);
    }
}

#define PW2_TILE 4
/* outputs o..o+7 of np <= PW2_TILE pixels (rows xs bytes apart) */
T2 static inline __attribute__((always_inline)) void tile4_2(const int16_t *w, int32_t n8, int32_t kp, int32_t o,
                                                              const uint8_t *xp, int32_t xs, int32_t np, __m256i start,
                                                              __m256i *a) {
    for (int j = 0; j < PW2_TILE; j++) a[j] = start;
    for (int32_t q = 0; q < kp; q++) {
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + ((size_t)q * n8 + o) * 2));
        for (int j = 0; j < np; j++) {
            const uint8_t *b = xp + (size_t)j * xs + 2 * q; /* two inputs as two int16 */
            a[j] = _mm256_add_epi32(a[j], _mm256_madd_epi16(_mm256_set1_epi32(b[0] | (b[1] << 16)), wv));
        }
    }
}
T2 static void pw_acc_2(const void *packed, int32_t n, int32_t k, const uint8_t *x, int32_t xs, int32_t npix,
                        int32_t *acc, int32_t accs) {
    const int32_t n8 = (n + 7) & ~7, kp = eq_cnn_c4(k) / 2;
    const int16_t *w = packed;
    for (int32_t p = 0; p < npix; p += PW2_TILE) {
        const int32_t np = npix - p < PW2_TILE ? npix - p : PW2_TILE;
        for (int32_t o = 0; o < n8; o += 8) {
            __m256i a[PW2_TILE];
            tile4_2(w, n8, kp, o, x + (size_t)p * xs, xs, np, _mm256_setzero_si256(), a);
            for (int j = 0; j < np; j++) _mm256_storeu_si256((__m256i *)(acc + (size_t)(p + j) * accs + o), a[j]);
        }
    }
}

#define PW2_KMAX 1024 /* inputs of a pointwise convolution that pw_row_2 widens on the stack */

/* tile4_2 on inputs already widened: pairs[j * kp + q] = the two inputs of pair q of pixel
 * j as two int16 (one broadcast load each, where tile4_2 assembles them from two bytes) */
T2 static inline __attribute__((always_inline)) void tile4_pairs_2(const int16_t *w, int32_t n8, int32_t kp, int32_t o,
                                                                    const int32_t *pairs, int32_t np, __m256i start,
                                                                    __m256i *a) {
    for (int j = 0; j < PW2_TILE; j++) a[j] = start;
    for (int32_t q = 0; q < kp; q++) {
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + ((size_t)q * n8 + o) * 2));
        for (int j = 0; j < np; j++)
            a[j] = _mm256_add_epi32(a[j], _mm256_madd_epi16(_mm256_set1_epi32(pairs[(size_t)j * kp + q]), wv));
    }
}

/* pw_acc_2 and the requantisation in one pass: 4 pixels x 8 outputs in registers; each
 * tile of 4 pixels widened to int16 once, then every block of 8 outputs */
T2 static void pw_row_2(const void *packed, int32_t n, int32_t k, const uint8_t *x, int32_t xs, int32_t npix,
                        const eq_cnn_epi *e, const uint8_t *res, int32_t rs, uint8_t *out, int32_t os) {
    const int32_t n8 = (n + 7) & ~7, kp = eq_cnn_c4(k) / 2;
    const int16_t *w = packed;
    if (k <= PW2_KMAX) {
        int32_t pairs[PW2_TILE * (PW2_KMAX / 2 + 8)] __attribute__((aligned(32)));
        for (int32_t p = 0; p < npix; p += PW2_TILE) {
            const int32_t np = npix - p < PW2_TILE ? npix - p : PW2_TILE;
            for (int j = 0; j < np; j++) /* 16 inputs a step (reads past the pixel land in the map's slack) */
                for (int32_t c = 0; c < 2 * kp; c += 16)
                    _mm256_storeu_si256((__m256i *)((int16_t *)(pairs + (size_t)j * kp) + c),
                                        _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(x + (size_t)(p + j) * xs + c))));
            for (int32_t o = 0; o < n8; o += 8) {
                const epi256 P = epi_load_2(e, o, res != NULL);
                __m256i a[PW2_TILE];
                if (np == PW2_TILE) /* a constant count: the pixel loop unrolls without tests */
                    tile4_pairs_2(w, n8, kp, o, pairs, PW2_TILE, P.corr, a);
                else
                    tile4_pairs_2(w, n8, kp, o, pairs, np, P.corr, a);
                for (int j = 0; j < np; j++)
                    epi_apply_2(&P, a[j], res ? res + (size_t)(p + j) * rs + o : NULL, n - o, out + (size_t)(p + j) * os + o);
            }
        }
        return;
    }
    for (int32_t o = 0; o < n8; o += 8) {
        const epi256 P = epi_load_2(e, o, res != NULL);
        for (int32_t p = 0; p < npix; p += PW2_TILE) {
            const int32_t np = npix - p < PW2_TILE ? npix - p : PW2_TILE;
            __m256i a[PW2_TILE];
            tile4_2(w, n8, kp, o, x + (size_t)p * xs, xs, np, P.corr, a);
            for (int j = 0; j < np; j++)
                epi_apply_2(&P, a[j], res ? res + (size_t)(p + j) * rs + o : NULL, n - o, out + (size_t)(p + j) * os + o);
        }
    }
}

/* the k x k taps of one block of 16 channels in the pair layout of dw_pack_2 (pk: the
 * block's zero points, then its pairs of taps), two taps per vpmaddwd on (x - zero) as
 * int16; sums of channels 0-3, 8-11 in lo and 4-7, 12-15 in hi */
T2 static inline __attribute__((always_inline)) void tap_pairs_2(const int16_t *pk, const uint8_t *base, int32_t row,
                                                                  int32_t xs, int32_t k, __m256i *lo, __m256i *hi) {
    const int32_t kk = k * k;
    const __m256i z = _mm256_load_si256((const __m256i *)pk);
    pk += 16;
    __m256i l = _mm256_setzero_si256(), h = _mm256_setzero_si256();
    for (int32_t t = 0; t < kk; t += 2, pk += 32) {
        const uint8_t *pa = base + (size_t)(t / k) * row + (size_t)(t % k) * xs;
        const __m256i xa = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)pa)), z);
        __m256i xb = _mm256_setzero_si256();
        if (t + 1 < kk) {
            const uint8_t *pb = base + (size_t)((t + 1) / k) * row + (size_t)((t + 1) % k) * xs;
            xb = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)pb)), z);
        }
        l = _mm256_add_epi32(l, _mm256_madd_epi16(_mm256_unpacklo_epi16(xa, xb), _mm256_load_si256((const __m256i *)pk)));
        h = _mm256_add_epi32(h, _mm256_madd_epi16(_mm256_unpackhi_epi16(xa, xb), _mm256_load_si256((const __m256i *)(pk + 16))));
    }
    *lo = l, *hi = h;
}

/* depthwise sums of channels c..c+7 of one output pixel over taps [ty0, ty1) x [tx0, tx1)
 * in the madd layout (pixels at the borders) */
T2 static inline __attribute__((always_inline)) __m256i dw_acc8_2(const int32_t *zp, const int32_t *w,
                                                                   const uint8_t *base, int32_t c, int32_t c16,
                                                                   int32_t xs, int32_t row, int32_t k, int32_t ty0,
                                                                   int32_t ty1, int32_t tx0, int32_t tx1) {
    const __m256i z = _mm256_loadu_si256((const __m256i *)(zp + c));
    __m256i a = _mm256_setzero_si256();
    for (int32_t ty = ty0; ty < ty1; ty++)
        for (int32_t tx = tx0; tx < tx1; tx++) {
            const __m128i b = _mm_loadl_epi64((const __m128i *)(base + (size_t)ty * row + (size_t)tx * xs + c));
            const __m256i v = _mm256_sub_epi32(_mm256_cvtepu8_epi32(b), z);
            a = _mm256_add_epi32(a, _mm256_madd_epi16(v, _mm256_loadu_si256((const __m256i *)(w + (size_t)(ty * k + tx) * c16 + c))));
        }
    return a;
}

/* a depthwise output row and its requantisation in one pass: per block of 16 channels,
 * its requantisation parameters loaded once for the row; interior pixels two taps per
 * vpmaddwd (the pair layout), pixels at the borders one tap per vpmaddwd */
T2 static void dw_row_2(const void *packed, const eq_cnn_op *op, const uint8_t *x, int32_t xs, int32_t oy,
                        uint8_t *out) {
    const int32_t k = op->k, s = op->stride, pad = op->pad, C = op->cout, c16 = up16(C), cs = eq_cnn_c4(C);
    const int32_t *zp = packed, *w = zp + c16, row = op->w_in * xs;
    const int16_t *pairs_w = (const int16_t *)((const uint8_t *)packed + eq_cnn_dw_bytes_wide(C, k));
    const size_t block = 16 + (size_t)32 * ((k * k + 1) / 2); /* int16 per block of the pair layout */
    int32_t ty0, ty1;
    eq_cnn_tap_range(oy, s, pad, k, op->h_in, &ty0, &ty1);
    const int full_y = ty0 == 0 && ty1 == k;
    const uint8_t *row0 = x + (ptrdiff_t)(oy * s - pad) * op->w_in * xs;
    for (int32_t c = 0; c < C; c += 16) {
        const int16_t *pk = pairs_w + (size_t)(c / 16) * block;
        const int two = C - c > 8;
        const epi256 P0 = epi_load_2(&op->epi, c, 0), P1 = epi_load_2(&op->epi, two ? c + 8 : c, 0);
        for (int32_t ox = 0; ox < op->w_out; ox++) {
            int32_t tx0, tx1;
            eq_cnn_tap_range(ox, s, pad, k, op->w_in, &tx0, &tx1);
            const uint8_t *base = row0 + (ptrdiff_t)(ox * s - pad) * xs;
            uint8_t *o = out + (size_t)ox * cs + c;
            if (full_y && tx0 == 0 && tx1 == k && (k == 3 || k == 5)) {
                __m256i lo, hi;
                if (k == 3)
                    tap_pairs_2(pk, base + c, row, xs, 3, &lo, &hi);
                else
                    tap_pairs_2(pk, base + c, row, xs, 5, &lo, &hi);
                epi_apply_2(&P0, _mm256_permute2x128_si256(lo, hi, 0x20), NULL, C - c, o);
                if (two) epi_apply_2(&P1, _mm256_permute2x128_si256(lo, hi, 0x31), NULL, C - c - 8, o + 8);
            } else {
                epi_apply_2(&P0, dw_acc8_2(zp, w, base, c, c16, xs, row, k, ty0, ty1, tx0, tx1), NULL, C - c, o);
                if (two)
                    epi_apply_2(&P1, dw_acc8_2(zp, w, base, c + 8, c16, xs, row, k, ty0, ty1, tx0, tx1), NULL,
                                C - c - 8, o + 8);
            }
        }
    }
}

/* 16-bit codes into pw_pack_2's layout (int16 already): the products stay within vpmaddwd's
 * int32 pairs (2 x 255 x 32512) */
static void pw_pack16_2(const int8_t *hi, const int8_t *lo, int32_t n, int32_t k, void *out) {
    eq_cnn_pw_pack16(hi, lo, n, k, 2, pw_bytes_2(n, k), out);
}

const eq_cnn_kernels eq_cnn_avx2 = {
    .name = "avx2",
    .pw_bytes = pw_bytes_2,
    .pw_pack = pw_pack_2,
    .pw_acc = pw_acc_2,
    .dw_bytes = dw_bytes_2,
    .dw_pack = dw_pack_2,
    .stem = stem_2,
    .se = se_2,
    .pw_row = pw_row_2,
    .dw_row = dw_row_2,
    .pw_pack16 = pw_pack16_2,
};

#endif
