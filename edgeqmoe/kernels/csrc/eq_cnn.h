/* The integer convolutional embedder (mn04 on uint8 feature maps, int8 weights).
 *
 * edgeqmoe/embed/mn04_int8.py is the numpy reference of the same arithmetic and
 * documents it; the rule that makes both agree bit for bit: every sum is an integer sum,
 * every float operation is elementwise in one written order (no fused multiply-add).
 *
 * Feature maps are channels-last, one window at a time: height (mel bins) x width
 * (frames) x channels, each pixel's channels padded to a multiple of 4 (padding stays 0).
 * An engine is a list of operations over a few map buffers, built once for a window
 * length, with every buffer allocated at build time: the work per window is fixed.
 * Framework-free, like the head kernels: the Python binding only checks and copies.
 */
#ifndef EQ_CNN_H
#define EQ_CNN_H

#include <stddef.h>
#include <stdint.h>

enum { EQ_CNN_STEM, EQ_CNN_PW, EQ_CNN_DW, EQ_CNN_SE, EQ_CNN_POOL, EQ_CNN_DENSE, EQ_CNN_NKINDS };
enum { EQ_CNN_ACT_NONE, EQ_CNN_ACT_RELU, EQ_CNN_ACT_HS, EQ_CNN_NACTS };
/* their names where Python names them (the operation dicts' "kind"; the activations
 * as the module's contract exports them) */
static const char *const eq_cnn_kind_names[EQ_CNN_NKINDS] = {
    [EQ_CNN_STEM] = "stem", [EQ_CNN_PW] = "pw", [EQ_CNN_DW] = "dw",
    [EQ_CNN_SE] = "se", [EQ_CNN_POOL] = "pool", [EQ_CNN_DENSE] = "dense"};
static const char *const eq_cnn_act_names[EQ_CNN_NACTS] = {
    [EQ_CNN_ACT_NONE] = "none", [EQ_CNN_ACT_RELU] = "relu", [EQ_CNN_ACT_HS] = "hardswish"};
#define EQ_CNN_MAXBUF 4
#define EQ_CNN_GATE_STEPS 64 /* the squeeze-excitation's sigmoid table: steps per unit of z */
#define EQ_CNN_GATE_RANGE 16 /* ... from -16 to 16: 2 * 16 * 64 + 1 entries of 15-bit gates */
#define EQ_CNN_GATE_N (2 * EQ_CNN_GATE_RANGE * EQ_CNN_GATE_STEPS + 1)

/* the requantisation after a convolution: f = float(acc + corr) * w_scale + bias
 * [+ float(res - res_zero) * res_scale], act, q = clamp(rint(f * out_inv) + out_zero) */
typedef struct eq_cnn_epi {
    const int32_t *corr; /* NULL: none */
    const float *w_scale, *bias, *out_inv;
    const int32_t *out_zero;
    const float *res_scale; /* NULL: no residual */
    const int32_t *res_zero;
    int act;
} eq_cnn_epi;

typedef struct eq_cnn_op {
    int kind, src, dst, res; /* map buffers (res: the residual's, or -1) */
    int32_t cin, cout, k, stride;
    /* shapes, filled in by eq_cnn_init. DW: h_in, w_in and pad are what the kernels see:
     * the map with its padding left to them (pad = (k - 1) / 2), or, for maps where few
     * output pixels have all their taps inside, the engine's copy of the map in a border
     * of zero points (padded; pad = 0), so that every pixel takes the interior path */
    int32_t h_in, w_in, h_out, w_out, pad;
    uint8_t *padded;  /* DW: that copy (the engine's memory), or NULL */
    const int8_t *w;  /* PW: cout x cin; DW: (k*k) x cout (tap-major); DENSE: cout x cin */
    /* PW, optional: the low part of 16-bit weight codes whose high part is w: the layer's
     * sums are 256 x (sums on w) + (sums on w_lo) (NULL: int8 codes, w alone). How each
     * variant runs them: pw_pack16 / pw_row_wide / pw_acc twice (eq_cnn_kernels) */
    const int8_t *w_lo;
    void *packed_lo; /* the low part packed, where the variant runs the two parts (else NULL) */
    const float *fw;  /* STEM: cout x 9; SE: w1 (cout x cin) then w2 (cin x cout) */
    const float *fb;  /* SE: b1 (cout) then b2 (cin); DENSE: bias; STEM: bias */
    const float *scale; /* SE, POOL: input scales; DENSE: w_scale */
    const int32_t *zero; /* SE, POOL: input zero points; DW: input zero points */
    eq_cnn_epi epi;   /* STEM, PW, DW */
    void *packed;     /* PW, DW, DENSE: weights in the variant's layout (the engine's memory) */
} eq_cnn_op;

/* A variant: the two convolutions' accumulators in its own weight layout. */
typedef struct eq_cnn_kernels {
    const char *name;
    size_t (*pw_bytes)(int32_t n, int32_t k);
    void (*pw_pack)(const int8_t *w, int32_t n, int32_t k, void *out);
    /* acc[p * accs + o] = sum_c w[o][c] * x[p * xs + c], p < npix, o < n */
    void (*pw_acc)(const void *packed, int32_t n, int32_t k, const uint8_t *x, int32_t xs, int32_t npix,
                   int32_t *acc, int32_t accs);
    size_t (*dw_bytes)(int32_t c, int32_t k);
    /* w: (k*k) x c tap-major; zero: the input's zero points (c) */
    void (*dw_pack)(const int8_t *w, const int32_t *zero, int32_t c, int32_t k, void *out);
    /* one output row oy: acc[ox * accs + c] = sum over the taps inside the map of
     * w[tap][c] * (x[iy][ix][c] - zero[c]); NULL where dw_row is given */
    void (*dw_acc)(const void *packed, const eq_cnn_op *op, const uint8_t *x, int32_t xs, int32_t oy,
                   int32_t *acc, int32_t accs);
    /* the requantisation of npix pixels after pw_acc or dw_acc (eq_cnn_epilogue); NULL
     * where pw_row and dw_row are given and 16-bit pointwise layers are packed or fused
     * (pw_pack16, pw_row_wide) */
    void (*epilogue)(const eq_cnn_epi *e, const int32_t *acc, int32_t accs, int32_t npix, int32_t n,
                     const uint8_t *res, int32_t rs, uint8_t *out, int32_t os);
    /* the float stem (scratch: see stem_body) and squeeze-excitation in place (fs: 2 cin
     * + cout floats, sums: cin int32 of scratch): the shared code of eq_cnn_body.h */
    void (*stem)(const eq_cnn_op *op, const float *mel, uint8_t *out, float *scratch);
    void (*se)(const eq_cnn_op *op, const int32_t *gate, float *fs, int32_t *sums, uint8_t *x);
    /* optional (NULL: the accumulators, then the epilogue): a convolution's row with its
     * requantisation fused, the accumulators kept in registers */
    void (*pw_row)(const void *packed, int32_t n, int32_t k, const uint8_t *x, int32_t xs, int32_t npix,
                   const eq_cnn_epi *e, const uint8_t *res, int32_t rs, uint8_t *out, int32_t os);
    void (*dw_row)(const void *packed, const eq_cnn_op *op, const uint8_t *x, int32_t xs, int32_t oy, uint8_t *out);
    /* 16-bit codes (PW ops with w_lo), optional, in this order of preference: pw_pack16
     * packs them (256 hi + lo) into the layout pw_acc and pw_row read, where that layout
     * is 16-bit anyway; pw_row_wide runs both int8 parts, the sums on the high part shifted
     * 8 bits and the low part's added in registers; else (the generic twin) pw_acc twice,
     * then the epilogue */
    void (*pw_row_wide)(const void *hi, const void *lo, int32_t n, int32_t k, const uint8_t *x, int32_t xs,
                        int32_t npix, const eq_cnn_epi *e, const uint8_t *res, int32_t rs, uint8_t *out, int32_t os);
    void (*pw_pack16)(const int8_t *hi, const int8_t *lo, int32_t n, int32_t k, void *out);
} eq_cnn_kernels;

extern const eq_cnn_kernels eq_cnn_generic;
#if defined(__x86_64__) || defined(_M_X64)
extern const eq_cnn_kernels eq_cnn_avx2;
extern const eq_cnn_kernels eq_cnn_avx512;
#endif
#if defined(__aarch64__)
extern const eq_cnn_kernels eq_cnn_neon;
extern const eq_cnn_kernels eq_cnn_dotprod;
#endif

typedef struct eq_cnn {
    const eq_cnn_kernels *K;
    eq_cnn_op *ops;
    int nops;
    int32_t n_mels, frames, emb_dim, out_dim;
    const int32_t *gate; /* EQ_CNN_GATE_N gates, 32768 = 1 */
    uint8_t *buf[EQ_CNN_MAXBUF];
    int32_t *acc, *acc2; /* acc2: the low parts' sums of 16-bit pointwise layers (NULL: none) */
    float *vec[2], *fscratch;
    int32_t *isum, *iq;
    void *mem;
    int err_op;      /* after a failed eq_cnn_init: the operation at fault (-1: the list as a whole) */
    const char *err; /* and why (a static string), NULL when it succeeded */
} eq_cnn;

/* Checks that the operations chain for a window of n_mels x frames, works out every
 * shape, packs the weights and allocates every buffer. The parameters the operations
 * point to must outlive E. 0, or -1 (shape: E->err_op and E->err say which operation and
 * why) / -2 (memory). */
int eq_cnn_init(eq_cnn *E, const eq_cnn_kernels *K, const eq_cnn_op *ops, int nops, const int32_t *gate,
                int32_t n_mels, int32_t frames);
void eq_cnn_free(eq_cnn *E);
/* One window: mel (n_mels x frames, row-major) -> the pooled embedding (emb_dim) and,
 * when the list ends in dense layers, their output (out_dim). */
void eq_cnn_run(eq_cnn *E, const float *mel, float *emb, float *out);

void eq_cnn_stem_generic(const eq_cnn_op *op, const float *mel, uint8_t *out, float *scratch);
void eq_cnn_se_generic(const eq_cnn_op *op, const int32_t *gate, float *fs, int32_t *sums, uint8_t *x);
/* shared by the variants; the generic requantisation. Per-channel parameters are
 * read as whole vectors by the SIMD twins: the engine keeps copies padded to 16 */
void eq_cnn_epilogue(const eq_cnn_epi *e, const int32_t *acc, int32_t accs, int32_t npix, int32_t n,
                     const uint8_t *res, int32_t rs, uint8_t *out, int32_t os);
/* 16-bit pointwise codes (256 hi + lo) into an int16 layout of rows rounded to 8: groups
 * of g inputs of each output together, [k / g][n rounded to 8][g] (AVX2: g = 2, NEON: 1) */
void eq_cnn_pw_pack16(const int8_t *hi, const int8_t *lo, int32_t n, int32_t k, int32_t g, size_t bytes, void *out);
/* depthwise weights as int32, tap-major, channels padded to 16, after the input's zero
 * points (16-padded too), so that SIMD variants read whole vectors */
size_t eq_cnn_dw_bytes_wide(int32_t c, int32_t k);
void eq_cnn_dw_pack_wide(const int8_t *w, const int32_t *zero, int32_t c, int32_t k, void *out);
/* the taps [t0, t1) of output o (stride s, padding pad) that fall inside 0..n-1 */
static inline void eq_cnn_tap_range(int32_t o, int32_t s, int32_t pad, int32_t k, int32_t n, int32_t *t0,
                                    int32_t *t1) {
    const int32_t first = o * s - pad;
    *t0 = first < 0 ? -first : 0;
    *t1 = first + k > n ? n - first : k;
}
/* floats of scratch the stem needs (stem_body in eq_cnn_body.h) */
static inline int32_t eq_cnn_stem_scratch(int32_t cout, int32_t h_in, int32_t w_out) {
    const int32_t wp = (w_out + 16) & ~15;
    return (2 * h_in + 1) * wp + (cout * wp + 3) / 4 + 16;
}
static inline int32_t eq_cnn_c4(int32_t c) { return (c + 3) & ~3; }

#endif
