/* Every kernel variant this CPU runs against the generic twin, bit for bit (integer
 * formats) or within a float tolerance (f16). Built natively and for aarch64 (run
 * under qemu-aarch64) by tests/test_arm.py. Prints one line per variant; exit 0 when
 * all agree. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eq_cnn.h"
#include "eq_kernels.h"

static uint32_t rng_state = 12345;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

/* a random packed layer of format fmt, n x k, with its derived sums */
static eq_layer random_layer(int fmt, int32_t n, int32_t k, float *scale) {
    const size_t wb = eq_weight_bytes(fmt, n, k), rows = (size_t)eq_stored_rows(fmt, n);
    uint8_t *w = aligned_alloc(64, (wb + 63) / 64 * 64);
    for (size_t i = 0; i < wb; i++) w[i] = (uint8_t)rnd();
    int32_t *rowsum = calloc(rows, 4), *wsum = calloc(rows, 4);
    eq_layer L = {fmt, n, k, eq_padded_k(k), w, scale, 0, NULL, rowsum, wsum, EQ_ACT_SIGN, 0.05f};
    if (fmt == EQ_FMT_Q8 || fmt == EQ_FMT_POPCOUNT) eq_layer_rowsums(&L, rowsum, wsum);
    return L;
}

/* Heads and mixtures (eq_program.c) built on each variant give what the generic twin
 * gives: the same experts chosen (uniform routing: the same seeded draws) and logits
 * within a float tolerance (the integer accumulators are exact, but the variants
 * dequantise with their own rounding). Returns the mismatches. */
static int check_programs(const eq_kernels *K) {
    enum { D = 96, H = 40, N = 3, C = 10, S = 4, K_TOP = 2 };
    static float scale = 0.02f, gamma[H], beta[H], masks[S * H], mul[D], add[D];
    for (int j = 0; j < H; j++) gamma[j] = 1.0f, beta[j] = 0.01f * (float)j;
    for (int j = 0; j < S * H; j++) masks[j] = (rnd() % 5) ? 1.25f : 0.0f;
    for (int j = 0; j < D; j++) mul[j] = 0.5f + (float)(rnd() % 100) / 100.0f, add[j] = 0.01f * (float)(j % 7);
    const int fmts[N] = {EQ_FMT_Q4, EQ_FMT_TERNARY, EQ_FMT_POPCOUNT};
    eq_layer ri = random_layer(EQ_FMT_Q8, H, D, &scale), ro = random_layer(EQ_FMT_Q8, N, H, &scale);
    eq_layer e1[N], e2[N];
    for (int i = 0; i < N; i++) e1[i] = random_layer(fmts[i], H, D, &scale), e2[i] = random_layer(EQ_FMT_Q2, C, H, &scale);
    const eq_kernels *both[2] = {&eq_kernels_generic, K};
    eq_program P[2][2 + N];
    eq_moe M[2][2];
    for (int v = 0; v < 2; v++) {
        eq_step r_in[2] = {{EQ_STEP_LINEAR, &ri, NULL, NULL, 0, H}, {EQ_STEP_RELU, NULL, NULL, NULL, 0, H}};
        eq_step r_out[1] = {{EQ_STEP_LINEAR, &ro, NULL, NULL, 0, N}};
        if (eq_program_init(&P[v][0], both[v], r_in, 2) || eq_program_init(&P[v][1], both[v], r_out, 1)) return 1;
        for (int i = 0; i < N; i++) {
            eq_step ex[4] = {{EQ_STEP_LINEAR, &e1[i], NULL, NULL, 0, H},
                             {EQ_STEP_LAYERNORM, NULL, gamma, beta, 1e-5f, H},
                             {EQ_STEP_RELU, NULL, NULL, NULL, 0, H},
                             {EQ_STEP_LINEAR, &e2[i], NULL, NULL, 0, C}};
            if (eq_program_init(&P[v][2 + i], both[v], ex, 4)) return 1;
        }
        eq_program *experts[N] = {&P[v][2], &P[v][3], &P[v][4]};
        /* curious and fixed work; then uniform routing from a seeded generator */
        if (eq_moe_init(&M[v][0], &P[v][0], &P[v][1], experts, N, masks, S, mul, add, K_TOP, 1.0f, 1, 0.5f, 1, 0, 7) ||
            eq_moe_init(&M[v][1], &P[v][0], &P[v][1], experts, N, NULL, 0, mul, add, K_TOP, 1.0f, 0, 0.0f, 0, 1, 7))
            return 1;
    }
    eq_step bad_chain[2] = {{EQ_STEP_LINEAR, &ri, NULL, NULL, 0, H}, {EQ_STEP_LINEAR, &ri, NULL, NULL, 0, H}};
    eq_program unused;
    int bad = eq_program_init(&unused, K, bad_chain, 2) != EQ_ERR_SHAPE;
    float x[D], out[2][C];
    int32_t chosen[2][K_TOP];
    float wk[2][K_TOP], unc[2], ent[2];
    for (int t = 0; t < 50; t++) {
        for (int j = 0; j < D; j++) x[j] = (float)((int32_t)(rnd() % 2001) - 1000) / 300.0f;
        for (int m = 0; m < 2; m++) {
            for (int v = 0; v < 2; v++) eq_moe_window(&M[v][m], x, out[v], chosen[v], wk[v], &unc[v], &ent[v]);
            float d = 0.0f, mag = 0.0f;
            for (int c = 0; c < C; c++) d = fmaxf(d, fabsf(out[0][c] - out[1][c])), mag = fmaxf(mag, fabsf(out[0][c]));
            if (memcmp(chosen[0], chosen[1], sizeof chosen[0]) || d > 1e-4f * (1.0f + mag)) {
                bad++;
                fprintf(stderr, "%s: mixture %d differs from generic at window %d: %d %d / %d %d, max diff %g of %g\n",
                        K->name, m, t, chosen[0][0], chosen[0][1], chosen[1][0], chosen[1][1], d, mag);
            }
            if (chosen[0][0] == chosen[0][1] || chosen[0][0] < 0 || chosen[0][0] >= N || chosen[0][1] < 0 ||
                chosen[0][1] >= N)
                bad++; /* top-k experts are distinct and in range */
        }
    }
    for (int v = 0; v < 2; v++) {
        for (int m = 0; m < 2; m++) eq_moe_free(&M[v][m]);
        for (int i = 0; i < 2 + N; i++) eq_program_free(&P[v][i]);
    }
    return bad;
}

/* ---- the integer embedder (eq_cnn.c): each variant's convolutions and a whole small
 * network against the generic twins, bit for bit ---- */

static float frnd(float lo, float hi) { return lo + (hi - lo) * (float)(rnd() % 10001) / 10000.0f; }
static void *fill_f(int n, float lo, float hi) {
    float *p = malloc(sizeof(float) * (size_t)(n ? n : 1));
    for (int i = 0; i < n; i++) p[i] = frnd(lo, hi);
    return p;
}
static void *fill_i(int n, int lo, int hi) {
    int32_t *p = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    for (int i = 0; i < n; i++) p[i] = lo + (int32_t)(rnd() % (uint32_t)(hi - lo + 1));
    return p;
}
static void *fill_b(int n) {
    int8_t *p = malloc((size_t)(n ? n : 1));
    for (int i = 0; i < n; i++) p[i] = (int8_t)((int32_t)(rnd() % 255) - 127);
    return p;
}

static eq_cnn_op conv_op(int kind, int src, int dst, int res, int32_t cin, int32_t cout, int32_t k, int32_t stride,
                         int act) {
    eq_cnn_op o;
    memset(&o, 0, sizeof o);
    o.kind = kind, o.src = src, o.dst = dst, o.res = res, o.cin = cin, o.cout = cout, o.k = k, o.stride = stride;
    o.epi.act = act;
    o.epi.w_scale = fill_f(cout, 0.002f, 0.02f), o.epi.bias = fill_f(cout, -1, 1);
    o.epi.out_inv = fill_f(cout, 2, 20), o.epi.out_zero = fill_i(cout, 0, 60);
    if (kind == EQ_CNN_PW) o.w = fill_b(cout * cin), o.epi.corr = fill_i(cout, -2000, 2000);
    if (kind == EQ_CNN_DW) o.w = fill_b(cout * k * k), o.zero = fill_i(cout, 0, 60);
    if (kind == EQ_CNN_STEM) o.fw = fill_f(cout * 9, -1, 1), o.fb = fill_f(cout, -1, 1);
    if (res >= 0) o.epi.res_scale = fill_f(cout, 0.01f, 0.2f), o.epi.res_zero = fill_i(cout, 0, 60);
    return o;
}

static int check_cnn(const char *name, int *checks) {
    const eq_variant *found = eq_variant_find(name);
    const eq_cnn_kernels *G = &eq_cnn_generic, *V = found ? found->cnn : NULL;
    if (!V) return 0;
    int bad = 0;
    /* pointwise accumulators: odd sizes, tiles and their tails */
    const int32_t pws[][3] = {{1, 1, 1}, {5, 3, 7}, {17, 19, 13}, {64, 96, 50}, {384, 64, 9}, {24, 8, 33}, {200, 40, 1}};
    for (size_t t = 0; t < sizeof pws / sizeof pws[0]; t++) {
        const int32_t n = pws[t][0], k = pws[t][1], np = pws[t][2], xs = eq_cnn_c4(k), accs = (n + 15) & ~15;
        int8_t *w = fill_b(n * k);
        uint8_t *x = calloc((size_t)np * xs + 64, 1);
        for (int32_t p = 0; p < np; p++)
            for (int32_t c = 0; c < k; c++) x[(size_t)p * xs + c] = (uint8_t)rnd();
        void *pg = aligned_alloc(64, (G->pw_bytes(n, k) + 63) / 64 * 64), *pv = aligned_alloc(64, (V->pw_bytes(n, k) + 63) / 64 * 64);
        G->pw_pack(w, n, k, pg), V->pw_pack(w, n, k, pv);
        int32_t *a1 = calloc((size_t)np * accs, 4), *a2 = calloc((size_t)np * accs, 4);
        G->pw_acc(pg, n, k, x, xs, np, a1, accs), V->pw_acc(pv, n, k, x, xs, np, a2, accs);
        for (int32_t p = 0; p < np; p++)
            if (memcmp(a1 + (size_t)p * accs, a2 + (size_t)p * accs, 4 * (size_t)n)) {
                bad++;
                fprintf(stderr, "%s cnn pw n %d k %d pixel %d differs\n", name, n, k, p);
                break;
            }
        (*checks)++;
        free(w), free(x), free(pg), free(pv), free(a1), free(a2);
    }
    /* depthwise layers (channel tails, both kernel sizes and strides, the borders; 8
     * channels at stride 1 take the pixel-pair paths) between a stem and a pooling, run by
     * an engine on each variant: its map equals the generic twin's, byte for byte */
    static int32_t gate[EQ_CNN_GATE_N];
    for (int i = 0; i < EQ_CNN_GATE_N; i++)
        gate[i] = (int32_t)(32768.0 / (1.0 + exp(-(double)(i - EQ_CNN_GATE_RANGE * EQ_CNN_GATE_STEPS) / EQ_CNN_GATE_STEPS)));
    const int32_t dws[][3] = {{3, 3, 1}, {8, 3, 2}, {8, 3, 1}, {8, 5, 1}, {19, 5, 1}, {48, 5, 2}, {40, 3, 1}, {64, 3, 1}};
    for (size_t t = 0; t < sizeof dws / sizeof dws[0]; t++) {
        const int32_t C = dws[t][0], H = 18, T = 22;
        eq_cnn_op dops[3];
        dops[0] = conv_op(EQ_CNN_STEM, -1, 0, -1, 1, C, 3, 2, EQ_CNN_ACT_HS);
        dops[1] = conv_op(EQ_CNN_DW, 0, 1, -1, C, C, dws[t][1], dws[t][2], EQ_CNN_ACT_RELU);
        memset(&dops[2], 0, sizeof dops[2]);
        dops[2].kind = EQ_CNN_POOL, dops[2].src = 1, dops[2].cin = dops[2].cout = C;
        dops[2].scale = fill_f(C, 0.01f, 0.1f), dops[2].zero = fill_i(C, 0, 40);
        eq_cnn E1, E2;
        float *mel = fill_f(H * T, -3, 3), *e1 = malloc(4 * (size_t)C), *e2 = malloc(4 * (size_t)C);
        if (eq_cnn_init(&E1, G, dops, 3, gate, H, T) || eq_cnn_init(&E2, V, dops, 3, gate, H, T)) {
            fprintf(stderr, "%s cnn dw c %d: the test engine does not build\n", name, C);
            return bad + 1;
        }
        eq_cnn_run(&E1, mel, e1, NULL), eq_cnn_run(&E2, mel, e2, NULL);
        const size_t bytes = (size_t)E1.ops[1].h_out * E1.ops[1].w_out * eq_cnn_c4(C);
        if (memcmp(E1.buf[1], E2.buf[1], bytes)) {
            bad++;
            fprintf(stderr, "%s cnn dw c %d k %d s %d: maps differ\n", name, C, dws[t][1], dws[t][2]);
        }
        (*checks)++;
        eq_cnn_free(&E1), eq_cnn_free(&E2);
        free(mel), free(e1), free(e2);
    }
    /* a whole small network: stem, a residual block with squeeze-excitation, a strided
     * block, a 40-input pointwise layer, two pointwise layers with 16-bit codes, a second
     * squeeze-excitation (40 channels), pooling, two dense layers */
    eq_cnn_op ops[16];
    int n = 0;
    ops[n++] = conv_op(EQ_CNN_STEM, -1, 0, -1, 1, 8, 3, 2, EQ_CNN_ACT_HS);
    ops[n++] = conv_op(EQ_CNN_PW, 0, 1, -1, 8, 20, 1, 1, EQ_CNN_ACT_RELU);
    ops[n++] = conv_op(EQ_CNN_DW, 1, 2, -1, 20, 20, 5, 1, EQ_CNN_ACT_RELU);
    eq_cnn_op se;
    memset(&se, 0, sizeof se);
    se.kind = EQ_CNN_SE, se.src = 2, se.cin = 20, se.cout = 6;
    se.fw = fill_f(2 * 20 * 6, -0.5f, 0.5f), se.fb = fill_f(26, -0.5f, 0.5f);
    se.scale = fill_f(20, 0.01f, 0.1f), se.zero = fill_i(20, 0, 40);
    ops[n++] = se;
    ops[n++] = conv_op(EQ_CNN_PW, 2, 1, 0, 20, 8, 1, 1, EQ_CNN_ACT_NONE);
    ops[n - 1].w_lo = fill_b(8 * 20); /* 16-bit codes (high and low parts), with a residual */
    ops[n++] = conv_op(EQ_CNN_DW, 1, 0, -1, 8, 8, 3, 2, EQ_CNN_ACT_HS);
    ops[n++] = conv_op(EQ_CNN_DW, 0, 1, -1, 8, 8, 3, 1, EQ_CNN_ACT_RELU); /* 8 channels, stride 1: pixel pairs */
    ops[n++] = conv_op(EQ_CNN_PW, 1, 2, -1, 8, 40, 1, 1, EQ_CNN_ACT_HS);
    ops[n - 1].w_lo = fill_b(40 * 8); /* 16-bit codes, 40 outputs: whole vectors and a tail */
    eq_cnn_op se40 = se; /* 40 channels: whole vectors and a tail of 8 */
    se40.src = 2, se40.cin = 40, se40.cout = 10;
    se40.fw = fill_f(2 * 40 * 10, -0.5f, 0.5f), se40.fb = fill_f(50, -0.5f, 0.5f);
    se40.scale = fill_f(40, 0.01f, 0.1f), se40.zero = fill_i(40, 0, 40);
    ops[n++] = se40;
    ops[n++] = conv_op(EQ_CNN_PW, 2, 1, -1, 40, 40, 1, 1, EQ_CNN_ACT_HS); /* 40 inputs: whole groups and a rest */
    eq_cnn_op pool, d1, d2;
    memset(&pool, 0, sizeof pool);
    pool.kind = EQ_CNN_POOL, pool.src = 1, pool.cin = pool.cout = 40;
    pool.scale = fill_f(40, 0.01f, 0.1f), pool.zero = fill_i(40, 0, 40);
    ops[n++] = pool;
    memset(&d1, 0, sizeof d1);
    d1.kind = EQ_CNN_DENSE, d1.cin = 40, d1.cout = 24, d1.w = fill_b(40 * 24), d1.scale = fill_f(24, 0.001f, 0.01f);
    d1.fb = fill_f(24, -1, 1), d1.epi.act = EQ_CNN_ACT_HS;
    ops[n++] = d1;
    d2 = d1;
    d2.cin = 24, d2.cout = 7, d2.w = fill_b(24 * 7), d2.scale = fill_f(7, 0.001f, 0.01f), d2.fb = fill_f(7, -1, 1);
    d2.epi.act = EQ_CNN_ACT_NONE;
    ops[n++] = d2;
    const int32_t H = 16, T = 47;
    float *mel = fill_f(H * T, -3, 3), e1[40], e2[40], o1[7], o2[7];
    eq_cnn E1, E2;
    if (eq_cnn_init(&E1, G, ops, n, gate, H, T) || eq_cnn_init(&E2, V, ops, n, gate, H, T)) {
        fprintf(stderr, "%s cnn: the test network does not build\n", name);
        return bad + 1;
    }
    eq_cnn_run(&E1, mel, e1, o1), eq_cnn_run(&E2, mel, e2, o2);
    if (memcmp(e1, e2, sizeof e1) || memcmp(o1, o2, sizeof o1)) {
        bad++;
        fprintf(stderr, "%s cnn network: outputs differ\n", name);
    }
    (*checks)++;
    eq_cnn_free(&E1), eq_cnn_free(&E2);
    return bad;
}

int main(void) {
    const eq_variant *vs[8];
    const int nk = eq_variants(vs, 8);
    const int32_t ins[] = {1, 7, 33, 100, 1023, 1024, 1536};
    const int32_t outs[] = {1, 5, 17, 64};
    int failures = 0, checks = 0;
    printf("features: %s\n", eq_cpu_features());
    for (int v = 0; v < nk; v++) {
        const eq_kernels *K = vs[v]->head;
        if (K == &eq_kernels_generic) continue;
        int bad = 0, n_checks = 0;
        for (int fmt = 0; fmt < EQ_NFMT; fmt++) {
            for (size_t a = 0; a < sizeof ins / sizeof ins[0]; a++) {
                for (size_t b = 0; b < sizeof outs / sizeof outs[0]; b++) {
                    const int32_t k = ins[a], n = outs[b], kp = eq_padded_k(k);
                    /* every stored byte random, tile padding included: the variants must
                     * agree on whatever is stored */
                    const size_t wb = eq_weight_bytes(fmt, n, k);
                    uint8_t *w = aligned_alloc(64, (wb + 63) / 64 * 64);
                    for (size_t i = 0; i < wb; i++) w[i] = (uint8_t)rnd();
                    if (fmt == EQ_FMT_F16) /* finite halves in [-2, 2) */
                        for (size_t i = 0; i < wb / 2; i++) ((uint16_t *)w)[i] = (uint16_t)((rnd() & 0x83ff) | 0x3800);
                    const size_t rows = (size_t)eq_stored_rows(fmt, n);
                    int32_t *rowsum = calloc(rows, 4);
                    float scale = 0.01f;
                    int32_t *wsum = calloc(rows, 4);
                    eq_layer L = {fmt, n, k, kp, w, &scale, 0, NULL, rowsum, wsum, EQ_ACT_SIGN, 0.05f};
                    if (fmt == EQ_FMT_Q8 || fmt == EQ_FMT_POPCOUNT) eq_layer_rowsums(&L, rowsum, wsum);
                    float *x = malloc(sizeof(float) * (size_t)k);
                    for (int32_t j = 0; j < k; j++) x[j] = (float)((int32_t)(rnd() % 2001) - 1000) / 37.0f;
                    eq_scratch s1, s2;
                    eq_scratch_init(&s1, k, n);
                    eq_scratch_init(&s2, k, n);
                    if (fmt == EQ_FMT_F16) {
                        float *y1 = malloc(4 * (size_t)n), *y2 = malloc(4 * (size_t)n);
                        eq_kernels_generic.gemv_f16(&L, x, y1);
                        K->gemv_f16(&L, x, y2);
                        /* float sums in another order: bound by the sum of |products| */
                        for (int32_t i = 0; i < n; i++) {
                            float mag = 0.0f;
                            for (int32_t j = 0; j < k; j++) mag += fabsf(x[j]) * 2.0f;
                            if (fabsf(y1[i] - y2[i]) > 1e-5f * mag) {
                                bad++;
                                fprintf(stderr, "%s f16 n %d k %d: %g vs %g\n", K->name, n, k, y1[i], y2[i]);
                            }
                        }
                        free(y1);
                        free(y2);
                    } else {
                        s1.act.kp = s2.act.kp = kp;
                        if (fmt == EQ_FMT_POPCOUNT) {
                            for (int mode = 1; mode >= 0; mode--) { /* ends on sign mode */
                                eq_kernels_generic.quant_sign(x, k, 0.05f, mode, &s1.act);
                                K->quant_sign(x, k, 0.05f, mode, &s2.act);
                                if (memcmp(s1.act.planes, s2.act.planes, (size_t)kp / 8)) bad++;
                            }
                        } else {
                            eq_kernels_generic.quant_i8(x, k, &s1.act);
                            K->quant_i8(x, k, &s2.act);
                            if (memcmp(s1.act.q, s2.act.q, (size_t)kp) || s1.act.qsum != s2.act.qsum) bad++;
                        }
                        eq_kernels_generic.acc[fmt](&L, &s1.act, s1.acc);
                        K->acc[fmt](&L, &s1.act, s2.acc); /* same activations for both */
                        if (memcmp(s1.acc, s2.acc, sizeof(int32_t) * rows)) {
                            bad++;
                            fprintf(stderr, "%s fmt %d n %d k %d: acc differs\n", K->name, fmt, n, k);
                        }
                    }
                    n_checks++;
                    eq_scratch_free(&s1);
                    eq_scratch_free(&s2);
                    free(x);
                    free(w);
                    free(rowsum);
                    free(wsum);
                }
            }
        }
        bad += check_programs(K);
        n_checks++;
        printf("variant %s: %d checks, %d mismatches\n", K->name, n_checks, bad);
        int cnn_checks = 0, cnn_bad = check_cnn(K->name, &cnn_checks);
        printf("variant %s, integer embedder: %d checks, %d mismatches\n", K->name, cnn_checks, cnn_bad);
        bad += cnn_bad, n_checks += cnn_checks;
        failures += bad;
        checks += n_checks;
    }
    printf("%s: %d checks\n", failures ? "FAIL" : "OK", checks);
    return failures ? 1 : 0;
}
