/* One variant of the log-mel front end (eq_mel.h), written once over a vector of
 * MEL_VW floats (GCC vector extensions). Included by eq_mel.c once per instruction
 * set with MEL_VW (lanes), MEL_T (the functions' target attribute) and MEL_SUFFIX. */

#define MEL_CAT_(a, b) a##_##b
#define MEL_CAT(a, b) MEL_CAT_(a, b)
#define MF(name) MEL_CAT(name, MEL_SUFFIX)
#define VF MF(eq_melvf)
#define VI MF(eq_melvi)

typedef float VF __attribute__((vector_size(4 * MEL_VW)));
#if MEL_VW == 16
#define MEL_ZIP_LO {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23}
#define MEL_ZIP_HI {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31}
#elif MEL_VW == 8
#define MEL_ZIP_LO {0, 8, 1, 9, 2, 10, 3, 11}
#define MEL_ZIP_HI {4, 12, 5, 13, 6, 14, 7, 15}
#else
#define MEL_ZIP_LO {0, 4, 1, 5}
#define MEL_ZIP_HI {2, 6, 3, 7}
#endif
typedef int32_t VI __attribute__((vector_size(4 * MEL_VW)));

static inline MEL_T VF MF(ld)(const float *p) {
    VF v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline MEL_T void MF(st)(float *p, VF v) { memcpy(p, &v, sizeof v); }
static inline MEL_T VF MF(bc)(float s) { return s - (VF){0}; /* exact for every s: a broadcast */ }

/* natural log of x > 0 (normal): x = 2^e m, m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s),
 * s = (m - 1) / (m + 1), |s| < 0.172, as the odd series to s^11 (next term < 2e-11) */
static inline MEL_T VF MF(vlog)(VF x) {
    VI i;
    memcpy(&i, &x, sizeof i);
    VI e = ((i >> 23) & 0xff) - 127;
    VI mi = (i & 0x7fffff) | 0x3f800000;
    VF m;
    memcpy(&m, &mi, sizeof m);
    VI big = m > 1.41421356f; /* -1 where true */
    e -= big;
    VF half = m * 0.5f;
    VI hb, mb;
    memcpy(&hb, &half, sizeof hb);
    memcpy(&mb, &m, sizeof mb);
    mb = (mb & ~big) | (hb & big);
    memcpy(&m, &mb, sizeof m);
    VF s = (m - 1.0f) / (m + 1.0f), z = s * s;
    VF p = MF(bc)(1.0f / 11.0f);
    p = p * z + 1.0f / 9.0f;
    p = p * z + 1.0f / 7.0f;
    p = p * z + 1.0f / 5.0f;
    p = p * z + 1.0f / 3.0f;
    p = p * z + 1.0f;
    VF ef = __builtin_convertvector(e, VF);
    return ef * 0.693147182f + 2.0f * s * p;
}

/* in-place complex FFT of N2 points (a power of 2) in every lane, input in bit-reversed
 * order; tw0: the stages' twiddles (eq_mel_init), valid for any N2 up to the table's size */
static MEL_T void MF(fft)(float *zr, float *zi, int32_t N2, const float *tw0) {
    /* radix-2 decimation in time, one twiddle (broadcast) for all lanes; two stages per
     * pass over the lanes' data where two remain (h and 2h: four values at distance h) */
    int32_t h = 1, off = 0;
    for (; 4 * h <= N2; off += 6 * h, h <<= 2) {
        const float *t1 = tw0 + off, *t2 = tw0 + off + 2 * h; /* stage h, stage 2h */
        for (int32_t g = 0; g < N2; g += 4 * h)
            for (int32_t j = 0; j < h; j++) {
                const VF ar = MF(bc)(t1[2 * j]), ai = MF(bc)(t1[2 * j + 1]);
                const VF br = MF(bc)(t2[2 * j]), bi = MF(bc)(t2[2 * j + 1]);
                const VF cr = MF(bc)(t2[2 * (j + h)]), ci = MF(bc)(t2[2 * (j + h) + 1]);
                float *pr = zr + (size_t)(g + j) * MEL_VW, *pi = zi + (size_t)(g + j) * MEL_VW;
                const size_t s1 = (size_t)h * MEL_VW, s2 = 2 * s1, s3 = 3 * s1;
                const VF x0r = MF(ld)(pr), x0i = MF(ld)(pi), x1r = MF(ld)(pr + s1), x1i = MF(ld)(pi + s1);
                const VF x2r = MF(ld)(pr + s2), x2i = MF(ld)(pi + s2), x3r = MF(ld)(pr + s3), x3i = MF(ld)(pi + s3);
                /* stage h: (x0, x1) and (x2, x3) with twiddle a */
                const VF u1r = x1r * ar - x1i * ai, u1i = x1r * ai + x1i * ar;
                const VF u3r = x3r * ar - x3i * ai, u3i = x3r * ai + x3i * ar;
                const VF y0r = x0r + u1r, y0i = x0i + u1i, y1r = x0r - u1r, y1i = x0i - u1i;
                const VF y2r = x2r + u3r, y2i = x2i + u3i, y3r = x2r - u3r, y3i = x2i - u3i;
                /* stage 2h: (y0, y2) with twiddle b, (y1, y3) with twiddle c */
                const VF v2r = y2r * br - y2i * bi, v2i = y2r * bi + y2i * br;
                const VF v3r = y3r * cr - y3i * ci, v3i = y3r * ci + y3i * cr;
                MF(st)(pr, y0r + v2r), MF(st)(pi, y0i + v2i), MF(st)(pr + s2, y0r - v2r), MF(st)(pi + s2, y0i - v2i);
                MF(st)(pr + s1, y1r + v3r), MF(st)(pi + s1, y1i + v3i);
                MF(st)(pr + s3, y1r - v3r), MF(st)(pi + s3, y1i - v3i);
            }
    }
    for (; h < N2; off += 2 * h, h <<= 1) { /* one stage left */
        const float *tw = tw0 + off; /* this stage's h twiddles: cos, -sin of 2 pi j / 2h */
        for (int32_t g = 0; g < N2; g += 2 * h)
            for (int32_t j = 0; j < h; j++) {
                const VF wr = MF(bc)(tw[2 * j]), wi = MF(bc)(tw[2 * j + 1]);
                float *ar = zr + (size_t)(g + j) * MEL_VW, *ai = zi + (size_t)(g + j) * MEL_VW;
                float *br = ar + (size_t)h * MEL_VW, *bi = ai + (size_t)h * MEL_VW;
                const VF xr = MF(ld)(br), xi = MF(ld)(bi), yr = MF(ld)(ar), yi = MF(ld)(ai);
                const VF tr = xr * wr - xi * wi, ti = xr * wi + xi * wr;
                MF(st)(ar, yr + tr), MF(st)(ai, yi + ti);
                MF(st)(br, yr - tr), MF(st)(bi, yi - ti);
            }
    }
}

/* MEL_VW x MEL_VW floats: a[i] (row i) -> a[l] holding element i of every row l, by
 * log2(MEL_VW) rounds of interleaving row i with row i + MEL_VW / 2 */
static inline MEL_T void MF(transpose)(VF *a) {
    const VI lo = MEL_ZIP_LO, hi = MEL_ZIP_HI;
    VF b[MEL_VW];
    for (int32_t round = 1; round < MEL_VW; round <<= 1) {
        for (int32_t i = 0; i < MEL_VW / 2; i++) {
            b[2 * i] = __builtin_shuffle(a[i], a[i + MEL_VW / 2], lo);
            b[2 * i + 1] = __builtin_shuffle(a[i], a[i + MEL_VW / 2], hi);
        }
        memcpy(a, b, sizeof b);
    }
}

/* MEL_VW rows of samples (row l at src[l] + t, t a multiple of MEL_VW) into the lanes of
 * a complex FFT's input in bit-reversed order: z[n] = s[2n] + i s[2n + 1] for the MEL_VW
 * samples from t on, times the window w (NULL: none); brev >> shift is the reversal */
static inline MEL_T void MF(rows_to_lanes)(const float *const *src, int32_t t, const float *w, const int32_t *brev,
                                           int32_t shift, float *zr, float *zi) {
    VF a[MEL_VW];
    for (int32_t l = 0; l < MEL_VW; l++) a[l] = MF(ld)(src[l] + t);
    MF(transpose)(a);
    for (int32_t i = 0; i < MEL_VW; i += 2) {
        const size_t r = (size_t)(brev[(t + i) / 2] >> shift) * MEL_VW;
        MF(st)(zr + r, w ? a[i] * w[t + i] : a[i]), MF(st)(zi + r, w ? a[i + 1] * w[t + i + 1] : a[i + 1]);
    }
}

/* bin k (0 <= k <= N2) of the real FFT of 2 N2 samples from the complex FFT z of N2 points
 * of their even + i odd samples, times 2: X = (Z[k] + conj Z[N2-k]) + e^{-i pi k / N2}
 * (Z[k] - conj Z[N2-k]) / i; c, s: cos and sin of pi k / N2 */
static inline MEL_T void MF(real_bin)(const float *zr, const float *zi, int32_t N2, int32_t k, float c1, float s1,
                                      VF *xr, VF *xi) {
    const int32_t m = (N2 - k) & (N2 - 1), kk = k & (N2 - 1);
    const VF zrk = MF(ld)(zr + (size_t)kk * MEL_VW), zik = MF(ld)(zi + (size_t)kk * MEL_VW);
    const VF zrm = MF(ld)(zr + (size_t)m * MEL_VW), zim = MF(ld)(zi + (size_t)m * MEL_VW);
    const VF c = MF(bc)(c1), s = MF(bc)(s1);
    const VF fer = zrk + zrm, fei = zik - zim, for_ = zik + zim, foi = zrm - zrk;
    *xr = fer + for_ * c + foi * s, *xi = fei + foi * c - for_ * s;
}

/* up2: the even (ye) and odd (yo) samples of the 2x-upsampled signal, by overlap-save FFT
 * convolution with the two phases of the filter: blocks of EQ_MEL_UP_N inputs, one per
 * lane, give EQ_MEL_UP_N - 2D outputs each. A real FFT of the block (a complex FFT of half
 * its size), the products with both phases' spectra (eq_mel_init), and one complex inverse
 * FFT for both phases at once: ye + i yo, computed as the forward FFT with real and
 * imaginary parts swapped on the way in and out. */
static MEL_T void MF(upsample)(const eq_mel *M) {
    const int32_t D = M->taps, NB = EQ_MEL_UP_N, NU = NB / 2, L = NB - 2 * D;
    float *ur = M->ur, *ui = M->ui, *vr = M->vr, *vi = M->vi;
    for (int32_t b0 = 0; b0 < M->nblk; b0 += MEL_VW) {
        const float *src[MEL_VW];
        for (int32_t l = 0; l < MEL_VW; l++) {
            const int32_t b = b0 + l < M->nblk ? b0 + l : M->nblk - 1;
            src[l] = M->xp + M->lpad + b * L - D;
        }
        for (int32_t m0 = 0; m0 < NB; m0 += MEL_VW) /* the 9-bit reversal table shifted: 8 bits */
            MF(rows_to_lanes)(src, m0, NULL, M->ubrev, 1, ur, ui);
        MF(fft)(ur, ui, NU, M->tw);
        for (int32_t k = 0; k <= NU; k++) {
            VF xr, xi; /* 2 X[k] */
            MF(real_bin)(ur, ui, NU, k, M->uc[k], M->us[k], &xr, &xi);
            const VF ger = MF(bc)(M->gs[4 * k]), gei = MF(bc)(M->gs[4 * k + 1]);
            const VF gor = MF(bc)(M->gs[4 * k + 2]), goi = MF(bc)(M->gs[4 * k + 3]);
            const VF yer = xr * ger - xi * gei, yei = xr * gei + xi * ger;
            const VF yor = xr * gor - xi * goi, yoi = xr * goi + xi * gor;
            /* Z[k] = Ye[k] + i Yo[k], and Z[NB - k] from the conjugates; stored swapped */
            const size_t r = (size_t)M->ubrev[k] * MEL_VW;
            MF(st)(vr + r, yei + yor), MF(st)(vi + r, yer - yoi);
            if (k > 0 && k < NU) {
                const size_t r2 = (size_t)M->ubrev[NB - k] * MEL_VW;
                MF(st)(vr + r2, yor - yei), MF(st)(vi + r2, yer + yoi);
            }
        }
        MF(fft)(vr, vi, NB, M->tw);
        for (int32_t i0 = 0; i0 < L; i0 += MEL_VW) { /* ye = vi, yo = vr at D + i, back to rows */
            VF a[MEL_VW], c[MEL_VW];
            for (int32_t t = 0; t < MEL_VW; t++) {
                a[t] = MF(ld)(vi + (size_t)(D + i0 + t) * MEL_VW);
                c[t] = MF(ld)(vr + (size_t)(D + i0 + t) * MEL_VW);
            }
            MF(transpose)(a);
            MF(transpose)(c);
            for (int32_t l = 0; l < MEL_VW && b0 + l < M->nblk; l++) {
                MF(st)(M->ye + (size_t)(b0 + l) * L + i0, a[l]);
                MF(st)(M->yo + (size_t)(b0 + l) * L + i0, c[l]);
            }
        }
    }
}

/* up2: the pre-emphasis y[t] = x32[t + 1] - p x32[t] with x32[2j] = ye[j], x32[2j + 1] = yo[j],
 * the two phases interleaved by shuffles, then the reflection padding */
static MEL_T void MF(interleave)(const eq_mel *M) {
    const int32_t pad = M->n_fft / 2, n = M->n_in;
    const float *e = M->ye, *o = M->yo;
    float *y = M->yp + pad;
    const VF p = MF(bc)(M->preemph);
    const VI lo = MEL_ZIP_LO, hi = MEL_ZIP_HI;
    int32_t j = 0;
    for (; j + MEL_VW < n; j += MEL_VW) { /* e[j + 1 ...] stays within the phase */
        const VF ev = MF(ld)(e + j), ov = MF(ld)(o + j), en = MF(ld)(e + j + 1);
        const VF a = ov - p * ev, b = en - p * ov; /* y[2j], y[2j + 1] */
        MF(st)(y + 2 * j, __builtin_shuffle(a, b, lo)), MF(st)(y + 2 * j + MEL_VW, __builtin_shuffle(a, b, hi));
    }
    for (; j < n - 1; j++) y[2 * j] = o[j] - M->preemph * e[j], y[2 * j + 1] = e[j + 1] - M->preemph * o[j];
    y[2 * n - 2] = o[n - 1] - M->preemph * e[n - 1];
    eq_mel_reflect(M);
}

/* one batch of frames f0 .. f0 + MEL_VW - 1 (lanes past the last frame repeat it) */
static MEL_T void MF(batch)(const eq_mel *M, int32_t f0, float *out) {
    const int32_t N2 = M->n_fft / 2, W = M->win;
    float *zr = M->zr, *zi = M->zi;
    const float *src[MEL_VW]; /* each lane's frame: the win samples under its window */
    for (int32_t l = 0; l < MEL_VW; l++) {
        const int32_t f = f0 + l < M->frames ? f0 + l : M->frames - 1;
        src[l] = M->yp + f * M->hop + (M->n_fft - W) / 2;
    }
    /* frames into the lanes, in bit-reversed order, MEL_VW samples of each at a time
     * transposed in registers, so that each vector holds one sample of every frame */
    int32_t t = 0;
    for (; t + MEL_VW <= W; t += MEL_VW) MF(rows_to_lanes)(src, t, M->window, M->brev, 0, zr, zi);
    for (int32_t n = t / 2; n < N2; n++) { /* the rest of the window, then zeros */
        float *r = zr + (size_t)M->brev[n] * MEL_VW, *q = zi + (size_t)M->brev[n] * MEL_VW;
        const int32_t u = 2 * n;
        const float w0 = u < W ? M->window[u] : 0.0f, w1 = u + 1 < W ? M->window[u + 1] : 0.0f;
        for (int32_t l = 0; l < MEL_VW; l++)
            r[l] = u < W ? src[l][u] * w0 : 0.0f, q[l] = u + 1 < W ? src[l][u + 1] * w1 : 0.0f;
    }
    MF(fft)(zr, zi, N2, M->tw);
    for (int32_t k = 0; k < M->n_bins; k++) { /* the real FFT's bins, their power */
        VF xr, xi; /* 2 X[k] */
        MF(real_bin)(zr, zi, N2, k, M->rc[k], M->rs[k], &xr, &xi);
        MF(st)(M->pw + (size_t)k * MEL_VW, (xr * xr + xi * xi) * 0.25f);
    }
    /* the filters, the log */
    const float *wt = M->weights;
    const int32_t valid = M->frames - f0 < MEL_VW ? M->frames - f0 : MEL_VW;
    for (int32_t i = 0; i < M->n_mels; i++) {
        VF acc = {0};
        const float *p = M->pw + (size_t)M->start[i] * MEL_VW;
        for (int32_t j = 0; j < M->length[i]; j++) acc += MF(bc)(wt[j]) * MF(ld)(p + (size_t)j * MEL_VW);
        wt += M->length[i];
        const VF v = (MF(vlog)(acc + M->log_offset) + M->shift) * M->inv_scale;
        float *o = out + (size_t)i * M->frames + f0;
        if (valid == MEL_VW)
            MF(st)(o, v);
        else
            for (int32_t l = 0; l < valid; l++) o[l] = v[l];
    }
}

/* non-finite samples (exponent all ones) read as 0 */
static inline MEL_T VF MF(finite)(VF v) {
    VI b;
    memcpy(&b, &v, sizeof b);
    b &= ~((b & 0x7f800000) == 0x7f800000);
    memcpy(&v, &b, sizeof v);
    return v;
}

/* x into the zero-padded input (up2), or the pre-emphasis into the padded signal */
static MEL_T void MF(signal)(const eq_mel *M, const float *x) {
    int32_t t = 0;
    if (M->up2) {
        float *xp = M->xp + M->lpad;
        for (; t + MEL_VW <= M->n_in; t += MEL_VW) MF(st)(xp + t, MF(finite)(MF(ld)(x + t)));
        for (; t < M->n_in; t++) xp[t] = eq_mel_finite(x[t]);
        return;
    }
    float *y = M->yp + M->n_fft / 2;
    const VF p = MF(bc)(M->preemph);
    for (; t + MEL_VW <= M->len; t += MEL_VW) MF(st)(y + t, MF(finite)(MF(ld)(x + t + 1)) - p * MF(finite)(MF(ld)(x + t)));
    for (; t < M->len; t++) y[t] = eq_mel_finite(x[t + 1]) - M->preemph * eq_mel_finite(x[t]);
    eq_mel_reflect(M);
}

static MEL_T void MF(run)(const eq_mel *M, const float *x, float *out) {
    MF(signal)(M, x);
    if (M->up2) {
        MF(upsample)(M);
        MF(interleave)(M);
    }
    for (int32_t f0 = 0; f0 < M->frames; f0 += MEL_VW) MF(batch)(M, f0, out);
}

const eq_mel_kernels MF(eq_mel_kernels) = {.name = MEL_STR(MEL_SUFFIX), .lanes = MEL_VW, .run = MF(run)};

#undef VF
#undef VI
#undef MEL_ZIP_LO
#undef MEL_ZIP_HI
#undef MF
#undef MEL_CAT
#undef MEL_CAT_
