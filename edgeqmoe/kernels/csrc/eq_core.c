/* The one variant selector (from CPU features, for heads, the integer embedder and the
 * front end alike), scratch buffers, and the layer epilogue (dequantization, bias,
 * LayerNorm, ReLU) shared by every variant. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eq_cnn.h"
#include "eq_kernels.h"
#include "eq_mel.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

static char features[256];

#if defined(__x86_64__) || defined(_M_X64)
static int has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("popcnt");
}
static int has_avx512(void) {
    __builtin_cpu_init();
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
           __builtin_cpu_supports("avx512vpopcntdq");
}
static int has_avx512vbmi(void) { return has_avx512() && __builtin_cpu_supports("avx512vbmi"); }
#endif
#if defined(__aarch64__)
static int has_dotprod(void) {
#if defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
    return 0;
#endif
}
#endif
static int always(void) { return 1; }

const char *eq_cpu_features(void) {
    features[0] = 0;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    static const char *names[] = {"sse4.2", "popcnt", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                                  "avx512vnni", "avx512vpopcntdq", "avx512vbmi"};
    int cpu[] = {__builtin_cpu_supports("sse4.2"), __builtin_cpu_supports("popcnt"),
                 __builtin_cpu_supports("avx2"), __builtin_cpu_supports("fma"),
                 __builtin_cpu_supports("avx512f"), __builtin_cpu_supports("avx512bw"),
                 __builtin_cpu_supports("avx512vl"), __builtin_cpu_supports("avx512vnni"),
                 __builtin_cpu_supports("avx512vpopcntdq"), __builtin_cpu_supports("avx512vbmi")};
    for (size_t i = 0; i < sizeof cpu / sizeof cpu[0]; i++)
        if (cpu[i]) {
            strcat(features, names[i]);
            strcat(features, " ");
        }
#elif defined(__aarch64__)
    strcat(features, "neon ");
#if defined(__linux__)
    if (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) strcat(features, "dotprod ");
#endif
#endif
    size_t n = strlen(features);
    if (n) features[n - 1] = 0;
    return features;
}

/* best first; each row is available where its test says so */
static const struct {
    eq_variant v;
    int (*runs)(void);
} VARIANTS[] = {
#if defined(__x86_64__) || defined(_M_X64)
    {{.name = "avx512vbmi", .head = &eq_kernels_avx512vbmi, .cnn = &eq_cnn_avx512, .mel = &eq_mel_kernels_avx512},
     has_avx512vbmi},
    {{.name = "avx512", .head = &eq_kernels_avx512, .cnn = &eq_cnn_avx512, .mel = &eq_mel_kernels_avx512},
     has_avx512},
    {{.name = "avx2", .head = &eq_kernels_avx2, .cnn = &eq_cnn_avx2, .mel = &eq_mel_kernels_avx2}, has_avx2},
#elif defined(__aarch64__)
    {{.name = "dotprod", .head = &eq_kernels_dotprod, .cnn = &eq_cnn_dotprod, .mel = &eq_mel_kernels_generic},
     has_dotprod},
    {{.name = "neon", .head = &eq_kernels_neon, .cnn = &eq_cnn_neon, .mel = &eq_mel_kernels_generic}, always},
#endif
    {{.name = "generic", .head = &eq_kernels_generic, .cnn = &eq_cnn_generic, .mel = &eq_mel_kernels_generic},
     always},
};

int eq_variants(const eq_variant **out, int max) {
    int n = 0;
    for (size_t i = 0; i < sizeof VARIANTS / sizeof VARIANTS[0] && n < max; i++)
        if (VARIANTS[i].runs()) out[n++] = &VARIANTS[i].v;
    return n;
}

const eq_variant *eq_variant_find(const char *name) {
    for (size_t i = 0; i < sizeof VARIANTS / sizeof VARIANTS[0]; i++)
        if (name && !strcmp(VARIANTS[i].v.name, name)) return VARIANTS[i].runs() ? &VARIANTS[i].v : NULL;
    return NULL;
}

int eq_scratch_init(eq_scratch *s, int32_t kp_max, int32_t n_max) {
    memset(s, 0, sizeof *s);
    kp_max = eq_padded_k(kp_max);
    if (n_max < 1) n_max = 1;
    /* q (kp) + qu (kp) + planes (kp/4) + acc (4 n, n rounded up to a tile) + lut (8 kp)
     * bytes, each 64-aligned */
    size_t kq = (size_t)kp_max, kpl = (size_t)kp_max / 4, nacc = ((size_t)eq_tiled_rows(n_max) * 4 + 63) / 64 * 64;
    size_t total = kq * 2 + (kpl + 63) / 64 * 64 + nacc + 8 * kq;
    void *mem = NULL;
    if (posix_memalign(&mem, 64, total)) return -1;
    memset(mem, 0, total);
    uint8_t *p = mem;
    s->mem = mem;
    s->kp_max = kp_max;
    s->act.q = (int8_t *)p;
    s->act.qu = p + kq;
    s->act.planes = (uint64_t *)(p + 2 * kq);
    s->acc = (int32_t *)(p + 2 * kq + (kpl + 63) / 64 * 64);
    s->act.lut = (int8_t *)(p + 2 * kq + (kpl + 63) / 64 * 64 + nacc);
    return 0;
}

void eq_scratch_free(eq_scratch *s) {
    free(s->mem);
    s->mem = NULL;
}

void eq_layer_rowsums(const eq_layer *L, int32_t *rowsum, int32_t *wsum) {
    if (L->fmt == EQ_FMT_POPCOUNT) {
        /* tiles of 16 rows; per 32-column span, 16 sign words then 16 mask words */
        const int32_t spans = L->kp / 32, tiles = eq_tiled_rows(L->n) / EQ_ROW_TILE;
        const uint32_t *w = (const uint32_t *)L->w;
        for (int32_t t = 0; t < tiles; t++) {
            int32_t m[EQ_ROW_TILE] = {0}, neg[EQ_ROW_TILE] = {0};
            for (int32_t s = 0; s < spans; s++, w += 2 * EQ_ROW_TILE)
                for (int r = 0; r < EQ_ROW_TILE; r++) {
                    m[r] += __builtin_popcount(w[EQ_ROW_TILE + r]);
                    neg[r] += __builtin_popcount(w[EQ_ROW_TILE + r] & w[r]);
                }
            for (int r = 0; r < EQ_ROW_TILE; r++) {
                rowsum[EQ_ROW_TILE * t + r] = m[r];
                if (wsum) wsum[EQ_ROW_TILE * t + r] = m[r] - 2 * neg[r];
            }
        }
        return;
    }
    for (int32_t i = 0; i < L->n; i++) {
        const int8_t *row = (const int8_t *)L->w + (size_t)L->kp * i;
        int32_t s = 0;
        for (int32_t j = 0; j < L->kp; j++) s += row[j];
        rowsum[i] = s;
    }
}

void eq_linear_row(const eq_kernels *K, const eq_layer *L, const float *x, float *y, eq_scratch *s) {
    if (L->fmt == EQ_FMT_F16) {
        K->gemv_f16(L, x, y);
        if (L->bias)
            for (int32_t i = 0; i < L->n; i++) y[i] += L->bias[i];
        return;
    }
    eq_act *a = &s->act;
    a->kp = L->kp;
    if (L->fmt == EQ_FMT_POPCOUNT)
        K->quant_sign(x, L->k, L->tau, L->act_mode, a);
    else
        K->quant_i8(x, L->k, a);
    K->acc[L->fmt](L, a, s->acc);
    if (L->fmt == EQ_FMT_POPCOUNT && L->act_mode == EQ_ACT_UNSIGNED)
        /* sum w*b over b in {0,1} = (sum w*(2b-1) + sum w) / 2, exact (the sum is even) */
        for (int32_t i = 0; i < L->n; i++) s->acc[i] = (s->acc[i] + L->wsum[i]) / 2;
    K->dequant(L, s->acc, a->scale, y);
}

void eq_generic_dequant(const eq_layer *L, const int32_t *acc, float act_scale, float *y) {
    if (L->scale_stride) {
        for (int32_t i = 0; i < L->n; i++) y[i] = (float)acc[i] * (L->scale[i] * act_scale);
    } else {
        const float m = L->scale[0] * act_scale;
        for (int32_t i = 0; i < L->n; i++) y[i] = (float)acc[i] * m;
    }
    if (L->bias)
        for (int32_t i = 0; i < L->n; i++) y[i] += L->bias[i];
}

void eq_layernorm(float *x, int32_t n, const float *gamma, const float *beta, float eps) {
    float mean = 0.0f, var = 0.0f;
    for (int32_t i = 0; i < n; i++) mean += x[i];
    mean /= (float)n;
    for (int32_t i = 0; i < n; i++) {
        float d = x[i] - mean;
        var += d * d;
    }
    var /= (float)n;
    const float inv = 1.0f / sqrtf(var + eps);
    for (int32_t i = 0; i < n; i++) x[i] = (x[i] - mean) * inv * gamma[i] + beta[i];
}

void eq_relu(float *x, int32_t n) {
    for (int32_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

#define EQ_MOE_MAX 64

static double softmax_row(const float *z, int32_t n, double inv_t, double *p) {
    double m = -1e300, sum = 0.0, h = 0.0;
    for (int32_t i = 0; i < n; i++) m = z[i] * inv_t > m ? z[i] * inv_t : m;
    for (int32_t i = 0; i < n; i++) sum += (p[i] = exp(z[i] * inv_t - m));
    for (int32_t i = 0; i < n; i++) {
        p[i] /= sum;
        if (p[i] > 1e-12) h -= p[i] * log(p[i]);
    }
    return h; /* entropy of p */
}

void eq_moe_combine(const float *router, int32_t S, int32_t N, const float *experts, int32_t C, float T,
                    int curiosity, float alpha, int32_t top_k, float *out, int32_t *chosen, float *wk,
                    float *uncertainty, float *entropy) {
    double ps[EQ_MOE_MAX], p[EQ_MOE_MAX] = {0}, w[EQ_MOE_MAX], hs = 0.0;
    for (int32_t s = 0; s < S; s++) {
        hs += softmax_row(router + (size_t)s * N, N, 1.0 / T, ps);
        for (int32_t i = 0; i < N; i++) p[i] += ps[i] / S;
    }
    double hp = 0.0;
    for (int32_t i = 0; i < N; i++)
        if (p[i] > 1e-12) hp -= p[i] * log(p[i]);
    *uncertainty = S > 1 ? (float)(hp - hs / S) : 0.0f;
    *entropy = 0.0f;
    if (curiosity) {
        double q[EQ_MOE_MAX * 64], qbar[64] = {0}, tot = 0.0;
        for (int32_t i = 0; i < N; i++) {
            softmax_row(experts + (size_t)i * C, C, 1.0, q + (size_t)i * C);
            for (int32_t c = 0; c < C; c++) qbar[c] += q[(size_t)i * C + c] / N;
        }
        double hq = 0.0;
        for (int32_t c = 0; c < C; c++)
            if (qbar[c] > 1e-12) hq -= qbar[c] * log(qbar[c]);
        *entropy = (float)hq;
        for (int32_t i = 0; i < N; i++) {
            double kl = 0.0;
            for (int32_t c = 0; c < C; c++) {
                const double a = q[(size_t)i * C + c] > 1e-12 ? q[(size_t)i * C + c] : 1e-12;
                const double b = qbar[c] > 1e-12 ? qbar[c] : 1e-12;
                kl += q[(size_t)i * C + c] * (log(a) - log(b));
            }
            tot += (w[i] = p[i] * exp(alpha * kl));
        }
        for (int32_t i = 0; i < N; i++) w[i] /= tot;
    } else {
        for (int32_t i = 0; i < N; i++) w[i] = p[i];
    }
    /* top-k by weight, ties to the lower index (as a stable descending sort) */
    int used[EQ_MOE_MAX] = {0};
    for (int32_t j = 0; j < top_k; j++) {
        int32_t best = -1;
        for (int32_t i = 0; i < N; i++)
            if (!used[i] && (best < 0 || w[i] > w[best])) best = i;
        used[best] = 1;
        chosen[j] = best;
    }
    /* paper Eq. 6: the chosen experts' weights as they are, not renormalised */
    for (int32_t c = 0; c < C; c++) out[c] = 0.0f;
    for (int32_t j = 0; j < top_k; j++) {
        wk[j] = (float)w[chosen[j]];
        for (int32_t c = 0; c < C; c++) out[c] += wk[j] * experts[(size_t)chosen[j] * C + c];
    }
}
