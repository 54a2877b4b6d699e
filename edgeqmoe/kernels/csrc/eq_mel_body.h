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

/* up2: the even and odd samples of the 2x-upsampled signal from the symmetric phases of
 * its filter, each pair of inputs the same tap meets added first (half the products):
 * ye[j] = he[0] x[j] + sum_{d=1..D} he[d] (x[j-d] + x[j+d]),
 * yo[j] = sum_{d=0..D-1} ho[d] (x[j-d] + x[j+d+1]); four vectors of outputs at a time */
static MEL_T void MF(fir)(const eq_mel *M) {
    const float *he = M->ca, *ho = M->cb;
    const int32_t D = M->taps;
    for (int32_t j = 0; j < M->n_in; j += 4 * MEL_VW) {
        const float *x = M->xp + M->lpad + j;
        VF lo0 = MF(ld)(x), lo1 = MF(ld)(x + MEL_VW), lo2 = MF(ld)(x + 2 * MEL_VW), lo3 = MF(ld)(x + 3 * MEL_VW);
        const VF c0 = MF(bc)(he[0]);
        VF e0 = c0 * lo0, e1 = c0 * lo1, e2 = c0 * lo2, e3 = c0 * lo3, o0 = {0}, o1 = {0}, o2 = {0}, o3 = {0};
        for (int32_t d = 0; d < D; d++) {
            const float *hi = x + d + 1, *nx = x - d - 1;
            const VF h0 = MF(ld)(hi), h1 = MF(ld)(hi + MEL_VW), h2 = MF(ld)(hi + 2 * MEL_VW), h3 = MF(ld)(hi + 3 * MEL_VW);
            const VF b = MF(bc)(ho[d]), a = MF(bc)(he[d + 1]);
            o0 += b * (lo0 + h0), o1 += b * (lo1 + h1), o2 += b * (lo2 + h2), o3 += b * (lo3 + h3);
            lo0 = MF(ld)(nx), lo1 = MF(ld)(nx + MEL_VW), lo2 = MF(ld)(nx + 2 * MEL_VW), lo3 = MF(ld)(nx + 3 * MEL_VW);
            e0 += a * (lo0 + h0), e1 += a * (lo1 + h1), e2 += a * (lo2 + h2), e3 += a * (lo3 + h3);
        }
        MF(st)(M->ye + j, e0), MF(st)(M->ye + j + MEL_VW, e1), MF(st)(M->ye + j + 2 * MEL_VW, e2);
        MF(st)(M->ye + j + 3 * MEL_VW, e3);
        MF(st)(M->yo + j, o0), MF(st)(M->yo + j + MEL_VW, o1), MF(st)(M->yo + j + 2 * MEL_VW, o2);
        MF(st)(M->yo + j + 3 * MEL_VW, o3);
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
    int32_t base[MEL_VW];
    for (int32_t l = 0; l < MEL_VW; l++) {
        const int32_t f = f0 + l < M->frames ? f0 + l : M->frames - 1;
        base[l] = f * M->hop + (M->n_fft - W) / 2;
    }
    /* frames into the lanes, in bit-reversed order: z[n] = s[2n] + i s[2n + 1]. MEL_VW
     * samples of each of the MEL_VW frames, transposed in registers (log2(MEL_VW) rounds of
     * interleaving row i with row i + MEL_VW / 2), so that each vector holds one sample of
     * every frame */
    const VI lo = MEL_ZIP_LO, hi = MEL_ZIP_HI;
    int32_t t = 0;
    for (; t + MEL_VW <= W; t += MEL_VW) {
        VF a[MEL_VW], b[MEL_VW];
        for (int32_t l = 0; l < MEL_VW; l++) a[l] = MF(ld)(M->yp + base[l] + t);
        for (int32_t round = 1; round < MEL_VW; round <<= 1) {
            for (int32_t i = 0; i < MEL_VW / 2; i++) {
                b[2 * i] = __builtin_shuffle(a[i], a[i + MEL_VW / 2], lo);
                b[2 * i + 1] = __builtin_shuffle(a[i], a[i + MEL_VW / 2], hi);
            }
            memcpy(a, b, sizeof a);
        }
        for (int32_t i = 0; i < MEL_VW; i += 2) {
            const int32_t r = M->brev[(t + i) / 2];
            MF(st)(zr + (size_t)r * MEL_VW, a[i] * M->window[t + i]);
            MF(st)(zi + (size_t)r * MEL_VW, a[i + 1] * M->window[t + i + 1]);
        }
    }
    for (int32_t n = t / 2; n < N2; n++) { /* the rest of the window, then zeros */
        float *r = zr + (size_t)M->brev[n] * MEL_VW, *q = zi + (size_t)M->brev[n] * MEL_VW;
        const int32_t u = 2 * n;
        const float w0 = u < W ? M->window[u] : 0.0f, w1 = u + 1 < W ? M->window[u + 1] : 0.0f;
        for (int32_t l = 0; l < MEL_VW; l++) {
            const float *y = M->yp + base[l] + u;
            r[l] = u < W ? y[0] * w0 : 0.0f, q[l] = u + 1 < W ? y[1] * w1 : 0.0f;
        }
    }
    /* radix-2 decimation in time, one twiddle (broadcast) for all lanes; two stages per
     * pass over the lanes' data where two remain (h and 2h: four values at distance h) */
    int32_t h = 1, off = 0;
    for (; 4 * h <= N2; off += 6 * h, h <<= 2) {
        const float *t1 = M->tw + off, *t2 = M->tw + off + 2 * h; /* stage h, stage 2h */
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
        const float *tw = M->tw + off; /* this stage's h twiddles: cos, -sin of 2 pi j / 2h */
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
    /* the real FFT's bins from the complex one, then the power */
    for (int32_t k = 0; k < M->n_bins; k++) {
        const int32_t m = (N2 - k) & (N2 - 1), kk = k & (N2 - 1);
        const VF zrk = MF(ld)(zr + (size_t)kk * MEL_VW), zik = MF(ld)(zi + (size_t)kk * MEL_VW);
        const VF zrm = MF(ld)(zr + (size_t)m * MEL_VW), zim = MF(ld)(zi + (size_t)m * MEL_VW);
        const VF c = MF(bc)(M->rc[k]), s = MF(bc)(M->rs[k]);
        const VF fer = zrk + zrm, fei = zik - zim, for_ = zik + zim, foi = zrm - zrk;
        const VF xr = fer + for_ * c + foi * s, xi = fei + foi * c - for_ * s;
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
        MF(fir)(M);
        MF(interleave)(M);
    }
    for (int32_t f0 = 0; f0 < M->frames; f0 += MEL_VW) MF(batch)(M, f0, out);
}

static const eq_mel_kernels MF(eq_mel_kernels) = {MEL_STR(MEL_SUFFIX), MEL_VW, MF(run)};

#undef VF
#undef VI
#undef MEL_ZIP_LO
#undef MEL_ZIP_HI
#undef MF
#undef MEL_CAT
#undef MEL_CAT_
