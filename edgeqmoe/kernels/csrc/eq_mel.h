/* The log-mel front end in C: from a window of 16 kHz (or 32 kHz) samples to the
 * log-mel that mn04 reads, in one pass with buffers allocated once per window length.
 *
 *   16 kHz input: 2x upsampling by one symmetric filter of 4D + 1 taps at 32 kHz (its even
 *   and odd phases applied by overlap-save FFT convolution, eq_mel_body.h) gives the
 *   32 kHz signal, then the pre-emphasis y[t] = x32[t+1] - p x32[t]; 32 kHz input: the
 *   pre-emphasis.
 *   Then reflection padding by n_fft/2, frames of win samples every hop times the
 *   window (the rest of each n_fft frame is zero; a circular shift does not change
 *   the power), a real FFT of n_fft points as a complex FFT of n_fft/2 points, the
 *   power, each triangular filter over its non-zero bins, and (log(sum + offset) +
 *   shift) * inv_scale.
 *
 * The FFT works on a batch of frames at a time, one frame per vector lane, so the
 * same plain radix-2 code is a SIMD FFT at any vector width (GCC vector extensions,
 * compiled once per instruction set in eq_mel.c). Not bit-exact between variants
 * (float sums in other orders); each is checked against a float64 reference. */
#ifndef EQ_MEL_H
#define EQ_MEL_H

#include <stddef.h>
#include <stdint.h>

struct eq_mel_kernels;

#define EQ_MEL_UP_N 512 /* inputs per block of the upsampler's FFT convolution */

typedef struct eq_mel {
    const struct eq_mel_kernels *K;
    int32_t n_in, up2;          /* samples per window; 1: the input is 16 kHz, upsampled 2x */
    int32_t taps, lpad;         /* up2: D (he: D + 1 taps, ho: D); zeros before x[0] in xp (>= D) */
    int32_t n_fft, win, hop, n_mels, frames, n_bins, len;  /* len: pre-emphasised samples */
    float preemph, log_offset, shift, inv_scale;
    /* all in one 64-byte aligned arena */
    float *window;              /* win */
    int32_t *start, *length;    /* each filter's first bin and count */
    float *weights;             /* all filters' non-zero weights */
    float *xp, *ye, *yo, *yp;   /* zero-padded input, the two phases, the padded signal */
    float *zr, *zi, *pw;        /* FFT work (n_fft/2 x lanes each), power (n_bins x lanes) */
    float *tw, *rc, *rs;        /* FFT twiddles (per stage: cos, sin pairs), real-FFT post twiddles */
    int32_t *brev;              /* bit reversal of n_fft/2 */
    /* up2: blocks, FFT work (EQ_MEL_UP_N / 2 and EQ_MEL_UP_N x lanes), the real FFT's post
     * twiddles, both phases' spectra (re, im of the even, re, im of the odd phase, per bin,
     * scaled for the inverse), bit reversal of EQ_MEL_UP_N */
    int32_t nblk;
    float *ur, *ui, *vr, *vi, *uc, *us, *gs;
    int32_t *ubrev;
    void *arena;
} eq_mel;

typedef struct eq_mel_kernels {
    const char *name;
    int32_t lanes;              /* frames per FFT batch */
    void (*run)(const eq_mel *M, const float *x, float *out);
} eq_mel_kernels;

/* the variants (eq_mel.c); which one runs is the kernel variant's choice (eq_variant_find) */
extern const eq_mel_kernels eq_mel_kernels_generic;
#if defined(__x86_64__) || defined(_M_X64)
extern const eq_mel_kernels eq_mel_kernels_avx2;
extern const eq_mel_kernels eq_mel_kernels_avx512;
#endif

/* returns 0, -1 (bad sizes), -2 (no memory). Arrays are copied; up2: ca holds the even
 * phase's half he[0..D] (taps = D), cb the odd phase's ho[0..D-1] (frontend.py,
 * upsampler_taps), read only here, into the phases' spectra; D a multiple of 8,
 * 2D < EQ_MEL_UP_N. */
int eq_mel_init(eq_mel *M, const eq_mel_kernels *K, int32_t n_in, int32_t up2, int32_t taps,
                const float *ca, const float *cb, float preemph, int32_t n_fft, int32_t win, int32_t hop,
                const float *window, int32_t n_mels, const int32_t *start, const int32_t *length,
                const float *weights, float log_offset, float shift, float inv_scale);
void eq_mel_free(eq_mel *M);
/* x: n_in floats (non-finite samples are read as 0); out: n_mels x frames */
void eq_mel_run(const eq_mel *M, const float *x, float *out);

#endif
