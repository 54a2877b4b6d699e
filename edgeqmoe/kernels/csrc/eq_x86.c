/* x86-64 SIMD kernels: AVX2, AVX-512 (F/BW/VL + VNNI + VPOPCNTDQ) and AVX-512 with
 * VBMI (q1 by table lookup). The tiled formats (q1, q2, ternary, q4, popcount) keep
 * one row per 32-bit lane; q8 (row-major) reduces rows with a transposing tree.
 *
 * Compiled with per-function target attributes, so the module builds with the
 * baseline flags and each variant runs only where eq_variants() found the features.
 * Every function mirrors a generic twin in eq_generic.c with the same results.
 */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "eq_kernels.h"

#define T2 __attribute__((target("avx2,fma,popcnt,f16c")))
#define T512 __attribute__((target("avx2,fma,popcnt,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vpopcntdq")))
#define T512V __attribute__((target("avx2,fma,popcnt,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vpopcntdq,avx512vbmi")))
#define INL inline __attribute__((always_inline))

/* ==================================================================== AVX-512 */

T512 static INL int32_t hsum512(__m512i v) { return _mm512_reduce_add_epi32(v); }

/* out[r] = sum of the 16 int32 lanes of v[r], r < 16: a transposing tree (45 ops for
 * 16 rows) instead of 16 serial horizontal reductions. */
T512 static INL __m512i reduce16_512(const __m512i *v) {
    __m512i w[8], u[4], z[2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        w[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
        u[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(w[2 * i], w[2 * i + 1]), _mm512_unpackhi_epi64(w[2 * i], w[2 * i + 1]));
    for (int i = 0; i < 2; i++)
        z[i] = _mm512_add_epi32(_mm512_shuffle_i32x4(u[2 * i], u[2 * i + 1], 0x88),
                                _mm512_shuffle_i32x4(u[2 * i], u[2 * i + 1], 0xdd));
    /* u[i] holds rows 4i..4i+3 in each 128-bit group; z and the last step add the groups */
    return _mm512_add_epi32(_mm512_shuffle_i32x4(z[0], z[1], 0x88), _mm512_shuffle_i32x4(z[0], z[1], 0xdd));
}

/* Runs GROUP(i, R, vecs) (R row vectors of partial sums for rows i..i+R-1) over all
 * rows, 16 at a time; EPI16(i, sums) turns 16 row sums into 16 accumulators (vector),
 * EPI1(i, sum) one (scalar, for the last n % 16 rows). */
#define ROWS16_512(GROUP, R, EPI16, EPI1)                                                   \
    do {                                                                                  \
        int32_t i = 0;                                                                    \
        __m512i t[16];                                                                    \
        for (; i + 16 <= L->n; i += 16) {                                                 \
            _Pragma("GCC unroll 16") for (int g = 0; g < 16; g += R) GROUP(i + g, R, t + g); \
            _mm512_storeu_si512(acc + i, EPI16(i, reduce16_512(t)));                      \
        }                                                                                 \
        for (; i < L->n; i++) {                                                           \
            GROUP(i, 1, t);                                                               \
            acc[i] = EPI1(i, hsum512(t[0]));                                              \
        }                                                                                 \
    } while (0)

/* Tiled fields (q2, ternary, q4, and q1 without VBMI; layout in formats.py): sums of
 * x * u for RT tiles (16 rows each) that share every broadcast of four activations.
 * Field j of a span is masked in place (not shifted), so it carries a factor
 * 2^(bits*j) and has its own accumulator, shifted back at the end (exact: every lane
 * is a multiple). Each 32-bit lane is one row: no reduction across lanes.
 * Overflow: a lane gains at most 4 * 255 * 127 per span; k <= 131072 keeps int32. */
T512 static INL void tiles_fields512(const uint8_t *w, size_t tb, const int8_t *x, int32_t spans, const int bits,
                                     const int RT, __m512i *out) {
    const int per = 8 / bits, span = 4 * per;
    __m512i A[4][8];
#pragma GCC unroll 4
    for (int r = 0; r < RT; r++)
#pragma GCC unroll 8
        for (int j = 0; j < per; j++) A[r][j] = _mm512_setzero_si512();
    for (int32_t s = 0; s < spans; s++) {
        __m512i v[4];
#pragma GCC unroll 4
        for (int r = 0; r < RT; r++) v[r] = _mm512_loadu_si512(w + tb * r + (size_t)EQ_SPAN_BYTES * s);
#pragma GCC unroll 8
        for (int j = 0; j < per; j++) {
            int32_t four;
            memcpy(&four, x + (size_t)s * span + 4 * j, 4);
            const __m512i m = _mm512_set1_epi8((char)(((1 << bits) - 1) << (bits * j)));
            const __m512i xb = _mm512_set1_epi32(four);
#pragma GCC unroll 4
            for (int r = 0; r < RT; r++) A[r][j] = _mm512_dpbusd_epi32(A[r][j], _mm512_and_si512(v[r], m), xb);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < RT; r++) {
        __m512i t = A[r][0];
#pragma GCC unroll 8
        for (int j = 1; j < per; j++) t = _mm512_add_epi32(t, _mm512_srai_epi32(A[r][j], bits * j));
        out[r] = t;
    }
}

/* RT (tiles sharing broadcasts) keeps RT * fields accumulators within the registers. */
#define TILED512(NAME, BITS, RT, SCALE, CORR)                                                       \
    T512 static void NAME(const eq_layer *L, const eq_act *a, int32_t *acc) {                       \
        const int32_t spans = L->kp * BITS / 32, tiles = eq_tiled_rows(L->n) / EQ_ROW_TILE;         \
        const size_t tb = (size_t)spans * EQ_SPAN_BYTES;                                            \
        const __m512i corr = _mm512_set1_epi32(CORR);                                               \
        __m512i o[4];                                                                               \
        int32_t t = 0;                                                                              \
        for (; t + RT <= tiles; t += RT) {                                                          \
            tiles_fields512(L->w + tb * t, tb, a->q, spans, BITS, RT, o);                           \
            for (int r = 0; r < RT; r++)                                                            \
                _mm512_store_si512(acc + EQ_ROW_TILE * (t + r),                                     \
                                   _mm512_sub_epi32(_mm512_mullo_epi32(o[r], _mm512_set1_epi32(SCALE)), corr)); \
        }                                                                                           \
        for (; t < tiles; t++) {                                                                    \
            tiles_fields512(L->w + tb * t, tb, a->q, spans, BITS, 1, o);                            \
            _mm512_store_si512(acc + EQ_ROW_TILE * t,                                               \
                               _mm512_sub_epi32(_mm512_mullo_epi32(o[0], _mm512_set1_epi32(SCALE)), corr)); \
        }                                                                                           \
    }
/* q1: 2 * sum - qsum; q2, ternary, q4: sum - offset * qsum */
TILED512(acc_q1_512, 1, 2, 2, a->qsum)
TILED512(acc_q2_512, 2, 2, 1, eq_fmt_offset[L->fmt] * a->qsum)
TILED512(acc_q4_512, 4, 4, 1, eq_fmt_offset[L->fmt] * a->qsum)

/* q1 by table lookup (VBMI). For each 32-column span, four 64-byte tables: entry
 * 16c + n of the low-nibble table is the sum of the activations at columns c, c+4,
 * c+8, c+12 whose bit is set in n (the high-nibble table: c+16 .. c+28). A byte of the
 * tile holds both nibbles of one row at byte position c, so vpermb with index
 * (nibble | 16c) looks up 64 rows-nibbles at once. Exact int8 sums need 10 bits, so
 * each activation is split as x = 16 xh + xl (xl in 0..15, xh in -8..7) and there is
 * one table per part: sums of four stay in 0..60 and -32..28, the two nibbles' sums
 * in one byte, and vpdpbusd with weights 1 and 16 adds them into the row's lane. */
T512V static void q1_tables512(const int8_t *x, int32_t kp, int8_t *lut) {
    __m512i gl[4], gh[4];
    __mmask64 bit[4];
    for (int i = 0; i < 4; i++) {
        uint8_t il[64], ih[64];
        uint64_t mk = 0;
        for (int e = 0; e < 64; e++) {
            il[e] = (uint8_t)(4 * i + (e >> 4));
            ih[e] = (uint8_t)(16 + 4 * i + (e >> 4));
            if (((e & 15) >> i) & 1) mk |= 1ull << e;
        }
        gl[i] = _mm512_loadu_si512(il);
        gh[i] = _mm512_loadu_si512(ih);
        bit[i] = (__mmask64)mk;
    }
    const __m512i m0f = _mm512_set1_epi8(15), m8 = _mm512_set1_epi8(8);
    for (int32_t s = 0; s < kp / 32; s++) {
        const __m512i xs = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(x + 32 * s)));
        const __m512i xl = _mm512_and_si512(xs, m0f);
        const __m512i xh = _mm512_sub_epi8(_mm512_xor_si512(_mm512_and_si512(_mm512_srli_epi16(xs, 4), m0f), m8), m8);
        __m512i t0 = _mm512_setzero_si512(), t1 = t0, t2 = t0, t3 = t0;
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            t0 = _mm512_mask_add_epi8(t0, bit[i], t0, _mm512_permutexvar_epi8(gl[i], xl));
            t1 = _mm512_mask_add_epi8(t1, bit[i], t1, _mm512_permutexvar_epi8(gl[i], xh));
            t2 = _mm512_mask_add_epi8(t2, bit[i], t2, _mm512_permutexvar_epi8(gh[i], xl));
            t3 = _mm512_mask_add_epi8(t3, bit[i], t3, _mm512_permutexvar_epi8(gh[i], xh));
        }
        int8_t *o = lut + 256 * (size_t)s;
        _mm512_store_si512(o, t0);
        _mm512_store_si512(o + 64, t1);
        _mm512_store_si512(o + 128, t2);
        _mm512_store_si512(o + 192, t3);
    }
}

T512V static INL void tiles_q1_lut512(const uint8_t *w, size_t tb, const int8_t *lut, int32_t spans, const int RT,
                                      __m512i *out) {
    const __m512i m0f = _mm512_set1_epi8(15), ones = _mm512_set1_epi8(1), sixteen = _mm512_set1_epi8(16);
    const __m512i off = _mm512_set1_epi32(0x30201000); /* 16c at byte position c */
    __m512i A[4];
#pragma GCC unroll 4
    for (int r = 0; r < RT; r++) A[r] = _mm512_setzero_si512();
    for (int32_t s = 0; s < spans; s++) {
        const int8_t *tab = lut + 256 * (size_t)s;
        const __m512i lol = _mm512_load_si512(tab), loh = _mm512_load_si512(tab + 64);
        const __m512i hil = _mm512_load_si512(tab + 128), hih = _mm512_load_si512(tab + 192);
#pragma GCC unroll 4
        for (int r = 0; r < RT; r++) {
            const __m512i v = _mm512_loadu_si512(w + tb * r + (size_t)EQ_SPAN_BYTES * s);
            /* (v & 15) | off, and the same of v >> 4 (0xEA: a & b | c) */
            const __m512i il = _mm512_ternarylogic_epi32(v, m0f, off, 0xEA);
            const __m512i ih = _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 4), m0f, off, 0xEA);
            const __m512i sl = _mm512_add_epi8(_mm512_permutexvar_epi8(il, lol), _mm512_permutexvar_epi8(ih, hil));
            const __m512i sh = _mm512_add_epi8(_mm512_permutexvar_epi8(il, loh), _mm512_permutexvar_epi8(ih, hih));
            A[r] = _mm512_dpbusd_epi32(A[r], ones, sl);
            A[r] = _mm512_dpbusd_epi32(A[r], sixteen, sh);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < RT; r++) out[r] = A[r];
}

T512V static void acc_q1_lut512(const eq_layer *L, const eq_act *a, int32_t *acc) {
    const int32_t spans = L->kp / 32, tiles = eq_tiled_rows(L->n) / EQ_ROW_TILE;
    const size_t tb = (size_t)spans * EQ_SPAN_BYTES;
    const __m512i qsum = _mm512_set1_epi32(a->qsum);
    q1_tables512(a->q, L->kp, a->lut);
    __m512i o[4];
    int32_t t = 0;
    for (; t + 4 <= tiles; t += 4) {
        tiles_q1_lut512(L->w + tb * t, tb, a->lut, spans, 4, o);
        for (int r = 0; r < 4; r++)
            _mm512_store_si512(acc + EQ_ROW_TILE * (t + r), _mm512_sub_epi32(_mm512_slli_epi32(o[r], 1), qsum));
    }
    for (; t < tiles; t++) {
        tiles_q1_lut512(L->w + tb * t, tb, a->lut, spans, 1, o);
        _mm512_store_si512(acc + EQ_ROW_TILE * t, _mm512_sub_epi32(_mm512_slli_epi32(o[0], 1), qsum));
    }
}

/* q8: (x + 128) as u8 times signed w, minus 128 * rowsum(w); R rows share x. */
T512 static INL void rows_q8_512(const int8_t *w, size_t kp, const uint8_t *xu, const int R, __m512i *out) {
    __m512i A[8];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) A[r] = _mm512_setzero_si512();
    for (size_t j = 0; j < kp; j += 64) {
        const __m512i xv = _mm512_load_si512(xu + j);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) A[r] = _mm512_dpbusd_epi32(A[r], xv, _mm512_loadu_si512(w + kp * r + j));
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) out[r] = A[r];
}

T512 static void acc_q8_512(const eq_layer *L, const eq_act *a, int32_t *acc) {
    const size_t kp = (size_t)L->kp;
#define GROUP_Q8(i, R, o) rows_q8_512((const int8_t *)L->w + kp * (i), kp, a->qu, R, o)
/* sum - 128 * rowsum */
#define EPI16_Q8(i, v) _mm512_sub_epi32(v, _mm512_slli_epi32(_mm512_loadu_si512(L->rowsum + (i)), 7))
#define EPI1_Q8(i, s) ((s) - 128 * L->rowsum[i])
    ROWS16_512(GROUP_Q8, 4, EPI16_Q8, EPI1_Q8);
}

/* popcount (ternary weights, binary activations): with M = non-zero weights and
 * D = M & (sign_w ^ sign_x), dot = popcount(M) - 2 popcount(D); popcount(M) is a
 * per-row constant (L->rowsum). Tiled (formats.py): per 32-column span one zmm of 16
 * rows' sign words and one of mask words; the span's 32 activation bits are broadcast
 * to every lane, so each lane counts one row and RT tiles share the broadcast. */
T512 static INL void tiles_popcount512(const uint8_t *w, size_t tb, const uint32_t *xs, int32_t spans, const int RT,
                                       __m512i *out) {
    __m512i A[4];
#pragma GCC unroll 4
    for (int r = 0; r < RT; r++) A[r] = _mm512_setzero_si512();
    for (int32_t s = 0; s < spans; s++) {
        const __m512i xb = _mm512_set1_epi32((int32_t)xs[s]);
#pragma GCC unroll 4
        for (int r = 0; r < RT; r++) {
            const uint8_t *p = w + tb * r + (size_t)2 * EQ_SPAN_BYTES * s;
            /* mask & (sign_w ^ sign_x) in one ternary-logic op (0x60: a & (b ^ c)) */
            const __m512i d = _mm512_ternarylogic_epi32(_mm512_loadu_si512(p + EQ_SPAN_BYTES), _mm512_loadu_si512(p), xb, 0x60);
            A[r] = _mm512_add_epi32(A[r], _mm512_popcnt_epi32(d));
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < RT; r++) out[r] = A[r];
}

T512 static void acc_popcount_512(const eq_layer *L, const eq_act *a, int32_t *acc) {
    const int32_t spans = L->kp / 32, tiles = eq_tiled_rows(L->n) / EQ_ROW_TILE;
    const size_t tb = (size_t)spans * 2 * EQ_SPAN_BYTES;
    const uint32_t *xs = (const uint32_t *)a->planes;
    __m512i o[4];
    int32_t t = 0;
    /* popcount(M) - 2 popcount(D) */
#define EPI_PC(t, v) _mm512_sub_epi32(_mm512_loadu_si512(L->rowsum + EQ_ROW_TILE * (t)), _mm512_slli_epi32(v, 1))
    for (; t + 4 <= tiles; t += 4) {
        tiles_popcount512(L->w + tb * t, tb, xs, spans, 4, o);
        for (int r = 0; r < 4; r++) _mm512_store_si512(acc + EQ_ROW_TILE * (t + r), EPI_PC(t + r, o[r]));
    }
    for (; t < tiles; t++) {
        tiles_popcount512(L->w + tb * t, tb, xs, spans, 1, o);
        _mm512_store_si512(acc + EQ_ROW_TILE * t, EPI_PC(t, o[0]));
    }
#undef EPI_PC
}

T512 static float absmax512(const float *x, int32_t k) {
    __m512 m = _mm512_setzero_ps();
    int32_t j = 0;
    for (; j + 16 <= k; j += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + j)));
    if (j < k) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_maskz_loadu_ps((__mmask16)((1u << (k - j)) - 1), x + j)));
    return _mm512_reduce_max_ps(m);
}

T512 static void quant_i8_512(const float *x, int32_t k, eq_act *a) {
    float amax = absmax512(x, k);
    if (!(amax > 0.0f)) amax = 1.0f;
    const __m512 s = _mm512_set1_ps((float)EQ_ACT_QMAX / amax);
    const __m512i lo = _mm512_set1_epi32(-EQ_ACT_QMAX), hi = _mm512_set1_epi32(EQ_ACT_QMAX);
    __m512i sum = _mm512_setzero_si512();
    for (int32_t j = 0; j < a->kp; j += 16) {
        const __mmask16 km = (k - j >= 16) ? 0xffff : (k > j ? (__mmask16)((1u << (k - j)) - 1) : 0);
        /* cvtps rounds to nearest even under the default MXCSR, as rintf does */
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(km, x + j), s));
        q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
        sum = _mm512_add_epi32(sum, q);
        const __m128i q8 = _mm512_cvtepi32_epi8(q);
        _mm_store_si128((__m128i *)(a->q + j), q8);
        _mm_store_si128((__m128i *)(a->qu + j), _mm_xor_si128(q8, _mm_set1_epi8((char)0x80)));
    }
    a->qsum = hsum512(sum);
    a->scale = amax / (float)EQ_ACT_QMAX;
}

/* binary activations: bit 1 marks x <= tau; scale as eq_generic_quant_sign. Only the
 * sum the mode needs is taken; whole 64-input words skip the tail masks. */
T512 static void quant_sign_512(const float *x, int32_t k, float tau, int32_t mode, eq_act *a) {
    const int32_t words = a->kp / 64, full = k / 64;
    const __m512 vt = _mm512_set1_ps(tau);
    __m512 tot = _mm512_setzero_ps(), high = tot;
    int32_t nhigh = 0;
    for (int32_t w = 0; w < words; w++) {
        uint64_t hm = 0, km = ~0ull;
        for (int q = 0; q < 4; q++) {
            const int32_t j = w * 64 + q * 16;
            __m512 v;
            __mmask16 hi;
            if (w < full) {
                v = _mm512_loadu_ps(x + j);
                hi = _mm512_cmp_ps_mask(v, vt, _CMP_GT_OQ);
            } else {
                const __mmask16 m = (k - j >= 16) ? 0xffff : (k > j ? (__mmask16)((1u << (k - j)) - 1) : 0);
                v = _mm512_maskz_loadu_ps(m, x + j);
                hi = _mm512_mask_cmp_ps_mask(m, v, vt, _CMP_GT_OQ);
                km &= ~((uint64_t)(uint16_t)~m << (16 * q));
            }
            if (mode == EQ_ACT_UNSIGNED)
                high = _mm512_mask_add_ps(high, hi, high, v);
            else
                tot = _mm512_add_ps(tot, _mm512_abs_ps(v));
            hm |= (uint64_t)hi << (16 * q);
        }
        nhigh += __builtin_popcountll(hm);
        a->planes[w] = km & ~hm;
    }
    const float scale = mode == EQ_ACT_UNSIGNED ? (nhigh ? _mm512_reduce_add_ps(high) / (float)nhigh : 0.0f)
                                                : _mm512_reduce_add_ps(tot) / (float)k;
    a->scale = scale > 0.0f ? scale : 1.0f;
}

T512 static void gemv_f16_512(const eq_layer *L, const float *x, float *y) {
    const size_t kp = (size_t)L->kp;
    const int32_t k = L->k;
    int32_t i = 0;
    for (; i + 4 <= L->n; i += 4) {
        const uint16_t *w = (const uint16_t *)L->w + kp * i;
        __m512 A0 = _mm512_setzero_ps(), A1 = A0, A2 = A0, A3 = A0;
        for (int32_t j = 0; j < k; j += 16) {
            const __mmask16 km = (k - j >= 16) ? 0xffff : (__mmask16)((1u << (k - j)) - 1);
            const __m512 xv = _mm512_maskz_loadu_ps(km, x + j);
            if (!(j & 127)) /* the next four rows, every fourth line */
                for (int r = 4; r < 8; r++) EQ_PREFETCH(w + r * kp + j);
            A0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + j))), xv, A0);
            A1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + kp + j))), xv, A1);
            A2 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 2 * kp + j))), xv, A2);
            A3 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 3 * kp + j))), xv, A3);
        }
        y[i] = _mm512_reduce_add_ps(A0);
        y[i + 1] = _mm512_reduce_add_ps(A1);
        y[i + 2] = _mm512_reduce_add_ps(A2);
        y[i + 3] = _mm512_reduce_add_ps(A3);
    }
    for (; i < L->n; i++) {
        const uint16_t *w = (const uint16_t *)L->w + kp * i;
        __m512 A0 = _mm512_setzero_ps();
        for (int32_t j = 0; j < k; j += 16) {
            const __mmask16 km = (k - j >= 16) ? 0xffff : (__mmask16)((1u << (k - j)) - 1);
            A0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + j))),
                                 _mm512_maskz_loadu_ps(km, x + j), A0);
        }
        y[i] = _mm512_reduce_add_ps(A0);
    }
}

/* y = acc * (w_scale * act_scale) + bias, 16 outputs a step */
T512 static void dequant_512(const eq_layer *L, const int32_t *acc, float act_scale, float *y) {
    const __m512 as = _mm512_set1_ps(act_scale);
    const __m512 s0 = _mm512_set1_ps(L->scale[0] * act_scale);
    for (int32_t i = 0; i < L->n; i += 16) {
        const __mmask16 k = (L->n - i >= 16) ? 0xffff : (__mmask16)((1u << (L->n - i)) - 1);
        const __m512 m = L->scale_stride ? _mm512_mul_ps(_mm512_maskz_loadu_ps(k, L->scale + i), as) : s0;
        const __m512 b = L->bias ? _mm512_maskz_loadu_ps(k, L->bias + i) : _mm512_setzero_ps();
        const __m512 v = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(k, acc + i));
        _mm512_mask_storeu_ps(y + i, k, _mm512_fmadd_ps(v, m, b));
    }
}

const eq_kernels eq_kernels_avx512 = {
    .name = "avx512",
    .quant_i8 = quant_i8_512,
    .quant_sign = quant_sign_512,
    .acc = {[EQ_FMT_Q1] = acc_q1_512,
            [EQ_FMT_Q2] = acc_q2_512,
            [EQ_FMT_Q4] = acc_q4_512,
            [EQ_FMT_Q8] = acc_q8_512,
            [EQ_FMT_TERNARY] = acc_q2_512,
            [EQ_FMT_F16] = NULL,
            [EQ_FMT_POPCOUNT] = acc_popcount_512},
    .gemv_f16 = gemv_f16_512,
    .dequant = dequant_512,
};

/* AVX-512 with VBMI: the same, with q1 by table lookup */
const eq_kernels eq_kernels_avx512vbmi = {
    .name = "avx512vbmi",
    .quant_i8 = quant_i8_512,
    .quant_sign = quant_sign_512,
    .acc = {[EQ_FMT_Q1] = acc_q1_lut512,
            [EQ_FMT_Q2] = acc_q2_512,
            [EQ_FMT_Q4] = acc_q4_512,
            [EQ_FMT_Q8] = acc_q8_512,
            [EQ_FMT_TERNARY] = acc_q2_512,
            [EQ_FMT_F16] = NULL,
            [EQ_FMT_POPCOUNT] = acc_popcount_512},
    .gemv_f16 = gemv_f16_512,
    .dequant = dequant_512,
};

/* ==================================================================== AVX2 */

T2 static INL int32_t hsum256(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* Tiled fields with AVX2 (layout in formats.py): a 32-byte half span is 8 rows x 4
 * bytes, each 32-bit lane one row. Fields are shifted down (maddubs multiplies
 * unsigned by signed bytes into int16 pairs, at most 2 * 15 * 127); the fields of a
 * span add up in int16 (at most 8 * 2 * 127, 4 * 2 * 3 * 127 or 2 * 2 * 15 * 127) and
 * are widened once per span with madd. RT tiles share every activation broadcast. */
T2 static INL void tiles_fields256(const uint8_t *w, size_t tb, const int8_t *x, int32_t spans, const int bits,
                                   const int RT, __m256i *out) {
    const int per = 8 / bits, span = 4 * per;
    const __m256i m = _mm256_set1_epi8((char)((1 << bits) - 1)), ones16 = _mm256_set1_epi16(1);
    __m256i A[4];
#pragma GCC unroll 4
    for (int q = 0; q < 2 * RT; q++) A[q] = _mm256_setzero_si256();
    for (int32_t s = 0; s < spans; s++) {
        __m256i v[4], S[4];
#pragma GCC unroll 4
        for (int q = 0; q < 2 * RT; q++) {
            v[q] = _mm256_loadu_si256((const __m256i *)(w + tb * (q >> 1) + (size_t)EQ_SPAN_BYTES * s + 32 * (q & 1)));
            S[q] = _mm256_setzero_si256();
        }
#pragma GCC unroll 8
        for (int j = 0; j < per; j++) {
            int32_t four;
            memcpy(&four, x + (size_t)s * span + 4 * j, 4);
            const __m256i xb = _mm256_set1_epi32(four);
#pragma GCC unroll 4
            for (int q = 0; q < 2 * RT; q++)
                S[q] = _mm256_add_epi16(S[q], _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v[q], bits * j), m), xb));
        }
#pragma GCC unroll 4
        for (int q = 0; q < 2 * RT; q++) A[q] = _mm256_add_epi32(A[q], _mm256_madd_epi16(S[q], ones16));
    }
#pragma GCC unroll 4
    for (int q = 0; q < 2 * RT; q++) out[q] = A[q];
}

#define TILED256(NAME, BITS, RT, SCALE, CORR)                                                        \
    T2 static void NAME(const eq_layer *L, const eq_act *a, int32_t *acc) {                          \
        const int32_t spans = L->kp * BITS / 32, tiles = eq_tiled_rows(L->n) / EQ_ROW_TILE;          \
        const size_t tb = (size_t)spans * EQ_SPAN_BYTES;                                             \
        const __m256i corr = _mm256_set1_epi32(CORR), sc = _mm256_set1_epi32(SCALE);                 \
        __m256i o[4];                                                                                \
        int32_t t = 0;                                                                               \
        for (; t + RT <= tiles; t += RT) {                                                           \
            tiles_fields256(L->w + tb * t, tb, a->q, spans, BITS, RT, o);                            \
            for (int q = 0; q < 2 * RT; q++)                                                         \
                _mm256_store_si256((__m256i *)(acc + EQ_ROW_TILE * t + 8 * q),                       \
                                   _mm256_sub_epi32(_mm256_mullo_epi32(o[q], sc), corr));            \
        }                                                                                            \
        for (; t < tiles; t++) {                                                                     \
            tiles_fields256(L->w + tb * t, tb, a->q, spans, BITS, 1, o);                             \
            for (int q = 0; q < 2; q++)                                                              \
                _mm256_store_si256((__m256i *)(acc + EQ_ROW_TILE * t + 8 * q),                       \
                                   _mm256_sub_epi32(_mm256_mullo_epi32(o[q], sc), corr));            \
        }                                                                                            \
    }

TILED256(acc_q1_256, 1, 1, 2, a->qsum)
TILED256(acc_q2_256, 2, 2, 1, eq_fmt_offset[L->fmt] * a->qsum)
TILED256(acc_q4_256, 4, 2, 1, eq_fmt_offset[L->fmt] * a->qsum)

/* q8: maddubs(|w|, sign(x, w)) is exact (2 * 128 * 127 < 32768); widened every step. */
T2 static void acc_q8_256(const eq_layer *L, const eq_act *a, int32_t *acc) {
    const size_t kp = (size_t)L->kp;
    const __m256i ones16 = _mm256_set1_epi16(1);
    int32_t i = 0;
    for (; i + 2 <= L->n; i += 2) {
        const int8_t *w = (const int8_t *)L->w + kp * i;
        __m256i A0 = _mm256_setzero_si256(), A1 = A0;
        for (size_t j = 0; j < kp; j += 32) {
            const __m256i xv = _mm256_load_si256((const __m256i *)(a->q + j));
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + j));
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + kp + j));
            A0 = _mm256_add_epi32(A0, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w0), _mm256_sign_epi8(xv, w0)), ones16));
            A1 = _mm256_add_epi32(A1, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w1), _mm256_sign_epi8(xv, w1)), ones16));
        }
        acc[i] = hsum256(A0);
        acc[i + 1] = hsum256(A1);
    }
    for (; i < L->n; i++) {
        const int8_t *w = (const int8_t *)L->w + kp * i;
        __m256i A0 = _mm256_setzero_si256();
        for (size_t j = 0; j < kp; j += 32) {
            const __m256i xv = _mm256_load_si256((const __m256i *)(a->q + j));
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + j));
            A0 = _mm256_add_epi32(A0, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w0), _mm256_sign_epi8(xv, w0)), ones16));
        }
        acc[i] = hsum256(A0);
    }
}

/* popcount with nibble lookups (vpshufb) on D = M & (sign_w ^ sign_x), tiled: a
 * 32-byte half of a span's plane is 8 rows' words. Byte counters take at most 31
 * spans (31 * 8 = 248) before they are widened into the rows' lanes with maddubs and
 * madd. */
T2 static INL __m256i popcnt8_256(__m256i v) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i lo = _mm256_set1_epi8(0x0f);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, lo)),
                           _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), lo)));
}

T2 static void acc_popcount_256(const eq_layer *L, const eq_act *a, int32_t *acc) {
    const int32_t spans = L->kp / 32, tiles = eq_tiled_rows(L->n) / EQ_ROW_TILE;
    const size_t tb = (size_t)spans * 2 * EQ_SPAN_BYTES;
    const uint32_t *xs = (const uint32_t *)a->planes;
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    for (int32_t t = 0; t < tiles; t++) {
        const uint8_t *w = L->w + tb * t;
        __m256i A0 = _mm256_setzero_si256(), A1 = A0;
        for (int32_t s0 = 0; s0 < spans; s0 += 31) {
            const int32_t end = s0 + 31 < spans ? s0 + 31 : spans;
            __m256i B0 = _mm256_setzero_si256(), B1 = B0;
            for (int32_t s = s0; s < end; s++) {
                const uint8_t *p = w + (size_t)2 * EQ_SPAN_BYTES * s;
                const __m256i xb = _mm256_set1_epi32((int32_t)xs[s]);
                B0 = _mm256_add_epi8(B0, popcnt8_256(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)(p + 64)),
                                                                      _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), xb))));
                B1 = _mm256_add_epi8(B1, popcnt8_256(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)(p + 96)),
                                                                      _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 32)), xb))));
            }
            A0 = _mm256_add_epi32(A0, _mm256_madd_epi16(_mm256_maddubs_epi16(B0, ones8), ones16));
            A1 = _mm256_add_epi32(A1, _mm256_madd_epi16(_mm256_maddubs_epi16(B1, ones8), ones16));
        }
        const __m256i m0 = _mm256_loadu_si256((const __m256i *)(L->rowsum + EQ_ROW_TILE * t));
        const __m256i m1 = _mm256_loadu_si256((const __m256i *)(L->rowsum + EQ_ROW_TILE * t + 8));
        _mm256_store_si256((__m256i *)(acc + EQ_ROW_TILE * t), _mm256_sub_epi32(m0, _mm256_slli_epi32(A0, 1)));
        _mm256_store_si256((__m256i *)(acc + EQ_ROW_TILE * t + 8), _mm256_sub_epi32(m1, _mm256_slli_epi32(A1, 1)));
    }
}

T2 static float absmax256(const float *x, int32_t k) {
    const __m256 signbit = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    int32_t j = 0;
    for (; j + 8 <= k; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(signbit, _mm256_loadu_ps(x + j)));
    float r[8];
    _mm256_storeu_ps(r, m);
    float amax = 0.0f;
    for (int t = 0; t < 8; t++) amax = r[t] > amax ? r[t] : amax;
    for (; j < k; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
    return amax;
}

T2 static void quant_i8_256(const float *x, int32_t k, eq_act *a) {
    float amax = absmax256(x, k);
    if (!(amax > 0.0f)) amax = 1.0f;
    const float sf = (float)EQ_ACT_QMAX / amax;
    const __m256 s = _mm256_set1_ps(sf);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i sum = _mm256_setzero_si256();
    int32_t j = 0;
    for (; j + 32 <= k; j += 32) {
        const __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j), s));
        const __m256i q1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 8), s));
        const __m256i q2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 16), s));
        const __m256i q3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 24), s));
        sum = _mm256_add_epi32(sum, _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3)));
        /* |q| <= 127 already (|x| * 127/max|x| rounds to at most 127): packs never saturate */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
        p = _mm256_permutevar8x32_epi32(p, perm);
        _mm256_storeu_si256((__m256i *)(a->q + j), p);
        _mm256_storeu_si256((__m256i *)(a->qu + j), _mm256_xor_si256(p, _mm256_set1_epi8((char)0x80)));
    }
    int32_t tail = 0;
    for (; j < k; j++) {
        float r = rintf(x[j] * sf);
        if (r > EQ_ACT_QMAX) r = EQ_ACT_QMAX;
        if (r < -EQ_ACT_QMAX) r = -EQ_ACT_QMAX;
        a->q[j] = (int8_t)r;
        a->qu[j] = (uint8_t)(a->q[j] ^ 0x80);
        tail += a->q[j];
    }
    for (; j < a->kp; j++) {
        a->q[j] = 0;
        a->qu[j] = 0x80;
    }
    a->qsum = hsum256(sum) + tail;
    a->scale = amax / (float)EQ_ACT_QMAX;
}

T2 static void quant_sign_256(const float *x, int32_t k, float tau, int32_t mode, eq_act *a) {
    const int32_t words = a->kp / 64;
    const __m256 signbit = _mm256_set1_ps(-0.0f), vt = _mm256_set1_ps(tau);
    __m256 tot = _mm256_setzero_ps(), high = tot;
    int32_t j = 0, nhigh = 0;
    memset(a->planes, 0, sizeof(uint64_t) * (size_t)words);
    for (; j + 8 <= k; j += 8) {
        const __m256 v = _mm256_loadu_ps(x + j);
        const __m256 hi = _mm256_cmp_ps(v, vt, _CMP_GT_OQ);
        tot = _mm256_add_ps(tot, _mm256_andnot_ps(signbit, v));
        high = _mm256_add_ps(high, _mm256_and_ps(hi, v));
        const unsigned hm = (unsigned)_mm256_movemask_ps(hi);
        nhigh += __builtin_popcount(hm);
        a->planes[j >> 6] |= (uint64_t)(~hm & 0xffu) << (j & 63);
    }
    float t8[8], h8[8], tsum = 0.0f, hsum = 0.0f;
    _mm256_storeu_ps(t8, tot);
    _mm256_storeu_ps(h8, high);
    for (int t = 0; t < 8; t++) {
        tsum += t8[t];
        hsum += h8[t];
    }
    for (; j < k; j++) {
        tsum += fabsf(x[j]);
        if (x[j] > tau) {
            hsum += x[j];
            nhigh++;
        } else {
            a->planes[j >> 6] |= 1ull << (j & 63);
        }
    }
    const float scale = mode == EQ_ACT_UNSIGNED ? (nhigh ? hsum / (float)nhigh : 0.0f) : tsum / (float)k;
    a->scale = scale > 0.0f ? scale : 1.0f;
}

T2 static void gemv_f16_256(const eq_layer *L, const float *x, float *y) {
    const size_t kp = (size_t)L->kp;
    const int32_t k = L->k, kv = k / 8 * 8;
    for (int32_t i = 0; i < L->n; i++) {
        const uint16_t *w = (const uint16_t *)L->w + kp * i;
        __m256 A0 = _mm256_setzero_ps(), A1 = A0;
        int32_t j = 0;
        for (; j + 16 <= kv; j += 16) {
            if (!(j & 127)) EQ_PREFETCH(w + 2 * kp + j); /* two rows ahead, every fourth line */
            A0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + j))), _mm256_loadu_ps(x + j), A0);
            A1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + j + 8))), _mm256_loadu_ps(x + j + 8), A1);
        }
        for (; j < kv; j += 8)
            A0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + j))), _mm256_loadu_ps(x + j), A0);
        float r[8], s = 0.0f;
        _mm256_storeu_ps(r, _mm256_add_ps(A0, A1));
        for (int t = 0; t < 8; t++) s += r[t];
        for (; j < k; j++) s += _cvtsh_ss(w[j]) * x[j];
        y[i] = s;
    }
}

T2 static void dequant_256(const eq_layer *L, const int32_t *acc, float act_scale, float *y) {
    const __m256 as = _mm256_set1_ps(act_scale);
    const __m256 s0 = _mm256_set1_ps(L->scale[0] * act_scale);
    int32_t i = 0;
    for (; i + 8 <= L->n; i += 8) {
        const __m256 m = L->scale_stride ? _mm256_mul_ps(_mm256_loadu_ps(L->scale + i), as) : s0;
        const __m256 b = L->bias ? _mm256_loadu_ps(L->bias + i) : _mm256_setzero_ps();
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(acc + i))), m, b));
    }
    for (; i < L->n; i++)
        y[i] = (float)acc[i] * (L->scale[L->scale_stride ? i : 0] * act_scale) + (L->bias ? L->bias[i] : 0.0f);
}

const eq_kernels eq_kernels_avx2 = {
    .name = "avx2",
    .quant_i8 = quant_i8_256,
    .quant_sign = quant_sign_256,
    .acc = {[EQ_FMT_Q1] = acc_q1_256,
            [EQ_FMT_Q2] = acc_q2_256,
            [EQ_FMT_Q4] = acc_q4_256,
            [EQ_FMT_Q8] = acc_q8_256,
            [EQ_FMT_TERNARY] = acc_q2_256,
            [EQ_FMT_F16] = NULL,
            [EQ_FMT_POPCOUNT] = acc_popcount_256},
    .gemv_f16 = gemv_f16_256,
    .dequant = dequant_256,
};

#endif
