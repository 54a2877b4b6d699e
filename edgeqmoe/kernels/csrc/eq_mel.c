/* The log-mel front end (eq_mel.h): buffers, the scalar steps every variant shares, and
 * the variants: eq_mel_body.h compiled for AVX-512 (16 frames per FFT batch), AVX2 (8)
 * and the baseline vector unit (4: SSE2 on x86-64, NEON on aarch64). Contracting a * b + c
 * into one FMA is allowed here (the front end is checked against a float64 reference,
 * not bit for bit). */
#pragma GCC optimize("fp-contract=fast")
#include "eq_mel.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MEL_STR_(s) #s
#define MEL_STR(s) MEL_STR_(s)
#define MEL_MAX_LANES 16

static inline int32_t up64(int32_t n) { return (n + 63) & ~63; }

static inline float eq_mel_finite(float v) {
    uint32_t b;
    memcpy(&b, &v, 4);
    return (b & 0x7f800000u) == 0x7f800000u ? 0.0f : v;
}

static inline int32_t reflect(int32_t t, int32_t len) { return t < 0 ? -t : t >= len ? 2 * (len - 1) - t : t; }

/* the reflection padding around the signal already in place in yp */
static void eq_mel_reflect(const eq_mel *M) {
    const int32_t pad = M->n_fft / 2, L = M->len;
    const float *y = M->yp + pad;
    for (int32_t u = 0; u < pad; u++) M->yp[u] = y[reflect(u - pad, L)];
    for (int32_t u = pad + L; u < L + 2 * pad; u++) M->yp[u] = y[reflect(u - pad, L)];
}

#if defined(__x86_64__) || defined(_M_X64)
#define MEL_VW 16
#define MEL_T __attribute__((target("avx2,fma,avx512f")))
#define MEL_SUFFIX avx512
#include "eq_mel_body.h"
#undef MEL_VW
#undef MEL_T
#undef MEL_SUFFIX
#define MEL_VW 8
#define MEL_T __attribute__((target("avx2,fma")))
#define MEL_SUFFIX avx2
#include "eq_mel_body.h"
#undef MEL_VW
#undef MEL_T
#undef MEL_SUFFIX
#endif
#define MEL_VW 4
#define MEL_T
#define MEL_SUFFIX generic
#include "eq_mel_body.h"
#undef MEL_VW
#undef MEL_T
#undef MEL_SUFFIX

static void bit_reversal(int32_t *out, int32_t n) {
    int32_t bits = 0;
    while ((1 << bits) < n) bits++;
    for (int32_t i = 0; i < n; i++) {
        int32_t r = 0;
        for (int32_t b = 0; b < bits; b++) r |= ((i >> b) & 1) << (bits - 1 - b);
        out[i] = r;
    }
}

void eq_mel_free(eq_mel *M) {
    free(M->arena);
    M->arena = NULL;
}

int eq_mel_init(eq_mel *M, const eq_mel_kernels *K, int32_t n_in, int32_t up2, int32_t taps,
                const float *ca, const float *cb, float preemph, int32_t n_fft, int32_t win, int32_t hop,
                const float *window, int32_t n_mels, const int32_t *start, const int32_t *length,
                const float *weights, float log_offset, float shift, float inv_scale) {
    memset(M, 0, sizeof *M);
    if (n_fft < 4 || n_fft > 16384 || (n_fft & (n_fft - 1)) || win < 2 || win > n_fft || hop < 1 || n_mels < 1 ||
        n_in < 2 || n_in > (1 << 24) || (up2 && (taps < 8 || taps % 8 || 2 * taps >= EQ_MEL_UP_N - 16)))
        return -1;
    const int32_t N2 = n_fft / 2, len = up2 ? 2 * n_in - 1 : n_in - 1;
    if (len <= N2) return -1; /* reflection padding needs more samples than n_fft / 2 */
    int32_t n_bins = 0, total = 0;
    for (int32_t i = 0; i < n_mels; i++) {
        if (start[i] < 0 || length[i] < 0 || start[i] + length[i] > N2 + 1) return -1;
        if (start[i] + length[i] > n_bins) n_bins = start[i] + length[i];
        total += length[i];
    }
    if (n_bins < 1) n_bins = 1;
    M->K = K, M->n_in = n_in, M->up2 = up2, M->taps = up2 ? taps : 0, M->lpad = (M->taps + 15) & ~15;
    M->n_fft = n_fft, M->win = win, M->hop = hop, M->n_mels = n_mels, M->n_bins = n_bins, M->len = len;
    M->frames = 1 + len / hop;
    M->preemph = preemph, M->log_offset = log_offset, M->shift = shift, M->inv_scale = inv_scale;
    const int32_t UL = EQ_MEL_UP_N - 2 * M->taps, TWN = N2 > EQ_MEL_UP_N ? N2 : EQ_MEL_UP_N;
    M->nblk = up2 ? (n_in + UL - 1) / UL : 0;
    const int32_t ny = up2 ? M->nblk * UL + 64 : up64(n_in), nx = up2 ? M->lpad + M->nblk * UL + EQ_MEL_UP_N + 64 : 0;
    const int32_t ub = up2 ? EQ_MEL_UP_N : 0;
    /* float counts of every array, in arena order, each rounded up to 64 bytes */
    const int32_t sizes[] = {win, n_mels, n_mels, total, nx, ny, ny,
                             len + n_fft, N2 * MEL_MAX_LANES, N2 * MEL_MAX_LANES, n_bins * MEL_MAX_LANES,
                             2 * TWN, n_bins, n_bins, N2,
                             ub / 2 * MEL_MAX_LANES, ub / 2 * MEL_MAX_LANES, ub * MEL_MAX_LANES, ub * MEL_MAX_LANES,
                             ub / 2 + 1, ub / 2 + 1, 4 * (ub / 2 + 1), ub};
    size_t bytes = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) bytes += (size_t)(up64(sizes[i] + 16)) * 4;
    if (posix_memalign(&M->arena, 64, bytes)) {
        M->arena = NULL;
        return -2;
    }
    memset(M->arena, 0, bytes);
    float *p = M->arena;
    void **slots[] = {(void **)&M->window, (void **)&M->start, (void **)&M->length,
                      (void **)&M->weights, (void **)&M->xp, (void **)&M->ye, (void **)&M->yo, (void **)&M->yp,
                      (void **)&M->zr, (void **)&M->zi, (void **)&M->pw, (void **)&M->tw, (void **)&M->rc,
                      (void **)&M->rs, (void **)&M->brev, (void **)&M->ur, (void **)&M->ui, (void **)&M->vr,
                      (void **)&M->vi, (void **)&M->uc, (void **)&M->us, (void **)&M->gs, (void **)&M->ubrev};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        *slots[i] = p;
        p += up64(sizes[i] + 16);
    }
    memcpy(M->window, window, sizeof(float) * (size_t)win);
    memcpy(M->start, start, sizeof(int32_t) * (size_t)n_mels);
    memcpy(M->length, length, sizeof(int32_t) * (size_t)n_mels);
    memcpy(M->weights, weights, sizeof(float) * (size_t)total);
    bit_reversal(M->brev, N2);
    for (int32_t h = 1, off = 0; h < TWN; off += 2 * h, h <<= 1)
        for (int32_t j = 0; j < h; j++) {
            const double a = 3.14159265358979323846 * j / h;
            M->tw[off + 2 * j] = (float)cos(a), M->tw[off + 2 * j + 1] = (float)-sin(a);
        }
    for (int32_t k = 0; k < n_bins; k++) {
        const double a = 2.0 * 3.14159265358979323846 * k / n_fft;
        M->rc[k] = (float)cos(a), M->rs[k] = (float)sin(a);
    }
    if (up2) { /* the upsampler's tables; the spectra of both phases as circular filters */
        const int32_t NB = EQ_MEL_UP_N, D = M->taps;
        bit_reversal(M->ubrev, NB);
        const double scale = 0.5 / NB; /* the real FFT's split leaves 2 X[k]; the inverse's 1 / NB */
        for (int32_t q = 0; q <= NB / 2; q++) {
            const double th = 2.0 * 3.14159265358979323846 * q / NB;
            M->uc[q] = (float)cos(th), M->us[q] = (float)sin(th);
            double er = ca[0], orr = 0.0, oi = 0.0;
            for (int32_t k = 1; k <= D; k++) er += 2.0 * ca[k] * cos(th * k);
            for (int32_t k = 0; k < D; k++) /* taps at -k (x[j - k]) and k + 1 (x[j + k + 1]) */
                orr += cb[k] * (cos(th * k) + cos(th * (k + 1))), oi += cb[k] * (sin(th * (k + 1)) - sin(th * k));
            M->gs[4 * q] = (float)(er * scale), M->gs[4 * q + 1] = 0.0f;
            M->gs[4 * q + 2] = (float)(orr * scale), M->gs[4 * q + 3] = (float)(oi * scale);
        }
    }
    return 0;
}

void eq_mel_run(const eq_mel *M, const float *x, float *out) { M->K->run(M, x, out); }
