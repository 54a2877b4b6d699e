/* The integer convolutional embedder: the engine (shapes, buffers, one window), the
 * parts every variant shares (float stem, requantisation, squeeze-excitation, pooling,
 * dense layers) and the generic twins of the two convolutions. See eq_cnn.h. */
#include <stdlib.h>
#include <string.h>

#include "eq_cnn.h"
#include "eq_cnn_body.h"
#include "eq_kernels.h"

void eq_cnn_epilogue(const eq_cnn_epi *e, const int32_t *acc, int32_t accs, int32_t npix, int32_t n,
                     const uint8_t *res, int32_t rs, uint8_t *out, int32_t os) {
    for (int32_t p = 0; p < npix; p++) {
        const int32_t *a = acc + (size_t)p * accs;
        const uint8_t *r = res ? res + (size_t)p * rs : NULL;
        uint8_t *o = out + (size_t)p * os;
        if (res)
            epi_row(e, a, n, r, o, EQ_CNN_ACT_NONE, 1); /* a residual follows a projection: no activation */
        else if (e->act == EQ_CNN_ACT_RELU)
            epi_row(e, a, n, r, o, EQ_CNN_ACT_RELU, 0);
        else if (e->act == EQ_CNN_ACT_HS)
            epi_row(e, a, n, r, o, EQ_CNN_ACT_HS, 0);
        else
            epi_row(e, a, n, r, o, EQ_CNN_ACT_NONE, 0);
    }
}

/* ---------------------------------------------------------------- shared by the SIMD variants */

void eq_cnn_pw_pack16(const int8_t *hi, const int8_t *lo, int32_t n, int32_t k, int32_t g, size_t bytes, void *out) {
    const int32_t n8 = (n + 7) & ~7;
    int16_t *o = out;
    memset(o, 0, bytes);
    for (int32_t r = 0; r < n; r++)
        for (int32_t c = 0; c < k; c++)
            o[((size_t)(c / g) * n8 + r) * g + c % g] = (int16_t)(256 * hi[(size_t)r * k + c] + lo[(size_t)r * k + c]);
}

size_t eq_cnn_dw_bytes_wide(int32_t c, int32_t k) { return (size_t)4 * ((c + 15) & ~15) * (k * k + 1); }

void eq_cnn_dw_pack_wide(const int8_t *w, const int32_t *zero, int32_t c, int32_t k, void *out) {
    const int32_t c16 = (c + 15) & ~15;
    int32_t *o = out;
    memset(o, 0, eq_cnn_dw_bytes_wide(c, k));
    for (int32_t j = 0; j < c; j++) o[j] = zero[j];
    for (int32_t t = 0; t < k * k; t++)
        for (int32_t j = 0; j < c; j++) o[(size_t)(t + 1) * c16 + j] = w[(size_t)t * c + j];
}


/* ---------------------------------------------------------------- generic twins */

static size_t pw_bytes_generic(int32_t n, int32_t k) { return (size_t)n * eq_cnn_c4(k); }

static void pw_pack_generic(const int8_t *w, int32_t n, int32_t k, void *out) {
    int8_t *o = out;
    const int32_t k4 = eq_cnn_c4(k);
    memset(o, 0, (size_t)n * k4);
    for (int32_t r = 0; r < n; r++) memcpy(o + (size_t)r * k4, w + (size_t)r * k, (size_t)k);
}

static void pw_acc_generic(const void *packed, int32_t n, int32_t k, const uint8_t *x, int32_t xs, int32_t npix,
                           int32_t *acc, int32_t accs) {
    const int8_t *w = packed;
    const int32_t k4 = eq_cnn_c4(k);
    for (int32_t p = 0; p < npix; p++) {
        const uint8_t *xp = x + (size_t)p * xs;
        for (int32_t o = 0; o < n; o++) {
            const int8_t *wr = w + (size_t)o * k4;
            int32_t s = 0;
            for (int32_t c = 0; c < k4; c++) s += (int32_t)wr[c] * (int32_t)xp[c];
            acc[(size_t)p * accs + o] = s;
        }
    }
}

static size_t dw_bytes_generic(int32_t c, int32_t k) { return (size_t)k * k * c; }

static void dw_pack_generic(const int8_t *w, const int32_t *zero, int32_t c, int32_t k, void *out) {
    (void)zero;
    memcpy(out, w, (size_t)k * k * c);
}

static void dw_acc_generic(const void *packed, const eq_cnn_op *op, const uint8_t *x, int32_t xs, int32_t oy,
                           int32_t *acc, int32_t accs) {
    const int8_t *w = packed;
    const int32_t k = op->k, s = op->stride, pad = op->pad, C = op->cout;
    for (int32_t ox = 0; ox < op->w_out; ox++) {
        int32_t *a = acc + (size_t)ox * accs;
        for (int32_t c = 0; c < C; c++) a[c] = 0;
        for (int32_t ty = 0; ty < k; ty++) {
            const int32_t iy = oy * s + ty - pad;
            if (iy < 0 || iy >= op->h_in) continue;
            for (int32_t tx = 0; tx < k; tx++) {
                const int32_t ix = ox * s + tx - pad;
                if (ix < 0 || ix >= op->w_in) continue;
                const uint8_t *xp = x + ((size_t)iy * op->w_in + ix) * xs;
                const int8_t *wt = w + (size_t)(ty * k + tx) * C;
                for (int32_t c = 0; c < C; c++) a[c] += (int32_t)wt[c] * ((int32_t)xp[c] - op->zero[c]);
            }
        }
    }
}

const eq_cnn_kernels eq_cnn_generic = {
    .name = "generic",
    .pw_bytes = pw_bytes_generic,
    .pw_pack = pw_pack_generic,
    .pw_acc = pw_acc_generic,
    .dw_bytes = dw_bytes_generic,
    .dw_pack = dw_pack_generic,
    .dw_acc = dw_acc_generic,
    .epilogue = eq_cnn_epilogue,
    .stem = eq_cnn_stem_generic,
    .se = eq_cnn_se_generic,
};

static size_t up64(size_t n) { return (n + 63) & ~(size_t)63; }

/* ---------------------------------------------------------------- the generic twins of the shared parts */

void eq_cnn_stem_generic(const eq_cnn_op *op, const float *mel, uint8_t *out, float *scratch) {
    stem_body(op, mel, out, scratch);
}

void eq_cnn_se_generic(const eq_cnn_op *op, const int32_t *gate, float *fs, int32_t *sums, uint8_t *x) {
    se_body(op, gate, fs, sums, x);
}

/* int8 per vector (max-abs), int8 weights per row, then the float epilogue and act. The
 * products run on the variant's pointwise kernel: the codes offset by 128 to uint8, and
 * 128 x each row's weight sum taken back (exact) */
static void dense(eq_cnn *E, const eq_cnn_op *op, const float *x, float *y) {
    const int32_t k = op->cin, n = op->cout;
    float amax = 0.0f;
    for (int32_t c = 0; c < k; c++) {
        const float a = x[c] < 0.0f ? -x[c] : x[c];
        amax = a > amax ? a : amax;
    }
    const float safe = amax > 0.0f ? amax : 1.0f, inv = 127.0f / safe, sa = safe / 127.0f;
    uint8_t *q = (uint8_t *)E->iq;
    for (int32_t c = 0; c < eq_cnn_c4(k); c++) {
        float v = c < k ? (x[c] * inv + MAGIC) - MAGIC : 0.0f;
        v = v < -127.0f ? -127.0f : (v > 127.0f ? 127.0f : v);
        q[c] = (uint8_t)((int32_t)v + 128);
    }
    int32_t *acc = E->acc;
    const int32_t *sum = (const int32_t *)((const uint8_t *)op->packed + up64(E->K->pw_bytes(n, k)));
    E->K->pw_acc(op->packed, n, k, q, eq_cnn_c4(k), 1, acc, (n + 15) & ~15);
    for (int32_t o = 0; o < n; o++)
        y[o] = act_of((float)(acc[o] - 128 * sum[o]) * op->scale[o] * sa + op->fb[o], op->epi.act);
}

/* ---------------------------------------------------------------- the engine */

/* how many of n outputs (stride s, padding p, k taps, over n_in inputs) have all their taps inside */
static int32_t interior(int32_t n, int32_t n_in, int32_t s, int32_t p, int32_t k) {
    int32_t m = 0;
    for (int32_t o = 0; o < n; o++) m += o * s - p >= 0 && o * s - p + k <= n_in;
    return m;
}

/* a depthwise map (shapes known, not yet padded) that the engine copies into a border of
 * zero points: under 80% of its output pixels have all their taps inside */
static int pads_map(const eq_cnn_op *op) {
    const int32_t p = op->pad;
    return p > 0 && 5 * interior(op->h_out, op->h_in, op->stride, p, op->k) *
                            interior(op->w_out, op->w_in, op->stride, p, op->k) <
                        4 * op->h_out * op->w_out;
}

int eq_cnn_init(eq_cnn *E, const eq_cnn_kernels *K, const eq_cnn_op *ops, int nops, const int32_t *gate,
                int32_t n_mels, int32_t frames) {
    memset(E, 0, sizeof *E);
    E->err_op = -1;
#define FAIL(why)                                                                                                  \
    do {                                                                                                           \
        err = (why);                                                                                               \
        goto shape;                                                                                                \
    } while (0)
    const char *err = NULL;
    int i = -1;
    if (nops < 1 || ops[0].kind != EQ_CNN_STEM) {
        E->err = "the first operation must be the stem";
        return -1;
    }
    if (n_mels < 3 || frames < 3) {
        E->err = "a window of fewer than 3 mel bands or frames";
        return -1;
    }
    if ((!K->pw_row && !(K->pw_acc && K->epilogue)) || (!K->dw_row && !(K->dw_acc && K->epilogue))) {
        E->err = "the kernel variant lacks a pointwise or depthwise kernel";
        return -1;
    }
    E->ops = calloc((size_t)nops, sizeof *ops);
    if (!E->ops) return -2;
    memcpy(E->ops, ops, sizeof *ops * (size_t)nops);
    E->K = K, E->nops = nops, E->gate = gate, E->n_mels = n_mels, E->frames = frames;
    /* shapes: what each buffer holds after each step */
    int32_t bh[EQ_CNN_MAXBUF] = {0}, bw[EQ_CNN_MAXBUF] = {0}, bc[EQ_CNN_MAXBUF] = {0};
    size_t bsize[EQ_CNN_MAXBUF] = {0}, acc_n = 64, packed = 0;
    int wide = 0; /* a pointwise layer with 16-bit codes run in two passes: a second set of accumulators */
    int32_t vec = 0, vec_max = 64, se_max = 64, pooled = 0;
    for (i = 0; i < nops; i++) {
        eq_cnn_op *op = &E->ops[i];
        const int map_out = op->kind == EQ_CNN_STEM || op->kind == EQ_CNN_PW || op->kind == EQ_CNN_DW;
        if (map_out && (op->dst < 0 || op->dst >= EQ_CNN_MAXBUF)) FAIL("dst is not a map buffer");
        if (op->kind == EQ_CNN_STEM) {
            if (i != 0) FAIL("a stem after the first operation");
            if (op->cout < 1 || op->cout > 64) FAIL("the stem has 1 to 64 outputs");
            op->h_in = n_mels, op->w_in = frames;
            op->h_out = (n_mels - 1) / 2 + 1, op->w_out = (frames - 1) / 2 + 1;
        } else if (op->kind == EQ_CNN_PW || op->kind == EQ_CNN_DW || op->kind == EQ_CNN_SE || op->kind == EQ_CNN_POOL) {
            if (op->src < 0 || op->src >= EQ_CNN_MAXBUF) FAIL("src is not a map buffer");
            if (pooled) FAIL("a map operation after the pooling");
            if (bc[op->src] != op->cin) FAIL("cin is not the channel count of the src map");
            op->h_in = bh[op->src], op->w_in = bw[op->src];
            if (op->kind == EQ_CNN_DW) {
                const int32_t p = (op->k - 1) / 2;
                if (op->k < 1 || op->k % 2 == 0 || op->stride < 1) FAIL("k must be odd and stride positive");
                if (op->cout != op->cin) FAIL("a depthwise layer has cout == cin");
                op->h_out = (op->h_in + 2 * p - op->k) / op->stride + 1;
                op->w_out = (op->w_in + 2 * p - op->k) / op->stride + 1;
                if (op->h_out < 1 || op->w_out < 1) FAIL("the map shrinks to nothing");
                op->pad = p;
                if (pads_map(op)) packed += up64((size_t)(op->h_in + 2 * p) * (op->w_in + 2 * p) * eq_cnn_c4(op->cin) + 64);
            } else {
                op->h_out = op->h_in, op->w_out = op->w_in;
            }
            if (op->kind == EQ_CNN_SE) se_max = 2 * op->cin + op->cout > se_max ? 2 * op->cin + op->cout : se_max;
            if (op->kind == EQ_CNN_POOL) pooled = 1, vec = op->cin, E->emb_dim = op->cin;
        } else if (op->kind == EQ_CNN_DENSE) {
            if (!pooled) FAIL("a dense layer before the pooling");
            if (op->cin != vec) FAIL("cin is not the size of the vector before it");
            vec = op->cout, E->out_dim = op->cout;
            acc_n = (size_t)((op->cout + 15) & ~15) > acc_n ? (size_t)((op->cout + 15) & ~15) : acc_n;
        } else {
            FAIL("unknown kind");
        }
        vec_max = vec > vec_max ? vec : vec_max;
        if (map_out) {
            if (op->dst == op->src && op->kind != EQ_CNN_STEM) FAIL("dst is src (operations do not run in place)");
            if (op->res >= 0 && (op->res >= EQ_CNN_MAXBUF || op->res == op->dst || bc[op->res] != op->cout ||
                                 bh[op->res] != op->h_out || bw[op->res] != op->w_out || !op->epi.res_scale))
                FAIL("the residual map is not the output's shape (or is dst)");
            if ((op->res < 0) != (op->epi.res_scale == NULL) || (op->res >= 0 && op->epi.act != EQ_CNN_ACT_NONE))
                FAIL("a residual needs res_scale and no activation");
            packed += 7 * up64((size_t)4 * ((op->cout + 15) & ~15)); /* the epilogue's parameters, padded */
            bh[op->dst] = op->h_out, bw[op->dst] = op->w_out, bc[op->dst] = op->cout;
            const size_t need = (size_t)op->h_out * op->w_out * eq_cnn_c4(op->cout);
            bsize[op->dst] = need > bsize[op->dst] ? need : bsize[op->dst];
            const size_t a = (size_t)op->w_out * ((op->cout + 15) & ~15);
            acc_n = a > acc_n ? a : acc_n;
        }
        if (op->kind == EQ_CNN_STEM) {
            const int32_t need = eq_cnn_stem_scratch(op->cout, op->h_in, op->w_out);
            se_max = need > se_max ? need : se_max;
        }
        if (op->kind == EQ_CNN_DENSE) packed += up64(K->pw_bytes(op->cout, op->cin)) + up64((size_t)4 * op->cout);
        if (op->kind == EQ_CNN_SE) packed += up64((size_t)4 * 2 * op->cin * op->cout);
        if (op->kind == EQ_CNN_PW) packed += up64(K->pw_bytes(op->cout, op->cin));
        if (op->w_lo && (op->kind != EQ_CNN_PW || op->cin > 256 ||
                         !(K->pw_pack16 || K->pw_row_wide || (K->pw_acc && K->epilogue))))
            FAIL("16-bit codes need a pointwise layer of at most 256 inputs"); /* 256 x 255 x 127 x cin < 2^31 */
        if (op->w_lo && !K->pw_pack16) { /* the low part packed apart; its own sums unless fused */
            packed += up64(K->pw_bytes(op->cout, op->cin));
            wide |= K->pw_row_wide == NULL;
        }
        if (op->kind == EQ_CNN_DW) packed += up64(K->dw_bytes(op->cout, op->k));
    }
    i = -1;
    if (!pooled) FAIL("no pooling: the operations never make an embedding");
    size_t total = packed + (size_t)(1 + wide) * up64(acc_n * 4) + 2 * up64((size_t)vec_max * 4) + up64((size_t)se_max * 4) +
                   up64((size_t)(vec_max > se_max ? vec_max : se_max) * 4) + up64((size_t)vec_max * 4);
    for (int b = 0; b < EQ_CNN_MAXBUF; b++) total += up64(bsize[b] + 64); /* + slack for whole-vector loads */
    if (posix_memalign(&E->mem, 64, total)) {
        E->mem = NULL;
        eq_cnn_free(E);
        return -2;
    }
    memset(E->mem, 0, total);
    uint8_t *m = E->mem;
    for (int i = 0; i < nops; i++) {
        eq_cnn_op *op = &E->ops[i];
        if (op->kind == EQ_CNN_STEM || op->kind == EQ_CNN_PW || op->kind == EQ_CNN_DW) {
            /* padded copies (zeros after cout; corr of zeros where there is none), so
             * that SIMD epilogues read whole vectors */
            eq_cnn_epi *e = &op->epi;
            const size_t one = up64((size_t)4 * ((op->cout + 15) & ~15)), n4 = (size_t)4 * op->cout;
            const void *src[7] = {e->corr, e->w_scale, e->bias, e->out_inv, e->out_zero, e->res_scale, e->res_zero};
            for (int j = 0; j < 7; j++) {
                if (src[j]) memcpy(m + j * one, src[j], n4);
            }
            e->corr = (const int32_t *)m, e->w_scale = (const float *)(m + one), e->bias = (const float *)(m + 2 * one);
            e->out_inv = (const float *)(m + 3 * one), e->out_zero = (const int32_t *)(m + 4 * one);
            e->res_scale = e->res_scale ? (const float *)(m + 5 * one) : NULL;
            e->res_zero = e->res_zero ? (const int32_t *)(m + 6 * one) : NULL;
            m += 7 * one;
        }
        if (op->kind == EQ_CNN_DENSE) { /* packed as a pointwise layer, then each row's weight sum */
            op->packed = m, K->pw_pack(op->w, op->cout, op->cin, m);
            m += up64(K->pw_bytes(op->cout, op->cin));
            int32_t *sum = (int32_t *)m;
            for (int32_t o = 0; o < op->cout; o++) {
                sum[o] = 0;
                for (int32_t c = 0; c < op->cin; c++) sum[o] += op->w[(size_t)o * op->cin + c];
            }
            m += up64((size_t)4 * op->cout);
        } else if (op->kind == EQ_CNN_SE) {
            const int32_t C = op->cin, S = op->cout;
            float *t1 = (float *)m, *t2 = t1 + (size_t)S * C;
            for (int32_t j = 0; j < S; j++)
                for (int32_t c = 0; c < C; c++) {
                    t1[(size_t)c * S + j] = op->fw[(size_t)j * C + c];                 /* w1: S x C */
                    t2[(size_t)j * C + c] = op->fw[(size_t)S * C + (size_t)c * S + j]; /* w2: C x S */
                }
            op->packed = m, m += up64((size_t)4 * 2 * C * S);
        } else if (op->kind == EQ_CNN_PW && op->w_lo && K->pw_pack16) { /* one 16-bit layer, as any other */
            op->packed = m, K->pw_pack16(op->w, op->w_lo, op->cout, op->cin, m);
            m += up64(K->pw_bytes(op->cout, op->cin));
        } else if (op->kind == EQ_CNN_PW) {
            op->packed = m, K->pw_pack(op->w, op->cout, op->cin, m);
            m += up64(K->pw_bytes(op->cout, op->cin));
            if (op->w_lo) {
                op->packed_lo = m, K->pw_pack(op->w_lo, op->cout, op->cin, m);
                m += up64(K->pw_bytes(op->cout, op->cin));
            }
        } else if (op->kind == EQ_CNN_DW) {
            op->packed = m, K->dw_pack(op->w, op->zero, op->cout, op->k, m);
            m += up64(K->dw_bytes(op->cout, op->k));
            if (pads_map(op)) {
                const int32_t p = op->pad;
                /* the border (and every pixel until the first copy) holds the zero points:
                 * (x - zero) = 0 there, the sums the kernels would have skipped */
                const int32_t cs = eq_cnn_c4(op->cin), hp = op->h_in + 2 * p, wp = op->w_in + 2 * p;
                op->padded = m;
                for (int32_t q = 0; q < hp * wp; q++)
                    for (int32_t c = 0; c < op->cin; c++) m[(size_t)q * cs + c] = (uint8_t)op->zero[c];
                m += up64((size_t)hp * wp * cs + 64);
                op->h_in = hp, op->w_in = wp, op->pad = 0;
            }
        }
    }
    for (int b = 0; b < EQ_CNN_MAXBUF; b++) E->buf[b] = (uint8_t *)m, m += up64(bsize[b] + 64);
    E->acc = (int32_t *)m, m += up64(acc_n * 4);
    if (wide) E->acc2 = (int32_t *)m, m += up64(acc_n * 4);
    E->vec[0] = (float *)m, m += up64((size_t)vec_max * 4);
    E->vec[1] = (float *)m, m += up64((size_t)vec_max * 4);
    E->fscratch = (float *)m, m += up64((size_t)se_max * 4);
    E->isum = (int32_t *)m, m += up64((size_t)(vec_max > se_max ? vec_max : se_max) * 4);
    E->iq = (int32_t *)m;
    return 0;
shape:
    eq_cnn_free(E);
    E->err_op = i, E->err = err;
    return -1;
#undef FAIL
}

void eq_cnn_free(eq_cnn *E) {
    free(E->ops);
    free(E->mem);
    memset(E, 0, sizeof *E);
}

void eq_cnn_run(eq_cnn *E, const float *mel, float *emb, float *out) {
    const float *v = NULL;
    int which = 0, last_dense = -1;
    for (int i = 0; i < E->nops; i++)
        if (E->ops[i].kind == EQ_CNN_DENSE) last_dense = i;
    for (int i = 0; i < E->nops; i++) {
        const eq_cnn_op *op = &E->ops[i];
        switch (op->kind) {
        case EQ_CNN_STEM:
            E->K->stem(op, mel, E->buf[op->dst], E->fscratch);
            break;
        case EQ_CNN_PW: {
            /* a pointwise convolution works per pixel: the whole map in one call where the
             * requantisation is fused (long runs of pixels fill the kernels' tiles), else in
             * chunks of a row, as many as the accumulators hold */
            const int32_t xs = eq_cnn_c4(op->cin), os = eq_cnn_c4(op->cout), accs = (op->cout + 15) & ~15;
            const int32_t npix = op->h_out * op->w_out;
            const int32_t chunk = (op->packed_lo ? E->K->pw_row_wide != NULL : E->K->pw_row != NULL) ? npix : op->w_out;
            for (int32_t p = 0; p < npix; p += chunk) {
                const int32_t n = npix - p < chunk ? npix - p : chunk;
                const uint8_t *x = E->buf[op->src] + (size_t)p * xs, *r = op->res >= 0 ? E->buf[op->res] + (size_t)p * os : NULL;
                uint8_t *o = E->buf[op->dst] + (size_t)p * os;
                if (op->packed_lo && E->K->pw_row_wide) {
                    E->K->pw_row_wide(op->packed, op->packed_lo, op->cout, op->cin, x, xs, n, &op->epi, r, os, o, os);
                } else if (op->packed_lo) { /* 16-bit codes: 256 x the high sums + the low sums, then the requantisation */
                    int32_t *restrict a = E->acc, *restrict a2 = E->acc2;
                    E->K->pw_acc(op->packed, op->cout, op->cin, x, xs, n, a, accs);
                    E->K->pw_acc(op->packed_lo, op->cout, op->cin, x, xs, n, a2, accs);
                    for (int32_t j = 0; j < n * accs; j++) a[j] = a[j] * 256 + a2[j];
                    E->K->epilogue(&op->epi, a, accs, n, op->cout, r, os, o, os);
                } else if (E->K->pw_row) {
                    E->K->pw_row(op->packed, op->cout, op->cin, x, xs, n, &op->epi, r, os, o, os);
                } else {
                    E->K->pw_acc(op->packed, op->cout, op->cin, x, xs, n, E->acc, accs);
                    E->K->epilogue(&op->epi, E->acc, accs, n, op->cout, r, os, o, os);
                }
            }
            break;
        }
        case EQ_CNN_DW: {
            const int32_t cs = eq_cnn_c4(op->cout), accs = (op->cout + 15) & ~15;
            const uint8_t *x = E->buf[op->src];
            if (op->padded) { /* the map into its border of zero points */
                const int32_t p = (op->k - 1) / 2, h = op->h_in - 2 * p, w = op->w_in - 2 * p;
                for (int32_t y = 0; y < h; y++)
                    memcpy(op->padded + ((size_t)(y + p) * op->w_in + p) * cs, x + (size_t)y * w * cs, (size_t)w * cs);
                x = op->padded;
            }
            for (int32_t y = 0; y < op->h_out; y++) {
                if (E->K->dw_row) {
                    E->K->dw_row(op->packed, op, x, cs, y, E->buf[op->dst] + (size_t)y * op->w_out * cs);
                    continue;
                }
                E->K->dw_acc(op->packed, op, x, cs, y, E->acc, accs);
                E->K->epilogue(&op->epi, E->acc, accs, op->w_out, op->cout, NULL, 0,
                                E->buf[op->dst] + (size_t)y * op->w_out * cs, cs);
            }
            break;
        }
        case EQ_CNN_SE:
            E->K->se(op, E->gate, E->fscratch, E->isum, E->buf[op->src]);
            break;
        case EQ_CNN_POOL: {
            const int32_t npix = op->h_in * op->w_in;
            channel_sums(E->buf[op->src], npix, op->cin, E->isum);
            channel_means(E->isum, npix, op->cin, op->scale, op->zero, emb);
            v = emb;
            break;
        }
        case EQ_CNN_DENSE: {
            float *y = (i == last_dense && out) ? out : E->vec[which];
            dense(E, op, v, y);
            v = y, which ^= 1;
            break;
        }
        }
    }
}
